//! Reconnect delays for the background tasks that lose a dependency (Redis, etcd): exponential
//! from `min` to `max`, each with up to 100 % jitter added (backon), so nodes that lost it
//! together do not come back in step.

use std::time::Duration;

use backon::BackoffBuilder;

/// Endless delays: `min`, `2 min`, ... up to `max`, each jittered into `[d, 2d)`.
pub fn delays(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    let mut inner = backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build();
    std::iter::from_fn(move || Some(inner.next().unwrap_or(max)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_are_jittered() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let first: Vec<Duration> = delays(min, max).take(12).collect();
        assert!(first[0] >= min && first[0] < min * 2, "{first:?}");
        assert!(first.iter().all(|d| *d < max * 2), "{first:?}");
        assert!(first[11] >= max, "reaches the cap: {first:?}");
        let again: Vec<Duration> = delays(min, max).take(12).collect();
        assert_ne!(first, again, "two runs are not in step");
    }
}
