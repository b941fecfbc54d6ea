//! `omoi-bench`: the benchmarks and the chaos run (see the crate's documentation).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The servers it starts in-process allocate as `omoi` does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// omoi's benchmarks and chaos run. DATABASE_URL names the PostgreSQL to use; without it
/// one of our own runs in target/omoi-bench-pg. Build the `omoi` binary first (`cargo
/// build --release --bins`): the benchmarks that start servers run it from beside this one.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmark the write path over HTTP against a raw pgbench of the same SQL.
    Bench(omoi_bench::write::BenchArgs),
    /// Benchmark the read models: rebuild rate over generated events, and projection lag
    /// while commands arrive at a steady rate.
    BenchProjections(omoi_bench::projections::Args),
    /// Benchmark board deltas delivered over WebSocket to many clients (latency, memory).
    BenchLive(omoi_bench::live::Args),
    /// Benchmark the orchestrator: tasks/s through the whole lifecycle with M in-process
    /// agents, and ready → assigned latency.
    BenchWorker(omoi_bench::worker::Args),
    /// Benchmark supervision: one monitoring pass over many agents and open tasks, the
    /// Conductor's overview, and ready → assigned with and without monitoring.
    BenchMonitoring(omoi_bench::monitoring::Args),
    /// Benchmark the spec workflow: N specs' plans approved at once and run by the process
    /// managers and in-process agents (specs/s; task completion → ticket move latency).
    BenchWorkflow(omoi_bench::workflow::Args),
    /// Benchmark the dashboard's first load of a large board in headless Chromium (first
    /// paint, live) and the JavaScript it ships.
    BenchDashboard(omoi_bench::dashboard::Args),
    /// Benchmark a small organization's requests (append, board, timeline, global stream)
    /// on a log of 100,000 events against one of 10,000,000, and a large project's past
    /// board.
    BenchScale(omoi_bench::scale::Args),
    /// Benchmark a command's cost as its aggregate's history grows (10,000 events against
    /// 10), with and without the bus's aggregate cache.
    BenchAggregate(omoi_bench::aggregate::Args),
    /// Run replicas and workers on one fresh database under load, SIGKILL a random one
    /// every few seconds (restarting it), then check that no event was lost or doubled,
    /// every read model equals a rebuild, every task ran once per attempt and finished,
    /// and every WebSocket subscriber folds to the HTTP board. Prints the counts; exits
    /// non-zero when an invariant broke. Loopback only.
    Chaos(omoi_bench::chaos::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = omoi::settings::Settings::load().map_or(omoi::settings::LogFormat::Pretty, |s| {
        s.application.log_format
    });
    omoi::cli::init_tracing(format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("omoi-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Bench(args) => omoi_bench::write::run(args).await,
            Command::BenchProjections(args) => omoi_bench::projections::run(args).await,
            Command::BenchScale(args) => omoi_bench::scale::run(args).await,
            Command::BenchLive(args) => omoi_bench::live::run(args).await,
            Command::BenchWorker(args) => omoi_bench::worker::run(args).await,
            Command::BenchWorkflow(args) => omoi_bench::workflow::run(args).await,
            Command::BenchMonitoring(args) => omoi_bench::monitoring::run(args).await,
            Command::BenchDashboard(args) => omoi_bench::dashboard::run(args).await,
            Command::BenchAggregate(args) => omoi_bench::aggregate::run(args).await,
            Command::Chaos(args) => omoi_bench::chaos::run(args).await,
        }
    });
    // The servers and pools of the run end with the runtime, before their cluster stops.
    drop(runtime);
    let outcome = outcome.and(omoi_bench::setup::stop_started_cluster());
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("omoi-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
