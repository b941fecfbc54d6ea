//! The `omoi` command line and the glue that assembles the crates into a running system.
//!
//! # Layout
//!
//! * [`cli`] — the subcommands (`dev`, `serve`, `migrate`, `history`, `db`, `bench`,
//!   `bench-projections`).
//! * [`settings`] — layered configuration.
//! * [`server`] — opening the database (our own PostgreSQL when none is configured),
//!   migrating, serving the API until SIGTERM/ctrl-c.
//! * [`testing`] — the harness the end-to-end tests and benchmarks share: a PostgreSQL
//!   cluster of their own (unless `DATABASE_URL` is given), a fresh database per test, and
//!   a server on a random port.
//! * [`bench`] — the write-path benchmark against a raw `pgbench` of the same SQL.
//! * [`bench_projections`] — the read models' rebuild rate and projection lag.
//! * [`chaos`] — replicas and workers SIGKILLed under load, then the invariants checked.

pub mod bench;
pub mod bench_live;
pub mod bench_projections;
pub mod bench_worker;
pub mod chaos;
pub mod cli;
pub mod operate;
pub mod server;
pub mod settings;
pub mod testing;
