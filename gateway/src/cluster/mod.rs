//! Cluster mode (DESIGN §9): many gateway nodes as one, through Redis.
//! - [`config`]: `cluster:` in gateway.yaml, validated;
//! - [`keys`]: what Redis holds and its names (the registry, node liveness, revocations);
//! - [`wire`]: the versioned node-to-node messages;
//! - [`link`]: the Redis connections, every command bounded by a timeout;
//! - [`node`]: the background task: heartbeat, the subscription and its probe;
//! - `registry` (who is connected on which node, the multi-device rule in `register.lua`),
//!   `liveness` (which node runs are alive, draining or dead) and `revocations` (the
//!   cluster-wide denylist): the parts of [`Cluster`] by job. The cluster-wide token bucket is
//!   `filters::cluster_limit`'s, run through [`Cluster::run_script`].
//!
//! This module knows Redis, not sessions: the push plugin calls it to register connections and
//! route pushes, and applies what arrives from other nodes (`push::remote`).

pub mod config;
pub mod keys;
pub mod link;
mod liveness;
pub mod node;
mod probe;
pub mod registrations;
mod registry;
mod revocations;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use im_proto::im::gateway::v1::node_message;
use redis::Script;
use tokio::sync::Semaphore;

use crate::clock::unix_ms;
use crate::metrics::Metrics;
pub use config::ClusterConfig;
use keys::{Keys, NodeRun};
use link::{Link, LinkError};
pub use registry::{policy_name, HeldConnection};

/// What one node's view of the cluster holds; shared by sessions, PushService and the
/// background task.
pub struct Cluster {
    pub config: ClusterConfig,
    pub run: NodeRun,
    pub keys: Keys,
    link: Link,
    /// Other live node runs and the unix ms their liveness lapses at, from the last heartbeat.
    live: RwLock<HashMap<NodeRun, u64>>,
    /// Unregistrations that failed, retried at the next heartbeat that reaches Redis (bounded:
    /// past the cap the entries expire with the user key instead).
    // A std Mutex: held to push or to take the list, never across `.await`.
    retry_unregister: std::sync::Mutex<Vec<(String, u64)>>,
    /// Connections whose registration script is in flight (a resync leaves them out).
    // A std Mutex: held to insert, remove or copy, never across `.await`.
    registering: std::sync::Mutex<HashSet<u64>>,
    /// Runs this node saw die (their liveness lapsed): their entries may be removed. A run merely missing from the view (Redis restarted, a
    /// heartbeat not read yet) is never grounds for removing anything.
    dead: RwLock<HashSet<NodeRun>>,
    /// Other runs draining (their leave announced) at the last heartbeat.
    leaving: RwLock<HashSet<NodeRun>>,
    health: Health,
    /// Sessions' register and unregister operations, in order per connection.
    pub registrations: registrations::Registrations,
    sends: Semaphore,
    /// Pushes being forwarded to users who left this node (`push::remote`).
    forwards: Arc<Semaphore>,
    register: Script,
    lookup: Script,
    pub metrics: Arc<Metrics>,
}

/// What `/readyz` and the metrics say about Redis.
#[derive(Default)]
struct Health {
    redis_up: AtomicBool,
    subscribed: AtomicBool,
    /// The nonce of the newest probe that came back through the subscription.
    seen_probe: AtomicU64,
    /// Unix ms the reader last took a message of this node's channel (a probe or not): a
    /// subscription working through a backlog is alive even while its probe waits in line.
    last_delivery_ms: AtomicU64,
    /// Live nodes (this one included) at the last heartbeat that reached Redis.
    last_known_nodes: std::sync::atomic::AtomicUsize,
    /// A registration failed: the next heartbeat that reaches Redis re-registers every session.
    resync_wanted: AtomicBool,
    /// Unix ms a heartbeat last read the other nodes' liveness; 0 before the first.
    view_ms: AtomicU64,
    /// The node announced its leave (SIGTERM): no more heartbeats.
    leaving: AtomicBool,
    /// Sessions may open: the subscription delivered once, or the start-up wait passed.
    sessions_open: AtomicBool,
}

/// How long a starting node holds WebSocket handshakes back for its subscription.
pub const STARTUP_WAIT_MS: u64 = 3000;

/// Why a cluster operation did not happen (the caller counts it and carries on locally).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("too many cross-node sends in flight")]
    Busy,
    /// Redis is known to be away (a heartbeat or a request found it so): request-path
    /// operations go straight to their fallback instead of waiting `command_timeout` each.
    #[error("Redis is unreachable; using the fallback until a heartbeat reaches it")]
    Down,
}

/// The Redis operations whose failures are counted, by the names the metric shows.
const OPS: [&str; 12] = [
    "heartbeat",
    "subscribe",
    "prepare",
    "shards",
    "register",
    "reregister",
    "unregister",
    "locate",
    "publish",
    "revoke",
    "revoked",
    "rate_limit",
];

impl Cluster {
    pub fn new(config: ClusterConfig, metrics: Arc<Metrics>) -> Result<Self, LinkError> {
        let run = NodeRun {
            node: config.resolved_node_id(),
            epoch: unix_ms(),
        };
        let link = Link::new(&config)?.with_latency(metrics.cluster_redis_latency.clone());
        metrics.known_cluster_ops(&OPS);
        let config_cluster = config.redis_cluster;
        Ok(Self {
            keys: Keys::new(&config.prefix),
            sends: Semaphore::new(config.max_inflight_sends),
            forwards: Arc::new(Semaphore::new(config.max_inflight_sends)),
            config,
            run,
            link,
            live: RwLock::default(),
            retry_unregister: std::sync::Mutex::default(),
            registering: std::sync::Mutex::default(),
            dead: RwLock::default(),
            leaving: RwLock::default(),
            health: Health::default(),
            registrations: registrations::Registrations::new(
                metrics.cluster_registry_queue.clone(),
            ),
            register: Script::new(include_str!("register.lua")),
            lookup: Script::new(&registry::lookup_lua(config_cluster)),
            metrics,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.run.node
    }

    /// Ready for cross-node work: Redis answers and the subscription delivers.
    pub fn healthy(&self) -> bool {
        self.health.redis_up.load(Ordering::Relaxed)
            && self.health.subscribed.load(Ordering::Relaxed)
    }

    /// `/readyz`'s view: what is wrong, if anything.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node_id": self.run.node,
            "redis": if self.health.redis_up.load(Ordering::Relaxed) { "up" } else { "down" },
            "subscription": if self.health.subscribed.load(Ordering::Relaxed) { "live" } else { "stale" },
            "live_nodes": self.live_nodes().len() + 1,
        })
    }

    /// For operations on a request's path: `Down` at once while Redis is known to be away
    /// (counted under `op`), so a request never waits on a link the node already knows is
    /// broken. The heartbeat, which keeps trying, opens the way again.
    fn reachable(&self, op: &str) -> Result<(), ClusterError> {
        if self.health.redis_up.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.metrics.cluster_errors.with_label_values(&[op]).inc();
        Err(ClusterError::Down)
    }

    /// [`Self::fail`] for request-path operations: a timeout or a broken connection marks Redis
    /// away at once (not at the next heartbeat), so the requests behind this one skip it.
    fn fail_request(&self, op: &str, e: LinkError) -> ClusterError {
        let unreachable = match &e {
            LinkError::Timeout(_) | LinkError::NotConnected => true,
            LinkError::Redis(r) => {
                r.is_timeout()
                    || r.is_io_error()
                    || r.is_connection_dropped()
                    || r.is_connection_refusal()
            }
            LinkError::Url(_) => false,
        };
        if unreachable && self.health.redis_up.swap(false, Ordering::Relaxed) {
            tracing::warn!(op, error = %e, "cluster: Redis unreachable; requests use their fallbacks until a heartbeat reaches it");
        }
        self.fail(op, e)
    }

    /// Counts a failed Redis operation by its name (one of [`OPS`]).
    fn fail(&self, op: &str, e: LinkError) -> ClusterError {
        self.metrics.cluster_errors.with_label_values(&[op]).inc();
        tracing::debug!(op, error = %e, "cluster operation failed");
        ClusterError::Link(e)
    }

    /// Nodes alive at the last heartbeat that reached Redis, this one included: how many share
    /// a cluster-wide limit while Redis is away (their liveness cannot be renewed meanwhile).
    pub fn node_count(&self) -> usize {
        self.health.last_known_nodes.load(Ordering::Relaxed).max(1)
    }

    /// Runs a script of another module (the cluster-wide token bucket) on the request path:
    /// `Down` at once while Redis is known to be away, a failure counted under `op`.
    pub async fn run_script<T: redis::FromRedisValue + Send>(
        &self,
        op: &'static str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, ClusterError> {
        self.reachable(op)?;
        self.link
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
            .map_err(|e| self.fail_request(op, e))
    }

    /// Loads the scripts and reads a Redis Cluster's shards: after connecting, and after Redis
    /// came back (it may have forgotten the scripts). What fails here is retried on demand.
    pub async fn prepare(&self) {
        let script = self.lookup.clone();
        let loaded = self
            .link
            .run(|mut c| async move { script.load_async(&mut c).await })
            .await;
        if let Err(e) = loaded.and(self.link.refresh_shards().await) {
            self.fail("prepare", e);
        }
    }

    /// Re-reads a Redis Cluster's shards (every heartbeat: resharding moves slots).
    pub async fn refresh_shards(&self) {
        if let Err(e) = self.link.refresh_shards().await {
            self.fail("shards", e);
        }
    }

    /// At start only: waits until this node's subscription has delivered its first probe, so no
    /// session registers here while pushes sent to this node would reach nobody; gives up
    /// [`STARTUP_WAIT_MS`] after the node started (Redis away: sessions work locally).
    pub async fn until_ready_for_sessions(&self) {
        if self.health.sessions_open.load(Ordering::Relaxed) {
            return;
        }
        let deadline = self.run.epoch + STARTUP_WAIT_MS;
        while !self.health.subscribed.load(Ordering::Relaxed) && unix_ms() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.health.sessions_open.store(true, Ordering::Relaxed);
    }

    /// A place among the forwards in flight, if one is free.
    pub fn forward_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.forwards.clone().try_acquire_owned().ok()
    }

    /// Sends one message to `node`'s channel; fails fast (counted) when Redis is away or too many
    /// sends are in flight, never queues without bound. How many subscribers Redis delivered it to.
    pub async fn send(
        &self,
        node: &str,
        traceparent: Option<&str>,
        body: node_message::Body,
    ) -> Result<u64, ClusterError> {
        let kind = body_kind(&body);
        let channel = self.keys.node_channel(node);
        self.publish(
            channel,
            wire::encode(&self.run.node, traceparent, body),
            kind,
        )
        .await
    }

    async fn publish(
        &self,
        channel: String,
        bytes: Vec<u8>,
        kind: &str,
    ) -> Result<u64, ClusterError> {
        let Ok(_permit) = self.sends.try_acquire() else {
            self.metrics
                .cluster_dropped
                .with_label_values(&["busy"])
                .inc();
            return Err(ClusterError::Busy);
        };
        // Sharded pub/sub on a Redis Cluster: the message goes to the channel's shard only.
        let publish = if self.link.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let sent = self
            .link
            .run(|mut c| async move {
                redis::cmd(publish)
                    .arg(channel)
                    .arg(bytes)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await;
        match sent {
            Ok(receivers) => {
                self.metrics
                    .cluster_messages
                    .with_label_values(&["out", kind])
                    .inc();
                Ok(u64::try_from(receivers).unwrap_or(0))
            }
            Err(e) => {
                self.metrics
                    .cluster_dropped
                    .with_label_values(&["redis"])
                    .inc();
                Err(self.fail("publish", e))
            }
        }
    }
}

/// The metric label of a message body.
pub fn body_kind(body: &node_message::Body) -> &'static str {
    match body {
        node_message::Body::Deliver(_) => "deliver",
        node_message::Body::Kick(_) => "kick",
        node_message::Body::Revoke(_) => "revoke",
        node_message::Body::Probe(_) => "probe",
    }
}
