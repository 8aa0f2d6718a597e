//! WebSocket limits end to end: multi-device policies, idle and token expiry, frame size and
//! rate, in-flight cap, connection caps, slow consumers, and SIGTERM drain of a real process.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use im_gateway::push::config::Rate;
use im_gateway::push::registry::MultiDevicePolicy;
use im_gateway::units::{ByteSize, HumanDuration};
use im_proto::im::echo::v1::{EchoReply, EchoRequest};
use im_proto::im::gateway::v1::{server_frame, ClientFrame, PresenceRequest};
use im_tests::{
    echo_routes, hs256_token, unix_now, wait_for, EchoBackend, GatewayProcess, ScratchDir,
    TestGateway,
};
use prost::Message as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use super::push::{
    authed, connect, connect_addr, echo_push, next, push_client, server_frame, token, wait_online,
    Ws,
};

/// The close code the client sees next (skipping data and pings), within 10 s.
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("closed within 10 s")
        {
            Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
            Some(Ok(Message::Close(None))) | None => return 1005,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("connection broke without a close frame: {e}"),
        }
    }
}

fn request(seq: u64, cmd: u32, req: EchoRequest) -> Message {
    Message::Binary(
        ClientFrame {
            seq,
            cmd,
            payload: req.encode_to_vec(),
            traceparent: String::new(),
        }
        .encode_to_vec()
        .into(),
    )
}

fn response(msg: Message) -> (u64, i32) {
    let server_frame::Body::Response(r) = server_frame(msg) else {
        panic!("response expected")
    };
    (r.seq, r.code)
}

async fn devices(gw: &TestGateway, user: &str) -> usize {
    let reply = push_client(gw)
        .await
        .presence(authed(PresenceRequest {
            user_ids: vec![user.into()],
        }))
        .await
        .unwrap()
        .into_inner();
    reply.users[0].devices.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_keeps_every_device_and_one_keeps_only_the_newest() {
    let backend = EchoBackend::start().await;
    let routes = echo_routes(&[backend.addr], "");

    let gw =
        TestGateway::start_with(&routes, |c| c.push.multi_device = MultiDevicePolicy::Allow).await;
    let _a = connect(&gw, &format!("token={}", token("u1", "s1", "d1", "ios")))
        .await
        .unwrap();
    let _b = connect(&gw, &format!("token={}", token("u1", "s2", "d2", "ios")))
        .await
        .unwrap();
    let _c = connect(&gw, &format!("token={}", token("u1", "s3", "d3", "web")))
        .await
        .unwrap();
    wait_for("three devices online", Duration::from_secs(10), || async {
        (devices(&gw, "u1").await == 3).then_some(())
    })
    .await;
    drop(gw);

    let gw =
        TestGateway::start_with(&routes, |c| c.push.multi_device = MultiDevicePolicy::One).await;
    let mut phone = connect(&gw, &format!("token={}", token("u1", "s1", "d1", "ios")))
        .await
        .unwrap();
    wait_online(&gw, &["u1"]).await;
    let _laptop = connect(&gw, &format!("token={}", token("u1", "s2", "d2", "web")))
        .await
        .unwrap();
    let server_frame::Body::Push(p) = server_frame(next(&mut phone).await) else {
        panic!("session_kicked expected")
    };
    assert_eq!(p.kind, "session_kicked");
    assert_eq!(
        close_code(&mut phone).await,
        4002,
        "another platform kicks under `one`"
    );
    assert_eq!(devices(&gw, "u1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_oversize_and_invalid_text_close_with_their_codes() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), |c| {
        c.push.idle_timeout = HumanDuration(Duration::from_millis(700));
        c.push.max_message = ByteSize(64 * 1024);
    })
    .await;
    let q = |u: &str| format!("token={}", token(u, u, "d", "ios"));

    let mut idle = connect(&gw, &q("idle")).await.unwrap();
    let t = Instant::now();
    assert_eq!(close_code(&mut idle).await, 1008);
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );

    let mut big = connect(&gw, &q("big")).await.unwrap();
    big.send(Message::Binary(vec![0u8; 64 * 1024 + 1].into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut big).await, 1009);

    // A frame just under the cap is an (undecodable) request: answered, connection kept.
    let mut fits = connect(&gw, &q("fits")).await.unwrap();
    fits.send(Message::Binary(vec![0xffu8; 60 * 1024].into()))
        .await
        .unwrap();
    assert_eq!(response(next(&mut fits).await), (0, 3));

    let mut text = connect(&gw, &q("text")).await.unwrap();
    let raw = Frame::message(vec![0xc3u8, 0x28], OpCode::Data(Data::Text), true);
    text.send(Message::Frame(raw)).await.unwrap();
    assert_eq!(close_code(&mut text).await, 1007);

    let metrics = gw.metrics().await;
    for code in ["1007", "1008", "1009"] {
        assert!(
            metrics.contains(&format!("im_gateway_ws_closes_total{{code=\"{code}\"")),
            "close {code} counted:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_closes_the_session_with_4001() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    let short = hs256_token(&json!({"sub": "u1", "sid": "s1", "exp": unix_now() + 2}));
    let mut ws = connect(&gw, &format!("token={short}")).await.unwrap();
    // The close itself is awaited (within close_code's bound); its timing is checked on a paused
    // clock in the session's unit tests (push::session_tests).
    assert_eq!(close_code(&mut ws).await, 4001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_cap_and_frame_flood() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), |c| {
        c.push.max_inflight = 2;
        c.push.frame_rate = Rate {
            per_second: 1.0,
            burst: 10,
        };
        c.push.frame_flood_strikes = 5;
    })
    .await;
    let q = |u: &str| format!("token={}", token(u, u, "d", "ios"));

    // Two slow requests fill the cap; the third is refused at once, without a backend call.
    let mut ws = connect(&gw, &q("busy")).await.unwrap();
    let slow = || EchoRequest {
        delay_ms: 400,
        ..Default::default()
    };
    for seq in 1..=3 {
        ws.send(request(seq, 1, slow())).await.unwrap();
    }
    assert_eq!(response(next(&mut ws).await), (3, 8), "RESOURCE_EXHAUSTED");
    let mut done = [response(next(&mut ws).await), response(next(&mut ws).await)];
    done.sort();
    assert_eq!(done, [(1, 0), (2, 0)]);
    assert_eq!(backend.calls(), 2);

    // A flood: the burst passes, then RESOURCE_EXHAUSTED answers, then 1008.
    let mut flood = connect(&gw, &q("flood")).await.unwrap();
    for seq in 1..=30 {
        if flood
            .send(request(seq, 999, EchoRequest::default()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut codes = Vec::new();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), flood.next())
            .await
            .expect("flood answered")
        {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(m @ Message::Binary(_))) => codes.push(response(m).1),
            Some(Ok(_)) => {}
            other => panic!("unexpected end: {other:?}"),
        }
    };
    assert_eq!(close, 1008);
    assert_eq!(codes.iter().filter(|&&c| c == 12).count(), 10, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 8).count(), 5, "{codes:?}");
    assert!(gw
        .metrics()
        .await
        .contains("im_gateway_ws_frames_rate_limited_total 5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_per_ip_and_handshake_rate() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), |c| {
        c.push.max_connections_per_ip = 2;
        c.push.handshake_rate = Rate {
            per_second: 0.01,
            burst: 4,
        };
    })
    .await;
    let q = |u: &str| format!("token={}", token(u, u, "d", "ios"));
    let first = connect(&gw, &q("a")).await.unwrap();
    let _second = connect(&gw, &q("b")).await.unwrap();
    assert_eq!(connect(&gw, &q("c")).await.err(), Some(429), "per-IP cap");
    drop(first);
    // The slot frees when the gateway sees the close.
    wait_for("first session gone", Duration::from_secs(10), || async {
        (metric(&gw, "im_gateway_ws_connections").await == 1).then_some(())
    })
    .await;
    let fourth = connect(&gw, &q("d")).await;
    assert!(fourth.is_ok(), "a freed slot is reusable");
    drop(fourth);
    assert_eq!(
        connect(&gw, "token=garbage").await.err(),
        Some(429),
        "the handshake rate is checked before the token"
    );
    let metrics = gw.metrics().await;
    for label in ["ip_cap", "handshake_rate"] {
        assert!(
            metrics.contains(&format!(
                "im_gateway_ws_handshake_rejections_total{{reason=\"{label}\"}}"
            )),
            "{label} counted:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_with_4003_and_memory_stays_bounded() {
    const QUEUE: usize = 256 * 1024;
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), |c| {
        c.push.queue_bytes = ByteSize(QUEUE as u64);
    })
    .await;
    let stuck = connect(&gw, &format!("token={}", token("slow", "s", "d", "ios")))
        .await
        .unwrap();
    wait_online(&gw, &["slow"]).await;

    let payload = EchoReply {
        text: "x".repeat(60 * 1024),
        ..Default::default()
    }
    .encode_to_vec();
    let mut client = push_client(&gw).await;
    let mut max_seen = 0u64;
    let mut pushed = 0;
    // Far more than the kernel's socket buffers plus the queue can hold (tens of MB).
    for _ in 0..2_000 {
        let reply = client
            .push(authed(echo_push(&["slow"], &payload)))
            .await
            .unwrap()
            .into_inner();
        pushed += reply.delivered;
        max_seen = max_seen.max(metric(&gw, "im_gateway_ws_queued_bytes_max").await);
        if reply.users_online == 0 {
            break;
        }
    }
    let slow_closes = metric(&gw, "im_gateway_ws_slow_consumer_closes_total").await;
    assert_eq!(
        slow_closes, 1,
        "closed as a slow consumer after {pushed} pushes"
    );
    assert!(max_seen > 0, "the queue was observed filling");
    assert!(
        max_seen <= QUEUE as u64,
        "queued {max_seen} bytes > bound {QUEUE}"
    );
    wait_for("session gone", Duration::from_secs(10), || async {
        (metric(&gw, "im_gateway_ws_connections").await == 0).then_some(())
    })
    .await;

    // The client reads what the kernel still holds, then finds the connection gone.
    let mut stuck = stuck;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stuck.next().await {
                Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            }
        }
    })
    .await
    .expect("the TCP connection is gone");
    assert!(matches!(ended, None | Some(4003)), "{ended:?}");
}

async fn metric(gw: &TestGateway, name: &str) -> u64 {
    let text = gw.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_session_with_1001_and_exits_within_the_window() {
    let backend = EchoBackend::start().await;
    let dir = ScratchDir::new("drain");
    let gw = GatewayProcess::spawn(
        env!("CARGO_BIN_EXE_gateway_process"),
        &dir,
        &echo_routes(&[backend.addr], ""),
        "push: {internal_token_file: internal.token, drain_window: 1s}\n\
         shutdown: {grace_period: 2s, graceful_timeout: 1s}\n",
    )
    .await;
    let push = gw.push;
    let mut sessions = Vec::new();
    for i in 0..20 {
        let user = format!("u{i}");
        let q = format!("token={}", token(&user, &user, "d", "ios"));
        sessions.push(connect_addr(push, &q).await.expect("session opens"));
    }

    let t = Instant::now();
    gw.terminate();
    let mut gw = gw;
    let mut when = Vec::new();
    for ws in &mut sessions {
        assert_eq!(close_code(ws).await, 1001);
        when.push(t.elapsed());
    }
    when.sort();
    assert!(
        when[when.len() - 1] - when[0] >= Duration::from_millis(200),
        "closes are spread over the window: {when:?}"
    );
    let status = gw.child.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        tokio::net::TcpStream::connect(push).await.is_err(),
        "no longer accepting"
    );
}
