//! Messages exchanged between members. The transport carries them as protobuf; the
//! core only sees these types.

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
}

impl MessageBody {
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
        }
    }
}
