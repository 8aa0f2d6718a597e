//! Backends behind the gateway: the reference IM services (DESIGN §10) and a diagnostic echo
//! service, served by one tonic server with `grpc.health.v1` and server reflection.
//!
//! # Layout
//! - [`user`], [`friend`], [`message`], [`file`]: the IM services; [`file_access`]: who may
//!   read a stored file; [`phone`]: phone numbers in E.164; [`hashing`]: argon2 on a fixed
//!   pool with preallocated memory.
//! - [`speech`]: speech-to-text with PocketSphinx run as a bounded subprocess; [`audio`]: WAV
//!   and raw PCM decoded to 16 kHz mono.
//! - [`echo`]: the diagnostic echo service (delays, failures, health flips) that the gateway's
//!   tests and benchmarks use as a trivial, controllable backend.
//! - [`db`]: SQLite (WAL, busy timeout, one writer, blocking pool) and the schema migrations.
//! - [`caller`]: identity from the gateway's metadata; [`error`]: what clients see on failure.
//! - [`token`]: JWT issuance; [`notify`]: PushService client; [`sms`]: verification-code sender.
//! - [`cli`]: the `im-backends` binary: run any subset of services on one address;
//!   [`register`]: its registration in etcd for the gateways' discovery.

pub mod audio;
pub mod caller;
pub mod cli;
pub mod db;
pub mod echo;
pub mod error;
pub mod file;
pub mod file_access;
pub mod friend;
pub mod hashing;
pub mod message;
pub mod notify;
pub mod phone;
pub mod register;
pub mod sms;
pub mod speech;
pub mod token;
pub mod user;
pub mod util;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use im_proto::im::echo::v1::echo_service_server::EchoServiceServer;
use im_proto::im::file::v1::file_service_server::FileServiceServer;
use im_proto::im::friend::v1::friend_service_server::FriendServiceServer;
use im_proto::im::message::v1::msg_storage_service_server::MsgStorageServiceServer;
use im_proto::im::message::v1::msg_transmit_service_server::MsgTransmitServiceServer;
use im_proto::im::speech::v1::speech_service_server::SpeechServiceServer;
use im_proto::im::user::v1::user_service_server::UserServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

/// `service.name` of the backends' spans, in their own process and inside the launcher's.
pub const SERVICE_NAME: &str = "im-backends";

/// Every service `--services` can name.
pub const ALL_SERVICES: [&str; 6] = ["user", "friend", "message", "file", "speech", "echo"];

/// What the services need; built by the CLI (or a test) from flags and files.
pub struct BackendConfig {
    /// Names from [`ALL_SERVICES`].
    pub services: Vec<String>,
    pub database: PathBuf,
    pub files_dir: PathBuf,
    /// Largest gRPC message in or out, in bytes (agrees with the upstream's `max_message`).
    pub max_message: usize,
    /// Largest file content the file service stores.
    pub max_file_size: usize,
    /// HS256 key material (the gateway's `auth.hs256_secret_file` contents); user service only.
    pub jwt_secret: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub token_ttl: Duration,
    /// The longest a session lives from its login (the tokens' `sxp`).
    pub max_session: Duration,
    /// The gateway's internal PushService address and token, for notifications and logout.
    pub push_addr: Option<String>,
    pub internal_token: Option<String>,
    /// TLS to the gateways' PushService (`--push-ca`, and `--push-cert`/`--push-key` for mTLS).
    pub push_tls: Option<notify::PushTls>,
    pub sms: sms::SharedSms,
    /// Least time between two verification codes to one phone.
    pub code_interval: Duration,
    /// Most verification codes sent to one phone in 24 hours.
    pub codes_per_day: u32,
    /// Country code of phone numbers typed without one.
    pub default_country_code: String,
    /// Bytes of files one user may store (each distinct file once).
    pub max_storage_per_user: u64,
    /// Threads hashing passwords, and hashes that may wait for one.
    pub hash_workers: usize,
    pub hash_queue: usize,
    /// Whether the echo service honours its diagnostics (delays, failures, padding, health
    /// flips); off in the shipped system.
    pub diagnostics: bool,
    /// Share of calls without a caller's trace decision that are traced (with trace export on).
    pub trace_sample_ratio: f64,
    /// Where to register the services run here (`--register`), if anywhere.
    pub register: Option<register::Registration>,
    /// The speech service's recognizer and limits.
    pub speech: speech::SpeechConfig,
}

/// The machine's core count: the default number of hashing threads.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl BackendConfig {
    /// Defaults for `services`, with files under `data_dir`.
    pub fn new(services: Vec<String>, data_dir: &std::path::Path) -> Self {
        Self {
            services,
            database: data_dir.join("im.db"),
            files_dir: data_dir.join("files"),
            max_message: 12 << 20,
            max_file_size: 8 << 20,
            jwt_secret: None,
            issuer: None,
            audience: None,
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            max_session: Duration::from_secs(30 * 24 * 3600),
            push_addr: None,
            internal_token: None,
            push_tls: None,
            sms: Arc::new(sms::LogSms),
            code_interval: Duration::from_secs(60),
            codes_per_day: 10,
            default_country_code: "86".into(),
            max_storage_per_user: 1 << 30,
            hash_workers: cores(),
            hash_queue: 64,
            diagnostics: false,
            trace_sample_ratio: 1.0,
            register: None,
            speech: speech::SpeechConfig::default(),
        }
    }

    fn wants(&self, name: &str) -> bool {
        self.services.iter().any(|s| s == name)
    }
}

/// Serves the configured services on `listener` until `shutdown` resolves.
pub async fn serve(
    cfg: BackendConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    for s in &cfg.services {
        if !ALL_SERVICES.contains(&s.as_str()) {
            return Err(format!(
                "--services: unknown service `{s}`; available: {}",
                ALL_SERVICES.join(",")
            ));
        }
    }
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stateful = ["user", "friend", "message", "file"]
        .iter()
        .any(|s| cfg.wants(s));
    let phones = phone::PhoneRules::new(&cfg.default_country_code)?;
    let db = stateful.then(|| db::Db::open(&cfg.database)).transpose()?;
    // Opened above whenever a stateful service is wanted.
    let db_for = |service: &str| {
        db.clone()
            .ok_or_else(|| format!("{service}: no database opened (a bug)"))
    };
    if let Some(db) = &db {
        db.with_writer(|c| phones.normalize_stored(c))
            .map_err(|e| format!("{}: normalizing stored phones: {e}", cfg.database.display()))?;
    }
    let notifier = notify::Notifier::new(
        cfg.push_addr.as_deref(),
        cfg.internal_token.as_deref(),
        cfg.push_tls.as_ref(),
    )?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(im_proto::DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let limit = cfg.max_message;

    macro_rules! limited {
        ($server:expr) => {
            $server
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        };
    }

    let mut names = Vec::new();
    let mut not_serving = Vec::new();
    let user = if cfg.wants("user") {
        let secret = cfg.jwt_secret.as_deref().ok_or(
            "the user service mints tokens: pass --jwt-secret-file (the gateway's auth.hs256_secret_file)",
        )?;
        let tokens = token::TokenIssuer::hs256(
            secret,
            cfg.issuer.clone(),
            cfg.audience.clone(),
            cfg.token_ttl,
        )?;
        names.push(user::SERVICE_NAME);
        Some(limited!(UserServiceServer::new(user::UserSvc {
            db: db_for("user")?,
            tokens,
            sms: cfg.sms.clone(),
            notifier: notifier.clone(),
            code_interval: cfg.code_interval,
            codes_per_day: cfg.codes_per_day,
            phones: phones.clone(),
            hasher: hashing::HashPool::start(cfg.hash_workers, cfg.hash_queue)?,
            max_session: cfg.max_session,
        })))
    } else {
        None
    };
    let friend = if cfg.wants("friend") {
        names.push(friend::SERVICE_NAME);
        Some(limited!(FriendServiceServer::new(friend::FriendSvc {
            db: db_for("friend")?,
            notifier: notifier.clone(),
            phones: phones.clone(),
        })))
    } else {
        None
    };
    let (transmit, storage) = if cfg.wants("message") {
        names.push(message::TRANSMIT_SERVICE_NAME);
        names.push(message::STORAGE_SERVICE_NAME);
        let svc = message::MessageSvc {
            db: db_for("message")?,
            notifier: notifier.clone(),
        };
        (
            Some(limited!(MsgTransmitServiceServer::new(svc.clone()))),
            Some(limited!(MsgStorageServiceServer::new(svc))),
        )
    } else {
        (None, None)
    };
    let file = if cfg.wants("file") {
        names.push(file::SERVICE_NAME);
        let store = file::FileStore::open(&cfg.files_dir, cfg.max_file_size)?;
        Some(limited!(FileServiceServer::new(file::FileSvc {
            db: db_for("file")?,
            store: Arc::new(store),
            max_reply: limit,
            max_storage_per_user: cfg.max_storage_per_user,
        })))
    } else {
        None
    };
    let speech = cfg.wants("speech").then(|| {
        let svc = speech::SpeechSvc::new(cfg.speech.clone());
        // Without its recognizer the service answers UNAVAILABLE and health says NOT_SERVING.
        if svc.installed() {
            names.push(speech::SERVICE_NAME);
        } else {
            not_serving.push(speech::SERVICE_NAME);
        }
        limited!(SpeechServiceServer::new(svc))
    });
    let echo = cfg.wants("echo").then(|| {
        names.push(echo::SERVICE_NAME);
        limited!(EchoServiceServer::new(echo::Echo::new(
            addr.to_string(),
            health.clone(),
            Default::default(),
            cfg.diagnostics,
        )))
    });
    for name in &names {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    for name in not_serving {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    tracing::info!(%addr, services = ?cfg.services, "im-backends serving");
    // Registered once serving; on shutdown the registration goes first, so gateways stop
    // picking this process before it stops answering.
    let registrar = cfg
        .register
        .clone()
        .map(|reg| register::Registrar::start(reg, names.clone()));
    let shutdown = async move {
        shutdown.await;
        if let Some(r) = registrar {
            r.stop().await;
        }
    };
    let cfg_ratio = cfg.trace_sample_ratio;
    tonic::transport::Server::builder()
        .trace_fn(move |request| call_span(request, cfg_ratio))
        .add_service(health_service)
        .add_service(reflection)
        .add_optional_service(user)
        .add_optional_service(friend)
        .add_optional_service(transmit)
        .add_optional_service(storage)
        .add_optional_service(file)
        .add_optional_service(speech)
        .add_optional_service(echo)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
        .map_err(|e| e.to_string())
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

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let terminated = async {
        match term {
            Ok(mut t) => drop(t.recv().await),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGTERM handler; stop with Ctrl-C");
                std::future::pending().await
            }
        }
    };
    tokio::select! {
        () = terminated => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
