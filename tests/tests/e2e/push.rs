//! The WebSocket push plugin end to end: real tungstenite clients, real PushService calls.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use im_proto::im::echo::v1::{EchoReply, EchoRequest};
use im_proto::im::gateway::v1::push_service_client::PushServiceClient;
use im_proto::im::gateway::v1::{
    server_frame, ClientFrame, PresenceRequest, PushRequest, RevokeRequest, ServerFrame,
    SessionKicked,
};
use im_tests::{
    echo_routes, hs256_token, unix_now, wait_for, EchoBackend, TestGateway, INTERNAL_TOKEN,
};
use prost::Message as _;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) fn token(user: &str, sid: &str, dev: &str, plt: &str) -> String {
    hs256_token(&json!({"sub": user, "sid": sid, "dev": dev, "plt": plt, "exp": unix_now() + 300}))
}

pub(crate) async fn connect(gw: &TestGateway, query: &str) -> Result<Ws, u16> {
    connect_addr(gw.push, query).await
}

pub(crate) async fn connect_addr(addr: std::net::SocketAddr, query: &str) -> Result<Ws, u16> {
    let url = format!("ws://{addr}/ws?{query}");
    match tokio_tungstenite::connect_async(url.into_client_request().unwrap()).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

pub(crate) async fn push_client(gw: &TestGateway) -> PushServiceClient<tonic::transport::Channel> {
    PushServiceClient::connect(format!("http://{}", gw.internal))
        .await
        .unwrap()
}

/// A `chat_message_notify` push of an `im.echo.v1.EchoReply` payload.
pub(crate) fn echo_push(users: &[&str], payload: &[u8]) -> PushRequest {
    PushRequest {
        user_ids: users.iter().map(|u| u.to_string()).collect(),
        kind: "chat_message_notify".into(),
        payload_type: "im.echo.v1.EchoReply".into(),
        payload: payload.to_vec(),
        ..Default::default()
    }
}

pub(crate) fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {INTERNAL_TOKEN}").parse().unwrap(),
    );
    req
}

/// The next data message, skipping pings.
pub(crate) async fn next(ws: &mut Ws) -> Message {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("stream open")
            .expect("no protocol error");
        if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            return msg;
        }
    }
}

pub(crate) fn server_frame(msg: Message) -> server_frame::Body {
    let Message::Binary(b) = msg else {
        panic!("binary frame expected, got {msg:?}")
    };
    ServerFrame::decode(b).unwrap().body.expect("frame body")
}

pub(crate) async fn wait_online(gw: &TestGateway, users: &[&str]) {
    let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    wait_for("sessions registered", Duration::from_secs(15), || {
        let users = users.clone();
        async move {
            let mut c = push_client(gw).await;
            let reply = c
                .presence(authed(PresenceRequest { user_ids: users }))
                .await
                .ok()?
                .into_inner();
            reply
                .users
                .iter()
                .all(|u| !u.devices.is_empty())
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_proto_and_json_sessions() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    let mut alice = connect(
        &gw,
        &format!("token={}", token("alice", "s-a", "d1", "ios")),
    )
    .await
    .unwrap();
    let mut bob = connect(
        &gw,
        &format!("encoding=json&token={}", token("bob", "s-b", "d2", "web")),
    )
    .await
    .unwrap();
    wait_online(&gw, &["alice", "bob"]).await;

    let payload = EchoReply {
        text: "hello".into(),
        number: 7,
        ..Default::default()
    }
    .encode_to_vec();
    let reply = push_client(&gw)
        .await
        .push(authed(echo_push(&["alice", "bob", "carol"], &payload)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.delivered, reply.users_online, reply.users_offline),
        (2, 2, 1)
    );

    let server_frame::Body::Push(p) = server_frame(next(&mut alice).await) else {
        panic!("push expected")
    };
    assert_eq!(
        (p.kind.as_str(), p.payload_type.as_str()),
        ("chat_message_notify", "im.echo.v1.EchoReply")
    );
    assert_eq!(p.payload, payload);
    let Message::Text(t) = next(&mut bob).await else {
        panic!("text expected")
    };
    let v: Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(
        v["push"]["payload"]["text"], "hello",
        "JSON clients see a nested payload: {v}"
    );
    assert_eq!(v["push"]["payload"]["number"], "7");

    // An unknown payload_type is INVALID_ARGUMENT; a call without the internal token is refused.
    let err = push_client(&gw)
        .await
        .push(authed(PushRequest {
            user_ids: vec!["alice".into()],
            kind: "x".into(),
            payload_type: "im.nope.V1".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = push_client(&gw)
        .await
        .presence(PresenceRequest {
            user_ids: vec!["alice".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_never_get_a_101() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), |cfg| {
        cfg.push.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let good = token("u1", "s-1", "d1", "ios");
    let expired = hs256_token(&json!({"sub": "u1", "exp": unix_now() - 3600}));
    assert_eq!(connect(&gw, "").await.err(), Some(401));
    assert_eq!(connect(&gw, "token=garbage").await.err(), Some(401));
    assert_eq!(
        connect(&gw, &format!("token={expired}")).await.err(),
        Some(401)
    );
    assert_eq!(
        connect(&gw, &format!("token={good}&device_id=other"))
            .await
            .err(),
        Some(401)
    );
    let revoked = token("u1", "s-revoked", "d1", "ios");
    push_client(&gw)
        .await
        .revoke(authed(RevokeRequest {
            sid: "s-revoked".into(),
            exp: 0,
        }))
        .await
        .unwrap();
    assert_eq!(
        connect(&gw, &format!("token={revoked}")).await.err(),
        Some(401)
    );

    let mut req = format!("ws://{}/ws?token={good}", gw.push)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("wrong origin got through: {:?}", other.map(|_| ())),
    }
    assert!(connect(&gw, &format!("token={good}&device_id=d1"))
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_frames_use_the_dispatcher() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    let mut ws = connect(&gw, &format!("token={}", token("u1", "s-1", "d1", "ios")))
        .await
        .unwrap();
    let send = |seq, cmd, payload: Vec<u8>| {
        let traceparent = String::new();
        Message::Binary(
            ClientFrame {
                seq,
                cmd,
                payload,
                traceparent,
            }
            .encode_to_vec()
            .into(),
        )
    };

    // A slow request and a fast one: responses come back out of order, matched by seq.
    ws.send(send(
        1,
        1,
        EchoRequest {
            text: "slow".into(),
            delay_ms: 300,
            ..Default::default()
        }
        .encode_to_vec(),
    ))
    .await
    .unwrap();
    ws.send(send(
        2,
        1,
        EchoRequest {
            text: "fast".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    ))
    .await
    .unwrap();
    let mut order = Vec::new();
    for _ in 0..2 {
        let server_frame::Body::Response(r) = server_frame(next(&mut ws).await) else {
            panic!()
        };
        assert_eq!(r.code, 0, "{}", r.message);
        let reply = EchoReply::decode(r.payload.as_slice()).unwrap();
        assert_eq!(
            reply.metadata["x-user-id"], "u1",
            "identity comes from the session's token"
        );
        order.push((r.seq, reply.text));
    }
    assert_eq!(order, [(2, "fast".to_string()), (1, "slow".to_string())]);

    // Errors are responses; the connection stays.
    ws.send(send(3, 999, vec![])).await.unwrap();
    let server_frame::Body::Response(r) = server_frame(next(&mut ws).await) else {
        panic!()
    };
    assert_eq!((r.seq, r.code), (3, tonic::Code::Unimplemented as i32));
    ws.send(Message::Binary(vec![0xff, 0xff, 0xff].into()))
        .await
        .unwrap();
    let server_frame::Body::Response(r) = server_frame(next(&mut ws).await) else {
        panic!()
    };
    assert_eq!((r.seq, r.code), (0, tonic::Code::InvalidArgument as i32));
    ws.send(send(
        4,
        1,
        EchoRequest {
            fail_code: 5,
            fail_message: "nope".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    ))
    .await
    .unwrap();
    let server_frame::Body::Response(r) = server_frame(next(&mut ws).await) else {
        panic!()
    };
    assert_eq!(
        (r.seq, r.code, r.message.as_str()),
        (4, tonic::Code::NotFound as i32, "nope")
    );

    // JSON sessions speak the same frames with nested payloads.
    let mut js = connect(
        &gw,
        &format!("encoding=json&token={}", token("u2", "s-2", "d2", "web")),
    )
    .await
    .unwrap();
    js.send(Message::Text(
        r#"{"seq":"9","cmd":1,"payload":{"text":"hi json"}}"#.into(),
    ))
    .await
    .unwrap();
    let Message::Text(t) = next(&mut js).await else {
        panic!()
    };
    let v: Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(
        (
            v["response"]["seq"].as_str(),
            v["response"]["code"].as_str()
        ),
        (Some("9"), Some("OK"))
    );
    assert_eq!(v["response"]["payload"]["text"], "hi json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_login_kicks_the_old_one_and_revoke_closes_with_4001() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    let mut first = connect(
        &gw,
        &format!("token={}", token("u1", "s-1", "phone-1", "ios")),
    )
    .await
    .unwrap();
    wait_online(&gw, &["u1"]).await;
    let mut second = connect(
        &gw,
        &format!("token={}", token("u1", "s-2", "phone-2", "ios")),
    )
    .await
    .unwrap();

    let server_frame::Body::Push(p) = server_frame(next(&mut first).await) else {
        panic!("session_kicked expected")
    };
    assert_eq!(p.kind, "session_kicked");
    let kicked = SessionKicked::decode(p.payload.as_slice()).unwrap();
    assert_eq!(kicked.by_device_id, "phone-2");
    let Message::Close(Some(frame)) = next(&mut first).await else {
        panic!("close expected")
    };
    assert_eq!(u16::from(frame.code), 4002);

    let closed = push_client(&gw)
        .await
        .revoke(authed(RevokeRequest {
            sid: "s-2".into(),
            exp: 0,
        }))
        .await
        .unwrap();
    assert_eq!(closed.into_inner().closed, 1);
    let Message::Close(Some(frame)) = next(&mut second).await else {
        panic!("close expected")
    };
    assert_eq!(u16::from(frame.code), 4001);
}
