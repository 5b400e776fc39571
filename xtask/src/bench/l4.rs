//! L4: forwarding through a node namespace four ways, interleaved in one
//! run: the agent's XDP program (TCPRoute, UDPRoute), the same program as a
//! TC classifier (a second agent, `--attach tc`, on links of its own with the
//! kernel's default offloads), iptables DNAT (+ SNAT, conntrack) in the
//! kernel's forwarding path, and a userspace proxy (HAProxy `mode tcp`, one
//! thread; for UDP, which HAProxy lacks, `socat`). Figures:
//! HTTP through TCP (keep-alive, new connections, latency), the node's CPU
//! per new TCP connection at a fixed rate (`l4_conn`), small-UDP maximum
//! rate (generator on CPU 1, the node's forwarding steered to CPU 0) and node
//! CPU per datagram (`l4_udp`), bulk TCP (iperf3). Topology,
//! all private network namespaces on 198.18.0.0/15:
//!
//! ```text
//!  client ns            node ns                              backend ns
//!  eth0 198.18.0.2 ── c0 198.18.0.1 | b0 198.18.1.1 ── eth0 198.18.1.2
//!                   XDP   HAProxy/socat  iptables DNAT        nginx :8080 (1 KB)
//!   HTTP            :80   :81            :82                  UDP sink :9999
//!   UDP             :90   :91            :92                  iperf3 -s :5201
//!   iperf3          :5201 :5203          :5202
//!
//!  eth1 198.18.3.2 ── c1 198.18.3.1 | b1 198.18.4.1 ── eth1 198.18.4.2
//!                   iptables DNAT alone (no XDP on these links): HTTP :82, UDP :92, iperf3 :5202
//!  eth2 198.18.5.2 ── c2 198.18.5.1 | b2 198.18.6.1 ── eth2 198.18.6.2
//!                   the agent with --attach tc: HTTP :80, UDP :90, iperf3 :5201
//!  direct 198.18.2.1 ────────────────────────────────── direct 198.18.2.2
//!                   the reference (UDP, new connections): no node at all
//!  direct1 198.18.7.1 ──────────────────────────────── direct1 198.18.7.2
//!                   the same with default offloads (UDP, new connections)
//! ```

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::Budget;
use super::l4_conn::{self, ConnPath};
use super::l4_udp::{self, UdpPath};
use super::l7::{backend_nginx, oha_args, oha_latency};
use super::netns::{Daemon, Netns, http_status, wait_until};
use super::report::{Section, StageClock, bar_chart};
use super::stats::Summary;

pub const GATEWAY: &str = "198.18.0.1";
pub const CLIENT: &str = "198.18.0.2";
pub const BACKEND: &str = "198.18.1.2";
const BACKEND_PORT: u16 = 8080;
/// The node's second pair of links, without XDP: iptables on its own.
const PLAIN_CLIENT: &str = "198.18.3.2";
const PLAIN_GATEWAY: &str = "198.18.3.1";
const PLAIN_BACKEND: &str = "198.18.4.2";
/// The links of the agent attached with `--attach tc` (default offloads).
const TC_CLIENT: &str = "198.18.5.2";
const TC_GATEWAY: &str = "198.18.5.1";
const TC_BACKEND: &str = "198.18.6.2";
const TC_NAME: &str = "TC (gateway-agent --attach tc)";
/// The client–backend link that bypasses the node (the reference path),
/// offloads as on XDP's links.
const DIRECT_CLIENT: &str = "198.18.2.1";
const DIRECT_BACKEND: &str = "198.18.2.2";
/// A second one with the kernel's default offloads, as iptables' own links
/// and the TC agent's: the reference for those (new connections, UDP).
const PLAIN_DIRECT_CLIENT: &str = "198.18.7.1";
const PLAIN_DIRECT_BACKEND: &str = "198.18.7.2";
const IPERF_PORT: u16 = 5201;
const HOST: &str = super::l7::HOST;

pub struct Topology {
    pub client: Netns,
    pub node: Netns,
    pub backend: Netns,
}

impl Topology {
    fn new() -> anyhow::Result<Topology> {
        let t = Topology {
            client: Netns::new("l4c")?,
            node: Netns::new("l4n")?,
            backend: Netns::new("l4b")?,
        };
        t.link(&t.client, ("eth0", CLIENT), ("c0", GATEWAY), true)?;
        t.link(&t.backend, ("eth0", BACKEND), ("b0", "198.18.1.1"), true)?;
        // Links without XDP for iptables alone (the agent attaches to c0 and b0).
        t.link(
            &t.client,
            ("eth1", PLAIN_CLIENT),
            ("c1", PLAIN_GATEWAY),
            false,
        )?;
        t.link(
            &t.backend,
            ("eth1", PLAIN_BACKEND),
            ("b1", "198.18.4.1"),
            false,
        )?;
        // And for the TC agent, with the kernel's default offloads too.
        t.link(&t.client, ("eth2", TC_CLIENT), ("c2", TC_GATEWAY), false)?;
        t.link(
            &t.backend,
            ("eth2", TC_BACKEND),
            ("b2", "198.18.6.1"),
            false,
        )?;
        t.node.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        t.direct_link("direct", (DIRECT_CLIENT, DIRECT_BACKEND), true)?;
        t.direct_link(
            "direct1",
            (PLAIN_DIRECT_CLIENT, PLAIN_DIRECT_BACKEND),
            false,
        )?;
        Ok(t)
    }

    /// A veth pair `dev` straight from the client to the backend, bypassing
    /// the node: a reference path, whose cost (the client's send and the
    /// backend's receive) every path through the node pays too;
    /// `xdp_offloads`: as the peers of XDP's links, else kernel defaults.
    fn direct_link(
        &self,
        dev: &str,
        (client, backend): (&str, &str),
        xdp_offloads: bool,
    ) -> anyhow::Result<()> {
        crate::run_cmd(Command::new("ip").args([
            "link",
            "add",
            dev,
            "netns",
            &self.client.name,
            "type",
            "veth",
            "peer",
            "name",
            dev,
            "netns",
            &self.backend.name,
        ]))?;
        for (ns, addr) in [(&self.client, client), (&self.backend, backend)] {
            ns.run(&["ip", "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ns.run(&["ip", "link", "set", dev, "up"])?;
            if xdp_offloads {
                // As XDP's links' peers: full checksums, GRO (NAPI delivery).
                ns.run(&["ethtool", "-K", dev, "tx", "off", "gro", "on"])?;
            }
        }
        Ok(())
    }

    /// A veth pair between `peer` (`peer_if`, `peer_addr`) and the node
    /// (`node_if`, `node_addr`), /24; `via_node`: the peer's default route
    /// (the links the agent's XDP program is attached to); the others keep
    /// the kernel's default offloads.
    fn link(
        &self,
        peer: &Netns,
        (peer_if, peer_addr): (&str, &str),
        (node_if, node_addr): (&str, &str),
        via_node: bool,
    ) -> anyhow::Result<()> {
        crate::run_cmd(Command::new("ip").args([
            "link",
            "add",
            peer_if,
            "netns",
            &peer.name,
            "type",
            "veth",
            "peer",
            "name",
            node_if,
            "netns",
            &self.node.name,
        ]))?;
        peer.run(&[
            "ip",
            "addr",
            "add",
            &format!("{peer_addr}/24"),
            "dev",
            peer_if,
        ])?;
        peer.run(&["ip", "link", "set", peer_if, "up"])?;
        if via_node {
            peer.run(&["ip", "route", "add", "default", "via", node_addr])?;
        }
        self.node.run(&[
            "ip",
            "addr",
            "add",
            &format!("{node_addr}/24"),
            "dev",
            node_if,
        ])?;
        self.node.run(&["ip", "link", "set", node_if, "up"])?;
        // As the e2e harness: full checksums from the peers (native XDP sees
        // raw frames), GRO so that veth accepts XDP-redirected frames.
        if via_node {
            peer.run(&["ethtool", "-K", peer_if, "tx", "off", "gro", "on"])?;
        }
        Ok(())
    }
}

/// An agent serving `gateway`'s listeners from the backend at `backend`,
/// attached to `interfaces` as `attach` says.
struct AgentSetup {
    name: &'static str,
    gateway: &'static str,
    backend: &'static str,
    interfaces: &'static str,
    attach: &'static str,
    admin: &'static str,
}

const XDP_AGENT: AgentSetup = AgentSetup {
    name: "xdp",
    gateway: GATEWAY,
    backend: BACKEND,
    interfaces: "c0,b0",
    attach: "xdp",
    admin: "127.0.0.1:9470",
};

const TC_AGENT: AgentSetup = AgentSetup {
    name: "tc",
    gateway: TC_GATEWAY,
    backend: TC_BACKEND,
    interfaces: "c2,b2",
    attach: "tc",
    admin: "127.0.0.1:9471",
};

fn start_agent(
    node: &Netns,
    dir: &Path,
    agent: &Path,
    setup: &AgentSetup,
) -> anyhow::Result<Daemon> {
    let AgentSetup {
        gateway, backend, ..
    } = setup;
    let manifests_dir = dir.join(format!("manifests-{}", setup.name));
    std::fs::create_dir_all(&manifests_dir)?;
    let sink_port = l4_udp::SINK_PORT;
    let text = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: bench\nspec:\n  controllerName: gateway-agent.dev/node-agent\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: default\nspec:\n  gatewayClassName: bench\n  addresses:\n  - value: {gateway}\n  listeners:\n  - name: tcp\n    protocol: TCP\n    port: 80\n  - name: udp\n    protocol: UDP\n    port: 90\n  - name: iperf\n    protocol: TCP\n    port: {IPERF_PORT}\n\
         {tcp_route}{udp_route}{iperf_route}{web}{sink}{iperf}",
        tcp_route = route("TCPRoute", "web", "tcp", "web"),
        udp_route = route("UDPRoute", "sink", "udp", "sink"),
        iperf_route = route("TCPRoute", "iperf", "iperf", "iperf"),
        web = service("web", backend, BACKEND_PORT),
        sink = service("sink", backend, sink_port),
        iperf = service("iperf", backend, IPERF_PORT),
    );
    std::fs::write(manifests_dir.join("l4.yaml"), text)?;
    node.spawn(
        Some(0),
        &[
            agent.to_str().context("utf-8")?,
            "run",
            "--manifests",
            manifests_dir.to_str().context("utf-8")?,
            "--interfaces",
            setup.interfaces,
            "--xdp-mode",
            "native",
            "--attach",
            setup.attach,
            "--name",
            &format!("{}-{}", node.name, setup.name),
            "--admin-address",
            setup.admin,
        ],
        &dir.join(format!("agent-{}.log", setup.name)),
    )
}

/// An L4 route of `kind` on listener `section` of Gateway `gw` to Service `service` port 80.
fn route(kind: &str, name: &str, section: &str, service: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw\n    sectionName: {section}\n  rules:\n  - backendRefs:\n    - name: {service}\n      port: 80\n"
    )
}

/// Service `name` (port 80) with one endpoint: `backend`'s `port`.
fn service(name: &str, backend: &str, port: u16) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  ports:\n  - name: p\n    port: 80\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: p\n  port: {port}\nendpoints:\n- addresses: [\"{backend}\"]\n"
    )
}

fn start_haproxy(node: &Netns, dir: &Path) -> anyhow::Result<Daemon> {
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         listen l4\n  bind {GATEWAY}:81\n  server s1 {BACKEND}:{BACKEND_PORT}\n\
         listen bulk\n  bind {GATEWAY}:5203\n  server s1 {BACKEND}:{IPERF_PORT}\n"
    );
    let path = dir.join("haproxy-tcp.cfg");
    std::fs::write(&path, conf)?;
    node.spawn(
        Some(0),
        &["haproxy", "-db", "-f", path.to_str().context("utf-8")?],
        &dir.join("haproxy.log"),
    )
}

/// DNAT of the iptables ports to the backend, and SNAT (masquerade) of
/// what leaves towards it: conntrack tracks every flow.
fn iptables_dnat(node: &Netns) -> anyhow::Result<()> {
    let sink = l4_udp::SINK_PORT;
    for (gateway, backend, protocol, port, to) in [
        (GATEWAY, BACKEND, "tcp", "82", BACKEND_PORT),
        (GATEWAY, BACKEND, "udp", "92", sink),
        (GATEWAY, BACKEND, "tcp", "5202", IPERF_PORT),
        (PLAIN_GATEWAY, PLAIN_BACKEND, "tcp", "82", BACKEND_PORT),
        (PLAIN_GATEWAY, PLAIN_BACKEND, "udp", "92", sink),
        (PLAIN_GATEWAY, PLAIN_BACKEND, "tcp", "5202", IPERF_PORT),
    ] {
        let to = format!("{backend}:{to}");
        node.run(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            gateway,
            "-p",
            protocol,
            "--dport",
            port,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ])?;
    }
    for (link, backend) in [("b0", BACKEND), ("b1", PLAIN_BACKEND)] {
        for protocol in ["tcp", "udp"] {
            node.run(&[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                link,
                "-p",
                protocol,
                "-d",
                backend,
                "-j",
                "MASQUERADE",
            ])?;
        }
    }
    Ok(())
}

/// The userspace UDP relay: socat, one child process per client address.
fn start_socat(node: &Netns, dir: &Path) -> anyhow::Result<Daemon> {
    let listen = format!("UDP4-LISTEN:91,bind={GATEWAY},fork,reuseaddr");
    let to = format!("UDP4:{BACKEND}:{}", l4_udp::SINK_PORT);
    node.spawn(
        Some(0),
        &["socat", "-T", "60", &listen, &to],
        &dir.join("socat.log"),
    )
}

/// (requests/s, socket errors + non-2xx) from wrk's output.
fn wrk_result(out: &str) -> anyhow::Result<(f64, u64)> {
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))?;
    let mut errors = 0;
    for line in out.lines() {
        if let Some(rest) = line.trim().strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        if let Some(rest) = line.trim().strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Ok((rps, errors))
}

/// `BENCH_L4_PERF=<dir>`: starts `perf record -g -a` (both CPUs) into
/// `<dir>/<file>` for `seconds` and gives it `settle` to set up before the
/// run it profiles; `perf` is the command that runs perf (under `chrt`,
/// say), `perf_args` go after `record` (an event, say). None without the
/// variable.
pub fn start_profile(
    file: &str,
    seconds: u32,
    perf: &[&str],
    perf_args: &[&str],
    settle: Duration,
) -> anyhow::Result<Option<std::process::Child>> {
    let Some(dir) = std::env::var_os("BENCH_L4_PERF") else {
        return Ok(None);
    };
    let child = Command::new(perf[0])
        .args(&perf[1..])
        .args(["record", "-q", "-g", "-a"])
        .args(perf_args)
        .arg("-o")
        .arg(Path::new(&dir).join(file))
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(settle);
    Ok(Some(child))
}

pub fn run(
    agent: &Path,
    helpers: &super::Helpers,
    budget: Budget,
    out_dir: &Path,
    stamp: &str,
) -> anyhow::Result<Section> {
    let mut clock = StageClock::start();
    // First, on a machine not yet busy with the forwarding runs.
    let program_cost = super::l4_cost::run(&helpers.program_cost, budget, &mut clock)?;
    println!("==> bench l4: XDP and TC vs iptables DNAT vs userspace TCP proxy");
    let topology = Topology::new()?;
    let dir = std::env::temp_dir().join(&topology.node.name);
    std::fs::create_dir_all(&dir)?;
    let result = measure(&topology, &dir, agent, budget, out_dir, stamp, &mut clock);
    let _ = std::fs::remove_dir_all(&dir);
    let mut section = result?;
    section.markdown.push_str(&program_cost);
    drop(topology);
    clock.lap("teardown");
    section.markdown.push_str(&clock.markdown());
    Ok(section)
}

fn measure(
    t: &Topology,
    dir: &Path,
    agent: &Path,
    budget: Budget,
    out_dir: &Path,
    stamp: &str,
    clock: &mut StageClock,
) -> anyhow::Result<Section> {
    // On every address: the XDP and the TC agent reach it on links of their own.
    let _backend = backend_nginx(&t.backend, dir, &format!("0.0.0.0:{BACKEND_PORT}"), 1)?;
    let tc_agent = start_agent(&t.node, dir, agent, &TC_AGENT)?;
    let agent = start_agent(&t.node, dir, agent, &XDP_AGENT)?;
    let _haproxy = start_haproxy(&t.node, dir)?;
    let socat = start_socat(&t.node, dir)?;
    let _iperf = t.backend.spawn(
        Some(0),
        &["iperf3", "-s", "-p", &IPERF_PORT.to_string()],
        &dir.join("iperf3.log"),
    )?;
    iptables_dnat(&t.node)?;
    let modes = [
        ("XDP (gateway-agent)", GATEWAY, 80u16),
        ("iptables DNAT", GATEWAY, 82),
        ("HAProxy mode tcp", GATEWAY, 81),
        (TC_NAME, TC_GATEWAY, 80),
    ];
    for (name, gateway, port) in modes {
        let addr = format!("{gateway}:{port}");
        t.client
            .within(|| {
                wait_until(name, Duration::from_secs(30), || {
                    http_status(&addr, HOST, "/") == 200
                })
            })?
            .with_context(|| format!("{name} does not forward; logs in {}", dir.display()))?;
    }
    clock.lap("setup (namespaces, agents, proxies)");
    let secs = format!("-d{}s", budget.seconds.min(HTTP_SECONDS));
    let n = modes.len();
    let (mut keepalive, mut per_conn, mut errors) =
        (vec![vec![]; n], vec![vec![]; n], vec![0u64; n]);
    for repeat in 0..budget.repeats {
        for (i, (name, gateway, port)) in modes.iter().enumerate() {
            let url = format!("http://{gateway}:{port}/");
            let host = format!("Host: {HOST}");
            let (rps, e) = wrk_result(
                &t.client
                    .run_pinned(1, &["wrk", "-t1", "-c64", &secs, "-H", &host, &url])?,
            )?;
            keepalive[i].push(rps);
            errors[i] += e;
            // wrk gives up when no connection at all succeeds: that run counts as
            // 0 connections/s and one error, and the report goes on.
            let (cps, e) = match t.client.run_pinned(
                1,
                &[
                    "wrk",
                    "-t1",
                    "-c16",
                    &secs,
                    "-H",
                    &host,
                    "-H",
                    "Connection: close",
                    &url,
                ],
            ) {
                Ok(out) => wrk_result(&out)?,
                Err(error) => {
                    println!("    {name}: {error:#}");
                    (0.0, 1)
                }
            };
            per_conn[i].push(cps);
            errors[i] += e;
            println!("    repeat {repeat}: {name}: {rps:.0} req/s keep-alive, {cps:.0} conn/s");
        }
    }
    let ka = Summary::each(&keepalive);
    let pc = Summary::each(&per_conn);
    clock.lap("HTTP req/s and new connections/s (wrk)");
    let rate = (ka[1].median / 2.0).floor();
    let (mut p50, mut p99) = (vec![vec![]; n], vec![vec![]; n]);
    for repeat in 0..budget.repeats {
        for (i, (name, gateway, port)) in modes.iter().enumerate() {
            let url = format!("http://{gateway}:{port}/");
            let seconds = budget.seconds.min(HTTP_SECONDS);
            let args = oha_args(
                Duration::from_secs(seconds.into()),
                rate,
                64,
                HOST,
                &url,
                "json",
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (a, b, e) = oha_latency(&t.client.run_pinned(1, &args)?)?;
            println!("    repeat {repeat}: {name} at {rate} req/s: p50 {a:.2} ms, p99 {b:.2} ms");
            p50[i].push(a);
            p99[i].push(b);
            errors[i] += e;
        }
    }
    clock.lap("HTTP latency (oha)");
    let p50s = Summary::each(&p50);
    let p99s = Summary::each(&p99);
    let mut md = format!(
        "Client (wrk/oha) and backend (nginx, 1 KB) on CPU 1, HAProxy and the agent processes on CPU 0; packet processing (XDP, \
         TC, netfilter) runs in softirq on whichever CPU the veth delivers on. The XDP program stays attached to the node's \
         interfaces during the iptables and HAProxy runs (it looks up and passes their packets); the TC agent has links of \
         its own, with the kernel's default offloads. HTTP runs of {http_secs} s.\n\n\
         | path | HTTP keep-alive req/s (wrk -c64) | × iptables | new connections/s (wrk -c16, Connection: close) | × iptables | p50 ms at {rate:.0} req/s (oha) | p99 ms | errors |\n\
         |---|---|---|---|---|---|---|---|\n",
        http_secs = budget.seconds.min(HTTP_SECONDS),
    );
    for (i, (name, ..)) in modes.iter().enumerate() {
        md.push_str(&format!(
            "| {name} | {} | {:.2} | {} | {:.2} | {} | {} | {} |\n",
            ka[i].show(0),
            ka[i].median / ka[1].median,
            pc[i].show(0),
            pc[i].median / pc[1].median,
            p50s[i].show(3),
            p99s[i].show(3),
            errors[i]
        ));
    }
    md.push('\n');
    let names: Vec<String> = modes.iter().map(|(n, ..)| n.to_string()).collect();
    let bars = |v: &[Summary]| -> Vec<(String, Summary)> {
        names.iter().cloned().zip(v.iter().copied()).collect()
    };
    md.push_str(&bar_chart(
        out_dir,
        &format!("{stamp}-l4-rps"),
        "L4 forwarding, HTTP keep-alive through the node (wrk)",
        "requests/s",
        &bars(&ka),
    ));
    md.push_str(&bar_chart(
        out_dir,
        &format!("{stamp}-l4-cps"),
        "L4 forwarding, one connection per request (wrk)",
        "connections/s",
        &bars(&pc),
    ));
    md.push_str(&bar_chart(
        out_dir,
        &format!("{stamp}-l4-p99"),
        &format!("L4 p99 latency at {rate:.0} req/s (oha)"),
        "ms",
        &bars(&p99s),
    ));
    println!("==> bench l4: new TCP connections, the node's CPU per connection");
    // Each path through the node against the direct link with its client
    // and backend ends' offloads (GRO and software checksums cost the
    // client and backend ~6 µs per connection more).
    let (xdp_reference, plain_reference) = (Some(4), Some(5));
    let conn_paths = [
        ConnPath {
            name: "XDP (gateway-agent)",
            to: (GATEWAY, 80),
            reference: xdp_reference,
        },
        ConnPath {
            name: "iptables DNAT, own links",
            to: (PLAIN_GATEWAY, 82),
            reference: plain_reference,
        },
        ConnPath {
            name: "iptables DNAT, XDP's links",
            to: (GATEWAY, 82),
            reference: xdp_reference,
        },
        ConnPath {
            name: TC_NAME,
            to: (TC_GATEWAY, 80),
            reference: plain_reference,
        },
        ConnPath {
            name: "direct, no node, XDP's offloads (reference)",
            to: (DIRECT_BACKEND, BACKEND_PORT),
            reference: None,
        },
        ConnPath {
            name: "direct, no node, default offloads (reference)",
            to: (PLAIN_DIRECT_BACKEND, BACKEND_PORT),
            reference: None,
        },
    ];
    let conn = l4_conn::measure(t, &conn_paths, budget, out_dir, stamp)?;
    clock.lap("new TCP connections, CPU per connection (h2load)");
    md.push_str(&conn.markdown);
    println!("==> bench l4: small UDP, maximum rate and node CPU per datagram");
    // As for new connections: each path against the direct link with its
    // own links' offloads.
    let (xdp_reference, plain_reference) = (Some(5), Some(6));
    let udp_paths = [
        UdpPath {
            name: "XDP (gateway-agent)",
            from: CLIENT,
            client_dev: "eth0",
            to: (GATEWAY, 90),
            process: Some(agent.pid()),
            ingress: (&t.node, "c0"),
            napi: true,
            relay: false,
            reference: xdp_reference,
        },
        UdpPath {
            name: "iptables DNAT, own links",
            from: PLAIN_CLIENT,
            client_dev: "eth1",
            to: (PLAIN_GATEWAY, 92),
            process: None,
            ingress: (&t.node, "c1"),
            napi: false,
            relay: false,
            reference: plain_reference,
        },
        UdpPath {
            name: "iptables DNAT, XDP's links",
            from: CLIENT,
            client_dev: "eth0",
            to: (GATEWAY, 92),
            process: None,
            ingress: (&t.node, "c0"),
            napi: true,
            relay: false,
            reference: xdp_reference,
        },
        UdpPath {
            name: "socat (userspace relay)",
            from: CLIENT,
            client_dev: "eth0",
            to: (GATEWAY, 91),
            process: Some(socat.pid()),
            ingress: (&t.node, "c0"),
            napi: true,
            relay: true,
            reference: xdp_reference,
        },
        UdpPath {
            name: TC_NAME,
            from: TC_CLIENT,
            client_dev: "eth2",
            to: (TC_GATEWAY, 90),
            process: Some(tc_agent.pid()),
            ingress: (&t.node, "c2"),
            napi: false,
            relay: false,
            reference: plain_reference,
        },
        UdpPath {
            name: "direct, no node, XDP's offloads (reference)",
            from: DIRECT_CLIENT,
            client_dev: "direct",
            to: (DIRECT_BACKEND, l4_udp::SINK_PORT),
            process: None,
            // GRO on: NAPI delivery.
            ingress: (&t.backend, "direct"),
            napi: true,
            relay: false,
            reference: None,
        },
        UdpPath {
            name: "direct, no node, default offloads (reference)",
            from: PLAIN_DIRECT_CLIENT,
            client_dev: "direct1",
            to: (PLAIN_DIRECT_BACKEND, l4_udp::SINK_PORT),
            process: None,
            // GRO off: the backlog.
            ingress: (&t.backend, "direct1"),
            napi: false,
            relay: false,
            reference: None,
        },
    ];
    let udp = l4_udp::measure(t, &udp_paths, budget, out_dir, stamp)?;
    clock.lap("small UDP");
    md.push_str("\n### Small UDP: maximum rate and node CPU per datagram\n\n");
    md.push_str(&udp.markdown);
    println!("==> bench l4: bulk TCP (iperf3)");
    let bulk_modes = [
        ("XDP (gateway-agent)", GATEWAY, IPERF_PORT),
        ("iptables DNAT, own links", PLAIN_GATEWAY, 5202),
        ("iptables DNAT, XDP's links", GATEWAY, 5202),
        ("HAProxy mode tcp", GATEWAY, 5203),
        (TC_NAME, TC_GATEWAY, IPERF_PORT),
    ];
    let bulk = bulk_tcp(t, &bulk_modes, budget)?;
    clock.lap("bulk TCP (iperf3)");
    md.push_str(&bulk.markdown);
    md.push_str(&bar_chart(
        out_dir,
        &format!("{stamp}-l4-bulk"),
        "L4 bulk TCP through the node (iperf3, one stream)",
        "Gbit/s",
        &bulk_modes
            .iter()
            .map(|(name, ..)| name.to_string())
            .zip(bulk.gbits.iter().copied())
            .collect::<Vec<_>>(),
    ));
    // The TC agent's rows: last of the HTTP modes and the bulk paths.
    let tc = TcRows {
        http: modes.len() - 1,
        conn: conn_paths
            .iter()
            .position(|p| p.name == TC_NAME)
            .context("TC's new-connection row")?,
        udp: udp_paths
            .iter()
            .position(|p| p.name == TC_NAME)
            .context("TC's UDP row")?,
        bulk: bulk_modes.len() - 1,
    };
    md.push_str(&goals(&pc, &conn, &udp, &bulk.gbits, &tc));
    Ok(Section {
        title: "L4: XDP and TC vs iptables DNAT vs userspace TCP proxy".into(),
        markdown: md,
    })
}

struct Bulk {
    markdown: String,
    gbits: Vec<Summary>,
}

/// Longest HTTP load run (wrk, oha): four paths, three figures and five
/// repeats each; at 5 s that alone took 300 s of the run's 20-minute budget,
/// and wrk's rate settles within a second.
const HTTP_SECONDS: u32 = 3;

/// Longest iperf3 run: one stream reaches its rate within a second, and four
/// paths per repeat would otherwise push `bench all` past 20 minutes.
const BULK_SECONDS: u32 = 3;

/// One iperf3 stream (client on CPU 1, server on CPU 0) through each path.
/// XDP stays attached throughout: native XDP on a veth without multi-buffer
/// support turns GSO off on its peer, so every path carries MTU-sized
/// segments from the client; the report shows the client link's offloads.
fn bulk_tcp(t: &Topology, modes: &[(&str, &str, u16)], budget: Budget) -> anyhow::Result<Bulk> {
    let n = modes.len();
    let (mut gbits, mut retransmits) = (vec![vec![]; n], vec![0u64; n]);
    let secs = budget.seconds.min(BULK_SECONDS).to_string();
    for repeat in 0..budget.repeats {
        for (i, (name, gateway, port)) in modes.iter().enumerate() {
            let port = port.to_string();
            let args = ["iperf3", "-c", gateway, "-p", &port, "-t", &secs, "-J"];
            // The server takes a moment to finish the previous test: it
            // answers "busy" (iperf3 exits non-zero) until then.
            let mut attempt = 0;
            let out = loop {
                match t.client.run_pinned(1, &args) {
                    Err(error) if attempt < 50 && format!("{error:#}").contains("busy") => {
                        attempt += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    other => break other?,
                }
            };
            let (rate, retrans) = iperf3_result(&out)?;
            println!(
                "    repeat {repeat}: {name}: {:.2} Gbit/s, {retrans} retransmits",
                rate / 1e9
            );
            gbits[i].push(rate / 1e9);
            retransmits[i] += retrans;
        }
    }
    let gbits = Summary::each(&gbits);
    let link = |interface: &str| -> String {
        let offloads = t
            .client
            .run(&["ethtool", "-k", interface])
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                ["tcp-segmentation-offload:", "generic-segmentation-offload:"]
                    .iter()
                    .any(|k| l.trim_start().starts_with(k))
            })
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(", ");
        let mtu = t
            .client
            .run(&["cat", &format!("/sys/class/net/{interface}/mtu")])
            .unwrap_or_default();
        format!("MTU {}, {offloads}", mtu.trim())
    };
    let mut md = format!(
        "\n### Bulk TCP (iperf3)\n\n{}: one stream for {} s, client on CPU 1, `iperf3 -s` in the backend namespace on CPU 0; \
         the rate the receiver reports. The client's side of XDP's links (TX checksum offload off, as native XDP needs \
         full checksums; the program attached on the node's side): {}; of iptables' own links (kernel defaults): {}; \
         of the TC agent's links (kernel defaults): {}.\n\n\
         | path | Gbit/s | × iptables | retransmits (all repeats) |\n|---|---|---|---|\n",
        super::tools::version("iperf3", "--version"),
        budget.seconds.min(BULK_SECONDS),
        link("eth0"),
        link("eth1"),
        link("eth2"),
    );
    for (i, (name, ..)) in modes.iter().enumerate() {
        md.push_str(&format!(
            "| {name} | {} | {:.2} | {} |\n",
            gbits[i].show(2),
            gbits[i].median / gbits[1].median,
            retransmits[i]
        ));
    }
    md.push('\n');
    Ok(Bulk {
        markdown: md,
        gbits,
    })
}

/// (bits/s received, retransmits) from `iperf3 -J`.
fn iperf3_result(out: &str) -> anyhow::Result<(f64, u64)> {
    let json: serde_json::Value =
        serde_json::from_str(out).with_context(|| format!("iperf3 JSON:\n{out}"))?;
    if let Some(error) = json["error"].as_str() {
        anyhow::bail!("iperf3: {error}");
    }
    let end = &json["end"];
    let rate = end["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received in iperf3 output:\n{out}"))?;
    Ok((rate, end["sum_sent"]["retransmits"].as_u64().unwrap_or(0)))
}

/// Where the TC agent's figures are in each list (XDP's are first).
struct TcRows {
    http: usize,
    conn: usize,
    udp: usize,
    bulk: usize,
}

/// Issue 5's goals against iptables (index 1), met or missed, for the better
/// of XDP (index 0) and TC, named.
fn goals(
    per_conn: &[Summary],
    conn: &l4_conn::ConnFigures,
    udp: &l4_udp::UdpFigures,
    bulk: &[Summary],
    tc: &TcRows,
) -> String {
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    // (ratio to iptables) of XDP and TC, the better one first with its name.
    let best = |v: &[Summary], tc: usize, lower_is_better: bool| -> (f64, &str, String) {
        let (xdp, tc) = (v[0].median / v[1].median, v[tc].median / v[1].median);
        let detail = format!("XDP {xdp:.2}×, TC {tc:.2}×");
        if (tc < xdp) == lower_is_better {
            (tc, "TC", detail)
        } else {
            (xdp, "XDP", detail)
        }
    };
    let cpu = best(&udp.node_ns, tc.udp, true);
    let max = best(&udp.max_rate, tc.udp, false);
    let max_cpu = best(&udp.node_capacity, tc.udp, false);
    let cps = best(per_conn, tc.http, false);
    let conn_capacity = best(&conn.node_capacity, tc.conn, false);
    let bulk = best(bulk, tc.bulk, false);
    format!(
        "Goals (issue 5), the better of the agent's XDP and TC modes against iptables DNAT (UDP, bulk and the node's \
         capacity for new connections: on its own links, without XDP; new connections end to end: on XDP's links; TC on links of its own): the node's own CPU per datagram at a fixed rate \
         ≤ 0.5×: {} ({:.2}×, {}; {}); maximum small-UDP rate ≥ 1.5×: {} ({:.2}× delivered, generator on CPU 1, \
         node on CPU 0, {}; {}; the node's capacity per CPU at the fixed rate: {} ({:.2}×, {}; {})); new connections/s ≥ 1.5×: end to end (wrk; set by the client and backend sharing CPU 1, not by the node; iptables on XDP's links): \
         {} ({:.2}×, {}; {}); the node's capacity for new connections per CPU (10⁹ / its own CPU per connection at {} connections/s; \
         iptables on its own links): {} ({:.2}×, {}; {}); \
         bulk TCP ≥ 0.95×: {} ({:.2}×, {}; {}).\n",
        verdict(cpu.0 <= 0.5),
        cpu.0,
        cpu.1,
        cpu.2,
        verdict(max.0 >= 1.5),
        max.0,
        max.1,
        max.2,
        verdict(max_cpu.0 >= 1.5),
        max_cpu.0,
        max_cpu.1,
        max_cpu.2,
        verdict(cps.0 >= 1.5),
        cps.0,
        cps.1,
        cps.2,
        l4_conn::RATE,
        verdict(conn_capacity.0 >= 1.5),
        conn_capacity.0,
        conn_capacity.1,
        conn_capacity.2,
        verdict(bulk.0 >= 0.95),
        bulk.0,
        bulk.1,
        bulk.2,
    )
}
