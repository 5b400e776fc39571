//! The same figures in three places: known traffic goes through a TCPRoute
//! (XDP), a TLS passthrough route (sockmap splice) and an HTTPRoute (proxy),
//! then each route's counters must agree between the kernel's maps (bpftool),
//! `/metrics` (read with a Prometheus text-format parser) and
//! `gateway-agent inspect --output json`. After the agent exits, `inspect`
//! still reads the pinned L4 state.

use std::process::Command;
use std::time::Duration;

use prometheus_parse::{LineInfo, Scrape, Value};
use serde_json::Value as Json;

use gateway_tests::tls::TestCertificate;
use gateway_tests::{
    Agent, BACKEND_ADDR, GATEWAY_ADDR, TempDir, Topology, eventually, must, require_root,
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
/// bpftool reads it: the splice program's map is not pinned, so it is found
/// among the maps the agent's process holds (their ids are in its fds'
/// fdinfo), other than the idle copy the XDP object pins under its name.
fn splice_bytes(agent: &Agent, id: u32) -> (u64, u64) {
    let fdinfo = format!("/proc/{}/fdinfo", agent.process.0.id());
    let held: Vec<u64> = std::fs::read_dir(&fdinfo)
        .expect("agent fdinfo")
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    let pinned = must(
        Command::new("bpftool")
            .args(["--json", "map", "show", "pinned"])
            .arg(agent.pin_dir().join("TLS_ROUTE_STATS")),
    );
    let pinned: Json = serde_json::from_slice(&pinned.stdout).expect("bpftool JSON");
    let out = must(Command::new("bpftool").args(["--json", "map", "show"]));
    let maps: Json = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let map_id = maps
        .as_array()
        .expect("map list")
        .iter()
        .find(|m| {
            m["name"] == "TLS_ROUTE_STATS"
                && m["id"] != pinned["id"]
                && m["id"].as_u64().is_some_and(|id| held.contains(&id))
        })
        .and_then(|m| m["id"].as_u64())
        .expect("the agent's TLS_ROUTE_STATS map");
    let key = id.to_le_bytes().map(|b| b.to_string());
    let out = must(
        Command::new("bpftool")
            .args(["--json", "map", "lookup", "id", &map_id.to_string(), "key"])
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
            Ok((id, kernel))
        },
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
    let (id, kernel) = report;
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
