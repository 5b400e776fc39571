//! HTTPS listeners end to end: TLS ends at the agent's proxy, which picks the
//! certificate by SNI among the listeners sharing port 443 (one of them in
//! another namespace, allowed by a ReferenceGrant) and speaks HTTP/2 when
//! ALPN chooses it.

use std::time::Duration;

use gateway_tests::tls::TestCertificate;
use gateway_tests::{
    Agent, BACKEND_ADDR, GATEWAY_ADDR, TempDir, Topology, class_and_service, eventually,
    require_root,
};

fn https_manifests(cert_a: &TestCertificate, cert_b: &TestCertificate) -> String {
    format!(
        r#"{class}---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: gwt
  addresses: [{{value: {GATEWAY_ADDR}}}]
  listeners:
  - name: a
    protocol: HTTPS
    port: 443
    hostname: a.example
    tls: {{mode: Terminate, certificateRefs: [{{name: cert-a}}]}}
  - name: b
    protocol: HTTPS
    port: 443
    hostname: b.example
    tls: {{mode: Terminate, certificateRefs: [{{name: cert-b, namespace: certs}}]}}
{secret_a}{secret_b}---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: gateways-to-certs, namespace: certs}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: Gateway, namespace: default}}]
  to: [{{group: "", kind: Secret, name: cert-b}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [a.example, b.example]
  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]
"#,
        class = class_and_service("web", 8080, 8080),
        secret_a = cert_a.secret("default", "cert-a"),
        secret_b = cert_b.secret("certs", "cert-b"),
    )
}

fn https_get(
    topology: &Topology,
    sni: &str,
    ca: &TestCertificate,
    alpn: &str,
) -> Result<String, String> {
    let peer = Topology::bin("tls-peer");
    let out = topology
        .client
        .command(peer.to_str().expect("utf-8"))
        .args(["https-get", &format!("{GATEWAY_ADDR}:443"), sni])
        .arg(&ca.cert)
        .args(["/hello", alpn])
        .output()
        .expect("run tls-peer");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn https_listeners_choose_the_certificate_by_sni_and_speak_h2() {
    if !require_root("https_sni_h2") {
        return;
    }
    let topology = Topology::new();
    let certs = TempDir::new();
    let cert_a = TestCertificate::new(&certs.0, "a", &["a.example"]);
    let cert_b = TestCertificate::new(&certs.0, "b", &["b.example"]);
    let _backend = topology.backend_spawn(&["http-echo", &format!("{BACKEND_ADDR}:8080"), "web-1"]);
    let manifests = TempDir::new();
    manifests.write("all.yaml", &https_manifests(&cert_a, &cert_b));
    let agent = Agent::start(&topology, manifests);

    let response = eventually("HTTPS a.example", Duration::from_secs(20), || {
        https_get(&topology, "a.example", &cert_a, "http/1.1")
    });
    for expected in [
        "alpn=http/1.1",
        "status=200",
        "backend=web-1",
        "path=/hello",
        "header:host=a.example",
    ] {
        assert!(
            response.lines().any(|l| l == expected),
            "missing {expected:?} in:\n{response}\nagent log:\n{}",
            agent.log()
        );
    }
    // b.example gets B's certificate (from the other namespace): A's does not verify.
    let response =
        https_get(&topology, "b.example", &cert_b, "h2").expect("HTTPS b.example over h2");
    for expected in [
        "alpn=h2",
        "status=200",
        "backend=web-1",
        "header:host=b.example",
    ] {
        assert!(
            response.lines().any(|l| l == expected),
            "missing {expected:?} in:\n{response}"
        );
    }
    let wrong = https_get(&topology, "b.example", &cert_a, "h2");
    assert!(
        wrong.is_err(),
        "b.example must present B's certificate: {wrong:?}"
    );
    let wrong = https_get(&topology, "a.example", &cert_b, "http/1.1");
    assert!(
        wrong.is_err(),
        "a.example must present A's certificate: {wrong:?}"
    );
}
