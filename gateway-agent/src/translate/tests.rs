//! Translate from YAML fixtures: each test states one rule of the spec.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use super::*;
use crate::model::{HttpRule, L4Protocol, PathMatch};
use crate::source::file::load_str;

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ours}
spec: {controllerName: test/controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: theirs}
spec: {controllerName: someone/else}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: ["10.0.0.1"]
- addresses: ["10.0.0.2"]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: apps}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: other-1
  namespace: apps
  labels: {kubernetes.io/service-name: other}
addressType: IPv4
ports: [{name: http, port: 9090}]
endpoints:
- addresses: ["10.0.1.1"]
"#;

fn gateway(name: &str, class: &str, listeners: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  gatewayClassName: {class}\n  addresses: [{{value: 192.0.2.1}}]\n  listeners:\n{listeners}\n"
    )
}

fn run(yaml: &str) -> Output {
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    load_str(Path::new("fixture.yaml"), yaml, &mut snapshot, &mut errors);
    assert!(errors.is_empty(), "fixture does not parse: {errors:?}");
    translate(
        &snapshot,
        &Settings {
            controller_name: "test/controller".into(),
            node_addresses: vec![Ipv4Addr::new(198, 51, 100, 1)],
        },
    )
}

fn route_condition<'a>(out: &'a Output, name: &str, type_: &str) -> &'a Condition {
    out.statuses
        .iter()
        .filter(|s| s.key.name == name && s.kind.ends_with("Route"))
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition for {name}: {:#?}", out.statuses))
}

fn rules(out: &Output) -> &[HttpRule] {
    &out.config.http[0].rules
}

const HTTP: &str = "  - {name: http, protocol: HTTP, port: 80}";

#[test]
fn gateways_of_other_classes_are_ignored() {
    let out = run(&format!("{BASE}{}", gateway("gw", "theirs", HTTP)));
    assert!(out.config.http.is_empty());
    assert!(
        out.statuses.iter().all(|s| s.key.name != "gw"),
        "no status for others' Gateways"
    );
}

#[test]
fn exact_paths_win_then_longer_prefixes() {
    let route = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /a/b}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /a}}]
    backendRefs: [{name: web, port: 80}]
"#;
    let out = run(&format!("{BASE}{}{route}", gateway("gw", "ours", HTTP)));
    let order: Vec<&PathMatch> = rules(&out).iter().map(|r| &r.matched.path).collect();
    assert_eq!(
        order,
        [
            &PathMatch::Exact("/a".into()),
            &PathMatch::Prefix("/a/b".into()),
            &PathMatch::Prefix("/a".into())
        ]
    );
    assert_eq!(
        out.config.http[0].bind,
        "192.0.2.1:80".parse::<SocketAddr>().unwrap()
    );
    // Only the ready endpoint, on the EndpointSlice's port for the Service port's name.
    assert_eq!(rules(&out)[0].backends.len(), 1);
    assert_eq!(
        rules(&out)[0].backends[0].addr,
        "10.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    assert!(route_condition(&out, "r", "Accepted").status);
    assert!(route_condition(&out, "r", "ResolvedRefs").status);
}

#[test]
fn a_section_name_that_matches_no_listener_is_no_matching_parent() {
    let out = run(&format!(
        "{BASE}{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\n\
         spec:\n  parentRefs: [{{name: gw, sectionName: nope}}]\n  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]\n",
        gateway("gw", "ours", HTTP)
    ));
    let accepted = route_condition(&out, "r", "Accepted");
    assert_eq!(
        (accepted.status, accepted.reason),
        (false, "NoMatchingParent")
    );
    assert!(rules(&out).is_empty());
}

#[test]
fn allowed_routes_same_namespace_rejects_other_namespaces() {
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: apps}\n\
                 spec:\n  parentRefs: [{name: gw, namespace: default}]\n  rules: [{backendRefs: [{name: other, port: 80}]}]\n";
    let same = run(&format!("{BASE}{}{route}", gateway("gw", "ours", HTTP)));
    let accepted = route_condition(&same, "r", "Accepted");
    assert_eq!(
        (accepted.status, accepted.reason),
        (false, "NotAllowedByListeners")
    );

    let all =
        "  - {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}";
    let out = run(&format!("{BASE}{}{route}", gateway("gw", "ours", all)));
    assert!(route_condition(&out, "r", "Accepted").status);
    assert_eq!(
        rules(&out)[0].backends[0].addr,
        "10.0.1.1:9090".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn cross_namespace_backends_need_a_reference_grant() {
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: default}\n\
                 spec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: other, namespace: apps, port: 80}]}]\n";
    let out = run(&format!("{BASE}{}{route}", gateway("gw", "ours", HTTP)));
    let resolved = route_condition(&out, "r", "ResolvedRefs");
    assert_eq!(
        (resolved.status, resolved.reason),
        (false, "RefNotPermitted")
    );
    assert!(rules(&out)[0].backends.is_empty());
    assert_eq!(rules(&out)[0].invalid_weight, 1, "its share answers 500");

    let grant = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: apps}\n\
                 spec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]\n  to: [{group: '', kind: Service}]\n";
    let out = run(&format!(
        "{BASE}{}{route}{grant}",
        gateway("gw", "ours", HTTP)
    ));
    assert!(route_condition(&out, "r", "ResolvedRefs").status);
    assert_eq!(rules(&out)[0].backends.len(), 1);
}

#[test]
fn missing_services_and_unknown_kinds_are_reported() {
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: default}\n\
                 spec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: nothing, port: 80}]}]\n\
                 ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: k, namespace: default}\n\
                 spec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: web, kind: Bucket, group: s3.example, port: 80}]}]\n";
    let out = run(&format!("{BASE}{}{route}", gateway("gw", "ours", HTTP)));
    assert_eq!(
        route_condition(&out, "r", "ResolvedRefs").reason,
        "BackendNotFound"
    );
    assert_eq!(
        route_condition(&out, "k", "ResolvedRefs").reason,
        "InvalidKind"
    );
}

#[test]
fn hostnames_intersect_with_the_listener() {
    let listener = "  - {name: http, protocol: HTTP, port: 80, hostname: '*.example.com'}";
    let route = |name: &str, hosts: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  parentRefs: [{{name: gw}}]\n  hostnames: {hosts}\n  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]\n"
        )
    };
    let out = run(&format!(
        "{BASE}{}{}{}{}",
        gateway("gw", "ours", listener),
        route("narrow", "[a.example.com, other.org]"),
        route("none", "[other.org]"),
        route("any", "[]")
    ));
    let accepted = route_condition(&out, "none", "Accepted");
    assert_eq!(
        (accepted.status, accepted.reason),
        (false, "NoMatchingListenerHostname")
    );
    let hosts = |name: &str| {
        rules(&out)
            .iter()
            .find(|r| r.route.name == name)
            .map(|r| r.hostnames.clone())
            .unwrap()
    };
    assert_eq!(hosts("narrow"), ["a.example.com"]);
    assert_eq!(hosts("any"), ["*.example.com"]);
}

#[test]
fn tcp_routes_become_l4_listeners_on_the_gateway_addresses() {
    let listeners = "  - {name: tcp, protocol: TCP, port: 9000}";
    let route = "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: t, namespace: default}\n\
                 spec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: web, port: 80, weight: 3}]}]\n";
    let out = run(&format!(
        "{BASE}{}{route}",
        gateway("gw", "ours", listeners)
    ));
    let l4 = &out.config.l4;
    assert_eq!(l4.len(), 1);
    assert_eq!(
        (l4[0].addr, l4[0].port, l4[0].protocol),
        (Ipv4Addr::new(192, 0, 2, 1), 9000, L4Protocol::Tcp)
    );
    assert_eq!(l4[0].route.to_string(), "TCPRoute/default/t/rule0");
    assert_eq!(l4[0].backends.len(), 1);
    assert_eq!(
        l4[0].backends[0].addr,
        "10.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn an_http_route_does_not_attach_to_a_tcp_listener() {
    let listeners = "  - {name: tcp, protocol: TCP, port: 9000}";
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: default}\n\
                 spec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]\n";
    let out = run(&format!(
        "{BASE}{}{route}",
        gateway("gw", "ours", listeners)
    ));
    assert_eq!(
        route_condition(&out, "r", "Accepted").reason,
        "NotAllowedByListeners"
    );
    assert!(out.config.l4.is_empty());
}
