//! omoi's benchmarks and its chaos run, out of the shipped binary: `omoi-bench <command>`.
//! Each prints its figures as ratios measured side by side in one run (these machines are
//! noisy), with medians over repeated runs.
//!
//! # Layout
//!
//! * [`write`] — `bench`: the write path over HTTP against a raw `pgbench` of the same SQL.
//! * [`projections`] — `bench-projections`: the read models' rebuild rate and projection
//!   lag.
//! * [`live`] — `bench-live`: board deltas over WebSocket to many clients (latency,
//!   memory per connection).
//! * [`monitoring`] — `bench-monitoring`: one supervision pass at 1,000 agents and 50,000
//!   open tasks, and ready → assigned with and without it.
//! * [`worker`] — `bench-worker`: the orchestrator's tasks/s and ready → assigned latency.
//! * [`workflow`] — `bench-workflow`: specs run end to end by the process managers (specs/s,
//!   task completion → ticket move latency).
//! * [`aggregate`] — `bench-aggregate`: a command on an aggregate of 10,000 events against
//!   one of 10, with and without the bus's aggregate cache.
//! * [`scale`] — `bench-scale`: a small organization's requests on a log of 100,000
//!   events against one of 10,000,000, and a large project's past board.
//! * [`dashboard`] — `bench-dashboard`: the first load of a 500-card board in headless
//!   Chromium (first paint, live) and the JavaScript the app ships.
//! * [`chaos`] — `chaos`: replicas and workers SIGKILLed under load, then the invariants
//!   checked.
//! * [`setup`] — what they share: the benchmark cluster, the `omoi` binary they start,
//!   the machine's load; [`stats`] — percentiles and medians, computed one way.

pub mod aggregate;
pub mod chaos;
pub mod dashboard;
pub mod live;
pub mod monitoring;
pub mod projections;
pub mod scale;
pub mod setup;
pub mod stats;
pub mod worker;
pub mod workflow;
pub mod write;
