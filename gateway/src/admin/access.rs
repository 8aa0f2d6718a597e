//! Who may call the admin listener (security issue, item 12). Socket-free: [`AdminAccess::check`]
//! decides from the request head alone.
//!
//! - With `admin.token_file`, every call but `/healthz` and `/readyz` needs
//!   `authorization: Bearer <token>` (compared in constant time). Browsers never send it on
//!   their own, so no web page can ride on it.
//! - Without a token the listener must be on loopback, and every request but `/healthz` must name
//!   an allowed `Host` (loopback names, the listen address, `admin.allowed_hosts`): a page on an
//!   attacker's domain rebound to 127.0.0.1 sends its own host name and is refused.
//! - Every POST needs `content-type: application/json`, which a cross-site form cannot send
//!   without a CORS preflight the admin listener never answers.

use std::net::SocketAddr;

use http::{HeaderMap, Method, StatusCode};

use crate::config::AdminConfig;
use crate::filters::auth::bearer;
use crate::filters::secret;

#[derive(Debug, Clone)]
pub struct AdminAccess {
    token: Option<[u8; 32]>,
    /// Lowercase host names (and `host:port` forms) a tokenless request may name.
    hosts: Vec<String>,
}

/// Why a request was refused: its status and a message for the caller.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub message: &'static str,
}

fn refused(status: StatusCode, message: &'static str) -> Result<(), Refused> {
    Err(Refused { status, message })
}

/// `host` without its port (`[::1]:9901` -> `::1`, `example.com:80` -> `example.com`).
fn host_name(host: &str) -> &str {
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

impl AdminAccess {
    /// The policy for `cfg` on `listen`. A non-loopback address without `admin.token_file` is an
    /// error: anyone who reaches it could reload routes and revoke sessions.
    pub fn new(cfg: &AdminConfig, listen: SocketAddr) -> Result<Self, String> {
        let token = cfg
            .token_file
            .as_deref()
            .map(secret::read_token_file)
            .transpose()
            .map_err(|e| format!("admin.token_file: {e}"))?;
        if token.is_none() && !listen.ip().is_loopback() {
            return Err(format!(
                "listen.admin {listen} is not a loopback address: set admin.token_file (a bearer \
                 token for every admin call) or bind the admin listener to 127.0.0.1"
            ));
        }
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        hosts.push(listen.ip().to_string());
        hosts.push(listen.to_string());
        hosts.extend(
            cfg.allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase()),
        );
        Ok(Self { token, hosts })
    }

    /// Whether a request with this head may be served.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Refused> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let probe = method == Method::GET && matches!(path, "/healthz" | "/readyz");
        match &self.token {
            Some(expected) => {
                let presented = header("authorization").and_then(bearer);
                if !probe && !presented.is_some_and(|t| secret::matches(expected, t)) {
                    return refused(
                        StatusCode::UNAUTHORIZED,
                        "this admin call needs `authorization: Bearer <admin.token_file token>`",
                    );
                }
            }
            None => {
                let host = header("host")
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase();
                let allowed = self
                    .hosts
                    .iter()
                    .any(|h| *h == host || h == host_name(&host));
                if path != "/healthz" && !allowed {
                    return refused(
                        StatusCode::FORBIDDEN,
                        "this Host is not an admin host: use a loopback name or the listen \
                         address, or add it to admin.allowed_hosts",
                    );
                }
            }
        }
        let json = header("content-type").is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
        if method == Method::POST && !json {
            return refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "admin POSTs need content-type: application/json",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn hosts_tokens_and_content_types() {
        let listen: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        let open = AdminAccess::new(&AdminConfig::default(), listen).unwrap();
        let get =
            |a: &AdminAccess, path, h| a.check(&Method::GET, path, &head(h)).map_err(|r| r.status);
        assert!(get(&open, "/metrics", &[("host", "127.0.0.1:9901")]).is_ok());
        assert!(get(&open, "/metrics", &[("host", "[::1]:9901")]).is_ok());
        assert!(get(&open, "/metrics", &[("host", "LOCALHOST")]).is_ok());
        assert_eq!(
            get(&open, "/metrics", &[("host", "evil.example")]),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(get(&open, "/metrics", &[]), Err(StatusCode::FORBIDDEN));
        assert!(get(&open, "/healthz", &[("host", "evil.example")]).is_ok());
        let post = open.check(
            &Method::POST,
            "/admin/reload",
            &head(&[("host", "localhost")]),
        );
        assert_eq!(
            post.map_err(|r| r.status),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        let post = open.check(
            &Method::POST,
            "/admin/reload",
            &head(&[
                ("host", "localhost"),
                ("content-type", "application/json; charset=utf-8"),
            ]),
        );
        assert!(post.is_ok());

        let public: SocketAddr = "0.0.0.0:9901".parse().unwrap();
        let err = AdminAccess::new(&AdminConfig::default(), public).unwrap_err();
        assert!(err.contains("admin.token_file"), "{err}");
    }
}
