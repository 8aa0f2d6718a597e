//! Cluster-wide rate limits (`scope: cluster`, cluster mode): one bucket per key for the whole
//! cluster, taken in Redis by an atomic script, so two nodes hammered at once never admit more
//! than the limit together. While Redis cannot answer, each node falls back to its share: a
//! local bucket with the limit divided by the live nodes it last knew, counted in
//! `im_gateway_ratelimit_cluster_fallbacks_total`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::ratelimit::{Decision, KeyedLimiter, LimiterId};
use crate::cluster::{Cluster, ClusterError};
use crate::metrics::Metrics;
use crate::policy::RateLimitSpec;

pub struct ClusterLimits {
    cluster: Arc<Cluster>,
    /// `cluster_bucket.lua`: one take from a bucket, atomically, on Redis's clock.
    bucket: redis::Script,
    metrics: Arc<Metrics>,
    max_keys: usize,
    /// The local share of each limit, by limiter and the node count it was cut for.
    // A std Mutex: held for a lookup, never across `.await`.
    shares: Mutex<HashMap<(LimiterId, usize), Arc<KeyedLimiter>>>,
}

/// Shares kept before the map is cleared (limits times node counts seen; small in practice).
const MAX_SHARES: usize = 1024;

impl ClusterLimits {
    pub fn new(cluster: Arc<Cluster>, metrics: Arc<Metrics>, max_keys: usize) -> Self {
        Self {
            cluster,
            bucket: redis::Script::new(include_str!("cluster_bucket.lua")),
            metrics,
            max_keys,
            shares: Mutex::default(),
        }
    }

    /// One call's decision for `key` under the limit `id` / `spec`.
    pub async fn check(&self, id: &LimiterId, spec: &RateLimitSpec, key: &str) -> Decision {
        let bucket = format!(
            "{}:{:?}:{}:{}|{key}",
            id.route.as_deref().unwrap_or("*"),
            spec.key,
            spec.per_second,
            spec.burst
        );
        match self.take_token(&bucket, spec.per_second, spec.burst).await {
            Ok((allowed, tokens)) => decision(spec, allowed, tokens),
            Err(_) => {
                self.metrics.ratelimit_cluster_fallbacks.inc();
                self.share(id, spec).check(&key.to_owned())
            }
        }
    }

    /// Takes one token from the cluster-wide bucket `bucket` (`per_second` refill, `burst`
    /// capacity): whether it was there, and the tokens left.
    async fn take_token(
        &self,
        bucket: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<(bool, f64), ClusterError> {
        let mut inv = self
            .bucket
            .key(format!("{}rl:{{{bucket}}}", self.cluster.config.prefix));
        inv.arg(per_second / 1000.0).arg(burst);
        let (allowed, milli_tokens): (i64, i64) =
            self.cluster.run_script("rate_limit", inv).await?;
        Ok((allowed == 1, milli_tokens as f64 / 1000.0))
    }

    /// This node's share of the limit while Redis is away.
    fn share(&self, id: &LimiterId, spec: &RateLimitSpec) -> Arc<KeyedLimiter> {
        let nodes = self.cluster.node_count().max(1);
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        if shares.len() > MAX_SHARES {
            shares.clear();
        }
        shares
            .entry((id.clone(), nodes))
            .or_insert_with(|| {
                let share = RateLimitSpec {
                    per_second: spec.per_second / nodes as f64,
                    burst: (spec.burst / nodes as u32).max(1),
                    ..spec.clone()
                };
                Arc::new(KeyedLimiter::new(&share, self.max_keys))
            })
            .clone()
    }
}

/// The decision for a take from a bucket that had `tokens` left afterwards.
fn decision(spec: &RateLimitSpec, allowed: bool, tokens: f64) -> Decision {
    let missing = (f64::from(spec.burst) - tokens).max(0.0);
    Decision {
        allowed,
        limit: spec.burst,
        remaining: tokens.floor() as u32,
        reset_secs: (missing / spec.per_second).ceil() as u64,
        retry_after_secs: if allowed {
            0
        } else {
            (((1.0 - tokens) / spec.per_second).ceil() as u64).max(1)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{LimitScope, RateLimitKey};

    #[test]
    fn decisions_from_a_bucket() {
        let spec = RateLimitSpec {
            key: RateLimitKey::User,
            per_second: 2.0,
            burst: 10,
            scope: LimitScope::Cluster,
        };
        let d = decision(&spec, true, 7.5);
        assert_eq!((d.allowed, d.limit, d.remaining), (true, 10, 7));
        assert_eq!(d.reset_secs, 2, "2.5 tokens at 2/s");
        let d = decision(&spec, false, 0.2);
        assert_eq!((d.allowed, d.remaining, d.retry_after_secs), (false, 0, 1));
    }
}
