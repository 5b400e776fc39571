//! What the benchmarks run, installed when missing (idempotent): Debian
//! packages through apt-get, and oha (open-loop load with latency correction)
//! through `cargo install`.

use std::process::Command;

use crate::run_cmd;

/// (command, Debian package).
const PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("haproxy", "haproxy"),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("iptables", "iptables"),
    ("gnuplot", "gnuplot-nox"),
    ("taskset", "util-linux"),
    ("iperf3", "iperf3"),
    ("socat", "socat"),
];

fn present(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn ensure() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(command, _)| !present(command))
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        println!("==> apt-get install {}", missing.join(" "));
        run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if !present("oha") {
        println!("==> cargo install oha --locked (open-loop load generator, once)");
        run_cmd(Command::new("cargo").args(["install", "oha", "--locked"]))?;
    }
    Ok(())
}

/// `<tool> --version`'s first line, for the report.
pub fn version(tool: &str, flag: &str) -> String {
    Command::new(tool)
        .arg(flag)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}
