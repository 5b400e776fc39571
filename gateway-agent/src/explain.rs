//! `gateway-agent explain`: which listener, route rule and backends a request
//! would take, and why the other rules lost. It runs the same translate the
//! agent runs and asks the data planes' own lookups (the proxy's
//! `RouteTable`, the passthrough `SniTable`), so it cannot disagree with them.
//! Against a running agent the agent itself explains, from the translate
//! output it applied last (its admin `/explain`), with this same code.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::inspect::{Endpoint, RouteName};
use crate::model::{DataplaneConfig, HttpMatch, HttpRule, L4Protocol, PathMatch, ValueMatch};
use crate::passthrough::sni_table::SniTable;
use crate::proxy::route_table::{Mismatch, RequestView, RouteTable, Verdict};
use crate::translate::{ObjectStatus, Output};

/// What is being explained, parsed from `'GET https://host/path'`,
/// `tcp://addr:port`, `udp://addr:port` or `tls://sni:port`.
#[derive(Clone, Debug)]
pub enum Target {
    Http {
        method: String,
        scheme: String,
        /// The URL's host: an address selects the listener's address too.
        authority: String,
        port: u16,
        path: String,
        query: Option<String>,
        headers: HeaderMap,
    },
    L4 {
        protocol: L4Protocol,
        addr: Option<IpAddr>,
        port: u16,
    },
    Tls {
        sni: String,
        port: u16,
    },
}

impl Target {
    /// Parses `[METHOD] URL` and `name: value` headers.
    pub fn parse(request: &str, headers: &[String]) -> anyhow::Result<Self> {
        let words: Vec<&str> = request.split_whitespace().collect();
        let (method, url) = match words.as_slice() {
            [url] => ("GET", *url),
            [method, url] => (*method, *url),
            _ => anyhow::bail!("expected '[METHOD] URL', got {request:?}"),
        };
        let uri: hyper::Uri = url.parse().with_context(|| format!("parsing {url:?}"))?;
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        let host = uri
            .host()
            .with_context(|| format!("{url:?} has no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16();
        let need_port = || port.with_context(|| format!("{url:?} needs a port"));
        Ok(match scheme.as_str() {
            "http" | "https" => {
                let mut map = HeaderMap::new();
                for header in headers {
                    let (name, value) = header
                        .split_once(':')
                        .with_context(|| format!("header {header:?} is not 'name: value'"))?;
                    map.append(
                        HeaderName::from_bytes(name.trim().as_bytes())?,
                        HeaderValue::from_str(value.trim())?,
                    );
                }
                let default_port = if scheme == "https" { 443 } else { 80 };
                Target::Http {
                    method: method.to_ascii_uppercase(),
                    authority: host,
                    port: port.unwrap_or(default_port),
                    path: uri.path().to_string(),
                    query: uri.query().map(str::to_string),
                    headers: map,
                    scheme,
                }
            }
            "tcp" | "udp" => Target::L4 {
                protocol: if scheme == "tcp" {
                    L4Protocol::Tcp
                } else {
                    L4Protocol::Udp
                },
                addr: host.parse().ok(),
                port: need_port()?,
            },
            "tls" => Target::Tls {
                sni: host,
                port: need_port()?,
            },
            other => anyhow::bail!("unknown scheme {other:?} (http, https, tcp, udp, tls)"),
        })
    }
}

/// The rule a request takes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Choice {
    pub route: RouteName,
    /// The match that held (HTTP), or the hostnames (TLS).
    pub matched: String,
    /// What the proxy does besides forwarding (redirect), if anything.
    pub action: Option<String>,
    /// Endpoints with their weights; `share_percent` of new requests or flows.
    pub backends: Vec<Share>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Share {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    pub share_percent: f64,
}

/// A rule that did not serve the request, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Loser {
    pub route: RouteName,
    pub matched: String,
    pub reason: String,
}

/// A route not programmed where the request goes, as translate decided it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotAttached {
    pub kind: String,
    pub route: String,
    pub parent: Option<String>,
    pub section: Option<String>,
    pub condition: String,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Explanation {
    pub request: String,
    /// The socket the request arrives on (`addr:port`), if any serves it.
    pub listener: Option<String>,
    /// Gateways (and listener names) the chosen route is accepted on.
    pub accepted_on: Vec<String>,
    pub chosen: Option<Choice>,
    /// Rules on the same listener that lost, in the order they were tried.
    pub others: Vec<Loser>,
    /// Routes of the request's kind that are not (fully) accepted.
    pub not_attached: Vec<NotAttached>,
    /// One line: what happens to the request.
    pub outcome: String,
}

fn shares(endpoints: impl Iterator<Item = Endpoint>) -> Vec<Share> {
    let endpoints: Vec<Endpoint> = endpoints.collect();
    let total: u64 = endpoints.iter().map(|e| e.weight).sum();
    endpoints
        .into_iter()
        .map(|endpoint| Share {
            share_percent: if total == 0 {
                0.0
            } else {
                endpoint.weight as f64 * 100.0 / total as f64
            },
            endpoint,
        })
        .collect()
}

fn value_text(value: &ValueMatch) -> String {
    match value {
        ValueMatch::Exact(v) => format!("={v}"),
        ValueMatch::RegularExpression(r) => format!("~{r}"),
    }
}

/// A match as one line: `PathPrefix /a, method GET, header x=1, query q~re`.
fn match_text(m: &HttpMatch) -> String {
    let mut parts = vec![match &m.path {
        PathMatch::Exact(p) => format!("Exact {p}"),
        PathMatch::Prefix(p) => format!("PathPrefix {p}"),
        PathMatch::RegularExpression(p) => format!("RegularExpression {p}"),
    }];
    if let Some(method) = &m.method {
        parts.push(format!("method {method}"));
    }
    for h in &m.headers {
        parts.push(format!("header {}{}", h.name, value_text(&h.value)));
    }
    for q in &m.query_params {
        parts.push(format!("query {}{}", q.name, value_text(&q.value)));
    }
    parts.join(", ")
}

fn hosts(hostnames: &[String]) -> String {
    if hostnames.is_empty() {
        "any host".into()
    } else {
        hostnames.join(",")
    }
}

fn verdict_text(verdict: &Verdict, rule: &HttpRule, host: &str) -> String {
    match verdict {
        Verdict::Chosen => "chosen".into(),
        Verdict::LostOnPrecedence => "its match holds, but a rule earlier in precedence order (more specific hostname, path, method, headers, query; then older route) matched first".into(),
        Verdict::NoMatch(Mismatch::Path) => "the path does not match".into(),
        Verdict::NoMatch(Mismatch::Method) => "the method does not match".into(),
        Verdict::NoMatch(Mismatch::Header(name)) => format!("header {name} is missing or does not match"),
        Verdict::NoMatch(Mismatch::QueryParam(name)) => format!("query parameter {name} is missing or does not match"),
        Verdict::OtherHostname => format!("its hostnames ({}) do not cover {host}", hosts(&rule.hostnames)),
        Verdict::OtherListener => format!(
            "it is attached to the listener for {}, and a more specific listener serves {host}",
            rule.listener_hostname.as_deref().unwrap_or("any host")
        ),
    }
}

/// Explains `target` against translate's `output`.
pub fn explain(output: &Output, target: &Target, request: &str) -> Explanation {
    let mut explanation = match target {
        // HTTPS to a TLS listener (TLSRoute): the server name picks the route.
        Target::Http {
            scheme,
            port,
            authority,
            headers,
            ..
        } if scheme == "https"
            && !output
                .config
                .http
                .iter()
                .any(|l| bind_serves(l.bind, authority.parse().ok(), *port))
            && output
                .config
                .tls_passthrough
                .iter()
                .any(|l| bind_serves(l.bind, authority.parse().ok(), *port)) =>
        {
            let host = headers
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(authority);
            explain_tls(
                &output.config,
                crate::proxy::route_table::strip_port(host),
                authority.parse().ok(),
                *port,
            )
        }
        Target::Http { .. } => explain_http(&output.config, target),
        Target::L4 {
            protocol,
            addr,
            port,
        } => explain_l4(&output.config, *protocol, *addr, *port),
        Target::Tls { sni, port } => explain_tls(&output.config, sni, None, *port),
    };
    explanation.request = request.to_string();
    let kinds: &[&str] = match target {
        Target::Http { .. } => &["HTTPRoute", "GRPCRoute"],
        Target::L4 {
            protocol: L4Protocol::Tcp,
            ..
        } => &["TCPRoute"],
        Target::L4 { .. } => &["UDPRoute"],
        Target::Tls { .. } => &["TLSRoute"],
    };
    explanation.not_attached = not_attached(&output.statuses, kinds);
    if let Some(chosen) = &explanation.chosen {
        explanation.accepted_on = accepted_on(&output.statuses, &chosen.route);
    }
    explanation
}

fn not_attached(statuses: &[Arc<ObjectStatus>], kinds: &[&str]) -> Vec<NotAttached> {
    statuses
        .iter()
        .filter(|s| kinds.contains(&s.kind))
        .filter_map(|s| {
            let problem = s.problem()?;
            Some(NotAttached {
                kind: s.kind.to_string(),
                route: s.key.to_string(),
                parent: s.parent.as_ref().map(ToString::to_string),
                section: s.section.clone(),
                condition: format!(
                    "{}={}",
                    problem.type_,
                    if problem.status { "True" } else { "False" }
                ),
                reason: problem.reason.to_string(),
                message: problem.message.clone(),
            })
        })
        .collect()
}

fn accepted_on(statuses: &[Arc<ObjectStatus>], route: &RouteName) -> Vec<String> {
    statuses
        .iter()
        .filter(|s| {
            s.kind == route.kind
                && s.key.namespace == route.namespace
                && s.key.name == route.name
                && s.problem().is_none()
        })
        .filter_map(|s| {
            let parent = s.parent.as_ref()?;
            Some(match &s.section {
                Some(section) => format!("Gateway {parent} listener {section}"),
                None => format!("Gateway {parent}"),
            })
        })
        .collect()
}

fn empty(outcome: String) -> Explanation {
    Explanation {
        request: String::new(),
        listener: None,
        accepted_on: Vec::new(),
        chosen: None,
        others: Vec::new(),
        not_attached: Vec::new(),
        outcome,
    }
}

/// Whether a listener bound on `bind` receives a request to `addr`.
fn bind_serves(bind: SocketAddr, addr: Option<IpAddr>, port: u16) -> bool {
    bind.port() == port && (bind.ip().is_unspecified() || addr.is_none_or(|a| a == bind.ip()))
}

fn explain_http(config: &DataplaneConfig, target: &Target) -> Explanation {
    let Target::Http {
        method,
        scheme,
        authority,
        port,
        path,
        query,
        headers,
    } = target
    else {
        unreachable!("explain_http is called on HTTP targets");
    };
    let addr: Option<IpAddr> = authority.parse().ok();
    // A listener on the exact address wins over one on every address.
    let Some(listener) = config
        .http
        .iter()
        .filter(|l| bind_serves(l.bind, addr, *port))
        .min_by_key(|l| l.bind.ip().is_unspecified())
    else {
        return empty(format!(
            "no HTTP listener serves port {port}: the connection is refused"
        ));
    };
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or(authority)
        .to_string();
    let table = RouteTable::new(listener.rules.clone());
    let request = RequestView {
        host: &host,
        path,
        query: query.as_deref(),
        method,
        headers,
    };
    let mut explanation = empty(String::new());
    explanation.listener = Some(format!(
        "{} ({})",
        listener.bind,
        if listener.certificates.is_empty() {
            "HTTP"
        } else {
            "HTTPS"
        }
    ));
    if scheme == "https" && listener.certificates.is_empty() {
        explanation.outcome =
            "the listener on this port speaks plain HTTP: a TLS client fails its handshake".into();
        return explanation;
    }
    let host_name = crate::proxy::route_table::strip_port(&host).to_ascii_lowercase();
    for (rule, verdict) in table.explain(&request) {
        let route = RouteName::from(&rule.route);
        let matched = match_text(&rule.matched);
        if verdict == Verdict::Chosen {
            let action = rule
                .filters
                .redirect
                .as_ref()
                .map(|r| format!("redirect with status {}", r.status));
            let backends = shares(rule.backends.iter().map(|b| Endpoint {
                addr: b.addr.to_string(),
                weight: b.weight,
            }));
            explanation.outcome = match (&action, backends.is_empty()) {
                (Some(action), _) => format!("{route}: {action}"),
                (None, true) => format!("{route}: no usable backend, the proxy answers 500"),
                (None, false) => format!(
                    "{route}: forwarded to {}",
                    backends
                        .iter()
                        .map(|b| format!("{} ({:.1}%)", b.endpoint.addr, b.share_percent))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            explanation.chosen = Some(Choice {
                route,
                matched,
                action,
                backends,
            });
        } else {
            explanation.others.push(Loser {
                reason: verdict_text(&verdict, rule, &host_name),
                route,
                matched,
            });
        }
    }
    if explanation.chosen.is_none() {
        explanation.outcome = "no rule matches: the proxy answers 404".into();
    }
    explanation
}

fn explain_l4(
    config: &DataplaneConfig,
    protocol: L4Protocol,
    addr: Option<IpAddr>,
    port: u16,
) -> Explanation {
    let mut explanation = empty(String::new());
    let mut listeners = config
        .l4
        .iter()
        .filter(|l| l.protocol == protocol && l.port == port)
        .filter(|l| addr.is_none_or(|a| a == l.addr));
    let Some(listener) = listeners.next() else {
        explanation.outcome = format!(
            "no {protocol:?} listener on port {port}: the XDP program passes the packets to the kernel"
        );
        return explanation;
    };
    explanation.listener = Some(format!("{}:{} ({protocol:?}, XDP)", listener.addr, port));
    let backends = shares(listener.backends.iter().map(Endpoint::from));
    explanation.outcome = if backends.is_empty() {
        format!(
            "{}: no usable backend, new flows are dropped",
            RouteName::from(&listener.route)
        )
    } else {
        format!(
            "{}: new flows spread by Maglev over {} backend(s)",
            RouteName::from(&listener.route),
            backends.len()
        )
    };
    explanation.chosen = Some(Choice {
        route: (&listener.route).into(),
        matched: format!("{}:{port}", listener.addr),
        action: None,
        backends,
    });
    // Other addresses with this port (when no address was given).
    for other in listeners {
        explanation.others.push(Loser {
            route: (&other.route).into(),
            matched: format!("{}:{port}", other.addr),
            reason: "another address of the same port; give the address to choose".into(),
        });
    }
    explanation
}

fn explain_tls(
    config: &DataplaneConfig,
    sni: &str,
    addr: Option<IpAddr>,
    port: u16,
) -> Explanation {
    let mut explanation = empty(String::new());
    // A listener on the exact address wins over one on every address.
    let Some(listener) = config
        .tls_passthrough
        .iter()
        .filter(|l| bind_serves(l.bind, addr, port))
        .min_by_key(|l| l.bind.ip().is_unspecified())
    else {
        explanation.outcome = format!("no TLS listener on port {port}");
        return explanation;
    };
    explanation.listener = Some(format!("{} (TLS)", listener.bind));
    let table = SniTable::new(listener.routes.clone());
    let chosen = table.find(sni).map(|r| r.route.clone());
    let name = sni.to_ascii_lowercase();
    for route in table.routes() {
        let covers = route.hostnames.is_empty()
            || route.hostnames.iter().any(|h| {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
                    None => h == name,
                }
            });
        let matched = hosts(&route.hostnames);
        if chosen.as_ref() == Some(&route.route) {
            let backends = shares(route.backends.iter().map(Endpoint::from));
            let mode = if route.terminate {
                "terminated by the agent, then"
            } else {
                "passed through (TLS untouched),"
            };
            explanation.outcome = if backends.is_empty() {
                format!(
                    "{}: no usable backend, the connection is closed",
                    RouteName::from(&route.route)
                )
            } else {
                format!(
                    "{}: {mode} forwarded to {} backend(s)",
                    RouteName::from(&route.route),
                    backends.len()
                )
            };
            explanation.chosen = Some(Choice {
                route: (&route.route).into(),
                matched,
                action: None,
                backends,
            });
        } else {
            explanation.others.push(Loser {
                route: (&route.route).into(),
                matched,
                reason: if covers {
                    "a more specific hostname (exact, then longest wildcard), or an older route, claims it".into()
                } else {
                    format!("its hostnames do not cover {name}")
                },
            });
        }
    }
    if explanation.chosen.is_none() {
        explanation.outcome = format!("no route for server name {name}: the connection is closed");
    }
    explanation
}

/// The explanation as text.
pub fn render(e: &Explanation) -> String {
    let mut out = format!("Request:   {}\n", e.request);
    out += &format!("Listener:  {}\n", e.listener.as_deref().unwrap_or("(none)"));
    if let Some(chosen) = &e.chosen {
        out += &format!("Route:     {}  ({})\n", chosen.route, chosen.matched);
        if !e.accepted_on.is_empty() {
            out += &format!("Accepted:  {}\n", e.accepted_on.join("; "));
        }
        if let Some(action) = &chosen.action {
            out += &format!("Action:    {action}\n");
        }
        for b in &chosen.backends {
            out += &format!(
                "Backend:   {}  weight {}  ({:.1}%)\n",
                b.endpoint.addr, b.endpoint.weight, b.share_percent
            );
        }
    }
    out += &format!("Outcome:   {}\n", e.outcome);
    if !e.others.is_empty() {
        out += "\nOther rules on this listener:\n";
        for l in &e.others {
            out += &format!("  {}  ({}): {}\n", l.route, l.matched, l.reason);
        }
    }
    if !e.not_attached.is_empty() {
        out += "\nRoutes not attached (from their status):\n";
        for n in &e.not_attached {
            out += &format!(
                "  {} {} on {}{}: {} {}: {}\n",
                n.kind,
                n.route,
                n.parent.as_deref().unwrap_or("-"),
                n.section
                    .as_deref()
                    .map(|s| format!(" listener {s}"))
                    .unwrap_or_default(),
                n.condition,
                n.reason,
                n.message
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("POST https://a.example/x?y=1", &["X-A: b".into()]).expect("parse");
        let Target::Http {
            method,
            port,
            path,
            query,
            headers,
            ..
        } = t
        else {
            panic!("not HTTP");
        };
        assert_eq!(
            (method.as_str(), port, path.as_str(), query.as_deref()),
            ("POST", 443, "/x", Some("y=1"))
        );
        assert_eq!(headers.get("x-a").map(|v| v.to_str().ok()), Some(Some("b")));
        assert!(matches!(
            Target::parse("tcp://10.0.0.1:9000", &[]).expect("tcp"),
            Target::L4 {
                protocol: L4Protocol::Tcp,
                port: 9000,
                addr: Some(_)
            }
        ));
        assert!(matches!(
            Target::parse("tls://a.example:443", &[]).expect("tls"),
            Target::Tls { port: 443, .. }
        ));
        assert!(Target::parse("tcp://10.0.0.1", &[]).is_err());
        assert!(Target::parse("ftp://x:1", &[]).is_err());
    }
}
