//! `auth:` in gateway.yaml, and why it may be unusable.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units::HumanDuration;

/// `auth` in gateway.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 shared secret: the file's contents (whitespace trimmed). The launcher writes one.
    pub hs256_secret_file: Option<PathBuf>,
    /// Asymmetric verification keys (PEM public keys), one per algorithm.
    pub public_keys: Vec<PublicKeyConfig>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: HumanDuration,
    /// Machine clients of `auth: api_key` routes.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Cap on remembered revoked sessions.
    pub max_revoked: usize,
    /// Where the denylist is kept across restarts (single node); none: memory only.
    pub revocation_file: Option<PathBuf>,
    /// Verified tokens remembered, so a client's signature is checked once, not per request
    /// (expiry and revocation are still checked every time). 0 disables the cache.
    pub token_cache: usize,
    /// How long a verified token is answered from the cache before its signature is checked
    /// again (against the keys then loaded). 0s disables the cache.
    pub token_cache_ttl: HumanDuration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hs256_secret_file: None,
            public_keys: Vec::new(),
            issuer: None,
            audience: None,
            leeway: HumanDuration(Duration::from_secs(5)),
            api_keys: Vec::new(),
            max_revoked: 1_000_000,
            revocation_file: None,
            token_cache: 100_000,
            token_cache_ttl: HumanDuration(Duration::from_secs(300)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    pub alg: KeyAlg,
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum KeyAlg {
    RS256,
    ES256,
    EdDSA,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who the key belongs to (passed to backends as `x-api-client`).
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s KEY | sha256sum`).
    pub sha256: String,
}

/// Why the `auth:` settings cannot be used; each names the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("auth.{field}: cannot read {}: {source}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth.hs256_secret_file: {} holds {len} bytes; use at least 16 random bytes", path.display())]
    ShortSecret { path: PathBuf, len: usize },
    #[error("auth.public_keys: {} is not a {alg:?} public key in PEM: {source}", path.display())]
    BadKey {
        path: PathBuf,
        alg: KeyAlg,
        source: jsonwebtoken::errors::Error,
    },
    #[error("auth.public_keys: {0:?} is configured twice; keep one key per algorithm")]
    DuplicateAlgorithm(KeyAlg),
    #[error("auth.api_keys: `{name}`: sha256 must be 64 hex digits")]
    ApiKeyDigest { name: String },
}
