//! `x-request-id`: kept when the client sent a sane one (at most 64 chars of `[A-Za-z0-9._-]`),
//! generated otherwise. Every response carries it; backends receive it as metadata.

use rand::Rng;

pub const HEADER: &str = "x-request-id";

/// The client's id when sane, else a fresh random one.
pub fn accept_or_generate(client: Option<&[u8]>) -> String {
    match client {
        Some(v) if is_sane(v) => String::from_utf8_lossy(v).into_owned(),
        _ => generate(),
    }
}

pub fn is_sane(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// 128 random bits as 32 lowercase hex digits.
pub fn generate() -> String {
    format!("{:032x}", rand::thread_rng().gen::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_only() {
        assert_eq!(accept_or_generate(Some(b"abc-1.2_3")), "abc-1.2_3");
        for bad in [
            &b""[..],
            b"has space",
            b"semi;colon",
            &[b'a'; 65][..],
            b"\xff",
        ] {
            let id = accept_or_generate(Some(bad));
            assert_eq!(id.len(), 32, "{bad:?}");
            assert!(is_sane(id.as_bytes()));
        }
        assert_ne!(generate(), generate());
    }
}
