//! Keyed state split over locks by the key's hash, so calls on different keys rarely contend:
//! the one sharding the gateway uses, for the verified-token cache, the rate limiters' buckets
//! and the session registry. [`Lru`] is the capped form the first two need (least recently used
//! evicted at insertion, so a flood of distinct keys cannot grow memory).
//!
//! Hand-written rather than moka: the token cache and the limiters are looked up on every request,
//! and a `Mutex<LruCache>` shard answers in one uncontended lock; the expiry the token cache needs
//! is a deadline stored with each entry.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard, PoisonError};

use lru::LruCache;

/// `T` (a lock around a map) once per shard, chosen by the key's hash.
pub struct Sharded<T> {
    shards: Box<[T]>,
    hasher: RandomState,
}

impl<T> Sharded<T> {
    pub fn new(shards: usize, make: impl FnMut() -> T) -> Self {
        Self {
            shards: std::iter::repeat_with(make).take(shards.max(1)).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The shard that holds `key`.
    pub fn of<Q: Hash + ?Sized>(&self, key: &Q) -> &T {
        &self.shards[self.hasher.hash_one(key) as usize % self.shards.len()]
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter()
    }
}

const LRU_SHARDS: usize = 16;

/// At most `cap` entries over `LRU_SHARDS` LRU maps (each `cap / LRU_SHARDS`, at least one).
pub struct Lru<K: Hash + Eq, V>(Sharded<Mutex<LruCache<K, V>>>);

impl<K: Hash + Eq, V> Lru<K, V> {
    pub fn new(cap: usize) -> Self {
        let per_shard = NonZeroUsize::new(cap.div_ceil(LRU_SHARDS)).unwrap_or(NonZeroUsize::MIN);
        Self(Sharded::new(LRU_SHARDS, || {
            Mutex::new(LruCache::new(per_shard))
        }))
    }

    /// The locked shard of `key`: held for one lookup or update, never across `.await`.
    pub fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, LruCache<K, V>> {
        lock(self.0.of(key))
    }

    /// Entries over all shards.
    pub fn len(&self) -> usize {
        self.0.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the entries `stale` picks, one shard locked at a time.
    pub fn evict(&self, mut stale: impl FnMut(&K, &V) -> bool)
    where
        K: Clone,
    {
        for shard in self.0.iter() {
            let mut map = lock(shard);
            let gone: Vec<K> = map
                .iter()
                .filter(|(k, v)| stale(k, v))
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                map.pop(&k);
            }
        }
    }
}

/// A shard's lock; a panic elsewhere while it was held leaves a map that is still consistent
/// (every update is one insert or pop), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_at_insertion_and_eviction_picks() {
        let lru: Lru<u32, u32> = Lru::new(64);
        for k in 0..10_000 {
            lru.shard(&k).push(k, k);
        }
        assert!(lru.len() <= 64, "{}", lru.len());
        lru.evict(|_, v| v % 2 == 0);
        assert!(lru.len() <= 64);
        let mut odd = 0;
        for k in 0..10_000u32 {
            if let Some(v) = lru.shard(&k).get(&k) {
                assert_eq!(v % 2, 1);
                odd += 1;
            }
        }
        assert_eq!(odd, lru.len());
        let tiny: Lru<u32, ()> = Lru::new(0);
        tiny.shard(&1).push(1, ());
        assert_eq!(tiny.len(), 1, "a zero cap still keeps one per shard");
    }

    #[test]
    fn a_key_and_its_borrowed_form_share_a_shard() {
        let lru: Lru<Box<str>, u8> = Lru::new(1_000);
        lru.shard("token").push("token".into(), 7);
        assert_eq!(lru.shard("token").get("token"), Some(&7));
    }
}
