//! Active `grpc.health.v1` checks: an endpoint reporting NOT_SERVING leaves rotation after `fall`
//! checks and rejoins after `rise` passing ones; a new endpoint waits for its first passing check.

use std::time::Duration;

use im_proto::im::echo::v1::echo_service_client::EchoServiceClient;
use im_proto::im::echo::v1::SetHealthRequest;
use im_tests::{echo_routes, free_port, loopback, wait_for, EchoBackend, TestGateway};

const CHECK: &str = "    health_check: { grpc_service: im.echo.v1.EchoService, interval: 50ms, timeout: 100ms, rise: 2, fall: 2 }";

async fn status_of(gw: &TestGateway) -> u16 {
    reqwest::Client::new()
        .post(gw.url("/service/echo"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_leaves_rotation_and_rejoins() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[backend.addr], CHECK)).await;
    wait_for("first passing check", Duration::from_secs(5), || async {
        (gw.endpoint_health("echo", backend.addr).await == "healthy").then_some(())
    })
    .await;
    assert_eq!(status_of(&gw).await, 200);

    let mut control = EchoServiceClient::connect(format!("http://{}", backend.addr))
        .await
        .unwrap();
    control
        .set_health(SetHealthRequest { serving: false })
        .await
        .unwrap();
    wait_for(
        "NOT_SERVING to eject the endpoint",
        Duration::from_secs(5),
        || async { (gw.endpoint_health("echo", backend.addr).await == "unhealthy").then_some(()) },
    )
    .await;
    assert_eq!(status_of(&gw).await, 503, "no healthy endpoint left");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!(
            "im_gateway_upstream_endpoint_healthy{{endpoint=\"{}\",upstream=\"echo\"}} 0",
            backend.addr
        )),
        "{metrics}"
    );

    control
        .set_health(SetHealthRequest { serving: true })
        .await
        .unwrap();
    wait_for(
        "rise checks to bring it back",
        Duration::from_secs(5),
        || async { (gw.endpoint_health("echo", backend.addr).await == "healthy").then_some(()) },
    )
    .await;
    assert_eq!(status_of(&gw).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_endpoint_waits_for_its_first_check_and_health_survives_weight_edits() {
    let a = EchoBackend::start().await;
    let b = EchoBackend::start().await;
    // Checks every 10 minutes: only the first check (at once) ever runs during this test.
    let slow_check =
        "    health_check: { grpc_service: im.echo.v1.EchoService, interval: 10m, timeout: 1s }";
    let gw = TestGateway::start(&echo_routes(&[a.addr], slow_check)).await;
    wait_for("A healthy", Duration::from_secs(5), || async {
        (gw.endpoint_health("echo", a.addr).await == "healthy").then_some(())
    })
    .await;

    // Add B (weighted) and C (nothing listens): each joins only after a passing check, so C,
    // whose first check fails, never gets an attempt, even while requests keep flowing.
    let dead = loopback(free_port());
    let routes = echo_routes(&[a.addr], slow_check).replace(
        &format!("[\"{}\"]", a.addr),
        &format!(
            "[\"{}\", {{ addr: \"{}\", weight: 3 }}, \"{dead}\"]",
            a.addr, b.addr
        ),
    );
    gw.write_routes(&routes);
    assert_eq!(gw.reload().await.0, 200);
    for _ in 0..50 {
        assert_eq!(status_of(&gw).await, 200);
    }
    wait_for("B's first check", Duration::from_secs(5), || async {
        (gw.endpoint_health("echo", b.addr).await == "healthy").then_some(())
    })
    .await;
    assert_eq!(gw.endpoint_health("echo", dead).await, "unhealthy");
    for _ in 0..50 {
        assert_eq!(status_of(&gw).await, 200);
    }
    let metrics = gw.metrics().await;
    // The counters start at zero for every upstream; none may have moved.
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("im_gateway_upstream_failures_total{"))
            .all(|l| l.ends_with(" 0")),
        "an unchecked endpoint got traffic:\n{metrics}"
    );
    assert_ne!(
        gw.endpoint_health("echo", a.addr).await,
        "pending",
        "A kept its health across the reload"
    );

    // A weight edit keeps B's health (keyed by address, not weight).
    gw.write_routes(&routes.replace("weight: 3", "weight: 5"));
    assert_eq!(gw.reload().await.0, 200);
    assert_eq!(gw.endpoint_health("echo", b.addr).await, "healthy");
}
