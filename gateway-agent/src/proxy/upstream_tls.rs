//! TLS from the proxy to backends that a BackendTLSPolicy governs: the policy
//! hostname is the SNI; the server certificate must chain to the policy's CA
//! certificates (or the system's) and carry the hostname, or one of the
//! policy's subjectAltNames when it lists some. The Gateway's client
//! certificate (spec.tls.backend) is presented when the backend asks for one.
//! One pooled client per policy and protocol, built on first use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor, verify_server_name,
};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::ProxyBody;
use crate::model::{BackendProtocol, BackendTls, SubjectAltName, TrustAnchors};

pub(super) type TlsClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// Policies are few; a bound keeps stale ones (after config changes) from piling up.
const MAX_CLIENTS: usize = 1024;

#[derive(Default)]
pub(super) struct TlsUpstreams {
    clients: Mutex<HashMap<(BackendTls, BackendProtocol), Arc<TlsClient>>>,
}

impl TlsUpstreams {
    /// The pooled client for `tls` speaking `protocol` (HTTP/2 by ALPN for
    /// gRPC and h2 backends, else HTTP/1.1).
    pub(super) fn client(
        &self,
        tls: &BackendTls,
        protocol: BackendProtocol,
    ) -> Result<Arc<TlsClient>, String> {
        let key = (tls.clone(), protocol);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = Arc::new(build_client(tls, protocol)?);
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
}

fn build_client(tls: &BackendTls, protocol: BackendProtocol) -> Result<TlsClient, String> {
    let config = client_config(tls)?;
    let server_name = ServerName::try_from(tls.server_name.clone())
        .map_err(|e| format!("hostname {:?}: {e}", tls.server_name))?;
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(Duration::from_secs(5)));
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .with_server_name_resolver(FixedServerNameResolver::new(server_name));
    let mut client = Client::builder(TokioExecutor::new());
    client.pool_idle_timeout(Duration::from_secs(60));
    Ok(match protocol {
        BackendProtocol::Http1 => client.build(builder.enable_http1().wrap_connector(tcp)),
        BackendProtocol::H2c => client
            .http2_only(true)
            .timer(TokioTimer::new())
            .build(builder.enable_http2().wrap_connector(tcp)),
    })
}

/// The rustls client configuration of one policy (ALPN is set by the connector).
pub fn client_config(tls: &BackendTls) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match &tls.trust {
        TrustAnchors::Pem(pem) => {
            for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let certificate = certificate.map_err(|e| format!("CA certificate: {e}"))?;
                roots
                    .add(certificate)
                    .map_err(|e| format!("CA certificate: {e}"))?;
            }
        }
        TrustAnchors::System => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err("no system CA certificate could be loaded".into());
            }
        }
    }
    let roots = Arc::new(roots);
    let verifier: Arc<dyn ServerCertVerifier> = if tls.subject_alt_names.is_empty() {
        WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| e.to_string())?
    } else {
        Arc::new(SubjectAltNameVerifier {
            roots,
            provider: provider.clone(),
            names: tls.subject_alt_names.clone(),
        })
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match &tls.client_certificate {
        None => Ok(builder.with_no_client_auth()),
        // The Gateway's clientCertificateRef, sent when the backend asks for one.
        Some(client) => {
            let chain = CertificateDer::pem_slice_iter(client.cert_chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())
                .map_err(|e| format!("client certificate key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
    }
}

/// Verifies the chain like webpki does, then requires one of the policy's
/// subjectAltNames (DNS names or URIs) instead of the SNI hostname, as the
/// spec says for `validation.subjectAltNames`.
#[derive(Debug)]
struct SubjectAltNameVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    names: Vec<SubjectAltName>,
}

impl ServerCertVerifier for SubjectAltNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &certificate,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let uris = certificate_uris(end_entity);
        let matched = self.names.iter().any(|name| match name {
            SubjectAltName::Hostname(host) => ServerName::try_from(host.as_str())
                .is_ok_and(|host| verify_server_name(&certificate, &host).is_ok()),
            SubjectAltName::Uri(uri) => uris.iter().any(|u| u == uri),
        });
        if matched {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The URI subjectAltNames of a certificate (webpki checks DNS names only).
fn certificate_uris(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(sans)) = certificate.subject_alternative_name() else {
        return Vec::new();
    };
    sans.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    struct Pki {
        ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
        ca_pem: String,
        server: rustls::ServerConfig,
        /// The same server, requiring a client certificate issued by the CA.
        requires_client_certificate: rustls::ServerConfig,
    }

    /// A CA and a server certificate for `dns` and `uris`, signed by it.
    fn pki(dns: &[&str], uris: &[&str]) -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("ca");
        let mut leaf =
            rcgen::CertificateParams::new(dns.iter().map(|d| (*d).to_string()).collect::<Vec<_>>())
                .expect("params");
        for uri in uris {
            leaf.subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().expect("uri")));
        }
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = leaf.signed_by(&key, &ca).expect("leaf");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = || {
            rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("versions")
        };
        let chain = vec![cert.der().clone()];
        let server_key = || PrivateKeyDer::try_from(key.serialize_der()).expect("key");
        let server = builder()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), server_key())
            .expect("server config");
        let mut client_roots = RootCertStore::empty();
        client_roots.add(ca.der().clone()).expect("ca");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            client_roots.into(),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let requires_client_certificate = builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, server_key())
            .expect("server config");
        Pki {
            ca_pem: ca.pem(),
            ca,
            server,
            requires_client_certificate,
        }
    }

    /// A client certificate issued by `pki`'s CA, as a Gateway's clientCertificateRef holds it.
    fn client_certificate(pki: &Pki) -> crate::model::ClientCertificate {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["client.example.com".to_string()]).expect("params");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &pki.ca).expect("client certificate");
        crate::model::ClientCertificate {
            cert_chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Handshakes with a server that requires a client certificate; the
    /// certificate the server saw, or why it refused the client.
    async fn client_certificate_seen(pki: &Pki, tls: &BackendTls) -> Result<Vec<u8>, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(pki.requires_client_certificate.clone()));
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(stream).await.map_err(|e| e.to_string())?;
            let seen = tls.get_ref().1.peer_certificates().map(|c| c[0].to_vec());
            let mut byte = [0u8; 1];
            let _ = tls.read(&mut byte).await;
            seen.ok_or_else(|| "no client certificate".to_string())
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(tls)?));
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(tls.server_name.clone()).expect("name");
        let connected =
            tokio::time::timeout(Duration::from_secs(5), connector.connect(name, stream))
                .await
                .expect("handshake in time");
        if let Ok(mut stream) = connected {
            let _ = stream.write_all(b"x").await;
        }
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server in time")
            .expect("server task")
    }

    /// Handshakes with a server using `pki`'s certificate; Ok when the client accepts it.
    async fn handshake(pki: &Pki, tls: &BackendTls) -> Result<(), String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server.clone()));
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            if let Ok(mut tls) = acceptor.accept(stream).await {
                let mut byte = [0u8; 1];
                let _ = tls.read(&mut byte).await;
            }
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(tls)?));
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(tls.server_name.clone()).expect("name");
        let result = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, stream))
            .await
            .expect("handshake in time");
        let outcome = match result {
            Ok(mut stream) => {
                stream.write_all(b"x").await.expect("write");
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        server.await.expect("server");
        outcome
    }

    fn policy(pki: &Pki, hostname: &str, names: Vec<SubjectAltName>) -> BackendTls {
        BackendTls {
            server_name: hostname.into(),
            trust: TrustAnchors::Pem(pki.ca_pem.clone()),
            subject_alt_names: names,
            client_certificate: None,
        }
    }

    #[tokio::test]
    async fn the_gateway_client_certificate_is_presented_to_a_backend_that_requires_one() {
        let pki = pki(&["abc.example.com"], &[]);
        let mut tls = policy(&pki, "abc.example.com", vec![]);
        let without = client_certificate_seen(&pki, &tls).await;
        assert!(without.is_err(), "{without:?}");
        let client = client_certificate(&pki);
        let der = CertificateDer::from_pem_slice(client.cert_chain_pem.as_bytes()).expect("pem");
        tls.client_certificate = Some(client);
        let seen = client_certificate_seen(&pki, &tls).await.expect("accepted");
        assert_eq!(seen, der.to_vec());
    }

    #[tokio::test]
    async fn the_certificate_must_chain_to_the_ca_and_carry_the_hostname() {
        let good = pki(&["abc.example.com"], &[]);
        handshake(&good, &policy(&good, "abc.example.com", vec![]))
            .await
            .expect("accepted");
        let wrong_name = handshake(&good, &policy(&good, "mismatch.example.com", vec![])).await;
        assert!(wrong_name.is_err(), "{wrong_name:?}");
        let other_ca = pki(&["abc.example.com"], &[]);
        let wrong_ca = handshake(&good, &policy(&other_ca, "abc.example.com", vec![])).await;
        assert!(wrong_ca.is_err(), "{wrong_ca:?}");
    }

    #[tokio::test]
    async fn subject_alt_names_replace_the_hostname_check() {
        let server = pki(&["abc.example.com"], &["spiffe://abc.example.com/id"]);
        let uri = |u: &str| SubjectAltName::Uri(u.into());
        let host = |h: &str| SubjectAltName::Hostname(h.into());
        for (names, ok) in [
            (vec![host("abc.example.com")], true),
            (vec![host("dce.example.com")], false),
            (vec![uri("spiffe://abc.example.com/id")], true),
            (vec![uri("spiffe://def.example.com/id")], false),
            (
                vec![uri("spiffe://def.example.com/id"), host("abc.example.com")],
                true,
            ),
        ] {
            // The SNI hostname is not what is checked once subjectAltNames are given.
            let result =
                handshake(&server, &policy(&server, "sni.example.com", names.clone())).await;
            assert_eq!(result.is_ok(), ok, "{names:?}: {result:?}");
        }
    }
}
