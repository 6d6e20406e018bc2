//! Messages exchanged between members. The transport carries them as protobuf; the
//! core only sees these types.

use bytes::Bytes;

use super::types::{Entry, Index, NodeId, SnapshotMeta, Term};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term (for a pre-vote request: the term it would campaign in).
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Sent by a pre-candidate (`pre_vote`) or a candidate.
    VoteRequest {
        pre_vote: bool,
        last_log_index: Index,
        last_log_term: Term,
        /// Set when campaigning because of `TimeoutNow`: the voter must not refuse on
        /// the grounds that it heard from a leader recently.
        leadership_transfer: bool,
    },
    VoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    AppendRequest {
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: Index,
    },
    AppendResponse {
        /// On success the index of the last entry the follower now holds that matches
        /// the leader; on rejection the index the request was rejected at.
        index: Index,
        rejected: bool,
        /// On rejection, where the leader should probe next: the follower's guess of
        /// the last index both logs can share (fast back-off, §5.3).
        hint_index: Index,
        hint_term: Term,
    },
    /// Keeps followers from starting elections, carries the commit index and
    /// confirms leadership for ReadIndex (`read_seq`).
    Heartbeat {
        leader_commit: Index,
        read_seq: u64,
    },
    HeartbeatResponse {
        read_seq: u64,
        /// The follower's last log index, so that a leader that lost track of a
        /// follower (snapshot sent, answer lost) can start probing again.
        last_log_index: Index,
    },
    /// The snapshot described by `meta`; the transport streams its data alongside.
    InstallSnapshot {
        meta: SnapshotMeta,
    },
    /// Tells a caught-up follower to start an election now (leadership transfer).
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of its client.
    ReadIndexRequest {
        id: u64,
    },
    ReadIndexResponse {
        id: u64,
        /// `None` when the leader could not serve it (not leader any more, ...).
        index: Option<Index>,
    },
    /// A follower hands a client's command to the leader to propose (etcd's followers
    /// forward `MsgProp` over the peer connection the same way).
    ProposeRequest {
        id: u64,
        data: Bytes,
    },
    /// Where the leader appended a forwarded command, or why it did not.
    ProposeResponse {
        id: u64,
        outcome: Result<(Index, Term), ProposeRefusal>,
    },
}

/// Why a leader did not append a forwarded command: it never took effect, so the
/// member that forwarded it may propose it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposeRefusal {
    /// Not the leader (any more): ask the leader named, if any (0: none known).
    NotLeader { leader_hint: NodeId },
    /// A leadership transfer is in progress.
    TransferInProgress,
    /// Too many uncommitted entries.
    Busy,
}

impl MessageBody {
    /// About how many bytes the message takes on the wire (the entries' or the
    /// command's size plus a fixed allowance), so a transport can bound its batches.
    pub fn size_bytes(&self) -> usize {
        64 + match self {
            MessageBody::AppendRequest { entries, .. } => entries.iter().map(Entry::size_bytes).sum(),
            MessageBody::ProposeRequest { data, .. } => data.len(),
            _ => 0,
        }
    }

    /// A short name for traces and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::VoteRequest { pre_vote: true, .. } => "PreVoteRequest",
            MessageBody::VoteRequest { .. } => "VoteRequest",
            MessageBody::VoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::AppendRequest { .. } => "AppendRequest",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndexRequest { .. } => "ReadIndexRequest",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
            MessageBody::ProposeRequest { .. } => "ProposeRequest",
            MessageBody::ProposeResponse { .. } => "ProposeResponse",
        }
    }
}
