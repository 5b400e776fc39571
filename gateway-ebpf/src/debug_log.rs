//! aya-log debug messages, on rare paths only (a new flow, a refused one).
//! Off unless the agent runs with `--ebpf-log`: the loader sets aya-log's
//! read-only `AYA_LOG_LEVEL` global to 0, a constant to the verifier, which
//! then removes the disabled calls, so the programs cost what they cost
//! without them.

use core::net::Ipv4Addr;

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::debug;
use gateway_common::{FlowKey, FlowValue};

fn ip(addr_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(addr_be))
}

/// A flow opened on `route_id`: client, listener and the chosen backend.
#[inline(always)]
pub fn new_flow(ctx: &XdpContext, key: &FlowKey, flow: &FlowValue) {
    debug!(
        ctx,
        "new flow: route {} proto {} {:i}:{} -> {:i}:{} to backend {:i}:{}",
        flow.route_id,
        key.proto,
        ip(key.src_addr_be),
        u16::from_be(key.src_port_be),
        ip(key.dst_addr_be),
        u16::from_be(key.dst_port_be),
        ip(flow.new_dst_addr_be),
        u16::from_be(flow.new_dst_port_be)
    );
}

/// A new flow refused on `route_id` (no usable backend, or no free NAT port).
#[inline(always)]
pub fn flow_dropped(ctx: &XdpContext, key: &FlowKey, route_id: u32) {
    debug!(
        ctx,
        "flow dropped: route {} proto {} {:i}:{} -> {:i}:{} (no backend or no free NAT port)",
        route_id,
        key.proto,
        ip(key.src_addr_be),
        u16::from_be(key.src_port_be),
        ip(key.dst_addr_be),
        u16::from_be(key.dst_port_be)
    );
}
