//! The `omoi` binary; everything it does lives in the library.

use clap::Parser;

/// glibc's malloc/free took a fifth of the server's CPU under load (`omoi-bench bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    omoi::cli::main(omoi::cli::Cli::parse())
}
