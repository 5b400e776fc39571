//! Prometheus metrics: the agent's own counters, and the per-route counters
//! read from the pinned per-CPU BPF maps at scrape time (the kernel keeps
//! them; nothing is copied between scrapes).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::dataplane::loader::L4Dataplane;

/// Counters the run loop updates.
#[derive(Default)]
pub struct AgentMetrics {
    pub config_generation: Gauge<u64, AtomicU64>,
    pub manifest_errors: Gauge<u64, AtomicU64>,
    pub apply_errors: Counter,
    pub last_apply_seconds: Gauge<f64, AtomicU64>,
}

/// Builds the registry served on `/metrics`.
pub fn registry(agent: &AgentMetrics, l4: Arc<Mutex<L4Dataplane>>) -> Registry {
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
                    ("namespace", route.namespace.clone()),
                    ("name", route.name.clone()),
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
