use hyper::header::HeaderValue;

use super::*;
use crate::model::{HttpAction, HttpTimeouts, NameValueMatch, RouteRef};

fn rule(name: &str, hosts: &[&str], matched: HttpMatch) -> HttpRule {
    HttpRule {
        route: RouteRef {
            kind: "HTTPRoute",
            namespace: "ns".into(),
            name: name.into(),
            rule: 0,
        },
        hostnames: hosts.iter().map(|h| h.to_string()).collect(),
        listener_hostname: None,
        matched: Arc::new(matched),
        action: Arc::new(HttpAction {
            filters: Arc::default(),
            timeouts: HttpTimeouts::default(),
            retry: None,
            backends: Arc::new([]),
            invalid_weight: 0,
        }),
    }
}

fn path(p: PathMatch) -> HttpMatch {
    HttpMatch {
        path: p,
        ..HttpMatch::any()
    }
}

fn exact(name: &str, value: &str) -> NameValueMatch {
    NameValueMatch {
        name: name.into(),
        value: ValueMatch::Exact(value.into()),
    }
}

fn regex(name: &str, value: &str) -> NameValueMatch {
    NameValueMatch {
        name: name.into(),
        value: ValueMatch::RegularExpression(value.into()),
    }
}

/// The name of the rule `table` picks for a request.
fn pick(
    table: &RouteTable,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    table
        .find(&RequestView {
            host,
            path,
            query,
            method,
            headers: &map,
        })
        .map(|r| r.route.name.to_string())
}

#[test]
fn prefix_matching_respects_segments() {
    assert!(prefix_matches("/foo", "/foo"));
    assert!(prefix_matches("/foo", "/foo/bar"));
    assert!(!prefix_matches("/foo", "/foobar"));
    assert!(prefix_matches("/foo/", "/foo/bar"));
    assert!(prefix_matches("/", "/anything"));
}

#[test]
fn exact_host_beats_wildcard_and_wildcard_beats_any() {
    let table = RouteTable::new(vec![
        rule("any", &[], HttpMatch::any()),
        rule("wild", &["*.example.com"], HttpMatch::any()),
        rule("exact", &["a.example.com"], HttpMatch::any()),
    ]);
    let host = |h: &str| pick(&table, "GET", h, "/", &[]).unwrap();
    assert_eq!(host("a.example.com:8080"), "exact");
    assert_eq!(host("B.example.com"), "wild");
    assert_eq!(host("x.y.example.com"), "wild");
    assert_eq!(host("example.com"), "any");
}

#[test]
fn exact_and_regular_expression_paths_match_the_whole_path() {
    let table = RouteTable::new(vec![
        rule("exact", &[], path(PathMatch::Exact("/a".into()))),
        rule(
            "regex",
            &[],
            path(PathMatch::RegularExpression("/v[0-9]+/items".into())),
        ),
    ]);
    assert_eq!(
        pick(&table, "GET", "h", "/a", &[]).as_deref(),
        Some("exact")
    );
    assert_eq!(pick(&table, "GET", "h", "/a/", &[]), None);
    assert_eq!(
        pick(&table, "GET", "h", "/v12/items?x=1", &[]).as_deref(),
        Some("regex")
    );
    assert_eq!(pick(&table, "GET", "h", "/v12/items/more", &[]), None);
    assert_eq!(pick(&table, "GET", "h", "/x/v1/items", &[]), None);
}

#[test]
fn header_names_are_case_insensitive_and_values_exact_or_regex() {
    // The rows of the HTTPRouteHeaderMatching conformance test, in translate's order.
    let with = |name: &str, headers: Vec<NameValueMatch>| {
        rule(
            name,
            &[],
            HttpMatch {
                headers,
                ..HttpMatch::any()
            },
        )
    };
    let table = RouteTable::new(vec![
        with(
            "v1",
            vec![exact("version", "two"), exact("color", "orange")],
        ),
        with("v2", vec![exact("version", "two"), exact("color", "blue")]),
        with("v1", vec![exact("version", "one")]),
        with("v2", vec![exact("version", "two")]),
        with("v1", vec![regex("color", "(green|blue)")]),
        with("v2", vec![regex("color", "red|yellow")]),
    ]);
    let by = |headers: &[(&str, &str)]| pick(&table, "GET", "h", "/", headers);
    assert_eq!(by(&[("Version", "one")]).as_deref(), Some("v1"));
    assert_eq!(by(&[("Version", "two")]).as_deref(), Some("v2"));
    assert_eq!(
        by(&[("Version", "two"), ("Color", "orange")]).as_deref(),
        Some("v1")
    );
    assert_eq!(
        by(&[("version", "two"), ("COLOR", "blue")]).as_deref(),
        Some("v2")
    );
    assert_eq!(by(&[("Color", "orange")]), None);
    assert_eq!(by(&[("Some-Other-Header", "one")]), None);
    assert_eq!(by(&[("Color", "green")]).as_deref(), Some("v1"));
    assert_eq!(by(&[("Color", "yellow")]).as_deref(), Some("v2"));
    // A regex matches the whole value, not a part of it.
    assert_eq!(by(&[("Color", "purple")]), None);
    assert_eq!(by(&[("Color", "reddish")]), None);
    // Header values are compared exactly (case-sensitive).
    assert_eq!(by(&[("Version", "ONE")]), None);
}

#[test]
fn query_params_are_exact_by_name_and_the_first_occurrence_counts() {
    let with = |name: &str, query_params: Vec<NameValueMatch>| {
        rule(
            name,
            &[],
            HttpMatch {
                query_params,
                ..HttpMatch::any()
            },
        )
    };
    let table = RouteTable::new(vec![
        with(
            "v3",
            vec![exact("animal", "dolphin"), exact("color", "blue")],
        ),
        with("v3", vec![exact("ANIMAL", "Whale")]),
        with("v1", vec![exact("animal", "whale")]),
        with("v2", vec![exact("animal", "dolphin")]),
        with("v4", vec![regex("id", "[0-9]+")]),
    ]);
    let at = |target: &str| pick(&table, "GET", "h", target, &[]);
    assert_eq!(at("/?animal=whale").as_deref(), Some("v1"));
    assert_eq!(at("/?animal=dolphin").as_deref(), Some("v2"));
    assert_eq!(at("/?animal=dolphin&color=blue").as_deref(), Some("v3"));
    assert_eq!(at("/?ANIMAL=Whale").as_deref(), Some("v3"));
    assert_eq!(
        at("/?animal=whale&otherparam=irrelevant").as_deref(),
        Some("v1")
    );
    assert_eq!(at("/?animal=whale&animal=dolphin").as_deref(), Some("v1"));
    assert_eq!(at("/?color=blue"), None);
    assert_eq!(at("/?animal=whaledolphin"), None);
    assert_eq!(at("/"), None);
    // Values are percent-decoded before comparing.
    assert_eq!(at("/?animal=wh%61le").as_deref(), Some("v1"));
    assert_eq!(at("/?id=42").as_deref(), Some("v4"));
    assert_eq!(at("/?id=42a"), None);
}

#[test]
fn methods_must_be_equal() {
    let table = RouteTable::new(vec![
        rule(
            "post",
            &[],
            HttpMatch {
                method: Some("POST".into()),
                ..HttpMatch::any()
            },
        ),
        rule(
            "get",
            &[],
            HttpMatch {
                method: Some("GET".into()),
                ..HttpMatch::any()
            },
        ),
    ]);
    assert_eq!(pick(&table, "POST", "h", "/", &[]).as_deref(), Some("post"));
    assert_eq!(pick(&table, "GET", "h", "/", &[]).as_deref(), Some("get"));
    assert_eq!(pick(&table, "HEAD", "h", "/", &[]), None);
}

#[test]
fn a_regex_that_does_not_compile_never_matches() {
    let table = RouteTable::new(vec![
        rule(
            "broken",
            &[],
            path(PathMatch::RegularExpression("/(".into())),
        ),
        rule("fallback", &[], HttpMatch::any()),
    ]);
    assert_eq!(
        pick(&table, "GET", "h", "/(", &[]).as_deref(),
        Some("fallback")
    );
}

#[test]
fn lookup_cost_does_not_grow_with_other_hosts_routes() {
    // 10 000 hosts with one rule each: the lookup only looks at its own host's rules.
    let mut rules: Vec<HttpRule> = (0..10_000)
        .map(|i| {
            rule(
                &format!("r{i}"),
                &[&format!("h{i}.example")],
                path(PathMatch::Exact("/x".into())),
            )
        })
        .collect();
    rules.push(rule("target", &["target.example"], HttpMatch::any()));
    let table = RouteTable::new(rules);
    assert_eq!(table.exact["target.example"].len(), 1);
    assert_eq!(
        pick(&table, "GET", "target.example", "/x", &[]).as_deref(),
        Some("target")
    );
    assert_eq!(
        pick(&table, "GET", "h7.example", "/x", &[]).as_deref(),
        Some("r7")
    );
    assert_eq!(pick(&table, "GET", "h7.example", "/y", &[]), None);
}

#[test]
fn a_request_no_rule_of_its_exact_host_matches_falls_back_to_wildcard_and_any() {
    let table = RouteTable::new(vec![
        rule(
            "exact",
            &["a.example.com"],
            path(PathMatch::Exact("/x".into())),
        ),
        rule(
            "wild",
            &["*.example.com"],
            path(PathMatch::Exact("/y".into())),
        ),
        rule("any", &[], path(PathMatch::Exact("/z".into()))),
    ]);
    let at = |p: &str| pick(&table, "GET", "a.example.com", p, &[]);
    assert_eq!(at("/x").as_deref(), Some("exact"));
    assert_eq!(at("/y").as_deref(), Some("wild"));
    assert_eq!(at("/z").as_deref(), Some("any"));
    assert_eq!(at("/w"), None);
}

#[test]
fn only_the_most_specific_listener_serves_a_host() {
    // GatewayHTTPListenerIsolation: four listeners on one port.
    let on = |name: &str, listener: Option<&str>| HttpRule {
        listener_hostname: listener.map(str::to_string),
        ..rule(
            name,
            &listener.into_iter().collect::<Vec<_>>(),
            path(PathMatch::Prefix(format!("/{name}"))),
        )
    };
    let table = RouteTable::new(vec![
        on("empty", None),
        on("wild", Some("*.example.com")),
        on("wildfoo", Some("*.foo.example.com")),
        on("abc", Some("abc.foo.example.com")),
    ]);
    for (host, served) in [
        ("bar.com", "empty"),
        ("bar.example.com", "wild"),
        ("bar.foo.example.com", "wildfoo"),
        ("abc.foo.example.com", "abc"),
    ] {
        for name in ["empty", "wild", "wildfoo", "abc"] {
            let got = pick(&table, "GET", host, &format!("/{name}"), &[]);
            let expected = (name == served).then(|| name.to_string());
            assert_eq!(got, expected, "{host}/{name}");
        }
    }
}

#[test]
fn a_host_of_another_listener_than_the_sni_is_misdirected() {
    // GatewayHTTPSListenerDetectMisdirectedRequests: one catch-all listener,
    // an exact one and a wildcard one; a fourth listener has no rule yet.
    let on = |name: &str, listener: Option<&str>| HttpRule {
        listener_hostname: listener.map(str::to_string),
        ..rule(name, &[], path(PathMatch::Prefix("/".into())))
    };
    let table = RouteTable::new(vec![
        on("any", None),
        on("second", Some("second.example.org")),
        on("wild", Some("*.wildcard.org")),
    ])
    .with_listener_hostnames(["fourth.wildcard.org"]);
    for (sni, host, misdirected) in [
        ("example.org", "example.org", false),
        ("example.org", "unknown.org", false),
        ("example.org", "second.example.org", true),
        ("second.example.org", "SECOND.example.org:443", false),
        ("second.example.org", "example.org", true),
        ("a.wildcard.org", "b.wildcard.org", false),
        ("a.wildcard.org", "fourth.wildcard.org", true),
        ("fourth.wildcard.org", "a.wildcard.org", true),
    ] {
        assert_eq!(table.misdirected(sni, host), misdirected, "{sni} {host}");
    }
}

#[test]
fn each_regular_expression_of_a_match_is_checked_against_its_own_condition() {
    // Path, header and query regular expressions in one match, around exact
    // conditions: each condition must use its own compiled expression.
    let matched = HttpMatch {
        path: PathMatch::RegularExpression("/api/[a-z]+".into()),
        headers: vec![exact("x-env", "prod"), regex("x-id", "[0-9]+")],
        query_params: vec![regex("page", "[a-c]"), exact("lang", "en")],
        ..HttpMatch::any()
    };
    let table = RouteTable::new(vec![rule("all", &[], matched)]);
    let headers = [("x-env", "prod"), ("x-id", "42")];
    let pick_with =
        |target: &str, headers: &[(&str, &str)]| pick(&table, "GET", "h", target, headers);
    assert_eq!(
        pick_with("/api/items?page=b&lang=en", &headers).as_deref(),
        Some("all")
    );
    assert_eq!(pick_with("/api/42?page=b&lang=en", &headers), None);
    assert_eq!(
        pick_with(
            "/api/items?page=b&lang=en",
            &[("x-env", "prod"), ("x-id", "a")]
        ),
        None
    );
    assert_eq!(pick_with("/api/items?page=42&lang=en", &headers), None);
    assert_eq!(pick_with("/api/items?page=b&lang=fr", &headers), None);
}

#[test]
fn the_port_is_stripped_from_hosts_and_bracketed_addresses() {
    for (host, stripped) in [
        ("bench.example", "bench.example"),
        ("bench.example:8080", "bench.example"),
        ("10.0.0.1:80", "10.0.0.1"),
        ("[::1]:80", "::1"),
        ("[::1]", "::1"),
        ("", ""),
        (":80", ""),
    ] {
        assert_eq!(strip_port(host), stripped, "{host}");
    }
}
