//! The HTTP/1.1 backend connection a client connection owns: taken lazily
//! (from the worker's pool, or connected) for the client's first request to
//! a plain HTTP/1.1 backend, kept for its next ones, and driven by the
//! client connection's own task (`drive`), as nginx's upstream keepalive
//! does. A request and its response then pass between the two hyper
//! connections within one task, with no task of the backend connection to
//! wake and schedule, and no pool lookup while the endpoint stays the same.
//! HTTP/1.1 clients send one request at a time, so one connection is enough;
//! a request while it is busy, or an upgrade, goes through the shared pool.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::{Request, Response, StatusCode};

use super::ProxyBody;
use super::http1_pool::{
    Conn, Home, Http1Pool, PooledBody, SendError, Sender, address_to, connect, spawn_connection,
};

#[derive(Default)]
pub(super) struct OwnedBackend {
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    /// Changes whenever the slot lets its connection go, so that a lease on
    /// a connection no longer here does not come back.
    generation: u64,
    owned: Option<Owned>,
}

struct Owned {
    endpoint: SocketAddr,
    /// None while a request is out on the connection (leased).
    sender: Option<Sender>,
    connection: Conn,
}

/// What the slot offers a request to one endpoint.
enum Offer {
    /// Its idle connection to that endpoint.
    Lease(Lease),
    /// Nothing to that endpoint, and room for a connection.
    Vacant,
    /// A request is out on its connection.
    Busy,
}

impl OwnedBackend {
    /// Drives the owned connection (reads, writes, noticing its close);
    /// called by the client connection's task each time it is polled.
    pub(super) fn poll_connection(&self, cx: &mut Context<'_>) {
        let mut slot = self.slot.lock().expect("slot lock");
        let Some(owned) = &mut slot.owned else {
            return;
        };
        if let Poll::Ready(result) = Pin::new(&mut owned.connection).poll(cx) {
            if let Err(e) = result {
                let endpoint = owned.endpoint;
                tracing::debug!(%endpoint, error = %e, "backend connection ended with an error");
            }
            slot.owned = None;
            slot.generation += 1;
        }
    }

    /// The client connection has ended: an idle connection goes back to the
    /// pool undriven, one still busy finishes in a task of its own.
    pub(super) fn release(&self, pool: &Http1Pool) {
        let mut slot = self.slot.lock().expect("slot lock");
        slot.generation += 1;
        let Some(owned) = slot.owned.take() else {
            return;
        };
        drop(slot);
        match owned.sender {
            Some(sender) if sender.is_ready() => {
                pool.checkin(owned.endpoint, sender, Some(owned.connection));
            }
            _ => spawn_connection(owned.endpoint, owned.connection),
        }
    }

    fn offer(self: &Arc<Self>, endpoint: SocketAddr, pool: &Http1Pool) -> Offer {
        let mut slot = self.slot.lock().expect("slot lock");
        let generation = slot.generation;
        let Some(owned) = &mut slot.owned else {
            return Offer::Vacant;
        };
        if owned.sender.is_none() {
            return Offer::Busy;
        }
        if owned.endpoint == endpoint {
            return Offer::Lease(Lease {
                backend: self.clone(),
                generation,
                sender: owned.sender.take(),
            });
        }
        // Another endpoint (weights, a retry): the idle connection waits in
        // the pool, undriven, for whoever asks for its endpoint next.
        if let Some(Owned {
            endpoint,
            sender: Some(sender),
            connection,
        }) = slot.owned.take()
        {
            pool.checkin(endpoint, sender, Some(connection));
        }
        slot.generation += 1;
        Offer::Vacant
    }

    /// Makes `connection` the owned one, leased at once.
    fn install(self: &Arc<Self>, endpoint: SocketAddr, sender: Sender, connection: Conn) -> Lease {
        let mut slot = self.slot.lock().expect("slot lock");
        slot.generation += 1;
        slot.owned = Some(Owned {
            endpoint,
            sender: None,
            connection,
        });
        Lease {
            backend: self.clone(),
            generation: slot.generation,
            sender: Some(sender),
        }
    }

    /// Sends `request` (origin-form, no upgrade) to `endpoint` on the owned
    /// connection; through the shared pool when that one is busy.
    pub(super) async fn send(
        self: &Arc<Self>,
        pool: &Arc<Http1Pool>,
        endpoint: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        address_to(endpoint, &mut request);
        loop {
            let (mut lease, reused) = match self.offer(endpoint, pool) {
                Offer::Lease(lease) => (lease, true),
                // Boxed, here and below: paths off the hot one keep the
                // request's future (moved by hyper as a whole) small.
                Offer::Busy => return Box::pin(pool.send(endpoint, request)).await,
                Offer::Vacant => match pool.take_idle(endpoint) {
                    // Driven by a task of its own already: used as it is.
                    Some(idle) if idle.connection.is_none() => {
                        match Box::pin(pool.send_on(endpoint, idle.sender, request)).await {
                            Ok(response) => return Ok(response),
                            Err(mut e) => match e.take_message() {
                                Some(unsent) => {
                                    request = unsent;
                                    continue;
                                }
                                None => return Err(SendError::Http(e.into_error())),
                            },
                        }
                    }
                    Some(idle) => {
                        let connection = idle.connection.expect("an undriven connection");
                        match still_open(connection).await {
                            Some(connection) => {
                                (self.install(endpoint, idle.sender, connection), true)
                            }
                            None => continue,
                        }
                    }
                    None => {
                        let (sender, connection) = Box::pin(connect(endpoint)).await?;
                        (self.install(endpoint, sender, connection), false)
                    }
                },
            };
            let sender = lease.sender.as_mut().expect("a lease holds its sender");
            // The connection may still be finishing the previous exchange.
            if let Err(e) = std::future::poll_fn(|cx| sender.poll_ready(cx)).await {
                if reused {
                    continue; // closed meanwhile; the dropped lease lets it go
                }
                return Err(SendError::Http(e));
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let keep = response.status() != StatusCode::SWITCHING_PROTOCOLS;
                    return Ok(response.map(|body| {
                        ProxyBody::new(PooledBody {
                            inner: body,
                            ended: false,
                            home: keep.then_some(Home::Owned(lease)),
                        })
                    }));
                }
                // Closed by the backend while idle: the request goes on the
                // next connection. The lease, dropped, lets this one go.
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }
}

/// An idle connection from the pool, polled once (here, so that its reads
/// wake this task from now on): None when the backend has closed it.
async fn still_open(mut connection: Conn) -> Option<Conn> {
    std::future::poll_fn(|cx| match Pin::new(&mut connection).poll(cx) {
        Poll::Ready(_) => Poll::Ready(false),
        Poll::Pending => Poll::Ready(true),
    })
    .await
    .then_some(connection)
}

/// A request's hold on the owned connection: its sender, given back when
/// the response has been read whole; the connection is let go otherwise.
pub(super) struct Lease {
    backend: Arc<OwnedBackend>,
    generation: u64,
    sender: Option<Sender>,
}

impl Lease {
    /// Ends the lease: the connection is kept for the next request when the
    /// response was read whole, else closed.
    pub(super) fn give_back(mut self, read_whole: bool) {
        let sender = self.sender.take();
        let mut slot = self.backend.slot.lock().expect("slot lock");
        if slot.generation != self.generation {
            return; // the slot let this connection go; it closes with its sender
        }
        match (&mut slot.owned, sender) {
            (Some(owned), Some(sender)) if read_whole => owned.sender = Some(sender),
            _ => {
                slot.owned = None;
                slot.generation += 1;
            }
        }
    }
}

impl Drop for Lease {
    /// A lease dropped before its response was read (the request failed,
    /// or it was cancelled by a timeout) closes its connection.
    fn drop(&mut self) {
        if self.sender.is_some() {
            let mut slot = self.backend.slot.lock().expect("slot lock");
            if slot.generation == self.generation {
                slot.owned = None;
                slot.generation += 1;
            }
        }
    }
}
