//! One session's outbound queue, bounded in frames and bytes. Unlike a channel it allocates
//! nothing while empty (an idle connection costs a few words), and the writer takes everything
//! queued at once, so a burst leaves in one flush.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use super::frames::Outbound;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Over the frame or byte bound: nothing was queued.
    Full,
    /// The writer is gone.
    Closed,
}

pub struct Outbox {
    frames: Mutex<VecDeque<Outbound>>,
    bytes: AtomicUsize,
    ready: Notify,
    closed: AtomicBool,
    max_frames: usize,
    max_bytes: usize,
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self {
            frames: Mutex::new(VecDeque::new()),
            bytes: AtomicUsize::new(0),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            max_frames: max_frames.max(1),
            max_bytes,
        }
    }

    pub fn push(&self, frame: Outbound) -> Push {
        if self.closed.load(Ordering::Acquire) {
            return Push::Closed;
        }
        let len = frame.len();
        let mut frames = self.frames.lock().expect("outbox poisoned");
        let bytes = self.bytes.load(Ordering::Acquire);
        if frames.len() >= self.max_frames || bytes + len > self.max_bytes {
            return Push::Full;
        }
        frames.push_back(frame);
        self.bytes.store(bytes + len, Ordering::Release);
        drop(frames);
        self.ready.notify_one();
        Push::Queued
    }

    /// Everything queued, leaving the queue empty (and unallocated).
    pub fn take(&self) -> VecDeque<Outbound> {
        let mut frames = self.frames.lock().expect("outbox poisoned");
        self.bytes.store(0, Ordering::Release);
        std::mem::take(&mut *frames)
    }

    /// Waits until something is queued (returns at once when something already was).
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// The writer is gone: later pushes are refused and what was queued is dropped.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        drop(self.take());
    }

    pub fn queued_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    pub fn queued_frames(&self) -> usize {
        self.frames.lock().expect("outbox poisoned").len()
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
        let o = Outbox::new(3, 100);
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

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let o = Outbox::new(8, 1024);
        o.push(frame(1));
        tokio::time::timeout(std::time::Duration::from_secs(1), o.ready())
            .await
            .expect("ready at once");
    }
}
