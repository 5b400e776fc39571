//! Request → rule lookup. Indexed by host first (exact, then the longest
//! wildcard suffix, then rules for any host), so cost does not grow with the
//! number of routes on other hosts. Within a host, rules are already in
//! precedence order (translate sorted them): the first whose match holds wins.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hyper::HeaderMap;
use regex::Regex;

use crate::model::{HttpMatch, HttpRule, PathMatch, ValueMatch};

/// What of a request the matches look at.
pub struct RequestView<'a> {
    /// Host header or authority, port allowed.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a str,
    pub headers: &'a HeaderMap,
}

/// Gateway API regular expressions must match the whole value.
fn full_match_regex(pattern: &str) -> Option<Regex> {
    match Regex::new(&format!("^(?:{pattern})$")) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(%pattern, error = %e, "regular expression does not compile; its match never holds");
            None
        }
    }
}

/// The regular expressions of one rule's match, compiled once per table;
/// everything else (exact values, prefixes, names) is read from the rule in
/// the table's shared list. Most matches have none: the table keeps one
/// only for the rules that have any.
#[derive(Debug)]
struct CompiledRule {
    /// In the order the match is evaluated: path, headers, query parameters.
    /// None for one that does not compile (its condition never holds).
    regexes: Box<[Option<Regex>]>,
}

impl CompiledRule {
    fn new(rule: &HttpRule) -> Self {
        let HttpMatch {
            path,
            headers,
            query_params,
            ..
        } = &*rule.matched;
        let path = match path {
            PathMatch::RegularExpression(r) => Some(r),
            PathMatch::Exact(_) | PathMatch::Prefix(_) => None,
        };
        let values = headers
            .iter()
            .chain(query_params)
            .filter_map(|m| match &m.value {
                ValueMatch::RegularExpression(r) => Some(r),
                ValueMatch::Exact(_) => None,
            });
        Self {
            regexes: path
                .into_iter()
                .chain(values)
                .map(|r| full_match_regex(r))
                .collect(),
        }
    }

    /// Whether `rule`'s match holds, with its compiled regular expressions.
    fn matches(regexes: &[Option<Regex>], rule: &HttpRule, request: &RequestView) -> bool {
        Self::mismatch(regexes, rule, request).is_none()
    }

    /// The first condition of `rule`'s match that `request` fails, if any.
    fn mismatch(
        regexes: &[Option<Regex>],
        rule: &HttpRule,
        request: &RequestView,
    ) -> Option<Mismatch> {
        // Each regular expression condition, in order, takes the next compiled one.
        let mut regexes = regexes.iter();
        let mut regex_holds = |actual: &str| {
            regexes
                .next()
                .and_then(Option::as_ref)
                .is_some_and(|r| r.is_match(actual))
        };
        let matched = &rule.matched;
        let path_ok = match &matched.path {
            PathMatch::Exact(p) => p == request.path,
            PathMatch::Prefix(p) => prefix_matches(p, request.path),
            PathMatch::RegularExpression(_) => regex_holds(request.path),
        };
        let mut holds = |value: &ValueMatch, actual: &str| match value {
            ValueMatch::Exact(v) => v == actual,
            ValueMatch::RegularExpression(_) => regex_holds(actual),
        };
        if !path_ok {
            return Some(Mismatch::Path);
        }
        if let Some(method) = &matched.method
            && method != request.method
        {
            return Some(Mismatch::Method);
        }
        let header = matched.headers.iter().find(|m| {
            // Repeated headers compare on their values joined by ",", as the
            // spec says a proxy may treat them (RFC 9110 5.3).
            let values: Vec<&str> = request
                .headers
                .get_all(m.name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            values.is_empty() || !holds(&m.value, &values.join(","))
        });
        if let Some(m) = header {
            return Some(Mismatch::Header(m.name.clone()));
        }
        matched
            .query_params
            .iter()
            .find(|m| {
                // The first occurrence of a repeated parameter is the one that counts.
                let value = request.query.and_then(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| *k == m.name)
                        .map(|(_, v)| v)
                });
                !value.is_some_and(|v| holds(&m.value, &v))
            })
            .map(|m| Mismatch::QueryParam(m.name.clone()))
    }
}

/// Which condition of a rule's match a request failed (for `explain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    Path,
    Method,
    Header(String),
    QueryParam(String),
}

/// Why a rule of the table did or did not serve a request (for `explain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The rule serving the request.
    Chosen,
    /// Its match holds, but a rule earlier in precedence order matched first.
    LostOnPrecedence,
    /// Its hostnames cover the request's host, its match does not hold.
    NoMatch(Mismatch),
    /// None of its hostnames covers the request's host.
    OtherHostname,
    /// It belongs to another listener on this socket than the one whose
    /// hostname covers the request's host (listener isolation).
    OtherListener,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// Translate's rules, shared with the config they came from.
    source: Arc<Vec<HttpRule>>,
    /// The compiled regular expressions of the rules that have any, by rule
    /// index (ascending): most rules have none, and a table holds thousands.
    compiled: Box<[(usize, CompiledRule)]>,
    /// Hashed with foldhash: SipHash cost more than the rest of a lookup.
    /// Only the operator's hostnames are keys (requests only look up), so
    /// clients cannot flood it with colliding keys.
    exact: foldhash::HashMap<String, Vec<usize>>,
    /// (".example.com", rules), longest suffix first.
    wildcard: Vec<(String, Vec<usize>)>,
    any_host: Vec<usize>,
    /// Hostnames of the listeners behind this socket: which one serves a request.
    listener_exact: foldhash::HashSet<String>,
    /// ".example.com" of "*.example.com", longest first.
    listener_wildcard: Vec<String>,
}

impl RouteTable {
    pub fn new(rules: impl Into<Arc<Vec<HttpRule>>>) -> Self {
        let rules = rules.into();
        let mut table = RouteTable::default();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, rule) in rules.iter().enumerate() {
            if rule.hostnames.is_empty() {
                table.any_host.push(index);
            }
            for host in rule.hostnames.iter() {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_default().push(index),
                    None => table.exact.entry(host).or_default().push(index),
                }
            }
        }
        for rule in rules.iter() {
            match rule
                .listener_hostname
                .as_deref()
                .map(|h| (h, h.strip_prefix('*')))
            {
                Some((_, Some(suffix))) => table.listener_wildcard.push(suffix.to_string()),
                Some((host, None)) => {
                    table.listener_exact.insert(host.to_string());
                }
                None => {}
            }
        }
        table
            .listener_wildcard
            .sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        table.listener_wildcard.dedup();
        table.wildcard = wildcard.into_iter().collect();
        table
            .wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        // Kept while the socket's rules do not change: no spare room.
        for indexes in table.exact.values_mut() {
            indexes.shrink_to_fit();
        }
        table.exact.shrink_to_fit();
        table.compiled = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| (index, CompiledRule::new(rule)))
            .filter(|(_, compiled)| !compiled.regexes.is_empty())
            .collect();
        table.source = rules;
        table
    }

    /// The rule serving `request`. The listener whose hostname matches the
    /// host most specifically serves it (listener isolation); among that
    /// listener's rules, the first whose match holds among those of the exact
    /// hostname, then of each matching wildcard (longest first), then of
    /// rules for any host: the spec's hostname precedence, where a request
    /// that no rule of a more specific hostname matches can still match a
    /// less specific one.
    pub fn find(&self, request: &RequestView) -> Option<&HttpRule> {
        let (host, listener) = self.serving_listener(request);
        self.in_precedence_order(&host)
            .map(|i| (&self.source[i], self.compiled(i)))
            .filter(|(rule, _)| rule.listener_hostname == listener)
            .find(|(rule, regexes)| CompiledRule::matches(regexes, rule, request))
            .map(|(rule, _)| rule)
    }

    /// Rule `index`'s compiled regular expressions (none for most rules).
    fn compiled(&self, index: usize) -> &[Option<Regex>] {
        self.compiled
            .binary_search_by_key(&index, |(i, _)| *i)
            .map_or(&[], |found| &self.compiled[found].1.regexes)
    }

    /// The request's host (lower-cased, without port) and the hostname of the
    /// listener that serves it: the most specific one covering the host.
    fn serving_listener<'r>(&self, request: &RequestView<'r>) -> (Cow<'r, str>, Option<String>) {
        let host = strip_port(request.host);
        // Most clients send it lower-cased already: no copy then.
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let listener = self.listener_of(&host);
        (host, listener)
    }

    /// Indexes of the rules whose hostnames cover `host`: those of the exact
    /// hostname, then of each matching wildcard (longest first), then of
    /// rules for any host.
    fn in_precedence_order<'a>(&'a self, host: &'a str) -> impl Iterator<Item = usize> + 'a {
        let exact = self.exact.get(host).into_iter();
        let wildcard = self
            .wildcard
            .iter()
            .filter(move |(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, rules)| rules);
        exact
            .chain(wildcard)
            .chain(std::iter::once(&self.any_host))
            .flatten()
            .copied()
    }

    /// `find`, with the verdict on every rule of the table: the rules whose
    /// hostnames cover the host come first, in the order `find` tries them.
    pub fn explain(&self, request: &RequestView) -> Vec<(&HttpRule, Verdict)> {
        let (host, listener) = self.serving_listener(request);
        let mut seen = HashSet::new();
        let mut chosen = false;
        let mut verdicts = Vec::new();
        for i in self.in_precedence_order(&host) {
            if !seen.insert(i) {
                continue;
            }
            let (rule, compiled) = (&self.source[i], self.compiled(i));
            let verdict = if rule.listener_hostname != listener {
                Verdict::OtherListener
            } else {
                match CompiledRule::mismatch(compiled, rule, request) {
                    Some(mismatch) => Verdict::NoMatch(mismatch),
                    None if chosen => Verdict::LostOnPrecedence,
                    None => {
                        chosen = true;
                        Verdict::Chosen
                    }
                }
            };
            verdicts.push((rule, verdict));
        }
        for (i, rule) in self.source.iter().enumerate() {
            if !seen.contains(&i) {
                verdicts.push((rule, Verdict::OtherHostname));
            }
        }
        verdicts
    }
}

impl RouteTable {
    /// Also knows these listener hostnames (listeners that have no rule yet
    /// still take the hosts they match).
    pub fn with_listener_hostnames<'h>(
        mut self,
        hostnames: impl IntoIterator<Item = &'h str>,
    ) -> Self {
        for host in hostnames {
            let host = host.to_ascii_lowercase();
            match host.strip_prefix('*') {
                Some(suffix) => self.listener_wildcard.push(suffix.to_string()),
                None => {
                    self.listener_exact.insert(host);
                }
            }
        }
        self.listener_wildcard
            .sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        self.listener_wildcard.dedup();
        self
    }

    /// The hostname of the listener that serves `host` (lowercase, no port):
    /// the exact one, else the longest wildcard; None for the listener
    /// without hostname.
    fn listener_of(&self, host: &str) -> Option<String> {
        if self.listener_exact.contains(host) {
            Some(host.to_string())
        } else {
            self.listener_wildcard
                .iter()
                .find(|suffix| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
                .map(|suffix| format!("*{suffix}"))
        }
    }

    /// Whether a request for `host` on a TLS connection whose SNI was `sni`
    /// belongs to another listener than the one the handshake chose (and
    /// whose certificate the client saw): a client reusing an HTTP/2
    /// connection for another host (connection coalescing). Such a request
    /// is answered 421 Misdirected Request so that the client connects anew.
    pub fn misdirected(&self, sni: &str, host: &str) -> bool {
        let host = strip_port(host).to_ascii_lowercase();
        self.listener_of(&sni.to_ascii_lowercase()) != self.listener_of(&host)
    }
}

/// The host part of a Host header (`h`, `h:port`, `[v6]:port`).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    // A byte search: `rsplit_once(':')` cost ~160 instructions (callgrind).
    match host.bytes().rposition(|b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

/// Segment-aware prefix matching: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    p.is_empty()
        || path == p
        || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests;
