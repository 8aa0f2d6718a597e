//! Prometheus metrics of one gateway, in its own registries (two gateways in one process never
//! mix): the `im_gateway_*` families, and beside them the OpenTelemetry semantic conventions'
//! (`http_server_request_duration_seconds`, `rpc_client_call_duration_seconds`) and the standard
//! `process_*` ones, under their own names. Label values are bounded: route and upstream names
//! from routes.yaml, endpoints from it, platforms mapped onto [`PLATFORMS`], never a user id or a
//! raw path.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The platforms a metric label may name; a client's other values count as `other`.
pub const PLATFORMS: [&str; 5] = ["ios", "android", "web", "desktop", "other"];

/// A client-supplied platform as a metric label (one of [`PLATFORMS`]).
pub fn platform_label(platform: &str) -> &'static str {
    match platform.to_ascii_lowercase().as_str() {
        "ios" | "iphone" | "ipad" | "ipados" => "ios",
        "android" => "android",
        "web" | "h5" | "browser" | "wap" => "web",
        "desktop" | "pc" | "windows" | "mac" | "macos" | "linux" | "electron" => "desktop",
        _ => "other",
    }
}

/// The kinds of failed upstream attempt (`upstream_failures_total`'s `kind`).
pub const UPSTREAM_FAILURES: [&str; 4] = ["connect", "refused", "timeout", "transport"];

/// The conventions' buckets for `*.duration` histograms, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Every family's help text, by name (without the `im_gateway_` prefix): one line each, so the
/// set reads as the table it is and [`Metrics::new`] only says which field holds which.
const HELP: &[(&str, &str)] = &[
    ("requests_total", "Requests by route and HTTP status"),
    ("http_server_request_duration_seconds", "Duration of HTTP requests and cmd frames in the gateway (http.server.request.duration)"),
    ("rpc_client_call_duration_seconds", "Duration of upstream gRPC attempts (rpc.client.call.duration)"),
    ("own_duration_seconds", "The gateway's own time per request or frame: the whole less the upstream attempts"),
    ("ws_connections_by_platform", "Open WebSocket sessions by platform (ios, android, web, desktop, other)"),
    ("upstream_endpoint_healthy", "1 when the endpoint takes traffic"),
    ("discovery_up", "1 while the upstream's discovery source (dns or etcd) answers; 0 while its last known endpoints keep serving"),
    ("discovery_endpoints", "Endpoints the upstream's discovery source found (the last known set while it fails)"),
    ("upstream_failures_total", "Failed upstream attempts by kind"),
    ("upstream_retries_total", "Attempts retried on another endpoint"),
    ("route_reloads_total", "Route table reloads by result"),
    ("route_last_reload_successful", "1 when the last route reload applied, 0 when it was rejected (the previous table serves)"),
    ("route_last_reload_success_timestamp_seconds", "Unix time the serving route table was loaded"),
    ("auth_failures_total", "Refused credentials by reason"),
    ("ratelimit_rejections_total", "Rate-limited requests"),
    ("ratelimit_keys", "Live rate-limiter keys"),
    ("revoked_sessions", "Revoked sessions remembered"),
    ("ws_connections", "Open WebSocket sessions"),
    ("ws_queued_bytes", "Bytes queued for WebSocket clients"),
    ("ws_queued_bytes_max", "Largest outbound queue of one WebSocket session, in bytes"),
    ("pushes_delivered_total", "Push frames queued for a session"),
    ("pushes_dropped_total", "Push frames dropped (queue full or session closing)"),
    ("pushes_offline_total", "Recipients of PushService calls who had no session on any node"),
    ("ws_slow_consumer_closes_total", "Sessions closed with 4003 because they did not read"),
    ("ws_queue_budget_sheds_total", "Sessions closed with 1013 because the gateway-wide queue budget was spent"),
    ("upstream_invalid_replies_total", "Backend replies that did not match the route's output type (502 / INTERNAL)"),
    ("http_head_timeouts_total", "Edge connections closed because a request head was not complete within http.request_head_timeout"),
    ("http_unfinished_rejections_total", "Edge connections refused at accept: the IP held http.max_unfinished_per_ip unfinished ones"),
    ("ws_write_stalls_total", "Sessions closed with 4003 because their socket took no bytes for write_stall_timeout"),
    ("ws_queue_budget_used_bytes", "Bytes held against push.total_queue_bytes (queued or being written)"),
    ("ws_closes_total", "Closed WebSocket sessions by close code"),
    ("ws_handshake_rejections_total", "Refused WebSocket handshakes by reason"),
    ("ws_frames_rate_limited_total", "Frames refused by the per-connection frame rate limit"),
    ("ratelimit_cluster_fallbacks_total", "Cluster-wide rate-limit decisions taken by this node's share because Redis did not answer"),
    ("cluster_redis_errors_total", "Cluster mode: failed Redis operations by operation"),
    ("cluster_messages_total", "Cluster mode: node-to-node messages by direction and kind"),
    ("cluster_messages_dropped_total", "Cluster mode: node-to-node messages not sent or not applied, by reason"),
    ("cluster_messages_skipped_total", "Cluster mode: inbound node-to-node messages skipped, by reason"),
    ("cluster_subscription_stale_total", "Cluster mode: times the Redis subscription stopped delivering probes and was rebuilt"),
    ("cluster_forwards_total", "Cluster mode: pushes that reached this node after their user left it, by outcome (forwarded to the node they reconnected to, gave_up, busy)"),
    ("cluster_nodes", "Cluster mode: live gateway nodes at the last heartbeat, this one included"),
    ("cluster_registry_queue", "Cluster mode: registry operations (a session's register or unregister) queued and not yet done"),
    ("cluster_message_lag_seconds", "Cluster mode: from a node sending a message to this node reading it"),
    ("cluster_redis_duration_seconds", "Cluster mode: time of each Redis command or pipeline, answered or not"),
    ("log_lines_dropped_total", "Log lines (access lines among them) dropped because the log writer fell behind; requests never wait on the log"),
];

/// Seconds from a node sending a message to another reading it.
const CLUSTER_LAG_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Seconds of one Redis command or pipeline (the timeout defaults to 0.5).
const REDIS_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Makes metrics and registers them in one registry, each with its [`HELP`] text.
struct Families(Registry);

// Static names, buckets and help texts: a failure is a bug the first test finds, never input.
#[allow(clippy::expect_used)]
impl Families {
    fn prefixed(prefix: &str) -> Self {
        Self(Registry::new_custom(Some(prefix.into()), None).expect("static prefix is valid"))
    }

    fn opts(name: &str) -> Opts {
        let help = HELP.iter().find(|(n, _)| *n == name).map(|(_, h)| *h);
        Opts::new(name, help.expect("every family has a HELP line"))
    }

    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    fn register(&self, c: Box<dyn prometheus::core::Collector>) {
        self.0.register(c).expect("metric names are unique");
    }

    fn counter(&self, name: &str) -> IntCounter {
        self.add(IntCounter::with_opts(Self::opts(name)).expect("valid metric"))
    }

    fn gauge(&self, name: &str) -> IntGauge {
        self.add(IntGauge::with_opts(Self::opts(name)).expect("valid metric"))
    }

    fn counters(&self, name: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Self::opts(name), labels).expect("valid metric"))
    }

    fn gauges(&self, name: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Self::opts(name), labels).expect("valid metric"))
    }

    fn durations(&self, name: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::from(Self::opts(name)).buckets(DURATION_BUCKETS.to_vec());
        self.add(HistogramVec::new(opts, labels).expect("valid metric"))
    }

    fn histogram(&self, name: &str, buckets: &[f64]) -> prometheus::Histogram {
        let opts = HistogramOpts::from(Self::opts(name)).buckets(buckets.to_vec());
        self.add(prometheus::Histogram::with_opts(opts).expect("valid metric"))
    }

    fn into_registry(self) -> Registry {
        self.0
    }
}

pub struct Metrics {
    registry: Registry,
    /// The families named by the conventions (no `im_gateway_` prefix).
    standard: Registry,
    /// Requests by route and HTTP status (`route` is `-` when nothing matched).
    pub requests: IntCounterVec,
    /// `http.server.request.duration`: a request's or cmd frame's whole time in the gateway, by
    /// route, status and transport (http, grpc, websocket).
    pub latency: HistogramVec,
    /// The gateway's own share of it (the whole time less the upstream attempts'), by route.
    pub own_latency: HistogramVec,
    /// `rpc.client.call.duration`: one upstream attempt, by method, endpoint and gRPC status code.
    pub upstream_latency: HistogramVec,
    /// Open WebSocket sessions by platform ([`PLATFORMS`]).
    pub ws_by_platform: IntGaugeVec,
    /// 1 when an endpoint takes traffic, by upstream and endpoint; refreshed at scrape time.
    pub endpoint_healthy: IntGaugeVec,
    /// Per discovered upstream: 1 while its source answers, 0 while the last set is kept.
    pub discovery_up: IntGaugeVec,
    /// Per discovered upstream: the endpoints its source found (last known while failing).
    pub discovery_endpoints: IntGaugeVec,
    /// Upstream attempts that failed, by upstream and kind (connect, refused, timeout, transport).
    pub upstream_failures: IntCounterVec,
    /// Retried attempts by upstream.
    pub retries: IntCounterVec,
    /// Route reloads by result (`ok`, `error`).
    pub reloads: IntCounterVec,
    /// 1 when the last reload applied (or none was tried since start), 0 when it was rejected.
    pub last_reload_ok: IntGauge,
    /// Unix time the serving table was loaded.
    pub last_reload_ok_time: IntGauge,
    /// Refused credentials by reason (missing, expired, signature, revoked, role, ...).
    pub auth_failures: IntCounterVec,
    /// Rate-limited requests by route and key kind.
    pub ratelimit_rejections: IntCounterVec,
    /// Live keys over all rate limiters; refreshed at scrape time.
    pub ratelimit_keys: IntGauge,
    /// Revoked sessions remembered; refreshed at scrape time.
    pub revoked_sessions: IntGauge,
    /// Open WebSocket sessions; refreshed at scrape time.
    pub ws_connections: IntGauge,
    /// Bytes queued for WebSocket clients and not yet written: total and the largest single
    /// queue (bounded by `push.queue_bytes`); refreshed at scrape time.
    pub ws_queued_bytes: IntGauge,
    pub ws_queued_bytes_max: IntGauge,
    /// Push frames queued for a connection / dropped (queue full or session closing).
    pub pushes_delivered: IntCounter,
    pub pushes_dropped: IntCounter,
    /// Recipients of PushService calls who had no session anywhere.
    pub pushes_offline: IntCounter,
    /// Sessions closed with 4003 because they did not read.
    pub ws_slow_closes: IntCounter,
    pub ws_budget_sheds: IntCounter,
    pub upstream_invalid_replies: IntCounterVec,
    pub http_head_timeouts: IntCounter,
    pub http_unfinished_rejections: IntCounter,
    pub ws_write_stalls: IntCounter,
    pub ws_queue_budget_used: IntGauge,
    /// Closed sessions by close code and reason.
    pub ws_closes: IntCounterVec,
    /// Refused WebSocket handshakes by reason.
    pub ws_handshake_rejections: IntCounterVec,
    /// Frames answered RESOURCE_EXHAUSTED by the per-connection frame rate limit.
    pub ws_frames_limited: IntCounter,
    /// Cluster-wide limits decided by this node's share because Redis did not answer.
    pub ratelimit_cluster_fallbacks: IntCounter,
    /// Cluster mode: failed Redis operations by operation.
    pub cluster_errors: IntCounterVec,
    /// Cluster mode: node-to-node messages by direction (`in`, `out`) and kind.
    pub cluster_messages: IntCounterVec,
    /// Cluster mode: messages not sent or not applied, by reason (`busy`, `redis`, `inbox`).
    pub cluster_dropped: IntCounterVec,
    /// Cluster mode: inbound messages skipped, by reason (`newer_format`, `malformed`, `empty`).
    pub cluster_skipped: IntCounterVec,
    /// Cluster mode: times the subscription stopped delivering its own probes and was rebuilt.
    pub cluster_subscription_stale: IntCounter,
    /// Pushes for users who had left this node, by what became of them.
    pub cluster_forwards: IntCounterVec,
    /// Cluster mode: live nodes, this one included, at the last heartbeat.
    pub cluster_nodes: IntGauge,
    /// Cluster mode: registry operations (register, unregister) queued and not yet done.
    pub cluster_registry_queue: IntGauge,
    /// Cluster mode: seconds from a node sending a message to this node reading it.
    pub cluster_lag: prometheus::Histogram,
    /// Cluster mode: seconds per Redis command or pipeline, answered or not.
    pub cluster_redis_latency: prometheus::Histogram,
    /// Log lines the writer thread had no room for, as of the last scrape.
    pub log_lines_dropped: IntCounter,
    /// Where that count is read (the process's log writer, when this gateway's process made it).
    log_drops: std::sync::OnceLock<im_telemetry::LogDrops>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The registries and every metric, its help text from `HELP`. The names and help texts are
    /// static, so a failure here is a bug found by the first test, never input: the one place the
    /// gateway allows `expect` (in `Families`).
    pub fn new() -> Self {
        let own = Families::prefixed("im_gateway");
        let std = Families(Registry::new());
        std.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let last_reload_ok = own.gauge("route_last_reload_successful");
        last_reload_ok.set(1);
        let last_reload_ok_time = own.gauge("route_last_reload_success_timestamp_seconds");
        last_reload_ok_time.set(crate::clock::unix_now() as i64);
        let m = Self {
            requests: own.counters("requests_total", &["route", "status"]),
            latency: std.durations(
                "http_server_request_duration_seconds",
                &["http_route", "http_response_status_code", "im_transport"],
            ),
            own_latency: own.durations("own_duration_seconds", &["http_route"]),
            upstream_latency: std.durations(
                "rpc_client_call_duration_seconds",
                &["rpc_method", "server_address", "rpc_grpc_status_code"],
            ),
            ws_by_platform: own.gauges("ws_connections_by_platform", &["platform"]),
            endpoint_healthy: own.gauges("upstream_endpoint_healthy", &["upstream", "endpoint"]),
            discovery_up: own.gauges("discovery_up", &["upstream", "source"]),
            discovery_endpoints: own.gauges("discovery_endpoints", &["upstream", "source"]),
            upstream_failures: own.counters("upstream_failures_total", &["upstream", "kind"]),
            retries: own.counters("upstream_retries_total", &["upstream"]),
            reloads: own.counters("route_reloads_total", &["result"]),
            last_reload_ok,
            last_reload_ok_time,
            auth_failures: own.counters("auth_failures_total", &["reason"]),
            ratelimit_rejections: own.counters("ratelimit_rejections_total", &["route", "key"]),
            ratelimit_keys: own.gauge("ratelimit_keys"),
            revoked_sessions: own.gauge("revoked_sessions"),
            ws_connections: own.gauge("ws_connections"),
            ws_queued_bytes: own.gauge("ws_queued_bytes"),
            ws_queued_bytes_max: own.gauge("ws_queued_bytes_max"),
            pushes_delivered: own.counter("pushes_delivered_total"),
            pushes_dropped: own.counter("pushes_dropped_total"),
            pushes_offline: own.counter("pushes_offline_total"),
            ws_slow_closes: own.counter("ws_slow_consumer_closes_total"),
            ws_budget_sheds: own.counter("ws_queue_budget_sheds_total"),
            upstream_invalid_replies: own.counters("upstream_invalid_replies_total", &["route"]),
            http_head_timeouts: own.counter("http_head_timeouts_total"),
            http_unfinished_rejections: own.counter("http_unfinished_rejections_total"),
            ws_write_stalls: own.counter("ws_write_stalls_total"),
            ws_queue_budget_used: own.gauge("ws_queue_budget_used_bytes"),
            ws_closes: own.counters("ws_closes_total", &["code", "reason"]),
            ws_handshake_rejections: own.counters("ws_handshake_rejections_total", &["reason"]),
            ws_frames_limited: own.counter("ws_frames_rate_limited_total"),
            ratelimit_cluster_fallbacks: own.counter("ratelimit_cluster_fallbacks_total"),
            cluster_errors: own.counters("cluster_redis_errors_total", &["op"]),
            cluster_messages: own.counters("cluster_messages_total", &["direction", "kind"]),
            cluster_dropped: own.counters("cluster_messages_dropped_total", &["reason"]),
            cluster_skipped: own.counters("cluster_messages_skipped_total", &["reason"]),
            cluster_subscription_stale: own.counter("cluster_subscription_stale_total"),
            cluster_forwards: own.counters("cluster_forwards_total", &["result"]),
            cluster_nodes: own.gauge("cluster_nodes"),
            cluster_registry_queue: own.gauge("cluster_registry_queue"),
            cluster_lag: own.histogram("cluster_message_lag_seconds", &CLUSTER_LAG_BUCKETS),
            cluster_redis_latency: own.histogram("cluster_redis_duration_seconds", &REDIS_BUCKETS),
            log_lines_dropped: own.counter("log_lines_dropped_total"),
            log_drops: std::sync::OnceLock::new(),
            registry: own.into_registry(),
            standard: std.into_registry(),
        };
        // Bounded label sets start at zero, so a dashboard shows 0 rather than "no data".
        for result in ["ok", "error"] {
            m.reloads.with_label_values(&[result]);
        }
        for platform in PLATFORMS {
            m.ws_by_platform.with_label_values(&[platform]);
        }
        m
    }

    /// Counts the lines `drops` reports in `log_lines_dropped_total` (the first call wins).
    pub fn count_log_drops(&self, drops: im_telemetry::LogDrops) {
        let _ = self.log_drops.set(drops);
    }

    /// Brings `log_lines_dropped_total` up to the writer's count (at each scrape).
    pub fn refresh_log_drops(&self) {
        if let Some(drops) = self.log_drops.get() {
            let (now, seen) = (drops.count(), self.log_lines_dropped.get());
            if now > seen {
                self.log_lines_dropped.inc_by(now - seen);
            }
        }
    }

    /// Drops the per-endpoint series (`rpc_client_call_duration_seconds{server_address}`) of
    /// endpoints outside `live`, where their channels are dropped: with discovery the addresses
    /// seen over time are unbounded, the series must not be. Runs on table changes, never per
    /// call (it reads the series back from the histogram itself).
    pub fn forget_endpoints(&self, live: &std::collections::HashSet<std::net::SocketAddr>) {
        use prometheus::core::Collector;
        for family in self.upstream_latency.collect() {
            for metric in family.get_metric() {
                let labels: std::collections::HashMap<&str, &str> = metric
                    .get_label()
                    .iter()
                    .map(|l| (l.get_name(), l.get_value()))
                    .collect();
                let gone = labels
                    .get("server_address")
                    .and_then(|a| a.parse().ok())
                    .is_some_and(|addr| !live.contains(&addr));
                if gone {
                    let _ = self.upstream_latency.remove(&labels);
                }
            }
        }
    }

    /// Starts every upstream's failure and retry counters at zero (on each table load: the
    /// names come from routes.yaml, so the set is bounded by what ops configured).
    pub fn known_upstreams<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            self.retries.with_label_values(&[name]);
            for kind in UPSTREAM_FAILURES {
                self.upstream_failures.with_label_values(&[name, kind]);
            }
        }
    }

    /// Starts cluster mode's error counters at zero, one per Redis operation.
    pub fn known_cluster_ops(&self, ops: &[&str]) {
        for op in ops {
            self.cluster_errors.with_label_values(&[op]);
        }
    }

    /// Every family as it stands (gauges read at scrape time are as last refreshed).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.registry.gather();
        families.extend(self.standard.gather());
        families
    }
}

/// Prometheus text exposition of `families`.
pub fn render(families: &[prometheus::proto::MetricFamily]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 * 1024);
    if let Err(e) = TextEncoder::new().encode(families, &mut out) {
        tracing::error!(error = %e, "metrics did not render");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_map_onto_the_fixed_set_and_process_figures_are_read() {
        assert_eq!(platform_label("iOS"), "ios");
        assert_eq!(platform_label("Windows"), "desktop");
        assert_eq!(platform_label("h5"), "web");
        let labels: std::collections::HashSet<&str> = (0..1000)
            .map(|i| platform_label(&format!("p{i}")))
            .collect();
        assert_eq!(labels.into_iter().collect::<Vec<_>>(), vec!["other"]);
        let m = Metrics::new();
        let text = String::from_utf8(render(&m.gather())).unwrap();
        for family in [
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
        ] {
            assert!(text.contains(family), "{family} missing from {text}");
        }
        assert!(!text.contains("im_gateway_process_"), "{text}");
    }
}
