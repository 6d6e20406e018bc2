//! Plain data shared by the core, the storage layer and the transport.
//!
//! Nothing here does I/O. Every type is cheap to clone where it is copied often
//! (`Entry` payloads are `Bytes`, so one entry sent to six followers is one buffer).

use std::collections::BTreeSet;

use bytes::Bytes;

/// Identifies a member for its whole life. Never 0 (0 means "none").
pub type NodeId = u64;
/// A Raft term. Starts at 0 on a fresh node and only ever grows.
pub type Term = u64;
/// A log position. The first real entry has index 1; index 0 is the empty prefix.
pub type Index = u64;

/// What must survive a crash besides the log: the paper's `currentTerm` and
/// `votedFor`, plus the commit index so that a restarted node re-applies no further
/// than it knows to be committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    /// 0 when the node has not voted in `term`.
    pub vote: NodeId,
    pub commit: Index,
}

/// The voting configuration. One change at a time, so there is never a joint
/// configuration: a single-server change keeps every majority of the old and the new
/// configuration overlapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    /// Receive the log but never vote and never count toward a quorum.
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// Smallest number of voters that forms a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The membership after `change`, or why the change is not allowed.
    pub fn apply_change(&self, change: &ConfChange) -> Result<Membership, ConfChangeError> {
        let mut next = self.clone();
        match *change {
            ConfChange::AddLearner(id) => {
                if id == 0 {
                    return Err(ConfChangeError::InvalidNodeId);
                }
                if self.contains(id) {
                    return Err(ConfChangeError::AlreadyMember(id));
                }
                next.learners.insert(id);
            }
            ConfChange::AddVoter(id) => {
                if id == 0 {
                    return Err(ConfChangeError::InvalidNodeId);
                }
                if self.is_voter(id) {
                    return Err(ConfChangeError::AlreadyMember(id));
                }
                next.learners.remove(&id);
                next.voters.insert(id);
            }
            ConfChange::Promote(id) => {
                if !self.is_learner(id) {
                    return Err(ConfChangeError::NotLearner(id));
                }
                next.learners.remove(&id);
                next.voters.insert(id);
            }
            ConfChange::Remove(id) => {
                if !self.contains(id) {
                    return Err(ConfChangeError::NotMember(id));
                }
                next.voters.remove(&id);
                next.learners.remove(&id);
                if next.voters.is_empty() {
                    return Err(ConfChangeError::WouldRemoveLastVoter);
                }
            }
        }
        Ok(next)
    }
}

/// One single-server membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChange {
    AddLearner(NodeId),
    /// Adds a voter directly (etcd's `MemberAdd` without `isLearner`), or promotes a
    /// learner without the catch-up check.
    AddVoter(NodeId),
    /// Turns a caught-up learner into a voter.
    Promote(NodeId),
    Remove(NodeId),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    #[error("node id 0 is reserved")]
    InvalidNodeId,
    #[error("member {0:#x} is already in the cluster")]
    AlreadyMember(NodeId),
    #[error("member {0:#x} is not a learner")]
    NotLearner(NodeId),
    #[error("member {0:#x} is not in the cluster")]
    NotMember(NodeId),
    #[error("removing the last voter would leave the cluster without a quorum")]
    WouldRemoveLastVoter,
}

/// What an entry carries. Everything but `Normal` is interpreted by the core or the
/// runtime; `Normal` is opaque to both and goes to the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryPayload {
    /// Appended by every new leader so that it can commit an entry of its own term
    /// (and with it everything before it) without waiting for a client.
    Noop,
    /// A client command for the state machine.
    Normal(Bytes),
    /// A membership change. It takes effect as soon as it is in a node's log, committed
    /// or not (Raft dissertation §4.1); a truncation that removes it reverts it.
    ConfChange(ConfChange),
    /// New heartbeat and election timeouts for every member, so that all of them
    /// switch at the same log position and a restarted member comes back with it.
    Timing(Timing),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub payload: EntryPayload,
}

impl Entry {
    /// An estimate of the encoded size, used to bound batches and in-flight bytes.
    pub fn size_bytes(&self) -> usize {
        let payload = match &self.payload {
            EntryPayload::Normal(data) => data.len(),
            EntryPayload::Noop => 0,
            EntryPayload::ConfChange(_) => 9,
            EntryPayload::Timing(_) => 8,
        };
        24 + payload
    }
}

/// Heartbeat interval and election timeout, in ticks of the runtime's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat_ticks: u32,
    /// The base election timeout; each election waits a random time in
    /// `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u32,
}

impl Timing {
    /// Checks the relation every member relies on: elections must not start while
    /// heartbeats are still arriving on time.
    pub fn validate(&self) -> Result<(), TimingError> {
        if self.heartbeat_ticks == 0 {
            return Err(TimingError::ZeroHeartbeat);
        }
        if self.election_ticks < 3 * self.heartbeat_ticks {
            return Err(TimingError::ElectionTooShort {
                heartbeat_ticks: self.heartbeat_ticks,
                election_ticks: self.election_ticks,
            });
        }
        if self.election_ticks > Timing::ELECTION_TICKS_MAX {
            return Err(TimingError::ElectionTooLong(self.election_ticks));
        }
        Ok(())
    }

    /// Upper bound on the election timeout, a guard against a typo that would leave a
    /// cluster leaderless for hours.
    pub const ELECTION_TICKS_MAX: u32 = 100_000;
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ticks: 1,
            election_ticks: 10,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error("heartbeat interval must be at least one tick")]
    ZeroHeartbeat,
    #[error("election timeout ({election_ticks} ticks) must be at least 3x the heartbeat interval ({heartbeat_ticks} ticks)")]
    ElectionTooShort {
        heartbeat_ticks: u32,
        election_ticks: u32,
    },
    #[error("election timeout of {0} ticks is above the limit of {max}", max = Timing::ELECTION_TICKS_MAX)]
    ElectionTooLong(u32),
}

/// Describes a snapshot: the state machine after applying every entry up to and
/// including `index`. The data itself lives with the runtime (snapshot store); the
/// core only ever handles this description.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    /// The membership in force at `index`.
    pub membership: Membership,
    /// The timing in force at `index` (the last `Timing` entry at or before it).
    pub timing: Option<Timing>,
}
