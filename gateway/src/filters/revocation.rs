//! Revoked sessions (`sid`): logout, kick, admin revoke. An entry lives until the session's
//! absolute end (the token's `sxp` claim; [`MAX_SESSION_SECS`] from now for tokens without one),
//! not until one token's `exp`: a refreshed token keeps its `sid`, so a kick must outlive every
//! token the session can still get. Cluster mode keeps this node-local copy in step through Redis
//! (`cluster`'s revocation resync), so the check stays synchronous.
//!
//! Single node: with `auth.revocation_file` the denylist survives a restart. The file is an
//! append-only log written off the request path by its own thread ([`super::revocation_log`]):
//! a revocation is in effect at once, on disk after the writer's next sync (one sync covers every
//! revocation queued meanwhile), and [`Persisted::wait`] says when. The lock that every request
//! reads is held only to change the map, never for I/O. An unreadable or corrupt file stops
//! start-up.

use crate::clock::unix_now;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

pub use super::revocation_log::Persisted;
use super::revocation_log::{Entries, LogFile, RevocationLog};

/// The longest a session lives from its login (the backends' `--max-session-secs` default): the
/// one fallback for revocations without an end and for tokens without `sxp`.
pub const MAX_SESSION_SECS: u64 = 30 * 86_400;

/// At the bound, this share of the entries (the first to end) is evicted at once, so a full list
/// pays the scan once per this many revocations, not on each.
const EVICT_SHARE: usize = 100;

/// The single-node denylist, bounded: when full, the entries expiring first make room.
pub struct MemoryRevocation {
    // RwLock: reads on every request, writes only on revocation and sweeps, each a map change
    // and nothing more. It never poisons in practice (nothing under it panics); a poisoned one
    // is recovered, not propagated.
    entries: Entries,
    max_entries: usize,
    log: Option<RevocationLog>,
}

impl MemoryRevocation {
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: Arc::default(),
            max_entries: max_entries.max(1),
            log: None,
        }
    }

    /// A denylist kept in `file` too: loaded now (a missing file is an empty list), appended to
    /// on every revocation. Errors name the file and what is wrong with it.
    pub fn persistent(max_entries: usize, file: &Path) -> Result<Self, String> {
        let max_entries = max_entries.max(1);
        let (file, live) = LogFile::open(file, max_entries, unix_now())?;
        let entries: Entries = Arc::new(RwLock::new(live));
        let log = RevocationLog::start(file, entries.clone())?;
        Ok(Self {
            entries,
            max_entries,
            log: Some(log),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, u64>> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, u64>> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Room for one more: ended sessions first, then the share ending soonest.
    fn make_room(&self, entries: &mut HashMap<String, u64>) {
        let now = unix_now();
        entries.retain(|_, u| *u >= now);
        if entries.len() < self.max_entries {
            return;
        }
        let mut ends: Vec<u64> = entries.values().copied().collect();
        let k = (entries.len() / EVICT_SHARE).max(1) - 1;
        let (_, cut, _) = ends.select_nth_unstable(k);
        let cut = *cut;
        let mut evict = k + 1;
        entries.retain(|_, u| {
            let keep = *u > cut || evict == 0;
            if !keep {
                evict -= 1;
            }
            keep
        });
    }
}

impl MemoryRevocation {
    /// Synchronous and in-memory: called on every request and frame.
    pub fn is_revoked(&self, sid: &str) -> bool {
        self.read()
            .get(sid)
            .is_some_and(|until| *until >= unix_now())
    }

    /// Denies `sid` until `until` (unix seconds, the session's end), at once; the handle says
    /// when that is on disk too.
    pub fn revoke(&self, sid: &str, until: u64) -> Persisted {
        self.revoke_many(vec![(sid.to_owned(), until)])
    }

    /// Several at once (a cluster resync): one lock, one write.
    pub fn revoke_many(&self, revoked: Vec<(String, u64)>) -> Persisted {
        {
            let mut entries = self.write();
            for (sid, until) in &revoked {
                if entries.len() >= self.max_entries && !entries.contains_key(sid) {
                    self.make_room(&mut entries);
                }
                let slot = entries.entry(sid.clone()).or_insert(*until);
                *slot = (*slot).max(*until);
            }
        }
        match &self.log {
            Some(log) => log.append(revoked),
            None => Persisted::in_memory(),
        }
    }

    /// Drops entries whose sessions have ended anyway.
    pub fn sweep(&self, now: u64) {
        // Ended entries leave the file at its next compaction; on load they are skipped.
        self.write().retain(|_, until| *until >= now);
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn revoked_until_the_end_then_swept() {
        let r = MemoryRevocation::new(10);
        let now = unix_now();
        let _ = r.revoke("s1", now + 100);
        let _ = r.revoke("s2", now.saturating_sub(5));
        assert!(r.is_revoked("s1"));
        assert!(!r.is_revoked("s2"), "an ended session needs no entry");
        r.sweep(now);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn bounded() {
        let r = MemoryRevocation::new(3);
        let now = unix_now();
        for i in 0..10 {
            let _ = r.revoke(&format!("s{i}"), now + 100 + i);
        }
        assert_eq!(r.len(), 3);
        assert!(r.is_revoked("s9"));
    }

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("im-revoked-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_file_keeps_the_list_and_a_corrupt_one_is_refused() {
        let dir = scratch("keep");
        let file = dir.join("revoked.json");
        let r = MemoryRevocation::persistent(10, &file).unwrap();
        r.revoke("s1", unix_now() + 100)
            .wait(Duration::from_secs(5))
            .await
            .unwrap();
        // Not waited on: written when the log is dropped.
        let _ = r.revoke("s\n2 \"odd\"", unix_now() + 100);
        drop(r);
        let again = MemoryRevocation::persistent(10, &file).unwrap();
        assert!(again.is_revoked("s1"));
        assert!(
            again.is_revoked("s\n2 \"odd\""),
            "queued at drop, written then"
        );
        drop(again);
        std::fs::write(&file, "{not json").unwrap();
        let err = MemoryRevocation::persistent(10, &file).err().unwrap();
        assert!(
            err.contains("auth.revocation_file") && err.contains("revoked.json"),
            "{err}"
        );
        std::fs::write(&file, "im-revocations 2\n12 \"a\"\nnonsense\n").unwrap();
        let err = MemoryRevocation::persistent(10, &file).err().unwrap();
        assert!(err.contains("line 3"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_version_1_is_read() {
        let dir = scratch("torn");
        let file = dir.join("revoked.json");
        let until = unix_now() + 100;
        std::fs::write(
            &file,
            format!("im-revocations 2\n{until} \"a\"\n{until} \"b"),
        )
        .unwrap();
        let r = MemoryRevocation::persistent(10, &file).unwrap();
        assert!(r.is_revoked("a") && !r.is_revoked("b"));
        drop(r);
        let v1 = format!(r#"{{"version": 1, "revoked": {{"old": {until}}}}}"#);
        std::fs::write(&file, v1).unwrap();
        drop(MemoryRevocation::persistent(10, &file).unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text,
            format!("im-revocations 2\n{until} \"old\"\n"),
            "rewritten as v2"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_log_of_mostly_dead_lines_is_compacted() {
        let dir = scratch("compact");
        let file = dir.join("revoked.json");
        let r = MemoryRevocation::persistent(100, &file).unwrap();
        let until = unix_now() + 100;
        // The same 10 sids again and again: the log grows, the list does not.
        let mut last = Persisted::in_memory();
        for round in 0..1_200 {
            last = r.revoke_many((0..10).map(|i| (format!("s{i}"), until + round)).collect());
        }
        last.wait(Duration::from_secs(10)).await.unwrap();
        drop(r);
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        assert!(lines < 12_000, "never compacted: {lines} lines");
        let again = MemoryRevocation::persistent(100, &file).unwrap();
        assert_eq!(again.len(), 10);
        let _ = std::fs::remove_dir_all(dir);
    }
}
