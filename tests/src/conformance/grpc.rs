//! gRPC for the conformance cases, hand-built on hyper's HTTP/2: the
//! `GrpcEcho` service of echo-basic (`echo-basic/grpcecho.proto`: `Echo` and
//! `EchoTwo` answer an `EchoResponse`, `EchoThree` is unimplemented) and the
//! client call grpc-go makes (h2c, `application/grpc`, status from trailers,
//! HTTP statuses mapped to codes as grpc-go maps them). The messages are
//! small enough to encode by hand: only string, message and repeated fields.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::echo::PodInfo;

pub const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

/// gRPC status codes by name, in code order.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

pub fn code_name(code: u32) -> &'static str {
    CODES.get(code as usize).copied().unwrap_or("Unknown")
}

// === protobuf (proto3, length-delimited fields only) ===

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends field `field` (wire type 2) unless it is empty (proto3 default).
fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The length-delimited fields of a message as (field number, bytes); other
/// wire types are skipped.
pub fn fields(buf: &[u8]) -> Option<Vec<(u32, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        let (field, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => {
                varint(buf, &mut at)?;
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = varint(buf, &mut at)? as usize;
                out.push((field, buf.get(at..at.checked_add(len)?)?));
                at += len;
            }
            _ => return None,
        }
    }
    (at == buf.len()).then_some(out)
}

fn field(buf: &[u8], number: u32) -> &[u8] {
    fields(buf)
        .unwrap_or_default()
        .into_iter()
        .find(|(n, _)| *n == number)
        .map_or(&[][..], |(_, b)| b)
}

/// What the client reads from an `EchoResponse`.
#[derive(Debug, Default)]
pub struct EchoAssertions {
    pub fully_qualified_method: String,
    pub authority: String,
    pub namespace: String,
    pub pod: String,
}

pub fn decode_echo_response(message: &[u8]) -> EchoAssertions {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let assertions = field(message, 1);
    let context = field(assertions, 4);
    EchoAssertions {
        fully_qualified_method: text(field(assertions, 1)),
        authority: text(field(assertions, 3)),
        namespace: text(field(context, 1)),
        pod: text(field(context, 4)),
    }
}

fn encode_echo_response(
    method: &str,
    headers: &[(String, String)],
    authority: &str,
    pod: &PodInfo,
    tls: Option<&serde_json::Value>,
) -> Vec<u8> {
    let mut assertions = Vec::new();
    put_bytes(&mut assertions, 1, method.as_bytes());
    for (k, v) in headers {
        let mut h = Vec::new();
        put_bytes(&mut h, 1, k.as_bytes());
        put_bytes(&mut h, 2, v.as_bytes());
        put_bytes(&mut assertions, 2, &h);
    }
    put_bytes(&mut assertions, 3, authority.as_bytes());
    let mut context = Vec::new();
    put_bytes(&mut context, 1, pod.namespace.as_bytes());
    put_bytes(&mut context, 3, pod.service.as_bytes());
    put_bytes(&mut context, 4, pod.pod.as_bytes());
    put_bytes(&mut assertions, 4, &context);
    if let Some(tls) = tls {
        let s = |k: &str| tls[k].as_str().unwrap_or("").as_bytes().to_vec();
        let mut t = Vec::new();
        put_bytes(&mut t, 1, &s("version"));
        put_bytes(&mut t, 2, &s("negotiatedProtocol"));
        put_bytes(&mut t, 3, &s("serverName"));
        put_bytes(&mut t, 4, &s("cipherSuite"));
        for c in tls["peerCertificates"].as_array().into_iter().flatten() {
            put_bytes(&mut t, 5, c.as_str().unwrap_or("").as_bytes());
        }
        // An empty TLSAssertions still marks a TLS connection.
        put_varint(&mut assertions, 5 << 3 | 2);
        put_varint(&mut assertions, t.len() as u64);
        assertions.extend_from_slice(&t);
    }
    let mut response = Vec::new();
    put_bytes(&mut response, 1, &assertions);
    response
}

/// A gRPC length-prefixed message (uncompressed).
fn frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// The first message of a gRPC body.
fn unframe(body: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
    body.get(5..5 + len)
}

// === server ===

type GrpcBody = http_body_util::StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
>;

fn grpc_response(frames: Vec<Frame<Bytes>>, status_in_headers: Option<u32>) -> Response<GrpcBody> {
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(
        frames.into_iter().map(Ok).collect::<Vec<_>>(),
    ));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert("content-type", "application/grpc".parse().expect("value"));
    if let Some(code) = status_in_headers {
        h.insert("grpc-status", code.into());
        h.insert(
            "grpc-message",
            format!("method not implemented: {}", code_name(code))
                .parse()
                .expect("value"),
        );
    }
    response
}

/// Answers one RPC like echo-basic's gRPC mode.
pub async fn handle(
    req: Request<Incoming>,
    pod: &PodInfo,
    tls: Option<&serde_json::Value>,
) -> Response<GrpcBody> {
    let path = req.uri().path().to_string();
    let method = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(SERVICE))
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or("");
    if !matches!(method, "Echo" | "EchoTwo") {
        // Trailers-only response: UNIMPLEMENTED.
        return grpc_response(Vec::new(), Some(12));
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let mut headers = vec![(":authority".to_string(), authority.clone())];
    for (k, v) in req.headers() {
        headers.push((
            k.as_str().to_string(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        ));
    }
    let _ = req.into_body().collect().await;
    let message = encode_echo_response(&path, &headers, &authority, pod, tls);
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", 0.into());
    grpc_response(
        vec![Frame::data(frame(&message)), Frame::trailers(trailers)],
        None,
    )
}

// === client ===

/// One finished RPC: its status code and, for OK, what the backend echoed.
#[derive(Debug)]
pub struct RpcResult {
    pub code: u32,
    pub echo: Option<EchoAssertions>,
}

/// grpc-go's mapping of an HTTP status without `grpc-status`.
fn code_from_http(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// Calls `full_method` with an empty request over h2c on a new connection.
/// `Err` is a connection-level failure ("not ready yet" for the suite).
pub async fn call(
    addr: SocketAddr,
    authority: &str,
    full_method: &str,
    metadata: &[(String, String)],
) -> Result<RpcResult, String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(conn);
        let mut builder = Request::builder()
            .method("POST")
            .uri(format!("http://{authority}{full_method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "grpc-go/1.70.0");
        for (k, v) in metadata {
            builder = builder.header(k.to_lowercase(), v.as_str());
        }
        let request = builder
            .body(Full::new(frame(&[])))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let header_code = grpc_status(response.headers());
        let collected = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
        let trailer_code = collected.trailers().and_then(grpc_status);
        let body = collected.to_bytes();
        let code = match (status, header_code.or(trailer_code)) {
            (200, Some(code)) => code,
            // No grpc-status on a 200: grpc-go reports an Internal error.
            (200, None) => 13,
            (status, _) => code_from_http(status),
        };
        let echo = (code == 0)
            .then(|| unframe(&body).map(decode_echo_response))
            .flatten();
        Ok(RpcResult { code, echo })
    };
    tokio::time::timeout(super::client::REQUEST_TIMEOUT, attempt)
        .await
        .map_err(|_| "no answer within the request timeout".to_string())?
}

fn grpc_status(headers: &hyper::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_response_round_trips_through_the_encoding() {
        let pod = PodInfo {
            namespace: "gateway-conformance-infra".into(),
            pod: "grpc-infra-backend-v1-abc-def".into(),
            service: String::new(),
            http_port: "3000".into(),
        };
        let full = format!("/{SERVICE}/Echo");
        let message = encode_echo_response(
            &full,
            &[("x".into(), "y".into())],
            "example.com",
            &pod,
            None,
        );
        let echoed = decode_echo_response(unframe(&frame(&message)).expect("framed"));
        assert_eq!(echoed.fully_qualified_method, full);
        assert_eq!(echoed.authority, "example.com");
        assert_eq!(echoed.namespace, "gateway-conformance-infra");
        assert_eq!(echoed.pod, "grpc-infra-backend-v1-abc-def");
    }

    #[test]
    fn malformed_messages_are_rejected() {
        assert!(fields(&[0x0a, 0x05, b'a']).is_none());
        assert!(fields(&[0xff]).is_none());
    }
}
