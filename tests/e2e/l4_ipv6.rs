//! TCPRoute and UDPRoute on an IPv6 Gateway address, forwarded by the XDP
//! program across network namespaces: weights, replies translated back, and
//! a flow that outlives an agent restart, forwarding while the agent is
//! stopped.
//!
//! The usual topology (`gateway_tests::Topology`) with IPv6 addresses added:
//!
//! ```text
//!  client fd00:18::2 ── c0 fd00:18::1 | node | b0 fd00:18:1::1 ── backend fd00:18:1::2, ::3, ::4
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use gateway_common::PacketEvent;
use gateway_tests::{
    Agent, Process, TempDir, Topology, ask_echo_backend, eventually, exchange_with_echo_backend,
    require_root,
};

/// `inspect --output json` (pinned maps, names from the agent's `/state`)
/// shows the IPv6 listener, its route's three IPv6 backends with their
/// Maglev shares (70/20/10 within a point), and the route's new flows.
fn inspect_shows_the_ipv6_route(topology: &Topology, agent: &Agent, flows: u32) {
    let out = topology
        .node
        .command_in_netns_only(&Topology::bin("agent-under-test"))
        .args(["inspect", "--output", "json", "--name", &agent.name])
        .output()
        .expect("run inspect");
    assert!(out.status.success(), "inspect: {out:?}");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    let listener = shown["listeners"]
        .as_array()
        .and_then(|ls| {
            ls.iter()
                .find(|l| l["address"] == format!("[{GATEWAY6}]:9000").as_str())
        })
        .unwrap_or_else(|| panic!("no IPv6 listener in {shown}"));
    assert_eq!(listener["protocol"], "TCP", "{listener}");
    let route_id = listener["route_id"].as_u64().expect("route id");
    let route = shown["routes"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["id"].as_u64() == Some(route_id)))
        .unwrap_or_else(|| panic!("no route {route_id} in {shown}"));
    assert_eq!(route["ipv6"], true, "{route}");
    assert_eq!(route["route"]["name"], "echo", "{route}");
    assert!(
        route["new_flows"].as_u64().unwrap_or(0) >= u64::from(flows),
        "{route}"
    );
    for ((_, addr), weight) in BACKENDS6.iter().zip([70.0, 20.0, 10.0]) {
        let backend = route["backends"]
            .as_array()
            .and_then(|bs| {
                bs.iter()
                    .find(|b| b["address"] == format!("[{addr}]:7000").as_str())
            })
            .unwrap_or_else(|| panic!("no backend {addr} in {route}"));
        let share = backend["share_percent"].as_f64().expect("share");
        assert!((share - weight).abs() <= 1.0, "{backend}");
        assert_eq!(backend["snat_address"], NODE_BACKEND_SIDE6, "{backend}");
    }
}

const GATEWAY6: &str = "fd00:18::1";
const CLIENT6: &str = "fd00:18::2";
const NODE_BACKEND_SIDE6: &str = "fd00:18:1::1";
const BACKENDS6: [(&str, &str); 3] = [
    ("a", "fd00:18:1::2"),
    ("b", "fd00:18:1::3"),
    ("c", "fd00:18:1::4"),
];

/// Adds the IPv6 addresses and routes to `topology`, and turns on IPv6
/// forwarding in the node (the kernel forwards what the program hands it
/// before the neighbours are resolved). `nodad`: usable at once.
fn add_ipv6(topology: &Topology) {
    topology
        .node
        .run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let add = |ns: &gateway_tests::Netns, addr: &str, dev: &str| {
        ns.run(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            dev,
            "nodad",
        ]);
    };
    add(&topology.client, CLIENT6, "eth0");
    topology
        .client
        .run(&["ip", "-6", "route", "add", "default", "via", GATEWAY6]);
    add(&topology.node, GATEWAY6, "c0");
    add(&topology.node, NODE_BACKEND_SIDE6, "b0");
    for (_, addr) in BACKENDS6 {
        add(&topology.backend, addr, "eth0");
    }
    topology.backend.run(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        NODE_BACKEND_SIDE6,
    ]);
}

/// GatewayClass, Gateway `gw` on GATEWAY6 with a TCP listener (9000) and a
/// UDP listener (9001); Services `echo-a/b/c` (one IPv6 endpoint each, port
/// 7000) weighted 70/20/10 by a TCPRoute, and Service `udp` (port 5353 on
/// backend a) behind a UDPRoute.
fn manifests() -> String {
    let mut yaml = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: gwt
spec:
  controllerName: {controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: default
spec:
  gatewayClassName: gwt
  addresses:
  - value: "{GATEWAY6}"
  listeners:
  - name: tcp
    protocol: TCP
    port: 9000
  - name: udp
    protocol: UDP
    port: 9001
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata:
  name: echo
  namespace: default
spec:
  parentRefs:
  - name: gw
    sectionName: tcp
  rules:
  - backendRefs:
    - {{name: echo-a, port: 7000, weight: 70}}
    - {{name: echo-b, port: 7000, weight: 20}}
    - {{name: echo-c, port: 7000, weight: 10}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata:
  name: udp
  namespace: default
spec:
  parentRefs:
  - name: gw
    sectionName: udp
  rules:
  - backendRefs:
    - {{name: udp, port: 5353}}
"#,
        controller = gateway_agent::DEFAULT_CONTROLLER_NAME,
    );
    let services = BACKENDS6
        .iter()
        .map(|(name, addr)| (format!("echo-{name}"), *addr, 7000))
        .chain([("udp".to_string(), BACKENDS6[0].1, 5353)]);
    for (service, addr, port) in services {
        yaml += &format!(
            r#"---
apiVersion: v1
kind: Service
metadata:
  name: {service}
  namespace: default
spec:
  ports:
  - name: p
    port: {port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-1
  namespace: default
  labels:
    kubernetes.io/service-name: {service}
addressType: IPv6
ports:
- name: p
  port: {port}
endpoints:
- addresses: ["{addr}"]
"#
        );
    }
    yaml
}

fn tcp_target() -> SocketAddr {
    format!("[{GATEWAY6}]:9000").parse().expect("address")
}

/// The backend a new connection through the gateway reaches (one request).
fn new_flow(topology: &Topology) -> Result<String, String> {
    let stream = topology
        .client
        .connect_tcp(tcp_target())
        .map_err(|e| format!("connect: {e}"))?;
    ask_echo_backend(&stream)
}

/// The topology with IPv6, the three HTTP echo backends (and `more` backend
/// processes), and the agent on `manifests()`, once a new TCP connection
/// through the gateway reaches a backend. Fields drop in order: the agent,
/// the backends, then the namespaces.
struct ServingTcp {
    agent: Agent,
    _backends: Vec<Process>,
    topology: Topology,
}

fn serving_tcp(more: impl Fn(&Topology) -> Vec<Process>) -> ServingTcp {
    let topology = Topology::new();
    add_ipv6(&topology);
    let mut backends: Vec<_> = BACKENDS6
        .iter()
        .map(|(name, addr)| topology.backend_spawn(&["http-echo", &format!("[{addr}]:7000"), name]))
        .collect();
    backends.extend(more(&topology));
    let files = TempDir::new();
    files.write("all.yaml", &manifests());
    let agent = Agent::start(&topology, files);
    eventually(
        "TCP over IPv6 through the gateway",
        Duration::from_secs(20),
        || new_flow(&topology),
    );
    ServingTcp {
        agent,
        _backends: backends,
        topology,
    }
}

#[test]
fn tcp_over_ipv6_spreads_by_weight_and_a_flow_survives_an_agent_restart() {
    if !require_root("tcp_over_ipv6") {
        return;
    }
    let mut serving = serving_tcp(|_| Vec::new());
    let (agent, topology) = (&mut serving.agent, &serving.topology);
    let long_lived = topology
        .client
        .connect_tcp(tcp_target())
        .expect("connect through the gateway");
    let first = ask_echo_backend(&long_lived).expect("a request on the long-lived connection");

    let redirected_before = agent.packet_events(PacketEvent::Redirected);
    let flows: u32 = 300;
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..flows {
        let backend = new_flow(topology).unwrap_or_else(|e| panic!("flow {i}: {e}"));
        *counts.entry(backend).or_default() += 1;
    }
    let share = |name: &str| f64::from(counts.get(name).copied().unwrap_or(0)) / f64::from(flows);
    eprintln!("{flows} IPv6 flows by backend: {counts:?}");
    // 70/20/10 within about four standard deviations of 300 samples.
    assert!((share("a") - 0.7).abs() <= 0.10, "{counts:?}");
    assert!((share("b") - 0.2).abs() <= 0.08, "{counts:?}");
    assert!((share("c") - 0.1).abs() <= 0.06, "{counts:?}");
    inspect_shows_the_ipv6_route(topology, agent, flows);

    // The fast path: most packets redirected by the program (a connection is
    // at least 8 packets across both directions).
    let redirected = agent.packet_events(PacketEvent::Redirected) - redirected_before;
    assert!(
        redirected >= u64::from(flows) * 4,
        "redirected {redirected} packets for {flows} connections:\n{}",
        agent.log()
    );

    // Killed, the agent is no longer needed: the kernel keeps forwarding.
    agent.process.signal(libc::SIGKILL);
    agent.process.0.wait().expect("reap agent");
    assert_eq!(
        ask_echo_backend(&long_lived).as_deref(),
        Ok(first.as_str()),
        "with no agent"
    );
    assert!(new_flow(topology).is_ok(), "a new flow with no agent");

    agent.restart(topology);
    eventually("the new agent adopts", Duration::from_secs(20), || {
        let log = agent.log();
        if log.contains("adopted the pinned L4 state") && log.matches("config applied").count() >= 2
        {
            Ok(())
        } else {
            Err(log)
        }
    });
    assert_eq!(
        ask_echo_backend(&long_lived).as_deref(),
        Ok(first.as_str()),
        "after the restart"
    );
    assert!(new_flow(topology).is_ok(), "a new flow after the restart");
}

#[test]
fn udp_over_ipv6_is_forwarded_and_replies_come_from_the_gateway_address() {
    if !require_root("udp_over_ipv6") {
        return;
    }
    let topology = Topology::new();
    add_ipv6(&topology);
    let _backend = topology.backend_spawn(&["udp-echo", &format!("[{}]:5353", BACKENDS6[0].1)]);
    let files = TempDir::new();
    files.write("all.yaml", &manifests());
    let agent = Agent::start(&topology, files);
    let target = format!("[{GATEWAY6}]:9001");
    // udp-send connects its socket: only an answer from the gateway address
    // and port (the reply translated back) reaches it.
    let reply = eventually(
        "UDP over IPv6 through the gateway",
        Duration::from_secs(20),
        || topology.client_run(&["udp-send", &target, "datagram"]),
    );
    assert_eq!(reply, "datagram", "agent log:\n{}", agent.log());
    let redirected_before = agent.packet_events(PacketEvent::Redirected);
    for i in 0..20 {
        let message = format!("datagram {i}");
        assert_eq!(
            topology
                .client_run(&["udp-send", &target, &message])
                .as_deref(),
            Ok(message.as_str())
        );
    }
    let redirected = agent.packet_events(PacketEvent::Redirected) - redirected_before;
    assert!(redirected >= 40, "both directions redirected: {redirected}");
}

#[test]
fn path_mtu_discovery_over_ipv6_works_through_a_smaller_backend_link() {
    if !require_root("path_mtu_discovery_over_ipv6") {
        return;
    }
    let topology = Topology::new();
    add_ipv6(&topology);
    // The node's link towards the backends carries at most 1280 bytes (the
    // IPv6 minimum); the client and the backend both think 1500 is fine.
    topology
        .node
        .run(&["ip", "link", "set", "b0", "mtu", "1280"]);
    let (name, addr) = BACKENDS6[0];
    let _backend = topology.backend_spawn(&["http-echo", &format!("[{addr}]:7000"), name]);
    let files = TempDir::new();
    files.write("all.yaml", &manifests());
    let agent = Agent::start(&topology, files);
    // Until the route answers; then connections that reach backend a.
    eventually(
        "TCP over IPv6 through the gateway",
        Duration::from_secs(20),
        || new_flow(&topology).and_then(|b| if b == name { Ok(()) } else { Err(b) }),
    );
    let stream = eventually("a connection to backend a", Duration::from_secs(20), || {
        let stream = topology
            .client
            .connect_tcp(tcp_target())
            .map_err(|e| e.to_string())?;
        match ask_echo_backend(&stream) {
            Ok(b) if b == name => Ok(stream),
            other => Err(format!("{other:?}")),
        }
    });

    // 200 KB upstream: full-size segments must shrink to the link's MTU,
    // which only happens if the client hears "packet too big".
    let body = vec![b'x'; 200_000];
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nHost: l4\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    assert_eq!(
        exchange_with_echo_backend(&stream, &request).as_deref(),
        Ok(name),
        "the upload through a 1280-byte link; agent log:\n{}",
        agent.log()
    );
    assert!(
        agent.packet_events(PacketEvent::IcmpFragNeededSent) >= 1,
        "the program answered an oversized segment"
    );
}

/// The proof that IPv6 forwarding is the kernel's: with the agent frozen
/// (SIGSTOP), new TCP connections, a long-lived one and UDP datagrams all go
/// through, and the program's own counters show it redirected them.
#[test]
fn tcp_and_udp_over_ipv6_are_forwarded_while_the_agent_is_stopped() {
    if !require_root("ipv6_while_the_agent_is_stopped") {
        return;
    }
    let serving = serving_tcp(|topology| {
        vec![topology.backend_spawn(&["udp-echo", &format!("[{}]:5353", BACKENDS6[0].1)])]
    });
    let (agent, topology) = (&serving.agent, &serving.topology);
    let udp_target = format!("[{GATEWAY6}]:9001");
    eventually(
        "UDP over IPv6 through the gateway",
        Duration::from_secs(20),
        || topology.client_run(&["udp-send", &udp_target, "datagram"]),
    );
    let long_lived = topology
        .client
        .connect_tcp(tcp_target())
        .expect("connect through the gateway");
    let first = ask_echo_backend(&long_lived).expect("a request on the long-lived connection");

    agent.process.signal(libc::SIGSTOP);
    let redirected_before = agent.packet_events(PacketEvent::Redirected);
    let rounds = 5;
    for i in 0..rounds {
        if let Err(e) = new_flow(topology) {
            panic!("new TCP connection {i} with the agent stopped: {e}");
        }
        assert_eq!(
            ask_echo_backend(&long_lived).as_deref(),
            Ok(first.as_str()),
            "the long-lived connection, request {i} with the agent stopped"
        );
        let message = format!("datagram {i}");
        assert_eq!(
            topology
                .client_run(&["udp-send", &udp_target, &message])
                .as_deref(),
            Ok(message.as_str()),
            "UDP exchange {i} with the agent stopped"
        );
    }
    let redirected = agent.packet_events(PacketEvent::Redirected) - redirected_before;
    agent.process.signal(libc::SIGCONT);
    // A connection is at least 8 packets across both directions, a request
    // and its answer 2, a datagram and its reply 2.
    assert!(
        redirected >= rounds * (8 + 2 + 2),
        "redirected {redirected} packets with the agent stopped"
    );
}
