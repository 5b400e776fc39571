//! The node's network interfaces and addresses.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

/// Where XDP attaches by default: the interfaces of the node's default routes
/// (IPv4 and IPv6), where Gateway traffic arrives; without a default route,
/// every interface that is up and not a loopback.
pub fn default_interfaces() -> std::io::Result<Vec<String>> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    if let Ok(table) = std::fs::read_to_string("/proc/net/route") {
        names.extend(ipv4_default_route_interfaces(&table));
    }
    if let Ok(table) = std::fs::read_to_string("/proc/net/ipv6_route") {
        names.extend(ipv6_default_route_interfaces(&table));
    }
    if !names.is_empty() {
        return Ok(names.into_iter().collect());
    }
    for ifaddr in getifaddrs()? {
        let flags = ifaddr.flags;
        if flags.contains(InterfaceFlags::IFF_UP) && !flags.contains(InterfaceFlags::IFF_LOOPBACK) {
            names.insert(ifaddr.interface_name);
        }
    }
    Ok(names.into_iter().collect())
}

/// IPv4 addresses of `interfaces`: where a Gateway without `spec.addresses` is served.
pub fn ipv4_addresses(interfaces: &[String]) -> std::io::Result<Vec<Ipv4Addr>> {
    let mut out = BTreeSet::new();
    for ifaddr in getifaddrs()? {
        if !interfaces.contains(&ifaddr.interface_name) {
            continue;
        }
        if let Some(addr) = ifaddr.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            out.insert(addr.ip());
        }
    }
    Ok(out.into_iter().collect())
}

/// Every address (IPv4 and IPv6) of every interface of this node: the static
/// Gateway addresses it can serve.
pub fn local_addresses() -> std::io::Result<Vec<std::net::IpAddr>> {
    let mut out = BTreeSet::new();
    for ifaddr in getifaddrs()? {
        let Some(address) = ifaddr.address.as_ref() else {
            continue;
        };
        if let Some(v4) = address.as_sockaddr_in() {
            out.insert(std::net::IpAddr::V4(v4.ip()));
        } else if let Some(v6) = address.as_sockaddr_in6() {
            out.insert(std::net::IpAddr::V6(v6.ip()));
        }
    }
    Ok(out.into_iter().collect())
}

/// Interfaces of the default routes in `/proc/net/route` (a header line, then
/// `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`, hex fields).
fn ipv4_default_route_interfaces(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, destination, mask) = (fields.first()?, fields.get(1)?, fields.get(7)?);
            (*destination == "00000000" && *mask == "00000000").then(|| iface.to_string())
        })
        .collect()
}

/// Interfaces of the default routes in `/proc/net/ipv6_route` (`dest
/// dest_prefix_len src src_prefix_len next_hop metric refcnt use flags iface`),
/// leaving out the loopback's catch-all reject routes.
fn ipv6_default_route_interfaces(table: &str) -> Vec<String> {
    const RTF_REJECT: u32 = 0x0200;
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (destination, prefix) = (fields.first()?, fields.get(1)?);
            let flags = u32::from_str_radix(fields.get(8)?, 16).ok()?;
            let iface = fields.get(9)?;
            let default = destination.bytes().all(|b| b == b'0') && *prefix == "00";
            (default && flags & RTF_REJECT == 0 && *iface != "lo").then(|| iface.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_routes_name_the_interfaces() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                  eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
                  eth1\t000012C6\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(ipv4_default_route_interfaces(v4), ["eth0"]);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth2\n\
                  fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth2\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(ipv6_default_route_interfaces(v6), ["eth2"]);
        assert!(ipv4_default_route_interfaces("Iface\tDestination\n").is_empty());
    }
}
