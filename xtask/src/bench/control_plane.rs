//! Control plane at scale: the agent (release build) started on generated
//! manifests (manifests.rs) in a private network namespace, XDP on its
//! loopback, an nginx backend. Measures:
//! - RSS idle (1 route), with 5,000 HTTPRoutes, and with 10,000 HTTPRoutes +
//!   1,000 TCP/UDPRoutes + 1,000 TLSRoutes on 100 Gateways (VmRSS once
//!   serving, VmHWM peak);
//! - start-to-serving time (the last HTTPRoute's first request, and the last
//!   TLSRoute's first passthrough connection reaching its echo backend) and
//!   the agent's own first "config applied" time (read, translate, program
//!   eBPF maps, swap proxy tables), and the same for 1,000 L4 routes alone
//!   (the eBPF map programming case) and 1,000 TLSRoutes alone;
//! - change-to-serving: with 5,000 HTTPRoutes present, a route file is
//!   rewritten with a new hostname and a client polls until that host answers
//!   200, over N edits, while oha sends a steady open-loop load to another
//!   route and counts every non-2xx answer and failed request;
//! - cluster mode: the agent against the fake API server (its own process,
//!   tests/src/bin/fake_apiserver.rs) holding the full scale set (RSS, time
//!   to first apply), and change-to-serving with 5,000 routes when one
//!   HTTPRoute is patched through the API;
//! - the criterion benchmark gateway-agent/benches/scale.rs: full translate
//!   and YAML parse of the full scale set, route lookup at 10 and 10,000 routes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::Budget;
use super::l7::{backend_nginx, oha_args, oha_latency};
use super::manifests::{self, Scale};
use super::netns::{Daemon, Netns, http_status, proc_status_kb, wait_until};
use super::report::{Section, StageClock, bar_chart};
use super::stats::{Summary, percentile};
use super::tls_probe;
use timeline::{Change, Timeline};

mod timeline;

const BACKEND: &str = "127.0.0.1:18080";
const AGENT_CPU: u32 = 0;
const CLIENT_CPU: u32 = 1;

struct Started {
    daemon: Daemon,
    manifests: PathBuf,
    log: PathBuf,
    start_to_serving: Duration,
    /// Start to the last TLSRoute's first connection echoed by its backend.
    start_to_tls: Option<Duration>,
}

fn scale(gateways: usize, http_routes: usize, l4_routes: usize, tls_routes: usize) -> Scale {
    Scale {
        gateways,
        http_routes,
        l4_routes,
        tls_routes,
        http_backend: ("127.0.0.1".into(), 18_080),
    }
}

/// The scale set of issue 9: 10,000 HTTPRoutes, 1,000 TCP/UDPRoutes and
/// 1,000 TLSRoutes on 100 Gateways.
fn full_scale() -> Scale {
    scale(100, 10_000, 1_000, 1_000)
}
const FULL_SCALE: &str = "10,000 HTTPRoutes + 1,000 TCP/UDPRoutes + 1,000 TLSRoutes";
/// What the scale set holds, for the report's header.
pub const SCALE_SET: &str = "10,000 HTTPRoutes (one hostname and 5 PathPrefix rules each), 1,000 TCP/UDPRoutes (a listener each) \
     and 1,000 TLSRoutes (an SNI hostname each, 10 per Gateway on one TLS Passthrough listener) across 100 Gateways, \
     standalone (manifest files) and in cluster mode against the fake API server";

/// The TLSRoutes' backend: socat echoing every connection's bytes.
fn tls_echo_backend(ns: &Netns, dir: &Path) -> anyhow::Result<Daemon> {
    let (ip, port) = manifests::TLS_BACKEND;
    let listen = format!("TCP4-LISTEN:{port},bind={ip},reuseaddr,fork");
    let daemon = ns.spawn(
        Some(CLIENT_CPU),
        &["socat", &listen, "EXEC:cat"],
        &dir.join("tls-echo.log"),
    )?;
    let addr = format!("{ip}:{port}");
    ns.within(|| {
        wait_until("TLS echo backend", Duration::from_secs(10), || {
            std::net::TcpStream::connect(&addr).is_ok()
        })
    })??;
    Ok(daemon)
}

/// Starts the agent on `scale` and waits until the last generated route (or,
/// without HTTP routes, /readyz) answers.
fn start_agent(
    ns: &Netns,
    dir: &Path,
    agent: &Path,
    label: &str,
    scale: &Scale,
    log_filter: &str,
) -> anyhow::Result<Started> {
    let manifests_dir = write_manifests(dir, label, scale)?;
    let source = ["--manifests", manifests_dir.to_str().context("utf-8")?];
    launch_agent(
        ns,
        dir,
        agent,
        (label, log_filter),
        scale,
        &manifests_dir,
        &source,
    )
}

/// The generated manifests of `scale`, written to a directory of their own.
fn write_manifests(dir: &Path, label: &str, scale: &Scale) -> anyhow::Result<PathBuf> {
    let manifests_dir = dir.join(format!("manifests-{label}"));
    let _ = std::fs::remove_dir_all(&manifests_dir);
    std::fs::create_dir_all(&manifests_dir)?;
    for (name, text) in manifests::generate(scale, "gateway-agent.dev/node-agent") {
        std::fs::write(manifests_dir.join(name), text)?;
    }
    Ok(manifests_dir)
}

/// Starts the agent with `source` (its `--manifests` or cluster arguments)
/// and its log filter (`RUST_LOG`), and waits until it serves `scale`.
fn launch_agent(
    ns: &Netns,
    dir: &Path,
    agent: &Path,
    (label, log_filter): (&str, &str),
    scale: &Scale,
    manifests_dir: &Path,
    source: &[&str],
) -> anyhow::Result<Started> {
    let log = dir.join(format!("agent-{label}.log"));
    let started = Instant::now();
    let name = format!("{}-{label}", ns.name);
    // `env` execs in place: the pid stays the agent's.
    let rust_log = format!("RUST_LOG={log_filter}");
    let mut args = vec!["env", &rust_log, agent.to_str().context("utf-8")?, "run"];
    args.extend_from_slice(source);
    args.extend_from_slice(&[
        "--interfaces",
        "lo",
        "--xdp-mode",
        "generic",
        "--name",
        &name,
        "--admin-address",
        "127.0.0.1:9470",
    ]);
    let daemon = ns.spawn(Some(AGENT_CPU), &args, &log)?;
    let (addr, host, path) = if scale.http_routes > 0 {
        let last = scale.http_routes - 1;
        let gateway = last % scale.gateways;
        (
            format!("127.0.0.1:{}", manifests::http_port(gateway)),
            manifests::route_host(last),
            "/s4/x",
        )
    } else {
        (
            "127.0.0.1:9470".to_string(),
            "localhost".to_string(),
            "/readyz",
        )
    };
    let agent_log = || {
        format!(
            "agent log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    ns.within(|| {
        wait_until(
            &format!("agent serving {label}"),
            Duration::from_secs(120),
            || http_status(&addr, &host, path) == 200,
        )
    })?
    .with_context(agent_log)?;
    let start_to_serving = started.elapsed();
    // The set is served, not only loaded: a passthrough connection through
    // the last TLSRoute (its own SNI host) reaches the echo backend.
    let start_to_tls = if scale.tls_routes > 0 {
        let last = scale.tls_routes - 1;
        let addr = format!("127.0.0.1:{}", manifests::tls_port(last % scale.gateways));
        let host = manifests::tls_host(last);
        ns.within(|| {
            wait_until(
                &format!("TLS passthrough {host} ({label})"),
                Duration::from_secs(60),
                || tls_probe::passthrough_echoes(&addr, &host),
            )
        })?
        .with_context(agent_log)?;
        Some(started.elapsed())
    } else {
        None
    };
    Ok(Started {
        daemon,
        manifests: manifests_dir.to_path_buf(),
        log,
        start_to_serving,
        start_to_tls,
    })
}

/// `took_ms` of every "config applied" line of the agent's log, in order.
fn apply_times_ms(log: &Path) -> Vec<f64> {
    applied_field_ms(log, "took_ms")
}

/// A `<field>=<ms>` value of every "config applied" line of the agent's log.
fn applied_field_ms(log: &Path, field: &str) -> Vec<f64> {
    logged_field_ms(log, "config applied", field)
}

/// A `<field>=<ms>` value of every line of the agent's log with `message`.
fn logged_field_ms(log: &Path, message: &str, field: &str) -> Vec<f64> {
    let prefix = format!("{field}=");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(&prefix))?
                .parse()
                .ok()
        })
        .collect()
}

fn mb(kb: Option<u64>) -> f64 {
    kb.unwrap_or(0) as f64 / 1024.0
}

#[derive(Default)]
struct Startup {
    rss: Vec<f64>,
    hwm: Vec<f64>,
    serving_s: Vec<f64>,
    tls_serving_s: Vec<f64>,
    first_apply_ms: Vec<f64>,
    /// The first apply's `l4_ms`: issue 9's "eBPF map programming time".
    first_l4_ms: Vec<f64>,
}

impl Startup {
    fn record(&mut self, started: &Started) {
        // Let allocations settle after the first request.
        std::thread::sleep(Duration::from_millis(300));
        let pid = started.daemon.pid();
        self.rss.push(mb(proc_status_kb(pid, "VmRSS")));
        self.hwm.push(mb(proc_status_kb(pid, "VmHWM")));
        self.serving_s.push(started.start_to_serving.as_secs_f64());
        self.tls_serving_s
            .extend(started.start_to_tls.map(|d| d.as_secs_f64()));
        self.first_apply_ms
            .extend(apply_times_ms(&started.log).first());
        self.first_l4_ms
            .extend(applied_field_ms(&started.log, "l4_ms").first());
    }

    /// One row of the startup tables.
    fn row(&self, title: &str) -> String {
        format!(
            "| {title} | {} | {} | {} | {} | {} | {} |\n",
            Summary::of(&self.rss).show(1),
            Summary::of(&self.hwm).show(1),
            Summary::of(&self.serving_s).show(2),
            if self.tls_serving_s.is_empty() {
                "—".into()
            } else {
                Summary::of(&self.tls_serving_s).show(2)
            },
            if self.first_apply_ms.is_empty() {
                "not logged".into()
            } else {
                Summary::of(&self.first_apply_ms).show(1)
            },
            if self.first_l4_ms.is_empty() {
                "not logged".into()
            } else {
                Summary::of(&self.first_l4_ms).show(2)
            },
        )
    }
}

/// The cluster agent's log line of a status pass (debug level).
const STATUS_PASS: &str = "statuses computed";

/// The change-to-serving poll's interval.
const POLL_US: u64 = 250;
/// The pause between two changes.
const EDIT_PAUSE_MS: u64 = 200;

/// What `edit_under_load` measured.
struct EditRun {
    latencies: Vec<f64>,
    /// How long making the change took (the file written, the PATCH answered).
    sent: String,
    took: Duration,
    rate: f64,
    /// How long the load ran, in seconds.
    load_seconds: f64,
    reloads: Vec<f64>,
    read_ms: String,
    translate_ms: String,
    waited_ms: String,
    /// The cluster agent's status passes during the edits (`statuses computed`).
    status_passes: Vec<f64>,
    steady: (f64, f64),
    failed: u64,
    failures: String,
    /// Packets the kernel dropped on the agent's CPU during the edits
    /// because its backlog queue was full (loopback traffic waits there for
    /// the CPU's softirq): each costs a TCP retransmission, 200 ms or more.
    backlog_drops: Option<u64>,
    /// Each change split into stages by the agent's log.
    timeline: Timeline,
}

impl EditRun {
    fn load_note(&self) -> String {
        format!(
            "Meanwhile oha sends {:.0} req/s (open loop, 50 connections) to another route, from 2 s before the first edit \
             to 1 s after the last ({:.1} s; the edits took {:.1} s); then it is stopped with SIGINT, which leaves the few \
             requests still in flight out of its counts.",
            self.rate,
            self.load_seconds,
            self.took.as_secs_f64()
        )
    }

    fn table(&self) -> String {
        let lat = Summary::of(&self.latencies);
        format!(
            "| figure | value |\n|---|---|\n\
             | change to serving p50 | {:.1} ms |\n| change to serving p99 | {:.1} ms |\n| min–max | {:.1}–{:.1} ms |\n\
             | of which making the change (file written / PATCH answered), median (min–max) | {} ms |\n\
             | agent reloads during the edits (`config applied`) | {} |\n| time per reload (agent's took_ms), median (min–max) | {} ms |\n\
             | of which reading manifests / translate | {} / {} ms |\n{}{}\
             | steady load: non-2xx answers + failed requests | {} {} |\n| steady load latency p50 / p99 | {:.2} / {:.2} ms |\n\
             | packets dropped on the agent's CPU, backlog full (each a TCP retransmission, ≥ 200 ms) | {} |\n\n\
             Where the time went, change by change (the agent's time-stamped log against the bench's clock):\n\n{}",
            percentile(&self.latencies, 50.0),
            percentile(&self.latencies, 99.0),
            lat.min,
            lat.max,
            self.sent,
            self.reloads.len(),
            if self.reloads.is_empty() {
                "-".into()
            } else {
                Summary::of(&self.reloads).show(2)
            },
            self.read_ms,
            self.translate_ms,
            if self.waited_ms == "not logged" {
                String::new()
            } else {
                format!(
                    "| wait from the watch event to the reload (agent's waited_ms) | {} ms |\n",
                    self.waited_ms
                )
            },
            if self.status_passes.is_empty() {
                String::new()
            } else {
                format!(
                    "| status passes after the changes and their echoes (agent's `statuses computed` took_ms): count, median (min–max) | {}, {} ms |\n",
                    self.status_passes.len(),
                    Summary::of(&self.status_passes).show(2)
                )
            },
            self.failed,
            self.failures,
            self.steady.0,
            self.steady.1,
            self.backlog_drops
                .map_or_else(|| "not known".to_string(), |n| n.to_string()),
            self.timeline.markdown(),
        )
    }
}

/// `edits` changes made by `edit(k)` (which returns the HTTP port and host
/// the change makes serve), each timed until that host answers 200 on that
/// port, 50 ms apart, under a steady open-loop load on route 0.
/// `is_event` tells the agent's log line of a change's event.
fn edit_under_load(
    ns: &Netns,
    started: &Started,
    budget: Budget,
    edits: usize,
    mut edit: impl FnMut(usize) -> anyhow::Result<(u16, String)> + Send,
    is_event: impl Fn(&str) -> bool,
) -> anyhow::Result<EditRun> {
    let rate = if budget.quick { 1_000.0 } else { 5_000.0 };
    let generations_before = apply_times_ms(&started.log).len();
    let passes_before = logged_field_ms(&started.log, STATUS_PASS, "took_ms").len();
    // A deadline long enough to cover every edit (the pause plus up to
    // 300 ms each to serve, and 10 s to spare); the load is stopped once the
    // edits are done.
    let deadline_seconds = (edits as u64 * (EDIT_PAUSE_MS + 300)).div_ceil(1000) as u32 + 10;
    let url = format!("http://127.0.0.1:{}/s0/steady", manifests::http_port(0));
    let deadline = Duration::from_secs(deadline_seconds.into());
    let mut args = oha_args(deadline, rate, 50, &manifests::route_host(0), &url, "json");
    // At its deadline oha aborts the HTTP/1 requests still in flight and
    // counts them as failed ("aborted due to deadline"): wait for them
    // instead, so that what is counted is what the agent answered.
    args.insert(1, "--wait-ongoing-requests-after-deadline".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let load = ns
        .command(Some(CLIENT_CPU), &args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    let load_started = Instant::now();
    let drops_before = backlog_drops(AGENT_CPU);
    let (latencies, sent, sent_at): (Vec<f64>, Vec<f64>, Vec<f64>) =
        ns.within(|| -> anyhow::Result<_> {
            let mut latencies = Vec::new();
            let mut sent = Vec::new();
            let mut sent_at = Vec::new();
            let mut poller = Poller::default();
            for k in 0..edits {
                sent_at.push(timeline::now());
                let changed = Instant::now();
                let (port, host) = edit(k)?;
                sent.push(changed.elapsed().as_secs_f64() * 1e3);
                let addr = format!("127.0.0.1:{port}");
                let deadline = changed + Duration::from_secs(10);
                // Polled on one keep-alive connection every POLL_US: finer than
                // the goal (10 ms), without a connection setup per poll.
                while poller.status(&addr, &host, "/s0/x") != 200 {
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "changed route {host} not serving after 10 s"
                    );
                    std::thread::sleep(Duration::from_micros(POLL_US));
                }
                latencies.push(changed.elapsed().as_secs_f64() * 1e3);
                // Apart enough that cluster mode takes each as a lone change,
                // not as part of a burst (debounced 100 ms).
                std::thread::sleep(Duration::from_millis(EDIT_PAUSE_MS));
            }
            Ok((latencies, sent, sent_at))
        })??;
    let took = load_started.elapsed();
    let backlog_drops = drops_before
        .zip(backlog_drops(AGENT_CPU))
        .map(|(before, after)| after.wrapping_sub(before));
    // The load runs a second past the last edit, then stops: oha's deadline
    // is only an upper bound (running to it idled the bench for 40 s of 60).
    // On SIGINT oha prints its report and drops the few requests then in
    // flight from it, neither counted as answered nor as failed.
    std::thread::sleep(Duration::from_secs(1));
    // `ip netns exec` and `taskset` exec: the child is oha itself.
    unsafe { libc::kill(load.id() as libc::pid_t, libc::SIGINT) };
    let load_took = load_started.elapsed() + Duration::from_secs(2);
    let out = load.wait_with_output()?;
    let oha_out = String::from_utf8_lossy(&out.stdout);
    let (steady_p50, steady_p99, failed) = oha_latency(&oha_out)?;
    let failures = failure_kinds(&oha_out);
    let reloads: Vec<f64> = apply_times_ms(&started.log).split_off(generations_before);
    let mut status_passes = logged_field_ms(&started.log, STATUS_PASS, "took_ms");
    let status_passes = status_passes.split_off(passes_before.min(status_passes.len()));
    let part = |field: &str| {
        let mut values = applied_field_ms(&started.log, field);
        if values.len() < generations_before {
            return "not logged".to_string();
        }
        let values = values.split_off(generations_before);
        if values.is_empty() {
            "-".into()
        } else {
            Summary::of(&values).show(2)
        }
    };
    let changes: Vec<Change> = sent_at
        .iter()
        .zip(&latencies)
        .map(|(&sent_at, &latency_ms)| Change {
            sent_at,
            latency_ms,
        })
        .collect();
    let log = std::fs::read_to_string(&started.log).unwrap_or_default();
    // `BENCH_CP_DUMP=DIR`: the agent's log and each change's send time and
    // latency are kept there, for a closer look than the stage table's.
    if let Some(dump) = std::env::var_os("BENCH_CP_DUMP") {
        let dump = PathBuf::from(dump);
        std::fs::create_dir_all(&dump)?;
        let name = started
            .log
            .file_stem()
            .context("log name")?
            .to_string_lossy();
        std::fs::write(dump.join(format!("{name}.log")), &log)?;
        let rows: String = changes
            .iter()
            .map(|c| format!("{:.6}\t{:.3}\n", c.sent_at, c.latency_ms))
            .collect();
        std::fs::write(dump.join(format!("{name}.changes")), rows)?;
    }
    let timeline = Timeline::of(&log, &changes, is_event);
    Ok(EditRun {
        timeline,
        latencies,
        sent: Summary::of(&sent).show(2),
        took,
        rate,
        load_seconds: load_took.as_secs_f64(),
        reloads,
        read_ms: part("read_ms"),
        translate_ms: part("translate_ms"),
        waited_ms: part("waited_ms"),
        status_passes,
        steady: (steady_p50, steady_p99),
        failed,
        failures,
        backlog_drops,
    })
}

/// The count of packets `cpu` dropped because its backlog was full (the
/// second column of its row in /proc/net/softnet_stat, hexadecimal).
fn backlog_drops(cpu: u32) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").ok()?;
    let row = text.lines().nth(cpu as usize)?;
    u64::from_str_radix(row.split_whitespace().nth(1)?, 16).ok()
}

/// HTTP/1.1 GETs on one keep-alive connection per address, reopened when
/// the server closes it.
#[derive(Default)]
struct Poller {
    connection: Option<(String, std::io::BufReader<std::net::TcpStream>)>,
}

impl Poller {
    /// The status code of `GET path` with `host` (0: no answer).
    fn status(&mut self, addr: &str, host: &str, path: &str) -> u16 {
        match self.try_status(addr, host, path) {
            Ok(status) => status,
            Err(_) => {
                self.connection = None;
                0
            }
        }
    }

    fn try_status(&mut self, addr: &str, host: &str, path: &str) -> std::io::Result<u16> {
        use std::io::{BufRead as _, Read as _, Write as _};
        if self.connection.as_ref().is_none_or(|(a, _)| a != addr) {
            let sock_addr = addr.parse().map_err(std::io::Error::other)?;
            let stream =
                std::net::TcpStream::connect_timeout(&sock_addr, Duration::from_millis(500))?;
            stream.set_read_timeout(Some(Duration::from_millis(500)))?;
            stream.set_nodelay(true)?;
            self.connection = Some((addr.to_string(), std::io::BufReader::new(stream)));
        }
        let (_, reader) = self.connection.as_mut().expect("connected above");
        write!(
            reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"
        )?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status = line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("status line {line:?}")))?;
        let mut length = None;
        let mut close = false;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<u64>().ok();
            }
            close |= lower.starts_with("connection:") && lower.contains("close");
        }
        // Without a length the body runs to the close: reconnect next time.
        let Some(length) = length else {
            self.connection = None;
            return Ok(status);
        };
        std::io::copy(&mut reader.by_ref().take(length), &mut std::io::sink())?;
        if close {
            self.connection = None;
        }
        Ok(status)
    }
}

/// One request on a new connection with a body; the status code.
fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> anyhow::Result<u16> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_nodelay(true)?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(std::str::from_utf8(&head[9..12])?.parse()?)
}

/// The fake API server process, holding the manifests; stopped on drop.
struct FakeApi {
    _daemon: Daemon,
    addr: String,
}

impl std::ops::Deref for FakeApi {
    type Target = str;
    fn deref(&self) -> &str {
        &self.addr
    }
}

/// Starts the fake API server on `scale`'s manifests, then the agent in
/// cluster mode against it, and waits until the last generated route (or
/// /readyz) answers.
fn start_cluster_agent(
    ns: &Netns,
    dir: &Path,
    agent: &Path,
    fake: &Path,
    (label, log_filter): (&str, &str),
    scale: &Scale,
) -> anyhow::Result<(Started, FakeApi)> {
    use std::io::BufRead as _;
    let manifests_dir = write_manifests(dir, label, scale)?;
    let kubeconfig = dir.join(format!("kubeconfig-{label}"));
    // On the client's CPU: an API server does not run on the node's agent CPU.
    let mut child = ns
        .command(
            Some(CLIENT_CPU),
            &[
                fake.to_str().context("utf-8")?,
                "127.0.0.1:0",
                kubeconfig.to_str().context("utf-8")?,
                manifests_dir.to_str().context("utf-8")?,
            ],
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting fake-apiserver")?;
    let stdout = child.stdout.take().context("fake-apiserver stdout")?;
    let daemon = Daemon(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .strip_prefix("ready ")
        .context("fake-apiserver did not start")?
        .trim()
        .to_string();
    let api = FakeApi {
        _daemon: daemon,
        addr,
    };
    let started = launch_agent(
        ns,
        dir,
        agent,
        (label, log_filter),
        scale,
        &manifests_dir,
        &[
            "--kubeconfig",
            kubeconfig.to_str().context("utf-8")?,
            "--node-name",
            "bench-node",
            "--lease-namespace",
            "default",
        ],
    )?;
    Ok((started, api))
}

/// Waits until neither the agent's configuration generation (`/metrics`)
/// nor its count of status writes (`status written` lines of its log) has
/// moved for 2 s; how long that took. (An agent that does not reload for the
/// echoes of its own status writes shows them only in the log.)
fn wait_generation_settled(ns: &Netns, log: &Path, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    ns.within(|| -> anyhow::Result<Duration> {
        let mut last = (None, 0, Instant::now());
        loop {
            let generation = metric(
                &http_get_body("127.0.0.1:9470", "/metrics"),
                "gateway_config_generation",
            );
            let writes = std::fs::read_to_string(log)
                .unwrap_or_default()
                .matches("status written")
                .count();
            if (generation, writes) != (last.0, last.1) {
                last = (generation, writes, Instant::now());
            } else if last.2.elapsed() > Duration::from_secs(2) {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "configuration still changing after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })?
}

/// The body of one GET on a new connection (empty on any failure).
fn http_get_body(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The value of an unlabelled metric in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn run(
    agent: &Path,
    helpers: &super::Helpers,
    budget: Budget,
    out_dir: &Path,
    stamp: &str,
) -> anyhow::Result<Section> {
    println!("==> bench control-plane");
    let ns = Netns::new("cp")?;
    let dir = std::env::temp_dir().join(&ns.name);
    std::fs::create_dir_all(&dir)?;
    let mut clock = StageClock::start();
    let result = measure(
        &ns,
        &dir,
        (agent, &helpers.fake_apiserver),
        budget,
        out_dir,
        stamp,
        &mut clock,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let mut section = result?;
    // The agent's figures first (printed as soon as measured): building the
    // criterion benchmark takes long on a loaded machine.
    println!("{}", section.markdown);
    let criterion = match &helpers.scale_bench {
        None => "Not run in this report (`BENCH_SKIP_CRITERION` set).\n".to_string(),
        Some(bench) => criterion(bench, budget)
            .unwrap_or_else(|e| format!("criterion benchmark failed: {e:#}\n")),
    };
    clock.lap("criterion");
    section.markdown.push_str(&format!(
        "\n### Translate and route lookup (criterion, `cargo bench -p gateway-agent --bench scale`)\n\n{criterion}"
    ));
    section.markdown.push_str(&clock.markdown());
    Ok(section)
}

fn measure(
    ns: &Netns,
    dir: &Path,
    (agent, fake): (&Path, &Path),
    budget: Budget,
    out_dir: &Path,
    stamp: &str,
    clock: &mut StageClock,
) -> anyhow::Result<Section> {
    let _backend = backend_nginx(ns, dir, BACKEND, CLIENT_CPU)?;
    let _tls_backend = tls_echo_backend(ns, dir)?;
    let cases = [
        ("idle (1 HTTPRoute)", "idle", scale(1, 1, 0, 0)),
        ("1,000 TCP/UDPRoutes", "l4", scale(100, 0, 1_000, 0)),
        ("1,000 TLSRoutes", "tls", scale(100, 0, 0, 1_000)),
        ("5,000 HTTPRoutes", "5k", scale(100, 5_000, 0, 0)),
        (FULL_SCALE, "full", full_scale()),
    ];
    // `BENCH_CP_EDITS_ONLY`: only the change-to-serving runs (development).
    let edits_only = std::env::var_os("BENCH_CP_EDITS_ONLY").is_some();
    let mut results: Vec<Startup> = Vec::new();
    let mut md = String::new();
    if !edits_only {
        results = cases.iter().map(|_| Startup::default()).collect();
        // Interleaved: each repeat starts every case once.
        for repeat in 0..budget.repeats {
            for ((_, label, scale), result) in cases.iter().zip(&mut results) {
                let started = start_agent(ns, dir, agent, label, scale, "info")?;
                result.record(&started);
                println!(
                    "    repeat {repeat}: {label}: serving after {:.2} s (TLS {:.2} s), RSS {:.1} MB, peak {:.1} MB",
                    started.start_to_serving.as_secs_f64(),
                    started.start_to_tls.unwrap_or_default().as_secs_f64(),
                    result.rss.last().copied().unwrap_or(0.0),
                    result.hwm.last().copied().unwrap_or(0.0),
                );
            }
        }
        md.push_str(
            "The agent (release build) started on generated manifests (100 Gateways; idle: one): each HTTPRoute has one hostname and 5 PathPrefix rules; \
             each TCP/UDPRoute its own listener; the TLSRoutes 10 per Gateway on one TLS Passthrough listener each, an SNI hostname \
             each, all to one TCP echo backend (socat). \"Start to first request served\" waits for the last HTTPRoute's last rule \
             (or /readyz without HTTPRoutes); \"start to first TLS connection served\" then for a ClientHello naming the last \
             TLSRoute's hostname to come back from the echo backend through the agent (the route chosen by SNI and spliced). \"First apply\" is the agent's own `config applied took_ms` for its first \
             configuration: reading the manifests, translate, programming the eBPF maps and the proxy tables; \
             \"of which eBPF maps\" is that apply's `l4_ms`: comparing with and writing the L4 maps (listeners, routes, backends, \
             Maglev tables; their programs already loaded).\n\n\
             | configuration | RSS once serving MB | peak RSS (VmHWM) MB | start to first request served s | start to first TLS connection served s | first apply ms | of which eBPF maps ms |\n|---|---|---|---|---|---|---|\n",
        );
        for ((title, _, _), r) in cases.iter().zip(&results) {
            md.push_str(&r.row(title));
        }
        let rss_bars: Vec<(String, Summary)> = cases
            .iter()
            .zip(&results)
            .map(|((_, label, _), r)| (label.to_string(), Summary::of(&r.hwm)))
            .collect();
        md.push('\n');
        md.push_str(&bar_chart(
            out_dir,
            &format!("{stamp}-cp-rss"),
            "agent peak RSS (VmHWM)",
            "MB",
            &rss_bars,
        ));
    }

    clock.lap("standalone starts");
    // Change to serving, under load: a manifest file written.
    let edits = if budget.quick { 20 } else { 100 };
    let started = start_agent(
        ns,
        dir,
        agent,
        "edits",
        &scale(100, 5_000, 0, 0),
        timeline::LOG_FILTER,
    )?;
    let edit_file = started.manifests.join("edit.yaml");
    let port0 = manifests::http_port(0);
    let standalone = edit_under_load(
        ns,
        &started,
        budget,
        edits,
        |k| {
            let id = 1_000_000 + k;
            let text = manifests::http_route(id, 0).replace(&format!("route-{id}"), "edited");
            std::fs::write(&edit_file, text)?;
            Ok((port0, manifests::route_host(id)))
        },
        |line| line.contains("file event"),
    )?;
    drop(started);
    println!("{}", standalone.table());
    md.push_str(&format!(
        "\n### Change to serving ({edits} edits, 5,000 HTTPRoutes present)\n\n\
         Each edit rewrites one file (`edit.yaml`: one HTTPRoute, a new hostname each time); the clock runs from the write \
         until that hostname first answers 200 (polled every {POLL_US} µs on one keep-alive connection); edits are {EDIT_PAUSE_MS} ms apart. {}\n\n{}",
        standalone.load_note(),
        standalone.table(),
    ));
    let p99 = percentile(&standalone.latencies, 99.0);

    // Cluster mode: the agent against the fake API server (`fake`, a
    // release build, since its time to answer a PATCH and to send the watch
    // event is inside every API change measured; `BENCH_FAKE_APISERVER`
    // names an already built one instead).
    clock.lap("standalone edits");
    let cluster_cases = [(FULL_SCALE, "kfull", full_scale())];
    let cluster_repeats = if edits_only { 0 } else { budget.repeats.min(3) };
    let mut cluster_results: Vec<Startup> =
        cluster_cases.iter().map(|_| Startup::default()).collect();
    for repeat in 0..cluster_repeats {
        for ((_, label, scale), result) in cluster_cases.iter().zip(&mut cluster_results) {
            let (started, _api) =
                start_cluster_agent(ns, dir, agent, fake, (label, "info"), scale)?;
            result.record(&started);
            println!(
                "    repeat {repeat}: cluster {label}: serving after {:.2} s (TLS {:.2} s), RSS {:.1} MB, peak {:.1} MB",
                started.start_to_serving.as_secs_f64(),
                started.start_to_tls.unwrap_or_default().as_secs_f64(),
                result.rss.last().copied().unwrap_or(0.0),
                result.hwm.last().copied().unwrap_or(0.0),
            );
        }
    }
    clock.lap("cluster starts");
    let (started, api) = start_cluster_agent(
        ns,
        dir,
        agent,
        fake,
        ("kedits", timeline::LOG_FILTER),
        &scale(100, 5_000, 0, 0),
    )?;
    let mut edits_startup = Startup::default();
    edits_startup.record(&started);
    // Let the first status writes (one per object) and the reloads they
    // echo settle, so that each edit below meets an idle agent.
    let settled = wait_generation_settled(ns, &started.log, Duration::from_secs(300))?;
    println!(
        "    cluster: status writes settled after {:.1} s",
        settled.as_secs_f64()
    );
    clock.lap("cluster edit run's start and status settle");
    let cluster = edit_under_load(
        ns,
        &started,
        budget,
        edits,
        |k| {
            // Route i is on Gateway i % 100 (manifests.rs); route 0 carries the
            // steady load, so routes 1, 2, ... get a new hostname each.
            let i = k + 1;
            let host = format!("e{i}.{}", manifests::route_host(i));
            let body = format!(r#"{{"spec":{{"hostnames":["{host}"]}}}}"#);
            let path = format!(
                "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/route-{i}"
            );
            let status = http_request(&api, "PATCH", &path, "application/merge-patch+json", &body)?;
            anyhow::ensure!(status == 200, "PATCH {path}: {status}");
            Ok((manifests::http_port(i % 100), host))
        },
        |line| {
            line.contains("watch event")
                && line.contains("kind=HttpRoute")
                && line.contains("status_only=false")
        },
    )?;
    drop(started);
    clock.lap("cluster edits");
    md.push_str(&format!(
        "\n### Cluster mode, against the fake API server\n\n\
         The agent in cluster mode (`--kubeconfig`) against `fake-apiserver` (tests/src/bin/fake_apiserver.rs, a release build on the \
         client's CPU: list, watch, merge patch over HTTP as a real API server serves them) holding the generated objects; it is the \
         status-writing leader, so each object's status is written once after start. \"Start to first request served\" includes \
         the fake server's lists. {cluster_repeats} repeats.\n\n\
         | configuration | RSS once serving MB | peak RSS (VmHWM) MB | start to first request served s | start to first TLS connection served s | first apply ms | of which eBPF maps ms |\n|---|---|---|---|---|---|---|\n",
    ));
    for ((title, _, _), r) in cluster_cases.iter().zip(&cluster_results) {
        if !edits_only {
            md.push_str(&r.row(title));
        }
    }
    md.push_str(&edits_startup.row("5,000 HTTPRoutes (the edit run below, 1 start)"));
    md.push_str(&format!(
        "\n#### Change to serving through the API ({edits} changes, 5,000 HTTPRoutes present)\n\n\
         Each change is a merge patch of one HTTPRoute's hostnames sent to the API server (as `kubectl patch` does); the \
         clock runs from sending it until the new hostname first answers 200 (polled as above). The status the agent \
         writes back for the route comes back as a watch event too; an agent that tells such a status-only change apart \
         reloads once per change, an older one twice (the reload count below). {}\n\n{}",
        cluster.load_note(),
        cluster.table(),
    ));
    let cluster_p99 = percentile(&cluster.latencies, 99.0);

    let failed = standalone.failed + cluster.failed;
    let goal = |ok: bool| if ok { "met" } else { "**missed**" };
    let memory = if edits_only {
        String::new()
    } else {
        let idle = Summary::of(&results[0].rss).median;
        let rss5k = Summary::of(&results[3].rss).median;
        format!(
            "idle RSS ≤ 30 MB: {} ({idle:.1} MB); RSS with 5,000 HTTPRoutes ≤ 40 MB: {} ({rss5k:.1} MB); ",
            goal(idle <= 30.0),
            goal(rss5k <= 40.0),
        )
    };
    md.push_str(&format!(
        "\nGoals (issue 9): change-to-serving p99 ≤ 10 ms with 5,000 routes: file edit {} ({p99:.1} ms, {:.1}×), \
         API change {} ({cluster_p99:.1} ms, {:.1}×); {memory}\
         zero non-2xx / failed requests under steady load while editing: {} ({failed}).\n",
        goal(p99 <= 10.0),
        p99 / 10.0,
        goal(cluster_p99 <= 10.0),
        cluster_p99 / 10.0,
        goal(failed == 0),
    ));
    Ok(Section {
        title: "Control plane: scale, memory, change to serving".into(),
        markdown: md,
    })
}

/// What the steady load's non-2xx answers and failed requests were, from
/// oha's JSON: `(503: 2, connection closed: 1)`, empty when there were none.
fn failure_kinds(oha_json: &str) -> String {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(oha_json) else {
        return String::new();
    };
    let mut kinds = Vec::new();
    for (code, n) in json["statusCodeDistribution"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if !code.starts_with('2') {
            kinds.push(format!("{code}: {n}"));
        }
    }
    for (error, n) in json["errorDistribution"].as_object().into_iter().flatten() {
        kinds.push(format!("{error}: {n}"));
    }
    if kinds.is_empty() {
        String::new()
    } else {
        format!("({})", kinds.join(", ").replace('|', "/"))
    }
}

/// Runs the criterion benchmark (`bench`, built by `Helpers`: what `cargo
/// bench -p gateway-agent --bench scale` runs) and tabulates its medians.
fn criterion(bench: &Path, budget: Budget) -> anyhow::Result<String> {
    let mut cmd = Command::new(bench);
    // Warm-up 1 s, not 3: every benchmark here reaches its steady time
    // within a few iterations (lookups of ~50 ns, translate ~150 ms).
    // Measurement 3 s, not 5: a lookup's 100 samples then hold ~60 million
    // iterations (its 95% interval was ±0.1 ns at 5 s), and translate and
    // parse keep their 10 samples. No plots: the report reads
    // estimates.json, and gnuplot's charts took ~5 s per benchmark.
    let measurement = if budget.quick { "2" } else { "3" };
    cmd.args([
        "--bench",
        "--warm-up-time",
        "1",
        "--measurement-time",
        measurement,
        "--noplot",
    ])
    .env(
        "CRITERION_HOME",
        std::fs::canonicalize("target")?.join("criterion"),
    );
    crate::run_cmd(&mut cmd)?;
    let estimate = |id: &str| -> anyhow::Result<(f64, f64, f64)> {
        let path = format!("target/criterion/{id}/new/estimates.json");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?,
        )?;
        let m = &json["median"];
        let get = |v: &serde_json::Value| v.as_f64().context("estimate");
        Ok((
            get(&m["point_estimate"])?,
            get(&m["confidence_interval"]["lower_bound"])?,
            get(&m["confidence_interval"]["upper_bound"])?,
        ))
    };
    let mut md = String::from("| benchmark | median | 95% interval |\n|---|---|---|\n");
    let mut lookup = Vec::new();
    for (id, title, unit, div) in [
        (
            "route_lookup/10",
            "route lookup, 10 HTTPRoutes (50 rules)",
            "ns",
            1.0,
        ),
        (
            "route_lookup/10000",
            "route lookup, 10,000 HTTPRoutes (50,000 rules)",
            "ns",
            1.0,
        ),
        (
            "translate/10000",
            "translate, 10,000 HTTPRoutes + 1,000 TCP/UDPRoutes + 1,000 TLSRoutes, 100 Gateways",
            "ms",
            1e6,
        ),
        ("parse/10000", "YAML parse of the same manifests", "ms", 1e6),
    ] {
        let (median, low, high) = estimate(id)?;
        if id.starts_with("route_lookup") {
            lookup.push(median);
        }
        md.push_str(&format!(
            "| {title} | {:.1} {unit} | {:.1}–{:.1} {unit} |\n",
            median / div,
            low / div,
            high / div
        ));
    }
    let translate_ms = estimate("translate/10000")?.0 / 1e6;
    let goal = |ok: bool| if ok { "met" } else { "**missed**" };
    md.push_str(&format!(
        "\nGoals: lookup at 10,000 routes within 2× of 10 routes: {} ({:.2}×); full translate of the scale set (10,000 HTTP + 1,000 L4 + 1,000 TLS routes) under 1 s: {} ({translate_ms:.0} ms).\n",
        goal(lookup[1] <= 2.0 * lookup[0]),
        lookup[1] / lookup[0],
        goal(translate_ms < 1000.0),
    ));
    Ok(md)
}
