//! HTTPRoute/GRPCRoute rules from YAML fixtures: precedence, filters,
//! timeouts, backend protocols.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use crate::model::{
    BackendProtocol, HeaderModifier, HttpFilters, HttpRule, PathMatch, PathModifier,
    RequestRedirect, UrlRewrite,
};
use crate::source::file::load_str;
use crate::store::Snapshot;
use crate::translate::{Output, Settings, translate};

/// A class, a Gateway with an HTTP listener, and Services `v1`..`v3`
/// (v3's port speaks h2c) with one ready endpoint each.
fn base() -> String {
    let mut yaml = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: ours}\n\
         spec: {controllerName: test/controller}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\n\
         spec:\n  gatewayClassName: ours\n  addresses: [{value: 192.0.2.1}]\n\
         \x20 listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}]\n",
    );
    for (i, app_protocol) in [(1, ""), (2, ""), (3, ", appProtocol: kubernetes.io/h2c")] {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: v{i}, namespace: default}}\n\
             spec: {{ports: [{{name: http, port: 80{app_protocol}}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: v{i}-1, namespace: default, labels: {{kubernetes.io/service-name: v{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [\"10.0.0.{i}\"]}}]\n"
        ));
    }
    yaml
}

fn run(routes: &str) -> Output {
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    load_str(
        Path::new("fixture.yaml"),
        &format!("{}{routes}", base()),
        &mut snapshot,
        &mut errors,
    );
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

fn rules(out: &Output) -> &[HttpRule] {
    &out.config.http[0].rules
}

/// The backend Service of each rule, in precedence order (`v1` for 10.0.0.1).
fn order(out: &Output) -> Vec<String> {
    rules(out)
        .iter()
        .map(|r| match r.backends.first() {
            Some(b) => format!("v{}", b.addr.ip().to_string().rsplit('.').next().unwrap()),
            None => "none".into(),
        })
        .collect()
}

fn http_route(name: &str, created: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\n\
         spec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{rules}"
    )
}

#[test]
fn precedence_is_path_then_method_then_headers_then_query_params() {
    let route = http_route(
        "r",
        "2024-01-01T00:00:00Z",
        "  - matches: [{path: {type: PathPrefix, value: /}, queryParams: [{name: a, value: b}]}]\n\
         \x20   backendRefs: [{name: v3, port: 80}]\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /}, headers: [{name: a, value: b}]}]\n\
         \x20   backendRefs: [{name: v2, port: 80}]\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /}, method: POST}]\n\
         \x20   backendRefs: [{name: v1, port: 80}]\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /long}}]\n\
         \x20   backendRefs: [{name: v2, port: 80}]\n\
         \x20 - matches: [{path: {type: Exact, value: /}}]\n\
         \x20   backendRefs: [{name: v3, port: 80}]\n",
    );
    let out = run(&route);
    assert_eq!(order(&out), ["v3", "v2", "v1", "v2", "v3"]);
    let paths: Vec<&PathMatch> = rules(&out).iter().map(|r| &r.matched.path).collect();
    assert_eq!(paths[0], &PathMatch::Exact("/".into()));
    assert_eq!(paths[1], &PathMatch::Prefix("/long".into()));
    assert_eq!(rules(&out)[2].matched.method.as_deref(), Some("POST"));
    assert_eq!(rules(&out)[3].matched.headers[0].name, "a");
    assert_eq!(rules(&out)[4].matched.query_params[0].name, "a");
}

#[test]
fn equal_matches_across_routes_go_to_the_oldest_then_by_name() {
    let rule = |svc: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: /}}, headers: [{{name: Version, value: one}}]}}]\n\
             \x20   backendRefs: [{{name: {svc}, port: 80}}]\n"
        )
    };
    let out = run(&format!(
        "{}{}{}",
        http_route("b-newer", "2024-02-01T00:00:00Z", &rule("v3")),
        http_route("c-older", "2024-01-01T00:00:00Z", &rule("v1")),
        http_route("a-newer", "2024-02-01T00:00:00Z", &rule("v2")),
    ));
    assert_eq!(order(&out), ["v1", "v2", "v3"]);
    // Header names compare case-insensitively: translate lower-cases them.
    assert_eq!(rules(&out)[0].matched.headers[0].name, "version");
}

#[test]
fn filters_of_rules_and_backend_refs_are_translated() {
    let out = run(&http_route(
        "r",
        "2024-01-01T00:00:00Z",
        "  - matches: [{path: {type: PathPrefix, value: /redirect}}]\n\
         \x20   filters:\n\
         \x20   - type: RequestRedirect\n\
         \x20     requestRedirect: {scheme: https, hostname: example.org, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /rewrite}}]\n\
         \x20   filters:\n\
         \x20   - type: URLRewrite\n\
         \x20     urlRewrite: {hostname: rewritten.example, path: {type: ReplaceFullPath, replaceFullPath: /full}}\n\
         \x20   - type: RequestHeaderModifier\n\
         \x20     requestHeaderModifier: {set: [{name: X-Set, value: s}], add: [{name: X-Add, value: a}], remove: [X-Remove]}\n\
         \x20   - type: RequestMirror\n\
         \x20     requestMirror: {backendRef: {name: v2, port: 80}, percent: 20}\n\
         \x20   backendRefs:\n\
         \x20   - name: v1\n\
         \x20     port: 80\n\
         \x20     filters:\n\
         \x20     - type: ResponseHeaderModifier\n\
         \x20       responseHeaderModifier: {add: [{name: X-Backend, value: v1}]}\n\
         \x20   timeouts: {request: 500ms, backendRequest: 2s}\n",
    ));
    // "/redirect" is the longer prefix: it comes first.
    let redirect = &rules(&out)[0];
    assert_eq!(redirect.matched.path, PathMatch::Prefix("/redirect".into()));
    assert_eq!(
        redirect.filters.redirect,
        Some(RequestRedirect {
            scheme: Some("https".into()),
            hostname: Some("example.org".into()),
            port: None,
            path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
            status: 301,
        })
    );
    // A redirect rule needs no backends and does not answer 500.
    assert_eq!(redirect.invalid_weight, 0);

    let rewrite = &rules(&out)[1];
    assert_eq!(
        rewrite.filters.rewrite,
        Some(UrlRewrite {
            hostname: Some("rewritten.example".into()),
            path: Some(PathModifier::ReplaceFullPath("/full".into())),
        })
    );
    assert_eq!(
        rewrite.filters.request_headers,
        Some(HeaderModifier {
            set: vec![("x-set".into(), "s".into())],
            add: vec![("x-add".into(), "a".into())],
            remove: vec!["x-remove".into()],
        })
    );
    let mirror = &rewrite.filters.mirrors[0];
    assert_eq!((mirror.numerator, mirror.denominator), (20, 100));
    assert_eq!(mirror.backends[0].addr, "10.0.0.2:8080".parse().unwrap());
    assert_eq!(
        rewrite.backends[0].filters.response_headers,
        Some(HeaderModifier {
            add: vec![("x-backend".into(), "v1".into())],
            ..HeaderModifier::default()
        })
    );
    assert_eq!(rewrite.timeouts.request, Some(Duration::from_millis(500)));
    assert_eq!(
        rewrite.timeouts.backend_request,
        Some(Duration::from_secs(2))
    );
}

#[test]
fn unsupported_filters_and_missing_backend_refs_answer_500() {
    let out = run(&http_route(
        "r",
        "2024-01-01T00:00:00Z",
        "  - matches: [{path: {type: PathPrefix, value: /ext}}]\n\
         \x20   filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Thing, name: t}}]\n\
         \x20   backendRefs: [{name: v1, port: 80}]\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /nothing}}]\n",
    ));
    for rule in rules(&out) {
        assert!(rule.backends.is_empty(), "{rule:?}");
        assert_eq!(rule.invalid_weight, 1, "{rule:?}");
    }
    let resolved = out
        .statuses
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "ResolvedRefs")
        .expect("a ResolvedRefs condition");
    assert!(!resolved.status);
    assert_eq!(resolved.reason, "UnsupportedValue");
}

#[test]
fn h2c_app_protocol_selects_http2_to_the_backend() {
    let out = run(&http_route(
        "r",
        "2024-01-01T00:00:00Z",
        "  - backendRefs: [{name: v1, port: 80}, {name: v3, port: 80}]\n",
    ));
    let protocols: Vec<BackendProtocol> =
        rules(&out)[0].backends.iter().map(|b| b.protocol).collect();
    assert_eq!(protocols, [BackendProtocol::Http1, BackendProtocol::H2c]);
}

#[test]
fn grpc_routes_match_on_the_method_path_in_grpc_precedence() {
    let grpc = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
        metadata: {name: g, namespace: default}\n\
        spec:\n  parentRefs: [{name: gw}]\n  rules:\n\
        \x20 - matches: [{method: {service: pkg.Echo}}]\n\
        \x20   backendRefs: [{name: v1, port: 80}]\n\
        \x20 - matches: [{method: {service: pkg.Echo, method: EchoTwo}}]\n\
        \x20   backendRefs: [{name: v2, port: 80}]\n\
        \x20 - matches: [{method: {method: Three}, headers: [{name: X-Kind, value: a}]}]\n\
        \x20   backendRefs: [{name: v3, port: 80}]\n\
        \x20 - matches: [{method: {type: RegularExpression, service: \"pkg\\\\..*\", method: \"Ec.*\"}}]\n\
        \x20   backendRefs: [{name: v3, port: 80}]\n";
    let out = run(grpc);
    let paths: Vec<&PathMatch> = rules(&out).iter().map(|r| &r.matched.path).collect();
    assert_eq!(
        paths,
        [
            &PathMatch::Exact("/pkg.Echo/EchoTwo".into()),
            &PathMatch::Prefix("/pkg.Echo".into()),
            &PathMatch::RegularExpression("/(?:pkg\\..*)/(?:Ec.*)".into()),
            &PathMatch::RegularExpression("/[^/]+/Three".into()),
        ]
    );
    assert_eq!(rules(&out)[3].matched.headers[0].name, "x-kind");
    // gRPC always goes to the backend over HTTP/2.
    assert!(
        rules(&out)
            .iter()
            .flat_map(|r| r.backends.iter())
            .all(|b| b.protocol == BackendProtocol::H2c)
    );
    let accepted = out
        .statuses
        .iter()
        .find(|s| s.kind == "GRPCRoute")
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"))
        .expect("GRPCRoute status");
    assert!(accepted.status, "{accepted:?}");
}

#[test]
fn invalid_regexes_and_unresolvable_mirrors_are_reported() {
    let out = run(&http_route(
        "r",
        "2024-01-01T00:00:00Z",
        "  - matches: [{path: {type: RegularExpression, value: \"/(unclosed\"}}]\n\
         \x20   backendRefs: [{name: v1, port: 80}]\n",
    ));
    assert_eq!(rules(&out)[0].invalid_weight, 1);
    let out_redirect = run(&http_route(
        "r",
        "2024-01-01T00:00:00Z",
        "  - matches: [{path: {type: RegularExpression, value: \"/(unclosed\"}}]\n\
         \x20   filters: [{type: RequestRedirect, requestRedirect: {hostname: x.example}}]\n",
    ));
    // Its other filters do not run either: the rule only answers 500.
    assert_eq!(*rules(&out_redirect)[0].filters, HttpFilters::default());
    assert_eq!(rules(&out_redirect)[0].invalid_weight, 1);
    let condition = |out: &Output| {
        out.statuses
            .iter()
            .flat_map(|s| &s.conditions)
            .find(|c| c.type_ == "ResolvedRefs")
            .cloned()
            .expect("a ResolvedRefs condition")
    };
    assert_eq!(condition(&out).reason, "UnsupportedValue");

    let out = run(&http_route(
        "r",
        "2024-01-01T00:00:00Z",
        "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: missing, port: 80}}}]\n\
         \x20   backendRefs: [{name: v1, port: 80}]\n",
    ));
    assert_eq!(condition(&out).reason, "BackendNotFound");
    // The rule itself still serves; the mirror copies nothing.
    assert_eq!(rules(&out)[0].backends.len(), 1);
    assert!(rules(&out)[0].filters.mirrors.is_empty());
}

#[test]
fn retry_is_read_bounded_and_a_bad_code_makes_the_rule_answer_500() {
    let out = run(&http_route(
        "retry",
        "2024-01-01T00:00:00Z",
        "  - matches: [{path: {type: PathPrefix, value: /listed}}]\n\
         \x20   retry: {codes: [500, 503], attempts: 3, backoff: 100ms}\n\
         \x20   backendRefs: [{name: v1, port: 80}]\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /many}}]\n\
         \x20   retry: {attempts: 1000}\n\
         \x20   backendRefs: [{name: v1, port: 80}]\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /bad}}]\n\
         \x20   retry: {codes: [200]}\n\
         \x20   backendRefs: [{name: v1, port: 80}]\n",
    ));
    let by_path = |p: &str| {
        rules(&out)
            .iter()
            .find(|r| r.matched.path == PathMatch::Prefix(p.into()))
            .unwrap_or_else(|| panic!("no rule for {p}"))
    };
    assert_eq!(
        by_path("/listed").retry,
        Some(Box::new(crate::model::HttpRetry {
            attempts: 3,
            codes: vec![500, 503],
            backoff: Some(Duration::from_millis(100)),
        }))
    );
    assert_eq!(
        by_path("/many").retry.as_ref().map(|r| r.attempts),
        Some(10)
    );
    let bad = by_path("/bad");
    assert_eq!((bad.retry.clone(), bad.invalid_weight), (None, 1));
}
