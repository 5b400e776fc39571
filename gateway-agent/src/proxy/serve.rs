//! One client connection: plain connections are told apart (HTTP/1.1 or
//! h2c) by a peek at their first bytes; HTTP/1.1 is served by our inline
//! server (`http1_server`, which hands upgrades, CONNECT and `Expect` to
//! hyper), h2c by hyper's connection; TLS ones go through hyper-util's
//! automatic detection. Every connection finishes when the proxy drains.

use std::fmt::Display;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::head_timeout::Exchanges;
use super::http1_server;
use super::{
    HEADER_READ_TIMEOUT, MAX_CONCURRENT_STREAMS, MAX_HEAD_BYTES, ProxyService, Shared, tls,
};
use crate::prefixed::Prefixed;

/// The HTTP/2 connection preface (RFC 9113 section 3.4), what an h2c
/// client with prior knowledge sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a plain connection speaks, from its first bytes.
enum Speaks {
    Http1,
    Http2,
    /// A part of the preface only, so far.
    Unsure,
}

/// Tells HTTP/1.1 from h2c by peeking at the first bytes (they stay in the
/// socket, for hyper to read); None when the client closed first. One peek
/// per connection, where hyper-util's detection puts a rewind layer under
/// every later read of the connection.
async fn sniff(stream: &TcpStream) -> Option<Speaks> {
    let mut first = [0u8; H2_PREFACE.len()];
    let read = stream.peek(&mut first).await.ok()?;
    if read == 0 {
        None
    } else if first[..read] != H2_PREFACE[..read] {
        Some(Speaks::Http1)
    } else if read == H2_PREFACE.len() {
        Some(Speaks::Http2)
    } else {
        Some(Speaks::Unsure)
    }
}

/// Serves a plain connection: HTTP/1.1 with its worker's head timeout
/// (`head_timeout`, counted in `exchanges`), or h2c, which has none.
pub(super) async fn plain(stream: TcpStream, service: ProxyService, exchanges: Arc<Exchanges>) {
    let Some(mut drain) = drain_receiver(&service.shared) else {
        return;
    };
    let speaks = tokio::select! {
        biased;
        // Draining before the first byte: closed, as idle connections are.
        _ = drain.changed() => return,
        speaks = sniff(&stream) => speaks,
    };
    let Some(speaks) = speaks else {
        return;
    };
    let peer = service.connection.peer;
    match speaks {
        Speaks::Http1 => {
            // Ours inline (http1_server). Each request's future (~3.5 KB)
            // is boxed: held inline, the connection's future would copy
            // it twice per request (callgrind: ~730 instructions, against
            // one copy and an allocation), and keep its room while idle.
            let served = http1_server::serve(stream, &mut drain, |request| {
                Box::pin(service.exchange(request))
            })
            .await;
            // What it does not serve inline goes to hyper, from its head on.
            let Some(handed) = served else {
                return;
            };
            let mut builder = http1::Builder::new();
            builder
                .header_read_timeout(None) // the worker's sweep instead
                .max_buf_size(MAX_HEAD_BYTES);
            let connection = builder
                .serve_connection(
                    TokioIo::new(Prefixed::new(handed.read, handed.stream)),
                    service,
                )
                .with_upgrades();
            drained(drain, peer, connection, |c| c.graceful_shutdown()).await;
        }
        Speaks::Http2 => {
            exchanges.exempt();
            let connection = http2_builder().serve_connection(TokioIo::new(stream), service);
            drained(drain, peer, connection, |c| c.graceful_shutdown()).await;
        }
        Speaks::Unsure => {
            exchanges.exempt();
            auto(Box::new(stream), service).await;
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2, whichever the client speaks, with hyper's own
/// header read timeout: TLS connections, and plain ones whose first segment
/// held only a part of the HTTP/2 preface.
pub(super) async fn auto(stream: Box<dyn tls::Io>, service: ProxyService) {
    let Some(drain) = drain_receiver(&service.shared) else {
        return;
    };
    let peer = service.connection.peer;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    drained(drain, peer, connection, |c| c.graceful_shutdown()).await;
}

fn http2_builder() -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    builder
}

/// The connection's part in a drain: told when it begins, and waited for
/// (the drain ends once every receiver is dropped). None once draining:
/// the connection is closed at once.
fn drain_receiver(shared: &Shared) -> Option<watch::Receiver<()>> {
    shared
        .drain
        .lock()
        .expect("lock")
        .as_ref()
        .map(watch::Sender::subscribe)
}

/// Drives `connection` to its end, asking it to finish when the proxy
/// drains (`drain`):
/// `finish` asks it (HTTP/1.1 closes once idle, HTTP/2 sends GOAWAY and
/// ends after its open streams). A function, not a trait of the three
/// connection types: rustc could not then prove the serving task `Send`.
async fn drained<C, E>(
    mut drain: watch::Receiver<()>,
    peer: SocketAddr,
    connection: C,
    finish: impl FnOnce(Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: Display,
{
    // On the heap: kept inline, hyper's connection state (kilobytes) would
    // be copied whole into the task at spawn and on completion.
    let mut connection = Box::pin(connection);
    let result = tokio::select! {
        biased;
        result = connection.as_mut() => result,
        // A drain, or the proxy gone.
        _ = WhenWoken::new(drain.changed()) => {
            finish(connection.as_mut());
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Polls `inner` only once its own waker has fired (and on the first
/// poll). A connection's task is woken for every read and write of its
/// requests, and looking at the drain signal each time cost ~370
/// instructions per request (callgrind).
pub(super) struct WhenWoken<F> {
    inner: Pin<Box<F>>,
    woken: Arc<Woken>,
}

struct Woken {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> WhenWoken<F> {
    pub(super) fn new(inner: F) -> Self {
        Self {
            inner: Box::pin(inner),
            woken: Arc::new(Woken {
                fired: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        }
    }
}

impl<F: Future> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.woken.task.register(cx.waker());
        if !self.woken.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(self.woken.clone());
        self.inner.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    /// What `sniff` makes of a connection whose client sent `first` (and
    /// then closed, when `close`).
    async fn sniffed(first: &[u8], close: bool) -> Option<&'static str> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        client.write_all(first).await.expect("write");
        if close {
            client.shutdown().await.expect("shutdown");
        }
        // Until the bytes are in (a peek may see a part of them).
        for _ in 0..100 {
            let mut buf = [0u8; 64];
            if server.peek(&mut buf).await.expect("peek") >= first.len() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        sniff(&server).await.map(|speaks| match speaks {
            Speaks::Http1 => "http1",
            Speaks::Http2 => "http2",
            Speaks::Unsure => "unsure",
        })
    }

    #[tokio::test]
    async fn the_first_bytes_tell_http1_from_h2c() {
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(sniffed(get, false).await, Some("http1"));
        // A method that starts like the preface is still HTTP/1.1.
        assert_eq!(sniffed(b"PRIX / HTTP/1.1\r\n", false).await, Some("http1"));
        assert_eq!(sniffed(H2_PREFACE, false).await, Some("http2"));
        // Only a part of the preface so far: hyper-util's detection reads on.
        assert_eq!(sniffed(b"PRI * HTTP/2", false).await, Some("unsure"));
        assert_eq!(sniffed(b"", true).await, None);
    }
}
