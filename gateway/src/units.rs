//! Human units in config files: durations (`500ms`, `2s`, `1m`) and sizes (`64KiB`, `4MiB`, `1024`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as `<number><unit>` with unit `ms`, `s`, `m` or `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HumanDuration(pub Duration);

/// A byte size written as a plain number or `<number><unit>` with unit `B`, `KiB`, `MiB`, `GiB`
/// (also `KB`/`MB`/`GB`, read as powers of 1024 too, since that is what operators mean here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteSize(pub u64);

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. `500ms`, `2s` or `1m`"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" => {
            return Err(format!(
                "`{text}` has no unit; write e.g. `{text}s` or `{text}ms`"
            ))
        }
        other => {
            return Err(format!(
                "`{text}` has unknown unit `{other}`; use ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. `64KiB`, `4MiB` or `1024`"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "`{text}` has unknown unit `{other}`; use B, KiB, MiB or GiB"
            ))
        }
    };
    value
        .checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}

struct StrOrNumber<F>(F, &'static str);

impl<'de, T, F: Fn(&str) -> Result<T, String>> Visitor<'de> for StrOrNumber<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.0)(&v.to_string()).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.0)(&v.to_string()).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrOrNumber(
            |s: &str| parse_duration(s).map(HumanDuration),
            "a duration such as `500ms` or `2s`",
        ))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrOrNumber(
            |s: &str| parse_size(s).map(ByteSize),
            "a size such as `64KiB` or `4MiB`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("2").unwrap_err().contains("no unit"));
        assert!(parse_duration("2 fortnights")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("64KiB").unwrap(), 64 * 1024);
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("99999999999GiB")
            .unwrap_err()
            .contains("too large"));
    }
}
