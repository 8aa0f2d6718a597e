//! One watcher per discovery source of the current table, reconciled after every table swap.

use std::collections::HashSet;

use super::{dns, etcd, DiscoveredSets, Source};
use crate::keyed_tasks::KeyedTasks;

#[derive(Default)]
pub struct DiscoverySupervisor {
    watchers: KeyedTasks<Source>,
}

impl DiscoverySupervisor {
    /// Starts watchers for new sources, stops those of sources no table uses and forgets their
    /// sets. Must be called inside a tokio runtime.
    pub fn reconcile(&mut self, wanted: HashSet<Source>, sets: &DiscoveredSets) {
        self.watchers.reconcile(&wanted, |source| {
            let (source, sets) = (source.clone(), sets.clone());
            async move {
                match source.clone() {
                    Source::Dns(target) => dns::watch(target, source, sets).await,
                    Source::Etcd(target) => etcd::watch(target, source, sets).await,
                }
            }
        });
        sets.retain(&wanted);
    }
}
