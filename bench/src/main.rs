//! `im-bench http`: a closed-loop HTTP/2 (h2c) load generator for the bridge that spreads
//! requests over many users (distinct signed tokens) and client IPs (`X-Forwarded-For`), which
//! h2load cannot. Prints one JSON result line.

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
}

const USAGE: &str =
    "usage: im-bench ws-conns|ws-push --help, or im-bench http --url URL [--conns 8] [--streams 16] [--requests 100000] \
[--users 0] [--ips 0] [--alg HS256|RS256|ES256|EdDSA --key FILE] [--body FILE] [--content-type T]";

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    if it.next().as_deref() != Some("http") {
        return Err(USAGE.into());
    }
    let mut a = Args {
        url: http::Uri::from_static("http://127.0.0.1:8080/service/echo"),
        conns: 8,
        streams: 16,
        requests: 100_000,
        users: 0,
        ips: 0,
        alg: None,
        key: None,
        body: Bytes::from_static(b"{}"),
        content_type: "application/json".into(),
    };
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: `{v}` is not a number"))
        };
        match flag.as_str() {
            "--url" => a.url = v.parse().map_err(|e| format!("--url: {e}"))?,
            "--conns" => a.conns = num(&v)? as usize,
            "--streams" => a.streams = num(&v)? as usize,
            "--requests" => a.requests = num(&v)?,
            "--users" => a.users = num(&v)? as usize,
            "--ips" => a.ips = num(&v)? as usize,
            "--alg" => a.alg = Some(v.parse().map_err(|_| format!("--alg: unknown `{v}`"))?),
            "--key" => a.key = Some(v),
            "--body" => {
                a.body = std::fs::read(&v)
                    .map_err(|e| format!("--body {v}: {e}"))?
                    .into()
            }
            "--content-type" => a.content_type = v,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    Ok(a)
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
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 3600;
    (0..a.users.max(1))
        .map(|u| {
            let claims = serde_json::json!({"sub": format!("bench-user-{u}"), "sid": format!("bench-sid-{u}"), "exp": exp});
            encode(&Header::new(alg), &claims, &key).map_err(|e| e.to_string())
        })
        .collect()
}

mod ws;

/// `ws-conns` / `ws-push` arguments.
#[derive(clap::Parser)]
struct WsCli {
    #[command(flatten)]
    args: ws::WsArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let sub = std::env::args().nth(1).unwrap_or_default();
    if sub == "ws-conns" || sub == "ws-push" {
        use clap::Parser;
        let cli = WsCli::parse_from(std::env::args().skip(1));
        let result = if sub == "ws-conns" {
            ws::conns(cli.args).await
        } else {
            ws::push(cli.args).await
        };
        match result {
            Ok(v) => println!("{v}"),
            Err(e) => {
                eprintln!("im-bench {sub}: {e}");
                std::process::exit(1);
            }
        }
        // Connection tasks are still running; leave without waiting for them.
        std::process::exit(0);
    }
    http_main().await;
}

async fn http_main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let tokens = match tokens(&args) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let authority = args
        .url
        .authority()
        .expect("--url has host:port")
        .to_string();
    let args = Arc::new(args);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
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
        for _ in 0..args.streams {
            let (mut sender, args, tokens, next) =
                (sender.clone(), args.clone(), tokens.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut hist = im_bench::histogram();
                let mut errors: Vec<(u16, u64)> = Vec::new();
                let mut ok = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= args.requests {
                        break;
                    }
                    let mut req = http::Request::post(args.url.clone())
                        .header("content-type", args.content_type.as_str());
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
                    let req = req
                        .body(Full::new(args.body.clone()))
                        .expect("valid request");
                    let t = Instant::now();
                    let status = match sender.send_request(req).await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let _ = resp.into_body().collect().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    if status == 200 {
                        ok += 1;
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    } else if let Some(e) = errors.iter_mut().find(|(s, _)| *s == status) {
                        e.1 += 1;
                    } else {
                        errors.push((status, 1));
                    }
                }
                (hist, ok, errors)
            }));
        }
    }
    let mut hist = im_bench::histogram();
    let mut ok = 0;
    let mut errors: Vec<(u16, u64)> = Vec::new();
    for w in workers {
        let (h, o, e) = w.await.expect("worker");
        hist.add(h).expect("same bounds");
        ok += o;
        for (s, n) in e {
            match errors.iter_mut().find(|(x, _)| *x == s) {
                Some(x) => x.1 += n,
                None => errors.push((s, n)),
            }
        }
    }
    let elapsed = started
        .elapsed()
        .max(Duration::from_micros(1))
        .as_secs_f64();
    println!("{}", im_bench::summary(&hist, ok, &errors, elapsed));
}
