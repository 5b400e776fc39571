//! A listener's `tls.certificateRefs` → the certificates the HTTPS proxy
//! serves: Secrets of type `kubernetes.io/tls` holding a PEM chain and key,
//! in another namespace only where a ReferenceGrant allows it.

use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::GATEWAY_GROUP;
use super::listeners::{CertificateRef, Listener, TlsMode};
use crate::model::{ClientCertificate, ServerCertificate};
use crate::store::{ObjectKey, Snapshot};

pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";

/// Why a certificateRef cannot be served, with the listener condition reason
/// the spec gives it (ResolvedRefs=False).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateProblem {
    /// `InvalidCertificateRef` or `RefNotPermitted`.
    pub reason: &'static str,
    pub message: String,
}

impl CertificateProblem {
    fn invalid(message: String) -> Self {
        Self {
            reason: "InvalidCertificateRef",
            message,
        }
    }
}

/// HTTPS and TLS Terminate listeners: the certificates their certificateRefs
/// resolve to; the first problem becomes the listener's unresolved reference
/// (ResolvedRefs=False), which keeps it from being served.
pub fn resolve_listener(listener: &mut Listener, snapshot: &Snapshot) {
    let terminates = match (listener.protocol, &listener.tls) {
        ("HTTPS", None) => true,
        ("HTTPS" | "TLS", Some(tls)) => tls.mode == TlsMode::Terminate,
        _ => false,
    };
    if !terminates {
        return;
    }
    let refs = listener
        .tls
        .as_ref()
        .map(|t| t.certificate_refs.as_slice())
        .unwrap_or_default();
    let (found, problems) =
        listener_certificates(snapshot, listener.namespace, listener.hostname, refs);
    let problem = problems.into_iter().next().or_else(|| {
        found.is_empty().then(|| {
            CertificateProblem::invalid(
                "a listener that terminates TLS needs certificateRefs".into(),
            )
        })
    });
    if let Some(problem) = problem
        && listener.unresolved.is_none()
    {
        listener.unresolved = Some((problem.reason, problem.message));
    }
    listener.certificates = found;
}

/// The certificates of one listener (each served for `hostname`), and the
/// problems of the refs that could not be used.
pub fn listener_certificates(
    snapshot: &Snapshot,
    listener_namespace: &str,
    hostname: Option<&str>,
    refs: &[CertificateRef],
) -> (Vec<ServerCertificate>, Vec<CertificateProblem>) {
    let mut certificates = Vec::new();
    let mut problems = Vec::new();
    for reference in refs {
        match certificate(snapshot, listener_namespace, reference) {
            Ok((cert_chain_pem, key_pem)) => certificates.push(ServerCertificate {
                hostname: hostname.map(str::to_string),
                cert_chain_pem,
                key_pem,
            }),
            Err(problem) => problems.push(problem),
        }
    }
    (certificates, problems)
}

/// A Gateway's `spec.tls.backend.clientCertificateRef`, which the proxy
/// presents to TLS backends: None when the Gateway names none; else the
/// certificate, or why it cannot be used with the Gateway `ResolvedRefs`
/// reason the spec gives it (`InvalidClientCertificateRef` for a missing,
/// foreign or malformed Secret; `RefNotPermitted` without a ReferenceGrant).
pub fn backend_client_certificate(
    key: &ObjectKey,
    gateway: &gateway_api::gateways::Gateway,
    snapshot: &Snapshot,
) -> Option<Result<ClientCertificate, CertificateProblem>> {
    let r = gateway
        .spec
        .tls
        .as_ref()?
        .backend
        .as_ref()?
        .client_certificate_ref
        .as_ref()?;
    let reference = CertificateRef {
        group: r.group.clone().unwrap_or_default(),
        kind: r.kind.clone().unwrap_or_else(|| "Secret".into()),
        namespace: r.namespace.clone().unwrap_or_else(|| key.namespace.clone()),
        name: r.name.clone(),
    };
    Some(
        certificate(snapshot, &key.namespace, &reference)
            .map(|(cert_chain_pem, key_pem)| ClientCertificate {
                cert_chain_pem,
                key_pem,
            })
            .map_err(|problem| match problem.reason {
                "RefNotPermitted" => problem,
                _ => CertificateProblem {
                    reason: "InvalidClientCertificateRef",
                    message: problem.message,
                },
            }),
    )
}

fn certificate(
    snapshot: &Snapshot,
    listener_namespace: &str,
    reference: &CertificateRef,
) -> Result<(String, String), CertificateProblem> {
    let group = reference.group.as_str();
    if !(group.is_empty() || group == "core") || reference.kind != "Secret" {
        return Err(CertificateProblem::invalid(format!(
            "{group}/{} {} is not a Secret",
            reference.kind, reference.name
        )));
    }
    let namespace = reference.namespace.as_str();
    if namespace != listener_namespace
        && !secret_granted(snapshot, listener_namespace, namespace, &reference.name)
    {
        return Err(CertificateProblem {
            reason: "RefNotPermitted",
            message: format!(
                "no ReferenceGrant in {namespace} allows Gateways in {listener_namespace} to use Secret {}",
                reference.name
            ),
        });
    }
    let key = ObjectKey::new(namespace, &reference.name);
    let Some(secret) = snapshot.secrets.get(&key) else {
        return Err(CertificateProblem::invalid(format!(
            "Secret {key} not found"
        )));
    };
    tls_pair(secret).map_err(|why| CertificateProblem::invalid(format!("Secret {key}: {why}")))
}

fn secret_granted(
    snapshot: &Snapshot,
    from_namespace: &str,
    to_namespace: &str,
    name: &str,
) -> bool {
    snapshot
        .reference_grants
        .iter()
        .filter(|(key, _)| key.namespace == to_namespace)
        .any(|(_, grant)| {
            grant.spec.from.iter().any(|f| {
                f.group == GATEWAY_GROUP && f.kind == "Gateway" && f.namespace == from_namespace
            }) && grant.spec.to.iter().any(|t| {
                t.group.is_empty()
                    && t.kind == "Secret"
                    && t.name.as_deref().is_none_or(|n| n == name)
            })
        })
}

/// The PEM chain and key of a `kubernetes.io/tls` Secret, checked to parse.
fn tls_pair(secret: &Secret) -> Result<(String, String), String> {
    if secret.type_.as_deref() != Some(SECRET_TYPE_TLS) {
        return Err(format!("type is not {SECRET_TYPE_TLS}"));
    }
    let field = |name: &str| -> Result<String, String> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(name))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(name))
                    .map(|s| s.clone().into_bytes())
            })
            .ok_or_else(|| format!("no {name}"))?;
        String::from_utf8(bytes).map_err(|_| format!("{name} is not PEM text"))
    };
    let chain = field("tls.crt")?;
    let key = field("tls.key")?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(chain.as_bytes()).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => {}
        _ => return Err("tls.crt holds no PEM certificate".into()),
    }
    if PrivateKeyDer::from_pem_slice(key.as_bytes()).is_err() {
        return Err("tls.key holds no PEM private key".into());
    }
    Ok((chain, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::file::load_str;

    fn snapshot(yaml: &str) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        load_str(
            std::path::Path::new("t.yaml"),
            yaml,
            &mut snapshot,
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        snapshot
    }

    fn secret(namespace: &str, name: &str, type_: &str, cert: &str, key: &str) -> String {
        let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             type: {type_}\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(cert),
            indent(key)
        )
    }

    /// A Secret ref from a listener in namespace `gw`, as listeners.rs normalises it.
    fn reference(name: &str, namespace: Option<&str>) -> CertificateRef {
        CertificateRef {
            group: String::new(),
            kind: "Secret".into(),
            namespace: namespace.unwrap_or("gw").into(),
            name: name.into(),
        }
    }

    fn pair() -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["a.example".into()]).expect("rcgen");
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn a_tls_secret_in_the_gateway_namespace_is_served_for_the_listener_hostname() {
        let (cert, key) = pair();
        let snapshot = snapshot(&secret("gw", "c", SECRET_TYPE_TLS, &cert, &key));
        let (certs, problems) =
            listener_certificates(&snapshot, "gw", Some("a.example"), &[reference("c", None)]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].hostname.as_deref(), Some("a.example"));
        assert_eq!(certs[0].cert_chain_pem.trim(), cert.trim());
    }

    #[test]
    fn missing_wrong_type_and_bad_pem_secrets_are_invalid_certificate_refs() {
        let (cert, key) = pair();
        let snapshot = snapshot(&format!(
            "{}{}{}",
            secret("gw", "opaque", "Opaque", &cert, &key),
            secret("gw", "garbage", SECRET_TYPE_TLS, "not a cert", &key),
            secret("gw", "nokey", SECRET_TYPE_TLS, &cert, "not a key"),
        ));
        for name in ["missing", "opaque", "garbage", "nokey"] {
            let (certs, problems) =
                listener_certificates(&snapshot, "gw", None, &[reference(name, None)]);
            assert!(certs.is_empty(), "{name}");
            assert_eq!(problems.len(), 1, "{name}");
            assert_eq!(problems[0].reason, "InvalidCertificateRef", "{name}");
        }
        let mut configmap = reference("c", None);
        configmap.kind = "ConfigMap".into();
        let (_, problems) = listener_certificates(&snapshot, "gw", None, &[configmap]);
        assert_eq!(problems[0].reason, "InvalidCertificateRef");
    }

    #[test]
    fn another_namespace_needs_a_reference_grant_to_the_secret() {
        let (cert, key) = pair();
        let tls = secret("certs", "c", SECRET_TYPE_TLS, &cert, &key);
        let refs = [reference("c", Some("certs"))];
        let (certs, problems) = listener_certificates(&snapshot(&tls), "gw", None, &refs);
        assert!(certs.is_empty());
        assert_eq!(problems[0].reason, "RefNotPermitted");

        let grant = "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
                     metadata: {name: g, namespace: certs}\nspec:\n  from:\n  - {group: gateway.networking.k8s.io, kind: Gateway, namespace: gw}\n\
                     \x20 to:\n  - {group: '', kind: Secret}\n";
        let (certs, problems) =
            listener_certificates(&snapshot(&format!("{tls}{grant}")), "gw", None, &refs);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(certs.len(), 1);
        // A grant for other Gateways' namespace does not count.
        let (certs, _) =
            listener_certificates(&snapshot(&format!("{tls}{grant}")), "other", None, &refs);
        assert!(certs.is_empty());
    }
}
