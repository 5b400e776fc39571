//! The time flows and the next-hop cache are aged with: CLOCK_MONOTONIC in
//! nanoseconds at tick resolution (`bpf_ktime_get_coarse_ns`), read once per
//! tick on each CPU. The coarse clock only moves when a tick updates the
//! timekeeper, which is when `jiffies` moves, so the value read at this
//! `jiffies` holds until the next one (a read just between the two updates
//! is at most a tick behind: 1–10 ms, against timeouts of 100 ms and more).
//! `bpf_jiffies64` is inlined by the verifier (one load); the coarse clock
//! is a helper call with a seqcount read and a timespec conversion, about a
//! sixth of a tracked packet's time.

use aya_ebpf::{
    btf_maps::PerCpuArray,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::btf_map,
};

/// This CPU's last reading: the `jiffies` it was taken at, and the time.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TickTime {
    pub jiffies: u64,
    pub ns: u64,
}

#[btf_map]
static CLOCK: PerCpuArray<TickTime, 1> = PerCpuArray::new();

/// Now, in `bpf_ktime_get_coarse_ns`'s nanoseconds.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call (inlined by the verifier).
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(slot) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: plain helper call.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot, touched by this program run only.
    let slot = unsafe { &mut *slot };
    if slot.jiffies != jiffies || slot.ns == 0 {
        slot.jiffies = jiffies;
        // SAFETY: plain helper call.
        slot.ns = unsafe { bpf_ktime_get_coarse_ns() };
    }
    slot.ns
}
