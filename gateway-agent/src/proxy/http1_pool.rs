//! Kept-alive HTTP/1.1 connections to plain-text backends, one pool per
//! proxy worker. The hot path is a lock, a pop and a send on the
//! connection's `SendRequest`; the connection goes back to the pool when the
//! response body has been read to its end (its `Drop`), with no task spawned
//! and no pool key built per request, which is what hyper-util's general
//! client costs per request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::ProxyBody;

/// A connection idle longer than this is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often idle connections are looked over (closed or expired ones dropped).
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Idle connections kept per backend endpoint; more are closed.
const MAX_IDLE_PER_ENDPOINT: usize = 512;
/// A backend that does not accept the connection in this time is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Sender = http1::SendRequest<ProxyBody>;

/// Why a request brought no response.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    #[error("connecting to the backend failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The connection failed while the request was sent or its response read.
    #[error("backend exchange failed: {0}")]
    Http(#[source] hyper::Error),
}

struct Idle {
    sender: Sender,
    since: Instant,
}

#[derive(Default)]
pub(super) struct Http1Pool {
    /// foldhash: two lookups per request, where SipHash cost ~230
    /// instructions each; keys are the operator's endpoints.
    idle: Mutex<foldhash::HashMap<SocketAddr, Vec<Idle>>>,
}

impl Http1Pool {
    /// A pool whose idle connections are swept while it lives (the sweep
    /// runs on the calling runtime).
    pub(super) fn new() -> Arc<Self> {
        let pool = Arc::new(Self::default());
        let weak = Arc::downgrade(&pool);
        tokio::spawn(sweep(weak));
        pool
    }

    /// Sends `request` (origin-form URI) to `endpoint` on an idle connection,
    /// or a new one. A request a reused connection could not take (closed
    /// by the backend meanwhile) goes on the next one, as hyper-util does.
    pub(super) async fn send(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        if !request.headers().contains_key(HOST)
            && let Ok(host) = HeaderValue::from_str(&endpoint.to_string())
        {
            request.headers_mut().insert(HOST, host);
        }
        loop {
            let (mut sender, reused) = match self.checkout(endpoint) {
                Some(sender) => (sender, true),
                // Boxed: the connect future would make every request's
                // future (which hyper moves as a whole) larger.
                None => (Box::pin(connect(endpoint)).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.attach(endpoint, sender, response)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection to `endpoint` that is ready.
    fn checkout(&self, endpoint: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(&endpoint)?;
        while let Some(entry) = list.pop() {
            if entry.sender.is_ready() && entry.since.elapsed() < IDLE_TIMEOUT {
                return Some(entry.sender);
            }
        }
        None
    }

    fn checkin(&self, endpoint: SocketAddr, sender: Sender) {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(endpoint).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// The response with a body that returns the connection to the pool
    /// once read to its end. A switched protocol keeps the connection.
    fn attach(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        sender: Sender,
        response: Response<Incoming>,
    ) -> Response<ProxyBody> {
        let keep = response.status() != StatusCode::SWITCHING_PROTOCOLS;
        response.map(|body| {
            ProxyBody::new(PooledBody {
                inner: body,
                ended: false,
                home: keep.then(|| (self.clone(), endpoint, sender)),
            })
        })
    }
}

async fn connect(endpoint: SocketAddr) -> Result<Sender, SendError> {
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(endpoint)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Err(_) => {
                return Err(SendError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )));
            }
        };
    let _ = stream.set_nodelay(true);
    // One buffer and `write`, as the client side (`serve`).
    let (sender, connection) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(%endpoint, error = %e, "backend connection ended with an error");
        }
    });
    Ok(sender)
}

/// Drops idle connections that the backend closed or that idled too long,
/// until the pool is gone.
async fn sweep(pool: Weak<Http1Pool>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut idle = pool.idle.lock().expect("pool lock");
        for list in idle.values_mut() {
            list.retain(|e| !e.sender.is_closed() && e.since.elapsed() < IDLE_TIMEOUT);
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

/// A backend response body; when dropped after its end, its connection
/// goes back to the pool (hyper drops a body once it has sent all of it).
struct PooledBody {
    inner: Incoming,
    ended: bool,
    home: Option<(Arc<Http1Pool>, SocketAddr, Sender)>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let Some((pool, endpoint, sender)) = self.home.take() else {
            return;
        };
        if !(self.ended || self.inner.is_end_stream()) {
            return; // unread rest: the connection closes with its sender
        }
        if sender.is_ready() {
            pool.checkin(endpoint, sender);
        } else if !sender.is_closed() {
            // Still finishing the exchange (rare: a request body still
            // being sent): back in the pool once it is ready.
            let mut sender = sender;
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if sender.ready().await.is_ok() {
                        pool.checkin(endpoint, sender);
                    }
                });
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::net::TcpListener;

    /// An HTTP/1.1 backend counting the connections it accepted; it answers
    /// "ok", or closes the connection after answering when the request asks
    /// `/close`.
    pub(in crate::proxy) async fn backend() -> (SocketAddr, Arc<AtomicU32>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicU32::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let mut response = Response::new(Full::new(Bytes::from("ok")));
                    if req.uri().path() == "/close" {
                        response
                            .headers_mut()
                            .insert("connection", HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(response)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (addr, accepted)
    }

    fn get(path: &str) -> Request<ProxyBody> {
        let mut request = Request::new(Empty::new().map_err(|never| match never {}).boxed());
        *request.uri_mut() = path.parse().expect("uri");
        request
    }

    async fn read(pool: &Arc<Http1Pool>, addr: SocketAddr, path: &str) -> String {
        let response = pool.send(addr, get(path)).await.expect("response");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn a_connection_is_reused_after_its_response_was_read() {
        let (addr, accepted) = backend().await;
        let pool = Http1Pool::new();
        for _ in 0..5 {
            assert_eq!(read(&pool, addr, "/").await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_unread_closes_its_connection() {
        let (addr, accepted) = backend().await;
        let pool = Http1Pool::new();
        let response = pool.send(addr, get("/")).await.expect("response");
        drop(response);
        assert_eq!(read(&pool, addr, "/").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closes_is_not_reused() {
        let (addr, accepted) = backend().await;
        let pool = Http1Pool::new();
        assert_eq!(read(&pool, addr, "/close").await, "ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(read(&pool, addr, "/").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let pool = Http1Pool::new();
        assert!(matches!(
            pool.send(dead, get("/")).await,
            Err(SendError::Connect(_))
        ));
    }
}
