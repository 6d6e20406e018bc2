//! kuberaft-operator: the `RaftCluster` custom resource and the logic that keeps a
//! cluster healthy (membership on scale, safe rolling restarts, adaptive timing).
//!
//! Layout:
//! - [`crd`]: the `RaftCluster` types and the CRD generator.
//! - [`ctl`]: what `raftctl` (`src/bin/raftctl.rs`) shows, computed from the admin
//!   API's answers (`kuberaft.admin.v1`): the status table, lag and health.

pub mod crd;
pub mod ctl;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid manifest: {0}")]
    Manifest(String),
    #[error("member {endpoint}: {message}")]
    Node { endpoint: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
