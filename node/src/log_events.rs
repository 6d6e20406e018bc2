//! What the runtime sees happen to the log that tools want to hear about: membership
//! changes as they are applied (committed), and snapshots built here or installed
//! from the leader. The admin API turns them into JOIN, LEAVE, PROMOTED and SNAPSHOT
//! events.
//!
//! Delivered through a bounded `broadcast`: the runtime never waits for a listener,
//! and a listener that falls [`LOG_EVENTS_QUEUED_MAX`] behind learns how many it
//! missed.

use tokio::sync::broadcast;

use crate::raft::{ConfChange, Entry, EntryPayload, Index, Term};

/// Events buffered for the slowest listener.
pub const LOG_EVENTS_QUEUED_MAX: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEvent {
    /// A membership change was committed and applied at `index`.
    ConfChangeApplied {
        index: Index,
        term: Term,
        change: ConfChange,
    },
    /// This member wrote a snapshot of its state machine through `index`.
    SnapshotBuilt { index: Index, term: Term },
    /// This member replaced its state with a snapshot received from the leader.
    SnapshotInstalled { index: Index, term: Term },
}

/// The sending side, held by the runtime; cheap to clone.
#[derive(Clone, Debug)]
pub struct LogEvents {
    tx: broadcast::Sender<LogEvent>,
}

impl Default for LogEvents {
    fn default() -> Self {
        LogEvents {
            tx: broadcast::channel(LOG_EVENTS_QUEUED_MAX).0,
        }
    }
}

impl LogEvents {
    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LogEvent> {
        self.tx.subscribe()
    }

    pub fn publish(&self, event: LogEvent) {
        // No listener is not an error: nobody asked.
        let _ = self.tx.send(event);
    }

    /// Reports the membership changes among committed `entries`, except those at or
    /// below `replayed_through` (re-applied from this member's own log at start-up:
    /// they happened before, and were reported then).
    pub fn entries_applied(&self, entries: &[Entry], replayed_through: Index) {
        for entry in entries {
            if let EntryPayload::ConfChange(change) = entry.payload {
                if entry.index > replayed_through {
                    self.publish(LogEvent::ConfChangeApplied {
                        index: entry.index,
                        term: entry.term,
                        change,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_membership_changes_are_reported_once_and_replayed_ones_not_at_all() {
        let events = LogEvents::default();
        let mut listener = events.subscribe();
        let entry = |index, payload| Entry {
            term: 2,
            index,
            payload,
        };
        events.entries_applied(
            &[
                entry(4, EntryPayload::ConfChange(ConfChange::AddLearner(9))),
                entry(5, EntryPayload::Noop),
                entry(6, EntryPayload::ConfChange(ConfChange::Promote(9))),
            ],
            4,
        );
        assert_eq!(
            listener.try_recv().unwrap(),
            LogEvent::ConfChangeApplied {
                index: 6,
                term: 2,
                change: ConfChange::Promote(9)
            }
        );
        assert!(listener.try_recv().is_err());
    }
}
