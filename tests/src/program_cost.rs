//! The L4 program's own time per packet from BPF_PROG_TEST_RUN: XDP or TC,
//! IPv4 or IPv6, a tracked flow's packet and a new flow's first packet. The
//! `packets` tests and `cargo xtask bench l4` (through the `program-cost`
//! binary) measure with this one code.

use std::net::Ipv4Addr;

use gateway_agent::dataplane::loader::{AttachMode, FlowTimeouts};
use gateway_agent::model::{L4Listener, L4Protocol};

use crate::frames::{ACK, SYN, TCP, packet, packet6};
use crate::test_run::*;
use crate::{Netns, unique};

/// A SYN from client address/port number `i` (distinct for every i < 60,000).
pub fn syn_from(i: u32) -> Vec<u8> {
    let client = Ipv4Addr::new(198, 18, 2 + (i / 30_000) as u8, 1 + (i % 200) as u8);
    let port = 20_000 + (i % 30_000 / 200) as u16 * 100 + (i % 100) as u16;
    packet(TCP, (client, port), (LISTENER, 9000), SYN, b"")
}

/// The address family of the timed packets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }
}

/// The name of an attach mode's program, as the figures are printed.
pub fn hook_name(mode: AttachMode) -> &'static str {
    if mode == AttachMode::Tc { "TC" } else { "XDP" }
}

/// One measurement of the program of one attach mode on one family's packets.
pub struct Cost {
    pub mode: AttachMode,
    pub family: Family,
    /// Single runs: a tracked flow, a new flow, a packet to no listener.
    pub single: ProgramCost,
    /// A tracked flow with `repeat` (the ping-pong).
    pub repeat: RepeatCost,
}

impl Cost {
    /// Regression bounds, far above what this machine measures (the goals
    /// are reported by `cargo xtask bench l4`, not asserted).
    pub fn check(&self) {
        self.single.check();
        self.repeat.check();
    }
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (hook, family) = (hook_name(self.mode), self.family.name());
        writeln!(f, "{hook} {family} {}", self.single)?;
        write!(f, "{hook} {family} {}", self.repeat)
    }
}

/// Times the program of `mode` on `family`'s packets, in a network namespace
/// of its own that this thread enters (and stays in: run it on a thread of
/// its own when more follows).
pub fn measure(mode: AttachMode, family: Family) -> Cost {
    let prefix = match (mode == AttachMode::Tc, family) {
        (false, Family::Ipv4) => "cost4",
        (false, Family::Ipv6) => "cost6",
        (true, Family::Ipv4) => "tcost4",
        (true, Family::Ipv6) => "tcost6",
    };
    let _netns = enter_routed_netns(prefix);
    let loaded = load_cost(mode);
    let (single, repeat) = match family {
        Family::Ipv4 => measure4(&loaded),
        Family::Ipv6 => measure6(&loaded),
    };
    Cost {
        mode,
        family,
        single,
        repeat,
    }
}

/// `frames::packet` or `packet6`: protocol, source, destination, TCP flags, payload.
type Frame<T> = fn(u8, (T, u16), (T, u16), u8, &[u8]) -> Vec<u8>;

/// One family's timed packets: how to build them, and their addresses.
struct Packets<T, A> {
    frame: Frame<T>,
    client: T,
    listener: T,
    /// `load_cost`'s ping-pong listener and its route.
    routed_listener: T,
    route: &'static str,
    pingpong: &'static str,
    /// The family's FLOWS map and key.
    flows: &'static str,
    flow_key: fn(&[u8]) -> gateway_common::FlowKeyOf<A>,
}

/// IPv4 packets (in a routed namespace).
fn measure4(loaded: &Loaded) -> (ProgramCost, RepeatCost) {
    let packets = Packets {
        frame: packet,
        client: CLIENT,
        listener: LISTENER,
        routed_listener: ROUTED_LISTENER,
        route: "tcp",
        pingpong: "pingpong",
        flows: gateway_common::maps::FLOWS,
        flow_key: flow_key4,
    };
    measure_family(
        loaded,
        packets,
        (0..COST_RUNS).map(|i| syn_from(30_000 + i)),
    )
}

/// IPv6 packets (in a routed namespace).
fn measure6(loaded: &Loaded) -> (ProgramCost, RepeatCost) {
    let packets = Packets {
        frame: packet6,
        client: CLIENT6,
        listener: LISTENER6,
        routed_listener: ROUTED_LISTENER6,
        route: "tcp6",
        pingpong: "pingpong6",
        flows: gateway_common::maps::FLOWS6,
        flow_key: flow_key6,
    };
    let new_flows = (0..COST_RUNS as u16)
        .map(|i| packet6(TCP, (CLIENT6, 20_000 + i), (LISTENER6, 9000), SYN, b""));
    measure_family(loaded, packets, new_flows)
}

/// A tracked flow's packet and `new_flows` in single runs, then the tracked
/// ping-pong with `repeat`.
fn measure_family<T: Copy, A: Copy + Default + PartialEq + std::fmt::Debug>(
    loaded: &Loaded,
    p: Packets<T, A>,
    new_flows: impl Iterator<Item = Vec<u8>>,
) -> (ProgramCost, RepeatCost) {
    let client = (p.client, 40400);
    loaded.run(&(p.frame)(TCP, client, (p.listener, 9000), SYN, b""));
    let tracked = (p.frame)(TCP, client, (p.listener, 9000), ACK, &[0; 64]);
    let foreign = (p.frame)(TCP, client, (p.listener, 9999), ACK, &[0; 64]);
    let single = ProgramCost::measure(loaded, p.route, &tracked, new_flows, &foreign);
    let (client, listener) = ((p.client, 40600), (p.routed_listener, 9000));
    let repeat = RepeatCost::measure(
        loaded,
        p.pingpong,
        [SYN, ACK].map(|flags| (p.frame)(TCP, client, listener, flags, &[0; 64])),
        p.flows,
        p.flow_key,
    );
    (single, repeat)
}

/// `load_mode`'s listeners and a TCP listener on ROUTED_LISTENER(6):9000 to
/// BACKEND(6):7000 (routes `pingpong` and `pingpong6`), for `RepeatCost`.
pub fn load_cost(mode: AttachMode) -> Loaded {
    let routed = |addr: std::net::IpAddr, name: &str, backend: std::net::IpAddr| L4Listener {
        addr,
        port: 9000,
        protocol: L4Protocol::Tcp,
        route: route(name),
        backends: endpoints(&[(backend, 1)]),
    };
    let mut listeners = listeners();
    listeners.extend([
        routed(ROUTED_LISTENER.into(), "pingpong", BACKEND.into()),
        routed(ROUTED_LISTENER6.into(), "pingpong6", BACKEND6.into()),
    ]);
    load_in(mode, &listeners, FlowTimeouts::default())
}

/// Moves this test's thread into a new network namespace where the FIB
/// resolves the clients and backends (IPv4 and IPv6) to a neighbour: timed
/// packets then take the whole forwarding path (FIB answer, MACs, redirect)
/// whatever the host's own routes are. Load the program after this: the
/// source-NAT addresses come from the namespace's routes.
pub fn enter_routed_netns(prefix: &str) -> Netns {
    let netns = Netns::new(prefix);
    let (client_side, backend_side) = (unique("gwc"), unique("gwb"));
    for (dev, addr4, addr6, peer4, peer6) in [
        (&client_side, "198.18.0.1/24", "fd00::1/64", CLIENT, CLIENT6),
        (
            &backend_side,
            "198.18.1.1/24",
            "fd00:0:0:1::1/64",
            BACKEND,
            BACKEND6,
        ),
    ] {
        netns.run(&[
            "ip",
            "link",
            "add",
            dev,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{dev}p"),
        ]);
        netns.run(&["ip", "addr", "add", addr4, "dev", dev]);
        netns.run(&["ip", "addr", "add", addr6, "dev", dev, "nodad"]);
        netns.run(&["ip", "link", "set", dev, "up"]);
        netns.run(&["ip", "link", "set", &format!("{dev}p"), "up"]);
        for peer in [peer4.to_string(), peer6.to_string()] {
            netns.run(&[
                "ip",
                "neigh",
                "replace",
                &peer,
                "lladdr",
                "02:00:00:00:00:02",
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
    }
    let client_side_peer = [
        ("198.18.9.0/24", CLIENT.to_string()),
        ("fd00:0:0:9::/64", CLIENT6.to_string()),
    ];
    for (prefix, via) in client_side_peer {
        netns.run(&[
            "ip",
            "route",
            "add",
            prefix,
            "via",
            &via,
            "dev",
            &client_side,
        ]);
    }
    netns.run(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"]);
    netns.run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    netns.enter().expect("enter the namespace");
    netns
}

/// Timed runs per figure of `ProgramCost`.
pub const COST_RUNS: u32 = 2000;

/// The forwarding program's time per packet from BPF_PROG_TEST_RUN, raw and
/// net of what the test run costs around an empty program of the same type
/// (`EmptyProgram`).
///
/// A run rewrites its packet in place and the kernel does not restore it
/// between repetitions: with `repeat` > 1 a tracked packet is tracked only
/// the first time (then it is the rewritten packet, to no listener), and a
/// SYN opens a flow only the first time. So tracked and new flows are timed
/// one run at a time (the kernel copies the packet in afresh for each), as
/// the median of `COST_RUNS` runs; only a packet the program passes untouched
/// is timed with `repeat`.
pub struct ProgramCost {
    /// Medians of single runs: a tracked flow's packet, a new flow's first
    /// packet, and the empty program on the same tracked packet.
    tracked: u64,
    new_flow: u64,
    empty_single: u64,
    /// The same runs' interquartile means: the test-run clock ticks in steps
    /// of about 10 ns here, which a median cannot see below.
    tracked_iqm: f64,
    new_flow_iqm: f64,
    empty_iqm: f64,
    /// Per run over `COST_RUNS * 50` repetitions: a packet to no listener,
    /// and the empty program.
    foreign: u64,
    empty_repeat: u64,
}

impl ProgramCost {
    fn measure(
        loaded: &Loaded,
        route: &str,
        tracked: &[u8],
        new_flows: impl Iterator<Item = Vec<u8>>,
        foreign: &[u8],
    ) -> Self {
        let empty = EmptyProgram::load(loaded.pass);
        let before = loaded.stats(route);
        let forwarded = |l: &Loaded| l.events(gateway_common::PacketEvent::Redirected);
        let forwarded_before = forwarded(loaded);
        // Interleaved, so that both see the same machine load.
        let (mut tracked_times, mut empty_times, mut new_times) =
            (Vec::new(), Vec::new(), Vec::new());
        for new_flow in new_flows {
            let time = |p: &[u8]| loaded.dataplane.time_run(p, 1).expect("timed run");
            tracked_times.push(time(tracked));
            empty_times.push(empty.time_run(tracked, 1));
            new_times.push(time(&new_flow));
        }
        let runs = tracked_times.len() as u64;
        let after = loaded.stats(route);
        // Every timed run forwarded its packet (FIB, MACs, redirect): a
        // tracked one, or a new flow.
        assert_eq!(after.new_flows - before.new_flows, runs, "new flows");
        assert_eq!(after.packets - before.packets, 2 * runs, "packets");
        assert_eq!(forwarded(loaded) - forwarded_before, 2 * runs);

        let repeat = COST_RUNS * 50;
        let foreign_time = loaded
            .dataplane
            .time_run(foreign, repeat)
            .expect("timed run");
        assert!(untouched(loaded, foreign), "the foreign packet is not ours");
        ProgramCost {
            tracked_iqm: interquartile_mean_ns(&tracked_times),
            new_flow_iqm: interquartile_mean_ns(&new_times),
            empty_iqm: interquartile_mean_ns(&empty_times),
            tracked: median_ns(tracked_times),
            new_flow: median_ns(new_times),
            empty_single: median_ns(empty_times),
            foreign: foreign_time.as_nanos() as u64,
            empty_repeat: empty.time_run(foreign, repeat).as_nanos() as u64,
        }
    }

    /// A tracked flow's packet, ns net of the empty program (median of single runs).
    pub fn tracked_net(&self) -> u64 {
        self.tracked.saturating_sub(self.empty_single)
    }

    /// A new flow's first packet, ns net of the empty program (median of single runs).
    pub fn new_flow_net(&self) -> u64 {
        self.new_flow.saturating_sub(self.empty_single)
    }

    /// Regression bounds on the net figures, far above what this machine
    /// measures even when loaded (the goals are in README "Performance").
    fn check(&self) {
        let net = |raw: u64, empty: u64| raw.saturating_sub(empty);
        assert!(net(self.tracked, self.empty_single) <= 1000, "{self}");
        assert!(net(self.new_flow, self.empty_single) <= 5000, "{self}");
        assert!(net(self.foreign, self.empty_repeat) <= 500, "{self}");
    }
}

impl std::fmt::Display for ProgramCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let net = |raw: u64, empty: u64| raw.saturating_sub(empty);
        write!(
            f,
            "program time per packet, raw / net of the empty program's ns: \
             tracked flow {} / {}, new flow {} / {} (medians of {COST_RUNS} single runs; \
             empty {}; interquartile means: tracked {:.1} / {:.1}, new {:.1} / {:.1}, \
             empty {:.1}), to no listener {} / {} (repeat {}; empty {})",
            self.tracked,
            net(self.tracked, self.empty_single),
            self.new_flow,
            net(self.new_flow, self.empty_single),
            self.empty_single,
            self.tracked_iqm,
            self.tracked_iqm - self.empty_iqm,
            self.new_flow_iqm,
            self.new_flow_iqm - self.empty_iqm,
            self.empty_iqm,
            self.foreign,
            net(self.foreign, self.empty_repeat),
            COST_RUNS * 50,
            self.empty_repeat,
        )
    }
}

/// Repetitions per round of `RepeatCost`, even: the ping-pong ends on the
/// packet it started with.
pub const REPEAT: u32 = 100_000;
/// Rounds of `RepeatCost`, each with the empty program's round after it.
pub const REPEAT_ROUNDS: usize = 7;

/// A tracked packet's time per repetition with `repeat`, the method,
/// in which every repetition forwards a tracked flow's packet.
///
/// The kernel does not restore the packet between repetitions, so a tracked
/// packet A (client → listener), forwarded as B (source-NAT address and port
/// → backend), comes back to the program as B. The test gives B a FLOWS entry
/// of its own, written with the agent's map types, that rewrites B back into
/// A (as a reply's entry rewrites a reply): A's and B's entries take turns,
/// and each repetition does a tracked packet's whole work (FLOWS lookup,
/// rewrite, checksums, counters, next hop from the cache, redirect), with
/// the flow's entries, the next hops and the program warm in the cache.
/// Every round checks that it did: the route counted `REPEAT` packets and no
/// new flow, `REPEAT` packets were redirected and no other event moved, and
/// the packet is A again. A new flow cannot be timed this way: from the
/// second repetition on, its packet is tracked (`ProgramCost` times it one
/// run at a time).
pub struct RepeatCost {
    /// Per repetition, each round: the forwarding program and the empty one.
    rounds: Vec<(u64, u64)>,
}

impl RepeatCost {
    /// `syn` opens the flow in `route` whose packet `tracked` is timed;
    /// `flows` names its family's FLOWS map.
    fn measure<A: Copy + Default + PartialEq + std::fmt::Debug>(
        loaded: &Loaded,
        route: &str,
        [syn, tracked]: [Vec<u8>; 2],
        flows: &str,
        flow_key: fn(&[u8]) -> gateway_common::FlowKeyOf<A>,
    ) -> Self {
        let redirect = if loaded.pass == TC_ACT_UNSPEC {
            TC_ACT_REDIRECT
        } else {
            XDP_REDIRECT
        };
        assert_eq!(loaded.run(&syn).0, redirect, "the SYN opens a flow");
        let tracked = &tracked[..];
        let flows = PinnedMap::open(&loaded.pin_dir.join(flows));
        let (action, forwarded) = loaded.run(tracked);
        assert_eq!(action, redirect, "the tracked packet is forwarded");
        let (a, b) = (flow_key(tracked), flow_key(&forwarded));
        let original: gateway_common::FlowValueOf<A> =
            flows.lookup(&a).expect("the tracked packet's flow");
        assert_eq!(
            (b.src_addr_be, b.dst_addr_be, b.src_port_be, b.dst_port_be),
            (
                original.new_src_addr_be,
                original.new_dst_addr_be,
                original.new_src_port_be,
                original.new_dst_port_be
            ),
            "forwarded as its flow entry says"
        );
        let back_to_a = gateway_common::FlowValueOf {
            new_src_addr_be: a.src_addr_be,
            new_dst_addr_be: a.dst_addr_be,
            new_src_port_be: a.src_port_be,
            new_dst_port_be: a.dst_port_be,
            route_id: original.route_id,
            flags: 0,
            time_wait_mark: 0,
            last_seen_ns: original.last_seen_ns,
        };
        flows.insert(&b, &back_to_a);
        let (action, back) = loaded.run(&forwarded);
        assert_eq!(action, redirect, "B is forwarded");
        assert_eq!(back[14..], tracked[14..], "B is rewritten back into A");

        let empty = EmptyProgram::load(loaded.pass);
        let rounds = (0..REPEAT_ROUNDS)
            .map(|_| {
                let before = (loaded.stats(route), loaded.dataplane.packet_events());
                let (action, out, time) = loaded
                    .dataplane
                    .test_run_repeat(tracked, REPEAT)
                    .expect("timed run");
                let after = (loaded.stats(route), loaded.dataplane.packet_events());
                assert_eq!(action, redirect);
                assert_eq!(out[14..], tracked[14..], "the ping-pong ends on A");
                let packets = after.0.packets - before.0.packets;
                assert_eq!(packets, u64::from(REPEAT), "route packets");
                assert_eq!(after.0.new_flows, before.0.new_flows, "new flows");
                assert_eq!(after.0.drops, before.0.drops, "drops");
                for ((event, n_after), (_, n_before)) in after.1.iter().zip(&before.1) {
                    let expected = if *event == gateway_common::PacketEvent::Redirected {
                        u64::from(REPEAT)
                    } else {
                        0
                    };
                    assert_eq!(n_after - n_before, expected, "{event:?}");
                }
                let empty_time = empty.time_run(tracked, REPEAT);
                (time.as_nanos() as u64, empty_time.as_nanos() as u64)
            })
            .collect();
        RepeatCost { rounds }
    }

    fn net(&self) -> Vec<u64> {
        let mut net: Vec<u64> = self
            .rounds
            .iter()
            .map(|(raw, empty)| raw.saturating_sub(*empty))
            .collect();
        net.sort();
        net
    }

    /// ns per repetition net of the empty program, median of the rounds.
    pub fn median_net(&self) -> u64 {
        self.net()[REPEAT_ROUNDS / 2]
    }

    /// A regression bound, as `ProgramCost::check`'s: the goal (100 ns net)
    /// is reported, not asserted.
    fn check(&self) {
        assert!(self.net()[REPEAT_ROUNDS / 2] <= 1000, "{self}");
    }
}

impl std::fmt::Display for RepeatCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let net = self.net();
        write!(
            f,
            "tracked flow (ping-pong), per repetition of {REPEAT}, net of the empty \
             program's ns: median {} min {} max {} over {REPEAT_ROUNDS} rounds \
             (raw / empty per round: {})",
            net[REPEAT_ROUNDS / 2],
            net[0],
            net[REPEAT_ROUNDS - 1],
            self.rounds
                .iter()
                .map(|(raw, empty)| format!("{raw}/{empty}"))
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}

/// The FLOWS key of an untagged IPv4 frame's TCP or UDP 5-tuple.
pub fn flow_key4(p: &[u8]) -> gateway_common::FlowKey {
    let ne = |at: usize| u32::from_ne_bytes(p[at..at + 4].try_into().unwrap());
    let port = |at: usize| u16::from_ne_bytes([p[at], p[at + 1]]);
    gateway_common::FlowKey {
        src_addr_be: ne(26),
        dst_addr_be: ne(30),
        src_port_be: port(34),
        dst_port_be: port(36),
        proto: p[23],
        ..Default::default()
    }
}

/// The FLOWS6 key of an untagged IPv6 frame's TCP or UDP 5-tuple.
pub fn flow_key6(p: &[u8]) -> gateway_common::FlowKey6 {
    let addr = |at: usize| -> gateway_common::Addr6 {
        std::array::from_fn(|i| {
            u32::from_ne_bytes(p[at + 4 * i..at + 4 * i + 4].try_into().unwrap())
        })
    };
    let port = |at: usize| u16::from_ne_bytes([p[at], p[at + 1]]);
    gateway_common::FlowKey6 {
        src_addr_be: addr(22),
        dst_addr_be: addr(38),
        src_port_be: port(54),
        dst_port_be: port(56),
        proto: p[20],
        ..Default::default()
    }
}

/// The median of `times`, in nanoseconds.
pub fn median_ns(mut times: Vec<std::time::Duration>) -> u64 {
    times.sort();
    times[times.len() / 2].as_nanos() as u64
}

/// The mean of the middle half of `times`, in nanoseconds.
pub fn interquartile_mean_ns(times: &[std::time::Duration]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort();
    let middle = &sorted[sorted.len() / 4..sorted.len() * 3 / 4];
    middle.iter().map(|t| t.as_nanos() as f64).sum::<f64>() / middle.len() as f64
}
