//! Which TLSRoute a server name selects on one passthrough listener: an exact
//! hostname first, then the longest wildcard, then a route without hostnames.

use std::collections::HashMap;

use crate::model::{TlsPassthroughRoute, WeightedEndpoint};

#[derive(Debug, Default)]
pub struct SniTable {
    routes: Vec<TlsPassthroughRoute>,
    /// Lower-cased hostname → index in `routes`.
    exact: HashMap<String, usize>,
    /// (".suffix" lower-cased, index), longest suffix first.
    wildcards: Vec<(String, usize)>,
    any: Option<usize>,
}

impl SniTable {
    /// `routes` come in precedence order: on a hostname claimed twice, the first wins.
    pub fn new(routes: Vec<TlsPassthroughRoute>) -> Self {
        let mut table = SniTable::default();
        for (index, route) in routes.iter().enumerate() {
            if route.hostnames.is_empty() {
                table.any.get_or_insert(index);
            }
            for hostname in &route.hostnames {
                let hostname = hostname.to_ascii_lowercase();
                match hostname.strip_prefix('*') {
                    Some(suffix) => {
                        if !table.wildcards.iter().any(|(s, _)| s == suffix) {
                            table.wildcards.push((suffix.to_string(), index));
                        }
                    }
                    None => {
                        table.exact.entry(hostname).or_insert(index);
                    }
                }
            }
        }
        // Stable: among equally long suffixes the earlier route stays first.
        table
            .wildcards
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        table.routes = routes;
        table
    }

    pub fn routes(&self) -> &[TlsPassthroughRoute] {
        &self.routes
    }

    /// The route serving `server_name` (compared without case), if any.
    pub fn find(&self, server_name: &str) -> Option<&TlsPassthroughRoute> {
        let name = server_name.to_ascii_lowercase();
        let index = self.exact.get(&name).copied().or_else(|| {
            self.wildcards
                .iter()
                .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
                .map(|(_, index)| *index)
                .or(self.any)
        })?;
        self.routes.get(index)
    }
}

/// Picks an endpoint by weight; None when the route has none.
pub fn choose_backend(backends: &[WeightedEndpoint]) -> Option<std::net::SocketAddr> {
    let total: u64 = backends.iter().map(|b| b.weight).sum();
    if total == 0 {
        return None;
    }
    let mut pick = fastrand::u64(0..total);
    for backend in backends {
        if pick < backend.weight {
            return Some(backend.addr);
        }
        pick -= backend.weight;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RouteRef;

    fn route(name: &str, hostnames: &[&str]) -> TlsPassthroughRoute {
        TlsPassthroughRoute {
            route: RouteRef {
                kind: "TLSRoute",
                namespace: "ns".into(),
                name: name.into(),
                rule: 0,
            },
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
            backends: Vec::new(),
            terminate: false,
            backend_tls: Default::default(),
        }
    }

    fn found<'a>(table: &'a SniTable, sni: &str) -> Option<&'a str> {
        table.find(sni).map(|r| r.route.name.as_str())
    }

    #[test]
    fn exact_beats_the_longest_wildcard_which_beats_shorter_ones() {
        let table = SniTable::new(vec![
            route("short", &["*.example"]),
            route("long", &["*.b.example"]),
            route("exact", &["a.b.example"]),
        ]);
        assert_eq!(found(&table, "a.b.example"), Some("exact"));
        assert_eq!(found(&table, "A.B.Example"), Some("exact"));
        assert_eq!(found(&table, "c.b.example"), Some("long"));
        assert_eq!(found(&table, "x.y.b.example"), Some("long"));
        assert_eq!(found(&table, "c.example"), Some("short"));
        // A wildcard needs at least one label before its suffix.
        assert_eq!(found(&table, "example"), None);
        assert_eq!(found(&table, "other.test"), None);
    }

    #[test]
    fn a_route_without_hostnames_takes_what_nothing_else_does() {
        let table = SniTable::new(vec![route("a", &["a.example"]), route("any", &[])]);
        assert_eq!(found(&table, "a.example"), Some("a"));
        assert_eq!(found(&table, "z.example"), Some("any"));
    }

    #[test]
    fn the_first_route_in_precedence_order_keeps_a_shared_hostname() {
        let table = SniTable::new(vec![
            route("older", &["a.example", "*.w.example"]),
            route("newer", &["a.example", "*.w.example"]),
        ]);
        assert_eq!(found(&table, "a.example"), Some("older"));
        assert_eq!(found(&table, "q.w.example"), Some("older"));
    }

    #[test]
    fn weighted_choice_only_picks_weighted_endpoints() {
        let a: std::net::SocketAddr = "198.18.0.1:1".parse().unwrap();
        let b: std::net::SocketAddr = "198.18.0.2:1".parse().unwrap();
        let backends = [
            WeightedEndpoint { addr: a, weight: 0 },
            WeightedEndpoint { addr: b, weight: 5 },
        ];
        for _ in 0..100 {
            assert_eq!(choose_backend(&backends), Some(b));
        }
        assert_eq!(choose_backend(&[]), None);
    }
}
