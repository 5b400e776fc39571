//! The scale manifests of the control-plane benchmark: `gateways` Gateways on
//! one GatewayClass, HTTPRoutes with a hostname and 5 rules each, TCPRoutes /
//! UDPRoutes on listeners of their own, and TLSRoutes with an SNI hostname
//! each on one TLS Passthrough listener per Gateway. Plain text with std only,
//! so that the criterion benchmark in gateway-agent/benches includes this same
//! file.

use std::fmt::Write as _;

/// Rules (path prefixes `/s0` … `/s4`) in every generated HTTPRoute.
pub const RULES_PER_ROUTE: usize = 5;
/// Port of Gateway `g`'s HTTP listener.
pub fn http_port(gateway: usize) -> u16 {
    20_000 + gateway as u16
}
/// Hostname of generated HTTPRoute `i`.
pub fn route_host(i: usize) -> String {
    format!("r{i}.bench.example")
}

/// Port of Gateway `g`'s TLS Passthrough listener.
pub fn tls_port(gateway: usize) -> u16 {
    25_000 + gateway as u16
}
/// SNI hostname of generated TLSRoute `i`.
pub fn tls_host(i: usize) -> String {
    format!("t{i}.tls.bench.example")
}
/// Where the `tls-echo` Service's endpoint listens: the TLSRoutes' backend
/// (passthrough forwards the ClientHello bytes as they are, so an echo of
/// them shows a connection reached it).
pub const TLS_BACKEND: (&str, u16) = ("127.0.0.1", 19_443);

#[derive(Default)]
pub struct Scale {
    pub gateways: usize,
    pub http_routes: usize,
    /// TCPRoutes plus UDPRoutes (half each), one listener each.
    pub l4_routes: usize,
    /// TLSRoutes, route `i` on Gateway `i % gateways`.
    pub tls_routes: usize,
    /// Where the `web` Service's endpoint (HTTP backend) listens.
    pub http_backend: (String, u16),
}

/// (file name, multi-document YAML): `common.yaml`, then one file per Gateway
/// holding the Gateway and its routes.
pub fn generate(scale: &Scale, controller_name: &str) -> Vec<(String, String)> {
    let (backend_ip, backend_port) = &scale.http_backend;
    let common = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: bench
spec:
  controllerName: {controller_name}
{web}{echo}{tls}"#,
        web = service("web", 80, backend_ip, *backend_port),
        echo = service("l4-echo", 9000, "127.0.0.1", 19_000),
        tls = service("tls-echo", 443, TLS_BACKEND.0, TLS_BACKEND.1),
    );
    let mut files = vec![("common.yaml".to_string(), common)];
    let g = scale.gateways.max(1);
    let l4_per_gateway = scale.l4_routes.div_ceil(g);
    for gateway in 0..g {
        let mut text = String::new();
        let l4_here: Vec<usize> = (gateway * l4_per_gateway..(gateway + 1) * l4_per_gateway)
            .filter(|i| *i < scale.l4_routes)
            .collect();
        write!(
            text,
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw-{gateway}\n  namespace: default\nspec:\n  gatewayClassName: bench\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: {}\n",
            http_port(gateway)
        )
        .expect("write to String");
        for i in &l4_here {
            let protocol = if i % 2 == 0 { "TCP" } else { "UDP" };
            write!(
                text,
                "  - name: l4-{i}\n    protocol: {protocol}\n    port: {}\n",
                30_000 + i
            )
            .expect("write to String");
        }
        if gateway < scale.tls_routes {
            write!(
                text,
                "  - name: tls\n    protocol: TLS\n    port: {}\n    tls:\n      mode: Passthrough\n",
                tls_port(gateway)
            )
            .expect("write to String");
        }
        for i in (gateway..scale.http_routes).step_by(g) {
            text.push_str(&http_route(i, gateway));
        }
        for i in (gateway..scale.tls_routes).step_by(g) {
            text.push_str(&tls_route(i, gateway));
        }
        for i in l4_here {
            let kind = if i % 2 == 0 { "TCPRoute" } else { "UDPRoute" };
            write!(
                text,
                "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: {kind}\nmetadata:\n  name: l4-{i}\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw-{gateway}\n    sectionName: l4-{i}\n  rules:\n  - backendRefs:\n    - name: l4-echo\n      port: 9000\n"
            )
            .expect("write to String");
        }
        files.push((format!("gw-{gateway}.yaml"), text));
    }
    files
}

/// HTTPRoute `route-<i>` on Gateway `gw-<gateway>`: host `route_host(i)`, rules
/// `/s0` … `/s4` to Service `web`.
pub fn http_route(i: usize, gateway: usize) -> String {
    let mut text = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: route-{i}\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw-{gateway}\n    sectionName: http\n  hostnames: [\"{}\"]\n  rules:\n",
        route_host(i)
    );
    for rule in 0..RULES_PER_ROUTE {
        write!(
            text,
            "  - matches:\n    - path:\n        type: PathPrefix\n        value: /s{rule}\n    backendRefs:\n    - name: web\n      port: 80\n"
        )
        .expect("write to String");
    }
    text
}

/// TLSRoute `tls-<i>` on Gateway `gw-<gateway>`'s passthrough listener:
/// SNI `tls_host(i)` to Service `tls-echo`.
pub fn tls_route(i: usize, gateway: usize) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata:\n  name: tls-{i}\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw-{gateway}\n    sectionName: tls\n  hostnames: [\"{}\"]\n  rules:\n  - backendRefs:\n    - name: tls-echo\n      port: 443\n",
        tls_host(i)
    )
}

fn service(name: &str, port: u16, ip: &str, target_port: u16) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  ports:
  - name: p
    port: {port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels:
    kubernetes.io/service-name: {name}
addressType: IPv4
ports:
- name: p
  port: {target_port}
endpoints:
- addresses: ["{ip}"]
"#
    )
}
