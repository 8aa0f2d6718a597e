//! The one connection to the collector that spans and metrics share: TLS (the system's roots,
//! a private CA, a client identity), the headers every export carries, and compression.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::settings::Compression;
use crate::TraceExport;

/// How long one export (a batch of spans, one metrics report) may take.
pub(crate) const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily connected channel to the collector and what each request adds to it.
#[derive(Debug, Clone)]
pub(crate) struct Collector {
    pub(crate) channel: Channel,
    pub(crate) endpoint: String,
    headers: MetadataMap,
    compression: Option<CompressionEncoding>,
}

impl Collector {
    /// Must run inside the export runtime (the channel's I/O runs where it was made). Reads
    /// the TLS files; an error names the setting.
    pub(crate) fn connect(cfg: &TraceExport) -> Result<Self, String> {
        let mut endpoint = Endpoint::from_shared(cfg.endpoint.clone())
            .map_err(|e| format!("telemetry.otlp_endpoint {}: {e}", cfg.endpoint))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(EXPORT_TIMEOUT);
        if cfg.endpoint.starts_with("https://") {
            endpoint = endpoint
                .tls_config(tls_config(cfg)?)
                .map_err(|e| format!("telemetry: TLS towards {}: {e}", cfg.endpoint))?;
        }
        let mut headers = MetadataMap::new();
        for (name, value) in &cfg.headers {
            // `TraceExport::validate` checked both; a value is never quoted in an error.
            let key = MetadataKey::<Ascii>::from_bytes(name.as_bytes())
                .map_err(|_| format!("telemetry.headers.{name}: not a valid header name"))?;
            let value = MetadataValue::<Ascii>::try_from(value.as_str()).map_err(|_| {
                format!("telemetry.headers.{name}: its value must be visible ASCII")
            })?;
            headers.insert(key, value);
        }
        Ok(Self {
            channel: endpoint.connect_lazy(),
            endpoint: cfg.endpoint.clone(),
            headers,
            compression: match cfg.compression {
                Compression::Gzip => Some(CompressionEncoding::Gzip),
                Compression::None => None,
            },
        })
    }

    /// `body` as a request carrying the configured headers.
    pub(crate) fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.headers.clone();
        request
    }

    /// A gRPC client on the channel, compressing requests as configured.
    pub(crate) fn grpc(&self) -> tonic::client::Grpc<Channel> {
        let grpc = tonic::client::Grpc::new(self.channel.clone());
        match self.compression {
            Some(encoding) => grpc.send_compressed(encoding).accept_compressed(encoding),
            None => grpc,
        }
    }

    /// The metrics service's client on the channel, compressing as configured.
    pub(crate) fn metrics_client(&self) -> MetricsServiceClient<Channel> {
        let client = MetricsServiceClient::new(self.channel.clone());
        match self.compression {
            Some(encoding) => client.send_compressed(encoding).accept_compressed(encoding),
            None => client,
        }
    }
}

fn tls_config(cfg: &TraceExport) -> Result<ClientTlsConfig, String> {
    let read = |path: &std::path::Path, field: &str| {
        std::fs::read(path).map_err(|e| format!("telemetry.{field} {}: {e}", path.display()))
    };
    let tls = ClientTlsConfig::new();
    let mut tls = match &cfg.tls.ca_file {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca, "ca_file")?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&cfg.tls.client_cert, &cfg.tls.client_key) {
        tls = tls.identity(Identity::from_pem(
            read(cert, "client_cert")?,
            read(key, "client_key")?,
        ));
    }
    Ok(tls)
}
