//! Clients and backends the end-to-end tests run inside network namespaces.
//!
//!   test-peer tcp-echo ADDR            echo every byte back, per connection
//!   test-peer http-echo ADDR NAME      answer 200 with what the request carried
//!   test-peer http-echo-log ADDR NAME FILE   http-echo, appending "METHOD PATH" of
//!                                      each request to FILE (" body=BODY" when it has one)
//!   test-peer http-echo-delayed ADDR NAME MILLIS   http-echo, answering after MILLIS
//!   test-peer http-request ADDR METHOD PATH HOST [NAME:VALUE...] [body=TEXT]
//!                                      one request; print status line, response
//!                                      headers ("name: value"), blank line, body
//!   test-peer h2c-get ADDR PATH HOST   one GET over HTTP/2 with prior knowledge
//!                                      (no TLS); print status, version and body
//!   test-peer upgrade-echo ADDR        answer an HTTP/1.1 Upgrade with 101, then echo
//!                                      every byte (what a WebSocket backend does)
//!   test-peer upgrade-send ADDR HOST PATH MESSAGE
//!                                      Upgrade, print the status line, send MESSAGE
//!                                      on the upgraded connection, print the reply
//!   test-peer grpc-echo ADDR NAME      gRPC over h2c: every RPC answers OK with one
//!                                      message: backend, path, authority, headers
//!   test-peer grpc-call ADDR AUTHORITY /SERVICE/METHOD [NAME:VALUE...]
//!                                      one unary RPC (tonic); print "code=CODE"
//!                                      and the reply message
//!   test-peer tcp-send ADDR MESSAGE    send, half-close, print the reply
//!   test-peer http-get ADDR PATH HOST  one GET, print status line and body
//!   test-peer udp-echo ADDR            echo every datagram back to its sender
//!   test-peer udp-send ADDR MESSAGE    send one datagram, print the reply
//!
//! Clients exit 1 (message on stderr) on any failure, within 5 seconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["tcp-echo", addr] => tcp_echo(addr),
        ["http-echo", addr, name] => http_echo(addr, name, Duration::ZERO, None),
        ["http-echo-log", addr, name, file] => http_echo(addr, name, Duration::ZERO, Some(file)),
        ["http-echo-delayed", addr, name, millis] => match millis.parse() {
            Ok(ms) => http_echo(addr, name, Duration::from_millis(ms), None),
            Err(e) => Err(format!("{millis}: {e}")),
        },
        ["http-request", addr, method, path, host, headers @ ..] => {
            http_request(addr, method, path, host, headers)
        }
        ["h2c-get", addr, path, host] => grpc::h2c_get(addr, path, host),
        ["upgrade-echo", addr] => upgrade_echo(addr),
        ["upgrade-send", addr, host, path, message] => upgrade_send(addr, host, path, message),
        ["grpc-echo", addr, name] => grpc::echo(addr, name),
        ["grpc-call", addr, authority, method, metadata @ ..] => {
            grpc::call(addr, authority, method, metadata)
        }
        ["tcp-send", addr, message] => tcp_send(addr, message),
        ["http-get", addr, path, host] => http_get(addr, path, host),
        ["udp-echo", addr] => udp_echo(addr),
        ["udp-send", addr, message] => udp_send(addr, message),
        _ => Err("usage: see the comment at the top of test_peer.rs".to_string()),
    };
    if let Err(e) = result {
        eprintln!("test-peer: {e}");
        std::process::exit(1);
    }
}

fn listen(addr: &str) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening on {addr}");
    Ok(listener)
}

fn tcp_echo(addr: &str) -> Result<(), String> {
    for stream in listen(addr)?.incoming().flatten() {
        std::thread::spawn(move || {
            let mut reader = &stream;
            let mut writer = &stream;
            let _ = std::io::copy(&mut reader, &mut writer);
        });
    }
    Ok(())
}

fn http_echo(addr: &str, name: &str, delay: Duration, log: Option<&str>) -> Result<(), String> {
    for stream in listen(addr)?.incoming().flatten() {
        let name = name.to_string();
        let log = log.map(str::to_string);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(&stream);
            loop {
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                    return;
                }
                let mut parts = request_line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let mut body = format!("backend={name}\nmethod={method}\npath={path}\n");
                let mut content_length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        let k = k.trim().to_ascii_lowercase();
                        if k == "content-length" {
                            content_length = v.trim().parse().unwrap_or(0);
                        }
                        body.push_str(&format!("header:{k}={}\n", v.trim()));
                    }
                }
                let mut discard = vec![0; content_length];
                if reader.read_exact(&mut discard).is_err() {
                    return;
                }
                if let Some(log) = &log {
                    let line = if discard.is_empty() {
                        format!("{method} {path}\n")
                    } else {
                        format!(
                            "{method} {path} body={}\n",
                            String::from_utf8_lossy(&discard)
                        )
                    };
                    let appended = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(log)
                        .and_then(|mut f| f.write_all(line.as_bytes()));
                    if let Err(e) = appended {
                        eprintln!("test-peer: {log}: {e}");
                    }
                }
                std::thread::sleep(delay);
                let mut writer = &stream;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if writer.write_all(response.as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

fn tcp_send(addr: &str, message: &str) -> Result<(), String> {
    let mut stream = connect(addr)?;
    stream
        .write_all(message.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| format!("receive: {e}"))?;
    print!("{reply}");
    Ok(())
}

fn http_get(addr: &str, path: &str, host: &str) -> Result<(), String> {
    let mut stream = connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("receive: {e}"))?;
    let status = response.lines().next().unwrap_or_default();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    print!("{status}\n{body}");
    Ok(())
}

fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    host: &str,
    headers: &[&str],
) -> Result<(), String> {
    let mut stream = connect(addr)?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    let mut body = "";
    for header in headers {
        if let Some(text) = header.strip_prefix("body=") {
            body = text;
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
            continue;
        }
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("header {header:?} is not NAME:VALUE"))?;
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("receive: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.split("\r\n");
    println!("{}", lines.next().unwrap_or_default());
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            println!("{}: {}", name.trim().to_ascii_lowercase(), value.trim());
        }
    }
    print!("\n{body}");
    Ok(())
}

/// Reads an HTTP head (up to the blank line) byte by byte, so that nothing
/// after it is consumed.
fn read_head(stream: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err("head too long".into());
        }
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return Err("connection closed in the head".into()),
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn upgrade_echo(addr: &str) -> Result<(), String> {
    for mut stream in listen(addr)?.incoming().flatten() {
        std::thread::spawn(move || {
            let Ok(head) = read_head(&mut stream) else {
                return;
            };
            let protocol = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("upgrade")
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_default();
            let reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {protocol}\r\nConnection: Upgrade\r\n\r\n"
            );
            if stream.write_all(reply.as_bytes()).is_ok() {
                let mut reader = &stream;
                let mut writer = &stream;
                let _ = std::io::copy(&mut reader, &mut writer);
            }
        });
    }
    Ok(())
}

fn upgrade_send(addr: &str, host: &str, path: &str, message: &str) -> Result<(), String> {
    let mut stream = connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let head = read_head(&mut stream)?;
    println!("{}", head.lines().next().unwrap_or_default());
    if !head.starts_with("HTTP/1.1 101") {
        return Ok(());
    }
    stream
        .write_all(message.as_bytes())
        .map_err(|e| format!("send upgraded: {e}"))?;
    let mut reply = vec![0u8; message.len()];
    stream
        .read_exact(&mut reply)
        .map_err(|e| format!("receive upgraded: {e}"))?;
    println!("{}", String::from_utf8_lossy(&reply));
    Ok(())
}

fn udp_echo(addr: &str) -> Result<(), String> {
    let socket = std::net::UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let mut buf = [0u8; 65536];
    loop {
        let (n, from) = socket.recv_from(&mut buf).map_err(|e| e.to_string())?;
        let _ = socket.send_to(&buf[..n], from);
    }
}

fn udp_send(addr: &str, message: &str) -> Result<(), String> {
    let target: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let local = if target.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let socket = std::net::UdpSocket::bind(local).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    socket
        .connect(addr)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    socket
        .send(message.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 65536];
    let n = socket.recv(&mut buf).map_err(|e| format!("receive: {e}"))?;
    print!("{}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}

/// A gRPC echo backend and a gRPC client, for GRPCRoute tests. Messages are
/// raw bytes (no protobuf schema): the framing, HTTP/2 and status trailers are
/// real gRPC.
mod grpc {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::{Buf, BufMut, Bytes};
    use http_body_util::BodyExt;
    use hyper::body::{Body, Frame, Incoming};
    use hyper::header::{HeaderMap, HeaderValue};
    use hyper::{Request, Response};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    use super::TIMEOUT;

    fn runtime() -> Result<tokio::runtime::Runtime, String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    }

    /// One length-prefixed message, then `grpc-status: 0` in the trailers.
    struct Reply {
        message: Option<Bytes>,
        trailers: Option<HeaderMap>,
    }

    impl Body for Reply {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if let Some(message) = self.message.take() {
                return Poll::Ready(Some(Ok(Frame::data(message))));
            }
            Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
        }
    }

    async fn answer(
        request: Request<Incoming>,
        name: String,
    ) -> Result<Response<Reply>, Infallible> {
        let mut text = format!(
            "backend={name}\npath={}\nauthority={}\n",
            request.uri().path(),
            request.uri().authority().map_or("", |a| a.as_str())
        );
        for (key, value) in request.headers() {
            text.push_str(&format!(
                "header:{key}={}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        // The request message is read and ignored.
        let _ = request.into_body().collect().await;
        let mut framed = Vec::with_capacity(text.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&(text.len() as u32).to_be_bytes());
        framed.extend_from_slice(text.as_bytes());
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut response = Response::new(Reply {
            message: Some(framed.into()),
            trailers: Some(trailers),
        });
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        Ok(response)
    }

    pub fn echo(addr: &str, name: &str) -> Result<(), String> {
        runtime()?.block_on(async {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("bind {addr}: {e}"))?;
            println!("listening on {addr}");
            loop {
                let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
                let name = name.to_string();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| answer(request, name.clone()));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    }

    /// Messages as they are: bytes in, bytes out.
    #[derive(Clone, Copy, Default)]
    struct RawCodec;

    impl Codec for RawCodec {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = RawCodec;
        type Decoder = RawCodec;

        fn encoder(&mut self) -> Self::Encoder {
            RawCodec
        }
        fn decoder(&mut self) -> Self::Decoder {
            RawCodec
        }
    }

    impl Encoder for RawCodec {
        type Item = Bytes;
        type Error = tonic::Status;

        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            dst.put(item);
            Ok(())
        }
    }

    impl Decoder for RawCodec {
        type Item = Bytes;
        type Error = tonic::Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }

    pub fn h2c_get(addr: &str, path: &str, host: &str) -> Result<(), String> {
        runtime()?.block_on(async {
            let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| format!("connect {addr}: timed out"))?
                .map_err(|e| format!("connect {addr}: {e}"))?;
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(connection);
            let request = Request::builder()
                .uri(format!("http://{host}{path}"))
                .body(http_body_util::Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let exchange = async {
                let response = sender.send_request(request).await?;
                let status = response.status();
                let version = response.version();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, version, body))
            };
            let (status, version, body) = tokio::time::timeout(TIMEOUT, exchange)
                .await
                .map_err(|_| "request timed out".to_string())?
                .map_err(|e| format!("request: {e}"))?;
            print!("{version:?} {status}\n{}", String::from_utf8_lossy(&body));
            Ok(())
        })
    }

    pub fn call(
        addr: &str,
        authority: &str,
        method: &str,
        metadata: &[&str],
    ) -> Result<(), String> {
        runtime()?.block_on(async {
            let origin = format!("http://{authority}")
                .parse()
                .map_err(|e| format!("authority {authority}: {e}"))?;
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| e.to_string())?
                .origin(origin)
                .connect_timeout(TIMEOUT)
                .timeout(TIMEOUT)
                .connect()
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            let mut client = tonic::client::Grpc::new(channel);
            client.ready().await.map_err(|e| e.to_string())?;
            let mut request = tonic::Request::new(Bytes::from_static(b"ping"));
            for entry in metadata {
                let (key, value) = entry
                    .split_once(':')
                    .ok_or_else(|| format!("metadata {entry:?} is not NAME:VALUE"))?;
                let key: tonic::metadata::MetadataKey<tonic::metadata::Ascii> =
                    key.parse().map_err(|_| format!("metadata key {key:?}"))?;
                let value = value
                    .parse()
                    .map_err(|_| format!("metadata value {value:?}"))?;
                request.metadata_mut().insert(key, value);
            }
            let path = method
                .parse()
                .map_err(|e| format!("method {method}: {e}"))?;
            match client.unary(request, path, RawCodec).await {
                Ok(response) => {
                    println!("code=Ok");
                    print!("{}", String::from_utf8_lossy(response.get_ref()));
                }
                Err(status) => println!("code={:?}\nmessage={}", status.code(), status.message()),
            }
            Ok(())
        })
    }
}
