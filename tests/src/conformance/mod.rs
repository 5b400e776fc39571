//! The Gateway API conformance harness: runs the cases of
//! ../shared/conformance (see its README) against the real agent in
//! standalone mode, with in-process echo backends, and tallies the results.
//!
//! Flow: base manifests + the suite's certificates + EndpointSlices are
//! written into the agent's manifest directory once; then for each test its
//! manifests are written, the harness waits until the agent reports the
//! change applied (`gateway_config_generation` on the admin listener), runs
//! the cases with the Go suite's timing, and removes the manifests again.

pub mod certs;
pub mod client;
pub mod compare;
pub mod drivers;
pub mod echo;
pub mod grpc;
pub mod manifests;
pub mod report;
#[cfg(test)]
mod selftest;
pub mod websocket;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use drivers::{Ctx, Outcome};
use echo::{Fleet, PodInfo, PodTls, RequestLog};
use manifests::{Addresses, Deployment, EchoMode, Names, Service};
use report::{TestResult, TestRun};

/// How a run is configured (the `conformance` binary's flags).
pub struct Options {
    /// ../shared/conformance: cases.json and manifests/.
    pub cases_dir: PathBuf,
    /// The gateway-agent binary.
    pub agent: PathBuf,
    /// Only these tests (all when empty).
    pub run_tests: Vec<String>,
    /// MaxTimeToConsistency per case.
    pub timeout: Duration,
    pub supported_features: PathBuf,
    pub baseline: PathBuf,
    pub update_baseline: bool,
    /// Run only the tests with baseline cases, and fail if one of those fails.
    pub gate: bool,
    /// Where report.md, the agent's log and its manifest directory go.
    pub out_dir: PathBuf,
}

const CONTROLLER_NAME: &str = "gateway-agent.dev/node-agent";
const GATEWAY_CLASS: &str = "gateway-conformance";
/// Cases of one test run at the same time (they are independent in the Go
/// suite; this bounds the time a test of failing cases takes).
const CASE_CONCURRENCY: usize = 8;

/// Reads a list file: one entry a line, `#` comments.
pub fn read_list(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The running agent; stopped on drop.
struct AgentProcess {
    child: Child,
    admin: SocketAddr,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AgentProcess {
    async fn metric(&self, name: &str) -> Option<f64> {
        let req = client::HttpRequest {
            connect: self.admin,
            protocol: client::HttpProtocol::Http1,
            method: "GET".into(),
            host: self.admin.to_string(),
            path_and_query: "/metrics".into(),
            headers: Vec::new(),
            body: None,
            tls: None,
        };
        let response = client::http_round_trip(&req).await.ok()?;
        let text = String::from_utf8_lossy(&response.body);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    async fn generation(&self) -> Option<u64> {
        self.metric("gateway_config_generation")
            .await
            .map(|g| g as u64)
    }
}

/// RFC 3339 UTC time of now, to the second (what the API server stamps as
/// `creationTimestamp`; route precedence among equals depends on it).
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn stamp_creation(docs: &mut [serde_yaml::Value]) {
    let now = now_rfc3339();
    for doc in docs {
        if let Some(meta) = doc.get_mut("metadata").and_then(|m| m.as_mapping_mut())
            && !meta.contains_key("creationTimestamp")
        {
            meta.insert("creationTimestamp".into(), now.clone().into());
        }
    }
}

struct Harness {
    opts: Options,
    names: Names,
    addresses: Addresses,
    manifest_dir: PathBuf,
    fleet: Fleet,
    /// Running pods per Deployment key: (pod name, address).
    pods: HashMap<String, Vec<(String, Ipv4Addr)>>,
    base_deployments: Vec<Deployment>,
    base_services: Vec<Service>,
    ctx: Ctx,
    agent: Option<AgentProcess>,
}

/// A pod name as a Deployment's ReplicaSet makes it.
fn pod_name(deployment: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let pick = |n: usize| -> String {
        (0..n)
            .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
            .collect()
    };
    let hash = pick(10);
    format!("{deployment}-{hash}-{}", pick(5))
}

impl Harness {
    fn pem(&self, file: &manifests::VolumeFile, namespace: &str) -> Option<String> {
        self.ctx
            .certs
            .iter()
            .find(|((kind, ns, name), _)| {
                *kind == file.kind && *ns == namespace && *name == file.name
            })
            .and_then(|(_, data)| data.get(&file.key).cloned())
    }

    /// Starts the echo pods of a Deployment (once per run).
    async fn start_deployment(&mut self, d: &Deployment) -> Result<(), String> {
        if self.pods.contains_key(&d.key()) {
            return Ok(());
        }
        let file = |var: &str| d.files.get(var).and_then(|f| self.pem(f, &d.namespace));
        let tls = |key_var: &str| {
            Some(PodTls {
                cert_pem: file("TLS_SERVER_CERT")?,
                key_pem: file(key_var)?,
                client_ca_pem: file("TLS_CLIENT_CACERTS"),
            })
        };
        // echo-basic's HTTP mode reads TLS_SERVER_PRIVKEY, the TCP and gRPC modes TLS_SERVER_PRIV_KEY.
        let (http_tls, tcp_tls) = (tls("TLS_SERVER_PRIVKEY"), tls("TLS_SERVER_PRIV_KEY"));
        let mut pods = Vec::new();
        for _ in 0..d.replicas.max(1) {
            let name = pod_name(&d.name);
            let addr = self.addresses.pod();
            let info = PodInfo {
                namespace: d.namespace.clone(),
                pod: name.clone(),
                service: d.env.get("SERVICE_NAME").cloned().unwrap_or_default(),
                http_port: d
                    .env
                    .get("HTTP_PORT")
                    .cloned()
                    .unwrap_or_else(|| "3000".into()),
            };
            let started = match d.mode {
                EchoMode::Http => {
                    let ports = (
                        d.port("HTTP_PORT", 3000),
                        d.port("H2C_PORT", 3001),
                        d.port("HTTPS_PORT", 8443),
                    );
                    self.fleet
                        .http_pod(addr, info, &d.key(), &self.ctx.log, ports, http_tls.clone())
                        .await
                }
                EchoMode::Tcp => {
                    self.fleet
                        .tcp_pod(
                            addr,
                            info,
                            d.port("TCP_PORT", 3000),
                            d.port("TLS_PORT", 8443),
                            tcp_tls.clone(),
                        )
                        .await
                }
                EchoMode::Udp => {
                    self.fleet
                        .udp_pod(addr, info, d.port("UDP_PORT", 8080))
                        .await
                }
                EchoMode::Dns => self.fleet.dns_pod(addr, 53).await,
                EchoMode::Grpc => {
                    let ports = (d.port("HTTP_PORT", 3000), d.port("HTTPS_PORT", 8443));
                    self.fleet
                        .grpc_pod(addr, info, ports, tcp_tls.clone())
                        .await
                }
            };
            started.map_err(|e| format!("starting echo pod {name} at {addr}: {e}"))?;
            pods.push((name, addr));
        }
        self.pods.insert(d.key(), pods);
        Ok(())
    }

    /// EndpointSlices for `services` whose Deployment runs here.
    fn endpoint_slices(&mut self, services: &[Service], deployments: &[Deployment]) -> String {
        let mut docs = Vec::new();
        for service in services {
            let Some(d) = manifests::selected(service, deployments) else {
                continue;
            };
            self.ctx
                .service_deployments
                .insert(format!("{}/{}", service.namespace, service.name), d.key());
            if let Some(pods) = self.pods.get(&d.key()) {
                docs.push(manifests::endpoint_slice(service, pods));
            }
        }
        docs.join("---\n")
    }

    /// Writes a manifest file atomically (renamed into place, so the agent
    /// never reads half a file) and waits until the agent applied it.
    async fn write_and_wait(&self, name: &str, text: Option<&str>) -> Result<(), String> {
        let agent = self.agent.as_ref();
        let before = match agent {
            Some(a) => a.generation().await,
            None => None,
        };
        let path = self.manifest_dir.join(name);
        match text {
            Some(text) => {
                let tmp = self.manifest_dir.join(format!(".{name}.tmp"));
                std::fs::write(&tmp, text).map_err(|e| format!("writing {name}: {e}"))?;
                std::fs::rename(&tmp, &path).map_err(|e| format!("renaming {name}: {e}"))?;
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        let (Some(agent), Some(before)) = (agent, before) else {
            return Ok(());
        };
        // Applied = a generation later than the one before the write, and no
        // further reload for a moment (a burst of file events is coalesced).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = before;
        let mut stable_since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let g = agent.generation().await.unwrap_or(seen);
            if g != seen {
                seen = g;
                stable_since = Instant::now();
            }
            if seen > before && stable_since.elapsed() >= Duration::from_millis(300) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the agent did not apply {name} within 20s (generation {before} → {seen})"
                ));
            }
        }
    }

    async fn start(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.manifest_dir)
            .map_err(|e| format!("creating {}: {e}", self.manifest_dir.display()))?;
        let base = self.opts.cases_dir.join("manifests/base/manifests.yaml");
        let mut docs = manifests::load(&base, &self.names)?;
        manifests::assign_gateway_addresses(&mut docs, &mut self.addresses);
        stamp_creation(&mut docs);
        self.base_deployments = manifests::deployments(&docs);
        self.base_services = manifests::services(&docs);
        for d in self.base_deployments.clone() {
            self.start_deployment(&d).await?;
        }
        let slices =
            self.endpoint_slices(&self.base_services.clone(), &self.base_deployments.clone());
        let class = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: {}\nspec:\n  controllerName: {}\n",
            self.names.gateway_class, self.names.controller
        );
        self.write_and_wait("00-gatewayclass.yaml", Some(&class))
            .await?;
        self.write_and_wait(
            "01-suite-certificates.yaml",
            Some(&certs::to_yaml(&self.ctx.certs)),
        )
        .await?;
        self.write_and_wait("02-base.yaml", Some(&manifests::to_yaml(&docs)))
            .await?;
        self.write_and_wait("03-base-endpointslices.yaml", Some(&slices))
            .await?;
        self.refresh_gateways();
        self.start_agent().await
    }

    fn refresh_gateways(&mut self) {
        // Addresses is the only allocator; copy its view for the drivers.
        self.ctx.gateways = self
            .addresses
            .gateways()
            .map(|(k, a)| (k.clone(), IpAddr::V4(*a)))
            .collect();
    }

    async fn start_agent(&mut self) -> Result<(), String> {
        let admin = SocketAddr::new(IpAddr::V4(self.addresses.admin()), 9470);
        let log_path = self.opts.out_dir.join("agent.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let name = format!("gwconf-{}", std::process::id());
        let child = Command::new(&self.opts.agent)
            .args(["run", "--manifests"])
            .arg(&self.manifest_dir)
            .args(["--interfaces", "lo", "--name", &name])
            .args(["--controller-name", &self.names.controller])
            .args(["--admin-address", &admin.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.opts.agent.display()))?;
        let agent = AgentProcess { child, admin };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.generation().await.is_none() {
            if Instant::now() > deadline {
                return Err(format!(
                    "the agent did not come up within 30s; see {}",
                    log_path.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.agent = Some(agent);
        Ok(())
    }

    async fn run_test(&mut self, test: &Value, supported: &BTreeSet<String>) -> TestResult {
        let name = test["test"].as_str().unwrap_or("").to_string();
        if test["status_only"].as_bool() == Some(true) {
            return TestResult::StatusOnly;
        }
        let missing: Vec<String> = test["features"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|f| !supported.contains(*f))
            .map(str::to_string)
            .collect();
        if !missing.is_empty() {
            return TestResult::Skipped(missing);
        }
        let file = format!("50-test-{}.yaml", name.to_lowercase());
        let mut docs = Vec::new();
        for m in test["manifests"].as_array().into_iter().flatten() {
            match manifests::load(
                &self.opts.cases_dir.join(m.as_str().unwrap_or("")),
                &self.names,
            ) {
                Ok(d) => docs.extend(d),
                Err(e) => return TestResult::Error(e),
            }
        }
        let run = self.run_test_manifests(test, &file, docs).await;
        if let Err(e) = self.write_and_wait(&file, None).await {
            eprintln!("{name}: removing its manifests: {e}");
        }
        match run {
            Ok(run) => TestResult::Ran(run),
            Err(e) => TestResult::Error(e),
        }
    }

    async fn run_test_manifests(
        &mut self,
        test: &Value,
        file: &str,
        mut docs: Vec<serde_yaml::Value>,
    ) -> Result<TestRun, String> {
        manifests::assign_gateway_addresses(&mut docs, &mut self.addresses);
        self.refresh_gateways();
        stamp_creation(&mut docs);
        let deployments = manifests::deployments(&docs);
        for d in &deployments {
            self.start_deployment(d).await?;
        }
        let infra_v1 = self
            .pods
            .get("gateway-conformance-infra/infra-backend-v1")
            .cloned()
            .unwrap_or_default();
        manifests::fill_manual_endpoint_slices(&mut docs, &infra_v1);
        let mut all_deployments = self.base_deployments.clone();
        all_deployments.extend(deployments);
        let services = manifests::services(&docs);
        let slices = self.endpoint_slices(&services, &all_deployments);
        let write = |docs: &[serde_yaml::Value]| {
            let mut text = manifests::to_yaml(docs);
            if !slices.is_empty() {
                text.push_str("---\n");
                text.push_str(&slices);
            }
            text
        };
        self.write_and_wait(file, Some(&write(&docs))).await?;

        let cases: Vec<Value> = test["cases"].as_array().cloned().unwrap_or_default();
        let checks: Vec<Value> = test["other_checks"].as_array().cloned().unwrap_or_default();
        let mut run = TestRun::default();
        let mut applied = 0usize;
        let mut pending: Vec<Value> = Vec::new();
        for case in cases.iter().chain(&checks) {
            let mutations = case["after_mutations"].as_array().map_or(0, Vec::len);
            if mutations > applied {
                run.results.extend(self.run_cases(&pending).await);
                pending.clear();
                for m in &case["after_mutations"].as_array().expect("counted")[applied..] {
                    if let Err(e) = self.mutate(m, test, &mut docs).await {
                        run.mutation_error = Some(e);
                    }
                }
                applied = mutations;
                self.write_and_wait(file, Some(&write(&docs))).await?;
            }
            if let Some(e) = &run.mutation_error {
                run.results.push((
                    case["id"].as_str().unwrap_or("").into(),
                    Outcome::NotRun(e.clone()),
                ));
            } else {
                pending.push(case.clone());
            }
        }
        run.results.extend(self.run_cases(&pending).await);
        Ok(run)
    }

    /// Applies one of the Go test's cluster mutations to the test's documents.
    async fn mutate(
        &self,
        mutation: &Value,
        test: &Value,
        docs: &mut Vec<serde_yaml::Value>,
    ) -> Result<(), String> {
        let call = mutation["call"].as_str().unwrap_or("");
        if call.contains("Client.Delete") && call.contains("&rg") {
            docs.retain(|d| manifests::kind(d) != "ReferenceGrant");
            return Ok(());
        }
        if call.contains("MustApplyObjectsWithCleanup") {
            let created: Vec<&Value> = test["other_checks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("created_in_go_before_traffic"))
                .collect();
            if created.is_empty() {
                return Err(format!("mutation not reproduced: {call}"));
            }
            // The Go test creates the newer object a second after the others.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            for object in created {
                let mut doc: serde_yaml::Value =
                    serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
                stamp_creation(std::slice::from_mut(&mut doc));
                docs.push(doc);
            }
            return Ok(());
        }
        Err(format!("mutation not reproduced: {call}"))
    }

    /// Runs independent cases, a few at a time, results in case order.
    async fn run_cases(&self, cases: &[Value]) -> Vec<(String, Outcome)> {
        use futures_util::StreamExt as _;
        let ctx = &self.ctx;
        let outcomes: Vec<Outcome> = futures_util::stream::iter(cases.iter())
            .map(|case| drivers::run(ctx, case))
            .buffered(CASE_CONCURRENCY)
            .collect()
            .await;
        cases
            .iter()
            .map(|c| c["id"].as_str().unwrap_or("").to_string())
            .zip(outcomes)
            .collect()
    }
}

/// Runs the harness. Returns whether the run passed (in gate mode: every
/// baseline case passed; otherwise: the run completed).
pub async fn run(opts: Options) -> Result<bool, String> {
    let text = std::fs::read_to_string(opts.cases_dir.join("cases.json"))
        .map_err(|e| format!("reading cases.json: {e}"))?;
    let tests: Vec<Value> = serde_json::from_str(&text).map_err(|e| format!("cases.json: {e}"))?;
    let supported = read_list(&opts.supported_features);
    let baseline = read_list(&opts.baseline);
    std::fs::create_dir_all(&opts.out_dir)
        .map_err(|e| format!("creating {}: {e}", opts.out_dir.display()))?;
    let manifest_dir = opts
        .out_dir
        .join(format!("manifests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&manifest_dir);
    let selected = |t: &Value| {
        let name = t["test"].as_str().unwrap_or("");
        let in_gate = !opts.gate || baseline.iter().any(|id| id.split('/').next() == Some(name));
        let asked = opts.run_tests.is_empty() || opts.run_tests.iter().any(|r| r == name);
        in_gate && asked
    };
    let chosen: Vec<&Value> = tests.iter().filter(|t| selected(t)).collect();
    let mut harness = Harness {
        names: Names {
            gateway_class: GATEWAY_CLASS.into(),
            controller: CONTROLLER_NAME.into(),
        },
        addresses: Addresses::new(),
        manifest_dir: manifest_dir.clone(),
        fleet: Fleet::default(),
        pods: HashMap::new(),
        base_deployments: Vec::new(),
        base_services: Vec::new(),
        ctx: Ctx {
            gateways: HashMap::new(),
            certs: certs::synthesise(),
            log: RequestLog::default(),
            service_deployments: HashMap::new(),
            timeout: opts.timeout,
        },
        agent: None,
        opts,
    };
    let started = Instant::now();
    let setup = harness.start().await;
    let mut results = Vec::new();
    if let Err(e) = setup {
        drop(harness.agent.take());
        let _ = std::fs::remove_dir_all(&manifest_dir);
        return Err(e);
    }
    for test in &chosen {
        let name = test["test"].as_str().unwrap_or("").to_string();
        let test_started = Instant::now();
        let result = harness.run_test(test, &supported).await;
        if matches!(result, TestResult::Ran(_) | TestResult::Error(_)) {
            eprintln!(
                "{name}: {} ({:.1}s)",
                report::short(&result),
                test_started.elapsed().as_secs_f64()
            );
        }
        results.push((*test, result));
    }
    drop(harness.agent.take());
    let _ = std::fs::remove_dir_all(&manifest_dir);
    let opts = &harness.opts;
    let tally = report::Tally::new(&results, started.elapsed());
    let markdown = tally.markdown();
    print!("{}", tally.text());
    let report_path = opts.out_dir.join("report.md");
    std::fs::write(&report_path, &markdown)
        .map_err(|e| format!("writing {}: {e}", report_path.display()))?;
    println!("report: {}", report_path.display());
    let ran: BTreeSet<&str> = results
        .iter()
        .filter_map(|(t, _)| t["test"].as_str())
        .collect();
    let passed = tally.passed_ids();
    if opts.update_baseline {
        // Keep the baseline entries of tests this run did not include.
        let mut ids: BTreeSet<String> = baseline
            .iter()
            .filter(|id| !ran.contains(id.split('/').next().unwrap_or("")))
            .cloned()
            .collect();
        ids.extend(passed.iter().cloned());
        let text = format!(
            "# Conformance case ids that pass today; `cargo xtask test` fails if one of them fails.\n# Rewritten by `cargo xtask conformance --update-baseline`.\n{}\n",
            ids.into_iter().collect::<Vec<_>>().join("\n")
        );
        std::fs::write(&opts.baseline, text)
            .map_err(|e| format!("writing {}: {e}", opts.baseline.display()))?;
        println!("baseline: {} rewritten", opts.baseline.display());
    }
    let regressions: Vec<&String> = baseline
        .iter()
        .filter(|id| ran.contains(id.split('/').next().unwrap_or("")))
        .filter(|id| !passed.contains(*id))
        .collect();
    if !regressions.is_empty() {
        println!("regressions against {}:", opts.baseline.display());
        for id in &regressions {
            println!("  {id}: {}", tally.reason(id));
        }
    }
    Ok(regressions.is_empty())
}
