//! Ethernet frames for BPF_PROG_TEST_RUN: IPv4 and IPv6 with TCP or UDP and
//! correct checksums, as the packet tests and the program-cost measurement
//! build them.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// One's-complement sum of 16-bit words.
pub fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 + TCP/UDP with correct checksums.
pub fn packet(
    proto: u8,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    tcp_flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let l4_len = if proto == TCP { 20 } else { 8 } + payload.len();
    let mut p = vec![0u8; 14];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let csum = fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    p.extend_from_slice(&ip);
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    if proto == TCP {
        l4.extend_from_slice(&[
            0, 0, 0, 1, 0, 0, 0, 0, 0x50, tcp_flags, 0xff, 0xff, 0, 0, 0, 0,
        ]);
    } else {
        l4.extend_from_slice(&(l4_len as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    p.extend_from_slice(&l4);
    let csum = l4_checksum(&p);
    let at = 34 + if proto == TCP { 16 } else { 6 };
    p[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    p
}

/// The L4 checksum `p` should carry (computed with its checksum field zeroed).
pub fn l4_checksum(p: &[u8]) -> u16 {
    let proto = p[23];
    let mut l4 = p[34..].to_vec();
    let at = if proto == TCP { 16 } else { 6 };
    l4[at] = 0;
    l4[at + 1] = 0;
    let mut pseudo = p[26..34].to_vec();
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    fold(sum16(&l4, sum16(&pseudo, 0)))
}

/// Ethernet + IPv6 + TCP/UDP with a correct checksum.
pub fn packet6(
    proto: u8,
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    tcp_flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let v4 = packet(
        proto,
        (Ipv4Addr::UNSPECIFIED, src.1),
        (Ipv4Addr::UNSPECIFIED, dst.1),
        tcp_flags,
        payload,
    );
    let l4 = &v4[34..];
    let mut p = vec![0u8; 14];
    p[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&[proto, 64]);
    p.extend_from_slice(&src.0.octets());
    p.extend_from_slice(&dst.0.octets());
    p.extend_from_slice(l4);
    let csum = l4_checksum6(&p);
    let at = 54 + if proto == TCP { 16 } else { 6 };
    p[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    p
}

/// The L4 checksum an untagged IPv6 frame should carry: over the IPv6
/// pseudo-header (both addresses, length, next header) and the L4 bytes.
pub fn l4_checksum6(p: &[u8]) -> u16 {
    let proto = p[20];
    let mut l4 = p[54..].to_vec();
    let at = if proto == TCP { 16 } else { 6 };
    l4[at] = 0;
    l4[at + 1] = 0;
    let mut pseudo = p[22..54].to_vec();
    pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, proto]);
    let csum = fold(sum16(&l4, sum16(&pseudo, 0)));
    // UDP over IPv6 sends a computed 0 as 0xffff (0 is "no checksum", not allowed).
    if proto == UDP && csum == 0 {
        0xffff
    } else {
        csum
    }
}
