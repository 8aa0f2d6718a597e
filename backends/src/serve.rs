//! One tonic server for the services `--services` names: the shared parts opened once (the
//! database, phone rules, the PushService client), each service built with the message limits,
//! health and reflection beside them, every call in a span whose parent is the caller's.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use im_proto::im::echo::v1::echo_service_server::EchoServiceServer;
use im_proto::im::file::v1::file_service_server::FileServiceServer;
use im_proto::im::friend::v1::friend_service_server::FriendServiceServer;
use im_proto::im::message::v1::msg_storage_service_server::MsgStorageServiceServer;
use im_proto::im::message::v1::msg_transmit_service_server::MsgTransmitServiceServer;
use im_proto::im::speech::v1::speech_service_server::SpeechServiceServer;
use im_proto::im::user::v1::user_service_server::UserServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::{
    db, echo, file, friend, hashing, message, notify, phone, register, speech, token, user,
    BackendConfig, ALL_SERVICES,
};

/// Serves the configured services on `listener` until `shutdown` resolves.
pub async fn serve(
    cfg: BackendConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    check_names(&cfg.services)?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let shared = Shared::open(&cfg)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(im_proto::DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let services = Services::build(&cfg, &shared, addr, &health)?;
    services.report(&health).await;
    tracing::info!(%addr, services = ?cfg.services, "im-backends serving");
    // Registered once serving; on shutdown the registration goes first, so gateways stop
    // picking this process before it stops answering.
    let registrar = cfg
        .register
        .clone()
        .map(|reg| register::Registrar::start(reg, services.names.clone()));
    let shutdown = async move {
        shutdown.await;
        if let Some(r) = registrar {
            r.stop().await;
        }
    };
    let ratio = cfg.trace_sample_ratio;
    tonic::transport::Server::builder()
        .trace_fn(move |request| call_span(request, ratio))
        .add_service(health_service)
        .add_service(reflection)
        .add_optional_service(services.user)
        .add_optional_service(services.friend)
        .add_optional_service(services.transmit)
        .add_optional_service(services.storage)
        .add_optional_service(services.file)
        .add_optional_service(services.speech)
        .add_optional_service(services.echo)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
        .map_err(|e| e.to_string())
}

/// Every name in `services` is one of [`ALL_SERVICES`].
pub fn check_names(services: &[String]) -> Result<(), String> {
    match services
        .iter()
        .find(|s| !ALL_SERVICES.contains(&s.as_str()))
    {
        Some(s) => Err(format!(
            "--services: unknown service `{s}`; available: {}",
            ALL_SERVICES.join(",")
        )),
        None => Ok(()),
    }
}

/// What several services use, opened once.
struct Shared {
    /// Opened whenever a stateful service is wanted.
    db: Option<db::Db>,
    phones: phone::PhoneRules,
    notifier: notify::Notifier,
}

impl Shared {
    fn open(cfg: &BackendConfig) -> Result<Self, String> {
        let stateful = ["user", "friend", "message", "file"]
            .iter()
            .any(|s| cfg.wants(s));
        let phones = phone::PhoneRules::new(&cfg.default_country_code)?;
        let db = stateful.then(|| db::Db::open(&cfg.database)).transpose()?;
        if let Some(db) = &db {
            db.with_writer(|c| phones.normalize_stored(c))
                .map_err(|e| {
                    format!("{}: normalizing stored phones: {e}", cfg.database.display())
                })?;
        }
        let notifier = notify::Notifier::new(
            cfg.push_addr.as_deref(),
            cfg.internal_token.as_deref(),
            cfg.push_tls.as_ref(),
        )?;
        Ok(Self {
            db,
            phones,
            notifier,
        })
    }

    fn db_for(&self, service: &str) -> Result<db::Db, String> {
        self.db
            .clone()
            .ok_or_else(|| format!("{service}: no database opened (a bug)"))
    }
}

/// A service server with the configured message limits both ways.
macro_rules! limited {
    ($server:expr, $limit:expr) => {
        $server
            .max_decoding_message_size($limit)
            .max_encoding_message_size($limit)
    };
}

/// The servers asked for (the others `None`), and what health reports for them.
struct Services {
    user: Option<UserServiceServer<user::UserSvc>>,
    friend: Option<FriendServiceServer<friend::FriendSvc>>,
    transmit: Option<MsgTransmitServiceServer<message::MessageSvc>>,
    storage: Option<MsgStorageServiceServer<message::MessageSvc>>,
    file: Option<FileServiceServer<file::FileSvc>>,
    speech: Option<SpeechServiceServer<speech::SpeechSvc>>,
    echo: Option<EchoServiceServer<echo::Echo>>,
    /// gRPC names reported SERVING (and registered in etcd).
    names: Vec<&'static str>,
    /// Reported NOT_SERVING: speech without its recognizer.
    not_serving: Vec<&'static str>,
}

impl Services {
    fn build(
        cfg: &BackendConfig,
        shared: &Shared,
        addr: SocketAddr,
        health: &HealthReporter,
    ) -> Result<Self, String> {
        let limit = cfg.max_message;
        let mut names = Vec::new();
        let mut not_serving = Vec::new();
        let user = match cfg.wants("user") {
            true => Some(limited!(
                UserServiceServer::new(user_svc(cfg, shared)?),
                limit
            )),
            false => None,
        };
        let friend = match cfg.wants("friend") {
            true => Some(limited!(
                FriendServiceServer::new(friend_svc(shared)?),
                limit
            )),
            false => None,
        };
        let message = match cfg.wants("message") {
            true => Some(message::MessageSvc {
                db: shared.db_for("message")?,
                notifier: shared.notifier.clone(),
            }),
            false => None,
        };
        let file = match cfg.wants("file") {
            true => Some(limited!(
                FileServiceServer::new(file_svc(cfg, shared)?),
                limit
            )),
            false => None,
        };
        let speech = cfg.wants("speech").then(|| {
            let svc = speech::SpeechSvc::new(cfg.speech.clone());
            // Without its recognizer the service answers UNAVAILABLE and health says NOT_SERVING.
            match svc.installed() {
                true => names.push(speech::SERVICE_NAME),
                false => not_serving.push(speech::SERVICE_NAME),
            }
            limited!(SpeechServiceServer::new(svc), limit)
        });
        let echo = cfg.wants("echo").then(|| {
            let svc = echo::Echo::new(
                addr.to_string(),
                health.clone(),
                Default::default(),
                cfg.diagnostics,
            );
            limited!(EchoServiceServer::new(svc), limit)
        });
        let wanted = [
            (user.is_some(), user::SERVICE_NAME),
            (friend.is_some(), friend::SERVICE_NAME),
            (message.is_some(), message::TRANSMIT_SERVICE_NAME),
            (message.is_some(), message::STORAGE_SERVICE_NAME),
            (file.is_some(), file::SERVICE_NAME),
            (echo.is_some(), echo::SERVICE_NAME),
        ];
        names.extend(wanted.iter().filter(|(on, _)| *on).map(|(_, name)| *name));
        Ok(Self {
            user,
            friend,
            transmit: message
                .clone()
                .map(|m| limited!(MsgTransmitServiceServer::new(m), limit)),
            storage: message.map(|m| limited!(MsgStorageServiceServer::new(m), limit)),
            file,
            speech,
            echo,
            names,
            not_serving,
        })
    }

    async fn report(&self, health: &HealthReporter) {
        for name in &self.names {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        for name in &self.not_serving {
            health
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
    }
}

fn friend_svc(shared: &Shared) -> Result<friend::FriendSvc, String> {
    Ok(friend::FriendSvc {
        db: shared.db_for("friend")?,
        notifier: shared.notifier.clone(),
        phones: shared.phones.clone(),
    })
}

fn file_svc(cfg: &BackendConfig, shared: &Shared) -> Result<file::FileSvc, String> {
    Ok(file::FileSvc {
        db: shared.db_for("file")?,
        store: Arc::new(file::FileStore::open(&cfg.files_dir, cfg.max_file_size)?),
        max_reply: cfg.max_message,
        max_storage_per_user: cfg.max_storage_per_user,
    })
}

fn user_svc(cfg: &BackendConfig, shared: &Shared) -> Result<user::UserSvc, String> {
    let secret = cfg.jwt_secret.as_deref().ok_or(
        "the user service mints tokens: pass --jwt-secret-file (the gateway's auth.hs256_secret_file)",
    )?;
    let tokens = token::TokenIssuer::hs256(
        secret,
        cfg.issuer.clone(),
        cfg.audience.clone(),
        cfg.token_ttl,
    )?;
    Ok(user::UserSvc {
        db: shared.db_for("user")?,
        tokens,
        sms: cfg.sms.clone(),
        notifier: shared.notifier.clone(),
        code_interval: cfg.code_interval,
        codes_per_day: cfg.codes_per_day,
        phones: shared.phones.clone(),
        hasher: hashing::HashPool::start(cfg.hash_workers, cfg.hash_queue)?,
        max_session: cfg.max_session,
    })
}

/// The span of one call (the handler's), its parent the caller's `traceparent` (the gateway's
/// upstream attempt): with trace export on, one trace runs from the client to here.
fn call_span(request: &http::Request<()>, ratio: f64) -> tracing::Span {
    let method = request.uri().path();
    let parent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    let span = im_telemetry::root_span!(
        im_telemetry::traceparent::sampled(parent, ratio),
        "rpc",
        otel.name = %method.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %method,
    );
    if let Some(parent) = parent {
        im_telemetry::traceparent::set_parent(&span, parent);
    }
    span
}
