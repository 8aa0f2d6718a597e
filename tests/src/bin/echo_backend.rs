//! The `im-backends` command, built inside this package so end-to-end tests can start (and
//! SIGKILL) real backend processes through `CARGO_BIN_EXE_echo_backend`.

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
