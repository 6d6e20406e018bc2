//! `raft-node --force-new-cluster`: a member whose cluster lost its quorum for good
//! becomes a one-member cluster from its own data (etcd's flag of the same name).
//!
//! What it does, before the node starts, on the member's existing WAL and snapshot
//! directories:
//! - it keeps everything: the state store, the snapshots, the log up to its last
//!   index, the revisions and the cluster id (read from the WAL, not from the flags);
//! - it appends one `Remove` membership entry for every other voter and learner, at
//!   the current term, and sets the commit index to the last of them. As in etcd,
//!   entries this member held beyond its old commit index are thereby committed by
//!   the new one-member configuration (they may never have been acknowledged to a
//!   client, but no other copy will ever decide them now);
//! - entries the lost members may have had beyond this member's last index are
//!   discarded: they exist nowhere else once those members are wiped.
//!
//! A member that is already the only voter with no learner is left as it is, so a
//! restart that still carries the flag changes nothing. Without existing data it
//! refuses. The index and term recovered to are logged and returned.

use std::path::Path;

use crate::raft::{ConfChange, Entry, EntryPayload, HardState, NodeId};
use crate::storage::{self, LogStore, WalConfig};

/// What `--force-new-cluster` found and wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forced {
    /// This member's last log index and its term before the rewrite: the data kept.
    pub last_index: u64,
    pub last_term: u64,
    /// The commit index found on disk; entries in `(commit, last_index]` were
    /// committed by the new configuration.
    pub old_commit: u64,
    /// The members removed from the configuration.
    pub removed: Vec<NodeId>,
    /// The index of the last membership entry written (== `last_index` when nothing
    /// had to change).
    pub new_commit: u64,
}

/// Rewrites the member's configuration to itself only; see the module documentation.
pub fn force_new_cluster(
    wal_dir: &Path,
    snapshot_dir: &Path,
    keep_snapshots: usize,
) -> anyhow::Result<(u64, NodeId, Forced)> {
    let Some((cluster_id, id)) = storage::read_identity(wal_dir)? else {
        anyhow::bail!(
            "--force-new-cluster: {} holds no WAL; it keeps an existing member's data and \
             cannot start a member that has none",
            wal_dir.display()
        );
    };
    let recovered = storage::recover(
        wal_dir,
        snapshot_dir,
        WalConfig::new(cluster_id, id),
        keep_snapshots,
    )?;
    let mut store = recovered.store;
    let membership = store.membership();
    if membership.learners.contains(&id) {
        anyhow::bail!(
            "--force-new-cluster: member {id:#x} is a learner; only a voter's log can be \
             trusted to hold what the cluster committed"
        );
    }
    let last_index = store.last_index();
    let last_term = store.last_term();
    let hard = store.hard_state();
    if last_index == 0 {
        anyhow::bail!(
            "--force-new-cluster: {} holds no log entry and no snapshot",
            wal_dir.display()
        );
    }
    let removed: Vec<NodeId> = membership
        .voters
        .iter()
        .chain(membership.learners.iter())
        .copied()
        .filter(|m| *m != id)
        .collect();
    let term = hard.term.max(last_term);
    let entries: Vec<Entry> = removed
        .iter()
        .enumerate()
        .map(|(i, member)| Entry {
            term,
            index: last_index + 1 + i as u64,
            payload: EntryPayload::ConfChange(ConfChange::Remove(*member)),
        })
        .collect();
    let new_commit = last_index + entries.len() as u64;
    if !entries.is_empty() {
        store.append(&entries)?;
    }
    if hard.commit != new_commit || hard.term != term {
        store.set_hard_state(HardState {
            term,
            vote: if term == hard.term { hard.vote } else { 0 },
            commit: new_commit,
        })?;
    }
    store.sync()?;
    let forced = Forced {
        last_index,
        last_term,
        old_commit: hard.commit,
        removed,
        new_commit,
    };
    tracing::warn!(
        id = format_args!("{id:#x}"),
        cluster = format_args!("{cluster_id:#x}"),
        last_index,
        last_term,
        old_commit = hard.commit,
        removed = ?forced.removed.iter().map(|m| format!("{m:#x}")).collect::<Vec<_>>(),
        new_commit,
        "--force-new-cluster: recovered to index {last_index} term {last_term}; this member is \
         now the only voter (entries after index {} were committed by the new configuration; \
         the removed members' newer entries, if any, are discarded)",
        hard.commit
    );
    Ok((cluster_id, id, forced))
}
