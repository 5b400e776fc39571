//! Local stand-ins for the suite's `echo-basic` pods (HTTP, HTTPS, h2c, TCP,
//! UDP) and its CoreDNS, in-process: one set of listeners per pod, on the
//! pod's own loopback address and the container's real ports, answering with
//! the fields echo-basic sends (kubernetes-sigs/gateway-api-conformance-images
//! v0.1.0, `echo-basic/echo-basic.go`).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// What a pod reports about itself (echo-basic reads these from its env).
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub namespace: String,
    pub pod: String,
    pub service: String,
    pub http_port: String,
}

/// The request URIs every pod of a Deployment echoed, like echo-basic's
/// `Echoing back request made to ...` log lines (the mirror checks read it).
#[derive(Clone, Default)]
pub struct RequestLog(Arc<Mutex<HashMap<String, Vec<String>>>>);

impl RequestLog {
    pub fn record(&self, deployment: &str, uri: &str) {
        self.0
            .lock()
            .expect("request log")
            .entry(deployment.to_string())
            .or_default()
            .push(uri.to_string());
    }

    /// How many times the Deployment's pods echoed `uri`.
    pub fn count(&self, deployment: &str, uri: &str) -> usize {
        self.0
            .lock()
            .expect("request log")
            .get(deployment)
            .map_or(0, |l| l.iter().filter(|u| *u == uri).count())
    }

    pub fn contains(&self, deployment: &str, uri: &str) -> bool {
        self.0
            .lock()
            .expect("request log")
            .get(deployment)
            .is_some_and(|l| l.iter().any(|u| u == uri))
    }
}

/// TLS material of a pod's TLS port.
#[derive(Clone)]
pub struct PodTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// Client certificates are verified against this CA when presented.
    pub client_ca_pem: Option<String>,
}

/// The running listeners of every pod; aborted on drop.
#[derive(Default)]
pub struct Fleet {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct HttpPod {
    info: PodInfo,
    deployment: String,
    log: RequestLog,
    /// Attempts per uuid of the retry simulator.
    retries: Mutex<HashMap<String, u32>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HttpFlavor {
    Http1,
    H2c,
}

impl Fleet {
    /// echo-basic in HTTP mode: HTTP/1.1 on `http`, h2c on `h2c`, HTTPS on
    /// `https` when the pod has TLS material.
    pub async fn http_pod(
        &mut self,
        addr: Ipv4Addr,
        info: PodInfo,
        deployment: &str,
        log: &RequestLog,
        ports: (u16, u16, u16),
        tls: Option<PodTls>,
    ) -> std::io::Result<()> {
        let pod = Arc::new(HttpPod {
            info,
            deployment: deployment.to_string(),
            log: log.clone(),
            retries: Mutex::new(HashMap::new()),
        });
        let (http, h2c, https) = ports;
        for (port, flavor) in [(http, HttpFlavor::Http1), (h2c, HttpFlavor::H2c)] {
            let listener = TcpListener::bind((addr, port)).await?;
            let pod = pod.clone();
            self.tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, peer)) = listener.accept().await else {
                        continue;
                    };
                    let pod = pod.clone();
                    tokio::spawn(serve_http(stream, peer, pod, flavor, None));
                }
            }));
        }
        if let Some(tls) = tls {
            let config = Arc::new(server_config(&tls, &[b"h2", b"http/1.1"])?);
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let listener = TcpListener::bind((addr, https)).await?;
            self.tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, peer)) = listener.accept().await else {
                        continue;
                    };
                    let (pod, acceptor) = (pod.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                                .await
                        else {
                            return;
                        };
                        let info = tls_info(stream.get_ref().1);
                        serve_http(stream, peer, pod, HttpFlavor::Http1, Some(info)).await;
                    });
                }
            }));
        }
        Ok(())
    }

    /// echo-basic in gRPC mode: h2c on `ports.0`, gRPC over TLS (ALPN h2) on
    /// `ports.1` when the pod has TLS material.
    pub async fn grpc_pod(
        &mut self,
        addr: Ipv4Addr,
        info: PodInfo,
        ports: (u16, u16),
        tls: Option<PodTls>,
    ) -> std::io::Result<()> {
        let info = Arc::new(info);
        let listener = TcpListener::bind((addr, ports.0)).await?;
        let plain_info = info.clone();
        self.tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve_grpc(stream, plain_info.clone(), None));
            }
        }));
        if let Some(tls) = tls {
            let config = Arc::new(server_config(&tls, &[b"h2"])?);
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let listener = TcpListener::bind((addr, ports.1)).await?;
            self.tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (info, acceptor) = (info.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                                .await
                        else {
                            return;
                        };
                        let tls = tls_info(stream.get_ref().1);
                        serve_grpc(stream, info, Some(tls)).await;
                    });
                }
            }));
        }
        Ok(())
    }

    /// echo-basic in TCP mode: plain on `plain`, TLS on `tls_port` when the pod
    /// has TLS material.
    pub async fn tcp_pod(
        &mut self,
        addr: Ipv4Addr,
        info: PodInfo,
        plain: u16,
        tls_port: u16,
        tls: Option<PodTls>,
    ) -> std::io::Result<()> {
        let info = Arc::new(info);
        let listener = TcpListener::bind((addr, plain)).await?;
        let plain_info = info.clone();
        self.tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let info = plain_info.clone();
                tokio::spawn(async move {
                    let _ = tcp_session(stream, &info, plain, None).await;
                });
            }
        }));
        if let Some(tls) = tls {
            let config = Arc::new(server_config(&tls, &[])?);
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let listener = TcpListener::bind((addr, tls_port)).await?;
            self.tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (info, acceptor) = (info.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                                .await
                        else {
                            return;
                        };
                        let tls = tls_info(stream.get_ref().1);
                        let _ = tcp_session(stream, &info, plain, Some((tls_port, tls))).await;
                    });
                }
            }));
        }
        Ok(())
    }

    /// echo-basic in UDP mode.
    pub async fn udp_pod(
        &mut self,
        addr: Ipv4Addr,
        info: PodInfo,
        port: u16,
    ) -> std::io::Result<()> {
        let socket = UdpSocket::bind((addr, port)).await?;
        self.tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let reply = serde_json::json!({
                    "request": String::from_utf8_lossy(&buf[..n]),
                    "namespace": info.namespace,
                    "ingress": "",
                    "service": info.service,
                    "pod": info.pod,
                });
                let _ = socket.send_to(reply.to_string().as_bytes(), peer).await;
            }
        }));
        Ok(())
    }

    /// A DNS responder standing in for CoreDNS: every query gets one A record.
    pub async fn dns_pod(&mut self, addr: Ipv4Addr, port: u16) -> std::io::Result<()> {
        let socket = UdpSocket::bind((addr, port)).await?;
        self.tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(reply) = dns_answer(&buf[..n], addr) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        }));
        Ok(())
    }
}

fn server_config(tls: &PodTls, alpn: &[&[u8]]) -> std::io::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(&e))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| invalid(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?;
    let builder = match &tls.client_ca_pem {
        // VerifyClientCertIfGiven: a client without a certificate is accepted.
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots
                    .add(c.map_err(|e| invalid(&e))?)
                    .map_err(|e| invalid(&e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| invalid(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The `tls` object echo-basic adds on its TLS listeners.
fn tls_info(conn: &rustls::ServerConnection) -> serde_json::Value {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "",
    };
    let mut info = serde_json::json!({
        "version": version,
        "serverName": conn.server_name().unwrap_or(""),
        "cipherSuite": conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
    });
    if let Some(alpn) = conn.alpn_protocol() {
        info["negotiatedProtocol"] = String::from_utf8_lossy(alpn).into();
    }
    if let Some(certs) = conn.peer_certificates() {
        let pems: Vec<String> = certs
            .iter()
            .map(|c| {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
                let lines: Vec<&str> = b64
                    .as_bytes()
                    .chunks(64)
                    .map(|l| std::str::from_utf8(l).expect("base64 is ASCII"))
                    .collect();
                format!(
                    "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    lines.join("\n")
                )
            })
            .collect();
        info["peerCertificates"] = pems.into();
    }
    info
}

async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    pod: Arc<HttpPod>,
    flavor: HttpFlavor,
    tls: Option<serde_json::Value>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let is_tls = tls.is_some();
    let tls = tls.map(Arc::new);
    let service = hyper::service::service_fn(move |req| {
        let (pod, tls) = (pod.clone(), tls.clone());
        async move { handle(req, peer, &pod, tls.as_deref()).await }
    });
    let io = TokioIo::new(stream);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let _ = match flavor {
        HttpFlavor::H2c => builder.http2_only().serve_connection(io, service).await,
        HttpFlavor::Http1 if !is_tls => {
            builder
                .http1_only()
                .serve_connection_with_upgrades(io, service)
                .await
        }
        HttpFlavor::Http1 => builder.serve_connection_with_upgrades(io, service).await,
    };
}

async fn serve_grpc<S>(stream: S, pod: Arc<PodInfo>, tls: Option<serde_json::Value>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tls = tls.map(Arc::new);
    let service = hyper::service::service_fn(move |req| {
        let (pod, tls) = (pod.clone(), tls.clone());
        async move {
            Ok::<_, std::convert::Infallible>(super::grpc::handle(req, &pod, tls.as_deref()).await)
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The abort of a retry-simulator attempt: hyper closes the connection
/// without a response (echo-basic resets it).
#[derive(Debug)]
struct AbortConnection;

impl std::fmt::Display for AbortConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection aborted by the retry simulator")
    }
}

impl std::error::Error for AbortConnection {}

fn empty(status: u16) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    r
}

/// `/ws` with `Upgrade: websocket`: 101, then the frames are echoed.
fn websocket_upgrade(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|k| k.to_str().ok())
        .map(str::to_string)
    else {
        return empty(400);
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            super::websocket::echo(TokioIo::new(upgraded)).await;
        }
    });
    let mut response = empty(101);
    let h = response.headers_mut();
    h.insert("upgrade", "websocket".parse().expect("value"));
    h.insert("connection", "Upgrade".parse().expect("value"));
    h.insert(
        "sec-websocket-accept",
        super::websocket::accept_key(&key).parse().expect("value"),
    );
    response
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    pod: &HttpPod,
    tls: Option<&serde_json::Value>,
) -> Result<Response<Full<Bytes>>, AbortConnection> {
    let wants_websocket = req
        .headers()
        .get("upgrade")
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if req.uri().path() == "/ws" && wants_websocket {
        return Ok(websocket_upgrade(req));
    }
    let uri = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let path = req.uri().path().replace("//", "/");
    let query = parse_query(req.uri().query().unwrap_or(""));
    if path == "/health" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"OK"))));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let exact = code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) && uri == path;
        return Ok(empty(if exact {
            code.parse().unwrap_or(400)
        } else {
            400
        }));
    }
    if path.starts_with("/retry/") {
        let (Some(uuid), Some(after)) = (
            query.get("uuid"),
            query
                .get("succeedAfter")
                .and_then(|s| s.parse::<u32>().ok()),
        ) else {
            return Ok(empty(400));
        };
        let attempt = {
            let mut retries = pod.retries.lock().expect("retry state");
            let n = retries.entry(uuid.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if attempt <= after {
            if let Some(d) = query.get("delayRetry").and_then(|d| go_duration(d)) {
                tokio::time::sleep(d).await;
            }
            return match query.get("responseCode").and_then(|c| c.parse().ok()) {
                Some(code) => Ok(empty(code)),
                None => Err(AbortConnection),
            };
        }
    }
    if let Some(d) = query.get("delay").and_then(|d| go_duration(d)) {
        tokio::time::sleep(d.min(Duration::from_secs(60))).await;
    }
    pod.log.record(&pod.deployment, &uri);
    tracing_line(&uri, peer);
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let proto = match req.version() {
        hyper::Version::HTTP_2 => "HTTP/2.0",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        if name == hyper::header::HOST {
            continue;
        }
        headers
            .entry(canonical_header(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let mut set_headers: Vec<(String, String)> = Vec::new();
    for value in req.headers().get_all("x-echo-set-header") {
        for pair in String::from_utf8_lossy(value.as_bytes()).split(',') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair.split_once(':').unwrap_or((pair, ""));
            match set_headers.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(value.trim());
                }
                None => set_headers.push((name.to_string(), value.to_string())),
            }
        }
    }
    let method = req.method().to_string();
    // Drain the body (echo-basic does not echo it).
    let _ = req.into_body().collect().await;
    let mut body = serde_json::json!({
        "path": uri,
        "host": host,
        "method": method,
        "proto": proto,
        "headers": headers,
        "namespace": pod.info.namespace,
        "ingress": "",
        "service": pod.info.service,
        "pod": pod.info.pod,
        "httpPort": pod.info.http_port,
    });
    if let Some(tls) = tls {
        body["tls"] = tls.clone();
    }
    let text = serde_json::to_string_pretty(&body).expect("JSON");
    let mut response = Response::new(Full::new(Bytes::from(text)));
    let h = response.headers_mut();
    h.insert("content-type", "application/json".parse().expect("value"));
    h.insert("x-content-type-options", "nosniff".parse().expect("value"));
    for (name, value) in set_headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            h.insert(n, v);
        }
    }
    Ok(response)
}

/// echo-basic logs every echoed request; kept behind an env variable here so
/// that a run's output stays the tally.
fn tracing_line(uri: &str, peer: SocketAddr) {
    if std::env::var_os("CONFORMANCE_ECHO_LOG").is_some() {
        eprintln!("Echoing back request made to {uri} to client ({peer})");
    }
}

/// Go's `http.CanonicalHeaderKey`: `x-header-set` → `X-Header-Set`.
pub fn canonical_header(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// A Go duration string (`1s`, `300ms`, `1m30s`, `1.5s`).
pub fn go_duration(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Some(Duration::from_secs_f64(total))
}

async fn tcp_session<S>(
    stream: S,
    info: &PodInfo,
    tcp_port: u16,
    tls: Option<(u16, serde_json::Value)>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    write.write_all(b"Gateway API Test TCP Server\n").await?;
    let mut lines = BufReader::new(read).lines();
    // Bounded: a session ends on EOF, an error, or a minute of silence.
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await
    {
        let reply = match line.trim() {
            "PING" => "PONG".to_string(),
            "IS_TLS" => tls.is_some().to_string(),
            "TEST" => {
                let mut body = serde_json::json!({
                    "namespace": info.namespace,
                    "ingress": "",
                    "service": info.service,
                    "pod": info.pod,
                    "tcpport": tcp_port.to_string(),
                    "isTLS": tls.is_some(),
                });
                if let Some((port, t)) = &tls {
                    body["tlsport"] = port.to_string().into();
                    body["tls"] = t.clone();
                }
                body.to_string()
            }
            _ => continue,
        };
        write.write_all(format!("{reply}\n").as_bytes()).await?;
    }
    Ok(())
}

/// A DNS response with the query's question and one A record.
fn dns_answer(query: &[u8], addr: Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to a zero byte, then type and class.
    let mut end = 12;
    loop {
        let len = *query.get(end)? as usize;
        end += 1 + len;
        if len == 0 {
            break;
        }
    }
    let question = query.get(12..end + 4)?;
    let mut out = Vec::with_capacity(question.len() + 28);
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    out.extend_from_slice(question);
    out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
    out.extend_from_slice(&addr.octets());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("5x"), None);
    }

    #[test]
    fn header_names_are_canonicalised_like_go() {
        assert_eq!(canonical_header("x-header-set"), "X-Header-Set");
        assert_eq!(canonical_header("USER-AGENT"), "User-Agent");
    }
}
