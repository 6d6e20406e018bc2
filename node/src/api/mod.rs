//! The client API: etcd v3 gRPC services, wire compatible with etcd 3.4+ clients.
//!
//! What each RPC serves:
//!
//! | Service | RPC | Served |
//! | --- | --- | --- |
//! | KV | Range, Put, DeleteRange, Txn, Compact | fully: every option, at any revision not compacted; puts (plain and in txns) attach keys to leases |
//! | Watch | Watch | key, range, prefix and from-key; `start_revision` (history from the MVCC store), `prev_kv`, NOPUT/NODELETE filters, `progress_notify` (every 10 min, as etcd) and progress requests, client- or server-chosen `watch_id`, cancel; a compacted start revision is canceled with `compact_revision`. `fragment` is ignored: a revision's events always travel in one response |
//! | Lease | LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases | fully, with etcd's minimum TTL and errors; expiry driven by the leader through the log |
//! | Cluster | MemberList, MemberAdd, MemberRemove, MemberUpdate, MemberPromote | see [`cluster`] |
//! | Maintenance | Status, MoveLeader, Alarm, HashKV, Hash, Defragment, Snapshot | see [`maintenance`] |
//! | Auth | AuthEnable, AuthDisable, AuthStatus, Authenticate, User*, Role* | etcd's users, roles and key permissions, replicated through the log; simple tokens; permission checks in the other services: see [`auth`] |
//!
//! Any member accepts any request. Writes on a follower (put, delete, txn, compaction,
//! lease grant and revoke) go to the leader over the peer connection (the runtime's
//! `ProposeRequest`, as etcd's followers forward `MsgProp`) and are answered from this
//! member's own apply, with its own header; linearizable reads
//! are served locally after a ReadIndex round through the leader; serializable reads
//! are served from what this member has applied. Watches are served by the member
//! the client is connected to, from its applied history (the same on every member);
//! lease keepalives and TimeToLive need the leader's clock and are forwarded to its
//! client port (whose URLs the transport learned in the peers' hello), as are
//! membership changes, alarm disarm and move-leader; such an answer is restamped with
//! this member's header, as etcd answers (the member the client asked, its term). Errors carry etcd's gRPC codes and messages,
//! so clients retry and fail the same way as against etcd.
//!
//! Compatibility is decided by comparison: `tests/etcd_compat.rs` runs the same
//! etcdctl commands and etcd-client calls against kuberaft and a real etcd 3.4
//! cluster and fails on any difference not listed there with its reason.
//!
//! Layout: this file holds the KV service and what the services share (headers,
//! forwarding, error mapping); `watch.rs` and `lease.rs` the Watch and Lease
//! services; `admin.rs` the kuberaft admin service.
pub mod admin;
pub mod auth;
pub mod cluster;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kuberaft_proto::etcdserverpb as pb;
use kuberaft_proto::etcdserverpb::kv_server::Kv;
use kuberaft_proto::mvccpb;
use tonic::{Request, Response, Status};

use crate::kv::{
    Compare, CompareResult, CompareTarget, KeyValue, KvCommand, KvError, KvResult, KvStore, OpResult,
    RangeQuery, RangeResult, SortOrder, SortTarget, Txn, TxnOp, TXN_DEPTH_MAX, TXN_OPS_MAX,
};
use crate::raft::NodeId;
use crate::runtime::{self, NodeHandle};
use crate::transport::Directory;

/// etcd's default `--max-request-bytes`.
pub const REQUEST_BYTES_MAX: usize = 1536 * 1024;

/// The largest client message gRPC decodes: the request limit plus etcd's allowance for
/// gRPC's own overhead (512 KiB, etcd's `grpcOverheadBytes`). A request between the two
/// is decoded and then refused by the service with etcd's own "request is too large",
/// which clients map to `ErrRequestTooLarge`; only a larger one gets gRPC's
/// resource-exhausted answer, as from etcd.
pub const DECODING_BYTES_MAX: usize = REQUEST_BYTES_MAX + 512 * 1024;

#[derive(Clone)]
pub struct KvService {
    node: NodeHandle,
    member_id: NodeId,
    cluster_id: u64,
    directory: Directory,
    /// One connection per leader a write was forwarded to (tonic multiplexes
    /// requests on it), so forwarding costs no connection set-up per request.
    leaders: Arc<Mutex<HashMap<(NodeId, String), tonic::transport::Channel>>>,
}

impl KvService {
    pub fn new(node: NodeHandle, member_id: NodeId, cluster_id: u64, directory: Directory) -> Self {
        KvService {
            node,
            member_id,
            cluster_id,
            directory,
            leaders: Arc::default(),
        }
    }

    pub fn into_server(self) -> pb::kv_server::KvServer<KvService> {
        pb::kv_server::KvServer::new(self).max_decoding_message_size(DECODING_BYTES_MAX)
    }

    pub(crate) fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.node.status().borrow().term,
        })
    }

    /// A forwarded answer as etcd gives it: the header names the member the client
    /// talked to (its member ID and raft term), never the leader that served it; the
    /// revision is kept (etcd fills it from the local store only when it is 0).
    pub(crate) fn restamp(&self, header: &mut Option<pb::ResponseHeader>) {
        let local = self.header(0).expect("always a header");
        match header {
            Some(h) => {
                h.cluster_id = local.cluster_id;
                h.member_id = local.member_id;
                h.raft_term = local.raft_term;
            }
            None => *header = Some(local),
        }
    }

    /// A connection to the leader (for any of its client services).
    pub(crate) fn leader_channel(&self, hint: Option<NodeId>) -> Result<tonic::transport::Channel, Status> {
        let leader = hint.ok_or_else(|| Status::unavailable("etcdserver: no leader"))?;
        let url = self
            .directory
            .lock()
            .expect("not poisoned")
            .get(&leader)
            .and_then(|urls| urls.first().cloned())
            .ok_or_else(|| Status::unavailable("etcdserver: no leader"))?;
        let key = (leader, url.clone());
        if let Some(channel) = self.leaders.lock().expect("not poisoned").get(&key) {
            return Ok(channel.clone());
        }
        // Lazily connected; a broken connection is re-established by tonic itself.
        let channel = crate::security::tls::client_port_endpoint(&url)?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        let mut leaders = self.leaders.lock().expect("not poisoned");
        // Bounded: a cluster has at most a handful of members.
        if leaders.len() >= 16 {
            leaders.clear();
        }
        leaders.insert(key, channel.clone());
        Ok(channel)
    }

    /// Waits until this member knows a leader other than `previous`, at most until
    /// `deadline`; whether it does.
    pub(crate) async fn another_leader(
        &self,
        previous: Option<NodeId>,
        deadline: tokio::time::Instant,
    ) -> bool {
        let mut status = self.node.status();
        let changed = status.wait_for(|s| s.leader.is_some() && s.leader != previous);
        let found = matches!(tokio::time::timeout_at(deadline, changed).await, Ok(Ok(_)));
        found
    }

    /// Proposes `command` and answers with `local(result)`, the result of this
    /// member's own apply. On a follower the runtime forwards the command to the leader
    /// over the peer connection (as etcd's followers forward `MsgProp`: a firewall that
    /// lets only the peer port through between members is enough) and the client is
    /// answered once this member applied it: read-your-writes on the member asked.
    /// A write no leader took (none known, or the one asked had stepped down) did not
    /// take effect: it waits for a leader, up to [`FORWARD_WAIT`], and is proposed
    /// again, as etcd's followers hold a proposal until a leader takes it.
    pub(crate) async fn propose_or_forward<R, L>(
        &self,
        command: KvCommand,
        local: L,
    ) -> Result<Response<R>, Status>
    where
        L: Fn(KvResult) -> Result<Response<R>, Status>,
    {
        let deadline = tokio::time::Instant::now() + FORWARD_WAIT;
        loop {
            let asked = self.node.status().borrow().leader;
            return match self.node.propose(command.clone()).await {
                Ok(result) => local(result),
                Err(runtime::Error::NotLeader { .. }) if self.another_leader(asked, deadline).await => {
                    continue
                }
                Err(e) => Err(to_status(e)),
            };
        }
    }

    /// Refuses a write that would grow the store over the quota (etcd's NOSPACE), and
    /// raises the alarm through the log the first time.
    pub(crate) async fn check_quota(&self, command: &KvCommand, cost: u64) -> Result<(), Status> {
        let raised = match self.node.check_quota(command, cost) {
            Ok(()) => return Ok(()),
            Err(raised) => raised,
        };
        if !raised {
            let raise = KvCommand::Alarm {
                activate: true,
                member: self.node.id(),
                alarm: crate::kv::ALARM_NOSPACE,
            };
            // Proposed here on the leader; a follower forwards it to the leader.
            let outcome = self.node.propose(raise).await.map(drop);
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "could not raise the NOSPACE alarm (the next write over the quota tries again)");
            }
        }
        Err(kv_status(KvError::NoSpace))
    }

    async fn linearizable_store(&self) -> Result<KvStore, Status> {
        self.node.read_linearizable().await.map_err(to_status)
    }
}

/// How long a write waits for a leader it can reach (etcd's request timeout is 5 s plus
/// two election timeouts).
pub(crate) const FORWARD_WAIT: Duration = Duration::from_secs(5);

/// etcd's `ErrTimeoutDueToLeaderFail`: a write whose outcome is unknown because the
/// leader went away while it was pending.
pub(crate) const TIMEOUT_DUE_TO_LEADER_FAIL: &str =
    "etcdserver: request timed out, possibly due to previous leader failure";

pub(crate) fn to_status(error: runtime::Error) -> Status {
    match error {
        runtime::Error::NotLeader { .. } => Status::unavailable("etcdserver: no leader"),
        runtime::Error::ProposalDropped => Status::unavailable("etcdserver: leader changed"),
        runtime::Error::OutcomeUnknown => Status::unavailable(TIMEOUT_DUE_TO_LEADER_FAIL),
        runtime::Error::Stopped => Status::unavailable("etcdserver: server stopped"),
        runtime::Error::Raft(crate::raft::Error::Busy(_))
        | runtime::Error::Raft(crate::raft::Error::TooManyReads) => {
            Status::resource_exhausted("etcdserver: too many requests")
        }
        runtime::Error::Raft(crate::raft::Error::TransferInProgress) => {
            Status::unavailable("etcdserver: leader changed")
        }
        other => Status::internal(other.to_string()),
    }
}

pub(crate) fn kv_to_pb(kv: &KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.to_vec(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.to_vec(),
        lease: kv.lease,
    }
}

/// Refuses a request over `--max-request-bytes` with etcd's error. The message is
/// etcd's exactly: clients map errors by their text (Go's `rpctypes.Error`), so any
/// detail added here would turn `ErrRequestTooLarge` into an unknown error; the detail
/// goes to the log instead.
fn check_size(what: &str, bytes: usize) -> Result<(), Status> {
    if bytes > REQUEST_BYTES_MAX {
        tracing::debug!(
            what,
            bytes,
            limit = REQUEST_BYTES_MAX,
            "request refused: too large"
        );
        return Err(Status::invalid_argument("etcdserver: request is too large"));
    }
    Ok(())
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let query = range_query(&r)?;
        self.check_range(&caller, &r.key, &r.range_end, auth::PermKind::Read)?;
        let store = if r.serializable {
            self.node.read_local()
        } else {
            self.linearizable_store().await?
        };
        let result = store.query(&query).map_err(kv_status)?;
        Ok(Response::new(self.range_response(result)))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        put_checks(&r)?;
        self.check_range(&caller, &r.key, &[], auth::PermKind::Write)?;
        if r.prev_kv {
            self.check_range(&caller, &r.key, &[], auth::PermKind::Read)?;
        }
        if r.ignore_value || r.ignore_lease {
            // A put that keeps the current value or lease needs the key to exist when
            // it is applied: that check is a txn's, so it travels as a one-put txn.
            let command = KvCommand::Txn(Txn {
                compares: Vec::new(),
                success: vec![put_op(&r)],
                failure: Vec::new(),
            });
            self.check_quota(&command, (r.key.len() + r.value.len()) as u64)
                .await?;
            return self
                .propose_or_forward(command, |result| match result {
                    KvResult::Txn {
                        revision, responses, ..
                    } => match responses.into_iter().next() {
                        Some(OpResult::Put { prev }) => Ok(Response::new(pb::PutResponse {
                            header: self.header(revision),
                            prev_kv: prev.as_ref().map(kv_to_pb),
                        })),
                        other => Err(Status::internal(format!("unexpected result {other:?}"))),
                    },
                    KvResult::Failed { error, .. } => Err(kv_status(error)),
                    other => Err(Status::internal(format!("unexpected result {other:?}"))),
                })
                .await;
        }
        // The request is owned: its key and value move into the command, uncopied.
        let size = (r.key.len() + r.value.len()) as u64;
        let command = KvCommand::Put {
            key: Bytes::from(r.key),
            value: Bytes::from(r.value),
            lease: r.lease,
            prev_kv: r.prev_kv,
        };
        self.check_quota(&command, size).await?;
        self.propose_or_forward(command, |result| match result {
            KvResult::Put { revision, prev } => Ok(Response::new(pb::PutResponse {
                header: self.header(revision),
                prev_kv: prev.as_ref().map(kv_to_pb),
            })),
            KvResult::Failed { error, .. } => Err(kv_status(error)),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        })
        .await
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(empty_key());
        }
        check_size("delete", r.key.len() + r.range_end.len())?;
        self.check_range(&caller, &r.key, &r.range_end, auth::PermKind::Write)?;
        if r.prev_kv {
            self.check_range(&caller, &r.key, &r.range_end, auth::PermKind::Read)?;
        }
        let command = KvCommand::DeleteRange {
            key: Bytes::from(r.key.clone()),
            range_end: Bytes::from(r.range_end.clone()),
            prev_kv: r.prev_kv,
        };
        self.propose_or_forward(command, |result| match result {
            KvResult::DeleteRange {
                revision,
                deleted,
                prev,
            } => Ok(Response::new(pb::DeleteRangeResponse {
                header: self.header(revision),
                deleted,
                prev_kvs: prev.iter().map(kv_to_pb).collect(),
            })),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        })
        .await
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let txn = txn_from_pb(&r, 0)?;
        txn.check().map_err(kv_status)?;
        self.check_txn(&caller, &txn)?;
        if !txn.writes() {
            // Like etcd, a txn that only reads is served as a linearizable read.
            let store = self.linearizable_store().await?;
            return self.txn_response(store.evaluate_read_only_txn(&txn));
        }
        let command = KvCommand::Txn(txn);
        let encoded = command.encode().len();
        check_size("txn", encoded)?;
        self.check_quota(&command, encoded as u64).await?;
        self.propose_or_forward(command, |result| self.txn_response(result))
            .await
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        // Root only once auth is enabled, as etcd 3.5 and 3.6 (3.4 let any user compact;
        // the stricter rule is kept, see etcd_compat's known differences).
        let caller = self.caller(&request)?;
        self.check_admin(&caller)?;
        let r = request.into_inner();
        // `physical` asks etcd to answer only once the compaction reached its backend;
        // here compaction is applied in memory with the log entry, so the answer comes
        // after that in either case: physical is treated as logical.
        let command = KvCommand::Compact { revision: r.revision };
        self.propose_or_forward(command, |result| match result {
            KvResult::Compact { revision } => Ok(Response::new(pb::CompactionResponse {
                header: self.header(revision),
            })),
            KvResult::Failed { error, .. } => Err(kv_status(error)),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        })
        .await
    }
}

impl KvService {
    fn range_response(&self, result: RangeResult) -> pb::RangeResponse {
        pb::RangeResponse {
            header: self.header(result.revision),
            kvs: result.kvs.iter().map(kv_to_pb).collect(),
            more: result.more,
            count: result.count,
        }
    }

    fn txn_response(&self, result: KvResult) -> Result<Response<pb::TxnResponse>, Status> {
        match result {
            KvResult::Txn {
                revision,
                succeeded,
                responses,
            } => Ok(Response::new(
                self.txn_response_pb(revision, succeeded, responses),
            )),
            KvResult::Failed { error, .. } => Err(kv_status(error)),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    /// The outer response carries the full header; as in etcd, the responses of the
    /// operations inside carry only the revision.
    fn txn_response_pb(&self, revision: i64, succeeded: bool, responses: Vec<OpResult>) -> pb::TxnResponse {
        pb::TxnResponse {
            header: self.header(revision),
            ..txn_ops_pb(revision, succeeded, responses)
        }
    }
}

/// The header of an operation's response inside a txn: the revision only, as etcd's.
fn inner_header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision,
        ..pb::ResponseHeader::default()
    })
}

fn txn_ops_pb(revision: i64, succeeded: bool, responses: Vec<OpResult>) -> pb::TxnResponse {
    use pb::response_op::Response as Op;
    let responses = responses
        .into_iter()
        .map(|response| {
            let response = match response {
                OpResult::Range(result) => Op::ResponseRange(pb::RangeResponse {
                    header: inner_header(result.revision),
                    kvs: result.kvs.iter().map(kv_to_pb).collect(),
                    more: result.more,
                    count: result.count,
                }),
                OpResult::Put { prev } => Op::ResponsePut(pb::PutResponse {
                    header: inner_header(revision),
                    prev_kv: prev.as_ref().map(kv_to_pb),
                }),
                OpResult::DeleteRange { deleted, prev } => Op::ResponseDeleteRange(pb::DeleteRangeResponse {
                    header: inner_header(revision),
                    deleted,
                    prev_kvs: prev.iter().map(kv_to_pb).collect(),
                }),
                OpResult::Txn { succeeded, responses } => {
                    // etcd leaves a nested txn's header empty (revision 0).
                    Op::ResponseTxn(pb::TxnResponse {
                        header: Some(pb::ResponseHeader::default()),
                        ..txn_ops_pb(revision, succeeded, responses)
                    })
                }
            };
            pb::ResponseOp {
                response: Some(response),
            }
        })
        .collect();
    pb::TxnResponse {
        header: inner_header(revision),
        succeeded,
        responses,
    }
}

pub(crate) fn kv_status(error: KvError) -> Status {
    match error {
        KvError::Compacted | KvError::FutureRevision => Status::out_of_range(error.to_string()),
        KvError::DuplicateKey | KvError::TooManyOps | KvError::TooDeep => {
            Status::invalid_argument(error.to_string())
        }
        // etcd's ErrGRPCKeyNotFound is InvalidArgument; its lease-not-found is NotFound.
        KvError::KeyNotFound => Status::invalid_argument(error.to_string()),
        KvError::LeaseNotFound => Status::not_found(error.to_string()),
        KvError::LeaseExists => Status::failed_precondition(error.to_string()),
        KvError::LeaseTtlTooLarge => Status::out_of_range(error.to_string()),
        KvError::TooManyLeases | KvError::NoSpace => Status::resource_exhausted(error.to_string()),
        KvError::Auth(error) => auth::auth_status(error),
    }
}

fn empty_key() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

fn range_query(r: &pb::RangeRequest) -> Result<RangeQuery, Status> {
    use pb::range_request::{SortOrder as Order, SortTarget as Target};
    if r.key.is_empty() {
        return Err(empty_key());
    }
    if r.limit < 0 {
        return Err(Status::invalid_argument("etcdserver: limit must not be negative"));
    }
    let sort_order = match Order::try_from(r.sort_order) {
        Ok(Order::None) => SortOrder::None,
        Ok(Order::Ascend) => SortOrder::Ascend,
        Ok(Order::Descend) => SortOrder::Descend,
        Err(_) => return Err(Status::invalid_argument("etcdserver: invalid sort option")),
    };
    let sort_target = match Target::try_from(r.sort_target) {
        Ok(Target::Key) => SortTarget::Key,
        Ok(Target::Version) => SortTarget::Version,
        Ok(Target::Create) => SortTarget::Create,
        Ok(Target::Mod) => SortTarget::Mod,
        Ok(Target::Value) => SortTarget::Value,
        Err(_) => return Err(Status::invalid_argument("etcdserver: invalid sort option")),
    };
    Ok(RangeQuery {
        key: Bytes::from(r.key.clone()),
        range_end: Bytes::from(r.range_end.clone()),
        revision: r.revision,
        limit: r.limit,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

fn put_checks(r: &pb::PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(empty_key());
    }
    check_size("put", r.key.len() + r.value.len())?;
    if r.ignore_value && !r.value.is_empty() {
        return Err(Status::invalid_argument("etcdserver: value is provided"));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Status::invalid_argument("etcdserver: lease is provided"));
    }
    Ok(())
}

fn put_op(r: &pb::PutRequest) -> TxnOp {
    TxnOp::Put {
        key: Bytes::from(r.key.clone()),
        value: Bytes::from(r.value.clone()),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

/// Translates a client's txn, refusing what a plain request would refuse.
fn txn_from_pb(r: &pb::TxnRequest, depth: usize) -> Result<Txn, Status> {
    use pb::compare::{CompareResult as Result_, CompareTarget as Target, TargetUnion};
    if depth >= TXN_DEPTH_MAX {
        return Err(kv_status(KvError::TooDeep));
    }
    if r.compare.len() > TXN_OPS_MAX || r.success.len() > TXN_OPS_MAX || r.failure.len() > TXN_OPS_MAX {
        return Err(kv_status(KvError::TooManyOps));
    }
    let mut compares = Vec::with_capacity(r.compare.len());
    for c in &r.compare {
        if c.key.is_empty() {
            return Err(empty_key());
        }
        let result = match Result_::try_from(c.result) {
            Ok(Result_::Equal) => CompareResult::Equal,
            Ok(Result_::Greater) => CompareResult::Greater,
            Ok(Result_::Less) => CompareResult::Less,
            Ok(Result_::NotEqual) => CompareResult::NotEqual,
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown compare result")),
        };
        // The target names the field; a union of another kind (or none) compares
        // against that field's zero.
        let number =
            |want: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(want).unwrap_or(0);
        let target = match Target::try_from(c.target) {
            Ok(Target::Version) => CompareTarget::Version(number(|u| match u {
                TargetUnion::Version(n) => Some(*n),
                _ => None,
            })),
            Ok(Target::Create) => CompareTarget::Create(number(|u| match u {
                TargetUnion::CreateRevision(n) => Some(*n),
                _ => None,
            })),
            Ok(Target::Mod) => CompareTarget::Mod(number(|u| match u {
                TargetUnion::ModRevision(n) => Some(*n),
                _ => None,
            })),
            Ok(Target::Lease) => CompareTarget::Lease(number(|u| match u {
                TargetUnion::Lease(n) => Some(*n),
                _ => None,
            })),
            Ok(Target::Value) => CompareTarget::Value(match &c.target_union {
                Some(TargetUnion::Value(v)) => Bytes::from(v.clone()),
                _ => Bytes::new(),
            }),
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown compare target")),
        };
        compares.push(Compare {
            key: Bytes::from(c.key.clone()),
            range_end: Bytes::from(c.range_end.clone()),
            result,
            target,
        });
    }
    let branch = |ops: &[pb::RequestOp]| -> Result<Vec<TxnOp>, Status> {
        use pb::request_op::Request as Op;
        ops.iter()
            .map(|op| match &op.request {
                Some(Op::RequestRange(r)) => Ok(TxnOp::Range(range_query(r)?)),
                Some(Op::RequestPut(r)) => {
                    put_checks(r)?;
                    Ok(put_op(r))
                }
                Some(Op::RequestDeleteRange(r)) => {
                    if r.key.is_empty() {
                        return Err(empty_key());
                    }
                    Ok(TxnOp::DeleteRange {
                        key: Bytes::from(r.key.clone()),
                        range_end: Bytes::from(r.range_end.clone()),
                        prev_kv: r.prev_kv,
                    })
                }
                Some(Op::RequestTxn(r)) => Ok(TxnOp::Txn(txn_from_pb(r, depth + 1)?)),
                None => Err(Status::invalid_argument("etcdserver: request op is empty")),
            })
            .collect()
    };
    Ok(Txn {
        compares,
        success: branch(&r.success)?,
        failure: branch(&r.failure)?,
    })
}
