//! Spans over OTLP/gRPC, written straight from the SDK's [`SpanData`] into the protobuf bytes of
//! one `ExportTraceServiceRequest` per batch.
//!
//! Why not `opentelemetry-otlp`'s exporter: it first converts every span into the generated
//! message structs (a `String` per attribute key and value, a `Vec` per id, a hash map per batch),
//! then prost encodes them (measuring nested lengths again at every level), then frees it all.
//! That was a third of what a traced call cost the gateway (about 30,000 of 94,000 instructions,
//! `bench/telemetry_instructions.py`). Here one pass writes the wire format into one buffer; the
//! bytes are the same message (`tests::the_bytes_are_the_official_conversion_s`), sent on the
//! collector's `TraceService/Export` like any OTLP exporter's.
//!
//! [`encode`] is pure (no sockets), so it can be tested and fuzzed on its own.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use im_proto::codec::PassThroughCodec;
use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use prost::Message as _;

use crate::collector::Collector;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The exporter the batch processor calls: it encodes on the processor's thread and sends on the
/// export runtime (tonic's I/O needs one; the processor's thread has none). The channel's own
/// timeout bounds each export.
#[derive(Debug)]
pub(crate) struct SpanSender {
    runtime: tokio::runtime::Handle,
    collector: Collector,
    /// The encoded `Resource` message (its fields, without tag and length).
    resource: Vec<u8>,
    resource_schema: String,
    /// Whether the last export failed: a failure is logged when it starts and when it ends, not
    /// once per batch while a collector is down.
    failing: Arc<AtomicBool>,
}

impl SpanSender {
    /// `collector` must have been connected on `runtime`.
    pub(crate) fn new(runtime: tokio::runtime::Handle, collector: Collector) -> Self {
        Self {
            runtime,
            collector,
            resource: Vec::new(),
            resource_schema: String::new(),
            failing: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl SpanExporter for SpanSender {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let body = Bytes::from(encode(&batch, &self.resource, &self.resource_schema));
        drop(batch);
        let mut grpc = self.collector.grpc();
        let request = self.collector.request(body);
        let (endpoint, failing) = (self.collector.endpoint.clone(), self.failing.clone());
        let sent = self.runtime.spawn(async move {
            let call = async {
                grpc.ready().await.map_err(|e| e.to_string())?;
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
                let answer = grpc
                    .unary(request, path, PassThroughCodec)
                    .await
                    .map_err(|status| status.to_string())?;
                ExportTraceServiceResponse::decode(answer.into_inner())
                    .map_err(|e| format!("collector's answer: {e}"))
            };
            let result = call.await;
            report(&endpoint, &failing, &result);
            result.map(|_| ())
        });
        async move {
            match sent.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(OTelSdkError::InternalFailure(e)),
                Err(e) => Err(OTelSdkError::InternalFailure(e.to_string())),
            }
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource_fields(resource);
        self.resource_schema = resource.schema_url().unwrap_or_default().to_owned();
    }
}

/// The fields of a `Resource` message: its attributes.
fn resource_fields(resource: &Resource) -> Vec<u8> {
    let mut buf = Vec::new();
    for (key, value) in resource.iter() {
        attribute(&mut buf, 1, key.as_str(), value);
    }
    buf
}

/// Logs the first failure of a run of failures and the recovery after it; a partial success
/// (spans the collector rejected) is logged each time.
fn report(
    endpoint: &str,
    failing: &AtomicBool,
    result: &Result<ExportTraceServiceResponse, String>,
) {
    match result {
        Ok(response) => {
            if failing.swap(false, Ordering::Relaxed) {
                tracing::info!(%endpoint, "span export works again");
            }
            if let Some(partial) = response.partial_success.as_ref() {
                if partial.rejected_spans > 0 {
                    tracing::warn!(%endpoint, rejected = partial.rejected_spans, error = %partial.error_message, "the collector rejected spans");
                }
            }
        }
        Err(e) => {
            if !failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(%endpoint, error = %e, "span export failed; spans are dropped until it works again");
            }
        }
    }
}

// Field numbers of opentelemetry/proto (collector/trace/v1, trace/v1, common/v1, resource/v1).
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// An `ExportTraceServiceRequest` holding `spans`, grouped by instrumentation scope in the
/// order each scope first appears, under one resource (`resource`: the encoded fields of a
/// `Resource` message).
pub(crate) fn encode(spans: &[SpanData], resource: &[u8], resource_schema: &str) -> Vec<u8> {
    let mut scopes: Vec<&InstrumentationScope> = Vec::new();
    for span in spans {
        if !scopes.contains(&&span.instrumentation_scope) {
            scopes.push(&span.instrumentation_scope);
        }
    }
    let mut buf = Vec::with_capacity(64 + resource.len() + spans.len() * 320);
    if spans.is_empty() {
        return buf;
    }
    message(&mut buf, 1, |buf| {
        message(buf, 1, |buf| buf.extend_from_slice(resource));
        for scope in scopes {
            message(buf, 2, |buf| {
                message(buf, 1, |buf| {
                    string(buf, 1, scope.name());
                    string(buf, 2, scope.version().unwrap_or_default());
                    for kv in scope.attributes() {
                        attribute(buf, 3, kv.key.as_str(), &kv.value);
                    }
                });
                for span in spans.iter().filter(|s| s.instrumentation_scope == *scope) {
                    message(buf, 2, |buf| span_fields(buf, span));
                }
                string(buf, 3, scope.schema_url().unwrap_or_default());
            });
        }
        string(buf, 3, resource_schema);
    });
    buf
}

fn span_fields(buf: &mut Vec<u8>, span: &SpanData) {
    let cx = &span.span_context;
    bytes_field(buf, 1, &cx.trace_id().to_bytes());
    bytes_field(buf, 2, &cx.span_id().to_bytes());
    string(buf, 3, &cx.trace_state().header());
    if span.parent_span_id != SpanId::INVALID {
        bytes_field(buf, 4, &span.parent_span_id.to_bytes());
    }
    string(buf, 5, &span.name);
    let kind = match span.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    uint(buf, 6, kind);
    fixed64(buf, 7, nanos(span.start_time));
    fixed64(buf, 8, nanos(span.end_time));
    for kv in &span.attributes {
        attribute(buf, 9, kv.key.as_str(), &kv.value);
    }
    uint(buf, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        message(buf, 11, |buf| {
            fixed64(buf, 1, nanos(event.timestamp));
            string(buf, 2, &event.name);
            for kv in &event.attributes {
                attribute(buf, 3, kv.key.as_str(), &kv.value);
            }
            uint(buf, 4, u64::from(event.dropped_attributes_count));
        });
    }
    uint(buf, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        let lcx = &link.span_context;
        message(buf, 13, |buf| {
            bytes_field(buf, 1, &lcx.trace_id().to_bytes());
            bytes_field(buf, 2, &lcx.span_id().to_bytes());
            string(buf, 3, &lcx.trace_state().header());
            for kv in &link.attributes {
                attribute(buf, 4, kv.key.as_str(), &kv.value);
            }
            uint(buf, 5, u64::from(link.dropped_attributes_count));
            fixed32(buf, 6, flags(lcx.is_remote(), lcx.trace_flags().to_u8()));
        });
    }
    uint(buf, 14, u64::from(span.links.dropped_count));
    // Always present, as the reference conversion sends it (code UNSET is the default, 0).
    message(buf, 15, |buf| {
        let (code, message) = match &span.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        string(buf, 2, message);
        uint(buf, 3, code);
    });
    fixed32(
        buf,
        16,
        flags(span.parent_span_is_remote, cx.trace_flags().to_u8()),
    );
}

/// The span flags: the W3C trace flags, and whether the parent's remoteness is known (always)
/// and true.
fn flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(trace_flags) | HAS_IS_REMOTE | if parent_is_remote { IS_REMOTE } else { 0 }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A `KeyValue` in field `tag`.
fn attribute(buf: &mut Vec<u8>, tag: u32, name: &str, value: &Value) {
    // Spans carry many small attributes: their lengths are counted up front rather than moved
    // into place ([`message`] stays for arrays).
    let Some(value_len) = scalar_len(value) else {
        message(buf, tag, |buf| {
            string(buf, 1, name);
            message(buf, 2, |buf| any_value(buf, value));
        });
        return;
    };
    let name_len = if name.is_empty() {
        0
    } else {
        field_len(name.len())
    };
    key(buf, tag, LEN);
    varint(buf, (name_len + field_len(value_len)) as u64);
    string(buf, 1, name);
    key(buf, 2, LEN);
    varint(buf, value_len as u64);
    any_value(buf, value);
}

/// The encoded length of a scalar `AnyValue` (one one-byte key and its value); `None` for an
/// array or a kind this encoder does not know.
fn scalar_len(value: &Value) -> Option<usize> {
    Some(match value {
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        Value::String(s) => field_len(s.as_str().len()),
        _ => return None,
    })
}

/// The encoded length of a length-delimited field of `len` bytes with a one-byte key.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn varint_len(v: u64) -> usize {
    // 1 byte per started 7 bits; 0 takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The fields of an `AnyValue` (a oneof: one field even when it holds the default). A kind
/// this encoder does not know (the SDK's enums are open; every kind of 0.33 is known) goes as
/// its text rather than being dropped.
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => bool_value(buf, *b),
        Value::I64(i) => int_value(buf, *i),
        Value::F64(f) => double_value(buf, *f),
        Value::String(s) => string_value(buf, s.as_str()),
        // An `ArrayValue`: its `AnyValue`s in field 1.
        Value::Array(Array::Bool(v)) => message(buf, 5, |buf| {
            v.iter()
                .for_each(|b| message(buf, 1, |buf| bool_value(buf, *b)))
        }),
        Value::Array(Array::I64(v)) => message(buf, 5, |buf| {
            v.iter()
                .for_each(|i| message(buf, 1, |buf| int_value(buf, *i)))
        }),
        Value::Array(Array::F64(v)) => message(buf, 5, |buf| {
            v.iter()
                .for_each(|f| message(buf, 1, |buf| double_value(buf, *f)))
        }),
        Value::Array(Array::String(v)) => message(buf, 5, |buf| {
            v.iter()
                .for_each(|s| message(buf, 1, |buf| string_value(buf, s.as_str())))
        }),
        other => string_value(buf, &other.to_string()),
    }
}

fn string_value(buf: &mut Vec<u8>, s: &str) {
    key(buf, 1, LEN);
    varint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

fn bool_value(buf: &mut Vec<u8>, b: bool) {
    key(buf, 2, VARINT);
    varint(buf, u64::from(b));
}

fn int_value(buf: &mut Vec<u8>, i: i64) {
    key(buf, 3, VARINT);
    varint(buf, i as u64);
}

fn double_value(buf: &mut Vec<u8>, f: f64) {
    key(buf, 4, FIXED64);
    buf.put_f64_le(f);
}

/// A length-delimited field whose body `fields` writes: the body goes in place, then its length
/// is inserted before it (one move of the body; no second pass to measure it).
fn message(buf: &mut Vec<u8>, tag: u32, fields: impl FnOnce(&mut Vec<u8>)) {
    key(buf, tag, LEN);
    let start = buf.len();
    fields(buf);
    let mut len = [0u8; 10];
    let n = put_varint(&mut len, (buf.len() - start) as u64);
    buf.splice(start..start, len[..n].iter().copied());
}

/// A string field, left out when empty (proto3's default).
fn string(buf: &mut Vec<u8>, tag: u32, s: &str) {
    bytes_field(buf, tag, s.as_bytes());
}

fn bytes_field(buf: &mut Vec<u8>, tag: u32, b: &[u8]) {
    if !b.is_empty() {
        key(buf, tag, LEN);
        varint(buf, b.len() as u64);
        buf.extend_from_slice(b);
    }
}

/// An unsigned (or enum) field, left out when 0.
fn uint(buf: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        key(buf, tag, VARINT);
        varint(buf, v);
    }
}

fn fixed64(buf: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        key(buf, tag, FIXED64);
        buf.put_u64_le(v);
    }
}

fn fixed32(buf: &mut Vec<u8>, tag: u32, v: u32) {
    if v != 0 {
        key(buf, tag, FIXED32);
        buf.put_u32_le(v);
    }
}

fn key(buf: &mut Vec<u8>, tag: u32, wire_type: u32) {
    varint(buf, u64::from(tag << 3 | wire_type));
}

fn varint(buf: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        buf.push(v as u8);
        return;
    }
    let mut bytes = [0u8; 10];
    let n = put_varint(&mut bytes, v);
    buf.extend_from_slice(&bytes[..n]);
}

/// Base-128 varint of `v` into `out`; returns its length.
fn put_varint(out: &mut [u8; 10], mut v: u64) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        out[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    n + 1
}

#[cfg(test)]
#[path = "span_export_tests.rs"]
mod tests;
