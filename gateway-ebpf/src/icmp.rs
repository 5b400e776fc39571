//! ICMP the program answers with itself: "fragmentation needed" for a packet
//! of a tracked flow too big for the egress link, so that path-MTU discovery
//! works through the gateway (the kernel never sees the packet, so it cannot).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use gateway_common::{FlowKey, PacketEvent};

use crate::{maps, packet::*};

const IP: usize = ETH_HDR_LEN;
const ICMP: usize = IP + IPV4_HDR_LEN;
const ICMP_HDR_LEN: usize = 8;
/// The offending packet's IP header and first 8 bytes of its L4 header.
const INNER_IP: usize = ICMP + ICMP_HDR_LEN;
const INNER_L4: usize = INNER_IP + IPV4_HDR_LEN;
const TOTAL: usize = INNER_L4 + 8;
const PROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;

/// Turns the (already rewritten, untagged) packet in place into an ICMP
/// "fragmentation needed" to its sender, the inner header restored to what
/// the sender sent (`key`), and hands it to the kernel, which routes it to the
/// sender (XDP_TX into a veth peer without XDP loses it; and this is rare).
#[inline(always)]
pub fn frag_needed(ctx: &XdpContext, key: &FlowKey, mtu: u16) -> u32 {
    match build(ctx, key, mtu) {
        Some(()) => {
            maps::count_event(PacketEvent::IcmpFragNeededSent);
            xdp_action::XDP_PASS
        }
        None => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn build(ctx: &XdpContext, key: &FlowKey, mtu: u16) -> Option<()> {
    let mac_header: [u8; 12] = read(ctx, 0)?;
    // Room in front for the new IP and ICMP headers: the old IP header then
    // sits exactly where the ICMP payload starts.
    let grow = (IPV4_HDR_LEN + ICMP_HDR_LEN) as i32;
    // SAFETY: plain helper call on our context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return None;
    }
    // The frame's length, from the offending packet's IPv4 total length (the
    // verifier allows no arithmetic on data_end; a frame this big has no padding).
    let inner_len = usize::from(u16::from_be(read::<u16>(ctx, INNER_IP + IPV4_TOT_LEN)?));
    if inner_len < TOTAL - INNER_IP || inner_len > 0xffff {
        return None;
    }
    let shrink = (INNER_IP + inner_len - TOTAL) as i32;
    // SAFETY: plain helper call; shrinks the frame to the ICMP message.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -shrink) } != 0 {
        return None;
    }

    // Addressed to this node, as received, so the kernel takes it in.
    write(ctx, 0, mac_header)?;
    write(ctx, 12, ETH_P_IPV4.to_be())?;

    // The inner header as the sender sent it (our rewrite undone).
    write(ctx, INNER_IP + IPV4_SRC, key.src_addr_be)?;
    write(ctx, INNER_IP + IPV4_DST, key.dst_addr_be)?;
    write(ctx, INNER_L4 + L4_SRC_PORT, key.src_port_be)?;
    write(ctx, INNER_L4 + L4_DST_PORT, key.dst_port_be)?;
    write(ctx, INNER_IP + IPV4_CSUM, 0u16)?;
    let inner = checksum(sum::<{ IPV4_HDR_LEN / 2 }>(ctx, INNER_IP)?);
    write(ctx, INNER_IP + IPV4_CSUM, inner)?;

    // From the gateway address the sender talks to, back to the sender.
    let header: [u8; 12] = [
        0x45,
        0,
        0,
        (TOTAL - IP) as u8, // total length < 256
        0,
        0,
        0,
        0,
        64,
        PROTO_ICMP,
        0,
        0,
    ];
    write(ctx, IP, header)?;
    write(ctx, IP + IPV4_SRC, key.dst_addr_be)?;
    write(ctx, IP + IPV4_DST, key.src_addr_be)?;
    let ip = checksum(sum::<{ IPV4_HDR_LEN / 2 }>(ctx, IP)?);
    write(ctx, IP + IPV4_CSUM, ip)?;

    write(
        ctx,
        ICMP,
        [ICMP_DEST_UNREACHABLE, ICMP_FRAG_NEEDED, 0, 0, 0, 0],
    )?;
    write(ctx, ICMP + 6, mtu.to_be())?;
    let icmp = checksum(sum::<{ (TOTAL - ICMP) / 2 }>(ctx, ICMP)?);
    write(ctx, ICMP + 2, icmp)?;
    Some(())
}

/// One's-complement sum of `WORDS` 16-bit words from `offset` (byte order
/// does not matter to the sum; the result is written back the same way).
#[inline(always)]
fn sum<const WORDS: usize>(ctx: &XdpContext, offset: usize) -> Option<u32> {
    // One bounds check for the whole range, then a loop over a local copy:
    // a loop over packet pointers gets compiled into arithmetic on data_end,
    // which the verifier refuses.
    let words: [u16; WORDS] = read(ctx, offset)?;
    let mut total = 0u32;
    for word in words {
        total += u32::from(word);
    }
    Some(total)
}

#[inline(always)]
fn checksum(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
