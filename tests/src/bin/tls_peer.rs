//! TLS clients and backends for the end-to-end tests (rustls, tokio).
//!
//!   tls-peer server ADDR NAME CERT_PEM KEY_PEM
//!       Serves TLS (ALPN h2, http/1.1) with one certificate; per connection
//!       it reads one command line and answers:
//!         name            → "NAME\n"
//!         upload N        → reads N bytes, answers "HASH\n" of them
//!         download N SEED → sends N bytes of `stream(SEED)`, then closes its side
//!   tls-peer client ADDR SNI CA_PEM COMMAND...
//!       Connects (trusting only CA_PEM, checking SNI), sends COMMAND and
//!       prints the answer; for `upload N` it sends `stream(1)` and prints
//!       the server's hash next to its own; for `download N SEED` it prints the
//!       hash of what arrived and the expected one. Prints the ALPN protocol.
//!       `echo TEXT`: sends TEXT and a newline, closes its side, prints all it gets.
//!       `reset-after N SEED`: asks for `download N SEED`, reads 1 MiB of it
//!       and resets the connection (RST).
//!
//!   tls-peer https-get ADDR SNI CA_PEM PATH ALPN
//!       One GET over TLS offering only ALPN (h2 or http/1.1), with HTTP/2 or
//!       HTTP/1.1 as negotiated; prints alpn=, status= and the body.
//!
//! Clients exit 1 (message on stderr) on any failure, within 120 seconds.

use std::sync::Arc;
use std::time::Duration;

use gateway_tests::tls::{StreamHash, fill_stream};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const CHUNK: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["server", addr, name, cert, key] => server(addr, name, cert, key).await,
            ["https-get", addr, sni, ca, path, alpn] => {
                tokio::time::timeout(CLIENT_TIMEOUT, https_get(addr, sni, ca, path, alpn))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()))
            }
            ["client", addr, sni, ca, command @ ..] => {
                tokio::time::timeout(CLIENT_TIMEOUT, client(addr, sni, ca, &command.join(" ")))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()))
            }
            _ => Err("usage: see the comment at the top of tls_peer.rs".into()),
        }
    });
    if let Err(e) = result {
        eprintln!("tls-peer: {e}");
        std::process::exit(1);
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn server(addr: &str, name: &str, cert: &str, key: &str) -> Result<(), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let acceptor = acceptor.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(stream).await {
                let _ = serve(tls, &name).await;
            }
        });
    }
}

async fn serve(tls: tokio_rustls::server::TlsStream<TcpStream>, name: &str) -> std::io::Result<()> {
    let mut tls = BufReader::new(tls);
    let mut line = String::new();
    tls.read_line(&mut line).await?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |i: usize| {
        words
            .get(i)
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
    };
    match words.first().copied() {
        Some("name") => tls.write_all(format!("{name}\n").as_bytes()).await?,
        Some("upload") => {
            let mut left = number(1);
            let mut hash = StreamHash::default();
            let mut buf = vec![0u8; CHUNK];
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = tls.read(&mut buf[..want]).await?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                left -= n as u64;
            }
            tls.write_all(format!("{:016x}\n", hash.finish()).as_bytes())
                .await?;
        }
        Some("download") => {
            let (mut left, seed) = (number(1), number(2));
            let mut state = seed;
            let mut buf = vec![0u8; CHUNK];
            while left > 0 {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                fill_stream(&mut state, &mut buf[..n]);
                tls.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
        }
        _ => tls.write_all(b"unknown command\n").await?,
    }
    tls.shutdown().await
}

async fn connect(
    addr: &str,
    sni: &str,
    ca: &str,
    alpn: &[&str],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))? {
        roots
            .add(cert.map_err(|e| format!("{ca}: {e}"))?)
            .map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let server_name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

async fn https_get(addr: &str, sni: &str, ca: &str, path: &str, alpn: &str) -> Result<(), String> {
    use http_body_util::BodyExt as _;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tls = connect(addr, sni, ca, &[alpn]).await?;
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    println!(
        "alpn={}",
        String::from_utf8_lossy(negotiated.as_deref().unwrap_or_default())
    );
    let request = hyper::Request::get(format!("https://{sni}{path}"))
        .header(hyper::header::HOST, sni)
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let io = TokioIo::new(tls);
    let response = if negotiated.as_deref() == Some(b"h2") {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(connection);
        // HTTP/2 carries the host in :authority, not a Host header.
        let (mut parts, body) = request.into_parts();
        parts.headers.remove(hyper::header::HOST);
        sender
            .send_request(hyper::Request::from_parts(parts, body))
            .await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(connection);
        sender.send_request(request).await
    }
    .map_err(|e| format!("request: {e}"))?;
    println!("status={}", response.status().as_u16());
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    print!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

async fn client(addr: &str, sni: &str, ca: &str, command: &str) -> Result<(), String> {
    let mut tls = connect(addr, sni, ca, &["h2", "http/1.1"]).await?;
    let alpn = tls
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    println!("alpn={alpn}");
    let words: Vec<&str> = command.split_whitespace().collect();
    if let ["reset-after", total, seed] = words.as_slice() {
        tls.write_all(format!("download {total} {seed}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; CHUNK];
        let mut received = 0usize;
        while received < 1024 * 1024 {
            match tls.read(&mut buf).await.map_err(|e| e.to_string())? {
                0 => return Err("closed before 1 MiB".into()),
                n => received += n,
            }
        }
        tls.get_ref()
            .0
            .set_zero_linger()
            .map_err(|e| e.to_string())?;
        println!("reset after {received} bytes");
        return Ok(());
    }
    tls.write_all(format!("{command}\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    if words.first() == Some(&"echo") {
        tls.shutdown().await.map_err(|e| e.to_string())?;
    }
    let number = |i: usize| {
        words
            .get(i)
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
    };
    match words.first().copied() {
        Some("upload") => {
            let mut left = number(1);
            let (mut state, mut hash) = (1u64, StreamHash::default());
            let mut buf = vec![0u8; CHUNK];
            while left > 0 {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                fill_stream(&mut state, &mut buf[..n]);
                hash.update(&buf[..n]);
                tls.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
                left -= n as u64;
            }
            println!("sent={:016x}", hash.finish());
            let mut answer = String::new();
            tls.read_to_string(&mut answer)
                .await
                .map_err(|e| e.to_string())?;
            println!("received={}", answer.trim());
        }
        Some("download") => {
            let (total, seed) = (number(1), number(2));
            let mut expected = vec![0u8; CHUNK];
            let (mut state, mut want, mut got) =
                (seed, StreamHash::default(), StreamHash::default());
            let mut buf = vec![0u8; CHUNK];
            let mut received = 0u64;
            loop {
                let n = tls.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                got.update(&buf[..n]);
                received += n as u64;
            }
            let mut left = total;
            while left > 0 {
                let n = expected
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                fill_stream(&mut state, &mut expected[..n]);
                want.update(&expected[..n]);
                left -= n as u64;
            }
            println!("bytes={received}");
            println!("expected={:016x}", want.finish());
            println!("received={:016x}", got.finish());
        }
        _ => {
            let mut answer = String::new();
            tls.read_to_string(&mut answer)
                .await
                .map_err(|e| e.to_string())?;
            print!("{answer}");
        }
    }
    Ok(())
}
