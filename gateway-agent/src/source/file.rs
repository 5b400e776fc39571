//! Standalone source: every multi-document YAML file under a directory, as
//! `kubectl apply -f DIR -R` would read it. A document that does not parse is
//! reported with its file and line and left out; the rest is served.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::store::{Kind, Object, ObjectKey, Snapshot};
use crate::translate::input;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based line in `file`.
    pub line: usize,
    pub message: String,
}

/// Reads every `.yaml`/`.yml` file under `dir` (recursively, in name order).
/// Routes are kept as API objects (`status -o json` prints them).
pub fn load_dir(dir: &Path) -> (Snapshot, Vec<ManifestError>) {
    let mut source = FileSource::with_route_objects();
    let errors = source.load(dir).1;
    (source.snapshot, errors)
}

/// Re-reads a directory on demand, keeping each file's last version that parsed
/// without error: a broken edit is reported and the objects it held keep serving.
///
/// Incremental: a file is re-read only when its size or mtime changed (or its
/// mtime is too recent to tell two writes apart), and re-parsed only when its
/// content changed. Every object is held once, in the merged snapshot; each
/// file remembers which objects it contributed.
#[derive(Default)]
pub struct FileSource {
    /// Keep each route's API object; by default only translate's parsed
    /// form of it is kept (`Snapshot::parsed_routes`): all that serving needs.
    route_objects: bool,
    snapshot: Snapshot,
    files: BTreeMap<Arc<Path>, FileState>,
    /// Objects defined by more than one file: the last file in path order is
    /// served (as `kubectl apply -f DIR -R` would leave it); the other
    /// versions wait here for it to drop the object.
    shadowed: BTreeMap<(Kind, ObjectKey), BTreeMap<Arc<Path>, Object>>,
    /// Which file the snapshot's version of each object came from.
    served_by: BTreeMap<(Kind, ObjectKey), Arc<Path>>,
    /// Objects of the snapshot added, replaced or removed since the last
    /// `take_changes` (what an incremental translate recomputes).
    changed: BTreeSet<(Kind, ObjectKey)>,
}

struct FileState {
    len: u64,
    modified: Option<SystemTime>,
    /// The mtime was so close to the read that a later write of the same size
    /// could carry the same mtime: re-read next time regardless.
    racy: bool,
    content_hash: u64,
    /// The served objects came from a version without errors.
    clean: bool,
    objects: Vec<(Kind, ObjectKey)>,
    errors: Vec<ManifestError>,
}

/// File timestamps are taken from a coarse clock (a few ms); two seconds of
/// margin also covers filesystems with whole-second mtimes.
const RACY_WINDOW: Duration = Duration::from_secs(2);

impl FileSource {
    /// A source whose snapshot holds every route as its API object.
    pub fn with_route_objects() -> Self {
        Self {
            route_objects: true,
            ..Self::default()
        }
    }

    /// The merged snapshot as of the last `load`.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The objects added, replaced or removed by the loads since the last
    /// call (every object after the first load).
    pub fn take_changes(&mut self) -> BTreeSet<(Kind, ObjectKey)> {
        std::mem::take(&mut self.changed)
    }

    /// Brings the snapshot up to date with `dir` and returns it with every
    /// file's current errors.
    pub fn load(&mut self, dir: &Path) -> (&Snapshot, Vec<ManifestError>) {
        let mut errors = Vec::new();
        let mut paths = Vec::new();
        collect_yaml_files(dir, &mut paths, &mut errors);
        paths.sort();
        let present: BTreeSet<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let removed: Vec<Arc<Path>> = self
            .files
            .keys()
            .filter(|p| !present.contains(&***p))
            .cloned()
            .collect();
        for path in removed {
            if let Some(state) = self.files.remove(&path) {
                self.retract(&path, &state.objects);
            }
        }
        for path in paths {
            let path: Arc<Path> = match self.files.get_key_value(path.as_path()) {
                Some((known, _)) => known.clone(),
                None => path.into(),
            };
            self.refresh(&path);
        }
        for state in self.files.values() {
            errors.extend(state.errors.iter().cloned());
        }
        (&self.snapshot, errors)
    }

    /// Re-reads `path` if it may have changed and updates the snapshot with
    /// what it now defines.
    fn refresh(&mut self, path: &Arc<Path>) {
        let metadata = std::fs::metadata(path).ok();
        let len = metadata.as_ref().map_or(0, std::fs::Metadata::len);
        let modified = metadata.as_ref().and_then(|m| m.modified().ok());
        if let Some(state) = self.files.get(path)
            && !state.racy
            && state.len == len
            && modified.is_some()
            && state.modified == modified
        {
            return;
        }
        let read_at = SystemTime::now();
        let racy = modified.is_none_or(|m| {
            read_at
                .duration_since(m)
                .map_or(true, |age| age < RACY_WINDOW)
        });
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                let error = ManifestError {
                    file: path.to_path_buf(),
                    line: 0,
                    message: format!("cannot read: {e}"),
                };
                self.update(path, len, modified, racy, 0, Vec::new(), vec![error]);
                return;
            }
        };
        let content_hash = {
            let mut hasher = std::hash::DefaultHasher::new();
            text.hash(&mut hasher);
            hasher.finish()
        };
        if let Some(state) = self.files.get_mut(path)
            && state.content_hash == content_hash
            && state.len == len
        {
            state.modified = modified;
            state.racy = racy;
            return;
        }
        let mut objects = Vec::new();
        let mut file_errors = Vec::new();
        parse_file(
            path,
            &text,
            self.route_objects,
            &mut objects,
            &mut file_errors,
        );
        self.update(
            path,
            len,
            modified,
            racy,
            content_hash,
            objects,
            file_errors,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        path: &Arc<Path>,
        len: u64,
        modified: Option<SystemTime>,
        racy: bool,
        content_hash: u64,
        objects: Vec<(ObjectKey, Object)>,
        errors: Vec<ManifestError>,
    ) {
        let keep_previous = !errors.is_empty() && self.files.get(path).is_some_and(|s| s.clean);
        let clean = errors.is_empty() || keep_previous;
        let served = if keep_previous {
            tracing::warn!(file = %path.display(), "keeping the last version of this file that parsed");
            self.files
                .get_mut(path)
                .map(|s| std::mem::take(&mut s.objects))
                .unwrap_or_default()
        } else {
            // Never parsed cleanly: serve the documents that did parse.
            if let Some(previous) = self
                .files
                .get_mut(path)
                .map(|s| std::mem::take(&mut s.objects))
            {
                self.retract(path, &previous);
            }
            let mut served = Vec::with_capacity(objects.len());
            for (key, object) in objects {
                let kind = object.kind();
                served.push((kind, key.clone()));
                self.claim(path, key, object);
            }
            served
        };
        self.files.insert(
            path.clone(),
            FileState {
                len,
                modified,
                racy,
                content_hash,
                clean,
                objects: served,
                errors,
            },
        );
    }

    fn claim(&mut self, path: &Arc<Path>, key: ObjectKey, object: Object) {
        let entry = (object.kind(), key);
        if self
            .served_by
            .get(&entry)
            .is_none_or(|current| current <= path)
        {
            self.changed.insert(entry.clone());
        }
        match self.served_by.get(&entry) {
            Some(current) if current > path => {
                self.shadowed
                    .entry(entry)
                    .or_default()
                    .insert(path.clone(), object);
            }
            Some(current) if current < path => {
                let current = current.clone();
                if let Some(previous) = self.snapshot.remove(entry.0, &entry.1) {
                    self.shadowed
                        .entry(entry.clone())
                        .or_default()
                        .insert(current, previous);
                }
                self.snapshot.insert(entry.1.clone(), object);
                self.served_by.insert(entry, path.clone());
            }
            _ => {
                self.snapshot.insert(entry.1.clone(), object);
                self.served_by.insert(entry, path.clone());
            }
        }
    }

    fn retract(&mut self, path: &Arc<Path>, objects: &[(Kind, ObjectKey)]) {
        for entry in objects {
            if self.served_by.get(entry) != Some(path) {
                if let Some(versions) = self.shadowed.get_mut(entry) {
                    versions.remove(path);
                    if versions.is_empty() {
                        self.shadowed.remove(entry);
                    }
                }
                continue;
            }
            self.snapshot.remove(entry.0, &entry.1);
            self.served_by.remove(entry);
            self.changed.insert(entry.clone());
            // The next file in path order that defines it takes over.
            let Some(versions) = self.shadowed.get_mut(entry) else {
                continue;
            };
            if let Some((next, object)) = versions.pop_last() {
                self.snapshot.insert(entry.1.clone(), object);
                self.served_by.insert(entry.clone(), next);
            }
            if versions.is_empty() {
                self.shadowed.remove(entry);
            }
        }
    }
}

/// Watches a manifests directory and says when a burst of changes is over.
pub struct ManifestWatcher {
    _watcher: notify::RecommendedWatcher,
    events: tokio::sync::mpsc::UnboundedReceiver<notify::Event>,
}

/// A burst ends as soon as every file written to was closed again (else a
/// reload could read a file its writer just truncated), or, when nothing was
/// written (a rename, a removal), once no event came for this long...
const QUIET: Duration = Duration::from_millis(2);
/// ... or after this long, whatever is still open.
const MAX_BURST: Duration = Duration::from_millis(100);

impl ManifestWatcher {
    pub fn new(dir: &Path) -> notify::Result<Self> {
        use notify::Watcher as _;
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reading the files ourselves raises Access events: only changes
                // count, and a writer closing its file.
                if let Ok(event) = event
                    && (!matches!(event.kind, notify::EventKind::Access(_))
                        || closes_a_write(&event))
                {
                    let _ = tx.send(event);
                }
            })?;
        watcher.watch(dir, notify::RecursiveMode::Recursive)?;
        Ok(Self {
            _watcher: watcher,
            events,
        })
    }

    /// Waits for a change, then for the burst it starts to end (an editor's
    /// save is several events); false when the watcher stopped.
    pub async fn changed(&mut self) -> bool {
        let Some(first) = self.events.recv().await else {
            return false;
        };
        // With its time stamp, where an edit's way to serving starts in the
        // agent (the bench reads it).
        tracing::debug!(kind = ?first.kind, paths = ?first.paths, "file event");
        let end = tokio::time::Instant::now() + MAX_BURST;
        let mut writing = BTreeSet::new();
        let mut closed = track_writes(&first, &mut writing);
        loop {
            while let Ok(event) = self.events.try_recv() {
                closed |= track_writes(&event, &mut writing);
            }
            // A writer closed what it wrote: the edit is complete, read it
            // now rather than wait out a quiet period (a save that goes on,
            // e.g. a rename after the write, is one more reload).
            if closed && writing.is_empty() {
                break;
            }
            // Woken by the next event, not by polling, so that the close
            // is seen as soon as it happens.
            let wait_until = end.min(tokio::time::Instant::now() + QUIET);
            match tokio::time::timeout_at(wait_until, self.events.recv()).await {
                Ok(Some(event)) => closed |= track_writes(&event, &mut writing),
                Ok(None) => return false,
                Err(_) if writing.is_empty() || tokio::time::Instant::now() >= end => break,
                Err(_) => {}
            }
        }
        true
    }
}

fn closes_a_write(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode};
    event.kind == notify::EventKind::Access(AccessKind::Close(AccessMode::Write))
}

/// Files opened for writing and not closed yet; true when `event` closes a
/// written file.
fn track_writes(event: &notify::Event, writing: &mut BTreeSet<PathBuf>) -> bool {
    use notify::EventKind;
    use notify::event::ModifyKind;
    match event.kind {
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
            writing.extend(event.paths.iter().cloned());
        }
        EventKind::Remove(_) => {
            for path in &event.paths {
                writing.remove(path);
            }
        }
        _ if closes_a_write(event) => {
            for path in &event.paths {
                writing.remove(path);
            }
            return true;
        }
        _ => {}
    }
    false
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
        // The entry's type comes with the directory listing: no stat per
        // file (a reload lists every file); a link is followed to see.
        let is_dir = match entry.file_type() {
            Ok(kind) if !kind.is_symlink() => kind.is_dir(),
            _ => path.is_dir(),
        };
        if is_dir {
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
    let mut objects = Vec::new();
    parse_file(file, text, true, &mut objects, errors);
    for (key, object) in objects {
        snapshot.insert(key, object);
    }
}

/// Parses every document of one file, in order; routes as API objects
/// (`route_objects`) or in translate's parsed form only.
fn parse_file(
    file: &Path,
    text: &str,
    route_objects: bool,
    objects: &mut Vec<(ObjectKey, Object)>,
    errors: &mut Vec<ManifestError>,
) {
    for doc in split_documents(text) {
        match parse_document(&doc) {
            Ok(Some((key, mut object))) => {
                let parsed = (!route_objects).then(|| input::parse(&key, &object));
                match parsed.flatten() {
                    Some(route) => object = Object::Route(Arc::new(route)),
                    None => object.shrink_to_fit(),
                }
                objects.push((key, object));
            }
            Ok(None) => {}
            Err(e) => errors.push(ManifestError {
                file: file.to_path_buf(),
                line: e.0,
                message: e.1,
            }),
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

/// One document's object, `None` for an empty document or a kind the agent does not use.
fn parse_document(doc: &Document) -> Result<Option<(ObjectKey, Object)>, DocError> {
    let has_content = doc
        .text
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    if !has_content {
        return Ok(None);
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

    let object = match (group, kind.as_str()) {
        ("gateway.networking.k8s.io", "GatewayClass") => {
            (cluster, Object::GatewayClass(parse(doc)?))
        }
        ("gateway.networking.k8s.io", "Gateway") => {
            let object = with_namespace(parse(doc)?, &key);
            (key, Object::Gateway(object))
        }
        ("gateway.networking.k8s.io", "HTTPRoute") => {
            let object = with_namespace(parse(doc)?, &key);
            (key, Object::HttpRoute(object))
        }
        ("gateway.networking.k8s.io", "GRPCRoute") => {
            let object = with_namespace(parse(doc)?, &key);
            (key, Object::GrpcRoute(object))
        }
        ("gateway.networking.k8s.io", "TCPRoute") if matches!(version, "v1" | "v1alpha2") => {
            let object = with_namespace(parse(doc)?, &key);
            (key, Object::TcpRoute(object))
        }
        ("gateway.networking.k8s.io", "UDPRoute") if matches!(version, "v1" | "v1alpha2") => {
            let object = with_namespace(parse(doc)?, &key);
            (key, Object::UdpRoute(object))
        }
        ("gateway.networking.k8s.io", "TLSRoute")
            if matches!(version, "v1" | "v1alpha3" | "v1alpha2") =>
        {
            let object = with_namespace(parse_tls_route(doc)?, &key);
            (key, Object::TlsRoute(object))
        }
        ("gateway.networking.k8s.io", "ReferenceGrant") => {
            let object = with_namespace(parse(doc)?, &key);
            (key, Object::ReferenceGrant(object))
        }
        ("gateway.networking.k8s.io", "ListenerSet") => {
            let object = with_namespace(parse(doc)?, &key);
            (key, Object::ListenerSet(object))
        }
        ("gateway.networking.k8s.io", "BackendTLSPolicy") => {
            let object = with_namespace(parse(doc)?, &key);
            (key, Object::BackendTlsPolicy(object))
        }
        ("", "ConfigMap") => {
            let object = with_namespace(parse(doc)?, &key);
            (key, Object::ConfigMap(object))
        }
        ("", "Service") => {
            let object = with_namespace(parse(doc)?, &key);
            (key, Object::Service(object))
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let object = with_namespace(parse(doc)?, &key);
            (key, Object::EndpointSlice(object))
        }
        ("", "Secret") => {
            let object = with_namespace(parse(doc)?, &key);
            (key, Object::Secret(object))
        }
        ("", "Namespace") => (cluster, Object::Namespace(parse(doc)?)),
        _ => {
            tracing::debug!(%api_version, %kind, %name, "ignoring a kind the agent does not use");
            return Ok(None);
        }
    };
    Ok(Some(object))
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

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "gateway-agent-file-{label}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn service(name: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n  - port: {port}\n"
        )
    }

    #[test]
    fn only_changed_files_are_parsed_again_and_later_files_win() {
        let dir = TempDir::new("incremental");
        std::fs::write(dir.0.join("a.yaml"), service("shared", 1)).expect("write");
        std::fs::write(dir.0.join("b.yaml"), service("shared", 2)).expect("write");
        let mut source = FileSource::default();
        let port = |source: &FileSource| {
            source.snapshot().services[&ObjectKey::new("default", "shared")]
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .map(|p| p[0].port)
        };
        assert!(source.load(&dir.0).1.is_empty());
        assert_eq!(port(&source), Some(2), "the later file wins");
        // Dropping the object from the winning file serves the other file's.
        std::fs::write(dir.0.join("b.yaml"), service("other", 3)).expect("write");
        source.load(&dir.0);
        assert_eq!(port(&source), Some(1));
        std::fs::remove_file(dir.0.join("a.yaml")).expect("remove");
        source.load(&dir.0);
        assert!(
            !source
                .snapshot()
                .services
                .contains_key(&ObjectKey::new("default", "shared"))
        );
        assert_eq!(source.snapshot().services.len(), 1);
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_version() {
        let dir = TempDir::new("broken");
        let file = dir.0.join("s.yaml");
        std::fs::write(&file, service("s", 80)).expect("write");
        let mut source = FileSource::default();
        assert!(source.load(&dir.0).1.is_empty());
        std::fs::write(&file, "apiVersion: v1\nkind: Service\nmetadata: [\n").expect("write");
        let errors = source.load(&dir.0).1;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            source
                .snapshot()
                .services
                .contains_key(&ObjectKey::new("default", "s"))
        );
        // Reported again on the next load, though the file is not parsed again.
        assert_eq!(source.load(&dir.0).1.len(), 1);
    }

    /// Random edit sequences: the incremental source always holds what a
    /// fresh read of the files' served versions holds (the last version
    /// without errors of each file, or what parsed of one that never had none).
    #[test]
    fn incremental_loads_equal_a_fresh_read_over_random_edits() {
        let dir = TempDir::new("random");
        let mut rng = fastrand::Rng::with_seed(9);
        let mut source = FileSource::default();
        // Served text per file (the model), by file name.
        let mut served: BTreeMap<String, String> = BTreeMap::new();
        let mut clean: BTreeMap<String, bool> = BTreeMap::new();
        for step in 0..300 {
            let name = format!("f{}.yaml", rng.usize(0..6));
            let path = dir.0.join(&name);
            match rng.u8(0..10) {
                0 => {
                    let _ = std::fs::remove_file(&path);
                    served.remove(&name);
                    clean.remove(&name);
                }
                1 => {
                    // A broken document next to a good one.
                    let text = format!("{}---\nkind: [\n", service(&format!("own-{name}"), 1));
                    std::fs::write(&path, &text).expect("write");
                    if !clean.get(&name).copied().unwrap_or(false) {
                        served.insert(name.clone(), text);
                        clean.insert(name.clone(), false);
                    }
                }
                _ => {
                    // Same-size rewrites (ports 10-99) test the mtime check.
                    let text: String = (0..rng.usize(0..4))
                        .map(|_| service(&format!("s{}", rng.usize(0..5)), rng.u16(10..100)))
                        .collect::<Vec<_>>()
                        .join("---\n");
                    std::fs::write(&path, &text).expect("write");
                    served.insert(name.clone(), text);
                    clean.insert(name.clone(), true);
                }
            }
            source.load(&dir.0);
            let mut expected = Snapshot::default();
            for (name, text) in &served {
                load_str(Path::new(name), text, &mut expected, &mut Vec::new());
            }
            assert_eq!(
                format!("{:?}", source.snapshot().services),
                format!("{:?}", expected.services),
                "step {step}"
            );
        }
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let (_, errors) = load("apiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].line >= 4, "{}", errors[0]);
    }
}
