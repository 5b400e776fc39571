//! The snapshot of every object kind the agent needs, as the sources saw it.
//! Sources fill it; translate reads it; nothing downstream knows which source ran.

use std::collections::BTreeMap;

use gateway_api::{
    experimental::{httproutes::HttpRoute, tcproutes::TcpRoute, udproutes::UdpRoute},
    gatewayclasses::GatewayClass,
    gateways::Gateway,
    grpcroutes::GrpcRoute,
    listenersets::ListenerSet,
    referencegrants::ReferenceGrant,
    tlsroutes::TlsRoute,
};
use k8s_openapi::api::{
    core::v1::{Namespace, Secret, Service},
    discovery::v1::EndpointSlice,
};

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
    /// `gateway.networking.k8s.io/bundle-version` of each Gateway API CRD the
    /// cluster serves, by CRD name; empty when unknown (standalone mode).
    pub crd_bundle_versions: BTreeMap<String, String>,
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
        self.crd_bundle_versions.extend(other.crd_bundle_versions);
    }
}
