//! `im-bench http`: an HTTP/2 (h2c) load generator for the bridge, closed loop or open loop
//! (`--rate`), that spreads requests over many users (distinct signed tokens) and client IPs
//! (`X-Forwarded-For`), which h2load cannot. Prints one JSON result line.
//! `im-bench grpc`: the same for unary gRPC (`--url http://host:port/pkg.Service/Method`, `--body`
//! the raw request message): framed, `te: trailers`, and a call counts as OK only when its
//! `grpc-status` is 0; failures are reported with `status` = 1000 + the gRPC code.
//! `im-bench ws-conns` / `ws-push` / `ws-storm`: see [`ws`]. `im-bench --help` lists the
//! flags; a flag it does not know stops it with a usage error.

// A test harness: a failed unwrap is a failed test, not a crashed service.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

struct Args {
    url: http::Uri,
    conns: usize,
    streams: usize,
    requests: u64,
    users: usize,
    ips: usize,
    alg: Option<Algorithm>,
    key: Option<String>,
    body: Bytes,
    content_type: String,
    /// Open loop: requests per second (0: closed loop).
    rate: f64,
    /// `grpc` mode: `body` is a framed message and success is `grpc-status: 0`.
    grpc: bool,
    /// Requests answered so far (for the progress line).
    completed: AtomicU64,
    /// `exp` of the signed tokens (Unix seconds; 0: an hour from now). Runs that share it send
    /// the same tokens, so a gateway's token cache stays warm from one run to the next.
    exp: u64,
}

/// `im-bench http` / `im-bench grpc` arguments.
#[derive(clap::Args)]
struct LoadArgs {
    /// The URL every request goes to (`grpc`: http://host:port/pkg.Service/Method).
    #[arg(long, default_value = "http://127.0.0.1:8080/service/echo")]
    url: http::Uri,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Concurrent streams per connection (closed loop).
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Distinct users, each with its own signed token (0: one token).
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Distinct client IPs sent as X-Forwarded-For (0: none).
    #[arg(long, default_value_t = 0)]
    ips: usize,
    /// Signing algorithm of the tokens: HS256, RS256, ES256 or EdDSA (with --key).
    #[arg(long, requires = "key")]
    alg: Option<Algorithm>,
    /// The signing key: an HS256 secret file or a PEM private key.
    #[arg(long, requires = "alg")]
    key: Option<String>,
    /// A file whose bytes are the request body (`grpc`: the raw request message).
    #[arg(long)]
    body: Option<std::path::PathBuf>,
    #[arg(long, default_value = "application/json")]
    content_type: String,
    /// Open loop: this many requests per second (0: closed loop).
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    rate: f64,
    /// `exp` of the signed tokens, Unix seconds (0: an hour from now). Runs that share it send
    /// the same tokens, so a gateway's token cache stays warm from one run to the next.
    #[arg(long, default_value_t = 0)]
    exp: u64,
}

fn rate(v: &str) -> Result<f64, String> {
    v.parse()
        .ok()
        .filter(|r: &f64| r.is_finite() && *r >= 0.0)
        .ok_or_else(|| format!("`{v}` is not a rate (requests per second, 0 or more)"))
}

impl LoadArgs {
    fn into_args(self, grpc: bool) -> Result<Args, String> {
        let body = match &self.body {
            Some(path) => std::fs::read(path)
                .map_err(|e| format!("--body {}: {e}", path.display()))?
                .into(),
            None => Bytes::from_static(b"{}"),
        };
        let (body, content_type) = if grpc {
            (im_bench::grpc_frame(&body), "application/grpc".into())
        } else {
            (body, self.content_type)
        };
        Ok(Args {
            url: self.url,
            conns: self.conns,
            streams: self.streams,
            requests: self.requests,
            users: self.users,
            ips: self.ips,
            alg: self.alg,
            key: self.key,
            body,
            content_type,
            rate: self.rate,
            grpc,
            completed: AtomicU64::new(0),
            exp: self.exp,
        })
    }
}

/// One signed token per user.
fn tokens(a: &Args) -> Result<Vec<String>, String> {
    let (Some(alg), Some(path)) = (a.alg, &a.key) else {
        return Ok(Vec::new());
    };
    let raw = std::fs::read(path).map_err(|e| format!("--key {path}: {e}"))?;
    let key = match alg {
        Algorithm::HS256 => Ok(EncodingKey::from_secret(
            String::from_utf8_lossy(&raw).trim().as_bytes(),
        )),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&raw),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&raw),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&raw),
        other => return Err(format!("--alg {other:?} is not supported")),
    }
    .map_err(|e| format!("--key {path}: {e}"))?;
    let exp = match a.exp {
        0 => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_secs()
                + 3600
        }
        fixed => fixed,
    };
    (0..a.users.max(1))
        .map(|u| {
            let claims = serde_json::json!({"sub": format!("bench-user-{u}"), "sid": format!("bench-sid-{u}"), "exp": exp});
            encode(&Header::new(alg), &claims, &key).map_err(|e| e.to_string())
        })
        .collect()
}

mod ws;

/// Load generators for the gateway and its baselines; each prints one JSON result line.
#[derive(clap::Parser)]
#[command(name = "im-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// HTTP/2 (h2c) requests on the bridge, closed or open loop.
    Http(LoadArgs),
    /// Unary gRPC calls; a call is OK only with grpc-status 0 (failures: 1000 + the code).
    Grpc(LoadArgs),
    /// Idle WebSocket sessions: bytes per connection.
    WsConns(ws::WsArgs),
    /// Pushes per second to open sessions.
    WsPush(ws::WsArgs),
    /// Connect/disconnect storms.
    WsStorm(ws::WsArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    use clap::Parser;
    let (name, result) = match Cli::parse().command {
        Command::Http(a) => ("http", http_main(a, false).await),
        Command::Grpc(a) => ("grpc", http_main(a, true).await),
        Command::WsConns(a) => ("ws-conns", ws::conns(a).await),
        Command::WsPush(a) => ("ws-push", ws::push(a).await),
        Command::WsStorm(a) => ("ws-storm", ws::storm(a).await),
    };
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("im-bench {name}: {e}");
            std::process::exit(1);
        }
    }
    // Connection tasks are still running; leave without waiting for them.
    std::process::exit(0);
}

async fn http_main(load: LoadArgs, grpc: bool) -> Result<serde_json::Value, String> {
    let args = load.into_args(grpc)?;
    let tokens = Arc::new(tokens(&args)?);
    let authority = args
        .url
        .authority()
        .ok_or("--url needs host:port")?
        .to_string();
    let mut senders = Vec::new();
    for _ in 0..args.conns {
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .expect("connect");
        tcp.set_nodelay(true).ok();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake");
        tokio::spawn(conn);
        senders.push(sender);
    }
    let args = Arc::new(args);
    let ticker = {
        let args = args.clone();
        tokio::spawn(async move {
            let bar = im_bench::progress(args.requests, "requests");
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                bar.set(args.completed.load(Ordering::Relaxed));
            }
        })
    };
    let tally = if args.rate > 0.0 {
        open_loop(&args, &tokens, &senders).await
    } else {
        closed_loop(&args, &tokens, &senders).await
    };
    ticker.abort();
    im_bench::progress(args.requests, "requests").done();
    Ok(im_bench::summary(
        &tally.hist,
        tally.ok,
        &tally.errors,
        tally.elapsed,
    ))
}

/// What one run (or one worker) counted.
struct Tally {
    hist: hdrhistogram::Histogram<u64>,
    ok: u64,
    errors: Vec<(u16, u64)>,
    elapsed: f64,
}

impl Tally {
    fn new() -> Self {
        Self {
            hist: im_bench::histogram(),
            ok: 0,
            errors: Vec::new(),
            elapsed: 0.0,
        }
    }

    /// Status 0: transport error; 1: not sent (open loop over its in-flight cap).
    fn record(&mut self, status: u16, latency: Duration) {
        if status == 200 {
            self.ok += 1;
            let _ = self.hist.record(latency.as_micros().max(1) as u64);
        } else {
            self.error(status, 1);
        }
    }

    fn error(&mut self, status: u16, n: u64) {
        match self.errors.iter_mut().find(|(s, _)| *s == status) {
            Some(e) => e.1 += n,
            None => self.errors.push((status, n)),
        }
    }

    fn merge(&mut self, other: Tally) {
        self.hist.add(other.hist).expect("same bounds");
        self.ok += other.ok;
        for (s, n) in other.errors {
            self.error(s, n);
        }
    }
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// Request `i`: its user's token and its client IP.
fn request(args: &Args, tokens: &[String], i: u64) -> http::Request<Full<Bytes>> {
    let mut req =
        http::Request::post(args.url.clone()).header("content-type", args.content_type.as_str());
    if args.grpc {
        req = req.header("te", "trailers");
    }
    if !tokens.is_empty() {
        req = req.header(
            "authorization",
            format!("Bearer {}", tokens[i as usize % tokens.len()]),
        );
    }
    if args.ips > 0 {
        let ip = i as usize % args.ips;
        req = req.header(
            "x-forwarded-for",
            format!("10.{}.{}.{}", ip >> 16 & 255, ip >> 8 & 255, ip & 255),
        );
    }
    req.body(Full::new(args.body.clone()))
        .expect("valid request")
}

/// The HTTP status, or for gRPC 200 when `grpc-status` is 0 and 1000 + the code otherwise.
async fn send(sender: &mut Sender, req: http::Request<Full<Bytes>>) -> u16 {
    let grpc = req.headers().get("te").is_some();
    match sender.send_request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            // Trailers-only answers carry grpc-status in the headers.
            let in_headers = im_bench::grpc_status(resp.headers());
            let body = resp.into_body().collect().await;
            if !grpc || status != 200 {
                return status;
            }
            let code = in_headers.or_else(|| {
                body.ok()
                    .and_then(|b| b.trailers().and_then(im_bench::grpc_status))
            });
            match code {
                Some(0) => 200,
                Some(c) => 1000 + c,
                None => 1000 + 2, // no status at all: UNKNOWN
            }
        }
        Err(_) => 0,
    }
}

/// `conns` x `streams` workers, each sending its next request when the last one is answered.
async fn closed_loop(args: &Arc<Args>, tokens: &Arc<Vec<String>>, senders: &[Sender]) -> Tally {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for sender in senders {
        for _ in 0..args.streams {
            let (mut sender, args, tokens, next) =
                (sender.clone(), args.clone(), tokens.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut tally = Tally::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= args.requests {
                        break;
                    }
                    let t = Instant::now();
                    let status = send(&mut sender, request(&args, &tokens, i)).await;
                    tally.record(status, t.elapsed());
                    args.completed.fetch_add(1, Ordering::Relaxed);
                }
                tally
            }));
        }
    }
    let mut total = Tally::new();
    for w in workers {
        total.merge(w.await.expect("worker"));
    }
    total.elapsed = started
        .elapsed()
        .max(Duration::from_micros(1))
        .as_secs_f64();
    total
}

/// Waits for `at` more precisely than the timer wheel's 1 ms: sleep most of the way, then yield
/// until due (the load tool has a core of its own), so latency counted from the schedule does not
/// include timer slack.
async fn wait_until(at: tokio::time::Instant) {
    let slack = Duration::from_millis(2);
    if at.saturating_duration_since(tokio::time::Instant::now()) > slack {
        tokio::time::sleep_until(at - slack).await;
    }
    while tokio::time::Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

/// Requests at a fixed arrival rate whatever the answers, latency counted from each request's
/// scheduled time (so a stall shows as latency, not as fewer requests); at most `conns` x
/// `streams` in flight, beyond which a request is counted as not sent (status 1).
async fn open_loop(args: &Arc<Args>, tokens: &Arc<Vec<String>>, senders: &[Sender]) -> Tally {
    let cap = (args.conns * args.streams).max(1);
    let inflight = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(std::sync::Mutex::new(Tally::new()));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.requests {
        let at = start + im_bench::scheduled_offset(i, args.rate);
        wait_until(at).await;
        if inflight.load(Ordering::Relaxed) as usize >= cap {
            tally.lock().expect("tally").error(1, 1);
            continue;
        }
        inflight.fetch_add(1, Ordering::Relaxed);
        let mut sender = senders[i as usize % senders.len()].clone();
        let req = request(args, tokens, i);
        let (inflight, tally, args) = (inflight.clone(), tally.clone(), args.clone());
        tasks.push(tokio::spawn(async move {
            let status = send(&mut sender, req).await;
            tally.lock().expect("tally").record(status, at.elapsed());
            inflight.fetch_sub(1, Ordering::Relaxed);
            args.completed.fetch_add(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut total = std::mem::replace(&mut *tally.lock().expect("tally"), Tally::new());
    total.elapsed = start.elapsed().as_secs_f64();
    total
}
