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
    pub const MAGLEV_TABLES: &str = "MAGLEV_TABLES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const ROUTE_NAMES: &str = "ROUTE_NAMES";
    pub const FLOWS: &str = "FLOWS";
    pub const ROUTE_STATS: &str = "ROUTE_STATS";
    pub const XDP_STATS: &str = "XDP_STATS";
    /// The IPv6 counterparts of `LISTENERS`, `BACKENDS` and `FLOWS`; routes,
    /// tables and counters are shared (an IPv6 listener's route has its own id).
    pub const LISTENERS6: &str = "LISTENERS6";
    pub const BACKENDS6: &str = "BACKENDS6";
    pub const FLOWS6: &str = "FLOWS6";

    /// The maps a restarted agent adopts from their pins (the forwarding state).
    pub const ADOPTED: [&str; 11] = [
        LISTENERS,
        ROUTES,
        MAGLEV_TABLES,
        BACKENDS,
        ROUTE_NAMES,
        FLOWS,
        ROUTE_STATS,
        XDP_STATS,
        LISTENERS6,
        BACKENDS6,
        FLOWS6,
    ];
}

/// Capacities. The loader may raise the hash maps' sizes at load time.
pub const MAX_ROUTES: u32 = 1024;
pub const MAX_LISTENERS: u32 = 4096;
pub const MAX_FLOWS: u32 = 262_144;
/// IPv6 flows take 96 bytes of key and value instead of 48: a smaller map.
pub const MAX_FLOWS6: u32 = 65_536;
/// IPv6 backends of all tables together (`BACKENDS6` is a hash map keyed like
/// `BACKENDS`, so that the address family nobody uses costs no memory).
pub const MAX_BACKENDS6: u32 = 16_384;
/// Slots of a route's Maglev lookup table: prime (Maglev's permutations need it).
/// 4093 slots keep every backend of up to 40 within 1% of its weighted share
/// (one slot is 0.025% of traffic) at 8 KiB a table; see docs/l4-dataplane.md.
pub const MAGLEV_TABLE_SIZE: u32 = 4093;
/// Ready endpoints one route can spread new flows over.
pub const MAX_BACKENDS_PER_ROUTE: u32 = 256;
/// Each route owns two tables (and backend lists): the agent fills the idle one
/// and then flips `RouteValue::table`, so the program never reads a half-written table.
pub const MAX_TABLES: u32 = 2 * MAX_ROUTES;

/// Source ports the XDP program allocates for source NAT. Above Linux's default
/// ephemeral range (32768–60999), so the node's own connections never pick them.
pub const NAT_PORT_MIN: u16 = 61000;
pub const NAT_PORT_COUNT: u16 = 4536;
/// How many ports a new flow tries before it is dropped as `NatPortsExhausted`.
/// Probes follow a per-flow stride (double hashing), so busy neighbourhoods do
/// not cluster: with the ports of one backend 60% taken, 32 probes all fail
/// with odds below 1e-6.
pub const NAT_PORT_PROBES: u32 = 32;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// An IPv6 address as four 32-bit words in network byte order (the raw
/// header bytes read as native integers, like the IPv4 `u32`s).
pub type Addr6 = [u32; 4];

/// What the L4 types are generic over: an IPv4 (`u32`) or IPv6 (`Addr6`) address.
pub trait Address: Copy + Default + Eq + Ord + core::hash::Hash + core::fmt::Debug {
    /// The address's 32-bit words, for checksums and hashing.
    fn words(&self) -> &[u32];
}

impl Address for u32 {
    #[inline(always)]
    fn words(&self) -> &[u32] {
        core::slice::from_ref(self)
    }
}

impl Address for Addr6 {
    #[inline(always)]
    fn words(&self) -> &[u32] {
        self
    }
}

/// A Gateway listener as the kernel sees it: destination address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerKeyOf<A> {
    pub addr_be: A,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}
pub type ListenerKey = ListenerKeyOf<u32>;
pub type ListenerKey6 = ListenerKeyOf<Addr6>;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerValue {
    pub route_id: u32,
}

/// A route's live lookup table. `table` indexes `MAGLEV_TABLES`; its backends
/// are `BACKENDS[table * MAX_BACKENDS_PER_ROUTE ..][..backend_count]`.
/// A route with `backend_count == 0` has no usable backend: new flows are refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteValue {
    pub backend_count: u32,
    pub table: u32,
}

/// A route's Maglev lookup table: slot → index in the table's backend list.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    pub backend: [u16; MAGLEV_TABLE_SIZE as usize],
    pub _pad: [u16; 3],
}

impl Default for MaglevTable {
    fn default() -> Self {
        MaglevTable {
            backend: [0; MAGLEV_TABLE_SIZE as usize],
            _pad: [0; 3],
        }
    }
}

/// Which route a route id names (a hash of its kind/namespace/name/rule), so a
/// restarted agent gives each route back its id, counters and tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteName {
    pub hash: u64,
}

/// One backend endpoint, and the node address used as the source towards it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendOf<A> {
    pub addr_be: A,
    pub snat_addr_be: A,
    pub port_be: u16,
    pub _pad: u16,
}
pub type BackendValue = BackendOf<u32>;
pub type BackendValue6 = BackendOf<Addr6>;

/// A directional 5-tuple, as read from a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKeyOf<A> {
    pub src_addr_be: A,
    pub dst_addr_be: A,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    /// Padding as scalars: the eBPF build zeroes an array with a call to a
    /// byte-by-byte `memset` subprogram, on every key it builds.
    pub _pad: u8,
    pub _pad2: u16,
}
pub type FlowKey = FlowKeyOf<u32>;
pub type FlowKey6 = FlowKeyOf<Addr6>;

/// How to rewrite a packet of a tracked flow. Each flow has two entries: the
/// client → listener direction and the backend → node (reply) direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValueOf<A> {
    pub new_src_addr_be: A,
    pub new_dst_addr_be: A,
    pub new_src_port_be: u16,
    pub new_dst_port_be: u16,
    pub route_id: u32,
    /// `FLOW_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// When either direction last carried a packet: CLOCK_MONOTONIC in ns
    /// at tick resolution (`bpf_ktime_get_coarse_ns`; the same clock as the
    /// `bpf_ktime_get_ns` of older programs), kept to within `FLOW_TOUCH_NS`
    /// so that busy flows do not write per packet.
    pub last_seen_ns: u64,
}
pub type FlowValue = FlowValueOf<u32>;
pub type FlowValue6 = FlowValueOf<Addr6>;

/// Set on the entry of the client → backend direction.
pub const FLOW_ORIGINAL: u32 = 1;
/// A FIN was seen: the flow ends after the short closing timeout.
pub const FLOW_CLOSING: u32 = 2;
/// The client sent a FIN.
pub const FLOW_FIN_ORIGINAL: u32 = 4;
/// The backend sent a FIN.
pub const FLOW_FIN_REPLY: u32 = 8;
/// The backend sent its FIN first, so it holds the connection in TIME_WAIT
/// (60 s on Linux) after the close.
pub const FLOW_BACKEND_CLOSED_FIRST: u32 = 16;
/// Both ends sent a FIN: the connection is over (bar the last ACK), and a new
/// flow may take its NAT port at once instead of after the closing timeout.
pub const FLOW_FINISHED: u32 = FLOW_FIN_ORIGINAL | FLOW_FIN_REPLY;
/// What a SYN reusing a closed flow's 5-tuple (a new connection) clears.
pub const FLOW_CLOSE_STATE: u32 =
    FLOW_CLOSING | FLOW_FIN_ORIGINAL | FLOW_FIN_REPLY | FLOW_BACKEND_CLOSED_FIRST;

/// Idle timeouts of tracked flows, defaults of the program's load-time
/// globals (`TCP_IDLE_NS`, `TCP_CLOSING_NS`, `UDP_IDLE_NS`). An expired flow
/// is removed when its next packet arrives (or its NAT port is needed), and
/// the packet is handled as if there were no flow.
pub const DEFAULT_TCP_IDLE_NS: u64 = 3600 * 1_000_000_000;
pub const DEFAULT_TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
pub const DEFAULT_UDP_IDLE_NS: u64 = 60 * 1_000_000_000;
/// How stale `last_seen_ns` may get before a packet refreshes it.
pub const FLOW_TOUCH_NS: u64 = 1_000_000_000;

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
    /// IPv4 fragment or options, IPv6 extension header (fragment, hop-by-hop,
    /// routing, destination options): passed to the kernel.
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
    /// A tracked flow idle past its timeout, removed when its next packet came.
    FlowExpired = 7,
    /// A TCP RST ended a tracked flow (both directions removed).
    FlowReset = 8,
    /// Too big for the egress link and "don't fragment": answered with an ICMP
    /// "fragmentation needed" carrying the link's MTU (path-MTU discovery).
    IcmpFragNeededSent = 9,
    /// An ICMP error about a tracked flow's packet, translated and sent on to
    /// the flow's other end.
    IcmpErrorTranslated = 10,
}

pub const PACKET_EVENT_COUNT: u32 = 11;

impl PacketEvent {
    pub const ALL: [PacketEvent; PACKET_EVENT_COUNT as usize] = [
        PacketEvent::PassedNotOurs,
        PacketEvent::PassedFragmentOrOptions,
        PacketEvent::PassedNoFlow,
        PacketEvent::DroppedNoBackend,
        PacketEvent::DroppedNatPortsExhausted,
        PacketEvent::Redirected,
        PacketEvent::RewrittenPassed,
        PacketEvent::FlowExpired,
        PacketEvent::FlowReset,
        PacketEvent::IcmpFragNeededSent,
        PacketEvent::IcmpErrorTranslated,
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
            PacketEvent::FlowExpired => "flow_expired",
            PacketEvent::FlowReset => "flow_reset",
            PacketEvent::IcmpFragNeededSent => "icmp_frag_needed_sent",
            PacketEvent::IcmpErrorTranslated => "icmp_error_translated",
        }
    }
}

/// The flow hash that picks a backend slot and the first NAT port to try.
/// Shared so that host tests can predict the kernel's choice.
#[inline(always)]
pub fn flow_hash<A: Address>(key: &FlowKeyOf<A>) -> u32 {
    let ports = ((key.src_port_be as u32) << 16) | key.dst_port_be as u32;
    let mut h = 0x9e37_79b9;
    for word in key.src_addr_be.words() {
        h = mix(h ^ word);
    }
    for word in key.dst_addr_be.words() {
        h = mix(h ^ word);
    }
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
const _: () = assert!(size_of::<MaglevTable>() == 8192);
const _: () = assert!(size_of::<RouteName>() == 8);
const _: () = assert!(size_of::<BackendValue>() == 12);
const _: () = assert!(size_of::<FlowKey>() == 16);
const _: () = assert!(size_of::<FlowValue>() == 32);
const _: () = assert!(size_of::<RouteStats>() == 32);
const _: () = assert!(size_of::<ListenerKey6>() == 20);
const _: () = assert!(size_of::<BackendValue6>() == 36);
const _: () = assert!(size_of::<FlowKey6>() == 40);
const _: () = assert!(size_of::<FlowValue6>() == 56);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is repr(C), has no implicit padding (asserted above) and
    // any bit pattern is a valid value.
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for ListenerValue {}
    unsafe impl aya::Pod for RouteValue {}
    unsafe impl aya::Pod for MaglevTable {}
    unsafe impl aya::Pod for RouteName {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for RouteStats {}
    unsafe impl aya::Pod for ListenerKey6 {}
    unsafe impl aya::Pod for BackendValue6 {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for FlowValue6 {}
}

/// TLS passthrough splice: the `sk_skb` stream verdict program and its maps.
pub mod splice {
    use core::mem::size_of;

    pub const SPLICE_SOCKETS: &str = "SPLICE_SOCKETS";
    pub const SPLICE_PEERS: &str = "SPLICE_PEERS";
    pub const TLS_ROUTE_STATS: &str = "TLS_ROUTE_STATS";
    pub const TLS_ROUTE_NAMES: &str = "TLS_ROUTE_NAMES";

    /// The splice program's maps. Only its own instance uses them: the XDP
    /// instance of the same object shrinks them and does not pin them.
    pub const MAPS: [&str; 4] = [
        SPLICE_SOCKETS,
        SPLICE_PEERS,
        TLS_ROUTE_STATS,
        TLS_ROUTE_NAMES,
    ];
    /// The splice maps pinned under the agent's bpffs directory (counters and
    /// the names of their route ids), so bpftool and `inspect` read them.
    pub const PINNED: [&str; 2] = [TLS_ROUTE_STATS, TLS_ROUTE_NAMES];

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
