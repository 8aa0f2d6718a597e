//! The `im-gateway` command, built inside this package so end-to-end tests can run a real
//! gateway process and signal it (`CARGO_BIN_EXE_gateway_process`).

// A test harness: a failed unwrap is a failed test, not a crashed service.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]
fn main() -> std::process::ExitCode {
    im_gateway::cli::main()
}
