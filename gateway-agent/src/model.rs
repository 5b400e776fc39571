//! What the data planes serve: translate's output, free of Kubernetes types.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;

/// Names one rule of one route, for counters, logs and `inspect`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RouteRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub rule: u32,
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
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: L4Protocol,
    pub route: RouteRef,
    /// Empty when no backend is usable: new flows are refused.
    pub backends: Vec<WeightedEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PathMatch {
    Exact(String),
    /// Segment-aware prefix: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpMatch {
    pub path: PathMatch,
}

/// One match of an HTTPRoute rule, as the proxy evaluates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpRule {
    pub route: RouteRef,
    /// Hostnames the rule answers for (already intersected with the listener's);
    /// empty means any host.
    pub hostnames: Vec<String>,
    /// One match of the rule; a rule with several matches gives several entries.
    pub matched: HttpMatch,
    pub backends: Vec<WeightedEndpoint>,
    /// Weight of backendRefs that could not be resolved: that share of requests gets 500.
    pub invalid_weight: u32,
}

/// One socket the proxy serves, with its rules in precedence order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpListener {
    pub bind: SocketAddr,
    pub rules: Vec<HttpRule>,
    /// Empty: plain HTTP. Otherwise HTTPS: TLS ends here, the certificate is
    /// chosen by SNI among those of the listeners sharing this socket.
    pub certificates: Vec<ServerCertificate>,
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
    /// socket's `certificates`) and plain TCP goes to the backend.
    pub terminate: bool,
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
