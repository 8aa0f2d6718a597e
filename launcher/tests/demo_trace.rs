//! The demo (gateway and backends in one process) shows two services in a trace, as a split
//! deployment does: the gateway's spans say `im-gateway`, the backend handler's `im-backends`.

use std::time::Duration;

use im_tests::im::shipped_routes;
use im_tests::otlp::OtlpReceiver;
use im_tests::{free_port, loopback, wait_for, ScratchDir};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_trace_names_the_gateway_and_the_backends() {
    let otlp = OtlpReceiver::start().await;
    let dir = ScratchDir::new("demo-trace");
    let backends = loopback(free_port());
    let [edge, admin, push, internal] = [0; 4].map(|_| loopback(free_port()));
    std::fs::write(dir.path("routes.yaml"), shipped_routes(backends, true)).unwrap();
    std::fs::write(
        dir.path("gateway.yaml"),
        format!(
            "listen: {{edge: \"{edge}\", admin: \"{admin}\", push: \"{push}\", internal: \"{internal}\"}}\n\
             threads: 1\n\
             shutdown: {{grace_period: 0s, graceful_timeout: 1s}}\n\
             push: {{drain_window: 0s}}\n\
             telemetry: {{otlp_endpoint: \"{}\"}}\n",
            otlp.endpoint()
        ),
    )
    .unwrap();
    let mut launcher = tokio::process::Command::new(env!("CARGO_BIN_EXE_im-launcher"))
        .arg("--routes")
        .arg(dir.path("routes.yaml"))
        .arg("--config")
        .arg(dir.path("gateway.yaml"))
        .arg("--data")
        .arg(dir.path("data"))
        .arg("--backends")
        .arg(backends.to_string())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(dir.path("launcher.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("the launcher starts");
    let http = reqwest::Client::new();
    wait_for("the demo is ready", Duration::from_secs(30), || async {
        let ready = http
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .ok()?;
        ready.status().is_success().then_some(())
    })
    .await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    // Until the health checks have seen the backends up (503 before).
    wait_for("a registration served", Duration::from_secs(20), || async {
        let answer = http
            .post(format!("http://{edge}/service/user/username_register"))
            .header("content-type", "application/json")
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .body(json!({"nickname": "demo", "password": "password1"}).to_string())
            .send()
            .await
            .ok()?;
        (answer.status() == 200).then_some(())
    })
    .await;

    // The gateway's client span is the method's path (`/im...`), the backend's server span
    // its name.
    let method = "im.user.v1.UserService/UsernameRegister";
    let spans = wait_for("the trace's spans", Duration::from_secs(20), || async {
        let spans: Vec<_> = otlp
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace)
            .collect();
        let both = spans.iter().any(|s| s.name == method)
            && spans.iter().any(|s| s.name == format!("/{method}"));
        both.then_some(spans)
    })
    .await;
    let service_of = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.service.as_str())
            .unwrap_or_else(|| panic!("no span {name}: {spans:#?}"))
    };
    assert_eq!(service_of("username_register"), "im-gateway", "the call");
    assert_eq!(
        service_of(&format!("/{method}")),
        "im-gateway",
        "the upstream call"
    );
    assert_eq!(service_of(method), "im-backends", "the handler: {spans:#?}");
    let _ = launcher.start_kill();
    let _ = launcher.wait().await;
}
