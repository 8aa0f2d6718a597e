//! Following a push up: users registered on this node whose session is gone (a drain closed
//! them, their network moved them) are looked up again a few times and the push forwarded once
//! to the connections it has not reached.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use im_proto::im::gateway::v1::{node_message, NodeDeliver};

use super::fanout::{fan_out_each, Targets};
use super::registry::Device;
use super::PushDeps;
use crate::cluster::keys::Entry;
use crate::cluster::Cluster;

/// The other nodes' connections of `users` that `targets` admits and `include` lets through,
/// batched by node: the users (each once) and the connections. `found(i)` for each user with one.
pub(super) fn by_node(
    cluster: &Cluster,
    users: &[String],
    located: &[Vec<Entry>],
    targets: &Targets<'_>,
    include: impl Fn(&Entry) -> bool,
    mut found: impl FnMut(usize, &Entry),
) -> HashMap<String, (Vec<String>, u32)> {
    let mut batches: HashMap<String, (Vec<String>, u32)> = HashMap::new();
    for (i, entries) in located.iter().enumerate() {
        for e in entries
            .iter()
            .filter(|e| e.run != cluster.run && include(e))
        {
            let device = Device {
                device_id: e.device_id.clone(),
                platform: e.platform.clone(),
            };
            if !targets.admits(&device) {
                continue;
            }
            let batch = batches.entry(e.run.node.clone()).or_default();
            if batch.0.last() != Some(&users[i]) {
                batch.0.push(users[i].clone());
            }
            batch.1 += 1;
            found(i, e);
        }
    }
    batches
}

/// Whether a push already reached `e` (or it did not exist when the push was delivered): its node
/// was sent the push, or it is the first node's connection from before its local delivery.
fn reached(deliver: &NodeDeliver, e: &Entry) -> bool {
    let origin = e.run.node == deliver.origin_node && e.run.epoch == deliver.origin_epoch;
    deliver.sent_to_runs.contains(&e.run.member())
        || (origin && e.conn_id < deliver.origin_watermark)
}

/// When a push for users who left a node is looked up again: by then a user who reconnected
/// elsewhere has registered there (registration takes one Redis round trip).
const FORWARD_AFTER: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1500),
];

/// A push for users registered on this node but with no session here any more: they left (a
/// drain closed them, their network moved them) and reconnected elsewhere after the sender looked
/// them up. Looks them up again and forwards the push once to the connections it has not reached;
/// a user found nowhere new is given up (their client catches up by `after_seq`: the message was
/// stored before it was pushed). Bounded: past `cluster.max_inflight_sends` forwards at once, the
/// push is not forwarded (counted).
pub(super) fn forward(
    deps: &Arc<PushDeps>,
    cluster: &Arc<Cluster>,
    deliver: NodeDeliver,
    missed: Vec<String>,
    traceparent: String,
) {
    let Some(permit) = cluster.forward_permit() else {
        let busy = cluster
            .metrics
            .cluster_forwards
            .with_label_values(&["busy"]);
        busy.inc_by(missed.len() as u64);
        return;
    };
    let (deps, cluster) = (deps.clone(), cluster.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let traceparent = Some(traceparent.as_str()).filter(|t| !t.is_empty());
        let mut pending = missed;
        for delay in FORWARD_AFTER {
            tokio::time::sleep(delay).await;
            let Ok(found) = round(&deps, &cluster, &deliver, &pending, traceparent).await else {
                continue;
            };
            let mut found = found.into_iter();
            pending.retain(|_| !found.next().unwrap_or(false));
            if pending.is_empty() {
                return;
            }
        }
        let gave_up = cluster
            .metrics
            .cluster_forwards
            .with_label_values(&["gave_up"]);
        gave_up.inc_by(pending.len() as u64);
        tracing::debug!(users = ?pending, "cluster: push not forwarded: its users are nowhere new");
    });
}

/// One look-up of `pending` and the forwards it finds: whether each user was found (`Err` when
/// Redis did not answer).
async fn round(
    deps: &PushDeps,
    cluster: &Cluster,
    deliver: &NodeDeliver,
    pending: &[String],
    traceparent: Option<&str>,
) -> Result<Vec<bool>, ()> {
    let origin_here =
        deliver.origin_node == cluster.run.node && deliver.origin_epoch == cluster.run.epoch;
    let targets = Targets {
        platforms: &deliver.platforms,
        exclude_device_ids: &deliver.exclude_device_ids,
        // Here, only the sessions opened after this node delivered.
        newer_than: deliver.origin_watermark,
    };
    let located = cluster.locate(pending).await.map_err(drop)?;
    let forwarded = cluster
        .metrics
        .cluster_forwards
        .with_label_values(&["forwarded"]);
    let mut found = vec![false; pending.len()];
    if let (true, Some(push)) = (origin_here, &deliver.push) {
        // Users who came back to this node.
        let table = deps.routes.load();
        let local = fan_out_each(
            &deps.hub,
            push,
            pending,
            &targets,
            &table.descriptors,
            |i, here| found[i] |= here,
        );
        if let Ok(reply) = local {
            forwarded.inc_by(u64::from(reply.delivered));
        }
    }
    let fresh = |e: &Entry| !reached(deliver, e);
    let batches = by_node(cluster, pending, &located, &targets, fresh, |i, _| {
        found[i] = true
    });
    for (node, (user_ids, _)) in batches {
        let users = user_ids.len() as u64;
        let body = node_message::Body::Deliver(NodeDeliver {
            user_ids,
            forwarded: true,
            ..deliver.clone()
        });
        if cluster.send(&node, traceparent, body).await.is_ok() {
            forwarded.inc_by(users);
            tracing::debug!(%node, users, "cluster: push forwarded to where its users went");
        }
    }
    Ok(found)
}
