//! The dispatcher: one path from a unary route to a backend, shared by the HTTP bridge and
//! WebSocket cmd frames (through [`crate::pipeline`]). Route -> pool -> endpoint -> tonic client with a pass-through
//! codec -> status; retries only attempts the backend provably never processed (DESIGN §4).

pub mod error;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::Status;
use tracing::Instrument;

pub use error::{code_name, http_status_of, AttemptFailure, DispatchError, TransportFailure};
pub use im_proto::codec::PassThroughCodec;

use crate::filters::auth::Identity;
use crate::metrics::Metrics;
use crate::routes::UnaryRoute;
use crate::upstream::{ChannelCache, Endpoint, Upstream};

/// Who is calling and how to trace it: becomes gRPC metadata. Built by the gateway from the
/// verified token and the request, never from client-sent identity headers.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    pub request_id: String,
    pub traceparent: Option<String>,
    /// The call's trace id, for its log lines (which do not show spans at `info`).
    pub trace_id: Option<String>,
    pub user_id: Option<String>,
    pub device_id: Option<String>,
    pub platform: Option<String>,
    /// The token's `sid` (what `Revoke` takes, e.g. on logout).
    pub session_id: Option<String>,
    /// The session's absolute end (unix seconds), so a backend refreshing the token keeps it.
    pub session_end: Option<u64>,
    /// Owner of the API key on `auth: api_key` routes.
    pub api_client: Option<String>,
    /// The upstream attempts' endpoint and time, for the access log and the gateway-own
    /// latency (shared by clones of this context).
    pub endpoint: UpstreamNote,
}

/// Where the dispatcher notes the endpoint it called last and the time its attempts took.
#[derive(Debug, Clone, Default)]
pub struct UpstreamNote(Arc<std::sync::Mutex<(Option<SocketAddr>, std::time::Duration)>>);

impl UpstreamNote {
    fn attempted(&self, addr: SocketAddr, took: std::time::Duration) {
        let mut note = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        note.0 = Some(addr);
        note.1 += took;
    }

    /// The endpoint of the last attempt.
    pub fn get(&self) -> Option<SocketAddr> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
    }

    /// The time spent in upstream attempts.
    pub fn upstream_time(&self) -> std::time::Duration {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
    }
}

/// Metadata only the gateway sets (from the verified token); client-sent copies are stripped.
pub const IDENTITY_HEADERS: [&str; 6] = [
    "x-user-id",
    "x-device-id",
    "x-platform",
    "x-session-id",
    "x-session-end",
    "x-api-client",
];

impl CallContext {
    /// A call on behalf of `identity` (none: anonymous) with the request's id and trace context.
    pub fn new(
        request_id: String,
        traceparent: Option<String>,
        identity: Option<&Identity>,
        api_client: Option<String>,
    ) -> Self {
        Self {
            request_id,
            traceparent,
            trace_id: None,
            user_id: identity.map(|i| i.user_id.clone()),
            device_id: identity.and_then(|i| i.device_id.clone()),
            platform: identity.and_then(|i| i.platform.clone()),
            session_id: identity.and_then(|i| i.sid.clone()),
            session_end: identity.map(|i| i.session_end),
            api_client,
            endpoint: UpstreamNote::default(),
        }
    }

    /// The consistent-hash key: the user id, else the request id (spreads anonymous calls).
    pub fn hash_key(&self) -> &[u8] {
        self.user_id
            .as_deref()
            .unwrap_or(&self.request_id)
            .as_bytes()
    }

    /// Visits the identity headers ([`IDENTITY_HEADERS`]) this call sets, as (name, value): the
    /// gRPC metadata of a dispatched call and the request headers of a proxied one. Borrows; only
    /// the session end is formatted.
    pub fn for_each_identity_header(&self, mut visit: impl FnMut(&'static str, &str)) {
        let session_end = self.session_end.map(|t| t.to_string());
        let pairs = [
            ("x-user-id", self.user_id.as_deref()),
            ("x-device-id", self.device_id.as_deref()),
            ("x-platform", self.platform.as_deref()),
            ("x-session-id", self.session_id.as_deref()),
            ("x-session-end", session_end.as_deref()),
            ("x-api-client", self.api_client.as_deref()),
        ];
        for (name, value) in pairs {
            if let Some(v) = value {
                visit(name, v);
            }
        }
    }

    /// The call's gRPC metadata; `traceparent`: the attempt's (see [`crate::telemetry::next_hop`]).
    fn metadata(&self, traceparent: Option<&str>) -> MetadataMap {
        let mut md = MetadataMap::with_capacity(8);
        let mut insert = |key: &'static str, value: &str| {
            if let Ok(v) = AsciiMetadataValue::try_from(value) {
                md.insert(key, v);
            }
        };
        insert("x-request-id", &self.request_id);
        if let Some(t) = traceparent {
            insert("traceparent", t);
        }
        self.for_each_identity_header(insert);
        md
    }
}

pub struct Dispatcher {
    channels: ChannelCache,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            channels: ChannelCache::default(),
            metrics,
        }
    }

    pub fn channels(&self) -> &ChannelCache {
        &self.channels
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A backend reply that does not match the route's output type (it cannot be rendered as
    /// JSON): logged and counted here for HTTP and WebSocket alike; the caller answers 502 /
    /// INTERNAL with [`crate::pipeline::INVALID_REPLY`].
    pub fn invalid_reply(&self, route: &str, ctx: &CallContext, error: &str) {
        tracing::error!(
            route,
            request_id = ctx.request_id,
            trace_id = ctx.trace_id.as_deref().unwrap_or("-"),
            error,
            "backend reply does not match the descriptor set"
        );
        self.metrics
            .upstream_invalid_replies
            .with_label_values(&[route])
            .inc();
    }

    /// Calls the route's unary method with `body` (encoded request message) and returns the
    /// encoded response message; one `upstream` span per attempt, inside the caller's `call` span.
    pub async fn unary(
        &self,
        route: &UnaryRoute,
        body: Bytes,
        ctx: &CallContext,
    ) -> Result<Bytes, DispatchError> {
        let path = &route.path;
        let upstream = &route.upstream;
        let mut tried: Vec<SocketAddr> = Vec::with_capacity(1 + upstream.retries as usize);
        let mut last_error = None;
        for attempt in 0..=upstream.retries {
            let Some(endpoint) = upstream.select(ctx.hash_key(), &tried) else {
                break;
            };
            tried.push(endpoint.addr);
            if attempt > 0 {
                self.metrics
                    .retries
                    .with_label_values(&[&upstream.name])
                    .inc();
            }
            let _inflight = endpoint.state.begin();
            let span = tracing::info_span!(
                "upstream",
                otel.name = path.as_str(),
                otel.kind = "client",
                rpc.system = "grpc",
                server.address = %endpoint.addr,
                im.upstream = upstream.name.as_str(),
                im.attempt = i64::from(attempt),
                otel.status_code = tracing::field::Empty,
            );
            let started = std::time::Instant::now();
            let result = self
                .attempt(upstream, endpoint.addr, path.clone(), body.clone(), ctx)
                .instrument(span.clone())
                .await;
            let took = started.elapsed();
            ctx.endpoint.attempted(endpoint.addr, took);
            let code = match &result {
                Ok(_) => 0,
                Err((e, _)) => e.code() as i32,
            };
            self.metrics
                .upstream_latency
                .with_label_values(&[path.as_str(), &endpoint.addr.to_string(), &code.to_string()])
                .observe(took.as_secs_f64());
            if result.is_err() {
                span.record("otel.status_code", "ERROR");
            }
            match result {
                Ok(bytes) => return Ok(bytes),
                Err((err, failure)) => {
                    self.count_failure(upstream, endpoint, &err, failure, ctx);
                    if failure == AttemptFailure::Final {
                        return Err(err);
                    }
                    last_error = Some(err);
                }
            }
        }
        Err(
            last_error.unwrap_or_else(|| DispatchError::NoHealthyEndpoint {
                upstream: upstream.name.clone(),
            }),
        )
    }

    /// Counts a failed attempt by kind (a failed connect also tells the endpoint's health);
    /// an answer with a gRPC status is not a failure of the upstream.
    fn count_failure(
        &self,
        upstream: &Upstream,
        endpoint: &Endpoint,
        err: &DispatchError,
        failure: AttemptFailure,
        ctx: &CallContext,
    ) {
        let kind = match failure {
            AttemptFailure::Connect => {
                endpoint
                    .state
                    .connect_failed(upstream.health_check.is_some());
                "connect"
            }
            AttemptFailure::Refused => "refused",
            AttemptFailure::Final => match err {
                DispatchError::Timeout { .. } => "timeout",
                DispatchError::Transport { .. } => "transport",
                _ => return,
            },
        };
        self.metrics
            .upstream_failures
            .with_label_values(&[&upstream.name, kind])
            .inc();
        tracing::warn!(upstream = %upstream.name, endpoint = %endpoint.addr, request_id = %ctx.request_id, trace_id = ctx.trace_id.as_deref().unwrap_or("-"), error = %err, "upstream attempt failed");
    }

    async fn attempt(
        &self,
        upstream: &Upstream,
        addr: SocketAddr,
        path: http::uri::PathAndQuery,
        body: Bytes,
        ctx: &CallContext,
    ) -> Result<Bytes, (DispatchError, AttemptFailure)> {
        let channel = self.channels.get(addr).map_err(|detail| {
            let failed = DispatchError::ConnectFailed {
                upstream: upstream.name.clone(),
                addr,
                detail,
            };
            (failed, AttemptFailure::Connect)
        })?;
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(upstream.max_message)
            .max_encoding_message_size(upstream.max_message);
        let mut request = tonic::Request::new(body);
        let traceparent = crate::telemetry::next_hop(ctx.traceparent.as_deref());
        *request.metadata_mut() = ctx.metadata(traceparent.as_deref());
        request.set_timeout(upstream.timeout);
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            grpc.unary(request, path, PassThroughCodec).await
        };
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(upstream.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            // The backend enforces the same `grpc-timeout` and may answer CANCELLED a moment
            // before our timer fires: past the deadline, whoever noticed first, it is a timeout.
            Ok(Err(status)) if started.elapsed() < upstream.timeout => {
                Err(self.classify(upstream, addr, status))
            }
            Ok(Err(_)) | Err(_) => Err((
                DispatchError::Timeout {
                    upstream: upstream.name.clone(),
                    after: upstream.timeout,
                },
                AttemptFailure::Final,
            )),
        }
    }

    fn classify(
        &self,
        upstream: &Upstream,
        addr: SocketAddr,
        status: Status,
    ) -> (DispatchError, AttemptFailure) {
        let detail = || {
            let mut text = status.message().to_owned();
            let mut src = std::error::Error::source(&status);
            while let Some(e) = src {
                text.push_str(": ");
                text.push_str(&e.to_string());
                src = e.source();
            }
            text
        };
        match error::classify(&status) {
            None => (DispatchError::Status(status), AttemptFailure::Final),
            Some(TransportFailure::TimedOut) => (
                DispatchError::Timeout {
                    upstream: upstream.name.clone(),
                    after: upstream.timeout,
                },
                AttemptFailure::Final,
            ),
            Some(TransportFailure::Connect) => (
                DispatchError::ConnectFailed {
                    upstream: upstream.name.clone(),
                    addr,
                    detail: detail(),
                },
                AttemptFailure::Connect,
            ),
            Some(kind) => (
                DispatchError::Transport {
                    upstream: upstream.name.clone(),
                    addr,
                    detail: detail(),
                },
                if kind == TransportFailure::Refused {
                    AttemptFailure::Refused
                } else {
                    AttemptFailure::Final
                },
            ),
        }
    }
}
