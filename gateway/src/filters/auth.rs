//! Authentication (DESIGN §5): JWT bearer tokens verified with jsonwebtoken (algorithms allowed
//! by config, one key per algorithm, so `alg: none` and algorithm confusion cannot pass), `exp`
//! required, `nbf` checked, `iss`/`aud` when configured, a configurable leeway; revoked `sid`s
//! denied; API keys matched against SHA-256 hashes in constant time.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lru::LruCache;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::revocation::{Revocation, MAX_SESSION_SECS};
use crate::clock::unix_now;
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
    keys: HashMap<Algorithm, (DecodingKey, Validation)>,
    api_keys: Vec<(String, [u8; 32])>,
    revocation: Arc<dyn Revocation>,
    cache: Option<TokenCache>,
    leeway: u64,
}

const CACHE_SHARDS: usize = 16;

/// Verified tokens by their exact text, in LRU shards with a hard total cap.
struct TokenCache {
    // One std Mutex per shard, held for a lookup or an insert; never across `.await`.
    shards: Vec<Mutex<LruCache<Box<str>, Arc<Identity>>>>,
    hasher: RandomState,
}

impl TokenCache {
    fn new(cap: usize) -> Option<Self> {
        let per_shard = NonZeroUsize::new(cap.div_ceil(CACHE_SHARDS))?;
        Some(Self {
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: RandomState::new(),
        })
    }

    fn shard(&self, token: &str) -> &Mutex<LruCache<Box<str>, Arc<Identity>>> {
        &self.shards[self.hasher.hash_one(token) as usize % CACHE_SHARDS]
    }

    fn get(&self, token: &str) -> Option<Arc<Identity>> {
        self.shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    fn put(&self, token: &str, id: Arc<Identity>) {
        self.shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(token.into(), id);
    }
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

fn read(path: &Path, field: &'static str) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|source| AuthConfigError::Read {
        field,
        path: path.to_owned(),
        source,
    })
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig, revocation: Arc<dyn Revocation>) -> Result<Self, AuthConfigError> {
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = cfg.leeway.0.as_secs();
            v.validate_nbf = true;
            let mut required = vec!["exp", "sub"];
            if let Some(iss) = &cfg.issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            match &cfg.audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    required.push("aud");
                }
                None => v.validate_aud = false,
            }
            v.set_required_spec_claims(&required);
            v
        };
        let mut keys = HashMap::new();
        if let Some(path) = &cfg.hs256_secret_file {
            let secret = read(path, "hs256_secret_file")?;
            let secret = String::from_utf8_lossy(&secret).trim().to_owned();
            if secret.len() < 16 {
                return Err(AuthConfigError::ShortSecret {
                    path: path.clone(),
                    len: secret.len(),
                });
            }
            keys.insert(
                Algorithm::HS256,
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    validation(Algorithm::HS256),
                ),
            );
        }
        for k in &cfg.public_keys {
            let pem = read(&k.file, "public_keys")?;
            let (alg, key) = match k.alg {
                KeyAlg::RS256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
                KeyAlg::ES256 => (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)),
                KeyAlg::EdDSA => (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem)),
            };
            let key = key.map_err(|source| AuthConfigError::BadKey {
                path: k.file.clone(),
                alg: k.alg,
                source,
            })?;
            if keys.insert(alg, (key, validation(alg))).is_some() {
                return Err(AuthConfigError::DuplicateAlgorithm(k.alg));
            }
        }
        let mut api_keys = Vec::new();
        for k in &cfg.api_keys {
            let digest = hex::decode(k.sha256.trim())
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| AuthConfigError::ApiKeyDigest {
                    name: k.name.clone(),
                })?;
            api_keys.push((k.name.clone(), digest));
        }
        Ok(Self {
            keys,
            api_keys,
            revocation,
            cache: TokenCache::new(cfg.token_cache),
            leeway: cfg.leeway.0.as_secs(),
        })
    }

    pub fn revocation(&self) -> &Arc<dyn Revocation> {
        &self.revocation
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_now;
    use crate::filters::revocation::MemoryRevocation;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth(issuer: Option<&str>, audience: Option<&str>) -> Authenticator {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("im-auth-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hs.key");
        std::fs::write(&path, SECRET).unwrap();
        let cfg = AuthConfig {
            hs256_secret_file: Some(path),
            issuer: issuer.map(Into::into),
            audience: audience.map(Into::into),
            api_keys: vec![ApiKeyConfig {
                name: "billing".into(),
                sha256: hex::encode(crate::filters::secret::digest("s3cret-key")),
            }],
            ..AuthConfig::default()
        };
        Authenticator::new(&cfg, Arc::new(MemoryRevocation::new(100))).unwrap()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn valid_token_yields_identity() {
        let a = auth(None, None);
        let t = token(
            json!({"sub": "u1", "sid": "s1", "dev": "d1", "plt": "web", "roles": ["admin"], "exp": unix_now() + 60}),
        );
        let id = a.verify(&t).unwrap();
        assert_eq!(id.user_id, "u1");
        assert_eq!(id.device_id.as_deref(), Some("d1"));
        assert_eq!(id.roles, vec!["admin".to_string()]);
    }

    #[test]
    fn negative_cases() {
        let a = auth(Some("im"), Some("clients"));
        let now = unix_now();
        let ok = json!({"sub": "u", "iss": "im", "aud": "clients", "exp": now + 60});
        assert!(a.verify(&token(ok.clone())).is_ok());
        let with = |k: &str, v: serde_json::Value| {
            let mut c = ok.clone();
            c[k] = v;
            token(c)
        };
        assert_eq!(
            a.verify(&with("exp", json!(now - 60))),
            Err(AuthFailure::Expired)
        );
        assert!(
            a.verify(&with("exp", json!(now - 2))).is_ok(),
            "within leeway"
        );
        assert_eq!(
            a.verify(&with("nbf", json!(now + 60))),
            Err(AuthFailure::NotYetValid)
        );
        assert_eq!(
            a.verify(&with("iss", json!("evil"))),
            Err(AuthFailure::Issuer)
        );
        assert_eq!(
            a.verify(&with("aud", json!("other"))),
            Err(AuthFailure::Audience)
        );
        let mut no_exp = ok.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(a.verify(&token(no_exp)), Err(AuthFailure::Malformed));
        assert_eq!(a.verify("not.a.jwt"), Err(AuthFailure::Malformed));
        let mut bad_sig = token(ok.clone());
        let last = bad_sig.pop().unwrap();
        bad_sig.push(if last == 'A' { 'B' } else { 'A' });
        assert!(matches!(
            a.verify(&bad_sig),
            Err(AuthFailure::Signature | AuthFailure::Malformed)
        ));
        // alg: none
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(ok.to_string().as_bytes())
        );
        // jsonwebtoken has no `none` algorithm: such a header does not even parse.
        assert!(matches!(
            a.verify(&none),
            Err(AuthFailure::Algorithm | AuthFailure::Malformed)
        ));
        // An RS256 header when only HS256 is configured.
        let rs = format!(
            "{}.{}.sig",
            b64(br#"{"alg":"RS256","typ":"JWT"}"#),
            b64(ok.to_string().as_bytes())
        );
        assert_eq!(a.verify(&rs), Err(AuthFailure::Algorithm));
    }

    #[test]
    fn revoked_sessions_are_refused_even_when_cached() {
        let a = auth(None, None);
        let t = token(json!({"sub": "u", "sid": "gone", "exp": unix_now() + 60}));
        assert!(a.verify(&t).is_ok());
        assert!(a.verify(&t).is_ok(), "from the cache");
        a.revocation().revoke("gone", unix_now() + 60);
        assert_eq!(a.verify(&t), Err(AuthFailure::Revoked));
    }

    #[test]
    fn cached_tokens_still_expire() {
        let a = auth(None, None);
        // Valid now only thanks to the 5 s leeway; it expires from the cache as it would without.
        let t = token(json!({"sub": "u", "exp": unix_now() - 4}));
        assert!(a.verify(&t).is_ok());
        let cached = a.cache.as_ref().unwrap().get(&t).unwrap();
        a.cache.as_ref().unwrap().put(
            &t,
            Arc::new(Identity {
                exp: unix_now() - 60,
                ..(*cached).clone()
            }),
        );
        assert_eq!(a.verify(&t), Err(AuthFailure::Expired));
    }

    #[test]
    fn api_keys() {
        let a = auth(None, None);
        assert_eq!(a.api_client("s3cret-key"), Ok("billing"));
        assert_eq!(a.api_client("s3cret-kez"), Err(AuthFailure::ApiKey));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    /// base64url without padding, enough to hand-craft hostile tokens.
    fn b64(bytes: &[u8]) -> String {
        const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}
