//! The `im-backends` command, built inside this package so end-to-end tests can start (and
//! SIGKILL) real backend processes through `CARGO_BIN_EXE_echo_backend`.
fn main() -> std::process::ExitCode {
    im_backends::cli::main()
}
