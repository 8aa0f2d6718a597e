//! The node's background task: connect to Redis (retrying with backoff), renew liveness every
//! heartbeat and refresh the view of the other nodes, keep the subscription to this node's
//! channel (and the revocations channel) and prove it with a probe to itself, and hand what
//! arrives to the push plugin. A subscription that stops delivering probes is declared stale
//! (`/readyz` degraded, counted) and rebuilt, whatever the connection claims.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use im_proto::im::gateway::v1::{node_message, NodeKick, NodeMessage, NodeProbe};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::keys::NodeRun;
use super::probe::{ProbeWatch, Verdict};
use super::registrations::{cancel_pairs, Op, BATCH};
use super::{wire, Cluster, ClusterError};
use crate::clock::unix_ms;

/// What the node task hands the push plugin.
#[derive(Debug)]
pub enum Inbound {
    /// A message from another node (or a revocation from any node).
    Message(Box<NodeMessage>, Box<node_message::Body>),
    /// Redis came back or lost this node's state: re-register local sessions, reload revocations.
    Resync,
}

/// Messages read from the subscription and not yet applied; beyond it they are dropped (counted).
/// The subscription is read by its own loop (never behind a heartbeat), so this absorbs bursts,
/// not outages.
const INBOX: usize = 16_384;

pub fn inbox() -> (mpsc::Sender<Inbound>, mpsc::Receiver<Inbound>) {
    mpsc::channel(INBOX)
}

pub struct NodeService {
    pub cluster: Arc<Cluster>,
    pub inbox: mpsc::Sender<Inbound>,
}

#[async_trait]
impl BackgroundService for NodeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        start_registrations(&self.cluster);
        let run = run(self.cluster.clone(), self.inbox.clone());
        tokio::pin!(run);
        tokio::select! {
            () = &mut run => return,
            _ = shutdown.changed() => {}
        }
        leave(&self.cluster).await;
        // Still subscribed while the drain closes the sessions: a revocation or a kick for them
        // still applies, and pushes for users who already left are forwarded to where they went.
        // The process ends this when it exits.
        run.await;
    }
}

/// Why a displaced connection on another node is closed.
const DISPLACED: &str = "signed in on another device";

/// Runs the registry queue: one task per shard on the current runtime, each applying its
/// shard's operations in order (once; later calls find no receivers).
fn start_registrations(cluster: &Arc<Cluster>) {
    for mut rx in cluster.registrations.take_receivers() {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let taken = batch.len();
                for op in cancel_pairs(std::mem::take(&mut batch)) {
                    apply(&cluster, op).await;
                }
                cluster.registrations.done(taken);
            }
        });
    }
}

/// Runs one registry operation against Redis. A registration closes what the multi-device
/// policy displaced on other nodes (the later registration in Redis's order wins); failures are
/// counted and left to the resync or the retried unregistrations.
async fn apply(cluster: &Cluster, op: Op) {
    match op {
        Op::Register {
            user,
            conn_id,
            device_id,
            platform,
            policy,
        } => {
            let Ok(displaced) = cluster
                .register(&user, conn_id, &device_id, &platform, policy)
                .await
            else {
                return;
            };
            let mut by_run: HashMap<NodeRun, Vec<u64>> = HashMap::new();
            for e in displaced {
                by_run.entry(e.run).or_default().push(e.conn_id);
            }
            for (run, conn_ids) in by_run {
                let body = node_message::Body::Kick(NodeKick {
                    user_id: user.clone(),
                    conn_ids,
                    epoch: run.epoch,
                    reason: DISPLACED.into(),
                    by_device_id: device_id.clone(),
                    ..NodeKick::default()
                });
                let _ = cluster.send(&run.node, None, body).await;
            }
        }
        Op::Unregister { user, conn_id } => {
            let _ = cluster.unregister(&user, conn_id).await;
        }
    }
}

/// An announced leave: this node's sessions close over the drain window and their users
/// reconnect elsewhere; the node's liveness is extended to `presence_grace` from now (and no
/// longer renewed: heartbeats stop) and the sessions the drain closes keep their entries
/// (`remote::closed`), so nobody who comes back within the grace is reported offline in between.
async fn leave(cluster: &Cluster) {
    cluster.health.leaving.store(true, Ordering::Relaxed);
    let until = unix_ms() + cluster.config.presence_grace.0.as_millis() as u64;
    let (key, member) = (cluster.keys.nodes(), cluster.run.member());
    let leaving = cluster.keys.leaving();
    let now = unix_ms();
    // Two keys (two slots on a Redis Cluster): two commands, not one pipeline.
    let _ = cluster
        .link
        .run(|mut c| {
            let member = member.clone();
            async move {
                redis::cmd("ZADD")
                    .arg(key)
                    .arg(until)
                    .arg(member)
                    .query_async::<()>(&mut c)
                    .await
            }
        })
        .await;
    let _ = cluster
        .link
        .run(|mut c| async move {
            redis::pipe()
                .zadd(&leaving, member, until)
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&leaving)
                .arg("-inf")
                .arg(now)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await;
    tracing::info!(node = %cluster.run.node, grace = ?cluster.config.presence_grace.0, "left the cluster");
}

async fn run(cluster: Arc<Cluster>, inbox: mpsc::Sender<Inbound>) {
    let mut delays = crate::backoff::delays(Duration::from_millis(100), Duration::from_secs(5));
    while let Err(e) = cluster.link.connect().await {
        let retry_in = delays.next().unwrap_or(Duration::from_secs(5));
        tracing::warn!(error = %e, ?retry_in, "cluster: cannot reach Redis");
        tokio::time::sleep(retry_in).await;
    }
    tracing::info!(node = %cluster.run.node, epoch = cluster.run.epoch, "cluster: connected to Redis");
    let (tx, mut rx) = mpsc::channel(INBOX);
    // The subscription is read by a task of its own: a heartbeat waiting on a slow Redis, or
    // parsing a large liveness set, never leaves node messages (or probes) unread.
    let _reader = {
        let (cluster, inbox) = (cluster.clone(), inbox.clone());
        AbortOnDrop(tokio::spawn(async move {
            while let Some(info) = rx.recv().await {
                receive(&cluster, &inbox, info);
            }
        }))
    };
    keep_alive(&cluster, &inbox, tx).await;
}

/// Ends a spawned task with the future that spawned it (the node task is dropped at exit).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Heartbeats, resyncs and the probe that proves the subscription, forever.
async fn keep_alive(
    cluster: &Arc<Cluster>,
    inbox: &mpsc::Sender<Inbound>,
    tx: mpsc::Sender<PushInfo>,
) {
    let mut subscription = None;
    let mut heartbeat = tokio::time::interval(cluster.config.heartbeat.0);
    let mut probe = tokio::time::interval(cluster.config.probe_interval.0);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut synced = false;
    let mut watch = ProbeWatch::new(cluster.config.probe_interval.0);
    loop {
        let verdict = tokio::select! {
            _ = heartbeat.tick() => {
                if cluster.health.leaving.load(Ordering::Relaxed) {
                    continue;
                }
                match beat(cluster).await {
                    Ok(new_member) => {
                        if !synced || new_member {
                            cluster.prepare().await;
                        } else {
                            cluster.refresh_shards().await;
                        }
                        // First contact, Redis back after an outage, Redis lost our entry, or a
                        // registration that did not get through.
                        let wanted = cluster.take_resync_wanted();
                        if !synced || new_member || wanted {
                            synced = inbox.send(Inbound::Resync).await.is_ok();
                        }
                        cluster.retry_unregisters().await;
                        if subscription.is_none() {
                            subscription = subscribe(cluster, tx.clone()).await;
                            watch.reset();
                            send_probe(cluster, &mut watch, subscription.is_some()).await
                        } else {
                            Verdict::Live
                        }
                    }
                    Err(e) => {
                        if cluster.health.redis_up.swap(false, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "cluster: Redis unreachable; cross-node delivery fails fast until it is back");
                        }
                        synced = false;
                        Verdict::Live
                    }
                }
            }
            _ = probe.tick() => {
                // Messages read off the connection that the reader has not taken yet.
                let backlog = tx.capacity() < tx.max_capacity();
                let health = &cluster.health;
                match watch.check(
                    unix_ms(),
                    health.seen_probe.load(Ordering::Relaxed),
                    health.last_delivery_ms.load(Ordering::Relaxed),
                    backlog,
                ) {
                    Verdict::Live => send_probe(cluster, &mut watch, subscription.is_some()).await,
                    stale => stale,
                }
            }
        };
        if let Verdict::Stale(why) = verdict {
            if cluster.health.subscribed.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    why,
                    "cluster: the subscription stopped delivering; rebuilding it"
                );
            }
            cluster.metrics.cluster_subscription_stale.inc();
            subscription = subscribe(cluster, tx.clone()).await;
            watch.reset();
        }
    }
}

/// Publishes a probe to this node's own channel (when subscribed) and tells `watch` whether
/// Redis delivered it to a subscriber.
async fn send_probe(cluster: &Cluster, watch: &mut ProbeWatch, subscribed: bool) -> Verdict {
    if !subscribed {
        return Verdict::Live;
    }
    let nonce = watch.next_nonce(unix_ms());
    let body = node_message::Body::Probe(NodeProbe { nonce });
    match cluster.send(&cluster.run.node, None, body).await {
        Ok(receivers) => watch.sent(nonce, unix_ms(), receivers),
        // Not taken (Redis away, too many sends): nothing is owed; the heartbeat reports Redis.
        Err(_) => Verdict::Live,
    }
}

/// Renews this node's liveness and reads the others'; whether our member was new to Redis.
async fn beat(cluster: &Cluster) -> Result<bool, ClusterError> {
    let now = unix_ms();
    let ttl = cluster.config.node_ttl.0.as_millis() as u64;
    let (key, member) = (cluster.keys.nodes(), cluster.run.member());
    let (added, live): (i64, Vec<(String, f64)>) = cluster
        .link
        .run(|mut c| async move {
            redis::pipe()
                .zadd(&key, member, now + ttl)
                .cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now.saturating_sub(60_000))
                .ignore()
                .add_command(super::revocations::scored_from(&key, now))
                .query_async(&mut c)
                .await
        })
        .await
        .map_err(|e| cluster.fail("heartbeat", e))?;
    let others: HashMap<NodeRun, u64> = live
        .into_iter()
        .filter_map(|(m, until)| Some((NodeRun::parse_member(&m)?, until as u64)))
        .filter(|(run, _)| *run != cluster.run)
        .collect();
    let leaving_key = cluster.keys.leaving();
    let leaving: Vec<(String, f64)> = cluster
        .link
        .run(|mut c| async move {
            super::revocations::scored_from(&leaving_key, now)
                .query_async(&mut c)
                .await
        })
        .await
        .map_err(|e| cluster.fail("heartbeat", e))?;
    cluster.set_leaving(
        leaving
            .iter()
            .filter_map(|(m, _)| NodeRun::parse_member(m))
            .collect(),
    );
    cluster.metrics.cluster_nodes.set(others.len() as i64 + 1);
    cluster.update_live(others);
    if !cluster.health.redis_up.swap(true, Ordering::Relaxed) {
        tracing::info!("cluster: Redis reachable");
    }
    Ok(added > 0)
}

async fn subscribe(
    cluster: &Arc<Cluster>,
    tx: mpsc::Sender<PushInfo>,
) -> Option<super::link::Subscription> {
    let channels = [
        cluster.keys.node_channel(&cluster.run.node),
        cluster.keys.revocations_channel(),
    ];
    let metrics = cluster.metrics.clone();
    match cluster
        .link
        .subscribe(&channels, tx, move || {
            metrics.cluster_dropped.with_label_values(&["inbox"]).inc()
        })
        .await
    {
        Ok(manager) => {
            tracing::info!(channels = ?channels, "cluster: subscribed");
            Some(manager)
        }
        Err(e) => {
            cluster.fail("subscribe", e);
            None
        }
    }
}

/// One push message from the subscription.
fn receive(cluster: &Cluster, inbox: &mpsc::Sender<Inbound>, info: PushInfo) {
    if !matches!(info.kind, PushKind::Message | PushKind::SMessage) {
        return;
    }
    let Some(Value::BulkString(bytes)) = info.data.get(1) else {
        return;
    };
    let decoded = wire::decode(bytes);
    // Revocations come on a channel of their own (another shard, in Redis Cluster): only this
    // node's channel proves this node's subscription.
    if matches!(&decoded, Ok((_, body)) if !matches!(body, node_message::Body::Revoke(_))) {
        cluster
            .health
            .last_delivery_ms
            .store(unix_ms(), Ordering::Relaxed);
    }
    match decoded {
        Ok((_, node_message::Body::Probe(probe))) => {
            cluster
                .health
                .seen_probe
                .fetch_max(probe.nonce, Ordering::Relaxed);
            if !cluster.health.subscribed.swap(true, Ordering::Relaxed) {
                tracing::info!("cluster: subscription delivers");
            }
        }
        Ok((msg, body)) => {
            let kind = super::body_kind(&body);
            cluster
                .metrics
                .cluster_messages
                .with_label_values(&["in", kind])
                .inc();
            if msg.sent_ms > 0 {
                let lag = unix_ms().saturating_sub(msg.sent_ms) as f64 / 1000.0;
                cluster.metrics.cluster_lag.observe(lag);
            }
            if inbox
                .try_send(Inbound::Message(Box::new(msg), Box::new(body)))
                .is_err()
            {
                cluster
                    .metrics
                    .cluster_dropped
                    .with_label_values(&["inbox"])
                    .inc();
            }
        }
        Err(skip) => {
            cluster
                .metrics
                .cluster_skipped
                .with_label_values(&[skip.label()])
                .inc();
            tracing::debug!(?skip, "cluster: message skipped");
        }
    }
}
