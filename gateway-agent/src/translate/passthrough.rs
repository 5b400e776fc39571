//! TLS listeners in Passthrough mode and their TLSRoutes → the passthrough
//! data plane's sockets, with routes in precedence order (oldest first, then
//! namespace/name: on a hostname claimed twice, the first keeps it; the SNI
//! table itself orders exact names before the longest wildcard).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use gateway_api::gateways::GatewayListenersTlsMode;

use super::{Attachment, Listener, listener_binds, resolve_backends, route_ref};
use crate::model::{TlsPassthroughListener, TlsPassthroughRoute};
use crate::store::Snapshot;

pub fn is_passthrough(listener: &Listener) -> bool {
    listener.protocol == "TLS"
        && listener
            .tls
            .and_then(|t| t.mode.as_ref())
            .is_some_and(|m| *m == GatewayListenersTlsMode::Passthrough)
}

/// Adds one passthrough listener's routes to the sockets it binds.
pub fn add_listener(
    listener: &Listener,
    attached: &[Attachment],
    snapshot: &Snapshot,
    sockets: &mut BTreeMap<SocketAddr, Vec<(String, TlsPassthroughRoute)>>,
) {
    for bind in listener_binds(listener) {
        let routes = sockets.entry(bind).or_default();
        for attachment in attached {
            let route = attachment.route;
            // TLSRoute rules carry no matches: the first rule's backends serve the route.
            let Some(rule) = route.rules.first() else {
                continue;
            };
            let (backends, _) = resolve_backends(route, &rule.backend_refs, snapshot);
            let order = format!("{}\0{}", route.created, route.key);
            routes.push((
                order,
                TlsPassthroughRoute {
                    route: route_ref(route, 0),
                    hostnames: attachment.hostnames.clone(),
                    backends,
                },
            ));
        }
    }
}

pub fn finish(
    sockets: BTreeMap<SocketAddr, Vec<(String, TlsPassthroughRoute)>>,
) -> Vec<TlsPassthroughListener> {
    sockets
        .into_iter()
        .map(|(bind, mut routes)| {
            routes.sort_by(|a, b| a.0.cmp(&b.0));
            routes.dedup_by(|a, b| a.1 == b.1);
            TlsPassthroughListener {
                bind,
                routes: routes.into_iter().map(|(_, r)| r).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::source::file::load_str;
    use crate::translate::{Settings, translate};

    const MANIFESTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ours}
spec: {controllerName: test/controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: ours
  addresses: [{value: 198.18.0.1}]
  listeners:
  - name: tls
    port: 8443
    protocol: TLS
    tls: {mode: Passthrough}
    allowedRoutes: {namespaces: {from: All}}
  - name: terminate
    port: 9443
    protocol: TLS
    tls: {mode: Terminate}
    allowedRoutes: {namespaces: {from: All}}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: apps}
spec: {ports: [{name: tls, port: 443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, namespace: apps, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
ports: [{name: tls, port: 8443}]
endpoints: [{addresses: ["198.18.1.1"]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: newer, namespace: apps, creationTimestamp: "2025-01-02T00:00:00Z"}
spec:
  parentRefs: [{name: gw, namespace: infra}]
  hostnames: [a.example, "*.example"]
  rules: [{backendRefs: [{name: a, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: older, namespace: apps, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  parentRefs: [{name: gw, namespace: infra, sectionName: tls}]
  hostnames: [b.example]
  rules: [{backendRefs: [{name: a, port: 443}]}]
"#;

    #[test]
    fn passthrough_listeners_get_their_tls_routes_oldest_first() {
        let mut snapshot = Default::default();
        let mut errors = Vec::new();
        load_str(
            std::path::Path::new("t.yaml"),
            MANIFESTS,
            &mut snapshot,
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let settings = Settings {
            controller_name: "test/controller".into(),
            node_addresses: Vec::new(),
        };
        let output = translate(&snapshot, &settings);
        // Only the Passthrough listener is a passthrough socket.
        assert_eq!(output.config.tls_passthrough.len(), 1);
        let listener = &output.config.tls_passthrough[0];
        assert_eq!(listener.bind, "198.18.0.1:8443".parse().unwrap());
        let names: Vec<&str> = listener
            .routes
            .iter()
            .map(|r| r.route.name.as_str())
            .collect();
        assert_eq!(names, ["older", "newer"]);
        assert_eq!(listener.routes[1].hostnames, ["a.example", "*.example"]);
        assert_eq!(
            listener.routes[0].backends[0].addr,
            "198.18.1.1:8443".parse().unwrap()
        );
        let accepted = output
            .statuses
            .iter()
            .filter(|s| s.kind == "TLSRoute")
            .all(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status)
            });
        assert!(accepted, "{:?}", output.statuses);
    }
}
