//! Conversions between the core's messages and `kuberaft.raft.v1`.
//!
//! Everything that arrives from the network is checked here: a message with a missing
//! body, an entry without a payload, a membership change of an unknown kind or a
//! snapshot without metadata is refused with a clear error and never reaches the core.

use bytes::Bytes;
use kuberaft_proto::raft as pb;

use crate::raft::{
    ConfChange, Entry, EntryPayload, Membership, Message, MessageBody, ProposeRefusal, SnapshotMeta, Timing,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("message from {from:#x} has no body")]
    MissingBody { from: u64 },
    #[error("entry {index} has no payload")]
    MissingPayload { index: u64 },
    #[error("membership change of unknown kind {0}")]
    UnknownChange(i32),
    #[error("snapshot announcement without metadata")]
    MissingMeta,
    #[error("node id 0 in {0}")]
    ZeroNodeId(&'static str),
}

pub fn message_to_pb(m: &Message) -> pb::Message {
    use pb::message::Body;
    let body = match &m.body {
        MessageBody::VoteRequest {
            pre_vote,
            last_log_index,
            last_log_term,
            leadership_transfer,
        } => Body::VoteRequest(pb::VoteRequest {
            pre_vote: *pre_vote,
            last_log_index: *last_log_index,
            last_log_term: *last_log_term,
            leadership_transfer: *leadership_transfer,
        }),
        MessageBody::VoteResponse { pre_vote, granted } => Body::VoteResponse(pb::VoteResponse {
            pre_vote: *pre_vote,
            granted: *granted,
        }),
        MessageBody::AppendRequest {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => Body::AppendRequest(pb::AppendRequest {
            prev_log_index: *prev_log_index,
            prev_log_term: *prev_log_term,
            entries: entries.iter().map(entry_to_pb).collect(),
            leader_commit: *leader_commit,
        }),
        MessageBody::AppendResponse {
            index,
            rejected,
            hint_index,
            hint_term,
        } => Body::AppendResponse(pb::AppendResponse {
            index: *index,
            rejected: *rejected,
            hint_index: *hint_index,
            hint_term: *hint_term,
        }),
        MessageBody::Heartbeat {
            leader_commit,
            read_seq,
        } => Body::Heartbeat(pb::Heartbeat {
            leader_commit: *leader_commit,
            read_seq: *read_seq,
        }),
        MessageBody::HeartbeatResponse {
            read_seq,
            last_log_index,
        } => Body::HeartbeatResponse(pb::HeartbeatResponse {
            read_seq: *read_seq,
            last_log_index: *last_log_index,
        }),
        MessageBody::InstallSnapshot { meta } => Body::InstallSnapshot(pb::InstallSnapshot {
            meta: Some(snapshot_meta_to_pb(meta)),
        }),
        MessageBody::TimeoutNow => Body::TimeoutNow(pb::TimeoutNow {}),
        MessageBody::ReadIndexRequest { id } => Body::ReadIndexRequest(pb::ReadIndexRequest { id: *id }),
        MessageBody::ReadIndexResponse { id, index } => Body::ReadIndexResponse(pb::ReadIndexResponse {
            id: *id,
            index: *index,
        }),
        MessageBody::ProposeRequest { id, data } => Body::ProposeRequest(pb::ProposeRequest {
            id: *id,
            data: data.clone(),
        }),
        MessageBody::ProposeResponse { id, outcome } => {
            use pb::propose_response::Outcome;
            Body::ProposeResponse(pb::ProposeResponse {
                id: *id,
                outcome: Some(match outcome {
                    Ok((index, term)) => Outcome::Appended(pb::ProposedAt {
                        index: *index,
                        term: *term,
                    }),
                    Err(ProposeRefusal::NotLeader { leader_hint }) => Outcome::NotLeader(*leader_hint),
                    Err(ProposeRefusal::TransferInProgress) => Outcome::TransferInProgress(true),
                    Err(ProposeRefusal::Busy) => Outcome::Busy(true),
                }),
            })
        }
    };
    pb::Message {
        from: m.from,
        to: m.to,
        term: m.term,
        body: Some(body),
    }
}

pub fn message_from_pb(m: pb::Message) -> Result<Message, ConvertError> {
    use pb::message::Body;
    if m.from == 0 || m.to == 0 {
        return Err(ConvertError::ZeroNodeId("message"));
    }
    let body = match m.body.ok_or(ConvertError::MissingBody { from: m.from })? {
        Body::VoteRequest(v) => MessageBody::VoteRequest {
            pre_vote: v.pre_vote,
            last_log_index: v.last_log_index,
            last_log_term: v.last_log_term,
            leadership_transfer: v.leadership_transfer,
        },
        Body::VoteResponse(v) => MessageBody::VoteResponse {
            pre_vote: v.pre_vote,
            granted: v.granted,
        },
        Body::AppendRequest(a) => MessageBody::AppendRequest {
            prev_log_index: a.prev_log_index,
            prev_log_term: a.prev_log_term,
            entries: a
                .entries
                .into_iter()
                .map(entry_from_pb)
                .collect::<Result<_, _>>()?,
            leader_commit: a.leader_commit,
        },
        Body::AppendResponse(a) => MessageBody::AppendResponse {
            index: a.index,
            rejected: a.rejected,
            hint_index: a.hint_index,
            hint_term: a.hint_term,
        },
        Body::Heartbeat(h) => MessageBody::Heartbeat {
            leader_commit: h.leader_commit,
            read_seq: h.read_seq,
        },
        Body::HeartbeatResponse(h) => MessageBody::HeartbeatResponse {
            read_seq: h.read_seq,
            last_log_index: h.last_log_index,
        },
        Body::InstallSnapshot(s) => MessageBody::InstallSnapshot {
            meta: snapshot_meta_from_pb(s.meta.ok_or(ConvertError::MissingMeta)?)?,
        },
        Body::TimeoutNow(_) => MessageBody::TimeoutNow,
        Body::ReadIndexRequest(r) => MessageBody::ReadIndexRequest { id: r.id },
        Body::ReadIndexResponse(r) => MessageBody::ReadIndexResponse {
            id: r.id,
            index: r.index,
        },
        Body::ProposeRequest(r) => MessageBody::ProposeRequest {
            id: r.id,
            data: r.data,
        },
        Body::ProposeResponse(r) => {
            use pb::propose_response::Outcome;
            MessageBody::ProposeResponse {
                id: r.id,
                outcome: match r.outcome.ok_or(ConvertError::MissingBody { from: m.from })? {
                    Outcome::Appended(at) => Ok((at.index, at.term)),
                    Outcome::NotLeader(leader_hint) => Err(ProposeRefusal::NotLeader { leader_hint }),
                    Outcome::TransferInProgress(_) => Err(ProposeRefusal::TransferInProgress),
                    Outcome::Busy(_) => Err(ProposeRefusal::Busy),
                },
            }
        }
    };
    Ok(Message {
        from: m.from,
        to: m.to,
        term: m.term,
        body,
    })
}

pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    use pb::entry::Payload;
    let payload = match &e.payload {
        EntryPayload::Noop => Payload::Noop(pb::Noop {}),
        EntryPayload::Normal(data) => Payload::Normal(data.clone()),
        EntryPayload::ConfChange(change) => Payload::ConfChange(conf_change_to_pb(change)),
        EntryPayload::Timing(t) => Payload::Timing(timing_to_pb(t)),
    };
    pb::Entry {
        term: e.term,
        index: e.index,
        payload: Some(payload),
    }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<Entry, ConvertError> {
    use pb::entry::Payload;
    let payload = match e.payload.ok_or(ConvertError::MissingPayload { index: e.index })? {
        Payload::Noop(_) => EntryPayload::Noop,
        Payload::Normal(data) => EntryPayload::Normal(Bytes::clone(&data)),
        Payload::ConfChange(c) => EntryPayload::ConfChange(conf_change_from_pb(c)?),
        Payload::Timing(t) => EntryPayload::Timing(timing_from_pb(t)),
    };
    Ok(Entry {
        term: e.term,
        index: e.index,
        payload,
    })
}

fn conf_change_to_pb(change: &ConfChange) -> pb::ConfChange {
    use pb::conf_change::Kind;
    let (kind, node_id) = match *change {
        ConfChange::AddLearner(id) => (Kind::AddLearner, id),
        ConfChange::AddVoter(id) => (Kind::AddVoter, id),
        ConfChange::Promote(id) => (Kind::Promote, id),
        ConfChange::Remove(id) => (Kind::Remove, id),
    };
    pb::ConfChange {
        kind: kind as i32,
        node_id,
    }
}

fn conf_change_from_pb(c: pb::ConfChange) -> Result<ConfChange, ConvertError> {
    use pb::conf_change::Kind;
    if c.node_id == 0 {
        return Err(ConvertError::ZeroNodeId("membership change"));
    }
    Ok(match Kind::try_from(c.kind) {
        Ok(Kind::AddLearner) => ConfChange::AddLearner(c.node_id),
        Ok(Kind::AddVoter) => ConfChange::AddVoter(c.node_id),
        Ok(Kind::Promote) => ConfChange::Promote(c.node_id),
        Ok(Kind::Remove) => ConfChange::Remove(c.node_id),
        _ => return Err(ConvertError::UnknownChange(c.kind)),
    })
}

fn timing_to_pb(t: &Timing) -> pb::Timing {
    pb::Timing {
        heartbeat_ticks: t.heartbeat_ticks,
        election_ticks: t.election_ticks,
    }
}

fn timing_from_pb(t: pb::Timing) -> Timing {
    Timing {
        heartbeat_ticks: t.heartbeat_ticks,
        election_ticks: t.election_ticks,
    }
}

pub fn snapshot_meta_to_pb(meta: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        index: meta.index,
        term: meta.term,
        membership: Some(pb::Membership {
            voters: meta.membership.voters.iter().copied().collect(),
            learners: meta.membership.learners.iter().copied().collect(),
        }),
        timing: meta.timing.as_ref().map(timing_to_pb),
    }
}

pub fn snapshot_meta_from_pb(meta: pb::SnapshotMeta) -> Result<SnapshotMeta, ConvertError> {
    let membership = meta.membership.unwrap_or_default();
    if membership.voters.contains(&0) || membership.learners.contains(&0) {
        return Err(ConvertError::ZeroNodeId("snapshot membership"));
    }
    Ok(SnapshotMeta {
        index: meta.index,
        term: meta.term,
        membership: Membership {
            voters: membership.voters.into_iter().collect(),
            learners: membership.learners.into_iter().collect(),
        },
        timing: meta.timing.map(timing_from_pb),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: MessageBody) {
        let m = Message {
            from: 1,
            to: 2,
            term: 7,
            body,
        };
        assert_eq!(message_from_pb(message_to_pb(&m)).unwrap(), m);
    }

    #[test]
    fn every_message_survives_the_wire() {
        round_trip(MessageBody::VoteRequest {
            pre_vote: true,
            last_log_index: 9,
            last_log_term: 3,
            leadership_transfer: true,
        });
        round_trip(MessageBody::VoteResponse {
            pre_vote: false,
            granted: true,
        });
        round_trip(MessageBody::AppendRequest {
            prev_log_index: 4,
            prev_log_term: 2,
            entries: vec![
                Entry {
                    term: 3,
                    index: 5,
                    payload: EntryPayload::Noop,
                },
                Entry {
                    term: 3,
                    index: 6,
                    payload: EntryPayload::Normal(Bytes::from_static(b"x")),
                },
                Entry {
                    term: 3,
                    index: 7,
                    payload: EntryPayload::ConfChange(ConfChange::Promote(4)),
                },
                Entry {
                    term: 3,
                    index: 8,
                    payload: EntryPayload::Timing(Timing {
                        heartbeat_ticks: 2,
                        election_ticks: 20,
                    }),
                },
            ],
            leader_commit: 5,
        });
        round_trip(MessageBody::AppendResponse {
            index: 3,
            rejected: true,
            hint_index: 2,
            hint_term: 1,
        });
        round_trip(MessageBody::Heartbeat {
            leader_commit: 3,
            read_seq: 8,
        });
        round_trip(MessageBody::HeartbeatResponse {
            read_seq: 8,
            last_log_index: 3,
        });
        round_trip(MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                index: 10,
                term: 3,
                membership: Membership {
                    voters: [1, 2, 3].into(),
                    learners: [4].into(),
                },
                timing: None,
            },
        });
        round_trip(MessageBody::TimeoutNow);
        round_trip(MessageBody::ReadIndexRequest { id: 3 });
        round_trip(MessageBody::ProposeRequest {
            id: 4,
            data: Bytes::from_static(b"command"),
        });
        for outcome in [
            Ok((10, 2)),
            Err(ProposeRefusal::NotLeader { leader_hint: 3 }),
            Err(ProposeRefusal::NotLeader { leader_hint: 0 }),
            Err(ProposeRefusal::TransferInProgress),
            Err(ProposeRefusal::Busy),
        ] {
            round_trip(MessageBody::ProposeResponse { id: 4, outcome });
        }
        round_trip(MessageBody::ReadIndexResponse { id: 3, index: None });
        round_trip(MessageBody::ReadIndexResponse {
            id: 3,
            index: Some(9),
        });
    }

    #[test]
    fn malformed_messages_are_refused() {
        let empty = pb::Message {
            from: 1,
            to: 2,
            term: 1,
            body: None,
        };
        assert_eq!(message_from_pb(empty), Err(ConvertError::MissingBody { from: 1 }));
        let anonymous = pb::Message {
            from: 0,
            to: 2,
            term: 1,
            body: Some(pb::message::Body::TimeoutNow(pb::TimeoutNow {})),
        };
        assert!(message_from_pb(anonymous).is_err());
        let no_payload = pb::Entry {
            term: 1,
            index: 1,
            payload: None,
        };
        assert_eq!(
            entry_from_pb(no_payload),
            Err(ConvertError::MissingPayload { index: 1 })
        );
        let bad_change = pb::Entry {
            term: 1,
            index: 1,
            payload: Some(pb::entry::Payload::ConfChange(pb::ConfChange {
                kind: 99,
                node_id: 3,
            })),
        };
        assert_eq!(entry_from_pb(bad_change), Err(ConvertError::UnknownChange(99)));
    }
}
