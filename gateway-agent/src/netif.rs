//! The node's network interfaces and addresses.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

/// Every interface that is up and not a loopback: where XDP attaches by default.
pub fn default_interfaces() -> std::io::Result<Vec<String>> {
    let mut names = BTreeSet::new();
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
