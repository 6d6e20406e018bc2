//! kuberaft-node: the Raft node.
//!
//! Layout:
//! - [`raft`]: the sans-IO consensus core. It owns no clock, socket, file or task;
//!   callers feed it ticks, messages and requests and execute the commands it returns.
//!   This is what lets the simulator (`tests/simulation.rs`) run thousands of whole
//!   clusters per CI run, deterministically, with faults.
//! - [`storage`]: the durable side: a segmented write-ahead log with group commit, the
//!   snapshot store, crash recovery and `raft-node wal dump`.
//! - [`linearizability`]: a checker for client histories against a key-value model,
//!   used by the simulator and by the end-to-end tests.
//!
//! - [`stats`]: latency windows (EWMA, p50, p99) and Prometheus histograms, for peer
//!   round-trip times and WAL fsync latency.
//!
//! The state machine, the transport and the server join as their issues land.

pub mod api;
pub mod kv;
pub mod linearizability;
pub mod log_events;
pub mod metrics;
pub mod raft;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod storage;
pub mod transport;
