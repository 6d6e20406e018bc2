//! kuberaft-bench: the load generator (`raft-bench`) and, with the benchmark issue,
//! the side-by-side comparison with etcd.
//!
//! `raft-bench` is built on the `etcd-client` crate, so the very same code drives
//! kuberaft and etcd.
