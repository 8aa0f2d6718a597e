//! `im.user.v1.UserService`: registration and login by nickname or phone, tokens, profiles.

use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use im_proto::im::user::v1::user_service_server::UserService;
use im_proto::im::user::v1::*;
use rusqlite::{params, Connection, OptionalExtension};
use tonic::{Request, Response};

use crate::caller::Caller;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::notify::Notifier;
use crate::sms::SharedSms;
use crate::token::TokenIssuer;
use crate::util::{file_id, new_id, required, token_like, unix_secs};

pub const SERVICE_NAME: &str = "im.user.v1.UserService";
const CODE_TTL_SECS: i64 = 300;
const CODE_ATTEMPTS: i64 = 5;

pub struct UserSvc {
    pub db: Db,
    pub tokens: TokenIssuer,
    pub sms: SharedSms,
    pub notifier: Notifier,
    /// Least time between two codes sent to one phone.
    pub code_interval: Duration,
}

/// The columns of `users` (aliased `u`) that [`user_row`] reads, in its order.
pub const USER_COLUMNS: &str =
    "u.id, u.nickname, u.description, COALESCE(u.phone, ''), u.avatar_id";

pub fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserInfo> {
    Ok(UserInfo {
        user_id: r.get(0)?,
        nickname: r.get(1)?,
        description: r.get(2)?,
        phone: r.get(3)?,
        avatar_id: r.get(4)?,
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

fn nickname(value: &str) -> Result<String, ApiError> {
    let v = required("nickname", value, 32)?;
    if v.chars().count() < 2 {
        return Err(ApiError::invalid("nickname needs at least 2 characters"));
    }
    Ok(v.to_owned())
}

fn phone(value: &str) -> Result<String, ApiError> {
    let v = value.trim();
    let digits = v.strip_prefix('+').unwrap_or(v);
    if (6..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(v.to_owned())
    } else {
        Err(ApiError::invalid(
            "phone must be 6 to 20 digits, optionally after a `+`",
        ))
    }
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

/// Checks and consumes a verification code for `phone` (single use, limited attempts).
fn consume_code(
    tx: &rusqlite::Transaction<'_>,
    phone: &str,
    code_id: &str,
    code: &str,
) -> Result<(), ApiError> {
    let row: Option<(String, String, i64, i64, i64)> = tx
        .query_row(
            "SELECT phone, code, expires_at, used, attempts FROM verify_codes WHERE id = ?1",
            [code_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((for_phone, expected, expires_at, used, attempts)) = row else {
        return Err(ApiError::invalid(
            "verify_code_id is unknown; request a code first",
        ));
    };
    if for_phone != phone {
        return Err(ApiError::invalid(
            "verify_code_id was issued for another phone",
        ));
    }
    if used != 0 || expires_at < unix_secs() || attempts >= CODE_ATTEMPTS {
        return Err(ApiError::invalid(
            "the verification code has expired or was used; request a new one",
        ));
    }
    if expected != code.trim() {
        tx.execute(
            "UPDATE verify_codes SET attempts = attempts + 1 WHERE id = ?1",
            [code_id],
        )?;
        return Err(ApiError::invalid("verify_code is wrong"));
    }
    tx.execute("UPDATE verify_codes SET used = 1 WHERE id = ?1", [code_id])?;
    Ok(())
}

async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::internal(format!("argon2: {e}")))
    })
    .await
    .map_err(|e| ApiError::internal(format!("hash task: {e}")))?
}

async fn password_matches(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

impl UserSvc {
    fn login_rsp(&self, user_id: String, device_id: &str, platform: &str) -> LoginRsp {
        let sid = new_id();
        let minted = self.tokens.mint(
            &user_id,
            &sid,
            Some(device_id).filter(|d| !d.is_empty()),
            Some(platform).filter(|p| !p.is_empty()),
        );
        tracing::info!(user_id = %user_id, sid = %sid, "login");
        LoginRsp {
            user_id,
            token: minted.token,
            expires_at: minted.expires_at,
        }
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
                existing_user(tx, "x-user-id", &caller.user_id)
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
        let hash = hash_password(req.password).await?;
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
        let wrong = || ApiError::unauthenticated("wrong nickname or password").into();
        let Some((user_id, Some(hash))) = row else {
            return Err(wrong());
        };
        if !password_matches(req.password, hash).await {
            return Err(wrong());
        }
        Ok(Response::new(self.login_rsp(
            user_id,
            &req.device_id,
            &req.platform,
        )))
    }

    async fn get_phone_verify_code(
        &self,
        request: Request<GetPhoneVerifyCodeReq>,
    ) -> ApiResult<GetPhoneVerifyCodeRsp> {
        let phone = phone(&request.into_inner().phone)?;
        let code = format!("{:06}", rand::random::<u32>() % 1_000_000);
        let id = new_id();
        let interval = self.code_interval.as_secs() as i64;
        let (p, c, i) = (phone.clone(), code.clone(), id.clone());
        self.db
            .write(move |tx| {
                let now = unix_secs();
                let last: Option<i64> = tx.query_row(
                    "SELECT max(created_at) FROM verify_codes WHERE phone = ?1",
                    [&p],
                    |r| r.get(0),
                )?;
                if let Some(wait) = last.map(|t| t + interval - now).filter(|w| *w > 0) {
                    return Err(ApiError::exhausted(format!(
                        "a code was sent to this phone recently; try again in {wait} s"
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
        let phone = phone(&req.phone)?;
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
            .write(move |tx| {
                consume_code(tx, &phone, &req.verify_code_id, &req.verify_code)?;
                match tx.execute(
                    "INSERT INTO users (id, nickname, phone, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, nickname, phone, unix_secs()],
                ) {
                    Err(e) if unique_violation(&e) => Err(ApiError::exists(
                        "this phone or nickname already has an account; log in instead",
                    )),
                    other => other.map(|_| ()).map_err(Into::into),
                }
            })
            .await?;
        Ok(Response::new(PhoneRegisterRsp { user_id }))
    }

    async fn phone_login(&self, request: Request<PhoneLoginReq>) -> ApiResult<LoginRsp> {
        let req = request.into_inner();
        let phone = phone(&req.phone)?;
        device("device_id", &req.device_id)?;
        device("platform", &req.platform)?;
        let (code_id, code) = (req.verify_code_id.clone(), req.verify_code.clone());
        let user_id = self
            .db
            .write(move |tx| {
                consume_code(tx, &phone, &code_id, &code)?;
                tx.query_row("SELECT id FROM users WHERE phone = ?1", [&phone], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?
                .ok_or_else(|| ApiError::not_found("no account has this phone; register first"))
            })
            .await?;
        Ok(Response::new(self.login_rsp(
            user_id,
            &req.device_id,
            &req.platform,
        )))
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
        // Same session id: a later logout revokes the refreshed token too.
        let minted = self.tokens.mint(
            &caller.user_id,
            &sid,
            caller.device_id.as_deref(),
            caller.platform.as_deref(),
        );
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
        // Every token of this sid expires within one lifetime from now.
        let exp = unix_secs() + self.tokens.ttl().as_secs() as i64;
        self.notifier.revoke(&sid, exp).await?;
        tracing::info!(user_id = %caller.user_id, sid = %sid, "logout");
        Ok(Response::new(LogoutRsp {}))
    }

    async fn get_user_info(&self, request: Request<GetUserInfoReq>) -> ApiResult<GetUserInfoRsp> {
        let caller = Caller::of(&request)?;
        let wanted = request.into_inner().user_id;
        let id = if wanted.is_empty() {
            caller.user_id
        } else {
            wanted
        };
        let info = self
            .db
            .read(move |c| existing_user(c, "user_id", &id))
            .await?;
        Ok(Response::new(GetUserInfoRsp {
            user_info: Some(info),
        }))
    }

    async fn set_avatar(&self, request: Request<SetAvatarReq>) -> ApiResult<SetProfileRsp> {
        let caller = Caller::of(&request)?;
        let avatar = request.into_inner().avatar_id;
        file_id("avatar_id", &avatar)?;
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
        let phone = phone(&req.phone)?;
        let info = self
            .db
            .write(move |tx| {
                consume_code(tx, &phone, &req.verify_code_id, &req.verify_code)?;
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
                existing_user(tx, "x-user-id", &caller.user_id)
            })
            .await?;
        Ok(Response::new(SetProfileRsp {
            user_info: Some(info),
        }))
    }
}
