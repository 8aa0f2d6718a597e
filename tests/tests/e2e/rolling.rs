//! A rolling restart of a two-node cluster while clients chat (issue #13): node A drains (1001
//! with a reconnect hint) and comes back, then node B does. Every client follows the hint to the
//! other node and catches up by `after_seq`; at the end every message has reached its recipient,
//! none is stored twice, and presence never said a client was offline. 20 clients by default;
//! `IM_ROLLING_CLIENTS=100` (scripts/rolling-soak.sh) for the full soak.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use im_proto::im::gateway::v1::push_service_client::PushServiceClient;
use im_proto::im::gateway::v1::PresenceRequest;
use im_tests::im::{ImClient, ImSystem};
use im_tests::redis_server::RedisServer;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::push::authed;

/// Messages each client sends, spread over the restarts.
const SENDS: usize = 8;
const SEND_EVERY: Duration = Duration::from_millis(700);

struct Peer {
    client: ImClient,
    session: String,
    partner: String,
    /// Edge and push addresses of both nodes; `home` is where it starts.
    edges: [String; 2],
    pushes: [std::net::SocketAddr; 2],
    home: usize,
}

/// `POST /service/<path>` on whichever node answers, starting with `first`.
async fn call_any(peer: &Peer, first: usize, path: &str, body: &Value) -> Value {
    for attempt in 0..200 {
        let mut c = peer.client.clone();
        c.base = peer.edges[(first + attempt) % 2].clone();
        let sent = tokio::time::timeout(Duration::from_secs(3), async {
            let mut req = c
                .http
                .post(format!("{}/service/{path}", c.base))
                .header("content-type", "application/json")
                .body(body.to_string());
            if let Some(t) = &c.token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            serde_json::from_slice::<Value>(&resp.bytes().await.ok()?).ok()
        })
        .await;
        if let Ok(Some(v)) = sent {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path}: no node answered")
}

fn seq_of(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// One client's socket life: connected to a node, following drain hints to the other, catching
/// up by `after_seq` after each (re)connect; the partner's sequence numbers it saw.
async fn receive(peer: Arc<Peer>, stop: Arc<AtomicBool>, seen: Arc<Mutex<BTreeSet<u64>>>) {
    let mut node = peer.home;
    while !stop.load(Ordering::Relaxed) {
        let url = format!("ws://{}/ws?{}", peer.pushes[node], peer.client.ws_query());
        // A node being restarted refuses connections: try the other one.
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
            node = 1 - node;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let after = seen.lock().unwrap().last().copied().unwrap_or(0);
        let history = call_any(
            &peer,
            node,
            "message_storage/get_history",
            &json!({"chat_session_id": peer.session, "after_seq": after.to_string()}),
        )
        .await;
        for m in history["msg_list"].as_array().into_iter().flatten() {
            if m["sender"]["user_id"] == peer.partner.as_str() {
                seen.lock().unwrap().insert(seq_of(&m["seq"]));
            }
        }
        let mut hint = 0;
        loop {
            let frame = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
            match frame {
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(_) => continue,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    let info = &v["push"]["payload"]["message_info"];
                    if v["push"]["kind"] == "chat_message_notify"
                        && info["sender"]["user_id"] == peer.partner.as_str()
                    {
                        seen.lock().unwrap().insert(seq_of(&info["seq"]));
                    }
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    hint = reason
                        .split("reconnect_after_ms=")
                        .nth(1)
                        .and_then(|d| d.parse().ok())
                        .unwrap_or(0);
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(hint)).await;
        node = 1 - node;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_both_nodes_loses_no_message_and_no_presence() {
    let clients: usize = std::env::var("IM_ROLLING_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
        .max(2)
        & !1;
    if std::env::var("IM_ROLLING_LOG").is_ok() {
        im_gateway::cli::init_logging();
    }
    let redis = RedisServer::start().await;
    let mut sys = ImSystem::start_cluster(&redis.url(), 2).await;
    let edges = [sys.gw.url(""), sys.nodes[0].url("")];
    let pushes = [sys.gw.push, sys.nodes[0].push];
    let internals = [sys.gw.internal, sys.nodes[0].internal];

    // Pairs of friends, the two of a pair on different nodes.
    let mut peers = Vec::new();
    for pair in 0..clients / 2 {
        let a = sys.user_of(&sys.gw, &format!("ra{pair}"), "web-a").await;
        let b = sys
            .user_of(&sys.nodes[0], &format!("rb{pair}"), "web-b")
            .await;
        let session = a.befriend(&b).await;
        for (me, other, home) in [(&a, &b, 0), (&b, &a, 1)] {
            peers.push(Arc::new(Peer {
                client: me.clone(),
                session: session.clone(),
                partner: other.user_id.clone(),
                edges: edges.clone(),
                pushes,
                home,
            }));
        }
    }
    let users: Vec<String> = peers.iter().map(|p| p.client.user_id.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    let mut seen = Vec::new();
    for p in &peers {
        let s = Arc::new(Mutex::new(BTreeSet::new()));
        seen.push(s.clone());
        receivers.push(tokio::spawn(receive(p.clone(), stop.clone(), s)));
    }
    crate::push::wait_online(
        &sys.gw,
        &users.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;

    // Presence, asked every 100 ms of whichever node answers, must always find every user.
    let offline = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let (stop, offline, users) = (stop.clone(), offline.clone(), users.clone());
        tokio::spawn(async move {
            let mut node = 0;
            while !stop.load(Ordering::Relaxed) {
                let asked = async {
                    let mut c = PushServiceClient::connect(format!("http://{}", internals[node]))
                        .await
                        .ok()?;
                    let reply = c
                        .presence(authed(PresenceRequest {
                            user_ids: users.clone(),
                        }))
                        .await
                        .ok()?;
                    let gone: Vec<String> = reply
                        .into_inner()
                        .users
                        .into_iter()
                        .filter(|u| u.devices.is_empty())
                        .map(|u| u.user_id)
                        .collect();
                    if !gone.is_empty() {
                        eprintln!("presence on node {node}: offline {gone:?}");
                    }
                    Some(gone.len())
                };
                match tokio::time::timeout(Duration::from_secs(2), asked).await {
                    Ok(Some(n)) => {
                        offline.fetch_add(n, Ordering::Relaxed);
                    }
                    _ => node = 1 - node,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Everyone sends SENDS messages (retries reuse the client_msg_id) while A, then B, restarts.
    let senders: Vec<_> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p.clone();
            tokio::spawn(async move {
                let mut seqs = BTreeSet::new();
                for n in 0..SENDS {
                    let body = json!({"chat_session_id": p.session,
                        "client_msg_id": format!("{i}-{n}"),
                        "message": {"message_type": "MESSAGE_TYPE_TEXT", "text": format!("m{n}")}});
                    let sent =
                        call_any(&p, p.home + n, "message_transmit/new_message", &body).await;
                    seqs.insert(seq_of(&sent["seq"]));
                    tokio::time::sleep(SEND_EVERY).await;
                }
                seqs
            })
        })
        .collect();
    // The restarts are paced by the clock on purpose (a scenario, not a wait for readiness): A
    // drains a second into the conversation, B a second after A is back, while messages flow.
    // Restarting B sooner than that loses pushes (issue #13's note: a push routed in the moment
    // between a user's reconnect and its registration reaching Redis goes to the old node).
    tokio::time::sleep(Duration::from_secs(1)).await;
    sys.gw.drain().await;
    sys.gw.restart().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sys.nodes[0].drain().await;
    sys.nodes[0].restart().await;

    let mut sent = Vec::new();
    for s in senders {
        sent.push(s.await.unwrap());
    }
    // Each client's partner is its neighbour in `peers` (pairs are adjacent).
    let expected = |i: usize| &sent[i ^ 1];
    crate::push::wait_online(
        &sys.gw,
        &users.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<(usize, String, Vec<u64>)> = (0..peers.len())
            .map(|i| {
                let seen = seen[i].lock().unwrap();
                (
                    i,
                    peers[i].client.user_id.clone(),
                    expected(i).difference(&seen).copied().collect::<Vec<_>>(),
                )
            })
            .filter(|(_, _, m)| !m.is_empty())
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "messages never reached their recipients (client, user, missing seqs): {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    monitor.await.unwrap();
    for r in receivers {
        r.await.unwrap();
    }
    assert_eq!(
        offline.load(Ordering::Relaxed),
        0,
        "presence reported a connected user offline"
    );
    // Stored once each: a session's history holds exactly the two partners' sends.
    for pair in peers.chunks(2) {
        let history = call_any(
            &pair[0],
            0,
            "message_storage/get_history",
            &json!({"chat_session_id": pair[0].session, "after_seq": "0"}),
        )
        .await;
        let stored = history["msg_list"].as_array().map_or(0, Vec::len);
        assert_eq!(stored, 2 * SENDS, "{}: {history}", pair[0].session);
    }
    drop(redis);
}
