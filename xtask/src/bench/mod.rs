//! `cargo xtask bench [l4|l7|control-plane|all] [--quick]`: runs the
//! benchmarks and writes `bench/results/<date>.md` with PNG charts (gnuplot).
//! Every figure is a median over repeats with its spread (min–max), next to
//! its peers from the same run; the report records the machine and its load.

mod control_plane;
mod l4;
mod l4_conn;
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

use anyhow::{Context as _, bail};

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
    println!(
        "    (agent build: {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let helpers = match which {
        Which::L7 => None,
        _ => Some(Helpers::build()?),
    };
    println!("    (all builds: {:.1} s)", started.elapsed().as_secs_f64());
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
        let helpers = helpers.as_ref().context("helpers built")?;
        timed(&|| l4::run(&agent, helpers, budget, out_dir, &stamp))?;
    }
    if matches!(which, Which::ControlPlane | Which::All) {
        let helpers = helpers.as_ref().context("helpers built")?;
        timed(&|| control_plane::run(&agent, helpers, budget, out_dir, &stamp))?;
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

/// What the sections run besides the agent, built before the first of them
/// in one cargo invocation: the tests crate's binaries and the criterion
/// benchmark both link the agent's library, and built together they share
/// one compile of it (built apart, their dependency features differ and each
/// compiled it again, a minute or more per copy on 2 CPUs). All three are
/// built whichever sections run, so that `bench l4`, `bench control-plane`
/// and `bench all` ask for the same features and reuse that compile; only
/// those the environment names (`BENCH_PROGRAM_COST_BINARY`,
/// `BENCH_FAKE_APISERVER`) or skips (`BENCH_SKIP_CRITERION`) are left out,
/// and nothing is built when all three are. The agent itself is built
/// alone, with its own features only.
pub struct Helpers {
    /// The tests crate's `program-cost` (l4).
    pub program_cost: PathBuf,
    /// The tests crate's `fake-apiserver` (control plane).
    pub fake_apiserver: PathBuf,
    /// The criterion benchmark gateway-agent/benches/scale.rs (control
    /// plane); None when `BENCH_SKIP_CRITERION` is set.
    pub scale_bench: Option<PathBuf>,
}

impl Helpers {
    fn build() -> anyhow::Result<Helpers> {
        // (package, cargo target flag, target name, environment variable
        // naming an already built binary to run instead).
        let targets = [
            (
                "gateway-tests",
                "--bin",
                "program-cost",
                Some("BENCH_PROGRAM_COST_BINARY"),
            ),
            (
                "gateway-tests",
                "--bin",
                "fake-apiserver",
                Some("BENCH_FAKE_APISERVER"),
            ),
            ("gateway-agent", "--bench", "scale", None),
        ];
        let skip_criterion = std::env::var_os("BENCH_SKIP_CRITERION").is_some();
        // What the environment names (or skips) is not built: a bench on
        // given binaries of another branch starts at once.
        let to_build: Vec<_> = targets
            .iter()
            .filter(|(_, _, name, env)| {
                let named = env.is_some_and(|env| std::env::var_os(env).is_some());
                let skipped = *name == "scale" && skip_criterion;
                !(named || skipped)
            })
            .collect();
        let mut built = std::collections::HashMap::new();
        if !to_build.is_empty() {
            let mut cmd = std::process::Command::new("cargo");
            cmd.args([
                "build",
                "--release",
                "--quiet",
                "--message-format=json-render-diagnostics",
                "-p",
                "gateway-tests",
                "-p",
                "gateway-agent",
            ]);
            for (_, flag, name, _) in &to_build {
                cmd.args([*flag, *name]);
            }
            let names: Vec<_> = to_build.iter().map(|(_, _, name, _)| *name).collect();
            println!("==> cargo build --release: {}", names.join(", "));
            let out = cmd
                .stderr(std::process::Stdio::inherit())
                .output()
                .context("cannot start cargo build")?;
            anyhow::ensure!(out.status.success(), "{cmd:?} failed: {}", out.status);
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if let (Some(name), Some(executable)) = (
                    message["target"]["name"].as_str(),
                    message["executable"].as_str(),
                ) {
                    built.insert(name.to_string(), PathBuf::from(executable));
                }
            }
        }
        let mut binary = |name: &str, env: Option<&str>| -> anyhow::Result<PathBuf> {
            if let Some(named) = env.and_then(|env| named_binary(env, name)) {
                return named;
            }
            built
                .remove(name)
                .with_context(|| format!("cargo built no executable {name}"))
        };
        let [program_cost, fake_apiserver, scale_bench] =
            targets.map(|(_, _, name, env)| binary(name, env));
        Ok(Helpers {
            program_cost: program_cost?,
            fake_apiserver: fake_apiserver?,
            scale_bench: if skip_criterion {
                None
            } else {
                Some(scale_bench?)
            },
        })
    }
}

/// The already built `bin` the environment variable `env` names, if set.
fn named_binary(env: &str, bin: &str) -> Option<anyhow::Result<PathBuf>> {
    let binary = std::env::var_os(env)?;
    println!("==> {bin}: {} ({env})", binary.to_string_lossy());
    Some(std::fs::canonicalize(binary).with_context(|| env.to_string()))
}

/// A release build of `bin` in `package` (benchmarks never measure a debug
/// build), or the binary the environment variable `env` names instead (an
/// already built one, e.g. another branch's, for an A/B).
pub fn release_binary(env: &str, package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    if let Some(binary) = named_binary(env, bin) {
        return binary;
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
