// Tests of the `auth` module; `super::*` is its public and private items.
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
    let _ = a.revocation().revoke("gone", unix_now() + 60);
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
