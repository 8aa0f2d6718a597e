//! The verified-token cache: a client's signature is checked once, not per request. Entries
//! are capped ([`Lru`]) and expire `auth.token_cache_ttl` after they were verified, so a token is
//! checked against the current keys at least that often.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Identity;
use crate::sharded::Lru;

/// Verified tokens by their exact text, each with the moment it stops being answered.
pub(super) struct TokenCache {
    entries: Lru<Box<str>, (Arc<Identity>, Instant)>,
    ttl: Duration,
}

impl TokenCache {
    /// `None` when `cap` or `ttl` is 0 (the cache is off).
    pub(super) fn new(cap: usize, ttl: Duration) -> Option<Self> {
        (cap > 0 && !ttl.is_zero()).then(|| Self {
            entries: Lru::new(cap),
            ttl,
        })
    }

    pub(super) fn get(&self, token: &str) -> Option<Arc<Identity>> {
        let mut shard = self.entries.shard(token);
        match shard.get(token) {
            Some((id, until)) if Instant::now() < *until => Some(id.clone()),
            Some(_) => {
                shard.pop(token);
                None
            }
            None => None,
        }
    }

    pub(super) fn put(&self, token: &str, id: Arc<Identity>) {
        let until = Instant::now() + self.ttl;
        self.entries.shard(token).push(token.into(), (id, until));
    }

    /// Drops the expired entries (the maintenance sweep).
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        self.entries.evict(|_, (_, until)| *until <= now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Arc<Identity> {
        Arc::new(Identity {
            user_id: "u1".into(),
            sid: None,
            device_id: None,
            platform: None,
            roles: Vec::new(),
            exp: u64::MAX,
            session_end: u64::MAX,
        })
    }

    #[test]
    fn entries_expire_by_time_and_a_zero_cap_or_ttl_turns_it_off() {
        let cache = TokenCache::new(10, Duration::from_millis(50)).unwrap();
        cache.put("t", identity());
        assert!(cache.get("t").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get("t").is_none(), "expired");
        cache.put("t", identity());
        std::thread::sleep(Duration::from_millis(60));
        cache.sweep();
        assert!(cache.entries.is_empty());
        assert!(TokenCache::new(0, Duration::from_secs(1)).is_none());
        assert!(TokenCache::new(10, Duration::ZERO).is_none());
    }
}
