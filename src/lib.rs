//! The `omoi` command line and the glue that assembles the crates into a running system.
//!
//! # Layout
//!
//! * [`cli`] — the subcommands (`dev`, `serve`, `worker`, `migrate`, `history`, `db`,
//!   `projections`).
//! * [`settings`] — layered configuration.
//! * [`server`] — opening the database (our own PostgreSQL when none is configured),
//!   migrating, serving the API until SIGTERM/ctrl-c.
//! * [`operate`] — `omoi projections`: status, rebuild, verify, retry of the read models.
//!
//! The test harness is the `omoi-testing` crate (`testing/`), the benchmarks and the chaos
//! run the `omoi-bench` binary (`bench/`): neither is part of this binary.

pub mod cli;
pub mod operate;
pub mod server;
pub mod settings;
