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

    let json: serde_json::Value = serde_json::from_str(&status(&dir, "json")).expect("JSON");
    let sneaky = json
        .as_array()
        .expect("a list")
        .iter()
        .find(|s| s["key"]["name"] == "sneaky")
        .expect("sneaky's status");
    assert_eq!(sneaky["parent"]["name"], "gw");
    let resolved = sneaky["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "ResolvedRefs")
        .expect("ResolvedRefs");
    assert_eq!(resolved["status"], false);
    assert_eq!(resolved["reason"], "RefNotPermitted");
}
