//! The per-connection frame rate limit: a token bucket owned by the session's reader (no
//! atomics, 32 bytes), with strikes: a client that keeps sending after being refused is closed.

use std::time::Instant;

use super::config::Rate;

/// What to do with one incoming frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Refuse it (RESOURCE_EXHAUSTED) and keep the connection.
    Refuse,
    /// The flood persists: close with 1008.
    Close,
}

#[derive(Debug)]
pub struct FrameBudget {
    tokens: f32,
    last: Instant,
    strikes: u32,
    per_second: f32,
    burst: f32,
    max_strikes: u32,
}

impl FrameBudget {
    pub fn new(rate: Rate, max_strikes: u32, now: Instant) -> Self {
        Self {
            tokens: rate.burst as f32,
            last: now,
            strikes: 0,
            per_second: rate.per_second as f32,
            burst: rate.burst as f32,
            max_strikes,
        }
    }

    pub fn take(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            return Verdict::Pass;
        }
        self.strikes += 1;
        if self.strikes > self.max_strikes {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(now: Instant) -> FrameBudget {
        let rate = Rate {
            per_second: 10.0,
            burst: 5,
        };
        FrameBudget::new(rate, 3, now)
    }

    #[test]
    fn burst_then_refuse_then_close() {
        let t = Instant::now();
        let mut b = budget(t);
        for _ in 0..5 {
            assert_eq!(b.take(t), Verdict::Pass);
        }
        for _ in 0..3 {
            assert_eq!(b.take(t), Verdict::Refuse);
        }
        assert_eq!(b.take(t), Verdict::Close);
    }

    #[test]
    fn refills_at_the_rate_and_forgives_strikes() {
        let t = Instant::now();
        let mut b = budget(t);
        for _ in 0..5 {
            b.take(t);
        }
        assert_eq!(b.take(t), Verdict::Refuse);
        assert_eq!(b.take(t), Verdict::Refuse);
        // 10/s: one frame every 100 ms.
        let t = t + Duration::from_millis(100);
        assert_eq!(b.take(t), Verdict::Pass);
        assert_eq!(b.take(t), Verdict::Refuse);
        assert_eq!(b.take(t), Verdict::Refuse);
        assert_eq!(b.take(t), Verdict::Refuse, "strikes restarted after a pass");
        // A long pause refills to the burst, not beyond.
        let t = t + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(b.take(t), Verdict::Pass);
        }
        assert_eq!(b.take(t), Verdict::Refuse);
    }
}
