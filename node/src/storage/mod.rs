//! Durable storage: the write-ahead log (WAL) and the snapshot store.
//!
//! A Raft node is only as safe as what it finds on disk after a crash, so this module
//! never acknowledges a write before `fdatasync` returned, never loads a record whose
//! checksum fails, and never repairs more than a torn tail on its own.
//!
//! Layout:
//! - [`codec`]: the little-endian binary encoding of entries, hard state and snapshot
//!   metadata, the record frame (`crc32c | length | type | body`) and the segment header.
//! - [`fs`]: the small file layer the WAL writes through ([`WalFs`]), the real one
//!   ([`StdFs`]) and a fault-injecting one ([`FaultFs`]) that can fail with EIO/ENOSPC or
//!   "crash" at any byte offset.
//! - [`log`]: the [`LogStore`] trait, the requests the runtime persists
//!   ([`PersistRequest`]) and the in-memory store [`MemLogStore`], which is also the
//!   replay engine of the WAL (one set of rules for both).
//! - [`wal`]: segment files, recovery, segment removal ([`Wal`]) and the WAL-backed
//!   [`WalLogStore`].
//! - [`writer`]: the tokio group-commit task ([`WalWriter`]) and fsync latency statistics.
//! - [`snapshot`]: the snapshot store (temp file, fsync, rename, fsync directory).
//! - [`recovery`]: start-up checks across both (snapshot vs WAL, removed members).
//! - [`dump`]: a human-readable listing of a WAL directory (`raft-node wal dump`).

pub mod codec;
pub mod dump;
pub mod fs;
pub mod log;
pub mod recovery;
pub mod snapshot;
pub mod wal;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;

use crate::raft::types::{Index, NodeId, Term};

pub use codec::Record;

pub use fs::{FaultControl, FaultFs, StdFs, WalFile, WalFs};
pub use log::{LogStore, MemLogStore, PersistRequest};

pub use dump::{dump_wal, DumpSummary};
pub use recovery::{check_membership, read_identity, recover, Recovered};
pub use snapshot::{SnapshotInfo, SnapshotReader, SnapshotStore, SnapshotWriter};
pub use wal::{Wal, WalConfig, WalLogStore};
pub use writer::{Ack, CommitMode, FsyncHistogram, WalWriter, WriterConfig};

/// Every storage failure. Corruption and identity errors name the file (and offset)
/// so that an operator can look at exactly that spot with `wal dump`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt data in {path} at byte offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{path} belongs to cluster {found:#018x}, but this node is configured for cluster {expected:#018x}; refusing to use another cluster's data")]
    ClusterIdMismatch {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path} was written by node {found:#x}, but this node is {expected:#x}; refusing to use another member's data")]
    NodeIdMismatch {
        path: PathBuf,
        expected: NodeId,
        found: NodeId,
    },
    #[error("node {node_id:#x} is not a member of the recovered configuration (voters {voters:?}, learners {learners:?}): it was removed from the cluster; wipe its data directories before it joins again")]
    MemberRemoved {
        node_id: NodeId,
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
    },
    #[error("the WAL refers to a snapshot at index {wal_index}, but the newest valid snapshot in {dir} is at index {found_index}")]
    SnapshotMissing {
        dir: PathBuf,
        wal_index: Index,
        found_index: Index,
    },
    #[error("append of index {got} would leave a gap after the last index {last}")]
    LogGap { last: Index, got: Index },
    #[error("entries must have consecutive indexes and non-decreasing terms: {reason}")]
    NotConsecutive { reason: String },
    #[error("index {index} is covered by the snapshot or compacted (log starts at {first})")]
    Compacted { index: Index, first: Index },
    #[error("index {index} is past the last index {last}")]
    Unavailable { index: Index, last: Index },
    #[error("term went back from {current} to {got}")]
    TermWentBack { current: Term, got: Term },
    #[error("cannot compact to {upto}: the newest snapshot only covers up to {snapshot_index}")]
    CompactBeyondSnapshot { upto: Index, snapshot_index: Index },
    #[error("snapshot at index {got} is older than the current snapshot at index {current}")]
    SnapshotOlder { current: Index, got: Index },
    #[error("{what} of {len} bytes is above the limit of {max} bytes")]
    TooLarge { what: &'static str, len: u64, max: u64 },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An fsync failed earlier. After a failed fsync the kernel may have dropped the
    /// dirty pages and cleared the error, so a retry could "succeed" without the data
    /// on disk; the only safe answer is to stop writing (the fsyncgate lesson).
    #[error("the WAL stopped after a fatal error and accepts no more writes: {0}")]
    Fatal(Arc<Error>),
    #[error("the WAL writer task has stopped")]
    WriterStopped,
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A copy for each caller of a failed group commit (`std::io::Error` is not
    /// `Clone`, so an I/O error is rebuilt from its errno or kind and message).
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Io { op, path, source } => Error::Io {
                op,
                path: path.clone(),
                source: match source.raw_os_error() {
                    Some(errno) => std::io::Error::from_raw_os_error(errno),
                    None => std::io::Error::new(source.kind(), source.to_string()),
                },
            },
            Error::Fatal(inner) => Error::Fatal(inner.clone()),
            Error::WriterStopped => Error::WriterStopped,
            // The rest are refusals of a single request, never shared by a group;
            // keep their text.
            other => Error::Config(other.to_string()),
        }
    }

    /// True when the underlying cause is a full disk: the write may succeed again once
    /// space is freed.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || source.raw_os_error() == Some(libc::ENOSPC)
            }
            Error::Fatal(inner) => inner.is_disk_full(),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
