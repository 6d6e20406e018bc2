//! kuberaft-node: the Raft node.
//!
//! Layout:
//! - [`raft`]: the sans-IO consensus core (the `kuberaft-raft` crate, `raft/`). It
//!   owns no clock, socket, file or task;
//!   callers feed it ticks, messages and requests and execute the commands it returns.
//!   This is what lets the simulator (`tests/simulation.rs`) run thousands of whole
//!   clusters per CI run, deterministically, with faults.
//! - [`storage`]: the durable side: a segmented write-ahead log with group commit, the
//!   snapshot store, crash recovery and `raft-node wal dump`.
//!
//! - [`kv`] and [`members`]: the replicated state machine: the MVCC key-value store,
//!   and the member table (names and URLs of the members).
//! - [`runtime`]: the task that owns the core and executes its commands.
//! - [`transport`]: the gRPC peer service; [`join`]: member discovery, joining and
//!   publishing on the peer port.
//! - [`stats`]: latency windows (EWMA, p50, p99) and Prometheus histograms, for peer
//!   round-trip times and WAL fsync latency; [`log_events`]: membership and snapshot
//!   events for the admin event stream.
//! - [`api`]: the etcd v3 services (KV, Watch, Lease, Cluster, Maintenance) and the admin service;
//!   [`server`]: flags and listeners of `raft-node`; [`restore`]: `raft-node restore`;
//!   [`force`]: `raft-node --force-new-cluster`.

pub mod api;
pub mod failpoint;
pub mod force;
pub mod join;
pub mod kv;
pub mod log_events;
pub mod members;
pub mod metrics;
/// The consensus core, a crate of its own (`raft/`): the compiler keeps it free of I/O.
pub use kuberaft_raft as raft;
pub mod restore;
pub mod runtime;
pub mod security;
pub mod server;
pub mod stats;
pub mod storage;
pub mod transport;

/// The unit tests run on the allocator `raft-node` runs on, so measurements made in
/// them (e.g. `kv::tests::load_time`) stand for the product.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
