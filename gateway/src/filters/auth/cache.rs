//! The verified-token cache: a client's signature is checked once, not per request.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

use super::Identity;

const CACHE_SHARDS: usize = 16;

/// Verified tokens by their exact text, in LRU shards with a hard total cap.
pub(super) struct TokenCache {
    // One std Mutex per shard, held for a lookup or an insert; never across `.await`.
    shards: Vec<Mutex<LruCache<Box<str>, Arc<Identity>>>>,
    hasher: RandomState,
}

impl TokenCache {
    pub(super) fn new(cap: usize) -> Option<Self> {
        let per_shard = NonZeroUsize::new(cap.div_ceil(CACHE_SHARDS))?;
        Some(Self {
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: RandomState::new(),
        })
    }

    fn shard(&self, token: &str) -> &Mutex<LruCache<Box<str>, Arc<Identity>>> {
        &self.shards[self.hasher.hash_one(token) as usize % CACHE_SHARDS]
    }

    pub(super) fn get(&self, token: &str) -> Option<Arc<Identity>> {
        self.shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    pub(super) fn put(&self, token: &str, id: Arc<Identity>) {
        self.shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(token.into(), id);
    }
}
