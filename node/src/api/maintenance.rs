//! The etcd v3 Maintenance service.
//!
//! - `Status`: version ([`VERSION`], a 3.4-style string etcdctl prints), `dbSize`
//!   (an estimate of the bytes the in-memory MVCC history holds: there is no database
//!   file), leader, `raftIndex` (the commit index, as in etcd), `raftTerm`,
//!   `raftAppliedIndex`, `isLearner` and `errors` ("etcdserver: no leader" while none
//!   is known).
//! - `MoveLeader`: served by the leader (etcd's "etcdserver: not leader" elsewhere);
//!   hands leadership to the target voter and answers once it leads.
//! - `Alarm`: kuberaft raises no alarms (no NOSPACE: the store lives in memory and no
//!   quota applies), so GET lists none and DEACTIVATE has nothing to clear; ACTIVATE
//!   by hand is refused with UNIMPLEMENTED.
//! - `HashKV`, `Hash`: CRC32C digests of the MVCC history ([`KvStore::hash_kv`]); equal
//!   on members that applied the same revision.
//! - `Defragment`: an honest no-op success: there is no database file to defragment.
//! - `Snapshot`: streams a backup of the state machine (the file format of
//!   [`write_backup`]), which `etcdctl snapshot save` stores; `raft-node restore`
//!   builds a new cluster's data from it (etcdctl's `snapshot status/restore` expect
//!   an etcd database file and do not read it).

use std::pin::Pin;
use std::time::Duration;

use kuberaft_proto::etcdserverpb as pb;
use kuberaft_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::kv::KvStore;
use crate::members::MemberTable;
use crate::raft::{NodeId, Role};
use crate::runtime::{self, NodeHandle};
use crate::server::TICK_MS;

/// The version `Status` reports: etcd 3.4's API, served by kuberaft.
pub const VERSION: &str = "3.4.0-kuberaft";
/// Bytes of backup per `SnapshotResponse`.
pub const SNAPSHOT_CHUNK_BYTES: usize = 64 * 1024;
/// First bytes of a backup file.
pub const BACKUP_MAGIC: &[u8; 8] = b"KRBACKUP";

/// A backup, laid out so that etcdctl's `snapshot save` accepts it (it wants a
/// SHA-256 trailer after a whole number of 512-byte pages): magic, the length of the
/// state machine, the state machine (key-value store, then the member table, as in a
/// Raft snapshot), its CRC32C, zero padding to a multiple of 512 bytes, and the
/// SHA-256 of everything before it.
pub fn write_backup(kv: &KvStore, members: &MemberTable) -> std::io::Result<Vec<u8>> {
    use sha2::Digest;
    let mut state = Vec::new();
    runtime::write_state_machine(kv, members, &mut state)?;
    let mut data = BACKUP_MAGIC.to_vec();
    data.extend_from_slice(&(state.len() as u64).to_le_bytes());
    data.extend_from_slice(&state);
    data.extend_from_slice(&crc32c::crc32c(&state).to_le_bytes());
    data.resize(data.len().div_ceil(BACKUP_PAGE_BYTES) * BACKUP_PAGE_BYTES, 0);
    let digest = sha2::Sha256::digest(&data);
    data.extend_from_slice(&digest);
    Ok(data)
}

/// Page size the backup is padded to (etcd's bolt page, which etcdctl checks for).
const BACKUP_PAGE_BYTES: usize = 512;

/// Checks and reads a backup written by [`write_backup`].
pub fn read_backup(data: &[u8]) -> Result<(KvStore, MemberTable), String> {
    use sha2::Digest;
    let header = BACKUP_MAGIC.len() + 8;
    if data.len() < header + 4 + 32 || &data[..BACKUP_MAGIC.len()] != BACKUP_MAGIC {
        return Err("not a kuberaft backup (saved with `etcdctl snapshot save` from kuberaft)".into());
    }
    let (body, digest) = data.split_at(data.len() - 32);
    if sha2::Sha256::digest(body).as_slice() != digest {
        return Err("SHA-256 mismatch: the file is damaged or incomplete".into());
    }
    let len = u64::from_le_bytes(data[BACKUP_MAGIC.len()..header].try_into().expect("8 bytes"));
    if len > (body.len() - header - 4) as u64 {
        return Err("the state machine's length is past the end of the file".into());
    }
    let state = &body[header..header + len as usize];
    let crc = u32::from_le_bytes(
        body[header + state.len()..header + state.len() + 4]
            .try_into()
            .expect("4"),
    );
    if crc32c::crc32c(state) != crc {
        return Err("checksum mismatch: the file is damaged".into());
    }
    runtime::read_state_machine(&mut &state[..])
}

#[derive(Clone)]
pub struct MaintenanceService {
    node: NodeHandle,
    member_id: NodeId,
    cluster_id: u64,
}

impl MaintenanceService {
    pub fn new(node: NodeHandle, member_id: NodeId, cluster_id: u64) -> Self {
        MaintenanceService {
            node,
            member_id,
            cluster_id,
        }
    }

    pub fn into_server(self) -> MaintenanceServer<MaintenanceService> {
        MaintenanceServer::new(self)
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.node.status().borrow().term,
        })
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let r = request.into_inner();
        match AlarmAction::try_from(r.action) {
            // etcd 3.4 answers alarms without a header.
            Ok(AlarmAction::Get) | Ok(AlarmAction::Deactivate) => Ok(Response::new(pb::AlarmResponse {
                header: None,
                alarms: Vec::new(),
            })),
            Ok(AlarmAction::Activate) => Err(Status::unimplemented(
                "kuberaft raises no alarms and does not take them by hand (no space quota applies: the store lives in memory)",
            )),
            Err(_) => Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        }
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.node.status().borrow().clone();
        let store = self.node.read_local();
        let (size, in_use) = store.size_bytes();
        let mut errors = Vec::new();
        if status.leader.is_none() {
            errors.push("etcdserver: no leader".to_string());
        }
        Ok(Response::new(pb::StatusResponse {
            header: self.header(store.revision()),
            version: VERSION.to_string(),
            db_size: size as i64,
            leader: status.leader.unwrap_or(0),
            raft_index: status.commit,
            raft_term: status.term,
            raft_applied_index: store.applied(),
            errors,
            db_size_in_use: in_use as i64,
            is_learner: status.membership.is_learner(self.member_id),
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // The history lives in memory: there is no file to defragment.
        Ok(Response::new(pb::DefragmentResponse {
            header: self.header(self.node.read_local().revision()),
        }))
    }

    async fn hash(&self, _request: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        let store = self.node.read_local();
        Ok(Response::new(pb::HashResponse {
            header: self.header(store.revision()),
            hash: store.hash_kv(i64::MAX),
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let r = request.into_inner();
        let store = self.node.read_local();
        let revision = if r.revision <= 0 {
            store.revision()
        } else {
            r.revision
        };
        if revision > store.revision() {
            return Err(Status::out_of_range(
                "etcdserver: mvcc: required revision is a future revision",
            ));
        }
        if revision < store.compacted() {
            return Err(Status::out_of_range(
                "etcdserver: mvcc: required revision has been compacted",
            ));
        }
        Ok(Response::new(pb::HashKvResponse {
            header: self.header(store.revision()),
            hash: store.hash_kv(revision),
            compact_revision: store.compacted(),
            hash_revision: revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let store = self.node.read_local();
        let members = self.node.members().borrow().clone();
        let revision = store.revision();
        // The store is in memory already; its serialised form is at most about as large.
        let data = tokio::task::spawn_blocking(move || write_backup(&store, &members))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("cannot write the backup: {e}")))?;
        let header = self.header(revision);
        let total = data.len();
        let chunks: Vec<Result<pb::SnapshotResponse, Status>> = data
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .scan(0usize, |sent, chunk| {
                *sent += chunk.len();
                Some(Ok(pb::SnapshotResponse {
                    header,
                    remaining_bytes: (total - *sent) as u64,
                    blob: chunk.to_vec(),
                    version: VERSION.to_string(),
                }))
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        let status = self.node.status().borrow().clone();
        if status.role != Role::Leader {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        if !status.membership.is_voter(target) {
            return Err(Status::failed_precondition("etcdserver: bad leader transferee"));
        }
        // etcd 3.4 answers a leadership transfer without a header.
        let header = None;
        if target == self.member_id {
            return Ok(Response::new(pb::MoveLeaderResponse { header }));
        }
        self.node.transfer_leadership(target).await.map_err(|e| match e {
            runtime::Error::NotLeader { .. } => Status::failed_precondition("etcdserver: not leader"),
            other => Status::unavailable(format!("etcdserver: leader transfer failed: {other}")),
        })?;
        let election = Duration::from_millis(u64::from(status.timing.election_ticks) * TICK_MS);
        let wait = (2 * election).max(Duration::from_secs(5));
        let mut watch = self.node.status();
        let moved = tokio::time::timeout(wait, async {
            watch.wait_for(|s| s.leader == Some(target)).await.is_ok()
        })
        .await;
        match moved {
            Ok(true) => Ok(Response::new(pb::MoveLeaderResponse { header })),
            Ok(false) => Err(Status::unavailable("etcdserver: server stopped")),
            Err(_) => Err(Status::deadline_exceeded(
                "etcdserver: request timed out, leader transfer took too long",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::kv::KvCommand;

    #[test]
    fn a_backup_round_trips_has_etcdctls_shape_and_damage_is_refused() {
        let mut kv = KvStore::default();
        for i in 1..=20u64 {
            kv.apply(
                i,
                &KvCommand::Put {
                    key: Bytes::from(format!("key{i}")),
                    value: Bytes::from(vec![b'v'; 100]),
                    lease: 0,
                    prev_kv: false,
                },
            );
        }
        let members = MemberTable::default();
        let data = write_backup(&kv, &members).unwrap();
        assert_eq!(data.len() % 512, 32, "etcdctl's check: pages, then a SHA-256");
        let (restored, _) = read_backup(&data).unwrap();
        assert_eq!(restored.hash_kv(i64::MAX), kv.hash_kv(i64::MAX));
        assert_eq!(restored.applied(), 20);
        let mut damaged = data.clone();
        damaged[40] ^= 1;
        assert!(read_backup(&damaged).unwrap_err().contains("SHA-256"));
        assert!(read_backup(&data[..data.len() - 1]).is_err());
        assert!(read_backup(b"not a backup at all, not even close to one......").is_err());
    }
}
