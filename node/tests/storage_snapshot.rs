//! The snapshot store: streaming, atomic publication, retention, damage detection.

use std::io::{Read, Write};

use kuberaft_node::raft::types::{Membership, SnapshotMeta, Timing};
use kuberaft_node::storage::{Error, SnapshotStore};

const CLUSTER: u64 = 0x5eed;

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: 3,
        membership: Membership::new([1, 2, 3]),
        timing: Some(Timing::default()),
    }
}

/// Deterministic data of `len` bytes, written in odd-sized chunks.
fn write_snapshot(store: &SnapshotStore, index: u64, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 + index as usize) as u8).collect();
    let mut writer = store.create(&meta(index)).unwrap();
    for chunk in data.chunks(7919) {
        writer.write_all(chunk).unwrap();
    }
    writer.finish().unwrap();
    data
}

#[test]
fn a_snapshot_streams_out_and_back_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), CLUSTER, 3).unwrap();
    let data = write_snapshot(&store, 10, 3 << 20);
    let info = store.latest().unwrap().unwrap();
    assert_eq!(info.meta, meta(10));
    assert_eq!(info.data_bytes, data.len() as u64);
    let mut reader = store.open_reader(&info).unwrap();
    let mut read = Vec::new();
    reader.read_to_end(&mut read).unwrap();
    assert_eq!(read, data);
}

#[test]
fn only_the_newest_k_snapshots_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), CLUSTER, 2).unwrap();
    for index in [5, 10, 15, 20] {
        write_snapshot(&store, index, 1000);
    }
    let kept = store.list().unwrap();
    assert_eq!(kept.len(), 2);
    assert_eq!(store.latest().unwrap().unwrap().meta.index, 20);
    assert!(kept[1].to_string_lossy().contains(&format!("{:016x}", 15)));
}

#[test]
fn a_half_written_snapshot_is_ignored_and_removed_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), CLUSTER, 2).unwrap();
    write_snapshot(&store, 5, 1000);
    let mut writer = store.create(&meta(9)).unwrap();
    writer.write_all(&[1u8; 5000]).unwrap();
    writer.flush().unwrap();
    std::mem::forget(writer); // a crash: no finish, no clean-up
    let store = SnapshotStore::open(dir.path(), CLUSTER, 2).unwrap();
    assert_eq!(store.latest().unwrap().unwrap().meta.index, 5);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn a_flipped_bit_in_a_snapshot_is_detected_and_the_older_one_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), CLUSTER, 3).unwrap();
    write_snapshot(&store, 5, 100_000);
    write_snapshot(&store, 9, 100_000);
    let newest = store.list().unwrap()[0].clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&newest, bytes).unwrap();

    let err = store.verify(&newest).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert_eq!(store.latest().unwrap().unwrap().meta.index, 5);
}

#[test]
fn a_snapshot_of_another_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), CLUSTER, 3).unwrap();
    write_snapshot(&store, 5, 10);
    let other = SnapshotStore::open(dir.path(), 0xbad, 3).unwrap();
    assert!(matches!(
        other.latest(),
        Err(Error::ClusterIdMismatch {
            expected: 0xbad,
            found: CLUSTER,
            ..
        })
    ));
}
