//! Bad input to every reference service, through the gateway: each call gets a clear 4xx with a
//! message naming what to fix, and the stored data (SQLite rows and files on disk) is unchanged.

use im_tests::im::{ImClient, ImSystem};
use serde_json::{json, Value};

use crate::im_flow::base64_encode;

/// Every row of every table the services write (verification codes aside: a wrong code counts
/// an attempt by design), in a stable order.
fn snapshot(sys: &ImSystem) -> String {
    let conn = rusqlite::Connection::open(sys.data.path("im.db")).expect("open the database");
    let mut out = String::new();
    for table in [
        "users",
        "friend_events",
        "friends",
        "chat_sessions",
        "chat_members",
        "messages",
        "uploads",
    ] {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
            .unwrap();
        let columns = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let cells: Vec<String> = (0..columns)
                .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                .collect();
            out.push_str(&format!("{table}: {}\n", cells.join(" | ")));
        }
    }
    out
}

/// Starts a `put_single_file` upload that declares `len` bytes and sends the first KiB; returns
/// the status line the gateway answers with (without reading the rest, as a client would).
async fn declared_upload(sys: &ImSystem, who: &ImClient, len: usize) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut stream = tokio::net::TcpStream::connect(sys.gw.edge).await.unwrap();
    let head = format!(
        "POST /service/file/put_single_file HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         authorization: Bearer {}\r\ncontent-length: {len}\r\n\r\n{{\"file_data\":{{\"file_content\":\"",
        who.token.as_deref().unwrap()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'A'; 1024]).await.unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await.unwrap();
    line.trim_end().to_owned()
}

struct Case<'a> {
    who: &'a ImClient,
    path: &'a str,
    body: Value,
    status: u16,
    /// A fragment the error message must contain.
    says: &'a str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_to_every_service_is_a_clear_4xx_and_changes_nothing() {
    let sys = ImSystem::start(|b| b.max_file_size = 64 << 10).await;
    let alice = sys.user("alice", "a1").await;
    let bob = sys.user("bob", "b1").await;
    let carol = sys.user("carol", "c1").await;
    let anon = sys.client();

    // Alice and Bob are friends with a session and a message; Carol asked Alice, unanswered.
    let event = alice
        .ok(
            "friend/add_friend_apply",
            json!({"respondent_id": bob.user_id}),
        )
        .await["notify_event_id"]
        .clone();
    let session = bob
        .ok(
            "friend/add_friend_process",
            json!({"notify_event_id": event, "agree": true, "apply_user_id": alice.user_id}),
        )
        .await["new_session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .ok(
            "message_transmit/new_message",
            json!({"chat_session_id": session, "client_msg_id": "m1", "message": {"text": "hi"}}),
        )
        .await;
    let carol_event = carol
        .ok(
            "friend/add_friend_apply",
            json!({"respondent_id": alice.user_id}),
        )
        .await["notify_event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let file_id = alice
        .ok(
            "file/put_single_file",
            json!({"file_data": {"file_name": "a.txt", "file_content": base64_encode(b"hello")}}),
        )
        .await["file_info"]["file_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let before = snapshot(&sys);
    let files_before = sys.stored_files();
    let unknown_file = "0".repeat(64);
    let big = base64_encode(&vec![7u8; (64 << 10) + 1]);
    let text = |t: &str| json!({"chat_session_id": session, "client_msg_id": "m2", "message": {"text": t}});
    let cases = [
        // user
        Case {
            who: &anon,
            path: "user/username_register",
            body: json!({"nickname": "", "password": "password1"}),
            status: 400,
            says: "nickname is required",
        },
        Case {
            who: &anon,
            path: "user/username_register",
            body: json!({"nickname": "zed", "password": "123"}),
            status: 400,
            says: "password must be 6 to 128",
        },
        Case {
            who: &anon,
            path: "user/username_register",
            body: json!({"nickname": "alice", "password": "password1"}),
            status: 409,
            says: "is taken",
        },
        Case {
            who: &anon,
            path: "user/username_register",
            body: json!({"nickname": "zed", "password": "password1", "admin": true}),
            status: 400,
            says: "admin",
        },
        Case {
            who: &anon,
            path: "user/username_login",
            body: json!({"nickname": "alice", "password": "wrong-password"}),
            status: 401,
            says: "wrong nickname or password",
        },
        Case {
            who: &anon,
            path: "user/username_login",
            body: json!({"nickname": "nobody", "password": "password1"}),
            status: 401,
            says: "wrong nickname or password",
        },
        Case {
            who: &anon,
            path: "user/username_login",
            body: json!({"nickname": "alice", "password": "password1", "device_id": "../x"}),
            status: 400,
            says: "device_id",
        },
        Case {
            who: &anon,
            path: "user/get_phone_verify_code",
            body: json!({"phone": "12ab"}),
            status: 400,
            says: "phone must be",
        },
        Case {
            who: &anon,
            path: "user/get_user_info",
            body: json!({}),
            status: 401,
            says: "",
        },
        Case {
            who: &alice,
            path: "user/get_user_info",
            body: json!({"user_id": "nobody"}),
            status: 404,
            says: "no user",
        },
        Case {
            who: &alice,
            path: "user/set_avatar",
            body: json!({"avatar_id": "../../etc/passwd"}),
            status: 400,
            says: "avatar_id must be a file id",
        },
        Case {
            who: &alice,
            path: "user/set_nickname",
            body: json!({"nickname": "bob"}),
            status: 409,
            says: "taken",
        },
        Case {
            who: &alice,
            path: "user/set_nickname",
            body: json!({"nickname": " "}),
            status: 400,
            says: "nickname is required",
        },
        Case {
            who: &alice,
            path: "user/set_description",
            body: json!({"description": "x".repeat(501)}),
            status: 400,
            says: "longer than 500",
        },
        Case {
            who: &alice,
            path: "user/set_phone",
            body: json!({"phone": "13800138000", "verify_code_id": "nope", "verify_code": "1"}),
            status: 400,
            says: "request a code first",
        },
        // friend
        Case {
            who: &alice,
            path: "friend/add_friend_apply",
            body: json!({}),
            status: 400,
            says: "respondent_id is required",
        },
        Case {
            who: &alice,
            path: "friend/add_friend_apply",
            body: json!({"respondent_id": "nobody"}),
            status: 404,
            says: "no user",
        },
        Case {
            who: &alice,
            path: "friend/add_friend_apply",
            body: json!({"respondent_id": alice.user_id}),
            status: 400,
            says: "is you",
        },
        Case {
            who: &alice,
            path: "friend/add_friend_apply",
            body: json!({"respondent_id": bob.user_id}),
            status: 409,
            says: "already friends",
        },
        Case {
            who: &carol,
            path: "friend/add_friend_apply",
            body: json!({"respondent_id": alice.user_id}),
            status: 409,
            says: "already waiting",
        },
        Case {
            who: &alice,
            path: "friend/add_friend_process",
            body: json!({"notify_event_id": "nope", "agree": true, "apply_user_id": carol.user_id}),
            status: 404,
            says: "no friend request",
        },
        Case {
            who: &bob,
            path: "friend/add_friend_process",
            body: json!({"notify_event_id": carol_event, "agree": true, "apply_user_id": carol.user_id}),
            status: 403,
            says: "not sent to you",
        },
        Case {
            who: &alice,
            path: "friend/add_friend_process",
            body: json!({"notify_event_id": carol_event, "agree": true, "apply_user_id": bob.user_id}),
            status: 400,
            says: "apply_user_id does not match",
        },
        Case {
            who: &bob,
            path: "friend/add_friend_process",
            body: json!({"notify_event_id": event, "agree": true, "apply_user_id": alice.user_id}),
            status: 400,
            says: "already answered",
        },
        Case {
            who: &alice,
            path: "friend/remove_friend",
            body: json!({"peer_id": carol.user_id}),
            status: 404,
            says: "not your friend",
        },
        Case {
            who: &alice,
            path: "friend/search_friend",
            body: json!({"search_key": ""}),
            status: 400,
            says: "search_key is required",
        },
        Case {
            who: &alice,
            path: "friend/create_chat_session",
            body: json!({"chat_session_name": "g", "member_id_list": [bob.user_id, carol.user_id]}),
            status: 403,
            says: "is not your friend",
        },
        Case {
            who: &alice,
            path: "friend/create_chat_session",
            body: json!({"chat_session_name": "g", "member_id_list": []}),
            status: 400,
            says: "at least one other",
        },
        Case {
            who: &alice,
            path: "friend/create_chat_session",
            body: json!({"chat_session_name": "", "member_id_list": [bob.user_id]}),
            status: 400,
            says: "chat_session_name is required",
        },
        Case {
            who: &carol,
            path: "friend/get_chat_session_member",
            body: json!({"chat_session_id": session}),
            status: 403,
            says: "not a member",
        },
        Case {
            who: &alice,
            path: "friend/get_chat_session_member",
            body: json!({"chat_session_id": "nope"}),
            status: 404,
            says: "no chat session",
        },
        // message
        Case {
            who: &carol,
            path: "message_transmit/new_message",
            body: json!({"chat_session_id": session, "client_msg_id": "c1", "message": {"text": "let me in"}}),
            status: 403,
            says: "not a member",
        },
        Case {
            who: &alice,
            path: "message_transmit/new_message",
            body: json!({"chat_session_id": "nope", "client_msg_id": "m2", "message": {"text": "x"}}),
            status: 404,
            says: "no chat session",
        },
        Case {
            who: &alice,
            path: "message_transmit/new_message",
            body: text("   "),
            status: 400,
            says: "message.text is required",
        },
        Case {
            who: &alice,
            path: "message_transmit/new_message",
            body: text(&"长".repeat(4001)),
            status: 400,
            says: "longer than 4000",
        },
        Case {
            who: &alice,
            path: "message_transmit/new_message",
            body: json!({"chat_session_id": session, "client_msg_id": "m2"}),
            status: 400,
            says: "message is required",
        },
        Case {
            who: &alice,
            path: "message_transmit/new_message",
            body: json!({"chat_session_id": session, "client_msg_id": "a b", "message": {"text": "x"}}),
            status: 400,
            says: "client_msg_id",
        },
        Case {
            who: &alice,
            path: "message_transmit/new_message",
            body: json!({"chat_session_id": session, "client_msg_id": "m2", "message": {"message_type": "MESSAGE_TYPE_IMAGE", "file_id": "../../x"}}),
            status: 400,
            says: "message.file_id",
        },
        Case {
            who: &alice,
            path: "message_transmit/new_message",
            body: json!({"chat_session_id": session, "client_msg_id": "m2", "message": {"message_type": 9, "text": "x"}}),
            status: 400,
            says: "message_type 9 is unknown",
        },
        Case {
            who: &carol,
            path: "message_storage/get_history",
            body: json!({"chat_session_id": session, "after_seq": "0"}),
            status: 403,
            says: "not a member",
        },
        Case {
            who: &alice,
            path: "message_storage/get_history",
            body: json!({"chat_session_id": session, "limit": 501}),
            status: 400,
            says: "limit 501",
        },
        Case {
            who: &alice,
            path: "message_storage/get_history",
            body: json!({"chat_session_id": session, "start_time": "5", "over_time": "1"}),
            status: 400,
            says: "start_time is after",
        },
        Case {
            who: &alice,
            path: "message_storage/get_recent",
            body: json!({"chat_session_id": session, "msg_count": 0}),
            status: 400,
            says: "msg_count",
        },
        Case {
            who: &carol,
            path: "message_storage/get_recent",
            body: json!({"chat_session_id": session, "msg_count": 5}),
            status: 403,
            says: "not a member",
        },
        Case {
            who: &alice,
            path: "message_storage/search_history",
            body: json!({"chat_session_id": session, "search_key": ""}),
            status: 400,
            says: "search_key is required",
        },
        Case {
            who: &carol,
            path: "message_storage/search_history",
            body: json!({"chat_session_id": session, "search_key": "hi"}),
            status: 403,
            says: "not a member",
        },
        // file
        Case {
            who: &alice,
            path: "file/put_single_file",
            body: json!({"file_data": {"file_name": "../../etc/passwd", "file_content": base64_encode(b"x")}}),
            status: 400,
            says: "plain name",
        },
        Case {
            who: &alice,
            path: "file/put_single_file",
            body: json!({"file_data": {"file_name": "..\\boot.ini", "file_content": base64_encode(b"x")}}),
            status: 400,
            says: "plain name",
        },
        Case {
            who: &alice,
            path: "file/put_single_file",
            body: json!({"file_data": {"file_name": "a.txt", "file_content": ""}}),
            status: 400,
            says: "file_content is empty",
        },
        Case {
            who: &alice,
            path: "file/put_single_file",
            body: json!({}),
            status: 400,
            says: "file_data is required",
        },
        Case {
            who: &alice,
            path: "file/put_single_file",
            body: json!({"file_data": {"file_name": "big.bin", "file_content": big}}),
            status: 400,
            says: "the limit is 65536 bytes",
        },
        Case {
            who: &alice,
            path: "file/put_multi_file",
            body: json!({"file_data": [
            {"file_name": "ok.txt", "file_content": base64_encode(b"fine")},
            {"file_name": "a/../../b", "file_content": base64_encode(b"x")}]}),
            status: 400,
            says: "plain name",
        },
        Case {
            who: &alice,
            path: "file/put_multi_file",
            body: json!({"file_data": []}),
            status: 400,
            says: "file_data is empty",
        },
        Case {
            who: &alice,
            path: "file/get_single_file",
            body: json!({"file_id": "../../etc/passwd"}),
            status: 400,
            says: "file id",
        },
        Case {
            who: &alice,
            path: "file/get_single_file",
            body: json!({"file_id": unknown_file}),
            status: 404,
            says: "no file",
        },
        Case {
            who: &alice,
            path: "file/get_multi_file",
            body: json!({"file_id_list": [file_id, unknown_file]}),
            status: 404,
            says: "no file",
        },
        Case {
            who: &anon,
            path: "file/get_single_file",
            body: json!({"file_id": file_id}),
            status: 401,
            says: "",
        },
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let (status, v) = c.who.call(c.path, c.body.clone()).await;
        let message = v["message"].as_str().unwrap_or_default();
        if status != c.status || !message.contains(c.says) || v["code"].as_str().is_none() {
            failures.push(format!(
                "{} {}: got {status} {v}, want {} saying {:?}",
                c.path, c.body, c.status, c.says
            ));
        }
    }
    // Bodies the gateway refuses before any backend: malformed JSON, and over the route's max_body.
    let (status, v) = alice
        .call_raw(
            "message_transmit/new_message",
            b"{\"chat_session_id\":".to_vec(),
        )
        .await;
    if status != 400 {
        failures.push(format!("malformed JSON: got {status} {v}"));
    }
    let status = declared_upload(&sys, &alice, 13 << 20).await;
    if !status.starts_with("HTTP/1.1 413") {
        failures.push(format!("13 MiB upload: got `{status}`, want 413"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    assert_eq!(snapshot(&sys), before, "a refused call changed stored data");
    assert_eq!(
        sys.stored_files(),
        files_before,
        "a refused upload left a file"
    );
}
