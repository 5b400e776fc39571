//! The one adapter from generated Gateway API types to translate's own view of
//! routes: parent refs, rules, matches and backend refs look the same whatever
//! the route kind.

use super::intern::{shared_parent_ref, shared_rule};
use crate::model::{
    Cors, HeaderModifier, HttpMatch, HttpRetry, HttpTimeouts, NameValueMatch, PathMatch,
    PathModifier, RequestRedirect, UrlRewrite, ValueMatch,
};
use crate::store::{Kind, Object, ObjectKey, Snapshot};
use gateway_api::experimental::httproutes::{
    HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirectScheme as RedirectScheme,
    HttpRouteRulesMatchesPathType,
};
use gateway_api::grpcroutes::{GrpcRouteRulesMatches, GrpcRouteRulesMatchesMethodType};
use std::sync::Arc;

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteKind {
    Http,
    Grpc,
    Tcp,
    Udp,
    Tls,
}

impl RouteKind {
    pub const fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tcp => "TCPRoute",
            RouteKind::Udp => "UDPRoute",
            RouteKind::Tls => "TLSRoute",
        }
    }

    /// The snapshot's kind of these routes.
    pub const fn object_kind(self) -> Kind {
        match self {
            RouteKind::Http => Kind::HttpRoute,
            RouteKind::Grpc => Kind::GrpcRoute,
            RouteKind::Tcp => Kind::TcpRoute,
            RouteKind::Udp => Kind::UdpRoute,
            RouteKind::Tls => Kind::TlsRoute,
        }
    }

    /// The route kind of a snapshot kind, if it is one.
    pub const fn of(kind: Kind) -> Option<Self> {
        Some(match kind {
            Kind::HttpRoute => RouteKind::Http,
            Kind::GrpcRoute => RouteKind::Grpc,
            Kind::TcpRoute => RouteKind::Tcp,
            Kind::UdpRoute => RouteKind::Udp,
            Kind::TlsRoute => RouteKind::Tls,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Hash)]
pub struct ParentRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<i32>,
}

/// Kept by the memo for every rule of every route: its names are shared
/// within the route (`Names`), its filters sized exactly.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendRef {
    pub group: Arc<str>,
    pub kind: Arc<str>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub port: Option<i32>,
    pub weight: u32,
    /// HTTPRoute/GRPCRoute filters of this backendRef (empty for L4 routes).
    pub filters: Box<[Filter]>,
}

impl BackendRef {
    /// The key of the Service (or other object) it names.
    pub fn object_key(&self) -> ObjectKey {
        ObjectKey::new(&*self.namespace, &*self.name)
    }
}

/// One `Arc` per distinct name within one route: its backendRefs mostly
/// repeat one group, kind, namespace and Service (5 rules to one Service
/// hold one copy of each name instead of 5).
#[derive(Default)]
struct Names(Vec<Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.iter().find(|known| ***known == *name) {
            return known.clone();
        }
        let name: Arc<str> = name.into();
        self.0.push(name.clone());
        name
    }
}

/// One HTTPRoute/GRPCRoute filter, free of the generated types.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect(RequestRedirect),
    Rewrite(UrlRewrite),
    Cors(Cors),
    /// Requests are copied to `backend` for `numerator / denominator` of them.
    Mirror {
        backend: BackendRef,
        numerator: u32,
        denominator: u32,
    },
}

/// Kept by the memo for every rule of every route: boxed slices (no spare
/// room, two words each); routes with rules alike share one (`shared_rule`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Shared with the proxy's rules.
    pub matches: Box<[Arc<HttpMatch>]>,
    /// GRPCRoute only, one per match: characters of the service and method
    /// matched, which order gRPC rules (the spec's precedence).
    pub grpc_precedence: Box<[(usize, usize)]>,
    pub backend_refs: Box<[BackendRef]>,
    pub filters: Box<[Filter]>,
    pub timeouts: HttpTimeouts,
    /// HTTPRoute `retry`; None for other kinds (and most rules: boxed, the
    /// memo keeps every rule).
    pub retry: Option<Box<HttpRetry>>,
    /// Why the rule cannot be served as written (e.g. an unsupported match), if so.
    pub unsupported: Option<Box<str>>,
}

impl Rule {
    /// The backendRefs of the rule's RequestMirror filters and of its
    /// backendRefs' (they must resolve like any backendRef).
    pub fn mirror_refs(&self) -> impl Iterator<Item = &BackendRef> {
        self.filters
            .iter()
            .chain(self.backend_refs.iter().flat_map(|b| &b.filters))
            .filter_map(|f| match f {
                Filter::Mirror { backend, .. } => Some(backend),
                _ => None,
            })
    }

    /// Why a match cannot be served: a regular expression that does not compile.
    fn check_regexes(&mut self) {
        let patterns = self.matches.iter().flat_map(|m| {
            let path = match &m.path {
                PathMatch::RegularExpression(r) => Some(r),
                _ => None,
            };
            path.into_iter()
                .chain(
                    m.headers
                        .iter()
                        .chain(&m.query_params)
                        .filter_map(|h| match &h.value {
                            ValueMatch::RegularExpression(r) => Some(r),
                            ValueMatch::Exact(_) => None,
                        }),
                )
        });
        for pattern in patterns {
            if let Err(e) = regex::Regex::new(pattern) {
                self.unsupported = Some(format!("regular expression {pattern:?}: {e}").into());
                return;
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Route {
    pub kind: RouteKind,
    pub key: ObjectKey,
    pub generation: i64,
    /// RFC 3339 text sorts in time order; empty when unknown.
    pub created: String,
    /// Shared with the proxy's rules where a listener takes them as they are.
    pub hostnames: Arc<[String]>,
    /// Shared with the statuses that answer them, and with other routes'
    /// equal ones.
    pub parent_refs: Vec<Arc<ParentRef>>,
    /// Shared with other routes' equal rules.
    pub rules: Vec<Arc<Rule>>,
}

fn meta_facts(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (i64, String) {
    (
        // The API server starts every object at generation 1; manifests omit it.
        meta.generation.unwrap_or(1),
        meta.creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    )
}

macro_rules! parent_ref {
    ($p:expr, $ns:expr) => {
        ParentRef {
            group: $p.group.clone().unwrap_or_else(|| GATEWAY_GROUP.into()),
            kind: $p.kind.clone().unwrap_or_else(|| "Gateway".into()),
            namespace: $p.namespace.clone().unwrap_or_else(|| $ns.clone()),
            name: $p.name.clone(),
            section_name: $p.section_name.clone(),
            port: $p.port,
        }
    };
}

macro_rules! backend_ref {
    ($b:expr, $ns:expr, $names:expr) => {
        BackendRef {
            group: $names.get($b.group.as_deref().unwrap_or_default()),
            kind: $names.get($b.kind.as_deref().unwrap_or("Service")),
            namespace: $names.get($b.namespace.as_deref().unwrap_or($ns)),
            name: $names.get(&$b.name),
            port: $b.port,
            weight: $b.weight.unwrap_or(1).max(0) as u32,
            filters: Box::default(),
        }
    };
}

fn value_match(exact: bool, value: &str) -> ValueMatch {
    if exact {
        ValueMatch::Exact(value.to_string())
    } else {
        ValueMatch::RegularExpression(value.to_string())
    }
}

fn http_match(m: &gateway_api::experimental::httproutes::HttpRouteRulesMatches) -> HttpMatch {
    use gateway_api::experimental::httproutes::{
        HttpRouteRulesMatchesHeadersType as HeaderType,
        HttpRouteRulesMatchesQueryParamsType as QueryType,
    };
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p.r#type {
                Some(HttpRouteRulesMatchesPathType::Exact) => PathMatch::Exact(value),
                Some(HttpRouteRulesMatchesPathType::PathPrefix) | None => PathMatch::Prefix(value),
                Some(HttpRouteRulesMatchesPathType::RegularExpression) => {
                    PathMatch::RegularExpression(value)
                }
            }
        }
    };
    let mut headers: Vec<NameValueMatch> = Vec::new();
    for h in m.headers.iter().flatten() {
        let name = h.name.to_ascii_lowercase();
        // The spec: only the first match of a repeated header name counts.
        if headers.iter().any(|e| e.name == name) {
            continue;
        }
        let exact = h.r#type.as_ref().is_none_or(|t| *t == HeaderType::Exact);
        headers.push(NameValueMatch {
            name,
            value: value_match(exact, &h.value),
        });
    }
    let mut query_params: Vec<NameValueMatch> = Vec::new();
    for q in m.query_params.iter().flatten() {
        if query_params.iter().any(|e| e.name == q.name) {
            continue;
        }
        let exact = q.r#type.as_ref().is_none_or(|t| *t == QueryType::Exact);
        query_params.push(NameValueMatch {
            name: q.name.clone(),
            value: value_match(exact, &q.value),
        });
    }
    HttpMatch {
        path,
        method: m
            .method
            .as_ref()
            .and_then(|method| serde_json::to_value(method).ok())
            .and_then(|v| v.as_str().map(str::to_string)),
        headers,
        query_params,
    }
}

/// A GRPCRoute match as an HTTP match on the request path `/service/method`
/// (gRPC requests are POSTs to that path), with its precedence facts.
fn grpc_match(m: &GrpcRouteRulesMatches) -> (HttpMatch, (usize, usize)) {
    use gateway_api::grpcroutes::GrpcRouteRulesMatchesHeadersType as HeaderType;
    let mut matched = HttpMatch::any();
    let mut precedence = (0, 0);
    if let Some(method) = &m.method {
        let service = method.service.as_deref().filter(|s| !s.is_empty());
        let name = method.method.as_deref().filter(|s| !s.is_empty());
        precedence = (service.map_or(0, str::len), name.map_or(0, str::len));
        let exact = method
            .r#type
            .as_ref()
            .is_none_or(|t| *t == GrpcRouteRulesMatchesMethodType::Exact);
        matched.path = match (exact, service, name) {
            (_, None, None) => PathMatch::Prefix("/".into()),
            (true, Some(s), Some(n)) => PathMatch::Exact(format!("/{s}/{n}")),
            (true, Some(s), None) => PathMatch::Prefix(format!("/{s}")),
            (true, None, Some(n)) => {
                PathMatch::RegularExpression(format!("/[^/]+/{}", regex_escape(n)))
            }
            (false, s, n) => PathMatch::RegularExpression(format!(
                "/(?:{})/(?:{})",
                s.unwrap_or("[^/]+"),
                n.unwrap_or("[^/]+")
            )),
        };
    }
    for h in m.headers.iter().flatten() {
        let name = h.name.to_ascii_lowercase();
        if matched.headers.iter().any(|e| e.name == name) {
            continue;
        }
        let exact = h.r#type.as_ref().is_none_or(|t| *t == HeaderType::Exact);
        matched.headers.push(NameValueMatch {
            name,
            value: value_match(exact, &h.value),
        });
    }
    (matched, precedence)
}

/// Escapes regular-expression metacharacters (gRPC names allow only
/// letters, digits, `_` and `.`; the dot is the one that matters).
fn regex_escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn header_modifier(
    m: &gateway_api::experimental::httproutes::HttpRouteRulesFiltersRequestHeaderModifier,
) -> HeaderModifier {
    HeaderModifier {
        set: m
            .set
            .iter()
            .flatten()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        add: m
            .add
            .iter()
            .flatten()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        remove: m
            .remove
            .iter()
            .flatten()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    }
}

fn path_modifier(
    full: Option<&String>,
    prefix: Option<&String>,
) -> Result<Option<PathModifier>, String> {
    match (full, prefix) {
        (Some(full), _) => Ok(Some(PathModifier::ReplaceFullPath(full.clone()))),
        (None, Some(prefix)) => Ok(Some(PathModifier::ReplacePrefixMatch(prefix.clone()))),
        (None, None) => Err("path modifier without a replacement".into()),
    }
}

/// Any filter list (HTTPRoute or GRPCRoute, rule or backendRef) in our shape.
/// The generated filter types of those four places share one JSON shape, so
/// they are read through HTTPRoute's rule filter type. An unsupported filter
/// makes the whole list unusable: `Err` says why.
fn filters<T: serde::Serialize>(
    list: &[T],
    ns: &str,
    names: &mut Names,
) -> Result<Box<[Filter]>, String> {
    let mut out = Vec::new();
    for raw in list {
        let f: HttpRouteRulesFilters = serde_json::to_value(raw)
            .and_then(serde_json::from_value)
            .map_err(|e| format!("filter not understood: {e}"))?;
        if let Some(m) = &f.request_header_modifier {
            out.push(Filter::RequestHeaders(header_modifier(m)));
        } else if let Some(m) = &f.response_header_modifier {
            // Same fields as the request modifier: read it the same way.
            let m = serde_json::to_value(m)
                .and_then(serde_json::from_value)
                .map_err(|e| e.to_string())?;
            out.push(Filter::ResponseHeaders(header_modifier(&m)));
        } else if let Some(r) = &f.request_redirect {
            let path = match &r.path {
                Some(p) => path_modifier(
                    p.replace_full_path.as_ref(),
                    p.replace_prefix_match.as_ref(),
                )?,
                None => None,
            };
            let status = match r.status_code {
                None => 302,
                Some(code @ (301 | 302 | 303 | 307 | 308)) => code as u16,
                Some(code) => return Err(format!("redirect status {code} is not supported")),
            };
            out.push(Filter::Redirect(RequestRedirect {
                scheme: r.scheme.as_ref().map(|s| match s {
                    RedirectScheme::Http => "http".to_string(),
                    RedirectScheme::Https => "https".to_string(),
                }),
                hostname: r.hostname.clone(),
                port: r.port.and_then(|p| u16::try_from(p).ok()),
                path,
                status,
            }));
        } else if let Some(r) = &f.url_rewrite {
            let path = match &r.path {
                Some(p) => path_modifier(
                    p.replace_full_path.as_ref(),
                    p.replace_prefix_match.as_ref(),
                )?,
                None => None,
            };
            out.push(Filter::Rewrite(UrlRewrite {
                hostname: r.hostname.clone(),
                path,
            }));
        } else if let Some(m) = &f.request_mirror {
            let (numerator, denominator) = match (&m.fraction, m.percent) {
                (Some(f), _) => (f.numerator, f.denominator.unwrap_or(100)),
                (None, Some(p)) => (p, 100),
                (None, None) => (1, 1),
            };
            let backend = &m.backend_ref;
            out.push(Filter::Mirror {
                backend: BackendRef {
                    group: names.get(backend.group.as_deref().unwrap_or_default()),
                    kind: names.get(backend.kind.as_deref().unwrap_or("Service")),
                    namespace: names.get(backend.namespace.as_deref().unwrap_or(ns)),
                    name: names.get(&backend.name),
                    port: backend.port,
                    weight: 1,
                    filters: Box::default(),
                },
                numerator: numerator.max(0) as u32,
                denominator: denominator.max(1) as u32,
            });
        } else if let Some(c) = &f.cors {
            out.push(Filter::Cors(Cors {
                allow_origins: c.allow_origins.clone().unwrap_or_default(),
                allow_methods: c.allow_methods.clone().unwrap_or_default(),
                allow_headers: c.allow_headers.clone().unwrap_or_default(),
                expose_headers: c.expose_headers.clone().unwrap_or_default(),
                allow_credentials: c.allow_credentials.unwrap_or(false),
                max_age_seconds: c.max_age.and_then(|s| u32::try_from(s).ok()),
            }));
        } else if f.extension_ref.is_some() {
            return Err("ExtensionRef filters are not supported".into());
        } else {
            return Err("a filter without its settings".into());
        }
    }
    Ok(out.into())
}

fn timeouts(
    t: Option<&gateway_api::experimental::httproutes::HttpRouteRulesTimeouts>,
) -> Result<HttpTimeouts, String> {
    let parse = |text: Option<&String>| -> Result<Option<std::time::Duration>, String> {
        let Some(text) = text else { return Ok(None) };
        let d: gateway_api::Duration =
            text.parse().map_err(|e| format!("timeout {text:?}: {e}"))?;
        // Zero means no timeout.
        Ok((!d.is_zero()).then(|| std::time::Duration::from_nanos(d.as_nanos() as u64)))
    };
    Ok(HttpTimeouts {
        request: parse(t.and_then(|t| t.request.as_ref()))?,
        backend_request: parse(t.and_then(|t| t.backend_request.as_ref()))?,
    })
}

/// Attempts when `retry` does not say: one retry.
const DEFAULT_RETRY_ATTEMPTS: u32 = 1;
/// A bound on retries whatever the route asks, so that one request cannot
/// multiply into an unbounded number of backend requests.
const MAX_RETRY_ATTEMPTS: u32 = 10;

fn retry(
    r: &gateway_api::experimental::httproutes::HttpRouteRulesRetry,
) -> Result<HttpRetry, String> {
    let backoff = match &r.backoff {
        Some(text) => {
            let d: gateway_api::Duration = text
                .parse()
                .map_err(|e| format!("retry backoff {text:?}: {e}"))?;
            Some(std::time::Duration::from_nanos(d.as_nanos() as u64))
        }
        None => None,
    };
    let codes = r
        .codes
        .iter()
        .flatten()
        .map(|&c| {
            u16::try_from(c)
                .ok()
                .filter(|c| (400..600).contains(c))
                .ok_or_else(|| format!("retry code {c} is not a 4xx or 5xx status"))
        })
        .collect::<Result<_, _>>()?;
    let attempts = r.attempts.map_or(DEFAULT_RETRY_ATTEMPTS, |a| {
        u32::try_from(a.max(0))
            .unwrap_or(u32::MAX)
            .min(MAX_RETRY_ATTEMPTS)
    });
    Ok(HttpRetry {
        attempts,
        codes,
        backoff,
    })
}

/// TCPRoute, UDPRoute and TLSRoute: rules of backendRefs only (distinct
/// generated types of the same shape; only TLSRoute has hostnames).
macro_rules! backend_only_route {
    ($route:expr, $key:expr, $kind:expr, $hostnames:expr) => {{
        let (route, key) = ($route, $key);
        let ns = &key.namespace;
        let mut names = Names::default();
        let (generation, created) = meta_facts(&route.metadata);
        Route {
            kind: $kind,
            key: key.clone(),
            generation,
            created,
            hostnames: $hostnames.into(),
            parent_refs: route
                .spec
                .parent_refs
                .iter()
                .flatten()
                .map(|p| shared_parent_ref(parent_ref!(p, ns)))
                .collect(),
            rules: route
                .spec
                .rules
                .iter()
                .map(|r| {
                    shared_rule(Rule {
                        matches: Box::default(),
                        grpc_precedence: Box::default(),
                        filters: Box::default(),
                        timeouts: HttpTimeouts::default(),
                        retry: None,
                        backend_refs: r
                            .backend_refs
                            .iter()
                            .map(|b| backend_ref!(b, ns, names))
                            .collect(),
                        unsupported: None,
                    })
                })
                .collect(),
        }
    }};
}

/// The identities of every route of the snapshot: kind by kind, each kind
/// in key order (typed routes first where a snapshot holds both forms).
pub fn route_ids(snapshot: &Snapshot) -> impl Iterator<Item = (RouteKind, &ObjectKey)> {
    let tag = |kind| move |key| (kind, key);
    let kinds = [
        RouteKind::Http,
        RouteKind::Grpc,
        RouteKind::Tcp,
        RouteKind::Udp,
        RouteKind::Tls,
    ];
    kinds.into_iter().flat_map(move |kind| {
        let typed: Box<dyn Iterator<Item = &ObjectKey>> = match kind {
            RouteKind::Http => Box::new(snapshot.http_routes.keys()),
            RouteKind::Grpc => Box::new(snapshot.grpc_routes.keys()),
            RouteKind::Tcp => Box::new(snapshot.tcp_routes.keys()),
            RouteKind::Udp => Box::new(snapshot.udp_routes.keys()),
            RouteKind::Tls => Box::new(snapshot.tls_routes.keys()),
        };
        let parsed = snapshot
            .parsed_routes
            .get(&kind)
            .into_iter()
            .flat_map(|m| m.keys());
        typed.chain(parsed).map(tag(kind))
    })
}

/// One route of the snapshot in translate's view, if the snapshot has it:
/// shared when the snapshot holds it parsed, else parsed from its object.
pub fn route(snapshot: &Snapshot, kind: RouteKind, key: &ObjectKey) -> Option<Arc<Route>> {
    if let Some(parsed) = snapshot.parsed_routes.get(&kind).and_then(|m| m.get(key)) {
        return Some(parsed.clone());
    }
    let object = match kind {
        RouteKind::Http => http_route(key, snapshot.http_routes.get(key)?),
        RouteKind::Grpc => grpc_route(key, snapshot.grpc_routes.get(key)?),
        RouteKind::Tcp => {
            let route = snapshot.tcp_routes.get(key)?;
            backend_only_route!(route, key, RouteKind::Tcp, Vec::new())
        }
        RouteKind::Udp => {
            let route = snapshot.udp_routes.get(key)?;
            backend_only_route!(route, key, RouteKind::Udp, Vec::new())
        }
        RouteKind::Tls => {
            let route = snapshot.tls_routes.get(key)?;
            backend_only_route!(route, key, RouteKind::Tls, route.spec.hostnames.clone())
        }
    };
    Some(Arc::new(object))
}

/// A route object in translate's view (None for other kinds): what a source
/// keeps in place of the object when nothing else reads it.
pub fn parse(key: &ObjectKey, object: &Object) -> Option<Route> {
    Some(match object {
        Object::HttpRoute(route) => http_route(key, route),
        Object::GrpcRoute(route) => grpc_route(key, route),
        Object::TcpRoute(route) => backend_only_route!(route, key, RouteKind::Tcp, Vec::new()),
        Object::UdpRoute(route) => backend_only_route!(route, key, RouteKind::Udp, Vec::new()),
        Object::TlsRoute(route) => {
            backend_only_route!(route, key, RouteKind::Tls, route.spec.hostnames.clone())
        }
        _ => return None,
    })
}

fn http_route(key: &ObjectKey, route: &gateway_api::experimental::httproutes::HttpRoute) -> Route {
    let ns = &key.namespace;
    let mut names = Names::default();
    let (generation, created) = meta_facts(&route.metadata);
    let rules = route.spec.rules.as_deref().unwrap_or_default();
    Route {
        kind: RouteKind::Http,
        key: key.clone(),
        generation,
        created,
        hostnames: route.spec.hostnames.as_deref().unwrap_or_default().into(),
        parent_refs: route
            .spec
            .parent_refs
            .iter()
            .flatten()
            .map(|p| shared_parent_ref(parent_ref!(p, ns)))
            .collect(),
        rules: rules
            .iter()
            .map(|r| {
                let matches = match &r.matches {
                    Some(ms) if !ms.is_empty() => {
                        ms.iter().map(|m| Arc::new(http_match(m))).collect()
                    }
                    _ => [Arc::new(HttpMatch::any())].into(),
                };
                let mut unsupported = None;
                let mut backend_refs =
                    Vec::with_capacity(r.backend_refs.as_ref().map_or(0, Vec::len));
                for b in r.backend_refs.iter().flatten() {
                    let mut backend = backend_ref!(b, ns, names);
                    match filters(b.filters.as_deref().unwrap_or_default(), ns, &mut names) {
                        Ok(f) if f.iter().any(|f| matches!(f, Filter::Cors(_))) => {
                            unsupported = Some("CORS is a rule filter, not a backendRef's".into());
                        }
                        Ok(f) => backend.filters = f,
                        Err(e) => unsupported = Some(e.into()),
                    }
                    backend_refs.push(backend);
                }
                let rule_filters =
                    filters(r.filters.as_deref().unwrap_or_default(), ns, &mut names)
                        .unwrap_or_else(|e| {
                            unsupported = Some(e.into());
                            Box::default()
                        });
                let rule_timeouts = timeouts(r.timeouts.as_ref()).unwrap_or_else(|e| {
                    unsupported = Some(e.into());
                    HttpTimeouts::default()
                });
                let rule_retry = r.retry.as_ref().map(retry).transpose().unwrap_or_else(|e| {
                    unsupported = Some(e.into());
                    None
                });
                let rule_retry = rule_retry.map(Box::new);
                let mut rule = Rule {
                    grpc_precedence: Box::default(),
                    matches,
                    backend_refs: backend_refs.into(),
                    filters: rule_filters,
                    timeouts: rule_timeouts,
                    retry: rule_retry,
                    unsupported,
                };
                rule.check_regexes();
                shared_rule(rule)
            })
            .collect(),
    }
}

fn grpc_route(key: &ObjectKey, route: &gateway_api::grpcroutes::GrpcRoute) -> Route {
    let ns = &key.namespace;
    let mut names = Names::default();
    let (generation, created) = meta_facts(&route.metadata);
    let rules = route.spec.rules.as_deref().unwrap_or_default();
    Route {
        kind: RouteKind::Grpc,
        key: key.clone(),
        generation,
        created,
        hostnames: route.spec.hostnames.as_deref().unwrap_or_default().into(),
        parent_refs: route
            .spec
            .parent_refs
            .iter()
            .flatten()
            .map(|p| shared_parent_ref(parent_ref!(p, ns)))
            .collect(),
        rules: rules
            .iter()
            .map(|r| {
                let (matches, grpc_precedence) = match &r.matches {
                    Some(ms) if !ms.is_empty() => {
                        let (matches, precedence): (Vec<_>, Vec<_>) = ms
                            .iter()
                            .map(|m| {
                                let (matched, precedence) = grpc_match(m);
                                (Arc::new(matched), precedence)
                            })
                            .unzip();
                        (matches.into(), precedence.into())
                    }
                    _ => ([Arc::new(HttpMatch::any())].into(), [(0, 0)].into()),
                };
                let mut unsupported = None;
                let mut backend_refs =
                    Vec::with_capacity(r.backend_refs.as_ref().map_or(0, Vec::len));
                for b in r.backend_refs.iter().flatten() {
                    let mut backend = backend_ref!(b, ns, names);
                    match filters(b.filters.as_deref().unwrap_or_default(), ns, &mut names) {
                        Ok(f) => backend.filters = f,
                        Err(e) => unsupported = Some(e.into()),
                    }
                    backend_refs.push(backend);
                }
                let rule_filters =
                    filters(r.filters.as_deref().unwrap_or_default(), ns, &mut names)
                        .unwrap_or_else(|e| {
                            unsupported = Some(e.into());
                            Box::default()
                        });
                let mut rule = Rule {
                    matches,
                    grpc_precedence,
                    backend_refs: backend_refs.into(),
                    filters: rule_filters,
                    timeouts: HttpTimeouts::default(),
                    retry: None,
                    unsupported,
                };
                rule.check_regexes();
                shared_rule(rule)
            })
            .collect(),
    }
}
