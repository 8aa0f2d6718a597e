//! Who may read a stored file (security issue, item 3). File ids are content hashes, so
//! knowing one proves nothing: a file is readable by
//! - its uploaders (each upload keeps its own name),
//! - the members of a chat session with a message that references it, and
//! - anyone signed in, while it is someone's profile picture (`avatar_id`).
//!
//! The reference services share one SQLite database by default, so these rules read the
//! message and user tables directly; a split deployment would ask those services instead.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::ApiError;

/// The name `user` sees for file `id`, or `None` when `user` may not read it (unknown files
/// included: the answer does not tell whether a hash is stored). Uploaders see their own
/// upload's name, session members the name in the newest message that sent it, and viewers of
/// a profile picture none.
pub fn readable_name(conn: &Connection, user: &str, id: &str) -> Result<Option<String>, ApiError> {
    let own: Option<String> = conn
        .query_row(
            "SELECT name FROM uploads WHERE owner = ?1 AND file_id = ?2",
            params![user, id],
            |r| r.get(0),
        )
        .optional()?;
    if own.is_some() {
        return Ok(own);
    }
    let shared: Option<String> = conn
        .query_row(
            "SELECT m.file_name FROM messages m JOIN chat_members c \
             ON c.session_id = m.session_id AND c.user_id = ?1 \
             WHERE m.file_id = ?2 ORDER BY m.rowid DESC LIMIT 1",
            params![user, id],
            |r| r.get(0),
        )
        .optional()?;
    if shared.is_some() {
        return Ok(shared);
    }
    let avatar = conn
        .query_row(
            "SELECT 1 FROM users WHERE avatar_id = ?1 LIMIT 1",
            [id],
            |_| Ok(()),
        )
        .optional()?;
    Ok(avatar.map(|_| String::new()))
}

/// NOT_FOUND naming `field` unless `user` may read file `id`: what `set_avatar` and
/// `new_message` check, so a known hash cannot be laundered into a readable one.
pub fn require_readable(
    conn: &Connection,
    field: &str,
    user: &str,
    id: &str,
) -> Result<String, ApiError> {
    readable_name(conn, user, id)?.ok_or_else(|| not_readable(field, id))
}

pub fn not_readable(field: &str, id: &str) -> ApiError {
    ApiError::not_found(format!(
        "{field}: no file `{id}` that you can read; upload it first"
    ))
}
