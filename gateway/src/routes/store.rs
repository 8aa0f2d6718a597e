//! [`RouteStore`]: the current route table as one atomically swapped snapshot, plus what the last
//! reload did. Requests load the snapshot once and finish on it, whatever reloads happen meanwhile.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::descriptors;
use super::error::RoutesError;
use super::registries::Registries;
use super::table::RouteTable;
use crate::metrics::Metrics;

/// Where routes and descriptors are read from on every (re)load.
#[derive(Debug, Clone)]
pub struct RouteSource {
    pub routes: PathBuf,
    /// `None`: the descriptor set embedded from `proto/`.
    pub descriptors: Option<PathBuf>,
}

impl RouteSource {
    /// Reads and builds a table without touching any live state (`im-gateway check`, reloads).
    pub fn build(&self, registries: &Registries) -> Result<RouteTable, RoutesError> {
        let text = std::fs::read_to_string(&self.routes).map_err(|e| RoutesError::Io {
            path: self.routes.clone(),
            source: Arc::new(e),
        })?;
        let (pool, bytes) = descriptors::load(self.descriptors.as_deref())?;
        RouteTable::build(&text, pool, &bytes, registries)
    }
}

/// What `/admin/routes` reports about reloads.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

pub struct RouteStore {
    current: ArcSwap<RouteTable>,
    source: RouteSource,
    registries: Registries,
    // A std Mutex: held only to copy or update a few fields, never across `.await`.
    status: Mutex<ReloadStatus>,
    /// Held from build to swap by reloads and discovery rebuilds, so neither swaps in a table
    /// built before the other's (a rebuild never undoes a reload). Never held across `.await`.
    swapping: Mutex<()>,
    /// Bumped on every successful swap; the health supervisor reconciles on it.
    swapped: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl RouteStore {
    /// Loads the initial table; a broken file here is a startup error, not a degraded start.
    pub fn open(
        source: RouteSource,
        registries: Registries,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RoutesError> {
        let table = source.build(&registries)?;
        tracing::info!(version = %table.version, routes = table.routes.len(), "routes loaded");
        metrics.known_upstreams(table.upstreams.keys().map(String::as_str));
        Ok(Self {
            current: ArcSwap::from_pointee(table),
            source,
            registries,
            status: Mutex::default(),
            swapping: Mutex::default(),
            swapped: watch::channel(0).0,
            metrics,
        })
    }

    /// The snapshot to serve one request from.
    pub fn load(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Fires after each successful swap.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.swapped.subscribe()
    }

    /// Like [`Self::reload`], but a file whose content (and descriptors) did not change is a no-op.
    pub fn reload_if_changed(&self, trigger: &str) -> Result<Arc<RouteTable>, RoutesError> {
        let _swapping = self.swapping.lock().unwrap_or_else(PoisonError::into_inner);
        let result = self.source.build(&self.registries);
        if let Ok(table) = &result {
            if table.version == self.load().version {
                return Ok(self.load());
            }
        }
        self.apply(trigger, result)
    }

    /// Rebuilds from the source and swaps the new table in, or keeps the old one and records why not.
    pub fn reload(&self, trigger: &str) -> Result<Arc<RouteTable>, RoutesError> {
        let _swapping = self.swapping.lock().unwrap_or_else(PoisonError::into_inner);
        let result = self.source.build(&self.registries);
        self.apply(trigger, result)
    }

    /// Rebuilds the current table from its own file with the endpoints discovery knows now, and
    /// swaps it in. Not a reload: nothing is read from disk and the reload counters stay.
    pub fn refresh_endpoints(&self) {
        let _swapping = self.swapping.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.load();
        match current.rebuild(&self.registries) {
            Ok(table) => {
                let endpoints = table.endpoints().count();
                self.current.store(Arc::new(table));
                self.swapped.send_modify(|n| *n += 1);
                tracing::info!(version = %current.version, endpoints, "endpoints rediscovered");
            }
            // The file built once already; only a registry in a state no build accepts could
            // fail here, and the serving table stays.
            Err(e) => tracing::error!(error = %e, "rebuilding with discovered endpoints failed"),
        }
    }

    fn apply(
        &self,
        trigger: &str,
        result: Result<RouteTable, RoutesError>,
    ) -> Result<Arc<RouteTable>, RoutesError> {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(table) => {
                let table = Arc::new(table);
                self.metrics
                    .known_upstreams(table.upstreams.keys().map(String::as_str));
                let old = self.current.swap(table.clone());
                status.reloads_ok += 1;
                status.last_error = None;
                drop(status);
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                self.metrics.last_reload_ok.set(1);
                self.metrics
                    .last_reload_ok_time
                    .set(crate::clock::unix_now() as i64);
                self.swapped.send_modify(|n| *n += 1);
                tracing::info!(trigger, from = %old.version, to = %table.version, routes = table.routes.len(), "routes reloaded");
                Ok(table)
            }
            Err(e) => {
                status.reloads_failed += 1;
                status.last_error = Some(e.to_string());
                status.last_error_at = Some(SystemTime::now());
                drop(status);
                self.metrics.reloads.with_label_values(&["error"]).inc();
                self.metrics.last_reload_ok.set(0);
                tracing::error!(trigger, error = %e, "routes reload rejected; the previous table keeps serving");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = r#"
upstreams:
  echo: { endpoints: ["127.0.0.1:50051"] }
routes:
  - { name: echo, http: { path: /e }, upstream: echo, grpc: im.echo.v1.EchoService/Echo }
"#;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("im-gw-store-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn descriptor_set_from_a_file_reloads_with_the_routes() {
        let dir = scratch("desc");
        let (routes, desc) = (dir.join("routes.yaml"), dir.join("set.pb"));
        std::fs::write(&routes, ROUTES).unwrap();
        std::fs::write(&desc, im_proto::DESCRIPTOR_SET).unwrap();
        let store = RouteStore::open(
            RouteSource {
                routes: routes.clone(),
                descriptors: Some(desc.clone()),
            },
            Registries::default(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let v1 = store.load().version.clone();

        // A descriptor set without the method: the reload is rejected and names the route.
        std::fs::write(&desc, b"").unwrap();
        let err = store.reload("test").err().expect("rejected").to_string();
        assert!(err.contains("route `echo`: field `grpc`"), "{err}");
        std::fs::write(&desc, b"\xff garbage").unwrap();
        assert!(store
            .reload("test")
            .err()
            .expect("rejected")
            .to_string()
            .contains("not a valid FileDescriptorSet"));
        assert_eq!(store.load().version, v1, "the old table keeps serving");
        assert_eq!(store.status().reloads_failed, 2);

        std::fs::write(&desc, im_proto::DESCRIPTOR_SET).unwrap();
        assert!(store.reload("test").is_ok());
        assert!(store.status().last_error.is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
