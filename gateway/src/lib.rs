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
//! - [`filters`]: small per-request filters (request id; auth and limits come next).
//! - [`proxy`]: the edge `ProxyHttp`, which only dispatches to the above; gRPC pass-through routes.
//! - [`push`]: the WebSocket push plugin's socket-free parts so far: frames in both encodings and
//!   the user -> device -> connection registry with the multi-device policies.
//! - [`admin`]: health, readiness, metrics, route inspection and reload.
//! - [`metrics`]: the Prometheus registry of one gateway.
//! - [`server`]: assembles the Pingora services; runs and stops a gateway in-process.

pub mod admin;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod filters;
pub mod metrics;
pub mod proxy;
pub mod push;
pub mod routes;
pub mod server;
pub mod upstream;

pub use server::{Gateway, RunningGateway};
