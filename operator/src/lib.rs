//! kuberaft-operator: the `RaftCluster` custom resource and the logic that keeps a
//! cluster healthy (membership on scale, safe rolling restarts, adaptive timing).
//!
//! Layout:
//! - [`ctl`]: what `raftctl` (`src/bin/raftctl.rs`) shows, computed from the admin
//!   API's answers (`kuberaft.admin.v1`): the status table, lag and health.
//!
//! The CRD, the reconciler and `raft-operator` arrive with the operator issue.

pub mod ctl;
