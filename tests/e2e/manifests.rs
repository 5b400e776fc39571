//! Standalone mode: a malformed manifest is reported with its file and line
//! while the valid routes keep serving, and edits apply without a restart.

use std::time::Duration;

use gateway_tests::{
    Agent, BACKEND_ADDR, GATEWAY_ADDR, TempDir, Topology, class_and_service, eventually,
    http_gateway_and_route, require_root,
};

const BAD_GATEWAY_YAML: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: broken
  namespace: default
spec:
  gatewayClassName: gwt
  listeners:
  - name: http
    protocol: HTTP
    port: eighty
";

#[test]
fn a_bad_manifest_names_file_and_line_and_valid_routes_keep_serving() {
    if !require_root("a_bad_manifest_names_file_and_line") {
        return;
    }
    let topology = Topology::new();
    let _backend = topology.backend_spawn(&["http-echo", &format!("{BACKEND_ADDR}:8080"), "web-1"]);
    let manifests = TempDir::new();
    manifests.write("base.yaml", &class_and_service("web", 8080, 8080));
    manifests.write("routes.yaml", &http_gateway_and_route("/app"));
    manifests.write("broken.yaml", BAD_GATEWAY_YAML);
    let dir = manifests.0.clone();
    let agent = Agent::start(&topology, manifests);
    let gateway = format!("{GATEWAY_ADDR}:80");
    let get = |path: &str| topology.client_run(&["http-get", &gateway, path, "app.example"]);
    let ok = |r: Result<String, String>| match r {
        Ok(r) if r.starts_with("HTTP/1.1 200") => Ok(r),
        other => Err(format!("{other:?}")),
    };

    eventually("the valid route serves", Duration::from_secs(20), || {
        ok(get("/app/1"))
    });
    let expected = format!("{}:11:", dir.join("broken.yaml").display());
    eventually(
        "the error names file and line",
        Duration::from_secs(5),
        || {
            let log = agent.log();
            if log.contains(&expected) {
                Ok(())
            } else {
                Err(log)
            }
        },
    );

    // An edit is served without a restart: the route moves to /v2.
    std::fs::write(dir.join("routes.yaml"), http_gateway_and_route("/v2")).expect("edit");
    eventually("the edited route serves", Duration::from_secs(10), || {
        ok(get("/v2/x"))
    });
    let old = get("/app/1").expect("request");
    assert!(
        old.starts_with("HTTP/1.1 404"),
        "the old path is gone: {old}"
    );

    // Breaking a file keeps its last good version serving.
    std::fs::write(
        dir.join("routes.yaml"),
        "kind: HTTPRoute\napiVersion: gateway.networking.k8s.io/v1\nmetadata: [\n",
    )
    .expect("break");
    let routes_error = format!("{}:", dir.join("routes.yaml").display());
    eventually(
        "the broken edit is reported",
        Duration::from_secs(10),
        || {
            let log = agent.log();
            if log.contains(&routes_error) {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    let still = get("/v2/x").expect("request");
    assert!(
        still.starts_with("HTTP/1.1 200"),
        "last good routes.yaml keeps serving: {still}"
    );
}
