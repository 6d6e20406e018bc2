//! The task that owns the consensus core and executes what it asks for.
//!
//! One tokio task owns the [`RaftCore`]. Every input reaches it through a bounded
//! channel: peer messages, client requests, ticks, persistence acknowledgements and
//! snapshot events. After each input it takes the core's commands and hands them to
//! the tasks that do the I/O:
//!
//! - the WAL writer (group commit, `storage::WalWriter`): `Persist` and `CompactLog`;
//!   a small waiter task turns its acknowledgements back into `persisted(seq)`;
//! - the transport ([`Outbox`]): `Send`, one bounded queue per peer;
//! - the apply task: `Apply`, `RestoreSnapshot`, `BuildSnapshot`. It owns the state
//!   machine, answers client writes once their entry is applied, and publishes the
//!   applied store through a `watch` (an O(1) clone of a persistent map), so readers
//!   never take a lock across an await and snapshots are written while writes go on.
//!
//! Role, term, leader, membership and timing are published through a `watch` too,
//! with where the timing in force came from ([`TimingState`]), the log's bounds and,
//! per peer, when it was last heard from (for the admin API's status).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub mod timing;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::kv::{Engine, KvCommand, KvResult, KvStore};
use crate::log_events::{LogEvent, LogEvents};
use crate::members::{MemberCommand, MemberTable};
use crate::raft::{
    Command, ConfChange, Config as RaftConfig, DurableState, EntryPayload, ForwardFailure, Index, Message,
    MessageBody, NodeId, PeerStatus, ProposeRefusal, RaftCore, ReadFailure, Status, Term, Timing,
};
use crate::storage::{self, LogStore, PersistRequest, SnapshotStore, WalConfig, WalWriter, WriterConfig};

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub raft: RaftConfig,
    pub cluster_id: u64,
    pub wal_dir: PathBuf,
    pub snapshot_dir: PathBuf,
    /// The state store's engine file (default: `state.redb` in the snapshot directory,
    /// the `--data-dir` of a member).
    pub state_path: PathBuf,
    /// When the state store fsyncs (see [`BackendBatch`]).
    pub backend_batch: BackendBatch,
    /// The state store's quota (etcd's `--quota-backend-bytes`): over it, writes that
    /// would grow the store raise the NOSPACE alarm and are refused.
    pub quota_backend_bytes: u64,
    /// Length of one core tick.
    pub tick: Duration,
    /// `Some(voters)`: a member of a brand-new cluster (used only when the WAL is
    /// empty). `None`: join an existing cluster, or restart.
    pub bootstrap: Option<Vec<NodeId>>,
    pub keep_snapshots: usize,
    pub writer: WriterConfig,
    /// Capacity of the channels into the core task.
    pub inbound_capacity: usize,
    pub request_capacity: usize,
    pub apply_capacity: usize,
    /// Inputs handled per wake-up before the commands run (1: no batching; the
    /// benchmark's ablation uses it).
    pub input_batch_max: usize,
}

impl RuntimeConfig {
    pub fn new(raft: RaftConfig, cluster_id: u64, wal_dir: PathBuf, snapshot_dir: PathBuf) -> Self {
        RuntimeConfig {
            raft,
            cluster_id,
            wal_dir,
            state_path: snapshot_dir.join("state.redb"),
            snapshot_dir,
            backend_batch: BackendBatch::default(),
            quota_backend_bytes: DEFAULT_QUOTA_BACKEND_BYTES,
            tick: Duration::from_millis(10),
            bootstrap: None,
            keep_snapshots: 3,
            writer: WriterConfig::default(),
            inbound_capacity: 4096,
            request_capacity: 4096,
            apply_capacity: 1024,
            input_batch_max: INPUT_BATCH_MAX,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error(transparent)]
    Raft(#[from] crate::raft::Error),
    #[error("not the leader (leader: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("the entry was overwritten by a new leader before it committed; it did not take effect")]
    ProposalDropped,
    /// A write forwarded to the leader, which went away (or stayed silent) before it
    /// said where it appended it: it may or may not take effect (etcd's
    /// `ErrTimeoutDueToLeaderFail`).
    #[error("the leader was lost while the write was forwarded to it; it may or may not take effect")]
    OutcomeUnknown,
    #[error("the node is shutting down")]
    Stopped,
    #[error("snapshot state: {0}")]
    Snapshot(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the runtime sends messages to peers. The gRPC transport implements it; tests
/// use an in-memory one. Must never block: a full queue drops the message (Raft
/// retries) and the transport reports the peer unreachable through `Inbox`.
pub trait Outbox: Send + Sync + 'static {
    fn send(&self, message: Message);
}

/// etcd's default backend quota, 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 << 30;

/// Requests from clients and admin tools.
enum Request {
    Propose {
        command: KvCommand,
        reply: oneshot::Sender<Result<KvResult>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<Index>>,
    },
    TransferLeadership {
        target: NodeId,
        reply: oneshot::Sender<Result<()>>,
    },
    /// A membership change or a member command; answered with the entry's index once
    /// it is applied here.
    ProposeEntry {
        entry: Proposal,
        reply: oneshot::Sender<Result<Index>>,
    },
    /// Answered once the Timing entry is applied here (the new timing is in force on
    /// this member), with its index.
    ProposeTiming {
        timing: Timing,
        reply: oneshot::Sender<Result<Index>>,
    },
}

/// Where the timing in force came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimingSource {
    /// `--heartbeat-interval` and `--election-timeout`: no Timing entry applied yet.
    Flags,
    /// A Timing entry committed while this process ran (`SetTiming`).
    Admin,
    /// Restored from a snapshot or replayed from the log at start-up.
    Log,
}

/// The timing in force on this member and its origin, published through a `watch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimingState {
    pub timing: Timing,
    pub source: TimingSource,
    /// Index of the Timing entry in force (of the snapshot that carried it when it
    /// was restored from one); 0 for flags.
    pub index: Index,
    /// When this member started using it.
    pub since: SystemTime,
}

/// Bounds of this member's log, for status pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogBounds {
    /// First index still in the log (older ones are in the snapshot).
    pub first_index: Index,
    /// Index of the newest snapshot.
    pub snapshot_index: Index,
}

/// When each peer was last heard from (any message). Written once per wake-up of the
/// core task; the lock is never held across an await.
type LastContact = Arc<Mutex<HashMap<NodeId, Instant>>>;

/// Inputs from the transport and from the runtime's own helper tasks.
pub enum Input {
    Message(Message),
    /// The transport could not deliver a snapshot to this peer.
    SnapshotFailed(NodeId),
    /// The transport lost its stream to this peer.
    Unreachable(NodeId),
    Persisted(u64),
    SnapshotBuilt(crate::raft::SnapshotMeta),
    SnapshotBuildFailed,
    Fatal(String),
}

/// What `ProposeEntry` proposes.
enum Proposal {
    ConfChange(ConfChange),
    Member(MemberCommand),
}

/// Who waits for an entry to be applied.
enum Waiter {
    /// A key-value command's client: gets the command's result.
    Kv(oneshot::Sender<Result<KvResult>>),
    /// Gets the entry's index once it is applied.
    Applied(oneshot::Sender<Result<Index>>),
}

impl Waiter {
    fn fail(self, error: Error) {
        match self {
            Waiter::Kv(reply) => {
                let _ = reply.send(Err(error));
            }
            Waiter::Applied(reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

enum ApplyJob {
    Register {
        index: Index,
        term: Term,
        reply: Waiter,
    },
    /// Rewrite the state store compactly (Maintenance.Defragment); answers the file's
    /// size before and after.
    Defragment(oneshot::Sender<std::result::Result<(u64, u64), String>>),
    Entries(Vec<crate::raft::Entry>),
    /// A forwarded write the leader never confirmed (`ForwardFailure::Lost`): answered
    /// from its own entry if that is applied, or refused as not committed once an entry
    /// of a later term is applied without it (see [`Applier::await_lost`]).
    AwaitLost {
        id: u64,
        term: Term,
        reply: oneshot::Sender<Result<KvResult>>,
    },
    /// Gives up waiting for a lost forwarded write: its outcome stays unknown.
    GiveUpLost {
        id: u64,
    },
    Restore(crate::raft::SnapshotMeta),
    Snapshot(crate::raft::SnapshotMeta),
}

/// Counters for `/metrics`, bumped by the runtime's tasks.
#[derive(Debug, Default)]
pub struct Counters {
    pub proposals: AtomicU64,
    pub proposals_refused: AtomicU64,
    /// Client writes this follower forwarded to the leader over the peer connection.
    pub proposals_forwarded: AtomicU64,
    pub snapshots_built: AtomicU64,
    pub snapshots_installed: AtomicU64,
    /// Appends sent, by entry count: bucket `i` counts appends of up to 2^i entries
    /// (the last bucket: more).
    pub append_batch_entries: [AtomicU64; APPEND_BATCH_BUCKETS],
    /// State-store commits (one per applied batch), and those fsynced.
    pub backend_commits: AtomicU64,
    pub backend_durable_commits: AtomicU64,
    /// Microseconds spent in state-store commits, all and durable ones.
    pub backend_commit_micros: AtomicU64,
    /// Durable commits by duration: bucket `i` counts commits of under 2^(i+7) µs
    /// (128 µs to about 4 s; the last bucket: more).
    pub backend_durable_commit_buckets: [AtomicU64; BACKEND_COMMIT_BUCKETS],
}

pub const BACKEND_COMMIT_BUCKETS: usize = 16;

pub const APPEND_BATCH_BUCKETS: usize = 10;

impl Counters {
    fn record_append(&self, entries: usize) {
        let bucket = (usize::BITS - entries.saturating_sub(1).leading_zeros()) as usize;
        self.append_batch_entries[bucket.min(APPEND_BATCH_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    requests: mpsc::Sender<Request>,
    inbox: mpsc::Sender<Input>,
    status: watch::Receiver<Status>,
    peers: watch::Receiver<Vec<PeerStatus>>,
    timing: watch::Receiver<TimingState>,
    log_bounds: watch::Receiver<LogBounds>,
    last_contact: LastContact,
    counters: Arc<Counters>,
    store: watch::Receiver<KvStore>,
    members: watch::Receiver<MemberTable>,
    snapshots: SnapshotStore,
    writer: WalWriter,
    log_events: LogEvents,
    id: NodeId,
    quota_backend_bytes: u64,
    apply: mpsc::Sender<ApplyJob>,
    /// Subscribed before the core task starts, so the first listener (the admin
    /// service's event recorder) misses nothing applied while the server was still
    /// setting up; later listeners subscribe from the moment they ask.
    first_log_events: Arc<std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<LogEvent>>>>,
}

impl NodeHandle {
    /// `--quota-backend-bytes`: the state store size over which writes that grow it are
    /// refused (etcd's NOSPACE).
    pub fn quota_backend_bytes(&self) -> u64 {
        self.quota_backend_bytes
    }

    /// etcd's quota check before a write that may grow the store. `Ok`: go ahead.
    /// `Err(true)`: the NOSPACE alarm is already raised. `Err(false)`: the state store plus
    /// `cost` bytes would be over the quota, and the caller raises the alarm (through the
    /// log, so that every member refuses such writes from then on).
    pub fn check_quota(&self, command: &KvCommand, cost: u64) -> std::result::Result<(), bool> {
        if !command.grows_store() {
            return Ok(());
        }
        let store = self.store.borrow();
        if store.nospace() {
            return Err(true);
        }
        let (size, _) = store.size_bytes();
        if size.saturating_add(cost) <= self.quota_backend_bytes {
            return Ok(());
        }
        tracing::warn!(
            size,
            quota = self.quota_backend_bytes,
            "the state store is over its quota: raising the NOSPACE alarm"
        );
        Err(false)
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Rewrites the state store into a new, compact file (etcd's defragmentation: the
    /// file shrinks to what the data uses). Applies wait meanwhile, as in etcd. Answers
    /// the file's size before and after.
    pub async fn defragment(&self) -> Result<(u64, u64)> {
        let (reply, answer) = oneshot::channel();
        self.apply
            .send(ApplyJob::Defragment(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?.map_err(Error::Snapshot)
    }

    pub async fn propose(&self, command: KvCommand) -> Result<KvResult> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Propose { command, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// A linearizable read: the returned store has applied everything committed
    /// before the read began.
    pub async fn read_linearizable(&self) -> Result<KvStore> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::ReadIndex { reply })
            .await
            .map_err(|_| Error::Stopped)?;
        let index = answer.await.map_err(|_| Error::Stopped)??;
        let mut store = self.store.clone();
        let applied = store
            .wait_for(|s| s.applied() >= index)
            .await
            .map_err(|_| Error::Stopped)?;
        Ok(applied.clone())
    }

    /// A serializable read: whatever this member has applied.
    pub fn read_local(&self) -> KvStore {
        self.store.borrow().clone()
    }

    /// The auth store as of the last applied batch: only its `Arc` is cloned (every
    /// request asks, so it does not pay for a clone of the whole store).
    pub fn auth_state(&self) -> Arc<crate::kv::auth::AuthState> {
        self.store.borrow().auth().clone()
    }

    /// The applied store as it is published after each applied batch (watchers
    /// follow it).
    pub fn applied_store(&self) -> watch::Receiver<KvStore> {
        self.store.clone()
    }

    pub async fn transfer_leadership(&self, target: NodeId) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::TransferLeadership { target, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Replicates new timing through the log (leader only) and waits until this
    /// member applies it, i.e. until the new timing is in force here. Returns the
    /// index of the Timing entry. Other members switch when they learn the commit.
    pub async fn propose_timing(&self, timing: Timing) -> Result<Index> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::ProposeTiming { timing, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Proposes one membership change (leader only) and waits until it is applied here.
    pub async fn propose_conf_change(&self, change: ConfChange) -> Result<Index> {
        self.propose_entry(Proposal::ConfChange(change)).await
    }

    /// Replicates a member command (leader only) and waits until it is applied here.
    pub async fn propose_member(&self, command: MemberCommand) -> Result<Index> {
        self.propose_entry(Proposal::Member(command)).await
    }

    async fn propose_entry(&self, entry: Proposal) -> Result<Index> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::ProposeEntry { entry, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// The applied member table (names, URLs, learners, removed ids); every change
    /// of membership or member attributes is published here, in log order.
    pub fn members(&self) -> watch::Receiver<MemberTable> {
        self.members.clone()
    }

    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The timing in force and where it came from.
    pub fn timing(&self) -> watch::Receiver<TimingState> {
        self.timing.clone()
    }

    pub fn log_bounds(&self) -> LogBounds {
        *self.log_bounds.borrow()
    }

    /// How long ago `peer` was last heard from; `None` when it never was.
    pub fn last_contact(&self, peer: NodeId) -> Option<Duration> {
        let contacts = self.last_contact.lock().expect("not poisoned");
        contacts.get(&peer).map(|at| at.elapsed())
    }

    /// The leader's view of every other member (empty on followers).
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers.borrow().clone()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Where the transport delivers peer messages and reports link trouble.
    pub fn inbox(&self) -> mpsc::Sender<Input> {
        self.inbox.clone()
    }

    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// Waits until everything handed to the WAL so far is durable (used on a graceful
    /// stop, so in-flight writes finish before the process exits).
    pub async fn flush(&self) -> Result<()> {
        self.writer.submit(Vec::new()).await?;
        Ok(())
    }

    pub fn fsync_histogram(&self) -> storage::FsyncHistogram {
        self.writer.fsync_histogram()
    }

    /// WAL commit latency over the last minute (EWMA, p50, p99).
    pub fn fsync_recent(&self) -> crate::stats::LatencySummary {
        self.writer.fsync_recent()
    }

    /// Membership changes applied and snapshots taken or installed: from the start of
    /// the node for the first caller, from now on for later ones.
    pub fn log_events(&self) -> tokio::sync::broadcast::Receiver<LogEvent> {
        let first = self
            .first_log_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        first.unwrap_or_else(|| self.log_events.subscribe())
    }
}

/// Recovers the node from its directories and starts its tasks. The returned handle
/// is the node's only API; the join handle ends when the core task stops.
pub async fn start(config: RuntimeConfig, outbox: Arc<dyn Outbox>) -> Result<(NodeHandle, JoinHandle<()>)> {
    let id = config.raft.id;
    let wal_config = WalConfig::new(config.cluster_id, id);
    let recovered = storage::recover(
        &config.wal_dir,
        &config.snapshot_dir,
        wal_config,
        config.keep_snapshots,
    )?;
    let store = &recovered.store;
    let snapshot_meta = store.snapshot_meta();
    let empty =
        store.last_index() == 0 && store.hard_state() == Default::default() && snapshot_meta.index == 0;
    let core = if empty {
        match &config.bootstrap {
            Some(voters) => RaftCore::bootstrap(config.raft.clone(), voters)?,
            None => RaftCore::join(config.raft.clone())?,
        }
    } else {
        let first = snapshot_meta.index + 1;
        let last = store.last_index();
        let entries = if last >= first {
            store.entries(first, last + 1, u64::MAX)?
        } else {
            Vec::new()
        };
        RaftCore::restore(
            config.raft.clone(),
            DurableState {
                hard_state: store.hard_state(),
                snapshot: (snapshot_meta.index > 0).then_some(snapshot_meta.clone()),
                entries,
            },
        )?
    };
    // The first election comes about one timeout sooner after a start (etcd's
    // initial election tick advance); see `RaftCore::advance_election_timer`.
    let mut core = core;
    core.advance_election_timer();
    let (kv, members) = open_state_machine(
        &config.state_path,
        &recovered.snapshots,
        recovered.snapshot.as_ref(),
        snapshot_meta.index,
    )?;
    let timing_state = match snapshot_meta.timing {
        Some(timing) if snapshot_meta.index > 0 => TimingState {
            timing,
            source: TimingSource::Log,
            index: snapshot_meta.index,
            since: SystemTime::now(),
        },
        _ => TimingState {
            timing: core.timing(),
            source: TimingSource::Flags,
            index: 0,
            since: SystemTime::now(),
        },
    };
    // Timing entries up to here are replayed at start-up, not changed by an admin now.
    let replayed_through = store.hard_state().commit;
    let log_bounds = LogBounds {
        first_index: core.log().first_index(),
        snapshot_index: core.latest_snapshot().index,
    };
    let snapshots = recovered.snapshots.clone();
    let (writer, _writer_task) = WalWriter::spawn(recovered.store, config.writer.clone())?;

    let (inbox_tx, inbox_rx) = mpsc::channel(config.inbound_capacity);
    let (request_tx, request_rx) = mpsc::channel(config.request_capacity);
    let (apply_tx, apply_rx) = mpsc::channel(config.apply_capacity);
    let (status_tx, status_rx) = watch::channel(core.status());
    let (peers_tx, peers_rx) = watch::channel(Vec::new());
    let (timing_tx, timing_rx) = watch::channel(timing_state);
    let (log_bounds_tx, log_bounds_rx) = watch::channel(log_bounds);
    let last_contact = LastContact::default();
    let counters = Arc::new(Counters::default());
    let (store_tx, store_rx) = watch::channel(kv.clone());
    let (members_tx, members_rx) = watch::channel(members.clone());
    let (persist_tx, persist_rx) = mpsc::channel::<(Option<u64>, storage::Ack)>(config.request_capacity);
    let log_events = LogEvents::default();

    tokio::spawn(wait_for_persistence(persist_rx, inbox_tx.clone()));
    {
        // A follower too far behind gets the state streamed from the published store.
        let store = store_rx.clone();
        let members = members_rx.clone();
        snapshots.set_materializer(Arc::new(move |meta, out| {
            let kv = store.borrow().clone();
            let members = members.borrow().clone();
            assert!(
                kv.applied() >= meta.index,
                "the state store is behind a snapshot it made"
            );
            write_state_machine(&kv, &members, out)
        }));
    }
    let applier = Applier {
        kv,
        members,
        published: store_tx,
        members_published: members_tx,
        snapshots: snapshots.clone(),
        state_path: config.state_path.clone(),
        inbox: inbox_tx.clone(),
        counters: counters.clone(),
        batch: config.backend_batch,
        waiting: HashMap::new(),
        answers: Vec::new(),
        members_changed: false,
        last_durable: Instant::now(),
        own_id: id,
        lost: HashMap::new(),
        own_applied: std::collections::BTreeMap::new(),
        own_floor: 0,
        last_applied_term: 0,
    };
    std::thread::Builder::new()
        .name("apply".into())
        .spawn(move || apply_thread(applier, apply_rx))
        .map_err(|e| Error::Snapshot(format!("cannot start the apply thread: {e}")))?;

    let handle = NodeHandle {
        requests: request_tx,
        inbox: inbox_tx,
        status: status_rx,
        peers: peers_rx,
        timing: timing_rx,
        log_bounds: log_bounds_rx,
        last_contact: last_contact.clone(),
        counters: counters.clone(),
        store: store_rx,
        members: members_rx,
        snapshots: snapshots.clone(),
        writer: writer.clone(),
        id,
        quota_backend_bytes: config.quota_backend_bytes,
        apply: apply_tx.clone(),
        first_log_events: Arc::new(std::sync::Mutex::new(Some(log_events.subscribe()))),
        log_events: log_events.clone(),
    };
    let task = CoreTask {
        core,
        outbox,
        writer,
        persist_tx,
        apply_tx,
        status_tx,
        peers_tx,
        timing_tx,
        log_bounds_tx,
        replayed_through,
        pending_timing: BTreeMap::new(),
        contacts: HashMap::new(),
        last_contact,
        counters,
        pending_reads: HashMap::new(),
        next_read_id: 1,
        forwarded: HashMap::new(),
        next_forward_id: forward_id_base(),
        lost_forwards: std::collections::VecDeque::new(),
        snapshot_records: Vec::new(),
        log_events,
    };
    let join = tokio::spawn(task.run(config.tick, config.input_batch_max.max(1), inbox_rx, request_rx));
    Ok((handle, join))
}

struct CoreTask {
    core: RaftCore,
    outbox: Arc<dyn Outbox>,
    writer: WalWriter,
    persist_tx: mpsc::Sender<(Option<u64>, storage::Ack)>,
    apply_tx: mpsc::Sender<ApplyJob>,
    status_tx: watch::Sender<Status>,
    peers_tx: watch::Sender<Vec<PeerStatus>>,
    timing_tx: watch::Sender<TimingState>,
    log_bounds_tx: watch::Sender<LogBounds>,
    /// The commit index found on disk at start-up.
    replayed_through: Index,
    /// Timing proposals waiting for their entry to be applied: index -> (term, reply).
    pending_timing: BTreeMap<Index, (Term, oneshot::Sender<Result<Index>>)>,
    /// Peers heard from since the last `execute`.
    contacts: HashMap<NodeId, Instant>,
    last_contact: LastContact,
    counters: Arc<Counters>,
    pending_reads: HashMap<u64, oneshot::Sender<Result<Index>>>,
    next_read_id: u64,
    /// Writes forwarded to the leader over the peer connection, until the core says
    /// where the leader appended them (bounded by the core's limit on forwarded
    /// proposals).
    forwarded: HashMap<u64, (Term, oneshot::Sender<Result<KvResult>>)>,
    /// Lost forwards the apply thread is deciding, with when to give up on them.
    lost_forwards: std::collections::VecDeque<(Instant, u64)>,
    /// Counts up from a random start, not from 1: the leader recognises a forwarded
    /// request sent twice by its sender and id (within a term) and answers it with the
    /// index of the first copy, so ids must not repeat across restarts of this member
    /// (see [`forward_id_base`]).
    next_forward_id: u64,
    /// Snapshots built since the last `execute`, to record in the WAL.
    snapshot_records: Vec<crate::raft::SnapshotMeta>,
    log_events: LogEvents,
}

/// Inputs handled per wake-up before the commands are executed, so bursts of
/// proposals and messages share one round of persistence and sending.
pub const INPUT_BATCH_MAX: usize = 256;

impl CoreTask {
    async fn run(
        mut self,
        tick: Duration,
        input_batch_max: usize,
        mut inbox: mpsc::Receiver<Input>,
        mut requests: mpsc::Receiver<Request>,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Flush what bootstrap or restore asked for (first persistence, re-apply).
        if !self.execute().await {
            return;
        }
        loop {
            tokio::select! {
                biased;
                input = inbox.recv() => {
                    let Some(input) = input else { return };
                    if !self.handle_input(input) {
                        return;
                    }
                    for _ in 1..input_batch_max {
                        match inbox.try_recv() {
                            Ok(input) => {
                                if !self.handle_input(input) {
                                    return;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                request = requests.recv() => {
                    let Some(request) = request else { return };
                    self.handle_request(request).await;
                    for _ in 1..input_batch_max {
                        match requests.try_recv() {
                            Ok(request) => self.handle_request(request).await,
                            Err(_) => break,
                        }
                    }
                }
                _ = ticker.tick() => {
                    self.core.tick();
                    let now = Instant::now();
                    while self.lost_forwards.front().is_some_and(|(at, _)| *at <= now) {
                        let (_, id) = self.lost_forwards.pop_front().expect("checked");
                        if self.apply_tx.send(ApplyJob::GiveUpLost { id }).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if !self.execute().await {
                return;
            }
        }
    }

    fn handle_input(&mut self, input: Input) -> bool {
        match input {
            Input::Message(m) => {
                self.contacts.entry(m.from).or_insert_with(Instant::now);
                self.core.step(m)
            }
            Input::SnapshotFailed(peer) => self.core.snapshot_failed(peer),
            Input::Unreachable(peer) => self.core.report_unreachable(peer),
            Input::Persisted(seq) => self.core.persisted(seq),
            Input::SnapshotBuilt(meta) => {
                // The WAL learns that the log may start after the snapshot, before the
                // compaction the core asks for next (both go out in `execute`, in order).
                self.snapshot_records.push(meta.clone());
                self.log_events.publish(LogEvent::SnapshotBuilt {
                    index: meta.index,
                    term: meta.term,
                });
                self.core.snapshot_built(meta);
            }
            Input::SnapshotBuildFailed => self.core.snapshot_build_failed(),
            Input::Fatal(reason) => {
                tracing::error!(%reason, "stopping the node");
                return false;
            }
        }
        true
    }

    async fn handle_request(&mut self, request: Request) {
        match request {
            Request::Propose { command, reply } => match self.core.propose(command.encode()) {
                Err(crate::raft::Error::NotLeader {
                    leader_hint: Some(leader),
                }) if leader != self.core.id() => {
                    // A follower: the command goes to the leader over the peer
                    // connection (etcd's followers forward MsgProp), and its client is
                    // answered here once this member applied it: read-your-writes on
                    // the member asked.
                    let id = self.next_forward_id;
                    self.next_forward_id += 1;
                    let term = self.core.term();
                    let data = wrap_forwarded(self.core.id(), id, &command.encode());
                    match self.core.forward_proposal(id, data) {
                        Ok(()) => {
                            self.counters.proposals_forwarded.fetch_add(1, Ordering::Relaxed);
                            self.forwarded.insert(id, (term, reply));
                        }
                        Err(crate::raft::Error::NotLeader { leader_hint }) => {
                            let _ = reply.send(Err(Error::NotLeader { leader_hint }));
                        }
                        Err(e) => {
                            self.counters.proposals_refused.fetch_add(1, Ordering::Relaxed);
                            let _ = reply.send(Err(e.into()));
                        }
                    }
                }
                Ok((index, term)) => {
                    self.counters.proposals.fetch_add(1, Ordering::Relaxed);
                    if self
                        .apply_tx
                        .send(ApplyJob::Register {
                            index,
                            term,
                            reply: Waiter::Kv(reply),
                        })
                        .await
                        .is_err()
                    {
                        tracing::error!("apply task stopped");
                    }
                }
                Err(crate::raft::Error::NotLeader { leader_hint }) => {
                    let _ = reply.send(Err(Error::NotLeader { leader_hint }));
                }
                Err(e) => {
                    self.counters.proposals_refused.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(e.into()));
                }
            },
            Request::ReadIndex { reply } => {
                let id = self.next_read_id;
                self.next_read_id += 1;
                self.pending_reads.insert(id, reply);
                self.core.read_index(id);
            }
            Request::TransferLeadership { target, reply } => {
                let _ = reply.send(self.core.transfer_leadership(target).map_err(Error::from));
            }
            Request::ProposeEntry { entry, reply } => {
                let proposed = match entry {
                    Proposal::ConfChange(change) => self.core.propose_conf_change(change),
                    Proposal::Member(command) => self.core.propose(command.encode()),
                };
                match proposed {
                    Ok((index, term)) => {
                        let reply = Waiter::Applied(reply);
                        if self
                            .apply_tx
                            .send(ApplyJob::Register { index, term, reply })
                            .await
                            .is_err()
                        {
                            tracing::error!("apply task stopped");
                        }
                    }
                    Err(crate::raft::Error::NotLeader { leader_hint }) => {
                        let _ = reply.send(Err(Error::NotLeader { leader_hint }));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Request::ProposeTiming { timing, reply } => match self.core.propose_timing(timing) {
                Ok((index, term)) => {
                    self.pending_timing.insert(index, (term, reply));
                }
                Err(crate::raft::Error::NotLeader { leader_hint }) => {
                    let _ = reply.send(Err(Error::NotLeader { leader_hint }));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
        }
    }

    /// Executes the core's commands in order. Returns false when the node must stop.
    async fn execute(&mut self) -> bool {
        for meta in std::mem::take(&mut self.snapshot_records) {
            match self.writer.enqueue(vec![PersistRequest::Snapshot(meta)]).await {
                Ok(ack) => {
                    if self.persist_tx.send((None, ack)).await.is_err() {
                        return false;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the WAL refused a snapshot record; stopping");
                    return false;
                }
            }
        }
        loop {
            let commands = self.core.take_commands();
            if commands.is_empty() {
                break;
            }
            for command in commands {
                match command {
                    Command::Persist {
                        seq,
                        snapshot,
                        entries,
                        hard_state,
                    } => {
                        let mut requests = Vec::with_capacity(3);
                        if let Some(meta) = snapshot {
                            requests.push(PersistRequest::Snapshot(meta));
                        }
                        if !entries.is_empty() {
                            requests.push(PersistRequest::Entries(entries));
                        }
                        if let Some(hs) = hard_state {
                            requests.push(PersistRequest::HardState(hs));
                        }
                        match self.writer.enqueue(requests).await {
                            Ok(ack) => {
                                if self.persist_tx.send((Some(seq), ack)).await.is_err() {
                                    return false;
                                }
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "the WAL refused a write; stopping");
                                return false;
                            }
                        }
                    }
                    Command::Send(message) => {
                        if let MessageBody::AppendRequest { entries, .. } = &message.body {
                            if !entries.is_empty() {
                                self.counters.record_append(entries.len());
                            }
                        }
                        self.outbox.send(message)
                    }
                    Command::Apply(entries) => {
                        self.note_applied_timing(&entries);
                        self.log_events.entries_applied(&entries, self.replayed_through);
                        if self.apply_tx.send(ApplyJob::Entries(entries)).await.is_err() {
                            return false;
                        }
                    }
                    Command::RestoreSnapshot(meta) => {
                        self.note_restored_timing(&meta);
                        self.log_events.publish(LogEvent::SnapshotInstalled {
                            index: meta.index,
                            term: meta.term,
                        });
                        if self.apply_tx.send(ApplyJob::Restore(meta)).await.is_err() {
                            return false;
                        }
                    }
                    Command::BuildSnapshot(meta) => {
                        if self.apply_tx.send(ApplyJob::Snapshot(meta)).await.is_err() {
                            return false;
                        }
                    }
                    Command::CompactLog { through } => {
                        match self.writer.enqueue(vec![PersistRequest::Compact(through)]).await {
                            Ok(ack) => {
                                let _ = self.persist_tx.send((None, ack)).await;
                            }
                            Err(e) => tracing::warn!(error = %e, "log compaction not queued"),
                        }
                    }
                    Command::ReadReady { id, index } => {
                        if let Some(reply) = self.pending_reads.remove(&id) {
                            let _ = reply.send(Ok(index));
                        }
                    }
                    Command::ReadFailed { id, reason } => {
                        if let Some(reply) = self.pending_reads.remove(&id) {
                            let error = match reason {
                                ReadFailure::NotLeader { leader_hint } => Error::NotLeader { leader_hint },
                                ReadFailure::TooManyReads => Error::Raft(crate::raft::Error::TooManyReads),
                            };
                            let _ = reply.send(Err(error));
                        }
                    }
                    Command::ProposalForwarded { id, outcome } => {
                        let Some((forwarded_in, reply)) = self.forwarded.remove(&id) else {
                            continue;
                        };
                        let refused = match outcome {
                            Ok((index, term)) => {
                                // Registered before the entry can be applied: the leader
                                // sent this answer ahead of the append carrying it.
                                let reply = Waiter::Kv(reply);
                                if self
                                    .apply_tx
                                    .send(ApplyJob::Register { index, term, reply })
                                    .await
                                    .is_err()
                                {
                                    return false;
                                }
                                continue;
                            }
                            Err(ForwardFailure::Refused(ProposeRefusal::NotLeader { leader_hint })) => {
                                Error::NotLeader {
                                    leader_hint: (leader_hint != 0).then_some(leader_hint),
                                }
                            }
                            Err(ForwardFailure::Refused(ProposeRefusal::TransferInProgress)) => {
                                Error::Raft(crate::raft::Error::TransferInProgress)
                            }
                            Err(ForwardFailure::Refused(ProposeRefusal::Busy)) => {
                                Error::Raft(crate::raft::Error::Busy(0))
                            }
                            Err(ForwardFailure::Lost) => {
                                // Its outcome is decided by what this member applies
                                // (see `Applier::await_lost`), within a bound.
                                self.lost_forwards
                                    .push_back((Instant::now() + LOST_FORWARD_WAIT, id));
                                if self
                                    .apply_tx
                                    .send(ApplyJob::AwaitLost {
                                        id,
                                        term: forwarded_in,
                                        reply,
                                    })
                                    .await
                                    .is_err()
                                {
                                    return false;
                                }
                                continue;
                            }
                        };
                        self.counters.proposals_refused.fetch_add(1, Ordering::Relaxed);
                        let _ = reply.send(Err(refused));
                    }
                    Command::TransferAborted { target } => {
                        tracing::warn!(target, "leadership transfer aborted after an election timeout");
                    }
                }
            }
        }
        let peers = self.core.peers();
        self.peers_tx.send_if_modified(|current| {
            if *current != peers {
                *current = peers;
                true
            } else {
                false
            }
        });
        let timing = self.core.timing();
        self.timing_tx.send_if_modified(|current| {
            if current.timing != timing {
                // Only entries and snapshots change timing; keep the value exact anyway.
                current.timing = timing;
                true
            } else {
                false
            }
        });
        let log_bounds = LogBounds {
            first_index: self.core.log().first_index(),
            snapshot_index: self.core.latest_snapshot().index,
        };
        self.log_bounds_tx.send_if_modified(|current| {
            let changed = *current != log_bounds;
            *current = log_bounds;
            changed
        });
        if !self.contacts.is_empty() {
            let mut shared = self.last_contact.lock().expect("not poisoned");
            shared.extend(self.contacts.drain());
        }
        // Published last, so whoever sees a new applied index also sees its timing.
        let status = self.core.status();
        self.status_tx.send_if_modified(|current| {
            if *current != status {
                *current = status;
                true
            } else {
                false
            }
        });
        true
    }
}

impl CoreTask {
    /// Records Timing entries handed to the state machine (the core switched to them
    /// as it handed them out) and answers the proposals they settle.
    fn note_applied_timing(&mut self, entries: &[crate::raft::Entry]) {
        for entry in entries {
            if let EntryPayload::Timing(timing) = entry.payload {
                let source = if entry.index <= self.replayed_through {
                    TimingSource::Log
                } else {
                    TimingSource::Admin
                };
                self.timing_tx.send_replace(TimingState {
                    timing,
                    source,
                    index: entry.index,
                    since: SystemTime::now(),
                });
            }
            if let Some((term, reply)) = self.pending_timing.remove(&entry.index) {
                let answer = match entry.payload {
                    EntryPayload::Timing(_) if entry.term == term => Ok(entry.index),
                    _ => Err(Error::ProposalDropped),
                };
                let _ = reply.send(answer);
            }
        }
    }

    fn note_restored_timing(&mut self, meta: &crate::raft::SnapshotMeta) {
        if let Some(timing) = meta.timing {
            self.timing_tx.send_if_modified(|current| {
                if current.timing == timing {
                    return false;
                }
                *current = TimingState {
                    timing,
                    source: TimingSource::Log,
                    index: meta.index,
                    since: SystemTime::now(),
                };
                true
            });
        }
        // Overtaken by the snapshot: whether they took effect is unknown here.
        let later = self.pending_timing.split_off(&(meta.index + 1));
        for (_, (_, reply)) in std::mem::replace(&mut self.pending_timing, later) {
            let _ = reply.send(Err(Error::ProposalDropped));
        }
    }
}

/// The first id of this process's forwarded proposals: random, below 2^62 (so counting
/// up never wraps). A member restarted within a term that counted from 1 again had its
/// first forwarded write taken by the leader for its previous incarnation's first (the
/// same sender and id) and answered with that entry's index: the write was never
/// appended, and the client was told "request timed out" at best (the old entry was
/// already applied here), or given the old write's result. etcd's request ids carry
/// the member's start time for the same reason.
fn forward_id_base() -> u64 {
    rand::random::<u64>() >> 2
}

/// Turns WAL acknowledgements (in submission order) into `persisted(seq)` inputs.
async fn wait_for_persistence(
    mut acks: mpsc::Receiver<(Option<u64>, storage::Ack)>,
    inbox: mpsc::Sender<Input>,
) {
    while let Some((seq, ack)) = acks.recv().await {
        match ack.await {
            Ok(Ok(_)) => {
                if let Some(seq) = seq {
                    if inbox.send(Input::Persisted(seq)).await.is_err() {
                        return;
                    }
                }
            }
            Ok(Err(e)) => {
                // Never pretend durability after a failed write or fsync.
                let _ = inbox.send(Input::Fatal(format!("WAL write failed: {e}"))).await;
                return;
            }
            Err(_) => {
                let _ = inbox.send(Input::Fatal("WAL writer stopped".into())).await;
                return;
            }
        }
    }
}

/// How the apply thread commits to the state store (etcd's backend batch interval and
/// limit): applied writes wait in the store's pending set (readers see them there, and
/// the WAL already holds them) and go to the engine in one fsynced commit when
/// `interval` has passed, `entries` were applied or `bytes` wait since the last commit.
///
/// Every apply batch used to be an engine commit of its own (without fsync). The engine
/// is a copy-on-write B-tree, so each commit wrote fresh copies of every page it touched
/// and of their parents, and pages freed without fsync are not reused: at 2,000,000
/// keys, puts spread over the key space wrote 13 KB per put per member (3.4x etcd's)
/// with a commit per few puts. One commit per interval writes a touched page once.
#[derive(Clone, Copy, Debug)]
pub struct BackendBatch {
    pub interval: Duration,
    pub entries: u64,
    pub bytes: usize,
}

impl Default for BackendBatch {
    fn default() -> Self {
        BackendBatch {
            interval: Duration::from_millis(100),
            entries: 10_000,
            bytes: 32 << 20,
        }
    }
}

/// Entries the apply thread applies before it commits and publishes (it takes what is
/// queued, up to this).
const APPLY_BATCH_ENTRIES_MAX: usize = 4096;

/// Everything the apply thread owns and talks to.
struct Applier {
    kv: KvStore,
    members: MemberTable,
    published: watch::Sender<KvStore>,
    members_published: watch::Sender<MemberTable>,
    snapshots: SnapshotStore,
    state_path: PathBuf,
    inbox: mpsc::Sender<Input>,
    counters: Arc<Counters>,
    batch: BackendBatch,
    waiting: HashMap<Index, (Term, Waiter)>,
    /// Answers of the entries applied in this batch, sent once the batch is published.
    answers: Vec<(Waiter, Result<Option<KvResult>>, Index)>,
    members_changed: bool,
    last_durable: Instant,
    /// This member's id: forwarded writes carry it in their envelope.
    own_id: NodeId,
    /// Lost forwarded writes waiting for their outcome: id -> (term forwarded in, client).
    lost: HashMap<u64, (Term, oneshot::Sender<Result<KvResult>>)>,
    /// Results of this member's forwarded writes applied lately, by forward id (at most
    /// `OWN_APPLIED_MAX`; a lost write is usually decided within an election timeout).
    own_applied: std::collections::BTreeMap<u64, Option<KvResult>>,
    /// Forward ids below this are no longer in `own_applied`: their outcome is unknown.
    own_floor: u64,
    /// The term of the last entry applied.
    last_applied_term: Term,
}

/// Forwarded writes' results the apply thread keeps for a lost answer to find.
const OWN_APPLIED_MAX: usize = 4096;

/// How long a forwarded write the leader never confirmed waits for its outcome (its own
/// entry applied, or an entry of a later term without it) before it is answered
/// "outcome unknown" (etcd's request timeout).
const LOST_FORWARD_WAIT: Duration = Duration::from_secs(5);

/// Entry data of a write forwarded to the leader: a tag, the forwarding member's id
/// and the forward id (little-endian), then the command. Every member applies the
/// command; the forwarding member also recognises its own write in the log, which is
/// how it learns the outcome of a forward whose answer was lost.
const FORWARDED_TAG: u8 = 0xF1;

fn wrap_forwarded(member: NodeId, id: u64, command: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(17 + command.len());
    out.push(FORWARDED_TAG);
    out.extend_from_slice(&member.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(command);
    Bytes::from(out)
}

/// (member, forward id, command) of a forwarded write's entry data.
fn unwrap_forwarded(data: &Bytes) -> Option<(NodeId, u64, Bytes)> {
    if data.len() < 17 || data[0] != FORWARDED_TAG {
        return None;
    }
    let member = u64::from_le_bytes(data[1..9].try_into().expect("8 bytes"));
    let id = u64::from_le_bytes(data[9..17].try_into().expect("8 bytes"));
    Some((member, id, data.slice(17..)))
}

/// Applies committed entries to the state machine and answers the clients, on a
/// thread of its own (engine commits and their fsyncs block). Each batch of entries is
/// one engine commit; the new state is published, and only then are the clients
/// answered, so a client that reads right after its write sees it on this member.
fn apply_thread(mut applier: Applier, mut jobs: mpsc::Receiver<ApplyJob>) {
    while let Some(job) = jobs.blocking_recv() {
        let mut job = Some(job);
        let mut applied = 0usize;
        while let Some(next) = job.take() {
            match next {
                ApplyJob::Register { index, term, reply } => applier.register(index, term, reply),
                ApplyJob::AwaitLost { id, term, reply } => applier.await_lost(id, term, reply),
                ApplyJob::GiveUpLost { id } => {
                    if let Some((_, reply)) = applier.lost.remove(&id) {
                        let _ = reply.send(Err(Error::OutcomeUnknown));
                    }
                }
                ApplyJob::Entries(entries) => {
                    applied += entries.len();
                    applier.apply_entries(entries);
                }
                ApplyJob::Restore(meta) => {
                    if let Err(e) = applier.finish_batch() {
                        applier.fatal(e);
                        return;
                    }
                    if let Err(e) = applier.restore(&meta) {
                        applier.fatal(format!("cannot load snapshot {}: {e}", meta.index));
                        return;
                    }
                }
                ApplyJob::Snapshot(meta) => {
                    if let Err(e) = applier.finish_batch().and_then(|()| applier.snapshot(meta)) {
                        applier.fatal(e);
                        return;
                    }
                }
                ApplyJob::Defragment(reply) => {
                    if let Err(e) = applier.finish_batch() {
                        applier.fatal(e);
                        return;
                    }
                    let _ = reply.send(applier.defragment());
                }
            }
            if applied < APPLY_BATCH_ENTRIES_MAX {
                job = jobs.try_recv().ok();
            }
        }
        if let Err(e) = applier.finish_batch() {
            applier.fatal(e);
            return;
        }
    }
    // Shutting down: what waits for the next batch commit goes to the engine now, so a
    // clean restart replays nothing (after a crash the WAL replays it).
    if let Err(e) = applier.commit(true) {
        tracing::warn!(error = %e, "final state store commit on shutdown");
    }
}

impl Applier {
    fn fatal(&self, reason: String) {
        tracing::error!(%reason, "the apply thread stops");
        let _ = self.inbox.blocking_send(Input::Fatal(reason));
    }

    fn register(&mut self, index: Index, term: Term, reply: Waiter) {
        if index <= self.kv.applied() {
            // Overtaken (a snapshot jumped past it): it may have been applied, or
            // overwritten; the outcome is unknown here.
            reply.fail(Error::OutcomeUnknown);
        } else {
            self.waiting.insert(index, (term, reply));
        }
    }

    /// A forwarded write of this member was applied: its lost client (if any) gets the
    /// result; the result is kept a while for an answer that is lost later.
    fn own_write_applied(&mut self, id: u64, result: &Option<KvResult>) {
        if let Some((_, reply)) = self.lost.remove(&id) {
            let _ = reply.send(result.clone().ok_or(Error::ProposalDropped));
            return;
        }
        self.own_applied.insert(id, result.clone());
        while self.own_applied.len() > OWN_APPLIED_MAX {
            let (oldest, _) = self.own_applied.pop_first().expect("not empty");
            self.own_floor = self.own_floor.max(oldest + 1);
        }
    }

    /// An entry of `term` was applied. A forward sent in an earlier term can only have
    /// been appended in that term (a leader refuses a request of an older term), and a
    /// log's terms never decrease: once an entry of a later term is applied, every
    /// entry of the forward's term that will ever commit has been applied here. Lost
    /// forwards of earlier terms not seen by then were never committed: refused as
    /// `NotLeader`, which the API retries with the next leader, safely.
    fn applied_term(&mut self, term: Term) {
        if term <= self.last_applied_term {
            return;
        }
        self.last_applied_term = term;
        let decided: Vec<u64> = self
            .lost
            .iter()
            .filter(|(_, (forwarded_in, _))| *forwarded_in < term)
            .map(|(id, _)| *id)
            .collect();
        for id in decided {
            let (_, reply) = self.lost.remove(&id).expect("listed");
            let _ = reply.send(Err(Error::NotLeader { leader_hint: None }));
        }
    }

    /// A forward sent in `term` whose answer was lost: answered from what was applied
    /// already, else once its entry or an entry of a later term is applied.
    fn await_lost(&mut self, id: u64, term: Term, reply: oneshot::Sender<Result<KvResult>>) {
        if let Some(result) = self.own_applied.remove(&id) {
            let _ = reply.send(result.ok_or(Error::ProposalDropped));
        } else if id < self.own_floor {
            let _ = reply.send(Err(Error::OutcomeUnknown));
        } else if self.last_applied_term > term {
            let _ = reply.send(Err(Error::NotLeader { leader_hint: None }));
        } else {
            self.lost.insert(id, (term, reply));
        }
    }

    fn apply_entries(&mut self, entries: Vec<crate::raft::Entry>) {
        for entry in entries {
            if entry.index <= self.kv.applied() {
                continue; // re-delivered after a snapshot restore, or already in the engine
            }
            let result = match &entry.payload {
                EntryPayload::Normal(data) if MemberCommand::is_member_command(data) => {
                    match MemberCommand::decode(Bytes::clone(data)) {
                        Ok(command) => {
                            let before = self.members.clone();
                            self.members.apply_command(&command);
                            self.members_changed |= self.members != before;
                        }
                        Err(e) => {
                            tracing::error!(index = entry.index, error = %e, "undecodable member command skipped");
                        }
                    }
                    self.kv.skip(entry.index);
                    None
                }
                EntryPayload::Normal(data) => {
                    let (own, command) = match unwrap_forwarded(data) {
                        Some((member, id, command)) => ((member == self.own_id).then_some(id), command),
                        None => (None, Bytes::clone(data)),
                    };
                    let result = match KvCommand::decode(command) {
                        Ok(command) => Some(self.kv.apply(entry.index, &command)),
                        Err(e) => {
                            // Every member skips it the same way: deterministic.
                            tracing::error!(index = entry.index, error = %e, "undecodable entry skipped");
                            self.kv.skip(entry.index);
                            None
                        }
                    };
                    if let Some(id) = own {
                        self.own_write_applied(id, &result);
                    }
                    result
                }
                EntryPayload::ConfChange(change) => {
                    let before = self.members.clone();
                    self.members.apply_conf_change(change);
                    self.members_changed |= self.members != before;
                    self.kv.skip(entry.index);
                    None
                }
                _ => {
                    self.kv.skip(entry.index);
                    None
                }
            };
            self.applied_term(entry.term);
            if let Some((term, waiter)) = self.waiting.remove(&entry.index) {
                // Same index and term: the very entry that was proposed.
                let answer = if term == entry.term {
                    Ok(result)
                } else {
                    Err(Error::ProposalDropped)
                };
                self.answers.push((waiter, answer, entry.index));
            }
        }
    }

    /// Commits what was applied to the engine when the batch interval or limits say so
    /// (see [`BackendBatch`]), publishes the new state, then answers the clients.
    fn finish_batch(&mut self) -> Result<(), String> {
        let due = self.last_durable.elapsed() >= self.batch.interval
            || self.kv.applied() >= self.kv.durable_applied() + self.batch.entries
            || self.kv.pending_bytes() >= self.batch.bytes
            || self.members_changed;
        crate::fail_point!("apply-before-commit");
        if due {
            self.commit(true)?;
        }
        crate::fail_point!("apply-after-commit");
        self.published.send_replace(self.kv.clone());
        if std::mem::take(&mut self.members_changed) {
            self.members_published.send_replace(self.members.clone());
        }
        for (waiter, answer, index) in self.answers.drain(..) {
            match waiter {
                Waiter::Kv(reply) => {
                    let _ = reply.send(match answer {
                        Ok(Some(result)) => Ok(result),
                        Ok(None) => Err(Error::ProposalDropped),
                        Err(e) => Err(e),
                    });
                }
                Waiter::Applied(reply) => {
                    let _ = reply.send(answer.map(|_| index));
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self, durable: bool) -> Result<(), String> {
        let changed =
            self.kv.has_pending() || self.members_changed || self.kv.applied() != self.committed_applied();
        if !changed && (!durable || self.kv.durable_applied() == self.kv.applied()) {
            return Ok(());
        }
        let members = if self.members_changed || durable {
            let mut blob = Vec::new();
            self.members
                .write_snapshot(&mut blob)
                .map_err(|e| format!("cannot encode the member table: {e}"))?;
            Some(blob)
        } else {
            None
        };
        let started = Instant::now();
        self.kv
            .commit(durable, members.as_deref())
            .map_err(|e| format!("state store commit failed: {e}"))?;
        let micros = started.elapsed().as_micros() as u64;
        let c = &self.counters;
        c.backend_commits.fetch_add(1, Ordering::Relaxed);
        c.backend_commit_micros.fetch_add(micros, Ordering::Relaxed);
        if durable {
            self.last_durable = Instant::now();
            c.backend_durable_commits.fetch_add(1, Ordering::Relaxed);
            let bucket = ((64 - micros.leading_zeros()) as usize)
                .saturating_sub(7)
                .min(BACKEND_COMMIT_BUCKETS - 1);
            c.backend_durable_commit_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The applied index of the last engine commit (published stores carry it).
    fn committed_applied(&self) -> Index {
        self.published.borrow().applied()
    }

    /// Installs the received snapshot `meta` as the state machine.
    fn restore(&mut self, meta: &crate::raft::SnapshotMeta) -> Result<(), String> {
        let info = self
            .snapshots
            .latest()
            .map_err(|e| e.to_string())?
            .filter(|i| i.meta.index == meta.index)
            .ok_or_else(|| "missing".to_string())?;
        let (store, table) = install_snapshot(&self.snapshots, &info, &self.state_path)?;
        self.counters.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        self.kv = store;
        self.members = table;
        self.last_durable = Instant::now();
        // The snapshot may hold forwarded writes of this member that were never applied
        // here one by one: their outcome can no longer be told.
        for (_, (_, reply)) in self.lost.drain() {
            let _ = reply.send(Err(Error::OutcomeUnknown));
        }
        self.own_applied.clear();
        self.own_floor = u64::MAX;
        for (index, (_, reply)) in std::mem::take(&mut self.waiting) {
            if index <= self.kv.applied() {
                reply.fail(Error::ProposalDropped);
            } else {
                self.waiting.insert(index, (0, reply));
            }
        }
        self.published.send_replace(self.kv.clone());
        self.members_published.send_replace(self.members.clone());
        Ok(())
    }

    /// Rewrites the state store: the published state is streamed into a temporary
    /// file and installed from it into a new engine file, as a received snapshot is.
    fn defragment(&mut self) -> std::result::Result<(u64, u64), String> {
        use std::io::{Seek, Write};
        self.commit(true)?;
        let before = self.kv.size_bytes().0;
        let dir = self
            .state_path
            .parent()
            .map_or_else(|| PathBuf::from("."), |d| d.to_path_buf());
        let path = dir.join(format!("defragment-{}.tmp", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        let _ = std::fs::remove_file(&path); // unlinked: gone whatever happens next
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        write_state_machine(&self.kv, &self.members, &mut out)
            .and_then(|()| out.flush())
            .map_err(|e| format!("write the state: {e}"))?;
        let mut file = out.into_inner().map_err(|e| e.to_string())?;
        file.seek(std::io::SeekFrom::Start(0))
            .map_err(|e| e.to_string())?;
        let mut input = std::io::BufReader::with_capacity(1 << 20, file);
        let (kv, members) = install_from_reader(&mut input, &self.state_path)?;
        assert_eq!(kv.applied(), self.kv.applied(), "defragmentation keeps the state");
        self.kv = kv;
        self.members = members;
        self.last_durable = Instant::now();
        self.published.send_replace(self.kv.clone());
        let after = self.kv.size_bytes().0;
        tracing::info!(before, after, "state store defragmented");
        Ok((before, after))
    }

    /// The core asked for a snapshot at its applied index: the engine is made durable
    /// here (at or after that index, so the log below it may go) and a marker snapshot
    /// records it. No copy of the state is written; one is streamed from the engine only
    /// if a follower needs it (see `SnapshotStore::for_sending`).
    fn snapshot(&mut self, meta: crate::raft::SnapshotMeta) -> Result<(), String> {
        // After a snapshot install the engine may be ahead of the core's applied index
        // (the sender's state was newer than its snapshot's index); never behind.
        assert!(
            self.kv.applied() >= meta.index,
            "snapshot asked for at {} but only {} applied",
            meta.index,
            self.kv.applied()
        );
        self.commit(true)?;
        crate::fail_point!("snapshot-marker");
        match self.snapshots.create_marker(&meta) {
            Ok(_) => {
                self.counters.snapshots_built.fetch_add(1, Ordering::Relaxed);
                let _ = self.inbox.blocking_send(Input::SnapshotBuilt(meta));
            }
            Err(e) => {
                tracing::error!(error = %e, "snapshot failed; will retry at the next one");
                let _ = self.inbox.blocking_send(Input::SnapshotBuildFailed);
            }
        }
        Ok(())
    }
}

/// Opens the state machine at start-up: the engine at `state_path` when it holds the
/// state at or after the latest snapshot (then the WAL is replayed only above the
/// engine's applied index), else the snapshot installed into a new engine.
fn open_state_machine(
    state_path: &std::path::Path,
    snapshots: &SnapshotStore,
    latest: Option<&storage::SnapshotInfo>,
    snapshot_index: Index,
) -> Result<(KvStore, MemberTable)> {
    if state_path.exists() || snapshot_index == 0 {
        let (kv, members) = open_state_store(state_path).map_err(|e| Error::Snapshot(e.to_string()))?;
        if kv.applied() >= snapshot_index {
            let members = match members {
                Some(blob) => MemberTable::read_snapshot(&mut &blob[..]).map_err(|e| {
                    Error::Snapshot(format!("state store {}: member table: {e}", state_path.display()))
                })?,
                None => MemberTable::default(),
            };
            tracing::info!(
                path = %state_path.display(),
                applied = kv.applied(),
                revision = kv.revision(),
                keys = kv.len(),
                "state store opened"
            );
            return Ok((kv, members));
        }
        tracing::warn!(
            path = %state_path.display(),
            applied = kv.applied(),
            snapshot = snapshot_index,
            "the state store is behind the latest snapshot: installing the snapshot"
        );
    }
    let info = latest
        .filter(|info| info.meta.index == snapshot_index)
        .filter(|info| !snapshots.is_marker(info).unwrap_or(true))
        .ok_or_else(|| {
            Error::Snapshot(format!(
                "the log starts after index {snapshot_index}, but neither the state store {} nor a full snapshot holds the state there (the state store file was lost or replaced: this member's data cannot be used; replace the member)",
                state_path.display()
            ))
        })?;
    install_snapshot(snapshots, info, state_path).map_err(Error::Snapshot)
}

/// Opens the state store at `path` and loads its key index. A damaged file is refused
/// with an error naming it: the engine panics on some damage it finds, which is caught
/// here, since a member must stop with a reason (its data cannot be used; the operator
/// replaces it) rather than crash-loop on a backtrace.
fn open_state_store(path: &std::path::Path) -> Result<(KvStore, Option<Bytes>), crate::kv::EngineError> {
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Engine::open(path).and_then(KvStore::load)
    }));
    opened.unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the storage engine failed on it".to_string());
        Err(crate::kv::EngineError::Corrupt {
            path: path.display().to_string(),
            reason: format!("{reason}; this member's data cannot be used: replace the member"),
        })
    })
}

/// Reads snapshot `info` into a new engine file beside `state_path`, makes it durable
/// and moves it into place (readers of the old store keep their open file).
fn install_snapshot(
    snapshots: &SnapshotStore,
    info: &storage::SnapshotInfo,
    state_path: &std::path::Path,
) -> Result<(KvStore, MemberTable), String> {
    if snapshots.is_marker(info).map_err(|e| e.to_string())? {
        return Err(format!(
            "snapshot {} is a marker: its state is in a state store this member does not have",
            info.meta.index
        ));
    }
    let mut reader = snapshots.open_reader(info).map_err(|e| e.to_string())?;
    let (kv, members) = install_from_reader(&mut reader, state_path)?;
    tracing::info!(
        index = info.meta.index,
        applied = kv.applied(),
        keys = kv.len(),
        "snapshot installed into the state store"
    );
    Ok((kv, members))
}

/// Reads a state machine (as [`write_state_machine`] writes it) into a new engine file
/// beside `state_path`, makes it durable and moves it into place.
fn install_from_reader(
    input: &mut dyn std::io::Read,
    state_path: &std::path::Path,
) -> Result<(KvStore, MemberTable), String> {
    let temp = state_path.with_extension("redb.tmp");
    if temp.exists() {
        std::fs::remove_file(&temp).map_err(|e| format!("remove {}: {e}", temp.display()))?;
    }
    {
        let engine = Engine::open(&temp).map_err(|e| e.to_string())?;
        let mut kv = KvStore::read_snapshot_into(input, engine).map_err(|e| e.to_string())?;
        let members = MemberTable::read_snapshot(input).map_err(|e| e.to_string())?;
        let mut blob = Vec::new();
        members.write_snapshot(&mut blob).map_err(|e| e.to_string())?;
        kv.commit(true, Some(&blob)).map_err(|e| e.to_string())?;
    }
    crate::fail_point!("snapshot-install");
    std::fs::rename(&temp, state_path).map_err(|e| format!("rename {}: {e}", temp.display()))?;
    if let Some(dir) = state_path.parent() {
        storage::fs::sync_dir(dir).map_err(|e| format!("fsync {}: {e}", dir.display()))?;
    }
    let (kv, members) = open_state_store(state_path).map_err(|e| e.to_string())?;
    let members = match members {
        Some(blob) => MemberTable::read_snapshot(&mut &blob[..]).map_err(|e| e.to_string())?,
        None => MemberTable::default(),
    };
    Ok((kv, members))
}

/// Writes the state machine as a snapshot's data: the key-value store, then the
/// member table (its own section, see [`MemberTable::write_snapshot`]).
pub fn write_state_machine(
    kv: &KvStore,
    members: &MemberTable,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    kv.write_snapshot(out)?;
    members.write_snapshot(out)
}

/// Reads what [`write_state_machine`] wrote.
pub fn read_state_machine(input: &mut dyn std::io::Read) -> Result<(KvStore, MemberTable), String> {
    let kv = KvStore::read_snapshot(input).map_err(|e| e.to_string())?;
    let members = MemberTable::read_snapshot(input).map_err(|e| e.to_string())?;
    Ok((kv, members))
}
