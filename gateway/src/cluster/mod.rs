//! Cluster mode (DESIGN §9): many gateway nodes as one, through Redis.
//! - [`config`]: `cluster:` in gateway.yaml, validated;
//! - [`keys`]: what Redis holds and its names (the registry, node liveness, revocations);
//! - [`wire`]: the versioned node-to-node messages;
//! - [`link`]: the Redis connections, every command bounded by a timeout;
//! - [`node`]: the background task: heartbeat, the subscription and its probe.
//!
//! This module knows Redis, not sessions: the push plugin calls it to register connections and
//! route pushes, and applies what arrives from other nodes (`push::remote`).

pub mod config;
pub mod keys;
pub mod link;
pub mod node;
pub mod registrations;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use im_proto::im::gateway::v1::node_message;
use redis::{RedisError, Script, Value};
use tokio::sync::Semaphore;

use crate::clock::unix_ms;
use crate::metrics::Metrics;
pub use config::ClusterConfig;
use keys::{Entry, Keys, NodeRun, USER_KEY_TTL_MS};
use link::{Link, LinkError};

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
    bucket: Script,
    lookup: Script,
    pub metrics: Arc<Metrics>,
}

/// What `/readyz` and the metrics say about Redis.
#[derive(Default)]
struct Health {
    redis_up: AtomicBool,
    subscribed: AtomicBool,
    /// Unix ms the last probe came back through the subscription.
    last_probe_ms: AtomicU64,
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

/// The multi-device rule, applied in Redis to the user's connections on every node: the fields
/// it removes are returned, so their nodes can be told to close them. Atomic per user, so of two
/// logins racing on two nodes the later in Redis's order wins.
const REGISTER_LUA: &str = r"
local displaced = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  local tab = string.find(value, '\t', 1, true)
  if tab then
    local device, platform = string.sub(value, 1, tab - 1), string.sub(value, tab + 1)
    local out = ARGV[4] == 'one' or device == ARGV[2]
      or (ARGV[4] == 'one_per_platform' and platform == ARGV[3])
    if out and field ~= ARGV[1] then
      displaced[#displaced + 1] = field
      redis.call('HDEL', KEYS[1], field)
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '\t' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return displaced
";

/// A token bucket in Redis, taken atomically: concurrent nodes never admit more than it holds.
/// Redis's own clock, so the nodes' clocks do not matter. Returns `{allowed, tokens left * 1000}`.
const BUCKET_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if not tokens then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return {allowed, math.floor(tokens * 1000)}
";

/// The registry hashes of many users in one call: one round trip per shard, and one command in
/// Redis's own counts. The keys come as ARGV, the first also as KEYS[1]: on a Redis Cluster declared
/// keys must share one slot, while keys read from ARGV may be in any slot of the shard that runs
/// the script, which the script declares (Redis 7; a key of another shard is an error, not a
/// wrong answer); KEYS[1] lets the shard answer MOVED when the slots moved.
fn lookup_lua(redis_cluster: bool) -> String {
    let body = "local out = {}\n\
        for i, key in ipairs(ARGV) do out[i] = redis.call('HGETALL', key) end\n\
        return out\n";
    if redis_cluster {
        format!("#!lua flags=allow-cross-slot-keys,no-writes\n{body}")
    } else {
        body.to_owned()
    }
}

/// Users looked up by one script call (a group push to more goes out as several calls, still in
/// one round trip per shard).
const LOOKUP_CHUNK: usize = 512;

/// How long a starting node holds WebSocket handshakes back for its subscription.
pub const STARTUP_WAIT_MS: u64 = 3000;

/// Failed unregistrations kept for a retry.
const MAX_RETRIED_UNREGISTERS: usize = 100_000;

/// Dead runs remembered for cleaning up their registry entries (forgotten wholesale past it).
const MAX_DEAD_RUNS: usize = 4096;

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

/// Where the policy is applied in Redis, by the names the Lua script knows.
pub fn policy_name(policy: crate::policy::MultiDevicePolicy) -> &'static str {
    use crate::policy::MultiDevicePolicy::*;
    match policy {
        Allow => "allow",
        OnePerPlatform => "one_per_platform",
        One => "one",
    }
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
            register: Script::new(REGISTER_LUA),
            bucket: Script::new(BUCKET_LUA),
            lookup: Script::new(&lookup_lua(config_cluster)),
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

    /// Takes one token from the cluster-wide bucket `bucket` (`per_second` refill, `burst`
    /// capacity): whether it was there, and the tokens left.
    pub async fn take_token(
        &self,
        bucket: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<(bool, f64), ClusterError> {
        self.reachable("rate_limit")?;
        let mut inv = self
            .bucket
            .key(format!("{}rl:{{{bucket}}}", self.config.prefix));
        inv.arg(per_second / 1000.0).arg(burst);
        let (allowed, milli_tokens): (i64, i64) = self
            .link
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await
            .map_err(|e| self.fail_request("rate_limit", e))?;
        Ok((allowed == 1, milli_tokens as f64 / 1000.0))
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

    /// Whether `run` announced its leave (as of the last heartbeat): its sessions are closing, so
    /// a push for its users is followed up by the sender (`push::remote`).
    pub fn is_leaving(&self, run: &NodeRun) -> bool {
        self.leaving
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(run)
    }

    fn set_leaving(&self, runs: HashSet<NodeRun>) {
        *self.leaving.write().unwrap_or_else(PoisonError::into_inner) = runs;
    }

    /// A place among the forwards in flight, if one is free.
    pub fn forward_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.forwards.clone().try_acquire_owned().ok()
    }

    /// Other nodes alive now (liveness lapses on its own between heartbeats).
    pub fn live_nodes(&self) -> Vec<NodeRun> {
        let now = unix_ms();
        let live = self.live.read().unwrap_or_else(PoisonError::into_inner);
        live.iter()
            .filter(|(_, until)| **until > now)
            .map(|(run, _)| run.clone())
            .collect()
    }

    fn is_live(&self, run: &NodeRun, now: u64) -> bool {
        if *run == self.run {
            return true;
        }
        // Before the first heartbeat this node knows no other run: it trusts the registry rather
        // than report everyone elsewhere offline (a node just restarted in a rolling restart).
        let Some(view_ms) = self.view_ms() else {
            return true;
        };
        match self
            .live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(run)
        {
            Some(until) => *until > now,
            // A run that started after this node last read the others (within a TTL of clock
            // slack) is new, not dead: its users just connected; the next heartbeat knows it.
            None => {
                run.epoch + self.config.node_ttl.0.as_millis() as u64 > view_ms
                    && !self
                        .dead
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains(run)
            }
        }
    }

    /// When a heartbeat last read the other nodes' liveness (unix ms); `None` before the first.
    fn view_ms(&self) -> Option<u64> {
        Some(self.health.view_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    /// Registers a connection of this node and applies the multi-device policy cluster-wide:
    /// the live connections it displaced on other nodes.
    pub async fn register(
        &self,
        user: &str,
        conn_id: u64,
        device_id: &str,
        platform: &str,
        policy: crate::policy::MultiDevicePolicy,
    ) -> Result<Vec<Entry>, ClusterError> {
        let mut inv = self.register.key(self.keys.user(user));
        inv.arg(Entry::field(&self.run, conn_id))
            .arg(keys::clean(device_id))
            .arg(keys::clean(platform))
            .arg(policy_name(policy))
            .arg(USER_KEY_TTL_MS);
        // While the script is in flight a resync leaves this connection out: re-adding it first
        // would let the script see a race in a different order than Redis ran it.
        self.registering_set().insert(conn_id);
        let ran = self
            .link
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await;
        self.registering_set().remove(&conn_id);
        let displaced: Vec<String> = ran.map_err(|e| {
            self.health.resync_wanted.store(true, Ordering::Relaxed);
            self.fail("register", e)
        })?;
        let now = unix_ms();
        Ok(displaced
            .iter()
            .filter_map(|f| Entry::parse(f, "\t"))
            .filter(|e| e.run != self.run && self.is_live(&e.run, now))
            .collect())
    }

    /// Re-adds connections this node still holds (after Redis came back, or lost our entries),
    /// in one pipeline, without applying the policy again: they already won their slot.
    pub async fn reregister(
        &self,
        conns: &[(String, u64, String, String)],
    ) -> Result<(), ClusterError> {
        let conns: Vec<_> = {
            let registering = self.registering_set();
            conns
                .iter()
                .filter(|(_, id, _, _)| !registering.contains(id))
                .collect()
        };
        for chunk in conns.chunks(1000) {
            let mut cmds = Vec::with_capacity(chunk.len() * 2);
            for (user, conn_id, device_id, platform) in chunk {
                let key = self.keys.user(user);
                let slot = keys::slot(&key);
                let mut hset = redis::cmd("HSET");
                hset.arg(&key)
                    .arg(Entry::field(&self.run, *conn_id))
                    .arg(Entry::value(device_id, platform));
                let mut pexpire = redis::cmd("PEXPIRE");
                pexpire.arg(&key).arg(USER_KEY_TTL_MS);
                cmds.extend([(slot, hset), (slot, pexpire)]);
            }
            self.link
                .run_keyed(cmds)
                .await
                .map_err(|e| self.fail("reregister", e))?;
        }
        Ok(())
    }

    /// Removes a connection of this node (on close); retried later when Redis does not answer.
    pub async fn unregister(&self, user: &str, conn_id: u64) -> Result<(), ClusterError> {
        let (key, field) = (self.keys.user(user), Entry::field(&self.run, conn_id));
        let done = self
            .link
            .run(|mut c| async move {
                redis::cmd("HDEL")
                    .arg(key)
                    .arg(field)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        if let Err(e) = done {
            self.retry_unregister_later(user, conn_id);
            return Err(self.fail("unregister", e));
        }
        Ok(())
    }

    /// Leaves a removal to the next heartbeat that reaches Redis (bounded: past the cap the
    /// entry expires with the user key instead).
    pub fn retry_unregister_later(&self, user: &str, conn_id: u64) {
        let mut retry = self
            .retry_unregister
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if retry.len() < MAX_RETRIED_UNREGISTERS {
            retry.push((user.to_owned(), conn_id));
        }
    }

    /// A registration found its queue full: counted, and left to the next resync, which
    /// re-registers every open session.
    pub fn registry_queue_full(&self) {
        self.metrics
            .cluster_errors
            .with_label_values(&["register_queue_full"])
            .inc();
        self.health.resync_wanted.store(true, Ordering::Relaxed);
    }

    fn registering_set(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.registering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a registration failed since the last call (the node task then resyncs).
    pub fn take_resync_wanted(&self) -> bool {
        self.health.resync_wanted.swap(false, Ordering::Relaxed)
    }

    /// Retries the unregistrations that failed, in pipelines.
    pub async fn retry_unregisters(&self) {
        let retry = std::mem::take(
            &mut *self
                .retry_unregister
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (i, chunk) in retry.chunks(1000).enumerate() {
            let cmds = chunk
                .iter()
                .map(|(user, conn_id)| self.hdel(user, &Entry::field(&self.run, *conn_id)))
                .collect();
            let done = self.link.run_keyed(cmds).await;
            if let Err(e) = done {
                self.fail("unregister", e);
                let mut left = self
                    .retry_unregister
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                left.extend(retry[i * 1000..].iter().cloned());
                left.truncate(MAX_RETRIED_UNREGISTERS);
                return;
            }
        }
    }

    /// `HDEL` of one field of `user`'s registry hash, with the key's slot.
    fn hdel(&self, user: &str, field: &str) -> (u16, redis::Cmd) {
        let key = self.keys.user(user);
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(&key).arg(field);
        (keys::slot(&key), cmd)
    }

    /// The live connections of `users` on every node: one script call per shard, the shards at
    /// once. Entries of dead node runs are left out (and removed in the background).
    pub async fn locate(&self, users: &[String]) -> Result<Vec<Vec<Entry>>, ClusterError> {
        self.reachable("locate")?;
        let raw = match self.lookup_hashes(users).await {
            // Redis restarted (or a shard failed over) and forgot the script, or a Redis
            // Cluster's slots moved: once more after loading it and reading the shards again.
            Err(LinkError::Redis(e)) if e.code() == Some("NOSCRIPT") || self.link.is_cluster() => {
                tracing::debug!(error = %e, "cluster: lookup retried");
                self.prepare().await;
                self.lookup_hashes(users).await
            }
            other => other,
        }
        .map_err(|e| self.fail_request("locate", e))?;
        let now = unix_ms();
        let mut stale = Vec::new();
        let located = raw
            .into_iter()
            .zip(users)
            .map(|(fields, user)| {
                fields
                    .into_iter()
                    .filter_map(|(f, v)| {
                        let entry = Entry::parse(&f, &v);
                        match entry {
                            Some(e) if self.is_live(&e.run, now) => Some(e),
                            // A dead run's entry, or junk: drop it from the registry.
                            _ if self.lapsed(entry.as_ref()) => {
                                stale.push(self.hdel(user, &f));
                                None
                            }
                            _ => None,
                        }
                    })
                    .collect()
            })
            .collect();
        if !stale.is_empty() {
            let link = self.link.clone();
            tokio::spawn(async move {
                let _ = link.run_keyed(stale).await;
            });
        }
        Ok(located)
    }

    /// The registry hashes of `users` (field, value pairs), in their order.
    async fn lookup_hashes(
        &self,
        users: &[String],
    ) -> Result<Vec<Vec<(String, String)>>, LinkError> {
        let keys: Vec<String> = users.iter().map(|u| self.keys.user(u)).collect();
        let slots: Vec<u16> = keys.iter().map(|k| keys::slot(k)).collect();
        let groups = self.link.groups(&slots);
        let calls = groups.iter().map(|(slot, items)| {
            let mut pipe = redis::pipe();
            for chunk in items.chunks(LOOKUP_CHUNK) {
                let mut call = redis::cmd("EVALSHA");
                call.arg(self.lookup.get_hash()).arg(1).arg(&keys[chunk[0]]);
                for i in chunk {
                    call.arg(&keys[*i]);
                }
                pipe.add_command(call);
            }
            self.link.run_group(*slot, pipe)
        });
        let replies = futures::future::join_all(calls).await;
        let mut hashes = vec![Vec::new(); users.len()];
        for ((_, items), replies) in groups.iter().zip(replies) {
            for (chunk, reply) in items.chunks(LOOKUP_CHUNK).zip(replies?) {
                let found = match reply {
                    Value::Array(found) if found.len() == chunk.len() => found,
                    Value::ServerError(e) => return Err(LinkError::Redis(e.into())),
                    other => {
                        return Err(LinkError::Redis(RedisError::from((
                            redis::ErrorKind::UnexpectedReturnType,
                            "registry lookup",
                            format!("{other:?}"),
                        ))))
                    }
                };
                for (i, hash) in chunk.iter().zip(found) {
                    hashes[*i] = field_pairs(hash);
                }
            }
        }
        Ok(hashes)
    }

    /// An entry to remove: malformed, or of a run this node saw die.
    fn lapsed(&self, entry: Option<&Entry>) -> bool {
        match entry {
            None => true,
            Some(e) => self
                .dead
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&e.run),
        }
    }

    /// The other nodes' liveness from a heartbeat. A run stays live until the time it last
    /// renewed to, even if a heartbeat does not list it (Redis restarted empty and it has not
    /// renewed yet): at most `node_ttl` for a killed node, `presence_grace` for a drained one,
    /// also when the node is already back as a new run. Runs whose time passed are dead: their
    /// entries stop counting and may be removed.
    fn update_live(&self, mut others: HashMap<NodeRun, u64>) {
        let now = unix_ms();
        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        let mut dead = self.dead.write().unwrap_or_else(PoisonError::into_inner);
        if dead.len() > MAX_DEAD_RUNS {
            dead.clear();
        }
        for (run, until) in live.drain() {
            if until > now {
                let renewed = others.entry(run).or_insert(until);
                *renewed = (*renewed).max(until);
            } else if !others.contains_key(&run) {
                dead.insert(run);
            }
        }
        for run in others.keys() {
            dead.remove(run);
        }
        self.health
            .last_known_nodes
            .store(others.len() + 1, Ordering::Relaxed);
        *live = others;
        self.health.view_ms.store(now, Ordering::Relaxed);
    }

    /// Sends one message to `node`'s channel; fails fast (counted) when Redis is away or too many
    /// sends are in flight, never queues without bound.
    pub async fn send(
        &self,
        node: &str,
        traceparent: Option<&str>,
        body: node_message::Body,
    ) -> Result<(), ClusterError> {
        let kind = body_kind(&body);
        let channel = self.keys.node_channel(node);
        self.publish(
            channel,
            wire::encode(&self.run.node, traceparent, body),
            kind,
        )
        .await
    }

    /// Denies `sid` on every node: persisted (new nodes load it) and announced.
    pub async fn revoke(&self, sid: &str, until: u64) -> Result<(), ClusterError> {
        let key = self.keys.revoked();
        let (member, score) = (sid.to_owned(), until);
        self.link
            .run(|mut c| async move {
                redis::pipe()
                    .zadd(&key, member, score)
                    .ignore()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(crate::clock::unix_now())
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
            .map_err(|e| self.fail("revoke", e))?;
        let body = node_message::Body::Revoke(im_proto::im::gateway::v1::NodeRevoke {
            sid: sid.to_owned(),
            until,
        });
        let channel = self.keys.revocations_channel();
        self.publish(channel, wire::encode(&self.run.node, None, body), "revoke")
            .await
    }

    /// Session ids denied cluster-wide and still in force, with their end (at start).
    pub async fn revoked(&self) -> Result<Vec<(String, u64)>, ClusterError> {
        let key = self.keys.revoked();
        let now = crate::clock::unix_now();
        self.link
            .run(|mut c| async move { scored_from(&key, now).query_async(&mut c).await })
            .await
            .map_err(|e| self.fail("revoked", e))
            .map(|pairs: Vec<(String, f64)>| {
                pairs
                    .into_iter()
                    .map(|(sid, until)| (sid, until as u64))
                    .collect()
            })
    }

    async fn publish(
        &self,
        channel: String,
        bytes: Vec<u8>,
        kind: &str,
    ) -> Result<(), ClusterError> {
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
            Ok(_) => {
                self.metrics
                    .cluster_messages
                    .with_label_values(&["out", kind])
                    .inc();
                Ok(())
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

/// A hash as a script returns it (a flat field, value array; a map over RESP3 elsewhere); what
/// is not text is skipped.
fn field_pairs(hash: Value) -> Vec<(String, String)> {
    let text = |v: Value| match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    };
    match hash {
        Value::Array(flat) => {
            let mut flat = flat.into_iter();
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            while let (Some(f), Some(v)) = (flat.next(), flat.next()) {
                if let (Some(f), Some(v)) = (text(f), text(v)) {
                    pairs.push((f, v));
                }
            }
            pairs
        }
        Value::Map(map) => map
            .into_iter()
            .filter_map(|(f, v)| Some((text(f)?, text(v)?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// `ZRANGE key from +inf BYSCORE WITHSCORES`: the members scored `from` or later, with scores.
pub fn scored_from(key: &str, from: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("ZRANGE");
    cmd.arg(key)
        .arg(from)
        .arg("+inf")
        .arg("BYSCORE")
        .arg("WITHSCORES");
    cmd
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
