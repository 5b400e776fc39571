//! RequestMirror: copies of a request sent to mirror backends, responses
//! ignored. The body reaches the mirrors as it streams to the real backend
//! (`TeeBody`), never buffered whole: a mirror that cannot keep up loses the
//! rest of the body (its copy fails) rather than slowing the real request.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::{ProxyBody, Upstream, empty_body};
use crate::model::RequestMirror;

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
        let Ok(uri) = format!("http://{}{path_and_query}", endpoint.addr).parse::<hyper::Uri>()
        else {
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
        let client = upstream.http1.clone();
        let addr = endpoint.addr;
        tokio::spawn(async move {
            match tokio::time::timeout(MIRROR_TIMEOUT, client.request(request)).await {
                Ok(Ok(response)) => {
                    // Read to the end so the connection goes back to the pool.
                    let _ = response.into_body().collect().await;
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "mirror request failed"),
                Err(_) => tracing::debug!(%addr, "mirror request timed out"),
            }
        });
    }
    copies
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
}
