//! `cluster:` in gateway.yaml (DESIGN §9). Present: this node joins the cluster its Redis holds;
//! absent: a single node, exactly as without cluster mode.

use std::time::Duration;

use serde::Deserialize;

use crate::units::HumanDuration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS); with `redis_cluster`, a
    /// comma-separated list of seed nodes of the Redis Cluster (one is enough, more survive one
    /// being down at start).
    pub redis_url: String,
    /// The Redis is a Redis Cluster (7.0 or later): per-user keys are spread over its shards,
    /// lookups go out one round trip per shard, node channels use sharded pub/sub.
    pub redis_cluster: bool,
    /// This node's name in the registry and its channel; default: `<hostname>-<pid>-<random>`.
    pub node_id: Option<String>,
    /// Prefix of every key and channel, so several clusters can share one Redis.
    pub prefix: String,
    /// How often the node renews its liveness.
    pub heartbeat: HumanDuration,
    /// How long a node counts as alive after its last heartbeat: its users are offline at most
    /// this long after it dies.
    pub node_ttl: HumanDuration,
    /// How often the node publishes a probe to its own channel; a subscription that delivers no
    /// probe for two intervals is declared dead and rebuilt.
    pub probe_interval: HumanDuration,
    /// After an announced drain (SIGTERM), how long this node's users still count as online, so
    /// that those who reconnect to another node meanwhile never look offline. A killed node
    /// gets no grace: its users are offline once `node_ttl` passes.
    pub presence_grace: HumanDuration,
    /// Cross-node messages in flight at once; beyond it a message is dropped and counted.
    pub max_inflight_sends: usize,
    /// A Redis command that takes longer fails (cross-node sends fail fast while Redis is away).
    pub command_timeout: HumanDuration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            redis_cluster: false,
            node_id: None,
            prefix: "im:".into(),
            heartbeat: HumanDuration(Duration::from_secs(2)),
            node_ttl: HumanDuration(Duration::from_secs(6)),
            probe_interval: HumanDuration(Duration::from_secs(5)),
            presence_grace: HumanDuration(Duration::from_secs(10)),
            max_inflight_sends: 1024,
            command_timeout: HumanDuration(Duration::from_millis(500)),
        }
    }
}

impl ClusterConfig {
    /// The first field that cannot be used, with what to write instead.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let urls = self.redis_urls();
        if urls.len() > 1 && !self.redis_cluster {
            return Err((
                "cluster.redis_url",
                "list several URLs only for a Redis Cluster (set cluster.redis_cluster: true)"
                    .into(),
            ));
        }
        let url_ok = |url: &str| {
            ["redis://", "rediss://"].iter().any(|s| url.starts_with(s))
                && redis::Client::open(url).is_ok()
        };
        if !urls.iter().all(|u| url_ok(u)) {
            return Err((
                "cluster.redis_url",
                "use redis://[user:password@]host:port[/db] or rediss://… for TLS".into(),
            ));
        }
        if let Some(id) = &self.node_id {
            if !valid_name(id) {
                return Err((
                    "cluster.node_id",
                    "use 1 to 64 letters, digits, `-`, `_` or `.`".into(),
                ));
            }
        }
        if self.prefix.is_empty()
            || self.prefix.len() > 64
            || self
                .prefix
                .chars()
                .any(|c| c.is_whitespace() || "{}".contains(c))
        {
            return Err((
                "cluster.prefix",
                "use 1 to 64 characters without spaces or braces, e.g. `im:`".into(),
            ));
        }
        let (beat, ttl) = (self.heartbeat.0, self.node_ttl.0);
        if beat < Duration::from_millis(100) || beat > Duration::from_secs(60) {
            return Err(("cluster.heartbeat", "use 100ms to 60s (default 2s)".into()));
        }
        if ttl < beat * 2 {
            return Err((
                "cluster.node_ttl",
                format!(
                    "must be at least two heartbeats ({:?}); default 6s",
                    beat * 2
                ),
            ));
        }
        if self.probe_interval.0 < Duration::from_millis(100) {
            return Err((
                "cluster.probe_interval",
                "use at least 100ms (default 5s)".into(),
            ));
        }
        if self.presence_grace.0 > Duration::from_secs(300) {
            return Err((
                "cluster.presence_grace",
                "use at most 5m (default 10s)".into(),
            ));
        }
        if self.max_inflight_sends == 0 {
            return Err((
                "cluster.max_inflight_sends",
                "use at least 1 (default 1024)".into(),
            ));
        }
        if self.command_timeout.0 < Duration::from_millis(10) {
            return Err((
                "cluster.command_timeout",
                "use at least 10ms (default 500ms)".into(),
            ));
        }
        Ok(())
    }

    /// The Redis URLs: one, or a Redis Cluster's seed nodes.
    pub fn redis_urls(&self) -> Vec<&str> {
        self.redis_url.split(',').map(str::trim).collect()
    }

    /// The configured node id, or one unique to this process.
    pub fn resolved_node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            format!(
                "{}-{}-{:08x}",
                hostname(),
                std::process::id(),
                rand::random::<u32>()
            )
        })
    }
}

/// This host's name as far as it is usable in a node id (`node` when it is not).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| valid_char(*c))
                .take(40)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.".contains(c)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(valid_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut ClusterConfig)) -> Result<(), (&'static str, String)> {
        let mut c = ClusterConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            ..ClusterConfig::default()
        };
        f(&mut c);
        c.validate()
    }

    #[test]
    fn defaults_are_valid_and_each_field_is_checked() {
        assert_eq!(with(|_| {}), Ok(()));
        assert_eq!(
            with(|c| c.redis_url = "rediss://u:p@h:6380/2".into()),
            Ok(())
        );
        let field = |f: fn(&mut ClusterConfig)| with(f).unwrap_err().0;
        assert_eq!(
            with(|c| {
                c.redis_cluster = true;
                c.redis_url = "redis://a:7000, redis://b:7001".into();
            }),
            Ok(())
        );
        assert_eq!(
            field(|c| c.redis_url = "redis://a:7000,redis://b:7001".into()),
            "cluster.redis_url"
        );
        assert_eq!(
            field(|c| {
                c.redis_cluster = true;
                c.redis_url = "redis://a:7000,".into();
            }),
            "cluster.redis_url"
        );
        assert_eq!(
            field(|c| c.redis_url = "http://x".into()),
            "cluster.redis_url"
        );
        assert_eq!(field(|c| c.redis_url.clear()), "cluster.redis_url");
        assert_eq!(field(|c| c.node_id = Some("a/b".into())), "cluster.node_id");
        assert_eq!(field(|c| c.prefix = "a{b".into()), "cluster.prefix");
        assert_eq!(
            field(|c| c.node_ttl = HumanDuration(Duration::from_secs(3))),
            "cluster.node_ttl"
        );
        assert_eq!(
            field(|c| c.max_inflight_sends = 0),
            "cluster.max_inflight_sends"
        );
    }

    #[test]
    fn generated_node_ids_are_valid_and_distinct() {
        let c = ClusterConfig::default();
        let (a, b) = (c.resolved_node_id(), c.resolved_node_id());
        assert!(valid_name(&a), "{a}");
        assert_ne!(a, b);
    }
}
