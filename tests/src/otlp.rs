//! An OTLP/gRPC receiver in the test process: what the gateway and backend processes export, as
//! flat spans with their service, ids and parent, and as metric points.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use tonic::transport::server::TcpIncoming;

/// One received span.
#[derive(Debug, Clone)]
pub struct Span {
    /// `service.name` of the process that exported it.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_id: String,
    /// Every attribute as text (an int as its digits).
    pub attributes: HashMap<String, String>,
    /// The attributes sent as ints (counts must be numbers, not text, for trace queries).
    pub ints: HashMap<String, i64>,
}

#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<Span>>>);

/// One received metric point: histograms as their count and sum, sums and gauges as value.
#[derive(Debug, Clone)]
pub struct Point {
    pub service: String,
    /// `service.instance.id` of the process that exported it.
    pub instance: String,
    pub metric: String,
    pub unit: String,
    pub kind: &'static str,
    pub attributes: HashMap<String, String>,
    pub value: f64,
    pub count: u64,
}

#[derive(Clone, Default)]
struct Points(Arc<Mutex<Vec<Point>>>);

#[tonic::async_trait]
impl MetricsService for Points {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};
        let number = |v: &Option<Value>| match v {
            Some(Value::AsDouble(d)) => *d,
            Some(Value::AsInt(i)) => *i as f64,
            None => f64::NAN,
        };
        let mut points = self.0.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            let attrs = resource
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = attrs.get("service.name").cloned().unwrap_or_default();
            let instance = attrs
                .get("service.instance.id")
                .cloned()
                .unwrap_or_default();
            for scope in resource.scope_metrics {
                for m in scope.metrics {
                    let point = |kind, attributes, value, count| Point {
                        service: service.clone(),
                        instance: instance.clone(),
                        metric: m.name.clone(),
                        unit: m.unit.clone(),
                        kind,
                        attributes,
                        value,
                        count,
                    };
                    match &m.data {
                        Some(Data::Sum(sum)) => {
                            points.extend(sum.data_points.iter().map(|p| {
                                point("sum", attributes(&p.attributes), number(&p.value), 0)
                            }))
                        }
                        Some(Data::Gauge(g)) => points.extend(g.data_points.iter().map(|p| {
                            point("gauge", attributes(&p.attributes), number(&p.value), 0)
                        })),
                        Some(Data::Histogram(h)) => points.extend(h.data_points.iter().map(|p| {
                            let buckets: u64 = p.bucket_counts.iter().sum();
                            assert_eq!(buckets, p.count, "buckets add up to the count: {p:?}");
                            assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
                            point(
                                "histogram",
                                attributes(&p.attributes),
                                p.sum.unwrap_or_default(),
                                p.count,
                            )
                        })),
                        _ => {}
                    }
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Collected {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let attrs = resource.resource.map(|r| attributes(&r.attributes));
            let service = attrs
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for s in scope.spans {
                    spans.push(Span {
                        service: service.clone(),
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_id: hex(&s.parent_span_id),
                        attributes: attributes(&s.attributes),
                        ints: s
                            .attributes
                            .iter()
                            .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                AnyValue::IntValue(i) => Some((kv.key.clone(), *i)),
                                _ => None,
                            })
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                _ => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// The receiver, serving until dropped.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    spans: Collected,
    points: Points,
    _server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("receiver address");
        let spans = Collected::default();
        let points = Points::default();
        let service = TraceServiceServer::new(spans.clone());
        let metrics = MetricsServiceServer::new(points.clone());
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(metrics)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
        });
        Self {
            addr,
            spans,
            points,
            _server: server,
        }
    }

    /// `http://addr`, for `telemetry.otlp_endpoint` and `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every metric point received so far, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.points.0.lock().unwrap().clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.0.lock().unwrap().clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self._server.abort();
    }
}

/// `tests/grpc-clients/collector.py`: an OTLP trace receiver of python grpcio and PyPI's
/// opentelemetry-proto (a gRPC stack and protobuf runtime the project did not write), printing
/// one JSON line per span it decodes and one with the headers of each export.
pub struct ForeignCollector {
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    _child: tokio::process::Child,
}

impl ForeignCollector {
    /// Listening on 127.0.0.1:`port`; `args` as collector.py takes them (`--tls CERT KEY`,
    /// `--client-ca CA`).
    pub async fn start_on(port: u16, args: &[&str]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/grpc-clients");
        let mut child = tokio::process::Command::new(format!("{dir}/.venv/bin/python"))
            .arg(format!("{dir}/collector.py"))
            .arg(port.to_string())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python collector (scripts/bootstrap.sh installs it)");
        let mut lines =
            tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("the collector starts")
            .expect("the collector's stdout")
            .expect("the collector's first line");
        assert_eq!(first, format!("{{\"listening\": {port}}}"));
        let all = Arc::new(Mutex::new(Vec::new()));
        let sink = all.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let line: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
                sink.lock().expect("lines").push(line);
            }
        });
        Self {
            lines: all,
            _child: child,
        }
    }

    /// The spans of `trace` received so far.
    pub fn spans(&self, trace: &str) -> Vec<serde_json::Value> {
        self.received(|l| l["trace_id"] == trace)
    }

    /// Every span received so far.
    pub fn all_spans(&self) -> Vec<serde_json::Value> {
        self.received(|l| l.get("span_id").is_some())
    }

    /// The headers of each export received so far.
    pub fn exports(&self) -> Vec<serde_json::Value> {
        self.received(|l| l.get("metadata").is_some())
            .into_iter()
            .map(|l| l["metadata"].clone())
            .collect()
    }

    fn received(&self, keep: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
        let lines = self.lines.lock().expect("lines");
        lines.iter().filter(|l| keep(l)).cloned().collect()
    }
}
