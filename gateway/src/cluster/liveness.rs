//! Which node runs are alive, draining or dead, as the last heartbeat read them: a run is live
//! until the time it last renewed to, dead once that passed without renewal (its registry entries
//! may then be removed), and a run merely missing from the view is never grounds for removing
//! anything.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use super::keys::{Entry, NodeRun};
use super::Cluster;
use crate::clock::unix_ms;

/// Dead runs remembered for cleaning up their registry entries (forgotten wholesale past it).
const MAX_DEAD_RUNS: usize = 4096;

impl Cluster {
    /// Whether `run` announced its leave (as of the last heartbeat): its sessions are closing, so
    /// a push for its users is followed up by the sender (`push::remote`).
    pub fn is_leaving(&self, run: &NodeRun) -> bool {
        self.leaving
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(run)
    }

    pub(super) fn set_leaving(&self, runs: HashSet<NodeRun>) {
        *self.leaving.write().unwrap_or_else(PoisonError::into_inner) = runs;
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

    pub(super) fn is_live(&self, run: &NodeRun, now: u64) -> bool {
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
    pub(super) fn view_ms(&self) -> Option<u64> {
        Some(self.health.view_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    /// An entry to remove: malformed, or of a run this node saw die.
    pub(super) fn lapsed(&self, entry: Option<&Entry>) -> bool {
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
    pub(super) fn update_live(&self, mut others: HashMap<NodeRun, u64>) {
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
}
