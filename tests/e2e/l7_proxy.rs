//! HTTPRoute traffic is proxied by the agent to the backend, which sees the
//! original path and Host.

use std::time::Duration;

use gateway_tests::{
    Agent, BACKEND_ADDR, CLIENT_ADDR, GATEWAY_ADDR, TempDir, Topology, class_and_service,
    eventually, http_gateway_and_route, require_root,
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
