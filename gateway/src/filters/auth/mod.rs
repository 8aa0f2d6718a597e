//! Authentication (DESIGN §5): JWT bearer tokens verified with jsonwebtoken (algorithms allowed
//! by config, one key per algorithm, so `alg: none` and algorithm confusion cannot pass), `exp`
//! required, `nbf` checked, `iss`/`aud` when configured, a configurable leeway; revoked `sid`s
//! denied; API keys matched against SHA-256 hashes in constant time.
//!
//! `config` is the `auth:` section and its errors, `keys` turns it into verification keys,
//! `cache` remembers verified tokens; this file verifies.

mod cache;
mod config;
mod crypto;
mod keys;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header};
use serde::Deserialize;

use super::revocation::{MemoryRevocation, MAX_SESSION_SECS};
use crate::clock::unix_now;
use cache::TokenCache;
pub use config::{ApiKeyConfig, AuthConfig, AuthConfigError, KeyAlg, PublicKeyConfig};
pub use crypto::install as install_ring_verifier;

/// Who is calling, from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub sid: Option<String>,
    pub device_id: Option<String>,
    pub platform: Option<String>,
    pub roles: Vec<String>,
    /// Unix seconds.
    pub exp: u64,
    /// The session's absolute end (unix seconds): the token's `sxp`, or [`MAX_SESSION_SECS`]
    /// from verification for tokens without one. A revocation lasts until then.
    pub session_end: u64,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// Session expiry: no token of this `sid` is minted past it.
    sxp: Option<u64>,
    sid: Option<String>,
    dev: Option<String>,
    plt: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// Why a credential was refused; `reason()` labels the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm not allowed")]
    Algorithm,
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong token issuer")]
    Issuer,
    #[error("wrong token audience")]
    Audience,
    #[error("token revoked")]
    Revoked,
    #[error("missing or unknown API key")]
    ApiKey,
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::Revoked => "revoked",
            Self::ApiKey => "api_key",
        }
    }
}

pub struct Authenticator {
    keys: keys::VerifyingKeys,
    api_keys: Vec<(String, [u8; 32])>,
    revocation: Arc<MemoryRevocation>,
    cache: Option<TokenCache>,
    leeway: u64,
}

impl Authenticator {
    pub fn new(
        cfg: &AuthConfig,
        revocation: Arc<MemoryRevocation>,
    ) -> Result<Self, AuthConfigError> {
        // The binaries install it first thing; here for embedders (a no-op when done).
        crypto::install();
        Ok(Self {
            keys: keys::verifying_keys(cfg)?,
            api_keys: keys::api_key_digests(cfg)?,
            revocation,
            cache: TokenCache::new(cfg.token_cache, cfg.token_cache_ttl.0),
            leeway: cfg.leeway.0.as_secs(),
        })
    }

    pub fn revocation(&self) -> &Arc<MemoryRevocation> {
        &self.revocation
    }

    /// Drops verified tokens past `auth.token_cache_ttl` (the maintenance sweep).
    pub fn sweep_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.sweep();
        }
    }

    /// Verifies a JWT and checks its session against the denylist. A token verified before is
    /// answered from the cache, still subject to its expiry and to revocation.
    pub fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthFailure> {
        if let Some(id) = self.cached(token)? {
            return Ok(id);
        }
        let id = Arc::new(self.verify_signature(token)?);
        if let Some(cache) = &self.cache {
            cache.put(token, id.clone());
        }
        Ok(id)
    }

    /// Like [`Self::verify`], but a token the cache does not hold is not added: for WebSocket
    /// handshakes, whose session keeps the identity itself (a cache entry per connection would
    /// cost a few hundred bytes for nothing).
    pub fn verify_once(&self, token: &str) -> Result<Arc<Identity>, AuthFailure> {
        match self.cached(token)? {
            Some(id) => Ok(id),
            None => Ok(Arc::new(self.verify_signature(token)?)),
        }
    }

    /// A token verified earlier, checked for expiry and revocation again.
    fn cached(&self, token: &str) -> Result<Option<Arc<Identity>>, AuthFailure> {
        match self.cache.as_ref().and_then(|c| c.get(token)) {
            Some(id) => self.check_live(&id).map(|()| Some(id)),
            None => Ok(None),
        }
    }

    /// Expiry and revocation of an identity verified earlier.
    pub fn check_live(&self, id: &Identity) -> Result<(), AuthFailure> {
        if id.exp.saturating_add(self.leeway) < unix_now() {
            return Err(AuthFailure::Expired);
        }
        if id
            .sid
            .as_deref()
            .is_some_and(|sid| self.revocation.is_revoked(sid))
        {
            return Err(AuthFailure::Revoked);
        }
        Ok(())
    }

    fn verify_signature(&self, token: &str) -> Result<Identity, AuthFailure> {
        let header = decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::InvalidAlgorithm => AuthFailure::Algorithm,
            _ => AuthFailure::Malformed,
        })?;
        let (key, validation) = self.keys.get(&header.alg).ok_or(AuthFailure::Algorithm)?;
        let data = decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthFailure::Expired,
            ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
            ErrorKind::InvalidSignature => AuthFailure::Signature,
            ErrorKind::InvalidIssuer => AuthFailure::Issuer,
            ErrorKind::InvalidAudience => AuthFailure::Audience,
            ErrorKind::InvalidAlgorithm => AuthFailure::Algorithm,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthFailure::Issuer,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthFailure::Audience,
            _ => AuthFailure::Malformed,
        })?;
        let c = data.claims;
        if c.sub.is_empty() {
            return Err(AuthFailure::Malformed);
        }
        if let Some(sid) = &c.sid {
            if self.revocation.is_revoked(sid) {
                return Err(AuthFailure::Revoked);
            }
        }
        Ok(Identity {
            user_id: c.sub,
            sid: c.sid,
            device_id: c.dev,
            platform: c.plt,
            roles: c.roles,
            exp: c.exp,
            session_end: c.sxp.unwrap_or_else(|| unix_now() + MAX_SESSION_SECS),
        })
    }

    /// The name of the client owning `key`, comparing hashes in constant time.
    pub fn api_client(&self, key: &str) -> Result<&str, AuthFailure> {
        // Every key is compared, so the time taken does not tell which one was close.
        let mut found = None;
        for (name, expected) in &self.api_keys {
            if crate::filters::secret::matches(expected, key) {
                found = Some(name.as_str());
            }
        }
        found.ok_or(AuthFailure::ApiKey)
    }
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}
