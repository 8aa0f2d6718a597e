//! The push listener: its own Pingora service whose app hands each accepted stream to
//! tokio-tungstenite. Everything the handshake checks is in memory (the callback is synchronous):
//! path, token (header or `?token=`), revocation, device/platform against the token, `Origin`,
//! the connection cap; the chosen encoding is echoed as the subprotocol. The pure parts (query,
//! origin, device, encoding) are in `handshake`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::handshake::{self, Query};
use super::hub::{CapHit, ConnSlot};
use super::session::{self, SessionInfo};
use super::PushDeps;
use crate::filters::auth::bearer;
use crate::filters::client_ip::header_list;

pub struct PushApp {
    pub deps: Arc<PushDeps>,
}

/// Validated tungstenite settings: small buffers (its defaults cost >100 KiB per connection),
/// explicit caps. Frames fed between two flushes collect in the write buffer up to 8 KiB, so a
/// burst queued for one connection leaves in few writes; an idle connection's buffer stays small.
pub fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(max_message.saturating_mul(2).max(64 * 1024))
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// A refused handshake: the HTTP status, the reason in its body, and the metric label.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub why: String,
    pub label: &'static str,
}

fn reject(status: StatusCode, label: &'static str, why: &str) -> Refusal {
    Refusal {
        status,
        why: why.to_owned(),
        label,
    }
}

fn error_response(refusal: Refusal) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(refusal.why));
    *r.status_mut() = refusal.status;
    r
}

/// The handshake checks, as a function of the request and the peer (unit-testable). The cheap
/// per-address checks come first, so a flood is turned away before any token is verified.
pub fn check_handshake(
    deps: &PushDeps,
    req: &Request,
    resp: &mut Response,
    peer: IpAddr,
) -> Result<SessionInfo, Refusal> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if req.uri().path() != "/ws" {
        return Err(reject(
            StatusCode::NOT_FOUND,
            "path",
            "the push endpoint is /ws",
        ));
    }
    let guard = &deps.pipeline.guard;
    let client_ip = guard
        .client_ip
        .resolve(peer, |name| header_list(req.headers(), name));
    let slot = admit_address(deps, guard.client_ip.bucket(client_ip))?;
    if !handshake::origin_allowed(&deps.config.allowed_origins, header("origin")) {
        return Err(reject(
            StatusCode::FORBIDDEN,
            "origin",
            "origin not allowed",
        ));
    }
    let query = Query::parse(req.uri().query());
    let token = header("authorization")
        .and_then(bearer)
        .or_else(|| query.get("token"))
        .ok_or_else(|| reject(StatusCode::UNAUTHORIZED, "token", "missing token"))?;
    let identity = guard
        .auth
        .verify_once(token)
        .map_err(|f| reject(StatusCode::UNAUTHORIZED, "token", &f.to_string()))?;
    let device = handshake::device_for(&identity, &query)
        .map_err(|why| reject(StatusCode::UNAUTHORIZED, "identity", &why))?;
    let negotiated = handshake::negotiate(query.get("encoding"), header("sec-websocket-protocol"))
        .map_err(|why| reject(StatusCode::BAD_REQUEST, "protocol", &why))?;
    if let Some(protocol) = negotiated.echo {
        resp.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    }
    Ok(SessionInfo {
        device,
        identity,
        encoding: negotiated.encoding,
        version: negotiated.version,
        client_ip,
        traceparent: header("traceparent").and_then(crate::pipeline::usable_traceparent),
        slot,
    })
}

/// The handshake rate and the connection caps of the client's address bucket; the slot holds
/// the connection's place until it is dropped.
fn admit_address(deps: &PushDeps, bucket: IpAddr) -> Result<ConnSlot, Refusal> {
    if !deps.hub.handshakes.check(&bucket.to_string()).allowed {
        return Err(reject(
            StatusCode::TOO_MANY_REQUESTS,
            "handshake_rate",
            "too many handshakes from this address; retry later",
        ));
    }
    deps.hub
        .conns
        .acquire(
            bucket,
            deps.config.max_connections,
            deps.config.max_connections_per_ip,
        )
        .map_err(|hit| match hit {
            CapHit::Gateway => reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "gateway_cap",
                "gateway at its connection limit; retry later",
            ),
            CapHit::Ip => reject(
                StatusCode::TOO_MANY_REQUESTS,
                "ip_cap",
                "too many connections from this address",
            ),
        })
}

#[async_trait]
impl ServerApp for PushApp {
    /// Hands the stream to a task of our own and returns at once: Pingora's per-connection task
    /// (about 13 KiB with its handshake state) then ends instead of living as long as the session.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        tokio::spawn(accept(stream, self.deps.clone(), shutdown.clone()));
        None
    }
}

/// The WebSocket handshake (checks in the callback, bounded by the handshake timeout), then
/// the session.
async fn accept(stream: Stream, deps: Arc<PushDeps>, shutdown: ShutdownWatch) {
    if let Some(cluster) = &deps.cluster {
        cluster.until_ready_for_sessions().await;
    }
    let peer = stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let mut info = None;
    // tungstenite fixes the callback's error type (a whole HTTP response).
    #[allow(clippy::result_large_err)]
    let callback =
        |req: &Request, mut resp: Response| match check_handshake(&deps, req, &mut resp, peer) {
            Ok(i) => {
                info = Some(i);
                Ok(resp)
            }
            Err(refusal) => {
                deps.hub
                    .metrics
                    .ws_handshake_rejections
                    .with_label_values(&[refusal.label])
                    .inc();
                Err(error_response(refusal))
            }
        };
    let config = ws_config(deps.config.max_message.0 as usize);
    let accepted = tokio::time::timeout(
        deps.config.handshake_timeout.0,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)),
    )
    .await;
    let ws = match accepted {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "websocket handshake refused");
            return;
        }
        Err(_) => {
            deps.hub
                .metrics
                .ws_handshake_rejections
                .with_label_values(&["timeout"])
                .inc();
            return;
        }
    };
    if let Some(info) = info {
        session::run(ws, info, deps, shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_valid_for_tungstenite() {
        // tungstenite panics when max_write_buffer_size <= write_buffer_size.
        let c = ws_config(1 << 20);
        assert!(c.max_write_buffer_size > c.write_buffer_size);
        let c = ws_config(0);
        assert!(c.max_write_buffer_size > c.write_buffer_size);
    }
}
