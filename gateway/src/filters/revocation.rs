//! Revoked sessions (`sid`): logout, kick, admin revoke. An entry lives until the session's
//! absolute end (the token's `sxp` claim; [`MAX_SESSION_SECS`] from now for tokens without one),
//! not until one token's `exp`: a refreshed token keeps its `sid`, so a kick must outlive every
//! token the session can still get. Behind a trait so cluster mode can back it with Redis while
//! keeping the check synchronous (a local copy answers `is_revoked`).
//!
//! Single node: with `auth.revocation_file` the denylist survives a restart. Every change rewrites
//! the file atomically (temporary file, fsync, rename, fsync of the directory) under the write
//! lock, so the file always holds a state the gateway had; it is bounded like the list
//! (`auth.max_revoked`). An unreadable or corrupt file stops start-up.

use crate::clock::unix_now;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// The longest a session lives from its login (the backends' `--max-session-secs` default): the
/// one fallback for revocations without an end and for tokens without `sxp`.
pub const MAX_SESSION_SECS: u64 = 30 * 86_400;

pub trait Revocation: Send + Sync {
    /// Synchronous and in-memory: called on every request and frame.
    fn is_revoked(&self, sid: &str) -> bool;
    /// Denies `sid` until `until` (unix seconds, the session's end).
    fn revoke(&self, sid: &str, until: u64);
    /// Drops entries whose sessions have ended anyway.
    fn sweep(&self, now: u64);
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The single-node denylist, bounded: when full, the entry expiring first makes room.
pub struct MemoryRevocation {
    // RwLock: reads on every request, writes only on revocation and sweeps. It never poisons
    // in practice (nothing under it panics); a poisoned one is recovered, not propagated.
    entries: RwLock<HashMap<String, u64>>,
    max_entries: usize,
    file: Option<PathBuf>,
}

/// The file format: one JSON object, `{"version": 1, "revoked": {"<sid>": <until>, ...}}`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    version: u32,
    revoked: HashMap<String, u64>,
}

impl MemoryRevocation {
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: RwLock::default(),
            max_entries: max_entries.max(1),
            file: None,
        }
    }

    /// A denylist kept in `file` too: loaded now (a missing file is an empty list), rewritten on
    /// every change. Errors name the file and what is wrong with it.
    pub fn persistent(max_entries: usize, file: &Path) -> Result<Self, String> {
        let mut list = Self::new(max_entries);
        match std::fs::read(file) {
            Ok(bytes) => {
                let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| {
                    format!(
                        "auth.revocation_file {}: not a revocation file ({e}); fix or remove it",
                        file.display()
                    )
                })?;
                if stored.version != 1 {
                    return Err(format!(
                        "auth.revocation_file {}: version {} is not supported (1 is)",
                        file.display(),
                        stored.version
                    ));
                }
                let now = unix_now();
                let mut live: Vec<(String, u64)> = stored
                    .revoked
                    .into_iter()
                    .filter(|(_, u)| *u >= now)
                    .collect();
                // Over the bound (a smaller max_revoked than before): keep the longest-lived.
                live.sort_by_key(|e| std::cmp::Reverse(e.1));
                live.truncate(list.max_entries);
                list.entries = RwLock::new(live.into_iter().collect());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "auth.revocation_file {}: cannot read it: {e}",
                    file.display()
                ))
            }
        }
        list.file = Some(file.to_owned());
        // Proves the file can be written before the gateway relies on it.
        list.persist(&list.read())?;
        Ok(list)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, u64>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, u64>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `entries` to the file, if there is one: temporary file, fsync, rename, fsync dir.
    fn persist(&self, entries: &HashMap<String, u64>) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let stored = Stored {
            version: 1,
            revoked: entries.clone(),
        };
        let tmp = file.with_extension("tmp");
        let written = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&stored).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, file)?;
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!(
                "auth.revocation_file {}: cannot write it: {e}",
                file.display()
            )
        })
    }

    fn persist_or_log(&self, entries: &HashMap<String, u64>) {
        if let Err(e) = self.persist(entries) {
            // The in-memory list still denies the session; only a restart would forget it.
            tracing::error!("{e}");
        }
    }
}

impl Revocation for MemoryRevocation {
    fn is_revoked(&self, sid: &str) -> bool {
        self.read()
            .get(sid)
            .is_some_and(|until| *until >= unix_now())
    }

    fn revoke(&self, sid: &str, until: u64) {
        let mut entries = self.write();
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
        self.persist_or_log(&entries);
    }

    fn sweep(&self, now: u64) {
        let mut entries = self.write();
        let before = entries.len();
        entries.retain(|_, until| *until >= now);
        if entries.len() != before {
            self.persist_or_log(&entries);
        }
    }

    fn len(&self) -> usize {
        self.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_until_the_end_then_swept() {
        let r = MemoryRevocation::new(10);
        let now = unix_now();
        r.revoke("s1", now + 100);
        r.revoke("s2", now.saturating_sub(5));
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
            r.revoke(&format!("s{i}"), now + 100 + i);
        }
        assert_eq!(r.len(), 3);
        assert!(r.is_revoked("s9"));
    }

    #[test]
    fn a_file_keeps_the_list_and_a_corrupt_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("im-revoked-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("revoked.json");
        let _ = std::fs::remove_file(&file);
        let r = MemoryRevocation::persistent(10, &file).unwrap();
        r.revoke("s1", unix_now() + 100);
        drop(r);
        let again = MemoryRevocation::persistent(10, &file).unwrap();
        assert!(again.is_revoked("s1"));
        std::fs::write(&file, "{not json").unwrap();
        let err = MemoryRevocation::persistent(10, &file).err().unwrap();
        assert!(
            err.contains("auth.revocation_file") && err.contains("revoked.json"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
