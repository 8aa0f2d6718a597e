//! gRPC pass-through routes: a real tonic client through the gateway, statuses and trailers
//! intact, and the gateway's own rejections delivered as gRPC statuses.

use im_proto::im::echo::v1::echo_service_client::EchoServiceClient;
use im_proto::im::echo::v1::EchoRequest;
use im_tests::{echo_routes, free_port, loopback, EchoBackend, TestGateway};
use tonic::Code;

async fn client(gw: &TestGateway) -> EchoServiceClient<tonic::transport::Channel> {
    EchoServiceClient::connect(gw.url(""))
        .await
        .expect("h2c to the gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_and_statuses_pass_through() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], "")).await;
    let mut c = client(&gw).await;

    let mut req = tonic::Request::new(EchoRequest {
        text: "grpc".into(),
        number: 9,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-user-id", "forged".parse().unwrap());
    req.metadata_mut()
        .insert("x-request-id", "pt-1".parse().unwrap());
    let resp = c.echo(req).await.expect("echo through the gateway");
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "pt-1");
    let reply = resp.into_inner();
    assert_eq!((reply.text.as_str(), reply.number), ("grpc", 9));
    assert!(
        !reply.metadata.contains_key("x-user-id"),
        "client identity headers are stripped"
    );
    assert_eq!(reply.metadata["x-request-id"], "pt-1");

    // Backend statuses, message and trailers arrive intact (not mapped to HTTP).
    let err = c
        .echo(EchoRequest {
            fail_code: 5,
            fail_message: "no such thing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such thing");

    // Large replies stream through.
    let reply = c
        .echo(EchoRequest {
            reply_padding: 1 << 20,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().padding.len(), 1 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_rejections_are_grpc_statuses() {
    let dead = loopback(free_port());
    let routes = format!(
        r#"upstreams:
  sick:
    endpoints: ["{dead}"]
    health_check: {{ interval: 50ms, timeout: 50ms }}
routes:
  - {{ name: echo_grpc, grpc_service: im.echo.v1.EchoService, upstream: sick, auth: none }}
"#
    );
    let gw = TestGateway::start(&routes).await;

    // Unrouted service: UNIMPLEMENTED as a gRPC status, not an HTTP 404.
    let channel = tonic::transport::Endpoint::from_shared(gw.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut unrouted = tonic::client::Grpc::new(channel.clone());
    unrouted.ready().await.unwrap();
    let err = unrouted
        .unary::<_, bytes::Bytes, _>(
            tonic::Request::new(bytes::Bytes::new()),
            http::uri::PathAndQuery::from_static("/im.nowhere.v1.Nothing/Call"),
            im_gateway::dispatch::PassThroughCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    // Routed to a pool with no healthy endpoint: UNAVAILABLE.
    let err = EchoServiceClient::new(channel)
        .echo(EchoRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

/// The token the gateway verified stays at the gateway (backends trust its `x-user-id`) unless
/// the route sets `forward_credentials`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verified_token_goes_on_only_when_the_route_forwards_it() {
    let backend = EchoBackend::start().await;
    let token = im_tests::user_token("u1");
    for (forward, expected) in [("", None), (", forward_credentials: true", Some(&token))] {
        let routes = format!(
            r#"upstreams:
  echo: {{ endpoints: ["{}"] }}
routes:
  - {{ name: echo_grpc, grpc_service: im.echo.v1.EchoService, upstream: echo{forward} }}
"#,
            backend.addr
        );
        let gw = TestGateway::start(&routes).await;
        let mut req = tonic::Request::new(EchoRequest::default());
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let reply = client(&gw)
            .await
            .echo(req)
            .await
            .expect("echo")
            .into_inner();
        assert_eq!(reply.metadata["x-user-id"], "u1", "{forward}");
        assert_eq!(
            reply.metadata.get("authorization"),
            expected.map(|t| format!("Bearer {t}")).as_ref(),
            "{forward}"
        );
    }
}
