//! The log store contract and the in-memory store.
//!
//! [`MemLogStore`] is both the in-memory store (for tests and for the runtime's view
//! of the log) and the replay engine of the WAL: a request is first *planned* into
//! records ([`MemLogStore::plan`], which validates and changes nothing), then each
//! record is applied with [`MemLogStore::apply_record`]. The WAL writes exactly those
//! records and replays them through the same function at start-up, so the in-memory
//! and the durable store cannot disagree on the rules.

use std::collections::VecDeque;

use crate::raft::types::{Entry, EntryPayload, HardState, Index, Membership, SnapshotMeta, Term};
use crate::storage::codec::{Record, RECORD_BODY_BYTES_MAX};
use crate::storage::{Error, Result};

/// One persistence request of the Raft core, in the order the core emitted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistRequest {
    /// Append these entries. When the first index is at or below the last stored
    /// index, everything from that index on is replaced.
    Entries(Vec<Entry>),
    HardState(HardState),
    /// A snapshot with this metadata was installed or built: the log now starts after
    /// `meta.index` (a suffix that agrees with the snapshot is kept).
    Snapshot(SnapshotMeta),
    /// Entries up to this index may be dropped. The store keeps its configured
    /// trailing tail before the snapshot index so that slow followers can still be
    /// served from the log instead of a whole snapshot.
    Compact(Index),
}

impl PersistRequest {
    /// An estimate of the bytes this request writes, used to bound group commits.
    pub fn size_bytes(&self) -> usize {
        match self {
            PersistRequest::Entries(entries) => entries.iter().map(|e| e.size_bytes() + 16).sum::<usize>(),
            PersistRequest::HardState(_) => 40,
            PersistRequest::Snapshot(meta) => {
                40 + 8 * (meta.membership.voters.len() + meta.membership.learners.len())
            }
            PersistRequest::Compact(_) => 20,
        }
    }
}

/// What the runtime needs from a Raft log store, durable or not.
///
/// Writes may be buffered until [`LogStore::sync`]; only after `sync` returns `Ok`
/// is everything written before it durable.
pub trait LogStore {
    /// Applies one persistence request; on error nothing changed.
    fn persist(&mut self, request: PersistRequest) -> Result<()>;

    /// Makes every accepted request durable.
    fn sync(&mut self) -> Result<()>;

    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        self.persist(PersistRequest::Entries(entries.to_vec()))
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<()> {
        self.persist(PersistRequest::HardState(hard_state))
    }

    fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<()> {
        self.persist(PersistRequest::Snapshot(meta))
    }

    fn compact(&mut self, upto: Index) -> Result<()> {
        self.persist(PersistRequest::Compact(upto))
    }

    /// The entries in `[low, high)`, at most `max_bytes` of them by
    /// [`Entry::size_bytes`] but always at least one when the range is not empty.
    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>>;

    /// The term of the entry at `index`, also for the snapshot's last index.
    fn term(&self, index: Index) -> Result<Term>;

    /// The first index still held in the log.
    fn first_index(&self) -> Index;
    fn last_index(&self) -> Index;
    fn last_term(&self) -> Term;
    fn hard_state(&self) -> HardState;
    fn snapshot_meta(&self) -> SnapshotMeta;
    /// The newest membership: the snapshot's plus every membership change in the log
    /// after it (a change takes effect as soon as it is in the log).
    fn membership(&self) -> Membership;
}

/// The Raft log in memory. See the module documentation for why it is also the
/// replay engine of the WAL.
#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    /// The index just before the first held entry and its term.
    base_index: Index,
    base_term: Term,
    entries: VecDeque<Entry>,
    hard_state: HardState,
    snapshot: SnapshotMeta,
    /// Membership after each membership change in the log past the snapshot, in
    /// index order; the last one is in force.
    conf_changes: Vec<(Index, Membership)>,
    retain_tail_entries: u64,
}

impl MemLogStore {
    /// `retain_tail_entries`: how many entries before the snapshot index survive a
    /// compaction.
    pub fn new(retain_tail_entries: u64) -> Self {
        MemLogStore {
            retain_tail_entries,
            ..MemLogStore::default()
        }
    }

    /// A log whose entries start after `base_index` (whose term is `base_term`); the
    /// entries before it are gone. Used when replay starts at a later segment.
    pub(crate) fn with_base(retain_tail_entries: u64, base_index: Index, base_term: Term) -> Self {
        MemLogStore {
            base_index,
            base_term,
            retain_tail_entries,
            ..MemLogStore::default()
        }
    }

    pub fn retain_tail_entries(&self) -> u64 {
        self.retain_tail_entries
    }

    /// The number of entries held in memory.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The index just before the first held entry.
    pub fn base_index(&self) -> Index {
        self.base_index
    }

    fn last(&self) -> Index {
        self.base_index + self.entries.len() as u64
    }

    fn term_of(&self, index: Index) -> Option<Term> {
        if index == self.base_index {
            return Some(self.base_term);
        }
        if index > self.base_index && index <= self.last() {
            return Some(self.entries[(index - self.base_index - 1) as usize].term);
        }
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        None
    }

    /// Validates `request` against the current log and returns the records that
    /// express it. Changes nothing, so a refused request leaves no trace.
    pub fn plan(&self, request: &PersistRequest) -> Result<Vec<Record>> {
        match request {
            PersistRequest::Entries(entries) => self.plan_entries(entries),
            PersistRequest::HardState(hs) => {
                if hs.term < self.hard_state.term {
                    return Err(Error::TermWentBack {
                        current: self.hard_state.term,
                        got: hs.term,
                    });
                }
                Ok(vec![Record::HardState(*hs)])
            }
            PersistRequest::Snapshot(meta) => {
                if meta.index < self.snapshot.index {
                    return Err(Error::SnapshotOlder {
                        current: self.snapshot.index,
                        got: meta.index,
                    });
                }
                Ok(vec![Record::Snapshot(meta.clone())])
            }
            PersistRequest::Compact(upto) => {
                if *upto > self.snapshot.index {
                    return Err(Error::CompactBeyondSnapshot {
                        upto: *upto,
                        snapshot_index: self.snapshot.index,
                    });
                }
                let effective = (*upto).min(self.snapshot.index.saturating_sub(self.retain_tail_entries));
                if effective <= self.base_index {
                    return Ok(Vec::new());
                }
                Ok(vec![Record::Compact { upto: effective }])
            }
        }
    }

    fn plan_entries(&self, entries: &[Entry]) -> Result<Vec<Record>> {
        let Some(first) = entries.first() else {
            return Ok(Vec::new());
        };
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 || pair[1].term < pair[0].term {
                return Err(Error::NotConsecutive {
                    reason: format!(
                        "({}, term {}) followed by ({}, term {})",
                        pair[0].index, pair[0].term, pair[1].index, pair[1].term
                    ),
                });
            }
        }
        for entry in entries {
            // Checked here rather than at encode time so that the in-memory store and
            // the WAL refuse the same entries.
            let len = entry.size_bytes() as u64;
            if len > RECORD_BODY_BYTES_MAX as u64 - 32 {
                return Err(Error::TooLarge {
                    what: "entry",
                    len,
                    max: RECORD_BODY_BYTES_MAX as u64 - 32,
                });
            }
        }
        let floor = self.base_index.max(self.snapshot.index);
        if first.index <= floor {
            return Err(Error::Compacted {
                index: first.index,
                first: floor + 1,
            });
        }
        let last = self.last();
        if first.index > last + 1 {
            return Err(Error::LogGap {
                last,
                got: first.index,
            });
        }
        let prev_term = self.term_of(first.index - 1).unwrap_or(0);
        if first.term < prev_term {
            return Err(Error::NotConsecutive {
                reason: format!(
                    "entry {} has term {}, below the term {} of the entry before it",
                    first.index, first.term, prev_term
                ),
            });
        }
        let mut records = Vec::with_capacity(entries.len() + 1);
        if first.index <= last {
            records.push(Record::Truncate { from: first.index });
        }
        records.extend(entries.iter().cloned().map(Record::Entry));
        Ok(records)
    }

    /// Applies one record. During replay an error here means the WAL is corrupt (a
    /// gap, a term going back); for planned records it cannot happen.
    pub fn apply_record(&mut self, record: &Record) -> Result<(), String> {
        match record {
            Record::Entry(entry) => self.append_entry(entry.clone()),
            other => self.apply_other(other),
        }
    }

    /// [`MemLogStore::apply_record`] for a record the caller no longer needs: an entry
    /// moves into the log without a clone (replay of a large WAL).
    pub fn apply_record_owned(&mut self, record: Record) -> Result<(), String> {
        match record {
            Record::Entry(entry) => self.append_entry(entry),
            other => self.apply_other(&other),
        }
    }

    /// Makes room for `additional` more entries at once, so that a long replay does
    /// not copy the entry queue each time it doubles.
    pub fn reserve_entries(&mut self, additional: usize) {
        self.entries.reserve(additional);
    }

    fn append_entry(&mut self, entry: Entry) -> Result<(), String> {
        let last = self.last();
        if entry.index != last + 1 {
            return Err(format!(
                "gap in the log: expected entry {}, found entry {}",
                last + 1,
                entry.index
            ));
        }
        let last_term = self.term_of(last).unwrap_or(0);
        if entry.term < last_term {
            return Err(format!(
                "entry {} has term {} below the previous term {}",
                entry.index, entry.term, last_term
            ));
        }
        if let EntryPayload::ConfChange(change) = &entry.payload {
            if entry.index > self.snapshot.index {
                self.push_conf_change(entry.index, change);
            }
        }
        self.entries.push_back(entry);
        Ok(())
    }

    fn apply_other(&mut self, record: &Record) -> Result<(), String> {
        match record {
            Record::Entry(entry) => return self.append_entry(entry.clone()),
            Record::HardState(hs) => {
                if hs.term < self.hard_state.term {
                    return Err(format!(
                        "hard state term went back from {} to {}",
                        self.hard_state.term, hs.term
                    ));
                }
                self.hard_state = *hs;
            }
            Record::Truncate { from } => {
                let from = *from;
                if from <= self.base_index || from <= self.snapshot.index || from > self.last() + 1 {
                    return Err(format!(
                        "truncation from {from} outside the log ({}..={}, snapshot at {})",
                        self.base_index + 1,
                        self.last(),
                        self.snapshot.index
                    ));
                }
                self.entries.truncate((from - self.base_index - 1) as usize);
                while self.conf_changes.last().is_some_and(|(i, _)| *i >= from) {
                    self.conf_changes.pop();
                }
            }
            Record::Snapshot(meta) => {
                if meta.index < self.snapshot.index {
                    return Err(format!(
                        "snapshot at {} is older than the snapshot at {}",
                        meta.index, self.snapshot.index
                    ));
                }
                // Raft's rule: a log that agrees with the snapshot at its last index
                // keeps its suffix; any other log is discarded.
                if self.term_of(meta.index) != Some(meta.term) {
                    self.entries.clear();
                    self.base_index = meta.index;
                    self.base_term = meta.term;
                }
                self.snapshot = meta.clone();
                self.rebuild_conf_changes();
            }
            Record::SegmentSnapshot(meta) => {
                if *meta == self.snapshot {
                    return Ok(());
                }
                if meta.index < self.snapshot.index {
                    return Err(format!(
                        "restated snapshot at {} is older than the snapshot at {}",
                        meta.index, self.snapshot.index
                    ));
                }
                self.snapshot = meta.clone();
                self.rebuild_conf_changes();
            }
            Record::Compact { upto } => {
                let upto = *upto;
                if upto > self.snapshot.index {
                    return Err(format!(
                        "compaction to {upto} beyond the snapshot at {}",
                        self.snapshot.index
                    ));
                }
                if upto <= self.base_index {
                    return Ok(());
                }
                let Some(term) = self.term_of(upto) else {
                    return Err(format!(
                        "compaction to {upto} past the last index {}",
                        self.last()
                    ));
                };
                let drop = (upto - self.base_index) as usize;
                self.entries.drain(..drop.min(self.entries.len()));
                self.base_index = upto;
                self.base_term = term;
            }
        }
        Ok(())
    }

    fn push_conf_change(&mut self, index: Index, change: &crate::raft::types::ConfChange) {
        let current = self.current_membership();
        match current.apply_change(change) {
            Ok(next) => self.conf_changes.push((index, next)),
            // The core validates changes before proposing them; one that does not
            // apply (e.g. replayed onto an older snapshot's membership) changes nothing.
            Err(err) => {
                tracing::warn!(index, ?change, %err, "membership change in the log does not apply")
            }
        }
    }

    fn current_membership(&self) -> &Membership {
        self.conf_changes
            .last()
            .map(|(_, m)| m)
            .unwrap_or(&self.snapshot.membership)
    }

    fn rebuild_conf_changes(&mut self) {
        self.conf_changes.clear();
        let changes: Vec<(Index, crate::raft::types::ConfChange)> = self
            .entries
            .iter()
            .filter(|e| e.index > self.snapshot.index)
            .filter_map(|e| match &e.payload {
                EntryPayload::ConfChange(change) => Some((e.index, *change)),
                _ => None,
            })
            .collect();
        for (index, change) in changes {
            self.push_conf_change(index, &change);
        }
    }

    /// Plans and applies a request in one step (the in-memory store's `persist`).
    pub fn plan_and_apply(&mut self, request: &PersistRequest) -> Result<Vec<Record>> {
        let records = self.plan(request)?;
        for record in &records {
            if let Err(reason) = self.apply_record(record) {
                panic!("a planned record must apply: {reason} ({record:?})");
            }
        }
        Ok(records)
    }
}

impl LogStore for MemLogStore {
    fn persist(&mut self, request: PersistRequest) -> Result<()> {
        self.plan_and_apply(&request).map(|_| ())
    }

    fn sync(&mut self) -> Result<()> {
        Ok(())
    }

    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>> {
        if low <= self.base_index {
            return Err(Error::Compacted {
                index: low,
                first: self.base_index + 1,
            });
        }
        let last = self.last();
        if high > last + 1 || low > high {
            return Err(Error::Unavailable {
                index: high.saturating_sub(1).max(low),
                last,
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for index in low..high {
            let entry = &self.entries[(index - self.base_index - 1) as usize];
            bytes += entry.size_bytes() as u64;
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, index: Index) -> Result<Term> {
        if let Some(term) = self.term_of(index) {
            return Ok(term);
        }
        if index < self.base_index {
            Err(Error::Compacted {
                index,
                first: self.base_index + 1,
            })
        } else {
            Err(Error::Unavailable {
                index,
                last: self.last(),
            })
        }
    }

    fn first_index(&self) -> Index {
        self.base_index + 1
    }

    fn last_index(&self) -> Index {
        self.last()
    }

    fn last_term(&self) -> Term {
        self.term_of(self.last()).unwrap_or(0)
    }

    fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot.clone()
    }

    fn membership(&self) -> Membership {
        self.current_membership().clone()
    }
}
