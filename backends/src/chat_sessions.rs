//! Chat sessions and friendships in the database: what a session looks like to one member, who
//! may read or write it, and the one-to-one session two friends share (reopened with its history
//! when they become friends again). Shared by the friend and message services.

use im_proto::im::friend::v1::ChatSessionInfo;
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::ApiError;
use crate::user_rows::user_info;
use crate::util::{new_id, required, unix_millis};

/// `session_id` as `viewer` sees it (a one-to-one chat is named after the peer).
pub fn session_info(
    conn: &Connection,
    session_id: &str,
    viewer: &str,
) -> Result<Option<ChatSessionInfo>, ApiError> {
    let row: Option<(String, bool, u64, i64, Option<u64>)> = conn
        .query_row(
            "SELECT s.name, s.is_group, s.last_seq, s.created_at, m.read_seq FROM chat_sessions s \
             LEFT JOIN chat_members m ON m.session_id = s.id AND m.user_id = ?2 WHERE s.id = ?1",
            params![session_id, viewer],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((name, is_group, last_seq, created_at, read_seq)) = row else {
        return Ok(None);
    };
    let members = member_ids(conn, session_id)?;
    let (name, peer) = if is_group {
        (name, String::new())
    } else {
        let peer = members
            .iter()
            .find(|m| m.as_str() != viewer)
            .cloned()
            .unwrap_or_default();
        let peer_name = user_info(conn, &peer)?.map(|u| u.nickname).unwrap_or(name);
        (peer_name, peer)
    };
    Ok(Some(ChatSessionInfo {
        chat_session_id: session_id.to_owned(),
        chat_session_name: name,
        last_seq,
        unread: last_seq.saturating_sub(read_seq.unwrap_or(last_seq)),
        is_group,
        peer_user_id: peer,
        member_count: members.len() as u32,
        created_at,
    }))
}

pub fn member_ids(conn: &Connection, session_id: &str) -> Result<Vec<String>, ApiError> {
    let mut stmt = conn.prepare_cached(
        "SELECT user_id FROM chat_members WHERE session_id = ?1 ORDER BY user_id",
    )?;
    let ids = stmt
        .query_map([session_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

/// NOT_FOUND for an unknown session, PERMISSION_DENIED when `user` is not a member.
pub fn require_member(conn: &Connection, session_id: &str, user: &str) -> Result<(), ApiError> {
    required("chat_session_id", session_id, 64)?;
    let row: Option<Option<String>> = conn
        .query_row(
            "SELECT m.user_id FROM chat_sessions s LEFT JOIN chat_members m \
             ON m.session_id = s.id AND m.user_id = ?2 WHERE s.id = ?1",
            params![session_id, user],
            |r| r.get(0),
        )
        .optional()?;
    match row {
        None => Err(ApiError::not_found(format!(
            "chat_session_id: no chat session `{session_id}`"
        ))),
        Some(None) => Err(ApiError::denied(
            "you are not a member of this chat session",
        )),
        Some(Some(_)) => Ok(()),
    }
}

pub fn are_friends(conn: &Connection, a: &str, b: &str) -> Result<bool, ApiError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM friends WHERE user_id = ?1 AND peer_id = ?2",
            params![a, b],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

pub fn create_session(
    tx: &Connection,
    name: &str,
    is_group: bool,
    members: &[&str],
) -> Result<String, ApiError> {
    let id = new_id();
    tx.execute(
        "INSERT INTO chat_sessions (id, name, is_group, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![id, name, is_group, unix_millis()],
    )?;
    let mut add = tx.prepare_cached(
        "INSERT OR IGNORE INTO chat_members (session_id, user_id) VALUES (?1, ?2)",
    )?;
    for m in members {
        add.execute(params![id, m])?;
    }
    Ok(id)
}

/// The one-to-one session `a` and `b` had before, if any: a new friendship reopens it, with
/// its history.
pub fn pair_session(conn: &Connection, a: &str, b: &str) -> Result<Option<String>, ApiError> {
    Ok(conn
        .query_row(
            "SELECT s.id FROM chat_sessions s \
             JOIN chat_members x ON x.session_id = s.id AND x.user_id = ?1 \
             JOIN chat_members y ON y.session_id = s.id AND y.user_id = ?2 \
             WHERE s.is_group = 0 ORDER BY s.created_at LIMIT 1",
            params![a, b],
            |r| r.get(0),
        )
        .optional()?)
}

/// FAILED_PRECONDITION when `session` is a one-to-one chat whose two members are no longer
/// friends: its history stays readable, but nobody can send until they are friends again.
pub fn require_writable(conn: &Connection, session: &str, sender: &str) -> Result<(), ApiError> {
    let is_group: bool = conn.query_row(
        "SELECT is_group FROM chat_sessions WHERE id = ?1",
        [session],
        |r| r.get(0),
    )?;
    if is_group {
        return Ok(());
    }
    let peer = member_ids(conn, session)?.into_iter().find(|m| m != sender);
    match peer {
        Some(peer) if !are_friends(conn, sender, &peer)? => Err(ApiError::failed_precondition(
            "you are no longer friends: this chat is read-only until you are friends again",
        )),
        _ => Ok(()),
    }
}
