//! One reading of the gateway's metrics: the gauges that are read rather than counted (limiter
//! keys, sessions, queues, endpoint health, process figures) are refreshed, then every family is
//! gathered. `/metrics` renders it as Prometheus text and the OTLP export sends it
//! (`im_telemetry::metrics`), so both views show the same instruments.

use std::sync::Arc;

use prometheus::proto::MetricFamily;

use crate::filters::Guard;
use crate::metrics::Metrics;
use crate::push::PushDeps;
use crate::routes::RouteStore;

/// A cheap handle over what the gauges read.
#[derive(Clone)]
pub struct Scrape {
    pub routes: Arc<RouteStore>,
    pub metrics: Arc<Metrics>,
    pub push: Arc<PushDeps>,
    pub guard: Arc<Guard>,
}

impl Scrape {
    /// Every family, its gauges read now.
    pub fn families(&self) -> Vec<MetricFamily> {
        self.refresh_gauges();
        self.metrics.gather()
    }

    fn refresh_gauges(&self) {
        let m = &self.metrics;
        m.refresh_log_drops();
        m.ratelimit_keys
            .set(self.routes.registries().limiters.live_keys() as i64);
        m.revoked_sessions
            .set(self.guard.auth.revocation().len() as i64);
        let hub = &self.push.hub;
        m.ws_connections.set(hub.conns.open() as i64);
        let (total, max) = hub.queued_bytes();
        m.ws_queued_bytes.set(total as i64);
        m.ws_queued_bytes_max.set(max as i64);
        m.ws_queue_budget_used.set(hub.budget.used() as i64);
        let table = self.routes.load();
        m.endpoint_healthy.reset();
        for (up, ep) in table.endpoints() {
            m.endpoint_healthy
                .with_label_values(&[&up.name, &ep.addr.to_string()])
                .set(i64::from(ep.state.available()));
        }
        m.discovery_up.reset();
        m.discovery_endpoints.reset();
        let discovered = &self.routes.registries().discovered;
        for up in table.upstreams.values() {
            let Some(source) = &up.discovery else {
                continue;
            };
            let status = discovered.status(source).unwrap_or_default();
            let labels = [up.name.as_str(), source.kind()];
            m.discovery_up
                .with_label_values(&labels)
                .set(i64::from(status.ok));
            m.discovery_endpoints
                .with_label_values(&labels)
                .set(status.endpoints.len() as i64);
        }
    }
}
