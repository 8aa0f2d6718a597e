//! im-gateway: the Pingora-based edge of the IM system.
//!
//! # Layout
//! - [`config`]: the gateway's own `gateway.yaml` (listeners, threads, reload, shutdown) and units.
//! - [`routes`]: `routes.yaml` parsed ([`routes::file`]), validated into an immutable
//!   [`routes::RouteTable`], swapped atomically by [`routes::RouteStore`], reloaded by
//!   [`routes::reloader`] on file change, SIGHUP or `POST /admin/reload`.
//! - [`upstream`]: pools with pingora-load-balancing selection, health keyed by address with
//!   active `grpc.health.v1` checks, and the tonic channels calls go through.
//! - [`dispatch`]: the one dispatcher (route -> pool -> endpoint -> tonic pass-through codec ->
//!   status), shared by the HTTP bridge and WebSocket cmd frames; retries only unprocessed attempts.
//! - [`bridge`]: HTTP <-> gRPC unary, JSON transcoding with the descriptor set, socket-free.
//! - [`filters`]: admission shared by every entry point ([`filters::Guard`]): JWT / API keys,
//!   revocation, GCRA rate limits with a key cap, client IP behind a CDN, CORS, request ids.
//! - [`proxy`]: the edge `ProxyHttp`, which only dispatches to the above; gRPC pass-through routes.
//! - [`http_guard`]: below the proxy, slow HTTP/1 clients bounded (head deadline, keep-alive
//!   timeout, per-IP cap on unfinished connections).
//! - [`push`]: the WebSocket push plugin: listener and handshake checks, one task per session,
//!   frames in both encodings, the registry with the multi-device policies, bounded outboxes,
//!   and PushService for backends.
//! - [`web`]: the demo web client (embedded from `gateway/web/`) and `/config.json` with the
//!   push URL, served by the edge for `GET` on paths no route claims.
//! - [`admin`]: health, readiness, metrics, route inspection and reload.
//! - [`maintenance`]: after each table swap, health checks and state of removed endpoints;
//!   periodic sweeps of rate-limit keys and revocations (the reloader only reloads).
//! - [`metrics`]: the Prometheus registry of one gateway.
//! - [`server`]: assembles the Pingora services (edge, push + PushService on one runtime, admin,
//!   reloader); runs and stops a gateway in-process.

// No panic reachable from input or reload: a request, frame or route file gets an error instead.
// Tests may unwrap; the one allowed `expect` (static metric definitions) says why where it is.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable
    )
)]

pub mod admin;
pub mod bridge;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod filters;
pub mod http_guard;
pub mod maintenance;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod push;
pub mod routes;
pub mod server;
pub mod units;
pub mod upstream;
pub mod web;

pub use server::{Gateway, RunningGateway};
