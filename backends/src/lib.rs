//! Backends behind the gateway: the reference IM services (DESIGN §10) and a diagnostic echo
//! service, served by one tonic server with `grpc.health.v1` and server reflection.
//!
//! # Layout
//! - [`user`], [`friend`], [`message`], [`file`]: the IM services; [`chat_sessions`]: sessions
//!   and friendships in the database, shared by friend and message; [`user_rows`]: public
//!   profiles as every service reads them; [`file_access`]: who may
//!   read a stored file; [`phone`]: phone numbers in E.164; [`hashing`]: argon2 on a fixed
//!   pool with preallocated memory.
//! - [`speech`]: speech-to-text with PocketSphinx run as a bounded subprocess; [`audio`]: WAV
//!   and raw PCM decoded to 16 kHz mono.
//! - [`echo`]: the diagnostic echo service (delays, failures, health flips) that the gateway's
//!   tests and benchmarks use as a trivial, controllable backend.
//! - [`db`]: SQLite (WAL, busy timeout, one writer, blocking pool) and the schema migrations.
//! - [`caller`]: identity from the gateway's metadata; [`error`]: what clients see on failure.
//! - [`token`]: JWT issuance; [`notify`]: PushService client; [`sms`]: verification-code sender.
//! - [`serve`]: one tonic server for the services asked for, with health, reflection and the
//!   call spans; [`cli`]: the `im-backends` binary: run any subset of services on one address;
//!   [`register`]: its registration in etcd for the gateways' discovery.

pub mod audio;
pub mod caller;
pub mod chat_sessions;
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
pub mod serve;
pub mod sms;
pub mod speech;
pub mod token;
pub mod user;
pub mod user_rows;
pub mod util;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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

pub use serve::serve;

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
