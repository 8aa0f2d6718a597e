//! Rate limiting at the edge (DESIGN §6): exact burst, refill at the configured rate, headers,
//! keys bounded under a flood of distinct IPs, the real client IP behind a trusted proxy, and
//! reloads that keep unchanged buckets.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use im_tests::{user_token, wait_for, EchoBackend, TestGateway};

fn routes(backend: std::net::SocketAddr, login_limit: &str) -> String {
    format!(
        r#"upstreams:
  echo: {{ endpoints: ["{backend}"] }}
routes:
  - {{ name: login, http: {{ path: /login }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo, auth: none, rate_limit: {login_limit} }}
  - {{ name: send, http: {{ path: /send }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo, rate_limit: {{ key: user, per_second: 0.01, burst: 3 }} }}
  - {{ name: fast, http: {{ path: /fast }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo, auth: none, rate_limit: {{ key: ip, per_second: 20, burst: 2 }} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_gets_exact_429s_with_headers_and_refills_at_rate() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&routes(
        backend.addr,
        "{ key: ip, per_second: 0.01, burst: 5 }",
    ))
    .await;
    let mut remaining = Vec::new();
    let mut rejected = 0;
    for _ in 0..8 {
        let (status, headers, body) = gw.post("/login", "{}", &[]).await;
        assert_eq!(headers["ratelimit-limit"], "5");
        match status {
            200 => remaining.push(headers["ratelimit-remaining"].to_str().unwrap().to_owned()),
            429 => {
                rejected += 1;
                assert_eq!(body["code"], "RESOURCE_EXHAUSTED");
                assert_eq!(headers["ratelimit-remaining"], "0");
                let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(
                    (90..=100).contains(&retry),
                    "one token per 100 s: retry-after {retry}"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(rejected, 3, "8 requests against a burst of 5");
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    assert_eq!(
        backend.calls(),
        5,
        "rejected requests never reach the backend"
    );

    // 20/s with a burst of 2: 40 requests at once. However slow the machine, no more than the
    // burst plus the refill of the time they took can pass (an upper bound, never flaky), the
    // refused ones are counted, and the bucket refills (a wait on an event, not a timed window).
    let started = Instant::now();
    let statuses = futures::future::join_all((0..40).map(|_| gw.post("/fast", "{}", &[]))).await;
    let elapsed = started.elapsed().as_secs_f64();
    let passed = statuses.iter().filter(|s| s.0 == 200).count();
    let refused = statuses.iter().filter(|s| s.0 == 429).count();
    assert_eq!(passed + refused, 40);
    assert!(
        passed as f64 <= 2.0 + 20.0 * elapsed + 1.0,
        "passed {passed} in {elapsed:.2}s: more than burst + refill"
    );
    assert!(passed >= 2, "the burst passes");
    let metrics = gw.metrics().await;
    let counted = metrics
        .lines()
        .find(|l| {
            l.starts_with("im_gateway_ratelimit_rejections_total{") && l.contains("route=\"fast\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .unwrap_or(0);
    assert_eq!(counted, refused, "every refusal counted");
    wait_for("the bucket refills", Duration::from_secs(5), || async {
        (gw.post("/fast", "{}", &[]).await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_keys_follow_the_token_and_ip_keys_the_real_client() {
    let backend = EchoBackend::start().await;
    let limit = "{ key: ip, per_second: 0.01, burst: 1 }";
    // Behind a trusted proxy (the test client is 127.0.0.1): each forwarded client has its own bucket.
    let behind_cdn = TestGateway::start_with(&routes(backend.addr, limit), |cfg| {
        cfg.client_ip.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(
        behind_cdn
            .post("/login", "{}", &xff("198.51.100.1"))
            .await
            .0,
        200
    );
    assert_eq!(
        behind_cdn
            .post("/login", "{}", &xff("198.51.100.2"))
            .await
            .0,
        200
    );
    assert_eq!(
        behind_cdn
            .post("/login", "{}", &xff("198.51.100.1"))
            .await
            .0,
        429
    );
    // A spoofed left-most hop does not help: the right-most untrusted hop is the client.
    assert_eq!(
        behind_cdn
            .post("/login", "{}", &xff("203.0.113.9, 198.51.100.1"))
            .await
            .0,
        429
    );

    // Without trusted proxies the socket peer is the key, whatever the header says.
    let direct = TestGateway::start(&routes(backend.addr, limit)).await;
    assert_eq!(
        direct.post("/login", "{}", &xff("198.51.100.1")).await.0,
        200
    );
    assert_eq!(
        direct.post("/login", "{}", &xff("198.51.100.2")).await.0,
        429
    );

    // `user` limits key on the token's subject.
    let (a, b) = (
        format!("Bearer {}", user_token("alice")),
        format!("Bearer {}", user_token("bob")),
    );
    for _ in 0..3 {
        assert_eq!(
            direct.post("/send", "{}", &[("authorization", &a)]).await.0,
            200
        );
    }
    assert_eq!(
        direct.post("/send", "{}", &[("authorization", &a)]).await.0,
        429
    );
    assert_eq!(
        direct.post("/send", "{}", &[("authorization", &b)]).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_ips_never_exceeds_the_key_cap() {
    const CAP: usize = 2_000;
    const FLOOD: usize = 200_000;
    // Nothing listens on the upstream and it is health-checked: admitted requests get a fast 503,
    // so the flood exercises admission, not the backend.
    let dead = im_tests::loopback(im_tests::free_port());
    let gw = Arc::new(
        TestGateway::start_with(
            &format!(
                r#"upstreams:
  nowhere: {{ endpoints: ["{dead}"], health_check: {{ interval: 1m, timeout: 100ms }} }}
routes:
  - {{ name: login, http: {{ path: /login }}, upstream: nowhere, grpc: im.echo.v1.EchoService/Echo, auth: none, rate_limit: {{ key: ip, per_second: 1, burst: 1 }} }}
"#
            ),
            |cfg| {
                cfg.client_ip.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
                cfg.rate_limit.max_keys = CAP;
            },
        )
        .await,
    );
    let done = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (gw, done, max_seen) = (gw.clone(), done.clone(), max_seen.clone());
        tokio::spawn(async move {
            let mut samples = 0;
            while !done.load(Ordering::Relaxed) {
                let metrics = gw.metrics().await;
                let keys: usize = metrics
                    .lines()
                    .find_map(|l| l.strip_prefix("im_gateway_ratelimit_keys "))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("ratelimit_keys metric");
                max_seen.fetch_max(keys, Ordering::Relaxed);
                samples += 1;
            }
            samples
        })
    };
    let client = reqwest::Client::new();
    let url = gw.url("/login");
    let statuses = stream::iter(0..FLOOD)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
                client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-forwarded-for", ip)
                    .body("{}")
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(64)
        .fold(0usize, |acc, s| async move { acc + usize::from(s == 503) })
        .await;
    done.store(true, Ordering::Relaxed);
    let samples = watcher.await.unwrap();
    assert_eq!(
        statuses, FLOOD,
        "every distinct IP was admitted (its first request)"
    );
    let max = max_seen.load(Ordering::Relaxed);
    assert!(
        samples > 5,
        "the metric was sampled during the flood ({samples} samples)"
    );
    assert!(max > CAP / 2, "the flood filled the limiter ({max})");
    assert!(max <= CAP, "live keys {max} exceeded the cap {CAP}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_one_limit_keeps_other_buckets_and_drops_nothing() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start(&routes(
        backend.addr,
        "{ key: ip, per_second: 0.01, burst: 2 }",
    ))
    .await;
    let alice = format!("Bearer {}", user_token("alice"));
    // Spend alice's `send` bucket (burst 3) and the `login` bucket (burst 2).
    for _ in 0..3 {
        assert_eq!(
            gw.post("/send", "{}", &[("authorization", &alice)]).await.0,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(gw.post("/login", "{}", &[]).await.0, 200);
    }
    assert_eq!(gw.post("/login", "{}", &[]).await.0, 429);

    // Reload with a bigger login limit while requests keep flowing on `fast`.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, url) = (stop.clone(), gw.url("/fast"));
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await
                {
                    Ok(r) if [200, 429].contains(&r.status().as_u16()) => {}
                    other => bad.push(format!("{other:?}")),
                }
            }
            bad
        })
    };
    gw.write_routes(&routes(
        backend.addr,
        "{ key: ip, per_second: 0.01, burst: 10 }",
    ));
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
    stop.store(true, Ordering::Relaxed);
    let bad = traffic.await.unwrap();
    assert!(bad.is_empty(), "requests failed during the reload: {bad:?}");

    // The changed limit takes effect at once (a fresh bucket of 10)...
    let (status, headers, _) = gw.post("/login", "{}", &[]).await;
    assert_eq!(
        (status, headers["ratelimit-limit"].to_str().unwrap()),
        (200, "10")
    );
    // ...and the unchanged `send` limit kept alice's spent bucket.
    assert_eq!(
        gw.post("/send", "{}", &[("authorization", &alice)]).await.0,
        429
    );
}
