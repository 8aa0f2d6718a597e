//! Phone numbers in one form (E.164, `+<country code><number>`), so every limit and lookup sees
//! one phone however it was typed: `+86 138 0013 8000`, `8613800138000` and `138-0013-8000`
//! (with the default country code 86) are all `+8613800138000`.

use std::collections::HashMap;

use rusqlite::{params, Connection};

use crate::error::ApiError;

/// How numbers without a country code are read.
#[derive(Debug, Clone)]
pub struct PhoneRules {
    /// Digits of the country code assumed for national numbers (`--default-country-code`).
    country_code: String,
}

/// Shortest national significant number taken as already carrying the default country code:
/// `86` + 11 digits is international, an 11-digit `138…` is national.
const MIN_NATIONAL_DIGITS: usize = 10;

impl PhoneRules {
    /// `country_code`: 1 to 3 digits, not starting with 0 (an optional `+` is allowed).
    pub fn new(country_code: &str) -> Result<Self, String> {
        let cc = country_code.trim().trim_start_matches('+');
        let ok = (1..=3).contains(&cc.len())
            && cc.bytes().all(|b| b.is_ascii_digit())
            && !cc.starts_with('0');
        if !ok {
            return Err(format!(
                "--default-country-code `{country_code}`: use 1 to 3 digits such as 86 or 1"
            ));
        }
        Ok(Self {
            country_code: cc.to_owned(),
        })
    }

    /// `value` in E.164, or INVALID_ARGUMENT naming the field. Spaces, dashes, dots and
    /// parentheses are ignored; `+` or `00` starts an international number; a leading `0` is
    /// a national trunk prefix.
    pub fn normalize(&self, value: &str) -> Result<String, ApiError> {
        self.e164(value).ok_or_else(|| {
            ApiError::invalid(
                "phone must be a phone number: digits with an optional `+` and country code \
                 (spaces and dashes are fine), 7 to 15 digits in all",
            )
        })
    }

    fn e164(&self, value: &str) -> Option<String> {
        let v = value.trim();
        let (international, rest) = match v.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, v),
        };
        let mut digits = String::with_capacity(rest.len());
        for ch in rest.chars() {
            match ch {
                '0'..='9' => digits.push(ch),
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => return None,
            }
        }
        let full = if international {
            digits
        } else if let Some(intl) = digits.strip_prefix("00") {
            intl.to_owned()
        } else if let Some(national) = digits.strip_prefix('0') {
            format!("{}{national}", self.country_code)
        } else if digits.starts_with(&self.country_code)
            && digits.len() >= self.country_code.len() + MIN_NATIONAL_DIGITS
        {
            digits
        } else {
            format!("{}{digits}", self.country_code)
        };
        let ok = (7..=15).contains(&full.len()) && !full.starts_with('0');
        ok.then(|| format!("+{full}"))
    }

    /// Rewrites stored phones written before normalization, once per start (cheap when there
    /// is nothing to do). Two accounts whose phones turn out to be one: the older keeps it,
    /// the newer loses it (it can still log in by nickname or set a phone again); logged.
    pub fn normalize_stored(&self, conn: &mut Connection) -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        let rows: Vec<(String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT id, phone FROM users WHERE phone IS NOT NULL ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut owner: HashMap<String, String> = HashMap::new();
        let mut rewrites = Vec::new();
        let mut cleared = Vec::new();
        for (id, stored) in rows {
            let Some(normal) = self.e164(&stored) else {
                tracing::warn!(user_id = %id, "stored phone is not a phone number; left as is");
                continue;
            };
            if let Some(older) = owner.get(&normal) {
                tracing::warn!(kept = %older, cleared = %id, "two accounts had one phone: the older keeps it");
                cleared.push(id);
                continue;
            }
            owner.insert(normal.clone(), id.clone());
            if normal != stored {
                rewrites.push((id, normal));
            }
        }
        // Losers first, so no rewrite meets a UNIQUE conflict.
        for id in &cleared {
            tx.execute("UPDATE users SET phone = NULL WHERE id = ?1", [id])?;
        }
        for (id, normal) in &rewrites {
            tx.execute(
                "UPDATE users SET phone = ?2 WHERE id = ?1",
                params![id, normal],
            )?;
        }
        let codes: Vec<(String, String)> = {
            let mut stmt =
                tx.prepare("SELECT id, phone FROM verify_codes WHERE phone NOT LIKE '+%'")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, stored) in codes {
            if let Some(normal) = self.e164(&stored) {
                tx.execute(
                    "UPDATE verify_codes SET phone = ?2 WHERE id = ?1",
                    params![id, normal],
                )?;
            }
        }
        if !rewrites.is_empty() || !cleared.is_empty() {
            tracing::info!(
                rewritten = rewrites.len(),
                cleared = cleared.len(),
                "stored phones normalized to E.164"
            );
        }
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_number_is_one_phone() {
        let cn = PhoneRules::new("86").unwrap();
        for typed in [
            "+8613800138000",
            "+86 138 0013 8000",
            "8613800138000",
            "13800138000",
            "138-0013-8000",
            "(138) 0013.8000",
            "008613800138000",
        ] {
            assert_eq!(cn.normalize(typed).unwrap(), "+8613800138000", "{typed}");
        }
        assert_eq!(cn.normalize("010 1234 5678").unwrap(), "+861012345678");
        let us = PhoneRules::new("+1").unwrap();
        assert_eq!(us.normalize("(415) 555-0100").unwrap(), "+14155550100");
        assert_eq!(us.normalize("1 415 555 0100").unwrap(), "+14155550100");
        for bad in [
            "",
            "12ab",
            "+",
            "123",
            "+0123456789",
            "1234567890123456789",
            "+86 138 x",
        ] {
            assert!(cn.normalize(bad).is_err(), "{bad:?}");
        }
        assert!(PhoneRules::new("086").is_err());
        assert!(PhoneRules::new("8a").is_err());
    }
}
