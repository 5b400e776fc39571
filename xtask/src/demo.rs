//! `cargo xtask run`: the agent on examples/quickstart, demo backends on
//! 127.0.0.1, and one HTTP request and one TCP exchange shown going through it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{run_cmd, setup::is_root};

const HTTP_BACKEND: &str = "127.0.0.1:18080";
const TCP_BACKEND: &str = "127.0.0.1:19000";
const HTTP_LISTENER: &str = "127.0.0.1:8080";
const TCP_LISTENER: &str = "127.0.0.1:9000";
const PIN_DIR: &str = "/sys/fs/bpf/gateway-agent-quickstart";

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM, so the agent shuts down as it would under a DaemonSet.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

pub fn run(once: bool) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the agent loads eBPF programs: run as root (sudo -E cargo xtask run)");
    }
    run_cmd(Command::new("cargo").args(["build", "--quiet", "-p", "gateway-agent"]))?;
    start_http_echo(TcpListener::bind(HTTP_BACKEND).context(HTTP_BACKEND)?);
    start_tcp_echo(TcpListener::bind(TCP_BACKEND).context(TCP_BACKEND)?);

    println!("==> target/debug/gateway-agent run --manifests examples/quickstart --interfaces lo");
    let agent = Agent(
        Command::new("target/debug/gateway-agent")
            .args([
                "run",
                "--manifests",
                "examples/quickstart",
                "--interfaces",
                "lo",
            ])
            .args(["--name", "gateway-agent-quickstart"])
            // The demo leaves nothing attached to lo behind it.
            .arg("--detach-on-exit")
            .spawn()
            .context("starting the agent")?,
    );

    let response = retry(|| http_get(HTTP_LISTENER, "/echo/hello"))?;
    println!(
        "\n==> HTTP GET http://{HTTP_LISTENER}/echo/hello  (HTTPRoute default/echo, served by the userspace proxy)"
    );
    for line in response.lines() {
        println!("    {line}");
    }
    let reply = retry(|| tcp_exchange(TCP_LISTENER, "hello through XDP"))?;
    println!(
        "\n==> TCP {TCP_LISTENER}  (TCPRoute default/echo, forwarded in the kernel by XDP on lo)"
    );
    println!("    sent: hello through XDP");
    println!("    got:  {reply}");
    println!(
        "\n==> bpftool map lookup pinned {PIN_DIR}/ROUTE_STATS key 0 0 0 0  (per-CPU counters of route 0, the TCPRoute)"
    );
    let dump = Command::new("bpftool")
        .args([
            "map",
            "lookup",
            "pinned",
            &format!("{PIN_DIR}/ROUTE_STATS"),
            "key",
            "0",
            "0",
            "0",
            "0",
        ])
        .output()?;
    print!("{}", String::from_utf8_lossy(&dump.stdout));
    if once {
        return Ok(());
    }
    println!(
        "\nServing examples/quickstart: try `curl http://{HTTP_LISTENER}/echo/x` or `nc 127.0.0.1 9000`. Ctrl-C stops."
    );
    let mut agent = agent;
    agent.0.wait()?;
    Ok(())
}

/// Retries `f` for up to 15 s while the agent starts.
fn retry<T>(mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: quickstart.example\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") {
        bail!("unexpected response: {response}");
    }
    Ok(response)
}

fn tcp_exchange(addr: &str, message: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(message.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// Answers each request with what it received, so the demo shows what the
/// backend saw (path, Host, X-Forwarded-For).
fn start_http_echo(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut head = String::new();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    head.push_str(&line);
                    line.clear();
                }
                let body = format!("http-echo backend at {HTTP_BACKEND} received:\n{head}");
                let mut stream = &stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
}

fn start_tcp_echo(listener: TcpListener) {
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut data = Vec::new();
                let _ = stream.read_to_end(&mut data);
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                let _ = write!(
                    stream,
                    "tcp-echo at {TCP_BACKEND} (connection from {peer}): "
                );
                let _ = stream.write_all(&data);
            });
        }
    });
}
