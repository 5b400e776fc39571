//! L4 small-UDP figures on the L4 topology: the maximum packet rate of one
//! generator through each path, and the CPU time spent per forwarded packet
//! at a fixed rate.
//!
//! Maximum rate: the generator alone on CPU 1 (whole frames through a packet
//! socket, bypassing the client's UDP/IP stack), the node's forwarding and
//! the backend's receive on CPU 0, both at real-time priority. Left alone, veth delivers on the sending CPU
//! (netif_rx into that CPU's backlog, or the receiving veth's NAPI scheduled
//! there), so the node's work would run inside the generator's system calls
//! and the generator's own cost would cap every path alike. So for this
//! measurement the bench moves each path's first receive off the sender:
//! RPS (`rps_cpus`) on a veth without NAPI (iptables' and TC's links: TC
//! ingress runs after the steering), threaded NAPI with its kthread pinned to
//! CPU 0 on a veth with NAPI (XDP's links: the XDP program runs in that
//! poll; the reference's backend end, GRO on). Everything after (the
//! forward, the backend veth's receive, socat) follows on CPU 0, where the
//! agent and socat are pinned too. The sink costs CPU 0 as little as a
//! socket can: a filter that keeps nothing discards each datagram once the
//! kernel has found the socket and checked the UDP checksum, and the
//! socket's drop counter counts it: no queueing, no read.
//!
//! CPU per datagram at a fixed rate: steering off, so that the whole path
//! runs on CPU 1 in the generator thread's context (or ksoftirqd/1), and the
//! sink reads with recvmmsg. This kernel has no IRQ_TIME_ACCOUNTING, so a
//! thread's exact runtime (schedstat) includes the softirq work run in its
//! context. The cost of a path is the runtime of the generator thread and
//! of ksoftirqd/1, plus that of the path's node process (the agent; the
//! relay with its children, on CPU 0), per datagram delivered: exact, and
//! blind to other work on the machine (no idle baseline to subtract). It
//! includes the client's send and the backend's receive; the reference
//! path with the same links' offloads (no node) gives what to subtract, as
//! for new connections (`l4_conn`).

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use super::Budget;
use super::l4::{Topology, start_profile};
use super::report::{bar_chart, node_bars, node_cost_cells};
use super::stats::{Summary, node_own};
use super::udp_load::{Favoured, Link, Load, Sink, ksoftirqd, process_tree_cpu_seconds};

/// Where the UDP sink listens in the backend namespace.
pub const SINK_PORT: u16 = 9999;
/// Source ports (flows) per path.
const FLOWS: u16 = 8;
const GENERATOR_CPU: usize = 1;
/// The sink thread, and in the maximum-rate runs the node's forwarding.
const NODE_CPU: usize = 0;
/// The longest wait for datagrams in flight to arrive after the generator
/// stops (see `drain`).
const DRAIN: Duration = Duration::from_millis(300);
/// No datagram arriving for this long ends the drain: the queues on the way
/// (veth rings, the backlog, ~1,000 packets) empty within a few ms at the
/// slowest path's rate, and a fixed 300 ms cost 20 s of the run. Long
/// enough for a relay (socat) descheduled on a loaded machine to run again.
const DRAIN_QUIET: Duration = Duration::from_millis(100);

/// Waits until the count `delivered` reads has not moved for DRAIN_QUIET,
/// at most DRAIN.
fn drain(delivered: impl Fn() -> u64) {
    let started = std::time::Instant::now();
    let (mut last, mut quiet_since) = (delivered(), started);
    while started.elapsed() < DRAIN && quiet_since.elapsed() < DRAIN_QUIET {
        std::thread::sleep(Duration::from_millis(5));
        let now = delivered();
        if now != last {
            (last, quiet_since) = (now, std::time::Instant::now());
        }
    }
}
/// The rate of the CPU-per-datagram runs: low enough that every path, run
/// whole on the generator's CPU, delivers everything on a shared machine
/// (socat, the dearest, about 14 µs per datagram). The exact runtimes per
/// datagram barely move with the rate (TC's own 347 ns at 41,000/s in
/// 0157Z, 300 ns at 107,000/s in 0317Z).
const FIXED_RATE: f64 = 50_000.0;

pub struct UdpPath<'a> {
    pub name: &'static str,
    /// The generator's address, its interface, and where it sends.
    pub from: &'static str,
    pub client_dev: &'static str,
    pub to: (&'static str, u16),
    /// The node-side process whose CPU time (with its children's) is part
    /// of this path's cost: the agent for XDP, the relay; None for iptables.
    pub process: Option<u32>,
    /// Where the path's datagrams are first received (the node's client
    /// link; the reference's backend end) and how that veth delivers:
    /// `napi` (an XDP program attached, or GRO on) or the backlog.
    pub ingress: (&'a super::netns::Netns, &'static str),
    pub napi: bool,
    /// `process` forwards every datagram itself (socat).
    pub relay: bool,
    /// The reference path (its index) whose cost this one's own is counted
    /// from: the direct link with this path's client and backend offloads
    /// (GRO and software checksums change the client's and the backend's
    /// cost per datagram); None: this is a reference.
    pub reference: Option<usize>,
}

pub struct UdpFigures {
    pub markdown: String,
    /// Per path: maximum datagrams/s delivered, the node's forwarding
    /// capacity per CPU, the node's own CPU ns per datagram at the fixed rate.
    pub max_rate: Vec<Summary>,
    pub node_capacity: Vec<Summary>,
    pub node_ns: Vec<Summary>,
}

/// Moves (`cpu` Some) or returns (None) every path's first receive to the
/// given CPU: RPS on backlog-delivering veths, threaded NAPI on the others.
/// Returns the NAPI kthreads.
fn steer(paths: &[UdpPath<'_>], cpu: Option<usize>) -> anyhow::Result<Vec<u32>> {
    let (mut done, mut kthreads): (Vec<(&str, &str)>, Vec<u32>) = (vec![], vec![]);
    for path in paths {
        let (ns, dev) = path.ingress;
        if done.contains(&(ns.name.as_str(), dev)) {
            continue;
        }
        done.push((ns.name.as_str(), dev));
        ns.steer_backlog(dev, cpu)?;
        if path.napi {
            kthreads.extend(ns.steer_napi(dev, cpu)?);
        }
    }
    Ok(kthreads)
}

/// Longest UDP load run (see measure_with).
const UDP_RUN_SECONDS: u32 = 3;

fn target(path: &UdpPath<'_>) -> SocketAddrV4 {
    SocketAddrV4::new(path.to.0.parse().expect("address"), path.to.1)
}

fn load<'a>(
    t: &'a Topology,
    index: usize,
    path: &UdpPath<'_>,
    rate: Option<f64>,
    seconds: f64,
    frames: Option<Link>,
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
        // Unthrottled: favoured like the node's forwarding (see Favoured).
        favoured: rate.is_none(),
        frames,
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

fn run_once(sink: &Sink, load: &Load, path: &UdpPath<'_>, softirqd: u32) -> anyhow::Result<Run> {
    let process = || path.process.map_or(0.0, process_tree_cpu_seconds);
    let (received, softirq, node) = (
        sink.received(),
        process_tree_cpu_seconds(softirqd),
        process(),
    );
    let (sent, cpu) = load.run()?;
    drain(|| sink.received());
    Ok(Run {
        sent,
        delivered: sink.received() - received,
        cpu: cpu + process_tree_cpu_seconds(softirqd) - softirq,
        process: process() - node,
    })
}

pub fn measure(
    t: &Topology,
    paths: &[UdpPath<'_>],
    budget: Budget,
    out_dir: &Path,
    stamp: &str,
) -> anyhow::Result<UdpFigures> {
    let sink = Sink::start(
        &t.backend.name,
        // Every address of the backend namespace: the node's paths reach it
        // on its node link, the reference on its direct link.
        SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, SINK_PORT),
        NODE_CPU,
    )?;
    let result = measure_with(t, &sink, paths, budget, out_dir, stamp);
    // Whatever happened: datagrams read again, every veth delivering where
    // it is sent.
    let restored = sink.discard(false).and(steer(paths, None));
    sink.stop()?;
    let figures = result?;
    restored?;
    Ok(figures)
}

/// The generator thread kept its CPU busy (real-time throttling leaves it
/// at most 95%) in the median run: it, not the node, set the rate. Below,
/// it waited for the node (a full socket send buffer).
fn generator_bound(busy_percent: &Summary) -> bool {
    busy_percent.median >= 90.0
}

/// One maximum-rate run: the node's work on NODE_CPU, the sink discarding.
struct MaxRun {
    sent: u64,
    delivered: u64,
    /// The generator thread's runtime, share of the run.
    generator_busy: f64,
    /// NODE_CPU's busy share (/proc/stat, everything on it).
    node_busy: f64,
}

fn max_run(sink: &Sink, load: &Load) -> anyhow::Result<MaxRun> {
    let discarded = sink.discarded()?;
    let (busy, total) = super::udp_load::cpu_ticks(NODE_CPU)?;
    let (sent, cpu) = load.run()?;
    let (busy_after, total_after) = super::udp_load::cpu_ticks(NODE_CPU)?;
    drain(|| sink.discarded().map_or(0, u64::from));
    Ok(MaxRun {
        sent,
        delivered: u64::from(sink.discarded()?.wrapping_sub(discarded)),
        generator_busy: cpu / load.duration.as_secs_f64(),
        node_busy: (busy_after - busy) as f64 / (total_after - total).max(1) as f64,
    })
}

fn measure_with(
    t: &Topology,
    sink: &Sink,
    paths: &[UdpPath<'_>],
    budget: Budget,
    out_dir: &Path,
    stamp: &str,
) -> anyhow::Result<UdpFigures> {
    // Runs of at most UDP_RUN_SECONDS: the figures are exact runtimes and
    // counts, steady after a second or two, and six paths run twice per
    // repeat, which would push `bench all` past its 20-minute budget.
    let budget = Budget {
        seconds: budget.seconds.min(UDP_RUN_SECONDS),
        ..budget
    };
    let softirqd = ksoftirqd(GENERATOR_CPU)?;
    // Every path delivers datagrams the sink reads (and the relay has forked
    // its per-peer processes).
    for (i, path) in paths.iter().enumerate() {
        let mut delivered = 0;
        for _ in 0..20 {
            let warm_up = load(t, i, path, Some(10_000.0), 0.2, None);
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
    println!(
        "    maximum rate: the node's forwarding on CPU {NODE_CPU} (RPS, threaded NAPI), the generator on CPU {GENERATOR_CPU}"
    );
    // The generator writes whole frames: from the client's interface to the
    // MAC address of the path's first hop.
    let links = paths
        .iter()
        .map(|p| {
            Ok(Link {
                dev: p.client_dev.to_string(),
                source: t.client.mac(p.client_dev)?,
                destination: p.ingress.0.mac(p.ingress.1)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let kthreads = steer(paths, Some(NODE_CPU))?;
    // The forwarding's threads at real-time priority, as the generator,
    // alike for every path: the NAPI kthreads, ksoftirqd/0 (where RPS's
    // backlog goes once softirq is deferred), socat with its children.
    // A relay above the receive processing that feeds it: at the same
    // priority, the NAPI kthread kept busy by the generator would never let
    // it run (receive livelock).
    let mut favour = kthreads;
    favour.push(ksoftirqd(NODE_CPU)?);
    let relays: Vec<u32> = paths
        .iter()
        .filter(|p| p.relay)
        .filter_map(|p| p.process)
        .collect();
    let favoured = (Favoured::new(&favour, 1)?, Favoured::new(&relays, 2)?);
    sink.discard(true)?;
    let (mut max_rate, mut max_sent, mut max_delivery, mut generator_busy, mut node_busy) = (
        vec![vec![]; n],
        vec![vec![]; n],
        vec![vec![]; n],
        vec![vec![]; n],
        vec![vec![]; n],
    );
    for repeat in 0..budget.repeats {
        for (i, path) in paths.iter().enumerate() {
            // BENCH_L4_PERF=<dir>: a perf profile of both CPUs during each
            // path's first maximum-rate run, to see where it goes. perf runs
            // above the run's real-time threads (else it would start, and
            // read its buffers, only after the run) and gets a second to
            // set up first.
            let profile = match repeat {
                0 => start_profile(
                    &format!("udp-max-{i}.perf.data"),
                    budget.seconds + 1,
                    &["chrt", "-f", "3", "perf"],
                    &[],
                    Duration::from_secs(1),
                )?,
                _ => None,
            };
            let run = max_run(
                sink,
                &load(t, i, path, None, seconds, Some(links[i].clone())),
            )?;
            if let Some(mut perf) = profile {
                perf.wait()?;
            }
            let rate = run.delivered as f64 / seconds;
            max_rate[i].push(rate);
            max_sent[i].push(run.sent as f64 / seconds);
            max_delivery[i].push(100.0 * run.delivered as f64 / run.sent.max(1) as f64);
            generator_busy[i].push(100.0 * run.generator_busy);
            node_busy[i].push(100.0 * run.node_busy);
            println!(
                "    repeat {repeat}: {}: UDP max {rate:.0} datagrams/s delivered ({:.0}/s sent), \
                 CPU {NODE_CPU} {:.0}% busy, generator thread {:.0}% of CPU {GENERATOR_CPU}",
                path.name,
                run.sent as f64 / seconds,
                100.0 * run.node_busy,
                100.0 * run.generator_busy,
            );
        }
    }
    drop(favoured);
    sink.discard(false)?;
    steer(paths, None)?;
    let max = Summary::each(&max_rate);
    let sent = Summary::each(&max_sent);
    let max_delivered = Summary::each(&max_delivery);
    let generator_busy = Summary::each(&generator_busy);
    let node_busy = Summary::each(&node_busy);
    let rate = FIXED_RATE;
    let (mut ns_per_packet, mut delivery, mut process_share) =
        (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
    for repeat in 0..budget.repeats {
        for (i, path) in paths.iter().enumerate() {
            let run = run_once(
                sink,
                &load(t, i, path, Some(rate), seconds, None),
                path,
                softirqd,
            )?;
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
    let cost = Summary::each(&ns_per_packet);
    let references: Vec<Option<usize>> = paths.iter().map(|p| p.reference).collect();
    let (node_ns, node_capacity) = node_own(&ns_per_packet, &references);
    let delivered = Summary::each(&delivery);
    let process = Summary::each(&process_share);
    let mut md = format!(
        "Small UDP (22-byte payload, 64-byte frames) from one generator thread in the client namespace (sendmmsg, \
         batches of {batch}, {FLOWS} source ports = {FLOWS} flows, CPU {GENERATOR_CPU}) to a sink socket in the \
         backend namespace (its thread on CPU {NODE_CPU}). Userspace relay: `socat UDP4-LISTEN,fork` ({socat}; one \
         process per peer) on CPU {NODE_CPU}, as are the agents. References: the same generator and sink over a veth \
         pair straight from the client to the backend namespace, no node, one with the offloads of XDP's links (TX \
         checksum offload off, GRO on: the reference of XDP, socat and iptables on XDP's links), one with the kernel's \
         default offloads (as iptables' own links and the TC agent's: their reference). iptables runs twice: on links of its own without XDP (kernel default offloads), the \
         figure the ratios use, and on XDP's links, where the attached program makes veth copy every packet into a \
         page of its own before netfilter sees it.\n\n\
         **Maximum rate**: the generator unthrottled for {secs} s, alone on CPU {GENERATOR_CPU}, writing the same \
         datagrams as whole Ethernet frames (valid IPv4 and UDP checksums) to a packet socket on the client's \
         interface (PACKET_QDISC_BYPASS: no UDP/IP stack, no qdisc, about a third of a UDP socket's cost); \
         everything after its send on CPU {NODE_CPU}. The generator, the forwarding's threads and ksoftirqd/{NODE_CPU} \
         run at real-time priority (SCHED_FIFO 1, socat 2 so that the receive processing feeding it cannot starve \
         it; the kernel's throttling leaves other work 5%), so that other work on a shared machine shows less in \
         the rates and a kthread competes as softirq does. veth would deliver on the sending CPU, inside the generator's system calls; instead \
         each path's first receive is moved to CPU {NODE_CPU}: RPS (`rps_cpus`) on the veths that deliver through the \
         backlog (iptables' own links, the TC agent's links: TC ingress runs after the steering), threaded NAPI with \
         its kthread pinned to CPU {NODE_CPU} on those with NAPI (XDP's links, where the XDP program runs in that \
         poll, also for iptables on XDP's links and socat; the reference's backend end). The forward, the backend \
         veth's receive and socat follow on CPU {NODE_CPU}. The sink discards: a socket filter that keeps nothing \
         drops each datagram once the kernel has found the socket and checked its UDP checksum, counted by the \
         socket's drop counter (SO_MEMINFO), so no queueing and no read per datagram. Delivered is what reaches \
         the sink; the rest was dropped on the way. A frame holds the packet socket's send buffer until the node \
         frees it, so a generator faster than the node waits (its thread below 90% of CPU {GENERATOR_CPU}): then the \
         node sets the rate; a generator at its 95% sets it, and the figure is a lower bound of the node's. A \
         reference path's rate is the most this generator and sink show without a node on such links. CPU {NODE_CPU} busy: /proc/stat over the run (ticks, every \
         process on it).\n\n\
         | path | datagrams/s delivered | × iptables | sent/s | delivered | CPU {NODE_CPU} busy | generator thread, % of CPU {GENERATOR_CPU} | limited by |\n\
         |---|---|---|---|---|---|---|---|\n",
        batch = super::udp_load::BATCH,
        socat = socat_version(),
        secs = budget.seconds,
    );
    for (i, path) in paths.iter().enumerate() {
        md.push_str(&format!(
            "| {} | {} | {}{:.2} | {} | {:.1}% | {:.0}% | {:.0}% | {} |\n",
            path.name,
            max[i].show(0),
            if generator_bound(&generator_busy[i]) {
                "≥ "
            } else {
                ""
            },
            max[i].median / max[1].median,
            sent[i].show(0),
            max_delivered[i].median,
            node_busy[i].median,
            generator_busy[i].median,
            if generator_bound(&generator_busy[i]) {
                "the generator: a lower bound"
            } else {
                "the node"
            },
        ));
    }
    md.push_str(&format!(
        "\n**CPU per datagram** at a fixed {rate:.0} datagrams/s, {secs} s, no steering: veth runs the node's \
         forwarding and the backend's receive in softirq in the sender's context, and the sink reads with recvmmsg \
         (polling every millisecond, so that no datagram pays for waking it). The exact runtime (schedstat) of the \
         generator thread and ksoftirqd/{GENERATOR_CPU} (without IRQ_TIME_ACCOUNTING, as in this kernel, a \
         thread's runtime includes the softirq work run in its context) plus the path's node process (the agent; \
         socat with its children), per datagram delivered. Exact and blind to other work on the machine, so no \
         idle baseline is needed. It includes the client's send and the backend's receive; the **node's own** cost \
         is that minus the path's reference's (the direct link with the same offloads), paired repeat by repeat, and the node's capacity per CPU is 10⁹ / the \
         node's own ns.\n\n\
         | path | CPU ns per datagram | node's own ns per datagram | × iptables | node's capacity per CPU, datagrams/s | × iptables | of which node process | delivered |\n\
         |---|---|---|---|---|---|---|---|\n",
        secs = budget.seconds,
    ));
    for (i, path) in paths.iter().enumerate() {
        let node = match path.reference {
            None => "— | — | — | —".to_string(),
            Some(_) => node_cost_cells(&node_ns, &node_capacity, i, 1),
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
        &format!(
            "L4 small UDP, maximum rate delivered (generator on CPU {GENERATOR_CPU}, node on CPU {NODE_CPU})"
        ),
        "datagrams/s",
        &bars(&max),
    ));
    md.push_str(&bar_chart(
        out_dir,
        &format!("{stamp}-l4-udp-cpu"),
        &format!("L4 small UDP, the node's own CPU per datagram at {rate:.0}/s"),
        "ns per datagram",
        &node_bars(paths.iter().map(|p| p.name), &references, &node_ns),
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
