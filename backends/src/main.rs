fn main() -> std::process::ExitCode {
    im_backends::cli::main()
}
