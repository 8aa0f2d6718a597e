//! `im.message.v1.MsgTransmitService` (send) and `MsgStorageService` (history, recent, search).
//! Each session's `seq` grows by one per message inside the writer's transaction; a sender's
//! `client_msg_id` is unique, so a retried send returns the stored message instead of a copy.

use im_proto::im::message::v1::msg_storage_service_server::MsgStorageService;
use im_proto::im::message::v1::msg_transmit_service_server::MsgTransmitService;
use im_proto::im::message::v1::*;
use im_proto::im::user::v1::UserInfo;
use rusqlite::{params, Connection};
use tonic::{Request, Response};

use crate::caller::Caller;
use crate::chat_sessions::{member_ids, require_member, require_writable};
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::file_access::require_readable;
use crate::notify::{Kind, Notifier};
use crate::util::{file_id, new_id, required, token_like, unix_millis};

pub const TRANSMIT_SERVICE_NAME: &str = "im.message.v1.MsgTransmitService";
pub const STORAGE_SERVICE_NAME: &str = "im.message.v1.MsgStorageService";
const MAX_TEXT_CHARS: usize = 4000;
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 500;
const MAX_SEARCH_RESULTS: i64 = 100;

#[derive(Clone)]
pub struct MessageSvc {
    pub db: Db,
    pub notifier: Notifier,
}

const SELECT_MESSAGE: &str = "SELECT m.id, m.session_id, m.seq, m.created_at, m.client_msg_id, \
    m.message_type, m.text, m.file_id, m.file_name, m.file_size, \
    u.id, u.nickname, u.description, u.avatar_id \
    FROM messages m LEFT JOIN users u ON u.id = m.sender_id";

fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageInfo> {
    Ok(MessageInfo {
        message_id: r.get(0)?,
        chat_session_id: r.get(1)?,
        seq: r.get(2)?,
        timestamp: r.get(3)?,
        client_msg_id: r.get(4)?,
        message: Some(MessageContent {
            message_type: r.get(5)?,
            text: r.get(6)?,
            file_id: r.get(7)?,
            file_name: r.get(8)?,
            file_size: r.get(9)?,
        }),
        // The sender's public profile: no phone (only its owner sees it).
        sender: Some(UserInfo {
            user_id: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
            nickname: r.get::<_, Option<String>>(11)?.unwrap_or_default(),
            description: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
            phone: String::new(),
            avatar_id: r.get::<_, Option<String>>(13)?.unwrap_or_default(),
        }),
    })
}

fn query_messages(
    conn: &Connection,
    filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<MessageInfo>, ApiError> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT_MESSAGE} {filter}"))?;
    let list = stmt
        .query_map(params, message_row)?
        .collect::<Result<_, _>>()?;
    Ok(list)
}

/// Checks a message body; returns it normalized.
fn content(message: Option<MessageContent>) -> Result<MessageContent, ApiError> {
    let mut m = message.ok_or_else(|| ApiError::invalid("message is required"))?;
    match MessageType::try_from(m.message_type) {
        Ok(MessageType::Text) => {
            let text = m.text.trim();
            if text.is_empty() {
                return Err(ApiError::invalid(
                    "message.text is required for a text message",
                ));
            }
            if text.chars().count() > MAX_TEXT_CHARS {
                return Err(ApiError::invalid(format!(
                    "message.text is longer than {MAX_TEXT_CHARS} characters"
                )));
            }
            m.file_id.clear();
            m.file_name.clear();
            m.file_size = 0;
        }
        Ok(_) => {
            file_id("message.file_id", &m.file_id)?;
            if m.file_size < 0 {
                return Err(ApiError::invalid("message.file_size must not be negative"));
            }
            if m.file_name.chars().count() > 255 {
                return Err(ApiError::invalid(
                    "message.file_name is longer than 255 characters",
                ));
            }
        }
        Err(_) => {
            return Err(ApiError::invalid(format!(
                "message.message_type {} is unknown; use TEXT, FILE, IMAGE or VOICE",
                m.message_type
            )))
        }
    }
    Ok(m)
}

/// Moves `user`'s read position in `session` up to `seq`.
fn mark_read(conn: &Connection, session: &str, user: &str, seq: u64) -> Result<(), ApiError> {
    conn.execute(
        "UPDATE chat_members SET read_seq = max(read_seq, ?3) WHERE session_id = ?1 AND user_id = ?2",
        params![session, user, seq],
    )?;
    Ok(())
}

impl MessageSvc {
    /// Reads `session`'s messages for a member and records how far they read.
    async fn read_for_member<F>(
        &self,
        caller: Caller,
        session: String,
        f: F,
    ) -> Result<Vec<MessageInfo>, ApiError>
    where
        F: FnOnce(&Connection, &str) -> Result<Vec<MessageInfo>, ApiError> + Send + 'static,
    {
        let (s, user) = (session.clone(), caller.user_id.clone());
        let list = self
            .db
            .read(move |c| {
                require_member(c, &s, &user)?;
                f(c, &s)
            })
            .await?;
        if let Some(last) = list.iter().map(|m| m.seq).max() {
            self.db
                .write(move |tx| mark_read(tx, &session, &caller.user_id, last))
                .await?;
        }
        Ok(list)
    }
}

#[tonic::async_trait]
impl MsgTransmitService for MessageSvc {
    async fn new_message(&self, request: Request<NewMessageReq>) -> ApiResult<NewMessageRsp> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        required("chat_session_id", &req.chat_session_id, 64)?;
        // Optional: with it a retried send is stored once; without it (clients written against
        // the seed API) every send is a new message under an id of the server's.
        let client_msg_id = if req.client_msg_id.is_empty() {
            format!("srv-{}", new_id())
        } else {
            token_like("client_msg_id", &req.client_msg_id)?;
            req.client_msg_id
        };
        let body = content(req.message)?;
        let me = caller.user_id.clone();
        let session = req.chat_session_id.clone();
        let (info, members, fresh) = self
            .db
            .write(move |tx| {
                require_member(tx, &session, &me)?;
                require_writable(tx, &session, &me)?;
                if !body.file_id.is_empty() {
                    require_readable(tx, "message.file_id", &me, &body.file_id)?;
                }
                let filter = "WHERE m.sender_id = ?1 AND m.client_msg_id = ?2";
                if let Some(stored) = query_messages(tx, filter, params![me, client_msg_id])?.pop() {
                    if stored.chat_session_id != session {
                        return Err(ApiError::exists(
                            "client_msg_id was already used for another chat session; use a new one",
                        ));
                    }
                    return Ok((stored, Vec::new(), false));
                }
                let seq: u64 = tx.query_row(
                    "UPDATE chat_sessions SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq",
                    [&session],
                    |r| r.get(0),
                )?;
                let id = new_id();
                tx.execute(
                    "INSERT INTO messages (id, session_id, seq, sender_id, client_msg_id, created_at, \
                     message_type, text, file_id, file_name, file_size) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        id, session, seq, me, client_msg_id, unix_millis(), body.message_type,
                        body.text.trim(), body.file_id, body.file_name, body.file_size
                    ],
                )?;
                mark_read(tx, &session, &me, seq)?;
                let info = query_messages(tx, "WHERE m.id = ?1", [&id])?
                    .pop()
                    .ok_or_else(|| ApiError::internal("stored message vanished"))?;
                Ok((info, member_ids(tx, &session)?, true))
            })
            .await?;
        let rsp = NewMessageRsp {
            message_id: info.message_id.clone(),
            seq: info.seq,
            timestamp: info.timestamp,
        };
        // A retried send was announced the first time.
        if fresh {
            let notify = ChatMessageNotify {
                message_info: Some(info),
            };
            self.notifier
                .push(members, Kind::ChatMessage, &notify, caller.device_id);
        }
        Ok(Response::new(rsp))
    }
}

#[tonic::async_trait]
impl MsgStorageService for MessageSvc {
    async fn get_history(&self, request: Request<GetHistoryReq>) -> ApiResult<GetHistoryRsp> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let limit = match req.limit {
            0 => DEFAULT_LIMIT,
            n if n <= MAX_LIMIT => n,
            n => return Err(ApiError::invalid(format!("limit {n} is above {MAX_LIMIT}")).into()),
        };
        if req.over_time != 0 && req.start_time > req.over_time {
            return Err(ApiError::invalid("start_time is after over_time").into());
        }
        let msg_list = self
            .read_for_member(caller, req.chat_session_id, move |c, s| {
                if req.after_seq > 0 || (req.start_time == 0 && req.over_time == 0) {
                    query_messages(
                        c,
                        "WHERE m.session_id = ?1 AND m.seq > ?2 ORDER BY m.seq LIMIT ?3",
                        params![s, req.after_seq, limit],
                    )
                } else {
                    let over = if req.over_time == 0 { i64::MAX } else { req.over_time };
                    query_messages(
                        c,
                        "WHERE m.session_id = ?1 AND m.created_at BETWEEN ?2 AND ?3 ORDER BY m.seq LIMIT ?4",
                        params![s, req.start_time, over, limit],
                    )
                }
            })
            .await?;
        Ok(Response::new(GetHistoryRsp { msg_list }))
    }

    async fn get_recent(&self, request: Request<GetRecentReq>) -> ApiResult<GetRecentRsp> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        if !(1..=MAX_LIMIT).contains(&req.msg_count) {
            return Err(ApiError::invalid(format!("msg_count must be 1 to {MAX_LIMIT}")).into());
        }
        let msg_list = self
            .read_for_member(caller, req.chat_session_id, move |c, s| {
                let mut list = query_messages(
                    c,
                    "WHERE m.session_id = ?1 ORDER BY m.seq DESC LIMIT ?2",
                    params![s, req.msg_count],
                )?;
                list.reverse();
                Ok(list)
            })
            .await?;
        Ok(Response::new(GetRecentRsp { msg_list }))
    }

    async fn search_history(
        &self,
        request: Request<SearchHistoryReq>,
    ) -> ApiResult<SearchHistoryRsp> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let key = required("search_key", &req.search_key, 100)?.to_owned();
        let session = req.chat_session_id;
        let (s, user) = (session.clone(), caller.user_id.clone());
        let msg_list = self
            .db
            .read(move |c| {
                require_member(c, &s, &user)?;
                if key.chars().count() >= 3 {
                    // The trigram index answers substrings of 3+ characters, any script.
                    let phrase = format!("\"{}\"", key.replace('"', "\"\""));
                    query_messages(
                        c,
                        "WHERE m.rowid IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?2) \
                         AND m.session_id = ?1 ORDER BY m.seq DESC LIMIT ?3",
                        params![s, phrase, MAX_SEARCH_RESULTS],
                    )
                } else {
                    // Shorter keys (e.g. a two-character Chinese word): a scan of this session.
                    let pattern = format!(
                        "%{}%",
                        key.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
                    );
                    query_messages(
                        c,
                        "WHERE m.session_id = ?1 AND m.text LIKE ?2 ESCAPE '\\' ORDER BY m.seq DESC LIMIT ?3",
                        params![s, pattern, MAX_SEARCH_RESULTS],
                    )
                }
            })
            .await?;
        Ok(Response::new(SearchHistoryRsp { msg_list }))
    }
}
