//! TCPRoute traffic is forwarded by the XDP program, not by the agent process.

use std::time::Duration;

use gateway_common::PacketEvent;
use gateway_tests::{
    Agent, BACKEND_ADDR, GATEWAY_ADDR, TempDir, Topology, class_and_service, eventually,
    gateway_with, require_root,
};

/// A Gateway listener on port 9000 and an L4 route of `kind` to Service
/// `echo` port `backend_port`.
fn l4_gateway(protocol: &str, kind: &str, backend_port: u16) -> String {
    let route = format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: {kind}
metadata:
  name: echo
  namespace: default
spec:
  parentRefs:
  - name: gw
  rules:
  - backendRefs:
    - name: echo
      port: {backend_port}
"#
    );
    gateway_with(protocol, 9000, &route)
}

#[test]
fn tcp_flows_through_xdp_while_the_agent_is_stopped_and_not_once_detached() {
    if !require_root("tcp_flows_through_xdp") {
        return;
    }
    let topology = Topology::new();
    let _backend = topology.backend_spawn(&["tcp-echo", &format!("{BACKEND_ADDR}:7000")]);
    let manifests = TempDir::new();
    manifests.write(
        "all.yaml",
        &(class_and_service("echo", 7000, 7000) + &l4_gateway("TCP", "TCPRoute", 7000)),
    );
    let mut agent = Agent::start(&topology, manifests);
    let gateway = format!("{GATEWAY_ADDR}:9000");

    let reply = eventually("TCP through the gateway", Duration::from_secs(20), || {
        topology.client_run(&["tcp-send", &gateway, "ping"])
    });
    assert_eq!(reply, "ping", "agent log:\n{}", agent.log());
    let packets_before = agent.route_counter(0, "packets");
    let flows_before = agent.route_counter(0, "new_flows");
    assert!(
        packets_before >= 4,
        "a TCP exchange is several packets: {packets_before}"
    );
    assert!(flows_before >= 1);
    // The fast path: rewritten and redirected by the program, not handed to the kernel.
    let redirected = agent.packet_events(PacketEvent::Redirected);
    assert!(
        redirected >= packets_before / 2,
        "redirected {redirected} of {packets_before}"
    );

    // With the agent frozen, the kernel keeps forwarding and counting.
    agent.process.signal(libc::SIGSTOP);
    for i in 0..5 {
        let message = format!("while stopped {i}");
        let reply = topology.client_run(&["tcp-send", &gateway, &message]);
        assert_eq!(
            reply.as_deref(),
            Ok(message.as_str()),
            "exchange {i} with the agent stopped"
        );
    }
    let packets_stopped = agent.route_counter(0, "packets");
    let flows_stopped = agent.route_counter(0, "new_flows");
    assert!(
        packets_stopped > packets_before,
        "{packets_stopped} > {packets_before}"
    );
    assert_eq!(
        flows_stopped,
        flows_before + 5,
        "one new flow per connection"
    );
    agent.process.signal(libc::SIGCONT);

    // /metrics reports the same figures as the pinned map.
    let metrics = topology
        .client_run(&[
            "http-get",
            &format!("{GATEWAY_ADDR}:9470"),
            "/metrics",
            "node",
        ])
        .expect("scrape /metrics");
    let flows_line = format!(
        "gateway_l4_route_flows_total{{kind=\"TCPRoute\",namespace=\"default\",name=\"echo\",rule=\"0\"}} {flows_stopped}"
    );
    assert!(
        metrics.lines().any(|l| l == flows_line),
        "no {flows_line:?} in:\n{metrics}"
    );

    // Nothing in the node listens on the gateway port: once the program is
    // gone with the agent, connections are refused.
    agent.process.0.kill().expect("kill agent");
    agent.process.0.wait().expect("reap agent");
    eventually(
        "refusal once XDP is detached",
        Duration::from_secs(10),
        || match topology.client_run(&["tcp-send", &gateway, "after"]) {
            Ok(reply) => Err(format!("still forwarded: {reply:?}")),
            Err(e) => Ok(e),
        },
    );
}

#[test]
fn udp_datagrams_are_forwarded_and_replies_translated_back() {
    if !require_root("udp_datagrams_are_forwarded") {
        return;
    }
    let topology = Topology::new();
    let _backend = topology.backend_spawn(&["udp-echo", &format!("{BACKEND_ADDR}:5353")]);
    let manifests = TempDir::new();
    let gateway = l4_gateway("UDP", "UDPRoute", 5353);
    manifests.write(
        "all.yaml",
        &(class_and_service("echo", 5353, 5353) + &gateway),
    );
    let agent = Agent::start(&topology, manifests);
    let target = format!("{GATEWAY_ADDR}:9000");

    let reply = eventually("UDP through the gateway", Duration::from_secs(20), || {
        topology.client_run(&["udp-send", &target, "datagram"])
    });
    assert_eq!(reply, "datagram", "agent log:\n{}", agent.log());
    // Each send is a new flow (new source port); the reply came back through
    // the program, translated to come from the gateway address.
    for i in 0..3 {
        let message = format!("datagram {i}");
        assert_eq!(
            topology
                .client_run(&["udp-send", &target, &message])
                .as_deref(),
            Ok(message.as_str())
        );
    }
    assert!(agent.route_counter(0, "new_flows") >= 4);
    assert!(
        agent.route_counter(0, "packets") >= 8,
        "both directions are counted"
    );
}
