//! The ABI between `gateway-ebpf` and `gateway-agent`: map names, keys and values.
//!
//! Every type is `#[repr(C)]`, made of fixed-width integers, with padding written
//! out as fields, so a key built from `Default` never carries garbage into a
//! lookup. Pinned maps outlive the agent: change values append-only.
#![no_std]

use core::mem::size_of;

/// Map names, used by `#[map]` statics in the eBPF crate and by the loader.
pub mod maps {
    pub const LISTENERS: &str = "LISTENERS";
    pub const ROUTES: &str = "ROUTES";
    pub const BACKEND_SLOTS: &str = "BACKEND_SLOTS";
    pub const FLOWS: &str = "FLOWS";
    pub const ROUTE_STATS: &str = "ROUTE_STATS";
    pub const XDP_STATS: &str = "XDP_STATS";
}

/// Capacities. The loader may raise the hash maps' sizes at load time.
pub const MAX_ROUTES: u32 = 4096;
pub const MAX_LISTENERS: u32 = 4096;
pub const MAX_BACKEND_SLOTS: u32 = 65536;
pub const MAX_FLOWS: u32 = 262_144;
/// Largest lookup table one route may have (slots are spread over backends by weight).
pub const MAX_TABLE_SIZE: u32 = 1024;

/// Source ports the XDP program allocates for source NAT. Above Linux's default
/// ephemeral range (32768–60999), so the node's own connections never pick them.
pub const NAT_PORT_MIN: u16 = 61000;
pub const NAT_PORT_COUNT: u16 = 4536;
/// How many ports a new flow tries before it is dropped as `NatPortsExhausted`.
pub const NAT_PORT_PROBES: u32 = 8;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A Gateway listener as the kernel sees it: destination address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerKey {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerValue {
    pub route_id: u32,
}

/// A route's backend lookup table: `table_size` slots in `BACKEND_SLOTS`.
/// A route with `table_size == 0` has no usable backend: new flows are refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteValue {
    pub table_size: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendSlotKey {
    pub route_id: u32,
    pub slot: u32,
}

/// One backend endpoint, and the node address used as the source towards it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue {
    pub addr_be: u32,
    pub snat_addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}

/// A directional 5-tuple, as read from a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    pub src_addr_be: u32,
    pub dst_addr_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// How to rewrite a packet of a tracked flow. Each flow has two entries: the
/// client → listener direction and the backend → node (reply) direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub new_src_addr_be: u32,
    pub new_dst_addr_be: u32,
    pub new_src_port_be: u16,
    pub new_dst_port_be: u16,
    pub route_id: u32,
    /// `FLOW_*` bits.
    pub flags: u32,
}

/// Set on the entry of the client → backend direction.
pub const FLOW_ORIGINAL: u32 = 1;

/// Per-route counters, one per CPU (`PerCpuArray` indexed by route id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
}

/// What the XDP program did with packets it did not forward, by reason. Index
/// of `XDP_STATS`; the agent and `inspect` name them from this one table.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketEvent {
    /// Too short to parse, or a protocol we do not handle: passed to the kernel.
    PassedNotOurs = 0,
    /// IPv4 fragment or options: passed to the kernel.
    PassedFragmentOrOptions = 1,
    /// Destination is a listener but the packet starts no flow (e.g. a TCP
    /// segment without SYN for an unknown flow): passed to the kernel.
    PassedNoFlow = 2,
    /// Listener's route has no backend: dropped.
    DroppedNoBackend = 3,
    /// No free source-NAT port after `NAT_PORT_PROBES` tries: dropped.
    DroppedNatPortsExhausted = 4,
    /// Forwarded with a FIB lookup and a redirect (or XDP_TX).
    Redirected = 5,
    /// Rewritten and passed to the kernel to route (local destination or no neighbour yet).
    RewrittenPassed = 6,
}

pub const PACKET_EVENT_COUNT: u32 = 7;

impl PacketEvent {
    pub const ALL: [PacketEvent; PACKET_EVENT_COUNT as usize] = [
        PacketEvent::PassedNotOurs,
        PacketEvent::PassedFragmentOrOptions,
        PacketEvent::PassedNoFlow,
        PacketEvent::DroppedNoBackend,
        PacketEvent::DroppedNatPortsExhausted,
        PacketEvent::Redirected,
        PacketEvent::RewrittenPassed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            PacketEvent::PassedNotOurs => "passed_not_ours",
            PacketEvent::PassedFragmentOrOptions => "passed_fragment_or_options",
            PacketEvent::PassedNoFlow => "passed_no_flow",
            PacketEvent::DroppedNoBackend => "dropped_no_backend",
            PacketEvent::DroppedNatPortsExhausted => "dropped_nat_ports_exhausted",
            PacketEvent::Redirected => "redirected",
            PacketEvent::RewrittenPassed => "rewritten_passed",
        }
    }
}

/// The flow hash that picks a backend slot and the first NAT port to try.
/// Shared so that host tests can predict the kernel's choice.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let ports = ((key.src_port_be as u32) << 16) | key.dst_port_be as u32;
    let mut h = mix(key.src_addr_be ^ 0x9e37_79b9);
    h = mix(h ^ key.dst_addr_be);
    h = mix(h ^ ports);
    mix(h ^ key.proto as u32)
}

/// murmur3's 32-bit finaliser: cheap, and every input bit reaches every output bit.
#[inline(always)]
const fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

// Layout checks: the eBPF side and userspace must agree byte for byte.
const _: () = assert!(size_of::<ListenerKey>() == 8);
const _: () = assert!(size_of::<BackendSlotKey>() == 8);
const _: () = assert!(size_of::<BackendValue>() == 12);
const _: () = assert!(size_of::<FlowKey>() == 16);
const _: () = assert!(size_of::<FlowValue>() == 20);
const _: () = assert!(size_of::<RouteStats>() == 32);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is repr(C), has no implicit padding (asserted above) and
    // any bit pattern is a valid value.
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for ListenerValue {}
    unsafe impl aya::Pod for RouteValue {}
    unsafe impl aya::Pod for BackendSlotKey {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for RouteStats {}
}

/// TLS passthrough splice: the `sk_skb` stream verdict program and its maps.
pub mod splice {
    use core::mem::size_of;

    pub const SPLICE_SOCKETS: &str = "SPLICE_SOCKETS";
    pub const SPLICE_PEERS: &str = "SPLICE_PEERS";
    pub const TLS_ROUTE_STATS: &str = "TLS_ROUTE_STATS";

    /// Spliced connections at once: two sockets each.
    pub const MAX_SPLICED_CONNECTIONS: u32 = 65536;
    pub const MAX_TLS_ROUTES: u32 = 4096;

    /// A socket as the verdict program sees it: its own address pair, with
    /// the byte orders of `__sk_buff` (ports: local in host order, remote in
    /// network order in the low 16 bits). In `SPLICE_SOCKETS` the entry under
    /// a socket's key is its peer, the socket its bytes are redirected to.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SpliceKey {
        pub local_addr_be: u32,
        pub remote_addr_be: u32,
        pub local_port: u32,
        pub remote_port_be: u32,
    }

    /// Which route a spliced socket belongs to, and which way its bytes go.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SpliceValue {
        pub route_id: u32,
        /// `SPLICE_TO_BACKEND` on the client's socket, `SPLICE_TO_CLIENT` on the backend's.
        pub direction: u32,
        /// Bytes redirected from this socket to its peer: the agent passes an
        /// end of stream on only once they are all in the peer's send queue.
        pub redirected: u64,
    }

    pub const SPLICE_TO_BACKEND: u32 = 0;
    pub const SPLICE_TO_CLIENT: u32 = 1;

    /// Per-route byte counters of spliced connections, one per CPU.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct TlsRouteStats {
        pub bytes_to_backend: u64,
        pub bytes_to_client: u64,
    }

    const _: () = assert!(size_of::<SpliceKey>() == 16);
    const _: () = assert!(size_of::<SpliceValue>() == 16);
    const _: () = assert!(size_of::<TlsRouteStats>() == 16);

    #[cfg(feature = "user")]
    mod pod {
        use super::*;
        // SAFETY: repr(C), no implicit padding (asserted above), any bit pattern valid.
        unsafe impl aya::Pod for SpliceKey {}
        unsafe impl aya::Pod for SpliceValue {}
        unsafe impl aya::Pod for TlsRouteStats {}
    }
}
