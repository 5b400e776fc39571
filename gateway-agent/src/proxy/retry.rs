//! HTTPRoute `retry`: a backend request that failed (no connection, a reset
//! before the response, `backendRequest` timed out, or a listed status) is
//! sent again, up to the rule's attempts, waiting the backoff in between.
//! Only requests that can be replayed are retried: no body, or a small one
//! with a known length that is buffered; everything else is streamed once.
//! A retry goes to another endpoint of the same backendRef when there is one
//! not tried yet, so that a dead or failing pod is not asked twice.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt as _;
use futures::future::Either;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};

use super::ProxyBody;
use super::upstream::BackendClient;
use crate::model::HttpRetry;

/// Largest request body kept in memory so that it can be sent again.
pub(super) const MAX_REPLAY_BODY: u64 = 64 * 1024;
/// Wait between attempts when the route sets no backoff.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// Exponential backoff stops growing here (or at the route's own backoff,
/// if that is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Why a backend request brought no usable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The connection to the backend could not be opened.
    Connect,
    /// The backend closed or reset the connection before answering.
    Reset,
    /// The backend answered something that is not HTTP.
    Invalid,
    /// `timeouts.backendRequest` passed without a response.
    Timeout,
}

impl Failure {
    /// The status the client gets when this failure is the last word.
    pub(super) fn status(self) -> StatusCode {
        match self {
            Failure::Connect | Failure::Invalid => StatusCode::BAD_GATEWAY,
            Failure::Reset => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// A request whose parts are kept so that it can be built again per attempt.
pub(super) struct Replayable {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Replayable {
    pub(super) fn new(head: &hyper::http::request::Parts, body: Bytes) -> Self {
        Self {
            method: head.method.clone(),
            uri: head.uri.clone(),
            version: head.version,
            headers: head.headers.clone(),
            body,
        }
    }

    pub(super) fn body(&self) -> Bytes {
        self.body.clone()
    }

    /// The request again.
    fn request(&self) -> Request<ProxyBody> {
        let mut request = Request::new(
            Full::new(self.body.clone())
                .map_err(|never| match never {})
                .boxed(),
        );
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// The body whole when it is small enough to replay, else the body untouched
/// (to be streamed once). `Err` when the client's body fails while buffering.
pub(super) async fn buffer_if_small(
    body: ProxyBody,
) -> Result<Result<Bytes, ProxyBody>, StatusCode> {
    if body.is_end_stream() {
        return Ok(Ok(Bytes::new()));
    }
    match body.size_hint().exact() {
        Some(len) if len <= MAX_REPLAY_BODY => {
            // Collected by hand: `Limited` over a boxed error makes the
            // request future fail rustc's `Send` proof (a higher-ranked
            // `From` bound).
            let mut body = body;
            let mut buffered = BytesMut::with_capacity(len as usize);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| StatusCode::BAD_REQUEST)?;
                if let Ok(data) = frame.into_data() {
                    if buffered.len() + data.len() > MAX_REPLAY_BODY as usize {
                        return Err(StatusCode::BAD_REQUEST);
                    }
                    buffered.extend_from_slice(&data);
                }
            }
            Ok(Ok(buffered.freeze()))
        }
        _ => Ok(Err(body)),
    }
}

/// The endpoints attempts may go to, with their weights: those the request
/// built for the first attempt fits (same protocol, TLS and filters).
pub(super) struct Endpoints {
    candidates: Vec<(SocketAddr, u64)>,
    tried: Vec<SocketAddr>,
}

impl Endpoints {
    /// `first` is the endpoint of the first attempt, already chosen.
    pub(super) fn new(first: SocketAddr, candidates: Vec<(SocketAddr, u64)>) -> Self {
        Self {
            candidates,
            tried: vec![first],
        }
    }

    /// The endpoint of the latest attempt.
    pub(super) fn last(&self) -> SocketAddr {
        *self
            .tried
            .last()
            .expect("the first endpoint is always there")
    }

    /// Chooses the endpoint of the next attempt: by weight among those not
    /// tried yet; once every one has been tried, by weight among all.
    fn next(&mut self) -> SocketAddr {
        let untried = |addr: &SocketAddr| !self.tried.contains(addr);
        let fresh: u64 = self
            .candidates
            .iter()
            .filter(|(addr, _)| untried(addr))
            .map(|(_, weight)| weight)
            .sum();
        let chosen = if fresh > 0 {
            pick(
                self.candidates.iter().filter(|(addr, _)| untried(addr)),
                fresh,
            )
        } else {
            let total = self.candidates.iter().map(|(_, weight)| weight).sum();
            pick(self.candidates.iter(), total)
        };
        let chosen = chosen.unwrap_or_else(|| self.last());
        self.tried.push(chosen);
        chosen
    }
}

/// A weighted choice among `candidates` whose weights add up to `total`.
fn pick<'a>(
    candidates: impl Iterator<Item = &'a (SocketAddr, u64)>,
    total: u64,
) -> Option<SocketAddr> {
    if total == 0 {
        return None;
    }
    let mut point = fastrand::u64(0..total);
    for (addr, weight) in candidates {
        if point < *weight {
            return Some(*addr);
        }
        point -= weight;
    }
    None
}

/// Whether `result` of an attempt is a failure the policy retries.
fn retriable(retry: &HttpRetry, result: &Result<Response<ProxyBody>, Failure>) -> bool {
    match result {
        Ok(response) => retry.codes.contains(&response.status().as_u16()),
        Err(_) => true,
    }
}

/// The wait before retry number `retry_index` (0 for the first retry):
/// the route's backoff doubled each time up to a cap, plus up to 25% jitter
/// so that clients failing together do not retry together.
pub(super) fn backoff(retry: &HttpRetry, retry_index: u32) -> Duration {
    let base = retry.backoff.unwrap_or(DEFAULT_BACKOFF);
    let cap = MAX_BACKOFF.max(base);
    let grown = base.saturating_mul(1 << retry_index.min(16)).min(cap);
    grown + grown.mul_f64(fastrand::f64() * 0.25)
}

/// The request to the backend `endpoint`: retried under `replay`'s policy
/// when the rule has one, else sent once. Not an `async fn`, nor is
/// `attempt`: each would keep a copy of the request beside the future it is
/// moved into, and every request's future (which hyper moves whole) holds
/// these.
pub(super) fn send<'a>(
    client: &'a BackendClient,
    endpoint: SocketAddr,
    replay: Option<(&'a HttpRetry, &'a Replayable, &'a mut Endpoints)>,
    request: Request<ProxyBody>,
    backend_timeout: Option<Duration>,
) -> impl Future<Output = Result<Response<ProxyBody>, Failure>> + 'a {
    match replay {
        // Boxed: the retry loop's state would make every request's future
        // larger.
        Some((policy, replay, endpoints)) => Either::Left(Box::pin(with_retries(
            client,
            policy,
            replay,
            endpoints,
            request,
            backend_timeout,
        ))),
        None => Either::Right(attempt(client, endpoint, request, backend_timeout)),
    }
}

/// One request to the backend, bounded by `backend_timeout`.
pub(super) fn attempt(
    client: &BackendClient,
    endpoint: SocketAddr,
    request: Request<ProxyBody>,
    backend_timeout: Option<Duration>,
) -> impl Future<Output = Result<Response<ProxyBody>, Failure>> + '_ {
    let sent = client.request(endpoint, request);
    match backend_timeout {
        // Boxed: the timer would make every request's future larger.
        Some(limit) => Either::Left(
            Box::pin(tokio::time::timeout(limit, sent))
                .map(|timed| timed.unwrap_or(Err(Failure::Timeout))),
        ),
        None => Either::Right(sent),
    }
}

/// Sends `request` and, while the policy allows, sends it again after a
/// retriable failure, each time to the endpoint `endpoints` chooses next.
/// `first` is the first attempt's request (it may carry the mirrors' tee of
/// the body), sent to the endpoint `endpoints` started with; later ones are
/// rebuilt from `request`. The last attempt's result is returned whatever it is.
pub(super) async fn with_retries(
    client: &BackendClient,
    retry: &HttpRetry,
    request: &Replayable,
    endpoints: &mut Endpoints,
    first: Request<ProxyBody>,
    backend_timeout: Option<Duration>,
) -> Result<Response<ProxyBody>, Failure> {
    let mut result = attempt(client, endpoints.last(), first, backend_timeout).await;
    for retry_index in 0..retry.attempts {
        if !retriable(retry, &result) {
            break;
        }
        tracing::debug!(
            retry = retry_index + 1,
            outcome = ?result.as_ref().map(|r| r.status()),
            "retrying backend request"
        );
        // The failed response is dropped, which closes or returns its connection.
        drop(result);
        tokio::time::sleep(backoff(retry, retry_index)).await;
        let endpoint = endpoints.next();
        result = attempt(client, endpoint, request.request(), backend_timeout).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BackendProtocol;
    use crate::proxy::upstream::Upstream;
    use hyper::body::Incoming;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use hyper_util::client::legacy::{Client, connect::HttpConnector};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;

    fn policy(attempts: u32, codes: &[u16]) -> HttpRetry {
        HttpRetry {
            attempts,
            codes: codes.to_vec(),
            backoff: Some(Duration::from_millis(1)),
        }
    }

    #[test]
    fn backoff_is_at_least_the_route_minimum_and_grows_to_a_cap() {
        let retry = HttpRetry {
            attempts: 5,
            codes: Vec::new(),
            backoff: Some(Duration::from_millis(100)),
        };
        for index in 0..20 {
            let wait = backoff(&retry, index);
            let grown = Duration::from_millis(100 << index.min(4)).min(MAX_BACKOFF);
            assert!(wait >= grown, "retry {index}: {wait:?} < {grown:?}");
            assert!(wait <= grown.mul_f64(1.25), "retry {index}: {wait:?}");
        }
        let long = HttpRetry {
            backoff: Some(Duration::from_secs(3)),
            ..retry
        };
        assert!(backoff(&long, 4) >= Duration::from_secs(3));
        assert!(backoff(&long, 4) <= Duration::from_millis(3750));
    }

    /// A backend that fails its first `failures` requests (with `code`, or by
    /// closing the connection when `code` is None) and then answers 200; it
    /// counts the requests it saw and checks each carries the body "payload".
    async fn flaky_backend(failures: u32, code: Option<u16>) -> (SocketAddr, Arc<AtomicU32>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(AtomicU32::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let counter = counter.clone();
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        assert_eq!(&body[..], b"payload");
                        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                        let mut response = Response::new(Full::new(Bytes::from("ok")));
                        if n <= failures {
                            match code {
                                Some(code) => {
                                    *response.status_mut() =
                                        StatusCode::from_u16(code).expect("status");
                                }
                                // An error from the service makes hyper drop the connection.
                                None => return Err(std::io::Error::other("reset").into()),
                            }
                        }
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (addr, seen)
    }

    async fn send(addr: SocketAddr, retry: &HttpRetry) -> Result<StatusCode, Failure> {
        let upstream = Upstream::new();
        let client = upstream
            .client(BackendProtocol::Http1, None)
            .expect("client");
        let (mut head, ()) = Request::new(()).into_parts();
        head.method = Method::POST;
        head.uri = "/".parse().expect("uri");
        let request = Replayable::new(&head, Bytes::from_static(b"payload"));
        let mut endpoints = Endpoints::new(addr, vec![(addr, 1)]);
        with_retries(
            &client,
            retry,
            &request,
            &mut endpoints,
            request.request(),
            None,
        )
        .await
        .map(|r| r.status())
    }

    #[tokio::test]
    async fn listed_codes_are_retried_up_to_the_attempts_and_others_are_not() {
        let (addr, seen) = flaky_backend(2, Some(500)).await;
        assert_eq!(send(addr, &policy(3, &[500])).await, Ok(StatusCode::OK));
        assert_eq!(seen.load(Ordering::SeqCst), 3);

        let (addr, seen) = flaky_backend(5, Some(500)).await;
        assert_eq!(
            send(addr, &policy(2, &[500])).await,
            Ok(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(
            seen.load(Ordering::SeqCst),
            3,
            "the first try and two retries"
        );

        let (addr, seen) = flaky_backend(1, Some(503)).await;
        assert_eq!(
            send(addr, &policy(3, &[500])).await,
            Ok(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(seen.load(Ordering::SeqCst), 1, "503 is not listed");
    }

    #[tokio::test]
    async fn connection_resets_are_retried_without_listed_codes() {
        let (addr, seen) = flaky_backend(2, None).await;
        assert_eq!(send(addr, &policy(3, &[])).await, Ok(StatusCode::OK));
        assert_eq!(seen.load(Ordering::SeqCst), 3);

        let (addr, _) = flaky_backend(9, None).await;
        assert_eq!(send(addr, &policy(1, &[])).await, Err(Failure::Reset));
    }

    /// A loopback address where nothing listens (bound, read, released).
    fn dead_endpoint() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
    }

    /// Sends a request whose first attempt goes to `first`, retried among `all`.
    async fn send_among(
        first: SocketAddr,
        all: &[SocketAddr],
        retry: &HttpRetry,
    ) -> (Result<StatusCode, Failure>, SocketAddr) {
        let upstream = Upstream::new();
        let client = upstream
            .client(BackendProtocol::Http1, None)
            .expect("client");
        let (mut head, ()) = Request::new(()).into_parts();
        head.method = Method::POST;
        head.uri = "/".parse().expect("uri");
        let request = Replayable::new(&head, Bytes::from_static(b"payload"));
        let mut endpoints = Endpoints::new(first, all.iter().map(|a| (*a, 1)).collect());
        let result = with_retries(
            &client,
            retry,
            &request,
            &mut endpoints,
            request.request(),
            None,
        )
        .await
        .map(|r| r.status());
        (result, endpoints.last())
    }

    #[tokio::test]
    async fn a_retry_goes_to_another_endpoint_than_the_one_that_failed() {
        let dead = dead_endpoint();
        let (live, seen) = flaky_backend(0, None).await;
        // One retry only: it must go to the live endpoint, not the dead one again.
        for _ in 0..10 {
            let (result, last) = send_among(dead, &[dead, live], &policy(1, &[])).await;
            assert_eq!(result, Ok(StatusCode::OK));
            assert_eq!(last, live);
        }
        assert_eq!(seen.load(Ordering::SeqCst), 10);

        // The same for a listed status: the failing pod is not asked twice.
        let (failing, failed) = flaky_backend(u32::MAX, Some(500)).await;
        for _ in 0..10 {
            let (result, last) = send_among(failing, &[live, failing], &policy(1, &[500])).await;
            assert_eq!(result, Ok(StatusCode::OK));
            assert_eq!(last, live);
        }
        assert_eq!(failed.load(Ordering::SeqCst), 10);
    }

    #[test]
    fn once_every_endpoint_was_tried_retries_choose_among_all_by_weight() {
        let (a, b) = (dead_endpoint(), SocketAddr::from(([127, 0, 0, 2], 9)));
        let mut endpoints = Endpoints::new(a, vec![(a, 0), (b, 3)]);
        assert_eq!(endpoints.next(), b, "the untried one first");
        // Both tried now: weights decide, and a has none.
        for _ in 0..20 {
            assert_eq!(endpoints.next(), b);
        }
        // A lone endpoint is retried as itself.
        let mut lone = Endpoints::new(a, vec![(a, 1)]);
        assert_eq!(lone.next(), a);
        assert_eq!(lone.last(), a);
    }

    #[tokio::test]
    async fn small_bodies_are_buffered_for_replay_and_empty_ones_need_nothing() {
        // Bodies come from a real hyper connection: a loopback server that
        // reports what buffer_if_small made of each request body.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let verdict =
                        match buffer_if_small(super::super::request_body(req.into_body())).await {
                            Ok(Ok(bytes)) => format!("buffered {}", bytes.len()),
                            Ok(Err(_)) => "streamed".to_string(),
                            Err(code) => code.to_string(),
                        };
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                        verdict,
                    ))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let big = vec![b'x'; MAX_REPLAY_BODY as usize + 1];
        for (body, expected) in [
            (Vec::new(), "buffered 0".to_string()),
            (b"payload".to_vec(), "buffered 7".to_string()),
            (big, "streamed".to_string()),
        ] {
            let request = Request::post(format!("http://{addr}/"))
                .body(Full::new(Bytes::from(body)))
                .expect("request");
            let response = client.request(request).await.expect("response");
            let text = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            assert_eq!(String::from_utf8_lossy(&text), expected);
        }
    }
}
