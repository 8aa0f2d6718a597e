//! Slow clients (security issue, item 13), with raw TCP clients: a request head dripped one
//! header line at a time is cut at `http.request_head_timeout` while a polite client is served;
//! an idle keep-alive connection closes at `http.keepalive_timeout`; connections that have not
//! completed a request are capped per IP (`http.max_unfinished_per_ip`); and the push listener's
//! `push.handshake_timeout` holds against the same drip.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use im_gateway::config::GatewayConfig;
use im_gateway::units::HumanDuration;
use im_tests::{echo_routes, EchoBackend, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limits(c: &mut GatewayConfig) {
    c.http.request_head_timeout = HumanDuration(Duration::from_secs(1));
    c.http.keepalive_timeout = HumanDuration(Duration::from_secs(1));
    c.http.max_unfinished_per_ip = 4;
    c.push.handshake_timeout = HumanDuration(Duration::from_secs(1));
}

/// Sends a request line, then one header line every 200 ms for up to 8 s; how long the server
/// kept the connection open (`None`: still open at the end).
async fn drip(addr: SocketAddr, path: &str) -> Option<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: gw\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    for i in 0..40 {
        if s.write_all(format!("x-drip-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            return Some(start.elapsed());
        }
        // Closed by the server: EOF or reset within the pause.
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    None
}

/// Whether the server closed `s` within `within` (EOF or reset).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripped_head_is_cut_and_a_polite_client_is_served() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), limits).await;
    let dripping = tokio::spawn(drip(gw.edge, "/healthz"));
    let polite = reqwest::get(gw.url("/service/missing")).await.unwrap();
    assert_eq!(
        polite.status(),
        404,
        "the polite client is served meanwhile"
    );
    let held = dripping.await.unwrap();
    assert!(
        held.is_some_and(|d| d < Duration::from_secs(5)),
        "a dripped head held the connection: {held:?}"
    );
    assert!(gw
        .metrics()
        .await
        .contains("im_gateway_http_head_timeouts_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), limits).await;
    let mut s = TcpStream::connect(gw.edge).await.unwrap();
    s.write_all(b"GET /missing HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "an idle keep-alive connection stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_connections_are_capped_per_ip() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), |c| {
        limits(c);
        c.http.request_head_timeout = HumanDuration(Duration::from_secs(30));
    })
    .await;
    let mut conns = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(gw.edge).await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\n").await;
        conns.push(s);
    }
    // Exactly one of the five (whichever was accepted last) is dropped at accept.
    let mut open = Vec::new();
    let mut dropped = 0;
    for mut s in conns {
        if closed_within(&mut s, Duration::from_millis(1500)).await {
            dropped += 1;
        } else {
            open.push(s);
        }
    }
    assert_eq!(dropped, 1, "five unfinished connections from one IP, cap 4");
    // One finishes its head: a new connection is accepted again.
    open[0].write_all(b"host: gw\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let _ = open[0].read(&mut buf).await.unwrap();
    let resp = reqwest::get(gw.url("/service/missing")).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(gw
        .metrics()
        .await
        .contains("im_gateway_http_unfinished_rejections_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_handshake_timeout_holds_against_a_drip() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), limits).await;
    let held = drip(gw.push, "/ws").await;
    assert!(
        held.is_some_and(|d| d < Duration::from_secs(5)),
        "a dripped upgrade held the push connection: {held:?}"
    );
}
