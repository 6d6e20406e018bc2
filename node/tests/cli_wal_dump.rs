//! `raft-node wal dump` as a user runs it: a real process on a real directory.

use std::process::Command;

use bytes::Bytes;
use kuberaft_node::raft::types::{Entry, EntryPayload, HardState};
use kuberaft_node::storage::{LogStore, WalConfig, WalLogStore};

fn raft_node() -> Command {
    Command::new(env!("CARGO_BIN_EXE_raft-node"))
}

#[test]
fn wal_dump_prints_a_healthy_directory_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = WalLogStore::open(dir.path(), WalConfig::new(0x77, 3)).unwrap();
    let entries: Vec<Entry> = (1..=5)
        .map(|index| Entry {
            term: 2,
            index,
            payload: EntryPayload::Normal(Bytes::from_static(b"hello")),
        })
        .collect();
    store.append(&entries).unwrap();
    store
        .set_hard_state(HardState {
            term: 2,
            vote: 3,
            commit: 4,
        })
        .unwrap();
    store.sync().unwrap();
    drop(store);

    let out = raft_node()
        .args(["wal", "dump", "--records", "--wal-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("cluster=0x77 node=0x3"), "{text}");
    assert!(text.contains("index=5 term=2 normal 5 bytes"), "{text}");
    assert!(text.contains("hard state: term=2 vote=3 commit=4"), "{text}");
}

#[test]
fn wal_dump_of_a_missing_directory_fails_with_a_clear_message() {
    let out = raft_node()
        .args(["wal", "dump", "--wal-dir", "/nonexistent/kuberaft-wal"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--wal-dir /nonexistent/kuberaft-wal: not a directory"),
        "{err}"
    );
}
