//! Translate from YAML fixtures: each test states one rule of the spec.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
            usable_addresses: None,
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
            .map(|r| r.hostnames.to_vec())
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
        (Ipv4Addr::new(192, 0, 2, 1).into(), 9000, L4Protocol::Tcp)
    );
    assert_eq!(l4[0].route.to_string(), "TCPRoute/default/t/rule0");
    assert_eq!(l4[0].backends.len(), 1);
    assert_eq!(
        l4[0].backends[0].addr,
        "10.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn an_ipv6_gateway_address_gets_an_ipv6_l4_listener_with_the_ipv6_endpoints() {
    let gateway = gateway("gw", "ours", "  - {name: udp, protocol: UDP, port: 5353}").replace(
        "[{value: 192.0.2.1}]",
        "[{value: 192.0.2.1}, {value: \"2001:db8::1\"}]",
    );
    let route = "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: UDPRoute\nmetadata: {name: u, namespace: default}\n\
                 spec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]\n";
    let slice6 = "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-2\n  namespace: default\n\
                  \x20 labels: {kubernetes.io/service-name: web}\naddressType: IPv6\nports: [{name: http, port: 8080}]\n\
                  endpoints:\n- addresses: [\"2001:db8::10\"]\n";
    let out = run(&format!("{BASE}{slice6}{gateway}{route}"));
    let addrs: Vec<IpAddr> = out.config.l4.iter().map(|l| l.addr).collect();
    assert_eq!(
        addrs,
        [
            IpAddr::from(Ipv4Addr::new(192, 0, 2, 1)),
            "2001:db8::1".parse().unwrap()
        ]
    );
    // Both get every endpoint; the data plane keeps those of the listener's family.
    assert!(
        out.config.l4[1]
            .backends
            .iter()
            .any(|b| b.addr == "[2001:db8::10]:8080".parse::<SocketAddr>().unwrap())
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

// === Listener validation, conflicts, ListenerSets and status ===

/// The entry of listener `section` of `owner` (a Gateway or ListenerSet name).
fn listener<'a>(out: &'a Output, owner: &str, section: &str) -> &'a ObjectStatus {
    out.statuses
        .iter()
        .find(|s| {
            s.key.name == owner && s.section.as_deref() == Some(section) && s.listener.is_some()
        })
        .unwrap_or_else(|| panic!("no listener {owner}/{section}: {:#?}", out.statuses))
}

fn condition<'a>(status: &'a ObjectStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} in {status:#?}"))
}

fn object<'a>(out: &'a Output, kind: &str, name: &str) -> &'a ObjectStatus {
    out.statuses
        .iter()
        .find(|s| {
            s.kind == kind && s.key.name == name && s.listener.is_none() && s.parent_ref.is_none()
        })
        .unwrap_or_else(|| panic!("no {kind} {name}: {:#?}", out.statuses))
}

fn state(c: &Condition) -> (bool, &str) {
    (c.status, c.reason)
}

#[test]
fn listeners_report_all_four_conditions_and_their_kinds() {
    let out = run(&format!("{BASE}{}", gateway("gw", "ours", HTTP)));
    let l = listener(&out, "gw", "http");
    let types: Vec<&str> = l.conditions.iter().map(|c| c.type_).collect();
    assert_eq!(
        types,
        ["Accepted", "Conflicted", "ResolvedRefs", "Programmed"]
    );
    assert_eq!(state(condition(l, "Conflicted")), (false, "NoConflicts"));
    assert_eq!(
        l.listener.as_ref().unwrap().supported_kinds,
        ["HTTPRoute", "GRPCRoute"]
    );
    let gw = object(&out, "Gateway", "gw");
    assert_eq!(state(condition(gw, "Accepted")), (true, "Accepted"));
    assert_eq!(state(condition(gw, "Programmed")), (true, "Programmed"));
}

#[test]
fn an_unsupported_protocol_is_rejected_and_a_gateway_without_valid_listener_too() {
    let out = run(&format!(
        "{BASE}{}",
        gateway("gw", "ours", "  - {name: sctp, protocol: SCTP, port: 80}")
    ));
    let l = listener(&out, "gw", "sctp");
    assert_eq!(
        state(condition(l, "Accepted")),
        (false, "UnsupportedProtocol")
    );
    assert_eq!(state(condition(l, "Programmed")), (false, "Invalid"));
    assert!(l.listener.as_ref().unwrap().supported_kinds.is_empty());
    let gw = object(&out, "Gateway", "gw");
    assert_eq!(
        state(condition(gw, "Accepted")),
        (false, "ListenersNotValid")
    );
    assert_eq!(state(condition(gw, "Programmed")), (false, "Invalid"));
}

#[test]
fn kinds_a_protocol_cannot_carry_are_invalid_route_kinds() {
    let listeners = "  - {name: tcp, protocol: TCP, port: 9000, allowedRoutes: {kinds: [{kind: TCPRoute}, {kind: HTTPRoute}]}}";
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: default}\n\
                 spec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]\n";
    let out = run(&format!(
        "{BASE}{}{route}",
        gateway("gw", "ours", listeners)
    ));
    let l = listener(&out, "gw", "tcp");
    assert_eq!(
        state(condition(l, "ResolvedRefs")),
        (false, "InvalidRouteKinds")
    );
    assert_eq!(l.listener.as_ref().unwrap().supported_kinds, ["TCPRoute"]);
    assert_eq!(
        state(route_condition(&out, "r", "Accepted")),
        (false, "NotAllowedByListeners")
    );
    let gw = object(&out, "Gateway", "gw");
    assert_eq!(
        state(condition(gw, "Accepted")),
        (true, "ListenersNotValid")
    );
}

#[test]
fn listeners_of_one_gateway_that_are_not_distinct_are_all_conflicted() {
    let listeners = "  - {name: a, protocol: HTTP, port: 80, hostname: x.example}\n\
                     \x20 - {name: b, protocol: HTTP, port: 80, hostname: x.example}\n\
                     \x20 - {name: c, protocol: HTTP, port: 80, hostname: y.example}\n\
                     \x20 - {name: d, protocol: HTTPS, port: 8443}\n\
                     \x20 - {name: e, protocol: HTTP, port: 8443}";
    let out = run(&format!("{BASE}{}", gateway("gw", "ours", listeners)));
    for (name, reason) in [
        ("a", "HostnameConflict"),
        ("b", "HostnameConflict"),
        ("d", "ProtocolConflict"),
        ("e", "ProtocolConflict"),
    ] {
        let l = listener(&out, "gw", name);
        assert_eq!(state(condition(l, "Conflicted")), (true, reason), "{name}");
        assert!(!condition(l, "Accepted").status, "{name}");
        assert!(!condition(l, "Programmed").status, "{name}");
    }
    assert!(!condition(listener(&out, "gw", "c"), "Conflicted").status);
    let gw = object(&out, "Gateway", "gw");
    assert_eq!(
        state(condition(gw, "Accepted")),
        (true, "ListenersNotValid")
    );
    assert!(condition(gw, "Accepted").message.contains("a, b, d, e"));
}

#[test]
fn tls_and_https_share_a_port_and_tcp_and_udp_too() {
    let listeners = "  - {name: https, protocol: HTTPS, port: 443, hostname: a.example}\n\
                     \x20 - {name: tls, protocol: TLS, port: 443, hostname: b.example, tls: {mode: Passthrough}}\n\
                     \x20 - {name: tcp, protocol: TCP, port: 53}\n\
                     \x20 - {name: udp, protocol: UDP, port: 53}";
    let out = run(&format!("{BASE}{}", gateway("gw", "ours", listeners)));
    for name in ["https", "tls", "tcp", "udp"] {
        let l = listener(&out, "gw", name);
        assert_eq!(
            state(condition(l, "Accepted")),
            (true, "Accepted"),
            "{name}"
        );
    }
    assert_eq!(
        listener(&out, "gw", "tls")
            .listener
            .as_ref()
            .unwrap()
            .supported_kinds,
        ["TLSRoute"]
    );
}

#[test]
fn tls_terminate_listeners_take_tls_routes_and_need_certificates() {
    let listeners = "  - {name: tls, protocol: TLS, port: 443, tls: {mode: Terminate}}";
    let out = run(&format!("{BASE}{}", gateway("gw", "ours", listeners)));
    let tls = listener(&out, "gw", "tls");
    assert_eq!(state(condition(tls, "Accepted")), (true, "Accepted"));
    assert_eq!(
        state(condition(tls, "ResolvedRefs")),
        (false, "InvalidCertificateRef")
    );
    assert_eq!(tls.listener.as_ref().unwrap().supported_kinds, ["TLSRoute"]);
}

#[test]
fn an_unsupported_parameters_ref_is_invalid_parameters() {
    let gw = gateway("gw", "ours", HTTP).replace(
        "  gatewayClassName: ours\n",
        "  gatewayClassName: ours\n  infrastructure: {parametersRef: {group: x.io, kind: Params, name: p}}\n",
    );
    let out = run(&format!("{BASE}{gw}"));
    let gw = object(&out, "Gateway", "gw");
    assert_eq!(
        state(condition(gw, "Accepted")),
        (false, "InvalidParameters")
    );
    assert_eq!(state(condition(gw, "Programmed")), (false, "Invalid"));
}

const TCP_ROUTE: &str = "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\n\
    metadata: {name: NAME, namespace: default, creationTimestamp: 'CREATED'}\n\
    spec:\n  parentRefs: [{name: GW}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]\n";

fn tcp_route(name: &str, gateway: &str, created: &str) -> String {
    TCP_ROUTE
        .replace("NAME", name)
        .replace("GW", gateway)
        .replace("CREATED", created)
}

#[test]
fn the_oldest_of_several_tcp_routes_on_a_listener_is_served_and_all_are_accepted() {
    let listeners = "  - {name: tcp, protocol: TCP, port: 9000}";
    let out = run(&format!(
        "{BASE}{}{}{}",
        gateway("gw", "ours", listeners),
        tcp_route("newer", "gw", "2026-01-02T00:00:00Z"),
        tcp_route("older", "gw", "2026-01-01T00:00:00Z"),
    ));
    assert_eq!(out.config.l4.len(), 1);
    assert_eq!(out.config.l4[0].route.name, "older");
    assert!(route_condition(&out, "newer", "Accepted").status);
    assert!(route_condition(&out, "older", "Accepted").status);
    assert_eq!(
        listener(&out, "gw", "tcp")
            .listener
            .as_ref()
            .unwrap()
            .attached_routes,
        2
    );
}

#[test]
fn one_l4_port_on_one_address_across_gateways_goes_to_the_older_gateway() {
    let gw = |name: &str, created: &str| {
        gateway(name, "ours", "  - {name: tcp, protocol: TCP, port: 9000}").replace(
            "namespace: default}",
            &format!("namespace: default, creationTimestamp: '{created}'}}"),
        )
    };
    let out = run(&format!(
        "{BASE}{}{}{}{}",
        gw("a-newer", "2026-01-02T00:00:00Z"),
        gw("b-older", "2026-01-01T00:00:00Z"),
        tcp_route("to-newer", "a-newer", "2026-01-01T00:00:00Z"),
        tcp_route("to-older", "b-older", "2026-01-01T00:00:00Z"),
    ));
    assert_eq!(out.config.l4.len(), 1);
    assert_eq!(out.config.l4[0].route.name, "to-older");
    let lost = listener(&out, "a-newer", "tcp");
    assert_eq!(
        state(condition(lost, "Accepted")),
        (false, "PortUnavailable")
    );
    assert!(
        condition(lost, "Accepted")
            .message
            .contains("default/b-older")
    );
    assert_eq!(
        state(condition(listener(&out, "b-older", "tcp"), "Accepted")),
        (true, "Accepted")
    );
    assert_eq!(
        state(condition(object(&out, "Gateway", "a-newer"), "Accepted")),
        (false, "ListenersNotValid")
    );
}

const LISTENER_SET: &str = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: ListenerSet\n\
    metadata: {name: NAME, namespace: NS}\n\
    spec:\n  parentRef: {name: gw, namespace: default}\n  listeners:\n  - {name: extra, protocol: HTTP, port: 80, hostname: HOST}\n";

fn listener_set(name: &str, namespace: &str, host: &str) -> String {
    LISTENER_SET
        .replace("NAME", name)
        .replace("NS", namespace)
        .replace("HOST", host)
}

fn gateway_allowing_sets(from: &str) -> String {
    gateway(
        "gw",
        "ours",
        "  - {name: http, protocol: HTTP, port: 80, hostname: gw.example}",
    )
    .replace(
        "  gatewayClassName: ours\n",
        &format!(
            "  gatewayClassName: ours\n  allowedListeners: {{namespaces: {{from: {from}}}}}\n"
        ),
    )
}

#[test]
fn listener_sets_attach_only_where_the_gateway_allows_them() {
    let sets = format!(
        "{}{}",
        listener_set("same", "default", "same.example"),
        listener_set("other", "apps", "other.example")
    );
    let by_default = run(&format!("{BASE}{}{sets}", gateway("gw", "ours", HTTP)));
    for name in ["same", "other"] {
        let set = object(&by_default, "ListenerSet", name);
        assert_eq!(
            state(condition(set, "Accepted")),
            (false, "NotAllowed"),
            "{name}"
        );
        assert_eq!(
            state(condition(set, "Programmed")),
            (false, "NotAllowed"),
            "{name}"
        );
    }
    let same = run(&format!("{BASE}{}{sets}", gateway_allowing_sets("Same")));
    assert_eq!(
        state(condition(object(&same, "ListenerSet", "same"), "Accepted")),
        (true, "Accepted")
    );
    assert_eq!(
        state(condition(object(&same, "ListenerSet", "other"), "Accepted")),
        (false, "NotAllowed")
    );
    assert_eq!(
        state(condition(listener(&same, "same", "extra"), "Programmed")),
        (true, "Programmed")
    );
    let all = run(&format!("{BASE}{}{sets}", gateway_allowing_sets("All")));
    assert!(condition(object(&all, "ListenerSet", "other"), "Accepted").status);
}

#[test]
fn a_listener_set_listener_loses_to_the_gateway_and_routes_attach_by_parent_kind() {
    let route = |name: &str, parent: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  parentRefs: [{parent}]\n  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]\n"
        )
    };
    let out = run(&format!(
        "{BASE}{}{}{}{}{}",
        gateway_allowing_sets("Same"),
        listener_set("clash", "default", "gw.example"),
        listener_set("fine", "default", "fine.example"),
        route("to-gateway", "{name: gw}"),
        route("to-set", "{kind: ListenerSet, name: fine}"),
    ));
    let clash = listener(&out, "clash", "extra");
    assert_eq!(
        state(condition(clash, "Conflicted")),
        (true, "HostnameConflict")
    );
    assert_eq!(
        state(condition(object(&out, "ListenerSet", "clash"), "Accepted")),
        (false, "ListenersNotValid")
    );
    assert!(!condition(listener(&out, "gw", "http"), "Conflicted").status);
    // Each route is counted on the listeners of the parent it names only.
    assert_eq!(
        listener(&out, "gw", "http")
            .listener
            .as_ref()
            .unwrap()
            .attached_routes,
        1
    );
    assert_eq!(
        listener(&out, "fine", "extra")
            .listener
            .as_ref()
            .unwrap()
            .attached_routes,
        1
    );
    let hosts: Vec<&[String]> = rules(&out).iter().map(|r| &r.hostnames[..]).collect();
    assert!(
        hosts.contains(&&["gw.example".to_string()][..]),
        "{hosts:?}"
    );
    assert!(
        hosts.contains(&&["fine.example".to_string()][..]),
        "{hosts:?}"
    );
}

#[test]
fn the_typed_status_carries_generation_parent_refs_as_written_and_our_controller() {
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {name: r, namespace: default, generation: 7}\n\
                 spec:\n  parentRefs: [{name: gw, sectionName: http}, {name: elsewhere}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]\n";
    let yaml = format!("{BASE}{}{route}", gateway("gw", "ours", HTTP));
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    load_str(Path::new("fixture.yaml"), &yaml, &mut snapshot, &mut errors);
    let out = translate(
        &snapshot,
        &Settings {
            controller_name: "test/controller".into(),
            node_addresses: Vec::new(),
            usable_addresses: None,
        },
    );
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    );
    let objects: Vec<serde_json::Value> =
        api_objects(&snapshot, &out.statuses, "test/controller", &now)
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect();
    let route = objects.iter().find(|o| o["kind"] == "HTTPRoute").unwrap();
    // One parent: the other parentRef names no Gateway of ours.
    let parents = route["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 1, "{parents:?}");
    assert_eq!(
        parents[0]["parentRef"],
        serde_json::json!({"name": "gw", "sectionName": "http"})
    );
    assert_eq!(parents[0]["controllerName"], "test/controller");
    assert_eq!(parents[0]["conditions"][0]["observedGeneration"], 7);
    let gw = objects.iter().find(|o| o["kind"] == "Gateway").unwrap();
    assert_eq!(
        gw["status"]["addresses"],
        serde_json::json!([{"type": "IPAddress", "value": "192.0.2.1"}])
    );
    assert_eq!(gw["status"]["listeners"][0]["attachedRoutes"], 1);
    assert_eq!(gw["status"]["conditions"][0]["observedGeneration"], 1);
    let theirs = objects
        .iter()
        .find(|o| o["kind"] == "GatewayClass" && o["metadata"]["name"] == "theirs")
        .unwrap();
    assert!(
        theirs.get("status").is_none_or(serde_json::Value::is_null),
        "others' objects keep their status"
    );
}

#[test]
fn gateway_classes_report_the_crd_versions_they_support() {
    let out = run(&format!("{BASE}{}", gateway("gw", "ours", HTTP)));
    let class = object(&out, "GatewayClass", "ours");
    assert_eq!(state(condition(class, "Accepted")), (true, "Accepted"));
    assert_eq!(
        state(condition(class, "SupportedVersion")),
        (true, "SupportedVersion")
    );

    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    load_str(Path::new("f.yaml"), BASE, &mut snapshot, &mut errors);
    let settings = Settings {
        controller_name: "test/controller".into(),
        node_addresses: Vec::new(),
        usable_addresses: None,
    };
    for (version, supported) in [
        ("v1.5.1", true),
        ("v1.6.0", true),
        ("v1.2.0", false),
        ("v2.0.0", false),
    ] {
        snapshot
            .crd_bundle_versions
            .insert("gateways.gateway.networking.k8s.io".into(), version.into());
        let out = translate(&snapshot, &settings);
        let class = object(&out, "GatewayClass", "ours");
        let expected = if supported {
            "SupportedVersion"
        } else {
            "UnsupportedVersion"
        };
        assert_eq!(
            state(condition(class, "SupportedVersion")),
            (supported, expected),
            "{version}"
        );
        assert_eq!(condition(class, "Accepted").status, supported, "{version}");
    }
}

#[test]
fn unresolved_certificates_stop_a_listener_being_served_but_invalid_kinds_do_not() {
    use super::listeners::{AllowedRoutes, Listener, NamespacesFrom};
    let key = ObjectKey::new("default", "gw");
    let listener = |unresolved: Option<(&'static str, String)>| Listener {
        gateway: &key,
        owner_kind: "Gateway",
        owner: &key,
        generation: 1,
        gateway_created: String::new(),
        name: "https",
        port: 443,
        protocol: "HTTPS",
        hostname: None,
        tls: None,
        allowed: AllowedRoutes {
            kinds: None,
            namespaces: NamespacesFrom::Same,
        },
        namespace: "default",
        addresses: &[],
        supported_kinds: vec!["HTTPRoute"],
        rejected: None,
        conflicted: None,
        unresolved,
        serves_partially_resolved: false,
        certificates: Vec::new(),
    };
    let kinds = listener(Some(("InvalidRouteKinds", "GRPCRoute".into())));
    assert!(kinds.serves());
    let cert = listener(Some(("InvalidCertificateRef", "no Secret".into())));
    assert!(!cert.serves());
    let programmed = cert
        .conditions()
        .into_iter()
        .find(|c| c.type_ == "Programmed")
        .unwrap();
    assert_eq!(state(&programmed), (false, "Invalid"));
}

#[test]
fn a_healthy_listener_has_no_problem_and_a_conflicted_one_has() {
    let healthy = run(&format!("{BASE}{}", gateway("gw", "ours", HTTP)));
    assert_eq!(listener(&healthy, "gw", "http").problem(), None);
    let listeners =
        "  - {name: a, protocol: HTTP, port: 80}\n  - {name: b, protocol: TCP, port: 80}";
    let out = run(&format!("{BASE}{}", gateway("gw", "ours", listeners)));
    let problem = listener(&out, "gw", "a").problem().expect("a problem");
    assert_eq!(state(problem), (false, "ProtocolConflict"));
}
