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
//! The state machine, the transport and the server join as their issues land.

pub mod api;
pub mod kv;
pub mod linearizability;
pub mod metrics;
pub mod raft;
pub mod runtime;
pub mod security;
pub mod server;
pub mod storage;
pub mod transport;
