//! Revoked sessions (`sid`): logout, kick, password change. Entries live until the revoked
//! token's `exp`. Behind a trait so cluster mode can back it with Redis while keeping the check
//! synchronous (a local copy answers `is_revoked`).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub trait Revocation: Send + Sync {
    /// Synchronous and in-memory: called on every request and frame.
    fn is_revoked(&self, sid: &str) -> bool;
    /// Denies `sid` until `until` (unix seconds, the token's `exp`).
    fn revoke(&self, sid: &str, until: u64);
    /// Drops entries whose tokens have expired anyway.
    fn sweep(&self, now: u64);
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The single-node denylist, bounded: when full, the entry expiring first makes room.
pub struct MemoryRevocation {
    // RwLock: reads on every request, writes only on revocation and sweeps.
    entries: RwLock<HashMap<String, u64>>,
    max_entries: usize,
}

impl MemoryRevocation {
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: RwLock::default(),
            max_entries: max_entries.max(1),
        }
    }
}

impl Revocation for MemoryRevocation {
    fn is_revoked(&self, sid: &str) -> bool {
        let entries = self.entries.read().expect("revocations poisoned");
        entries.get(sid).is_some_and(|until| *until >= unix_now())
    }

    fn revoke(&self, sid: &str, until: u64) {
        let mut entries = self.entries.write().expect("revocations poisoned");
        if entries.len() >= self.max_entries && !entries.contains_key(sid) {
            entries.retain(|_, u| *u >= unix_now());
            if entries.len() >= self.max_entries {
                let first = entries
                    .iter()
                    .min_by_key(|(_, u)| **u)
                    .map(|(k, _)| k.clone());
                if let Some(k) = first {
                    entries.remove(&k);
                }
            }
        }
        let slot = entries.entry(sid.to_owned()).or_insert(until);
        *slot = (*slot).max(until);
    }

    fn sweep(&self, now: u64) {
        self.entries
            .write()
            .expect("revocations poisoned")
            .retain(|_, until| *until >= now);
    }

    fn len(&self) -> usize {
        self.entries.read().expect("revocations poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_until_exp_then_swept() {
        let r = MemoryRevocation::new(10);
        let now = unix_now();
        r.revoke("s1", now + 100);
        r.revoke("s2", now.saturating_sub(5));
        assert!(r.is_revoked("s1"));
        assert!(
            !r.is_revoked("s2"),
            "an expired token needs no denylist entry"
        );
        r.sweep(now);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn bounded() {
        let r = MemoryRevocation::new(3);
        let now = unix_now();
        for i in 0..10 {
            r.revoke(&format!("s{i}"), now + 100 + i);
        }
        assert_eq!(r.len(), 3);
        assert!(r.is_revoked("s9"));
    }
}
