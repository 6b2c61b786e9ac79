//! carrier's entry point: everything lives in the library (`carrier::cli`).
fn main() -> std::process::ExitCode {
    carrier::cli::main()
}
