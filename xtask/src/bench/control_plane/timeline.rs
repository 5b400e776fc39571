//! Where each change's time went. The agent time-stamps its log lines (the
//! wall clock, as the bench's): the change's event (`file event`, or a `watch
//! event` at debug level) and the `config applied` line with its stages'
//! `*_ms` fields. Matched against when the bench made each change and when
//! the change first served, they split every change-to-serving sample into
//! stages, so that a slow sample says where its time went.

use std::time::SystemTime;

use crate::bench::stats::percentile;

/// The agent's log filter for the edit runs: its events at debug level.
pub const LOG_FILTER: &str = "info,gateway_agent::source=debug,gateway_agent::cli=debug";

/// One change as the bench saw it.
pub struct Change {
    /// When the bench began making it (seconds since the Unix epoch).
    pub sent_at: f64,
    /// From then until the change first served.
    pub latency_ms: f64,
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The reload's own stages, in the order the agent runs them (the fields a
/// mode does not log are left out).
const RELOAD_STAGES: &[(&str, &str)] = &[
    ("refresh_ms", "copy changed objects into the snapshot"),
    (
        "read_ms",
        "read manifests (incl. wait for the blocking thread)",
    ),
    ("queued_ms", "wait for the blocking thread"),
    ("translate_ms", "translate"),
    ("returned_ms", "translate's result back on the runtime"),
    ("l4_ms", "L4: compare, program eBPF maps"),
    ("proxy_ms", "proxy: build and swap route tables"),
    ("tls_ms", "TLS passthrough and bookkeeping"),
];

/// A change split into stages (ms), or why it could not be.
struct Split {
    latency: f64,
    stages: Vec<(&'static str, f64)>,
}

struct Applied {
    at: f64,
    took: f64,
    fields: Vec<(&'static str, f64)>,
}

/// `changes` split into stages by the agent's log; `event` tells a change's
/// event line (the first after the change was sent) from others.
pub struct Timeline {
    splits: Vec<Split>,
    unmatched: usize,
}

impl Timeline {
    pub fn of(log: &str, changes: &[Change], event: impl Fn(&str) -> bool) -> Timeline {
        let mut events = Vec::new();
        let mut applied = Vec::new();
        for line in log.lines() {
            let Some(at) = log_time(line) else { continue };
            if line.contains("config applied") {
                let field = |name: &str| -> Option<f64> {
                    let prefix = format!("{name}=");
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(&prefix))?
                        .parse()
                        .ok()
                };
                if let Some(took) = field("took_ms") {
                    let fields = RELOAD_STAGES
                        .iter()
                        .filter_map(|(name, _)| Some((*name, field(name)?)))
                        .collect();
                    applied.push(Applied { at, took, fields });
                }
            } else if event(line) {
                events.push(at);
            }
        }
        let mut splits = Vec::new();
        let mut unmatched = 0;
        for change in changes {
            let served_at = change.sent_at + change.latency_ms / 1e3;
            let event_at = events.iter().copied().find(|t| *t >= change.sent_at);
            let reload = event_at.and_then(|e| applied.iter().find(|a| a.at >= e));
            let (Some(event_at), Some(reload)) = (event_at, reload) else {
                unmatched += 1;
                continue;
            };
            // A reload logged after the change served is not the one that
            // served it (a clock step, a lost line): not split.
            if reload.at > served_at + 1e-3 {
                unmatched += 1;
                continue;
            }
            let reload_start = reload.at - reload.took / 1e3;
            let mut stages = vec![
                ("to_event", (event_at - change.sent_at) * 1e3),
                ("to_reload", (reload_start - event_at) * 1e3),
            ];
            let mut accounted = 0.0;
            for (name, ms) in &reload.fields {
                accounted += ms;
                stages.push((name, *ms));
            }
            stages.push(("reload_other", reload.took - accounted));
            stages.push(("to_served", (served_at - reload.at) * 1e3));
            splits.push(Split {
                latency: change.latency_ms,
                stages,
            });
        }
        Timeline { splits, unmatched }
    }

    /// A table of every stage's p50, p99 and maximum, and the stages of the
    /// slowest changes.
    pub fn markdown(&self) -> String {
        let Some(first) = self.splits.first() else {
            return format!(
                "No change could be matched with the agent's log ({} unmatched).\n",
                self.unmatched
            );
        };
        let mut md = String::from("| stage | p50 ms | p99 ms | max ms |\n|---|---|---|---|\n");
        for (i, (name, _)) in first.stages.iter().enumerate() {
            let values: Vec<f64> = self.splits.iter().map(|s| s.stages[i].1).collect();
            md.push_str(&format!(
                "| {} | {:.2} | {:.2} | {:.2} |\n",
                describe(name),
                percentile(&values, 50.0),
                percentile(&values, 99.0),
                values.iter().copied().fold(f64::MIN, f64::max),
            ));
        }
        let mut slowest: Vec<&Split> = self.splits.iter().collect();
        slowest.sort_by(|a, b| b.latency.total_cmp(&a.latency));
        md.push_str("\nThe slowest changes, stage by stage (ms):\n\n");
        for split in slowest.iter().take(3) {
            let stages: Vec<String> = split
                .stages
                .iter()
                .filter(|(_, ms)| ms.abs() >= 0.05)
                .map(|(name, ms)| format!("{name} {ms:.1}"))
                .collect();
            md.push_str(&format!(
                "- {:.1} ms: {}\n",
                split.latency,
                stages.join(", ")
            ));
        }
        if self.unmatched > 0 {
            md.push_str(&format!(
                "\n({} changes not matched with the agent's log.)\n",
                self.unmatched
            ));
        }
        md
    }
}

fn describe(stage: &str) -> String {
    let text = match stage {
        "to_event" => "change made → the agent's event (write + inotify / PATCH + watch)",
        "to_reload" => "event → reload starts",
        "reload_other" => "rest of the reload",
        "to_served" => "reload done → first 200 (poll)",
        other => RELOAD_STAGES
            .iter()
            .find(|(name, _)| *name == other)
            .map_or(other, |(_, text)| text),
    };
    format!("{text} (`{stage}`)")
}

/// The time stamp opening a tracing line (`2026-11-24T04:21:22.123456Z ...`),
/// in seconds since the Unix epoch.
fn log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.splitn(3, ':');
    let h: f64 = hms.next()?.parse().ok()?;
    let min: f64 = hms.next()?.parse().ok()?;
    let s: f64 = hms.next()?.parse().ok()?;
    Some(days_from_civil(y, m, d) as f64 * 86_400.0 + h * 3_600.0 + min * 60.0 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_time_reads_tracing_stamps() {
        let t = log_time("2026-11-24T04:21:22.500000Z  INFO x: config applied").expect("stamp");
        // date -u -d 2026-11-24T04:21:22Z +%s
        assert!((t - 1_795_494_082.5).abs() < 1e-6, "{t}");
        assert_eq!(log_time("no stamp here"), None);
    }

    #[test]
    fn a_change_splits_into_its_stages() {
        let log = "\
2026-11-24T04:00:00.001000Z DEBUG gateway_agent::source::kube: watch event kind=HttpRoute object=default/route-1 status_only=false
2026-11-24T04:00:00.004000Z  INFO gateway_agent::cli::cluster: config applied generation=2 refresh_ms=0.5 translate_ms=1 took_ms=2.5 waited_ms=0.1
2026-11-24T04:00:00.005000Z DEBUG gateway_agent::source::kube: watch event kind=HttpRoute object=default/route-1 status_only=true
";
        let sent_at = log_time("2026-11-24T04:00:00.000000Z").expect("stamp");
        let timeline = Timeline::of(
            log,
            &[Change {
                sent_at,
                latency_ms: 6.0,
            }],
            |l| l.contains("watch event") && l.contains("status_only=false"),
        );
        let stages: Vec<(&str, f64)> = timeline.splits[0]
            .stages
            .iter()
            .map(|(n, ms)| (*n, (ms * 1e3).round() / 1e3))
            .collect();
        assert_eq!(
            stages,
            [
                ("to_event", 1.0),
                ("to_reload", 0.5),
                ("refresh_ms", 0.5),
                ("translate_ms", 1.0),
                ("reload_other", 1.0),
                ("to_served", 2.0),
            ]
        );
    }
}
