//! Cluster source: one kube-runtime watcher per kind fills the same `Snapshot`
//! the file source builds. A relist (start, or a watch expired with 410 Gone)
//! is collected aside and swapped in whole when complete, so the objects
//! already served stay until their replacement is known.
//!
//! Each change is recorded by kind and key, so that a refresh copies only
//! the changed objects into the snapshot it serves and translates only what
//! they touch (a relist counts as a change of everything). A change of an
//! object's `status` alone (the echo of our own status write, most often) is
//! copied too, since the status writer works from the served objects, but is
//! not reported as a change: translate reads no status.
//!
//! Secrets: one watch of the Secrets of type `kubernetes.io/tls` (a field
//! selector), of which only those a Gateway listener references enter the
//! snapshot. A watch per referenced name would have to be restarted whenever a
//! Gateway changes, and RBAC cannot narrow list/watch by a name unknown in
//! advance anyway; filtering by type keeps other Secrets (tokens, passwords)
//! from ever reaching the agent.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use gateway_api::{
    backendtlspolicies::BackendTlsPolicy,
    experimental::{httproutes::HttpRoute, tcproutes::TcpRoute, udproutes::UdpRoute},
    gatewayclasses::GatewayClass,
    gateways::Gateway,
    grpcroutes::GrpcRoute,
    listenersets::ListenerSet,
    referencegrants::ReferenceGrant,
    tlsroutes::TlsRoute,
};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::store::{Kind, ObjectKey, Snapshot};

/// An API the cluster does not serve (a CRD not installed) is looked for again
/// this often: rarely, since installing CRDs is an operator's deliberate act.
pub const NOT_INSTALLED_RECHECK: Duration = Duration::from_secs(300);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where one kind's watcher stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KindState {
    /// The first list has not completed yet.
    Listing,
    Synced,
    /// The API server answered 404 for this kind: served as empty.
    NotInstalled,
    /// The last request failed; the last known objects are kept.
    Failing(String),
}

#[derive(Default)]
struct State {
    snapshot: Snapshot,
    /// Every TLS Secret seen; only the referenced ones are handed out.
    tls_secrets: BTreeMap<ObjectKey, Secret>,
    /// Every ConfigMap seen; only those a BackendTLSPolicy names are handed out.
    config_maps: BTreeMap<ObjectKey, ConfigMap>,
    kinds: BTreeMap<&'static str, KindState>,
    /// Objects added, changed or deleted since the last `refresh`...
    changed: BTreeSet<(Kind, ObjectKey)>,
    /// ...or everything (a relist, a kind found not installed).
    everything_changed: bool,
    /// Objects of which only `status` changed since the last `refresh`.
    status_changed: BTreeSet<(Kind, ObjectKey)>,
    /// Counts the changes translate must see (not status-only ones), so
    /// that a debounce can tell them from status echoes.
    changes_seen: u64,
    /// When the oldest change not yet refreshed was received.
    pending_since: Option<std::time::Instant>,
}

/// One kind's objects in the watchers' state.
type Field<K> = fn(&mut State) -> &mut BTreeMap<ObjectKey, K>;

impl State {
    fn put<K: Resource + Serialize>(&mut self, id: Kind, field: Field<K>, object: K) {
        let key = key_of(&object);
        let status_only = field(self)
            .get(&key)
            .is_some_and(|old| same_but_status(old, &object));
        field(self).insert(key.clone(), object);
        // With its time stamp, where a change's way to serving starts in the
        // agent (the bench reads it).
        tracing::debug!(kind = ?id, object = %key, status_only, "watch event");
        if status_only {
            self.status_changed.insert((id, key));
        } else {
            self.changed.insert((id, key));
            self.counted();
        }
    }

    fn counted(&mut self) {
        self.changes_seen += 1;
        self.pending_since
            .get_or_insert_with(std::time::Instant::now);
    }

    fn remove<K>(&mut self, id: Kind, field: Field<K>, key: &ObjectKey) {
        field(self).remove(key);
        tracing::debug!(kind = ?id, object = %key, "watch event: deleted");
        self.changed.insert((id, key.clone()));
        self.counted();
    }

    /// A relist, swapped in whole.
    fn replace_all<K>(&mut self, field: Field<K>, objects: BTreeMap<ObjectKey, K>) {
        *field(self) = objects;
        self.everything_changed = true;
        self.counted();
    }
}

/// True when `new` differs from `old` in nothing translate reads: only in
/// `status` and the bookkeeping a status write changes (`resourceVersion`,
/// `managedFields`). Compared as JSON, one object per watch event.
fn same_but_status<K: Serialize>(old: &K, new: &K) -> bool {
    fn stripped<K: Serialize>(object: &K) -> Option<serde_json::Value> {
        let mut value = serde_json::to_value(object).ok()?;
        let fields = value.as_object_mut()?;
        fields.remove("status");
        if let Some(metadata) = fields.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            metadata.remove("resourceVersion");
            metadata.remove("managedFields");
        }
        Some(value)
    }
    matches!((stripped(old), stripped(new)), (Some(a), Some(b)) if a == b)
}

/// What `KubeSource::refresh` found.
#[derive(Debug, PartialEq)]
pub enum Update {
    /// Some kind has not been listed yet: a partial view would drop routes.
    NotListed,
    /// Anything may have changed (the first update, a relist).
    Everything,
    /// These objects were added, changed or deleted (possibly none).
    Objects(BTreeSet<(Kind, ObjectKey)>),
    /// Only objects' `status` changed (copied): nothing to translate.
    StatusOnly,
}

/// The watchers' shared view of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct KubeSource {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl KubeSource {
    /// Starts one watcher task per kind; they run until the runtime stops.
    pub fn start(client: &Client) -> Self {
        let source = KubeSource {
            state: Arc::default(),
            changed: Arc::new(Notify::new()),
        };
        let all = watcher::Config::default();
        macro_rules! watch {
            ($kind:literal, $id:ident, $ty:ty, $field:ident, $config:expr) => {
                source.spawn::<$ty>(
                    ($kind, Kind::$id),
                    Api::all(client.clone()),
                    $config,
                    |s: &mut State| &mut s.snapshot.$field,
                );
            };
        }
        watch!(
            "GatewayClass",
            GatewayClass,
            GatewayClass,
            gateway_classes,
            all.clone()
        );
        watch!("Gateway", Gateway, Gateway, gateways, all.clone());
        watch!(
            "ListenerSet",
            ListenerSet,
            ListenerSet,
            listener_sets,
            all.clone()
        );
        watch!("HTTPRoute", HttpRoute, HttpRoute, http_routes, all.clone());
        watch!("GRPCRoute", GrpcRoute, GrpcRoute, grpc_routes, all.clone());
        watch!("TLSRoute", TlsRoute, TlsRoute, tls_routes, all.clone());
        watch!("TCPRoute", TcpRoute, TcpRoute, tcp_routes, all.clone());
        watch!("UDPRoute", UdpRoute, UdpRoute, udp_routes, all.clone());
        watch!(
            "ReferenceGrant",
            ReferenceGrant,
            ReferenceGrant,
            reference_grants,
            all.clone()
        );
        watch!("Service", Service, Service, services, all.clone());
        watch!(
            "EndpointSlice",
            EndpointSlice,
            EndpointSlice,
            endpoint_slices,
            all.clone()
        );
        watch!("Namespace", Namespace, Namespace, namespaces, all.clone());
        watch!(
            "BackendTLSPolicy",
            BackendTlsPolicy,
            BackendTlsPolicy,
            backend_tls_policies,
            all.clone()
        );
        source.spawn::<ConfigMap>(
            ("ConfigMap", Kind::ConfigMap),
            Api::all(client.clone()),
            all.clone(),
            |s: &mut State| &mut s.config_maps,
        );
        source.spawn::<Secret>(
            ("Secret", Kind::Secret),
            Api::all(client.clone()),
            all.fields("type=kubernetes.io/tls"),
            |s: &mut State| &mut s.tls_secrets,
        );
        source
    }

    fn spawn<K>(
        &self,
        kind: (&'static str, Kind),
        api: Api<K>,
        config: watcher::Config,
        field: Field<K>,
    ) where
        K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
    {
        self.state
            .lock()
            .expect("source lock")
            .kinds
            .insert(kind.0, KindState::Listing);
        let source = self.clone();
        tokio::spawn(async move { source.watch(kind, api, config, field).await });
    }

    async fn watch<K>(
        &self,
        (kind, id): (&'static str, Kind),
        api: Api<K>,
        config: watcher::Config,
        field: Field<K>,
    ) where
        K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
    {
        let mut stream = watcher::watcher(api.clone(), config.clone()).boxed();
        let mut backoff = BACKOFF_FIRST;
        // Objects of a relist in progress; swapped in at InitDone.
        let mut relist: Option<BTreeMap<ObjectKey, K>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => relist = Some(BTreeMap::new()),
                Ok(Event::InitApply(object)) => {
                    relist
                        .get_or_insert_default()
                        .insert(key_of(&object), object);
                }
                Ok(Event::InitDone) => {
                    let objects = relist.take().unwrap_or_default();
                    tracing::debug!(kind, objects = objects.len(), "listed");
                    self.update(kind, |s| s.replace_all(field, objects));
                    backoff = BACKOFF_FIRST;
                }
                Ok(Event::Apply(object)) => {
                    self.update(kind, |s| s.put(id, field, object));
                    backoff = BACKOFF_FIRST;
                }
                Ok(Event::Delete(object)) => {
                    self.update(kind, |s| s.remove(id, field, &key_of(&object)));
                }
                Err(error) if is_not_found(&error) => {
                    tracing::warn!(
                        kind,
                        recheck_s = NOT_INSTALLED_RECHECK.as_secs(),
                        "the API server does not serve this kind (CRD not installed): skipped"
                    );
                    relist = None;
                    self.update(kind, |s| s.replace_all(field, BTreeMap::new()));
                    self.set_kind(kind, KindState::NotInstalled);
                    tokio::time::sleep(NOT_INSTALLED_RECHECK).await;
                    stream = watcher::watcher(api.clone(), config.clone()).boxed();
                }
                Err(error) => {
                    // A watch ended by 410 Gone is expected: the watcher relists.
                    let gone = matches!(&error, watcher::Error::WatchError(s) if s.code == 410);
                    if gone {
                        tracing::info!(kind, "watch expired (410 Gone): relisting");
                        continue;
                    }
                    tracing::warn!(kind, %error, retry_ms = backoff.as_millis() as u64, "watch failed; serving the last known objects");
                    self.set_kind(kind, KindState::Failing(error.to_string()));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    // Start over with a list: a resumed watch that succeeds
                    // yields no event until something changes, and only a
                    // completed list proves the API server is back.
                    relist = None;
                    stream = watcher::watcher(api.clone(), config.clone()).boxed();
                }
            }
        }
    }

    fn update(&self, kind: &'static str, change: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().expect("source lock");
        change(&mut state);
        state.kinds.insert(kind, KindState::Synced);
        drop(state);
        self.changed.notify_one();
    }

    fn set_kind(&self, kind: &'static str, new: KindState) {
        let mut state = self.state.lock().expect("source lock");
        if state.kinds.insert(kind, new.clone()).as_ref() != Some(&new) {
            drop(state);
            self.changed.notify_one();
        }
    }

    /// Resolves when something changed since the last call (at most one
    /// wake-up is stored, so a burst is seen as one change).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// How many changes translate must see have been recorded so far (status
    /// echoes excluded): a wake-up that leaves it unchanged was status only.
    pub fn changes_seen(&self) -> u64 {
        self.state.lock().expect("source lock").changes_seen
    }

    /// How long ago the oldest change the next `refresh` reports was
    /// received (how long it waited to be applied, so far).
    pub fn pending_for(&self) -> Option<Duration> {
        let state = self.state.lock().expect("source lock");
        state.pending_since.map(|since| since.elapsed())
    }

    /// True when a change translate must see awaits the next `refresh`.
    pub fn changes_pending(&self) -> bool {
        let state = self.state.lock().expect("source lock");
        !state.changed.is_empty() || state.everything_changed
    }

    /// Brings `served` up to date with the watchers' view, once every kind
    /// has been listed (or found not installed), and says what changed since
    /// the last call. Only changed objects are copied, unless everything
    /// may have changed (the first call, a relist).
    pub fn refresh(&self, served: &mut Snapshot) -> Update {
        let mut state = self.state.lock().expect("source lock");
        if state.kinds.values().any(|k| *k == KindState::Listing) {
            return Update::NotListed;
        }
        let changed = std::mem::take(&mut state.changed);
        state.pending_since = None;
        let status_changed = std::mem::take(&mut state.status_changed);
        let update = if std::mem::take(&mut state.everything_changed) {
            *served = state.snapshot.clone();
            Update::Everything
        } else {
            for (kind, key) in changed.iter().chain(&status_changed) {
                copy_object(&state.snapshot, served, *kind, key);
            }
            if changed.is_empty() && !status_changed.is_empty() {
                Update::StatusOnly
            } else {
                Update::Objects(changed)
            }
        };
        // Few: only those a Gateway or a policy names.
        served.secrets = referenced_secrets(&state.snapshot, &state.tls_secrets);
        served.config_maps = referenced_config_maps(&state.snapshot, &state.config_maps);
        update
    }

    /// Kinds whose watch is failing, with why: the agent serves the last
    /// known objects and reports itself degraded.
    pub fn failing(&self) -> Vec<(&'static str, String)> {
        let state = self.state.lock().expect("source lock");
        state
            .kinds
            .iter()
            .filter_map(|(kind, s)| match s {
                KindState::Failing(why) => Some((*kind, why.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn kind_states(&self) -> BTreeMap<&'static str, KindState> {
        self.state.lock().expect("source lock").kinds.clone()
    }
}

/// Makes `to`'s version of one object `from`'s (present or absent). Secrets
/// and ConfigMaps are handed out by reference, not copied here.
fn copy_object(from: &Snapshot, to: &mut Snapshot, kind: Kind, key: &ObjectKey) {
    fn copy<T: Clone>(
        from: &BTreeMap<ObjectKey, T>,
        to: &mut BTreeMap<ObjectKey, T>,
        key: &ObjectKey,
    ) {
        match from.get(key) {
            Some(object) => to.insert(key.clone(), object.clone()),
            None => to.remove(key),
        };
    }
    match kind {
        Kind::GatewayClass => copy(&from.gateway_classes, &mut to.gateway_classes, key),
        Kind::Gateway => copy(&from.gateways, &mut to.gateways, key),
        Kind::HttpRoute => copy(&from.http_routes, &mut to.http_routes, key),
        Kind::GrpcRoute => copy(&from.grpc_routes, &mut to.grpc_routes, key),
        Kind::TcpRoute => copy(&from.tcp_routes, &mut to.tcp_routes, key),
        Kind::UdpRoute => copy(&from.udp_routes, &mut to.udp_routes, key),
        Kind::TlsRoute => copy(&from.tls_routes, &mut to.tls_routes, key),
        Kind::ReferenceGrant => copy(&from.reference_grants, &mut to.reference_grants, key),
        Kind::Service => copy(&from.services, &mut to.services, key),
        Kind::EndpointSlice => copy(&from.endpoint_slices, &mut to.endpoint_slices, key),
        Kind::Namespace => copy(&from.namespaces, &mut to.namespaces, key),
        Kind::ListenerSet => copy(&from.listener_sets, &mut to.listener_sets, key),
        Kind::BackendTlsPolicy => {
            copy(
                &from.backend_tls_policies,
                &mut to.backend_tls_policies,
                key,
            );
        }
        Kind::Secret | Kind::ConfigMap => {}
    }
}

fn key_of<K: Resource>(object: &K) -> ObjectKey {
    ObjectKey::new(object.namespace().unwrap_or_default(), object.name_any())
}

fn is_not_found(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) => {
            matches!(e, kube::Error::Api(status) if status.code == 404)
        }
        _ => false,
    }
}

/// The ConfigMaps named by a BackendTLSPolicy's `caCertificateRefs` (same namespace).
fn referenced_config_maps(
    snapshot: &Snapshot,
    config_maps: &BTreeMap<ObjectKey, ConfigMap>,
) -> BTreeMap<ObjectKey, ConfigMap> {
    let mut referenced = BTreeMap::new();
    for (policy_key, policy) in &snapshot.backend_tls_policies {
        let refs = policy.spec.validation.ca_certificate_refs.iter().flatten();
        for r in refs.filter(|r| r.group.is_empty() && r.kind == "ConfigMap") {
            let key = ObjectKey::new(&policy_key.namespace, &r.name);
            if let Some(map) = config_maps.get(&key) {
                referenced.insert(key, map.clone());
            }
        }
    }
    referenced
}

/// The Secrets named by a Gateway listener's `tls.certificateRefs`.
fn referenced_secrets(
    snapshot: &Snapshot,
    tls_secrets: &BTreeMap<ObjectKey, Secret>,
) -> BTreeMap<ObjectKey, Secret> {
    let mut referenced = BTreeMap::new();
    for (gateway_key, gateway) in &snapshot.gateways {
        for listener in &gateway.spec.listeners {
            let refs = listener
                .tls
                .as_ref()
                .and_then(|t| t.certificate_refs.as_ref());
            for r in refs.into_iter().flatten() {
                let core_secret = r.group.as_deref().unwrap_or_default().is_empty()
                    && r.kind.as_deref().unwrap_or("Secret") == "Secret";
                if !core_secret {
                    continue;
                }
                let key = ObjectKey::new(
                    r.namespace
                        .clone()
                        .unwrap_or_else(|| gateway_key.namespace.clone()),
                    &r.name,
                );
                if let Some(secret) = tls_secrets.get(&key) {
                    referenced.insert(key, secret.clone());
                }
            }
        }
    }
    referenced
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, port: i32) -> Service {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: default}}\nspec: {{ports: [{{port: {port}}}]}}\n"
        ))
        .expect("service")
    }

    fn route(name: &str, host: &str) -> HttpRoute {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: default}}\n\
             spec: {{hostnames: [{host}], parentRefs: [{{name: gw}}], rules: [{{backendRefs: [{{name: o1, port: 80}}]}}]}}\n"
        ))
        .expect("route")
    }

    /// The echo of a status write: the same object with a status and a new
    /// resourceVersion.
    fn with_status(mut route: HttpRoute, version: u32) -> HttpRoute {
        route.metadata.resource_version = Some(version.to_string());
        route.status = Some(
            serde_json::from_value(serde_json::json!({"parents": [{
                "parentRef": {"name": "gw"},
                "controllerName": "example.dev/agent",
                "conditions": [],
            }]}))
            .expect("status"),
        );
        route
    }

    /// Random watch events: after every refresh, the snapshot kept up to
    /// date from the reported changes holds what a full copy holds, a
    /// refresh reports exactly the objects the events touched other than by
    /// status alone, and translating only the reported changes (none after
    /// status echoes) gives a full translate's output.
    #[test]
    fn refreshes_copy_the_changed_objects_and_report_them() {
        let services: Field<Service> = |s| &mut s.snapshot.services;
        let routes: Field<HttpRoute> = |s| &mut s.snapshot.http_routes;
        let classes: Field<GatewayClass> = |s| &mut s.snapshot.gateway_classes;
        let gateways: Field<Gateway> = |s| &mut s.snapshot.gateways;
        let source = KubeSource {
            state: Arc::default(),
            changed: Arc::new(Notify::new()),
        };
        source.set_kind("HTTPRoute", KindState::Listing);
        let mut served = Snapshot::default();
        assert_eq!(source.refresh(&mut served), Update::NotListed);
        let class: GatewayClass = serde_yaml::from_str(
            "metadata: {name: c}\nspec: {controllerName: example.dev/agent}\n",
        )
        .expect("class");
        let gateway: Gateway = serde_yaml::from_str(
            "metadata: {name: gw, namespace: default}\n\
             spec: {gatewayClassName: c, listeners: [{name: web, port: 80, protocol: HTTP}]}\n",
        )
        .expect("gateway");
        source.update("GatewayClass", |s| {
            s.replace_all(classes, [(key_of(&class), class)].into())
        });
        source.update("Gateway", |s| {
            s.replace_all(gateways, [(key_of(&gateway), gateway)].into())
        });
        source.update("HTTPRoute", |s| s.replace_all(routes, BTreeMap::new()));
        assert_eq!(source.refresh(&mut served), Update::Everything);
        let settings = crate::translate::Settings {
            controller_name: "example.dev/agent".into(),
            node_addresses: vec![std::net::Ipv4Addr::new(198, 18, 0, 1)],
            usable_addresses: None,
        };
        let mut memo = crate::translate::Memo::default();
        let mut last = crate::translate::translate_incremental(&served, &settings, None, &mut memo);
        let current_route = |key: &ObjectKey| {
            let state = source.state.lock().expect("source lock");
            state.snapshot.http_routes.get(key).cloned()
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let mut version = 0;
        let mut echoes = 0;
        for step in 0..300 {
            let name = format!("o{}", rng.u8(0..5));
            let key = ObjectKey::new("default", &name);
            let mut touched = BTreeSet::new();
            let mut echoed = false;
            let relist = rng.u8(0..20) == 0;
            for _ in 0..rng.usize(1..3) {
                match rng.u8(0..5) {
                    0 => {
                        source.update("Service", |s| s.remove(Kind::Service, services, &key));
                        touched.insert((Kind::Service, key.clone()));
                    }
                    1 => {
                        let port = rng.i32(1..100);
                        source.update("Service", |s| {
                            s.put(Kind::Service, services, service(&name, port))
                        });
                        touched.insert((Kind::Service, key.clone()));
                    }
                    2 => {
                        if let Some(current) = current_route(&key) {
                            version += 1;
                            source.update("HTTPRoute", |s| {
                                s.put(Kind::HttpRoute, routes, with_status(current, version))
                            });
                            echoed = true;
                        }
                    }
                    _ => {
                        let host = format!("h{}.example", rng.u8(0..9));
                        let new = route(&name, &host);
                        // The same spec again (a status, if any, dropped) is no change.
                        let same = current_route(&key).is_some_and(|old| {
                            format!("{:?}", old.spec) == format!("{:?}", new.spec)
                        });
                        source.update("HTTPRoute", |s| s.put(Kind::HttpRoute, routes, new));
                        if same {
                            echoed = true;
                        } else {
                            touched.insert((Kind::HttpRoute, key.clone()));
                        }
                    }
                }
            }
            if relist {
                let mut objects = BTreeMap::new();
                objects.insert(
                    ObjectKey::new("default", "fresh"),
                    route("fresh", "f.example"),
                );
                source.update("HTTPRoute", |s| s.replace_all(routes, objects));
            }
            let expected = if relist {
                Update::Everything
            } else if touched.is_empty() && echoed {
                echoes += 1;
                Update::StatusOnly
            } else {
                Update::Objects(touched)
            };
            let update = source.refresh(&mut served);
            assert_eq!(update, expected, "step {step}");
            let full = source.state.lock().expect("source lock").snapshot.clone();
            assert_eq!(
                format!("{:?}", (&served.services, &served.http_routes)),
                format!("{:?}", (&full.services, &full.http_routes)),
                "step {step}"
            );
            let translated = crate::translate::translate(&served, &settings);
            match update {
                Update::StatusOnly => {}
                Update::Everything => {
                    last = crate::translate::translate_incremental(
                        &served, &settings, None, &mut memo,
                    );
                }
                Update::Objects(changed) => {
                    last = crate::translate::translate_incremental(
                        &served,
                        &settings,
                        Some(&changed),
                        &mut memo,
                    );
                }
                Update::NotListed => unreachable!("listed above"),
            }
            assert_eq!(last.config, translated.config, "step {step}");
            assert_eq!(last.statuses, translated.statuses, "step {step}");
        }
        assert!(echoes >= 20, "too few status-only steps: {echoes}");
    }

    #[test]
    fn only_secrets_a_listener_references_are_handed_out() {
        let mut snapshot = Snapshot::default();
        let gateway: Gateway = serde_yaml::from_str(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {name: gw, namespace: apps}\n\
             spec:\n  gatewayClassName: c\n  listeners:\n  - name: https\n    port: 443\n    protocol: HTTPS\n\
             \x20   tls:\n      certificateRefs:\n      - name: site\n      - name: shared\n        namespace: certs\n",
        )
        .expect("gateway");
        snapshot
            .gateways
            .insert(ObjectKey::new("apps", "gw"), gateway);
        let secret = |ns: &str, name: &str| {
            let mut s = Secret::default();
            s.metadata.namespace = Some(ns.into());
            s.metadata.name = Some(name.into());
            (ObjectKey::new(ns, name), s)
        };
        let all: BTreeMap<_, _> = [
            secret("apps", "site"),
            secret("certs", "shared"),
            secret("apps", "unrelated"),
            secret("certs", "site"),
        ]
        .into_iter()
        .collect();
        let kept: Vec<String> = referenced_secrets(&snapshot, &all)
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(kept, ["apps/site", "certs/shared"]);
    }
}
