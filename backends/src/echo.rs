//! `im.echo.v1.EchoService`: answers with what it received and what identity metadata it saw,
//! optionally after a delay or with a chosen status, and can flip its own `grpc.health.v1` status.
//! Those diagnostics (`delay_ms`, `fail_code`, `reply_padding`, `SetHealth`) answer only when the
//! backend runs with `--diagnostics` (tests and benchmarks); otherwise they are PERMISSION_DENIED
//! and a plain echo of text is all anyone reaching the service gets.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use im_proto::im::echo::v1::echo_service_server::{EchoService, EchoServiceServer};
use im_proto::im::echo::v1::{EchoReply, EchoRequest, SetHealthReply, SetHealthRequest};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

pub const SERVICE_NAME: &str = "im.echo.v1.EchoService";
/// Metadata keys echoed back in `EchoReply.metadata` (the credentials too, to the caller who sent
/// them: whether they reached the backend is what a route's `forward_credentials` decides).
const ECHOED_METADATA: [&str; 9] = [
    "authorization",
    "x-api-key",
    "x-api-client",
    "x-user-id",
    "x-device-id",
    "x-platform",
    "x-session-id",
    "x-request-id",
    "traceparent",
];
/// Upper bound on `delay_ms` and `reply_padding`, so a request cannot park or bloat the backend.
const MAX_DELAY_MS: u32 = 60_000;
const MAX_PADDING: u32 = 16 << 20;

pub struct Echo {
    served_by: String,
    health: HealthReporter,
    calls: Arc<AtomicU64>,
    /// Whether delays, chosen failures, padding and health flips are honoured.
    diagnostics: bool,
}

impl Echo {
    /// `served_by` is reported in every reply; `health` is flipped by `SetHealth` when
    /// `diagnostics` is on.
    pub fn new(
        served_by: String,
        health: HealthReporter,
        calls: Arc<AtomicU64>,
        diagnostics: bool,
    ) -> Self {
        Self {
            served_by,
            health,
            calls,
            diagnostics,
        }
    }

    fn require_diagnostics(&self, what: &str) -> Result<(), Status> {
        if self.diagnostics {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{what} is a diagnostic; this backend runs without --diagnostics"
            )))
        }
    }
}

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let metadata = ECHOED_METADATA
            .iter()
            .filter_map(|k| {
                let v = request.metadata().get(*k)?.to_str().ok()?;
                Some((k.to_string(), v.to_owned()))
            })
            .collect();
        let req = request.into_inner();
        for (set, field) in [
            (req.delay_ms > 0, "delay_ms"),
            (req.fail_code != 0, "fail_code"),
            (req.reply_padding > 0, "reply_padding"),
        ] {
            if set {
                self.require_diagnostics(field)?;
            }
        }
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(req.delay_ms.min(MAX_DELAY_MS).into())).await;
        }
        if req.fail_code != 0 {
            return Err(Status::new(Code::from(req.fail_code), req.fail_message));
        }
        Ok(Response::new(EchoReply {
            text: req.text,
            number: req.number,
            tags: req.tags,
            flag: req.flag,
            served_by: self.served_by.clone(),
            metadata,
            padding: vec![b'x'; req.reply_padding.min(MAX_PADDING) as usize],
        }))
    }

    async fn echo_v2(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let mut reply = self.echo(request).await?;
        let text = reply.get_ref().text.to_uppercase();
        reply.get_mut().text = text;
        Ok(reply)
    }

    async fn set_health(
        &self,
        request: Request<SetHealthRequest>,
    ) -> Result<Response<SetHealthReply>, Status> {
        self.require_diagnostics("SetHealth")?;
        let status = if request.into_inner().serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status(SERVICE_NAME, status).await;
        self.health.set_service_status("", status).await;
        Ok(Response::new(SetHealthReply {}))
    }
}

/// Serves the echo service (diagnostics on) and `grpc.health.v1` on `listener` until `shutdown`
/// resolves. `calls` counts `Echo` calls received (tests use it to prove a request never reached
/// a backend).
pub async fn serve(
    listener: TcpListener,
    max_message: usize,
    calls: Arc<AtomicU64>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // A bound listener has an address; without one the echo names itself by its role.
    let addr = listener
        .local_addr()
        .map_or_else(|_| "echo".to_owned(), |a: SocketAddr| a.to_string());
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;
    let echo = Echo::new(addr, health, calls, true);
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(
            EchoServiceServer::new(echo)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}
