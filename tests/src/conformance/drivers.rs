//! One driver per way the Go suite sends traffic (`case.driver`), with its
//! helpers' timing: HTTP/HTTPS cases need 3 consecutive passes (100 ms apart)
//! within the consistency timeout; TCP, UDP and TLS-handshake checks poll
//! until their first success.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::certs;
use super::client::{self, ClientTls, HttpProtocol, HttpRequest};
use super::compare;
use super::echo::RequestLog;
use super::grpc;
use super::websocket;

const POLL: Duration = Duration::from_millis(100);
const CONSECUTIVE_SUCCESSES: u32 = 3;
const MAX_REDIRECTS: usize = 10;

/// What a driver needs to know about the run.
pub struct Ctx {
    /// Gateway `namespace/name` → its address.
    pub gateways: HashMap<String, IpAddr>,
    pub certs: certs::Objects,
    pub log: RequestLog,
    /// Service `namespace/name` → the Deployment `namespace/name` serving it.
    pub service_deployments: HashMap<String, String>,
    /// MaxTimeToConsistency.
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    NotRun(String),
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

impl Ctx {
    fn target(&self, case: &Value) -> Result<SocketAddr, String> {
        let gw = &case["gateway"];
        let key = format!("{}/{}", s(&gw["namespace"]), s(&gw["name"]));
        let ip = self
            .gateways
            .get(&key)
            .ok_or_else(|| format!("Gateway {key} is not in the manifests"))?;
        let port = gw["port"].as_u64().ok_or("case without a port")? as u16;
        Ok(SocketAddr::new(*ip, port))
    }

    /// The PEM of a `{kind, namespace, name, key}` reference.
    fn pem(&self, reference: &Value) -> Option<String> {
        self.certs
            .iter()
            .find(|((kind, ns, name), _)| {
                *kind == s(&reference["kind"])
                    && *ns == s(&reference["namespace"])
                    && *name == s(&reference["name"])
            })
            .and_then(|(_, data)| data.get(s(&reference["key"])).cloned())
    }

    fn client_tls(&self, tls: &Value, alpn: &[&[u8]]) -> Result<ClientTls, String> {
        let trusted = &tls["trusted_server_certificate"];
        let roots = if trusted.is_null() {
            Vec::new()
        } else {
            let pem = self
                .pem(trusted)
                .ok_or_else(|| format!("no synthesised certificate for {trusted}"))?;
            client::certificates(&pem)
        };
        let client_cert = match (tls.get("client_certificate"), tls.get("client_key")) {
            (Some(c), Some(k)) if !c.is_null() => Some((
                self.pem(c)
                    .ok_or_else(|| format!("no client certificate {c}"))?,
                self.pem(k).ok_or_else(|| format!("no client key {k}"))?,
            )),
            _ => None,
        };
        Ok(ClientTls {
            server_name: s(&tls["server_name"]).to_string(),
            roots,
            client_cert,
            alpn: alpn.iter().map(|a| a.to_vec()).collect(),
        })
    }
}

/// Runs `attempt` every 100 ms until it passes `needed` times in a row, or
/// fails with the last reason at the deadline. `Err(Some)` from an attempt
/// ends the wait at once (a final failure).
async fn eventually<F, Fut>(timeout: Duration, needed: u32, mut attempt: F) -> Outcome
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Attempt>>,
{
    let deadline = Instant::now() + timeout;
    let mut in_a_row = 0;
    let mut last = String::from("no attempt finished");
    loop {
        match attempt().await {
            Ok(()) => {
                in_a_row += 1;
                if in_a_row >= needed {
                    return Outcome::Passed;
                }
            }
            Err(Attempt::Final(reason)) => return Outcome::Failed(reason),
            Err(Attempt::NotYet(reason)) => {
                in_a_row = 0;
                last = reason;
            }
        }
        if Instant::now() + POLL > deadline {
            return Outcome::Failed(format!("not consistent within {timeout:?}: {last}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

enum Attempt {
    NotYet(String),
    Final(String),
}

/// Runs one case (or other check).
pub async fn run(ctx: &Ctx, case: &Value) -> Outcome {
    let driver = s(&case["driver"]);
    let expect = s(&case["expect"]);
    let result = match (driver, expect) {
        ("http" | "https", "response") => http_response(ctx, case).await,
        ("http" | "https", "failure") => http_failure(ctx, case).await,
        ("tcp" | "tls", "response") => tcp_response(ctx, case).await,
        ("tcp", "connect") => tcp_connect(ctx, case).await,
        ("tcp", "echo") => tcp_echo(ctx, case).await,
        ("tcp", "backend") => tcp_backend(ctx, case).await,
        ("udp", "echo") => udp_echo(ctx, case).await,
        ("udp", "backend") => udp_backend(ctx, case).await,
        ("udp-dns", "dns-reply") => udp_dns(ctx, case).await,
        ("tls-handshake", "connection-rejected") => tls_rejected(ctx, case).await,
        ("weighted", "distribution") => weighted(ctx, case).await,
        ("http", "backend-header-matches-pod") => backend_header_matches_pod(ctx, case).await,
        ("websocket", "echo") => websocket_echo(ctx, case).await,
        ("grpc", "response") => grpc_response(ctx, case).await,
        ("grpc", "failure") => grpc_failure(ctx, case).await,
        _ => return Outcome::NotRun(format!("driver {driver}/{expect}")),
    };
    match result {
        Ok(outcome) => outcome,
        Err(reason) => Outcome::Failed(reason),
    }
}

/// A fresh random UUID (version 4 layout) for `{uuid}` placeholders.
fn uuid() -> String {
    let hex: String = (0..32)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).expect("hex digit"))
        .collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..]
    )
}

/// The first request of an HTTP case, as the Go roundtripper builds it.
fn http_request(ctx: &Ctx, case: &Value) -> Result<(HttpRequest, String), String> {
    let eff = &case["effective"];
    let target = ctx.target(case)?;
    let scheme = s(&eff["scheme"]);
    let protocol = match s(&eff["protocol"]) {
        "H2C_PRIOR_KNOWLEDGE" => HttpProtocol::H2c,
        "H2" => HttpProtocol::H2,
        _ if scheme == "https" => HttpProtocol::Https1,
        _ => HttpProtocol::Http1,
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    let authority = if target.port() == default_port {
        target.ip().to_string()
    } else {
        target.to_string()
    };
    let host = eff["host_header"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map_or(authority, str::to_string);
    let request = &case["ExpectedResponse"]["Request"];
    let mut headers: Vec<(String, String)> = request["Headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), s(v).to_string()))
        .collect();
    let set: Vec<String> = eff["backend_set_response_headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}:{}", s(v)))
        .collect();
    headers.push(("X-Echo-Set-Header".into(), set.join(",")));
    let tls = if scheme == "https" {
        let alpn: &[&[u8]] = if protocol == HttpProtocol::H2 {
            &[b"h2"]
        } else {
            &[b"http/1.1"]
        };
        Some(ctx.client_tls(&case["tls"], alpn)?)
    } else {
        None
    };
    Ok((
        HttpRequest {
            connect: target,
            protocol,
            method: s(&eff["method"]).to_string(),
            host,
            path_and_query: s(&eff["path_and_query"]).to_string(),
            headers,
            body: request["Body"].as_str().map(str::to_string),
            tls,
        },
        scheme.to_string(),
    ))
}

/// Sends a request, following redirects when the case does (to the same
/// Gateway address: the Location's host only becomes the Host header).
async fn send_following(
    first: &HttpRequest,
    follow: bool,
) -> Result<(client::HttpResponse, String), String> {
    let mut req = first.clone();
    let mut scheme = if req.tls.is_some() { "https" } else { "http" }.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let response = client::http_round_trip(&req).await?;
        let location = response
            .headers
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_string);
        let redirect = matches!(response.status, 301 | 302 | 303 | 307 | 308);
        let (true, true, Some(location)) = (follow, redirect, location) else {
            return Ok((response, scheme));
        };
        let (new_scheme, host, port, _) = compare::parse_location(&location, &scheme);
        if new_scheme != scheme {
            return Err(format!(
                "redirect to {location}: scheme change not followed"
            ));
        }
        let path = match location.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]).to_string(),
            None => location.clone(),
        };
        if !host.is_empty() {
            req.host = if port.is_empty() {
                host.clone()
            } else {
                format!("{host}:{port}")
            };
        }
        if let Ok(p) = port.parse() {
            req.connect.set_port(p);
        } else if !host.is_empty() {
            req.connect
                .set_port(if scheme == "https" { 443 } else { 80 });
        }
        req.path_and_query = path;
        if matches!(response.status, 301..=303) && req.method != "HEAD" {
            req.method = "GET".into();
            req.body = None;
        }
        scheme = new_scheme;
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

async fn http_response(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let eff = &case["effective"];
    let (template, scheme) = http_request(ctx, case)?;
    let follow = eff["follow_redirects"].as_bool().unwrap_or(true);
    let expected_path = s(&eff["expected_backend_request"]["path"]).to_string();
    // The certificate the backend must have seen: the client's own (frontend
    // mTLS), or the Secret the Gateway presents to backends (`fromSecret`).
    let client_cert =
        match eff["expected_backend_request"]["client_certificate_presented"].get("fromSecret") {
            Some(secret) => Some(
                ctx.pem(secret)
                    .ok_or_else(|| format!("no synthesised certificate for {secret}"))?,
            ),
            None => template
                .tls
                .as_ref()
                .and_then(|t| t.client_cert.as_ref().map(|c| c.0.clone())),
        };
    let mut last_path = String::new();
    let outcome = eventually(ctx.timeout, CONSECUTIVE_SUCCESSES, || {
        let id = uuid();
        let mut req = template.clone();
        req.path_and_query = req.path_and_query.replace("{uuid}", &id);
        let expected_path = expected_path.replace("{uuid}", &id);
        last_path = expected_path.clone();
        let (scheme, client_cert) = (scheme.clone(), client_cert.clone());
        async move {
            let (response, _) = send_following(&req, follow)
                .await
                .map_err(Attempt::NotYet)?;
            compare::compare(
                eff,
                &response,
                &expected_path,
                &scheme,
                client_cert.as_deref(),
            )
            .map_err(Attempt::NotYet)
        }
    })
    .await;
    if outcome != Outcome::Passed {
        return Ok(outcome);
    }
    for mirror in eff["mirrored_to"].as_array().into_iter().flatten() {
        let service = format!("{}/{}", s(&mirror["namespace"]), s(&mirror["name"]));
        let Some(deployment) = ctx.service_deployments.get(&service) else {
            return Ok(Outcome::Failed(format!(
                "mirror Service {service} has no echo backend"
            )));
        };
        if let Some(percent) = mirror["percent"].as_u64().filter(|p| *p < 100) {
            if let Err(e) = percentage_mirror(ctx, &template, deployment, percent).await {
                return Ok(Outcome::Failed(e));
            }
            continue;
        }
        let deadline = Instant::now() + ctx.timeout;
        while !ctx.log.contains(deployment, &last_path) {
            if Instant::now() > deadline {
                return Ok(Outcome::Failed(format!(
                    "{last_path} was not mirrored to {service}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(Outcome::Passed)
}

const MIRROR_ROUNDS: usize = 5;
const MIRROR_REQUESTS: usize = 500;
const MIRROR_PARALLEL: usize = 10;

/// `HTTPRouteRequestPercentageMirror`'s loop: up to 5 rounds of 500 requests
/// (10 at a time) with a fresh request id; the mirror must have echoed that
/// path within 3 standard deviations of n·p times.
async fn percentage_mirror(
    ctx: &Ctx,
    template: &HttpRequest,
    deployment: &str,
    percent: u64,
) -> Result<(), String> {
    let (n, p) = (MIRROR_REQUESTS as f64, percent as f64 / 100.0);
    let (mean, bound) = (n * p, 3.0 * (n * p * (1.0 - p)).sqrt());
    let mut last = String::new();
    for _ in 0..MIRROR_ROUNDS {
        let mut req = template.clone();
        let separator = if req.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        req.path_and_query = format!(
            "{}{separator}gateway-api-conformance-request-id={}",
            req.path_and_query,
            uuid()
        );
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..MIRROR_PARALLEL {
            let req = req.clone();
            tasks.spawn(async move {
                for _ in (worker..MIRROR_REQUESTS).step_by(MIRROR_PARALLEL) {
                    let _ = client::http_round_trip(&req).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        // Mirrors are fire-and-forget: give the last ones a moment to land.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let count = ctx.log.count(deployment, &req.path_and_query) as f64;
        if (count - mean).abs() <= bound {
            return Ok(());
        }
        last = format!(
            "{count} of {MIRROR_REQUESTS} requests mirrored, expected {mean:.0} ±{bound:.0}"
        );
    }
    Err(last)
}

async fn http_failure(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let eff = &case["effective"];
    let (req, _) = http_request(ctx, case)?;
    let follow = eff["follow_redirects"].as_bool().unwrap_or(true);
    if s(&case["driver"]) == "https" {
        // The HTTPS round trip itself must fail once connected; an HTTP
        // response, or no listener yet, means "not yet".
        return Ok(eventually(ctx.timeout, CONSECUTIVE_SUCCESSES, || {
            let req = req.clone();
            async move {
                match send_following(&req, follow).await {
                    Ok((r, _)) => Err(Attempt::NotYet(format!("got HTTP {}", r.status))),
                    Err(e) if e.starts_with("connect ") => Err(Attempt::NotYet(e)),
                    Err(_) => Ok(()),
                }
            }
        })
        .await);
    }
    Ok(eventually(ctx.timeout, 1, || {
        let req = req.clone();
        async move {
            match send_following(&req, follow).await {
                Ok((r, _)) if r.status == 200 => Err(Attempt::Final("got 200".into())),
                Ok((r, _)) if r.status == 408 || r.status == 504 => {
                    Err(Attempt::NotYet(format!("got {}", r.status)))
                }
                Ok(_) => Ok(()),
                Err(e) => Err(Attempt::NotYet(e)),
            }
        }
    })
    .await)
}

/// `HTTPRouteRequestHeaderModifierBackendWeights`' loop: every echoed request
/// carries exactly one `Backend` header, and the echoing pod starts with it.
async fn backend_header_matches_pod(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let target = ctx.target(case)?;
    let request = HttpRequest {
        connect: target,
        protocol: HttpProtocol::Http1,
        method: s(&case["request"]["method"]).to_string(),
        host: target.ip().to_string(),
        path_and_query: s(&case["request"]["path"]).to_string(),
        headers: vec![("X-Echo-Set-Header".into(), String::new())],
        body: None,
        tls: None,
    };
    let repeat = case["repeat"].as_u64().unwrap_or(100);
    first_success(ctx.timeout, POLL, || {
        let request = request.clone();
        async move {
            for i in 0..repeat {
                let response = client::http_round_trip(&request).await?;
                let json: Value = serde_json::from_slice(&response.body).map_err(|e| {
                    format!("request {i}: status {}, no echo JSON: {e}", response.status)
                })?;
                let values: Vec<&str> = json["headers"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("backend"))
                    .flat_map(|(_, v)| v.as_array().into_iter().flatten().map(s))
                    .collect();
                let pod = s(&json["pod"]);
                match values.as_slice() {
                    [backend] if pod.starts_with(backend) => {}
                    _ => {
                        return Err(format!(
                            "request {i}: Backend header {values:?}, pod {pod:?}"
                        ));
                    }
                }
            }
            Ok(())
        }
    })
    .await?;
    Ok(Outcome::Passed)
}

/// The WebSocket exchanges of `HTTPRouteBackendProtocolWebSocket`.
async fn websocket_echo(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let target = ctx.target(case)?;
    let ws = &case["websocket"];
    let origin = s(&ws["origin"]).replace("<go test name>", "HTTPRouteBackendProtocolWebSocket");
    let bytes = |v: &Value| -> Vec<u8> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b.as_u64())
            .map(|b| b as u8)
            .collect()
    };
    let exchanges: Vec<(u8, Vec<u8>)> = ws["exchanges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| match e.get("send_text") {
            Some(t) => (websocket::TEXT, s(t).as_bytes().to_vec()),
            None => (websocket::BINARY, bytes(&e["send_binary"])),
        })
        .collect();
    first_success(ctx.timeout, POLL, || {
        websocket::client(target, &origin, &exchanges)
    })
    .await?;
    Ok(Outcome::Passed)
}

/// Where and what a gRPC case calls.
struct GrpcCall {
    target: SocketAddr,
    authority: String,
    method: String,
    metadata: Vec<(String, String)>,
}

fn grpc_call(ctx: &Ctx, case: &Value) -> Result<GrpcCall, String> {
    let eff = &case["effective"];
    let target = ctx.target(case)?;
    // grpc-go's default authority is the dial target, port included.
    let authority = eff["authority"]
        .as_str()
        .filter(|a| !a.is_empty())
        .map_or_else(|| target.to_string(), str::to_string);
    let metadata = eff["metadata"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), s(v).to_string()))
        .collect();
    Ok(GrpcCall {
        target,
        authority,
        method: s(&eff["full_method"]).to_string(),
        metadata,
    })
}

async fn grpc_response(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let eff = &case["effective"];
    let GrpcCall {
        target,
        authority,
        method,
        metadata,
    } = grpc_call(ctx, case)?;
    let want = eff["code_value"].as_u64().unwrap_or(0) as u32;
    let namespace = s(&eff["namespace"]);
    let prefix = s(&eff["backend_pod_prefix"]);
    Ok(eventually(ctx.timeout, CONSECUTIVE_SUCCESSES, || {
        let (authority, method, metadata) = (authority.clone(), method.clone(), metadata.clone());
        async move {
            let rpc = grpc::call(target, &authority, &method, &metadata)
                .await
                .map_err(Attempt::NotYet)?;
            if rpc.code != want {
                return Err(Attempt::NotYet(format!(
                    "status {}, expected {}",
                    grpc::code_name(rpc.code),
                    grpc::code_name(want)
                )));
            }
            let Some(echo) = rpc.echo.filter(|_| want == 0) else {
                return if want == 0 {
                    Err(Attempt::NotYet("OK without an EchoResponse".into()))
                } else {
                    Ok(())
                };
            };
            if echo.fully_qualified_method != method {
                return Err(Attempt::NotYet(format!(
                    "backend saw method {:?}, expected {method:?}",
                    echo.fully_qualified_method
                )));
            }
            if !namespace.is_empty() && echo.namespace != namespace {
                return Err(Attempt::NotYet(format!(
                    "backend namespace {:?}, expected {namespace:?}",
                    echo.namespace
                )));
            }
            if !echo.pod.starts_with(prefix) {
                return Err(Attempt::NotYet(format!(
                    "answered by pod {:?}, expected a pod of {prefix:?}",
                    echo.pod
                )));
            }
            Ok(())
        }
    })
    .await)
}

async fn grpc_failure(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let GrpcCall {
        target,
        authority,
        method,
        metadata,
    } = grpc_call(ctx, case)?;
    Ok(eventually(ctx.timeout, 1, || {
        let (authority, method, metadata) = (authority.clone(), method.clone(), metadata.clone());
        async move {
            match grpc::call(target, &authority, &method, &metadata).await {
                Ok(rpc) if rpc.code == 0 => Err(Attempt::Final("the RPC succeeded".into())),
                Ok(_) => Ok(()),
                Err(e) => Err(Attempt::NotYet(e)),
            }
        }
    })
    .await)
}

/// Polls until `f` first succeeds.
async fn first_success<T, F, Fut>(
    timeout: Duration,
    interval: Duration,
    mut f: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() + interval > deadline => {
                return Err(format!("no success within {timeout:?}: {e}"));
            }
            Err(_) => tokio::time::sleep(interval).await,
        }
    }
}

fn tcp_tls(ctx: &Ctx, case: &Value) -> Result<Option<ClientTls>, String> {
    let eff = &case["effective"];
    if eff["use_tls"].as_bool() != Some(true) {
        return Ok(None);
    }
    let mut tls = ctx.client_tls(&case["tls"], &[])?;
    if tls.roots.is_empty() {
        // tcp.go trusts the suite's CA ConfigMap.
        let ca = serde_json::json!({"kind": "ConfigMap", "namespace": "gateway-conformance-infra",
            "name": "tls-checks-ca-certificate", "key": "ca.crt"});
        tls.roots = client::certificates(&ctx.pem(&ca).unwrap_or_default());
    }
    if let Some(name) = eff["server_name"].as_str() {
        tls.server_name = name.to_string();
    }
    Ok(Some(tls))
}

async fn tcp_response(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let eff = &case["effective"];
    let target = ctx.target(case)?;
    let tls = tcp_tls(ctx, case)?;
    let exchange = first_success(ctx.timeout, POLL, || {
        client::tcp_exchange(target, tls.as_ref())
    })
    .await?;
    let checks = [
        (
            "welcome line",
            s(&eff["expect_welcome_line"]),
            exchange.welcome.as_str(),
        ),
        (
            "PING reply",
            s(&eff["expect_ping_reply"]),
            exchange.ping.as_str(),
        ),
        (
            "IS_TLS reply",
            s(&eff["expect_is_tls_reply"]),
            exchange.is_tls.as_str(),
        ),
        (
            "namespace",
            s(&eff["namespace"]),
            s(&exchange.test["namespace"]),
        ),
    ];
    for (what, want, got) in checks {
        if want != got {
            return Ok(Outcome::Failed(format!(
                "{what} {got:?}, expected {want:?}"
            )));
        }
    }
    let pod = s(&exchange.test["pod"]);
    if !pod.starts_with(s(&eff["pod_prefix"])) {
        return Ok(Outcome::Failed(format!(
            "answered by pod {pod:?}, expected {:?}*",
            s(&eff["pod_prefix"])
        )));
    }
    for (field, want) in [
        ("serverName", &eff["backend_tls_server_name"]),
        ("negotiatedProtocol", &eff["backend_negotiated_protocol"]),
    ] {
        if let Some(want) = want.as_str() {
            let got = s(&exchange.test["tls"][field]);
            if got != want {
                return Ok(Outcome::Failed(format!(
                    "backend TLS {field} {got:?}, expected {want:?}"
                )));
            }
        }
    }
    Ok(Outcome::Passed)
}

async fn tcp_connect(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let target = ctx.target(case)?;
    first_success(ctx.timeout, POLL, || async move {
        tokio::net::TcpStream::connect(target)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await?;
    Ok(Outcome::Passed)
}

async fn tcp_echo(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let target = ctx.target(case)?;
    first_success(ctx.timeout, POLL, || async move {
        let e = client::tcp_exchange(target, None).await?;
        if s(&e.test["pod"]).is_empty() {
            return Err("TEST reply without a pod".into());
        }
        Ok(())
    })
    .await?;
    Ok(Outcome::Passed)
}

/// Deployment name of a pod: its last two `-` segments removed.
fn deployment_of(pod: &str) -> String {
    let parts: Vec<&str> = pod.split('-').collect();
    parts[..parts.len().saturating_sub(2)].join("-")
}

/// The backend the hand-written sampling checks expect: the first quoted
/// name in their `pass_condition` ("... a pod starting with
/// 'tcp-attach-backend-1-' ..." / "... is 'udp-attach-backend-1'").
fn expected_backend(case: &Value) -> Option<String> {
    s(&case["pass_condition"])
        .split('\'')
        .skip(1)
        .find(|p| {
            p.len() > 2
                && p.contains('-')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        .map(|p| p.trim_end_matches('-').to_string())
}

async fn tcp_backend(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let target = ctx.target(case)?;
    let backend = expected_backend(case).ok_or("no backend in the pass condition")?;
    let repeat = case["repeat"].as_u64().unwrap_or(100);
    for i in 0..repeat {
        let e = first_success(ctx.timeout, POLL, || client::tcp_exchange(target, None)).await?;
        let pod = s(&e.test["pod"]);
        if deployment_of(pod) != backend {
            return Ok(Outcome::Failed(format!(
                "exchange {i}: pod {pod:?}, expected one of {backend}"
            )));
        }
    }
    Ok(Outcome::Passed)
}

async fn udp_echo(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let eff = &case["effective"];
    let target = ctx.target(case)?;
    let payload = s(&eff["probe_payload"]).as_bytes().to_vec();
    let (service, namespace) = (eff["service"].as_str(), eff["namespace"].as_str());
    first_success(ctx.timeout, POLL, || {
        let payload = payload.clone();
        async move {
            let reply = client::udp_exchange(target, &payload).await?;
            if service.is_none() && namespace.is_none() {
                return Ok(());
            }
            let json: Value =
                serde_json::from_slice(&reply).map_err(|e| format!("reply is not JSON: {e}"))?;
            for (field, want) in [("service", service), ("namespace", namespace)] {
                if let Some(want) = want
                    && s(&json[field]) != want
                {
                    return Err(format!("{field} {:?}, expected {want:?}", s(&json[field])));
                }
            }
            Ok(())
        }
    })
    .await?;
    Ok(Outcome::Passed)
}

async fn udp_backend(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let target = ctx.target(case)?;
    let backend = expected_backend(case).ok_or("no backend in the pass condition")?;
    let repeat = case["repeat"].as_u64().unwrap_or(20);
    let payload = s(&case["probe_payload"]).as_bytes().to_vec();
    first_success(ctx.timeout, POLL, || {
        let (payload, backend) = (payload.clone(), backend.clone());
        async move {
            for i in 0..repeat {
                let reply = client::udp_exchange(target, &payload).await?;
                let json: Value = serde_json::from_slice(&reply).map_err(|e| e.to_string())?;
                let pod = s(&json["pod"]);
                if deployment_of(pod) != backend {
                    return Err(format!("datagram {i}: pod {pod:?}, expected {backend}"));
                }
            }
            Ok(())
        }
    })
    .await?;
    Ok(Outcome::Passed)
}

async fn udp_dns(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let target = ctx.target(case)?;
    let name = s(&case["dns_query"]["QuestionName"]).to_string();
    first_success(ctx.timeout, Duration::from_secs(1), || {
        client::dns_query(target, &name)
    })
    .await?;
    Ok(Outcome::Passed)
}

async fn tls_rejected(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let target = ctx.target(case)?;
    let name = s(&case["effective"]["server_name"]).to_string();
    first_success(ctx.timeout, POLL, || {
        let name = name.clone();
        async move {
            match client::tls_handshake(target, &name).await {
                client::Handshake::Rejected => Ok(()),
                client::Handshake::Other(e) => Err(e),
            }
        }
    })
    .await?;
    Ok(Outcome::Passed)
}

const WEIGHT_REQUESTS: usize = 500;
const WEIGHT_PARALLEL: usize = 10;
const WEIGHT_TOLERANCE: f64 = 0.05;
const WEIGHT_ATTEMPTS: usize = 10;

/// `weight.TestWeightedDistribution`: 500 requests, 10 at a time; every
/// backend's share within ±0.05 of its weight; up to 10 attempts.
async fn weighted(ctx: &Ctx, case: &Value) -> Result<Outcome, String> {
    let hint = s(&case["protocol_hint"]);
    if !matches!(hint, "http" | "tcp" | "udp" | "grpc") {
        return Ok(Outcome::NotRun(format!("driver weighted/{hint}")));
    }
    let weights: BTreeMap<String, f64> = case["weights"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
        .collect();
    let target = ctx.target(case)?;
    let http = if hint == "http" {
        // Like every request of the suite it carries an (empty) X-Echo-Set-Header.
        let (req, _) = http_request(
            ctx,
            &serde_json::json!({
                "gateway": case["gateway"],
                "effective": {"method": "GET", "scheme": "http", "protocol": "HTTP",
                    "path_and_query": s(&case["ExpectedResponse"]["Request"]["Path"])},
                "ExpectedResponse": case["ExpectedResponse"],
            }),
        )?;
        Some(req)
    } else {
        None
    };
    let mut last = String::new();
    for _ in 0..WEIGHT_ATTEMPTS {
        let counts = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
        let errors = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..WEIGHT_PARALLEL {
            let (counts, errors, http) = (counts.clone(), errors.clone(), http.clone());
            let hint = hint.to_string();
            tasks.spawn(async move {
                for _ in (worker..WEIGHT_REQUESTS).step_by(WEIGHT_PARALLEL) {
                    let pod = match hint.as_str() {
                        "http" => match client::http_round_trip(http.as_ref().expect("request"))
                            .await
                        {
                            Ok(r) if r.status == 200 => serde_json::from_slice::<Value>(&r.body)
                                .ok()
                                .map(|j| s(&j["pod"]).to_string()),
                            _ => None,
                        },
                        "grpc" => grpc::call(
                            target,
                            &target.to_string(),
                            &format!("/{}/Echo", grpc::SERVICE),
                            &[],
                        )
                        .await
                        .ok()
                        .and_then(|r| r.echo)
                        .map(|e| e.pod),
                        "tcp" => client::tcp_exchange(target, None)
                            .await
                            .ok()
                            .map(|e| s(&e.test["pod"]).to_string()),
                        _ => client::udp_exchange(target, b"gateway-api-conformance-udp-weight\n")
                            .await
                            .ok()
                            .and_then(|r| serde_json::from_slice::<Value>(&r).ok())
                            .map(|j| s(&j["pod"]).to_string()),
                    };
                    match pod {
                        Some(pod) => {
                            *counts
                                .lock()
                                .expect("counts")
                                .entry(deployment_of(&pod))
                                .or_default() += 1;
                        }
                        None => {
                            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let counts = counts.lock().expect("counts").clone();
        let errors = errors.load(std::sync::atomic::Ordering::Relaxed);
        match judge_distribution(&weights, &counts, errors) {
            Ok(()) => return Ok(Outcome::Passed),
            Err(e) => last = e,
        }
    }
    Ok(Outcome::Failed(last))
}

fn judge_distribution(
    weights: &BTreeMap<String, f64>,
    counts: &BTreeMap<String, usize>,
    errors: usize,
) -> Result<(), String> {
    if errors > 0 {
        return Err(format!("{errors} of {WEIGHT_REQUESTS} requests failed"));
    }
    for backend in counts.keys() {
        if !weights.contains_key(backend) {
            return Err(format!("answered by unexpected backend {backend}"));
        }
    }
    let total: f64 = weights.values().sum();
    for (backend, weight) in weights {
        let got = counts.get(backend).copied().unwrap_or(0);
        let share = got as f64 / WEIGHT_REQUESTS as f64;
        let want = weight / total;
        if *weight == 0.0 && got > 0 {
            return Err(format!("{backend} has weight 0 but got {got} requests"));
        }
        if (share - want).abs() > WEIGHT_TOLERANCE {
            return Err(format!(
                "{backend} got {share:.3} of the requests, expected {want:.2} ±{WEIGHT_TOLERANCE}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_rules() {
        let weights =
            BTreeMap::from([("a".to_string(), 0.7), ("b".into(), 0.3), ("c".into(), 0.0)]);
        let ok = BTreeMap::from([("a".to_string(), 340), ("b".into(), 160)]);
        assert!(judge_distribution(&weights, &ok, 0).is_ok());
        let skewed = BTreeMap::from([("a".to_string(), 400), ("b".into(), 100)]);
        assert!(judge_distribution(&weights, &skewed, 0).is_err());
        let zero = BTreeMap::from([("a".to_string(), 340), ("b".into(), 159), ("c".into(), 1)]);
        assert!(judge_distribution(&weights, &zero, 0).is_err());
        assert!(judge_distribution(&weights, &ok, 1).is_err());
    }

    #[test]
    fn sampling_checks_name_their_backend() {
        let udp = serde_json::json!({"pass_condition": "every reply's 'pod' minus its last two '-' segments is 'udp-attach-backend-1'"});
        assert_eq!(
            expected_backend(&udp).as_deref(),
            Some("udp-attach-backend-1")
        );
        let tcp = serde_json::json!({"pass_condition": "reports a pod starting with 'tcp-attach-backend-1-' and never 'tcp-attach-backend-2-'"});
        assert_eq!(
            expected_backend(&tcp).as_deref(),
            Some("tcp-attach-backend-1")
        );
    }

    #[test]
    fn pod_names_map_to_deployments() {
        assert_eq!(
            deployment_of("infra-backend-v1-7d9f8c6b5d-abcde"),
            "infra-backend-v1"
        );
    }
}
