//! The maintenance background service, apart from the reloader (which only reloads): after every
//! route-table swap it reconciles active health checks and discovery watchers and drops the
//! channels, health state and limiters of what the table no longer has; when discovery finds a
//! different set it rebuilds the table; on an interval it sweeps refilled rate-limit keys and
//! ended revocations. A failure in one never stops the other.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::clock::unix_now;
use crate::discovery::supervisor::DiscoverySupervisor;
use crate::dispatch::Dispatcher;
use crate::filters::Guard;
use crate::routes::RouteStore;
use crate::upstream::health::HealthSupervisor;

pub struct Maintenance {
    pub routes: Arc<RouteStore>,
    pub dispatcher: Arc<Dispatcher>,
    pub guard: Arc<Guard>,
    /// How often refilled rate-limit keys and ended revocations are dropped.
    pub sweep_interval: Duration,
}

impl Maintenance {
    /// Brings health checks, channels, health state and limiters in line with the current table.
    fn reconcile(&self, supervisor: &mut HealthSupervisor, discovery: &mut DiscoverySupervisor) {
        let table = self.routes.load();
        let registries = self.routes.registries();
        discovery.reconcile(table.sources(), &registries.discovered);
        let mut addrs = HashSet::new();
        let mut wanted = Vec::new();
        for (up, ep) in table.endpoints() {
            addrs.insert(ep.addr);
            if let Some(check) = &up.health_check {
                wanted.push((ep.addr, check.clone(), ep.state.clone()));
            }
        }
        supervisor.reconcile(wanted);
        registries.health.retain(&addrs);
        self.dispatcher.channels().retain(&addrs);
        self.dispatcher.metrics().forget_endpoints(&addrs);
        let limiters = table
            .routes
            .iter()
            .filter_map(|r| r.admission().limit.as_ref().map(|l| l.id.clone()));
        registries.limiters.retain(&limiters.collect());
    }
}

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut supervisor = HealthSupervisor::default();
        let mut discovery = DiscoverySupervisor::default();
        let mut discovered = self.routes.registries().discovered.subscribe();
        self.reconcile(&mut supervisor, &mut discovery);
        let mut swapped = self.routes.subscribe();
        let mut sweep = tokio::time::interval(self.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = sweep.tick() => {
                    self.routes.registries().limiters.sweep();
                    self.guard.auth.revocation().sweep(unix_now());
                    self.guard.auth.sweep_cache();
                    // Also restarts a watcher or health check whose task ended, and drops the
                    // series an attempt still in flight at the last change wrote.
                    self.reconcile(&mut supervisor, &mut discovery);
                }
                changed = swapped.changed() => {
                    if changed.is_err() { break; }
                    self.reconcile(&mut supervisor, &mut discovery);
                }
                changed = discovered.changed() => {
                    if changed.is_err() { break; }
                    self.routes.refresh_endpoints();
                }
            }
        }
    }
}
