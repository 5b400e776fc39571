//! Status conditions as translate decides them (written back by the kube
//! source, printed in standalone mode).

use serde::Serialize;

use super::input::ParentRef;
use crate::store::ObjectKey;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Condition {
    pub fn yes(type_: &'static str, reason: &'static str, message: &str) -> Self {
        Self {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }
    pub fn no(type_: &'static str, reason: &'static str, message: &str) -> Self {
        Self {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// The conditions of one object, or of one route parent / listener section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectStatus {
    pub kind: &'static str,
    pub key: ObjectKey,
    /// For routes: the Gateway this entry is about.
    pub parent: Option<ObjectKey>,
    /// The listener (Gateway) or parentRef sectionName (route), if any.
    pub section: Option<String>,
    pub conditions: Vec<Condition>,
    /// `metadata.generation` of the object these conditions were decided for
    /// (`observedGeneration` of every condition).
    pub generation: i64,
    /// For routes: the parentRef this entry answers, defaults applied
    /// (the route's own, shared).
    #[serde(serialize_with = "serialize_shared")]
    pub parent_ref: Option<std::sync::Arc<ParentRef>>,
    /// For a listener's entry (kind Gateway or ListenerSet with a section).
    pub listener: Option<ListenerFacts>,
    /// For a Gateway: the addresses it is served on (`status.addresses`).
    pub addresses: Vec<std::net::IpAddr>,
}

fn serialize_shared<S: serde::Serializer>(
    value: &Option<std::sync::Arc<ParentRef>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    value.as_deref().serialize(serializer)
}

/// What a listener's status carries besides conditions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerFacts {
    /// Routes Accepted on this listener.
    pub attached_routes: i32,
    /// Route kinds (group gateway.networking.k8s.io) the listener accepts.
    pub supported_kinds: Vec<&'static str>,
}

impl ObjectStatus {
    pub fn new(kind: &'static str, key: ObjectKey) -> Self {
        Self {
            kind,
            key,
            parent: None,
            section: None,
            conditions: Vec::new(),
            generation: 0,
            parent_ref: None,
            listener: None,
            addresses: Vec::new(),
        }
    }
    pub fn with(mut self, condition: Condition) -> Self {
        self.conditions.push(condition);
        self
    }
    pub fn push(&mut self, condition: Condition) {
        self.conditions.push(condition);
    }
    /// The first condition in a bad state, if any: what an operator must look
    /// at. `Conflicted` is the one condition whose good state is False.
    pub fn problem(&self) -> Option<&Condition> {
        self.conditions
            .iter()
            .find(|c| c.status == (c.type_ == "Conflicted"))
    }
}

// === The statuses as the API server holds them ===

use gateway_api::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicyStatus, BackendTlsPolicyStatusAncestors,
    BackendTlsPolicyStatusAncestorsAncestorRef,
};
use gateway_api::experimental::httproutes::{
    HttpRoute, HttpRouteStatus, HttpRouteStatusParents, HttpRouteStatusParentsParentRef,
};
use gateway_api::experimental::{
    tcproutes::{TcpRoute, TcpRouteStatus, TcpRouteStatusParents, TcpRouteStatusParentsParentRef},
    udproutes::{UdpRoute, UdpRouteStatus, UdpRouteStatusParents, UdpRouteStatusParentsParentRef},
};
use gateway_api::gatewayclasses::{GatewayClass, GatewayClassStatus};
use gateway_api::gateways::{
    Gateway, GatewayStatus, GatewayStatusAddresses, GatewayStatusListeners,
    GatewayStatusListenersSupportedKinds,
};
use gateway_api::grpcroutes::{
    GrpcRoute, GrpcRouteStatus, GrpcRouteStatusParents, GrpcRouteStatusParentsParentRef,
};
use gateway_api::listenersets::{
    ListenerSet, ListenerSetStatus, ListenerSetStatusListeners,
    ListenerSetStatusListenersSupportedKinds,
};
use gateway_api::tlsroutes::{
    TlsRoute, TlsRouteStatus, TlsRouteStatusParents, TlsRouteStatusParentsParentRef,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition as ApiCondition, Time};

use std::collections::BTreeMap;
use std::sync::Arc;

use super::input::GATEWAY_GROUP;
use crate::store::Snapshot;

/// A Gateway API object with the `status` the agent writes for it.
#[derive(Clone, Debug, Serialize)]
#[expect(
    clippy::large_enum_variant,
    reason = "a short-lived list for printing and writing, never stored in bulk"
)]
#[serde(untagged)]
pub enum ApiObject {
    GatewayClass(GatewayClass),
    Gateway(Gateway),
    ListenerSet(ListenerSet),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    BackendTlsPolicy(BackendTlsPolicy),
    TlsRoute(TlsRoute),
    TcpRoute(TcpRoute),
    UdpRoute(UdpRoute),
}

fn api_condition(c: &Condition, generation: i64, now: &Time) -> ApiCondition {
    ApiCondition {
        type_: c.type_.to_string(),
        status: if c.status { "True" } else { "False" }.to_string(),
        reason: c.reason.to_string(),
        message: c.message.clone(),
        observed_generation: Some(generation),
        last_transition_time: now.clone(),
    }
}

fn api_conditions(s: &ObjectStatus, now: &Time) -> Vec<ApiCondition> {
    s.conditions
        .iter()
        .map(|c| api_condition(c, s.generation, now))
        .collect()
}

/// Status entries by (kind, object), so that building each object's status
/// does not scan every entry.
type Index<'a> = BTreeMap<(&'a str, &'a ObjectKey), Vec<&'a ObjectStatus>>;

fn entries<'a>(index: &'a Index, kind: &'a str, key: &'a ObjectKey) -> &'a [&'a ObjectStatus] {
    index.get(&(kind, key)).map_or(&[], Vec::as_slice)
}

/// The object-level entry (no section, no parent ref) of `kind` `key`.
fn object_entry<'a>(
    index: &'a Index,
    kind: &'a str,
    key: &'a ObjectKey,
) -> Option<&'a ObjectStatus> {
    entries(index, kind, key)
        .iter()
        .copied()
        .find(|s| s.listener.is_none() && s.parent_ref.is_none())
}

fn listener_entries<'a>(
    index: &'a Index,
    kind: &'a str,
    key: &'a ObjectKey,
) -> impl Iterator<Item = (&'a ObjectStatus, &'a ListenerFacts)> + 'a {
    entries(index, kind, key)
        .iter()
        .filter_map(|s| Some((*s, s.listener.as_ref()?)))
}

/// Status parents of a route: one per parentRef (as written) that we answer.
macro_rules! route_parents {
    ($route:expr, $key:expr, $kind:expr, $statuses:expr, $controller:expr, $now:expr, $parents:ident, $parent_ref:ident) => {{
        let mut out = Vec::new();
        for p in $route.spec.parent_refs.iter().flatten() {
            let normalized = ParentRef {
                group: p.group.clone().unwrap_or_else(|| GATEWAY_GROUP.into()),
                kind: p.kind.clone().unwrap_or_else(|| "Gateway".into()),
                namespace: p
                    .namespace
                    .clone()
                    .unwrap_or_else(|| $key.namespace.clone()),
                name: p.name.clone(),
                section_name: p.section_name.clone(),
                port: p.port,
            };
            let Some(entry) = entries($statuses, $kind, $key)
                .iter()
                .find(|s| s.parent_ref.as_deref() == Some(&normalized))
            else {
                continue;
            };
            out.push($parents {
                conditions: api_conditions(entry, $now),
                controller_name: $controller.to_string(),
                parent_ref: $parent_ref {
                    group: p.group.clone(),
                    kind: p.kind.clone(),
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    port: p.port,
                    section_name: p.section_name.clone(),
                },
            });
        }
        out
    }};
}

/// Every Gateway API object of the snapshot, with `status` set where this
/// controller decides it (objects of other controllers keep theirs). `now`
/// is every condition's `lastTransitionTime`: the status writer keeps the
/// previous time of a condition whose status did not change.
pub fn api_objects(
    snapshot: &Snapshot,
    statuses: &[Arc<ObjectStatus>],
    controller_name: &str,
    now: &Time,
) -> Vec<ApiObject> {
    let mut index: Index = BTreeMap::new();
    let mut accepted_sets: BTreeMap<&ObjectKey, i32> = BTreeMap::new();
    for s in statuses {
        index.entry((s.kind, &s.key)).or_default().push(s);
        let accepted = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status);
        if s.kind == "ListenerSet"
            && s.listener.is_none()
            && accepted
            && let Some(gateway) = &s.parent
        {
            *accepted_sets.entry(gateway).or_default() += 1;
        }
    }
    let statuses = &index;
    let mut out = Vec::new();
    for (key, class) in &snapshot.gateway_classes {
        let mut class = class.clone();
        if let Some(entry) = object_entry(statuses, "GatewayClass", key) {
            class.status = Some(GatewayClassStatus {
                conditions: Some(api_conditions(entry, now)),
                ..class.status.unwrap_or_default()
            });
        }
        out.push(ApiObject::GatewayClass(class));
    }
    for (key, gateway) in &snapshot.gateways {
        let mut gateway = gateway.clone();
        if let Some(entry) = object_entry(statuses, "Gateway", key) {
            let listeners = listener_entries(statuses, "Gateway", key)
                .map(|(s, facts)| GatewayStatusListeners {
                    attached_routes: facts.attached_routes,
                    conditions: api_conditions(s, now),
                    name: s.section.clone().unwrap_or_default(),
                    supported_kinds: Some(
                        facts
                            .supported_kinds
                            .iter()
                            .map(|k| GatewayStatusListenersSupportedKinds {
                                group: Some(GATEWAY_GROUP.into()),
                                kind: (*k).to_string(),
                            })
                            .collect(),
                    ),
                })
                .collect();
            let attached_sets = accepted_sets.get(key).copied().unwrap_or(0);
            let addresses: Vec<GatewayStatusAddresses> = entry
                .addresses
                .iter()
                .map(|a| GatewayStatusAddresses {
                    r#type: Some("IPAddress".into()),
                    value: a.to_string(),
                })
                .collect();
            gateway.status = Some(GatewayStatus {
                addresses: (!addresses.is_empty()).then_some(addresses),
                attached_listener_sets: Some(attached_sets),
                conditions: Some(api_conditions(entry, now)),
                listeners: Some(listeners),
            });
        }
        out.push(ApiObject::Gateway(gateway));
    }
    for (key, set) in &snapshot.listener_sets {
        let mut set = set.clone();
        if let Some(entry) = object_entry(statuses, "ListenerSet", key) {
            let listeners: Vec<ListenerSetStatusListeners> =
                listener_entries(statuses, "ListenerSet", key)
                    .map(|(s, facts)| ListenerSetStatusListeners {
                        attached_routes: facts.attached_routes,
                        conditions: api_conditions(s, now),
                        name: s.section.clone().unwrap_or_default(),
                        supported_kinds: Some(
                            facts
                                .supported_kinds
                                .iter()
                                .map(|k| ListenerSetStatusListenersSupportedKinds {
                                    group: Some(GATEWAY_GROUP.into()),
                                    kind: (*k).to_string(),
                                })
                                .collect(),
                        ),
                    })
                    .collect();
            set.status = Some(ListenerSetStatus {
                conditions: Some(api_conditions(entry, now)),
                listeners: (!listeners.is_empty()).then_some(listeners),
            });
        }
        out.push(ApiObject::ListenerSet(set));
    }
    for (key, route) in &snapshot.http_routes {
        let mut route = route.clone();
        let parents = route_parents!(
            route,
            key,
            "HTTPRoute",
            statuses,
            controller_name,
            now,
            HttpRouteStatusParents,
            HttpRouteStatusParentsParentRef
        );
        if !parents.is_empty() {
            route.status = Some(HttpRouteStatus { parents });
        }
        out.push(ApiObject::HttpRoute(route));
    }
    for (key, route) in &snapshot.grpc_routes {
        let mut route = route.clone();
        let parents = route_parents!(
            route,
            key,
            "GRPCRoute",
            statuses,
            controller_name,
            now,
            GrpcRouteStatusParents,
            GrpcRouteStatusParentsParentRef
        );
        if !parents.is_empty() {
            route.status = Some(GrpcRouteStatus { parents });
        }
        out.push(ApiObject::GrpcRoute(route));
    }
    for (key, route) in &snapshot.tls_routes {
        let mut route = route.clone();
        let parents = route_parents!(
            route,
            key,
            "TLSRoute",
            statuses,
            controller_name,
            now,
            TlsRouteStatusParents,
            TlsRouteStatusParentsParentRef
        );
        if !parents.is_empty() {
            route.status = Some(TlsRouteStatus { parents });
        }
        out.push(ApiObject::TlsRoute(route));
    }
    for (key, route) in &snapshot.tcp_routes {
        let mut route = route.clone();
        let parents = route_parents!(
            route,
            key,
            "TCPRoute",
            statuses,
            controller_name,
            now,
            TcpRouteStatusParents,
            TcpRouteStatusParentsParentRef
        );
        if !parents.is_empty() {
            route.status = Some(TcpRouteStatus { parents });
        }
        out.push(ApiObject::TcpRoute(route));
    }
    for (key, route) in &snapshot.udp_routes {
        let mut route = route.clone();
        let parents = route_parents!(
            route,
            key,
            "UDPRoute",
            statuses,
            controller_name,
            now,
            UdpRouteStatusParents,
            UdpRouteStatusParentsParentRef
        );
        if !parents.is_empty() {
            route.status = Some(UdpRouteStatus { parents });
        }
        out.push(ApiObject::UdpRoute(route));
    }
    for (key, policy) in &snapshot.backend_tls_policies {
        let mut policy = policy.clone();
        let ancestors: Vec<BackendTlsPolicyStatusAncestors> =
            entries(statuses, "BackendTLSPolicy", key)
                .iter()
                .filter_map(|s| {
                    let gateway = s.parent.as_ref()?;
                    Some(BackendTlsPolicyStatusAncestors {
                        ancestor_ref: BackendTlsPolicyStatusAncestorsAncestorRef {
                            group: Some(GATEWAY_GROUP.into()),
                            kind: Some("Gateway".into()),
                            name: gateway.name.clone(),
                            namespace: Some(gateway.namespace.clone()),
                            port: None,
                            section_name: None,
                        },
                        conditions: api_conditions(s, now),
                        controller_name: controller_name.to_string(),
                    })
                })
                .collect();
        if !ancestors.is_empty() {
            policy.status = Some(BackendTlsPolicyStatus { ancestors });
        }
        out.push(ApiObject::BackendTlsPolicy(policy));
    }
    out
}
