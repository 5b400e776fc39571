//! TLS passthrough end to end: TLSRoutes chosen by SNI, the payload spliced in
//! the kernel (sockmap) with the agent idle, cross-namespace backends allowed
//! by a ReferenceGrant, unknown names refused, and no map entry left behind.

use std::time::{Duration, Instant};

use gateway_tests::tls::{TestCertificate, cpu_ticks, thread_cpu_ticks};
use gateway_tests::{
    Agent, BACKEND_ADDR, GATEWAY_ADDR, Process, TempDir, Topology, eventually, require_root,
};

const LISTENER_PORT: u16 = 8443;
const TERMINATE_PORT: u16 = 8444;
const BULK_BYTES: u64 = 100 * 1024 * 1024;

fn service(namespace: &str, name: &str, port: u16) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec: {{ports: [{{name: tls, port: 443}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: tls, port: {port}}}]
endpoints: [{{addresses: ["{BACKEND_ADDR}"]}}]
"#
    )
}

/// Backend A (a.example) lives in namespace `backends`, referenced from a
/// TLSRoute in `apps` through a ReferenceGrant; backend B (b.example and
/// *.wild.example) is in the route's own namespace.
fn passthrough_manifests(cert_t: &TestCertificate) -> String {
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
  - name: tls
    protocol: TLS
    port: {LISTENER_PORT}
    tls: {{mode: Passthrough}}
    allowedRoutes: {{namespaces: {{from: All}}}}
  - name: terminate
    protocol: TLS
    port: {TERMINATE_PORT}
    hostname: term.example
    tls: {{mode: Terminate, certificateRefs: [{{name: cert-t}}]}}
    allowedRoutes: {{namespaces: {{from: All}}}}
{a}{b}{echo}{secret_t}---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: apps-to-backends, namespace: backends}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: TLSRoute, namespace: apps}}]
  to: [{{group: "", kind: Service}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: a, namespace: apps}}
spec:
  parentRefs: [{{name: gw, namespace: default}}]
  hostnames: [a.example]
  rules: [{{backendRefs: [{{name: svc-a, namespace: backends, port: 443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: b, namespace: apps}}
spec:
  parentRefs: [{{name: gw, namespace: default}}]
  hostnames: [b.example, "*.wild.example"]
  rules: [{{backendRefs: [{{name: svc-b, port: 443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: t, namespace: apps}}
spec:
  parentRefs: [{{name: gw, namespace: default, sectionName: terminate}}]
  hostnames: [term.example]
  rules: [{{backendRefs: [{{name: svc-echo, port: 443}}]}}]
"#,
        controller = gateway_agent::DEFAULT_CONTROLLER_NAME,
        a = service("backends", "svc-a", 9441),
        b = service("apps", "svc-b", 9442),
        echo = service("apps", "svc-echo", 9450),
        secret_t = cert_t.secret("default", "cert-t"),
    )
}

struct Setup {
    topology: Topology,
    agent: Agent,
    cert_a: TestCertificate,
    cert_b: TestCertificate,
    cert_t: TestCertificate,
    _backends: [Process; 3],
    _certs: TempDir,
}

fn setup(extra_args: &[&str]) -> Setup {
    let topology = Topology::new();
    let certs = TempDir::new();
    let cert_a = TestCertificate::new(&certs.0, "a", &["a.example"]);
    let cert_b = TestCertificate::new(&certs.0, "b", &["b.example", "*.wild.example"]);
    let peer = Topology::bin("tls-peer");
    let backend = |port: u16, name: &str, cert: &TestCertificate| {
        topology.backend.spawn(&[
            peer.to_str().expect("utf-8"),
            "server",
            &format!("{BACKEND_ADDR}:{port}"),
            name,
            cert.cert.to_str().expect("utf-8"),
            cert.key.to_str().expect("utf-8"),
        ])
    };
    let cert_t = TestCertificate::new(&certs.0, "t", &["term.example"]);
    let backends = [
        backend(9441, "A", &cert_a),
        backend(9442, "B", &cert_b),
        topology.backend_spawn(&["tcp-echo", &format!("{BACKEND_ADDR}:9450")]),
    ];
    let manifests = TempDir::new();
    manifests.write("all.yaml", &passthrough_manifests(&cert_t));
    let agent = Agent::start_with(&topology, manifests, extra_args);
    Setup {
        topology,
        agent,
        cert_a,
        cert_b,
        cert_t,
        _backends: backends,
        _certs: certs,
    }
}

impl Setup {
    /// `tls-peer client` from the client namespace through the gateway.
    fn client(&self, sni: &str, ca: &TestCertificate, command: &str) -> Result<String, String> {
        self.client_to(LISTENER_PORT, sni, ca, command)
    }

    fn client_to(
        &self,
        port: u16,
        sni: &str,
        ca: &TestCertificate,
        command: &str,
    ) -> Result<String, String> {
        let peer = Topology::bin("tls-peer");
        let mut args = vec![
            "client".to_string(),
            format!("{GATEWAY_ADDR}:{port}"),
            sni.to_string(),
            ca.cert.to_str().expect("utf-8").to_string(),
        ];
        args.extend(command.split_whitespace().map(str::to_string));
        let out = self
            .topology
            .client
            .command(peer.to_str().expect("utf-8"))
            .args(&args)
            .output()
            .expect("run tls-peer");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The agent's /metrics, fetched from the client namespace.
    fn metrics(&self) -> String {
        self.topology
            .client_run(&[
                "http-get",
                &format!("{GATEWAY_ADDR}:9470"),
                "/metrics",
                "agent",
            ])
            .expect("GET /metrics")
    }

    fn metric(&self, line_start: &str) -> Option<u64> {
        metric_value(&self.metrics(), line_start)
    }
}

fn metric_value(metrics: &str, line_start: &str) -> Option<u64> {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn field<'a>(output: &'a str, name: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {name}= in:\n{output}"))
}

#[test]
fn tls_routes_are_chosen_by_sni_and_spliced_in_the_kernel() {
    if !require_root("tls_passthrough_spliced") {
        return;
    }
    let setup = setup(&["--tls-passthrough-splice", "kernel"]);
    let answer = eventually(
        "a.example through the gateway",
        Duration::from_secs(20),
        || setup.client("a.example", &setup.cert_a, "name"),
    );
    assert!(answer.ends_with("A\n"), "{answer}\n{}", setup.agent.log());

    // The handshake is the backend's own: B's certificate does not verify for
    // a.example, and a.example never reaches B.
    let wrong = setup.client("a.example", &setup.cert_b, "name");
    assert!(
        wrong.is_err(),
        "a.example must present A's certificate: {wrong:?}"
    );
    let answer = setup
        .client("b.example", &setup.cert_b, "name")
        .expect("b.example");
    assert!(answer.ends_with("B\n"), "{answer}");
    let answer = setup
        .client("deep.wild.example", &setup.cert_b, "name")
        .expect("wildcard route");
    assert!(answer.ends_with("B\n"), "{answer}");
    // ALPN is between client and backend, untouched.
    assert_eq!(field(&answer, "alpn"), "h2");

    // Unknown names are refused before any backend is chosen, and counted.
    let refused = setup.client("unknown.example", &setup.cert_a, "name");
    assert!(refused.is_err(), "unknown SNI must be closed: {refused:?}");
    let metrics = setup.metrics();
    assert_eq!(
        metric_value(&metrics, "gateway_tls_passthrough_splice{mode=\"kernel\"}"),
        Some(1),
        "{metrics}"
    );
    let listener = format!("{GATEWAY_ADDR}:{LISTENER_PORT}");
    assert_eq!(
        metric_value(
            &metrics,
            &format!(
                "gateway_tls_passthrough_rejected_total{{listener=\"{listener}\",reason=\"unknown_sni\"}}"
            )
        ),
        Some(1),
        "{metrics}"
    );

    // 100 MB each way, hash-checked, with the agent's CPU time measured: the
    // payload goes socket to socket in the kernel.
    let pid = setup.agent.process.0.id();
    let ticks_before = cpu_ticks(pid);
    let threads_before = thread_cpu_ticks(pid);
    let started = Instant::now();
    let upload = setup
        .client("a.example", &setup.cert_a, &format!("upload {BULK_BYTES}"))
        .expect("upload");
    assert_eq!(
        field(&upload, "sent"),
        field(&upload, "received"),
        "{upload}"
    );
    let download = setup
        .client(
            "b.example",
            &setup.cert_b,
            &format!("download {BULK_BYTES} 7"),
        )
        .expect("download");
    assert_eq!(field(&download, "bytes"), BULK_BYTES.to_string());
    assert_eq!(
        field(&download, "expected"),
        field(&download, "received"),
        "{download}"
    );
    let elapsed = started.elapsed();
    let agent_ticks = cpu_ticks(pid) - ticks_before;
    let threads: Vec<String> = thread_cpu_ticks(pid)
        .into_iter()
        .map(|(name, ticks)| {
            format!(
                "{name}={}",
                ticks - threads_before.get(&name).copied().unwrap_or(0)
            )
        })
        .collect();
    eprintln!(
        "spliced: 2 x {BULK_BYTES} bytes in {elapsed:?}, agent CPU {agent_ticks} ticks ({} ms), by thread: {}",
        agent_ticks * 10,
        threads.join(" ")
    );
    // The kernel counted the bytes per route, each way.
    let metrics = setup.metrics();
    let bytes = |name: &str, direction: &str| {
        metric_value(
            &metrics,
            &format!(
                "gateway_tls_route_bytes_total{{namespace=\"apps\",name=\"{name}\",rule=\"0\",direction=\"{direction}\"}}"
            ),
        )
        .unwrap_or_else(|| panic!("no bytes for {name} {direction}:\n{metrics}"))
    };
    assert!(bytes("a", "to_backend") > BULK_BYTES, "{metrics}");
    assert!(bytes("b", "to_client") > BULK_BYTES, "{metrics}");

    assert!(
        agent_ticks <= 10,
        "the agent used {agent_ticks} ticks of CPU moving spliced bytes"
    );
    // A client that resets mid-transfer: the agent lets both sockets go.
    let fds_before = open_fds(pid);
    let reset = setup
        .client(
            "b.example",
            &setup.cert_b,
            &format!("reset-after {BULK_BYTES} 9"),
        )
        .expect("reset-after");
    assert!(reset.contains("reset after"), "{reset}");

    // Every connection is closed: no socket or peer entry is left in the maps,
    // and the agent holds no more descriptors than before.
    eventually("agent sockets closed", Duration::from_secs(10), || {
        let fds = open_fds(pid);
        if fds <= fds_before {
            Ok(())
        } else {
            Err(format!("{fds} descriptors open, {fds_before} before"))
        }
    });
    eventually("splice maps empty", Duration::from_secs(10), || {
        let metrics = setup.metrics();
        let sockets = metric_value(
            &metrics,
            "gateway_tls_passthrough_splice_entries{map=\"sockets\"}",
        );
        let peers = metric_value(
            &metrics,
            "gateway_tls_passthrough_splice_entries{map=\"peers\"}",
        );
        if sockets == Some(0) && peers == Some(0) {
            Ok(())
        } else {
            Err(format!("sockets {sockets:?}, peers {peers:?}"))
        }
    });
}

#[test]
fn the_copy_fallback_serves_the_same_routes() {
    if !require_root("tls_passthrough_copy") {
        return;
    }
    let setup = setup(&["--tls-passthrough-splice", "copy"]);
    let answer = eventually(
        "a.example through the gateway",
        Duration::from_secs(20),
        || setup.client("a.example", &setup.cert_a, "name"),
    );
    assert!(answer.ends_with("A\n"), "{answer}");
    let download = setup
        .client("deep.wild.example", &setup.cert_b, "download 1048576 3")
        .expect("download");
    assert_eq!(field(&download, "expected"), field(&download, "received"));
    assert!(
        setup
            .client("unknown.example", &setup.cert_a, "name")
            .is_err()
    );
    assert_eq!(
        setup.metric("gateway_tls_passthrough_splice{mode=\"copy\"}"),
        Some(1)
    );
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

#[test]
fn a_terminate_listener_ends_tls_and_sends_plain_tcp_to_the_route() {
    if !require_root("tls_terminate") {
        return;
    }
    let setup = setup(&[]);
    let answer = eventually(
        "term.example through the gateway",
        Duration::from_secs(20),
        || setup.client_to(TERMINATE_PORT, "term.example", &setup.cert_t, "echo hello"),
    );
    // The plain TCP echo backend got the bytes the client sent inside TLS.
    assert!(
        answer.lines().any(|l| l == "echo hello"),
        "{answer}\n{}",
        setup.agent.log()
    );
    let wrong = setup.client_to(TERMINATE_PORT, "term.example", &setup.cert_a, "echo x");
    assert!(
        wrong.is_err(),
        "the listener's certificate must be served: {wrong:?}"
    );
}
