//! The Raft state machine: every rule of the paper's Figure 2, plus PreVote,
//! CheckQuorum, learners, single-server membership changes, leadership transfer,
//! ReadIndex and snapshots.
//!
//! The caller feeds inputs (`tick`, `step`, `propose`, `read_index`, ...) and then
//! takes the commands they produced with [`RaftCore::take_commands`], executing them in
//! order. The one ordering rule the caller must keep is built into the core itself: a
//! message that depends on something being durable is only handed out after the
//! caller has reported that persistence with [`RaftCore::persisted`]. So the runtime may
//! write its WAL in parallel with replication and never has to reason about which
//! message waits for which fsync.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::log::RaftLog;
use super::message::{Message, MessageBody, ProposeRefusal};
use super::progress::{Progress, ReplicationState};
use super::types::{
    ConfChange, ConfChangeError, Entry, EntryPayload, HardState, Index, Membership, NodeId, SnapshotMeta,
    Term, Timing, TimingError,
};

/// Static settings of one node's core. Every bound is stated here.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    pub timing: Timing,
    /// Campaign in a pre-vote round first, so a node that cannot win (partitioned,
    /// stale log) never raises the cluster's term.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps
    /// down; followers that hear from a leader ignore vote requests (leader lease).
    pub check_quorum: bool,
    /// Appends in flight to one follower, in messages and in bytes.
    pub max_inflight_msgs: usize,
    pub max_inflight_bytes: usize,
    /// One append carries at most this many entries / bytes (one entry at least).
    pub max_batch_entries: usize,
    pub max_batch_bytes: usize,
    /// Entries a leader accepts beyond its commit index before refusing proposals.
    pub max_uncommitted_entries: u64,
    /// ReadIndex requests waiting for confirmation, at the leader and forwarded.
    pub max_pending_reads: usize,
    /// Ask for a snapshot every this many applied entries (0: never).
    pub snapshot_entries: u64,
    /// ... or as soon as the entries applied since the last one hold this many bytes
    /// (when snapshots are on), so the log kept in memory is bounded in bytes too.
    pub snapshot_bytes: u64,
    /// Entries kept in the log below a snapshot for followers that lag a little...
    pub log_tail_entries: u64,
    /// ... holding at most this many bytes (0: no byte bound).
    pub log_tail_bytes: u64,
    /// A learner is promoted only once its match index reaches this fraction (in
    /// percent) of the leader's commit index.
    pub promote_min_match_percent: u64,
    /// Seeds the randomized election timeouts (deterministic for the simulator).
    pub seed: u64,
}

impl Config {
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            timing: Timing::default(),
            pre_vote: true,
            check_quorum: true,
            max_inflight_msgs: 64,
            max_inflight_bytes: 8 << 20,
            max_batch_entries: 256,
            max_batch_bytes: 1 << 20,
            max_uncommitted_entries: 16_384,
            max_pending_reads: 4096,
            snapshot_entries: 10_000,
            snapshot_bytes: 64 << 20,
            log_tail_entries: 1_000,
            log_tail_bytes: 16 << 20,
            promote_min_match_percent: 90,
            seed: id,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.id == 0 {
            return Err(Error::InvalidConfig("node id 0 is reserved".into()));
        }
        self.timing.validate()?;
        if self.max_inflight_msgs == 0 || self.max_inflight_bytes == 0 {
            return Err(Error::InvalidConfig(
                "the in-flight window must allow one append".into(),
            ));
        }
        if self.max_batch_entries == 0 || self.max_batch_bytes == 0 {
            return Err(Error::InvalidConfig("a batch must allow one entry".into()));
        }
        if self.max_pending_reads == 0 || self.max_uncommitted_entries == 0 {
            return Err(Error::InvalidConfig("queues must allow one request".into()));
        }
        if self.promote_min_match_percent > 100 {
            return Err(Error::InvalidConfig(
                "promote_min_match_percent is at most 100".into(),
            ));
        }
        Ok(())
    }
}

/// One sender's forwarded proposals a leader appended: ids oldest first, and where each
/// went.
type ForwardsAppended = (VecDeque<u64>, BTreeMap<u64, (Index, Term)>);

/// Forwarded proposals a leader remembers per sender, to answer a duplicate request
/// instead of appending it twice.
const FORWARDS_REMEMBERED: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not the leader")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    #[error("too many uncommitted entries ({0}); retry later")]
    Busy(u64),
    #[error("too many pending reads; retry later")]
    TooManyReads,
    #[error("the leader has not yet committed an entry of its term")]
    NoCommitInTerm,
    #[error("a membership change is still in progress (entry {0})")]
    ChangeInProgress(Index),
    #[error("learner {0:#x} has not caught up yet")]
    LearnerNotCaughtUp(NodeId),
    #[error("the change would leave {active} active voters out of {voters}, below a quorum")]
    WouldLoseQuorum { active: usize, voters: usize },
    #[error("{0:#x} is not a voter")]
    NotVoter(NodeId),
    #[error("already the leader")]
    AlreadyLeader,
    #[error(transparent)]
    ConfChange(#[from] ConfChangeError),
    #[error(transparent)]
    Timing(#[from] TimingError),
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Why a forwarded proposal came to nothing here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardFailure {
    /// The leader refused it: it never took effect.
    Refused(ProposeRefusal),
    /// The leader changed, or did not answer within an election timeout, before it
    /// said where it appended the command: it may or may not take effect.
    Lost,
}

/// Why a read could not be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFailure {
    NotLeader { leader_hint: Option<NodeId> },
    TooManyReads,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Campaign {
    /// Ask whether we could win, without raising the term.
    PreVote,
    Election,
    /// Told to by the leader (`TimeoutNow`): skip the pre-vote, override leases.
    Transfer,
}

/// What the caller must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Make this durable, in this order: install `snapshot` (the log now starts after
    /// it), write `entries` (the first one replaces everything from its index on), then
    /// `hard_state`. Report completion with `persisted(seq)`; sequence numbers grow by
    /// one and must be reported in order.
    Persist {
        seq: u64,
        snapshot: Option<SnapshotMeta>,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    },
    Send(Message),
    /// Committed entries, in log order, to apply to the state machine.
    Apply(Vec<Entry>),
    /// Replace the state machine by the snapshot described (received from the leader
    /// and already stored by the transport).
    RestoreSnapshot(SnapshotMeta),
    /// Capture the state machine right after applying `meta.index` and store it; call
    /// `snapshot_built` when done.
    BuildSnapshot(SnapshotMeta),
    /// Log entries up to `through` may be dropped from the WAL.
    CompactLog {
        through: Index,
    },
    /// A linearizable read may be served once the state machine has applied `index`.
    ReadReady {
        id: u64,
        index: Index,
    },
    ReadFailed {
        id: u64,
        reason: ReadFailure,
    },
    /// The leader appended the command forwarded as `id` at (index, term) (the
    /// command took effect once an entry at that index with that term is applied
    /// here), or did not.
    ProposalForwarded {
        id: u64,
        outcome: Result<(Index, Term), ForwardFailure>,
    },
    /// A leadership transfer did not finish within an election timeout.
    TransferAborted {
        target: NodeId,
    },
}

/// What a node finds on disk when it starts.
#[derive(Clone, Debug, Default)]
pub struct DurableState {
    pub hard_state: HardState,
    pub snapshot: Option<SnapshotMeta>,
    /// Contiguous, starting right after the snapshot (or at 1).
    pub entries: Vec<Entry>,
}

/// A consistent picture of the node, for status pages and the simulator's checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub vote: NodeId,
    pub leader: Option<NodeId>,
    pub commit: Index,
    pub applied: Index,
    pub last_index: Index,
    pub last_term: Term,
    pub membership: Membership,
    pub timing: Timing,
}

/// A leader's view of one member's replication, for status pages and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: NodeId,
    pub match_index: Index,
    pub next_index: Index,
    pub state: ReplicationState,
    pub inflight: usize,
    pub recent_active: bool,
}

#[derive(Clone, Debug)]
struct PendingRead {
    id: u64,
    /// `None` for a read of this node's own client; otherwise the follower it came from.
    from: Option<NodeId>,
    index: Index,
    seq: u64,
}

/// A message that may leave only once persistence `seq` has completed.
#[derive(Debug)]
struct HeldMessage {
    seq: u64,
    message: Message,
}

pub struct RaftCore {
    cfg: Config,
    id: NodeId,
    term: Term,
    vote: NodeId,
    role: Role,
    leader: NodeId,
    log: RaftLog,
    /// Membership changes in the log, oldest first; the first element is the
    /// membership at the log's base. The last one is in force.
    conf_history: Vec<(Index, Membership)>,
    /// Timing entries in the log, same shape as `conf_history`.
    timing_history: Vec<(Index, Timing)>,
    timing: Timing,
    snapshot: SnapshotMeta,
    snapshot_in_progress: bool,
    /// Bytes of the entries applied since the last snapshot was asked for.
    applied_bytes_since_snapshot: u64,
    applied: Index,

    election_elapsed: u32,
    heartbeat_elapsed: u32,
    campaign_kind: Campaign,
    randomized_election_ticks: u32,
    votes: BTreeMap<NodeId, bool>,
    progress: BTreeMap<NodeId, Progress>,
    transfer: Option<(NodeId, u32)>,
    pending_conf_index: Index,

    /// The latest read round started (a heartbeat broadcast carrying this number;
    /// a quorum echoing it confirms this node still led when the round began).
    read_seq: u64,
    /// The latest read round a quorum confirmed; a round is in flight while below
    /// `read_seq`.
    read_confirmed: u64,
    /// The tick the round in flight started (or was last sent again).
    read_round_since: u64,
    pending_reads: VecDeque<PendingRead>,
    /// Reads that arrived before this leader committed an entry of its term.
    reads_waiting_for_commit: VecDeque<(u64, Option<NodeId>)>,
    /// Reads forwarded to the leader, waiting for its answer.
    forwarded_reads: BTreeSet<u64>,
    /// Proposals forwarded to the leader, waiting for its answer: id → the tick count
    /// after which it is given up as lost.
    forwarded_proposals: BTreeMap<u64, u64>,
    /// Ticks since start (the expiry clock of forwarded proposals).
    ticks: u64,
    /// As leader: the forwarded proposals appended in this term, by sender (id →
    /// where; the latest `FORWARDS_REMEMBERED` per sender), so a request that arrives
    /// twice is answered again rather than appended twice.
    forwards_appended: BTreeMap<NodeId, ForwardsAppended>,

    persist_seq_issued: u64,
    persist_seq_done: u64,
    /// Sequence number of the last persistence that changed term or vote.
    term_vote_seq: u64,
    last_persisted_hard_state: HardState,
    /// Issued persistence not yet reported: (seq, last log index once it is durable).
    persist_queue: VecDeque<(u64, Index)>,
    /// The last index of the durable log that agrees with the in-memory log.
    durable_index: Index,
    held: VecDeque<HeldMessage>,
    /// Entries appended (by this node as leader, or received) waiting to be persisted.
    unpersisted_entries: Vec<Entry>,
    unpersisted_snapshot: Option<SnapshotMeta>,
    broadcast_pending: bool,
    /// A held message waits for a persistence not issued yet: issue one.
    persist_next: bool,
    commands: Vec<Command>,
    rng: ChaCha8Rng,
}

impl RaftCore {
    /// A member of a brand-new cluster. Every initial member starts with the same
    /// log: one `AddVoter` entry per voter at term 1, already committed, so that a
    /// member that joins later learns the initial membership by replaying the log.
    pub fn bootstrap(cfg: Config, voters: &[NodeId]) -> Result<Self> {
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        voters.dedup();
        if voters.is_empty() || voters.contains(&0) {
            return Err(Error::InvalidConfig(
                "initial voters must be non-zero and non-empty".into(),
            ));
        }
        let entries: Vec<Entry> = voters
            .iter()
            .enumerate()
            .map(|(i, &id)| Entry {
                term: 1,
                index: i as Index + 1,
                payload: EntryPayload::ConfChange(ConfChange::AddVoter(id)),
            })
            .collect();
        let hard_state = HardState {
            term: 1,
            vote: 0,
            commit: entries.len() as Index,
        };
        let mut core = Self::restore(
            cfg,
            DurableState {
                hard_state: HardState::default(),
                snapshot: None,
                entries: Vec::new(),
            },
        )?;
        core.set_term(1);
        core.log.append(&entries);
        for entry in &entries {
            core.track_config_entry(entry);
        }
        core.log.set_commit(hard_state.commit);
        core.unpersisted_entries = entries;
        core.issue_persist(true);
        core.emit_apply();
        Ok(core)
    }

    /// A node that joins an existing cluster: it knows nothing and waits for the
    /// leader to send it the log or a snapshot.
    pub fn join(cfg: Config) -> Result<Self> {
        Self::restore(cfg, DurableState::default())
    }

    /// A node restarting from what it had made durable.
    pub fn restore(cfg: Config, durable: DurableState) -> Result<Self> {
        cfg.validate()?;
        let snapshot = durable.snapshot.unwrap_or_default();
        let mut log = RaftLog::new(snapshot.index, snapshot.term);
        let timing = snapshot.timing.unwrap_or(cfg.timing);
        let timing_history = vec![(snapshot.index, timing)];
        log.append(&durable.entries);
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut core = RaftCore {
            id: cfg.id,
            term: durable.hard_state.term,
            vote: durable.hard_state.vote,
            role: Role::Follower,
            leader: 0,
            log,
            conf_history: vec![(snapshot.index, snapshot.membership.clone())],
            timing_history,
            timing,
            snapshot: snapshot.clone(),
            snapshot_in_progress: false,
            applied_bytes_since_snapshot: 0,
            applied: snapshot.index,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            campaign_kind: Campaign::Election,
            randomized_election_ticks: timing.election_ticks,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            transfer: None,
            pending_conf_index: 0,
            read_seq: 0,
            read_confirmed: 0,
            read_round_since: 0,
            pending_reads: VecDeque::new(),
            reads_waiting_for_commit: VecDeque::new(),
            forwarded_reads: BTreeSet::new(),
            forwarded_proposals: BTreeMap::new(),
            ticks: 0,
            forwards_appended: BTreeMap::new(),
            persist_seq_issued: 0,
            persist_seq_done: 0,
            term_vote_seq: 0,
            last_persisted_hard_state: durable.hard_state,
            persist_queue: VecDeque::new(),
            durable_index: 0,
            held: VecDeque::new(),
            unpersisted_entries: Vec::new(),
            unpersisted_snapshot: None,
            broadcast_pending: false,
            persist_next: false,
            commands: Vec::new(),
            rng,
            cfg,
        };
        for entry in &durable.entries {
            core.track_config_entry(entry);
        }
        core.durable_index = core.log.last_index();
        let commit = durable.hard_state.commit.max(snapshot.index);
        assert!(
            commit <= core.log.last_index(),
            "durable commit index {commit} is past the durable log's end {}",
            core.log.last_index()
        );
        core.log.set_commit(commit);
        core.reset_election_timer();
        core.emit_apply();
        Ok(core)
    }

    // ----- inspection -----

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn leader(&self) -> Option<NodeId> {
        (self.leader != 0).then_some(self.leader)
    }

    pub fn membership(&self) -> &Membership {
        &self
            .conf_history
            .last()
            .expect("membership history is never empty")
            .1
    }

    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn progress(&self, id: NodeId) -> Option<&Progress> {
        self.progress.get(&id)
    }

    pub fn latest_snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader(),
            commit: self.log.commit(),
            applied: self.applied,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            membership: self.membership().clone(),
            timing: self.timing,
        }
    }

    /// Replication progress of every other member (empty unless leader).
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.progress
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, p)| PeerStatus {
                id: *id,
                match_index: p.match_index,
                next_index: p.next_index,
                state: p.state,
                inflight: p.inflight.len(),
                recent_active: p.recent_active,
            })
            .collect()
    }

    /// Hands out what the inputs so far asked for, in execution order.
    pub fn take_commands(&mut self) -> Vec<Command> {
        if self.broadcast_pending {
            self.broadcast_pending = false;
            if self.role == Role::Leader {
                self.broadcast_append();
            }
        }
        if self.role == Role::Leader {
            self.maybe_start_read_round();
        }
        self.issue_persist(false);
        std::mem::take(&mut self.commands)
    }

    // ----- inputs -----

    /// One tick of the runtime's clock.
    pub fn tick(&mut self) {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        self.ticks += 1;
        self.expire_forwarded_proposals();
        if self.role == Role::Leader {
            self.tick_leader();
        } else if self.election_elapsed >= self.randomized_election_ticks && self.is_promotable() {
            self.campaign(if self.cfg.pre_vote {
                Campaign::PreVote
            } else {
                Campaign::Election
            });
        } else if matches!(self.role, Role::PreCandidate | Role::Candidate) {
            self.heartbeat_elapsed += 1;
            if self.heartbeat_elapsed >= self.timing.heartbeat_ticks {
                self.heartbeat_elapsed = 0;
                self.request_votes();
            }
        }
    }

    /// Brings the first election closer, once, at start-up (etcd's
    /// `--initial-election-tick-advance`): a voter that knows no leader counts its
    /// election timer as nearly run out, so it campaigns after one to `election_ticks`
    /// ticks (its randomized part) instead of waiting a whole election timeout first.
    /// A whole cluster restarted together elects a leader about one timeout sooner.
    /// Safe at any moment: timing never decides safety, and with pre-vote a member
    /// rejoining a live cluster that campaigns before it hears the leader is refused
    /// by followers still in their leader's lease, without raising anyone's term.
    pub fn advance_election_timer(&mut self) {
        if self.role == Role::Follower && self.leader == 0 && self.is_promotable() {
            self.election_elapsed = self
                .election_elapsed
                .max(self.timing.election_ticks.saturating_sub(1));
        }
    }

    /// A message from a peer.
    pub fn step(&mut self, m: Message) {
        if m.to != self.id || m.from == self.id || m.from == 0 {
            return;
        }
        if m.term > self.term {
            match &m.body {
                MessageBody::VoteRequest {
                    pre_vote,
                    leadership_transfer,
                    ..
                } => {
                    let in_lease = self.cfg.check_quorum
                        && self.leader != 0
                        && self.election_elapsed < self.timing.election_ticks;
                    if in_lease && !leadership_transfer {
                        // We heard from a leader recently: a candidate that cannot see it
                        // must not disrupt it (§6 of the dissertation, "disruptive
                        // servers"). Ignore, without raising our term.
                        return;
                    }
                    if !pre_vote {
                        // Figure 2 resets the election timer only for a granted vote or a
                        // leader's append: a candidate that we will refuse (stale log)
                        // must not keep us from campaigning ourselves.
                        let elapsed = self.election_elapsed;
                        self.become_follower(m.term, 0);
                        self.election_elapsed = elapsed;
                    }
                }
                MessageBody::VoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {
                    // Granted pre-votes carry the term we would campaign in.
                }
                MessageBody::AppendRequest { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::TimeoutNow => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, 0),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::AppendRequest { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // A deposed leader that never saw the higher term (its vote requests
                    // were ignored under the lease) learns it here and steps down.
                    self.send(m.from, self.append_rejection(0, 0));
                }
                MessageBody::ProposeRequest { id, .. } => {
                    // Sent to the leader of an older term: not appended here. The answer
                    // carries our term, which tells the sender its leader is gone.
                    let leader_hint = self.leader;
                    self.send(
                        m.from,
                        MessageBody::ProposeResponse {
                            id,
                            outcome: Err(ProposeRefusal::NotLeader { leader_hint }),
                        },
                    );
                }
                MessageBody::VoteRequest { pre_vote, .. } => {
                    // "Reply false if term < currentTerm": the answer carries our term,
                    // which is how a stale candidate learns it.
                    self.send(
                        m.from,
                        MessageBody::VoteResponse {
                            pre_vote,
                            granted: false,
                        },
                    );
                }
                _ => {}
            }
            return;
        }

        match m.body {
            MessageBody::VoteRequest {
                pre_vote,
                last_log_index,
                last_log_term,
                ..
            } => self.handle_vote_request(m.from, m.term, pre_vote, last_log_index, last_log_term),
            MessageBody::VoteResponse { pre_vote, granted } => {
                self.handle_vote_response(m.from, m.term, pre_vote, granted)
            }
            MessageBody::AppendRequest {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                self.ensure_follower_of(m.from);
                self.handle_append_request(m.from, prev_log_index, prev_log_term, entries, leader_commit);
            }
            MessageBody::AppendResponse {
                index,
                rejected,
                hint_index,
                hint_term,
            } => {
                if self.role == Role::Leader {
                    self.handle_append_response(m.from, index, rejected, hint_index, hint_term);
                }
            }
            MessageBody::Heartbeat {
                leader_commit,
                read_seq,
            } => {
                self.ensure_follower_of(m.from);
                self.handle_heartbeat(m.from, leader_commit, read_seq);
            }
            MessageBody::HeartbeatResponse {
                read_seq,
                last_log_index,
            } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(m.from, read_seq, last_log_index);
                }
            }
            MessageBody::InstallSnapshot { meta } => {
                self.ensure_follower_of(m.from);
                self.handle_install_snapshot(m.from, meta);
            }
            MessageBody::TimeoutNow => {
                if self.is_promotable() {
                    self.campaign(Campaign::Transfer);
                }
            }
            MessageBody::ReadIndexRequest { id } => self.handle_read_index_request(m.from, id),
            MessageBody::ProposeRequest { id, data } => self.handle_propose_request(m.from, id, data),
            MessageBody::ProposeResponse { id, outcome } => {
                if self.forwarded_proposals.remove(&id).is_some() {
                    self.commands.push(Command::ProposalForwarded {
                        id,
                        outcome: outcome.map_err(ForwardFailure::Refused),
                    });
                }
            }
            MessageBody::ReadIndexResponse { id, index } => {
                if self.forwarded_reads.remove(&id) {
                    match index {
                        Some(index) => self.commands.push(Command::ReadReady { id, index }),
                        None => self.commands.push(Command::ReadFailed {
                            id,
                            reason: ReadFailure::NotLeader {
                                leader_hint: self.leader(),
                            },
                        }),
                    }
                }
            }
        }
    }

    /// Appends a client command. Returns its index; the command took effect once an
    /// entry at that index with the current term is applied.
    pub fn propose(&mut self, data: Bytes) -> Result<(Index, Term)> {
        self.check_can_propose()?;
        Ok(self.append_as_leader(EntryPayload::Normal(data)))
    }

    /// On a follower that knows its leader: hands `data` to the leader to propose, as
    /// etcd's followers forward `MsgProp`; answered with `Command::ProposalForwarded`
    /// (where the leader appended it, a refusal, or lost). On the leader, or with no
    /// leader known, refused as `propose` would. `id` must be unique for this member
    /// within a term, across its restarts too: the leader answers a request whose
    /// sender and id it has appended before with the first copy's index.
    pub fn forward_proposal(&mut self, id: u64, data: Bytes) -> Result<()> {
        if self.role == Role::Leader || self.leader == 0 {
            return Err(Error::NotLeader {
                leader_hint: self.leader(),
            });
        }
        let waiting = self.forwarded_proposals.len() as u64;
        if waiting >= self.cfg.max_uncommitted_entries {
            return Err(Error::Busy(waiting));
        }
        assert!(
            !self.forwarded_proposals.contains_key(&id),
            "forwarded proposal id {id} reused"
        );
        let give_up = self.ticks + u64::from(self.timing.election_ticks);
        self.forwarded_proposals.insert(id, give_up);
        self.send(self.leader, MessageBody::ProposeRequest { id, data });
        Ok(())
    }

    /// A follower's forwarded command: appended as a local proposal would be (same
    /// checks, same entry), and the follower told where.
    fn handle_propose_request(&mut self, from: NodeId, id: u64, data: Bytes) {
        if self.role == Role::Leader {
            let seen = self.forwards_appended.get(&from).and_then(|(_, at)| at.get(&id));
            if let Some(&at) = seen {
                // A duplicate: already appended once, answered again.
                self.send(from, MessageBody::ProposeResponse { id, outcome: Ok(at) });
                return;
            }
        }
        let outcome = match self.check_can_propose() {
            Ok(()) => {
                let at = self.append_as_leader(EntryPayload::Normal(data));
                let (order, appended) = self.forwards_appended.entry(from).or_default();
                order.push_back(id);
                appended.insert(id, at);
                if order.len() > FORWARDS_REMEMBERED {
                    let oldest = order.pop_front().expect("not empty");
                    appended.remove(&oldest);
                }
                Ok(at)
            }
            Err(Error::TransferInProgress) => Err(ProposeRefusal::TransferInProgress),
            Err(Error::Busy(_)) => Err(ProposeRefusal::Busy),
            Err(_) => Err(ProposeRefusal::NotLeader {
                leader_hint: self.leader,
            }),
        };
        // Sent before the append that carries the entry (appends go out when this step
        // is flushed), so the follower knows the index before it can apply it.
        self.send(from, MessageBody::ProposeResponse { id, outcome });
    }

    /// Forwarded proposals the leader did not answer within an election timeout are
    /// given up (the answer or the request was lost): their outcome is unknown.
    fn expire_forwarded_proposals(&mut self) {
        while let Some((&id, &give_up)) = self.forwarded_proposals.first_key_value() {
            // Ids grow with time, so the oldest is first; expiry is in id order.
            if give_up > self.ticks {
                break;
            }
            self.forwarded_proposals.remove(&id);
            self.commands.push(Command::ProposalForwarded {
                id,
                outcome: Err(ForwardFailure::Lost),
            });
        }
    }

    /// Proposes one membership change. Refused while another is in flight, before
    /// this leader has committed an entry of its term, for a learner that has not
    /// caught up, and when the cluster would be left without an active quorum.
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<(Index, Term)> {
        self.check_can_propose()?;
        if self.log.term(self.log.commit()) != Some(self.term) {
            return Err(Error::NoCommitInTerm);
        }
        if self.pending_conf_index > self.log.commit() {
            return Err(Error::ChangeInProgress(self.pending_conf_index));
        }
        let next = self.membership().apply_change(&change)?;
        if let ConfChange::Promote(id) = change {
            let matched = self.progress.get(&id).map_or(0, |p| p.match_index);
            let needed = self.log.commit() * self.cfg.promote_min_match_percent / 100;
            if matched < needed {
                return Err(Error::LearnerNotCaughtUp(id));
            }
        }
        let active = next
            .voters
            .iter()
            .filter(|&&v| {
                v == self.id
                    || (!matches!(change, ConfChange::AddVoter(added) if added == v)
                        && self.progress.get(&v).is_some_and(|p| p.is_active()))
            })
            .count();
        if active < next.quorum() {
            return Err(Error::WouldLoseQuorum {
                active,
                voters: next.voters.len(),
            });
        }
        let (index, term) = self.append_as_leader(EntryPayload::ConfChange(change));
        self.pending_conf_index = index;
        Ok((index, term))
    }

    /// Proposes new timing for every member, switched at the entry's commit.
    pub fn propose_timing(&mut self, timing: Timing) -> Result<(Index, Term)> {
        timing.validate()?;
        self.check_can_propose()?;
        Ok(self.append_as_leader(EntryPayload::Timing(timing)))
    }

    /// Changes this node's own timing now (live, without a restart).
    pub fn set_timing(&mut self, timing: Timing) -> Result<()> {
        timing.validate()?;
        self.timing = timing;
        self.heartbeat_elapsed = self.heartbeat_elapsed.min(timing.heartbeat_ticks);
        self.reset_randomized_timeout();
        Ok(())
    }

    /// Asks for a linearizable read. Answered with `ReadReady` once the leader has
    /// confirmed it still leads (a heartbeat round acknowledged by a quorum), or with
    /// `ReadFailed`.
    pub fn read_index(&mut self, id: u64) {
        match self.role {
            Role::Leader => self.start_read(id, None),
            _ if self.leader != 0 => {
                if self.forwarded_reads.len() >= self.cfg.max_pending_reads {
                    self.commands.push(Command::ReadFailed {
                        id,
                        reason: ReadFailure::TooManyReads,
                    });
                    return;
                }
                self.forwarded_reads.insert(id);
                self.send(self.leader, MessageBody::ReadIndexRequest { id });
            }
            _ => self.commands.push(Command::ReadFailed {
                id,
                reason: ReadFailure::NotLeader { leader_hint: None },
            }),
        }
    }

    /// Hands leadership to `target` (a voter): brings it up to date, then tells it to
    /// campaign at once. Aborted after an election timeout.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<()> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader_hint: self.leader(),
            });
        }
        if target == self.id {
            return Err(Error::AlreadyLeader);
        }
        if !self.membership().is_voter(target) {
            return Err(Error::NotVoter(target));
        }
        if let Some((current, _)) = self.transfer {
            if current == target {
                return Ok(());
            }
            self.commands.push(Command::TransferAborted { target: current });
        }
        self.transfer = Some((target, 0));
        let caught_up = self
            .progress
            .get(&target)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send(target, MessageBody::TimeoutNow);
        } else {
            self.maybe_send_append(target, true);
        }
        Ok(())
    }

    /// The caller made everything up to persistence `seq` durable.
    pub fn persisted(&mut self, seq: u64) {
        assert!(
            seq <= self.persist_seq_issued,
            "persisted({seq}) was never issued"
        );
        if seq <= self.persist_seq_done {
            return;
        }
        self.persist_seq_done = seq;
        while let Some(&(s, last)) = self.persist_queue.front() {
            if s > seq {
                break;
            }
            self.persist_queue.pop_front();
            self.durable_index = self.durable_index.max(last);
        }
        let mut still_held = VecDeque::with_capacity(self.held.len());
        for held in std::mem::take(&mut self.held) {
            if held.seq <= seq {
                self.commands.push(Command::Send(held.message));
            } else {
                still_held.push_back(held);
            }
        }
        self.held = still_held;
        if self.role == Role::Candidate && self.term_vote_seq <= seq && self.vote_won() {
            self.become_leader();
        }
        if self.role == Role::Leader {
            if let Some(pr) = self.progress.get_mut(&self.id) {
                pr.update_match(self.durable_index.min(self.log.last_index()));
            }
            if self.maybe_commit() {
                self.broadcast_pending = true;
            }
        }
    }

    /// The runtime finished the snapshot asked for by `BuildSnapshot`.
    pub fn snapshot_built(&mut self, meta: SnapshotMeta) {
        self.snapshot_in_progress = false;
        if meta.index <= self.snapshot.index {
            return;
        }
        assert!(
            meta.index <= self.applied,
            "snapshot {} is past applied {}",
            meta.index,
            self.applied
        );
        self.snapshot = meta;
        let mut through = self.snapshot.index.saturating_sub(self.cfg.log_tail_entries);
        if self.cfg.log_tail_bytes > 0 {
            // Keep fewer entries when they are large: the tail holds at most
            // `log_tail_bytes` (a follower further behind gets a snapshot).
            let mut kept = 0u64;
            let mut index = self.snapshot.index;
            while index > through {
                let Some(entry) = self.log.entry(index) else { break };
                kept += entry.size_bytes() as u64;
                if kept > self.cfg.log_tail_bytes {
                    through = index;
                    break;
                }
                index -= 1;
            }
        }
        if through > self.log.base_index() {
            self.compact_log(through);
            self.commands.push(Command::CompactLog { through });
        }
    }

    /// The runtime could not build the snapshot asked for; the next one will be asked
    /// for after `snapshot_entries` more entries are applied.
    pub fn snapshot_build_failed(&mut self) {
        self.snapshot_in_progress = false;
    }

    /// The transport could not deliver a snapshot to `to`: probe it again later.
    pub fn snapshot_failed(&mut self, to: NodeId) {
        if let Some(pr) = self.progress.get_mut(&to) {
            if matches!(pr.state, ReplicationState::Snapshot { .. }) {
                pr.become_probe();
            }
        }
    }

    /// The transport lost its stream to `to`: anything in flight may be lost.
    pub fn report_unreachable(&mut self, to: NodeId) {
        if let Some(pr) = self.progress.get_mut(&to) {
            if pr.state == ReplicationState::Replicate {
                pr.become_probe();
            }
        }
    }

    // ----- roles -----

    /// May this node start an election? A voter of its latest configuration may, and
    /// so may a voter of the committed one: a leader that appended its own removal and
    /// lost leadership before committing it can hold the only up-to-date log, and must
    /// be able to win (votes are still counted in the latest configuration, which it
    /// is not part of) to finish the change.
    fn is_promotable(&self) -> bool {
        self.membership().is_voter(self.id) || self.membership_at(self.log.commit()).is_voter(self.id)
    }

    fn become_follower(&mut self, term: Term, leader: NodeId) {
        let was_leader = self.role == Role::Leader;
        if term > self.term {
            self.set_term(term);
        }
        self.role = Role::Follower;
        self.set_leader(leader);
        self.votes.clear();
        self.election_elapsed = 0;
        self.reset_randomized_timeout();
        if was_leader {
            self.progress.clear();
            self.forwards_appended.clear();
            // Whether leadership went to the target or elsewhere, the transfer is over.
            self.transfer = None;
            self.fail_leader_reads();
        }
    }

    fn set_leader(&mut self, leader: NodeId) {
        if leader != self.leader {
            self.leader = leader;
            // Reads forwarded to a previous leader will never be answered by it.
            let hint = self.leader();
            for id in std::mem::take(&mut self.forwarded_reads) {
                self.commands.push(Command::ReadFailed {
                    id,
                    reason: ReadFailure::NotLeader { leader_hint: hint },
                });
            }
            // Proposals it did not confirm: it may have appended them, and they may
            // still commit under the next leader, or not.
            for id in std::mem::take(&mut self.forwarded_proposals).into_keys() {
                self.commands.push(Command::ProposalForwarded {
                    id,
                    outcome: Err(ForwardFailure::Lost),
                });
            }
        }
    }

    fn ensure_follower_of(&mut self, leader: NodeId) {
        // Same term, message from the leader of this term.
        assert_ne!(self.role, Role::Leader, "two leaders in term {}", self.term);
        if self.role != Role::Follower || self.leader != leader {
            self.become_follower(self.term, leader);
        }
        self.election_elapsed = 0;
    }

    fn campaign(&mut self, kind: Campaign) {
        let pre_vote = kind == Campaign::PreVote;
        if pre_vote {
            self.role = Role::PreCandidate;
            self.set_leader(0);
        } else {
            self.role = Role::Candidate;
            self.set_term(self.term + 1);
            self.vote = self.id;
            self.mark_term_vote_changed();
            self.set_leader(0);
        }
        self.campaign_kind = kind;
        self.votes.clear();
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_timeout();
        self.votes.insert(self.id, true);
        if self.vote_won() {
            if pre_vote {
                self.campaign(Campaign::Election);
            } else {
                // The only voter: lead once the new term is durable (`persisted`), so a
                // crash before that can never make it lead the same term twice.
                self.persist_next = true;
            }
            return;
        }
        self.request_votes();
    }

    /// Asks every voter that has not answered yet (requests and answers get lost; the
    /// paper has servers retry RPCs that go unanswered).
    fn request_votes(&mut self) {
        let kind = self.campaign_kind;
        let pre_vote = kind == Campaign::PreVote;
        let leadership_transfer = kind == Campaign::Transfer;
        let term = if pre_vote { self.term + 1 } else { self.term };
        let voters: Vec<NodeId> = self
            .membership()
            .voters
            .iter()
            .copied()
            .filter(|&v| v != self.id && !self.votes.contains_key(&v))
            .collect();
        for voter in voters {
            self.send_with_term(
                voter,
                term,
                MessageBody::VoteRequest {
                    pre_vote,
                    last_log_index: self.log.last_index(),
                    last_log_term: self.log.last_term(),
                    leadership_transfer,
                },
            );
        }
    }

    fn vote_won(&self) -> bool {
        let membership = self.membership();
        let granted = self
            .votes
            .iter()
            .filter(|(id, granted)| **granted && membership.is_voter(**id))
            .count();
        granted >= membership.quorum()
    }

    fn vote_lost(&self) -> bool {
        let membership = self.membership();
        let rejected = self
            .votes
            .iter()
            .filter(|(id, granted)| !**granted && membership.is_voter(**id))
            .count();
        rejected >= membership.quorum()
    }

    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate);
        assert_eq!(self.vote, self.id, "a leader voted for itself");
        assert!(
            self.term_vote_seq <= self.persist_seq_done,
            "leading a term that is not durable"
        );
        self.role = Role::Leader;
        self.set_leader(self.id);
        self.forwards_appended.clear();
        self.read_confirmed = self.read_seq;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.transfer = None;
        self.reads_waiting_for_commit.clear();
        self.pending_reads.clear();
        self.progress.clear();
        let next = self.log.last_index() + 1;
        let members: Vec<NodeId> = self.membership().members().collect();
        for id in members {
            self.add_progress(id, next);
        }
        // Entries it holds that are already durable count for the leader itself.
        let durable = self.durable_index.min(self.log.last_index());
        if let Some(pr) = self.progress.get_mut(&self.id) {
            pr.update_match(durable);
            pr.become_replicate();
        }
        // Any membership change still in the log may be uncommitted: no new change
        // until everything up to here is committed.
        self.pending_conf_index = self.log.last_index();
        self.append_as_leader(EntryPayload::Noop);
    }

    fn add_progress(&mut self, id: NodeId, next: Index) {
        let mut pr = Progress::new(next, self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes);
        // A new leader gives every member one election timeout of grace.
        pr.recent_active = true;
        self.progress.insert(id, pr);
    }

    fn set_term(&mut self, term: Term) {
        assert!(term > self.term, "term went back from {} to {term}", self.term);
        self.term = term;
        self.vote = 0;
        self.mark_term_vote_changed();
    }

    fn mark_term_vote_changed(&mut self) {
        // Persisted by the next issue_persist; messages that depend on it wait for it.
        self.term_vote_seq = self.persist_seq_issued + 1;
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.reset_randomized_timeout();
    }

    fn reset_randomized_timeout(&mut self) {
        let base = self.timing.election_ticks;
        self.randomized_election_ticks = base + self.rng.gen_range(0..base);
    }

    // ----- leader -----

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        if let Some((target, elapsed)) = &mut self.transfer {
            *elapsed += 1;
            if *elapsed >= self.timing.election_ticks {
                // The transfer had a whole election timeout; it did not happen.
                let target = *target;
                self.transfer = None;
                self.commands.push(Command::TransferAborted { target });
            }
        }
        if self.election_elapsed >= self.timing.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.quorum_active() {
                self.become_follower(self.term, 0);
                return;
            }
            for pr in self.progress.values_mut() {
                pr.active_last_round = pr.recent_active;
                pr.recent_active = false;
            }
            if let Some(pr) = self.progress.get_mut(&self.id) {
                pr.recent_active = true;
            }
        }
        if self.heartbeat_elapsed >= self.timing.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat(0);
        }
        if self.read_seq > self.read_confirmed
            && self.ticks - self.read_round_since >= u64::from(self.timing.heartbeat_ticks)
        {
            // The round's heartbeats or their answers were lost: ask again.
            self.read_round_since = self.ticks;
            self.broadcast_heartbeat(self.read_seq);
        }
    }

    fn quorum_active(&self) -> bool {
        let membership = self.membership();
        let active = membership
            .voters
            .iter()
            .filter(|&&v| v == self.id || self.progress.get(&v).is_some_and(|p| p.recent_active))
            .count();
        active >= membership.quorum()
    }

    fn check_can_propose(&self) -> Result<()> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader_hint: self.leader(),
            });
        }
        if self.transfer.is_some() {
            return Err(Error::TransferInProgress);
        }
        let uncommitted = self.log.last_index() - self.log.commit();
        if uncommitted >= self.cfg.max_uncommitted_entries {
            return Err(Error::Busy(uncommitted));
        }
        Ok(())
    }

    fn append_as_leader(&mut self, payload: EntryPayload) -> (Index, Term) {
        assert_eq!(self.role, Role::Leader);
        let entry = Entry {
            term: self.term,
            index: self.log.last_index() + 1,
            payload,
        };
        let at = (entry.index, entry.term);
        self.log.append(std::slice::from_ref(&entry));
        self.track_config_entry(&entry);
        self.unpersisted_entries.push(entry);
        self.broadcast_pending = true;
        at
    }

    fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self
            .progress
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect();
        for peer in peers {
            self.maybe_send_append(peer, true);
        }
    }

    fn broadcast_heartbeat(&mut self, read_seq: u64) {
        let peers: Vec<NodeId> = self
            .progress
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect();
        for peer in peers {
            let pr = &self.progress[&peer];
            // Never tell a follower to commit past what it is known to hold.
            let leader_commit = self.log.commit().min(pr.match_index);
            self.send(
                peer,
                MessageBody::Heartbeat {
                    leader_commit,
                    read_seq,
                },
            );
        }
    }

    /// Sends `to` what it is missing, if its window allows; returns whether it sent.
    fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let prev_index = pr.next_index - 1;
        let state = pr.state;
        let Some(prev_term) = self.log.term(prev_index) else {
            return self.send_snapshot(to);
        };
        let entries = if pr.next_index <= self.log.last_index() {
            self.log.slice(
                pr.next_index,
                self.log.last_index() + 1,
                self.cfg.max_batch_entries,
                self.cfg.max_batch_bytes,
            )
        } else {
            Vec::new()
        };
        // A probe goes out even when empty: its answer is how the logs' agreement is found.
        if entries.is_empty() && !send_if_empty && state != ReplicationState::Probe {
            return false;
        }
        let bytes: usize = entries.iter().map(Entry::size_bytes).sum();
        let last = entries.last().map_or(prev_index, |e| e.index);
        let pr = self.progress.get_mut(&to).expect("checked above");
        match state {
            ReplicationState::Replicate => {
                if !entries.is_empty() {
                    pr.next_index = last + 1;
                    pr.inflight.add(last, bytes.max(1));
                }
            }
            ReplicationState::Probe => pr.probe_sent = true,
            ReplicationState::Snapshot { .. } => unreachable!("paused"),
        }
        let leader_commit = self.log.commit();
        self.send(
            to,
            MessageBody::AppendRequest {
                prev_log_index: prev_index,
                prev_log_term: prev_term,
                entries,
                leader_commit,
            },
        );
        true
    }

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let meta = self.snapshot.clone();
        assert!(
            meta.index >= self.log.base_index(),
            "the log was compacted past the latest snapshot"
        );
        let pr = self.progress.get_mut(&to).expect("progress exists");
        pr.become_snapshot(meta.index);
        self.send(to, MessageBody::InstallSnapshot { meta });
        true
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        index: Index,
        rejected: bool,
        hint_index: Index,
        hint_term: Term,
    ) {
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if rejected {
            let probe_at = self.log.find_conflict_by_term(hint_index, hint_term).0;
            let pr = self.progress.get_mut(&from).expect("exists");
            if pr.decrease_next(index, probe_at) {
                if pr.state == ReplicationState::Replicate {
                    pr.become_probe();
                }
                self.maybe_send_append(from, true);
            }
            return;
        }
        assert!(
            index <= last_index,
            "follower {from:#x} claims entry {index} the leader never had"
        );
        let advanced = pr.update_match(index);
        pr.inflight.free_to(index);
        match pr.state {
            ReplicationState::Probe if advanced || pr.match_index + 1 == pr.next_index => {
                pr.become_replicate()
            }
            ReplicationState::Snapshot { index: snap } if pr.match_index >= snap => pr.become_probe(),
            _ => {}
        }
        if advanced && self.maybe_commit() {
            self.broadcast_pending = true;
        }
        if let Some((target, _)) = self.transfer {
            if target == from && self.progress[&from].match_index == self.log.last_index() {
                self.send(from, MessageBody::TimeoutNow);
            }
        }
        // Keep the pipeline full.
        while self.role == Role::Leader && self.maybe_send_append(from, false) {}
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_seq: u64, last_log_index: Index) {
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        let patience = (self.timing.election_ticks / self.timing.heartbeat_ticks).max(3);
        // Stalls are counted in periodic heartbeats (read rounds carry a number and
        // come as often as reads do: counting them would call appends that are simply
        // in flight lost).
        let periodic = read_seq == 0;
        match pr.state {
            _ if !periodic => {}
            ReplicationState::Snapshot { index } if last_log_index >= index => pr.become_probe(),
            ReplicationState::Snapshot { .. } => {
                // The transport normally reports the outcome (`snapshot_failed`, or the
                // follower's answer). If neither comes for ten election timeouts (the
                // follower restarted mid-transfer, say), send it again.
                pr.stalled_heartbeats += 1;
                if pr.stalled_heartbeats >= patience * 10 {
                    pr.become_probe();
                }
            }
            ReplicationState::Replicate if pr.match_index < last_index => {
                pr.stalled_heartbeats += 1;
                if pr.stalled_heartbeats >= patience {
                    // Appends were lost: start again from what is known to match.
                    pr.become_probe();
                }
            }
            _ => pr.stalled_heartbeats = 0,
        }
        if read_seq > pr.read_seq_acked {
            pr.read_seq_acked = read_seq;
            self.advance_reads();
        }
        if self
            .progress
            .get(&from)
            .is_some_and(|p| p.match_index < last_index)
        {
            self.maybe_send_append(from, false);
        }
    }

    /// Advances the commit index to the highest index a quorum of voters holds, if
    /// that entry is of the current term (§5.4.2). Returns whether it advanced.
    fn maybe_commit(&mut self) -> bool {
        let membership = self.membership();
        let mut matched: Vec<Index> = membership
            .voters
            .iter()
            .map(|v| self.progress.get(v).map_or(0, |p| p.match_index))
            .collect();
        if matched.is_empty() {
            return false;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = matched[membership.quorum() - 1];
        if quorum_index <= self.log.commit() {
            return false;
        }
        if self.log.term(quorum_index) != Some(self.term) {
            // Entries of earlier terms are committed only through one of ours.
            return false;
        }
        self.log.set_commit(quorum_index);
        assert_eq!(self.log.term(self.log.commit()), Some(self.term));
        self.emit_apply();
        self.on_commit_in_term();
        true
    }

    /// Work that waited for this leader to commit an entry of its own term.
    fn on_commit_in_term(&mut self) {
        for (id, from) in std::mem::take(&mut self.reads_waiting_for_commit) {
            self.start_read(id, from);
        }
        // A leader removed by a committed change hands over by stepping down.
        if self.role == Role::Leader && !self.membership().contains(self.id) && self.membership_committed() {
            self.become_follower(self.term, 0);
        }
    }

    fn membership_committed(&self) -> bool {
        self.conf_history.last().expect("not empty").0 <= self.log.commit()
    }

    // ----- reads -----

    fn start_read(&mut self, id: u64, from: Option<NodeId>) {
        if self.log.term(self.log.commit()) != Some(self.term) {
            // Until an entry of this term is committed the leader's commit index may be
            // behind entries that earlier leaders committed (§6.4).
            if self.reads_waiting_for_commit.len() >= self.cfg.max_pending_reads {
                self.answer_read(id, from, Err(ReadFailure::TooManyReads));
            } else {
                self.reads_waiting_for_commit.push_back((id, from));
            }
            return;
        }
        let index = self.log.commit();
        if self.membership().voters.len() == 1 && self.membership().is_voter(self.id) {
            self.answer_read(id, from, Ok(index));
            return;
        }
        if self.pending_reads.len() >= self.cfg.max_pending_reads {
            self.answer_read(id, from, Err(ReadFailure::TooManyReads));
            return;
        }
        // The read joins the next round, which begins after it arrived: when this step
        // is flushed if no round is in flight, else once the one in flight is confirmed
        // (`maybe_start_read_round`). One heartbeat round serves every read that came
        // meanwhile, as etcd's read loop batches ReadIndex, instead of one per read.
        self.pending_reads.push_back(PendingRead {
            id,
            from,
            index,
            seq: self.read_seq + 1,
        });
    }

    fn answer_read(&mut self, id: u64, from: Option<NodeId>, answer: Result<Index, ReadFailure>) {
        match from {
            None => self.commands.push(match answer {
                Ok(index) => Command::ReadReady { id, index },
                Err(reason) => Command::ReadFailed { id, reason },
            }),
            Some(follower) => self.send(
                follower,
                MessageBody::ReadIndexResponse {
                    id,
                    index: answer.ok(),
                },
            ),
        }
    }

    /// Starts a read round if reads wait for one and none is in flight: every pending
    /// read arrived before it, so a quorum echoing it confirms each of them.
    fn maybe_start_read_round(&mut self) {
        let waiting = self.pending_reads.back().is_some_and(|r| r.seq > self.read_seq);
        if !waiting || self.read_confirmed < self.read_seq {
            return;
        }
        self.read_seq += 1;
        self.read_round_since = self.ticks;
        if let Some(pr) = self.progress.get_mut(&self.id) {
            pr.read_seq_acked = self.read_seq;
        }
        self.broadcast_heartbeat(self.read_seq);
        // A leader that is the only voter confirms its own round.
        self.advance_reads();
    }

    fn advance_reads(&mut self) {
        let membership = self.membership();
        let mut acked: Vec<u64> = membership
            .voters
            .iter()
            .map(|v| self.progress.get(v).map_or(0, |p| p.read_seq_acked))
            .collect();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        // The highest round a quorum of voters echoed.
        let Some(&confirmed) = acked.get(membership.quorum() - 1) else {
            return;
        };
        debug_assert!(confirmed <= self.read_seq, "a round confirmed before it began");
        self.read_confirmed = self.read_confirmed.max(confirmed);
        while let Some(read) = self.pending_reads.front() {
            if read.seq > confirmed {
                break;
            }
            let read = self.pending_reads.pop_front().expect("front exists");
            self.answer_read(read.id, read.from, Ok(read.index));
        }
    }

    fn handle_read_index_request(&mut self, from: NodeId, id: u64) {
        if self.role == Role::Leader {
            self.start_read(id, Some(from));
        } else {
            self.send(from, MessageBody::ReadIndexResponse { id, index: None });
        }
    }

    fn fail_leader_reads(&mut self) {
        let hint = self.leader();
        let waiting: Vec<(u64, Option<NodeId>)> = self
            .reads_waiting_for_commit
            .drain(..)
            .chain(self.pending_reads.drain(..).map(|r| (r.id, r.from)))
            .collect();
        for (id, from) in waiting {
            self.answer_read(id, from, Err(ReadFailure::NotLeader { leader_hint: hint }));
        }
    }

    // ----- followers and candidates -----

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        last_index: Index,
        last_term: Term,
    ) {
        let can_vote =
            self.vote == from || (self.vote == 0 && self.leader == 0) || (pre_vote && term > self.term);
        // A node that sees itself as a learner still answers: the candidate's log may
        // already hold its promotion, and only the candidate's configuration decides
        // whose votes count (learners' never do). Refusing would let a cluster whose
        // leader died right after a promotion wait forever for that learner's vote.
        let grant =
            can_vote && self.log.is_up_to_date(last_index, last_term) && !(pre_vote && self.in_lease());
        if grant && !pre_vote {
            assert!(
                self.vote == 0 || self.vote == from,
                "voting twice in term {}",
                self.term
            );
            self.vote = from;
            self.mark_term_vote_changed();
            self.election_elapsed = 0;
        }
        let reply_term = if pre_vote && grant { term } else { self.term };
        self.send_with_term(
            from,
            reply_term,
            MessageBody::VoteResponse {
                pre_vote,
                granted: grant,
            },
        );
    }

    /// Heard from a leader within the election timeout.
    fn in_lease(&self) -> bool {
        self.cfg.check_quorum && self.leader != 0 && self.election_elapsed < self.timing.election_ticks
    }

    fn handle_vote_response(&mut self, from: NodeId, term: Term, pre_vote: bool, granted: bool) {
        let expected = match self.role {
            Role::PreCandidate => pre_vote && (term == self.term + 1 || !granted),
            Role::Candidate => !pre_vote && term == self.term,
            _ => false,
        };
        if !expected {
            return;
        }
        self.votes.entry(from).or_insert(granted);
        if self.vote_won() {
            if self.role == Role::PreCandidate {
                self.campaign(Campaign::Election);
            } else {
                self.become_leader();
            }
        } else if self.vote_lost() {
            self.become_follower(self.term, 0);
        }
    }

    fn handle_heartbeat(&mut self, from: NodeId, leader_commit: Index, read_seq: u64) {
        if leader_commit > self.log.commit() {
            self.log.set_commit(leader_commit.min(self.log.last_index()));
            self.emit_apply();
        }
        self.send(
            from,
            MessageBody::HeartbeatResponse {
                read_seq,
                last_log_index: self.log.last_index(),
            },
        );
    }

    fn append_rejection(&self, index: Index, prev_log_term: Term) -> MessageBody {
        let (hint_index, hint_term) = if index == 0 {
            (0, 0)
        } else {
            self.log.find_conflict_by_term(index, prev_log_term)
        };
        MessageBody::AppendResponse {
            index,
            rejected: true,
            hint_index,
            hint_term,
        }
    }

    fn handle_append_request(
        &mut self,
        from: NodeId,
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: Index,
    ) {
        if prev_log_index < self.log.commit() {
            // Everything up to our commit index matches any leader's log.
            let commit = self.log.commit();
            self.send_durable(
                from,
                MessageBody::AppendResponse {
                    index: commit,
                    rejected: false,
                    hint_index: 0,
                    hint_term: 0,
                },
            );
            return;
        }
        if !self.log.matches(prev_log_index, prev_log_term) {
            let body = self.append_rejection(prev_log_index, prev_log_term);
            self.send(from, body);
            return;
        }
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                prev_log_index + 1 + i as Index,
                "append entries are contiguous"
            );
        }
        let last_new = prev_log_index + entries.len() as Index;
        if let Some(pos) = self.log.find_conflict(&entries) {
            let first = entries[pos].index;
            if first <= self.log.last_index() {
                assert!(
                    first > self.log.commit(),
                    "leader {from:#x} conflicts with committed entry {first}"
                );
                self.truncate_log_from(first);
            }
            let new = &entries[pos..];
            self.log.append(new);
            for entry in new {
                self.track_config_entry(entry);
            }
            self.unpersisted_entries.extend_from_slice(new);
        }
        let commit = leader_commit.min(last_new);
        if commit > self.log.commit() {
            self.log.set_commit(commit);
            self.emit_apply();
        }
        self.send_durable(
            from,
            MessageBody::AppendResponse {
                index: last_new,
                rejected: false,
                hint_index: 0,
                hint_term: 0,
            },
        );
    }

    fn handle_install_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        let commit = self.log.commit();
        if meta.index <= commit {
            self.send_durable(
                from,
                MessageBody::AppendResponse {
                    index: commit,
                    rejected: false,
                    hint_index: 0,
                    hint_term: 0,
                },
            );
            return;
        }
        if self.log.matches(meta.index, meta.term) {
            // We hold the snapshot's last entry: keep the log, just learn the commit.
            self.log.set_commit(meta.index);
            self.emit_apply();
        } else {
            if !self.unpersisted_entries.is_empty() {
                // Superseded by the snapshot before they ever reached the disk.
                self.unpersisted_entries.clear();
            }
            self.log.reset_to_snapshot(meta.index, meta.term);
            self.conf_history = vec![(meta.index, meta.membership.clone())];
            let timing = meta.timing.unwrap_or(self.timing);
            self.timing_history = vec![(meta.index, timing)];
            if timing != self.timing {
                self.set_timing(timing).expect("timing from the leader is valid");
            }
            self.snapshot = meta.clone();
            self.applied = meta.index;
            self.durable_index = self.durable_index.min(meta.index);
            for queued in self.persist_queue.iter_mut() {
                queued.1 = queued.1.min(meta.index);
            }
            self.unpersisted_snapshot = Some(meta.clone());
            self.commands.push(Command::RestoreSnapshot(meta.clone()));
        }
        self.send_durable(
            from,
            MessageBody::AppendResponse {
                index: meta.index,
                rejected: false,
                hint_index: 0,
                hint_term: 0,
            },
        );
    }

    // ----- log bookkeeping -----

    fn truncate_log_from(&mut self, index: Index) {
        self.log.truncate_from(index);
        while self.conf_history.len() > 1 && self.conf_history.last().expect("not empty").0 >= index {
            self.conf_history.pop();
        }
        while self.timing_history.len() > 1 && self.timing_history.last().expect("not empty").0 >= index {
            self.timing_history.pop();
        }
        if self.pending_conf_index >= index {
            self.pending_conf_index = 0;
        }
        self.unpersisted_entries.retain(|e| e.index < index);
        // What is on disk from `index` on no longer agrees with memory.
        self.durable_index = self.durable_index.min(index - 1);
        for queued in self.persist_queue.iter_mut() {
            queued.1 = queued.1.min(index - 1);
        }
    }

    fn track_config_entry(&mut self, entry: &Entry) {
        if let EntryPayload::ConfChange(change) = &entry.payload {
            let next = self
                .membership()
                .apply_change(change)
                .unwrap_or_else(|e| panic!("entry {} holds an invalid membership change: {e}", entry.index));
            self.conf_history.push((entry.index, next));
            if self.role == Role::Leader {
                let next_index = self.log.last_index() + 1;
                let members: BTreeSet<NodeId> = self.membership().members().collect();
                let known: Vec<NodeId> = self.progress.keys().copied().collect();
                for id in known {
                    if !members.contains(&id) && id != self.id {
                        self.progress.remove(&id);
                    }
                }
                for id in members {
                    if !self.progress.contains_key(&id) {
                        self.add_progress(id, next_index);
                    }
                }
            }
        }
    }

    fn compact_log(&mut self, through: Index) {
        self.log.compact(through);
        let keep_from = self
            .conf_history
            .iter()
            .rposition(|(index, _)| *index <= through)
            .unwrap_or(0);
        self.conf_history.drain(..keep_from);
        let keep_from = self
            .timing_history
            .iter()
            .rposition(|(index, _)| *index <= through)
            .unwrap_or(0);
        self.timing_history.drain(..keep_from);
    }

    fn membership_at(&self, index: Index) -> Membership {
        self.conf_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, m)| m.clone())
            .expect("membership history covers every index in the log")
    }

    fn timing_at(&self, index: Index) -> Option<Timing> {
        self.timing_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, t)| *t)
    }

    /// Hands out committed entries not yet applied, and asks for a snapshot when
    /// enough have been applied since the last one.
    fn emit_apply(&mut self) {
        let commit = self.log.commit();
        assert!(
            self.applied <= commit,
            "applied {} is past commit {commit}",
            self.applied
        );
        while self.applied < commit {
            let entries = self.log.slice(
                self.applied + 1,
                commit + 1,
                self.cfg.max_batch_entries,
                self.cfg.max_batch_bytes,
            );
            assert!(!entries.is_empty());
            self.applied = entries.last().expect("not empty").index;
            self.applied_bytes_since_snapshot += entries.iter().map(|e| e.size_bytes() as u64).sum::<u64>();
            for entry in &entries {
                if let EntryPayload::Timing(timing) = entry.payload {
                    self.timing_history.push((entry.index, timing));
                    self.set_timing(timing)
                        .expect("timing entries are validated when proposed");
                }
            }
            self.commands.push(Command::Apply(entries));
        }
        if self.cfg.snapshot_entries > 0
            && !self.snapshot_in_progress
            && self.applied > self.snapshot.index
            && (self.applied >= self.snapshot.index + self.cfg.snapshot_entries
                || (self.cfg.snapshot_bytes > 0
                    && self.applied_bytes_since_snapshot >= self.cfg.snapshot_bytes))
        {
            self.snapshot_in_progress = true;
            self.applied_bytes_since_snapshot = 0;
            let meta = SnapshotMeta {
                index: self.applied,
                term: self.log.term(self.applied).expect("applied entry is in the log"),
                membership: self.membership_at(self.applied),
                timing: self.timing_at(self.applied),
            };
            self.commands.push(Command::BuildSnapshot(meta));
        }
    }

    // ----- persistence and sending -----

    /// Collects what changed since the last call into one `Persist` command.
    fn issue_persist(&mut self, force: bool) {
        let hard_state = HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.commit(),
        };
        let term_vote_changed = hard_state.term != self.last_persisted_hard_state.term
            || hard_state.vote != self.last_persisted_hard_state.vote;
        let force = force || std::mem::take(&mut self.persist_next);
        if !force
            && !term_vote_changed
            && self.unpersisted_entries.is_empty()
            && self.unpersisted_snapshot.is_none()
        {
            return;
        }
        self.persist_seq_issued += 1;
        let seq = self.persist_seq_issued;
        let persist_hard_state = hard_state != self.last_persisted_hard_state;
        self.last_persisted_hard_state = hard_state;
        self.persist_queue.push_back((seq, self.log.last_index()));
        self.commands.push(Command::Persist {
            seq,
            snapshot: self.unpersisted_snapshot.take(),
            entries: std::mem::take(&mut self.unpersisted_entries),
            hard_state: persist_hard_state.then_some(hard_state),
        });
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        // Anything we say carries our term and, for votes, our vote: both must be
        // durable first.
        let gate = self.term_vote_seq;
        self.send_after(
            gate,
            Message {
                from: self.id,
                to,
                term,
                body,
            },
        );
    }

    /// Sends a message that acknowledges log content: it waits for every persistence
    /// issued so far, including entries not yet handed out.
    fn send_durable(&mut self, to: NodeId, body: MessageBody) {
        let pending = !self.unpersisted_entries.is_empty() || self.unpersisted_snapshot.is_some();
        let gate = self.persist_seq_issued + u64::from(pending);
        let gate = gate.max(self.term_vote_seq);
        self.send_after(
            gate,
            Message {
                from: self.id,
                to,
                term: self.term,
                body,
            },
        );
    }

    fn send_after(&mut self, gate: u64, message: Message) {
        if gate <= self.persist_seq_done {
            self.commands.push(Command::Send(message));
        } else {
            if gate > self.persist_seq_issued {
                // Waits for the next persistence: make sure there is one, even if what
                // it was to carry got superseded (truncated, replaced by a snapshot).
                self.persist_next = true;
            }
            self.held.push_back(HeldMessage { seq: gate, message });
        }
    }
}
