//! The `im-gateway` command line: `run` and `check`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pingora::server::RunArgs;

use crate::config::GatewayConfig;
use crate::routes::{Registries, RouteSource};
use crate::Gateway;

#[derive(Debug, Parser)]
#[command(
    name = "im-gateway",
    version,
    about = "Pingora-based edge gateway of the IM system"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGTERM (graceful) or SIGINT (fast). SIGHUP reloads routes.
    Run {
        /// Gateway config (listeners, threads, reload, shutdown). Without it, built-in defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Route table; overrides `routes:` in the config. Default: ./routes.yaml.
        #[arg(long, value_name = "FILE")]
        routes: Option<PathBuf>,
        /// Edge listener address (HTTP API, h1 + h2c); overrides `listen.edge`.
        #[arg(long, value_name = "ADDR")]
        edge: Option<SocketAddr>,
        /// Admin listener address (metrics, health, reload); overrides `listen.admin`.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// Log lines as `text` or `json` (default: `IM_LOG_FORMAT`, else text).
        #[arg(long, value_name = "FORMAT")]
        log_format: Option<String>,
    },
    /// Validate a routes file (methods included, against the descriptor set) and exit:
    /// 0 when valid, 1 with every problem listed.
    Check {
        /// The routes file to check.
        routes: PathBuf,
        /// A descriptor set (FileDescriptorSet) to check against instead of the embedded one.
        #[arg(long, value_name = "FILE")]
        descriptors: Option<PathBuf>,
    },
}

/// Validates a routes file; the `Ok` text summarises it, the `Err` text lists every problem.
pub fn check(routes: &Path, descriptors: Option<&Path>) -> Result<String, String> {
    let source = RouteSource {
        routes: routes.to_owned(),
        descriptors: descriptors.map(Path::to_owned),
    };
    match source.build(&Registries::default()) {
        Ok(t) => Ok(format!(
            "{}: OK ({} routes, {} upstreams, version {})",
            routes.display(),
            t.routes.len(),
            t.upstreams.len(),
            t.version
        )),
        Err(e) => Err(format!("{}: rejected\n{e}", routes.display())),
    }
}

pub fn main() -> ExitCode {
    // Before anything signs or checks a token: jsonwebtoken fixes its backend at first use.
    crate::filters::auth::install_ring_verifier();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check {
            routes,
            descriptors,
        } => check(&routes, descriptors.as_deref()).map(|summary| println!("{summary}")),
        Command::Run {
            config,
            routes,
            edge,
            admin,
            log_format,
        } => run(config, routes, edge, admin, log_format).map_err(|e| format!("im-gateway: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `gateway.yaml` at `path`, or the built-in defaults without one.
pub fn load_config(path: Option<&Path>) -> Result<GatewayConfig, String> {
    Ok(path
        .map(GatewayConfig::load)
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or_default())
}

/// `im-gateway run`: the config read (flags over the file), telemetry started, the gateway
/// built and served until it is stopped.
fn run(
    config: Option<PathBuf>,
    routes: Option<PathBuf>,
    edge: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    log_format: Option<String>,
) -> Result<(), String> {
    let format = im_telemetry::LogFormat::choose(log_format.as_deref())?;
    let early = im_telemetry::early(format);
    let mut cfg = load_config(config.as_deref())?;
    drop(early);
    let mut telemetry = init_telemetry(&mut cfg, format)?;
    if let Some(a) = edge {
        cfg.listen.edge = a;
    }
    if let Some(a) = admin {
        cfg.listen.admin = a;
    }
    let routes = routes
        .or_else(|| cfg.routes.clone())
        .unwrap_or_else(|| PathBuf::from("routes.yaml"));
    let (edge, admin) = (cfg.listen.edge, cfg.listen.admin);
    let gateway = Gateway::build(cfg, routes.clone()).map_err(|e| match e {
        crate::server::BuildError::Routes(_) => format!("{} : {e}", routes.display()),
        e => e.to_string(),
    })?;
    gateway
        .metrics
        .count_log_drops(telemetry.dropped_log_lines());
    telemetry.export_metrics(gateway.config.telemetry.metrics_interval.0, {
        let scrape = gateway.scrape();
        Box::new(move || scrape.families())
    });
    let server = gateway.into_server(true).map_err(|e| e.to_string())?;
    tracing::info!(%edge, %admin, routes = %routes.display(), "im-gateway starting");
    server.run(RunArgs::default());
    telemetry.shutdown();
    Ok(())
}

/// Logging and, with `telemetry.otlp_endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`), trace and
/// metrics export, for the process that runs this config ([`trace_export`]).
pub fn init_telemetry(
    cfg: &mut GatewayConfig,
    format: im_telemetry::LogFormat,
) -> Result<im_telemetry::Telemetry, String> {
    let export = trace_export(cfg)?;
    im_telemetry::init(format, export.as_ref())
}

/// The trace export `telemetry:` and the process's `OTEL_*` environment give. Settles the
/// cluster node id first (when generated) so traces and the registry name the node alike, and
/// writes the sample ratio the environment chose back into `cfg` (the call path reads it there).
pub fn trace_export(cfg: &mut GatewayConfig) -> Result<Option<im_telemetry::TraceExport>, String> {
    let instance = match &mut cfg.cluster {
        Some(cluster) => {
            let id = cluster.resolved_node_id();
            cluster.node_id.get_or_insert(id).clone()
        }
        None => format!(
            "{}-{}",
            crate::cluster::config::hostname(),
            std::process::id()
        ),
    };
    let export = cfg
        .telemetry
        .export(&|name| std::env::var(name).ok(), instance)?;
    if let Some(export) = &export {
        cfg.telemetry.sample_ratio = Some(export.sample_ratio);
    }
    Ok(export)
}

/// `RUST_LOG`-style filter, `info` by default (tests and tools; processes use [`init_telemetry`]).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}
