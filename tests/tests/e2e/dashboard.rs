//! The dashboard ops open first (`observability/grafana/im-gateway.json`, DESIGN §11) against a
//! real Prometheus scraping two real cluster nodes after known traffic: a 401, a 429, a refused
//! handshake, 1,000 sockets with 1,000 distinct platforms, a cross-node push, an offline
//! recipient, a slow consumer closed with 4003, an applied and a rejected reload. Every query of
//! every panel is evaluated through Prometheus's HTTP API and must return series of the metrics it
//! names; the values the traffic implies are checked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use im_gateway::cluster::ClusterConfig;
use im_gateway::push::config::Rate;
use im_gateway::units::{ByteSize, HumanDuration};
use im_proto::im::echo::v1::EchoReply;
use im_tests::prometheus::{Prometheus, Sample};
use im_tests::redis_server::RedisServer;
use im_tests::{wait_for, EchoBackend, TestGateway};
use prost::Message as _;
use serde_json::Value;

use crate::push::{authed, connect, echo_push, next, push_client, token, wait_online};

const JOB: &str = "im-gateway";
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../observability/grafana/im-gateway.json"
);

fn routes(backend: SocketAddr, extra: &str) -> String {
    format!(
        r#"upstreams:
  echo:
    endpoints: ["{backend}"]
routes:
  - {{ name: echo, http: {{ method: POST, path: /service/echo }}, cmd: 1, upstream: echo, grpc: im.echo.v1.EchoService/Echo, auth: none }}
  - {{ name: limited, http: {{ method: POST, path: /service/limited }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo, auth: none, rate_limit: {{ key: ip, per_second: 0.01, burst: 1 }} }}
  - {{ name: private, http: {{ method: POST, path: /service/private }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo }}
{extra}"#
    )
}

async fn node(redis: &RedisServer, routes: &str, id: &str, queue: Option<u64>) -> TestGateway {
    let cluster = ClusterConfig {
        redis_url: redis.url(),
        node_id: Some(id.into()),
        prefix: "dash:".into(),
        heartbeat: HumanDuration(Duration::from_millis(300)),
        node_ttl: HumanDuration(Duration::from_millis(1500)),
        probe_interval: HumanDuration(Duration::from_secs(1)),
        ..ClusterConfig::default()
    };
    TestGateway::start_with(routes, |cfg| {
        cfg.cluster = Some(cluster);
        // Every test socket comes from 127.0.0.1.
        cfg.push.max_connections_per_ip = 10_000;
        cfg.push.handshake_rate = Rate {
            per_second: 10_000.0,
            burst: 10_000,
        };
        if let Some(bytes) = queue {
            cfg.push.queue_bytes = ByteSize(bytes);
        }
    })
    .await
}

/// A panel query as Grafana sends it with every variable on "All" and the job's default.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$job", JOB)
        .replace("$node", ".*")
        .replace("$route", ".*")
        .replace("$upstream", ".*")
}

/// The metric names a query selects (each written `name{...}`).
fn metric_names(expr: &str) -> Vec<String> {
    expr.match_indices('{')
        .filter_map(|(i, _)| {
            let before = &expr[..i];
            let start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(0, |p| p + 1);
            let name = &before[start..];
            (!name.is_empty()).then(|| name.to_owned())
        })
        .collect()
}

/// The value of the one sample whose labels include all of `labels`.
fn value_of(samples: &[Sample], labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "one series with {labels:?} in {samples:#?}");
    found[0].value
}

/// The traffic the dashboard must show, on node a: three 200s, a 401 (no token), a 429 (burst of
/// 1), a refused handshake, a push crossing Redis to bob on node b with an offline recipient, a
/// client that never reads closed as a slow consumer (256 KiB queue), a reload applied and one
/// rejected.
async fn events(a: &TestGateway, bob: &mut crate::push::Ws, backend: SocketAddr, round: u32) {
    let echo = r#"{"text": "hi"}"#;
    for _ in 0..3 {
        assert_eq!(a.post("/service/echo", echo, &[]).await.0, 200);
    }
    assert_eq!(a.post("/service/private", echo, &[]).await.0, 401);
    a.post("/service/limited", echo, &[]).await;
    assert_eq!(a.post("/service/limited", echo, &[]).await.0, 429);
    assert_eq!(connect(a, "token=not-a-jwt").await.err(), Some(401));

    let mut pushes = push_client(a).await;
    let hello = EchoReply {
        text: "hello".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let reply = pushes
        .push(authed(echo_push(&["bob", "nobody"], &hello)))
        .await
        .expect("push")
        .into_inner();
    assert_eq!((reply.users_online, reply.users_offline), (1, 1));
    next(bob).await;

    let slow = format!("slow-{round}");
    let _stuck = connect(a, &format!("token={}", token(&slow, &slow, "d", "web")))
        .await
        .expect("slow socket");
    wait_online(a, &[&slow]).await;
    let big = EchoReply {
        text: "x".repeat(60 * 1024),
        ..Default::default()
    }
    .encode_to_vec();
    for _ in 0..2_000 {
        let reply = pushes
            .push(authed(echo_push(&[&slow], &big)))
            .await
            .expect("push")
            .into_inner();
        if reply.users_online == 0 {
            break;
        }
    }

    let more = "  - { name: echo2, http: { method: POST, path: /service/echo2 }, upstream: echo, grpc: im.echo.v1.EchoService/Echo, auth: none }\n";
    let extra = if round % 2 == 1 { more } else { "" };
    a.write_routes(&routes(backend, extra));
    assert_eq!(a.reload().await.0, 200);
    a.write_routes("routes: [ { name: broken");
    assert_eq!(a.reload().await.0, 422);
}

fn total(samples: &[Sample]) -> f64 {
    samples.iter().map(|s| s.value).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_the_series_it_names_after_known_traffic() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("dashboard file"))
            .expect("dashboard is JSON");
    let redis = RedisServer::start().await;
    let backend = EchoBackend::start().await;
    let a = node(&redis, &routes(backend.addr, ""), "a", Some(256 * 1024)).await;
    let b = node(&redis, &routes(backend.addr, ""), "b", None).await;
    let (node_a, node_b) = (a.admin.to_string(), b.admin.to_string());
    let prom = Prometheus::start(JOB, &[a.admin, b.admin]).await;
    // Both nodes scraped once before the traffic, so rates and increases cover all of it.
    wait_for("both nodes scraped", Duration::from_secs(30), || async {
        let up = prom
            .query(&format!("up{{job=\"{JOB}\"}} == 1"))
            .await
            .ok()?;
        (up.len() == 2).then_some(())
    })
    .await;

    // 1,000 sockets, each naming a platform of its own: one `other` series. They connect from
    // 127.0.0.2, so their ports never collide with the free ports other tests bind on 127.0.0.1.
    let mut sockets = Vec::with_capacity(1000);
    let ids: Vec<usize> = (0..1000).collect();
    for batch in ids.chunks(50) {
        let opened = futures::future::join_all(batch.iter().map(|i| {
            let t = token(
                &format!("u{i}"),
                &format!("s{i}"),
                "d",
                &format!("platform-{i}"),
            );
            let url = format!("ws://{}/ws?token={t}", a.push);
            let push = a.push;
            async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::from(([127, 0, 0, 2], 0)))?;
                let stream = socket.connect(push).await?;
                tokio_tungstenite::client_async(url, stream)
                    .await
                    .map(|(ws, _)| ws)
                    .map_err(std::io::Error::other)
            }
        }))
        .await;
        sockets.extend(opened.into_iter().map(|r| r.expect("handshake accepted")));
    }
    let mut bob = connect(&b, &format!("token={}", token("bob", "sb", "d", "ios")))
        .await
        .expect("bob's socket");
    wait_online(&a, &["bob"]).await;

    // The events twice, with a scrape between: a labelled series is born at its first event,
    // and a rate needs it scraped before the next (in production it was, long before).
    for round in 1..=2u32 {
        events(&a, &mut bob, backend.addr, round).await;
        wait_for("the round scraped", Duration::from_secs(30), || async {
            let n = f64::from(round);
            let scraped = [
                format!("im_gateway_ws_closes_total{{code=\"4003\"}} >= {n}"),
                format!("im_gateway_route_reloads_total{{result=\"error\"}} >= {n}"),
                format!("im_gateway_ratelimit_rejections_total >= {n}"),
                "im_gateway_route_last_reload_successful == 0".to_owned(),
                "sum(im_gateway_ws_connections_by_platform{platform=\"other\"}) >= 1000".to_owned(),
            ];
            for q in scraped {
                if prom.query(&q).await.ok()?.is_empty() {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }

    // Every query of every panel returns series of the metrics it names.
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut results: HashMap<String, Vec<Vec<Sample>>> = HashMap::new();
    let mut row_sizes: Vec<(String, usize)> = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("titled panel").to_owned();
        if panel["type"] == "row" {
            row_sizes.push((title, 0));
            continue;
        }
        row_sizes.last_mut().expect("panels sit in rows").1 += 1;
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            assert!(
                !expr.contains("vector("),
                "{title}: a padded query proves nothing: {expr}"
            );
            let sent = as_grafana_sends(expr);
            let samples = prom
                .query(&sent)
                .await
                .unwrap_or_else(|e| panic!("{title}: {sent}: {e}"));
            assert!(!samples.is_empty(), "{title}: no series for {sent}");
            for name in metric_names(expr) {
                let exists = prom
                    .query(&format!("count({{__name__=\"{name}\"}})"))
                    .await
                    .unwrap();
                assert!(!exists.is_empty(), "{title}: no metric {name}");
            }
            results.entry(title.clone()).or_default().push(samples);
        }
    }
    for (row, size) in &row_sizes {
        assert!(*size > 0, "row {row:?} has no panel");
    }
    assert_eq!(row_sizes.len(), 8, "{row_sizes:?}");

    // The variables list what the traffic made.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(q) = var["query"]["query"].as_str() else {
            continue;
        };
        let Some(args) = q.strip_prefix("label_values(") else {
            continue;
        };
        let (selector, label) = args.trim_end_matches(')').rsplit_once(", ").unwrap();
        let values = prom.label_values(label, &as_grafana_sends(selector)).await;
        assert!(!values.is_empty(), "variable {}: {q}", var["name"]);
        if var["name"] == "node" {
            assert_eq!(values, {
                let mut v = vec![node_a.clone(), node_b.clone()];
                v.sort();
                v
            });
        }
    }

    // The values the traffic implies.
    let panel = |title: &str, target: usize| -> &Vec<Sample> {
        &results
            .get(title)
            .unwrap_or_else(|| panic!("panel {title:?}"))[target]
    };
    let requests = panel("Requests per second by route and status", 0);
    for (route, status) in [("echo", "200"), ("private", "401"), ("limited", "429")] {
        let rate = value_of(requests, &[("route", route), ("status", status)]);
        assert!(rate > 0.0, "{route} {status}: {rate}");
    }
    assert!(total(panel("Auth failures by reason", 0)) > 0.0);
    let limited = panel("Rate-limit rejections by route and key kind", 0);
    assert!(value_of(limited, &[("route", "limited"), ("key", "ip")]) > 0.0);
    assert!(total(panel("WebSocket handshakes refused by reason", 0)) > 0.0);
    let platforms = panel("Open sockets by platform and node", 0);
    assert_eq!(
        value_of(platforms, &[("instance", &node_a), ("platform", "other")]),
        1000.0
    );
    assert_eq!(
        value_of(platforms, &[("instance", &node_b), ("platform", "ios")]),
        1.0
    );
    let series = prom
        .query("count by (instance) (im_gateway_ws_connections_by_platform)")
        .await
        .unwrap();
    for s in &series {
        assert!(
            s.value <= 5.0,
            "platform series beyond the fixed set: {s:?}"
        );
    }
    let delivery = "Pushes delivered, dropped and offline recipients";
    assert!(value_of(panel(delivery, 0), &[("instance", &node_b)]) > 0.0);
    assert!(value_of(panel(delivery, 2), &[("instance", &node_a)]) > 0.0);
    let slow = "Slow consumers closed (4003), write stalls, budget sheds (1013)";
    assert!(value_of(panel(slow, 0), &[("instance", &node_a)]) > 0.0);
    let closes = panel("Closes by code", 0);
    assert!(value_of(closes, &[("code", "4003")]) > 0.0);
    let lag = value_of(
        panel("Cross-node lag p99 (cluster mode)", 0),
        &[("instance", &node_b)],
    );
    assert!(lag.is_finite() && lag >= 0.0, "lag {lag}");
    let last = panel("Last route reload applied (1) or rejected (0)", 0);
    assert_eq!(value_of(last, &[("instance", &node_a)]), 0.0);
    assert_eq!(value_of(last, &[("instance", &node_b)]), 1.0);
    let reloads = panel("Route reloads by result, last hour", 0);
    assert!(value_of(reloads, &[("instance", &node_a), ("result", "ok")]) > 0.0);
    assert!(value_of(reloads, &[("instance", &node_a), ("result", "error")]) > 0.0);
    let redis_p99 = panel("Redis command latency p99", 0);
    assert!(redis_p99
        .iter()
        .any(|s| s.value.is_finite() && s.value > 0.0));
    assert_eq!(total(panel("Live gateway nodes", 0)), 2.0);
    let health = panel("Endpoint health (1 takes traffic, 0 does not)", 0);
    assert_eq!(
        value_of(
            health,
            &[
                ("upstream", "echo"),
                ("endpoint", &backend.addr.to_string())
            ]
        ),
        1.0
    );
    let p99 = panel("p99 latency, total (HTTP requests and cmd frames)", 0);
    assert!(value_of(p99, &[("http_route", "echo")]).is_finite());
    assert!(total(panel("Resident memory", 0)) > 0.0);
    drop(sockets);
}
