//! Test harness: real gateways, real tonic backends (in-process or as child processes), real
//! sockets on loopback. Every helper waits on an observable event, never on a fixed sleep.

// A test harness: a failed unwrap is a failed test, not a crashed service.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use im_gateway::config::GatewayConfig;
use im_gateway::{Gateway, RunningGateway};
use tokio::sync::oneshot;

use crate::process::ManagedProcess;

pub mod backend_memory;
pub mod etcd_server;
pub mod im;
pub mod otlp;
pub mod process;
pub mod prometheus;
pub mod redis_server;

/// The PushService token of every test gateway.
pub const INTERNAL_TOKEN: &str = "im-tests-internal-token-0123456789";

/// The HS256 secret every test gateway trusts.
pub const TEST_SECRET: &str = "im-tests-hs256-secret-0123456789";

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An HS256 token over `claims`, signed with [`TEST_SECRET`].
pub fn hs256_token(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .expect("sign test token")
}

/// A token for `user` valid for a minute.
pub fn user_token(user: &str) -> String {
    hs256_token(
        &serde_json::json!({"sub": user, "sid": format!("sid-{user}"), "exp": unix_now() + 60}),
    )
}

/// A port for a listener a test configures (a gateway's, a child process's), given to no other
/// caller in this process. Ports come from below the kernel's ephemeral range, so no `bind` to
/// port 0 and no outgoing connection can take one between this call and the listener's bind (a
/// port bound and dropped in the ephemeral range could be handed out again at once, to another
/// test's listener or client). Each process starts at its own offset; a port something else
/// already holds is skipped.
/// Whether `addr` answers an HTTP/1.1 request and then closes (read to the end, so the server
/// is done with the connection when this returns).
pub async fn answers_http(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /_ready_probe HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.ok()?;
        Some(answer.starts_with(b"HTTP/1.1 "))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const LOW: u64 = 10_000;
    let high = ephemeral_low().max(LOW + 1_000);
    let span = high - LOW;
    let offset = u64::from(std::process::id()).wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (offset + n) % span) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port left in {LOW}..{high}");
}

/// The first port of the kernel's ephemeral range (32768 unless configured otherwise).
fn ephemeral_low() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
    }
}

/// A unique scratch directory under the system temp dir, removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "im-tests-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real gateway process (the test binary `gateway_process`, whose path integration tests get
/// as `env!("CARGO_BIN_EXE_gateway_process")`), configured in `dir` with `routes`, the test keys,
/// free loopback listeners and `tail` (more gateway.yaml: `push:`, `shutdown:`, `cluster:` …);
/// returned once its edge, admin and push listeners accept. Signal it through `child`. Its log goes to
/// `gateway.log` in `dir`.
pub struct GatewayProcess {
    pub child: ManagedProcess,
    pub edge: SocketAddr,
    pub admin: SocketAddr,
    pub push: SocketAddr,
    pub internal: SocketAddr,
}

impl GatewayProcess {
    pub async fn spawn(bin: &str, dir: &ScratchDir, routes: &str, tail: &str) -> Self {
        Self::spawn_with_env(bin, dir, routes, tail, &[]).await
    }

    /// [`spawn`](Self::spawn) with more environment variables for the process.
    pub async fn spawn_with_env(
        bin: &str,
        dir: &ScratchDir,
        routes: &str,
        tail: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let listeners = [0; 4].map(|_| loopback(free_port()));
        let [edge, admin, push, internal] = listeners;
        let mut command = Self::command(bin, dir, routes, tail, listeners);
        let child = ManagedProcess::spawn("gateway", command.envs(env.iter().copied()), bin);
        wait_for(
            "gateway process listening",
            Duration::from_secs(30),
            || async move {
                for addr in [edge, admin, push] {
                    tokio::net::TcpStream::connect(addr).await.ok()?;
                }
                Some(())
            },
        )
        .await;
        Self {
            child,
            edge,
            admin,
            push,
            internal,
        }
    }

    /// The command that runs `bin` with its files written to `dir`: `routes`, the test keys and
    /// gateway.yaml with `listeners` (edge, admin, push, internal) and `tail`; its log goes to
    /// `gateway.log`. For a start that is meant to fail; [`Self::spawn`] otherwise.
    pub fn command(
        bin: &str,
        dir: &ScratchDir,
        routes: &str,
        tail: &str,
        listeners: [SocketAddr; 4],
    ) -> Command {
        let [edge, admin, push, internal] = listeners;
        std::fs::write(dir.path("routes.yaml"), routes).unwrap();
        std::fs::write(dir.path("hs256.key"), TEST_SECRET).unwrap();
        std::fs::write(dir.path("internal.token"), INTERNAL_TOKEN).unwrap();
        std::fs::write(
            dir.path("gateway.yaml"),
            format!(
                "listen: {{edge: \"{edge}\", admin: \"{admin}\", push: \"{push}\", internal: \"{internal}\"}}\n\
                 threads: 1\nroutes: routes.yaml\n\
                 auth: {{hs256_secret_file: hs256.key}}\n{tail}"
            ),
        )
        .unwrap();
        let mut command = Command::new(bin);
        command
            .args(["run", "--config"])
            .arg(dir.path("gateway.yaml"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.path("gateway.log")).expect("gateway.log"));
        command
    }

    /// SIGTERM: the graceful drain (`child.wait_exit(..)` for its end).
    pub fn terminate(&self) {
        self.child.terminate();
    }
}

/// An echo backend served from this process, with a count of the calls it received.
pub struct EchoBackend {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
}

impl EchoBackend {
    pub async fn start() -> Self {
        Self::start_with_limit(4 << 20).await
    }

    pub async fn start_with_limit(max_message: usize) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), max_message).await
    }

    /// On `addr` (another loopback address, say, for DNS answers that differ by IP).
    pub async fn start_on(addr: SocketAddr, max_message: usize) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let calls = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel::<()>();
        let c = calls.clone();
        tokio::spawn(async move {
            let _ = im_backends::echo::serve(listener, max_message, c, async {
                let _ = stopped.await;
            })
            .await;
        });
        Self {
            addr,
            calls,
            stop: Some(stop),
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// An echo backend in its own process, so it can be SIGKILLed.
pub struct EchoProcess {
    pub addr: SocketAddr,
    child: ManagedProcess,
}

impl EchoProcess {
    /// `exe` is `env!("CARGO_BIN_EXE_echo_backend")` of the calling test.
    pub async fn start(exe: &str, addr: SocketAddr) -> Self {
        Self::start_with_args(exe, addr, &[]).await
    }

    /// With `extra` flags (`--register etcd://…`).
    pub async fn start_with_args(exe: &str, addr: SocketAddr, extra: &[&str]) -> Self {
        let mut command = Command::new(exe);
        command
            .args(["--services", "echo", "--diagnostics", "--listen"])
            .arg(addr.to_string())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        let child = ManagedProcess::spawn("echo backend", &mut command, exe);
        wait_for(
            "echo backend to listen",
            Duration::from_secs(20),
            || async move { tokio::net::TcpStream::connect(addr).await.ok().map(drop) },
        )
        .await;
        Self { addr, child }
    }

    /// SIGTERM (a graceful stop), then reap.
    pub async fn terminate(mut self) {
        self.child.terminate();
        self.child.wait_exit(Duration::from_secs(20)).await;
    }

    /// SIGKILL, then reap: once this returns the kernel has closed the process's sockets.
    pub fn kill(mut self) {
        self.child.kill();
    }
}

/// A gateway running in this process on free ports, serving `routes.yaml` from a scratch dir.
pub struct TestGateway {
    pub edge: SocketAddr,
    pub admin: SocketAddr,
    pub push: SocketAddr,
    pub internal: SocketAddr,
    pub routes_path: PathBuf,
    pub running: Option<RunningGateway>,
    /// What it was started with, for [`TestGateway::restart`].
    config: GatewayConfig,
    _dir: ScratchDir,
}

impl TestGateway {
    pub async fn start(routes_yaml: &str) -> Self {
        Self::start_with(routes_yaml, |_| {}).await
    }

    pub async fn start_with(routes_yaml: &str, tweak: impl FnOnce(&mut GatewayConfig)) -> Self {
        let dir = ScratchDir::new("gw");
        let routes_path = dir.path("routes.yaml");
        std::fs::write(&routes_path, routes_yaml).expect("write routes");
        let secret = dir.path("hs256.key");
        std::fs::write(&secret, TEST_SECRET).expect("write test secret");
        let mut cfg = GatewayConfig::default();
        cfg.auth.hs256_secret_file = Some(secret);
        let internal = dir.path("internal.token");
        std::fs::write(&internal, INTERNAL_TOKEN).expect("write internal token");
        cfg.push.internal_token_file = Some(internal);
        cfg.listen.push = loopback(free_port());
        cfg.listen.internal = loopback(free_port());
        cfg.listen.edge = loopback(free_port());
        cfg.listen.admin = loopback(free_port());
        cfg.threads = 2;
        cfg.reload.watch = false;
        cfg.reload.debounce = im_gateway::units::HumanDuration(Duration::from_millis(50));
        cfg.shutdown.grace_period = im_gateway::units::HumanDuration(Duration::ZERO);
        cfg.shutdown.graceful_timeout = im_gateway::units::HumanDuration(Duration::from_secs(1));
        cfg.push.drain_window = im_gateway::units::HumanDuration(Duration::ZERO);
        // Every test client shares 127.0.0.1 (2,000 at once in the reload test); the slowloris
        // tests set their own cap.
        cfg.http.max_unfinished_per_ip = 100_000;
        tweak(&mut cfg);
        let (edge, admin) = (cfg.listen.edge, cfg.listen.admin);
        let (push, internal) = (cfg.listen.push, cfg.listen.internal);
        let mut gw = Self {
            edge,
            admin,
            push,
            internal,
            routes_path,
            running: None,
            config: cfg,
            _dir: dir,
        };
        gw.restart().await;
        gw
    }

    /// Starts the gateway (again) with its config on its ports and waits until it is ready.
    pub async fn restart(&mut self) {
        let gateway = Gateway::build(self.config.clone(), self.routes_path.clone())
            .expect("routes are valid");
        self.running = Some(RunningGateway::start(gateway).expect("gateway starts"));
        let (edge, push, internal) = (self.edge, self.push, self.internal);
        let tls = self.config.tls.is_some();
        let client = reqwest::Client::new();
        let url = self.admin_url("/readyz");
        wait_for("gateway readiness", Duration::from_secs(20), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let ok = client.get(&url).send().await.ok()?.status().is_success();
                // The edge is asked a whole request: a bare connect would leave the gateway a
                // connection from this IP that counts as unfinished (`http.max_unfinished_per_ip`)
                // until it reads the EOF, which on a loaded machine can be after the test's own
                // connections arrive.
                let mut up = if tls {
                    tokio::net::TcpStream::connect(edge).await.is_ok()
                } else {
                    answers_http(edge).await
                };
                for addr in [push, internal] {
                    up &= tokio::net::TcpStream::connect(addr).await.is_ok();
                }
                (ok && up).then_some(())
            }
        })
        .await;
    }

    /// Stops it as SIGTERM does (sessions drain with 1001) and waits until it has exited.
    pub async fn drain(&mut self) {
        if let Some(g) = self.running.take() {
            tokio::task::spawn_blocking(move || g.drain())
                .await
                .expect("drain thread");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.edge)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn write_routes(&self, yaml: &str) {
        write_atomically(&self.routes_path, yaml);
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let body = reqwest::get(self.admin_url(path))
            .await
            .expect("admin reachable")
            .bytes()
            .await
            .expect("admin body");
        serde_json::from_slice(&body).expect("admin answers JSON")
    }

    pub async fn reload(&self) -> (u16, serde_json::Value) {
        let resp = reqwest::Client::new()
            .post(self.admin_url("/admin/reload"))
            .header("content-type", "application/json")
            .send()
            .await
            .expect("admin reachable");
        let status = resp.status().as_u16();
        let body = resp.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&body).expect("reload answers JSON"),
        )
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("admin reachable")
            .text()
            .await
            .expect("metrics text")
    }

    /// POSTs JSON to `path` with extra headers; returns status, headers and the JSON body.
    pub async fn post(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
        let mut req = reqwest::Client::new()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("gateway reachable");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The health (`pending`/`healthy`/`unhealthy`) of `addr` in `upstream`, per `/admin/routes`.
    pub async fn endpoint_health(&self, upstream: &str, addr: SocketAddr) -> String {
        let routes = self.admin_json("/admin/routes").await;
        routes["upstreams"][upstream]["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["addr"] == addr.to_string())
            .map(|e| e["health"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(g) = self.running.take() {
            // Joining blocks; keep it off the async workers.
            let _ = std::thread::spawn(move || g.stop()).join();
        }
    }
}

/// Writes through a temp file and rename, as editors and config management do.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// A routes file with one `echo` upstream over `endpoints` and the routes tests use.
pub fn echo_routes(endpoints: &[SocketAddr], upstream_extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"upstreams:
  echo:
    endpoints: [{eps}]
{upstream_extra}
routes:
  - name: echo
    http: {{ method: POST, path: /service/echo }}
    cmd: 1
    upstream: echo
    grpc: im.echo.v1.EchoService/Echo
    auth: none
    max_body: 64KiB
  - name: echo_grpc
    grpc_service: im.echo.v1.EchoService
    upstream: echo
    auth: none
"#,
        eps = eps.join(", ")
    )
}
