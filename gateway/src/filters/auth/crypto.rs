//! Signature checks of asymmetric tokens (RS*, PS*, ES256/384, EdDSA) through `ring`, which the
//! build already has for rustls: a cold RS256 check is the cost of every login and of every
//! reconnect after a restart, and jsonwebtoken's RustCrypto backend spends ~7x longer on it
//! (`bench/jwt_cold.py`). HMAC (as fast in RustCrypto) and signing
//! (the backends' job, never on the gateway's path) stay with RustCrypto.
//!
//! jsonwebtoken takes one provider per process ([`install`]); until this one is installed, or if
//! another was first, its RustCrypto backend answers: slower, never wrong.

use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER as RUST_CRYPTO;
use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::signature as ring_sig;

/// ring for verifying asymmetric signatures, RustCrypto for the rest.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: |alg, key| (RUST_CRYPTO.signer_factory)(alg, key),
    verifier_factory,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |der| {
            (RUST_CRYPTO.key_utils.rsa_pub_components_from_private_key)(der)
        },
        rsa_pub_components_from_public_key: |der| {
            (RUST_CRYPTO.key_utils.rsa_pub_components_from_public_key)(der)
        },
        ec_pub_components_from_private_key: |der, alg| {
            (RUST_CRYPTO.key_utils.ec_pub_components_from_private_key)(der, alg)
        },
        ed_pub_components_from_private_key: |der, curve| {
            (RUST_CRYPTO.key_utils.ed_pub_components_from_private_key)(der, curve)
        },
        compute_digest: |data, hash| (RUST_CRYPTO.key_utils.compute_digest)(data, hash),
    },
};

/// Makes this the process's provider; false when another was installed (or used) first.
pub fn install() -> bool {
    PROVIDER.install_default().is_ok()
}

/// The ring parameters of an RSA `alg`.
fn rsa_parameters(alg: Algorithm) -> Option<&'static ring_sig::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &ring_sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &ring_sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &ring_sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// The ring algorithm that checks `alg` against a key's bytes, `None` for HMAC.
fn ring_algorithm(alg: Algorithm) -> Option<&'static dyn ring_sig::VerificationAlgorithm> {
    match alg {
        Algorithm::ES256 => Some(&ring_sig::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Some(&ring_sig::ECDSA_P384_SHA384_FIXED),
        Algorithm::EdDSA => Some(&ring_sig::ED25519),
        rsa => rsa_parameters(rsa).map(|p| p as &'static dyn ring_sig::VerificationAlgorithm),
    }
}

fn verifier_factory(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let check = match (key.kind(), ring_algorithm(*alg), rsa_parameters(*alg)) {
        (DecodingKeyKind::SecretOrDer(der), Some(algorithm), _) => {
            Check::Key(algorithm, der.clone())
        }
        (DecodingKeyKind::RsaModulusExponent { n, e }, _, Some(params)) => {
            Check::RsaParts(params, n.clone(), e.clone())
        }
        // HMAC: RustCrypto's.
        _ => return (RUST_CRYPTO.verifier_factory)(alg, key),
    };
    Ok(Box::new(RingVerifier { alg: *alg, check }))
}

/// One token's check: the algorithm and the public key's bytes.
struct RingVerifier {
    alg: Algorithm,
    check: Check,
}

enum Check {
    /// The key as jsonwebtoken keeps it: PKCS#1 `RSAPublicKey` DER, an EC point, an Ed25519 key.
    Key(&'static dyn ring_sig::VerificationAlgorithm, Vec<u8>),
    /// Modulus and exponent, big-endian (a JWK).
    RsaParts(&'static ring_sig::RsaParameters, Vec<u8>, Vec<u8>),
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let checked = match &self.check {
            Check::Key(algorithm, key) => {
                ring_sig::UnparsedPublicKey::new(*algorithm, key).verify(msg, sig)
            }
            Check::RsaParts(params, n, e) => {
                ring_sig::RsaPublicKeyComponents { n, e }.verify(params, msg, sig)
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::crypto::{sign, verify};
    use jsonwebtoken::EncodingKey;

    /// Keys made by openssl, as operators make them.
    fn openssl_pair(args: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let name: String = args
            .concat()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let dir = std::env::temp_dir().join(format!("im-ring-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (key, public) = (dir.join("k.pem"), dir.join("k.pub.pem"));
        let run = |a: &[&str]| {
            let ok = std::process::Command::new("openssl")
                .args(a)
                .status()
                .unwrap()
                .success();
            assert!(ok, "openssl {a:?}");
        };
        let mut genpkey = vec!["genpkey"];
        genpkey.extend_from_slice(args);
        genpkey.extend_from_slice(&["-out", key.to_str().unwrap()]);
        run(&genpkey);
        run(&[
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        let pair = (
            std::fs::read(&key).unwrap(),
            std::fs::read(&public).unwrap(),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        pair
    }

    /// Every asymmetric algorithm the gateway accepts: RustCrypto's signature passes ring's
    /// check, a changed message or signature fails it, as RustCrypto's own check says.
    #[test]
    fn ring_agrees_with_rust_crypto() {
        let rsa = openssl_pair(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
        let ec = openssl_pair(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
        let ed = openssl_pair(&["-algorithm", "ED25519"]);
        let cases = [
            (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&rsa.0),
                DecodingKey::from_rsa_pem(&rsa.1),
            ),
            (
                Algorithm::PS256,
                EncodingKey::from_rsa_pem(&rsa.0),
                DecodingKey::from_rsa_pem(&rsa.1),
            ),
            (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(&ec.0),
                DecodingKey::from_ec_pem(&ec.1),
            ),
            (
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(&ed.0),
                DecodingKey::from_ed_pem(&ed.1),
            ),
        ];
        for (alg, enc, dec) in cases {
            let (enc, dec) = (enc.unwrap(), dec.unwrap());
            let msg = b"eyJhbGciOi.eyJzdWIiOiJ1MSJ9";
            let good = (RUST_CRYPTO.signer_factory)(&alg, &enc)
                .unwrap()
                .try_sign(msg)
                .unwrap();
            let check = |m: &[u8], s: &Vec<u8>| {
                let ours = verifier_factory(&alg, &dec).unwrap().verify(m, s).is_ok();
                let theirs = (RUST_CRYPTO.verifier_factory)(&alg, &dec)
                    .unwrap()
                    .verify(m, s)
                    .is_ok();
                assert_eq!(ours, theirs, "{alg:?}");
                ours
            };
            assert!(check(msg, &good), "{alg:?}: a good signature");
            assert!(!check(b"eyJhbGciOi.eyJzdWIiOiJ1MiJ9", &good), "{alg:?}");
            let mut bad = good.clone();
            bad[7] ^= 1;
            assert!(!check(msg, &bad), "{alg:?}: a changed signature");
            assert!(!check(msg, &Vec::new()), "{alg:?}: an empty signature");
        }
        // A key of another family is refused, not tried.
        let rsa_key = DecodingKey::from_rsa_pem(&rsa.1).unwrap();
        assert!(verifier_factory(&Algorithm::ES256, &rsa_key).is_err());
        // HMAC goes to RustCrypto and still checks.
        let secret = DecodingKey::from_secret(b"s3cret");
        let tag = sign(b"m", &EncodingKey::from_secret(b"s3cret"), Algorithm::HS256).unwrap();
        assert!(verify(&tag, b"m", &secret, Algorithm::HS256).unwrap());
    }
}
