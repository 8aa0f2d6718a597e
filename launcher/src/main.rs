//! `im-launcher`: the README's first command. Creates the dev secrets under `./data` (atomically,
//! mode 0600, never logged), starts the backends and the gateway in one process on embedded
//! defaults, prints the URLs, and stops everything on Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use im_gateway::config::GatewayConfig;
use im_gateway::{Gateway, RunningGateway};
use rand::RngCore;

#[derive(Debug, Parser)]
#[command(
    name = "im-launcher",
    version,
    about = "Run the IM gateway and its backends on embedded defaults"
)]
struct Args {
    /// Route table to serve.
    #[arg(long, default_value = "routes.yaml")]
    routes: PathBuf,
    /// Gateway config; built-in defaults when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where dev secrets, the SQLite database and uploaded files live.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Address of the backends (must match the endpoints in the routes file).
    #[arg(long, default_value = "127.0.0.1:50051")]
    backends: SocketAddr,
    /// Log lines as `text` or `json` (default: `IM_LOG_FORMAT`, else text).
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
}

/// Creates `path` with `bytes` random bytes (hex) unless it exists: temp file, 0600, rename.
fn ensure_secret(path: &Path, bytes: usize) -> std::io::Result<bool> {
    if path.exists() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        return Ok(false);
    }
    let mut secret = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut secret);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(hex::encode(secret).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// All reference services, sharing the gateway's dev key, issuer/audience and internal token.
fn backend_config(
    args: &Args,
    gateway: &GatewayConfig,
) -> Result<im_backends::BackendConfig, String> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let services = im_backends::ALL_SERVICES.map(String::from).to_vec();
    let mut cfg = im_backends::BackendConfig::new(services, &args.data);
    let key = gateway.auth.hs256_secret_file.as_deref().ok_or(
        "the backends mint HS256 tokens: set auth.hs256_secret_file (or drop auth.public_keys)",
    )?;
    cfg.jwt_secret = Some(read(key)?);
    cfg.issuer = gateway.auth.issuer.clone();
    cfg.audience = gateway.auth.audience.clone();
    let token = gateway
        .push
        .internal_token_file
        .as_deref()
        .ok_or("push.internal_token_file is needed")?;
    cfg.internal_token = Some(read(token)?);
    cfg.push_addr = Some(gateway.listen.internal.to_string());
    cfg.trace_sample_ratio = gateway.telemetry.sample_ratio();
    Ok(cfg)
}

/// `0.0.0.0:8080` is not something to paste into a browser.
fn browsable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

fn main() -> ExitCode {
    // Before the backends sign a token: jsonwebtoken fixes its backend at first use.
    im_gateway::filters::auth::install_ring_verifier();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("im-launcher: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The dev secrets, the config with the demo's defaults, telemetry, the backends and the
/// gateway, until Ctrl-C or SIGTERM.
fn run(args: Args) -> Result<(), String> {
    let format = im_telemetry::LogFormat::choose(args.log_format.as_deref())?;
    let early = im_telemetry::early(format);
    create_secrets(&args.data)?;
    let mut cfg = im_gateway::cli::load_config(args.config.as_deref())?;
    drop(early);
    let mut telemetry = init_telemetry(&mut cfg, format)?;
    demo_defaults(&mut cfg, &args.data);
    let (edge, admin, push) = (cfg.listen.edge, cfg.listen.admin, cfg.listen.push);
    let backend_cfg = backend_config(&args, &cfg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the backends' runtime: {e}"))?;
    let (stop_backends, backends_stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.backends))
        .map_err(|e| format!("backends cannot listen on {}: {e}", args.backends))?;
    let backends = runtime.spawn(im_backends::serve(backend_cfg, listener, async {
        let _ = backends_stopped.await;
    }));
    let metrics_interval = cfg.telemetry.metrics_interval.0;
    let gateway = Gateway::build(cfg, args.routes.clone())
        .map_err(|e| format!("{} rejected:\n{e}", args.routes.display()))?;
    gateway
        .metrics
        .count_log_drops(telemetry.dropped_log_lines());
    let scrape = gateway.scrape();
    telemetry.export_metrics(metrics_interval, Box::new(move || scrape.families()));
    // Every listener is bound before anything serves: a port that is taken (or a TLS file that
    // does not load) stops the start here, naming the listener, instead of a gateway that
    // answers ready while pushes from the backends fail.
    let gateway =
        RunningGateway::start(gateway).map_err(|e| format!("the gateway cannot start: {e}"))?;
    print_urls(edge, push, admin, &args);
    runtime.block_on(im_backends::shutdown_signal());
    tracing::info!("stopping");
    gateway.stop();
    let _ = stop_backends.send(());
    let served = runtime.block_on(backends);
    telemetry.shutdown();
    match served {
        Ok(Err(e)) => Err(format!("backends: {e}")),
        _ => Ok(()),
    }
}

/// The dev key and the internal token under `data`, created once.
fn create_secrets(data: &Path) -> Result<(), String> {
    std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    for (name, len) in [("dev-jwt.key", 32), ("internal.token", 32)] {
        let path = data.join(name);
        let created = ensure_secret(&path, len)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if created {
            tracing::info!(path = %path.display(), "created dev secret");
        }
    }
    Ok(())
}

/// One process, one export: the gateway's and the backends' spans share `telemetry:`, and the
/// backends' spans still name their own service, as in a split deployment.
fn init_telemetry(
    cfg: &mut GatewayConfig,
    format: im_telemetry::LogFormat,
) -> Result<im_telemetry::Telemetry, String> {
    let export = im_gateway::cli::trace_export(cfg)?.map(|mut export| {
        export.crate_services = vec![("im_backends", im_backends::SERVICE_NAME.to_owned())];
        export
    });
    im_telemetry::init(format, export.as_ref())
}

/// What the demo fills in when the config leaves it out: the dev key the backends share (§2), a
/// revocation file (revoked sessions stay refused across restarts), the internal token.
fn demo_defaults(cfg: &mut GatewayConfig, data: &Path) {
    if cfg.auth.hs256_secret_file.is_none() && cfg.auth.public_keys.is_empty() {
        cfg.auth.hs256_secret_file = Some(data.join("dev-jwt.key"));
    }
    if cfg.auth.revocation_file.is_none() {
        cfg.auth.revocation_file = Some(data.join("revoked.json"));
    }
    if cfg.push.internal_token_file.is_none() {
        cfg.push.internal_token_file = Some(data.join("internal.token"));
    }
}

fn print_urls(edge: SocketAddr, push: SocketAddr, admin: SocketAddr, args: &Args) {
    println!("IM system running (Ctrl-C to stop)");
    println!("  web client    http://{}/", browsable(edge));
    println!("  HTTP API      http://{edge}/service/...   e.g. curl -d '{{\"text\":\"hi\"}}' http://{edge}/service/echo");
    println!("  WebSocket     ws://{push}/ws?token=<JWT>&encoding=json");
    println!("  admin         http://{admin}/admin/routes   /metrics   /readyz");
    println!(
        "  backends      {} (gRPC h2c, reflection on; data in {})",
        args.backends,
        args.data.display()
    );
}
