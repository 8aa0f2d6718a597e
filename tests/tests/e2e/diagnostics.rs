//! The shipped system exposes no diagnostic anonymously (security issue, item 6): through the
//! shipped routes.yaml, pass-through routes reach only the methods they list (never `SetHealth`),
//! the echo backend honours `delay_ms`, `fail_code` and `reply_padding` only when started with
//! `--diagnostics`, a plain echo of text stays public, and pass-through bodies obey the route's
//! `max_body` while they stream.

use im_proto::im::echo::v1::echo_service_client::EchoServiceClient;
use im_proto::im::echo::v1::{EchoRequest, SetHealthRequest};
use im_tests::im::ImSystem;
use serde_json::json;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_routes_expose_no_diagnostic_anonymously() {
    let sys = ImSystem::start(|_| {}).await;
    let mut grpc = EchoServiceClient::connect(sys.gw.url(""))
        .await
        .expect("h2c to the gateway")
        .max_encoding_message_size(8 << 20);

    let mut failures = Vec::new();
    match grpc.set_health(SetHealthRequest { serving: false }).await {
        Err(s) if s.code() == Code::Unimplemented => {}
        other => failures.push(format!("anonymous SetHealth through :edge: {other:?}")),
    }
    for (what, req) in [
        (
            "reply_padding",
            EchoRequest {
                reply_padding: 1 << 20,
                ..Default::default()
            },
        ),
        (
            "delay_ms",
            EchoRequest {
                delay_ms: 50,
                ..Default::default()
            },
        ),
        (
            "fail_code",
            EchoRequest {
                fail_code: 13,
                ..Default::default()
            },
        ),
    ] {
        match grpc.echo(req).await {
            Err(s) if s.code() == Code::PermissionDenied => {}
            other => failures.push(format!(
                "pass-through Echo with {what}: {:?}",
                other.map(|r| r.into_inner().padding.len())
            )),
        }
    }
    let plain = grpc
        .echo(EchoRequest {
            text: "hello".into(),
            ..Default::default()
        })
        .await;
    if plain.as_ref().map(|r| r.get_ref().text.as_str()).ok() != Some("hello") {
        failures.push(format!("a plain echo is public: {plain:?}"));
    }
    // Pass-through bodies obey the route's max_body (the default 1 MiB) while they stream.
    match grpc
        .echo(EchoRequest {
            text: "x".repeat(2 << 20),
            ..Default::default()
        })
        .await
    {
        Err(s) if s.code() == Code::ResourceExhausted => {}
        other => failures.push(format!(
            "a 2 MiB pass-through body: {:?}",
            other.map(|_| "OK")
        )),
    }

    // The HTTP bridge and cmd 9001 reach the same fields.
    let anon = sys.client();
    let (status, v) = anon
        .call("echo", json!({"text": "hi", "reply_padding": 4096}))
        .await;
    if status != 403 {
        failures.push(format!(
            "POST /service/echo with reply_padding: {status} {v}"
        ));
    }
    let (status, v) = anon.call("echo", json!({"text": "hi"})).await;
    if status != 200 || v["text"] != "hi" {
        failures.push(format!("POST /service/echo with text: {status} {v}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
