//! Bounds-checked access to packet headers. Every read and write goes through
//! `ptr_at`, which the verifier can follow. The forwarding code is generic
//! over `Packet`, what differs between the XDP and the TC context.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        __sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action,
        xdp_md,
    },
    helpers::bpf_redirect,
    programs::{TcContext, XdpContext},
};
use gateway_common::{Address, FlowKeyOf, FlowValueOf, PROTO_UDP};

use crate::csum;

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
pub const TCP_SEQ: usize = 4;
/// Data offset (header length in 32-bit words) in the high nibble.
pub const TCP_DOFF: usize = 12;
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
/// TCP options: at most 40 bytes after the fixed header.
const TCP_OPTIONS_MAX: usize = 40;
const TCP_OPT_EOL: u8 = 0;
const TCP_OPT_NOP: u8 = 1;
const TCP_OPT_TIMESTAMP: u8 = 8;
const TCP_OPT_TIMESTAMP_LEN: usize = 10;

/// What the forwarding code needs of the context it runs in: the packet's
/// bounds, the verdicts, how to send it on and how to update its L4 checksum.
pub trait Packet: EbpfContext {
    /// Hands the packet to the kernel untouched (or as rewritten).
    const PASS: u32;
    const DROP: u32;

    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole packet's length, counted in the route statistics.
    fn len(&self) -> u64;
    fn ingress_ifindex(&self) -> u32;
    /// Whether the kernel segments the packet after us (GSO): its IP length
    /// is then no measure of what goes on the wire.
    fn is_gso(&self) -> bool;
    /// Whether the packet came with a VLAN tag that the receive path moved
    /// out of the data into the skb (TC; XDP sees a tag in the data).
    fn vlan_tag_in_skb(&self) -> bool;
    /// Sends the packet out of `egress` (its MACs already set); `ingress` is
    /// where it came in.
    fn redirect(&self, egress: u32, ingress: u32) -> u32;
    /// Updates the L4 checksum at `offset` for the rewrite of `key` into
    /// `flow` (addresses, which its pseudo-header covers, and ports).
    fn rewrite_l4_csum<A: Address>(
        &self,
        offset: usize,
        key: &FlowKeyOf<A>,
        flow: &FlowValueOf<A>,
    ) -> Option<()>;
    /// The XDP context, for what only XDP does (answering a packet too big
    /// for the egress link itself).
    fn as_xdp(&self) -> Option<&XdpContext>;
    /// `tcp_tsval`'s walk over `len` option bytes at `offset`, by this
    /// context's global function.
    fn options_tsval(&self, offset: u32, len: u32) -> u64;
}

impl Packet for XdpContext {
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u64 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u64
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }

    #[inline(always)]
    fn is_gso(&self) -> bool {
        false
    }

    #[inline(always)]
    fn vlan_tag_in_skb(&self) -> bool {
        false
    }

    /// Back out of the ingress interface with XDP_TX.
    #[inline(always)]
    fn redirect(&self, egress: u32, ingress: u32) -> u32 {
        if egress == ingress {
            return xdp_action::XDP_TX;
        }
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(egress, 0) as u32 }
    }

    /// The packet's checksum is complete (XDP sees no offload state):
    /// updated in place (RFC 1624).
    #[inline(always)]
    fn rewrite_l4_csum<A: Address>(
        &self,
        offset: usize,
        key: &FlowKeyOf<A>,
        flow: &FlowValueOf<A>,
    ) -> Option<()> {
        let old = load_u16(self, offset)?;
        // A zero UDP checksum means "none" (IPv4 only): leave it so.
        if key.proto == PROTO_UDP && old == 0 {
            return Some(());
        }
        let mut l4 = csum::replace_addr(old, &key.src_addr_be, &flow.new_src_addr_be);
        l4 = csum::replace_addr(l4, &key.dst_addr_be, &flow.new_dst_addr_be);
        l4 = csum::replace_u16(l4, key.src_port_be, flow.new_src_port_be);
        l4 = csum::replace_u16(l4, key.dst_port_be, flow.new_dst_port_be);
        if key.proto == PROTO_UDP && l4 == 0 {
            l4 = 0xffff;
        }
        store_u16(self, offset, l4)
    }

    #[inline(always)]
    fn as_xdp(&self) -> Option<&XdpContext> {
        Some(self)
    }

    #[inline(always)]
    fn options_tsval(&self, offset: u32, len: u32) -> u64 {
        xdp_tcp_tsval(self.ctx, offset, len)
    }
}

/// `bpf_l4_csum_replace`: an IPv6 address change leaves a CHECKSUM_COMPLETE
/// skb's sum as it is (kernel 6.16 and later; not in aya's bindings yet).
const BPF_F_IPV6: u64 = 1 << 7;
/// The most header bytes the program reads: Ethernet, a VLAN tag, IPv6,
/// ICMPv6 and the quoted IPv6 header and ports.
const HEADERS_MAX: u32 = (ETH_HDR_LEN + VLAN_HDR_LEN + 2 * IPV6_HDR_LEN + 8 + UDP_HDR_LEN) as u32;

impl Packet for TcContext {
    /// TCX_NEXT: the next program on the hook, else the kernel's own path.
    const PASS: u32 = TC_ACT_UNSPEC as u32;
    const DROP: u32 = TC_ACT_SHOT as u32;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u64 {
        u64::from(TcContext::len(self))
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: a read of the context.
        unsafe { (*self.skb.skb).ingress_ifindex }
    }

    #[inline(always)]
    fn is_gso(&self) -> bool {
        // SAFETY: a read of the context.
        unsafe { (*self.skb.skb).gso_size != 0 }
    }

    #[inline(always)]
    fn vlan_tag_in_skb(&self) -> bool {
        // SAFETY: a read of the context.
        unsafe { (*self.skb.skb).vlan_present != 0 }
    }

    /// To the egress of `egress`, the ingress interface's own included.
    #[inline(always)]
    fn redirect(&self, egress: u32, _ingress: u32) -> u32 {
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(egress, 0) as u32 }
    }

    /// The skb may be CHECKSUM_PARTIAL (GSO, or sent by a local socket with
    /// checksum offload: the field then holds the pseudo-header's sum only)
    /// or CHECKSUM_COMPLETE: the kernel's helper updates the field, and the
    /// skb's sum, as each case needs. The addresses go through it as one
    /// pseudo-header difference. The ports (adjacent, one 32-bit word) count
    /// only in a complete checksum, and the program cannot see which kind the
    /// skb has (`__sk_buff` has no `ip_summed`), but the helper's result
    /// shows it: it adds the difference to a partial sum and takes it out of
    /// a complete checksum. So the field is read back, and a complete one
    /// gets the ports in place, as the helper would write them; when the
    /// result cannot tell (the addresses' difference is a one's-complement
    /// zero), a second helper call updates the ports as before.
    #[inline(always)]
    fn rewrite_l4_csum<A: Address>(
        &self,
        offset: usize,
        key: &FlowKeyOf<A>,
        flow: &FlowValueOf<A>,
    ) -> Option<()> {
        let before = load_u16(self, offset)?;
        let udp = key.proto == PROTO_UDP;
        // A zero UDP checksum ("none", IPv4) stays zero (as BPF_F_MARK_MANGLED_0 keeps it).
        if udp && before == 0 {
            return Some(());
        }
        let mangled_0 = if udp {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        // A rewritten UDP checksum is never 0 (it would mean "none").
        let mangle = |csum: u16| if udp && csum == 0 { 0xffff } else { csum };
        let addresses = csum::addr_diff(&key.src_addr_be, &flow.new_src_addr_be)
            + csum::addr_diff(&key.dst_addr_be, &flow.new_dst_addr_be);
        let diff = u32::from(csum::fold_sum(addresses));
        let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled_0;
        if key.src_addr_be.words().len() == 1 {
            self.l4_csum_replace(offset, 0, u64::from(diff), pseudo)
                .ok()?;
        } else if self
            .l4_csum_replace(offset, 0, u64::from(diff), pseudo | BPF_F_IPV6)
            .is_err()
        {
            // A kernel before BPF_F_IPV6.
            self.l4_csum_replace(offset, 0, u64::from(diff), pseudo)
                .ok()?;
        }
        let ports = |src: u16, dst: u16| u32::from(src) | (u32::from(dst) << 16);
        // Byte order: both words are the port bytes read as one native u32.
        let (old, new) = if cfg!(target_endian = "little") {
            (
                ports(key.src_port_be, key.dst_port_be),
                ports(flow.new_src_port_be, flow.new_dst_port_be),
            )
        } else {
            (
                ports(key.dst_port_be, key.src_port_be),
                ports(flow.new_dst_port_be, flow.new_src_port_be),
            )
        };
        let after = load_u16(self, offset)?;
        let (partial, complete) = csum::after_pseudo_diff(before, diff);
        let (partial, complete) = (mangle(partial), mangle(complete));
        if partial != complete {
            if after == partial {
                // The ports are in the data the device or GSO sums.
                return Some(());
            }
            if after == complete {
                return store_u16(self, offset, mangle(csum::kernel_replace4(after, old, new)));
            }
        }
        self.l4_csum_replace(offset, u64::from(old), u64::from(new), 4 | mangled_0)
            .ok()
    }

    #[inline(always)]
    fn as_xdp(&self) -> Option<&XdpContext> {
        None
    }

    #[inline(always)]
    fn options_tsval(&self, offset: u32, len: u32) -> u64 {
        tc_tcp_tsval(self.skb.skb, offset, len)
    }
}

/// Makes the headers the program reads linear (a GSO or GRO skb may carry
/// them partly in its pages): direct packet access sees the linear part only.
#[inline(always)]
pub fn pull_headers(ctx: &TcContext) {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    let len = ctx.len();
    if linear < HEADERS_MAX && len > linear {
        // Failure leaves the packet as it is: too short, it is passed.
        let _ = ctx.pull_data(len.min(HEADERS_MAX));
    }
}

/// The TCP timestamp value (TSval, host order) of the segment whose TCP
/// header is at `l4`, if it carries one. Options are walked as Linux's
/// `tcp_parse_options` walks them (Linux puts the timestamp at a fixed place
/// in its own segments, other stacks do not): NOPs are skipped, an option
/// of the wrong size is skipped, and the end-of-list option, a length below
/// 2, an option running past the header or past the packet end the walk
/// with no timestamp.
///
/// The walk itself is a global BPF function of the context (`xdp_tcp_tsval`,
/// `tc_tcp_tsval`): the verifier checks a global function once, on its own,
/// where an inlined walk was checked at each call site of each header-layout
/// copy, every path of its variable-step loop each time.
#[inline(always)]
pub fn tcp_tsval<C: Packet>(ctx: &C, l4: usize) -> Option<u32> {
    tsval_of_word(tcp_tsval_word(ctx, l4))
}

/// `tcp_tsval` as its walk returns it: `TSVAL_FOUND` | TSval, or 0.
#[inline(always)]
pub fn tcp_tsval_word<C: Packet>(ctx: &C, l4: usize) -> u64 {
    let Some(header_words) = read::<u8>(ctx, l4 + TCP_DOFF).map(|b| b >> 4) else {
        return 0;
    };
    // Wraps to a huge length (refused) for a header shorter than 5 words.
    let options_len = (usize::from(header_words) * 4).wrapping_sub(TCP_HDR_MIN);
    if options_len == 0 || options_len > TCP_OPTIONS_MAX {
        return 0;
    }
    ctx.options_tsval((l4 + TCP_HDR_MIN) as u32, options_len as u32)
}

/// The bit of a TSval word that says a TSval was found (in the low 32 bits):
/// a global function returns a scalar.
pub const TSVAL_FOUND: u64 = 1 << 32;

/// The packet bytes from `p` to `p + N` lie before `end`. The sum is made
/// in assembly so that the verifier sees `p` plus a constant, the form from
/// which it learns a range for `p` (the compiler would otherwise fold the
/// constant into `p`'s variable offset, or turn `p + 1 > end` into `p >=
/// end`, which tells the verifier nothing).
#[inline(always)]
fn in_packet<const N: u64>(p: usize, end: usize) -> bool {
    let last: usize;
    // SAFETY: register arithmetic only.
    unsafe {
        core::arch::asm!(
            "{t} = {p}",
            "{t} += {n}",
            p = in(reg) p,
            n = const N,
            t = out(reg) last,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    last <= end
}

/// `tcp_tsval`'s walk over the `len` option bytes at `offset` of the packet
/// from `data` to `end` (linear data, read directly).
#[inline(always)]
fn walk_options(data: usize, end: usize, offset: u32, len: u32) -> Option<u32> {
    // Both are unknown to the verifier here (the offset is at most
    // Ethernet, a VLAN tag, an IPv6 header and a TCP header). Read back
    // opaquely, so that the checks bound the values used after them (the
    // compiler would check copies it proved equal).
    // SAFETY: reads of locals.
    let (offset, len) = unsafe {
        (
            core::ptr::read_volatile(&(offset as usize)),
            core::ptr::read_volatile(&(len as usize)),
        )
    };
    if len == 0 || len > TCP_OPTIONS_MAX || offset > HEADERS_MAX as usize {
        return None;
    }
    let options = data + offset;
    let mut at = 0;
    // Bounded: every turn moves `at` on by at least a byte, and `len` is
    // at most 40.
    while at < len {
        let p = options + at;
        // Kind and length: with fewer than two bytes left in the packet,
        // no option (and no timestamp) follows anyway.
        if !in_packet::<2>(p, end) {
            return None;
        }
        // SAFETY: `in_packet` checked both bytes.
        let (kind, opt_len) = unsafe { (*(p as *const u8), usize::from(*((p + 1) as *const u8))) };
        if kind == TCP_OPT_EOL {
            return None;
        }
        if kind == TCP_OPT_NOP {
            at += 1;
            continue;
        }
        if opt_len < 2 || at + opt_len > len {
            return None;
        }
        if kind == TCP_OPT_TIMESTAMP && opt_len == TCP_OPT_TIMESTAMP_LEN {
            if !in_packet::<6>(p, end) {
                return None;
            }
            // SAFETY: `in_packet` checked the 4 bytes after kind and length.
            return Some(u32::from_be(unsafe {
                ((p + 2) as *const u32).read_unaligned()
            }));
        }
        at += opt_len;
    }
    None
}

#[inline(always)]
fn tsval_result(tsval: Option<u32>) -> u64 {
    tsval.map_or(0, |v| TSVAL_FOUND | u64::from(v))
}

/// The TSval a TSval word holds (`tsval_result`'s inverse).
#[inline(always)]
pub fn tsval_of_word(word: u64) -> Option<u32> {
    (word & TSVAL_FOUND != 0).then_some(word as u32)
}

/// `tcp_tsval`'s walk for XDP over the `len` option bytes at `offset`: see
/// `tcp_tsval` (`TSVAL_FOUND` | TSval, or 0).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdp_tcp_tsval(ctx: *mut xdp_md, offset: u32, len: u32) -> u64 {
    let xdp = XdpContext::new(ctx);
    tsval_result(walk_options(xdp.data(), xdp.data_end(), offset, len))
}

/// `xdp_tcp_tsval` for the TC classifier, over the skb's linear data (what
/// the program reads directly).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tc_tcp_tsval(skb: *mut __sk_buff, offset: u32, len: u32) -> u64 {
    let tc = TcContext::new(skb);
    tsval_result(walk_options(tc.data(), tc.data_end(), offset, len))
}

/// A pointer to a `T` at `offset`, if the packet is long enough.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Packet, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
pub fn read<T: Copy>(ctx: &impl Packet, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies inside the packet.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
pub fn write<T>(ctx: &impl Packet, offset: usize, value: T) -> Option<()> {
    // SAFETY: ptr_at checked that the whole T lies inside the packet.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.write_unaligned(value) })
}

/// A 32-bit header word loaded in one instruction. LLVM's BPF target splits
/// a load it cannot prove aligned (`read_unaligned`) into four byte loads,
/// shifts and ors; the verifier allows a misaligned packet access (on
/// architectures with efficient unaligned access, x86 and arm64), so the
/// program asks for one. Packet memory only: stack accesses stay the
/// compiler's, which the verifier requires aligned.
#[inline(always)]
pub fn load_u32(ctx: &impl Packet, offset: usize) -> Option<u32> {
    let p = ptr_at::<u32>(ctx, offset)?;
    let value: u64;
    // SAFETY: ptr_at checked that the 4 bytes lie inside the packet.
    unsafe {
        core::arch::asm!(
            "{v} = *(u32 *)({p} + 0)",
            p = in(reg) p,
            v = lateout(reg) value,
            options(readonly, nostack, preserves_flags),
        );
    }
    Some(value as u32)
}

/// `N` consecutive words loaded as `load_u32` does, after one bounds check.
#[inline(always)]
pub fn load_u32s<const N: usize>(ctx: &impl Packet, offset: usize) -> Option<[u32; N]> {
    let p = ptr_at::<[u32; N]>(ctx, offset)?.cast::<u32>();
    let mut words = [0u32; N];
    for (i, word) in words.iter_mut().enumerate() {
        let value: u64;
        // SAFETY: ptr_at checked that all N words lie inside the packet.
        unsafe {
            core::arch::asm!(
                "{v} = *(u32 *)({p} + 0)",
                p = in(reg) p.add(i),
                v = lateout(reg) value,
                options(readonly, nostack, preserves_flags),
            );
        }
        *word = value as u32;
    }
    Some(words)
}

/// `load_u32`'s store, of `N` consecutive words after one bounds check.
#[inline(always)]
pub fn store_u32s<const N: usize>(ctx: &impl Packet, offset: usize, words: [u32; N]) -> Option<()> {
    let p = ptr_at::<[u32; N]>(ctx, offset)?.cast::<u32>();
    for (i, word) in words.into_iter().enumerate() {
        // SAFETY: ptr_at checked that all N words lie inside the packet.
        unsafe {
            core::arch::asm!(
                "*(u32 *)({p} + 0) = {v}",
                p = in(reg) p.add(i),
                v = in(reg) u64::from(word),
                options(nostack, preserves_flags),
            );
        }
    }
    Some(())
}

/// A 16-bit header field loaded in one instruction (see `load_u32`).
#[inline(always)]
pub fn load_u16(ctx: &impl Packet, offset: usize) -> Option<u16> {
    let p = ptr_at::<u16>(ctx, offset)?;
    let value: u64;
    // SAFETY: ptr_at checked that the 2 bytes lie inside the packet.
    unsafe {
        core::arch::asm!(
            "{v} = *(u16 *)({p} + 0)",
            p = in(reg) p,
            v = lateout(reg) value,
            options(readonly, nostack, preserves_flags),
        );
    }
    Some(value as u16)
}

/// `load_u16`'s store.
#[inline(always)]
pub fn store_u16(ctx: &impl Packet, offset: usize, value: u16) -> Option<()> {
    let p = ptr_at::<u16>(ctx, offset)?;
    // SAFETY: ptr_at checked that the 2 bytes lie inside the packet.
    unsafe {
        core::arch::asm!(
            "*(u16 *)({p} + 0) = {v}",
            p = in(reg) p,
            v = in(reg) u64::from(value),
            options(nostack, preserves_flags),
        );
    }
    Some(())
}
