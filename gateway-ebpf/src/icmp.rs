//! ICMP for tracked flows. Errors about a flow's packets, from a router on
//! either side, are translated like the flow (path-MTU discovery and
//! traceroute work through the gateway); and "fragmentation needed" for a
//! packet too big for the egress link is answered by the program itself (the
//! kernel never sees the packet, so it cannot).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use gateway_common::{FlowKey, FlowKey6, FlowValue, PROTO_TCP, PROTO_UDP, PacketEvent};

use crate::{csum, family::V4, forward, maps, packet::*};

const IP: usize = ETH_HDR_LEN;
const ICMP: usize = IP + IPV4_HDR_LEN;
const ICMP_HDR_LEN: usize = 8;
/// The offending packet's IP header and first 8 bytes of its L4 header.
const INNER_IP: usize = ICMP + ICMP_HDR_LEN;
const INNER_L4: usize = INNER_IP + IPV4_HDR_LEN;
const TOTAL: usize = INNER_L4 + 8;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
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
    if inner_len < TOTAL - INNER_IP {
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

const IP6: usize = ETH_HDR_LEN;
const ICMP6: usize = IP6 + IPV6_HDR_LEN;
const INNER_IP6: usize = ICMP6 + ICMP_HDR_LEN;
const INNER_L4_6: usize = INNER_IP6 + IPV6_HDR_LEN;
const TOTAL6: usize = INNER_L4_6 + 8;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;

/// The IPv6 `frag_needed`: the packet turned into an ICMPv6 "packet too big"
/// to its sender, quoting its IPv6 header and first 8 bytes of L4 as sent.
/// Its own BPF function (rare, and the forwarding path's stack is near the
/// 512-byte limit).
#[inline(never)]
pub fn packet_too_big(ctx: &XdpContext, key: &FlowKey6, mtu: u16) -> u32 {
    match build6(ctx, key, mtu) {
        Some(()) => {
            maps::count_event(PacketEvent::IcmpFragNeededSent);
            xdp_action::XDP_PASS
        }
        None => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn build6(ctx: &XdpContext, key: &FlowKey6, mtu: u16) -> Option<()> {
    let mac_header: [u8; 12] = read(ctx, 0)?;
    let grow = (IPV6_HDR_LEN + ICMP_HDR_LEN) as i32;
    // SAFETY: plain helper call on our context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return None;
    }
    let payload = usize::from(u16::from_be(read::<u16>(
        ctx,
        INNER_IP6 + IPV6_PAYLOAD_LEN,
    )?));
    let inner_len = IPV6_HDR_LEN + payload;
    if inner_len < TOTAL6 - INNER_IP6 {
        return None;
    }
    let shrink = (INNER_IP6 + inner_len - TOTAL6) as i32;
    // SAFETY: plain helper call; shrinks the frame to the ICMPv6 message.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -shrink) } != 0 {
        return None;
    }

    write(ctx, 0, mac_header)?;
    write(ctx, 12, ETH_P_IPV6.to_be())?;

    // The quote as the sender sent it (no IPv6 header checksum to fix).
    write(ctx, INNER_IP6 + IPV6_SRC, key.src_addr_be)?;
    write(ctx, INNER_IP6 + IPV6_DST, key.dst_addr_be)?;
    write(ctx, INNER_L4_6 + L4_SRC_PORT, key.src_port_be)?;
    write(ctx, INNER_L4_6 + L4_DST_PORT, key.dst_port_be)?;

    // From the gateway address the sender talks to, back to the sender.
    let icmp_len = (TOTAL6 - ICMP6) as u16;
    let header: [u8; 8] = [0x60, 0, 0, 0, 0, icmp_len as u8, PROTO_ICMPV6, 64];
    write(ctx, IP6, header)?;
    write(ctx, IP6 + IPV6_SRC, key.dst_addr_be)?;
    write(ctx, IP6 + IPV6_DST, key.src_addr_be)?;
    let kind = [ICMPV6_PACKET_TOO_BIG, 0];
    write(ctx, ICMP6, kind)?;
    write(ctx, ICMP6 + 2, 0u16)?;
    let mtu_be = u32::from(mtu).to_be();
    write(ctx, ICMP6 + 4, mtu_be)?;
    // The checksum covers a pseudo-header (both addresses, length, next
    // header) and the message. Summed from the values written where they
    // are known, reading only the quote's other bytes: the stack is tight.
    let addresses = words_sum(&key.src_addr_be) + words_sum(&key.dst_addr_be);
    let mut total = 2 * addresses
        + u32::from(icmp_len.to_be())
        + u32::from(u16::from(PROTO_ICMPV6).to_be())
        + u32::from(u16::from_ne_bytes(kind))
        + words_sum(&[mtu_be]);
    total += sum::<4>(ctx, INNER_IP6)?;
    total += u32::from(key.src_port_be) + u32::from(key.dst_port_be);
    total += sum::<2>(ctx, INNER_L4_6 + 4)?;
    write(ctx, ICMP6 + 2, checksum(total))
}

/// One's-complement sum of the 16-bit halves of `words`.
#[inline(always)]
fn words_sum(words: &[u32]) -> u32 {
    let mut total = 0;
    for word in words {
        total += (word & 0xffff) + (word >> 16);
    }
    total
}

/// One's-complement sum of `WORDS` 16-bit words from `offset` (byte order
/// does not matter to the sum; the result is written back the same way).
#[inline(always)]
fn sum<const WORDS: usize>(ctx: &impl Packet, offset: usize) -> Option<u32> {
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

/// An ICMP error (destination unreachable, time exceeded) whose quoted packet
/// belongs to a tracked flow: the quote is translated back to the packet its
/// sender sent, and the error is sent to that sender. Anything else passes.
#[inline(always)]
pub fn translate_error<const L3: usize, C: Packet>(ctx: &C) -> Result<u32, PacketEvent> {
    let icmp = L3 + IPV4_HDR_LEN;
    let inner = icmp + ICMP_HDR_LEN;
    let inner_l4 = inner + IPV4_HDR_LEN;
    let not_ours = PacketEvent::PassedNotOurs;
    let kind = read::<u8>(ctx, icmp).ok_or(not_ours)?;
    if kind != ICMP_DEST_UNREACHABLE && kind != ICMP_TIME_EXCEEDED {
        return Err(not_ours);
    }
    let inner_ver_ihl = read::<u8>(ctx, inner).ok_or(not_ours)?;
    let proto = read::<u8>(ctx, inner + IPV4_PROTO).ok_or(not_ours)?;
    if inner_ver_ihl != 0x45 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return Err(not_ours);
    }
    // The quoted packet went out rewritten by the flow entry whose partner is
    // the quote reversed; that partner entry says what to turn it back into.
    let quoted = FlowKey {
        src_addr_be: read(ctx, inner + IPV4_SRC).ok_or(not_ours)?,
        dst_addr_be: read(ctx, inner + IPV4_DST).ok_or(not_ours)?,
        src_port_be: read(ctx, inner_l4 + L4_SRC_PORT).ok_or(not_ours)?,
        dst_port_be: read(ctx, inner_l4 + L4_DST_PORT).ok_or(not_ours)?,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    let reversed = FlowKey {
        src_addr_be: quoted.dst_addr_be,
        dst_addr_be: quoted.src_addr_be,
        src_port_be: quoted.dst_port_be,
        dst_port_be: quoted.src_port_be,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    let Some(entry) = maps::FLOWS.get_ptr(reversed) else {
        return Err(not_ours);
    };
    // SAFETY: copied out at once.
    let flow = unsafe { *entry };
    // The original packet: from the entry's rewritten destination to its
    // rewritten source.
    let (src, dst) = (flow.new_dst_addr_be, flow.new_src_addr_be);
    let (sport, dport) = (flow.new_dst_port_be, flow.new_src_port_be);
    // Inner L4 first: its checksum covers the inner addresses too.
    let mut icmp_csum: u16 = read(ctx, icmp + 2).ok_or(not_ours)?;
    if proto == PROTO_UDP {
        let old: u16 = read(ctx, inner_l4 + 6).ok_or(not_ours)?;
        if old != 0 {
            let mut udp = csum::replace_u32(old, quoted.src_addr_be, src);
            udp = csum::replace_u32(udp, quoted.dst_addr_be, dst);
            udp = csum::replace_u16(udp, quoted.src_port_be, sport);
            udp = csum::replace_u16(udp, quoted.dst_port_be, dport);
            if udp == 0 {
                udp = 0xffff;
            }
            write(ctx, inner_l4 + 6, udp).ok_or(not_ours)?;
            icmp_csum = csum::replace_u16(icmp_csum, old, udp);
        }
    }
    write(ctx, inner_l4 + L4_SRC_PORT, sport).ok_or(not_ours)?;
    write(ctx, inner_l4 + L4_DST_PORT, dport).ok_or(not_ours)?;
    icmp_csum = csum::replace_u16(icmp_csum, quoted.src_port_be, sport);
    icmp_csum = csum::replace_u16(icmp_csum, quoted.dst_port_be, dport);
    let old_inner_csum: u16 = read(ctx, inner + IPV4_CSUM).ok_or(not_ours)?;
    let mut inner_csum = csum::replace_u32(old_inner_csum, quoted.src_addr_be, src);
    inner_csum = csum::replace_u32(inner_csum, quoted.dst_addr_be, dst);
    write(ctx, inner + IPV4_SRC, src).ok_or(not_ours)?;
    write(ctx, inner + IPV4_DST, dst).ok_or(not_ours)?;
    write(ctx, inner + IPV4_CSUM, inner_csum).ok_or(not_ours)?;
    icmp_csum = csum::replace_u32(icmp_csum, quoted.src_addr_be, src);
    icmp_csum = csum::replace_u32(icmp_csum, quoted.dst_addr_be, dst);
    icmp_csum = csum::replace_u16(icmp_csum, old_inner_csum, inner_csum);
    write(ctx, icmp + 2, icmp_csum).ok_or(not_ours)?;

    // The outer header now goes to the original sender.
    let outer_src: u32 = read(ctx, L3 + IPV4_SRC).ok_or(not_ours)?;
    let outer_dst: u32 = read(ctx, L3 + IPV4_DST).ok_or(not_ours)?;
    let outer_csum: u16 = read(ctx, L3 + IPV4_CSUM).ok_or(not_ours)?;
    write(ctx, L3 + IPV4_DST, src).ok_or(not_ours)?;
    write(
        ctx,
        L3 + IPV4_CSUM,
        csum::replace_u32(outer_csum, outer_dst, src),
    )
    .ok_or(not_ours)?;

    maps::count_route(flow.route_id, ctx.len(), false, false);
    maps::count_event(PacketEvent::IcmpErrorTranslated);
    let route = FlowValue {
        new_src_addr_be: outer_src,
        new_dst_addr_be: src,
        new_src_port_be: 0,
        new_dst_port_be: 0,
        route_id: flow.route_id,
        flags: 0,
        time_wait_mark: 0,
        last_seen_ns: 0,
    };
    let key = FlowKey {
        proto: PROTO_ICMP,
        ..FlowKey::default()
    };
    let now = crate::clock::now_ns();
    Ok(forward::send::<L3, V4, C>(ctx, &key, &route, now))
}

/// The IPv6 `translate_error`: an ICMPv6 error (destination unreachable,
/// packet too big, time exceeded) quoting a tracked flow's packet goes to
/// that packet's original sender, the quote turned back into what it sent.
/// The ICMPv6 checksum covers a pseudo-header, so the outer destination's
/// change is folded in too. Informational ICMPv6 (neighbour discovery, echo)
/// passes untouched. A BPF function of its own, and the translated error is
/// left to the kernel to route: errors are rare, and the forwarding path's
/// stack would not hold this one's too.
#[inline(never)]
pub fn translate_error6<const L3: usize, C: Packet>(ctx: &C) -> Result<u32, PacketEvent> {
    let icmp = L3 + IPV6_HDR_LEN;
    let inner = icmp + ICMP_HDR_LEN;
    let inner_l4 = inner + IPV6_HDR_LEN;
    let not_ours = PacketEvent::PassedNotOurs;
    let outer_version = read::<u8>(ctx, L3).ok_or(not_ours)?;
    let kind = read::<u8>(ctx, icmp).ok_or(not_ours)?;
    if outer_version >> 4 != 6 || kind == 0 || kind > ICMPV6_ERROR_MAX {
        return Err(not_ours);
    }
    let version = read::<u8>(ctx, inner).ok_or(not_ours)?;
    let proto = read::<u8>(ctx, inner + IPV6_NEXT_HEADER).ok_or(not_ours)?;
    if version >> 4 != 6 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return Err(not_ours);
    }
    let quoted = FlowKey6 {
        src_addr_be: read(ctx, inner + IPV6_SRC).ok_or(not_ours)?,
        dst_addr_be: read(ctx, inner + IPV6_DST).ok_or(not_ours)?,
        src_port_be: read(ctx, inner_l4 + L4_SRC_PORT).ok_or(not_ours)?,
        dst_port_be: read(ctx, inner_l4 + L4_DST_PORT).ok_or(not_ours)?,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    let reversed = FlowKey6 {
        src_addr_be: quoted.dst_addr_be,
        dst_addr_be: quoted.src_addr_be,
        src_port_be: quoted.dst_port_be,
        dst_port_be: quoted.src_port_be,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    let Some(entry) = maps::FLOWS6.get_ptr(reversed) else {
        return Err(not_ours);
    };
    // SAFETY: copied out at once.
    let flow = unsafe { *entry };
    let (src, dst) = (flow.new_dst_addr_be, flow.new_src_addr_be);
    let (sport, dport) = (flow.new_dst_port_be, flow.new_src_port_be);
    let mut icmp_csum: u16 = read(ctx, icmp + 2).ok_or(not_ours)?;
    if proto == PROTO_UDP {
        let old: u16 = read(ctx, inner_l4 + UDP_CSUM).ok_or(not_ours)?;
        let mut udp = csum::replace_addr(old, &quoted.src_addr_be, &src);
        udp = csum::replace_addr(udp, &quoted.dst_addr_be, &dst);
        udp = csum::replace_u16(udp, quoted.src_port_be, sport);
        udp = csum::replace_u16(udp, quoted.dst_port_be, dport);
        if udp == 0 {
            udp = 0xffff;
        }
        write(ctx, inner_l4 + UDP_CSUM, udp).ok_or(not_ours)?;
        icmp_csum = csum::replace_u16(icmp_csum, old, udp);
    }
    write(ctx, inner_l4 + L4_SRC_PORT, sport).ok_or(not_ours)?;
    write(ctx, inner_l4 + L4_DST_PORT, dport).ok_or(not_ours)?;
    icmp_csum = csum::replace_u16(icmp_csum, quoted.src_port_be, sport);
    icmp_csum = csum::replace_u16(icmp_csum, quoted.dst_port_be, dport);
    write(ctx, inner + IPV6_SRC, src).ok_or(not_ours)?;
    write(ctx, inner + IPV6_DST, dst).ok_or(not_ours)?;
    icmp_csum = csum::replace_addr(icmp_csum, &quoted.src_addr_be, &src);
    icmp_csum = csum::replace_addr(icmp_csum, &quoted.dst_addr_be, &dst);

    // The outer header now goes to the original sender.
    let outer_dst: [u32; 4] = read(ctx, L3 + IPV6_DST).ok_or(not_ours)?;
    write(ctx, L3 + IPV6_DST, src).ok_or(not_ours)?;
    icmp_csum = csum::replace_addr(icmp_csum, &outer_dst, &src);
    write(ctx, icmp + 2, icmp_csum).ok_or(not_ours)?;

    maps::count_route(flow.route_id, ctx.len(), false, false);
    maps::count_event(PacketEvent::IcmpErrorTranslated);
    Ok(C::PASS)
}
