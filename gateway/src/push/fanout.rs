//! Delivering one push to this node's sessions: the frame encoded lazily, once per encoding in
//! use, and shared (reference-counted) by every recipient. PushService calls it for a single
//! node; in cluster mode both the calling node and each node a push is routed to do.

use im_proto::im::gateway::v1::{Push, PushReply};
use prost_reflect::DescriptorPool;

use super::frames::{encode_push, Outbound};
use super::hub::Hub;
use super::registry::Device;

/// Which of a user's connections a push reaches (empty lists: all).
pub struct Targets<'a> {
    pub platforms: &'a [String],
    pub exclude_device_ids: &'a [String],
    /// On this node, only connections with this id or a higher one (0: all): a forwarded push
    /// reaches the sender's connections that did not exist when it delivered.
    pub newer_than: u64,
}

impl Targets<'_> {
    pub fn admits(&self, device: &Device) -> bool {
        (self.platforms.is_empty() || self.platforms.contains(&device.platform))
            && !self.exclude_device_ids.contains(&device.device_id)
    }
}

/// Delivers one push to every targeted connection of `users` on this node. The frame is encoded
/// lazily, once per encoding in use, and shared (reference-counted) by every recipient: the
/// per-recipient cost is a queue slot, no copy.
pub fn fan_out(
    hub: &Hub,
    push: &Push,
    users: &[String],
    targets: &Targets<'_>,
    descriptors: &DescriptorPool,
) -> Result<PushReply, String> {
    fan_out_each(hub, push, users, targets, descriptors, |_, _| {})
}

/// [`fan_out`], telling `online(i, is_online)` about each of `users` on this node.
pub fn fan_out_each(
    hub: &Hub,
    push: &Push,
    users: &[String],
    targets: &Targets<'_>,
    descriptors: &DescriptorPool,
    mut online_here: impl FnMut(usize, bool),
) -> Result<PushReply, String> {
    let mut encoded: [Option<Outbound>; 2] = [None, None];
    let mut reply = PushReply::default();
    let mut failed = None;
    for (i, user) in users.iter().enumerate() {
        let mut online = false;
        hub.registry.visit(user, &mut |conn| {
            if failed.is_some()
                || !targets.admits(&conn.device)
                || conn.conn_id < targets.newer_than
            {
                return;
            }
            online = true;
            let slot = &mut encoded[conn.handle.encoding as usize];
            if slot.is_none() {
                match encode_push(conn.handle.encoding, push, descriptors) {
                    Ok(frame) => *slot = Some(frame),
                    Err(e) => {
                        failed = Some(e);
                        return;
                    }
                }
            }
            if let Some(frame) = slot {
                if hub.deliver(conn, frame.clone()) {
                    reply.delivered += 1;
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        online_here(i, online);
        if online {
            reply.users_online += 1;
        } else {
            reply.users_offline += 1;
        }
    }
    Ok(reply)
}
