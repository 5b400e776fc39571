//! The drivers against the echo pods directly (no agent in between), so that
//! a driver that can never pass, or always passes, is caught here and not
//! mistaken for an agent bug. Loopback only, a random 127.x address per test.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::{Value, json};

use super::certs;
use super::drivers::{self, Ctx, Outcome};
use super::echo::{Fleet, PodInfo, PodTls, RequestLog};

const NS: &str = "gateway-conformance-infra";

fn random_loopback() -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        fastrand::u8(100..250),
        fastrand::u8(1..250),
        fastrand::u8(1..250),
    )
}

fn pod_tls(objects: &certs::Objects) -> PodTls {
    let secret = &objects[&("Secret", NS, "tls-checks-certificate")];
    PodTls {
        cert_pem: secret["tls.crt"].clone(),
        key_pem: secret["tls.key"].clone(),
        client_ca_pem: None,
    }
}

fn info(pod: &str) -> PodInfo {
    PodInfo {
        namespace: NS.into(),
        pod: pod.into(),
        service: String::new(),
        http_port: "3000".into(),
    }
}

/// A Ctx whose Gateway `gateway-conformance-infra/gw` is `addr`.
fn ctx(addr: Ipv4Addr, objects: certs::Objects) -> Ctx {
    Ctx {
        gateways: HashMap::from([(format!("{NS}/gw"), IpAddr::V4(addr))]),
        certs: objects,
        log: RequestLog::default(),
        service_deployments: HashMap::new(),
        timeout: Duration::from_secs(2),
    }
}

fn http_case(port: u16, scheme: &str, prefix: &str, sni: Option<&str>) -> Value {
    json!({
        "id": "self/0", "driver": scheme, "expect": "response",
        "gateway": {"namespace": NS, "name": "gw", "port": port},
        "tls": {"server_name": "abc.example.com", "trusted_server_certificate":
            {"kind": "ConfigMap", "namespace": NS, "name": "tls-checks-ca-certificate", "key": "ca.crt"}},
        "ExpectedResponse": {"Request": {"Path": "/x?y=1", "Headers": {"X-Test": "one"}}},
        "effective": {
            "method": "GET", "scheme": scheme, "protocol": if scheme == "https" { "HTTPS" } else { "HTTP" },
            "host_header": "abc.example.com", "path_and_query": "/x?y=1", "status_codes": [200],
            "expected_backend_request": {"path": "/x?y=1", "host": "abc.example.com", "method": "GET",
                "headers": {"x-test": "one"}, "absent_headers": [], "sni": sni},
            "namespace": NS, "backend_pod_prefix": prefix,
            "response_headers": {"X-Echoed": "v"}, "backend_set_response_headers": {"X-Echoed": "v"},
            "follow_redirects": true,
        },
    })
}

#[tokio::test]
async fn http_and_https_drivers_pass_against_echo_basic_and_catch_a_wrong_pod() {
    let objects = certs::synthesise();
    let addr = random_loopback();
    let mut fleet = Fleet::default();
    let log = RequestLog::default();
    fleet
        .http_pod(
            addr,
            info("infra-backend-v1-abcdefghij-klmno"),
            "d",
            &log,
            (3000, 3001, 8443),
            Some(pod_tls(&objects)),
        )
        .await
        .expect("echo pod");
    let ctx = ctx(addr, objects);
    let plain = http_case(3000, "http", "infra-backend-v1", None);
    assert_eq!(drivers::run(&ctx, &plain).await, Outcome::Passed);
    let https = http_case(8443, "https", "infra-backend-v1", Some("abc.example.com"));
    assert_eq!(drivers::run(&ctx, &https).await, Outcome::Passed);
    let wrong_pod = http_case(3000, "http", "infra-backend-v2", None);
    assert!(matches!(
        drivers::run(&ctx, &wrong_pod).await,
        Outcome::Failed(_)
    ));
    let ws = json!({"id": "self/ws", "driver": "websocket", "expect": "echo",
        "gateway": {"namespace": NS, "name": "gw", "port": 3000},
        "websocket": {"origin": "ws://gateway/<go test name>", "exchanges": [
            {"send_text": "Websocket Support!"}, {"send_binary": [1, 2, 3]}]}});
    assert_eq!(drivers::run(&ctx, &ws).await, Outcome::Passed);
    let wrong_sni = http_case(8443, "https", "infra-backend-v1", Some("other.example.com"));
    assert!(matches!(
        drivers::run(&ctx, &wrong_sni).await,
        Outcome::Failed(_)
    ));
}

#[tokio::test]
async fn grpc_driver_passes_against_the_grpc_echo_and_sees_unimplemented() {
    let addr = random_loopback();
    let mut fleet = Fleet::default();
    fleet
        .grpc_pod(
            addr,
            info("grpc-infra-backend-v1-abcdefghij-klmno"),
            (3000, 8443),
            None,
        )
        .await
        .expect("gRPC echo pod");
    let ctx = ctx(addr, certs::Objects::new());
    let case = |method: &str, code: u64, prefix: &str| {
        json!({"id": "self/grpc", "driver": "grpc", "expect": "response",
            "gateway": {"namespace": NS, "name": "gw", "port": 3000},
            "effective": {"full_method": format!("/{}/{method}", super::grpc::SERVICE),
                "authority": "grpc.example.com", "metadata": {"X-Meta": "m"}, "code_value": code,
                "namespace": NS, "backend_pod_prefix": prefix}})
    };
    assert_eq!(
        drivers::run(&ctx, &case("Echo", 0, "grpc-infra-backend-v1")).await,
        Outcome::Passed
    );
    assert_eq!(
        drivers::run(&ctx, &case("EchoThree", 12, "")).await,
        Outcome::Passed
    );
    assert!(matches!(
        drivers::run(&ctx, &case("Echo", 0, "grpc-infra-backend-v2")).await,
        Outcome::Failed(_)
    ));
}

#[tokio::test]
async fn tls_driver_reaches_the_tcp_echo_over_tls() {
    let objects = certs::synthesise();
    let addr = random_loopback();
    let mut fleet = Fleet::default();
    fleet
        .tcp_pod(
            addr,
            info("tcp-backend-abcdefghij-klmno"),
            3000,
            8443,
            Some(pod_tls(&objects)),
        )
        .await
        .expect("TCP echo pod");
    let ctx = ctx(addr, objects);
    let case = |port: u16, use_tls: bool, is_tls: &str| {
        json!({"id": "self/tls", "driver": "tls", "expect": "response",
            "gateway": {"namespace": NS, "name": "gw", "port": port},
            "tls": {"server_name": "abc.example.com"},
            "effective": {"use_tls": use_tls, "server_name": "abc.example.com",
                "expect_welcome_line": "Gateway API Test TCP Server\n", "expect_ping_reply": "PONG\n",
                "expect_is_tls_reply": is_tls, "namespace": NS, "pod_prefix": "tcp-backend-",
                "backend_tls_server_name": if use_tls { Some("abc.example.com") } else { None }}})
    };
    assert_eq!(
        drivers::run(&ctx, &case(8443, true, "true")).await,
        Outcome::Passed
    );
    assert_eq!(
        drivers::run(&ctx, &case(3000, false, "false")).await,
        Outcome::Passed
    );
    assert!(matches!(
        drivers::run(&ctx, &case(3000, false, "true")).await,
        Outcome::Failed(_)
    ));
    // A TLS server that completes the handshake (the client then fails on the
    // untrusted certificate) is no rejection: the check must not pass.
    let handshake = json!({"id": "self/hs", "driver": "tls-handshake", "expect": "connection-rejected",
        "gateway": {"namespace": NS, "name": "gw", "port": 8443},
        "effective": {"server_name": "non.matching.com"}});
    assert!(matches!(
        drivers::run(&ctx, &handshake).await,
        Outcome::Failed(_)
    ));
}
