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
    /// Aborts the tasks of keys not in `wanted` and starts `start(key)` for new ones and for
    /// kept ones whose task ended. Must be called inside a tokio runtime.
    pub fn reconcile<F, Fut>(&mut self, wanted: &HashSet<K>, mut start: F)
    where
        F: FnMut(&K) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // A task that ended (returned or panicked) is started again, like a new key.
        self.tasks.retain(|key, task| {
            let keep = wanted.contains(key) && !task.is_finished();
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::KeyedTasks;

    #[tokio::test]
    async fn a_task_that_ended_is_started_again_and_a_running_one_is_left_alone() {
        let starts = Arc::new(AtomicUsize::new(0));
        let mut tasks = KeyedTasks::default();
        let wanted: HashSet<&str> = ["ends", "runs"].into();
        let start = |key: &&str| {
            starts.fetch_add(1, Ordering::Relaxed);
            let runs = *key == "runs";
            async move {
                if runs {
                    std::future::pending::<()>().await;
                }
            }
        };
        tasks.reconcile(&wanted, start);
        assert_eq!(starts.load(Ordering::Relaxed), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        tasks.reconcile(&wanted, start);
        assert_eq!(
            starts.load(Ordering::Relaxed),
            3,
            "only the task that ended is started again"
        );
    }
}
