//! BackendTLSPolicy: which policy governs each Service port (conflicts settled
//! as the spec orders them), whether it can be used (CA certificates resolved),
//! and its status: one ancestor per Gateway the Service is reached through.

use std::collections::{BTreeMap, BTreeSet};

use gateway_api::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicyValidationSubjectAltNamesType as SanType,
};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};

use super::input::BackendRef;
use super::status::{Condition, ObjectStatus};
use crate::model::{BackendTls, SubjectAltName, TrustAnchors};
use crate::store::{ObjectKey, Snapshot};

/// The key of a ConfigMap that holds CA certificates.
const CA_KEY: &str = "ca.crt";

type Rejection = (&'static str, String);

/// One policy, decided.
struct Policy<'a> {
    key: ObjectKey,
    object: &'a BackendTlsPolicy,
    /// Problems with its CA certificate references (ResolvedRefs False).
    unresolved: Option<Rejection>,
    /// What the proxy uses, or why the policy cannot be used (Accepted False).
    tls: Result<BackendTls, Rejection>,
    /// Set when an older (or more specific) policy governs all its targets.
    conflicted: bool,
}

/// Every BackendTLSPolicy of the snapshot and the Service ports each governs.
pub(super) struct BackendTlsPolicies<'a> {
    policies: Vec<Policy<'a>>,
    /// (Service, port name or None for the whole Service) → index in `policies`.
    governing: BTreeMap<(ObjectKey, Option<String>), usize>,
}

impl<'a> BackendTlsPolicies<'a> {
    pub(super) fn resolve(snapshot: &'a Snapshot) -> Self {
        let mut policies: Vec<Policy<'a>> = snapshot
            .backend_tls_policies
            .iter()
            .map(|(key, object)| {
                let (tls, unresolved) = validate(key, object, snapshot);
                Policy {
                    key: key.clone(),
                    object,
                    unresolved,
                    tls,
                    conflicted: false,
                }
            })
            .collect();
        // Oldest first, then by namespace/name: the first to claim a target keeps it.
        let mut order: Vec<usize> = (0..policies.len()).collect();
        order.sort_by(|a, b| {
            let (a, b) = (&policies[*a], &policies[*b]);
            (created(a.object), &a.key).cmp(&(created(b.object), &b.key))
        });
        let mut governing = BTreeMap::new();
        for index in order {
            let policy = &policies[index];
            let mut claimed_any = false;
            let mut lost_any = false;
            for target in &policy.object.spec.target_refs {
                if !(target.group.is_empty() || target.group == "core") || target.kind != "Service"
                {
                    continue;
                }
                let service = ObjectKey::new(&policy.key.namespace, &target.name);
                match governing.entry((service, target.section_name.clone())) {
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(index);
                        claimed_any = true;
                    }
                    std::collections::btree_map::Entry::Occupied(_) => lost_any = true,
                }
            }
            policies[index].conflicted = lost_any && !claimed_any;
        }
        Self {
            policies,
            governing,
        }
    }

    /// The index of the policy governing `backend` (a Service port), if any: a
    /// policy naming the port (by name) wins over one for the whole Service.
    fn governing(&self, backend: &BackendRef, snapshot: &Snapshot) -> Option<usize> {
        // Asked for every backendRef of every route: no allocation when no policy governs.
        if self.governing.is_empty() {
            return None;
        }
        let service = ObjectKey::new(&backend.namespace, &backend.name);
        let port_name = snapshot.services.get(&service).and_then(|s| {
            s.spec
                .iter()
                .flat_map(|spec| spec.ports.iter().flatten())
                .find(|p| Some(p.port) == backend.port)
                .and_then(|p| p.name.clone())
        });
        port_name
            .and_then(|name| self.governing.get(&(service.clone(), Some(name))))
            .or_else(|| self.governing.get(&(service, None)))
            .copied()
    }

    /// How the proxy must connect to `backend`: Ok(None) in plain text,
    /// Ok(Some) with TLS, Err when its policy cannot be used (no plain-text
    /// fallback: the backend's share of requests fails).
    pub(super) fn for_backend(
        &self,
        backend: &BackendRef,
        snapshot: &Snapshot,
    ) -> Result<Option<BackendTls>, Rejection> {
        match self.governing(backend, snapshot) {
            None => Ok(None),
            Some(index) => self.policies[index].tls.clone().map(Some),
        }
    }

    /// Status of every policy: one entry per Gateway through which one of its
    /// Services is reached (`reached`: Gateway → backendRefs of the routes
    /// attached to it). A policy reached through no Gateway of ours gets none.
    pub(super) fn statuses(
        &self,
        reached: &BTreeMap<ObjectKey, Vec<&BackendRef>>,
        snapshot: &Snapshot,
    ) -> Vec<ObjectStatus> {
        let mut ancestors: BTreeMap<usize, BTreeSet<&ObjectKey>> = BTreeMap::new();
        for (gateway, backends) in reached {
            for backend in backends {
                if let Some(index) = self.governing(backend, snapshot) {
                    ancestors.entry(index).or_default().insert(gateway);
                }
            }
        }
        // A conflicted policy governs nothing, yet its Services may be reached.
        for (index, policy) in self.policies.iter().enumerate() {
            if !policy.conflicted {
                continue;
            }
            for (gateway, backends) in reached {
                let targeted = backends.iter().any(|b| {
                    b.namespace == policy.key.namespace
                        && policy
                            .object
                            .spec
                            .target_refs
                            .iter()
                            .any(|t| t.name == b.name)
                });
                if targeted {
                    ancestors.entry(index).or_default().insert(gateway);
                }
            }
        }
        let mut out = Vec::new();
        for (index, gateways) in ancestors {
            let policy = &self.policies[index];
            for gateway in gateways {
                let mut status = ObjectStatus::new("BackendTLSPolicy", policy.key.clone());
                status.generation = policy.object.metadata.generation.unwrap_or(1);
                status.parent = Some(gateway.clone());
                status.push(accepted_condition(policy));
                status.push(match &policy.unresolved {
                    Some((reason, message)) => Condition::no("ResolvedRefs", reason, message),
                    None => {
                        Condition::yes("ResolvedRefs", "ResolvedRefs", "all references resolved")
                    }
                });
                out.push(status);
            }
        }
        out
    }
}

fn accepted_condition(policy: &Policy) -> Condition {
    if policy.conflicted {
        return Condition::no(
            "Accepted",
            "Conflicted",
            "an older BackendTLSPolicy targets the same Service port",
        );
    }
    match &policy.tls {
        Ok(_) => Condition::yes("Accepted", "Accepted", "accepted"),
        Err((reason, message)) => Condition::no("Accepted", reason, message),
    }
}

fn created(policy: &BackendTlsPolicy) -> String {
    policy
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

/// What a policy asks of the proxy, or why it cannot be used; and the
/// problem with its CA references if any (a policy with one good and one bad
/// reference is still used, with ResolvedRefs False).
fn validate(
    key: &ObjectKey,
    policy: &BackendTlsPolicy,
    snapshot: &Snapshot,
) -> (Result<BackendTls, Rejection>, Option<Rejection>) {
    let validation = &policy.spec.validation;
    let mut pem = String::new();
    let mut unresolved = None;
    let refs = validation
        .ca_certificate_refs
        .as_deref()
        .unwrap_or_default();
    for r in refs {
        if !(r.group.is_empty() || r.group == "core") || r.kind != "ConfigMap" {
            unresolved.get_or_insert((
                "InvalidKind",
                format!("caCertificateRef {}/{} is not a ConfigMap", r.group, r.kind),
            ));
            continue;
        }
        let map = snapshot
            .config_maps
            .get(&ObjectKey::new(&key.namespace, &r.name));
        let Some(map) = map else {
            unresolved.get_or_insert((
                "InvalidCACertificateRef",
                format!("ConfigMap {}/{} not found", key.namespace, r.name),
            ));
            continue;
        };
        let text = map.data.as_ref().and_then(|d| d.get(CA_KEY));
        match text.filter(|t| parses_as_certificates(t)) {
            Some(text) => {
                pem.push_str(text);
                pem.push('\n');
            }
            None => {
                unresolved.get_or_insert((
                    "InvalidCACertificateRef",
                    format!(
                        "ConfigMap {}/{} has no PEM certificate under {CA_KEY}",
                        key.namespace, r.name
                    ),
                ));
            }
        }
    }
    let trust = match validation.well_known_ca_certificates.as_deref() {
        Some("System") if refs.is_empty() => Ok(TrustAnchors::System),
        Some(other) if refs.is_empty() => Err((
            "Invalid",
            format!("wellKnownCACertificates {other:?} is not supported"),
        )),
        Some(_) => Err((
            "Invalid",
            "caCertificateRefs and wellKnownCACertificates are exclusive".into(),
        )),
        None if pem.is_empty() => Err((
            "NoValidCACertificate",
            "no caCertificateRef resolves to a CA certificate".into(),
        )),
        None => Ok(TrustAnchors::Pem(pem)),
    };
    let subject_alt_names = validation
        .subject_alt_names
        .iter()
        .flatten()
        .filter_map(|san| match san.r#type {
            SanType::Hostname => san.hostname.clone().map(SubjectAltName::Hostname),
            SanType::Uri => san.uri.clone().map(SubjectAltName::Uri),
        })
        .collect();
    let tls = trust.map(|trust| BackendTls {
        server_name: validation.hostname.clone(),
        trust,
        subject_alt_names,
    });
    (tls, unresolved)
}

fn parses_as_certificates(text: &str) -> bool {
    let mut certificates = CertificateDer::pem_slice_iter(text.as_bytes()).peekable();
    certificates.peek().is_some() && certificates.all(|c| c.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(yaml: &str) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        crate::source::file::load_str(
            std::path::Path::new("t.yaml"),
            yaml,
            &mut snapshot,
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        snapshot
    }

    fn backend(name: &str, port: i32) -> BackendRef {
        BackendRef {
            group: String::new(),
            kind: "Service".into(),
            namespace: "ns".into(),
            name: name.into(),
            port: Some(port),
            weight: 1,
            filters: Vec::new(),
        }
    }

    const SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: ns}
spec: {ports: [{name: https, port: 443}, {name: other, port: 8443}]}
";

    fn policy(name: &str, section: Option<&str>, hostname: &str, ca: &str) -> String {
        let section = section.map_or(String::new(), |s| format!(", sectionName: {s}"));
        format!(
            "
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: {name}, namespace: ns, generation: 3}}
spec:
  targetRefs: [{{group: '', kind: Service, name: svc{section}}}]
  validation:
    caCertificateRefs: [{{group: '', kind: ConfigMap, name: {ca}}}]
    hostname: {hostname}
"
        )
    }

    fn ca_map(name: &str, pem: &str) -> String {
        let pem = serde_json::to_string(pem).expect("json");
        format!(
            "\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: ns}}\ndata: {{ca.crt: {pem}}}\n"
        )
    }

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("ca").pem()
    }

    #[test]
    fn the_oldest_policy_by_name_governs_and_a_port_policy_beats_a_service_policy() {
        let yaml = format!(
            "{SERVICE}{}{}{}{}",
            ca_map("ca", &ca_pem()),
            policy("b-whole", None, "b.example", "ca"),
            policy("a-whole", None, "a.example", "ca"),
            policy("c-port", Some("https"), "c.example", "ca"),
        );
        let snapshot = snapshot(&yaml);
        let policies = BackendTlsPolicies::resolve(&snapshot);
        let on = |port| {
            policies
                .for_backend(&backend("svc", port), &snapshot)
                .expect("valid")
                .expect("tls")
                .server_name
        };
        assert_eq!(on(443), "c.example");
        assert_eq!(on(8443), "a.example");
        let reached_backend = backend("svc", 8443);
        let reached = BTreeMap::from([(ObjectKey::new("ns", "gw"), vec![&reached_backend])]);
        let statuses = policies.statuses(&reached, &snapshot);
        let accepted = |name: &str| {
            let s = statuses
                .iter()
                .find(|s| s.key.name == name)
                .unwrap_or_else(|| panic!("no status for {name}"));
            assert_eq!(s.generation, 3);
            let c = &s.conditions[0];
            (c.status, c.reason)
        };
        assert_eq!(accepted("a-whole"), (true, "Accepted"));
        assert_eq!(accepted("b-whole"), (false, "Conflicted"));
        // Only port 8443 is reached: the port policy has no ancestor.
        assert!(statuses.iter().all(|s| s.key.name != "c-port"));
    }

    #[test]
    fn missing_malformed_and_wrong_kind_ca_references_make_the_policy_unusable() {
        let wrong_kind = policy("kind", None, "h", "ca").replace("kind: ConfigMap", "kind: Secret");
        for (yaml, reason) in [
            (
                format!("{SERVICE}{}", policy("p", None, "h", "absent")),
                "InvalidCACertificateRef",
            ),
            (
                format!(
                    "{SERVICE}{}{}",
                    ca_map("bad", "not a certificate"),
                    policy("p", None, "h", "bad")
                ),
                "InvalidCACertificateRef",
            ),
            (format!("{SERVICE}{wrong_kind}"), "InvalidKind"),
        ] {
            let snapshot = snapshot(&yaml);
            let policies = BackendTlsPolicies::resolve(&snapshot);
            let error = policies
                .for_backend(&backend("svc", 443), &snapshot)
                .expect_err("unusable");
            assert_eq!(error.0, "NoValidCACertificate");
            let reached_backend = backend("svc", 443);
            let reached = BTreeMap::from([(ObjectKey::new("ns", "gw"), vec![&reached_backend])]);
            let status = &policies.statuses(&reached, &snapshot)[0];
            assert_eq!(
                status
                    .conditions
                    .iter()
                    .map(|c| (c.type_, c.status, c.reason))
                    .collect::<Vec<_>>(),
                [
                    ("Accepted", false, "NoValidCACertificate"),
                    ("ResolvedRefs", false, reason)
                ]
            );
        }
    }
}
