//! The Markdown report, its gnuplot charts, the machine's description and
//! the load average sampled while the benchmarks ran.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::Budget;
use super::stats::Summary;

pub struct Section {
    pub title: String,
    pub markdown: String,
}

/// Wall time per stage of a section, for the report's time budget: where
/// the run's minutes go.
pub struct StageClock {
    lap: Instant,
    stages: Vec<(&'static str, Duration)>,
}

impl StageClock {
    pub fn start() -> StageClock {
        StageClock {
            lap: Instant::now(),
            stages: Vec::new(),
        }
    }

    /// Ends the stage `name` (started at the previous lap) and prints it.
    pub fn lap(&mut self, name: &'static str) {
        let took = self.lap.elapsed();
        self.lap = Instant::now();
        println!("    ({name}: {:.1} s)", took.as_secs_f64());
        self.stages.push((name, took));
    }

    /// "Wall time by stage: setup 12 s, HTTP 190 s, …", a line of its own.
    pub fn markdown(&self) -> String {
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|(name, took)| format!("{name} {:.0} s", took.as_secs_f64()))
            .collect();
        format!("\nWall time by stage: {}.\n", stages.join(", "))
    }
}

pub fn utc_stamp() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H%MZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "undated".into())
}

/// The 1-minute load average, sampled every 5 s on a thread until stopped.
pub struct LoadSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<f64>>,
}

pub struct Load {
    pub samples: Vec<f64>,
}

impl LoadSampler {
    pub fn start() -> LoadSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            // Bounded: at most ~1 hour of samples.
            for tick in 0..36_000u32 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if tick % 50 == 0 {
                    samples.extend(load_1min());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            samples.extend(load_1min());
            samples
        });
        LoadSampler { stop, thread }
    }

    pub fn stop(self) -> Load {
        self.stop.store(true, Ordering::Relaxed);
        Load {
            samples: self.thread.join().unwrap_or_default(),
        }
    }
}

fn load_1min() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".into(), |(_, m)| m.trim().to_string());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map_or("?".into(), |m| m.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cpus} CPUs, {memory} RAM, Linux {}",
        kernel.trim()
    )
}

pub fn document(
    sections: &[(Section, Duration)],
    budget: Budget,
    command_line: &str,
    load: &Load,
    took: Duration,
    build_took: Duration,
) -> String {
    let load_text = if load.samples.is_empty() {
        "not sampled".to_string()
    } else {
        let s = Summary::of(&load.samples);
        format!(
            "1-minute load average sampled every 5 s: median {:.2}, min {:.2}, max {:.2} ({} samples)",
            s.median, s.min, s.max, s.n
        )
    };
    let mut text = format!(
        "# gateway-agent performance report ({})\n\n\
         - Command: `{command_line}`{quick}\n\
         - Machine: {}\n\
         - Load during the run: {load_text} (a median above the CPU count means other work \
         competed with the benchmark). Absolute figures depend on that load; the ratios between \
         peers measured interleaved in the same run are the meaningful part.\n\
         - Repeats: {} per figure, interleaved A/B/C; figures are medians with the spread (min–max) \
         in parentheses. Load runs of {} s.\n\
         - Tools: {}; {}; {}; {}; {}.\n\
         - Total time: {:.0} s ({}).\n",
        utc_stamp(),
        machine(),
        budget.repeats,
        budget.seconds,
        super::tools::version("wrk", "--version"),
        super::tools::version("h2load", "--version"),
        super::tools::version("oha", "--version"),
        super::tools::version("nginx", "-v"),
        super::tools::version("haproxy", "-v"),
        took.as_secs_f64(),
        std::iter::once(format!("release builds {:.0} s", build_took.as_secs_f64()))
            .chain(sections.iter().map(|(section, took)| {
                // "L7: HTTP proxy vs ..." -> "L7"
                let short = section.title.split(':').next().unwrap_or_default();
                format!("{short} {:.0} s", took.as_secs_f64())
            }),)
            .collect::<Vec<_>>()
            .join(", "),
        quick = if budget.quick {
            " (**--quick: short runs, too few repeats for conclusions**)"
        } else {
            ""
        },
    );
    if sections
        .iter()
        .any(|(section, _)| section.title.starts_with("Control plane"))
    {
        text.push_str(&format!(
            "- Scale set (control plane): {}.\n",
            super::control_plane::SCALE_SET
        ));
    }
    for (section, _) in sections {
        text.push_str(&format!("\n## {}\n\n{}\n", section.title, section.markdown));
    }
    text
}

/// A path's four node-cost cells (own ns, × the baseline's, capacity per CPU,
/// × the baseline's); row `baseline` is iptables in the L4 tables.
pub fn node_cost_cells(
    own_ns: &[Summary],
    capacity: &[Summary],
    i: usize,
    baseline: usize,
) -> String {
    format!(
        "{} | {:.2} | {} | {:.2}",
        own_ns[i].show(0),
        own_ns[i].median / own_ns[baseline].median,
        capacity[i].show(0),
        capacity[i].median / capacity[baseline].median,
    )
}

/// The bars of the node's own cost: every path's but the references'
/// (`references[i]` None), each named.
pub fn node_bars<'a>(
    names: impl Iterator<Item = &'a str>,
    references: &[Option<usize>],
    own: &[Summary],
) -> Vec<(String, Summary)> {
    names
        .zip(references.iter().zip(own))
        .filter(|(_, (reference, _))| reference.is_some())
        .map(|(name, (_, s))| (name.to_string(), *s))
        .collect()
}

/// A bar chart (median, with min–max error bars) as PNG, through gnuplot.
/// Returns the Markdown image link, or a note when gnuplot failed.
pub fn bar_chart(
    out_dir: &Path,
    file: &str,
    title: &str,
    ylabel: &str,
    bars: &[(String, Summary)],
) -> String {
    let data: String = bars
        .iter()
        .enumerate()
        .map(|(i, (label, s))| format!("{i} \"{label}\" {} {} {}\n", s.median, s.min, s.max))
        .collect();
    let data_path = out_dir.join(format!("{file}.dat"));
    let png = out_dir.join(format!("{file}.png"));
    let script = format!(
        "set terminal pngcairo size 800,420 noenhanced\nset output '{png}'\nset title '{title}'\n\
         set ylabel '{ylabel}'\nset style fill solid 0.6\nset boxwidth 0.6\nset yrange [0:*]\n\
         set xtics rotate by -20\nset grid ytics\nunset key\n\
         plot '{data}' using 1:3:xtic(2) with boxes, '' using 1:3:4:5 with yerrorbars lc rgb 'black' pt 0\n",
        png = png.display(),
        data = data_path.display(),
        // Inside gnuplot's single quotes a quote is written twice ("the
        // node's" broke a chart before).
        title = title.replace('\'', "''"),
        ylabel = ylabel.replace('\'', "''"),
    );
    // A script file: `gnuplot -e` rejects multi-line programs.
    let script_path = out_dir.join(format!("{file}.gp"));
    let ok = std::fs::write(&data_path, data).is_ok()
        && std::fs::write(&script_path, script).is_ok()
        && Command::new("gnuplot")
            .arg(&script_path)
            .output()
            .is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_file(&data_path);
    let _ = std::fs::remove_file(&script_path);
    if ok {
        format!("![{title}]({file}.png)\n")
    } else {
        format!("(chart {file}.png: gnuplot failed)\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_bars_leave_the_references_out() {
        let own = Summary::each(&[vec![10.0], vec![20.0], vec![0.0], vec![0.0]]);
        let bars = node_bars(
            ["XDP", "iptables", "direct", "direct1"].into_iter(),
            &[Some(2), Some(3), None, None],
            &own,
        );
        let named: Vec<(&str, f64)> = bars.iter().map(|(n, s)| (n.as_str(), s.median)).collect();
        assert_eq!(named, [("XDP", 10.0), ("iptables", 20.0)]);
    }
}
