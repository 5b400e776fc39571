//! TLS listeners and their TLSRoutes → the TLS data plane's sockets, with
//! routes in precedence order (oldest first, then namespace/name: on a
//! hostname claimed twice, the first keeps it; the SNI table itself orders
//! exact names before the longest wildcard). Passthrough listeners leave TLS
//! to the backend; Terminate listeners end it with their certificates.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::backend_tls::BackendTlsPolicies;
use super::listeners::{Listener, TlsMode};
use super::{Attachment, listener_binds, resolve_backends, route_ref};
use crate::model::{ServerCertificate, TlsPassthroughListener, TlsPassthroughRoute};
use crate::store::Snapshot;

/// What one socket collects from the TLS listeners bound to it.
#[derive(Default)]
pub struct Socket {
    routes: Vec<(String, TlsPassthroughRoute)>,
    certificates: Vec<ServerCertificate>,
}

/// Adds one TLS listener's routes (and, in Terminate mode, its certificates,
/// resolved with the listener) to the sockets it binds.
pub fn add_listener(
    listener: &Listener,
    attached: &[Attachment],
    snapshot: &Snapshot,
    policies: &BackendTlsPolicies,
    sockets: &mut BTreeMap<SocketAddr, Socket>,
) {
    // Terminate is the spec's default mode.
    let terminate = listener
        .tls
        .as_ref()
        .is_none_or(|t| t.mode == TlsMode::Terminate);
    if terminate && listener.certificates.is_empty() {
        return; // Nothing to terminate with: the listener serves nothing.
    }
    for bind in listener_binds(listener) {
        let socket = sockets.entry(bind).or_default();
        if terminate {
            socket
                .certificates
                .extend(listener.certificates.iter().cloned());
        }
        for attachment in attached {
            let route = attachment.route;
            // TLSRoute rules carry no matches: the first rule's backends serve the route.
            let Some(rule) = route.rules.first() else {
                continue;
            };
            let (mut backends, _) = resolve_backends(route, &rule.backend_refs, snapshot);
            // Terminate re-encrypts to backends a BackendTLSPolicy governs;
            // one whose policy cannot be used gets no traffic (no plain text).
            let mut backend_tls = BTreeMap::new();
            if terminate {
                for backend_ref in &rule.backend_refs {
                    let tls = policies.for_backend(backend_ref, listener.gateway, snapshot);
                    let (endpoints, _) =
                        resolve_backends(route, std::slice::from_ref(backend_ref), snapshot);
                    for endpoint in endpoints {
                        match &tls {
                            Ok(Some(tls)) => {
                                backend_tls.insert(endpoint.addr, tls.clone());
                            }
                            Ok(None) => {}
                            Err(_) => backends.retain(|b| b.addr != endpoint.addr),
                        }
                    }
                }
            }
            let order = format!("{}\0{}", route.created, route.key);
            socket.routes.push((
                order,
                TlsPassthroughRoute {
                    route: route_ref(route, 0),
                    hostnames: attachment.hostnames.to_vec(),
                    backends,
                    terminate,
                    backend_tls,
                },
            ));
        }
    }
}

pub fn finish(sockets: BTreeMap<SocketAddr, Socket>) -> Vec<TlsPassthroughListener> {
    sockets
        .into_iter()
        .map(|(bind, mut socket)| {
            socket.routes.sort_by(|a, b| a.0.cmp(&b.0));
            socket.routes.dedup_by(|a, b| a.1 == b.1);
            TlsPassthroughListener {
                bind,
                routes: socket.routes.into_iter().map(|(_, r)| r).collect(),
                certificates: socket.certificates,
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
            usable_addresses: None,
        };
        let output = translate(&snapshot, &settings);
        // The Terminate listener has no certificate: it serves nothing.
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
        assert!(listener.routes.iter().all(|r| !r.terminate));
        assert!(listener.certificates.is_empty());
    }

    #[test]
    fn terminate_listeners_carry_their_certificates_and_mark_their_routes() {
        let generated =
            rcgen::generate_simple_self_signed(vec!["t.example".into()]).expect("rcgen");
        let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
        let manifests = MANIFESTS.replace(
            "    tls: {mode: Terminate}",
            "    tls: {mode: Terminate, certificateRefs: [{name: t}]}",
        ) + &format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: t, namespace: infra}}\n\
             type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&generated.cert.pem()),
            indent(&generated.signing_key.serialize_pem())
        );
        let mut snapshot = Default::default();
        let mut errors = Vec::new();
        load_str(
            std::path::Path::new("t.yaml"),
            &manifests,
            &mut snapshot,
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let settings = Settings {
            controller_name: "test/controller".into(),
            node_addresses: Vec::new(),
            usable_addresses: None,
        };
        let output = translate(&snapshot, &settings);
        let terminate = output
            .config
            .tls_passthrough
            .iter()
            .find(|l| l.bind.port() == 9443)
            .expect("the Terminate listener's socket");
        assert_eq!(terminate.certificates.len(), 1);
        assert_eq!(terminate.certificates[0].hostname, None);
        // Only the route without sectionName attaches to both listeners.
        let names: Vec<&str> = terminate
            .routes
            .iter()
            .map(|r| r.route.name.as_str())
            .collect();
        assert_eq!(names, ["newer"]);
        assert!(terminate.routes[0].terminate);
    }
}
