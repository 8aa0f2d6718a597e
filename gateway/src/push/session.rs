//! One WebSocket session, in one task: it routes request frames through the shared dispatcher
//! (bounded in flight), pumps the bounded outbound queue to the socket (everything queued in one
//! flush), pings, and honours close requests (kick, revoke, expiry, slow consumer, drain) even
//! when the socket is clogged.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant as TokioInstant;

use bytes::Bytes;
use std::collections::VecDeque;
use std::future::poll_fn;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tonic::Code;

use super::cmd::on_request;
use super::frame_budget::{FrameBudget, Verdict};
use super::frames::{encode_error, peek_seq, Inbound, Outbound};
pub use super::handshake::SessionInfo;
use super::hub::{close, CloseRequest, SessionHandle};
use super::outbox::Outbox;
use super::registry::Connection;
use super::PushDeps;
use crate::clock::unix_now;

fn to_message(frame: Outbound) -> Message {
    match frame {
        Outbound::Binary(b) => Message::Binary(b),
        Outbound::Text(t) => Message::Text(t),
    }
}

/// A session's deadlines as plain data, with no clock inside (callers pass `now`): idle since the
/// last frame, the token's expiry and, once shutdown starts, its place in the drain window. One
/// timer serves all three; activity does not re-arm it, the wake-up asks what is due.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    pub idle: Duration,
    pub expires_at: TokioInstant,
    pub last_active: TokioInstant,
    pub drain_at: Option<TokioInstant>,
}

impl Deadlines {
    /// A session opened `now`: idle after `idle`, over when its token (`exp`, unix seconds) is.
    pub fn start(idle: Duration, exp: u64, now: TokioInstant) -> Self {
        Self {
            idle,
            expires_at: now + Duration::from_secs(exp.saturating_sub(unix_now())),
            last_active: now,
            drain_at: None,
        }
    }

    /// A frame was read: the session is active now (one clock read per frame, shared with the
    /// frame budget, which pongs do not spend).
    fn frame_read(&mut self, msg: &Message, budget: &mut FrameBudget) -> Verdict {
        self.last_active = TokioInstant::now();
        match msg {
            Message::Pong(_) => Verdict::Pass,
            _ => budget.take(self.last_active.into_std()),
        }
    }

    /// When to wake up next.
    pub fn next(&self) -> TokioInstant {
        let d = (self.last_active + self.idle).min(self.expires_at);
        self.drain_at.map_or(d, |t| d.min(t))
    }

    /// The close due at `now`, if any: expiry first, then drain, then idle.
    pub fn due(&self, now: TokioInstant) -> CloseRequest {
        if now >= self.expires_at {
            Some((close::TOKEN, "token expired"))
        } else if self.drain_at.is_some_and(|t| now >= t) {
            Some((close::GOING_AWAY, "gateway shutting down"))
        } else if now >= self.last_active + self.idle {
            Some((close::POLICY, "idle timeout"))
        } else {
            None
        }
    }
}

/// The socket side of a session: what waits to be written and when the socket last took bytes
/// (a writer stuck past `write_stall_timeout` is closed as a slow consumer).
struct Writer {
    pending: VecDeque<Message>,
    unflushed: bool,
    last_progress: TokioInstant,
}

impl Writer {
    /// The ping tick: a ping when the socket keeps up, else the stall verdict.
    fn on_ping_tick(&mut self, outbox: &Outbox, stall_after: Duration) -> CloseRequest {
        let waiting = !self.pending.is_empty() || self.unflushed || outbox.queued_frames() > 0;
        if waiting && self.last_progress.elapsed() >= stall_after {
            return Some((close::SLOW_CONSUMER, "write stall"));
        }
        if !waiting {
            self.last_progress = TokioInstant::now();
        }
        self.pending.push_back(Message::Ping(Bytes::new()));
        None
    }
}

/// Registers the connection, closing what the multi-device policy displaces; the platform's
/// session gauge, counting this one.
fn register(
    info: &SessionInfo,
    deps: &Arc<PushDeps>,
    conn_id: u64,
    handle: &SessionHandle,
) -> prometheus::IntGauge {
    let displaced = deps.hub.registry.register(
        &info.identity.user_id,
        Connection {
            conn_id,
            device: info.device.clone(),
            handle: handle.clone(),
        },
    );
    for old in displaced {
        let ending = super::control::Ending::Kicked {
            reason: "signed in on another device",
            by_device_id: &info.device.device_id,
        };
        super::control::close_connection(deps, &old, ending);
    }
    super::remote::registered(deps, &info.identity.user_id, conn_id, &info.device);
    let platform = crate::metrics::platform_label(&info.device.platform);
    let by_platform = deps
        .hub
        .metrics
        .ws_by_platform
        .with_label_values(&[platform]);
    by_platform.inc();
    by_platform
}

/// Runs one session until it closes: reads, the outbox pump and the timers share this loop (a
/// second task per connection would cost about 1 KiB more).
pub async fn run<S>(
    ws: WebSocketStream<S>,
    info: SessionInfo,
    deps: Arc<PushDeps>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &deps.config;
    let conn_id = deps.hub.next_conn_id();
    let (handle, outbox, mut close_rx) = SessionHandle::new(
        conn_id,
        info.identity.sid.clone(),
        info.identity.session_end,
        info.encoding,
        cfg.queue_frames,
        cfg.queue_bytes.0 as usize,
        deps.hub.budget.clone(),
    );
    let by_platform = register(&info, &deps, conn_id, &handle);

    let (mut sink, mut stream) = ws.split();
    let now = TokioInstant::now();
    let mut writer = Writer {
        pending: VecDeque::new(),
        unflushed: false,
        last_progress: now,
    };
    let ping = cfg.ping_interval.0;
    let mut pings = tokio::time::interval_at(now + ping, ping);
    let inflight = Arc::new(AtomicUsize::new(0));
    let mut budget = FrameBudget::new(cfg.frame_rate, cfg.frame_flood_strikes, now.into_std());
    let mut deadlines = Deadlines::start(cfg.idle_timeout.0, info.identity.exp, now);
    let timer = tokio::time::sleep_until(deadlines.next());
    tokio::pin!(timer);
    let info = Arc::new(info);
    loop {
        tokio::select! {
            next = stream.next() => match next {
                None => handle.close_with(close::NORMAL, "client gone"),
                Some(Err(e)) => { let (code, why) = read_error_close(&e); handle.close_with(code, why) }
                Some(Ok(msg)) => {
                    let verdict = deadlines.frame_read(&msg, &mut budget);
                    on_message(&msg, verdict, &info, &deps, &handle, &inflight);
                }
            },
            _ = close_rx.changed() => break,
            written = pump(&mut sink, &mut writer, &outbox) => {
                if written.is_err() {
                    handle.close_with(close::NORMAL, "connection lost");
                }
            }
            _ = pings.tick() => {
                if let Some((code, why)) = writer.on_ping_tick(&outbox, cfg.write_stall_timeout.0) {
                    deps.hub.metrics.ws_write_stalls.inc();
                    handle.close_with(code, why);
                }
            }
            _ = &mut timer => match deadlines.due(TokioInstant::now()) {
                Some((code, why)) => handle.close_with(code, why),
                None => timer.as_mut().reset(deadlines.next()),
            },
            _ = shutdown.changed(), if deadlines.drain_at.is_none() => {
                deadlines.drain_at = Some(TokioInstant::now() + drain_delay(conn_id, cfg.drain_window.0));
                timer.as_mut().reset(deadlines.next());
            }
        }
        if close_rx.borrow().is_some() {
            break;
        }
    }
    by_platform.dec();
    let requested = *close_rx.borrow();
    unregister(&info, &deps, conn_id, requested);
    farewell(&mut sink, &outbox, requested).await;
    outbox.close();
}

/// The closed connection leaves the registry (and cluster mode's), its close counted.
fn unregister(info: &SessionInfo, deps: &PushDeps, conn_id: u64, requested: CloseRequest) {
    deps.hub
        .registry
        .unregister(&info.identity.user_id, conn_id);
    let drained = matches!(requested, Some((close::GOING_AWAY, _)));
    super::remote::closed(deps, &info.identity.user_id, conn_id, drained);
    if let Some((code, reason)) = requested {
        deps.hub
            .metrics
            .ws_closes
            .with_label_values(&[&code.to_string(), reason])
            .inc();
    }
}

/// The close for a socket that failed to read.
fn read_error_close(e: &WsError) -> (u16, &'static str) {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            (close::TOO_BIG, "message too big")
        }
        WsError::Utf8(_) => (close::INVALID_TEXT, "invalid UTF-8"),
        _ => (close::POLICY, "protocol error"),
    }
}

/// One message from the client, after the frame budget's verdict on it (pongs answer our pings
/// and are not budgeted).
fn on_message(
    msg: &Message,
    verdict: Verdict,
    info: &Arc<SessionInfo>,
    deps: &Arc<PushDeps>,
    handle: &SessionHandle,
    inflight: &Arc<AtomicUsize>,
) {
    let inbound = match msg {
        Message::Binary(b) => Some(Inbound::Binary(b)),
        Message::Text(t) => Some(Inbound::Text(t.as_str())),
        Message::Close(_) => {
            handle.close_with(close::NORMAL, "client closed");
            None
        }
        Message::Pong(_) => return,
        Message::Ping(_) | Message::Frame(_) => None,
    };
    match (verdict, inbound) {
        (Verdict::Pass, Some(inbound)) => on_request(inbound, info, deps, handle, inflight),
        (Verdict::Pass, None) => {}
        (Verdict::Refuse, inbound) => {
            deps.hub.metrics.ws_frames_limited.inc();
            let seq = inbound.map_or(0, peek_seq);
            let frame = encode_error(
                info.encoding,
                seq,
                Code::ResourceExhausted,
                "frame rate limit: slow down",
            );
            deps.hub.send(handle, frame);
        }
        (Verdict::Close, _) => handle.close_with(close::POLICY, "frame flood"),
    }
}

/// Longest reconnect delay a drain close suggests; each session gets a random one up to it, so
/// the clients of a restarting node come back spread out instead of as one storm.
const RECONNECT_JITTER_MS: u64 = 3000;

/// The close frame's reason: a drain's carries `reconnect_after_ms=<jittered delay>`, which
/// clients honour (the web client does).
fn close_reason(code: u16, reason: &str) -> String {
    if code == close::GOING_AWAY {
        let delay = 250 + rand::random::<u64>() % RECONNECT_JITTER_MS;
        format!("{reason}; reconnect_after_ms={delay}")
    } else {
        reason.to_owned()
    }
}

/// Where in the drain window a session closes: spread evenly by connection id, so clients do not
/// all reconnect at once.
fn drain_delay(conn_id: u64, window: Duration) -> Duration {
    let spread = (conn_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    window.mul_f64(spread)
}

/// Moves queued frames to the socket: everything queued is fed, then flushed once. Cancel-safe
/// (the session loop drops it whenever another branch wins): a frame leaves `pending` only once
/// the sink has taken it, and the outbox is checked before every wait.
async fn pump<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    w: &mut Writer,
    outbox: &Outbox,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        if w.pending.is_empty() {
            // A fresh deque each batch, dropped once written: an idle session keeps no buffer.
            w.pending = outbox.take().into_iter().map(to_message).collect();
        }
        while !w.pending.is_empty() {
            poll_fn(|cx| sink.poll_ready_unpin(cx)).await?;
            if let Some(msg) = w.pending.pop_front() {
                let len = msg.len();
                sink.start_send_unpin(msg)?;
                // Handed to the socket: its bytes leave the gateway-wide budget.
                outbox.written(len);
                w.last_progress = TokioInstant::now();
                w.unflushed = true;
            }
        }
        w.pending = VecDeque::new();
        if w.unflushed {
            poll_fn(|cx| sink.poll_flush_unpin(cx)).await?;
            w.last_progress = TokioInstant::now();
            w.unflushed = false;
        }
        if outbox.queued_frames() == 0 {
            outbox.ready().await;
        }
    }
}

/// The close frame, after what was queued before the close (e.g. `session_kicked` before 4002).
/// A slow consumer is not reading: try briefly, then drop the TCP connection.
async fn farewell<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    outbox: &Outbox,
    requested: CloseRequest,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some((code, reason)) = requested else {
        return;
    };
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: close_reason(code, reason).into(),
    };
    let slow = code == close::SLOW_CONSUMER;
    let patience = Duration::from_millis(if slow { 100 } else { 1000 });
    let send = async {
        if !slow {
            for frame in outbox.take() {
                sink.feed(to_message(frame)).await?;
            }
        }
        sink.send(Message::Close(Some(frame))).await
    };
    let _ = tokio::time::timeout(patience, send).await;
}
