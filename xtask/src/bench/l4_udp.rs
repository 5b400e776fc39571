//! L4 small-UDP figures on the L4 topology: the maximum packet rate of one
//! generator through each path, and the CPU time spent per forwarded packet
//! at a fixed rate (half of iptables' maximum).
//!
//! Where the time goes: veth delivers on the sending CPU, in the sender's
//! context (the softirq raised by the send runs when the send re-enables
//! bottom halves), so the node's forwarding (the client link's NAPI poll with
//! XDP, or netfilter and the kernel's forwarding path, or the relay socket's
//! receive) and the backend's receive run inside the generator thread's
//! system calls on CPU 1, or in ksoftirqd/1 when the kernel defers them. This
//! kernel has no IRQ_TIME_ACCOUNTING, so a thread's exact runtime (schedstat)
//! includes the softirq work run in its context. The cost of a path is the
//! runtime of the generator thread and of ksoftirqd/1, plus that of the
//! path's node process (the agent; the relay with its children, on CPU 0),
//! per datagram delivered: exact, and blind to other work on the machine (no
//! idle baseline to subtract). It includes the client's send and the
//! backend's receive, alike in every path, so ratios understate the node's
//! own difference.

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use super::Budget;
use super::l4::Topology;
use super::report::bar_chart;
use super::stats::Summary;
use super::udp_load::{Load, Sink, ksoftirqd, process_tree_cpu_seconds};

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
    /// The generator's address and where it sends.
    pub from: &'static str,
    pub to: (&'static str, u16),
    /// The node-side process whose CPU time (with its children's) is part
    /// of this path's cost: the agent for XDP, the relay; None for iptables.
    pub process: Option<u32>,
}

pub struct UdpFigures {
    pub markdown: String,
    /// Per path: maximum datagrams/s delivered, the node's forwarding
    /// capacity per CPU, the node's own CPU ns per datagram at the fixed rate.
    pub max_rate: Vec<Summary>,
    pub node_capacity: Vec<Summary>,
    pub node_ns: Vec<Summary>,
}

/// Longest UDP load run (see measure_with).
const UDP_RUN_SECONDS: u32 = 3;

fn target(path: &UdpPath) -> SocketAddrV4 {
    SocketAddrV4::new(path.to.0.parse().expect("address"), path.to.1)
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
        source: path.from.parse().expect("address"),
        // Fixed source ports per path, so that repeats reuse the same flows
        // (and the relay's per-peer processes).
        first_port: 41_000 + 100 * index as u16,
        flows: FLOWS,
        target: target(path),
        rate,
        duration: Duration::from_secs_f64(seconds),
    }
}

/// One generator run.
struct Run {
    sent: u64,
    delivered: u64,
    /// Runtime on the generator's CPU: the generator thread and ksoftirqd.
    cpu: f64,
    /// Runtime of the path's node process (and its children).
    process: f64,
}

impl Run {
    fn ns_per_datagram(&self) -> f64 {
        (self.cpu + self.process) * 1e9 / self.delivered.max(1) as f64
    }

    fn delivered_percent(&self) -> f64 {
        100.0 * self.delivered as f64 / self.sent.max(1) as f64
    }
}

fn run_once(sink: &Sink, load: &Load, path: &UdpPath, softirqd: u32) -> anyhow::Result<Run> {
    let process = || path.process.map_or(0.0, process_tree_cpu_seconds);
    let (received, softirq, node) = (
        sink.received(),
        process_tree_cpu_seconds(softirqd),
        process(),
    );
    let (sent, cpu) = load.run()?;
    std::thread::sleep(DRAIN);
    Ok(Run {
        sent,
        delivered: sink.received() - received,
        cpu: cpu + process_tree_cpu_seconds(softirqd) - softirq,
        process: process() - node,
    })
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
        // Every address of the backend namespace: the node's paths reach it
        // on its node link, the reference on its direct link.
        SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, SINK_PORT),
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
    // Runs of at most UDP_RUN_SECONDS: the figures are exact runtimes and
    // counts, steady after a second or two, and five paths run twice per
    // repeat, which would push `bench all` past its 20-minute budget.
    let budget = Budget {
        seconds: budget.seconds.min(UDP_RUN_SECONDS),
        ..budget
    };
    let softirqd = ksoftirqd(GENERATOR_CPU)?;
    // Every path delivers (and the relay has forked its per-peer processes).
    for (i, path) in paths.iter().enumerate() {
        let mut delivered = 0;
        for _ in 0..20 {
            let warm_up = load(t, i, path, Some(10_000.0), 0.2);
            delivered = run_once(sink, &warm_up, path, softirqd)?.delivered;
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
    let (mut max_rate, mut max_cost, mut max_delivery) =
        (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
    for repeat in 0..budget.repeats {
        for (i, path) in paths.iter().enumerate() {
            // BENCH_L4_PERF=<dir>: a perf profile of the generator's CPU
            // during each path's first maximum-rate run, to see where it goes.
            let profile = match std::env::var_os("BENCH_L4_PERF").filter(|_| repeat == 0) {
                Some(dir) => Some(
                    std::process::Command::new("perf")
                        .args(["record", "-q", "-g", "-C", &GENERATOR_CPU.to_string(), "-o"])
                        .arg(Path::new(&dir).join(format!("udp-max-{i}.perf.data")))
                        .args(["--", "sleep", &budget.seconds.to_string()])
                        .stdout(std::process::Stdio::null())
                        .spawn()?,
                ),
                None => None,
            };
            let run = run_once(sink, &load(t, i, path, None, seconds), path, softirqd)?;
            if let Some(mut perf) = profile {
                perf.wait()?;
            }
            let rate = run.delivered as f64 / seconds;
            max_rate[i].push(rate);
            max_cost[i].push(run.ns_per_datagram());
            max_delivery[i].push(run.delivered_percent());
            println!(
                "    repeat {repeat}: {}: UDP max {rate:.0} datagrams/s delivered ({:.0}/s sent), \
                 {:.0} ns of CPU per datagram ({:.0}% of CPU {GENERATOR_CPU})",
                path.name,
                run.sent as f64 / seconds,
                run.ns_per_datagram(),
                100.0 * run.cpu / seconds
            );
        }
    }
    let reference = n - 1;
    // The node's own share: each run minus the reference run of the same repeat.
    let node_only = |cost: &[Vec<f64>]| -> Vec<Summary> {
        cost.iter()
            .map(|v| {
                let own: Vec<f64> = v.iter().zip(&cost[reference]).map(|(c, r)| c - r).collect();
                Summary::of(&own)
            })
            .collect()
    };
    let max: Vec<Summary> = max_rate.iter().map(|v| Summary::of(v)).collect();
    let max_ns: Vec<Summary> = max_cost.iter().map(|v| Summary::of(v)).collect();
    let max_node_ns = node_only(&max_cost);
    // Datagrams per second one CPU would forward at the node's own cost.
    let node_capacity: Vec<Summary> = max_cost
        .iter()
        .map(|v| {
            let per_cpu: Vec<f64> = v
                .iter()
                .zip(&max_cost[reference])
                .map(|(c, r)| 1e9 / (c - r).max(1.0))
                .collect();
            Summary::of(&per_cpu)
        })
        .collect();
    let max_delivered: Vec<Summary> = max_delivery.iter().map(|v| Summary::of(v)).collect();
    // Half of iptables' maximum, rounded down to a thousand.
    let rate = ((max[1].median / 2.0) / 1000.0).floor().max(1.0) * 1000.0;
    let (mut ns_per_packet, mut delivery, mut process_share) =
        (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
    for repeat in 0..budget.repeats {
        for (i, path) in paths.iter().enumerate() {
            let run = run_once(sink, &load(t, i, path, Some(rate), seconds), path, softirqd)?;
            ns_per_packet[i].push(run.ns_per_datagram());
            delivery[i].push(run.delivered_percent());
            process_share[i].push(run.process * 1e9 / run.delivered.max(1) as f64);
            println!(
                "    repeat {repeat}: {} at {rate:.0}/s: {:.0} ns of CPU per datagram, {} of {} delivered",
                path.name,
                run.ns_per_datagram(),
                run.delivered,
                run.sent
            );
        }
    }
    let cost: Vec<Summary> = ns_per_packet.iter().map(|v| Summary::of(v)).collect();
    let node_ns = node_only(&ns_per_packet);
    let delivered: Vec<Summary> = delivery.iter().map(|v| Summary::of(v)).collect();
    let process: Vec<Summary> = process_share.iter().map(|v| Summary::of(v)).collect();
    let mut md = format!(
        "Small UDP (22-byte payload, 64-byte frames) from one generator thread in the client namespace (sendmmsg, \
         batches of {batch}, {FLOWS} source ports = {FLOWS} flows, CPU {GENERATOR_CPU}) to a sink thread in the \
         backend namespace (recvmmsg, CPU {SINK_CPU}, polling every millisecond so that no datagram pays for waking \
         it) counting what arrives. Userspace relay: `socat UDP4-LISTEN,fork` ({socat}; one process per peer) on \
         CPU 0. Reference: the same generator and sink over a veth pair straight from the client to the backend \
         namespace, no node (offloads as on XDP's links: TX checksum offload off). iptables runs twice: on links \
         of its own without XDP (kernel default offloads, so its client's send is slightly cheaper than the \
         reference's), the figure the ratios use, and on XDP's links, where the attached program makes veth copy \
         every packet into a page of its own before netfilter sees it.\n\n\
         CPU per datagram: the exact runtime (schedstat) of the generator thread and ksoftirqd/{GENERATOR_CPU} (veth \
         runs the node's forwarding and the backend's receive in softirq in the sender's context, and without \
         IRQ_TIME_ACCOUNTING, as in this kernel, a thread's runtime includes that) plus the path's node process (the \
         agent; socat with its children), per datagram delivered. Exact and blind to other work on the machine, so no \
         idle baseline is needed. It includes the client's send and the backend's receive; the **node's own** cost is \
         that minus the reference's, paired repeat by repeat.\n\n\
         Maximum: the generator unthrottled for {secs} s. Datagrams/s delivered depend on the share of CPU \
         {GENERATOR_CPU} the generator gets on a shared machine; the node's forwarding capacity per CPU \
         (10⁹ / the node's own ns per datagram) does not.\n\n\
         | path | datagrams/s delivered | × iptables | delivered | CPU ns per datagram | node's own ns | node's capacity per CPU, datagrams/s | × iptables |\n\
         |---|---|---|---|---|---|---|---|\n",
        batch = super::udp_load::BATCH,
        socat = socat_version(),
        secs = budget.seconds,
    );
    for (i, path) in paths.iter().enumerate() {
        let node = if i == reference {
            "—".to_string()
        } else {
            format!(
                "{} | {} | {:.2}",
                max_node_ns[i].show(0),
                node_capacity[i].show(0),
                node_capacity[i].median / node_capacity[1].median
            )
        };
        md.push_str(&format!(
            "| {} | {} | {:.2} | {:.1}% | {} | {node} |\n",
            path.name,
            max[i].show(0),
            max[i].median / max[1].median,
            max_delivered[i].median,
            max_ns[i].show(0),
        ));
    }
    md.push_str(&format!(
        "\nAt a fixed {rate:.0} datagrams/s (half of iptables' maximum), {secs} s:\n\n\
         | path | CPU ns per datagram | node's own ns per datagram | × iptables | of which node process | delivered |\n\
         |---|---|---|---|---|---|\n",
        secs = budget.seconds,
    ));
    for (i, path) in paths.iter().enumerate() {
        let node = if i == reference {
            "— | —".to_string()
        } else {
            format!(
                "{} | {:.2}",
                node_ns[i].show(0),
                node_ns[i].median / node_ns[1].median
            )
        };
        md.push_str(&format!(
            "| {} | {} | {node} | {:.0} ns | {:.2}% |\n",
            path.name,
            cost[i].show(0),
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
        &format!("L4 small UDP, the node's own CPU per datagram at {rate:.0}/s"),
        "ns per datagram",
        &bars(&node_ns[..reference]),
    ));
    Ok(UdpFigures {
        markdown: md,
        max_rate: max,
        node_capacity,
        node_ns,
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
