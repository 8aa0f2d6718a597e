//! `push` in gateway.yaml: limits and timers of WebSocket sessions and the PushService token.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::registry::MultiDevicePolicy;
use crate::config::units::{ByteSize, HumanDuration};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// File holding the token backends present to PushService (`authorization: Bearer …`).
    /// Without it every PushService call is refused.
    pub internal_token_file: Option<PathBuf>,
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
    /// Connections per gateway; handshakes beyond it get 503.
    pub max_connections: usize,
    /// Allowed `Origin`s (empty: any origin, for native clients and the same-origin demo).
    pub allowed_origins: Vec<String>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            internal_token_file: None,
            multi_device: MultiDevicePolicy::default(),
            handshake_timeout: HumanDuration(Duration::from_secs(10)),
            ping_interval: HumanDuration(Duration::from_secs(25)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            max_message: ByteSize(1 << 20),
            max_inflight: 64,
            queue_frames: 1024,
            queue_bytes: ByteSize(1 << 20),
            max_connections: 100_000,
            allowed_origins: Vec::new(),
        }
    }
}
