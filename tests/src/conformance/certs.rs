//! The Secrets and ConfigMaps the Go suite creates at start-up
//! (`utils/suite/suite.go`), synthesised with rcgen. The suite uses RSA 2048;
//! ring cannot generate RSA keys, so these are ECDSA P-256 (PKCS#8): the names,
//! SANs, issuers and usages are the suite's.

use std::collections::BTreeMap;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// `(kind, namespace, name)` → data key → PEM text.
pub type Objects = BTreeMap<(&'static str, &'static str, &'static str), BTreeMap<String, String>>;

const INFRA: &str = "gateway-conformance-infra";
const WEB: &str = "gateway-conformance-web-backend";
const APP: &str = "gateway-conformance-app-backend";

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(common_name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf signed by this CA: `(certificate PEM, key PEM)`.
    fn leaf(&self, dns: &[&str], uris: &[&str], client: bool) -> (String, String) {
        let params = leaf_params(dns, uris, client);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }
}

fn leaf_params(dns: &[&str], uris: &[&str], client: bool) -> CertificateParams {
    let mut params = CertificateParams::new(
        dns.iter()
            .map(|d| (*d).to_string())
            .collect::<Vec<String>>(),
    )
    .expect("leaf params");
    for uri in uris {
        params
            .subject_alt_names
            .push(SanType::URI((*uri).try_into().expect("URI SAN")));
    }
    params
        .distinguished_name
        .push(DnType::CommonName, dns.first().copied().unwrap_or("client"));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    params
}

/// A self-signed server certificate that is its own root. Unlike the Go
/// suite's, it is not marked as a CA: webpki (the harness's rustls client)
/// refuses a CA certificate as the server's own (CaUsedAsEndEntity), where
/// Go's verifier accepts it.
fn self_signed(dns: &[&str]) -> (String, String) {
    let params = leaf_params(dns, &[], false);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed cert");
    (cert.pem(), key.serialize_pem())
}

fn tls_secret(pair: (String, String)) -> BTreeMap<String, String> {
    BTreeMap::from([("tls.crt".into(), pair.0), ("tls.key".into(), pair.1)])
}

fn ca_map(pem: String) -> BTreeMap<String, String> {
    BTreeMap::from([("ca.crt".into(), pem)])
}

/// Every object of the table in ../shared/conformance/README.md.
pub fn synthesise() -> Objects {
    let mut out = Objects::new();
    out.insert(
        ("Secret", WEB, "certificate"),
        tls_secret(self_signed(&["*"])),
    );
    out.insert(
        ("Secret", INFRA, "tls-validity-checks-certificate"),
        // The suite's names, plus the one-label `.org` hosts its cases use:
        // Go matches them to `*.org`, webpki (rightly) not to a wildcard
        // directly under a top-level domain.
        tls_secret(self_signed(&[
            "*",
            "*.org",
            "*.wildcard.org",
            "example.org",
            "second-example.org",
            "unknown-example.org",
            "https-listener.org",
        ])),
    );
    out.insert(
        ("ConfigMap", WEB, "web-backend-cm"),
        ca_map(Ca::new("web-backend-ca").pem()),
    );
    let ca1 = Ca::new("tls-validity-checks-ca");
    out.insert(
        ("ConfigMap", INFRA, "tls-validity-checks-ca-certificate"),
        ca_map(ca1.pem()),
    );
    out.insert(
        ("Secret", INFRA, "tls-validity-checks-client-certificate"),
        tls_secret(ca1.leaf(&["client.example.com"], &[], true)),
    );
    let ca2 = Ca::new("tls-validity-checks-per-port-ca");
    out.insert(
        (
            "ConfigMap",
            INFRA,
            "tls-validity-checks-per-port-ca-certificate",
        ),
        ca_map(ca2.pem()),
    );
    out.insert(
        (
            "Secret",
            INFRA,
            "tls-validity-checks-per-port-client-certificate",
        ),
        tls_secret(ca2.leaf(&["client.example.com"], &[], true)),
    );
    let ca3 = Ca::new("tls-checks-ca");
    out.insert(
        ("ConfigMap", INFRA, "tls-checks-ca-certificate"),
        ca_map(ca3.pem()),
    );
    out.insert(
        ("Secret", INFRA, "tls-checks-certificate"),
        tls_secret(ca3.leaf(
            &["abc.example.com", "other.example.com"],
            &["spiffe://abc.example.com/test-identity"],
            false,
        )),
    );
    out.insert(
        ("Secret", INFRA, "tls-checks-client-certificate"),
        tls_secret(ca3.leaf(&["client.example.com"], &[], true)),
    );
    for ns in [INFRA, APP] {
        out.insert(
            ("Secret", ns, "tls-passthrough-checks-certificate"),
            tls_secret(ca3.leaf(&["abc.example.com"], &[], false)),
        );
    }
    out.insert(
        ("Secret", INFRA, "tls-terminate-checks-certificate"),
        tls_secret(ca3.leaf(&["tls.example.com"], &[], false)),
    );
    out.insert(
        ("ConfigMap", INFRA, "mismatch-ca-certificate"),
        ca_map(Ca::new("mismatch-ca").pem()),
    );
    out
}

/// The objects as multi-document YAML, as `kubectl get -o yaml` would show
/// them (Secret data base64-encoded, type `kubernetes.io/tls`).
pub fn to_yaml(objects: &Objects) -> String {
    let mut docs = Vec::new();
    for ((kind, namespace, name), data) in objects {
        let mut doc = format!(
            "apiVersion: v1\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
        );
        if *kind == "Secret" {
            doc.push_str("type: kubernetes.io/tls\ndata:\n");
            for (key, value) in data {
                let encoded = base64::engine::general_purpose::STANDARD.encode(value);
                doc.push_str(&format!("  {key}: {encoded}\n"));
            }
        } else {
            doc.push_str("data:\n");
            for (key, value) in data {
                let quoted = serde_json::to_string(value).expect("string");
                doc.push_str(&format!("  {key}: {quoted}\n"));
            }
        }
        docs.push(doc);
    }
    docs.join("---\n")
}
