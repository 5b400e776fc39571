//! The one adapter from generated Gateway API types to translate's own view of
//! routes: parent refs, rules, matches and backend refs look the same whatever
//! the route kind.

use crate::model::{HttpMatch, PathMatch};
use crate::store::{ObjectKey, Snapshot};
use gateway_api::httproutes::HttpRouteRulesMatchesPathType;

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteKind {
    Http,
    Tcp,
    Udp,
    Tls,
}

impl RouteKind {
    pub const fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Tcp => "TCPRoute",
            RouteKind::Udp => "UDPRoute",
            RouteKind::Tls => "TLSRoute",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub port: Option<i32>,
    pub weight: u32,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub matches: Vec<HttpMatch>,
    pub backend_refs: Vec<BackendRef>,
    /// Why the rule cannot be served as written (e.g. an unsupported match), if so.
    pub unsupported: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Route {
    pub kind: RouteKind,
    pub key: ObjectKey,
    pub generation: i64,
    /// RFC 3339 text sorts in time order; empty when unknown.
    pub created: String,
    pub hostnames: Vec<String>,
    pub parent_refs: Vec<ParentRef>,
    pub rules: Vec<Rule>,
}

fn meta_facts(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (i64, String) {
    (
        meta.generation.unwrap_or(0),
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
    ($b:expr, $ns:expr) => {
        BackendRef {
            group: $b.group.clone().unwrap_or_default(),
            kind: $b.kind.clone().unwrap_or_else(|| "Service".into()),
            namespace: $b.namespace.clone().unwrap_or_else(|| $ns.clone()),
            name: $b.name.clone(),
            port: $b.port,
            weight: $b.weight.unwrap_or(1).max(0) as u32,
        }
    };
}

fn http_match(m: &gateway_api::httproutes::HttpRouteRulesMatches) -> Result<HttpMatch, String> {
    if m.headers.as_ref().is_some_and(|h| !h.is_empty())
        || m.query_params.as_ref().is_some_and(|q| !q.is_empty())
        || m.method.is_some()
    {
        return Err("header, query parameter and method matches are not supported yet".into());
    }
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p.r#type {
                Some(HttpRouteRulesMatchesPathType::Exact) => PathMatch::Exact(value),
                Some(HttpRouteRulesMatchesPathType::PathPrefix) | None => PathMatch::Prefix(value),
                Some(HttpRouteRulesMatchesPathType::RegularExpression) => {
                    return Err("RegularExpression path matches are not supported yet".into());
                }
            }
        }
    };
    Ok(HttpMatch { path })
}

/// Every route of the snapshot, whatever its kind, in one shape.
pub fn routes(snapshot: &Snapshot) -> Vec<Route> {
    let mut routes = Vec::new();
    for (key, route) in &snapshot.http_routes {
        let ns = &key.namespace;
        let (generation, created) = meta_facts(&route.metadata);
        let rules = route.spec.rules.clone().unwrap_or_default();
        routes.push(Route {
            kind: RouteKind::Http,
            key: key.clone(),
            generation,
            created,
            hostnames: route.spec.hostnames.clone().unwrap_or_default(),
            parent_refs: route
                .spec
                .parent_refs
                .iter()
                .flatten()
                .map(|p| parent_ref!(p, ns))
                .collect(),
            rules: rules
                .iter()
                .map(|r| {
                    let matches: Result<Vec<_>, _> = match &r.matches {
                        Some(ms) if !ms.is_empty() => ms.iter().map(http_match).collect(),
                        _ => Ok(vec![HttpMatch {
                            path: PathMatch::Prefix("/".into()),
                        }]),
                    };
                    let filters = r.filters.as_ref().is_some_and(|f| !f.is_empty());
                    let (matches, mut unsupported) = match matches {
                        Ok(m) => (m, None),
                        Err(e) => (Vec::new(), Some(e)),
                    };
                    if filters && unsupported.is_none() {
                        unsupported = Some("filters are not supported yet".into());
                    }
                    Rule {
                        matches,
                        backend_refs: r
                            .backend_refs
                            .iter()
                            .flatten()
                            .map(|b| backend_ref!(b, ns))
                            .collect(),
                        unsupported,
                    }
                })
                .collect(),
        });
    }
    macro_rules! l4_routes {
        ($map:expr, $kind:expr) => {
            for (key, route) in &$map {
                let ns = &key.namespace;
                let (generation, created) = meta_facts(&route.metadata);
                routes.push(Route {
                    kind: $kind,
                    key: key.clone(),
                    generation,
                    created,
                    hostnames: Vec::new(),
                    parent_refs: route
                        .spec
                        .parent_refs
                        .iter()
                        .flatten()
                        .map(|p| parent_ref!(p, ns))
                        .collect(),
                    rules: route
                        .spec
                        .rules
                        .iter()
                        .map(|r| Rule {
                            matches: Vec::new(),
                            backend_refs: r
                                .backend_refs
                                .iter()
                                .map(|b| backend_ref!(b, ns))
                                .collect(),
                            unsupported: None,
                        })
                        .collect(),
                });
            }
        };
    }
    l4_routes!(snapshot.tcp_routes, RouteKind::Tcp);
    l4_routes!(snapshot.udp_routes, RouteKind::Udp);
    for (key, route) in &snapshot.tls_routes {
        let ns = &key.namespace;
        let (generation, created) = meta_facts(&route.metadata);
        routes.push(Route {
            kind: RouteKind::Tls,
            key: key.clone(),
            generation,
            created,
            hostnames: route.spec.hostnames.clone(),
            parent_refs: route
                .spec
                .parent_refs
                .iter()
                .flatten()
                .map(|p| parent_ref!(p, ns))
                .collect(),
            rules: route
                .spec
                .rules
                .iter()
                .map(|r| Rule {
                    matches: Vec::new(),
                    backend_refs: r.backend_refs.iter().map(|b| backend_ref!(b, ns)).collect(),
                    unsupported: None,
                })
                .collect(),
        });
    }
    routes
}
