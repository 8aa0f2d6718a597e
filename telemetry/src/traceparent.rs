//! W3C trace context (`traceparent`) in and out of spans.
//!
//! A caller's `traceparent` (an HTTP header, a frame's field, gRPC metadata) becomes the parent
//! of the span that serves it; the current span's context goes out as the `traceparent` of the
//! next hop. With trace export off there is no span context: callers then pass the caller's
//! value on unchanged, as before.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const HEADER: &str = "traceparent";

/// One `traceparent` value, as the propagator reads it.
struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == HEADER).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![HEADER]
    }
}

/// Makes the trace `traceparent` names the parent of `span` (a malformed value is ignored: the
/// span starts a trace of its own).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let parent = TraceContextPropagator::new().extract(&One(traceparent));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// `span`'s own context as a `traceparent`, for the next hop; `None` when traces are not
/// exported (the span has no OpenTelemetry context). Written directly (what the W3C propagator
/// writes, without its injector machinery: this runs twice per traced call).
pub fn of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    let flags = if sc.is_sampled() { "01" } else { "00" };
    Some(format!(
        "00-{}-{}-{flags}",
        hex::encode(sc.trace_id().to_bytes()),
        hex::encode(sc.span_id().to_bytes())
    ))
}

/// The trace id of `span`'s own context (32 hex digits), when traces are exported.
pub fn own_trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| hex::encode(sc.trace_id().to_bytes()))
}

/// The current span's `traceparent` ([`of`]).
pub fn current() -> Option<String> {
    of(&tracing::Span::current())
}

/// Whether a trace starting or continuing here is sampled: as the caller's `traceparent` says
/// (its sampled flag), else at `ratio`.
pub fn sampled(traceparent: Option<&str>, ratio: f64) -> bool {
    match traceparent.and_then(sampled_flag) {
        Some(flag) => flag,
        None => ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio),
    }
}

/// Whether a well-formed `traceparent` has its sampled flag set; `None` when malformed.
pub fn sampled_flag(traceparent: &str) -> Option<bool> {
    trace_id(traceparent)?;
    let flags = traceparent.split('-').nth(3)?;
    let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
    Some(flags & 1 == 1)
}

/// The trace id of a `traceparent` (32 hex digits), for logs; `None` when malformed.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_export_spans_have_no_traceparent_and_bad_values_are_ignored() {
        let span = tracing::info_span!("x");
        set_parent(&span, "garbage");
        set_parent(
            &span,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        assert_eq!(of(&span), None);
        assert_eq!(
            trace_id("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(trace_id("00-xyz-1-01"), None);
        let tp = |flags| format!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{flags}");
        assert_eq!(sampled_flag(&tp("01")), Some(true));
        assert_eq!(sampled_flag(&tp("00")), Some(false));
        assert_eq!(sampled_flag(&tp("03")), Some(true));
        assert_eq!(sampled_flag(&tp("zz")), None);
        assert_eq!(sampled_flag(&tp("")), None);
        assert_eq!(sampled_flag("00-xyz-1-01"), None);
        assert!(sampled(Some(&tp("01")), 0.0));
        assert!(!sampled(Some(&tp("00")), 1.0));
        assert!(sampled(None, 1.0) && sampled(Some("garbage"), 1.0));
        assert!(!sampled(None, 0.0));
        let kept = (0..10_000).filter(|_| sampled(None, 0.1)).count();
        assert!((700..1300).contains(&kept), "{kept} of 10,000 at 0.1");
    }
}
