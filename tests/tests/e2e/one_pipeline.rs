//! HTTP and WebSocket as one pipeline (one-pipeline issue, the drift defects): the same route and
//! the same backend reply get the same policy on both paths; frames carry a `traceparent` to the
//! backend (or inherit the upgrade request's); `consistent_hash` on a pass-through route keeps a
//! user on one endpoint.

use futures::SinkExt;
use im_proto::im::echo::v1::echo_service_client::EchoServiceClient;
use im_proto::im::echo::v1::EchoRequest;
use im_tests::{echo_routes, user_token, EchoBackend, ScratchDir, TestGateway};
use prost::Message as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::push::{connect, next, token, Ws};

async fn json_call(ws: &mut Ws, frame: &str) -> Value {
    ws.send(Message::Text(frame.into())).await.unwrap();
    let Message::Text(t) = next(ws).await else {
        panic!("a JSON frame expected")
    };
    serde_json::from_str(t.as_str()).unwrap()
}

/// The shipped descriptor set with `EchoReply.text` (field 1) declared `fixed32`: every real
/// echo reply then fails to render as JSON.
fn mismatched_descriptors(dir: &ScratchDir) -> std::path::PathBuf {
    let mut set = prost_types::FileDescriptorSet::decode(im_proto::DESCRIPTOR_SET).unwrap();
    let reply = set
        .file
        .iter_mut()
        .filter(|f| f.package() == "im.echo.v1")
        .flat_map(|f| f.message_type.iter_mut())
        .find(|m| m.name() == "EchoReply")
        .expect("EchoReply");
    let text = reply.field.iter_mut().find(|f| f.number() == 1).unwrap();
    text.set_type(prost_types::field_descriptor_proto::Type::Fixed32);
    let path = dir.path("descriptors.bin");
    std::fs::write(&path, set.encode_to_vec()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrenderable_reply_is_one_policy_on_http_and_websocket() {
    let backend = EchoBackend::start().await;
    let dir = ScratchDir::new("descriptors");
    let descriptors = mismatched_descriptors(&dir);
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), |c| {
        c.descriptors = Some(descriptors.clone());
    })
    .await;
    let (status, _, body) = gw.post("/service/echo", r#"{"text":"hi"}"#, &[]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (502, Some("INTERNAL")),
        "{body}"
    );

    let mut ws = connect(
        &gw,
        &format!("encoding=json&token={}", token("u1", "s1", "d1", "web")),
    )
    .await
    .unwrap();
    let v = json_call(&mut ws, r#"{"seq":"3","cmd":1,"payload":{"text":"hi"}}"#).await;
    assert_eq!(
        (
            v["response"]["code"].as_str(),
            v["response"]["message"].as_str()
        ),
        (Some("INTERNAL"), body["message"].as_str()),
        "the frame got {v}, HTTP got {body}"
    );
    assert!(gw
        .metrics()
        .await
        .contains("im_gateway_upstream_invalid_replies_total{route=\"echo\"} 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_carry_a_traceparent_or_inherit_the_upgrades() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    let upgrade = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let own = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let url = format!(
        "ws://{}/ws?encoding=json&token={}",
        gw.push,
        token("u1", "s1", "d1", "web")
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("traceparent", upgrade.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();

    let frame = format!(r#"{{"seq":"1","cmd":1,"traceparent":"{own}","payload":{{"text":"a"}}}}"#);
    let v = json_call(&mut ws, &frame).await;
    assert_eq!(
        v["response"]["payload"]["metadata"]["traceparent"], own,
        "{v}"
    );
    let v = json_call(&mut ws, r#"{"seq":"2","cmd":1,"payload":{"text":"b"}}"#).await;
    assert_eq!(
        v["response"]["payload"]["metadata"]["traceparent"], upgrade,
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_pass_through_keeps_a_user_on_one_endpoint() {
    let a = EchoBackend::start().await;
    let b = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[a.addr, b.addr], "    lb: consistent_hash")).await;
    let channel = tonic::transport::Endpoint::from_shared(gw.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for user in ["alice", "bob", "carol"] {
        let bearer: tonic::metadata::MetadataValue<_> =
            format!("Bearer {}", user_token(user)).parse().unwrap();
        let mut client = EchoServiceClient::with_interceptor(
            channel.clone(),
            move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", bearer.clone());
                Ok(r)
            },
        );
        let mut served = std::collections::HashSet::new();
        for _ in 0..16 {
            let reply = client
                .echo(EchoRequest::default())
                .await
                .unwrap()
                .into_inner();
            served.insert(reply.served_by);
        }
        assert_eq!(served.len(), 1, "{user} was spread over {served:?}");
    }
}
