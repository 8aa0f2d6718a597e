//! The cluster registry: which connection of which user is on which node run, one Redis hash per
//! user. Registration applies the multi-device rule in Redis (`register.lua`, atomic per user);
//! lookups read many users' hashes in one script call per shard (`lookup.lua`); failed removals
//! are retried at the next heartbeat that reaches Redis.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use redis::{RedisError, Value};

use super::keys::{self, Entry, USER_KEY_TTL_MS};
use super::link::LinkError;
use super::{Cluster, ClusterError};
use crate::clock::unix_ms;

/// A connection this node holds, as a resync re-adds it.
#[derive(Debug, Clone)]
pub struct HeldConnection {
    pub user: String,
    pub conn_id: u64,
    pub device_id: String,
    pub platform: String,
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

/// Users looked up by one script call (a group push to more goes out as several calls, still in
/// one round trip per shard).
const LOOKUP_CHUNK: usize = 512;

/// Failed unregistrations kept for a retry.
const MAX_RETRIED_UNREGISTERS: usize = 100_000;

/// The registry hashes of many users in one call: one round trip per shard, and one command in
/// Redis's own counts. The keys come as ARGV, the first also as KEYS[1]: on a Redis Cluster declared
/// keys must share one slot, while keys read from ARGV may be in any slot of the shard that runs
/// the script, which the script declares (Redis 7; a key of another shard is an error, not a
/// wrong answer); KEYS[1] lets the shard answer MOVED when the slots moved.
pub(super) fn lookup_lua(redis_cluster: bool) -> String {
    let body = include_str!("lookup.lua");
    if redis_cluster {
        format!("#!lua flags=allow-cross-slot-keys,no-writes\n{body}")
    } else {
        body.to_owned()
    }
}

impl Cluster {
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
    pub async fn reregister(&self, conns: &[HeldConnection]) -> Result<(), ClusterError> {
        let conns: Vec<_> = {
            let registering = self.registering_set();
            conns
                .iter()
                .filter(|c| !registering.contains(&c.conn_id))
                .collect()
        };
        for chunk in conns.chunks(1000) {
            let mut cmds = Vec::with_capacity(chunk.len() * 2);
            for conn in chunk {
                let key = self.keys.user(&conn.user);
                let slot = keys::slot(&key);
                let mut hset = redis::cmd("HSET");
                hset.arg(&key)
                    .arg(Entry::field(&self.run, conn.conn_id))
                    .arg(Entry::value(&conn.device_id, &conn.platform));
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

    pub(super) fn registering_set(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
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
    pub(super) fn hdel(&self, user: &str, field: &str) -> (u16, redis::Cmd) {
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
    pub(super) async fn lookup_hashes(
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
