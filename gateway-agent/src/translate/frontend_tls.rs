//! A Gateway's `spec.tls.frontend`: the CA certificates HTTPS listeners check
//! client certificates against, per port (`perPort`) or for every port
//! (`default`). A listener whose validation cannot be resolved is not
//! accepted (`NoValidCACertificate`), so that it never serves without the
//! client authentication it was asked for.

use gateway_api::gateways::{
    GatewayTlsFrontendDefaultValidationMode, GatewayTlsFrontendPerPortTlsValidationMode,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::GATEWAY_GROUP;
use super::listeners::Listener;
use crate::model::{ClientValidation, ClientValidationMode};
use crate::store::{ObjectKey, Snapshot};

/// The key of a ConfigMap (or Secret) that holds CA certificates.
const CA_KEY: &str = "ca.crt";

/// One `caCertificateRefs` entry, whichever of the generated types it came from.
struct CaRef<'a> {
    group: &'a str,
    kind: &'a str,
    name: &'a str,
    namespace: Option<&'a str>,
}

/// The validation that applies to HTTPS `listener` (its port's `perPort`
/// entry, else `default`), or None. When its CA references do not resolve,
/// the listener is marked unresolved and not accepted, and the validation
/// returned has no CA: its port refuses every handshake.
pub fn resolve_listener(listener: &mut Listener, snapshot: &Snapshot) -> Option<ClientValidation> {
    if listener.protocol != "HTTPS" || !listener.serves() {
        return None;
    }
    let frontend = snapshot
        .gateways
        .get(listener.gateway)?
        .spec
        .tls
        .as_ref()?
        .frontend
        .as_ref()?;
    let per_port = frontend
        .per_port
        .iter()
        .flatten()
        .find(|p| p.port == i32::from(listener.port))
        .and_then(|p| p.tls.validation.as_ref());
    let (refs, mode): (Vec<CaRef>, ClientValidationMode) = match per_port {
        Some(v) => (
            v.ca_certificate_refs
                .iter()
                .map(|r| CaRef {
                    group: &r.group,
                    kind: &r.kind,
                    name: &r.name,
                    namespace: r.namespace.as_deref(),
                })
                .collect(),
            match v.mode {
                Some(GatewayTlsFrontendPerPortTlsValidationMode::AllowInsecureFallback) => {
                    ClientValidationMode::AllowInsecureFallback
                }
                _ => ClientValidationMode::AllowValidOnly,
            },
        ),
        None => {
            let v = frontend.default.validation.as_ref()?;
            (
                v.ca_certificate_refs
                    .iter()
                    .map(|r| CaRef {
                        group: &r.group,
                        kind: &r.kind,
                        name: &r.name,
                        namespace: r.namespace.as_deref(),
                    })
                    .collect(),
                match v.mode {
                    Some(GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback) => {
                        ClientValidationMode::AllowInsecureFallback
                    }
                    _ => ClientValidationMode::AllowValidOnly,
                },
            )
        }
    };
    let gateway_namespace = listener.gateway.namespace.clone();
    let mut ca_pem = String::new();
    let mut problem = None;
    for reference in &refs {
        match ca_certificates(snapshot, &gateway_namespace, reference) {
            Ok(pem) => {
                ca_pem.push_str(&pem);
                ca_pem.push('\n');
            }
            Err(p) => {
                problem.get_or_insert(p);
            }
        }
    }
    if ca_pem.is_empty() && problem.is_none() {
        problem = Some((
            "InvalidCACertificateRef",
            "frontend validation names no caCertificateRefs".to_string(),
        ));
    }
    if let Some((reason, message)) = problem {
        // One bad reference is enough to refuse the listener: serving with a
        // narrower trust set than asked for would fail clients unexpectedly.
        listener.rejected = Some((
            "NoValidCACertificate",
            format!(
                "client certificate validation for port {}: {message}",
                listener.port
            ),
        ));
        listener.unresolved = Some((reason, message));
        return Some(ClientValidation {
            ca_pem: String::new(),
            mode: ClientValidationMode::AllowValidOnly,
        });
    }
    Some(ClientValidation { ca_pem, mode })
}

/// The PEM CA certificates one reference resolves to, or the listener's
/// ResolvedRefs reason and message.
fn ca_certificates(
    snapshot: &Snapshot,
    gateway_namespace: &str,
    reference: &CaRef,
) -> Result<String, (&'static str, String)> {
    let core = reference.group.is_empty() || reference.group == "core";
    if !core || !matches!(reference.kind, "ConfigMap" | "Secret") {
        return Err((
            "InvalidCACertificateKind",
            format!(
                "caCertificateRef {}/{} {} is neither a ConfigMap nor a Secret",
                reference.group, reference.kind, reference.name
            ),
        ));
    }
    let namespace = reference.namespace.unwrap_or(gateway_namespace);
    if namespace != gateway_namespace
        && !granted(
            snapshot,
            gateway_namespace,
            namespace,
            reference.kind,
            reference.name,
        )
    {
        return Err((
            "RefNotPermitted",
            format!(
                "no ReferenceGrant in {namespace} allows Gateways in {gateway_namespace} to use {} {}",
                reference.kind, reference.name
            ),
        ));
    }
    let key = ObjectKey::new(namespace, reference.name);
    let text = if reference.kind == "ConfigMap" {
        snapshot
            .config_maps
            .get(&key)
            .map(|m| m.data.as_ref().and_then(|d| d.get(CA_KEY)).cloned())
    } else {
        snapshot.secrets.get(&key).map(|s| {
            s.data
                .as_ref()
                .and_then(|d| d.get(CA_KEY))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        })
    };
    let Some(text) = text else {
        return Err((
            "InvalidCACertificateRef",
            format!("{} {key} not found", reference.kind),
        ));
    };
    match text.filter(|t| parses_as_certificates(t)) {
        Some(pem) => Ok(pem),
        None => Err((
            "InvalidCACertificateRef",
            format!(
                "{} {key} has no PEM certificate under {CA_KEY}",
                reference.kind
            ),
        )),
    }
}

fn parses_as_certificates(text: &str) -> bool {
    let mut certificates = CertificateDer::pem_slice_iter(text.as_bytes()).peekable();
    certificates.peek().is_some() && certificates.all(|c| c.is_ok())
}

/// A ReferenceGrant in `to_namespace` lets Gateways of `from_namespace` use
/// the core object `kind`/`name`.
fn granted(
    snapshot: &Snapshot,
    from_namespace: &str,
    to_namespace: &str,
    kind: &str,
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
                t.group.is_empty() && t.kind == kind && t.name.as_deref().is_none_or(|n| n == name)
            })
        })
}
