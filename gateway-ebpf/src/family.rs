//! What differs between IPv4 and IPv6 forwarding: the IP header, the maps and
//! the FIB query. `forward` is generic over `Family`, so each family gets its
//! own copy of the code with constant offsets, and IPv4 pays nothing for IPv6.

use aya_ebpf::{bindings::bpf_fib_lookup as FibParams, programs::XdpContext};
use gateway_common::{
    Addr6, Address, BackendOf, FlowKeyOf, FlowValueOf, ListenerKeyOf, MAX_BACKENDS_PER_ROUTE,
    MAX_TABLES, PROTO_TCP, PROTO_UDP, PacketEvent,
};

use crate::{
    csum,
    forward::{NatProbe, Syn, claim_nat_port4, claim_nat_port6, claim_seq_mode},
    icmp, maps,
    packet::*,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

pub trait Family {
    type Addr: Address + crate::debug_log::LogAddress + crate::next_hop::NextHopCache;
    /// The IP header's length (IPv4 without options).
    const HDR_LEN: usize;

    /// Checks the IP header at `L3` and returns the protocol after it when
    /// the program may own the packet; `Err` passes it untouched.
    fn l4_proto<const L3: usize>(ctx: &impl Packet) -> Result<u8, PacketEvent>;
    fn src<const L3: usize>(ctx: &impl Packet) -> Option<Self::Addr>;
    fn dst<const L3: usize>(ctx: &impl Packet) -> Option<Self::Addr>;

    fn listener(key: &ListenerKeyOf<Self::Addr>) -> Option<u32>;
    /// The backend at `index` of the `BACKENDS` layout.
    fn backend(index: u32) -> Option<BackendOf<Self::Addr>>;
    fn flow(key: &FlowKeyOf<Self::Addr>) -> Option<*mut FlowValueOf<Self::Addr>>;
    fn insert_flow(
        key: &FlowKeyOf<Self::Addr>,
        value: &FlowValueOf<Self::Addr>,
        flags: u32,
    ) -> bool;
    fn remove_flow(key: &FlowKeyOf<Self::Addr>);
    /// This CPU's slot of the family's NAT-probe scratch map.
    fn nat_probe() -> Option<*mut NatProbe<Self::Addr>>;
    /// `forward`'s NAT-port claim, by this family's global function.
    fn claim(
        reply_key: &FlowKeyOf<Self::Addr>,
        reply: &FlowValueOf<Self::Addr>,
        syn: &Syn,
        now: u64,
        mode: u32,
    ) -> u32;

    /// Writes the flow's addresses into the IP header (and its checksum, if
    /// the family has one).
    fn rewrite_addresses<const L3: usize>(
        ctx: &impl Packet,
        key: &FlowKeyOf<Self::Addr>,
        flow: &FlowValueOf<Self::Addr>,
    ) -> Option<()>;
    /// The packet's length from its IP header (what the FIB checks against
    /// the egress MTU).
    fn tot_len<const L3: usize>(ctx: &impl Packet) -> u16;
    /// The family and addresses of the FIB query for a rewritten packet.
    fn fib_query(params: &mut FibParams, flow: &FlowValueOf<Self::Addr>);
    /// A rewritten packet too big for the egress link's `mtu`: `Some(action)`
    /// when the program answers it itself, `None` to let the kernel have it.
    fn too_big<const L3: usize>(
        ctx: &XdpContext,
        key: &FlowKeyOf<Self::Addr>,
        mtu: u16,
    ) -> Option<u32>;
}

pub struct V4;

impl Family for V4 {
    type Addr = u32;
    const HDR_LEN: usize = IPV4_HDR_LEN;

    #[inline(always)]
    fn l4_proto<const L3: usize>(ctx: &impl Packet) -> Result<u8, PacketEvent> {
        let ver_ihl = read::<u8>(ctx, L3).ok_or(PacketEvent::PassedNotOurs)?;
        if ver_ihl >> 4 != 4 {
            return Err(PacketEvent::PassedNotOurs);
        }
        let proto = read::<u8>(ctx, L3 + IPV4_PROTO).ok_or(PacketEvent::PassedNotOurs)?;
        if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP {
            return Err(PacketEvent::PassedNotOurs);
        }
        let frag =
            u16::from_be(read::<u16>(ctx, L3 + IPV4_FRAG_OFF).ok_or(PacketEvent::PassedNotOurs)?);
        // Options shift the L4 header; fragments after the first have no ports.
        if ver_ihl & 0x0f != 5 || frag & 0x3fff != 0 {
            return Err(PacketEvent::PassedFragmentOrOptions);
        }
        Ok(proto)
    }

    #[inline(always)]
    fn src<const L3: usize>(ctx: &impl Packet) -> Option<u32> {
        load_u32(ctx, L3 + IPV4_SRC)
    }

    #[inline(always)]
    fn dst<const L3: usize>(ctx: &impl Packet) -> Option<u32> {
        load_u32(ctx, L3 + IPV4_DST)
    }

    #[inline(always)]
    fn listener(key: &ListenerKeyOf<u32>) -> Option<u32> {
        // SAFETY: plain copy of a u32 field.
        maps::LISTENERS
            .get_ptr(*key)
            .map(|l| unsafe { (*l).route_id })
    }

    #[inline(always)]
    fn backend(index: u32) -> Option<BackendOf<u32>> {
        // SAFETY: copied out at once.
        maps::BACKENDS.get_ptr(index).map(|b| unsafe { *b })
    }

    #[inline(always)]
    fn flow(key: &FlowKeyOf<u32>) -> Option<*mut FlowValueOf<u32>> {
        maps::FLOWS.get_ptr_mut(key)
    }

    #[inline(always)]
    fn insert_flow(key: &FlowKeyOf<u32>, value: &FlowValueOf<u32>, flags: u32) -> bool {
        maps::FLOWS.insert(key, value, u64::from(flags)).is_ok()
    }

    #[inline(always)]
    fn remove_flow(key: &FlowKeyOf<u32>) {
        let _ = maps::FLOWS.remove(key);
    }

    #[inline(always)]
    fn nat_probe() -> Option<*mut NatProbe<u32>> {
        maps::NAT_PROBES.get_ptr_mut(0)
    }

    #[inline(always)]
    fn claim(
        reply_key: &FlowKeyOf<u32>,
        reply: &FlowValueOf<u32>,
        syn: &Syn,
        now: u64,
        mode: u32,
    ) -> u32 {
        claim_nat_port4(reply_key, reply, now, claim_seq_mode(syn, mode), syn.tsval)
    }

    #[inline(always)]
    fn rewrite_addresses<const L3: usize>(
        ctx: &impl Packet,
        key: &FlowKeyOf<u32>,
        flow: &FlowValueOf<u32>,
    ) -> Option<()> {
        let ip_csum_off = L3 + IPV4_CSUM;
        let mut ip_csum = load_u16(ctx, ip_csum_off)?;
        ip_csum = csum::replace_u32(ip_csum, key.src_addr_be, flow.new_src_addr_be);
        ip_csum = csum::replace_u32(ip_csum, key.dst_addr_be, flow.new_dst_addr_be);
        store_u16(ctx, ip_csum_off, ip_csum)?;
        // Source and destination are adjacent.
        store_u32s(
            ctx,
            L3 + IPV4_SRC,
            [flow.new_src_addr_be, flow.new_dst_addr_be],
        )
    }

    #[inline(always)]
    fn tot_len<const L3: usize>(ctx: &impl Packet) -> u16 {
        read::<u16>(ctx, L3 + IPV4_TOT_LEN).map_or(0, u16::from_be)
    }

    #[inline(always)]
    fn fib_query(params: &mut FibParams, flow: &FlowValueOf<u32>) {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = flow.new_src_addr_be;
        params.__bindgen_anon_4.ipv4_dst = flow.new_dst_addr_be;
    }

    #[inline(always)]
    fn too_big<const L3: usize>(ctx: &XdpContext, key: &FlowKeyOf<u32>, mtu: u16) -> Option<u32> {
        let frag = read::<u16>(ctx, L3 + IPV4_FRAG_OFF).map_or(0, u16::from_be);
        if frag & IPV4_DONT_FRAGMENT != 0 {
            return Some(icmp::frag_needed(ctx, key, mtu));
        }
        // The kernel may fragment it.
        None
    }
}

pub struct V6;

impl Family for V6 {
    type Addr = Addr6;
    const HDR_LEN: usize = IPV6_HDR_LEN;

    /// TCP or UDP straight after the fixed header; anything else (ICMPv6 and
    /// neighbour discovery, extension headers, fragments) is the kernel's.
    #[inline(always)]
    fn l4_proto<const L3: usize>(ctx: &impl Packet) -> Result<u8, PacketEvent> {
        let version = read::<u8>(ctx, L3).ok_or(PacketEvent::PassedNotOurs)?;
        if version >> 4 != 6 {
            return Err(PacketEvent::PassedNotOurs);
        }
        let next = read::<u8>(ctx, L3 + IPV6_NEXT_HEADER).ok_or(PacketEvent::PassedNotOurs)?;
        match next {
            PROTO_TCP => Ok(next),
            PROTO_UDP => {
                // A zero UDP checksum is invalid over IPv6 (RFC 8200): the
                // kernel drops it, and it cannot be updated incrementally.
                let udp_csum = read::<u16>(ctx, L3 + IPV6_HDR_LEN + UDP_CSUM)
                    .ok_or(PacketEvent::PassedNotOurs)?;
                if udp_csum == 0 {
                    return Err(PacketEvent::PassedNotOurs);
                }
                Ok(next)
            }
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_DEST_OPTIONS => {
                Err(PacketEvent::PassedFragmentOrOptions)
            }
            _ => Err(PacketEvent::PassedNotOurs),
        }
    }

    #[inline(always)]
    fn src<const L3: usize>(ctx: &impl Packet) -> Option<Addr6> {
        read_addr6(ctx, L3 + IPV6_SRC)
    }

    #[inline(always)]
    fn dst<const L3: usize>(ctx: &impl Packet) -> Option<Addr6> {
        read_addr6(ctx, L3 + IPV6_DST)
    }

    #[inline(always)]
    fn listener(key: &ListenerKeyOf<Addr6>) -> Option<u32> {
        // SAFETY: plain copy of a u32 field.
        maps::LISTENERS6
            .get_ptr(*key)
            .map(|l| unsafe { (*l).route_id })
    }

    #[inline(always)]
    fn backend(index: u32) -> Option<BackendOf<Addr6>> {
        if index >= MAX_TABLES * MAX_BACKENDS_PER_ROUTE {
            return None;
        }
        // SAFETY: copied out at once.
        maps::BACKENDS6.get_ptr(index).map(|b| unsafe { *b })
    }

    #[inline(always)]
    fn flow(key: &FlowKeyOf<Addr6>) -> Option<*mut FlowValueOf<Addr6>> {
        maps::FLOWS6.get_ptr_mut(key)
    }

    #[inline(always)]
    fn insert_flow(key: &FlowKeyOf<Addr6>, value: &FlowValueOf<Addr6>, flags: u32) -> bool {
        maps::FLOWS6.insert(key, value, u64::from(flags)).is_ok()
    }

    #[inline(always)]
    fn remove_flow(key: &FlowKeyOf<Addr6>) {
        let _ = maps::FLOWS6.remove(key);
    }

    #[inline(always)]
    fn nat_probe() -> Option<*mut NatProbe<Addr6>> {
        maps::NAT_PROBES6.get_ptr_mut(0)
    }

    #[inline(always)]
    fn claim(
        reply_key: &FlowKeyOf<Addr6>,
        reply: &FlowValueOf<Addr6>,
        syn: &Syn,
        now: u64,
        mode: u32,
    ) -> u32 {
        claim_nat_port6(reply_key, reply, now, claim_seq_mode(syn, mode), syn.tsval)
    }

    #[inline(always)]
    fn rewrite_addresses<const L3: usize>(
        ctx: &impl Packet,
        _key: &FlowKeyOf<Addr6>,
        flow: &FlowValueOf<Addr6>,
    ) -> Option<()> {
        // No header checksum: the L4 checksum's pseudo-header covers the addresses.
        let (src, dst) = (&flow.new_src_addr_be, &flow.new_dst_addr_be);
        // Source and destination are adjacent.
        store_u32s(
            ctx,
            L3 + IPV6_SRC,
            [
                src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3],
            ],
        )
    }

    #[inline(always)]
    fn tot_len<const L3: usize>(ctx: &impl Packet) -> u16 {
        read::<u16>(ctx, L3 + IPV6_PAYLOAD_LEN).map_or(0, |len| {
            u16::from_be(len).saturating_add(IPV6_HDR_LEN as u16)
        })
    }

    #[inline(always)]
    fn fib_query(params: &mut FibParams, flow: &FlowValueOf<Addr6>) {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = flow.new_src_addr_be;
        params.__bindgen_anon_4.ipv6_dst = flow.new_dst_addr_be;
    }

    /// IPv6 routers never fragment: always answered with "packet too big".
    #[inline(always)]
    fn too_big<const L3: usize>(ctx: &XdpContext, key: &FlowKeyOf<Addr6>, mtu: u16) -> Option<u32> {
        Some(icmp::packet_too_big(ctx, key, mtu))
    }
}

/// An IPv6 address read word by word: read whole, its 16 unaligned bytes
/// were copied with a call to a byte-by-byte `memmove` subprogram.
#[inline(always)]
fn read_addr6(ctx: &impl Packet, at: usize) -> Option<Addr6> {
    load_u32s(ctx, at)
}
