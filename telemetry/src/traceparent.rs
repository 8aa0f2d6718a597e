//! W3C trace context (`traceparent`) in and out of spans.
//!
//! A caller's `traceparent` (an HTTP header, a frame's field, gRPC metadata) becomes the parent
//! of the span that serves it; the current span's context goes out as the `traceparent` of the
//! next hop. With trace export off there is no span context: callers then pass the caller's
//! value on unchanged, as before.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
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

/// Where the propagator writes the outgoing value.
#[derive(Default)]
struct Out(Option<String>);

impl Injector for Out {
    fn set(&mut self, key: &str, value: String) {
        if key == HEADER {
            self.0 = Some(value);
        }
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
/// exported (the span has no OpenTelemetry context).
pub fn of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = Out::default();
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    out.0
}

/// The current span's `traceparent` ([`of`]).
pub fn current() -> Option<String> {
    of(&tracing::Span::current())
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
    }
}
