//! One TLS passthrough connection through the agent: a ClientHello naming a
//! host is sent to a TLS listener and must come back from the TLSRoutes'
//! echo backend (`manifests::TLS_BACKEND`). Passthrough never terminates TLS,
//! so the hello's bytes echoed back show that the agent read the SNI, chose
//! that host's route and connected its backend; no TLS library needed.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

/// A minimal TLS 1.2-style ClientHello record (RFC 8446 4.1.2) whose only
/// extension is server_name (RFC 6066 3) with `host`.
pub fn client_hello(host: &str) -> Vec<u8> {
    let name = host.as_bytes();
    let name_len = u16::try_from(name.len()).expect("host name fits a u16");
    // server_name extension: list of one host_name entry.
    let mut sni = Vec::new();
    sni.extend_from_slice(&(name_len + 3).to_be_bytes());
    sni.push(0); // host_name
    sni.extend_from_slice(&name_len.to_be_bytes());
    sni.extend_from_slice(name);
    let mut extensions = Vec::new();
    extensions.extend_from_slice(&0u16.to_be_bytes());
    extensions.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    extensions.extend_from_slice(&sni);

    let mut body = Vec::new();
    body.extend_from_slice(&[3, 3]); // legacy_version TLS 1.2
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // empty legacy_session_id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);

    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);

    let mut record = vec![22, 3, 1]; // handshake record, legacy version 3.1
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Whether a ClientHello for `host` sent to `addr` comes back whole (the
/// passthrough reached the echo backend); false on any failure.
pub fn passthrough_echoes(addr: &str, host: &str) -> bool {
    let hello = client_hello(host);
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(&hello).is_err() {
        return false;
    }
    let mut echoed = vec![0; hello.len()];
    stream.read_exact(&mut echoed).is_ok() && echoed == hello
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hello_lengths_are_consistent() {
        let hello = client_hello("t7.tls.bench.example");
        // Record length covers the handshake; handshake length covers its body.
        assert_eq!(
            usize::from(u16::from_be_bytes([hello[3], hello[4]])),
            hello.len() - 5
        );
        let body_len =
            usize::from(hello[6]) << 16 | usize::from(hello[7]) << 8 | usize::from(hello[8]);
        assert_eq!(body_len, hello.len() - 9);
        assert!(hello.ends_with(b"t7.tls.bench.example"));
    }

    /// A loopback server that answers its one connection with `answer(hello)`.
    fn serve_once(answer: fn(Vec<u8>) -> Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut hello = vec![0; client_hello("a.example").len()];
            stream.read_exact(&mut hello).expect("read hello");
            stream.write_all(&answer(hello)).expect("answer");
        });
        (addr, server)
    }

    #[test]
    fn an_echoed_hello_is_served_anything_else_is_not() {
        let (addr, server) = serve_once(|hello| hello);
        assert!(passthrough_echoes(&addr, "a.example"));
        server.join().expect("echo server");
        let (addr, server) = serve_once(|mut hello| {
            hello.truncate(10);
            hello
        });
        assert!(!passthrough_echoes(&addr, "a.example"));
        server.join().expect("short server");
        let (addr, server) = serve_once(|mut hello| {
            let last = hello.len() - 1;
            hello[last] ^= 1;
            hello
        });
        assert!(!passthrough_echoes(&addr, "a.example"));
        server.join().expect("altering server");
    }
}
