//! Standalone source: every multi-document YAML file under a directory, as
//! `kubectl apply -f DIR -R` would read it. A document that does not parse is
//! reported with its file and line and left out; the rest is served.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::store::{ObjectKey, Snapshot};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based line in `file`.
    pub line: usize,
    pub message: String,
}

/// Reads every `.yaml`/`.yml` file under `dir` (recursively, in name order).
pub fn load_dir(dir: &Path) -> (Snapshot, Vec<ManifestError>) {
    FileSource::default().load(dir)
}

/// Re-reads a directory on demand, keeping each file's last version that parsed
/// without error: a broken edit is reported and the objects it held keep serving.
#[derive(Default)]
pub struct FileSource {
    last_good: BTreeMap<PathBuf, Snapshot>,
}

impl FileSource {
    pub fn load(&mut self, dir: &Path) -> (Snapshot, Vec<ManifestError>) {
        let mut errors = Vec::new();
        let mut files = Vec::new();
        collect_yaml_files(dir, &mut files, &mut errors);
        files.sort();
        self.last_good.retain(|path, _| files.contains(path));
        let mut snapshot = Snapshot::default();
        for file in files {
            let mut file_snapshot = Snapshot::default();
            let mut file_errors = Vec::new();
            match std::fs::read_to_string(&file) {
                Ok(text) => load_str(&file, &text, &mut file_snapshot, &mut file_errors),
                Err(e) => file_errors.push(ManifestError {
                    file: file.clone(),
                    line: 0,
                    message: format!("cannot read: {e}"),
                }),
            }
            if file_errors.is_empty() {
                self.last_good.insert(file, file_snapshot.clone());
                snapshot.merge(file_snapshot);
            } else {
                match self.last_good.get(&file) {
                    Some(previous) => {
                        tracing::warn!(file = %file.display(), "keeping the last version of this file that parsed");
                        snapshot.merge(previous.clone());
                    }
                    // Never parsed cleanly: serve the documents that did parse.
                    None => snapshot.merge(file_snapshot),
                }
                errors.extend(file_errors);
            }
        }
        (snapshot, errors)
    }
}

fn collect_yaml_files(dir: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<ManifestError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(ManifestError {
                file: dir.to_path_buf(),
                line: 0,
                message: format!("cannot read directory: {e}"),
            });
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_yaml_files(&path, files, errors);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
}

/// One YAML document of a file and the line it starts on.
struct Document<'a> {
    text: &'a str,
    first_line: usize,
}

/// Splits a multi-document YAML text on `---` lines, keeping line numbers.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end();
        if content == "---" || content.starts_with("--- ") || content.starts_with("---#") {
            documents.push(Document {
                text: &text[start..offset],
                first_line,
            });
            start = offset + line.len();
            first_line = index + 2;
        }
        offset += line.len();
    }
    documents.push(Document {
        text: &text[start..],
        first_line,
    });
    documents
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: MetaNames,
}

#[derive(Deserialize, Default)]
struct MetaNames {
    name: Option<String>,
    namespace: Option<String>,
}

/// Parses every document of one file into `snapshot`.
pub fn load_str(file: &Path, text: &str, snapshot: &mut Snapshot, errors: &mut Vec<ManifestError>) {
    for doc in split_documents(text) {
        if let Err(e) = load_document(&doc, snapshot) {
            errors.push(ManifestError {
                file: file.to_path_buf(),
                line: e.0,
                message: e.1,
            });
        }
    }
}

type DocError = (usize, String);

fn yaml_error(doc: &Document, e: &serde_yaml::Error) -> DocError {
    let line = e
        .location()
        .map_or(doc.first_line, |l| doc.first_line + l.line() - 1);
    // serde_yaml appends the line within the document; the file's line is ours.
    let message = e.to_string();
    let message = match message.rsplit_once(" at line ") {
        Some((text, _)) if e.location().is_some() => text.to_string(),
        _ => message,
    };
    (line, message)
}

fn load_document(doc: &Document, snapshot: &mut Snapshot) -> Result<(), DocError> {
    let has_content = doc
        .text
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    if !has_content {
        return Ok(());
    }
    let meta: TypeMeta = serde_yaml::from_str(doc.text).map_err(|e| yaml_error(doc, &e))?;
    let (Some(api_version), Some(kind)) = (meta.api_version, meta.kind) else {
        return Err((doc.first_line, "apiVersion and kind are required".into()));
    };
    let Some(name) = meta.metadata.name else {
        return Err((doc.first_line, "metadata.name is required".into()));
    };
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let version = api_version.rsplit('/').next().unwrap_or_default();
    let namespaced =
        |ns: Option<String>| ObjectKey::new(ns.unwrap_or_else(|| "default".into()), &name);
    let cluster = ObjectKey::new("", &name);
    let key = namespaced(meta.metadata.namespace);

    fn parse<T: DeserializeOwned>(doc: &Document) -> Result<T, DocError> {
        serde_yaml::from_str(doc.text).map_err(|e| yaml_error(doc, &e))
    }
    // Objects keep the namespace they were filed under even when the YAML omits it.
    fn with_namespace<T: kube::Resource>(mut object: T, key: &ObjectKey) -> T {
        object.meta_mut().namespace = Some(key.namespace.clone());
        object
    }

    match (group, kind.as_str()) {
        ("gateway.networking.k8s.io", "GatewayClass") => {
            snapshot.gateway_classes.insert(cluster, parse(doc)?);
        }
        ("gateway.networking.k8s.io", "Gateway") => {
            let object = with_namespace(parse(doc)?, &key);
            snapshot.gateways.insert(key, object);
        }
        ("gateway.networking.k8s.io", "HTTPRoute") => {
            let object = with_namespace(parse(doc)?, &key);
            snapshot.http_routes.insert(key, object);
        }
        ("gateway.networking.k8s.io", "GRPCRoute") => {
            let object = with_namespace(parse(doc)?, &key);
            snapshot.grpc_routes.insert(key, object);
        }
        ("gateway.networking.k8s.io", "TCPRoute") if matches!(version, "v1" | "v1alpha2") => {
            let object = with_namespace(parse(doc)?, &key);
            snapshot.tcp_routes.insert(key, object);
        }
        ("gateway.networking.k8s.io", "UDPRoute") if matches!(version, "v1" | "v1alpha2") => {
            let object = with_namespace(parse(doc)?, &key);
            snapshot.udp_routes.insert(key, object);
        }
        ("gateway.networking.k8s.io", "TLSRoute")
            if matches!(version, "v1" | "v1alpha3" | "v1alpha2") =>
        {
            let object = with_namespace(parse_tls_route(doc)?, &key);
            snapshot.tls_routes.insert(key, object);
        }
        ("gateway.networking.k8s.io", "ReferenceGrant") => {
            let object = with_namespace(parse(doc)?, &key);
            snapshot.reference_grants.insert(key, object);
        }
        ("gateway.networking.k8s.io", "ListenerSet") => {
            let object = with_namespace(parse(doc)?, &key);
            snapshot.listener_sets.insert(key, object);
        }
        ("gateway.networking.k8s.io", "BackendTLSPolicy") => {
            let object = with_namespace(parse(doc)?, &key);
            snapshot.backend_tls_policies.insert(key, object);
        }
        ("", "ConfigMap") => {
            let object = with_namespace(parse(doc)?, &key);
            snapshot.config_maps.insert(key, object);
        }
        ("", "Service") => {
            let object = with_namespace(parse(doc)?, &key);
            snapshot.services.insert(key, object);
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let object = with_namespace(parse(doc)?, &key);
            snapshot.endpoint_slices.insert(key, object);
        }
        ("", "Secret") => {
            let object = with_namespace(parse(doc)?, &key);
            snapshot.secrets.insert(key, object);
        }
        ("", "Namespace") => {
            snapshot.namespaces.insert(cluster, parse(doc)?);
        }
        _ => tracing::debug!(%api_version, %kind, %name, "ignoring a kind the agent does not use"),
    }
    Ok(())
}

/// A TLSRoute of any served version into the `v1` type: `v1alpha2` allows
/// leaving out `hostnames` and `rules[].backendRefs`, which `v1` requires.
fn parse_tls_route(doc: &Document) -> Result<gateway_api::tlsroutes::TlsRoute, DocError> {
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(doc.text).map_err(|e| yaml_error(doc, &e))?;
    if let Some(spec) = value.get_mut("spec").and_then(|s| s.as_mapping_mut()) {
        spec.entry("hostnames".into())
            .or_insert_with(|| serde_yaml::Value::Sequence(Vec::new()));
        if let Some(rules) = spec.get_mut("rules").and_then(|r| r.as_sequence_mut()) {
            for rule in rules.iter_mut().filter_map(|r| r.as_mapping_mut()) {
                rule.entry("backendRefs".into())
                    .or_insert_with(|| serde_yaml::Value::Sequence(Vec::new()));
            }
        }
    }
    serde_yaml::from_value(value).map_err(|e| yaml_error(doc, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Snapshot, Vec<ManifestError>) {
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        load_str(Path::new("m.yaml"), text, &mut snapshot, &mut errors);
        (snapshot, errors)
    }

    #[test]
    fn reads_every_document_and_defaults_the_namespace() {
        let (snapshot, errors) = load(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - port: 80\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: c\n\
             spec:\n  controllerName: x/y\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert!(
            snapshot
                .services
                .contains_key(&ObjectKey::new("default", "a"))
        );
        assert!(
            snapshot
                .gateway_classes
                .contains_key(&ObjectKey::new("", "c"))
        );
    }

    #[test]
    fn a_bad_document_names_its_line_and_the_others_still_load() {
        let (snapshot, errors) = load(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: good\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: bad\n\
             spec:\n  gatewayClassName: c\n  listeners:\n  - name: l\n    port: eighty\n    protocol: HTTP\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, 14, "{}", errors[0]);
        assert_eq!(
            errors[0].to_string(),
            "m.yaml:14: spec.listeners[0].port: invalid type: string \"eighty\", expected i32"
        );
        assert!(
            snapshot
                .services
                .contains_key(&ObjectKey::new("default", "good"))
        );
        assert!(snapshot.gateways.is_empty());
    }

    #[test]
    fn tls_routes_of_every_served_version_load() {
        let (snapshot, errors) = load(
            "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {name: old}\n\
             spec:\n  rules:\n  - backendRefs: [{name: s, port: 443}]\n---\n\
             apiVersion: gateway.networking.k8s.io/v1alpha3\nkind: TLSRoute\nmetadata: {name: mid, namespace: n}\n\
             spec:\n  hostnames: [a.example]\n  rules:\n  - backendRefs: [{name: s, port: 443}]\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {name: new}\n\
             spec:\n  hostnames: ['*.example']\n  rules:\n  - backendRefs: [{name: s, port: 443}]\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let old = &snapshot.tls_routes[&ObjectKey::new("default", "old")];
        assert!(old.spec.hostnames.is_empty());
        assert_eq!(old.spec.rules[0].backend_refs[0].port, Some(443));
        assert_eq!(
            snapshot.tls_routes[&ObjectKey::new("n", "mid")]
                .spec
                .hostnames,
            ["a.example"]
        );
        assert_eq!(
            snapshot.tls_routes[&ObjectKey::new("default", "new")]
                .spec
                .hostnames,
            ["*.example"]
        );
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let (_, errors) = load("apiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].line >= 4, "{}", errors[0]);
    }
}
