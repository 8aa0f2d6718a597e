//! The whole IM system for end-to-end tests: the reference backends in this process (SQLite in a
//! scratch dir, verification codes captured instead of logged) behind a real gateway serving the
//! shipped `routes.yaml`, and a small JSON client that talks to it like an app does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use im_backends::sms::SmsSender;
use im_backends::BackendConfig;
use im_gateway::config::GatewayConfig;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::{ScratchDir, TestGateway, INTERNAL_TOKEN, TEST_SECRET};

/// Verification codes "sent", newest last.
#[derive(Default)]
pub struct CapturedSms(Mutex<Vec<(String, String)>>);

impl SmsSender for CapturedSms {
    fn send_code(&self, phone: &str, code: &str) {
        self.0
            .lock()
            .unwrap()
            .push((phone.to_owned(), code.to_owned()));
    }
}

impl CapturedSms {
    pub fn last_code(&self, phone: &str) -> Option<String> {
        let sent = self.0.lock().unwrap();
        sent.iter()
            .rev()
            .find(|(p, _)| p == phone)
            .map(|(_, c)| c.clone())
    }
}

pub struct ImSystem {
    pub gw: TestGateway,
    /// Further gateway nodes (cluster mode), sharing the backends with `gw`.
    pub nodes: Vec<TestGateway>,
    pub backend: SocketAddr,
    pub sms: Arc<CapturedSms>,
    pub data: ScratchDir,
    stop: Option<oneshot::Sender<()>>,
}

/// The shipped routes file with its backend address replaced by `backend`; with `relaxed`,
/// every route limit is raised so a test's many calls from one IP are not throttled.
pub fn shipped_routes(backend: SocketAddr, relaxed: bool) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../routes.yaml");
    let text = std::fs::read_to_string(path).expect("read routes.yaml");
    let text = text.replace("127.0.0.1:50051", &backend.to_string());
    if !relaxed {
        return text;
    }
    text.lines()
        .map(|l| match l.find("rate_limit:") {
            Some(i) => format!(
                "{}rate_limit: {{ key: ip, per_second: 10000, burst: 10000 }}",
                &l[..i]
            ),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl ImSystem {
    /// Backends + gateway with relaxed limits; `tweak` adjusts the backends' config.
    pub async fn start(tweak: impl FnOnce(&mut BackendConfig)) -> Self {
        Self::start_with(true, tweak, |_| {}).await
    }

    pub async fn start_with(
        relaxed: bool,
        tweak: impl FnOnce(&mut BackendConfig),
        tweak_gateway: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let mut tweak_gateway = Some(tweak_gateway);
        Self::start_nodes(relaxed, 1, tweak, |_, c| {
            if let Some(t) = tweak_gateway.take() {
                t(c)
            }
        })
        .await
    }

    /// The backends behind `nodes` gateways of one cluster (cluster mode on the Redis at
    /// `redis_url`); the backends know every node's PushService.
    pub async fn start_cluster(redis_url: &str, nodes: usize) -> Self {
        Self::start_nodes(
            true,
            nodes,
            |_| {},
            |i, c| {
                // A drain as in production: sessions close over half a second inside a grace
                // period the node's announced leave also fits in (at 0 s the runtime is cut
                // before the leave reaches Redis).
                c.shutdown.grace_period = im_gateway::units::HumanDuration(Duration::from_secs(1));
                c.push.drain_window = im_gateway::units::HumanDuration(Duration::from_millis(500));
                c.cluster = Some(im_gateway::cluster::ClusterConfig {
                    redis_url: redis_url.to_owned(),
                    node_id: Some(format!("node-{i}")),
                    prefix: "im-test:".into(),
                    heartbeat: im_gateway::units::HumanDuration(Duration::from_millis(300)),
                    node_ttl: im_gateway::units::HumanDuration(Duration::from_millis(1500)),
                    ..Default::default()
                })
            },
        )
        .await
    }

    async fn start_nodes(
        relaxed: bool,
        nodes: usize,
        tweak: impl FnOnce(&mut BackendConfig),
        mut tweak_gateway: impl FnMut(usize, &mut GatewayConfig),
    ) -> Self {
        let data = ScratchDir::new("im");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backends");
        let backend = listener.local_addr().expect("backend address");
        let internals: Vec<SocketAddr> = (0..nodes.max(1))
            .map(|_| crate::loopback(crate::free_port()))
            .collect();
        let sms = Arc::new(CapturedSms::default());
        let mut cfg = BackendConfig::new(
            im_backends::ALL_SERVICES.map(String::from).to_vec(),
            &data.0,
        );
        cfg.jwt_secret = Some(TEST_SECRET.to_owned());
        cfg.internal_token = Some(INTERNAL_TOKEN.to_owned());
        let list: Vec<String> = internals.iter().map(SocketAddr::to_string).collect();
        cfg.push_addr = Some(list.join(","));
        cfg.sms = sms.clone();
        cfg.code_interval = Duration::from_secs(3);
        tweak(&mut cfg);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            if let Err(e) = im_backends::serve(cfg, listener, async {
                let _ = stopped.await;
            })
            .await
            {
                panic!("backends failed: {e}");
            }
        });
        let mut gateways = Vec::new();
        for (i, internal) in internals.into_iter().enumerate() {
            let gw = TestGateway::start_with(&shipped_routes(backend, relaxed), |c| {
                c.listen.internal = internal;
                tweak_gateway(i, c);
            })
            .await;
            for upstream in ["user", "friend", "message", "file"] {
                crate::wait_for(
                    "backends healthy at the gateway",
                    Duration::from_secs(20),
                    || async {
                        (gw.endpoint_health(upstream, backend).await == "healthy").then_some(())
                    },
                )
                .await;
            }
            gateways.push(gw);
        }
        let gw = gateways.remove(0);
        Self {
            gw,
            nodes: gateways,
            backend,
            sms,
            data,
            stop: Some(stop),
        }
    }

    /// A client of the gateway node `gw` (this system's `gw` or one of its `nodes`).
    pub fn client_of(&self, gw: &TestGateway) -> ImClient {
        ImClient::at(&format!("http://{}", gw.edge))
    }

    /// Registers `nickname` and logs in through `gw` on `device_id` (platform `web`).
    pub async fn user_of(&self, gw: &TestGateway, nickname: &str, device_id: &str) -> ImClient {
        let mut c = self.client_of(gw);
        c.ok(
            "user/username_register",
            json!({"nickname": nickname, "password": "password1"}),
        )
        .await;
        c.login(nickname, "password1", device_id).await;
        c
    }

    pub fn client(&self) -> ImClient {
        self.client_of(&self.gw)
    }

    /// Registers `nickname` and logs in on `device_id` (platform `web`).
    pub async fn user(&self, nickname: &str, device_id: &str) -> ImClient {
        self.user_of(&self.gw, nickname, device_id).await
    }

    /// Requests a verification code for `phone` (as typed) once the per-phone interval (3 s
    /// in tests) since the last one has passed; the code id and the code sent to `sent_to`
    /// (the normalized number).
    pub async fn next_code(&self, c: &ImClient, phone: &str, sent_to: &str) -> (String, String) {
        let id = crate::wait_for(
            "the per-phone code interval",
            Duration::from_secs(10),
            || async {
                let (status, v) = c
                    .call("user/get_phone_verify_code", json!({"phone": phone}))
                    .await;
                (status == 200).then(|| v["verify_code_id"].as_str().unwrap_or_default().to_owned())
            },
        )
        .await;
        (id, self.sms.last_code(sent_to).expect("code sent"))
    }

    /// Files stored by the file service (content-addressed blobs), temporaries included.
    pub fn stored_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out)
                } else {
                    out.push(p)
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.data.path("files"), &mut out);
        out
    }
}

impl Drop for ImSystem {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// An app's view of the HTTP API: JSON in, JSON out, the bearer token once logged in.
#[derive(Clone)]
pub struct ImClient {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
    pub user_id: String,
    pub device_id: String,
}

impl ImClient {
    /// `POST /service/<path>` with `body`; the status and the JSON answer.
    pub async fn call(&self, path: &str, body: Value) -> (u16, Value) {
        self.call_raw(path, body.to_string().into_bytes()).await
    }

    pub async fn call_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/service/{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("gateway reachable");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A client of the gateway at `base` (`http://host:port`), not signed in.
    pub fn at(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            http: reqwest::Client::new(),
            token: None,
            user_id: String::new(),
            device_id: String::new(),
        }
    }

    /// Asks `other` to be friends and `other` agrees, over HTTP only; the new one-to-one
    /// session's id.
    pub async fn befriend(&self, other: &ImClient) -> String {
        let apply = self
            .ok(
                "friend/add_friend_apply",
                json!({"respondent_id": other.user_id}),
            )
            .await;
        let done = other
            .ok(
                "friend/add_friend_process",
                json!({"notify_event_id": apply["notify_event_id"], "agree": true,
                       "apply_user_id": self.user_id}),
            )
            .await;
        done["new_session_id"]
            .as_str()
            .expect("new_session_id")
            .to_owned()
    }

    /// Like [`call`](Self::call) but the call must succeed.
    pub async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(path, body).await;
        assert_eq!(status, 200, "{path}: {v}");
        v
    }

    pub async fn login(&mut self, nickname: &str, password: &str, device_id: &str) {
        let v = self
            .ok(
                "user/username_login",
                json!({"nickname": nickname, "password": password,
                       "device_id": device_id, "platform": "web"}),
            )
            .await;
        self.token = Some(v["token"].as_str().expect("token").to_owned());
        self.user_id = v["user_id"].as_str().expect("user_id").to_owned();
        self.device_id = device_id.to_owned();
    }

    /// The WebSocket query of this client (JSON encoding).
    pub fn ws_query(&self) -> String {
        format!(
            "token={}&encoding=json&device_id={}&platform=web",
            self.token.as_deref().expect("logged in"),
            self.device_id
        )
    }
}
