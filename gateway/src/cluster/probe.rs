//! The proof that this node's subscription delivers: a probe published to the node's own channel
//! must come back through it.
//!
//! Two kinds of evidence, judged here without sockets:
//! - Redis answers a publish with how many subscribers received it: none means Redis lost the
//!   subscription (a restart, a failover, a killed client), and it is rebuilt at once.
//! - A probe Redis handed to the subscription that has not come back for an interval, while
//!   nothing else was read from the channel either and no message waits for the reader, is
//!   suspicious; still so at the next check (two intervals), the subscription is declared dead.
//!
//! Timing alone would mistake a node that is merely slow (a heartbeat parsing a large reply, a
//! starved CPU, Redis busy with a burst) for a dead subscription, and a rebuild drops whatever
//! the old connection had not read yet: hence the ack time, the reader's backlog and the second
//! check.

use std::time::Duration;

/// What a check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Live,
    /// Rebuild the subscription; why (for the log).
    Stale(&'static str),
}

/// A probe sent and not yet seen back.
#[derive(Debug, Clone, Copy)]
struct Pending {
    nonce: u64,
    /// Unix ms Redis acknowledged the publish (it wrote the probe to the subscription then).
    acked_ms: u64,
}

/// The probe state of one node task.
#[derive(Debug)]
pub struct ProbeWatch {
    window_ms: u64,
    /// The oldest probe not yet seen back.
    pending: Option<Pending>,
    /// The last check found the subscription silent.
    suspect: bool,
    last_nonce: u64,
}

impl ProbeWatch {
    pub fn new(interval: Duration) -> Self {
        Self {
            window_ms: interval.as_millis() as u64,
            pending: None,
            suspect: false,
            last_nonce: 0,
        }
    }

    /// The nonce of the next probe: increasing within this process even if the clock steps back.
    pub fn next_nonce(&mut self, now_ms: u64) -> u64 {
        self.last_nonce = now_ms.max(self.last_nonce + 1);
        self.last_nonce
    }

    /// Redis took the probe `nonce` at `acked_ms` and delivered it to `receivers` subscribers.
    pub fn sent(&mut self, nonce: u64, acked_ms: u64, receivers: u64) -> Verdict {
        if receivers == 0 {
            self.reset();
            return Verdict::Stale("Redis has no subscriber on this node's channel");
        }
        self.pending.get_or_insert(Pending { nonce, acked_ms });
        Verdict::Live
    }

    /// At each probe interval. `seen_nonce`: the newest probe the reader took back;
    /// `last_read_ms`: when the reader last took a message of this node's channel (probe or
    /// not); `backlog`: messages read from the connection wait for the reader.
    pub fn check(
        &mut self,
        now_ms: u64,
        seen_nonce: u64,
        last_read_ms: u64,
        backlog: bool,
    ) -> Verdict {
        if self.pending.is_some_and(|p| seen_nonce >= p.nonce) {
            self.pending = None;
        }
        let unanswered = self
            .pending
            .is_some_and(|p| now_ms.saturating_sub(p.acked_ms) >= self.window_ms);
        let quiet = now_ms.saturating_sub(last_read_ms) >= self.window_ms;
        if !(unanswered && quiet && !backlog) {
            self.suspect = false;
            return Verdict::Live;
        }
        if !self.suspect {
            self.suspect = true;
            return Verdict::Live;
        }
        self.reset();
        Verdict::Stale("no probe came back for two intervals")
    }

    /// A new subscription: nothing is owed by it yet.
    pub fn reset(&mut self) {
        self.pending = None;
        self.suspect = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> ProbeWatch {
        ProbeWatch::new(Duration::from_millis(1000))
    }

    #[test]
    fn a_probe_that_comes_back_keeps_the_subscription_live() {
        let mut w = watch();
        let n = w.next_nonce(0);
        assert_eq!(w.sent(n, 5, 1), Verdict::Live);
        for t in [1000, 2000, 3000] {
            assert_eq!(w.check(t, n, 6, false), Verdict::Live);
        }
    }

    #[test]
    fn no_receiver_is_stale_at_once() {
        let mut w = watch();
        let n = w.next_nonce(0);
        assert!(matches!(w.sent(n, 5, 0), Verdict::Stale(_)));
    }

    #[test]
    fn silence_is_stale_only_at_the_second_check() {
        let mut w = watch();
        let n = w.next_nonce(0);
        w.sent(n, 0, 1);
        assert_eq!(w.check(1000, 0, 0, false), Verdict::Live);
        assert!(matches!(w.check(2000, 0, 0, false), Verdict::Stale(_)));
        // Rebuilt: the old probe is owed by nobody.
        assert_eq!(w.check(3000, 0, 0, false), Verdict::Live);
    }

    #[test]
    fn the_window_runs_from_the_ack_not_from_the_send() {
        let mut w = watch();
        let n = w.next_nonce(0);
        // Redis was asleep: the publish was acknowledged 900 ms after it was sent.
        w.sent(n, 900, 1);
        assert_eq!(w.check(1000, 0, 0, false), Verdict::Live);
        assert_eq!(w.check(1500, 0, 0, false), Verdict::Live);
    }

    #[test]
    fn a_backlog_or_any_read_message_is_not_silence() {
        let mut w = watch();
        let n = w.next_nonce(0);
        w.sent(n, 0, 1);
        // The probe waits behind a burst: messages keep coming, or wait for the reader.
        for t in [1000, 2000, 3000, 4000] {
            assert_eq!(w.check(t, 0, t - 10, false), Verdict::Live);
        }
        for t in [5000, 6000, 7000] {
            assert_eq!(w.check(t, 0, 0, true), Verdict::Live);
        }
        // One silent check, then a message: the suspicion is dropped.
        assert_eq!(w.check(8000, 0, 0, false), Verdict::Live);
        assert_eq!(w.check(9000, 0, 8990, false), Verdict::Live);
        assert_eq!(w.check(10000, 0, 8990, false), Verdict::Live);
        assert!(matches!(w.check(11000, 0, 8990, false), Verdict::Stale(_)));
    }

    #[test]
    fn nonces_increase_when_the_clock_steps_back() {
        let mut w = watch();
        let a = w.next_nonce(5000);
        let b = w.next_nonce(4000);
        assert!(b > a);
    }
}
