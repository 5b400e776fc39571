//! The L4 program's own cost per packet (BPF_PROG_TEST_RUN): XDP and TC,
//! IPv4 and IPv6, a tracked flow (`repeat`, the method, and single
//! runs) and a new flow (single runs), each measured `budget.repeats` times.
//! The measuring code is the `packets` tests' (`gateway_tests::program_cost`),
//! run by the tests crate's `program-cost` binary, so the figures are the
//! ones those tests print.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context as _;

use super::Budget;
use super::report::StageClock;
use super::stats::Summary;

/// Issue 5's goals, ns per packet net of the empty program.
const TRACKED_GOAL_NS: f64 = 100.0;
const NEW_FLOW_GOAL_NS: f64 = 250.0;

/// The programs and families in the order `program-cost` measures them.
const ROWS: [(&str, &str); 4] = [
    ("XDP", "IPv4"),
    ("XDP", "IPv6"),
    ("TC", "IPv4"),
    ("TC", "IPv6"),
];

/// Runs the measurement and returns the report's subsection.
/// `binary`: the tests crate's `program-cost` (with the eBPF object of this
/// checkout built in, or the build `BENCH_PROGRAM_COST_BINARY` names, e.g. of
/// another branch).
pub fn run(binary: &Path, budget: Budget, clock: &mut StageClock) -> anyhow::Result<String> {
    println!("==> bench l4: the program's own cost per packet (BPF_PROG_TEST_RUN)");
    let out = Command::new(binary)
        .args(["--repeats", &budget.repeats.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    anyhow::ensure!(out.status.success(), "{} failed", binary.display());
    clock.lap("program cost (BPF_PROG_TEST_RUN)");
    let figures: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("program-cost output")?;
    let summary = |hook: &str, family: &str, field: &str| -> anyhow::Result<Summary> {
        let values: Vec<f64> = figures
            .iter()
            .filter(|f| f["hook"] == hook && f["family"] == family)
            .filter_map(|f| f[field].as_f64())
            .collect();
        anyhow::ensure!(!values.is_empty(), "no {field} for {hook} {family}");
        Ok(Summary::of(&values))
    };
    let verdict = |s: &Summary, goal: f64| {
        if s.median <= goal {
            "met"
        } else {
            "**missed**"
        }
    };
    let mut md = format!(
        "\n### The program's own cost per packet (BPF_PROG_TEST_RUN)\n\n\
         `program-cost` (the `packets` tests' measuring code, `tests/src/program_cost.rs`; release build): ns per \
         packet net of an empty program of the same type, median (min–max) over {} measurements, XDP and TC interleaved. \
         Tracked flow, `repeat`: the issue's method, a ping-pong of a flow's two directions, 100,000 repetitions a round, \
         median of 7 rounds. Single runs: medians of 2,000 runs each, the packet copied in afresh every run (a colder \
         path: the flow's entry is evicted from the cache between runs). A new flow cannot be repeated (its second \
         repetition is a tracked packet): single runs only.\n\n\
         | program | tracked flow, repeat (goal ≤ {TRACKED_GOAL_NS:.0}) | | tracked flow, single runs | new flow, single runs (goal ≤ {NEW_FLOW_GOAL_NS:.0}) | |\n\
         |---|---|---|---|---|---|\n",
        budget.repeats
    );
    for (hook, family) in ROWS {
        let tracked = summary(hook, family, "tracked_repeat_ns")?;
        let single = summary(hook, family, "tracked_single_ns")?;
        let new_flow = summary(hook, family, "new_flow_single_ns")?;
        md.push_str(&format!(
            "| {hook} {family} | {} | {} | {} | {} | {} |\n",
            tracked.show(0),
            verdict(&tracked, TRACKED_GOAL_NS),
            single.show(0),
            new_flow.show(0),
            verdict(&new_flow, NEW_FLOW_GOAL_NS),
        ));
    }
    md.push('\n');
    Ok(md)
}
