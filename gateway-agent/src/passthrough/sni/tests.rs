use std::sync::Arc;

use proptest::prelude::*;

use super::*;

/// Captured once from `openssl s_client -servername openssl.example` (OpenSSL 3.0).
const OPENSSL: &[u8] = include_bytes!("testdata/openssl-s_client-hello.bin");
/// Captured once from `curl https://curl.example/` (curl 7.88, OpenSSL 3.0, ALPN h2).
const CURL: &[u8] = include_bytes!("testdata/curl-hello.bin");

/// The ClientHello the rustls version we build with sends for `name`.
fn rustls_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server = rustls_pki_types::ServerName::try_from(name.to_string()).expect("server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("write hello");
    out
}

#[test]
fn reads_the_server_name_of_real_client_hellos() {
    assert_eq!(parse(OPENSSL), ClientHello::Sni("openssl.example"));
    assert_eq!(parse(CURL), ClientHello::Sni("curl.example"));
    assert_eq!(
        parse(&rustls_hello("a.example")),
        ClientHello::Sni("a.example")
    );
}

#[test]
fn an_ip_address_sends_no_server_name() {
    // RFC 6066: literal addresses are not sent as SNI; rustls omits the extension.
    assert_eq!(parse(&rustls_hello("198.18.0.1")), ClientHello::NoSni);
}

#[test]
fn every_prefix_of_a_hello_asks_for_more_then_the_whole_parses() {
    for hello in [OPENSSL, CURL] {
        for len in 0..hello.len() {
            match parse(&hello[..len]) {
                ClientHello::Incomplete { needed } => {
                    assert!(needed > len && needed <= hello.len(), "{len}: {needed}");
                }
                other => panic!("prefix of {len} bytes: {other:?}"),
            }
        }
    }
}

#[test]
fn bytes_after_the_first_record_are_ignored() {
    let mut stream = CURL.to_vec();
    stream.extend_from_slice(b"\x17\x03\x03\x00\x05early");
    assert_eq!(parse(&stream), ClientHello::Sni("curl.example"));
}

#[test]
fn plain_http_and_other_records_are_rejected_at_once() {
    assert_eq!(parse(b"G"), ClientHello::Malformed(Malformed::NotHandshake));
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\n"),
        ClientHello::Malformed(Malformed::NotHandshake)
    );
    assert_eq!(
        parse(b"\x16\x03\x01\x40\x01"),
        ClientHello::Malformed(Malformed::RecordTooLong)
    );
}

#[test]
fn a_hello_longer_than_its_record_is_refused() {
    let mut hello = OPENSSL.to_vec();
    // Claim a handshake body one byte longer than the record holds.
    let body = usize::from(hello[6]) << 16 | usize::from(hello[7]) << 8 | usize::from(hello[8]);
    let longer = body + 1;
    hello[6..9].copy_from_slice(&[(longer >> 16) as u8, (longer >> 8) as u8, longer as u8]);
    assert_eq!(
        parse(&hello),
        ClientHello::Malformed(Malformed::FragmentedHello)
    );
}

#[test]
fn a_hello_without_extensions_has_no_server_name() {
    // Record and handshake headers, version, random, empty session id, one suite, null compression.
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    let mut hello = vec![
        22,
        3,
        1,
        0,
        (body.len() + 4) as u8,
        1,
        0,
        0,
        body.len() as u8,
    ];
    hello.extend_from_slice(&body);
    assert_eq!(parse(&hello), ClientHello::NoSni);
}

#[test]
fn host_names_with_bad_characters_are_refused() {
    let hello = rustls_hello("a.example");
    let at = hello
        .windows(9)
        .position(|w| w == b"a.example")
        .expect("name in hello");
    for bad in [b'/', b' ', 0, 0xc3] {
        let mut mutated = hello.clone();
        mutated[at + 1] = bad;
        assert_eq!(
            parse(&mutated),
            ClientHello::Malformed(Malformed::BadHostName),
            "{bad:#x}"
        );
    }
}

/// Checks what `parse` may return for `input`: any answer is fine, but it must
/// stay inside the input and within the bounds it promises.
fn check_bounded(input: &[u8]) {
    match parse(input) {
        ClientHello::Incomplete { needed } => {
            assert!(needed > input.len() && needed <= MAX_HELLO_BYTES);
        }
        ClientHello::Sni(name) => {
            let range = input.as_ptr_range();
            assert!(range.contains(&name.as_ptr()));
            assert!(name.len() <= MAX_HOST_NAME);
        }
        ClientHello::NoSni | ClientHello::Malformed(_) => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check_bounded(&input);
    }

    #[test]
    fn arbitrary_bytes_behind_a_handshake_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut input = vec![22, 3, 1, (body.len() >> 8) as u8, body.len() as u8];
        input.extend_from_slice(&body);
        check_bounded(&input);
    }

    #[test]
    fn mutated_real_hellos_never_panic(
        which in 0usize..2,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut hello = [OPENSSL, CURL][which].to_vec();
        for (at, value) in edits {
            let i = at.index(hello.len());
            hello[i] = value;
        }
        check_bounded(&hello);
        let keep = cut.index(hello.len() + 1);
        check_bounded(&hello[..keep]);
    }
}
