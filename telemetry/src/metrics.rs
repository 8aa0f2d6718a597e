//! Metrics over OTLP from the same instruments `/metrics` renders: a process keeps one set of
//! Prometheus registries, and [`to_otlp`] turns what they gather into OTLP metrics (no second
//! bookkeeping, so the two views can never disagree).
//!
//! Names are chosen so that an OpenTelemetry Collector's Prometheus exporter gives back exactly the
//! names `/metrics` shows, and one dashboard serves both paths: `_total` is dropped from counters
//! and a `_seconds`/`_bytes` suffix becomes the unit (`s`, `By`), which the exporter appends again;
//! the two families the semantic conventions name are sent under their dotted names and attribute
//! keys (`http.server.request.duration` with `http.route`, `rpc.client.call.duration` with
//! `rpc.method`), which the exporter turns back into `http_server_request_duration_seconds` and
//! `http_route`. Every point is cumulative from the export's start.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, Sum,
};
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus::proto::{MetricFamily, MetricType};
use tokio::sync::oneshot;

/// Label -> attribute renames of one family.
type Renames = &'static [(&'static str, &'static str)];

/// The families the semantic conventions name: Prometheus name, OTLP name, renames.
const CONVENTIONS: [(&str, &str, Renames); 2] = [
    (
        "http_server_request_duration_seconds",
        "http.server.request.duration",
        &[
            ("http_route", "http.route"),
            ("http_response_status_code", "http.response.status_code"),
            ("im_transport", "im.transport"),
        ],
    ),
    (
        "rpc_client_call_duration_seconds",
        "rpc.client.call.duration",
        &[
            ("rpc_method", "rpc.method"),
            ("server_address", "server.address"),
            ("rpc_grpc_status_code", "rpc.grpc.status_code"),
        ],
    ),
];

/// Where the cumulative points start and when they were read, in Unix nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start_ns: u64,
    pub now_ns: u64,
}

/// OTLP name, unit and label renames of a Prometheus family.
fn otlp_name(prom: &str, kind: MetricType) -> (String, &'static str, Renames) {
    if let Some((_, name, attrs)) = CONVENTIONS.iter().find(|(p, _, _)| *p == prom) {
        return ((*name).to_owned(), "s", attrs);
    }
    let mut name = prom;
    if kind == MetricType::COUNTER {
        name = name.strip_suffix("_total").unwrap_or(name);
    }
    for (suffix, unit) in [("_seconds", "s"), ("_bytes", "By")] {
        if let Some(stem) = name.strip_suffix(suffix) {
            return (stem.to_owned(), unit, &[]);
        }
    }
    (name.to_owned(), "", &[])
}

fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

/// A resource attribute, e.g. `service.name`.
pub fn resource_attr(key: &str, value: &str) -> KeyValue {
    string_attr(key, value)
}

/// Every gathered family as an OTLP metric (summaries and untyped families, which the gateway
/// does not make, are left out).
pub fn to_otlp(families: &[MetricFamily], window: Window) -> Vec<Metric> {
    families
        .iter()
        .filter_map(|family| {
            let kind = family.get_field_type();
            let (name, unit, renames) = otlp_name(family.get_name(), kind);
            let attrs = |m: &prometheus::proto::Metric| -> Vec<KeyValue> {
                m.get_label()
                    .iter()
                    .map(|l| {
                        let key = renames
                            .iter()
                            .find(|(from, _)| *from == l.get_name())
                            .map_or(l.get_name(), |(_, to)| to);
                        string_attr(key, l.get_value())
                    })
                    .collect()
            };
            let number = |m: &prometheus::proto::Metric, value: f64| NumberDataPoint {
                attributes: attrs(m),
                start_time_unix_nano: window.start_ns,
                time_unix_nano: window.now_ns,
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            };
            let metrics = family.get_metric();
            let data = match kind {
                MetricType::COUNTER => Data::Sum(Sum {
                    data_points: metrics
                        .iter()
                        .map(|m| number(m, m.get_counter().get_value()))
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                MetricType::GAUGE => Data::Gauge(Gauge {
                    data_points: metrics
                        .iter()
                        .map(|m| number(m, m.get_gauge().get_value()))
                        .collect(),
                }),
                MetricType::HISTOGRAM => Data::Histogram(Histogram {
                    data_points: metrics
                        .iter()
                        .map(|m| histogram_point(m.get_histogram(), attrs(m), window))
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
                MetricType::SUMMARY | MetricType::UNTYPED => return None,
            };
            Some(Metric {
                name,
                description: family.get_help().to_owned(),
                unit: unit.to_owned(),
                data: Some(data),
                ..Default::default()
            })
        })
        .collect()
}

/// Prometheus buckets are cumulative and may omit `+Inf`; OTLP counts each bucket on its own, with
/// one more count than bounds (the overflow).
fn histogram_point(
    h: &prometheus::proto::Histogram,
    attributes: Vec<KeyValue>,
    window: Window,
) -> HistogramDataPoint {
    let finite: Vec<_> = h
        .get_bucket()
        .iter()
        .filter(|b| b.get_upper_bound().is_finite())
        .collect();
    let mut bucket_counts = Vec::with_capacity(finite.len() + 1);
    let mut below = 0u64;
    for b in &finite {
        let cumulative = b.get_cumulative_count();
        bucket_counts.push(cumulative.saturating_sub(below));
        below = cumulative;
    }
    bucket_counts.push(h.get_sample_count().saturating_sub(below));
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: window.start_ns,
        time_unix_nano: window.now_ns,
        count: h.get_sample_count(),
        sum: Some(h.get_sample_sum()),
        bucket_counts,
        explicit_bounds: finite.iter().map(|b| b.get_upper_bound()).collect(),
        ..Default::default()
    }
}

/// Sends the gathered families to a collector's `MetricsService`.
pub(crate) struct Sender {
    client: MetricsServiceClient<tonic::transport::Channel>,
    collector: crate::collector::Collector,
    resource: Vec<KeyValue>,
    gather: crate::Gather,
    start_ns: u64,
}

impl Sender {
    pub(crate) fn new(
        collector: &crate::collector::Collector,
        resource: Vec<KeyValue>,
        gather: crate::Gather,
    ) -> Self {
        Self {
            client: collector.metrics_client(),
            collector: collector.clone(),
            resource,
            gather,
            start_ns: unix_nanos(),
        }
    }

    /// Exports every `interval` until `stop` fires (or its sender is dropped), then once more.
    pub(crate) async fn run(mut self, interval: Duration, mut stop: oneshot::Receiver<()>) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => self.export().await,
                _ = &mut stop => break,
            }
        }
        self.export().await;
    }

    async fn export(&mut self) {
        let window = Window {
            start_ns: self.start_ns,
            now_ns: unix_nanos(),
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: self.resource.clone(),
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "im".into(),
                        ..Default::default()
                    }),
                    metrics: to_otlp(&(self.gather)(), window),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        if let Err(status) = self.client.export(self.collector.request(request)).await {
            tracing::warn!(endpoint = %self.collector.endpoint, error = %status, "metrics export failed");
        }
    }
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

    fn gathered() -> Vec<MetricFamily> {
        let registry = Registry::new_custom(Some("im_gateway".into()), None).unwrap();
        let standard = Registry::new();
        let requests =
            IntCounterVec::new(Opts::new("requests_total", "r"), &["route", "status"]).unwrap();
        let queued = IntGauge::new("ws_queued_bytes", "q").unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::new("http_server_request_duration_seconds", "d").buckets(vec![0.1, 1.0]),
            &["http_route", "http_response_status_code", "im_transport"],
        )
        .unwrap();
        registry.register(Box::new(requests.clone())).unwrap();
        registry.register(Box::new(queued.clone())).unwrap();
        standard.register(Box::new(latency.clone())).unwrap();
        requests.with_label_values(&["echo", "200"]).inc_by(3);
        queued.set(512);
        let l = latency.with_label_values(&["echo", "200", "http"]);
        for v in [0.05, 0.5, 0.7, 3.0] {
            l.observe(v);
        }
        let mut families = registry.gather();
        families.extend(standard.gather());
        families
    }

    fn find<'a>(metrics: &'a [Metric], name: &str) -> &'a Metric {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} in {metrics:?}"))
    }

    #[test]
    fn families_keep_their_values_under_names_a_prometheus_exporter_maps_back() {
        let window = Window {
            start_ns: 1,
            now_ns: 2,
        };
        let metrics = to_otlp(&gathered(), window);
        let requests = find(&metrics, "im_gateway_requests");
        let Some(Data::Sum(sum)) = &requests.data else {
            panic!("a counter is a sum: {requests:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(3.0))
        );
        assert_eq!(sum.data_points[0].attributes.len(), 2);

        let queued = find(&metrics, "im_gateway_ws_queued");
        assert_eq!(queued.unit, "By");
        assert!(matches!(queued.data, Some(Data::Gauge(_))));

        let latency = find(&metrics, "http.server.request.duration");
        assert_eq!(latency.unit, "s");
        let Some(Data::Histogram(h)) = &latency.data else {
            panic!("{latency:?}")
        };
        let point = &h.data_points[0];
        assert_eq!(point.count, 4);
        assert_eq!(point.explicit_bounds, vec![0.1, 1.0]);
        // Per bucket, not cumulative: 0.05 | 0.5, 0.7 | 3.0.
        assert_eq!(point.bucket_counts, vec![1, 2, 1]);
        let keys: Vec<&str> = point.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["http.response.status_code", "http.route", "im.transport"]
        );
    }
}
