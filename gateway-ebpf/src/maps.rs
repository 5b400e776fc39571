//! The maps the agent programs and reads. Names and types come from gateway-common.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use gateway_common::{
    Addr6, BackendValue, BackendValue6, FlowKey, FlowKey6, FlowValue, FlowValue6, ListenerKey,
    ListenerKey6, ListenerValue, MAX_BACKENDS_PER_ROUTE, MAX_BACKENDS6, MAX_FLOWS, MAX_FLOWS6,
    MAX_LISTENERS, MAX_ROUTES, MAX_TABLES, MaglevTable, PACKET_EVENT_COUNT, PacketEvent, RouteName,
    RouteStats, RouteValue,
};

use crate::forward::NatProbe;

#[btf_map]
pub static LISTENERS: HashMap<ListenerKey, ListenerValue, { MAX_LISTENERS as usize }> =
    HashMap::new();

#[btf_map]
pub static ROUTES: HashMap<u32, RouteValue, { MAX_ROUTES as usize }> = HashMap::new();

#[btf_map]
pub static MAGLEV_TABLES: Array<MaglevTable, { MAX_TABLES as usize }> = Array::new();

#[btf_map]
pub static BACKENDS: Array<BackendValue, { (MAX_TABLES * MAX_BACKENDS_PER_ROUTE) as usize }> =
    Array::new();

/// Written and read by the agent only (route id → name hash); declared here so
/// that it is created, pinned and adopted with the rest of the state.
#[btf_map]
pub static ROUTE_NAMES: Array<RouteName, { MAX_ROUTES as usize }> = Array::new();

#[btf_map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue, { MAX_FLOWS as usize }> = LruHashMap::new();

#[btf_map]
pub static LISTENERS6: HashMap<ListenerKey6, ListenerValue, { MAX_LISTENERS as usize }> =
    HashMap::new();

/// Keyed by the index the same backend would have in `BACKENDS`.
#[btf_map]
pub static BACKENDS6: HashMap<u32, BackendValue6, { MAX_BACKENDS6 as usize }> = HashMap::new();

#[btf_map]
pub static FLOWS6: LruHashMap<FlowKey6, FlowValue6, { MAX_FLOWS6 as usize }> = LruHashMap::new();

#[btf_map]
pub static ROUTE_STATS: PerCpuArray<RouteStats, { MAX_ROUTES as usize }> = PerCpuArray::new();

/// Scratch: a new flow's NAT-port probe (see `forward::NatProbe`).
#[btf_map]
pub static NAT_PROBES: PerCpuArray<NatProbe<u32>, 1> = PerCpuArray::new();

#[btf_map]
pub static NAT_PROBES6: PerCpuArray<NatProbe<Addr6>, 1> = PerCpuArray::new();

#[btf_map]
pub static XDP_STATS: PerCpuArray<u64, { PACKET_EVENT_COUNT as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn count_event(event: PacketEvent) {
    if let Some(counter) = XDP_STATS.get_ptr_mut(event as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn count_route(route_id: u32, bytes: u64, new_flow: bool, dropped: bool) {
    if let Some(stats) = ROUTE_STATS.get_ptr_mut(route_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        let stats = unsafe { &mut *stats };
        if dropped {
            stats.drops += 1;
            return;
        }
        stats.packets += 1;
        stats.bytes += bytes;
        if new_flow {
            stats.new_flows += 1;
        }
    }
}
