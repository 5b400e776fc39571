//! The same figures in three places: known traffic goes through a TCPRoute
//! (XDP), a TLS passthrough route (sockmap splice) and an HTTPRoute (proxy),
//! then each route's counters must agree between the kernel's maps (bpftool),
//! `/metrics` (read with a Prometheus text-format parser) and
//! `gateway-agent inspect --output json`. After the agent exits, `inspect`
//! still reads the pinned L4 state and the splice's pinned TLS counters.

use std::process::Command;
use std::time::Duration;

use prometheus_parse::{LineInfo, Scrape, Value};
use serde_json::Value as Json;

use gateway_tests::tls::TestCertificate;
use gateway_tests::{
    Agent, BACKEND_ADDR, CLIENT_ADDR, GATEWAY_ADDR, TempDir, Topology, eventually, must,
    require_root,
};

const TCP_PORT: u16 = 7100;
const HTTP_PORT: u16 = 8100;
const TLS_PORT: u16 = 8543;
const TCP_CONNECTIONS: u64 = 3;
const TLS_CONNECTIONS: u64 = 2;
const HTTP_REQUESTS: u64 = 4;

fn service(name: &str, port: u16) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: p, port: {port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: p, port: {port}}}]
endpoints: [{{addresses: ["{BACKEND_ADDR}"]}}]
"#
    )
}

fn manifests() -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: gwt}}
spec: {{controllerName: {controller}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: gwt
  addresses: [{{value: {GATEWAY_ADDR}}}]
  listeners:
  - {{name: tcp, protocol: TCP, port: {TCP_PORT}}}
  - {{name: http, protocol: HTTP, port: {HTTP_PORT}}}
  - {{name: tls, protocol: TLS, port: {TLS_PORT}, tls: {{mode: Passthrough}}}}
{tcp}{web}{tls}---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: l4, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: tcp}}]
  rules: [{{backendRefs: [{{name: tcp-echo, port: {TCP_PORT}}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: http}}]
  hostnames: [observe.example]
  rules: [{{backendRefs: [{{name: web, port: {HTTP_PORT}}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: pass, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: tls}}]
  hostnames: [pass.example]
  rules: [{{backendRefs: [{{name: tls-backend, port: {TLS_PORT}}}]}}]
"#,
        controller = gateway_agent::DEFAULT_CONTROLLER_NAME,
        tcp = service("tcp-echo", TCP_PORT),
        web = service("web", HTTP_PORT),
        tls = service("tls-backend", TLS_PORT),
    )
}

/// `/metrics` from the client namespace; every line must be in the text format.
fn scrape(topology: &Topology) -> Scrape {
    let response = topology
        .client_run(&[
            "http-get",
            &format!("{GATEWAY_ADDR}:9470"),
            "/metrics",
            "node",
        ])
        .expect("GET /metrics");
    let text = response.split_once('\n').map_or("", |(_, body)| body);
    for line in text.lines() {
        let known = !matches!(LineInfo::parse(line), LineInfo::Ignored)
            || line == "# EOF"
            || line.starts_with("# UNIT ");
        assert!(known, "not in the Prometheus text format: {line:?}");
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse /metrics")
}

/// The value of the sample of `metric` whose labels include `labels`.
fn sample(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<u64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v as u64,
            _ => panic!("{metric} is not a single value"),
        })
}

/// `gateway-agent inspect --output json` run in the node namespace.
fn inspect(topology: &Topology, agent: &Agent, extra: &[&str]) -> Json {
    let out = must(
        topology
            .node
            .command_in_netns_only(&Topology::bin("agent-under-test"))
            .args(["inspect", "--output", "json", "--name", &agent.name])
            .args(["--admin-address", &format!("{GATEWAY_ADDR}:9470")])
            .args(extra),
    );
    serde_json::from_slice(&out.stdout).expect("inspect JSON")
}

fn u64_at(value: &Json, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Json::as_u64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {value}"))
}

/// The element of the array at `pointer` whose `route.name` (or `route`) is `name`.
fn find_route<'a>(value: &'a Json, pointer: &str, name: &str) -> &'a Json {
    value
        .pointer(pointer)
        .and_then(Json::as_array)
        .and_then(|items| {
            items
                .iter()
                .find(|item| item.pointer("/route/name").and_then(Json::as_str) == Some(name))
        })
        .unwrap_or_else(|| panic!("no route {name} under {pointer} in {value}"))
}

/// Per-CPU `TLS_ROUTE_STATS[id]` of the agent's splice program summed, as
/// bpftool reads it from the pin (by field name, thanks to the map's BTF).
fn splice_bytes(agent: &Agent, id: u32) -> (u64, u64) {
    let pinned = agent.pin_dir().join("TLS_ROUTE_STATS");
    let key = id.to_le_bytes().map(|b| b.to_string());
    let out = must(
        Command::new("bpftool")
            .args(["--json", "map", "lookup", "pinned"])
            .arg(&pinned)
            .arg("key")
            .args(key),
    );
    let value: Json = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let per_cpu = value["formatted"]["values"]
        .as_array()
        .expect("per-CPU values");
    per_cpu.iter().fold((0, 0), |(b, c), v| {
        (
            b + v["value"]["bytes_to_backend"].as_u64().expect("field"),
            c + v["value"]["bytes_to_client"].as_u64().expect("field"),
        )
    })
}

#[test]
fn counters_agree_in_bpftool_metrics_and_inspect() {
    if !require_root("observe") {
        return;
    }
    let topology = Topology::new();
    let certs = TempDir::new();
    let cert = TestCertificate::new(&certs.0, "pass", &["pass.example"]);
    let _tcp = topology.backend_spawn(&["tcp-echo", &format!("{BACKEND_ADDR}:{TCP_PORT}")]);
    let _web = topology.backend_spawn(&["http-echo", &format!("{BACKEND_ADDR}:{HTTP_PORT}"), "w"]);
    let _tls = topology.backend.spawn(&[
        Topology::bin("tls-peer").to_str().expect("utf-8"),
        "server",
        &format!("{BACKEND_ADDR}:{TLS_PORT}"),
        "P",
        cert.cert.to_str().expect("utf-8"),
        cert.key.to_str().expect("utf-8"),
    ]);
    let dir = TempDir::new();
    dir.write("all.yaml", &manifests());
    let agent = Agent::start_with(&topology, dir, &["--tls-passthrough-splice", "kernel"]);

    // Nothing goes through the gateway before the counted traffic: wait for
    // the backends from their own namespace, and for the agent's readiness.
    for port in [TCP_PORT, HTTP_PORT, TLS_PORT] {
        let addr = format!("{BACKEND_ADDR}:{port}").parse().expect("addr");
        eventually("backend listening", Duration::from_secs(10), || {
            topology
                .backend
                .connect_tcp(addr)
                .map(drop)
                .map_err(|e| e.to_string())
        });
    }
    eventually("agent ready", Duration::from_secs(20), || {
        let r = topology.client_run(&[
            "http-get",
            &format!("{GATEWAY_ADDR}:9470"),
            "/readyz",
            "node",
        ])?;
        if r.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(r)
        }
    });

    for i in 0..TCP_CONNECTIONS {
        let reply = topology
            .client_run(&[
                "tcp-send",
                &format!("{GATEWAY_ADDR}:{TCP_PORT}"),
                &format!("m{i}"),
            ])
            .unwrap_or_else(|e| panic!("TCP through XDP: {e}\n{}", agent.log()));
        assert!(reply.contains(&format!("m{i}")), "{reply}");
    }
    for _ in 0..TLS_CONNECTIONS {
        let out = topology
            .client
            .command(Topology::bin("tls-peer").to_str().expect("utf-8"))
            .args([
                "client",
                &format!("{GATEWAY_ADDR}:{TLS_PORT}"),
                "pass.example",
                cert.cert.to_str().expect("utf-8"),
                "name",
            ])
            .output()
            .expect("run tls-peer");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.ends_with("P\n"),
            "TLS passthrough: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for _ in 0..HTTP_REQUESTS {
        let r = topology
            .client_run(&[
                "http-get",
                &format!("{GATEWAY_ADDR}:{HTTP_PORT}"),
                "/x",
                "observe.example",
            ])
            .expect("HTTP through the proxy");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }

    // Connections end asynchronously (FINs, the splice's byte totals): read
    // the three places until they agree and the known figures show.
    let l4 = [
        ("kind", "TCPRoute"),
        ("namespace", "default"),
        ("name", "l4"),
        ("rule", "0"),
    ];
    let tls = [("namespace", "default"), ("name", "pass"), ("rule", "0")];
    let http = [
        ("kind", "HTTPRoute"),
        ("namespace", "default"),
        ("name", "web"),
        ("rule", "0"),
        ("status_class", "2xx"),
    ];
    let report = eventually(
        "the same figures in bpftool, /metrics and inspect",
        Duration::from_secs(15),
        || {
            let inspected = inspect(&topology, &agent, &[]);
            let route = find_route(&inspected, "/routes", "l4");
            let id = u64_at(route, "/id") as u32;
            let kernel = (
                agent.route_counter(id, "packets"),
                agent.route_counter(id, "bytes"),
                agent.route_counter(id, "new_flows"),
            );
            let metrics = scrape(&topology);
            let exported = (
                sample(&metrics, "gateway_l4_route_packets_total", &l4).unwrap_or(0),
                sample(&metrics, "gateway_l4_route_bytes_total", &l4).unwrap_or(0),
                sample(&metrics, "gateway_l4_route_flows_total", &l4).unwrap_or(0),
            );
            let shown = (
                u64_at(route, "/packets"),
                u64_at(route, "/bytes"),
                u64_at(route, "/new_flows"),
            );
            if kernel.2 != TCP_CONNECTIONS || kernel != exported || kernel != shown {
                return Err(format!(
                    "L4 (packets, bytes, flows): bpftool {kernel:?}, /metrics {exported:?}, inspect {shown:?}"
                ));
            }

            let passthrough = find_route(&inspected, "/agent/tls_passthrough/0/routes", "pass");
            let tls_id = u64_at(passthrough, "/id") as u32;
            let spliced = splice_bytes(&agent, tls_id);
            let pinned = find_route(&inspected, "/tls_routes", "pass");
            let pinned = (
                u64_at(pinned, "/id") as u32,
                u64_at(pinned, "/spliced_bytes_to_backend"),
                u64_at(pinned, "/spliced_bytes_to_client"),
            );
            if pinned != (tls_id, spliced.0, spliced.1) {
                return Err(format!(
                    "TLS (id, spliced to backend, to client): bpftool {:?}, inspect's pinned read {pinned:?}",
                    (tls_id, spliced.0, spliced.1)
                ));
            }
            let direction = |d: &str| {
                let mut labels = tls.to_vec();
                labels.push(("direction", d));
                sample(&metrics, "gateway_tls_route_bytes_total", &labels).unwrap_or(0)
            };
            let exported = (
                sample(&metrics, "gateway_tls_route_connections_total", &tls).unwrap_or(0),
                direction("to_backend"),
                direction("to_client"),
            );
            let shown = (
                u64_at(passthrough, "/connections"),
                u64_at(passthrough, "/bytes_to_backend"),
                u64_at(passthrough, "/bytes_to_client"),
            );
            // The backend's bytes are all spliced; of the client's, the
            // ClientHello is copied by the agent before the splice starts.
            if exported.0 != TLS_CONNECTIONS
                || exported != shown
                || spliced.1 != exported.2
                || spliced.1 == 0
                || spliced.0 > exported.1
            {
                return Err(format!(
                    "TLS (connections, to backend, to client): bpftool spliced {spliced:?}, /metrics {exported:?}, inspect {shown:?}"
                ));
            }

            let rule = find_route(&inspected, "/agent/http/0/rules", "web");
            let exported = sample(&metrics, "gateway_http_requests_total", &http).unwrap_or(0);
            let shown = rule
                .pointer("/requests/2xx")
                .and_then(Json::as_u64)
                .unwrap_or(0);
            if exported != HTTP_REQUESTS || shown != exported {
                return Err(format!("HTTP 2xx: /metrics {exported}, inspect {shown}"));
            }
            Ok((id, kernel, (tls_id, spliced)))
        },
    );

    // Without --ebpf-log the program logs nothing (its log calls are compiled
    // out by the verifier), although flows were opened.
    assert!(
        !agent.log().contains("gateway_agent::ebpf"),
        "{}",
        agent.log()
    );

    // The table form names the route and shows its single backend's whole share.
    let table = must(
        topology
            .node
            .command_in_netns_only(&Topology::bin("agent-under-test"))
            .args(["inspect", "--name", &agent.name])
            .args(["--admin-address", &format!("{GATEWAY_ADDR}:9470")]),
    );
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("TCPRoute/default/l4/rule0")
            && table.contains(&format!("{BACKEND_ADDR}:{TCP_PORT}"))
            && table.contains("4093/4093")
            && table.contains("HTTPRoute/default/web/rule0")
            && table.contains("TLSRoute/default/pass/rule0"),
        "{table}"
    );

    // After the agent exits the pins remain: inspect reads the same counters,
    // names the route from the manifests, and says the agent is not there.
    agent.process.signal(libc::SIGTERM);
    eventually("agent exits", Duration::from_secs(10), || {
        agent
            .log()
            .contains("shutting down")
            .then_some(())
            .ok_or_else(|| "running".to_string())
    });
    std::thread::sleep(Duration::from_millis(300));
    let (id, kernel, (tls_id, spliced)) = report;
    let manifests = agent.manifests.0.to_str().expect("utf-8").to_string();
    let after = inspect(&topology, &agent, &["--manifests", &manifests]);
    let route = find_route(&after, "/routes", "l4");
    assert_eq!(u64_at(route, "/id") as u32, id);
    assert_eq!(u64_at(route, "/new_flows"), kernel.2);
    assert_eq!(u64_at(route, "/packets"), kernel.0);
    assert_eq!(
        route.pointer("/backends/0/slots").and_then(Json::as_u64),
        Some(u64::from(gateway_common::MAGLEV_TABLE_SIZE))
    );
    // The splice's counters stay pinned too, named from the manifests.
    let passthrough = find_route(&after, "/tls_routes", "pass");
    assert_eq!(u64_at(passthrough, "/id") as u32, tls_id);
    assert_eq!(
        (
            u64_at(passthrough, "/spliced_bytes_to_backend"),
            u64_at(passthrough, "/spliced_bytes_to_client")
        ),
        spliced
    );
    assert_eq!(splice_bytes(&agent, tls_id), spliced);
    assert!(after["agent"].is_null(), "{after}");
    assert!(
        after["agent_unavailable"]
            .as_str()
            .is_some_and(|why| why.contains("not answering")),
        "{after}"
    );
    assert_eq!(
        after.pointer("/listeners/0/address").and_then(Json::as_str),
        Some(format!("{GATEWAY_ADDR}:{TCP_PORT}").as_str()),
        "{after}"
    );
}

/// `--ebpf-log`: a new flow through the TCPRoute shows in the agent's log
/// as the XDP program's aya-log message, with client, listener and backend.
#[test]
fn ebpf_log_flag_logs_new_flows() {
    if !require_root("observe-ebpf-log") {
        return;
    }
    let topology = Topology::new();
    let _tcp = topology.backend_spawn(&["tcp-echo", &format!("{BACKEND_ADDR}:{TCP_PORT}")]);
    let dir = TempDir::new();
    dir.write("all.yaml", &manifests());
    let agent = Agent::start_with(&topology, dir, &["--ebpf-log"]);
    let addr = format!("{BACKEND_ADDR}:{TCP_PORT}").parse().expect("addr");
    eventually("backend listening", Duration::from_secs(10), || {
        topology
            .backend
            .connect_tcp(addr)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    eventually("TCP through XDP", Duration::from_secs(20), || {
        topology.client_run(&["tcp-send", &format!("{GATEWAY_ADDR}:{TCP_PORT}"), "hi"])
    });
    let expected = format!("-> {GATEWAY_ADDR}:{TCP_PORT} to backend {BACKEND_ADDR}:{TCP_PORT}");
    let line = eventually("the new flow logged", Duration::from_secs(10), || {
        let log = agent.log();
        log.lines()
            .find(|l| {
                l.contains("gateway_agent::ebpf")
                    && l.contains("new flow: route 0 proto 6")
                    && l.contains(&format!("{CLIENT_ADDR}:"))
                    && l.contains(&expected)
            })
            .map(str::to_string)
            .ok_or_else(|| log.clone())
    });
    eprintln!("{line}");
}

/// `explain` output, as JSON, of one request: against `--manifests DIR` or
/// `--admin-address` (the running agent's configuration).
fn explain_json(topology: &Topology, source: &[&str], request: &str, headers: &[&str]) -> Json {
    let mut command = topology
        .node
        .command_in_netns_only(&Topology::bin("agent-under-test"));
    command
        .args(["explain", "--output", "json"])
        .args(source)
        .arg(request);
    for header in headers {
        command.args(["-H", header]);
    }
    let out = must(&mut command);
    serde_json::from_slice(&out.stdout).expect("explain JSON")
}

/// `explain --admin-address` asks the running agent, which decides from the
/// configuration it applied: for the same requests it must answer exactly as
/// `explain --manifests` does on the agent's directory, and the proxy must
/// do what it says (the chosen backend answers; no rule means 404).
#[test]
fn explain_against_the_agent_agrees_with_manifests_and_the_proxy() {
    if !require_root("observe-explain") {
        return;
    }
    let api_port = HTTP_PORT + 1;
    let topology = Topology::new();
    let _web = topology.backend_spawn(&["http-echo", &format!("{BACKEND_ADDR}:{HTTP_PORT}"), "w"]);
    let _api = topology.backend_spawn(&["http-echo", &format!("{BACKEND_ADDR}:{api_port}"), "a"]);
    let dir = TempDir::new();
    dir.write(
        "all.yaml",
        &format!(
            r#"{base}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: http}}]
  hostnames: [observe.example]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    backendRefs: [{{name: api, port: {api_port}}}]
{api}"#,
            base = manifests(),
            api = service("api", api_port),
        ),
    );
    let agent = Agent::start(&topology, dir);
    let admin = format!("{GATEWAY_ADDR}:9470");
    eventually("agent ready", Duration::from_secs(20), || {
        let r = topology.client_run(&["http-get", &admin, "/readyz", "node"])?;
        if r.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(r)
        }
    });
    let manifests = agent.manifests.0.to_str().expect("utf-8").to_string();
    let http = format!("http://{GATEWAY_ADDR}:{HTTP_PORT}");
    let requests: [(String, &[&str]); 4] = [
        (format!("GET {http}/api/x"), &["Host: observe.example"]),
        (format!("GET {http}/x"), &["Host: other.example"]),
        (format!("tcp://{GATEWAY_ADDR}:{TCP_PORT}"), &[]),
        (format!("tls://pass.example:{TLS_PORT}"), &[]),
    ];
    let mut answers = Vec::new();
    for (request, headers) in &requests {
        let from_agent = explain_json(&topology, &["--admin-address", &admin], request, headers);
        let from_dir = explain_json(&topology, &["--manifests", &manifests], request, headers);
        assert_eq!(
            from_agent, from_dir,
            "{request}: agent and manifests disagree"
        );
        assert!(
            from_agent["listener"].is_string(),
            "{request}: {from_agent}"
        );
        answers.push(from_agent);
    }
    // Explain chose the /api rule over the catch-all one (precedence)...
    assert_eq!(
        answers[0]
            .pointer("/chosen/route/name")
            .and_then(Json::as_str),
        Some("api"),
        "{}",
        answers[0]
    );
    assert_eq!(
        answers[0]
            .pointer("/chosen/backends/0/addr")
            .and_then(Json::as_str),
        Some(format!("{BACKEND_ADDR}:{api_port}").as_str())
    );
    assert!(
        answers[0]["others"]
            .as_array()
            .is_some_and(|o| o.iter().any(|l| l["route"]["name"] == "web")),
        "{}",
        answers[0]
    );
    // ... and the proxy sends that request to the api backend.
    let reply = topology
        .client_run(&[
            "http-get",
            &format!("{GATEWAY_ADDR}:{HTTP_PORT}"),
            "/api/x",
            "observe.example",
        ])
        .expect("HTTP through the proxy");
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("backend=a\n"),
        "{reply}"
    );
    // No rule for another host: explain says 404, and so does the proxy.
    assert!(answers[1]["chosen"].is_null(), "{}", answers[1]);
    assert!(
        answers[1]["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("404")),
        "{}",
        answers[1]
    );
    let reply = topology
        .client_run(&[
            "http-get",
            &format!("{GATEWAY_ADDR}:{HTTP_PORT}"),
            "/x",
            "other.example",
        ])
        .expect("HTTP through the proxy");
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    assert_eq!(
        answers[2]
            .pointer("/chosen/route/name")
            .and_then(Json::as_str),
        Some("l4")
    );
    assert_eq!(
        answers[3]
            .pointer("/chosen/route/name")
            .and_then(Json::as_str),
        Some("pass")
    );
}

/// `explain` against the conformance suite: for every HTTP(S) case that the
/// proxy passes today (tests/conformance/expected-pass.txt), `explain` on the
/// same manifests must choose the backend the expectation names, no rule
/// where it expects a 404, a rule without usable backends where it expects a 500. Cases it cannot decide (after cluster mutations,
/// other expectations such as redirects, a rule spread over backends of
/// several Deployments) are counted and skipped. No root needed.
#[test]
fn explain_agrees_with_the_conformance_cases() {
    use gateway_agent::explain::{self, Target};
    use gateway_tests::conformance::{certs, manifests};

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cases_dir = root.join("../../shared/conformance");
    let passing =
        gateway_tests::conformance::read_list(&root.join("conformance/expected-pass.txt"));
    let tests: Json = serde_json::from_slice(
        &std::fs::read(cases_dir.join("cases.json")).expect("read cases.json"),
    )
    .expect("cases.json");
    let names = manifests::Names {
        gateway_class: "gateway-conformance".into(),
        controller: gateway_agent::DEFAULT_CONTROLLER_NAME.into(),
    };
    let settings = gateway_agent::translate::Settings {
        controller_name: names.controller.clone(),
        node_addresses: Vec::new(),
        usable_addresses: None,
    };
    let (mut agreed, mut undecided, mut disagreed) = (0, 0, Vec::new());
    for test in tests.as_array().expect("a list of tests") {
        let cases: Vec<&Json> = test["cases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                matches!(c["driver"].as_str(), Some("http" | "https"))
                    && c["expect"] == "response"
                    && c["id"].as_str().is_some_and(|id| passing.contains(id))
            })
            .collect();
        if cases.is_empty() {
            continue;
        }
        // The suite's manifests made standalone, as the conformance harness
        // writes them: one address per Gateway, EndpointSlices for the pods.
        let mut addresses = manifests::Addresses::new();
        let mut docs = manifests::load(&cases_dir.join("manifests/base/manifests.yaml"), &names)
            .expect("base");
        for m in test["manifests"].as_array().into_iter().flatten() {
            docs.extend(
                manifests::load(&cases_dir.join(m.as_str().expect("path")), &names)
                    .expect("test manifests"),
            );
        }
        manifests::assign_gateway_addresses(&mut docs, &mut addresses);
        let deployments = manifests::deployments(&docs);
        let mut pods = std::collections::BTreeMap::new();
        let mut deployment_of = std::collections::BTreeMap::new();
        for d in &deployments {
            let list: Vec<(String, std::net::Ipv4Addr)> = (0..d.replicas.max(1))
                .map(|i| (format!("{}-{i}", d.name), addresses.pod()))
                .collect();
            for (_, addr) in &list {
                deployment_of.insert(addr.to_string(), d.name.clone());
            }
            pods.insert(d.key(), list);
        }
        let infra_v1 = pods
            .get("gateway-conformance-infra/infra-backend-v1")
            .cloned()
            .unwrap_or_default();
        manifests::fill_manual_endpoint_slices(&mut docs, &infra_v1);
        let mut text = manifests::to_yaml(&docs);
        for service in manifests::services(&docs) {
            if let Some(d) = manifests::selected(&service, &deployments) {
                text += "---\n";
                text += &manifests::endpoint_slice(&service, &pods[&d.key()]);
            }
        }
        let dir = TempDir::new();
        dir.write(
            "00-class.yaml",
            &format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: {}}}\nspec: {{controllerName: {}}}\n",
                names.gateway_class, names.controller
            ),
        );
        dir.write("01-certs.yaml", &certs::to_yaml(&certs::synthesise()));
        dir.write("02-all.yaml", &text);
        let (snapshot, _) = gateway_agent::source::file::load_dir(&dir.0);
        let output = gateway_agent::translate::translate(&snapshot, &settings);

        for case in cases {
            let id = case["id"].as_str().unwrap_or_default();
            if case.get("after_mutations").is_some() {
                undecided += 1;
                continue;
            }
            let effective = &case["effective"];
            let gateway = format!(
                "{}/{}",
                case["gateway"]["namespace"].as_str().unwrap_or_default(),
                case["gateway"]["name"].as_str().unwrap_or_default()
            );
            let address = addresses.gateway(&gateway);
            let (path, query) = match effective["path_and_query"]
                .as_str()
                .unwrap_or("/")
                .split_once('?')
            {
                Some((p, q)) => (p.to_string(), Some(q.to_string())),
                None => (
                    effective["path_and_query"]
                        .as_str()
                        .unwrap_or("/")
                        .to_string(),
                    None,
                ),
            };
            let mut headers = hyper::HeaderMap::new();
            let host = effective["host_header"]
                .as_str()
                .map_or_else(|| address.to_string(), str::to_string);
            headers.insert(hyper::header::HOST, host.parse().expect("host header"));
            for (name, value) in case["ExpectedResponse"]["Request"]["Headers"]
                .as_object()
                .into_iter()
                .flatten()
            {
                headers.append(
                    hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                    value
                        .as_str()
                        .unwrap_or_default()
                        .parse()
                        .expect("header value"),
                );
            }
            let target = Target::Http {
                method: effective["method"].as_str().unwrap_or("GET").to_string(),
                scheme: effective["scheme"].as_str().unwrap_or("http").to_string(),
                authority: address.to_string(),
                port: case["gateway"]["port"].as_u64().expect("gateway port") as u16,
                path,
                query,
                headers,
            };
            let explanation = explain::explain(&output, &target, id);
            let chosen: std::collections::BTreeSet<String> = explanation
                .chosen
                .iter()
                .flat_map(|c| &c.backends)
                .filter(|b| b.endpoint.weight > 0)
                .filter_map(|b| {
                    let ip = b.endpoint.addr.rsplit_once(':').map_or("", |(ip, _)| ip);
                    deployment_of.get(ip).cloned()
                })
                .collect();
            let expected = effective["backend_pod_prefix"].as_str().unwrap_or_default();
            let statuses: Vec<u64> = effective["status_codes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Json::as_u64)
                .collect();
            // A named backend answered: with 200, or with its own status (a
            // retried 500 comes from the backend too) when explain forwards.
            let agrees = if !expected.is_empty() && (statuses.contains(&200) || !chosen.is_empty())
            {
                // A rule spread over several Deployments: which one answers is chance.
                if chosen.len() > 1 {
                    undecided += 1;
                    continue;
                }
                chosen.len() == 1 && chosen.contains(expected)
            } else if statuses == [404] {
                explanation.chosen.is_none()
            } else if statuses == [500] {
                // A rule whose backends are all invalid: the proxy answers 500.
                explanation
                    .chosen
                    .as_ref()
                    .is_some_and(|c| c.backends.is_empty())
            } else {
                undecided += 1;
                continue;
            };
            if agrees {
                agreed += 1;
            } else {
                disagreed.push(format!(
                    "{id}: expected {expected:?} (status {statuses:?}), explain says {chosen:?}: {}",
                    explanation.outcome
                ));
            }
        }
    }
    eprintln!(
        "explain vs conformance: {agreed} agree, {undecided} undecidable (skipped), {} disagree",
        disagreed.len()
    );
    assert!(
        disagreed.is_empty(),
        "explain disagrees with the conformance expectations:\n{}",
        disagreed.join("\n")
    );
    assert!(agreed > 100, "too few cases compared: {agreed}");
}
