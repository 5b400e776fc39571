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
use crate::model::{BackendTls, ClientCertificate, SubjectAltName, TrustAnchors};
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
    /// Gateway → its `spec.tls.backend.clientCertificateRef`, resolved.
    client_certificates: BTreeMap<ObjectKey, ClientCertificate>,
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
            client_certificates: BTreeMap::new(),
        }
    }

    /// The client certificate each Gateway presents on its TLS connections to backends.
    pub(super) fn present_client_certificates(
        &mut self,
        by_gateway: BTreeMap<ObjectKey, ClientCertificate>,
    ) {
        self.client_certificates = by_gateway;
    }

    /// The index of the policy governing `backend` (a Service port), if any: a
    /// policy naming the port (by name) wins over one for the whole Service.
    fn governing(&self, backend: &BackendRef, snapshot: &Snapshot) -> Option<usize> {
        // Asked for every backendRef of every route: no allocation when no policy governs.
        if self.governing.is_empty() {
            return None;
        }
        let service = backend.object_key();
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

    /// How the proxy of `gateway` must connect to `backend`: Ok(None) in
    /// plain text, Ok(Some) with TLS (presenting the Gateway's client
    /// certificate, if it has one), Err when its policy cannot be used (no
    /// plain-text fallback: the backend's share of requests fails).
    pub(super) fn for_backend(
        &self,
        backend: &BackendRef,
        gateway: &ObjectKey,
        snapshot: &Snapshot,
    ) -> Result<Option<BackendTls>, Rejection> {
        let Some(index) = self.governing(backend, snapshot) else {
            return Ok(None);
        };
        let mut tls = self.policies[index].tls.clone()?;
        tls.client_certificate = self.client_certificates.get(gateway).cloned();
        Ok(Some(tls))
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
                    *b.namespace == *policy.key.namespace
                        && policy
                            .object
                            .spec
                            .target_refs
                            .iter()
                            .any(|t| *t.name == *b.name)
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
        client_certificate: None,
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
            group: "".into(),
            kind: "Service".into(),
            namespace: "ns".into(),
            name: name.into(),
            port: Some(port),
            weight: 1,
            filters: Box::default(),
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
                .for_backend(
                    &backend("svc", port),
                    &ObjectKey::new("ns", "gw"),
                    &snapshot,
                )
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
                .for_backend(&backend("svc", 443), &ObjectKey::new("ns", "gw"), &snapshot)
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

    /// Two Gateways reaching Service `svc` (port 443, one endpoint) through
    /// one HTTPRoute each, a BackendTLSPolicy on it with CA ConfigMap `ca`
    /// (absent unless `with_ca`), and `gw-a` naming `client_ref` (namespace,
    /// name) as its backend client certificate.
    fn two_gateways(with_ca: bool, client_ref: &str) -> String {
        let client =
            rcgen::generate_simple_self_signed(vec!["client.example".into()]).expect("rcgen");
        let json = |s: &str| serde_json::to_string(s).expect("json");
        let mut yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: ours}}\n\
             spec: {{controllerName: test/controller}}\n\
             ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: client, namespace: ns}}\n\
             type: kubernetes.io/tls\nstringData: {{tls.crt: {}, tls.key: {}}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc-1, namespace: ns, labels: {{kubernetes.io/service-name: svc}}}}\n\
             addressType: IPv4\nports: [{{name: https, port: 8443}}]\nendpoints: [{{addresses: [10.0.0.1]}}]\n\
             ---{SERVICE}{}",
            json(&client.cert.pem()),
            json(&client.signing_key.serialize_pem()),
            policy("p", None, "abc.example", "ca"),
        );
        if with_ca {
            yaml.push_str(&ca_map("ca", &ca_pem()));
        }
        for (gateway, port, backend_tls) in [
            (
                "gw-a",
                80,
                format!("  tls: {{backend: {{clientCertificateRef: {client_ref}}}}}\n"),
            ),
            ("gw-b", 81, String::new()),
        ] {
            yaml.push_str(&format!(
                "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
                 metadata: {{name: {gateway}, namespace: ns}}\nspec:\n  gatewayClassName: ours\n\
                 \x20 addresses: [{{value: 192.0.2.1}}]\n{backend_tls}\
                 \x20 listeners: [{{name: http, protocol: HTTP, port: {port}}}]\n\
                 ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: to-{gateway}, namespace: ns}}\n\
                 spec:\n  parentRefs: [{{name: {gateway}}}]\n  rules: [{{backendRefs: [{{name: svc, port: 443}}]}}]\n"
            ));
        }
        yaml
    }

    fn translate_yaml(yaml: &str) -> super::super::Output {
        super::super::translate(
            &snapshot(yaml),
            &super::super::Settings {
                controller_name: "test/controller".into(),
                node_addresses: vec![std::net::Ipv4Addr::new(198, 51, 100, 1)],
                usable_addresses: None,
            },
        )
    }

    fn conditions(
        out: &super::super::Output,
        kind: &str,
        name: &str,
    ) -> Vec<(String, bool, String)> {
        out.statuses
            .iter()
            .filter(|s| s.kind == kind && s.key.name == name && s.section.is_none())
            .flat_map(|s| &s.conditions)
            .map(|c| (c.type_.to_string(), c.status, c.reason.to_string()))
            .collect()
    }

    /// The TLS settings of the one backend served on `port`.
    fn backend_tls(out: &super::super::Output, port: u16) -> Option<BackendTls> {
        let socket = out
            .config
            .http
            .iter()
            .find(|l| l.bind.port() == port)
            .expect("socket");
        socket.rules[0].backends[0].tls.clone()
    }

    #[test]
    fn a_gateway_presents_its_client_certificate_to_tls_backends_and_only_its_own() {
        let out = translate_yaml(&two_gateways(true, "{name: client}"));
        let presented = backend_tls(&out, 80)
            .expect("tls")
            .client_certificate
            .expect("gw-a presents its certificate");
        assert!(presented.cert_chain_pem.contains("BEGIN CERTIFICATE"));
        assert!(presented.key_pem.contains("PRIVATE KEY"));
        assert_eq!(backend_tls(&out, 81).expect("tls").client_certificate, None);
        assert!(conditions(&out, "Gateway", "gw-a").contains(&(
            "ResolvedRefs".into(),
            true,
            "ResolvedRefs".into()
        )));
        // A Gateway without backend TLS settings gets no such condition.
        assert!(
            conditions(&out, "Gateway", "gw-b")
                .iter()
                .all(|c| c.0 != "ResolvedRefs")
        );
    }

    #[test]
    fn an_unusable_client_certificate_ref_is_resolved_refs_false_on_the_gateway() {
        for (reference, reason) in [
            ("{name: absent}", "InvalidClientCertificateRef"),
            (
                "{name: client, kind: ConfigMap}",
                "InvalidClientCertificateRef",
            ),
            (
                "{name: client, group: example.com}",
                "InvalidClientCertificateRef",
            ),
            ("{name: client, namespace: elsewhere}", "RefNotPermitted"),
        ] {
            let out = translate_yaml(&two_gateways(true, reference));
            let gateway = conditions(&out, "Gateway", "gw-a");
            assert!(
                gateway.contains(&("ResolvedRefs".into(), false, reason.into())),
                "{reference}: {gateway:?}"
            );
            assert!(
                gateway.contains(&("Accepted".into(), true, "Accepted".into())),
                "{gateway:?}"
            );
            // Still TLS to the backend, without a certificate to present.
            assert_eq!(backend_tls(&out, 80).expect("tls").client_certificate, None);
        }
    }

    #[test]
    fn a_backend_whose_policy_is_unusable_gets_no_traffic_and_the_route_keeps_its_conditions() {
        // v1.5.1: the policy reports the problem (its Accepted/ResolvedRefs);
        // requests for the backend fail with a 5xx; routes have no condition
        // for it, so their references stay resolved.
        let out = translate_yaml(&two_gateways(false, "{name: client}"));
        let socket = out
            .config
            .http
            .iter()
            .find(|l| l.bind.port() == 80)
            .expect("socket");
        assert!(socket.rules[0].backends.is_empty());
        assert_eq!(socket.rules[0].invalid_weight, 1);
        let route = conditions(&out, "HTTPRoute", "to-gw-a");
        assert!(
            route.contains(&("Accepted".into(), true, "Accepted".into())),
            "{route:?}"
        );
        assert!(
            route.contains(&("ResolvedRefs".into(), true, "ResolvedRefs".into())),
            "{route:?}"
        );
        let policy = conditions(&out, "BackendTLSPolicy", "p");
        assert!(
            policy.contains(&("Accepted".into(), false, "NoValidCACertificate".into())),
            "{policy:?}"
        );
        assert!(
            policy.contains(&(
                "ResolvedRefs".into(),
                false,
                "InvalidCACertificateRef".into()
            )),
            "{policy:?}"
        );
    }
}
