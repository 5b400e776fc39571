//! Project tasks: `cargo xtask setup | test | run | bench`.
mod bench;
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
    /// iproute2, bpftool, ethtool). Idempotent: seconds when nothing is missing.
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
    cargo_test_with_summary(
        Command::new("cargo")
            .args(["test", "--no-fail-fast"])
            .args(args),
    )
}

/// Runs `cargo test`, echoing its output, and ends with one line that totals
/// every `test result:` line (cargo prints one per test binary, the last often
/// for a binary with no tests in it).
fn cargo_test_with_summary(cmd: &mut Command) -> anyhow::Result<()> {
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
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}
