//! im-gateway: the Pingora-based edge of the IM system.
//!
//! # From socket to backend
//! A request arrives on the edge listener ([`http_guard`] bounds slow clients, then [`proxy`]) or
//! as a frame on a WebSocket session ([`push::listener`] checks the handshake, [`push::session`]
//! reads frames). Either way it is matched in the current [`routes::RouteTable`] to a
//! [`routes::UnaryRoute`] (by path or `cmd`) and goes through the one [`pipeline`]: admit
//! ([`filters::Guard`]: token or session identity, roles, rate limit), build the one call context,
//! decode against the route's input type, call the backend through [`dispatch::Dispatcher`]
//! (pool selection, failover, status mapping), encode the reply. HTTP renders the result with
//! [`bridge`], a socket with [`push::frames`]. Native gRPC clients match a
//! [`routes::PassThroughRoute`] instead: the same admission and call context, then Pingora
//! proxies the stream to the chosen endpoint. Backends push back through PushService
//! ([`push::service`]) into sessions' bounded outboxes.
//!
//! # Layout
//! - [`policy`], [`units`], [`clock`], [`backoff`], [`sharded`]: leaves: the route policy
//!   vocabulary (auth modes, rate limits, balancing), human units, the one wall clock, jittered
//!   reconnect delays, the one sharded map (and capped LRU) that caches, limiters and the
//!   registry use. `scripts/module-cycles.py` keeps the module graph free of cycles,
//!   `scripts/code-shape.py` files within 500 lines and functions within 80.
//! - [`config`]: the gateway's own `gateway.yaml` (listeners, threads, reload, shutdown).
//! - [`routes`]: `routes.yaml` parsed ([`routes::file`]), checked route by route
//!   ([`routes::build`], [`routes::upstreams`]) into an immutable [`routes::RouteTable`], swapped
//!   atomically by [`routes::RouteStore`], reloaded by [`routes::reloader`] on file change,
//!   SIGHUP or `POST /admin/reload`.
//! - [`upstream`]: pools with pingora-load-balancing selection, health keyed by address with
//!   active `grpc.health.v1` checks, and the tonic channels calls go through.
//! - [`discovery`]: endpoints found in DNS (A/AAAA, SRV) or etcd, kept outside the tables; a
//!   change rebuilds the current table from the same file. [`keyed_tasks`] runs the watchers and
//!   health checkers, one task per key.
//! - [`pipeline`]: admit -> call -> decode -> dispatch -> encode, shared by HTTP and WebSocket,
//!   with JSON transcoding and the protobuf validator; [`call_error`]: the one error every step
//!   answers with (status, gRPC code, message, rate-limit state).
//! - [`dispatch`]: the dispatcher (route -> pool -> endpoint -> tonic pass-through codec ->
//!   status); retries only unprocessed attempts.
//! - [`bridge`]: the HTTP side of the pipeline: encodings from headers, replies, error bodies.
//! - [`filters`]: admission ([`filters::Guard`]): JWT / API keys, revocation, GCRA rate limits
//!   with a key cap, client IP behind a CDN, CORS, request ids.
//! - [`proxy`]: the edge `ProxyHttp`, which only dispatches to the above; gRPC pass-through routes.
//! - [`http_guard`]: below the proxy, slow HTTP/1 clients bounded (head deadline, keep-alive
//!   timeout, per-IP cap on unfinished connections); [`ip_counts`] is the per-IP counter it and
//!   the push listener share.
//! - [`push`]: the WebSocket push plugin: listener and handshake checks, one task per session,
//!   frames in both encodings, the registry with the multi-device policies, bounded outboxes,
//!   session control (revoke, kick) and PushService for backends.
//! - [`web`]: the demo web client (embedded from `gateway/web/`) and `/config.json` with the
//!   push URL, served by the edge for `GET` on paths no route claims.
//! - [`cluster`]: cluster mode through Redis: the registry of every node's connections (the
//!   multi-device rule as a Lua script), node liveness (live, draining, dead runs), the
//!   cluster-wide denylist, node-to-node messages on per-node channels with a probe that proves
//!   the subscription, and the Redis link with its timeouts; `push::remote` is where the push
//!   plugin uses it, `filters::cluster_limit` where `scope: cluster` limits do.
//! - [`admin`]: health, readiness, metrics, route inspection and reload; `admin::scrape` is the
//!   one reading of the metrics that `/metrics` renders and the OTLP export sends.
//! - [`maintenance`]: after each table swap, health checks and state of removed endpoints;
//!   periodic sweeps of rate-limit keys and revocations (the reloader only reloads).
//! - [`metrics`]: the Prometheus registries of one gateway.
//! - [`telemetry`]: `telemetry:` in gateway.yaml, the call spans (sampled where they open) and the
//!   access log; the export itself is `im_telemetry`'s.
//! - [`server`]: assembles the Pingora services (edge, push + PushService on one runtime, admin,
//!   reloader, maintenance); runs and stops a gateway in-process. [`listeners`]: every listen
//!   address bound once, before anything serves, and handed to Pingora; [`readiness`]: the
//!   services the gateway cannot run without, and `/readyz`'s view of them.
//! - [`cli`]: the `im-gateway` command (`run`, `check`), and the telemetry set-up the launcher
//!   shares.

// No panic reachable from input or reload: the workspace denies unwrap, expect, panic and
// unreachable outside tests (Cargo.toml, clippy.toml); the one allowed `expect` (static metric
// definitions) says why where it is.

pub mod admin;
pub mod backoff;
pub mod bridge;
pub mod call_error;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod dispatch;
pub mod filters;
pub mod http_guard;
pub mod ip_counts;
pub mod keyed_tasks;
pub mod listeners;
pub mod maintenance;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod push;
pub mod readiness;
pub mod routes;
pub mod server;
pub mod sharded;
pub mod telemetry;
pub mod units;
pub mod upstream;
pub mod web;

pub use server::{Gateway, RunningGateway};
