//! What one changed route costs, at 10, 1,000 and 10,000 HTTPRoutes (plus a
//! tenth as many TCP/UDPRoutes and as many TLSRoutes): issue 9's "one
//! changed route re-translates and re-applies only what it touches".
//!
//! - `change_translate/<kind>/<n>`: `translate_incremental` after one
//!   HTTPRoute, TCPRoute or TLSRoute was edited (its two versions alternate);
//! - `change_apply/<kind>/<n>`: what the appliers then compute from the new
//!   config without touching the kernel: the proxy's route tables of the
//!   sockets whose rules changed, and the L4 plan (Maglev tables, map
//!   entries) when the L4 part changed, diffed against the last one;
//! - `change_status/<kind>/<n>`: the status writer's pass over the new
//!   statuses (`StatusCache::updates`), which finds what to write;
//! - `change_passthrough_apply/1000`: the real passthrough applier
//!   (`Passthrough::apply`, copy mode) on 100 loopback sockets with 10
//!   TLSRoutes each, after one route's backend changed.
//!
//! Each case also prints, once, what the change touched: HTTP sockets
//! re-assembled, L4 map entries written, statuses not shared with the
//! previous output. The manifests are `cargo xtask bench control-plane`'s.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway_agent::dataplane::l4_plan::{self, L4Maps, RouteIds, TableCache};
use gateway_agent::model::{
    DataplaneConfig, HttpListener, L4Listener, RouteRef, TlsPassthroughListener,
    TlsPassthroughRoute, WeightedEndpoint,
};
use gateway_agent::passthrough::{Passthrough, SpliceMode};
use gateway_agent::proxy::RouteTable;
use gateway_agent::source::file::load_str;
use gateway_agent::status_writer::StatusCache;
use gateway_agent::store::{Kind, ObjectKey, Snapshot};
use gateway_agent::translate::{Memo, Output, Settings, translate_incremental};

#[path = "../../xtask/src/bench/manifests.rs"]
mod manifests;

const GATEWAYS: usize = 100;
const CONTROLLER: &str = gateway_agent::DEFAULT_CONTROLLER_NAME;

/// The status writer's clock, fixed: every pass stamps the same time.
fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::UNIX_EPOCH
}

fn settings() -> Settings {
    Settings {
        controller_name: CONTROLLER.into(),
        node_addresses: vec![Ipv4Addr::LOCALHOST],
        usable_addresses: None,
    }
}

/// The route edited in each case, in its two versions.
#[derive(Clone, Copy)]
enum Edited {
    Http,
    Tcp,
    Tls,
}

impl Edited {
    fn name(self) -> &'static str {
        match self {
            Edited::Http => "http_route",
            Edited::Tcp => "tcp_route",
            Edited::Tls => "tls_route",
        }
    }

    /// (kind, key, manifest) of the edited route; the middle one of its kind.
    fn version(self, n: usize, edited: bool) -> (Kind, ObjectKey, String) {
        match self {
            Edited::Http => {
                let i = n / 2;
                let mut text = manifests::http_route(i, i % GATEWAYS);
                if edited {
                    text = text.replace("value: /s0\n", "value: /s0-edited\n");
                }
                (Kind::HttpRoute, key(&format!("route-{i}")), text)
            }
            Edited::Tcp => {
                // TCPRoute l4-0 on Gateway gw-0's listener l4-0: its backend
                // moves between two Services.
                let backend = if edited {
                    "web\n      port: 80"
                } else {
                    "l4-echo\n      port: 9000"
                };
                let text = format!(
                    "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata:\n  name: l4-0\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw-0\n    sectionName: l4-0\n  rules:\n  - backendRefs:\n    - name: {backend}\n"
                );
                (Kind::TcpRoute, key("l4-0"), text)
            }
            Edited::Tls => {
                let i = n / 10 / 2;
                let mut text = manifests::tls_route(i, i % GATEWAYS);
                if edited {
                    text = text.replace(".tls.bench.example", "-edited.tls.bench.example");
                }
                (Kind::TlsRoute, key(&format!("tls-{i}")), text)
            }
        }
    }
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("default", name)
}

/// The scale set with `n` HTTPRoutes, `n / 10` TCP/UDPRoutes and `n / 10` TLSRoutes.
fn snapshot(n: usize) -> Snapshot {
    let scale = manifests::Scale {
        gateways: GATEWAYS,
        http_routes: n,
        l4_routes: n / 10,
        tls_routes: n / 10,
        http_backend: ("127.0.0.1".into(), 18_080),
    };
    let files = manifests::generate(&scale, CONTROLLER);
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    for (name, text) in files {
        load_str(Path::new(&name), &text, &mut snapshot, &mut errors);
    }
    assert!(errors.is_empty(), "manifests must parse: {errors:?}");
    snapshot
}

/// What the appliers keep between applies, as the agent's do.
#[derive(Default)]
struct Applied {
    http: Vec<HttpListener>,
    l4: Vec<L4Listener>,
    tls: Vec<TlsPassthroughListener>,
    ids: RouteIds,
    tables: TableCache,
    maps: L4Maps,
}

/// What one apply touched.
#[derive(Debug, Default, PartialEq)]
struct Touched {
    http_tables: usize,
    l4_map_writes: usize,
    /// TLS sockets whose listener differs (the ones the passthrough
    /// applier rebuilds).
    tls_sockets: usize,
}

impl Applied {
    /// The proxy's part (a route table per socket whose rules are not the
    /// very ones it serves) and the L4 plan with its diff (when the L4 part
    /// changed), as `Proxy::apply` and `L4Dataplane::apply` compute them.
    fn apply(&mut self, config: &DataplaneConfig) -> Touched {
        let mut touched = Touched::default();
        for listener in &config.http {
            let served = self
                .http
                .binary_search_by_key(&listener.bind, |l| l.bind)
                .is_ok_and(|i| Arc::ptr_eq(&self.http[i].rules, &listener.rules));
            if !served {
                black_box(RouteTable::new(listener.rules.clone()));
                touched.http_tables += 1;
            }
        }
        self.http.clone_from(&config.http);
        touched.tls_sockets = config
            .tls_passthrough
            .iter()
            .filter(|socket| !self.tls.contains(socket))
            .count();
        self.tls.clone_from(&config.tls_passthrough);
        if self.l4 != config.l4 {
            let source_for = |ip: IpAddr| ip;
            let maps = l4_plan::plan(&config.l4, &mut self.ids, &mut self.tables, &source_for);
            let old = &self.maps;
            touched.l4_map_writes = maps
                .routes
                .iter()
                .filter(|(id, t)| old.routes.get(id) != Some(t))
                .count()
                + maps
                    .listeners
                    .iter()
                    .filter(|(k, id)| old.listeners.get(k) != Some(id))
                    .count()
                + maps
                    .names
                    .iter()
                    .filter(|(id, h)| old.names.get(id) != Some(h))
                    .count();
            self.maps = maps;
            self.l4.clone_from(&config.l4);
        }
        touched
    }
}

/// One route edit after another on the same snapshot and memo.
struct Case {
    snapshot: Snapshot,
    memo: Memo,
    applied: Applied,
    last: Output,
    edited: Edited,
    n: usize,
    flip: bool,
    /// The status writer's memory of what it computed.
    status_cache: StatusCache,
}

impl Case {
    fn new(n: usize, edited: Edited) -> Self {
        let snapshot = snapshot(n);
        let mut memo = Memo::default();
        let last = translate_incremental(&snapshot, &settings(), None, &mut memo);
        assert_eq!(last.config.l4.len(), n / 10);
        let mut applied = Applied::default();
        applied.apply(&last.config);
        let mut status_cache = StatusCache::default();
        status_cache.updates(&snapshot, &last.statuses, CONTROLLER, now());
        Self {
            snapshot,
            memo,
            applied,
            last,
            edited,
            n,
            flip: false,
            status_cache,
        }
    }

    /// The status writer's pass over `output`'s statuses: what to write.
    fn status_pass(&mut self, output: &Output) -> usize {
        let updates =
            self.status_cache
                .updates(&self.snapshot, &output.statuses, CONTROLLER, now());
        updates.len()
    }

    /// Edits the route (outside any timing) and returns what changed.
    fn edit(&mut self) -> BTreeSet<(Kind, ObjectKey)> {
        self.flip = !self.flip;
        let (kind, key, text) = self.edited.version(self.n, self.flip);
        let mut errors = Vec::new();
        load_str(
            Path::new("edit.yaml"),
            &text,
            &mut self.snapshot,
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        BTreeSet::from([(kind, key)])
    }

    fn translate(&mut self, changes: &BTreeSet<(Kind, ObjectKey)>) -> Output {
        translate_incremental(&self.snapshot, &settings(), Some(changes), &mut self.memo)
    }

    /// One edit, translated and applied, with what it touched.
    fn step(&mut self) -> (Touched, usize) {
        let changes = self.edit();
        let output = self.translate(&changes);
        let touched = self.applied.apply(&output.config);
        let new_statuses = output
            .statuses
            .iter()
            .filter(|s| !self.last.statuses.iter().any(|l| Arc::ptr_eq(l, s)))
            .count();
        self.last = output;
        (touched, new_statuses)
    }
}

/// One benchmark group: `timed` makes one edit on the case and returns how
/// long its stage took.
fn stage(c: &mut Criterion, edited: Edited, name: &str, timed: fn(&mut Case) -> Duration) {
    let mut group = c.benchmark_group(format!("change_{name}/{}", edited.name()));
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in [10, 1_000, 10_000] {
        let mut case = Case::new(n, edited);
        if name == "translate" {
            let (touched, statuses) = case.step();
            eprintln!(
                "{} at {n}: {touched:?}, {statuses} statuses not shared with the previous output of {}",
                edited.name(),
                case.last.statuses.len()
            );
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iterations| (0..iterations).map(|_| timed(&mut case)).sum())
        });
    }
    group.finish();
}

fn change(c: &mut Criterion) {
    for edited in [Edited::Http, Edited::Tcp, Edited::Tls] {
        stage(c, edited, "translate", |case| {
            let changes = case.edit();
            let started = Instant::now();
            let output = case.translate(&changes);
            let took = started.elapsed();
            // The previous output is dropped outside the timing, as the
            // agent drops it after the apply.
            case.last = output;
            took
        });
        stage(c, edited, "apply", |case| {
            let changes = case.edit();
            let output = case.translate(&changes);
            let started = Instant::now();
            black_box(case.applied.apply(&output.config));
            started.elapsed()
        });
        stage(c, edited, "status", |case| {
            let changes = case.edit();
            let output = case.translate(&changes);
            let started = Instant::now();
            black_box(case.status_pass(&output));
            let took = started.elapsed();
            case.last = output;
            took
        });
    }
}

/// 100 loopback sockets (127.77.0.x, ephemeral ports) with 10 routes each;
/// `edited` moves the first route's backend to another port.
fn passthrough_listeners(edited: bool) -> Vec<TlsPassthroughListener> {
    (0..100u8)
        .map(|socket| TlsPassthroughListener {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 77, 0, socket + 1)), 0),
            routes: (0..10u16)
                .map(|r| {
                    let name = format!("tls-{socket}-{r}");
                    let port = if edited && socket == 0 && r == 0 {
                        9_001
                    } else {
                        9_000
                    };
                    TlsPassthroughRoute {
                        route: RouteRef {
                            kind: "TLSRoute",
                            namespace: "default".into(),
                            name: name.as_str().into(),
                            rule: 0,
                        },
                        hostnames: vec![format!("{name}.example.com")],
                        backends: vec![WeightedEndpoint {
                            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                            weight: 1,
                        }],
                        terminate: false,
                        backend_tls: Default::default(),
                    }
                })
                .collect(),
            certificates: Vec::new(),
        })
        .collect()
}

fn passthrough_apply(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _entered = runtime.enter();
    let passthrough =
        Passthrough::new(SpliceMode::Copy, Path::new("/nonexistent")).expect("copy mode");
    let configs = [passthrough_listeners(false), passthrough_listeners(true)];
    let failures = runtime.block_on(passthrough.apply(&configs[0]));
    assert!(failures.is_empty(), "{failures:?}");
    let mut flip = false;
    let mut group = c.benchmark_group("change_passthrough_apply");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function(BenchmarkId::from_parameter(1_000), |b| {
        b.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| {
                    flip = !flip;
                    let config = &configs[usize::from(flip)];
                    let started = Instant::now();
                    let failures = runtime.block_on(passthrough.apply(config));
                    let took = started.elapsed();
                    assert!(failures.is_empty(), "{failures:?}");
                    took
                })
                .sum()
        })
    });
    group.finish();
    runtime.block_on(passthrough.apply(&[]));
}

criterion_group!(benches, change, passthrough_apply);
criterion_main!(benches);
