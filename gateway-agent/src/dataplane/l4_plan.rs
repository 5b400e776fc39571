//! The L4 maps as they should be for a config: pure, so it is tested without a kernel.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use gateway_common::{
    BackendSlotKey, BackendValue, ListenerKey, MAX_ROUTES, MAX_TABLE_SIZE, PROTO_TCP, PROTO_UDP,
};

use crate::model::{L4Listener, L4Protocol, RouteRef, WeightedEndpoint};

/// Lookup-table size for a route with backends: prime, so the flow hash spreads
/// evenly whatever the number of backends.
pub const TABLE_SIZE: u32 = 1021;
const _: () = assert!(TABLE_SIZE <= MAX_TABLE_SIZE);

/// Stable small ids for routes: counters live at `ROUTE_STATS[id]`, so an id
/// stays with its route for as long as the route exists.
#[derive(Debug, Default)]
pub struct RouteIds {
    ids: BTreeMap<RouteRef, u32>,
}

impl RouteIds {
    pub fn get(&self, route: &RouteRef) -> Option<u32> {
        self.ids.get(route).copied()
    }

    pub fn names(&self) -> impl Iterator<Item = (&RouteRef, u32)> {
        self.ids.iter().map(|(r, id)| (r, *id))
    }

    /// Keeps the ids of `live` routes, frees the others, and gives new routes the
    /// lowest free ids. Routes beyond `MAX_ROUTES` get none (and are not programmed).
    fn assign(&mut self, live: &[&RouteRef]) {
        self.ids.retain(|r, _| live.contains(&r));
        for route in live {
            if self.ids.contains_key(*route) {
                continue;
            }
            let used: std::collections::BTreeSet<u32> = self.ids.values().copied().collect();
            if let Some(id) = (0..MAX_ROUTES).find(|id| !used.contains(id)) {
                self.ids.insert((*route).clone(), id);
            }
        }
    }
}

/// Every entry the L4 maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L4Maps {
    pub listeners: BTreeMap<ListenerKey, u32>,
    /// route id → lookup-table size (0: no backend, new flows refused).
    pub routes: BTreeMap<u32, u32>,
    pub slots: BTreeMap<BackendSlotKey, BackendValue>,
}

/// Builds the maps for `listeners`. `source_for` gives the node address the
/// kernel would use towards a backend (the source-NAT address).
pub fn plan(
    listeners: &[L4Listener],
    ids: &mut RouteIds,
    source_for: &dyn Fn(Ipv4Addr) -> Ipv4Addr,
) -> L4Maps {
    let live: Vec<&RouteRef> = listeners.iter().map(|l| &l.route).collect();
    ids.assign(&live);
    let mut maps = L4Maps::default();
    for listener in listeners {
        let Some(route_id) = ids.get(&listener.route) else {
            continue;
        };
        let key = ListenerKey {
            addr_be: u32::from(listener.addr).to_be(),
            port_be: listener.port.to_be(),
            proto: match listener.protocol {
                L4Protocol::Tcp => PROTO_TCP,
                L4Protocol::Udp => PROTO_UDP,
            },
            _pad: 0,
        };
        maps.listeners.insert(key, route_id);
        if maps.routes.contains_key(&route_id) {
            continue; // Same route on another address: one table serves both.
        }
        let backends: Vec<(BackendValue, u64)> = listener
            .backends
            .iter()
            .filter_map(|e| backend_value(e, source_for).map(|b| (b, e.weight)))
            .collect();
        let table = fill_table(&backends, TABLE_SIZE);
        maps.routes.insert(route_id, table.len() as u32);
        for (slot, backend) in table.into_iter().enumerate() {
            maps.slots.insert(
                BackendSlotKey {
                    route_id,
                    slot: slot as u32,
                },
                backend,
            );
        }
    }
    maps
}

fn backend_value(
    e: &WeightedEndpoint,
    source_for: &dyn Fn(Ipv4Addr) -> Ipv4Addr,
) -> Option<BackendValue> {
    let IpAddr::V4(addr) = e.addr.ip() else {
        return None;
    };
    Some(BackendValue {
        addr_be: u32::from(addr).to_be(),
        snat_addr_be: u32::from(source_for(addr)).to_be(),
        port_be: e.addr.port().to_be(),
        _pad: 0,
    })
}

/// Spreads `size` slots over backends in proportion to their weights (largest
/// remainder), interleaved so that neighbouring slots go to different backends.
fn fill_table(backends: &[(BackendValue, u64)], size: u32) -> Vec<BackendValue> {
    let total: u64 = backends.iter().map(|(_, w)| *w).sum();
    if total == 0 {
        return Vec::new();
    }
    let size = u64::from(size);
    let mut counts: Vec<u64> = backends.iter().map(|(_, w)| w * size / total).collect();
    let mut remainders: Vec<(u64, usize)> = backends
        .iter()
        .enumerate()
        .map(|(i, (_, w))| (w * size % total, i))
        .collect();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let missing = size - counts.iter().sum::<u64>();
    for (_, i) in remainders.iter().take(missing as usize) {
        counts[*i] += 1;
    }
    // Smooth weighted round robin: each step picks the backend furthest behind its share.
    let mut credit: Vec<i64> = vec![0; backends.len()];
    let mut table = Vec::with_capacity(size as usize);
    for _ in 0..size {
        for (c, n) in credit.iter_mut().zip(&counts) {
            *c += *n as i64;
        }
        let (best, _) = credit
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
            .expect("backends is not empty");
        credit[best] -= size as i64;
        table.push(backends[best].0);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn listener(name: &str, port: u16, backends: &[(&str, u64)]) -> L4Listener {
        L4Listener {
            addr: Ipv4Addr::new(198, 18, 0, 1),
            port,
            protocol: L4Protocol::Tcp,
            route: RouteRef {
                kind: "TCPRoute",
                namespace: "default".into(),
                name: name.into(),
                rule: 0,
            },
            backends: backends
                .iter()
                .map(|(a, w)| WeightedEndpoint {
                    addr: a.parse::<SocketAddr>().unwrap(),
                    weight: *w,
                })
                .collect(),
        }
    }

    #[test]
    fn weights_are_honoured_in_the_table() {
        let mut ids = RouteIds::default();
        let l = listener("r", 9000, &[("198.18.1.2:7000", 3), ("198.18.1.3:7000", 1)]);
        let maps = plan(&[l], &mut ids, &|_| Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(maps.routes[&0], TABLE_SIZE);
        let first = maps
            .slots
            .values()
            .filter(|b| b.addr_be == u32::from(Ipv4Addr::new(198, 18, 1, 2)).to_be())
            .count();
        // 3/4 of 1021 slots, within one slot.
        assert!((765..=766).contains(&first), "{first}");
        assert!(
            maps.slots
                .values()
                .all(|b| b.snat_addr_be == u32::from(Ipv4Addr::new(198, 18, 1, 1)).to_be())
        );
    }

    #[test]
    fn a_route_without_backends_has_an_empty_table() {
        let mut ids = RouteIds::default();
        let maps = plan(&[listener("r", 9000, &[])], &mut ids, &|a| a);
        assert_eq!(maps.routes[&0], 0);
        assert!(maps.slots.is_empty());
        assert_eq!(maps.listeners.len(), 1);
    }

    #[test]
    fn route_ids_are_stable_and_reused() {
        let mut ids = RouteIds::default();
        let a = listener("a", 1, &[]);
        let b = listener("b", 2, &[]);
        plan(&[a.clone(), b.clone()], &mut ids, &|x| x);
        assert_eq!((ids.get(&a.route), ids.get(&b.route)), (Some(0), Some(1)));
        let c = listener("c", 3, &[]);
        plan(&[b.clone(), c.clone()], &mut ids, &|x| x);
        assert_eq!(ids.get(&b.route), Some(1), "b keeps its id");
        assert_eq!(ids.get(&c.route), Some(0), "c reuses a's freed id");
        assert_eq!(ids.get(&a.route), None);
    }
}
