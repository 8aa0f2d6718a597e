//! The demo web chat client (DESIGN §2): its static files are embedded in the binary and served
//! for `GET` on paths no route claims, and `/config.json` tells the page where the push listener
//! is, so it also works behind a CDN (`web.push_url: wss://push.example.com/ws`).

use bytes::Bytes;
use serde::Deserialize;

use crate::bridge::Reply;

/// `web` in gateway.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the demo client and `/config.json` on the edge listener.
    pub enabled: bool,
    /// The WebSocket URL clients should use (`ws://` or `wss://`, ending in `/ws`). When unset,
    /// the page is told `ws://<the host it was loaded from>:<listen.push port>/ws`.
    pub push_url: Option<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            push_url: None,
        }
    }
}

impl WebConfig {
    pub fn validate(&self) -> Result<(), String> {
        match &self.push_url {
            Some(u) if !(u.starts_with("ws://") || u.starts_with("wss://")) => Err(format!(
                "`{u}` is not a WebSocket URL; write ws://host:port/ws or wss://host/ws"
            )),
            _ => Ok(()),
        }
    }
}

const ASSETS: [(&str, &str, &str); 3] = [
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../web/style.css"),
    ),
];

pub struct WebApp {
    enabled: bool,
    push_url: Option<String>,
    push_port: u16,
    push_tls: bool,
}

impl WebApp {
    pub fn new(cfg: &WebConfig, push_port: u16, push_tls: bool) -> Self {
        Self {
            enabled: cfg.enabled,
            push_url: cfg.push_url.clone(),
            push_port,
            push_tls,
        }
    }

    /// The page or file for `GET path`, if there is one. `host` is the request's `Host`.
    pub fn get(&self, path: &str, host: Option<&str>) -> Option<Reply> {
        if !self.enabled {
            return None;
        }
        if path == "/config.json" {
            let body = serde_json::json!({ "push_url": self.push_url_for(host) });
            return Some(Reply {
                status: 200,
                content_type: "application/json",
                body: serde_json::to_vec(&body).unwrap_or_default().into(),
            });
        }
        let path = if path == "/" { "/index.html" } else { path };
        ASSETS
            .iter()
            .find(|(p, _, _)| *p == path)
            .map(|(_, content_type, body)| Reply {
                status: 200,
                content_type,
                body: Bytes::from_static(body.as_bytes()),
            })
    }

    fn push_url_for(&self, host: Option<&str>) -> String {
        if let Some(u) = &self.push_url {
            return u.clone();
        }
        let host = host.unwrap_or("127.0.0.1");
        // Strip the edge port; keep IPv6 brackets.
        let name = match host.rfind(':') {
            Some(i) if !host[i..].contains(']') => &host[..i],
            _ => host,
        };
        let scheme = if self.push_tls { "wss" } else { "ws" };
        format!("{scheme}://{name}:{}/ws", self.push_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(push_url: Option<&str>) -> WebApp {
        let cfg = WebConfig {
            enabled: true,
            push_url: push_url.map(str::to_owned),
        };
        WebApp::new(&cfg, 8081, false)
    }

    #[test]
    fn push_url_follows_the_host_unless_configured() {
        assert_eq!(
            app(None).push_url_for(Some("chat.local:8080")),
            "ws://chat.local:8081/ws"
        );
        assert_eq!(
            app(None).push_url_for(Some("[::1]:8080")),
            "ws://[::1]:8081/ws"
        );
        assert_eq!(app(None).push_url_for(Some("[::1]")), "ws://[::1]:8081/ws");
        assert_eq!(
            app(Some("wss://push.example.com/ws")).push_url_for(Some("x")),
            "wss://push.example.com/ws"
        );
    }

    #[test]
    fn serves_the_page_and_nothing_else() {
        let a = app(None);
        assert!(a
            .get("/", None)
            .unwrap()
            .content_type
            .starts_with("text/html"));
        assert!(a.get("/app.js", None).is_some());
        assert!(a.get("/../Cargo.toml", None).is_none());
        assert!(a.get("/service/x", None).is_none());
        let bad = WebConfig {
            enabled: true,
            push_url: Some("http://x/ws".into()),
        };
        assert!(bad.validate().unwrap_err().contains("not a WebSocket URL"));
    }
}
