//! `gateway-agent inspect`: what this node has programmed and what went
//! through it. The L4 state (listeners, routes, backends and their Maglev
//! shares, conntrack, counters) and the TLS passthrough splice's per-route
//! byte counters are read from the pinned maps, so they show while the agent
//! runs and after it exited. Route names, L7 routes and TLS connection counts
//! live in the agent's memory: they come from its admin `/state` endpoint
//! when it runs (else from `--manifests`, for the pinned routes' names only).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use gateway_common::{
    BackendValue, BackendValue6, FLOW_CLOSING, FLOW_ORIGINAL, FlowKey, FlowKey6, FlowValue,
    FlowValue6, ListenerKey, ListenerKey6, ListenerValue, MAGLEV_TABLE_SIZE,
    MAX_BACKENDS_PER_ROUTE, MAX_ROUTES, MaglevTable, PROTO_TCP, PROTO_UDP, PacketEvent,
    RouteName as PinnedRouteName, RouteStats, RouteValue, maps as names,
    splice::{MAX_TLS_ROUTES, TLS_ROUTE_NAMES, TLS_ROUTE_STATS, TlsRouteStats},
};
use serde::{Deserialize, Serialize};

use crate::dataplane::l4_plan::{Family, family_name_hash, ipv6_of};
use crate::metrics::{ProxyMetrics, RequestLabels, RouteLabels};
use crate::model::{DataplaneConfig, PathMatch, RouteRef, WeightedEndpoint};
use crate::passthrough::Passthrough;

/// A route rule's name, as `/state` and `inspect --output json` print it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteName {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub rule: u32,
}

impl From<&RouteRef> for RouteName {
    fn from(r: &RouteRef) -> Self {
        Self {
            kind: r.kind.to_string(),
            namespace: r.namespace.to_string(),
            name: r.name.to_string(),
            rule: r.rule,
        }
    }
}

impl std::fmt::Display for RouteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/rule{}",
            self.kind, self.namespace, self.name, self.rule
        )
    }
}

impl RouteName {
    /// The hash `ROUTE_NAMES` records for this route's IPv4 id.
    fn hash(&self) -> u64 {
        self.hash_for(Family::V4)
    }

    /// The hash `ROUTE_NAMES` records for this route's id of `family`.
    fn hash_for(&self, family: Family) -> u64 {
        let route = RouteRef {
            kind: static_kind(&self.kind),
            namespace: self.namespace.as_str().into(),
            name: self.name.as_str().into(),
            rule: self.rule,
        };
        family_name_hash(&route, family)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Endpoint {
    pub addr: String,
    pub weight: u64,
}

impl From<&WeightedEndpoint> for Endpoint {
    fn from(e: &WeightedEndpoint) -> Self {
        Self {
            addr: e.addr.to_string(),
            weight: e.weight,
        }
    }
}

/// What the agent serves, as its `/state` endpoint answers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentState {
    /// Configurations applied since the agent started.
    pub generation: u64,
    /// The L4 routes (TCPRoute/UDPRoute rules) programmed into the XDP maps;
    /// their ids are found through the hashes in `ROUTE_NAMES`.
    pub l4_routes: Vec<RouteName>,
    pub http: Vec<HttpListenerState>,
    pub tls_passthrough: Vec<TlsListenerState>,
    /// "kernel" (sockmap splice) or "copy" (userspace).
    pub tls_splice: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HttpListenerState {
    pub bind: String,
    pub tls: bool,
    pub rules: Vec<HttpRuleState>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HttpRuleState {
    pub route: RouteName,
    pub hostnames: Vec<String>,
    /// The match's path condition, e.g. `PathPrefix /app`.
    pub path: String,
    pub backends: Vec<Endpoint>,
    /// Requests answered for this route rule by status class ("2xx", ...),
    /// over all listeners.
    pub requests: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TlsListenerState {
    pub bind: String,
    pub routes: Vec<TlsRouteState>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TlsRouteState {
    pub route: RouteName,
    /// Index of the route's counters in the splice program's `TLS_ROUTE_STATS`.
    pub id: Option<u32>,
    pub hostnames: Vec<String>,
    /// The agent terminates TLS (TLSRoute on a Terminate listener).
    pub terminate: bool,
    pub backends: Vec<Endpoint>,
    pub connections: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
}

fn path_text(path: &PathMatch) -> String {
    match path {
        PathMatch::Exact(p) => format!("Exact {p}"),
        PathMatch::Prefix(p) => format!("PathPrefix {p}"),
        PathMatch::RegularExpression(p) => format!("RegularExpression {p}"),
    }
}

/// Builds `/state`'s answer: the last applied configuration (kept in summary
/// form, without certificates or filters) and the counters read when asked.
pub struct StateSource {
    /// The last applied translate output (its HTTP rules shared with the
    /// proxy's tables) and its generation: `/state` summarizes its config
    /// when asked, not per apply; `/explain` decides from it exactly as
    /// `explain --manifests` does from a directory.
    applied: Mutex<Option<(Arc<crate::translate::Output>, u64)>>,
    proxy_metrics: Arc<ProxyMetrics>,
    passthrough: Arc<Passthrough>,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl StateSource {
    pub fn new(proxy_metrics: Arc<ProxyMetrics>, passthrough: Arc<Passthrough>) -> Self {
        Self {
            applied: Mutex::default(),
            proxy_metrics,
            passthrough,
        }
    }

    /// Keeps the translate output applied in `generation`, in place of the
    /// previous generation's.
    pub fn applied(&self, output: crate::translate::Output, generation: u64) {
        *self.applied.lock().expect("state lock") = Some((Arc::new(output), generation));
    }

    /// The summary of an applied config, counters zero.
    fn summary(config: &DataplaneConfig, generation: u64) -> AgentState {
        let mut l4_routes: Vec<RouteName> = config.l4.iter().map(|l| (&l.route).into()).collect();
        l4_routes.sort();
        l4_routes.dedup();
        let http = config
            .http
            .iter()
            .map(|listener| HttpListenerState {
                bind: listener.bind.to_string(),
                tls: !listener.certificates.is_empty(),
                rules: listener
                    .rules
                    .iter()
                    .map(|rule| HttpRuleState {
                        route: (&rule.route).into(),
                        hostnames: rule.hostnames.to_vec(),
                        path: path_text(&rule.matched.path),
                        backends: rule
                            .backends
                            .iter()
                            .map(|b| Endpoint {
                                addr: b.addr.to_string(),
                                weight: b.weight,
                            })
                            .collect(),
                        requests: BTreeMap::new(),
                    })
                    .collect(),
            })
            .collect();
        let tls_passthrough = config
            .tls_passthrough
            .iter()
            .map(|listener| TlsListenerState {
                bind: listener.bind.to_string(),
                routes: listener
                    .routes
                    .iter()
                    .map(|route| TlsRouteState {
                        route: (&route.route).into(),
                        hostnames: route.hostnames.clone(),
                        id: None,
                        terminate: route.terminate,
                        backends: route.backends.iter().map(Endpoint::from).collect(),
                        connections: 0,
                        bytes_to_backend: 0,
                        bytes_to_client: 0,
                    })
                    .collect(),
            })
            .collect();
        AgentState {
            generation,
            l4_routes,
            http,
            tls_passthrough,
            tls_splice: String::new(),
        }
    }

    /// `explain` of `request` (with `headers`, `name: value`) against what
    /// the agent serves; `None` before the first configuration is applied.
    pub fn explain(
        &self,
        request: &str,
        headers: &[String],
    ) -> Option<anyhow::Result<crate::explain::Explanation>> {
        let (output, _) = self.applied.lock().expect("state lock").clone()?;
        Some(
            crate::explain::Target::parse(request, headers)
                .map(|target| crate::explain::explain(&output, &target, request)),
        )
    }

    /// The configuration with the counters as they are now.
    pub fn state(&self) -> AgentState {
        let applied = self.applied.lock().expect("state lock").clone();
        let mut state = match &applied {
            Some((output, generation)) => Self::summary(&output.config, *generation),
            None => Self::summary(&DataplaneConfig::default(), 0),
        };
        state.tls_splice = if self.passthrough.spliced_in_kernel() {
            "kernel"
        } else {
            "copy"
        }
        .into();
        for rule in state.http.iter_mut().flat_map(|l| l.rules.iter_mut()) {
            let route = RouteLabels {
                kind: static_kind(&rule.route.kind),
                namespace: rule.route.namespace.clone(),
                name: rule.route.name.clone(),
                rule: Some(rule.route.rule),
            };
            for class in STATUS_CLASSES {
                let labels = RequestLabels {
                    route: route.clone(),
                    status_class: class,
                };
                if let Some(counter) = self.proxy_metrics.requests.get(&labels) {
                    rule.requests.insert(class.into(), counter.get());
                }
            }
        }
        let counters: BTreeMap<RouteName, (u32, (u64, u64, u64))> = self
            .passthrough
            .route_counters()
            .into_iter()
            .map(|(route, id, counts)| ((&route).into(), (id, counts)))
            .collect();
        for route in state
            .tls_passthrough
            .iter_mut()
            .flat_map(|l| l.routes.iter_mut())
        {
            if let Some((id, (connections, to_backend, to_client))) = counters.get(&route.route) {
                route.id = Some(*id);
                route.connections = *connections;
                route.bytes_to_backend = *to_backend;
                route.bytes_to_client = *to_client;
            }
        }
        state
    }
}

/// The `&'static str` of a route kind the proxy labels its counters with.
fn static_kind(kind: &str) -> &'static str {
    match kind {
        "HTTPRoute" => "HTTPRoute",
        "GRPCRoute" => "GRPCRoute",
        "TLSRoute" => "TLSRoute",
        "TCPRoute" => "TCPRoute",
        "UDPRoute" => "UDPRoute",
        _ => "",
    }
}

// ---- what `inspect` reads from the pinned maps ----

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListenerRow {
    pub address: String,
    pub protocol: String,
    pub route_id: u32,
    pub route: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendRow {
    pub address: String,
    /// The node address the XDP program uses as source towards it.
    pub snat_address: String,
    /// Maglev slots that pick this backend, of `MAGLEV_TABLE_SIZE`.
    pub slots: u32,
    /// Share of new flows, in percent (slots / table size).
    pub share_percent: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteRow {
    pub id: u32,
    /// Known from the agent's state (or `--manifests`); else only the hash is.
    pub route: Option<RouteName>,
    pub name_hash: String,
    /// The route's id for IPv6 listeners (backends in `BACKENDS6`).
    pub ipv6: bool,
    /// Which of the route's two `MAGLEV_TABLES` entries is live.
    pub table: u32,
    pub backends: Vec<BackendRow>,
    /// Summed over CPUs.
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
    /// Tracked flows of this route (client → backend entries in `FLOWS`).
    pub conntrack_flows: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Conntrack {
    /// Entries in `FLOWS`: two per tracked flow (one per direction).
    pub entries: u64,
    /// Client → backend entries, i.e. tracked flows.
    pub flows: u64,
    pub tcp_flows: u64,
    pub udp_flows: u64,
    /// Flows that saw a FIN and end after the closing timeout.
    pub closing_flows: u64,
}

/// A TLS route's bytes moved by the kernel splice (pinned `TLS_ROUTE_STATS`);
/// bytes the agent copied itself (the ClientHello) are not in them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TlsRouteRow {
    pub id: u32,
    pub route: Option<RouteName>,
    pub name_hash: String,
    /// Summed over CPUs.
    pub spliced_bytes_to_backend: u64,
    pub spliced_bytes_to_client: u64,
}

/// `inspect --output json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Inspection {
    pub pin_dir: String,
    pub listeners: Vec<ListenerRow>,
    pub routes: Vec<RouteRow>,
    /// Empty when nothing is spliced in the kernel (copy mode).
    pub tls_routes: Vec<TlsRouteRow>,
    pub conntrack: Conntrack,
    pub packet_events: BTreeMap<String, u64>,
    /// The running agent's state, when its admin endpoint answered.
    pub agent: Option<AgentState>,
    /// Why `agent` is missing.
    pub agent_unavailable: Option<String>,
}

fn open(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening the pinned map {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

fn ipv4(addr_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(addr_be))
}

fn protocol_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        other => other.to_string(),
    }
}

/// Reads the pinned L4 state under `pin_dir`; `names` gives route names by
/// their `ROUTE_NAMES` hash.
pub fn read_pinned(pin_dir: &Path, names: &[RouteName]) -> anyhow::Result<Inspection> {
    // A route served on both families has one id (and name hash) per family.
    let by_hash: BTreeMap<u64, &RouteName> = names
        .iter()
        .flat_map(|n| [(n.hash(), n), (n.hash_for(Family::V6), n)])
        .collect();
    let route_names: Array<MapData, PinnedRouteName> =
        open(pin_dir, names::ROUTE_NAMES)?.try_into()?;
    let routes: HashMap<MapData, u32, RouteValue> = open(pin_dir, names::ROUTES)?.try_into()?;
    let listeners: HashMap<MapData, ListenerKey, ListenerValue> =
        open(pin_dir, names::LISTENERS)?.try_into()?;
    let tables: Array<MapData, MaglevTable> = open(pin_dir, names::MAGLEV_TABLES)?.try_into()?;
    let backends: Array<MapData, BackendValue> = open(pin_dir, names::BACKENDS)?.try_into()?;
    let flows: HashMap<MapData, FlowKey, FlowValue> = open(pin_dir, names::FLOWS)?.try_into()?;
    let listeners6: HashMap<MapData, ListenerKey6, ListenerValue> =
        open(pin_dir, names::LISTENERS6)?.try_into()?;
    let backends6: HashMap<MapData, u32, BackendValue6> =
        open(pin_dir, names::BACKENDS6)?.try_into()?;
    let flows6: HashMap<MapData, FlowKey6, FlowValue6> =
        open(pin_dir, names::FLOWS6)?.try_into()?;
    let route_stats: PerCpuArray<MapData, RouteStats> =
        open(pin_dir, names::ROUTE_STATS)?.try_into()?;
    let xdp_stats: PerCpuArray<MapData, u64> = open(pin_dir, names::XDP_STATS)?.try_into()?;

    let mut conntrack = Conntrack::default();
    let mut flows_by_route: BTreeMap<u32, u64> = BTreeMap::new();
    let mut count_flow = |proto: u8, flags: u32, route_id: u32| {
        conntrack.entries += 1;
        if flags & FLOW_ORIGINAL != 0 {
            conntrack.flows += 1;
            match proto {
                PROTO_TCP => conntrack.tcp_flows += 1,
                PROTO_UDP => conntrack.udp_flows += 1,
                _ => {}
            }
            if flags & FLOW_CLOSING != 0 {
                conntrack.closing_flows += 1;
            }
            *flows_by_route.entry(route_id).or_default() += 1;
        }
    };
    // Entries can vanish while we walk (expiry, resets): those are skipped.
    for (key, flow) in flows.iter().flatten() {
        count_flow(key.proto, flow.flags, flow.route_id);
    }
    for (key, flow) in flows6.iter().flatten() {
        count_flow(key.proto, flow.flags, flow.route_id);
    }
    // A route id is IPv6 when an IPv6 listener leads to it.
    let ipv6_routes: BTreeSet<u32> = listeners6
        .iter()
        .flatten()
        .map(|(_, value)| value.route_id)
        .collect();

    let mut hashes = BTreeMap::new();
    for id in 0..MAX_ROUTES {
        let name = route_names.get(&id, 0)?;
        if name.hash != 0 {
            hashes.insert(id, name.hash);
        }
    }
    let name_of = |id: u32| {
        hashes
            .get(&id)
            .and_then(|h| by_hash.get(h))
            .map(|n| (*n).clone())
    };

    let mut route_rows = Vec::new();
    for entry in routes.iter() {
        let (id, route) = entry?;
        let mut rows = Vec::new();
        if route.backend_count > 0 {
            let slots = tables.get(&route.table, 0)?;
            let mut counts = vec![0u32; route.backend_count as usize];
            for slot in slots.backend {
                if let Some(c) = counts.get_mut(usize::from(slot)) {
                    *c += 1;
                }
            }
            for (i, count) in counts.into_iter().enumerate() {
                let index = route.table * MAX_BACKENDS_PER_ROUTE + i as u32;
                let (address, snat_address) = if ipv6_routes.contains(&id) {
                    let backend = backends6.get(&index, 0)?;
                    let port = u16::from_be(backend.port_be);
                    (
                        SocketAddr::from((ipv6_of(backend.addr_be), port)),
                        ipv6_of(backend.snat_addr_be).to_string(),
                    )
                } else {
                    let backend = backends.get(&index, 0)?;
                    let port = u16::from_be(backend.port_be);
                    (
                        SocketAddr::from((ipv4(backend.addr_be), port)),
                        ipv4(backend.snat_addr_be).to_string(),
                    )
                };
                rows.push(BackendRow {
                    address: address.to_string(),
                    snat_address,
                    slots: count,
                    share_percent: f64::from(count) * 100.0 / f64::from(MAGLEV_TABLE_SIZE),
                });
            }
        }
        let mut total = RouteStats::default();
        for s in route_stats.get(&id, 0)?.iter() {
            total.packets += s.packets;
            total.bytes += s.bytes;
            total.new_flows += s.new_flows;
            total.drops += s.drops;
        }
        route_rows.push(RouteRow {
            id,
            route: name_of(id),
            name_hash: hashes
                .get(&id)
                .map_or_else(String::new, |h| format!("{h:016x}")),
            ipv6: ipv6_routes.contains(&id),
            table: route.table,
            backends: rows,
            packets: total.packets,
            bytes: total.bytes,
            new_flows: total.new_flows,
            drops: total.drops,
            conntrack_flows: flows_by_route.get(&id).copied().unwrap_or(0),
        });
    }
    route_rows.sort_by_key(|r| r.id);

    let listener_row = |address: SocketAddr, proto: u8, route_id: u32| ListenerRow {
        address: address.to_string(),
        protocol: protocol_name(proto),
        route_id,
        route: name_of(route_id).map(|n| n.to_string()),
    };
    let mut listener_rows: Vec<ListenerRow> = listeners
        .iter()
        .flatten()
        .map(|(key, value)| {
            let address = SocketAddr::from((ipv4(key.addr_be), u16::from_be(key.port_be)));
            listener_row(address, key.proto, value.route_id)
        })
        .collect();
    listener_rows.extend(listeners6.iter().flatten().map(|(key, value)| {
        let address = SocketAddr::from((ipv6_of(key.addr_be), u16::from_be(key.port_be)));
        listener_row(address, key.proto, value.route_id)
    }));
    listener_rows.sort_by(|a, b| (&a.address, &a.protocol).cmp(&(&b.address, &b.protocol)));

    let packet_events = PacketEvent::ALL
        .iter()
        .map(|e| {
            let n = xdp_stats
                .get(&(*e as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            (e.name().to_string(), n)
        })
        .collect();

    Ok(Inspection {
        pin_dir: pin_dir.display().to_string(),
        listeners: listener_rows,
        routes: route_rows,
        tls_routes: read_pinned_tls(pin_dir, &by_hash)?,
        conntrack,
        packet_events,
        agent: None,
        agent_unavailable: None,
    })
}

/// The splice's pinned per-route counters, named through `by_hash`; none
/// when the splice has not pinned them (copy mode).
fn read_pinned_tls(
    pin_dir: &Path,
    by_hash: &BTreeMap<u64, &RouteName>,
) -> anyhow::Result<Vec<TlsRouteRow>> {
    if !pin_dir.join(TLS_ROUTE_STATS).exists() {
        return Ok(Vec::new());
    }
    let route_names: Array<MapData, PinnedRouteName> =
        open(pin_dir, TLS_ROUTE_NAMES)?.try_into()?;
    let stats: PerCpuArray<MapData, TlsRouteStats> = open(pin_dir, TLS_ROUTE_STATS)?.try_into()?;
    let mut rows = Vec::new();
    // Ids are given out from 0 in order: the first unnamed one ends the list.
    for id in 0..MAX_TLS_ROUTES {
        let hash = route_names.get(&id, 0)?.hash;
        if hash == 0 {
            break;
        }
        let (to_backend, to_client) = stats.get(&id, 0)?.iter().fold((0, 0), |(b, c), s| {
            (b + s.bytes_to_backend, c + s.bytes_to_client)
        });
        rows.push(TlsRouteRow {
            id,
            route: by_hash.get(&hash).map(|n| (*n).clone()),
            name_hash: format!("{hash:016x}"),
            spliced_bytes_to_backend: to_backend,
            spliced_bytes_to_client: to_client,
        });
    }
    Ok(rows)
}

/// Asks a running agent for its state (`GET /state` on its admin listener).
pub async fn fetch_state(admin: SocketAddr) -> anyhow::Result<AgentState> {
    fetch_json(admin, "/state").await
}

/// `GET path_and_query` on a running agent's admin listener, answered in JSON.
pub async fn fetch_json<T: serde::de::DeserializeOwned>(
    admin: SocketAddr,
    path_and_query: &str,
) -> anyhow::Result<T> {
    use http_body_util::{BodyExt as _, Empty};
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(admin).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::get(path_and_query)
            .header(hyper::header::HOST, admin.to_string())
            .body(Empty::<bytes::Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "{} answered {status}: {}",
            path_and_query.split('?').next().unwrap_or_default(),
            String::from_utf8_lossy(&body).trim()
        );
        Ok(serde_json::from_slice(&body)?)
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {admin} within 5 s"))?
}

// ---- tables ----

/// Left-aligned columns separated by two spaces, in the manner of `cilium bpf lb list`.
fn table(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for row in rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(ToString::to_string).collect()
}

/// The tables `inspect` prints.
pub fn render(inspection: &Inspection) -> String {
    let mut out = format!("Pinned state: {}\n\n", inspection.pin_dir);
    let route_text = |route: &Option<RouteName>, hash: &str| {
        route
            .as_ref()
            .map_or_else(|| format!("(unnamed, hash {hash})"), ToString::to_string)
    };

    let mut rows = vec![row(["LISTENER", "PROTO", "ROUTE ID", "ROUTE"])];
    for l in &inspection.listeners {
        rows.push(vec![
            l.address.clone(),
            l.protocol.clone(),
            l.route_id.to_string(),
            l.route.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out += &table(&rows);

    out += "\n";
    let mut rows = vec![row([
        "ROUTE ID", "ROUTE", "BACKEND", "SNAT", "SLOTS", "SHARE",
    ])];
    for r in &inspection.routes {
        let name = route_text(&r.route, &r.name_hash);
        if r.backends.is_empty() {
            rows.push(vec![
                r.id.to_string(),
                name.clone(),
                "(no backend: new flows dropped)".into(),
            ]);
        }
        for (i, b) in r.backends.iter().enumerate() {
            let (id, name) = if i == 0 {
                (r.id.to_string(), name.clone())
            } else {
                (String::new(), String::new())
            };
            rows.push(vec![
                id,
                name,
                b.address.clone(),
                b.snat_address.clone(),
                format!("{}/{}", b.slots, MAGLEV_TABLE_SIZE),
                format!("{:.2}%", b.share_percent),
            ]);
        }
    }
    out += &table(&rows);

    out += "\n";
    let mut rows = vec![row([
        "ROUTE ID",
        "ROUTE",
        "PACKETS",
        "BYTES",
        "NEW FLOWS",
        "DROPS",
        "TRACKED",
    ])];
    for r in &inspection.routes {
        rows.push(vec![
            r.id.to_string(),
            route_text(&r.route, &r.name_hash),
            r.packets.to_string(),
            r.bytes.to_string(),
            r.new_flows.to_string(),
            r.drops.to_string(),
            r.conntrack_flows.to_string(),
        ]);
    }
    out += &table(&rows);

    let c = &inspection.conntrack;
    out += &format!(
        "\nConntrack: {} entries, {} flows ({} TCP, {} UDP, {} closing)\n",
        c.entries, c.flows, c.tcp_flows, c.udp_flows, c.closing_flows
    );
    let events: Vec<String> = inspection
        .packet_events
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(e, n)| format!("{e}={n}"))
        .collect();
    out += &format!("XDP packet events: {}\n", events.join(" "));

    if !inspection.tls_routes.is_empty() {
        out += "\n";
        let mut rows = vec![row([
            "TLS ROUTE ID",
            "ROUTE",
            "SPLICED TO BACKEND",
            "SPLICED TO CLIENT",
        ])];
        for r in &inspection.tls_routes {
            rows.push(vec![
                r.id.to_string(),
                route_text(&r.route, &r.name_hash),
                r.spliced_bytes_to_backend.to_string(),
                r.spliced_bytes_to_client.to_string(),
            ]);
        }
        out += &table(&rows);
    }

    let Some(agent) = &inspection.agent else {
        out += &format!(
            "\nHTTP and TLS passthrough routes: not shown, the agent's state is unavailable ({})\n",
            inspection
                .agent_unavailable
                .as_deref()
                .unwrap_or("not asked")
        );
        return out;
    };
    out += &format!(
        "\nAgent: configuration generation {}, TLS passthrough splice: {}\n\n",
        agent.generation, agent.tls_splice
    );
    let mut rows = vec![row([
        "HTTP LISTENER",
        "ROUTE",
        "HOSTNAMES",
        "PATH",
        "BACKENDS",
        "REQUESTS",
    ])];
    for listener in &agent.http {
        let bind = format!(
            "{}{}",
            listener.bind,
            if listener.tls { " (TLS)" } else { "" }
        );
        for rule in &listener.rules {
            rows.push(vec![
                bind.clone(),
                rule.route.to_string(),
                hosts(&rule.hostnames),
                rule.path.clone(),
                endpoints(&rule.backends),
                rule.requests
                    .iter()
                    .map(|(c, n)| format!("{c}={n}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]);
        }
    }
    out += &table(&rows);
    out += "\n";
    let mut rows = vec![row([
        "TLS LISTENER",
        "ROUTE",
        "HOSTNAMES",
        "BACKENDS",
        "CONNECTIONS",
        "BYTES TO BACKEND",
        "BYTES TO CLIENT",
    ])];
    for listener in &agent.tls_passthrough {
        for route in &listener.routes {
            rows.push(vec![
                listener.bind.clone(),
                format!(
                    "{}{}",
                    route.route,
                    if route.terminate { " (terminated)" } else { "" }
                ),
                hosts(&route.hostnames),
                endpoints(&route.backends),
                route.connections.to_string(),
                route.bytes_to_backend.to_string(),
                route.bytes_to_client.to_string(),
            ]);
        }
    }
    out += &table(&rows);
    out
}

fn hosts(hostnames: &[String]) -> String {
    if hostnames.is_empty() {
        "*".into()
    } else {
        hostnames.join(",")
    }
}

fn endpoints(backends: &[Endpoint]) -> String {
    if backends.is_empty() {
        return "-".into();
    }
    backends
        .iter()
        .map(|b| format!("{} (w {})", b.addr, b.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `inspect`'s whole run: the pinned maps, named through the agent's state
/// (or the routes `manifest_routes` yields when the agent does not answer).
pub async fn inspect(
    pin_dir: PathBuf,
    admin: SocketAddr,
    manifest_routes: impl FnOnce() -> Vec<RouteName>,
) -> anyhow::Result<Inspection> {
    let (agent, unavailable) = match fetch_state(admin).await {
        Ok(state) => (Some(state), None),
        Err(e) => (None, Some(format!("agent not answering on {admin}: {e:#}"))),
    };
    let names = match &agent {
        Some(state) => state
            .l4_routes
            .iter()
            .cloned()
            .chain(
                state
                    .tls_passthrough
                    .iter()
                    .flat_map(|l| l.routes.iter().map(|r| r.route.clone())),
            )
            .collect(),
        None => manifest_routes(),
    };
    let mut inspection = read_pinned(&pin_dir, &names).with_context(|| {
        format!(
            "no pinned state under {} (is --name the agent's?)",
            pin_dir.display()
        )
    })?;
    inspection.agent = agent;
    inspection.agent_unavailable = unavailable;
    Ok(inspection)
}

/// The L4 and TLS routes a manifests directory translates to: names for the
/// pinned ids when the agent is not running.
pub fn manifest_routes(dir: &Path, controller_name: &str) -> Vec<RouteName> {
    let (_, output, _errors) = crate::cli::translate_dir(dir, controller_name);
    let l4 = output.config.l4.iter().map(|l| (&l.route).into());
    let tls = output
        .config
        .tls_passthrough
        .iter()
        .flat_map(|l| l.routes.iter().map(|r| (&r.route).into()));
    l4.chain(tls).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_hash_as_the_loader_records_them() {
        let route = RouteRef {
            kind: "TCPRoute",
            namespace: "default".into(),
            name: "echo".into(),
            rule: 2,
        };
        let name = RouteName::from(&route);
        assert_eq!(name.hash(), crate::dataplane::l4_plan::name_hash(&route));
        assert_eq!(
            name.hash_for(Family::V6),
            family_name_hash(&route, Family::V6)
        );
        assert_ne!(name.hash(), name.hash_for(Family::V6));
        assert_eq!(
            RouteName::from(&route).to_string(),
            "TCPRoute/default/echo/rule2"
        );
    }

    #[test]
    fn pinned_tls_counters_get_their_own_table_even_without_the_agent() {
        let inspection = Inspection {
            pin_dir: "/sys/fs/bpf/x".into(),
            listeners: Vec::new(),
            routes: Vec::new(),
            tls_routes: vec![
                TlsRouteRow {
                    id: 0,
                    route: Some(RouteName {
                        kind: "TLSRoute".into(),
                        namespace: "default".into(),
                        name: "pass".into(),
                        rule: 0,
                    }),
                    name_hash: "00000000000000aa".into(),
                    spliced_bytes_to_backend: 214,
                    spliced_bytes_to_client: 1812,
                },
                TlsRouteRow {
                    id: 1,
                    route: None,
                    name_hash: "00000000000000bb".into(),
                    spliced_bytes_to_backend: 0,
                    spliced_bytes_to_client: 7,
                },
            ],
            conntrack: Conntrack::default(),
            packet_events: BTreeMap::new(),
            agent: None,
            agent_unavailable: Some("agent not answering".into()),
        };
        let text = render(&inspection);
        assert!(
            text.contains(
                "TLS ROUTE ID  ROUTE                             SPLICED TO BACKEND  SPLICED TO CLIENT\n\
                 0             TLSRoute/default/pass/rule0       214                 1812\n\
                 1             (unnamed, hash 00000000000000bb)  0                   7\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn tables_align_columns() {
        let text = table(&[row(["A", "BB"]), row(["CCC", "D"])]);
        assert_eq!(text, "A    BB\nCCC  D\n");
    }
}
