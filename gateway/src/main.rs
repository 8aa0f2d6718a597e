fn main() -> std::process::ExitCode {
    im_gateway::cli::main()
}
