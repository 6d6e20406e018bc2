//! kuberaft-proto: everything that crosses a process boundary as gRPC.
//!
//! Layout (filled in by the runtime and API issues): the etcd v3 API subset that
//! clients speak, the peer service that carries Raft messages between members, and
//! the `kuberaft.admin.v1` service used by the operator and `raftctl`. The crate is
//! empty until the first of those services is served; it exists now so the workspace
//! layout of DESIGN.md is fixed from the start.
