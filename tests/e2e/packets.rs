//! The XDP program on raw packets (BPF_PROG_TEST_RUN), against maps programmed
//! by the agent's own loader: what it must rewrite, and what it must leave alone.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use gateway_agent::dataplane::loader::{AttachMode, FlowTimeouts, L4Dataplane};
use gateway_agent::model::{L4Listener, L4Protocol, WeightedEndpoint};
use gateway_tests::frames::*;
use gateway_tests::program_cost::{
    self, Family, enter_routed_netns, flow_key4, flow_key6, median_ns, syn_from,
};
use gateway_tests::test_run::*;
use gateway_tests::{require_root, unique};

fn checksums_valid(p: &[u8]) -> bool {
    let at = 34 + if p[23] == TCP { 16 } else { 6 };
    fold(sum16(&p[14..34], 0)) == 0 && u16::from_be_bytes([p[at], p[at + 1]]) == l4_checksum(p)
}

fn addr(p: &[u8], at: usize) -> (Ipv4Addr, u16) {
    let ip = Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    let port_at = if at == 26 { 34 } else { 36 };
    (ip, u16::from_be_bytes([p[port_at], p[port_at + 1]]))
}
fn src(p: &[u8]) -> (Ipv4Addr, u16) {
    addr(p, 26)
}
fn dst(p: &[u8]) -> (Ipv4Addr, u16) {
    addr(p, 30)
}

#[test]
fn a_syn_to_a_listener_is_rewritten_and_its_reply_translated_back() {
    if !require_root("a_syn_to_a_listener_is_rewritten") {
        return;
    }
    let loaded = load();
    let syn = packet(TCP, (CLIENT, 40000), (LISTENER, 9000), SYN, b"");
    let (action, out) = loaded.dataplane.test_run(&syn).expect("test run");
    assert_ne!(action, XDP_DROP);
    assert_ne!(action, XDP_ABORTED);
    assert_eq!(dst(&out), (BACKEND, 7000), "destination NAT");
    let (snat_addr, nat_port) = src(&out);
    assert!(
        (61000..=65535).contains(&nat_port),
        "source port from the NAT range: {nat_port}"
    );
    assert!(checksums_valid(&out), "checksums after rewrite: {out:x?}");

    // The backend's answer to the NAT address comes back as the listener's.
    let reply = packet(TCP, (BACKEND, 7000), (snat_addr, nat_port), SYN | ACK, b"");
    let (action, back) = loaded.dataplane.test_run(&reply).expect("test run");
    assert_ne!(action, XDP_DROP);
    assert_eq!(src(&back), (LISTENER, 9000));
    assert_eq!(dst(&back), (CLIENT, 40000));
    assert!(checksums_valid(&back));

    // Later segments of the flow (and retransmitted SYNs) take the same path.
    let data = packet(TCP, (CLIENT, 40000), (LISTENER, 9000), ACK, b"hello");
    let (_, out2) = loaded.dataplane.test_run(&data).expect("test run");
    assert_eq!(
        (src(&out2), dst(&out2)),
        ((snat_addr, nat_port), (BACKEND, 7000))
    );
    assert!(checksums_valid(&out2));
    assert_eq!(&out2[54..], b"hello", "payload untouched");

    let stats = loaded.dataplane.route_stats();
    let tcp = stats
        .iter()
        .find(|(r, _)| r.name == "tcp")
        .expect("tcp route")
        .1;
    assert_eq!((tcp.packets, tcp.new_flows), (3, 1));
}

/// The TC classifier's checksums: a test run's skb carries a complete
/// checksum (not CHECKSUM_PARTIAL), which the program must keep valid with
/// the ports in it; its partial-checksum side is `l4_tc`'s (real sockets
/// with offload). Many ports and payloads, so that the checksums take many
/// values, and a client address whose change sums to a one's-complement
/// zero (the program cannot tell partial from complete by the helper's
/// result then, and takes its other way).
#[test]
fn the_tc_programs_rewrites_keep_checksums_valid() {
    if !require_root("the_tc_programs_rewrites_keep_checksums_valid") {
        return;
    }
    let loaded = load_mode(AttachMode::Tc);
    let mut snat = None;
    for i in 0..300u16 {
        for proto in [TCP, UDP] {
            let client = (CLIENT, 20_000 + i);
            let flags = if proto == TCP { SYN } else { 0 };
            let (_, out) = loaded.run(&packet(
                proto,
                client,
                (LISTENER, 9000),
                flags,
                &i.to_be_bytes(),
            ));
            assert_eq!(dst(&out), (BACKEND, 7000));
            assert!(checksums_valid(&out), "{proto} {i}: {out:x?}");
            let reply = packet(proto, (BACKEND, 7000), src(&out), flags | ACK, b"answer");
            let (_, back) = loaded.run(&reply);
            assert_eq!((src(&back), dst(&back)), ((LISTENER, 9000), client));
            assert!(checksums_valid(&back), "{proto} {i} reply: {back:x?}");
            snat.get_or_insert(src(&out).0);

            let client6 = (CLIENT6, 20_000 + i);
            let (_, out) = loaded.run(&packet6(
                proto,
                client6,
                (LISTENER6, 9000),
                flags,
                &i.to_be_bytes(),
            ));
            assert_eq!(dst6(&out), (BACKEND6, 7000));
            assert!(checksum6_valid(&out), "{proto} {i} over IPv6: {out:x?}");
        }
    }
    // client + listener = source-NAT address + backend, in one's complement.
    let words = |a: Ipv4Addr| {
        let o = a.octets();
        u32::from(u16::from_be_bytes([o[0], o[1]])) + u32::from(u16::from_be_bytes([o[2], o[3]]))
    };
    let ones = |x: u32| x % 0xffff;
    let target = ones(words(snat.unwrap()) + words(BACKEND) + 2 * 0xffff - words(LISTENER));
    let low = ones(target + 0xffff - 0xc612) as u16;
    let client = Ipv4Addr::new(198, 18, (low >> 8) as u8, low as u8);
    for proto in [TCP, UDP] {
        let flags = if proto == TCP { SYN } else { 0 };
        let (_, out) = loaded.run(&packet(
            proto,
            (client, 40000),
            (LISTENER, 9000),
            flags,
            b"zero",
        ));
        assert_eq!(dst(&out), (BACKEND, 7000));
        assert_eq!(
            words(client) % 0xffff,
            ones(words(src(&out).0) + words(BACKEND) + 0xffff - words(LISTENER)) % 0xffff
        );
        assert!(
            checksums_valid(&out),
            "{proto}, addresses summing alike: {out:x?}"
        );
    }
    let mut unchecked = packet(UDP, (CLIENT, 5001), (LISTENER, 9000), 0, b"query");
    unchecked[40] = 0;
    unchecked[41] = 0;
    let (_, out) = loaded.run(&unchecked);
    assert_eq!(dst(&out), (BACKEND, 7000));
    assert_eq!(&out[40..42], &[0, 0], "a zero UDP checksum stays zero");
}

#[test]
fn udp_datagrams_open_flows_and_keep_checksums_valid() {
    if !require_root("udp_datagrams_open_flows") {
        return;
    }
    let loaded = load();
    let datagram = packet(UDP, (CLIENT, 5000), (LISTENER, 9000), 0, b"query");
    let (_, out) = loaded.dataplane.test_run(&datagram).expect("test run");
    assert_eq!(dst(&out), (BACKEND, 7000));
    assert!(checksums_valid(&out));
    // A zero UDP checksum means "none" and must stay zero.
    let mut unchecked = packet(UDP, (CLIENT, 5001), (LISTENER, 9000), 0, b"query");
    unchecked[40] = 0;
    unchecked[41] = 0;
    let (_, out) = loaded.dataplane.test_run(&unchecked).expect("test run");
    assert_eq!(dst(&out), (BACKEND, 7000));
    assert_eq!(&out[40..42], &[0, 0]);
}

#[test]
fn what_the_program_does_not_own_passes_untouched() {
    if !require_root("what_the_program_does_not_own_passes_untouched") {
        return;
    }
    let loaded = load();
    let syn = packet(TCP, (CLIENT, 40001), (LISTENER, 9000), SYN, b"");
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "not a listener port",
            packet(TCP, (CLIENT, 40001), (LISTENER, 9001), SYN, b""),
        ),
        (
            "not a listener address",
            packet(TCP, (CLIENT, 40001), (BACKEND, 9000), SYN, b""),
        ),
        (
            "TCP without SYN and no flow",
            packet(TCP, (CLIENT, 40002), (LISTENER, 9000), ACK, b"x"),
        ),
    ];
    let mut arp = syn.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    cases.push(("ARP", arp));
    let mut fragment = syn.clone();
    fragment[20] = 0x20; // More Fragments
    cases.push(("IPv4 fragment", fragment));
    let mut options = syn.clone();
    options[14] = 0x46; // IHL 6: options present
    cases.push(("IPv4 options", options));
    let mut icmp = syn.clone();
    icmp[23] = 1;
    cases.push(("ICMP", icmp));
    // Shorter than an Ethernet header the kernel refuses the test run itself.
    for len in 14..54 {
        cases.push(("truncated", syn[..len].to_vec()));
    }
    for (what, input) in cases {
        let (action, out) = loaded.dataplane.test_run(&input).expect("test run");
        assert_eq!(action, XDP_PASS, "{what} (len {})", input.len());
        assert_eq!(out, input, "{what} must not be modified");
    }
    let stats = loaded.dataplane.route_stats();
    assert!(
        stats.iter().all(|(_, s)| s.new_flows == 0),
        "no flow was opened: {stats:?}"
    );
}

#[test]
fn a_million_random_packets_never_abort_and_never_touch_foreign_traffic() {
    if !require_root("random_bytes_never_abort_the_program") {
        return;
    }
    let loaded = load();
    let bases = [
        packet(TCP, (CLIENT, 40003), (LISTENER, 9000), SYN, b"payload"),
        packet(UDP, (CLIENT, 5003), (LISTENER, 9000), 0, b"query"),
        packet(TCP, (BACKEND, 7000), (LISTENER, 61000), SYN | ACK, b""),
        packet6(TCP, (CLIENT6, 40003), (LISTENER6, 9000), SYN, b"payload"),
        packet6(UDP, (CLIENT6, 5003), (LISTENER6, 9000), 0, b"query"),
        packet6(TCP, (BACKEND6, 7000), (LISTENER6, 61000), SYN | ACK, b""),
        // TCP options: a SYN's, and a FIN's on the first base's flow.
        with_tcp_options(
            &packet(TCP, (CLIENT, 40004), (LISTENER, 9000), SYN, b""),
            1,
            &bsd_syn_options(7),
        ),
        with_tcp_options(
            &packet(TCP, (CLIENT, 40003), (LISTENER, 9000), FIN | ACK, b"x"),
            9,
            &linux_options(8),
        ),
    ];
    // xorshift: deterministic, so a failure reproduces.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let started = std::time::Instant::now();
    let mut foreign = 0u32;
    for round in 0..1_000_000u32 {
        let mut input = if round % 9 == 8 {
            (0..(next() % 128)).map(|_| next() as u8).collect()
        } else {
            let mut p = bases[(round % 9) as usize].clone();
            for _ in 0..(next() % 6 + 1) {
                let i = (next() as usize) % p.len();
                p[i] = next() as u8;
            }
            p.truncate(14 + (next() as usize) % (p.len() - 13));
            p
        };
        if input.len() < 14 {
            input.resize(14, 0); // the kernel refuses test runs shorter than an Ethernet header
        }
        let (action, out) = loaded.run(&input);
        assert!(
            matches!(action, 1..=4),
            "round {round}: action {action} for {input:x?}"
        );
        // Neither to a listener address nor from a backend (at the IPv4 and
        // at the IPv6 offsets): no listener or tracked flow can match it, so
        // it must come out as it went in.
        let not_ours4 = input.len() < 34
            || (input[30..34] != LISTENER.octets() && input[26..30] != BACKEND.octets());
        let not_ours6 = input.len() < 54
            || (input[38..54] != LISTENER6.octets() && input[22..38] != BACKEND6.octets());
        let not_ours = not_ours4 && not_ours6;
        if not_ours {
            foreign += 1;
            assert!(
                action == XDP_PASS && out == input,
                "round {round}: foreign packet touched: {input:x?}"
            );
        }
    }
    eprintln!(
        "1,000,000 random packets ({foreign} foreign) in {:?}",
        started.elapsed()
    );
    assert!(
        foreign > 100_000,
        "the run covers foreign traffic: {foreign}"
    );
}

#[test]
fn a_tcp_reset_ends_the_flow_in_both_directions() {
    if !require_root("a_tcp_reset_ends_the_flow") {
        return;
    }
    let loaded = load();
    let client = (CLIENT, 40100);
    let (_, out) = loaded.run(&packet(TCP, client, (LISTENER, 9000), SYN, b""));
    let nat = src(&out);
    let reply = packet(TCP, (BACKEND, 7000), nat, SYN | ACK, b"");
    assert_eq!(
        dst(&loaded.run(&reply).1),
        client,
        "tracked before the reset"
    );

    // The client's RST is forwarded, translated, and ends the flow.
    // (No interface: the FIB lookup fails and the rewritten RST is passed to the kernel.)
    let (_, out) = loaded.run(&packet(TCP, client, (LISTENER, 9000), RST | ACK, b""));
    assert_eq!(dst(&out), (BACKEND, 7000), "the RST itself is forwarded");
    assert!(checksums_valid(&out));
    assert_eq!(loaded.events(gateway_common::PacketEvent::FlowReset), 1);
    assert!(
        untouched(&loaded, &reply),
        "the reply direction is gone too"
    );
    assert!(
        untouched(&loaded, &packet(TCP, client, (LISTENER, 9000), ACK, b"x")),
        "the client direction is gone: the kernel answers it"
    );
    // A new SYN from the same client port opens a new flow.
    let (_, out) = loaded.run(&packet(TCP, client, (LISTENER, 9000), SYN, b""));
    assert_eq!(dst(&out), (BACKEND, 7000));
    assert_eq!(loaded.stats("tcp").new_flows, 2);
}

#[test]
fn fin_shortens_a_tcp_flow_and_idle_udp_flows_expire() {
    if !require_root("fin_shortens_a_tcp_flow") {
        return;
    }
    let short = 300_000_000;
    let loaded = load_with(
        &[
            listener(L4Protocol::Tcp, "tcp", &[(BACKEND, 1)]),
            listener(L4Protocol::Udp, "udp", &[(BACKEND, 1)]),
        ],
        FlowTimeouts {
            tcp_closing_ns: short,
            udp_idle_ns: short,
            ..FlowTimeouts::default()
        },
    );
    let (closing, open, udp) = ((CLIENT, 40200), (CLIENT, 40201), (CLIENT, 5200));
    loaded.run(&packet(TCP, closing, (LISTENER, 9000), SYN, b""));
    loaded.run(&packet(TCP, open, (LISTENER, 9000), SYN, b""));
    let (_, out) = loaded.run(&packet(UDP, udp, (LISTENER, 9000), 0, b"q"));
    let udp_nat = src(&out);
    let (_, out) = loaded.run(&packet(TCP, closing, (LISTENER, 9000), FIN | ACK, b""));
    assert_eq!(dst(&out), (BACKEND, 7000), "the FIN is forwarded");
    let last_ack = packet(TCP, closing, (LISTENER, 9000), ACK, b"");
    assert_eq!(
        dst(&loaded.run(&last_ack).1),
        (BACKEND, 7000),
        "a closing flow still forwards within its short timeout"
    );

    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        untouched(&loaded, &last_ack),
        "a closed TCP flow expires after the closing timeout"
    );
    let still_open = packet(TCP, open, (LISTENER, 9000), ACK, b"y");
    assert_eq!(
        dst(&loaded.run(&still_open).1),
        (BACKEND, 7000),
        "an idle TCP flow without FIN lives on"
    );
    let udp_reply = packet(UDP, (BACKEND, 7000), udp_nat, 0, b"a");
    assert!(
        untouched(&loaded, &udp_reply),
        "an idle UDP flow expired: its late reply is not translated"
    );
    let flows = loaded.stats("udp").new_flows;
    loaded.run(&packet(UDP, udp, (LISTENER, 9000), 0, b"q2"));
    assert_eq!(
        loaded.stats("udp").new_flows,
        flows + 1,
        "the next datagram opens a new flow"
    );
    assert!(loaded.events(gateway_common::PacketEvent::FlowExpired) >= 2);
}

const BACKEND_B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
const BACKEND_C: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 4);

#[test]
fn weights_70_20_10_hold_over_3000_new_flows_and_removing_one_moves_only_its_flows() {
    if !require_root("weights_70_20_10_hold") {
        return;
    }
    let weighted = [(BACKEND, 70), (BACKEND_B, 20), (BACKEND_C, 10)];
    let mut loaded = load_with(
        &[listener(L4Protocol::Tcp, "w", &weighted)],
        FlowTimeouts::default(),
    );
    let flows = 3000u32;
    let pick = |loaded: &Loaded, i: u32| -> Ipv4Addr {
        let (action, out) = loaded.run(&syn_from(i));
        assert_ne!(action, XDP_DROP, "flow {i}");
        dst(&out).0
    };
    let before: Vec<Ipv4Addr> = (0..flows).map(|i| pick(&loaded, i)).collect();
    for (backend, weight) in weighted {
        let share = before.iter().filter(|b| **b == backend).count() as f64 / f64::from(flows);
        let want = weight as f64 / 100.0;
        assert!(
            (share - want).abs() <= 0.03,
            "{backend}: {share:.3} of new flows, weight {want}"
        );
    }
    let stats = loaded.stats("w");
    assert_eq!((stats.new_flows, stats.packets), (3000, 3000));

    // A second set of flows, ended by RST, shows where new flows go.
    let probe: Vec<u32> = (10_000..12_000).collect();
    let probe_before: Vec<Ipv4Addr> = probe.iter().map(|i| pick(&loaded, *i)).collect();
    for i in &probe {
        let mut rst = syn_from(*i);
        rst[47] = RST | ACK;
        let fixed = l4_checksum(&rst);
        rst[50..52].copy_from_slice(&fixed.to_be_bytes());
        loaded.run(&rst);
    }

    // C goes away.
    loaded
        .dataplane
        .apply(&[listener(L4Protocol::Tcp, "w", &weighted[..2])])
        .expect("apply without C");
    // Tracked flows: A's and B's keep their backend (a retransmitted SYN
    // follows the flow); C's were removed with C and start over on A or B.
    for (i, was) in before.iter().enumerate() {
        let now = pick(&loaded, i as u32);
        if *was == BACKEND_C {
            assert_ne!(now, BACKEND_C, "flow {i} left C");
        } else {
            assert_eq!(now, *was, "flow {i} keeps its backend");
        }
    }
    // New flows: those that went to A or B still do (Maglev moves few others).
    let (mut kept, mut eligible) = (0, 0);
    for (i, was) in probe.iter().zip(&probe_before) {
        let now = pick(&loaded, *i);
        assert_ne!(now, BACKEND_C);
        if *was != BACKEND_C {
            eligible += 1;
            kept += usize::from(now == *was);
        }
    }
    let moved = 1.0 - kept as f64 / f64::from(eligible);
    eprintln!("after removing C, {moved:.4} of new flows not on C changed backend");
    assert!(moved <= 0.02, "{moved:.4} of A/B flows moved");
}

/// `p` with one 802.1Q tag (VLAN 100) after the MAC addresses.
fn tagged(p: &[u8]) -> Vec<u8> {
    let mut out = p[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00, 0x00, 100]);
    out.extend_from_slice(&p[12..]);
    out
}

/// The tag removed again, for the helpers that read untagged offsets.
fn untagged(p: &[u8]) -> Vec<u8> {
    let mut out = p[..12].to_vec();
    out.extend_from_slice(&p[16..]);
    out
}

#[test]
fn a_vlan_tagged_flow_is_rewritten_behind_its_tag() {
    if !require_root("a_vlan_tagged_flow_is_rewritten") {
        return;
    }
    let loaded = load();
    let client = (CLIENT, 40300);
    let syn = tagged(&packet(TCP, client, (LISTENER, 9000), SYN, b""));
    let (_, out) = loaded.run(&syn);
    assert_eq!(&out[12..16], &[0x81, 0x00, 0x00, 100], "the tag is kept");
    let out = untagged(&out);
    assert_eq!(dst(&out), (BACKEND, 7000));
    assert!(checksums_valid(&out), "checksums behind the tag");
    let nat = src(&out);

    let reply = tagged(&packet(TCP, (BACKEND, 7000), nat, SYN | ACK, b""));
    let back = untagged(&loaded.run(&reply).1);
    assert_eq!((src(&back), dst(&back)), ((LISTENER, 9000), client));
    assert!(checksums_valid(&back));
    assert_eq!(loaded.stats("tcp").new_flows, 1);

    let mut arp = syn.clone();
    arp[16..18].copy_from_slice(&0x0806u16.to_be_bytes());
    assert!(untouched(&loaded, &arp), "a tagged non-IPv4 frame");
    let mut double = syn.clone();
    double[16..18].copy_from_slice(&0x8100u16.to_be_bytes());
    assert!(untouched(&loaded, &double), "two tags are not ours");
    let other = tagged(&packet(TCP, (CLIENT, 40301), (LISTENER, 9001), SYN, b""));
    assert!(untouched(&loaded, &other), "tagged, to no listener");
    for len in 14..syn.len() {
        let mut short = tagged(&packet(TCP, (CLIENT, 40302), (LISTENER, 9000), SYN, b""));
        short.truncate(len);
        assert!(
            untouched(&loaded, &short),
            "truncated tagged SYN, {len} bytes"
        );
    }
}

#[test]
fn the_programs_own_time_per_packet_stays_within_bounds() {
    if !require_root("the_programs_own_time_per_packet") {
        return;
    }
    let cost = program_cost::measure(AttachMode::Auto, Family::Ipv4);
    eprintln!("{cost}");
    cost.check();
}

/// The same code as a TC classifier (`--attach tc`), on an skb.
#[test]
fn the_tc_programs_own_time_per_packet_stays_within_bounds() {
    if !require_root("the_tc_programs_own_time_per_packet") {
        return;
    }
    let cost = program_cost::measure(AttachMode::Tc, Family::Ipv4);
    eprintln!("{cost}");
    cost.check();
}

/// An ICMP error from `from` to `to` quoting the first 28 bytes of `quoted`'s
/// IP packet (an Ethernet frame built by `packet`).
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0x00]; // MTU 1280 for code 4
    icmp.extend_from_slice(&quoted[14..14 + 28]);
    let csum = fold(sum16(&icmp, 0));
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut p = vec![0u8; 14];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 2, 0, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&to.octets());
    let csum = fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&icmp);
    p
}

#[test]
fn icmp_errors_about_a_tracked_flow_reach_the_flows_other_end_translated() {
    if !require_root("icmp_errors_about_a_tracked_flow") {
        return;
    }
    let loaded = load();
    let router = Ipv4Addr::new(198, 18, 1, 9);
    for (proto, client) in [(TCP, (CLIENT, 40500)), (UDP, (CLIENT, 5500))] {
        let first = packet(proto, client, (LISTENER, 9000), SYN, b"data");
        let (_, sent) = loaded.run(&first);
        let nat = src(&sent);
        // A router towards the backend: "fragmentation needed" to the NAT address.
        let error = icmp_error(router, nat.0, 3, 4, &sent);
        let (action, out) = loaded.run(&error);
        assert_ne!(action, XDP_DROP);
        assert_eq!(
            &out[26..30],
            &router.octets(),
            "the router stays the sender"
        );
        assert_eq!(&out[30..34], &CLIENT.octets(), "to the client");
        assert_eq!(fold(sum16(&out[14..34], 0)), 0, "outer IP checksum");
        assert_eq!(fold(sum16(&out[34..], 0)), 0, "ICMP checksum");
        let quote = &out[42..];
        assert_eq!(
            quote[..20],
            first[14..34],
            "{proto}: the quote is the client's own packet, header checksum included"
        );
        assert_eq!(quote[20..24], first[34..38], "{proto}: quoted ports");
        if proto == UDP {
            assert_eq!(quote[26..28], first[40..42], "quoted UDP checksum");
        }
        // And from the client's side: a router there tells the backend.
        let (_, reply) = loaded.run(&packet(proto, (BACKEND, 7000), nat, SYN | ACK, b"r"));
        let error = icmp_error(router, LISTENER, 11, 0, &reply);
        let (_, out) = loaded.run(&error);
        assert_eq!(&out[30..34], &BACKEND.octets(), "to the backend");
        assert_eq!(fold(sum16(&out[34..], 0)), 0, "ICMP checksum");
        // The quote: what the backend sent, to the NAT address and port.
        assert_eq!(&out[54..58], &BACKEND.octets());
        assert_eq!(&out[58..62], &nat.0.octets());
        assert_eq!(
            &out[62..66],
            &[&7000u16.to_be_bytes()[..], &nat.1.to_be_bytes()[..]].concat()[..]
        );
        assert_eq!(fold(sum16(&out[42..62], 0)), 0, "quoted IP header checksum");
    }
    assert_eq!(
        loaded.events(gateway_common::PacketEvent::IcmpErrorTranslated),
        4
    );
    // Errors about no tracked flow, and ICMP that is no error, pass untouched.
    let stranger = packet(TCP, (CLIENT, 1), (BACKEND, 7000), SYN, b"");
    assert!(untouched(
        &loaded,
        &icmp_error(router, CLIENT, 3, 4, &stranger)
    ));
    let mut echo = icmp_error(router, LISTENER, 8, 0, &stranger);
    echo[34] = 8;
    assert!(untouched(&loaded, &echo));
}

fn checksum6_valid(p: &[u8]) -> bool {
    let at = 54 + if p[20] == TCP { 16 } else { 6 };
    u16::from_be_bytes([p[at], p[at + 1]]) == l4_checksum6(p)
}

fn src6(p: &[u8]) -> (Ipv6Addr, u16) {
    let ip: [u8; 16] = p[22..38].try_into().unwrap();
    (ip.into(), u16::from_be_bytes([p[54], p[55]]))
}

fn dst6(p: &[u8]) -> (Ipv6Addr, u16) {
    let ip: [u8; 16] = p[38..54].try_into().unwrap();
    (ip.into(), u16::from_be_bytes([p[56], p[57]]))
}

#[test]
fn an_ipv6_syn_is_rewritten_and_its_reply_translated_back() {
    if !require_root("an_ipv6_syn_is_rewritten") {
        return;
    }
    let loaded = load();
    let client = (CLIENT6, 40000);
    let syn = packet6(TCP, client, (LISTENER6, 9000), SYN, b"");
    let (action, out) = loaded.run(&syn);
    assert!(matches!(action, XDP_PASS | 3 | 4), "action {action}");
    assert_eq!(dst6(&out), (BACKEND6, 7000), "destination NAT");
    let (snat_addr, nat_port) = src6(&out);
    assert!(
        (61000..=65535).contains(&nat_port),
        "source port from the NAT range: {nat_port}"
    );
    assert!(checksum6_valid(&out), "checksum after rewrite: {out:x?}");
    assert_eq!(
        &out[14..22],
        &syn[14..22],
        "version, length, next header, hop limit kept"
    );

    let reply = packet6(TCP, (BACKEND6, 7000), (snat_addr, nat_port), SYN | ACK, b"");
    let (action, back) = loaded.run(&reply);
    assert_ne!(action, XDP_DROP);
    assert_eq!((src6(&back), dst6(&back)), ((LISTENER6, 9000), client));
    assert!(checksum6_valid(&back));

    let data = packet6(TCP, client, (LISTENER6, 9000), ACK, b"hello");
    let (_, out2) = loaded.run(&data);
    assert_eq!(
        (src6(&out2), dst6(&out2)),
        ((snat_addr, nat_port), (BACKEND6, 7000))
    );
    assert!(checksum6_valid(&out2));
    assert_eq!(&out2[74..], b"hello", "payload untouched");

    let tcp6 = loaded.stats("tcp6");
    assert_eq!((tcp6.packets, tcp6.new_flows), (3, 1));
    assert_eq!(
        loaded.stats("tcp").packets,
        0,
        "the IPv4 route is another id"
    );

    // The client's RST ends the flow in both directions.
    let (_, out) = loaded.run(&packet6(TCP, client, (LISTENER6, 9000), RST | ACK, b""));
    assert_eq!(dst6(&out), (BACKEND6, 7000), "the RST itself is forwarded");
    assert!(untouched(&loaded, &reply), "the reply direction is gone");
    assert!(untouched(&loaded, &data), "the client direction is gone");
}

#[test]
fn ipv6_udp_keeps_checksums_valid_and_a_zero_checksum_is_the_kernels() {
    if !require_root("ipv6_udp_keeps_checksums_valid") {
        return;
    }
    let loaded = load();
    let mut nat = None;
    // Many payloads: the rewritten checksum covers every value, 0xffff included.
    for i in 0..300u16 {
        let datagram = packet6(
            UDP,
            (CLIENT6, 5000 + i),
            (LISTENER6, 9000),
            0,
            &i.to_be_bytes(),
        );
        let (_, out) = loaded.run(&datagram);
        assert_eq!(dst6(&out), (BACKEND6, 7000));
        assert!(checksum6_valid(&out), "datagram {i}: {out:x?}");
        assert_ne!(&out[60..62], &[0, 0], "never a zero checksum");
        nat.get_or_insert(src6(&out));
    }
    let nat = nat.unwrap();
    let answer = packet6(UDP, (BACKEND6, 7000), nat, 0, b"answer");
    let (_, back) = loaded.run(&answer);
    assert_eq!(
        (src6(&back), dst6(&back)),
        ((LISTENER6, 9000), (CLIENT6, 5000))
    );
    assert!(checksum6_valid(&back));
    assert_eq!(loaded.stats("udp6").new_flows, 300);

    let mut unchecked = packet6(UDP, (CLIENT6, 6000), (LISTENER6, 9000), 0, b"query");
    unchecked[60] = 0;
    unchecked[61] = 0;
    assert!(
        untouched(&loaded, &unchecked),
        "zero UDP checksum over IPv6"
    );
    assert_eq!(loaded.stats("udp6").new_flows, 300);
}

/// An ICMPv6 neighbour solicitation for `target`, from `from`.
fn neighbour_solicitation(from: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut p = packet6(UDP, (from, 0), (target, 0), 0, &[0; 24]);
    p[20] = 58; // ICMPv6
    p[21] = 255;
    let icmp = &mut p[54..];
    icmp.fill(0);
    icmp[0] = 135;
    icmp[8..24].copy_from_slice(&target.octets());
    p
}

#[test]
fn ipv6_the_program_does_not_own_passes_untouched() {
    if !require_root("ipv6_the_program_does_not_own_passes_untouched") {
        return;
    }
    let loaded = load();
    let syn = packet6(TCP, (CLIENT6, 40001), (LISTENER6, 9000), SYN, b"");
    let datagram = packet6(UDP, (CLIENT6, 5001), (LISTENER6, 9000), 0, b"query");
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "not a listener port",
            packet6(TCP, (CLIENT6, 40001), (LISTENER6, 9001), SYN, b""),
        ),
        (
            "not a listener address",
            packet6(TCP, (CLIENT6, 40001), (BACKEND6, 9000), SYN, b""),
        ),
        (
            "TCP without SYN and no flow",
            packet6(TCP, (CLIENT6, 40002), (LISTENER6, 9000), ACK, b"x"),
        ),
        (
            "the IPv4 listener's port over IPv6 to another address",
            packet6(UDP, (CLIENT6, 5001), (BACKEND6, 9000), 0, b"query"),
        ),
        (
            "ICMPv6 neighbour solicitation for the listener address",
            neighbour_solicitation(CLIENT6, LISTENER6),
        ),
    ];
    let mut version = syn.clone();
    version[14] = 0x40;
    cases.push(("IPv6 EtherType, IPv4 version", version));
    // Extension headers before TCP: hop-by-hop (0), routing (43), fragment
    // (44), destination options (60), each 8 bytes, in front of the TCP header.
    for (what, kind) in [
        ("hop-by-hop options", 0u8),
        ("routing header", 43),
        ("fragment header", 44),
        ("destination options", 60),
    ] {
        let mut p = syn[..54].to_vec();
        p[20] = kind;
        let payload_len = u16::from_be_bytes([p[18], p[19]]) + 8;
        p[18..20].copy_from_slice(&payload_len.to_be_bytes());
        p.extend_from_slice(&[TCP, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&syn[54..]);
        cases.push((what, p));
    }
    for len in 14..syn.len() {
        cases.push(("truncated SYN", syn[..len].to_vec()));
    }
    for len in 14..62 {
        cases.push(("truncated datagram", datagram[..len].to_vec()));
    }
    let mut tagged_ns = tagged(&neighbour_solicitation(CLIENT6, LISTENER6));
    cases.push(("tagged neighbour solicitation", tagged_ns.clone()));
    tagged_ns.truncate(60);
    cases.push(("tagged, truncated", tagged_ns));
    for (what, input) in cases {
        let (action, out) = loaded.run(&input);
        assert_eq!(action, XDP_PASS, "{what} (len {})", input.len());
        assert_eq!(out, input, "{what} must not be modified");
    }
    let stats = loaded.dataplane.route_stats();
    assert!(
        stats.iter().all(|(_, s)| s.new_flows == 0),
        "no flow was opened: {stats:?}"
    );
    assert!(loaded.events(gateway_common::PacketEvent::PassedFragmentOrOptions) >= 4);
}

#[test]
fn a_vlan_tagged_ipv6_flow_is_rewritten_behind_its_tag() {
    if !require_root("a_vlan_tagged_ipv6_flow") {
        return;
    }
    let loaded = load();
    let client = (CLIENT6, 40300);
    let (action, out) = loaded.run(&tagged(&packet6(TCP, client, (LISTENER6, 9000), SYN, b"")));
    assert_eq!(
        action, XDP_PASS,
        "tagged: rewritten, the kernel forwards it"
    );
    assert_eq!(&out[12..16], &[0x81, 0x00, 0x00, 100], "the tag is kept");
    let out = untagged(&out);
    assert_eq!(dst6(&out), (BACKEND6, 7000));
    assert!(checksum6_valid(&out));
    let reply = tagged(&packet6(TCP, (BACKEND6, 7000), src6(&out), SYN | ACK, b""));
    let back = untagged(&loaded.run(&reply).1);
    assert_eq!((src6(&back), dst6(&back)), ((LISTENER6, 9000), client));
    assert!(checksum6_valid(&back));
}

#[test]
fn the_programs_own_time_per_ipv6_packet_stays_within_bounds() {
    if !require_root("the_programs_own_time_per_ipv6_packet") {
        return;
    }
    let cost = program_cost::measure(AttachMode::Auto, Family::Ipv6);
    eprintln!("{cost}");
    cost.check();
}

#[test]
fn the_tc_programs_own_time_per_ipv6_packet_stays_within_bounds() {
    if !require_root("the_tc_programs_own_time_per_ipv6_packet") {
        return;
    }
    let cost = program_cost::measure(AttachMode::Tc, Family::Ipv6);
    eprintln!("{cost}");
    cost.check();
}

#[test]
fn an_ipv6_backend_removed_and_added_back_moves_only_its_own_flows() {
    if !require_root("an_ipv6_backend_removed") {
        return;
    }
    let backend_b = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 3);
    let with = |backends: &[Ipv6Addr]| L4Listener {
        backends: backends
            .iter()
            .map(|addr| WeightedEndpoint {
                addr: (*addr, 7000).into(),
                weight: 1,
            })
            .collect(),
        ..listener6(L4Protocol::Tcp, "tcp6")
    };
    let mut loaded = load_with(&[with(&[BACKEND6, backend_b])], FlowTimeouts::default());
    let syn = |port: u16| packet6(TCP, (CLIENT6, port), (LISTENER6, 9000), SYN, b"");
    let data = |port: u16| packet6(TCP, (CLIENT6, port), (LISTENER6, 9000), ACK, b"x");
    let before: Vec<Ipv6Addr> = (0..200)
        .map(|i| dst6(&loaded.run(&syn(30_000 + i)).1).0)
        .collect();
    let on_b = before.iter().filter(|a| **a == backend_b).count();
    assert!(
        (60..=140).contains(&on_b),
        "two equal backends: {on_b} of 200 on B"
    );

    loaded
        .dataplane
        .apply(&[with(&[BACKEND6])])
        .expect("remove backend B");
    for (i, backend) in before.iter().enumerate() {
        let packet = data(30_000 + i as u16);
        if *backend == backend_b {
            assert!(untouched(&loaded, &packet), "flow {i} to B is gone");
        } else {
            assert_eq!(dst6(&loaded.run(&packet).1).0, BACKEND6, "flow {i} keeps A");
        }
    }
    for i in 0..50 {
        assert_eq!(
            dst6(&loaded.run(&syn(40_000 + i)).1).0,
            BACKEND6,
            "new flows on A only"
        );
    }

    // B back: written into the other half of the route's tables.
    loaded
        .dataplane
        .apply(&[with(&[BACKEND6, backend_b])])
        .expect("add backend B back");
    let again = (0..200)
        .filter(|i| dst6(&loaded.run(&syn(50_000 + i)).1).0 == backend_b)
        .count();
    assert!(
        (60..=140).contains(&again),
        "{again} of 200 new flows on B again"
    );
}

/// An ICMPv6 error from `from` to `to` quoting all of `quoted`'s IPv6 packet
/// (an Ethernet frame built by `packet6`), its checksum over the pseudo-header.
fn icmp6_error(from: Ipv6Addr, to: Ipv6Addr, kind: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, 0, 0, 0, 0, 0, 0x05, 0x00]; // MTU 1280 for packet too big
    icmp.extend_from_slice(&quoted[14..]);
    let mut p = packet6(UDP, (from, 0), (to, 0), 0, &vec![0; icmp.len() - 8]);
    p[20] = 58;
    p[54..].copy_from_slice(&icmp);
    let csum = icmp6_checksum(&p);
    p[56..58].copy_from_slice(&csum.to_be_bytes());
    p
}

/// The ICMPv6 checksum `p` should carry (computed with its field zeroed).
fn icmp6_checksum(p: &[u8]) -> u16 {
    let mut icmp = p[54..].to_vec();
    icmp[2] = 0;
    icmp[3] = 0;
    let mut pseudo = p[22..54].to_vec();
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    fold(sum16(&icmp, sum16(&pseudo, 0)))
}

#[test]
fn icmpv6_errors_about_a_tracked_flow_reach_the_flows_other_end_translated() {
    if !require_root("icmpv6_errors_about_a_tracked_flow") {
        return;
    }
    let loaded = load();
    let router = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 9);
    for (proto, client) in [(TCP, (CLIENT6, 40500)), (UDP, (CLIENT6, 5500))] {
        let first = packet6(proto, client, (LISTENER6, 9000), SYN, b"data");
        let (_, sent) = loaded.run(&first);
        let nat = src6(&sent);
        // A router towards the backend: "packet too big" to the NAT address.
        let (action, out) = loaded.run(&icmp6_error(router, nat.0, 2, &sent));
        assert_eq!(action, XDP_PASS, "translated, for the kernel to route");
        assert_eq!(
            &out[22..38],
            &router.octets(),
            "the router stays the sender"
        );
        assert_eq!(&out[38..54], &CLIENT6.octets(), "to the client");
        let csum = u16::from_be_bytes([out[56], out[57]]);
        assert_eq!(csum, icmp6_checksum(&out), "{proto}: ICMPv6 checksum");
        let quote = &out[62..];
        assert_eq!(
            quote[..44],
            first[14..58],
            "{proto}: the client's own header and ports"
        );
        if proto == UDP {
            assert_eq!(quote[46..48], first[60..62], "quoted UDP checksum");
        }
        // And from the client's side: a router there tells the backend.
        let (_, reply) = loaded.run(&packet6(proto, (BACKEND6, 7000), nat, SYN | ACK, b"r"));
        let (_, out) = loaded.run(&icmp6_error(router, LISTENER6, 3, &reply));
        assert_eq!(&out[38..54], &BACKEND6.octets(), "to the backend");
        assert_eq!(u16::from_be_bytes([out[56], out[57]]), icmp6_checksum(&out));
        // The quote: what the backend sent, to the NAT address and port.
        assert_eq!(&out[70..86], &BACKEND6.octets());
        assert_eq!(&out[86..102], &nat.0.octets());
        let ports = [7000u16.to_be_bytes(), nat.1.to_be_bytes()].concat();
        assert_eq!(&out[102..106], &ports[..]);
    }
    assert_eq!(
        loaded.events(gateway_common::PacketEvent::IcmpErrorTranslated),
        4
    );
    // Errors about no tracked flow, ICMPv6 that is no error, and truncated
    // errors pass untouched.
    let stranger = packet6(TCP, (CLIENT6, 1), (BACKEND6, 7000), SYN, b"");
    assert!(untouched(
        &loaded,
        &icmp6_error(router, CLIENT6, 1, &stranger)
    ));
    assert!(untouched(
        &loaded,
        &icmp6_error(router, LISTENER6, 128, &stranger)
    ));
    let (_, sent) = loaded.run(&packet6(TCP, (CLIENT6, 40600), (LISTENER6, 9000), SYN, b""));
    let error = icmp6_error(router, src6(&sent).0, 1, &sent);
    for len in 14..106 {
        assert!(
            untouched(&loaded, &error[..len]),
            "truncated error, {len} bytes"
        );
    }
}

/// An IPv6 SYN from client address/port number `i` (distinct for every i < 65,536).
fn syn6_from(i: u32) -> Vec<u8> {
    let client = Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 1 + (i % 200) as u16);
    let port = 20_000 + (i / 200) as u16 * 100 + (i % 100) as u16;
    packet6(TCP, (client, port), (LISTENER6, 9000), SYN, b"")
}

#[test]
fn ipv6_weights_70_20_10_hold_over_3000_new_flows() {
    if !require_root("ipv6_weights_70_20_10_hold") {
        return;
    }
    let weighted = [
        (BACKEND6, 70),
        (Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 3), 20),
        (Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 4), 10),
    ];
    let listener = L4Listener {
        backends: endpoints(&weighted),
        ..listener6(L4Protocol::Tcp, "w6")
    };
    let loaded = load_with(&[listener], FlowTimeouts::default());
    let flows = 3000u32;
    let picked: Vec<Ipv6Addr> = (0..flows)
        .map(|i| {
            let (action, out) = loaded.run(&syn6_from(i));
            assert_ne!(action, XDP_DROP, "flow {i}");
            assert!(checksum6_valid(&out), "flow {i}");
            dst6(&out).0
        })
        .collect();
    for (backend, weight) in weighted {
        let share = picked.iter().filter(|b| **b == backend).count() as f64 / f64::from(flows);
        let want = weight as f64 / 100.0;
        eprintln!("{backend}: {share:.3} of new IPv6 flows, weight {want}");
        assert!(
            (share - want).abs() <= 0.03,
            "{backend}: {share:.3} of new flows, weight {want}"
        );
    }
    let stats = loaded.stats("w6");
    assert_eq!((stats.new_flows, stats.packets), (3000, 3000));
    // Tracked: a retransmitted SYN keeps its backend.
    for i in (0..flows).step_by(7) {
        assert_eq!(dst6(&loaded.run(&syn6_from(i)).1).0, picked[i as usize]);
    }
    assert_eq!(loaded.stats("w6").new_flows, 3000);
}

/// One backend's NAT ports (4,536 per backend and source-NAT address) taken
/// one by one: new flows beyond them are dropped and counted, and a new flow
/// costs more as the ports fill up (more probes), but a refused one stays
/// within a few microseconds (32 probes, lookups after the first insert).
#[test]
fn new_flows_past_a_backends_nat_ports_are_dropped_after_bounded_probing() {
    if !require_root("new_flows_past_a_backends_nat_ports") {
        return;
    }
    let _netns = enter_routed_netns("natfull");
    let loaded = load();
    let flows = 5200u32;
    let (mut few_taken, mut most_taken, mut all_taken) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..flows {
        let time = loaded
            .dataplane
            .time_run(&syn_from(i), 1)
            .expect("timed run");
        match i {
            0..500 => few_taken.push(time),
            3000..3500 => most_taken.push(time),
            4800.. => all_taken.push(time),
            _ => {}
        }
    }
    let dropped = loaded.events(gateway_common::PacketEvent::DroppedNatPortsExhausted);
    let opened = loaded.stats("tcp").new_flows;
    assert_eq!(opened + dropped, u64::from(flows));
    // Probing finds nearly every free port before giving up.
    assert!((4500..=4536).contains(&opened), "{opened} flows got a port");
    let all_taken = median_ns(all_taken);
    eprintln!(
        "new flow, raw ns (medians of 500 single runs): ports under 11% taken {}, 66-77% taken {}, all taken (dropped) {all_taken}",
        median_ns(few_taken),
        median_ns(most_taken),
    );
    assert!(all_taken <= 20_000, "a refused new flow: {all_taken} ns");
}

/// `p` (a frame of `packet` or `packet6`, TCP, without options) with
/// sequence number `seq` and the TCP `options` (a multiple of 4 bytes),
/// lengths and checksums made right.
fn with_tcp_options(p: &[u8], seq: u32, options: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "options fill whole words");
    let v6 = p[12..14] == [0x86, 0xdd];
    let l4 = if v6 { 54 } else { 34 };
    let mut q = p[..l4 + 20].to_vec();
    q.extend_from_slice(options);
    q.extend_from_slice(&p[l4 + 20..]);
    q[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
    q[l4 + 12] = ((5 + options.len() / 4) as u8) << 4;
    if v6 {
        let len = (q.len() - 54) as u16;
        q[18..20].copy_from_slice(&len.to_be_bytes());
        let csum = l4_checksum6(&q);
        q[70..72].copy_from_slice(&csum.to_be_bytes());
    } else {
        let len = (q.len() - 14) as u16;
        q[16..18].copy_from_slice(&len.to_be_bytes());
        q[24..26].copy_from_slice(&[0, 0]);
        let csum = fold(sum16(&q[14..34], 0));
        q[24..26].copy_from_slice(&csum.to_be_bytes());
        let csum = l4_checksum(&q);
        q[50..52].copy_from_slice(&csum.to_be_bytes());
    }
    q
}

/// A timestamp option (kind 8, length 10) with `tsval` and a zero TSecr.
fn timestamp(tsval: u32) -> Vec<u8> {
    let mut option = vec![8, 10];
    option.extend_from_slice(&tsval.to_be_bytes());
    option.extend_from_slice(&[0; 4]);
    option
}

/// A Linux SYN's options: MSS, SACK permitted, timestamp, NOP, window scale.
fn linux_syn_options(tsval: u32) -> Vec<u8> {
    [
        &[2, 4, 0x05, 0xb4, 4, 2][..],
        &timestamp(tsval),
        &[1, 3, 3, 7],
    ]
    .concat()
}

/// A FreeBSD/macOS-style SYN's options: MSS, NOP, window scale, NOP, NOP,
/// timestamp, SACK permitted, end of list.
fn bsd_syn_options(tsval: u32) -> Vec<u8> {
    [
        &[2, 4, 0x05, 0xb4, 1, 3, 3, 6, 1, 1][..],
        &timestamp(tsval),
        &[4, 2, 0, 0],
    ]
    .concat()
}

/// The options of a Linux segment after the handshake: NOP, NOP, timestamp.
fn linux_options(tsval: u32) -> Vec<u8> {
    [&[1, 1][..], &timestamp(tsval)].concat()
}

/// The TCP source port of an untagged IPv4 or IPv6 frame.
fn src_port(p: &[u8]) -> u16 {
    let l4 = if p[12..14] == [0x86, 0xdd] { 54 } else { 34 };
    u16::from_be_bytes([p[l4], p[l4 + 1]])
}

/// The NAT port a new flow's first probe tries (`forward::open_flow`), from
/// the flow hash of its SYN's FLOWS key.
fn first_nat_port(hash: u32) -> u16 {
    gateway_common::NAT_PORT_MIN + ((hash >> 8) % u32::from(gateway_common::NAT_PORT_COUNT)) as u16
}

/// One address family's segments for `time_wait_reuse`.
struct Segments {
    /// Client port, TCP flags, payload: a segment from the client to the listener.
    client: fn(u16, u8, &[u8]) -> Vec<u8>,
    /// The backend's segment with `flags` to the source of `forwarded` (a
    /// client segment as the program forwarded it).
    backend: fn(&[u8], u8) -> Vec<u8>,
    /// The flow hash of a client segment's FLOWS key.
    hash: fn(&[u8]) -> u32,
}

const SEGMENTS4: Segments = Segments {
    client: |port, flags, payload| packet(TCP, (CLIENT, port), (LISTENER, 9000), flags, payload),
    backend: |forwarded, flags| packet(TCP, (BACKEND, 7000), src(forwarded), flags, b""),
    hash: |p| gateway_common::flow_hash(&flow_key4(p)),
};

const SEGMENTS6: Segments = Segments {
    client: |port, flags, payload| packet6(TCP, (CLIENT6, port), (LISTENER6, 9000), flags, payload),
    backend: |forwarded, flags| packet6(TCP, (BACKEND6, 7000), src6(forwarded), flags, b""),
    hash: |p| gateway_common::flow_hash(&flow_key6(p)),
};

/// Whether the program forwarded a packet (rewritten, to the FIB's next hop
/// or to the kernel), rather than dropping it or faulting.
fn forwarded(loaded: &Loaded, action: u32) -> bool {
    matches!(action, XDP_REDIRECT | TC_ACT_REDIRECT) || action == loaded.pass
}

/// A connection from client port `port` that the backend closes first: SYN,
/// the backend's FIN, then the client's FIN carrying `fin_options` (and
/// `fin_seq`, one byte of data). Returns the flow's NAT port.
fn closed_by_the_backend_first(
    loaded: &Loaded,
    segments: &Segments,
    port: u16,
    syn_options: &[u8],
    (fin_seq, fin_options): (u32, &[u8]),
) -> u16 {
    let syn = with_tcp_options(&(segments.client)(port, SYN, b""), 100, syn_options);
    let (action, out) = loaded.run(&syn);
    assert!(forwarded(loaded, action), "the SYN opens a flow: {action}");
    let nat_port = src_port(&out);
    let (action, _) = loaded.run(&(segments.backend)(&out, FIN | ACK));
    assert!(forwarded(loaded, action), "the backend's FIN: {action}");
    let fin = with_tcp_options(
        &(segments.client)(port, FIN | ACK, b"x"),
        fin_seq,
        fin_options,
    );
    let (action, _) = loaded.run(&fin);
    assert!(forwarded(loaded, action), "the client's FIN: {action}");
    nat_port
}

/// Two client ports not yet `taken` whose SYN probes `nat_port` first;
/// taken now.
fn ports_probing_first(segments: &Segments, nat_port: u16, taken: &mut Vec<u16>) -> [u16; 2] {
    let probes_first =
        |p: &u16| first_nat_port((segments.hash)(&(segments.client)(*p, SYN, b""))) == nat_port;
    let found: Vec<u16> = (1024..u16::MAX)
        .filter(|p| !taken.contains(p))
        .filter(probes_first)
        .take(2)
        .collect();
    taken.extend(&found);
    found
        .try_into()
        .expect("two client ports probing the NAT port first")
}

/// The NAT port of a new flow opened by `syn`.
fn nat_port_of(loaded: &Loaded, syn: &[u8]) -> u16 {
    let (action, out) = loaded.run(syn);
    assert!(forwarded(loaded, action), "the SYN opens a flow: {action}");
    src_port(&out)
}

/// A backend that closed first holds its connection in TIME_WAIT; a new
/// flow whose first probe is that NAT port takes it only if the TIME_WAIT
/// accepts its SYN (as Linux's `tcp_timewait_state_process`): a timestamp
/// newer than the client's FIN's, or, for a client without timestamps, a
/// sequence number after its FIN. Else it gets another port (the backend
/// would answer the SYN with the old connection's ACK). Also once the flow
/// has expired (closing timeout) while the TIME_WAIT lasts.
fn time_wait_reuse(loaded: &Loaded, segments: &Segments, syn_options: fn(u32) -> Vec<u8>) {
    let (first, second) = (20_000, 20_001);
    let mut taken = vec![first, second];
    // Timestamps: the client's FIN carried TSval 5,000.
    let nat_port = closed_by_the_backend_first(
        loaded,
        segments,
        first,
        &syn_options(1_000),
        (7, &linux_options(5_000)),
    );
    let [older, newer] = ports_probing_first(segments, nat_port, &mut taken);
    let syn = |port, seq, options: &[u8]| {
        with_tcp_options(&(segments.client)(port, SYN, b""), seq, options)
    };
    assert_ne!(
        nat_port_of(loaded, &syn(older, 9, &syn_options(4_999))),
        nat_port,
        "an older timestamp (PAWS would reject it) gets another port, whatever its sequence number"
    );
    assert_eq!(
        nat_port_of(loaded, &syn(newer, 1, &syn_options(5_001))),
        nat_port,
        "a newer timestamp reuses the TIME_WAIT's port"
    );

    // No timestamps: the client's FIN (sequence number 7,000, one byte of
    // data) leaves the TIME_WAIT expecting 7,002 next.
    let nat_port = closed_by_the_backend_first(loaded, segments, second, &[], (7_000, &[]));
    let [at, after] = ports_probing_first(segments, nat_port, &mut taken);
    assert_ne!(
        nat_port_of(loaded, &syn(at, 7_002, &[])),
        nat_port,
        "a sequence number not after the old connection's gets another port"
    );
    assert_eq!(
        nat_port_of(loaded, &syn(after, 7_003, &[])),
        nat_port,
        "a sequence number after it reuses the port"
    );
}

#[test]
fn a_syn_a_backend_time_wait_accepts_reuses_its_nat_port_and_one_it_refuses_gets_another() {
    if !require_root("a_syn_a_backend_time_wait_accepts") {
        return;
    }
    for mode in [AttachMode::Auto, AttachMode::Tc] {
        let loaded = load_mode(mode);
        time_wait_reuse(&loaded, &SEGMENTS4, linux_syn_options);
        time_wait_reuse(&loaded, &SEGMENTS6, bsd_syn_options);
    }
    // A flow past its closing timeout still has the backend's TIME_WAIT
    // behind it (60 s on Linux): the same choice, also when the client's
    // next SYN from the same port finds the expired flow (its reply entry,
    // the port's TIME_WAIT, stays).
    let short = 200_000_000;
    let loaded = load_with(
        &[listener(L4Protocol::Tcp, "tcp", &[(BACKEND, 1)])],
        FlowTimeouts {
            tcp_closing_ns: short,
            ..FlowTimeouts::default()
        },
    );
    let closed = |port| {
        closed_by_the_backend_first(
            &loaded,
            &SEGMENTS4,
            port,
            &linux_syn_options(1),
            (7, &linux_options(5_000)),
        )
    };
    let (nat_port, same_client_nat_port) = (closed(30_000), closed(30_001));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let [older, newer] = ports_probing_first(&SEGMENTS4, nat_port, &mut vec![30_000, 30_001]);
    let syn = |port, tsval| {
        with_tcp_options(
            &(SEGMENTS4.client)(port, SYN, b""),
            1,
            &linux_syn_options(tsval),
        )
    };
    assert_ne!(nat_port_of(&loaded, &syn(older, 4_000)), nat_port);
    assert_eq!(nat_port_of(&loaded, &syn(newer, 6_000)), nat_port);
    assert_ne!(
        nat_port_of(&loaded, &syn(30_001, 4_000)),
        same_client_nat_port,
        "an older timestamp from the same client port"
    );
    assert!(loaded.events(gateway_common::PacketEvent::FlowExpired) >= 2);
}

/// The TCP option walk on the client's FIN, read back from the flow's
/// entry: the timestamp wherever Linux would find it; no timestamp (and so
/// the sequence number after the FIN) for options Linux would stop at; no
/// fault and a forwarded FIN for every layout, a truncated one included.
#[test]
fn the_tcp_option_walk_finds_timestamps_where_linux_does_and_survives_odd_options() {
    if !require_root("the_tcp_option_walk") {
        return;
    }
    let loaded = load();
    let flows = PinnedMap::open(&loaded.pin_dir.join(gateway_common::maps::FLOWS));
    let ts = timestamp(0x0102_0304);
    let seq = 0xffff_fff0;
    // Options, and whether the walk finds the timestamp.
    let cases: [(&str, Vec<u8>, bool); 12] = [
        (
            "Linux: NOP, NOP, timestamp",
            linux_options(0x0102_0304),
            true,
        ),
        ("a Linux SYN's", linux_syn_options(0x0102_0304), true),
        (
            "BSD SYN's, timestamp at byte 10",
            bsd_syn_options(0x0102_0304),
            true,
        ),
        (
            "after a SACK block",
            [&[1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2][..], &[1, 1], &ts].concat(),
            true,
        ),
        (
            "a timestamp of the wrong size skipped, the next one taken",
            [&[8, 6, 9, 9, 9, 9][..], &ts].concat(),
            true,
        ),
        ("end of list first", [&[0, 1][..], &ts].concat(), false),
        ("an option of length 0", [&[3, 0][..], &ts].concat(), false),
        ("an option of length 1", [&[3, 1][..], &ts].concat(), false),
        ("an option past the header", vec![1, 1, 3, 10], false),
        (
            "the timestamp cut by the header's end",
            [&[1, 1, 1, 1, 1, 1, 1, 1][..], &ts[..4]].concat(),
            false,
        ),
        ("NOPs only", vec![1; 40], false),
        ("none", vec![], false),
    ];
    for (i, (what, options, found)) in cases.iter().enumerate() {
        let port = 41_000 + i as u16;
        loaded.run(&packet(TCP, (CLIENT, port), (LISTENER, 9000), SYN, b""));
        let fin = with_tcp_options(
            &packet(TCP, (CLIENT, port), (LISTENER, 9000), FIN | ACK, b"xy"),
            seq,
            options,
        );
        let (action, _) = loaded.run(&fin);
        assert!(forwarded(&loaded, action), "{what}: action {action}");
        let flow: gateway_common::FlowValue = flows.lookup(&flow_key4(&fin)).expect("the flow");
        let expected = if *found {
            (gateway_common::FLOW_MARK_TSVAL, 0x0102_0304)
        } else {
            // Two bytes of data and the FIN, across the wrap.
            (gateway_common::FLOW_MARK_SEQ, seq.wrapping_add(3))
        };
        let kinds = gateway_common::FLOW_MARK_TSVAL | gateway_common::FLOW_MARK_SEQ;
        assert_eq!(
            (flow.flags & kinds, flow.time_wait_mark),
            expected,
            "{what}"
        );
    }

    // Headers that lie: a data offset below the fixed header's 5 words, and
    // one past the packet's end. Forwarded, no fault, no timestamp.
    let odd = |port: u16, options: &[u8], edit: fn(&mut Vec<u8>)| {
        loaded.run(&packet(TCP, (CLIENT, port), (LISTENER, 9000), SYN, b""));
        let mut fin = with_tcp_options(
            &packet(TCP, (CLIENT, port), (LISTENER, 9000), FIN | ACK, b""),
            seq,
            options,
        );
        edit(&mut fin);
        let (action, _) = loaded.run(&fin);
        assert!(forwarded(&loaded, action), "action {action} for {fin:x?}");
        let flow: gateway_common::FlowValue = flows.lookup(&flow_key4(&fin)).expect("the flow");
        assert_eq!(flow.flags & gateway_common::FLOW_MARK_TSVAL, 0, "{fin:x?}");
    };
    odd(41_100, &[], |fin| fin[46] = 4 << 4);
    odd(41_101, &[1; 8], |fin| fin[46] = 15 << 4);
    // Cut inside the timestamp option, before its TSval.
    odd(41_102, &linux_syn_options(1), |fin| {
        fin.truncate(fin.len() - 12)
    });
}

/// Pinned FLOWS maps an older agent might have left with the same key and
/// value sizes and capacity but of another kind (a plain hash) or with other
/// flags (an LRU with per-CPU lists): the loader replaces them with the map
/// the program declares instead of adopting them, and new flows work.
#[test]
fn a_pinned_flows_map_of_another_kind_or_flags_is_replaced_not_adopted() {
    if !require_root("a_pinned_flows_map_of_another_kind") {
        return;
    }
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    const BPF_F_NO_COMMON_LRU: u32 = 2;
    for (map_type, flags) in [
        (BPF_MAP_TYPE_HASH, 0),
        (BPF_MAP_TYPE_LRU_HASH, BPF_F_NO_COMMON_LRU),
    ] {
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique("gwt-packets-"));
        std::fs::create_dir_all(&pin_dir).expect("pin directory");
        let flows = pin_dir.join(gateway_common::maps::FLOWS);
        let stale = PinnedMap::create(&flows, map_type, flags);
        assert_eq!(stale.info(), (map_type, flags));
        let mut dataplane =
            L4Dataplane::load_with(&[], AttachMode::Auto, &pin_dir, FlowTimeouts::default())
                .expect("load the XDP program");
        dataplane
            .apply(&[listener(L4Protocol::Tcp, "tcp", &[(BACKEND, 1)])])
            .expect("program the maps");
        let loaded = Loaded {
            dataplane,
            pin_dir,
            pass: XDP_PASS,
        };
        let pinned = PinnedMap::open(&flows);
        assert_eq!(
            pinned.info(),
            (BPF_MAP_TYPE_LRU_HASH, 0),
            "{map_type} {flags}"
        );
        assert_ne!(pinned.id(), stale.id());
        let (action, out) = loaded.run(&packet(TCP, (CLIENT, 40500), (LISTENER, 9000), SYN, b""));
        assert_ne!(action, XDP_DROP);
        assert_eq!(dst(&out), (BACKEND, 7000));
        assert_eq!(loaded.stats("tcp").new_flows, 1);
    }
}
