//! The admin listener's protection (security issue, item 12), against real gateways: POSTs need
//! `content-type: application/json`; without an admin token every request but `/healthz` must
//! name an allowed `Host` (a web page cannot reload, revoke or read through DNS rebinding); with
//! `admin.token_file` every call but `/healthz` and `/readyz` needs the bearer token; and a
//! non-loopback admin address without a token stops start-up, `--admin` included.

use std::process::Stdio;
use std::time::Duration;

use im_tests::{echo_routes, free_port, EchoBackend, ScratchDir, TestGateway};
use tokio::io::AsyncReadExt;

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway_process");

/// `method path` on the admin listener with `headers`; the status.
async fn admin(gw: &TestGateway, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = reqwest::Client::new().request(method.parse().unwrap(), gw.admin_url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("admin reachable").status().as_u16()
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_posts_need_json_and_every_request_an_allowed_host() {
    let backend = EchoBackend::start().await;
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), |c| {
        c.admin.allowed_hosts = vec!["gw-admin.internal".into()];
    })
    .await;
    // A form post (what a web page can send cross-site without a preflight) is refused.
    let form = ("content-type", "application/x-www-form-urlencoded");
    assert_eq!(admin(&gw, "POST", "/admin/reload", &[form]).await, 415);
    assert_eq!(admin(&gw, "POST", "/admin/reload", &[]).await, 415);
    assert_eq!(admin(&gw, "POST", "/admin/reload", &[JSON]).await, 200);

    // DNS rebinding: the browser sends the attacker's host name.
    let evil = ("host", "evil.example");
    for (method, path) in [
        ("POST", "/admin/reload"),
        ("POST", "/admin/revoke"),
        ("GET", "/admin/routes"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
    ] {
        assert_eq!(
            admin(&gw, method, path, &[evil, JSON]).await,
            403,
            "{method} {path} with Host: evil.example"
        );
    }
    assert_eq!(admin(&gw, "GET", "/healthz", &[evil]).await, 200);
    for host in ["localhost", "127.0.0.1", "gw-admin.internal:9901"] {
        assert_eq!(
            admin(&gw, "GET", "/admin/routes", &[("host", host)]).await,
            200,
            "{host}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_call_but_health_needs_it() {
    let backend = EchoBackend::start().await;
    let dir = ScratchDir::new("admin-token");
    let token_file = dir.path("admin.token");
    std::fs::write(&token_file, "admin-token-0123456789abcdef\n").unwrap();
    let gw = TestGateway::start_with(&echo_routes(&[backend.addr], ""), |c| {
        c.admin.token_file = Some(token_file.clone());
    })
    .await;
    let good = ("authorization", "Bearer admin-token-0123456789abcdef");
    let bad = ("authorization", "Bearer admin-token-0123456789abcdeX");
    for path in ["/metrics", "/admin/routes"] {
        assert_eq!(admin(&gw, "GET", path, &[]).await, 401, "{path}");
        assert_eq!(admin(&gw, "GET", path, &[bad]).await, 401, "{path}");
        assert_eq!(admin(&gw, "GET", path, &[good]).await, 200, "{path}");
    }
    assert_eq!(admin(&gw, "POST", "/admin/reload", &[JSON]).await, 401);
    assert_eq!(
        admin(&gw, "POST", "/admin/reload", &[JSON, good]).await,
        200
    );
    assert_eq!(admin(&gw, "POST", "/admin/reload", &[good]).await, 415);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(admin(&gw, "GET", path, &[]).await, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_admin_address_without_a_token_stops_start_up() {
    let dir = ScratchDir::new("admin-public");
    std::fs::write(
        dir.path("routes.yaml"),
        echo_routes(&["127.0.0.1:1".parse().unwrap()], ""),
    )
    .unwrap();
    std::fs::write(dir.path("hs256.key"), im_tests::TEST_SECRET).unwrap();
    let port = free_port;
    std::fs::write(
        dir.path("gateway.yaml"),
        format!(
            "auth: {{ hs256_secret_file: hs256.key }}\n\
             listen: {{ push: 127.0.0.1:{}, internal: 127.0.0.1:{} }}\n\
             push: {{ drain_window: 0s }}\n\
             shutdown: {{ grace_period: 0s, graceful_timeout: 1s }}\n",
            port(),
            port()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(GATEWAY)
        .args(["run", "--config"])
        .arg(dir.path("gateway.yaml"))
        .arg("--routes")
        .arg(dir.path("routes.yaml"))
        .args(["--edge", &format!("127.0.0.1:{}", port())])
        .args(["--admin", &format!("0.0.0.0:{}", port())])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run im-gateway");
    // It must exit on its own; a gateway still running after 20 s has started.
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .ok()
        .map(|s| s.expect("wait for im-gateway"));
    if status.is_none() {
        let _ = child.kill().await;
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr).await;
    }
    let status = status
        .unwrap_or_else(|| panic!("started with a public admin address and no token: {stderr}"));
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("admin.token_file"), "{stderr}");
}
