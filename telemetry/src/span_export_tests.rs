//! Tests of `span_export`.

use super::*;
use opentelemetry::trace::{SpanContext, TraceFlags, TraceId, TraceState};
use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
use prost::Message;
use std::time::Duration;

fn span(n: u8, scope: &InstrumentationScope, parent: SpanId) -> SpanData {
    let cx = SpanContext::new(
        TraceId::from_bytes([n; 16]),
        SpanId::from_bytes([n + 1; 8]),
        TraceFlags::SAMPLED,
        false,
        TraceState::from_key_value([("vendor", "x")]).unwrap(),
    );
    let mut events = SpanEvents::default();
    events.events.push(opentelemetry::trace::Event::new(
        "retry",
        UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_123),
        vec![KeyValue::new("attempt", 2_i64)],
        1,
    ));
    let mut links = SpanLinks::default();
    links.links.push(opentelemetry::trace::Link::new(
        SpanContext::new(
            TraceId::from_bytes([9; 16]),
            SpanId::from_bytes([8; 8]),
            TraceFlags::default(),
            true,
            TraceState::default(),
        ),
        vec![KeyValue::new("why", "hop")],
        0,
    ));
    SpanData {
        span_context: cx,
        parent_span_id: parent,
        parent_span_is_remote: n.is_multiple_of(2),
        span_kind: [SpanKind::Server, SpanKind::Client, SpanKind::Internal][n as usize % 3].clone(),
        name: format!("span {n} ☃").into(),
        start_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000 + u64::from(n)),
        end_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_500_000_000),
        attributes: vec![
            KeyValue::new("http.route", "message_send"),
            KeyValue::new("im.attempt", -3_i64),
            KeyValue::new("ratio", 0.25),
            KeyValue::new("ok", true),
            KeyValue::new("off", false),
            KeyValue::new("zero", 0_i64),
            KeyValue::new("empty", ""),
            KeyValue::new(
                "list",
                Value::Array(
                    vec!["a", "b"]
                        .into_iter()
                        .map(Into::into)
                        .collect::<Vec<opentelemetry::StringValue>>()
                        .into(),
                ),
            ),
            KeyValue::new("long", "x".repeat(300)),
        ],
        dropped_attributes_count: u32::from(n),
        events,
        links,
        status: match n % 3 {
            0 => Status::Unset,
            1 => Status::Ok,
            _ => Status::error("upstream refused"),
        },
        instrumentation_scope: scope.clone(),
    }
}

/// What a collector decodes from these bytes is exactly what opentelemetry-proto's own
/// conversion builds from the same spans (the reference this encoder replaces).
#[test]
fn the_bytes_are_the_official_conversion_s() {
    let im = InstrumentationScope::builder("im").build();
    let other = InstrumentationScope::builder("other")
        .with_version("1.2")
        .with_schema_url("https://opentelemetry.io/schemas/1.0.0")
        .with_attributes([KeyValue::new("k", "v")])
        .build();
    let spans: Vec<SpanData> = (0..6)
        .map(|n| {
            let scope = if n % 2 == 0 { &im } else { &other };
            let parent = if n == 0 {
                SpanId::INVALID
            } else {
                SpanId::from_bytes([n; 8])
            };
            span(n, scope, parent)
        })
        .collect();
    let resource = Resource::builder_empty()
        .with_schema_url(
            [
                KeyValue::new("service.name", "im-gateway"),
                KeyValue::new("service.instance.id", "node-1"),
            ],
            "https://opentelemetry.io/schemas/1.2.0",
        )
        .build();
    let (fields, schema) = (resource_fields(&resource), resource.schema_url().unwrap());

    let ours = ExportTraceServiceRequest::decode(&encode(&spans, &fields, schema)[..]).unwrap();
    let official = ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(
            spans,
            &ResourceAttributesWithSchema::from(&resource),
        ),
    };
    assert_eq!(ours, official);
    assert_eq!(ours.resource_spans[0].scope_spans.len(), 2);
    assert!(encode(&[], &fields, "").is_empty());
}

#[test]
fn varints_are_minimal() {
    let mut out = [0u8; 10];
    for (v, want) in [
        (0, 1),
        (127, 1),
        (128, 2),
        (16_383, 2),
        (16_384, 3),
        (u64::MAX, 10),
    ] {
        assert_eq!(put_varint(&mut out, v), want, "{v}");
    }
}
