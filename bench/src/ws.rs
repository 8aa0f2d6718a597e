//! `im-bench ws-conns`, `ws-push` and `ws-storm`: N authenticated WebSocket clients (spread over
//! several loopback source addresses) against the gateway's push listener or the bare baseline,
//! driven through `im.gateway.v1.PushService`. Resource figures come from `/proc/<pid>` of the
//! server under test, so the client sharing the machine does not distort them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use im_proto::im::echo::v1::{EchoReply, EchoRequest};
use im_proto::im::gateway::v1::push_service_client::PushServiceClient;
use im_proto::im::gateway::v1::{server_frame, ClientFrame, PushRequest, ServerFrame};
use prost::Message as _;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

use im_bench::progress;

#[derive(Debug, clap::Args)]
pub struct WsArgs {
    /// Push listener, e.g. ws://127.0.0.1:8081/ws
    #[arg(long)]
    pub url: String,
    /// PushService, e.g. http://127.0.0.1:7171
    #[arg(long)]
    pub push: String,
    /// The server process to measure (RSS, CPU).
    #[arg(long)]
    pub pid: u32,
    /// HS256 secret file for client tokens (none: no token, for the bare baseline).
    #[arg(long, conflicts_with = "rsa_key")]
    pub secret: Option<PathBuf>,
    /// Sign the client tokens RS256 with this PEM private key instead (what a cold check costs:
    /// each run's tokens are new to the server).
    #[arg(long)]
    pub rsa_key: Option<PathBuf>,
    /// File holding PushService's internal token.
    #[arg(long)]
    pub internal_token: Option<PathBuf>,
    #[arg(long, default_value_t = 1_000)]
    pub conns: usize,
    /// Source addresses 127.0.0.1..=127.0.0.N (ephemeral ports run out past ~28k per address).
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// Third octet of the source addresses (127.0.NET.1..=N): a fresh value per run keeps one
    /// run's TIME_WAIT ports from slowing the next run's binds.
    #[arg(long, default_value_t = 0)]
    pub source_net: u8,
    /// `cmd` of the request each connection sends once.
    #[arg(long, default_value_t = 9001)]
    pub cmd: u32,
    /// ws-push: wait this long after connecting before pushing (cluster mode: registrations
    /// reach Redis).
    #[arg(long, default_value_t = 0)]
    pub settle_ms: u64,
    /// ws-push: passes of one push per user (more passes: a longer, steadier phase (a)).
    #[arg(long, default_value_t = 1)]
    pub user_repeats: u64,
    /// ws-push: pushes to the whole group, one after another.
    #[arg(long, default_value_t = 10)]
    pub group_repeats: usize,
    /// ws-push: pushes to the whole group fired together.
    #[arg(long, default_value_t = 200)]
    pub burst: usize,
}

/// What every connection task reports into.
#[derive(Default)]
struct Stats {
    responses: AtomicU64,
    pushes: AtomicU64,
    hist: Mutex<Option<Histogram<u64>>>,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The push payload: an EchoReply carrying its send time, about 100 bytes on the wire.
fn payload() -> Vec<u8> {
    EchoReply {
        number: now_micros(),
        padding: vec![b'x'; 64],
        ..Default::default()
    }
    .encode_to_vec()
}

fn token((key, alg): &(jsonwebtoken::EncodingKey, jsonwebtoken::Algorithm), user: usize) -> String {
    // Nanoseconds in `exp`'s place would be refused; a fresh `jti` makes every run's token new.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let claims = json!({"sub": format!("u{user}"), "sid": format!("s{user}"), "dev": "d", "plt": "ios",
                        "exp": now.as_secs() + 3600, "jti": now.as_nanos().to_string()});
    jsonwebtoken::encode(&jsonwebtoken::Header::new(*alg), &claims, key).expect("the key signs")
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// TCP from `source`, then the WebSocket handshake (small client buffers: 15,000 of these share
/// one process).
async fn open(url: String, addr: SocketAddr, source: IpAddr) -> Result<Ws, String> {
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let tcp = sock.connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).ok();
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024);
    let req = url.into_client_request().map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// Where connection `i` goes: the server address, its URL (user and token) and source address.
struct Target {
    addr: SocketAddr,
    url: String,
    signer: Option<(jsonwebtoken::EncodingKey, jsonwebtoken::Algorithm)>,
    sources: u8,
    source_net: u8,
}

impl Target {
    fn new(a: &WsArgs) -> Result<Self, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let signer = match (&a.secret, &a.rsa_key) {
            (Some(p), _) => Some((
                jsonwebtoken::EncodingKey::from_secret(
                    String::from_utf8_lossy(&read(p)?).trim().as_bytes(),
                ),
                jsonwebtoken::Algorithm::HS256,
            )),
            (None, Some(p)) => Some((
                jsonwebtoken::EncodingKey::from_rsa_pem(&read(p)?)
                    .map_err(|e| format!("--rsa-key {}: {e}", p.display()))?,
                jsonwebtoken::Algorithm::RS256,
            )),
            (None, None) => None,
        };
        let uri: http::Uri = a.url.parse().map_err(|e| format!("--url: {e}"))?;
        let addr = uri
            .authority()
            .ok_or("--url needs host:port")?
            .as_str()
            .parse()
            .map_err(|e| format!("--url: {e}"))?;
        Ok(Self {
            addr,
            url: a.url.clone(),
            signer,
            sources: a.sources.max(1),
            source_net: a.source_net,
        })
    }

    fn url(&self, i: usize) -> String {
        let mut url = format!("{}?user=u{i}", self.url);
        if let Some(signer) = &self.signer {
            url.push_str(&format!("&token={}", token(signer, i)));
        }
        url
    }

    fn source(&self, i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            self.source_net,
            1 + (i % self.sources as usize) as u8,
        ))
    }
}

async fn connection(
    url: String,
    addr: SocketAddr,
    source: IpAddr,
    cmd: u32,
    permit: OwnedSemaphorePermit,
    stats: Arc<Stats>,
) -> Result<(), String> {
    let mut ws = open(url, addr, source).await?;
    drop(permit);
    let request = ClientFrame {
        seq: 1,
        cmd,
        payload: EchoRequest {
            text: "hi".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        traceparent: String::new(),
    };
    ws.send(Message::Binary(request.encode_to_vec().into()))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(msg) = ws.next().await {
        let Ok(Message::Binary(b)) = msg else {
            continue;
        };
        match ServerFrame::decode(b).ok().and_then(|f| f.body) {
            Some(server_frame::Body::Response(_)) => {
                stats.responses.fetch_add(1, Ordering::Relaxed);
            }
            Some(server_frame::Body::Push(p)) => {
                if let Ok(r) = EchoReply::decode(p.payload.as_slice()) {
                    let us = (now_micros() - r.number).max(1) as u64;
                    if let Some(h) = stats.hist.lock().expect("hist").as_mut() {
                        let _ = h.record(us);
                    }
                }
                stats.pushes.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
    }
    Err("closed by the server".into())
}

/// Opens every connection, each sending its one request; returns once all are answered.
async fn connect_all(a: &WsArgs, stats: &Arc<Stats>) -> Result<(), String> {
    let target = Target::new(a)?;
    // At most 128 handshakes in flight.
    let gate = Arc::new(Semaphore::new(128));
    let bar = progress(a.conns as u64, "connecting");
    for i in 0..a.conns {
        let (url, addr, source) = (target.url(i), target.addr, target.source(i));
        let permit = gate.clone().acquire_owned().await.expect("semaphore");
        let (stats, cmd) = (stats.clone(), a.cmd);
        tokio::spawn(async move {
            if let Err(e) = connection(url, addr, source, cmd, permit, stats).await {
                eprintln!("connection {i}: {e}");
            }
        });
        bar.set(i as u64 + 1);
    }
    wait_until(
        &stats.responses,
        a.conns as u64,
        Duration::from_secs(120),
        "responses",
    )
    .await?;
    bar.done();
    Ok(())
}

async fn wait_until(
    counter: &AtomicU64,
    target: u64,
    timeout: Duration,
    what: &str,
) -> Result<(), String> {
    let start = Instant::now();
    while counter.load(Ordering::Relaxed) < target {
        if start.elapsed() > timeout {
            return Err(format!(
                "{what}: {} of {target} after {timeout:?}",
                counter.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn push_client(a: &WsArgs) -> Result<(PushServiceClient<Channel>, Option<String>), String> {
    let client = PushServiceClient::connect(a.push.clone())
        .await
        .map_err(|e| format!("--push {}: {e}", a.push))?;
    let token = match &a.internal_token {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("--internal-token {}: {e}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    Ok((client, token))
}

fn push_request(users: Vec<String>, token: &Option<String>) -> tonic::Request<PushRequest> {
    let mut req = tonic::Request::new(PushRequest {
        user_ids: users,
        kind: "bench".into(),
        payload_type: "im.echo.v1.EchoReply".into(),
        payload: payload(),
        ..Default::default()
    });
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("token is ASCII"),
        );
    }
    req
}

/// Issues Push calls with at most `in_flight` outstanding (their replies are not needed: the
/// clients count what arrives).
async fn fire(
    client: &PushServiceClient<Channel>,
    requests: impl Iterator<Item = tonic::Request<PushRequest>>,
    in_flight: usize,
) {
    futures::stream::iter(requests)
        .map(|req| {
            let mut c = client.clone();
            async move { c.push(req).await }
        })
        .buffer_unordered(in_flight)
        .for_each(|_| async {})
        .await;
}

/// `ws-storm`: authenticated handshakes as fast as the server takes them (128 in flight), each
/// connection closed right after; handshakes per second, server CPU per handshake, latency.
pub async fn storm(a: WsArgs) -> Result<Value, String> {
    let target = Arc::new(Target::new(&a)?);
    // Tokens are signed before the clock starts, on every core (RS256 signing is slow): the
    // client's own cost is not the server's.
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = a.conns.div_ceil(workers).max(1);
    let signing: Vec<_> = (0..a.conns)
        .step_by(chunk)
        .map(|from| {
            let target = target.clone();
            let to = (from + chunk).min(a.conns);
            tokio::task::spawn_blocking(move || {
                (from..to).map(|i| target.url(i)).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut urls = Vec::with_capacity(a.conns);
    for part in signing {
        urls.extend(part.await.map_err(|e| e.to_string())?);
    }
    let gate = Arc::new(Semaphore::new(128));
    let hist = Arc::new(Mutex::new(im_bench::histogram()));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu_before = im_bench::proc_cpu_secs(a.pid)?;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(a.conns);
    for (i, url) in urls.into_iter().enumerate() {
        let permit = gate.clone().acquire_owned().await.expect("semaphore");
        let (target, hist, failed) = (target.clone(), hist.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            match open(url, target.addr, target.source(i)).await {
                Ok(mut ws) => {
                    let us = t.elapsed().as_micros().max(1) as u64;
                    let _ = hist.lock().expect("hist").record(us);
                    let _ = ws.close(None).await;
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = im_bench::proc_cpu_secs(a.pid)? - cpu_before;
    let hist = hist.lock().expect("hist");
    let ok = hist.len();
    Ok(json!({
        "handshakes": ok,
        "failed": failed.load(Ordering::Relaxed),
        "wall_s": wall,
        "handshakes_per_s": ok as f64 / wall.max(1e-9),
        "server_cpu_us_per_handshake": cpu * 1e6 / (ok.max(1) as f64),
        "p50_ms": hist.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
    }))
}

/// `ws-conns`: server RSS per connection after every connection made one request and got one push.
pub async fn conns(a: WsArgs) -> Result<Value, String> {
    let rss_before = im_bench::proc_rss_kib(a.pid)?;
    let tcp_before = im_bench::tcp_mem_pages()?;
    let stats = Arc::new(Stats::default());
    connect_all(&a, &stats).await?;
    let (mut client, token) = push_client(&a).await?;
    let users: Vec<String> = (0..a.conns).map(|i| format!("u{i}")).collect();
    for chunk in users.chunks(5_000) {
        client
            .push(push_request(chunk.to_vec(), &token))
            .await
            .map_err(|e| format!("Push: {e}"))?;
    }
    wait_until(
        &stats.pushes,
        a.conns as u64,
        Duration::from_secs(60),
        "pushes",
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = im_bench::proc_rss_kib(a.pid)?;
    let tcp_after = im_bench::tcp_mem_pages()?;
    Ok(json!({
        "conns": a.conns,
        // The kernel's TCP memory grown for these connections, both ends (client and server).
        "tcp_mem_pages": tcp_after.saturating_sub(tcp_before),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "bytes_per_conn": im_bench::per_conn_bytes(rss_before, rss_after, a.conns),
    }))
}

/// `ws-push`: (a) one push per user, (b) pushes to the whole group in turn, (c) a burst of group
/// pushes; deliveries per server CPU-second and push-to-receipt latency for each.
pub async fn push(a: WsArgs) -> Result<Value, String> {
    let stats = Arc::new(Stats::default());
    connect_all(&a, &stats).await?;
    tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
    let (client, token) = push_client(&a).await?;
    let users: Vec<String> = (0..a.conns).map(|i| format!("u{i}")).collect();
    let n = a.conns as u64;

    let phase = |name: &'static str| {
        *stats.hist.lock().expect("hist") = Some(im_bench::histogram());
        let start = (
            Instant::now(),
            im_bench::proc_cpu_secs(a.pid),
            stats.pushes.load(Ordering::Relaxed),
        );
        move |stats: &Stats| -> Result<Value, String> {
            let cpu = im_bench::proc_cpu_secs(a.pid)? - start.1?;
            let delivered = stats.pushes.load(Ordering::Relaxed) - start.2;
            let hist = stats.hist.lock().expect("hist").take().expect("phase hist");
            Ok(json!({
                "phase": name,
                "deliveries": delivered,
                "wall_s": start.0.elapsed().as_secs_f64(),
                "server_cpu_s": cpu,
                "deliveries_per_cpu_s": delivered as f64 / cpu.max(0.01),
                "p50_ms": hist.value_at_quantile(0.5) as f64 / 1000.0,
                "p99_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
            }))
        }
    };

    // (a) one push per user, 32 calls in flight.
    let done = phase("users");
    let repeats = a.user_repeats.max(1);
    let target = stats.pushes.load(Ordering::Relaxed) + n * repeats;
    let requests = (0..repeats)
        .flat_map(|_| users.iter())
        .map(|u| push_request(vec![u.clone()], &token));
    fire(&client, requests, 32).await;
    wait_until(
        &stats.pushes,
        target,
        Duration::from_secs(120),
        "users pushes",
    )
    .await?;
    let users_phase = done(&stats)?;

    // (b) the whole group, one push at a time.
    let done = phase("group");
    for _ in 0..a.group_repeats {
        let target = stats.pushes.load(Ordering::Relaxed) + n;
        client
            .clone()
            .push(push_request(users.clone(), &token))
            .await
            .map_err(|e| format!("Push: {e}"))?;
        wait_until(
            &stats.pushes,
            target,
            Duration::from_secs(60),
            "group pushes",
        )
        .await?;
    }
    let group_phase = done(&stats)?;

    // (c) a burst: every push issued at once (8 calls in flight).
    let done = phase("burst");
    let target = stats.pushes.load(Ordering::Relaxed) + n * a.burst as u64;
    // Built up front: every push of the burst carries the burst's start as its send time, so a
    // server that takes longer to drain the burst shows it as latency.
    let requests: Vec<_> = (0..a.burst)
        .map(|_| push_request(users.clone(), &token))
        .collect();
    fire(&client, requests.into_iter(), 8).await;
    wait_until(
        &stats.pushes,
        target,
        Duration::from_secs(300),
        "burst pushes",
    )
    .await?;
    let burst_phase = done(&stats)?;

    Ok(json!({
        "conns": a.conns,
        "phases": [users_phase, group_phase, burst_phase],
    }))
}
