//! JWT issuance (DESIGN §5): the same key material, issuer, audience and claims the gateway
//! verifies: `sub`, `sid`, `dev`, `plt`, `iat`, `exp`, `sxp` (the session's absolute end: no token
//! of the `sid` expires after it), and `iss`/`aud` when configured.

use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;

use crate::error::ApiError;

#[derive(Clone)]
pub struct TokenIssuer {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
    ttl: Duration,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dev: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plt: Option<&'a str>,
    iat: i64,
    exp: i64,
    sxp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// A minted token and when it expires (Unix seconds).
pub struct Minted {
    pub token: String,
    pub expires_at: i64,
}

impl TokenIssuer {
    /// `secret`: the HS256 key file's contents, trimmed the way the gateway trims them.
    pub fn hs256(
        secret: &str,
        issuer: Option<String>,
        audience: Option<String>,
        ttl: Duration,
    ) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.len() < 16 {
            return Err(format!(
                "JWT secret holds {} bytes; use at least 16 random bytes",
                secret.len()
            ));
        }
        Ok(Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            issuer,
            audience,
            ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A token of session `sid`, valid for the configured lifetime but never past
    /// `session_end` (unix seconds).
    pub fn mint(
        &self,
        user_id: &str,
        sid: &str,
        device_id: Option<&str>,
        platform: Option<&str>,
        session_end: i64,
    ) -> Result<Minted, ApiError> {
        let now = crate::util::unix_secs();
        let exp = (now + self.ttl.as_secs() as i64).min(session_end);
        let claims = Claims {
            sub: user_id,
            sid,
            dev: device_id,
            plt: platform,
            iat: now,
            exp,
            sxp: session_end,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        // HS256 over claims that always serialize: an error here is a bug, answered INTERNAL.
        let token = encode(&Header::default(), &claims, &self.key)
            .map_err(|e| ApiError::internal(format!("signing a token: {e}")))?;
        Ok(Minted {
            token,
            expires_at: exp,
        })
    }
}
