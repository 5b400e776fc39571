//! aya-log debug messages, on rare paths only (a new flow, a refused one).
//! Off unless the agent runs with `--ebpf-log`: the loader sets aya-log's
//! read-only `AYA_LOG_LEVEL` global to 0, a constant to the verifier, which
//! then removes the disabled calls, so the programs cost what they cost
//! without them.

use core::net::{Ipv4Addr, Ipv6Addr};

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::debug;
use gateway_common::{Addr6, FlowKeyOf, FlowValueOf};

/// An address family's messages: aya-log formats IPv4 and IPv6 addresses
/// with different types, so each family spells its own calls.
pub trait LogAddress: Sized {
    /// A flow opened on its route: client, listener and the chosen backend.
    fn new_flow(ctx: &XdpContext, key: &FlowKeyOf<Self>, flow: &FlowValueOf<Self>);
    /// A new flow refused on `route_id` (no usable backend, or no free NAT port).
    fn flow_dropped(ctx: &XdpContext, key: &FlowKeyOf<Self>, route_id: u32);
}

fn ip4(addr_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(addr_be))
}

fn ip6(words_be: Addr6) -> Ipv6Addr {
    let mut bytes = [0u8; 16];
    for (i, word) in words_be.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(bytes)
}

impl LogAddress for u32 {
    #[inline(always)]
    fn new_flow(ctx: &XdpContext, key: &FlowKeyOf<u32>, flow: &FlowValueOf<u32>) {
        debug!(
            ctx,
            "new flow: route {} proto {} {:i}:{} -> {:i}:{} to backend {:i}:{}",
            flow.route_id,
            key.proto,
            ip4(key.src_addr_be),
            u16::from_be(key.src_port_be),
            ip4(key.dst_addr_be),
            u16::from_be(key.dst_port_be),
            ip4(flow.new_dst_addr_be),
            u16::from_be(flow.new_dst_port_be)
        );
    }

    #[inline(always)]
    fn flow_dropped(ctx: &XdpContext, key: &FlowKeyOf<u32>, route_id: u32) {
        debug!(
            ctx,
            "flow dropped: route {} proto {} {:i}:{} -> {:i}:{} (no backend or no free NAT port)",
            route_id,
            key.proto,
            ip4(key.src_addr_be),
            u16::from_be(key.src_port_be),
            ip4(key.dst_addr_be),
            u16::from_be(key.dst_port_be)
        );
    }
}

impl LogAddress for Addr6 {
    #[inline(always)]
    fn new_flow(ctx: &XdpContext, key: &FlowKeyOf<Addr6>, flow: &FlowValueOf<Addr6>) {
        debug!(
            ctx,
            "new flow: route {} proto {} [{:i}]:{} -> [{:i}]:{} to backend [{:i}]:{}",
            flow.route_id,
            key.proto,
            ip6(key.src_addr_be),
            u16::from_be(key.src_port_be),
            ip6(key.dst_addr_be),
            u16::from_be(key.dst_port_be),
            ip6(flow.new_dst_addr_be),
            u16::from_be(flow.new_dst_port_be)
        );
    }

    #[inline(always)]
    fn flow_dropped(ctx: &XdpContext, key: &FlowKeyOf<Addr6>, route_id: u32) {
        debug!(
            ctx,
            "flow dropped: route {} proto {} [{:i}]:{} -> [{:i}]:{} (no backend or no free NAT port)",
            route_id,
            key.proto,
            ip6(key.src_addr_be),
            u16::from_be(key.src_port_be),
            ip6(key.dst_addr_be),
            u16::from_be(key.dst_port_be)
        );
    }
}
