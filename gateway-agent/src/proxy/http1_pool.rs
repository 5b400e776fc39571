//! Kept-alive HTTP/1.1 connections to plain-text backends, one pool per
//! proxy worker, and the exchange on them driven inline in the request's own
//! future: no connection task, no channel, no per-request read buffer. A
//! pooled connection is the socket with its read buffer; the request head is
//! encoded into a reused buffer, the response head parsed with `httparse`,
//! its forwarded fields kept as the lines they are written as
//! (`ResponseFields`, in the response's extensions; the `HeaderMap` stays
//! empty until a filter or hyper's server needs it), and the response body streams
//! from the socket. The connection goes back to the pool when its body has
//! been read to the end and the response allowed keep-alive; a body dropped
//! early, a close-delimited body or uncertain framing closes it.
//!
//! Upgrade requests (WebSocket) go through hyper's client connection
//! instead, one connection each, which hands the socket over on `101`.
//!
//! Limits: a response head larger than 64 KiB or with more than 100 headers
//! is a 502, as is a malformed one. A request body is sent whole before the
//! response is read (streamed, never buffered); a backend that answers
//! early and closes is still heard. Request trailers are not forwarded, and
//! response trailers are read and dropped.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1;
use hyper::header::{self, HOST, HeaderName, HeaderValue};
use hyper::http::request;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{
    BoxError, HOP_BY_HOP, ProxyBody, empty_body, hop_by_hop_index, strip_response_hop_by_hop,
    token_eq_lowercase,
};

/// A connection idle longer than this is closed (by the sweep, which
/// drops those idle over `IDLE_TIMEOUT - SWEEP_EVERY`, so that a checkout
/// reads no clock).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often idle connections are looked over (closed or expired ones dropped).
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Idle connections kept per backend endpoint; more are closed.
const MAX_IDLE_PER_ENDPOINT: usize = 512;
/// A backend that does not accept the connection in this time is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest response head (status line, headers) accepted: the limit the
/// proxy sets on clients' request heads.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Headers per response head, hyper's default.
const MAX_RESPONSE_HEADERS: usize = 100;
/// The room a read asks for; a buffer with less spare room grows by this.
const READ_SIZE: usize = 8 * 1024;
const MIN_READ_ROOM: usize = 1024;

/// Why a request brought no response.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    #[error("connecting to the backend failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The connection failed or closed while the request was sent or
    /// before its response head was whole.
    #[error("backend connection failed: {0}")]
    Io(#[source] std::io::Error),
    /// The backend answered something that is not a valid HTTP/1.1 response.
    #[error("invalid backend response: {0}")]
    Invalid(&'static str),
    /// An upgrade request's exchange (hyper's client) failed.
    #[error("backend exchange failed: {0}")]
    Upgrade(#[source] hyper::Error),
}

/// An open connection to a backend with its buffers, kept across requests.
struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet consumed (normally none between exchanges).
    read: BytesMut,
    /// The request head (and small body frames) being written.
    write: Vec<u8>,
    /// The forwarded response fields while a head is parsed: where their
    /// lines are in the read buffer, and their names' lengths.
    fields: Vec<(Range<usize>, usize)>,
}

impl Connection {
    /// Whether the backend has neither closed the idle connection nor sent
    /// anything on it. No system call unless the socket turned readable.
    fn is_idle_and_open(&self) -> bool {
        matches!(self.stream.try_read(&mut [0u8; 1]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Reads what the backend sent into the read buffer; 0 at its end.
    async fn fill(&mut self) -> std::io::Result<usize> {
        reserve_read_room(&mut self.read);
        self.stream.read_buf(&mut self.read).await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        reserve_read_room(&mut self.read);
        // A `read_buf` future holds no state between polls.
        pin!(self.stream.read_buf(&mut self.read)).poll(cx)
    }
}

fn reserve_read_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < MIN_READ_ROOM {
        // Reclaims the buffer in place once the bytes handed out are dropped.
        buf.reserve(READ_SIZE);
    }
}

struct Idle {
    connection: Connection,
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

    /// Sends `request` (origin-form URI, hop-by-hop headers removed) to
    /// `endpoint` on an idle connection, or a new one; the response comes
    /// without hop-by-hop headers (but for a 101's). Idle connections the
    /// backend closed are passed over; a request without a body that a
    /// reused connection could not take (its write failed, no answer came)
    /// goes on the next one, as hyper-util does. A request that was written
    /// is not sent again: the backend may have acted on it, and a retry
    /// policy counts its attempts.
    pub(super) async fn send(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        if request.headers().contains_key(header::UPGRADE) {
            if !request.headers().contains_key(HOST)
                && let Ok(host) = HeaderValue::from_str(&endpoint.to_string())
            {
                request.headers_mut().insert(HOST, host);
            }
            return Box::pin(send_upgrade(endpoint, request)).await;
        }
        let (head, body) = request.into_parts();
        let mut body = (!body.is_end_stream()).then_some(body);
        let replayable = body.is_none();
        loop {
            let (connection, reused) = match self.checkout(endpoint) {
                Some(connection) => (connection, true),
                // Boxed: the connect future would make every request's
                // future (which hyper moves as a whole) larger.
                None => (Box::pin(connect(endpoint)).await?, false),
            };
            match self
                .exchange(endpoint, connection, &head, body.take())
                .await
            {
                Ok(response) => return Ok(response),
                Err(failed) if reused && replayable && failed.unsent => continue,
                Err(failed) => return Err(failed.error),
            }
        }
    }

    /// One request and its response head on `connection`.
    async fn exchange(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        mut connection: Connection,
        head: &request::Parts,
        body: Option<ProxyBody>,
    ) -> Result<Response<ProxyBody>, Failed> {
        let mut write = std::mem::take(&mut connection.write);
        write.clear();
        let length = encode_head(&mut write, head, body.as_ref(), endpoint);
        let written = match body {
            None => connection.stream.write_all(&write).await,
            // Boxed: only requests with a body pay for its room.
            Some(body) => {
                Box::pin(send_body(&mut connection.stream, &mut write, body, length)).await
            }
        };
        connection.write = write;
        // After a failed write the backend may still have answered (a 413,
        // then closed): its answer is read all the same.
        let head_request = head.method == Method::HEAD;
        let mut received = false;
        let response = loop {
            let response = match read_head(&mut connection, head_request, &mut received).await {
                Ok(response) => response,
                Err(error) => {
                    return Err(match (error, written) {
                        (SendError::Io(_), Err(write_error)) => Failed {
                            error: SendError::Io(write_error),
                            unsent: !received,
                        },
                        (error, _) => Failed {
                            error,
                            unsent: false,
                        },
                    });
                }
            };
            if response.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Failed::invalid("101 to a request without Upgrade"));
            }
            // 100 Continue and other interim answers are not forwarded.
            if !response.status.is_informational() {
                break response;
            }
        };
        let reusable = response.reusable && written.is_ok();
        let body = match response.framing {
            Framing::Length(0) | Framing::Empty => {
                if reusable && connection.read.is_empty() {
                    self.checkin(endpoint, connection);
                }
                empty_body()
            }
            Framing::Length(n) => self.body(endpoint, connection, Decode::Length(n), reusable),
            Framing::Chunked => self.body(endpoint, connection, Decode::ChunkSize, reusable),
            Framing::UntilClose => self.body(endpoint, connection, Decode::UntilClose, false),
        };
        let mut built = Response::new(body);
        *built.status_mut() = response.status;
        *built.version_mut() = response.version;
        built.extensions_mut().insert(response.fields);
        Ok(built)
    }

    fn body(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        connection: Connection,
        decode: Decode,
        reusable: bool,
    ) -> ProxyBody {
        ProxyBody::new(BackendBody {
            connection: Some(connection),
            decode,
            home: reusable.then(|| (self.clone(), endpoint)),
        })
    }

    /// The most recently used idle connection to `endpoint` that is open.
    fn checkout(&self, endpoint: SocketAddr) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(&endpoint)?;
        while let Some(entry) = list.pop() {
            if entry.connection.is_idle_and_open() {
                return Some(entry.connection);
            }
        }
        None
    }

    fn checkin(&self, endpoint: SocketAddr, connection: Connection) {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(endpoint).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle {
                connection,
                since: Instant::now(),
            });
        }
    }
}

/// A failed exchange, and whether the request did not reach the backend:
/// its write failed and no response byte came.
struct Failed {
    error: SendError,
    unsent: bool,
}

impl Failed {
    fn invalid(why: &'static str) -> Self {
        Self {
            error: SendError::Invalid(why),
            unsent: false,
        }
    }
}

async fn open(endpoint: SocketAddr) -> Result<TcpStream, SendError> {
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
    Ok(stream)
}

async fn connect(endpoint: SocketAddr) -> Result<Connection, SendError> {
    Ok(Connection {
        stream: open(endpoint).await?,
        read: BytesMut::with_capacity(READ_SIZE),
        write: Vec::new(),
        fields: Vec::new(),
    })
}

/// An upgrade request through hyper's client on a connection of its own.
async fn send_upgrade(
    endpoint: SocketAddr,
    request: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, SendError> {
    let stream = open(endpoint).await?;
    let (mut sender, connection) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Upgrade)?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(%endpoint, error = %e, "backend connection ended with an error");
        }
    });
    let mut response = sender
        .send_request(request)
        .await
        .map_err(SendError::Upgrade)?;
    // As the inline exchange's responses; a 101 keeps its Upgrade.
    strip_response_hop_by_hop(&mut response);
    // The sender lives as long as the body: dropped, it would end the
    // connection of a refused upgrade before its body is read.
    Ok(response.map(|body| {
        body.map_frame(move |frame| {
            let _ = &sender;
            frame
        })
        .map_err(BoxError::from)
        .boxed()
    }))
}

/// Methods whose request means something with a body: an empty one is
/// sent with `Content-Length: 0`, as hyper does.
fn expects_body(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::TRACE
            | Method::CONNECT
    )
}

/// Writes the request head into `out`; returns the body's length, or None
/// when it goes chunked. The length is the body's own when it knows it, else
/// the request's `Content-Length` (a mirror's copy streams a body of the
/// original's length), as hyper does.
fn encode_head(
    out: &mut Vec<u8>,
    head: &request::Parts,
    body: Option<&ProxyBody>,
    endpoint: SocketAddr,
) -> Option<u64> {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host = false;
    let mut declared = None;
    for (name, value) in &head.headers {
        // The framing headers are written from the body below.
        if name == header::CONTENT_LENGTH {
            declared = parse_content_length(value.as_bytes());
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        host |= name == HOST;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !host {
        let _ = write!(out, "host: {endpoint}\r\n");
    }
    let length = match body {
        None if !expects_body(&head.method) => return finish_head(out, Some(0)),
        None => Some(0),
        Some(body) => body.size_hint().exact().or(declared),
    };
    match length {
        Some(length) => {
            push_content_length(out, length);
        }
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    finish_head(out, length)
}

fn finish_head(out: &mut Vec<u8>, length: Option<u64>) -> Option<u64> {
    out.extend_from_slice(b"\r\n");
    length
}

/// Writes the head in `write` with the body's frames, as they come: chunked
/// when `length` is None, else exactly `length` bytes (a body that ends
/// short or runs over fails the exchange).
async fn send_body(
    stream: &mut TcpStream,
    write: &mut Vec<u8>,
    mut body: ProxyBody,
    length: Option<u64>,
) -> std::io::Result<()> {
    let mut left = length;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() else {
            continue; // trailers are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        match left.as_mut() {
            None => {
                let _ = write!(write, "{:x}\r\n", data.len());
                write.extend_from_slice(&data);
                write.extend_from_slice(b"\r\n");
            }
            Some(left) => {
                *left = left
                    .checked_sub(data.len() as u64)
                    .ok_or_else(|| std::io::Error::other("request body longer than its length"))?;
                write.extend_from_slice(&data);
            }
        }
        stream.write_all(write).await?;
        write.clear();
    }
    match left {
        None => write.extend_from_slice(b"0\r\n\r\n"),
        Some(0) => {}
        Some(_) => {
            return Err(std::io::Error::other(
                "request body shorter than its length",
            ));
        }
    }
    if !write.is_empty() {
        stream.write_all(write).await?;
    }
    Ok(())
}

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    UntilClose,
}

/// A response head as forwarded.
#[derive(Debug)]
struct ResponseHead {
    status: StatusCode,
    version: Version,
    fields: ResponseFields,
    framing: Framing,
    /// The connection may carry another request after this response.
    reusable: bool,
}

/// Reads until a whole response head is in; `received` is set once any
/// response byte has come.
async fn read_head(
    connection: &mut Connection,
    head_request: bool,
    received: &mut bool,
) -> Result<ResponseHead, SendError> {
    loop {
        if !connection.read.is_empty() {
            *received = true;
            if let Some(head) =
                parse_head(&mut connection.read, &mut connection.fields, head_request)?
            {
                return Ok(head);
            }
        }
        if connection.fill().await.map_err(SendError::Io)? == 0 {
            return Err(SendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Parses a response head at the start of `read` and takes it out; `None`
/// while incomplete. `fields` is scratch room kept by the connection.
fn parse_head(
    read: &mut BytesMut,
    fields: &mut Vec<(Range<usize>, usize)>,
    head_request: bool,
) -> Result<Option<ResponseHead>, SendError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        read,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_RESPONSE_HEAD => len,
        Ok(httparse::Status::Partial) if read.len() <= MAX_RESPONSE_HEAD => return Ok(None),
        Ok(_) => return Err(SendError::Invalid("response head too large")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(SendError::Invalid("too many response headers"));
        }
        Err(_) => return Err(SendError::Invalid("malformed response head")),
    };
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| SendError::Invalid("malformed status code"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let base = read.as_ptr() as usize;
    let (mut close, mut keep_alive) = (false, false);
    let mut content_length = None;
    let mut dated = false;
    // Whether the last transfer coding is chunked, when there is one.
    let mut chunked = None;
    let mut listed: Vec<&[u8]> = Vec::new();
    fields.clear();
    // Names are compared as bytes (httparse checked they are tokens):
    // `HeaderName::from_bytes` of each cost ~120 instructions.
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        let start = name.as_ptr() as usize - base;
        let line = start..field.value.as_ptr() as usize - base + field.value.len();
        match hop_by_hop_index(name) {
            None if token_eq_lowercase(name, b"content-length") => {
                let length = parse_content_length(field.value)
                    .ok_or_else(|| SendError::Invalid("malformed Content-Length"))?;
                if content_length.is_some_and(|known| known != length) {
                    return Err(SendError::Invalid("conflicting Content-Length"));
                }
                content_length = Some(length);
            }
            None => {
                dated |= token_eq_lowercase(name, b"date");
                fields.push((line, name.len()));
            }
            // Its options, and the names it lists go too.
            Some(i) if HOP_BY_HOP[i] == header::CONNECTION => {
                for option in tokens(field.value) {
                    if option.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if option.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else {
                        listed.push(option);
                    }
                }
            }
            Some(i) if HOP_BY_HOP[i] == header::TRANSFER_ENCODING => {
                chunked = tokens(field.value)
                    .last()
                    .map(|coding| coding.eq_ignore_ascii_case(b"chunked"))
                    .or(chunked);
            }
            Some(_) => {}
        }
    }
    // The forwarded fields as received, `Content-Length` apart: the server
    // writes its own from the body (or this one for HEAD and 304).
    let mut lines = Vec::with_capacity(len);
    for (line, name_len) in fields.drain(..) {
        let name = &read[line.start..line.start + name_len];
        if listed
            .iter()
            .any(|listed| listed.eq_ignore_ascii_case(name))
        {
            dated &= !name.eq_ignore_ascii_case(b"date");
            continue;
        }
        lines.extend_from_slice(&read[line]);
        lines.extend_from_slice(b"\r\n");
    }
    // RFC 9112 6.3: no body for these; Transfer-Encoding overrides
    // Content-Length (which is then removed, and the connection not
    // reused: the framing was ambiguous); a coding other than chunked last
    // leaves the length unknown, which a proxy cannot pass on: 502.
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let ambiguous = chunked.is_some() && content_length.is_some();
    let framing = match (no_body, chunked, content_length) {
        (true, _, _) => Framing::Empty,
        (false, Some(true), _) => Framing::Chunked,
        (false, Some(false), _) => {
            return Err(SendError::Invalid("transfer coding other than chunked"));
        }
        (false, None, Some(length)) => Framing::Length(length),
        (false, None, None) => Framing::UntilClose,
    };
    read.advance(len);
    let persistent = match version {
        Version::HTTP_11 => !close,
        _ => keep_alive && !close,
    };
    Ok(Some(ResponseHead {
        status,
        version,
        fields: ResponseFields {
            lines,
            content_length: content_length.filter(|_| !ambiguous),
            dated,
        },
        framing,
        reusable: persistent && !ambiguous && framing != Framing::UntilClose,
    }))
}

/// A backend response's forwarded header fields (hop-by-hop ones and those
/// `Connection` lists removed) as the lines received, which the
/// inline HTTP/1.1 server writes as they are: a `HeaderMap` of nginx's four
/// fields cost ~2,900 instructions to build and drop (callgrind). Carried
/// in the response's extensions, the response's own map empty; whatever
/// reads or changes the headers calls `restore_header_map` first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ResponseFields {
    pub(super) lines: Vec<u8>,
    /// The `Content-Length` received (None when chunked framing won).
    pub(super) content_length: Option<u64>,
    /// Whether a `Date` is among the lines.
    pub(super) dated: bool,
}

/// Moves the `ResponseFields` of `response`, if it has them, into its
/// `HeaderMap`, after any header already there.
pub(super) fn restore_header_map<B>(response: &mut Response<B>) {
    let Some(fields) = response.extensions_mut().remove::<ResponseFields>() else {
        return;
    };
    let headers = response.headers_mut();
    let lines = Bytes::from(fields.lines);
    let mut start = 0;
    while let Some(end) = lines[start..].windows(2).position(|w| w == b"\r\n") {
        let line = start..start + end;
        start = line.end + 2;
        let Some(colon) = lines[line.clone()].iter().position(|b| *b == b':') else {
            continue;
        };
        let value = &lines[line.start + colon + 1..line.end];
        let blank = value.len() - value.trim_ascii_start().len();
        // Lines `parse_head` took from httparse: a valid name and value.
        if let Ok(name) = HeaderName::from_bytes(&lines[line.start..line.start + colon]) {
            let value = lines.slice(line.start + colon + 1 + blank..line.end);
            headers.append(name, header_value(value));
        }
    }
    if let Some(length) = fields.content_length {
        headers.append(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// A header value httparse accepted. Not validated again (hyper does the
/// same): its check, HTAB, SP, VCHAR and obs-text, is exactly `HeaderValue`'s.
pub(super) fn header_value(bytes: Bytes) -> HeaderValue {
    // SAFETY: httparse's `HEADER_VALUE_MAP` accepts `\t | b' '..=0x7e |
    // 0x80..=0xff`, the bytes `HeaderValue::from_bytes` accepts (`>= 32 &&
    // != 127 || == b'\t'`); debug builds check it again (and panic).
    unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) }
}

/// The comma-separated elements of a header value, trimmed, empty ones skipped.
pub(super) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Appends a `content-length` line: `itoa`, not `fmt` (~280 instructions
/// a request, callgrind).
pub(super) fn push_content_length(out: &mut Vec<u8>, length: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A Content-Length value: digits, or a list of the same digits repeated.
pub(super) fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for element in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if element.is_empty() {
            return None;
        }
        let mut parsed: u64 = 0;
        for digit in element {
            if !digit.is_ascii_digit() {
                return None;
            }
            parsed = parsed
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
        }
        if length.is_some_and(|known| known != parsed) {
            return None;
        }
        length = Some(parsed);
    }
    length
}

/// Where a body's decoding is (responses here, requests in `http1_server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decode {
    /// Bytes left of a Content-Length body.
    Length(u64),
    /// A chunk-size line is next.
    ChunkSize,
    /// Bytes left of the current chunk.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// The trailer section after the last chunk (dropped).
    Trailers,
    UntilClose,
    Done,
}

/// What one step of decoding the buffered bytes gave.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Data(Bytes),
    /// More bytes are needed.
    More,
    End,
}

impl Decode {
    /// Takes what it can from `read`: body data, framing consumed, or the end.
    pub(super) fn step(&mut self, read: &mut BytesMut) -> Result<Step, BoxError> {
        loop {
            match *self {
                Decode::Length(0) | Decode::Done => {
                    *self = Decode::Done;
                    return Ok(Step::End);
                }
                Decode::Length(left) | Decode::ChunkData(left) => {
                    if read.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = left.min(read.len() as u64);
                    let data = read.split_to(n as usize).freeze();
                    *self = match *self {
                        Decode::Length(_) => Decode::Length(left - n),
                        _ if left == n => Decode::ChunkEnd,
                        _ => Decode::ChunkData(left - n),
                    };
                    if *self == Decode::Length(0) {
                        *self = Decode::Done;
                    }
                    return Ok(Step::Data(data));
                }
                Decode::ChunkSize => match httparse::parse_chunk_size(read) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        read.advance(used);
                        *self = if size == 0 {
                            Decode::Trailers
                        } else {
                            Decode::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if read.len() <= MAX_RESPONSE_HEAD => {
                        return Ok(Step::More);
                    }
                    _ => return Err("malformed chunk size".into()),
                },
                Decode::ChunkEnd => {
                    if read.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &read[..2] != b"\r\n" {
                        return Err("malformed chunk end".into());
                    }
                    read.advance(2);
                    *self = Decode::ChunkSize;
                }
                Decode::Trailers => {
                    let mut slots = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(read, &mut slots) {
                        Ok(httparse::Status::Complete((used, _))) => {
                            read.advance(used);
                            *self = Decode::Done;
                            return Ok(Step::End);
                        }
                        Ok(httparse::Status::Partial) if read.len() <= MAX_RESPONSE_HEAD => {
                            return Ok(Step::More);
                        }
                        _ => return Err("malformed trailers".into()),
                    }
                }
                Decode::UntilClose => {
                    if read.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(read.split().freeze()));
                }
            }
        }
    }
}

/// A backend response body streamed from its connection; the connection
/// goes back to the pool at the body's end when `home` is set.
struct BackendBody {
    connection: Option<Connection>,
    decode: Decode,
    home: Option<(Arc<Http1Pool>, SocketAddr)>,
}

impl BackendBody {
    /// The body is whole: its connection goes home if it may and nothing
    /// beyond the response came; else it closes.
    fn finish(&mut self) {
        self.decode = Decode::Done;
        let connection = self.connection.take();
        if let (Some(connection), Some((pool, endpoint))) = (connection, self.home.take())
            && connection.read.is_empty()
        {
            pool.checkin(endpoint, connection);
        }
    }

    fn fail(&mut self, error: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.decode = Decode::Done;
        self.connection = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decode.step(&mut connection.read) {
                Ok(Step::Data(data)) => {
                    if this.decode == Decode::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => return this.fail(e),
            }
            match ready!(connection.poll_fill(cx)) {
                Ok(0) if this.decode == Decode::UntilClose => {
                    this.decode = Decode::Done;
                    this.connection = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("the backend closed the connection mid-body".into()),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decode == Decode::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Length(left) => SizeHint::with_exact(left),
            Decode::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
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
            list.retain(|e| {
                e.since.elapsed() < IDLE_TIMEOUT - SWEEP_EVERY && e.connection.is_idle_and_open()
            });
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Incoming;
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

    /// A backend that reads each request and answers the next of `answers`
    /// byte for byte; after the last it closes the connection. Also returns
    /// the requests it read (one string per connection) and the count of
    /// connections.
    async fn scripted(
        answers: &'static [&'static [u8]],
    ) -> (SocketAddr, Arc<Mutex<Vec<String>>>, Arc<AtomicU32>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU32::new(0));
        let (log, counter) = (seen.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let log = log.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    for answer in answers {
                        let mut request = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !request_complete(&request) {
                            let read =
                                tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
                                    .await;
                            match read {
                                Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                                _ => break,
                            }
                        }
                        got.extend_from_slice(&request);
                        if !request_complete(&request) || stream.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                    log.lock()
                        .expect("log")
                        .push(String::from_utf8_lossy(&got).into_owned());
                });
            }
        });
        (addr, seen, accepted)
    }

    /// Whether `request` holds a whole request: its head, and its body by
    /// Content-Length or up to the last chunk.
    fn request_complete(request: &[u8]) -> bool {
        let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
        let body = &request[end + 4..];
        if head.contains("transfer-encoding: chunked") {
            return body.ends_with(b"0\r\n\r\n");
        }
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse().unwrap_or(0));
        body.len() >= length
    }

    fn get(path: &str) -> Request<ProxyBody> {
        let mut request = Request::new(empty_body());
        *request.uri_mut() = path.parse().expect("uri");
        request
    }

    async fn collect(response: Response<ProxyBody>) -> Result<String, BoxError> {
        let body = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    async fn read(pool: &Arc<Http1Pool>, addr: SocketAddr, path: &str) -> String {
        let response = pool.send(addr, get(path)).await.expect("response");
        collect(response).await.expect("body")
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

    #[tokio::test]
    async fn a_pooled_connection_closed_while_idle_is_passed_over() {
        // Answers one request per connection, then closes without saying so.
        static ONE: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"];
        let (addr, _, accepted) = scripted(ONE).await;
        let pool = Http1Pool::new();
        for _ in 0..3 {
            assert_eq!(read(&pool, addr, "/").await, "ok");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_request_a_reused_connection_took_is_not_sent_again() {
        // The second request is read, then the connection closes unanswered
        // (as a backend that failed on it): a retry policy's attempt, not
        // a stale connection.
        static ANSWERS: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", b""];
        let (addr, _, accepted) = scripted(ANSWERS).await;
        let pool = Http1Pool::new();
        assert_eq!(read(&pool, addr, "/").await, "ok");
        assert!(matches!(
            pool.send(addr, get("/")).await,
            Err(SendError::Io(_))
        ));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn each_framing_is_read_and_only_clean_ends_are_reused() {
        // (answer, body, connection reused after it)
        static CASES: &[(&[u8], &str, bool)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "hello", true),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
                "hello world",
                true,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", "", true),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", "", true),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                "ok",
                true,
            ),
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", "ok", false),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "ok", false),
            (
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                "ok",
                true,
            ),
            // Both framings: chunked wins, Content-Length goes, no reuse.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                "ok",
                false,
            ),
        ];
        for (answer, body, reused) in CASES {
            let answers: &'static [&'static [u8]] = Box::leak(Box::new([*answer, *answer]));
            let (addr, _, accepted) = scripted(answers).await;
            let pool = Http1Pool::new();
            for _ in 0..2 {
                let mut response = pool.send(addr, get("/")).await.expect("response");
                restore_header_map(&mut response);
                assert!(!response.headers().contains_key(header::CONNECTION));
                assert!(!response.headers().contains_key(header::TRANSFER_ENCODING));
                if answer.windows(9).any(|w| w == b"chunked\r\n") {
                    assert!(!response.headers().contains_key(header::CONTENT_LENGTH));
                }
                assert_eq!(collect(response).await.expect("body"), *body);
            }
            let expected = if *reused { 1 } else { 2 };
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                expected,
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[tokio::test]
    async fn a_body_delimited_by_the_close_is_read_to_the_end() {
        static ANSWER: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\n\r\nuntil the end"];
        let (addr, _, _) = scripted(ANSWER).await;
        let pool = Http1Pool::new();
        assert_eq!(read(&pool, addr, "/").await, "until the end");
    }

    #[tokio::test]
    async fn a_head_request_gets_no_body() {
        static ANSWER: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ];
        let (addr, _, accepted) = scripted(ANSWER).await;
        let pool = Http1Pool::new();
        let mut head = get("/");
        *head.method_mut() = Method::HEAD;
        let mut response = pool.send(addr, head).await.expect("response");
        restore_header_map(&mut response);
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "5");
        assert_eq!(collect(response).await.expect("body"), "");
        assert_eq!(read(&pool, addr, "/").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalid_or_oversized_answers_are_invalid_and_truncated_bodies_fail() {
        static INVALID: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ];
        for answer in INVALID {
            let answers: &'static [&'static [u8]] = Box::leak(Box::new([*answer]));
            let (addr, _, _) = scripted(answers).await;
            let result = Http1Pool::new().send(addr, get("/")).await;
            assert!(
                matches!(result, Err(SendError::Invalid(_))),
                "{}: {result:?}",
                String::from_utf8_lossy(answer)
            );
        }
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() <= MAX_RESPONSE_HEAD {
            huge.extend_from_slice(b"x-filler: 0123456789012345678901234567890123456789\r\n");
        }
        let answers: &'static [&'static [u8]] = Box::leak(Box::new([&*huge.leak()]));
        let (addr, _, _) = scripted(answers).await;
        assert!(matches!(
            Http1Pool::new().send(addr, get("/")).await,
            Err(SendError::Invalid(
                "response head too large" | "too many response headers"
            ))
        ));
        for truncated in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        ] {
            let answers: &'static [&'static [u8]] = Box::leak(Box::new([truncated]));
            let (addr, _, _) = scripted(answers).await;
            let response = Http1Pool::new().send(addr, get("/")).await.expect("head");
            assert!(collect(response).await.is_err());
        }
    }

    #[tokio::test]
    async fn request_bodies_are_framed_by_length_or_chunked() {
        static ANSWERS: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ];
        let (addr, seen, accepted) = scripted(ANSWERS).await;
        let pool = Http1Pool::new();
        let mut sized = Request::new(
            Full::new(Bytes::from("abc"))
                .map_err(|never| match never {})
                .boxed(),
        );
        *sized.method_mut() = Method::POST;
        *sized.uri_mut() = "/sized?q=1".parse().expect("uri");
        sized
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        collect(pool.send(addr, sized).await.expect("response"))
            .await
            .expect("body");
        let frames = futures::stream::iter([
            Ok::<_, BoxError>(Frame::data(Bytes::from("hello"))),
            Ok(Frame::data(Bytes::from(" world"))),
        ]);
        let mut streamed = Request::new(StreamBody::new(frames).boxed());
        *streamed.method_mut() = Method::PUT;
        *streamed.uri_mut() = "/streamed".parse().expect("uri");
        collect(pool.send(addr, streamed).await.expect("response"))
            .await
            .expect("body");
        // A streamed body (a mirror's copy) under a declared length.
        let frames = futures::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from("copy")))]);
        let mut declared = Request::new(StreamBody::new(frames).boxed());
        *declared.method_mut() = Method::POST;
        *declared.uri_mut() = "/declared".parse().expect("uri");
        declared
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        collect(pool.send(addr, declared).await.expect("response"))
            .await
            .expect("body");
        let mut empty = get("/empty");
        *empty.method_mut() = Method::POST;
        collect(pool.send(addr, empty).await.expect("response"))
            .await
            .expect("body");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let seen = seen.lock().expect("log").join("");
        let host = format!("host: {addr}\r\n");
        assert_eq!(
            seen,
            format!(
                "POST /sized?q=1 HTTP/1.1\r\n{host}content-length: 3\r\n\r\nabc\
                 PUT /streamed HTTP/1.1\r\n{host}transfer-encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
                 POST /declared HTTP/1.1\r\n{host}content-length: 4\r\n\r\ncopy\
                 POST /empty HTTP/1.1\r\n{host}content-length: 0\r\n\r\n"
            )
        );
    }

    /// Random and truncated backend bytes through the head parser and the
    /// body decoder: errors, never a panic, and every loop ends.
    #[test]
    fn random_backend_bytes_never_panic() {
        let seeds: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: x-a, close\r\nx-a: 1\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nt: 1\r\n\r\n",
            b"HTTP/1.0 404 Not Found\r\nContent-Length: 18446744073709551615\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nrest",
        ];
        let alphabet = b"0123456789abcdefABCDEF \t\r\n:;,=-HTTP/1.chunkedlength\x00\xff";
        let mut rng = fastrand::Rng::with_seed(4);
        for round in 0..20_000 {
            let seed = seeds[round % seeds.len()];
            let mut input = seed[..rng.usize(0..=seed.len())].to_vec();
            for _ in 0..rng.usize(0..4) {
                let at = rng.usize(0..=input.len());
                let byte = alphabet[rng.usize(0..alphabet.len())];
                if at < input.len() && rng.bool() {
                    input[at] = byte;
                } else {
                    input.insert(at, byte);
                }
            }
            let mut read = BytesMut::from(&input[..]);
            let mut fields = Vec::new();
            let Ok(Some(head)) = parse_head(&mut read, &mut fields, rng.bool()) else {
                continue;
            };
            let lines = head.fields.lines.split(|b| *b == b'\n').count() - 1;
            let length = usize::from(head.fields.content_length.is_some());
            let mut restored = Response::new(());
            restored.extensions_mut().insert(head.fields.clone());
            restore_header_map(&mut restored);
            assert_eq!(restored.headers().len(), lines + length);
            let mut decode = match head.framing {
                Framing::Empty => continue,
                Framing::Length(n) => Decode::Length(n),
                Framing::Chunked => Decode::ChunkSize,
                Framing::UntilClose => Decode::UntilClose,
            };
            for _ in 0..1_000 {
                match decode.step(&mut read) {
                    Ok(Step::Data(_)) => {}
                    Ok(Step::More | Step::End) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn forwarded_fields_are_kept_as_lines_and_restored_as_a_map() {
        let mut read = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: then\r\nSet-Cookie: a=1\r\n\
               Content-Length: 2\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\
               set-cookie: b=2\r\n\r\nok"[..],
        );
        let head = parse_head(&mut read, &mut Vec::new(), false)
            .expect("valid")
            .expect("whole");
        assert_eq!(&read[..], b"ok");
        assert_eq!(
            head.fields,
            ResponseFields {
                lines: b"Server: nginx\r\nDate: then\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n"
                    .to_vec(),
                content_length: Some(2),
                dated: true,
            }
        );
        let mut response = Response::new(());
        response
            .headers_mut()
            .insert("x-filter", HeaderValue::from_static("added"));
        response.extensions_mut().insert(head.fields);
        restore_header_map(&mut response);
        assert!(response.extensions().get::<ResponseFields>().is_none());
        let map: Vec<(String, &str)> = response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().expect("ascii")))
            .collect();
        let expected = [
            ("x-filter", "added"),
            ("server", "nginx"),
            ("date", "then"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("content-length", "2"),
        ];
        assert_eq!(map, expected.map(|(n, v)| (n.to_string(), v)));
        // Blanks after the colon are not part of a value, an empty value stays.
        let mut read =
            BytesMut::from(&b"HTTP/1.1 204 No Content\r\nX-A:\t  v w\r\nX-E:\r\n\r\n"[..]);
        let mut response = Response::new(());
        let head = parse_head(&mut read, &mut Vec::new(), false)
            .expect("valid")
            .expect("whole");
        response.extensions_mut().insert(head.fields);
        restore_header_map(&mut response);
        assert_eq!(response.headers()["x-a"], "v w");
        assert_eq!(response.headers()["x-e"], "");
        // Chunked wins over a Content-Length, which is not passed on.
        let mut read = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        );
        let head = parse_head(&mut read, &mut Vec::new(), false)
            .expect("valid")
            .expect("whole");
        assert_eq!(head.fields.content_length, None);
        assert!(head.fields.lines.is_empty() && !head.fields.dated);
    }

    #[test]
    fn content_lengths_are_digits_or_repeats_of_them() {
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b"42, 42"), Some(42));
        for invalid in [
            &b""[..],
            b"4 2",
            b"+4",
            b"42, 43",
            b"99999999999999999999",
            b",",
        ] {
            assert_eq!(parse_content_length(invalid), None);
        }
    }
}
