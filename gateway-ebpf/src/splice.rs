//! TLS passthrough in the kernel: once the agent has chosen a backend by SNI,
//! it puts both sockets in `SPLICE_SOCKETS` and this stream verdict program
//! moves every byte arriving on one to the other's send queue.

use aya_ebpf::{
    bindings::sk_action,
    btf_maps::{Array, HashMap, PerCpuArray, SockHash},
    macros::btf_map,
    programs::SkBuffContext,
};
use gateway_common::RouteName;
use gateway_common::splice::{
    MAX_SPLICED_CONNECTIONS, MAX_TLS_ROUTES, SPLICE_TO_BACKEND, SpliceKey, SpliceValue,
    TlsRouteStats,
};

const MAX_SOCKETS: usize = 2 * MAX_SPLICED_CONNECTIONS as usize;

/// Under each socket's own key: its peer.
#[btf_map]
pub static SPLICE_SOCKETS: SockHash<SpliceKey, MAX_SOCKETS> = SockHash::new();

/// Under each socket's own key: its route and direction (for counters).
#[btf_map]
pub static SPLICE_PEERS: HashMap<SpliceKey, SpliceValue, MAX_SOCKETS> = HashMap::new();

/// Per TLS route id: bytes spliced each way (pinned, so bpftool reads them).
#[btf_map]
pub static TLS_ROUTE_STATS: PerCpuArray<TlsRouteStats, { MAX_TLS_ROUTES as usize }> =
    PerCpuArray::new();

/// Written and read by the agent only (TLS route id → name hash); declared
/// here so that it is created and pinned next to the counters it names.
#[btf_map]
pub static TLS_ROUTE_NAMES: Array<RouteName, { MAX_TLS_ROUTES as usize }> = Array::new();

#[inline(always)]
pub fn verdict(ctx: &SkBuffContext) -> u32 {
    let mut key = SpliceKey {
        local_addr_be: ctx.skb.local_ipv4(),
        remote_addr_be: ctx.skb.remote_ipv4(),
        local_port: ctx.skb.local_port(),
        remote_port_be: remote_port_be(ctx.skb.remote_port()),
    };
    let Some(value) = SPLICE_PEERS.get_ptr_mut(key) else {
        // Not (or no longer) spliced: leave the bytes to the socket's owner.
        return sk_action::SK_PASS;
    };
    let len = u64::from(ctx.len());
    // SAFETY: a map value pointer, valid while the program runs; one socket's
    // verdicts run one at a time (under its lock), so the add does not race.
    let value = unsafe {
        (*value).redirected += len;
        *value
    };
    if let Some(stats) = TLS_ROUTE_STATS.get_ptr_mut(value.route_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        let stats = unsafe { &mut *stats };
        if value.direction == SPLICE_TO_BACKEND {
            stats.bytes_to_backend += len;
        } else {
            stats.bytes_to_client += len;
        }
    }
    // SK_PASS with the skb queued on the peer's egress, or SK_DROP when the
    // peer has closed (the kernel removed it from the map).
    SPLICE_SOCKETS.redirect_skb(ctx, &mut key, 0) as u32
}

/// `__sk_buff.remote_port` holds the network-order port in the upper 16 bits
/// on some kernels and the lower 16 on others: keys use the lower.
#[inline(always)]
fn remote_port_be(raw: u32) -> u32 {
    if raw & 0xffff == 0 { raw >> 16 } else { raw }
}
