//! Reaching connected users through the gateway's PushService (DESIGN §8): notifications after
//! a state change, and session revocation on logout. Every call carries the internal token.
//!
//! Notifications wait in one bounded queue and go out a few at a time; when the gateway is slow
//! or away and the queue is full, new ones are dropped, logged with a running count (a client
//! catches up on reconnect with `after_seq`; the state change itself is already stored).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use im_proto::im::gateway::v1::push_service_client::PushServiceClient;
use im_proto::im::gateway::v1::{PushRequest, RevokeRequest};
use tokio::sync::{mpsc, Semaphore};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::error::ApiError;

const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Notifications waiting to be sent; past this they are dropped and counted.
pub const QUEUE: usize = 4096;
/// Push calls in flight at once.
const IN_FLIGHT: usize = 16;

/// The notifications of DESIGN §10: the push `kind` and its payload's message type.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    FriendAddApply,
    FriendAddProcess,
    FriendRemove,
    ChatSessionCreate,
    ChatMessage,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::FriendAddApply => "friend_add_apply_notify",
            Kind::FriendAddProcess => "friend_add_process_notify",
            Kind::FriendRemove => "friend_remove_notify",
            Kind::ChatSessionCreate => "chat_session_create_notify",
            Kind::ChatMessage => "chat_message_notify",
        }
    }

    pub fn payload_type(self) -> &'static str {
        match self {
            Kind::FriendAddApply => "im.friend.v1.FriendAddApplyNotify",
            Kind::FriendAddProcess => "im.friend.v1.FriendAddProcessNotify",
            Kind::FriendRemove => "im.friend.v1.FriendRemoveNotify",
            Kind::ChatSessionCreate => "im.friend.v1.ChatSessionCreateNotify",
            Kind::ChatMessage => "im.message.v1.ChatMessageNotify",
        }
    }
}

/// Where notifications go. `None` address: nowhere (a backend run alone); logged once per call.
#[derive(Clone)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

struct Target {
    client: PushServiceClient<Channel>,
    authorization: AsciiMetadataValue,
    queue: mpsc::Sender<PushRequest>,
    /// Notifications dropped because the queue was full, since start.
    dropped: AtomicU64,
}

impl Notifier {
    /// `addr`: the gateway's internal listener (`http://127.0.0.1:9090`); `token`: the internal
    /// token. Connects lazily, so the gateway may start after the backends. Call it inside a
    /// Tokio runtime: the sending task starts here.
    pub fn new(addr: Option<&str>, token: Option<&str>) -> Result<Self, String> {
        Self::with_queue(addr, token, QUEUE)
    }

    /// [`new`](Self::new) with a queue of `capacity` notifications.
    pub fn with_queue(
        addr: Option<&str>,
        token: Option<&str>,
        capacity: usize,
    ) -> Result<Self, String> {
        let Some(addr) = addr else {
            return Ok(Self { target: None });
        };
        let token =
            token.ok_or("--push-addr needs --internal-token-file (the gateway checks it)")?;
        let uri = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let channel = Endpoint::from_shared(uri)
            .map_err(|e| format!("--push-addr `{addr}`: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        let authorization = AsciiMetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| "internal token: not printable ASCII".to_owned())?;
        let client = PushServiceClient::new(channel);
        let (queue, pending) = mpsc::channel(capacity.max(1));
        tokio::spawn(send_queued(pending, client.clone(), authorization.clone()));
        Ok(Self {
            target: Some(Arc::new(Target {
                client,
                authorization,
                queue,
                dropped: AtomicU64::new(0),
            })),
        })
    }

    /// Notifications dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.target
            .as_ref()
            .map_or(0, |t| t.dropped.load(Ordering::Relaxed))
    }

    pub fn disabled() -> Self {
        Self { target: None }
    }

    /// Sends `payload` (of `kind`'s payload type) to every device of `user_ids` except
    /// `exclude_device`, in the background: the caller's answer never waits on delivery.
    pub fn push(
        &self,
        user_ids: Vec<String>,
        kind: Kind,
        payload: &impl prost::Message,
        exclude_device: Option<String>,
    ) {
        let (payload_type, kind) = (kind.payload_type(), kind.name());
        let Some(target) = self.target.clone() else {
            tracing::debug!(kind, "no --push-addr: notification not sent");
            return;
        };
        let req = PushRequest {
            user_ids,
            kind: kind.to_owned(),
            payload_type: payload_type.to_owned(),
            payload: payload.encode_to_vec(),
            platforms: Vec::new(),
            exclude_device_ids: exclude_device.into_iter().collect(),
        };
        if target.queue.try_send(req).is_err() {
            let dropped_total = target.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                kind,
                dropped_total,
                "notification queue full: notification dropped"
            );
        }
    }

    /// Revokes `sid` on the gateways (closes its WebSockets with 4001) and waits for the answer:
    /// a logout that could not revoke must not report success.
    pub async fn revoke(&self, sid: &str, exp: i64) -> Result<(), ApiError> {
        let Some(target) = &self.target else {
            tracing::warn!("no --push-addr: session not revoked at the gateway");
            return Ok(());
        };
        let mut request = tonic::Request::new(RevokeRequest {
            sid: sid.to_owned(),
            exp,
        });
        request
            .metadata_mut()
            .insert("authorization", target.authorization.clone());
        target
            .client
            .clone()
            .revoke(request)
            .await
            .map(|_| ())
            .map_err(|s| {
                ApiError::unavailable(format!(
                    "could not revoke the session at the gateway ({}); try again",
                    s.message()
                ))
            })
    }
}

/// Sends queued notifications, at most [`IN_FLIGHT`] at a time, until every sender is gone.
async fn send_queued(
    mut pending: mpsc::Receiver<PushRequest>,
    client: PushServiceClient<Channel>,
    authorization: AsciiMetadataValue,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(req) = pending.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (mut client, authorization) = (client.clone(), authorization.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let kind = req.kind.clone();
            let mut request = tonic::Request::new(req);
            request
                .metadata_mut()
                .insert("authorization", authorization);
            if let Err(status) = client.push(request).await {
                tracing::warn!(kind, code = ?status.code(), "push failed: {}", status.message());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_growing() {
        // Nothing listens on port 9 of loopback; the sending task cannot run before the loop
        // ends (one thread), so exactly `capacity` notifications are queued.
        let n = Notifier::with_queue(Some("127.0.0.1:9"), Some("t"), 3).unwrap();
        let payload = im_proto::im::friend::v1::FriendRemoveNotify::default();
        for _ in 0..10 {
            n.push(vec!["u".into()], Kind::FriendRemove, &payload, None);
        }
        assert_eq!(n.dropped(), 7);
    }

    #[test]
    fn every_payload_type_is_in_the_descriptor_set() {
        let set = prost_types::FileDescriptorSet::decode(im_proto::DESCRIPTOR_SET).unwrap();
        let names: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| {
                let package = f.package().to_owned();
                f.message_type
                    .iter()
                    .map(move |m| format!("{package}.{}", m.name()))
            })
            .collect();
        for kind in [
            Kind::FriendAddApply,
            Kind::FriendAddProcess,
            Kind::FriendRemove,
            Kind::ChatSessionCreate,
            Kind::ChatMessage,
        ] {
            assert!(
                names.iter().any(|n| n == kind.payload_type()),
                "{kind:?}: {} is not a message of proto/",
                kind.payload_type()
            );
        }
    }
}
