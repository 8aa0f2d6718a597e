//! The session as a state machine, over `tokio::io::duplex` with a paused clock: every deadline,
//! the frame budget, the in-flight cap and the slow-consumer rules, checked in virtual time (no
//! sockets, no sleeps, no flakiness on busy machines).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use im_proto::im::echo::v1::EchoRequest;
use im_proto::im::gateway::v1::{server_frame, ClientFrame, ServerFrame};
use prost::Message as _;
use tokio::io::DuplexStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::config::{PushConfig, Rate};
use super::frames::{FrameEncoding, Outbound};
use super::hub::close;
use super::listener::ws_config;
use super::registry::Device;
use super::session::{run, Deadlines, SessionInfo};
use super::{Hub, PushDeps};
use crate::clock::unix_now;
use crate::dispatch::Dispatcher;
use crate::filters::auth::{Authenticator, Identity};
use crate::filters::revocation::MemoryRevocation;
use crate::filters::Guard;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::routes::{Registries, RouteSource, RouteStore};
use crate::units::HumanDuration;

const USER: &str = "u1";
const CMD_ECHO: u32 = 7;

/// One session under test: its deps, the client end of the socket, the shutdown switch.
struct Harness {
    deps: Arc<PushDeps>,
    client: WebSocketStream<DuplexStream>,
    shutdown: watch::Sender<bool>,
    session: tokio::task::JoinHandle<()>,
    started: Instant,
    /// Accepts connections and never answers: calls to it stay in flight.
    _stuck_backend: std::net::TcpListener,
    routes_file: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.routes_file);
    }
}

fn routes_yaml(upstream: SocketAddr) -> String {
    format!(
        r#"
upstreams:
  stuck:
    endpoints: ["{upstream}"]
    timeout: 1h
    retries: 0
routes:
  - name: echo
    cmd: {CMD_ECHO}
    upstream: stuck
    grpc: im.echo.v1.EchoService/Echo
"#
    )
}

fn deps(cfg: PushConfig, stuck: SocketAddr, routes_file: &PathBuf) -> Arc<PushDeps> {
    std::fs::write(routes_file, routes_yaml(stuck)).unwrap();
    let metrics = Arc::new(Metrics::new());
    let source = RouteSource {
        routes: routes_file.clone(),
        descriptors: None,
    };
    let routes = RouteStore::open(source, Registries::default(), metrics.clone()).unwrap();
    let auth = Authenticator::new(&Default::default(), Arc::new(MemoryRevocation::new(100)));
    let guard = Arc::new(Guard {
        auth: auth.unwrap(),
        client_ip: Default::default(),
        cors: Default::default(),
        metrics: metrics.clone(),
        cluster_limits: None,
    });
    Arc::new(PushDeps {
        hub: Hub::new(&cfg, 1000, metrics.clone()),
        config: cfg,
        routes: Arc::new(routes),
        cluster: None,
        pipeline: Pipeline {
            guard,
            dispatcher: Arc::new(Dispatcher::new(metrics)),
            access_log: false,
            sample_ratio: 1.0,
        },
    })
}

/// Starts a session whose token expires in `token_secs`, with `socket_buffer` bytes of socket
/// between the session and the client.
async fn start(cfg: PushConfig, token_secs: u64, socket_buffer: usize) -> Harness {
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let routes_file = std::env::temp_dir().join(format!(
        "im-session-test-{}-{:?}.yaml",
        std::process::id(),
        std::thread::current().id()
    ));
    let deps = deps(cfg, stuck.local_addr().unwrap(), &routes_file);
    let (server_io, client_io) = tokio::io::duplex(socket_buffer);
    let max = deps.config.max_message.0 as usize;
    let ws = WebSocketStream::from_raw_socket(server_io, Role::Server, Some(ws_config(max))).await;
    let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let now = unix_now();
    let info = SessionInfo {
        identity: Arc::new(Identity {
            user_id: USER.into(),
            sid: Some("s1".into()),
            device_id: None,
            platform: None,
            roles: Vec::new(),
            exp: now + token_secs,
            session_end: now + 86_400,
        }),
        device: Device {
            device_id: "d1".into(),
            platform: "web".into(),
        },
        encoding: FrameEncoding::Proto,
        version: 1,
        client_ip: ip,
        traceparent: None,
        slot: deps.hub.conns.acquire(ip, 10, 10).unwrap(),
    };
    let (shutdown, rx) = watch::channel(false);
    let session = tokio::spawn(run(ws, info, deps.clone(), rx));
    Harness {
        deps,
        client,
        shutdown,
        session,
        started: Instant::now(),
        _stuck_backend: stuck,
        routes_file,
    }
}

fn config() -> PushConfig {
    PushConfig {
        ping_interval: HumanDuration(Duration::from_secs(5)),
        idle_timeout: HumanDuration(Duration::from_secs(12)),
        drain_window: HumanDuration(Duration::from_secs(2)),
        ..PushConfig::default()
    }
}

impl Harness {
    /// Reads until the close frame (or the end of the stream); pings on the way are counted.
    async fn close_frame(&mut self) -> (Option<(u16, String)>, usize, Duration) {
        let mut pings = 0;
        while let Some(msg) = self.client.next().await {
            match msg {
                Ok(Message::Ping(_)) => pings += 1,
                Ok(Message::Close(frame)) => {
                    let close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return (close, pings, self.started.elapsed());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        (None, pings, self.started.elapsed())
    }

    async fn send_echo(&mut self, seq: u64) {
        let payload = EchoRequest {
            text: "hi".into(),
            ..Default::default()
        };
        let frame = ClientFrame {
            seq,
            cmd: CMD_ECHO,
            payload: payload.encode_to_vec(),
            ..Default::default()
        };
        self.client
            .send(Message::Binary(frame.encode_to_vec().into()))
            .await
            .unwrap();
    }

    /// The next response frame: (seq, gRPC code, message).
    async fn response(&mut self) -> (u64, i32, String) {
        loop {
            match self.client.next().await {
                Some(Ok(Message::Binary(b))) => {
                    let Some(server_frame::Body::Response(r)) =
                        ServerFrame::decode(b).unwrap().body
                    else {
                        continue;
                    };
                    return (r.seq, r.code, r.message);
                }
                Some(Ok(_)) => continue,
                other => panic!("no response frame: {other:?}"),
            }
        }
    }

    fn closes(&self, code: u16, reason: &str) -> u64 {
        self.deps
            .hub
            .metrics
            .ws_closes
            .with_label_values(&[&code.to_string(), reason])
            .get()
    }

    /// Queues `n` push frames of `size` bytes for the session, as PushService would.
    fn push(&self, n: usize, size: usize) -> usize {
        let mut handles = Vec::new();
        self.deps
            .hub
            .registry
            .for_each(|c| handles.push(c.handle.clone()));
        let frame = Outbound::Binary(Bytes::from(vec![0u8; size]));
        let mut queued = 0;
        for _ in 0..n {
            if handles.iter().all(|h| self.deps.hub.send(h, frame.clone())) {
                queued += 1;
            }
        }
        queued
    }
}

#[test]
fn deadlines_are_plain_data() {
    let t0 = Instant::now();
    let mut d = Deadlines {
        idle: Duration::from_secs(10),
        expires_at: t0 + Duration::from_secs(30),
        last_active: t0,
        drain_at: None,
    };
    assert_eq!(d.next(), t0 + Duration::from_secs(10));
    assert_eq!(d.due(t0 + Duration::from_secs(9)), None);
    assert_eq!(
        d.due(t0 + Duration::from_secs(10)),
        Some((close::POLICY, "idle timeout"))
    );
    d.last_active = t0 + Duration::from_secs(25);
    assert_eq!(d.next(), t0 + Duration::from_secs(30), "expiry comes first");
    assert_eq!(
        d.due(t0 + Duration::from_secs(30)),
        Some((close::TOKEN, "token expired"))
    );
    d.drain_at = Some(t0 + Duration::from_secs(26));
    assert_eq!(d.next(), t0 + Duration::from_secs(26));
    assert_eq!(
        d.due(t0 + Duration::from_secs(26)),
        Some((close::GOING_AWAY, "gateway shutting down"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_as_idle_on_time() {
    // The client reads nothing, so it answers no ping: idle from the start.
    let mut h = start(config(), 3600, 64 << 10).await;
    tokio::time::timeout(Duration::from_secs(60), &mut h.session)
        .await
        .expect("the session ends")
        .unwrap();
    let at = h.started.elapsed();
    assert!(
        at >= Duration::from_secs(12) && at < Duration::from_secs(13),
        "{at:?}"
    );
    assert_eq!(h.closes(close::POLICY, "idle timeout"), 1);
}

#[tokio::test(start_paused = true)]
async fn pongs_keep_a_session_alive_past_the_idle_timeout() {
    let mut h = start(config(), 3600, 64 << 10).await;
    // Reading answers each ping with a pong (tungstenite does that on read).
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut pings = 0;
    while Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, h.client.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(pings, 7, "a ping every 5s, at 5s to 35s");
    assert!(!h.session.is_finished(), "still open at 40s > 12s idle");
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_closes_with_4001_on_time() {
    let mut h = start(config(), 3, 64 << 10).await;
    // Pongs keep it from going idle; expiry does not wait for idleness.
    let (close, _, at) = h.close_frame().await;
    assert_eq!(close, Some((close::TOKEN, "token expired".into())));
    assert!(
        at >= Duration::from_secs(2) && at <= Duration::from_secs(4),
        "{at:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_with_1001_inside_the_window() {
    let mut h = start(config(), 3600, 64 << 10).await;
    h.shutdown.send(true).unwrap();
    let (close, _, at) = h.close_frame().await;
    let (code, reason) = close.unwrap();
    assert_eq!(code, close::GOING_AWAY);
    // The reconnect hint: a jittered delay, so a node's clients do not come back at once.
    let delay: u64 = reason
        .strip_prefix("gateway shutting down; reconnect_after_ms=")
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no reconnect hint in {reason:?}"));
    assert!((250..3250).contains(&delay), "{delay}");
    assert!(at <= Duration::from_secs(2), "{at:?}");
}

#[tokio::test(start_paused = true)]
async fn a_frame_flood_is_refused_then_closed() {
    let cfg = PushConfig {
        frame_rate: Rate {
            per_second: 1.0,
            burst: 2,
        },
        frame_flood_strikes: 3,
        ..config()
    };
    let mut h = start(cfg, 3600, 64 << 10).await;
    // Garbage frames: within the budget they are answered INVALID_ARGUMENT (seq 0).
    for _ in 0..6 {
        h.client
            .send(Message::Binary(Bytes::from_static(b"\xff\xff")))
            .await
            .unwrap();
    }
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(h.response().await.1);
    }
    let invalid = tonic::Code::InvalidArgument as i32;
    let exhausted = tonic::Code::ResourceExhausted as i32;
    assert_eq!(
        codes,
        [invalid, invalid, exhausted, exhausted, exhausted],
        "2 in budget, 3 strikes refused"
    );
    let (close, _, _) = h.close_frame().await;
    assert_eq!(close, Some((close::POLICY, "frame flood".into())));

    // A client that slows down is forgiven: one frame per second passes again.
    let mut h = start(
        PushConfig {
            frame_rate: Rate {
                per_second: 1.0,
                burst: 1,
            },
            frame_flood_strikes: 1,
            ..config()
        },
        3600,
        64 << 10,
    )
    .await;
    for _ in 0..5 {
        h.client
            .send(Message::Binary(Bytes::from_static(b"\xff\xff")))
            .await
            .unwrap();
        assert_eq!(h.response().await.1, invalid);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(!h.session.is_finished());
}

#[tokio::test(start_paused = true)]
async fn the_in_flight_cap_refuses_the_next_request_and_keeps_the_socket() {
    let cfg = PushConfig {
        max_inflight: 2,
        ..config()
    };
    let mut h = start(cfg, 3600, 64 << 10).await;
    for seq in 1..=3 {
        h.send_echo(seq).await;
    }
    let (seq, code, message) = h.response().await;
    assert_eq!(seq, 3, "requests 1 and 2 are still waiting on the backend");
    assert_eq!(code, tonic::Code::ResourceExhausted as i32);
    assert!(message.contains("in flight"), "{message}");
    assert!(!h.session.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_closes_a_slow_consumer_with_4003() {
    let cfg = PushConfig {
        queue_frames: 8,
        ..config()
    };
    // 1 KiB of socket and a client that never reads: the queue fills behind it.
    let mut h = start(cfg, 3600, 1024).await;
    tokio::task::yield_now().await;
    let queued = h.push(200, 1024);
    assert!(queued < 200, "the queue is bounded: {queued} of 200 queued");
    tokio::time::timeout(Duration::from_secs(5), &mut h.session)
        .await
        .expect("the session ends")
        .unwrap();
    let slow: u64 = h.deps.hub.metrics.ws_slow_closes.get();
    assert_eq!(slow, 1);
    assert_eq!(h.deps.hub.registry.find(|_| true).len(), 0, "unregistered");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_writer_is_closed_after_the_stall_timeout() {
    let cfg = PushConfig {
        ping_interval: HumanDuration(Duration::from_secs(1)),
        write_stall_timeout: HumanDuration(Duration::from_secs(3)),
        ..config()
    };
    let mut h = start(cfg, 3600, 1024).await;
    tokio::task::yield_now().await;
    // Fits the queue (1024 frames, 1 MiB) but not the socket: the writer stops making progress.
    assert_eq!(h.push(40, 4096), 40);
    tokio::time::timeout(Duration::from_secs(10), &mut h.session)
        .await
        .expect("the session ends")
        .unwrap();
    let at = h.started.elapsed();
    assert!(at >= Duration::from_secs(3), "{at:?}");
    assert_eq!(h.deps.hub.metrics.ws_write_stalls.get(), 1);
    assert_eq!(h.closes(close::SLOW_CONSUMER, "write stall"), 1);
}
