//! Hot reload: broken files are rejected whole while the old table serves; a reload under load
//! drops nothing and new requests follow the new table; file edits are picked up by the watcher.

use std::time::Duration;

use futures::future::join_all;
use im_tests::{echo_routes, wait_for, write_atomically, EchoBackend, TestGateway};
use serde_json::Value;

async fn echo(gw: &TestGateway, body: &str) -> (u16, Value) {
    let (status, _, body) = gw.post("/service/echo", body, &[]).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_are_rejected_whole_and_the_old_table_keeps_serving() {
    let backend = EchoBackend::start().await;
    let good = echo_routes(&[backend.addr], "");
    let gw = TestGateway::start(&good).await;
    let version = gw.admin_json("/admin/routes").await["version"].clone();

    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for (file, needle) in [
        ("unknown_key.yaml", "colour"),
        ("undefined_upstream.yaml", "field `upstream`"),
        ("duplicate_path.yaml", "field `http.path`"),
        ("duplicate_cmd.yaml", "field `cmd`"),
        ("bad_duration.yaml", "timeout"),
        ("unknown_method.yaml", "field `grpc`"),
    ] {
        // Each fixture also changes the endpoint, so a partial apply would show.
        let text = std::fs::read_to_string(fixtures.join(file)).unwrap();
        gw.write_routes(&text);
        let (status, body) = gw.reload().await;
        assert_eq!(status, 422, "{file}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{file}: {body}"
        );
        let routes = gw.admin_json("/admin/routes").await;
        assert_eq!(
            routes["version"], version,
            "{file} changed the active table"
        );
        assert!(
            routes["last_error"].as_str().unwrap().contains(needle),
            "{file}: {routes}"
        );
        let (status, body) = echo(&gw, r#"{"text":"still here"}"#).await;
        assert_eq!(
            (status, body["served_by"].as_str()),
            (200, Some(backend.addr.to_string().as_str())),
            "{file}"
        );
    }
    assert!(gw
        .metrics()
        .await
        .contains(r#"im_gateway_route_reloads_total{result="error"} 6"#));

    // A good file clears the error.
    gw.write_routes(&good.replace("max_body: 64KiB", "max_body: 32KiB"));
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
    let routes = gw.admin_json("/admin/routes").await;
    assert_ne!(routes["version"], version);
    assert!(routes["last_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_switches_upstream() {
    let a = EchoBackend::start().await;
    let b = EchoBackend::start().await;
    let gw = TestGateway::start(&echo_routes(&[a.addr], "    timeout: 5s")).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .build()
        .unwrap();

    // ~2,000 requests in flight on the route, each held 1.5 s by the backend.
    const IN_FLIGHT: usize = 2000;
    let in_flight = join_all((0..IN_FLIGHT).map(|_| {
        let (client, url) = (client.clone(), gw.url("/service/echo"));
        tokio::spawn(async move {
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .body(r#"{"delay_ms":1500}"#)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body: Value =
                serde_json::from_slice(&resp.bytes().await.map_err(|e| e.to_string())?)
                    .unwrap_or(Value::Null);
            Ok::<_, String>((status, body))
        })
    }));
    let in_flight = tokio::spawn(in_flight);
    wait_for(
        "requests to be in flight",
        Duration::from_secs(30),
        || async { (a.calls() >= IN_FLIGHT as u64 * 9 / 10).then_some(()) },
    )
    .await;

    // Edit the route's upstream and timeouts while they are running.
    let started_on_a = a.calls();
    gw.write_routes(&echo_routes(&[b.addr], "    timeout: 4s\n    retries: 0"));
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = echo(&gw, "{}").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["served_by"],
        b.addr.to_string(),
        "new requests follow the new table"
    );

    let results = in_flight.await.unwrap();
    let mut failures = Vec::new();
    let mut finished_on_a = 0;
    for r in results {
        match r.unwrap() {
            // Requests the gateway had not yet received when the table changed go to B.
            Ok((200, body)) if body["served_by"] == a.addr.to_string() => finished_on_a += 1,
            Ok((200, body)) if body["served_by"] == b.addr.to_string() => {}
            other => failures.push(format!("{other:?}")),
        }
    }
    assert!(
        finished_on_a >= started_on_a,
        "requests running on A when the table changed finish there: {finished_on_a} < {started_on_a}"
    );
    assert!(
        failures.is_empty(),
        "{} of {IN_FLIGHT} failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_watcher_reloads_on_save() {
    let a = EchoBackend::start().await;
    let b = EchoBackend::start().await;
    let gw =
        TestGateway::start_with(&echo_routes(&[a.addr], ""), |cfg| cfg.reload.watch = true).await;
    let before = gw.admin_json("/admin/routes").await["version"].clone();
    write_atomically(&gw.routes_path, &echo_routes(&[b.addr], ""));
    wait_for(
        "the watcher to load the new file",
        Duration::from_secs(10),
        || async {
            let v = gw.admin_json("/admin/routes").await["version"].clone();
            (v != before).then_some(())
        },
    )
    .await;
    let (_, body) = echo(&gw, "{}").await;
    assert_eq!(body["served_by"], b.addr.to_string());
}
