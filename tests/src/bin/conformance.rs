//! `conformance`: runs the Gateway API conformance cases against the agent
//! (normally through `cargo xtask conformance`). Runs in a network namespace
//! of its own, so the real listener ports (80, 443, ...) are free and the
//! agent's XDP program on that namespace's `lo` meets no other run.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;
use gateway_tests::conformance::{self, Options};

#[derive(Parser)]
#[command(about = "Gateway API conformance harness for gateway-agent (standalone mode)")]
struct Args {
    /// The gateway-agent binary to test.
    #[arg(long)]
    agent: PathBuf,
    /// The conformance data (cases.json, manifests/).
    #[arg(long, default_value = "../shared/conformance")]
    cases: PathBuf,
    /// Run only this test (repeatable).
    #[arg(long = "run-test")]
    run_test: Vec<String>,
    /// MaxTimeToConsistency per case, in seconds (the Go suite's is 30).
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    #[arg(long, default_value = "tests/conformance/supported-features.txt")]
    supported_features: PathBuf,
    #[arg(long, default_value = "tests/conformance/expected-pass.txt")]
    baseline: PathBuf,
    /// Rewrite the baseline with the cases that passed.
    #[arg(long)]
    update_baseline: bool,
    /// Regression gate: run only the tests with baseline cases; fail if one fails.
    #[arg(long)]
    gate: bool,
    /// Report, agent log and the agent's manifest directory.
    #[arg(long, default_value = "target/conformance")]
    out_dir: PathBuf,
}

/// A network namespace for this run, deleted on drop.
struct RunNetns(String);

impl RunNetns {
    /// Creates the namespace and moves this (still single-threaded) process
    /// into it; threads and children started later inherit it.
    fn enter() -> Result<RunNetns, String> {
        let name = format!("gwconf-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = RunNetns(name);
        let path = format!("/run/netns/{}", ns.0);
        let file = std::fs::File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
        use std::os::fd::AsRawFd as _;
        // SAFETY: setns on a namespace fd we own; no other thread exists yet.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        run(Command::new("ip").args(["link", "set", "lo", "up"]))?;
        Ok(ns)
    }
}

impl Drop for RunNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !status.success() {
        return Err(format!("{cmd:?} failed: {status}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("conformance: needs root (network namespace, BPF, ports 80/443)");
        return ExitCode::FAILURE;
    }
    let netns = match RunNetns::enter() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("conformance: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/gwconf-{}", std::process::id()));
    let manifest_dir = args
        .out_dir
        .join(format!("manifests-{}", std::process::id()));
    let opts = Options {
        cases_dir: args.cases,
        agent: args.agent,
        run_tests: args.run_test,
        timeout: Duration::from_secs(args.timeout),
        supported_features: args.supported_features,
        baseline: args.baseline,
        update_baseline: args.update_baseline,
        gate: args.gate,
        out_dir: args.out_dir,
    };
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            // Ctrl-C or SIGTERM drops the run (the agent is stopped by its
            // guard) and falls through to the cleanup below.
            let r = rt.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .map_err(|e| e.to_string())?;
                tokio::select! {
                    r = conformance::run(opts) => r,
                    _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
                    _ = term.recv() => Err("terminated".to_string()),
                }
            });
            // The echo pods' tasks end with the runtime.
            rt.shutdown_timeout(Duration::from_secs(2));
            r
        });
    let _ = std::fs::remove_dir_all(&pin_dir);
    let _ = std::fs::remove_dir_all(&manifest_dir);
    drop(netns);
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("conformance: {e}");
            ExitCode::FAILURE
        }
    }
}
