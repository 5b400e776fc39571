//! Ids of TLSRoutes in the kernel's per-route counters (`TLS_ROUTE_STATS`,
//! `MAX_TLS_ROUTES` slots). A route keeps its id while any socket serves it;
//! a removed route's id goes back to the pool, so routes created and deleted
//! over the agent's life do not run the slots out.

use std::collections::{BTreeMap, VecDeque};

use crate::model::RouteRef;

pub struct RouteIds {
    /// Per route: its id, and how many sockets' tables hold it.
    ids: BTreeMap<RouteRef, (u32, usize)>,
    /// Freed ids, oldest first: reused in that order, so an id is handed out
    /// again as late as possible (a connection of its old route may still be
    /// finishing).
    free: VecDeque<u32>,
    /// The lowest id never handed out.
    next: u32,
    limit: u32,
}

impl RouteIds {
    pub fn new(limit: u32) -> Self {
        Self {
            ids: BTreeMap::new(),
            free: VecDeque::new(),
            next: 0,
            limit,
        }
    }

    pub fn get(&self, route: &RouteRef) -> Option<u32> {
        self.ids.get(route).map(|(id, _)| *id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&RouteRef, u32)> {
        self.ids.iter().map(|(route, (id, _))| (route, *id))
    }

    /// One more table holds `route`: gives it an id if it has none and one is
    /// left. Returns the new id and whether it was freed before (its
    /// counters, still its old route's, are the caller's to zero), or None
    /// (the route had an id already, or all are taken: it goes uncounted).
    pub fn hold(&mut self, route: &RouteRef) -> Option<(u32, bool)> {
        if let Some((_, users)) = self.ids.get_mut(route) {
            *users += 1;
            return None;
        }
        let (id, reused) = match self.free.pop_front() {
            Some(id) => (id, true),
            None if self.next < self.limit => {
                self.next += 1;
                (self.next - 1, false)
            }
            None => return None,
        };
        self.ids.insert(route.clone(), (id, 1));
        Some((id, reused))
    }

    /// One table less holds `route`: true when that was the last, its id freed.
    pub fn release(&mut self, route: &RouteRef) -> bool {
        let Some((id, users)) = self.ids.get_mut(route) else {
            return false;
        };
        *users -= 1;
        if *users > 0 {
            return false;
        }
        self.free.push_back(*id);
        self.ids.remove(route);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn route(n: usize) -> RouteRef {
        RouteRef {
            kind: "TLSRoute",
            namespace: "default".into(),
            name: format!("route-{n}").as_str().into(),
            rule: 0,
        }
    }

    #[test]
    fn removed_routes_free_their_ids_for_new_ones() {
        const LIMIT: u32 = 64;
        let mut ids = RouteIds::new(LIMIT);
        // Ten times the limit's worth of routes over time, at most half the
        // limit alive at once: every one gets an id.
        let alive = LIMIT as usize / 2;
        for n in 0..10 * LIMIT as usize {
            let (id, reused) = ids.hold(&route(n)).expect("a free id");
            assert!(id < LIMIT, "{id}");
            assert_eq!(reused, n > alive, "fresh ids first, then freed ones");
            if n >= alive {
                assert!(ids.release(&route(n - alive)), "its id freed");
            }
            let held: BTreeSet<u32> = ids.iter().map(|(_, id)| id).collect();
            assert_eq!(held.len(), ids.iter().count(), "an id held twice");
        }
        assert_eq!(ids.iter().count(), alive);
    }

    #[test]
    fn a_route_keeps_its_id_while_any_table_holds_it() {
        let mut ids = RouteIds::new(2);
        assert_eq!(ids.hold(&route(0)), Some((0, false)));
        assert_eq!(ids.hold(&route(0)), None, "a second socket: same id");
        assert_eq!(ids.hold(&route(1)), Some((1, false)));
        assert_eq!(ids.hold(&route(2)), None, "all ids taken");
        assert_eq!(ids.get(&route(2)), None);
        assert!(!ids.release(&route(0)), "one socket still holds it");
        assert_eq!(ids.get(&route(0)), Some(0));
        assert!(ids.release(&route(0)));
        assert_eq!(ids.get(&route(0)), None);
        assert_eq!(
            ids.hold(&route(2)),
            Some((0, true)),
            "the freed id is reused"
        );
        assert_eq!(ids.get(&route(1)), Some(1), "a kept route keeps its id");
    }
}
