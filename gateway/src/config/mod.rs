//! The gateway's own configuration (`gateway.yaml`): listeners, threads, shutdown, reload.
//! Routes live in their own file (see [`crate::routes`]) so ops can edit and reload them alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::filters::auth::AuthConfig;
use crate::filters::client_ip::ClientIpConfig;
use crate::filters::cors::CorsConfig;
use crate::push::PushConfig;
use crate::units::HumanDuration;

/// Parsed and validated `gateway.yaml`. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub listen: Listen,
    /// Worker threads of the edge listener.
    pub threads: usize,
    /// Path of `routes.yaml`; relative paths are resolved against the config file's directory.
    pub routes: Option<PathBuf>,
    /// A `FileDescriptorSet` to use instead of the embedded one; reloaded with the routes.
    pub descriptors: Option<PathBuf>,
    /// TLS on the edge listener (h2 and http/1.1 by ALPN). Without it the edge speaks h1 + h2c.
    pub tls: Option<TlsFiles>,
    /// Token verification keys, issuer/audience, API keys.
    pub auth: AuthConfig,
    /// Which peers' forwarding headers to believe.
    pub client_ip: ClientIpConfig,
    /// Cross-origin browser access (nothing allowed by default).
    pub cors: CorsConfig,
    /// Memory bounds of rate limiting.
    pub rate_limit: RateLimitSettings,
    /// WebSocket sessions and PushService.
    pub push: PushConfig,
    pub reload: Reload,
    pub shutdown: Shutdown,
    /// The demo web client and `/config.json` on the edge listener.
    pub web: crate::web::WebConfig,
    /// Who may call the admin listener.
    pub admin: AdminConfig,
    /// Slow HTTP/1 clients on the edge: head deadline, keep-alive timeout, per-IP cap.
    pub http: crate::http_guard::HttpConfig,
    /// Cluster mode through Redis; absent: a single node.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Traces exported over OTLP.
    pub telemetry: crate::telemetry::TelemetryConfig,
}

/// `admin` in gateway.yaml: the admin listener's protection. Without a token the listener must be
/// on loopback and answers only requests naming an allowed `Host`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// A file holding the bearer token every admin call but `/healthz` and `/readyz` needs
    /// (Prometheus: `authorization.credentials_file`). Required for a non-loopback address.
    pub token_file: Option<PathBuf>,
    /// Host names a tokenless request may name besides loopback names and the listen address.
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// HTTP API (h1 and h2c on one port) and gRPC pass-through.
    pub edge: SocketAddr,
    /// Metrics, health, route inspection and reload. Keep it on loopback.
    pub admin: SocketAddr,
    /// WebSocket push listener (`/ws`).
    pub push: SocketAddr,
    /// Internal gRPC: PushService for backends. Loopback only, unless `push.internal_tls` is set.
    pub internal: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Cap on live keys per limiter; at the cap the oldest idle key is evicted.
    pub max_keys: usize,
    /// How often keys whose bucket has refilled are dropped.
    pub sweep_interval: HumanDuration,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            max_keys: 100_000,
            sweep_interval: HumanDuration(Duration::from_secs(10)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reload {
    /// Watch the routes file's directory (symlink swaps included) and reload on change.
    pub watch: bool,
    /// Reload on SIGHUP (only the CLI enables signal handling; embedded gateways do not).
    pub sighup: bool,
    /// Quiet time after the last file event before reloading, so editors' multi-step saves load once.
    pub debounce: HumanDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// After SIGTERM, keep serving this long before stopping (lets a load balancer drain us).
    pub grace_period: HumanDuration,
    /// Then wait at most this long for in-flight work.
    pub graceful_timeout: HumanDuration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: Listen::default(),
            threads: 2,
            routes: None,
            descriptors: None,
            tls: None,
            auth: AuthConfig::default(),
            client_ip: ClientIpConfig::default(),
            cors: CorsConfig::default(),
            rate_limit: RateLimitSettings::default(),
            push: PushConfig::default(),
            reload: Reload::default(),
            shutdown: Shutdown::default(),
            web: crate::web::WebConfig::default(),
            admin: AdminConfig::default(),
            http: crate::http_guard::HttpConfig::default(),
            cluster: None,
            telemetry: crate::telemetry::TelemetryConfig::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            edge: ([0, 0, 0, 0], 8080).into(),
            admin: ([127, 0, 0, 1], 9901).into(),
            push: ([0, 0, 0, 0], 8081).into(),
            internal: ([127, 0, 0, 1], 7171).into(),
        }
    }
}

impl Default for Reload {
    fn default() -> Self {
        Self {
            watch: true,
            sighup: false,
            debounce: HumanDuration(Duration::from_millis(200)),
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            grace_period: HumanDuration(Duration::from_secs(5)),
            graceful_timeout: HumanDuration(Duration::from_secs(5)),
        }
    }
}

/// Why a gateway config could not be used; each message names the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

impl GatewayConfig {
    /// Reads and validates a config file; relative paths inside it become relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        // Every file the config names is relative to the config file.
        let tls = cfg.tls.as_mut().map(|t| [&mut t.cert, &mut t.key]);
        let keys = cfg.auth.public_keys.iter_mut().map(|k| &mut k.file);
        let telemetry = &mut cfg.telemetry;
        let secrets = telemetry.headers.values_mut().filter_map(|s| match s {
            im_telemetry::settings::Secret::File { file } => Some(file),
            _ => None,
        });
        let collector_tls = [
            telemetry.ca_file.as_mut(),
            telemetry.client_cert.as_mut(),
            telemetry.client_key.as_mut(),
        ];
        let internal_tls = cfg
            .push
            .internal_tls
            .as_mut()
            .map(|t| [Some(&mut t.cert), Some(&mut t.key), t.client_ca.as_mut()]);
        let files = [
            &mut cfg.routes,
            &mut cfg.descriptors,
            &mut cfg.auth.hs256_secret_file,
            &mut cfg.push.internal_token_file,
            &mut cfg.admin.token_file,
            &mut cfg.auth.revocation_file,
        ];
        for p in files
            .into_iter()
            .flatten()
            .chain(tls.into_iter().flatten())
            .chain(internal_tls.into_iter().flatten().flatten())
            .chain(keys)
            .chain(collector_tls.into_iter().flatten())
            .chain(secrets)
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Parses config text; `origin` only names the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
                path: origin.to_owned(),
                message: e.to_string(),
            })?
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| ConfigError::Invalid {
            path: origin.to_owned(),
            field,
            message: message.to_owned(),
        };
        if let Err(message) = self.web.validate() {
            return Err(invalid("web.push_url", &message));
        }
        if let Err((field, message)) = self.http.validate() {
            return Err(invalid(field, message));
        }
        if let Err(message) = self.client_ip.validate() {
            return Err(invalid("client_ip.ipv6_prefix", &message));
        }
        if let Some(cluster) = &self.cluster {
            if let Err((field, message)) = cluster.validate() {
                return Err(invalid(field, &message));
            }
        }
        if let Err((field, message)) = self.telemetry.validate() {
            return Err(invalid(field, &message));
        }
        if !self.listen.internal.ip().is_loopback() && self.push.internal_tls.is_none() {
            return Err(invalid(
                "listen.internal",
                "beyond loopback PushService needs TLS: set push.internal_tls { cert, key, client_ca } or bind to 127.0.0.1",
            ));
        }
        if let Err((field, message)) = self.push.validate(self.shutdown.grace_period.0) {
            return Err(invalid(field, message));
        }
        if self.cluster.is_some() && self.shutdown.grace_period.0 < Duration::from_secs(1) {
            return Err(invalid(
                "shutdown.grace_period",
                "cluster mode needs at least 1s: a draining node announces its leave (presence \
                 grace) in it, before its runtime stops",
            ));
        }
        if self.rate_limit.max_keys < 16 {
            return Err(invalid("rate_limit.max_keys", "must be at least 16"));
        }
        if self.rate_limit.sweep_interval.0 < Duration::from_millis(100) {
            return Err(invalid(
                "rate_limit.sweep_interval",
                "must be at least 100ms",
            ));
        }
        if self.threads == 0 || self.threads > 256 {
            return Err(invalid("threads", "must be between 1 and 256"));
        }
        if let Err((field, message)) = self.listen.check_distinct() {
            return Err(invalid(field, &message));
        }
        Ok(())
    }
}

impl Listen {
    /// The listeners in the order their fields are written, with those fields' names.
    pub fn named(&self) -> [(&'static str, SocketAddr); 4] {
        [
            ("listen.edge", self.edge),
            ("listen.push", self.push),
            ("listen.internal", self.internal),
            ("listen.admin", self.admin),
        ]
    }

    /// No two listeners may share a port on overlapping addresses (the same IP, or either one
    /// the wildcard): the second bind would fail, or, through Pingora's table of listening
    /// sockets keyed by address, two listeners would own one descriptor and close it twice.
    /// Port 0 (any free port) never collides. The error names the later field.
    pub fn check_distinct(&self) -> Result<(), (&'static str, String)> {
        let named = self.named();
        for (i, (field, addr)) in named.iter().enumerate() {
            for (earlier, other) in &named[..i] {
                if addr.port() != 0 && overlap(*addr, *other) {
                    return Err((
                        field,
                        format!(
                            "{addr} collides with {earlier} ({other}): give every listener its own port"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether two listen addresses would compete for one socket.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults() {
        let cfg = GatewayConfig::parse("", Path::new("g.yaml")).unwrap();
        assert_eq!(cfg.listen.edge.port(), 8080);
        assert_eq!(cfg.listen.admin.port(), 9901);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = GatewayConfig::parse("listen: { edgee: 1.2.3.4:1 }", Path::new("g.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("edgee"), "{err}");
    }

    #[test]
    fn colliding_listeners_are_refused_by_field() {
        for (yaml, field) in [
            (
                "listen: { edge: 127.0.0.1:7000, push: 127.0.0.1:7000 }",
                "listen.push",
            ),
            ("listen: { admin: 127.0.0.1:8080 }", "listen.admin"),
            (
                "listen: { edge: 127.0.0.1:7001, internal: 127.0.0.1:7001 }",
                "listen.internal",
            ),
            (
                "listen: { push: 127.0.0.1:9001, admin: 127.0.0.1:9001 }",
                "listen.admin",
            ),
        ] {
            let err = GatewayConfig::parse(yaml, Path::new("g.yaml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(field) && err.contains("collides"),
                "{yaml}: {err}"
            );
        }
        let apart = "listen: { edge: 127.0.0.1:0, push: 127.0.0.1:0, admin: 127.0.0.2:9901 }";
        assert!(GatewayConfig::parse(apart, Path::new("g.yaml")).is_ok());
    }

    #[test]
    fn zero_threads_rejected() {
        let err = GatewayConfig::parse("threads: 0", Path::new("g.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("threads"), "{err}");
    }

    #[test]
    fn push_limits_are_validated_by_field() {
        for (yaml, field) in [
            (
                "push: { drain_window: 10s }\nshutdown: { grace_period: 5s }",
                "push.drain_window",
            ),
            (
                "push: { frame_rate: { per_second: 0, burst: 10 } }",
                "push.frame_rate",
            ),
            (
                "push: { handshake_rate: { per_second: 5, burst: 0 } }",
                "push.handshake_rate",
            ),
            (
                "push: { max_connections_per_ip: 0 }",
                "push.max_connections",
            ),
        ] {
            let err = GatewayConfig::parse(yaml, Path::new("g.yaml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{yaml}: {err}");
        }
        let ok = "push: { drain_window: 2s, frame_rate: { per_second: 10, burst: 20 } }";
        assert!(GatewayConfig::parse(ok, Path::new("g.yaml")).is_ok());
    }
}
