//! kuberaft-bench: the load generator and the side-by-side comparison with etcd.
//!
//! Not yet written: the consensus core's own micro-benchmark lives in
//! `node/benches/core.rs`; this crate is filled in by the benchmark issue.
