//! The reload background service: reloads the route table when its directory changes (so
//! symlink swaps are seen) or on SIGHUP, and after every swap reconciles active health checks
//! and drops channels and health state of endpoints no longer in the table.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::RouteStore;
use crate::dispatch::Dispatcher;
use crate::filters::revocation::unix_now;
use crate::filters::Guard;
use crate::upstream::health::HealthSupervisor;

pub struct Reloader {
    pub routes: Arc<RouteStore>,
    pub dispatcher: Arc<Dispatcher>,
    pub guard: Arc<Guard>,
    /// How often refilled rate-limit keys and expired revocations are dropped.
    pub sweep_interval: Duration,
    /// Directory to watch; `None` disables watching.
    pub watch_dir: Option<PathBuf>,
    pub sighup: bool,
    pub debounce: Duration,
}

impl Reloader {
    fn reconcile(&self, supervisor: &mut HealthSupervisor) {
        let table = self.routes.load();
        let mut addrs = HashSet::new();
        let mut wanted = Vec::new();
        for (up, ep) in table.endpoints() {
            addrs.insert(ep.addr);
            if let Some(check) = &up.health_check {
                wanted.push((ep.addr, check.clone(), ep.state.clone()));
            }
        }
        supervisor.reconcile(wanted);
        let registries = self.routes.registries();
        registries.health.retain(&addrs);
        self.dispatcher.channels().retain(&addrs);
        let limiters = table
            .routes
            .iter()
            .filter_map(|r| r.limiter.as_ref().map(|l| l.id.clone()));
        registries.limiters.retain(&limiters.collect());
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut supervisor = HealthSupervisor::default();
        self.reconcile(&mut supervisor);
        let mut swapped = self.routes.subscribe();

        // File events arrive on notify's thread; a capacity-1 channel coalesces bursts.
        let (tx, mut file_events) = mpsc::channel::<()>(1);
        let _watcher = self.watch_dir.as_ref().and_then(|dir| {
            let tx = tx.clone();
            let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if res.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.try_send(());
                }
            })
            .map_err(|e| tracing::error!(error = %e, "cannot watch routes directory"))
            .ok()?;
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| tracing::error!(dir = %dir.display(), error = %e, "cannot watch routes directory"))
                .ok()?;
            tracing::info!(dir = %dir.display(), "watching routes directory");
            Some(watcher)
        });
        let mut hup = if self.sighup {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| tracing::error!(error = %e, "cannot install SIGHUP handler"))
                .ok()
        } else {
            None
        };

        let mut sweep = tokio::time::interval(self.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = sweep.tick() => {
                    self.routes.registries().limiters.sweep();
                    self.guard.auth.revocation().sweep(unix_now());
                }
                changed = swapped.changed() => {
                    if changed.is_err() { break; }
                    self.reconcile(&mut supervisor);
                }
                Some(()) = file_events.recv() => {
                    // Let multi-step saves settle, then load once.
                    tokio::time::sleep(self.debounce).await;
                    while file_events.try_recv().is_ok() {}
                    let _ = self.routes.reload_if_changed("file change");
                }
                Some(()) = async { match hup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                    let _ = self.routes.reload("SIGHUP");
                }
            }
        }
    }
}
