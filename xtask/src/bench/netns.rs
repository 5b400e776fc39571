//! Network namespaces private to one benchmark (unique names, deleted on
//! drop), processes pinned to a CPU inside them, and a thread that enters one
//! to send HTTP requests from this process.

use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> anyhow::Result<Netns> {
        let name = format!("gwb-{role}-{}", std::process::id());
        // A namespace left by an interrupted earlier run of this same pid is stale.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        crate::run_cmd(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip netns exec NAME taskset -c CPU args…` (`cpu` None: not pinned).
    pub fn command(&self, cpu: Option<u32>, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        if let Some(cpu) = cpu {
            cmd.args(["taskset", "-c", &cpu.to_string()]);
        }
        cmd.args(args);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(None, args)
            .output()
            .with_context(|| format!("cannot run {args:?}"))?;
        if !out.status.success() {
            bail!(
                "{args:?} in {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a load generator (or any command) to completion, returning stdout.
    pub fn run_pinned(&self, cpu: u32, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(Some(cpu), args).output()?;
        if !out.status.success() {
            bail!(
                "{args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn spawn(
        &self,
        cpu: Option<u32>,
        args: &[&str],
        log: &std::path::Path,
    ) -> anyhow::Result<Daemon> {
        let log_file = std::fs::File::create(log)?;
        let child = self
            .command(cpu, args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {args:?}"))?;
        Ok(Daemon(child))
    }

    /// Writes `value` to `/sys/class/net/<path>` of this namespace (`ip
    /// netns exec` mounts the namespace's own sysfs).
    fn write_sysfs(&self, path: &str, value: &str) -> anyhow::Result<()> {
        self.run(&["sh", "-c", &format!("echo {value} > /sys/class/net/{path}")])
            .map(drop)
    }

    /// The MAC address of `dev`.
    pub fn mac(&self, dev: &str) -> anyhow::Result<[u8; 6]> {
        let text = self.run(&["cat", &format!("/sys/class/net/{dev}/address")])?;
        let bytes: Vec<u8> = text
            .trim()
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<_, _>>()
            .with_context(|| format!("MAC address of {dev}: {text}"))?;
        bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("MAC address of {dev}: {text}"))
    }

    /// Receive packet steering: what arrives on `dev` through the backlog
    /// (veth without NAPI: `netif_rx` on the sending CPU) is processed on
    /// `cpu` instead; None: where it arrives.
    pub fn steer_backlog(&self, dev: &str, cpu: Option<usize>) -> anyhow::Result<()> {
        let mask = cpu.map_or(0u64, |c| 1 << c);
        self.write_sysfs(&format!("{dev}/queues/rx-0/rps_cpus"), &format!("{mask:x}"))
    }

    /// Threaded NAPI on `dev` (a veth with NAPI: an XDP program attached or
    /// GRO on), its poll kthreads pinned to `cpu`; None: back to softirq on
    /// the CPU that schedules the poll (a veth's sender). Returns the
    /// kthreads' pids. They are named `napi/<dev>-<id>`, and other
    /// namespaces may have a `dev` of that name: the new ones are ours.
    pub fn steer_napi(&self, dev: &str, cpu: Option<usize>) -> anyhow::Result<Vec<u32>> {
        let Some(cpu) = cpu else {
            self.write_sysfs(&format!("{dev}/threaded"), "0")?;
            return Ok(vec![]);
        };
        let before = napi_threads(dev);
        self.write_sysfs(&format!("{dev}/threaded"), "1")?;
        let ours: Vec<u32> = napi_threads(dev)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        if ours.is_empty() {
            bail!(
                "threaded NAPI on {dev} in {}: no new napi/{dev}-* thread",
                self.name
            );
        }
        for &pid in &ours {
            pin(pid, cpu)?;
        }
        Ok(ours)
    }

    /// Runs `f` on a thread that has entered this namespace (setns affects
    /// only the calling thread), so plain std sockets reach its addresses.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(move || -> anyhow::Result<T> {
                    let file = std::fs::File::open(&path)?;
                    use std::os::fd::AsRawFd as _;
                    // SAFETY: setns on a valid namespace fd; it changes this thread only.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns {path}: {}", std::io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .join()
                .expect("netns thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A server process (nginx, haproxy, the agent), killed and reaped on drop.
/// `ip netns exec` and `taskset` exec in place, so the pid is the server's.
pub struct Daemon(pub Child);

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `field` (e.g. "VmRSS", "VmHWM") of /proc/<pid>/status, in kB.
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Moves thread `pid` onto CPU `cpu` (0: the calling thread).
pub fn pin(pid: u32, cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity
    // only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid as libc::pid_t, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity {pid} to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Pids of the kernel threads polling `dev`'s NAPI instances, in any namespace.
fn napi_threads(dev: &str) -> Vec<u32> {
    let prefix = format!("napi/{dev}-");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim().starts_with(&prefix))
        })
        .collect()
}

/// Pids of the children of `pid` (nginx/haproxy workers).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// One HTTP/1.1 GET on a new connection; the status code (0: no answer).
pub fn http_status(addr: &str, host: &str, path: &str) -> u16 {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_millis(500);
    let Ok(sock_addr) = addr.parse() else {
        return 0;
    };
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&sock_addr, timeout) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).is_err() {
        return 0;
    }
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Polls `f` every 20 ms until it is true, at most `timeout`.
pub fn wait_until(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while !f() {
        if std::time::Instant::now() > deadline {
            bail!("{what}: not after {timeout:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}
