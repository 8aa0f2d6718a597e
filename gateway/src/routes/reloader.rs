//! The reload background service: it only reloads the route table, when its directory changes
//! (so symlink swaps are seen) or on SIGHUP. What follows a swap (health checks, dropping state of
//! removed endpoints) and the periodic sweeps live in [`crate::maintenance`], so a failed reload
//! cannot stop them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::RouteStore;

pub struct Reloader {
    routes: Arc<RouteStore>,
    /// The directory watch, set up at start-up (so a directory that cannot be watched stops it);
    /// kept alive as long as the service.
    _watcher: Option<notify::RecommendedWatcher>,
    /// File events from notify's thread, taken by the running service.
    // A std Mutex: taken once, at start.
    file_events: std::sync::Mutex<Option<mpsc::Receiver<()>>>,
    sighup: bool,
    debounce: Duration,
}

impl Reloader {
    /// Watches `watch_dir` (none: no watching); the error names the directory and the cause.
    pub fn new(
        routes: Arc<RouteStore>,
        watch_dir: Option<&Path>,
        sighup: bool,
        debounce: Duration,
    ) -> Result<Self, String> {
        // A capacity-1 channel coalesces bursts.
        let (tx, file_events) = mpsc::channel::<()>(1);
        let watcher = match watch_dir {
            Some(dir) => {
                let cannot = |e: notify::Error| {
                    format!(
                        "cannot watch the routes directory {}: {e}; fix it or set reload.watch: false",
                        dir.display()
                    )
                };
                let mut watcher =
                    notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                        if res.is_ok_and(|e| !e.kind.is_access()) {
                            let _ = tx.try_send(());
                        }
                    })
                    .map_err(cannot)?;
                watcher
                    .watch(dir, RecursiveMode::NonRecursive)
                    .map_err(cannot)?;
                tracing::info!(dir = %dir.display(), "watching routes directory");
                Some(watcher)
            }
            None => None,
        };
        Ok(Self {
            routes,
            _watcher: watcher,
            file_events: std::sync::Mutex::new(Some(file_events)),
            sighup,
            debounce,
        })
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self
            .file_events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut file_events) = taken else {
            return;
        };
        let mut hup = None;
        if self.sighup {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(signal) => hup = Some(signal),
                Err(e) => {
                    // Its supervisor marks the gateway not ready: reloads were asked for.
                    tracing::error!(error = %e, "cannot install the SIGHUP handler");
                    return;
                }
            }
        }

        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = file_events.recv() => {
                    // Let multi-step saves settle, then load once.
                    tokio::time::sleep(self.debounce).await;
                    while file_events.try_recv().is_ok() {}
                    let _ = self.routes.reload_if_changed("file change");
                }
                Some(()) = async { match hup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                    let _ = self.routes.reload("SIGHUP");
                }
            }
        }
    }
}
