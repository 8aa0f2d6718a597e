//! The backends' privacy and abuse rules (security issue, items 1–3 and 5), driven through the
//! gateway like an app or an attacker would: verification codes that burn after five wrong
//! tries, one phone in any spelling, phone numbers only their owner sees, files only those who
//! may see them can read, a removed friend's history kept read-only, sends without a
//! `client_msg_id`, and logins that take as long for an unknown nickname as for a wrong password.

use std::time::{Duration, Instant};

use im_tests::im::{ImClient, ImSystem};
use serde_json::{json, Value};

use crate::im_flow::base64_encode;

/// Requests a code for `phone` (as typed); the code id and the code the SMS sender got for the
/// normalized number `sent_to`.
async fn code(sys: &ImSystem, c: &ImClient, phone: &str, sent_to: &str) -> (String, String) {
    let v = c
        .ok("user/get_phone_verify_code", json!({"phone": phone}))
        .await;
    let id = v["verify_code_id"].as_str().expect("code id").to_owned();
    let code = sys.sms.last_code(sent_to).expect("code sent");
    (id, code)
}

/// A wrong guess for `code` (same length, different digits).
fn wrong(code: &str) -> String {
    code.chars()
        .map(|ch| if ch == '1' { '2' } else { '1' })
        .collect()
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_guessed_wrong_six_times_is_burned_for_register_login_and_set_phone() {
    let sys = ImSystem::start(|b| b.code_interval = Duration::ZERO).await;
    let anon = sys.client();
    let phone = "+8613900139000";
    let guess = |path: &'static str, id: String, code: String| {
        let anon = &anon;
        async move {
            anon.call(
                path,
                json!({"phone": phone, "verify_code_id": id, "verify_code": code}),
            )
            .await
        }
    };

    for path in ["user/phone_register", "user/phone_login"] {
        if path == "user/phone_login" {
            let (id, c) = code(&sys, &anon, phone, phone).await;
            anon.ok(
                "user/phone_register",
                json!({"phone": phone, "verify_code_id": id, "verify_code": c}),
            )
            .await;
        }
        let (id, c) = code(&sys, &anon, phone, phone).await;
        for _ in 0..6 {
            let (status, v) = guess(path, id.clone(), wrong(&c)).await;
            assert_eq!(status, 400, "{path}: {v}");
        }
        let (status, v) = guess(path, id, c).await;
        assert_eq!(
            status, 400,
            "{path}: the right code still worked after six wrong ones: {v}"
        );
    }

    let alice = sys.user("alice", "a1").await;
    let other = "+8613900139009";
    let (id, c) = code(&sys, &alice, other, other).await;
    for _ in 0..6 {
        let (status, v) = alice
            .call(
                "user/set_phone",
                json!({"phone": other, "verify_code_id": id, "verify_code": wrong(&c)}),
            )
            .await;
        assert_eq!(status, 400, "set_phone: {v}");
    }
    let (status, v) = alice
        .call(
            "user/set_phone",
            json!({"phone": other, "verify_code_id": id, "verify_code": c}),
        )
        .await;
    assert_eq!(
        status, 400,
        "set_phone: the right code still worked after six wrong ones: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phone_in_any_spelling_shares_its_limits_and_its_account() {
    // An interval well above what registering takes on a loaded machine, so the second request
    // is still inside it (next_code waits it out).
    let sys = ImSystem::start(|cfg| cfg.code_interval = std::time::Duration::from_secs(5)).await;
    let anon = sys.client();
    let e164 = "+8613900139001";
    let (id, c) = code(&sys, &anon, "+86 139 0013 9001", e164).await;
    let user = anon
        .ok(
            "user/phone_register",
            json!({"phone": "+86 139 0013 9001", "verify_code_id": id, "verify_code": c}),
        )
        .await;
    // The per-phone interval applies to every spelling of the number.
    let (status, v) = anon
        .call(
            "user/get_phone_verify_code",
            json!({"phone": "8613900139001"}),
        )
        .await;
    assert_eq!(status, 429, "`8613900139001` is the same phone: {v}");
    let (id, c) = sys.next_code(&anon, "13900139001", e164).await;
    let login = anon
        .ok(
            "user/phone_login",
            json!({"phone": "139-0013-9001", "verify_code_id": id,
                   "verify_code": c}),
        )
        .await;
    assert_eq!(login["user_id"], user["user_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_per_phone_are_capped_per_day() {
    let sys = ImSystem::start(|b| b.code_interval = Duration::ZERO).await;
    let anon = sys.client();
    for n in 1..=10 {
        let (status, v) = anon
            .call(
                "user/get_phone_verify_code",
                json!({"phone": "13900139002"}),
            )
            .await;
        assert_eq!(status, 200, "code {n}: {v}");
    }
    let (status, v) = anon
        .call(
            "user/get_phone_verify_code",
            json!({"phone": "+86 13900139002"}),
        )
        .await;
    assert_eq!(status, 429, "the 11th code of the day was sent: {v}");
    assert!(text(&v, "message").contains("day"), "{v}");
    // Another phone is not affected.
    anon.ok(
        "user/get_phone_verify_code",
        json!({"phone": "13900139003"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_phones_are_normalized_on_start_and_the_older_account_keeps_a_collision() {
    let sys = ImSystem::start(|b| {
        // A database written before normalization: three spellings, two of them one phone.
        let db = im_backends::db::Db::open(&b.database).expect("create the database");
        drop(db);
        let conn = rusqlite::Connection::open(&b.database).unwrap();
        for (id, nick, phone, at) in [
            ("old", "old-one", "138 0013 8001", 1),
            ("new", "new-one", "+8613800138001", 2),
            ("dash", "dash-one", "86-138-0013-8002", 3),
        ] {
            conn.execute(
                "INSERT INTO users (id, nickname, phone, created_at) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![id, nick, phone, at],
            )
            .unwrap();
        }
    })
    .await;
    let conn = rusqlite::Connection::open(sys.data.path("im.db")).unwrap();
    let phone_of = |id: &str| -> Option<String> {
        conn.query_row("SELECT phone FROM users WHERE id = ?1", [id], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(phone_of("old").as_deref(), Some("+8613800138001"));
    assert_eq!(phone_of("new"), None, "the newer account keeps no phone");
    assert_eq!(phone_of("dash").as_deref(), Some("+8613800138002"));

    let anon = sys.client();
    let (id, c) = code(&sys, &anon, "13800138001", "+8613800138001").await;
    let login = anon
        .ok(
            "user/phone_login",
            json!({"phone": "13800138001", "verify_code_id": id, "verify_code": c}),
        )
        .await;
    assert_eq!(login["user_id"], "old");
}

/// `a` asks `b`, `b` agrees; the one-to-one session's id.
async fn befriend(a: &ImClient, b: &ImClient) -> String {
    let event = a
        .ok(
            "friend/add_friend_apply",
            json!({"respondent_id": b.user_id}),
        )
        .await["notify_event_id"]
        .clone();
    let done = b
        .ok(
            "friend/add_friend_process",
            json!({"notify_event_id": event, "agree": true, "apply_user_id": a.user_id}),
        )
        .await;
    text(&done, "new_session_id")
}

fn phones_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match v.as_str() {
                    Some(p) if k == "phone" && !p.is_empty() => out.push(p.to_owned()),
                    _ => phones_in(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| phones_in(v, out)),
        _ => {}
    }
}

/// Every non-empty `phone` anywhere in `v`.
fn phones(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    phones_in(v, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_sees_a_phone_number_and_search_needs_the_whole_number() {
    let sys = ImSystem::start(|_| {}).await;
    let mut alice = sys.client();
    let phone = "+8613700137000";
    let (id, c) = code(&sys, &alice, phone, phone).await;
    alice
        .ok(
            "user/phone_register",
            json!({"phone": phone, "nickname": "alice", "verify_code_id": id, "verify_code": c}),
        )
        .await;
    let (id, c) = sys.next_code(&alice, phone, phone).await;
    let login = alice
        .ok(
            "user/phone_login",
            json!({"phone": phone, "verify_code_id": id, "verify_code": c,
                   "device_id": "a1", "platform": "web"}),
        )
        .await;
    alice.token = Some(text(&login, "token"));
    alice.user_id = text(&login, "user_id");
    let bob = sys.user("bob", "b1").await;

    // A stranger's partial search finds nothing; the whole number (any spelling) finds her,
    // without the number.
    let partial = bob
        .ok("friend/search_friend", json!({"search_key": "1370013"}))
        .await;
    assert_eq!(partial["user_info"], json!([]), "{partial}");
    for key in ["+8613700137000", "13700137000", "+86 137 0013 7000"] {
        let found = bob
            .ok("friend/search_friend", json!({"search_key": key}))
            .await;
        assert_eq!(found["user_info"][0]["user_id"], alice.user_id, "{key}");
        assert!(phones(&found).is_empty(), "{key}: {found}");
    }
    let hers = bob
        .ok("user/get_user_info", json!({"user_id": alice.user_id}))
        .await;
    assert!(phones(&hers).is_empty(), "{hers}");
    let own = alice.ok("user/get_user_info", json!({})).await;
    assert_eq!(own["user_info"]["phone"], phone, "{own}");

    // Friends and members do not see it either: pending requests, members, message senders.
    alice
        .ok(
            "friend/add_friend_apply",
            json!({"respondent_id": bob.user_id}),
        )
        .await;
    let pending = bob.ok("friend/get_pending_friend_events", json!({})).await;
    assert!(phones(&pending).is_empty(), "{pending}");
    let event = pending["event"][0]["event_id"].clone();
    let session = text(
        &bob.ok(
            "friend/add_friend_process",
            json!({"notify_event_id": event, "agree": true, "apply_user_id": alice.user_id}),
        )
        .await,
        "new_session_id",
    );
    alice
        .ok(
            "message_transmit/new_message",
            json!({"chat_session_id": session, "client_msg_id": "p1",
                   "message": {"message_type": "MESSAGE_TYPE_TEXT", "text": "hi"}}),
        )
        .await;
    for (path, body) in [
        (
            "message_storage/get_recent",
            json!({"chat_session_id": session, "msg_count": 10}),
        ),
        (
            "friend/get_chat_session_member",
            json!({"chat_session_id": session}),
        ),
        ("friend/get_friend_list", json!({})),
    ] {
        let v = bob.ok(path, body).await;
        assert!(phones(&v).is_empty(), "{path}: {v}");
    }
}

async fn get(c: &ImClient, id: &str) -> (u16, Value) {
    c.call("file/get_single_file", json!({"file_id": id})).await
}

async fn upload(c: &ImClient, name: &str, content: &[u8]) -> String {
    let put = c
        .ok(
            "file/put_single_file",
            json!({"file_data": {"file_name": name, "file_content": base64_encode(content)}}),
        )
        .await;
    text(&put["file_info"], "file_id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_readable_by_their_uploader_the_sessions_that_reference_them_and_avatars() {
    let sys = ImSystem::start(|_| {}).await;
    let alice = sys.user("alice", "a1").await;
    let bob = sys.user("bob", "b1").await;
    let carol = sys.user("carol", "c1").await;
    let session = befriend(&alice, &bob).await;

    let doc = b"the quarterly numbers, do not share".to_vec();
    let doc_id = upload(&alice, "secret.pdf", &doc).await;
    let (status, v) = get(&carol, &doc_id).await;
    assert_eq!(status, 404, "a stranger read a file by its hash: {v}");
    let (status, v) = get(&bob, &doc_id).await;
    assert_eq!(
        status, 404,
        "a friend read a file no message references: {v}"
    );

    alice
        .ok(
            "message_transmit/new_message",
            json!({"chat_session_id": session, "client_msg_id": "f1",
                   "message": {"message_type": "MESSAGE_TYPE_FILE", "file_id": doc_id,
                               "file_name": "report.pdf", "file_size": doc.len().to_string()}}),
        )
        .await;
    let (status, v) = get(&bob, &doc_id).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["file_data"]["file_content"], base64_encode(&doc));

    // Names belong to uploads: Carol uploading the same bytes sees her name, not Alice's.
    assert_eq!(upload(&carol, "mine.pdf", &doc).await, doc_id);
    let (_, v) = get(&carol, &doc_id).await;
    assert_eq!(v["file_data"]["file_name"], "mine.pdf", "{v}");
    let (_, v) = get(&alice, &doc_id).await;
    assert_eq!(v["file_data"]["file_name"], "secret.pdf", "{v}");

    // A profile picture is readable by anyone signed in.
    let avatar_id = upload(&alice, "me.png", b"\x89PNG alice").await;
    alice
        .ok("user/set_avatar", json!({"avatar_id": avatar_id}))
        .await;
    let dave = sys.user("dave", "d1").await;
    let (status, v) = get(&dave, &avatar_id).await;
    assert_eq!(status, 200, "an avatar: {v}");

    // No laundering: a known hash one may not read cannot become an avatar or a message.
    let private = upload(&dave, "diary.txt", b"dear diary").await;
    let (status, v) = carol
        .call("user/set_avatar", json!({"avatar_id": private}))
        .await;
    assert_eq!(
        status, 404,
        "set_avatar took a file the caller cannot read: {v}"
    );
    let (status, v) = bob
        .call(
            "message_transmit/new_message",
            json!({"chat_session_id": session, "client_msg_id": "f2",
                   "message": {"message_type": "MESSAGE_TYPE_IMAGE", "file_id": private}}),
        )
        .await;
    assert_eq!(
        status, 404,
        "new_message took a file the sender cannot read: {v}"
    );
    let (status, v) = get(&carol, &private).await;
    assert_eq!(status, 404, "{v}");

    // One entry per distinct id.
    let many = alice
        .ok(
            "file/get_multi_file",
            json!({"file_id_list": vec![doc_id.clone(); 20]}),
        )
        .await;
    assert_eq!(
        many["file_data"].as_array().map(Vec::len),
        Some(1),
        "{many}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_file_reply_over_the_message_limit_is_refused_before_reading() {
    let sys = ImSystem::start(|b| {
        b.max_message = 1 << 20;
        b.max_file_size = 600 << 10;
    })
    .await;
    let alice = sys.user("alice", "a1").await;
    let a = upload(&alice, "a.bin", &vec![1u8; 600 << 10]).await;
    let b = upload(&alice, "b.bin", &vec![2u8; 600 << 10]).await;
    let (status, v) = alice
        .call("file/get_multi_file", json!({"file_id_list": [a, b]}))
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (429, Some("RESOURCE_EXHAUSTED")),
        "{v}"
    );
    assert!(text(&v, "message").contains("fewer"), "{v}");
    alice
        .ok("file/get_multi_file", json!({"file_id_list": [a]}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_per_user_quota_are_refused_and_store_nothing() {
    let sys = ImSystem::start(|b| b.max_storage_per_user = 1 << 20).await;
    let alice = sys.user("alice", "a1").await;
    let bob = sys.user("bob", "b1").await;
    let big = vec![7u8; 700 << 10];
    upload(&alice, "a.bin", &big).await;
    // The same bytes again (another name) count once.
    upload(&alice, "again.bin", &big).await;
    let files_before = sys.stored_files();
    let (status, v) = alice
        .call(
            "file/put_single_file",
            json!({"file_data": {"file_name": "b.bin",
                                 "file_content": base64_encode(&vec![8u8; 400 << 10])}}),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (429, Some("RESOURCE_EXHAUSTED")),
        "{v}"
    );
    assert!(text(&v, "message").contains("quota"), "{v}");
    assert_eq!(
        sys.stored_files(),
        files_before,
        "a refused upload left a file"
    );
    // Another user's quota is their own.
    upload(&bob, "b.bin", &vec![8u8; 400 << 10]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_friend_keeps_a_read_only_history_that_a_new_friendship_reopens() {
    let sys = ImSystem::start(|_| {}).await;
    let alice = sys.user("alice", "a1").await;
    let bob = sys.user("bob", "b1").await;
    let session = befriend(&alice, &bob).await;
    let send = |c: &ImClient, text: &str| {
        let body = json!({"chat_session_id": session,
                          "message": {"message_type": "MESSAGE_TYPE_TEXT", "text": text}});
        let http = c.http.clone();
        let (base, token) = (c.base.clone(), c.token.clone());
        async move {
            let probe = ImClient {
                base,
                http,
                token,
                user_id: String::new(),
                device_id: String::new(),
            };
            probe.call("message_transmit/new_message", body).await
        }
    };
    // No client_msg_id: the server assigns one, and two sends are two messages.
    let (status, first) = send(&alice, "one").await;
    assert_eq!(status, 200, "a send without client_msg_id: {first}");
    let (status, second) = send(&alice, "two").await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(first["message_id"], second["message_id"]);
    assert_eq!(
        (first["seq"].clone(), second["seq"].clone()),
        (json!("1"), json!("2"))
    );

    alice
        .ok("friend/remove_friend", json!({"peer_id": bob.user_id}))
        .await;
    let history = bob
        .call(
            "message_storage/get_history",
            json!({"chat_session_id": session, "after_seq": 0}),
        )
        .await;
    assert_eq!(history.0, 200, "history after removal: {}", history.1);
    assert_eq!(history.1["msg_list"].as_array().map(Vec::len), Some(2));
    for who in [&alice, &bob] {
        let (status, v) = send(who, "still there?").await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("FAILED_PRECONDITION")),
            "{v}"
        );
    }
    assert_eq!(
        befriend(&bob, &alice).await,
        session,
        "the session is reused"
    );
    let (status, v) = send(&bob, "back again").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["seq"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_nickname_takes_as_long_to_refuse_as_a_wrong_password() {
    let sys = ImSystem::start(|_| {}).await;
    sys.user("alice", "a1").await;
    let anon = sys.client();
    let timed = |nickname: &'static str| {
        let anon = &anon;
        async move {
            let mut runs = Vec::new();
            for _ in 0..7 {
                let t = Instant::now();
                let (status, _) = anon
                    .call(
                        "user/username_login",
                        json!({"nickname": nickname, "password": "not-her-password"}),
                    )
                    .await;
                runs.push(t.elapsed());
                assert_eq!(status, 401);
            }
            runs.sort();
            runs[runs.len() / 2]
        }
    };
    let wrong_password = timed("alice").await;
    let unknown = timed("nobody-here").await;
    assert!(
        unknown * 2 >= wrong_password,
        "unknown nickname answered in {unknown:?}, a wrong password in {wrong_password:?}"
    );
}
