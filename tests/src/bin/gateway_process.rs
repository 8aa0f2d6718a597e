//! The `im-gateway` command, built inside this package so end-to-end tests can run a real
//! gateway process and signal it (`CARGO_BIN_EXE_gateway_process`).
fn main() -> std::process::ExitCode {
    im_gateway::cli::main()
}
