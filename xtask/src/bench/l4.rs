//! L4: TCP forwarding through a node namespace three ways, interleaved in
//! one run: the agent's XDP program (TCPRoute), iptables DNAT (+ SNAT) in the
//! kernel's forwarding path, and a userspace TCP proxy (HAProxy `mode tcp`,
//! one thread). Topology, all private network namespaces on 198.18.0.0/15:
//!
//! ```text
//!  client ns            node ns                              backend ns
//!  eth0 198.18.0.2 ── c0 198.18.0.1 | b0 198.18.1.1 ── eth0 198.18.1.2 (nginx, 1 KB)
//!                       :80 XDP   :81 HAProxy   :82 iptables DNAT
//! ```

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::Budget;
use super::l7::{backend_nginx, oha_args, oha_latency};
use super::netns::{Daemon, Netns, http_status, wait_until};
use super::report::{Section, bar_chart};
use super::stats::Summary;

const GATEWAY: &str = "198.18.0.1";
const BACKEND: &str = "198.18.1.2";
const BACKEND_PORT: u16 = 8080;
const HOST: &str = super::l7::HOST;

struct Topology {
    client: Netns,
    node: Netns,
    backend: Netns,
}

impl Topology {
    fn new() -> anyhow::Result<Topology> {
        let t = Topology {
            client: Netns::new("l4c")?,
            node: Netns::new("l4n")?,
            backend: Netns::new("l4b")?,
        };
        t.link(&t.client, "c0", GATEWAY, "198.18.0.2")?;
        t.link(&t.backend, "b0", "198.18.1.1", BACKEND)?;
        t.node.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(t)
    }

    fn link(
        &self,
        peer: &Netns,
        node_if: &str,
        node_addr: &str,
        peer_addr: &str,
    ) -> anyhow::Result<()> {
        crate::run_cmd(Command::new("ip").args([
            "link",
            "add",
            "eth0",
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
            "eth0",
        ])?;
        peer.run(&["ip", "link", "set", "eth0", "up"])?;
        peer.run(&["ip", "route", "add", "default", "via", node_addr])?;
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
        peer.run(&["ethtool", "-K", "eth0", "tx", "off", "gro", "on"])?;
        Ok(())
    }
}

fn start_agent(node: &Netns, dir: &Path, agent: &Path) -> anyhow::Result<Daemon> {
    let manifests_dir = dir.join("manifests");
    std::fs::create_dir_all(&manifests_dir)?;
    let text = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: bench\nspec:\n  controllerName: gateway-agent.dev/node-agent\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: default\nspec:\n  gatewayClassName: bench\n  addresses:\n  - value: {GATEWAY}\n  listeners:\n  - name: tcp\n    protocol: TCP\n    port: 80\n\
         ---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata:\n  name: web\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw\n  rules:\n  - backendRefs:\n    - name: web\n      port: 80\n\
         ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  ports:\n  - name: p\n    port: 80\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- name: p\n  port: {BACKEND_PORT}\nendpoints:\n- addresses: [\"{BACKEND}\"]\n"
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
            "c0,b0",
            "--xdp-mode",
            "native",
            "--name",
            &node.name,
            "--admin-address",
            "127.0.0.1:9470",
        ],
        &dir.join("agent.log"),
    )
}

fn start_haproxy(node: &Netns, dir: &Path) -> anyhow::Result<Daemon> {
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         listen l4\n  bind {GATEWAY}:81\n  server s1 {BACKEND}:{BACKEND_PORT}\n"
    );
    let path = dir.join("haproxy-tcp.cfg");
    std::fs::write(&path, conf)?;
    node.spawn(
        Some(0),
        &["haproxy", "-db", "-f", path.to_str().context("utf-8")?],
        &dir.join("haproxy.log"),
    )
}

fn iptables_dnat(node: &Netns) -> anyhow::Result<()> {
    let to = format!("{BACKEND}:{BACKEND_PORT}");
    node.run(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        GATEWAY,
        "-p",
        "tcp",
        "--dport",
        "82",
        "-j",
        "DNAT",
        "--to-destination",
        &to,
    ])?;
    node.run(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "b0",
        "-p",
        "tcp",
        "-d",
        BACKEND,
        "-j",
        "MASQUERADE",
    ])?;
    Ok(())
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

pub fn run(agent: &Path, budget: Budget, out_dir: &Path, stamp: &str) -> anyhow::Result<Section> {
    println!("==> bench l4: XDP vs iptables DNAT vs userspace TCP proxy");
    let topology = Topology::new()?;
    let dir = std::env::temp_dir().join(&topology.node.name);
    std::fs::create_dir_all(&dir)?;
    let result = measure(&topology, &dir, agent, budget, out_dir, stamp);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(
    t: &Topology,
    dir: &Path,
    agent: &Path,
    budget: Budget,
    out_dir: &Path,
    stamp: &str,
) -> anyhow::Result<Section> {
    let _backend = backend_nginx(&t.backend, dir, &format!("{BACKEND}:{BACKEND_PORT}"), 1)?;
    let _agent = start_agent(&t.node, dir, agent)?;
    let _haproxy = start_haproxy(&t.node, dir)?;
    iptables_dnat(&t.node)?;
    let modes = [
        ("XDP (gateway-agent)", 80u16),
        ("iptables DNAT", 82),
        ("HAProxy mode tcp", 81),
    ];
    for (name, port) in modes {
        let addr = format!("{GATEWAY}:{port}");
        t.client
            .within(|| {
                wait_until(name, Duration::from_secs(30), || {
                    http_status(&addr, HOST, "/") == 200
                })
            })?
            .with_context(|| format!("{name} does not forward; logs in {}", dir.display()))?;
    }
    let secs = format!("-d{}s", budget.seconds);
    let n = modes.len();
    let (mut keepalive, mut per_conn, mut errors) =
        (vec![vec![]; n], vec![vec![]; n], vec![0u64; n]);
    for repeat in 0..budget.repeats {
        for (i, (name, port)) in modes.iter().enumerate() {
            let url = format!("http://{GATEWAY}:{port}/");
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
    let ka: Vec<Summary> = keepalive.iter().map(|v| Summary::of(v)).collect();
    let pc: Vec<Summary> = per_conn.iter().map(|v| Summary::of(v)).collect();
    let rate = (ka[1].median / 2.0).floor();
    let (mut p50, mut p99) = (vec![vec![]; n], vec![vec![]; n]);
    for repeat in 0..budget.repeats {
        for (i, (name, port)) in modes.iter().enumerate() {
            let url = format!("http://{GATEWAY}:{port}/");
            let args = oha_args(budget.seconds, rate, 64, HOST, &url);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (a, b, e) = oha_latency(&t.client.run_pinned(1, &args)?)?;
            println!("    repeat {repeat}: {name} at {rate} req/s: p50 {a:.2} ms, p99 {b:.2} ms");
            p50[i].push(a);
            p99[i].push(b);
            errors[i] += e;
        }
    }
    let p50s: Vec<Summary> = p50.iter().map(|v| Summary::of(v)).collect();
    let p99s: Vec<Summary> = p99.iter().map(|v| Summary::of(v)).collect();
    let mut md = format!(
        "Client (wrk/oha) and backend (nginx, 1 KB) on CPU 1, HAProxy and the agent process on CPU 0; packet processing (XDP, \
         netfilter) runs in softirq on whichever CPU the veth delivers on. The XDP program stays attached to the node's \
         interfaces during the iptables and HAProxy runs (it looks up and passes their packets).\n\n\
         | path | HTTP keep-alive req/s (wrk -c64) | × iptables | new connections/s (wrk -c16, Connection: close) | × iptables | p50 ms at {rate:.0} req/s (oha) | p99 ms | errors |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    for (i, (name, _)) in modes.iter().enumerate() {
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
    let names: Vec<String> = modes.iter().map(|(n, _)| n.to_string()).collect();
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
    Ok(Section {
        title: "L4: XDP vs iptables DNAT vs userspace TCP proxy".into(),
        markdown: md,
    })
}
