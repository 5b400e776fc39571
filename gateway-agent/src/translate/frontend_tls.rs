//! A Gateway's `spec.tls.frontend`: the CA certificates HTTPS listeners check
//! client certificates against, per port (`perPort`) or for every port
//! (`default`). A listener none of whose CA references resolve is not
//! accepted (`NoValidCACertificate`), so that it never serves without the
//! client authentication it was asked for; one with some bad references is
//! `ResolvedRefs=False` and checks clients against the good ones.

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
/// entry, else `default`), or None. When some CA references do not resolve,
/// the listener is marked unresolved and checks clients against the others;
/// when none does, it is not accepted either, and the validation returned
/// has no CA: its port refuses every handshake.
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
    if let Some((reason, message)) = problem.clone()
        && !ca_pem.is_empty()
    {
        // The spec: some references invalid is ResolvedRefs=False, and the
        // listener serves with the CA certificates of the others.
        listener.unresolved = Some((reason, message));
        listener.serves_partially_resolved = true;
        return Some(ClientValidation { ca_pem, mode });
    }
    if let Some((reason, message)) = problem {
        // No usable CA at all: the listener is not accepted, and its port
        // refuses every handshake rather than serve without client checks.
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
        // stringData too: in standalone mode no API server folds it into data.
        snapshot.secrets.get(&key).map(|s| {
            s.data
                .as_ref()
                .and_then(|d| d.get(CA_KEY))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .or_else(|| s.string_data.as_ref().and_then(|d| d.get(CA_KEY)).cloned())
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use crate::model::{ClientValidationMode, HttpListener};
    use crate::translate::{Settings, translate};

    fn indent(text: &str) -> String {
        text.lines().map(|l| format!("    {l}\n")).collect()
    }

    /// A Gateway with `frontend` as its `spec.tls.frontend` and HTTPS
    /// listeners on 443 and 8443 (plus HTTP on 80), the server Secret, CA
    /// ConfigMap `ca1` (namespace gw) and CA Secret `ca2` (namespace certs,
    /// granted to Gateways of gw when `grant`).
    fn translate_with(frontend: &str, grant: bool) -> crate::translate::Output {
        let server = rcgen::generate_simple_self_signed(vec!["a.example".into()]).expect("rcgen");
        let ca = |name: &str| {
            rcgen::generate_simple_self_signed(vec![name.to_string()])
                .expect("rcgen")
                .cert
                .pem()
        };
        let mut yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: ours}}\n\
             spec: {{controllerName: test/controller}}\n\
             ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: server, namespace: gw}}\n\
             type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}\
             ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca1, namespace: gw}}\n\
             data:\n  ca.crt: |\n{}\
             ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: ca2, namespace: certs}}\n\
             stringData:\n  ca.crt: |\n{}\
             ---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {{name: g, namespace: gw}}\nspec:\n  gatewayClassName: ours\n\
             \x20 addresses: [{{value: 192.0.2.1}}]\n  tls:\n    frontend:\n{frontend}\n\
             \x20 listeners:\n\
             \x20 - {{name: a, protocol: HTTPS, port: 443, tls: {{certificateRefs: [{{name: server}}]}}}}\n\
             \x20 - {{name: b, protocol: HTTPS, port: 8443, tls: {{certificateRefs: [{{name: server}}]}}}}\n\
             \x20 - {{name: c, protocol: HTTP, port: 80}}\n",
            indent(&server.cert.pem()),
            indent(&server.signing_key.serialize_pem()),
            indent(&ca("ca1")),
            indent(&ca("ca2")),
        );
        if grant {
            yaml.push_str(
                "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
                 metadata: {name: g, namespace: certs}\n\
                 spec:\n  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: gw}]\n\
                 \x20 to: [{group: '', kind: Secret, name: ca2}]\n",
            );
        }
        let mut snapshot = crate::store::Snapshot::default();
        let mut errors = Vec::new();
        crate::source::file::load_str(
            std::path::Path::new("t.yaml"),
            &yaml,
            &mut snapshot,
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        translate(
            &snapshot,
            &Settings {
                controller_name: "test/controller".into(),
                node_addresses: vec![Ipv4Addr::new(198, 51, 100, 1)],
                usable_addresses: None,
            },
        )
    }

    const DEFAULT_AND_PER_PORT: &str = "      default:\n        validation:\n          mode: AllowInsecureFallback\n          caCertificateRefs: [{group: '', kind: ConfigMap, name: ca1}]\n      perPort:\n      - port: 8443\n        tls:\n          validation:\n            caCertificateRefs: [{group: '', kind: Secret, name: ca2, namespace: certs}]\n      - port: 80\n        tls:\n          validation:\n            caCertificateRefs: [{group: '', kind: ConfigMap, name: missing}]";

    fn socket(out: &crate::translate::Output, port: u16) -> &HttpListener {
        out.config
            .http
            .iter()
            .find(|l| l.bind.port() == port)
            .unwrap_or_else(|| panic!("no socket on {port}: {:#?}", out.config.http))
    }

    fn listener_conditions(
        out: &crate::translate::Output,
        name: &str,
    ) -> Vec<(String, String, String)> {
        out.statuses
            .iter()
            .filter(|s| s.section.as_deref() == Some(name))
            .flat_map(|s| &s.conditions)
            .map(|c| {
                (
                    c.type_.to_string(),
                    c.status.to_string(),
                    c.reason.to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn a_per_port_validation_overrides_the_default_and_plain_http_ignores_it() {
        let out = translate_with(DEFAULT_AND_PER_PORT, true);
        let default = socket(&out, 443)
            .client_validation
            .as_ref()
            .expect("443 validates");
        assert_eq!(default.mode, ClientValidationMode::AllowInsecureFallback);
        let per_port = socket(&out, 8443)
            .client_validation
            .as_ref()
            .expect("8443 validates");
        assert_eq!(per_port.mode, ClientValidationMode::AllowValidOnly);
        assert_ne!(default.ca_pem, per_port.ca_pem);
        assert!(!per_port.ca_pem.is_empty());
        assert!(socket(&out, 80).client_validation.is_none());
        for name in ["a", "b", "c"] {
            let conditions = listener_conditions(&out, name);
            assert!(
                conditions.contains(&("Accepted".into(), "true".into(), "Accepted".into())),
                "{name}: {conditions:?}"
            );
        }
    }

    #[test]
    fn one_bad_and_one_good_ca_reference_serve_with_the_good_one_and_resolved_refs_false() {
        let both = "      default:\n        validation:\n          caCertificateRefs:\n          - {group: '', kind: ConfigMap, name: missing}\n          - {group: '', kind: ConfigMap, name: ca1}";
        let out = translate_with(both, false);
        let conditions = listener_conditions(&out, "a");
        for expected in [
            ("ResolvedRefs", "false", "InvalidCACertificateRef"),
            ("Accepted", "true", "Accepted"),
            ("Programmed", "true", "Programmed"),
        ] {
            let expected = (expected.0.into(), expected.1.into(), expected.2.into());
            assert!(conditions.contains(&expected), "{conditions:?}");
        }
        // Clients are checked against ca1 alone (not refused outright).
        let served = socket(&out, 443).client_validation.as_ref().expect("443");
        assert_eq!(served.ca_pem.matches("BEGIN CERTIFICATE").count(), 1);
        assert_eq!(served.mode, ClientValidationMode::AllowValidOnly);
    }

    #[test]
    fn a_ca_secret_in_another_namespace_needs_a_reference_grant() {
        let out = translate_with(DEFAULT_AND_PER_PORT, false);
        let conditions = listener_conditions(&out, "b");
        assert!(
            conditions.contains(&(
                "ResolvedRefs".into(),
                "false".into(),
                "RefNotPermitted".into()
            )),
            "{conditions:?}"
        );
        assert!(
            conditions.contains(&(
                "Accepted".into(),
                "false".into(),
                "NoValidCACertificate".into()
            )),
            "{conditions:?}"
        );
        // The port stays bound and refuses every client; 443 is untouched.
        let refuse_all = socket(&out, 8443).client_validation.as_ref().expect("8443");
        assert!(refuse_all.ca_pem.is_empty());
        assert!(socket(&out, 8443).rules.is_empty());
        assert!(
            !socket(&out, 443)
                .client_validation
                .as_ref()
                .expect("443")
                .ca_pem
                .is_empty()
        );
    }
}
