//! Assembles a gateway: route store, dispatcher, metrics, and the Pingora services (edge proxy,
//! admin, reloader, maintenance). [`Gateway::build`] needs no sockets; [`Gateway::into_server`] makes the
//! Pingora `Server`; [`RunningGateway`] runs one on its own thread and stops it (tests, embedders).

use std::path::PathBuf;

use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use pingora::services::Service as PingoraService;
use tokio::sync::mpsc;

use crate::admin::access::AdminAccess;
use crate::admin::AdminApp;
use crate::cluster::node::NodeService;
use crate::cluster::Cluster;
use crate::config::{GatewayConfig, Listen, TlsFiles};
use crate::dispatch::Dispatcher;
use crate::filters::auth::{AuthConfigError, Authenticator};
use crate::filters::cluster_limit::ClusterLimits;
use crate::filters::ratelimit::LimiterRegistry;
use crate::filters::revocation::MemoryRevocation;
use crate::filters::secret;
use crate::filters::Guard;
use crate::http_guard::GuardedApp;
use crate::listeners::{BindError, Bound, PreBound};
use crate::maintenance::Maintenance;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::proxy::EdgeProxy;
use crate::push::listener::PushApp;
use crate::push::remote::RemoteService;
use crate::push::runtime::PushRuntime;
use crate::push::service::InternalGrpc;
use crate::push::{Hub, PushDeps};
use crate::readiness::{Readiness, Supervised};
use crate::routes::reloader::Reloader;
use crate::routes::{Registries, RouteSource, RouteStore, RoutesError};
use crate::upstream::HealthRegistry;
use crate::web::WebApp;

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("routes rejected:\n{0}")]
    Routes(#[from] RoutesError),
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    #[error("{0}")]
    Revocations(String),
    #[error("push.internal_token_file: {0}")]
    InternalToken(String),
    #[error("{0}")]
    InternalTls(String),
    #[error("{0}")]
    Admin(String),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::link::LinkError),
    #[error("{0}: {1}")]
    Listen(&'static str, String),
}

/// Everything a running gateway shares, built without binding sockets.
pub struct Gateway {
    pub config: GatewayConfig,
    pub routes: Arc<RouteStore>,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Arc<Metrics>,
    pub guard: Arc<Guard>,
    pub push: Arc<PushDeps>,
    /// SHA-256 of the PushService token, read at build; `None` refuses every call.
    internal_token: Option<[u8; 32]>,
    /// The internal listener's TLS, loaded at build.
    internal_tls: Option<tonic::transport::ServerTlsConfig>,
    /// Who may call the admin listener, decided at build (after command-line overrides).
    admin_access: AdminAccess,
    routes_path: PathBuf,
    /// Services the gateway cannot work without, and whether each still runs (`/readyz`).
    pub readiness: Arc<Readiness>,
    /// Cluster mode: what the node task hands the push plugin, until the server takes it.
    cluster_inbox: Option<(
        mpsc::Sender<crate::cluster::node::Inbound>,
        mpsc::Receiver<crate::cluster::node::Inbound>,
    )>,
}

impl Gateway {
    /// What `/metrics` and the OTLP metrics export read.
    pub fn scrape(&self) -> crate::admin::scrape::Scrape {
        crate::admin::scrape::Scrape {
            routes: self.routes.clone(),
            metrics: self.metrics.clone(),
            push: self.push.clone(),
            guard: self.guard.clone(),
        }
    }

    /// Loads the route table (a broken file is an error here) and wires the shared parts.
    pub fn build(config: GatewayConfig, routes_path: PathBuf) -> Result<Self, BuildError> {
        // Again here: command-line overrides and embedders skip the file's validation.
        config
            .listen
            .check_distinct()
            .map_err(|(field, message)| BuildError::Listen(field, message))?;
        let metrics = Arc::new(Metrics::new());
        let revocation = Arc::new(match &config.auth.revocation_file {
            Some(file) => MemoryRevocation::persistent(config.auth.max_revoked, file)
                .map_err(BuildError::Revocations)?,
            None => MemoryRevocation::new(config.auth.max_revoked),
        });
        let cluster = match &config.cluster {
            Some(c) => Some(Arc::new(Cluster::new(c.clone(), metrics.clone())?)),
            None => None,
        };
        let guard = Arc::new(Guard {
            auth: Authenticator::new(&config.auth, revocation)?,
            client_ip: config.client_ip.clone(),
            cors: config.cors.clone(),
            metrics: metrics.clone(),
            cluster_limits: cluster.as_ref().map(|c| {
                ClusterLimits::new(c.clone(), metrics.clone(), config.rate_limit.max_keys)
            }),
        });
        let source = RouteSource {
            routes: routes_path.clone(),
            descriptors: config.descriptors.clone(),
        };
        let registries = Registries {
            health: HealthRegistry::default(),
            limiters: LimiterRegistry::new(config.rate_limit.max_keys),
            discovered: Default::default(),
        };
        let routes = Arc::new(RouteStore::open(source, registries, metrics.clone())?);
        let internal_token = config
            .push
            .internal_token_file
            .as_deref()
            .map(secret::read_token_file)
            .transpose()
            .map_err(BuildError::InternalToken)?;
        let internal_tls = config
            .push
            .internal_tls
            .as_ref()
            .map(crate::push::service::internal_tls)
            .transpose()
            .map_err(BuildError::InternalTls)?;
        let admin_access =
            AdminAccess::new(&config.admin, config.listen.admin).map_err(BuildError::Admin)?;
        let dispatcher = Arc::new(Dispatcher::new(metrics.clone()));
        let cluster_inbox = cluster.as_ref().map(|_| crate::cluster::node::inbox());
        let push = Arc::new(PushDeps {
            config: config.push.clone(),
            routes: routes.clone(),
            pipeline: Pipeline {
                guard: guard.clone(),
                dispatcher: dispatcher.clone(),
                access_log: config.telemetry.access_log,
                sample_ratio: config.telemetry.sample_ratio(),
            },
            hub: Hub::new(&config.push, config.rate_limit.max_keys, metrics.clone()),
            cluster,
        });
        Ok(Self {
            dispatcher,
            config,
            routes,
            metrics,
            guard,
            push,
            internal_token,
            internal_tls,
            admin_access,
            routes_path,
            readiness: Arc::default(),
            cluster_inbox,
        })
    }

    /// The Pingora server with the edge, push, admin and background services, its listeners
    /// already bound. Fails on a listener that cannot be bound, TLS material that does not load
    /// or a routes directory that cannot be watched.
    pub fn into_server(self, sighup: bool) -> Result<Server, ServeError> {
        Ok(self.into_bound_server(sighup)?.0)
    }

    /// [`into_server`](Self::into_server), with the addresses bound (port 0 resolved).
    pub fn into_bound_server(mut self, sighup: bool) -> Result<(Server, Listen), ServeError> {
        let bound = Bound::bind(&self.config.listen)?;
        let addrs = bound.addrs.clone();
        let cfg = &self.config;
        let conf = ServerConf {
            threads: cfg.threads,
            grace_period_seconds: Some(cfg.shutdown.grace_period.0.as_secs()),
            graceful_shutdown_timeout_seconds: Some(cfg.shutdown.graceful_timeout.0.as_secs()),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let conf = server.configuration.clone();
        server.add_service(self.edge_service(&conf, &addrs, bound.edge)?);
        server.add_service(self.push_runtime(&addrs, bound.push, bound.internal)?);
        server.add_service(self.admin_service(&addrs, bound.admin));
        let reloader = self.reloader(sighup)?;
        server.add_service(supervised("route reloader", reloader, &self.readiness));
        server.add_service(supervised(
            "maintenance",
            Maintenance {
                routes: self.routes.clone(),
                dispatcher: self.dispatcher.clone(),
                guard: self.guard.clone(),
                sweep_interval: self.config.rate_limit.sweep_interval.0,
            },
            &self.readiness,
        ));
        if let (Some(cluster), Some((tx, rx))) =
            (self.push.cluster.clone(), self.cluster_inbox.take())
        {
            server.add_service(supervised(
                "cluster node",
                NodeService { cluster, inbox: tx },
                &self.readiness,
            ));
            server.add_service(supervised(
                "cluster inbox",
                RemoteService {
                    deps: self.push.clone(),
                    inbox: std::sync::Mutex::new(Some(rx)),
                },
                &self.readiness,
            ));
        }
        Ok((server, addrs))
    }

    /// The edge: the proxy (h2c on, TLS with h2 when configured) below the slow-client guard.
    fn edge_service(
        &self,
        conf: &Arc<ServerConf>,
        addrs: &Listen,
        socket: std::net::TcpListener,
    ) -> Result<impl PingoraService + 'static, ServeError> {
        let cfg = &self.config;
        let mut proxy = pingora::proxy::http_proxy(
            conf,
            EdgeProxy {
                routes: self.routes.clone(),
                pipeline: self.push.pipeline.clone(),
                metrics: self.metrics.clone(),
                web: WebApp::new(&cfg.web, cfg.listen.push.port(), cfg.tls.is_some()),
            },
        );
        let mut opts = HttpServerOptions::default();
        opts.h2c = true;
        proxy.server_options = Some(opts);
        // Slow HTTP/1 clients are bounded below Pingora: head deadline, keep-alive, per-IP cap.
        let guarded = GuardedApp::new(
            proxy,
            cfg.http.clone(),
            cfg.client_ip.clone(),
            self.metrics.clone(),
        );
        let mut edge = Service::new("edge".to_owned(), guarded);
        match &cfg.tls {
            Some(tls) => {
                let mut settings = tls_settings(tls)?;
                settings.enable_h2();
                edge.add_tls_with_settings(&addrs.edge.to_string(), None, settings);
            }
            None => edge.add_tcp(&addrs.edge.to_string()),
        }
        Ok(PreBound::new(edge, vec![socket]))
    }

    fn admin_service(
        &self,
        addrs: &Listen,
        socket: std::net::TcpListener,
    ) -> impl PingoraService + 'static {
        let mut admin = Service::new(
            "admin".to_owned(),
            pingora::apps::http_app::HttpServer::new_app(AdminApp {
                routes: self.routes.clone(),
                metrics: self.metrics.clone(),
                guard: self.guard.clone(),
                push: self.push.clone(),
                access: self.admin_access.clone(),
                scrape: self.scrape(),
                readiness: self.readiness.clone(),
            }),
        );
        admin.threads = Some(1);
        admin.add_tcp(&addrs.admin.to_string());
        PreBound::new(admin, vec![socket])
    }

    /// The route reloader: the routes file's directory watched, SIGHUP when asked for.
    fn reloader(&self, sighup: bool) -> Result<Reloader, ServeError> {
        let cfg = &self.config;
        let watch_dir = cfg.reload.watch.then(|| {
            self.routes_path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), PathBuf::from)
        });
        Reloader::new(
            self.routes.clone(),
            watch_dir.as_deref(),
            sighup || cfg.reload.sighup,
            cfg.reload.debounce.0,
        )
        .map_err(ServeError::Watch)
    }

    /// The WebSocket listener and PushService, on one runtime of their own.
    fn push_runtime(
        &self,
        addrs: &Listen,
        socket: std::net::TcpListener,
        internal: std::net::TcpListener,
    ) -> Result<PushRuntime, ServeError> {
        let cfg = &self.config;
        let mut push = Service::new(
            "push".to_owned(),
            PushApp {
                deps: self.push.clone(),
            },
        );
        match &cfg.tls {
            // WebSockets upgrade from HTTP/1.1: no h2 in this listener's ALPN.
            Some(tls) => {
                let settings = tls_settings(tls)?;
                push.add_tls_with_settings(&addrs.push.to_string(), None, settings);
            }
            // tungstenite keeps its own (small) read buffer: no second one in Pingora's stream.
            None => push.add_listener(
                ListenerConfig::tcp(addrs.push.to_string())
                    .l4_buffer(L4BufferSettings::unbuffered()),
            ),
        }
        Ok(PushRuntime {
            listener: PreBound::new(push, vec![socket]),
            readiness: self.readiness.clone(),
            internal: Some(InternalGrpc {
                deps: self.push.clone(),
                listener: std::sync::Mutex::new(Some(internal)),
                addr: addrs.internal,
                tls: self.internal_tls.clone(),
                token_sha256: self.internal_token,
                serve_after_shutdown: cfg
                    .shutdown
                    .grace_period
                    .0
                    .saturating_sub(std::time::Duration::from_millis(250)),
            }),
        })
    }
}

/// A Pingora background service named `name` that marks the gateway not ready if it ends early.
fn supervised<S: BackgroundService + Send + Sync + 'static>(
    name: &'static str,
    service: S,
    readiness: &Arc<Readiness>,
) -> pingora::services::background::GenBackgroundService<Supervised<S>> {
    background_service(
        name,
        Supervised {
            name,
            service,
            readiness: readiness.clone(),
        },
    )
}

/// Why a built gateway could not become a server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("tls: cannot load {} / {}: {detail}", cert.display(), key.display())]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("reload.watch: {0}")]
    Watch(String),
    #[error("cannot start the gateway thread: {0}")]
    Thread(std::io::Error),
}

/// The certificate and key of `tls:`, for the edge and the push listener alike.
fn tls_settings(tls: &TlsFiles) -> Result<TlsSettings, ServeError> {
    let (cert, key) = (tls.cert.to_string_lossy(), tls.key.to_string_lossy());
    TlsSettings::intermediate(&cert, &key).map_err(|e| ServeError::Tls {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        detail: e.to_string(),
    })
}

/// A shutdown signal fed by a channel, so embedders and tests stop a server without signals.
struct ChannelSignal(tokio::sync::Mutex<mpsc::Receiver<ShutdownSignal>>);

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        self.0
            .lock()
            .await
            .recv()
            .await
            .unwrap_or(ShutdownSignal::FastShutdown)
    }
}

/// A gateway running on its own thread (Pingora cannot start inside a tokio runtime).
pub struct RunningGateway {
    pub routes: Arc<RouteStore>,
    pub metrics: Arc<Metrics>,
    /// The addresses its listeners are bound to.
    pub addrs: Listen,
    stop: mpsc::Sender<ShutdownSignal>,
    thread: Option<JoinHandle<()>>,
}

impl RunningGateway {
    pub fn start(gateway: Gateway) -> Result<Self, ServeError> {
        let routes = gateway.routes.clone();
        let metrics = gateway.metrics.clone();
        let (stop, rx) = mpsc::channel(1);
        let (server, addrs) = gateway.into_bound_server(false)?;
        let thread = std::thread::Builder::new()
            .name("im-gateway".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(ChannelSignal(tokio::sync::Mutex::new(rx))),
                })
            })
            .map_err(ServeError::Thread)?;
        Ok(Self {
            routes,
            metrics,
            addrs,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown(ShutdownSignal::FastShutdown);
    }

    /// Stops the server as SIGTERM does (sessions drain with 1001 and a reconnect hint, a
    /// cluster node announces its leave) and waits for its thread.
    pub fn drain(mut self) {
        self.shutdown(ShutdownSignal::GracefulTerminate);
    }

    fn shutdown(&mut self, signal: ShutdownSignal) {
        let _ = self.stop.try_send(signal);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.shutdown(ShutdownSignal::FastShutdown);
    }
}
