//! The `auth:` section turned into what verification needs: one decoding key and one set of
//! validation rules per allowed algorithm, and the API keys' digests.

use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::config::{AuthConfig, AuthConfigError, KeyAlg};

/// Key and rules per algorithm; a token whose header names another algorithm is refused.
pub(super) type VerifyingKeys = HashMap<Algorithm, (DecodingKey, Validation)>;

/// Shortest HS256 secret accepted, in bytes.
const MIN_SECRET_LEN: usize = 16;

pub(super) fn verifying_keys(cfg: &AuthConfig) -> Result<VerifyingKeys, AuthConfigError> {
    let mut keys = HashMap::new();
    if let Some(path) = &cfg.hs256_secret_file {
        let secret = read(path, "hs256_secret_file")?;
        let secret = String::from_utf8_lossy(&secret).trim().to_owned();
        if secret.len() < MIN_SECRET_LEN {
            return Err(AuthConfigError::ShortSecret {
                path: path.clone(),
                len: secret.len(),
            });
        }
        let key = DecodingKey::from_secret(secret.as_bytes());
        keys.insert(Algorithm::HS256, (key, validation(cfg, Algorithm::HS256)));
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
        if keys.insert(alg, (key, validation(cfg, alg))).is_some() {
            return Err(AuthConfigError::DuplicateAlgorithm(k.alg));
        }
    }
    Ok(keys)
}

/// `exp` and `sub` always required, `nbf` checked, `iss` and `aud` required when configured.
fn validation(cfg: &AuthConfig, alg: Algorithm) -> Validation {
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
}

/// `(client name, SHA-256 of its key)` for every configured API key.
pub(super) fn api_key_digests(
    cfg: &AuthConfig,
) -> Result<Vec<(String, [u8; 32])>, AuthConfigError> {
    cfg.api_keys
        .iter()
        .map(|k| {
            hex::decode(k.sha256.trim())
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .map(|digest| (k.name.clone(), digest))
                .ok_or_else(|| AuthConfigError::ApiKeyDigest {
                    name: k.name.clone(),
                })
        })
        .collect()
}

fn read(path: &Path, field: &'static str) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|source| AuthConfigError::Read {
        field,
        path: path.to_owned(),
        source,
    })
}
