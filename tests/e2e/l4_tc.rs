//! `--attach tc`: the L4 forwarding program as a TC classifier at the node
//! interfaces' ingress. The peers keep their offloads on (TX checksum, TSO,
//! GSO), so the program sees CHECKSUM_PARTIAL and GSO packets of up to 64 KB,
//! which it must rewrite without breaking a byte (IPv4 and IPv6); replies
//! and ICMP errors about a flow are translated back, and forwarding goes on
//! while the agent is stopped or restarted, also when a restart switches
//! between XDP and TC.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use gateway_common::PacketEvent;
use gateway_tests::frames::{ACK, SYN, TCP, packet, packet6};
use gateway_tests::{
    Agent, BACKEND_ADDR, CLIENT_ADDR, GATEWAY_ADDR, NODE_BACKEND_SIDE_ADDR, TempDir, Topology,
    class_and_service, eventually, l4_gateway, require_root,
};

/// The topology with the offloads XDP needs off turned back on, on both
/// peers: what their stacks send is CHECKSUM_PARTIAL, TCP in TSO/GSO packets.
/// The node's links keep TX checksum offload off, as a NIC without it: the
/// kernel then finishes each checksum (and segments) on the way out, and the
/// receiving peer verifies it. Between veths with offload on all the way, a
/// partial checksum is never computed nor checked, so a wrong one would pass.
fn topology_with_offloads() -> Topology {
    let topology = Topology::new();
    for link in ["c0", "b0"] {
        topology.node.run(&["ethtool", "-K", link, "tx", "off"]);
    }
    for peer in [&topology.client, &topology.backend] {
        peer.run(&[
            "ethtool", "-K", "eth0", "tx", "on", "tso", "on", "gso", "on",
        ]);
        let features =
            String::from_utf8_lossy(&peer.run(&["ethtool", "-k", "eth0"]).stdout).into_owned();
        assert!(
            features.contains("tx-checksumming: on")
                && features.contains("tcp-segmentation-offload: on"),
            "offloads on:\n{features}"
        );
    }
    topology
}

/// `len` bytes that no shifted or truncated copy matches (xorshift).
fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Sends `message` on `stream` to the echo backend and checks it comes back.
fn echo_once(stream: &std::net::TcpStream, message: &str) {
    let mut stream = stream;
    stream.write_all(message.as_bytes()).expect("send");
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).expect("receive the echo");
    assert_eq!(back, message.as_bytes(), "{message}");
}

/// Sends `data` through the gateway to the echo backend and returns what
/// came back (a writer thread, so that neither side's window stalls).
fn echo_bulk(topology: &Topology, gateway: std::net::SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = topology.client.connect_tcp(gateway).expect("connect");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = stream;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            writer.write_all(data).expect("send the bulk");
            writer
                .shutdown(std::net::Shutdown::Write)
                .expect("half-close");
        });
        let mut back = Vec::with_capacity(data.len());
        reader.read_to_end(&mut back).expect("read the echo");
        back
    })
}

#[test]
fn tcp_bulk_with_offloads_on_arrives_intact_through_tc_and_survives_stop_and_restart() {
    if !require_root("tcp_bulk_through_tc") {
        return;
    }
    let topology = topology_with_offloads();
    let (_backend, manifests) = topology.tcp_echo_route();
    let mut agent = Agent::start_with(&topology, manifests, &["--attach", "tc"]);
    let gateway = format!("{GATEWAY_ADDR}:9000");

    let reply = eventually("TCP through the gateway", Duration::from_secs(20), || {
        topology.client_run(&["tcp-send", &gateway, "ping"])
    });
    assert_eq!(reply, "ping", "agent log:\n{}", agent.log());
    assert!(
        agent.log().contains("TC program attached"),
        "agent log:\n{}",
        agent.log()
    );

    // 4 MB each way, in TSO packets whose checksums the program leaves for
    // the segmentation to finish: every byte must come back as sent.
    let data = pattern(4 << 20);
    let packets_before = agent.route_counter(0, "packets");
    let bytes_before = agent.route_counter(0, "bytes");
    let redirected_before = agent.packet_events(PacketEvent::Redirected);
    let back = echo_bulk(&topology, gateway.parse().expect("address"), &data);
    assert_eq!(back.len(), data.len(), "echoed length");
    assert!(back == data, "the echo differs from what was sent");
    let packets = agent.route_counter(0, "packets") - packets_before;
    let bytes = agent.route_counter(0, "bytes") - bytes_before;
    let redirected = agent.packet_events(PacketEvent::Redirected) - redirected_before;
    assert!(
        bytes >= 2 * data.len() as u64,
        "both directions counted: {bytes} bytes"
    );
    // Fewer packets than 1,500-byte segments would take: GSO packets went
    // through the program whole.
    assert!(
        bytes / packets > 1_500,
        "{bytes} bytes in {packets} packets: no GSO packet was forwarded"
    );
    assert!(
        redirected >= packets / 2,
        "redirected by the program: {redirected} of {packets}"
    );

    // A connection opened before the agent stops, used while it is stopped,
    // killed and restarted (the new agent adopts the pinned tcx links).
    let long_lived = topology
        .client
        .connect_tcp(gateway.parse().expect("address"))
        .expect("connect");
    echo_once(&long_lived, "before");
    agent.process.signal(libc::SIGSTOP);
    let flows_before = agent.route_counter(0, "new_flows");
    for i in 0..3 {
        let message = format!("while stopped {i}");
        let reply = topology.client_run(&["tcp-send", &gateway, &message]);
        assert_eq!(reply.as_deref(), Ok(message.as_str()), "exchange {i}");
    }
    echo_once(&long_lived, "stopped");
    assert_eq!(agent.route_counter(0, "new_flows"), flows_before + 3);
    agent.process.signal(libc::SIGKILL);
    agent.process.0.wait().expect("reap agent");
    echo_once(&long_lived, "killed");
    agent.restart(&topology);
    eventually("the new agent adopts", Duration::from_secs(20), || {
        if agent.log().contains("TC link adopted") {
            Ok(())
        } else {
            Err(agent.log())
        }
    });
    echo_once(&long_lived, "restarted");
    let reply = topology.client_run(&["tcp-send", &gateway, "new after restart"]);
    assert_eq!(reply.as_deref(), Ok("new after restart"));
}

/// An agent attached with `--attach tc`, its UDPRoute from the gateway's
/// port 9000 to the backend's port 5353.
fn tc_agent_with_udp_route(topology: &Topology) -> Agent {
    let manifests = TempDir::new();
    manifests.write(
        "all.yaml",
        &(class_and_service("echo", 5353, 5353) + &l4_gateway("UDP", "UDPRoute", 5353)),
    );
    Agent::start_with(topology, manifests, &["--attach", "tc"])
}

#[test]
fn udp_through_tc_is_forwarded_and_replies_translated_back_while_the_agent_is_stopped() {
    if !require_root("udp_through_tc") {
        return;
    }
    let topology = topology_with_offloads();
    let _backend = topology.backend_spawn(&["udp-echo", &format!("{BACKEND_ADDR}:5353")]);
    let agent = tc_agent_with_udp_route(&topology);
    let target = format!("{GATEWAY_ADDR}:9000");

    let reply = eventually("UDP through the gateway", Duration::from_secs(20), || {
        topology.client_run(&["udp-send", &target, "datagram"])
    });
    assert_eq!(reply, "datagram", "agent log:\n{}", agent.log());

    // udp-send's socket is connected to the gateway address: only a reply
    // the program translated back to come from there reaches it.
    let redirected_before = agent.packet_events(PacketEvent::Redirected);
    agent.assert_udp_forwarded_while_stopped(&topology, &target);
    assert!(agent.packet_events(PacketEvent::Redirected) >= redirected_before + 6);
}

/// A datagram to a backend port nothing listens on: the backend answers the
/// node's NAT address with an ICMP port unreachable, which the TC program at
/// b0's ingress translates (outer addresses, the quoted header back to the
/// client's flow) and sends on to the client, whose socket connected to the
/// gateway address then reports "connection refused". Untranslated, the
/// error would quote the backend's address and the client would time out.
#[test]
fn icmp_port_unreachable_from_a_closed_backend_port_reaches_the_client_translated_through_tc() {
    if !require_root("icmp_port_unreachable_through_tc") {
        return;
    }
    let topology = topology_with_offloads();
    // No backend process: port 5353 is closed.
    let agent = tc_agent_with_udp_route(&topology);
    let target = format!("{GATEWAY_ADDR}:9000");
    let stats = agent.pin_dir().join("XDP_STATS");
    eventually("the agent pins its maps", Duration::from_secs(20), || {
        if stats.exists() {
            Ok(())
        } else {
            Err(agent.log())
        }
    });
    // Until the route is programmed the node itself refuses the datagram:
    // only a refusal that the program translated counts.
    eventually(
        "a translated port unreachable",
        Duration::from_secs(20),
        || {
            let translated = agent.packet_events(PacketEvent::IcmpErrorTranslated);
            match topology.client_run(&["udp-send", &target, "nobody listens"]) {
                Err(error)
                    if error.contains("Connection refused")
                        && agent.packet_events(PacketEvent::IcmpErrorTranslated) > translated =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}; agent log:\n{}", agent.log())),
            }
        },
    );
}

/// Whether an XDP program is attached to `dev` in the node (this bpftool,
/// 7.1, does not list tcx links: the TC side is checked through the
/// agent's pinned links and the traffic it forwards).
fn xdp_attached(topology: &Topology, dev: &str) -> bool {
    let out = topology.node.run(&["ip", "-d", "link", "show", "dev", dev]);
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// The interfaces whose links of one kind (`links` for XDP, `tc-links`) the
/// agent has pinned.
fn pinned_links(agent: &Agent, kind: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(agent.pin_dir().join(kind))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// XDP → TC → XDP across restarts with the same pinned state: each start
/// attaches its mode's programs to both links and removes the other mode's,
/// and a TCP connection opened under XDP keeps its flow (the maps are the
/// same) through both switches.
#[test]
fn switching_attach_mode_across_restarts_replaces_the_links_and_keeps_a_connection() {
    if !require_root("switching_attach_mode") {
        return;
    }
    let topology = Topology::new();
    let (_backend, manifests) = topology.tcp_echo_route();
    let mut agent = Agent::start(&topology, manifests);
    let gateway = format!("{GATEWAY_ADDR}:9000");
    let new_flow = || topology.client_run(&["tcp-send", &gateway, "ping"]);
    assert_eq!(
        eventually("TCP through the gateway", Duration::from_secs(20), new_flow),
        "ping"
    );
    let stream = topology
        .client
        .connect_tcp(gateway.parse().expect("address"))
        .expect("connect through the gateway");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    echo_once(&stream, "under XDP");
    let flows_before = agent.route_counter(0, "new_flows");

    let both = vec!["b0".to_string(), "c0".to_string()];
    for mode in ["tc", "xdp"] {
        let started = agent.log_count("config applied");
        agent.process.signal(libc::SIGTERM);
        agent.process.0.wait().expect("reap agent");
        let args: &[&str] = if mode == "tc" {
            &["--attach", "tc"]
        } else {
            &[]
        };
        agent.restart_with(&topology, args);
        let (xdp, tc) = if mode == "tc" {
            (vec![], both.clone())
        } else {
            (both.clone(), vec![])
        };
        eventually(&format!("{mode}: links"), Duration::from_secs(20), || {
            let state = (
                [xdp_attached(&topology, "c0"), xdp_attached(&topology, "b0")],
                pinned_links(&agent, "links"),
                pinned_links(&agent, "tc-links"),
            );
            if agent.log_count("config applied") > started
                && state == ([mode == "xdp"; 2], xdp.clone(), tc.clone())
            {
                Ok(())
            } else {
                Err(format!("{state:?}; agent log:\n{}", agent.log()))
            }
        });
        let redirected = agent.packet_events(PacketEvent::Redirected);
        echo_once(&stream, &format!("the same connection under {mode}"));
        assert_eq!(new_flow().as_deref(), Ok("ping"), "a new flow under {mode}");
        // With no XDP program attached, only the TC program forwards.
        assert!(
            agent.packet_events(PacketEvent::Redirected) >= redirected + 4,
            "{mode}: forwarded by the agent's program"
        );
    }
    // The connection was never a new flow again: one flow per tcp-send.
    assert_eq!(agent.route_counter(0, "new_flows"), flows_before + 2);
}

const GATEWAY6: &str = "fd00:18::1";
const BACKEND6: &str = "fd00:18:1::2";

/// IPv6 addresses on the topology's links (client fd00:18::2, backend
/// BACKEND6, routed through the node), IPv6 forwarding on in the node.
fn add_ipv6(topology: &Topology) {
    topology
        .node
        .run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    for (ns, addr, dev) in [
        (&topology.client, "fd00:18::2", "eth0"),
        (&topology.node, GATEWAY6, "c0"),
        (&topology.node, "fd00:18:1::1", "b0"),
        (&topology.backend, BACKEND6, "eth0"),
    ] {
        let addr = format!("{addr}/64");
        ns.run(&["ip", "-6", "addr", "add", &addr, "dev", dev, "nodad"]);
    }
    topology
        .client
        .run(&["ip", "-6", "route", "add", "default", "via", GATEWAY6]);
    topology
        .backend
        .run(&["ip", "-6", "route", "add", "default", "via", "fd00:18:1::1"]);
}

#[test]
fn ipv6_tcp_bulk_and_udp_through_tc_with_offloads_on_arrive_intact() {
    if !require_root("ipv6_through_tc") {
        return;
    }
    let topology = topology_with_offloads();
    add_ipv6(&topology);
    let _tcp = topology.backend_spawn(&["tcp-echo", &format!("[{BACKEND6}]:7000")]);
    let _udp = topology.backend_spawn(&["udp-echo", &format!("[{BACKEND6}]:7000")]);
    // The IPv4 manifests with the IPv6 addresses in: one backend, a TCP
    // and a UDP route, both to port 7000.
    let ipv6 = |yaml: String| {
        yaml.replace(GATEWAY_ADDR, GATEWAY6)
            .replace(BACKEND_ADDR, BACKEND6)
            .replace("addressType: IPv4", "addressType: IPv6")
    };
    let manifests = TempDir::new();
    manifests.write(
        "tcp.yaml",
        &ipv6(class_and_service("echo", 7000, 7000) + &l4_gateway("TCP", "TCPRoute", 7000)),
    );
    let agent = Agent::start_with(&topology, manifests, &["--attach", "tc"]);
    let gateway: std::net::SocketAddr = format!("[{GATEWAY6}]:9000").parse().expect("address");

    eventually(
        "TCP over IPv6 through the gateway",
        Duration::from_secs(20),
        || topology.client_run(&["tcp-send", &gateway.to_string(), "ping"]),
    );
    let data = pattern(4 << 20);
    let back = echo_bulk(&topology, gateway, &data);
    assert_eq!(back.len(), data.len(), "echoed length");
    assert!(back == data, "the echo differs from what was sent");
    assert!(
        agent.packet_events(PacketEvent::Redirected) >= 100,
        "redirected by the program"
    );

    // UDP over IPv6: the checksum is mandatory, and must be right.
    agent.manifests.write(
        "tcp.yaml",
        &ipv6(class_and_service("echo", 7000, 7000) + &l4_gateway("UDP", "UDPRoute", 7000)),
    );
    let reply = eventually(
        "UDP over IPv6 through the gateway",
        Duration::from_secs(20),
        || topology.client_run(&["udp-send", &gateway.to_string(), "datagram"]),
    );
    assert_eq!(reply, "datagram");
}

/// A raw packet socket (AF_PACKET) bound to `dev` in `ns`, for frames of
/// EtherType `protocol`, with a 100 ms receive timeout. Bound to one
/// EtherType (not ETH_P_ALL) it receives only what the device receives, after
/// TC ingress and the kernel's VLAN handling, and nothing the device sends.
fn packet_socket(ns: &gateway_tests::Netns, dev: &str, protocol: u16) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    let (name, dev) = (ns.name.clone(), dev.to_string());
    std::thread::spawn(move || {
        gateway_tests::enter_netns(&name).expect("enter the namespace");
        let protocol_be = protocol.to_be();
        // SAFETY: plain syscall; the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(protocol_be),
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh fd of ours.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let dev = std::ffi::CString::new(dev).expect("no NUL");
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) };
        assert_ne!(ifindex, 0, "no {dev:?}");
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol_be;
        addr.sll_ifindex = ifindex as i32;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: valid pointers and sizes.
        let ok = unsafe {
            libc::bind(
                raw,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) == 0
                && libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                ) == 0
        };
        assert!(ok, "bind: {}", std::io::Error::last_os_error());
        fd
    })
    .join()
    .expect("socket thread")
}

fn send_frame(socket: &std::os::fd::OwnedFd, frame: &[u8]) {
    let raw = std::os::fd::AsRawFd::as_raw_fd(socket);
    // SAFETY: a valid buffer of its length.
    let sent = unsafe { libc::send(raw, frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        sent,
        frame.len() as isize,
        "send: {}",
        std::io::Error::last_os_error()
    );
}

/// The frames `socket` received until 100 ms passed without one (at most 1,000).
fn received_frames(socket: &std::os::fd::OwnedFd) -> Vec<Vec<u8>> {
    let raw = std::os::fd::AsRawFd::as_raw_fd(socket);
    let mut frames = Vec::new();
    while frames.len() < 1000 {
        let mut buf = vec![0u8; 2048];
        // SAFETY: a valid buffer of its length.
        let len = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if len < 0 {
            break;
        }
        buf.truncate(len as usize);
        frames.push(buf);
    }
    frames
}

/// IPv4 or IPv6 TCP frames to `to`: (source address and port, TCP flags,
/// whether the checksums, IPv4 header and TCP, are valid).
fn tcp_frames_to(
    frames: &[Vec<u8>],
    to: (std::net::IpAddr, u16),
) -> Vec<((std::net::IpAddr, u16), u8, bool)> {
    use gateway_tests::frames::{fold, l4_checksum, l4_checksum6, sum16};
    use std::net::IpAddr;
    frames
        .iter()
        .filter_map(|f| {
            // (where TCP starts, source, destination, checksums valid)
            let (l4, src, dst, valid): (usize, IpAddr, IpAddr, bool) = match f.get(12..14)? {
                [0x08, 0x00] if f.len() >= 54 && f[23] == TCP => (
                    34,
                    <[u8; 4]>::try_from(&f[26..30]).ok()?.into(),
                    <[u8; 4]>::try_from(&f[30..34]).ok()?.into(),
                    fold(sum16(&f[14..34], 0)) == 0
                        && l4_checksum(f) == u16::from_be_bytes([f[50], f[51]]),
                ),
                [0x86, 0xdd] if f.len() >= 74 && f[20] == TCP => (
                    54,
                    <[u8; 16]>::try_from(&f[22..38]).ok()?.into(),
                    <[u8; 16]>::try_from(&f[38..54]).ok()?.into(),
                    l4_checksum6(f) == u16::from_be_bytes([f[70], f[71]]),
                ),
                _ => return None,
            };
            let port = |at: usize| u16::from_be_bytes([f[l4 + at], f[l4 + at + 1]]);
            ((dst, port(2)) == to).then(|| ((src, port(0)), f[l4 + 13], valid))
        })
        .collect()
}

/// The MAC address of `dev` in `ns`.
fn mac_of(ns: &gateway_tests::Netns, dev: &str) -> [u8; 6] {
    let out = ns.run(&["cat", &format!("/sys/class/net/{dev}/address")]);
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    bytes.try_into().expect("6 bytes")
}

/// 802.1Q-tagged frames at the TC program: the node's receive path takes
/// the tag out of the data into the skb (`vlan_tci`) before TC ingress, so
/// the program sees an untagged IPv4 packet. Redirected, it would leave on
/// b0 still carrying the client's VLAN (veth and NICs insert the skb's tag
/// on transmit). Like XDP with a tagged frame, the program rewrites it and
/// hands it to the kernel (`RewrittenPassed`), whose VLAN device routes it:
/// this kernel has none (no CONFIG_VLAN_8021Q), so the node drops it after
/// the packet socket on c0 has seen it rewritten. Untagged frames go on being
/// redirected to the backend, which the same observer on its side sees.
#[test]
fn vlan_tagged_frames_at_tc_are_rewritten_and_passed_to_the_kernel_not_redirected() {
    if !require_root("vlan_tagged_frames_at_tc") {
        return;
    }
    tagged_frames_at_tc(false);
    tagged_frames_at_tc(true);
}

/// `vlan_tagged_frames_at_tc_...` over IPv4 or IPv6.
fn tagged_frames_at_tc(ipv6: bool) {
    use std::net::IpAddr;
    let topology = Topology::new();
    let manifests = TempDir::new();
    let yaml = class_and_service("echo", 7000, 7000) + &l4_gateway("TCP", "TCPRoute", 7000);
    let (client, gateway, backend, nat_addr, ethertype): (IpAddr, IpAddr, IpAddr, IpAddr, u16) =
        if ipv6 {
            add_ipv6(&topology);
            manifests.write(
                "all.yaml",
                &yaml
                    .replace(GATEWAY_ADDR, GATEWAY6)
                    .replace(BACKEND_ADDR, BACKEND6)
                    .replace("addressType: IPv4", "addressType: IPv6"),
            );
            let a = |s: &str| s.parse().expect("address");
            (
                a("fd00:18::2"),
                a(GATEWAY6),
                a(BACKEND6),
                a("fd00:18:1::1"),
                0x86dd,
            )
        } else {
            manifests.write("all.yaml", &yaml);
            let a = |s: &str| s.parse().expect("address");
            (
                a(CLIENT_ADDR),
                a(GATEWAY_ADDR),
                a(BACKEND_ADDR),
                a(NODE_BACKEND_SIDE_ADDR),
                0x0800,
            )
        };
    let backend = (backend, 7000);
    let agent = Agent::start_with(&topology, manifests, &["--attach", "tc"]);
    let (client_mac, node_mac) = (
        mac_of(&topology.client, "eth0"),
        mac_of(&topology.node, "c0"),
    );
    // An untagged frame from the client's `port` to the listener.
    let frame = |port: u16, flags: u8| {
        let mut frame = match (client, gateway) {
            (IpAddr::V4(c), IpAddr::V4(g)) => packet(TCP, (c, port), (g, 9000), flags, b""),
            (IpAddr::V6(c), IpAddr::V6(g)) => packet6(TCP, (c, port), (g, 9000), flags, b""),
            _ => unreachable!("one family"),
        };
        frame[..6].copy_from_slice(&node_mac);
        frame[6..12].copy_from_slice(&client_mac);
        frame
    };
    let syn_from = |port| frame(port, SYN);
    let injector = packet_socket(&topology.client, "eth0", 0x0003);
    let at_node = packet_socket(&topology.node, "c0", ethertype);
    let at_backend = packet_socket(&topology.backend, "eth0", ethertype);

    // Untagged SYNs until one is forwarded (nothing listens on the backend:
    // it answers with a reset, which goes back to the client).
    let mut port = 41_000;
    eventually(
        "an untagged SYN forwarded to the backend",
        Duration::from_secs(20),
        || {
            port += 1;
            send_frame(&injector, &syn_from(port));
            let seen = tcp_frames_to(&received_frames(&at_backend), backend);
            if seen.iter().any(|(_, flags, _)| *flags == SYN) {
                Ok(())
            } else {
                Err(agent.log())
            }
        },
    );
    received_frames(&at_node);
    received_frames(&at_backend);

    // A new flow's SYN and then a packet of that (now tracked) flow, tagged.
    let rewritten_passed = agent.packet_events(PacketEvent::RewrittenPassed);
    let redirected = agent.packet_events(PacketEvent::Redirected);
    let tagged = |flags| {
        let frame = frame(42_000, flags);
        let mut out = frame[..12].to_vec();
        out.extend_from_slice(&[0x81, 0x00, 0x00, 100]);
        out.extend_from_slice(&frame[12..]);
        out
    };
    // One at a time: frames sent back to back may be received on two CPUs,
    // and the ACK must find the flow the SYN opened.
    send_frame(&injector, &tagged(SYN));
    let mut node_saw = tcp_frames_to(&received_frames(&at_node), backend);
    send_frame(&injector, &tagged(ACK));
    node_saw.extend(tcp_frames_to(&received_frames(&at_node), backend));
    let backend_saw = tcp_frames_to(&received_frames(&at_backend), backend);
    eprintln!(
        "tagged: after c0's TC ingress {node_saw:?}; at the backend {backend_saw:?}; \
         RewrittenPassed +{}, Redirected +{}",
        agent.packet_events(PacketEvent::RewrittenPassed) - rewritten_passed,
        agent.packet_events(PacketEvent::Redirected) - redirected,
    );
    assert!(backend_saw.is_empty(), "a tagged frame was redirected");
    assert_eq!(
        node_saw
            .iter()
            .map(|(_, flags, _)| *flags)
            .collect::<Vec<_>>(),
        [SYN, ACK],
        "both rewritten and handed to the kernel"
    );
    let nat = node_saw[0].0;
    assert_eq!(nat.0, nat_addr, "source NAT");
    assert_eq!(
        node_saw[1].0, nat,
        "the tracked packet took the flow's NAT port"
    );
    assert!(node_saw.iter().all(|(_, _, valid)| *valid), "checksums");
    assert_eq!(
        agent.packet_events(PacketEvent::RewrittenPassed) - rewritten_passed,
        2
    );
    assert_eq!(
        agent.packet_events(PacketEvent::Redirected),
        redirected,
        "no redirect"
    );

    // The observer on the backend side still sees what is redirected.
    send_frame(&injector, &syn_from(port + 1));
    let backend_saw = tcp_frames_to(&received_frames(&at_backend), backend);
    assert_eq!(backend_saw.len(), 1, "{backend_saw:?}");
    assert_ne!(backend_saw[0].0, nat, "another flow, another NAT port");
}
