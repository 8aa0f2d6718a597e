//! Prometheus metrics of one gateway, in its own registry (two gateways in one process never mix).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests by route and HTTP status (`route` is `-` when nothing matched).
    pub requests: IntCounterVec,
    /// End-to-end latency by route.
    pub latency: HistogramVec,
    /// 1 when an endpoint takes traffic, by upstream and endpoint; refreshed at scrape time.
    pub endpoint_healthy: IntGaugeVec,
    /// Upstream attempts that failed, by upstream and kind (connect, refused, timeout, transport).
    pub upstream_failures: IntCounterVec,
    /// Retried attempts by upstream.
    pub retries: IntCounterVec,
    /// Route reloads by result (`ok`, `error`).
    pub reloads: IntCounterVec,
    /// Refused credentials by reason (missing, expired, signature, revoked, role, ...).
    pub auth_failures: IntCounterVec,
    /// Rate-limited requests by route and key kind.
    pub ratelimit_rejections: IntCounterVec,
    /// Live keys over all rate limiters; refreshed at scrape time.
    pub ratelimit_keys: prometheus::IntGauge,
    /// Revoked sessions remembered; refreshed at scrape time.
    pub revoked_sessions: prometheus::IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("im_gateway".into()), None).expect("static prefix is valid");
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by route and HTTP status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Request latency by route").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
            &["route"],
        )
        .expect("valid metric");
        let endpoint_healthy = IntGaugeVec::new(
            Opts::new(
                "upstream_endpoint_healthy",
                "1 when the endpoint takes traffic",
            ),
            &["upstream", "endpoint"],
        )
        .expect("valid metric");
        let upstream_failures = IntCounterVec::new(
            Opts::new(
                "upstream_failures_total",
                "Failed upstream attempts by kind",
            ),
            &["upstream", "kind"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "upstream_retries_total",
                "Attempts retried on another endpoint",
            ),
            &["upstream"],
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new("route_reloads_total", "Route table reloads by result"),
            &["result"],
        )
        .expect("valid metric");
        let auth_failures = IntCounterVec::new(
            Opts::new("auth_failures_total", "Refused credentials by reason"),
            &["reason"],
        )
        .expect("valid metric");
        let ratelimit_rejections = IntCounterVec::new(
            Opts::new("ratelimit_rejections_total", "Rate-limited requests"),
            &["route", "key"],
        )
        .expect("valid metric");
        let ratelimit_keys = prometheus::IntGauge::new("ratelimit_keys", "Live rate-limiter keys")
            .expect("valid metric");
        let revoked_sessions =
            prometheus::IntGauge::new("revoked_sessions", "Revoked sessions remembered")
                .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(endpoint_healthy.clone()),
            Box::new(upstream_failures.clone()),
            Box::new(retries.clone()),
            Box::new(reloads.clone()),
            Box::new(auth_failures.clone()),
            Box::new(ratelimit_rejections.clone()),
            Box::new(ratelimit_keys.clone()),
            Box::new(revoked_sessions.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            latency,
            endpoint_healthy,
            upstream_failures,
            retries,
            reloads,
            auth_failures,
            ratelimit_rejections,
            ratelimit_keys,
            revoked_sessions,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        out
    }
}
