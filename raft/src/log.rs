//! The in-memory view of the replicated log that the core reasons about.
//!
//! It holds every entry after `base` (the compaction point). The runtime keeps the
//! same entries durable in the WAL; the core never reads files. Entries at or below
//! `base` are covered by a snapshot, so only `base`'s term is remembered, which is what
//! the consistency check of the first entry after it needs.

use std::collections::VecDeque;

use super::types::{Entry, Index, Term};

#[derive(Clone, Debug)]
pub struct RaftLog {
    base_index: Index,
    base_term: Term,
    entries: VecDeque<Entry>,
    commit: Index,
}

impl RaftLog {
    pub fn new(base_index: Index, base_term: Term) -> Self {
        RaftLog {
            base_index,
            base_term,
            entries: VecDeque::new(),
            commit: base_index,
        }
    }

    pub fn base_index(&self) -> Index {
        self.base_index
    }

    pub fn first_index(&self) -> Index {
        self.base_index + 1
    }

    pub fn last_index(&self) -> Index {
        self.base_index + self.entries.len() as Index
    }

    pub fn last_term(&self) -> Term {
        self.entries.back().map_or(self.base_term, |e| e.term)
    }

    pub fn commit(&self) -> Index {
        self.commit
    }

    /// The term of the entry at `index`, or `None` when it was compacted away or is
    /// past the end.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.base_index {
            return Some(self.base_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.base_index {
            return None;
        }
        self.entries.get((index - self.base_index - 1) as usize)
    }

    pub fn matches(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// §5.4.1: a candidate's log is at least as up-to-date as ours.
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries in `[lo, hi)`, stopping early at `max_entries` or once `max_bytes` is
    /// reached (but always at least one entry when the range is not empty).
    pub fn slice(&self, lo: Index, hi: Index, max_entries: usize, max_bytes: usize) -> Vec<Entry> {
        assert!(
            lo > self.base_index,
            "slice({lo}) below the compaction point {}",
            self.base_index
        );
        let hi = hi.min(self.last_index() + 1);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut index = lo;
        while index < hi && out.len() < max_entries {
            let entry = self.entry(index).expect("index within the log");
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
            index += 1;
        }
        out
    }

    /// Appends entries that continue the log; the first must directly follow the last
    /// entry (the caller truncates first when there is a conflict).
    pub fn append(&mut self, entries: &[Entry]) {
        for entry in entries {
            assert_eq!(entry.index, self.last_index() + 1, "log must stay contiguous");
            assert!(entry.term >= self.last_term(), "terms in the log never decrease");
            self.entries.push_back(entry.clone());
        }
    }

    /// Removes every entry from `index` on. Never touches a committed entry.
    pub fn truncate_from(&mut self, index: Index) {
        assert!(
            index > self.commit,
            "truncating committed entry {index} (commit {})",
            self.commit
        );
        assert!(index > self.base_index);
        let keep = (index - self.base_index - 1) as usize;
        self.entries.truncate(keep);
    }

    /// The first entry of `entries` that is not already in the log (a new index or a
    /// different term at the same index), as a position in `entries`.
    pub fn find_conflict(&self, entries: &[Entry]) -> Option<usize> {
        entries
            .iter()
            .position(|e| !self.matches(e.index, e.term) && e.index > self.base_index)
    }

    /// Fast back-off (§5.3): the largest index `<= index` whose term is `<= term`, so
    /// that a leader skips a whole run of conflicting entries in one round trip.
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut index = index.min(self.last_index());
        loop {
            match self.term(index) {
                Some(t) if t <= term => return (index, t),
                Some(_) if index > self.base_index => index -= 1,
                // Compacted away: the base is committed, so it is a safe place to probe.
                _ => return (self.base_index, self.base_term),
            }
        }
    }

    pub fn set_commit(&mut self, index: Index) {
        assert!(
            index >= self.commit,
            "commit index went back from {} to {index}",
            self.commit
        );
        assert!(
            index <= self.last_index(),
            "commit index {index} is past the last entry {}",
            self.last_index()
        );
        self.commit = index;
    }

    /// Forgets entries up to and including `index` (covered by a snapshot).
    pub fn compact(&mut self, index: Index) {
        if index <= self.base_index {
            return;
        }
        assert!(index <= self.commit, "compacting uncommitted entries");
        let term = self.term(index).expect("compaction point is in the log");
        let drop = (index - self.base_index) as usize;
        self.entries.drain(..drop);
        self.base_index = index;
        self.base_term = term;
    }

    /// Replaces the whole log by a snapshot's position.
    pub fn reset_to_snapshot(&mut self, index: Index, term: Term) {
        assert!(index >= self.commit, "a snapshot never moves commit back");
        self.entries.clear();
        self.base_index = index;
        self.base_term = term;
        self.commit = index;
    }
}
