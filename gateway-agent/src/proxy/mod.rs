//! The L7 data plane: a hyper proxy serving HTTPRoute and GRPCRoute rules.
//! One socket per listener address; its routing table is swapped atomically
//! on reload, so in-flight requests finish on the table they started with.
//! Per request: match (route_table), redirect, rewrite, header filters,
//! mirrors, then the chosen backend over HTTP/1.1 or h2c within the rule's
//! timeouts; response header filters on the way back.

mod filters;
mod head_timeout;
mod http1_pool;
mod http1_server;
mod mirror;
mod request_metrics;
mod retry;
pub(crate) mod route_table;
mod serve;
pub(crate) mod tls;
mod upstream;
pub(crate) mod upstream_tls;
mod workers;

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use futures::FutureExt as _;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use workers::Workers;

use crate::metrics::ProxyMetrics;
use crate::model::{
    BackendProtocol, ENDPOINT_WEIGHT_SCALE, HttpBackend, HttpFilters, HttpListener, HttpRule,
};
use head_timeout::{Exchanges, HeadTimeout, ServedBody};
use request_metrics::RequestMetrics;
pub use route_table::{RequestView, RouteTable};
use upstream::Upstream;

/// Why a body failed: hyper's error for a client's body, an I/O error or a
/// framing error for a backend's.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// Slow clients must send their request headers within this time (plain
/// HTTP/1.1 connections: within 1.5 times it, `head_timeout`). Idle
/// keep-alive connections close after it too.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Limits on what a client may send: more headers or a larger head than this
/// is answered 431 (HTTP/1.1) or refused (HTTP/2), before any routing. The
/// limit of 100 headers per HTTP/1.1 request is hyper's default, left unset:
/// setting it makes hyper allocate and fill two 100-entry arrays per request
/// instead of using uninitialised ones on the stack.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_CONCURRENT_STREAMS: u32 = 256;

struct Bound {
    table: Arc<ArcSwap<RouteTable>>,
    /// Set on HTTPS sockets: the TLS acceptor with the listeners' certificates.
    tls: Arc<ArcSwapOption<tokio_rustls::TlsAcceptor>>,
    /// The accept loop of each worker.
    accept: Vec<JoinHandle<()>>,
    /// What the table and acceptor were built from: a listener with the same
    /// rules (the same Arc: translate reuses it when they did not change),
    /// certificates and client validation keeps them.
    served: HttpListener,
}

impl Bound {
    fn serves(&self, listener: &HttpListener) -> bool {
        Arc::ptr_eq(&self.served.rules, &listener.rules)
            && self.served.certificates == listener.certificates
            && self.served.client_validation == listener.client_validation
    }
}

/// What every connection of every listener shares.
struct Shared {
    /// Every served connection holds a receiver, so that a drain can ask
    /// them all to finish (idle keep-alive connections close at once, busy
    /// ones after their in-flight requests) and wait until they have. None
    /// once draining has begun.
    drain: Mutex<Option<watch::Sender<()>>>,
    metrics: Arc<ProxyMetrics>,
    /// One `access_log` line per request when set.
    access_log: bool,
}

pub struct Proxy {
    bound: Mutex<HashMap<SocketAddr, Bound>>,
    shared: Arc<Shared>,
    workers: Workers,
}

impl Default for Proxy {
    fn default() -> Self {
        Self::new(Arc::default(), false)
    }
}

impl Proxy {
    /// A proxy counting into `metrics`, logging each request when `access_log`.
    pub fn new(metrics: Arc<ProxyMetrics>, access_log: bool) -> Self {
        Self {
            bound: Mutex::new(HashMap::new()),
            shared: Arc::new(Shared {
                drain: Mutex::new(Some(watch::channel(()).0)),
                metrics,
                access_log,
            }),
            workers: Workers::start(),
        }
    }

    /// Serves `listeners`: binds new addresses, swaps tables of existing ones,
    /// stops accepting on removed ones (their open connections finish).
    /// Returns the addresses that could not be bound, with why.
    pub async fn apply(&self, listeners: &[HttpListener]) -> Vec<(SocketAddr, std::io::Error)> {
        let mut failures = Vec::new();
        let mut fresh = Vec::new();
        for listener in listeners {
            let unchanged = self
                .bound
                .lock()
                .expect("lock")
                .get(&listener.bind)
                .is_some_and(|b| b.serves(listener));
            if unchanged {
                continue;
            }
            let table = RouteTable::new(listener.rules.clone()).with_listener_hostnames(
                listener
                    .certificates
                    .iter()
                    .filter_map(|c| c.hostname.as_deref()),
            );
            let acceptor = match tls::acceptor_with_client_validation(
                &listener.certificates,
                listener.client_validation.as_ref(),
            ) {
                Ok(acceptor) => acceptor.map(Arc::new),
                Err(e) => {
                    failures.push((listener.bind, std::io::Error::other(e)));
                    continue;
                }
            };
            let existing = self
                .bound
                .lock()
                .expect("lock")
                .get(&listener.bind)
                .map(|b| (b.table.clone(), b.tls.clone()));
            match existing {
                Some((current, current_tls)) => {
                    current.store(Arc::new(table));
                    current_tls.store(acceptor);
                    if let Some(bound) = self.bound.lock().expect("lock").get_mut(&listener.bind) {
                        bound.served = listener.clone();
                    }
                }
                None => match self.workers.bind(listener.bind) {
                    Ok(sockets) => {
                        let table = Arc::new(ArcSwap::from_pointee(table));
                        let tls = Arc::new(ArcSwapOption::new(acceptor));
                        let accept = sockets
                            .into_iter()
                            .zip(&self.workers.all)
                            .map(|(socket, worker)| {
                                worker.runtime.spawn(accept_loop(
                                    socket,
                                    table.clone(),
                                    tls.clone(),
                                    self.shared.clone(),
                                    worker.upstream.clone(),
                                    worker.head_timeout.clone(),
                                ))
                            })
                            .collect();
                        fresh.push((
                            listener.bind,
                            Bound {
                                table,
                                tls,
                                accept,
                                served: listener.clone(),
                            },
                        ));
                    }
                    Err(e) => failures.push((listener.bind, e)),
                },
            }
        }
        let mut bound = self.bound.lock().expect("lock");
        bound.extend(fresh);
        bound.retain(|addr, b| {
            let keep = listeners.iter().any(|l| l.bind == *addr);
            if !keep {
                b.accept.iter().for_each(JoinHandle::abort);
                tracing::info!(%addr, "HTTP listener removed");
            }
            keep
        });
        failures
    }
}

impl Proxy {
    /// Shutdown: stops accepting, closes idle keep-alive connections, and
    /// waits until the connections with requests in flight have finished,
    /// or until `deadline`. Returns whether every connection finished.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> bool {
        self.apply(&[]).await;
        let Some(drain) = self.shared.drain.lock().expect("lock").take() else {
            return true;
        };
        let open = drain.receiver_count();
        tracing::info!(open, "draining HTTP connections");
        let _ = drain.send(());
        tokio::time::timeout_at(deadline, drain.closed())
            .await
            .is_ok()
    }
}

async fn accept_loop(
    socket: TcpListener,
    table: Arc<ArcSwap<RouteTable>>,
    tls: Arc<ArcSwapOption<tokio_rustls::TlsAcceptor>>,
    shared: Arc<Shared>,
    upstream: Arc<Upstream>,
    head_timeout: Arc<HeadTimeout>,
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
        let _ = stream.set_nodelay(true);
        let listener_port = stream.local_addr().map_or(0, |a| a.port());
        let acceptor = tls.load_full();
        let Ok(peer_ip) = HeaderValue::from_str(&peer.ip().to_string()) else {
            continue;
        };
        let mut service = ProxyService {
            table: table.clone(),
            shared: shared.clone(),
            upstream: upstream.clone(),
            connection: Connection {
                peer,
                peer_ip,
                listener_port,
                scheme: if acceptor.is_some() { "https" } else { "http" },
                sni: None,
                metrics: RequestMetrics::default(),
            },
            exchanges: None,
        };
        let head_timeout = head_timeout.clone();
        tokio::spawn(async move {
            let metrics = service.shared.metrics.clone();
            match acceptor {
                None => {
                    // Plain: the sweep's head timeout runs from the accept.
                    let exchanges = head_timeout.watch();
                    service.exchanges = Some(exchanges.clone());
                    metrics.active_connections.inc();
                    let served = serve::plain(stream, service, exchanges.clone());
                    if head_timeout::serve_until_expired(exchanges, served).await {
                        tracing::debug!(%peer, "no request head in time: connection closed");
                    }
                }
                Some(acceptor) => {
                    let Some((stream, sni)) = tls::accept(Some(acceptor), stream).await else {
                        return;
                    };
                    service.connection.sni = sni;
                    metrics.active_connections.inc();
                    serve::auto(stream, service).await;
                }
            }
            metrics.active_connections.dec();
        });
    }
}

/// Answers the requests of one client connection.
struct ProxyService {
    table: Arc<ArcSwap<RouteTable>>,
    shared: Arc<Shared>,
    upstream: Arc<Upstream>,
    connection: Connection,
    /// Counts the exchanges of a plain HTTP/1.1 connection for the sweep.
    exchanges: Option<Arc<Exchanges>>,
}

type ServedFuture = Pin<Box<dyn Future<Output = Result<Response<ServedBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ServedBody>;
    type Error = Infallible;
    type Future = ServedFuture;

    fn call(&self, req: Request<Incoming>) -> ServedFuture {
        // Boxed once here: hyper and tokio move the future whole (HTTP/2:
        // about ten times per request, into the stream's task and out;
        // HTTP/1.1: twice), a copy of kilobytes each.
        // hyper's server writes the `HeaderMap` only.
        Box::pin(self.exchange(req.map(request_body)).map(|mut response| {
            http1_pool::restore_header_map(&mut response);
            Ok(response)
        }))
    }
}

impl ProxyService {
    /// The response to one request of this connection: what hyper's
    /// connections (through `call`) and the inline HTTP/1.1 server await.
    fn exchange(
        &self,
        req: Request<ProxyBody>,
    ) -> impl Future<Output = Response<ServedBody>> + Send + 'static {
        if let Some(exchanges) = &self.exchanges {
            exchanges.started();
        }
        let exchanges = self.exchanges.clone();
        // Each request takes the table current when it starts. No async
        // block around it: one would hold a second copy of the request and
        // these handles.
        handle(
            req,
            self.table.load_full(),
            self.shared.clone(),
            self.upstream.clone(),
            self.connection.clone(),
        )
        .map(move |response| response.map(|body| ServedBody::new(body, exchanges)))
    }
}

/// What a request's handling needs to know about its connection.
#[derive(Clone)]
struct Connection {
    peer: SocketAddr,
    /// The peer's address as an `X-Forwarded-For` value, made once.
    peer_ip: HeaderValue,
    /// The port the client connected to, the default port of redirects.
    listener_port: u16,
    /// "http" or "https", as the client sees this listener.
    scheme: &'static str,
    /// The server name the client sent in its TLS handshake.
    sni: Option<Arc<str>>,
    /// The metric handles of the rule its last request matched.
    metrics: RequestMetrics,
}

fn status(code: StatusCode) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("{code}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response
}

/// The proxy's own error answer to a gRPC request: the HTTP status, plus the
/// gRPC status it maps to (as grpc-go maps HTTP statuses) in the headers of a
/// trailers-only response, so that every gRPC client reads the same code.
fn grpc_status(code: StatusCode) -> Response<ProxyBody> {
    let grpc_code = match code.as_u16() {
        400 => "13",
        401 => "16",
        403 => "7",
        404 => "12",
        429 | 502..=504 => "14",
        _ => "2",
    };
    let mut response = Response::new(empty_body());
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static(grpc_code));
    if let Ok(message) = HeaderValue::from_str(code.canonical_reason().unwrap_or_default()) {
        headers.insert("grpc-message", message);
    }
    response
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn empty_body() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A client's request body as forwarded. An empty one is boxed without an
/// allocation (most requests have none).
fn request_body(body: Incoming) -> ProxyBody {
    if body.is_end_stream() {
        empty_body()
    } else {
        body.map_err(BoxError::from).boxed()
    }
}

/// Chooses a backend by weight; `Err` is the status to answer instead: 500
/// for the share of unresolved backendRefs, 503 when no endpoint is ready.
fn choose_backend(rule: &HttpRule) -> Result<&HttpBackend, StatusCode> {
    let invalid = u64::from(rule.invalid_weight) * ENDPOINT_WEIGHT_SCALE;
    let total: u64 = rule.backends.iter().map(|b| b.weight).sum::<u64>() + invalid;
    if total == 0 {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let mut pick = fastrand::u64(0..total);
    for backend in rule.backends.iter() {
        if pick < backend.weight {
            return Ok(backend);
        }
        pick -= backend.weight;
    }
    Err(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Where a retry of a request sent to `chosen` may go, with the weights: the
/// rule's endpoints that differ from it only by address (those of its
/// backendRef, and of any other backendRef with the same protocol, TLS and
/// filters), so that the request built for `chosen` fits them unchanged.
fn endpoints_like(rule: &HttpRule, chosen: &HttpBackend) -> Vec<(SocketAddr, u64)> {
    rule.backends
        .iter()
        .filter(|b| {
            b.protocol == chosen.protocol && b.tls == chosen.tls && b.filters == chosen.filters
        })
        .map(|b| (b.addr, b.weight))
        .collect()
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one hop and must not be forwarded (RFC 9110 7.6.1),
/// besides those `Connection` lists. `Connection` comes first.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
];

/// The index in `HOP_BY_HOP` of `name`, if it is one. Names are told
/// apart by length first: most have a length no hop-by-hop name has, and
/// the others are compared with one or two candidates, not all nine.
/// Case-insensitive: names straight from httparse are compared too.
fn hop_by_hop_index(name: &[u8]) -> Option<usize> {
    let candidates: &[usize] = match name.len() {
        2 => &[3],
        7 => &[4, 6],
        10 => &[0, 7],
        16 => &[8],
        17 => &[5],
        18 => &[1],
        19 => &[2],
        _ => return None,
    };
    candidates
        .iter()
        .copied()
        .find(|&i| token_eq_lowercase(name, HOP_BY_HOP[i].as_str().as_bytes()))
}

/// Whether the header name `token` is `lower` (lower-case letters and `-`)
/// in any case. A token holds no byte that `| 0x20` turns into a letter or
/// `-` but the letter's two cases; cheaper than `eq_ignore_ascii_case`.
fn token_eq_lowercase(token: &[u8], lower: &[u8]) -> bool {
    token.len() == lower.len() && token.iter().zip(lower).all(|(t, l)| t | 0x20 == *l)
}

/// A backend's response as forwarded: without hop-by-hop headers, but for
/// a 101's, whose `Upgrade` and `Connection` the client must see.
fn strip_response_hop_by_hop<B>(response: &mut Response<B>) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_by_hop(response.headers_mut(), false);
    }
}

/// Removes the hop-by-hop headers (RFC 9110 7.6.1).
/// `te: trailers` survives towards an HTTP/2 backend: gRPC needs it.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    // One pass over the names finds which are present (usually none, or
    // `Connection: keep-alive` in a response): a removal of each name
    // costs more than comparing parsed names.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str().as_bytes()) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // Names `Connection` lists go too; a listed `TE` is not kept for HTTP/2.
    let mut te_listed = false;
    let mut listed: Vec<HeaderName> = Vec::new();
    if present[0]
        && let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION)
    {
        // Taken out with one lookup. `Connection: keep-alive` or `close`
        // (what backends send) lists nothing.
        for value in entry.remove_entry_mult().1 {
            let bytes = value.as_bytes();
            if bytes.eq_ignore_ascii_case(b"keep-alive") || bytes.eq_ignore_ascii_case(b"close") {
                continue;
            }
            let names = value.to_str().unwrap_or_default().split(',').map(str::trim);
            for name in names {
                te_listed |= name.eq_ignore_ascii_case("te");
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
                    && hop_by_hop_index(name.as_str().as_bytes()).is_none()
                {
                    listed.push(name);
                }
            }
        }
    }
    for name in listed {
        headers.remove(name);
    }
    let te_trailers = present[3]
        && !te_listed
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // `Connection` (index 0) is out already.
    for (name, _) in HOP_BY_HOP
        .iter()
        .zip(present)
        .skip(1)
        .filter(|(_, here)| *here)
    {
        headers.remove(name);
    }
    if keep_te_trailers && te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// A RequestRedirect's answer: no body, the status and `Location` it names.
fn redirect_response(
    set: &HttpFilters,
    rule: &HttpRule,
    connection: &Connection,
    host: &str,
    path: &str,
    query: Option<&str>,
) -> Option<Response<ProxyBody>> {
    let redirect = set.redirect.as_ref()?;
    let path = match &redirect.path {
        Some(modifier) => filters::modify_path(path, &rule.matched.path, modifier),
        None => path.to_string(),
    };
    let location = filters::redirect_location(
        redirect,
        connection.scheme,
        route_table::strip_port(host),
        connection.listener_port,
        &path,
        query,
    );
    let mut response = Response::new(empty_body());
    *response.status_mut() = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND);
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
            Some(response)
        }
        Err(_) => Some(status(StatusCode::INTERNAL_SERVER_ERROR)),
    }
}

/// Applies a URLRewrite to the path and Host of a request.
fn rewrite<'a>(
    set: &'a HttpFilters,
    rule: &HttpRule,
    path: &mut Cow<'a, str>,
    host: &mut Cow<'a, str>,
) {
    let Some(rewrite) = &set.rewrite else {
        return;
    };
    if let Some(modifier) = &rewrite.path {
        *path = Cow::Owned(filters::modify_path(path, &rule.matched.path, modifier));
    }
    if let Some(hostname) = &rewrite.hostname {
        *host = Cow::Borrowed(hostname);
    }
}

/// Copies bytes both ways between an upgraded client connection and the
/// upgraded backend connection until either side closes.
async fn splice_upgraded(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) {
    match tokio::try_join!(downstream, upstream) {
        Ok((client, backend)) => {
            let mut client = TokioIo::new(client);
            let mut backend = TokioIo::new(backend);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

/// What `forward` learnt about a request, for its metrics and access log.
#[derive(Default)]
struct Outcome<'t> {
    rule: Option<&'t HttpRule>,
    backend: Option<SocketAddr>,
    /// The backend connection could not be opened.
    connect_error: bool,
}

/// The request line of the access log, taken before the request is consumed.
struct AccessLogRequest {
    method: hyper::Method,
    host: String,
    path: String,
    version: hyper::Version,
}

async fn handle(
    req: Request<ProxyBody>,
    table: Arc<RouteTable>,
    shared: Arc<Shared>,
    upstream: Arc<Upstream>,
    connection: Connection,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let grpc = is_grpc(req.headers());
    let logged = shared.access_log.then(|| AccessLogRequest {
        method: req.method().clone(),
        host: req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default()
            .to_string(),
        path: req.uri().path().to_string(),
        version: req.version(),
    });
    let mut outcome = Outcome::default();
    let response = match forward(req, &table, &upstream, &connection, &mut outcome).await {
        Ok(response) => response,
        Err(code) if grpc => grpc_status(code),
        Err(code) => status(code),
    };
    let elapsed = started.elapsed();
    connection.metrics.record(
        &shared.metrics,
        &table,
        outcome.rule,
        response.status().as_u16(),
        elapsed,
        outcome.connect_error,
    );
    if let Some(request) = logged {
        tracing::info!(
            target: "access_log",
            peer = %connection.peer,
            method = %request.method,
            host = %request.host,
            path = %request.path,
            version = ?request.version,
            status = response.status().as_u16(),
            route = outcome.rule.map(|r| r.route.to_string()),
            backend = outcome.backend.map(|b| b.to_string()),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            "request"
        );
    }
    response
}

/// The response to `req`, or the status the proxy answers itself.
async fn forward<'t>(
    req: Request<ProxyBody>,
    table: &'t RouteTable,
    upstream: &Upstream,
    connection: &Connection,
    outcome: &mut Outcome<'t>,
) -> Result<Response<ProxyBody>, StatusCode> {
    let (mut head, body) = req.into_parts();
    // Copies of the URI and Host that share their bytes with the request
    // (hyper parses both into shared buffers), so that host, path and query
    // are borrowed, not allocated, while the head changes.
    let uri = head.uri.clone();
    let host_value = head.headers.get(header::HOST).cloned();
    let host = host_value
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let request_path = uri.path();
    let query = uri.query();
    let view = RequestView {
        host,
        path: request_path,
        query,
        method: head.method.as_str(),
        headers: &head.headers,
    };
    if let Some(sni) = &connection.sni
        && table.misdirected(sni, host)
    {
        return Err(StatusCode::MISDIRECTED_REQUEST);
    }
    let Some(rule) = table.find(&view) else {
        return Err(StatusCode::NOT_FOUND);
    };
    outcome.rule = Some(rule);
    // The Origin of a cross-origin request the rule's CORS filter allows.
    let cors = rule.filters.cors.as_ref().and_then(|cors| {
        let origin = head.headers.get(header::ORIGIN)?.to_str().ok()?;
        filters::cors_origin_allowed(cors, origin).then(|| (cors, origin.to_string()))
    });
    if rule.filters.cors.is_some()
        && head.method == hyper::Method::OPTIONS
        && let Some(requested) = head.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        // A preflight: the gateway answers it. A disallowed origin gets no
        // CORS headers, which the browser reads as a refusal.
        let mut response = Response::new(empty_body());
        *response.status_mut() = StatusCode::NO_CONTENT;
        if let Some((cors, origin)) = &cors {
            filters::cors_preflight_headers(
                cors,
                origin,
                requested.to_str().unwrap_or_default(),
                head.headers
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .and_then(|v| v.to_str().ok()),
                response.headers_mut(),
            );
        }
        return Ok(response);
    }
    if let Some(response) =
        redirect_response(&rule.filters, rule, connection, host, request_path, query)
    {
        return Ok(response);
    }
    let backend = choose_backend(rule)?;
    outcome.backend = Some(backend.addr);
    if let Some(response) = redirect_response(
        &backend.filters,
        rule,
        connection,
        host,
        request_path,
        query,
    ) {
        return Ok(response);
    }

    // Filters of the rule, then of the backendRef.
    let mut path = Cow::Borrowed(request_path);
    let mut upstream_host = Cow::Borrowed(host);
    for set in [&rule.filters, &backend.filters] {
        rewrite(set, rule, &mut path, &mut upstream_host);
    }
    let path_unchanged = path == request_path;
    let path_and_query = match query {
        Some(q) => Cow::Owned(format!("{path}?{q}")),
        None => path,
    };
    let h2 = backend.protocol == BackendProtocol::H2c;
    // An HTTP/1.1 Upgrade (WebSocket) is passed on to an HTTP/1.1 backend;
    // once it answers 101 the two connections are spliced.
    let upgrade = match head.headers.get(header::UPGRADE) {
        Some(protocol) if !h2 && head.version == hyper::Version::HTTP_11 => {
            let protocol = protocol.clone();
            head.extensions
                .remove::<hyper::upgrade::OnUpgrade>()
                .map(|on_upgrade| (protocol, on_upgrade))
        }
        _ => None,
    };
    let headers = &mut head.headers;
    strip_hop_by_hop(headers, h2);
    if let Some((protocol, _)) = &upgrade {
        headers.insert(header::UPGRADE, protocol.clone());
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // The client's Host header, unless it was missing (HTTP/2 carries the
    // authority instead) or rewritten: then the host the request goes with.
    let host_header = headers
        .get(header::HOST)
        .filter(|v| v.as_bytes() == host.as_bytes())
        .cloned();
    if (host_header.is_none() || upstream_host != host)
        && let Ok(value) = HeaderValue::from_str(&upstream_host)
        && !upstream_host.is_empty()
    {
        headers.insert(header::HOST, value);
    }
    // Which X-Forwarded-* the client sent, from one pass over the names
    // (usually none): a lookup of each would hash its name.
    let (sent_for, sent_host) = headers.keys().fold((false, false), |(f, h), name| {
        (f || name == X_FORWARDED_FOR, h || name == X_FORWARDED_HOST)
    });
    let previous_for = sent_for
        .then(|| headers.get(&X_FORWARDED_FOR))
        .flatten()
        .and_then(|v| v.to_str().ok());
    let forwarded_for = match previous_for {
        Some(previous) => HeaderValue::from_str(&format!("{previous}, {}", connection.peer.ip())),
        None => Ok(connection.peer_ip.clone()),
    };
    if let Ok(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(connection.scheme),
    );
    if !sent_host
        && !host.is_empty()
        && let Some(value) = host_header.or_else(|| HeaderValue::from_str(host).ok())
    {
        headers.insert(X_FORWARDED_HOST, value);
    }
    for set in [&rule.filters, &backend.filters] {
        if let Some(modifier) = &set.request_headers {
            filters::modify_headers(headers, modifier);
        }
    }
    // Origin-form: each backend client addresses it to its endpoint. The
    // client's own path-and-query when no filter rewrote it.
    let unchanged = path_unchanged
        .then(|| uri.path_and_query().cloned())
        .flatten();
    head.uri = match unchanged {
        Some(original) => hyper::Uri::from(original),
        None => match hyper::Uri::try_from(if path_and_query.is_empty() {
            "/"
        } else {
            &path_and_query
        }) {
            Ok(uri) => uri,
            Err(_) => return Err(StatusCode::BAD_REQUEST),
        },
    };
    head.version = if h2 {
        hyper::Version::HTTP_2
    } else {
        hyper::Version::HTTP_11
    };
    // A rule with `retry` keeps a copy of a small body to send it again;
    // upgrades and large or unsized bodies go once.
    let (body, replay) = match rule.retry.as_deref() {
        Some(policy) if upgrade.is_none() => match Box::pin(retry::buffer_if_small(body)).await? {
            Ok(bytes) => {
                // Boxed, as the timeouts below: only rules with a retry
                // pay for the room every request's future would carry.
                let replay = Box::new(retry::Replayable::new(&head, bytes));
                (
                    Full::new(replay.body())
                        .map_err(|never| match never {})
                        .boxed(),
                    Some((policy, replay)),
                )
            }
            Err(body) => (body, None),
        },
        _ => (body, None),
    };
    let has_body = !body.is_end_stream();
    let mut copies = Vec::new();
    for set in [&rule.filters, &backend.filters] {
        copies.extend(mirror::start(
            &set.mirrors,
            &head,
            &path_and_query,
            has_body,
            upstream,
        ));
    }
    let body = if copies.is_empty() {
        body
    } else {
        mirror::TeeBody::new(body, copies).boxed()
    };
    let request = Request::from_parts(head, body);
    // A backend a BackendTLSPolicy governs is reached through its TLS client.
    let client = match upstream.client(backend.protocol, backend.tls.as_ref()) {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(backend = %backend.addr, error = %e, "no TLS client for the backend");
            return Err(StatusCode::BAD_GATEWAY);
        }
    };
    // `backendRequest` bounds each attempt, `request` all of them together.
    let backend_timeout = rule.timeouts.backend_request;
    // Retries may go to the other endpoints of the chosen backendRef.
    let mut endpoints = replay
        .as_ref()
        .map(|_| retry::Endpoints::new(backend.addr, endpoints_like(rule, backend)));
    let replay = replay
        .as_ref()
        .zip(endpoints.as_mut())
        .map(|((policy, replay), endpoints)| (*policy, &**replay, endpoints));
    let sent = retry::send(&client, backend.addr, replay, request, backend_timeout);
    let result = match rule.timeouts.request {
        Some(limit) => match Box::pin(tokio::time::timeout(limit, sent)).await {
            Ok(result) => result,
            Err(_) => return Err(StatusCode::GATEWAY_TIMEOUT),
        },
        None => sent.await,
    };
    if let Some(endpoints) = &endpoints {
        outcome.backend = Some(endpoints.last());
    }
    match result {
        Ok(mut response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let Some((_, downstream)) = upgrade else {
                return Err(StatusCode::BAD_GATEWAY); // 101 to a request that asked for none
            };
            let upstream_io = hyper::upgrade::on(&mut response);
            tokio::spawn(splice_upgraded(downstream, upstream_io));
            Ok(response)
        }
        Ok(mut response) => {
            // Hop-by-hop headers are gone: every backend client removes them.
            // Filters change the map: the backend's fields go into it first.
            let filtered = [&backend.filters, &rule.filters]
                .iter()
                .any(|set| set.response_headers.is_some());
            if filtered || cors.is_some() {
                http1_pool::restore_header_map(&mut response);
            }
            let (mut parts, body) = response.into_parts();
            for set in [&backend.filters, &rule.filters] {
                if let Some(modifier) = &set.response_headers {
                    filters::modify_headers(&mut parts.headers, modifier);
                }
            }
            if let Some((cors, origin)) = &cors {
                filters::cors_response_headers(cors, origin, &mut parts.headers);
            }
            Ok(Response::from_parts(parts, body))
        }
        Err(failure) => {
            outcome.connect_error = failure == retry::Failure::Connect;
            tracing::debug!(backend = %backend.addr, ?failure, "upstream request failed");
            Err(failure.status())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HttpAction, HttpMatch, HttpTimeouts, RouteRef};
    use hyper::client::conn::http1;

    pub(super) fn rule(backends: &[(u16, u64)], invalid_weight: u32) -> HttpRule {
        HttpRule {
            route: RouteRef {
                kind: "HTTPRoute",
                namespace: "ns".into(),
                name: "r".into(),
                rule: 0,
            },
            hostnames: Arc::new([]),
            listener_hostname: None,
            matched: Arc::new(HttpMatch::any()),
            action: Arc::new(HttpAction {
                filters: Arc::default(),
                timeouts: HttpTimeouts::default(),
                retry: None,
                backends: backends
                    .iter()
                    .map(|(port, weight)| HttpBackend {
                        addr: SocketAddr::from(([127, 0, 0, 1], *port)),
                        weight: *weight,
                        protocol: BackendProtocol::Http1,
                        tls: None,
                        filters: Arc::default(),
                    })
                    .collect(),
                invalid_weight,
            }),
        }
    }

    #[test]
    fn backends_are_chosen_by_weight_and_invalid_shares_answer_500() {
        let w = ENDPOINT_WEIGHT_SCALE;
        let r = rule(&[(1, 3 * w), (2, w)], 0);
        let picks = 4000;
        let ones = (0..picks)
            .filter(|_| choose_backend(&r).map(|b| b.addr.port()) == Ok(1))
            .count();
        // 3:1 within a wide margin (the expected count is 3000, sd about 27).
        assert!((2800..3200).contains(&ones), "{ones} of {picks}");
        assert_eq!(
            choose_backend(&rule(&[], 1)).map(|b| b.addr),
            Err(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(
            choose_backend(&rule(&[], 0)).map(|b| b.addr),
            Err(StatusCode::SERVICE_UNAVAILABLE)
        );
    }

    #[test]
    fn grpc_errors_carry_the_code_grpc_clients_expect() {
        for (http, grpc) in [
            (StatusCode::NOT_FOUND, "12"),
            (StatusCode::SERVICE_UNAVAILABLE, "14"),
            (StatusCode::GATEWAY_TIMEOUT, "14"),
            (StatusCode::INTERNAL_SERVER_ERROR, "2"),
        ] {
            let response = grpc_status(http);
            assert_eq!(response.status(), http);
            assert_eq!(response.headers()["grpc-status"], grpc);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        }
    }

    #[test]
    fn hop_by_hop_names_are_found_in_any_case() {
        for (name, index) in [
            (&b"Connection"[..], Some(0)),
            (b"KEEP-ALIVE", Some(7)),
            (b"te", Some(3)),
            (b"Transfer-Encoding", Some(5)),
            (b"user-agent", None),
            (b"Connectiom", None),
            (b"connection\r", None),
            (b"x", None),
        ] {
            assert_eq!(
                hop_by_hop_index(name),
                index,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_te_trailers_kept_for_http2() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-end", HeaderValue::from_static("1"));
        let mut http1 = headers.clone();
        strip_hop_by_hop(&mut http1, false);
        assert_eq!(http1.len(), 1, "{http1:?}");
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers[header::TE], "trailers");
        assert!(!headers.contains_key("x-hop"));
        // Every hop-by-hop name goes, repeated `Connection` values too; names
        // of the same lengths that are not hop-by-hop stay.
        let mut all = HeaderMap::new();
        for hop in &HOP_BY_HOP {
            all.append(hop, HeaderValue::from_static("1"));
        }
        all.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        all.append(header::CONNECTION, HeaderValue::from_static("X-Listed"));
        all.insert("x-listed", HeaderValue::from_static("1"));
        let kept = [
            "ab",
            "x-trace",
            "user-agent",
            "x-request-id-abcd",
            "x-forwarded-port1",
        ];
        for name in kept {
            all.insert(name, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut all, true);
        let left: Vec<&str> = all.keys().map(HeaderName::as_str).collect();
        assert_eq!(left.len(), kept.len(), "{left:?}");
        assert!(kept.iter().all(|k| left.contains(k)), "{left:?}");
    }

    /// An HTTP/1.1 backend on 127.0.0.1 answering every request with `name`.
    async fn backend(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(name))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    fn listener(bind: SocketAddr, backend: SocketAddr) -> HttpListener {
        let mut r = rule(&[], 0);
        Arc::make_mut(&mut r.action).backends = Arc::new([HttpBackend {
            addr: backend,
            weight: ENDPOINT_WEIGHT_SCALE,
            protocol: BackendProtocol::Http1,
            tls: None,
            filters: Arc::default(),
        }]);
        HttpListener {
            bind,
            rules: vec![r].into(),
            certificates: Vec::new(),
            client_validation: None,
        }
    }

    #[tokio::test]
    async fn a_drain_waits_for_the_request_in_flight_and_no_longer() {
        // A backend that answers after 300 ms.
        let slow = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let slow_addr = slow.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = slow.accept().await {
                let service = hyper::service::service_fn(|_req| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("slow"))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        let bind = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let proxy = Proxy::default();
        assert!(proxy.apply(&[listener(bind, slow_addr)]).await.is_empty());
        // An idle keep-alive connection, and one with a request in flight.
        let idle = tokio::net::TcpStream::connect(bind).await.expect("connect");
        let (_idle_sender, idle_connection) =
            http1::handshake::<_, Empty<Bytes>>(TokioIo::new(idle))
                .await
                .expect("handshake");
        let idle_closed = tokio::spawn(idle_connection);
        let busy = tokio::net::TcpStream::connect(bind).await.expect("connect");
        let (mut sender, connection) = http1::handshake(TokioIo::new(busy))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let request = Request::builder()
            .uri("/")
            .header(header::HOST, "any.example")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let in_flight = tokio::spawn(sender.send_request(request));
        tokio::time::sleep(Duration::from_millis(100)).await;

        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        assert!(
            proxy.drain(deadline).await,
            "connections left at the deadline"
        );
        let took = started.elapsed();
        // It waited for the slow answer (about 200 ms left), not the 5 s deadline.
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        let response = in_flight.await.expect("task").expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"slow");
        // The idle connection was closed by the proxy (before any request,
        // which the client reads as an incomplete message), and nothing accepts.
        let idle_end = tokio::time::timeout(Duration::from_secs(1), idle_closed)
            .await
            .expect("idle connection closed")
            .expect("task");
        assert!(
            idle_end
                .as_ref()
                .map_or_else(hyper::Error::is_incomplete_message, |()| true),
            "idle connection ended with {idle_end:?}"
        );
        assert!(tokio::net::TcpStream::connect(bind).await.is_err());
    }

    #[tokio::test]
    async fn a_plain_client_that_sends_no_whole_head_in_time_is_disconnected() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            drain: Mutex::new(Some(watch::channel(()).0)),
            metrics: Arc::default(),
            access_log: false,
        });
        // A head timeout of 200 ms: swept every 100 ms, closed in 200–300 ms.
        let accept = tokio::spawn(accept_loop(
            socket,
            Arc::new(ArcSwap::from_pointee(RouteTable::new(
                listener(addr, addr).rules,
            ))),
            Arc::new(ArcSwapOption::empty()),
            shared,
            Arc::new(Upstream::new()),
            HeadTimeout::new(Duration::from_millis(200)),
        ));
        let started = Instant::now();
        let silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: any.exa")
            .await
            .expect("write");
        for mut client in [silent, slow] {
            let mut buf = [0u8; 256];
            let read = tokio::time::timeout(Duration::from_secs(3), client.read(&mut buf))
                .await
                .expect("closed within 3 s");
            // The end of the stream (or a reset), no answer.
            assert!(read.as_ref().map_or(true, |n| *n == 0), "{read:?}");
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        accept.abort();
    }

    #[tokio::test]
    async fn a_kept_alive_connection_picks_up_a_new_table_on_its_next_request() {
        let (a, b) = (backend("backend-a").await, backend("backend-b").await);
        // A free loopback port for the proxy (bound, read, released).
        let bind = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let proxy = Proxy::default();
        assert!(proxy.apply(&[listener(bind, a)]).await.is_empty());

        let stream = tokio::net::TcpStream::connect(bind).await.expect("connect");
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut get = async || get_body(&mut sender, "/").await;
        assert_eq!(get().await, "backend-a");
        // The swap: same socket, new table; the open connection is not closed.
        assert!(proxy.apply(&[listener(bind, b)]).await.is_empty());
        assert_eq!(get().await, "backend-b");
        // Removing the listener stops accepting new connections.
        proxy.apply(&[]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(tokio::net::TcpStream::connect(bind).await.is_err());
    }

    /// The body of a GET of `path` (Host `any.example`) sent on `sender`.
    async fn get_body(sender: &mut http1::SendRequest<Empty<Bytes>>, path: &str) -> String {
        let request = Request::builder()
            .uri(path)
            .header(header::HOST, "any.example")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    /// GETs each of `paths` on one new keep-alive connection to `proxy`,
    /// returning the bodies.
    async fn get_on_one_connection(proxy: SocketAddr, paths: &[&str]) -> Vec<String> {
        let stream = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect");
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut bodies = Vec::new();
        for path in paths {
            bodies.push(get_body(&mut sender, path).await);
        }
        bodies
    }

    #[tokio::test]
    async fn backend_connections_are_kept_across_requests_and_client_connections() {
        use std::sync::atomic::Ordering;
        let (backend, accepted) = http1_pool::tests::backend().await;
        let bind = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let proxy = Proxy::default();
        assert!(proxy.apply(&[listener(bind, backend)]).await.is_empty());
        // One client connection: its requests reuse one backend connection.
        assert_eq!(
            get_on_one_connection(bind, &["/a", "/b", "/c"]).await,
            ["ok", "ok", "ok"]
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Later client connections reuse it from the pool of their worker
        // (each proxy worker has its own pool, and the kernel picks the
        // worker: at most one connection each).
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..4 {
            assert_eq!(get_on_one_connection(bind, &["/d"]).await, ["ok"]);
        }
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        let opened = accepted.load(Ordering::SeqCst) as usize;
        assert!(opened <= workers.min(5), "{opened} backend connections");
        // A backend closing after its answer: the next request gets a new one.
        let before = accepted.load(Ordering::SeqCst);
        assert_eq!(
            get_on_one_connection(bind, &["/close", "/e", "/f"]).await,
            ["ok", "ok", "ok"]
        );
        assert!(accepted.load(Ordering::SeqCst) > before, "{accepted:?}");
    }
}
