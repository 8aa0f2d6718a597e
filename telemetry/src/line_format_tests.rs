//! Tests of `line_format`: the same events through `tracing-subscriber`'s formatter and this one
//! give the same lines, apart from the timestamp's instant and the floats' digits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

use super::*;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

/// The events every comparison writes: every kind of field, text that needs escaping, a
/// `%display` address, a message with arguments, and no message at all.
fn emit() {
    let addr: std::net::SocketAddr = "127.0.0.1:50051".parse().unwrap();
    tracing::info!(
        target: "im_gateway::access",
        transport = "http",
        route = "echo",
        status = 200u16,
        upstream = %addr,
        user_id = "al\"ice\n中",
        ok = true,
        delta = -5i64,
        "access"
    );
    tracing::warn!(error = %"boom: \\ \t", n = 3u64, "upstream {} failed", 2);
    tracing::error!(code = 7u64);
    tracing::debug!(r#type = "raw", "raw identifier");
}

/// Lines of `emit` from the library's formatter and from ours, in `json` or text.
fn both(json: bool) -> (Vec<String>, Vec<String>) {
    let (theirs, ours) = (Buffer::default(), Buffer::default());
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let reference = tracing_subscriber::fmt::layer()
        .with_writer(theirs.clone())
        .with_ansi(false);
    let reference: Boxed = if json {
        reference
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed()
    } else {
        reference.boxed()
    };
    let own: Boxed = tracing_subscriber::fmt::layer()
        .with_writer(ours.clone())
        .event_format(LineFormat { json })
        .boxed();
    let subscriber = tracing_subscriber::registry().with(vec![reference, own]);
    tracing::subscriber::with_default(subscriber, emit);
    (theirs.lines(), ours.lines())
}

const STAMP: usize = "2026-12-08T00:43:26.123456Z".len();

#[test]
fn text_lines_are_the_librarys_lines() {
    let (theirs, ours) = both(false);
    assert_eq!(theirs.len(), 4);
    assert_eq!(ours.len(), 4);
    for (t, o) in theirs.iter().zip(&ours) {
        assert_eq!(&t[STAMP..], &o[STAMP..], "\n{t}\n{o}");
        assert!(
            o.as_bytes()[STAMP - 1] == b'Z' && o.as_bytes()[10] == b'T',
            "{o}"
        );
    }
    assert!(ours[0].ends_with(r#"INFO im_gateway::access: access transport="http" route="echo" status=200 upstream=127.0.0.1:50051 user_id="al\"ice\n中" ok=true delta=-5"#), "{}", ours[0]);
}

#[test]
fn json_lines_are_the_librarys_lines() {
    let (theirs, ours) = both(true);
    assert_eq!(theirs.len(), 4);
    for (t, o) in theirs.iter().zip(&ours) {
        let mut t: serde_json::Value = serde_json::from_str(t).unwrap();
        let mut o: serde_json::Value =
            serde_json::from_str(o).unwrap_or_else(|e| panic!("{e}: {o}"));
        let stamp = o["timestamp"].as_str().unwrap().to_owned();
        assert_eq!(stamp.len(), STAMP, "{stamp}");
        t["timestamp"] = serde_json::Value::Null;
        o["timestamp"] = serde_json::Value::Null;
        assert_eq!(t, o);
    }
}

#[test]
fn timestamps_are_rfc3339_utc_with_microseconds() {
    let at = |secs: u64, micros: u32| {
        let mut s = String::new();
        let now = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros.into());
        timestamp(now, &mut s).unwrap();
        s
    };
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
    assert_eq!(at(1_700_000_000, 123_456), "2023-11-14T22:13:20.123456Z");
    assert_eq!(at(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
    // The cached second is replaced when the second changes.
    assert_eq!(at(1_700_000_001, 1), "2023-11-14T22:13:21.000001Z");
    let now = at(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        0,
    );
    assert!(now.starts_with("20"), "{now}");
}

#[test]
fn numbers_are_written_exactly() {
    let f = |v: f64, json: bool| {
        let mut s = String::new();
        write_f64(v, json, &mut s).unwrap();
        s
    };
    assert_eq!(f(1.23456, false), "1.235");
    assert_eq!(f(0.0004, false), "0.000");
    assert_eq!(f(-2.5, false), "-2.500");
    assert_eq!(f(-0.0001, false), "0.000");
    assert_eq!(f(f64::NAN, true), "null");
    assert_eq!(f(f64::INFINITY, false), "inf");
    assert_eq!(f(1e20, false), "1e20");
    let mut s = String::new();
    for v in [0, 9, 10, 200, u64::MAX] {
        s.clear();
        write_u64(v, &mut s).unwrap();
        assert_eq!(s, v.to_string());
    }
}
