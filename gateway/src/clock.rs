//! The gateway's one wall clock (token expiry, revocation ends, push timestamps). Deadlines inside
//! a session use tokio's clock instead, so tests can pause it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in seconds (0 if the system clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix time in milliseconds, for push frames' `ts`.
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix time in milliseconds, unsigned: cluster liveness and message lag.
pub fn unix_ms() -> u64 {
    unix_now_ms().max(0) as u64
}
