//! Gateway API semantics as a pure function: a snapshot in, the data planes'
//! configuration and a status report out. No I/O, no clock, no kube client.

mod backend_tls;
pub mod certificates;
#[cfg(test)]
mod conformance;
mod frontend_tls;
mod gateways;
mod http;
pub mod input;
mod intern;
pub mod listeners;
#[cfg(test)]
mod memo_tests;
mod passthrough;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

use crate::model::{
    ANY_V4, ClientValidation, DataplaneConfig, ENDPOINT_WEIGHT_SCALE, HttpListener, HttpRule,
    L4Listener, L4Protocol, RouteRef, ServerCertificate, TlsPassthroughListener, WeightedEndpoint,
};
use crate::store::{Kind, ObjectKey, Snapshot};
use input::{BackendRef, GATEWAY_GROUP, ParentRef, Route, RouteKind};
use listeners::Listener;
pub use status::{ApiObject, Condition, ListenerFacts, ObjectStatus, api_objects};

/// What translate needs to know about the node it runs for.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// GatewayClasses naming this controller are ours; everything else is ignored.
    pub controller_name: String,
    /// Where a Gateway without `spec.addresses` is served (L4: programmed per address).
    pub node_addresses: Vec<Ipv4Addr>,
    /// Every address of this node's interfaces: a Gateway's static
    /// `spec.addresses` outside them (and loopback) are `AddressNotUsable`.
    /// None: not known, every IP address is taken as usable.
    pub usable_addresses: Option<Vec<IpAddr>>,
}

#[derive(Clone, Debug, Default)]
pub struct Output {
    pub config: DataplaneConfig,
    /// Shared with the memo: a route edit copies pointers to the other
    /// routes' statuses, not the statuses.
    pub statuses: Vec<Arc<ObjectStatus>>,
}

/// A route's acceptance on one listener, with the hostnames it serves there.
struct Attachment<'a> {
    route: &'a Route,
    hostnames: &'a Arc<[String]>,
}

/// What one translate leaves for the next, so that a change to a few routes
/// recomputes only those routes and the sockets they are (or were) served
/// on. The caller holds it between calls and says what changed; translate
/// stays a function of the snapshot (`translate` and `translate_incremental`
/// return the same output for the same snapshot).
///
/// Besides each route's own share, the memo keeps what used to be gathered
/// from every route on each translate (each listener's attached routes, its
/// status, its L4 entries, each socket's TLS routes) and patches it for the
/// changed routes only. What a route edit still does per route: one pointer
/// to each route's status copied into the output.
#[derive(Default)]
pub struct Memo {
    /// The settings the memo was computed for; other settings start over.
    settings: Option<Settings>,
    routes: BTreeMap<RouteId, RouteMemo>,
    /// Each socket's rules, in precedence order, as last assembled.
    http_rules: BTreeMap<SocketAddr, Arc<Vec<HttpRule>>>,
    /// Per listener, by its index (the listeners are the same while only
    /// routes change): the routes it accepts, in the memo's order.
    attached: Vec<BTreeMap<RouteId, AttachedRoute>>,
    /// Per listener: its status entry as last decided.
    listener_statuses: Vec<Arc<ObjectStatus>>,
    /// Per listener: the L4 entries it programmed.
    l4: Vec<Vec<L4Listener>>,
    /// How many entries `routes` holds, all parents together.
    route_statuses: usize,
    /// Each TLS socket as last assembled.
    tls_sockets: BTreeMap<SocketAddr, TlsPassthroughListener>,
    /// The other objects' entries (GatewayClasses, ListenerSets, Gateways)
    /// in output order: an equal one is handed out again, the same pointer.
    object_statuses: Vec<Arc<ObjectStatus>>,
}

type RouteId = (RouteKind, ObjectKey);

/// A route accepted by a listener: the hostnames it serves there, one entry
/// per parentRef of the route that attached it (each counts in attachedRoutes).
struct AttachedRoute {
    route: Arc<Route>,
    hostnames: Vec<Arc<[String]>>,
}

/// The routes a listener accepts, in the memo's order (kind, then
/// namespace/name; a route's parentRefs in order).
fn attachments(attached: &BTreeMap<RouteId, AttachedRoute>) -> Vec<Attachment<'_>> {
    attached
        .values()
        .flat_map(|a| {
            a.hostnames.iter().map(|hostnames| Attachment {
                route: a.route.as_ref(),
                hostnames,
            })
        })
        .collect()
}

/// A listener's attachedRoutes.
fn attached_count(attached: &BTreeMap<RouteId, AttachedRoute>) -> usize {
    attached.values().map(|a| a.hostnames.len()).sum()
}

impl Memo {
    /// `status` as an Arc: the one handed out last time at `position` of the
    /// other objects' entries when it is equal (so that the status writer
    /// sees it unchanged), else a new one.
    fn object_status(
        kept: &[Arc<ObjectStatus>],
        fresh: &mut Vec<Arc<ObjectStatus>>,
        status: ObjectStatus,
    ) -> Arc<ObjectStatus> {
        let status = match kept.get(fresh.len()) {
            Some(old) if **old == status => old.clone(),
            _ => Arc::new(status),
        };
        fresh.push(status.clone());
        status
    }
}

/// One route's own share of a translate: valid while no object other than
/// routes changes (listeners, Services, grants... are what it was decided on).
struct RouteMemo {
    /// Shared with the snapshot when it holds routes parsed.
    route: Arc<Route>,
    /// One per parentRef of ours: its status, and the listeners it attached to.
    parents: Vec<(Arc<ObjectStatus>, Vec<Hit>)>,
    /// The sockets of those listeners, sorted.
    binds: Box<[SocketAddr]>,
}

/// A listener accepting a route: its index into the listeners, and the
/// hostnames the route serves there (the route's own, shared, when the
/// listener has no hostname).
type Hit = (usize, Arc<[String]>);

/// What changed in the snapshot since the translate that filled the memo:
/// every object (`None`, e.g. the first translate), or these objects (added,
/// changed or removed).
pub type Changes<'a> = Option<&'a BTreeSet<(Kind, ObjectKey)>>;

const ROUTE_KINDS: [Kind; 5] = [
    Kind::HttpRoute,
    Kind::GrpcRoute,
    Kind::TcpRoute,
    Kind::UdpRoute,
    Kind::TlsRoute,
];

pub fn translate(snapshot: &Snapshot, settings: &Settings) -> Output {
    translate_incremental(snapshot, settings, None, &mut Memo::default())
}

/// `translate`, reusing what `memo` kept of the previous translate: when only
/// routes changed, only the changed routes are translated again and only the
/// sockets they were or are attached to get their rules assembled anew.
/// Any other change (a Gateway, a Service, a Secret...) translates everything.
pub fn translate_incremental(
    snapshot: &Snapshot,
    settings: &Settings,
    changes: Changes,
    memo: &mut Memo,
) -> Output {
    let routes_only = memo.settings.as_ref() == Some(settings)
        && changes.is_some_and(|c| c.iter().all(|(kind, _)| ROUTE_KINDS.contains(kind)));
    let kept_statuses = std::mem::take(&mut memo.object_statuses);
    let mut object_statuses = Vec::new();
    let mut statuses = Vec::new();
    let our_classes: Vec<&str> = snapshot
        .gateway_classes
        .iter()
        .filter(|(_, c)| c.spec.controller_name == settings.controller_name)
        .map(|(k, _)| k.name.as_str())
        .collect();
    for (key, class) in &snapshot.gateway_classes {
        if class.spec.controller_name != settings.controller_name {
            continue;
        }
        statuses.push(Memo::object_status(
            &kept_statuses,
            &mut object_statuses,
            gateways::gateway_class_status(key, class, snapshot),
        ));
    }

    // Addresses of each of our Gateways, and the ones we cannot use.
    let mut gateway_addresses: BTreeMap<&ObjectKey, gateways::GatewayAddresses> = BTreeMap::new();
    for (key, gateway) in &snapshot.gateways {
        if !our_classes.contains(&gateway.spec.gateway_class_name.as_str()) {
            continue;
        }
        let usable = settings.usable_addresses.as_deref();
        gateway_addresses.insert(key, gateways::GatewayAddresses::of(gateway, usable));
    }

    let mut listeners: Vec<Listener> = Vec::new();
    let mut ranges = Vec::new();
    let mut listener_sets = Vec::new();
    for (key, addresses) in &gateway_addresses {
        let gateway = &snapshot.gateways[*key];
        let merged = listeners::gateway_listeners(key, gateway, &addresses.usable, snapshot);
        let first = listeners.len();
        listeners.extend(merged.listeners);
        ranges.push((*key, first..listeners.len()));
        listener_sets.extend(merged.listener_sets);
    }
    listeners::mark_port_collisions(&mut listeners);
    for listener in &mut listeners {
        certificates::resolve_listener(listener, snapshot);
    }
    let client_validations: Vec<Option<ClientValidation>> = listeners
        .iter_mut()
        .map(|listener| frontend_tls::resolve_listener(listener, snapshot))
        .collect();
    // Whether each listener's Gateway is served, looked up once per Gateway.
    let mut served = vec![false; listeners.len()];
    for (key, range) in &ranges {
        served[range.clone()].fill(gateway_addresses[*key].served());
    }
    let mut gateway_statuses = Vec::new();
    let mut client_certificates = BTreeMap::new();
    for (key, range) in ranges {
        let gateway = &snapshot.gateways[key];
        let addresses = &gateway_addresses[key];
        let mut status =
            gateways::gateway_status(key, gateway, &listeners[range.clone()], addresses);
        if let Some(resolved) = certificates::backend_client_certificate(key, gateway, snapshot) {
            status.push(gateways::backend_client_certificate_condition(&resolved));
            if let Ok(certificate) = resolved {
                client_certificates.insert(key.clone(), certificate);
            }
        }
        status.addresses = match &addresses.usable {
            none if none.is_empty() && addresses.unusable.is_empty() => settings
                .node_addresses
                .iter()
                .map(|a| IpAddr::V4(*a))
                .collect(),
            some => some.clone(),
        };
        gateway_statuses.push((status, range));
    }
    for mut set in listener_sets {
        if set.conditions.is_empty() {
            listeners::listener_set_conditions(&mut set, &listeners);
        }
        statuses.push(Memo::object_status(
            &kept_statuses,
            &mut object_statuses,
            set,
        ));
    }

    let our_listener_sets: BTreeSet<ObjectKey> = statuses
        .iter()
        .filter(|s| s.kind == "ListenerSet")
        .map(|s| s.key.clone())
        .collect();
    // Each parent's listeners, so that attaching a route does not scan every listener.
    // An owner's listeners are consecutive: one map entry per owner.
    let mut listeners_of: BTreeMap<(&str, &ObjectKey), Vec<usize>> = BTreeMap::new();
    let mut start = 0;
    for owned in
        listeners.chunk_by(|a, b| a.owner_kind == b.owner_kind && std::ptr::eq(a.owner, b.owner))
    {
        let owner = (owned[0].owner_kind, owned[0].owner);
        listeners_of
            .entry(owner)
            .or_default()
            .extend(start..start + owned.len());
        start += owned.len();
    }

    // The routes: the changed ones (all, unless only routes changed) are
    // translated again; the sockets they were and are served on are dirty.
    let mut dirty_binds: BTreeSet<SocketAddr> = BTreeSet::new();
    // Listeners whose attached routes changed (all on a full translate).
    let mut touched: BTreeSet<usize> = BTreeSet::new();
    // Only routes changed, so the listeners are the ones the memo's indices
    // refer to (the count is checked too, for safety's sake).
    let routes_only = routes_only && memo.attached.len() == listeners.len();
    if !routes_only {
        memo.settings = Some(settings.clone());
        memo.routes.clear();
        memo.route_statuses = 0;
        memo.http_rules.clear();
        memo.tls_sockets.clear();
        memo.attached = listeners.iter().map(|_| BTreeMap::new()).collect();
        memo.listener_statuses.clear();
        memo.l4.clear();
        touched.extend(0..listeners.len());
    }
    for (kind, key) in changes.into_iter().flatten() {
        let Some(kind) = RouteKind::of(*kind) else {
            continue;
        };
        let id = (kind, key.clone());
        if let Some(old) = memo.routes.remove(&id) {
            memo.route_statuses -= old.parents.len();
            dirty_binds.extend(old.binds);
            for (index, _) in old.parents.iter().flat_map(|(_, hits)| hits) {
                memo.attached[*index].remove(&id);
                touched.insert(*index);
            }
        }
    }
    let to_translate: Vec<(RouteKind, &ObjectKey)> = match changes {
        Some(changed) if routes_only => changed
            .iter()
            .filter_map(|(kind, key)| Some((RouteKind::of(*kind)?, key)))
            .collect(),
        _ => input::route_ids(snapshot).collect(),
    };
    for (kind, key) in to_translate {
        let Some(route) = input::route(snapshot, kind, key) else {
            continue; // Removed.
        };
        let decided = route_memo(
            route,
            &gateway_addresses,
            &our_listener_sets,
            &listeners_of,
            &listeners,
            snapshot,
        );
        dirty_binds.extend(decided.binds.iter().copied());
        let id = (kind, key.clone());
        for (index, hostnames) in decided.parents.iter().flat_map(|(_, hits)| hits) {
            let attached =
                memo.attached[*index]
                    .entry(id.clone())
                    .or_insert_with(|| AttachedRoute {
                        route: decided.route.clone(),
                        hostnames: Vec::new(),
                    });
            attached.hostnames.push(hostnames.clone());
            touched.insert(*index);
        }
        memo.route_statuses += decided.parents.len();
        memo.routes.insert(id, decided);
    }
    // The memo's order (kind, then namespace/name) is `input::route_ids`'.
    // A pointer per route: the one pass over every route left per change.
    statuses.reserve(memo.route_statuses + listeners.len() + gateway_statuses.len());
    statuses.extend(
        memo.routes
            .values()
            .flat_map(|decided| decided.parents.iter().map(|(status, _)| status.clone())),
    );

    // BackendTLSPolicies: who governs which Service port, and their ancestors
    // (the Gateways whose routes reach the Services they target). Without
    // a policy there are none: no pass over every route's backends.
    let mut policies = backend_tls::BackendTlsPolicies::resolve(snapshot);
    policies.present_client_certificates(client_certificates);
    if !snapshot.backend_tls_policies.is_empty() {
        let mut reached: BTreeMap<ObjectKey, Vec<&BackendRef>> = BTreeMap::new();
        for (listener, attached) in listeners.iter().zip(&memo.attached) {
            let backends = reached.entry(listener.gateway.clone()).or_default();
            for attachment in attachments(attached) {
                backends.extend(attachment.route.rules.iter().flat_map(|r| &r.backend_refs));
            }
        }
        statuses.extend(
            policies
                .statuses(&reached, snapshot)
                .into_iter()
                .map(Arc::new),
        );
    }

    // Gateway and listener statuses, now that attachedRoutes is known.
    // A listener none of the changed routes attached to keeps its entry.
    let mut listener_statuses = Vec::with_capacity(listeners.len());
    for (status, range) in gateway_statuses {
        statuses.push(Memo::object_status(
            &kept_statuses,
            &mut object_statuses,
            status,
        ));
        for index in range {
            let kept = memo.listener_statuses.get(index);
            let status = match kept {
                Some(kept) if !touched.contains(&index) => kept.clone(),
                _ => {
                    let count = attached_count(&memo.attached[index]);
                    let fresh = gateways::listener_status(&listeners[index], count);
                    match kept {
                        Some(kept) if **kept == fresh => kept.clone(),
                        _ => Arc::new(fresh),
                    }
                }
            };
            statuses.push(status.clone());
            listener_statuses.push(status);
        }
    }
    memo.listener_statuses = listener_statuses;
    memo.object_statuses = object_statuses;

    let mut config = DataplaneConfig::default();
    let mut http: BTreeMap<SocketAddr, Vec<(http::SortKey, HttpRule)>> = BTreeMap::new();
    let mut https_certificates: BTreeMap<SocketAddr, Vec<ServerCertificate>> = BTreeMap::new();
    let mut https_validation: BTreeMap<SocketAddr, ClientValidation> = BTreeMap::new();
    let mut tls_sockets = BTreeMap::new();
    let mut shared = intern::Interner::default();
    // A socket's rules are assembled again when a route on it changed, or
    // when the memo has none for it (a full translate).
    let http_rules = &mut memo.http_rules;
    let bind_dirty =
        |bind: &SocketAddr| dirty_binds.contains(bind) || !http_rules.contains_key(bind);
    let is_dirty = |listener: &Listener| listener_binds(listener).iter().any(bind_dirty);
    // The same for TLS sockets.
    let kept_tls = std::mem::take(&mut memo.tls_sockets);
    let tls_dirty = |listener: &Listener| {
        listener_binds(listener)
            .iter()
            .any(|bind| dirty_binds.contains(bind) || !kept_tls.contains_key(bind))
    };
    let mut l4_entries: Vec<Vec<L4Listener>> = listeners.iter().map(|_| Vec::new()).collect();
    for (index, (listener, validation)) in listeners.iter().zip(&client_validations).enumerate() {
        let attached = &memo.attached[index];
        if !served[index] {
            continue;
        }
        if !listener.serves() {
            // An HTTPS listener whose client CAs do not resolve keeps its port
            // and refuses every handshake, rather than go dark (or serve
            // without the client authentication it asks for).
            if let Some(refuse_all) = validation
                && listener.protocol == "HTTPS"
                && !listener.certificates.is_empty()
            {
                for bind in listener_binds(listener) {
                    http.entry(bind).or_default();
                    https_certificates
                        .entry(bind)
                        .or_default()
                        .extend(listener.certificates.iter().cloned());
                    https_validation
                        .entry(bind)
                        .or_insert_with(|| refuse_all.clone());
                }
            }
            continue;
        }
        match listener.protocol {
            "TCP" | "UDP" => {
                if let Some(kept) = memo.l4.get_mut(index)
                    && !touched.contains(&index)
                {
                    config.l4.extend(kept.iter().cloned());
                    l4_entries[index] = std::mem::take(kept);
                    continue;
                }
                let attached = attachments(attached);
                let protocol = if listener.protocol == "TCP" {
                    L4Protocol::Tcp
                } else {
                    L4Protocol::Udp
                };
                // One route per L4 listener: the oldest wins, then by namespace/name.
                let Some(first) = attached.iter().min_by(|a, b| {
                    (&a.route.created, &a.route.key).cmp(&(&b.route.created, &b.route.key))
                }) else {
                    continue;
                };
                let Some(rule) = first.route.rules.first() else {
                    continue;
                };
                let (backends, _) = resolve_backends(first.route, &rule.backend_refs, snapshot);
                let addrs: Vec<IpAddr> = if listener.addresses.is_empty() {
                    settings
                        .node_addresses
                        .iter()
                        .map(|a| IpAddr::V4(*a))
                        .collect()
                } else {
                    listener.addresses.to_vec()
                };
                for addr in addrs {
                    l4_entries[index].push(L4Listener {
                        addr,
                        port: listener.port,
                        protocol,
                        route: route_ref(first.route, 0),
                        backends: backends.clone(),
                    });
                }
                config.l4.extend(l4_entries[index].iter().cloned());
            }
            "HTTP" | "HTTPS" => {
                if is_dirty(listener) {
                    http::listener_rules(
                        listener,
                        &attachments(attached),
                        snapshot,
                        &policies,
                        &mut http,
                        &mut shared,
                    );
                } else {
                    for bind in listener_binds(listener) {
                        http.entry(bind).or_default();
                    }
                }
                // HTTPS: the socket's certificates and client validation.
                let tls_binds = match listener.protocol {
                    "HTTPS" => listener_binds(listener),
                    _ => Vec::new(),
                };
                for bind in tls_binds {
                    https_certificates
                        .entry(bind)
                        .or_default()
                        .extend(listener.certificates.iter().cloned());
                    // One socket, one handshake: the first listener's validation holds.
                    if let Some(validation) = validation {
                        https_validation
                            .entry(bind)
                            .or_insert_with(|| validation.clone());
                    }
                }
            }
            "TLS" if tls_dirty(listener) => passthrough::add_listener(
                listener,
                &attachments(attached),
                snapshot,
                &policies,
                &mut tls_sockets,
            ),
            _ => {}
        }
    }
    config.l4.sort();
    config
        .l4
        .dedup_by(|a, b| (a.addr, a.port, a.protocol) == (b.addr, b.port, b.protocol));
    let mut assembled = BTreeMap::new();
    for (bind, mut rules) in http {
        let rules = match http_rules.get(&bind) {
            Some(kept) if !dirty_binds.contains(&bind) => kept.clone(),
            _ => {
                rules.sort_by(|a, b| a.0.cmp(&b.0));
                // Kept until the socket's rules change: sized exactly (a
                // collect in place would keep the sort keys' room).
                let mut kept = Vec::with_capacity(rules.len());
                kept.extend(rules.into_iter().map(|(_, r)| r));
                Arc::new(kept)
            }
        };
        assembled.insert(bind, rules.clone());
        config.http.push(HttpListener {
            bind,
            rules,
            certificates: https_certificates.remove(&bind).unwrap_or_default(),
            client_validation: https_validation.remove(&bind),
        });
    }
    *http_rules = assembled;
    memo.l4 = l4_entries;
    // A TLS socket no changed route is on keeps what it served; the others
    // are what their listeners assembled now.
    let mut tls: BTreeMap<SocketAddr, TlsPassthroughListener> = passthrough::finish(tls_sockets)
        .into_iter()
        .map(|socket| (socket.bind, socket))
        .collect();
    for (bind, socket) in kept_tls {
        if !dirty_binds.contains(&bind) {
            tls.insert(bind, socket);
        }
    }
    config.tls_passthrough = tls.values().cloned().collect();
    memo.tls_sockets = tls;
    // Kept with the applied config (for `/explain`): no spare room.
    statuses.shrink_to_fit();
    Output { config, statuses }
}

/// Translates one route on its own: its status per parentRef of ours and
/// the listeners that accept it.
fn route_memo(
    route: Arc<Route>,
    gateway_addresses: &BTreeMap<&ObjectKey, gateways::GatewayAddresses>,
    our_listener_sets: &BTreeSet<ObjectKey>,
    listeners_of: &BTreeMap<(&str, &ObjectKey), Vec<usize>>,
    listeners: &[Listener],
    snapshot: &Snapshot,
) -> RouteMemo {
    let mut parents = Vec::new();
    let mut binds = BTreeSet::new();
    for parent in &route.parent_refs {
        if parent.group != GATEWAY_GROUP {
            continue;
        }
        let parent_key = ObjectKey::new(&parent.namespace, &parent.name);
        let owner_kind = match parent.kind.as_str() {
            "Gateway" if gateway_addresses.contains_key(&parent_key) => "Gateway",
            // A ListenerSet is ours when it names one of our Gateways.
            "ListenerSet" if our_listener_sets.contains(&parent_key) => "ListenerSet",
            _ => continue, // Not a parent of ours: its controller writes this status.
        };
        let mut status = ObjectStatus::new(route.kind.name(), route.key.clone());
        status.generation = route.generation;
        status.parent = Some(parent_key.clone());
        status.section = parent.section_name.clone();
        status.parent_ref = Some(parent.clone());
        let own = listeners_of
            .get(&(owner_kind, &parent_key))
            .map_or(&[][..], Vec::as_slice);
        let hits = match attach(&route, parent, own, listeners, snapshot) {
            Ok(hits) => {
                status.push(Condition::yes("Accepted", "Accepted", "accepted"));
                for (index, _) in &hits {
                    binds.extend(listener_binds(&listeners[*index]));
                }
                hits
            }
            Err((reason, message)) => {
                status.push(Condition::no("Accepted", reason, &message));
                Vec::new()
            }
        };
        status.push(resolved_refs_condition(&route, snapshot));
        // Kept until the route changes: two conditions, not room for four.
        status.conditions.shrink_to_fit();
        parents.push((Arc::new(status), hits));
    }
    // Kept until the route changes: no spare capacity.
    parents.shrink_to_fit();
    RouteMemo {
        route,
        parents,
        binds: binds.into_iter().collect(),
    }
}

/// The sockets a listener is served on: its Gateway's addresses, or every address.
fn listener_binds(listener: &Listener) -> Vec<SocketAddr> {
    if listener.addresses.is_empty() {
        vec![SocketAddr::new(ANY_V4, listener.port)]
    } else {
        listener
            .addresses
            .iter()
            .map(|a| SocketAddr::new(*a, listener.port))
            .collect()
    }
}

fn route_ref(route: &Route, rule: u32) -> RouteRef {
    RouteRef {
        kind: route.kind.name(),
        namespace: route.key.namespace.as_str().into(),
        name: route.key.name.as_str().into(),
        rule,
    }
}

type Rejection = (&'static str, String);

/// The listeners of the parent this route attaches to (index, hostnames), or
/// why none accepts it. `own` are the parent's listeners: a Gateway's own, or
/// those of a ListenerSet.
fn attach(
    route: &Route,
    parent: &ParentRef,
    own: &[usize],
    listeners: &[Listener],
    snapshot: &Snapshot,
) -> Result<Vec<Hit>, Rejection> {
    let candidates: Vec<(usize, &Listener)> = own
        .iter()
        .map(|&index| (index, &listeners[index]))
        .filter(|(_, l)| parent.section_name.as_deref().is_none_or(|s| s == l.name))
        .filter(|(_, l)| parent.port.is_none_or(|p| p == i32::from(l.port)))
        .collect();
    if candidates.is_empty() {
        return Err((
            "NoMatchingParent",
            "no listener matches the parentRef's sectionName and port".into(),
        ));
    }
    let allowed: Vec<(usize, &Listener)> = candidates
        .into_iter()
        .filter(|(_, l)| {
            l.supported_kinds.contains(&route.kind.name())
                && listeners::namespace_selected(
                    &l.allowed.namespaces,
                    l.namespace,
                    &route.key.namespace,
                    snapshot,
                )
        })
        .collect();
    if allowed.is_empty() {
        return Err((
            "NotAllowedByListeners",
            "no listener allows this route's kind and namespace".into(),
        ));
    }
    let mut hits = Vec::new();
    for (index, listener) in allowed {
        if !matches!(
            route.kind,
            RouteKind::Http | RouteKind::Grpc | RouteKind::Tls
        ) {
            hits.push((index, Arc::default()));
            continue;
        }
        if let Some(hostnames) = intersect_hostnames(listener.hostname, &route.hostnames) {
            hits.push((index, hostnames));
        }
    }
    if hits.is_empty() {
        return Err((
            "NoMatchingListenerHostname",
            "no listener hostname intersects the route's hostnames".into(),
        ));
    }
    hits.shrink_to_fit();
    Ok(hits)
}

/// Does `host` (possibly a `*.` wildcard) fall under `pattern` (possibly a wildcard)?
pub fn hostname_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// The hostnames a route serves on a listener, or None when they do not intersect.
/// Empty means "any host".
fn intersect_hostnames(listener: Option<&str>, route: &Arc<[String]>) -> Option<Arc<[String]>> {
    let Some(listener) = listener else {
        return Some(route.clone());
    };
    if route.is_empty() {
        return Some([listener.to_string()].into());
    }
    let mut out = Vec::new();
    for r in route.iter() {
        if hostname_matches(listener, r) {
            out.push(r.clone());
        } else if hostname_matches(r, listener) {
            out.push(listener.to_string());
        }
    }
    // The route's own list when the listener leaves it whole.
    (!out.is_empty()).then(|| {
        if *out == **route {
            route.clone()
        } else {
            out.into()
        }
    })
}

/// True when `from_namespace`'s route of `kind` may reference `to` in another namespace.
fn reference_granted(
    snapshot: &Snapshot,
    kind: RouteKind,
    from_namespace: &str,
    to: &BackendRef,
) -> bool {
    snapshot
        .reference_grants
        .iter()
        .filter(|(key, _)| *key.namespace == *to.namespace)
        .any(|(_, grant)| {
            grant.spec.from.iter().any(|f| {
                f.group == GATEWAY_GROUP && f.kind == kind.name() && f.namespace == from_namespace
            }) && grant.spec.to.iter().any(|t| {
                *t.group == *to.group
                    && *t.kind == *to.kind
                    && t.name.as_deref().is_none_or(|n| *n == *to.name)
            })
        })
}

/// Why a backendRef cannot be used, as (reason, message).
fn backend_problem(route: &Route, backend: &BackendRef, snapshot: &Snapshot) -> Option<Rejection> {
    if !(backend.group.is_empty() || &*backend.group == "core") || &*backend.kind != "Service" {
        return Some((
            "InvalidKind",
            format!(
                "{}/{} is not a supported backend kind",
                backend.group, backend.kind
            ),
        ));
    }
    if *backend.namespace != *route.key.namespace
        && !reference_granted(snapshot, route.kind, &route.key.namespace, backend)
    {
        return Some((
            "RefNotPermitted",
            format!(
                "no ReferenceGrant allows a reference to Service {}/{}",
                backend.namespace, backend.name
            ),
        ));
    }
    if !snapshot.services.contains_key(&backend.object_key()) {
        return Some((
            "BackendNotFound",
            format!("Service {}/{} not found", backend.namespace, backend.name),
        ));
    }
    None
}

fn resolved_refs_condition(route: &Route, snapshot: &Snapshot) -> Condition {
    for rule in &route.rules {
        for backend in rule.backend_refs.iter().chain(rule.mirror_refs()) {
            if let Some((reason, message)) = backend_problem(route, backend, snapshot) {
                return Condition::no("ResolvedRefs", reason, &message);
            }
        }
        if let Some(why) = &rule.unsupported {
            return Condition::no("ResolvedRefs", "UnsupportedValue", why);
        }
    }
    Condition::yes("ResolvedRefs", "ResolvedRefs", "all references resolved")
}

/// Ready endpoints of a rule's backendRefs with their weights, and the weight
/// of refs that could not be resolved.
fn resolve_backends(
    route: &Route,
    refs: &[BackendRef],
    snapshot: &Snapshot,
) -> (Vec<WeightedEndpoint>, u32) {
    let mut endpoints = Vec::new();
    let mut invalid_weight = 0u32;
    for backend in refs.iter().filter(|b| b.weight > 0) {
        if backend_problem(route, backend, snapshot).is_some() {
            invalid_weight = invalid_weight.saturating_add(backend.weight);
            continue;
        }
        let service = &snapshot.services[&backend.object_key()];
        let addrs = service_endpoints(service, backend, snapshot);
        let count = addrs.len() as u64;
        for addr in addrs {
            endpoints.push(WeightedEndpoint {
                addr,
                weight: u64::from(backend.weight) * ENDPOINT_WEIGHT_SCALE / count,
            });
        }
    }
    endpoints.sort();
    (endpoints, invalid_weight)
}

/// Ready endpoint addresses behind a Service port, from its EndpointSlices.
fn service_endpoints(
    service: &Service,
    backend: &BackendRef,
    snapshot: &Snapshot,
) -> Vec<SocketAddr> {
    let Some(port) = backend.port else {
        return Vec::new();
    };
    let service_port = service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .find(|p| p.port == port);
    let Some(service_port) = service_port else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let slices = snapshot.endpoint_slices.iter().filter(|(key, slice)| {
        *key.namespace == *backend.namespace
            && slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .is_some_and(|n| **n == *backend.name)
    });
    for (_, slice) in slices {
        let target = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name == service_port.name)
            .and_then(|p| p.port);
        let Some(target) = target.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    out.push(SocketAddr::new(ip, target));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
