//! One revoke path (security issue, item 8): admin revoke closes the session's sockets like
//! PushService `Revoke`; a kick outlives the token it closed (a refreshed token of the same `sid`
//! stays refused); the denylist survives a restart (`auth.revocation_file`; a corrupt one stops
//! start-up); and `refresh_token` never extends a session past its `sxp`.

use std::time::Duration;

use im_gateway::config::GatewayConfig;
use im_proto::im::gateway::v1::KickRequest;
use im_tests::im::ImSystem;
use im_tests::{echo_routes, unix_now, wait_for, EchoBackend, ScratchDir, TestGateway};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::push::{authed, connect, next, push_client, token, wait_online};

/// The close code the socket ends with, skipping other frames.
async fn close_code(ws: &mut crate::push::Ws) -> u16 {
    loop {
        if let Message::Close(frame) = next(ws).await {
            return frame.map_or(1005, |f| u16::from(f.code));
        }
    }
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let mut bytes = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in payload.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
        }
    }
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_revoke_closes_the_sessions_sockets() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    let mut ws = connect(&gw, &format!("token={}", token("u1", "s-adm", "d1", "web")))
        .await
        .unwrap();
    wait_online(&gw, &["u1"]).await;
    let resp = reqwest::Client::new()
        .post(gw.admin_url("/admin/revoke"))
        .header("content-type", "application/json")
        .body(json!({"sid": "s-adm", "exp": unix_now() + 60}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let closed = tokio::time::timeout(Duration::from_secs(5), close_code(&mut ws)).await;
    assert_eq!(
        closed.ok(),
        Some(4001),
        "the revoked session's socket stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_outlives_the_token_it_closed() {
    let sys = ImSystem::start(|b| b.token_ttl = Duration::from_secs(2)).await;
    let mut alice = sys.user("alice", "a1").await;
    let first = alice.token.clone().unwrap();
    let first_exp = claims(&first)["exp"].as_u64().unwrap();
    // A refresh a second later: the same sid with a later exp.
    wait_for("a second to pass", Duration::from_secs(5), || async {
        (unix_now() > claims(&first)["iat"].as_u64().unwrap()).then_some(())
    })
    .await;
    let refreshed = alice.ok("user/refresh_token", json!({})).await;
    let second = refreshed["token"].as_str().unwrap().to_owned();
    assert!(claims(&second)["exp"].as_u64().unwrap() > first_exp);

    let mut ws = connect(&sys.gw, &alice.ws_query()).await.unwrap();
    wait_online(&sys.gw, &[alice.user_id.as_str()]).await;
    let kicked = push_client(&sys.gw)
        .await
        .kick(authed(KickRequest {
            user_id: alice.user_id.clone(),
            device_id: String::new(),
            reason: "admin".into(),
        }))
        .await
        .unwrap();
    assert_eq!(kicked.into_inner().closed, 1);
    assert_eq!(close_code(&mut ws).await, 4002);

    // Once the kicked token has expired, the refreshed one must still be refused.
    wait_for(
        "the kicked token to expire",
        Duration::from_secs(10),
        || async { (unix_now() > first_exp + 1).then_some(()) },
    )
    .await;
    alice.token = Some(second);
    let (status, v) = alice.call("user/get_user_info", json!({})).await;
    assert_eq!(
        status, 401,
        "the kicked session's refreshed token works again: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_denylist_survives_a_restart_and_a_corrupt_file_stops_start_up() {
    let backend = EchoBackend::start().await;
    let keep = ScratchDir::new("revoked");
    let file = keep.path("revoked.json");
    let routes = echo_routes(&[backend.addr], "")
        .replace("    auth: none\n    max_body: 64KiB", "    max_body: 64KiB");
    let with_file = |c: &mut GatewayConfig| c.auth.revocation_file = Some(file.clone());
    let bearer = format!("Bearer {}", token("u1", "s-persist", "d1", "web"));
    let call = |gw: &TestGateway| {
        let (url, bearer) = (gw.url("/service/echo"), bearer.clone());
        async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .header("authorization", bearer)
                .body("{}")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    {
        let gw = TestGateway::start_with(&routes, with_file).await;
        assert_eq!(call(&gw).await, 200);
        let resp = reqwest::Client::new()
            .post(gw.admin_url("/admin/revoke"))
            .header("content-type", "application/json")
            .body(json!({"sid": "s-persist"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(call(&gw).await, 401);
    }
    let gw = TestGateway::start_with(&routes, with_file).await;
    assert_eq!(call(&gw).await, 401, "a restart forgot the revocation");
    drop(gw);

    std::fs::write(&file, "{\"version\": 1, \"revoked\": [oops").unwrap();
    let mut cfg = GatewayConfig::default();
    cfg.auth.hs256_secret_file = None;
    cfg.auth.revocation_file = Some(file.clone());
    let routes_path = keep.path("routes.yaml");
    std::fs::write(&routes_path, &routes).unwrap();
    let err = im_gateway::Gateway::build(cfg, routes_path)
        .err()
        .expect("a corrupt revocation file is refused");
    let err = err.to_string();
    assert!(
        err.contains("auth.revocation_file") && err.contains("revoked.json"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_never_extends_a_session_past_its_end() {
    let sys = ImSystem::start(|b| b.max_session = Duration::from_secs(60)).await;
    let mut alice = sys.user("alice", "a1").await;
    let first = claims(alice.token.as_deref().unwrap());
    let sxp = first["sxp"].as_u64().expect("tokens carry sxp");
    assert!(sxp <= unix_now() + 60, "{first}");
    assert!(first["exp"].as_u64().unwrap() <= sxp, "{first}");
    let refreshed = alice.ok("user/refresh_token", json!({})).await;
    alice.token = Some(refreshed["token"].as_str().unwrap().to_owned());
    let second = claims(alice.token.as_deref().unwrap());
    assert_eq!(
        second["sxp"], first["sxp"],
        "a refresh moved the session's end"
    );
    assert!(second["exp"].as_u64().unwrap() <= sxp, "{second}");
    assert_eq!(second["sid"], first["sid"]);
}
