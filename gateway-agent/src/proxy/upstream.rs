//! Connections to backends, one set per proxy worker: plain HTTP/1.1 through
//! the worker's lean pool, h2c and TLS (BackendTLSPolicy) through
//! hyper-util's pooled clients. Requests arrive in origin-form; each client
//! addresses them to the endpoint it is given.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::TryFutureExt as _;
use futures::future::Either;
use http_body_util::BodyExt;
use hyper::http::uri::{self, Scheme};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::{Client, connect::Connect, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::http1_pool::{Http1Pool, SendError};
use super::retry::Failure;
use super::upstream_tls::{TlsClient, TlsUpstreams};
use super::{BoxError, ProxyBody, strip_response_hop_by_hop};
use crate::model::{BackendProtocol, BackendTls};

type H2cClient = Client<HttpConnector, ProxyBody>;
type Boxed<'a> = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Failure>> + Send + 'a>>;

/// Pooled connections to backends: HTTP/1.1, HTTP/2 with prior knowledge
/// (h2c), and over TLS for backends a BackendTLSPolicy governs.
pub(super) struct Upstream {
    http1: Arc<Http1Pool>,
    h2c: Arc<H2cClient>,
    tls: TlsUpstreams,
}

impl Upstream {
    /// Built on the runtime that will use it (the pool sweeps idle
    /// connections there).
    pub(super) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let h2c = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(true)
            .timer(TokioTimer::new())
            .build(connector);
        Self {
            http1: Http1Pool::new(),
            h2c: Arc::new(h2c),
            tls: TlsUpstreams::default(),
        }
    }

    /// The client for a backend speaking `protocol`, over TLS when `tls`.
    pub(super) fn client(
        &self,
        protocol: BackendProtocol,
        tls: Option<&BackendTls>,
    ) -> Result<BackendClient, String> {
        Ok(match (tls, protocol) {
            (Some(tls), protocol) => BackendClient::Tls(self.tls.client(tls, protocol)?),
            (None, BackendProtocol::Http1) => BackendClient::Http1(self.http1.clone()),
            (None, BackendProtocol::H2c) => BackendClient::H2c(self.h2c.clone()),
        })
    }
}

/// The client one request to a backend goes through. Each is shared, not
/// copied: the request's future (which hyper moves whole) holds it.
pub(super) enum BackendClient {
    Http1(Arc<Http1Pool>),
    H2c(Arc<H2cClient>),
    Tls(Arc<TlsClient>),
}

impl BackendClient {
    /// Sends `request` (origin-form) to `endpoint`; the response comes
    /// without hop-by-hop headers (but for a 101's). Not an `async fn`: that
    /// would keep a second copy of the request beside the future it is moved
    /// into, and every request's future (which hyper moves whole) holds this.
    pub(super) fn request(
        &self,
        endpoint: SocketAddr,
        request: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Failure>> + '_ {
        match self {
            Self::Http1(pool) => Either::Left(pool.send(endpoint, request).map_err(http1_failure)),
            // The pooled clients' futures are boxed: they allocate per
            // request anyway, and the plain pool's path stays lean.
            Self::H2c(client) => {
                Either::Right(Box::pin(pooled(client, Scheme::HTTP, endpoint, request)) as Boxed<'_>)
            }
            Self::Tls(client) => {
                Either::Right(
                    Box::pin(pooled(client, Scheme::HTTPS, endpoint, request)) as Boxed<'_>
                )
            }
        }
    }
}

fn http1_failure(e: SendError) -> Failure {
    tracing::debug!(error = %e, "upstream request failed");
    match e {
        SendError::Connect(_) => Failure::Connect,
        SendError::Invalid(_) => Failure::Invalid,
        SendError::Upgrade(e) if e.is_parse() => Failure::Invalid,
        SendError::Io(_) | SendError::Upgrade(_) => Failure::Reset,
    }
}

/// A request through a hyper-util client, which needs the absolute URI to
/// choose its pooled connection.
async fn pooled<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, ProxyBody>,
    scheme: Scheme,
    endpoint: SocketAddr,
    mut request: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, Failure> {
    let mut parts = uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = endpoint.to_string().parse().ok();
    parts.path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .or_else(|| Some(uri::PathAndQuery::from_static("/")));
    *request.uri_mut() = Uri::from_parts(parts).map_err(|_| Failure::Invalid)?;
    match client.request(request).await {
        Ok(mut response) => {
            strip_response_hop_by_hop(&mut response);
            Ok(response.map(|body| body.map_err(BoxError::from).boxed()))
        }
        Err(e) => {
            tracing::debug!(error = %e, "upstream request failed");
            Err(if e.is_connect() {
                Failure::Connect
            } else if std::error::Error::source(&e)
                .and_then(|cause| cause.downcast_ref::<hyper::Error>())
                .is_some_and(hyper::Error::is_parse)
            {
                Failure::Invalid
            } else {
                Failure::Reset
            })
        }
    }
}
