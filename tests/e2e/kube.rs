//! Cluster mode against the in-process fake API server: the real agent binary,
//! given a kubeconfig, watches the fake, serves what it holds, writes status,
//! and survives expired watches, an unreachable API server and missing CRDs.
//! Each test runs in its own network namespace(s): the fake server's thread
//! enters the namespace, so the agent reaches it on loopback, and the agent's
//! XDP program attaches to that namespace's own `lo`.
//!
//! Also here (no root needed): the `deploy/daemonset/` manifests parse as
//! strict typed objects, and the DaemonSet is not privileged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::fake_apiserver::FakeApiServer;
use gateway_tests::{Netns, Process, TempDir, Topology, eventually, must, require_root, unique};
use serde_json::Value;

const BACKEND_PORT: u16 = 18080;
const GATEWAY_PORT: u16 = 8088;
const ADMIN: &str = "127.0.0.1:9470";
const CONTROLLER: &str = gateway_agent::DEFAULT_CONTROLLER_NAME;

/// The agent in cluster mode, killed and its pins removed on drop.
struct ClusterAgent {
    process: Process,
    name: String,
    log: PathBuf,
    _dir: TempDir,
}

impl ClusterAgent {
    fn start(ns: &Netns, kubeconfig: &str, node_name: &str) -> Self {
        Self::start_draining(ns, kubeconfig, node_name, 1)
    }

    /// Started with `--drain-seconds drain_seconds`.
    fn start_draining(ns: &Netns, kubeconfig: &str, node_name: &str, drain_seconds: u64) -> Self {
        let drain_seconds = drain_seconds.to_string();
        let dir = TempDir::new();
        dir.write("kubeconfig", kubeconfig);
        let name = unique("gwt-kube-");
        let log = dir.0.join("agent.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        mount_bpffs();
        let child = ns
            .command_in_netns_only(&Topology::bin("agent-under-test"))
            .arg("run")
            .arg("--kubeconfig")
            .arg(dir.0.join("kubeconfig"))
            .args([
                "--interfaces",
                "lo",
                "--name",
                &name,
                "--node-name",
                node_name,
                "--lease-namespace",
                "gateway-agent",
                "--lease-duration-seconds",
                "4",
                "--drain-seconds",
                &drain_seconds,
                "--admin-address",
                ADMIN,
            ])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the agent");
        ClusterAgent {
            process: Process(child),
            name,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ClusterAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of agent {} ---\n{}", self.name, self.log());
        }
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        let _ = std::fs::remove_dir_all(PathBuf::from("/sys/fs/bpf").join(&self.name));
    }
}

fn mount_bpffs() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        must(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]));
    }
}

/// `test-peer http-get` inside `ns`: Ok(status line and body) or Err.
fn http_get(ns: &Netns, addr: &str, path: &str, host: &str) -> Result<String, String> {
    let out = ns
        .command(Topology::bin("test-peer").to_str().expect("utf-8"))
        .args(["http-get", addr, path, host])
        .output()
        .expect("run test-peer");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn gateway_get(ns: &Netns, path: &str) -> Result<String, String> {
    http_get(
        ns,
        &format!("127.0.0.1:{GATEWAY_PORT}"),
        path,
        "app.example",
    )
}

fn expect_status(ns: &Netns, path: &str, status: &str) -> Result<String, String> {
    let response = gateway_get(ns, path)?;
    if response.starts_with(status) {
        Ok(response)
    } else {
        Err(format!("{path}: {response}"))
    }
}

fn config_generation(ns: &Netns) -> u64 {
    let metrics = http_get(ns, ADMIN, "/metrics", "admin").expect("metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_config_generation "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gateway_config_generation in:\n{metrics}"))
}

fn manifests(path: &str, l4: bool) -> String {
    let mut text = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: gwt}}
spec: {{controllerName: {CONTROLLER}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec: {{ports: [{{name: p, port: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: p, port: {BACKEND_PORT}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: gwt
  listeners:
  - {{name: web, protocol: HTTP, port: {GATEWAY_PORT}}}
  - {{name: tcp, protocol: TCP, port: 19001}}
  - {{name: udp, protocol: UDP, port: 19002}}
  - {{name: tls, protocol: TLS, port: 19003, tls: {{mode: Passthrough}}}}
"#
    );
    text += &route(path);
    if l4 {
        for kind in ["TCPRoute", "UDPRoute"] {
            let section = if kind == "TCPRoute" { "tcp" } else { "udp" };
            text += &format!(
                r#"---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: {kind}
metadata: {{name: l4-{section}, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: {section}}}]
  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]
"#
            );
        }
        // The other route kinds whose status the agent writes.
        text += r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: web}]
  hostnames: [grpc.example]
  rules: [{backendRefs: [{name: web, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: tls, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: tls}]
  hostnames: [tls.example]
  rules: [{backendRefs: [{name: web, port: 8080}]}]
"#;
        // A BackendTLSPolicy (and the ConfigMap of its CA) on a Service of
        // its own, reached through the Gateway: its ancestor status is written.
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".into()]).expect("CA");
        let ca_pem = serde_json::to_string(&ca.cert.pem()).expect("json");
        text += &format!(
            r#"---
apiVersion: v1
kind: ConfigMap
metadata: {{name: secure-ca, namespace: default}}
data: {{ca.crt: {ca_pem}}}
---
apiVersion: v1
kind: Service
metadata: {{name: secure, namespace: default}}
spec: {{ports: [{{name: https, port: 443}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: secure, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: web}}]
  hostnames: [secure.example]
  rules: [{{backendRefs: [{{name: secure, port: 443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: secure, namespace: default}}
spec:
  targetRefs: [{{group: "", kind: Service, name: secure, sectionName: https}}]
  validation:
    caCertificateRefs: [{{group: "", kind: ConfigMap, name: secure-ca}}]
    hostname: secure.example
"#
        );
    }
    text
}

fn route(path: &str) -> String {
    format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: ["app.example"]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    backendRefs: [{{name: web, port: 8080}}]
"#
    )
}

/// The condition `type_` of a conditions array.
fn condition<'a>(conditions: &'a Value, type_: &str) -> Option<&'a Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == type_)
}

fn check_condition(conditions: &Value, type_: &str, generation: i64) -> Result<(), String> {
    let c = condition(conditions, type_).ok_or_else(|| format!("no {type_} in {conditions}"))?;
    if c["status"] == "True" && c["observedGeneration"] == generation {
        Ok(())
    } else {
        Err(format!(
            "{type_} is not True for generation {generation}: {c}"
        ))
    }
}

/// Our entry of a route's `status.parents`.
fn route_conditions(fake: &FakeApiServer, kind: &str, name: &str) -> Result<Value, String> {
    let route = fake.get(kind, "default", name).ok_or("route gone")?;
    route["status"]["parents"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["controllerName"] == CONTROLLER))
        .map(|p| p["conditions"].clone())
        .ok_or_else(|| format!("no status from us on {name}: {}", route["status"]))
}

#[test]
fn cluster_mode_serves_writes_status_and_follows_the_api_server() {
    if !require_root("cluster_mode_serves_writes_status_and_follows_the_api_server") {
        return;
    }
    let ns = Netns::new("k");
    let fake = FakeApiServer::start("127.0.0.1:0".parse().expect("addr"), Some(&ns.name));
    fake.apply(&manifests("/app", true));
    let _backend = ns.spawn(&[
        Topology::bin("test-peer").to_str().expect("utf-8"),
        "http-echo",
        &format!("127.0.0.1:{BACKEND_PORT}"),
        "web-1",
    ]);
    let agent = ClusterAgent::start(&ns, &fake.kubeconfig(), "node-a");

    // Apply → served.
    let response = eventually("HTTP through the agent", Duration::from_secs(30), || {
        expect_status(&ns, "/app/x", "HTTP/1.1 200")
    });
    assert!(
        response.contains("backend=web-1"),
        "{response}\n{}",
        agent.log()
    );

    // Status: Accepted/Programmed for generation 1, addresses, route parents.
    eventually("Gateway and route status", Duration::from_secs(20), || {
        let gateway = fake.get("Gateway", "default", "gw").ok_or("no gateway")?;
        check_condition(&gateway["status"]["conditions"], "Accepted", 1)?;
        check_condition(&gateway["status"]["conditions"], "Programmed", 1)?;
        if !gateway["status"]["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["value"] == "127.0.0.1"))
        {
            return Err(format!("addresses: {}", gateway["status"]));
        }
        check_condition(&route_conditions(&fake, "HTTPRoute", "app")?, "Accepted", 1)?;
        check_condition(
            &route_conditions(&fake, "TCPRoute", "l4-tcp")?,
            "Accepted",
            1,
        )?;
        check_condition(
            &route_conditions(&fake, "UDPRoute", "l4-udp")?,
            "Accepted",
            1,
        )?;
        check_condition(
            &route_conditions(&fake, "GRPCRoute", "grpc")?,
            "Accepted",
            1,
        )?;
        check_condition(&route_conditions(&fake, "TLSRoute", "tls")?, "Accepted", 1)?;
        // The policy's CA ConfigMap was watched and resolved; its ancestor is gw.
        let policy = fake
            .get("BackendTLSPolicy", "default", "secure")
            .ok_or("no policy")?;
        let ancestor = policy["status"]["ancestors"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["ancestorRef"]["name"] == "gw"))
            .ok_or_else(|| format!("no ancestor gw: {}", policy["status"]))?;
        check_condition(&ancestor["conditions"], "Accepted", 1)?;
        check_condition(&ancestor["conditions"], "ResolvedRefs", 1)
    });
    let class = fake.get("GatewayClass", "", "gwt").expect("class");
    check_condition(&class["status"]["conditions"], "Accepted", 1).expect("class status");

    // A Gateway asking for one usable address (loopback) and one this node
    // does not have: status.addresses lists only the usable one.
    fake.apply(&format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: static, namespace: default}}
spec:
  gatewayClassName: gwt
  addresses:
  - {{type: IPAddress, value: 127.0.0.1}}
  - {{type: IPAddress, value: 198.19.213.7}}
  listeners: [{{name: web, protocol: HTTP, port: {}}}]
"#,
        GATEWAY_PORT + 1
    ));
    eventually("static Gateway status", Duration::from_secs(20), || {
        let gateway = fake
            .get("Gateway", "default", "static")
            .ok_or("no gateway")?;
        let programmed = condition(&gateway["status"]["conditions"], "Programmed")
            .ok_or_else(|| format!("no Programmed: {}", gateway["status"]))?;
        if programmed["reason"] != "AddressNotUsable" {
            return Err(format!("Programmed: {programmed}"));
        }
        let want = serde_json::json!([{"type": "IPAddress", "value": "127.0.0.1"}]);
        if gateway["status"]["addresses"] != want {
            return Err(format!("addresses: {}", gateway["status"]["addresses"]));
        }
        Ok(())
    });

    // Edit → re-applied, and the status follows the new generation.
    let before_edit = config_generation(&ns);
    fake.apply(&route("/v2"));
    eventually("the edited route", Duration::from_secs(20), || {
        expect_status(&ns, "/v2/x", "HTTP/1.1 200")?;
        expect_status(&ns, "/app/x", "HTTP/1.1 404")
    });
    eventually("status for generation 2", Duration::from_secs(20), || {
        check_condition(&route_conditions(&fake, "HTTPRoute", "app")?, "Accepted", 2)
    });
    // The status written comes back as a watch event that changes nothing
    // translate reads: the edit was applied once, its echo not at all.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        config_generation(&ns) - before_edit,
        1,
        "an edit and its status echo should make one apply\n{}",
        agent.log()
    );

    // Watches expire (410 Gone): the agent relists and never drops the route.
    let lists_before = fake.list_count("HTTPRoute");
    let writes_before = fake.status_writes().len();
    fake.expire_watches();
    let until = Instant::now() + Duration::from_secs(4);
    let mut probes = 0;
    while Instant::now() < until {
        expect_status(&ns, "/v2/x", "HTTP/1.1 200")
            .unwrap_or_else(|e| panic!("route dropped during the relist: {e}\n{}", agent.log()));
        probes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        fake.list_count("HTTPRoute") > lists_before,
        "no relist after 410 Gone\n{}",
        agent.log()
    );
    assert!(probes >= 10, "too few probes: {probes}");
    // Status is written only when it changes: a relist changes nothing.
    assert_eq!(
        fake.status_writes()[writes_before..],
        [],
        "status rewritten without a change"
    );

    // A burst of 1,000 changes in about a second: a handful of applies.
    let before = config_generation(&ns);
    let started = Instant::now();
    for i in 0..1000 {
        fake.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n  labels: {{burst: \"{i}\"}}\nspec: {{ports: [{{name: p, port: 8080}}]}}\n"
        ));
    }
    let burst = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let applies = config_generation(&ns) - before;
    eprintln!("1000 changes in {burst:?} → {applies} applies");
    assert!(
        (1..=5).contains(&applies),
        "1000 changes in {burst:?} caused {applies} applies"
    );

    // Delete → route gone; the Gateway's status is left as it was.
    fake.delete("HTTPRoute", "default", "app");
    eventually("the deleted route", Duration::from_secs(20), || {
        expect_status(&ns, "/v2/x", "HTTP/1.1 404")
    });
    let gateway = fake.get("Gateway", "default", "gw").expect("gateway");
    check_condition(&gateway["status"]["conditions"], "Programmed", 1).expect("gateway status");

    // RBAC: the ClusterRole grants exactly what the agent asked for.
    let served = fake.calls();
    let granted = cluster_role_grants();
    assert_eq!(
        served, granted,
        "served calls (left) differ from the ClusterRole's rules (right)"
    );
}

#[test]
fn an_unreachable_api_server_keeps_traffic_and_reports_degraded() {
    if !require_root("an_unreachable_api_server_keeps_traffic_and_reports_degraded") {
        return;
    }
    let ns = Netns::new("k");
    let mut fake = FakeApiServer::start("127.0.0.1:0".parse().expect("addr"), Some(&ns.name));
    // A cluster with only the standard channel: TCPRoute/UDPRoute CRDs absent.
    fake.uninstall("TCPRoute");
    fake.uninstall("UDPRoute");
    fake.apply(&manifests("/app", false));
    let _backend = ns.spawn(&[
        Topology::bin("test-peer").to_str().expect("utf-8"),
        "http-echo",
        &format!("127.0.0.1:{BACKEND_PORT}"),
        "web-1",
    ]);
    let agent = ClusterAgent::start(&ns, &fake.kubeconfig(), "node-a");
    eventually("HTTP through the agent", Duration::from_secs(30), || {
        expect_status(&ns, "/app/x", "HTTP/1.1 200")
    });
    eventually("ready", Duration::from_secs(10), || {
        let r = http_get(&ns, ADMIN, "/readyz", "admin")?;
        if r.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(r)
        }
    });
    // Missing CRDs: reported once, not retried in a loop.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fake.list_count("TCPRoute"), 1, "TCPRoute listed again");
    assert_eq!(fake.list_count("UDPRoute"), 1, "UDPRoute listed again");
    let log = agent.log();
    assert_eq!(
        log.matches("CRD not installed").count(),
        2,
        "one report per missing kind:\n{log}"
    );

    // API server down: traffic keeps flowing, readiness says degraded.
    fake.stop();
    let degraded = eventually("degraded readiness", Duration::from_secs(20), || {
        let r = http_get(&ns, ADMIN, "/readyz", "admin")?;
        if r.starts_with("HTTP/1.1 503") && r.contains("degraded") {
            Ok(r)
        } else {
            Err(r)
        }
    });
    eprintln!("{degraded}");
    for _ in 0..10 {
        expect_status(&ns, "/app/x", "HTTP/1.1 200")
            .unwrap_or_else(|e| panic!("traffic stopped with the API server down: {e}"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back up: ready again, and changes flow again.
    fake.restart();
    eventually("ready again", Duration::from_secs(60), || {
        let r = http_get(&ns, ADMIN, "/readyz", "admin")?;
        if r.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(r)
        }
    });
    fake.apply(&route("/v3"));
    eventually("a change after the outage", Duration::from_secs(30), || {
        expect_status(&ns, "/v3/x", "HTTP/1.1 200")
    });
}

/// SIGTERM while a slow request is in flight: the request completes through
/// the draining agent, and the agent exits once it has, long before the
/// drain deadline (30 s) a fixed wait would take.
#[test]
fn sigterm_drains_the_request_in_flight_then_exits() {
    if !require_root("sigterm_drains_the_request_in_flight_then_exits") {
        return;
    }
    const DELAY_MS: u64 = 1500;
    const DRAIN_SECONDS: u64 = 30;
    let ns = Netns::new("k");
    let fake = FakeApiServer::start("127.0.0.1:0".parse().expect("addr"), Some(&ns.name));
    fake.apply(&manifests("/app", false));
    let _backend = ns.spawn(&[
        Topology::bin("test-peer").to_str().expect("utf-8"),
        "http-echo-delayed",
        &format!("127.0.0.1:{BACKEND_PORT}"),
        "web-1",
        &DELAY_MS.to_string(),
    ]);
    let mut agent = ClusterAgent::start_draining(&ns, &fake.kubeconfig(), "node-a", DRAIN_SECONDS);
    eventually("HTTP through the agent", Duration::from_secs(30), || {
        expect_status(&ns, "/app/x", "HTTP/1.1 200")
    });

    // The request reaches the backend, which holds it for DELAY_MS.
    let (response, exited) = agent
        .process
        .sigterm_during(Duration::from_secs(DRAIN_SECONDS + 10), || {
            gateway_get(&ns, "/app/slow")
        });
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
    // Exiting as soon as the request is done, not at the drain deadline.
    assert!(
        after < Duration::from_secs(DRAIN_SECONDS / 2),
        "exited {after:?} after SIGTERM: waited for the deadline\n{}",
        agent.log()
    );
    assert!(agent.log().contains("draining HTTP"), "{}", agent.log());
}

/// Two namespaces joined by a veth pair: the fake server and agent A in one,
/// agent B in the other, reaching the server across the link.
#[test]
fn only_the_lease_holder_writes_status_and_another_takes_over() {
    if !require_root("only_the_lease_holder_writes_status_and_another_takes_over") {
        return;
    }
    let a = Netns::new("ka");
    let b = Netns::new("kb");
    must(Command::new("ip").args([
        "link", "add", "k0", "netns", &a.name, "type", "veth", "peer", "name", "k0", "netns",
        &b.name,
    ]));
    a.run(&["ip", "addr", "add", "198.19.7.1/24", "dev", "k0"]);
    a.run(&["ip", "link", "set", "k0", "up"]);
    b.run(&["ip", "addr", "add", "198.19.7.2/24", "dev", "k0"]);
    b.run(&["ip", "link", "set", "k0", "up"]);
    let fake = FakeApiServer::start("0.0.0.0:0".parse().expect("addr"), Some(&a.name));
    let port = fake.addr().port();
    fake.apply(&manifests("/app", false));
    let kubeconfig_b = fake
        .kubeconfig()
        .replace(&format!("0.0.0.0:{port}"), &format!("198.19.7.1:{port}"));
    let kubeconfig_a = fake
        .kubeconfig()
        .replace(&format!("0.0.0.0:{port}"), &format!("127.0.0.1:{port}"));
    let agent_a = ClusterAgent::start(&a, &kubeconfig_a, "node-a");
    let agent_b = ClusterAgent::start(&b, &kubeconfig_b, "node-b");
    let address_of = |node: &str| -> std::net::IpAddr {
        if node == "node-a" {
            "127.0.0.1"
        } else {
            "198.19.7.2"
        }
        .parse()
        .expect("ip")
    };
    let holder = || -> Option<String> {
        fake.get("Lease", "gateway-agent", "gateway-agent-status")?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_string)
    };

    eventually("status written", Duration::from_secs(30), || {
        let gateway = fake.get("Gateway", "default", "gw").ok_or("no gateway")?;
        check_condition(&gateway["status"]["conditions"], "Programmed", 1)?;
        check_condition(&route_conditions(&fake, "HTTPRoute", "app")?, "Accepted", 1)
    });
    // Both agents run for a while; every status write comes from the holder.
    std::thread::sleep(Duration::from_secs(3));
    let first = holder().expect("a Lease holder");
    let writers: BTreeSet<_> = fake.status_writes().iter().map(|(ip, _)| *ip).collect();
    assert_eq!(
        writers,
        BTreeSet::from([address_of(&first)]),
        "status writers while {first} holds the Lease\nA:\n{}\nB:\n{}",
        agent_a.log(),
        agent_b.log()
    );

    // The holder stops (SIGTERM): it releases the Lease, the other takes it
    // at its next retry and writes the status of the next change.
    let mut agents = [agent_a, agent_b];
    let names = ["node-a", "node-b"];
    let namespaces = [&a, &b];
    let kubeconfigs = [&kubeconfig_a, &kubeconfig_b];
    let ips: [std::net::IpAddr; 2] = [
        "127.0.0.1".parse().expect("ip"),
        "198.19.7.2".parse().expect("ip"),
    ];
    let h = names
        .iter()
        .position(|n| *n == first)
        .expect("holder is one of ours");
    let o = 1 - h;
    let hand_over = |to: &str, generation: i64, path: &str, to_ip: std::net::IpAddr, log: &str| {
        let started = Instant::now();
        eventually(
            "the Lease changes hands",
            Duration::from_secs(15),
            || match holder() {
                Some(current) if current == to => Ok(()),
                current => Err(format!("holder {current:?}")),
            },
        );
        eprintln!("hand-over to {to} took {:?}", started.elapsed());
        let writes_before = fake.status_writes().len();
        fake.apply(&route(path));
        eventually(
            "status from the new holder",
            Duration::from_secs(20),
            || {
                check_condition(
                    &route_conditions(&fake, "HTTPRoute", "app")?,
                    "Accepted",
                    generation,
                )
            },
        );
        let writers: BTreeSet<_> = fake.status_writes()[writes_before..]
            .iter()
            .map(|(ip, _)| *ip)
            .collect();
        assert_eq!(
            writers,
            BTreeSet::from([to_ip]),
            "status writers after the hand-over to {to}\n{log}"
        );
    };
    agents[h].process.signal(libc::SIGTERM);
    hand_over(names[o], 2, "/v2", ips[o], &agents[o].log());

    // A new agent replaces the stopped one; then the holder dies (SIGKILL,
    // nothing released): the new agent takes over once the Lease expires.
    let _ = agents[h].process.0.wait();
    agents[h] = ClusterAgent::start(namespaces[h], kubeconfigs[h], "node-c");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        holder().as_deref(),
        Some(names[o]),
        "the holder kept its Lease"
    );
    let _ = agents[o].process.0.kill();
    hand_over("node-c", 3, "/v3", ips[h], &agents[h].log());
}

/// `verb group/resource[/subresource]` for every rule of the ClusterRole and
/// the Lease Role, in the fake server's notation.
fn cluster_role_grants() -> BTreeSet<String> {
    let text = std::fs::read_to_string(deploy_dir().join("rbac.yaml")).expect("rbac.yaml");
    let mut grants = BTreeSet::new();
    for doc in text.split("\n---") {
        let value: Value = serde_yaml::from_str(doc).expect("YAML");
        if value["kind"] != "ClusterRole" && value["kind"] != "Role" {
            continue;
        }
        for rule in value["rules"].as_array().expect("rules") {
            for group in rule["apiGroups"].as_array().expect("apiGroups") {
                for resource in rule["resources"].as_array().expect("resources") {
                    for verb in rule["verbs"].as_array().expect("verbs") {
                        grants.insert(format!(
                            "{} {}/{}",
                            verb.as_str().expect("verb"),
                            group.as_str().expect("group"),
                            resource.as_str().expect("resource")
                        ));
                    }
                }
            }
        }
    }
    grants
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/daemonset")
        .canonicalize()
        .expect("deploy/daemonset")
}

/// Paths present in `original` but not in `typed` (its typed round-trip):
/// fields the typed object does not know.
fn unknown_fields(original: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in o {
                match t.get(k) {
                    Some(tv) => unknown_fields(v, tv, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            for (i, (ov, tv)) in o.iter().zip(t).enumerate() {
                unknown_fields(ov, tv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Deserializes `doc` as `T` and fails on any field `T` does not have.
fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let mut unknown = Vec::new();
    unknown_fields(
        doc,
        &serde_json::to_value(&typed).expect("serialize"),
        "",
        &mut unknown,
    );
    assert!(
        unknown.is_empty(),
        "{} {}: unknown fields {unknown:?}",
        doc["kind"],
        doc["metadata"]["name"]
    );
    typed
}

#[test]
fn deploy_manifests_are_strict_typed_objects_and_not_privileged() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

    let dir = deploy_dir();
    let kustomization: Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization"),
    )
    .expect("kustomization YAML");
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("resource path"))
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    files.sort();
    let mut listed: Vec<String> = resources.iter().map(ToString::to_string).collect();
    listed.sort();
    assert_eq!(listed, files, "kustomization.yaml must list every manifest");

    let mut kinds = BTreeSet::new();
    let mut daemonsets = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(dir.join(file)).expect("manifest");
        for doc in text.split("\n---") {
            let doc: Value = serde_yaml::from_str(doc).expect("YAML");
            if doc.is_null() {
                continue;
            }
            let kind = doc["kind"].as_str().expect("kind").to_string();
            match kind.as_str() {
                "Namespace" => drop(strict::<Namespace>(&doc)),
                "ServiceAccount" => drop(strict::<ServiceAccount>(&doc)),
                "ClusterRole" => drop(strict::<ClusterRole>(&doc)),
                "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(&doc)),
                "Role" => drop(strict::<Role>(&doc)),
                "RoleBinding" => drop(strict::<RoleBinding>(&doc)),
                "DaemonSet" => daemonsets.push(strict::<DaemonSet>(&doc)),
                "GatewayClass" => {
                    let class: gateway_api::gatewayclasses::GatewayClass = strict(&doc);
                    assert_eq!(class.spec.controller_name, CONTROLLER);
                }
                other => panic!("{file}: unexpected kind {other}"),
            }
            kinds.insert(kind);
        }
    }
    assert_eq!(
        kinds,
        BTreeSet::from(
            [
                "ClusterRole",
                "ClusterRoleBinding",
                "DaemonSet",
                "GatewayClass",
                "Namespace",
                "Role",
                "RoleBinding",
                "ServiceAccount"
            ]
            .map(String::from)
        )
    );

    let [daemonset] = daemonsets.as_slice() else {
        panic!("one DaemonSet expected");
    };
    let pod = daemonset
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    let agent = &pod.containers[0];
    let security = agent.security_context.as_ref().expect("securityContext");
    assert_ne!(
        security.privileged,
        Some(true),
        "the agent must not be privileged"
    );
    let added = security
        .capabilities
        .as_ref()
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    for needed in ["BPF", "NET_ADMIN", "PERFMON"] {
        assert!(added.iter().any(|c| c == needed), "missing CAP_{needed}");
    }
    assert!(
        !added.iter().any(|c| c == "SYS_ADMIN" || c == "ALL"),
        "capabilities too broad: {added:?}"
    );
    let mounts: Vec<&str> = agent
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(
        mounts.contains(&"/sys/fs/bpf"),
        "bpffs not mounted: {mounts:?}"
    );
    for (probe, path) in [
        (&agent.liveness_probe, "/healthz"),
        (&agent.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("no {path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
    }
    let requests = agent
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .expect("resource requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    assert!(
        agent
            .ports
            .iter()
            .flatten()
            .any(|p| p.container_port == 9470),
        "metrics/admin port not declared"
    );
}
