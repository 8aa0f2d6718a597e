//! `im.gateway.v1.PushService` for backends (DESIGN §8), on the internal listener: every call
//! must carry `authorization: Bearer <internal token>`. Push frames are encoded once per encoding
//! in use and shared by every recipient.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use im_proto::im::gateway::v1::push_service_server::{PushService, PushServiceServer};
use im_proto::im::gateway::v1::{
    DevicePresence, KickReply, KickRequest, PresenceReply, PresenceRequest, Push, PushReply,
    PushRequest, RevokeReply, RevokeRequest, UserPresence,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::config::InternalTls;
use super::control;
use super::fanout::{fan_out, Targets};
use super::remote;
use super::PushDeps;
use crate::clock::{unix_now, unix_now_ms};
use crate::filters::request_id;
use crate::filters::revocation::MAX_SESSION_SECS;

/// Upper bound on recipients of one Push call.
const MAX_RECIPIENT_USERS: usize = 100_000;

/// What a Push call must carry: a bounded recipient list, a kind, a payload type the gateway
/// knows.
fn check_push(
    req: &PushRequest,
    descriptors: &prost_reflect::DescriptorPool,
) -> Result<(), Status> {
    if req.user_ids.len() > MAX_RECIPIENT_USERS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_RECIPIENT_USERS} user_ids per call"
        )));
    }
    if req.kind.is_empty() {
        return Err(Status::invalid_argument("kind is required"));
    }
    if descriptors.get_message_by_name(&req.payload_type).is_none() {
        return Err(Status::invalid_argument(format!(
            "unknown payload_type `{}`",
            req.payload_type
        )));
    }
    Ok(())
}

/// One span per call, however many recipients (never one per socket), a child of the caller's.
fn push_span(
    push: &Push,
    users: usize,
    traceparent: Option<&str>,
    deps: &PushDeps,
) -> tracing::Span {
    let sampled = crate::telemetry::sampled(traceparent, deps.pipeline.sample_ratio);
    let span = im_telemetry::root_span!(
        sampled,
        "push",
        otel.kind = "server",
        im.push.kind = %push.kind,
        im.push.users = users as i64,
        im.push.delivered = tracing::field::Empty,
        im.push.online = tracing::field::Empty,
        im.push.offline = tracing::field::Empty,
    );
    if let Some(parent) = traceparent {
        im_telemetry::traceparent::set_parent(&span, parent);
    }
    span
}

pub struct PushSvc {
    pub deps: Arc<PushDeps>,
}

#[async_trait]
impl PushService for PushSvc {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushReply>, Status> {
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::pipeline::usable_traceparent);
        let req = request.into_inner();
        let table = self.deps.routes.load();
        check_push(&req, &table.descriptors)?;
        let push = Push {
            id: request_id::generate(),
            kind: req.kind,
            payload_type: req.payload_type,
            payload: req.payload,
            ts: unix_now_ms(),
        };
        let targets = Targets {
            platforms: &req.platforms,
            exclude_device_ids: &req.exclude_device_ids,
            newer_than: 0,
        };
        let span = push_span(
            &push,
            req.user_ids.len(),
            traceparent.as_deref(),
            &self.deps,
        );
        // The next hops (other nodes) are children of this call's span.
        let hop = im_telemetry::traceparent::of(&span).or(traceparent);
        let reply = match &self.deps.cluster {
            Some(cluster) => {
                remote::push(
                    cluster,
                    &self.deps,
                    &push,
                    &req.user_ids,
                    &targets,
                    hop.as_deref(),
                )
                .instrument(span.clone())
                .await
            }
            None => fan_out(
                &self.deps.hub,
                &push,
                &req.user_ids,
                &targets,
                &table.descriptors,
            ),
        }
        .map_err(Status::invalid_argument)?;
        span.record("im.push.delivered", i64::from(reply.delivered));
        span.record("im.push.online", i64::from(reply.users_online));
        span.record("im.push.offline", i64::from(reply.users_offline));
        self.deps
            .hub
            .metrics
            .pushes_offline
            .inc_by(u64::from(reply.users_offline));
        Ok(Response::new(reply))
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickReply>, Status> {
        let req = request.into_inner();
        let (mut closed, persisted) =
            control::kick_user(&self.deps, &req.user_id, &req.device_id, &req.reason);
        if let Some(cluster) = &self.deps.cluster {
            closed += remote::kick(cluster, &req.user_id, &req.device_id, &req.reason).await;
        }
        persisted
            .wait(control::PERSIST_TIMEOUT)
            .await
            .map_err(not_persisted)?;
        Ok(Response::new(KickReply { closed }))
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeReply>, Status> {
        let req = request.into_inner();
        if req.sid.is_empty() || req.sid.len() > 256 {
            return Err(Status::invalid_argument("sid must be 1 to 256 characters"));
        }
        // `exp`: the session's end as the backend knows it; absent, the longest a session lives.
        let until = u64::try_from(req.exp)
            .ok()
            .filter(|e| *e > 0)
            .unwrap_or(unix_now() + MAX_SESSION_SECS);
        let (closed, persisted) =
            control::end_session(&self.deps, &req.sid, until, control::Ending::Revoked);
        // Answered once on disk: an acknowledged logout survives a crash.
        persisted
            .wait(control::PERSIST_TIMEOUT)
            .await
            .map_err(not_persisted)?;
        Ok(Response::new(RevokeReply { closed }))
    }

    async fn presence(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<PresenceReply>, Status> {
        let req = request.into_inner();
        if req.user_ids.len() > MAX_RECIPIENT_USERS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_RECIPIENT_USERS} user_ids per call"
            )));
        }
        if let Some(cluster) = &self.deps.cluster {
            let users = remote::presence(cluster, &self.deps, req.user_ids).await;
            return Ok(Response::new(PresenceReply { users }));
        }
        let users = req
            .user_ids
            .into_iter()
            .map(|user_id| {
                let devices = self
                    .deps
                    .hub
                    .registry
                    .connections(&user_id)
                    .into_iter()
                    .map(|c| DevicePresence {
                        device_id: c.device.device_id,
                        platform: c.device.platform,
                    })
                    .collect();
                UserPresence { user_id, devices }
            })
            .collect();
        Ok(Response::new(PresenceReply { users }))
    }
}

/// A revocation in effect here that its file did not take: the caller must not take it as
/// lasting beyond a restart.
fn not_persisted(e: String) -> Status {
    Status::internal(format!(
        "revoked and closed, but not persisted (a restart would forget it): {e}"
    ))
}

/// `push.internal_tls` loaded and checked: the listener's identity and, for mTLS, the CA that
/// callers' certificates must chain to. Errors name the field and the file.
pub fn internal_tls(cfg: &InternalTls) -> Result<ServerTlsConfig, String> {
    let read = |field: &str, path: &Path| {
        std::fs::read(path).map_err(|e| {
            format!(
                "push.internal_tls.{field}: cannot read {}: {e}",
                path.display()
            )
        })
    };
    let identity = Identity::from_pem(read("cert", &cfg.cert)?, read("key", &cfg.key)?);
    let mut tls = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &cfg.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read("client_ca", ca)?));
    }
    tonic::transport::Server::builder()
        .tls_config(tls.clone())
        .map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            format!(
                "push.internal_tls: {} / {} are not a PEM certificate chain and its key{cause}",
                cfg.cert.display(),
                cfg.key.display()
            )
        })?;
    Ok(tls)
}

/// Runs PushService (and `grpc.health.v1`) on the internal listener until shutdown.
pub struct InternalGrpc {
    pub deps: Arc<PushDeps>,
    /// The listener, bound at start-up (a taken port stops it there); taken when serving starts.
    // A std Mutex: taken once.
    pub listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    pub addr: SocketAddr,
    /// TLS (and mTLS) of the listener, from [`internal_tls`]; plaintext (loopback) without.
    pub tls: Option<ServerTlsConfig>,
    /// SHA-256 of the internal token; `None` refuses every call.
    pub token_sha256: Option<[u8; 32]>,
    /// How long after shutdown starts the listener keeps taking calls (`shutdown.grace_period`
    /// less a margin): through the drain, then it stops taking new ones and finishes those in
    /// flight before the runtime stops.
    pub serve_after_shutdown: std::time::Duration,
}

fn authorized(expected: Option<[u8; 32]>, req: &Request<()>) -> Result<(), Status> {
    let presented = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::filters::auth::bearer);
    match (expected, presented) {
        (Some(want), Some(token)) => {
            if crate::filters::secret::matches(&want, token) {
                Ok(())
            } else {
                Err(Status::unauthenticated("bad internal token"))
            }
        }
        (None, _) => Err(Status::unauthenticated(
            "PushService has no internal token configured",
        )),
        (_, None) => Err(Status::unauthenticated("missing internal token")),
    }
}

#[async_trait]
impl BackgroundService for InternalGrpc {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let serve_after = self.serve_after_shutdown;
        let taken = self
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let listener = match taken.map(tokio::net::TcpListener::from_std) {
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                tracing::error!(addr = %self.addr, error = %e, "cannot serve the internal gRPC listener");
                return;
            }
            None => return,
        };
        let expected = self.token_sha256;
        let svc = PushServiceServer::with_interceptor(
            PushSvc {
                deps: self.deps.clone(),
            },
            move |req| authorized(expected, &req).map(|()| req),
        );
        let (_, health) = tonic_health::server::health_reporter();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            builder = match builder.tls_config(tls.clone()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "internal listener TLS did not load");
                    return;
                }
            };
        }
        tracing::info!(addr = %self.addr, tls = self.tls.is_some(), "PushService listening");
        let served = builder
            .add_service(health)
            .add_service(svc)
            // Through the drain too: the draining node still delivers to its remaining sessions
            // and, in cluster mode, through the others, and backends keep one channel to a node
            // (a Push refused mid-drain would be lost: Push is never resent). Then no new calls
            // (backends find the listener closed and move to the next gateway) while the calls
            // in flight finish, before the runtime stops and would cut them.
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    let _ = shutdown.changed().await;
                    tokio::time::sleep(serve_after).await;
                },
            )
            .await;
        if let Err(e) = served {
            // Its supervisor marks the gateway not ready (pushes cannot arrive any more).
            tracing::error!(addr = %self.addr, error = %e, "internal gRPC listener failed");
        }
    }
}
