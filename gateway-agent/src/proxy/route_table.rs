//! Request → rule lookup. Indexed by host first (exact, then the longest
//! wildcard suffix, then rules for any host), so cost does not grow with the
//! number of routes on other hosts. Within a host, rules are already in
//! precedence order (translate sorted them): the first match wins.

use std::collections::HashMap;

use crate::model::{HttpRule, PathMatch};

#[derive(Debug, Default)]
pub struct RouteTable {
    rules: Vec<HttpRule>,
    exact: HashMap<String, Vec<usize>>,
    /// (".example.com", rules), longest suffix first.
    wildcard: Vec<(String, Vec<usize>)>,
    any_host: Vec<usize>,
}

impl RouteTable {
    pub fn new(rules: Vec<HttpRule>) -> Self {
        let mut table = RouteTable::default();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, rule) in rules.iter().enumerate() {
            if rule.hostnames.is_empty() {
                table.any_host.push(index);
            }
            for host in &rule.hostnames {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_default().push(index),
                    None => table.exact.entry(host).or_default().push(index),
                }
            }
        }
        table.wildcard = wildcard.into_iter().collect();
        table
            .wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        table.rules = rules;
        table
    }

    /// The rule serving `host` (a Host header, port allowed) and `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<&HttpRule> {
        let host = strip_port(host).to_ascii_lowercase();
        let candidates = self
            .exact
            .get(&host)
            .or_else(|| {
                self.wildcard
                    .iter()
                    .find(|(suffix, _)| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
                    .map(|(_, rules)| rules)
            })
            .unwrap_or(&self.any_host);
        candidates
            .iter()
            .map(|i| &self.rules[*i])
            .find(|rule| path_matches(&rule.matched.path, path))
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Segment-aware prefix matching: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
pub fn path_matches(rule: &PathMatch, path: &str) -> bool {
    match rule {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => {
            let p = p.trim_end_matches('/');
            p.is_empty()
                || path == p
                || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HttpMatch, RouteRef};

    fn rule(name: &str, hosts: &[&str], path: PathMatch) -> HttpRule {
        HttpRule {
            route: RouteRef {
                kind: "HTTPRoute",
                namespace: "ns".into(),
                name: name.into(),
                rule: 0,
            },
            hostnames: hosts.iter().map(|h| h.to_string()).collect(),
            matched: HttpMatch { path },
            backends: Vec::new(),
            invalid_weight: 0,
        }
    }

    #[test]
    fn prefix_matching_respects_segments() {
        let p = PathMatch::Prefix("/foo".into());
        assert!(path_matches(&p, "/foo"));
        assert!(path_matches(&p, "/foo/bar"));
        assert!(!path_matches(&p, "/foobar"));
        assert!(path_matches(&PathMatch::Prefix("/foo/".into()), "/foo/bar"));
        assert!(path_matches(&PathMatch::Prefix("/".into()), "/anything"));
        assert!(!path_matches(&PathMatch::Exact("/foo".into()), "/foo/"));
    }

    #[test]
    fn exact_host_beats_wildcard_and_wildcard_beats_any() {
        let table = RouteTable::new(vec![
            rule("any", &[], PathMatch::Prefix("/".into())),
            rule("wild", &["*.example.com"], PathMatch::Prefix("/".into())),
            rule("exact", &["a.example.com"], PathMatch::Prefix("/".into())),
        ]);
        assert_eq!(
            table.find("a.example.com:8080", "/").unwrap().route.name,
            "exact"
        );
        assert_eq!(table.find("B.example.com", "/").unwrap().route.name, "wild");
        assert_eq!(
            table.find("x.y.example.com", "/").unwrap().route.name,
            "wild"
        );
        assert_eq!(table.find("example.com", "/").unwrap().route.name, "any");
    }

    #[test]
    fn no_match_within_the_host_is_none() {
        let table = RouteTable::new(vec![rule("r", &["h"], PathMatch::Exact("/a".into()))]);
        assert!(table.find("h", "/b").is_none());
        assert!(table.find("h", "/a").is_some());
    }
}
