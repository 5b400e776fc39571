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
    /// What the backend's TIME_WAIT of this connection will compare a new
    /// SYN on its tuple against, taken from the client's FIN: its TCP
    /// timestamp value (`FLOW_MARK_TSVAL`) or, from a client that sends no
    /// timestamps, the sequence number after it (`FLOW_MARK_SEQ`, the
    /// TIME_WAIT's `rcv_nxt`). See `time_wait_accepts`. (Padding before:
    /// zero, and neither flag, in the flows of older programs.)
    pub time_wait_mark: u32,
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
/// `time_wait_mark` holds the client's last TCP timestamp value.
pub const FLOW_MARK_TSVAL: u32 = 32;
/// `time_wait_mark` holds the sequence number after the client's FIN.
pub const FLOW_MARK_SEQ: u32 = 64;
/// Both ends sent a FIN: the connection is over (bar the last ACK), and a new
/// flow may take its NAT port at once instead of after the closing timeout.
pub const FLOW_FINISHED: u32 = FLOW_FIN_ORIGINAL | FLOW_FIN_REPLY;
/// What a SYN reusing a closed flow's 5-tuple (a new connection) clears.
pub const FLOW_CLOSE_STATE: u32 = FLOW_CLOSING
    | FLOW_FIN_ORIGINAL
    | FLOW_FIN_REPLY
    | FLOW_BACKEND_CLOSED_FIRST
    | FLOW_MARK_TSVAL
    | FLOW_MARK_SEQ;

/// How long a Linux backend holds a connection it closed first in TIME_WAIT
/// (`TCP_TIMEWAIT_LEN`).
pub const BACKEND_TIME_WAIT_NS: u64 = 60 * 1_000_000_000;

/// Whether a Linux backend holding the TIME_WAIT of a finished flow (its
/// `flags` and `time_wait_mark`) accepts a SYN with sequence number
/// `syn_seq` and TCP timestamp value `syn_tsval` (None: no timestamp option)
/// on the same tuple as a new connection, as `tcp_timewait_state_process`
/// decides: a SYN whose timestamp is older than the TIME_WAIT's last one
/// (`ts_recent`) is rejected (PAWS); else it is accepted if its timestamp is
/// newer, or its sequence number is after the TIME_WAIT's `rcv_nxt`. A flow
/// with no mark (closed before this was recorded) gives no answer: `false`.
#[inline(always)]
pub fn time_wait_accepts(
    flags: u32,
    time_wait_mark: u32,
    syn_seq: u32,
    syn_tsval: Option<u32>,
) -> bool {
    if flags & FLOW_MARK_TSVAL != 0 {
        // The timestamp alone decides; an equal one would need the sequence
        // number, whose mark is not kept.
        matches!(syn_tsval, Some(tsval) if (tsval.wrapping_sub(time_wait_mark) as i32) > 0)
    } else if flags & FLOW_MARK_SEQ != 0 {
        // The old connection carried no timestamps: the TIME_WAIT checks none.
        (syn_seq.wrapping_sub(time_wait_mark) as i32) > 0
    } else {
        false
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_wait_with_a_timestamp_accepts_only_newer_timestamps() {
        let flags = FLOW_FINISHED | FLOW_BACKEND_CLOSED_FIRST | FLOW_MARK_TSVAL;
        let mark = 1_000;
        assert!(time_wait_accepts(flags, mark, 0, Some(1_001)));
        assert!(!time_wait_accepts(flags, mark, 0, Some(999)), "PAWS");
        assert!(!time_wait_accepts(flags, mark, 0, Some(1_000)), "equal");
        assert!(!time_wait_accepts(flags, mark, 5_000, None), "no timestamp");
        // Serial-number arithmetic across the wrap.
        assert!(time_wait_accepts(flags, u32::MAX - 5, 0, Some(3)));
        assert!(!time_wait_accepts(flags, 3, 0, Some(u32::MAX - 5)));
    }

    #[test]
    fn a_time_wait_without_timestamps_accepts_a_sequence_number_after_its_own() {
        let flags = FLOW_FINISHED | FLOW_BACKEND_CLOSED_FIRST | FLOW_MARK_SEQ;
        assert!(time_wait_accepts(flags, 7_000, 7_001, None));
        assert!(
            time_wait_accepts(flags, 7_000, 7_001, Some(1)),
            "its timestamp is not checked"
        );
        assert!(!time_wait_accepts(flags, 7_000, 7_000, Some(u32::MAX)));
        assert!(!time_wait_accepts(flags, 7_000, 6_999, None));
        assert!(time_wait_accepts(flags, u32::MAX, 1, None), "wraps");
    }

    #[test]
    fn a_flow_without_a_mark_accepts_nothing() {
        let flags = FLOW_FINISHED | FLOW_BACKEND_CLOSED_FIRST;
        assert!(!time_wait_accepts(flags, 0, 1, Some(1)));
    }
}
