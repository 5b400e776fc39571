//! The incremental translate against a full one: random edit sequences of
//! manifest files (routes of every kind, Services, EndpointSlices, Gateways,
//! ReferenceGrants), read by the incremental file source whose change set
//! drives `translate_incremental`; after every step its output (config and
//! statuses) must equal a full translate of the same snapshot, and that of
//! the same files read with their route objects kept (the two forms a
//! snapshot holds routes in).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Memo, Settings, translate, translate_incremental};
use crate::source::file::FileSource;

const CONTROLLER: &str = "example.com/memo-tests";

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "gateway-agent-memo-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pick<'a>(rng: &mut fastrand::Rng, choices: &[&'a str]) -> &'a str {
    choices[rng.usize(..choices.len())]
}

fn gateway(rng: &mut fastrand::Rng, name: &str) -> String {
    let mut text = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  gatewayClassName: memo\n  listeners:\n"
    );
    // Port 8080 is shared by every Gateway (one socket, several listeners).
    for (section, port) in [("http", 8080), ("other", 8081)] {
        if rng.bool() || section == "http" {
            let hostname = pick(
                rng,
                &[
                    "",
                    "    hostname: a.example\n",
                    "    hostname: '*.example'\n",
                ],
            );
            text.push_str(&format!(
                "  - name: {section}\n    protocol: HTTP\n    port: {port}\n{hostname}    allowedRoutes:\n      namespaces:\n        from: All\n"
            ));
        }
    }
    if rng.bool() {
        text.push_str("  - name: tcp\n    protocol: TCP\n    port: 9000\n");
    }
    if rng.bool() {
        text.push_str(
            "  - name: tls\n    protocol: TLS\n    port: 8443\n    tls:\n      mode: Passthrough\n",
        );
    }
    text
}

fn backend(rng: &mut fastrand::Rng) -> String {
    let (name, port) = match rng.u8(0..4) {
        0 => ("api", 8080),
        1 => ("missing", 80),
        _ => ("web", 80),
    };
    let namespace = if rng.u8(0..6) == 0 {
        "namespace: other\n      "
    } else {
        ""
    };
    format!("    - {namespace}name: {name}\n      port: {port}\n")
}

fn route(rng: &mut fastrand::Rng) -> String {
    let name = format!("r{}", rng.u8(0..8));
    let namespace = pick(rng, &["default", "default", "other"]);
    let parent = format!(
        "  - name: g{}\n    namespace: default\n{}",
        rng.u8(0..3),
        pick(
            rng,
            &[
                "",
                "    sectionName: http\n",
                "    sectionName: other\n",
                "    sectionName: tcp\n"
            ]
        )
    );
    // Sometimes a second parentRef: another Gateway, or the same listener
    // twice (it then counts twice in attachedRoutes).
    let parent = if rng.u8(0..4) == 0 {
        format!(
            "{parent}  - name: g{}\n    namespace: default\n",
            rng.u8(0..3)
        )
    } else {
        parent
    };
    let hostnames = pick(
        rng,
        &[
            "",
            "  hostnames: [x.a.example]\n",
            "  hostnames: [a.example, b.example]\n",
        ],
    );
    match rng.u8(0..6) {
        0 => format!(
            "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  parentRefs:\n{parent}  rules:\n  - backendRefs:\n{}",
            backend(rng)
        ),
        1 => format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  parentRefs:\n{parent}  hostnames: [t.example]\n  rules:\n  - backendRefs:\n{}",
            backend(rng)
        ),
        2 => format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  parentRefs:\n{parent}{hostnames}  rules:\n  - matches:\n    - method:\n        service: svc.S{}\n    backendRefs:\n{}",
            rng.u8(0..3),
            backend(rng)
        ),
        _ => {
            let mut text = format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  parentRefs:\n{parent}{hostnames}  rules:\n"
            );
            for _ in 0..rng.usize(1..3) {
                text.push_str(&format!(
                    "  - matches:\n    - path:\n        type: {}\n        value: /p{}\n    backendRefs:\n{}",
                    pick(rng, &["PathPrefix", "Exact"]),
                    rng.u8(0..3),
                    backend(rng)
                ));
            }
            text
        }
    }
}

fn service(rng: &mut fastrand::Rng) -> String {
    let (name, port) = if rng.bool() {
        ("web", 80)
    } else {
        ("api", 8080)
    };
    let namespace = pick(rng, &["default", "default", "other"]);
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  ports:\n  - name: p\n    port: {port}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: p\n  port: {}\nendpoints:\n- addresses: [127.0.0.{}]\n",
        18_000 + rng.u16(0..3),
        rng.u8(1..4)
    )
}

fn grant() -> String {
    "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata:\n  name: from-default\n  namespace: other\nspec:\n  from:\n  - group: gateway.networking.k8s.io\n    kind: HTTPRoute\n    namespace: default\n  to:\n  - group: ''\n    kind: Service\n".into()
}

/// One manifest file's new content: mostly routes, sometimes the objects
/// routes depend on.
fn file_text(rng: &mut fastrand::Rng) -> String {
    (0..rng.usize(1..4))
        .map(|_| match rng.u8(0..12) {
            0 => {
                let name = format!("g{}", rng.u8(0..3));
                gateway(rng, &name)
            }
            1 => service(rng),
            2 => grant(),
            _ => route(rng),
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn incremental_translate_equals_a_full_translate_over_random_edits() {
    let settings = Settings {
        controller_name: CONTROLLER.into(),
        node_addresses: vec![Ipv4Addr::new(198, 18, 0, 1)],
        usable_addresses: None,
    };
    let mut incremental_steps = 0;
    for seed in 0..8 {
        let dir = TempDir::new();
        let mut rng = fastrand::Rng::with_seed(seed);
        std::fs::write(
            dir.0.join("common.yaml"),
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: memo\nspec:\n  controllerName: {CONTROLLER}\n---\n{}---\n{}---\n{}",
                gateway(&mut rng, "g0"),
                gateway(&mut rng, "g1"),
                gateway(&mut rng, "g2"),
            ),
        )
        .expect("write");
        let mut source = FileSource::default();
        let mut with_objects = FileSource::with_route_objects();
        let mut memo = Memo::default();
        for step in 0..40 {
            let path = dir.0.join(format!("f{}.yaml", rng.u8(0..6)));
            if step > 0 && rng.u8(0..8) == 0 {
                let _ = std::fs::remove_file(&path);
            } else {
                std::fs::write(&path, file_text(&mut rng)).expect("write");
            }
            let (_, errors) = source.load(&dir.0);
            assert!(errors.is_empty(), "seed {seed} step {step}: {errors:?}");
            let changes = source.take_changes();
            let incremental =
                translate_incremental(source.snapshot(), &settings, Some(&changes), &mut memo);
            let full = translate(source.snapshot(), &settings);
            assert_eq!(
                incremental.config, full.config,
                "seed {seed} step {step}, changes {changes:?}"
            );
            assert_eq!(
                incremental.statuses, full.statuses,
                "seed {seed} step {step}, changes {changes:?}"
            );
            with_objects.load(&dir.0);
            let (parsed, typed) = (source.snapshot(), with_objects.snapshot());
            assert!(parsed.http_routes.is_empty() && parsed.tcp_routes.is_empty());
            assert!(typed.parsed_routes.is_empty());
            let from_objects = translate(typed, &settings);
            assert_eq!(full.config, from_objects.config, "seed {seed} step {step}");
            assert_eq!(
                full.statuses, from_objects.statuses,
                "seed {seed} step {step}"
            );
            if step > 0
                && changes
                    .iter()
                    .all(|(kind, _)| super::ROUTE_KINDS.contains(kind))
            {
                incremental_steps += 1;
            }
        }
    }
    assert!(
        incremental_steps >= 100,
        "too few route-only steps to test the memo: {incremental_steps}"
    );
}

/// A route edit re-assembles the rules of the socket the route is on, and
/// hands back the very same rules (the same Arc, which the proxy keeps) for
/// the other sockets, and the other routes' very same statuses; a Service
/// change assembles everything again.
#[test]
fn a_route_edit_rebuilds_only_its_own_socket() {
    let dir = TempDir::new();
    let mut gateways = String::new();
    for (name, port) in [("g0", 8080), ("g1", 8081)] {
        gateways.push_str(&format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  gatewayClassName: memo\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: {port}\n"
        ));
    }
    let route = |name: &str, gateway: &str, path: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  parentRefs:\n  - name: {gateway}\n  rules:\n  - matches:\n    - path:\n        type: PathPrefix\n        value: {path}\n    backendRefs:\n    - name: web\n      port: 80\n"
        )
    };
    let mut rng = fastrand::Rng::with_seed(1);
    std::fs::write(
        dir.0.join("common.yaml"),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: memo\nspec:\n  controllerName: {CONTROLLER}\n{gateways}---\n{}",
            service(&mut rng).replace("name: api", "name: web").replace("port: 8080", "port: 80").replace("namespace: other", "namespace: default")
        ),
    )
    .expect("write");
    std::fs::write(dir.0.join("a.yaml"), route("a", "g0", "/a")).expect("write");
    std::fs::write(dir.0.join("b.yaml"), route("b", "g1", "/b")).expect("write");
    let settings = Settings {
        controller_name: CONTROLLER.into(),
        node_addresses: vec![Ipv4Addr::new(198, 18, 0, 1)],
        usable_addresses: None,
    };
    let mut source = FileSource::default();
    let mut memo = Memo::default();
    let load = |source: &mut FileSource, memo: &mut Memo| {
        source.load(&dir.0);
        let changes = source.take_changes();
        translate_incremental(source.snapshot(), &settings, Some(&changes), memo)
    };
    let route_status = |output: &super::Output, name: &str| {
        let statuses = output.statuses.iter();
        let mut of_route = statuses.filter(|s| s.kind == "HTTPRoute" && s.key.name == name);
        of_route.next().expect("route status").clone()
    };
    let first_output = load(&mut source, &mut memo);
    let first = first_output.config.clone();
    assert_eq!(first.http.len(), 2);
    std::fs::write(dir.0.join("a.yaml"), route("a", "g0", "/a2")).expect("write");
    let second_output = load(&mut source, &mut memo);
    let second = second_output.config.clone();
    assert!(Arc::ptr_eq(
        &route_status(&first_output, "b"),
        &route_status(&second_output, "b")
    ));
    assert!(!Arc::ptr_eq(
        &route_status(&first_output, "a"),
        &route_status(&second_output, "a")
    ));
    assert!(!Arc::ptr_eq(&first.http[0].rules, &second.http[0].rules));
    assert_eq!(
        second.http[0].rules[0].matched.path,
        crate::model::PathMatch::Prefix("/a2".into())
    );
    assert!(Arc::ptr_eq(&first.http[1].rules, &second.http[1].rules));
    // Both listeners' entries (attachedRoutes unchanged) are the same ones.
    let listener_status = |output: &super::Output, gateway: &str| {
        let statuses = output.statuses.iter();
        let mut of_listener = statuses
            .filter(|s| s.kind == "Gateway" && s.key.name == gateway && s.listener.is_some());
        of_listener.next().expect("listener status").clone()
    };
    for gateway in ["g0", "g1"] {
        assert!(Arc::ptr_eq(
            &listener_status(&first_output, gateway),
            &listener_status(&second_output, gateway)
        ));
    }
    // Route a moves to g1: both listeners' attachedRoutes change, both
    // sockets are assembled again, and it equals a full translate.
    std::fs::write(dir.0.join("a.yaml"), route("a", "g1", "/a2")).expect("write");
    let moved = load(&mut source, &mut memo);
    let full = translate(source.snapshot(), &settings);
    assert_eq!(moved.config, full.config);
    assert_eq!(moved.statuses, full.statuses);
    let attached = |gateway: &str| {
        let status = listener_status(&moved, gateway);
        status.listener.as_ref().expect("facts").attached_routes
    };
    assert_eq!((attached("g0"), attached("g1")), (0, 2));
    assert!(moved.config.http[0].rules.is_empty());
    assert_eq!(moved.config.http[1].rules.len(), 2);
    std::fs::write(dir.0.join("a.yaml"), route("a", "g0", "/a2")).expect("write");
    let second_output = load(&mut source, &mut memo);
    let second = second_output.config.clone();
    std::fs::write(
        dir.0.join("a.yaml"),
        format!("{}---\n{}", route("a", "g0", "/a2"), service(&mut rng)),
    )
    .expect("write");
    let third = load(&mut source, &mut memo).config;
    assert!(!Arc::ptr_eq(&second.http[1].rules, &third.http[1].rules));
}
