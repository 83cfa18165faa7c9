//! The `weir` binary: worker, CLI, demo and benchmark. See `weir --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
