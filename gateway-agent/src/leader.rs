//! Leader election through a `coordination.k8s.io/v1` Lease, so that one agent
//! of the DaemonSet writes status. Every agent still programs its own node.
//!
//! Expiry is judged on this agent's own clock: a lease whose record has not
//! changed for `lease_duration` since we first saw it is free (as client-go
//! does), so clock skew between nodes does not matter.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Who we are in `holderIdentity` (the node name).
    pub identity: String,
    /// A holder that has not renewed for this long has lost the lease.
    pub lease_duration: Duration,
    /// How often the holder renews, and others look.
    pub retry_period: Duration,
}

/// What we last saw of the lease, and when we saw it change.
struct Observed {
    record: (Option<String>, Option<Timestamp>),
    since: Instant,
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
    is_leader: watch::Sender<bool>,
    /// When we last renewed successfully, while leader.
    renewed: Option<Instant>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            is_leader: watch::Sender::new(false),
            renewed: None,
        }
    }

    /// True while this agent holds the lease.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.is_leader.subscribe()
    }

    /// Tries to acquire or renew until `stop` resolves, then hands the lease
    /// over (clears the holder) so another agent takes it at once.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            let leader = match self.try_acquire_or_renew().await {
                Ok(leader) => leader,
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.config.name, "lease request failed");
                    // Without a renewal for a lease duration, another agent may hold it.
                    self.renewed
                        .is_some_and(|at| at.elapsed() < self.config.lease_duration)
                }
            };
            if leader {
                if !*self.is_leader.borrow() {
                    tracing::info!(identity = %self.config.identity, "became leader: this agent writes status");
                }
            } else {
                self.renewed = None;
                if *self.is_leader.borrow() {
                    tracing::warn!(identity = %self.config.identity, "lost the lease: no longer writing status");
                }
            }
            // Only a change is published: a renewal is no news to the status
            // writer, which starts over (recomputes every status) on each.
            self.is_leader
                .send_if_modified(|was| std::mem::replace(was, leader) != leader);
            tokio::select! {
                () = tokio::time::sleep(self.config.retry_period) => {}
                () = &mut stop => break,
            }
        }
        if *self.is_leader.borrow() {
            self.is_leader.send_replace(false);
            match self.release().await {
                Ok(()) => tracing::info!("lease released"),
                Err(e) => {
                    tracing::warn!(error = %e, "releasing the lease failed; it expires on its own")
                }
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let duration_s = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration_s),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.renewed = Some(Instant::now());
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (holder.clone(), spec.renew_time.as_ref().map(|t| t.0));
        let changed = self.observed.as_ref().is_none_or(|o| o.record != record);
        if changed {
            self.observed = Some(Observed {
                record,
                since: Instant::now(),
            });
        }
        let ours = holder.as_deref() == Some(self.config.identity.as_str());
        let lease_duration = spec
            .lease_duration_seconds
            .map_or(self.config.lease_duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|o| o.since.elapsed() >= lease_duration);
        if !ours && holder.is_some() && !expired {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(duration_s);
        spec.renew_time = Some(now);
        // replace carries the resourceVersion we read: two agents racing for
        // an expired lease cannot both win (the loser gets 409).
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.renewed = Some(Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&mut self) -> Result<(), kube::Error> {
        let mut lease = self.api.get(&self.config.name).await?;
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}
