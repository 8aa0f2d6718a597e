//! Prometheus metrics of one gateway, in its own registry (two gateways in one process never mix).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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
    /// Cluster mode: seconds from a node sending a message to this node reading it.
    pub cluster_lag: prometheus::Histogram,
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
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(cluster_errors.clone()),
            Box::new(ratelimit_cluster_fallbacks.clone()),
            Box::new(cluster_messages.clone()),
            Box::new(cluster_dropped.clone()),
            Box::new(cluster_skipped.clone()),
            Box::new(cluster_subscription_stale.clone()),
            Box::new(cluster_forwards.clone()),
            Box::new(cluster_nodes.clone()),
            Box::new(cluster_lag.clone()),
            Box::new(latency.clone()),
            Box::new(endpoint_healthy.clone()),
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
            cluster_lag,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics did not render");
        }
        out
    }
}
