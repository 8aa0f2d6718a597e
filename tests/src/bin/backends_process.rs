//! The `im-backends` command, built inside this package so end-to-end tests can run the
//! reference backends as a process of their own (`CARGO_BIN_EXE_backends_process`).

// A test harness: a failed unwrap is a failed test, not a crashed service.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]
fn main() -> std::process::ExitCode {
    im_backends::cli::main()
}
