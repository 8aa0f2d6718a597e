//! `im.friend.v1.FriendService`: friend requests, friendships, and chat sessions (one-to-one
//! sessions are created when a request is accepted; groups by `create_chat_session`).

use im_proto::im::friend::v1::friend_service_server::FriendService;
use im_proto::im::friend::v1::*;
use im_proto::im::user::v1::UserInfo;
use rusqlite::{params, Connection, OptionalExtension};
use tonic::{Request, Response};

use crate::caller::Caller;
use crate::chat_sessions::{
    are_friends, create_session, member_ids, pair_session, require_member, session_info,
};
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::notify::{Kind, Notifier};
use crate::phone::PhoneRules;
use crate::user_rows::{existing_user, query_users, user_info, USER_COLUMNS};
use crate::util::{new_id, required, unix_millis};

pub const SERVICE_NAME: &str = "im.friend.v1.FriendService";
const MAX_GROUP_MEMBERS: usize = 500;
const MAX_SEARCH_RESULTS: usize = 50;

const PENDING: i64 = 0;
const AGREED: i64 = 1;
const REFUSED: i64 = 2;

pub struct FriendSvc {
    pub db: Db,
    pub notifier: Notifier,
    /// Search by phone matches the whole normalized number only.
    pub phones: PhoneRules,
}

impl FriendSvc {
    /// Tells every member about a new session, each with their own view of it.
    async fn announce_session(&self, session_id: String, members: Vec<String>) {
        let views = self
            .db
            .read(move |c| {
                members
                    .iter()
                    .map(|m| Ok((m.clone(), session_info(c, &session_id, m)?)))
                    .collect::<Result<Vec<_>, ApiError>>()
            })
            .await;
        match views {
            Ok(views) => {
                for (member, info) in views {
                    let notify = ChatSessionCreateNotify {
                        chat_session_info: info,
                    };
                    self.notifier
                        .push(vec![member], Kind::ChatSessionCreate, &notify, None);
                }
            }
            Err(e) => tracing::warn!("session announcement skipped: {}", e.message()),
        }
    }
}

#[tonic::async_trait]
impl FriendService for FriendSvc {
    async fn get_friend_list(
        &self,
        request: Request<GetFriendListReq>,
    ) -> ApiResult<GetFriendListRsp> {
        let caller = Caller::of(&request)?;
        let friend_list = self
            .db
            .read(move |c| {
                let sql = format!(
                    "SELECT {USER_COLUMNS} FROM friends f JOIN users u ON u.id = f.peer_id \
                     WHERE f.user_id = ?1 ORDER BY u.nickname"
                );
                query_users(c, &sql, [&caller.user_id])
            })
            .await?;
        Ok(Response::new(GetFriendListRsp { friend_list }))
    }

    async fn add_friend_apply(
        &self,
        request: Request<AddFriendApplyReq>,
    ) -> ApiResult<AddFriendApplyRsp> {
        let caller = Caller::of(&request)?;
        let respondent =
            required("respondent_id", &request.into_inner().respondent_id, 64)?.to_owned();
        if respondent == caller.user_id {
            return Err(ApiError::invalid("respondent_id is you; pick another user").into());
        }
        let event_id = new_id();
        let (me, them, id) = (caller.user_id.clone(), respondent.clone(), event_id.clone());
        let applicant = self
            .db
            .write(move |tx| {
                existing_user(tx, "respondent_id", &them)?;
                if are_friends(tx, &me, &them)? {
                    return Err(ApiError::exists("you are already friends"));
                }
                let pending: bool = tx
                    .query_row(
                        "SELECT 1 FROM friend_events WHERE applicant = ?1 AND respondent = ?2 AND status = ?3",
                        params![me, them, PENDING],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                if pending {
                    return Err(ApiError::exists(
                        "a request to this user is already waiting for an answer",
                    ));
                }
                tx.execute(
                    "INSERT INTO friend_events (id, applicant, respondent, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, me, them, unix_millis()],
                )?;
                existing_user(tx, "x-user-id", &me)
            })
            .await?;
        let notify = FriendAddApplyNotify {
            notify_event_id: event_id.clone(),
            applicant: Some(applicant),
        };
        self.notifier
            .push(vec![respondent], Kind::FriendAddApply, &notify, None);
        Ok(Response::new(AddFriendApplyRsp {
            notify_event_id: event_id,
        }))
    }

    async fn add_friend_process(
        &self,
        request: Request<AddFriendProcessReq>,
    ) -> ApiResult<AddFriendProcessRsp> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        required("notify_event_id", &req.notify_event_id, 64)?;
        required("apply_user_id", &req.apply_user_id, 64)?;
        let me = caller.user_id.clone();
        let (event_id, applicant, agree) = (
            req.notify_event_id.clone(),
            req.apply_user_id.clone(),
            req.agree,
        );
        let (respondent, session_id) = self
            .db
            .write(move |tx| answer_request(tx, &event_id, &me, &applicant, agree))
            .await?;
        let notify = FriendAddProcessNotify {
            notify_event_id: req.notify_event_id,
            agree,
            respondent: Some(respondent),
            new_session_id: session_id.clone().unwrap_or_default(),
        };
        self.notifier.push(
            vec![req.apply_user_id.clone()],
            Kind::FriendAddProcess,
            &notify,
            None,
        );
        if let Some(id) = &session_id {
            self.announce_session(id.clone(), vec![caller.user_id, req.apply_user_id])
                .await;
        }
        Ok(Response::new(AddFriendProcessRsp {
            new_session_id: session_id.unwrap_or_default(),
        }))
    }

    async fn remove_friend(&self, request: Request<RemoveFriendReq>) -> ApiResult<RemoveFriendRsp> {
        let caller = Caller::of(&request)?;
        let peer = required("peer_id", &request.into_inner().peer_id, 64)?.to_owned();
        let (me, them) = (caller.user_id.clone(), peer.clone());
        self.db
            .write(move |tx| {
                if !are_friends(tx, &me, &them)? {
                    return Err(ApiError::not_found(format!(
                        "peer_id: `{them}` is not your friend"
                    )));
                }
                // The one-to-one chat stays, read-only (see `require_writable`): both keep
                // its history, and a new friendship reopens it.
                tx.execute(
                    "DELETE FROM friends WHERE (user_id = ?1 AND peer_id = ?2) OR (user_id = ?2 AND peer_id = ?1)",
                    params![me, them],
                )?;
                Ok(())
            })
            .await?;
        let notify = FriendRemoveNotify {
            user_id: caller.user_id,
        };
        self.notifier
            .push(vec![peer], Kind::FriendRemove, &notify, None);
        Ok(Response::new(RemoveFriendRsp {}))
    }

    async fn search_friend(&self, request: Request<SearchFriendReq>) -> ApiResult<SearchFriendRsp> {
        let caller = Caller::of(&request)?;
        let key = required("search_key", &request.into_inner().search_key, 64)?.to_owned();
        // A phone finds its owner only when whole; the number is never in the answer.
        let phone = self.phones.normalize(&key).ok();
        let pattern = format!(
            "%{}%",
            key.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let user_info = self
            .db
            .read(move |c| {
                let sql = format!(
                    "SELECT {USER_COLUMNS} FROM users u WHERE u.id != ?1 AND \
                     (u.nickname LIKE ?2 ESCAPE '\\' OR u.id = ?3 OR u.phone = ?5) \
                     ORDER BY u.nickname LIMIT ?4"
                );
                query_users(
                    c,
                    &sql,
                    params![
                        caller.user_id,
                        pattern,
                        key,
                        MAX_SEARCH_RESULTS as i64,
                        phone
                    ],
                )
            })
            .await?;
        Ok(Response::new(SearchFriendRsp { user_info }))
    }

    async fn get_pending_friend_events(
        &self,
        request: Request<GetPendingFriendEventsReq>,
    ) -> ApiResult<GetPendingFriendEventsRsp> {
        let caller = Caller::of(&request)?;
        let event = self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, applicant, created_at FROM friend_events \
                     WHERE respondent = ?1 AND status = ?2 ORDER BY created_at",
                )?;
                let rows: Vec<(String, String, i64)> = stmt
                    .query_map(params![caller.user_id, PENDING], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<Result<_, _>>()?;
                rows.into_iter()
                    .map(|(event_id, applicant, created_at)| {
                        Ok(FriendEvent {
                            event_id,
                            sender: user_info(c, &applicant)?,
                            created_at,
                        })
                    })
                    .collect()
            })
            .await?;
        Ok(Response::new(GetPendingFriendEventsRsp { event }))
    }

    async fn get_chat_session_list(
        &self,
        request: Request<GetChatSessionListReq>,
    ) -> ApiResult<GetChatSessionListRsp> {
        let caller = Caller::of(&request)?;
        let chat_session_list = self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT s.id FROM chat_members m JOIN chat_sessions s ON s.id = m.session_id \
                     WHERE m.user_id = ?1 ORDER BY s.created_at DESC",
                )?;
                let ids: Vec<String> = stmt
                    .query_map([&caller.user_id], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut list = Vec::with_capacity(ids.len());
                for id in ids {
                    list.extend(session_info(c, &id, &caller.user_id)?);
                }
                Ok(list)
            })
            .await?;
        Ok(Response::new(GetChatSessionListRsp { chat_session_list }))
    }

    async fn create_chat_session(
        &self,
        request: Request<CreateChatSessionReq>,
    ) -> ApiResult<CreateChatSessionRsp> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let name = required("chat_session_name", &req.chat_session_name, 64)?.to_owned();
        let mut others: Vec<String> = req
            .member_id_list
            .into_iter()
            .filter(|m| *m != caller.user_id)
            .collect();
        others.sort();
        others.dedup();
        if others.is_empty() {
            return Err(ApiError::invalid("member_id_list needs at least one other user").into());
        }
        if others.len() + 1 > MAX_GROUP_MEMBERS {
            return Err(ApiError::invalid(format!(
                "member_id_list: a group holds at most {MAX_GROUP_MEMBERS} members"
            ))
            .into());
        }
        let me = caller.user_id.clone();
        let members_for_tx = others.clone();
        let (session_id, info) = self
            .db
            .write(move |tx| {
                for m in &members_for_tx {
                    existing_user(tx, "member_id_list", m)?;
                    if !are_friends(tx, &me, m)? {
                        return Err(ApiError::denied(format!(
                            "member_id_list: `{m}` is not your friend"
                        )));
                    }
                }
                let mut all: Vec<&str> = members_for_tx.iter().map(String::as_str).collect();
                all.push(&me);
                let id = create_session(tx, &name, true, &all)?;
                let info = session_info(tx, &id, &me)?
                    .ok_or_else(|| ApiError::internal("created session vanished"))?;
                Ok((id, info))
            })
            .await?;
        others.push(caller.user_id);
        self.announce_session(session_id, others).await;
        Ok(Response::new(CreateChatSessionRsp {
            chat_session_info: Some(info),
        }))
    }

    async fn get_chat_session_member(
        &self,
        request: Request<GetChatSessionMemberReq>,
    ) -> ApiResult<GetChatSessionMemberRsp> {
        let caller = Caller::of(&request)?;
        let session = request.into_inner().chat_session_id;
        let member_info_list = self
            .db
            .read(move |c| {
                require_member(c, &session, &caller.user_id)?;
                member_ids(c, &session)?
                    .iter()
                    .filter_map(|m| user_info(c, m).transpose())
                    .collect()
            })
            .await?;
        Ok(Response::new(GetChatSessionMemberRsp { member_info_list }))
    }
}

/// The respondent `me` answers friend request `event_id` from `applicant`: the answer recorded,
/// and on agreement the friendship with its one-to-one session (an earlier one reopened). The
/// respondent's profile, and the new session if one was made.
fn answer_request(
    tx: &Connection,
    event_id: &str,
    me: &str,
    applicant: &str,
    agree: bool,
) -> Result<(UserInfo, Option<String>), ApiError> {
    let me = me.to_owned();
    let row: Option<(String, String, i64)> = tx
        .query_row(
            "SELECT applicant, respondent, status FROM friend_events WHERE id = ?1",
            [&event_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((from, to, status)) = row else {
        return Err(ApiError::not_found(format!(
            "notify_event_id: no friend request `{event_id}`"
        )));
    };
    if to != me {
        return Err(ApiError::denied("this friend request was not sent to you"));
    }
    if from != applicant {
        return Err(ApiError::invalid(
            "apply_user_id does not match the friend request's sender",
        ));
    }
    if status != PENDING {
        return Err(ApiError::failed_precondition(
            "this friend request was already answered",
        ));
    }
    tx.execute(
        "UPDATE friend_events SET status = ?2 WHERE id = ?1",
        params![event_id, if agree { AGREED } else { REFUSED }],
    )?;
    let session = if agree && !are_friends(tx, &me, &from)? {
        let id = match pair_session(tx, &me, &from)? {
            Some(old) => old,
            None => create_session(tx, "", false, &[&me, &from])?,
        };
        let now = unix_millis();
        for (a, b) in [(&me, &from), (&from, &me)] {
            tx.execute(
                "INSERT INTO friends (user_id, peer_id, session_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![a, b, id, now],
            )?;
        }
        Some(id)
    } else {
        None
    };
    Ok((existing_user(tx, "x-user-id", &me)?, session))
}
