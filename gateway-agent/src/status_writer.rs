//! Writes translate's status report back to the API server (the Lease holder
//! only): one merge patch of the `status` subresource per object whose status
//! differs from what the cluster holds, each condition with the generation it
//! was decided for (`observedGeneration`).
//!
//! Route `status.parents` is an atomic list shared with other controllers:
//! entries of other controllers are kept, ours replaced, and the patch carries
//! the `resourceVersion` it was computed from so a concurrent change fails
//! (409) and is redone from the newer object rather than lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::store::{ObjectKey, Snapshot};
use crate::translate::ObjectStatus;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("patching the status of {kind} {key}: {source}")]
    Patch {
        kind: &'static str,
        key: ObjectKey,
        #[source]
        source: kube::Error,
    },
}

/// The status one object should have, ready to be sent.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate {
    pub kind: &'static str,
    pub key: ObjectKey,
    /// The resourceVersion of the object this status was computed from.
    pub resource_version: String,
    /// The whole `status` object to write.
    pub status: Value,
}

/// The API group, version and plural of each kind whose status we write.
fn api_resource(kind: &str) -> Option<ApiResource> {
    let (version, plural) = match kind {
        "GatewayClass" => ("v1", "gatewayclasses"),
        "Gateway" => ("v1", "gateways"),
        "HTTPRoute" => ("v1", "httproutes"),
        "GRPCRoute" => ("v1", "grpcroutes"),
        "TLSRoute" => ("v1", "tlsroutes"),
        "TCPRoute" => ("v1alpha2", "tcproutes"),
        "UDPRoute" => ("v1alpha2", "udproutes"),
        "BackendTLSPolicy" => ("v1", "backendtlspolicies"),
        _ => return None,
    };
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", version, kind);
    Some(ApiResource::from_gvk_with_plural(&gvk, plural))
}

/// The object `kind`/`key` of the snapshot, as JSON.
fn object_json(snapshot: &Snapshot, kind: &str, key: &ObjectKey) -> Option<Value> {
    let value = match kind {
        "GatewayClass" => serde_json::to_value(snapshot.gateway_classes.get(key)?),
        "Gateway" => serde_json::to_value(snapshot.gateways.get(key)?),
        "HTTPRoute" => serde_json::to_value(snapshot.http_routes.get(key)?),
        "GRPCRoute" => serde_json::to_value(snapshot.grpc_routes.get(key)?),
        "TLSRoute" => serde_json::to_value(snapshot.tls_routes.get(key)?),
        "TCPRoute" => serde_json::to_value(snapshot.tcp_routes.get(key)?),
        "UDPRoute" => serde_json::to_value(snapshot.udp_routes.get(key)?),
        "BackendTLSPolicy" => serde_json::to_value(snapshot.backend_tls_policies.get(key)?),
        _ => return None,
    };
    value.ok()
}

/// The one conversion from translate's report to Kubernetes status objects.
/// `now` stamps conditions whose status changed (unchanged ones keep their
/// `lastTransitionTime`). A Gateway's `status.addresses` are the ones
/// translate decided it is served on.
pub fn status_updates(
    snapshot: &Snapshot,
    statuses: &[Arc<ObjectStatus>],
    controller_name: &str,
    now: Timestamp,
) -> Vec<StatusUpdate> {
    StatusCache::default().updates(snapshot, statuses, controller_name, now)
}

/// What the statuses were last computed from, per object: translate's
/// entries for it (shared with translate's memo, so an unchanged route's are
/// the same pointers) and the object's `resourceVersion`. An object whose
/// entries and version are both unchanged has had its status computed and
/// compared already: computing it again (the object as JSON, its status
/// built and compared) would find what it found then. So a route edit
/// computes the status of that route and of its Gateway, not of every object.
///
/// The pass that finds them is a walk, kind by kind, of translate's entries
/// sorted by object and of the snapshot's objects (in key order already):
/// with thousands of routes it runs after every reload and every echo of a
/// status write, so it looks nothing up in the snapshot and copies no key
/// of an unchanged object.
#[derive(Default)]
pub struct StatusCache {
    computed: HashMap<&'static str, HashMap<ObjectKey, Computed>>,
    /// Counts the passes; an object not met in the current one is forgotten.
    pass: u64,
}

struct Computed {
    version: String,
    entries: Vec<Arc<ObjectStatus>>,
    /// The last pass that met the object.
    pass: u64,
}

impl Computed {
    fn matches(&self, version: &str, entries: &[&Arc<ObjectStatus>]) -> bool {
        self.version == version
            && self.entries.len() == entries.len()
            && self
                .entries
                .iter()
                .zip(entries)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == *b)
    }
}

/// The kinds whose status is written, in name order (the order of the updates).
const STATUS_KINDS: [&str; 8] = [
    "BackendTLSPolicy",
    "GRPCRoute",
    "Gateway",
    "GatewayClass",
    "HTTPRoute",
    "TCPRoute",
    "TLSRoute",
    "UDPRoute",
];

const ROUTE_KINDS: [&str; 5] = ["GRPCRoute", "HTTPRoute", "TCPRoute", "TLSRoute", "UDPRoute"];

impl StatusCache {
    /// The updates for the objects whose status may have changed since the
    /// last call (all of them on the first): see `status_updates`.
    pub fn updates(
        &mut self,
        snapshot: &Snapshot,
        statuses: &[Arc<ObjectStatus>],
        controller_name: &str,
        now: Timestamp,
    ) -> Vec<StatusUpdate> {
        self.pass += 1;
        // Translate's entries by object: sorted (stably: each object's keep
        // their order), then one slice per object. Mostly sorted already
        // (routes come in key order), so the sort is a few merges.
        let mut sorted: Vec<&Arc<ObjectStatus>> = statuses.iter().collect();
        sorted.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        let by_object: Vec<&[&Arc<ObjectStatus>]> = sorted
            .chunk_by(|a, b| a.kind == b.kind && a.key == b.key)
            .collect();
        for kinds in by_object.chunk_by(|a, b| a[0].kind == b[0].kind) {
            let kind = kinds[0][0].kind;
            if !STATUS_KINDS.contains(&kind) {
                tracing::debug!(
                    kind,
                    objects = kinds.len(),
                    "no status written for this kind"
                );
            }
        }
        let now = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let pass = self.pass;
        let mut updates = Vec::new();
        for kind in STATUS_KINDS {
            let first = by_object.partition_point(|e| e[0].kind < kind);
            let last = by_object.partition_point(|e| e[0].kind <= kind);
            let mut decided = by_object[first..last].iter().peekable();
            let computed = self.computed.entry(kind).or_default();
            let is_route = ROUTE_KINDS.contains(&kind);
            // Both in key order: the entries of each object, if any.
            for (key, version) in object_versions(snapshot, kind) {
                while decided.next_if(|e| e[0].key < *key).is_some() {
                    // Entries for an object not in the snapshot: no status.
                }
                let entries = decided.next_if(|e| e[0].key == *key).copied();
                let Some(entries) = entries else {
                    // Not decided on: a route that still carries our entry
                    // although none of our Gateways is its parent any more
                    // (parentRef edited, Gateway deleted) gets it dropped.
                    if !is_route || unchanged(computed, pass, key, version, &[]) {
                        continue;
                    }
                    let Some(route) = object_json(snapshot, kind, key) else {
                        continue;
                    };
                    let ours = route["status"]["parents"].as_array().is_some_and(|ps| {
                        ps.iter().any(|p| p["controllerName"] == controller_name)
                    });
                    if ours {
                        updates.push(StatusUpdate {
                            kind,
                            key: key.clone(),
                            resource_version: version.to_string(),
                            status: route_status(&route, &[], controller_name, key, 0, &now),
                        });
                    }
                    continue;
                };
                if unchanged(computed, pass, key, version, entries) {
                    continue;
                }
                let Some(object) = object_json(snapshot, kind, key) else {
                    continue;
                };
                let entries: Vec<&ObjectStatus> = entries.iter().map(|e| &***e).collect();
                let status = status_of(kind, &object, &entries, controller_name, key, &now);
                if normalized(&object["status"]) != normalized(&status) {
                    updates.push(StatusUpdate {
                        kind,
                        key: key.clone(),
                        resource_version: version.to_string(),
                        status,
                    });
                }
            }
        }
        // Objects gone from the snapshot (or from the report) are forgotten.
        for objects in self.computed.values_mut() {
            objects.retain(|_, c| c.pass == pass);
        }
        updates
    }

    /// The status of this object is computed again next time (its write failed).
    pub fn forget(&mut self, kind: &'static str, key: &ObjectKey) {
        if let Some(objects) = self.computed.get_mut(kind) {
            objects.remove(key);
        }
    }

    /// Everything is computed again next time.
    pub fn clear(&mut self) {
        self.computed.clear();
    }
}

/// True when `key` was last computed from this `version` and these
/// `entries`; otherwise records them (the status must be computed). Either
/// way the object is met in this `pass`.
fn unchanged(
    computed: &mut HashMap<ObjectKey, Computed>,
    pass: u64,
    key: &ObjectKey,
    version: &str,
    entries: &[&Arc<ObjectStatus>],
) -> bool {
    if let Some(seen) = computed.get_mut(key) {
        seen.pass = pass;
        if seen.matches(version, entries) {
            return true;
        }
        version.clone_into(&mut seen.version);
        seen.entries = entries.iter().map(|e| Arc::clone(e)).collect();
        return false;
    }
    computed.insert(
        key.clone(),
        Computed {
            version: version.to_string(),
            entries: entries.iter().map(|e| Arc::clone(e)).collect(),
            pass,
        },
    );
    false
}

/// The whole `status` of one object (`object`, as JSON) from translate's
/// `entries` for it.
fn status_of(
    kind: &str,
    object: &Value,
    entries: &[&ObjectStatus],
    controller_name: &str,
    key: &ObjectKey,
    now: &str,
) -> Value {
    let generation = object["metadata"]["generation"].as_i64().unwrap_or(0);
    let current = &object["status"];
    match kind {
        "GatewayClass" | "Gateway" => {
            let own: Vec<&ObjectStatus> = entries
                .iter()
                .copied()
                .filter(|s| s.section.is_none())
                .collect();
            let mut status = json!({
                "conditions": conditions(&own, generation, &current["conditions"], now),
            });
            if kind == "Gateway" {
                status["addresses"] = gateway_addresses(&own);
                status["listeners"] = listener_statuses(object, entries, key, generation, now);
            }
            status
        }
        "BackendTLSPolicy" => policy_status(object, entries, controller_name, generation, now),
        _ => route_status(object, entries, controller_name, key, generation, now),
    }
}

/// Every object of `kind` in the snapshot with its `metadata.resourceVersion`,
/// in key order (none for a kind whose status is not written).
fn object_versions<'a>(snapshot: &'a Snapshot, kind: &str) -> Vec<(&'a ObjectKey, &'a str)> {
    fn versions<K: kube::Resource>(objects: &BTreeMap<ObjectKey, K>) -> Vec<(&ObjectKey, &str)> {
        objects
            .iter()
            .map(|(key, object)| {
                let version = object.meta().resource_version.as_deref();
                (key, version.unwrap_or_default())
            })
            .collect()
    }
    match kind {
        "GatewayClass" => versions(&snapshot.gateway_classes),
        "Gateway" => versions(&snapshot.gateways),
        "HTTPRoute" => versions(&snapshot.http_routes),
        "GRPCRoute" => versions(&snapshot.grpc_routes),
        "TLSRoute" => versions(&snapshot.tls_routes),
        "TCPRoute" => versions(&snapshot.tcp_routes),
        "UDPRoute" => versions(&snapshot.udp_routes),
        "BackendTLSPolicy" => versions(&snapshot.backend_tls_policies),
        _ => Vec::new(),
    }
}

/// Conditions of `entries` (merged, first decision per type wins), keeping
/// `lastTransitionTime` from `previous` where the status did not change.
fn conditions(entries: &[&ObjectStatus], generation: i64, previous: &Value, now: &str) -> Value {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for c in entries.iter().flat_map(|s| &s.conditions) {
        if seen.contains(&c.type_) {
            continue;
        }
        seen.push(c.type_);
        let status = if c.status { "True" } else { "False" };
        let since = previous
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["type"] == c.type_ && p["status"] == status)
            .and_then(|p| p["lastTransitionTime"].as_str())
            .unwrap_or(now);
        out.push(json!({
            "type": c.type_,
            "status": status,
            "reason": c.reason,
            // The API requires a message field, and rejects one over 32768 bytes.
            "message": c.message.chars().take(1024).collect::<String>(),
            "observedGeneration": generation,
            "lastTransitionTime": since,
        }));
    }
    Value::Array(out)
}

/// The addresses translate serves the Gateway on (its usable `spec.addresses`,
/// or the node's when it asks for none). Written even when empty, so that a
/// merge patch clears addresses no longer served.
fn gateway_addresses(own: &[&ObjectStatus]) -> Value {
    own.iter()
        .flat_map(|s| &s.addresses)
        .map(|a| json!({"type": "IPAddress", "value": a.to_string()}))
        .collect()
}

fn listener_statuses(
    gateway: &Value,
    entries: &[&ObjectStatus],
    key: &ObjectKey,
    generation: i64,
    now: &str,
) -> Value {
    let previous = gateway["status"]["listeners"].as_array();
    let mut out = Vec::new();
    for listener in gateway["spec"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = listener["name"].as_str().unwrap_or_default();
        let section: Vec<&ObjectStatus> = entries
            .iter()
            .copied()
            .filter(|s| s.section.as_deref() == Some(name))
            .collect();
        // Translate reports listener problems; a listener it says nothing
        // about is accepted and programmed.
        let default = ObjectStatus::new("Gateway", key.clone())
            .with(crate::translate::Condition::yes(
                "Accepted", "Accepted", "accepted",
            ))
            .with(crate::translate::Condition::yes(
                "ResolvedRefs",
                "ResolvedRefs",
                "references resolved",
            ))
            .with(crate::translate::Condition::yes(
                "Programmed",
                "Programmed",
                "programmed on this node",
            ));
        let mut merged = section.clone();
        merged.push(&default);
        // Translate counts attached routes and decides the kinds per listener.
        let facts = section.iter().find_map(|s| s.listener.as_ref());
        let attached = facts.map_or(0, |f| f.attached_routes);
        let kinds = facts.map(|f| f.supported_kinds.clone()).unwrap_or_default();
        let previous_conditions = previous
            .into_iter()
            .flatten()
            .find(|l| l["name"] == name)
            .map_or(Value::Null, |l| l["conditions"].clone());
        out.push(json!({
            "name": name,
            "attachedRoutes": attached,
            "supportedKinds": kinds
                .iter()
                .map(|k| json!({"group": "gateway.networking.k8s.io", "kind": k}))
                .collect::<Vec<_>>(),
            "conditions": conditions(&merged, generation, &previous_conditions, now),
        }));
    }
    Value::Array(out)
}

fn route_status(
    route: &Value,
    entries: &[&ObjectStatus],
    controller_name: &str,
    key: &ObjectKey,
    generation: i64,
    now: &str,
) -> Value {
    let previous: Vec<Value> = route["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // Other controllers' entries stay as they are.
    let mut parents: Vec<Value> = previous
        .iter()
        .filter(|p| p["controllerName"] != controller_name)
        .cloned()
        .collect();
    for entry in entries {
        let Some(parent) = &entry.parent else {
            continue;
        };
        // Echo the spec's parentRef, as the API asks.
        let parent_ref = route["spec"]["parentRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| {
                p["name"] == parent.name.as_str()
                    && p["namespace"].as_str().unwrap_or(&key.namespace) == parent.namespace
                    && p["sectionName"].as_str() == entry.section.as_deref()
            })
            .cloned()
            .unwrap_or_else(|| json!({"name": parent.name, "namespace": parent.namespace}));
        let previous_conditions = previous
            .iter()
            .find(|p| p["controllerName"] == controller_name && p["parentRef"] == parent_ref)
            .map_or(Value::Null, |p| p["conditions"].clone());
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": controller_name,
            "conditions": conditions(&[entry], generation, &previous_conditions, now),
        }));
    }
    json!({ "parents": parents })
}

/// A BackendTLSPolicy's `status.ancestors`: one per Gateway of ours its
/// Services are reached through; other controllers' entries are kept.
fn policy_status(
    policy: &Value,
    entries: &[&ObjectStatus],
    controller_name: &str,
    generation: i64,
    now: &str,
) -> Value {
    let previous: Vec<Value> = policy["status"]["ancestors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut ancestors: Vec<Value> = previous
        .iter()
        .filter(|a| a["controllerName"] != controller_name)
        .cloned()
        .collect();
    for entry in entries {
        let Some(gateway) = &entry.parent else {
            continue;
        };
        let ancestor_ref = json!({
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": gateway.name,
            "namespace": gateway.namespace,
        });
        let previous_conditions = previous
            .iter()
            .find(|a| a["controllerName"] == controller_name && a["ancestorRef"] == ancestor_ref)
            .map_or(Value::Null, |a| a["conditions"].clone());
        ancestors.push(json!({
            "ancestorRef": ancestor_ref,
            "controllerName": controller_name,
            "conditions": conditions(&[entry], generation, &previous_conditions, now),
        }));
    }
    json!({ "ancestors": ancestors })
}

/// `status` without what the API server adds or orders on its own, for comparison.
fn normalized(status: &Value) -> Value {
    match status {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, v)| !v.is_null() && k.as_str() != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// Sends status updates; remembers what it sent so that an update is not
/// repeated before the watch shows the object's new version.
pub struct StatusWriter {
    client: Client,
    field_manager: String,
    sent: HashMap<(&'static str, ObjectKey), (String, Value)>,
}

impl StatusWriter {
    pub fn new(client: Client, field_manager: &str) -> Self {
        Self {
            client,
            field_manager: field_manager.into(),
            sent: HashMap::new(),
        }
    }

    /// Writes each update not already sent for the same object version.
    /// Returns how many were written, and the failures.
    pub async fn write(&mut self, updates: Vec<StatusUpdate>) -> (usize, Vec<Error>) {
        let mut written = 0;
        let mut errors = Vec::new();
        for update in updates {
            let id = (update.kind, update.key.clone());
            let fingerprint = (update.resource_version.clone(), normalized(&update.status));
            if self.sent.get(&id) == Some(&fingerprint) {
                continue;
            }
            let Some(resource) = api_resource(update.kind) else {
                continue;
            };
            let api: Api<DynamicObject> = if update.key.namespace.is_empty() {
                Api::all_with(self.client.clone(), &resource)
            } else {
                Api::namespaced_with(self.client.clone(), &update.key.namespace, &resource)
            };
            let patch = json!({
                "metadata": { "resourceVersion": update.resource_version },
                "status": update.status,
            });
            let params = PatchParams {
                field_manager: Some(self.field_manager.clone()),
                ..PatchParams::default()
            };
            match api
                .patch_status(&update.key.name, &params, &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(kind = update.kind, object = %update.key, "status written");
                    self.sent.insert(id, fingerprint);
                    written += 1;
                }
                Err(source) => errors.push(Error::Patch {
                    kind: update.kind,
                    key: update.key,
                    source,
                }),
            }
        }
        (written, errors)
    }

    /// Forgets what was sent: the next `write` compares against the cluster only.
    pub fn reset(&mut self) {
        self.sent.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::translate::{self, Settings};

    const MANIFESTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: c, generation: 1, resourceVersion: "1"}
spec: {controllerName: example.dev/agent}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default, generation: 3, resourceVersion: "7"}
spec:
  gatewayClassName: c
  listeners:
  - {name: web, port: 80, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default, generation: 2, resourceVersion: "9"}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: missing, port: 80}]}]
status:
  parents:
  - parentRef: {name: gw}
    controllerName: other.dev/controller
    conditions: []
"#;

    fn snapshot() -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        crate::source::file::load_str(
            std::path::Path::new("m.yaml"),
            MANIFESTS,
            &mut snapshot,
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        snapshot
    }

    fn updates(snapshot: &Snapshot) -> Vec<StatusUpdate> {
        let settings = Settings {
            controller_name: "example.dev/agent".into(),
            node_addresses: vec![Ipv4Addr::new(192, 0, 2, 1)],
            // The node also has 192.0.2.2, on an interface that is not its default.
            usable_addresses: Some(vec![
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            ]),
        };
        let output = translate::translate(snapshot, &settings);
        status_updates(
            snapshot,
            &output.statuses,
            &settings.controller_name,
            Timestamp::from_second(1_700_000_000).expect("time"),
        )
    }

    #[test]
    fn statuses_carry_generation_addresses_and_keep_other_controllers() {
        let snapshot = snapshot();
        let updates = updates(&snapshot);
        let find = |kind: &str| {
            updates
                .iter()
                .find(|u| u.kind == kind)
                .unwrap_or_else(|| panic!("no {kind} update in {updates:#?}"))
        };
        let gateway = find("Gateway");
        assert_eq!(gateway.resource_version, "7");
        assert_eq!(
            gateway.status["addresses"],
            json!([{"type": "IPAddress", "value": "192.0.2.1"}])
        );
        assert_eq!(gateway.status["conditions"][0]["observedGeneration"], 3);
        assert_eq!(gateway.status["listeners"][0]["attachedRoutes"], 1);
        assert_eq!(
            gateway.status["conditions"][0]["lastTransitionTime"],
            "2023-11-14T22:13:20Z"
        );

        let route = find("HTTPRoute");
        let parents = route.status["parents"].as_array().expect("parents");
        assert_eq!(parents.len(), 2, "{parents:#?}");
        assert_eq!(parents[0]["controllerName"], "other.dev/controller");
        assert_eq!(parents[1]["controllerName"], "example.dev/agent");
        assert_eq!(parents[1]["parentRef"], json!({"name": "gw"}));
        let resolved = parents[1]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "ResolvedRefs")
            .expect("ResolvedRefs");
        assert_eq!(resolved["status"], "False");
        assert_eq!(resolved["observedGeneration"], 2);
    }

    #[test]
    fn gateway_addresses_are_the_usable_ones_translate_decided() {
        let mut snapshot = snapshot();
        let gateway = snapshot.gateways.values_mut().next().expect("gateway");
        let mut spec = serde_json::to_value(&gateway.spec).expect("spec");
        spec["addresses"] = json!([
            {"type": "IPAddress", "value": "192.0.2.2"},
            {"type": "IPAddress", "value": "203.0.113.9"},
        ]);
        gateway.spec = serde_json::from_value(spec).expect("spec");
        let updates = updates(&snapshot);
        let gateway = updates
            .iter()
            .find(|u| u.kind == "Gateway")
            .expect("a Gateway update");
        // 203.0.113.9 is on no interface of the node: not served, not listed.
        assert_eq!(
            gateway.status["addresses"],
            json!([{"type": "IPAddress", "value": "192.0.2.2"}])
        );
        let programmed = gateway.status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "Programmed")
            .expect("Programmed");
        assert_eq!(programmed["status"], "False");
        assert_eq!(programmed["reason"], "AddressNotUsable");
    }

    #[test]
    fn our_entry_is_removed_from_a_route_no_longer_attached_to_our_gateways() {
        let mut snapshot = snapshot();
        let ours = json!({"parentRef": {"name": "gone"}, "controllerName": "example.dev/agent", "conditions": []});
        let route = snapshot.http_routes.values_mut().next().expect("route");
        route.spec.parent_refs = Some(Vec::new());
        let mut status = serde_json::to_value(&route.status).expect("status");
        status["parents"]
            .as_array_mut()
            .expect("parents")
            .push(ours);
        route.status = Some(serde_json::from_value(status).expect("status"));
        let updates = updates(&snapshot);
        let route = updates
            .iter()
            .find(|u| u.kind == "HTTPRoute")
            .expect("an update removing our entry");
        let controllers: Vec<&Value> = route.status["parents"]
            .as_array()
            .expect("parents")
            .iter()
            .map(|p| &p["controllerName"])
            .collect();
        assert_eq!(controllers, [&json!("other.dev/controller")]);
    }

    #[test]
    fn nothing_is_written_when_the_cluster_already_has_it() {
        let mut snapshot = snapshot();
        for update in updates(&snapshot) {
            let status = update.status.clone();
            match update.kind {
                "GatewayClass" => {
                    let class = snapshot
                        .gateway_classes
                        .get_mut(&update.key)
                        .expect("class");
                    class.status = Some(serde_json::from_value(status).expect("class status"));
                }
                "Gateway" => {
                    let gateway = snapshot.gateways.get_mut(&update.key).expect("gw");
                    gateway.status = Some(serde_json::from_value(status).expect("gw status"));
                }
                "HTTPRoute" => {
                    let route = snapshot.http_routes.get_mut(&update.key).expect("route");
                    route.status = Some(serde_json::from_value(status).expect("route status"));
                }
                other => panic!("unexpected kind {other}"),
            }
        }
        assert_eq!(updates(&snapshot), Vec::new());
        // A new generation is a change: observedGeneration must follow.
        snapshot
            .http_routes
            .values_mut()
            .for_each(|r| r.metadata.generation = Some(5));
        let again = updates(&snapshot);
        assert_eq!(again.len(), 1, "{again:#?}");
        assert_eq!(again[0].kind, "HTTPRoute");
    }

    /// The cache computes an object's status again only when its decided
    /// entries or its resourceVersion changed, or when told its write failed.
    #[test]
    fn the_cache_computes_only_objects_whose_entries_or_version_changed() {
        let mut snapshot = snapshot();
        let settings = Settings {
            controller_name: "example.dev/agent".into(),
            node_addresses: vec![Ipv4Addr::new(192, 0, 2, 1)],
            usable_addresses: None,
        };
        let now = Timestamp::from_second(1_700_000_000).expect("time");
        let mut memo = translate::Memo::default();
        let output = translate::translate_incremental(&snapshot, &settings, None, &mut memo);
        let mut cache = StatusCache::default();
        let kinds = |updates: &[StatusUpdate]| -> Vec<&'static str> {
            updates.iter().map(|u| u.kind).collect()
        };
        let first = cache.updates(&snapshot, &output.statuses, "example.dev/agent", now);
        assert_eq!(kinds(&first), ["Gateway", "GatewayClass", "HTTPRoute"]);
        // Not written yet, but already computed from these very inputs.
        let again = cache.updates(&snapshot, &output.statuses, "example.dev/agent", now);
        assert_eq!(again, Vec::new());
        // A write failed: that object is computed again.
        let route_key = ObjectKey::new("default", "r");
        cache.forget("HTTPRoute", &route_key);
        let retried = cache.updates(&snapshot, &output.statuses, "example.dev/agent", now);
        assert_eq!(kinds(&retried), ["HTTPRoute"]);
        // The route's new version (a status written by someone else, say).
        let route = snapshot.http_routes.get_mut(&route_key).expect("route");
        route.metadata.resource_version = Some("10".into());
        let changed = cache.updates(&snapshot, &output.statuses, "example.dev/agent", now);
        assert_eq!(kinds(&changed), ["HTTPRoute"]);
        assert_eq!(changed[0].resource_version, "10");
        // A route edit: translate decides anew for it alone, and its
        // Gateway's entries come out equal: only the route is computed.
        let route = snapshot.http_routes.get_mut(&route_key).expect("route");
        route.metadata.generation = Some(3);
        route.metadata.resource_version = Some("11".into());
        let changes = [(crate::store::Kind::HttpRoute, route_key.clone())].into();
        let output =
            translate::translate_incremental(&snapshot, &settings, Some(&changes), &mut memo);
        let edited = cache.updates(&snapshot, &output.statuses, "example.dev/agent", now);
        assert_eq!(kinds(&edited), ["HTTPRoute"]);
        // The same decision over a fresh cache: what the cache skipped is
        // what it had computed before, the statuses are the same.
        let full = status_updates(&snapshot, &output.statuses, "example.dev/agent", now);
        let route_update = |updates: &[StatusUpdate]| {
            updates
                .iter()
                .find(|u| u.kind == "HTTPRoute")
                .map(|u| u.status.clone())
        };
        assert_eq!(route_update(&edited), route_update(&full));
    }
}
