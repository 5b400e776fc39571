//! What both run modes serve on this node: the three data planes, the admin
//! listener, and the settings translate needs about the node.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::RunArgs;
use crate::admin::{self, AdminState};
use crate::dataplane::loader::{FlowTimeouts, L4Dataplane};
use crate::metrics::{self, AgentMetrics, ProxyMetrics};
use crate::model::{DataplaneConfig, L4Listener, TlsPassthroughListener};
use crate::netif;
use crate::passthrough::Passthrough;
use crate::proxy::Proxy;
use crate::translate::Settings;

pub(super) struct Node {
    pub pin_dir: PathBuf,
    pub settings: Settings,
    pub l4: Arc<Mutex<L4Dataplane>>,
    pub proxy: Arc<Proxy>,
    pub passthrough: Arc<Passthrough>,
    pub metrics: AgentMetrics,
    pub admin: Arc<AdminState>,
    /// What `/state` (and so `inspect`) reports.
    pub state: Arc<crate::inspect::StateSource>,
    /// The L4 and TLS passthrough parts last applied: a reload that leaves
    /// them as they were (a route edit) does not walk their appliers.
    applied: Mutex<Option<(Vec<L4Listener>, Vec<TlsPassthroughListener>)>>,
}

/// Where a reload's apply went: for the "config applied" log line.
#[derive(Clone, Copy, Default)]
pub(super) struct ApplyTimes {
    /// Comparing the L4 part with what was applied, and programming the eBPF maps.
    pub l4: Duration,
    /// Building the changed listeners' route tables and swapping them in.
    pub proxy: Duration,
    /// TLS passthrough listeners, and the bookkeeping after.
    pub tls: Duration,
}

impl Node {
    /// Loads (or adopts) the XDP program, starts the proxies and binds the
    /// admin listener.
    pub async fn start(args: &RunArgs) -> anyhow::Result<Self> {
        let interfaces = if args.interfaces.is_empty() {
            netif::default_interfaces().context("listing interfaces")?
        } else {
            args.interfaces.clone()
        };
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&args.name);
        let mut l4 = L4Dataplane::load_with_log(
            &interfaces,
            args.attach.mode(args.xdp_mode),
            &pin_dir,
            FlowTimeouts::default(),
            args.ebpf_log,
        )?;
        if let Some(logger) = l4.take_ebpf_logger() {
            crate::dataplane::ebpf_log::drain(logger).context("reading the eBPF log")?;
            tracing::info!("eBPF logging on: new and refused L4 flows are logged");
        }
        let l4 = Arc::new(Mutex::new(l4));
        let settings = Settings {
            controller_name: args.controller_name.clone(),
            node_addresses: netif::ipv4_addresses(&interfaces).context("listing addresses")?,
            usable_addresses: Some(netif::local_addresses().context("listing addresses")?),
        };
        let proxy_metrics = Arc::new(ProxyMetrics::default());
        let proxy = Arc::new(Proxy::new(proxy_metrics.clone(), args.access_log));
        let passthrough = Arc::new(Passthrough::new(args.tls_passthrough_splice, &pin_dir)?);
        let agent_metrics = AgentMetrics::default();
        let admin = Arc::new(AdminState {
            registry: {
                let mut registry = metrics::registry(&agent_metrics, &proxy_metrics, l4.clone());
                registry.register_collector(passthrough.collector());
                registry
            },
            ready: AtomicBool::new(false),
            degraded: Mutex::default(),
            state: std::sync::OnceLock::new(),
        });
        let state = Arc::new(crate::inspect::StateSource::new(
            proxy_metrics.clone(),
            passthrough.clone(),
        ));
        let _ = admin.state.set(state.clone());
        admin::serve(args.admin_address, admin.clone())
            .await
            .with_context(|| format!("binding the admin listener {}", args.admin_address))?;
        Ok(Self {
            pin_dir,
            settings,
            l4,
            proxy,
            passthrough,
            metrics: agent_metrics,
            admin,
            state,
            applied: Mutex::default(),
        })
    }

    /// Programs one translated config into the three data planes (errors are
    /// logged and counted; what could be applied serves) and marks the node
    /// ready; how long each data plane took.
    pub async fn apply(
        &self,
        config: &DataplaneConfig,
        generation: u64,
        started: Instant,
    ) -> ApplyTimes {
        let mut times = ApplyTimes::default();
        let stage = Instant::now();
        let (l4_same, tls_same) = match &*self.applied.lock().expect("applied lock") {
            Some((l4, tls)) => (*l4 == config.l4, *tls == config.tls_passthrough),
            None => (false, false),
        };
        let mut l4_ok = true;
        if !l4_same {
            let l4_result = self.l4.lock().expect("L4 dataplane lock").apply(&config.l4);
            if let Err(e) = l4_result {
                l4_ok = false;
                self.metrics.apply_errors.inc();
                tracing::error!(error = %e, "programming the L4 maps failed");
            }
        }
        times.l4 = stage.elapsed();
        let stage = Instant::now();
        for (addr, error) in self.proxy.apply(&config.http).await {
            self.metrics.apply_errors.inc();
            tracing::error!(%addr, %error, "cannot serve HTTP listener");
        }
        times.proxy = stage.elapsed();
        let stage = Instant::now();
        let mut tls_ok = true;
        if !tls_same {
            for (addr, error) in self.passthrough.apply(&config.tls_passthrough).await {
                tls_ok = false;
                self.metrics.apply_errors.inc();
                tracing::error!(%addr, %error, "cannot serve TLS passthrough listener");
            }
        }
        // What failed is tried again on the next reload, changed or not.
        if !(l4_same && tls_same) {
            *self.applied.lock().expect("applied lock") =
                (l4_ok && tls_ok).then(|| (config.l4.clone(), config.tls_passthrough.clone()));
        }
        self.metrics.config_generation.set(generation);
        self.metrics
            .last_apply_seconds
            .set(started.elapsed().as_secs_f64());
        self.admin.ready.store(true, Ordering::Relaxed);
        times.tls = stage.elapsed();
        times
    }

    /// Shutdown, in both run modes: not ready any more, no new TLS
    /// passthrough or HTTP connections, and the HTTP requests in flight get
    /// until `deadline` (returns as soon as they are done).
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        self.admin.ready.store(false, Ordering::Relaxed);
        self.passthrough.apply(&[]).await;
        if !self.proxy.drain(deadline).await {
            tracing::warn!("HTTP requests still in flight at the drain deadline");
        }
    }
}
