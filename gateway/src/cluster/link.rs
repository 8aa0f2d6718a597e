//! The node's Redis connections. Commands share one multiplexed `ConnectionManager` (it
//! reconnects on its own); the subscription has a second one over RESP3, whose push messages go
//! into a bounded channel and which resubscribes after a reconnect. Every command is bounded by
//! `cluster.command_timeout`, so a Redis that is away makes cross-node work fail fast.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, RedisError};
use tokio::sync::mpsc;

use super::ClusterConfig;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cluster.redis_url: {0}")]
    Url(RedisError),
    #[error("not connected to Redis yet")]
    NotConnected,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
}

#[derive(Clone)]
pub struct Link {
    client: redis::Client,
    commands: Arc<ArcSwapOption<ConnectionManager>>,
    timeout: Duration,
}

impl Link {
    pub fn new(cfg: &ClusterConfig) -> Result<Self, LinkError> {
        let info = cfg
            .redis_url
            .as_str()
            .into_connection_info()
            .map_err(LinkError::Url)?;
        let redis = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(redis)).map_err(LinkError::Url)?;
        Ok(Self {
            client,
            commands: Arc::default(),
            timeout: cfg.command_timeout.0,
        })
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_secs(1))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(2))
    }

    /// Opens the command connection (the node task retries this with backoff until it works).
    pub async fn connect(&self) -> Result<(), LinkError> {
        let manager = tokio::time::timeout(
            self.timeout.max(Duration::from_secs(2)),
            self.client
                .get_connection_manager_with_config(self.manager_config()),
        )
        .await
        .map_err(|_| LinkError::Timeout(self.timeout))??;
        self.commands.store(Some(Arc::new(manager)));
        Ok(())
    }

    pub fn connected(&self) -> bool {
        self.commands.load().is_some()
    }

    /// Runs one command (or pipeline) on the command connection within the timeout.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, LinkError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let conn = self.commands.load_full().ok_or(LinkError::NotConnected)?;
        tokio::time::timeout(self.timeout, f((*conn).clone()))
            .await
            .map_err(|_| LinkError::Timeout(self.timeout))?
            .map_err(LinkError::Redis)
    }

    /// A connection subscribed to `channels`, its messages sent to `tx`; a message that finds
    /// `tx` full is dropped and counted by `on_drop` (the subscription never blocks Redis's
    /// reader, and never buffers without bound).
    pub async fn subscribe(
        &self,
        channels: &[String],
        tx: mpsc::Sender<PushInfo>,
        on_drop: impl Fn() + Send + Sync + 'static,
    ) -> Result<ConnectionManager, LinkError> {
        let config = self
            .manager_config()
            .set_automatic_resubscription()
            .set_push_sender(move |info: PushInfo| {
                if tx.try_send(info).is_err() {
                    on_drop();
                }
                Ok::<(), redis::aio::SendError>(())
            });
        let mut manager = tokio::time::timeout(
            self.timeout.max(Duration::from_secs(2)),
            self.client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| LinkError::Timeout(self.timeout))??;
        for channel in channels {
            tokio::time::timeout(self.timeout, manager.subscribe(channel))
                .await
                .map_err(|_| LinkError::Timeout(self.timeout))??;
        }
        Ok(manager)
    }
}
