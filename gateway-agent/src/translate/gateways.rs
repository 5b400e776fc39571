//! Conditions of GatewayClasses and Gateways, and the status entries of the
//! validated listeners.

use super::certificates::CertificateProblem;
use super::listeners::Listener;
use super::status::{Condition, ListenerFacts, ObjectStatus};
use crate::model::ClientCertificate;
use crate::store::ObjectKey;

/// `Accepted` and `Programmed` of a Gateway: accepted when at least one of
/// its own listeners is valid, `ListenersNotValid` naming the others.
pub fn gateway_status(
    key: &ObjectKey,
    gateway: &gateway_api::gateways::Gateway,
    listeners: &[Listener],
    unusable_addresses: &[String],
) -> ObjectStatus {
    let mut status = ObjectStatus::new("Gateway", key.clone());
    status.generation = gateway.metadata.generation.unwrap_or(1);
    let own: Vec<&Listener> = listeners
        .iter()
        .filter(|l| l.owner_kind == "Gateway")
        .collect();
    let invalid: Vec<&str> = own
        .iter()
        .filter(|l| !l.serves() || l.unresolved.is_some())
        .map(|l| l.name)
        .collect();
    let parameters = gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref());
    let accepted = if let Some(p) = parameters {
        // No parameters kind is supported: any reference is invalid.
        Condition::no(
            "Accepted",
            "InvalidParameters",
            &format!(
                "parametersRef {}/{} {} is not supported by this controller",
                p.group, p.kind, p.name
            ),
        )
    } else if !own.iter().any(|l| l.serves()) {
        Condition::no(
            "Accepted",
            "ListenersNotValid",
            &format!("no valid listener; invalid: {}", invalid.join(", ")),
        )
    } else if !invalid.is_empty() {
        Condition::yes(
            "Accepted",
            "ListenersNotValid",
            &format!("listeners not valid: {}", invalid.join(", ")),
        )
    } else {
        Condition::yes("Accepted", "Accepted", "accepted")
    };
    let programmed = if !accepted.status {
        Condition::no("Programmed", "Invalid", "the Gateway is not accepted")
    } else if !unusable_addresses.is_empty() {
        Condition::no(
            "Programmed",
            "AddressNotUsable",
            &format!("unusable addresses: {}", unusable_addresses.join(", ")),
        )
    } else {
        Condition::yes("Programmed", "Programmed", "programmed on this node")
    };
    status.push(accepted);
    status.push(programmed);
    status
}

/// The Gateway's `ResolvedRefs`, written when it names a backend client
/// certificate: False with the spec's reason when that reference cannot be
/// used (backends are then reached without a client certificate).
pub fn backend_client_certificate_condition(
    resolved: &Result<ClientCertificate, CertificateProblem>,
) -> Condition {
    match resolved {
        Ok(_) => Condition::yes("ResolvedRefs", "ResolvedRefs", "all references resolved"),
        Err(problem) => Condition::no(
            "ResolvedRefs",
            problem.reason,
            &format!("spec.tls.backend.clientCertificateRef: {}", problem.message),
        ),
    }
}

/// One listener's entry: its conditions, supported kinds and attached routes.
pub fn listener_status(listener: &Listener, attached_routes: usize) -> ObjectStatus {
    let mut status = ObjectStatus::new(listener.owner_kind, listener.owner.clone());
    status.generation = listener.generation;
    status.parent = Some(listener.gateway.clone());
    status.section = Some(listener.name.to_string());
    status.conditions = listener.conditions();
    status.listener = Some(ListenerFacts {
        attached_routes: i32::try_from(attached_routes).unwrap_or(i32::MAX),
        supported_kinds: listener.supported_kinds.clone(),
    });
    status
}

/// Gateway API release lines whose CRDs this agent reads (its types are v1.5;
/// v1.6 added fields it does not use and changed none it does).
const SUPPORTED_RELEASES: &[&str] = &["v1.5.", "v1.6."];

pub const SUPPORTED_VERSIONS_MESSAGE: &str = "Gateway API CRDs v1.5 and v1.6 are supported";

/// Why the installed Gateway API CRDs are not supported, if they are not.
/// No known versions (standalone mode, where the agent's own types read the
/// manifests) is supported.
pub fn unsupported_crd_versions(snapshot: &crate::store::Snapshot) -> Option<String> {
    let unsupported: Vec<String> = snapshot
        .crd_bundle_versions
        .iter()
        .filter(|(_, v)| !SUPPORTED_RELEASES.iter().any(|r| v.starts_with(r)))
        .map(|(crd, v)| format!("{crd} {v}"))
        .collect();
    (!unsupported.is_empty()).then(|| {
        format!(
            "unsupported Gateway API CRD versions: {} ({SUPPORTED_VERSIONS_MESSAGE})",
            unsupported.join(", ")
        )
    })
}

/// `Accepted` and `SupportedVersion` of a GatewayClass naming this controller.
pub fn gateway_class_status(
    key: &ObjectKey,
    class: &gateway_api::gatewayclasses::GatewayClass,
    snapshot: &crate::store::Snapshot,
) -> ObjectStatus {
    let mut status = ObjectStatus::new("GatewayClass", key.clone());
    status.generation = class.metadata.generation.unwrap_or(1);
    match unsupported_crd_versions(snapshot) {
        None => {
            status.push(Condition::yes(
                "Accepted",
                "Accepted",
                "accepted by this controller",
            ));
            status.push(Condition::yes(
                "SupportedVersion",
                "SupportedVersion",
                SUPPORTED_VERSIONS_MESSAGE,
            ));
        }
        Some(message) => {
            status.push(Condition::no("Accepted", "UnsupportedVersion", &message));
            status.push(Condition::no(
                "SupportedVersion",
                "UnsupportedVersion",
                &message,
            ));
        }
    }
    status
}
