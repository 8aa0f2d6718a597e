//! `telemetry:` in gateway.yaml (DESIGN §11) and the gateway's spans. The export itself is
//! `im_telemetry`'s, shared with the backends.
//!
//! Spans, one per unit of work and never one per socket: `call` per HTTP request or cmd frame
//! (server side, parent: the client's `traceparent`), `admission` inside it, `upstream` per
//! attempt (client side; its context is the backend's `traceparent`), `push` per PushService
//! call, and `cluster.deliver` per node hop, with recipient counts as attributes.

pub mod access;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use im_telemetry::settings::Secret;
use serde::Deserialize;

use crate::units::HumanDuration;

/// `telemetry:` in gateway.yaml. A key left out here may come from OpenTelemetry's
/// environment (`OTEL_EXPORTER_OTLP_ENDPOINT`, ...); what this file sets wins
/// ([`im_telemetry::settings`] gives the whole rule).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector (`http://127.0.0.1:4317`, or `https://` for TLS); absent (and no
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`): no spans or metrics are exported.
    pub otlp_endpoint: Option<String>,
    /// Headers every export carries (a hosted collector's key): a value, `{env: VAR}` or
    /// `{file: path}`; never logged.
    pub headers: BTreeMap<String, Secret>,
    /// `gzip` or `none` (default none).
    pub compression: Option<String>,
    /// The CA that signed the collector's certificate (PEM); default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The certificate and key the gateway presents to the collector (mTLS, PEM).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// How often metrics are exported over OTLP (also once at shutdown).
    pub metrics_interval: HumanDuration,
    /// Share of new traces sampled (0.0 to 1.0, default 1.0); a client's own sampled flag is
    /// followed.
    pub sample_ratio: Option<f64>,
    /// `service.name` of the gateway's spans (default im-gateway).
    pub service_name: Option<String>,
    /// One log line per HTTP request and per cmd frame (target `im_gateway::access`).
    pub access_log: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            headers: BTreeMap::new(),
            compression: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            metrics_interval: HumanDuration(Duration::from_secs(15)),
            sample_ratio: None,
            service_name: None,
            access_log: true,
        }
    }
}

/// `service.name` when neither the file nor the environment gives one.
pub const DEFAULT_SERVICE: &str = "im-gateway";

impl TelemetryConfig {
    /// The first field that cannot be used, with what to write instead.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri_ok = endpoint.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            });
            if !uri_ok {
                return Err((
                    "telemetry.otlp_endpoint",
                    "use the collector's OTLP/gRPC address, e.g. http://127.0.0.1:4317".into(),
                ));
            }
        }
        if self
            .compression
            .as_deref()
            .is_some_and(|c| im_telemetry::settings::Compression::parse(c).is_none())
        {
            return Err(("telemetry.compression", "use gzip or none".into()));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600))
            .contains(&self.metrics_interval.0)
        {
            return Err((
                "telemetry.metrics_interval",
                "use 100ms to 1h (default 15s, a common collector scrape interval)".into(),
            ));
        }
        if self.sample_ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return Err((
                "telemetry.sample_ratio",
                "use 0.0 (only traces callers sampled) to 1.0 (every trace; the default)".into(),
            ));
        }
        if self
            .service_name
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err((
                "telemetry.service_name",
                "must not be empty (default im-gateway)".into(),
            ));
        }
        Ok(())
    }

    /// The share of new traces sampled.
    pub fn sample_ratio(&self) -> f64 {
        self.sample_ratio.unwrap_or(1.0)
    }

    /// The export settings, with the environment (`env`) filling what this leaves out; `None`
    /// when nothing names a collector. `instance_id` names this node.
    pub fn export(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        instance_id: String,
    ) -> Result<Option<im_telemetry::TraceExport>, String> {
        let settings = im_telemetry::settings::ExportSettings {
            endpoint: self.otlp_endpoint.clone(),
            headers: self.headers.clone(),
            compression: self.compression.clone(),
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            service_name: self.service_name.clone(),
            sample_ratio: self.sample_ratio,
        };
        settings
            .resolve(env, DEFAULT_SERVICE, instance_id)
            .map_err(|(field, fix)| format!("{field}: {fix}"))
    }
}

/// Whether a trace starting or continuing here is sampled ([`im_telemetry::traceparent::sampled`]).
pub use im_telemetry::traceparent::sampled;

/// The span of one call (an HTTP request or a cmd frame) of `route`, its parent the client's
/// `traceparent` when it sent one, sampled as [`sampled`] decides with `ratio`; and the call's
/// trace id (for logs: every line inside the span carries it as `trace_id`).
pub fn call_span(
    route: &str,
    transport: &'static str,
    request_id: &str,
    traceparent: Option<&str>,
    ratio: f64,
) -> (tracing::Span, Option<String>) {
    let span = im_telemetry::root_span!(
        sampled(traceparent, ratio),
        "call",
        otel.name = route,
        otel.kind = "server",
        http.route = route,
        im.transport = transport,
        request_id = request_id,
        trace_id = tracing::field::Empty,
    );
    if let Some(parent) = traceparent {
        im_telemetry::traceparent::set_parent(&span, parent);
    }
    // A caller's valid traceparent names the trace this span joins; else the span's own.
    let trace_id = traceparent
        .and_then(im_telemetry::traceparent::trace_id)
        .map(str::to_owned)
        .or_else(|| im_telemetry::traceparent::own_trace_id(&span));
    if let Some(id) = &trace_id {
        span.record("trace_id", id.as_str());
    }
    (span, trace_id)
}

/// The `traceparent` for the next hop: the current span's when spans are exported, else the
/// caller's unchanged.
pub fn next_hop(caller: Option<&str>) -> Option<String> {
    im_telemetry::traceparent::current().or_else(|| caller.map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_fields_are_checked() {
        let with = |f: fn(&mut TelemetryConfig)| {
            let mut c = TelemetryConfig::default();
            f(&mut c);
            c.validate().err().map(|e| e.0)
        };
        assert_eq!(with(|_| {}), None);
        assert_eq!(
            with(|c| c.otlp_endpoint = Some("http://collector:4317".into())),
            None
        );
        assert_eq!(
            with(|c| c.otlp_endpoint = Some("collector:4317".into())),
            Some("telemetry.otlp_endpoint")
        );
        assert_eq!(
            with(|c| c.metrics_interval = HumanDuration(Duration::ZERO)),
            Some("telemetry.metrics_interval")
        );
        assert_eq!(
            with(|c| c.sample_ratio = Some(1.5)),
            Some("telemetry.sample_ratio")
        );
        assert_eq!(
            with(|c| c.service_name = Some(" ".into())),
            Some("telemetry.service_name")
        );
        assert_eq!(
            with(|c| c.compression = Some("brotli".into())),
            Some("telemetry.compression")
        );
        let no_env = |_: &str| None;
        assert!(TelemetryConfig::default()
            .export(&no_env, "n".into())
            .unwrap()
            .is_none());
    }

    #[test]
    fn without_export_the_caller_s_traceparent_goes_on_unchanged() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let (span, trace_id) = call_span("r", "http", "rid", Some(tp), 1.0);
        assert_eq!(
            trace_id.as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        let _entered = span.enter();
        assert_eq!(next_hop(Some(tp)).as_deref(), Some(tp));
        assert_eq!(next_hop(None), None);
    }
}
