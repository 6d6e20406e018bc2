//! kuberaft-proto: everything that crosses a process boundary as gRPC.
//!
//! The .proto sources live next to this crate's `Cargo.toml`; `build.rs` compiles them
//! with prost and tonic (clients and servers) using a vendored `protoc`.
//!
//! | module | protobuf package | source | what |
//! | --- | --- | --- | --- |
//! | [`mvccpb`] | `mvccpb` | `etcd/mvccpb/kv.proto` | etcd's `KeyValue` and watch `Event` |
//! | [`authpb`] | `authpb` | `etcd/authpb/auth.proto` | etcd's `User`, `Role` and `Permission` |
//! | [`etcdserverpb`] | `etcdserverpb` | `etcd/etcdserverpb/rpc.proto` | etcd v3 services KV, Watch, Lease, Cluster, Maintenance, Auth |
//! | [`raft`] | `kuberaft.raft.v1` | `kuberaft/raft.proto` | the `Peer` service between members |
//! | [`admin`] | `kuberaft.admin.v1` | `kuberaft/admin.proto` | the `Admin` service for the operator and `raftctl` |
//! | [`membership`] | `kuberaft.membership.v1` | `kuberaft/membership.proto` | member discovery and announcement (peer port) |
//!
//! The etcd packages are wire compatible with etcd 3.4+ clients: package, service,
//! method and message names and every field number are etcd's (see
//! `tests/wire_compat.rs`). Field names keep etcd's spelling, so prost's snake-case
//! conversion gives the same Rust names as other etcd bindings (`peer_ur_ls`,
//! `is_learner`, `db_size_in_use`, ...). Not included: the
//! Downgrade RPC and the lease checkpoint messages (internal to etcd).
//!
//! Generated servers and clients follow tonic's naming, e.g.
//! [`etcdserverpb::kv_server::KvServer`], [`etcdserverpb::kv_client::KvClient`],
//! [`raft::peer_server::PeerServer`], [`admin::admin_client::AdminClient`].
//!
//! Bytes fields of `kuberaft.raft.v1` are [`prost::bytes::Bytes`] (the core's entry
//! payloads are `Bytes`); the etcd packages use `Vec<u8>` like other etcd bindings.

/// etcd's storage records: `KeyValue` and the watch `Event`.
#[allow(clippy::all, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's auth records: `User`, `Role`, `Permission`.
#[allow(clippy::all, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The etcd v3 client API: KV, Watch, Lease, Cluster, Maintenance and Auth.
#[allow(clippy::all, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// `kuberaft.raft.v1`: Raft messages and the `Peer` service between members.
#[allow(clippy::all, missing_docs)]
pub mod raft {
    tonic::include_proto!("kuberaft.raft.v1");
}

/// `kuberaft.admin.v1`: status, live timing, leadership transfer and events.
#[allow(clippy::all, missing_docs)]
pub mod admin {
    tonic::include_proto!("kuberaft.admin.v1");
}

/// `kuberaft.membership.v1`: member discovery for joining members and the
/// announcement of a member's name and client URLs (peer port).
#[allow(clippy::all, missing_docs)]
pub mod membership {
    tonic::include_proto!("kuberaft.membership.v1");
}

/// Encoded `FileDescriptorSet` of every .proto in this crate, for gRPC server
/// reflection (`tonic-reflection`) or dynamic decoding.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kuberaft_descriptor.bin"));
