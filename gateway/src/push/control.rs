//! Ending sessions: the one path admin revoke, PushService `Revoke` and `Kick` take. Denying a
//! `sid` and closing its sockets happen together, so no caller can do one without the other (an
//! admin revoke once left the socket open and receiving pushes). The denial lasts until the
//! session's absolute end, so a refreshed token of a kicked session is refused too.

use im_proto::im::gateway::v1::{Push, SessionKicked};
use prost::Message;

use super::frames::encode_push;
use super::hub::{close, SessionHandle};
use super::registry::Connection;
use super::PushDeps;
use crate::filters::request_id;
use crate::filters::revocation::Persisted;

/// How long a revocation's caller waits for it to reach the revocation file before answering
/// with an error (the denial is in effect either way).
pub const PERSIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a session ends, and so how its sockets close.
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    /// Logout or admin revoke: close with 4001.
    Revoked,
    /// Kick: a `session_kicked` push, then close with 4002.
    Kicked {
        reason: &'a str,
        by_device_id: &'a str,
    },
}

/// Denies `sid` until `until` (unix seconds) and closes every socket of it; how many on this
/// node, and the denial's way to this node's revocation file. In cluster mode every other node
/// does the same within a second (the denial is also kept in Redis for nodes that start later).
pub fn end_session(deps: &PushDeps, sid: &str, until: u64, ending: Ending<'_>) -> (u32, Persisted) {
    if let Some(cluster) = &deps.cluster {
        let (cluster, sid) = (cluster.clone(), sid.to_owned());
        tokio::spawn(async move {
            if let Err(e) = cluster.revoke(&sid, until).await {
                tracing::warn!(error = %e, "revocation not announced to the cluster (Redis unreachable): other nodes do not deny it");
            }
        });
    }
    end_session_here(deps, sid, until, ending)
}

/// [`end_session`] on this node only (a revocation announced by another node).
pub fn end_session_here(
    deps: &PushDeps,
    sid: &str,
    until: u64,
    ending: Ending<'_>,
) -> (u32, Persisted) {
    let persisted = deps.pipeline.guard.auth.revocation().revoke(sid, until);
    let sessions = deps
        .hub
        .registry
        .find(|c| c.handle.sid.as_deref() == Some(sid));
    for conn in &sessions {
        close_connection(deps, conn, ending);
    }
    tracing::info!(
        sid,
        until,
        closed = sessions.len(),
        ?ending,
        "session ended"
    );
    (sessions.len() as u32, persisted)
}

/// Kicks `user`'s connections on this node (only `device_id`'s when it is not empty): each
/// one's session is denied until its end and its sockets closed with `session_kicked` and 4002;
/// how many, and the denials' way to disk (the last one's handle covers the earlier ones).
/// PushService's Kick also asks the other nodes holding the user (`remote::kick`).
pub fn kick_user(deps: &PushDeps, user: &str, device_id: &str, reason: &str) -> (u32, Persisted) {
    let ending = Ending::Kicked {
        reason,
        by_device_id: "",
    };
    let mut closed = 0;
    let mut persisted = Persisted::in_memory();
    for conn in deps.hub.registry.connections(user) {
        if !device_id.is_empty() && conn.device.device_id != device_id {
            continue;
        }
        match &conn.handle.sid {
            Some(sid) => {
                let (n, p) = end_session(deps, sid, conn.handle.session_end, ending);
                closed += n;
                persisted = p;
            }
            None => {
                close_connection(deps, &conn, ending);
                closed += 1;
            }
        }
    }
    (closed, persisted)
}

/// Closes one connection as `ending` says, without denying anything (the multi-device policy
/// displacing an older login uses this directly: that login's token stays valid elsewhere).
pub fn close_connection(deps: &PushDeps, conn: &Connection<SessionHandle>, ending: Ending<'_>) {
    match ending {
        Ending::Revoked => conn.handle.close_with(close::TOKEN, "session revoked"),
        Ending::Kicked {
            reason,
            by_device_id,
        } => {
            let push = Push {
                id: request_id::generate(),
                kind: "session_kicked".into(),
                payload_type: "im.gateway.v1.SessionKicked".into(),
                payload: SessionKicked {
                    reason: reason.to_owned(),
                    by_device_id: by_device_id.to_owned(),
                }
                .encode_to_vec(),
                ts: crate::clock::unix_now_ms(),
            };
            let table = deps.routes.load();
            if let Ok(frame) = encode_push(conn.handle.encoding, &push, &table.descriptors) {
                deps.hub.send(&conn.handle, frame);
            }
            conn.handle.close_with(close::KICKED, "kicked");
        }
    }
}
