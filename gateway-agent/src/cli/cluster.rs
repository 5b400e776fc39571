//! Cluster mode: the kube source feeds the same translate and appliers as
//! standalone mode; the Lease holder writes status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;

use super::node::Node;
use super::{RunArgs, shutdown_signal};
use crate::leader::{LeaderElector, LeaseConfig};
use crate::source::kube::{KubeSource, Update};
use crate::status_writer::{self, StatusCache, StatusWriter};
use crate::store::Snapshot;
use crate::translate::{self, ObjectStatus, Settings};

/// A lone change, one this long after the previous, is applied at once
/// (no settle timer: tokio's timers have a 1 ms grain, so even a 1 ms settle
/// cost 1-2 ms per change, and the events of one `kubectl apply` come a
/// request's round trip apart anyway); a burst of changes is applied once
/// it has been quiet this long...
const QUIET: Duration = Duration::from_millis(100);
/// ...or once it has lasted this long, so a steady stream still gets applied.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// The status writer looks again this often (objects whose version or
/// decided status changed, and writes that failed)...
const STATUS_RESYNC: Duration = Duration::from_secs(30);
/// ...or this soon after a failed write.
const STATUS_RETRY: Duration = Duration::from_secs(2);
/// A status pass waits this long after the reload (or echo) that asked for
/// it, so that the changed routes' first requests do not share the CPU
/// with it; what changes meanwhile is taken along.
const STATUS_AFTER_RELOAD: Duration = Duration::from_millis(10);

type Decided = Arc<(Arc<Snapshot>, Vec<Arc<ObjectStatus>>)>;

pub(super) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let cluster = &args.cluster;
    // kube's TLS needs a process-wide rustls provider; another part of the
    // agent may have installed one already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match &cluster.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .context("kubeconfig")?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster config or kubeconfig")?,
    };
    let client = kube::Client::try_from(config).context("kube client")?;
    let node_name = match &cluster.node_name {
        Some(name) => name.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("no --node-name and no hostname")?
            .trim()
            .to_string(),
    };

    let node = Node::start(&args).await?;

    let source = KubeSource::start(&client);
    let elector = LeaderElector::new(
        client.clone(),
        LeaseConfig {
            namespace: cluster.lease_namespace.clone(),
            name: cluster.lease_name.clone(),
            identity: node_name.clone(),
            lease_duration: Duration::from_secs(cluster.lease_duration_seconds),
            retry_period: Duration::from_secs(cluster.lease_duration_seconds.div_ceil(5).max(1)),
        },
    );
    let is_leader = elector.subscribe();
    let (stop_election, election_stopped) = tokio::sync::oneshot::channel::<()>();
    let election = tokio::spawn(elector.run(async move {
        let _ = election_stopped.await;
    }));
    let (decided_tx, decided_rx) = watch::channel::<Option<Decided>>(None);
    let writer = StatusWriter::new(client, "gateway-agent");
    let status_task = tokio::spawn(write_statuses(
        writer,
        decided_rx,
        is_leader,
        node.settings.clone(),
    ));
    tracing::info!(node = %node_name, pin_dir = %node.pin_dir.display(), "cluster mode: watching the API server");

    let mut generation = 0u64;
    // The snapshot served, kept up to date object by object, and what the
    // last translate leaves for the next: an API event re-translates what
    // it touches.
    let mut served = Arc::new(Snapshot::default());
    let mut memo = translate::Memo::default();
    // The statuses last decided, handed to the status writer again with the
    // objects when only their status changed.
    let mut decided_statuses: Option<Vec<Arc<ObjectStatus>>> = None;
    let mut last_change = tokio::time::Instant::now();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        let failing = source.failing();
        let degraded = (!failing.is_empty()).then(|| {
            let kinds: Vec<&str> = failing.iter().map(|(k, _)| *k).collect();
            format!("watching {} failed", kinds.join(", "))
        });
        *node.admin.degraded.lock().expect("admin lock") = degraded;

        let started = Instant::now();
        // The status writer shares the snapshot it was handed: take it back,
        // so that the snapshot is updated in place rather than copied
        // (unless a write is still computing from it).
        decided_tx.send_replace(None);
        let waited = source.pending_for().unwrap_or_default();
        // Still shared: make_mut below copies every object.
        let copied = Arc::strong_count(&served) > 1;
        let copying = Instant::now();
        let snapshot = Arc::make_mut(&mut served);
        let copy_took = copying.elapsed();
        let changes = match source.refresh(snapshot) {
            Update::NotListed => None,
            Update::Everything => Some(None),
            Update::Objects(changed) if !changed.is_empty() => Some(Some(changed)),
            // Only statuses changed (our own writes' echoes, mostly), or
            // nothing (a wake-up whose changes an earlier refresh took):
            // nothing to translate or apply; the writer gets the objects as
            // they now are, to compare with what was decided.
            Update::StatusOnly | Update::Objects(_) => {
                tracing::debug!(
                    copied,
                    copy_ms = copy_took.as_secs_f64() * 1e3,
                    took_ms = started.elapsed().as_secs_f64() * 1e3,
                    "status only"
                );
                if let Some(statuses) = &decided_statuses {
                    decided_tx.send_replace(Some(Arc::new((served.clone(), statuses.clone()))));
                }
                None
            }
        };
        if let Some(changes) = changes {
            generation += 1;
            let refresh_took = started.elapsed();
            // Translating is CPU work: off the runtime, so that the requests
            // in flight are not stalled by a reload.
            let settings = node.settings.clone();
            let snapshot = served.clone();
            let handed = Instant::now();
            let (returned_memo, output, queued, translate_took) =
                tokio::task::spawn_blocking(move || {
                    let translating = Instant::now();
                    let output = translate::translate_incremental(
                        &snapshot,
                        &settings,
                        changes.as_ref(),
                        &mut memo,
                    );
                    (memo, output, translating - handed, translating.elapsed())
                })
                .await
                .context("the reload thread panicked")?;
            memo = returned_memo;
            let translated = Instant::now();
            let times = node.apply(&output.config, generation, started).await;
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            tracing::info!(
                generation,
                l4_listeners = output.config.l4.len(),
                http_listeners = output.config.http.len(),
                // The stages of took_ms, in order: copying the changed
                // objects into the served snapshot, waiting for the blocking
                // thread, translate, its result back on the runtime, the
                // three appliers.
                refresh_ms = ms(refresh_took),
                // Of which copying the snapshot (when it was still shared).
                copied,
                copy_ms = ms(copy_took),
                queued_ms = ms(queued),
                translate_ms = ms(translate_took),
                returned_ms = ms(translated.duration_since(handed) - queued - translate_took),
                l4_ms = ms(times.l4),
                proxy_ms = ms(times.proxy),
                tls_ms = ms(times.tls),
                took_ms = ms(started.elapsed()),
                // From the watch event to the start of this reload (debounce).
                waited_ms = ms(waited),
                "config applied"
            );
            decided_tx.send_replace(Some(Arc::new((served.clone(), output.statuses.clone()))));
            decided_statuses = Some(output.statuses.clone());
            node.state.applied(output, generation);
        }

        tokio::select! {
            () = debounced(&source, &mut last_change) => {}
            () = &mut shutdown => break,
        }
    }

    tracing::info!("shutting down: no longer accepting, draining HTTP");
    status_task.abort();
    let _ = stop_election.send(());
    let drain_end = tokio::time::Instant::now() + Duration::from_secs(args.drain_seconds);
    node.drain(drain_end).await;
    let _ = tokio::time::timeout_at(drain_end, election).await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves after a change: at once for a lone change, one that came
/// `QUIET` after the previous (`last_change`); within a burst, once things
/// have been quiet for `QUIET`, or after `MAX_DELAY` of continuous change,
/// so that a burst becomes a few applies. A change of status alone (the echo
/// of our own status write) resolves at once and is no change here: it
/// neither waits nor makes the next change wait.
async fn debounced(source: &KubeSource, last_change: &mut tokio::time::Instant) {
    source.changed().await;
    if !source.changes_pending() {
        return;
    }
    let mut seen = source.changes_seen();
    let now = tokio::time::Instant::now();
    let lone = now.duration_since(*last_change) >= QUIET;
    *last_change = now;
    let deadline = now + MAX_DELAY;
    if lone {
        // The watcher tasks already woken record their events first.
        tokio::task::yield_now().await;
        return;
    }
    loop {
        tokio::select! {
            () = source.changed() => {
                let counted = source.changes_seen();
                if counted == seen {
                    continue;
                }
                seen = counted;
                *last_change = tokio::time::Instant::now();
                if *last_change >= deadline {
                    return;
                }
            }
            () = tokio::time::sleep_until(*last_change + QUIET) => return,
        }
    }
}

/// While leader, writes the latest decided status; otherwise idles. Only
/// the objects whose decided status or cluster version changed are looked at
/// (`StatusCache`), off the runtime and a little after the reload: with
/// thousands of routes, finding them would stall the watchers and the proxy.
async fn write_statuses(
    mut writer: StatusWriter,
    mut decided: watch::Receiver<Option<Decided>>,
    mut is_leader: watch::Receiver<bool>,
    settings: Settings,
) {
    let mut look_again = tokio::time::Instant::now() + STATUS_RESYNC;
    let mut cache = StatusCache::default();
    loop {
        tokio::select! {
            changed = decided.changed() => if changed.is_err() { return },
            changed = is_leader.changed() => {
                if changed.is_err() {
                    return;
                }
                // A change of leader (the elector publishes nothing else,
                // not its renewals): start over.
                writer.reset();
                cache.clear();
            }
            () = tokio::time::sleep_until(look_again) => {}
        }
        look_again = tokio::time::Instant::now() + STATUS_RESYNC;
        if !*is_leader.borrow() {
            continue;
        }
        // The changed routes' first requests go first: a status pass right
        // after the swap would take the CPU from the proxy as they come.
        tokio::time::sleep(STATUS_AFTER_RELOAD).await;
        let Some(latest) = decided.borrow_and_update().clone() else {
            continue;
        };
        let controller_name = settings.controller_name.clone();
        let woken = Instant::now();
        let computed = tokio::task::spawn_blocking(move || {
            let computing = Instant::now();
            let (snapshot, statuses) = &*latest;
            let updates = cache.updates(
                snapshot,
                statuses,
                &controller_name,
                k8s_openapi::jiff::Timestamp::now(),
            );
            // The snapshot is handed back before the writes: the reload
            // loop updates it in place when no one else holds it.
            drop(latest);
            let took = computing.elapsed();
            (cache, (updates, computing - woken, took))
        })
        .await;
        let (updates, queued, took);
        (cache, (updates, queued, took)) = match computed {
            Ok(computed) => computed,
            Err(error) => {
                tracing::error!(%error, "computing statuses failed");
                return;
            }
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            updates = updates.len(),
            queued_ms = ms(queued),
            took_ms = ms(took),
            "statuses computed"
        );
        let (_, errors) = writer.write(updates).await;
        for error in &errors {
            tracing::warn!(%error, "status not written; retrying");
            let status_writer::Error::Patch { kind, key, .. } = error;
            cache.forget(kind, key);
        }
        if !errors.is_empty() {
            look_again = tokio::time::Instant::now() + STATUS_RETRY;
        }
    }
}
