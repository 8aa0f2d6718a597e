//! `backend_memory`: memory of a real `im-backends` process under abuse, for
//! `scripts/backend-memory.sh` and docs/RELIABILITY.md.
//!
//! - `logins`: the user service alone; `--users` users register and log in `--concurrency` at a
//!   time; prints how much the resident memory grew.
//! - `multi-file`: the file service alone; one `--size` MiB file asked for `--copies` times in
//!   one `get_multi_file`; prints how much the peak resident memory grew.
//!
//! Flags after `--` go to `im-backends`.

// A test harness: a failed unwrap is a failed test, not a crashed service.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]

use std::process::ExitCode;

use im_tests::backend_memory::{flood, multi_file, BackendProcess};

const USAGE: &str = "usage: backend_memory logins|multi-file [--backend PATH] [--users 400] \
[--concurrency 16] [--size 8] [--copies 20] [-- extra im-backends flags]";

fn flag(args: &[String], name: &str, default: usize) -> Result<usize, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} takes a whole number")),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

async fn run(args: &[String]) -> Result<(), String> {
    let (own, extra) = match args.iter().position(|a| a == "--") {
        Some(i) => (
            &args[..i],
            args[i + 1..].iter().map(String::as_str).collect(),
        ),
        None => (args, Vec::new()),
    };
    let backend = own
        .iter()
        .position(|a| a == "--backend")
        .and_then(|i| own.get(i + 1))
        .map_or("target/release/im-backends", String::as_str);
    match own.first().map(String::as_str) {
        Some("logins") => {
            let users = flag(own, "--users", 400)?;
            let concurrency = flag(own, "--concurrency", 16)?.max(1);
            let server = BackendProcess::start(backend, "user", &extra).await;
            let client = server.client().await;
            let start = server.rss();
            let t = std::time::Instant::now();
            let outcomes = flood(&client, "flood", users, concurrency).await;
            let end = server.rss();
            let failed = outcomes.iter().filter(|o| o.is_err()).count();
            println!(
                "logins: users={users} concurrency={concurrency} failed={failed} seconds={:.1} \
                 rss_start_mib={:.1} rss_end_mib={:.1} grown_mib={:.1}",
                t.elapsed().as_secs_f64(),
                mib(start),
                mib(end),
                mib(end.saturating_sub(start))
            );
            if failed > 0 {
                return Err(format!("{failed} sign-ins failed"));
            }
        }
        Some("multi-file") => {
            let size = flag(own, "--size", 8)?;
            let copies = flag(own, "--copies", 20)?;
            let server = BackendProcess::start(backend, "file", &extra).await;
            let (before, after, code) = multi_file(&server, size << 20, copies).await;
            println!(
                "multi-file: size_mib={size} copies={copies} answer={code:?} \
                 peak_before_mib={:.1} peak_after_mib={:.1} grown_mib={:.1}",
                mib(before),
                mib(after),
                mib(after.saturating_sub(before))
            );
        }
        _ => return Err(USAGE.into()),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("backend_memory: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backend_memory: {e}");
            ExitCode::FAILURE
        }
    }
}
