//! CORS: nothing is allowed by default; configured origins get their preflights answered by the
//! gateway and `Access-Control-Allow-Origin` on responses.

use std::time::Duration;

use serde::Deserialize;

use crate::units::HumanDuration;

/// `cors` in gateway.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins such as `https://app.example.com`, or `*`.
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub max_age: HumanDuration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: vec!["GET".into(), "POST".into(), "OPTIONS".into()],
            allowed_headers: vec![
                "authorization".into(),
                "content-type".into(),
                "accept".into(),
                "x-request-id".into(),
            ],
            max_age: HumanDuration(Duration::from_secs(600)),
        }
    }
}

/// Headers exposed to browser scripts on cross-origin responses.
const EXPOSE: &str =
    "x-request-id, retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset";

impl CorsConfig {
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|o| o == "*" || o == origin)
    }

    /// Headers for an actual (non-preflight) response to `origin`; empty when not allowed.
    pub fn response_headers(&self, origin: &str) -> Vec<(&'static str, String)> {
        if !self.allows(origin) {
            return Vec::new();
        }
        vec![
            ("access-control-allow-origin", origin.to_owned()),
            ("access-control-expose-headers", EXPOSE.to_owned()),
            ("vary", "Origin".to_owned()),
        ]
    }

    /// Answer to a preflight: the CORS headers when origin, method and headers are allowed,
    /// else none (the browser then blocks the request).
    pub fn preflight(
        &self,
        origin: &str,
        method: &str,
        request_headers: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let method_ok = self
            .allowed_methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method));
        let headers_ok = request_headers.is_none_or(|hs| {
            hs.split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .all(|h| {
                    self.allowed_headers
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(h))
                })
        });
        if !(self.allows(origin) && method_ok && headers_ok) {
            return vec![("vary", "Origin".to_owned())];
        }
        vec![
            ("access-control-allow-origin", origin.to_owned()),
            (
                "access-control-allow-methods",
                self.allowed_methods.join(", "),
            ),
            (
                "access-control-allow-headers",
                self.allowed_headers.join(", "),
            ),
            (
                "access-control-max-age",
                self.max_age.0.as_secs().to_string(),
            ),
            ("vary", "Origin".to_owned()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_allowed_by_default() {
        let c = CorsConfig::default();
        assert!(c.response_headers("https://a.example").is_empty());
        assert_eq!(c.preflight("https://a.example", "POST", None).len(), 1);
    }

    #[test]
    fn allowed_origin_preflight() {
        let c = CorsConfig {
            allowed_origins: vec!["https://a.example".into()],
            ..CorsConfig::default()
        };
        let h = c.preflight(
            "https://a.example",
            "POST",
            Some("content-type, authorization"),
        );
        assert!(h
            .iter()
            .any(|(k, v)| *k == "access-control-allow-origin" && v == "https://a.example"));
        assert_eq!(c.preflight("https://a.example", "DELETE", None).len(), 1);
        assert_eq!(
            c.preflight("https://a.example", "POST", Some("x-evil"))
                .len(),
            1
        );
        assert_eq!(c.preflight("https://b.example", "POST", None).len(), 1);
    }
}
