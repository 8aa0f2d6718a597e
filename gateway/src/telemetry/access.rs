//! The access log: one line per HTTP request and per cmd frame, like nginx's, on by default
//! (`telemetry.access_log: false` turns it off). Target `im_gateway::access`, so `RUST_LOG` can
//! route or silence it too. Never a token or a body: who (user id, client IP), what (route,
//! status, upstream endpoint), how long, and the ids to find the trace and the other lines.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::metrics::Metrics;

/// One finished request or frame.
pub struct AccessLine<'a> {
    /// `http`, `grpc` (pass-through) or `websocket`.
    pub transport: &'static str,
    /// The route's name; `-` when none matched.
    pub route: &'a str,
    /// HTTP status (frames: the HTTP status their gRPC code maps to).
    pub status: u16,
    pub latency: Duration,
    /// The backend endpoint of the last attempt, if one was made.
    pub upstream: Option<SocketAddr>,
    pub user_id: Option<&'a str>,
    pub client_ip: IpAddr,
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
}

/// How both transports report a finished call: its duration in
/// `http_server_request_duration_seconds`, the gateway's own share of it (the whole less
/// `upstream_time`, for unary calls) in `own_duration_seconds`, and the access line when
/// `access_log` is on.
pub fn record(
    metrics: &Metrics,
    access_log: bool,
    line: &AccessLine<'_>,
    upstream_time: Option<Duration>,
) {
    metrics
        .latency
        .with_label_values(&[line.route, &line.status.to_string(), line.transport])
        .observe(line.latency.as_secs_f64());
    if let Some(upstream) = upstream_time {
        metrics
            .own_latency
            .with_label_values(&[line.route])
            .observe(line.latency.saturating_sub(upstream).as_secs_f64());
    }
    if access_log {
        log(line);
    }
}

pub fn log(line: &AccessLine<'_>) {
    tracing::info!(
        target: "im_gateway::access",
        transport = line.transport,
        route = line.route,
        status = line.status,
        latency_ms = line.latency.as_secs_f64() * 1000.0,
        upstream = %Upstream(line.upstream),
        user_id = line.user_id.unwrap_or("-"),
        client_ip = %line.client_ip,
        request_id = line.request_id,
        trace_id = line.trace_id.unwrap_or("-"),
        "access"
    );
}

/// The upstream endpoint as the line shows it (`-` for none), written without an allocation.
struct Upstream(Option<SocketAddr>);

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}
