//! The group-commit writer task.

use std::sync::Arc;

use bytes::Bytes;
use kuberaft_node::raft::types::{Entry, EntryPayload, HardState};
use kuberaft_node::storage::{
    CommitMode, FaultFs, LogStore, PersistRequest, WalConfig, WalLogStore, WalWriter, WriterConfig,
};

fn entry(index: u64) -> Entry {
    Entry {
        term: 1,
        index,
        payload: EntryPayload::Normal(Bytes::from(vec![7u8; 256])),
    }
}

fn open(dir: &std::path::Path) -> (WalLogStore, kuberaft_node::storage::FaultControl) {
    let (fs, control) = FaultFs::new();
    let store = WalLogStore::open_with_fs(dir, WalConfig::new(1, 1), Arc::new(fs)).unwrap();
    (store, control)
}

#[tokio::test]
async fn queued_submissions_share_one_fsync_and_are_acknowledged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (store, control) = open(dir.path());
    let (writer, task) = WalWriter::spawn(store, WriterConfig::default()).unwrap();
    let mut acks = Vec::new();
    for index in 1..=100 {
        acks.push(
            writer
                .enqueue(vec![PersistRequest::Entries(vec![entry(index)])])
                .await
                .unwrap(),
        );
    }
    for (i, ack) in acks.into_iter().enumerate() {
        assert_eq!(ack.await.unwrap().unwrap(), i as u64 + 1);
    }
    assert_eq!(*writer.durable_seq().borrow(), 100);
    let histogram = writer.fsync_histogram();
    assert_eq!(histogram.submissions, 100);
    assert!(
        histogram.count < 10,
        "{} fsyncs for 100 queued submissions",
        histogram.count
    );
    assert!(control.syncs() < 10);
    drop(writer);
    let store = task.await.unwrap();
    assert_eq!(store.last_index(), 100);
}

#[tokio::test]
async fn per_submission_mode_issues_one_fsync_per_submission() {
    let dir = tempfile::tempdir().unwrap();
    let (store, control) = open(dir.path());
    let config = WriterConfig {
        mode: CommitMode::PerSubmission,
        ..WriterConfig::default()
    };
    let syncs_at_start = control.syncs(); // creating the first segment syncs once
    let (writer, task) = WalWriter::spawn(store, config).unwrap();
    let mut acks = Vec::new();
    for index in 1..=20 {
        acks.push(
            writer
                .enqueue(vec![PersistRequest::Entries(vec![entry(index)])])
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap().unwrap();
    }
    assert_eq!(writer.fsync_histogram().count, 20);
    assert_eq!(control.syncs() - syncs_at_start, 20);
    drop(writer);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_all_become_durable_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = WalLogStore::open(dir.path(), WalConfig::new(1, 1)).unwrap();
    let (writer, task) = WalWriter::spawn(store, WriterConfig::default()).unwrap();
    // Indexes must reach the writer in order, so each appender takes the next index
    // and enqueues under one lock, then waits for durability outside it.
    let next = Arc::new(tokio::sync::Mutex::new(1u64));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let writer = writer.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let ack = {
                    let mut guard = next.lock().await;
                    let ack = writer
                        .enqueue(vec![PersistRequest::Entries(vec![entry(*guard)])])
                        .await
                        .unwrap();
                    *guard += 1;
                    ack
                };
                ack.await.unwrap().unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    writer
        .submit(vec![PersistRequest::HardState(HardState {
            term: 1,
            vote: 1,
            commit: 320,
        })])
        .await
        .unwrap();
    drop(writer);
    drop(task.await.unwrap());
    let store = WalLogStore::open(dir.path(), WalConfig::new(1, 1)).unwrap();
    assert_eq!(store.last_index(), 320);
    assert_eq!(store.hard_state().commit, 320);
}

#[tokio::test]
async fn a_refused_request_fails_only_its_own_submission() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let (writer, _task) = WalWriter::spawn(store, WriterConfig::default()).unwrap();
    let good = writer
        .enqueue(vec![PersistRequest::Entries(vec![entry(1)])])
        .await
        .unwrap();
    let gap = writer
        .enqueue(vec![PersistRequest::Entries(vec![entry(5)])])
        .await
        .unwrap();
    let next = writer
        .enqueue(vec![PersistRequest::Entries(vec![entry(2)])])
        .await
        .unwrap();
    assert!(good.await.unwrap().is_ok());
    assert!(gap.await.unwrap().is_err());
    assert!(next.await.unwrap().is_ok());
}
