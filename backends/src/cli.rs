//! `im-backends`: runs the chosen services on one address until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "im-backends",
    version,
    about = "Reference backends of the IM system (tonic services)"
)]
pub struct Args {
    /// Comma-separated services to run. Available: echo.
    #[arg(long, value_delimiter = ',', default_value = "echo")]
    pub services: Vec<String>,
    /// Address to serve gRPC (h2c) on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_message: usize,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    for s in &args.services {
        if s != "echo" {
            eprintln!("im-backends: unknown service `{s}`; available: echo");
            return ExitCode::FAILURE;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("im-backends: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addr = %args.listen, services = ?args.services, "im-backends serving");
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        match crate::echo::serve(listener, args.max_message, Default::default(), shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("im-backends: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
