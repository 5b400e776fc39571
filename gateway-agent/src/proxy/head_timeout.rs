//! The header read timeout of plain HTTP/1.1 connections (slowloris): a
//! connection that has waited for a request head for the timeout is closed,
//! whether it is silent, idle between requests, or sending a head slowly.
//!
//! hyper's own `header_read_timeout` arms a timer for every request (a boxed
//! sleep put into tokio's timer wheel and taken out again, about 800
//! user-space instructions per request). Here each proxy worker looks over
//! its connections every half timeout instead, and a request costs two
//! counter increments: a connection whose counts did not move over two
//! whole sweep periods, with no exchange in progress, has waited for a head
//! for at least the timeout (and closes before 1.5 times it).

use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};

use super::{BoxError, ProxyBody};

/// The exchanges of one connection, as its worker's sweep sees them.
#[derive(Default)]
pub(super) struct Exchanges {
    /// Request heads received (the service was called).
    started: AtomicU32,
    /// Responses finished: their bodies dropped (by hyper or the inline
    /// server).
    finished: AtomicU32,
    /// Set by the sweep: the connection waited for a head too long.
    expired: AtomicBool,
    /// Not swept any more (HTTP/2, or hyper's own timer in charge).
    exempt: AtomicBool,
    /// The connection's task, woken to close it.
    task: AtomicWaker,
}

impl Exchanges {
    pub(super) fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// No head timeout for this connection from now on.
    pub(super) fn exempt(&self) {
        self.exempt.store(true, Ordering::Relaxed);
    }
}

/// One swept connection.
struct Watched {
    exchanges: Weak<Exchanges>,
    /// (started, finished) at the previous sweep.
    seen: (u32, u32),
    /// Sweeps in a row that found the connection waiting for a head, its
    /// counts unchanged since the sweep before.
    waiting: u8,
}

/// One worker's connections with a head timeout.
pub(super) struct HeadTimeout {
    watched: Mutex<Vec<Watched>>,
}

impl HeadTimeout {
    /// Connections registered with it close after waiting `timeout` for a
    /// request head. The sweep runs on the calling runtime while the
    /// returned handle lives.
    pub(super) fn new(timeout: Duration) -> Arc<Self> {
        let sweeps = Arc::new(Self {
            watched: Mutex::new(Vec::new()),
        });
        tokio::spawn(sweep(Arc::downgrade(&sweeps), timeout / 2));
        sweeps
    }

    /// Watches a new connection, which waits for its first head from now.
    pub(super) fn watch(&self) -> Arc<Exchanges> {
        let exchanges = Arc::new(Exchanges::default());
        self.watched
            .lock()
            .expect("head timeout lock")
            .push(Watched {
                exchanges: Arc::downgrade(&exchanges),
                seen: (0, 0),
                waiting: 0,
            });
        exchanges
    }

    /// Expires the connections that waited for a head for two whole periods.
    fn sweep_once(&self) {
        self.watched
            .lock()
            .expect("head timeout lock")
            .retain_mut(|watched| {
                let Some(exchanges) = watched.exchanges.upgrade() else {
                    return false; // closed
                };
                if exchanges.exempt.load(Ordering::Relaxed) {
                    return false;
                }
                let counts = (
                    exchanges.started.load(Ordering::Relaxed),
                    exchanges.finished.load(Ordering::Relaxed),
                );
                // Unchanged counts and no exchange in progress: no head came
                // and nothing was in flight since the previous sweep.
                if counts == watched.seen && counts.0 == counts.1 {
                    watched.waiting += 1;
                } else {
                    watched.waiting = 0;
                }
                watched.seen = counts;
                if watched.waiting < 2 {
                    return true;
                }
                exchanges.expired.store(true, Ordering::Relaxed);
                exchanges.task.wake();
                false
            });
    }
}

async fn sweep(sweeps: Weak<HeadTimeout>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate
    loop {
        ticks.tick().await;
        let Some(sweeps) = sweeps.upgrade() else {
            return;
        };
        sweeps.sweep_once();
    }
}

/// Runs `connection` until it ends or the sweep expires it (then it is
/// dropped, which closes its socket). Returns whether it expired.
pub(super) async fn serve_until_expired(
    exchanges: Arc<Exchanges>,
    connection: impl Future<Output = ()>,
) -> bool {
    let expired = Expired(exchanges);
    match futures::future::select(pin!(connection), expired).await {
        futures::future::Either::Left(((), _)) => false,
        futures::future::Either::Right(((), _)) => true,
    }
}

/// Ready once the sweep expired the connection.
struct Expired(Arc<Exchanges>);

impl Future for Expired {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.expired.load(Ordering::Relaxed) {
            return Poll::Ready(());
        }
        self.0.task.register(cx.waker());
        // Checked again: the sweep may have woken the previous waker.
        if self.0.expired.load(Ordering::Relaxed) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A response body that counts its exchange finished when it is dropped
/// (after it was sent whole, or on the connection's end).
pub(super) struct ServedBody {
    inner: ProxyBody,
    exchanges: Option<Arc<Exchanges>>,
}

impl ServedBody {
    pub(super) fn new(inner: ProxyBody, exchanges: Option<Arc<Exchanges>>) -> Self {
        Self { inner, exchanges }
    }
}

impl Body for ServedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ServedBody {
    fn drop(&mut self) {
        if let Some(exchanges) = &self.exchanges {
            exchanges.finished.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One exchange answered: its body dropped by hyper.
    fn finish(exchanges: &Arc<Exchanges>) {
        drop(ServedBody::new(
            super::super::empty_body(),
            Some(exchanges.clone()),
        ));
    }

    fn expired(exchanges: &Exchanges) -> bool {
        exchanges.expired.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_connection_waiting_for_a_head_over_two_sweeps_is_closed() {
        // Swept by hand here; the sweep task does it every half timeout.
        let sweeps = HeadTimeout {
            watched: Mutex::default(),
        };
        let silent = sweeps.watch();
        let busy = sweeps.watch();
        let chatty = sweeps.watch();
        let h2 = sweeps.watch();
        h2.exempt();
        busy.started(); // a request in flight throughout
        let served = tokio::spawn({
            let silent = silent.clone();
            async move { serve_until_expired(silent, std::future::pending()).await }
        });
        for sweep in 0..4 {
            chatty.started();
            finish(&chatty);
            sweeps.sweep_once();
            // The silent one waited two whole periods at the second sweep.
            assert_eq!(expired(&silent), sweep >= 1, "sweep {sweep}");
            assert!(!expired(&busy) && !expired(&chatty) && !expired(&h2));
        }
        // Its connection was woken and ended.
        assert!(served.await.expect("task"));
        // Once its exchange finished, the busy one waits two periods more
        // (the first sweep after it sees the change).
        finish(&busy);
        sweeps.sweep_once();
        sweeps.sweep_once();
        assert!(!expired(&busy));
        sweeps.sweep_once();
        assert!(expired(&busy));
        // A connection that ends by itself is not reported as expired.
        assert!(!serve_until_expired(sweeps.watch(), async {}).await);
    }
}
