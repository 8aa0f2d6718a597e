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
    /// This process: CPU seconds, resident bytes, open descriptors; refreshed at scrape time.
    pub process_cpu: prometheus::Counter,
    pub process_rss: IntGauge,
    pub process_fds: IntGauge,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The registry and every metric. The names and help texts are static, so a failure here is a
    /// bug found by the first test, never input: the one place the gateway allows `expect`.
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("im_gateway".into()), None).expect("static prefix is valid");
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by route and HTTP status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let standard = Registry::new();
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric")
        };
        let latency = histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP requests and cmd frames in the gateway (http.server.request.duration)",
            &["http_route", "http_response_status_code", "im_transport"],
        );
        let upstream_latency = histogram(
            "rpc_client_call_duration_seconds",
            "Duration of upstream gRPC attempts (rpc.client.call.duration)",
            &["rpc_method", "server_address", "rpc_grpc_status_code"],
        );
        let own_latency = histogram(
            "own_duration_seconds",
            "The gateway's own time per request or frame: the whole less the upstream attempts",
            &["http_route"],
        );
        let ws_by_platform = IntGaugeVec::new(
            Opts::new(
                "ws_connections_by_platform",
                "Open WebSocket sessions by platform (ios, android, web, desktop, other)",
            ),
            &["platform"],
        )
        .expect("valid metric");
        let process_cpu = prometheus::Counter::new(
            "process_cpu_seconds_total",
            "User and system CPU time of this process",
        )
        .expect("valid metric");
        let process_rss = IntGauge::new(
            "process_resident_memory_bytes",
            "Resident memory of this process",
        )
        .expect("valid metric");
        let process_fds =
            IntGauge::new("process_open_fds", "Open file descriptors of this process")
                .expect("valid metric");
        for c in [
            Box::new(latency.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upstream_latency.clone()),
            Box::new(process_cpu.clone()),
            Box::new(process_rss.clone()),
            Box::new(process_fds.clone()),
        ] {
            standard.register(c).expect("unique metric");
        }
        let endpoint_healthy = IntGaugeVec::new(
            Opts::new(
                "upstream_endpoint_healthy",
                "1 when the endpoint takes traffic",
            ),
            &["upstream", "endpoint"],
        )
        .expect("valid metric");
        let discovery_up = IntGaugeVec::new(
            Opts::new(
                "discovery_up",
                "1 while the upstream's discovery source (dns or etcd) answers; 0 while its last known endpoints keep serving",
            ),
            &["upstream", "source"],
        )
        .expect("valid metric");
        let discovery_endpoints = IntGaugeVec::new(
            Opts::new(
                "discovery_endpoints",
                "Endpoints the upstream's discovery source found (the last known set while it fails)",
            ),
            &["upstream", "source"],
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
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let ws_connections = gauge("ws_connections", "Open WebSocket sessions");
        let ws_queued_bytes = gauge("ws_queued_bytes", "Bytes queued for WebSocket clients");
        let ws_queued_bytes_max = gauge(
            "ws_queued_bytes_max",
            "Largest outbound queue of one WebSocket session, in bytes",
        );
        let pushes_delivered =
            counter("pushes_delivered_total", "Push frames queued for a session");
        let pushes_dropped = counter(
            "pushes_dropped_total",
            "Push frames dropped (queue full or session closing)",
        );
        let pushes_offline = counter(
            "pushes_offline_total",
            "Recipients of PushService calls who had no session on any node",
        );
        let last_reload_ok = gauge(
            "route_last_reload_successful",
            "1 when the last route reload applied, 0 when it was rejected (the previous table serves)",
        );
        last_reload_ok.set(1);
        let last_reload_ok_time = gauge(
            "route_last_reload_success_timestamp_seconds",
            "Unix time the serving route table was loaded",
        );
        last_reload_ok_time.set(crate::clock::unix_now() as i64);
        let ws_slow_closes = counter(
            "ws_slow_consumer_closes_total",
            "Sessions closed with 4003 because they did not read",
        );
        let ws_budget_sheds = counter(
            "ws_queue_budget_sheds_total",
            "Sessions closed with 1013 because the gateway-wide queue budget was spent",
        );
        let http_head_timeouts = counter(
            "http_head_timeouts_total",
            "Edge connections closed because a request head was not complete within http.request_head_timeout",
        );
        let http_unfinished_rejections = counter(
            "http_unfinished_rejections_total",
            "Edge connections refused at accept: the IP held http.max_unfinished_per_ip unfinished ones",
        );
        let ws_write_stalls = counter(
            "ws_write_stalls_total",
            "Sessions closed with 4003 because their socket took no bytes for write_stall_timeout",
        );
        let ws_queue_budget_used = gauge(
            "ws_queue_budget_used_bytes",
            "Bytes held against push.total_queue_bytes (queued or being written)",
        );
        let upstream_invalid_replies = IntCounterVec::new(
            Opts::new(
                "upstream_invalid_replies_total",
                "Backend replies that did not match the route's output type (502 / INTERNAL)",
            ),
            &["route"],
        )
        .expect("valid metric");
        let ws_closes = IntCounterVec::new(
            Opts::new("ws_closes_total", "Closed WebSocket sessions by close code"),
            &["code", "reason"],
        )
        .expect("valid metric");
        let ws_handshake_rejections = IntCounterVec::new(
            Opts::new(
                "ws_handshake_rejections_total",
                "Refused WebSocket handshakes by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let ws_frames_limited = counter(
            "ws_frames_rate_limited_total",
            "Frames refused by the per-connection frame rate limit",
        );
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let cluster_errors = counter_vec(
            "cluster_redis_errors_total",
            "Cluster mode: failed Redis operations by operation",
            &["op"],
        );
        let cluster_messages = counter_vec(
            "cluster_messages_total",
            "Cluster mode: node-to-node messages by direction and kind",
            &["direction", "kind"],
        );
        let cluster_dropped = counter_vec(
            "cluster_messages_dropped_total",
            "Cluster mode: node-to-node messages not sent or not applied, by reason",
            &["reason"],
        );
        let cluster_skipped = counter_vec(
            "cluster_messages_skipped_total",
            "Cluster mode: inbound node-to-node messages skipped, by reason",
            &["reason"],
        );
        let cluster_forwards = counter_vec(
            "cluster_forwards_total",
            "Cluster mode: pushes that reached this node after their user left it, by outcome (forwarded to the node they reconnected to, gave_up, busy)",
            &["result"],
        );
        let ratelimit_cluster_fallbacks = counter(
            "ratelimit_cluster_fallbacks_total",
            "Cluster-wide rate-limit decisions taken by this node's share because Redis did not answer",
        );
        let cluster_subscription_stale = counter(
            "cluster_subscription_stale_total",
            "Cluster mode: times the Redis subscription stopped delivering probes and was rebuilt",
        );
        let cluster_registry_queue = gauge(
            "cluster_registry_queue",
            "Cluster mode: registry operations (a session's register or unregister) queued and not yet done",
        );
        let cluster_nodes = gauge(
            "cluster_nodes",
            "Cluster mode: live gateway nodes at the last heartbeat, this one included",
        );
        let cluster_lag = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "cluster_message_lag_seconds",
                "Cluster mode: from a node sending a message to this node reading it",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("valid metric");
        let cluster_redis_latency = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "cluster_redis_duration_seconds",
                "Cluster mode: time of each Redis command or pipeline, answered or not",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(pushes_offline.clone()),
            Box::new(last_reload_ok.clone()),
            Box::new(last_reload_ok_time.clone()),
            Box::new(cluster_redis_latency.clone()),
            Box::new(cluster_errors.clone()),
            Box::new(ratelimit_cluster_fallbacks.clone()),
            Box::new(cluster_messages.clone()),
            Box::new(cluster_dropped.clone()),
            Box::new(cluster_skipped.clone()),
            Box::new(cluster_subscription_stale.clone()),
            Box::new(cluster_forwards.clone()),
            Box::new(cluster_nodes.clone()),
            Box::new(cluster_registry_queue.clone()),
            Box::new(cluster_lag.clone()),
            Box::new(own_latency.clone()),
            Box::new(ws_by_platform.clone()),
            Box::new(endpoint_healthy.clone()),
            Box::new(discovery_up.clone()),
            Box::new(discovery_endpoints.clone()),
            Box::new(upstream_failures.clone()),
            Box::new(retries.clone()),
            Box::new(reloads.clone()),
            Box::new(auth_failures.clone()),
            Box::new(ratelimit_rejections.clone()),
            Box::new(ratelimit_keys.clone()),
            Box::new(revoked_sessions.clone()),
            Box::new(ws_connections.clone()),
            Box::new(ws_queued_bytes.clone()),
            Box::new(ws_queued_bytes_max.clone()),
            Box::new(pushes_delivered.clone()),
            Box::new(pushes_dropped.clone()),
            Box::new(ws_slow_closes.clone()),
            Box::new(ws_budget_sheds.clone()),
            Box::new(upstream_invalid_replies.clone()),
            Box::new(http_head_timeouts.clone()),
            Box::new(http_unfinished_rejections.clone()),
            Box::new(ws_write_stalls.clone()),
            Box::new(ws_queue_budget_used.clone()),
            Box::new(ws_closes.clone()),
            Box::new(ws_handshake_rejections.clone()),
            Box::new(ws_frames_limited.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Bounded label sets start at zero, so a dashboard shows 0 rather than "no data".
        for result in ["ok", "error"] {
            reloads.with_label_values(&[result]);
        }
        for platform in PLATFORMS {
            ws_by_platform.with_label_values(&[platform]);
        }
        Self {
            registry,
            requests,
            latency,
            own_latency,
            upstream_latency,
            ws_by_platform,
            process_cpu,
            process_rss,
            process_fds,
            standard,
            endpoint_healthy,
            discovery_up,
            discovery_endpoints,
            upstream_failures,
            retries,
            reloads,
            auth_failures,
            ratelimit_rejections,
            ratelimit_keys,
            revoked_sessions,
            ws_connections,
            ws_queued_bytes,
            ws_queued_bytes_max,
            pushes_delivered,
            pushes_dropped,
            ws_slow_closes,
            ws_budget_sheds,
            upstream_invalid_replies,
            http_head_timeouts,
            http_unfinished_rejections,
            ws_write_stalls,
            ws_queue_budget_used,
            ws_closes,
            ws_handshake_rejections,
            ws_frames_limited,
            ratelimit_cluster_fallbacks,
            cluster_errors,
            cluster_messages,
            cluster_dropped,
            cluster_skipped,
            cluster_subscription_stale,
            cluster_forwards,
            cluster_nodes,
            cluster_registry_queue,
            cluster_lag,
            cluster_redis_latency,
            pushes_offline,
            last_reload_ok,
            last_reload_ok_time,
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

/// Reads this process's CPU time, resident memory and open descriptors from `/proc/self`
/// (nothing changes where it cannot be read).
pub fn refresh_process(m: &Metrics) {
    // `/proc/self/stat`: after the `(comm)` field, utime and stime are fields 14 and 15.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: Vec<f64> = after
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|t| t.parse().ok())
            .collect();
        if ticks.len() == 2 {
            // USER_HZ is 100 on Linux.
            let cpu = (ticks[0] + ticks[1]) / 100.0;
            let delta = cpu - m.process_cpu.get();
            if delta > 0.0 {
                m.process_cpu.inc_by(delta);
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok());
        if let Some(kb) = rss_kb {
            m.process_rss.set(kb * 1024);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        m.process_fds.set(fds.count() as i64);
    }
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
        refresh_process(&m);
        assert!(m.process_rss.get() > 0 && m.process_fds.get() > 0);
        let text = String::from_utf8(render(&m.gather())).unwrap();
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
