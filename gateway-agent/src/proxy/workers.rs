//! The proxy's threads: one single-threaded tokio runtime per CPU the agent
//! may run on. Each worker accepts on its own socket of every listener
//! address (SO_REUSEPORT spreads connections when there are several) and
//! keeps its own backend connections, so a request is served from accept to
//! response on one thread: no work-stealing, no cross-thread wake-ups, which
//! a multi-thread runtime pays even with a single worker.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::HEADER_READ_TIMEOUT;
use super::head_timeout::HeadTimeout;
use super::upstream::Upstream;

/// Pending connections each listening socket holds.
const LISTEN_BACKLOG: u32 = 1024;

pub(super) struct Worker {
    pub(super) runtime: Handle,
    /// This worker's connections to backends.
    pub(super) upstream: Arc<Upstream>,
    /// The head timeout of this worker's plain HTTP/1.1 connections.
    pub(super) head_timeout: Arc<HeadTimeout>,
}

pub(super) struct Workers {
    pub(super) all: Vec<Worker>,
    /// Dropped with the proxy, which ends the threads and their runtimes.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// One worker per CPU this process may run on (its affinity).
    pub(super) fn start() -> Self {
        let count = std::thread::available_parallelism().map_or(1, usize::from);
        let (mut all, mut stop) = (Vec::with_capacity(count), Vec::with_capacity(count));
        for index in 0..count {
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("proxy-{index}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a tokio runtime for a proxy worker");
                    runtime.block_on(async move {
                        let worker = Worker {
                            runtime: Handle::current(),
                            upstream: Arc::new(Upstream::new()),
                            head_timeout: HeadTimeout::new(HEADER_READ_TIMEOUT),
                        };
                        let _ = started_tx.send(worker);
                        let _ = stop_rx.await;
                    });
                })
                .expect("a proxy worker thread");
            all.push(started_rx.recv().expect("the proxy worker started"));
            stop.push(stop_tx);
        }
        Self { all, _stop: stop }
    }

    /// Listening sockets on `addr`, one per worker, each registered with its
    /// worker's runtime.
    pub(super) fn bind(&self, addr: SocketAddr) -> std::io::Result<Vec<TcpListener>> {
        let shared_port = self.all.len() > 1;
        let listeners = self
            .all
            .iter()
            .map(|worker| {
                let socket = match addr {
                    SocketAddr::V4(_) => TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => TcpSocket::new_v6()?,
                };
                socket.set_reuseaddr(true)?;
                if shared_port {
                    socket.set_reuseport(true)?;
                }
                socket.bind(addr)?;
                let _runtime = worker.runtime.enter();
                socket.listen(LISTEN_BACKLOG)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        tracing::info!(%addr, sockets = listeners.len(), "HTTP listener bound");
        Ok(listeners)
    }
}
