//! Admission before dispatch, one implementation for HTTP bridge routes, gRPC pass-through
//! routes and WebSocket cmd frames: authenticate ([`auth`]), authorize roles, rate-limit
//! ([`ratelimit`]) keyed by the real client IP ([`client_ip`]); plus CORS ([`cors`]), request ids
//! ([`request_id`]) and the session denylist ([`revocation`]).

pub mod auth;
pub mod client_ip;
pub mod cluster_limit;
pub mod cors;
pub mod ratelimit;
pub mod request_id;
pub mod revocation;
pub mod revocation_log;
pub mod secret;

use std::net::IpAddr;
use std::sync::Arc;

use tonic::Code;

use crate::call_error::CallError;
use crate::metrics::Metrics;
use crate::policy::{AuthMode, LimitScope, RateLimitKey};
use auth::{AuthFailure, Authenticator, Identity};
use client_ip::ClientIpConfig;
use cluster_limit::ClusterLimits;
use cors::CorsConfig;
use ratelimit::{Decision, RouteLimit};

/// What a route asks of its callers: the authentication mode, roles (any one of them), and the
/// rate limit. Every route kind has one; [`Guard::admit`] is the only place it is applied.
#[derive(Clone)]
pub struct Admission {
    pub auth: AuthMode,
    pub roles: Vec<String>,
    pub limit: Option<RouteLimit>,
}

/// What a request presents.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    pub bearer: Option<&'a str>,
    pub api_key: Option<&'a str>,
    /// An identity verified at a WebSocket handshake: checked for expiry and revocation again on
    /// every call, without keeping (or re-reading) the token.
    pub session: Option<&'a Arc<Identity>>,
}

impl Credentials<'_> {
    fn identity(&self, auth: &Authenticator) -> Result<Arc<Identity>, AuthFailure> {
        match (self.session, self.bearer) {
            (Some(id), _) => auth.check_live(id).map(|()| id.clone()),
            (None, Some(token)) => auth.verify(token),
            (None, None) => Err(AuthFailure::Missing),
        }
    }
}

/// A request let through: who it is and the rate-limit state for the response headers.
#[derive(Debug, Clone, Default)]
pub struct Admitted {
    pub identity: Option<Arc<Identity>>,
    /// The API key's owner on `auth: api_key` routes.
    pub api_client: Option<String>,
    pub limit: Option<Decision>,
}

/// `RateLimit-*` (and on rejection `Retry-After`) headers for a decision.
pub fn limit_headers(d: &Decision) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("ratelimit-limit", d.limit.to_string()),
        ("ratelimit-remaining", d.remaining.to_string()),
        ("ratelimit-reset", d.reset_secs.to_string()),
    ];
    if !d.allowed {
        h.push(("retry-after", d.retry_after_secs.to_string()));
    }
    h
}

/// The gateway's admission filters and their settings.
pub struct Guard {
    pub auth: Authenticator,
    pub client_ip: ClientIpConfig,
    pub cors: CorsConfig,
    pub metrics: Arc<Metrics>,
    /// Cluster mode: where `scope: cluster` limits are decided; `None` on a single node (such
    /// limits then count per node).
    pub cluster_limits: Option<ClusterLimits>,
}

impl Guard {
    /// Authenticates, authorizes and rate-limits one call of the route `route` (its name labels
    /// the metrics).
    pub async fn admit(
        &self,
        route: &str,
        admission: &Admission,
        creds: Credentials<'_>,
        client_ip: IpAddr,
    ) -> Result<Admitted, CallError> {
        let mut admitted = Admitted::default();
        match admission.auth {
            AuthMode::Required => match creds.identity(&self.auth) {
                Ok(id) => admitted.identity = Some(id),
                Err(f) => return Err(self.auth_failed(f)),
            },
            // A valid token still passes identity along; a bad or stale one is ignored.
            AuthMode::None => admitted.identity = creds.identity(&self.auth).ok(),
            AuthMode::ApiKey => match creds
                .api_key
                .ok_or(AuthFailure::ApiKey)
                .and_then(|k| self.auth.api_client(k))
            {
                Ok(name) => admitted.api_client = Some(name.to_owned()),
                Err(f) => return Err(self.auth_failed(f)),
            },
        }
        if !admission.roles.is_empty() {
            let roles = admitted.identity.as_ref().map_or(&[][..], |i| &i.roles[..]);
            if !admission.roles.iter().any(|r| roles.contains(r)) {
                self.metrics
                    .auth_failures
                    .with_label_values(&["role"])
                    .inc();
                let needed = admission.roles.join(", ");
                return Err(CallError::new(
                    403,
                    Code::PermissionDenied,
                    format!("this call needs one of the roles: {needed}"),
                ));
            }
        }
        if let Some(limit) = &admission.limit {
            let key = match (limit.spec.key, &admitted.identity, &admitted.api_client) {
                (RateLimitKey::Ip, _, _) | (_, None, None) => {
                    format!("ip:{}", self.client_ip.bucket(client_ip))
                }
                (_, Some(id), _) => format!("u:{}", id.user_id),
                (_, None, Some(client)) => format!("k:{client}"),
            };
            let decision = match (&self.cluster_limits, limit.spec.scope) {
                (Some(cluster), LimitScope::Cluster) => {
                    cluster.check(&limit.id, &limit.spec, &key).await
                }
                _ => limit.limiter.check(&key),
            };
            admitted.limit = Some(decision);
            if !decision.allowed {
                let kind = match limit.spec.key {
                    RateLimitKey::Ip => "ip",
                    RateLimitKey::User => "user",
                    RateLimitKey::RouteUser => "route_user",
                };
                self.metrics
                    .ratelimit_rejections
                    .with_label_values(&[route, kind])
                    .inc();
                let mut refused =
                    CallError::new(429, Code::ResourceExhausted, "rate limit exceeded");
                refused.limit = Some(decision);
                return Err(refused);
            }
        }
        Ok(admitted)
    }

    fn auth_failed(&self, f: AuthFailure) -> CallError {
        self.metrics
            .auth_failures
            .with_label_values(&[f.reason()])
            .inc();
        CallError::new(401, Code::Unauthenticated, f.to_string())
    }
}
