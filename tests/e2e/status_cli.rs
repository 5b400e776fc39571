//! `gateway-agent status --manifests DIR`: the conditions translate decides,
//! as a table and as JSON. Needs no root: nothing is loaded or served.

use std::process::Command;

use gateway_tests::{TempDir, Topology, class_and_service, http_gateway_and_route};

const CROSS_NAMESPACE_ROUTE: &str = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: sneaky
  namespace: default
spec:
  parentRefs:
  - name: gw
  rules:
  - backendRefs:
    - name: web
      namespace: elsewhere
      port: 8080
"#;

fn status(dir: &TempDir, output: &str) -> String {
    let out = Command::new(Topology::bin("agent-under-test"))
        .args(["status", "--output", output, "--manifests"])
        .arg(&dir.0)
        .output()
        .expect("run status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn status_shows_accepted_routes_and_why_others_are_not() {
    let dir = TempDir::new();
    dir.write(
        "all.yaml",
        &(class_and_service("web", 8080, 8080)
            + &http_gateway_and_route("/app")
            + CROSS_NAMESPACE_ROUTE),
    );

    let table = status(&dir, "table");
    let row = |needle: &[&str]| {
        table
            .lines()
            .find(|l| needle.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no row with {needle:?} in:\n{table}"))
    };
    assert!(table.starts_with("KIND"), "{table}");
    row(&["HTTPRoute", "default/app", "Accepted", "True"]);
    row(&[
        "HTTPRoute",
        "default/sneaky",
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    ]);
    row(&["Gateway", "default/gw", "Programmed", "True"]);

    // JSON and YAML: every object as the API server would hold it after the
    // agent wrote its status, in a List like `kubectl get -o json`.
    let json: serde_json::Value = serde_json::from_str(&status(&dir, "json")).expect("JSON");
    let yaml: serde_json::Value = serde_yaml::from_str(&status(&dir, "yaml")).expect("YAML");
    for list in [&json, &yaml] {
        assert_eq!(list["kind"], "List");
        let items = list["items"].as_array().expect("items");
        let sneaky = items
            .iter()
            .find(|o| o["kind"] == "HTTPRoute" && o["metadata"]["name"] == "sneaky")
            .expect("sneaky");
        let parent = &sneaky["status"]["parents"][0];
        assert_eq!(parent["parentRef"]["name"], "gw");
        assert_eq!(parent["controllerName"], "gateway-agent.dev/node-agent");
        let resolved = parent["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "ResolvedRefs")
            .expect("ResolvedRefs");
        assert_eq!(resolved["status"], "False");
        assert_eq!(resolved["reason"], "RefNotPermitted");
        assert_eq!(resolved["observedGeneration"], 1);
        let gw = items
            .iter()
            .find(|o| o["kind"] == "Gateway" && o["metadata"]["name"] == "gw")
            .expect("gw");
        let listener = &gw["status"]["listeners"][0];
        assert_eq!(listener["attachedRoutes"], 2, "{listener}");
        assert_eq!(listener["supportedKinds"][0]["kind"], "HTTPRoute");
    }
}
