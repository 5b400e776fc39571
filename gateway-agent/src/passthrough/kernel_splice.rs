//! The in-kernel splice: loads the `sk_skb` stream verdict program, attaches
//! it to the SOCKHASH, and puts each chosen client/backend pair in it. The
//! only aya user of the passthrough data plane. Its per-route counters and
//! the names of their ids are pinned under the agent's bpffs directory.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, SockHash};
use aya::programs::SkSkb;
use aya::{Ebpf, EbpfLoader};
use gateway_common::splice::{
    PINNED, SPLICE_PEERS, SPLICE_SOCKETS, SPLICE_TO_BACKEND, SPLICE_TO_CLIENT, SpliceKey,
    SpliceValue, TLS_ROUTE_NAMES, TLS_ROUTE_STATS, TlsRouteStats,
};
use gateway_common::{RouteName, maps as l4_maps};
use tokio::net::TcpStream;

// The object the L4 loader embeds: one copy in the binary.
use crate::dataplane::loader::EBPF_OBJECT;

const PROGRAM: &str = "sk_skb_splice";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("sk_skb program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("only IPv4 connections are spliced")]
    NotIpv4,
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("pinning {path}: {message}")]
    Pin { path: String, message: String },
}

pub struct KernelSplice {
    sockets: Mutex<SockHash<MapData, SpliceKey>>,
    peers: Mutex<HashMap<MapData, SpliceKey, SpliceValue>>,
    stats: Mutex<PerCpuArray<MapData, TlsRouteStats>>,
    names: Mutex<Array<MapData, RouteName>>,
    /// Keeps the program loaded and attached.
    _ebpf: Ebpf,
}

/// A spliced pair's map entries; removed when dropped.
pub struct Spliced<'a> {
    splice: &'a KernelSplice,
    keys: [SpliceKey; 2],
}

impl Spliced<'_> {
    /// Bytes the kernel moved so far (client → backend, backend → client).
    pub fn redirected(&self) -> (u64, u64) {
        let peers = self.splice.peers.lock().expect("splice peers lock");
        let of = |key: &SpliceKey| peers.get(key, 0).map_or(0, |v| v.redirected);
        (of(&self.keys[0]), of(&self.keys[1]))
    }
}

impl Drop for Spliced<'_> {
    fn drop(&mut self) {
        let mut peers = self.splice.peers.lock().expect("splice peers lock");
        let mut sockets = self.splice.sockets.lock().expect("splice sockets lock");
        for key in &self.keys {
            // The kernel drops a socket's SOCKHASH entry when it closes; ours
            // may still be open here, so remove both kinds of entry.
            let _ = peers.remove(key);
            let _ = sockets.remove(key);
        }
    }
}

fn key(local: SocketAddr, remote: SocketAddr) -> Result<SpliceKey, Error> {
    let (SocketAddr::V4(local), SocketAddr::V4(remote)) = (local, remote) else {
        return Err(Error::NotIpv4);
    };
    Ok(SpliceKey {
        local_addr_be: u32::from_ne_bytes(local.ip().octets()),
        remote_addr_be: u32::from_ne_bytes(remote.ip().octets()),
        local_port: u32::from(local.port()),
        remote_port_be: u32::from(remote.port().to_be()),
    })
}

fn socket_key(stream: &TcpStream) -> Result<SpliceKey, Error> {
    key(stream.local_addr()?, stream.peer_addr()?)
}

impl KernelSplice {
    /// Loads and attaches the verdict program; fails where the kernel lacks
    /// sockmap (or we lack the capabilities), and the caller falls back to copying.
    /// The counters are pinned afresh under `pin_dir` (route ids are this
    /// agent's: a previous agent's counters would be misattributed); the pins
    /// stay after the agent exits, for bpftool and `inspect`.
    pub fn load(pin_dir: &Path) -> Result<Self, Error> {
        let mut loader = EbpfLoader::new();
        // The object also holds the L4 maps; this instance uses none of them.
        for unused in [
            l4_maps::LISTENERS,
            l4_maps::ROUTES,
            l4_maps::MAGLEV_TABLES,
            l4_maps::BACKENDS,
            l4_maps::ROUTE_NAMES,
            l4_maps::FLOWS,
        ] {
            loader.map_max_entries(unused, 1);
        }
        // The verdict program does not log.
        loader.map_max_entries(
            crate::dataplane::ebpf_log::RING,
            crate::dataplane::ebpf_log::idle_ring_bytes(),
        );
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        for name in PINNED {
            let path = pin_dir.join(name);
            let pin_error = |message: String| Error::Pin {
                path: path.display().to_string(),
                message,
            };
            std::fs::create_dir_all(pin_dir).map_err(|e| pin_error(e.to_string()))?;
            let _ = std::fs::remove_file(&path);
            ebpf.map(name)
                .ok_or(Error::Missing(name))?
                .pin(&path)
                .map_err(|e| pin_error(e.to_string()))?;
        }
        let sockets: SockHash<MapData, SpliceKey> = ebpf
            .take_map(SPLICE_SOCKETS)
            .ok_or(Error::Missing(SPLICE_SOCKETS))?
            .try_into()?;
        let program: &mut SkSkb = ebpf
            .program_mut(PROGRAM)
            .ok_or(Error::Missing(PROGRAM))?
            .try_into()?;
        program.load()?;
        program.attach(sockets.fd())?;
        let peers = ebpf
            .take_map(SPLICE_PEERS)
            .ok_or(Error::Missing(SPLICE_PEERS))?
            .try_into()?;
        let stats = ebpf
            .take_map(TLS_ROUTE_STATS)
            .ok_or(Error::Missing(TLS_ROUTE_STATS))?
            .try_into()?;
        let names = ebpf
            .take_map(TLS_ROUTE_NAMES)
            .ok_or(Error::Missing(TLS_ROUTE_NAMES))?
            .try_into()?;
        Ok(Self {
            sockets: Mutex::new(sockets),
            peers: Mutex::new(peers),
            stats: Mutex::new(stats),
            names: Mutex::new(names),
            _ebpf: ebpf,
        })
    }

    /// From now on the kernel moves bytes arriving on either socket to the
    /// other. Nothing may have been sent to the backend yet: bytes queued
    /// before the pair is in the map would stay with the agent.
    pub fn splice(
        &self,
        client: &TcpStream,
        backend: &TcpStream,
        route_id: u32,
    ) -> Result<Spliced<'_>, Error> {
        let client_key = socket_key(client)?;
        let backend_key = socket_key(backend)?;
        let spliced = Spliced {
            splice: self,
            keys: [client_key, backend_key],
        };
        {
            let mut peers = self.peers.lock().expect("splice peers lock");
            peers.insert(
                client_key,
                SpliceValue {
                    route_id,
                    direction: SPLICE_TO_BACKEND,
                    redirected: 0,
                },
                0,
            )?;
            peers.insert(
                backend_key,
                SpliceValue {
                    route_id,
                    direction: SPLICE_TO_CLIENT,
                    redirected: 0,
                },
                0,
            )?;
        }
        let mut sockets = self.sockets.lock().expect("splice sockets lock");
        // Under a socket's own key lives its peer: the verdict program looks
        // up the socket it runs on and redirects to what it finds.
        sockets.insert(client_key, backend.as_raw_fd(), 0)?;
        sockets.insert(backend_key, client.as_raw_fd(), 0)?;
        Ok(spliced)
    }

    /// Records which route `route_id` counts (`name_hash` of its name), so
    /// that readers of the pins can name it.
    pub fn name_route(&self, route_id: u32, name_hash: u64) -> Result<(), Error> {
        let mut names = self.names.lock().expect("splice names lock");
        names.set(route_id, RouteName { hash: name_hash }, 0)?;
        Ok(())
    }

    /// Zeroes the counters of `route_id` (a freed id handed to a new route).
    pub fn zero_route(&self, route_id: u32) -> Result<(), Error> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::Io(e))?;
        let zero = PerCpuValues::try_from(vec![TlsRouteStats::default(); cpus])?;
        let mut stats = self.stats.lock().expect("splice stats lock");
        stats.set(route_id, zero, 0)?;
        Ok(())
    }

    /// A route's bytes (to backend, to client), summed over CPUs.
    pub fn route_bytes(&self, route_id: u32) -> (u64, u64) {
        match self
            .stats
            .lock()
            .expect("splice stats lock")
            .get(&route_id, 0)
        {
            Ok(per_cpu) => per_cpu.iter().fold((0, 0), |(b, c), s| {
                (b + s.bytes_to_backend, c + s.bytes_to_client)
            }),
            Err(_) => (0, 0),
        }
    }

    /// Entries in (SPLICE_SOCKETS, SPLICE_PEERS): two each per spliced connection.
    pub fn entries(&self) -> (usize, usize) {
        let sockets = self
            .sockets
            .lock()
            .expect("splice sockets lock")
            .keys()
            .count();
        let peers = self.peers.lock().expect("splice peers lock").keys().count();
        (sockets, peers)
    }
}
