//! L7: the agent's hyper proxy against nginx and HAProxy (Debian packages)
//! configured to the same route (Host `bench.example`, prefix `/`) and the
//! same backend (an nginx answering 1 KB), all in a private network namespace
//! on loopback. Proxies run on CPU 0; the clients and the backend on CPU 1.
//!
//! - maximum requests/s, closed loop: wrk (HTTP/1.1 keep-alive, 64
//!   connections) and h2load (h2c prior knowledge, 10 connections × 10 streams);
//! - latency, open loop at a fixed rate (half nginx's maximum): oha with
//!   latency correction in one-second runs back to back, p50 and p99 over
//!   all their requests (p90 and p99.9 beside them);
//! - RSS of each proxy sampled halfway through its wrk run.
//!
//! `BENCH_L7_LATENCY_RATE=<req/s>` runs the open-loop phase alone at that
//! rate (for looking at the tail: many repeats in a few minutes), with
//! `BENCH_L7_REPEATS` repeats (default: the budget's).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::netns::{Daemon, Netns, children, http_status, proc_status_kb, wait_until};
use super::report::{Section, bar_chart};
use super::stats::{Summary, percentile};
use super::{Budget, manifests};

pub const HOST: &str = "bench.example";
const BACKEND_PORT: u16 = 18_080;
const PROXY_CPU: u32 = 0;
const CLIENT_CPU: u32 = 1;

struct Proxy {
    name: &'static str,
    h1_port: u16,
    h2_port: u16,
    daemon: Daemon,
}

impl Proxy {
    /// `field` of /proc/<pid>/status (kB) summed over the processes that
    /// serve (nginx: its workers).
    fn status_kb(&self, field: &str) -> u64 {
        let pid = self.daemon.pid();
        let pids = if self.name == "nginx" {
            children(pid)
        } else {
            vec![pid]
        };
        pids.iter().filter_map(|p| proc_status_kb(*p, field)).sum()
    }
}

/// Resident memory (MB) sampled together: the goal's VmRSS, and its
/// file-backed (binary, libraries) and anonymous (heap, stacks) parts.
const RSS_FIELDS: [&str; 3] = ["VmRSS", "RssFile", "RssAnon"];

/// nginx answering every request with a 1 KB body (the backend of every
/// benchmark), on `addr`.
pub fn backend_nginx(ns: &Netns, dir: &Path, addr: &str, cpu: u32) -> anyhow::Result<Daemon> {
    let body = "x".repeat(1024);
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {dir}/backend.pid;\nerror_log {dir}/backend.err warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{ access_log off; keepalive_requests 1000000;\n\
           server {{ listen {addr} backlog=4096; location / {{ default_type text/plain; return 200 \"{body}\"; }} }} }}\n",
        dir = dir.display()
    );
    let path = dir.join("backend-nginx.conf");
    std::fs::write(&path, conf)?;
    let path = path.to_str().context("utf-8 path")?.to_string();
    let prefix = format!("{}/", dir.display());
    let daemon = ns.spawn(
        Some(cpu),
        &["nginx", "-p", &prefix, "-e", "stderr", "-c", &path],
        &dir.join("backend-nginx.log"),
    )?;
    let target = addr.to_string();
    ns.within(move || {
        wait_until("backend nginx", Duration::from_secs(10), || {
            http_status(&target, HOST, "/") == 200
        })
    })??;
    Ok(daemon)
}

fn start_nginx(ns: &Netns, dir: &Path) -> anyhow::Result<Daemon> {
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {dir}/proxy.pid;\nerror_log {dir}/proxy-nginx.err warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{ access_log off; keepalive_requests 1000000;\n\
           upstream web {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 128; }}\n\
           server {{ listen 127.0.0.1:18001 backlog=4096; listen 127.0.0.1:18003 http2 backlog=4096; server_name {HOST};\n\
             http2_max_concurrent_streams 128;\n\
             location / {{ proxy_pass http://web; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
        dir = dir.display()
    );
    let path = dir.join("proxy-nginx.conf");
    std::fs::write(&path, conf)?;
    let prefix = format!("{}/", dir.display());
    ns.spawn(
        Some(PROXY_CPU),
        &[
            "nginx",
            "-p",
            &prefix,
            "-e",
            "stderr",
            "-c",
            path.to_str().context("utf-8")?,
        ],
        &dir.join("proxy-nginx.log"),
    )
}

fn start_haproxy(ns: &Netns, dir: &Path) -> anyhow::Result<Daemon> {
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 4000\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\n\
         frontend fe\n  bind 127.0.0.1:18002\n  bind 127.0.0.1:18004 proto h2\n\
         \x20 acl bench hdr(host),field(1,:) -i {HOST}\n  use_backend web if bench\n\
         backend web\n  server s1 127.0.0.1:{BACKEND_PORT}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    ns.spawn(
        Some(PROXY_CPU),
        &["haproxy", "-db", "-f", path.to_str().context("utf-8")?],
        &dir.join("haproxy.log"),
    )
}

fn start_agent(ns: &Netns, dir: &Path, agent: &Path) -> anyhow::Result<Daemon> {
    let manifests_dir = dir.join("manifests");
    std::fs::create_dir_all(&manifests_dir)?;
    let scale = manifests::Scale {
        gateways: 1,
        http_routes: 0,
        l4_routes: 0,
        http_backend: ("127.0.0.1".into(), BACKEND_PORT),
        ..Default::default()
    };
    for (name, text) in manifests::generate(&scale, "gateway-agent.dev/node-agent") {
        std::fs::write(manifests_dir.join(name), text)?;
    }
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: bench\n  namespace: default\n\
         spec:\n  parentRefs:\n  - name: gw-0\n  hostnames: [\"{HOST}\"]\n  rules:\n  - matches:\n    - path:\n        type: PathPrefix\n        value: /\n    backendRefs:\n    - name: web\n      port: 80\n"
    );
    std::fs::write(manifests_dir.join("route.yaml"), route)?;
    let name = ns.name.clone();
    ns.spawn(
        Some(PROXY_CPU),
        &[
            agent.to_str().context("utf-8")?,
            "run",
            "--manifests",
            manifests_dir.to_str().context("utf-8")?,
            "--interfaces",
            "lo",
            "--xdp-mode",
            "generic",
            "--name",
            &name,
            "--admin-address",
            "127.0.0.1:9470",
        ],
        &dir.join("agent.log"),
    )
}

/// The rate `BENCH_L7_LATENCY_RATE` asks the open-loop phase to run alone at.
fn latency_only_rate() -> anyhow::Result<Option<f64>> {
    match std::env::var("BENCH_L7_LATENCY_RATE") {
        Ok(rate) => Ok(Some(rate.parse().context("BENCH_L7_LATENCY_RATE")?)),
        Err(_) => Ok(None),
    }
}

/// The most results one oha process of the open-loop phase collects. oha
/// without its TUI keeps every result in an unbounded queue until the end;
/// each time the queue doubles (at 16,384, 32,768, 65,536 and 131,072
/// results) it is copied into fresh memory, and on this VM the page faults
/// make that a 1, 3, 5 and 10 ms stall of the client, which delays the
/// requests due meanwhile (docs/l7-tail.md). Runs under 32,768 results
/// leave only the 16,384 growth (~1 ms).
const RESULTS_PER_RUN: f64 = 30_000.0;

/// Length of each oha run at `rate`: one second, or less where a second
/// would pass `RESULTS_PER_RUN`.
fn latency_run_ms(rate: f64) -> u32 {
    (RESULTS_PER_RUN / rate * 1e3).floor().clamp(200.0, 1e3) as u32
}

/// Requests a run started in its first this-many seconds are not counted:
/// oha opens its 64 connections then, and the requests due meanwhile wait
/// for them (up to a few ms, some 300 a run), which over five runs would be
/// most of the p99's 1%, the client's again and not the proxy's.
const LATENCY_WARM_UP_SECONDS: f64 = 0.1;

/// Open-loop latency per proxy, one value per repeat (ms), interleaved
/// across the proxies. Each repeat is short oha runs back to back for
/// `seconds` (`latency_run_ms`); its percentiles are over all of their
/// requests together (but each run's warm-up).
struct Latency {
    p50: Vec<Vec<f64>>,
    p90: Vec<Vec<f64>>,
    p99: Vec<Vec<f64>>,
    p999: Vec<Vec<f64>>,
    /// Requests answered with a status other than 2xx, over all repeats.
    non_2xx: Vec<u64>,
    /// Requests answered, and requests the rate scheduled, over all repeats.
    answered: Vec<(u64, u64)>,
}

impl Latency {
    fn measure(
        ns: &Netns,
        proxies: &[Proxy],
        rate: f64,
        repeats: usize,
        seconds: u32,
    ) -> anyhow::Result<Latency> {
        let n = proxies.len();
        let mut latency = Latency {
            p50: vec![vec![]; n],
            p90: vec![vec![]; n],
            p99: vec![vec![]; n],
            p999: vec![vec![]; n],
            non_2xx: vec![0; n],
            answered: vec![(0, 0); n],
        };
        let run_ms = latency_run_ms(rate);
        let runs = (seconds * 1000).div_ceil(run_ms);
        for repeat in 0..repeats {
            for (i, p) in proxies.iter().enumerate() {
                let url = format!("http://127.0.0.1:{}/", p.h1_port);
                let run = Duration::from_millis(run_ms.into());
                let mut args = oha_args(run, rate, 64, HOST, &url, "csv");
                // The requests in flight at the deadline are waited for
                // (counted), as they would be in one longer run.
                args.insert(1, "-w".into());
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let (mut latencies, mut answered) = (vec![], 0);
                for _ in 0..runs {
                    let out = ns.run_pinned(CLIENT_CPU, &args)?;
                    let run = oha_csv_latencies(&out, LATENCY_WARM_UP_SECONDS, &mut latencies)?;
                    latency.non_2xx[i] += run.non_2xx;
                    answered += run.answered;
                }
                let scheduled = (rate * f64::from(runs * run_ms) / 1e3) as u64;
                latency.answered[i].0 += answered;
                latency.answered[i].1 += scheduled;
                if answered < scheduled * 9 / 10 {
                    bail!(
                        "{} answered {answered} of the {scheduled} requests oha scheduled",
                        p.name
                    );
                }
                let [p50, p90, p99, p999] =
                    [50.0, 90.0, 99.0, 99.9].map(|q| percentile(&latencies, q));
                println!(
                    "    repeat {repeat}: {} at {rate} req/s ({runs} × {run_ms} ms): p50 {p50:.2}, p90 {p90:.2}, p99 {p99:.2}, p99.9 {p999:.2} ms ({})",
                    p.name,
                    load_average()
                );
                latency.p50[i].push(p50);
                latency.p90[i].push(p90);
                latency.p99[i].push(p99);
                latency.p999[i].push(p999);
            }
        }
        Ok(latency)
    }

    /// All four percentiles per proxy, medians (min–max).
    fn table(&self, proxies: &[Proxy], rate: f64) -> String {
        let mut md = format!(
            "| proxy | p50 ms at {rate:.0} req/s | p90 ms | p99 ms | p99.9 ms | non-2xx / answered |\n|---|---|---|---|---|---|\n"
        );
        let [p50, p90, p99, p999] =
            [&self.p50, &self.p90, &self.p99, &self.p999].map(|v| Summary::each(v));
        for (i, p) in proxies.iter().enumerate() {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                p.name,
                p50[i].show(2),
                p90[i].show(2),
                p99[i].show(2),
                p999[i].show(2),
                self.failures(i)
            ));
        }
        md
    }

    /// Requests answered non-2xx, and the share of the scheduled ones that
    /// were answered at all (oha's CSV has no line for a failed request; a
    /// run's ticks due in its last timer tick may fall after its deadline).
    fn failures(&self, i: usize) -> String {
        let (answered, scheduled) = self.answered[i];
        format!(
            "{} / {:.2}%",
            self.non_2xx[i],
            100.0 * answered as f64 / scheduled.max(1) as f64
        )
    }

    /// The percentiles around p99, one line under the main table.
    fn tail(&self, proxies: &[Proxy]) -> String {
        let [p90, p999] = [&self.p90, &self.p999].map(|v| Summary::each(v));
        let each: Vec<String> = proxies
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{} {:.2} / {:.2}", p.name, p90[i].median, p999[i].median))
            .collect();
        format!(
            "Open loop, p90 / p99.9 ms, medians: {}. oha runs 1 s (fewer than 30,000 requests) at a time, back to back, and the \
             percentiles are over the requests of a repeat but those each run started in its first 0.1 s \
             (while oha opens its connections): in one 5 s run oha stalls itself for 3–12 ms when its result \
             queue doubles past 32,768, 65,536 and 131,072 results, which every proxy's tail counted; the \
             spread left comes from other work on the machine ([`docs/l7-tail.md`](../../docs/l7-tail.md)).\n\n",
            each.join("; ")
        )
    }
}

/// The 1-minute load average, for the console next to each figure.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!("load {}", text.split_whitespace().next().unwrap_or("?"))
}

fn wrk_rps(out: &str) -> anyhow::Result<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))
}

fn h2load_rps(out: &str) -> anyhow::Result<f64> {
    // "finished in 5.00s, 12345.67 req/s, 1.23MB/s"
    let line = out
        .lines()
        .find(|l| l.starts_with("finished in"))
        .with_context(|| format!("no summary in h2load output:\n{out}"))?;
    let failed = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_default();
    if !failed.contains(" 0 failed") {
        bail!("h2load saw failed requests: {failed}");
    }
    line.split(", ")
        .find_map(|p| p.strip_suffix(" req/s"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no req/s in {line}"))
}

/// oha's JSON: (p50 ms, p99 ms, requests not answered 2xx).
pub fn oha_latency(out: &str) -> anyhow::Result<(f64, f64, u64)> {
    let json: serde_json::Value =
        serde_json::from_str(out).with_context(|| format!("oha JSON:\n{out}"))?;
    let p = |key: &str| oha_percentile(&json, key);
    let mut bad = 0;
    if let Some(codes) = json["statusCodeDistribution"].as_object() {
        for (code, n) in codes {
            if !code.starts_with('2') {
                bad += n.as_u64().unwrap_or(0);
            }
        }
    }
    if let Some(errors) = json["errorDistribution"].as_object() {
        bad += errors
            .values()
            .filter_map(serde_json::Value::as_u64)
            .sum::<u64>();
    }
    Ok((p("p50")?, p("p99")?, bad))
}

/// The latency percentile `key` ("p90", "p99.9"...) of oha's JSON, in ms.
fn oha_percentile(json: &serde_json::Value, key: &str) -> anyhow::Result<f64> {
    json["latencyPercentiles"][key]
        .as_f64()
        .map(|s| s * 1e3)
        .with_context(|| format!("no latencyPercentiles.{key} in oha output"))
}

/// What one oha run answered, from its CSV.
#[derive(Debug, PartialEq)]
struct CsvRun {
    answered: u64,
    non_2xx: u64,
}

/// oha's `--output-format csv` (one line per answered request): appends the
/// latency (ms, from when the request was due: latency correction) of each
/// request started at or after `warm_up` seconds into the run to
/// `latencies`; counts all answered and those answered non-2xx.
fn oha_csv_latencies(out: &str, warm_up: f64, latencies: &mut Vec<f64>) -> anyhow::Result<CsvRun> {
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    if header != "request-start,DNS,DNS+dialup,Response-delay,request-duration,bytes,status" {
        bail!(
            "not oha's CSV:\n{}",
            out.chars().take(500).collect::<String>()
        );
    }
    let mut run = CsvRun {
        answered: 0,
        non_2xx: 0,
    };
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(start), Some(duration), Some(status)) =
            (fields.first(), fields.get(4), fields.get(6))
        else {
            bail!("short line in oha's CSV: {line}");
        };
        run.answered += 1;
        if !status.starts_with('2') {
            run.non_2xx += 1;
        }
        if start.parse::<f64>().context("oha's request-start")? >= warm_up {
            latencies.push(duration.parse::<f64>().context("oha's request-duration")? * 1e3);
        }
    }
    Ok(run)
}

/// oha at a fixed `rate` with latency correction for `duration`; `format`
/// is its output: `json` (summary) or `csv` (a line per request).
pub fn oha_args(
    duration: Duration,
    rate: f64,
    connections: u32,
    host: &str,
    url: &str,
    format: &str,
) -> Vec<String> {
    vec![
        "oha".into(),
        "-z".into(),
        format!("{}ms", duration.as_millis()),
        "-q".into(),
        format!("{rate:.0}"),
        "-c".into(),
        connections.to_string(),
        "--latency-correction".into(),
        "--no-tui".into(),
        "--output-format".into(),
        format.into(),
        "-H".into(),
        format!("Host: {host}"),
        url.into(),
    ]
}

pub fn run(agent: &Path, budget: Budget, out_dir: &Path, stamp: &str) -> anyhow::Result<Section> {
    println!("==> bench l7: gateway-agent vs nginx vs HAProxy");
    let ns = Netns::new("l7")?;
    let dir = std::env::temp_dir().join(&ns.name);
    std::fs::create_dir_all(&dir)?;
    let result = measure(&ns, &dir, agent, budget, out_dir, stamp);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(
    ns: &Netns,
    dir: &Path,
    agent: &Path,
    budget: Budget,
    out_dir: &Path,
    stamp: &str,
) -> anyhow::Result<Section> {
    let _backend = backend_nginx(ns, dir, &format!("127.0.0.1:{BACKEND_PORT}"), CLIENT_CPU)?;
    let proxies = [
        Proxy {
            name: "gateway-agent",
            h1_port: manifests::http_port(0),
            h2_port: manifests::http_port(0),
            daemon: start_agent(ns, dir, agent)?,
        },
        Proxy {
            name: "nginx",
            h1_port: 18_001,
            h2_port: 18_003,
            daemon: start_nginx(ns, dir)?,
        },
        Proxy {
            name: "haproxy",
            h1_port: 18_002,
            h2_port: 18_004,
            daemon: start_haproxy(ns, dir)?,
        },
    ];
    for p in &proxies {
        let addr = format!("127.0.0.1:{}", p.h1_port);
        ns.within(move || {
            wait_until(&format!("proxy on {addr}"), Duration::from_secs(30), || {
                http_status(&addr, HOST, "/") == 200
            })
        })?
        .with_context(|| format!("{} does not serve; logs in {}", p.name, dir.display()))?;
    }
    let secs = budget.seconds.to_string();
    let n = proxies.len();
    let (mut h1, mut h2) = (vec![vec![]; n], vec![vec![]; n]);
    let mut rss = RSS_FIELDS.map(|_| vec![vec![]; n]);
    // Warm-up: one short run each (connection pools, page cache).
    for p in &proxies {
        let url = format!("http://127.0.0.1:{}/", p.h1_port);
        ns.run_pinned(
            CLIENT_CPU,
            &[
                "wrk",
                "-t1",
                "-c64",
                "-d1s",
                "-H",
                &format!("Host: {HOST}"),
                &url,
            ],
        )?;
    }
    if let Some(rate) = latency_only_rate()? {
        let repeats = match std::env::var("BENCH_L7_REPEATS") {
            Ok(n) => n.parse().context("BENCH_L7_REPEATS")?,
            Err(_) => budget.repeats,
        };
        let latency = Latency::measure(ns, &proxies, rate, repeats, budget.seconds)?;
        let mut md = format!(
            "Open-loop phase alone (`BENCH_L7_LATENCY_RATE`): oha at {rate:.0} req/s, 64 connections, {} s \
             (runs of 1 s or under 30,000 requests back to back, percentiles over their requests but each run's first 0.1 s), {repeats} interleaved repeats; proxies on CPU {PROXY_CPU}, oha and the backend on CPU {CLIENT_CPU}.\n\n",
            budget.seconds
        );
        md.push_str(&latency.table(&proxies, rate));
        return Ok(Section {
            title: "L7: latency at a fixed rate".into(),
            markdown: md,
        });
    }
    for repeat in 0..budget.repeats {
        for (i, p) in proxies.iter().enumerate() {
            let url = format!("http://127.0.0.1:{}/", p.h1_port);
            let host = format!("Host: {HOST}");
            let wrk = ns
                .command(
                    Some(CLIENT_CPU),
                    &[
                        "wrk",
                        "-t1",
                        "-c64",
                        &format!("-d{secs}s"),
                        "-H",
                        &host,
                        &url,
                    ],
                )
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            std::thread::sleep(Duration::from_millis(u64::from(budget.seconds) * 500));
            for (field, samples) in RSS_FIELDS.iter().zip(&mut rss) {
                samples[i].push(p.status_kb(field) as f64 / 1024.0);
            }
            let out = wrk.wait_with_output()?;
            let rps = wrk_rps(&String::from_utf8_lossy(&out.stdout))?;
            println!("    repeat {repeat}: {} HTTP/1.1 {rps:.0} req/s", p.name);
            h1[i].push(rps);
        }
        for (i, p) in proxies.iter().enumerate() {
            let url = format!("http://127.0.0.1:{}/", p.h2_port);
            let out = ns.run_pinned(
                CLIENT_CPU,
                &[
                    "h2load",
                    "-D",
                    &secs,
                    "-c10",
                    "-m10",
                    "-t1",
                    "-H",
                    &format!(":authority: {HOST}"),
                    &url,
                ],
            )?;
            let rps = h2load_rps(&out)?;
            println!("    repeat {repeat}: {} h2c {rps:.0} req/s", p.name);
            h2[i].push(rps);
        }
    }
    let h1s = Summary::each(&h1);
    let h2s = Summary::each(&h2);
    let [rsss, files, anons] = rss.map(|samples| Summary::each(&samples));
    // Open loop at half of nginx's maximum HTTP/1.1 rate.
    let rate = (h1s[1].median / 2.0).floor();
    let latency = Latency::measure(ns, &proxies, rate, budget.repeats, budget.seconds)?;
    let p50s = Summary::each(&latency.p50);
    let p99s = Summary::each(&latency.p99);

    let mut md = format!(
        "Proxies pinned to CPU {PROXY_CPU} (one worker/thread each: nginx `worker_processes 1`, HAProxy `nbthread 1`, \
         the agent's tokio runtime sized by its CPU affinity); wrk, h2load, oha and the backend (nginx, 1 KB body) on CPU {CLIENT_CPU}. \
         One route in each (Host `{HOST}`, prefix `/`), upstream keep-alive on. Loopback inside a private network namespace.\n\n\
         | proxy | HTTP/1.1 req/s (wrk -c64) | × nginx | × HAProxy | h2c req/s (h2load -c10 -m10) | × nginx | p50 ms at {rate:.0} req/s (oha) | p99 ms | non-2xx / answered | RSS under load MB |\n\
         |---|---|---|---|---|---|---|---|---|---|\n"
    );
    for (i, p) in proxies.iter().enumerate() {
        md.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {} | {:.2} | {} | {} | {} | {} |\n",
            p.name,
            h1s[i].show(0),
            h1s[i].median / h1s[1].median,
            h1s[i].median / h1s[2].median,
            h2s[i].show(0),
            h2s[i].median / h2s[1].median,
            p50s[i].show(2),
            p99s[i].show(2),
            latency.failures(i),
            rsss[i].show(1),
        ));
    }
    let goal = |ok: bool| if ok { "met" } else { "**missed**" };
    md.push_str(&format!(
        "\nGoals (issue 4): HTTP/1.1 ≥ 1.0× nginx: {} ({:.2}×); ≥ 1.0× HAProxy: {} ({:.2}×); h2 ≥ 1.0× nginx: {} ({:.2}×); \
         p99 at half nginx's maximum ≤ nginx's: {} ({:.2} vs {:.2} ms); RSS ≤ half of nginx's worker: {} ({:.1} vs {:.1} MB).\n\n",
        goal(h1s[0].median >= h1s[1].median), h1s[0].median / h1s[1].median,
        goal(h1s[0].median >= h1s[2].median), h1s[0].median / h1s[2].median,
        goal(h2s[0].median >= h2s[1].median), h2s[0].median / h2s[1].median,
        goal(p99s[0].median <= p99s[1].median), p99s[0].median, p99s[1].median,
        goal(rsss[0].median <= rsss[1].median / 2.0), rsss[0].median, rsss[1].median,
    ));
    md.push_str(&latency.tail(&proxies));
    let split: Vec<String> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{} {:.1} / {:.1}", p.name, files[i].median, anons[i].median))
        .collect();
    md.push_str(&format!(
        "RSS under load, file-backed (own binary, shared libraries) / anonymous (heap, stacks) MB, medians: {} \
         ([`docs/l7-memory.md`](../../docs/l7-memory.md)).\n\n",
        split.join("; ")
    ));
    let names: Vec<String> = proxies.iter().map(|p| p.name.to_string()).collect();
    let bars = |v: &[Summary]| -> Vec<(String, Summary)> {
        names.iter().cloned().zip(v.iter().copied()).collect()
    };
    md.push_str(&bar_chart(
        out_dir,
        &format!("{stamp}-l7-h1"),
        "HTTP/1.1 keep-alive, 1 KB (wrk)",
        "requests/s",
        &bars(&h1s),
    ));
    md.push_str(&bar_chart(
        out_dir,
        &format!("{stamp}-l7-h2"),
        "h2c, 10 conns x 10 streams (h2load)",
        "requests/s",
        &bars(&h2s),
    ));
    md.push_str(&bar_chart(
        out_dir,
        &format!("{stamp}-l7-p99"),
        &format!("p99 latency at {rate:.0} req/s (oha, open loop)"),
        "ms",
        &bars(&p99s),
    ));
    Ok(Section {
        title: "L7: HTTP proxy vs nginx and HAProxy".into(),
        markdown: md,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// oha's JSON report, cut to the fields the bench reads.
    const OHA: &str = r#"{
        "latencyPercentiles": {"p50": 0.00071, "p90": 0.00094, "p99": 0.0066, "p99.9": 0.0155},
        "statusCodeDistribution": {"200": 159300, "502": 2},
        "errorDistribution": {"aborted due to deadline": 3}
    }"#;

    #[test]
    fn reads_oha_percentiles_in_ms_and_counts_failures() {
        let (p50, p99, bad) = oha_latency(OHA).unwrap();
        assert!((p50 - 0.71).abs() < 1e-9 && (p99 - 6.6).abs() < 1e-9);
        assert_eq!(bad, 5);
        let json: serde_json::Value = serde_json::from_str(OHA).unwrap();
        assert!((oha_percentile(&json, "p90").unwrap() - 0.94).abs() < 1e-9);
        assert!((oha_percentile(&json, "p99.9").unwrap() - 15.5).abs() < 1e-9);
        assert!(oha_percentile(&json, "p99.99").is_err());
    }

    #[test]
    fn oha_runs_stay_under_the_queue_growth_at_32768_results() {
        assert_eq!(latency_run_ms(29_395.0), 1000);
        assert_eq!(latency_run_ms(36_808.0), 815);
        assert!(f64::from(latency_run_ms(36_808.0)) / 1e3 * 36_808.0 < 32_768.0);
        assert_eq!(latency_run_ms(1e9), 200);
    }

    #[test]
    fn reads_oha_csv_latencies_in_ms_after_the_warm_up_and_counts_non_2xx() {
        let csv = "request-start,DNS,DNS+dialup,Response-delay,request-duration,bytes,status\n\
                   0.0012,0.00008,0.0011,0.0006,0.0016,1024,200\n\
                   0.0015,0,0,0.0004,0.0021,0,502\n";
        let mut latencies = vec![9.0];
        let run = oha_csv_latencies(csv, 0.0, &mut latencies).unwrap();
        assert_eq!(
            run,
            CsvRun {
                answered: 2,
                non_2xx: 1
            }
        );
        assert_eq!(latencies.len(), 3);
        assert!((latencies[1] - 1.6).abs() < 1e-9 && (latencies[2] - 2.1).abs() < 1e-9);
        // A warm-up of 1.3 ms leaves out the request started at 1.2 ms.
        let mut latencies = vec![];
        let run = oha_csv_latencies(csv, 0.0013, &mut latencies).unwrap();
        assert_eq!(
            run,
            CsvRun {
                answered: 2,
                non_2xx: 1
            }
        );
        assert_eq!(latencies.len(), 1);
        assert!((latencies[0] - 2.1).abs() < 1e-9);
        assert!(oha_csv_latencies("{}", 0.0, &mut latencies).is_err());
    }
}
