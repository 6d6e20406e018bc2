//! Failure injection through `FaultFs`: a crash at every write offset, a full disk,
//! and a failed fsync.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use kuberaft_node::raft::types::{Entry, EntryPayload, HardState, Membership, SnapshotMeta};
use kuberaft_node::storage::{
    Error, FaultFs, LogStore, MemLogStore, PersistRequest, WalConfig, WalLogStore, WalWriter, WriterConfig,
};

fn config() -> WalConfig {
    let mut config = WalConfig::new(7, 1);
    config.segment_bytes_max = 4096;
    config
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Normal(Bytes::from(format!("v{index:04}-t{term}-{:050}", 0))),
    }
}

fn run(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<PersistRequest> {
    range
        .map(|i| PersistRequest::Entries(vec![entry(term, i)]))
        .collect()
}

/// The recorded workload: each inner list is synced as one batch. It crosses
/// several segments, replaces a conflicting suffix, changes the hard state, takes a
/// snapshot and compacts (which removes segments).
fn workload() -> Vec<Vec<PersistRequest>> {
    let hs = |term, commit| {
        PersistRequest::HardState(HardState {
            term,
            vote: 1,
            commit,
        })
    };
    let mut batches = vec![vec![hs(1, 0)]];
    for chunk in run(1, 1..=60).chunks(3) {
        batches.push(chunk.to_vec());
    }
    batches.push(vec![hs(2, 40)]);
    // A new leader replaces entries 51..=60.
    batches.push(vec![PersistRequest::Entries(
        (51..=55).map(|i| entry(2, i)).collect(),
    )]);
    for chunk in run(2, 56..=110).chunks(4) {
        batches.push(chunk.to_vec());
    }
    batches.push(vec![
        hs(2, 100),
        PersistRequest::Snapshot(SnapshotMeta {
            index: 90,
            term: 2,
            membership: Membership::new([1, 2, 3]),
            timing: None,
        }),
        PersistRequest::Compact(90),
    ]);
    for chunk in run(3, 111..=140).chunks(5) {
        batches.push(chunk.to_vec());
    }
    batches
}

/// What can be compared between a recovered store and a reference state.
#[derive(Clone, Debug)]
struct View {
    first: u64,
    entries: Vec<Entry>,
    hard_state: HardState,
    snapshot: SnapshotMeta,
}

fn view<S: LogStore>(store: &S) -> View {
    View {
        first: store.first_index(),
        entries: store
            .entries(store.first_index(), store.last_index() + 1, u64::MAX)
            .unwrap(),
        hard_state: store.hard_state(),
        snapshot: store.snapshot_meta(),
    }
}

/// Same state: equal hard state, snapshot and last index, and equal entries where
/// both still hold them (compaction may have dropped a different prefix).
fn same(recovered: &View, reference: &View) -> bool {
    let last = |v: &View| v.first + v.entries.len() as u64 - 1;
    if recovered.hard_state != reference.hard_state
        || recovered.snapshot != reference.snapshot
        || last(recovered) != last(reference)
    {
        return false;
    }
    let from = recovered.first.max(reference.first);
    let slice = |v: &View| v.entries[(from - v.first) as usize..].to_vec();
    slice(recovered) == slice(reference)
}

/// Reference states after every record, and the number of records through each
/// batch: a crash must recover one of the states at or after the last
/// acknowledged batch.
fn reference_states(batches: &[Vec<PersistRequest>]) -> (Vec<View>, Vec<usize>) {
    let mut log = MemLogStore::new(0);
    let mut states = vec![view(&log)];
    let mut records_through = Vec::new();
    for batch in batches {
        for request in batch {
            for record in log.plan(request).unwrap() {
                log.apply_record(&record).unwrap();
                states.push(view(&log));
            }
        }
        records_through.push(states.len() - 1);
    }
    (states, records_through)
}

/// A directory in memory when the machine has one: this test creates and removes
/// thousands of directories, and on a disk mounted with `discard` every removal is
/// slow. (The fault layer simulates durability, so nothing here needs a real disk.)
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Runs the workload until the first error; returns how many batches were
/// acknowledged (their sync returned Ok).
fn replay(dir: &Path, fs: FaultFs, batches: &[Vec<PersistRequest>]) -> usize {
    let Ok(mut store) = WalLogStore::open_with_fs(dir, config(), Arc::new(fs)) else {
        return 0;
    };
    for (i, batch) in batches.iter().enumerate() {
        for request in batch {
            if store.persist(request.clone()).is_err() {
                return i;
            }
        }
        if store.sync().is_err() {
            return i;
        }
    }
    batches.len()
}

#[test]
fn a_crash_at_every_write_offset_recovers_a_prefix_holding_every_acknowledged_entry() {
    let batches = workload();
    let (states, records_through) = reference_states(&batches);

    let dir = tempfile::tempdir().unwrap();
    let (fs, control) = FaultFs::new();
    assert_eq!(replay(dir.path(), fs, &batches), batches.len());
    let total = control.bytes_written();
    assert!(total > 3 * 4096, "the workload should span several segments");

    for crash_at in 0..=total {
        let dir = scratch_dir();
        let (fs, control) = FaultFs::new();
        control.crash_at_byte(crash_at);
        let acked = replay(dir.path(), fs, &batches);
        let acked_records = if acked == 0 { 0 } else { records_through[acked - 1] };

        let (fs, _) = FaultFs::new();
        let store = WalLogStore::open_with_fs(dir.path(), config(), Arc::new(fs))
            .unwrap_or_else(|e| panic!("crash at byte {crash_at}: recovery failed: {e}"));
        let recovered = view(&store);
        assert!(
            states[acked_records..].iter().any(|s| same(&recovered, s)),
            "crash at byte {crash_at}: recovered log (first {}, {} entries, {:?}) is not a \
             state at or after the {acked} acknowledged batches; replay with crash_at = {crash_at}",
            recovered.first,
            recovered.entries.len(),
            recovered.hard_state,
        );
    }
}

#[test]
fn a_full_disk_fails_the_sync_keeps_the_store_readable_and_recovers_when_space_is_back() {
    // Every fill level within a few segments, so the disk also fills up while a new
    // segment is being started.
    for room in (0..6000).step_by(97) {
        let dir = tempfile::tempdir().unwrap();
        let (fs, control) = FaultFs::new();
        let mut store = WalLogStore::open_with_fs(dir.path(), config(), Arc::new(fs)).unwrap();
        for request in run(1, 1..=20) {
            store.persist(request).unwrap();
        }
        store.sync().unwrap();

        control.disk_full_after(room);
        let mut failed = false;
        let mut next = 21;
        while next <= 120 {
            let result = store
                .persist(PersistRequest::Entries(vec![entry(1, next)]))
                .and_then(|_| store.sync());
            match result {
                Ok(()) => next += 1,
                Err(err) => {
                    assert!(err.is_disk_full(), "room {room}: {err}");
                    if store.last_index() == next {
                        next += 1; // accepted in memory, waiting to be written
                    }
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "room {room}: the disk never filled up");
        // Still readable, and what is on disk is clean and holds every synced entry.
        assert_eq!(store.entries(1, 21, u64::MAX).unwrap().len(), 20);
        let on_disk = WalLogStore::open(dir.path(), config())
            .unwrap_or_else(|e| panic!("room {room}: disk left unreadable: {e}"));
        assert!(on_disk.last_index() >= 20);
        drop(on_disk);

        control.space_back();
        store.sync().unwrap();
        for i in next..=130 {
            store.persist(PersistRequest::Entries(vec![entry(1, i)])).unwrap();
        }
        store.sync().unwrap();
        drop(store);
        let store = WalLogStore::open(dir.path(), config()).unwrap();
        assert_eq!(store.last_index(), 130, "room {room}");
        assert_eq!(
            store.all_entries(),
            (1..=130).map(|i| entry(1, i)).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn a_failed_fsync_fails_its_callers_and_every_later_submit() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, control) = FaultFs::new();
    let store = WalLogStore::open_with_fs(dir.path(), config(), Arc::new(fs)).unwrap();
    let (writer, task) = WalWriter::spawn(store, WriterConfig::default()).unwrap();
    assert_eq!(writer.submit(run(1, 1..=1)).await.unwrap(), 1);

    control.fail_next_sync(libc::EIO);
    let err = writer.submit(run(1, 2..=2)).await.unwrap_err();
    assert!(matches!(err, Error::Fatal(_)), "{err}");
    // The fsync error is never retried into a false success.
    let err = writer.submit(run(1, 3..=3)).await.unwrap_err();
    assert!(matches!(err, Error::Fatal(_)), "{err}");
    assert_eq!(*writer.durable_seq().borrow(), 1);
    drop(writer);
    task.await.unwrap();

    let store = WalLogStore::open(dir.path(), config()).unwrap();
    assert!(store.last_index() >= 1);
    assert_eq!(store.entries(1, 2, u64::MAX).unwrap(), vec![entry(1, 1)]);
}

#[tokio::test]
async fn a_full_disk_fails_the_group_and_later_groups_succeed_once_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, control) = FaultFs::new();
    let store = WalLogStore::open_with_fs(dir.path(), config(), Arc::new(fs)).unwrap();
    let (writer, task) = WalWriter::spawn(store, WriterConfig::default()).unwrap();
    writer.submit(run(1, 1..=1)).await.unwrap();
    control.disk_full_after(10);
    let err = writer.submit(run(1, 2..=2)).await.unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    control.space_back();
    let seq = writer.submit(run(1, 3..=3)).await.unwrap();
    assert_eq!(*writer.durable_seq().borrow(), seq);
    drop(writer);
    task.await.unwrap();
    let store = WalLogStore::open(dir.path(), config()).unwrap();
    assert_eq!(
        store.all_entries(),
        (1..=3).map(|i| entry(1, i)).collect::<Vec<_>>()
    );
}

#[test]
fn reopening_fsyncs_the_log_it_loaded_because_a_dead_process_may_have_left_it_in_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, _control) = FaultFs::new();
    let mut store = WalLogStore::open_with_fs(dir.path(), config(), Arc::new(fs)).unwrap();
    for request in run(1, 1..=10) {
        store.persist(request).unwrap();
    }
    // Written but never fsynced: the process dies here, the machine does not.
    let (_log, mut wal) = store.into_parts();
    wal.write_pending().unwrap();
    drop(wal);

    let (fs, control) = FaultFs::new();
    let store = WalLogStore::open_with_fs(dir.path(), config(), Arc::new(fs)).unwrap();
    assert_eq!(store.last_index(), 10);
    assert!(control.syncs() >= 1, "the recovered tail was not fsynced");
    assert!(control.synced_dirs().iter().any(|d| d == dir.path()));
}

#[test]
fn creating_a_wal_directory_fsyncs_the_parent_of_every_directory_it_created() {
    let root = tempfile::tempdir().unwrap();
    let wal_dir = root.path().join("data").join("wal");
    let (fs, control) = FaultFs::new();
    let store = WalLogStore::open_with_fs(&wal_dir, config(), Arc::new(fs)).unwrap();
    drop(store);
    let synced = control.synced_dirs();
    for parent in [root.path().join("data"), root.path().to_path_buf()] {
        assert!(
            synced.contains(&parent),
            "{} not fsynced: {synced:?}",
            parent.display()
        );
    }
}
