//! `cargo xtask conformance`: builds the agent and the harness
//! (tests/src/conformance/) and runs the Gateway API conformance cases of
//! ../shared/conformance against it; also the regression gate of `cargo xtask test`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

use crate::run_cmd;

/// The conformance data, beside the workspace (as in CI).
pub fn cases_dir() -> PathBuf {
    PathBuf::from("../shared/conformance")
}

/// Consistency timeout of the gate: standalone applies a change well under a
/// second after the agent reports it, so 5 s is ample and keeps CI short.
const GATE_TIMEOUT_SECS: &str = "5";

pub struct Args {
    pub run_tests: Vec<String>,
    pub timeout: Option<u64>,
    pub update_baseline: bool,
}

fn build() -> anyhow::Result<()> {
    run_cmd(Command::new("cargo").args([
        "build",
        "--quiet",
        "-p",
        "gateway-agent",
        "-p",
        "gateway-tests",
        "--bins",
    ]))
}

fn harness(cases: &Path) -> Command {
    let mut cmd = Command::new("target/debug/conformance");
    cmd.args(["--agent", "target/debug/gateway-agent", "--cases"])
        .arg(cases);
    cmd
}

fn require_root() -> anyhow::Result<()> {
    if !crate::setup::is_root() {
        bail!("the conformance harness needs root (network namespace, XDP, ports 80/443)");
    }
    Ok(())
}

/// `cargo xtask conformance`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let cases = cases_dir();
    if !cases.join("cases.json").exists() {
        bail!("no conformance data at {}", cases.display());
    }
    require_root()?;
    build()?;
    let mut cmd = harness(&cases);
    for test in &args.run_tests {
        cmd.args(["--run-test", test]);
    }
    if let Some(t) = args.timeout {
        cmd.args(["--timeout", &t.to_string()]);
    }
    if args.update_baseline {
        cmd.arg("--update-baseline");
    }
    run_cmd(&mut cmd)
}

/// The regression gate of `cargo xtask test`: the tests of the baseline's
/// cases, with a short consistency timeout. `Ok(None)` when there is no
/// conformance data here.
pub fn gate() -> anyhow::Result<Option<bool>> {
    let cases = cases_dir();
    if !cases.join("cases.json").exists() {
        println!("==> conformance gate: no {} here, not run", cases.display());
        return Ok(None);
    }
    if !crate::setup::is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("CI=true: the conformance gate needs root");
        }
        println!("==> conformance gate: SKIPPED (needs root)");
        return Ok(None);
    }
    println!("==> conformance gate (tests/conformance/expected-pass.txt)");
    build()?;
    let status = harness(&cases)
        .args(["--gate", "--timeout", GATE_TIMEOUT_SECS])
        .status()?;
    Ok(Some(status.success()))
}
