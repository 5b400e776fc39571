//! The clients the Go suite's helpers use, one exchange per call: an HTTP(S)
//! round trip on a new connection (`roundtripper.go`), the TCP echo exchange
//! (`tcp.go`), a UDP datagram (`udp.go`), a DNS query and a bare TLS handshake
//! (`tls.go`). Judging the result is `compare.rs`'s job.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpStream, UdpSocket};

/// Each request's own limit (the Go suite's `RequestTimeout`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings of a client: what it trusts, the SNI, a client certificate.
#[derive(Clone)]
pub struct ClientTls {
    pub server_name: String,
    pub roots: Vec<CertificateDer<'static>>,
    pub client_cert: Option<(String, String)>,
    pub alpn: Vec<Vec<u8>>,
}

/// Verifies as Go's `crypto/x509` does with a RootCAs pool: a chain to a
/// trusted certificate, or the server's certificate itself among the trusted
/// ones (the suite trusts leaf certificates directly, e.g. TLSRoute tests trust
/// `tls-checks-certificate`, which webpki alone reports as UnknownIssuer).
/// The name is checked either way.
#[derive(Debug)]
struct GoRootsVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    trusted: Vec<CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for GoRootsVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
                if self
                    .trusted
                    .iter()
                    .any(|t| t.as_ref() == end_entity.as_ref()) =>
            {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

impl ClientTls {
    fn config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for r in &self.roots {
            roots
                .add(r.clone())
                .map_err(|e| format!("trusted certificate: {e}"))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        // With nothing trusted (the handshake-rejection checks) no certificate
        // verifies; webpki's verifier refuses to be built without roots.
        let builder = if roots.is_empty() {
            builder.with_root_certificates(roots)
        } else {
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(GoRootsVerifier {
                    webpki,
                    trusted: self.roots.clone(),
                }))
        };
        let mut config = match &self.client_cert {
            Some((cert, key)) => {
                let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let key =
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| e.to_string())?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        Ok(config)
    }

    async fn connect(
        &self,
        stream: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
        let config = self.config().map_err(std::io::Error::other)?;
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
    }
}

/// Parses PEM certificates.
pub fn certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HttpProtocol {
    Http1,
    /// HTTP/2 without TLS, prior knowledge.
    H2c,
    /// HTTPS: HTTP/1.1 (ALPN offers only http/1.1, like Go's default client).
    Https1,
    /// HTTPS with ALPN h2.
    H2,
}

/// One HTTP request as the Go roundtripper sends it.
#[derive(Clone)]
pub struct HttpRequest {
    pub connect: SocketAddr,
    pub protocol: HttpProtocol,
    pub method: String,
    /// The Host header (`:authority` on HTTP/2).
    pub host: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub tls: Option<ClientTls>,
}

/// What came back.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub version: &'static str,
    pub headers: HeaderMap,
    pub body: Bytes,
}

fn io_err(context: &str, e: impl std::fmt::Display) -> String {
    format!("{context}: {e}")
}

/// Sends one request on a new connection and reads the whole response.
pub async fn http_round_trip(req: &HttpRequest) -> Result<HttpResponse, String> {
    tokio::time::timeout(REQUEST_TIMEOUT, http_round_trip_inner(req))
        .await
        .map_err(|_| format!("no response within {REQUEST_TIMEOUT:?}"))?
}

async fn http_round_trip_inner(req: &HttpRequest) -> Result<HttpResponse, String> {
    let stream = TcpStream::connect(req.connect)
        .await
        .map_err(|e| io_err(&format!("connect {}", req.connect), e))?;
    let scheme = match req.protocol {
        HttpProtocol::Http1 | HttpProtocol::H2c => "http",
        HttpProtocol::Https1 | HttpProtocol::H2 => "https",
    };
    match &req.tls {
        Some(tls) => {
            let stream = tls
                .connect(stream)
                .await
                .map_err(|e| io_err("TLS handshake", e))?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            send(req, stream, h2, scheme).await
        }
        None => send(req, stream, req.protocol == HttpProtocol::H2c, scheme).await,
    }
}

async fn send<S>(
    req: &HttpRequest,
    stream: S,
    h2: bool,
    scheme: &str,
) -> Result<HttpResponse, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let body = Full::new(Bytes::from(req.body.clone().unwrap_or_default()));
    let mut builder = hyper::Request::builder().method(req.method.as_str());
    builder = if h2 {
        builder.uri(format!("{scheme}://{}{}", req.host, req.path_and_query))
    } else {
        builder
            .uri(req.path_and_query.as_str())
            .header("host", req.host.as_str())
    };
    let mut request = builder
        .body(body)
        .map_err(|e| io_err("building the request", e))?;
    let headers = request.headers_mut();
    headers.insert("user-agent", HeaderValue::from_static("Go-http-client/1.1"));
    headers.insert("accept-encoding", HeaderValue::from_static("gzip"));
    for (name, value) in &req.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| io_err("header", e))?;
        let value = HeaderValue::from_str(value).map_err(|e| io_err("header", e))?;
        if name == hyper::header::HOST {
            continue;
        }
        headers.append(name, value);
    }
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| io_err("HTTP/2 handshake", e))?;
        tokio::spawn(conn);
        sender
            .send_request(request)
            .await
            .map_err(|e| io_err("HTTP/2 request", e))?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| io_err("HTTP/1.1 handshake", e))?;
        tokio::spawn(conn);
        sender
            .send_request(request)
            .await
            .map_err(|e| io_err("HTTP/1.1 request", e))?
    };
    let status = response.status().as_u16();
    let version = match response.version() {
        hyper::Version::HTTP_2 => "HTTP/2.0",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| io_err("reading the body", e))?
        .to_bytes();
    Ok(HttpResponse {
        status,
        version,
        headers,
        body,
    })
}

/// Result of a bare TLS handshake to a passthrough listener.
pub enum Handshake {
    /// The connection was closed or reset during the handshake (what a
    /// listener must do for an unroutable SNI).
    Rejected,
    /// Anything else: completed, certificate error, timeout, refused.
    Other(String),
}

pub async fn tls_handshake(addr: SocketAddr, server_name: &str) -> Handshake {
    let tls = ClientTls {
        server_name: server_name.to_string(),
        roots: Vec::new(),
        client_cert: None,
        alpn: Vec::new(),
    };
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Handshake::Other(format!("connect: {e}")))?;
        match tls.connect(stream).await {
            Ok(_) => Err(Handshake::Other("the handshake completed".into())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(Handshake::Rejected)
            }
            Err(e) => Err(Handshake::Other(format!("handshake: {e}"))),
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
        Ok(Ok(h) | Err(h)) => h,
        Err(_) => Handshake::Other("no answer within the request timeout".into()),
    }
}

/// What the TCP echo exchange returned.
#[derive(Debug)]
pub struct TcpExchange {
    pub welcome: String,
    pub ping: String,
    pub is_tls: String,
    pub test: serde_json::Value,
}

/// Connects (TLS when `tls`), reads the welcome line, then `PING`, `IS_TLS`
/// and `TEST`, one line each.
pub async fn tcp_exchange(
    addr: SocketAddr,
    tls: Option<&ClientTls>,
) -> Result<TcpExchange, String> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| io_err(&format!("connect {addr}"), e))?;
        match tls {
            Some(tls) => {
                let stream = tls.connect(stream).await.map_err(|e| io_err("TLS", e))?;
                tcp_lines(stream).await
            }
            None => tcp_lines(stream).await,
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .map_err(|_| "no complete exchange within the request timeout".to_string())?
}

async fn tcp_lines<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> Result<TcpExchange, String> {
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    let mut line = async |send: Option<&str>| -> Result<String, String> {
        if let Some(s) = send {
            write
                .write_all(format!("{s}\n").as_bytes())
                .await
                .map_err(|e| io_err("write", e))?;
        }
        let mut out = String::new();
        let n = read
            .read_line(&mut out)
            .await
            .map_err(|e| io_err("read", e))?;
        if n == 0 {
            return Err("connection closed".into());
        }
        Ok(out)
    };
    let welcome = line(None).await?;
    let ping = line(Some("PING")).await?;
    let is_tls = line(Some("IS_TLS")).await?;
    let test = line(Some("TEST")).await?;
    let test = serde_json::from_str(test.trim()).map_err(|e| io_err("TEST reply", e))?;
    Ok(TcpExchange {
        welcome,
        ping,
        is_tls: is_tls.trim().to_string(),
        test,
    })
}

/// Sends one datagram and waits up to a second for one reply.
pub async fn udp_exchange(addr: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, String> {
    let socket = UdpSocket::bind((addr.ip(), 0))
        .await
        .or(UdpSocket::bind("127.0.0.1:0").await)
        .map_err(|e| io_err("bind", e))?;
    socket
        .connect(addr)
        .await
        .map_err(|e| io_err("connect", e))?;
    socket.send(payload).await.map_err(|e| io_err("send", e))?;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf))
        .await
        .map_err(|_| "no reply within 1s".to_string())?
        .map_err(|e| io_err("recv", e))?;
    buf.truncate(n);
    Ok(buf)
}

/// A DNS query for `name` (type A); returns the answer count of the reply.
pub async fn dns_query(addr: SocketAddr, name: &str) -> Result<u16, String> {
    let id = fastrand::u16(..);
    let mut query = id.to_be_bytes().to_vec();
    query.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let reply = udp_exchange(addr, &query).await?;
    if reply.len() < 12 || reply[..2] != id.to_be_bytes() || reply[2] & 0x80 == 0 {
        return Err("not a DNS reply to the query".into());
    }
    Ok(u16::from_be_bytes([reply[6], reply[7]]))
}
