//! What a leader knows about each follower's log, and how fast it may send to it.

use std::collections::VecDeque;

use super::types::Index;

/// How the leader is currently replicating to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// Searching for the point where the logs agree: one append in flight at a time.
    Probe,
    /// The logs agree up to `match_index`; appends are pipelined up to the window.
    Replicate,
    /// The follower needs a snapshot (at the given index) before the log can continue.
    Snapshot { index: Index },
}

/// Per-follower replication progress (the paper's nextIndex and matchIndex).
#[derive(Clone, Debug)]
pub struct Progress {
    pub match_index: Index,
    pub next_index: Index,
    pub state: ReplicationState,
    /// In `Probe`: an append is outstanding; wait for an answer or the next heartbeat.
    pub probe_sent: bool,
    /// Appends sent but not yet acknowledged: (last index in the append, bytes).
    pub inflight: Inflight,
    /// Heard from during the current CheckQuorum round.
    pub recent_active: bool,
    /// Heard from during the previous round (so a round that just started does not
    /// make every follower look dead to the membership-change safety check).
    pub active_last_round: bool,
    /// Heartbeat answers in a row with no progress while entries were outstanding; a
    /// lost append in `Replicate` is detected this way and the follower probed again.
    pub stalled_heartbeats: u32,
    /// Highest ReadIndex round this follower has confirmed.
    pub read_seq_acked: u64,
}

impl Progress {
    pub fn new(next_index: Index, max_inflight_msgs: usize, max_inflight_bytes: usize) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            probe_sent: false,
            inflight: Inflight::new(max_inflight_msgs, max_inflight_bytes),
            recent_active: false,
            active_last_round: false,
            stalled_heartbeats: 0,
            read_seq_acked: 0,
        }
    }

    pub fn is_active(&self) -> bool {
        self.recent_active || self.active_last_round
    }

    /// Whether the leader must hold further appends back for now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ReplicationState::Probe => self.probe_sent,
            ReplicationState::Replicate => self.inflight.is_full(),
            ReplicationState::Snapshot { .. } => true,
        }
    }

    pub fn become_probe(&mut self) {
        if let ReplicationState::Snapshot { index } = self.state {
            self.next_index = (self.match_index + 1).max(index + 1);
        } else {
            self.next_index = self.match_index + 1;
        }
        self.state = ReplicationState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.stalled_heartbeats = 0;
    }

    pub fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
        self.stalled_heartbeats = 0;
    }

    pub fn become_snapshot(&mut self, index: Index) {
        self.state = ReplicationState::Snapshot { index };
        self.probe_sent = false;
        self.inflight.clear();
        self.stalled_heartbeats = 0;
    }

    /// A successful append response up to `index`. Returns whether it was news.
    pub fn update_match(&mut self, index: Index) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
            self.probe_sent = false;
            self.stalled_heartbeats = 0;
        }
        self.next_index = self.next_index.max(index + 1);
        advanced
    }

    /// A rejection of an append whose previous entry was `rejected_index`; `probe_at`
    /// is where the logs may agree (from the follower's hint). Returns false when the
    /// rejection is stale (answers an older request) and must be ignored.
    pub fn decrease_next(&mut self, rejected_index: Index, probe_at: Index) -> bool {
        match self.state {
            ReplicationState::Replicate => {
                if rejected_index <= self.match_index {
                    return false;
                }
                self.next_index = self.match_index + 1;
                true
            }
            _ => {
                if self.next_index == 0 || rejected_index != self.next_index - 1 {
                    return false;
                }
                self.next_index = (probe_at + 1).min(rejected_index).max(self.match_index + 1);
                self.probe_sent = false;
                true
            }
        }
    }
}

/// The bounded window of appends in flight to one follower: at most `max_msgs`
/// messages and `max_bytes` bytes.
#[derive(Clone, Debug)]
pub struct Inflight {
    queue: VecDeque<(Index, usize)>,
    bytes: usize,
    max_msgs: usize,
    max_bytes: usize,
}

impl Inflight {
    pub fn new(max_msgs: usize, max_bytes: usize) -> Self {
        assert!(
            max_msgs > 0 && max_bytes > 0,
            "the in-flight window must allow one append"
        );
        Inflight {
            queue: VecDeque::new(),
            bytes: 0,
            max_msgs,
            max_bytes,
        }
    }

    pub fn add(&mut self, last_index: Index, bytes: usize) {
        assert!(!self.is_full(), "append sent into a full window");
        self.queue.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every append whose last index is at or below `index`.
    pub fn free_to(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.queue.front() {
            if last > index {
                break;
            }
            self.queue.pop_front();
            self.bytes -= bytes;
        }
    }

    pub fn is_full(&self) -> bool {
        self.queue.len() >= self.max_msgs || self.bytes >= self.max_bytes
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }
}
