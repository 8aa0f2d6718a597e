//! Backends behind the gateway.
//!
//! # Layout
//! - [`echo`]: the diagnostic echo service (delays, failures, health flips) that the gateway's
//!   tests and benchmarks use as a trivial, controllable backend.
//! - [`cli`]: the `im-backends` binary: run any subset of services on one address.

pub mod cli;
pub mod echo;
