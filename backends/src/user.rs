//! `im.user.v1.UserService`: registration and login by nickname or phone, tokens, profiles.

use std::time::Duration;

use im_proto::im::user::v1::user_service_server::UserService;
use im_proto::im::user::v1::*;
use rusqlite::{params, Connection, OptionalExtension};
use tonic::{Request, Response};

use crate::caller::Caller;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::file_access::require_readable;
use crate::hashing::HashPool;
use crate::notify::Notifier;
use crate::phone::PhoneRules;
use crate::sms::SharedSms;
use crate::token::TokenIssuer;
use crate::user_rows::existing_user;
use crate::util::{file_id, new_id, required, token_like, unix_secs};

pub const SERVICE_NAME: &str = "im.user.v1.UserService";
const CODE_TTL_SECS: i64 = 300;
const CODE_ATTEMPTS: i64 = 5;
/// How long sent codes are kept: the window of the per-day cap.
const CODE_DAY_SECS: i64 = 24 * 3600;

pub struct UserSvc {
    pub db: Db,
    pub tokens: TokenIssuer,
    pub sms: SharedSms,
    pub notifier: Notifier,
    /// Least time between two codes sent to one phone.
    pub code_interval: Duration,
    /// Most codes sent to one phone in 24 hours (SMS pumping).
    pub codes_per_day: u32,
    pub phones: PhoneRules,
    pub hasher: HashPool,
    /// The longest a session lives from its login; refreshes never extend it.
    pub max_session: Duration,
}

/// The caller's own profile: the public one plus their phone.
fn own_profile(conn: &Connection, id: &str) -> Result<UserInfo, ApiError> {
    let mut info = existing_user(conn, "x-user-id", id)?;
    info.phone = conn
        .query_row("SELECT phone FROM users WHERE id = ?1", [id], |r| {
            r.get::<_, Option<String>>(0)
        })?
        .unwrap_or_default();
    Ok(info)
}

fn nickname(value: &str) -> Result<String, ApiError> {
    let v = required("nickname", value, 32)?;
    if v.chars().count() < 2 {
        return Err(ApiError::invalid("nickname needs at least 2 characters"));
    }
    Ok(v.to_owned())
}

/// Optional `device_id` / `platform` of a login: empty means "not given".
fn device(field: &str, value: &str) -> Result<Option<String>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    token_like(field, value)?;
    Ok(Some(value.to_owned()))
}

fn unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// Checks and consumes a verification code for `phone` (single use, limited attempts). The
/// inner `Err` is a refusal to commit (a wrong guess counts), for [`Db::write_recording`].
fn consume_code(
    tx: &rusqlite::Transaction<'_>,
    phone: &str,
    code_id: &str,
    code: &str,
) -> Result<Result<(), ApiError>, ApiError> {
    let row: Option<(String, String, i64, i64, i64)> = tx
        .query_row(
            "SELECT phone, code, expires_at, used, attempts FROM verify_codes WHERE id = ?1",
            [code_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((for_phone, expected, expires_at, used, attempts)) = row else {
        return Ok(Err(ApiError::invalid(
            "verify_code_id is unknown; request a code first",
        )));
    };
    if for_phone != phone {
        return Ok(Err(ApiError::invalid(
            "verify_code_id was issued for another phone",
        )));
    }
    if used != 0 || expires_at < unix_secs() || attempts >= CODE_ATTEMPTS {
        return Ok(Err(ApiError::invalid(
            "the verification code has expired, was used or was guessed wrong too often; request a new one",
        )));
    }
    if expected != code.trim() {
        tx.execute(
            "UPDATE verify_codes SET attempts = attempts + 1 WHERE id = ?1",
            [code_id],
        )?;
        return Ok(Err(ApiError::invalid("verify_code is wrong")));
    }
    tx.execute("UPDATE verify_codes SET used = 1 WHERE id = ?1", [code_id])?;
    Ok(Ok(()))
}

impl UserSvc {
    fn login_rsp(
        &self,
        user_id: String,
        device_id: &str,
        platform: &str,
    ) -> Result<LoginRsp, ApiError> {
        let sid = new_id();
        let minted = self.tokens.mint(
            &user_id,
            &sid,
            Some(device_id).filter(|d| !d.is_empty()),
            Some(platform).filter(|p| !p.is_empty()),
            unix_secs() + self.max_session.as_secs() as i64,
        )?;
        tracing::info!(user_id = %user_id, sid = %sid, "login");
        Ok(LoginRsp {
            user_id,
            token: minted.token,
            expires_at: minted.expires_at,
        })
    }

    async fn update_profile(
        &self,
        caller: Caller,
        sql: &'static str,
        value: String,
    ) -> ApiResult<SetProfileRsp> {
        let info = self
            .db
            .write(move |tx| {
                match tx.execute(sql, params![value, caller.user_id]) {
                    Ok(0) => return Err(ApiError::not_found("your account no longer exists")),
                    Ok(_) => {}
                    Err(e) if unique_violation(&e) => {
                        return Err(ApiError::exists("that value is taken by another account"))
                    }
                    Err(e) => return Err(e.into()),
                }
                own_profile(tx, &caller.user_id)
            })
            .await?;
        Ok(Response::new(SetProfileRsp {
            user_info: Some(info),
        }))
    }
}

#[tonic::async_trait]
impl UserService for UserSvc {
    async fn username_register(
        &self,
        request: Request<UsernameRegisterReq>,
    ) -> ApiResult<UsernameRegisterRsp> {
        let req = request.into_inner();
        let nickname = nickname(&req.nickname)?;
        let len = req.password.chars().count();
        if !(6..=128).contains(&len) {
            return Err(ApiError::invalid("password must be 6 to 128 characters").into());
        }
        let hash = self.hasher.hash(req.password).await?;
        let user_id = new_id();
        let id = user_id.clone();
        self.db
            .write(move |tx| {
                match tx.execute(
                    "INSERT INTO users (id, nickname, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, nickname, hash, unix_secs()],
                ) {
                    Err(e) if unique_violation(&e) => Err(ApiError::exists(format!(
                        "nickname `{nickname}` is taken; choose another"
                    ))),
                    other => other.map(|_| ()).map_err(Into::into),
                }
            })
            .await?;
        Ok(Response::new(UsernameRegisterRsp { user_id }))
    }

    async fn username_login(&self, request: Request<UsernameLoginReq>) -> ApiResult<LoginRsp> {
        let req = request.into_inner();
        let nickname = required("nickname", &req.nickname, 32)?.to_owned();
        device("device_id", &req.device_id)?;
        device("platform", &req.platform)?;
        let row: Option<(String, Option<String>)> = self
            .db
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT id, password_hash FROM users WHERE nickname = ?1",
                    [nickname],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?)
            })
            .await?;
        // An unknown nickname (or an account without a password) is checked against a decoy
        // hash: the refusal takes as long as a wrong password's, so it tells nothing.
        let (user_id, hash) = row.unzip();
        if !self.hasher.verify(req.password, hash.flatten()).await? {
            return Err(ApiError::unauthenticated("wrong nickname or password").into());
        }
        let user_id = user_id.ok_or_else(|| ApiError::internal("verified without an account"))?;
        Ok(Response::new(self.login_rsp(
            user_id,
            &req.device_id,
            &req.platform,
        )?))
    }

    async fn get_phone_verify_code(
        &self,
        request: Request<GetPhoneVerifyCodeReq>,
    ) -> ApiResult<GetPhoneVerifyCodeRsp> {
        let phone = self.phones.normalize(&request.into_inner().phone)?;
        let code = format!("{:06}", rand::random::<u32>() % 1_000_000);
        let id = new_id();
        let interval = self.code_interval.as_secs() as i64;
        let per_day = i64::from(self.codes_per_day);
        let (p, c, i) = (phone.clone(), code.clone(), id.clone());
        self.db
            .write(move |tx| {
                let now = unix_secs();
                // Codes are kept for a day, the window of the cap below.
                tx.execute(
                    "DELETE FROM verify_codes WHERE created_at <= ?1",
                    [now - CODE_DAY_SECS],
                )?;
                let (last, today): (Option<i64>, i64) = tx.query_row(
                    "SELECT max(created_at), count(*) FROM verify_codes WHERE phone = ?1",
                    [&p],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                if let Some(wait) = last.map(|t| t + interval - now).filter(|w| *w > 0) {
                    return Err(ApiError::exhausted(format!(
                        "a code was sent to this phone recently; try again in {wait} s"
                    )));
                }
                if today >= per_day {
                    return Err(ApiError::exhausted(format!(
                        "this phone was sent {today} codes in the last day, the most allowed; try again tomorrow"
                    )));
                }
                tx.execute(
                    "INSERT INTO verify_codes (id, phone, code, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![i, p, c, now + CODE_TTL_SECS, now],
                )?;
                Ok(())
            })
            .await?;
        self.sms.send_code(&phone, &code);
        Ok(Response::new(GetPhoneVerifyCodeRsp { verify_code_id: id }))
    }

    async fn phone_register(
        &self,
        request: Request<PhoneRegisterReq>,
    ) -> ApiResult<PhoneRegisterRsp> {
        let req = request.into_inner();
        let phone = self.phones.normalize(&req.phone)?;
        let nickname = if req.nickname.trim().is_empty() {
            format!(
                "user{}-{:04x}",
                &phone[phone.len() - 4..],
                rand::random::<u16>()
            )
        } else {
            nickname(&req.nickname)?
        };
        let user_id = new_id();
        let id = user_id.clone();
        self.db
            .write_recording(move |tx| {
                if let Err(refused) =
                    consume_code(tx, &phone, &req.verify_code_id, &req.verify_code)?
                {
                    return Ok(Err(refused));
                }
                // A taken phone or nickname rolls back, so the code stays usable.
                match tx.execute(
                    "INSERT INTO users (id, nickname, phone, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, nickname, phone, unix_secs()],
                ) {
                    Err(e) if unique_violation(&e) => Err(ApiError::exists(
                        "this phone or nickname already has an account; log in instead",
                    )),
                    other => other.map(|_| Ok(())).map_err(Into::into),
                }
            })
            .await?;
        Ok(Response::new(PhoneRegisterRsp { user_id }))
    }

    async fn phone_login(&self, request: Request<PhoneLoginReq>) -> ApiResult<LoginRsp> {
        let req = request.into_inner();
        let phone = self.phones.normalize(&req.phone)?;
        device("device_id", &req.device_id)?;
        device("platform", &req.platform)?;
        let (code_id, code) = (req.verify_code_id.clone(), req.verify_code.clone());
        let user_id = self
            .db
            .write_recording(move |tx| {
                if let Err(refused) = consume_code(tx, &phone, &code_id, &code)? {
                    return Ok(Err(refused));
                }
                let user = tx
                    .query_row("SELECT id FROM users WHERE phone = ?1", [&phone], |r| {
                        r.get::<_, String>(0)
                    })
                    .optional()?;
                user.map(Ok)
                    .ok_or_else(|| ApiError::not_found("no account has this phone; register first"))
            })
            .await?;
        Ok(Response::new(self.login_rsp(
            user_id,
            &req.device_id,
            &req.platform,
        )?))
    }

    async fn refresh_token(&self, request: Request<RefreshTokenReq>) -> ApiResult<RefreshTokenRsp> {
        let caller = Caller::of(&request)?;
        let sid = caller.session_id.clone().ok_or_else(|| {
            ApiError::unauthenticated("this token has no session id; log in again")
        })?;
        let who = caller.user_id.clone();
        self.db
            .read(move |c| existing_user(c, "x-user-id", &who).map(|_| ()))
            .await?;
        // Same session id and end: a later logout or kick covers the refreshed token too, and
        // no refresh extends the session. Tokens from before `sxp` start their end now.
        let session_end = caller
            .session_end
            .unwrap_or_else(|| unix_secs() + self.max_session.as_secs() as i64);
        if session_end <= unix_secs() {
            return Err(ApiError::unauthenticated("this session has ended; log in again").into());
        }
        let minted = self.tokens.mint(
            &caller.user_id,
            &sid,
            caller.device_id.as_deref(),
            caller.platform.as_deref(),
            session_end,
        )?;
        Ok(Response::new(RefreshTokenRsp {
            token: minted.token,
            expires_at: minted.expires_at,
        }))
    }

    async fn logout(&self, request: Request<LogoutReq>) -> ApiResult<LogoutRsp> {
        let caller = Caller::of(&request)?;
        let sid = caller
            .session_id
            .ok_or_else(|| ApiError::unauthenticated("this token has no session id"))?;
        // Denied until the session's end: no token of this sid is valid after it.
        let exp = caller
            .session_end
            .unwrap_or_else(|| unix_secs() + self.max_session.as_secs() as i64);
        self.notifier.revoke(&sid, exp).await?;
        tracing::info!(user_id = %caller.user_id, sid = %sid, "logout");
        Ok(Response::new(LogoutRsp {}))
    }

    async fn get_user_info(&self, request: Request<GetUserInfoReq>) -> ApiResult<GetUserInfoRsp> {
        let caller = Caller::of(&request)?;
        let wanted = request.into_inner().user_id;
        let own = wanted.is_empty() || wanted == caller.user_id;
        let id = if wanted.is_empty() {
            caller.user_id
        } else {
            wanted
        };
        let info = self
            .db
            .read(move |c| {
                if own {
                    own_profile(c, &id)
                } else {
                    existing_user(c, "user_id", &id)
                }
            })
            .await?;
        Ok(Response::new(GetUserInfoRsp {
            user_info: Some(info),
        }))
    }

    async fn set_avatar(&self, request: Request<SetAvatarReq>) -> ApiResult<SetProfileRsp> {
        let caller = Caller::of(&request)?;
        let avatar = request.into_inner().avatar_id;
        file_id("avatar_id", &avatar)?;
        // Only a file the caller may already read: else any known hash becomes readable.
        let (who, id) = (caller.user_id.clone(), avatar.clone());
        self.db
            .read(move |c| require_readable(c, "avatar_id", &who, &id).map(drop))
            .await?;
        self.update_profile(
            caller,
            "UPDATE users SET avatar_id = ?1 WHERE id = ?2",
            avatar,
        )
        .await
    }

    async fn set_nickname(&self, request: Request<SetNicknameReq>) -> ApiResult<SetProfileRsp> {
        let caller = Caller::of(&request)?;
        let name = nickname(&request.into_inner().nickname)?;
        self.update_profile(caller, "UPDATE users SET nickname = ?1 WHERE id = ?2", name)
            .await
    }

    async fn set_description(
        &self,
        request: Request<SetDescriptionReq>,
    ) -> ApiResult<SetProfileRsp> {
        let caller = Caller::of(&request)?;
        let text = request.into_inner().description;
        if text.chars().count() > 500 {
            return Err(ApiError::invalid("description is longer than 500 characters").into());
        }
        self.update_profile(
            caller,
            "UPDATE users SET description = ?1 WHERE id = ?2",
            text.trim().to_owned(),
        )
        .await
    }

    async fn set_phone(&self, request: Request<SetPhoneReq>) -> ApiResult<SetProfileRsp> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let phone = self.phones.normalize(&req.phone)?;
        let info = self
            .db
            .write_recording(move |tx| {
                if let Err(refused) =
                    consume_code(tx, &phone, &req.verify_code_id, &req.verify_code)?
                {
                    return Ok(Err(refused));
                }
                match tx.execute(
                    "UPDATE users SET phone = ?1 WHERE id = ?2",
                    params![phone, caller.user_id],
                ) {
                    Err(e) if unique_violation(&e) => {
                        return Err(ApiError::exists("this phone belongs to another account"))
                    }
                    Err(e) => return Err(e.into()),
                    Ok(_) => {}
                }
                own_profile(tx, &caller.user_id).map(Ok)
            })
            .await?;
        Ok(Response::new(SetProfileRsp {
            user_info: Some(info),
        }))
    }
}
