//! `cargo xtask bench [l4|l7|control-plane|all] [--quick]`: runs the
//! benchmarks and writes `bench/results/<date>.md` with PNG charts (gnuplot).
//! Every figure is a median over repeats with its spread (min–max), next to
//! its peers from the same run; the report records the machine and its load.

mod control_plane;
mod l4;
mod l4_cost;
mod l4_udp;
mod l7;
pub mod manifests;
mod netns;
mod report;
mod stats;
mod tls_probe;
mod tools;
mod udp_load;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    L4,
    L7,
    ControlPlane,
    All,
}

/// Durations and repeats: `--quick` for development, the default for the report.
#[derive(Clone, Copy)]
pub struct Budget {
    pub quick: bool,
    /// Seconds per load run.
    pub seconds: u32,
    pub repeats: usize,
}

pub fn run(which: Which, quick: bool, command_line: &str) -> anyhow::Result<()> {
    if !crate::setup::is_root() {
        bail!("cargo xtask bench needs root (network namespaces, BPF, iptables)");
    }
    tools::ensure()?;
    let budget = if quick {
        Budget {
            quick,
            seconds: 2,
            repeats: 2,
        }
    } else {
        Budget {
            quick,
            seconds: 5,
            repeats: 5,
        }
    };
    let started = Instant::now();
    let load = report::LoadSampler::start();
    let agent = release_binary("BENCH_AGENT_BINARY", "gateway-agent", "gateway-agent")?;
    let out_dir = Path::new("bench/results");
    std::fs::create_dir_all(out_dir)?;
    let stamp = report::utc_stamp();
    let build_took = started.elapsed();
    // Each section with its wall time: the run as a whole has a time budget
    // (issue 9), and the report shows where it goes.
    let mut sections = Vec::new();
    let mut timed = |run: &dyn Fn() -> anyhow::Result<report::Section>| -> anyhow::Result<()> {
        let section_started = Instant::now();
        let section = run()?;
        sections.push((section, section_started.elapsed()));
        Ok(())
    };
    if matches!(which, Which::L7 | Which::All) {
        timed(&|| l7::run(&agent, budget, out_dir, &stamp))?;
    }
    if matches!(which, Which::L4 | Which::All) {
        timed(&|| l4::run(&agent, budget, out_dir, &stamp))?;
    }
    if matches!(which, Which::ControlPlane | Which::All) {
        timed(&|| control_plane::run(&agent, budget, out_dir, &stamp))?;
    }
    let load = load.stop();
    let path = out_dir.join(format!("{stamp}.md"));
    let text = report::document(
        &sections,
        budget,
        command_line,
        &load,
        started.elapsed(),
        build_took,
    );
    std::fs::write(&path, &text)?;
    println!("{text}");
    println!("==> report written to {}", path.display());
    Ok(())
}

/// A release build of `bin` in `package` (benchmarks never measure a debug
/// build), or the binary the environment variable `env` names instead (an
/// already built one, e.g. another branch's, for an A/B).
pub fn release_binary(env: &str, package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    if let Some(binary) = std::env::var_os(env) {
        println!("==> {bin}: {} ({env})", binary.to_string_lossy());
        return Ok(std::fs::canonicalize(binary)?);
    }
    println!("==> cargo build --release -p {package} --bin {bin}");
    crate::run_cmd(std::process::Command::new("cargo").args([
        "build",
        "--release",
        "--quiet",
        "-p",
        package,
        "--bin",
        bin,
    ]))?;
    Ok(std::fs::canonicalize(format!("target/release/{bin}"))?)
}
