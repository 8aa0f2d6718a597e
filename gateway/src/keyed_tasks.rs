//! [`KeyedTasks`]: one background task per key of a wanted set (an endpoint's health check, a
//! discovery source's watcher), reconciled each time the set changes: new keys start, gone keys
//! are aborted, kept keys keep running undisturbed.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;

use tokio::task::JoinHandle;

pub struct KeyedTasks<K> {
    tasks: HashMap<K, JoinHandle<()>>,
}

impl<K> Default for KeyedTasks<K> {
    fn default() -> Self {
        Self {
            tasks: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> KeyedTasks<K> {
    /// Aborts the tasks of keys not in `wanted` and starts `start(key)` for new ones. Must be
    /// called inside a tokio runtime.
    pub fn reconcile<F, Fut>(&mut self, wanted: &HashSet<K>, mut start: F)
    where
        F: FnMut(&K) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.retain(|key, task| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for key in wanted {
            if !self.tasks.contains_key(key) {
                self.tasks.insert(key.clone(), tokio::spawn(start(key)));
            }
        }
    }
}

impl<K> Drop for KeyedTasks<K> {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}
