//! The order of a connection's registry operations. Opening a session registers it in Redis
//! (the multi-device script), closing it removes it; both used to be tasks of their own, so a
//! session that closed before its registration landed could be removed first and registered
//! after, leaving an entry for a dead connection for a day. Here every operation goes through one
//! bounded queue per shard (connections are spread over [`SHARDS`] by id), run by one task per
//! shard, in order: a connection's removal always follows its registration, and a pair still
//! queued together cancels out without touching Redis (a reconnect storm's short sessions).
//!
//! A full queue never blocks a session: a registration that does not fit is left to the next
//! resync (which re-registers every open session), a removal to the retried unregistrations.

use std::sync::{Mutex, PoisonError};

use prometheus::IntGauge;
use tokio::sync::mpsc;

use crate::policy::MultiDevicePolicy;

/// Queues (and tasks) operations are spread over by connection id: Redis round trips in flight.
const SHARDS: usize = 8;
/// Operations waiting per shard; past it, the fallbacks above.
const QUEUE: usize = 8_192;
/// Operations one task takes from its queue at a time (a registered-then-closed pair in one
/// batch cancels out).
pub const BATCH: usize = 256;

/// One registry operation of one connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Register {
        user: String,
        conn_id: u64,
        device_id: String,
        platform: String,
        policy: MultiDevicePolicy,
    },
    Unregister {
        user: String,
        conn_id: u64,
    },
}

impl Op {
    pub fn conn_id(&self) -> u64 {
        match self {
            Op::Register { conn_id, .. } | Op::Unregister { conn_id, .. } => *conn_id,
        }
    }
}

/// The per-shard queues; the receivers wait here until the node task starts the workers.
pub struct Registrations {
    shards: Vec<mpsc::Sender<Op>>,
    // A std Mutex: taken once, when the workers start.
    receivers: Mutex<Option<Vec<mpsc::Receiver<Op>>>>,
    /// Operations queued and not yet done: the `cluster_registry_queue` gauge itself, counted up
    /// and down in place. (Workers used to `set` it to what their own `fetch_sub` returned: a
    /// worker preempted between the two wrote its older count over a later one's 0, and the
    /// gauge stayed above 0 with nothing queued.)
    pending: IntGauge,
}

impl Registrations {
    /// Empty queues counting into `pending`.
    pub fn new(pending: IntGauge) -> Self {
        let (shards, receivers) = (0..SHARDS).map(|_| mpsc::channel(QUEUE)).unzip();
        Self {
            shards,
            receivers: Mutex::new(Some(receivers)),
            pending,
        }
    }

    /// Queues `op` behind the earlier operations of its connection; false when its shard is full.
    pub fn queue(&self, op: Op) -> bool {
        let shard = (op.conn_id() % SHARDS as u64) as usize;
        let queued = self.shards[shard].try_send(op).is_ok();
        if queued {
            self.pending.inc();
        }
        queued
    }

    /// Operations queued and not yet done.
    pub fn pending(&self) -> i64 {
        self.pending.get()
    }

    /// The shard receivers, once (the node task runs them; later calls get none).
    pub fn take_receivers(&self) -> Vec<mpsc::Receiver<Op>> {
        self.receivers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default()
    }

    /// Marks `n` operations done.
    pub fn done(&self, n: usize) {
        self.pending.sub(n as i64);
    }
}

/// `ops` in order, without each registration whose removal follows in the same batch (nor
/// that removal): the connection opened and closed before Redis heard of it.
pub fn cancel_pairs(ops: Vec<Op>) -> Vec<Op> {
    let mut keep = vec![true; ops.len()];
    for (i, op) in ops.iter().enumerate() {
        if let Op::Unregister { conn_id, .. } = op {
            let open = ops[..i]
                .iter()
                .enumerate()
                .rev()
                .find(|(j, o)| keep[*j] && o.conn_id() == *conn_id);
            if let Some((j, Op::Register { .. })) = open {
                keep[j] = false;
                keep[i] = false;
            }
        }
    }
    ops.into_iter()
        .zip(keep)
        .filter_map(|(op, keep)| keep.then_some(op))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(conn_id: u64) -> Op {
        Op::Register {
            user: "u".into(),
            conn_id,
            device_id: "d".into(),
            platform: "web".into(),
            policy: MultiDevicePolicy::default(),
        }
    }

    fn unreg(conn_id: u64) -> Op {
        Op::Unregister {
            user: "u".into(),
            conn_id,
        }
    }

    #[test]
    fn a_registration_and_its_removal_in_one_batch_cancel_out() {
        let ops = vec![reg(1), reg(2), unreg(1), unreg(3), reg(4)];
        assert_eq!(cancel_pairs(ops), vec![reg(2), unreg(3), reg(4)]);
        // A removal whose registration was already applied stays.
        assert_eq!(cancel_pairs(vec![unreg(2)]), vec![unreg(2)]);
    }
}
