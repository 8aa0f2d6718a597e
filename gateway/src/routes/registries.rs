//! State that outlives route tables: endpoint health and rate-limiter buckets.

use crate::filters::ratelimit::LimiterRegistry;
use crate::upstream::HealthRegistry;

/// State that outlives route tables: endpoint health and rate-limiter buckets, looked up by
/// tables as they are built so reloads keep what did not change.
#[derive(Clone, Default)]
pub struct Registries {
    pub health: HealthRegistry,
    pub limiters: LimiterRegistry,
}
