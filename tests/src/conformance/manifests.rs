//! The suite's manifests made standalone: placeholders replaced, one loopback
//! address per Gateway, the Deployments read as echo-server specs, and the
//! EndpointSlices kube-controller-manager would have written for them.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;

use serde_yaml::{Mapping, Value};

/// Names put in for the suite's placeholders.
pub struct Names {
    pub gateway_class: String,
    pub controller: String,
}

/// Reads a multi-document manifest with the placeholders replaced.
pub fn load(path: &Path, names: &Names) -> Result<Vec<Value>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let text = text
        .replace("{GATEWAY_CLASS_NAME}", &names.gateway_class)
        .replace("{GATEWAY_CONTROLLER_NAME}", &names.controller);
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| format!("parsing {}: {e}", path.display()))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

use serde::Deserialize as _;

/// Loopback addresses of one run: `127.<block>.0.x` for Gateways,
/// `127.<block>.<1..>.x` for backend pods. The block is random so that two
/// runs on one machine (or in one network namespace) do not meet.
pub struct Addresses {
    block: u8,
    next_gateway: u8,
    next_pod: u32,
    gateways: HashMap<String, Ipv4Addr>,
}

impl Default for Addresses {
    fn default() -> Self {
        Self::new()
    }
}

impl Addresses {
    pub fn new() -> Addresses {
        Addresses {
            block: fastrand::u8(16..=250),
            next_gateway: 1,
            next_pod: 0,
            gateways: HashMap::new(),
        }
    }

    /// The admin listener's address (`127.<block>.0.254`).
    pub fn admin(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, self.block, 0, 254)
    }

    /// The address of a Gateway (`namespace/name`), the same for the whole run.
    pub fn gateway(&mut self, key: &str) -> Ipv4Addr {
        if let Some(a) = self.gateways.get(key) {
            return *a;
        }
        assert!(self.next_gateway < 250, "too many Gateways for one block");
        let a = Ipv4Addr::new(127, self.block, 0, self.next_gateway);
        self.next_gateway += 1;
        self.gateways.insert(key.to_string(), a);
        a
    }

    /// Every Gateway given an address so far.
    pub fn gateways(&self) -> impl Iterator<Item = (&String, &Ipv4Addr)> {
        self.gateways.iter()
    }

    /// A fresh address for one backend pod.
    pub fn pod(&mut self) -> Ipv4Addr {
        let n = self.next_pod;
        self.next_pod += 1;
        assert!(n < 250 * 250, "too many pods for one block");
        Ipv4Addr::new(127, self.block, 1 + (n / 250) as u8, 1 + (n % 250) as u8)
    }
}

pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

pub fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut v = v;
    for key in path {
        v = v.get(*key)?;
    }
    Some(v)
}

pub fn kind(v: &Value) -> &str {
    str_at(v, &["kind"]).unwrap_or("")
}

/// `namespace/name` of an object (namespace `default` when unset).
pub fn key(v: &Value) -> String {
    format!(
        "{}/{}",
        str_at(v, &["metadata", "namespace"]).unwrap_or("default"),
        str_at(v, &["metadata", "name"]).unwrap_or("")
    )
}

/// Gives every Gateway without `spec.addresses` its own loopback address.
pub fn assign_gateway_addresses(docs: &mut [Value], addresses: &mut Addresses) {
    for doc in docs.iter_mut() {
        if kind(doc) != "Gateway" {
            continue;
        }
        let addr = addresses.gateway(&key(doc));
        let Some(spec) = doc.get_mut("spec").and_then(Value::as_mapping_mut) else {
            continue;
        };
        let has = spec
            .get("addresses")
            .and_then(Value::as_sequence)
            .is_some_and(|s| !s.is_empty());
        if !has {
            let mut a = Mapping::new();
            a.insert("type".into(), "IPAddress".into());
            a.insert("value".into(), addr.to_string().into());
            spec.insert("addresses".into(), Value::Sequence(vec![Value::Mapping(a)]));
        }
    }
}

/// What echo-basic runs as, from the Deployment's environment and image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoMode {
    Http,
    Grpc,
    Tcp,
    Udp,
    Dns,
}

/// A file inside the pod that comes from a Secret or ConfigMap volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeFile {
    pub kind: &'static str,
    pub name: String,
    pub key: String,
}

#[derive(Clone, Debug)]
pub struct Deployment {
    pub namespace: String,
    pub name: String,
    pub replicas: u32,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub mode: EchoMode,
    /// Env variable → the volume file its path names.
    pub files: BTreeMap<String, VolumeFile>,
}

impl Deployment {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The container port echo-basic listens on for a setting, as it reads it.
    pub fn port(&self, env: &str, default: u16) -> u16 {
        self.env
            .get(env)
            .and_then(|p| p.parse().ok())
            .unwrap_or(default)
    }
}

#[derive(Clone, Debug)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: u16,
    pub protocol: String,
}

#[derive(Clone, Debug)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Vec<ServicePort>,
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

pub fn deployments(docs: &[Value]) -> Vec<Deployment> {
    let mut out = Vec::new();
    for doc in docs.iter().filter(|d| kind(d) == "Deployment") {
        let pod = at(doc, &["spec", "template", "spec"]);
        let container = pod
            .and_then(|p| p.get("containers"))
            .and_then(Value::as_sequence)
            .and_then(|c| c.first());
        let mut env = BTreeMap::new();
        for e in container
            .and_then(|c| c.get("env"))
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if let (Some(n), Some(v)) = (str_at(e, &["name"]), str_at(e, &["value"])) {
                env.insert(n.to_string(), v.to_string());
            }
        }
        let image = container.and_then(|c| str_at(c, &["image"])).unwrap_or("");
        let mode = if image.contains("coredns") {
            EchoMode::Dns
        } else if env.contains_key("GRPC_ECHO_SERVER") {
            EchoMode::Grpc
        } else if env.contains_key("TCP_ECHO_SERVER") {
            EchoMode::Tcp
        } else if env.contains_key("UDP_ECHO_SERVER") {
            EchoMode::Udp
        } else {
            EchoMode::Http
        };
        let mut files = BTreeMap::new();
        for (var, path) in &env {
            if let (Some(pod), Some(container)) = (pod, container)
                && let Some(file) = volume_file(pod, container, path)
            {
                files.insert(var.clone(), file);
            }
        }
        out.push(Deployment {
            namespace: str_at(doc, &["metadata", "namespace"])
                .unwrap_or("default")
                .into(),
            name: str_at(doc, &["metadata", "name"]).unwrap_or("").into(),
            replicas: at(doc, &["spec", "replicas"])
                .and_then(Value::as_u64)
                .map_or(1, |r| r as u32),
            labels: string_map(at(doc, &["spec", "template", "metadata", "labels"])),
            env,
            mode,
            files,
        });
    }
    out
}

/// Which Secret/ConfigMap key a file path inside the container comes from.
fn volume_file(pod: &Value, container: &Value, path: &str) -> Option<VolumeFile> {
    let (dir, file) = path.rsplit_once('/')?;
    let mount = container
        .get("volumeMounts")?
        .as_sequence()?
        .iter()
        .find(|m| str_at(m, &["mountPath"]).is_some_and(|p| p.trim_end_matches('/') == dir))?;
    let volume_name = str_at(mount, &["name"])?;
    let volume = pod
        .get("volumes")?
        .as_sequence()?
        .iter()
        .find(|v| str_at(v, &["name"]) == Some(volume_name))?;
    let (kind, source, name) = if let Some(s) = volume.get("secret") {
        ("Secret", s, str_at(s, &["secretName"])?)
    } else if let Some(c) = volume.get("configMap") {
        ("ConfigMap", c, str_at(c, &["name"])?)
    } else {
        return None;
    };
    let key = source
        .get("items")
        .and_then(Value::as_sequence)
        .and_then(|items| items.iter().find(|i| str_at(i, &["path"]) == Some(file)))
        .and_then(|i| str_at(i, &["key"]))
        .unwrap_or(file);
    Some(VolumeFile {
        kind,
        name: name.to_string(),
        key: key.to_string(),
    })
}

pub fn services(docs: &[Value]) -> Vec<Service> {
    let mut out = Vec::new();
    for doc in docs.iter().filter(|d| kind(d) == "Service") {
        let selector = at(doc, &["spec", "selector"]).map(|s| string_map(Some(s)));
        let mut ports = Vec::new();
        for p in at(doc, &["spec", "ports"])
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let Some(port) = p.get("port").and_then(Value::as_u64) else {
                continue;
            };
            let target = p.get("targetPort").and_then(Value::as_u64).unwrap_or(port);
            ports.push(ServicePort {
                name: str_at(p, &["name"]).map(str::to_string),
                port: port as u16,
                target_port: target as u16,
                protocol: str_at(p, &["protocol"]).unwrap_or("TCP").to_string(),
            });
        }
        out.push(Service {
            namespace: str_at(doc, &["metadata", "namespace"])
                .unwrap_or("default")
                .into(),
            name: str_at(doc, &["metadata", "name"]).unwrap_or("").into(),
            selector,
            ports,
        });
    }
    out
}

/// The Deployment a Service selects (the first whose pod labels include the
/// selector), as kube-proxy would route it.
pub fn selected<'a>(service: &Service, deployments: &'a [Deployment]) -> Option<&'a Deployment> {
    let selector = service.selector.as_ref().filter(|s| !s.is_empty())?;
    deployments.iter().find(|d| {
        d.namespace == service.namespace && selector.iter().all(|(k, v)| d.labels.get(k) == Some(v))
    })
}

/// An EndpointSlice for a Service whose pods are at `pods`, one port entry per
/// Service port (same name, the targetPort), all endpoints ready.
pub fn endpoint_slice(service: &Service, pods: &[(String, Ipv4Addr)]) -> String {
    let mut doc = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {}-harness\n  namespace: {}\n  labels:\n    kubernetes.io/service-name: {}\naddressType: IPv4\nports:\n",
        service.name, service.namespace, service.name
    );
    for p in &service.ports {
        match &p.name {
            Some(name) => doc.push_str(&format!("- name: {name}\n  port: {}\n", p.target_port)),
            None => doc.push_str(&format!("- port: {}\n", p.target_port)),
        }
        doc.push_str(&format!("  protocol: {}\n", p.protocol));
    }
    doc.push_str("endpoints:\n");
    for (pod, addr) in pods {
        doc.push_str(&format!(
            "- addresses: [\"{addr}\"]\n  conditions:\n    ready: true\n  targetRef:\n    kind: Pod\n    name: {pod}\n    namespace: {}\n",
            service.namespace
        ));
    }
    doc
}

/// Fills the manifest's own empty IPv4 EndpointSlices (selector-less Services,
/// which the Go test patches with infra-backend-v1's pod addresses) with `pods`.
pub fn fill_manual_endpoint_slices(docs: &mut [Value], pods: &[(String, Ipv4Addr)]) {
    for doc in docs.iter_mut() {
        if kind(doc) != "EndpointSlice" || str_at(doc, &["addressType"]) != Some("IPv4") {
            continue;
        }
        let empty = doc
            .get("endpoints")
            .and_then(Value::as_sequence)
            .is_none_or(|e| e.is_empty());
        if !empty {
            continue;
        }
        let endpoints: Vec<Value> = pods
            .iter()
            .map(|(_, addr)| {
                let mut conditions = Mapping::new();
                conditions.insert("ready".into(), true.into());
                let mut e = Mapping::new();
                e.insert(
                    "addresses".into(),
                    Value::Sequence(vec![addr.to_string().into()]),
                );
                e.insert("conditions".into(), Value::Mapping(conditions));
                Value::Mapping(e)
            })
            .collect();
        if let Some(m) = doc.as_mapping_mut() {
            m.insert("endpoints".into(), Value::Sequence(endpoints));
        }
    }
}

/// Serialises documents as one multi-document YAML file.
pub fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).expect("YAML value serialises"))
        .collect::<Vec<_>>()
        .join("---\n")
}
