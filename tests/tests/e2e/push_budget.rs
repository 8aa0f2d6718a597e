//! Gateway-wide bounds on WebSocket memory (security issue, item 11), with real clients that stop
//! reading: the bytes queued for all sessions together stay under `push.total_queue_bytes` (a
//! session whose frame would pass it is shed with 1013), and a socket that takes no bytes for
//! `push.write_stall_timeout` while frames wait is closed with 4003.

use std::time::Duration;

use im_gateway::units::{ByteSize, HumanDuration};
use im_proto::im::echo::v1::EchoReply;
use im_tests::{echo_routes, wait_for, EchoBackend, TestGateway};
use prost::Message as _;

use crate::push::{authed, connect, echo_push, push_client, token, wait_online};

async fn metric(gw: &TestGateway, name: &str) -> u64 {
    let text = gw.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn payload() -> Vec<u8> {
    EchoReply {
        text: "x".repeat(60 * 1024),
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_sessions_together_stay_within_the_queue_budget() {
    const BUDGET: u64 = 512 * 1024;
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), |c| {
        c.push.queue_bytes = ByteSize(BUDGET);
        c.push.total_queue_bytes = ByteSize(BUDGET);
    })
    .await;
    let mut stuck = Vec::new();
    for user in ["a", "b", "c"] {
        stuck.push(
            connect(&gw, &format!("token={}", token(user, user, "d", "ios")))
                .await
                .unwrap(),
        );
    }
    wait_online(&gw, &["a", "b", "c"]).await;
    let mut client = push_client(&gw).await;
    let payload = payload();
    let mut max_used = 0;
    for _ in 0..2_000 {
        let reply = client
            .push(authed(echo_push(&["a", "b", "c"], &payload)))
            .await
            .unwrap()
            .into_inner();
        max_used = max_used.max(metric(&gw, "im_gateway_ws_queue_budget_used_bytes").await);
        if reply.users_online < 3 {
            break;
        }
    }
    let sheds = metric(&gw, "im_gateway_ws_queue_budget_sheds_total").await;
    assert!(sheds >= 1, "no session was shed at the gateway-wide budget");
    assert!(
        max_used <= BUDGET,
        "held {max_used} bytes > budget {BUDGET}"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .contains("im_gateway_ws_closes_total{code=\"1013\",reason=\"gateway queue budget\"}"),
        "{metrics}"
    );
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_takes_no_bytes_is_closed_after_the_write_stall_timeout() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), |c| {
        // Queues far larger than what is pushed: only the stall rule can act.
        c.push.queue_bytes = ByteSize(256 << 20);
        c.push.total_queue_bytes = ByteSize(512 << 20);
        c.push.write_stall_timeout = HumanDuration(Duration::from_secs(1));
        c.push.ping_interval = HumanDuration(Duration::from_millis(200));
    })
    .await;
    let stuck = connect(&gw, &format!("token={}", token("slow", "s", "d", "ios")))
        .await
        .unwrap();
    wait_online(&gw, &["slow"]).await;
    let mut client = push_client(&gw).await;
    let payload = payload();
    // More than the kernel's socket buffers hold (a few MB on loopback), then nothing more.
    for _ in 0..400 {
        client
            .push(authed(echo_push(&["slow"], &payload)))
            .await
            .unwrap();
    }
    wait_for("the write stall close", Duration::from_secs(20), || async {
        (metric(&gw, "im_gateway_ws_write_stalls_total").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        metric(&gw, "im_gateway_ws_slow_consumer_closes_total").await,
        0
    );
    wait_for("the session gone", Duration::from_secs(10), || async {
        (metric(&gw, "im_gateway_ws_connections").await == 0).then_some(())
    })
    .await;
    assert_eq!(
        metric(&gw, "im_gateway_ws_queue_budget_used_bytes").await,
        0,
        "bytes leaked"
    );
    drop(stuck);
}
