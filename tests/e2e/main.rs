//! omoi's end-to-end tests: a real PostgreSQL, real HTTP and real WebSocket (see
//! `omoi_testing`). One test binary with a module per area, not a binary per file: each
//! binary linked the whole server and built its generic code again: 32 of them took
//! 66.6 s of CPU to build from cold, this one 21.5 s (README, Quick start). nextest still
//! runs every test in a process of its own.

mod agent_audit;
mod auth;
mod auth_limits;
mod authorization;
mod bad_input;
mod billing;
mod claims;
mod cli;
mod concurrency;
mod dashboard;
mod discoveries;
mod embedded_cluster;
mod group_commit;
mod guardian;
mod lifecycle;
mod lists;
mod member_rules;
mod openapi_fuzz;
mod orchestrator;
mod projection_batches;
mod projection_crash;
mod projection_runner;
mod read_models_board_graph;
mod read_models_timeline_agents;
mod supervision;
mod transcripts;
mod validation;
mod websocket;
mod websocket_limits;
mod withdrawal;
mod worker_isolation;
mod workflow;
mod workflow_crash;
