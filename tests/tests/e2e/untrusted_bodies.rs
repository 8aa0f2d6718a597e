//! Untrusted protobuf with bounded memory (security issue, item 10): a 12 MiB body of tiny
//! unknown fields costs the gateway process about its own size, not hundreds of MB (it is checked
//! in place, not materialized), and a WebSocket cmd frame obeys its route's `max_body`: a larger
//! frame is answered RESOURCE_EXHAUSTED for its `seq` and the connection stays.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures::SinkExt;
use im_proto::im::echo::v1::{EchoReply, EchoRequest};
use im_proto::im::gateway::v1::{server_frame, ClientFrame};
use im_tests::process::ManagedProcess;
use im_tests::{
    echo_routes, free_port, loopback, wait_for, EchoBackend, ScratchDir, TestGateway, TEST_SECRET,
};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

use crate::push::{connect, next, server_frame, token};

/// Peak resident memory of `pid`, in bytes.
fn peak_rss(child: &ManagedProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_tiny_unknown_fields_is_not_materialized() {
    let backend = EchoBackend::start_with_limit(16 << 20).await;
    let dir = ScratchDir::new("unknown-fields");
    let routes = format!(
        r#"upstreams:
  echo: {{ endpoints: ["{}"], max_message: 16MiB, timeout: 30s }}
routes:
  - {{ name: echo, http: {{ path: /echo }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo,
       auth: none, max_body: 13MiB }}
"#,
        backend.addr
    );
    std::fs::write(dir.path("routes.yaml"), routes).unwrap();
    std::fs::write(dir.path("hs256.key"), TEST_SECRET).unwrap();
    let (edge, admin) = (loopback(free_port()), loopback(free_port()));
    std::fs::write(
        dir.path("gateway.yaml"),
        format!(
            "listen: {{edge: \"{edge}\", admin: \"{admin}\", push: \"{}\", internal: \"{}\"}}\n\
             threads: 1\nroutes: routes.yaml\nauth: {{hs256_secret_file: hs256.key}}\n\
             push: {{drain_window: 0s}}\nshutdown: {{grace_period: 0s, graceful_timeout: 1s}}\n",
            loopback(free_port()),
            loopback(free_port())
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway_process"));
    command
        .args(["run", "--config"])
        .arg(dir.path("gateway.yaml"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    let mut child = ManagedProcess::spawn("gateway", &mut command, "cargo builds it");
    let url = format!("http://{edge}/echo");
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        http.post(&url)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
    };
    wait_for("the gateway to serve", Duration::from_secs(20), || async {
        post(Vec::new()).await.ok().map(drop)
    })
    .await;
    let before = peak_rss(&child);
    // Field 15 (unknown to EchoRequest) as a varint: 3 bytes each, 4 million of them, after a
    // known field so the backend's answer shows the body arrived whole.
    let mut body = EchoRequest {
        text: "still here".into(),
        ..Default::default()
    }
    .encode_to_vec();
    while body.len() < 12 << 20 {
        body.extend_from_slice(&[0x78, 0x01, 0x78, 0x01]);
    }
    let resp = post(body).await.expect("gateway answers");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let grown = peak_rss(&child).saturating_sub(before);
    child.kill();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(EchoReply::decode(bytes).unwrap().text, "still here");
    println!(
        "12 MiB of unknown fields: the gateway's peak RSS grew by {} MiB",
        grown >> 20
    );
    assert!(
        grown < 100 << 20,
        "the gateway's peak RSS grew by {} MiB for a 12 MiB body",
        grown >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cmd_frame_over_its_routes_max_body_is_refused_and_the_socket_stays() {
    let backend = EchoBackend::start().await;
    // The echo route (cmd 1) has max_body 64KiB; frames may be up to push.max_message (1 MiB).
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    let mut ws = connect(&gw, &format!("token={}", token("u1", "s1", "d1", "ios")))
        .await
        .unwrap();
    let frame = |seq: u64, text: String| {
        let payload = EchoRequest {
            text,
            ..Default::default()
        }
        .encode_to_vec();
        Message::Binary(
            ClientFrame {
                seq,
                cmd: 1,
                payload,
                traceparent: String::new(),
            }
            .encode_to_vec()
            .into(),
        )
    };
    ws.send(frame(7, "x".repeat(200 << 10))).await.unwrap();
    let server_frame::Body::Response(r) = server_frame(next(&mut ws).await) else {
        panic!("a response frame expected")
    };
    assert_eq!((r.seq, r.code), (7, 8), "{}", r.message);
    ws.send(frame(8, "small".into())).await.unwrap();
    let server_frame::Body::Response(r) = server_frame(next(&mut ws).await) else {
        panic!("a response frame expected")
    };
    assert_eq!(
        (r.seq, r.code),
        (8, 0),
        "the connection stays usable: {}",
        r.message
    );
}
