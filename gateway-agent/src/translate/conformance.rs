//! The Gateway API conformance tests that only check status, as golden
//! fixtures: `fixtures/conformance/expected/<Test>.yaml` names the test's
//! manifests (copied from ../shared/conformance, see fixtures/conformance/README.md)
//! and the status the spec asks for; translate's output, serialised as the
//! API server would hold it, must match field by field.
//!
//! Matching follows the Go suite's helpers: a listed condition must be present
//! with that status and (when given) reason; listeners of a Gateway are
//! compared as a set (names, `supportedKinds`, `attachedRoutes`); a route's
//! listed parents must be present. On top of that, every condition written must
//! carry the object's generation as `observedGeneration` and every route
//! parent our `controllerName`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{Settings, api_objects, translate};
use crate::source::file::load_str;
use crate::store::Snapshot;

const CONTROLLER: &str = "gateway-agent.dev/node-agent";
const CLASS: &str = "gateway-conformance";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    test: String,
    #[allow(dead_code, reason = "documentation for the reader")]
    description: String,
    /// Files under manifests/tests, applied after manifests/base.yaml.
    manifests: Vec<String>,
    /// Why this test cannot pass yet; its expectations are still evaluated and reported.
    #[serde(default)]
    pending: Option<String>,
    #[serde(default)]
    expect: Vec<Value>,
    /// Objects replaced after the first check (the Go test's Patch), with a
    /// higher `metadata.generation`, as the API server would bump it.
    #[serde(default)]
    mutate: Vec<Value>,
    #[serde(default)]
    after: Vec<Value>,
    /// Further updates, each followed by its checks (the Go test's later Patches).
    #[serde(default)]
    then: Vec<Step>,
    /// Text the Go suite substitutes in the test's manifests from its flags
    /// (e.g. `PLACEHOLDER_USABLE_ADDRS` → an address of this node).
    #[serde(default)]
    placeholders: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    mutate: Vec<Value>,
    after: Vec<Value>,
}

/// The node the fixtures are translated for: Gateways without spec.addresses
/// are served (and reported) on NODE_ADDRESS, the one static address it has
/// besides loopback.
const NODE_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 1);

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/translate/fixtures/conformance")
}

fn with_placeholders(text: &str) -> String {
    text.replace("{GATEWAY_CLASS_NAME}", CLASS)
        .replace("{GATEWAY_CONTROLLER_NAME}", CONTROLLER)
}

fn load(snapshot: &mut Snapshot, name: &str, text: &str) {
    let mut errors = Vec::new();
    load_str(
        Path::new(name),
        &with_placeholders(text),
        snapshot,
        &mut errors,
    );
    assert!(errors.is_empty(), "{name} does not load: {errors:?}");
}

/// Translates and serialises every Gateway API object with its status.
fn objects(snapshot: &Snapshot) -> Vec<Value> {
    let settings = Settings {
        controller_name: CONTROLLER.into(),
        node_addresses: vec![NODE_ADDRESS],
        usable_addresses: Some(vec![std::net::IpAddr::V4(NODE_ADDRESS)]),
    };
    let output = translate(snapshot, &settings);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    );
    api_objects(snapshot, &output.statuses, CONTROLLER, &now)
        .into_iter()
        .map(|o| serde_json::to_value(o).expect("status serialises"))
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Result<&'a Value, String> {
    objects
        .iter()
        .find(|o| {
            let meta = &o["metadata"];
            let full = format!(
                "{}/{}",
                meta["namespace"].as_str().unwrap_or(""),
                meta["name"].as_str().unwrap_or("")
            );
            o["kind"] == kind && (full == name || meta["name"] == name)
        })
        .ok_or_else(|| format!("no {kind} {name}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Each expected condition is present with its status and (if given) reason.
fn check_conditions(actual: &Value, expected: &Value, at: &str) -> Result<(), String> {
    for want in expected.as_array().into_iter().flatten() {
        let type_ = str_of(&want["type"]);
        let got = actual
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
            .ok_or_else(|| format!("{at}: no {type_} condition in {actual}"))?;
        if got["status"] != want["status"] {
            return Err(format!(
                "{at}: {type_} is {} ({}), want {}",
                got["status"], got["reason"], want["status"]
            ));
        }
        if !str_of(&want["reason"]).is_empty() && got["reason"] != want["reason"] {
            return Err(format!(
                "{at}: {type_} reason {}, want {}",
                got["reason"], want["reason"]
            ));
        }
    }
    Ok(())
}

fn check_listener(actual: &Value, want: &Value, at: &str) -> Result<(), String> {
    let at = format!("{at} listener {}", want["name"]);
    if let Some(kinds) = want.get("supportedKinds") {
        let got: Vec<&str> = actual["supportedKinds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|k| str_of(&k["kind"]))
            .collect();
        let want: Vec<&str> = kinds.as_array().into_iter().flatten().map(str_of).collect();
        // As the Go helper: empty must be empty, else the expected kinds must
        // be among the supported ones (an implementation may support more).
        let matches = if want.is_empty() {
            got.is_empty()
        } else {
            want.iter().all(|k| got.contains(k))
        };
        if !matches {
            return Err(format!("{at}: supportedKinds {got:?}, want {want:?}"));
        }
    }
    if let Some(n) = want.get("attachedRoutes")
        && actual["attachedRoutes"] != *n
    {
        return Err(format!(
            "{at}: attachedRoutes {}, want {n}",
            actual["attachedRoutes"]
        ));
    }
    check_conditions(&actual["conditions"], &want["conditions"], &at)
}

/// `listeners`: the listed ones, by name; `listenersExact`: and no others.
fn check_listeners(status: &Value, want: &Value, at: &str) -> Result<(), String> {
    let Some(expected) = want.get("listeners").and_then(Value::as_array) else {
        return Ok(());
    };
    let actual = status["listeners"].as_array().cloned().unwrap_or_default();
    if want["listenersExact"] != Value::Bool(false) && actual.len() != expected.len() {
        let names: Vec<&Value> = actual.iter().map(|l| &l["name"]).collect();
        return Err(format!(
            "{at}: listeners {names:?}, want {}",
            expected.len()
        ));
    }
    for l in expected {
        let got = actual
            .iter()
            .find(|a| a["name"] == l["name"])
            .ok_or_else(|| format!("{at}: no listener {}", l["name"]))?;
        check_listener(got, l, at)?;
    }
    Ok(())
}

/// A status parentRef matches an expected one on every field the latter names
/// (namespace defaults to the route's, as the Go helper does).
fn parent_matches(got: &Value, want: &Value, route_ns: &str) -> bool {
    let field = |v: &Value, f: &str, default: &str| {
        v.get(f)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    };
    field(got, "name", "") == field(want, "name", "")
        && field(got, "namespace", route_ns) == field(want, "namespace", route_ns)
        && field(got, "kind", "Gateway") == field(want, "kind", "Gateway")
        && got.get("sectionName") == want.get("sectionName")
        && got.get("port") == want.get("port")
}

fn check_route(object: &Value, want: &Value, at: &str) -> Result<(), String> {
    let route_ns = str_of(&object["metadata"]["namespace"]);
    let parents = object["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(n) = want.get("parentCount")
        && Some(parents.len() as u64) != n.as_u64()
    {
        return Err(format!("{at}: {} status parents, want {n}", parents.len()));
    }
    if want["noAcceptedParents"] == Value::Bool(true) {
        let accepted = parents.iter().any(|p| {
            p["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Accepted" && c["status"] == "True")
        });
        if accepted {
            return Err(format!("{at}: has an Accepted parent"));
        }
    }
    for p in want["parents"].as_array().into_iter().flatten() {
        let got = parents
            .iter()
            .find(|g| parent_matches(&g["parentRef"], &p["parentRef"], route_ns))
            .ok_or_else(|| format!("{at}: no status parent {}", p["parentRef"]))?;
        check_conditions(
            &got["conditions"],
            &p["conditions"],
            &format!("{at} parent {}", p["parentRef"]),
        )?;
    }
    Ok(())
}

/// A policy's `status.ancestors`: `ancestorCount`, and each listed ancestor
/// (by Gateway name and namespace) with its conditions.
fn check_policy(object: &Value, want: &Value, at: &str) -> Result<(), String> {
    let policy_ns = str_of(&object["metadata"]["namespace"]);
    let ancestors = object["status"]["ancestors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(n) = want.get("ancestorCount")
        && Some(ancestors.len() as u64) != n.as_u64()
    {
        return Err(format!("{at}: {} ancestors, want {n}", ancestors.len()));
    }
    for a in want["ancestors"].as_array().into_iter().flatten() {
        let got = ancestors
            .iter()
            .find(|g| parent_matches(&g["ancestorRef"], &a["ancestorRef"], policy_ns))
            .ok_or_else(|| format!("{at}: no ancestor {}", a["ancestorRef"]))?;
        check_conditions(
            &got["conditions"],
            &a["conditions"],
            &format!("{at} ancestor {}", a["ancestorRef"]),
        )?;
    }
    Ok(())
}

fn check(objects: &[Value], expectations: &[Value]) -> Result<(), String> {
    for want in expectations {
        let kind = str_of(&want["kind"]);
        let name = str_of(&want["name"]);
        let at = format!("{kind} {name}");
        let object = find(objects, kind, name)?;
        let status = &object["status"];
        if want["noStatus"] == Value::Bool(true) {
            if !status.is_null() {
                return Err(format!("{at}: has a status, want none: {status}"));
            }
            continue;
        }
        if kind.ends_with("Route") {
            check_route(object, want, &at)?;
            continue;
        }
        if kind == "BackendTLSPolicy" {
            check_policy(object, want, &at)?;
            continue;
        }
        check_conditions(&status["conditions"], &want["conditions"], &at)?;
        check_listeners(status, want, &at)?;
        if let Some(expected) = want.get("addresses") {
            let got: Vec<&Value> = status["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| &a["value"])
                .collect();
            let expected: Vec<&Value> = expected.as_array().into_iter().flatten().collect();
            if got != expected {
                return Err(format!("{at}: status.addresses {got:?}, want {expected:?}"));
            }
        }
        if want["addressesAssigned"] == Value::Bool(true)
            && status["addresses"].as_array().is_none_or(Vec::is_empty)
        {
            return Err(format!("{at}: no status.addresses"));
        }
        if let Some(n) = want.get("attachedListenerSets")
            && status["attachedListenerSets"] != *n
        {
            return Err(format!(
                "{at}: attachedListenerSets {}, want {n}",
                status["attachedListenerSets"]
            ));
        }
    }
    Ok(())
}

/// Invariants of everything written: observedGeneration is the object's
/// generation; route parents carry our controllerName.
fn check_invariants(objects: &[Value]) -> Result<(), String> {
    for o in objects {
        let generation = o["metadata"]["generation"].as_i64().unwrap_or(1);
        let at = format!("{} {}", o["kind"], o["metadata"]["name"]);
        let status = &o["status"];
        let mut conditions: Vec<&Value> = Vec::new();
        conditions.extend(status["conditions"].as_array().into_iter().flatten());
        for l in status["listeners"].as_array().into_iter().flatten() {
            conditions.extend(l["conditions"].as_array().into_iter().flatten());
        }
        let parents = status["parents"].as_array().into_iter().flatten();
        for p in parents.chain(status["ancestors"].as_array().into_iter().flatten()) {
            if p["controllerName"] != CONTROLLER {
                return Err(format!(
                    "{at}: parent controllerName {}",
                    p["controllerName"]
                ));
            }
            conditions.extend(p["conditions"].as_array().into_iter().flatten());
        }
        for c in conditions {
            if c["observedGeneration"].as_i64() != Some(generation) {
                return Err(format!(
                    "{at}: {} has observedGeneration {}, generation is {generation}",
                    c["type"], c["observedGeneration"]
                ));
            }
        }
    }
    Ok(())
}

/// The `kubernetes.io/tls` Secrets the Go suite creates at start-up (no YAML
/// holds them): a valid self-signed pair each, which is all status depends on.
fn suite_secrets() -> String {
    let pair = rcgen::generate_simple_self_signed(vec!["*".into()]).expect("rcgen");
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let (cert, key) = (
        indent(&pair.cert.pem()),
        indent(&pair.signing_key.serialize_pem()),
    );
    [
        ("gateway-conformance-web-backend", "certificate"),
        ("gateway-conformance-infra", "tls-validity-checks-certificate"),
        ("gateway-conformance-infra", "tls-checks-certificate"),
        ("gateway-conformance-infra", "tls-checks-client-certificate"),
        ("gateway-conformance-infra", "tls-passthrough-checks-certificate"),
        ("gateway-conformance-app-backend", "tls-passthrough-checks-certificate"),
        ("gateway-conformance-infra", "tls-terminate-checks-certificate"),
    ]
    .iter()
    .map(|(namespace, name)| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{cert}  tls.key: |\n{key}"
        )
    })
    .collect()
}

/// The CA ConfigMaps (`ca.crt`) the Go suite creates at start-up: a valid
/// certificate each, which is all status depends on.
fn suite_config_maps() -> String {
    let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).expect("rcgen");
    let pem = serde_json::to_string(&ca.cert.pem()).expect("json");
    [
        ("gateway-conformance-web-backend", "web-backend-cm"),
        ("gateway-conformance-infra", "tls-validity-checks-ca-certificate"),
        ("gateway-conformance-infra", "tls-validity-checks-per-port-ca-certificate"),
        ("gateway-conformance-infra", "tls-checks-ca-certificate"),
        ("gateway-conformance-infra", "mismatch-ca-certificate"),
    ]
    .iter()
    .map(|(namespace, name)| {
        format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             data: {{ca.crt: {pem}}}\n"
        )
    })
    .collect()
}

fn run(fixture: &Fixture) -> Result<(), String> {
    let dir = fixtures_dir().join("manifests");
    let mut snapshot = Snapshot::default();
    let class = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: {CLASS}}}\nspec: {{controllerName: {CONTROLLER}}}\n"
    );
    load(&mut snapshot, "gatewayclass.yaml", &class);
    let base = std::fs::read_to_string(dir.join("base.yaml")).expect("base manifests");
    load(&mut snapshot, "base.yaml", &base);
    load(&mut snapshot, "suite-secrets.yaml", &suite_secrets());
    load(
        &mut snapshot,
        "suite-config-maps.yaml",
        &suite_config_maps(),
    );
    for name in &fixture.manifests {
        let mut text = std::fs::read_to_string(dir.join("tests").join(name))
            .unwrap_or_else(|e| panic!("{}: {name}: {e}", fixture.test));
        for (placeholder, value) in &fixture.placeholders {
            text = text.replace(placeholder, value);
        }
        load(&mut snapshot, name, &text);
    }
    let before = objects(&snapshot);
    check_invariants(&before)?;
    check(&before, &fixture.expect)?;
    if fixture.mutate.is_empty() {
        return Ok(());
    }
    for object in &fixture.mutate {
        let text = serde_yaml::to_string(object).expect("mutation serialises");
        load(&mut snapshot, "mutation.yaml", &text);
    }
    let after = objects(&snapshot);
    check_invariants(&after)?;
    check(&after, &fixture.after).map_err(|e| format!("after the update: {e}"))?;
    for (index, step) in fixture.then.iter().enumerate() {
        for object in &step.mutate {
            let text = serde_yaml::to_string(object).expect("mutation serialises");
            load(&mut snapshot, "mutation.yaml", &text);
        }
        let after = objects(&snapshot);
        check_invariants(&after)?;
        check(&after, &step.after).map_err(|e| format!("after update {}: {e}", index + 2))?;
    }
    Ok(())
}

#[test]
fn status_only_conformance_tests() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures_dir().join("expected"))
        .expect("fixtures/conformance/expected")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    let mut failures = Vec::new();
    let (mut passed, mut pending) = (0, Vec::new());
    for path in &paths {
        let text = std::fs::read_to_string(path).expect("fixture");
        let fixture: Fixture =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            fixture.pending.is_some() || !fixture.expect.is_empty(),
            "{}: a fixture must expect something",
            fixture.test
        );
        let result = run(&fixture);
        match (&fixture.pending, result) {
            (None, Ok(())) => passed += 1,
            (None, Err(e)) => failures.push(format!("{}: {e}", fixture.test)),
            (Some(why), result) => {
                let now = if result.is_ok() {
                    "passes now"
                } else {
                    "fails"
                };
                pending.push(format!("{} ({now}): {why}", fixture.test));
            }
        }
    }
    println!(
        "status-only conformance: {passed} passing, {} pending, {} failing, of {}",
        pending.len(),
        failures.len(),
        paths.len()
    );
    for p in &pending {
        println!("  pending: {p}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // One fixture per status-only test of ../shared/conformance/cases.json.
    assert_eq!(
        paths.len(),
        48,
        "a fixture per status-only conformance test"
    );
}

#[test]
fn the_checker_rejects_a_wrong_expectation() {
    let fixture = |expect: &str| -> Fixture {
        serde_yaml::from_str(&format!(
            "test: self-check\ndescription: the checker itself\nmanifests: [gateway-invalid-route-kind.yaml]\nexpect:\n{expect}"
        ))
        .expect("fixture parses")
    };
    let right = "- kind: Gateway\n  name: gateway-conformance-infra/gateway-only-invalid-route-kind\n  listeners:\n  - name: http\n    supportedKinds: []\n    attachedRoutes: 0\n    conditions: [{type: ResolvedRefs, status: \"False\", reason: InvalidRouteKinds}]\n";
    assert_eq!(run(&fixture(right)), Ok(()));
    for (what, wrong) in [
        (
            "reason",
            right.replace("InvalidRouteKinds", "RefNotPermitted"),
        ),
        ("status", right.replace("\"False\"", "\"True\"")),
        (
            "kinds",
            right.replace("supportedKinds: []", "supportedKinds: [HTTPRoute]"),
        ),
        (
            "count",
            right.replace("attachedRoutes: 0", "attachedRoutes: 1"),
        ),
        ("listener", right.replace("- name: http", "- name: https")),
        (
            "object",
            right.replace("gateway-only-invalid-route-kind", "absent"),
        ),
    ] {
        assert!(run(&fixture(&wrong)).is_err(), "a wrong {what} must fail");
    }
}
