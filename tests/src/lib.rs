//! The netns harness for end-to-end tests: client, node and backend network
//! namespaces joined by veth pairs, processes run inside them, and everything
//! torn down on drop (also when a test panics). Names are unique per run, so
//! tests run in parallel; addresses (198.18.0.0/15) are private to each topology.
//!
//! ```text
//!  client ns            node ns (the agent)               backend ns
//!  eth0 198.18.0.2 ── c0 198.18.0.1 | b0 198.18.1.1 ── eth0 198.18.1.2
//! ```

pub mod fake_apiserver;
pub mod frames;
pub mod program_cost;
pub mod test_run;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const CLIENT_ADDR: &str = "198.18.0.2";
pub const GATEWAY_ADDR: &str = "198.18.0.1";
pub const NODE_BACKEND_SIDE_ADDR: &str = "198.18.1.1";
pub const BACKEND_ADDR: &str = "198.18.1.2";

/// True when the test can run (root). Without root it reports a skip, except
/// under `CI=true`, where it fails: CI must never skip these silently.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root (BPF, network namespaces) and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: needs root (BPF, network namespaces)");
    false
}

/// A name unique to this process and call: `<prefix><pid>x<n>`, short enough
/// for interface names.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command to completion; panics with its output when it fails.
pub fn must(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique(&format!("gwt-{prefix}-"));
        must(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Like `command`, but the child only enters the network namespace (setns),
    /// keeping the mount namespace: `ip netns exec` remounts /sys, which would
    /// hide the agent's pinned maps under /sys/fs/bpf from the test.
    pub fn command_in_netns_only(&self, program: &Path) -> Command {
        use std::os::unix::process::CommandExt as _;
        let path = std::ffi::CString::new(format!("/run/netns/{}", self.name)).expect("no NUL");
        let mut cmd = Command::new(program);
        // SAFETY: open/setns/close are async-signal-safe; nothing else runs in pre_exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        cmd
    }

    /// Opens a TCP connection from inside the namespace (a thread enters it to
    /// connect); the socket stays in the namespace, and the caller uses it from
    /// any thread.
    pub fn connect_tcp(&self, addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpStream> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path)?;
            // SAFETY: setns on a valid namespace fd; it changes only this thread.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.set_write_timeout(Some(Duration::from_secs(5)))?;
            Ok(stream)
        })
        .join()
        .expect("connect thread")
    }

    /// Moves the calling thread into the namespace (setns changes only this
    /// thread): sockets it opens from then on live there.
    pub fn enter(&self) -> std::io::Result<()> {
        enter_netns(&self.name)
    }

    /// Runs `args` inside the namespace and panics if it fails.
    pub fn run(&self, args: &[&str]) -> Output {
        must(self.command(args[0]).args(&args[1..]))
    }

    /// Starts a long-running process inside the namespace.
    pub fn spawn(&self, args: &[&str]) -> Process {
        let child = self
            .command(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        Process(child)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veths (and their peers).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Moves the calling thread into the network namespace `name` (for threads
/// that do not hold the `Netns`).
pub fn enter_netns(name: &str) -> std::io::Result<()> {
    let ns = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns on a valid namespace fd; it changes only this thread.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Process(pub Child);

impl Process {
    pub fn signal(&self, signal: libc::c_int) {
        // `ip netns exec` execs the program, so the pid is the program's own.
        // SAFETY: plain syscall on our own child.
        let rc = unsafe { libc::kill(self.0.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }

    /// Runs `request` on a thread and sends SIGTERM 400 ms later, while the
    /// request is in flight (its backend holds it longer); then waits up to
    /// `limit` for the process to exit. Returns the request's result and,
    /// if it exited, its status and the time from the signal.
    pub fn sigterm_during<T: Send>(
        &mut self,
        limit: Duration,
        request: impl FnOnce() -> T + Send,
    ) -> (T, Option<(std::process::ExitStatus, Duration)>) {
        std::thread::scope(|scope| {
            let request = scope.spawn(request);
            std::thread::sleep(Duration::from_millis(400));
            self.signal(libc::SIGTERM);
            let signalled = Instant::now();
            let response = request.join().expect("request thread");
            let mut exited = None;
            while signalled.elapsed() < limit {
                if let Some(status) = self.0.try_wait().expect("try_wait") {
                    exited = Some((status, signalled.elapsed()));
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (response, exited)
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Topology {
    pub client: Netns,
    pub node: Netns,
    pub backend: Netns,
}

impl Topology {
    pub fn new() -> Self {
        let topology = Topology {
            client: Netns::new("c"),
            node: Netns::new("n"),
            backend: Netns::new("b"),
        };
        topology.link(&topology.client, "c0", GATEWAY_ADDR, CLIENT_ADDR);
        topology.link(
            &topology.backend,
            "b0",
            NODE_BACKEND_SIDE_ADDR,
            BACKEND_ADDR,
        );
        topology
    }

    /// A veth pair between `peer` (eth0, `peer_addr`) and the node (`node_if`,
    /// `node_addr`); the peer routes everything through the node.
    fn link(&self, peer: &Netns, node_if: &str, node_addr: &str, peer_addr: &str) {
        must(Command::new("ip").args([
            "link",
            "add",
            "eth0",
            "netns",
            &peer.name,
            "type",
            "veth",
            "peer",
            "name",
            node_if,
            "netns",
            &self.node.name,
        ]));
        peer.run(&[
            "ip",
            "addr",
            "add",
            &format!("{peer_addr}/24"),
            "dev",
            "eth0",
        ]);
        peer.run(&["ip", "link", "set", "eth0", "up"]);
        peer.run(&["ip", "route", "add", "default", "via", node_addr]);
        self.node.run(&[
            "ip",
            "addr",
            "add",
            &format!("{node_addr}/24"),
            "dev",
            node_if,
        ]);
        self.node.run(&["ip", "link", "set", node_if, "up"]);
        // Full checksums on what the peers send: native XDP sees raw frames and
        // cannot finish a partial (offloaded) checksum. GRO lets veth accept
        // frames the node's XDP program redirects to it.
        peer.run(&["ethtool", "-K", "eth0", "tx", "off", "gro", "on"]);
    }

    /// Path of a binary of this package (cargo builds them before the tests).
    pub fn bin(name: &str) -> PathBuf {
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/<test> → target/<profile>/<name>
        exe.parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join(name)
    }

    /// Runs `test-peer ARGS` in the client namespace; Ok(stdout) or Err(stderr).
    pub fn client_run(&self, args: &[&str]) -> Result<String, String> {
        let peer = Self::bin("test-peer");
        let out = self
            .client
            .command(peer.to_str().expect("utf-8 path"))
            .args(args)
            .output()
            .expect("run test-peer");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Starts `test-peer ARGS` in the backend namespace.
    pub fn backend_spawn(&self, args: &[&str]) -> Process {
        let peer = Self::bin("test-peer");
        let mut all = vec![peer.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        self.backend.spawn(&all)
    }

    /// A TCP echo backend on BACKEND_ADDR:7000 and the manifests of a
    /// TCPRoute to it on the gateway's port 9000 (`l4_gateway`).
    pub fn tcp_echo_route(&self) -> (Process, TempDir) {
        let backend = self.backend_spawn(&["tcp-echo", &format!("{BACKEND_ADDR}:7000")]);
        let manifests = TempDir::new();
        manifests.write(
            "all.yaml",
            &(class_and_service("echo", 7000, 7000) + &l4_gateway("TCP", "TCPRoute", 7000)),
        );
        (backend, manifests)
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique("gwt-"));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).expect("write file");
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent running standalone in the node namespace, on a manifests directory.
pub struct Agent {
    pub process: Process,
    pub name: String,
    pub log: PathBuf,
    pub manifests: TempDir,
    extra_args: Vec<String>,
}

impl Agent {
    pub fn start(topology: &Topology, manifests: TempDir) -> Agent {
        Self::start_with(topology, manifests, &[])
    }

    /// Like `start`, with more `gateway-agent run` arguments.
    pub fn start_with(topology: &Topology, manifests: TempDir, extra_args: &[&str]) -> Agent {
        let name = unique("gwt-agent-");
        let log = manifests.0.with_extension("log");
        std::fs::File::create(&log).expect("create log");
        mount_bpffs_once();
        let extra_args: Vec<String> = extra_args.iter().map(ToString::to_string).collect();
        let process = Self::spawn(topology, &name, &log, &manifests, &extra_args);
        Agent {
            process,
            name,
            log,
            manifests,
            extra_args,
        }
    }

    /// Starts a new agent process with the same name (so the same pinned
    /// state), manifests and arguments; its log is appended to the same file.
    /// The previous process must have exited.
    pub fn restart(&mut self, topology: &Topology) {
        self.process = Self::spawn(
            topology,
            &self.name,
            &self.log,
            &self.manifests,
            &self.extra_args,
        );
    }

    /// `restart` with other extra arguments, kept for later restarts.
    pub fn restart_with(&mut self, topology: &Topology, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(ToString::to_string).collect();
        self.restart(topology);
    }

    fn spawn(
        topology: &Topology,
        name: &str,
        log: &Path,
        manifests: &TempDir,
        extra_args: &[String],
    ) -> Process {
        let log_file = std::fs::OpenOptions::new()
            .append(true)
            .open(log)
            .expect("open log");
        let child = topology
            .node
            .command_in_netns_only(&Topology::bin("agent-under-test"))
            .args(["run", "--manifests"])
            .arg(&manifests.0)
            .args([
                "--interfaces",
                "c0,b0",
                "--xdp-mode",
                "native",
                "--name",
                name,
            ])
            .args(extra_args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the agent");
        Process(child)
    }

    /// How many times the log says `needle` (to wait for the next one).
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(&self.name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sum over CPUs of one field of `ROUTE_STATS[route_id]`, read with bpftool
    /// from the pinned map (works while the agent is stopped).
    pub fn route_counter(&self, route_id: u32, field: &str) -> u64 {
        self.per_cpu_sum("ROUTE_STATS", route_id, |v| v["value"][field].as_u64())
    }

    /// How many packets the XDP program handled with `event` (XDP_STATS).
    pub fn packet_events(&self, event: gateway_common::PacketEvent) -> u64 {
        self.per_cpu_sum("XDP_STATS", event as u32, |v| v["value"].as_u64())
    }

    /// The SIGSTOP proof for UDP: with the agent frozen, three datagrams to
    /// `target` still get their echo (forwarded both ways in the kernel) and
    /// are counted on route 0, both directions.
    pub fn assert_udp_forwarded_while_stopped(&self, topology: &Topology, target: &str) {
        let packets_before = self.route_counter(0, "packets");
        self.process.signal(libc::SIGSTOP);
        for i in 0..3 {
            let message = format!("while stopped {i}");
            assert_eq!(
                topology
                    .client_run(&["udp-send", target, &message])
                    .as_deref(),
                Ok(message.as_str()),
                "datagram {i} with the agent stopped"
            );
        }
        let packets = self.route_counter(0, "packets") - packets_before;
        assert!(packets >= 6, "{packets} packets counted for 3 echoes");
        self.process.signal(libc::SIGCONT);
    }

    fn per_cpu_sum(
        &self,
        map: &str,
        index: u32,
        field: impl Fn(&serde_json::Value) -> Option<u64>,
    ) -> u64 {
        let path = self.pin_dir().join(map);
        let key = index.to_le_bytes().map(|b| b.to_string());
        let out = must(
            Command::new("bpftool")
                .args(["--json", "map", "lookup", "pinned"])
                .arg(&path)
                .arg("key")
                .args(key),
        );
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        let per_cpu = value["formatted"]["values"]
            .as_array()
            .or_else(|| value["values"].as_array())
            .unwrap_or_else(|| panic!("unexpected bpftool output: {value}"));
        per_cpu
            .iter()
            .map(|v| field(v).unwrap_or_else(|| panic!("unexpected value in {map}: {v}")))
            .sum()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        let _ = std::fs::remove_dir_all(self.pin_dir());
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Mounts the BPF filesystem at /sys/fs/bpf unless it is there, once per test
/// process, so that agents started in parallel do not each mount one.
fn mount_bpffs_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        if !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
        {
            must(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]));
        }
    });
}

/// Polls `f` until it returns Some, at most `timeout`; panics with `what` and
/// the last error otherwise.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: still failing after {timeout:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One HTTP/1.1 request on a kept-alive connection to an `http-echo`
/// backend; returns the backend's name.
pub fn ask_echo_backend(stream: &std::net::TcpStream) -> Result<String, String> {
    exchange_with_echo_backend(stream, b"GET / HTTP/1.1\r\nHost: l4\r\n\r\n")
}

/// Sends `request` (an HTTP/1.1 request) and returns the answering backend's name.
pub fn exchange_with_echo_backend(
    stream: &std::net::TcpStream,
    request: &[u8],
) -> Result<String, String> {
    use std::io::{BufRead as _, Read as _, Write as _};
    let mut writer = stream;
    writer
        .write_all(request)
        .map_err(|e| format!("send: {e}"))?;
    let mut reader = std::io::BufReader::new(stream);
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("connection closed".into()),
            Err(e) => return Err(format!("receive: {e}")),
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            content_length = v.trim().parse().map_err(|_| "bad content-length")?;
        }
    }
    let mut body = vec![0; content_length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    let body = String::from_utf8_lossy(&body);
    body.lines()
        .find_map(|l| l.strip_prefix("backend="))
        .map(str::to_string)
        .ok_or_else(|| format!("no backend= in {body:?}"))
}

/// Gateway API manifests the tests share: our GatewayClass and a Service with
/// one endpoint on the backend namespace's address.
pub fn class_and_service(service: &str, port: u16, target_port: u16) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: gwt
spec:
  controllerName: {controller}
---
apiVersion: v1
kind: Service
metadata:
  name: {service}
  namespace: default
spec:
  ports:
  - name: p
    port: {port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-1
  namespace: default
  labels:
    kubernetes.io/service-name: {service}
addressType: IPv4
ports:
- name: p
  port: {target_port}
endpoints:
- addresses: ["{BACKEND_ADDR}"]
"#,
        controller = gateway_agent::DEFAULT_CONTROLLER_NAME,
    )
}

/// A Gateway listener on port 9000 and an L4 route of `kind` to Service
/// `echo` port `backend_port`.
pub fn l4_gateway(protocol: &str, kind: &str, backend_port: u16) -> String {
    gateway_with(protocol, 9000, &l4_route(kind, &[("echo", backend_port)]))
}

/// A `kind` (TCPRoute or UDPRoute) named `echo` on Gateway `gw`, one rule
/// with `backends` (Service name, port), equally weighted.
pub fn l4_route(kind: &str, backends: &[(&str, u16)]) -> String {
    let refs: String = backends
        .iter()
        .map(|(name, port)| format!("    - name: {name}\n      port: {port}\n"))
        .collect();
    format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: {kind}
metadata:
  name: echo
  namespace: default
spec:
  parentRefs:
  - name: gw
  rules:
  - backendRefs:
{refs}"#
    )
}

/// Gateway `gw` on GATEWAY_ADDR with one listener, followed by `routes`.
pub fn gateway_with(protocol: &str, port: u16, routes: &str) -> String {
    format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: default
spec:
  gatewayClassName: gwt
  addresses:
  - value: {GATEWAY_ADDR}
  listeners:
  - name: listener
    protocol: {protocol}
    port: {port}
{routes}"#
    )
}

/// A Gateway with one HTTP listener (port 80) and an HTTPRoute for host
/// `app.example` sending `path` (PathPrefix) to Service `web` port 8080.
pub fn http_gateway_and_route(path: &str) -> String {
    let route = format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: app
  namespace: default
spec:
  parentRefs:
  - name: gw
  hostnames: ["app.example"]
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: {path}
    backendRefs:
    - name: web
      port: 8080
"#
    );
    gateway_with("HTTP", 80, &route)
}
pub mod conformance;
pub mod tls;
