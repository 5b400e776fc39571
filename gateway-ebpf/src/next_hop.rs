//! A per-CPU cache of FIB answers, so that a forwarded packet does not pay
//! `bpf_fib_lookup` (the largest part of a tracked packet's time) when the
//! same next hop was resolved a moment ago.
//!
//! Direct-mapped: a slot per hash of what the FIB query depends on (ingress
//! interface, source and destination address), holding those inputs and the
//! answer (egress interface, MACs, MTU). An answer is used for
//! `NEXT_HOP_TTL_NS` only, so a route or neighbour change is followed within
//! that time; only successful lookups are kept (the others hand the packet
//! to the kernel, and are looked up again every time). Per CPU: no locking
//! and no cache line shared between CPUs.

use aya_ebpf::{bindings::bpf_fib_lookup as FibParams, btf_maps::PerCpuArray, macros::btf_map};
use gateway_common::{Addr6, Address};

/// How long a FIB answer is used before it is looked up again.
pub const NEXT_HOP_TTL_NS: u64 = 100_000_000;
const SLOT_BITS: u32 = 10;
const SLOTS: u32 = 1 << SLOT_BITS;

/// One cached FIB answer: the query's inputs, then what the FIB answered.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHopOf<A> {
    pub dst_addr_be: A,
    pub src_addr_be: A,
    pub ifindex_in: u32,
    pub ifindex_out: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The egress link's MTU: a bigger packet goes through the FIB (which
    /// answers "fragmentation needed").
    pub mtu: u16,
    pub _pad: u16,
    /// When the FIB answered (`clock::now_ns`); 0: never.
    pub resolved_ns: u64,
}

#[btf_map]
static NEXT_HOPS: PerCpuArray<NextHopOf<u32>, { SLOTS as usize }> = PerCpuArray::new();
#[btf_map]
static NEXT_HOPS6: PerCpuArray<NextHopOf<Addr6>, { SLOTS as usize }> = PerCpuArray::new();

/// An address family's cache.
pub trait NextHopCache: Address {
    fn slot(index: u32) -> Option<*mut NextHopOf<Self>>;
}

impl NextHopCache for u32 {
    #[inline(always)]
    fn slot(index: u32) -> Option<*mut NextHopOf<u32>> {
        NEXT_HOPS.get_ptr_mut(index)
    }
}

impl NextHopCache for Addr6 {
    #[inline(always)]
    fn slot(index: u32) -> Option<*mut NextHopOf<Addr6>> {
        NEXT_HOPS6.get_ptr_mut(index)
    }
}

/// This CPU's slot for a query (Fibonacci hashing: the top bits of a
/// multiplicative hash). Each address's words are folded with xor first: a
/// multiply per word was a chain of nine dependent multiplies for IPv6, and
/// a slot needs no more mixing than two give.
#[inline(always)]
pub fn slot<A: NextHopCache>(src: &A, dst: &A, ifindex_in: u32) -> Option<*mut NextHopOf<A>> {
    const GOLDEN: u32 = 0x9e37_79b9;
    let fold = |addr: &A| addr.words().iter().fold(0, |x, word| x ^ *word);
    let h = (ifindex_in ^ fold(dst)).wrapping_mul(GOLDEN);
    let h = (h ^ fold(src)).wrapping_mul(GOLDEN);
    A::slot(h >> (32 - SLOT_BITS))
}

/// Whether `entry` answers this query, fresh, for a packet of `tot_len`
/// bytes (one that fits the egress link).
#[inline(always)]
pub fn fresh<A: NextHopCache>(
    entry: *mut NextHopOf<A>,
    src: &A,
    dst: &A,
    ifindex_in: u32,
    tot_len: u16,
    now: u64,
) -> bool {
    // SAFETY: a live per-CPU map value; only this CPU touches it during the run.
    let hop = unsafe { &*entry };
    hop.resolved_ns != 0
        && now.wrapping_sub(hop.resolved_ns) < NEXT_HOP_TTL_NS
        && hop.ifindex_in == ifindex_in
        && tot_len <= hop.mtu
        && hop.dst_addr_be == *dst
        && hop.src_addr_be == *src
}

/// Records a successful FIB answer (field by field: no copy on the stack).
#[inline(always)]
pub fn remember<A: NextHopCache>(
    entry: *mut NextHopOf<A>,
    src: &A,
    dst: &A,
    ifindex_in: u32,
    answer: &FibParams,
    mtu: u16,
    now: u64,
) {
    // SAFETY: as in `fresh`.
    let hop = unsafe { &mut *entry };
    hop.dst_addr_be = *dst;
    hop.src_addr_be = *src;
    hop.ifindex_in = ifindex_in;
    hop.ifindex_out = answer.ifindex;
    hop.dmac = answer.dmac;
    hop.smac = answer.smac;
    hop.mtu = mtu;
    hop.resolved_ns = now;
}
