//! The tally: per test, per feature and in total, as text and Markdown.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use super::drivers::Outcome;

/// The cases of a test that ran.
#[derive(Default)]
pub struct TestRun {
    pub results: Vec<(String, Outcome)>,
    /// A cluster mutation the harness cannot reproduce: later cases not run.
    pub mutation_error: Option<String>,
}

pub enum TestResult {
    /// Sends no traffic (its status checks are translate fixtures' business).
    StatusOnly,
    /// Needs features not in supported-features.txt.
    Skipped(Vec<String>),
    /// The manifests could not be applied.
    Error(String),
    Ran(TestRun),
}

#[derive(Default, Clone, Copy)]
struct Counts {
    passed: usize,
    failed: usize,
    not_run: usize,
}

impl Counts {
    fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::NotRun(_) => self.not_run += 1,
        }
    }
}

fn counts(run: &TestRun) -> Counts {
    let mut c = Counts::default();
    for (_, o) in &run.results {
        c.add(o);
    }
    c
}

fn first_problem(run: &TestRun) -> String {
    let failed = run.results.iter().find_map(|(id, o)| match o {
        Outcome::Failed(r) => Some(format!("{id}: {r}")),
        _ => None,
    });
    let not_run = || {
        run.results.iter().find_map(|(id, o)| match o {
            Outcome::NotRun(r) => Some(format!("{id}: not-run ({r})")),
            _ => None,
        })
    };
    failed.or_else(not_run).unwrap_or_default()
}

/// One word for a test's result.
pub fn short(result: &TestResult) -> String {
    match result {
        TestResult::StatusOnly => "status-only".into(),
        TestResult::Skipped(_) => "skipped".into(),
        TestResult::Error(e) => format!("error: {e}"),
        TestResult::Ran(run) => {
            let c = counts(run);
            format!(
                "{} passed, {} failed, {} not-run",
                c.passed, c.failed, c.not_run
            )
        }
    }
}

struct Row {
    test: String,
    features: Vec<String>,
    result: String,
    counts: Counts,
    detail: String,
}

pub struct Tally {
    rows: Vec<Row>,
    outcomes: BTreeMap<String, Outcome>,
    elapsed: Duration,
}

impl Tally {
    pub fn new(results: &[(&Value, TestResult)], elapsed: Duration) -> Tally {
        let mut rows = Vec::new();
        let mut outcomes = BTreeMap::new();
        for (test, result) in results {
            let features: Vec<String> = test["features"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            let (word, counts, detail) = match result {
                TestResult::StatusOnly => ("status-only", Counts::default(), String::new()),
                TestResult::Skipped(missing) => (
                    "skipped",
                    Counts::default(),
                    format!("unsupported: {}", missing.join(", ")),
                ),
                TestResult::Error(e) => ("error", Counts::default(), e.clone()),
                TestResult::Ran(run) => {
                    for (id, o) in &run.results {
                        outcomes.insert(id.clone(), o.clone());
                    }
                    let c = counts(run);
                    let word = if c.failed > 0 {
                        "failed"
                    } else if c.passed == 0 {
                        "not-run"
                    } else if c.not_run > 0 {
                        "partial"
                    } else {
                        "passed"
                    };
                    (word, c, first_problem(run))
                }
            };
            rows.push(Row {
                test: test["test"].as_str().unwrap_or("").to_string(),
                features,
                result: word.into(),
                counts,
                detail,
            });
        }
        Tally {
            rows,
            outcomes,
            elapsed,
        }
    }

    pub fn passed_ids(&self) -> BTreeSet<String> {
        self.outcomes
            .iter()
            .filter(|(_, o)| **o == Outcome::Passed)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn reason(&self, id: &str) -> String {
        match self.outcomes.get(id) {
            Some(Outcome::Failed(r)) => r.clone(),
            Some(Outcome::NotRun(r)) => format!("not-run ({r})"),
            Some(Outcome::Passed) => "passed".into(),
            None => "not run (its test errored or no longer has this case)".into(),
        }
    }

    fn per_feature(&self) -> BTreeMap<&str, (usize, usize, Counts)> {
        // feature → (tests that ran, tests skipped, case counts)
        let mut out: BTreeMap<&str, (usize, usize, Counts)> = BTreeMap::new();
        for row in &self.rows {
            for f in &row.features {
                let e = out.entry(f.as_str()).or_default();
                match row.result.as_str() {
                    "skipped" => e.1 += 1,
                    "status-only" | "error" => {}
                    _ => e.0 += 1,
                }
                e.2.passed += row.counts.passed;
                e.2.failed += row.counts.failed;
                e.2.not_run += row.counts.not_run;
            }
        }
        out
    }

    fn totals(&self) -> (BTreeMap<&str, usize>, Counts) {
        let mut tests: BTreeMap<&str, usize> = BTreeMap::new();
        let mut cases = Counts::default();
        for row in &self.rows {
            *tests.entry(row.result.as_str()).or_default() += 1;
            cases.passed += row.counts.passed;
            cases.failed += row.counts.failed;
            cases.not_run += row.counts.not_run;
        }
        (tests, cases)
    }

    fn totals_line(&self) -> String {
        let (tests, cases) = self.totals();
        let tests: Vec<String> = tests.iter().map(|(k, v)| format!("{v} {k}")).collect();
        format!(
            "{} tests ({}); cases: {} passed, {} failed, {} not-run; {:.0}s",
            self.rows.len(),
            tests.join(", "),
            cases.passed,
            cases.failed,
            cases.not_run,
            self.elapsed.as_secs_f64()
        )
    }

    pub fn text(&self) -> String {
        let mut out = String::from("\n== Conformance, per test (cases passed/failed/not-run)\n");
        let width = self.rows.iter().map(|r| r.test.len()).max().unwrap_or(10);
        for r in &self.rows {
            let c = r.counts;
            out.push_str(&format!(
                "{:width$}  {:11}  {:>3} {:>3} {:>3}  {}\n",
                r.test, r.result, c.passed, c.failed, c.not_run, r.detail
            ));
        }
        out.push_str("\n== Per feature (tests run, tests skipped; cases passed/failed/not-run)\n");
        for (f, (ran, skipped, c)) in self.per_feature() {
            out.push_str(&format!(
                "{f:58}  {ran:>3} run {skipped:>3} skipped  {:>3} {:>3} {:>3}\n",
                c.passed, c.failed, c.not_run
            ));
        }
        out.push_str(&format!("\n== Total: {}\n", self.totals_line()));
        out
    }

    pub fn markdown(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut out = String::from("# Conformance report\n\n");
        out.push_str(&format!("**Total:** {}\n\n", self.totals_line()));
        out.push_str("## Per test\n\n| test | result | passed | failed | not-run | first failure / note |\n|---|---|---|---|---|---|\n");
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.test,
                r.result,
                r.counts.passed,
                r.counts.failed,
                r.counts.not_run,
                cell(&r.detail)
            ));
        }
        out.push_str("\n## Per feature\n\n| feature | tests run | tests skipped | cases passed | failed | not-run |\n|---|---|---|---|---|---|\n");
        for (f, (ran, skipped, c)) in self.per_feature() {
            out.push_str(&format!(
                "| {f} | {ran} | {skipped} | {} | {} | {} |\n",
                c.passed, c.failed, c.not_run
            ));
        }
        out.push_str("\n## Failed and not-run cases\n\n");
        for (id, o) in &self.outcomes {
            match o {
                Outcome::Failed(r) => out.push_str(&format!("- `{id}` failed: {}\n", cell(r))),
                Outcome::NotRun(r) => out.push_str(&format!("- `{id}` not-run ({})\n", cell(r))),
                Outcome::Passed => {}
            }
        }
        out
    }
}
