//! Round trips of the kuberaft-specific messages (no etcd contract to check here,
//! only that the shapes carry what the core and the operator need).

use kuberaft_proto::admin::{self, EventKind, Reachability, ReplicationState};
use kuberaft_proto::raft::{
    conf_change, entry, message, peer_envelope, AppendRequest, Compression, ConfChange, Entry, Hello,
    InstallSnapshot, Membership, Message, MessageBatch, PeerEnvelope, ReadIndexResponse, SnapshotAck,
    SnapshotChunk, SnapshotMeta, Timing,
};
use prost::bytes::Bytes;

fn round_trip<M: prost::Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let bytes = m.encode_to_vec();
    assert_eq!(&M::decode(&bytes[..]).unwrap(), m);
}

#[test]
fn raft_messages_round_trip() {
    let entries = vec![
        Entry {
            term: 2,
            index: 5,
            payload: Some(entry::Payload::Noop(Default::default())),
        },
        Entry {
            term: 2,
            index: 6,
            payload: Some(entry::Payload::Normal(Bytes::from_static(b"cmd"))),
        },
        Entry {
            term: 2,
            index: 7,
            payload: Some(entry::Payload::ConfChange(ConfChange {
                kind: conf_change::Kind::AddLearner as i32,
                node_id: 4,
            })),
        },
        Entry {
            term: 2,
            index: 8,
            payload: Some(entry::Payload::Timing(Timing {
                heartbeat_ticks: 1,
                election_ticks: 10,
            })),
        },
    ];
    let append = Message {
        from: 1,
        to: 2,
        term: 2,
        body: Some(message::Body::AppendRequest(AppendRequest {
            prev_log_index: 4,
            prev_log_term: 1,
            entries,
            leader_commit: 4,
        })),
    };
    let snapshot = Message {
        from: 1,
        to: 3,
        term: 2,
        body: Some(message::Body::InstallSnapshot(InstallSnapshot {
            meta: Some(SnapshotMeta {
                index: 100,
                term: 2,
                membership: Some(Membership {
                    voters: vec![1, 2, 3],
                    learners: vec![4],
                }),
                timing: None,
            }),
        })),
    };
    // ReadIndexResponse.index is `optional`: Some(0) and None must stay distinct.
    for index in [None, Some(0), Some(9)] {
        let m = Message {
            from: 1,
            to: 2,
            term: 2,
            body: Some(message::Body::ReadIndexResponse(ReadIndexResponse {
                id: 7,
                index,
            })),
        };
        round_trip(&m);
    }
    let batch = PeerEnvelope {
        content: Some(peer_envelope::Content::Batch(MessageBatch {
            messages: vec![append, snapshot],
        })),
        compression: Compression::None as i32,
        uncompressed_size: 0,
        probe: 17,
        probe_echo: 0,
    };
    round_trip(&batch);
    round_trip(&PeerEnvelope {
        probe_echo: 17,
        ..Default::default()
    });
    round_trip(&PeerEnvelope {
        content: Some(peer_envelope::Content::Hello(Hello {
            cluster_token: "tok".into(),
            cluster_id: 9,
            from_id: 1,
            to_id: 2,
            protocol_version: 1,
            client_urls: vec!["http://127.0.0.1:2379".into()],
        })),
        ..Default::default()
    });
    round_trip(&SnapshotChunk {
        hello: None,
        meta: None,
        offset: 4096,
        data: Bytes::from_static(b"tail"),
        total_size: 0,
        last: true,
        crc32c: 0xdead_beef,
    });
    round_trip(&SnapshotAck {
        received_offset: 4100,
        complete: true,
        error: String::new(),
        term: 2,
    });
}

#[test]
fn admin_messages_round_trip() {
    let status = admin::StatusResponse {
        id: 1,
        name: "n0".into(),
        role: admin::Role::Leader as i32,
        peers: vec![admin::PeerStatus {
            id: 2,
            name: "n1".into(),
            match_index: 10,
            next_index: 11,
            inflight: 1,
            replication_state: ReplicationState::Replicate as i32,
            last_contact_ms: 12,
            rtt: Some(admin::LatencyStats {
                ewma_ms: 0.4,
                p50_ms: 0.3,
                p99_ms: 1.5,
                samples: 100,
                window_ms: 60_000,
            }),
            reachability: Reachability::Suspect as i32,
            backoff_ms: 0,
            ..Default::default()
        }],
        fsync: Some(admin::LatencyStats {
            p99_ms: 4.0,
            ..Default::default()
        }),
        timing: Some(admin::TimingInfo {
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            source: admin::TimingSource::Admin as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    round_trip(&status);
    for kind in [
        EventKind::Join,
        EventKind::Leave,
        EventKind::Promoted,
        EventKind::Failure,
        EventKind::Recovered,
        EventKind::LeaderChanged,
        EventKind::TimingChanged,
        EventKind::Snapshot,
    ] {
        round_trip(&admin::Event {
            kind: kind as i32,
            time_unix_ms: 1_700_000_000_000,
            term: 3,
            index: 42,
            member_id: 2,
            ..Default::default()
        });
    }
    round_trip(&admin::TransferLeaderRequest {
        target_name: String::new(),
        deadline_ms: 5000,
    });
}
