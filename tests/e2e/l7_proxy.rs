//! HTTPRoute traffic is proxied by the agent to the backend, which sees the
//! original path and Host.

use std::time::Duration;

use gateway_tests::{
    Agent, BACKEND_ADDR, CLIENT_ADDR, GATEWAY_ADDR, TempDir, Topology, class_and_service,
    eventually, gateway_with, http_gateway_and_route, require_root,
};

#[test]
fn http_is_proxied_with_path_and_host_preserved() {
    if !require_root("http_is_proxied") {
        return;
    }
    let topology = Topology::new();
    let _backend = topology.backend_spawn(&["http-echo", &format!("{BACKEND_ADDR}:8080"), "web-1"]);
    let manifests = TempDir::new();
    manifests.write(
        "all.yaml",
        &(class_and_service("web", 8080, 8080) + &http_gateway_and_route("/app")),
    );
    let agent = Agent::start(&topology, manifests);
    let gateway = format!("{GATEWAY_ADDR}:80");

    let response = eventually("HTTP through the gateway", Duration::from_secs(20), || {
        topology.client_run(&["http-get", &gateway, "/app/items?id=7", "app.example"])
    });
    let lines: Vec<&str> = response.lines().collect();
    assert_eq!(
        lines[0],
        "HTTP/1.1 200 OK",
        "{response}\nagent log:\n{}",
        agent.log()
    );
    for expected in [
        "backend=web-1",
        "method=GET",
        "path=/app/items?id=7",
        "header:host=app.example",
        &format!("header:x-forwarded-for={CLIENT_ADDR}"),
        "header:x-forwarded-proto=http",
    ] {
        assert!(
            lines.contains(&expected),
            "missing {expected:?} in:\n{response}"
        );
    }
    assert!(
        !response.contains("header:connection="),
        "hop-by-hop Connection header must not be forwarded:\n{response}"
    );

    // PathPrefix is segment-aware, and the route answers only for its host.
    let not_found = |path: &str, host: &str| {
        let r = topology
            .client_run(&["http-get", &gateway, path, host])
            .expect("request");
        assert!(r.starts_with("HTTP/1.1 404"), "{host}{path}: {r}");
    };
    not_found("/application", "app.example");
    not_found("/app", "other.example");
}

/// Sends one request from the client namespace; the response as test-peer
/// prints it (status line, "name: value" headers, blank line, body).
fn request(topology: &Topology, method: &str, path: &str, host: &str, headers: &[&str]) -> String {
    let gateway = format!("{GATEWAY_ADDR}:80");
    let mut args = vec!["http-request", &gateway, method, path, host];
    args.extend_from_slice(headers);
    topology
        .client_run(&args)
        .unwrap_or_else(|e| panic!("{method} {host}{path}: {e}"))
}

/// Which backend answered (`backend=NAME` of http-echo), or the status line.
fn served_by(response: &str) -> &str {
    response
        .lines()
        .find_map(|l| l.strip_prefix("backend="))
        .unwrap_or_else(|| response.lines().next().unwrap_or_default())
}

/// Backends v1 (:8081) and v2 (:8082) on the backend namespace, as Services.
fn two_services() -> String {
    class_and_service("v1", 8081, 8081) + "---\n" + &class_and_service("v2", 8082, 8082)
}

#[test]
fn header_query_method_and_regex_matches_pick_the_rule() {
    if !require_root("l7_matches") {
        return;
    }
    let topology = Topology::new();
    let _v1 = topology.backend_spawn(&["http-echo", &format!("{BACKEND_ADDR}:8081"), "v1"]);
    let _v2 = topology.backend_spawn(&["http-echo", &format!("{BACKEND_ADDR}:8082"), "v2"]);
    let route = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: matches, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: ["match.example"]
  rules:
  - matches: [{headers: [{name: Version, value: two}]}]
    backendRefs: [{name: v2, port: 8082}]
  - matches: [{method: POST, path: {type: PathPrefix, value: /m}}]
    backendRefs: [{name: v2, port: 8082}]
  - matches: [{queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: v2, port: 8082}]
  - matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}}]
    backendRefs: [{name: v2, port: 8082}]
  - backendRefs: [{name: v1, port: 8081}]
"#;
    let manifests = TempDir::new();
    manifests.write(
        "all.yaml",
        &(two_services() + &gateway_with("HTTP", 80, route)),
    );
    let agent = Agent::start(&topology, manifests);
    let host = "match.example";
    eventually("the route serves", Duration::from_secs(20), || {
        let r = topology.client_run(&["http-get", &format!("{GATEWAY_ADDR}:80"), "/", host])?;
        if r.contains("backend=v1") {
            Ok(())
        } else {
            Err(r)
        }
    });
    let cases: &[(&str, &str, &[&str], &str)] = &[
        ("GET", "/", &["VERSION:two"], "v2"),
        ("GET", "/", &["Version:one"], "v1"),
        ("POST", "/m/x", &[], "v2"),
        ("GET", "/m/x", &[], "v1"),
        ("POST", "/mx", &[], "v1"),
        ("GET", "/?animal=whale&x=1", &[], "v2"),
        ("GET", "/?animal=whaledolphin", &[], "v1"),
        ("GET", "/re/42", &[], "v2"),
        ("GET", "/re/42x", &[], "v1"),
    ];
    for (method, path, headers, expected) in cases {
        let response = request(&topology, method, path, host, headers);
        assert_eq!(
            served_by(&response),
            *expected,
            "{method} {path} {headers:?}:\n{response}\nagent log:\n{}",
            agent.log()
        );
    }
    let response = request(&topology, "GET", "/", "other.example", &[]);
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");

    // HTTP/2 with prior knowledge on the same port, to an HTTP/1.1 backend:
    // the :authority is the Host that routes and that the backend sees.
    let gateway = format!("{GATEWAY_ADDR}:80");
    let response = topology
        .client_run(&["h2c-get", &gateway, "/re/7", host])
        .expect("an HTTP/2 answer");
    assert!(response.starts_with("HTTP/2.0 200 OK"), "{response}");
    assert_eq!(served_by(&response), "v2", "{response}");
    assert!(response.contains("header:host=match.example"), "{response}");

    // Malformed and oversized requests are refused before routing, and the
    // agent keeps serving.
    let garbage = topology
        .client_run(&["tcp-send", &gateway, "NOT HTTP AT ALL\r\n\r\n"])
        .expect("an answer to garbage");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let many: Vec<String> = (0..150).map(|i| format!("X-H{i}:v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let response = request(&topology, "GET", "/", host, &many);
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    let response = request(&topology, "GET", "/", host, &[]);
    assert_eq!(served_by(&response), "v1", "{response}");
}

#[test]
fn filters_redirect_rewrite_modify_headers_mirror_and_time_out() {
    if !require_root("l7_filters") {
        return;
    }
    let topology = Topology::new();
    let mirror_log = TempDir::new();
    let mirror_file = mirror_log.0.join("mirror.log");
    let mirror_path = mirror_file.to_str().expect("utf-8 path");
    let _v1 = topology.backend_spawn(&["http-echo", &format!("{BACKEND_ADDR}:8081"), "v1"]);
    let _v2 = topology.backend_spawn(&[
        "http-echo-log",
        &format!("{BACKEND_ADDR}:8082"),
        "v2",
        mirror_path,
    ]);
    let _slow = topology.backend_spawn(&[
        "http-echo-delayed",
        &format!("{BACKEND_ADDR}:8083"),
        "slow",
        "1500",
    ]);
    let route = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filters, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: ["filters.example"]
  rules:
  - matches: [{path: {type: PathPrefix, value: /redirect}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /moved}}
  - matches: [{path: {type: PathPrefix, value: /port-redirect}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: elsewhere.example, port: 8080}
  - matches: [{path: {type: PathPrefix, value: /rewrite}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    backendRefs: [{name: v1, port: 8081}]
  - matches: [{path: {type: PathPrefix, value: /headers}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Set, value: set-value}]
        add: [{name: X-Add, value: added}]
        remove: [X-Remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{name: X-Response, value: from-filter}]
        remove: [Content-Type]
    backendRefs:
    - name: v1
      port: 8081
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: X-Backend, value: v1}]}
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: v2, port: 8082}}
    backendRefs: [{name: v1, port: 8081}]
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: slow, port: 8083}]
  - matches: [{path: {type: PathPrefix, value: /patient}}]
    timeouts: {request: 5s}
    backendRefs: [{name: slow, port: 8083}]
  - matches: [{path: {type: PathPrefix, value: /cors}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://*.bar.com"]
        allowMethods: [GET, PUT]
        allowHeaders: [x-header-1]
        exposeHeaders: [x-header-3]
        allowCredentials: true
        maxAge: 600
    backendRefs: [{name: v1, port: 8081}]
  - matches: [{path: {type: PathPrefix, value: /backend-rewrite}}]
    backendRefs:
    - name: v1
      port: 8081
      filters:
      - type: URLRewrite
        urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /rewritten-by-backend-ref}}
  - matches: [{path: {type: PathPrefix, value: /backend-redirect}}]
    backendRefs:
    - name: v1
      port: 8081
      filters:
      - type: RequestRedirect
        requestRedirect: {hostname: backend.example, statusCode: 307}
  - matches: [{path: {type: PathPrefix, value: /extension}}]
    filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Thing, name: t}}]
    backendRefs: [{name: v1, port: 8081}]
"#;
    let manifests = TempDir::new();
    manifests.write(
        "all.yaml",
        &(two_services()
            + "---\n"
            + &class_and_service("slow", 8083, 8083)
            + &gateway_with("HTTP", 80, route)),
    );
    let agent = Agent::start(&topology, manifests);
    let host = "filters.example";
    let log = || agent.log();
    eventually("the route serves", Duration::from_secs(20), || {
        let r =
            topology.client_run(&["http-get", &format!("{GATEWAY_ADDR}:80"), "/rewrite", host])?;
        if r.contains("backend=v1") {
            Ok(())
        } else {
            Err(r)
        }
    });

    let r = request(&topology, "GET", "/redirect/a?q=1", host, &[]);
    assert!(r.starts_with("HTTP/1.1 301"), "{r}\n{}", log());
    assert!(
        r.contains("location: https://filters.example/moved/a?q=1"),
        "{r}"
    );
    let r = request(&topology, "GET", "/port-redirect", host, &[]);
    assert!(r.starts_with("HTTP/1.1 302"), "{r}");
    assert!(
        r.contains("location: http://elsewhere.example:8080/port-redirect"),
        "{r}"
    );

    let r = request(&topology, "GET", "/rewrite/x?y=1", host, &[]);
    assert!(r.contains("path=/new/x?y=1"), "{r}");
    assert!(r.contains("header:host=rewritten.example"), "{r}");
    assert!(r.contains("header:x-forwarded-host=filters.example"), "{r}");

    let r = request(
        &topology,
        "GET",
        "/headers",
        host,
        &["X-Set:original", "X-Add:first", "X-Remove:gone"],
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    for expected in [
        "header:x-set=set-value",
        "header:x-add=first",
        "header:x-add=added",
        "header:x-backend=v1",
        "x-response: from-filter",
    ] {
        assert!(
            r.lines().any(|l| l == expected),
            "missing {expected:?}:\n{r}"
        );
    }
    assert!(!r.contains("header:x-set=original"), "{r}");
    assert!(!r.contains("x-remove"), "{r}");
    assert!(!r.contains("content-type:"), "{r}");

    let r = request(&topology, "GET", "/mirror/copy-me", host, &[]);
    assert_eq!(
        served_by(&r),
        "v1",
        "the original goes to the backendRef:\n{r}"
    );
    let r = request(
        &topology,
        "POST",
        "/mirror/with-body",
        host,
        &["body=the request body"],
    );
    assert_eq!(served_by(&r), "v1", "{r}");
    assert!(r.contains("header:content-length=16"), "{r}");
    eventually("the mirror receives copies", Duration::from_secs(5), || {
        let seen = std::fs::read_to_string(&mirror_file).map_err(|e| e.to_string())?;
        let lines: Vec<&str> = seen.lines().collect();
        if lines.contains(&"GET /mirror/copy-me")
            && lines.contains(&"POST /mirror/with-body body=the request body")
        {
            Ok(())
        } else {
            Err(seen)
        }
    });

    let r = request(&topology, "GET", "/slow", host, &[]);
    assert!(r.starts_with("HTTP/1.1 504"), "{r}");
    let r = request(&topology, "GET", "/patient", host, &[]);
    assert_eq!(served_by(&r), "slow", "{r}");

    // CORS: the gateway answers preflights, and adds the headers to answers
    // of allowed origins only.
    let r = request(
        &topology,
        "OPTIONS",
        "/cors",
        host,
        &[
            "Origin:https://www.bar.com",
            "Access-Control-Request-Method:PUT",
        ],
    );
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    for expected in [
        "access-control-allow-origin: https://www.bar.com",
        "access-control-allow-methods: GET, PUT",
        "access-control-allow-headers: x-header-1",
        "access-control-allow-credentials: true",
        "access-control-max-age: 600",
    ] {
        assert!(
            r.lines().any(|l| l == expected),
            "missing {expected:?}:\n{r}"
        );
    }
    let r = request(
        &topology,
        "GET",
        "/cors",
        host,
        &["Origin:https://a.bar.com"],
    );
    assert_eq!(served_by(&r), "v1", "{r}");
    assert!(
        r.contains("access-control-allow-origin: https://a.bar.com"),
        "{r}"
    );
    assert!(
        r.contains("access-control-expose-headers: x-header-3"),
        "{r}"
    );
    let r = request(
        &topology,
        "GET",
        "/cors",
        host,
        &["Origin:https://foobar.com"],
    );
    assert_eq!(served_by(&r), "v1", "{r}");
    assert!(!r.contains("access-control-"), "{r}");

    // Filters on a backendRef apply to the requests sent to that backend.
    let r = request(&topology, "GET", "/backend-rewrite/x", host, &[]);
    assert!(r.contains("path=/rewritten-by-backend-ref"), "{r}");
    let r = request(&topology, "GET", "/backend-redirect", host, &[]);
    assert!(r.starts_with("HTTP/1.1 307"), "{r}");
    assert!(
        r.contains("location: http://backend.example/backend-redirect"),
        "{r}"
    );

    let r = request(&topology, "GET", "/extension", host, &[]);
    assert!(
        r.starts_with("HTTP/1.1 500"),
        "unsupported filter answers 500:\n{r}"
    );
}

#[test]
fn upgraded_connections_are_spliced_to_the_backend() {
    if !require_root("l7_upgrade") {
        return;
    }
    let topology = Topology::new();
    let _ws = topology.backend_spawn(&["upgrade-echo", &format!("{BACKEND_ADDR}:8085")]);
    let route = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ws, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: ["ws.example"]
  rules:
  - backendRefs: [{name: ws, port: 8085}]
"#;
    let manifests = TempDir::new();
    manifests.write(
        "all.yaml",
        &(class_and_service("ws", 8085, 8085) + &gateway_with("HTTP", 80, route)),
    );
    let agent = Agent::start(&topology, manifests);
    let gateway = format!("{GATEWAY_ADDR}:80");
    let reply = eventually("an upgraded connection", Duration::from_secs(20), || {
        let r = topology.client_run(&[
            "upgrade-send",
            &gateway,
            "ws.example",
            "/chat",
            "hello over the upgrade",
        ])?;
        if r.starts_with("HTTP/1.1 101") {
            Ok(r)
        } else {
            Err(r)
        }
    });
    assert!(
        reply.lines().any(|l| l == "hello over the upgrade"),
        "{reply}\nagent log:\n{}",
        agent.log()
    );
}

/// Standalone mode drains like cluster mode: on SIGTERM the request in
/// flight is answered, and the agent exits as soon as it is, well before
/// `--drain-seconds`.
#[test]
fn standalone_sigterm_drains_the_request_in_flight_then_exits() {
    if !require_root("standalone_sigterm_drains") {
        return;
    }
    const DELAY_MS: u64 = 1500;
    const DRAIN_SECONDS: u64 = 30;
    let topology = Topology::new();
    let _backend = topology.backend_spawn(&[
        "http-echo-delayed",
        &format!("{BACKEND_ADDR}:8080"),
        "web-1",
        &DELAY_MS.to_string(),
    ]);
    let manifests = TempDir::new();
    manifests.write(
        "all.yaml",
        &(class_and_service("web", 8080, 8080) + &http_gateway_and_route("/app")),
    );
    let mut agent = Agent::start_with(
        &topology,
        manifests,
        &["--drain-seconds", &DRAIN_SECONDS.to_string()],
    );
    let gateway = format!("{GATEWAY_ADDR}:80");
    let get = || topology.client_run(&["http-get", &gateway, "/app/slow", "app.example"]);
    eventually("HTTP through the gateway", Duration::from_secs(30), || {
        get().and_then(|r| {
            if r.starts_with("HTTP/1.1 200") {
                Ok(())
            } else {
                Err(r)
            }
        })
    });

    // The request reaches the backend, which holds it for DELAY_MS.
    let (response, exited) = agent
        .process
        .sigterm_during(Duration::from_secs(DRAIN_SECONDS + 10), get);
    let response =
        response.unwrap_or_else(|e| panic!("request in flight at SIGTERM: {e}\n{}", agent.log()));
    assert!(
        response.starts_with("HTTP/1.1 200") && response.contains("backend=web-1"),
        "request in flight at SIGTERM: {response}\n{}",
        agent.log()
    );
    let (status, after) = exited.unwrap_or_else(|| panic!("agent still running\n{}", agent.log()));
    eprintln!("agent exited {after:?} after SIGTERM ({status})");
    assert!(status.success(), "exit status {status}\n{}", agent.log());
    // It waited for the request (about 1.1 s left of it), not for the deadline.
    assert!(
        after >= Duration::from_millis(500),
        "exited {after:?} after SIGTERM: did not wait for the request\n{}",
        agent.log()
    );
    assert!(
        after < Duration::from_secs(DRAIN_SECONDS / 2),
        "exited {after:?} after SIGTERM: waited for the deadline\n{}",
        agent.log()
    );
    assert!(agent.log().contains("draining HTTP"), "{}", agent.log());
    // Nothing accepts any more: a new request finds no listener.
    assert!(get().is_err(), "the gateway still answers after exiting");
}
