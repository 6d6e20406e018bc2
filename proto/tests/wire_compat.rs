//! Wire-compatibility spot checks against the etcd v3 API.
//!
//! Every expected byte string below is written out by hand from the field numbers
//! of etcd's API reference (api/etcdserverpb/rpc.proto and api/mvccpb/kv.proto,
//! etcd 3.4-3.6), not derived from our own .proto files. A protobuf key is
//! `(field_number << 3) | wire_type`, wire type 0 = varint, 2 = length-delimited;
//! so field 1 bytes = 0x0a, field 3 varint = 0x18, field 11 bytes = 0x5a, and
//! field 64 bytes = 514 = varint `82 04`.

use kuberaft_proto::etcdserverpb::{
    alarm_request::AlarmAction, compare, range_request, request_op, response_op, watch_create_request,
    watch_request, AlarmMember, AlarmRequest, AlarmType, CompactionRequest, Compare, DeleteRangeRequest,
    HashKvResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseTimeToLiveResponse,
    Member, MemberAddRequest, MemberListResponse, MoveLeaderRequest, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, SnapshotResponse, StatusResponse, TxnRequest,
    TxnResponse, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use kuberaft_proto::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;

fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

/// Asserts both directions: our encoding is `bytes`, and `bytes` decodes to `m`.
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M, bytes: &[u8]) {
    assert_eq!(encode(m), bytes, "encoding of {m:?}");
    assert_eq!(&M::decode(bytes).unwrap(), m, "decoding of {bytes:02x?}");
}

#[test]
fn response_header_fields_1_to_4() {
    let h = ResponseHeader {
        cluster_id: 300, // varint ac 02
        member_id: 2,
        revision: 3,
        raft_term: 4,
    };
    assert_wire(&h, &[0x08, 0xac, 0x02, 0x10, 0x02, 0x18, 0x03, 0x20, 0x04]);
}

#[test]
fn key_value_fields_1_to_6() {
    let kv = KeyValue {
        key: b"k".to_vec(),
        create_revision: 2,
        mod_revision: 3,
        version: 4,
        value: b"v".to_vec(),
        lease: 6,
    };
    assert_wire(
        &kv,
        &[
            0x0a, 0x01, b'k', // key = 1
            0x10, 0x02, // create_revision = 2
            0x18, 0x03, // mod_revision = 3
            0x20, 0x04, // version = 4
            0x2a, 0x01, b'v', // value = 5
            0x30, 0x06, // lease = 6
        ],
    );
}

#[test]
fn event_type_kv_prev_kv() {
    assert_eq!(EventType::Put as i32, 0);
    assert_eq!(EventType::Delete as i32, 1);
    let ev = Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue {
            key: b"a".to_vec(),
            ..Default::default()
        }),
        prev_kv: Some(KeyValue {
            version: 1,
            ..Default::default()
        }),
    };
    assert_wire(
        &ev,
        &[
            0x08, 0x01, // type = 1 (DELETE)
            0x12, 0x03, 0x0a, 0x01, b'a', // kv = 2
            0x1a, 0x02, 0x20, 0x01, // prev_kv = 3 { version = 4 }
        ],
    );
}

#[test]
fn put_request_fields_1_to_6() {
    let put = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 5,
        prev_kv: true,
        ignore_value: true,
        ignore_lease: true,
    };
    assert_wire(
        &put,
        &[
            0x0a, 0x01, b'k', // key = 1
            0x12, 0x01, b'v', // value = 2
            0x18, 0x05, // lease = 3
            0x20, 0x01, // prev_kv = 4
            0x28, 0x01, // ignore_value = 5
            0x30, 0x01, // ignore_lease = 6
        ],
    );
    let resp = PutResponse {
        header: Some(ResponseHeader {
            revision: 7,
            ..Default::default()
        }),
        prev_kv: Some(KeyValue {
            lease: 1,
            ..Default::default()
        }),
    };
    assert_wire(&resp, &[0x0a, 0x02, 0x18, 0x07, 0x12, 0x02, 0x30, 0x01]);
}

#[test]
fn range_request_fields_1_to_13_and_enums() {
    use range_request::{SortOrder, SortTarget};
    assert_eq!(
        [SortOrder::None, SortOrder::Ascend, SortOrder::Descend].map(|o| o as i32),
        [0, 1, 2]
    );
    assert_eq!(
        [
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value
        ]
        .map(|t| t as i32),
        [0, 1, 2, 3, 4]
    );
    let req = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        limit: 3,
        revision: 4,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Mod as i32,
        serializable: true,
        keys_only: true,
        count_only: true,
        min_mod_revision: 10,
        max_mod_revision: 11,
        min_create_revision: 12,
        max_create_revision: 13,
    };
    assert_wire(
        &req,
        &[
            0x0a, 0x01, b'a', // key = 1
            0x12, 0x01, b'b', // range_end = 2
            0x18, 0x03, // limit = 3
            0x20, 0x04, // revision = 4
            0x28, 0x02, // sort_order = 5 (DESCEND)
            0x30, 0x03, // sort_target = 6 (MOD)
            0x38, 0x01, // serializable = 7
            0x40, 0x01, // keys_only = 8
            0x48, 0x01, // count_only = 9
            0x50, 0x0a, // min_mod_revision = 10
            0x58, 0x0b, // max_mod_revision = 11
            0x60, 0x0c, // min_create_revision = 12
            0x68, 0x0d, // max_create_revision = 13
        ],
    );
    // etcd defines nothing at 14: an unknown field from a newer client is skipped.
    let mut with_unknown = encode(&req);
    with_unknown.extend_from_slice(&[0x70, 0x01]);
    assert_eq!(RangeRequest::decode(&with_unknown[..]).unwrap(), req);
}

#[test]
fn range_response_header_kvs_more_count() {
    let resp = RangeResponse {
        header: Some(ResponseHeader {
            member_id: 1,
            ..Default::default()
        }),
        kvs: vec![KeyValue {
            key: b"x".to_vec(),
            ..Default::default()
        }],
        more: true,
        count: 9,
    };
    assert_wire(
        &resp,
        &[
            0x0a, 0x02, 0x10, 0x01, 0x12, 0x03, 0x0a, 0x01, b'x', 0x18, 0x01, 0x20, 0x09,
        ],
    );
}

#[test]
fn delete_range_request_fields() {
    let req = DeleteRangeRequest {
        key: b"a".to_vec(),
        range_end: vec![0],
        prev_kv: true,
    };
    assert_wire(&req, &[0x0a, 0x01, b'a', 0x12, 0x01, 0x00, 0x18, 0x01]);
}

#[test]
fn compare_enums_oneof_and_range_end_64() {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    assert_eq!(
        [
            CompareResult::Equal,
            CompareResult::Greater,
            CompareResult::Less,
            CompareResult::NotEqual
        ]
        .map(|r| r as i32),
        [0, 1, 2, 3]
    );
    assert_eq!(
        [
            CompareTarget::Version,
            CompareTarget::Create,
            CompareTarget::Mod,
            CompareTarget::Value,
            CompareTarget::Lease
        ]
        .map(|t| t as i32),
        [0, 1, 2, 3, 4]
    );
    let base = |target: CompareTarget, union: TargetUnion| Compare {
        result: CompareResult::NotEqual as i32,
        target: target as i32,
        key: b"k".to_vec(),
        range_end: b"z".to_vec(),
        target_union: Some(union),
    };
    // result = 1, target = 2, key = 3, <oneof>, range_end = 64 (key 514 = 82 04).
    let expect = |target: u8, oneof: &[u8]| {
        let mut v = vec![0x08, 0x03];
        if target != 0 {
            // proto3 leaves a scalar at its default (VERSION = 0) off the wire.
            v.extend_from_slice(&[0x10, target]);
        }
        v.extend_from_slice(&[0x1a, 0x01, b'k']);
        v.extend_from_slice(oneof);
        v.extend_from_slice(&[0x82, 0x04, 0x01, b'z']);
        v
    };
    assert_wire(
        &base(CompareTarget::Version, TargetUnion::Version(5)),
        &expect(0, &[0x20, 0x05]),
    );
    assert_wire(
        &base(CompareTarget::Create, TargetUnion::CreateRevision(6)),
        &expect(1, &[0x28, 0x06]),
    );
    assert_wire(
        &base(CompareTarget::Mod, TargetUnion::ModRevision(7)),
        &expect(2, &[0x30, 0x07]),
    );
    assert_wire(
        &base(CompareTarget::Value, TargetUnion::Value(b"v".to_vec())),
        &expect(3, &[0x3a, 0x01, b'v']),
    );
    assert_wire(
        &base(CompareTarget::Lease, TargetUnion::Lease(8)),
        &expect(4, &[0x40, 0x08]),
    );
    // Field 0 of the oneof (VERSION) with value 0 must still be sent: a oneof member is
    // always encoded, even at its default, so "version == 0" (key absent) survives.
    let absent = Compare {
        target_union: Some(TargetUnion::Version(0)),
        ..Default::default()
    };
    assert_wire(&absent, &[0x20, 0x00]);
}

#[test]
fn txn_request_and_response_ops() {
    let txn = TxnRequest {
        compare: vec![Compare::default()],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest::default())),
            },
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest::default(),
                )),
            },
            RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest::default())),
            },
        ],
    };
    assert_wire(
        &txn,
        &[
            0x0a, 0x00, // compare = 1
            0x12, 0x05, 0x12, 0x03, 0x0a, 0x01, b'a', // success = 2 { request_put = 2 {key} }
            0x1a, 0x02, 0x0a, 0x00, // failure = 3 { request_range = 1 }
            0x1a, 0x02, 0x1a, 0x00, // failure = 3 { request_delete_range = 3 }
            0x1a, 0x02, 0x22, 0x00, // failure = 3 { request_txn = 4 }
        ],
    );
    let resp = TxnResponse {
        header: None,
        succeeded: true,
        responses: vec![
            ResponseOp {
                response: Some(response_op::Response::ResponseRange(RangeResponse::default())),
            },
            ResponseOp {
                response: Some(response_op::Response::ResponsePut(PutResponse::default())),
            },
            ResponseOp {
                response: Some(response_op::Response::ResponseDeleteRange(Default::default())),
            },
            ResponseOp {
                response: Some(response_op::Response::ResponseTxn(Default::default())),
            },
        ],
    };
    assert_wire(
        &resp,
        &[
            0x10, 0x01, // succeeded = 2
            0x1a, 0x02, 0x0a, 0x00, // responses = 3 { response_range = 1 }
            0x1a, 0x02, 0x12, 0x00, // { response_put = 2 }
            0x1a, 0x02, 0x1a, 0x00, // { response_delete_range = 3 }
            0x1a, 0x02, 0x22, 0x00, // { response_txn = 4 }
        ],
    );
}

#[test]
fn compaction_request_fields() {
    let req = CompactionRequest {
        revision: 100,
        physical: true,
    };
    assert_wire(&req, &[0x08, 0x64, 0x10, 0x01]);
}

#[test]
fn watch_create_request_fields_1_to_8() {
    use watch_create_request::FilterType;
    assert_eq!(FilterType::Noput as i32, 0);
    assert_eq!(FilterType::Nodelete as i32, 1);
    let create = WatchCreateRequest {
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        start_revision: 3,
        progress_notify: true,
        filters: vec![FilterType::Noput as i32, FilterType::Nodelete as i32],
        prev_kv: true,
        watch_id: 7,
        fragment: true,
    };
    let inner = [
        0x0a, 0x01, b'a', // key = 1
        0x12, 0x01, b'b', // range_end = 2
        0x18, 0x03, // start_revision = 3
        0x20, 0x01, // progress_notify = 4
        0x2a, 0x02, 0x00, 0x01, // filters = 5, packed (proto3 default)
        0x30, 0x01, // prev_kv = 6
        0x38, 0x07, // watch_id = 7
        0x40, 0x01, // fragment = 8
    ];
    assert_wire(&create, &inner);
    // Unpacked repeated enums (as an old encoder may send them) decode the same.
    let mut unpacked = inner.to_vec();
    unpacked.splice(10..14, [0x28, 0x00, 0x28, 0x01]);
    assert_eq!(WatchCreateRequest::decode(&unpacked[..]).unwrap(), create);

    let mut wrapped = vec![0x0a, inner.len() as u8];
    wrapped.extend_from_slice(&inner);
    assert_wire(
        &WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        },
        &wrapped,
    );
    assert_wire(
        &WatchRequest {
            request_union: Some(watch_request::RequestUnion::CancelRequest(WatchCancelRequest {
                watch_id: 5,
            })),
        },
        &[0x12, 0x02, 0x08, 0x05],
    );
    assert_wire(
        &WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                WatchProgressRequest {},
            )),
        },
        &[0x1a, 0x00],
    );
}

#[test]
fn watch_response_fields_and_events_11() {
    let resp = WatchResponse {
        header: Some(ResponseHeader::default()),
        watch_id: 2,
        created: true,
        canceled: true,
        compact_revision: 5,
        cancel_reason: "x".into(),
        fragment: true,
        events: vec![Event::default()],
    };
    assert_wire(
        &resp,
        &[
            0x0a, 0x00, // header = 1
            0x10, 0x02, // watch_id = 2
            0x18, 0x01, // created = 3
            0x20, 0x01, // canceled = 4
            0x28, 0x05, // compact_revision = 5
            0x32, 0x01, b'x', // cancel_reason = 6
            0x38, 0x01, // fragment = 7
            0x5a, 0x00, // events = 11
        ],
    );
}

#[test]
fn lease_messages() {
    assert_wire(&LeaseGrantRequest { ttl: 10, id: 2 }, &[0x08, 0x0a, 0x10, 0x02]);
    assert_wire(
        &LeaseGrantResponse {
            header: None,
            id: 2,
            ttl: 3,
            error: "e".into(),
        },
        &[0x10, 0x02, 0x18, 0x03, 0x22, 0x01, b'e'],
    );
    assert_wire(
        &LeaseKeepAliveResponse {
            header: None,
            id: 2,
            ttl: 3,
        },
        &[0x10, 0x02, 0x18, 0x03],
    );
    assert_wire(
        &LeaseTimeToLiveResponse {
            header: None,
            id: 2,
            ttl: -1, // int64 -1: ten-byte varint
            granted_ttl: 4,
            keys: vec![b"k".to_vec()],
        },
        &[
            0x10, 0x02, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x20, 0x04, 0x2a,
            0x01, b'k',
        ],
    );
}

#[test]
fn member_fields_1_to_5() {
    let m = Member {
        id: 0x8e9e05c52164694d, // the id etcd gives a default single member
        name: "n".into(),
        peer_ur_ls: vec!["p".into()],
        client_ur_ls: vec!["c".into()],
        is_learner: true,
    };
    assert_wire(
        &m,
        &[
            0x08, 0xcd, 0xd2, 0x91, 0x8b, 0xd2, 0xb8, 0x81, 0xcf, 0x8e, 0x01, // ID = 1
            0x12, 0x01, b'n', // name = 2
            0x1a, 0x01, b'p', // peerURLs = 3
            0x22, 0x01, b'c', // clientURLs = 4
            0x28, 0x01, // isLearner = 5
        ],
    );
    assert_wire(
        &MemberAddRequest {
            peer_ur_ls: vec!["p".into()],
            is_learner: true,
        },
        &[0x0a, 0x01, b'p', 0x10, 0x01],
    );
    assert_wire(
        &MemberListResponse {
            header: None,
            members: vec![Member::default()],
        },
        &[0x12, 0x00],
    );
}

#[test]
fn status_response_fields_1_to_10() {
    let s = StatusResponse {
        header: Some(ResponseHeader::default()),
        version: "3".into(),
        db_size: 3,
        leader: 4,
        raft_index: 5,
        raft_term: 6,
        raft_applied_index: 7,
        errors: vec!["e".into()],
        db_size_in_use: 9,
        is_learner: true,
        ..Default::default()
    };
    assert_wire(
        &s,
        &[
            0x0a, 0x00, // header = 1
            0x12, 0x01, b'3', // version = 2
            0x18, 0x03, // dbSize = 3
            0x20, 0x04, // leader = 4
            0x28, 0x05, // raftIndex = 5
            0x30, 0x06, // raftTerm = 6
            0x38, 0x07, // raftAppliedIndex = 7
            0x42, 0x01, b'e', // errors = 8
            0x48, 0x09, // dbSizeInUse = 9
            0x50, 0x01, // isLearner = 10
        ],
    );
}

#[test]
fn maintenance_messages() {
    assert_eq!(
        [AlarmType::None, AlarmType::Nospace, AlarmType::Corrupt].map(|a| a as i32),
        [0, 1, 2]
    );
    assert_eq!(
        [AlarmAction::Get, AlarmAction::Activate, AlarmAction::Deactivate].map(|a| a as i32),
        [0, 1, 2]
    );
    assert_wire(
        &AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: 9,
            alarm: AlarmType::Nospace as i32,
        },
        &[0x08, 0x02, 0x10, 0x09, 0x18, 0x01],
    );
    assert_wire(
        &AlarmMember {
            member_id: 9,
            alarm: AlarmType::Corrupt as i32,
        },
        &[0x08, 0x09, 0x10, 0x02],
    );
    assert_wire(
        &HashKvResponse {
            header: None,
            hash: 2,
            compact_revision: 3,
            hash_revision: 4,
        },
        &[0x10, 0x02, 0x18, 0x03, 0x20, 0x04],
    );
    assert_wire(
        &SnapshotResponse {
            header: None,
            remaining_bytes: 2,
            blob: b"b".to_vec(),
            version: String::new(),
        },
        &[0x10, 0x02, 0x1a, 0x01, b'b'],
    );
    assert_wire(&MoveLeaderRequest { target_id: 5 }, &[0x08, 0x05]);
}

/// The fully qualified gRPC method paths are part of the contract too.
#[test]
fn service_names_in_descriptor() {
    use prost::Message as _;
    let set = FileDescriptorSetLite::decode(kuberaft_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut services = Vec::new();
    for file in &set.file {
        for svc in &file.service {
            for m in &svc.method {
                services.push(format!("/{}.{}/{}", file.package, svc.name, m.name));
            }
        }
    }
    for expected in [
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.KV/Put",
        "/etcdserverpb.KV/DeleteRange",
        "/etcdserverpb.KV/Txn",
        "/etcdserverpb.KV/Compact",
        "/etcdserverpb.Watch/Watch",
        "/etcdserverpb.Lease/LeaseGrant",
        "/etcdserverpb.Lease/LeaseRevoke",
        "/etcdserverpb.Lease/LeaseKeepAlive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
        "/etcdserverpb.Lease/LeaseLeases",
        "/etcdserverpb.Cluster/MemberAdd",
        "/etcdserverpb.Cluster/MemberRemove",
        "/etcdserverpb.Cluster/MemberUpdate",
        "/etcdserverpb.Cluster/MemberList",
        "/etcdserverpb.Cluster/MemberPromote",
        "/etcdserverpb.Maintenance/Alarm",
        "/etcdserverpb.Maintenance/Status",
        "/etcdserverpb.Maintenance/Defragment",
        "/etcdserverpb.Maintenance/Hash",
        "/etcdserverpb.Maintenance/HashKV",
        "/etcdserverpb.Maintenance/Snapshot",
        "/etcdserverpb.Maintenance/MoveLeader",
        "/kuberaft.raft.v1.Peer/Stream",
        "/kuberaft.raft.v1.Peer/InstallSnapshot",
        "/kuberaft.admin.v1.Admin/Status",
        "/kuberaft.admin.v1.Admin/SetTiming",
        "/kuberaft.admin.v1.Admin/TransferLeader",
        "/kuberaft.admin.v1.Admin/WatchEvents",
    ] {
        assert!(
            services.iter().any(|s| s == expected),
            "missing {expected} in {services:?}"
        );
    }
}

// Just enough of google.protobuf.FileDescriptorSet to read package, service and
// method names without depending on prost-types.
#[derive(Clone, PartialEq, prost::Message)]
struct FileDescriptorSetLite {
    #[prost(message, repeated, tag = "1")]
    file: Vec<FileLite>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct FileLite {
    #[prost(string, tag = "2")]
    package: String,
    #[prost(message, repeated, tag = "6")]
    service: Vec<ServiceLite>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct ServiceLite {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    method: Vec<MethodLite>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct MethodLite {
    #[prost(string, tag = "1")]
    name: String,
}
