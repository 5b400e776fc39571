//! Per-request metrics without a label lookup per request: each client
//! connection keeps the handles of the rule its last request matched, so a
//! kept-alive connection sending the same kind of request again (the usual
//! case) counts it with no label strings built and no hashing into the
//! metric families, which cost more than the rest of the accounting.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::RouteTable;
use crate::metrics::{ProxyMetrics, RequestLabels, RouteLabels, status_class};
use crate::model::HttpRule;

/// Status classes counted apart: 1xx to 5xx.
const CLASSES: usize = 5;

/// The handles of one rule of one table.
struct RuleHandles {
    /// The table the rule belongs to. Weak, so that an idle connection does
    /// not keep a replaced table alive; the allocation it pins is never
    /// reused meanwhile, so an equal pointer means the same table.
    table: Weak<RouteTable>,
    /// The rule's address inside that table (its identity there).
    rule: usize,
    labels: RouteLabels,
    duration: Histogram,
    requests: [Option<Counter>; CLASSES],
}

/// One connection's cache (requests of an HTTP/2 connection share it).
#[derive(Clone, Default)]
pub(super) struct RequestMetrics(Arc<Mutex<Option<RuleHandles>>>);

impl RequestMetrics {
    /// Counts one answered request: its duration and status class against
    /// the rule it matched (none: the empty labels), and a failed backend
    /// connection.
    pub(super) fn record(
        &self,
        metrics: &ProxyMetrics,
        table: &Arc<RouteTable>,
        rule: Option<&HttpRule>,
        status: u16,
        elapsed: Duration,
        connect_error: bool,
    ) {
        let Some(rule) = rule else {
            let route = RouteLabels::default();
            count_uncached(metrics, route, status, elapsed, connect_error);
            return;
        };
        let mut cached = self.0.lock().expect("request metrics lock");
        let address = std::ptr::from_ref(rule) as usize;
        let fresh = cached.as_ref().is_none_or(|c| {
            c.rule != address || !std::ptr::eq(c.table.as_ptr(), Arc::as_ptr(table))
        });
        if fresh {
            let labels = RouteLabels::of(Some(&rule.route));
            *cached = Some(RuleHandles {
                table: Arc::downgrade(table),
                rule: address,
                duration: metrics.request_duration.get_or_create(&labels).clone(),
                labels,
                requests: Default::default(),
            });
        }
        let handles = cached.as_mut().expect("filled above");
        handles.duration.observe(elapsed.as_secs_f64());
        let class = status_class(status);
        let index = usize::from(status / 100).clamp(1, CLASSES) - 1;
        handles.requests[index]
            .get_or_insert_with(|| {
                metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        route: handles.labels.clone(),
                        status_class: class,
                    })
                    .clone()
            })
            .inc();
        if connect_error {
            metrics
                .upstream_connect_errors
                .get_or_create(&handles.labels)
                .inc();
        }
    }
}

fn count_uncached(
    metrics: &ProxyMetrics,
    route: RouteLabels,
    status: u16,
    elapsed: Duration,
    connect_error: bool,
) {
    if connect_error {
        metrics.upstream_connect_errors.get_or_create(&route).inc();
    }
    metrics
        .request_duration
        .get_or_create(&route)
        .observe(elapsed.as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            status_class: status_class(status),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule of route `name` (namespace "ns"), without backends.
    fn rule(name: &str) -> HttpRule {
        let mut rule = crate::proxy::tests::rule(&[], 0);
        rule.route.name = name.into();
        rule
    }

    /// The table's rules, in their order (all of them cover any host).
    fn rules_of(table: &RouteTable) -> Vec<&HttpRule> {
        let headers = hyper::HeaderMap::new();
        let view = crate::proxy::RequestView {
            host: "any.example",
            path: "/",
            query: None,
            method: "GET",
            headers: &headers,
        };
        table.explain(&view).into_iter().map(|(r, _)| r).collect()
    }

    fn count(metrics: &ProxyMetrics, name: &str, class: &'static str) -> u64 {
        metrics
            .requests
            .get(&RequestLabels {
                route: RouteLabels::of(Some(&rule(name).route)),
                status_class: class,
            })
            .map_or(0, |c| c.get())
    }

    #[test]
    fn requests_count_against_the_rule_of_the_current_table() {
        let metrics = ProxyMetrics::default();
        let cache = RequestMetrics::default();
        let first = Arc::new(RouteTable::new(vec![rule("a"), rule("b")]));
        let rules = rules_of(&first);
        let (a, b) = (rules[0], rules[1]);
        let tick = Duration::from_millis(1);
        cache.record(&metrics, &first, Some(a), 200, tick, false);
        cache.record(&metrics, &first, Some(a), 200, tick, false);
        cache.record(&metrics, &first, Some(a), 503, tick, true);
        cache.record(&metrics, &first, Some(b), 200, tick, false);
        cache.record(&metrics, &first, None, 404, tick, false);
        assert_eq!(count(&metrics, "a", "2xx"), 2);
        assert_eq!(count(&metrics, "a", "5xx"), 1);
        assert_eq!(count(&metrics, "b", "2xx"), 1);
        assert_eq!(
            metrics
                .requests
                .get(&RequestLabels {
                    route: RouteLabels::default(),
                    status_class: "4xx",
                })
                .map(|c| c.get()),
            Some(1)
        );
        let errors = metrics
            .upstream_connect_errors
            .get(&RouteLabels::of(Some(&a.route)))
            .map(|c| c.get());
        assert_eq!(errors, Some(1));

        // A new table whose first rule is now route "b": a request on the
        // same connection counts against "b", not the cached "a".
        let second = Arc::new(RouteTable::new(vec![rule("b")]));
        cache.record(
            &metrics,
            &second,
            Some(rules_of(&second)[0]),
            200,
            tick,
            false,
        );
        assert_eq!(count(&metrics, "b", "2xx"), 2);
        assert_eq!(count(&metrics, "a", "2xx"), 2);
    }
}
