//! HTTPRoute and GRPCRoute rules of one HTTP listener, as the proxy's rules:
//! matches, filters, timeouts and backends, with the key that orders them by
//! the spec's precedence.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::backend_tls::BackendTlsPolicies;
use super::input::{BackendRef, Filter, Route, RouteKind};
use super::intern::Interner;
use super::{Attachment, Listener, resolve_backends, route_ref};
use crate::model::{
    BackendProtocol, HttpAction, HttpBackend, HttpFilters, HttpMatch, HttpRule, PathMatch,
    RequestMirror, RouteRef,
};
use crate::store::{ObjectKey, Snapshot};

/// A Service port with this appProtocol speaks HTTP/2 without TLS.
const APP_PROTOCOL_H2C: &str = "kubernetes.io/h2c";

/// Adds the rules of the routes attached to `listener` to its sockets in `http`.
pub(super) fn listener_rules<'a>(
    listener: &Listener,
    attached: &[Attachment<'a>],
    snapshot: &Snapshot,
    policies: &BackendTlsPolicies,
    http: &mut BTreeMap<SocketAddr, Vec<(SortKey<'a>, HttpRule)>>,
    shared: &mut Interner,
) {
    let binds = super::listener_binds(listener);
    let listener_hostname = listener.hostname.map(str::to_ascii_lowercase);
    for attachment in attached {
        let route = attachment.route;
        let hostnames = attachment.hostnames;
        // One copy of the route's names for all its rules.
        let names = route_ref(route, 0);
        for (index, rule) in route.rules.iter().enumerate() {
            let redirects = rule
                .filters
                .iter()
                .any(|f| matches!(f, Filter::Redirect(_)));
            let (backends, invalid_weight) = if rule.unsupported.is_some() {
                (Vec::new(), 1)
            } else if rule.backend_refs.is_empty() && !redirects {
                // The spec: a rule with nothing to forward to answers 500.
                (Vec::new(), 1)
            } else {
                http_backends(
                    route,
                    &rule.backend_refs,
                    listener.gateway,
                    snapshot,
                    policies,
                    shared,
                )
            };
            let backends = shared.backends(backends);
            // A rule that cannot be served as written only answers 500.
            let filters = shared.filters(if rule.unsupported.is_some() {
                HttpFilters::default()
            } else {
                http_filters(route, &rule.filters, listener.gateway, snapshot, policies)
            });
            let action = shared.action(HttpAction {
                filters,
                timeouts: rule.timeouts,
                retry: rule.retry.clone(),
                backends,
                invalid_weight,
            });
            for (match_index, m) in rule.matches.iter().enumerate() {
                let entry = HttpRule {
                    route: RouteRef {
                        rule: index as u32,
                        ..names.clone()
                    },
                    hostnames: hostnames.clone(),
                    listener_hostname: listener_hostname.clone(),
                    matched: m.clone(),
                    action: action.clone(),
                };
                let grpc = rule.grpc_precedence.get(match_index).copied();
                let key = SortKey::new(route, m, grpc, index, match_index);
                for bind in &binds {
                    http.entry(*bind)
                        .or_default()
                        .push((key.clone(), entry.clone()));
                }
            }
        }
    }
    for bind in binds {
        http.entry(bind).or_default();
    }
}

/// Endpoints of each backendRef with that ref's filters, protocol and TLS, and
/// the weight of refs that could not be resolved (or whose BackendTLSPolicy
/// cannot be used: no plain-text fallback).
fn http_backends(
    route: &Route,
    refs: &[BackendRef],
    gateway: &ObjectKey,
    snapshot: &Snapshot,
    policies: &BackendTlsPolicies,
    shared: &mut Interner,
) -> (Vec<HttpBackend>, u32) {
    let mut backends = Vec::new();
    let mut invalid_weight = 0u32;
    for backend_ref in refs {
        let Ok(tls) = policies.for_backend(backend_ref, gateway, snapshot) else {
            invalid_weight = invalid_weight.saturating_add(backend_ref.weight);
            continue;
        };
        let (endpoints, invalid) =
            resolve_backends(route, std::slice::from_ref(backend_ref), snapshot);
        invalid_weight = invalid_weight.saturating_add(invalid);
        let protocol = if route.kind == RouteKind::Grpc || is_h2c(backend_ref, snapshot) {
            BackendProtocol::H2c
        } else {
            BackendProtocol::Http1
        };
        let filters = shared.filters(http_filters(
            route,
            &backend_ref.filters,
            gateway,
            snapshot,
            policies,
        ));
        backends.extend(endpoints.into_iter().map(|e| HttpBackend {
            addr: e.addr,
            weight: e.weight,
            protocol,
            filters: filters.clone(),
            tls: tls.clone(),
        }));
    }
    (backends, invalid_weight)
}

fn is_h2c(backend: &BackendRef, snapshot: &Snapshot) -> bool {
    let Some(service) = snapshot.services.get(&backend.object_key()) else {
        return false;
    };
    service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .find(|p| Some(p.port) == backend.port)
        .and_then(|p| p.app_protocol.as_deref())
        == Some(APP_PROTOCOL_H2C)
}

/// Our filters in the proxy's shape; mirror backends are resolved here (a
/// mirror whose Service has no ready endpoint, or whose BackendTLSPolicy
/// cannot be used, copies nothing: never in plain text to a TLS backend).
fn http_filters(
    route: &Route,
    filters: &[Filter],
    gateway: &ObjectKey,
    snapshot: &Snapshot,
    policies: &BackendTlsPolicies,
) -> HttpFilters {
    let mut out = HttpFilters::default();
    for filter in filters {
        match filter {
            Filter::RequestHeaders(m) => out.request_headers = Some(m.clone()),
            Filter::ResponseHeaders(m) => out.response_headers = Some(m.clone()),
            Filter::Redirect(r) => out.redirect = Some(r.clone()),
            Filter::Rewrite(r) => out.rewrite = Some(r.clone()),
            Filter::Cors(c) => out.cors = Some(c.clone()),
            Filter::Mirror {
                backend,
                numerator,
                denominator,
            } => {
                let Ok(tls) = policies.for_backend(backend, gateway, snapshot) else {
                    continue;
                };
                let (backends, _) =
                    resolve_backends(route, std::slice::from_ref(backend), snapshot);
                if !backends.is_empty() && *numerator > 0 {
                    out.mirrors.push(RequestMirror {
                        backends,
                        numerator: *numerator,
                        denominator: *denominator,
                        tls,
                    });
                }
            }
        }
    }
    out
}

/// Precedence among the rules of one listener (hostnames are ordered by the
/// proxy's host index). HTTPRoute: exact path, then regular expression, then
/// the longest prefix; then a method match, most header matches, most query
/// parameter matches. GRPCRoute: longest service, longest method, most header
/// matches. Then, for both, the oldest route, namespace/name, rule and match order.
/// Borrows from the route: one key per rule match and socket while a
/// socket's rules are sorted.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct SortKey<'a> {
    specificity: [Reverse<usize>; 5],
    created: &'a str,
    route: &'a ObjectKey,
    rule: usize,
    matched: usize,
}

impl<'a> SortKey<'a> {
    fn new(
        route: &'a Route,
        m: &HttpMatch,
        grpc: Option<(usize, usize)>,
        rule: usize,
        matched: usize,
    ) -> Self {
        let specificity = match grpc {
            Some((service, method)) => [
                Reverse(service),
                Reverse(method),
                Reverse(m.headers.len()),
                Reverse(0),
                Reverse(0),
            ],
            None => {
                let (rank, len) = match &m.path {
                    PathMatch::Exact(p) => (2, p.len()),
                    PathMatch::RegularExpression(p) => (1, p.len()),
                    PathMatch::Prefix(p) => (0, p.len()),
                };
                [
                    Reverse(rank),
                    Reverse(len),
                    Reverse(usize::from(m.method.is_some())),
                    Reverse(m.headers.len()),
                    Reverse(m.query_params.len()),
                ]
            }
        };
        Self {
            specificity,
            created: &route.created,
            route: &route.key,
            rule,
            matched,
        }
    }
}

#[cfg(test)]
mod tests;
