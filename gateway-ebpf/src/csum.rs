//! Incremental Internet checksum updates (RFC 1624: HC' = ~(~HC + ~m + m')).
//!
//! Values are the raw header bytes read as native integers; one's-complement
//! addition does not depend on byte order, so no swapping is needed.

use gateway_common::Address;

#[inline(always)]
pub fn fold_sum(sum: u32) -> u16 {
    fold(sum)
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum after one 32-bit field changed from `old` to `new`.
#[inline(always)]
pub fn replace_u32(csum: u16, old: u32, new: u32) -> u16 {
    let sum = (!csum) as u32
        + (!(old as u16)) as u32
        + (!((old >> 16) as u16)) as u32
        + (new & 0xffff)
        + (new >> 16);
    !fold(sum)
}

/// Checksum after one 16-bit field changed from `old` to `new`.
#[inline(always)]
pub fn replace_u16(csum: u16, old: u16, new: u16) -> u16 {
    let sum = (!csum) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// Checksum after an address (one word for IPv4, four for IPv6) changed.
#[inline(always)]
pub fn replace_addr<A: Address>(csum: u16, old: &A, new: &A) -> u16 {
    let mut sum = (!csum) as u32;
    for (old, new) in old.words().iter().zip(new.words()) {
        sum += (!(*old as u16)) as u32 + (!((*old >> 16) as u16)) as u32;
        sum += (*new & 0xffff) + (*new >> 16);
    }
    !fold(sum)
}

/// The one's-complement difference an address change makes (unfolded), as
/// `bpf_l4_csum_replace` takes it (`from` 0, `to` the difference).
#[inline(always)]
pub fn addr_diff<A: Address>(old: &A, new: &A) -> u32 {
    let mut sum = 0u32;
    for (old, new) in old.words().iter().zip(new.words()) {
        sum += (!(*old as u16)) as u32 + (!((*old >> 16) as u16)) as u32;
        sum += (*new & 0xffff) + (*new >> 16);
    }
    sum
}

/// The kernel's `csum_add`: a 32-bit add with the carry added back.
#[inline(always)]
fn kernel_add(a: u32, b: u32) -> u32 {
    let sum = a.wrapping_add(b);
    sum.wrapping_add(u32::from(sum < b))
}

/// The kernel's `csum_fold`: folded to 16 bits and complemented.
#[inline(always)]
fn kernel_fold(sum: u32) -> u16 {
    !fold(sum)
}

/// What `bpf_l4_csum_replace` with `BPF_F_PSEUDO_HDR` and the difference
/// `diff` leaves in a checksum field holding `field`: `(on a CHECKSUM_PARTIAL
/// skb, on any other)`. The field of a partial checksum holds the
/// pseudo-header's sum uncomplemented, which the difference is added to; a
/// complete checksum is complemented, the difference taken out of it. The
/// two differ unless `diff` is a one's-complement zero.
#[inline(always)]
pub fn after_pseudo_diff(field: u16, diff: u32) -> (u16, u16) {
    let partial = !kernel_fold(kernel_add(diff, u32::from(field)));
    let complete = kernel_fold(kernel_add(diff, !u32::from(field)));
    (partial, complete)
}

/// What `bpf_l4_csum_replace` (no pseudo-header flag, 4 bytes) writes into
/// a complete checksum field for a 32-bit word changed from `old` to `new`
/// (the kernel's `csum_replace4`, the same arithmetic to the bit).
#[inline(always)]
pub fn kernel_replace4(field: u16, old: u32, new: u32) -> u16 {
    kernel_fold(kernel_add(kernel_add(!u32::from(field), !old), new))
}
