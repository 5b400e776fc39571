//! L4 new TCP connections: the CPU each path spends per connection at a
//! fixed rate, and the node's own share of it (issue 5's new-connection
//! goal).
//!
//! The end-to-end connection rate (wrk, `l4`) is bound by the client and
//! the backend: both share CPU 1, and veth runs the node's forwarding in
//! softirq in the sender's context, on CPU 1 too. So here the load is
//! fixed (h2load opening a new connection per request at a steady rate, one
//! HTTP/1.1 request each, `Connection: close`), and the cost of a path is
//! the exact runtime (schedstat) of every thread in the client's, node's and
//! backend's namespaces (nginx, the agents, HAProxy), of ksoftirqd/0 and /1,
//! and of h2load itself (its rusage once reaped), per connection completed.
//! This kernel has no IRQ_TIME_ACCOUNTING: softirq work (the forwarding,
//! the TCP stacks' receive) is charged to the thread it ran in, which is one
//! of those. The same run over a direct client–backend link (no node) with
//! the path's client and backend offloads gives what the client and backend
//! cost; the node's own CPU per connection is a path's figure minus that,
//! paired repeat by repeat.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context as _, bail};

use super::Budget;
use super::l4::{Topology, start_profile};
use super::report::{bar_chart, node_bars, node_cost_cells};
use super::stats::{Summary, node_own};
use super::udp_load::{cpu_ticks, ksoftirqd};

/// New connections per second: the same for every path, low enough that
/// the slowest path's work (~100 µs per connection with the generator's)
/// leaves CPU 1 room on a shared machine, high enough that a run has
/// thousands of connections.
pub const RATE: u32 = 4000;
/// h2load opens RATE × PERIOD_MS / 1000 connections every PERIOD_MS (a steady
/// rate, not one burst a second).
const PERIOD_MS: u32 = 10;
/// Longest run, ms: the runtimes are exact, and six paths run per repeat
/// (the whole stage adds about a minute to `bench all`).
const RUN_MS: u32 = 1500;
/// Where the client and the backend run.
const CPU: u32 = 1;

pub struct ConnPath {
    pub name: &'static str,
    /// Where the client connects (the gateway's address and port; the
    /// backend itself for a reference).
    pub to: (&'static str, u16),
    /// The reference path (its index) whose cost this one's own is counted
    /// from: the direct link with this path's client and backend offloads;
    /// None: this is a reference.
    pub reference: Option<usize>,
}

pub struct ConnFigures {
    pub markdown: String,
    /// Per path: the node's capacity per CPU, new connections/s (10⁹ / its
    /// own CPU ns per connection); a reference's is not meaningful.
    pub node_capacity: Vec<Summary>,
}

/// One generator run.
struct Run {
    completed: u64,
    failed: u64,
    /// Runtime of every counted thread, h2load's included.
    cpu: f64,
    /// h2load's own runtime.
    generator: f64,
    /// Both CPUs' busy time (/proc/stat): every process on the machine.
    busy: f64,
}

impl Run {
    fn ns_per_connection(&self) -> f64 {
        self.cpu * 1e9 / self.completed.max(1) as f64
    }
}

/// (completed, failed) from h2load's "requests: N total, N started, N
/// done, N succeeded, N failed, N errored, N timeout" line.
fn h2load_result(out: &str) -> anyhow::Result<(u64, u64)> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("requests:"))
        .with_context(|| format!("no requests line in h2load output:\n{out}"))?;
    let count = |what: &str| -> anyhow::Result<u64> {
        line.split(',')
            .find_map(|p| p.trim().strip_suffix(what)?.trim().parse().ok())
            .with_context(|| format!("no {what:?} count in h2load's {line:?}"))
    };
    Ok((
        count("succeeded")?,
        count("failed")? + count("errored")? + count("timeout")?,
    ))
}

/// A thread's exact runtime in ns: the first field of its schedstat.
fn schedstat_runtime_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Runtime in ns by thread id.
type Runtimes = std::collections::HashMap<u32, u64>;

/// Exact runtime of every thread on the machine that is in one of the
/// network namespaces `inodes` or belongs to one of `pids`.
fn counted_threads(inodes: &[u64], pids: &[u32]) -> Runtimes {
    let mut runtimes = Runtimes::new();
    for process in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let listed = pids.contains(&pid);
        for task in std::fs::read_dir(process.path().join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            // Per thread: a thread may have entered another namespace.
            let inside = listed
                || std::fs::metadata(task.path().join("ns/net"))
                    .is_ok_and(|m| inodes.contains(&m.ino()));
            if !inside {
                continue;
            }
            let tid = task.file_name().to_str().and_then(|t| t.parse().ok());
            let runtime = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|t| schedstat_runtime_ns(&t));
            if let (Some(tid), Some(runtime)) = (tid, runtime) {
                runtimes.insert(tid, runtime);
            }
        }
    }
    runtimes
}

/// Seconds the threads of `after` ran since `before`, thread by thread: a
/// thread that exited in between (a worker pool's) drops out with only its
/// last runtime lost, not its whole lifetime; a new one counts whole.
fn runtime_between(before: &Runtimes, after: &Runtimes) -> f64 {
    let ns: u64 = after
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum();
    ns as f64 / 1e9
}

/// Both CPUs' busy time in seconds (/proc/stat ticks).
fn busy_seconds() -> anyhow::Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (a, _) = cpu_ticks(0)?;
    let (b, _) = cpu_ticks(1)?;
    Ok((a + b) as f64 / hz)
}

/// The 1, 5 and 15 minute load averages, for the console log.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Counting<'a> {
    t: &'a Topology,
    inodes: Vec<u64>,
    softirqds: Vec<u32>,
}

impl Counting<'_> {
    fn run_once(&self, path: &ConnPath, connections: u32) -> anyhow::Result<Run> {
        let connections = connections.to_string();
        let per_period = (RATE * PERIOD_MS / 1000).to_string();
        let url = format!("http://{}:{}/", path.to.0, path.to.1);
        let (cpu_before, busy_before) = (
            counted_threads(&self.inodes, &self.softirqds),
            busy_seconds()?,
        );
        let mut child = self
            .t
            .client
            .command(
                Some(CPU),
                &[
                    "h2load",
                    "--h1",
                    "-t1",
                    "-c",
                    &connections,
                    "-n",
                    &connections,
                    "-r",
                    &per_period,
                    "--rate-period",
                    &format!("{PERIOD_MS}ms"),
                    // A connection that stalls ends the run's wait for it.
                    "-N",
                    "2s",
                    // h2load sends the URL's host itself (a second Host
                    // header makes nginx answer 400).
                    "-H",
                    "Connection: close",
                    &url,
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start h2load")?;
        let mut out = String::new();
        child
            .stdout
            .take()
            .context("h2load's stdout")?
            .read_to_string(&mut out)?;
        let generator = reap(child.id())?;
        // The busy window inside the counted one: this process's own scans
        // of /proc are in neither.
        let busy_after = busy_seconds()?;
        let cpu_after = counted_threads(&self.inodes, &self.softirqds);
        let (completed, failed) = h2load_result(&out)?;
        Ok(Run {
            completed,
            failed,
            cpu: runtime_between(&cpu_before, &cpu_after) + generator,
            generator,
            busy: busy_after - busy_before,
        })
    }
}

/// Waits for child `pid` (`ip netns exec` and taskset exec in place: the
/// generator itself); its exact runtime in seconds, as the kernel sums it
/// when reaping (user + system time add up to the scheduler's runtime).
fn reap(pid: u32) -> anyhow::Result<f64> {
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 writes it and `status`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the call.
    if unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) } < 0 {
        bail!("wait4 h2load: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("h2load failed (wait status {status})");
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// The ratios are against `paths`' second (iptables).
pub fn measure(
    t: &Topology,
    paths: &[ConnPath],
    budget: Budget,
    out_dir: &Path,
    stamp: &str,
) -> anyhow::Result<ConnFigures> {
    let run_ms = (budget.seconds * 1000).min(RUN_MS);
    let expected = RATE * run_ms / 1000;
    let references: Vec<Option<usize>> = paths.iter().map(|p| p.reference).collect();
    let inodes = [&t.client, &t.node, &t.backend]
        .iter()
        .map(|ns| Ok(std::fs::metadata(format!("/run/netns/{}", ns.name))?.ino()))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    let counting = Counting {
        t,
        inodes,
        softirqds: vec![ksoftirqd(0)?, ksoftirqd(1)?],
    };
    let n = paths.len();
    let (mut cost, mut generator, mut completed, mut failed, mut coverage) = (
        vec![vec![]; n],
        vec![vec![]; n],
        vec![vec![]; n],
        vec![0u64; n],
        vec![vec![]; n],
    );
    for repeat in 0..budget.repeats {
        for (i, path) in paths.iter().enumerate() {
            // BENCH_L4_PERF=<dir>: a perf profile of both CPUs during each
            // path's first run, to check what the counted threads leave out
            // (softirq work charged to other tasks or to idle).
            let profile = match repeat {
                0 => start_profile(
                    &format!("conn-{i}.perf.data"),
                    run_ms / 1000 + 2,
                    &["perf"],
                    &["-e", "cpu-clock"],
                    std::time::Duration::from_millis(500),
                )?,
                _ => None,
            };
            let run = counting.run_once(path, expected)?;
            if let Some(mut perf) = profile {
                perf.wait()?;
            }
            if run.completed == 0 {
                bail!("{}: no connection completed", path.name);
            }
            println!(
                "    repeat {repeat}: {} at {RATE} conn/s: {:.0} ns of CPU per connection ({:.0} h2load), \
                 {} of {expected} completed, {} failed; counted {:.0}% of both CPUs' busy time; load {}",
                path.name,
                run.ns_per_connection(),
                run.generator * 1e9 / run.completed as f64,
                run.completed,
                run.failed,
                100.0 * run.cpu / run.busy.max(1e-9),
                loadavg(),
            );
            cost[i].push(run.ns_per_connection());
            generator[i].push(run.generator * 1e9 / run.completed as f64);
            completed[i].push(100.0 * run.completed as f64 / expected as f64);
            failed[i] += run.failed;
            coverage[i].push(100.0 * run.cpu / run.busy.max(1e-9));
        }
    }
    let (node_ns, node_capacity) = node_own(&cost, &references);
    let (cost, generator, completed, coverage) = (
        Summary::each(&cost),
        Summary::each(&generator),
        Summary::each(&completed),
        Summary::each(&coverage),
    );
    // A node costing nothing, with this client and backend on one CPU: the
    // most the end-to-end rate could gain over iptables.
    let iptables_reference = cost[references[1].context("iptables' reference")?].median;
    let free_node = (iptables_reference + node_ns[1].median) / iptables_reference;
    let mut md = format!(
        "\n### New TCP connections: the node's CPU per connection\n\n\
         The end-to-end rate above cannot show the node's limit on this 2-CPU machine: wrk and nginx share CPU 1, and \
         veth runs the node's forwarding (XDP, TC, netfilter) in softirq in the sending task's context, on CPU 1 too; \
         so every path's rate is one CPU divided by the client's, the backend's and the node's work per connection \
         together, and the client and backend are most of it. Here the load is fixed instead: {generator_version}, one \
         thread on CPU {CPU} in the client namespace, opening {RATE} new connections/s ({per} every {PERIOD_MS} ms, \
         {expected} connections, {run_s} s), each carrying one HTTP/1.1 request (`Connection: close`, nginx closes) \
         to the same nginx (CPU {CPU}, 1 KB). **CPU ns per connection**: the exact runtime (schedstat) of every \
         thread in the client's, the node's and the backend's namespaces (nginx, the agents, HAProxy, all idle \
         here but nginx) and of ksoftirqd/0 and /1, plus h2load's own (its rusage when reaped), per connection \
         completed. This kernel has no IRQ_TIME_ACCOUNTING: softirq work is charged to the task it runs in, for \
         the forwarding and the TCP stacks' receive one of those (veth runs it in the sender's system call or \
         ksoftirqd); timer and RCU softirq work that fires while another task or the idle loop is current is not \
         counted (`BENCH_L4_PERF=<dir>` records a profile of each path's first run to see how much). The **node's \
         own** cost is that minus the same over a **reference**, a veth pair straight from the client to the \
         backend (no node) with the offloads of the path's own client and backend ends (XDP's links: TX checksum \
         offload off and GRO on, as native XDP needs; iptables' own links and TC's: kernel defaults; the two \
         references differ by several µs per connection), paired repeat by repeat; the node's **capacity** is 10⁹ / \
         its own ns: new connections/s one CPU would handle. With this generator as the client of a maximum-rate \
         run, a node costing nothing would be at most {free_node:.2}× iptables (own links) end to end: (its \
         reference's ns + iptables' own) / its reference's. h2load's share includes the softirq work run in its \
         system calls (its sends carry each packet through veth into the node's forwarding and on into the \
         backend's receive), so it too grows with the node's cost. The last column is the counted runtime over \
         both CPUs' busy time (/proc/stat, every process on the machine, sampled in ticks: single runs of short \
         bursts scatter by tens of %): about 100% on a quiet machine, lower when other work runs. The ratios are \
         against iptables on links of its own (no XDP), as for UDP.\n\n\
         | path | CPU ns per connection | node's own ns per connection | × iptables | node's capacity per CPU, new connections/s | × iptables | of which h2load | completed | failed | counted / busy |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        generator_version = super::tools::version("h2load", "--version"),
        per = RATE * PERIOD_MS / 1000,
        run_s = f64::from(run_ms) / 1000.0,
    );
    for (i, path) in paths.iter().enumerate() {
        let node = match path.reference {
            None => "— | — | — | —".to_string(),
            Some(_) => node_cost_cells(&node_ns, &node_capacity, i, 1),
        };
        md.push_str(&format!(
            "| {} | {} | {node} | {:.0} ns | {:.1}% | {} | {:.0}% |\n",
            path.name,
            cost[i].show(0),
            generator[i].median,
            completed[i].median,
            failed[i],
            coverage[i].median,
        ));
    }
    md.push('\n');
    md.push_str(&bar_chart(
        out_dir,
        &format!("{stamp}-l4-conn-cpu"),
        &format!("L4 new TCP connections, the node's own CPU per connection at {RATE}/s"),
        "ns per connection",
        &node_bars(paths.iter().map(|p| p.name), &references, &node_ns),
    ));
    Ok(ConnFigures {
        markdown: md,
        node_capacity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_counts() {
        let out = "finished in 2.02s, 3966.07 req/s, 0B/s\n\
                   requests: 8000 total, 8000 started, 7990 done, 7985 succeeded, 5 failed, 3 errored, 2 timeout\n\
                   status codes: 7985 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        assert_eq!(h2load_result(out).unwrap(), (7985, 10));
        assert!(h2load_result("finished in 2.02s\n").is_err());
    }

    #[test]
    fn schedstat_first_field_is_runtime() {
        assert_eq!(schedstat_runtime_ns("123456 789 10\n"), Some(123456));
        assert_eq!(schedstat_runtime_ns(""), None);
    }

    #[test]
    fn runtime_is_summed_thread_by_thread() {
        let before = Runtimes::from([(1, 1_000_000_000), (2, 500), (3, 7_000_000_000)]);
        // Thread 3 exited, thread 4 started.
        let after = Runtimes::from([(1, 1_250_000_000), (2, 500), (4, 100_000_000)]);
        assert!((runtime_between(&before, &after) - 0.35).abs() < 1e-12);
    }
}
