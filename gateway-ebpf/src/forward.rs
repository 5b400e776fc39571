//! L4 forwarding: match a tracked flow or a listener, pick a backend, rewrite
//! addresses and ports (DNAT + SNAT), and send the packet on with a FIB lookup.
//! IPv4 and IPv6 share this code through `Family`.
//!
//! What this program does not own (other EtherTypes, IPv4 fragments and
//! options, IPv6 extension headers and ICMPv6, other protocols, non-listener
//! traffic) is passed to the kernel untouched.

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST,
        bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
};
use gateway_common::{
    Addr6, Address, BACKEND_TIME_WAIT_NS, BackendOf, FLOW_BACKEND_CLOSED_FIRST, FLOW_CLOSE_STATE,
    FLOW_CLOSING, FLOW_FIN_ORIGINAL, FLOW_FIN_REPLY, FLOW_FINISHED, FLOW_MARK_SEQ, FLOW_MARK_TSVAL,
    FLOW_ORIGINAL, FLOW_TOUCH_NS, FlowKeyOf, FlowValueOf, ListenerKeyOf, MAGLEV_TABLE_SIZE,
    MAX_BACKENDS_PER_ROUTE, MAX_TABLES, NAT_PORT_COUNT, NAT_PORT_MIN, NAT_PORT_PROBES, PROTO_TCP,
    PROTO_UDP, PacketEvent, flow_hash, time_wait_accepts,
};

use crate::{
    clock, config, debug_log,
    family::{Family, V4, V6},
    icmp, maps, next_hop,
    packet::*,
};

#[inline(always)]
pub fn handle<C: Packet>(ctx: &C) -> u32 {
    let action = match dispatch(ctx) {
        Ok(action) => action,
        Err(event) => {
            maps::count_event(event);
            C::PASS
        }
    };
    // With `--ebpf-log`: what the forwarding path noted, logged outside its
    // stack frame.
    if debug_log::enabled() {
        debug_log::flush::<u32>(ctx);
        debug_log::flush::<gateway_common::Addr6>(ctx);
    }
    action
}

/// IPv4 or IPv6 straight after the Ethernet header, or after one VLAN tag.
/// Each case is its own copy of the code with constant offsets, which the
/// verifier follows more easily than a variable one.
#[inline(always)]
fn dispatch<C: Packet>(ctx: &C) -> Result<u32, PacketEvent> {
    let ether_type = u16::from_be(read::<u16>(ctx, 12).ok_or(PacketEvent::PassedNotOurs)?);
    match ether_type {
        ETH_P_IPV4 => Ok(handle_copy::<ETH_HDR_LEN, V4, C>(ctx)),
        ETH_P_IPV6 => handle_v6::<ETH_HDR_LEN, C>(ctx),
        ETH_P_8021Q | ETH_P_8021AD => {
            let inner =
                u16::from_be(read::<u16>(ctx, ETH_HDR_LEN + 2).ok_or(PacketEvent::PassedNotOurs)?);
            match inner {
                ETH_P_IPV4 => Ok(handle_copy::<{ ETH_HDR_LEN + VLAN_HDR_LEN }, V4, C>(ctx)),
                ETH_P_IPV6 => handle_v6::<{ ETH_HDR_LEN + VLAN_HDR_LEN }, C>(ctx),
                _ => Err(PacketEvent::PassedNotOurs),
            }
        }
        _ => Err(PacketEvent::PassedNotOurs),
    }
}

/// ICMPv6 goes its own way, so that the forwarding path's stack and the
/// error translation's are never on the stack together.
#[inline(always)]
fn handle_v6<const L3: usize, C: Packet>(ctx: &C) -> Result<u32, PacketEvent> {
    if read::<u8>(ctx, L3 + IPV6_NEXT_HEADER) == Some(PROTO_ICMPV6) {
        return icmp::translate_error6::<L3, C>(ctx);
    }
    Ok(handle_copy::<L3, V6, C>(ctx))
}

/// One copy of the forwarding path as its own BPF function: their stacks
/// together would pass the 512-byte limit, one at a time they do not. It
/// returns the action as a scalar: a `Result` would come back through a
/// pointer into the caller's stack, which leaves a stack pointer in r0 at
/// exit, and the verifier refuses that.
#[inline(never)]
fn handle_copy<const L3: usize, F: Family, C: Packet>(ctx: &C) -> u32 {
    match try_handle::<L3, F, C>(ctx) {
        Ok(action) => action,
        Err(event) => {
            maps::count_event(event);
            C::PASS
        }
    }
}

/// `Err` means "not ours: pass to the kernel untouched", with the reason counted.
/// `L3`: where the IP header starts.
#[inline(always)]
fn try_handle<const L3: usize, F: Family, C: Packet>(ctx: &C) -> Result<u32, PacketEvent> {
    let proto = F::l4_proto::<L3>(ctx)?;
    if proto == PROTO_ICMP {
        return icmp::translate_error::<L3, C>(ctx);
    }
    let l4 = L3 + F::HDR_LEN;
    let l4_len = if proto == PROTO_TCP {
        TCP_HDR_MIN
    } else {
        UDP_HDR_LEN
    };
    if ctx.data() + l4 + l4_len > ctx.data_end() {
        return Err(PacketEvent::PassedNotOurs);
    }

    let key = FlowKeyOf::<F::Addr> {
        src_addr_be: F::src::<L3>(ctx).ok_or(PacketEvent::PassedNotOurs)?,
        dst_addr_be: F::dst::<L3>(ctx).ok_or(PacketEvent::PassedNotOurs)?,
        src_port_be: read(ctx, l4 + L4_SRC_PORT).ok_or(PacketEvent::PassedNotOurs)?,
        dst_port_be: read(ctx, l4 + L4_DST_PORT).ok_or(PacketEvent::PassedNotOurs)?,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    let packet_len = ctx.len();

    // A tracked flow, in either direction: rewrite as recorded.
    if let Some(entry) = F::flow(&key) {
        // Read only for packets the program owns: foreign traffic pays no clock.
        let now = clock::now_ns();
        // SAFETY: the value is copied out at once; LRU entries are not freed under us.
        let flow = unsafe { *entry };
        if expired(proto, &flow, now) {
            // Handled below as a packet without a flow. The reply entry of
            // a flow whose backend still holds its TIME_WAIT stays: it is
            // what a new flow probing its NAT port learns the TIME_WAIT
            // from (the client's next connection from this port most of
            // all, which probes that port first).
            if flow.flags & FLOW_ORIGINAL != 0 && in_backend_time_wait(&flow, now) {
                F::remove_flow(&key);
            } else {
                remove_pair::<F>(&key, &flow);
            }
            maps::count_event(PacketEvent::FlowExpired);
        } else {
            let tcp_flags = if proto == PROTO_TCP {
                read::<u8>(ctx, l4 + TCP_FLAGS).ok_or(PacketEvent::PassedNotOurs)?
            } else {
                0
            };
            maps::count_route(flow.route_id, packet_len, false, false);
            rewrite::<L3, F, C>(ctx, &key, &flow).ok_or(PacketEvent::PassedNotOurs)?;
            if tcp_flags & TCP_FLAG_RST != 0 {
                if tcp_flags & TCP_FLAG_ACK == 0 && flow.flags & FLOW_ORIGINAL != 0 {
                    // A client in SYN-SENT resets the ACK a backend TIME_WAIT
                    // answered its SYN with (that kills the TIME_WAIT), then
                    // retransmits the SYN: keep the NAT port for it, now clean
                    // (closing: if no SYN comes, the port is free in 10 s).
                    touch::<F>(
                        &key,
                        entry,
                        &flow,
                        now,
                        FLOW_CLOSING,
                        FLOW_BACKEND_CLOSED_FIRST,
                        None,
                    );
                } else {
                    // Both ends are done: free the entries (and the NAT port) now.
                    remove_pair::<F>(&key, &flow);
                }
                maps::count_event(PacketEvent::FlowReset);
            } else if tcp_flags & TCP_FLAG_FIN != 0 {
                if flow.flags & FLOW_ORIGINAL != 0 {
                    // The client's FIN, or a retransmit of it (whose newer
                    // timestamp a TIME_WAIT keeps): what the backend's
                    // TIME_WAIT, if it closed first, will check a new SYN
                    // on this tuple against.
                    let mark = time_wait_mark::<L3, F, C>(ctx, l4);
                    let kind = mark.map_or(0, |(kind, _)| kind);
                    touch::<F>(
                        &key,
                        entry,
                        &flow,
                        now,
                        FLOW_CLOSING | FLOW_FIN_ORIGINAL | kind,
                        FLOW_MARK_TSVAL | FLOW_MARK_SEQ,
                        mark.map(|(_, value)| value),
                    );
                } else if flow.flags & FLOW_FIN_REPLY == 0 {
                    let mut add = FLOW_CLOSING | FLOW_FIN_REPLY;
                    if flow.flags & FLOW_FIN_ORIGINAL == 0 {
                        add |= FLOW_BACKEND_CLOSED_FIRST;
                    }
                    touch::<F>(&key, entry, &flow, now, add, 0, None);
                }
            } else if tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
                && flow.flags & FLOW_CLOSE_STATE != 0
            {
                // The client opens a new connection on the same 5-tuple: it
                // keeps the flow's NAT port (the backend's TIME_WAIT accepts
                // a SYN of the same client connection tuple), and is live again.
                touch::<F>(&key, entry, &flow, now, 0, FLOW_CLOSE_STATE, None);
            } else if now.saturating_sub(flow.last_seen_ns) > FLOW_TOUCH_NS {
                touch::<F>(&key, entry, &flow, now, 0, 0, None);
            }
            return Ok(send::<L3, F, C>(ctx, &key, &flow, now));
        }
    }

    let listener_key = ListenerKeyOf::<F::Addr> {
        addr_be: key.dst_addr_be,
        port_be: key.dst_port_be,
        proto,
        _pad: 0,
    };
    let Some(route_id) = F::listener(&listener_key) else {
        return Err(PacketEvent::PassedNotOurs);
    };
    let syn = if proto == PROTO_TCP {
        let flags = read::<u8>(ctx, l4 + TCP_FLAGS).ok_or(PacketEvent::PassedNotOurs)?;
        // Only a SYN opens a flow; the kernel answers stray segments itself.
        if flags & TCP_FLAG_SYN == 0 || flags & TCP_FLAG_ACK != 0 {
            return Err(PacketEvent::PassedNoFlow);
        }
        Syn {
            seq: u32::from_be(read(ctx, l4 + TCP_SEQ).ok_or(PacketEvent::PassedNotOurs)?),
            tsval: tcp_tsval_word(ctx, l4),
        }
    } else {
        Syn { seq: 0, tsval: 0 }
    };

    let now = clock::now_ns();
    let Some(flow) = open_flow::<F>(&key, &syn, route_id, now) else {
        maps::count_route(route_id, packet_len, false, true);
        debug_log::note_dropped(&key, route_id);
        return Ok(C::DROP);
    };
    maps::count_route(route_id, packet_len, true, false);
    debug_log::note_new_flow(&key, &flow);
    rewrite::<L3, F, C>(ctx, &key, &flow).ok_or(PacketEvent::PassedNotOurs)?;
    Ok(send::<L3, F, C>(ctx, &key, &flow, now))
}

/// What a backend's TIME_WAIT on a reused NAT port checks of a new flow's
/// SYN (none for UDP).
#[derive(Clone, Copy)]
pub struct Syn {
    pub seq: u32,
    /// Its TCP timestamp value, as `tcp_tsval_word` has it (a scalar for
    /// `claim`'s global functions).
    pub tsval: u64,
}

impl Syn {
    #[inline(always)]
    fn tsval(&self) -> Option<u32> {
        tsval_of_word(self.tsval)
    }
}

/// What a backend's TIME_WAIT keeps of the client's FIN whose TCP header is
/// at `l4` (see `FlowValueOf::time_wait_mark`): `(FLOW_MARK_*, value)`, its
/// timestamp value, else the sequence number after it (its data and the FIN).
#[inline(always)]
fn time_wait_mark<const L3: usize, F: Family, C: Packet>(ctx: &C, l4: usize) -> Option<(u32, u32)> {
    if let Some(tsval) = tcp_tsval(ctx, l4) {
        return Some((FLOW_MARK_TSVAL, tsval));
    }
    let seq = u32::from_be(read::<u32>(ctx, l4 + TCP_SEQ)?);
    let header_len = u32::from(read::<u8>(ctx, l4 + TCP_DOFF)? >> 4) * 4;
    let data = u32::from(F::tot_len::<L3>(ctx)).checked_sub(F::HDR_LEN as u32 + header_len)?;
    Some((FLOW_MARK_SEQ, seq.wrapping_add(data).wrapping_add(1)))
}

/// Picks the backend for a new flow and records both directions in `FLOWS`.
#[inline(always)]
fn open_flow<F: Family>(
    key: &FlowKeyOf<F::Addr>,
    syn: &Syn,
    route_id: u32,
    now: u64,
) -> Option<FlowValueOf<F::Addr>> {
    // SAFETY: plain copy of a repr(C) value.
    let route = unsafe { *maps::ROUTES.get_ptr(route_id)? };
    if route.backend_count == 0
        || route.backend_count > MAX_BACKENDS_PER_ROUTE
        || route.table >= MAX_TABLES
    {
        maps::count_event(PacketEvent::DroppedNoBackend);
        return None;
    }
    let hash = flow_hash(key);
    let slot = hash % MAGLEV_TABLE_SIZE;
    // The compiler proves slot < MAGLEV_TABLE_SIZE from the modulo and drops
    // a plain check, but the verifier cannot follow its multiply-shift
    // division: read the value back opaquely and check it where it can see.
    // SAFETY: a read of a local.
    let slot = unsafe { core::ptr::read_volatile(&slot) } as usize;
    if slot >= MAGLEV_TABLE_SIZE as usize {
        return None;
    }
    let table = maps::MAGLEV_TABLES.get_ptr(route.table)?;
    // SAFETY: `slot` < MAGLEV_TABLE_SIZE, the array's length; read of one u16.
    let index = u32::from(unsafe { *(*table).backend.as_ptr().add(slot) });
    if index >= route.backend_count {
        maps::count_event(PacketEvent::DroppedNoBackend);
        return None;
    }
    let Some(backend) = F::backend(route.table * MAX_BACKENDS_PER_ROUTE + index) else {
        maps::count_event(PacketEvent::DroppedNoBackend);
        return None;
    };

    // The reply direction's key must be unique: probe NAT ports until an insert
    // with BPF_NOEXIST succeeds.
    // Built in this CPU's scratch slot, which `claim`'s global function
    // reads through pointers: on this function's stack they would take the
    // IPv6 copies past the 512-byte limit.
    // SAFETY: this CPU's slot, used by this program run only.
    let probe_slot = unsafe { &mut *F::nat_probe()? };
    probe_slot.reply = FlowValueOf::<F::Addr> {
        new_src_addr_be: key.dst_addr_be,
        new_dst_addr_be: key.src_addr_be,
        new_src_port_be: key.dst_port_be,
        new_dst_port_be: key.src_port_be,
        route_id,
        flags: 0,
        time_wait_mark: 0,
        last_seen_ns: now,
    };
    let start = hash >> 8;
    // Odd and below NAT_PORT_COUNT: successive probes land far apart.
    let stride = ((hash >> 3) % (NAT_PORT_COUNT as u32 / 2)) | 1;
    probe_slot.reply_key = FlowKeyOf::<F::Addr> {
        src_addr_be: backend.addr_be,
        dst_addr_be: backend.snat_addr_be,
        src_port_be: backend.port_be,
        dst_port_be: 0,
        proto: key.proto,
        _pad: 0,
        _pad2: 0,
    };
    // A finished flow whose backend holds a TIME_WAIT that would refuse this
    // SYN: its port is the last resort.
    let mut time_wait_port = 0u16;
    let mut probe = 0u32;
    while probe < NAT_PORT_PROBES {
        let port = NAT_PORT_MIN
            + (start.wrapping_add(probe.wrapping_mul(stride)) % NAT_PORT_COUNT as u32) as u16;
        probe_slot.reply_key.dst_port_be = port.to_be();
        let mode = if probe == 0 { CLAIM_INSERT_FIRST } else { 0 };
        match F::claim(&probe_slot.reply_key, &probe_slot.reply, syn, now, mode) {
            CLAIMED => {
                return record_original::<F>(key, &probe_slot.reply_key, route_id, &backend, now);
            }
            CLAIM_TIME_WAIT if time_wait_port == 0 => time_wait_port = port,
            _ => {}
        }
        probe += 1;
    }
    // Every probed port is busy, or held by a backend TIME_WAIT that refuses
    // this SYN (or may: a flow closed without a mark): reusing one costs the
    // client a retry (the backend answers the SYN with an ACK, the client
    // resets it), dropping the SYN costs a 1 s retransmit for sure.
    if time_wait_port != 0 {
        probe_slot.reply_key.dst_port_be = time_wait_port.to_be();
        if F::claim(
            &probe_slot.reply_key,
            &probe_slot.reply,
            syn,
            now,
            CLAIM_TAKE_TIME_WAIT,
        ) == CLAIMED
        {
            return record_original::<F>(key, &probe_slot.reply_key, route_id, &backend, now);
        }
    }
    maps::count_event(PacketEvent::DroppedNatPortsExhausted);
    None
}

/// Writes the client → backend entry of a flow whose reply entry is claimed.
#[inline(always)]
fn record_original<F: Family>(
    key: &FlowKeyOf<F::Addr>,
    reply_key: &FlowKeyOf<F::Addr>,
    route_id: u32,
    backend: &BackendOf<F::Addr>,
    now: u64,
) -> Option<FlowValueOf<F::Addr>> {
    let original = FlowValueOf::<F::Addr> {
        new_src_addr_be: backend.snat_addr_be,
        new_dst_addr_be: backend.addr_be,
        new_src_port_be: reply_key.dst_port_be,
        new_dst_port_be: backend.port_be,
        route_id,
        flags: FLOW_ORIGINAL,
        time_wait_mark: 0,
        last_seen_ns: now,
    };
    if !F::insert_flow(key, &original, BPF_ANY) {
        F::remove_flow(reply_key);
        return None;
    }
    Some(original)
}

/// A new flow's reply entry and its key while NAT ports are probed: a
/// per-CPU scratch slot of `NAT_PROBES` (`NAT_PROBES6`).
#[repr(C)]
pub struct NatProbe<A> {
    pub reply_key: FlowKeyOf<A>,
    pub reply: FlowValueOf<A>,
}

/// `claim`'s answers (a global function returns a scalar): the port is
/// claimed; held by a live flow; held by a finished flow whose backend
/// closed first and still holds a TIME_WAIT that would refuse the SYN.
const CLAIMED: u32 = 0;
const CLAIM_BUSY: u32 = 1;
const CLAIM_TIME_WAIT: u32 = 2;
/// `claim`'s mode bits, above the SYN's sequence number in its
/// global functions' `seq_mode` argument.
const CLAIM_TAKE_TIME_WAIT: u32 = 1;
const CLAIM_INSERT_FIRST: u32 = 2;

/// `claim` for IPv4 as a global BPF function: the verifier checks a global
/// function once, on its own, where the inlined claim was checked at each
/// of the 33 NAT-port probes of each header-layout copy's new-flow path
/// (nine tenths of the XDP program's verification, 0.7 s of its load).
/// Arguments as scalars and pointers to plain structs (a global function
/// takes no more than five, and only those): `seq_mode` is the SYN's
/// sequence number, the mode bits above it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn claim_nat_port4(
    reply_key: *const FlowKeyOf<u32>,
    reply: *const FlowValueOf<u32>,
    now: u64,
    seq_mode: u64,
    tsval: u64,
) -> u32 {
    claim_from_global::<V4>(reply_key, reply, now, seq_mode, tsval)
}

/// `claim_nat_port4` for IPv6.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn claim_nat_port6(
    reply_key: *const FlowKeyOf<Addr6>,
    reply: *const FlowValueOf<Addr6>,
    now: u64,
    seq_mode: u64,
    tsval: u64,
) -> u32 {
    claim_from_global::<V6>(reply_key, reply, now, seq_mode, tsval)
}

/// `claim` with the arguments of its global functions.
#[inline(always)]
fn claim_from_global<F: Family>(
    reply_key: *const FlowKeyOf<F::Addr>,
    reply: *const FlowValueOf<F::Addr>,
    now: u64,
    seq_mode: u64,
    tsval: u64,
) -> u32 {
    // SAFETY: the verifier passes pointers to memory of the pointee's size, or null.
    let (Some(reply_key), Some(reply)) = (unsafe { reply_key.as_ref() }, unsafe { reply.as_ref() })
    else {
        return CLAIM_BUSY;
    };
    let syn = Syn {
        seq: seq_mode as u32,
        tsval,
    };
    claim::<F>(reply_key, reply, &syn, now, (seq_mode >> 32) as u32)
}

/// The `seq_mode` argument of `claim`'s global functions.
#[inline(always)]
pub fn claim_seq_mode(syn: &Syn, mode: u32) -> u64 {
    (u64::from(mode) << 32) | u64::from(syn.seq)
}

/// Inserts the reply direction's entry unless its key (the NAT port) is taken
/// by a live flow. An expired flow there is removed first, and so is a
/// finished one (both FINs seen), unless the backend closed it first and
/// still holds its TIME_WAIT, which would refuse `syn` (then only with
/// `CLAIM_TAKE_TIME_WAIT`). A TIME_WAIT accepts a new connection's SYN on its tuple
/// only if its timestamp (or, without timestamps, its sequence number) is
/// above the old connection's last one, which the flow keeps from the
/// client's FIN; a SYN from another client port carries its own random
/// timestamp offset, so about half of the TIME_WAITs accept a given SYN.
/// An expired flow's TIME_WAIT counts too: it outlives the closing timeout.
///
/// `CLAIM_INSERT_FIRST` (a new flow's first probe, most often a free port): the
/// insert is tried before looking the key up. Later probes look first: an
/// LRU insert refused by BPF_NOEXIST has taken a node from the LRU lists and
/// gives it back, several times the cost of a lookup (measured: with every
/// port taken, a refused new flow's 32 probes took 7.4-10 µs inserting first,
/// 1.9-4 µs like this; `packets`, `new_flows_past_a_backends_nat_ports_...`).
#[inline(always)]
fn claim<F: Family>(
    reply_key: &FlowKeyOf<F::Addr>,
    reply: &FlowValueOf<F::Addr>,
    syn: &Syn,
    now: u64,
    mode: u32,
) -> u32 {
    if mode & CLAIM_INSERT_FIRST != 0 && F::insert_flow(reply_key, reply, BPF_NOEXIST) {
        return CLAIMED;
    }
    if let Some(occupant) = F::flow(reply_key) {
        // SAFETY: copied out at once.
        let occupant = unsafe { *occupant };
        let expired = expired(reply_key.proto, &occupant, now);
        if !expired && occupant.flags & FLOW_FINISHED != FLOW_FINISHED {
            return CLAIM_BUSY;
        }
        if mode & CLAIM_TAKE_TIME_WAIT == 0
            && in_backend_time_wait(&occupant, now)
            && !time_wait_accepts(
                occupant.flags,
                occupant.time_wait_mark,
                syn.seq,
                syn.tsval(),
            )
        {
            return CLAIM_TIME_WAIT;
        }
        if expired {
            maps::count_event(PacketEvent::FlowExpired);
        }
        remove_pair::<F>(reply_key, &occupant);
    }
    if F::insert_flow(reply_key, reply, BPF_NOEXIST) {
        CLAIMED
    } else {
        CLAIM_BUSY
    }
}

/// Whether the backend of `flow` still holds its connection in TIME_WAIT:
/// the flow finished, the backend closed first, less than a TIME_WAIT ago.
#[inline(always)]
fn in_backend_time_wait<A>(flow: &FlowValueOf<A>, now: u64) -> bool {
    flow.flags & (FLOW_FINISHED | FLOW_BACKEND_CLOSED_FIRST)
        == FLOW_FINISHED | FLOW_BACKEND_CLOSED_FIRST
        && now.saturating_sub(flow.last_seen_ns) < BACKEND_TIME_WAIT_NS
}

#[inline(always)]
fn expired<A>(proto: u8, flow: &FlowValueOf<A>, now: u64) -> bool {
    let timeout = if flow.flags & FLOW_CLOSING != 0 {
        config::tcp_closing_ns()
    } else if proto == PROTO_UDP {
        config::udp_idle_ns()
    } else {
        config::tcp_idle_ns()
    };
    // Saturating: another CPU may have stamped the flow with a later reading
    // than this CPU's (`clock` keeps one per tick and CPU, and even without
    // it a reading can be overtaken between the clock and the lookup); a
    // wrapped difference would expire a live flow.
    now.saturating_sub(flow.last_seen_ns) > timeout
}

/// The key of the other direction of the flow whose entry `flow` is: the
/// rewritten packet's tuple, reversed.
#[inline(always)]
fn partner_key<A: Address>(key: &FlowKeyOf<A>, flow: &FlowValueOf<A>) -> FlowKeyOf<A> {
    FlowKeyOf {
        src_addr_be: flow.new_dst_addr_be,
        dst_addr_be: flow.new_src_addr_be,
        src_port_be: flow.new_dst_port_be,
        dst_port_be: flow.new_src_port_be,
        proto: key.proto,
        _pad: 0,
        _pad2: 0,
    }
}

/// Whether `other`, found at `key`'s partner key, points back at `key`: the
/// other half of the same flow, not a newer flow that reused a NAT port.
#[inline(always)]
fn is_partner<A: Address>(key: &FlowKeyOf<A>, other: &FlowValueOf<A>) -> bool {
    other.new_src_addr_be == key.dst_addr_be
        && other.new_dst_addr_be == key.src_addr_be
        && other.new_src_port_be == key.dst_port_be
        && other.new_dst_port_be == key.src_port_be
}

/// Removes both directions of a flow.
#[inline(always)]
fn remove_pair<F: Family>(key: &FlowKeyOf<F::Addr>, flow: &FlowValueOf<F::Addr>) {
    let partner = partner_key(key, flow);
    if let Some(other) = F::flow(&partner) {
        // SAFETY: copied out at once.
        let other = unsafe { *other };
        if is_partner(key, &other) {
            F::remove_flow(&partner);
        }
    }
    F::remove_flow(key);
}

/// Records activity (and clears `clear_flags`, sets `add_flags`, and
/// `time_wait_mark` if given) in both directions' entries.
#[inline(always)]
fn touch<F: Family>(
    key: &FlowKeyOf<F::Addr>,
    entry: *mut FlowValueOf<F::Addr>,
    flow: &FlowValueOf<F::Addr>,
    now: u64,
    add_flags: u32,
    clear_flags: u32,
    time_wait_mark: Option<u32>,
) {
    // SAFETY: a live map value; plain stores.
    unsafe {
        (*entry).last_seen_ns = now;
        (*entry).flags = ((*entry).flags & !clear_flags) | add_flags;
        if let Some(mark) = time_wait_mark {
            (*entry).time_wait_mark = mark;
        }
    }
    if let Some(other) = F::flow(&partner_key(key, flow)) {
        // SAFETY: a live map value; plain stores.
        unsafe {
            if is_partner(key, &*other) {
                (*other).last_seen_ns = now;
                (*other).flags = ((*other).flags & !clear_flags) | add_flags;
                if let Some(mark) = time_wait_mark {
                    (*other).time_wait_mark = mark;
                }
            }
        }
    }
}

/// Rewrites addresses and ports, updating the checksums incrementally.
#[inline(always)]
fn rewrite<const L3: usize, F: Family, C: Packet>(
    ctx: &C,
    key: &FlowKeyOf<F::Addr>,
    flow: &FlowValueOf<F::Addr>,
) -> Option<()> {
    F::rewrite_addresses::<L3>(ctx, key, flow)?;
    let l4_csum_off = if key.proto == PROTO_TCP {
        (L3 + F::HDR_LEN) + TCP_CSUM
    } else {
        (L3 + F::HDR_LEN) + UDP_CSUM
    };
    ctx.rewrite_l4_csum(l4_csum_off, key, flow)?;
    store_u16(ctx, (L3 + F::HDR_LEN) + L4_SRC_PORT, flow.new_src_port_be)?;
    store_u16(ctx, (L3 + F::HDR_LEN) + L4_DST_PORT, flow.new_dst_port_be)?;
    Some(())
}

/// Sends a rewritten packet: straight out of the egress interface when the FIB
/// knows the next hop, else back to the kernel to route (local destination, or
/// a neighbour not yet resolved). A next hop resolved less than
/// `NEXT_HOP_TTL_NS` ago on this CPU is taken from `next_hop`'s cache.
#[inline(always)]
pub fn send<const L3: usize, F: Family, C: Packet>(
    ctx: &C,
    key: &FlowKeyOf<F::Addr>,
    flow: &FlowValueOf<F::Addr>,
    now: u64,
) -> u32 {
    if L3 != ETH_HDR_LEN || ctx.vlan_tag_in_skb() {
        // VLAN-tagged: the egress may be a VLAN device, which XDP cannot
        // redirect to; the kernel forwards the rewritten packet. At TC the
        // receive path has already moved the tag into the skb: redirected,
        // the packet would leave with the client's tag.
        maps::count_event(PacketEvent::RewrittenPassed);
        return C::PASS;
    }
    let ingress = ctx.ingress_ifindex();
    // A GSO packet's segments are sized for the egress link by the kernel:
    // 0 asks no MTU check of the cache, and the FIB checks the skb itself.
    let tot_len = if ctx.is_gso() {
        0
    } else {
        F::tot_len::<L3>(ctx)
    };
    let (src, dst) = (&flow.new_src_addr_be, &flow.new_dst_addr_be);
    let cached = next_hop::slot(src, dst, ingress);
    if let Some(entry) = cached
        && next_hop::fresh(entry, src, dst, ingress, tot_len, now)
    {
        // SAFETY: a live per-CPU map value, read by this CPU only.
        let hop = unsafe { &*entry };
        return redirect(ctx, hop.dmac, hop.smac, hop.ifindex_out, ingress);
    }

    // SAFETY: all-zero is a valid bpf_fib_lookup.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    F::fib_query(&mut params, flow);
    params.__bindgen_anon_1.tot_len = tot_len;
    params.l4_protocol = key.proto;
    params.sport = flow.new_src_port_be;
    params.dport = flow.new_dst_port_be;
    params.ifindex = ingress;

    // SAFETY: params is a valid, writable bpf_fib_lookup of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr().cast(),
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64
        && let Some(xdp) = ctx.as_xdp()
    {
        // SAFETY: the FIB wrote mtu_result for this return code.
        let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
        if let Some(action) = F::too_big::<L3>(xdp, key, mtu) {
            return action;
        }
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        maps::count_event(PacketEvent::RewrittenPassed);
        return C::PASS;
    }
    if let Some(entry) = cached {
        // SAFETY: the FIB wrote mtu_result (the egress MTU) on success.
        let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
        next_hop::remember(entry, src, dst, ingress, &params, mtu, now);
    }
    redirect(ctx, params.dmac, params.smac, params.ifindex, ingress)
}

/// Sets the MACs and sends the packet out of `egress` (back out of the
/// ingress interface with XDP_TX).
#[inline(always)]
fn redirect<C: Packet>(ctx: &C, dmac: [u8; 6], smac: [u8; 6], egress: u32, ingress: u32) -> u32 {
    // The two MACs as three words, three stores after one bounds check.
    let [d0, d1, d2, d3, d4, d5] = dmac;
    let [s0, s1, s2, s3, s4, s5] = smac;
    let macs = [
        u32::from_ne_bytes([d0, d1, d2, d3]),
        u32::from_ne_bytes([d4, d5, s0, s1]),
        u32::from_ne_bytes([s2, s3, s4, s5]),
    ];
    if store_u32s(ctx, 0, macs).is_none() {
        return C::PASS;
    }
    maps::count_event(PacketEvent::Redirected);
    ctx.redirect(egress, ingress)
}
