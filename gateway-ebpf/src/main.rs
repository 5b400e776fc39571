//! The gateway's kernel data plane: an XDP program (or the same code as a TC
//! classifier) that forwards TCPRoute and UDPRoute traffic (destination and
//! source NAT, replies translated back).
#![no_std]
#![no_main]
// `asm!` for BPF: header words loaded and stored in one instruction (`packet.rs`).
#![feature(asm_experimental_arch)]

mod clock;
mod config;
mod csum;
mod debug_log;
mod family;
mod forward;
mod icmp;
mod maps;
mod next_hop;
mod packet;
mod splice;

use aya_ebpf::{
    macros::{classifier, stream_verdict, xdp},
    programs::{SkBuffContext, TcContext, XdpContext},
};

/// Entry point attached to each node interface.
#[xdp]
pub fn xdp_l4_forward(ctx: XdpContext) -> u32 {
    forward::handle(&ctx)
}

/// The same forwarding at each node interface's TC ingress (`--attach tc`):
/// on the skb itself, so GSO packets and offloaded checksums stay as they
/// are, and no XDP on a veth turns its peer's segmentation offload off.
#[classifier]
pub fn tc_l4_forward(ctx: TcContext) -> i32 {
    packet::pull_headers(&ctx);
    forward::handle(&ctx) as i32
}

/// Stream verdict of the TLS passthrough SOCKHASH: splices client and backend.
#[stream_verdict]
pub fn sk_skb_splice(ctx: SkBuffContext) -> u32 {
    splice::verdict(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects a program whose code can reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
