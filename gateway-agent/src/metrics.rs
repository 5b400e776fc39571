//! Prometheus metrics: the agent's own counters, and the per-route counters
//! read from the pinned per-CPU BPF maps at scrape time (the kernel keeps
//! them; nothing is copied between scrapes).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::dataplane::loader::L4Dataplane;
use crate::model::RouteRef;

/// Counters the run loop updates.
#[derive(Default)]
pub struct AgentMetrics {
    pub config_generation: Gauge<u64, AtomicU64>,
    pub manifest_errors: Gauge<u64, AtomicU64>,
    pub apply_errors: Counter,
    pub last_apply_seconds: Gauge<f64, AtomicU64>,
}

/// The route a request or error is counted against. Values come from the
/// configuration (never from requests), so the label sets stay bounded; a
/// request that matched no route has all four empty.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub rule: Option<u32>,
}

impl RouteLabels {
    /// The labels of `route`, or the empty set of an unmatched request.
    pub fn of(route: Option<&RouteRef>) -> Self {
        route.map_or_else(Self::default, |r| Self {
            kind: r.kind,
            namespace: r.namespace.to_string(),
            name: r.name.to_string(),
            rule: Some(r.rule),
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    /// "1xx" to "5xx".
    pub status_class: &'static str,
}

/// The status class label of an HTTP status code.
pub fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

type DurationFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Counters of the L7 proxy, updated per request and per connection.
pub struct ProxyMetrics {
    pub requests: Family<RequestLabels, Counter>,
    /// Time from the request's head to the response's head (the body streams after).
    pub request_duration: DurationFamily,
    /// Backend connections that could not be opened (refused, timed out).
    pub upstream_connect_errors: Family<RouteLabels, Counter>,
    pub active_connections: Gauge,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            // 0.5 ms to about 33 s, doubling.
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 17))
            }),
            upstream_connect_errors: Family::default(),
            active_connections: Gauge::default(),
        }
    }
}

impl ProxyMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "HTTP/gRPC requests answered by the proxy, by route and status class",
            self.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's head to its response's head, by route",
            self.request_duration.clone(),
        );
        registry.register(
            "http_upstream_connect_errors",
            "Connections to a backend that could not be opened, by route",
            self.upstream_connect_errors.clone(),
        );
        registry.register(
            "http_active_connections",
            "Client connections open on the proxy's listeners",
            self.active_connections.clone(),
        );
    }
}

/// Builds the registry served on `/metrics`.
pub fn registry(
    agent: &AgentMetrics,
    proxy: &ProxyMetrics,
    l4: Arc<Mutex<L4Dataplane>>,
) -> Registry {
    let mut registry = Registry::with_prefix("gateway");
    registry.register(
        "config_generation",
        "Configurations applied since start",
        agent.config_generation.clone(),
    );
    registry.register(
        "manifest_errors",
        "Manifests (documents) that did not parse in the last load",
        agent.manifest_errors.clone(),
    );
    registry.register(
        "config_apply_errors",
        "Failed applies of a configuration to a data plane",
        agent.apply_errors.clone(),
    );
    registry.register(
        "config_last_apply_seconds",
        "Duration of the last load, translate and apply",
        agent.last_apply_seconds.clone(),
    );
    proxy.register(&mut registry);
    registry.register_collector(Box::new(L4Collector { l4 }));
    registry
}

/// A route counter's metric name, help text, and field of `RouteStats`.
type RouteField = (
    &'static str,
    &'static str,
    fn(&gateway_common::RouteStats) -> u64,
);

/// Reads the XDP program's counters on each scrape.
struct L4Collector {
    l4: Arc<Mutex<L4Dataplane>>,
}

impl std::fmt::Debug for L4Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("L4Collector")
    }
}

impl Collector for L4Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (routes, events) = {
            let l4 = self.l4.lock().expect("L4 dataplane lock");
            (l4.route_stats(), l4.packet_events())
        };
        let fields: [RouteField; 4] = [
            (
                "l4_route_packets",
                "Packets forwarded for an L4 route, both directions",
                |s| s.packets,
            ),
            (
                "l4_route_bytes",
                "Bytes forwarded for an L4 route, both directions",
                |s| s.bytes,
            ),
            ("l4_route_flows", "Flows opened for an L4 route", |s| {
                s.new_flows
            }),
            (
                "l4_route_drops",
                "New flows refused for an L4 route (no backend, no NAT port)",
                |s| s.drops,
            ),
        ];
        for (name, help, field) in fields {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (route, stats) in &routes {
                let labels = [
                    ("kind", route.kind.to_string()),
                    ("namespace", route.namespace.to_string()),
                    ("name", route.name.to_string()),
                    ("rule", route.rule.to_string()),
                ];
                ConstCounter::new(field(stats)).encode(metric.encode_family(&labels)?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "xdp_packet_events",
            "What the XDP program did with packets, by event",
            None,
            MetricType::Counter,
        )?;
        for (event, count) in events {
            let labels = [("event", event.name())];
            ConstCounter::new(count).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
