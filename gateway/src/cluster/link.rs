//! The node's Redis connections, to one Redis or to a Redis Cluster (`cluster.redis_cluster`).
//!
//! One Redis: commands share one multiplexed `ConnectionManager` (it reconnects on its own); the
//! subscription has a second one over RESP3, whose push messages go into a bounded channel and
//! which resubscribes after a reconnect. A Redis Cluster: a `ClusterConnection` (one connection
//! per shard, routed by slot, following the cluster's topology) for commands and a second one for
//! the sharded subscription. Either way every command is bounded by `cluster.command_timeout`, so
//! a Redis that is away makes cross-node work fail fast.
//!
//! Work on many users' keys goes out in [`Link::groups`]: one group (one round trip) per shard.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisError,
    RedisFuture, Value,
};
use tokio::sync::mpsc;

use super::config::ClusterConfig;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cluster.redis_url: {0}")]
    Url(RedisError),
    #[error("not connected to Redis yet")]
    NotConnected,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
}

/// A command connection: to one Redis, or to a Redis Cluster (routed by slot).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A live subscription; dropping it ends it.
pub enum Subscription {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Where the node's Redis is.
#[derive(Clone)]
enum Target {
    Single(Box<redis::Client>),
    /// The seed nodes (RESP3), for the command and the subscription clients.
    Cluster(Vec<ConnectionInfo>),
}

#[derive(Clone)]
pub struct Link {
    target: Target,
    commands: Arc<ArcSwapOption<Conn>>,
    /// A Redis Cluster's shards by the first slot each range starts at: (last slot, shard).
    shards: Arc<RwLock<BTreeMap<u16, (u16, String)>>>,
    timeout: Duration,
    /// Seconds each command (or pipeline) took, answered or not.
    latency: Option<prometheus::Histogram>,
}

impl Link {
    /// Times every command into `latency` (the node's Redis latency metric).
    pub fn with_latency(mut self, latency: prometheus::Histogram) -> Self {
        self.latency = Some(latency);
        self
    }

    pub fn new(cfg: &ClusterConfig) -> Result<Self, LinkError> {
        let infos = cfg
            .redis_urls()
            .into_iter()
            .map(|url| {
                let info = url.into_connection_info().map_err(LinkError::Url)?;
                let redis = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                Ok(info.set_redis_settings(redis))
            })
            .collect::<Result<Vec<_>, LinkError>>()?;
        let target = if cfg.redis_cluster {
            Target::Cluster(infos)
        } else {
            let info = infos.into_iter().next().ok_or(LinkError::NotConnected)?;
            Target::Single(Box::new(redis::Client::open(info).map_err(LinkError::Url)?))
        };
        Ok(Self {
            target,
            commands: Arc::default(),
            shards: Arc::default(),
            timeout: cfg.command_timeout.0,
            latency: None,
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    fn connect_timeout(&self) -> Duration {
        self.timeout.max(Duration::from_secs(1))
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout()))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(2))
    }

    fn cluster_builder(&self, seeds: &[ConnectionInfo]) -> ClusterClientBuilder {
        ClusterClientBuilder::new(seeds.to_vec())
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(self.connect_timeout())
            .response_timeout(self.timeout)
            .retries(2)
            .min_retry_wait(100)
            .max_retry_wait(2000)
    }

    /// Bounds connecting by the connect timeout.
    async fn connecting<T>(
        &self,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, LinkError> {
        bounded(self.timeout.max(Duration::from_secs(2)), fut).await
    }

    /// Opens the command connection (the node task retries this with backoff until it works).
    pub async fn connect(&self) -> Result<(), LinkError> {
        let conn = match &self.target {
            Target::Single(client) => Conn::Single(
                self.connecting(client.get_connection_manager_with_config(self.manager_config()))
                    .await?,
            ),
            Target::Cluster(seeds) => {
                let client: ClusterClient = self.cluster_builder(seeds).build()?;
                Conn::Cluster(self.connecting(client.get_async_connection()).await?)
            }
        };
        self.commands.store(Some(Arc::new(conn)));
        Ok(())
    }

    pub fn connected(&self) -> bool {
        self.commands.load().is_some()
    }

    /// Runs one command (or pipeline) on the command connection within the timeout. On a Redis
    /// Cluster a pipeline given here must stay within one slot.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, LinkError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let conn = self.commands.load_full().ok_or(LinkError::NotConnected)?;
        let _timer = self
            .latency
            .as_ref()
            .map(prometheus::Histogram::start_timer);
        bounded(self.timeout, f((*conn).clone())).await
    }

    /// Re-reads a Redis Cluster's shards (`CLUSTER SLOTS`); nothing to do on one Redis.
    pub async fn refresh_shards(&self) -> Result<(), LinkError> {
        if !self.is_cluster() {
            return Ok(());
        }
        let slots: Value = self
            .run(
                |mut c| async move { redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await },
            )
            .await?;
        *self.shards.write().unwrap_or_else(PoisonError::into_inner) = parse_cluster_slots(&slots);
        Ok(())
    }

    /// Splits items by the slot of their key into groups that can go out as one round trip
    /// each: all of them on one Redis; one group per shard on a Redis Cluster (per slot for a
    /// slot whose shard is not known yet). Each group: a slot to route it by and its items'
    /// indexes, in order.
    pub fn groups(&self, slots: &[u16]) -> Vec<(u16, Vec<usize>)> {
        if !self.is_cluster() {
            return vec![(0, (0..slots.len()).collect())];
        }
        let shards = self.shards.read().unwrap_or_else(PoisonError::into_inner);
        let mut groups: BTreeMap<String, (u16, Vec<usize>)> = BTreeMap::new();
        for (i, slot) in slots.iter().enumerate() {
            let shard = shards
                .range(..=*slot)
                .next_back()
                .filter(|(_, (last, _))| slot <= last)
                .map_or_else(|| format!("slot {slot}"), |(_, (_, shard))| shard.clone());
            groups.entry(shard).or_insert((*slot, Vec::new())).1.push(i);
        }
        groups.into_values().collect()
    }

    /// Runs `pipe` as one round trip, on a Redis Cluster to the shard holding `slot` (every key
    /// in it must be on that shard). The replies, server errors among them as values.
    pub async fn run_group(&self, slot: u16, pipe: Pipeline) -> Result<Vec<Value>, LinkError> {
        let count = pipe.len();
        self.run(|c| async move {
            match c {
                Conn::Single(mut c) => c.req_packed_commands(&pipe, 0, count).await,
                Conn::Cluster(mut c) => {
                    let route =
                        SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                    c.route_pipeline(pipe, 0, count, route).await
                }
            }
        })
        .await
    }

    /// Runs commands on many keys (each with its key's slot), one round trip per shard, the
    /// shards at once; fails on the first error.
    pub async fn run_keyed(&self, cmds: Vec<(u16, Cmd)>) -> Result<(), LinkError> {
        let slots: Vec<u16> = cmds.iter().map(|(slot, _)| *slot).collect();
        let runs = self.groups(&slots).into_iter().map(|(slot, items)| {
            let mut pipe = redis::pipe();
            for i in items {
                pipe.add_command(cmds[i].1.clone());
            }
            self.run_group(slot, pipe)
        });
        for replies in futures::future::join_all(runs).await {
            if let Some(Value::ServerError(e)) = replies?
                .into_iter()
                .find(|v| matches!(v, Value::ServerError(_)))
            {
                return Err(LinkError::Redis(e.into()));
            }
        }
        Ok(())
    }

    /// A connection subscribed to `channels` (sharded channels on a Redis Cluster), its messages
    /// sent to `tx`; a message that finds `tx` full is dropped and counted by `on_drop` (the
    /// subscription never blocks Redis's reader, and never buffers without bound).
    pub async fn subscribe(
        &self,
        channels: &[String],
        tx: mpsc::Sender<PushInfo>,
        on_drop: impl Fn() + Send + Sync + 'static,
    ) -> Result<Subscription, LinkError> {
        let sender = move |info: PushInfo| {
            if tx.try_send(info).is_err() {
                on_drop();
            }
            Ok::<(), redis::aio::SendError>(())
        };
        match &self.target {
            Target::Single(client) => {
                let config = self
                    .manager_config()
                    .set_automatic_resubscription()
                    .set_push_sender(sender);
                let mut manager = self
                    .connecting(client.get_connection_manager_with_config(config))
                    .await?;
                for channel in channels {
                    bounded(self.timeout, manager.subscribe(channel)).await?;
                }
                Ok(Subscription::Single(manager))
            }
            Target::Cluster(seeds) => {
                let client = self.cluster_builder(seeds).push_sender(sender).build()?;
                let mut conn = self.connecting(client.get_async_connection()).await?;
                for channel in channels {
                    bounded(self.timeout, conn.ssubscribe(channel)).await?;
                }
                Ok(Subscription::Cluster(conn))
            }
        }
    }
}

/// `fut` within `limit`.
async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, LinkError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| LinkError::Timeout(limit))?
        .map_err(LinkError::Redis)
}

/// `CLUSTER SLOTS`' reply as slot ranges: first slot -> (last slot, `host:port` of the primary).
fn parse_cluster_slots(reply: &Value) -> BTreeMap<u16, (u16, String)> {
    let Value::Array(ranges) = reply else {
        return BTreeMap::new();
    };
    ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(parts) = range else {
                return None;
            };
            let int = |v: &Value| match v {
                Value::Int(n) => u16::try_from(*n).ok(),
                _ => None,
            };
            let (first, last) = (int(parts.first()?)?, int(parts.get(1)?)?);
            let Value::Array(primary) = parts.get(2)? else {
                return None;
            };
            let host = match primary.first()? {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let port = match primary.get(1)? {
                Value::Int(n) => *n,
                _ => return None,
            };
            Some((first, (last, format!("{host}:{port}"))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn cluster_slots_replies_become_ranges_and_junk_is_skipped() {
        let range = |a, b, host: &str, port| {
            Value::Array(vec![
                Value::Int(a),
                Value::Int(b),
                Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]),
            ])
        };
        let reply = Value::Array(vec![
            range(0, 5460, "127.0.0.1", 7000),
            range(5461, 10922, "127.0.0.1", 7001),
            Value::Array(vec![Value::Int(1)]),
            bulk("junk"),
        ]);
        let ranges = parse_cluster_slots(&reply);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[&5461], (10922, "127.0.0.1:7001".to_owned()));
        assert!(parse_cluster_slots(&Value::Nil).is_empty());
    }

    #[test]
    fn keys_group_by_shard_and_by_slot_where_the_shard_is_unknown() {
        let cfg = |cluster| ClusterConfig {
            redis_url: "redis://127.0.0.1:7000".into(),
            redis_cluster: cluster,
            ..ClusterConfig::default()
        };
        let single = Link::new(&cfg(false)).unwrap();
        assert_eq!(single.groups(&[5, 9000, 16000]), vec![(0, vec![0, 1, 2])]);
        let link = Link::new(&cfg(true)).unwrap();
        link.shards
            .write()
            .unwrap()
            .extend([(0, (8191, "a".to_owned())), (8192, (12000, "b".to_owned()))]);
        let groups = link.groups(&[5, 9000, 16000, 100, 16000]);
        assert_eq!(
            groups,
            vec![(5, vec![0, 3]), (9000, vec![1]), (16000, vec![2, 4])]
        );
    }
}
