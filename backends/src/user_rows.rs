//! Users' public profiles as the services read them from the database: one column list, one
//! row reader, and lookups that answer NOT_FOUND naming the field. The phone is not among them:
//! only its owner sees it (`user`'s own profile).

use im_proto::im::user::v1::UserInfo;
use rusqlite::Connection;

use crate::error::ApiError;

/// The columns of `users` (aliased `u`) that [`user_row`] reads, in its order: the public
/// profile. The phone is not among them: only its owner sees it (`user::own_profile`).
pub const USER_COLUMNS: &str = "u.id, u.nickname, u.description, u.avatar_id";

pub fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserInfo> {
    Ok(UserInfo {
        user_id: r.get(0)?,
        nickname: r.get(1)?,
        description: r.get(2)?,
        phone: String::new(),
        avatar_id: r.get(3)?,
    })
}

/// The users a query selecting [`USER_COLUMNS`] returns.
pub fn query_users(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<UserInfo>, ApiError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let users = stmt
        .query_map(params, user_row)?
        .collect::<Result<_, _>>()?;
    Ok(users)
}

/// The public profile of `id`, if the user exists.
pub fn user_info(conn: &Connection, id: &str) -> Result<Option<UserInfo>, ApiError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?1");
    Ok(query_users(conn, &sql, [id])?.pop())
}

/// The profile of `id`, or NOT_FOUND naming `field`.
pub fn existing_user(conn: &Connection, field: &str, id: &str) -> Result<UserInfo, ApiError> {
    user_info(conn, id)?.ok_or_else(|| ApiError::not_found(format!("{field}: no user `{id}`")))
}
