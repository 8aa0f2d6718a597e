//! Service discovery: upstream endpoints found in DNS ([`dns`]: A/AAAA or SRV, re-resolved on an
//! interval and on TTL) or in etcd ([`etcd`]: a watched key prefix), as well as listed in
//! `routes.yaml`.
//!
//! What a source finds is kept in [`DiscoveredSets`] (one of the [`crate::routes::Registries`]),
//! outside any route table. A change there rebuilds the current table from the same file, so
//! discovered endpoints are ordinary endpoints: health by address (a new one waits for its first
//! passing check), weights, draining of removed ones by the snapshots in-flight calls hold. A
//! source that fails (registry unreachable, empty DNS answer) keeps its last set and says so in
//! [`SetStatus`], which `/readyz`, `/admin/routes` and the metrics read.
//! [`supervisor::DiscoverySupervisor`] runs one watcher per source of the current table.

pub mod dns;
pub mod etcd;
pub mod supervisor;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// Where an upstream's endpoints are looked up (validated, defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Dns(DnsTarget),
    Etcd(EtcdTarget),
}

/// A DNS name to resolve: `host:port` (A and AAAA) or an SRV name (ports and weights from SRV).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsTarget {
    pub name: String,
    /// `None`: an SRV lookup.
    pub port: Option<u16>,
    /// Empty: the system's resolvers (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// The longest time between two lookups; a shorter TTL makes it sooner.
    pub interval: Duration,
}

/// An etcd key prefix whose values are `{"addr": "host:port", "weight": N}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EtcdTarget {
    pub endpoints: Vec<String>,
    pub prefix: String,
}

impl Source {
    /// `dns` or `etcd`: the origin `/admin/routes` shows for the endpoints it found.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Dns(_) => "dns",
            Source::Etcd(_) => "etcd",
        }
    }

    /// One line naming the source, for logs and `/admin/routes`.
    pub fn describe(&self) -> String {
        match self {
            Source::Dns(t) => match t.port {
                Some(port) => format!("dns {}:{port}", t.name),
                None => format!("dns SRV {}", t.name),
            },
            Source::Etcd(t) => format!("etcd {} {}", t.endpoints.join(","), t.prefix),
        }
    }
}

/// One endpoint a source found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Found {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// An endpoint address as routes.yaml and registrations write it: `IP:port`, or `localhost:port`.
pub fn endpoint_addr(text: &str) -> Option<SocketAddr> {
    text.replace("localhost:", "127.0.0.1:").parse().ok()
}

/// Most endpoints one source may contribute; the rest are ignored with a warning.
pub const MAX_FOUND: usize = 1024;

/// What a source last found, and whether it is working now.
#[derive(Debug, Clone, Default)]
pub struct SetStatus {
    /// The last set found (kept while the source fails).
    pub endpoints: Vec<Found>,
    /// Whether the last lookup (or the watch) works and gave at least one endpoint.
    pub ok: bool,
    /// Why not, when not.
    pub error: Option<String>,
    /// When the set was last confirmed by the source.
    pub updated_at: Option<SystemTime>,
}

/// Discovered endpoint sets by source, shared by every route table a gateway builds. Bounded by
/// the sources of the current table ([`Self::retain`]) and [`MAX_FOUND`] endpoints each.
#[derive(Clone)]
pub struct DiscoveredSets {
    // A std Mutex: touched by watchers on a change and by table builds, never per request.
    sets: Arc<Mutex<HashMap<Source, SetStatus>>>,
    /// Bumped whenever a set's endpoints change: the current table is then rebuilt.
    changed: Arc<watch::Sender<u64>>,
}

impl Default for DiscoveredSets {
    fn default() -> Self {
        Self {
            sets: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

impl DiscoveredSets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Source, SetStatus>> {
        self.sets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The endpoints last found by `source` (none before its first answer).
    pub fn endpoints(&self, source: &Source) -> Vec<Found> {
        self.lock()
            .get(source)
            .map(|s| s.endpoints.clone())
            .unwrap_or_default()
    }

    pub fn status(&self, source: &Source) -> Option<SetStatus> {
        self.lock().get(source).cloned()
    }

    /// The source answered with `found`, which replaces the last set. (A source for which an
    /// empty answer means trouble, like DNS, reports [`Self::failed`] instead.)
    pub fn found(&self, source: &Source, mut found: Vec<Found>) {
        found.sort();
        found.dedup_by_key(|f| f.addr);
        if found.len() > MAX_FOUND {
            tracing::warn!(source = %source.describe(), found = found.len(), max = MAX_FOUND, "too many endpoints; the rest are ignored");
            found.truncate(MAX_FOUND);
        }
        let changed = {
            let mut sets = self.lock();
            let set = sets.entry(source.clone()).or_default();
            if !set.ok {
                tracing::info!(source = %source.describe(), endpoints = found.len(), "discovery answers");
            }
            set.ok = true;
            set.error = None;
            set.updated_at = Some(SystemTime::now());
            let changed = set.endpoints != found;
            if changed {
                tracing::info!(source = %source.describe(), from = set.endpoints.len(), to = found.len(), "discovered endpoints changed");
                set.endpoints = found;
            }
            changed
        };
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// The source cannot be read now; its last set keeps serving.
    pub fn failed(&self, source: &Source, error: String) {
        let mut sets = self.lock();
        let set = sets.entry(source.clone()).or_default();
        if set.ok || set.error.as_deref() != Some(error.as_str()) {
            tracing::warn!(source = %source.describe(), %error, kept = set.endpoints.len(), "discovery failing; the last known endpoints keep serving");
        }
        set.ok = false;
        set.error = Some(error);
    }

    /// Fires when any set's endpoints change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Forgets sources no table uses any more.
    pub fn retain(&self, keep: &HashSet<Source>) {
        self.lock().retain(|s, _| keep.contains(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        Source::Etcd(EtcdTarget {
            endpoints: vec!["127.0.0.1:2379".into()],
            prefix: "/im/services/x/".into(),
        })
    }

    fn found(port: u16) -> Found {
        Found {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
        }
    }

    #[test]
    fn a_failure_keeps_the_last_set_and_only_changes_rebuild() {
        let sets = DiscoveredSets::default();
        let mut changes = sets.subscribe();
        let s = source();
        sets.found(&s, vec![found(2), found(1), found(2)]);
        assert_eq!(sets.endpoints(&s), vec![found(1), found(2)]);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();

        sets.failed(&s, "refused".into());
        let status = sets.status(&s).unwrap();
        assert!(!status.ok);
        assert_eq!(status.error.as_deref(), Some("refused"));
        assert_eq!(sets.endpoints(&s).len(), 2);
        assert!(!changes.has_changed().unwrap(), "nothing to rebuild");

        sets.found(&s, vec![found(1), found(2)]);
        assert!(sets.status(&s).unwrap().ok);
        assert!(!changes.has_changed().unwrap(), "same set: no rebuild");
        sets.found(&s, vec![found(1)]);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        sets.found(&s, Vec::new());
        assert!(
            sets.endpoints(&s).is_empty(),
            "an empty answer is an answer"
        );
        assert!(changes.has_changed().unwrap());
    }
}
