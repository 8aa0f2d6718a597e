//! The admin listener (default 127.0.0.1:9901): `/healthz`, `/readyz`, `/metrics`,
//! `GET /admin/routes` (active version, loaded-at, last reload error, upstream health),
//! `POST /admin/reload` and `POST /admin/revoke` (`{"sid": "...", "exp": unix_seconds}`: denies
//! the session and closes its sockets with 4001, through the same path as PushService), each
//! request checked first by [`access`] (token, allowed hosts, JSON POSTs).

pub mod access;
pub mod scrape;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::clock::unix_now;
use crate::discovery::{DiscoveredSets, Source};
use crate::filters::revocation::MAX_SESSION_SECS;
use crate::filters::Guard;
use crate::metrics::Metrics;
use crate::push::{control, PushDeps};
use crate::routes::{Route, RouteStore, RouteTable};
use crate::upstream::health::Health;

pub struct AdminApp {
    pub routes: Arc<RouteStore>,
    pub metrics: Arc<Metrics>,
    pub push: Arc<PushDeps>,
    pub guard: Arc<Guard>,
    pub access: access::AdminAccess,
    pub scrape: scrape::Scrape,
    /// Background services that stopped: each one makes the gateway not ready.
    pub readiness: Arc<crate::readiness::Readiness>,
}

/// Largest admin request body read.
const MAX_ADMIN_BODY: usize = 16 * 1024;

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn respond(status: u16, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let len = resp.body().len();
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn json_response(status: u16, value: serde_json::Value) -> Response<Vec<u8>> {
    // A `Value` always renders; an empty body would be the only failure.
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body)
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Pending => "pending",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

/// Upstream health as reported by `/readyz` and `/admin/routes`, with each endpoint's origin
/// and each discovery source's state.
fn upstreams_json(table: &RouteTable, discovered: &DiscoveredSets) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (name, up) in &table.upstreams {
        let endpoints: Vec<_> = up
            .endpoints
            .iter()
            .map(|e| {
                json!({
                    "addr": e.addr.to_string(),
                    "weight": e.weight,
                    "health": health_name(e.state.health()),
                    "available": e.state.available(),
                    "inflight": e.state.inflight(),
                    "source": e.origin,
                })
            })
            .collect();
        let mut entry = json!({
            "lb": format!("{:?}", up.lb),
            "healthy": up.any_available(),
            "timeout_ms": up.timeout.as_millis() as u64,
            "retries": up.retries,
            "max_message": up.max_message,
            "endpoints": endpoints,
        });
        if let Some(source) = &up.discovery {
            entry["discovery"] = discovery_json(source, discovered);
        }
        out.insert(name.clone(), entry);
    }
    out.into()
}

fn discovery_json(source: &Source, discovered: &DiscoveredSets) -> serde_json::Value {
    let status = discovered.status(source).unwrap_or_default();
    json!({
        "source": source.describe(),
        "ok": status.ok,
        "error": status.error,
        "endpoints": status.endpoints.len(),
        "updated_at": status.updated_at.map(unix_secs),
    })
}

/// Upstreams whose discovery source is failing now (their last known set keeps serving).
fn failing_discovery(table: &RouteTable, discovered: &DiscoveredSets) -> Vec<String> {
    table
        .upstreams
        .values()
        .filter(|u| {
            u.discovery
                .as_ref()
                .is_some_and(|s| !discovered.status(s).is_some_and(|st| st.ok))
        })
        .map(|u| u.name.clone())
        .collect()
}

impl AdminApp {
    fn routes_json(&self) -> serde_json::Value {
        let table = self.routes.load();
        let status = self.routes.status();
        let routes: Vec<_> = table
            .routes
            .iter()
            .map(|r| {
                let (http, cmd, target) = match r {
                    Route::Unary(u) => (
                        u.http.as_ref().map(|h| format!("{} {}", h.method, h.path)),
                        u.cmd,
                        json!({
                            "grpc": u.path.as_str(),
                            "versions": u.versions.iter()
                                .map(|(v, b)| (v.to_string(), json!(b.path.as_str())))
                                .collect::<serde_json::Map<_, _>>(),
                        }),
                    ),
                    Route::PassThrough(p) => (
                        None,
                        None,
                        json!({ "grpc_service": p.service, "methods": p.methods }),
                    ),
                };
                json!({
                    "name": r.name(),
                    "http": http,
                    "cmd": cmd,
                    "upstream": r.upstream().name,
                    "target": target,
                    "max_body": r.max_body(),
                })
            })
            .collect();
        json!({
            "version": table.version,
            "loaded_at": unix_secs(table.loaded_at),
            "last_error": status.last_error,
            "last_error_at": status.last_error_at.map(unix_secs),
            "reloads_ok": status.reloads_ok,
            "reloads_failed": status.reloads_failed,
            "routes": routes,
            "upstreams": upstreams_json(&table, &self.routes.registries().discovered),
        })
    }

    async fn revoke(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            if body.len() + chunk.len() > MAX_ADMIN_BODY {
                return json_response(413, json!({ "error": "body too large" }));
            }
            body.extend_from_slice(&chunk);
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Revoke {
            sid: String,
            exp: Option<u64>,
        }
        match serde_json::from_slice::<Revoke>(&body) {
            Ok(r) if !r.sid.is_empty() && r.sid.len() <= 256 => {
                // `exp`: the session's end; absent, the longest a session lives.
                let until = r.exp.unwrap_or_else(|| unix_now() + MAX_SESSION_SECS);
                let (closed, persisted) =
                    control::end_session(&self.push, &r.sid, until, control::Ending::Revoked);
                // Answered once on disk (with `auth.revocation_file`).
                match persisted.wait(control::PERSIST_TIMEOUT).await {
                    Ok(()) => json_response(
                        200,
                        json!({ "revoked": r.sid, "until": until, "closed": closed }),
                    ),
                    Err(e) => json_response(
                        500,
                        json!({ "revoked": r.sid, "until": until, "closed": closed,
                                "error": format!("in effect, but not persisted (a restart would forget it): {e}") }),
                    ),
                }
            }
            Ok(_) => json_response(400, json!({ "error": "`sid` must be 1 to 256 characters" })),
            Err(e) => json_response(
                400,
                json!({ "error": format!("expected {{\"sid\": \"...\", \"exp\": unix_seconds}}: {e}") }),
            ),
        }
    }

    /// `/readyz`: 200 while the gateway can serve (with `degraded` and what is wrong when a
    /// dependency is), 503 naming the service the gateway cannot work without that stopped.
    fn readiness(&self) -> Response<Vec<u8>> {
        // The gateway's own readiness: routes loaded and listeners up (we are answering).
        // Upstream health is reported, never gating (DESIGN §11).
        // In cluster mode a node whose Redis or subscription is not working still
        // serves its own sessions: it says `degraded`, it does not refuse traffic.
        // A discovery source that fails (registry unreachable, empty DNS answer) leaves
        // its upstream on the last known endpoints: `degraded`, named in `discovery_failing`.
        let table = self.routes.load();
        let discovered = &self.routes.registries().discovered;
        let mut body = json!({
            "ready": true,
            "status": "ok",
            "routes_version": table.version,
            "upstreams": upstreams_json(&table, discovered),
        });
        let failing = failing_discovery(&table, discovered);
        if !failing.is_empty() {
            body["status"] = json!("degraded");
            body["discovery_failing"] = json!(failing);
        }
        if let Some(cluster) = &self.push.cluster {
            if !cluster.healthy() {
                body["status"] = json!("degraded");
            }
            body["cluster"] = cluster.status();
        }
        // A service the gateway cannot work without stopped (PushService's listener,
        // the reloader, maintenance, the cluster node task): not ready, naming it.
        let failed = self.readiness.failures();
        if failed.is_empty() {
            return json_response(200, body);
        }
        body["ready"] = json!(false);
        body["status"] = json!("failed");
        body["failed"] = failed
            .into_iter()
            .map(|(service, reason)| (service.to_owned(), json!(reason)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        json_response(503, body)
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_owned();
        if let Err(refused) = self.access.check(&method, &path, &req.headers) {
            let mut resp =
                json_response(refused.status.as_u16(), json!({ "error": refused.message }));
            if refused.status == http::StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
            }
            return resp;
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => respond(200, "text/plain", b"ok\n".to_vec()),
            ("GET", "/readyz") => self.readiness(),
            ("GET", "/metrics") => {
                let text = crate::metrics::render(&self.scrape.families());
                respond(200, "text/plain; version=0.0.4", text)
            }
            ("GET", "/admin/routes") => json_response(200, self.routes_json()),
            ("POST", "/admin/reload") => match self.routes.reload("admin") {
                Ok(table) => {
                    json_response(200, json!({ "reloaded": true, "version": table.version }))
                }
                Err(e) => json_response(
                    422,
                    json!({
                        "reloaded": false,
                        "version": self.routes.load().version,
                        "error": e.to_string(),
                    }),
                ),
            },
            ("POST", "/admin/revoke") => self.revoke(session).await,
            (
                _,
                "/healthz" | "/readyz" | "/metrics" | "/admin/routes" | "/admin/reload"
                | "/admin/revoke",
            ) => json_response(405, json!({ "error": "method not allowed" })),
            _ => json_response(404, json!({ "error": "not found" })),
        }
    }
}
