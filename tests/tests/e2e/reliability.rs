//! The reliability defects of issue #24, each driven from outside: a real gateway process that
//! must refuse to start, real PushService callers, a real `redis-server` that is frozen
//! (SIGSTOP) or flooded through `redis-cli --pipe`, and raw TCP clients that stall. Each test
//! failed on the commit before its fix (`docs/RELIABILITY.md` has what it printed there).

use std::net::{SocketAddr, TcpListener};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use im_gateway::cluster::ClusterConfig;
use im_gateway::config::GatewayConfig;
use im_gateway::units::HumanDuration;
use im_proto::im::gateway::v1::push_service_client::PushServiceClient;
use im_proto::im::gateway::v1::{node_message, NodeDeliver, NodeMessage, Push, RevokeRequest};
use im_tests::process::ManagedProcess;
use im_tests::redis_server::RedisServer;
use im_tests::{
    echo_routes, free_port, loopback, unix_now, user_token, wait_for, EchoBackend, GatewayProcess,
    ScratchDir, TestGateway,
};
use prost::Message as _;
use tokio::io::AsyncWriteExt;

use crate::cluster::metric;
use crate::push::{authed, connect, echo_push, push_client, token};

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway_process");

/// Runs a gateway process meant to refuse to start: its exit status and its log.
async fn refused_start(tail: &str, listeners: [SocketAddr; 4]) -> (ExitStatus, String) {
    let dir = ScratchDir::new("refused");
    let routes = echo_routes(&[loopback(1)], "");
    let mut command = GatewayProcess::command(GATEWAY, &dir, &routes, tail, listeners);
    let mut child = ManagedProcess::spawn("gateway", &mut command, GATEWAY);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill();
            let log = std::fs::read_to_string(dir.path("gateway.log")).unwrap_or_default();
            panic!("the gateway kept running for 30 s instead of refusing to start:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(dir.path("gateway.log")).unwrap_or_default();
    (status, log)
}

fn four_ports() -> [SocketAddr; 4] {
    [0; 4].map(|_| loopback(free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_of_one_gateway_that_collide_are_refused_by_field() {
    let [edge, admin, push, _] = four_ports();
    // PushService's listener on the edge's port: once two owners of one socket.
    let (status, log) = refused_start("", [edge, admin, push, edge]).await;
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("listen.internal") && log.contains("collides with listen.edge"),
        "the error names both fields: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_pushservice_port_stops_start_up_with_the_address_and_the_reason() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let internal = taken.local_addr().expect("address");
    let [edge, admin, push, _] = four_ports();
    let (status, log) = refused_start("", [edge, admin, push, internal]).await;
    assert!(
        !status.success(),
        "the gateway started without PushService: {log}"
    );
    assert!(
        log.contains(&format!("listen.internal {internal}")) && log.contains("in use"),
        "the error names the listener, its address and the reason: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushservice_tls_config_that_does_not_load_stops_start_up() {
    let dir = ScratchDir::new("bad-tls");
    let pem = dir.path("internal.pem");
    std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    let tail = format!(
        "push: {{internal_tls: {{cert: \"{}\", key: \"{}\"}}}}\n",
        pem.display(),
        pem.display()
    );
    let (status, log) = refused_start(&tail, four_ports()).await;
    assert!(!status.success(), "{log}");
    assert!(log.contains("push.internal_tls"), "names the field: {log}");
}

/// Latencies of one call after another to `/service/echo` (signed in) until `stop` resolves.
async fn polite_calls(gw: &TestGateway, stop: impl std::future::Future<Output = ()>) -> Vec<f64> {
    let client = reqwest::Client::new();
    let bearer = format!("Bearer {}", user_token("polite"));
    let mut took = Vec::new();
    tokio::pin!(stop);
    loop {
        let started = Instant::now();
        let call = client
            .post(gw.url("/service/echo"))
            .header("content-type", "application/json")
            .header("authorization", &bearer)
            .body(r#"{"text":"hi"}"#)
            .send();
        tokio::select! {
            reply = call => {
                let status = reply.expect("gateway reachable").status();
                assert_eq!(status, 200);
                took.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            () = &mut stop => return took,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `pct`th percentile of `ms` (the nearest rank below).
fn percentile(ms: &[f64], pct: usize) -> f64 {
    assert!(!ms.is_empty(), "no calls measured");
    let mut ms = ms.to_vec();
    ms.sort_by(f64::total_cmp);
    ms[(ms.len() * pct / 100).min(ms.len() - 1)]
}

/// The sessions an `auth.revocation_file` holds, read as the format says (header, then
/// `<until> <JSON string>` lines), independently of the gateway's reader.
fn sessions_in_log(path: &std::path::Path) -> std::collections::HashSet<String> {
    let text = std::fs::read_to_string(path).expect("the revocation file exists");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("im-revocations 2"), "{text:.200}");
    lines
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(_, sid)| serde_json::from_str::<String>(sid).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_logouts_at_once_do_not_stall_other_requests_and_all_are_on_disk() {
    let backend = EchoBackend::start().await;
    let routes = echo_routes(&[backend.addr], "").replacen("    auth: none\n", "", 1);
    let dir = ScratchDir::new("revocations");
    let file = dir.path("revoked.log");
    let gw = TestGateway::start_with(&routes, |cfg| {
        cfg.auth.revocation_file = Some(file.clone());
    })
    .await;
    let calm = polite_calls(&gw, tokio::time::sleep(Duration::from_secs(2))).await;

    let storm = async {
        let client = push_client(&gw).await;
        let revokes = (0..2_000).map(|i| {
            let mut client = client.clone();
            async move {
                client
                    .revoke(authed(RevokeRequest {
                        sid: format!("storm-{i}"),
                        ..Default::default()
                    }))
                    .await
                    .expect("revoke acknowledged")
            }
        });
        let started = Instant::now();
        futures::future::join_all(revokes).await;
        started.elapsed()
    };
    let (storm_took, during) = {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let storm = async {
            let took = storm.await;
            let _ = done_tx.send(());
            took
        };
        let polite = polite_calls(&gw, async {
            let _ = done_rx.await;
        });
        tokio::join!(storm, polite)
    };
    let (calm_p50, storm_p50) = (percentile(&calm, 50), percentile(&during, 50));
    let (calm_p99, storm_p99) = (percentile(&calm, 99), percentile(&during, 99));
    eprintln!(
        "2,000 revocations took {storm_took:?}; polite p50/p99 {calm_p50:.1}/{calm_p99:.1} ms \
         before, {storm_p50:.1}/{storm_p99:.1} ms during ({} calls)",
        during.len()
    );
    // Behind the old lock every call waited for rewrites (p99 564 ms). The storm is about
    // two dozen calls, so its p99 is its slowest call, which one preemption on a machine busy with
    // other tests can cost 150 ms (seen in CI): the typical call is judged against calm, the
    // slowest against what the stall cost.
    assert!(
        storm_p50 < calm_p50 + 50.0 && storm_p99 < 400.0,
        "a polite caller waited behind the logouts: p50/p99 {storm_p50:.1}/{storm_p99:.1} ms \
         during, {calm_p50:.1}/{calm_p99:.1} ms before"
    );
    // Every acknowledged revocation is on disk already (acknowledged after its fdatasync).
    let on_disk = sessions_in_log(&file);
    let missing = (0..2_000)
        .filter(|i| !on_disk.contains(&format!("storm-{i}")))
        .count();
    assert_eq!(missing, 0, "acknowledged revocations missing from the file");
}

/// A cluster node on `redis` whose sessions are many clients of one address.
async fn crowded_node(redis: &RedisServer, routes: &str, heartbeat: Duration) -> TestGateway {
    let cluster = ClusterConfig {
        redis_url: redis.url(),
        node_id: Some("n1".into()),
        prefix: "test:".into(),
        heartbeat: HumanDuration(heartbeat),
        node_ttl: HumanDuration(heartbeat * 5),
        probe_interval: HumanDuration(Duration::from_secs(1)),
        ..ClusterConfig::default()
    };
    TestGateway::start_with(routes, |cfg: &mut GatewayConfig| {
        cfg.cluster = Some(cluster);
        cfg.push.max_connections_per_ip = 100_000;
        cfg.push.handshake_rate.per_second = 100_000.0;
        cfg.push.handshake_rate.burst = 100_000;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_that_close_at_once_leave_no_entry_in_redis() {
    let redis = RedisServer::start().await;
    let backend = EchoBackend::start().await;
    let gw = crowded_node(
        &redis,
        &echo_routes(&[backend.addr], ""),
        Duration::from_millis(300),
    )
    .await;
    let sessions = (0..1_000).map(|i| {
        let gw = &gw;
        async move {
            let user = format!("u{i}");
            let query = format!("token={}", token(&user, &format!("s{i}"), "d", "web"));
            let mut ws = connect(gw, &query).await.expect("handshake accepted");
            let _ = ws.close(None).await;
        }
    });
    futures::future::join_all(sessions).await;
    wait_for(
        "every session closed and the registry queue empty",
        Duration::from_secs(30),
        || async {
            let open = metric(&gw, "im_gateway_ws_connections ").await;
            let queued = metric(&gw, "im_gateway_cluster_registry_queue ").await;
            (open == 0.0 && queued == 0.0).then_some(())
        },
    )
    .await;
    // What a push to these users would find: entries of this live run for closed sessions.
    let keys = redis.cli(&["--scan", "--pattern", "test:u:*"]);
    let left: Vec<(String, String)> = keys
        .lines()
        .map(|k| (k.to_owned(), redis.cli(&["HLEN", k]).trim().to_owned()))
        .filter(|(_, n)| n != "0")
        .collect();
    assert!(
        left.is_empty(),
        "{} users still registered after every session closed, e.g. {:?}",
        left.len(),
        left.first()
    );
}

/// `n` node messages delivering a push to users nobody here has (already forwarded: applied
/// and done), as another node would publish them.
fn deliveries(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            NodeMessage {
                version: 1,
                from_node: "elsewhere".into(),
                body: Some(node_message::Body::Deliver(NodeDeliver {
                    user_ids: vec![format!("nobody-{i}")],
                    push: Some(Push {
                        kind: "chat_message_notify".into(),
                        ..Default::default()
                    }),
                    forwarded: true,
                    ..Default::default()
                })),
                ..Default::default()
            }
            .encode_to_vec()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_node_messages_during_a_slow_heartbeat_is_applied_not_dropped() {
    let redis = RedisServer::start().await;
    let backend = EchoBackend::start().await;
    let gw = crowded_node(
        &redis,
        &echo_routes(&[backend.addr], ""),
        Duration::from_millis(100),
    )
    .await;
    wait_for(
        "the subscription delivers",
        Duration::from_secs(10),
        || async {
            let ready = gw.admin_json("/readyz").await;
            (ready["cluster"]["subscription"] == "live").then_some(())
        },
    )
    .await;
    // A slow heartbeat: the liveness set it reads every beat holds 100,000 members (junk that
    // no node parses, scored far ahead so it is never pruned), and Redis sleeps a moment;
    // then 10,000 messages arrive in one go while the heartbeat's round trips are under way.
    let far = (unix_now() * 1000 + 3_600_000).to_string();
    let junk = (0..100).map(|batch| {
        let mut cmd = vec![b"ZADD".to_vec(), b"test:nodes".to_vec()];
        for i in 0..1_000 {
            cmd.push(far.clone().into_bytes());
            cmd.push(format!("junk-{batch}-{i}").into_bytes());
        }
        cmd
    });
    let summary = redis.pipe(junk);
    assert!(summary.contains("errors: 0"), "{summary}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = deliveries(10_000);
    let mut commands = vec![vec![b"DEBUG".to_vec(), b"SLEEP".to_vec(), b"0.5".to_vec()]];
    commands.extend(
        messages
            .into_iter()
            .map(|m| vec![b"PUBLISH".to_vec(), b"test:node:n1".to_vec(), m]),
    );
    let summary = redis.pipe(commands);
    assert!(summary.contains("errors: 0"), "{summary}");
    let label = "im_gateway_cluster_messages_total{direction=\"in\",kind=\"deliver\"} ";
    // Until every message is accounted for (read or dropped), or 20 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    let applied = loop {
        let read = metric(&gw, label).await;
        let dropped = metric(
            &gw,
            "im_gateway_cluster_messages_dropped_total{reason=\"inbox\"} ",
        )
        .await;
        let stale = metric(&gw, "im_gateway_cluster_subscription_stale_total ").await;
        if read + dropped >= 10_000.0 || Instant::now() > deadline {
            break (read, dropped, stale);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        applied,
        (10_000.0, 0.0, 0.0),
        "(read, dropped, subscriptions declared stale) of 10,000"
    );
}

/// One limited call and one push, one after another, for `window`: the p99 of each (ms).
async fn limited_and_pushed(
    gw: &TestGateway,
    pushes: &mut PushServiceClient<tonic::transport::Channel>,
    window: Duration,
) -> (f64, f64) {
    let client = reqwest::Client::new();
    let bearer = format!("Bearer {}", user_token("u1"));
    let until = Instant::now() + window;
    let (mut calls, mut pushed) = (Vec::new(), Vec::new());
    while Instant::now() < until {
        let started = Instant::now();
        let status = client
            .post(gw.url("/service/limited"))
            .header("content-type", "application/json")
            .header("authorization", &bearer)
            .body(r#"{"text":"x"}"#)
            .send()
            .await
            .expect("gateway reachable")
            .status();
        assert_eq!(status, 200);
        calls.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        pushes
            .push(authed(echo_push(&["someone"], b"")))
            .await
            .expect("push answered");
        pushed.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (percentile(&calls, 99), percentile(&pushed, 99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_does_not_slow_limited_calls_or_pushes() {
    let redis = RedisServer::start().await;
    let backend = EchoBackend::start().await;
    let routes = echo_routes(&[backend.addr], "").replace(
        "routes:\n",
        "routes:\n  - name: limited\n    http: { method: POST, path: /service/limited }\n    \
         upstream: echo\n    grpc: im.echo.v1.EchoService/Echo\n    \
         rate_limit: { key: user, per_second: 10000, burst: 10000, scope: cluster }\n",
    );
    let gw = crowded_node(&redis, &routes, Duration::from_millis(300)).await;
    let mut pushes = push_client(&gw).await;
    let normal = limited_and_pushed(&gw, &mut pushes, Duration::from_secs(2)).await;
    redis.freeze(true);
    let frozen = limited_and_pushed(&gw, &mut pushes, Duration::from_secs(4)).await;
    redis.freeze(false);
    eprintln!(
        "p99 ms (limited call, push): normal {normal:?}, Redis frozen {frozen:?} (+{:.1}, +{:.1})",
        frozen.0 - normal.0,
        frozen.1 - normal.1
    );
    assert!(
        frozen.0 <= normal.0 + 50.0 && frozen.1 <= normal.1 + 50.0,
        "requests waited on a Redis the node knew was away: p99 {frozen:?} vs {normal:?}"
    );
}

/// `VmRSS` and `VmData` of process `pid`, in bytes.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmData:"))
}

/// How much a fresh gateway process grows (RSS, VmData; MiB) holding 2,000 connections that
/// sent a head declaring `claimed` body bytes on a 4 MiB route, one byte of it, then stalled.
async fn stalled_bodies_growth(claimed: u64) -> (u64, u64) {
    let backend = EchoBackend::start().await;
    let routes = echo_routes(&[backend.addr], "").replacen("max_body: 64KiB", "max_body: 4MiB", 1);
    let dir = ScratchDir::new("stalled-bodies");
    let tail = "http: {max_unfinished_per_ip: 100000}\n";
    let gw = GatewayProcess::spawn(GATEWAY, &dir, &routes, tail).await;
    let pid = gw.child.id();
    let before = memory_of(pid);
    let mut stalled = Vec::new();
    for _ in 0..2_000 {
        let mut conn = tokio::net::TcpStream::connect(gw.edge)
            .await
            .expect("connect");
        let head = format!(
            "POST /service/echo HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             content-length: {claimed}\r\n\r\n{{"
        );
        conn.write_all(head.as_bytes())
            .await
            .expect("send the head");
        stalled.push(conn);
    }
    // Every head read and its body begun (the gateway then waits for the rest).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = memory_of(pid);
    let still_open = stalled.len();
    drop(stalled);
    assert_eq!(still_open, 2_000);
    (
        during.0.saturating_sub(before.0) >> 20,
        during.1.saturating_sub(before.1) >> 20,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_claim_max_body_and_stall_do_not_reserve_it() {
    // The same 2,000 stalled connections declaring 100 bytes, then 4 MiB: what the claim
    // itself costs is the difference (a connection reading a body costs the same either way).
    let small = stalled_bodies_growth(100).await;
    let large = stalled_bodies_growth(4 << 20).await;
    let (rss, data) = (
        large.0.saturating_sub(small.0),
        large.1.saturating_sub(small.1),
    );
    eprintln!(
        "2,000 stalled bodies: claiming 100 B RSS +{} MiB VmData +{} MiB; claiming 4 MiB RSS +{} \
         MiB VmData +{} MiB; the claim's own cost RSS +{rss} MiB VmData +{data} MiB",
        small.0, small.1, large.0, large.1
    );
    assert!(rss < 50, "the claims grew RSS by {rss} MiB");
    assert!(
        data < 500,
        "the gateway reserved what the heads claimed: VmData grew by {data} MiB more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_stays_revoked_across_a_restart_of_the_log() {
    // The log is read back by a new gateway on the same file (the crash case is the same read:
    // a revocation is acknowledged only after its line is on disk).
    let backend = EchoBackend::start().await;
    let routes = echo_routes(&[backend.addr], "").replacen("    auth: none\n", "", 1);
    let dir = ScratchDir::new("revocations-restart");
    let file = dir.path("revoked.log");
    let until = unix_now() + 300;
    let mut gw = TestGateway::start_with(&routes, |cfg| {
        cfg.auth.revocation_file = Some(file.clone());
    })
    .await;
    let mut client = push_client(&gw).await;
    client
        .revoke(authed(RevokeRequest {
            sid: "s-gone".into(),
            exp: until as i64,
        }))
        .await
        .expect("revoked");
    gw.drain().await;
    gw.restart().await;
    let bearer = format!(
        "Bearer {}",
        im_tests::hs256_token(&serde_json::json!({"sub": "u", "sid": "s-gone", "exp": until}))
    );
    let (status, _, _) = gw
        .post(
            "/service/echo",
            r#"{"text":"x"}"#,
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, 401, "the revocation was forgotten by the restart");
}
