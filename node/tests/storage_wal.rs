//! WAL recovery: torn tails, corruption, identity, segment removal and `wal dump`.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kuberaft_node::raft::types::{ConfChange, Entry, EntryPayload, HardState, Membership, SnapshotMeta};
use kuberaft_node::storage::{dump_wal, recover, Error, LogStore, SnapshotStore, WalConfig, WalLogStore};

const CLUSTER: u64 = 0xabc;

fn config() -> WalConfig {
    let mut config = WalConfig::new(CLUSTER, 1);
    config.segment_bytes_max = 8192;
    config
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Normal(Bytes::from(vec![index as u8; 100])),
    }
}

fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(|i| entry(term, i)).collect()
}

/// A WAL of `count` entries over several segments, synced and closed.
fn write_wal(dir: &Path, count: u64) -> Vec<Entry> {
    let mut store = WalLogStore::open(dir, config()).unwrap();
    store
        .set_hard_state(HardState {
            term: 2,
            vote: 1,
            commit: 3,
        })
        .unwrap();
    let written = entries(2, 1..=count);
    for chunk in written.chunks(5) {
        store.append(chunk).unwrap();
        store.sync().unwrap();
    }
    written
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

/// Every file name and its bytes: compared before and after a refused open.
fn directory_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect()
}

fn flip_bit(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_wal_reopens_with_every_synced_entry_over_several_segments() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_wal(dir.path(), 300);
    assert!(segments(dir.path()).len() > 3);
    let store = WalLogStore::open(dir.path(), config()).unwrap();
    assert_eq!(store.all_entries(), written);
    assert_eq!(
        store.hard_state(),
        HardState {
            term: 2,
            vote: 1,
            commit: 3
        }
    );
}

#[test]
fn a_torn_tail_is_cut_off_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_wal(dir.path(), 50);
    let last = segments(dir.path()).pop().unwrap();
    let clean_len = std::fs::metadata(&last).unwrap().len();
    // Half of a record, as a crash in the middle of a write leaves it.
    let mut file = OpenOptions::new().append(true).open(&last).unwrap();
    file.write_all(&[0x11, 0x22, 0x33, 0x44, 60, 0, 0, 0, 1, 9, 9, 9])
        .unwrap();
    drop(file);

    let mut store = WalLogStore::open(dir.path(), config()).unwrap();
    assert_eq!(store.all_entries(), written);
    assert_eq!(std::fs::metadata(&last).unwrap().len(), clean_len);
    store.append(&entries(2, 51..=55)).unwrap();
    store.sync().unwrap();
    drop(store);
    let store = WalLogStore::open(dir.path(), config()).unwrap();
    assert_eq!(store.last_index(), 55);
}

#[test]
fn a_zero_filled_tail_is_treated_as_torn() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_wal(dir.path(), 20);
    let last = segments(dir.path()).pop().unwrap();
    let mut file = OpenOptions::new().append(true).open(&last).unwrap();
    file.write_all(&[0u8; 4096]).unwrap();
    drop(file);
    let store = WalLogStore::open(dir.path(), config()).unwrap();
    assert_eq!(store.all_entries(), written);
}

#[test]
fn a_flipped_bit_in_the_middle_of_a_segment_stops_start_up_naming_file_and_offset_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path(), 300);
    let victim = segments(dir.path())[1].clone();
    let len = std::fs::metadata(&victim).unwrap().len();
    flip_bit(&victim, len / 2);
    let before = directory_contents(dir.path());

    let err = WalLogStore::open(dir.path(), config()).unwrap_err();
    match &err {
        Error::Corrupt { path, offset, .. } => {
            assert_eq!(path, &victim);
            assert!(*offset <= len / 2 && *offset > 0, "offset {offset}");
        }
        other => panic!("expected corruption, got {other}"),
    }
    let message = err.to_string();
    assert!(message.contains(&victim.display().to_string()), "{message}");
    assert!(message.contains("byte offset"), "{message}");
    assert_eq!(directory_contents(dir.path()), before);
}

#[test]
fn a_bad_checksum_in_the_last_complete_record_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path(), 20);
    let last = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    flip_bit(&last, len - 3);
    let before = directory_contents(dir.path());
    assert!(matches!(
        WalLogStore::open(dir.path(), config()),
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(directory_contents(dir.path()), before);
}

#[test]
fn a_record_length_above_the_limit_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path(), 20);
    let first = segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&first).unwrap();
    // The first record starts right after the 64-byte header; its length follows
    // the 4-byte CRC.
    bytes[68..72].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&first, bytes).unwrap();
    let err = WalLogStore::open(dir.path(), config()).unwrap_err();
    assert!(err.to_string().contains("above the limit"), "{err}");
}

#[test]
fn a_missing_segment_is_a_gap_that_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path(), 300);
    let all = segments(dir.path());
    std::fs::remove_file(&all[2]).unwrap();
    let before = directory_contents(dir.path());
    let err = WalLogStore::open(dir.path(), config()).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(directory_contents(dir.path()), before);
}

#[test]
fn data_of_another_cluster_is_refused_naming_both_ids() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path(), 10);
    let mut other = config();
    other.cluster_id = 0xdef;
    let err = WalLogStore::open(dir.path(), other).unwrap_err();
    assert!(matches!(
        err,
        Error::ClusterIdMismatch {
            expected: 0xdef,
            found: 0xabc,
            ..
        }
    ));
    let message = err.to_string();
    assert!(
        message.contains("0x0000000000000abc") && message.contains("0x0000000000000def"),
        "{message}"
    );
}

#[test]
fn data_of_another_member_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path(), 10);
    let mut other = config();
    other.node_id = 2;
    assert!(matches!(
        WalLogStore::open(dir.path(), other),
        Err(Error::NodeIdMismatch {
            expected: 2,
            found: 1,
            ..
        })
    ));
}

#[test]
fn a_node_that_was_removed_from_the_cluster_refuses_to_start() {
    let wal = tempfile::tempdir().unwrap();
    let snaps = tempfile::tempdir().unwrap();
    {
        let mut store = WalLogStore::open(wal.path(), config()).unwrap();
        let change = |index, change| Entry {
            term: 1,
            index,
            payload: EntryPayload::ConfChange(change),
        };
        store
            .append(&[
                change(1, ConfChange::AddVoter(1)),
                change(2, ConfChange::AddVoter(2)),
                change(3, ConfChange::AddVoter(3)),
            ])
            .unwrap();
        store.sync().unwrap();
    }
    let recovered = recover(wal.path(), snaps.path(), config(), 2).unwrap();
    assert_eq!(recovered.membership, Membership::new([1, 2, 3]));
    drop(recovered);
    {
        let mut store = WalLogStore::open(wal.path(), config()).unwrap();
        store
            .append(&[Entry {
                term: 1,
                index: 4,
                payload: EntryPayload::ConfChange(ConfChange::Remove(1)),
            }])
            .unwrap();
        store.sync().unwrap();
    }
    let err = recover(wal.path(), snaps.path(), config(), 2).unwrap_err();
    assert!(matches!(err, Error::MemberRemoved { node_id: 1, .. }), "{err}");
    assert!(err.to_string().contains("removed"), "{err}");
}

#[test]
fn start_up_records_a_snapshot_saved_just_before_a_crash_and_refuses_a_missing_one() {
    let wal = tempfile::tempdir().unwrap();
    let snaps = tempfile::tempdir().unwrap();
    write_wal(wal.path(), 40);
    let meta = SnapshotMeta {
        index: 30,
        term: 2,
        membership: Membership::new([1]),
        timing: None,
    };
    let store = SnapshotStore::open(snaps.path(), CLUSTER, 2).unwrap();
    let mut writer = store.create(&meta).unwrap();
    writer.write_all(b"state").unwrap();
    writer.finish().unwrap();

    let recovered = recover(wal.path(), snaps.path(), config(), 2).unwrap();
    assert_eq!(recovered.store.snapshot_meta(), meta);
    assert_eq!(recovered.snapshot.unwrap().meta, meta);
    drop(recovered.store);

    for path in store.list().unwrap() {
        std::fs::remove_file(path).unwrap();
    }
    let err = recover(wal.path(), snaps.path(), config(), 2).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SnapshotMissing {
                wal_index: 30,
                found_index: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn compaction_removes_whole_segments_below_the_snapshot_and_the_rest_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_wal(dir.path(), 300);
    let before = segments(dir.path()).len();
    let mut store = WalLogStore::open(dir.path(), config()).unwrap();
    store
        .install_snapshot(SnapshotMeta {
            index: 250,
            term: 2,
            membership: Membership::new([1]),
            timing: None,
        })
        .unwrap();
    store.compact(250).unwrap();
    store.sync().unwrap();
    let after = segments(dir.path()).len();
    assert!(after < before, "{after} segments left of {before}");
    store.append(&entries(3, 301..=320)).unwrap();
    store.sync().unwrap();
    drop(store);

    let store = WalLogStore::open(dir.path(), config()).unwrap();
    assert_eq!(store.first_index(), 251);
    assert_eq!(store.snapshot_meta().index, 250);
    assert_eq!(
        store.hard_state(),
        HardState {
            term: 2,
            vote: 1,
            commit: 3
        }
    );
    let mut expected = written[250..].to_vec();
    expected.extend(entries(3, 301..=320));
    assert_eq!(store.all_entries(), expected);
}

#[test]
fn wal_dump_prints_segments_records_hard_state_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path(), 120);
    let mut out = Vec::new();
    let summary = dump_wal(dir.path(), true, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(summary.problems.is_empty(), "{text}");
    assert_eq!(summary.last_index, 120);
    assert!(
        text.contains("seq=1 cluster=0xabc node=0x1 first_index=1"),
        "{text}"
    );
    assert!(
        text.contains("entry (") && text.contains("index=120 term=2 normal 100 bytes"),
        "{text}"
    );
    assert!(text.contains("hard state: term=2 vote=1 commit=3"), "{text}");
    assert!(text.contains("problems: 0"), "{text}");

    let victim = segments(dir.path())[1].clone();
    flip_bit(&victim, 500);
    let mut out = Vec::new();
    let summary = dump_wal(dir.path(), false, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(summary.problems.len(), 1, "{text}");
    assert!(
        text.contains("PROBLEM") && text.contains("checksum mismatch"),
        "{text}"
    );
    assert!(text.contains(&victim.display().to_string()), "{text}");
}

/// Offsets of the record frames of a segment (after its 64-byte header).
fn frame_offsets(path: &Path) -> Vec<usize> {
    let bytes = std::fs::read(path).unwrap();
    let mut offsets = Vec::new();
    let mut at = 64;
    while at + 9 <= bytes.len() {
        offsets.push(at);
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 9 + len;
    }
    offsets
}

#[test]
fn a_record_cut_short_with_valid_records_after_it_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path(), 20);
    let last = segments(dir.path()).pop().unwrap();
    let offsets = frame_offsets(&last);
    assert!(offsets.len() >= 4, "{offsets:?}");
    // A damaged length field in the middle of the last segment makes that record
    // look like it runs past the end of the file, like a torn write would.
    let victim = offsets[offsets.len() / 2];
    let mut bytes = std::fs::read(&last).unwrap();
    bytes[victim + 4..victim + 8].copy_from_slice(&(1u32 << 20).to_le_bytes());
    std::fs::write(&last, bytes).unwrap();
    let before = directory_contents(dir.path());

    let err = WalLogStore::open(dir.path(), config()).unwrap_err();
    match &err {
        Error::Corrupt { path, offset, reason } => {
            assert_eq!(path, &last);
            assert_eq!(*offset, victim as u64);
            assert!(reason.contains("not a torn tail"), "{reason}");
        }
        other => panic!("expected corruption, got {other}"),
    }
    assert_eq!(directory_contents(dir.path()), before);
}

#[test]
fn missing_oldest_segments_not_covered_by_a_snapshot_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path(), 300);
    let all = segments(dir.path());
    assert!(all.len() > 2);
    std::fs::remove_file(&all[0]).unwrap();
    let before = directory_contents(dir.path());
    let err = WalLogStore::open(dir.path(), config()).unwrap_err();
    match &err {
        Error::Corrupt { path, reason, .. } => {
            assert_eq!(path, &all[1]);
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("expected corruption, got {other}"),
    }
    assert_eq!(directory_contents(dir.path()), before);
}

#[test]
fn records_that_straddle_the_recovery_read_chunks_or_exceed_them_recover_intact() {
    // Recovery reads 4 MiB at a time; entries of odd sizes cross every chunk boundary
    // and one entry is larger than a whole chunk.
    let dir = tempfile::tempdir().unwrap();
    let mut config = WalConfig::new(CLUSTER, 1);
    config.segment_bytes_max = 64 << 20;
    let sizes = (1..=700u64).map(|i| {
        if i == 350 {
            6 << 20
        } else {
            9_000 + (i * 7919) % 20_000
        }
    });
    let written: Vec<Entry> = sizes
        .enumerate()
        .map(|(i, len)| Entry {
            term: 1,
            index: i as u64 + 1,
            payload: EntryPayload::Normal(Bytes::from(
                (0..len)
                    .map(|b| (b as u8).wrapping_mul(i as u8 | 1))
                    .collect::<Vec<u8>>(),
            )),
        })
        .collect();
    {
        let mut store = WalLogStore::open(dir.path(), config.clone()).unwrap();
        for chunk in written.chunks(50) {
            store.append(chunk).unwrap();
            store.sync().unwrap();
        }
    }
    let last = segments(dir.path()).pop().unwrap();
    assert!(std::fs::metadata(&last).unwrap().len() > 12 << 20);
    // A torn tail after the last chunk boundary is still cut off.
    let mut file = OpenOptions::new().append(true).open(&last).unwrap();
    file.write_all(&[0x11, 0x22, 0x33, 0x44, 60, 0, 0, 0, 1, 9, 9, 9])
        .unwrap();
    drop(file);
    let store = WalLogStore::open(dir.path(), config).unwrap();
    assert_eq!(store.all_entries(), written);
}

/// The real file tracks what an fdatasync made durable, where the system call is made:
/// the crash point `wal-power-loss` cuts a segment back to exactly that, so a WAL that
/// acknowledged without an fsync loses what it acknowledged (the robustness runner's
/// power-loss faults rely on it).
#[test]
fn std_file_tracks_its_durable_length() {
    use kuberaft_node::storage::{StdFs, WalFs};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("segment");
    let mut file = StdFs.create_new(&path).unwrap();
    assert_eq!(file.durable_len(), Some(0));
    file.write_all(b"0123456789").unwrap();
    assert_eq!(file.durable_len(), Some(0), "a write alone is not durable");
    file.sync_data().unwrap();
    assert_eq!(file.durable_len(), Some(10));
    file.write_all(b"abcdef").unwrap();
    assert_eq!(file.durable_len(), Some(10));
    file.truncate(4).unwrap();
    assert_eq!(file.durable_len(), Some(4), "a cut shortens what is durable");
    file.write_all(b"xy").unwrap();
    file.sync_data().unwrap();
    assert_eq!(file.durable_len(), Some(6));
    drop(file);
    assert_eq!(std::fs::read(&path).unwrap(), b"0123xy");
    // Reopened: what the file holds counts as durable (the WAL fsyncs it on open).
    let file = StdFs.open_append(&path).unwrap();
    assert_eq!(file.durable_len(), Some(6));
}
