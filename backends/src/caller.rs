//! Who is calling, from the gateway's gRPC metadata (DESIGN §4). Backends trust these keys only:
//! the gateway strips client-sent copies and sets them from the verified token.

use tonic::Request;

use crate::error::ApiError;

#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub user_id: String,
    pub device_id: Option<String>,
    pub platform: Option<String>,
    pub session_id: Option<String>,
    /// The session's absolute end (unix seconds), from the token's `sxp`.
    pub session_end: Option<i64>,
}

fn get<T>(req: &Request<T>, key: &str) -> Option<String> {
    req.metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

impl Caller {
    /// The signed-in user, or UNAUTHENTICATED (a route that should have `auth: required`).
    pub fn of<T>(req: &Request<T>) -> Result<Self, ApiError> {
        let user_id = get(req, "x-user-id").ok_or_else(|| {
            ApiError::unauthenticated("sign in first: this call needs a user token")
        })?;
        Ok(Self {
            user_id,
            device_id: get(req, "x-device-id"),
            platform: get(req, "x-platform"),
            session_id: get(req, "x-session-id"),
            session_end: get(req, "x-session-end").and_then(|v| v.parse().ok()),
        })
    }
}
