//! End-to-end tests of the gateway core: real Pingora listeners, real tonic backends over h2c.

mod admin;
mod auth;
mod backend_memory;
mod bridge;
mod browser;
mod check;
mod client_ip;
mod cluster;
mod diagnostics;
mod failover;
mod grpc_clients;
mod health;
mod im_bad_input;
mod im_flow;
mod im_privacy;
mod one_pipeline;
mod passthrough;
mod push;
mod push_budget;
mod push_limits;
mod ratelimit;
mod reload;
mod revocation;
mod slowloris;
mod tls;
mod untrusted_bodies;
