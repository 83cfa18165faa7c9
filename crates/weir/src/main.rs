//! The `weir` binary: worker, CLI, demo and benchmark. See `weir --help`.

mod cli;

/// mimalloc rather than the system allocator: a worker allocates and frees many small,
/// short-lived buffers (messages, jobs, futures) across threads, where glibc's malloc spent
/// about a seventh of the CPU of an AMQP worker in consolidation and chunk unlinking.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
