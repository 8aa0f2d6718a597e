//! One session's outbound queue, bounded in frames and bytes. Unlike a channel it allocates
//! nothing while empty (an idle connection costs a few words), and the writer takes everything
//! queued at once, so a burst leaves in one flush.
//!
//! Every outbox also draws on the gateway-wide [`QueueBudget`] (`push.total_queue_bytes`): a
//! frame holds its bytes there from the push until the writer has handed it to the socket, so
//! taken-but-unwritten batches count too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::frames::Outbound;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Over the frame or byte bound: nothing was queued.
    Full,
    /// The gateway-wide budget is spent: nothing was queued.
    OverBudget,
    /// The writer is gone.
    Closed,
}

/// Bytes queued for all sessions of a gateway, against `push.total_queue_bytes`.
#[derive(Debug)]
pub struct QueueBudget {
    used: AtomicUsize,
    limit: usize,
}

impl QueueBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Reserves `n` bytes unless that would pass the limit.
    fn reserve(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.limit).then_some(u + n)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

pub struct Outbox {
    frames: Mutex<VecDeque<Outbound>>,
    bytes: AtomicUsize,
    /// Bytes this session holds in the budget: queued, or taken and not yet written.
    held: AtomicUsize,
    budget: Arc<QueueBudget>,
    ready: Notify,
    closed: AtomicBool,
    max_frames: usize,
    max_bytes: usize,
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize, budget: Arc<QueueBudget>) -> Self {
        Self {
            frames: Mutex::new(VecDeque::new()),
            bytes: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            budget,
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            max_frames: max_frames.max(1),
            max_bytes,
        }
    }

    /// The queue; nothing panics while it is held, so a poisoned lock is still consistent.
    fn frames(&self) -> MutexGuard<'_, VecDeque<Outbound>> {
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, frame: Outbound) -> Push {
        if self.closed.load(Ordering::Acquire) {
            return Push::Closed;
        }
        let len = frame.len();
        let mut frames = self.frames();
        let bytes = self.bytes.load(Ordering::Acquire);
        if frames.len() >= self.max_frames || bytes + len > self.max_bytes {
            return Push::Full;
        }
        if !self.budget.reserve(len) {
            return Push::OverBudget;
        }
        self.held.fetch_add(len, Ordering::AcqRel);
        frames.push_back(frame);
        self.bytes.store(bytes + len, Ordering::Release);
        drop(frames);
        self.ready.notify_one();
        Push::Queued
    }

    /// Everything queued, leaving the queue empty (and unallocated). The bytes stay held in the
    /// budget until [`written`](Self::written) says they left.
    pub fn take(&self) -> VecDeque<Outbound> {
        let mut frames = self.frames();
        self.bytes.store(0, Ordering::Release);
        std::mem::take(&mut *frames)
    }

    /// `n` bytes of taken frames were handed to the socket (or dropped): they leave the budget.
    pub fn written(&self, n: usize) {
        let released = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                Some(h.saturating_sub(n))
            })
            .map_or(0, |h| h.min(n));
        self.budget.release(released);
    }

    /// Waits until something is queued (returns at once when something already was).
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// The writer is gone: later pushes are refused, what was queued is dropped and every byte
    /// this session held returns to the budget.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        drop(self.take());
        self.budget.release(self.held.swap(0, Ordering::AcqRel));
    }

    pub fn queued_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    pub fn queued_frames(&self) -> usize {
        self.frames().len()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.budget.release(self.held.swap(0, Ordering::AcqRel));
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn frame(n: usize) -> Outbound {
        Outbound::Binary(Bytes::from(vec![0u8; n]))
    }

    #[test]
    fn bounded_by_frames_and_bytes() {
        let o = Outbox::new(3, 100, Arc::new(QueueBudget::new(usize::MAX)));
        assert_eq!(o.push(frame(40)), Push::Queued);
        assert_eq!(o.push(frame(40)), Push::Queued);
        assert_eq!(o.push(frame(40)), Push::Full, "bytes bound");
        assert_eq!(o.push(frame(10)), Push::Queued);
        assert_eq!(o.push(frame(1)), Push::Full, "frames bound");
        assert_eq!(o.queued_bytes(), 90);
        assert_eq!(o.take().len(), 3);
        assert_eq!((o.queued_bytes(), o.queued_frames()), (0, 0));
        assert_eq!(o.push(frame(100)), Push::Queued);
        o.close();
        assert_eq!(o.push(frame(1)), Push::Closed);
        assert_eq!(o.queued_bytes(), 0);
    }

    #[test]
    fn the_gateway_budget_counts_until_written_and_returns_on_close() {
        let budget = Arc::new(QueueBudget::new(100));
        let a = Outbox::new(8, 1000, budget.clone());
        let b = Outbox::new(8, 1000, budget.clone());
        assert_eq!(a.push(frame(60)), Push::Queued);
        assert_eq!(
            b.push(frame(60)),
            Push::OverBudget,
            "another session, one budget"
        );
        let taken = a.take();
        assert_eq!(budget.used(), 60, "taken but unwritten still counts");
        a.written(taken.iter().map(Outbound::len).sum());
        assert_eq!(budget.used(), 0);
        assert_eq!(b.push(frame(60)), Push::Queued);
        b.close();
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let o = Outbox::new(8, 1024, Arc::new(QueueBudget::new(usize::MAX)));
        o.push(frame(1));
        tokio::time::timeout(std::time::Duration::from_secs(1), o.ready())
            .await
            .expect("ready at once");
    }
}
