//! Gateway API semantics as a pure function: a snapshot in, the data planes'
//! configuration and a status report out. No I/O, no clock, no kube client.

pub mod certificates;
pub mod input;
mod passthrough;
mod status;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::Service;

use crate::model::{
    ANY_V4, DataplaneConfig, ENDPOINT_WEIGHT_SCALE, HttpListener, HttpRule, L4Listener, L4Protocol,
    RouteRef, ServerCertificate, WeightedEndpoint,
};
use crate::store::{ObjectKey, Snapshot};
use input::{BackendRef, GATEWAY_GROUP, ParentRef, Route, RouteKind};
pub use status::{Condition, ObjectStatus};

/// What translate needs to know about the node it runs for.
#[derive(Clone, Debug)]
pub struct Settings {
    /// GatewayClasses naming this controller are ours; everything else is ignored.
    pub controller_name: String,
    /// Where a Gateway without `spec.addresses` is served (L4: programmed per address).
    pub node_addresses: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug, Default)]
pub struct Output {
    pub config: DataplaneConfig,
    pub statuses: Vec<ObjectStatus>,
}

struct Listener<'a> {
    gateway: &'a ObjectKey,
    name: &'a str,
    port: u16,
    protocol: &'a str,
    hostname: Option<&'a str>,
    allowed: &'a Option<gateway_api::gateways::GatewayListenersAllowedRoutes>,
    tls: Option<&'a gateway_api::gateways::GatewayListenersTls>,
    addresses: &'a [IpAddr],
}

/// A route's acceptance on one listener, with the hostnames it serves there.
struct Attachment<'a> {
    route: &'a Route,
    hostnames: Vec<String>,
}

pub fn translate(snapshot: &Snapshot, settings: &Settings) -> Output {
    let mut statuses = Vec::new();
    let our_classes: Vec<&str> = snapshot
        .gateway_classes
        .iter()
        .filter(|(_, c)| c.spec.controller_name == settings.controller_name)
        .map(|(k, _)| k.name.as_str())
        .collect();
    for class in &our_classes {
        statuses.push(
            ObjectStatus::new("GatewayClass", ObjectKey::new("", *class)).with(Condition::yes(
                "Accepted",
                "Accepted",
                "accepted by this controller",
            )),
        );
    }

    // Addresses of each of our Gateways.
    let mut gateway_addresses: BTreeMap<&ObjectKey, Vec<IpAddr>> = BTreeMap::new();
    for (key, gateway) in &snapshot.gateways {
        if !our_classes.contains(&gateway.spec.gateway_class_name.as_str()) {
            continue;
        }
        let mut addresses = Vec::new();
        let mut bad = Vec::new();
        for a in gateway.spec.addresses.iter().flatten() {
            let is_ip = a.r#type.as_deref().is_none_or(|t| t == "IPAddress");
            match a.value.as_deref().map(str::parse::<IpAddr>) {
                Some(Ok(ip)) if is_ip => addresses.push(ip),
                _ => bad.push(a.value.clone().unwrap_or_default()),
            }
        }
        let mut status = ObjectStatus::new("Gateway", key.clone());
        if bad.is_empty() {
            status.push(Condition::yes("Accepted", "Accepted", "accepted"));
            status.push(Condition::yes(
                "Programmed",
                "Programmed",
                "programmed on this node",
            ));
        } else {
            let message = format!("unusable addresses: {}", bad.join(", "));
            status.push(Condition::yes("Accepted", "Accepted", "accepted"));
            status.push(Condition::no("Programmed", "AddressNotUsable", &message));
        }
        statuses.push(status);
        gateway_addresses.insert(key, addresses);
    }

    let mut listeners = Vec::new();
    for (key, addresses) in &gateway_addresses {
        let gateway = &snapshot.gateways[*key];
        for l in &gateway.spec.listeners {
            let Ok(port) = u16::try_from(l.port) else {
                continue;
            };
            listeners.push(Listener {
                gateway: key,
                name: &l.name,
                port,
                protocol: &l.protocol,
                hostname: l.hostname.as_deref(),
                allowed: &l.allowed_routes,
                tls: l.tls.as_ref(),
                addresses,
            });
            if !matches!(
                l.protocol.as_str(),
                "HTTP" | "HTTPS" | "TLS" | "TCP" | "UDP"
            ) {
                let mut status = ObjectStatus::new("Gateway", (*key).clone());
                status.section = Some(l.name.clone());
                status.push(Condition::no(
                    "Accepted",
                    "UnsupportedProtocol",
                    &format!("protocol {} is not served yet", l.protocol),
                ));
                statuses.push(status);
            }
        }
    }

    let routes = input::routes(snapshot);
    let mut attachments: Vec<Vec<Attachment>> = listeners.iter().map(|_| Vec::new()).collect();
    for route in &routes {
        for parent in &route.parent_refs {
            if parent.group != GATEWAY_GROUP || parent.kind != "Gateway" {
                continue;
            }
            let parent_key = ObjectKey::new(&parent.namespace, &parent.name);
            if !gateway_addresses.contains_key(&parent_key) {
                continue; // Not a Gateway of ours: its controller writes this status.
            }
            let mut status = ObjectStatus::new(route.kind.name(), route.key.clone());
            status.parent = Some(parent_key.clone());
            status.section = parent.section_name.clone();
            let accepted = attach(route, parent, &parent_key, &listeners, snapshot);
            match accepted {
                Ok(hits) => {
                    status.push(Condition::yes("Accepted", "Accepted", "accepted"));
                    for (index, hostnames) in hits {
                        attachments[index].push(Attachment { route, hostnames });
                    }
                }
                Err((reason, message)) => status.push(Condition::no("Accepted", reason, &message)),
            }
            status.push(resolved_refs_condition(route, snapshot));
            statuses.push(status);
        }
    }

    let mut config = DataplaneConfig::default();
    let mut http: BTreeMap<SocketAddr, Vec<(SortKey, HttpRule)>> = BTreeMap::new();
    let mut https_certificates: BTreeMap<SocketAddr, Vec<ServerCertificate>> = BTreeMap::new();
    let mut tls_passthrough = BTreeMap::new();
    for (listener, attached) in listeners.iter().zip(&attachments) {
        match listener.protocol {
            "TCP" | "UDP" => {
                let protocol = if listener.protocol == "TCP" {
                    L4Protocol::Tcp
                } else {
                    L4Protocol::Udp
                };
                // One route per L4 listener: the oldest wins, then by namespace/name.
                let Some(first) = attached.iter().min_by(|a, b| {
                    (&a.route.created, &a.route.key).cmp(&(&b.route.created, &b.route.key))
                }) else {
                    continue;
                };
                let Some(rule) = first.route.rules.first() else {
                    continue;
                };
                let (backends, _) = resolve_backends(first.route, &rule.backend_refs, snapshot);
                let addrs: Vec<Ipv4Addr> = if listener.addresses.is_empty() {
                    settings.node_addresses.clone()
                } else {
                    listener
                        .addresses
                        .iter()
                        .filter_map(|a| match a {
                            IpAddr::V4(v4) => Some(*v4),
                            IpAddr::V6(_) => None,
                        })
                        .collect()
                };
                for addr in addrs {
                    config.l4.push(L4Listener {
                        addr,
                        port: listener.port,
                        protocol,
                        route: route_ref(first.route, 0),
                        backends: backends.clone(),
                    });
                }
            }
            "TLS" => {
                passthrough::add_listener(
                    listener,
                    attached,
                    snapshot,
                    &mut tls_passthrough,
                    &mut statuses,
                );
            }
            "HTTP" | "HTTPS" => {
                let binds = listener_binds(listener);
                if listener.protocol == "HTTPS" {
                    let refs = listener.tls.and_then(|t| t.certificate_refs.as_deref());
                    let (certificates, problems) = certificates::listener_certificates(
                        snapshot,
                        &listener.gateway.namespace,
                        listener.hostname,
                        refs.unwrap_or_default(),
                    );
                    for problem in problems {
                        let mut status = ObjectStatus::new("Gateway", listener.gateway.clone());
                        status.section = Some(listener.name.to_string());
                        status.push(Condition::no(
                            "ResolvedRefs",
                            problem.reason,
                            &problem.message,
                        ));
                        statuses.push(status);
                    }
                    for bind in &binds {
                        https_certificates
                            .entry(*bind)
                            .or_default()
                            .extend(certificates.iter().cloned());
                    }
                }
                for attachment in attached {
                    let route = attachment.route;
                    for (index, rule) in route.rules.iter().enumerate() {
                        let (backends, invalid_weight) = if rule.unsupported.is_some() {
                            (Vec::new(), 1)
                        } else {
                            resolve_backends(route, &rule.backend_refs, snapshot)
                        };
                        for (match_index, m) in rule.matches.iter().enumerate() {
                            let entry = HttpRule {
                                route: route_ref(route, index as u32),
                                hostnames: attachment.hostnames.clone(),
                                matched: m.clone(),
                                backends: backends.clone(),
                                invalid_weight,
                            };
                            let key = SortKey::new(route, &entry, index, match_index);
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
            _ => {}
        }
    }
    config.l4.sort();
    config
        .l4
        .dedup_by(|a, b| (a.addr, a.port, a.protocol) == (b.addr, b.port, b.protocol));
    for (bind, mut rules) in http {
        rules.sort_by(|a, b| a.0.cmp(&b.0));
        config.http.push(HttpListener {
            bind,
            rules: rules.into_iter().map(|(_, r)| r).collect(),
            certificates: https_certificates.remove(&bind).unwrap_or_default(),
        });
    }
    config.tls_passthrough = passthrough::finish(tls_passthrough);
    Output { config, statuses }
}

/// HTTPRoute precedence among matches: exact paths first, then longer paths,
/// then the oldest route, then namespace/name, then rule and match order.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey {
    prefix: bool,
    longer_first: std::cmp::Reverse<usize>,
    created: String,
    route: ObjectKey,
    rule: usize,
    matched: usize,
}

impl SortKey {
    fn new(route: &Route, rule: &HttpRule, index: usize, match_index: usize) -> Self {
        let (prefix, len) = match &rule.matched.path {
            crate::model::PathMatch::Exact(p) => (false, p.len()),
            crate::model::PathMatch::Prefix(p) => (true, p.len()),
        };
        Self {
            prefix,
            longer_first: std::cmp::Reverse(len),
            created: route.created.clone(),
            route: route.key.clone(),
            rule: index,
            matched: match_index,
        }
    }
}

/// The sockets a listener is served on: its Gateway's addresses, or every address.
fn listener_binds(listener: &Listener) -> Vec<SocketAddr> {
    if listener.addresses.is_empty() {
        vec![SocketAddr::new(ANY_V4, listener.port)]
    } else {
        listener
            .addresses
            .iter()
            .map(|a| SocketAddr::new(*a, listener.port))
            .collect()
    }
}

fn route_ref(route: &Route, rule: u32) -> RouteRef {
    RouteRef {
        kind: route.kind.name(),
        namespace: route.key.namespace.clone(),
        name: route.key.name.clone(),
        rule,
    }
}

type Rejection = (&'static str, String);

/// The listeners of `parent_key` this route attaches to (index, hostnames), or
/// why none accepts it.
fn attach(
    route: &Route,
    parent: &ParentRef,
    parent_key: &ObjectKey,
    listeners: &[Listener],
    snapshot: &Snapshot,
) -> Result<Vec<(usize, Vec<String>)>, Rejection> {
    let candidates: Vec<(usize, &Listener)> = listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.gateway == parent_key)
        .filter(|(_, l)| parent.section_name.as_deref().is_none_or(|s| s == l.name))
        .filter(|(_, l)| parent.port.is_none_or(|p| p == i32::from(l.port)))
        .collect();
    if candidates.is_empty() {
        return Err((
            "NoMatchingParent",
            "no listener matches the parentRef's sectionName and port".into(),
        ));
    }
    let allowed: Vec<(usize, &Listener)> = candidates
        .into_iter()
        .filter(|(_, l)| {
            kind_allowed(l, route.kind) && namespace_allowed(l, &route.key.namespace, snapshot)
        })
        .collect();
    if allowed.is_empty() {
        return Err((
            "NotAllowedByListeners",
            "no listener allows this route's kind and namespace".into(),
        ));
    }
    let mut hits = Vec::new();
    for (index, listener) in allowed {
        if !matches!(route.kind, RouteKind::Http | RouteKind::Tls) {
            hits.push((index, Vec::new()));
            continue;
        }
        if let Some(hostnames) = intersect_hostnames(listener.hostname, &route.hostnames) {
            hits.push((index, hostnames));
        }
    }
    if hits.is_empty() {
        return Err((
            "NoMatchingListenerHostname",
            "no listener hostname intersects the route's hostnames".into(),
        ));
    }
    Ok(hits)
}

fn kind_allowed(listener: &Listener, kind: RouteKind) -> bool {
    let explicit = listener.allowed.as_ref().and_then(|a| a.kinds.as_ref());
    match explicit {
        Some(kinds) if !kinds.is_empty() => kinds.iter().any(|k| {
            k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP && k.kind == kind.name()
        }),
        _ => matches!(
            (listener.protocol, kind),
            ("HTTP" | "HTTPS", RouteKind::Http)
                | ("TLS", RouteKind::Tls)
                | ("TCP", RouteKind::Tcp)
                | ("UDP", RouteKind::Udp)
        ),
    }
}

fn namespace_allowed(listener: &Listener, route_namespace: &str, snapshot: &Snapshot) -> bool {
    use gateway_api::gateways::GatewayListenersAllowedRoutesNamespacesFrom as From;
    let namespaces = listener
        .allowed
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match namespaces
        .and_then(|n| n.from.clone())
        .unwrap_or(From::Same)
    {
        From::Same => route_namespace == listener.gateway.namespace,
        From::All => true,
        From::Selector => {
            let Some(selector) = namespaces.and_then(|n| n.selector.as_ref()) else {
                return false;
            };
            let labels = snapshot
                .namespaces
                .get(&ObjectKey::new("", route_namespace))
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default();
            let labels_match = selector
                .match_labels
                .iter()
                .flatten()
                .all(|(k, v)| labels.get(k) == Some(v));
            let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
                let values = e.values.clone().unwrap_or_default();
                match e.operator.as_str() {
                    "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
                    "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
                    "Exists" => labels.contains_key(&e.key),
                    "DoesNotExist" => !labels.contains_key(&e.key),
                    _ => false,
                }
            });
            labels_match && expressions_match
        }
    }
}

/// Does `host` (possibly a `*.` wildcard) fall under `pattern` (possibly a wildcard)?
pub fn hostname_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// The hostnames a route serves on a listener, or None when they do not intersect.
/// Empty means "any host".
fn intersect_hostnames(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let Some(listener) = listener else {
        return Some(route.to_vec());
    };
    if route.is_empty() {
        return Some(vec![listener.to_string()]);
    }
    let mut out = Vec::new();
    for r in route {
        if hostname_matches(listener, r) {
            out.push(r.clone());
        } else if hostname_matches(r, listener) {
            out.push(listener.to_string());
        }
    }
    (!out.is_empty()).then_some(out)
}

/// True when `from_namespace`'s route of `kind` may reference `to` in another namespace.
fn reference_granted(
    snapshot: &Snapshot,
    kind: RouteKind,
    from_namespace: &str,
    to: &BackendRef,
) -> bool {
    snapshot
        .reference_grants
        .iter()
        .filter(|(key, _)| key.namespace == to.namespace)
        .any(|(_, grant)| {
            grant.spec.from.iter().any(|f| {
                f.group == GATEWAY_GROUP && f.kind == kind.name() && f.namespace == from_namespace
            }) && grant.spec.to.iter().any(|t| {
                t.group == to.group
                    && t.kind == to.kind
                    && t.name.as_deref().is_none_or(|n| n == to.name)
            })
        })
}

/// Why a backendRef cannot be used, as (reason, message).
fn backend_problem(route: &Route, backend: &BackendRef, snapshot: &Snapshot) -> Option<Rejection> {
    if !(backend.group.is_empty() || backend.group == "core") || backend.kind != "Service" {
        return Some((
            "InvalidKind",
            format!(
                "{}/{} is not a supported backend kind",
                backend.group, backend.kind
            ),
        ));
    }
    if backend.namespace != route.key.namespace
        && !reference_granted(snapshot, route.kind, &route.key.namespace, backend)
    {
        return Some((
            "RefNotPermitted",
            format!(
                "no ReferenceGrant allows a reference to Service {}/{}",
                backend.namespace, backend.name
            ),
        ));
    }
    if !snapshot
        .services
        .contains_key(&ObjectKey::new(&backend.namespace, &backend.name))
    {
        return Some((
            "BackendNotFound",
            format!("Service {}/{} not found", backend.namespace, backend.name),
        ));
    }
    None
}

fn resolved_refs_condition(route: &Route, snapshot: &Snapshot) -> Condition {
    for rule in &route.rules {
        for backend in &rule.backend_refs {
            if let Some((reason, message)) = backend_problem(route, backend, snapshot) {
                return Condition::no("ResolvedRefs", reason, &message);
            }
        }
        if let Some(why) = &rule.unsupported {
            return Condition::no("ResolvedRefs", "UnsupportedValue", why);
        }
    }
    Condition::yes("ResolvedRefs", "ResolvedRefs", "all references resolved")
}

/// Ready endpoints of a rule's backendRefs with their weights, and the weight
/// of refs that could not be resolved.
fn resolve_backends(
    route: &Route,
    refs: &[BackendRef],
    snapshot: &Snapshot,
) -> (Vec<WeightedEndpoint>, u32) {
    let mut endpoints = Vec::new();
    let mut invalid_weight = 0u32;
    for backend in refs.iter().filter(|b| b.weight > 0) {
        if backend_problem(route, backend, snapshot).is_some() {
            invalid_weight = invalid_weight.saturating_add(backend.weight);
            continue;
        }
        let service = &snapshot.services[&ObjectKey::new(&backend.namespace, &backend.name)];
        let addrs = service_endpoints(service, backend, snapshot);
        let count = addrs.len() as u64;
        for addr in addrs {
            endpoints.push(WeightedEndpoint {
                addr,
                weight: u64::from(backend.weight) * ENDPOINT_WEIGHT_SCALE / count,
            });
        }
    }
    endpoints.sort();
    (endpoints, invalid_weight)
}

/// Ready endpoint addresses behind a Service port, from its EndpointSlices.
fn service_endpoints(
    service: &Service,
    backend: &BackendRef,
    snapshot: &Snapshot,
) -> Vec<SocketAddr> {
    let Some(port) = backend.port else {
        return Vec::new();
    };
    let service_port = service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .find(|p| p.port == port);
    let Some(service_port) = service_port else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let slices = snapshot.endpoint_slices.iter().filter(|(key, slice)| {
        key.namespace == backend.namespace
            && slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .is_some_and(|n| *n == backend.name)
    });
    for (_, slice) in slices {
        let target = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name == service_port.name)
            .and_then(|p| p.port);
        let Some(target) = target.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    out.push(SocketAddr::new(ip, target));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
