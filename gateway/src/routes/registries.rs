//! State that outlives route tables: endpoint health, rate-limiter buckets and discovered
//! endpoint sets.

use crate::discovery::DiscoveredSets;
use crate::filters::ratelimit::LimiterRegistry;
use crate::upstream::HealthRegistry;

/// State that outlives route tables: endpoint health, rate-limiter buckets and what discovery
/// found, looked up by tables as they are built so reloads keep what did not change.
#[derive(Clone, Default)]
pub struct Registries {
    pub health: HealthRegistry,
    pub limiters: LimiterRegistry,
    pub discovered: DiscoveredSets,
}
