//! The snapshot of every object kind the agent needs, as the sources saw it.
//! Sources fill it; translate reads it; nothing downstream knows which source ran.

use std::collections::BTreeMap;
use std::sync::Arc;

use gateway_api::{
    backendtlspolicies::BackendTlsPolicy,
    experimental::{httproutes::HttpRoute, tcproutes::TcpRoute, udproutes::UdpRoute},
    gatewayclasses::GatewayClass,
    gateways::Gateway,
    grpcroutes::GrpcRoute,
    listenersets::ListenerSet,
    referencegrants::ReferenceGrant,
    tlsroutes::TlsRoute,
};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Secret, Service},
    discovery::v1::EndpointSlice,
};

use crate::translate::input::{Route, RouteKind};

/// `(namespace, name)`; cluster-scoped objects have an empty namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub gateway_classes: BTreeMap<ObjectKey, GatewayClass>,
    pub gateways: BTreeMap<ObjectKey, Gateway>,
    pub http_routes: BTreeMap<ObjectKey, HttpRoute>,
    pub grpc_routes: BTreeMap<ObjectKey, GrpcRoute>,
    pub tcp_routes: BTreeMap<ObjectKey, TcpRoute>,
    pub udp_routes: BTreeMap<ObjectKey, UdpRoute>,
    /// TLSRoute `v1`, `v1alpha3` and `v1alpha2`, read into the `v1` type (same schema).
    pub tls_routes: BTreeMap<ObjectKey, TlsRoute>,
    pub reference_grants: BTreeMap<ObjectKey, ReferenceGrant>,
    pub services: BTreeMap<ObjectKey, Service>,
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub secrets: BTreeMap<ObjectKey, Secret>,
    pub namespaces: BTreeMap<ObjectKey, Namespace>,
    pub listener_sets: BTreeMap<ObjectKey, ListenerSet>,
    pub backend_tls_policies: BTreeMap<ObjectKey, BackendTlsPolicy>,
    /// ConfigMaps: CA certificates (`ca.crt`) of BackendTLSPolicies and client validation.
    pub config_maps: BTreeMap<ObjectKey, ConfigMap>,
    /// `gateway.networking.k8s.io/bundle-version` of each Gateway API CRD the
    /// cluster serves, by CRD name; empty when unknown (standalone mode).
    pub crd_bundle_versions: BTreeMap<String, String>,
    /// Routes held only in translate's parsed form, without their API object
    /// (a fifth of the size): what the standalone agent's file source keeps,
    /// since nothing else there reads a route's object. Sources whose routes
    /// are read as objects too (the kube status writer, `status -o json`)
    /// fill the typed maps above instead. Shared with translate's memo.
    pub parsed_routes: BTreeMap<RouteKind, BTreeMap<ObjectKey, Arc<Route>>>,
}

impl Snapshot {
    /// Adds every object of `other`; on a key present in both, `other` wins.
    pub fn merge(&mut self, other: Snapshot) {
        self.gateway_classes.extend(other.gateway_classes);
        self.gateways.extend(other.gateways);
        self.http_routes.extend(other.http_routes);
        self.grpc_routes.extend(other.grpc_routes);
        self.tcp_routes.extend(other.tcp_routes);
        self.udp_routes.extend(other.udp_routes);
        self.tls_routes.extend(other.tls_routes);
        self.reference_grants.extend(other.reference_grants);
        self.services.extend(other.services);
        self.endpoint_slices.extend(other.endpoint_slices);
        self.secrets.extend(other.secrets);
        self.namespaces.extend(other.namespaces);
        self.listener_sets.extend(other.listener_sets);
        self.backend_tls_policies.extend(other.backend_tls_policies);
        self.config_maps.extend(other.config_maps);
        self.crd_bundle_versions.extend(other.crd_bundle_versions);
        for (kind, routes) in other.parsed_routes {
            self.parsed_routes.entry(kind).or_default().extend(routes);
        }
    }
}

/// One object of a kind the agent reads, as a source parsed it.
#[derive(Clone, Debug)]
pub enum Object {
    GatewayClass(GatewayClass),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    TcpRoute(TcpRoute),
    UdpRoute(UdpRoute),
    TlsRoute(TlsRoute),
    ReferenceGrant(ReferenceGrant),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Secret(Secret),
    Namespace(Namespace),
    ListenerSet(ListenerSet),
    BackendTlsPolicy(BackendTlsPolicy),
    ConfigMap(ConfigMap),
    /// A route of any kind in translate's parsed form only (see
    /// `Snapshot::parsed_routes`).
    Route(Arc<Route>),
}

/// Which map of the snapshot an object lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    TcpRoute,
    UdpRoute,
    TlsRoute,
    ReferenceGrant,
    Service,
    EndpointSlice,
    Secret,
    Namespace,
    ListenerSet,
    BackendTlsPolicy,
    ConfigMap,
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::TcpRoute(_) => Kind::TcpRoute,
            Object::UdpRoute(_) => Kind::UdpRoute,
            Object::TlsRoute(_) => Kind::TlsRoute,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Secret(_) => Kind::Secret,
            Object::Namespace(_) => Kind::Namespace,
            Object::ListenerSet(_) => Kind::ListenerSet,
            Object::BackendTlsPolicy(_) => Kind::BackendTlsPolicy,
            Object::ConfigMap(_) => Kind::ConfigMap,
            Object::Route(route) => route.kind.object_kind(),
        }
    }
}

impl Object {
    /// Frees the spare room that reading leaves in a route's lists (a list
    /// read item by item grows by doubling: 5 rules get room for 8, one
    /// backendRef room for 4). Routes are what a snapshot holds by the
    /// thousand, for as long as they are not edited.
    pub fn shrink_to_fit(&mut self) {
        fn fit<T>(list: &mut Option<Vec<T>>) {
            if let Some(list) = list {
                list.shrink_to_fit();
            }
        }
        // HTTPRoute and GRPCRoute: rules of matches (with these lists), filters and backendRefs.
        macro_rules! with_matches {
            ($route:expr, $($list:ident),+) => {{
                let spec = &mut $route.spec;
                fit(&mut spec.hostnames);
                fit(&mut spec.parent_refs);
                for rule in spec.rules.iter_mut().flatten() {
                    for m in rule.matches.iter_mut().flatten() {
                        $(fit(&mut m.$list);)+
                    }
                    fit(&mut rule.matches);
                    fit(&mut rule.filters);
                    fit(&mut rule.backend_refs);
                }
                fit(&mut spec.rules);
            }};
        }
        // TCPRoute, UDPRoute, TLSRoute: distinct types of the same shape.
        macro_rules! backend_only {
            ($route:expr) => {{
                fit(&mut $route.spec.parent_refs);
                for rule in &mut $route.spec.rules {
                    rule.backend_refs.shrink_to_fit();
                }
                $route.spec.rules.shrink_to_fit();
            }};
        }
        match self {
            Object::HttpRoute(route) => with_matches!(route, headers, query_params),
            Object::GrpcRoute(route) => with_matches!(route, headers),
            Object::TcpRoute(route) => backend_only!(route),
            Object::UdpRoute(route) => backend_only!(route),
            Object::TlsRoute(route) => {
                route.spec.hostnames.shrink_to_fit();
                backend_only!(route);
            }
            _ => {}
        }
    }
}

impl Snapshot {
    /// Adds or replaces one object.
    pub fn insert(&mut self, key: ObjectKey, object: Object) {
        match object {
            Object::GatewayClass(o) => drop(self.gateway_classes.insert(key, o)),
            Object::Gateway(o) => drop(self.gateways.insert(key, o)),
            Object::HttpRoute(o) => drop(self.http_routes.insert(key, o)),
            Object::GrpcRoute(o) => drop(self.grpc_routes.insert(key, o)),
            Object::TcpRoute(o) => drop(self.tcp_routes.insert(key, o)),
            Object::UdpRoute(o) => drop(self.udp_routes.insert(key, o)),
            Object::TlsRoute(o) => drop(self.tls_routes.insert(key, o)),
            Object::ReferenceGrant(o) => drop(self.reference_grants.insert(key, o)),
            Object::Service(o) => drop(self.services.insert(key, o)),
            Object::EndpointSlice(o) => drop(self.endpoint_slices.insert(key, o)),
            Object::Secret(o) => drop(self.secrets.insert(key, o)),
            Object::Namespace(o) => drop(self.namespaces.insert(key, o)),
            Object::ListenerSet(o) => drop(self.listener_sets.insert(key, o)),
            Object::BackendTlsPolicy(o) => drop(self.backend_tls_policies.insert(key, o)),
            Object::ConfigMap(o) => drop(self.config_maps.insert(key, o)),
            Object::Route(o) => drop(self.parsed_routes.entry(o.kind).or_default().insert(key, o)),
        }
    }

    /// Removes one object and returns it.
    pub fn remove(&mut self, kind: Kind, key: &ObjectKey) -> Option<Object> {
        if let Some(route_kind) = RouteKind::of(kind)
            && let Some(route) = self
                .parsed_routes
                .get_mut(&route_kind)
                .and_then(|routes| routes.remove(key))
        {
            return Some(Object::Route(route));
        }
        match kind {
            Kind::GatewayClass => self.gateway_classes.remove(key).map(Object::GatewayClass),
            Kind::Gateway => self.gateways.remove(key).map(Object::Gateway),
            Kind::HttpRoute => self.http_routes.remove(key).map(Object::HttpRoute),
            Kind::GrpcRoute => self.grpc_routes.remove(key).map(Object::GrpcRoute),
            Kind::TcpRoute => self.tcp_routes.remove(key).map(Object::TcpRoute),
            Kind::UdpRoute => self.udp_routes.remove(key).map(Object::UdpRoute),
            Kind::TlsRoute => self.tls_routes.remove(key).map(Object::TlsRoute),
            Kind::ReferenceGrant => self
                .reference_grants
                .remove(key)
                .map(Object::ReferenceGrant),
            Kind::Service => self.services.remove(key).map(Object::Service),
            Kind::EndpointSlice => self.endpoint_slices.remove(key).map(Object::EndpointSlice),
            Kind::Secret => self.secrets.remove(key).map(Object::Secret),
            Kind::Namespace => self.namespaces.remove(key).map(Object::Namespace),
            Kind::ListenerSet => self.listener_sets.remove(key).map(Object::ListenerSet),
            Kind::BackendTlsPolicy => self
                .backend_tls_policies
                .remove(key)
                .map(Object::BackendTlsPolicy),
            Kind::ConfigMap => self.config_maps.remove(key).map(Object::ConfigMap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parsed_route_keeps_no_spare_room_in_its_lists() {
        let mut yaml = String::from(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n\
             spec:\n  parentRefs: [{name: g}]\n  hostnames: [a.example]\n  rules:\n",
        );
        for i in 0..5 {
            yaml.push_str(&format!(
                "  - matches: [{{path: {{type: PathPrefix, value: /s{i}}}}}]\n    \
                 backendRefs: [{{name: web, port: 80}}]\n"
            ));
        }
        let mut object = Object::HttpRoute(serde_yaml::from_str(&yaml).expect("HTTPRoute"));
        object.shrink_to_fit();
        let Object::HttpRoute(route) = object else {
            unreachable!()
        };
        let rules = route.spec.rules.as_ref().expect("rules");
        assert_eq!((rules.len(), rules.capacity()), (5, 5));
        for rule in rules {
            let refs = rule.backend_refs.as_ref().expect("backendRefs");
            let matches = rule.matches.as_ref().expect("matches");
            assert_eq!((refs.len(), refs.capacity()), (1, 1));
            assert_eq!((matches.len(), matches.capacity()), (1, 1));
        }
    }
}
