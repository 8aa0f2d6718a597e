//! What `/readyz` gates on besides the route table: the background services a gateway cannot do
//! its job without (PushService's listener, the maintenance loop, the route reloader, the
//! cluster node task). [`Supervised`] runs one and records here when it ends before shutdown or
//! panics; `/readyz` then answers 503 naming it and why, so a load balancer or an orchestrator
//! takes the node out instead of sending traffic to a gateway that cannot deliver pushes.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use futures::FutureExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Failed services by name, with the reason; shared by the services and the admin listener.
#[derive(Default)]
pub struct Readiness {
    // A std Mutex: written once per failure, read per `/readyz`; never held across `.await`.
    failed: Mutex<Vec<(&'static str, String)>>,
}

impl Readiness {
    /// Marks `service` failed (the first reason given is kept).
    pub fn fail(&self, service: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::error!(service, %reason, "a gateway service failed: /readyz now answers 503");
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        if !failed.iter().any(|(s, _)| *s == service) {
            failed.push((service, reason));
        }
    }

    /// The failed services and why, in the order they failed.
    pub fn failures(&self) -> Vec<(&'static str, String)> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A background service whose end before shutdown (a return or a panic) makes the gateway not
/// ready.
pub struct Supervised<S> {
    pub name: &'static str,
    pub service: S,
    pub readiness: Arc<Readiness>,
}

#[async_trait]
impl<S: BackgroundService + Send + Sync> BackgroundService for Supervised<S> {
    async fn start(&self, shutdown: ShutdownWatch) {
        let ran = AssertUnwindSafe(self.service.start(shutdown.clone()))
            .catch_unwind()
            .await;
        let stopping = *shutdown.borrow();
        match ran {
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                self.readiness.fail(self.name, format!("panicked: {what}"));
            }
            Ok(()) if !stopping => self.readiness.fail(self.name, "stopped before shutdown"),
            Ok(()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ends;
    #[async_trait]
    impl BackgroundService for Ends {
        async fn start(&self, _: ShutdownWatch) {}
    }

    struct Panics;
    #[async_trait]
    impl BackgroundService for Panics {
        async fn start(&self, _: ShutdownWatch) {
            panic!("boom");
        }
    }

    #[tokio::test]
    async fn an_early_end_or_a_panic_is_a_failure_a_stop_is_not() {
        let readiness = Arc::new(Readiness::default());
        let (tx, rx) = tokio::sync::watch::channel(false);
        Supervised {
            name: "ends",
            service: Ends,
            readiness: readiness.clone(),
        }
        .start(rx.clone())
        .await;
        Supervised {
            name: "panics",
            service: Panics,
            readiness: readiness.clone(),
        }
        .start(rx.clone())
        .await;
        tx.send(true).unwrap();
        Supervised {
            name: "stopped",
            service: Ends,
            readiness: readiness.clone(),
        }
        .start(rx)
        .await;
        let failed = readiness.failures();
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert_eq!(failed[0], ("ends", "stopped before shutdown".to_owned()));
        assert_eq!(failed[1], ("panics", "panicked: boom".to_owned()));
    }
}
