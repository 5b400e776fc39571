//! L4 small-UDP figures on the L4 topology: the maximum packet rate of one
//! generator through each path, and the CPU time the node spends per
//! forwarded packet at a fixed rate (half of iptables' maximum).
//!
//! Where the time goes: veth delivers on the sending CPU, so the node's
//! forwarding (the client link's NAPI poll with XDP, or netfilter and the
//! kernel's forwarding path, or the relay socket's receive) and the backend's
//! receive all run in softirq on the generator's CPU (1). This kernel has no
//! IRQ_TIME_ACCOUNTING: /proc/stat samples each tick as user, system,
//! softirq…, so CPU 1's irq + softirq ticks during a run, minus the same on
//! an idle interval of the same length, is the interrupt-side cost. The
//! node's processes (the agent; the userspace relay, with everything run in
//! its context, including its sends' delivery to the backend) are pinned to
//! CPU 0 and add their own ticks. The generator and the sink count only as
//! far as they run softirq (the generator's sends run the forwarding inline):
//! their own system-call time is not the node's. The backend namespace's
//! receive is in every path's figure alike.

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use super::Budget;
use super::l4::{BACKEND, CLIENT, GATEWAY, Topology};
use super::report::bar_chart;
use super::stats::Summary;
use super::udp_load::{Load, Sink, interrupt_ticks, process_tree_ticks, ticks_per_second};

/// Where the UDP sink listens in the backend namespace.
pub const SINK_PORT: u16 = 9999;
/// Source ports (flows) per path.
const FLOWS: u16 = 8;
const GENERATOR_CPU: usize = 1;
const SINK_CPU: usize = 0;
/// Time for datagrams in flight to arrive after the generator stops.
const DRAIN: Duration = Duration::from_millis(300);

pub struct UdpPath {
    pub name: &'static str,
    pub port: u16,
    /// The node-side process whose CPU time (with its children's) is part
    /// of this path's cost: the agent for XDP, the relay; None for iptables.
    pub process: Option<u32>,
}

pub struct UdpFigures {
    pub markdown: String,
    /// Per path: maximum delivered datagrams/s, node CPU ns per datagram.
    pub max_rate: Vec<Summary>,
    pub max_per_cpu_second: Vec<Summary>,
    pub ns_per_packet: Vec<Summary>,
}

fn target(path: &UdpPath) -> SocketAddrV4 {
    SocketAddrV4::new(GATEWAY.parse().expect("address"), path.port)
}

fn load<'a>(
    t: &'a Topology,
    index: usize,
    path: &UdpPath,
    rate: Option<f64>,
    seconds: f64,
) -> Load<'a> {
    Load {
        ns: &t.client.name,
        cpu: GENERATOR_CPU,
        source: CLIENT.parse().expect("address"),
        // Fixed source ports per path, so that repeats reuse the same flows
        // (and the relay's per-peer processes).
        first_port: 41_000 + 100 * index as u16,
        flows: FLOWS,
        target: target(path),
        rate,
        duration: Duration::from_secs_f64(seconds),
    }
}

/// (sent, delivered, the generator thread's CPU seconds) of one run.
fn run_once(sink: &Sink, load: &Load) -> anyhow::Result<(u64, u64, f64)> {
    let before = sink.received();
    let (sent, cpu) = load.run()?;
    std::thread::sleep(DRAIN);
    Ok((sent, sink.received() - before, cpu))
}

pub fn measure(
    t: &Topology,
    paths: &[UdpPath],
    budget: Budget,
    out_dir: &Path,
    stamp: &str,
) -> anyhow::Result<UdpFigures> {
    let sink = Sink::start(
        &t.backend.name,
        SocketAddrV4::new(BACKEND.parse().expect("address"), SINK_PORT),
        SINK_CPU,
    )?;
    let result = measure_with(t, &sink, paths, budget, out_dir, stamp);
    sink.stop()?;
    result
}

fn measure_with(
    t: &Topology,
    sink: &Sink,
    paths: &[UdpPath],
    budget: Budget,
    out_dir: &Path,
    stamp: &str,
) -> anyhow::Result<UdpFigures> {
    // Every path delivers (and the relay has forked its per-peer processes).
    for (i, path) in paths.iter().enumerate() {
        let mut delivered = 0;
        for _ in 0..20 {
            delivered = run_once(sink, &load(t, i, path, Some(10_000.0), 0.2))?.1;
            if delivered > 0 {
                break;
            }
        }
        if delivered == 0 {
            bail!("{}: no UDP datagram reaches the sink", path.name);
        }
    }
    let seconds = f64::from(budget.seconds);
    let n = paths.len();
    let (mut max_rate, mut per_cpu_second, mut max_delivery) =
        (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
    for repeat in 0..budget.repeats {
        for (i, path) in paths.iter().enumerate() {
            let (sent, delivered, cpu) = run_once(sink, &load(t, i, path, None, seconds))?;
            let rate = delivered as f64 / seconds;
            max_rate[i].push(rate);
            per_cpu_second[i].push(delivered as f64 / cpu.max(1e-3));
            max_delivery[i].push(100.0 * delivered as f64 / sent.max(1) as f64);
            println!(
                "    repeat {repeat}: {}: UDP max {rate:.0} datagrams/s delivered ({:.0}/s sent), \
                 {:.0} per second of the generator's CPU ({:.0}% of CPU {GENERATOR_CPU})",
                path.name,
                sent as f64 / seconds,
                delivered as f64 / cpu.max(1e-3),
                100.0 * cpu / seconds
            );
        }
    }
    let max: Vec<Summary> = max_rate.iter().map(|v| Summary::of(v)).collect();
    let max_per_cpu: Vec<Summary> = per_cpu_second.iter().map(|v| Summary::of(v)).collect();
    let max_delivered: Vec<Summary> = max_delivery.iter().map(|v| Summary::of(v)).collect();
    // Half of iptables' maximum, rounded down to a thousand.
    let rate = ((max[1].median / 2.0) / 1000.0).floor().max(1.0) * 1000.0;
    let hz = ticks_per_second();
    // Twice the load runs' length: more ticks sampled, less noise.
    let cpu_seconds = 2.0 * seconds;
    let window = cpu_seconds + DRAIN.as_secs_f64();
    let (mut ns_per_packet, mut delivery, mut process_share, mut idle) =
        (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n], vec![]);
    for repeat in 0..budget.repeats {
        // The idle baseline: the same window with no load.
        let before = interrupt_ticks(GENERATOR_CPU)?;
        std::thread::sleep(Duration::from_secs_f64(window));
        let baseline = (interrupt_ticks(GENERATOR_CPU)? - before) as f64;
        idle.push(100.0 * baseline / hz / window);
        for (i, path) in paths.iter().enumerate() {
            let process_before = path.process.map_or(0, process_tree_ticks);
            let irq_before = interrupt_ticks(GENERATOR_CPU)?;
            let (sent, delivered, _) =
                run_once(sink, &load(t, i, path, Some(rate), cpu_seconds))?;
            let irq = (interrupt_ticks(GENERATOR_CPU)? - irq_before) as f64 - baseline;
            let process = (path.process.map_or(0, process_tree_ticks) - process_before) as f64;
            let ns = (irq + process) / hz * 1e9 / delivered.max(1) as f64;
            ns_per_packet[i].push(ns);
            delivery[i].push(100.0 * delivered as f64 / sent.max(1) as f64);
            process_share[i].push(process / hz * 1e9 / delivered.max(1) as f64);
            println!(
                "    repeat {repeat}: {} at {rate:.0}/s: {ns:.0} ns of node CPU per datagram, {delivered} of {sent} delivered",
                path.name
            );
        }
    }
    let cost: Vec<Summary> = ns_per_packet.iter().map(|v| Summary::of(v)).collect();
    let delivered: Vec<Summary> = delivery.iter().map(|v| Summary::of(v)).collect();
    let process: Vec<Summary> = process_share.iter().map(|v| Summary::of(v)).collect();
    let idle = Summary::of(&idle);
    let mut md = format!(
        "Small UDP (22-byte payload, 64-byte frames) from one generator thread in the client namespace (sendmmsg, batches of \
         {batch}, {FLOWS} source ports = {FLOWS} flows, CPU {GENERATOR_CPU}) to a sink thread in the backend namespace \
         (recvmmsg, CPU {SINK_CPU}, polling every millisecond so that no datagram pays for waking it) counting what arrives. Userspace relay: `socat UDP4-LISTEN,fork` ({socat}; one process per \
         peer) on CPU 0. Maximum: the generator unthrottled for {secs} s; delivered datagrams/s at the sink, and the same \
         per second of the generator thread's own CPU time (its exact runtime, which includes the forwarding and the \
         backend's receive that veth runs in its context): the rate a whole CPU would reach, insensitive to other \
         work sharing CPU {GENERATOR_CPU}. Node CPU \
         per datagram: {cpu_secs} s at a fixed {rate:.0} datagrams/s (half of iptables' maximum), CPU {GENERATOR_CPU}'s irq + \
         softirq time from /proc/stat (where veth runs the node's forwarding and the backend's receive) minus an idle \
         window of the same length (median {idle_pct:.2}% of that CPU), plus the CPU time of the path's node \
         process (the agent; the relay with its children), divided by the datagrams delivered. Tick-sampled \
         ({hz:.0} Hz accounting, no IRQ_TIME_ACCOUNTING in this kernel): a few percent of noise per run. The \
         backend's own receive is included in every path alike, so ratios understate the node's difference.\n\n\
         | path | max datagrams/s delivered | × iptables | per generator CPU-second | × iptables | delivered at max | node CPU ns per datagram at {rate:.0}/s | × iptables | of which node process | delivered at {rate:.0}/s |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        batch = super::udp_load::BATCH,
        socat = socat_version(),
        secs = budget.seconds,
        cpu_secs = cpu_seconds,
        idle_pct = idle.median,
    );
    for (i, path) in paths.iter().enumerate() {
        md.push_str(&format!(
            "| {} | {} | {:.2} | {} | {:.2} | {:.1}% | {} | {:.2} | {:.0} ns | {:.2}% |\n",
            path.name,
            max[i].show(0),
            max[i].median / max[1].median,
            max_per_cpu[i].show(0),
            max_per_cpu[i].median / max_per_cpu[1].median,
            max_delivered[i].median,
            cost[i].show(0),
            cost[i].median / cost[1].median,
            process[i].median,
            delivered[i].median,
        ));
    }
    md.push('\n');
    let bars = |v: &[Summary]| -> Vec<(String, Summary)> {
        paths
            .iter()
            .map(|p| p.name.to_string())
            .zip(v.iter().copied())
            .collect()
    };
    md.push_str(&bar_chart(
        out_dir,
        &format!("{stamp}-l4-udp-max"),
        "L4 small UDP, maximum rate delivered (one sendmmsg generator)",
        "datagrams/s",
        &bars(&max),
    ));
    md.push_str(&bar_chart(
        out_dir,
        &format!("{stamp}-l4-udp-cpu"),
        &format!("L4 small UDP, node CPU per datagram at {rate:.0}/s"),
        "ns per datagram",
        &bars(&cost),
    ));
    Ok(UdpFigures {
        markdown: md,
        max_rate: max,
        max_per_cpu_second: max_per_cpu,
        ns_per_packet: cost,
    })
}

/// "socat version 1.7.4.4" (its `-V` starts with an authors line).
fn socat_version() -> String {
    std::process::Command::new("socat")
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().find(|l| l.starts_with("socat version"))?;
            Some(line.split(" on ").next().unwrap_or(line).to_string())
        })
        .unwrap_or_else(|| "socat".into())
}
