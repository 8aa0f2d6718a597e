//! `jwt-backends <rustcrypto|aws-lc|ring> <key dir>`: signs 2,000 distinct tokens per algorithm
//! (RS256 with `rsa.pem`, ES256 with `ec.pem`, the public halves in `*.pub.pem`), then checks
//! each once with the backend named, as the gateway's cold path does (`decode`, signature and
//! claims). Prints one JSON line: microseconds per check by algorithm.

use std::time::Instant;

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, KeyUtils};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};

const TOKENS: usize = 2000;

/// ring for RS256 and ES256 checks (the gateway's provider does the same, for every algorithm
/// it accepts); signing stays with RustCrypto.
mod ring_provider {
    use super::*;
    use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER as RUST_CRYPTO;
    use jsonwebtoken::signature;
    use ring::signature as sig;

    struct Check(Algorithm, Vec<u8>);

    impl signature::Verifier<Vec<u8>> for Check {
        fn verify(&self, msg: &[u8], s: &Vec<u8>) -> Result<(), signature::Error> {
            let alg: &'static dyn sig::VerificationAlgorithm = match self.0 {
                Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
                _ => return Err(signature::Error::new()),
            };
            sig::UnparsedPublicKey::new(alg, &self.1)
                .verify(msg, s)
                .map_err(|_| signature::Error::new())
        }
    }

    impl JwtVerifier for Check {
        fn algorithm(&self) -> Algorithm {
            self.0
        }
    }

    pub static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory: |a, k| (RUST_CRYPTO.signer_factory)(a, k),
        verifier_factory: |a, k: &DecodingKey| Ok(Box::new(Check(*a, k.try_get_as_bytes()?.to_vec()))),
        key_utils: KeyUtils::new_unimplemented(),
    };
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (backend, dir) = match (args.next(), args.next()) {
        (Some(b), Some(d)) => (b, d),
        _ => {
            eprintln!("usage: jwt-backends <rustcrypto|aws-lc|ring> <key dir>");
            std::process::exit(2);
        }
    };
    let provider: &'static CryptoProvider = match backend.as_str() {
        "rustcrypto" => &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
        "aws-lc" => &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        "ring" => &ring_provider::PROVIDER,
        other => {
            eprintln!("unknown backend {other}");
            std::process::exit(2);
        }
    };
    provider.install_default().expect("first provider");
    let mut out = serde_json::Map::new();
    out.insert("backend".into(), backend.clone().into());
    for (alg, name) in [(Algorithm::RS256, "rsa"), (Algorithm::ES256, "ec")] {
        let read = |f: String| std::fs::read(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
        let private = read(format!("{dir}/{name}.pem"));
        let public = read(format!("{dir}/{name}.pub.pem"));
        let (enc, dec) = match alg {
            Algorithm::RS256 => (EncodingKey::from_rsa_pem(&private), DecodingKey::from_rsa_pem(&public)),
            _ => (EncodingKey::from_ec_pem(&private), DecodingKey::from_ec_pem(&public)),
        };
        let (enc, dec) = (enc.expect("private key"), dec.expect("public key"));
        let tokens: Vec<String> = (0..TOKENS)
            .map(|i| {
                let claims = serde_json::json!({"sub": format!("u{i}"), "sid": format!("s{i}"), "exp": 4_000_000_000u64});
                encode(&Header::new(alg), &claims, &enc).expect("signs")
            })
            .collect();
        let validation = Validation::new(alg);
        let started = Instant::now();
        for t in &tokens {
            decode::<serde_json::Value>(t, &dec, &validation).expect("a good token");
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / TOKENS as f64;
        out.insert(format!("{alg:?}"), serde_json::json!(us));
    }
    println!("{}", serde_json::Value::Object(out));
}
