//! Client-IP keys behind a trusted proxy (security issue, item 9): IPv6 clients are keyed by
//! their network (`client_ip.ipv6_prefix`, default /64), not per address, for rate limits,
//! handshake budgets and connection slots alike; and `X-Forwarded-For` sent as several header
//! lines is read as one list, so the right-most untrusted hop still decides.

use im_tests::{echo_routes, EchoBackend, TestGateway};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::push::token;

fn routes(backend: std::net::SocketAddr) -> String {
    format!(
        r#"upstreams:
  echo: {{ endpoints: ["{backend}"] }}
routes:
  - {{ name: login, http: {{ path: /login }}, upstream: echo, grpc: im.echo.v1.EchoService/Echo, auth: none,
       rate_limit: {{ key: ip, per_second: 0.001, burst: 1 }} }}
"#
    )
}

async fn behind_cdn(
    routes: &str,
    tweak: impl FnOnce(&mut im_gateway::config::GatewayConfig),
) -> TestGateway {
    TestGateway::start_with(routes, |c| {
        c.client_ip.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        tweak(c);
    })
    .await
}

/// `POST /login` with one `X-Forwarded-For` line per entry of `xff`; the status.
async fn login(gw: &TestGateway, xff: &[&str]) -> u16 {
    let headers: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
    gw.post("/login", "{}", &headers).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_share_a_bucket_per_64() {
    let backend = EchoBackend::start().await;
    let gw = behind_cdn(&routes(backend.addr), |_| {}).await;
    assert_eq!(login(&gw, &["2001:db8:1:2::1"]).await, 200);
    assert_eq!(
        login(&gw, &["2001:db8:1:2:ffff::9"]).await,
        429,
        "another address of the same /64 got a bucket of its own"
    );
    assert_eq!(
        login(&gw, &["2001:db8:1:3::1"]).await,
        200,
        "the next /64 is another client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_lines_are_one_list() {
    let backend = EchoBackend::start().await;
    let gw = behind_cdn(&routes(backend.addr), |_| {}).await;
    // Two header lines are one list: the client cannot hide behind a first line of its own.
    assert_eq!(login(&gw, &["198.51.100.7"]).await, 200);
    assert_eq!(
        login(&gw, &["6.6.6.6", "198.51.100.7"]).await,
        429,
        "a forged first X-Forwarded-For line chose the bucket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_connection_slots_are_per_64() {
    let backend = EchoBackend::start().await;
    let gw = behind_cdn(&echo_routes(&[backend.addr], ""), |c| {
        c.push.max_connections_per_ip = 1;
    })
    .await;
    let open = |ip: &'static str, user: &'static str| {
        let gw = &gw;
        async move {
            let url = format!(
                "ws://{}/ws?token={}",
                gw.push,
                token(user, user, "d", "ios")
            );
            let mut req = url.into_client_request().unwrap();
            req.headers_mut()
                .insert("x-forwarded-for", ip.parse().unwrap());
            match tokio_tungstenite::connect_async(req).await {
                Ok((ws, _)) => Ok(ws),
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
                Err(e) => panic!("handshake: {e}"),
            }
        }
    };
    let _first = open("2001:db8:5:6::1", "a").await.expect("first slot");
    assert_eq!(
        open("2001:db8:5:6::2", "b").await.err(),
        Some(429),
        "another address of the same /64 took another slot"
    );
    assert!(open("2001:db8:5:7::1", "c").await.is_ok(), "another /64");
}
