//! The server side of plain HTTP/1.1 client connections, ours and inline:
//! one loop per connection reads request heads into one small read buffer
//! (4 KiB, grown only while a head does not fit, up to `MAX_HEAD_BYTES`),
//! parses them with `httparse` (header values share the buffer's bytes),
//! awaits the proxy's exchange in the loop itself (no connection task or
//! dispatch channel; the caller boxes each request's future), and writes
//! each response head with its body's first bytes through one reused
//! write buffer.
//!
//! Inline: requests with no body, a `Content-Length` or a chunked body
//! (streamed from the socket, never buffered whole), keep-alive (RFC 9112
//! 9.3: HTTP/1.0 needs `Connection: keep-alive`; `close` from either side
//! closes after the response), pipelined requests (served one after
//! another), responses with a known length, chunked (HTTP/1.1) or
//! close-delimited (HTTP/1.0) bodies, none for HEAD, 1xx, 204 and 304.
//! A request body the response left unread is read and dropped, up to
//! `MAX_DRAIN` bytes, before the next request; more closes the connection.
//!
//! To hyper, with the bytes read so far replayed first (`Prefixed`): a
//! request with `Upgrade` (HTTP/1.1: WebSocket), `CONNECT` or `Expect`
//! (hyper answers `100 Continue`); hyper then serves the rest of the
//! connection. TLS connections and h2c never come here.
//!
//! Errors as hyper answers them: a malformed head is a 400, a head larger
//! than `MAX_HEAD_BYTES` or with more than 100 headers a 431, a target
//! over 65,534 bytes a 414; each closes the connection. Framing (RFC 9112
//! 6.1, 6.3): `Transfer-Encoding` with `Content-Length` is read as chunked,
//! without the `Content-Length`, and the connection closed after the
//! response (as hyper does); a final coding other than chunked, chunked
//! twice, or `Transfer-Encoding` in HTTP/1.0 is a 400; another coding
//! before chunked a 501; an invalid or conflicting `Content-Length` a 400.
//! Trailers of request and response bodies are dropped.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::os::fd::AsRawFd as _;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures::FutureExt as _;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::http1_pool::{
    Decode, ResponseFields, Step, header_value, parse_content_length, push_content_length, tokens,
};
use super::serve::WhenWoken;
use super::{BoxError, MAX_HEAD_BYTES, ProxyBody, empty_body};

/// The read buffer's first size: most request heads fit.
const FIRST_READ: usize = 4 * 1024;
/// Less room than this left in the read buffer: it grows (or is reclaimed).
const MIN_READ_ROOM: usize = 1024;
/// Headers per request head, hyper's default.
const MAX_HEADERS: usize = 100;
/// hyper's limit on a request target.
const MAX_URI_LEN: usize = u16::MAX as usize - 1;
/// Response body bytes copied behind the head into one write; a larger
/// frame is written on its own.
const WRITE_BUFFER: usize = 16 * 1024;
/// The most of an unread request body read and dropped to keep the
/// connection; more closes it.
const MAX_DRAIN: u64 = 64 * 1024;

/// A connection from a request on that hyper serves: the socket and the
/// bytes read from it, the request's head first.
pub(super) struct ToHyper {
    pub(super) stream: TcpStream,
    pub(super) read: Bytes,
}

/// Serves the plain HTTP/1.1 connection `stream`, each request answered by
/// `exchange`, until either side closes it, the proxy drains (`drain`: an
/// idle connection closes at once, a busy one after its response), or a
/// request is for hyper (returned).
pub(super) async fn serve<F, Fut, B>(
    stream: TcpStream,
    drain: &mut watch::Receiver<()>,
    mut exchange: F,
) -> Option<ToHyper>
where
    F: FnMut(Request<ProxyBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let stream = Arc::new(stream);
    let mut read = BytesMut::with_capacity(FIRST_READ);
    let mut write = Vec::new();
    let mut fields = Vec::new();
    let mut drained = pin!(WhenWoken::new(drain.changed()));
    let mut draining = false;
    loop {
        let head = loop {
            if !read.is_empty() {
                match parse_head(&mut read, &mut fields) {
                    Ok(Parsed::Head(head)) => break head,
                    Ok(Parsed::Partial) => {}
                    Ok(Parsed::ToHyper) => {
                        let stream = Arc::try_unwrap(stream).ok()?;
                        return Some(ToHyper {
                            stream,
                            read: read.freeze(),
                        });
                    }
                    Err(status) => {
                        refuse(&stream, &mut write, status).await;
                        return None;
                    }
                }
            }
            reserve_read_room(&mut read);
            let filled = tokio::select! {
                biased;
                _ = drained.as_mut(), if !draining => {
                    // Idle: closed now; a head under way is answered first.
                    if read.is_empty() {
                        return None;
                    }
                    draining = true;
                    continue;
                }
                filled = std::future::poll_fn(|cx| poll_fill(&stream, &mut read, cx)) => filled,
            };
            if !matches!(filled, Ok(n) if n > 0) {
                return None;
            }
        };
        let Head {
            request,
            body,
            mut keep_alive,
        } = head;
        let head_request = request.method() == Method::HEAD;
        let http10 = request.version() == Version::HTTP_10;
        // A body reads from the socket through the shared reader, which
        // holds the read buffer until the exchange is over.
        let reader = (body != Decode::Done).then(|| {
            Arc::new(Mutex::new(BodyReader {
                stream: Some(stream.clone()),
                read: std::mem::take(&mut read),
                decode: body,
                failed: false,
            }))
        });
        let body = match &reader {
            Some(reader) => RequestBody(reader.clone()).boxed(),
            None => empty_body(),
        };
        let response = exchange(request.map(|()| body)).await;
        keep_alive &= !draining;
        let (body, framing) =
            encode_head(&mut write, response, head_request, http10, &mut keep_alive);
        let written = write_body(&stream, &mut write, body, framing).await;
        if let Some(reader) = reader {
            // The body may outlive the exchange (a backend client holding
            // it): it reads no more, and the buffer comes back.
            let unread = {
                let mut reader = lock(&reader);
                reader.stream = None;
                read = std::mem::take(&mut reader.read);
                let unread = (!reader.failed).then_some(reader.decode);
                if reader.decode != Decode::Done {
                    reader.failed = true;
                }
                unread
            };
            match unread {
                Some(Decode::Done) => {}
                Some(decode) if keep_alive && written.is_ok() => {
                    if !drain_body(&stream, &mut read, decode).await {
                        return None;
                    }
                }
                _ => keep_alive = false,
            }
        }
        if written.is_err() || !keep_alive {
            shutdown(&stream);
            return None;
        }
        // A large head's buffer is not kept for the connection's life.
        if read.is_empty() && read.capacity() > 4 * FIRST_READ {
            read = BytesMut::with_capacity(FIRST_READ);
        }
    }
}

/// A request head, parsed.
struct Head {
    request: Request<()>,
    /// How its body is delimited: `Done` when it has none.
    body: Decode,
    /// Whether the connection may carry another request after this one.
    keep_alive: bool,
}

// Returned by value once per request: a box would be an allocation each.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Head(Head),
    /// The head is not whole yet.
    Partial,
    /// A request hyper serves (the head stays in the buffer).
    ToHyper,
}

/// Parses a request head at the start of `read` and takes it out; the
/// status to refuse it with when it is invalid. `fields` is scratch room
/// kept by the connection.
fn parse_head(
    read: &mut BytesMut,
    fields: &mut Vec<(HeaderName, Range<usize>)>,
) -> Result<Parsed, StatusCode> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        read,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Partial) if read.len() < MAX_HEAD_BYTES => {
            return Ok(Parsed::Partial);
        }
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        Err(_) => return Err(StatusCode::BAD_REQUEST),
    };
    let (Some(method), Some(path), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(StatusCode::BAD_REQUEST);
    };
    if path.len() > MAX_URI_LEN {
        return Err(StatusCode::URI_TOO_LONG);
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| StatusCode::BAD_REQUEST)?;
    let http11 = version == 1;
    let base = read.as_ptr() as usize;
    let offset = |part: &[u8]| part.as_ptr() as usize - base;
    let path_start = offset(path.as_bytes());
    let path_range = path_start..path_start + path.len();
    let mut to_hyper = method == Method::CONNECT;
    let mut keep_alive = http11;
    let mut close = false;
    let mut content_length = None;
    // Transfer codings: whether any, the last one chunked, how often
    // chunked, another one seen.
    let (mut coded, mut last_chunked, mut chunked, mut other_coding) = (false, false, 0, false);
    fields.clear();
    for field in parsed.headers.iter() {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| StatusCode::BAD_REQUEST)?;
        if name == header::CONTENT_LENGTH {
            let length = parse_content_length(field.value).ok_or(StatusCode::BAD_REQUEST)?;
            if content_length.is_some_and(|known| known != length) {
                return Err(StatusCode::BAD_REQUEST);
            }
            content_length = Some(length);
        } else if name == header::TRANSFER_ENCODING {
            if !http11 {
                return Err(StatusCode::BAD_REQUEST);
            }
            for coding in tokens(field.value) {
                last_chunked = coding.eq_ignore_ascii_case(b"chunked");
                chunked += usize::from(last_chunked);
                other_coding |= !last_chunked;
                coded = true;
            }
        } else if name == header::CONNECTION {
            for option in tokens(field.value) {
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name == header::EXPECT || name == header::UPGRADE && http11 {
            to_hyper = true;
        }
        let start = offset(field.value);
        fields.push((name, start..start + field.value.len()));
    }
    if to_hyper {
        return Ok(Parsed::ToHyper);
    }
    let body = if coded {
        if !last_chunked || chunked > 1 {
            return Err(StatusCode::BAD_REQUEST);
        }
        if other_coding {
            return Err(StatusCode::NOT_IMPLEMENTED);
        }
        if content_length.is_some() {
            // Ambiguous framing: read as chunked, then closed.
            close = true;
            fields.retain(|(name, _)| name != header::CONTENT_LENGTH);
        }
        Decode::ChunkSize
    } else {
        match content_length {
            None | Some(0) => Decode::Done,
            Some(length) => Decode::Length(length),
        }
    };
    let head = read.split_to(len).freeze();
    let uri =
        Uri::from_maybe_shared(head.slice(path_range)).map_err(|_| StatusCode::BAD_REQUEST)?;
    // Room for the X-Forwarded-* the proxy adds: a map that grows costs
    // ~400 instructions (callgrind).
    let mut headers = HeaderMap::with_capacity(fields.len() + 4);
    for (name, value) in fields.drain(..) {
        headers.append(name, header_value(head.slice(value)));
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    *request.headers_mut() = headers;
    Ok(Parsed::Head(Head {
        request,
        body,
        keep_alive: keep_alive && !close,
    }))
}

/// Writes the head of `response` into `write`, a backend's
/// `ResponseFields` as they are, (hyper's framing rules: the
/// body's own length, else its `Content-Length`, else chunked, or
/// close-delimited for HTTP/1.0) and returns how its body goes; clears
/// `keep_alive` when the connection must close after it. Not async, and
/// the head is dropped here: the body's writer, whose future the
/// connection's holds, keeps only the body.
fn encode_head<B>(
    write: &mut Vec<u8>,
    response: Response<B>,
    head_request: bool,
    http10: bool,
    keep_alive: &mut bool,
) -> (B, Framing)
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    let (mut parts, body) = response.into_parts();
    // A final response is due: hyper answers a 1xx with a 500 too.
    let replaced = parts.status.is_informational();
    // A backend's fields as received, written after the map's.
    let received = parts
        .extensions
        .remove::<ResponseFields>()
        .filter(|_| !replaced);
    let none = HeaderMap::new();
    let (status, headers) = if replaced {
        (StatusCode::INTERNAL_SERVER_ERROR, &none)
    } else {
        (parts.status, &parts.headers)
    };
    let bodiless = head_request
        || replaced
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    write.clear();
    if !http10 && status == StatusCode::OK {
        write.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        write.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        write.extend_from_slice(status.as_str().as_bytes());
        write.push(b' ');
        write.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        write.extend_from_slice(b"\r\n");
    }
    let mut declared = None;
    let mut dated = false;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH {
            // HEAD and 304 tell the length the body would have.
            if !(head_request || status == StatusCode::NOT_MODIFIED) {
                declared = Some(value);
                continue;
            }
        } else if name == header::TRANSFER_ENCODING {
            continue;
        } else if name == header::CONNECTION {
            *keep_alive &= !tokens(value.as_bytes()).any(|o| o.eq_ignore_ascii_case(b"close"));
        }
        dated |= name == header::DATE;
        write.extend_from_slice(name.as_str().as_bytes());
        write.extend_from_slice(b": ");
        write.extend_from_slice(value.as_bytes());
        write.extend_from_slice(b"\r\n");
    }
    let mut received_length = None;
    if let Some(fields) = &received {
        write.extend_from_slice(&fields.lines);
        dated |= fields.dated;
        received_length = fields.content_length;
        if let Some(length) = received_length
            && (head_request || status == StatusCode::NOT_MODIFIED)
        {
            push_content_length(write, length);
        }
    }
    let framing = if bodiless {
        if replaced {
            write.extend_from_slice(b"content-length: 0\r\n");
        }
        // A HEAD's length is the one its body would have, told by the
        // header (passed on above) or the body, as hyper does.
        if head_request
            && !headers.contains_key(header::CONTENT_LENGTH)
            && received_length.is_none()
            && let Some(length) = body.size_hint().exact().filter(|n| *n > 0)
        {
            push_content_length(write, length);
        }
        Framing::None
    } else {
        let declared = || {
            declared
                .and_then(|v| parse_content_length(v.as_bytes()))
                .or(received_length)
        };
        match body.size_hint().exact().or_else(declared) {
            Some(length) => {
                push_content_length(write, length);
                Framing::Length(length)
            }
            None if http10 => {
                *keep_alive = false;
                Framing::UntilClose
            }
            None => {
                write.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        }
    };
    if !dated {
        push_date(write);
    }
    match (http10, *keep_alive) {
        (false, false) => write.extend_from_slice(b"connection: close\r\n"),
        (true, true) => write.extend_from_slice(b"connection: keep-alive\r\n"),
        _ => {}
    }
    write.extend_from_slice(b"\r\n");
    (body, framing)
}

/// Writes the head in `write` with the body's frames as they come, framed
/// by `framing`.
async fn write_body<B>(
    stream: &TcpStream,
    write: &mut Vec<u8>,
    mut body: B,
    framing: Framing,
) -> std::io::Result<()>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let mut left = match framing {
        Framing::Length(length) => Some(length),
        _ => None,
    };
    while framing != Framing::None && !body.is_end_stream() {
        // Written out before waiting for more of the body.
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                flush(stream, write).await?;
                body.frame().await
            }
        };
        let Some(frame) = frame else {
            break;
        };
        let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() else {
            continue; // trailers are dropped
        };
        if data.is_empty() {
            continue;
        }
        if let Some(left) = left.as_mut() {
            *left = left
                .checked_sub(data.len() as u64)
                .ok_or_else(|| std::io::Error::other("response body longer than its length"))?;
        }
        if framing == Framing::Chunked {
            let _ = write!(write, "{:x}\r\n", data.len());
        }
        if write.len() + data.len() <= WRITE_BUFFER {
            write.extend_from_slice(&data);
        } else {
            flush(stream, write).await?;
            write_all(stream, &data).await?;
        }
        if framing == Framing::Chunked {
            write.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Chunked => write.extend_from_slice(b"0\r\n\r\n"),
        Framing::Length(_) if left != Some(0) => {
            return Err(std::io::Error::other(
                "response body shorter than its length",
            ));
        }
        _ => {}
    }
    flush(stream, write).await
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Answers a request the server refuses with `status`, then closes.
async fn refuse(stream: &TcpStream, write: &mut Vec<u8>, status: StatusCode) {
    write.clear();
    let _ = write!(
        write,
        "HTTP/1.1 {} {}\r\nconnection: close\r\ncontent-length: 0\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("<none>")
    );
    push_date(write);
    write.extend_from_slice(b"\r\n");
    let _ = write_all(stream, write).await;
    shutdown(stream);
}

/// Sends what is left to send and the end of the stream (FIN), so that a
/// client sees the last response before the close.
fn shutdown(stream: &TcpStream) {
    let _ = nix::sys::socket::shutdown(stream.as_raw_fd(), nix::sys::socket::Shutdown::Write);
}

/// Appends a `date` header: the formatted time is kept per thread and
/// second, as hyper does.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((0, String::new()))
        };
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second || text.is_empty() {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

async fn flush(stream: &TcpStream, write: &mut Vec<u8>) -> std::io::Result<()> {
    if !write.is_empty() {
        write_all(stream, write).await?;
        write.clear();
    }
    Ok(())
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn reserve_read_room(read: &mut BytesMut) {
    if read.capacity() - read.len() < MIN_READ_ROOM {
        // Reclaims the buffer in place once the bytes handed out are
        // dropped; doubles it while a head does not fit.
        read.reserve(read.len().max(FIRST_READ));
    }
}

/// Reads what the client sent into `read`; 0 at its end.
fn poll_fill(
    stream: &TcpStream,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        let room = read.capacity() - read.len();
        let mut filled = 0;
        // A read that leaves room drained the socket (epoll is
        // edge-triggered): the readiness is cleared by answering
        // `WouldBlock` to `try_io`, as tokio's own `poll_read` does. Kept
        // set, the next fill would cost a `recvfrom` that finds nothing (one
        // per request, strace).
        let result = stream.try_io(Interest::READABLE, || {
            filled = stream.try_read_buf(read)?;
            if filled > 0 && filled < room {
                Err(std::io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => return Poll::Ready(Ok(filled)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && filled > 0 => {
                return Poll::Ready(Ok(filled));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// Reads and drops what is left of a request body, up to `MAX_DRAIN`
/// bytes; whether it ended (the connection can carry the next request).
async fn drain_body(stream: &TcpStream, read: &mut BytesMut, mut decode: Decode) -> bool {
    let mut dropped = 0u64;
    loop {
        match decode.step(read) {
            Ok(Step::Data(data)) => {
                dropped += data.len() as u64;
                if dropped > MAX_DRAIN {
                    return false;
                }
            }
            Ok(Step::End) => return true,
            Ok(Step::More) => {
                reserve_read_room(read);
                let filled = std::future::poll_fn(|cx| poll_fill(stream, read, cx)).await;
                if !matches!(filled, Ok(n) if n > 0) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

/// What a request body and its connection share while the exchange runs.
struct BodyReader {
    /// None once the exchange is over.
    stream: Option<Arc<TcpStream>>,
    read: BytesMut,
    decode: Decode,
    /// The body failed (or the exchange is over): it reads no more.
    failed: bool,
}

fn lock(reader: &Mutex<BodyReader>) -> MutexGuard<'_, BodyReader> {
    reader.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A client's request body, streamed from its connection.
struct RequestBody(Arc<Mutex<BodyReader>>);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut guard = lock(&self.0);
        let reader = &mut *guard;
        loop {
            if reader.failed {
                return Poll::Ready(Some(Err("the request body was cut short".into())));
            }
            match reader.decode.step(&mut reader.read) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(e) => {
                    reader.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(stream) = reader.stream.as_ref() else {
                reader.failed = true;
                continue;
            };
            reserve_read_room(&mut reader.read);
            match ready!(poll_fill(stream, &mut reader.read, cx)) {
                Ok(0) => {
                    reader.failed = true;
                    return Poll::Ready(Some(Err(
                        "the client closed the connection mid-body".into()
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    reader.failed = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.0).decode == Decode::Done
    }

    fn size_hint(&self) -> SizeHint {
        match lock(&self.0).decode {
            Decode::Length(left) => SizeHint::with_exact(left),
            Decode::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefixed::Prefixed;
    use http_body_util::{Full, StreamBody};
    use hyper::header::HeaderValue;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// What the test server answers: by path.
    async fn answer(request: Request<ProxyBody>) -> Response<ProxyBody> {
        let (head, body) = request.into_parts();
        let text = |text: String| Full::new(Bytes::from(text)).map_err(|n| match n {}).boxed();
        let mut response = match head.uri.path() {
            // Does not read the body.
            "/ignore" => Response::new(text("ignored".into())),
            "/nocontent" => {
                let mut response = Response::new(text("never sent".into()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            // A body of unknown length.
            "/stream" => {
                let frames = ["one,", "two"].map(|s| Ok(Frame::data(Bytes::from(s))));
                Response::new(StreamBody::new(futures::stream::iter(frames)).boxed())
            }
            _ => {
                let echoed = match body.collect().await {
                    Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                    Err(e) => format!("body failed: {e}"),
                };
                let headers: Vec<String> = head
                    .headers
                    .iter()
                    .map(|(n, v)| format!("{n}={}", v.to_str().unwrap_or("?")))
                    .collect();
                let version = if head.version == Version::HTTP_10 {
                    "1.0"
                } else {
                    "1.1"
                };
                Response::new(text(format!(
                    "{} {} {version} [{}] {echoed}",
                    head.method,
                    head.uri,
                    headers.join(" ")
                )))
            }
        };
        response
            .headers_mut()
            .insert(header::DATE, HeaderValue::from_static("then"));
        response
    }

    /// A connection to a test server; the server's end of it is returned
    /// by the handle (Some: handed to hyper).
    async fn connect() -> (
        TcpStream,
        tokio::task::JoinHandle<Option<ToHyper>>,
        watch::Sender<()>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let (drain, mut receiver) = watch::channel(());
        let served = tokio::spawn(async move { serve(server, &mut receiver, answer).await });
        (client, served, drain)
    }

    /// Everything the server answers to `input` (sent whole, then the
    /// client's end of sending) until it closes.
    async fn roundtrip(input: &[u8]) -> String {
        let (mut client, served, _drain) = connect().await;
        client.write_all(input).await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut answer = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut answer),
        )
        .await
        .expect("the server closes in time")
        .expect("read");
        served.await.expect("server task");
        String::from_utf8_lossy(&answer).into_owned()
    }

    fn statuses(answer: &str) -> Vec<&str> {
        answer
            .match_indices("HTTP/1.")
            .map(|(i, _)| &answer[i + 9..i + 12])
            .collect()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let answer = roundtrip(
            b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nX-Y: z\r\n\r\n",
        )
        .await;
        let first = answer.find("GET /a?x=1 1.1 [host=h] ").expect(&answer);
        let second = answer.find("GET /b 1.1 [host=h x-y=z] ").expect(&answer);
        assert!(first < second, "{answer}");
        assert_eq!(statuses(&answer), ["200", "200"], "{answer}");
        assert!(!answer.contains("connection: close"), "{answer}");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\ndate: then\r\ncontent-length: "));
    }

    #[tokio::test]
    async fn request_bodies_are_streamed_by_length_or_chunks() {
        let answer = roundtrip(
            b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
              POST /e HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
              3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n\
              GET /e HTTP/1.1\r\nHost: h\r\n\r\n",
        )
        .await;
        assert_eq!(statuses(&answer), ["200", "200", "200"], "{answer}");
        assert!(answer.contains("content-length=5] hello"), "{answer}");
        assert!(
            answer.contains("transfer-encoding=chunked] abcde"),
            "{answer}"
        );
        assert!(answer.contains("GET /e 1.1 [host=h] "), "{answer}");
    }

    #[tokio::test]
    async fn keep_alive_follows_the_version_and_connection_options() {
        // HTTP/1.0 closes unless asked to keep the connection.
        let answer = roundtrip(b"GET /1 HTTP/1.0\r\n\r\nGET /2 HTTP/1.0\r\n\r\n").await;
        assert_eq!(statuses(&answer), ["200"], "{answer}");
        assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
        let answer = roundtrip(
            b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\nGET /3 HTTP/1.0\r\n\r\n",
        )
        .await;
        assert_eq!(statuses(&answer), ["200", "200"], "{answer}");
        assert!(answer.contains("connection: keep-alive\r\n"), "{answer}");
        // `Connection: close` in HTTP/1.1: the last response says so.
        let answer =
            roundtrip(b"GET /1 HTTP/1.1\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n\r\n").await;
        assert_eq!(statuses(&answer), ["200"], "{answer}");
        assert!(answer.contains("connection: close\r\n"), "{answer}");
    }

    #[tokio::test]
    async fn response_bodies_are_framed_by_length_chunks_or_close() {
        let answer = roundtrip(b"GET /stream HTTP/1.1\r\n\r\n").await;
        assert!(
            answer
                .ends_with("transfer-encoding: chunked\r\n\r\n4\r\none,\r\n3\r\ntwo\r\n0\r\n\r\n"),
            "{answer}"
        );
        // HTTP/1.0 has no chunks: the body ends with the connection.
        let answer = roundtrip(
            b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n",
        )
        .await;
        assert_eq!(statuses(&answer), ["200"], "{answer}");
        assert!(answer.ends_with("date: then\r\n\r\none,two"), "{answer}");
        // No body for HEAD (its length is told), 204.
        let answer = roundtrip(b"HEAD /x HTTP/1.1\r\n\r\nGET /nocontent HTTP/1.1\r\n\r\n").await;
        assert_eq!(statuses(&answer), ["200", "204"], "{answer}");
        assert!(answer.contains("content-length: "), "{answer}");
        assert!(!answer.contains("HEAD /x"), "{answer}");
        assert!(
            answer.ends_with("HTTP/1.1 204 No Content\r\ndate: then\r\n\r\n"),
            "{answer}"
        );
    }

    #[test]
    fn a_backends_fields_are_written_as_received_with_the_framing_ours() {
        let encoded = |status: StatusCode, head_request: bool, dated: bool| {
            let body = Full::new(Bytes::from("hello")).map_err(|n| match n {});
            let mut response = Response::new(body);
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert("x-added", HeaderValue::from_static("1"));
            response.extensions_mut().insert(ResponseFields {
                lines: if dated {
                    b"server: s\r\ndate: then\r\n".to_vec()
                } else {
                    b"server: s\r\n".to_vec()
                },
                content_length: Some(5),
                dated,
            });
            let mut write = Vec::new();
            let (_, framing) = encode_head(&mut write, response, head_request, false, &mut true);
            (String::from_utf8(write).expect("ascii"), framing)
        };
        let (head, framing) = encoded(StatusCode::OK, false, true);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nx-added: 1\r\nserver: s\r\ndate: then\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!(framing, Framing::Length(5));
        // HEAD and 304 tell the received length; a Date is added when none came.
        for (status, head_request) in [(StatusCode::OK, true), (StatusCode::NOT_MODIFIED, false)] {
            let (head, framing) = encoded(status, head_request, false);
            assert!(
                head.contains("server: s\r\ncontent-length: 5\r\ndate: "),
                "{head}"
            );
            assert_eq!(head.matches("content-length").count(), 1, "{head}");
            assert_eq!(framing, Framing::None);
        }
        let (head, _) = encoded(StatusCode::NO_CONTENT, false, true);
        assert!(!head.contains("content-length"), "{head}");
    }

    #[tokio::test]
    async fn an_unread_body_is_drained_when_small_else_the_connection_closes() {
        let answer = roundtrip(
            b"POST /ignore HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /next HTTP/1.1\r\n\r\n",
        )
        .await;
        assert_eq!(statuses(&answer), ["200", "200"], "{answer}");
        assert!(answer.contains("GET /next"), "{answer}");
        let mut big = format!(
            "POST /ignore HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_DRAIN + 10
        )
        .into_bytes();
        big.resize(big.len() + MAX_DRAIN as usize + 10, b'x');
        big.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let answer = roundtrip(&big).await;
        assert_eq!(statuses(&answer), ["200"], "{answer}");
    }

    #[tokio::test]
    async fn invalid_requests_are_refused_and_the_connection_closed() {
        let cases: &[(&[u8], &str)] = &[
            (b"NOT HTTP AT ALL\r\n\r\n", "400"),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "400",
            ),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "400"),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                "400",
            ),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "501",
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "400",
            ),
        ];
        for (request, status) in cases {
            let mut input = request.to_vec();
            input.extend_from_slice(b"GET /after HTTP/1.1\r\n\r\n");
            let answer = roundtrip(&input).await;
            assert_eq!(statuses(&answer), [*status], "{answer}");
            assert!(answer.contains("connection: close\r\n"), "{answer}");
        }
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let answer = roundtrip(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).await;
        assert_eq!(statuses(&answer), ["431"], "{answer}");
        let long = "x".repeat(MAX_HEAD_BYTES);
        let answer = roundtrip(format!("GET / HTTP/1.1\r\nX: {long}\r\n\r\n").as_bytes()).await;
        assert_eq!(statuses(&answer), ["431"], "{answer}");
        // A head cut short by the client's close gets no answer.
        assert_eq!(roundtrip(b"GET / HTTP/1.1\r\nHost").await, "");
    }

    #[tokio::test]
    async fn content_length_with_chunked_is_read_as_chunked_then_closed() {
        let answer = roundtrip(
            b"POST /e HTTP/1.1\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        )
        .await;
        assert_eq!(statuses(&answer), ["200"], "{answer}");
        assert!(
            answer.contains("[transfer-encoding=chunked] ok"),
            "{answer}"
        );
        assert!(answer.contains("connection: close\r\n"), "{answer}");
    }

    #[tokio::test]
    async fn upgrades_connect_and_expect_go_to_hyper_with_the_bytes_read() {
        for head in [
            "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        ] {
            let (mut client, served, _drain) = connect().await;
            // A request served inline first: the handover comes after it.
            let first = "GET / HTTP/1.1\r\n\r\n";
            client.write_all(first.as_bytes()).await.expect("write");
            let mut answer = [0u8; 12];
            client.read_exact(&mut answer).await.expect("read");
            assert_eq!(&answer, b"HTTP/1.1 200");
            client.write_all(head.as_bytes()).await.expect("write");
            let handed = served.await.expect("server task").expect("handed to hyper");
            assert_eq!(handed.read, head.as_bytes());
            // The rewind replays them, then reads the socket.
            client.write_all(b"more").await.expect("write");
            let mut rewind = Prefixed::new(handed.read, handed.stream);
            let mut replayed = vec![0u8; head.len() + 4];
            rewind.read_exact(&mut replayed).await.expect("replay");
            assert_eq!(replayed, [head.as_bytes(), b"more"].concat());
        }
        // An `Upgrade` in HTTP/1.0 means nothing: served inline.
        let answer = roundtrip(b"GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n").await;
        assert_eq!(statuses(&answer), ["200"], "{answer}");
    }

    #[tokio::test]
    async fn a_drain_closes_an_idle_connection_and_a_busy_one_after_its_response() {
        let (mut client, served, drain) = connect().await;
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut answer = [0u8; 12];
        client.read_exact(&mut answer).await.expect("read");
        drain.send(()).expect("send");
        assert!(served.await.expect("server task").is_none());
        // A head under way when the drain comes is answered, with a close.
        let (mut client, served, drain) = connect().await;
        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drain.send(()).expect("send");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        client.write_all(b"\r\n").await.expect("write");
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("read");
        assert_eq!(statuses(&answer), ["200"], "{answer}");
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        assert!(served.await.expect("server task").is_none());
    }

    /// Valid requests the random ones are made from.
    const SEEDS: [&[u8]; 4] = [
        b"GET /a?b HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n",
        b"POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
        b"PUT http://h/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
        b"OPTIONS * HTTP/1.0\r\nContent-Length: 1, 1\r\nUpgrade: x\r\n\r\nz",
    ];

    /// Parses `input` as a connection does: heads, and each one's body
    /// decoded from what follows it. Whatever the bytes, no panic.
    fn parse_all(input: &[u8]) {
        let mut read = BytesMut::from(input);
        let mut fields = Vec::new();
        for _ in 0..8 {
            let Ok(Parsed::Head(head)) = parse_head(&mut read, &mut fields) else {
                return;
            };
            let mut decode = head.body;
            loop {
                match decode.step(&mut read) {
                    Ok(Step::Data(_)) => {}
                    Ok(Step::End) => break,
                    Ok(Step::More) | Err(_) => return,
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_and_mangled_requests_never_panic(
            seed in 0..SEEDS.len(),
            cut in 0usize..200,
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..6),
            noise in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut input = SEEDS[seed].repeat(2);
            for (at, byte) in flips {
                if let Some(b) = input.get_mut(at) {
                    *b = byte;
                }
            }
            input.truncate(cut.max(1));
            parse_all(&input);
            parse_all(&noise);
            let mut chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            chunked.extend_from_slice(&noise);
            parse_all(&chunked);
        }
    }

    #[tokio::test]
    async fn random_requests_through_the_server_end_with_an_answer_or_a_close() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let seed = SEEDS[rng.usize(..SEEDS.len())];
            let mut input = seed.repeat(2);
            for _ in 0..rng.usize(0..4) {
                let at = rng.usize(..input.len());
                input[at] = rng.u8(..);
            }
            input.truncate(rng.usize(1..=input.len()));
            // Bounded by roundtrip's timeout; a panic would fail the task.
            let _ = roundtrip(&input).await;
        }
    }
}
