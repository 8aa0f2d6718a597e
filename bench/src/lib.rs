//! The load tool's socket-free parts: latency statistics, the result document, and the
//! `/proc` readings resource figures come from.

// A test harness: a failed unwrap is a failed test, not a crashed service.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Latencies in microseconds, 1 µs to 60 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
}

/// The machine-readable result of one run.
pub fn summary(hist: &Histogram<u64>, ok: u64, errors: &[(u16, u64)], elapsed_secs: f64) -> Value {
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "ok": ok,
        "errors": errors.iter().map(|(s, n)| json!({"status": s, "count": n})).collect::<Vec<_>>(),
        "elapsed_s": elapsed_secs,
        "rps": ok as f64 / elapsed_secs.max(1e-9),
        "p50_ms": ms(0.50),
        "p90_ms": ms(0.90),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
    })
}

/// When request `i` of an open-loop run is due, from the start, at `rate` requests per second.
pub fn scheduled_offset(i: u64, rate: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(i as f64 / rate)
}

/// Resident set size in KiB from the text of `/proc/<pid>/status`.
pub fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// User + system CPU ticks from the text of `/proc/<pid>/stat` (fields 14 and 15; the command
/// name in parentheses may hold spaces, so fields are counted after its closing parenthesis).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

pub fn proc_rss_kib(pid: u32) -> Result<u64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    parse_rss_kib(&text).ok_or_else(|| format!("/proc/{pid}/status has no VmRSS"))
}

pub fn proc_cpu_secs(pid: u32) -> Result<f64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let ticks = parse_cpu_ticks(&text).ok_or_else(|| format!("/proc/{pid}/stat is unreadable"))?;
    Ok(ticks as f64 / USER_HZ)
}

/// Pages the kernel holds for every TCP socket of the machine (`mem` of `/proc/net/sockstat`).
pub fn tcp_mem_pages() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/net/sockstat")
        .map_err(|e| format!("/proc/net/sockstat: {e}"))?;
    parse_tcp_mem(&text).ok_or_else(|| "/proc/net/sockstat has no TCP mem".to_owned())
}

fn parse_tcp_mem(sockstat: &str) -> Option<u64> {
    sockstat.lines().find_map(|l| {
        let mut words = l.strip_prefix("TCP:")?.split_whitespace();
        words.by_ref().find(|w| *w == "mem")?;
        words.next()?.parse().ok()
    })
}

/// RSS growth per connection, in bytes.
pub fn per_conn_bytes(before_kib: u64, after_kib: u64, conns: usize) -> f64 {
    after_kib.saturating_sub(before_kib) as f64 * 1024.0 / conns.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_memory_is_read_from_sockstat() {
        let sockstat =
            "sockets: used 190\nTCP: inuse 5 orphan 0 tw 2 alloc 8 mem 37\nUDP: inuse 1 mem 2\n";
        assert_eq!(parse_tcp_mem(sockstat), Some(37));
        assert_eq!(parse_tcp_mem("UDP: inuse 1 mem 2\n"), None);
    }

    #[test]
    fn open_loop_schedule_is_evenly_spaced() {
        use std::time::Duration;
        assert_eq!(scheduled_offset(0, 1000.0), Duration::ZERO);
        assert_eq!(scheduled_offset(1, 1000.0), Duration::from_millis(1));
        assert_eq!(scheduled_offset(2500, 1000.0), Duration::from_millis(2500));
        // Offsets never drift: request 1,000,000 at 50,000/s is due at exactly 20 s.
        assert_eq!(
            scheduled_offset(1_000_000, 50_000.0),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn summary_is_json_with_every_field() {
        let mut h = histogram();
        h.record(1500).unwrap();
        let v = summary(&h, 1, &[], 1.0);
        for k in [
            "ok",
            "errors",
            "elapsed_s",
            "rps",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        let back: serde_json::Value = serde_json::from_str(&v.to_string()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn proc_readings() {
        let status = "Name:\tim-gateway\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_rss_kib(status), Some(12345));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
        let stat = "4242 (im gw (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(per_conn_bytes(1000, 1100, 100), 1024.0);
        assert_eq!(per_conn_bytes(1100, 1000, 100), 0.0);
    }

    #[test]
    fn percentiles_and_rate() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let v = summary(&h, 1000, &[(429, 3)], 2.0);
        assert_eq!(v["rps"], 500.0);
        assert!((v["p50_ms"].as_f64().unwrap() - 5.0).abs() < 0.01);
        assert!((v["p99_ms"].as_f64().unwrap() - 9.9).abs() < 0.02);
        assert_eq!(v["errors"][0]["count"], 3);
    }
}

/// A gRPC length-prefixed message: uncompressed flag, big-endian length, the message.
pub fn grpc_frame(message: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// `grpc-status` of a header or trailer map, if present and numeric.
pub fn grpc_status(map: &http::HeaderMap) -> Option<u16> {
    map.get("grpc-status")?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod grpc_tests {
    use super::*;

    #[test]
    fn frames_and_reads_status() {
        assert_eq!(&grpc_frame(b"ab")[..], &[0, 0, 0, 0, 2, b'a', b'b']);
        let mut m = http::HeaderMap::new();
        assert_eq!(grpc_status(&m), None);
        m.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(grpc_status(&m), Some(14));
    }
}

/// A tiny progress line on stderr (stdout carries the JSON result).
pub struct Progress {
    total: u64,
    what: &'static str,
    last: std::sync::Mutex<std::time::Instant>,
}

pub fn progress(total: u64, what: &'static str) -> Progress {
    Progress {
        total,
        what,
        last: std::sync::Mutex::new(std::time::Instant::now()),
    }
}

impl Progress {
    pub fn set(&self, n: u64) {
        let mut last = self.last.lock().expect("progress");
        if last.elapsed() > std::time::Duration::from_millis(500) || n == self.total {
            eprint!("\r{} {n}/{}", self.what, self.total);
            *last = std::time::Instant::now();
        }
    }
    pub fn done(&self) {
        eprintln!("\r{} {}/{} done", self.what, self.total, self.total);
    }
}
