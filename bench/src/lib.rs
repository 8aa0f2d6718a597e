//! The load tool's socket-free parts: latency statistics and the result document.

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

#[cfg(test)]
mod tests {
    use super::*;

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
