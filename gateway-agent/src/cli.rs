//! The `gateway-agent` command line and the wiring of the data flow.
//! In the library so that the end-to-end tests run exactly this code.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::dataplane::loader::{Attach, AttachMode};
use crate::passthrough::SpliceMode;
use crate::source::file::{self, FileSource, ManifestWatcher};
use crate::translate::{self, Settings};
use crate::{DEFAULT_CONTROLLER_NAME, netif};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use node::Node;

mod cluster;
mod node;

#[derive(Parser)]
#[command(version, about = "eBPF-accelerated Kubernetes Gateway API node agent")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Gateway API objects on this node.
    Run(RunArgs),
    /// Print the status conditions the agent decides for a manifests directory
    /// (nothing is served or loaded; no root needed).
    Status(StatusArgs),
    /// Print what this node has programmed (listeners, routes, backends with
    /// their Maglev shares, conntrack, counters), from the pinned maps and the
    /// running agent's state.
    Inspect(InspectArgs),
    /// Say which listener, route rule and backends a request would take, and
    /// why the other rules lost, for a manifests directory (no root needed)
    /// or a running agent.
    Explain(ExplainArgs),
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// Translate this manifests directory as `run` would.
    #[arg(long, required_unless_present = "admin_address")]
    manifests: Option<PathBuf>,
    /// Ask the agent whose admin listener is here: it explains from the
    /// configuration it serves.
    #[arg(long, conflicts_with = "manifests")]
    admin_address: Option<std::net::SocketAddr>,
    /// `[METHOD] http(s)://host[:port]/path?query`, `tcp://addr:port`,
    /// `udp://addr:port` or `tls://server-name:port`.
    request: String,
    /// A request header, `name: value` (repeatable; `Host` overrides the URL's host).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    #[arg(long, default_value = DEFAULT_CONTROLLER_NAME)]
    controller_name: String,
    #[arg(long, value_enum, default_value_t = InspectOutput::Table)]
    output: InspectOutput,
}

#[derive(clap::Args)]
struct InspectArgs {
    /// The agent's --name: its maps are pinned under /sys/fs/bpf/<name>/.
    #[arg(long, default_value = "gateway-agent")]
    name: String,
    /// The running agent's admin listener, asked for route names, HTTP and
    /// TLS passthrough routes.
    #[arg(long, default_value = "127.0.0.1:9470")]
    admin_address: std::net::SocketAddr,
    /// When the agent is not running: name the pinned L4 routes from these manifests.
    #[arg(long)]
    manifests: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_CONTROLLER_NAME)]
    controller_name: String,
    #[arg(long, value_enum, default_value_t = InspectOutput::Table)]
    output: InspectOutput,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum InspectOutput {
    /// Tables, in the manner of `cilium bpf lb list`.
    Table,
    /// Everything as one JSON object, for scripts.
    Json,
}

#[derive(clap::Args)]
struct StatusArgs {
    #[arg(long)]
    manifests: PathBuf,
    #[arg(long, default_value = DEFAULT_CONTROLLER_NAME)]
    controller_name: String,
    #[arg(long, value_enum, default_value_t = StatusOutput::Table)]
    output: StatusOutput,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StatusOutput {
    /// One row per condition, like `kubectl get`.
    Table,
    /// Every Gateway API object with its status, as a `kubectl get -o json` List.
    Json,
    /// The same List as YAML.
    Yaml,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Standalone mode: serve the manifests (multi-document YAML) under this
    /// directory, re-read on every change. Without it: cluster mode.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Interfaces to attach the L4 program to (comma-separated). Default:
    /// the interfaces of the node's default routes (else every non-loopback
    /// interface that is up).
    #[arg(long, value_delimiter = ',')]
    interfaces: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    xdp_mode: AttachMode,
    /// Where the L4 forwarding program runs: XDP, or a TC classifier at each
    /// interface's ingress (keeps GSO packets and checksum offload on veth).
    #[arg(long, value_enum, default_value_t = Attach::Xdp)]
    attach: Attach,
    /// GatewayClasses with this controllerName are served.
    #[arg(long, default_value = DEFAULT_CONTROLLER_NAME)]
    controller_name: String,
    /// Name of this agent: its BPF maps are pinned under /sys/fs/bpf/<name>/.
    #[arg(long, default_value = "gateway-agent")]
    name: String,
    /// Where /healthz, /readyz and /metrics are served. Every address, since a
    /// hostNetwork DaemonSet is scraped on the node's address.
    #[arg(long, default_value = "0.0.0.0:9470")]
    admin_address: std::net::SocketAddr,
    /// On SIGTERM/Ctrl-C, detach XDP and remove the pinned maps. Without it the
    /// kernel keeps forwarding after the agent exits, and the next agent of the
    /// same --name adopts the pinned state.
    #[arg(long)]
    detach_on_exit: bool,
    /// How TLS passthrough moves bytes after choosing a backend by SNI.
    #[arg(long, value_enum, default_value_t = SpliceMode::Auto)]
    tls_passthrough_splice: SpliceMode,
    /// Log one line per proxied HTTP/gRPC request (target `access_log`).
    #[arg(long)]
    access_log: bool,
    /// On SIGTERM, in-flight HTTP requests get this long to finish (both modes).
    #[arg(long, default_value_t = 5)]
    drain_seconds: u64,
    /// Log the XDP program's aya-log messages (new and refused L4 flows;
    /// target `gateway_agent::ebpf`). Off: the program carries no logging code.
    #[arg(long)]
    ebpf_log: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Cluster mode (no `--manifests`): watch the API server.
#[derive(clap::Args)]
struct ClusterArgs {
    /// Kubeconfig file; default: $KUBECONFIG or ~/.kube/config, then the
    /// in-cluster service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name: the agent's identity in the status Lease.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Namespace of the Lease electing the agent that writes status.
    #[arg(long, env = "POD_NAMESPACE", default_value = "gateway-agent")]
    lease_namespace: String,
    /// Name of that Lease.
    #[arg(long, default_value = "gateway-agent-status")]
    lease_name: String,
    /// A status writer that has not renewed its Lease for this long is replaced.
    #[arg(long, default_value_t = 10)]
    lease_duration_seconds: u64,
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Status(args) => status(&args),
        Command::Inspect(args) => runtime.block_on(inspect(args)),
        Command::Explain(args) => runtime.block_on(explain(&args)),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let Some(dir) = args.manifests.clone() else {
        return cluster::run(args).await;
    };
    let node = Node::start(&args).await?;
    tracing::info!(pin_dir = %node.pin_dir.display(), "BPF maps pinned");

    let mut watcher =
        ManifestWatcher::new(&dir).with_context(|| format!("watching {}", dir.display()))?;

    let mut source = FileSource::default();
    // What the last translate leaves for the next: a route edit translates
    // that route and the sockets it is on, not everything.
    let mut memo = translate::Memo::default();
    let settings = node.settings.clone();
    let mut generation = 0u64;
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        generation += 1;
        let started = Instant::now();
        // Reading and translating is CPU work: off the runtime, so that the
        // requests in flight are not stalled by a reload.
        let dir_now = dir.clone();
        let settings_now = settings.clone();
        let (returned, returned_memo, output, errors, read_took, translate_took) =
            tokio::task::spawn_blocking(move || {
                let (_, errors) = source.load(&dir_now);
                let changes = source.take_changes();
                let read_took = started.elapsed();
                let output = translate::translate_incremental(
                    source.snapshot(),
                    &settings_now,
                    Some(&changes),
                    &mut memo,
                );
                (
                    source,
                    memo,
                    output,
                    errors,
                    read_took,
                    started.elapsed() - read_took,
                )
            })
            .await
            .context("the reload thread panicked")?;
        source = returned;
        memo = returned_memo;
        for error in &errors {
            tracing::error!(%error, "invalid manifest");
        }
        for status in &output.statuses {
            if let Some(problem) = status.problem() {
                tracing::warn!(
                    kind = status.kind,
                    object = %status.key,
                    parent = status.parent.as_ref().map(ToString::to_string),
                    section = status.section,
                    condition = problem.type_,
                    reason = problem.reason,
                    message = %problem.message,
                    "not fully accepted"
                );
            }
        }
        node.metrics.manifest_errors.set(errors.len() as u64);
        let times = node.apply(&output.config, generation, started).await;
        tracing::info!(
            generation,
            l4_listeners = output.config.l4.len(),
            http_listeners = output.config.http.len(),
            tls_passthrough_listeners = output.config.tls_passthrough.len(),
            manifest_errors = errors.len(),
            read_ms = read_took.as_secs_f64() * 1e3,
            translate_ms = translate_took.as_secs_f64() * 1e3,
            l4_ms = times.l4.as_secs_f64() * 1e3,
            proxy_ms = times.proxy.as_secs_f64() * 1e3,
            tls_ms = times.tls.as_secs_f64() * 1e3,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "config applied"
        );
        // The proxies and maps hold what they serve; `/state` and `/explain` keep this
        // generation's translate output, so the previous one is garbage now.
        // Hand the freed pages back to the kernel too (glibc keeps them
        // otherwise), off the runtime.
        node.state.applied(output, generation);
        tokio::task::spawn_blocking(release_free_memory);

        tokio::select! {
            changed = watcher.changed() => if !changed {
                anyhow::bail!("the watch on {} stopped", dir.display());
            },
            () = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: no longer accepting, draining HTTP");
    node.drain(tokio::time::Instant::now() + Duration::from_secs(args.drain_seconds))
        .await;
    tracing::info!("stopped");
    if args.detach_on_exit {
        node.l4.lock().expect("L4 dataplane lock").detach();
    }
    Ok(())
}

async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(&args.name);
    let manifest_routes = || match &args.manifests {
        Some(dir) => crate::inspect::manifest_routes(dir, &args.controller_name),
        None => Vec::new(),
    };
    let inspection = crate::inspect::inspect(pin_dir, args.admin_address, manifest_routes).await?;
    match args.output {
        InspectOutput::Table => print!("{}", crate::inspect::render(&inspection)),
        InspectOutput::Json => println!("{}", serde_json::to_string_pretty(&inspection)?),
    }
    Ok(())
}

async fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let target = crate::explain::Target::parse(&args.request, &args.headers)?;
    let explanation: crate::explain::Explanation = match (&args.manifests, args.admin_address) {
        (_, Some(admin)) => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("request", &args.request);
            for header in &args.headers {
                query.append_pair("header", header);
            }
            crate::inspect::fetch_json(admin, &format!("/explain?{}", query.finish())).await?
        }
        (Some(dir), None) => {
            let (_, output, errors) = translate_dir(dir, &args.controller_name);
            for error in &errors {
                eprintln!("invalid manifest: {error}");
            }
            crate::explain::explain(&output, &target, &args.request)
        }
        (None, None) => anyhow::bail!("give --manifests DIR or --admin-address ADDR"),
    };
    match args.output {
        InspectOutput::Table => print!("{}", crate::explain::render(&explanation)),
        InspectOutput::Json => println!("{}", serde_json::to_string_pretty(&explanation)?),
    }
    Ok(())
}

/// Reads a manifests directory and translates it as `run` would serve it on
/// this node (Gateways without spec.addresses on `run`'s default interfaces):
/// what `status`, `explain` and `inspect --manifests` work from.
pub(crate) fn translate_dir(
    dir: &std::path::Path,
    controller_name: &str,
) -> (
    crate::store::Snapshot,
    translate::Output,
    Vec<file::ManifestError>,
) {
    let (snapshot, errors) = file::load_dir(dir);
    let node_addresses = netif::default_interfaces()
        .and_then(|interfaces| netif::ipv4_addresses(&interfaces))
        .unwrap_or_default();
    let settings = Settings {
        controller_name: controller_name.to_string(),
        node_addresses,
        usable_addresses: netif::local_addresses().ok(),
    };
    let output = translate::translate(&snapshot, &settings);
    (snapshot, output, errors)
}

/// Returns the heap's free pages to the kernel (`malloc_trim`), so that RSS
/// follows what is in use after a reload freed the previous generation.
fn release_free_memory() {
    let trimming = Instant::now();
    // SAFETY: malloc_trim only walks glibc's own arenas; no pointers are passed.
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::debug!(
        took_ms = trimming.elapsed().as_secs_f64() * 1e3,
        "free memory released"
    );
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let (snapshot, output, errors) = translate_dir(&args.manifests, &args.controller_name);
    for error in &errors {
        eprintln!("invalid manifest: {error}");
    }
    let list = || {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        let items =
            translate::api_objects(&snapshot, &output.statuses, &args.controller_name, &now);
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
    };
    match args.output {
        StatusOutput::Json => println!("{}", serde_json::to_string_pretty(&list())?),
        StatusOutput::Yaml => print!("{}", serde_yaml::to_string(&list())?),
        StatusOutput::Table => print!("{}", status_table(&output.statuses)),
    }
    Ok(())
}

/// One row per condition, in the manner of `kubectl get`.
fn status_table(statuses: &[std::sync::Arc<translate::ObjectStatus>]) -> String {
    let mut rows = vec![[
        "KIND".to_string(),
        "NAME".into(),
        "PARENT".into(),
        "SECTION".into(),
        "TYPE".into(),
        "STATUS".into(),
        "REASON".into(),
        "MESSAGE".into(),
    ]];
    for s in statuses {
        for c in &s.conditions {
            rows.push([
                s.kind.to_string(),
                s.key.to_string(),
                s.parent
                    .as_ref()
                    .filter(|p| **p != s.key)
                    .map_or("-".into(), ToString::to_string),
                s.section.clone().unwrap_or_else(|| "-".into()),
                c.type_.to_string(),
                if c.status { "True" } else { "False" }.into(),
                c.reason.to_string(),
                c.message.clone(),
            ]);
        }
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
