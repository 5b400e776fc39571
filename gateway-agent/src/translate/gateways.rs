//! Conditions of GatewayClasses and Gateways, and the status entries of the
//! validated listeners.

use std::net::IpAddr;

use super::certificates::CertificateProblem;
use super::listeners::Listener;
use super::status::{Condition, ListenerFacts, ObjectStatus};
use crate::model::ClientCertificate;
use crate::store::ObjectKey;

/// A Gateway's `spec.addresses`, sorted by what this node can do with them.
#[derive(Debug, Default)]
pub struct GatewayAddresses {
    /// IP addresses served here (empty: none asked for, the node's serve).
    pub usable: Vec<IpAddr>,
    /// IP addresses this node does not have (`Programmed=False/AddressNotUsable`).
    pub unusable: Vec<String>,
    /// Other types, or values that are not IP addresses
    /// (`Accepted=False/UnsupportedAddress`).
    pub unsupported: Vec<String>,
}

impl GatewayAddresses {
    /// `usable_on_node`: the addresses this node has (None: not known, every
    /// IP address is taken as usable). Loopback addresses are always usable.
    pub fn of(gateway: &gateway_api::gateways::Gateway, usable_on_node: Option<&[IpAddr]>) -> Self {
        let mut out = Self::default();
        for a in gateway.spec.addresses.iter().flatten() {
            let is_ip = a.r#type.as_deref().is_none_or(|t| t == "IPAddress");
            let value = a.value.as_deref().filter(|v| !v.is_empty());
            match value.map(str::parse::<IpAddr>) {
                Some(Ok(ip)) if is_ip => {
                    let usable =
                        ip.is_loopback() || usable_on_node.is_none_or(|node| node.contains(&ip));
                    if usable {
                        out.usable.push(ip);
                    } else {
                        out.unusable.push(ip.to_string());
                    }
                }
                // An IPAddress without value asks for one to be assigned: the node's.
                None if is_ip => {}
                _ => out.unsupported.push(format!(
                    "{} {:?}",
                    a.r#type.as_deref().unwrap_or("IPAddress"),
                    value.unwrap_or_default()
                )),
            }
        }
        out
    }

    /// Whether the data planes serve the Gateway: not when an address is
    /// unsupported (not accepted), nor when it asked only for addresses this
    /// node does not have (rather than serve it on the node's).
    pub fn served(&self) -> bool {
        self.unsupported.is_empty() && (self.unusable.is_empty() || !self.usable.is_empty())
    }
}

/// `Accepted` and `Programmed` of a Gateway: accepted when at least one of
/// its own listeners is valid, `ListenersNotValid` naming the others.
pub fn gateway_status(
    key: &ObjectKey,
    gateway: &gateway_api::gateways::Gateway,
    listeners: &[Listener],
    addresses: &GatewayAddresses,
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
    let accepted = if !addresses.unsupported.is_empty() {
        Condition::no(
            "Accepted",
            "UnsupportedAddress",
            &format!(
                "unsupported addresses (only IPAddress): {}",
                addresses.unsupported.join(", ")
            ),
        )
    } else if let Some(p) = parameters {
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
    } else if !addresses.unusable.is_empty() {
        Condition::no(
            "Programmed",
            "AddressNotUsable",
            &format!(
                "addresses not on this node: {}",
                addresses.unusable.join(", ")
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(addresses: &str) -> gateway_api::gateways::Gateway {
        serde_yaml::from_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: g, namespace: n}}\n\
             spec: {{gatewayClassName: c, addresses: {addresses}, listeners: []}}\n"
        ))
        .expect("gateway")
    }

    #[test]
    fn static_addresses_are_usable_when_the_node_has_them_or_they_are_loopback() {
        let node = [
            "198.18.0.1".parse().expect("ip"),
            "fd00::1".parse().expect("ip"),
        ];
        let sorted = GatewayAddresses::of(
            &gateway(
                "[{value: 198.18.0.1}, {value: '127.9.0.1'}, {value: 'fd00::1'}, {value: 203.0.113.7}]",
            ),
            Some(&node),
        );
        let usable: Vec<String> = sorted.usable.iter().map(IpAddr::to_string).collect();
        assert_eq!(usable, ["198.18.0.1", "127.9.0.1", "fd00::1"]);
        assert_eq!(sorted.unusable, ["203.0.113.7"]);
        assert!(sorted.served(), "served on its usable addresses");
        // Only addresses the node does not have: not served anywhere.
        let none_usable = GatewayAddresses::of(&gateway("[{value: 203.0.113.7}]"), Some(&node));
        assert!(!none_usable.served());
        // Unknown node addresses: every IP address is taken as usable.
        assert!(
            GatewayAddresses::of(&gateway("[{value: 203.0.113.7}]"), None)
                .unusable
                .is_empty()
        );
        // Other types and non-IP values are unsupported; no value asks for the node's.
        let odd = GatewayAddresses::of(
            &gateway("[{type: Hostname, value: a.example}, {value: not-an-ip}, {type: IPAddress}]"),
            Some(&node),
        );
        assert_eq!(odd.unsupported.len(), 2);
        assert!(odd.usable.is_empty() && odd.unusable.is_empty());
        assert!(!odd.served());
    }
}
