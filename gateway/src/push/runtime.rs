//! The push listener's Pingora service, with PushService started beside it on the same runtime.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::background::BackgroundService;
use pingora::services::listening::Service;
use pingora::services::Service as PingoraService;

use super::listener::PushApp;
use super::service::InternalGrpc;
use crate::listeners::PreBound;
use crate::readiness::{Readiness, Supervised};

/// The push listener and PushService on one runtime: a Push call then queues frames and wakes
/// session writers on the threads that own them, without a wake-up across runtimes per call.
pub struct PushRuntime {
    pub listener: PreBound<Service<PushApp>>,
    pub internal: Option<InternalGrpc>,
    pub readiness: Arc<Readiness>,
}

#[async_trait]
impl PingoraService for PushRuntime {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let Some(internal) = self.internal.take() {
            let shutdown = shutdown.clone();
            let internal = Supervised {
                name: "PushService listener",
                service: internal,
                readiness: self.readiness.clone(),
            };
            tokio::spawn(async move { internal.start(shutdown).await });
        }
        self.listener
            .start_service(fds, shutdown, listeners_per_fd)
            .await;
    }

    fn name(&self) -> &str {
        "push"
    }

    fn threads(&self) -> Option<usize> {
        self.listener.threads()
    }
}
