//! kuberaft-operator: the `RaftCluster` custom resource and the logic that keeps a
//! cluster healthy (membership on scale, safe rolling restarts, adaptive timing).
//!
//! Layout:
//! - [`crd`]: the `RaftCluster` types and the CRD generator.
//! - [`plan`]: the pure planner: desired children and the next orchestration step.
//! - [`adaptive`]: the adaptive timing rule.
//! - [`backup`]: when a scheduled backup is due, and the streaming backup writer.
//! - [`certs`]: the CA and certificates of `spec.tls.mode: Auto`, and when to renew them.
//! - [`render`]: the children (Services, StatefulSet, PodDisruptionBudget).
//! - [`platform`]: the effects of a step (Kubernetes or local processes) and `execute`.
//! - [`node`]: calls to members (admin Status, etcd Cluster, TransferLeader, SetTiming).
//! - [`k8s`]: the kube-rs controller: observe, apply, status, events, finalizer.
//! - [`local`]: the same planner on local `raft-node` processes (`raftctl up`).
//! - [`lease`]: leader election on a coordination Lease.
//! - [`quorum`]: the quorum-loss recovery decision (pure; not wired into the reconcile yet).
//! - [`ctl`]: what `raftctl` (`src/bin/raftctl.rs`) shows, computed from the admin
//!   API's answers (`kuberaft.admin.v1`): the status table, lag and health.

pub mod adaptive;
pub mod backup;
pub mod certs;
pub mod crd;
pub mod ctl;
pub mod k8s;
pub mod lease;
pub mod local;
pub mod node;
pub mod plan;
pub mod platform;
pub mod quorum;
pub mod render;
pub mod replace;
pub mod restore;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid manifest: {0}")]
    Manifest(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("local cluster: {0}")]
    Local(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Backup(String),
    #[error("member {endpoint}: {message}")]
    Node { endpoint: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
