//! The seed chat flow through the gateway only (HTTP + WebSocket), against the real reference
//! backends on SQLite: friends, sessions, messages with notifications, idempotent sends,
//! catch-up by `after_seq`, search (Chinese too), files, a group of three, logout -> 4001.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use im_tests::im::{ImClient, ImSystem};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::push::{connect, next, wait_online, Ws};

/// Opens `client`'s WebSocket (JSON) and waits until the gateway has registered it.
async fn online(sys: &ImSystem, client: &ImClient) -> Ws {
    let ws = connect(&sys.gw, &client.ws_query())
        .await
        .expect("handshake accepted");
    wait_online(&sys.gw, &[client.user_id.as_str()]).await;
    ws
}

fn json_frame(msg: Message) -> Value {
    let Message::Text(t) = msg else {
        panic!("JSON text frame expected, got {msg:?}")
    };
    serde_json::from_str(t.as_str()).expect("frame is JSON")
}

/// The next pushes on `ws`, one of each of `kinds` in any order, keyed by kind; any other
/// frame fails the test.
async fn pushes(ws: &mut Ws, kinds: &[&str]) -> HashMap<String, Value> {
    let mut got = HashMap::new();
    while got.len() < kinds.len() {
        let v = json_frame(next(ws).await);
        let kind = v["push"]["kind"].as_str().unwrap_or_default().to_owned();
        assert!(
            kinds.contains(&kind.as_str()) && !got.contains_key(&kind),
            "unexpected frame {v} while waiting for {kinds:?}"
        );
        got.insert(kind, v["push"]["payload"].clone());
    }
    got
}

async fn push(ws: &mut Ws, kind: &str) -> Value {
    pushes(ws, &[kind]).await.remove(kind).unwrap()
}

async fn send_text(c: &ImClient, session: &str, client_msg_id: &str, text: &str) -> Value {
    c.ok(
        "message_transmit/new_message",
        json!({"chat_session_id": session, "client_msg_id": client_msg_id,
               "message": {"message_type": "MESSAGE_TYPE_TEXT", "text": text}}),
    )
    .await
}

/// `a` asks `b` to be friends and `b` agrees; both sockets see the notifications.
/// Returns the new one-to-one session id.
async fn befriend(a: &ImClient, a_ws: &mut Ws, b: &ImClient, b_ws: &mut Ws) -> String {
    let apply = a
        .ok(
            "friend/add_friend_apply",
            json!({"respondent_id": b.user_id}),
        )
        .await;
    let event = apply["notify_event_id"].as_str().unwrap().to_owned();
    let n = push(b_ws, "friend_add_apply_notify").await;
    assert_eq!(n["notify_event_id"], event);
    assert_eq!(n["applicant"]["user_id"], a.user_id);
    let pending = b.ok("friend/get_pending_friend_events", json!({})).await;
    assert_eq!(pending["event"][0]["event_id"], event);

    let processed = b
        .ok(
            "friend/add_friend_process",
            json!({"notify_event_id": event, "agree": true, "apply_user_id": a.user_id}),
        )
        .await;
    let session = processed["new_session_id"].as_str().unwrap().to_owned();
    assert!(!session.is_empty(), "{processed}");
    let a_got = pushes(
        a_ws,
        &["friend_add_process_notify", "chat_session_create_notify"],
    )
    .await;
    assert_eq!(a_got["friend_add_process_notify"]["agree"], true);
    assert_eq!(
        a_got["chat_session_create_notify"]["chat_session_info"]["chat_session_id"],
        session
    );
    let b_got = push(b_ws, "chat_session_create_notify").await;
    assert_eq!(b_got["chat_session_info"]["chat_session_id"], session);
    session
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_chat_flow_works_through_the_gateway() {
    let sys = ImSystem::start(|_| {}).await;
    let alice = sys.user("alice", "alice-web").await;
    let mut bob = sys.user("bob", "bob-phone").await;
    let carol = sys.user("carol", "carol-web").await;
    let mut alice_ws = online(&sys, &alice).await;
    let mut bob_ws = online(&sys, &bob).await;

    // Search, apply, agree: notifications on both sides, a one-to-one session for both.
    let found = alice
        .ok("friend/search_friend", json!({"search_key": "bo"}))
        .await;
    assert_eq!(found["user_info"][0]["user_id"], bob.user_id, "{found}");
    let session = befriend(&alice, &mut alice_ws, &bob, &mut bob_ws).await;
    let friends = bob.ok("friend/get_friend_list", json!({})).await;
    assert_eq!(friends["friend_list"][0]["nickname"], "alice");
    let list = bob.ok("friend/get_chat_session_list", json!({})).await;
    assert_eq!(list["chat_session_list"][0]["chat_session_name"], "alice");
    assert_eq!(list["chat_session_list"][0]["last_seq"], "0");

    // Alice sends over the WebSocket (cmd 3001), Bob gets chat_message_notify.
    alice_ws
        .send(Message::Text(
            json!({"seq": "1", "cmd": 3001, "payload": {
                "chat_session_id": session, "client_msg_id": "a-1",
                "message": {"text": "hi bob"}}})
            .to_string()
            .into(),
        ))
        .await
        .unwrap();
    let rsp = json_frame(next(&mut alice_ws).await);
    assert_eq!(rsp["response"]["code"], "OK", "{rsp}");
    assert_eq!(rsp["response"]["payload"]["seq"], "1");
    let n = push(&mut bob_ws, "chat_message_notify").await;
    assert_eq!(n["message_info"]["seq"], "1");
    assert_eq!(n["message_info"]["message"]["text"], "hi bob");
    assert_eq!(n["message_info"]["sender"]["nickname"], "alice");

    // Bob answers over HTTP; Alice's next push is Bob's message (her own send was not echoed
    // to her sending device).
    let sent = send_text(&bob, &session, "b-1", "hi alice").await;
    assert_eq!(sent["seq"], "2");
    let n = push(&mut alice_ws, "chat_message_notify").await;
    assert_eq!(n["message_info"]["seq"], "2");
    assert_eq!(n["message_info"]["sender"]["user_id"], bob.user_id);

    // A retried send with the same client_msg_id is stored once.
    let again = send_text(&bob, &session, "b-1", "hi alice").await;
    assert_eq!(
        (&again["seq"], &again["message_id"]),
        (&sent["seq"], &sent["message_id"])
    );
    let recent = alice
        .ok(
            "message_storage/get_recent",
            json!({"chat_session_id": session, "msg_count": 10}),
        )
        .await;
    assert_eq!(recent["msg_list"].as_array().unwrap().len(), 2, "{recent}");

    // Bob goes offline; Alice sends two more; Bob catches up with after_seq and sees unread 2.
    bob_ws.close(None).await.unwrap();
    send_text(&alice, &session, "a-2", "今天天气很好，我们去公园吧").await;
    send_text(&alice, &session, "a-3", "see you at the park").await;
    let list = bob.ok("friend/get_chat_session_list", json!({})).await;
    assert_eq!(list["chat_session_list"][0]["unread"], "2", "{list}");
    let missed = bob
        .ok(
            "message_storage/get_history",
            json!({"chat_session_id": session, "after_seq": "2"}),
        )
        .await;
    let seqs: Vec<&str> = missed["msg_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_str().unwrap())
        .collect();
    assert_eq!(seqs, ["3", "4"]);
    let list = bob.ok("friend/get_chat_session_list", json!({})).await;
    assert_eq!(
        list["chat_session_list"][0]["unread"], "0",
        "read after catch-up"
    );

    // Search: a Chinese phrase (trigram index), a two-character Chinese word, English.
    for (key, expect_seq) in [("去公园", "3"), ("天气", "3"), ("the park", "4")] {
        let hits = bob
            .ok(
                "message_storage/search_history",
                json!({"chat_session_id": session, "search_key": key}),
            )
            .await;
        let list = hits["msg_list"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{key}: {hits}");
        assert_eq!(list[0]["seq"], expect_seq);
    }

    // Files: upload, send as an image message, download by the other member (a file is
    // readable by the sessions whose messages reference it), one entry per distinct id.
    let content: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let b64 = base64_encode(&content);
    let put = alice
        .ok(
            "file/put_single_file",
            json!({"file_data": {"file_name": "cat.png", "file_content": b64}}),
        )
        .await;
    let file_id = put["file_info"]["file_id"].as_str().unwrap().to_owned();
    assert_eq!(put["file_info"]["file_size"], "100000");
    alice
        .ok(
            "message_transmit/new_message",
            json!({"chat_session_id": session, "client_msg_id": "a-img",
                   "message": {"message_type": "MESSAGE_TYPE_IMAGE", "file_id": file_id,
                               "file_name": "cat.png", "file_size": "100000"}}),
        )
        .await;
    let got = bob
        .ok("file/get_single_file", json!({"file_id": file_id}))
        .await;
    assert_eq!(got["file_data"]["file_content"], b64);
    assert_eq!(got["file_data"]["file_name"], "cat.png");
    let multi = bob
        .ok(
            "file/get_multi_file",
            json!({"file_id_list": [file_id, file_id]}),
        )
        .await;
    assert_eq!(multi["file_data"].as_array().unwrap().len(), 1);

    // A group of three: everyone hears of it, a message fans out to the other two.
    bob_ws = online(&sys, &bob).await;
    let mut carol_ws = online(&sys, &carol).await;
    befriend(&carol, &mut carol_ws, &alice, &mut alice_ws).await;
    let group = alice
        .ok(
            "friend/create_chat_session",
            json!({"chat_session_name": "trip", "member_id_list": [bob.user_id, carol.user_id]}),
        )
        .await;
    let group_id = group["chat_session_info"]["chat_session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(group["chat_session_info"]["member_count"], 3);
    for ws in [&mut alice_ws, &mut bob_ws, &mut carol_ws] {
        let n = push(ws, "chat_session_create_notify").await;
        assert_eq!(n["chat_session_info"]["chat_session_name"], "trip");
    }
    send_text(&alice, &group_id, "a-g1", "hello group").await;
    for ws in [&mut bob_ws, &mut carol_ws] {
        let n = push(ws, "chat_message_notify").await;
        assert_eq!(n["message_info"]["chat_session_id"], group_id);
        assert_eq!(n["message_info"]["message"]["text"], "hello group");
    }
    let members = carol
        .ok(
            "friend/get_chat_session_member",
            json!({"chat_session_id": group_id}),
        )
        .await;
    assert_eq!(members["member_info_list"].as_array().unwrap().len(), 3);

    // Refresh keeps the session; logout revokes it: the socket closes with 4001 and the old
    // and refreshed tokens stop working.
    let refreshed = bob.ok("user/refresh_token", json!({})).await;
    let old_token = bob
        .token
        .replace(refreshed["token"].as_str().unwrap().to_owned());
    bob.ok("user/get_user_info", json!({})).await;
    bob.ok("user/logout", json!({})).await;
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match bob_ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(_)) => continue,
                other => panic!("close frame expected, got {other:?}"),
            }
        }
    })
    .await
    .expect("closed within 10 s");
    assert_eq!(close, 4001);
    let (status, _) = bob.call("user/get_user_info", json!({})).await;
    assert_eq!(status, 401);
    bob.token = old_token;
    let (status, _) = bob.call("user/get_user_info", json!({})).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_registration_and_login_use_single_use_codes() {
    let sys = ImSystem::start(|_| {}).await;
    let c = sys.client();
    let phone = "+8613800138000";
    let id = c
        .ok("user/get_phone_verify_code", json!({"phone": phone}))
        .await["verify_code_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = sys.sms.last_code(phone).expect("code sent");
    let (status, v) = c
        .call(
            "user/phone_register",
            json!({"phone": phone, "verify_code_id": id, "verify_code": "000000x"}),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{v}"
    );
    let user = c
        .ok(
            "user/phone_register",
            json!({"phone": phone, "verify_code_id": id, "verify_code": code}),
        )
        .await;
    // The same code again: refused.
    let (status, v) = c
        .call(
            "user/phone_login",
            json!({"phone": phone, "verify_code_id": id, "verify_code": code}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("request a new one"),
        "{v}"
    );
    // A second code right away is rate-limited per phone.
    let (status, v) = c
        .call("user/get_phone_verify_code", json!({"phone": phone}))
        .await;
    assert_eq!(status, 429, "{v}");
    // Once the interval (3 s in tests) has passed, the next request is granted.
    let (id, code) = sys.next_code(&c, phone, phone).await;
    let login = c
        .ok(
            "user/phone_login",
            json!({"phone": phone, "verify_code_id": id, "verify_code": code, "device_id": "p1", "platform": "ios"}),
        )
        .await;
    assert_eq!(login["user_id"], user["user_id"]);
}

/// Standard base64 (what the protobuf JSON mapping uses for `bytes`).
pub(crate) fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Opens `client`'s WebSocket on the node `gw` and waits until that node has registered it.
async fn online_at(gw: &im_tests::TestGateway, client: &ImClient) -> Ws {
    let ws = connect(gw, &client.ws_query())
        .await
        .expect("handshake accepted");
    wait_online(gw, &[client.user_id.as_str()]).await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_chat_flow_works_with_alice_and_bob_on_two_nodes() {
    let redis = im_tests::redis_server::RedisServer::start().await;
    let sys = ImSystem::start_cluster(&redis.url(), 2).await;
    let (a, b) = (&sys.gw, &sys.nodes[0]);
    let alice = sys.user_of(a, "alice", "alice-web").await;
    let bob = sys.user_of(b, "bob", "bob-phone").await;
    let mut alice_ws = online_at(a, &alice).await;
    let mut bob_ws = online_at(b, &bob).await;
    // Each node sees the other's user (the backends may call either node).
    wait_online(a, &[bob.user_id.as_str()]).await;
    wait_online(b, &[alice.user_id.as_str()]).await;

    // Apply and agree across nodes: every notification reaches the other node's socket.
    let session = befriend(&alice, &mut alice_ws, &bob, &mut bob_ws).await;
    let sent = send_text(&alice, &session, "a-1", "hi bob, from node a").await;
    let n = push(&mut bob_ws, "chat_message_notify").await;
    assert_eq!(n["message_info"]["seq"], sent["seq"]);
    assert_eq!(n["message_info"]["message"]["text"], "hi bob, from node a");
    let sent = send_text(&bob, &session, "b-1", "hi alice, from node b").await;
    let n = push(&mut alice_ws, "chat_message_notify").await;
    assert_eq!(n["message_info"]["seq"], sent["seq"]);
    assert_eq!(n["message_info"]["sender"]["user_id"], bob.user_id);
}
