//! Project tasks: `cargo xtask setup | test | run | conformance | bench`.
mod bench;
mod conformance;
mod demo;
mod setup;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "gateway-agent project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (nightly rust-src, bpf-linker,
    /// iproute2, bpftool, ethtool, iperf3, dnsmasq, dig). Idempotent: seconds
    /// when nothing is missing.
    Setup,
    /// Run every check: fmt, clippy, unit tests and the end-to-end tests (root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the agent on examples/quickstart with demo backends, and show one
    /// HTTP request and one TCP exchange routed through it (root).
    Run {
        /// Exit after the demo exchanges instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Run the Gateway API conformance cases of ../shared/conformance against
    /// the agent (standalone, echo backends in-process) and print the tally (root).
    Conformance {
        /// Run only this test (repeatable).
        #[arg(long = "run-test")]
        run_test: Vec<String>,
        /// Consistency timeout per case in seconds (the Go suite's: 30).
        #[arg(long)]
        timeout: Option<u64>,
        /// Rewrite tests/conformance/expected-pass.txt from this run.
        #[arg(long)]
        update_baseline: bool,
    },
    /// Measure the data planes and the control plane against their peers and
    /// write bench/results/<date>.md with charts (root; see README "Performance").
    Bench {
        #[arg(value_enum, default_value = "all")]
        which: bench::Which,
        /// Short runs and 2 repeats, for development (no conclusions).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::Setup => setup::run(),
        Task::Test { args } => {
            setup::run()?;
            test(&args)
        }
        Task::Run { once } => {
            setup::run()?;
            demo::run(once)
        }
        Task::Conformance {
            run_test,
            timeout,
            update_baseline,
        } => {
            setup::run()?;
            conformance::run(&conformance::Args {
                run_tests: run_test,
                timeout,
                update_baseline,
            })
        }
        Task::Bench { which, quick } => {
            setup::run()?;
            let command_line = format!(
                "cargo xtask {}",
                std::env::args().skip(1).collect::<Vec<_>>().join(" ")
            );
            bench::run(which, quick, &command_line)
        }
    }
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command, failing with its name when it fails.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn test(args: &[String]) -> anyhow::Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !setup::is_root() {
        if ci {
            bail!("CI=true: the end-to-end tests need root (BPF, network namespaces)");
        }
        eprintln!("note: not root; the end-to-end tests will report themselves skipped");
    }
    println!("==> cargo fmt --check");
    run_cmd(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    println!("==> cargo clippy -D warnings");
    run_cmd(Command::new("cargo").args([
        "clippy",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("==> cargo clippy (gateway-ebpf, bpfel-unknown-none)");
    run_cmd(
        Command::new("cargo")
            .current_dir("gateway-ebpf")
            .args([
                "+nightly",
                "clippy",
                "--quiet",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"]),
    )?;
    println!("==> cargo test");
    // The default members: everything but gateway-ebpf, which the agent's build.rs builds.
    let (counts, tests_ok) = cargo_test_counts(
        Command::new("cargo")
            .args(["test", "--no-fail-fast"])
            .args(args),
    )?;
    // The conformance gate counts as one test; a filtered run skips it.
    let gate = if args.is_empty() {
        conformance::gate()?
    } else {
        None
    };
    let (mut passed, mut failed, ignored) = counts;
    match gate {
        Some(true) => passed += 1,
        Some(false) => failed += 1,
        None => {}
    }
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !tests_ok {
        bail!("cargo test failed");
    }
    if gate == Some(false) {
        bail!(
            "the conformance gate failed: a case of tests/conformance/expected-pass.txt no longer passes"
        );
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and totals every `test result:`
/// line (cargo prints one per test binary, the last often for a binary with
/// no tests in it): (passed, failed, ignored) and whether cargo succeeded.
fn cargo_test_counts(cmd: &mut Command) -> anyhow::Result<((u64, u64, u64), bool)> {
    use std::io::BufRead as _;
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        let Some(rest) = line.strip_prefix("test result: ") else {
            continue;
        };
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => passed += n,
                "failed" => failed += n,
                "ignored" => ignored += n,
                _ => {}
            }
        }
    }
    let status = child.wait()?;
    Ok(((passed, failed, ignored), status.success()))
}
