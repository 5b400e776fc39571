//! Bounds-checked access to packet headers. Every read and write goes through
//! `ptr_at`, which the verifier can follow.

use aya_ebpf::programs::XdpContext;

pub const ETH_HDR_LEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// One VLAN tag: TCI and the inner EtherType.
pub const VLAN_HDR_LEN: usize = 4;
pub const IPV4_HDR_LEN: usize = 20;
/// Offsets inside the IPv4 header.
pub const IPV4_FRAG_OFF: usize = 6;
pub const IPV4_PROTO: usize = 9;
pub const IPV4_CSUM: usize = 10;
pub const IPV4_SRC: usize = 12;
pub const IPV4_DST: usize = 16;
pub const IPV4_TOT_LEN: usize = 2;
pub const IPV4_DONT_FRAGMENT: u16 = 0x4000;
pub const IPV6_HDR_LEN: usize = 40;
/// Offsets inside the IPv6 header.
pub const IPV6_PAYLOAD_LEN: usize = 4;
pub const IPV6_NEXT_HEADER: usize = 6;
pub const IPV6_SRC: usize = 8;
pub const IPV6_DST: usize = 24;
/// IPv6 extension headers the program leaves to the kernel (so it never
/// walks a chain of them).
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DEST_OPTIONS: u8 = 60;
pub const PROTO_ICMPV6: u8 = 58;
/// ICMPv6 errors (destination unreachable, packet too big, time exceeded):
/// types 1 to 3. Informational messages (neighbour discovery...) are 128 and up.
pub const ICMPV6_ERROR_MAX: u8 = 3;
/// Offsets inside the TCP and UDP headers.
pub const L4_SRC_PORT: usize = 0;
pub const L4_DST_PORT: usize = 2;
pub const TCP_FLAGS: usize = 13;
pub const TCP_CSUM: usize = 16;
pub const TCP_HDR_MIN: usize = 20;
pub const UDP_CSUM: usize = 6;
pub const UDP_HDR_LEN: usize = 8;
pub const PROTO_ICMP: u8 = 1;
pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// A pointer to a `T` at `offset`, if the packet is long enough.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies inside the packet.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
pub fn write<T>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    // SAFETY: ptr_at checked that the whole T lies inside the packet.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.write_unaligned(value) })
}
