//! [`TraceExport`]: where and how this process's spans and metrics go, once resolved from its
//! config file and the OpenTelemetry environment, and checked before anything starts.

use crate::settings;

/// Where and how traces (and metrics) go, resolved ([`settings::ExportSettings::resolve`]).
#[derive(Clone, PartialEq)]
pub struct TraceExport {
    /// OTLP/gRPC collector, `http://host:4317` or `https://...` (TLS).
    pub endpoint: String,
    /// Share of new traces sampled, 0.0 to 1.0 (a caller's own decision is followed); applied
    /// where root spans open ([`crate::root_span!`]), so the process's code passes it there too.
    pub sample_ratio: f64,
    /// `service.name` of this process's spans.
    pub service_name: String,
    /// `service.instance.id`: the node, so one trace shows which gateway served each hop.
    pub instance_id: String,
    /// Further resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
    /// Sent with every export (lower-case names; the values are secrets, never logged).
    pub headers: Vec<(String, String)>,
    pub compression: settings::Compression,
    pub tls: ClientTls,
    /// Crates whose spans carry a `service.name` of their own (target prefix, service): the
    /// launcher runs the backends in the gateway's process, and their spans still name them.
    pub crate_services: Vec<(&'static str, String)>,
}

/// TLS towards the collector (an `https://` endpoint): the system's roots unless `ca_file`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for TraceExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("TraceExport")
            .field("endpoint", &self.endpoint)
            .field("sample_ratio", &self.sample_ratio)
            .field("service_name", &self.service_name)
            .field("instance_id", &self.instance_id)
            .field("resource_attributes", &self.resource_attributes)
            .field("headers (values hidden)", &header_names)
            .field("compression", &self.compression)
            .field("tls", &self.tls)
            .field("crate_services", &self.crate_services)
            .finish()
    }
}

impl TraceExport {
    /// Export to `endpoint` as `service_name`, sampling every new trace, no headers, no
    /// compression, TLS (for `https://`) on the system's roots.
    pub fn new(endpoint: String, service_name: &str, instance_id: String) -> Self {
        Self {
            endpoint,
            sample_ratio: 1.0,
            service_name: service_name.to_owned(),
            instance_id,
            resource_attributes: Vec::new(),
            headers: Vec::new(),
            compression: settings::Compression::None,
            tls: ClientTls::default(),
            crate_services: Vec::new(),
        }
    }

    /// The first setting that cannot be used, and the fix (a header's value is never quoted).
    pub fn validate(&self) -> Result<(), settings::SettingError> {
        let bad = |field: &str, fix: &str| Err((field.to_owned(), fix.to_owned()));
        let uri = self
            .endpoint
            .parse::<http::Uri>()
            .ok()
            .filter(|u| u.authority().is_some());
        let https = match uri.as_ref().and_then(http::Uri::scheme_str) {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return bad(
                    "telemetry.otlp_endpoint",
                    "use the collector's OTLP/gRPC address, e.g. http://127.0.0.1:4317 or https://collector:4317",
                )
            }
        };
        let tls = &self.tls;
        if !https
            && (tls.ca_file.is_some() || tls.client_cert.is_some() || tls.client_key.is_some())
        {
            return bad(
                "telemetry.otlp_endpoint",
                "TLS files are set: use an https:// endpoint, or drop ca_file, client_cert and client_key",
            );
        }
        match (&tls.client_cert, &tls.client_key) {
            (Some(_), None) => {
                return bad(
                    "telemetry.client_key",
                    "client_cert is set: give its key too (PEM)",
                )
            }
            (None, Some(_)) => {
                return bad(
                    "telemetry.client_cert",
                    "client_key is set: give its certificate too (PEM)",
                )
            }
            _ => {}
        }
        for (name, value) in &self.headers {
            let field = format!("telemetry.headers.{name}");
            if tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(name.as_bytes())
                .is_err()
            {
                return Err((
                    field,
                    "not a valid header name: use letters, digits and -".into(),
                ));
            }
            if tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(value.as_str())
                .is_err()
            {
                return Err((
                    field,
                    "its value must be visible ASCII (no line breaks)".into(),
                ));
            }
        }
        Ok(())
    }
}
