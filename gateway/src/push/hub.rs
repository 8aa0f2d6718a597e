//! The node's live sessions: the registry plus what PushService needs to reach them.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::config::PushConfig;
use super::frames::{FrameEncoding, Outbound};
use super::outbox::{self, Outbox, QueueBudget};
use super::registry::{Connection, MemoryRegistry};
use crate::filters::ratelimit::KeyedLimiter;
use crate::ip_counts::{IpCounts, IpSlot};
use crate::metrics::Metrics;
use crate::policy::{RateLimitKey, RateLimitSpec};

/// Close codes of DESIGN §7.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const INVALID_TEXT: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const TOKEN: u16 = 4001;
    pub const KICKED: u16 = 4002;
    pub const SLOW_CONSUMER: u16 = 4003;
}

/// The close request of a session: code and reason, first one wins.
pub type CloseRequest = Option<(u16, &'static str)>;

/// How the rest of the gateway reaches one session: a bounded queue and a close request.
#[derive(Clone)]
pub struct SessionHandle {
    pub conn_id: u64,
    pub sid: Option<String>,
    /// The session's absolute end (unix seconds): how long a kick's denial of it lasts.
    pub session_end: u64,
    pub encoding: FrameEncoding,
    outbox: Arc<Outbox>,
    close: Arc<watch::Sender<CloseRequest>>,
}

impl SessionHandle {
    /// The handle, the queue its writer drains, and the close request it watches.
    pub fn new(
        conn_id: u64,
        sid: Option<String>,
        session_end: u64,
        encoding: FrameEncoding,
        queue_frames: usize,
        max_bytes: usize,
        budget: Arc<QueueBudget>,
    ) -> (Self, Arc<Outbox>, watch::Receiver<CloseRequest>) {
        let outbox = Arc::new(Outbox::new(queue_frames, max_bytes, budget));
        let (close, close_rx) = watch::channel(None);
        (
            Self {
                conn_id,
                sid,
                session_end,
                encoding,
                outbox: outbox.clone(),
                close: Arc::new(close),
            },
            outbox,
            close_rx,
        )
    }

    /// Queues a frame; a full queue (frames or bytes) closes the session with 4003 instead of
    /// growing memory.
    pub fn send(&self, frame: Outbound) -> Sent {
        match self.outbox.push(frame) {
            outbox::Push::Queued => Sent::Queued,
            outbox::Push::Full => self.slow(),
            outbox::Push::OverBudget => {
                if self.try_close(close::TRY_AGAIN_LATER, "gateway queue budget") {
                    Sent::OverBudget
                } else {
                    Sent::Gone
                }
            }
            outbox::Push::Closed => Sent::Gone,
        }
    }

    fn slow(&self) -> Sent {
        if self.try_close(close::SLOW_CONSUMER, "slow consumer") {
            Sent::SlowConsumer
        } else {
            Sent::Gone
        }
    }

    /// Asks the session to close with `code` (the first request wins).
    pub fn close_with(&self, code: u16, reason: &'static str) {
        self.try_close(code, reason);
    }

    /// Like [`Self::close_with`]; returns whether this request was the first.
    pub fn try_close(&self, code: u16, reason: &'static str) -> bool {
        self.close.send_if_modified(|c| {
            let first = c.is_none();
            if first {
                *c = Some((code, reason));
            }
            first
        })
    }

    /// Bytes queued and not yet written (the bound the slow-consumer test watches).
    pub fn queued_bytes(&self) -> usize {
        self.outbox.queued_bytes()
    }

    pub fn queued_frames(&self) -> usize {
        self.outbox.queued_frames()
    }
}

/// What [`SessionHandle::send`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The queue was full: the session is now closing with 4003 (first time only).
    SlowConsumer,
    /// The gateway-wide queue budget was spent: the session is now closing with 1013.
    OverBudget,
    /// The session is already closing or gone.
    Gone,
}

/// Live connections, overall and per client IP; a [`ConnSlot`] holds one.
pub struct ConnCounts {
    open: AtomicUsize,
    per_ip: Arc<IpCounts>,
}

impl ConnCounts {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            per_ip: Arc::default(),
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes a connection slot unless the gateway or the IP is at its cap.
    pub fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<ConnSlot, CapHit> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(CapHit::Gateway);
        }
        let Some(ip_slot) = self.per_ip.acquire(ip, max_per_ip) else {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(CapHit::Ip);
        };
        Ok(ConnSlot {
            counts: self.clone(),
            _ip: ip_slot,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapHit {
    Gateway,
    Ip,
}

/// One counted connection; dropping it frees the slot (its IP's count with it).
pub struct ConnSlot {
    counts: Arc<ConnCounts>,
    _ip: IpSlot,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.counts.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every session of this gateway.
pub struct Hub {
    pub registry: MemoryRegistry<SessionHandle>,
    next_id: AtomicU64,
    pub conns: Arc<ConnCounts>,
    /// Handshakes per client IP.
    pub handshakes: KeyedLimiter,
    pub metrics: Arc<Metrics>,
    /// Bytes queued for all sessions (`push.total_queue_bytes`).
    pub budget: Arc<QueueBudget>,
}

/// Connections per user kept at most, whatever the policy.
const MAX_DEVICES_PER_USER: usize = 16;

impl Hub {
    pub fn new(config: &PushConfig, max_limiter_keys: usize, metrics: Arc<Metrics>) -> Self {
        let spec = RateLimitSpec {
            key: RateLimitKey::Ip,
            per_second: config.handshake_rate.per_second,
            burst: config.handshake_rate.burst,
            scope: Default::default(),
        };
        Self {
            registry: MemoryRegistry::new(config.multi_device, MAX_DEVICES_PER_USER),
            next_id: AtomicU64::new(1),
            conns: Arc::new(ConnCounts::new()),
            handshakes: KeyedLimiter::new(&spec, max_limiter_keys),
            metrics,
            budget: Arc::new(QueueBudget::new(config.total_queue_bytes.0 as usize)),
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The id the next connection will get: every connection of this run so far has a lower one.
    pub fn conn_watermark(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// Queues a frame for one session, counting a slow-consumer close.
    pub fn send(&self, handle: &SessionHandle, frame: Outbound) -> bool {
        match handle.send(frame) {
            Sent::Queued => true,
            Sent::SlowConsumer => {
                self.metrics.ws_slow_closes.inc();
                false
            }
            Sent::OverBudget => {
                self.metrics.ws_budget_sheds.inc();
                false
            }
            Sent::Gone => false,
        }
    }

    /// Delivers one pre-encoded push to a connection, counting the outcome.
    pub fn deliver(&self, conn: &Connection<SessionHandle>, frame: Outbound) -> bool {
        let ok = self.send(&conn.handle, frame);
        let counter = if ok {
            &self.metrics.pushes_delivered
        } else {
            &self.metrics.pushes_dropped
        };
        counter.inc();
        ok
    }

    /// (total, largest) bytes queued and not yet written over all sessions (scrape time).
    pub fn queued_bytes(&self) -> (usize, usize) {
        let mut total = 0;
        let mut max = 0;
        self.registry.for_each(|c| {
            let q = c.handle.queued_bytes();
            total += q;
            max = max.max(q);
        });
        (total, max)
    }
}
