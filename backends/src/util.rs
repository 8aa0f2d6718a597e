//! Small helpers shared by the services: clocks, ids, and the input checks every service makes.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::ApiError;

pub fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn unix_secs() -> i64 {
    unix_millis() / 1000
}

/// A random id: 16 hex digits (64 bits), unguessable enough for event and session ids.
pub fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// `value` must be non-empty after trimming and at most `max` characters.
pub fn required<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::invalid(format!("{field} is required")));
    }
    if v.chars().count() > max {
        return Err(ApiError::invalid(format!(
            "{field} is longer than {max} characters"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(v)
}

/// An id-like token: 1..=64 of `[A-Za-z0-9._-]` (device ids, platforms, client message ids).
pub fn token_like(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{field} must be 1 to 64 characters of letters, digits, `.`, `_` or `-`"
        )))
    }
}

/// A file id: the 64 lowercase hex digits of a SHA-256.
pub fn file_id(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{field} must be a file id (64 lowercase hex digits) from the file service"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_field() {
        assert!(required("nickname", "  ", 32)
            .unwrap_err()
            .message()
            .contains("nickname is required"));
        assert!(required("nickname", "a\u{7}b", 32).is_err());
        assert_eq!(required("nickname", " 小明 ", 2).unwrap(), "小明");
        assert!(token_like("device_id", "web-1.a_b").is_ok());
        assert!(token_like("device_id", "../x/y").is_err());
        assert!(file_id("file_id", &"a".repeat(64)).is_ok());
        assert!(file_id("file_id", "../../etc/passwd").is_err());
    }
}
