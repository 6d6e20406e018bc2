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
use kuberaft_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use kuberaft_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::kv::{KvCommand, KvResult, KvStore};
use crate::members::MemberTable;
use crate::raft::{NodeId, Role};
use crate::runtime::timing::TICK_MS;
use crate::runtime::{self, NodeHandle};

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

/// Chunks of a backup queued towards a slow client before the writer waits.
const SNAPSHOT_CHUNKS_QUEUED: usize = 4;

/// Counts and checksums what passes through.
struct Tally<W: std::io::Write> {
    inner: W,
    bytes: u64,
    crc: u32,
}

impl<W: std::io::Write> std::io::Write for Tally<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Cuts the backup into `SnapshotResponse` chunks, hashing as it goes.
struct Framer<'a> {
    tx: &'a tokio::sync::mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
    header: Option<pb::ResponseHeader>,
    total: u64,
    sent: u64,
    chunk: Vec<u8>,
    sha: sha2::Sha256,
}

impl Framer<'_> {
    fn send(&mut self) -> std::io::Result<()> {
        self.sent += self.chunk.len() as u64;
        let blob = std::mem::replace(&mut self.chunk, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES));
        self.tx
            .blocking_send(Ok(pb::SnapshotResponse {
                header: self.header,
                remaining_bytes: self.total - self.sent,
                blob,
                version: VERSION.to_string(),
            }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }

    fn emit(&mut self, bytes: &[u8], hashed: bool) -> std::io::Result<()> {
        use sha2::Digest as _;
        if hashed {
            self.sha.update(bytes);
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let take = rest.len().min(SNAPSHOT_CHUNK_BYTES - self.chunk.len());
            self.chunk.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.chunk.len() == SNAPSHOT_CHUNK_BYTES {
                self.send()?;
            }
        }
        Ok(())
    }
}

/// Streams the backup [`write_backup`] would make, in `SnapshotResponse` chunks, never
/// holding the state in memory: the state machine is written from the store's read
/// view to an unlinked temporary file in `dir` (its length goes first in the format),
/// then framed and sent chunk by chunk as the client takes them.
fn stream_backup(
    kv: &KvStore,
    members: &MemberTable,
    dir: &std::path::Path,
    header: Option<pb::ResponseHeader>,
    tx: &tokio::sync::mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) -> std::io::Result<()> {
    use sha2::Digest;
    use std::io::{Read, Seek, Write};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let path = dir.join(format!(
        "backup-{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    // Unlinked at once: the space goes back when this returns, even on an error.
    std::fs::remove_file(&path)?;
    let mut state = Tally {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        bytes: 0,
        crc: 0,
    };
    runtime::write_state_machine(kv, members, &mut state)?;
    state.flush()?;
    let (len, crc) = (state.bytes, state.crc);
    let mut file = state.inner.into_inner().map_err(|e| e.into_error())?;
    file.seek(std::io::SeekFrom::Start(0))?;
    let framed = (BACKUP_MAGIC.len() as u64 + 8 + len + 4).div_ceil(BACKUP_PAGE_BYTES as u64)
        * BACKUP_PAGE_BYTES as u64;
    let total = framed + 32;
    let mut out = Framer {
        tx,
        header,
        total,
        sent: 0,
        chunk: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
        sha: sha2::Sha256::new(),
    };
    out.emit(BACKUP_MAGIC, true)?;
    out.emit(&len.to_le_bytes(), true)?;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "backup file shrank",
            ));
        }
        out.emit(&buf[..n], true)?;
        left -= n as u64;
    }
    out.emit(&crc.to_le_bytes(), true)?;
    let padding = framed - (BACKUP_MAGIC.len() as u64 + 8 + len + 4);
    out.emit(&vec![0u8; padding as usize], true)?;
    let digest = out.sha.clone().finalize();
    out.emit(&digest, false)?;
    if !out.chunk.is_empty() {
        out.send()?;
    }
    let sent = out.sent;
    debug_assert_eq!(sent, total);
    Ok(())
}

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
    /// Reaches the leader (alarm changes go through the log).
    kv: crate::api::KvService,
    member_id: NodeId,
    cluster_id: u64,
}

impl MaintenanceService {
    pub fn new(node: NodeHandle, member_id: NodeId, cluster_id: u64, kv: crate::api::KvService) -> Self {
        MaintenanceService {
            node,
            kv,
            member_id,
            cluster_id,
        }
    }

    pub fn into_server(self) -> MaintenanceServer<MaintenanceService> {
        MaintenanceServer::new(self).max_decoding_message_size(super::DECODING_BYTES_MAX)
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
        let listed = |alarms: Vec<(u64, i32)>| pb::AlarmResponse {
            // As etcd 3.5 and 3.6 (3.4 sent none): this member's header at its revision.
            header: self.header(self.node.read_local().revision()),
            alarms: alarms
                .into_iter()
                .map(|(member_id, alarm)| pb::AlarmMember { member_id, alarm })
                .collect(),
        };
        let activate = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Get) => {
                return Ok(Response::new(listed(self.node.read_local().alarms().collect())));
            }
            Ok(AlarmAction::Activate) => true,
            Ok(AlarmAction::Deactivate) => false,
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        };
        if pb::AlarmType::try_from(r.alarm).is_err() {
            return Err(Status::invalid_argument("etcdserver: unknown alarm type"));
        }
        let command = KvCommand::Alarm {
            activate,
            member: r.member_id,
            alarm: r.alarm,
        };
        match self.node.propose(command).await {
            Ok(KvResult::Alarm { changed, .. }) => Ok(Response::new(listed(changed.into_iter().collect()))),
            Ok(other) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(runtime::Error::NotLeader { leader_hint }) => {
                let mut leader = MaintenanceClient::new(self.kv.leader_channel(leader_hint)?);
                let mut answer = leader.alarm(crate::security::auth::forward(r)).await?;
                self.kv.restamp(&mut answer.get_mut().header);
                Ok(answer)
            }
            Err(e) => Err(crate::api::to_status(e)),
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
        // As etcd lists raised alarms among a member's errors.
        for (member, alarm) in store.alarms() {
            let name = pb::AlarmType::try_from(alarm)
                .map_or_else(|_| alarm.to_string(), |a| a.as_str_name().to_string());
            errors.push(format!("memberID:{member} alarm:{name} "));
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
            // etcd 3.6's fields: the quota, and the downgrade state (kuberaft has no
            // downgrade; etcd sends the empty message too). storage_version names the
            // schema of etcd's bbolt file, which kuberaft's store does not have: empty.
            db_size_quota: self.node.quota_backend_bytes().min(i64::MAX as u64) as i64,
            downgrade_info: Some(pb::DowngradeInfo::default()),
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // etcd: root only once auth is enabled.
        self.kv.check_admin(&self.kv.caller(&request)?)?;
        self.node
            .defragment()
            .await
            .map_err(|e| Status::internal(format!("defragment: {e}")))?;
        Ok(Response::new(pb::DefragmentResponse {
            header: self.header(self.node.read_local().revision()),
        }))
    }

    async fn hash(&self, request: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        // etcd: root only once auth is enabled.
        self.kv.check_admin(&self.kv.caller(&request)?)?;
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
        // etcd: root only once auth is enabled.
        self.kv.check_admin(&self.kv.caller(&request)?)?;
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
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        // etcd: root only once auth is enabled.
        self.kv.check_admin(&self.kv.caller(&request)?)?;
        let store = self.node.read_local();
        let members = self.node.members().borrow().clone();
        let header = self.header(store.revision());
        let dir = self.node.snapshots().dir().to_path_buf();
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_CHUNKS_QUEUED);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = stream_backup(&store, &members, &dir, header, &tx) {
                let _ = tx.blocking_send(Err(Status::internal(format!("cannot write the backup: {e}"))));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        // etcd: root only once auth is enabled.
        self.kv.check_admin(&self.kv.caller(&request)?)?;
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

    #[test]
    fn a_streamed_backup_is_byte_for_byte_the_backup_in_chunks_counting_down() {
        let mut kv = KvStore::default();
        for i in 1..=300u64 {
            kv.apply(
                i,
                &KvCommand::Put {
                    key: Bytes::from(format!("key{}", i % 50)),
                    value: Bytes::from(vec![b'a' + (i % 26) as u8; 700]),
                    lease: 0,
                    prev_kv: false,
                },
            );
            if i % 97 == 0 {
                kv.commit(false, None).unwrap();
            }
        }
        let members = MemberTable::default();
        let whole = write_backup(&kv, &members).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let path = dir.path().to_path_buf();
        let writer = std::thread::spawn(move || stream_backup(&kv, &members, &path, None, &tx));
        let mut streamed = Vec::new();
        let mut remaining = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            let chunk = chunk.unwrap();
            assert!(chunk.blob.len() <= SNAPSHOT_CHUNK_BYTES);
            streamed.extend_from_slice(&chunk.blob);
            remaining.push(chunk.remaining_bytes);
        }
        writer.join().unwrap().unwrap();
        assert!(whole.len() > 2 * SNAPSHOT_CHUNK_BYTES, "several chunks");
        assert_eq!(streamed, whole);
        assert_eq!(remaining.last(), Some(&0));
        assert!(remaining.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the temporary file is gone"
        );
    }
}
