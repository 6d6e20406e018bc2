//! The client API: etcd v3 gRPC services, wire compatible with etcd 3.4+ clients.
//!
//! Today: KV `Put`, `Range` and `DeleteRange`, enough for `etcdctl put/get/del` and
//! any etcd client library's basic use. `Txn` and `Compact`, Watch, Lease, Cluster
//! and Maintenance arrive with the etcd API issue and answer UNIMPLEMENTED until then.
//!
//! Any member accepts any request. Writes on a follower are forwarded to the leader
//! (whose client URLs the transport learned in the peers' hello); linearizable reads
//! are served locally after a ReadIndex round through the leader; serializable reads
//! are served from what this member has applied. Errors carry etcd's gRPC codes and
//! messages, so clients retry and fail the same way as against etcd.
pub mod admin;

use std::time::Duration;

use bytes::Bytes;
use kuberaft_proto::etcdserverpb as pb;
use kuberaft_proto::etcdserverpb::kv_client::KvClient;
use kuberaft_proto::etcdserverpb::kv_server::Kv;
use kuberaft_proto::mvccpb;
use tonic::{Request, Response, Status};

use crate::kv::{KeyValue, KvCommand, KvResult, KvStore};
use crate::raft::NodeId;
use crate::runtime::{self, NodeHandle};
use crate::transport::Directory;

/// etcd's default `--max-request-bytes`.
pub const REQUEST_BYTES_MAX: usize = 1536 * 1024;

#[derive(Clone)]
pub struct KvService {
    node: NodeHandle,
    member_id: NodeId,
    cluster_id: u64,
    directory: Directory,
}

impl KvService {
    pub fn new(node: NodeHandle, member_id: NodeId, cluster_id: u64, directory: Directory) -> Self {
        KvService {
            node,
            member_id,
            cluster_id,
            directory,
        }
    }

    pub fn into_server(self) -> pb::kv_server::KvServer<KvService> {
        pb::kv_server::KvServer::new(self).max_decoding_message_size(REQUEST_BYTES_MAX + 4096)
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.node.status().borrow().term,
        })
    }

    /// A client for the leader, to forward a write to.
    async fn leader_client(
        &self,
        hint: Option<NodeId>,
    ) -> Result<KvClient<tonic::transport::Channel>, Status> {
        let leader = hint.ok_or_else(|| Status::unavailable("etcdserver: no leader"))?;
        let url = self
            .directory
            .lock()
            .expect("not poisoned")
            .get(&leader)
            .and_then(|urls| urls.first().cloned())
            .ok_or_else(|| Status::unavailable("etcdserver: no leader"))?;
        let channel = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("etcdserver: cannot reach the leader: {e}")))?;
        Ok(KvClient::new(channel))
    }

    async fn linearizable_store(&self) -> Result<KvStore, Status> {
        self.node.read_linearizable().await.map_err(to_status)
    }
}

fn to_status(error: runtime::Error) -> Status {
    match error {
        runtime::Error::NotLeader { .. } => Status::unavailable("etcdserver: no leader"),
        runtime::Error::ProposalDropped => Status::unavailable("etcdserver: leader changed"),
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

fn kv_to_pb(kv: &KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.to_vec(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.to_vec(),
        lease: kv.lease,
    }
}

fn check_size(what: &str, bytes: usize) -> Result<(), Status> {
    if bytes > REQUEST_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "etcdserver: request is too large ({what} of {bytes} bytes; the limit is {REQUEST_BYTES_MAX})"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        if r.limit < 0 {
            return Err(Status::invalid_argument("etcdserver: limit must not be negative"));
        }
        let store = if r.serializable {
            self.node.read_local()
        } else {
            self.linearizable_store().await?
        };
        if r.revision > store.revision() {
            return Err(Status::out_of_range(
                "etcdserver: mvcc: required revision is a future revision",
            ));
        }
        if r.revision > 0 && r.revision < store.revision() {
            return Err(Status::unimplemented(
                "reads at a past revision are not served yet (history arrives with the MVCC issue)",
            ));
        }
        let filtered = r.min_mod_revision > 0
            || r.max_mod_revision > 0
            || r.min_create_revision > 0
            || r.max_create_revision > 0;
        let sorted = r.sort_order != pb::range_request::SortOrder::None as i32;
        // Sorting and filtering need every key first; the limit applies after.
        let direct_limit = if filtered || sorted { 0 } else { r.limit as usize };
        let result = store.range(
            &r.key,
            &r.range_end,
            direct_limit,
            r.count_only && !filtered,
            r.keys_only,
        );
        let mut kvs = result.kvs;
        let mut count = result.count;
        if filtered {
            kvs.retain(|kv| {
                (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                    && (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                    && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
                    && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            });
            count = kvs.len() as i64;
        }
        if sorted {
            use pb::range_request::{SortOrder, SortTarget};
            let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
            kvs.sort_by(|a, b| match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version).then(a.key.cmp(&b.key)),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision).then(a.key.cmp(&b.key)),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision).then(a.key.cmp(&b.key)),
                SortTarget::Value => a.value.cmp(&b.value).then(a.key.cmp(&b.key)),
            });
            if r.sort_order == SortOrder::Descend as i32 {
                kvs.reverse();
            }
        }
        let mut more = result.more;
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.count_only {
            kvs.clear();
        }
        Ok(Response::new(pb::RangeResponse {
            header: self.header(result.revision),
            kvs: kvs.iter().map(kv_to_pb).collect(),
            more,
            count,
        }))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        check_size("put", r.key.len() + r.value.len())?;
        if r.lease != 0 {
            return Err(Status::not_found("etcdserver: requested lease not found"));
        }
        if r.ignore_value || r.ignore_lease {
            return Err(Status::unimplemented(
                "ignore_value and ignore_lease arrive with the etcd API issue",
            ));
        }
        let command = KvCommand::Put {
            key: Bytes::from(r.key.clone()),
            value: Bytes::from(r.value.clone()),
            lease: 0,
            prev_kv: r.prev_kv,
        };
        match self.node.propose(command).await {
            Ok(KvResult::Put { revision, prev }) => Ok(Response::new(pb::PutResponse {
                header: self.header(revision),
                prev_kv: prev.as_ref().map(kv_to_pb),
            })),
            Ok(other) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(runtime::Error::NotLeader { leader_hint }) => {
                let mut leader = self.leader_client(leader_hint).await?;
                leader.put(r).await
            }
            Err(e) => Err(to_status(e)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        check_size("delete", r.key.len() + r.range_end.len())?;
        let command = KvCommand::DeleteRange {
            key: Bytes::from(r.key.clone()),
            range_end: Bytes::from(r.range_end.clone()),
            prev_kv: r.prev_kv,
        };
        match self.node.propose(command).await {
            Ok(KvResult::DeleteRange {
                revision,
                deleted,
                prev,
            }) => Ok(Response::new(pb::DeleteRangeResponse {
                header: self.header(revision),
                deleted,
                prev_kvs: prev.iter().map(kv_to_pb).collect(),
            })),
            Ok(other) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(runtime::Error::NotLeader { leader_hint }) => {
                let mut leader = self.leader_client(leader_hint).await?;
                leader.delete_range(r).await
            }
            Err(e) => Err(to_status(e)),
        }
    }

    async fn txn(&self, _request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        Err(Status::unimplemented("Txn arrives with the etcd API issue"))
    }

    async fn compact(
        &self,
        _request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        Err(Status::unimplemented("Compact arrives with the etcd API issue"))
    }
}
