//! End-to-end tests of the gateway core: real Pingora listeners, real tonic backends over h2c.

// A test harness: a failed unwrap is a failed test, not a crashed service.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]

mod admin;
mod auth;
mod backend_memory;
mod bridge;
mod browser;
mod check;
mod client_ip;
mod cluster;
mod dashboard;
mod diagnostics;
mod discovery;
mod failover;
mod grpc_clients;
mod health;
mod im_bad_input;
mod im_flow;
mod im_privacy;
mod one_pipeline;
mod otlp_export;
mod passthrough;
mod push;
mod push_budget;
mod push_limits;
mod push_tls;
mod ratelimit;
mod reliability;
mod reload;
mod revocation;
mod rolling;
mod slowloris;
mod speech;
mod telemetry;
mod tls;
mod untrusted_bodies;
mod versions;
