//! Cluster mode (DESIGN §9): several real gateways sharing a real `redis-server` the test starts,
//! real WebSocket clients, PushService called on one node for users on others. Redis's own
//! command counters check that a push costs one publish per target node.

use std::time::Duration;

use futures::StreamExt;
use im_gateway::cluster::ClusterConfig;
use im_gateway::units::HumanDuration;
use im_proto::im::gateway::v1::{
    server_frame, KickRequest, PresenceRequest, PushRequest, RevokeRequest, SessionKicked,
};
use im_tests::redis_server::{RedisCluster, RedisServer};
use im_tests::{echo_routes, wait_for, EchoBackend, GatewayProcess, ScratchDir, TestGateway};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

use crate::push::{
    authed, connect, connect_addr, echo_push, next, push_client, server_frame, token, Ws,
};

/// A cluster node: heartbeats fast enough for tests; `probe` as given.
async fn node(
    redis: &RedisServer,
    backend: &EchoBackend,
    id: &str,
    probe: Duration,
) -> TestGateway {
    node_with_routes(redis, &echo_routes(&[backend.addr], ""), id, probe).await
}

async fn node_with_routes(
    redis: &RedisServer,
    routes: &str,
    id: &str,
    probe: Duration,
) -> TestGateway {
    node_on(&redis.url(), false, routes, id, probe).await
}

/// A node of the cluster whose Redis is at `redis_url` (a Redis Cluster's seeds when
/// `redis_cluster`).
async fn node_on(
    redis_url: &str,
    redis_cluster: bool,
    routes: &str,
    id: &str,
    probe: Duration,
) -> TestGateway {
    let cluster = ClusterConfig {
        redis_url: redis_url.into(),
        redis_cluster,
        node_id: Some(id.into()),
        prefix: "test:".into(),
        heartbeat: HumanDuration(Duration::from_millis(300)),
        node_ttl: HumanDuration(Duration::from_millis(1500)),
        probe_interval: HumanDuration(probe),
        ..ClusterConfig::default()
    };
    TestGateway::start_with(routes, |cfg| cfg.cluster = Some(cluster)).await
}

/// A Redis, an echo backend and nodes `a` and `b` probing every second.
async fn two_nodes() -> (RedisServer, EchoBackend, TestGateway, TestGateway) {
    let redis = RedisServer::start().await;
    let backend = EchoBackend::start().await;
    let a = node(&redis, &backend, "a", Duration::from_secs(1)).await;
    let b = node(&redis, &backend, "b", Duration::from_secs(1)).await;
    (redis, backend, a, b)
}

/// Waits until `gw` (any node) sees `devices` devices of `user` across the cluster.
async fn wait_devices(gw: &TestGateway, user: &str, devices: usize) {
    wait_for(
        &format!("{devices} devices of {user} in the cluster"),
        Duration::from_secs(15),
        || async {
            let reply = push_client(gw)
                .await
                .presence(authed(PresenceRequest {
                    user_ids: vec![user.into()],
                }))
                .await
                .ok()?
                .into_inner();
            (reply.users[0].devices.len() == devices).then_some(())
        },
    )
    .await;
}

async fn login(gw: &TestGateway, user: &str, sid: &str, device: &str, platform: &str) -> Ws {
    connect(gw, &format!("token={}", token(user, sid, device, platform)))
        .await
        .expect("handshake accepted")
}

fn push_payload(msg: Message) -> Vec<u8> {
    let server_frame::Body::Push(p) = server_frame(msg) else {
        panic!("push expected")
    };
    p.payload
}

/// Nothing but pings arrives on `ws` for a while.
async fn quiet(ws: &mut Ws) {
    let got = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(got.is_err(), "unexpected message: {got:?}");
}

async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match next(ws).await {
            Message::Close(Some(frame)) => return u16::from(frame.code),
            Message::Close(None) => return 1005,
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_on_one_node_reaches_devices_on_the_others_with_one_publish_per_node() {
    let redis = RedisServer::start().await;
    let backend = EchoBackend::start().await;
    // Probes every minute: none falls inside the measured window.
    let probe = Duration::from_secs(60);
    let a = node(&redis, &backend, "a", probe).await;
    let b = node(&redis, &backend, "b", probe).await;
    let c = node(&redis, &backend, "c", probe).await;
    let mut phone = login(&b, "u1", "s-1", "phone", "ios").await;
    let mut laptop = login(&c, "u1", "s-2", "laptop", "web").await;
    let mut other = login(&a, "u2", "s-3", "tablet", "android").await;
    wait_devices(&a, "u1", 2).await;

    let before = redis.calls("publish");
    let reply = push_client(&a)
        .await
        .push(authed(echo_push(&["u1", "u2", "nobody"], b"hello")))
        .await
        .unwrap()
        .into_inner();
    let publishes = redis.calls("publish") - before;
    assert_eq!(
        (reply.delivered, reply.users_online, reply.users_offline),
        (3, 2, 1)
    );
    assert_eq!(
        publishes, 2,
        "one publish per target node (b, c), none to a or per user"
    );
    for ws in [&mut phone, &mut laptop, &mut other] {
        let payload = push_payload(next(ws).await);
        assert!(!payload.is_empty());
        quiet(ws).await;
    }

    // Platform filters apply on the receiving node too.
    let reply = push_client(&a)
        .await
        .push(authed(PushRequest {
            platforms: vec!["web".into()],
            ..echo_push(&["u1"], b"web only")
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.delivered, reply.users_online), (1, 1));
    push_payload(next(&mut laptop).await);
    quiet(&mut phone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_push_costs_one_lookup_per_shard_and_one_spublish_per_target_node() {
    let redis = RedisCluster::start(3).await;
    let backend = EchoBackend::start().await;
    let routes = echo_routes(&[backend.addr], "");
    let probe = Duration::from_secs(60);
    let a = node_on(&redis.url(), true, &routes, "a", probe).await;
    let b = node_on(&redis.url(), true, &routes, "b", probe).await;
    let c = node_on(&redis.url(), true, &routes, "c", probe).await;
    let users: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    let mut sockets = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let gw = if i % 2 == 0 { &b } else { &c };
        sockets.push(login(gw, user, &format!("s-{i}"), "phone", "ios").await);
    }
    for user in &users {
        wait_devices(&a, user, 1).await;
    }
    let mut targets = users.clone();
    targets.push("nobody".into());
    let mut per_shard = [0usize; 3];
    for user in &targets {
        per_shard[redis.shard_of(&format!("test:u:{{{user}}}"))] += 1;
    }
    assert!(
        per_shard.iter().all(|n| *n > 0),
        "the users spread over every shard: {per_shard:?}"
    );

    let counts =
        |command: &str| -> Vec<u64> { redis.shards.iter().map(|s| s.calls(command)).collect() };
    let (lookups, publishes) = (counts("evalsha"), counts("spublish"));
    let target_refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let reply = push_client(&a)
        .await
        .push(authed(echo_push(&target_refs, b"hello")))
        .await
        .unwrap()
        .into_inner();
    let lookups: Vec<u64> = counts("evalsha")
        .iter()
        .zip(&lookups)
        .map(|(after, before)| after - before)
        .collect();
    let publishes: u64 = counts("spublish").iter().sum::<u64>() - publishes.iter().sum::<u64>();
    assert_eq!(
        (reply.delivered, reply.users_online, reply.users_offline),
        (12, 12, 1)
    );
    assert_eq!(
        lookups,
        vec![1, 1, 1],
        "one lookup per shard for {} users spread {per_shard:?}",
        targets.len()
    );
    assert_eq!(publishes, 2, "one sharded publish per target node (b, c)");
    for shard in &redis.shards {
        let errors = shard.cli(&["INFO", "errorstats"]);
        assert!(
            !errors.contains("MOVED") && !errors.contains("CROSSSLOT"),
            "no misrouted command: {errors}"
        );
    }
    for ws in &mut sockets {
        push_payload(next(ws).await);
        quiet(ws).await;
    }

    // The multi-device policy holds across nodes on the cluster too (the default is
    // one_per_platform): a second ios login of user-0 on c kicks the one on b.
    let _second = login(&c, "user-0", "s-new", "phone-2", "ios").await;
    assert_eq!(close_code(&mut sockets[0]).await, 4002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_kicks_and_revocations_are_cluster_wide() {
    let (_redis, _backend, a, b) = two_nodes().await;

    // one_per_platform (the default): a second ios login on b closes the first, on a.
    let mut first = login(&a, "u1", "s-1", "phone-1", "ios").await;
    wait_devices(&b, "u1", 1).await;
    let mut second = login(&b, "u1", "s-2", "phone-2", "ios").await;
    let server_frame::Body::Push(p) = server_frame(next(&mut first).await) else {
        panic!("session_kicked expected")
    };
    assert_eq!(p.kind, "session_kicked");
    assert_eq!(
        SessionKicked::decode(p.payload.as_slice())
            .unwrap()
            .by_device_id,
        "phone-2"
    );
    assert_eq!(close_code(&mut first).await, 4002);
    wait_devices(&a, "u1", 1).await;

    // Revoke on a: the socket on b closes with 4001, and the sid is refused on both nodes.
    push_client(&a)
        .await
        .revoke(authed(RevokeRequest {
            sid: "s-2".into(),
            exp: 0,
        }))
        .await
        .unwrap();
    assert_eq!(close_code(&mut second).await, 4001);
    for gw in [&a, &b] {
        let refused = connect(
            gw,
            &format!("token={}", token("u1", "s-2", "phone-2", "ios")),
        )
        .await;
        assert_eq!(refused.err(), Some(401));
    }

    // Kick on b of a user connected to a.
    let mut other = login(&a, "u2", "s-3", "laptop", "web").await;
    wait_devices(&b, "u2", 1).await;
    let kicked = push_client(&b)
        .await
        .kick(authed(KickRequest {
            user_id: "u2".into(),
            device_id: String::new(),
            reason: "admin".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kicked.closed, 1);
    assert_eq!(close_code(&mut other).await, 4002);
}

async fn cross_node_push_arrives(from: &TestGateway, ws: &mut Ws, user: &str) -> bool {
    let reply = push_client(from)
        .await
        .push(authed(echo_push(&[user], b"x")))
        .await;
    if !matches!(&reply, Ok(r) if r.get_ref().delivered == 1) {
        return false;
    }
    tokio::time::timeout(Duration::from_millis(500), next(ws))
        .await
        .is_ok()
}

/// Retries a cross-node push until it arrives; how long that took.
async fn until_cross_node_push(from: &TestGateway, ws: &mut Ws, user: &str) -> Duration {
    let started = std::time::Instant::now();
    while !cross_node_push_arrives(from, ws, user).await {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "cross-node delivery did not resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

async fn readyz_status(gw: &TestGateway) -> String {
    gw.admin_json("/readyz").await["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_keeps_local_pushes_and_cross_node_delivery_resumes() {
    let (mut redis, _backend, a, b) = two_nodes().await;
    let mut on_a = login(&a, "u1", "s-1", "phone", "ios").await;
    let mut on_b = login(&b, "u2", "s-2", "phone", "ios").await;
    wait_devices(&a, "u2", 1).await;
    assert!(cross_node_push_arrives(&a, &mut on_b, "u2").await);

    redis.kill();
    wait_for("a degraded", Duration::from_secs(10), || async {
        (readyz_status(&a).await == "degraded").then_some(())
    })
    .await;
    // Local delivery does not need Redis, and answers fast.
    let started = std::time::Instant::now();
    let reply = push_client(&a)
        .await
        .push(authed(echo_push(&["u1", "u2"], b"local")))
        .await
        .unwrap()
        .into_inner();
    assert!(started.elapsed() < Duration::from_secs(3), "fails fast");
    assert_eq!(reply.delivered, 1, "u1 on a; u2 (on b) cannot be reached");
    push_payload(next(&mut on_a).await);

    // Redis back, empty: the nodes register their sessions again and cross-node pushes resume.
    redis.restart().await;
    let took = until_cross_node_push(&a, &mut on_b, "u2").await;
    assert!(
        took < Duration::from_secs(5),
        "resumed within 5 s: {took:?}"
    );
    wait_for("a ready again", Duration::from_secs(10), || async {
        (readyz_status(&a).await == "ok").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_is_repaired() {
    let (redis, _backend, a, b) = two_nodes().await;
    let mut on_b = login(&b, "u2", "s-2", "phone", "ios").await;
    wait_devices(&a, "u2", 1).await;
    wait_for("b subscribed", Duration::from_secs(10), || async {
        (readyz_status(&b).await == "ok").then_some(())
    })
    .await;

    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        killed.trim().parse::<u32>().unwrap_or(0) >= 2,
        "killed: {killed}"
    );
    let took = until_cross_node_push(&a, &mut on_b, "u2").await;
    assert!(
        took < Duration::from_secs(10),
        "repaired within 10 s: {took:?}"
    );
    wait_for("b ready", Duration::from_secs(10), || async {
        (readyz_status(&b).await == "ok").then_some(())
    })
    .await;
}

/// A cluster node as a real `im-gateway` process with the shipped cluster defaults.
async fn node_process(
    redis: &RedisServer,
    backend: &EchoBackend,
    dir: &ScratchDir,
    id: &str,
    prefix: &str,
) -> GatewayProcess {
    let tail = format!(
        "push: {{internal_token_file: internal.token, drain_window: 500ms}}\n\
         shutdown: {{grace_period: 1s, graceful_timeout: 3s}}\n\
         cluster: {{redis_url: \"{}\", node_id: {id}, prefix: \"{prefix}\"}}\n",
        redis.url()
    );
    let routes = echo_routes(&[backend.addr], "");
    GatewayProcess::spawn(env!("CARGO_BIN_EXE_gateway_process"), dir, &routes, &tail).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_users_are_offline_within_the_shipped_node_ttl() {
    let redis = RedisServer::start().await;
    let backend = EchoBackend::start().await;
    // Both nodes on the shipped defaults: heartbeat 2 s, node TTL 6 s.
    let a = TestGateway::start_with(&echo_routes(&[backend.addr], ""), |cfg| {
        cfg.cluster = Some(ClusterConfig {
            redis_url: redis.url(),
            node_id: Some("a".into()),
            prefix: "kill:".into(),
            ..ClusterConfig::default()
        })
    })
    .await;
    let dir = ScratchDir::new("cluster-kill");
    let mut b = node_process(&redis, &backend, &dir, "b", "kill:").await;
    let b_push = b.push;
    let q = format!("token={}", token("u1", "s-1", "phone", "ios"));
    let _ws = connect_addr(b_push, &q).await.expect("session on b");
    wait_devices(&a, "u1", 1).await;

    let killed = std::time::Instant::now();
    b.child.kill(); // SIGKILL (and reaped): no announced leave, no unregistration
    wait_devices(&a, "u1", 0).await;
    let offline_after = killed.elapsed();
    eprintln!("killed node's user offline after {offline_after:?}");
    assert!(
        offline_after <= Duration::from_millis(6_500),
        "offline within the 6 s node TTL: {offline_after:?}"
    );
    let reply = push_client(&a)
        .await
        .push(authed(echo_push(&["u1"], b"anyone?")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.delivered, reply.users_offline), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_s_users_who_reconnect_elsewhere_never_look_offline() {
    let redis = RedisServer::start().await;
    let backend = EchoBackend::start().await;
    let a = node(&redis, &backend, "a", Duration::from_secs(1)).await;
    let dir = ScratchDir::new("cluster-drain");
    // b on the shipped cluster defaults (presence_grace 10 s); SIGTERM drains it.
    let mut b = node_process(&redis, &backend, &dir, "b", "test:").await;
    let b_push = b.push;
    let query = format!("token={}", token("u1", "s-1", "phone", "ios"));
    let mut ws = connect_addr(b_push, &query).await.expect("session on b");
    wait_devices(&a, "u1", 1).await;

    // Presence asked on a every 50 ms for the whole move from b to a.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, internal) = (stop.clone(), a.internal);
        tokio::spawn(async move {
            let mut client =
                im_proto::im::gateway::v1::push_service_client::PushServiceClient::connect(
                    format!("http://{internal}"),
                )
                .await
                .unwrap();
            let mut offline = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = client
                    .presence(authed(PresenceRequest {
                        user_ids: vec!["u1".into()],
                    }))
                    .await
                    .unwrap()
                    .into_inner();
                if reply.users[0].devices.is_empty() {
                    offline += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            offline
        })
    };
    b.terminate();
    let Message::Close(Some(frame)) = next(&mut ws).await else {
        panic!("close expected")
    };
    assert_eq!(u16::from(frame.code), 1001);
    let delay: u64 = frame
        .reason
        .split("reconnect_after_ms=")
        .nth(1)
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no reconnect hint in {:?}", frame.reason));
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let _ws = connect(&a, &query).await.expect("session on a");
    // Watched until the new session is in the registry (the old one's grace has not ended).
    wait_devices(&a, "u1", 1).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        watcher.await.unwrap(),
        0,
        "u1 was reported offline while moving"
    );
    assert!(
        b.child.wait_exit(Duration::from_secs(30)).await.success(),
        "b exits cleanly after its drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_reaches_a_drained_node_after_its_user_left_is_forwarded_to_where_they_went() {
    let redis = RedisServer::start().await;
    let backend = EchoBackend::start().await;
    let a = node(&redis, &backend, "a", Duration::from_secs(1)).await;
    let dir = ScratchDir::new("cluster-forward");
    let mut b = node_process(&redis, &backend, &dir, "b", "test:").await;
    let b_push = b.push;
    let query = format!("token={}", token("u1", "s-1", "phone", "ios"));
    let mut ws = connect_addr(b_push, &query).await.expect("session on b");
    wait_devices(&a, "u1", 1).await;

    // b drains: u1's session closes, its entry stays for the presence grace.
    b.terminate();
    assert_eq!(close_code(&mut ws).await, 1001);
    // The push finds u1 only on b (the new session below is not registered yet) ...
    let reply = push_client(&a)
        .await
        .push(authed(echo_push(&["u1"], b"while moving")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.delivered, reply.users_online), (1, 1));
    // ... and u1 comes back on a, the push's sender, right after it looked.
    let mut back = connect(&a, &query).await.expect("session on a");
    let payload = tokio::time::timeout(Duration::from_secs(5), next(&mut back))
        .await
        .expect("b forwarded the push to u1's new session on a");
    assert!(!push_payload(payload).is_empty());
    quiet(&mut back).await;
    assert!(b.child.wait_exit(Duration::from_secs(30)).await.success());
}

async fn live_nodes(gw: &TestGateway) -> Option<u64> {
    gw.admin_json("/readyz").await["cluster"]["live_nodes"].as_u64()
}

/// `n` concurrent calls of a limited route as `user`; how many passed.
async fn hammer(gw: &TestGateway, user: &str, n: usize) -> usize {
    let token = format!("Bearer {}", im_tests::user_token(user));
    let calls = (0..n).map(|_| {
        let token = token.clone();
        async move {
            gw.post(
                "/service/limited",
                r#"{"text":"x"}"#,
                &[("authorization", &token)],
            )
            .await
            .0
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    statuses.iter().filter(|s| **s == 200).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wide_limits_hold_across_nodes_and_split_while_redis_is_away() {
    let mut redis = RedisServer::start().await;
    let backend = EchoBackend::start().await;
    let routes = echo_routes(&[backend.addr], "").replace(
        "routes:\n",
        "routes:\n  - name: limited\n    http: { method: POST, path: /service/limited }\n    \
         upstream: echo\n    grpc: im.echo.v1.EchoService/Echo\n    \
         rate_limit: { key: user, per_second: 0.2, burst: 10, scope: cluster }\n",
    );
    let a = node_with_routes(&redis, &routes, "a", Duration::from_secs(1)).await;
    let b = node_with_routes(&redis, &routes, "b", Duration::from_secs(1)).await;
    wait_for(
        "both nodes see two nodes",
        Duration::from_secs(10),
        || async {
            let seen_by_a = live_nodes(&a).await;
            (seen_by_a == Some(2) && live_nodes(&b).await == Some(2)).then_some(())
        },
    )
    .await;

    // Both nodes at once, 25 calls each: one bucket of 10 (refill 0.2/s) for the cluster.
    let started = std::time::Instant::now();
    let (on_a, on_b) = tokio::join!(hammer(&a, "u1", 25), hammer(&b, "u1", 25));
    let refill = (started.elapsed().as_secs_f64() * 0.2).ceil() as usize;
    assert!(on_a + on_b >= 10, "the burst is usable: {on_a} + {on_b}");
    assert!(
        on_a + on_b <= 10 + refill,
        "never more than the limit together: {on_a} + {on_b}"
    );

    // Redis away: each node admits its share, 10 / 2 live nodes = 5 (a fresh user).
    redis.kill();
    let (on_a, on_b) = tokio::join!(hammer(&a, "u2", 15), hammer(&b, "u2", 15));
    assert!(
        (5..=6).contains(&on_a) && (5..=6).contains(&on_b),
        "shares: {on_a}, {on_b}"
    );
    for gw in [&a, &b] {
        let metrics = gw.metrics().await;
        let fallbacks: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("im_gateway_ratelimit_cluster_fallbacks_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        assert_eq!(
            fallbacks, 15.0,
            "every decision during the outage was a share"
        );
    }
}

/// A counter of `gw`'s metrics (0 when absent).
pub(crate) async fn metric(gw: &TestGateway, line_prefix: &str) -> f64 {
    gw.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_messages_of_a_newer_format_or_garbage_are_skipped_and_counted() {
    let (redis, _backend, a, b) = two_nodes().await;
    let mut on_b = login(&b, "u2", "s-2", "phone", "ios").await;
    wait_devices(&a, "u2", 1).await;

    // A NodeMessage { version: 99, probe: { nonce: 1 } } from a future release, then junk.
    let newer = im_proto::im::gateway::v1::NodeMessage {
        version: 99,
        body: Some(im_proto::im::gateway::v1::node_message::Body::Probe(
            im_proto::im::gateway::v1::NodeProbe { nonce: 1 },
        )),
        ..Default::default()
    };
    let published = redis.cli_with_stdin(&["PUBLISH", "test:node:b"], &newer.encode_to_vec());
    assert_eq!(published.trim(), "1", "b is subscribed");
    redis.cli_with_stdin(&["PUBLISH", "test:node:b"], b"\xff\xffnot protobuf");
    wait_for("both counted", Duration::from_secs(5), || async {
        let newer = metric(
            &b,
            "im_gateway_cluster_messages_skipped_total{reason=\"newer_format\"} ",
        )
        .await;
        let junk = metric(
            &b,
            "im_gateway_cluster_messages_skipped_total{reason=\"malformed\"} ",
        )
        .await;
        (newer == 1.0 && junk == 1.0).then_some(())
    })
    .await;
    // And b goes on delivering what a sends it.
    assert!(cross_node_push_arrives(&a, &mut on_b, "u2").await);
}

/// How `ws` ends within 2 s: its close code, `None` while it stays open (or ends without one).
async fn end_of(ws: &mut Ws) -> Option<u16> {
    tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return Some(u16::from(f.code)),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_logins_racing_for_one_slot_on_two_nodes_leave_exactly_one() {
    let (_redis, _backend, a, b) = two_nodes().await;
    for round in 0..5 {
        let user = format!("racer-{round}");
        let (sid_a, sid_b) = (format!("sa-{round}"), format!("sb-{round}"));
        // Same user, same platform (one_per_platform), different devices, at the same moment.
        let (mut on_a, mut on_b) = tokio::join!(
            login(&a, &user, &sid_a, "phone-a", "ios"),
            login(&b, &user, &sid_b, "phone-b", "ios"),
        );
        let (a_end, b_end) = tokio::join!(end_of(&mut on_a), end_of(&mut on_b));
        let kicked = [a_end, b_end].iter().filter(|c| **c == Some(4002)).count();
        assert_eq!(
            (kicked, a_end.is_none() || b_end.is_none()),
            (1, true),
            "round {round}: exactly one login survives ({a_end:?}, {b_end:?})"
        );
        wait_devices(&a, &user, 1).await;
        wait_devices(&b, &user, 1).await;
    }
}
