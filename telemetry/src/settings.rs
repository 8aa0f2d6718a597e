//! What decides where telemetry goes: the process's own configuration (gateway.yaml's
//! `telemetry:`, the backends' flags) and OpenTelemetry's standard environment variables.
//!
//! The rule, as the OpenTelemetry specification puts it for SDK configuration (code or a
//! configuration file first, the environment as the fallback): **a key the process's
//! configuration sets wins; an `OTEL_*` variable fills a key it leaves out; then the default.**
//! In detail:
//! - a signal-specific variable (`OTEL_EXPORTER_OTLP_TRACES_*`) wins over the generic one
//!   (`OTEL_EXPORTER_OTLP_*`); spans and metrics share one connection, so both use it;
//! - headers merge by name: the file's value wins for a name both give;
//! - `service.name`: the configuration's, else `OTEL_SERVICE_NAME`, else the `service.name` of
//!   `OTEL_RESOURCE_ATTRIBUTES`, else the process's default; the other resource attributes are
//!   added as they are (`service.instance.id` stays the node's);
//! - `OTEL_SDK_DISABLED=true` turns export off unless the configuration names an endpoint.
//!
//! Header values are secrets: they come from the configuration, a file or an environment
//! variable, and are never logged (their `Debug` shows where they come from, not what they are).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::TraceExport;

/// Where a secret (a header's value) comes from.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Secret {
    /// `{env: HONEYCOMB_KEY}`: an environment variable of the process.
    Env { env: String },
    /// `{file: /run/secrets/otlp}`: a file's content, trimmed.
    File { file: PathBuf },
    /// The value itself, written in the configuration.
    Literal(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env { env } => write!(f, "Secret(env {env})"),
            Self::File { file } => write!(f, "Secret(file {})", file.display()),
            Self::Literal(_) => f.write_str("Secret(literal, hidden)"),
        }
    }
}

impl Secret {
    /// The value; an error names where it should have come from, never a value.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        match self {
            Self::Env { env: name } => {
                env(name).ok_or(format!("environment variable {name} is not set"))
            }
            Self::File { file } => std::fs::read_to_string(file)
                .map(|s| s.trim().to_owned())
                .map_err(|e| format!("cannot read {}: {e}", file.display())),
            Self::Literal(value) => Ok(value.clone()),
        }
    }
}

/// How export requests are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

impl Compression {
    /// `gzip` or `none` (the names OTLP's `compression` setting uses).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gzip" => Some(Self::Gzip),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// The export's settings as the process's configuration gives them (`None`: not set there).
#[derive(Debug, Clone, Default)]
pub struct ExportSettings {
    /// OTLP/gRPC collector, `http://host:4317` or `https://...`.
    pub endpoint: Option<String>,
    /// Request headers (authentication for hosted collectors), by name.
    pub headers: BTreeMap<String, Secret>,
    /// `gzip` or `none`.
    pub compression: Option<String>,
    /// PEM file of the CA that signed the collector's certificate (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate and key this process presents to the collector (mTLS).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub service_name: Option<String>,
    /// Share of new traces sampled, 0.0 to 1.0.
    pub sample_ratio: Option<f64>,
}

/// A configuration error: the setting (a key or a variable) and what to do about it.
pub type SettingError = (String, String);

fn bad(setting: &str, fix: impl Into<String>) -> SettingError {
    (setting.to_owned(), fix.into())
}

impl ExportSettings {
    /// What the process exports under, or `None` when nothing names a collector. `env` reads
    /// the environment (a parameter so that tests need not change the process's).
    pub fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        default_service: &str,
        instance_id: String,
    ) -> Result<Option<TraceExport>, SettingError> {
        let otlp = |key: &str| {
            let specific = env(&format!("OTEL_EXPORTER_OTLP_TRACES_{key}"))
                .map(|v| (format!("OTEL_EXPORTER_OTLP_TRACES_{key}"), v));
            specific
                .or_else(|| {
                    env(&format!("OTEL_EXPORTER_OTLP_{key}"))
                        .map(|v| (format!("OTEL_EXPORTER_OTLP_{key}"), v))
                })
                .filter(|(_, v)| !v.trim().is_empty())
        };
        let disabled =
            env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let endpoint = match &self.endpoint {
            Some(endpoint) => endpoint.clone(),
            None if disabled => return Ok(None),
            None => match otlp("ENDPOINT") {
                Some((_, endpoint)) => endpoint,
                None => return Ok(None),
            },
        };
        if let Some((var, protocol)) = otlp("PROTOCOL") {
            if protocol.trim() != "grpc" {
                return Err(bad(
                    &var,
                    format!("`{protocol}`: only grpc is spoken here; unset it or use grpc"),
                ));
            }
        }
        let mut export = TraceExport::new(endpoint, default_service, instance_id);
        export.headers = self.headers(env, otlp("HEADERS"))?;
        export.compression = match (&self.compression, otlp("COMPRESSION")) {
            (Some(name), _) => Compression::parse(name)
                .ok_or_else(|| bad("telemetry.compression", "use gzip or none"))?,
            (None, Some((var, name))) => {
                Compression::parse(name.trim()).ok_or_else(|| bad(&var, "use gzip or none"))?
            }
            (None, None) => Compression::None,
        };
        let file = |own: &Option<PathBuf>, key: &str| {
            own.clone()
                .or_else(|| otlp(key).map(|(_, v)| PathBuf::from(v)))
        };
        export.tls.ca_file = file(&self.ca_file, "CERTIFICATE");
        export.tls.client_cert = file(&self.client_cert, "CLIENT_CERTIFICATE");
        export.tls.client_key = file(&self.client_key, "CLIENT_KEY");
        let resource = match env("OTEL_RESOURCE_ATTRIBUTES") {
            Some(list) => pairs(&list).map_err(|e| bad("OTEL_RESOURCE_ATTRIBUTES", e))?,
            None => Vec::new(),
        };
        export.service_name = self
            .service_name
            .clone()
            .or_else(|| env("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty()))
            .or_else(|| {
                resource
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| default_service.to_owned());
        export.resource_attributes = resource
            .into_iter()
            .filter(|(k, _)| k != "service.name" && k != "service.instance.id")
            .collect();
        export.sample_ratio = match self.sample_ratio {
            Some(ratio) => ratio,
            None => sampler_ratio(env)?,
        };
        export.validate()?;
        Ok(Some(export))
    }

    /// The configuration's headers over the environment's (`from_env`: variable and value).
    fn headers(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        from_env: Option<(String, String)>,
    ) -> Result<Vec<(String, String)>, SettingError> {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        if let Some((var, list)) = from_env {
            for (name, value) in pairs(&list).map_err(|e| bad(&var, e))? {
                headers.insert(name.to_ascii_lowercase(), value);
            }
        }
        for (name, secret) in &self.headers {
            let value = secret
                .resolve(env)
                .map_err(|e| bad(&format!("telemetry.headers.{name}"), e))?;
            headers.insert(name.to_ascii_lowercase(), value);
        }
        Ok(headers.into_iter().collect())
    }
}

/// The sample ratio `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` give (1.0 when unset).
/// Sampling here always follows a caller's decision, so `traceidratio` reads as
/// `parentbased_traceidratio` (and `always_on`/`off` as their parent-based forms).
fn sampler_ratio(env: &dyn Fn(&str) -> Option<String>) -> Result<f64, SettingError> {
    let arg = || -> Result<f64, SettingError> {
        match env("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(arg) => arg
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    bad(
                        "OTEL_TRACES_SAMPLER_ARG",
                        format!("`{arg}`: use a ratio from 0.0 to 1.0"),
                    )
                }),
        }
    };
    match env("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
        None | Some("") | Some("traceidratio" | "parentbased_traceidratio") => arg(),
        Some("always_on" | "parentbased_always_on") => Ok(1.0),
        Some("always_off" | "parentbased_always_off") => Ok(0.0),
        Some(other) => Err(bad(
            "OTEL_TRACES_SAMPLER",
            format!("`{other}` is not supported: use parentbased_traceidratio (with OTEL_TRACES_SAMPLER_ARG), always_on or always_off"),
        )),
    }
}

/// `key1=value1,key2=value2` with percent-encoded values (W3C baggage's form, which
/// `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES` use).
fn pairs(list: &str) -> Result<Vec<(String, String)>, String> {
    list.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let (key, value) = item.split_once('=').ok_or_else(|| {
                format!(
                    "`{}` has no `=`: write key=value,key=value",
                    item.split('=').next().unwrap_or("").trim()
                )
            })?;
            let key = key.trim();
            if key.is_empty() {
                return Err("an entry has an empty key: write key=value,key=value".into());
            }
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| format!("the value of `{key}` is not UTF-8 once percent-decoded"))?;
            Ok((key.to_owned(), value.into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn resolve(
        settings: &ExportSettings,
        vars: &[(&str, &str)],
    ) -> Result<Option<TraceExport>, SettingError> {
        settings.resolve(&env_of(vars), "im-gateway", "node-1".into())
    }

    #[test]
    fn without_an_endpoint_nothing_is_exported() {
        assert!(resolve(&ExportSettings::default(), &[]).unwrap().is_none());
        let disabled = [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ];
        assert!(resolve(&ExportSettings::default(), &disabled)
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_environment_fills_what_the_file_leaves_out() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces:4317"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-honeycomb-team=abc%20def,Authorization=Basic%20eA==",
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,deployment.environment=prod",
            ),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ];
        let export = resolve(&ExportSettings::default(), &vars).unwrap().unwrap();
        assert_eq!(export.endpoint, "https://traces:4317");
        assert_eq!(
            export.headers,
            [
                ("authorization".into(), "Basic eA==".into()),
                ("x-honeycomb-team".into(), "abc def".into())
            ]
        );
        assert_eq!(export.compression, Compression::Gzip);
        assert_eq!(export.tls.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(export.service_name, "from-attrs");
        assert_eq!(
            export.resource_attributes,
            [("deployment.environment".into(), "prod".into())]
        );
        assert_eq!(export.sample_ratio, 0.25);
        assert_eq!(export.instance_id, "node-1");

        let with_name = [vars.as_slice(), &[("OTEL_SERVICE_NAME", "from-env")]].concat();
        let export = resolve(&ExportSettings::default(), &with_name)
            .unwrap()
            .unwrap();
        assert_eq!(export.service_name, "from-env");
    }

    #[test]
    fn what_the_file_sets_wins() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=env,x-env=1"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_SERVICE_NAME", "env-name"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ("OTLP_KEY", "from-variable"),
        ];
        let settings = ExportSettings {
            endpoint: Some("http://file:4317".into()),
            headers: BTreeMap::from([
                ("Authorization".into(), Secret::Literal("file".into())),
                (
                    "x-key".into(),
                    Secret::Env {
                        env: "OTLP_KEY".into(),
                    },
                ),
            ]),
            compression: Some("none".into()),
            service_name: Some("file-name".into()),
            sample_ratio: Some(0.1),
            ..ExportSettings::default()
        };
        let export = resolve(&settings, &vars).unwrap().unwrap();
        assert_eq!(export.endpoint, "http://file:4317");
        assert_eq!(
            export.headers,
            [
                ("authorization".into(), "file".into()),
                ("x-env".into(), "1".into()),
                ("x-key".into(), "from-variable".into())
            ]
        );
        assert_eq!(export.compression, Compression::None);
        assert_eq!(export.service_name, "file-name");
        assert_eq!(export.sample_ratio, 0.1);
    }

    #[test]
    fn bad_values_name_the_setting_and_never_a_secret() {
        let endpoint = ExportSettings {
            endpoint: Some("http://c:4317".into()),
            ..ExportSettings::default()
        };
        let field = |vars: &[(&str, &str)]| resolve(&endpoint, vars).unwrap_err().0;
        assert_eq!(
            field(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        );
        assert_eq!(
            field(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]),
            "OTEL_EXPORTER_OTLP_COMPRESSION"
        );
        assert_eq!(
            field(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]),
            "OTEL_EXPORTER_OTLP_HEADERS"
        );
        assert_eq!(
            field(&[("OTEL_TRACES_SAMPLER_ARG", "2")]),
            "OTEL_TRACES_SAMPLER_ARG"
        );
        assert_eq!(
            field(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]),
            "OTEL_TRACES_SAMPLER"
        );
        assert_eq!(
            field(&[("OTEL_RESOURCE_ATTRIBUTES", "=x")]),
            "OTEL_RESOURCE_ATTRIBUTES"
        );

        let unset = ExportSettings {
            headers: BTreeMap::from([(
                "x-key".into(),
                Secret::Env {
                    env: "NOT_SET".into(),
                },
            )]),
            ..endpoint.clone()
        };
        assert_eq!(
            resolve(&unset, &[]).unwrap_err().0,
            "telemetry.headers.x-key"
        );
        let bad_value = ExportSettings {
            headers: BTreeMap::from([("x-key".into(), Secret::Literal("s3cret\nline".into()))]),
            ..endpoint.clone()
        };
        let (field, why) = resolve(&bad_value, &[]).unwrap_err();
        assert_eq!(field, "telemetry.headers.x-key");
        assert!(!why.contains("s3cret"), "{why}");
        let tls_over_http = ExportSettings {
            ca_file: Some("/ca.pem".into()),
            ..endpoint.clone()
        };
        assert_eq!(
            resolve(&tls_over_http, &[]).unwrap_err().0,
            "telemetry.otlp_endpoint"
        );
        let half_identity = ExportSettings {
            endpoint: Some("https://c:4317".into()),
            client_cert: Some("/c.pem".into()),
            ..ExportSettings::default()
        };
        assert_eq!(
            resolve(&half_identity, &[]).unwrap_err().0,
            "telemetry.client_key"
        );

        let export = resolve(
            &ExportSettings {
                headers: BTreeMap::from([(
                    "authorization".into(),
                    Secret::Literal("Bearer s3cret".into()),
                )]),
                ..endpoint
            },
            &[],
        )
        .unwrap()
        .unwrap();
        assert!(!format!("{export:?}").contains("s3cret"), "{export:?}");
        assert!(!format!("{:?}", Secret::Literal("s3cret".into())).contains("s3cret"));
    }
}
