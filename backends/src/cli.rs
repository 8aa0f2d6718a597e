//! `im-backends`: runs the chosen services on one address until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::BackendConfig;

#[derive(Debug, Parser)]
#[command(
    name = "im-backends",
    version,
    about = "Reference backends of the IM system (tonic services over h2c, with grpc.health.v1 and reflection)"
)]
pub struct Args {
    /// Comma-separated services to run: user, friend, message, file, speech, echo.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "user,friend,message,file,speech"
    )]
    pub services: Vec<String>,
    /// Address to serve gRPC (h2c) on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// SQLite database file (created and migrated on start).
    #[arg(long, default_value = "data/im.db")]
    pub database: PathBuf,
    /// Where file contents are stored.
    #[arg(long, default_value = "data/files")]
    pub files_dir: PathBuf,
    /// Largest gRPC message accepted or sent, in bytes (match the upstream's `max_message`).
    #[arg(long, default_value_t = 12 << 20)]
    pub max_message: usize,
    /// Largest file the file service stores, in bytes (below --max-message and the route's max_body).
    #[arg(long, default_value_t = 8 << 20)]
    pub max_file_size: usize,
    /// HS256 key the gateway verifies tokens with (its `auth.hs256_secret_file`).
    #[arg(long, default_value = "data/dev-jwt.key")]
    pub jwt_secret_file: PathBuf,
    /// `iss` claim of minted tokens (must match the gateway's `auth.issuer`).
    #[arg(long)]
    pub issuer: Option<String>,
    /// `aud` claim of minted tokens (must match the gateway's `auth.audience`).
    #[arg(long)]
    pub audience: Option<String>,
    /// Token lifetime in seconds (never past the session's end).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub token_ttl_secs: u64,
    /// The longest a session lives from its login, in seconds: `refresh_token` never extends a
    /// session past it (the tokens' `sxp`; the gateway keeps revocations until then).
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    pub max_session_secs: u64,
    /// The gateways' internal PushService addresses, comma-separated (any node of a cluster
    /// routes any call; the next is tried only when one cannot be reached), for notifications
    /// and logout.
    #[arg(long, default_value = "127.0.0.1:7171")]
    pub push_addr: String,
    /// CA certificate (PEM) of the gateways' internal listeners: PushService over TLS
    /// (`push.internal_tls` on the gateway); the addresses then use https.
    #[arg(long)]
    pub push_ca: Option<PathBuf>,
    /// This backend's client certificate and key (PEM) for gateways that require mTLS
    /// (`push.internal_tls.client_ca`).
    #[arg(long, requires = "push_key", requires = "push_ca")]
    pub push_cert: Option<PathBuf>,
    #[arg(long, requires = "push_cert")]
    pub push_key: Option<PathBuf>,
    /// File holding the internal PushService token (the gateway's `push.internal_token_file`).
    #[arg(long, default_value = "data/internal.token")]
    pub internal_token_file: PathBuf,
    /// Country code assumed for phone numbers typed without one (`138…` is `+86 138…`).
    #[arg(long, default_value = "86")]
    pub default_country_code: String,
    /// Most verification codes sent to one phone in 24 hours.
    #[arg(long, default_value_t = 10)]
    pub codes_per_phone_per_day: u32,
    /// Bytes of files one user may store, each distinct file counted once.
    #[arg(long, default_value_t = 1 << 30)]
    pub max_storage_per_user: u64,
    /// Threads hashing passwords (argon2id, 19 MiB each, kept for the process's life);
    /// default: the core count.
    #[arg(long)]
    pub hash_workers: Option<usize>,
    /// Password hashes that may wait for a thread; past it sign-ins get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64)]
    pub hash_queue: usize,
    /// Let the echo service honour its diagnostics (delay_ms, fail_code, reply_padding,
    /// SetHealth) for tests and benchmarks; never in a deployment reachable from the edge.
    #[arg(long)]
    pub diagnostics: bool,
    /// OTLP/gRPC collector to export spans to (`http://127.0.0.1:4317`); without it, none are.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled, 0.0 to 1.0 (a caller's sampled flag is followed; default
    /// `OTEL_TRACES_SAMPLER_ARG`, else 1.0).
    #[arg(long)]
    pub trace_sample_ratio: Option<f64>,
    /// `service.name` of this process's spans (default `OTEL_SERVICE_NAME`, else im-backends).
    #[arg(long)]
    pub service_name: Option<String>,
    /// The speech service's recognizer: PocketSphinx's `pocketsphinx_continuous` (on PATH) or
    /// a path to it.
    #[arg(long, default_value = "pocketsphinx_continuous")]
    pub speech_recognizer: PathBuf,
    /// Recognizers running at once (each is a process using one core); default: the core count.
    #[arg(long)]
    pub speech_workers: Option<usize>,
    /// Longest audio the speech service takes, in seconds.
    #[arg(long, default_value_t = 60)]
    pub speech_max_seconds: u64,
    /// Deadline of one recognition, in seconds.
    #[arg(long, default_value_t = 30)]
    pub speech_timeout_secs: u64,
    /// Register every service run here in etcd, under a lease kept alive while the process
    /// runs: `etcd://host:port[,host:port][/prefix/]` (prefix default `/im/services/`); keys are
    /// `<prefix><grpc service>/<host:port>`.
    #[arg(long, value_name = "URL")]
    pub register: Option<String>,
    /// Seconds the etcd lease lives without a keep-alive: how long a killed process stays listed.
    #[arg(long, default_value_t = 10, requires = "register")]
    pub register_ttl: u64,
    /// The address gateways reach this process on (default: --listen).
    #[arg(long, requires = "register")]
    pub advertise: Option<SocketAddr>,
    /// The weight registered with each service (1 to 1000).
    #[arg(long, default_value_t = 1, requires = "register")]
    pub register_weight: u32,
    /// Log lines as `text` or `json` (default: `IM_LOG_FORMAT`, else text).
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

impl Args {
    /// The trace export the flags ask for, OpenTelemetry's `OTEL_*` environment filling what
    /// they leave out (the flags win; `im_telemetry::settings` gives the rule).
    fn trace_export(&self) -> Result<Option<im_telemetry::TraceExport>, String> {
        if self
            .trace_sample_ratio
            .is_some_and(|r| !(0.0..=1.0).contains(&r))
        {
            return Err("--trace-sample-ratio: use 0.0 to 1.0".into());
        }
        let settings = im_telemetry::settings::ExportSettings {
            endpoint: self.otlp_endpoint.clone(),
            service_name: self.service_name.clone(),
            sample_ratio: self.trace_sample_ratio,
            ..Default::default()
        };
        let instance = format!("{}-{}", self.listen, std::process::id());
        settings
            .resolve(
                &|name| std::env::var(name).ok(),
                crate::SERVICE_NAME,
                instance,
            )
            .map_err(|(setting, fix)| format!("{setting}: {fix}"))
    }
}

fn read_secret(path: &PathBuf, flag: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("{flag}: cannot read {}: {e}", path.display()))
}

impl Args {
    fn speech(&self, max_message: usize) -> Result<crate::speech::SpeechConfig, String> {
        if self.speech_workers == Some(0)
            || self.speech_max_seconds == 0
            || self.speech_timeout_secs == 0
        {
            return Err(
                "--speech-workers, --speech-max-seconds and --speech-timeout-secs must be above 0"
                    .into(),
            );
        }
        Ok(crate::speech::SpeechConfig {
            recognizer: self.speech_recognizer.clone(),
            workers: self.speech_workers.unwrap_or_else(crate::cores),
            max_duration: Duration::from_secs(self.speech_max_seconds),
            // The largest a WAV of that length can be: 48 kHz stereo float, plus headers.
            max_bytes: (self.speech_max_seconds as usize * 48_000 * 2 * 4 + 4096).min(max_message),
            timeout: Duration::from_secs(self.speech_timeout_secs),
            scratch_dir: std::env::temp_dir(),
        })
    }

    fn registration(&self) -> Result<Option<crate::register::Registration>, String> {
        self.register
            .as_deref()
            .map(|url| {
                crate::register::Registration::parse(
                    url,
                    Duration::from_secs(self.register_ttl),
                    self.advertise.unwrap_or(self.listen),
                    self.register_weight,
                )
            })
            .transpose()
    }

    pub fn into_config(self) -> Result<BackendConfig, String> {
        crate::serve::check_names(&self.services)?;
        let data_dir = self
            .database
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let speech = self.speech(self.max_message)?;
        let register = self.registration()?;
        let mut cfg = BackendConfig::new(self.services, &data_dir);
        cfg.speech = speech;
        cfg.register = register;
        cfg.database = self.database;
        cfg.files_dir = self.files_dir;
        cfg.max_message = self.max_message;
        cfg.max_file_size = self.max_file_size;
        if cfg.max_file_size >= cfg.max_message {
            return Err(format!(
                "--max-file-size ({}) must be below --max-message ({}): a file travels inside one message",
                cfg.max_file_size, cfg.max_message
            ));
        }
        if cfg.services.iter().any(|s| s == "user") {
            cfg.jwt_secret = Some(read_secret(&self.jwt_secret_file, "--jwt-secret-file")?);
        }
        cfg.issuer = self.issuer;
        cfg.audience = self.audience;
        cfg.token_ttl = Duration::from_secs(self.token_ttl_secs);
        cfg.max_session = Duration::from_secs(self.max_session_secs);
        if self.max_session_secs == 0 {
            return Err("--max-session-secs must be above 0".into());
        }
        crate::phone::PhoneRules::new(&self.default_country_code)?;
        cfg.default_country_code = self.default_country_code;
        cfg.codes_per_day = self.codes_per_phone_per_day;
        cfg.max_storage_per_user = self.max_storage_per_user;
        cfg.hash_workers = self.hash_workers.unwrap_or_else(crate::cores);
        if cfg.hash_workers == 0 {
            return Err("--hash-workers must be at least 1".into());
        }
        cfg.hash_queue = self.hash_queue;
        cfg.diagnostics = self.diagnostics;
        cfg.trace_sample_ratio = self.trace_sample_ratio.unwrap_or(1.0);
        let notifying = cfg
            .services
            .iter()
            .any(|s| !matches!(s.as_str(), "echo" | "file" | "speech"));
        if notifying {
            cfg.internal_token = Some(read_secret(
                &self.internal_token_file,
                "--internal-token-file",
            )?);
            cfg.push_addr = Some(self.push_addr);
            cfg.push_tls = push_tls(self.push_ca, self.push_cert, self.push_key)?;
        }
        Ok(cfg)
    }
}

/// The PushService TLS files, read.
fn push_tls(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<crate::notify::PushTls>, String> {
    let read = |flag: &str, p: &PathBuf| {
        std::fs::read(p).map_err(|e| format!("{flag}: cannot read {}: {e}", p.display()))
    };
    let Some(ca) = ca else { return Ok(None) };
    let identity = match (cert, key) {
        (Some(c), Some(k)) => Some((read("--push-cert", &c)?, read("--push-key", &k)?)),
        _ => None,
    };
    Ok(Some(crate::notify::PushTls {
        ca_pem: read("--push-ca", &ca)?,
        identity,
    }))
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let export = match args.trace_export() {
        Ok(export) => export,
        Err(e) => {
            eprintln!("im-backends: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match im_telemetry::LogFormat::choose(args.log_format.as_deref())
        .and_then(|format| im_telemetry::init(format, export.as_ref()))
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("im-backends: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = args.listen;
    let cfg = match args.into_config() {
        Ok(mut c) => {
            if let Some(export) = &export {
                c.trace_sample_ratio = export.sample_ratio;
            }
            c
        }
        Err(e) => {
            eprintln!("im-backends: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("im-backends: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("im-backends: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        match crate::serve(cfg, listener, crate::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("im-backends: {e}");
                ExitCode::FAILURE
            }
        }
    });
    drop(runtime);
    telemetry.shutdown();
    code
}
