//! Deterministic simulation of whole kuberaft clusters.
//!
//! Each seed builds a 3, 5 or 7 member cluster of real `RaftCore`s and drives it
//! through a virtual network and virtual disks from one seeded RNG: message loss,
//! delay, reordering and duplication; symmetric and one-way partitions that form and
//! heal; crashes that keep only what had been made durable (sometimes a torn prefix
//! of the last write); membership changes, leadership transfers and timing changes in
//! the middle of all that; and clients doing puts, gets and compare-and-sets.
//!
//! Some faults are aimed at the moments where consensus bugs hide: a node whose term
//! or vote changed crashes before that is durable and is back quickly (it must not
//! vote twice in a term); bridge partitions, where two sides that cannot hear each
//! other compete for one node's vote; and periods of leader churn, where each new
//! leader is cut off from the majority (with in-flight messages lost) right after it
//! is elected or commits, so that suffixes of several terms end up on different
//! minorities and later leaders replicate older terms' entries in small batches (the
//! paper's Figure 8). Short election timeouts in some clusters make for more
//! elections.
//!
//! After every step the Raft safety properties are checked (Election Safety, Log
//! Matching, Leader Completeness, State Machine Safety, monotonic commit, and that
//! every committed entry was durable on a quorum). After the faults stop, a leader
//! must emerge and client writes must commit within a bounded time (liveness). The
//! client history is then checked for linearizability.
//!
//! Run any range of seeds:
//! `SIM_SEEDS=N SIM_SEED_START=S cargo test --profile sim -p kuberaft-node --test simulation -- --nocapture`
//! A failure prints the seed, the command that replays it alone, and the trace of
//! the history (`SIM_TRACE=1` prints the trace of passing seeds too).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kuberaft_check::{check_kv_history_with_budget, CheckResult, KvInput, KvOutput, Operation};
use kuberaft_node::raft::{
    Command, ConfChange, Config, DurableState, Entry, EntryPayload, Error, ForwardFailure, HardState, Index,
    Message, MessageBody, NodeId, RaftCore, Role, SnapshotMeta, Term, Timing,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Virtual milliseconds.
type Time = u64;

const TICK_MS: Time = 10;
const KEYS: u8 = 3;
const CLIENT_TIMEOUT_MS: Time = 1_500;

// ----------------------------------------------------------------------------
// The replicated state machine of the simulation: a few integer registers.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KvState {
    values: BTreeMap<u8, u64>,
    applied: Index,
    /// Every client op applied: none may be applied twice (a duplicated or resent
    /// forward appended again would be).
    ops: BTreeSet<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientCommand {
    Put {
        key: u8,
        value: u64,
    },
    Cas {
        key: u8,
        expected: Option<u64>,
        new: u64,
    },
}

fn encode(op_id: u64, command: ClientCommand) -> Bytes {
    let mut out = Vec::with_capacity(27);
    out.extend_from_slice(&op_id.to_le_bytes());
    match command {
        ClientCommand::Put { key, value } => {
            out.extend_from_slice(&[0, key]);
            out.extend_from_slice(&value.to_le_bytes());
        }
        ClientCommand::Cas { key, expected, new } => {
            out.extend_from_slice(&[1, key, u8::from(expected.is_some())]);
            out.extend_from_slice(&expected.unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&new.to_le_bytes());
        }
    }
    Bytes::from(out)
}

fn decode(data: &[u8]) -> (u64, ClientCommand) {
    let op_id = u64::from_le_bytes(data[0..8].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
    match data[8] {
        0 => (
            op_id,
            ClientCommand::Put {
                key: data[9],
                value: u64_at(10),
            },
        ),
        _ => (
            op_id,
            ClientCommand::Cas {
                key: data[9],
                expected: (data[10] == 1).then(|| u64_at(11)),
                new: u64_at(19),
            },
        ),
    }
}

impl KvState {
    /// Applies one committed entry; returns the op id and whether a CAS succeeded.
    fn apply(&mut self, entry: &Entry) -> Option<(u64, bool)> {
        assert_eq!(
            entry.index,
            self.applied + 1,
            "entries are applied in order, without gaps"
        );
        self.applied = entry.index;
        let EntryPayload::Normal(data) = &entry.payload else {
            return None;
        };
        let (op_id, command) = decode(data);
        assert!(
            self.ops.insert(op_id),
            "op {op_id} applied twice (again at index {})",
            entry.index
        );
        Some(match command {
            ClientCommand::Put { key, value } => {
                self.values.insert(key, value);
                (op_id, true)
            }
            ClientCommand::Cas { key, expected, new } => {
                let ok = self.values.get(&key).copied() == expected;
                if ok {
                    self.values.insert(key, new);
                }
                (op_id, ok)
            }
        })
    }
}

// ----------------------------------------------------------------------------
// Virtual disk: what survives a crash.

#[derive(Clone, Debug, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: Option<(SnapshotMeta, Arc<KvState>)>,
    /// Every durable entry. Compaction is only logical here (memory is cheap in a
    /// simulation), which keeps the model of the WAL simple: a write replaces
    /// everything from its first index on.
    entries: BTreeMap<Index, Entry>,
}

#[derive(Clone, Debug)]
struct PendingPersist {
    seq: u64,
    snapshot: Option<SnapshotMeta>,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
}

impl Disk {
    fn write_entries(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let _ = self.entries.split_off(&first.index);
        for entry in entries {
            self.entries.insert(entry.index, entry.clone());
        }
    }

    fn install_snapshot(&mut self, meta: &SnapshotMeta, data: Arc<KvState>) {
        // An installed snapshot replaces the whole log.
        self.entries.clear();
        self.snapshot = Some((meta.clone(), data));
    }

    /// What a restart finds: the snapshot, then the durable entries that continue it.
    fn durable_state(&self) -> DurableState {
        let snapshot = self.snapshot.as_ref().map(|(m, _)| m.clone());
        let base = snapshot.as_ref().map_or(0, |m| m.index);
        // The entries continue the snapshot unless the log holds a different entry at
        // its index (a snapshot built from entries applied before they were durable can
        // be newer than a stale suffix; the storage layer applies the same rule).
        let agrees = match &snapshot {
            None => true,
            Some(meta) => self.entries.get(&meta.index).is_none_or(|e| e.term == meta.term),
        };
        let mut entries = Vec::new();
        if agrees {
            let mut next = base + 1;
            while let Some(entry) = self.entries.get(&next) {
                entries.push(entry.clone());
                next += 1;
            }
            assert!(
                self.entries.range(next..).next().is_none(),
                "durable log has a hole at {next} after the snapshot at {base}"
            );
        }
        let last = entries.last().map_or(base, |e| e.index);
        assert!(
            self.hard_state.commit <= last,
            "durable commit {} is past the durable log ({last})",
            self.hard_state.commit
        );
        DurableState {
            hard_state: self.hard_state,
            snapshot,
            entries,
        }
    }

    /// Recovery at restart: what `durable_state` finds, and a stale suffix that does
    /// not continue the snapshot is discarded for good (left in place, it would come
    /// back to contradict the snapshot once later writes continue the log past it).
    fn recover(&mut self) -> DurableState {
        let state = self.durable_state();
        if let Some((meta, _)) = &self.snapshot {
            if state.entries.is_empty() && self.entries.get(&meta.index).is_some_and(|e| e.term != meta.term)
            {
                self.entries.clear();
            }
        }
        state
    }

    fn holds(&self, index: Index, term: Term) -> bool {
        if self.snapshot.as_ref().is_some_and(|(m, _)| m.index >= index) {
            return true;
        }
        self.entries.get(&index).is_some_and(|e| e.term == term)
    }
}

// ----------------------------------------------------------------------------
// Nodes, clients, network.

struct SimNode {
    id: NodeId,
    epoch: u64,
    core: Option<RaftCore>,
    disk: Disk,
    pending: VecDeque<PendingPersist>,
    last_persist_done_at: Time,
    kv: KvState,
    /// The latest snapshot this node built or installed, to send to followers.
    snapshot: Option<(SnapshotMeta, Arc<KvState>)>,
    /// Snapshots received from a leader, not yet installed by the core.
    received: HashMap<(Index, Term), Arc<KvState>>,
    /// Snapshots installed by the core whose persistence is still in flight.
    installing: HashMap<(Index, Term), Arc<KvState>>,
    /// Client writes proposed here: index -> (op id, term).
    proposals: HashMap<Index, (u64, Term)>,
    /// Reads confirmed by ReadIndex, waiting for the state machine to catch up.
    ready_reads: Vec<(u64, Index)>,
    removed: bool,
    last_commit: Index,
    last_role: Role,
    last_term: Term,
}

impl SimNode {
    fn alive(&self) -> bool {
        self.core.is_some()
    }
}

#[derive(Clone, Debug)]
enum ClientOp {
    Get {
        key: u8,
    },
    Put {
        key: u8,
        value: u64,
    },
    Cas {
        key: u8,
        expected: Option<u64>,
        new: u64,
    },
}

#[derive(Debug)]
struct Client {
    id: u64,
    /// The op in progress: (op id, the node it went to, the history slot).
    current: Option<(u64, NodeId, usize)>,
    leader_hint: Option<NodeId>,
    /// Writes this client saw succeed after the faults stopped.
    writes_after_heal: u64,
}

#[derive(Debug)]
enum EventKind {
    Tick {
        node: NodeId,
        epoch: u64,
    },
    Deliver {
        message: Message,
        snapshot: Option<Arc<KvState>>,
    },
    PersistDone {
        node: NodeId,
        epoch: u64,
        seq: u64,
    },
    SnapshotFailed {
        node: NodeId,
        epoch: u64,
        to: NodeId,
    },
    ClientStart {
        client: usize,
    },
    ClientTimeout {
        client: usize,
        op_id: u64,
    },
    Chaos,
    Restart {
        node: NodeId,
    },
    Crash {
        node: NodeId,
        epoch: u64,
    },
    Heal,
    /// Cut a leader off from the majority (if it is still that incarnation).
    Isolate {
        node: NodeId,
        epoch: u64,
    },
}

struct Event {
    at: Time,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: invert so the earliest event comes first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What the whole cluster has committed and decided so far, to check every node
/// against.
#[derive(Default)]
struct Oracle {
    leaders: HashMap<Term, NodeId>,
    /// (index, term) -> (payload, term of the previous entry).
    seen: HashMap<(Index, Term), (EntryPayload, Option<Term>)>,
    /// The committed log, index 1 at position 0: (entry term, payload, the term of
    /// the leader that committed it).
    committed: Vec<(Term, EntryPayload, Term)>,
}

#[derive(Clone, Debug)]
struct Params {
    nodes: usize,
    loss_percent: u32,
    duplicate_percent: u32,
    delay_max_ms: Time,
    chaos_every_ms: Time,
    min_steps: u64,
    min_chaos_ms: Time,
    snapshot_entries: u64,
    log_tail_entries: u64,
    max_batch_entries: usize,
    max_inflight_msgs: usize,
    pre_vote: bool,
    check_quorum: bool,
    /// One message in this many is followed by a crash of its receiver.
    crash_after_message_odds: u32,
    /// A node whose term or vote changed on a message crashes before that change is
    /// durable one time in this many.
    crash_after_vote_odds: u32,
    /// Percent of crashes followed by a quick restart (a process restarted by its
    /// supervisor rather than a machine that stays down).
    fast_restart_percent: u32,
    /// At a leadership event (elected, appended, committed) the leader is cut off
    /// from the majority (alone or with a minority) one time in this many.
    isolate_leader_odds: u32,
}

struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    now: Time,
    event_seq: u64,
    events: BinaryHeap<Event>,
    nodes: BTreeMap<NodeId, SimNode>,
    next_node_id: NodeId,
    clients: Vec<Client>,
    history: Vec<Operation>,
    next_op_id: u64,
    next_value: u64,
    blocked: BTreeSet<(NodeId, NodeId)>,
    loss_percent: u32,
    duplicate_percent: u32,
    params: Params,
    oracle: Oracle,
    steps: u64,
    healed: bool,
    heal_at: Time,
    /// Until then, leaders are lost soon after they are elected or commit (leader
    /// churn: a flapping network around whoever leads).
    churn_until: Time,
    faults: u64,
    trace: Option<Vec<String>>,
    timing: Timing,
}

macro_rules! trace {
    ($sim:expr, $($arg:tt)*) => {
        if let Some(trace) = $sim.trace.as_mut() {
            let mut line = format!("{:>7}ms ", $sim.now);
            let _ = write!(line, $($arg)*);
            trace.push(line);
        }
    };
}

impl Sim {
    fn new(seed: u64, tracing: bool) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let nodes = [3, 5, 7][(seed % 3) as usize];
        let params = Params {
            nodes,
            loss_percent: rng.gen_range(0..8),
            duplicate_percent: rng.gen_range(0..4),
            delay_max_ms: rng.gen_range(2..12),
            chaos_every_ms: rng.gen_range(80..300),
            min_steps: 2_000,
            min_chaos_ms: rng.gen_range(8_000..20_000),
            snapshot_entries: [0, 8, 30, 200][rng.gen_range(0..4)],
            log_tail_entries: rng.gen_range(0..10),
            // Small batches most of the time: a leader that replicates an older
            // term's suffix over several appends is what exposes commit rules.
            max_batch_entries: match rng.gen_range(0..3) {
                0 => 1,
                1 => rng.gen_range(2..4),
                _ => rng.gen_range(4..64),
            },
            max_inflight_msgs: rng.gen_range(1..8),
            pre_vote: rng.gen_range(0..10) < 8,
            check_quorum: rng.gen_range(0..10) < 8,
            crash_after_message_odds: rng.gen_range(500..3000),
            crash_after_vote_odds: rng.gen_range(3..15),
            fast_restart_percent: rng.gen_range(20..70),
            isolate_leader_odds: rng.gen_range(3..30),
        };
        // Short election timeouts in some clusters: more elections, more often split.
        let timing = if rng.gen_range(0..2) == 0 {
            Timing {
                heartbeat_ticks: 2,
                election_ticks: 10,
            }
        } else {
            Timing {
                heartbeat_ticks: 1,
                election_ticks: rng.gen_range(4..=8),
            }
        };
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            event_seq: 0,
            events: BinaryHeap::new(),
            nodes: BTreeMap::new(),
            next_node_id: nodes as NodeId + 1,
            clients: Vec::new(),
            history: Vec::new(),
            next_op_id: 1,
            next_value: 1,
            blocked: BTreeSet::new(),
            loss_percent: params.loss_percent,
            duplicate_percent: params.duplicate_percent,
            params,
            oracle: Oracle::default(),
            steps: 0,
            healed: false,
            heal_at: 0,
            churn_until: 0,
            faults: 0,
            trace: tracing.then(Vec::new),
            timing,
        };
        let voters: Vec<NodeId> = (1..=sim.params.nodes as NodeId).collect();
        for &id in &voters {
            let core = RaftCore::bootstrap(sim.node_config(id, 0), &voters).expect("bootstrap");
            sim.add_node(id, core);
        }
        for client in 0..4 {
            sim.clients.push(Client {
                id: client as u64,
                current: None,
                leader_hint: None,
                writes_after_heal: 0,
            });
            let at = sim.rng.gen_range(50..300);
            sim.schedule(at, EventKind::ClientStart { client });
        }
        let first_chaos = sim.params.chaos_every_ms;
        sim.schedule(first_chaos, EventKind::Chaos);
        trace!(sim, "start: {:?} {:?}", sim.params, sim.timing);
        sim
    }

    fn node_config(&self, id: NodeId, epoch: u64) -> Config {
        let mut cfg = Config::new(id);
        cfg.timing = self.timing;
        cfg.pre_vote = self.params.pre_vote;
        cfg.check_quorum = self.params.check_quorum;
        cfg.snapshot_entries = self.params.snapshot_entries;
        cfg.log_tail_entries = self.params.log_tail_entries;
        cfg.max_batch_entries = self.params.max_batch_entries;
        cfg.max_inflight_msgs = self.params.max_inflight_msgs;
        cfg.max_uncommitted_entries = 64;
        cfg.seed = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (id << 32) ^ epoch;
        cfg
    }

    fn add_node(&mut self, id: NodeId, core: RaftCore) {
        let node = SimNode {
            id,
            epoch: 0,
            core: Some(core),
            disk: Disk::default(),
            pending: VecDeque::new(),
            last_persist_done_at: 0,
            kv: KvState::default(),
            snapshot: None,
            received: HashMap::new(),
            installing: HashMap::new(),
            proposals: HashMap::new(),
            ready_reads: Vec::new(),
            removed: false,
            last_commit: 0,
            last_role: Role::Follower,
            last_term: 0,
        };
        self.nodes.insert(id, node);
        let phase = self.rng.gen_range(1..=TICK_MS);
        self.schedule(phase, EventKind::Tick { node: id, epoch: 0 });
        self.drain(id);
    }

    fn schedule(&mut self, after: Time, kind: EventKind) {
        self.event_seq += 1;
        self.events.push(Event {
            at: self.now + after,
            seq: self.event_seq,
            kind,
        });
    }

    // ----- the main loop -----

    fn run(&mut self) {
        // Timing may have been raised up to 24 election ticks by the faults.
        let deadline_after_heal: Time = 15_000;
        while let Some(event) = self.events.pop() {
            assert!(event.at >= self.now);
            self.now = event.at;
            self.steps += 1;
            assert!(
                self.steps < 3_000_000 && self.events.len() < 200_000,
                "runaway simulation: {} steps, {} events queued at {}ms ({})",
                self.steps,
                self.events.len(),
                self.now,
                self.describe_cluster()
            );
            self.handle(event.kind);
            if !self.healed && self.steps >= self.params.min_steps && self.now >= self.params.min_chaos_ms {
                self.heal();
            }
            if self.healed {
                if self.converged() {
                    trace!(self, "converged {}ms after healing", self.now - self.heal_at);
                    break;
                }
                assert!(
                    self.now <= self.heal_at + deadline_after_heal,
                    "liveness: no stable leader serving writes {deadline_after_heal}ms after all faults healed ({})",
                    self.describe_cluster()
                );
            }
        }
        assert!(self.faults > 0, "a run without faults tests nothing");
        self.check_linearizable();
    }

    fn handle(&mut self, kind: EventKind) {
        match kind {
            EventKind::Tick { node, epoch } => {
                if self.with_core(node, epoch, |core| core.tick()) {
                    self.schedule(TICK_MS, EventKind::Tick { node, epoch });
                }
            }
            EventKind::Deliver { message, snapshot } => self.deliver(message, snapshot),
            EventKind::PersistDone { node, epoch, seq } => self.persist_done(node, epoch, seq),
            EventKind::SnapshotFailed { node, epoch, to } => {
                self.with_core(node, epoch, |core| core.snapshot_failed(to));
            }
            EventKind::ClientStart { client } => self.client_start(client),
            EventKind::ClientTimeout { client, op_id } => self.client_timeout(client, op_id),
            EventKind::Chaos => {
                if !self.healed {
                    self.chaos();
                    let next = self
                        .rng
                        .gen_range(self.params.chaos_every_ms / 2..=self.params.chaos_every_ms * 2);
                    self.schedule(next, EventKind::Chaos);
                }
            }
            EventKind::Restart { node } => self.restart(node),
            EventKind::Crash { node, epoch } => {
                if !self.healed && self.nodes[&node].epoch == epoch && self.nodes[&node].alive() {
                    self.faults += 1;
                    self.crash(node);
                }
            }
            EventKind::Isolate { node, epoch } => {
                if !self.healed && self.nodes[&node].epoch == epoch && self.nodes[&node].alive() {
                    self.isolate_leader(node);
                }
            }
            EventKind::Heal => {
                self.blocked.clear();
                trace!(self, "partition healed");
            }
        }
    }

    /// Runs `f` on a live node's core (of the given incarnation) and executes what
    /// it asks for. Returns false when the node is down or restarted since.
    fn with_core(&mut self, id: NodeId, epoch: u64, f: impl FnOnce(&mut RaftCore)) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        if node.epoch != epoch {
            return false;
        }
        let Some(core) = node.core.as_mut() else {
            return false;
        };
        f(core);
        self.drain(id);
        true
    }

    fn epoch(&self, id: NodeId) -> u64 {
        self.nodes[&id].epoch
    }

    // ----- executing commands -----

    fn drain(&mut self, id: NodeId) {
        loop {
            let commands = match self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) {
                Some(core) => core.take_commands(),
                None => return,
            };
            if commands.is_empty() {
                break;
            }
            for command in commands {
                if !self.nodes[&id].alive() {
                    return;
                }
                self.execute(id, command);
            }
        }
        self.check_node(id);
    }

    fn execute(&mut self, id: NodeId, command: Command) {
        match command {
            Command::Persist {
                seq,
                snapshot,
                entries,
                hard_state,
            } => {
                self.check_log_matching(id, &entries);
                // Mostly a fast disk, sometimes a slow fsync (which widens the window in
                // which a crash loses what was not yet durable).
                let delay = if self.rng.gen_range(0..10) == 0 {
                    self.rng.gen_range(10..60)
                } else {
                    self.rng.gen_range(1..=4)
                };
                let node = self.nodes.get_mut(&id).expect("node exists");
                let at = (self.now + delay).max(node.last_persist_done_at);
                node.last_persist_done_at = at;
                node.pending.push_back(PendingPersist {
                    seq,
                    snapshot,
                    entries,
                    hard_state,
                });
                let epoch = node.epoch;
                let after = at - self.now;
                self.schedule(after, EventKind::PersistDone { node: id, epoch, seq });
            }
            Command::Send(message) => self.send(message),
            Command::Apply(entries) => {
                for entry in entries {
                    self.apply(id, &entry);
                }
            }
            Command::RestoreSnapshot(meta) => {
                let node = self.nodes.get_mut(&id).expect("node exists");
                let data = node
                    .received
                    .remove(&(meta.index, meta.term))
                    .expect("the core restores only a snapshot the transport received");
                assert_eq!(data.applied, meta.index);
                node.kv = (*data).clone();
                node.snapshot = Some((meta.clone(), data.clone()));
                node.installing.insert((meta.index, meta.term), data);
                node.received.clear();
                trace!(self, "n{id} restored snapshot at {}/{}", meta.index, meta.term);
                self.check_snapshot(&meta);
                self.serve_reads(id);
            }
            Command::BuildSnapshot(meta) => {
                let node = self.nodes.get_mut(&id).expect("node exists");
                assert_eq!(
                    node.kv.applied, meta.index,
                    "snapshot asked for at the applied index"
                );
                let data = Arc::new(node.kv.clone());
                node.snapshot = Some((meta.clone(), data.clone()));
                // Written to its own volume with fsync and rename: durable at once here.
                if node
                    .disk
                    .snapshot
                    .as_ref()
                    .is_none_or(|(m, _)| m.index < meta.index)
                {
                    node.disk.snapshot = Some((meta.clone(), data));
                }
                trace!(self, "n{id} built snapshot at {}/{}", meta.index, meta.term);
                node.core.as_mut().expect("alive").snapshot_built(meta);
            }
            Command::CompactLog { through } => {
                // Logical only on the simulated disk (see `Disk`).
                let snapshot = self.nodes[&id].disk.snapshot.as_ref().map_or(0, |(m, _)| m.index);
                assert!(through <= snapshot, "compaction past the durable snapshot");
            }
            Command::ReadReady { id: op_id, index } => {
                let node = self.nodes.get_mut(&id).expect("node exists");
                node.ready_reads.push((op_id, index));
                self.serve_reads(id);
            }
            Command::ReadFailed { id: op_id, reason } => {
                trace!(self, "n{id} read {op_id} failed: {reason:?}");
                self.client_failed(op_id, None);
            }
            Command::ProposalForwarded { id: op_id, outcome } => {
                trace!(self, "n{id} forwarded op {op_id}: {outcome:?}");
                match outcome {
                    Ok((index, term)) => {
                        let node = self.nodes.get_mut(&id).expect("node exists");
                        // The leader answers before it sends the entry, but the network
                        // here may reorder: an answer after the apply leaves the outcome
                        // unknown (as raft-node's apply thread answers it then).
                        if index > node.kv.applied {
                            node.proposals.insert(index, (op_id, term));
                        } else {
                            self.client_failed(op_id, None);
                        }
                    }
                    // Refused: the leader did not append it.
                    Err(ForwardFailure::Refused(_)) => self.client_failed(op_id, Some(false)),
                    Err(ForwardFailure::Lost) => self.client_failed(op_id, None),
                }
            }
            Command::TransferAborted { target } => {
                trace!(self, "n{id} leadership transfer to n{target} aborted");
            }
        }
    }

    fn send(&mut self, message: Message) {
        let (from, to) = (message.from, message.to);
        let snapshot = if let MessageBody::InstallSnapshot { meta } = &message.body {
            let node = &self.nodes[&from];
            let (held, data) = node
                .snapshot
                .as_ref()
                .expect("leader sends only a snapshot it has");
            assert_eq!(held, meta, "leader sends its latest snapshot");
            Some(data.clone())
        } else {
            None
        };
        let dropped = self.blocked.contains(&(from, to)) || self.rng.gen_range(0..100) < self.loss_percent;
        if dropped {
            if snapshot.is_some() {
                // The transport's stream fails, and it tells the core.
                let epoch = self.epoch(from);
                self.schedule(
                    50,
                    EventKind::SnapshotFailed {
                        node: from,
                        epoch,
                        to,
                    },
                );
            }
            return;
        }
        let copies = if self.rng.gen_range(0..100) < self.duplicate_percent {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.rng.gen_range(1..=self.params.delay_max_ms);
            if self.rng.gen_range(0..50) == 0 {
                delay += self.rng.gen_range(10..60); // a straggler: reordering
            }
            self.schedule(
                delay,
                EventKind::Deliver {
                    message: message.clone(),
                    snapshot: snapshot.clone(),
                },
            );
        }
    }

    fn deliver(&mut self, message: Message, snapshot: Option<Arc<KvState>>) {
        let to = message.to;
        if self.blocked.contains(&(message.from, to)) {
            return;
        }
        let Some(node) = self.nodes.get_mut(&to) else {
            return;
        };
        if !node.alive() {
            return;
        }
        if let (Some(data), MessageBody::InstallSnapshot { meta }) = (snapshot, &message.body) {
            node.received.insert((meta.index, meta.term), data);
        }
        let epoch = node.epoch;
        trace!(
            self,
            "n{} -> n{to} {} t{} {}",
            message.from,
            message.body.kind(),
            message.term,
            brief(&message.body)
        );
        let hard_state = |node: &SimNode| node.core.as_ref().map(|c| (c.term(), c.status().vote));
        let before = hard_state(node);
        self.with_core(to, epoch, |core| core.step(message));
        // Crashes strike at any point, not only on the chaos schedule: right after a
        // node handled a message (voted, appended, ...) is where lost writes hurt.
        // Most of all right after it changed what it must make durable, and above all
        // its term or vote (a voter that forgets its vote can vote twice).
        let Some(node) = self.nodes.get(&to) else {
            return;
        };
        let writing = !node.pending.is_empty();
        let voted = writing && hard_state(node) != before;
        if !self.healed && voted && self.rng.gen_range(0..self.params.crash_after_vote_odds) == 0 {
            self.faults += 1;
            trace!(self, "n{to} crashes with its term or vote in flight");
            self.crash_and_restart(to, true);
            return;
        }
        let odds = if writing {
            self.params.crash_after_message_odds / 10
        } else {
            self.params.crash_after_message_odds
        };
        if !self.healed && self.rng.gen_range(0..odds) == 0 {
            self.faults += 1;
            self.crash(to);
        }
    }

    fn persist_done(&mut self, id: NodeId, epoch: u64, seq: u64) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if node.epoch != epoch || !node.alive() {
            return;
        }
        while node.pending.front().is_some_and(|p| p.seq <= seq) {
            let p = node.pending.pop_front().expect("front");
            if let Some(meta) = &p.snapshot {
                let data = node
                    .installing
                    .remove(&(meta.index, meta.term))
                    .expect("installed snapshot data is held until durable");
                node.disk.install_snapshot(meta, data);
            }
            node.disk.write_entries(&p.entries);
            if let Some(hs) = p.hard_state {
                node.disk.hard_state = hs;
            }
        }
        self.with_core(id, epoch, |core| core.persisted(seq));
    }

    fn apply(&mut self, id: NodeId, entry: &Entry) {
        if !self.nodes[&id].alive() {
            return; // stopped while applying (its own removal)
        }
        self.record_committed(entry.index, entry.term, &entry.payload, id);
        let node = self.nodes.get_mut(&id).expect("node exists");
        let result = node.kv.apply(entry);
        if let EntryPayload::ConfChange(ConfChange::Remove(removed)) = entry.payload {
            self.on_member_removed(removed);
            if removed == id {
                return;
            }
        }
        let node = self.nodes.get_mut(&id).expect("node exists");
        if let Some((op_id, term)) = node.proposals.remove(&entry.index) {
            match result {
                Some((applied_op, ok)) if applied_op == op_id && entry.term == term => {
                    self.client_succeeded(op_id, ok);
                }
                _ => {
                    // Another entry took this index: ours was never committed.
                    self.client_failed(op_id, Some(false));
                }
            }
        }
        self.serve_reads(id);
    }

    fn serve_reads(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let applied = node.kv.applied;
        let mut served = Vec::new();
        node.ready_reads.retain(|&(op_id, index)| {
            if index <= applied {
                served.push(op_id);
                false
            } else {
                true
            }
        });
        for op_id in served {
            let Some((client, slot)) = self.find_op(op_id) else {
                continue;
            };
            let KvInput::Get { key } = &self.history[slot].input else {
                panic!("read id names a write");
            };
            let value = self.nodes[&id]
                .kv
                .values
                .get(&key[0])
                .map(|v| v.to_le_bytes().to_vec());
            self.finish_op(client, slot, KvOutput::Get(value));
        }
    }

    // ----- clients -----

    fn find_op(&self, op_id: u64) -> Option<(usize, usize)> {
        self.clients.iter().enumerate().find_map(|(i, c)| {
            c.current
                .filter(|(id, _, _)| *id == op_id)
                .map(|(_, _, slot)| (i, slot))
        })
    }

    fn pick_node(&mut self, hint: Option<NodeId>) -> Option<NodeId> {
        if let Some(hint) = hint.filter(|h| self.nodes.get(h).is_some_and(|n| n.alive())) {
            if self.rng.gen_range(0..4) != 0 {
                return Some(hint);
            }
        }
        let alive: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.alive() && !n.removed)
            .map(|n| n.id)
            .collect();
        alive.choose(&mut self.rng).copied()
    }

    fn client_start(&mut self, client: usize) {
        if self.clients[client].current.is_some() {
            return;
        }
        let hint = self.clients[client].leader_hint;
        let Some(node) = self.pick_node(hint) else {
            self.schedule(20, EventKind::ClientStart { client });
            return;
        };
        let key = self.rng.gen_range(0..KEYS);
        let op = match self.rng.gen_range(0..10) {
            0..=3 => ClientOp::Get { key },
            4..=6 => {
                self.next_value += 1;
                ClientOp::Put {
                    key,
                    value: self.next_value,
                }
            }
            _ => {
                self.next_value += 1;
                // Expect a value some client wrote recently (or absence), so that some
                // CAS succeed and some fail.
                let expected = if self.rng.gen_range(0..4) == 0 {
                    None
                } else {
                    Some(
                        self.nodes[&node]
                            .kv
                            .values
                            .get(&key)
                            .copied()
                            .unwrap_or(self.next_value - 1),
                    )
                };
                ClientOp::Cas {
                    key,
                    expected,
                    new: self.next_value,
                }
            }
        };
        let op_id = self.next_op_id;
        self.next_op_id += 1;
        let mut outcome: Option<Result<(Index, Term), Error>> = None;
        let is_read = matches!(op, ClientOp::Get { .. });
        let command = match op {
            ClientOp::Get { .. } => None,
            ClientOp::Put { key, value } => Some(ClientCommand::Put { key, value }),
            ClientOp::Cas { key, expected, new } => Some(ClientCommand::Cas { key, expected, new }),
        };
        let input = match op {
            ClientOp::Get { key } => KvInput::Get { key: vec![key] },
            ClientOp::Put { key, value } => KvInput::Put {
                key: vec![key],
                value: value.to_le_bytes().to_vec(),
            },
            ClientOp::Cas { key, expected, new } => KvInput::Cas {
                key: vec![key],
                expected: expected.map(|v| v.to_le_bytes().to_vec()),
                new: new.to_le_bytes().to_vec(),
            },
        };
        // The op is in the history from its call; a synchronous refusal removes it.
        let slot = self.history.len();
        self.history.push(Operation {
            client: self.clients[client].id,
            call: self.now,
            ret: None,
            input,
            output: KvOutput::Unknown,
        });
        self.clients[client].current = Some((op_id, node, slot));
        let node_ref = self.nodes.get_mut(&node).expect("exists");
        let core = node_ref.core.as_mut().expect("alive");
        if is_read {
            core.read_index(op_id);
        } else {
            let data = encode(op_id, command.expect("write"));
            let mut result = core.propose(data.clone());
            // A follower that knows the leader forwards the write to it (as raft-node
            // does); half the time, so clients that retry at the leader stay covered.
            let mut forwarded = false;
            if matches!(result, Err(Error::NotLeader { leader_hint: Some(_) })) && self.rng.gen_bool(0.5) {
                match core.forward_proposal(op_id, data) {
                    Ok(()) => forwarded = true,
                    Err(e) => result = Err(e),
                }
            }
            if forwarded {
                // Answered by `ProposalForwarded`, then by this node's apply.
            } else if let Ok((index, term)) = result {
                node_ref.proposals.insert(index, (op_id, term));
                // A leader lost right after appending leaves a suffix of its term on
                // a minority: the raw material of the paper's Figure 8.
                if !self.healed && self.rng.gen_range(0..30) == 0 {
                    let epoch = node_ref.epoch;
                    let delay = self.rng.gen_range(0..3);
                    self.schedule(delay, EventKind::Crash { node, epoch });
                } else if !self.healed && self.rng.gen_range(0..self.params.isolate_leader_odds * 3) == 0 {
                    // Or cut off from the majority, keeping that suffix.
                    self.isolate_leader(node);
                }
            }
            if !forwarded {
                outcome = Some(result);
            }
        }
        trace!(
            self,
            "client {client} op {op_id} {:?} -> n{node}: {:?}",
            op,
            outcome
        );
        if let Some(Err(e)) = outcome {
            // Refused on the spot: it never happened.
            self.history.truncate(slot);
            self.clients[client].current = None;
            self.clients[client].leader_hint = match e {
                Error::NotLeader { leader_hint } => leader_hint,
                _ => None,
            };
            let retry = self.rng.gen_range(5..30);
            self.schedule(retry, EventKind::ClientStart { client });
            self.drain(node);
            return;
        }
        self.schedule(CLIENT_TIMEOUT_MS, EventKind::ClientTimeout { client, op_id });
        self.drain(node);
    }

    fn finish_op(&mut self, client: usize, slot: usize, output: KvOutput) {
        self.history[slot].ret = Some(self.now);
        let (_, node, _) = self.clients[client].current.take().expect("op in progress");
        self.clients[client].leader_hint = Some(node);
        trace!(
            self,
            "client {client} done: {:?} -> {:?}",
            self.history[slot].input,
            output
        );
        self.history[slot].output = output;
        if self.healed && !matches!(self.history[slot].input, KvInput::Get { .. }) {
            self.clients[client].writes_after_heal += 1;
        }
        let next = self.rng.gen_range(0..20);
        self.schedule(next, EventKind::ClientStart { client });
    }

    fn client_succeeded(&mut self, op_id: u64, ok: bool) {
        let Some((client, slot)) = self.find_op(op_id) else {
            return;
        };
        let output = match self.history[slot].input {
            KvInput::Put { .. } => KvOutput::Put,
            KvInput::Cas { .. } => KvOutput::Cas { succeeded: ok },
            _ => panic!("a write id names a read"),
        };
        self.finish_op(client, slot, output);
    }

    /// The op failed. `took_effect: Some(false)` means it certainly did not happen
    /// (drop it from the history); `None` means it is unknown (a read that failed
    /// never happened either).
    fn client_failed(&mut self, op_id: u64, took_effect: Option<bool>) {
        let Some((client, slot)) = self.find_op(op_id) else {
            return;
        };
        let is_read = matches!(self.history[slot].input, KvInput::Get { .. });
        if is_read || took_effect == Some(false) {
            // Mark as a no-op: never happened. (Removing would shift later slots.)
            self.history[slot].input = KvInput::Get { key: vec![u8::MAX] };
            self.history[slot].output = KvOutput::Unknown;
        }
        self.clients[client].current = None;
        self.clients[client].leader_hint = None;
        let retry = self.rng.gen_range(5..30);
        self.schedule(retry, EventKind::ClientStart { client });
    }

    fn client_timeout(&mut self, client: usize, op_id: u64) {
        if self.clients[client].current.is_some_and(|(id, _, _)| id == op_id) {
            trace!(self, "client {client} op {op_id} timed out");
            // A write's fate is unknown: it stays in the history with no return.
            self.client_failed(op_id, None);
        }
    }

    // ----- faults -----

    fn chaos(&mut self) {
        self.faults += 1;
        let alive: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.alive() && !n.removed)
            .map(|n| n.id)
            .collect();
        let members: Vec<NodeId> = self.nodes.values().filter(|n| !n.removed).map(|n| n.id).collect();
        match self.rng.gen_range(0..140) {
            0..=9 => {
                if let Some(leader) = self.current_leader() {
                    self.crash(leader);
                }
            }
            10..=19 => {
                // Half the time, crash a node with writes in flight: the interesting case.
                let writing: Vec<NodeId> = alive
                    .iter()
                    .copied()
                    .filter(|id| !self.nodes[id].pending.is_empty())
                    .collect();
                let victim = if !writing.is_empty() && self.rng.gen_range(0..2) == 0 {
                    writing.choose(&mut self.rng).copied()
                } else {
                    alive.choose(&mut self.rng).copied()
                };
                if let Some(victim) = victim {
                    self.crash(victim);
                }
            }
            20..=27 if members.len() >= 3 => {
                // A bridge: two sides that cannot hear each other, and one node that
                // hears both (candidates on either side compete for its vote).
                let mut shuffled = members.clone();
                shuffled.shuffle(&mut self.rng);
                let bridge = shuffled.pop().expect("not empty");
                let cut = self.rng.gen_range(1..shuffled.len());
                let (left, right) = shuffled.split_at(cut);
                self.blocked.clear();
                for &a in left {
                    for &b in right {
                        self.blocked.insert((a, b));
                        self.blocked.insert((b, a));
                    }
                }
                trace!(self, "bridge partition {left:?} | n{bridge} | {right:?}");
                let heal = self.rng.gen_range(100..1500);
                self.schedule(heal, EventKind::Heal);
                // Force an election through the bridge now and then.
                if self.rng.gen_range(0..2) == 0 {
                    if let Some(leader) = self.current_leader() {
                        self.crash(leader);
                    }
                }
            }
            20..=34 => {
                // Symmetric partition into two sides.
                let mut shuffled = members.clone();
                shuffled.shuffle(&mut self.rng);
                let cut = self.rng.gen_range(1..shuffled.len().max(2));
                let (left, right) = shuffled.split_at(cut.min(shuffled.len()));
                self.blocked.clear();
                for &a in left {
                    for &b in right {
                        self.blocked.insert((a, b));
                        self.blocked.insert((b, a));
                    }
                }
                trace!(self, "partition {left:?} | {right:?}");
                let heal = self.rng.gen_range(100..1500);
                self.schedule(heal, EventKind::Heal);
            }
            35..=44 => {
                // One-way: `a` cannot hear from `b` (or the reverse).
                if let (Some(&a), Some(&b)) = (members.choose(&mut self.rng), members.choose(&mut self.rng)) {
                    if a != b {
                        self.blocked.insert((b, a));
                        trace!(self, "one-way block n{b} -> n{a}");
                        let heal = self.rng.gen_range(100..1500);
                        self.schedule(heal, EventKind::Heal);
                    }
                }
            }
            45..=54 => {
                self.loss_percent = [0, 1, 5, 15, 30][self.rng.gen_range(0..5)];
                self.duplicate_percent = self.rng.gen_range(0..5);
                trace!(
                    self,
                    "network loss {}% duplication {}%",
                    self.loss_percent,
                    self.duplicate_percent
                );
            }
            55..=74 => self.membership_change(),
            75..=87 => {
                if let Some(leader) = self.current_leader() {
                    let voters: Vec<NodeId> = self.nodes[&leader]
                        .core
                        .as_ref()
                        .expect("alive")
                        .membership()
                        .voters
                        .iter()
                        .copied()
                        .collect();
                    if let Some(&target) = voters.choose(&mut self.rng) {
                        let epoch = self.epoch(leader);
                        let mut result = Ok(());
                        self.with_core(leader, epoch, |core| result = core.transfer_leadership(target));
                        trace!(self, "transfer leadership n{leader} -> n{target}: {result:?}");
                    }
                }
            }
            100.. => {
                let until = self.now + self.rng.gen_range(500..2_000);
                self.churn_until = self.churn_until.max(until);
                trace!(self, "leader churn until {}ms", self.churn_until);
            }
            88..=92 => {
                if let Some(leader) = self.current_leader() {
                    let heartbeat_ticks = self.rng.gen_range(1..=3);
                    let timing = Timing {
                        heartbeat_ticks,
                        election_ticks: heartbeat_ticks * self.rng.gen_range(4..=8),
                    };
                    let epoch = self.epoch(leader);
                    let mut result = Ok((0, 0));
                    self.with_core(leader, epoch, |core| result = core.propose_timing(timing));
                    trace!(self, "n{leader} propose timing {timing:?}: {result:?}");
                }
            }
            _ => {
                // Quiet period: only the ongoing faults.
                self.faults -= 1;
            }
        }
    }

    fn crash(&mut self, id: NodeId) {
        let fast = self.rng.gen_range(0..100) < self.params.fast_restart_percent;
        self.crash_and_restart(id, fast);
    }

    /// Crashes `id`; it restarts on its own (soon when `fast`) unless faults stopped.
    fn crash_and_restart(&mut self, id: NodeId, fast: bool) {
        let node = self.nodes.get_mut(&id).expect("exists");
        // The WAL writes records in order: a crash can leave a prefix of the write in
        // progress (snapshot, then some of its entries; the hard state comes last).
        if let Some(first) = node.pending.front().cloned() {
            if self.rng.gen_range(0..3) == 0 {
                if let Some(meta) = &first.snapshot {
                    let data = node.installing[&(meta.index, meta.term)].clone();
                    node.disk.install_snapshot(meta, data);
                }
                let keep = self.rng.gen_range(0..=first.entries.len());
                node.disk.write_entries(&first.entries[..keep]);
            }
        }
        node.core = None;
        node.epoch += 1;
        node.pending.clear();
        node.kv = KvState::default();
        node.snapshot = None;
        node.received.clear();
        node.installing.clear();
        node.proposals.clear();
        node.ready_reads.clear();
        trace!(self, "n{id} crashed");
        for client in 0..self.clients.len() {
            if let Some((op_id, on, _)) = self.clients[client].current {
                if on == id {
                    self.client_failed(op_id, None);
                }
            }
        }
        if !self.healed {
            let after = if fast {
                self.rng.gen_range(5..40)
            } else {
                self.rng.gen_range(50..2000)
            };
            self.schedule(after, EventKind::Restart { node: id });
        }
    }

    /// Cuts `leader` (and possibly a minority of the members with it) off from the
    /// rest for a short while. Messages already in flight across the cut are lost
    /// too: the leader's latest appends stay on its side.
    fn isolate_leader(&mut self, leader: NodeId) {
        let mut others: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| !n.removed && n.id != leader)
            .map(|n| n.id)
            .collect();
        others.shuffle(&mut self.rng);
        // At most a minority of the members on the leader's side.
        let companions = self.rng.gen_range(0..=others.len() / 2);
        let (with, without) = others.split_at(companions.min(others.len()));
        let side: Vec<NodeId> = std::iter::once(leader).chain(with.iter().copied()).collect();
        for &a in &side {
            for &b in without {
                self.blocked.insert((a, b));
                self.blocked.insert((b, a));
            }
        }
        self.faults += 1;
        trace!(self, "leader n{leader} isolated: {side:?} | {without:?}");
        let heal = if self.now < self.churn_until {
            // Long enough for the rest to elect a leader, often.
            self.rng.gen_range(50..500)
        } else if self.rng.gen_range(0..2) == 0 {
            self.rng.gen_range(20..200)
        } else {
            self.rng.gen_range(200..1000)
        };
        self.schedule(heal, EventKind::Heal);
    }

    fn restart(&mut self, id: NodeId) {
        let epoch = self.epoch(id);
        let cfg = self.node_config(id, epoch);
        let node = self.nodes.get_mut(&id).expect("exists");
        if node.alive() || node.removed {
            return;
        }
        trace!(
            self,
            "n{id} restarting from disk: {:?}",
            self.nodes[&id].disk.hard_state
        );
        let node = self.nodes.get_mut(&id).expect("exists");
        let durable = node.disk.recover();
        let core = RaftCore::restore(cfg, durable).expect("restore");
        node.kv = node
            .disk
            .snapshot
            .as_ref()
            .map(|(_, d)| (**d).clone())
            .unwrap_or_default();
        node.snapshot = node.disk.snapshot.clone();
        node.last_commit = 0;
        node.last_role = Role::Follower;
        node.core = Some(core);
        trace!(self, "n{id} restarted");
        let phase = self.rng.gen_range(1..=TICK_MS);
        self.schedule(phase, EventKind::Tick { node: id, epoch });
        self.drain(id);
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| {
                n.core
                    .as_ref()
                    .filter(|c| c.role() == Role::Leader)
                    .map(|c| (c.term(), n.id))
            })
            .max()
            .map(|(_, id)| id)
    }

    fn membership_change(&mut self) {
        let Some(leader) = self.current_leader() else {
            return;
        };
        let membership = self.nodes[&leader]
            .core
            .as_ref()
            .expect("alive")
            .membership()
            .clone();
        let learners: Vec<NodeId> = membership.learners.iter().copied().collect();
        let members: Vec<NodeId> = membership.members().collect();
        let change = match self.rng.gen_range(0..4) {
            0 | 1 if members.len() < 9 => {
                let id = self.next_node_id;
                if self.rng.gen_range(0..4) == 0 {
                    ConfChange::AddVoter(id)
                } else {
                    ConfChange::AddLearner(id)
                }
            }
            2 if !learners.is_empty() => {
                ConfChange::Promote(*learners.choose(&mut self.rng).expect("not empty"))
            }
            _ if membership.voters.len() > 2 || !learners.is_empty() => {
                ConfChange::Remove(*members.choose(&mut self.rng).expect("not empty"))
            }
            _ => return,
        };
        let epoch = self.epoch(leader);
        let mut result = Ok((0, 0));
        self.with_core(leader, epoch, |core| result = core.propose_conf_change(change));
        trace!(self, "n{leader} propose {change:?}: {result:?}");
        if result.is_ok() {
            if let ConfChange::AddLearner(id) | ConfChange::AddVoter(id) = change {
                self.next_node_id += 1;
                let core = RaftCore::join(self.node_config(id, 0)).expect("join");
                self.add_node(id, core);
            }
        }
    }

    /// A removal was committed: the platform stops the member and deletes its data.
    fn on_member_removed(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get(&id) else {
            return;
        };
        if node.removed {
            return;
        }
        if node.alive() {
            self.crash(id);
        }
        let node = self.nodes.get_mut(&id).expect("exists");
        node.removed = true;
        node.disk = Disk::default();
        trace!(self, "n{id} removed from the cluster and wiped");
    }

    fn heal(&mut self) {
        self.healed = true;
        self.heal_at = self.now;
        self.blocked.clear();
        self.loss_percent = 0;
        self.duplicate_percent = 0;
        trace!(self, "faults stop: healing everything");
        let down: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| !n.alive() && !n.removed)
            .map(|n| n.id)
            .collect();
        for id in down {
            self.restart(id);
        }
        for client in &mut self.clients {
            client.writes_after_heal = 0;
        }
    }

    /// After healing: one leader, every client has had a write succeed since, and
    /// every member has applied everything the leader committed.
    fn converged(&self) -> bool {
        let Some(leader) = self.current_leader() else {
            return false;
        };
        let core = self.nodes[&leader].core.as_ref().expect("alive");
        if self.clients.iter().any(|c| c.writes_after_heal == 0) {
            return false;
        }
        let commit = core.log().commit();
        core.membership().members().all(|id| {
            self.nodes
                .get(&id)
                .and_then(|n| n.core.as_ref())
                .is_some_and(|c| c.log().commit() == commit && c.status().applied == commit)
        })
    }

    fn describe_cluster(&self) -> String {
        let mut out = String::new();
        for node in self.nodes.values() {
            match &node.core {
                Some(core) => {
                    let s = core.status();
                    let _ = write!(
                        out,
                        "n{}: {:?} term {} leader {:?} commit {} applied {} last {} voters {:?} learners {:?}; ",
                        node.id,
                        s.role,
                        s.term,
                        s.leader,
                        s.commit,
                        s.applied,
                        s.last_index,
                        s.membership.voters,
                        s.membership.learners
                    );
                }
                None => {
                    let _ = write!(
                        out,
                        "n{}: down{}; ",
                        node.id,
                        if node.removed { " (removed)" } else { "" }
                    );
                }
            }
        }
        out
    }

    // ----- the safety checks -----

    fn check_log_matching(&mut self, id: NodeId, entries: &[Entry]) {
        let core = self.nodes[&id].core.as_ref().expect("alive");
        for entry in entries {
            let prev_term = core.log().term(entry.index - 1);
            match self.oracle.seen.get(&(entry.index, entry.term)) {
                Some((payload, seen_prev)) => {
                    assert_eq!(
                        payload, &entry.payload,
                        "Log Matching: two different entries at index {} term {} (n{id})",
                        entry.index, entry.term
                    );
                    if let (Some(a), Some(b)) = (seen_prev, prev_term) {
                        assert_eq!(
                            *a, b,
                            "Log Matching: entries {}/{} agree but their predecessors differ (n{id})",
                            entry.index, entry.term
                        );
                    }
                }
                None => {
                    self.oracle
                        .seen
                        .insert((entry.index, entry.term), (entry.payload.clone(), prev_term));
                }
            }
        }
    }

    fn record_committed(&mut self, index: Index, term: Term, payload: &EntryPayload, by: NodeId) {
        let position = (index - 1) as usize;
        match self.oracle.committed.get(position) {
            Some((t, p, _)) => {
                assert!(
                    *t == term && p == payload,
                    "State Machine Safety: n{by} applies {index}/{term} but {index}/{t} was committed"
                );
            }
            None => {
                assert_eq!(
                    position,
                    self.oracle.committed.len(),
                    "n{by} committed {index} while the cluster knows only {} committed entries",
                    self.oracle.committed.len()
                );
                // The first node to apply an entry is the leader that committed it (it
                // applies before any follower can learn the new commit index).
                let commit_term = self.nodes[&by].core.as_ref().map_or(term, |c| c.term());
                self.oracle.committed.push((term, payload.clone(), commit_term));
                // Leader Completeness, as commit advances: every leader of a later term
                // than the one that committed it holds the entry.
                for node in self.nodes.values() {
                    if let Some(core) = node
                        .core
                        .as_ref()
                        .filter(|c| c.role() == Role::Leader && c.term() > commit_term)
                    {
                        if index > core.log().base_index() {
                            assert_eq!(
                                core.log().term(index),
                                Some(term),
                                "Leader Completeness: leader n{} of term {} lacks committed {index}/{term}",
                                node.id,
                                core.term()
                            );
                        }
                    }
                }
            }
        }
    }

    fn check_snapshot(&self, meta: &SnapshotMeta) {
        if let Some((term, _, _)) = self.oracle.committed.get((meta.index - 1) as usize) {
            assert_eq!(
                *term, meta.term,
                "snapshot {}/{} disagrees with the committed log",
                meta.index, meta.term
            );
        }
    }

    fn check_node(&mut self, id: NodeId) {
        let node = self.nodes.get(&id).expect("exists");
        let Some(core) = node.core.as_ref() else {
            return;
        };
        let status = core.status();
        // Election Safety.
        if status.role == Role::Leader {
            let prev = *self.oracle.leaders.entry(status.term).or_insert(id);
            assert_eq!(
                prev, id,
                "Election Safety: n{prev} and n{id} both lead term {}",
                status.term
            );
        }
        // Monotonic commit, and commit within the log.
        assert!(
            status.commit >= node.last_commit,
            "n{id} commit went back from {} to {}",
            node.last_commit,
            status.commit
        );
        assert!(status.applied <= status.commit);
        let became_leader =
            status.role == Role::Leader && (node.last_role != Role::Leader || node.last_term != status.term);
        let commit_advanced = status.commit > node.last_commit;
        // Leader Completeness, at election: the new leader holds every entry committed so far.
        if became_leader {
            trace!(self, "n{id} leads term {}", status.term);
            let core = self.nodes[&id].core.as_ref().expect("alive");
            let base = core.log().base_index();
            for (i, (term, _, commit_term)) in self.oracle.committed.iter().enumerate() {
                let index = i as Index + 1;
                // Entries committed in earlier terms (a leader of an old term may be
                // elected late, after a later term committed something).
                if index > base && *commit_term < status.term {
                    assert_eq!(
                        core.log().term(index),
                        Some(*term),
                        "Leader Completeness: n{id} leads term {} without committed entry {index}/{term}",
                        status.term
                    );
                }
            }
        }
        // Durability: what a leader commits is on the disk of a quorum of its voters.
        if commit_advanced && status.role == Role::Leader {
            let commit = status.commit;
            let term = core.log().term(commit).expect("commit in log");
            let holders = status
                .membership
                .voters
                .iter()
                .filter(|v| self.nodes.get(v).is_some_and(|n| n.disk.holds(commit, term)))
                .count();
            assert!(
                holders >= status.membership.quorum(),
                "n{id} committed {commit}/{term} but only {holders} of {:?} have it on disk",
                status.membership.voters
            );
        }
        // A leader that just committed is the one whose loss tests that what it
        // committed survives (Figure 8 of the paper needs exactly that).
        if commit_advanced && status.role == Role::Leader && !self.healed && self.rng.gen_range(0..40) == 0 {
            let epoch = self.nodes[&id].epoch;
            self.schedule(0, EventKind::Crash { node: id, epoch });
        }
        // Leaders cut off from the majority just as they are elected or commit: what
        // they appended then stays on a minority, for a later leader to finish (or not).
        if (became_leader || commit_advanced) && status.role == Role::Leader && !self.healed {
            if self.now < self.churn_until && (commit_advanced || self.rng.gen_range(0..2) == 0) {
                // At once after a commit (its next appends are lost with it); a
                // little after an election, so that some of its messages get through.
                let epoch = self.nodes[&id].epoch;
                let delay = if commit_advanced {
                    0
                } else {
                    self.rng.gen_range(0..8)
                };
                self.schedule(delay, EventKind::Isolate { node: id, epoch });
            } else if self.rng.gen_range(0..self.params.isolate_leader_odds) == 0 {
                self.isolate_leader(id);
            }
        }
        let node = self.nodes.get_mut(&id).expect("exists");
        node.last_commit = status.commit;
        node.last_role = status.role;
        node.last_term = status.term;
    }

    fn check_linearizable(&self) {
        let ops: Vec<Operation> = self
            .history
            .iter()
            .filter(|op| !matches!(&op.input, KvInput::Get { key } if key[0] == u8::MAX))
            .cloned()
            .collect();
        match check_kv_history_with_budget(&ops, 2_000_000) {
            CheckResult::Linearizable => {}
            CheckResult::Violation { key, explanation } => {
                panic!("linearizability violated on key {key:?}:\n{explanation}")
            }
            CheckResult::Inconclusive { key, reason } => {
                panic!("linearizability check inconclusive on key {key:?}: {reason}")
            }
        }
    }
}

/// The interesting fields of a message, for the trace.
fn brief(body: &MessageBody) -> String {
    match body {
        MessageBody::VoteRequest {
            last_log_index,
            last_log_term,
            ..
        } => format!("last {last_log_index}/{last_log_term}"),
        MessageBody::VoteResponse { granted, .. } => format!("granted {granted}"),
        MessageBody::AppendRequest {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => format!(
            "prev {prev_log_index}/{prev_log_term} entries {} commit {leader_commit}",
            entries.len()
        ),
        MessageBody::AppendResponse {
            index,
            rejected,
            hint_index,
            hint_term,
        } => format!("index {index} rejected {rejected} hint {hint_index}/{hint_term}"),
        MessageBody::Heartbeat {
            leader_commit,
            read_seq,
        } => format!("commit {leader_commit} read {read_seq}"),
        MessageBody::HeartbeatResponse {
            read_seq,
            last_log_index,
        } => format!("read {read_seq} last {last_log_index}"),
        MessageBody::InstallSnapshot { meta } => format!("snapshot {}/{}", meta.index, meta.term),
        MessageBody::ReadIndexRequest { id } => format!("id {id}"),
        MessageBody::ReadIndexResponse { id, index } => format!("id {id} index {index:?}"),
        MessageBody::TimeoutNow => String::new(),
        MessageBody::ProposeRequest { id, data } => format!("id {id} bytes {}", data.len()),
        MessageBody::ProposeResponse { id, outcome } => format!("id {id} {outcome:?}"),
    }
}

// ----------------------------------------------------------------------------
// The harness.

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

struct SeedOutcome {
    steps: u64,
    committed: usize,
    ops: usize,
}

fn run_seed(seed: u64, tracing: bool) -> (Result<SeedOutcome, String>, Vec<String>) {
    let sim = Arc::new(Mutex::new(None::<Sim>));
    let slot = sim.clone();
    let result = catch_unwind(AssertUnwindSafe(move || {
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        *guard = Some(Sim::new(seed, tracing));
        let sim = guard.as_mut().expect("just set");
        sim.run();
        SeedOutcome {
            steps: sim.steps,
            committed: sim.oracle.committed.len(),
            ops: sim.history.len(),
        }
    }));
    let trace = sim
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|s| s.trace.take())
        .unwrap_or_default();
    let result = result.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    });
    (result, trace)
}

#[test]
fn simulated_clusters_stay_safe_and_live_under_faults() {
    // Plain `cargo test` (unoptimised) runs a few; CI runs thousands with `--profile sim`.
    let seeds = env_u64("SIM_SEEDS", 50);
    let start = env_u64("SIM_SEED_START", 0);
    let show_trace = std::env::var("SIM_TRACE").is_ok_and(|v| v == "1");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8);
    let next = AtomicU64::new(start);
    let failures = Mutex::new(Vec::<(u64, String)>::new());
    let total_steps = AtomicU64::new(0);
    let total_committed = AtomicUsize::new(0);
    let total_ops = AtomicUsize::new(0);
    let began = std::time::Instant::now();
    // Quiet the default panic output; failures are reported below with their seed.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, AtomicOrdering::Relaxed);
                if seed >= start + seeds {
                    break;
                }
                let (result, trace) = run_seed(seed, show_trace);
                if show_trace {
                    println!("--- seed {seed} ---\n{}", trace.join("\n"));
                }
                match result {
                    Ok(outcome) => {
                        total_steps.fetch_add(outcome.steps, AtomicOrdering::Relaxed);
                        total_committed.fetch_add(outcome.committed, AtomicOrdering::Relaxed);
                        total_ops.fetch_add(outcome.ops, AtomicOrdering::Relaxed);
                    }
                    Err(message) => failures.lock().unwrap().push((seed, message)),
                }
            });
        }
    });
    std::panic::set_hook(default_hook);
    let failures = failures.into_inner().unwrap();
    println!(
        "simulated {seeds} seeds from {start}: {} steps, {} committed entries, {} client ops, {:.1}s",
        total_steps.load(AtomicOrdering::Relaxed),
        total_committed.load(AtomicOrdering::Relaxed),
        total_ops.load(AtomicOrdering::Relaxed),
        began.elapsed().as_secs_f64()
    );
    if let Some((seed, message)) = failures.iter().min_by_key(|(s, _)| *s) {
        // Replay the first failure with the trace on (the run is deterministic).
        let (_, trace) = run_seed(*seed, true);
        let tail: Vec<&String> = trace.iter().rev().take(150).rev().collect();
        let path = std::env::temp_dir().join(format!("kuberaft-sim-{seed}.trace"));
        let _ = std::fs::write(&path, trace.join("\n"));
        panic!(
            "{} of {seeds} seeds failed: {:?}\nfirst failure, seed {seed}: {message}\n\
             replay: SIM_SEEDS=1 SIM_SEED_START={seed} SIM_TRACE=1 cargo test --profile sim -p kuberaft-node --test simulation -- --nocapture\n\
             full trace: {}\nlast {} trace lines:\n{}",
            failures.len(),
            failures.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            path.display(),
            tail.len(),
            tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        );
    }
}
