//! `push` in gateway.yaml: limits and timers of WebSocket sessions and the PushService token.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::registry::MultiDevicePolicy;
use crate::units::{ByteSize, HumanDuration};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// File holding the token backends present to PushService (`authorization: Bearer …`).
    /// Without it every PushService call is refused.
    pub internal_token_file: Option<PathBuf>,
    /// TLS on the internal PushService listener; with it the listener may bind beyond loopback
    /// (nodes on other hosts, DESIGN §8).
    pub internal_tls: Option<InternalTls>,
    pub multi_device: MultiDevicePolicy,
    pub handshake_timeout: HumanDuration,
    pub ping_interval: HumanDuration,
    /// A connection that sends nothing (pongs included) for this long is closed.
    pub idle_timeout: HumanDuration,
    /// Largest frame/message accepted (close 1009 above it).
    pub max_message: ByteSize,
    /// Requests in flight per connection; more get RESOURCE_EXHAUSTED.
    pub max_inflight: usize,
    /// Outbound queue bound per connection; a client that does not read is closed with 4003.
    pub queue_frames: usize,
    pub queue_bytes: ByteSize,
    /// Bytes queued for all sessions together; a session whose frame would pass it is closed
    /// with 1013 (try again later) instead of growing the gateway's memory.
    pub total_queue_bytes: ByteSize,
    /// A session whose socket takes no bytes for this long while frames wait is closed with
    /// 4003 (checked at each ping, so it acts within one `ping_interval` after).
    pub write_stall_timeout: HumanDuration,
    /// Connections per gateway; handshakes beyond it get 503.
    pub max_connections: usize,
    /// Connections per client IP (as resolved through `client_ip`); handshakes beyond it get 429.
    pub max_connections_per_ip: usize,
    /// Handshakes per client IP (429 beyond it, before any token check).
    pub handshake_rate: Rate,
    /// Frames a connection may send; beyond it requests get RESOURCE_EXHAUSTED, and a client that
    /// keeps going for `frame_flood_strikes` more frames is closed with 1008.
    pub frame_rate: Rate,
    pub frame_flood_strikes: u32,
    /// On SIGTERM, sessions are closed with 1001 at random points spread over this window, so
    /// clients do not all reconnect at once. Must fit in `shutdown.grace_period`.
    pub drain_window: HumanDuration,
    /// Allowed `Origin`s (empty: any origin, for native clients and the same-origin demo).
    pub allowed_origins: Vec<String>,
}

/// A token bucket: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// `push.internal_tls`: the listener's certificate and key (PEM); with `client_ca`, callers
/// must present a certificate that CA signed (mTLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InternalTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl PushConfig {
    /// The first setting that cannot work, and the fix; `grace_period` is
    /// `shutdown.grace_period`, which the drain must fit in.
    pub fn validate(&self, grace_period: Duration) -> Result<(), (&'static str, &'static str)> {
        if self.max_inflight == 0 || self.queue_frames == 0 || self.queue_bytes.0 < 1024 {
            return Err((
                "push",
                "max_inflight and queue_frames must be at least 1, queue_bytes at least 1KiB",
            ));
        }
        for (field, rate) in [
            ("push.handshake_rate", &self.handshake_rate),
            ("push.frame_rate", &self.frame_rate),
        ] {
            if !rate.is_valid() {
                return Err((field, "per_second must be above 0 and burst at least 1"));
            }
        }
        if self.total_queue_bytes.0 < self.queue_bytes.0 {
            return Err((
                "push.total_queue_bytes",
                "must be at least push.queue_bytes (one session's queue); the default is 512MiB",
            ));
        }
        if self.write_stall_timeout.0.is_zero() {
            return Err(("push.write_stall_timeout", "must be above 0 (default 30s)"));
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err((
                "push.max_connections",
                "max_connections and max_connections_per_ip must be at least 1",
            ));
        }
        if self.drain_window.0 > grace_period {
            return Err((
                "push.drain_window",
                "must not exceed shutdown.grace_period (sessions still open then are cut); \
                 shorten it or lengthen the grace period",
            ));
        }
        Ok(())
    }
}

impl Rate {
    pub fn is_valid(&self) -> bool {
        self.per_second.is_finite() && self.per_second > 0.0 && self.burst >= 1
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            internal_token_file: None,
            internal_tls: None,
            multi_device: MultiDevicePolicy::default(),
            handshake_timeout: HumanDuration(Duration::from_secs(10)),
            ping_interval: HumanDuration(Duration::from_secs(25)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            max_message: ByteSize(1 << 20),
            max_inflight: 64,
            queue_frames: 1024,
            queue_bytes: ByteSize(1 << 20),
            total_queue_bytes: ByteSize(512 << 20),
            write_stall_timeout: HumanDuration(Duration::from_secs(30)),
            max_connections: 100_000,
            max_connections_per_ip: 1_000,
            handshake_rate: Rate {
                per_second: 20.0,
                burst: 100,
            },
            frame_rate: Rate {
                per_second: 50.0,
                burst: 200,
            },
            frame_flood_strikes: 50,
            drain_window: HumanDuration(Duration::from_secs(4)),
            allowed_origins: Vec::new(),
        }
    }
}
