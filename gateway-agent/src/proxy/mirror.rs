//! RequestMirror: copies of a request sent to mirror backends, responses
//! ignored. The body reaches the mirrors as it streams to the real backend
//! (`TeeBody`), never buffered whole: a mirror that cannot keep up loses the
//! rest of the body (its copy fails) rather than slowing the real request.
//! A mirror a BackendTLSPolicy governs gets its copies over TLS, through the
//! same pooled clients as backends under that policy.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::upstream::{BackendClient, Upstream};
use super::{ProxyBody, empty_body};
use crate::model::{BackendProtocol, RequestMirror};

/// A mirrored copy is abandoned after this long; nobody waits for it.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);
/// Body chunks a slow mirror may lag behind the real backend.
const MIRROR_BUFFER_CHUNKS: usize = 64;

/// Starts a copy of the request (head as modified by the filters) to one
/// endpoint of each mirror that samples it. Returns the senders through which
/// the body's chunks reach the copies (none when the request has no body).
pub(super) fn start(
    mirrors: &[RequestMirror],
    head: &hyper::http::request::Parts,
    path_and_query: &str,
    has_body: bool,
    upstream: &Upstream,
) -> Vec<mpsc::Sender<Bytes>> {
    let mut copies = Vec::new();
    for mirror in mirrors {
        if fastrand::u32(0..mirror.denominator) >= mirror.numerator {
            continue;
        }
        let total: u64 = mirror.backends.iter().map(|b| b.weight).sum();
        let mut pick = fastrand::u64(0..total.max(1));
        let Some(endpoint) = mirror.backends.iter().find(|b| {
            let hit = pick < b.weight;
            pick = pick.saturating_sub(b.weight);
            hit
        }) else {
            continue;
        };
        let client = match upstream.client(BackendProtocol::Http1, mirror.tls.as_ref()) {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(addr = %endpoint.addr, error = %e, "no TLS client for the mirror");
                continue;
            }
        };
        let Ok(uri) = path_and_query.parse::<hyper::Uri>() else {
            continue;
        };
        let body = if has_body {
            let (tx, rx) = mpsc::channel(MIRROR_BUFFER_CHUNKS);
            copies.push(tx);
            ChannelBody(rx).map_err(|never| match never {}).boxed()
        } else {
            empty_body()
        };
        let mut request: Request<ProxyBody> = Request::new(body);
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = head.headers.clone();
        tokio::spawn(send_copy(client, request, endpoint.addr));
    }
    copies
}

/// Sends one copy and reads its response to the end (so the connection goes
/// back to the pool); the outcome only reaches the debug log.
async fn send_copy(client: BackendClient, request: Request<ProxyBody>, addr: SocketAddr) {
    match tokio::time::timeout(MIRROR_TIMEOUT, client.request(addr, request)).await {
        Ok(Ok(response)) => {
            let _ = response.into_body().collect().await;
        }
        Ok(Err(failure)) => tracing::debug!(%addr, ?failure, "mirror request failed"),
        Err(_) => tracing::debug!(%addr, "mirror request timed out"),
    }
}

/// A request body that hands a copy of each data chunk to the mirrors as it
/// passes. Dropping it (end of body or not) ends the mirrors' bodies.
pub(super) struct TeeBody<B> {
    inner: B,
    copies: Vec<mpsc::Sender<Bytes>>,
}

impl<B> TeeBody<B> {
    pub(super) fn new(inner: B, copies: Vec<mpsc::Sender<Bytes>>) -> Self {
        Self { inner, copies }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for TeeBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    // A full or closed mirror is dropped, never waited for.
                    this.copies
                        .retain(|copy| copy.try_send(data.clone()).is_ok());
                }
            }
            Poll::Ready(_) => this.copies.clear(),
            Poll::Pending => {}
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

/// A mirror's request body: the chunks `TeeBody` sends, until it is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn the_body_reaches_backend_and_mirrors_unchanged() {
        let (tx1, rx1) = mpsc::channel(MIRROR_BUFFER_CHUNKS);
        let (tx2, rx2) = mpsc::channel(MIRROR_BUFFER_CHUNKS);
        let body = TeeBody::new(Full::new(Bytes::from_static(b"hello body")), vec![tx1, tx2]);
        let forwarded = body.collect().await.unwrap().to_bytes();
        assert_eq!(forwarded, "hello body");
        for rx in [rx1, rx2] {
            let mirrored = ChannelBody(rx).collect().await.unwrap().to_bytes();
            assert_eq!(mirrored, "hello body");
        }
    }

    /// A body of ready chunks.
    struct Chunks(std::vec::IntoIter<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.next().map(|c| Ok(Frame::data(c))))
        }
    }

    #[tokio::test]
    async fn a_mirror_that_falls_behind_is_cut_off_not_waited_for() {
        let (slow_tx, mut slow_rx) = mpsc::channel(1);
        let chunks: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("{i}"))).collect();
        let body = TeeBody::new(Chunks(chunks.into_iter()), vec![slow_tx]);
        // The real request gets every chunk although the mirror reads none.
        let forwarded = body.collect().await.unwrap().to_bytes();
        assert_eq!(forwarded, "0123456789");
        assert_eq!(slow_rx.recv().await.as_deref(), Some(&b"0"[..]));
        assert_eq!(
            slow_rx.recv().await,
            None,
            "cut off after its buffer filled"
        );
    }

    /// An HTTPS server on loopback with a certificate for `name`, signed by a
    /// CA of its own (returned as PEM); the path and query of each request,
    /// with the SNI it came with, arrive on the returned channel.
    async fn tls_backend(
        name: &str,
    ) -> (
        std::net::SocketAddr,
        String,
        mpsc::Receiver<(String, Option<String>)>,
    ) {
        use std::sync::Arc;
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("leaf");
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
        )
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (seen_tx, seen_rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(stream) = acceptor.accept(stream).await else {
                    continue;
                };
                let sni = stream.get_ref().1.server_name().map(str::to_string);
                let seen = seen_tx.clone();
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (seen, sni) = (seen.clone(), sni.clone());
                        async move {
                            let path = req.uri().path_and_query().map_or("", |p| p.as_str());
                            let _ = seen.send((path.to_string(), sni)).await;
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"mirror"),
                            )))
                        }
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (addr, ca.pem(), seen_rx)
    }

    #[tokio::test]
    async fn a_mirror_under_a_backend_tls_policy_gets_its_copy_over_tls() {
        use crate::model::{BackendTls, TrustAnchors, WeightedEndpoint};
        let (addr, ca_pem, mut seen) = tls_backend("mirror.example").await;
        let mirror = RequestMirror {
            backends: vec![WeightedEndpoint { addr, weight: 1 }],
            numerator: 1,
            denominator: 1,
            tls: Some(BackendTls {
                server_name: "mirror.example".into(),
                trust: TrustAnchors::Pem(ca_pem),
                subject_alt_names: Vec::new(),
                client_certificate: None,
            }),
        };
        let (mut head, ()) = Request::new(()).into_parts();
        head.headers
            .insert(hyper::header::HOST, "app.example".parse().expect("host"));
        let copies = start(&[mirror], &head, "/copy?n=1", false, &Upstream::new());
        assert!(copies.is_empty(), "no body, so nothing to tee");
        // The server speaks only TLS: a plain-text copy would never arrive.
        let (path, sni) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("the copy arrives in time")
            .expect("a copy");
        assert_eq!(path, "/copy?n=1");
        assert_eq!(sni.as_deref(), Some("mirror.example"));
    }
}
