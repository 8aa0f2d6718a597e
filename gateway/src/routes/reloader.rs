//! The reload background service: it only reloads the route table, when its directory changes
//! (so symlink swaps are seen) or on SIGHUP. What follows a swap (health checks, dropping state of
//! removed endpoints) and the periodic sweeps live in [`crate::maintenance`], so a failed reload
//! cannot stop them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::RouteStore;

pub struct Reloader {
    pub routes: Arc<RouteStore>,
    /// Directory to watch; `None` disables watching.
    pub watch_dir: Option<PathBuf>,
    pub sighup: bool,
    pub debounce: Duration,
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // File events arrive on notify's thread; a capacity-1 channel coalesces bursts.
        let (tx, mut file_events) = mpsc::channel::<()>(1);
        let _watcher = self.watch_dir.as_ref().and_then(|dir| {
            let tx = tx.clone();
            let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if res.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.try_send(());
                }
            })
            .map_err(|e| tracing::error!(error = %e, "cannot watch routes directory"))
            .ok()?;
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| tracing::error!(dir = %dir.display(), error = %e, "cannot watch routes directory"))
                .ok()?;
            tracing::info!(dir = %dir.display(), "watching routes directory");
            Some(watcher)
        });
        let mut hup = if self.sighup {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| tracing::error!(error = %e, "cannot install SIGHUP handler"))
                .ok()
        } else {
            None
        };

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
