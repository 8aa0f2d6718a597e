//! The access log: one line per HTTP request and per cmd frame, like nginx's, on by default
//! (`telemetry.access_log: false` turns it off). Target `im_gateway::access`, so `RUST_LOG` can
//! route or silence it too. Never a token or a body: who (user id, client IP), what (route,
//! status, upstream endpoint), how long, and the ids to find the trace and the other lines.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
        .with_label_values(&[
            line.route,
            status_label(line.status, &mut [0; 3]),
            line.transport,
        ])
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
        client_ip = %ClientIp(line.client_ip),
        request_id = line.request_id,
        trace_id = line.trace_id.unwrap_or("-"),
        "access"
    );
}

/// A status as a label, written into `buf` (no allocation per request); `other` for a status
/// outside 100..=999, which HTTP does not have.
fn status_label(status: u16, buf: &mut [u8; 3]) -> &str {
    if !(100..=999).contains(&status) {
        return "other";
    }
    *buf = [
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ];
    std::str::from_utf8(buf).unwrap_or("other")
}

/// The upstream endpoint as the line shows it (`-` for none), written without an allocation.
struct Upstream(Option<SocketAddr>);

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(SocketAddr::V4(addr)) => write_v4(*addr.ip(), Some(addr.port()), f),
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The client's address, IPv4 written digit by digit.
struct ClientIp(IpAddr);

impl std::fmt::Display for ClientIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => write_v4(ip, None, f),
            ip => ip.fmt(f),
        }
    }
}

/// `a.b.c.d[:port]` digit by digit: the standard `Display` goes through the formatting machinery
/// once per octet, a sixth of the access line's cost.
fn write_v4(ip: Ipv4Addr, port: Option<u16>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            f.write_char('.')?;
        }
        im_telemetry::write_decimal(u64::from(octet), f)?;
    }
    if let Some(port) = port {
        f.write_char(':')?;
        im_telemetry::write_decimal(u64::from(port), f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_the_standard_display_writes_them() {
        for addr in [
            "0.0.0.0:0",
            "127.0.0.1:50051",
            "255.255.255.255:65535",
            "[::1]:443",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(Upstream(Some(addr)).to_string(), addr.to_string());
            assert_eq!(ClientIp(addr.ip()).to_string(), addr.ip().to_string());
        }
        assert_eq!(Upstream(None).to_string(), "-");
    }

    #[test]
    fn status_labels_are_the_numbers() {
        for status in [100, 200, 404, 502, 999] {
            assert_eq!(status_label(status, &mut [0; 3]), status.to_string());
        }
        assert_eq!(status_label(42, &mut [0; 3]), "other");
    }
}
