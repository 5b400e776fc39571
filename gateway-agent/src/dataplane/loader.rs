//! The only code that touches aya: loads the embedded eBPF object, pins its
//! maps, attaches XDP to the node's interfaces and writes the L4 maps.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use gateway_common::{
    BackendSlotKey, BackendValue, ListenerKey, ListenerValue, PacketEvent, RouteStats, RouteValue,
    maps as names,
};

use super::l4_plan::{self, L4Maps, RouteIds};
use crate::model::{L4Listener, RouteRef};

/// The compiled eBPF object, built by build.rs from gateway-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf"));

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
}

pub struct L4Dataplane {
    ebpf: Ebpf,
    listeners: HashMap<MapData, ListenerKey, ListenerValue>,
    routes: HashMap<MapData, u32, RouteValue>,
    slots: HashMap<MapData, BackendSlotKey, BackendValue>,
    route_stats: PerCpuArray<MapData, RouteStats>,
    xdp_stats: PerCpuArray<MapData, u64>,
    applied: L4Maps,
    ids: RouteIds,
}

impl L4Dataplane {
    /// Loads the programs, pins the maps under `pin_dir` (replacing stale pins)
    /// and attaches XDP to `interfaces`.
    pub fn load(interfaces: &[String], mode: AttachMode, pin_dir: &Path) -> Result<Self, Error> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(Error::Load)?;
        let program: &mut Xdp = ebpf
            .program_mut("xdp_l4_forward")
            .ok_or(Error::Missing("program xdp_l4_forward"))?
            .try_into()?;
        program.load()?;
        let xdp_mode = match mode {
            AttachMode::Auto => XdpMode::Default,
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        };
        for interface in interfaces {
            program.attach(interface, xdp_mode)?;
            enable_forwarding(interface);
            tracing::info!(%interface, ?mode, "XDP program attached");
        }

        let pin_error = |e: &dyn std::fmt::Display| Error::Pin {
            path: pin_dir.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(bpffs) = pin_dir.parent() {
            ensure_bpffs(bpffs).map_err(|e| pin_error(&e))?;
        }
        std::fs::create_dir_all(pin_dir).map_err(|e| pin_error(&e))?;
        for (name, map) in ebpf.maps() {
            let path = pin_dir.join(name);
            let _ = std::fs::remove_file(&path);
            map.pin(&path).map_err(|e| Error::Pin {
                path,
                message: e.to_string(),
            })?;
        }
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(Error::Missing(name));
        let listeners =
            HashMap::try_from(take(names::LISTENERS)?).map_err(map_err(names::LISTENERS))?;
        let routes = HashMap::try_from(take(names::ROUTES)?).map_err(map_err(names::ROUTES))?;
        let slots = HashMap::try_from(take(names::BACKEND_SLOTS)?)
            .map_err(map_err(names::BACKEND_SLOTS))?;
        let route_stats = PerCpuArray::try_from(take(names::ROUTE_STATS)?)
            .map_err(map_err(names::ROUTE_STATS))?;
        let xdp_stats =
            PerCpuArray::try_from(take(names::XDP_STATS)?).map_err(map_err(names::XDP_STATS))?;
        Ok(Self {
            ebpf,
            listeners,
            routes,
            slots,
            route_stats,
            xdp_stats,
            applied: L4Maps::default(),
            ids: RouteIds::default(),
        })
    }

    /// Programs the maps for `listeners`, writing only entries that changed.
    /// Additions go in table → route → listener order and removals in reverse,
    /// so the program never follows a listener to a missing table.
    pub fn apply(&mut self, listeners: &[L4Listener]) -> Result<(), Error> {
        let desired = l4_plan::plan(listeners, &mut self.ids, &source_address_for);
        let old = std::mem::take(&mut self.applied);
        for (key, value) in &desired.slots {
            if old.slots.get(key) != Some(value) {
                self.slots
                    .insert(key, value, 0)
                    .map_err(map_err(names::BACKEND_SLOTS))?;
            }
        }
        for (id, size) in &desired.routes {
            if old.routes.get(id) != Some(size) {
                let value = RouteValue { table_size: *size };
                self.routes
                    .insert(id, value, 0)
                    .map_err(map_err(names::ROUTES))?;
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
        for key in old
            .listeners
            .keys()
            .filter(|k| !desired.listeners.contains_key(k))
        {
            self.listeners
                .remove(key)
                .map_err(map_err(names::LISTENERS))?;
        }
        for id in old
            .routes
            .keys()
            .filter(|k| !desired.routes.contains_key(k))
        {
            self.routes.remove(id).map_err(map_err(names::ROUTES))?;
        }
        for key in old.slots.keys().filter(|k| !desired.slots.contains_key(k)) {
            self.slots
                .remove(key)
                .map_err(map_err(names::BACKEND_SLOTS))?;
        }
        self.applied = desired;
        Ok(())
    }

    /// Runs the XDP program once over `packet` (BPF_PROG_TEST_RUN), against the
    /// live maps: returns the XDP action and the packet as the program left it.
    pub fn test_run(&self, packet: &[u8]) -> Result<(u32, Vec<u8>), Error> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let program: &Xdp = self
            .ebpf
            .program("xdp_l4_forward")
            .ok_or(Error::Missing("program xdp_l4_forward"))?
            .try_into()?;
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        let result = program.test_run(opts)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Per-route counters summed over CPUs.
    pub fn route_stats(&self) -> Vec<(RouteRef, RouteStats)> {
        self.ids
            .names()
            .filter_map(|(route, id)| {
                let per_cpu = self.route_stats.get(&id, 0).ok()?;
                let mut total = RouteStats::default();
                for s in per_cpu.iter() {
                    total.packets += s.packets;
                    total.bytes += s.bytes;
                    total.new_flows += s.new_flows;
                    total.drops += s.drops;
                }
                Some((route.clone(), total))
            })
            .collect()
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
fn source_address_for(backend: Ipv4Addr) -> Ipv4Addr {
    let local = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((backend, 9)).map(|()| s))
        .and_then(|s| s.local_addr());
    match local {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        _ => {
            tracing::warn!(%backend, "no route to backend; using it as its own source address");
            backend
        }
    }
}

/// bpf_fib_lookup answers only on interfaces with IPv4 forwarding on; and packets
/// the program rewrites but leaves to the kernel (next hop not yet resolved)
/// carry a node address as source, which the kernel drops unless accept_local.
fn enable_forwarding(interface: &str) {
    for (knob, value) in [("forwarding", "1"), ("accept_local", "1")] {
        let path = format!("/proc/sys/net/ipv4/conf/{interface}/{knob}");
        if let Err(e) = std::fs::write(&path, value) {
            tracing::warn!(%path, error = %e, "cannot set sysctl; forwarding may fall back to the kernel");
        }
    }
}
