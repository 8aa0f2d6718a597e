//! Keyed token buckets (governor's GCRA) with memory bounded **at insertion**: each limiter keeps
//! at most `max_keys` keys in sharded LRU maps, so a flood of distinct keys evicts the oldest idle
//! ones instead of growing memory. A sweep drops keys whose bucket is full again (equivalent to
//! absent). Limiters are shared across reloads by their settings, so unchanged limits keep state.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use crate::policy::{LimitScope, RateLimitKey, RateLimitSpec};
use crate::sharded::Lru;

/// GCRA state (theoretical arrival time, ns since the limiter's start) per key, in LRU shards
/// with a hard total cap. A cheap clone handle: the limiter and the sweeper share the maps.
pub struct BoundedStore<K: Hash + Eq>(Arc<Lru<K, u64>>);

impl<K: Hash + Eq> Clone for BoundedStore<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    pub fn new(max_keys: usize) -> Self {
        Self(Arc::new(Lru::new(max_keys)))
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Drops keys whose theoretical arrival time is not after `now` (their bucket is full).
    pub fn sweep(&self, now: u64) {
        self.0.evict(|_, tat| *tat <= now);
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.0.shard(key);
        if let Some(slot) = map.get_mut(key) {
            let (result, tat) = f(Some(Nanos::from(*slot)))?;
            *slot = tat.into();
            return Ok(result);
        }
        let (result, tat) = f(None)?;
        // `push` evicts the least recently used key when the shard is full.
        map.push(key.clone(), tat.into());
        Ok(result)
    }
}

/// The outcome of one check, with what the RateLimit headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again (`RateLimit-Reset`).
    pub reset_secs: u64,
    /// On rejection: whole seconds until one request would pass (`Retry-After`), at least 1.
    pub retry_after_secs: u64,
}

/// One limit (`per_second`, `burst`) over many keys.
pub struct KeyedLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<String, BoundedStore<String>, C, StateInformationMiddleware>,
    store: BoundedStore<String>,
    clock: C,
    start: C::Instant,
    burst: u32,
    period: Duration,
}

impl KeyedLimiter<DefaultClock> {
    pub fn new(spec: &RateLimitSpec, max_keys: usize) -> Self {
        Self::with_clock(spec, max_keys, DefaultClock::default())
    }
}

impl<C: Clock + Clone> KeyedLimiter<C> {
    pub fn with_clock(spec: &RateLimitSpec, max_keys: usize, clock: C) -> Self {
        let period = Duration::from_secs_f64(1.0 / spec.per_second);
        let burst = NonZeroU32::new(spec.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        let store = BoundedStore::new(max_keys);
        let limiter: RateLimiter<String, _, C, NoOpMiddleware<C::Instant>> =
            RateLimiter::new(quota, store.clone(), clock.clone());
        let limiter = limiter.with_middleware::<StateInformationMiddleware>();
        // Taken after the limiter's own start, so sweeping relative to it is conservative.
        let start = clock.now();
        Self {
            limiter,
            store,
            clock,
            start,
            burst: burst.get(),
            period,
        }
    }

    pub fn check(&self, key: &String) -> Decision {
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = self.burst.saturating_sub(remaining);
                Decision {
                    allowed: true,
                    limit: self.burst,
                    remaining,
                    reset_secs: (self.period * missing).as_secs_f64().ceil() as u64,
                    retry_after_secs: 0,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    allowed: false,
                    limit: self.burst,
                    remaining: 0,
                    reset_secs: (self.period * self.burst).as_secs_f64().ceil() as u64,
                    retry_after_secs: (wait.as_secs_f64().ceil() as u64).max(1),
                }
            }
        }
    }

    pub fn keys(&self) -> usize {
        self.store.len()
    }

    /// Forgets keys whose bucket has refilled.
    pub fn sweep(&self) {
        let now = self.clock.now().duration_since(self.start);
        self.store.sweep(now.into());
    }
}

/// Which limiter a route uses: `ip` and `user` limits with equal settings share one limiter (one
/// budget per client across those routes); `route_user` limits are per route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimiterId {
    pub route: Option<String>,
    pub key: RateLimitKey,
    pub per_second_bits: u64,
    pub burst: u32,
    pub scope: LimitScope,
}

impl LimiterId {
    pub fn of(route: &str, spec: &RateLimitSpec) -> Self {
        Self {
            route: (spec.key == RateLimitKey::RouteUser).then(|| route.to_owned()),
            key: spec.key,
            per_second_bits: spec.per_second.to_bits(),
            burst: spec.burst,
            scope: spec.scope,
        }
    }
}

/// A route's rate limit, resolved to a limiter shared with the routes (and reloads) that use
/// the same settings.
#[derive(Clone)]
pub struct RouteLimit {
    pub limiter: Arc<KeyedLimiter>,
    pub spec: RateLimitSpec,
    pub id: LimiterId,
}

/// Every limiter in use, by id; reloads reuse unchanged ones (and so their state).
#[derive(Clone)]
pub struct LimiterRegistry {
    // A std Mutex: touched when a table is built or swept, never per request.
    limiters: Arc<Mutex<HashMap<LimiterId, Arc<KeyedLimiter>>>>,
    max_keys: usize,
}

impl Default for LimiterRegistry {
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl LimiterRegistry {
    /// `max_keys`: the cap on live keys of each limiter.
    pub fn new(max_keys: usize) -> Self {
        Self {
            limiters: Arc::default(),
            max_keys,
        }
    }

    pub fn limiter(&self, id: LimiterId, spec: &RateLimitSpec) -> Arc<KeyedLimiter> {
        let mut map = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(id)
            .or_insert_with(|| Arc::new(KeyedLimiter::new(spec, self.max_keys)))
            .clone()
    }

    /// Drops limiters no longer referenced by the current table.
    pub fn retain(&self, keep: &HashSet<LimiterId>) {
        let mut map = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|id, _| keep.contains(id));
    }

    /// The limiters in use, copied out so no lock is held while they are walked.
    fn snapshot(&self) -> Vec<Arc<KeyedLimiter>> {
        let map = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
        map.values().cloned().collect()
    }

    pub fn sweep(&self) {
        for l in self.snapshot() {
            l.sweep();
        }
    }

    /// Live keys over all limiters (the `ratelimit_keys` metric).
    pub fn live_keys(&self) -> usize {
        self.snapshot().iter().map(|l| l.keys()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn spec(per_second: f64, burst: u32) -> RateLimitSpec {
        RateLimitSpec {
            key: RateLimitKey::Ip,
            per_second,
            burst,
            scope: LimitScope::Node,
        }
    }

    #[test]
    fn burst_then_refill_at_rate() {
        let clock = FakeRelativeClock::default();
        let l = KeyedLimiter::with_clock(&spec(2.0, 5), 100, clock.clone());
        let allowed = (0..8).filter(|_| l.check(&"a".to_string()).allowed).count();
        assert_eq!(allowed, 5, "exactly the burst passes");
        let d = l.check(&"a".to_string());
        assert!(!d.allowed);
        assert_eq!((d.limit, d.remaining, d.retry_after_secs), (5, 0, 1));
        // 2/s: one token every 500 ms.
        clock.advance(Duration::from_millis(499));
        assert!(!l.check(&"a".to_string()).allowed);
        clock.advance(Duration::from_millis(1));
        assert!(l.check(&"a".to_string()).allowed);
        assert!(!l.check(&"a".to_string()).allowed);
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            (0..3).filter(|_| l.check(&"a".to_string()).allowed).count(),
            2
        );
        // Other keys are independent.
        assert!(l.check(&"b".to_string()).allowed);
    }

    #[test]
    fn remaining_and_reset_headers() {
        let clock = FakeRelativeClock::default();
        let l = KeyedLimiter::with_clock(&spec(1.0, 3), 100, clock);
        let d = l.check(&"k".to_string());
        assert_eq!((d.limit, d.remaining, d.reset_secs), (3, 2, 1));
        let d = l.check(&"k".to_string());
        assert_eq!((d.remaining, d.reset_secs), (1, 2));
    }

    #[test]
    fn keys_are_capped_at_insertion_and_oldest_idle_evicted() {
        let clock = FakeRelativeClock::default();
        let l = KeyedLimiter::with_clock(&spec(1.0, 1), 1_600, clock);
        for i in 0..200_000 {
            l.check(&format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255));
            if i % 10_000 == 0 {
                assert!(l.keys() <= 1_600, "{} keys", l.keys());
            }
        }
        assert!(l.keys() <= 1_600);
        // The most recent key is still limited; the oldest was evicted (fresh bucket again).
        assert!(!l.check(&"10.3.13.63".to_string()).allowed);
        assert!(l.check(&"10.0.0.0".to_string()).allowed);
    }

    #[test]
    fn sweep_drops_refilled_keys() {
        let clock = FakeRelativeClock::default();
        let l = KeyedLimiter::with_clock(&spec(10.0, 2), 100, clock.clone());
        l.check(&"a".to_string());
        l.check(&"b".to_string());
        l.sweep();
        assert_eq!(l.keys(), 2);
        clock.advance(Duration::from_secs(1));
        l.sweep();
        assert_eq!(l.keys(), 0);
    }

    #[test]
    fn registry_reuses_unchanged_limits() {
        let reg = LimiterRegistry::new(10);
        let s = spec(1.0, 1);
        let a = reg.limiter(LimiterId::of("r1", &s), &s);
        assert!(
            Arc::ptr_eq(&a, &reg.limiter(LimiterId::of("r2", &s), &s)),
            "ip limits share"
        );
        let ru = RateLimitSpec {
            key: RateLimitKey::RouteUser,
            ..s.clone()
        };
        let b = reg.limiter(LimiterId::of("r1", &ru), &ru);
        assert!(!Arc::ptr_eq(
            &b,
            &reg.limiter(LimiterId::of("r2", &ru), &ru)
        ));
        let changed = spec(2.0, 1);
        assert!(!Arc::ptr_eq(
            &a,
            &reg.limiter(LimiterId::of("r1", &changed), &changed)
        ));
    }
}
