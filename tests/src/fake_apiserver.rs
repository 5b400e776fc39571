//! An in-process fake Kubernetes API server (HTTP on one address) serving the
//! kinds the agent uses from an in-memory store, well enough for the unmodified
//! kube `Client` and kube-runtime watchers:
//!
//! - list (one page, `resourceVersion` in the list metadata), watch (from a
//!   `resourceVersion`, replaying later events, `BOOKMARK`s when asked, `ERROR`
//!   410 Gone for a version older than the last `expire_watches`), get;
//! - create, update (PUT, 409 on a stale `resourceVersion`), patch (JSON merge
//!   patch; server-side apply and strategic merge are applied as merge patches,
//!   which is all a flat status or Lease needs), delete;
//! - the `status` subresource (writes change only `status`; main-resource
//!   writes keep it), `metadata.generation` bumped on spec changes;
//! - field selectors `metadata.name=` and `type=`; label selectors are ignored.
//!
//! Every (verb, group/resource/subresource) served is recorded, to compare with
//! the ClusterRole; status writes are recorded with the writer's address.
//! `stop`/`start` take the server down and up on the same address, keeping the
//! store. The server can run inside a network namespace (its thread enters it
//! before binding), so agents in that namespace reach it on loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A kind the server knows.
#[derive(Debug)]
pub struct ApiKind {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl ApiKind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const GW: &str = "gateway.networking.k8s.io";

pub const KINDS: &[ApiKind] = &[
    ApiKind {
        group: GW,
        version: "v1",
        plural: "gatewayclasses",
        kind: "GatewayClass",
        namespaced: false,
    },
    ApiKind {
        group: GW,
        version: "v1",
        plural: "gateways",
        kind: "Gateway",
        namespaced: true,
    },
    ApiKind {
        group: GW,
        version: "v1",
        plural: "httproutes",
        kind: "HTTPRoute",
        namespaced: true,
    },
    ApiKind {
        group: GW,
        version: "v1",
        plural: "grpcroutes",
        kind: "GRPCRoute",
        namespaced: true,
    },
    ApiKind {
        group: GW,
        version: "v1",
        plural: "tlsroutes",
        kind: "TLSRoute",
        namespaced: true,
    },
    ApiKind {
        group: GW,
        version: "v1",
        plural: "listenersets",
        kind: "ListenerSet",
        namespaced: true,
    },
    ApiKind {
        group: GW,
        version: "v1alpha2",
        plural: "tcproutes",
        kind: "TCPRoute",
        namespaced: true,
    },
    ApiKind {
        group: GW,
        version: "v1alpha2",
        plural: "udproutes",
        kind: "UDPRoute",
        namespaced: true,
    },
    ApiKind {
        group: GW,
        version: "v1",
        plural: "referencegrants",
        kind: "ReferenceGrant",
        namespaced: true,
    },
    ApiKind {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
    },
    ApiKind {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    ApiKind {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
    },
    ApiKind {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
    },
    ApiKind {
        group: GW,
        version: "v1",
        plural: "backendtlspolicies",
        kind: "BackendTLSPolicy",
        namespaced: true,
    },
    ApiKind {
        group: "",
        version: "v1",
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
    },
    ApiKind {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
    },
];

fn kind_by_name(kind: &str) -> &'static ApiKind {
    KINDS
        .iter()
        .find(|k| k.kind == kind)
        .unwrap_or_else(|| panic!("the fake API server does not serve kind {kind}"))
}

/// (plural, namespace, name)
type Key = (&'static str, String, String);

#[derive(Clone, Debug)]
struct Change {
    resource_version: u64,
    plural: &'static str,
    type_: &'static str,
    /// Shared: every open watch receives (clones) every change, and this
    /// server runs as a debug build, where copying a route takes a while.
    object: Arc<Value>,
}

#[derive(Clone, Debug)]
enum Broadcast {
    Change(Change),
    /// Every open watch ends with 410 Gone.
    Expire,
}

struct Store {
    resource_version: u64,
    objects: BTreeMap<Key, Value>,
    /// Changes after `oldest_watchable`, replayed to a watch starting from a version.
    log: Vec<Change>,
    /// A watch from an older version gets 410 Gone.
    oldest_watchable: u64,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Broadcast>,
    /// Plurals answered with 404 (a CRD not installed).
    not_installed: Mutex<BTreeSet<&'static str>>,
    calls: Mutex<BTreeSet<String>>,
    status_writers: Mutex<Vec<(IpAddr, String)>>,
    lists: Mutex<BTreeMap<&'static str, usize>>,
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    netns: Option<String>,
    running: Option<Running>,
}

impl FakeApiServer {
    /// Starts serving on `addr` (port 0: any free port), inside the named
    /// network namespace if given.
    pub fn start(addr: SocketAddr, netns: Option<&str>) -> Self {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                resource_version: 1,
                objects: BTreeMap::new(),
                log: Vec::new(),
                oldest_watchable: 0,
            }),
            changes: broadcast::channel(4096).0,
            not_installed: Mutex::default(),
            calls: Mutex::default(),
            status_writers: Mutex::default(),
            lists: Mutex::default(),
        });
        let mut server = FakeApiServer {
            shared,
            addr,
            netns: netns.map(str::to_string),
            running: None,
        };
        server.up();
        server
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn up(&mut self) {
        assert!(self.running.is_none(), "already running");
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = self.shared.clone();
        let addr = self.addr;
        let netns = self.netns.clone();
        let thread = std::thread::spawn(move || {
            if let Some(netns) = netns {
                enter_netns(&netns);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .unwrap_or_else(|e| panic!("fake API server cannot bind {addr}: {e}"));
                bound_tx
                    .send(listener.local_addr().expect("local addr"))
                    .expect("report address");
                let serve = async {
                    loop {
                        let Ok((stream, peer)) = listener.accept().await else {
                            continue;
                        };
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let shared = shared.clone();
                                async move { Ok::<_, Infallible>(handle(&shared, peer.ip(), req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime ends every connection and watch.
        });
        self.addr = bound_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fake API server started");
        self.running = Some(Running { stop, thread });
    }

    /// Takes the server down: the port refuses connections, open watches end.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            running.thread.join().expect("fake API server thread");
        }
    }

    /// Serves again on the same address, with the same objects.
    pub fn restart(&mut self) {
        self.up();
    }

    /// A kubeconfig pointing at this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n",
            addr = self.addr
        )
    }

    /// Creates or updates every object of a multi-document YAML text, as
    /// `kubectl apply` would (status is kept; generation bumped on spec change).
    pub fn apply(&self, yaml: &str) {
        for doc in yaml.split("\n---") {
            if doc.trim().is_empty() || doc.trim() == "---" {
                continue;
            }
            let object: Value = serde_yaml::from_str(doc).expect("YAML object");
            let api = kind_by_name(object["kind"].as_str().expect("kind"));
            let namespace = if api.namespaced {
                object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string()
            } else {
                String::new()
            };
            let name = object["metadata"]["name"]
                .as_str()
                .expect("name")
                .to_string();
            let mut store = self.shared.store.lock().expect("store");
            let key = (api.plural, namespace.clone(), name);
            match store.objects.get(&key).cloned() {
                Some(existing) => {
                    let mut updated = object.clone();
                    updated["status"] = existing["status"].clone();
                    updated["metadata"] = existing["metadata"].clone();
                    if let Some(labels) = object["metadata"].get("labels") {
                        updated["metadata"]["labels"] = labels.clone();
                    }
                    let changed = spec_of(&existing) != spec_of(&updated);
                    commit(
                        &self.shared,
                        &mut store,
                        api,
                        key,
                        updated,
                        changed,
                        "MODIFIED",
                    );
                }
                None => {
                    let object = new_object(api, &namespace, object);
                    commit(&self.shared, &mut store, api, key, object, false, "ADDED");
                }
            }
        }
    }

    /// Deletes an object (no-op when absent).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let api = kind_by_name(kind);
        let mut store = self.shared.store.lock().expect("store");
        let key = (api.plural, namespace.to_string(), name.to_string());
        if let Some(object) = store.objects.remove(&key) {
            store.resource_version += 1;
            let mut object = object;
            object["metadata"]["resourceVersion"] = json!(store.resource_version.to_string());
            publish(&self.shared, &mut store, api.plural, "DELETED", object);
        }
    }

    /// An object as stored, if present.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let api = kind_by_name(kind);
        let store = self.shared.store.lock().expect("store");
        store
            .objects
            .get(&(api.plural, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Answers 404 for a kind, as a cluster without its CRD does.
    pub fn uninstall(&self, kind: &str) {
        let api = kind_by_name(kind);
        self.shared
            .not_installed
            .lock()
            .expect("lock")
            .insert(api.plural);
    }

    /// Ends every open watch with 410 Gone, and refuses watches from any
    /// version before now (as after etcd compaction): clients must relist.
    pub fn expire_watches(&self) {
        let mut store = self.shared.store.lock().expect("store");
        store.oldest_watchable = store.resource_version;
        store.log.clear();
        let _ = self.shared.changes.send(Broadcast::Expire);
    }

    /// Every request served, as `verb group/resource[/subresource]` (core
    /// group written as empty: `list /services`).
    pub fn calls(&self) -> BTreeSet<String> {
        self.shared.calls.lock().expect("lock").clone()
    }

    /// Who wrote a status subresource (client address, `resource/ns/name`), in order.
    pub fn status_writes(&self) -> Vec<(IpAddr, String)> {
        self.shared.status_writers.lock().expect("lock").clone()
    }

    /// How many list requests were served for `kind`.
    pub fn list_count(&self, kind: &str) -> usize {
        let api = kind_by_name(kind);
        let lists = self.shared.lists.lock().expect("lock");
        lists.get(api.plural).copied().unwrap_or(0)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn enter_netns(name: &str) {
    let file = std::fs::File::open(format!("/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("open netns {name}: {e}"));
    // SAFETY: setns on a valid descriptor changes only this thread's namespace.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

fn spec_of(object: &Value) -> Value {
    let mut rest = object.clone();
    if let Some(map) = rest.as_object_mut() {
        map.remove("status");
        map.remove("metadata");
    }
    rest
}

fn new_object(api: &ApiKind, namespace: &str, mut object: Value) -> Value {
    static UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let uid = UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    object["apiVersion"] = json!(api.api_version());
    object["kind"] = json!(api.kind);
    let meta = &mut object["metadata"];
    if api.namespaced {
        meta["namespace"] = json!(namespace);
    }
    meta["uid"] = json!(format!("00000000-0000-0000-0000-{uid:012}"));
    meta["generation"] = json!(1);
    meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    object
}

/// Stores `object` under `key` with a new resourceVersion (and generation when
/// `spec_changed`), and tells the watches.
fn commit(
    shared: &Shared,
    store: &mut Store,
    api: &ApiKind,
    key: Key,
    mut object: Value,
    spec_changed: bool,
    type_: &'static str,
) -> Value {
    store.resource_version += 1;
    object["metadata"]["resourceVersion"] = json!(store.resource_version.to_string());
    if spec_changed {
        let generation = object["metadata"]["generation"].as_i64().unwrap_or(0);
        object["metadata"]["generation"] = json!(generation + 1);
    }
    store.objects.insert(key, object.clone());
    publish(shared, store, api.plural, type_, object.clone());
    object
}

fn publish(
    shared: &Shared,
    store: &mut Store,
    plural: &'static str,
    type_: &'static str,
    object: Value,
) {
    let change = Change {
        resource_version: store.resource_version,
        plural,
        type_,
        object: Arc::new(object),
    };
    store.log.push(change.clone());
    let _ = shared.changes.send(Broadcast::Change(change));
}

type Body = BoxBody<Bytes, Infallible>;

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn status_error(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    respond(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

/// What a request path names.
struct Target {
    api: &'static ApiKind,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    let api = KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)?;
    Some(Target {
        api,
        namespace,
        name,
        subresource,
    })
}

fn query_params(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `metadata.name=x,type=y` style field selectors, on the fields we support.
fn matches_fields(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| {
        let Some((field, value)) = term.split_once('=') else {
            return false;
        };
        let value = value.trim_start_matches('=');
        match field {
            "metadata.name" => object["metadata"]["name"] == value,
            "metadata.namespace" => object["metadata"]["namespace"] == value,
            "type" => object["type"] == value,
            _ => false,
        }
    })
}

async fn handle(shared: &Arc<Shared>, peer: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let params = query_params(req.uri().query());
    let Some(target) = parse_path(&path) else {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route {path}"),
        );
    };
    let method = req.method().clone();
    let verb = match (&method, &target.name) {
        (&Method::GET, None) if params.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            "watch"
        }
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, None) => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        _ => {
            return status_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "unsupported",
            );
        }
    };
    let resource = match &target.subresource {
        Some(sub) => format!("{}/{}/{sub}", target.api.group, target.api.plural),
        None => format!("{}/{}", target.api.group, target.api.plural),
    };
    shared
        .calls
        .lock()
        .expect("lock")
        .insert(format!("{verb} {resource}"));
    if verb == "list" {
        *shared
            .lists
            .lock()
            .expect("lock")
            .entry(target.api.plural)
            .or_default() += 1;
    }
    if shared
        .not_installed
        .lock()
        .expect("lock")
        .contains(target.api.plural)
    {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    if target.subresource.is_some() && matches!(verb, "patch" | "update") {
        shared.status_writers.lock().expect("lock").push((
            peer,
            format!(
                "{}/{}/{}",
                target.api.plural,
                target.namespace.clone().unwrap_or_default(),
                target.name.clone().unwrap_or_default()
            ),
        ));
    }
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", "body"),
    };
    match verb {
        "list" => list(shared, &target, &params),
        "watch" => watch(shared, &target, &params),
        "get" => {
            let store = shared.store.lock().expect("store");
            match store.objects.get(&key_of(&target)) {
                Some(object) => respond(StatusCode::OK, object),
                None => not_found(&target),
            }
        }
        "delete" => {
            let mut store = shared.store.lock().expect("store");
            match store.objects.remove(&key_of(&target)) {
                Some(mut object) => {
                    store.resource_version += 1;
                    object["metadata"]["resourceVersion"] =
                        json!(store.resource_version.to_string());
                    publish(
                        shared,
                        &mut store,
                        target.api.plural,
                        "DELETED",
                        object.clone(),
                    );
                    respond(StatusCode::OK, &object)
                }
                None => not_found(&target),
            }
        }
        _ => write(shared, &target, verb, &content_type, &body),
    }
}

fn key_of(target: &Target) -> Key {
    (
        target.api.plural,
        target.namespace.clone().unwrap_or_default(),
        target.name.clone().unwrap_or_default(),
    )
}

fn not_found(target: &Target) -> Response<Body> {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!(
            "{} \"{}\" not found",
            target.api.plural,
            target.name.as_deref().unwrap_or_default()
        ),
    )
}

fn list(shared: &Shared, target: &Target, params: &BTreeMap<String, String>) -> Response<Body> {
    let store = shared.store.lock().expect("store");
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((plural, ns, _), _)| {
            *plural == target.api.plural && target.namespace.as_ref().is_none_or(|n| n == ns)
        })
        .map(|(_, o)| o.clone())
        .filter(|o| matches_fields(o, params.get("fieldSelector")))
        .collect();
    respond(
        StatusCode::OK,
        &json!({
            "apiVersion": target.api.api_version(),
            "kind": format!("{}List", target.api.kind),
            "metadata": {"resourceVersion": store.resource_version.to_string()},
            "items": items,
        }),
    )
}

/// A response body fed from a channel: one JSON watch event per chunk.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    // Written around the object rather than through a `json!` copy of it.
    let mut line = format!(r#"{{"type":{},"object":"#, json!(type_));
    line.push_str(&object.to_string());
    line.push_str("}\n");
    Bytes::from(line)
}

fn watch(
    shared: &Arc<Shared>,
    target: &Target,
    params: &BTreeMap<String, String>,
) -> Response<Body> {
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    let api = target.api;
    let namespace = target.namespace.clone();
    let selector = params.get("fieldSelector").cloned();
    let wanted = move |c: &Change| {
        c.plural == api.plural
            && namespace
                .as_ref()
                .is_none_or(|n| c.object["metadata"]["namespace"] == n.as_str())
            && matches_fields(&c.object, selector.as_ref())
    };
    let gone = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410,
    });
    // Replay and subscribe under the store lock, so no change falls between.
    let (replay, mut changes, expired, current) = {
        let store = shared.store.lock().expect("store");
        let expired = from != 0 && from < store.oldest_watchable;
        let replay: Vec<Change> = store
            .log
            .iter()
            .filter(|c| c.resource_version > from && wanted(c))
            .cloned()
            .collect();
        (
            replay,
            shared.changes.subscribe(),
            expired,
            store.resource_version,
        )
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        if expired {
            let _ = tx.send(event_line("ERROR", &gone)).await;
            return;
        }
        let mut last = from.max(current);
        for change in replay {
            if tx
                .send(event_line(change.type_, &change.object))
                .await
                .is_err()
            {
                return;
            }
        }
        let end = tokio::time::Instant::now() + timeout;
        let mut bookmark = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                message = changes.recv() => match message {
                    // (Not again what a catch-up after a lag sent.)
                    Ok(Broadcast::Change(c)) if c.resource_version > last => {
                        last = c.resource_version;
                        if wanted(&c) && tx.send(event_line(c.type_, &c.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Broadcast::Change(_)) => {}
                    // Fell behind a burst (thousands of status writes):
                    // the missed changes are in the log, as a real API
                    // server's watch cache would have them.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let missed: Vec<Change> = {
                            let store = shared.store.lock().expect("store");
                            store
                                .log
                                .iter()
                                .filter(|c| c.resource_version > last && wanted(c))
                                .cloned()
                                .collect()
                        };
                        for change in missed {
                            last = last.max(change.resource_version);
                            if tx.send(event_line(change.type_, &change.object)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(Broadcast::Expire) | Err(_) => {
                        let _ = tx.send(event_line("ERROR", &gone)).await;
                        return;
                    }
                },
                _ = bookmark.tick(), if bookmarks => {
                    let object = json!({
                        "kind": api.kind, "apiVersion": api.api_version(),
                        "metadata": {"resourceVersion": last.to_string()},
                    });
                    if tx.send(event_line("BOOKMARK", &object)).await.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(end) => return,
            }
        }
    });
    let mut response = Response::new(ChannelBody(rx).boxed());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let map = target.as_object_mut().expect("object");
            for (k, v) in fields {
                if v.is_null() {
                    map.remove(k);
                } else {
                    merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn write(
    shared: &Arc<Shared>,
    target: &Target,
    verb: &str,
    content_type: &str,
    body: &[u8],
) -> Response<Body> {
    let input: Value = if content_type.contains("yaml") {
        match serde_yaml::from_slice(body) {
            Ok(v) => v,
            Err(e) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        }
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        }
    };
    if content_type.contains("json-patch+json") {
        return status_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "JSON patch is not served",
        );
    }
    let status_only = target.subresource.as_deref() == Some("status");
    let mut store = shared.store.lock().expect("store");
    if verb == "create" {
        let namespace = target.namespace.clone().unwrap_or_default();
        let Some(name) = input["metadata"]["name"].as_str().map(str::to_string) else {
            return status_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name is required",
            );
        };
        let key = (target.api.plural, namespace.clone(), name);
        if store.objects.contains_key(&key) {
            return status_error(StatusCode::CONFLICT, "AlreadyExists", "already exists");
        }
        let object = new_object(target.api, &namespace, input);
        let object = commit(shared, &mut store, target.api, key, object, false, "ADDED");
        return respond(StatusCode::CREATED, &object);
    }
    let key = key_of(target);
    let Some(existing) = store.objects.get(&key).cloned() else {
        return not_found(target);
    };
    // A resourceVersion in the request is a precondition, as on a real server.
    if let Some(expected) = input["metadata"]["resourceVersion"].as_str()
        && existing["metadata"]["resourceVersion"] != expected
    {
        return status_error(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        );
    }
    let mut updated = existing.clone();
    if verb == "update" {
        updated = input.clone();
    } else {
        merge_patch(&mut updated, &input);
    }
    if status_only {
        let status = updated["status"].clone();
        updated = existing.clone();
        updated["status"] = status;
    } else {
        updated["status"] = existing["status"].clone();
        updated["metadata"] = existing["metadata"].clone();
        for field in ["labels", "annotations"] {
            if let Some(v) = input["metadata"].get(field) {
                updated["metadata"][field] = v.clone();
            }
        }
    }
    if let Some(map) = updated.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    let changed = !status_only && spec_of(&existing) != spec_of(&updated);
    let object = commit(
        shared, &mut store, target.api, key, updated, changed, "MODIFIED",
    );
    respond(StatusCode::OK, &object)
}
