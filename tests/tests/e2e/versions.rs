//! Protocol versions on the socket: the subprotocol names the version (`im.v1.json`,
//! `im.v2.json`), the gateway takes the highest both sides speak, and a route binds its cmd to
//! another method for version 2 — a v1 and a v2 client side by side on one gateway get each
//! their own method. A client offering no version of ours gets v1; one offering only versions
//! the gateway does not speak is refused with 400 naming the ones it does.

use futures::{SinkExt, StreamExt};
use im_tests::{echo_routes, EchoBackend, TestGateway};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::push::{token, Ws};

/// A socket offering `protocols`; the subprotocol the gateway echoed, or the refusal's status
/// and body.
async fn open(
    gw: &TestGateway,
    protocols: Option<&str>,
) -> Result<(Ws, Option<String>), (u16, String)> {
    // A user of its own per offer: the sockets must not take each other's device slot.
    let user: String = format!("{protocols:?}")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let url = format!(
        "ws://{}/ws?token={}",
        gw.push,
        token(&user, &user, "d", "web")
    );
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            let echoed = resp
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            Ok((ws, echoed))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

/// Sends cmd 1 with `text` as JSON and returns the reply's text.
async fn echo(ws: &mut Ws, seq: u64, text: &str) -> String {
    ws.send(Message::Text(
        json!({"seq": seq.to_string(), "cmd": 1, "payload": {"text": text}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a reply within 10 s");
        let t = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            other => panic!("the socket ended: {other:?}"),
        };
        let frame: Value = serde_json::from_str(t.as_str()).unwrap();
        let v = &frame["response"];
        if v["seq"].as_str() == Some(seq.to_string().as_str()) {
            assert_eq!(v["code"], "OK", "{v}");
            return v["payload"]["text"].as_str().unwrap().to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_clients_are_served_side_by_side_each_with_its_binding() {
    let backend = EchoBackend::start().await;
    let routes = echo_routes(&[backend.addr], "").replace(
        "    max_body: 64KiB\n",
        "    max_body: 64KiB\n    versions: { 2: { grpc: im.echo.v1.EchoService/EchoV2 } }\n",
    );
    assert!(routes.contains("EchoV2"));
    let gw = TestGateway::start(&routes).await;

    let (mut v1, echoed) = open(&gw, Some("im.v1.json")).await.unwrap();
    assert_eq!(echoed.as_deref(), Some("im.v1.json"));
    let (mut v2, echoed) = open(&gw, Some("im.v1.json, im.v2.json")).await.unwrap();
    assert_eq!(echoed.as_deref(), Some("im.v2.json"));
    // Interleaved on one gateway: each socket keeps its own version.
    for i in 0..3 {
        assert_eq!(echo(&mut v1, 2 * i, "hello").await, "hello");
        assert_eq!(echo(&mut v2, 2 * i + 1, "hello").await, "HELLO");
    }

    // No subprotocol at all: version 1 (JSON asked for by the parameter).
    let url = format!(
        "ws://{}/ws?encoding=json&token={}",
        gw.push,
        token("walt", "sw", "d", "web")
    );
    let (mut plain, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    assert_eq!(echo(&mut plain, 1, "plain").await, "plain");

    // Only versions this gateway does not speak: refused before any session.
    let (status, body) = open(&gw, Some("im.v3.json, im.v7.proto"))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 400);
    for supported in ["im.v1.proto", "im.v1.json", "im.v2.proto", "im.v2.json"] {
        assert!(body.contains(supported), "{body}");
    }
    let rejections = gw.metrics().await;
    assert!(
        rejections.contains("im_gateway_ws_handshake_rejections_total{reason=\"protocol\"} 1"),
        "{rejections}"
    );

    // The admin listing shows the binding.
    let listed = gw.admin_json("/admin/routes").await;
    let echo_route = listed["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "echo")
        .unwrap()
        .clone();
    assert_eq!(
        echo_route["target"]["versions"]["2"],
        "/im.echo.v1.EchoService/EchoV2"
    );
}
