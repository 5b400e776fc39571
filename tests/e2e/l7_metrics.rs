//! The proxy's per-route figures on /metrics and its access log: known
//! requests go through an HTTPRoute, and the counters move by exactly them.

use std::time::Duration;

use prometheus_parse::{LineInfo, Scrape, Value};

use gateway_tests::{
    Agent, BACKEND_ADDR, GATEWAY_ADDR, TempDir, Topology, class_and_service, eventually,
    gateway_with, require_root,
};

/// Rule 0 serves /app from a running backend; rule 1 sends /dead to a
/// Service port where nothing listens.
const ROUTE: &str = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: metered, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: ["metrics.example"]
  rules:
  - matches: [{path: {type: PathPrefix, value: /app}}]
    backendRefs: [{name: web, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /dead}}]
    backendRefs: [{name: dead, port: 8099}]
"#;

/// The body of an `http-get` answer (its status line comes first).
fn body(response: &str) -> &str {
    response.split_once('\n').map_or("", |(_, body)| body)
}

/// `/metrics` read by a Prometheus text-format parser; every line must be a
/// sample, a HELP or TYPE line, or one of the OpenMetrics `# UNIT`/`# EOF` lines.
fn parse(response: &str) -> Scrape {
    let text = body(response);
    for line in text.lines() {
        let known = !matches!(LineInfo::parse(line), LineInfo::Ignored)
            || line == "# EOF"
            || line.starts_with("# UNIT ");
        assert!(known, "not in the Prometheus text format: {line:?}");
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse /metrics")
}

/// The value of `metric` with exactly `labels`, 0 when there is no such sample.
fn sample(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map_or(0.0, |s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{metric} is not a single value"),
        })
}

#[test]
fn per_route_requests_errors_and_durations_are_counted_and_logged() {
    if !require_root("l7_metrics") {
        return;
    }
    let topology = Topology::new();
    let _web = topology.backend_spawn(&["http-echo", &format!("{BACKEND_ADDR}:8080"), "web-1"]);
    let manifests = TempDir::new();
    manifests.write(
        "all.yaml",
        &(class_and_service("web", 8080, 8080)
            + "---\n"
            + &class_and_service("dead", 8099, 8099)
            + &gateway_with("HTTP", 80, ROUTE)),
    );
    let agent = Agent::start_with(&topology, manifests, &["--access-log"]);
    let gateway = format!("{GATEWAY_ADDR}:80");
    let get = |path: &str, host: &str| {
        topology
            .client_run(&["http-get", &gateway, path, host])
            .unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
    };
    eventually("the route serves", Duration::from_secs(20), || {
        let r = topology.client_run(&["http-get", &gateway, "/app", "metrics.example"])?;
        if r.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(r)
        }
    });
    let scrape = || {
        topology
            .client_run(&[
                "http-get",
                &format!("{GATEWAY_ADDR}:9470"),
                "/metrics",
                "node",
            ])
            .expect("scrape /metrics")
    };
    let route = |rule: &'static str| {
        vec![
            ("kind", "HTTPRoute"),
            ("namespace", "default"),
            ("name", "metered"),
            ("rule", rule),
        ]
    };
    let with_class = |mut labels: Vec<(&'static str, &'static str)>, class| {
        labels.push(("status_class", class));
        labels
    };
    let unmatched = vec![
        ("kind", ""),
        ("namespace", ""),
        ("name", ""),
        ("rule", ""),
        ("status_class", "4xx"),
    ];
    let series = [
        ("gateway_http_requests_total", with_class(route("0"), "2xx")),
        ("gateway_http_requests_total", with_class(route("1"), "5xx")),
        ("gateway_http_requests_total", unmatched),
        ("gateway_http_upstream_connect_errors_total", route("1")),
        ("gateway_http_request_duration_seconds_count", route("0")),
    ];
    let values = |scrape: &Scrape| -> Vec<f64> {
        series
            .iter()
            .map(|(metric, labels)| sample(scrape, metric, labels))
            .collect()
    };
    let before = scrape();
    let counts_before = values(&parse(&before));

    for i in 0..5 {
        let r = get(&format!("/app/{i}"), "metrics.example");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    for _ in 0..2 {
        let r = get("/app", "unknown.example");
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    }
    let r = get("/dead", "metrics.example");
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");

    let after = scrape();
    let deltas: Vec<f64> = values(&parse(&after))
        .iter()
        .zip(&counts_before)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(
        deltas,
        [5.0, 1.0, 2.0, 1.0, 5.0],
        "deltas of {series:?}\nbefore:\n{before}\nafter:\n{after}"
    );
    // Paths and hosts are never labels.
    assert!(!after.contains("/app"), "{after}");
    assert!(!after.contains("metrics.example"), "{after}");
    // Every client connection closed: none is left open on the proxy.
    eventually(
        "no open connection",
        Duration::from_secs(5),
        || match sample(&parse(&scrape()), "gateway_http_active_connections", &[]) {
            0.0 => Ok(()),
            n => Err(format!("{n} open")),
        },
    );

    // One access log line per request, with its route and status.
    let log = agent.log();
    let dead: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("access_log") && l.contains("path=/dead"))
        .collect();
    assert_eq!(dead.len(), 1, "{log}");
    for field in [
        "status=502",
        "route=\"HTTPRoute/default/metered/rule1\"",
        "host=metrics.example",
        "method=GET",
    ] {
        assert!(dead[0].contains(field), "no {field} in {}", dead[0]);
    }
}
