//! The gateway's gRPC answers as clients nobody on the project wrote see them: python `grpcio`
//! (gRPC C-core, like most non-Rust clients) and `@grpc/grpc-js`. tonic accepts a status in a
//! HEADERS frame followed by an empty DATA frame with END_STREAM; C-core reports that as
//! `UNKNOWN: Stream removed`. Every answer the gateway makes itself must be trailers-only: one
//! HEADERS frame with END_STREAM (security issue, item 7), the pass-through `max_body` refusal
//! (item 6) included.

use im_proto::im::echo::v1::{EchoReply, EchoRequest};
use im_tests::{free_port, loopback, user_token, EchoBackend, TestGateway};
use prost::Message;
use serde_json::Value;

#[derive(Debug, Clone, Copy)]
enum Client {
    Grpcio,
    GrpcJs,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// One unary call through `client`; its JSON line (`code`, `details`, `reply_hex`).
async fn call(client: Client, gw: &TestGateway, path: &str, body: &[u8], meta: &[String]) -> Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/grpc-clients");
    let mut cmd = match client {
        Client::Grpcio => {
            let mut c = tokio::process::Command::new(format!("{dir}/.venv/bin/python"));
            c.arg(format!("{dir}/call.py"));
            c
        }
        Client::GrpcJs => {
            let mut c = tokio::process::Command::new("node");
            c.arg(format!("{dir}/call.mjs"));
            c
        }
    };
    let out = cmd
        .arg(gw.edge.to_string())
        .arg(path)
        .arg(hex(body))
        .args(meta)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{client:?} client (scripts/bootstrap.sh installs it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "{client:?}: no result line: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_clients_read_every_gateway_made_status() {
    let backend = EchoBackend::start().await;
    let dead = loopback(free_port());
    let routes = format!(
        r#"upstreams:
  echo:
    endpoints: ["{live}"]
  sick:
    endpoints: ["{dead}"]
    health_check: {{ interval: 50ms, timeout: 50ms }}
routes:
  - {{ name: echo, grpc_service: im.echo.v1.EchoService, upstream: echo, auth: required,
       max_body: 1KiB }}
  - {{ name: users, grpc_service: im.user.v1.UserService, upstream: echo, auth: none,
       rate_limit: {{ key: ip, per_second: 0.001, burst: 1 }} }}
  - {{ name: friends, grpc_service: im.friend.v1.FriendService, upstream: sick, auth: none }}
"#,
        live = backend.addr
    );
    let gw = TestGateway::start(&routes).await;
    let echo = EchoRequest {
        text: "through C-core".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let token = format!("authorization=Bearer {}", user_token("u1"));
    let big = EchoRequest {
        text: "x".repeat(2048),
        ..Default::default()
    }
    .encode_to_vec();

    // The rate-limited route: the first call of the burst passes (the echo backend does not
    // serve UserService), the second is the gateway's.
    let login = "/im.user.v1.UserService/UsernameLogin";
    let first = call(Client::Grpcio, &gw, login, &[], &[]).await;
    assert_eq!(first["code"], 12, "{first}");

    let mut failures = Vec::new();
    for client in [Client::Grpcio, Client::GrpcJs] {
        let ok = call(
            client,
            &gw,
            "/im.echo.v1.EchoService/Echo",
            &echo,
            std::slice::from_ref(&token),
        )
        .await;
        let reply = EchoReply::decode(&*unhex(ok["reply_hex"].as_str().unwrap_or_default()));
        if ok["code"] != 0 || reply.map(|r| r.text).as_deref() != Ok("through C-core") {
            failures.push(format!("{client:?}: a routed call failed: {ok}"));
        }
        for (what, path, meta, want) in [
            ("no token", "/im.echo.v1.EchoService/Echo", vec![], 16),
            (
                "a bad token",
                "/im.echo.v1.EchoService/Echo",
                vec!["authorization=Bearer nope".to_owned()],
                16,
            ),
            ("no route", "/im.nowhere.v1.Nothing/Call", vec![], 12),
            ("rate limited", login, vec![], 8),
            (
                "no healthy upstream",
                "/im.friend.v1.FriendService/GetFriendList",
                vec![],
                14,
            ),
            (
                "body too large",
                "/im.echo.v1.EchoService/Echo",
                vec![token.clone()],
                8,
            ),
        ] {
            let body = if what == "body too large" {
                &big
            } else {
                &echo
            };
            let got = call(client, &gw, path, body, &meta).await;
            if got["code"] != want {
                failures.push(format!("{client:?}, {what}: want code {want}, got {got}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
