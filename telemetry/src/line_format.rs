//! Log lines written by hand, in the same shape as `tracing-subscriber`'s text and flattened JSON
//! formats, when lines show no spans (`RUST_LOG` without `debug`, [`crate::log_layer`]).
//!
//! The access log writes one line per request, and `tracing-subscriber`'s formatter spends about
//! 17,600 instructions on it (`bench/telemetry_instructions.py`): every field goes through
//! `core::fmt` with `Debug` quoting, numbers and the timestamp through `pad_integral`, the
//! latency through float `Debug`. Here strings are copied when they need no escaping, integers
//! are written digit by digit, the latency with three decimals, and the timestamp's date and
//! time to the second are formatted once per second per thread.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The line formatter: text (`timestamp  LEVEL target: message key=value…`) or one JSON object.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LineFormat {
    pub json: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        format_line(self.json, SystemTime::now(), event, &mut writer)
    }
}

/// One line for `event` at `now`, newline included.
pub(crate) fn format_line(
    json: bool,
    now: SystemTime,
    event: &Event<'_>,
    out: &mut impl Write,
) -> fmt::Result {
    // Events of the `log` crate (Pingora's) carry their real target in `log.*` fields.
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
    let mut fields = Fields {
        out,
        json,
        first: true,
        result: Ok(()),
    };
    if json {
        fields.out.write_str("{\"timestamp\":\"")?;
        timestamp(now, fields.out)?;
        fields.out.write_str("\",\"level\":\"")?;
        fields.out.write_str(meta.level().as_str())?;
        fields.out.write_char('"')?;
        fields.first = false;
        event.record(&mut fields);
        fields.result?;
        out.write_str(",\"target\":")?;
        json_string(meta.target(), out)?;
        out.write_str("}\n")
    } else {
        timestamp(now, fields.out)?;
        fields.out.write_str(level_text(meta.level()))?;
        fields.out.write_str(meta.target())?;
        fields.out.write_str(": ")?;
        event.record(&mut fields);
        fields.result?;
        out.write_char('\n')
    }
}

/// The level padded as `tracing-subscriber` pads it, between the spaces around it.
fn level_text(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => " ERROR ",
        Level::WARN => "  WARN ",
        Level::INFO => "  INFO ",
        Level::DEBUG => " DEBUG ",
        Level::TRACE => " TRACE ",
    }
}

/// Writes an event's fields, remembering the first error (a visitor cannot return one).
struct Fields<'a, W: Write> {
    out: &'a mut W,
    json: bool,
    first: bool,
    result: fmt::Result,
}

impl<W: Write> Fields<'_, W> {
    /// Writes `name` and the separators before the value; false for fields not written.
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return false;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        let first = std::mem::replace(&mut self.first, false);
        self.result = if self.json {
            self.out
                .write_char(',')
                .and_then(|()| json_string(name, self.out))
                .and_then(|()| self.out.write_char(':'))
        } else if name == "message" {
            // The message stands alone, like tracing-subscriber's.
            if first {
                Ok(())
            } else {
                self.out.write_char(' ')
            }
        } else {
            let sep = if first { "" } else { " " };
            self.out
                .write_str(sep)
                .and_then(|()| self.out.write_str(name))
                .and_then(|()| self.out.write_char('='))
        };
        self.result.is_ok()
    }

    fn raw(&mut self, value: &str) {
        self.result = self.out.write_str(value);
    }
}

impl<W: Write> Visit for Fields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.key(field) {
            return;
        }
        self.result = if self.json {
            json_string(value, self.out)
        } else if field.name() == "message" {
            self.out.write_str(value)
        } else {
            text_string(value, self.out)
        };
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            self.result = write_u64(value, self.out);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            if value < 0 {
                self.result = self.out.write_char('-');
            }
            if self.result.is_ok() {
                self.result = write_u64(value.unsigned_abs(), self.out);
            }
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            self.result = write_f64(value, self.json, self.out);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.raw(if value { "true" } else { "false" });
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.key(field) {
            return;
        }
        if field.name() == "message" && !self.json {
            self.result = write!(self.out, "{value:?}");
            return;
        }
        // `%display` fields (addresses) arrive here: format them once, then quote or escape.
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            self.result = write!(s, "{value:?}").and_then(|()| {
                if self.json {
                    json_string(&s, self.out)
                } else {
                    self.out.write_str(&s)
                }
            });
        });
    }
}

thread_local! {
    /// A `Debug` value formatted before it is escaped.
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
    /// The timestamp to the second (`2026-12-08T00:43:26.`) and the second it is for.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// RFC 3339 in UTC with microseconds, as `tracing-subscriber`'s `SystemTime` writes it.
fn timestamp(now: SystemTime, out: &mut impl Write) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            date_time(secs, &mut cached.1)?;
            cached.0 = secs;
        }
        out.write_str(&cached.1)
    })?;
    let micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)?;
    out.write_char('Z')
}

/// `YYYY-MM-DDTHH:MM:SS.` of unix second `secs` (the civil-from-days algorithm).
fn date_time(secs: u64, out: &mut String) -> fmt::Result {
    let days = (secs / 86_400) as i64;
    let of_day = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// `value` in decimal, without the formatting machinery.
pub fn write_u64(mut value: u64, out: &mut impl Write) -> fmt::Result {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.write_str(std::str::from_utf8(&buf[at..]).map_err(|_| fmt::Error)?)
}

/// With three decimals (latencies in milliseconds: microsecond resolution); values too large
/// or not finite as `Debug` writes them (JSON: `null` for the non-finite, as serde_json does).
fn write_f64(value: f64, json: bool, out: &mut impl Write) -> fmt::Result {
    if !value.is_finite() {
        return if json {
            out.write_str("null")
        } else {
            write!(out, "{value:?}")
        };
    }
    if value.abs() >= 1e15 {
        return write!(out, "{value:?}");
    }
    let thousandths = (value.abs() * 1000.0).round() as u64;
    if value.is_sign_negative() && thousandths != 0 {
        out.write_char('-')?;
    }
    write_u64(thousandths / 1000, out)?;
    let frac = thousandths % 1000;
    let digits = [
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    out.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
}

/// A string field of a text line: quoted, escaped as `Debug` escapes it.
fn text_string(value: &str, out: &mut impl Write) -> fmt::Result {
    let plain = value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        out.write_char('"')?;
        out.write_str(value)?;
        out.write_char('"')
    } else {
        write!(out, "{value:?}")
    }
}

/// A JSON string, escaped as serde_json escapes it.
fn json_string(value: &str, out: &mut impl Write) -> fmt::Result {
    out.write_char('"')?;
    let mut start = 0;
    for (i, b) in value.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.write_str(&value[start..i])?;
        if escape.is_empty() {
            write!(out, "\\u{b:04x}")?;
        } else {
            out.write_str(escape)?;
        }
        start = i + 1;
    }
    out.write_str(&value[start..])?;
    out.write_char('"')
}

#[cfg(test)]
#[path = "line_format_tests.rs"]
mod tests;
