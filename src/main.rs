//! The `omoi` binary; everything it does lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    omoi::cli::main(omoi::cli::Cli::parse())
}
