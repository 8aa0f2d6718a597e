//! Reaching connected users through the gateway's PushService (DESIGN §8): notifications after
//! a state change, and session revocation on logout. Every call carries the internal token.

use std::sync::Arc;
use std::time::Duration;

use im_proto::im::gateway::v1::push_service_client::PushServiceClient;
use im_proto::im::gateway::v1::{PushRequest, RevokeRequest};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::error::ApiError;

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

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
}

impl Notifier {
    /// `addr`: the gateway's internal listener (`http://127.0.0.1:9090`); `token`: the internal
    /// token. Connects lazily, so the gateway may start after the backends.
    pub fn new(addr: Option<&str>, token: Option<&str>) -> Result<Self, String> {
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
        Ok(Self {
            target: Some(Arc::new(Target {
                client: PushServiceClient::new(channel),
                authorization,
            })),
        })
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
        tokio::spawn(async move {
            let mut request = tonic::Request::new(req);
            request
                .metadata_mut()
                .insert("authorization", target.authorization.clone());
            if let Err(status) = target.client.clone().push(request).await {
                tracing::warn!(kind, code = ?status.code(), "push failed: {}", status.message());
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

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
