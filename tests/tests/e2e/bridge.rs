//! HTTP -> gRPC bridge: both encodings round-trip, and every error row of DESIGN §4.

use im_proto::im::echo::v1::{EchoReply, EchoRequest};
use im_tests::{echo_routes, free_port, loopback, EchoBackend, TestGateway};
use prost::Message;
use serde_json::{json, Value};

async fn post(
    gw: &TestGateway,
    path: &str,
    body: Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    gw.post(path, &body.to_string(), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_round_trip_uses_proto_names_and_defaults() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    let (status, headers, body) = post(
        &gw,
        "/service/echo",
        json!({"text": "你好", "number": "42", "replyPadding": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-request-id"].len(), 32);
    assert_eq!(body["text"], "你好");
    assert_eq!(body["number"], "42", "64-bit integers are strings");
    assert_eq!(body["flag"], false, "defaults are included");
    assert_eq!(body["tags"], json!([]));
    assert_eq!(
        body["served_by"],
        backend.addr.to_string(),
        "proto field names"
    );
    assert_eq!(
        body["metadata"]["x-request-id"],
        headers["x-request-id"].to_str().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_round_trip_and_accept() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    let client = reqwest::Client::new();
    let req = EchoRequest {
        text: "bin".into(),
        number: -7,
        tags: vec!["a".into()],
        flag: true,
        ..Default::default()
    };
    let resp = client
        .post(gw.url("/service/echo"))
        .header("content-type", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
    let reply = EchoReply::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (reply.text.as_str(), reply.number, reply.flag),
        ("bin", -7, true)
    );
    assert_eq!(reply.tags, vec!["a".to_string()]);

    // JSON in, protobuf out through Accept.
    let resp = client
        .post(gw.url("/service/echo"))
        .header("content-type", "application/json")
        .header("accept", "application/x-protobuf")
        .body(r#"{"text":"mixed"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
    assert_eq!(
        EchoReply::decode(resp.bytes().await.unwrap()).unwrap().text,
        "mixed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_statuses_map_like_grpc_gateway() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    for (code, http, name) in [
        (3, 400, "INVALID_ARGUMENT"),
        (16, 401, "UNAUTHENTICATED"),
        (7, 403, "PERMISSION_DENIED"),
        (5, 404, "NOT_FOUND"),
        (6, 409, "ALREADY_EXISTS"),
        (8, 429, "RESOURCE_EXHAUSTED"),
        (14, 503, "UNAVAILABLE"),
        (4, 504, "DEADLINE_EXCEEDED"),
        (13, 500, "INTERNAL"),
        (2, 500, "UNKNOWN"),
    ] {
        let (status, headers, body) = post(
            &gw,
            "/service/echo",
            json!({"fail_code": code, "fail_message": "secret detail"}),
        )
        .await;
        assert_eq!(status, http, "code {code}: {body}");
        assert_eq!(body["code"], name);
        assert_eq!(
            body["request_id"],
            headers["x-request-id"].to_str().unwrap()
        );
        assert!(
            headers.get("retry-after").is_none(),
            "Retry-After only on rate-limit 429s"
        );
        if http == 500 {
            assert_eq!(
                body["message"], "internal error",
                "internal details never leak"
            );
        } else {
            assert_eq!(body["message"], "secret detail");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_never_reach_the_backend() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    let client = reqwest::Client::new();

    let (status, _, body) = post(&gw, "/service/nope", json!({})).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")));

    let resp = client.get(gw.url("/service/echo")).send().await.unwrap();
    assert_eq!(resp.status(), 405);

    let (status, _, body) = post(&gw, "/service/echo", json!({"txet": "typo"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "INVALID_ARGUMENT");
    assert!(body["message"].as_str().unwrap().contains("txet"), "{body}");

    let resp = client
        .post(gw.url("/service/echo"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let resp = client
        .post(gw.url("/service/echo"))
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff, 0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // max_body is 64KiB on this route.
    let big = "x".repeat(70 * 1024);
    let (status, _, body) = post(&gw, "/service/echo", json!({"text": big})).await;
    assert_eq!(status, 413, "{body}");

    let resp = client
        .post(gw.url("/service/echo"))
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);

    assert_eq!(backend.calls(), 0, "no client error may reach the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_refusing_a_large_message_is_413() {
    // The backend accepts 1 KiB messages; the route allows 64 KiB bodies.
    let backend = EchoBackend::start_with_limit(1024).await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    let (status, _, body) = post(&gw, "/service/echo", json!({"text": "y".repeat(4096)})).await;
    assert_eq!(status, 413, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_502_503_504() {
    let backend = EchoBackend::start().await;
    let (dead, dead2) = (loopback(free_port()), loopback(free_port()));
    let routes = format!(
        r#"upstreams:
  live:
    endpoints: ["{live}"]
    timeout: 300ms
  dead:
    endpoints: ["{dead}"]
    retries: 0
  sick:
    endpoints: ["{dead2}"]
    health_check: {{ grpc_service: im.echo.v1.EchoService, interval: 50ms, timeout: 50ms }}
routes:
  - {{ name: slow, http: {{ path: /slow }}, upstream: live, grpc: im.echo.v1.EchoService/Echo, auth: none }}
  - {{ name: refused, http: {{ path: /refused }}, upstream: dead, grpc: im.echo.v1.EchoService/Echo, auth: none }}
  - {{ name: unhealthy, http: {{ path: /unhealthy }}, upstream: sick, grpc: im.echo.v1.EchoService/Echo, auth: none }}
"#,
        live = backend.addr
    );
    let gw = TestGateway::start(&routes).await;
    let (status, _, body) = post(&gw, "/slow", json!({"delay_ms": 2000})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (504, Some("DEADLINE_EXCEEDED")),
        "{body}"
    );
    let (status, _, body) = post(&gw, "/refused", json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (502, Some("UNAVAILABLE")),
        "{body}"
    );
    let (status, _, body) = post(&gw, "/unhealthy", json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["message"], "no healthy upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_are_stripped_and_request_ids_kept_when_sane() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    let client = reqwest::Client::new();
    let send = |rid: &'static str| {
        client
            .post(gw.url("/service/echo"))
            .header("content-type", "application/json")
            .header("x-user-id", "admin")
            .header("x-device-id", "forged")
            .header("x-platform", "forged")
            .header("x-request-id", rid)
            .body("{}")
            .send()
    };
    let resp = send("client-id.1_2").await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-id.1_2");
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["metadata"]["x-request-id"], "client-id.1_2");
    for forged in ["x-user-id", "x-device-id", "x-platform"] {
        assert!(
            body["metadata"].get(forged).is_none(),
            "{forged} reached the backend: {body}"
        );
    }
    let resp = send("bad id; drop table").await.unwrap();
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(rid, "bad id; drop table");
    assert_eq!(rid.len(), 32);
}
