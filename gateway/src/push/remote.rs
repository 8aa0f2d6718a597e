//! Cluster mode on the push side (DESIGN §9): registering this node's sessions in Redis,
//! routing pushes, kicks and presence to the nodes that hold the users, and applying what other
//! nodes send here. Without `cluster:` none of this runs. Redis trouble never stops local work:
//! each function falls back to this node's sessions and the failure is counted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use im_proto::im::gateway::v1::{
    node_message, DevicePresence, NodeDeliver, NodeKick, NodeMessage, Push, PushReply, UserPresence,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{mpsc, Notify};

use super::control::{self, Ending};
use super::fanout::{fan_out_each, Targets};
use super::forward::{by_node, forward};
use super::registry::Device;
use super::PushDeps;
use crate::cluster::keys::Entry;
use crate::cluster::node::Inbound;
use crate::cluster::registrations::Op;
use crate::cluster::{Cluster, HeldConnection};

/// After a session registered here: queues its entry in the cluster registry (in order with
/// its removal; `cluster::registrations`). A full queue leaves it to the next resync.
pub fn registered(deps: &Arc<PushDeps>, user: &str, conn_id: u64, device: &Device) {
    let Some(cluster) = &deps.cluster else {
        return;
    };
    let op = Op::Register {
        user: user.to_owned(),
        conn_id,
        device_id: device.device_id.clone(),
        platform: device.platform.clone(),
        policy: deps.config.multi_device,
    };
    if !cluster.registrations.queue(op) {
        cluster.registry_queue_full();
    }
}

/// After a session of this node closed: queues its removal behind its registration. A session
/// closed by the node's drain keeps its entry: its user counts as online until the presence
/// grace ends or they register elsewhere.
pub fn closed(deps: &PushDeps, user: &str, conn_id: u64, drained: bool) {
    if drained {
        return;
    }
    if let Some(cluster) = &deps.cluster {
        let op = Op::Unregister {
            user: user.to_owned(),
            conn_id,
        };
        if !cluster.registrations.queue(op) {
            cluster.retry_unregister_later(user, conn_id);
        }
    }
}

/// A push to `users` wherever they are: this node's sessions directly, every other node holding
/// some of them by one batched message. The counts cover the whole cluster: a remote connection
/// counts as delivered when its node was sent the push.
pub async fn push(
    cluster: &Arc<Cluster>,
    deps: &Arc<PushDeps>,
    push: &Push,
    users: &[String],
    targets: &Targets<'_>,
    traceparent: Option<&str>,
) -> Result<PushReply, String> {
    let located = cluster.locate(users).await;
    let table = deps.routes.load();
    let watermark = deps.hub.conn_watermark();
    let mut online = vec![false; users.len()];
    let mut reply = fan_out_each(
        &deps.hub,
        push,
        users,
        targets,
        &table.descriptors,
        |i, on| online[i] = on,
    )?;
    let Ok(located) = located else {
        // Redis away: this node's sessions got it; the rest is counted as offline.
        reply.users_online = online.iter().filter(|o| **o).count() as u32;
        reply.users_offline = users.len() as u32 - reply.users_online;
        return Ok(reply);
    };
    let (missed, leaving_nodes) = moving(cluster, users, &located, &online);
    let mut sent_to_runs = HashSet::new();
    let batches = by_node(
        cluster,
        users,
        &located,
        targets,
        |_| true,
        |i, e| {
            online[i] = true;
            sent_to_runs.insert(e.run.member());
        },
    );
    let template = NodeDeliver {
        push: Some(push.clone()),
        user_ids: Vec::new(),
        platforms: targets.platforms.to_vec(),
        exclude_device_ids: targets.exclude_device_ids.to_vec(),
        sent_to_runs: sent_to_runs.into_iter().collect(),
        forwarded: false,
        origin_node: cluster.run.node.clone(),
        origin_epoch: cluster.run.epoch,
        origin_watermark: watermark,
    };
    for (node, (user_ids, conns)) in batches {
        let body = node_message::Body::Deliver(NodeDeliver {
            user_ids,
            // A draining node does not forward: this one does, for every user it holds.
            forwarded: leaving_nodes.contains(node.as_str()),
            ..template.clone()
        });
        if cluster.send(&node, traceparent, body).await.is_ok() {
            reply.delivered += conns;
        }
    }
    if !missed.is_empty() {
        tracing::debug!(users = ?missed, leaving = ?leaving_nodes, "cluster: following a push up");
        forward(
            deps,
            cluster,
            template,
            missed,
            traceparent.unwrap_or_default().to_owned(),
        );
    }
    reply.users_online = online.iter().filter(|o| **o).count() as u32;
    reply.users_offline = users.len() as u32 - reply.users_online;
    Ok(reply)
}

/// Users who may be moving: registered here but gone (closed by this node's drain), or
/// registered on a node that is draining; this node follows their push up (`forward`). And the
/// draining nodes.
fn moving<'a>(
    cluster: &Cluster,
    users: &[String],
    located: &'a [Vec<Entry>],
    online_here: &[bool],
) -> (Vec<String>, HashSet<&'a str>) {
    let leaving = |e: &Entry| e.run != cluster.run && cluster.is_leaving(&e.run);
    let missed = located
        .iter()
        .zip(users)
        .zip(online_here)
        .filter(|((entries, _), here)| {
            entries
                .iter()
                .any(|e| (e.run == cluster.run && !**here) || leaving(e))
        })
        .map(|((_, user), _)| user.clone())
        .collect();
    let nodes = located
        .iter()
        .flatten()
        .filter(|e| leaving(e))
        .map(|e| e.run.node.as_str())
        .collect();
    (missed, nodes)
}

/// Every node's devices of `users`; this node's alone when Redis is away.
pub async fn presence(cluster: &Cluster, deps: &PushDeps, users: Vec<String>) -> Vec<UserPresence> {
    let located = cluster.locate(&users).await.ok();
    users
        .into_iter()
        .enumerate()
        .map(|(i, user_id)| {
            let mut devices: Vec<DevicePresence> = match &located {
                Some(located) => located[i]
                    .iter()
                    .map(|e| DevicePresence {
                        device_id: e.device_id.clone(),
                        platform: e.platform.clone(),
                    })
                    .collect(),
                None => Vec::new(),
            };
            // This node's own sessions count even before their registration reached Redis.
            for c in deps.hub.registry.connections(&user_id) {
                if !devices.iter().any(|d| d.device_id == c.device.device_id) {
                    devices.push(DevicePresence {
                        device_id: c.device.device_id,
                        platform: c.device.platform,
                    });
                }
            }
            UserPresence { user_id, devices }
        })
        .collect()
}

/// Asks every other node holding `user` (on `device_id`, or any device) to kick those
/// connections; how many connections they were told to close.
pub async fn kick(cluster: &Cluster, user: &str, device_id: &str, reason: &str) -> u32 {
    let Ok(located) = cluster.locate(&[user.to_owned()]).await else {
        return 0;
    };
    let mut per_node: HashMap<String, u32> = HashMap::new();
    for e in located.into_iter().flatten() {
        if e.run != cluster.run && (device_id.is_empty() || e.device_id == device_id) {
            *per_node.entry(e.run.node).or_default() += 1;
        }
    }
    let mut closed = 0;
    for (node, n) in per_node {
        let body = node_message::Body::Kick(NodeKick {
            user_id: user.to_owned(),
            conn_ids: Vec::new(),
            epoch: 0,
            device_id: device_id.to_owned(),
            reason: reason.to_owned(),
            by_device_id: String::new(),
            revoke: true,
        });
        if cluster.send(&node, None, body).await.is_ok() {
            closed += n;
        }
    }
    closed
}

/// Applies what other nodes send this one, until shutdown.
pub struct RemoteService {
    pub deps: Arc<PushDeps>,
    pub inbox: Mutex<Option<mpsc::Receiver<Inbound>>>,
}

#[async_trait]
impl BackgroundService for RemoteService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut inbox) = self
            .inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        // Through the drain too (the node task keeps its subscription until the process exits).
        // A resync (several Redis round trips) runs beside the messages, not in front of them:
        // a burst arriving as Redis comes back is applied, not dropped at a full inbox.
        // Resyncs asked for while one runs coalesce into the next.
        let wanted = Notify::new();
        let messages = async {
            while let Some(msg) = inbox.recv().await {
                match msg {
                    Inbound::Resync => wanted.notify_one(),
                    Inbound::Message(msg, body) => apply(&self.deps, *msg, *body),
                }
            }
        };
        let resyncs = async {
            loop {
                wanted.notified().await;
                if let Some(cluster) = &self.deps.cluster {
                    resync(cluster, &self.deps).await;
                }
            }
        };
        tokio::select! {
            () = messages => {}
            () = resyncs => {}
        }
    }
}

fn apply(deps: &Arc<PushDeps>, msg: NodeMessage, body: node_message::Body) {
    let Some(cluster) = &deps.cluster else {
        return;
    };
    match body {
        node_message::Body::Deliver(d) => deliver(deps, cluster, msg, d),
        node_message::Body::Kick(k) if k.conn_ids.is_empty() => {
            // Another node's kick: its caller waited on that node's file, not on ours.
            let (_, _persisted) = control::kick_user(deps, &k.user_id, &k.device_id, &k.reason);
        }
        // Connection ids of this node's previous run: not ours, whatever they collide with.
        node_message::Body::Kick(k) if k.epoch != cluster.run.epoch => {}
        node_message::Body::Kick(k) => {
            let ending = Ending::Kicked {
                reason: &k.reason,
                by_device_id: &k.by_device_id,
            };
            for conn in deps.hub.registry.connections(&k.user_id) {
                if k.conn_ids.contains(&conn.conn_id) {
                    control::close_connection(deps, &conn, ending);
                }
            }
        }
        node_message::Body::Revoke(r) if msg.from_node != cluster.run.node => {
            let (_, _persisted) = control::end_session_here(deps, &r.sid, r.until, Ending::Revoked);
        }
        node_message::Body::Revoke(_) | node_message::Body::Probe(_) => {}
    }
}

/// Another node's push for users of this node: delivered to their sessions here in a span of
/// its own (a child of the Push call's), and followed up for those gone from here.
fn deliver(deps: &Arc<PushDeps>, cluster: &Arc<Cluster>, msg: NodeMessage, d: NodeDeliver) {
    let Some(push) = &d.push else { return };
    // One span per node hop, a child of the Push call's; traced only when that
    // call was (an untraced call sends no sampled traceparent).
    let caller = (!msg.traceparent.is_empty()).then_some(msg.traceparent.as_str());
    let span = im_telemetry::root_span!(
        crate::telemetry::sampled(caller, 0.0),
        "cluster.deliver",
        otel.kind = "consumer",
        im.from_node = %msg.from_node,
        im.push.users = d.user_ids.len() as i64,
        im.push.delivered = tracing::field::Empty,
        im.forwarded = d.forwarded,
    );
    if !msg.traceparent.is_empty() {
        im_telemetry::traceparent::set_parent(&span, &msg.traceparent);
    }
    let _entered = span.enter();
    let origin_here = d.origin_node == cluster.run.node && d.origin_epoch == cluster.run.epoch;
    let targets = Targets {
        platforms: &d.platforms,
        exclude_device_ids: &d.exclude_device_ids,
        // A forward back to the first node: only sessions it did not reach.
        newer_than: if d.forwarded && origin_here {
            d.origin_watermark
        } else {
            0
        },
    };
    let table = deps.routes.load();
    let mut missed = Vec::new();
    let delivered = fan_out_each(
        &deps.hub,
        push,
        &d.user_ids,
        &targets,
        &table.descriptors,
        |i, here| {
            if !here {
                missed.push(d.user_ids[i].clone());
            }
        },
    );
    if let Ok(reply) = &delivered {
        span.record("im.push.delivered", i64::from(reply.delivered));
    }
    match delivered {
        Err(e) => {
            tracing::warn!(error = %e, from = %msg.from_node, "cluster: push from another node not delivered");
        }
        Ok(_) if !missed.is_empty() && !d.forwarded => {
            forward(deps, cluster, d, missed, msg.traceparent);
        }
        Ok(_) => {}
    }
}

/// Redis is (back) in reach: this node's sessions go (back) into the registry, and the
/// revocations other nodes made meanwhile are applied here.
async fn resync(cluster: &Cluster, deps: &PushDeps) {
    let mut conns = Vec::new();
    deps.hub.registry.for_each_user(|user, c| {
        conns.push(HeldConnection {
            user: user.to_owned(),
            conn_id: c.conn_id,
            device_id: c.device.device_id.clone(),
            platform: c.device.platform.clone(),
        })
    });
    if cluster.reregister(&conns).await.is_ok() {
        tracing::info!(sessions = conns.len(), "cluster: sessions registered");
    }
    if let Ok(revoked) = cluster.revoked().await {
        // One lock and one write for the whole set (it is in Redis too).
        let _persisted = deps.pipeline.guard.auth.revocation().revoke_many(revoked);
    }
}
