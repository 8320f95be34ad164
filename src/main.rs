//! The `dagrun` binary: parse arguments, run, exit with the code the CLI chose.

mod cli;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cli::run())
}
