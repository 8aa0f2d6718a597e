//! Shared secrets (API keys, the internal PushService token, the admin token) kept as SHA-256
//! digests and compared in constant time, so neither the stored secret nor the time a comparison
//! takes tells anything about how much of a guess was right.

use std::path::Path;

use sha2::{Digest, Sha256};

/// Shortest token accepted from a token file.
const MIN_TOKEN_LEN: usize = 16;

/// The digest of the token in `path` (trimmed), or why it cannot be used.
pub fn read_token_file(path: &Path) -> Result<[u8; 32], String> {
    let raw = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = raw.trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "{} holds fewer than {MIN_TOKEN_LEN} characters; use a long random token",
            path.display()
        ));
    }
    Ok(digest(token))
}

/// The SHA-256 digest a secret is kept as.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `presented` hashes to `expected`; the time taken does not depend on where they differ.
pub fn matches(expected: &[u8; 32], presented: &str) -> bool {
    let got = digest(presented);
    expected
        .iter()
        .zip(got.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_matches() {
        let d = digest("s3cret-token");
        assert!(matches(&d, "s3cret-token"));
        assert!(!matches(&d, "s3cret-tokeN"));
        assert!(!matches(&d, ""));
    }
}
