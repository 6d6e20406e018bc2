//! Start-up across both directories: the newest valid snapshot, then the WAL after
//! it, then the identity checks that keep a node off data that is not its own.

use std::path::Path;

use crate::raft::types::{Membership, NodeId};
use crate::storage::log::LogStore;
use crate::storage::snapshot::{SnapshotInfo, SnapshotStore};
use crate::storage::wal::{WalConfig, WalLogStore};
use crate::storage::{Error, Result};

/// What a node starts from.
#[derive(Debug)]
pub struct Recovered {
    pub store: WalLogStore,
    pub snapshots: SnapshotStore,
    /// The snapshot the state machine is restored from, if any.
    pub snapshot: Option<SnapshotInfo>,
    /// The membership in force after replay (snapshot plus changes in the log).
    pub membership: Membership,
}

/// Opens the snapshot store and the WAL, reconciles them and checks that this node
/// is still a member.
///
/// The runtime writes a snapshot file before it logs the snapshot in the WAL. A
/// crash between the two leaves a snapshot newer than the WAL knows; it is recorded
/// now. The reverse — the WAL names a snapshot that is missing or damaged — would
/// lose data the log no longer holds, so start-up stops.
pub fn recover(
    wal_dir: &Path,
    snapshot_dir: &Path,
    config: WalConfig,
    keep_snapshots: usize,
) -> Result<Recovered> {
    let node_id = config.node_id;
    let snapshots = SnapshotStore::open(snapshot_dir, config.cluster_id, keep_snapshots)?;
    let snapshot = snapshots.latest()?;
    let mut store = WalLogStore::open(wal_dir, config)?;
    let wal_index = store.snapshot_meta().index;
    let found_index = snapshot.as_ref().map_or(0, |s| s.meta.index);
    if found_index < wal_index {
        return Err(Error::SnapshotMissing {
            dir: snapshot_dir.to_path_buf(),
            wal_index,
            found_index,
        });
    }
    if let Some(info) = &snapshot {
        if info.meta.index > wal_index {
            tracing::info!(
                index = info.meta.index,
                "recording a snapshot that was saved just before a crash"
            );
            store.install_snapshot(info.meta.clone())?;
            store.sync()?;
        }
    }
    let membership = store.membership();
    check_membership(node_id, &membership)?;
    Ok(Recovered {
        store,
        snapshots,
        snapshot,
        membership,
    })
}

/// Refuses to start a node that is not in the recovered configuration: it was
/// removed, and running it would let stale data vote or serve reads. An empty
/// configuration (a node that has not joined yet) is allowed.
pub fn check_membership(node_id: NodeId, membership: &Membership) -> Result<()> {
    if membership.voters.is_empty() && membership.learners.is_empty() {
        return Ok(());
    }
    if membership.contains(node_id) {
        return Ok(());
    }
    Err(Error::MemberRemoved {
        node_id,
        voters: membership.voters.iter().copied().collect(),
        learners: membership.learners.iter().copied().collect(),
    })
}

/// The cluster id and member id a WAL directory was written for (from the header of
/// its first segment), or `None` when it holds no segment. A member that joined an
/// existing cluster learns its id from the cluster; on a restart it reads it here.
pub fn read_identity(wal_dir: &Path) -> Result<Option<(u64, NodeId)>> {
    use std::io::Read;

    use crate::storage::codec::{SegmentHeader, SEGMENT_HEADER_BYTES};
    use crate::storage::fs::StdFs;

    if !wal_dir.exists() {
        return Ok(None);
    }
    let segments = crate::storage::wal::list_segments(&StdFs, wal_dir)?;
    for segment in segments {
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        let read = std::fs::File::open(&segment.path).and_then(|mut file| file.read_exact(&mut header));
        if read.is_err() {
            continue; // a segment cut short at creation; recovery deals with it
        }
        if let Ok(header) = SegmentHeader::decode(&header) {
            return Ok(Some((header.cluster_id, header.node_id)));
        }
    }
    Ok(None)
}
