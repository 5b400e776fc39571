//! The only code that touches aya: loads the embedded eBPF object, pins its
//! maps, attaches the forwarding program to the node's interfaces (XDP, or a
//! TC classifier at their ingress) and writes the L4 maps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, MapInfo, MapType, PerCpuArray};
use aya::programs::links::LinkOrder;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{
    SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, TestRunResult, Xdp, XdpMode,
    xdp::XdpLink,
};
use aya::{Ebpf, EbpfLoader};
use gateway_common::{
    Address, BackendValue, BackendValue6, FLOW_ORIGINAL, FlowKey, FlowKey6, FlowKeyOf, FlowValue,
    FlowValue6, FlowValueOf, ListenerKey, ListenerKey6, ListenerValue, MAX_BACKENDS_PER_ROUTE,
    MAX_BACKENDS6, MAX_FLOWS, MAX_FLOWS6, MAX_LISTENERS, MAX_ROUTES, MAX_TABLES, MaglevTable,
    PACKET_EVENT_COUNT, PacketEvent, RouteName, RouteStats, RouteValue, maps as names,
};

use super::l4_plan::{self, L4Maps, RouteIds, RouteTable, TableCache};
use crate::model::{L4Listener, RouteRef};

/// The compiled eBPF object, built by build.rs from gateway-ebpf; the TLS
/// passthrough splice loads its own program from this same object.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot load the eBPF object (loading needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON): {0}"
    )]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("eBPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning under {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error("eBPF log ring buffer: {0}")]
    Log(#[from] aya_log::Error),
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native where the driver supports it, generic otherwise (the kernel decides).
    #[default]
    Auto,
    /// Driver (native) XDP only.
    Native,
    /// Generic (skb) XDP: works on every interface, slower.
    Generic,
    /// No XDP: the same forwarding as a TC classifier at each interface's
    /// ingress (tcx), on skbs as the kernel built them (`--attach tc`).
    #[value(skip)]
    Tc,
}

/// The hook the L4 program runs at (`--attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Attach {
    /// XDP (see `--xdp-mode`): the earliest hook; on veth it needs full
    /// checksums and turns the peer's segmentation offload off.
    #[default]
    Xdp,
    /// A TC (tcx) classifier at ingress: works on the skb, GSO and checksum
    /// offload kept.
    Tc,
}

impl Attach {
    /// The attach mode: `xdp_mode` for XDP.
    pub fn mode(self, xdp_mode: AttachMode) -> AttachMode {
        match self {
            Attach::Xdp => xdp_mode,
            Attach::Tc => AttachMode::Tc,
        }
    }
}

/// How long an idle tracked flow lives (see `gateway_common::DEFAULT_*_NS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    pub tcp_idle_ns: u64,
    pub tcp_closing_ns: u64,
    pub udp_idle_ns: u64,
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        FlowTimeouts {
            tcp_idle_ns: gateway_common::DEFAULT_TCP_IDLE_NS,
            tcp_closing_ns: gateway_common::DEFAULT_TCP_CLOSING_NS,
            udp_idle_ns: gateway_common::DEFAULT_UDP_IDLE_NS,
        }
    }
}

pub struct L4Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// The XDP links, pinned under `<pin_dir>/links/<interface>` (TC links
    /// under `<pin_dir>/tc-links/`): the pin, not this process, keeps the
    /// program attached.
    links: Vec<FdLink>,
    /// Which program is loaded (and test-run): the TC classifier, or XDP.
    mode: AttachMode,
    listeners: HashMap<MapData, ListenerKey, ListenerValue>,
    routes: HashMap<MapData, u32, RouteValue>,
    tables: Array<MapData, MaglevTable>,
    backends: Array<MapData, BackendValue>,
    route_names: Array<MapData, RouteName>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    listeners6: HashMap<MapData, ListenerKey6, ListenerValue>,
    backends6: HashMap<MapData, u32, BackendValue6>,
    flows6: HashMap<MapData, FlowKey6, FlowValue6>,
    /// The keys `BACKENDS6` holds, so that a table written over an idle half
    /// removes what that half held before.
    backends6_keys: BTreeSet<u32>,
    route_stats: PerCpuArray<MapData, RouteStats>,
    xdp_stats: PerCpuArray<MapData, u64>,
    applied: L4Maps,
    /// route id → the `MAGLEV_TABLES` index its `ROUTES` entry points at.
    live_tables: BTreeMap<u32, u32>,
    ids: RouteIds,
    tables_cache: TableCache,
    adopted: bool,
    /// With `--ebpf-log`: the reader of the program's aya-log ring buffer,
    /// until `take_ebpf_logger` hands it to its draining task.
    ebpf_logger: Option<aya_log::EbpfLogger<super::ebpf_log::TracingLog>>,
}

/// What each adopted map must be: its type and flags (as `maps.rs` declares
/// them), key size, value size and capacity. A pin left by an agent built
/// with other types, another map kind or other flags (an LRU with per-CPU
/// lists, say) is replaced, not misread.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MapShape {
    map_type: MapType,
    flags: u32,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
}

fn expected_shape(name: &str) -> Option<MapShape> {
    use std::mem::size_of;
    let (map_type, key_size, value_size, max_entries) = match name {
        names::LISTENERS => (
            MapType::Hash,
            size_of::<ListenerKey>(),
            size_of::<ListenerValue>(),
            MAX_LISTENERS,
        ),
        names::ROUTES => (MapType::Hash, 4, size_of::<RouteValue>(), MAX_ROUTES),
        names::MAGLEV_TABLES => (MapType::Array, 4, size_of::<MaglevTable>(), MAX_TABLES),
        names::BACKENDS => (
            MapType::Array,
            4,
            size_of::<BackendValue>(),
            MAX_TABLES * MAX_BACKENDS_PER_ROUTE,
        ),
        names::ROUTE_NAMES => (MapType::Array, 4, size_of::<RouteName>(), MAX_ROUTES),
        names::FLOWS => (
            MapType::LruHash,
            size_of::<FlowKey>(),
            size_of::<FlowValue>(),
            MAX_FLOWS,
        ),
        names::ROUTE_STATS => (MapType::PerCpuArray, 4, size_of::<RouteStats>(), MAX_ROUTES),
        names::XDP_STATS => (
            MapType::PerCpuArray,
            4,
            size_of::<u64>(),
            PACKET_EVENT_COUNT,
        ),
        names::LISTENERS6 => (
            MapType::Hash,
            size_of::<ListenerKey6>(),
            size_of::<ListenerValue>(),
            MAX_LISTENERS,
        ),
        names::BACKENDS6 => (MapType::Hash, 4, size_of::<BackendValue6>(), MAX_BACKENDS6),
        names::FLOWS6 => (
            MapType::LruHash,
            size_of::<FlowKey6>(),
            size_of::<FlowValue6>(),
            MAX_FLOWS6,
        ),
        _ => return None,
    };
    Some(MapShape {
        map_type,
        // No adopted map is declared with flags (FLOWS: one LRU list shared
        // by all CPUs; per-CPU lists, BPF_F_NO_COMMON_LRU, made new flows
        // slower, README "Performance").
        flags: 0,
        key_size,
        value_size,
        max_entries,
    })
}

/// Whether the map pinned at `path` can be adopted; a pin of another shape is removed.
fn adoptable(name: &'static str, path: &Path) -> bool {
    let Ok(info) = MapInfo::from_pin(path) else {
        return false;
    };
    let Ok(map_type) = info.map_type() else {
        tracing::warn!(map = name, path = %path.display(), "pinned map of a type this agent does not know: replacing it (its state is lost)");
        let _ = std::fs::remove_file(path);
        return false;
    };
    let shape = MapShape {
        map_type,
        flags: info.map_flags(),
        key_size: info.key_size() as usize,
        value_size: info.value_size() as usize,
        max_entries: info.max_entries(),
    };
    if Some(shape) == expected_shape(name) {
        return true;
    }
    tracing::warn!(map = name, path = %path.display(), ?shape, expected = ?expected_shape(name), "pinned map has another layout: replacing it (its state is lost)");
    let _ = std::fs::remove_file(path);
    false
}

impl L4Dataplane {
    /// Loads the programs and attaches XDP to `interfaces`, adopting what a
    /// previous agent of the same name left pinned under `pin_dir`: its maps
    /// (flows, tables, counters) are reused as they are, and its XDP links get
    /// the new program atomically, so forwarding never stops.
    pub fn load(interfaces: &[String], mode: AttachMode, pin_dir: &Path) -> Result<Self, Error> {
        Self::load_with(interfaces, mode, pin_dir, FlowTimeouts::default())
    }

    /// `load`, with other flow timeouts than the defaults.
    pub fn load_with(
        interfaces: &[String],
        mode: AttachMode,
        pin_dir: &Path,
        timeouts: FlowTimeouts,
    ) -> Result<Self, Error> {
        Self::load_with_log(interfaces, mode, pin_dir, timeouts, false)
    }

    /// `load_with`; `ebpf_log` turns the program's aya-log messages on (else
    /// their level global is 0 and the verifier drops them from the program).
    pub fn load_with_log(
        interfaces: &[String],
        mode: AttachMode,
        pin_dir: &Path,
        timeouts: FlowTimeouts,
        ebpf_log: bool,
    ) -> Result<Self, Error> {
        let pin_error = |e: &dyn std::fmt::Display| Error::Pin {
            path: pin_dir.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(bpffs) = pin_dir.parent() {
            ensure_bpffs(bpffs).map_err(|e| pin_error(&e))?;
        }
        let links_dir = pin_dir.join("links");
        let tc_links_dir = pin_dir.join("tc-links");
        std::fs::create_dir_all(&links_dir).map_err(|e| pin_error(&e))?;
        std::fs::create_dir_all(&tc_links_dir).map_err(|e| pin_error(&e))?;

        let mut loader = EbpfLoader::new();
        loader
            .override_global("TCP_IDLE_NS", &timeouts.tcp_idle_ns, true)
            .override_global("TCP_CLOSING_NS", &timeouts.tcp_closing_ns, true)
            .override_global("UDP_IDLE_NS", &timeouts.udp_idle_ns, true);
        let log_level = if ebpf_log {
            aya_log::Level::Debug as u8
        } else {
            0
        };
        loader.override_global(aya_log::LEVEL, &log_level, true);
        if !ebpf_log {
            loader.map_max_entries(super::ebpf_log::RING, super::ebpf_log::idle_ring_bytes());
        }
        // The splice program's maps belong to its own instance (passthrough's
        // kernel_splice, which pins them): this one's copies stay tiny and unpinned.
        for name in gateway_common::splice::MAPS {
            loader.map_max_entries(name, 1);
        }
        let mut adopted = true;
        for name in names::ADOPTED {
            let path = pin_dir.join(name);
            adopted &= adoptable(name, &path);
            // Opened from the pin when there is one, else created and pinned there.
            loader.map_pin_path(name, path);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(Error::Load)?;
        // Before the program loads: it refers to the ring buffer this takes.
        let ebpf_logger = if ebpf_log {
            Some(aya_log::EbpfLogger::init_with_logger(
                &mut ebpf,
                super::ebpf_log::TracingLog,
            )?)
        } else {
            None
        };
        for (name, map) in ebpf.maps() {
            // Adopted maps are pinned already; `.rodata` and the like are per program.
            if names::ADOPTED.contains(&name)
                || name.starts_with('.')
                || name == super::ebpf_log::RING
            {
                continue;
            }
            if gateway_common::splice::MAPS.contains(&name) {
                // A previous agent's splice counters: the splice pins new ones
                // (none in copy mode, so no stale figures are left to read).
                let _ = std::fs::remove_file(pin_dir.join(name));
                continue;
            }
            let path = pin_dir.join(name);
            let _ = std::fs::remove_file(&path);
            map.pin(&path).map_err(|e| Error::Pin {
                path,
                message: e.to_string(),
            })?;
        }

        let mut links = Vec::new();
        if mode == AttachMode::Tc {
            let program: &mut SchedClassifier = ebpf
                .program_mut("tc_l4_forward")
                .ok_or(Error::Missing("program tc_l4_forward"))?
                .try_into()?;
            program.load()?;
            for interface in interfaces {
                links.push(attach_tc(program, interface, &tc_links_dir)?);
                enable_forwarding(interface);
            }
            // Switched from XDP: its links go once TC forwards.
            detach_others(&links_dir, &[]);
            detach_others(&tc_links_dir, interfaces);
        } else {
            let program: &mut Xdp = ebpf
                .program_mut("xdp_l4_forward")
                .ok_or(Error::Missing("program xdp_l4_forward"))?
                .try_into()?;
            program.load()?;
            let xdp_mode = match mode {
                AttachMode::Native => XdpMode::Driver,
                AttachMode::Generic => XdpMode::Skb,
                AttachMode::Auto | AttachMode::Tc => XdpMode::Default,
            };
            for interface in interfaces {
                links.push(attach(program, interface, xdp_mode, &links_dir)?);
                enable_forwarding(interface);
            }
            detach_others(&tc_links_dir, &[]);
            detach_others(&links_dir, interfaces);
        }
        if !interfaces.is_empty() {
            reserve_nat_ports();
        }

        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(Error::Missing(name));
        let listeners =
            HashMap::try_from(take(names::LISTENERS)?).map_err(map_err(names::LISTENERS))?;
        let routes = HashMap::try_from(take(names::ROUTES)?).map_err(map_err(names::ROUTES))?;
        let tables =
            Array::try_from(take(names::MAGLEV_TABLES)?).map_err(map_err(names::MAGLEV_TABLES))?;
        let backends = Array::try_from(take(names::BACKENDS)?).map_err(map_err(names::BACKENDS))?;
        let route_names =
            Array::try_from(take(names::ROUTE_NAMES)?).map_err(map_err(names::ROUTE_NAMES))?;
        let flows = HashMap::try_from(take(names::FLOWS)?).map_err(map_err(names::FLOWS))?;
        let listeners6 =
            HashMap::try_from(take(names::LISTENERS6)?).map_err(map_err(names::LISTENERS6))?;
        let backends6 =
            HashMap::try_from(take(names::BACKENDS6)?).map_err(map_err(names::BACKENDS6))?;
        let flows6 = HashMap::try_from(take(names::FLOWS6)?).map_err(map_err(names::FLOWS6))?;
        let route_stats = PerCpuArray::try_from(take(names::ROUTE_STATS)?)
            .map_err(map_err(names::ROUTE_STATS))?;
        let xdp_stats =
            PerCpuArray::try_from(take(names::XDP_STATS)?).map_err(map_err(names::XDP_STATS))?;
        let mut dataplane = Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            links,
            mode,
            listeners,
            routes,
            tables,
            backends,
            route_names,
            flows,
            listeners6,
            backends6,
            flows6,
            backends6_keys: BTreeSet::new(),
            route_stats,
            xdp_stats,
            applied: L4Maps::default(),
            live_tables: BTreeMap::new(),
            ids: RouteIds::default(),
            tables_cache: TableCache::default(),
            adopted,
            ebpf_logger,
        };
        if adopted {
            dataplane.read_pinned_state()?;
            tracing::info!(
                pin_dir = %pin_dir.display(),
                routes = dataplane.applied.routes.len(),
                listeners = dataplane.applied.listeners.len(),
                "adopted the pinned L4 state of a previous agent"
            );
        }
        Ok(dataplane)
    }

    /// The aya-log reader (with `--ebpf-log`), for the caller to drain.
    pub fn take_ebpf_logger(&mut self) -> Option<aya_log::EbpfLogger<super::ebpf_log::TracingLog>> {
        self.ebpf_logger.take()
    }

    /// True when the maps were adopted from a previous agent's pins.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// What a previous agent programmed, so that `apply` writes only the
    /// difference with the new config (nothing is cleared first).
    fn read_pinned_state(&mut self) -> Result<(), Error> {
        for entry in self.listeners.iter() {
            let (key, value) = entry.map_err(map_err(names::LISTENERS))?;
            self.applied.listeners.insert(key, value.route_id);
        }
        for entry in self.listeners6.iter() {
            let (key, value) = entry.map_err(map_err(names::LISTENERS6))?;
            self.applied.listeners6.insert(key, value.route_id);
        }
        let backends6: BTreeMap<u32, BackendValue6> = self
            .backends6
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::BACKENDS6))?;
        self.backends6_keys = backends6.keys().copied().collect();
        let routes: Vec<(u32, RouteValue)> = self
            .routes
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::ROUTES))?;
        for (id, route) in routes {
            let mut table = RouteTable::default();
            if route.backend_count > 0 && route.table < MAX_TABLES {
                // A table's half holds IPv6 entries only if it is an IPv6 route's.
                let ipv6 = backends6.contains_key(&(route.table * MAX_BACKENDS_PER_ROUTE));
                for i in 0..route.backend_count.min(MAX_BACKENDS_PER_ROUTE) {
                    let at = route.table * MAX_BACKENDS_PER_ROUTE + i;
                    if ipv6 {
                        if let Some(backend) = backends6.get(&at) {
                            table.backends6.push(*backend);
                        }
                    } else {
                        table.backends.push(
                            self.backends
                                .get(&at, 0)
                                .map_err(map_err(names::BACKENDS))?,
                        );
                    }
                }
                let slots = self
                    .tables
                    .get(&route.table, 0)
                    .map_err(map_err(names::MAGLEV_TABLES))?;
                table.slots = slots.backend.as_slice().into();
            }
            self.live_tables.insert(id, route.table);
            self.applied.routes.insert(id, table);
        }
        let mut recorded = Vec::new();
        for id in 0..MAX_ROUTES {
            let name = self
                .route_names
                .get(&id, 0)
                .map_err(map_err(names::ROUTE_NAMES))?;
            if name.hash != 0 {
                recorded.push((id, name.hash));
                self.applied.names.insert(id, name.hash);
            }
        }
        self.ids.adopt(recorded);
        Ok(())
    }

    /// Programs the maps for `listeners`, writing only entries that changed.
    /// A changed route's table is written into its idle half and then made
    /// live by one `ROUTES` update. Additions go in table → route → listener
    /// order and removals in reverse, so the program never follows a listener
    /// to a missing table. Tracked flows to a backend that is gone are
    /// removed: their next packet finds no flow, and the node's kernel answers
    /// it with a reset instead of the flow being black-holed.
    pub fn apply(&mut self, listeners: &[L4Listener]) -> Result<(), Error> {
        // Asked of the kernel once per backend address per apply (a socket,
        // a connect, a getsockname): routes share backends.
        let sources = std::cell::RefCell::new(BTreeMap::new());
        let source_for = |backend: IpAddr| {
            *sources
                .borrow_mut()
                .entry(backend)
                .or_insert_with(|| source_address_for(backend))
        };
        let desired = l4_plan::plan(
            listeners,
            &mut self.ids,
            &mut self.tables_cache,
            &source_for,
        );
        let old = std::mem::take(&mut self.applied);
        for (id, hash) in &desired.names {
            if old.names.get(id) != Some(hash) {
                self.route_names
                    .set(*id, RouteName { hash: *hash }, 0)
                    .map_err(map_err(names::ROUTE_NAMES))?;
            }
        }
        for (id, table) in &desired.routes {
            if old.routes.get(id) != Some(table) {
                self.write_table(*id, table)?;
            }
        }
        for (key, id) in &desired.listeners {
            if old.listeners.get(key) != Some(id) {
                let value = ListenerValue { route_id: *id };
                self.listeners
                    .insert(key, value, 0)
                    .map_err(map_err(names::LISTENERS))?;
            }
        }
        for (key, id) in &desired.listeners6 {
            if old.listeners6.get(key) != Some(id) {
                let value = ListenerValue { route_id: *id };
                self.listeners6
                    .insert(key, value, 0)
                    .map_err(map_err(names::LISTENERS6))?;
            }
        }
        for key in old
            .listeners
            .keys()
            .filter(|k| !desired.listeners.contains_key(k))
        {
            self.listeners
                .remove(key)
                .map_err(map_err(names::LISTENERS))?;
        }
        for key in old
            .listeners6
            .keys()
            .filter(|k| !desired.listeners6.contains_key(k))
        {
            self.listeners6
                .remove(key)
                .map_err(map_err(names::LISTENERS6))?;
        }
        for id in old
            .routes
            .keys()
            .filter(|k| !desired.routes.contains_key(k))
        {
            self.routes.remove(id).map_err(map_err(names::ROUTES))?;
            self.live_tables.remove(id);
            // Unreachable now: free the IPv6 entries of both its halves.
            self.clear_backends6(2 * id, 0)?;
            self.clear_backends6(2 * id + 1, 0)?;
        }
        for id in old.names.keys().filter(|k| !desired.names.contains_key(k)) {
            self.route_names
                .set(*id, RouteName::default(), 0)
                .map_err(map_err(names::ROUTE_NAMES))?;
        }
        let gone = backends_gone(&old, &desired, |t| &t.backends);
        let gone6 = backends_gone(&old, &desired, |t| &t.backends6);
        self.applied = desired;
        if !gone.is_empty() || !gone6.is_empty() {
            let gone_flows = gone.iter().map(|(id, b)| (*id, b.addr_be, b.port_be));
            let removed = remove_flows_to(&mut self.flows, gone_flows.collect());
            let gone_flows6 = gone6.iter().map(|(id, b)| (*id, b.addr_be, b.port_be));
            let removed = removed + remove_flows_to(&mut self.flows6, gone_flows6.collect());
            tracing::info!(
                backends = gone.len() + gone6.len(),
                flows = removed,
                "removed the tracked flows of backends that are gone"
            );
        }
        Ok(())
    }

    /// Writes `table` into the idle one of route `id`'s two tables and points
    /// `ROUTES[id]` at it.
    fn write_table(&mut self, id: u32, table: &RouteTable) -> Result<(), Error> {
        let pair = 2 * id;
        let target = match self.live_tables.get(&id) {
            Some(live) if live / 2 == id => pair + (1 - live % 2),
            _ => pair,
        };
        for (i, backend) in table.backends.iter().enumerate() {
            self.backends
                .set(target * MAX_BACKENDS_PER_ROUTE + i as u32, backend, 0)
                .map_err(map_err(names::BACKENDS))?;
        }
        // The idle half: what it held for IPv6 beyond the new table goes.
        self.clear_backends6(target, table.backends6.len() as u32)?;
        for (i, backend) in table.backends6.iter().enumerate() {
            let at = target * MAX_BACKENDS_PER_ROUTE + i as u32;
            self.backends6
                .insert(at, backend, 0)
                .map_err(map_err(names::BACKENDS6))?;
            self.backends6_keys.insert(at);
        }
        if !table.slots.is_empty() {
            let mut slots = MaglevTable::default();
            slots.backend.copy_from_slice(&table.slots);
            self.tables
                .set(target, slots, 0)
                .map_err(map_err(names::MAGLEV_TABLES))?;
        }
        let value = RouteValue {
            backend_count: table.backend_count() as u32,
            table: target,
        };
        self.routes
            .insert(id, value, 0)
            .map_err(map_err(names::ROUTES))?;
        self.live_tables.insert(id, target);
        Ok(())
    }

    /// Removes the `BACKENDS6` entries of table half `table` from index `from` on.
    fn clear_backends6(&mut self, table: u32, from: u32) -> Result<(), Error> {
        let first = table * MAX_BACKENDS_PER_ROUTE;
        let stale: Vec<u32> = self
            .backends6_keys
            .range(first + from..first + MAX_BACKENDS_PER_ROUTE)
            .copied()
            .collect();
        for key in stale {
            match self.backends6.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::BACKENDS6)(e)),
            }
            self.backends6_keys.remove(&key);
        }
        Ok(())
    }

    /// Detaches the program from every interface and removes the pinned maps: what a
    /// restarted agent would otherwise adopt is gone.
    pub fn detach(&mut self) {
        self.links.clear();
        if let Err(e) = std::fs::remove_dir_all(&self.pin_dir) {
            tracing::warn!(pin_dir = %self.pin_dir.display(), error = %e, "cannot remove the pinned state");
        }
        tracing::info!(pin_dir = %self.pin_dir.display(), "L4 program detached and pins removed");
    }

    /// Runs the loaded program (XDP, or the TC classifier when loaded with
    /// `AttachMode::Tc`) once over `packet` (BPF_PROG_TEST_RUN), against the
    /// live maps: returns its action and the packet as the program left it.
    pub fn test_run(&self, packet: &[u8]) -> Result<(u32, Vec<u8>), Error> {
        let (action, out, _) = self.test_run_repeat(packet, 1)?;
        Ok((action, out))
    }

    /// `test_run` with the kernel running the program `repeat` times over
    /// one buffer, which it does not restore between repetitions (each one
    /// sees the packet as the one before left it): the last repetition's
    /// action, the packet as it left it, and the time per repetition.
    pub fn test_run_repeat(
        &self,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration), Error> {
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let result = self.run_loaded(opts)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out, result.duration))
    }

    /// The program's own time per run over `packet`, run `repeat` times by
    /// the kernel (BPF_PROG_TEST_RUN): what the program costs, without any
    /// interface or traffic generator.
    pub fn time_run(&self, packet: &[u8], repeat: u32) -> Result<std::time::Duration, Error> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.repeat = repeat;
        Ok(self.run_loaded(opts)?.duration)
    }

    fn run_loaded(&self, mut opts: TestRunOptions<'_>) -> Result<TestRunResult, Error> {
        if self.mode != AttachMode::Tc {
            let program: &Xdp = self
                .ebpf
                .program("xdp_l4_forward")
                .ok_or(Error::Missing("program xdp_l4_forward"))?
                .try_into()?;
            return Ok(program.test_run(opts)?);
        }
        let program: &SchedClassifier = self
            .ebpf
            .program("tc_l4_forward")
            .ok_or(Error::Missing("program tc_l4_forward"))?
            .try_into()?;
        // The skb comes in on the namespace's loopback, as an XDP test run's
        // packet does: `ingress_ifindex` is otherwise 0, no interface the FIB
        // could route from.
        opts.ctx_in = Some(&TC_TEST_RUN_CTX);
        Ok(program.test_run(opts)?)
    }

    /// Per-route counters summed over CPUs (and over a route's IPv4 and IPv6 ids).
    pub fn route_stats(&self) -> Vec<(RouteRef, RouteStats)> {
        let mut totals: BTreeMap<RouteRef, RouteStats> = BTreeMap::new();
        for (route, id) in self.ids.names() {
            let Ok(per_cpu) = self.route_stats.get(&id, 0) else {
                continue;
            };
            let total = totals.entry(route.clone()).or_default();
            for s in per_cpu.iter() {
                total.packets += s.packets;
                total.bytes += s.bytes;
                total.new_flows += s.new_flows;
                total.drops += s.drops;
            }
        }
        totals.into_iter().collect()
    }

    /// Packets the program did not forward, by reason, summed over CPUs.
    pub fn packet_events(&self) -> Vec<(PacketEvent, u64)> {
        PacketEvent::ALL
            .iter()
            .map(|e| {
                let n = self
                    .xdp_stats
                    .get(&(*e as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*e, n)
            })
            .collect()
    }
}

/// The head of a `struct __sk_buff` for a TC test run, up to `ifindex`
/// (offset 40), the fields before `ingress_ifindex` (36) zero: the packet
/// came in on, and is on, the loopback interface (index 1 in every
/// namespace).
const TC_TEST_RUN_CTX: [u8; 44] = {
    let loopback = 1u32.to_ne_bytes();
    let mut ctx = [0u8; 44];
    let mut i = 0;
    while i < 4 {
        ctx[36 + i] = loopback[i];
        ctx[40 + i] = loopback[i];
        i += 1;
    }
    ctx
};

/// The key of the other direction of the flow whose entry at `key` is `flow`:
/// the rewritten tuple reversed (for the original direction, the backend
/// answering the source-NAT address and port).
pub fn reply_key<A: Address>(key: &FlowKeyOf<A>, flow: &FlowValueOf<A>) -> FlowKeyOf<A> {
    FlowKeyOf {
        src_addr_be: flow.new_dst_addr_be,
        dst_addr_be: flow.new_src_addr_be,
        src_port_be: flow.new_dst_port_be,
        dst_port_be: flow.new_src_port_be,
        proto: key.proto,
        _pad: 0,
        _pad2: 0,
    }
}

/// (route id, backend) pairs programmed in `old` and absent from `new`;
/// `backends` picks a table's IPv4 or IPv6 list.
fn backends_gone<B: Ord + Copy>(
    old: &L4Maps,
    new: &L4Maps,
    backends: impl Fn(&RouteTable) -> &Vec<B>,
) -> BTreeSet<(u32, B)> {
    let mut gone = BTreeSet::new();
    for (id, table) in &old.routes {
        let kept = new.routes.get(id);
        for backend in backends(table) {
            if !kept.is_some_and(|t| backends(t).contains(backend)) {
                gone.insert((*id, *backend));
            }
        }
    }
    gone
}

/// Removes both directions of every tracked flow whose (route id, backend
/// address, port) is in `gone`. Returns how many flows were removed.
fn remove_flows_to<A>(
    flows: &mut HashMap<MapData, FlowKeyOf<A>, FlowValueOf<A>>,
    gone: BTreeSet<(u32, A, u16)>,
) -> usize
where
    A: Address,
    FlowKeyOf<A>: aya::Pod,
    FlowValueOf<A>: aya::Pod,
{
    let mut doomed = Vec::new();
    for entry in flows.iter() {
        let Ok((key, flow)) = entry else {
            continue; // evicted while we walked: nothing to remove
        };
        if flow.flags & FLOW_ORIGINAL != 0
            && gone.contains(&(flow.route_id, flow.new_dst_addr_be, flow.new_dst_port_be))
        {
            doomed.push((key, flow));
        }
    }
    for (key, flow) in &doomed {
        // The reply entry only if it is still this flow's, not a newer
        // flow's that took over the NAT port after this one went idle.
        let reply = reply_key(key, flow);
        if let Ok(other) = flows.get(&reply, 0)
            && reply_key(&reply, &other) == *key
        {
            let _ = flows.remove(&reply);
        }
        let _ = flows.remove(key);
    }
    doomed.len()
}

/// Attaches `program` to `interface` through a pinned XDP link: an existing
/// pin (a previous agent's) gets the new program atomically; otherwise a new
/// link is made and pinned, so that it outlives this process.
fn attach(
    program: &mut Xdp,
    interface: &str,
    mode: XdpMode,
    links_dir: &Path,
) -> Result<FdLink, Error> {
    let link = pinned_link(
        interface,
        "XDP",
        &links_dir.join(interface),
        |program, pinned| {
            let link = XdpLink::try_from(pinned).map_err(|e| e.to_string())?;
            let id = program.attach_to_link(link).map_err(|e| e.to_string())?;
            program.take_link(id).map_err(|e| e.to_string())
        },
        |program| {
            let id = program.attach(interface, mode)?;
            Ok(program.take_link(id)?)
        },
        program,
    )?;
    tracing::debug!(%interface, ?mode, "XDP mode");
    Ok(link)
}

/// `attach` for the TC classifier: a tcx link at `interface`'s ingress, pinned
/// the same way (tcx needs kernel 6.6).
fn attach_tc(
    program: &mut SchedClassifier,
    interface: &str,
    links_dir: &Path,
) -> Result<FdLink, Error> {
    pinned_link(
        interface,
        "TC",
        &links_dir.join(interface),
        |program, pinned| {
            let link = SchedClassifierLink::try_from(pinned).map_err(|e| e.to_string())?;
            let id = program.attach_to_link(link).map_err(|e| e.to_string())?;
            program.take_link(id).map_err(|e| e.to_string())
        },
        |program| {
            let id = program.attach_with_options(
                interface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )?;
            Ok(program.take_link(id)?)
        },
        program,
    )
}

/// The link pinned at `path` with the new program swapped in by `adopt`, or
/// when there is none (or it is defunct: the interface was recreated) a new
/// one from `fresh`, pinned there.
fn pinned_link<P, L>(
    interface: &str,
    kind: &str,
    path: &Path,
    adopt: impl FnOnce(&mut P, FdLink) -> Result<L, String>,
    fresh: impl FnOnce(&mut P) -> Result<L, Error>,
    program: &mut P,
) -> Result<FdLink, Error>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let pin_error = |e: &dyn std::fmt::Display| Error::Pin {
        path: path.to_path_buf(),
        message: format!("the {kind} link cannot be pinned (kernel without BPF links?): {e}"),
    };
    if let Ok(pinned) = PinnedLink::from_pin(path) {
        match adopt(program, FdLink::from(pinned)) {
            Ok(link) => {
                tracing::info!(%interface, "{kind} link adopted: new program swapped in");
                return FdLink::try_from(link).map_err(|e| pin_error(&e));
            }
            Err(error) => {
                tracing::warn!(%interface, %error, "cannot reuse the pinned {kind} link; attaching anew");
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let link = fresh(program)?;
    let pinned = FdLink::try_from(link)
        .map_err(|e| pin_error(&e))?
        .pin(path)
        .map_err(|e| pin_error(&e))?;
    tracing::info!(%interface, "{kind} program attached");
    Ok(pinned.into())
}

/// Unpins the links of interfaces no longer asked for, which detaches them.
fn detach_others(links_dir: &Path, interfaces: &[String]) {
    let Ok(entries) = std::fs::read_dir(links_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !interfaces.contains(&name) {
            tracing::info!(interface = %name, links = %links_dir.display(), "detaching the L4 program from an interface no longer served");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Mounts the BPF filesystem at `dir` unless one is there already.
fn ensure_bpffs(dir: &Path) -> nix::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    std::fs::create_dir_all(dir).map_err(|_| nix::Error::ENOENT)?;
    if nix::sys::statfs::statfs(dir)?.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    tracing::info!(dir = %dir.display(), "mounting the BPF filesystem");
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
}

/// The address the kernel would use as source towards `backend`: the source-NAT
/// address, so replies come back through this node. Found without sending
/// anything, by connecting a UDP socket and asking for its local address.
fn source_address_for(backend: IpAddr) -> IpAddr {
    let unspecified: IpAddr = match backend {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let local = UdpSocket::bind((unspecified, 0))
        .and_then(|s| s.connect((backend, 9)).map(|()| s))
        .and_then(|s| s.local_addr());
    match local {
        Ok(SocketAddr::V4(a)) if backend.is_ipv4() => IpAddr::V4(*a.ip()),
        Ok(SocketAddr::V6(a)) if backend.is_ipv6() => IpAddr::V6(*a.ip()),
        _ => {
            tracing::warn!(%backend, "no route to backend; using it as its own source address");
            backend
        }
    }
}

/// Keeps the node's own sockets off the source-NAT ports: added to
/// `ip_local_reserved_ports`, they are never chosen as ephemeral ports, so a
/// NAT'd flow and a local connection cannot share a 4-tuple.
fn reserve_nat_ports() {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let range = format!(
        "{}-{}",
        gateway_common::NAT_PORT_MIN,
        u32::from(gateway_common::NAT_PORT_MIN) + u32::from(gateway_common::NAT_PORT_COUNT) - 1
    );
    let current = std::fs::read_to_string(PATH).unwrap_or_default();
    let current = current.trim();
    if current.split(',').any(|r| r == range) {
        return;
    }
    let value = if current.is_empty() {
        range
    } else {
        format!("{current},{range}")
    };
    if let Err(e) = std::fs::write(PATH, &value) {
        tracing::warn!(error = %e, "cannot reserve the source-NAT ports; local connections may collide with NAT'd flows");
    }
}

/// bpf_fib_lookup answers only on interfaces with forwarding on; and packets
/// the program rewrites but leaves to the kernel (next hop not yet resolved)
/// carry a node address as source, which the kernel drops unless accept_local.
/// IPv6 forwarding on an interface stops it taking router advertisements
/// unless accept_ra is 2: a node configured by them keeps them.
fn enable_forwarding(interface: &str) {
    let ipv6 = format!("/proc/sys/net/ipv6/conf/{interface}");
    if std::fs::read_to_string(format!("{ipv6}/accept_ra")).is_ok_and(|v| v.trim() == "1") {
        set_sysctl(&format!("{ipv6}/accept_ra"), "2");
    }
    set_sysctl(&format!("{ipv6}/forwarding"), "1");
    for (knob, value) in [("forwarding", "1"), ("accept_local", "1")] {
        set_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{interface}/{knob}"),
            value,
        );
    }
}

fn set_sysctl(path: &str, value: &str) {
    if let Err(e) = std::fs::write(path, value) {
        tracing::warn!(%path, error = %e, "cannot set sysctl; forwarding may fall back to the kernel");
    }
}
