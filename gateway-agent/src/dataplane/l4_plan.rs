//! The L4 maps as they should be for a config: pure, so it is tested without a kernel.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use gateway_common::{
    Addr6, BackendValue, BackendValue6, ListenerKey, ListenerKey6, MAGLEV_TABLE_SIZE,
    MAX_BACKENDS_PER_ROUTE, MAX_ROUTES, PROTO_TCP, PROTO_UDP,
};

use super::maglev::{self, Weighted};
use crate::model::{L4Listener, L4Protocol, RouteRef, WeightedEndpoint};

/// The address family of a listener. A route served on IPv4 and IPv6
/// addresses has one route id (table, counters) per family: its backends differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// An IPv6 address as the maps hold it (`gateway_common::Addr6`).
pub fn addr6_be(addr: Ipv6Addr) -> Addr6 {
    let o = addr.octets();
    core::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The IPv6 address in a map's `Addr6`.
pub fn ipv6_of(addr: Addr6) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    for (i, word) in addr.iter().enumerate() {
        octets[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(octets)
}

/// Stable small ids for routes: counters live at `ROUTE_STATS[id]`, so an id
/// stays with its route for as long as the route exists, across agent restarts
/// too (`adopt` takes back the ids recorded in the pinned `ROUTE_NAMES`).
#[derive(Debug, Default)]
pub struct RouteIds {
    ids: BTreeMap<(RouteRef, Family), u32>,
    /// name hash → id, recorded by a previous agent and not yet claimed.
    adopted: BTreeMap<u64, u32>,
}

impl RouteIds {
    pub fn get(&self, route: &RouteRef, family: Family) -> Option<u32> {
        self.ids.get(&(route.clone(), family)).copied()
    }

    /// Every route id with its route (a route on both families appears twice).
    pub fn names(&self) -> impl Iterator<Item = (&RouteRef, u32)> {
        self.ids.iter().map(|((r, _), id)| (r, *id))
    }

    /// Ids a previous agent gave to routes (by name hash), to be reused for
    /// the same routes.
    pub fn adopt(&mut self, recorded: impl IntoIterator<Item = (u32, u64)>) {
        self.adopted = recorded.into_iter().map(|(id, hash)| (hash, id)).collect();
    }

    /// Keeps the ids of `live` routes, frees the others, and gives new routes
    /// their adopted id or else the lowest free one. Routes beyond `MAX_ROUTES`
    /// get none (and are not programmed).
    fn assign(&mut self, live: &[(RouteRef, Family)]) {
        let live_set: std::collections::BTreeSet<&(RouteRef, Family)> = live.iter().collect();
        self.ids.retain(|r, _| live_set.contains(r));
        let mut used: std::collections::BTreeSet<u32> = self.ids.values().copied().collect();
        for route in live {
            if self.ids.contains_key(route) {
                continue;
            }
            if let Some(id) = self.adopted.remove(&family_name_hash(&route.0, route.1))
                && used.insert(id)
            {
                self.ids.insert(route.clone(), id);
            }
        }
        // Ids recorded for routes that are gone become free.
        self.adopted.clear();
        for route in live {
            if self.ids.contains_key(route) {
                continue;
            }
            if let Some(id) = (0..MAX_ROUTES).find(|id| !used.contains(id)) {
                used.insert(id);
                self.ids.insert(route.clone(), id);
            }
        }
    }
}

/// What `ROUTE_NAMES` records for a route: a fixed hash of its name (FNV-1a),
/// never 0 (0 marks a free id).
pub fn name_hash(route: &RouteRef) -> u64 {
    family_name_hash(route, Family::V4)
}

/// `name_hash` of a route's id for `family`: an IPv6 id hashes the name with a suffix.
pub fn family_name_hash(route: &RouteRef, family: Family) -> u64 {
    let mut name = route.to_string();
    if family == Family::V6 {
        name.push_str(" ipv6");
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// A route's backends and its Maglev table (slot → index into `backends`,
/// or `backends6` for an IPv6 route id). All empty when the route has no
/// usable backend. The slots (8 KB) are shared with the table cache, so a
/// plan copies and compares a pointer per unchanged route, not its table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    pub backends: Vec<BackendValue>,
    pub backends6: Vec<BackendValue6>,
    pub slots: Arc<[u16]>,
}

impl RouteTable {
    pub fn backend_count(&self) -> usize {
        self.backends.len() + self.backends6.len()
    }
}

/// Every entry the L4 maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L4Maps {
    pub listeners: BTreeMap<ListenerKey, u32>,
    pub listeners6: BTreeMap<ListenerKey6, u32>,
    /// route id → its lookup table.
    pub routes: BTreeMap<u32, RouteTable>,
    /// route id → name hash (`ROUTE_NAMES`).
    pub names: BTreeMap<u32, u64>,
}

/// Maglev tables of the last plan by their weighted backends, so that a
/// config change rebuilds only the tables of routes whose backends changed.
#[derive(Debug, Default)]
pub struct TableCache {
    tables: BTreeMap<Vec<Weighted>, Arc<[u16]>>,
}

impl TableCache {
    fn build(
        &self,
        weighted: &[Weighted],
        used: &mut BTreeMap<Vec<Weighted>, Arc<[u16]>>,
    ) -> Arc<[u16]> {
        if let Some(slots) = used.get(weighted) {
            return slots.clone();
        }
        let slots = match self.tables.get(weighted) {
            Some(slots) => slots.clone(),
            None => maglev::build(weighted, MAGLEV_TABLE_SIZE).into(),
        };
        used.insert(weighted.to_vec(), slots.clone());
        slots
    }
}

/// Builds the maps for `listeners`. `source_for` gives the node address the
/// kernel would use towards a backend (the source-NAT address).
pub fn plan(
    listeners: &[L4Listener],
    ids: &mut RouteIds,
    cache: &mut TableCache,
    source_for: &dyn Fn(IpAddr) -> IpAddr,
) -> L4Maps {
    let mut used = BTreeMap::new();
    let live: Vec<(RouteRef, Family)> = listeners
        .iter()
        .map(|l| (l.route.clone(), Family::of(l.addr)))
        .collect();
    ids.assign(&live);
    let mut maps = L4Maps::default();
    for listener in listeners {
        let family = Family::of(listener.addr);
        let Some(route_id) = ids.get(&listener.route, family) else {
            continue;
        };
        let port_be = listener.port.to_be();
        let proto = match listener.protocol {
            L4Protocol::Tcp => PROTO_TCP,
            L4Protocol::Udp => PROTO_UDP,
        };
        match listener.addr {
            IpAddr::V4(addr) => {
                let key = ListenerKey {
                    addr_be: u32::from(addr).to_be(),
                    port_be,
                    proto,
                    _pad: 0,
                };
                maps.listeners.insert(key, route_id);
            }
            IpAddr::V6(addr) => {
                let key = ListenerKey6 {
                    addr_be: addr6_be(addr),
                    port_be,
                    proto,
                    _pad: 0,
                };
                maps.listeners6.insert(key, route_id);
            }
        }
        if maps.routes.contains_key(&route_id) {
            continue; // Same route on another address: one table serves both.
        }
        maps.names
            .insert(route_id, family_name_hash(&listener.route, family));
        let table = route_table(&listener.backends, family, source_for, |w| {
            cache.build(w, &mut used)
        });
        maps.routes.insert(route_id, table);
    }
    cache.tables = used;
    maps
}

/// The backends (of the listener's family, weight > 0, at most
/// `MAX_BACKENDS_PER_ROUTE`, the same address:port merged) and their Maglev table.
fn route_table(
    endpoints: &[WeightedEndpoint],
    family: Family,
    source_for: &dyn Fn(IpAddr) -> IpAddr,
    mut build: impl FnMut(&[Weighted]) -> Arc<[u16]>,
) -> RouteTable {
    let mut merged: BTreeMap<(IpAddr, u16), u64> = BTreeMap::new();
    for e in endpoints {
        if Family::of(e.addr.ip()) == family && e.weight > 0 {
            *merged.entry((e.addr.ip(), e.addr.port())).or_default() += e.weight;
        }
    }
    if merged.len() > MAX_BACKENDS_PER_ROUTE as usize {
        tracing::warn!(
            endpoints = merged.len(),
            limit = MAX_BACKENDS_PER_ROUTE,
            "route has more endpoints than its table holds; using the first ones"
        );
    }
    let chosen: Vec<((IpAddr, u16), u64)> = merged
        .into_iter()
        .take(MAX_BACKENDS_PER_ROUTE as usize)
        .collect();
    let weighted: Vec<Weighted> = chosen
        .iter()
        .map(|((addr, port), weight)| Weighted {
            identity: identity(*addr, *port),
            weight: *weight,
        })
        .collect();
    let slots = build(&weighted);
    if slots.is_empty() {
        return RouteTable::default();
    }
    let mut table = RouteTable {
        slots,
        ..RouteTable::default()
    };
    for ((addr, port), _) in chosen {
        match (addr, source_for(addr)) {
            (IpAddr::V4(addr), IpAddr::V4(source)) => table.backends.push(BackendValue {
                addr_be: u32::from(addr).to_be(),
                snat_addr_be: u32::from(source).to_be(),
                port_be: port.to_be(),
                _pad: 0,
            }),
            (IpAddr::V6(addr), IpAddr::V6(source)) => table.backends6.push(BackendValue6 {
                addr_be: addr6_be(addr),
                snat_addr_be: addr6_be(source),
                port_be: port.to_be(),
                _pad: 0,
            }),
            // `source_for` answers in the backend's family.
            _ => unreachable!("source address of another family than {addr}"),
        }
    }
    table
}

/// A backend's Maglev identity: its permutation, stable across plans.
fn identity(addr: IpAddr, port: u16) -> u64 {
    match addr {
        IpAddr::V4(addr) => (u64::from(u32::from(addr)) << 16) | u64::from(port),
        IpAddr::V6(addr) => {
            let bits = u128::from(addr);
            ((bits >> 64) as u64 ^ bits as u64).rotate_left(16) ^ u64::from(port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    fn listener(name: &str, port: u16, backends: &[(&str, u64)]) -> L4Listener {
        L4Listener {
            addr: Ipv4Addr::new(198, 18, 0, 1).into(),
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
        let maps = plan(&[l], &mut ids, &mut TableCache::default(), &|_| {
            Ipv4Addr::new(198, 18, 1, 1).into()
        });
        let table = &maps.routes[&0];
        assert_eq!(table.slots.len(), MAGLEV_TABLE_SIZE as usize);
        let first = table
            .slots
            .iter()
            .filter(|i| {
                table.backends[usize::from(**i)].addr_be
                    == u32::from(Ipv4Addr::new(198, 18, 1, 2)).to_be()
            })
            .count();
        // 3/4 of 4093 slots, within one slot.
        assert!((3069..=3070).contains(&first), "{first}");
        assert!(
            table
                .backends
                .iter()
                .all(|b| b.snat_addr_be == u32::from(Ipv4Addr::new(198, 18, 1, 1)).to_be())
        );
    }

    #[test]
    fn a_route_without_backends_has_an_empty_table() {
        let mut ids = RouteIds::default();
        let maps = plan(
            &[listener("r", 9000, &[])],
            &mut ids,
            &mut TableCache::default(),
            &|a| a,
        );
        assert_eq!(maps.routes[&0], RouteTable::default());
        assert_eq!(maps.listeners.len(), 1);
    }

    #[test]
    fn route_ids_are_stable_and_reused() {
        let mut ids = RouteIds::default();
        let a = listener("a", 1, &[]);
        let b = listener("b", 2, &[]);
        plan(
            &[a.clone(), b.clone()],
            &mut ids,
            &mut TableCache::default(),
            &|x| x,
        );
        assert_eq!(
            (ids.get(&a.route, Family::V4), ids.get(&b.route, Family::V4)),
            (Some(0), Some(1))
        );
        let c = listener("c", 3, &[]);
        plan(
            &[b.clone(), c.clone()],
            &mut ids,
            &mut TableCache::default(),
            &|x| x,
        );
        assert_eq!(ids.get(&b.route, Family::V4), Some(1), "b keeps its id");
        assert_eq!(
            ids.get(&c.route, Family::V4),
            Some(0),
            "c reuses a's freed id"
        );
        assert_eq!(ids.get(&a.route, Family::V4), None);
    }

    #[test]
    fn a_restarted_agent_gives_routes_back_their_ids() {
        let mut before = RouteIds::default();
        let (a, b, c) = (
            listener("a", 1, &[]),
            listener("b", 2, &[]),
            listener("c", 3, &[]),
        );
        let maps = plan(
            &[a.clone(), b.clone(), c.clone()],
            &mut before,
            &mut TableCache::default(),
            &|x| x,
        );
        // The new agent sees b and c (a was deleted meanwhile) and a new route d,
        // listed first: b and c keep their ids, d takes a's.
        let mut after = RouteIds::default();
        after.adopt(maps.names.iter().map(|(id, h)| (*id, *h)));
        let d = listener("d", 4, &[]);
        plan(
            &[d.clone(), c.clone(), b.clone()],
            &mut after,
            &mut TableCache::default(),
            &|x| x,
        );
        assert_eq!(
            after.get(&b.route, Family::V4),
            before.get(&b.route, Family::V4)
        );
        assert_eq!(
            after.get(&c.route, Family::V4),
            before.get(&c.route, Family::V4)
        );
        assert_eq!(
            after.get(&d.route, Family::V4),
            before.get(&a.route, Family::V4)
        );
    }

    #[test]
    fn a_route_on_both_families_gets_one_id_and_table_per_family() {
        let mut ids = RouteIds::default();
        let v4 = listener(
            "r",
            9000,
            &[
                ("198.18.1.2:7000", 1),
                ("[fd00::1:2]:7000", 1),
                ("[fd00::1:3]:7000", 3),
            ],
        );
        let v6 = L4Listener {
            addr: "fd00::1".parse().unwrap(),
            ..v4.clone()
        };
        let source = |a: IpAddr| -> IpAddr {
            match a {
                IpAddr::V4(_) => Ipv4Addr::new(198, 18, 1, 1).into(),
                IpAddr::V6(_) => "fd00::1:1".parse().unwrap(),
            }
        };
        let maps = plan(
            &[v4.clone(), v6.clone()],
            &mut ids,
            &mut TableCache::default(),
            &source,
        );
        let id4 = ids.get(&v4.route, Family::V4).unwrap();
        let id6 = ids.get(&v4.route, Family::V6).unwrap();
        assert_ne!(id4, id6);
        assert_ne!(maps.names[&id4], maps.names[&id6]);
        assert_eq!(maps.listeners.values().collect::<Vec<_>>(), [&id4]);
        let key6 = maps.listeners6.keys().next().unwrap();
        assert_eq!(
            ipv6_of(key6.addr_be),
            "fd00::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(u16::from_be(key6.port_be), 9000);
        let (t4, t6) = (&maps.routes[&id4], &maps.routes[&id6]);
        assert_eq!((t4.backends.len(), t4.backends6.len()), (1, 0));
        assert_eq!((t6.backends.len(), t6.backends6.len()), (0, 2));
        assert!(
            t6.backends6
                .iter()
                .all(|b| ipv6_of(b.snat_addr_be) == "fd00::1:1".parse::<Ipv6Addr>().unwrap())
        );
        // Weights 1:3 over the IPv6 backends, within one slot.
        let heavy = t6
            .backends6
            .iter()
            .position(|b| ipv6_of(b.addr_be) == "fd00::1:3".parse::<Ipv6Addr>().unwrap())
            .unwrap();
        let slots = t6
            .slots
            .iter()
            .filter(|i| usize::from(**i) == heavy)
            .count();
        assert!((3069..=3070).contains(&slots), "{slots}");
    }

    #[test]
    fn a_thousand_routes_build_quickly_with_full_tables() {
        let listeners: Vec<L4Listener> = (0..1000u16)
            .map(|i| {
                let backends: Vec<(String, u64)> = (0..10u64)
                    .map(|b| {
                        (
                            format!("198.18.{}.{}:{}", 1 + i / 250, 1 + b, 7000 + i),
                            b + 1,
                        )
                    })
                    .collect();
                let refs: Vec<(&str, u64)> =
                    backends.iter().map(|(a, w)| (a.as_str(), *w)).collect();
                listener(&format!("r{i}"), 10000 + i, &refs)
            })
            .collect();
        let mut ids = RouteIds::default();
        let mut cache = TableCache::default();
        let started = std::time::Instant::now();
        let maps = plan(&listeners, &mut ids, &mut cache, &|x| x);
        let took = started.elapsed();
        assert_eq!(maps.routes.len(), 1000);
        assert!(
            maps.routes
                .values()
                .all(|t| t.slots.len() == MAGLEV_TABLE_SIZE as usize && t.backends.len() == 10)
        );
        // One route's backends change: only its table is built again.
        let mut changed = listeners.clone();
        changed[7].backends.pop();
        let started = std::time::Instant::now();
        let again = plan(&changed, &mut ids, &mut cache, &|x| x);
        let rebuild = started.elapsed();
        eprintln!(
            "1000 routes x 10 backends: tables built in {took:?}, one changed in {rebuild:?}"
        );
        assert_eq!(again.routes[&7].backends.len(), 9);
        assert_eq!(again.routes[&8], maps.routes[&8]);
        // The unchanged routes' tables are the cached ones, shared: the
        // applier's diff finds one table to write.
        assert!(Arc::ptr_eq(&again.routes[&8].slots, &maps.routes[&8].slots));
        let writes = again
            .routes
            .iter()
            .filter(|(id, t)| maps.routes.get(id) != Some(t))
            .count();
        assert_eq!(writes, 1);
        assert!(rebuild * 10 < took, "{rebuild:?} vs {took:?}");
    }
}
