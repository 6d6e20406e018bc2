//! kuberaft-operator: the `RaftCluster` custom resource and the logic that keeps a
//! cluster healthy (membership on scale, safe rolling restarts, adaptive timing).
//!
//! Not yet written: this crate is reserved by the layout in DESIGN.md and is filled
//! in by the operator issue. Nothing here claims to work yet.
