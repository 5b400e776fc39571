//! The TLS passthrough data plane: accepts on each passthrough listener,
//! reads the ClientHello's server name, picks a TLSRoute backend by it, and
//! hands both sockets to the kernel splice (or, where the kernel lacks
//! sockmap, copies in userspace). TLS is never terminated here.

mod close_watch;
mod kernel_splice;
mod route_ids;
pub mod sni;
pub(crate) mod sni_table;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use gateway_common::splice::MAX_TLS_ROUTES;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::model::{RouteRef, TlsPassthroughListener};
use close_watch::CloseWatch;
pub use kernel_splice::KernelSplice;
use route_ids::RouteIds;
use sni::ClientHello;
pub use sni_table::SniTable;

/// A client must have sent its whole ClientHello within this time.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How connections' bytes move once a backend is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SpliceMode {
    /// In the kernel where sockmap works, else in userspace (decided at start-up).
    #[default]
    Auto,
    /// In the kernel (sockmap + sk_skb); start-up fails without it.
    Kernel,
    /// In userspace (tokio copy), e.g. for comparison.
    Copy,
}

/// What a socket serves: its routes, and the TLS acceptor of its
/// Terminate-mode listeners (None when all are Passthrough).
struct SocketConfig {
    table: SniTable,
    terminate: Option<Arc<tokio_rustls::TlsAcceptor>>,
}

struct Bound {
    /// What `table` was built from: an equal listener in the next apply
    /// leaves the socket as it is.
    applied: TlsPassthroughListener,
    table: Arc<ArcSwap<SocketConfig>>,
    accept: JoinHandle<()>,
}

pub struct Passthrough {
    bound: Mutex<HashMap<SocketAddr, Bound>>,
    shared: Arc<Shared>,
}

struct Shared {
    /// The kernel splice and the watch for its sockets' closes.
    splice: Option<(KernelSplice, Arc<CloseWatch>)>,
    stats: Mutex<Stats>,
}

/// Counters the userspace side keeps (the kernel keeps spliced bytes).
struct Stats {
    /// Ids for the kernel's per-route counters, of the routes the sockets serve.
    route_ids: RouteIds,
    connections: BTreeMap<RouteRef, u64>,
    /// Bytes (to backend, to client) copied in userspace.
    copied: BTreeMap<RouteRef, (u64, u64)>,
    /// (listener, reason) → connections closed without contacting a backend.
    rejected: BTreeMap<(SocketAddr, &'static str), u64>,
}

impl Passthrough {
    /// Chooses how to move bytes, once for the agent's life; the kernel
    /// splice pins its counters under `pin_dir`.
    pub fn new(mode: SpliceMode, pin_dir: &std::path::Path) -> Result<Self, kernel_splice::Error> {
        let splice = match mode {
            SpliceMode::Copy => None,
            SpliceMode::Kernel => Some(KernelSplice::load(pin_dir)?),
            SpliceMode::Auto => match KernelSplice::load(pin_dir) {
                Ok(splice) => Some(splice),
                Err(error) => {
                    tracing::warn!(%error, "no sockmap splice: TLS passthrough copies in userspace");
                    None
                }
            },
        };
        let splice = match splice {
            Some(splice) => Some((splice, CloseWatch::start()?)),
            None => None,
        };
        tracing::info!(
            mode = if splice.is_some() { "kernel" } else { "copy" },
            "TLS passthrough splice mode"
        );
        Ok(Self {
            bound: Mutex::new(HashMap::new()),
            shared: Arc::new(Shared {
                splice,
                stats: Mutex::new(Stats {
                    route_ids: RouteIds::new(MAX_TLS_ROUTES),
                    connections: BTreeMap::new(),
                    copied: BTreeMap::new(),
                    rejected: BTreeMap::new(),
                }),
            }),
        })
    }

    pub fn spliced_in_kernel(&self) -> bool {
        self.shared.splice.is_some()
    }

    /// Entries in the splice maps (sockets, peers); (0, 0) in copy mode.
    pub fn splice_entries(&self) -> (usize, usize) {
        self.shared
            .splice
            .as_ref()
            .map_or((0, 0), |(splice, _)| splice.entries())
    }

    /// The collector of this data plane's counters, for `/metrics`.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(PassthroughCollector {
            passthrough: self.clone(),
        })
    }

    /// Serves `listeners`: binds new addresses, swaps tables of existing ones
    /// whose listener changed (an unchanged one keeps its table), stops
    /// accepting on removed ones (their spliced connections finish).
    pub async fn apply(
        &self,
        listeners: &[TlsPassthroughListener],
    ) -> Vec<(SocketAddr, std::io::Error)> {
        let mut failures = Vec::new();
        let mut fresh = Vec::new();
        for listener in listeners {
            let existing = {
                let bound = self.bound.lock().expect("lock");
                match bound.get(&listener.bind) {
                    Some(b) if b.applied == *listener => continue,
                    Some(b) => Some(b.table.clone()),
                    None => None,
                }
            };
            let terminate = match crate::proxy::tls::acceptor(&listener.certificates) {
                Ok(acceptor) => acceptor.map(Arc::new),
                Err(e) => {
                    failures.push((listener.bind, std::io::Error::other(e)));
                    continue;
                }
            };
            let table = SocketConfig {
                table: SniTable::new(listener.routes.clone()),
                terminate,
            };
            match existing {
                Some(current) => {
                    current.store(Arc::new(table));
                    self.hold_routes(&listener.routes);
                    let mut bound = self.bound.lock().expect("lock");
                    let b = bound.get_mut(&listener.bind).expect("bound above");
                    let previous = std::mem::replace(&mut b.applied, listener.clone());
                    drop(bound);
                    self.release_routes(&previous.routes);
                }
                None => match bind(listener.bind).await {
                    Ok(socket) => {
                        self.hold_routes(&listener.routes);
                        let table = Arc::new(ArcSwap::from_pointee(table));
                        let accept = tokio::spawn(accept_loop(
                            socket,
                            listener.bind,
                            table.clone(),
                            self.shared.clone(),
                        ));
                        let applied = listener.clone();
                        fresh.push((
                            listener.bind,
                            Bound {
                                applied,
                                table,
                                accept,
                            },
                        ));
                    }
                    Err(e) => failures.push((listener.bind, e)),
                },
            }
        }
        let mut bound = self.bound.lock().expect("lock");
        bound.extend(fresh);
        let addresses: std::collections::HashSet<SocketAddr> =
            listeners.iter().map(|l| l.bind).collect();
        let removed: Vec<Bound> = bound
            .extract_if(|addr, _| !addresses.contains(addr))
            .map(|(addr, b)| {
                b.accept.abort();
                tracing::info!(%addr, "TLS passthrough listener removed");
                b
            })
            .collect();
        drop(bound);
        for b in removed {
            self.release_routes(&b.applied.routes);
        }
        failures
    }

    /// Per route: its id in the kernel's `TLS_ROUTE_STATS`, and (connections,
    /// bytes to backend, bytes to client), spliced bytes included (for `inspect`).
    pub fn route_counters(&self) -> Vec<(RouteRef, u32, (u64, u64, u64))> {
        let stats = self.shared.stats.lock().expect("stats lock");
        stats
            .route_ids
            .iter()
            .map(|(route, id)| {
                let (mut to_backend, mut to_client) =
                    stats.copied.get(route).copied().unwrap_or_default();
                if let Some((splice, _)) = &self.shared.splice {
                    let (b, c) = splice.route_bytes(id);
                    to_backend += b;
                    to_client += c;
                }
                let connections = stats.connections.get(route).copied().unwrap_or(0);
                (route.clone(), id, (connections, to_backend, to_client))
            })
            .collect()
    }

    /// A socket's table now holds `routes`: those new to every table get ids.
    fn hold_routes(&self, routes: &[crate::model::TlsPassthroughRoute]) {
        let mut stats = self.shared.stats.lock().expect("stats lock");
        for route in routes {
            let Some((id, reused)) = stats.route_ids.hold(&route.route) else {
                continue;
            };
            let Some((splice, _)) = &self.shared.splice else {
                continue;
            };
            // A reused id still counts its old route's bytes.
            let zeroed = if reused {
                splice.zero_route(id)
            } else {
                Ok(())
            };
            let hash = crate::dataplane::l4_plan::name_hash(&route.route);
            if let Err(error) = zeroed.and_then(|()| splice.name_route(id, hash)) {
                tracing::warn!(%error, route = %route.route, "cannot record the TLS route's id in the pinned maps");
            }
        }
    }

    /// A socket's table no longer holds `routes`: those no table holds any
    /// more free their ids and drop their userspace counters.
    fn release_routes(&self, routes: &[crate::model::TlsPassthroughRoute]) {
        let mut stats = self.shared.stats.lock().expect("stats lock");
        for route in routes {
            if stats.route_ids.release(&route.route) {
                stats.connections.remove(&route.route);
                stats.copied.remove(&route.route);
            }
        }
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    tracing::info!(%addr, "TLS passthrough listener bound");
    Ok(listener)
}

async fn accept_loop(
    socket: TcpListener,
    addr: SocketAddr,
    table: Arc<ArcSwap<SocketConfig>>,
    shared: Arc<Shared>,
) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let table = table.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(reason) = serve(stream, &table, &shared).await {
                tracing::debug!(listener = %addr, %peer, reason, "TLS connection refused");
                *shared
                    .stats
                    .lock()
                    .expect("stats lock")
                    .rejected
                    .entry((addr, reason))
                    .or_default() += 1;
            }
        });
    }
}

/// Reads until the first TLS record is complete (or can never be), at most
/// `buf.len()` bytes. The bytes are consumed, not peeked: the agent forwards
/// them itself before the kernel takes over, so nothing can sit in a socket
/// queue that the splice would not see.
async fn read_hello(client: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while matches!(sni::parse(&buf[..filled]), ClientHello::Incomplete { needed } if needed <= buf.len())
    {
        let n = client.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// One passthrough connection, from accept to close; `Err` names why it was
/// closed without reaching a backend.
async fn serve(
    mut client: TcpStream,
    table: &ArcSwap<SocketConfig>,
    shared: &Shared,
) -> Result<(), &'static str> {
    let mut hello = vec![0u8; sni::MAX_HELLO_BYTES];
    let filled =
        match tokio::time::timeout(HELLO_TIMEOUT, read_hello(&mut client, &mut hello)).await {
            Ok(Ok(filled)) => filled,
            Ok(Err(_)) => return Err("read_error"),
            Err(_) => return Err("hello_timeout"),
        };
    let hello = &hello[..filled];
    let server_name = match sni::parse(hello) {
        ClientHello::Sni(name) => name,
        ClientHello::NoSni => return Err("no_sni"),
        ClientHello::Incomplete { .. } => return Err("incomplete_hello"),
        ClientHello::Malformed(why) => return Err(why.name()),
    };
    let config = table.load_full();
    let Some(route) = config.table.find(server_name) else {
        return Err("unknown_sni");
    };
    let Some(backend_addr) = sni_table::choose_backend(&route.backends) else {
        return Err("no_backend");
    };
    let mut backend =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend_addr)).await {
            Ok(Ok(backend)) => backend,
            _ => return Err("backend_unreachable"),
        };
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let route_id = {
        let mut stats = shared.stats.lock().expect("stats lock");
        *stats.connections.entry(route.route.clone()).or_default() += 1;
        stats.route_ids.get(&route.route)
    };
    if route.terminate {
        let Some(acceptor) = &config.terminate else {
            return Err("no_certificate");
        };
        // The hello was read already: the TLS server reads it again from the front.
        let client = crate::prefixed::Prefixed::new(hello.to_vec().into(), client);
        let Ok(Ok(mut tls)) = tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(client)).await
        else {
            return Ok(()); // The client gave up on the handshake.
        };
        let copied = match route.backend_tls.get(&backend_addr) {
            None => tokio::io::copy_bidirectional(&mut tls, &mut backend)
                .await
                .unwrap_or_default(),
            Some(policy) => {
                let Some(mut backend) = backend_tls_connect(policy, backend).await else {
                    return Err("backend_tls_failed");
                };
                tokio::io::copy_bidirectional(&mut tls, &mut backend)
                    .await
                    .unwrap_or_default()
            }
        };
        let mut stats = shared.stats.lock().expect("stats lock");
        let total = stats.copied.entry(route.route.clone()).or_default();
        total.0 += copied.0;
        total.1 += copied.1;
        return Ok(());
    }

    let spliced = match (&shared.splice, route_id) {
        (Some((splice, watch)), Some(id)) => match splice.splice(&client, &backend, id) {
            Ok(spliced) => Some((spliced, watch)),
            Err(error) => {
                tracing::debug!(%error, "splice failed: copying this connection");
                None
            }
        },
        _ => None,
    };
    if backend.write_all(hello).await.is_err() {
        return Ok(());
    }
    let copied = match spliced {
        Some((entries, watch)) => {
            // Out of tokio's reactor: registered there, every segment the
            // kernel redirects would wake it, with nothing to read.
            let (Ok(client), Ok(backend)) = (client.into_std(), backend.into_std()) else {
                return Ok(());
            };
            watch_spliced(&client, &backend, &entries, watch, hello.len() as u64).await
        }
        None => tokio::io::copy_bidirectional(&mut client, &mut backend)
            .await
            .unwrap_or_default(),
    };
    let copied = (copied.0 + hello.len() as u64, copied.1);
    let mut stats = shared.stats.lock().expect("stats lock");
    let total = stats.copied.entry(route.route.clone()).or_default();
    total.0 += copied.0;
    total.1 += copied.1;
    Ok(())
}

/// TLS to a backend a BackendTLSPolicy governs (TLSRoute Terminate re-encrypts).
async fn backend_tls_connect(
    policy: &crate::model::BackendTls,
    backend: TcpStream,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = match crate::proxy::upstream_tls::client_config(policy) {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(%error, "no TLS client configuration for the backend");
            return None;
        }
    };
    let name = rustls_pki_types::ServerName::try_from(policy.server_name.clone()).ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(HELLO_TIMEOUT, connector.connect(name, backend)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake with the backend failed");
            None
        }
        Err(_) => None,
    }
}

/// Waits for both directions of a spliced pair to end, passing each end of
/// stream on (half-close) and copying any bytes that reached userspace
/// anyway (sent before the pair was in the map). Returns those bytes' counts.
async fn watch_spliced(
    client: &std::net::TcpStream,
    backend: &std::net::TcpStream,
    spliced: &kernel_splice::Spliced<'_>,
    watch: &Arc<CloseWatch>,
    hello_len: u64,
) -> (u64, u64) {
    use std::os::fd::AsRawFd as _;
    let mut copied = (0u64, 0u64);
    let (Ok(client_watch), Ok(backend_watch)) = (
        watch.watch(client.as_raw_fd()),
        watch.watch(backend.as_raw_fd()),
    ) else {
        return copied;
    };
    let (mut client_open, mut backend_open) = (true, true);
    while client_open || backend_open {
        tokio::select! {
            () = client_watch.event(), if client_open => {
                match drain(client, backend, &mut copied.0).await {
                    Drained::Open => {}
                    Drained::Eof => {
                        client_open = false;
                        let written = hello_len + copied.0;
                        wait_queued(backend, || written + spliced.redirected().0).await;
                        let _ = backend.shutdown(std::net::Shutdown::Write);
                    }
                    Drained::Failed => break,
                }
            }
            () = backend_watch.event(), if backend_open => {
                match drain(backend, client, &mut copied.1).await {
                    Drained::Open => {}
                    Drained::Eof => {
                        backend_open = false;
                        let written = copied.1;
                        wait_queued(client, || written + spliced.redirected().1).await;
                        let _ = client.shutdown(std::net::Shutdown::Write);
                    }
                    Drained::Failed => break,
                }
            }
        }
    }
    copied
}

enum Drained {
    Open,
    Eof,
    Failed,
}

/// Reads what `from` holds (normally nothing: the kernel moved it), copying
/// it to `to`, until it would block or ends. Both sockets are non-blocking.
async fn drain(from: &std::net::TcpStream, to: &std::net::TcpStream, copied: &mut u64) -> Drained {
    use std::io::Read as _;
    let mut scratch = [0u8; 4096];
    // Bounded: a socket that keeps delivering to userspace is copied in
    // rounds, between which the other direction gets its turn.
    for _ in 0..256 {
        match (&*from).read(&mut scratch) {
            Ok(0) => return Drained::Eof,
            Ok(n) => {
                *copied += n as u64;
                if write_all_nonblocking(to, &scratch[..n]).await.is_err() {
                    return Drained::Failed;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Woken with nothing to read: an error the kernel reported on
                // the socket (e.g. EPIPE when a redirect to it failed). It
                // stays pending, and EPOLLERR with it, until taken.
                return match from.take_error() {
                    Ok(None) => Drained::Open,
                    _ => Drained::Failed,
                };
            }
            Err(_) => return Drained::Failed,
        }
    }
    Drained::Open
}

/// Writes all of `bytes` to a non-blocking socket, pausing while it is full
/// (for at most `FLUSH_TIMEOUT`).
async fn write_all_nonblocking(to: &std::net::TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
    while !bytes.is_empty() {
        match (&*to).write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The longest the agent holds back an end of stream for spliced bytes.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until every byte meant for `socket` (`expected()`) is in its send
/// queue. The kernel hands redirected bytes to the peer from a work queue, so
/// a FIN sent at once could overtake them and cut the stream short.
async fn wait_queued(socket: &std::net::TcpStream, expected: impl Fn() -> u64) {
    let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
    let mut pause = Duration::from_micros(200);
    while tokio::time::Instant::now() < deadline {
        match written_to(socket) {
            Ok(written) if written < expected() => {}
            _ => return,
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    tracing::warn!("spliced bytes not flushed in time: closing anyway");
}

/// Bytes ever put in a TCP socket's send queue: acknowledged (TCP_INFO) plus
/// still queued (SIOCOUTQ).
fn written_to(socket: &std::net::TcpStream) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let fd = socket.as_raw_fd();
    // SAFETY: tcp_info is plain data; the kernel writes at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd, pointer and length for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.tcpi_bytes_acked + u64::try_from(queued).unwrap_or(0))
}

struct PassthroughCollector {
    passthrough: Arc<Passthrough>,
}

impl std::fmt::Debug for PassthroughCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PassthroughCollector")
    }
}

fn route_labels(route: &RouteRef) -> [(&'static str, String); 3] {
    [
        ("namespace", route.namespace.to_string()),
        ("name", route.name.to_string()),
        ("rule", route.rule.to_string()),
    ]
}

impl Collector for PassthroughCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &self.passthrough.shared;
        let kernel = shared.splice.is_some();
        let mut metric = encoder.encode_descriptor(
            "tls_passthrough_splice",
            "How TLS passthrough moves bytes: 1 on the mode in use (kernel: sockmap, copy: userspace)",
            None,
            MetricType::Gauge,
        )?;
        for (mode, on) in [("kernel", kernel), ("copy", !kernel)] {
            ConstGauge::new(i64::from(on)).encode(metric.encode_family(&[("mode", mode)])?)?;
        }
        let (sockets, peers) = self.passthrough.splice_entries();
        let mut metric = encoder.encode_descriptor(
            "tls_passthrough_splice_entries",
            "Entries in the splice maps (two per spliced connection), counted in the kernel's maps",
            None,
            MetricType::Gauge,
        )?;
        for (map, count) in [("sockets", sockets), ("peers", peers)] {
            ConstGauge::new(count as i64).encode(metric.encode_family(&[("map", map)])?)?;
        }
        let stats = shared.stats.lock().expect("stats lock");
        let mut metric = encoder.encode_descriptor(
            "tls_passthrough_rejected",
            "Connections closed before any backend was contacted, by listener and reason",
            None,
            MetricType::Counter,
        )?;
        for ((listener, reason), count) in &stats.rejected {
            let labels = [
                ("listener", listener.to_string()),
                ("reason", reason.to_string()),
            ];
            ConstCounter::new(*count).encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "tls_route_connections",
            "Connections sent to a TLSRoute's backends",
            None,
            MetricType::Counter,
        )?;
        for (route, count) in &stats.connections {
            ConstCounter::new(*count).encode(metric.encode_family(&route_labels(route))?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "tls_route_bytes",
            "Bytes of a TLSRoute's connections by direction (spliced bytes counted by the kernel)",
            None,
            MetricType::Counter,
        )?;
        for (route, id) in stats.route_ids.iter() {
            let (mut to_backend, mut to_client) =
                stats.copied.get(route).copied().unwrap_or_default();
            if let Some((splice, _)) = &shared.splice {
                let (b, c) = splice.route_bytes(id);
                to_backend += b;
                to_client += c;
            }
            for (direction, bytes) in [("to_backend", to_backend), ("to_client", to_client)] {
                let [a, b, c] = route_labels(route);
                let labels = [a, b, c, ("direction", direction.to_string())];
                ConstCounter::new(bytes).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
