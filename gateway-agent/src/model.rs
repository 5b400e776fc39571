//! What the data planes serve: translate's output, free of Kubernetes types.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

/// Names one rule of one route, for counters, logs and `inspect`. Every
/// rule of the proxy holds one: the names are shared by the route's rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RouteRef {
    pub kind: &'static str,
    pub namespace: SharedName,
    pub name: SharedName,
    pub rule: u32,
}

/// A name many values hold alike (a route's namespace and name, in each of
/// its rules): one shared string, compared and printed as a `str`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedName(Arc<str>);

impl SharedName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for SharedName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SharedName {
    fn from(name: &str) -> Self {
        Self(name.into())
    }
}

impl From<String> for SharedName {
    fn from(name: String) -> Self {
        Self(name.into())
    }
}

impl PartialEq<str> for SharedName {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for SharedName {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl std::fmt::Display for SharedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SharedName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl std::fmt::Display for RouteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/rule{}",
            self.kind, self.namespace, self.name, self.rule
        )
    }
}

/// Endpoints share a backendRef's weight: each gets `weight * ENDPOINT_WEIGHT_SCALE / n`.
/// lcm(1..=16), so shares are exact for up to 16 endpoints per backend.
pub const ENDPOINT_WEIGHT_SCALE: u64 = 720_720;

/// A ready endpoint with its share of traffic (see `ENDPOINT_WEIGHT_SCALE`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct WeightedEndpoint {
    pub addr: SocketAddr,
    pub weight: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum L4Protocol {
    Tcp,
    Udp,
}

/// A TCP or UDP listener address with the one route the kernel forwards it to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct L4Listener {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: L4Protocol,
    pub route: RouteRef,
    /// Empty when no backend is usable: new flows are refused.
    pub backends: Vec<WeightedEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum PathMatch {
    Exact(String),
    /// Segment-aware prefix: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    /// A regular expression that must match the whole path.
    RegularExpression(String),
}

/// How a header or query parameter value is compared.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ValueMatch {
    Exact(String),
    /// A regular expression that must match the whole value.
    RegularExpression(String),
}

/// `name` is lower-case for headers (names compare case-insensitively) and
/// as written for query parameters (they compare exactly).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct NameValueMatch {
    pub name: String,
    pub value: ValueMatch,
}

/// Every condition of one match must hold (AND).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct HttpMatch {
    pub path: PathMatch,
    /// Upper-case method name; None: any method.
    pub method: Option<String>,
    pub headers: Vec<NameValueMatch>,
    pub query_params: Vec<NameValueMatch>,
}

impl HttpMatch {
    /// Matches every request (a rule without matches).
    pub fn any() -> Self {
        Self {
            path: PathMatch::Prefix("/".into()),
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
        }
    }
}

/// Sets, appends and removes headers (names lower-case).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// How a redirect or rewrite changes the path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the part of the path the rule's PathPrefix matched.
    ReplacePrefixMatch(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct RequestRedirect {
    /// "http" or "https"; None keeps the request's scheme.
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

/// A copy of each request goes to one of `backends`, for `numerator /
/// denominator` of requests; its response is ignored.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct RequestMirror {
    pub backends: Vec<WeightedEndpoint>,
    pub numerator: u32,
    pub denominator: u32,
    /// Set when a BackendTLSPolicy targets the mirror's Service: copies go over TLS.
    pub tls: Option<BackendTls>,
}

/// The CORS filter: which cross-origin requests the route allows. Lists hold
/// values as written; `"*"` allows any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Cors {
    /// `scheme://host[:port]`; the host may start with `*.`.
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age_seconds: Option<u32>,
}

/// The filters of a rule or of one backendRef, applied in this fixed order:
/// CORS preflight and redirect (both answer at once), rewrite, request
/// headers; response headers (and CORS headers) on the way back. Mirrors see
/// the request as modified.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct HttpFilters {
    /// Rule filters only: the spec has no CORS on backendRefs.
    pub cors: Option<Cors>,
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub redirect: Option<RequestRedirect>,
    pub rewrite: Option<UrlRewrite>,
    pub mirrors: Vec<RequestMirror>,
}

/// How the proxy speaks to a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum BackendProtocol {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2 without TLS (prior knowledge): gRPC, or `appProtocol: kubernetes.io/h2c`.
    H2c,
}

/// One endpoint of a backendRef, with that backendRef's filters and protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct HttpBackend {
    pub addr: SocketAddr,
    /// Share of traffic, scaled as in `WeightedEndpoint`.
    pub weight: u64,
    pub protocol: BackendProtocol,
    /// Shared: most backends (and rules) have the same filters, usually none.
    #[serde(serialize_with = "serialize_shared")]
    pub filters: Arc<HttpFilters>,
    /// Set when a BackendTLSPolicy targets the backend: the proxy speaks TLS to it.
    pub tls: Option<BackendTls>,
}

/// Certificates a backend's server certificate must chain to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum TrustAnchors {
    /// PEM certificates (the `ca.crt` of the policy's ConfigMaps).
    Pem(String),
    /// `wellKnownCACertificates: System`: the node's trust store.
    System,
}

/// An identity the backend's certificate may carry (BackendTLSPolicy subjectAltNames).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum SubjectAltName {
    Hostname(String),
    Uri(String),
}

/// TLS from the proxy to a backend, from its BackendTLSPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct BackendTls {
    /// Sent as SNI; the certificate must carry it unless `subject_alt_names` is set.
    pub server_name: String,
    pub trust: TrustAnchors,
    /// When not empty, the certificate must carry one of these (instead of `server_name`).
    pub subject_alt_names: Vec<SubjectAltName>,
    /// The Gateway's `spec.tls.backend.clientCertificateRef`, presented to the backend.
    pub client_certificate: Option<ClientCertificate>,
}

/// A client certificate chain and key (PEM) from a `kubernetes.io/tls` Secret,
/// which the proxy presents when a backend asks for one.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ClientCertificate {
    pub cert_chain_pem: String,
    #[serde(skip)]
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCertificate {
    // Never print private keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate").finish_non_exhaustive()
    }
}

/// `timeouts` of a rule: the whole request, and one request to the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct HttpTimeouts {
    pub request: Option<std::time::Duration>,
    pub backend_request: Option<std::time::Duration>,
}

/// `retry` of an HTTPRoute rule: how many times a failed backend request is
/// sent again (connection errors and backend timeouts always count as
/// failures, responses when their status is listed), waiting at least
/// `backoff` between attempts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct HttpRetry {
    pub attempts: u32,
    pub codes: Vec<u16>,
    pub backoff: Option<std::time::Duration>,
}

/// One match of an HTTPRoute or GRPCRoute rule, as the proxy evaluates it.
/// Thousands of these live as long as their config: what several of them
/// hold alike (hostnames, match, action) is one shared `Arc`. The action's
/// fields read as the rule's own (`rule.backends`: `Deref`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRule {
    pub route: RouteRef,
    /// Hostnames the rule answers for (already intersected with the listener's);
    /// empty means any host. Shared by the route's rules on one listener.
    pub hostnames: Arc<[String]>,
    /// The hostname of the listener the route attached through (None: any).
    /// A request is served by the listener whose hostname matches it most
    /// specifically, and only by that listener's rules.
    pub listener_hostname: Option<String>,
    /// One match of the rule; a rule with several matches gives several
    /// entries. Shared with translate's parsed route (and every socket).
    pub matched: Arc<HttpMatch>,
    /// Shared by every rule that does the same (translate interns it).
    pub action: Arc<HttpAction>,
}

impl std::ops::Deref for HttpRule {
    type Target = HttpAction;
    fn deref(&self) -> &HttpAction {
        &self.action
    }
}

/// What a rule does with a request it matched. Rules of routes alike (same
/// backends, filters, timeouts) share one: 25,000 rules at 5,000 routes
/// hold one pointer each instead of ~80 bytes of fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct HttpAction {
    #[serde(serialize_with = "serialize_shared")]
    pub filters: Arc<HttpFilters>,
    pub timeouts: HttpTimeouts,
    /// Boxed: most rules have none.
    pub retry: Option<Box<HttpRetry>>,
    /// Shared by every rule with the same backends (translate interns them).
    #[serde(serialize_with = "serialize_shared")]
    pub backends: Arc<[HttpBackend]>,
    /// Weight of backendRefs that could not be resolved (or of the whole rule
    /// when it cannot be served as written): that share of requests gets 500.
    pub invalid_weight: u32,
}

/// The rule with its action's fields inline, as before they were shared.
impl Serialize for HttpRule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut rule = serializer.serialize_struct("HttpRule", 9)?;
        rule.serialize_field("route", &self.route)?;
        rule.serialize_field("hostnames", &*self.hostnames)?;
        rule.serialize_field("listener_hostname", &self.listener_hostname)?;
        rule.serialize_field("matched", &*self.matched)?;
        rule.serialize_field("filters", &*self.filters)?;
        rule.serialize_field("timeouts", &self.timeouts)?;
        rule.serialize_field("retry", &self.retry)?;
        rule.serialize_field("backends", &*self.backends)?;
        rule.serialize_field("invalid_weight", &self.invalid_weight)?;
        rule.end()
    }
}

/// One socket the proxy serves, with its rules in precedence order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpListener {
    pub bind: SocketAddr,
    /// Shared: translate keeps it for the next change, and the proxy keeps
    /// the table it built from it (the same Arc again means unchanged).
    #[serde(serialize_with = "serialize_shared")]
    pub rules: Arc<Vec<HttpRule>>,
    /// Empty: plain HTTP. Otherwise HTTPS: TLS ends here, the certificate is
    /// chosen by SNI among those of the listeners sharing this socket.
    pub certificates: Vec<ServerCertificate>,
    /// HTTPS only: client certificates are checked against these CAs
    /// (the Gateway's `spec.tls.frontend` for this port).
    pub client_validation: Option<ClientValidation>,
}

fn serialize_shared<S: serde::Serializer, T: Serialize + ?Sized>(
    value: &Arc<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    value.as_ref().serialize(serializer)
}

/// Client certificate validation on an HTTPS socket (Gateway `tls.frontend`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientValidation {
    /// PEM CA certificates a client certificate must chain to. Empty: none
    /// of the CA references resolved, and every client is refused.
    pub ca_pem: String,
    pub mode: ClientValidationMode,
}

/// What happens to a client without a valid certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ClientValidationMode {
    /// The handshake fails.
    AllowValidOnly,
    /// The connection is served anyway.
    AllowInsecureFallback,
}

/// A certificate chain and key (PEM) from a `kubernetes.io/tls` Secret, served
/// for SNI names under `hostname` (None: the listener has no hostname, any SNI).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct ServerCertificate {
    pub hostname: Option<String>,
    pub cert_chain_pem: String,
    #[serde(skip)]
    pub key_pem: String,
}

impl std::fmt::Debug for ServerCertificate {
    // Never print private keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

/// One TLSRoute rule on a passthrough socket: connections whose SNI falls
/// under `hostnames` go to `backends`, the TLS bytes untouched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsPassthroughRoute {
    pub route: RouteRef,
    pub hostnames: Vec<String>,
    pub backends: Vec<WeightedEndpoint>,
    /// From a TLS listener in Terminate mode: TLS ends at the agent (with the
    /// socket's `certificates`) and plain TCP goes to the backend, or TLS to
    /// the endpoints listed in `backend_tls` (BackendTLSPolicy).
    pub terminate: bool,
    pub backend_tls: std::collections::BTreeMap<SocketAddr, BackendTls>,
}

/// A TLS Passthrough socket with its routes in SNI precedence order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsPassthroughListener {
    pub bind: SocketAddr,
    pub routes: Vec<TlsPassthroughRoute>,
    /// Certificates of the Terminate-mode TLS listeners on this socket, chosen by SNI.
    pub certificates: Vec<ServerCertificate>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DataplaneConfig {
    pub l4: Vec<L4Listener>,
    pub http: Vec<HttpListener>,
    pub tls_passthrough: Vec<TlsPassthroughListener>,
}

/// The unspecified address: a listener bound to every node address.
pub const ANY_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
