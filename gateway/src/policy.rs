//! The policy vocabulary routes are written in (how a call is authenticated, rate-limited and
//! balanced, and how logins share a user), shared by [`crate::routes`], [`crate::filters`],
//! [`crate::upstream`], [`crate::push`] and [`crate::cluster`]. A leaf:
//! it imports nothing from the gateway, so those modules never import each other to agree on it.

use serde::Deserialize;

/// The protocol versions the gateway speaks on the socket, oldest first. A version is named in
/// the WebSocket subprotocol (`im.v<N>.proto`, `im.v<N>.json`); what a version changes is which
/// method a route binds a cmd to (routes.yaml `versions`), the frames themselves stay the same.
pub const PROTOCOL_VERSIONS: [u8; 2] = [1, 2];

/// How a route authenticates its callers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    Required,
    None,
    ApiKey,
}

/// A token bucket: `per_second` refill, `burst` capacity, one bucket per `key`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub key: RateLimitKey,
    pub per_second: f64,
    pub burst: u32,
    /// Where the bucket lives: on each node (default), or one for the whole cluster in Redis.
    #[serde(default)]
    pub scope: LimitScope,
}

/// `scope` of a rate limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// Each gateway node counts on its own (N nodes admit up to N times the limit).
    #[default]
    Node,
    /// One bucket per key for the whole cluster, in Redis (cluster mode only). While Redis is
    /// unreachable each node enforces its share: the limit divided by the live nodes it knew.
    Cluster,
}

/// What a rate limit counts by: the client IP, the user, or the user on this one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    Ip,
    User,
    RouteUser,
}

/// How a pool picks an endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    Random,
    ConsistentHash,
    LeastInflight,
}

/// What a new login does to the user's other connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MultiDevicePolicy {
    /// Every device stays connected.
    Allow,
    /// A new connection closes older ones on the same platform (and of the same device).
    #[default]
    OnePerPlatform,
    /// A new connection closes every older one.
    One,
}
