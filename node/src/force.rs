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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn entry(index: u64, term: u64, payload: EntryPayload) -> Entry {
        Entry { term, index, payload }
    }

    /// A member's WAL: voters 1, 2, 3 (and learner 4 when `learner`), two commands, the
    /// last one beyond the commit index.
    fn write_member(dir: &Path, id: NodeId, learner: bool) {
        let mut wal = crate::storage::WalLogStore::open(dir, WalConfig::new(0xc1, id)).unwrap();
        let mut entries = vec![
            entry(1, 1, EntryPayload::ConfChange(ConfChange::AddVoter(1))),
            entry(2, 1, EntryPayload::ConfChange(ConfChange::AddVoter(2))),
            entry(3, 1, EntryPayload::ConfChange(ConfChange::AddVoter(3))),
        ];
        if learner {
            entries.push(entry(4, 1, EntryPayload::ConfChange(ConfChange::AddLearner(4))));
        }
        let next = entries.len() as u64 + 1;
        entries.push(entry(next, 2, EntryPayload::Normal(Bytes::from_static(b"a"))));
        entries.push(entry(next + 1, 2, EntryPayload::Normal(Bytes::from_static(b"b"))));
        wal.append(&entries).unwrap();
        wal.set_hard_state(HardState {
            term: 2,
            vote: 1,
            commit: next,
        })
        .unwrap();
        wal.sync().unwrap();
    }

    #[test]
    fn the_member_becomes_the_only_voter_and_its_uncommitted_tail_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, snap) = (dir.path().join("wal"), dir.path().join("snap"));
        write_member(&wal, 1, true);
        let (cluster, id, forced) = force_new_cluster(&wal, &snap, 3).unwrap();
        assert_eq!((cluster, id), (0xc1, 1));
        assert_eq!(
            forced,
            Forced {
                last_index: 6,
                last_term: 2,
                old_commit: 5,
                removed: vec![2, 3, 4],
                new_commit: 9,
            }
        );
        let reopened = crate::storage::WalLogStore::open(&wal, WalConfig::new(0xc1, 1)).unwrap();
        let membership = reopened.membership();
        assert_eq!(membership.voters.iter().copied().collect::<Vec<_>>(), vec![1]);
        assert!(membership.learners.is_empty());
        assert_eq!(reopened.hard_state().commit, 9);
        assert_eq!(reopened.hard_state().term, 2);
        // The commands are kept, the tail included.
        let kept = reopened.entries(5, 7, u64::MAX).unwrap();
        assert_eq!(kept[1].payload, EntryPayload::Normal(Bytes::from_static(b"b")));
        drop(reopened);
        // Again: nothing more to change.
        let (_, _, again) = force_new_cluster(&wal, &snap, 3).unwrap();
        assert_eq!(
            (again.removed.len(), again.last_index, again.new_commit),
            (0, 9, 9)
        );
    }

    #[test]
    fn refused_without_data_and_for_a_learner() {
        let dir = tempfile::tempdir().unwrap();
        let err = force_new_cluster(&dir.path().join("wal"), &dir.path().join("snap"), 3).unwrap_err();
        assert!(err.to_string().contains("holds no WAL"), "{err}");
        let wal = dir.path().join("learner-wal");
        write_member(&wal, 4, true);
        let err = force_new_cluster(&wal, &dir.path().join("snap"), 3).unwrap_err();
        assert!(err.to_string().contains("is a learner"), "{err}");
    }
}
