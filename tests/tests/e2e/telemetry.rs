//! OpenTelemetry traces across processes (DESIGN §11): a real gateway process and a real backends
//! process export to an OTLP/gRPC receiver in this test; one trace id runs from the client's
//! `traceparent` through the gateway's spans to the backend handler, and on to the PushService
//! call the backend makes, each span a child of the one before.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use im_tests::im::{shipped_routes, ImClient};
use im_tests::otlp::{ForeignCollector, OtlpReceiver, Span};
use im_tests::{
    echo_routes, free_port, loopback, user_token, wait_for, EchoBackend, GatewayProcess,
    ScratchDir, INTERNAL_TOKEN, TEST_SECRET,
};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::push::{connect_addr, next};

/// A client-made `traceparent`: trace `trace`, parent span `parent`, sampled.
fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

async fn traced_call(c: &ImClient, path: &str, body: Value, tp: &str) -> Value {
    let resp = c
        .http
        .post(format!("{}/service/{path}", c.base))
        .header("content-type", "application/json")
        .header("traceparent", tp)
        .bearer_auth(c.token.as_deref().unwrap_or_default())
        .body(body.to_string())
        .send()
        .await
        .expect("gateway reachable");
    assert_eq!(resp.status(), 200, "{path}");
    serde_json::from_slice(&resp.bytes().await.expect("body")).expect("JSON reply")
}

/// Waits until the receiver holds every span of `names` in trace `trace`; the trace's spans.
async fn trace_with(otlp: &OtlpReceiver, trace: &str, names: &[(&str, &str)]) -> Vec<Span> {
    wait_for(
        &format!("spans {names:?} of trace {trace}"),
        Duration::from_secs(20),
        || async {
            let spans: Vec<Span> = otlp
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace)
                .collect();
            let all = names.iter().all(|(service, name)| {
                spans
                    .iter()
                    .any(|s| s.service == *service && s.name == *name)
            });
            all.then_some(spans)
        },
    )
    .await
}

/// The span of `service` named `name`, its parent asserted to be `parent`.
fn child_of<'a>(spans: &'a [Span], service: &str, name: &str, parent: &str) -> &'a Span {
    let span = spans
        .iter()
        .find(|s| s.service == service && s.name == name && s.parent_id == parent)
        .unwrap_or_else(|| panic!("no {service} span {name} with parent {parent} in {spans:#?}"));
    span
}

const USER_INFO: &str = "im.user.v1.UserService/GetUserInfo";

/// The gateway's call span of `route` (a child of `parent`), its upstream attempt of `method` and
/// the backend's handler, each the child of the one before.
fn hops<'a>(spans: &'a [Span], route: &str, method: &str, parent: &str) -> (&'a Span, &'a Span) {
    let call = child_of(spans, "im-gateway", route, parent);
    let attempt = child_of(spans, "im-gateway", &format!("/{method}"), &call.span_id);
    let handler = child_of(spans, "im-backends", method, &attempt.span_id);
    (call, handler)
}

async fn user(base: &str, nickname: &str, device: &str) -> ImClient {
    let mut c = ImClient::at(base);
    c.ok(
        "user/username_register",
        json!({"nickname": nickname, "password": "password1"}),
    )
    .await;
    c.login(nickname, "password1", device).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_client_through_gateway_and_backend_to_the_push() {
    let otlp = OtlpReceiver::start().await;
    let dir = ScratchDir::new("traces");
    let backend = loopback(free_port());
    // Batches leave every 100 ms rather than every 5 s.
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let tail = format!(
        "push: {{internal_token_file: internal.token, drain_window: 0s}}\n\
         shutdown: {{grace_period: 0s, graceful_timeout: 1s}}\n\
         telemetry: {{otlp_endpoint: \"{}\", metrics_interval: 200ms}}\n",
        otlp.endpoint()
    );
    let gw = GatewayProcess::spawn_with_env(
        env!("CARGO_BIN_EXE_gateway_process"),
        &dir,
        &shipped_routes(backend, true),
        &tail,
        &env,
    )
    .await;
    let mut backends = std::process::Command::new(env!("CARGO_BIN_EXE_backends_process"));
    backends
        .args(["--listen", &backend.to_string()])
        .args(["--services", "user,friend,message,file,echo"])
        .arg("--database")
        .arg(dir.path("im.db"))
        .arg("--files-dir")
        .arg(dir.path("files"))
        .arg("--jwt-secret-file")
        .arg(dir.path("hs256.key"))
        .arg("--internal-token-file")
        .arg(dir.path("internal.token"))
        .args(["--push-addr", &gw.internal.to_string()])
        .args(["--otlp-endpoint", &otlp.endpoint()])
        .env("RUST_LOG", "warn")
        .envs(env);
    let backends =
        im_tests::process::ManagedProcess::spawn("im-backends", &mut backends, "cargo builds it");
    assert_eq!(
        std::fs::read_to_string(dir.path("hs256.key")).unwrap(),
        TEST_SECRET
    );
    assert_eq!(
        std::fs::read_to_string(dir.path("internal.token")).unwrap(),
        INTERNAL_TOKEN
    );
    let base = format!("http://{}", gw.edge);
    // Until the gateway's health checks have found the backends.
    wait_for(
        "the backends behind the gateway",
        Duration::from_secs(30),
        || {
            let base = base.clone();
            async move {
                let resp = reqwest::Client::new()
                    .post(format!("{base}/service/user/username_register"))
                    .header("content-type", "application/json")
                    .body(json!({"nickname": "probe", "password": "password1"}).to_string())
                    .send()
                    .await
                    .ok()?;
                (resp.status() == 200).then_some(())
            }
        },
    )
    .await;
    let alice = user(&base, "alice", "a-web").await;
    let bob = user(&base, "bob", "b-web").await;

    // An HTTP request: client -> gateway call -> admission, upstream attempt -> backend handler.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    traced_call(
        &alice,
        "user/get_user_info",
        json!({"user_id": alice.user_id}),
        &traceparent(trace, "00f067aa0ba902b7"),
    )
    .await;
    let spans = trace_with(
        &otlp,
        trace,
        &[
            ("im-gateway", "get_user_info"),
            ("im-gateway", "admission"),
            ("im-backends", "im.user.v1.UserService/GetUserInfo"),
        ],
    )
    .await;
    let (call, _) = hops(&spans, "get_user_info", USER_INFO, "00f067aa0ba902b7");
    assert_eq!(call.attributes["im.transport"], "http");
    child_of(&spans, "im-gateway", "admission", &call.span_id);

    // A caller that decided not to sample: nothing of its trace is exported, by the gateway or
    // the backend (checked once a later, sampled trace has arrived: batches leave in order).
    let unsampled = "8bf92f3577b34da6a3ce929d0e0e4740";
    traced_call(
        &alice,
        "user/get_user_info",
        json!({"user_id": alice.user_id}),
        &format!("00-{unsampled}-40f067aa0ba902bb-00"),
    )
    .await;
    let after = "9bf92f3577b34da6a3ce929d0e0e4741";
    traced_call(
        &alice,
        "user/get_user_info",
        json!({"user_id": alice.user_id}),
        &traceparent(after, "50f067aa0ba902bc"),
    )
    .await;
    trace_with(
        &otlp,
        after,
        &[("im-gateway", "get_user_info"), ("im-backends", USER_INFO)],
    )
    .await;
    let leaked: Vec<Span> = otlp
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == unsampled)
        .collect();
    assert!(
        leaked.is_empty(),
        "an unsampled call was exported: {leaked:#?}"
    );

    // The same request in the metrics sent over OTLP: the conventions' histogram under its
    // dotted name and attributes, our counters under the names /metrics shows less `_total`.
    let points = wait_for(
        "the request in the exported metrics",
        Duration::from_secs(20),
        || async {
            let points = otlp.points();
            let seen = points.iter().any(|p| {
                p.metric == "http.server.request.duration"
                    && p.attributes.get("http.route").map(String::as_str) == Some("get_user_info")
                    && p.count >= 1
            });
            seen.then_some(points)
        },
    )
    .await;
    let latency = points
        .iter()
        .find(|p| {
            p.metric == "http.server.request.duration"
                && p.attributes.get("http.route").map(String::as_str) == Some("get_user_info")
        })
        .unwrap();
    assert_eq!(
        (latency.service.as_str(), latency.unit.as_str()),
        ("im-gateway", "s")
    );
    assert_eq!(latency.attributes["http.response.status_code"], "200");
    let requests = points
        .iter()
        .rfind(|p| {
            p.metric == "im_gateway_requests"
                && p.attributes.get("route").map(String::as_str) == Some("get_user_info")
        })
        .expect("requests counter exported");
    assert_eq!(requests.kind, "sum");
    assert!(requests.value >= 1.0, "{requests:?}");
    assert!(points.iter().any(|p| p.metric == "rpc.client.call.duration"
        && p.attributes.get("rpc.method") == Some(&format!("/{USER_INFO}"))));
    assert!(points
        .iter()
        .any(|p| p.metric == "process_resident_memory" && p.unit == "By" && p.value > 0.0));

    // A cmd frame on the socket, with the frame's own traceparent.
    let mut bob_ws = connect_addr(gw.push, &bob.ws_query())
        .await
        .expect("bob's socket");
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    bob_ws
        .send(Message::Text(
            json!({"seq": "1", "cmd": 1008, "payload": {"user_id": bob.user_id},
                   "traceparent": traceparent(trace, "10f067aa0ba902b8")})
            .to_string()
            .into(),
        ))
        .await
        .unwrap();
    let Message::Text(reply) = next(&mut bob_ws).await else {
        panic!("reply frame expected")
    };
    assert!(reply.as_str().contains("\"OK\""), "{reply}");
    let spans = trace_with(
        &otlp,
        trace,
        &[
            ("im-gateway", "get_user_info"),
            ("im-backends", "im.user.v1.UserService/GetUserInfo"),
        ],
    )
    .await;
    let (call, _) = hops(&spans, "get_user_info", USER_INFO, "10f067aa0ba902b8");
    assert_eq!(call.attributes["im.transport"], "websocket");

    // A native gRPC call proxied as-is: the gateway's call span is the backend handler's parent.
    let trace = "7bf92f3577b34da6a3ce929d0e0e4739";
    let channel = tonic::transport::Endpoint::from_shared(base.clone())
        .unwrap()
        .connect()
        .await
        .expect("gateway's edge over h2c");
    let mut echo = im_proto::im::echo::v1::echo_service_client::EchoServiceClient::new(channel);
    let mut request = tonic::Request::new(im_proto::im::echo::v1::EchoRequest {
        text: "traced".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        traceparent(trace, "30f067aa0ba902ba").parse().unwrap(),
    );
    echo.echo(request).await.expect("echo through the gateway");
    let spans = trace_with(
        &otlp,
        trace,
        &[
            ("im-gateway", "echo_grpc"),
            ("im-backends", "im.echo.v1.EchoService/Echo"),
        ],
    )
    .await;
    let call = child_of(&spans, "im-gateway", "echo_grpc", "30f067aa0ba902ba");
    assert_eq!(call.attributes["im.transport"], "grpc");
    child_of(
        &spans,
        "im-backends",
        "im.echo.v1.EchoService/Echo",
        &call.span_id,
    );

    // A message send: the backend's handler calls PushService, and the push to bob's socket is
    // one span in the same trace, a child of the handler's.
    let session = alice.befriend(&bob).await;
    let trace = "6bf92f3577b34da6a3ce929d0e0e4738";
    traced_call(
        &alice,
        "message_transmit/new_message",
        json!({"chat_session_id": session, "client_msg_id": "m-1",
               "message": {"message_type": "MESSAGE_TYPE_TEXT", "text": "traced"}}),
        &traceparent(trace, "20f067aa0ba902b9"),
    )
    .await;
    // Bob's socket gets the notify (after the friendship's).
    loop {
        let Message::Text(frame) = next(&mut bob_ws).await else {
            continue;
        };
        if frame.as_str().contains("chat_message_notify") {
            break;
        }
    }
    let spans = trace_with(
        &otlp,
        trace,
        &[
            ("im-gateway", "new_message"),
            ("im-backends", "im.message.v1.MsgTransmitService/NewMessage"),
            ("im-gateway", "push"),
        ],
    )
    .await;
    let (_, handler) = hops(
        &spans,
        "new_message",
        "im.message.v1.MsgTransmitService/NewMessage",
        "20f067aa0ba902b9",
    );
    let push = child_of(&spans, "im-gateway", "push", &handler.span_id);
    assert_eq!(push.attributes["im.push.kind"], "chat_message_notify");
    assert_eq!(push.ints.get("im.push.delivered"), Some(&1), "{push:?}");
    // The receiver and the sender's own devices (the sender, alice, has none other online).
    assert_eq!(push.ints.get("im.push.users"), Some(&2), "{push:?}");
    assert_eq!(push.ints.get("im.push.online"), Some(&1), "{push:?}");
    assert_eq!(push.ints.get("im.push.offline"), Some(&1), "{push:?}");

    drop(backends);
}

/// The JSON log lines of a gateway process (the ones that parse).
fn json_lines(dir: &ScratchDir) -> Vec<Value> {
    std::fs::read_to_string(dir.path("gateway.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_access_line_per_request_and_frame_and_never_a_token() {
    const BURST: usize = 500;
    let backend = EchoBackend::start().await;
    let routes = format!(
        "{}  - name: private\n    http: {{ method: POST, path: /service/private }}\n    \
         upstream: echo\n    grpc: im.echo.v1.EchoService/Echo\n",
        echo_routes(&[backend.addr], "")
    );
    let start = |dir: ScratchDir, access_log: bool| {
        let routes = routes.clone();
        async move {
            let tail = format!(
                "push: {{internal_token_file: internal.token, drain_window: 0s}}\n\
                 shutdown: {{grace_period: 0s, graceful_timeout: 1s}}\n\
                 telemetry: {{access_log: {access_log}}}\n"
            );
            let env = [("IM_LOG_FORMAT", "json"), ("RUST_LOG", "info")];
            let gw = GatewayProcess::spawn_with_env(
                env!("CARGO_BIN_EXE_gateway_process"),
                &dir,
                &routes,
                &tail,
                &env,
            )
            .await;
            (dir, gw)
        }
    };
    let (dir, gw) = start(ScratchDir::new("json-logs"), true).await;
    let http = reqwest::Client::new();
    let token = user_token("alice");
    let post = |path: &str, auth: Option<&str>| {
        let mut req = http
            .post(format!("http://{}{path}", gw.edge))
            .header("content-type", "application/json")
            .header(
                "traceparent",
                traceparent("7bf92f3577b34da6a3ce929d0e0e4739", "30f067aa0ba902ba"),
            )
            .body(r#"{"text":"hi"}"#);
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(
        post("/service/echo", Some(&token)).await.unwrap().status(),
        200
    );
    assert_eq!(post("/service/private", None).await.unwrap().status(), 401);
    let mut ws = connect_addr(gw.push, &format!("token={token}&encoding=json"))
        .await
        .expect("socket");
    ws.send(Message::Text(
        json!({"seq": "1", "cmd": 1, "payload": {"text": "frame"}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    next(&mut ws).await;

    let access = wait_for("three access lines", Duration::from_secs(10), || async {
        let lines: Vec<Value> = json_lines(&dir)
            .into_iter()
            .filter(|l| l["message"] == "access")
            .collect();
        (lines.len() >= 3).then_some(lines)
    })
    .await;
    let line = |route: &str, transport: &str| {
        access
            .iter()
            .find(|l| l["route"] == route && l["transport"] == transport)
            .unwrap_or_else(|| panic!("no access line for {route} over {transport}: {access:#?}"))
    };
    let echo = line("echo", "http");
    assert_eq!(echo["status"], 200);
    assert_eq!(echo["user_id"], "alice", "the verified token's subject");
    assert_eq!(echo["upstream"], backend.addr.to_string());
    assert_eq!(echo["trace_id"], "7bf92f3577b34da6a3ce929d0e0e4739");
    assert_eq!(echo["client_ip"], "127.0.0.1");
    assert!(echo["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(echo["latency_ms"].as_f64().is_some());
    let refused = line("private", "http");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["upstream"], "-");
    let frame = line("echo", "websocket");
    assert_eq!(frame["status"], 200);
    assert_eq!(frame["user_id"], "alice");
    drop(ws);
    // A burst, then the graceful stop: every line written, complete, none lost in the queue.
    // 16 at a time: a client's connections, within the gateway's per-IP cap on unfinished ones.
    let statuses: Vec<u16> = futures::stream::iter(0..BURST)
        .map(|_| async {
            post("/service/echo", Some(&token))
                .await
                .unwrap()
                .status()
                .as_u16()
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(statuses, vec![200; BURST]);
    let mut gw = gw;
    gw.terminate();
    assert!(gw.child.wait_exit(Duration::from_secs(20)).await.success());
    let echoes = json_lines(&dir)
        .into_iter()
        .filter(|l| l["message"] == "access" && l["route"] == "echo" && l["transport"] == "http")
        .count();
    assert_eq!(
        echoes,
        BURST + 1,
        "access lines of the echo route at the stop"
    );
    let log = std::fs::read_to_string(dir.path("gateway.log")).unwrap();
    assert!(!log.contains(&token), "a token reached the log");
    drop(gw);

    // Turned off: no access line, the other logs stay.
    let (dir, gw) = start(ScratchDir::new("no-access-log"), false).await;
    let resp = http
        .post(format!("http://{}/service/echo", gw.edge))
        .header("content-type", "application/json")
        .body(r#"{"text":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Stopped gracefully: whatever was queued is written by now.
    let mut gw = gw;
    gw.terminate();
    assert!(gw.child.wait_exit(Duration::from_secs(20)).await.success());
    let lines = json_lines(&dir);
    assert!(!lines.is_empty(), "the gateway still logs (JSON)");
    assert!(lines.iter().all(|l| l["message"] != "access"), "{lines:#?}");
}

/// The gateway writes OTLP's bytes itself (`im_telemetry`'s span export): a collector built from
/// a gRPC stack and protobuf runtime the project did not write decodes every field of its spans.
/// Before that collector is up, export fails: one warning for the whole outage, one line when it
/// works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_the_project_did_not_write_decodes_the_gateway_s_spans() {
    let port = free_port();
    let backend = EchoBackend::start().await;
    let dir = ScratchDir::new("foreign-collector");
    let tail = format!(
        "push: {{internal_token_file: internal.token, drain_window: 0s}}\n\
         shutdown: {{grace_period: 0s, graceful_timeout: 1s}}\n\
         telemetry: {{otlp_endpoint: \"http://127.0.0.1:{port}\", service_name: im-edge-7}}\n"
    );
    let gw = GatewayProcess::spawn_with_env(
        env!("CARGO_BIN_EXE_gateway_process"),
        &dir,
        &echo_routes(&[backend.addr], ""),
        &tail,
        &[("OTEL_BSP_SCHEDULE_DELAY", "100"), ("RUST_LOG", "info")],
    )
    .await;
    let http = reqwest::Client::new();
    let echo = |trace: &str| {
        http.post(format!("http://{}/service/echo", gw.edge))
            .header("content-type", "application/json")
            .header("traceparent", traceparent(trace, "40f067aa0ba902b1"))
            .bearer_auth(user_token("alice"))
            .body(r#"{"text":"hi"}"#)
            .send()
    };
    let log_lines = |text: &str| {
        std::fs::read_to_string(dir.path("gateway.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(text))
            .count()
    };
    let failed = "span export failed";
    for n in 0..3 {
        let lost = format!("5bf92f3577b34da6a3ce929d0e0e473{n}");
        assert_eq!(echo(&lost).await.unwrap().status(), 200);
        // Each in a batch of its own.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for(
        "the export failure logged",
        Duration::from_secs(10),
        || async { (log_lines(failed) > 0).then_some(()) },
    )
    .await;

    let collector = ForeignCollector::start_on(port, &[]).await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4739";
    assert_eq!(echo(trace).await.unwrap().status(), 200);

    let spans = wait_for(
        "3 spans at the collector",
        Duration::from_secs(20),
        || async {
            let spans = collector.spans(trace);
            (spans.len() >= 3).then_some(spans)
        },
    )
    .await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no span {name}: {spans:#?}"))
    };
    let (call, admission, upstream) = (
        named("echo"),
        named("admission"),
        named("/im.echo.v1.EchoService/Echo"),
    );
    // Parent links, kinds (SERVER 2, CLIENT 3, INTERNAL 1) and flags (sampled 0x1, whether the
    // parent is remote is known 0x100, and it is 0x200 for the client's own span).
    assert_eq!(call["parent_span_id"], "40f067aa0ba902b1");
    assert_eq!(admission["parent_span_id"], call["span_id"]);
    assert_eq!(upstream["parent_span_id"], call["span_id"]);
    assert_eq!(
        [&call["kind"], &admission["kind"], &upstream["kind"]],
        [2, 1, 3]
    );
    assert_eq!(call["flags"], 0x301);
    assert_eq!(upstream["flags"], 0x101);
    for span in &spans {
        assert_eq!(span["span_id"].as_str().map(str::len), Some(16), "{span}");
        assert_eq!(span["status"], 0, "unset: {span}");
        let (start, end) = (span["start"].as_u64(), span["end"].as_u64());
        assert!(start > Some(0) && end >= start, "{span}");
        assert_eq!(span["scope"], "im");
        assert_eq!(span["resource"]["service.name"], "im-edge-7");
        assert!(
            span["resource"]["service.instance.id"].is_string(),
            "{span}"
        );
    }
    assert_eq!(call["attributes"]["http.route"], "echo");
    assert_eq!(call["attributes"]["im.transport"], "http");
    assert_eq!(call["attributes"]["trace_id"], trace);
    assert_eq!(upstream["attributes"]["rpc.system"], "grpc");
    assert_eq!(upstream["attributes"]["im.upstream"], "echo");
    assert_eq!(
        upstream["attributes"]["server.address"],
        backend.addr.to_string()
    );
    // A oneof holding its default value (int 0) is still a value.
    assert_eq!(upstream["attributes"]["im.attempt"], 0);
    wait_for("the recovery logged", Duration::from_secs(10), || async {
        (log_lines("span export works again") == 1).then_some(())
    })
    .await;
    assert_eq!(log_lines(failed), 1, "one warning for the whole outage");
    drop(gw);
}
