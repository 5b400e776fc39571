//! HTTPS termination: a rustls server whose certificate is chosen by SNI
//! among the certificates of the listeners sharing a socket (exact hostname,
//! then the longest wildcard, then a listener without hostname), offering
//! ALPN h2 and http/1.1, TLS 1.2 and 1.3 with the provider's AEAD suites.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::model::{ClientValidation, ClientValidationMode, ServerCertificate};

/// A client must finish its TLS handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection the proxy serves HTTP on: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate for {hostname}: {message}")]
    Certificate { hostname: String, message: String },
    #[error("client certificate CAs: {0}")]
    ClientCa(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The acceptor for a socket's certificates; None when there are none (plain HTTP).
pub fn acceptor(certificates: &[ServerCertificate]) -> Result<Option<TlsAcceptor>, Error> {
    acceptor_with_client_validation(certificates, None)
}

/// As [`acceptor`], asking clients for a certificate when `validation` is set.
pub fn acceptor_with_client_validation(
    certificates: &[ServerCertificate],
    validation: Option<&ClientValidation>,
) -> Result<Option<TlsAcceptor>, Error> {
    if certificates.is_empty() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = SniResolver::new(certificates, &provider)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match validation {
        None => builder.with_no_client_auth(),
        Some(validation) => {
            builder.with_client_cert_verifier(client_verifier(validation, provider)?)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Completes the TLS handshake when `acceptor` is set, with the server name
/// the client sent (SNI); None when the handshake fails.
pub async fn accept(
    acceptor: Option<Arc<TlsAcceptor>>,
    stream: TcpStream,
) -> Option<(Box<dyn Io>, Option<Arc<str>>)> {
    let Some(acceptor) = acceptor else {
        return Some((Box::new(stream), None));
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let sni = tls.get_ref().1.server_name().map(Arc::from);
            Some((Box::new(tls), sni))
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// The verifier of client certificates for `validation`: webpki against its
/// CAs; in AllowInsecureFallback mode a missing or invalid certificate is let
/// through (the spec's "allow the connection even if validation fails").
fn client_verifier(
    validation: &ClientValidation,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    if validation.ca_pem.is_empty() {
        return Ok(Arc::new(RefuseEveryClient { provider }));
    }
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(validation.ca_pem.as_bytes()) {
        let certificate = certificate.map_err(|e| Error::ClientCa(e.to_string()))?;
        roots
            .add(certificate)
            .map_err(|e| Error::ClientCa(e.to_string()))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    match validation.mode {
        ClientValidationMode::AllowValidOnly => {
            builder.build().map_err(|e| Error::ClientCa(e.to_string()))
        }
        ClientValidationMode::AllowInsecureFallback => {
            let inner = builder
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::ClientCa(e.to_string()))?;
            Ok(Arc::new(InsecureFallback { inner }))
        }
    }
}

/// Asks for a client certificate and checks it, but accepts the connection
/// whatever the outcome of the chain check (the client must still prove it
/// holds the key of the certificate it sent).
#[derive(Debug)]
struct InsecureFallback {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for InsecureFallback {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(error) = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            tracing::debug!(%error, "client certificate not valid, allowed by AllowInsecureFallback");
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// For a port whose client CAs did not resolve: asks for a certificate and
/// accepts none.
#[derive(Debug)]
struct RefuseEveryClient {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for RefuseEveryClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (".suffix", key), longest suffix first.
    wildcards: Vec<(String, Arc<CertifiedKey>)>,
    /// Listeners without hostname, or the first certificate: for clients
    /// without SNI or with a name no listener claims.
    fallback: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn new(certificates: &[ServerCertificate], provider: &CryptoProvider) -> Result<Self, Error> {
        let mut resolver = SniResolver {
            exact: HashMap::new(),
            wildcards: Vec::new(),
            fallback: None,
        };
        let mut first = None;
        for certificate in certificates {
            let hostname = certificate.hostname.as_deref().unwrap_or("*");
            let key = Arc::new(certified_key(certificate, provider).map_err(|message| {
                Error::Certificate {
                    hostname: hostname.to_string(),
                    message,
                }
            })?);
            first.get_or_insert_with(|| key.clone());
            match &certificate.hostname {
                None => {
                    resolver.fallback.get_or_insert(key);
                }
                Some(name) => match name.to_ascii_lowercase().strip_prefix('*') {
                    Some(suffix) => {
                        if !resolver.wildcards.iter().any(|(s, _)| s == suffix) {
                            resolver.wildcards.push((suffix.to_string(), key));
                        }
                    }
                    None => {
                        resolver
                            .exact
                            .entry(name.to_ascii_lowercase())
                            .or_insert(key);
                    }
                },
            }
        }
        resolver
            .wildcards
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        if resolver.fallback.is_none() {
            resolver.fallback = first;
        }
        Ok(resolver)
    }

    fn find(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.fallback.clone();
        };
        self.exact
            .get(&name)
            .or_else(|| {
                self.wildcards
                    .iter()
                    .find(|(suffix, _)| {
                        name.len() > suffix.len() && name.ends_with(suffix.as_str())
                    })
                    .map(|(_, key)| key)
            })
            .or(self.fallback.as_ref())
            .cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(client_hello.server_name())
    }
}

fn certified_key(
    certificate: &ServerCertificate,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certificate.cert_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the chain".into());
    }
    let key = PrivateKeyDer::from_pem_slice(certificate.key_pem.as_bytes())
        .map_err(|e| format!("private key: {e}"))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(hostname: Option<&str>, names: &[&str]) -> ServerCertificate {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let generated = rcgen::generate_simple_self_signed(names).expect("rcgen");
        ServerCertificate {
            hostname: hostname.map(str::to_string),
            cert_chain_pem: generated.cert.pem(),
            key_pem: generated.signing_key.serialize_pem(),
        }
    }

    fn leaf(key: Option<Arc<CertifiedKey>>) -> Vec<u8> {
        key.expect("a certificate").cert[0].to_vec()
    }

    #[test]
    fn the_certificate_is_chosen_by_exact_name_then_longest_wildcard_then_fallback() {
        let provider = rustls::crypto::ring::default_provider();
        let certificates = [
            certificate(Some("*.example"), &["*.example"]),
            certificate(Some("*.b.example"), &["*.b.example"]),
            certificate(Some("a.b.example"), &["a.b.example"]),
            certificate(None, &["any"]),
        ];
        let resolver = SniResolver::new(&certificates, &provider).expect("resolver");
        let der = |i: usize| {
            CertificateDer::from_pem_slice(certificates[i].cert_chain_pem.as_bytes())
                .expect("pem")
                .to_vec()
        };
        assert_eq!(leaf(resolver.find(Some("A.B.example"))), der(2));
        assert_eq!(leaf(resolver.find(Some("c.b.example"))), der(1));
        assert_eq!(leaf(resolver.find(Some("c.example"))), der(0));
        assert_eq!(leaf(resolver.find(Some("other.test"))), der(3));
        assert_eq!(leaf(resolver.find(None)), der(3));
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused() {
        let mut mismatched = certificate(Some("a.example"), &["a.example"]);
        mismatched.key_pem = certificate(None, &["other"]).key_pem;
        assert!(matches!(
            acceptor(&[mismatched]),
            Err(Error::Certificate { .. })
        ));
        assert!(acceptor(&[]).expect("no certificates").is_none());
        assert!(
            acceptor(&[certificate(None, &["x"])])
                .expect("ok")
                .is_some()
        );
    }

    /// A CA and a client certificate it signed: (CA PEM, client chain, client key).
    fn client_pki() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().expect("key"))
            .expect("ca");
        let mut leaf = rcgen::CertificateParams::new(vec!["client".to_string()]).expect("params");
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = leaf.signed_by(&key, &ca).expect("leaf");
        (
            ca.pem(),
            cert.der().clone(),
            PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
        )
    }

    /// A TLS handshake over memory with an acceptor for `server` and `validation`,
    /// the client presenting `client_cert` if any; Ok when the server accepts it
    /// and reads the client's first byte.
    async fn handshake(
        server: &ServerCertificate,
        validation: &ClientValidation,
        client_cert: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    ) -> Result<(), String> {
        let acceptor =
            acceptor_with_client_validation(std::slice::from_ref(server), Some(validation))
                .expect("acceptor")
                .expect("TLS");
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(server.cert_chain_pem.as_bytes()).expect("pem"))
            .expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
        let config = match client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(vec![cert], key)
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let client = async move {
            use tokio::io::AsyncWriteExt as _;
            let name = rustls_pki_types::ServerName::try_from("a.example").expect("name");
            // In TLS 1.3 the client finishes before the server has checked its
            // certificate: the server's side decides.
            if let Ok(mut tls) = connector.connect(name, client_io).await {
                let _ = tls.write_all(b"x").await;
                let _ = tls.flush().await;
                Some(tls)
            } else {
                None
            }
        };
        let server = async move {
            use tokio::io::AsyncReadExt as _;
            let mut tls = acceptor
                .accept(server_io)
                .await
                .map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        };
        let (_client, served) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(client, server)
        })
        .await
        .expect("handshake within 10 s");
        served
    }

    #[tokio::test]
    async fn allow_valid_only_refuses_clients_without_a_certificate_of_its_ca() {
        let server = certificate(Some("a.example"), &["a.example"]);
        let (ca_pem, cert, key) = client_pki();
        let (_, other_cert, other_key) = client_pki();
        let validation = ClientValidation {
            ca_pem,
            mode: ClientValidationMode::AllowValidOnly,
        };
        handshake(&server, &validation, Some((cert, key)))
            .await
            .expect("a certificate of the CA is accepted");
        let without = handshake(&server, &validation, None).await;
        assert!(without.is_err(), "no certificate: {without:?}");
        let other = handshake(&server, &validation, Some((other_cert, other_key))).await;
        assert!(other.is_err(), "certificate of another CA: {other:?}");
    }

    #[tokio::test]
    async fn allow_insecure_fallback_serves_clients_without_a_valid_certificate() {
        let server = certificate(Some("a.example"), &["a.example"]);
        let (ca_pem, cert, key) = client_pki();
        let (_, other_cert, other_key) = client_pki();
        let validation = ClientValidation {
            ca_pem,
            mode: ClientValidationMode::AllowInsecureFallback,
        };
        handshake(&server, &validation, Some((cert, key)))
            .await
            .expect("a certificate of the CA is accepted");
        handshake(&server, &validation, None)
            .await
            .expect("no certificate is let through");
        handshake(&server, &validation, Some((other_cert, other_key)))
            .await
            .expect("a certificate of another CA is let through");
    }

    #[tokio::test]
    async fn a_port_without_a_valid_client_ca_refuses_every_client() {
        let server = certificate(Some("a.example"), &["a.example"]);
        let (_, cert, key) = client_pki();
        let validation = ClientValidation {
            ca_pem: String::new(),
            mode: ClientValidationMode::AllowValidOnly,
        };
        let with = handshake(&server, &validation, Some((cert, key))).await;
        assert!(with.is_err(), "with a certificate: {with:?}");
        let without = handshake(&server, &validation, None).await;
        assert!(without.is_err(), "without a certificate: {without:?}");
    }

    #[test]
    fn client_cas_that_do_not_parse_are_refused() {
        let server = certificate(Some("a.example"), &["a.example"]);
        let validation = ClientValidation {
            ca_pem: "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into(),
            mode: ClientValidationMode::AllowValidOnly,
        };
        assert!(matches!(
            acceptor_with_client_validation(&[server], Some(&validation)),
            Err(Error::ClientCa(_))
        ));
    }
}
