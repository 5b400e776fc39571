//! aya-log debug messages, on rare paths only (a new flow, a refused one).
//! Off unless the agent runs with `--ebpf-log`: the loader sets aya-log's
//! read-only `AYA_LOG_LEVEL` global to 0, a constant to the verifier, which
//! then removes the disabled code, so the programs cost what they cost
//! without them.
//!
//! The forwarding path (`try_handle`) only notes what happened in a per-CPU
//! slot; `flush` logs it after `try_handle` has returned. A message formatted
//! inside `try_handle` would put its stack on top of the forwarding path's,
//! past the verifier's 512 bytes.

use core::net::{Ipv4Addr, Ipv6Addr};

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
};
use gateway_common::{Addr6, FlowKeyOf, FlowValueOf};

use crate::packet::Packet;

const NOTHING: u32 = 0;
const NEW_FLOW: u32 = 1;
const DROPPED: u32 = 2;

/// What `try_handle` noted for `flush`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Noted<A> {
    what: u32,
    route_id: u32,
    key: FlowKeyOf<A>,
    flow: FlowValueOf<A>,
}

#[btf_map]
static LOG_NOTED4: PerCpuArray<Noted<u32>, 1> = PerCpuArray::new();
#[btf_map]
static LOG_NOTED6: PerCpuArray<Noted<Addr6>, 1> = PerCpuArray::new();

/// Whether `--ebpf-log` is on: a load-time constant the verifier folds.
#[inline(always)]
pub fn enabled() -> bool {
    level_enabled(Level::Debug)
}

/// Notes a new flow for `flush` (nothing when logging is off).
#[inline(always)]
pub fn note_new_flow<A: LogAddress>(key: &FlowKeyOf<A>, flow: &FlowValueOf<A>) {
    if enabled()
        && let Some(noted) = A::noted()
    {
        // SAFETY: this CPU's slot, written and read by this program run only.
        unsafe {
            (*noted).what = NEW_FLOW;
            (*noted).key = *key;
            (*noted).flow = *flow;
        }
    }
}

/// Notes a refused new flow for `flush` (nothing when logging is off).
#[inline(always)]
pub fn note_dropped<A: LogAddress>(key: &FlowKeyOf<A>, route_id: u32) {
    if enabled()
        && let Some(noted) = A::noted()
    {
        // SAFETY: as in `note_new_flow`.
        unsafe {
            (*noted).what = DROPPED;
            (*noted).route_id = route_id;
            (*noted).key = *key;
        }
    }
}

/// Logs what `try_handle` noted, on a stack of its own. Call only when
/// `enabled()`, so that without `--ebpf-log` not even the call remains.
#[inline(never)]
pub fn flush<A: LogAddress>(ctx: &impl Packet) {
    let Some(noted) = A::noted() else {
        return;
    };
    // SAFETY: as in `note_new_flow`.
    let noted = unsafe { &mut *noted };
    match noted.what {
        NEW_FLOW => A::new_flow(ctx, &noted.key, &noted.flow),
        DROPPED => A::flow_dropped(ctx, &noted.key, noted.route_id),
        _ => return,
    }
    noted.what = NOTHING;
}

/// An address family's messages: aya-log formats IPv4 and IPv6 addresses
/// with different types, so each family spells its own calls.
pub trait LogAddress: Copy + Sized {
    /// This CPU's slot for `Noted<Self>`.
    fn noted() -> Option<*mut Noted<Self>>;
    /// A flow opened on its route: client, listener and the chosen backend.
    fn new_flow(ctx: &impl Packet, key: &FlowKeyOf<Self>, flow: &FlowValueOf<Self>);
    /// A new flow refused on `route_id` (no usable backend, or no free NAT port).
    fn flow_dropped(ctx: &impl Packet, key: &FlowKeyOf<Self>, route_id: u32);
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
    fn noted() -> Option<*mut Noted<u32>> {
        LOG_NOTED4.get_ptr_mut(0)
    }

    #[inline(always)]
    fn new_flow(ctx: &impl Packet, key: &FlowKeyOf<u32>, flow: &FlowValueOf<u32>) {
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
    fn flow_dropped(ctx: &impl Packet, key: &FlowKeyOf<u32>, route_id: u32) {
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
    fn noted() -> Option<*mut Noted<Addr6>> {
        LOG_NOTED6.get_ptr_mut(0)
    }

    #[inline(always)]
    fn new_flow(ctx: &impl Packet, key: &FlowKeyOf<Addr6>, flow: &FlowValueOf<Addr6>) {
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
    fn flow_dropped(ctx: &impl Packet, key: &FlowKeyOf<Addr6>, route_id: u32) {
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
