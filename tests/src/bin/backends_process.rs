//! The `im-backends` command, built inside this package so end-to-end tests can run the
//! reference backends as a process of their own (`CARGO_BIN_EXE_backends_process`).
fn main() -> std::process::ExitCode {
    im_backends::cli::main()
}
