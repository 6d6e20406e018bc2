//! `raft-node restore`: a new cluster's data from a backup (`etcdctl snapshot save`
//! against any kuberaft member, i.e. Maintenance.Snapshot).
//!
//! Run once per member of the new cluster, with the flags that member will be
//! started with (`--name`, `--data-dir` or `--wal-dir`/`--snapshot-dir`,
//! `--initial-cluster`, `--initial-cluster-token`). Every member gets the same
//! Raft snapshot: the backup's key-value store (history and compaction included),
//! a member table of the new members, and the new voters as the configuration, at
//! the backup's applied index and term 1. Started with `--initial-cluster-state
//! new`, the members elect a leader and serve the backup's data, as a new cluster
//! (new cluster id; nothing of the old membership is kept), like `etcdctl snapshot
//! restore`.

use std::path::Path;

use anyhow::Context;

use crate::api::maintenance::read_backup;
use crate::members::{MemberCommand, MemberTable};
use crate::raft::{ConfChange, HardState, Membership, SnapshotMeta};
use crate::runtime::write_state_machine;
use crate::server::ServeArgs;
use crate::storage::{LogStore, SnapshotStore, WalConfig, WalLogStore};

/// Largest backup file read (the whole store is held in memory anyway).
pub const BACKUP_BYTES_MAX: u64 = 8 << 30;

fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    if !dir.exists() {
        return Ok(true);
    }
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .next()
        .is_none())
}

/// Writes this member's WAL and snapshot directories from `backup`.
pub fn restore(args: &ServeArgs, backup: &Path) -> anyhow::Result<()> {
    let plan = args.plan()?;
    for dir in [&plan.wal_dir, &plan.snapshot_dir] {
        if !is_empty_dir(dir)? {
            anyhow::bail!(
                "{} is not empty: restore writes a new member's data and never overwrites any",
                dir.display()
            );
        }
    }
    let size = std::fs::metadata(backup)
        .with_context(|| format!("read {}", backup.display()))?
        .len();
    if size > BACKUP_BYTES_MAX {
        anyhow::bail!(
            "{}: {size} bytes is over the limit of {BACKUP_BYTES_MAX}",
            backup.display()
        );
    }
    let data = std::fs::read(backup).with_context(|| format!("read {}", backup.display()))?;
    let (kv, _old_members) = read_backup(&data).map_err(|e| anyhow::anyhow!("{}: {e}", backup.display()))?;
    let index = kv.applied();
    if index == 0 {
        anyhow::bail!("{}: the backup holds no applied entry", backup.display());
    }
    let mut table = MemberTable::default();
    for (id, (name, url)) in &plan.members {
        table.apply_conf_change(&ConfChange::AddVoter(*id));
        table.apply_command(&MemberCommand::Publish {
            id: *id,
            name: name.clone(),
            peer_urls: vec![url.clone()],
            client_urls: Vec::new(),
        });
    }
    let meta = SnapshotMeta {
        index,
        term: 1,
        membership: Membership::new(plan.members.keys().copied()),
        timing: None,
    };
    std::fs::create_dir_all(&plan.wal_dir)?;
    std::fs::create_dir_all(&plan.snapshot_dir)?;
    let snapshots = SnapshotStore::open(&plan.snapshot_dir, plan.cluster_id, 3)?;
    let mut writer = snapshots.create(&meta)?;
    write_state_machine(&kv, &table, &mut writer)?;
    writer.finish()?;
    let mut wal = WalLogStore::open(&plan.wal_dir, WalConfig::new(plan.cluster_id, plan.id))?;
    wal.install_snapshot(meta)?;
    wal.set_hard_state(HardState {
        term: 1,
        vote: 0,
        commit: index,
    })?;
    wal.sync()?;
    tracing::info!(
        name = %args.name,
        id = format_args!("{:#x}", plan.id),
        cluster = format_args!("{:#x}", plan.cluster_id),
        revision = kv.revision(),
        keys = kv.len(),
        index,
        "restored a member's data from the backup"
    );
    Ok(())
}
