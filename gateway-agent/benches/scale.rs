//! Control-plane and lookup cost at scale, through the public API only:
//! - `route_lookup/<n>`: one request's rule lookup in the proxy's RouteTable
//!   with n HTTPRoutes (5 rules each) on one listener;
//! - `translate/<n>`: a full translate of n HTTPRoutes + 1,000 TCP/UDPRoutes
//!   + 1,000 TLSRoutes on 100 Gateways (the snapshot already parsed);
//! - `parse/<n>`: reading the same manifests from YAML text.
//!
//! The manifests are those `cargo xtask bench control-plane` serves.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use gateway_agent::proxy::{RequestView, RouteTable};
use gateway_agent::source::file::load_str;
use gateway_agent::store::Snapshot;
use gateway_agent::translate::{Settings, translate};
use hyper::HeaderMap;

#[path = "../../xtask/src/bench/manifests.rs"]
mod manifests;

fn snapshot(scale: &manifests::Scale) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    for (name, text) in manifests::generate(scale, gateway_agent::DEFAULT_CONTROLLER_NAME) {
        load_str(Path::new(&name), &text, &mut snapshot, &mut errors);
    }
    assert!(
        errors.is_empty(),
        "generated manifests must parse: {errors:?}"
    );
    snapshot
}

fn settings() -> Settings {
    Settings {
        controller_name: gateway_agent::DEFAULT_CONTROLLER_NAME.into(),
        node_addresses: vec![Ipv4Addr::LOCALHOST],
        usable_addresses: None,
    }
}

fn scale(gateways: usize, http_routes: usize, l4_routes: usize) -> manifests::Scale {
    manifests::Scale {
        gateways,
        http_routes,
        l4_routes,
        http_backend: ("127.0.0.1".into(), 18_080),
        ..Default::default()
    }
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for routes in [10, 10_000] {
        let output = translate(&snapshot(&scale(1, routes, 0)), &settings());
        let rules = output.config.http[0].rules.clone();
        assert_eq!(rules.len(), routes * manifests::RULES_PER_ROUTE);
        let table = RouteTable::new(rules);
        // The middle route's last rule: a hit after the other rules of its host.
        let host = manifests::route_host(routes / 2);
        let path = format!("/s{}/item", manifests::RULES_PER_ROUTE - 1);
        let headers = HeaderMap::new();
        let request = RequestView {
            host: &host,
            path: &path,
            query: None,
            method: "GET",
            headers: &headers,
        };
        assert!(table.find(&request).is_some(), "{host}{path} must match");
        group.bench_with_input(BenchmarkId::from_parameter(routes), &routes, |b, _| {
            b.iter(|| table.find(black_box(&request)).is_some())
        });
    }
    group.finish();
}

fn translate_and_parse(c: &mut Criterion) {
    let full = manifests::Scale {
        tls_routes: 1_000,
        ..scale(100, 10_000, 1_000)
    };
    let snapshot = snapshot(&full);
    let output = translate(&snapshot, &settings());
    let http_rules: usize = output.config.http.iter().map(|l| l.rules.len()).sum();
    assert_eq!(http_rules, 10_000 * manifests::RULES_PER_ROUTE);
    assert_eq!(output.config.l4.len(), 1_000);
    let tls_routes: usize = output
        .config
        .tls_passthrough
        .iter()
        .map(|l| l.routes.len())
        .sum();
    assert_eq!(output.config.tls_passthrough.len(), 100);
    assert_eq!(tls_routes, 1_000);
    let mut group = c.benchmark_group("translate");
    // Flat: the 10 samples run equally many iterations, fitted to the
    // measurement time; linear sampling runs at least 1 + 2 + … + 10 = 55
    // (half a minute of YAML parsing at this size).
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.bench_function(BenchmarkId::from_parameter(10_000), |b| {
        b.iter(|| translate(black_box(&snapshot), &settings()))
    });
    group.finish();
    let files = manifests::generate(&full, gateway_agent::DEFAULT_CONTROLLER_NAME);
    let mut group = c.benchmark_group("parse");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.bench_function(BenchmarkId::from_parameter(10_000), |b| {
        b.iter(|| {
            let mut snapshot = Snapshot::default();
            let mut errors = Vec::new();
            for (name, text) in &files {
                load_str(Path::new(name), text, &mut snapshot, &mut errors);
            }
            snapshot.http_routes.len()
        })
    });
    group.finish();
}

criterion_group!(benches, route_lookup, translate_and_parse);
criterion_main!(benches);
