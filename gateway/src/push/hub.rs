//! The node's live sessions: the registry plus what PushService needs to reach them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::frames::{FrameEncoding, Outbound};
use super::registry::{Connection, MemoryRegistry, MultiDevicePolicy};

/// Close codes of DESIGN §7.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const INVALID_TEXT: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const TOKEN: u16 = 4001;
    pub const KICKED: u16 = 4002;
    pub const SLOW_CONSUMER: u16 = 4003;
}

/// How the rest of the gateway reaches one session: a bounded queue and a close request.
#[derive(Clone)]
pub struct SessionHandle {
    pub conn_id: u64,
    pub sid: Option<String>,
    /// The token's `exp` (unix seconds): how long a revocation of this session must last.
    pub exp: u64,
    pub encoding: FrameEncoding,
    tx: mpsc::Sender<Outbound>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    close: Arc<watch::Sender<Option<(u16, &'static str)>>>,
}

impl SessionHandle {
    #[allow(clippy::type_complexity)]
    pub fn new(
        conn_id: u64,
        sid: Option<String>,
        exp: u64,
        encoding: FrameEncoding,
        queue_frames: usize,
        max_bytes: usize,
    ) -> (
        Self,
        mpsc::Receiver<Outbound>,
        watch::Receiver<Option<(u16, &'static str)>>,
        Arc<AtomicUsize>,
    ) {
        let (tx, rx) = mpsc::channel(queue_frames.max(1));
        let (close, close_rx) = watch::channel(None);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        (
            Self {
                conn_id,
                sid,
                exp,
                encoding,
                tx,
                queued_bytes: queued_bytes.clone(),
                max_bytes,
                close: Arc::new(close),
            },
            rx,
            close_rx,
            queued_bytes,
        )
    }

    /// Queues a frame; a full queue (frames or bytes) closes the session with 4003 instead of
    /// growing memory. Returns whether it was queued.
    pub fn send(&self, frame: Outbound, slow_closes: &AtomicU64) -> bool {
        let len = frame.len();
        if self.queued_bytes.fetch_add(len, Ordering::AcqRel) + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.slow(slow_closes);
            return false;
        }
        if self.tx.try_send(frame).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            if !self.tx.is_closed() {
                self.slow(slow_closes);
            }
            return false;
        }
        true
    }

    fn slow(&self, slow_closes: &AtomicU64) {
        if self.close.borrow().is_none() {
            slow_closes.fetch_add(1, Ordering::Relaxed);
        }
        self.close_with(close::SLOW_CONSUMER, "slow consumer");
    }

    /// Asks the session to close with `code` (the first request wins).
    pub fn close_with(&self, code: u16, reason: &'static str) {
        self.close.send_if_modified(|c| {
            let first = c.is_none();
            if first {
                *c = Some((code, reason));
            }
            first
        });
    }

    /// Bytes queued and not yet written (the bound the slow-consumer test watches).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }
}

/// Every session of this gateway.
pub struct Hub {
    pub registry: MemoryRegistry<SessionHandle>,
    next_id: AtomicU64,
    pub open: AtomicUsize,
    pub slow_closes: AtomicU64,
    pub pushes_delivered: AtomicU64,
    pub pushes_dropped: AtomicU64,
}

/// Connections per user kept at most, whatever the policy.
const MAX_DEVICES_PER_USER: usize = 16;

impl Hub {
    pub fn new(policy: MultiDevicePolicy) -> Self {
        Self {
            registry: MemoryRegistry::new(policy, MAX_DEVICES_PER_USER),
            next_id: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            slow_closes: AtomicU64::new(0),
            pushes_delivered: AtomicU64::new(0),
            pushes_dropped: AtomicU64::new(0),
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Delivers one pre-encoded frame to a connection, counting the outcome.
    pub fn deliver(&self, conn: &Connection<SessionHandle>, frame: Outbound) -> bool {
        let ok = conn.handle.send(frame, &self.slow_closes);
        let counter = if ok {
            &self.pushes_delivered
        } else {
            &self.pushes_dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
        ok
    }
}
