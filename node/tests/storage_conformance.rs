//! One conformance suite for every `LogStore`: the WAL-backed store and the in-memory
//! store must answer every case the same way. Each case ends by "restarting" the store
//! (the WAL store is reopened from disk, the in-memory one is kept) and checking again,
//! so the durable store is also held to surviving a clean restart.

use bytes::Bytes;
use kuberaft_node::raft::types::{
    ConfChange, Entry, EntryPayload, HardState, Membership, SnapshotMeta, Timing,
};
use kuberaft_node::storage::{Error, LogStore, MemLogStore, WalConfig, WalLogStore};

/// Creates stores and restarts them.
trait Harness {
    type Store: LogStore;
    fn create(&mut self, retain_tail_entries: u64) -> Self::Store;
    fn restart(&mut self, store: Self::Store) -> Self::Store;
}

struct MemHarness;

impl Harness for MemHarness {
    type Store = MemLogStore;
    fn create(&mut self, retain_tail_entries: u64) -> MemLogStore {
        MemLogStore::new(retain_tail_entries)
    }
    fn restart(&mut self, store: MemLogStore) -> MemLogStore {
        store
    }
}

struct WalHarness {
    dir: tempfile::TempDir,
    config: Option<WalConfig>,
}

impl WalHarness {
    fn new() -> Self {
        WalHarness {
            dir: tempfile::tempdir().unwrap(),
            config: None,
        }
    }
}

impl Harness for WalHarness {
    type Store = WalLogStore;
    fn create(&mut self, retain_tail_entries: u64) -> WalLogStore {
        let mut config = WalConfig::new(0xc1, 1);
        // Small segments so that rotation and segment removal happen in every case.
        config.segment_bytes_max = 4096;
        config.retain_tail_entries = retain_tail_entries;
        self.config = Some(config.clone());
        WalLogStore::open(self.dir.path(), config).unwrap()
    }
    fn restart(&mut self, mut store: WalLogStore) -> WalLogStore {
        store.sync().unwrap();
        drop(store);
        WalLogStore::open(self.dir.path(), self.config.clone().unwrap()).unwrap()
    }
}

fn normal(term: u64, index: u64) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Normal(Bytes::from(format!("cmd-{term}-{index}-{}", "x".repeat(40)))),
    }
}

fn run(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes.map(|i| normal(term, i)).collect()
}

fn all<S: LogStore>(store: &S) -> Vec<Entry> {
    store
        .entries(store.first_index(), store.last_index() + 1, u64::MAX)
        .unwrap()
}

fn meta(index: u64, term: u64, voters: &[u64]) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term,
        membership: Membership::new(voters.iter().copied()),
        timing: Some(Timing::default()),
    }
}

/// Runs `check` now and again after a restart.
fn check_twice<H: Harness>(h: &mut H, store: H::Store, check: impl Fn(&H::Store)) -> H::Store {
    check(&store);
    let store = h.restart(store);
    check(&store);
    store
}

fn a_fresh_store_is_empty<H: Harness>(h: &mut H) {
    let store = h.create(0);
    check_twice(h, store, |s| {
        assert_eq!(s.first_index(), 1);
        assert_eq!(s.last_index(), 0);
        assert_eq!(s.last_term(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
        assert_eq!(s.hard_state(), HardState::default());
        assert_eq!(s.membership(), Membership::default());
        assert!(s.entries(1, 1, u64::MAX).unwrap().is_empty());
    });
}

fn appended_entries_read_back_in_order_within_the_byte_limit<H: Harness>(h: &mut H) {
    let mut store = h.create(0);
    let entries = run(1, 1..=200);
    for chunk in entries.chunks(7) {
        store.append(chunk).unwrap();
    }
    check_twice(h, store, |s| {
        assert_eq!(s.last_index(), 200);
        assert_eq!(s.last_term(), 1);
        assert_eq!(all(s), entries);
        assert_eq!(s.entries(10, 20, u64::MAX).unwrap(), entries[9..19].to_vec());
        let one = entries[9].size_bytes() as u64;
        assert_eq!(s.entries(10, 20, one * 3).unwrap().len(), 3);
        assert_eq!(s.entries(10, 20, 0).unwrap().len(), 1, "at least one entry");
        assert!(matches!(
            s.entries(10, 202, u64::MAX),
            Err(Error::Unavailable { .. })
        ));
    });
}

fn appending_at_or_below_the_last_index_replaces_the_suffix<H: Harness>(h: &mut H) {
    let mut store = h.create(0);
    store.append(&run(1, 1..=50)).unwrap();
    store.append(&run(2, 30..=40)).unwrap();
    let mut expected = run(1, 1..=29);
    expected.extend(run(2, 30..=40));
    let store = check_twice(h, store, |s| {
        assert_eq!(s.last_index(), 40);
        assert_eq!(s.last_term(), 2);
        assert_eq!(all(s), expected);
    });
    let mut store = store;
    store.append(&run(3, 41..=41)).unwrap();
    store.append(&run(3, 41..=45)).unwrap();
    check_twice(h, store, |s| {
        assert_eq!(s.last_index(), 45);
        assert_eq!(s.term(41).unwrap(), 3);
    });
}

fn a_gap_or_a_broken_batch_is_refused_and_changes_nothing<H: Harness>(h: &mut H) {
    let mut store = h.create(0);
    store.append(&run(2, 1..=10)).unwrap();
    assert!(matches!(
        store.append(&run(2, 12..=13)),
        Err(Error::LogGap { last: 10, got: 12 })
    ));
    let mut broken = run(2, 11..=12);
    broken[1].index = 14;
    assert!(matches!(store.append(&broken), Err(Error::NotConsecutive { .. })));
    assert!(matches!(
        store.append(&run(1, 11..=11)),
        Err(Error::NotConsecutive { .. })
    ));
    check_twice(h, store, |s| {
        assert_eq!(s.last_index(), 10);
        assert_eq!(all(s), run(2, 1..=10));
    });
}

fn hard_state_survives_and_its_term_never_goes_back<H: Harness>(h: &mut H) {
    let mut store = h.create(0);
    store
        .set_hard_state(HardState {
            term: 3,
            vote: 2,
            commit: 0,
        })
        .unwrap();
    store
        .set_hard_state(HardState {
            term: 4,
            vote: 0,
            commit: 0,
        })
        .unwrap();
    assert!(matches!(
        store.set_hard_state(HardState {
            term: 3,
            vote: 1,
            commit: 0
        }),
        Err(Error::TermWentBack { current: 4, got: 3 })
    ));
    check_twice(h, store, |s| {
        assert_eq!(
            s.hard_state(),
            HardState {
                term: 4,
                vote: 0,
                commit: 0
            }
        );
    });
}

fn a_snapshot_that_agrees_with_the_log_keeps_the_suffix<H: Harness>(h: &mut H) {
    let mut store = h.create(0);
    store.append(&run(1, 1..=100)).unwrap();
    store.install_snapshot(meta(60, 1, &[1, 2, 3])).unwrap();
    check_twice(h, store, |s| {
        assert_eq!(s.snapshot_meta(), meta(60, 1, &[1, 2, 3]));
        assert_eq!(s.last_index(), 100);
        assert_eq!(s.entries(61, 101, u64::MAX).unwrap(), run(1, 61..=100));
    });
}

fn a_snapshot_that_conflicts_with_the_log_discards_it<H: Harness>(h: &mut H) {
    let mut store = h.create(0);
    store.append(&run(1, 1..=100)).unwrap();
    store.install_snapshot(meta(150, 4, &[1, 2])).unwrap();
    let store = check_twice(h, store, |s| {
        assert_eq!(s.first_index(), 151);
        assert_eq!(s.last_index(), 150);
        assert_eq!(s.last_term(), 4);
        assert_eq!(s.term(150).unwrap(), 4);
        assert!(matches!(
            s.entries(100, 151, u64::MAX),
            Err(Error::Compacted { .. })
        ));
    });
    let mut store = store;
    assert!(matches!(
        store.install_snapshot(meta(140, 4, &[1])),
        Err(Error::SnapshotOlder {
            current: 150,
            got: 140
        })
    ));
    assert!(matches!(
        store.append(&run(4, 150..=151)),
        Err(Error::Compacted { .. })
    ));
    store.append(&run(5, 151..=160)).unwrap();
    check_twice(h, store, |s| {
        assert_eq!(all(s), run(5, 151..=160));
    });
}

fn compaction_drops_entries_up_to_the_index<H: Harness>(h: &mut H) {
    let mut store = h.create(0);
    store.append(&run(1, 1..=300)).unwrap();
    store.install_snapshot(meta(250, 1, &[1])).unwrap();
    assert!(matches!(
        store.compact(251),
        Err(Error::CompactBeyondSnapshot {
            upto: 251,
            snapshot_index: 250
        })
    ));
    store.compact(200).unwrap();
    check_twice(h, store, |s| {
        assert_eq!(s.first_index(), 201);
        assert_eq!(s.term(200).unwrap(), 1);
        assert_eq!(s.term(250).unwrap(), 1);
        assert!(matches!(s.term(150), Err(Error::Compacted { .. })));
        assert!(matches!(
            s.entries(200, 210, u64::MAX),
            Err(Error::Compacted { .. })
        ));
        assert_eq!(all(s), run(1, 201..=300));
    });
}

fn compaction_keeps_the_configured_tail_before_the_snapshot<H: Harness>(h: &mut H) {
    let mut store = h.create(30);
    store.append(&run(1, 1..=300)).unwrap();
    store.install_snapshot(meta(250, 1, &[1])).unwrap();
    store.compact(250).unwrap();
    check_twice(h, store, |s| {
        assert_eq!(s.first_index(), 221);
        assert_eq!(all(s), run(1, 221..=300));
    });
}

fn membership_follows_the_snapshot_and_the_changes_in_the_log<H: Harness>(h: &mut H) {
    let mut store = h.create(0);
    store.install_snapshot(meta(10, 1, &[1, 2, 3])).unwrap();
    let change = |index, change| Entry {
        term: 2,
        index,
        payload: EntryPayload::ConfChange(change),
    };
    store
        .append(&[
            change(11, ConfChange::AddLearner(4)),
            normal(2, 12),
            change(13, ConfChange::Promote(4)),
            change(14, ConfChange::Remove(2)),
        ])
        .unwrap();
    let store = check_twice(h, store, |s| {
        assert_eq!(s.membership(), Membership::new([1, 3, 4]));
    });
    let mut store = store;
    // A truncation that removes a change reverts it.
    store.append(&run(3, 14..=15)).unwrap();
    check_twice(h, store, |s| {
        assert_eq!(s.membership(), Membership::new([1, 2, 3, 4]));
    });
}

macro_rules! conformance_suite {
    ($module:ident, $harness:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn a_fresh_store_is_empty() {
                super::a_fresh_store_is_empty(&mut $harness);
            }
            #[test]
            fn appended_entries_read_back_in_order_within_the_byte_limit() {
                super::appended_entries_read_back_in_order_within_the_byte_limit(&mut $harness);
            }
            #[test]
            fn appending_at_or_below_the_last_index_replaces_the_suffix() {
                super::appending_at_or_below_the_last_index_replaces_the_suffix(&mut $harness);
            }
            #[test]
            fn a_gap_or_a_broken_batch_is_refused_and_changes_nothing() {
                super::a_gap_or_a_broken_batch_is_refused_and_changes_nothing(&mut $harness);
            }
            #[test]
            fn hard_state_survives_and_its_term_never_goes_back() {
                super::hard_state_survives_and_its_term_never_goes_back(&mut $harness);
            }
            #[test]
            fn a_snapshot_that_agrees_with_the_log_keeps_the_suffix() {
                super::a_snapshot_that_agrees_with_the_log_keeps_the_suffix(&mut $harness);
            }
            #[test]
            fn a_snapshot_that_conflicts_with_the_log_discards_it() {
                super::a_snapshot_that_conflicts_with_the_log_discards_it(&mut $harness);
            }
            #[test]
            fn compaction_drops_entries_up_to_the_index() {
                super::compaction_drops_entries_up_to_the_index(&mut $harness);
            }
            #[test]
            fn compaction_keeps_the_configured_tail_before_the_snapshot() {
                super::compaction_keeps_the_configured_tail_before_the_snapshot(&mut $harness);
            }
            #[test]
            fn membership_follows_the_snapshot_and_the_changes_in_the_log() {
                super::membership_follows_the_snapshot_and_the_changes_in_the_log(&mut $harness);
            }
        }
    };
}

conformance_suite!(in_memory_store, MemHarness);
conformance_suite!(wal_store, WalHarness::new());
