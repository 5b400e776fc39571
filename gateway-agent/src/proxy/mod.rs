//! The L7 data plane: a hyper proxy serving HTTPRoute rules. One socket per
//! listener address; its routing table is swapped atomically on reload, so
//! in-flight requests finish on the table they started with.

mod route_table;
pub(crate) mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::model::{ENDPOINT_WEIGHT_SCALE, HttpListener, HttpRule};
pub use route_table::RouteTable;

type ProxyBody = BoxBody<Bytes, hyper::Error>;
type Upstream = Client<HttpConnector, Incoming>;

/// Slow clients must send their request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

struct Bound {
    table: Arc<ArcSwap<RouteTable>>,
    /// Set on HTTPS sockets: the TLS acceptor with the listeners' certificates.
    tls: Arc<ArcSwapOption<tokio_rustls::TlsAcceptor>>,
    accept: JoinHandle<()>,
}

pub struct Proxy {
    bound: Mutex<HashMap<SocketAddr, Bound>>,
    upstream: Upstream,
}

impl Default for Proxy {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let upstream = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self {
            bound: Mutex::new(HashMap::new()),
            upstream,
        }
    }
}

impl Proxy {
    /// Serves `listeners`: binds new addresses, swaps tables of existing ones,
    /// stops accepting on removed ones (their open connections finish).
    /// Returns the addresses that could not be bound, with why.
    pub async fn apply(&self, listeners: &[HttpListener]) -> Vec<(SocketAddr, std::io::Error)> {
        let mut failures = Vec::new();
        let mut fresh = Vec::new();
        for listener in listeners {
            let table = RouteTable::new(listener.rules.clone());
            let acceptor = match tls::acceptor(&listener.certificates) {
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
                }
                None => match bind(listener.bind).await {
                    Ok(socket) => {
                        let table = Arc::new(ArcSwap::from_pointee(table));
                        let tls = Arc::new(ArcSwapOption::new(acceptor));
                        let accept = tokio::spawn(accept_loop(
                            socket,
                            table.clone(),
                            tls.clone(),
                            self.upstream.clone(),
                        ));
                        fresh.push((listener.bind, Bound { table, tls, accept }));
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
                b.accept.abort();
                tracing::info!(%addr, "HTTP listener removed");
            }
            keep
        });
        failures
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
    tracing::info!(%addr, "HTTP listener bound");
    Ok(listener)
}

async fn accept_loop(
    socket: TcpListener,
    table: Arc<ArcSwap<RouteTable>>,
    tls: Arc<ArcSwapOption<tokio_rustls::TlsAcceptor>>,
    upstream: Upstream,
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
        let table = table.clone();
        let upstream = upstream.clone();
        let acceptor = tls.load_full();
        tokio::spawn(async move {
            let Some(stream) = tls::accept(acceptor, stream).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let table = table.load_full();
                let upstream = upstream.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(handle(req, &table, &upstream, peer).await)
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

fn status(code: StatusCode) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("{code}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response
}

/// Chooses a backend by weight; `Err` is the status to answer instead.
fn choose_backend(rule: &HttpRule) -> Result<SocketAddr, StatusCode> {
    let invalid = u64::from(rule.invalid_weight) * ENDPOINT_WEIGHT_SCALE;
    let total: u64 = rule.backends.iter().map(|b| b.weight).sum::<u64>() + invalid;
    if total == 0 {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let mut pick = fastrand::u64(0..total);
    for backend in &rule.backends {
        if pick < backend.weight {
            return Ok(backend.addr);
        }
        pick -= backend.weight;
    }
    Err(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

async fn handle(
    mut req: Request<Incoming>,
    table: &RouteTable,
    upstream: &Upstream,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
        .to_string();
    let Some(rule) = table.find(&host, req.uri().path()) else {
        return status(StatusCode::NOT_FOUND);
    };
    let backend = match choose_backend(rule) {
        Ok(backend) => backend,
        Err(code) => return status(code),
    };
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{backend}{path_and_query}").parse() else {
        return status(StatusCode::BAD_REQUEST);
    };
    *req.uri_mut() = uri;
    *req.version_mut() = hyper::Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if !headers.contains_key(header::HOST)
        && let Ok(value) = HeaderValue::from_str(&host)
        && !host.is_empty()
    {
        headers.insert(header::HOST, value);
    }
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));

    match upstream.request(req).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => {
            tracing::debug!(%backend, error = %e, "upstream request failed");
            status(StatusCode::BAD_GATEWAY)
        }
    }
}
