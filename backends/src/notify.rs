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
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

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
    gateways: Gateways,
    authorization: AsciiMetadataValue,
    /// Each with the `traceparent` of the call that caused it (the Push call continues its trace).
    queue: mpsc::Sender<(PushRequest, Option<String>)>,
    /// Notifications dropped because the queue was full, since start.
    dropped: AtomicU64,
}

impl Notifier {
    /// `addr`: the gateways' internal listeners, comma-separated (`127.0.0.1:7171`, or
    /// `gw1:7171,gw2:7171` for a cluster); `token`: the internal token. Connects lazily, so the gateway may start after the backends. Call it inside a
    /// Tokio runtime: the sending task starts here.
    pub fn new(
        addr: Option<&str>,
        token: Option<&str>,
        tls: Option<&PushTls>,
    ) -> Result<Self, String> {
        Self::with_queue(addr, token, tls, QUEUE)
    }

    /// [`new`](Self::new) with a queue of `capacity` notifications.
    pub fn with_queue(
        addr: Option<&str>,
        token: Option<&str>,
        tls: Option<&PushTls>,
        capacity: usize,
    ) -> Result<Self, String> {
        let Some(addr) = addr else {
            return Ok(Self { target: None });
        };
        let token =
            token.ok_or("--push-addr needs --internal-token-file (the gateway checks it)")?;
        let gateways = Gateways::new(addr, tls)?;
        let authorization = AsciiMetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| "internal token: not printable ASCII".to_owned())?;
        let (queue, pending) = mpsc::channel(capacity.max(1));
        tokio::spawn(send_queued(
            pending,
            gateways.clone(),
            authorization.clone(),
        ));
        Ok(Self {
            target: Some(Arc::new(Target {
                gateways,
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
        let traceparent = im_telemetry::traceparent::current();
        if target.queue.try_send((req, traceparent)).is_err() {
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
        let revoke = RevokeRequest {
            sid: sid.to_owned(),
            exp,
        };
        target
            .gateways
            .call(|mut client| {
                let request = authed(revoke.clone(), &target.authorization);
                async move { client.revoke(request).await }
            })
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

/// `msg` with the internal token.
fn authed<T>(msg: T, authorization: &AsciiMetadataValue) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    request
        .metadata_mut()
        .insert("authorization", authorization.clone());
    request
}

/// Sends queued notifications, at most [`IN_FLIGHT`] at a time, until every sender is gone.
async fn send_queued(
    mut pending: mpsc::Receiver<(PushRequest, Option<String>)>,
    gateways: Gateways,
    authorization: AsciiMetadataValue,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some((req, traceparent)) = pending.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (gateways, authorization) = (gateways.clone(), authorization.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let kind = req.kind.clone();
            let pushed = gateways
                .call(|mut client| {
                    let mut request = authed(req.clone(), &authorization);
                    let parent = traceparent.as_deref().map(AsciiMetadataValue::try_from);
                    if let Some(Ok(parent)) = parent {
                        request.metadata_mut().insert("traceparent", parent);
                    }
                    async move { client.push(request).await }
                })
                .await;
            if let Err(status) = pushed {
                let cause = causes(&status);
                tracing::warn!(kind, code = ?status.code(), cause, "push failed: {}", status.message());
            }
        });
    }
}

/// The gateways a backend may call (`--push-addr a,b,c`): any node routes any call (cluster
/// mode, DESIGN §9). Calls go to the current one; only a call that could not connect moves on to
/// the next, because Push is not idempotent: a call that may have been delivered is never sent
/// again.
#[derive(Clone)]
struct Gateways {
    clients: Arc<[PushServiceClient<Channel>]>,
    current: Arc<std::sync::atomic::AtomicUsize>,
}

/// TLS to the gateways' internal listeners (`push.internal_tls` there): the CA their
/// certificates chain to, and this backend's certificate and key when they require mTLS.
#[derive(Debug, Clone)]
pub struct PushTls {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl PushTls {
    fn client_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

impl Gateways {
    fn new(list: &str, tls: Option<&PushTls>) -> Result<Self, String> {
        let clients = list
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|addr| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let uri = if addr.contains("://") {
                    addr.to_owned()
                } else {
                    format!("{scheme}://{addr}")
                };
                let mut endpoint = Endpoint::from_shared(uri)
                    .map_err(|e| format!("--push-addr `{addr}`: {e}"))?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(CALL_TIMEOUT);
                if let Some(tls) = tls {
                    endpoint = endpoint
                        .tls_config(tls.client_config())
                        .map_err(|e| format!("--push-ca / --push-cert: {e}"))?;
                }
                let channel = endpoint.connect_lazy();
                Ok(PushServiceClient::new(channel))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if clients.is_empty() {
            return Err("--push-addr: give at least one host:port".into());
        }
        Ok(Self {
            clients: clients.into(),
            current: Arc::default(),
        })
    }

    /// `call` on the current gateway, then on the next ones while the failure is a connect
    /// failure (nothing was sent), each gateway at most once.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(PushServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.clients.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let index = (start + i) % n;
            match call(self.clients[index].clone()).await {
                Err(status) if never_delivered(&status) => {
                    tracing::debug!(gateway = index, "gateway not reachable; trying the next");
                    last = Some(status);
                }
                done => {
                    if i > 0 {
                        self.current.store(index, Ordering::Relaxed);
                    }
                    return done;
                }
            }
        }
        Err(last.unwrap_or_else(|| tonic::Status::unavailable("no gateway")))
    }
}

/// The chain of errors under `status`, for the log (`a: b: c`).
fn causes(status: &tonic::Status) -> String {
    let mut out = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        out.push(format!("{e:?}"));
        source = e.source();
    }
    out.join(": ")
}

/// Whether a failed call provably never reached a gateway's handler, so it may go to the next
/// one: the TCP connect failed or timed out, the gateway refused the stream (an HTTP/2 GOAWAY it
/// sent covers streams it never processed: a draining gateway's listener closing), or the
/// connection closed before the request was written.
fn never_delivered(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<h2::Error>()
            .is_some_and(|h2| h2.is_go_away() && h2.is_remote())
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if status.code() != tonic::Code::Unavailable {
            source = e.source();
            continue;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
            ) {
                return true;
            }
        }
        if e.to_string().contains("tcp connect error") {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_growing() {
        // Nothing listens on port 9 of loopback; the sending task cannot run before the loop
        // ends (one thread), so exactly `capacity` notifications are queued.
        let n = Notifier::with_queue(Some("127.0.0.1:9"), Some("t"), None, 3).unwrap();
        let payload = im_proto::im::friend::v1::FriendRemoveNotify::default();
        for _ in 0..10 {
            n.push(vec!["u".into()], Kind::FriendRemove, &payload, None);
        }
        assert_eq!(n.dropped(), 7);
    }

    #[tokio::test]
    async fn calls_move_on_only_when_a_gateway_cannot_be_reached() {
        // Port 9 refuses; the second address is a PushService that answers UNAUTHENTICATED.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = listener.local_addr().unwrap();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(im_proto::im::gateway::v1::push_service_server::PushServiceServer::with_interceptor(
                    NoPush,
                    |_req| Err(tonic::Status::unauthenticated("no")),
                ))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        let gateways = Gateways::new(&format!("127.0.0.1:9, {up}"), None).unwrap();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let result = gateways
            .call(|mut c| {
                calls.fetch_add(1, Ordering::Relaxed);
                async move { c.push(PushRequest::default()).await }
            })
            .await;
        assert_eq!(result.unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(calls.load(Ordering::Relaxed), 2, "refused, then answered");
        // The answering gateway is now the current one: one call, not resent on an error.
        calls.store(0, Ordering::Relaxed);
        let _ = gateways
            .call(|mut c| {
                calls.fetch_add(1, Ordering::Relaxed);
                async move { c.push(PushRequest::default()).await }
            })
            .await;
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(Gateways::new(" , ", None).is_err());
    }

    struct NoPush;

    #[tonic::async_trait]
    impl im_proto::im::gateway::v1::push_service_server::PushService for NoPush {
        async fn push(
            &self,
            _: tonic::Request<PushRequest>,
        ) -> Result<tonic::Response<im_proto::im::gateway::v1::PushReply>, tonic::Status> {
            Err(tonic::Status::internal(
                "unreachable: the interceptor refuses",
            ))
        }
        async fn kick(
            &self,
            _: tonic::Request<im_proto::im::gateway::v1::KickRequest>,
        ) -> Result<tonic::Response<im_proto::im::gateway::v1::KickReply>, tonic::Status> {
            Err(tonic::Status::internal("unused"))
        }
        async fn revoke(
            &self,
            _: tonic::Request<RevokeRequest>,
        ) -> Result<tonic::Response<im_proto::im::gateway::v1::RevokeReply>, tonic::Status>
        {
            Err(tonic::Status::internal("unused"))
        }
        async fn presence(
            &self,
            _: tonic::Request<im_proto::im::gateway::v1::PresenceRequest>,
        ) -> Result<tonic::Response<im_proto::im::gateway::v1::PresenceReply>, tonic::Status>
        {
            Err(tonic::Status::internal("unused"))
        }
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
