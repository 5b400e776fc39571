//! Listeners of our Gateways and of the ListenerSets attached to them, validated
//! per the spec: supported protocol, route kinds, distinctness (conflicts), and
//! the conditions each listener reports.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;

use super::input::GATEWAY_GROUP;
use super::status::{Condition, ObjectStatus};
use crate::model::ServerCertificate;
use crate::store::{ObjectKey, Snapshot};

/// Where route namespaces may come from (`allowedRoutes.namespaces.from`),
/// also used for ListenerSets (`allowedListeners.namespaces.from`).
#[derive(Clone, Debug, PartialEq)]
pub enum NamespacesFrom {
    Same,
    All,
    Selector(LabelSelector),
    /// Nothing may attach (ListenerSets' default; a Selector without selector).
    None,
}

/// `allowedRoutes` of a Gateway or ListenerSet listener, in one shape.
#[derive(Clone, Debug)]
pub struct AllowedRoutes {
    /// `kinds` as written (group, kind); None: the protocol's defaults.
    pub kinds: Option<Vec<(String, String)>>,
    pub namespaces: NamespacesFrom,
}

/// A certificateRef of a listener's `tls`, defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Terminate,
    Passthrough,
}

#[derive(Clone, Debug)]
pub struct ListenerTls {
    pub mode: TlsMode,
    pub certificate_refs: Vec<CertificateRef>,
}

/// Route kinds each protocol serves when `allowedRoutes.kinds` is not set,
/// and the only kinds it may list.
fn kinds_for(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "HTTP" | "HTTPS" => &["HTTPRoute", "GRPCRoute"],
        "TLS" => &["TLSRoute"],
        "TCP" => &["TCPRoute"],
        "UDP" => &["UDPRoute"],
        _ => &[],
    }
}

/// One listener, wherever it was declared, with the status translate decides.
#[derive(Clone, Debug)]
pub struct Listener<'a> {
    /// The Gateway whose addresses serve this listener.
    pub gateway: &'a ObjectKey,
    /// "Gateway" or "ListenerSet": the object whose status lists this listener.
    pub owner_kind: &'static str,
    pub owner: &'a ObjectKey,
    /// `metadata.generation` of the owner.
    pub generation: i64,
    /// The Gateway's creationTimestamp (RFC 3339): older Gateways keep contested ports.
    pub gateway_created: String,
    pub name: &'a str,
    pub port: u16,
    pub protocol: &'a str,
    pub hostname: Option<&'a str>,
    pub tls: Option<ListenerTls>,
    pub allowed: AllowedRoutes,
    /// The namespace routes are "Same" against: the owner's.
    pub namespace: &'a str,
    pub addresses: &'a [IpAddr],
    /// Route kinds this listener accepts (`supportedKinds` in its status).
    pub supported_kinds: Vec<&'static str>,
    /// Why the listener is not accepted (reason, message), if so.
    pub rejected: Option<(&'static str, String)>,
    /// Why the listener conflicts with another (reason), if so.
    pub conflicted: Option<&'static str>,
    /// Unresolvable references (reason, message): invalid route kinds here;
    /// certificates (set by the TLS resolution) also keep it from being served.
    pub unresolved: Option<(&'static str, String)>,
    /// Set when `unresolved` names only some of its references and it serves
    /// with the others (client CA refs of which at least one resolves).
    pub serves_partially_resolved: bool,
    /// HTTPS and TLS Terminate: the certificates its certificateRefs resolve to.
    pub certificates: Vec<ServerCertificate>,
}

impl Listener<'_> {
    /// Accepted and not (yet) conflicted: it takes part in conflict resolution.
    fn contends(&self) -> bool {
        self.rejected.is_none() && self.conflicted.is_none()
    }

    /// Accepted, distinct, and its references usable: the data planes serve it.
    /// Route kinds it cannot carry do not stop it serving those it can.
    pub fn serves(&self) -> bool {
        self.rejected.is_none()
            && self.conflicted.is_none()
            && (self.serves_partially_resolved
                || self
                    .unresolved
                    .as_ref()
                    .is_none_or(|(reason, _)| *reason == "InvalidRouteKinds"))
    }

    /// The four listener conditions, in the order the API documents them.
    pub fn conditions(&self) -> Vec<Condition> {
        let mut out = Vec::new();
        out.push(match (&self.rejected, self.conflicted) {
            (Some((reason, message)), _) => Condition::no("Accepted", reason, message),
            (None, Some(reason)) => Condition::no(
                "Accepted",
                reason,
                "not distinct from another listener on this port (see Conflicted)",
            ),
            (None, None) => Condition::yes("Accepted", "Accepted", "listener accepted"),
        });
        out.push(match self.conflicted {
            Some(reason) => Condition::yes(
                "Conflicted",
                reason,
                if reason == "HostnameConflict" {
                    "another listener on this port has the same protocol and hostname"
                } else {
                    "another listener on this port has a protocol that cannot share it"
                },
            ),
            None => Condition::no("Conflicted", "NoConflicts", "no conflicts"),
        });
        out.push(match &self.unresolved {
            Some((reason, message)) => Condition::no("ResolvedRefs", reason, message),
            None => Condition::yes("ResolvedRefs", "ResolvedRefs", "all references resolved"),
        });
        out.push(if self.serves() {
            Condition::yes("Programmed", "Programmed", "programmed on this node")
        } else {
            Condition::no(
                "Programmed",
                "Invalid",
                "not programmed: the listener is not valid or its references do not resolve",
            )
        });
        out
    }
}

fn convert<T: Serialize, U: serde::de::DeserializeOwned>(value: &T) -> Option<U> {
    // The generated selector types differ per object but share one schema.
    serde_json::to_value(value)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
}

fn namespaces_from<S: Serialize>(
    from: Option<&str>,
    selector: Option<&S>,
    default: &str,
) -> NamespacesFrom {
    match from.unwrap_or(default) {
        "Same" => NamespacesFrom::Same,
        "All" => NamespacesFrom::All,
        "Selector" => selector
            .and_then(convert)
            .map_or(NamespacesFrom::None, NamespacesFrom::Selector),
        _ => NamespacesFrom::None,
    }
}

fn enum_name<T: Serialize>(value: &T) -> Option<String> {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
}

macro_rules! listener_parts {
    ($l:expr, $ns:expr) => {{
        let allowed = AllowedRoutes {
            kinds: $l
                .allowed_routes
                .as_ref()
                .and_then(|a| a.kinds.as_ref())
                .map(|kinds| {
                    kinds
                        .iter()
                        .map(|k| {
                            (
                                k.group.clone().unwrap_or_else(|| GATEWAY_GROUP.into()),
                                k.kind.clone(),
                            )
                        })
                        .collect()
                }),
            namespaces: {
                let ns = $l
                    .allowed_routes
                    .as_ref()
                    .and_then(|a| a.namespaces.as_ref());
                namespaces_from(
                    ns.and_then(|n| n.from.as_ref())
                        .and_then(enum_name)
                        .as_deref(),
                    ns.and_then(|n| n.selector.as_ref()),
                    "Same",
                )
            },
        };
        let tls = $l.tls.as_ref().map(|t| ListenerTls {
            mode: match t.mode.as_ref().and_then(enum_name).as_deref() {
                Some("Passthrough") => TlsMode::Passthrough,
                _ => TlsMode::Terminate,
            },
            certificate_refs: t
                .certificate_refs
                .iter()
                .flatten()
                .map(|c| CertificateRef {
                    group: c.group.clone().unwrap_or_default(),
                    kind: c.kind.clone().unwrap_or_else(|| "Secret".into()),
                    namespace: c.namespace.clone().unwrap_or_else(|| $ns.to_string()),
                    name: c.name.clone(),
                })
                .collect(),
        });
        (allowed, tls)
    }};
}

/// True when `namespace`'s labels satisfy `from` relative to `home`.
pub fn namespace_selected(
    from: &NamespacesFrom,
    home: &str,
    namespace: &str,
    snapshot: &Snapshot,
) -> bool {
    match from {
        NamespacesFrom::Same => namespace == home,
        NamespacesFrom::All => true,
        NamespacesFrom::None => false,
        NamespacesFrom::Selector(selector) => {
            let mut labels = snapshot
                .namespaces
                .get(&ObjectKey::new("", namespace))
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default();
            // The API server labels every Namespace with its name.
            labels.insert("kubernetes.io/metadata.name".into(), namespace.into());
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

fn created(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

/// Checks protocol and kinds of one listener (conflicts come later, across listeners).
fn validate(listener: &mut Listener) {
    let protocol_kinds = kinds_for(listener.protocol);
    if !matches!(listener.protocol, "HTTP" | "HTTPS" | "TLS" | "TCP" | "UDP") {
        listener.rejected = Some((
            "UnsupportedProtocol",
            format!("protocol {} is not supported", listener.protocol),
        ));
        return;
    }
    match &listener.allowed.kinds {
        Some(kinds) if !kinds.is_empty() => {
            let mut invalid = Vec::new();
            for (group, kind) in kinds {
                match protocol_kinds.iter().find(|k| **k == kind.as_str()) {
                    Some(k) if group == GATEWAY_GROUP => {
                        if !listener.supported_kinds.contains(k) {
                            listener.supported_kinds.push(k);
                        }
                    }
                    _ => invalid.push(format!("{group}/{kind}")),
                }
            }
            if !invalid.is_empty() {
                listener.unresolved = Some((
                    "InvalidRouteKinds",
                    format!(
                        "route kinds not supported on a {} listener: {}",
                        listener.protocol,
                        invalid.join(", ")
                    ),
                ));
            }
        }
        _ => listener.supported_kinds = protocol_kinds.to_vec(),
    }
}

/// Listeners sharing a port must be distinct: same protocol family and a
/// different hostname. Protocols that share a port with TLS (HTTPS, TLS) can
/// coexist; TCP and UDP use different transports and never conflict.
fn conflict(a: &Listener, b: &Listener) -> Option<&'static str> {
    if a.port != b.port {
        return None;
    }
    let transport = |p: &str| if p == "UDP" { "udp" } else { "tcp" };
    if transport(a.protocol) != transport(b.protocol) {
        return None;
    }
    let family = |p: &str| match p {
        "HTTPS" | "TLS" => "tls",
        other => match other {
            "HTTP" => "http",
            "TCP" => "tcp",
            _ => "udp",
        },
    };
    if family(a.protocol) != family(b.protocol) {
        return Some("ProtocolConflict");
    }
    if matches!(a.protocol, "TCP" | "UDP") {
        return Some("ProtocolConflict");
    }
    let host = |l: &Listener| l.hostname.unwrap_or("").to_ascii_lowercase();
    (host(a) == host(b)).then_some("HostnameConflict")
}

/// Marks conflicts in the merged listener list of one Gateway, which is in
/// precedence order (the Gateway's own, then ListenerSets oldest first, then
/// by namespace/name), each object's listeners together. A listener that
/// conflicts with a live listener of an object with precedence loses; within
/// one object, indistinct listeners all lose (the spec forbids picking a winner).
fn mark_conflicts(listeners: &mut [Listener]) {
    let mut start = 0;
    while start < listeners.len() {
        let owner = (listeners[start].owner_kind, listeners[start].owner);
        let end = (start..listeners.len())
            .find(|&i| (listeners[i].owner_kind, listeners[i].owner) != owner)
            .unwrap_or(listeners.len());
        for i in start..end {
            if listeners[i].rejected.is_some() {
                continue;
            }
            let lost = listeners[..start]
                .iter()
                .filter(|earlier| earlier.contends())
                .find_map(|earlier| conflict(earlier, &listeners[i]));
            listeners[i].conflicted = lost;
        }
        let mut marks: Vec<Option<&'static str>> = vec![None; end - start];
        for i in start..end {
            for j in i + 1..end {
                let live = |l: &Listener| l.contends();
                if !live(&listeners[i]) || !live(&listeners[j]) {
                    continue;
                }
                if let Some(reason) = conflict(&listeners[i], &listeners[j]) {
                    marks[i - start] = marks[i - start].or(Some(reason));
                    marks[j - start] = marks[j - start].or(Some(reason));
                }
            }
        }
        for (offset, mark) in marks.into_iter().enumerate() {
            if mark.is_some() {
                listeners[start + offset].conflicted = mark;
            }
        }
        start = end;
    }
}

/// `Accepted`/`Programmed` of an allowed ListenerSet: accepted while one of
/// its listeners is served.
pub fn listener_set_conditions(status: &mut ObjectStatus, listeners: &[Listener]) {
    let own = listeners
        .iter()
        .filter(|l| l.owner_kind == "ListenerSet" && *l.owner == status.key);
    if own.clone().any(Listener::serves) {
        status.push(Condition::yes(
            "Accepted",
            "Accepted",
            "attached to its Gateway",
        ));
        status.push(Condition::yes(
            "Programmed",
            "Programmed",
            "programmed on this node",
        ));
    } else {
        let message = "no listener of this ListenerSet is valid";
        status.push(Condition::no("Accepted", "ListenersNotValid", message));
        status.push(Condition::no("Programmed", "ListenersNotValid", message));
    }
}

/// TCP and UDP listeners are programmed in the kernel per (address, port,
/// protocol), which only one listener can own on a node. When listeners of
/// different Gateways would share one (or a TCP/UDP listener would take the
/// port of an HTTP/TLS one), the Gateway with precedence (oldest, then
/// namespace/name) keeps it and the other listener is Accepted=False with
/// reason PortUnavailable, rather than silently losing its traffic.
pub fn mark_port_collisions(listeners: &mut [Listener]) {
    // Precedence: Gateways oldest first, then by namespace/name, each
    // Gateway's listeners (consecutive) in order; the Gateways are sorted,
    // not every listener.
    let mut gateways: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, listener) in listeners.iter().enumerate() {
        match gateways.last_mut() {
            Some(run) if std::ptr::eq(listeners[run.start].gateway, listener.gateway) => {
                run.end = i + 1;
            }
            _ => gateways.push(i..i + 1),
        }
    }
    gateways.sort_by(|a, b| {
        let (a, b) = (&listeners[a.start], &listeners[b.start]);
        (&a.gateway_created, a.gateway).cmp(&(&b.gateway_created, b.gateway))
    });
    let order: Vec<usize> = gateways.into_iter().flatten().collect();
    // Only listeners on one port and transport can collide: compared within
    // those groups (in precedence order), not every pair of the node's
    // listeners (a thousand L4 listeners made that the most of a route
    // edit's translate).
    let ports: Vec<(u16, bool)> = listeners
        .iter()
        .map(|l| (l.port, l.protocol == "UDP"))
        .collect();
    let group = |i: &usize| ports[*i];
    let mut by_port = order;
    // Stable: each group keeps the precedence order.
    by_port.sort_by_key(group);
    for members in by_port.chunk_by(|a, b| group(a) == group(b)) {
        for (n, &i) in members.iter().enumerate().skip(1) {
            collide_with_earlier(listeners, i, &members[..n]);
        }
    }
}

/// Marks listener `i` PortUnavailable when one of `earlier` (same port and
/// transport, with precedence) holds its L4 port on a shared address.
fn collide_with_earlier(listeners: &mut [Listener], i: usize, earlier: &[usize]) {
    for &earlier in earlier {
        let (a, b) = (&listeners[earlier], &listeners[i]);
        if a.gateway == b.gateway || !a.contends() || !b.contends() {
            continue;
        }
        let l4 = |l: &Listener| matches!(l.protocol, "TCP" | "UDP");
        let shared_address = a.addresses.is_empty()
            || b.addresses.is_empty()
            || a.addresses.iter().any(|x| b.addresses.contains(x));
        if (l4(a) || l4(b)) && shared_address {
            let message = format!(
                "{} port {} is already served here by Gateway {} listener {}",
                b.protocol, b.port, a.gateway, a.name
            );
            listeners[i].rejected = Some(("PortUnavailable", message));
            break;
        }
    }
}

/// The outcome for one Gateway: its merged listeners and its own status.
pub struct GatewayListeners<'a> {
    pub listeners: Vec<Listener<'a>>,
    /// ListenerSet statuses (object level), for the ones that name this
    /// Gateway: conditions only for those it does not allow, the others get
    /// theirs from `listener_set_conditions` once all listeners are validated.
    pub listener_sets: Vec<ObjectStatus>,
}

/// Builds and validates the listeners of `gateway`, its own and those of the
/// ListenerSets it allows.
pub fn gateway_listeners<'a>(
    key: &'a ObjectKey,
    gateway: &'a gateway_api::gateways::Gateway,
    addresses: &'a [IpAddr],
    snapshot: &'a Snapshot,
) -> GatewayListeners<'a> {
    let mut listeners = Vec::new();
    for l in &gateway.spec.listeners {
        let Ok(port) = u16::try_from(l.port) else {
            continue;
        };
        let (allowed, tls) = listener_parts!(l, key.namespace);
        listeners.push(Listener {
            gateway: key,
            owner_kind: "Gateway",
            owner: key,
            generation: gateway.metadata.generation.unwrap_or(1),
            gateway_created: created(&gateway.metadata),
            name: &l.name,
            port,
            protocol: &l.protocol,
            hostname: l.hostname.as_deref(),
            tls,
            allowed,
            namespace: &key.namespace,
            addresses,
            supported_kinds: Vec::new(),
            rejected: None,
            conflicted: None,
            unresolved: None,
            serves_partially_resolved: false,
            certificates: Vec::new(),
        });
    }

    let allowed_sets = gateway
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    let sets_from = namespaces_from(
        allowed_sets
            .and_then(|n| n.from.as_ref())
            .and_then(enum_name)
            .as_deref(),
        allowed_sets.and_then(|n| n.selector.as_ref()),
        "None",
    );
    let mut sets: Vec<(&ObjectKey, &gateway_api::listenersets::ListenerSet)> = snapshot
        .listener_sets
        .iter()
        .filter(|(set_key, set)| {
            let p = &set.spec.parent_ref;
            p.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
                && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
                && p.name == key.name
                && p.namespace.as_deref().unwrap_or(&set_key.namespace) == key.namespace
        })
        .collect();
    sets.sort_by_key(|(set_key, set)| (created(&set.metadata), (*set_key).clone()));
    let mut set_statuses = Vec::new();
    for (set_key, set) in sets {
        let generation = set.metadata.generation.unwrap_or(1);
        let mut status = ObjectStatus::new("ListenerSet", set_key.clone());
        status.generation = generation;
        status.parent = Some(key.clone());
        if !namespace_selected(&sets_from, &key.namespace, &set_key.namespace, snapshot) {
            let message = "the parent Gateway's allowedListeners does not allow this ListenerSet";
            status.push(Condition::no("Accepted", "NotAllowed", message));
            status.push(Condition::no("Programmed", "NotAllowed", message));
            set_statuses.push(status);
            continue;
        }
        for l in &set.spec.listeners {
            let Ok(port) = u16::try_from(l.port) else {
                continue;
            };
            let (allowed, tls) = listener_parts!(l, set_key.namespace);
            listeners.push(Listener {
                gateway: key,
                owner_kind: "ListenerSet",
                owner: set_key,
                generation,
                gateway_created: created(&gateway.metadata),
                name: &l.name,
                port,
                protocol: &l.protocol,
                hostname: l.hostname.as_deref(),
                tls,
                allowed,
                namespace: &set_key.namespace,
                addresses,
                supported_kinds: Vec::new(),
                rejected: None,
                conflicted: None,
                unresolved: None,
                serves_partially_resolved: false,
                certificates: Vec::new(),
            });
        }
        set_statuses.push(status);
    }

    for listener in &mut listeners {
        validate(listener);
    }
    mark_conflicts(&mut listeners);

    GatewayListeners {
        listeners,
        listener_sets: set_statuses,
    }
}
