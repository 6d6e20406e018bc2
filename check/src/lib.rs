//! Linearizability checking for key-value client histories.
//!
//! # Why
//!
//! kuberaft promises what etcd promises: every read and write behaves as if it took
//! effect at a single instant between the moment the client sent it and the moment the
//! answer came back. The deterministic simulator and the end-to-end tests record what
//! their clients saw as a list of [`Operation`]s and hand it to [`check_kv_history`].
//! If no such ordering exists, the cluster lost or reordered a write, served a stale
//! read, or applied a compare-and-swap twice, and the [`CheckResult::Violation`]
//! explanation shows how far a valid ordering gets and which operation it cannot
//! place, so that a person can debug the failing simulation seed.
//!
//! # Model
//!
//! Every key is an independent register that starts absent. `Put` sets it, `Delete`
//! removes it, `Get` returns it, and `Cas` sets it to `new` if and only if it currently
//! equals `expected` (`None` meaning "absent"). Operation A must be ordered before
//! operation B if and only if `A.ret < B.call` (strictly): equal timestamps mean the
//! two were concurrent.
//!
//! An operation whose output is [`KvOutput::Unknown`] (the client timed out, or
//! crashed) may have taken effect at any instant after its call, or never. Such an
//! operation is treated as one that never returns and whose answer matches anything,
//! and the search may leave it out entirely. An unknown `Get` cannot change the state,
//! so it is dropped up front.
//!
//! # How
//!
//! - **Partitioning by key.** Linearizability is compositional: a history is
//!   linearizable if and only if each per-object sub-history is. Keys are the objects
//!   here, so the history is split by key and each key is searched on its own. This
//!   turns one search over the whole history into many small ones.
//! - **Per key: the Wing & Gong depth-first search as refined by Lowe.** Calls and
//!   returns of the operations with a known outcome form a time-ordered doubly linked
//!   list. The search walks that list: at a call it tries to place the operation next
//!   (the model must accept the recorded output); when placed, the call and its return
//!   are unlinked and the walk restarts from the head. Reaching a return means that
//!   operation was not placed although it had already completed: the search backtracks
//!   by relinking the most recently placed operation and trying the next candidate.
//! - **Memoisation.** A configuration is the set of placed operations (a bitset) plus
//!   the register's value. Reaching a configuration seen before cannot lead anywhere
//!   new, so it is pruned.
//! - **Operations of unknown outcome** are kept out of the linked list (they have no
//!   return to wait for). At each configuration they are tried only after the known
//!   candidates, only if they change the value (placing a no-op is never needed), only
//!   if what follows reads the value (one overwritten by the very next operation could
//!   as well be left out), and identical ones are used in call order. Each of these only
//!   rules out orderings that have an equivalent one with fewer unknown operations, so
//!   no linearization is lost. The memo table also treats a configuration
//!   as seen when the same placed known operations and value were reached before having
//!   used a *subset* of the unknown operations: having more optional operations left
//!   can only help, so the new configuration cannot succeed where the old one failed.
//!   Without that, `k` never-observed timed-out writes multiply the search by `2^k`.
//!
//! The cost per key is bounded by the number of distinct configurations, which grows
//! with the number of *concurrently* pending operations, not with the history length;
//! [`check_kv_history_with_budget`] caps it and answers [`CheckResult::Inconclusive`]
//! rather than guess.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};

/// A key of the store. Raw bytes, as in etcd.
pub type Key = Vec<u8>;
/// A value of the store. Raw bytes, as in etcd.
pub type Value = Vec<u8>;

/// A request as the client issued it: the input the sequential model replays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvInput {
    /// Set `key` to `value`, creating it if absent.
    Put { key: Key, value: Value },
    /// Read `key`.
    Get { key: Key },
    /// Remove `key`; removing an absent key is allowed and changes nothing.
    Delete { key: Key },
    /// If `key` currently holds `expected` (`None`: the key is absent), set it to `new`;
    /// otherwise change nothing. The output says which happened.
    Cas {
        key: Key,
        expected: Option<Value>,
        new: Value,
    },
}

impl KvInput {
    /// The key the request touches: the unit by which a history is partitioned.
    pub fn key(&self) -> &[u8] {
        match self {
            KvInput::Put { key, .. }
            | KvInput::Get { key }
            | KvInput::Delete { key }
            | KvInput::Cas { key, .. } => key,
        }
    }
}

/// What the client learned from the store. The checker compares it with what the
/// sequential model says at the instant the operation is placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOutput {
    /// The put was acknowledged.
    Put,
    /// The value read (`None`: the key was absent).
    Get(Option<Value>),
    /// The delete was acknowledged.
    Delete,
    /// Whether the compare-and-swap found the expected value and wrote.
    Cas { succeeded: bool },
    /// The client never learned the outcome (timeout, crash, lost connection): the
    /// operation may have taken effect at any instant after its call, or never.
    Unknown,
}

/// One client request and its outcome: the unit of a history.
///
/// `call` and `ret` are logical timestamps from one clock shared by all clients (the
/// simulator's virtual time, or a monotonic counter bumped on every send and receive).
/// Only their order matters.
#[derive(Clone, Debug)]
pub struct Operation {
    /// Which client issued it; reported in explanations, not used for ordering.
    pub client: u64,
    /// When the request was sent.
    pub call: u64,
    /// When the answer arrived; `None` if it never did (then `output` must be
    /// [`KvOutput::Unknown`]). With an unknown output a return time (when the client
    /// gave up) is accepted but ignored: the request may still take effect later.
    pub ret: Option<u64>,
    pub input: KvInput,
    pub output: KvOutput,
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// A valid ordering was found for every key.
    Linearizable,
    /// No valid ordering exists for `key`. `explanation` is meant for a person: the
    /// longest valid prefix found and the operation(s) that could not be placed.
    Violation { key: Key, explanation: String },
    /// The search budget ran out on `key` before an ordering was found or ruled out.
    /// Reported only when no key has a definite violation.
    Inconclusive { key: Key, reason: String },
}

impl CheckResult {
    /// True only for [`CheckResult::Linearizable`]; convenient in assertions.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }
}

/// The budget [`check_kv_history`] uses: distinct configurations explored per key.
/// Large enough for the histories the simulator records (a few hundred operations per
/// key, about ten clients) to be decided, small enough that a pathological one gives up
/// after a few seconds and a few hundred megabytes (about 250 MB for a 600-operation
/// key) instead of stalling CI.
pub const DEFAULT_MAX_STATES_PER_KEY: usize = 1_000_000;

/// Checks `ops` against the key-value model with [`DEFAULT_MAX_STATES_PER_KEY`].
///
/// This is the entry point for tests: one call, one verdict, deterministic for a given
/// input. Panics on a malformed history (see [`check_kv_history_with_budget`]).
pub fn check_kv_history(ops: &[Operation]) -> CheckResult {
    check_kv_history_with_budget(ops, DEFAULT_MAX_STATES_PER_KEY)
}

/// Checks `ops` against the key-value model, exploring at most `max_states_per_key`
/// distinct configurations for any one key.
///
/// The budget exists so that a pathological history (hundreds of mutually concurrent
/// operations) cannot stall a CI run: it yields [`CheckResult::Inconclusive`] instead.
/// `Linearizable` is only ever returned with an ordering in hand, and `Violation` only
/// after the search was exhausted. Keys are checked in byte order; the first violating
/// key is reported.
///
/// # Panics
///
/// On a malformed history, which is a bug in the recorder rather than in the system
/// under test: an operation that returns before it is called, an output of the wrong
/// kind for its input (a `Get` answered with `Put`, ...), or a known output without a
/// return time.
pub fn check_kv_history_with_budget(ops: &[Operation], max_states_per_key: usize) -> CheckResult {
    for (index, op) in ops.iter().enumerate() {
        validate(index, op);
    }
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        if matches!(op.input, KvInput::Get { .. }) && op.output == KvOutput::Unknown {
            continue; // A read nobody saw cannot constrain anything.
        }
        by_key.entry(op.input.key()).or_default().push(op);
    }
    let mut inconclusive = None;
    for (key, key_ops) in by_key {
        match KeyHistory::new(key, &key_ops).check(max_states_per_key) {
            KeyOutcome::Linearizable => {}
            KeyOutcome::Violation(explanation) => {
                return CheckResult::Violation {
                    key: key.to_vec(),
                    explanation,
                };
            }
            KeyOutcome::Inconclusive(reason) => {
                inconclusive.get_or_insert(CheckResult::Inconclusive {
                    key: key.to_vec(),
                    reason,
                });
            }
        }
    }
    inconclusive.unwrap_or(CheckResult::Linearizable)
}

fn validate(index: usize, op: &Operation) {
    if let Some(ret) = op.ret {
        assert!(
            ret >= op.call,
            "linearizability checker: malformed history: operation #{index} returns at {ret} \
             before it is called at {}: {op}",
            op.call
        );
    }
    let kinds_match = matches!(
        (&op.input, &op.output),
        (_, KvOutput::Unknown)
            | (KvInput::Put { .. }, KvOutput::Put)
            | (KvInput::Get { .. }, KvOutput::Get(_))
            | (KvInput::Delete { .. }, KvOutput::Delete)
            | (KvInput::Cas { .. }, KvOutput::Cas { .. })
    );
    assert!(
        kinds_match,
        "linearizability checker: malformed history: operation #{index} has an output of \
         the wrong kind for its input: {op}"
    );
    assert!(
        op.ret.is_some() || op.output == KvOutput::Unknown,
        "linearizability checker: malformed history: operation #{index} never returned \
         but has a known output (use KvOutput::Unknown): {op}"
    );
}

// ---------------------------------------------------------------------------------
// Per-key search.

/// A register value, interned: 0 is "absent", `i + 1` is the `i`-th distinct value.
/// Interning keeps the memo table's entries small and comparisons cheap.
type StateId = u64;
const ABSENT: StateId = 0;

/// An operation compiled against the interned values of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ModelOp {
    Put(StateId),
    Delete,
    /// The value observed.
    Get(StateId),
    /// `outcome` is `None` when unknown: then the Cas does whatever the state dictates.
    Cas {
        expected: StateId,
        new: StateId,
        outcome: Option<bool>,
    },
}

impl ModelOp {
    /// Whether the outcome depends on the current value. An unknown-outcome operation
    /// placed right before one that does not (a put or delete) is overwritten unseen,
    /// so such placements are never needed.
    fn reads_state(self) -> bool {
        matches!(self, ModelOp::Get(_) | ModelOp::Cas { .. })
    }

    /// The register after the operation, or `None` if the recorded output is
    /// impossible in state `s`.
    fn apply(self, s: StateId) -> Option<StateId> {
        match self {
            ModelOp::Put(v) => Some(v),
            ModelOp::Delete => Some(ABSENT),
            ModelOp::Get(seen) => (seen == s).then_some(s),
            ModelOp::Cas {
                expected,
                new,
                outcome,
            } => match (s == expected, outcome) {
                (true, Some(true) | None) => Some(new),
                (false, Some(false) | None) => Some(s),
                (true, Some(false)) | (false, Some(true)) => None,
            },
        }
    }
}

#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<&'a [u8], StateId>,
    values: Vec<&'a [u8]>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, value: &'a [u8]) -> StateId {
        let values = &mut self.values;
        *self.ids.entry(value).or_insert_with(|| {
            values.push(value);
            values.len() as StateId
        })
    }

    fn id_opt(&mut self, value: Option<&'a [u8]>) -> StateId {
        value.map_or(ABSENT, |v| self.id(v))
    }
}

const HEAD: usize = 0;

/// The time-ordered calls and returns of the known-outcome operations of one key, as a
/// doubly linked list over indices (node 0 is the head sentinel, the last node the tail
/// sentinel). Unlinking keeps a node's own links, so relinking in reverse order undoes
/// it exactly: that is what makes backtracking cheap.
#[derive(Clone)]
struct EventList {
    time: Vec<u64>,
    op: Vec<usize>,
    is_return: Vec<bool>,
    next: Vec<usize>,
    prev: Vec<usize>,
    return_node: Vec<usize>,
    tail: usize,
}

impl EventList {
    fn new(required: &[&Operation]) -> Self {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * required.len());
        for (i, op) in required.iter().enumerate() {
            let ret = op.ret.expect("known outcomes have a return time");
            events.push((op.call, false, i));
            events.push((ret, true, i));
        }
        // Calls before returns at equal times: equal timestamps mean concurrent.
        events.sort_unstable();
        let tail = events.len() + 1;
        let mut list = EventList {
            time: vec![0; tail + 1],
            op: vec![usize::MAX; tail + 1],
            is_return: vec![false; tail + 1],
            next: (1..=tail + 1).collect(),
            prev: (0..=tail).map(|i| i.saturating_sub(1)).collect(),
            return_node: vec![0; required.len()],
            tail,
        };
        list.time[tail] = u64::MAX;
        list.next[tail] = tail;
        for (slot, &(time, is_return, op)) in events.iter().enumerate() {
            let node = slot + 1;
            list.time[node] = time;
            list.op[node] = op;
            list.is_return[node] = is_return;
            if is_return {
                list.return_node[op] = node;
            }
        }
        list
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    /// Removes a placed operation's call and return.
    fn lift(&mut self, call_node: usize) {
        let ret = self.return_node[self.op[call_node]];
        self.unlink(call_node);
        self.unlink(ret);
    }

    /// Undoes the matching [`EventList::lift`]; must be called in LIFO order.
    fn unlift(&mut self, call_node: usize) {
        let ret = self.return_node[self.op[call_node]];
        self.relink(ret);
        self.relink(call_node);
    }
}

fn get_bit(bits: &[u64], i: usize) -> bool {
    (bits[i / 64] >> (i % 64)) & 1 == 1
}

fn set_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn clear_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] &= !(1 << (i % 64));
}

fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

struct BudgetExhausted;

/// The memo table. Keyed by (placed known operations, value); each entry lists the sets
/// of unknown-outcome operations already used when that key was reached. A new
/// configuration is redundant if one of those sets is a subset of its own.
struct Visited {
    seen: HashMap<Box<[u64]>, Vec<Box<[u64]>>>,
    entered: usize,
    budget: usize,
}

impl Visited {
    fn new(budget: usize) -> Self {
        Visited {
            seen: HashMap::new(),
            entered: 0,
            budget,
        }
    }

    /// Records a configuration about to be explored. `Ok(false)` if it is redundant.
    fn enter(&mut self, known: &[u64], optional: &[u64]) -> Result<bool, BudgetExhausted> {
        if let Some(used_sets) = self.seen.get_mut(known) {
            if used_sets.iter().any(|used| is_subset(used, optional)) {
                return Ok(false);
            }
            if self.entered >= self.budget {
                return Err(BudgetExhausted);
            }
            // Entries that the new one dominates can never prune anything it would not.
            used_sets.retain(|used| !is_subset(optional, used));
            used_sets.push(optional.into());
        } else {
            if self.entered >= self.budget {
                return Err(BudgetExhausted);
            }
            self.seen.insert(known.into(), vec![optional.into()]);
        }
        self.entered += 1;
        Ok(true)
    }
}

/// How the search got from one configuration to the next.
#[derive(Clone, Copy)]
enum Move {
    /// Placed the known-outcome operation whose call is this list node.
    Known { call_node: usize },
    /// Placed unknown-outcome operation `index`, while the first pending return was
    /// the list node `limit`.
    Optional { index: usize, limit: usize },
}

struct Frame {
    placed: Move,
    state_before: StateId,
}

/// Where the search resumes.
enum Cursor {
    /// Walking the event list at this node.
    List(usize),
    /// Known candidates exhausted; trying unknown-outcome operations from `from` on,
    /// among those called no later than the time of list node `limit`.
    Optional { from: usize, limit: usize },
}

#[derive(Clone, Copy)]
enum Placed {
    Known(usize),
    Optional(usize),
}

/// A snapshot of the deepest point the search reached, for the explanation: the most
/// known-outcome operations placed, and among those the fewest unknown-outcome ones
/// (an unknown write placed just before giving up only muddies the story).
struct DeadEnd {
    known_placed: usize,
    optional_placed: usize,
    /// Each placed operation with the value right after it.
    prefix: Vec<(Placed, StateId)>,
    state: StateId,
    /// The known operation whose return was reached without placing it.
    blocking: Option<usize>,
    candidates_known: Vec<usize>,
    candidates_optional: Vec<usize>,
}

enum KeyOutcome {
    Linearizable,
    Violation(String),
    Inconclusive(String),
}

/// One key's sub-history, compiled for the search.
struct KeyHistory<'a> {
    key: &'a [u8],
    values: Vec<&'a [u8]>,
    known: Vec<&'a Operation>,
    known_model: Vec<ModelOp>,
    /// Unknown-outcome operations, sorted by call time.
    optional: Vec<&'a Operation>,
    optional_model: Vec<ModelOp>,
    /// The previous operation in `optional` with the same effect: interchangeable ones
    /// are placed in call order, so that the search does not try every permutation.
    optional_twin: Vec<Option<usize>>,
    events: EventList,
}

impl<'a> KeyHistory<'a> {
    fn new(key: &'a [u8], ops: &[&'a Operation]) -> Self {
        let mut interner = Interner::default();
        let mut known = Vec::new();
        let mut optional = Vec::new();
        for &op in ops {
            if op.output == KvOutput::Unknown {
                optional.push(op);
            } else {
                known.push(op);
            }
        }
        optional.sort_by_key(|op| op.call);
        let known_model: Vec<ModelOp> = known.iter().map(|op| compile(op, &mut interner)).collect();
        let optional_model: Vec<ModelOp> = optional.iter().map(|op| compile(op, &mut interner)).collect();
        let mut last_with_effect: HashMap<ModelOp, usize> = HashMap::new();
        let optional_twin = optional_model
            .iter()
            .enumerate()
            .map(|(i, m)| last_with_effect.insert(*m, i))
            .collect();
        let events = EventList::new(&known);
        KeyHistory {
            key,
            values: interner.values,
            known,
            known_model,
            optional,
            optional_model,
            optional_twin,
            events,
        }
    }

    fn check(mut self, budget: usize) -> KeyOutcome {
        let n_known = self.known.len();
        if n_known == 0 {
            return KeyOutcome::Linearizable; // Place nothing: every unknown op "never happened".
        }
        let words = n_known.div_ceil(64);
        // The memo key, as one slice: the placed known operations, the value, and
        // whether the last placed operation had an unknown outcome (which restricts
        // what may follow, so it is part of the configuration).
        let mut config = vec![0u64; words + 2];
        let flag = words + 1;
        let mut optional_bits = vec![0u64; self.optional.len().div_ceil(64)];
        let mut state = ABSENT;
        let mut remaining = n_known;
        let mut frames: Vec<Frame> = Vec::new();
        let mut visited = Visited::new(budget);
        let mut deepest: Option<DeadEnd> = None;
        let mut cursor = Cursor::List(self.events.next[HEAD]);
        loop {
            match cursor {
                Cursor::List(node) => {
                    if node == self.events.tail || self.events.is_return[node] {
                        cursor = Cursor::Optional { from: 0, limit: node };
                        continue;
                    }
                    let op = self.events.op[node];
                    let after_unknown = config[flag] == 1;
                    let next_state = self.known_model[op].apply(state);
                    let allowed = !after_unknown || self.known_model[op].reads_state();
                    if let (true, Some(next_state)) = (allowed, next_state) {
                        set_bit(&mut config, op);
                        config[words] = next_state;
                        config[flag] = 0;
                        match visited.enter(&config, &optional_bits) {
                            Err(BudgetExhausted) => return self.inconclusive(budget),
                            Ok(true) => {
                                frames.push(Frame {
                                    placed: Move::Known { call_node: node },
                                    state_before: state,
                                });
                                state = next_state;
                                remaining -= 1;
                                if remaining == 0 {
                                    return KeyOutcome::Linearizable;
                                }
                                self.events.lift(node);
                                cursor = Cursor::List(self.events.next[HEAD]);
                                continue;
                            }
                            Ok(false) => {
                                clear_bit(&mut config, op);
                                config[words] = state;
                                config[flag] = u64::from(after_unknown);
                            }
                        }
                    }
                    cursor = Cursor::List(self.events.next[node]);
                }
                Cursor::Optional { from, limit } => {
                    let limit_time = self.events.time[limit];
                    let after_unknown = config[flag] == 1;
                    let mut advanced = false;
                    let mut i = from;
                    while i < self.optional.len() && self.optional[i].call <= limit_time {
                        let usable = !get_bit(&optional_bits, i)
                            && (!after_unknown || self.optional_model[i].reads_state())
                            && self.optional_twin[i].is_none_or(|t| get_bit(&optional_bits, t));
                        let next_state = self.optional_model[i].apply(state);
                        if let (true, Some(next_state)) = (usable, next_state) {
                            // Placing a no-op is never needed: leaving it out is allowed.
                            if next_state != state {
                                set_bit(&mut optional_bits, i);
                                config[words] = next_state;
                                config[flag] = 1;
                                match visited.enter(&config, &optional_bits) {
                                    Err(BudgetExhausted) => return self.inconclusive(budget),
                                    Ok(true) => {
                                        frames.push(Frame {
                                            placed: Move::Optional { index: i, limit },
                                            state_before: state,
                                        });
                                        state = next_state;
                                        advanced = true;
                                        break;
                                    }
                                    Ok(false) => {
                                        clear_bit(&mut optional_bits, i);
                                        config[words] = state;
                                        config[flag] = u64::from(after_unknown);
                                    }
                                }
                            }
                        }
                        i += 1;
                    }
                    if advanced {
                        cursor = Cursor::List(self.events.next[HEAD]);
                        continue;
                    }
                    // Dead end: every candidate was tried from this configuration.
                    let depth = n_known - remaining;
                    let optional_placed = frames.len() - depth;
                    let deeper = deepest
                        .as_ref()
                        .is_none_or(|d| (depth, d.optional_placed) > (d.known_placed, optional_placed));
                    if deeper {
                        deepest = Some(self.dead_end(&frames, state, limit, &optional_bits, depth));
                    }
                    let Some(frame) = frames.pop() else {
                        let dead_end = deepest.expect("a dead end was just recorded");
                        return KeyOutcome::Violation(self.explain(&dead_end));
                    };
                    state = frame.state_before;
                    config[words] = state;
                    config[flag] = u64::from(
                        frames
                            .last()
                            .is_some_and(|f| matches!(f.placed, Move::Optional { .. })),
                    );
                    cursor = match frame.placed {
                        Move::Known { call_node } => {
                            clear_bit(&mut config, self.events.op[call_node]);
                            remaining += 1;
                            self.events.unlift(call_node);
                            Cursor::List(self.events.next[call_node])
                        }
                        Move::Optional { index, limit } => {
                            clear_bit(&mut optional_bits, index);
                            Cursor::Optional {
                                from: index + 1,
                                limit,
                            }
                        }
                    };
                }
            }
        }
    }

    fn dead_end(
        &self,
        frames: &[Frame],
        state: StateId,
        limit: usize,
        optional_bits: &[u64],
        known_placed: usize,
    ) -> DeadEnd {
        let prefix = frames
            .iter()
            .enumerate()
            .map(|(i, frame)| {
                let after = frames.get(i + 1).map_or(state, |next| next.state_before);
                let placed = match frame.placed {
                    Move::Known { call_node } => Placed::Known(self.events.op[call_node]),
                    Move::Optional { index, .. } => Placed::Optional(index),
                };
                (placed, after)
            })
            .collect();
        // `limit` is the first pending return, so every list node before it is a call.
        let mut candidates_known = Vec::new();
        let mut node = self.events.next[HEAD];
        while node != limit && node != self.events.tail {
            candidates_known.push(self.events.op[node]);
            node = self.events.next[node];
        }
        let limit_time = self.events.time[limit];
        let candidates_optional = (0..self.optional.len())
            .take_while(|&i| self.optional[i].call <= limit_time)
            .filter(|&i| !get_bit(optional_bits, i))
            .collect();
        DeadEnd {
            known_placed,
            optional_placed: frames.len() - known_placed,
            prefix,
            state,
            blocking: (limit != self.events.tail).then(|| self.events.op[limit]),
            candidates_known,
            candidates_optional,
        }
    }

    fn inconclusive(&self, budget: usize) -> KeyOutcome {
        KeyOutcome::Inconclusive(format!(
            "key {}: gave up after exploring {budget} distinct partial orderings (the budget) \
             of {} operations with a known outcome and {} with an unknown outcome; the history \
             may or may not be linearizable. Raise the budget, or record shorter or less \
             concurrent histories.",
            ShowBytes(self.key),
            self.known.len(),
            self.optional.len()
        ))
    }

    fn show_state(&self, s: StateId) -> String {
        match s {
            ABSENT => "absent".to_string(),
            v => ShowBytes(self.values[(v - 1) as usize]).to_string(),
        }
    }

    fn explain(&self, dead: &DeadEnd) -> String {
        const MAX_PREFIX_LINES: usize = 100;
        const MAX_CANDIDATE_LINES: usize = 20;
        let key = ShowBytes(self.key);
        let mut s = String::new();
        let unknown_note = match self.optional.len() {
            0 => String::new(),
            n => format!(", with or without any of its {n} of unknown outcome,"),
        };
        let _ = writeln!(
            s,
            "key {key}: not linearizable. No order of its {} operations with a known \
             outcome{unknown_note} respects real time and replays correctly from an absent key.",
            self.known.len(),
        );
        let _ = writeln!(
            s,
            "Longest linearizable prefix found ({} of the {} known-outcome operations placed), \
             with the value after each step:",
            dead.known_placed,
            self.known.len()
        );
        if dead.prefix.is_empty() {
            let _ = writeln!(s, "  (empty: no operation can even be placed first)");
        }
        let skip = dead.prefix.len().saturating_sub(MAX_PREFIX_LINES);
        if skip > 0 {
            let _ = writeln!(s, "  ... {skip} earlier steps omitted ...");
        }
        for (step, &(placed, after)) in dead.prefix.iter().enumerate().skip(skip) {
            let (op, note) = match placed {
                Placed::Known(i) => (self.known[i], ""),
                Placed::Optional(i) => (self.optional[i], " (assumed to take effect here)"),
            };
            let _ = writeln!(s, "  {:>4}. {op}{note}  => {}", step + 1, self.show_state(after));
        }
        let state = self.show_state(dead.state);
        let _ = writeln!(s, "After that prefix the key is {state}.");
        if let Some(b) = dead.blocking {
            let op = self.known[b];
            let why = if self.known_model[b].apply(dead.state).is_none() {
                format!("its result is impossible when the key is {state}")
            } else {
                "nothing that must follow it could then be placed".to_string()
            };
            let _ = writeln!(
                s,
                "Could not place: {op}\n  It returned at {}, so it must come before anything \
                 called later, but {why}; no other order of the operations pending at that \
                 point gets further.",
                op.ret.unwrap_or(u64::MAX)
            );
        }
        let verdict = |model: ModelOp| match model.apply(dead.state) {
            None => format!("impossible when the key is {state}"),
            Some(_) => "possible, but a dead end".to_string(),
        };
        let others: Vec<String> = dead
            .candidates_known
            .iter()
            .filter(|&&i| Some(i) != dead.blocking)
            .map(|&i| format!("{}: {}", self.known[i], verdict(self.known_model[i])))
            .chain(
                dead.candidates_optional
                    .iter()
                    .map(|&i| format!("{}: {}", self.optional[i], verdict(self.optional_model[i]))),
            )
            .collect();
        if !others.is_empty() {
            let _ = writeln!(s, "Other operations that could have come next there (all tried):");
        }
        for line in others.iter().take(MAX_CANDIDATE_LINES) {
            let _ = writeln!(s, "  - {line}");
        }
        if others.len() > MAX_CANDIDATE_LINES {
            let _ = writeln!(s, "  ... and {} more", others.len() - MAX_CANDIDATE_LINES);
        }
        s
    }
}

fn compile<'a>(op: &'a Operation, interner: &mut Interner<'a>) -> ModelOp {
    match (&op.input, &op.output) {
        (KvInput::Put { value, .. }, _) => ModelOp::Put(interner.id(value)),
        (KvInput::Delete { .. }, _) => ModelOp::Delete,
        (KvInput::Get { .. }, KvOutput::Get(seen)) => ModelOp::Get(interner.id_opt(seen.as_deref())),
        (KvInput::Get { .. }, _) => unreachable!("reads with an unknown outcome are dropped"),
        (KvInput::Cas { expected, new, .. }, output) => ModelOp::Cas {
            expected: interner.id_opt(expected.as_deref()),
            new: interner.id(new),
            outcome: match output {
                KvOutput::Cas { succeeded } => Some(*succeeded),
                _ => None,
            },
        },
    }
}

// ---------------------------------------------------------------------------------
// Display, for explanations and panics.

/// Bytes as a quoted string when printable ASCII, as hex otherwise.
struct ShowBytes<'a>(&'a [u8]);

impl fmt::Display for ShowBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|b| (0x20..0x7f).contains(b)) {
            let text: String = self.0.iter().map(|&b| char::from(b)).collect();
            write!(f, "{text:?}")
        } else {
            f.write_str("0x")?;
            self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
    }
}

fn show_opt(value: Option<&[u8]>) -> String {
    value.map_or_else(|| "absent".to_string(), |v| ShowBytes(v).to_string())
}

impl fmt::Display for KvInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvInput::Put { key, value } => {
                write!(f, "put {} = {}", ShowBytes(key), ShowBytes(value))
            }
            KvInput::Get { key } => write!(f, "get {}", ShowBytes(key)),
            KvInput::Delete { key } => write!(f, "delete {}", ShowBytes(key)),
            KvInput::Cas { key, expected, new } => write!(
                f,
                "cas {} from {} to {}",
                ShowBytes(key),
                show_opt(expected.as_deref()),
                ShowBytes(new)
            ),
        }
    }
}

impl fmt::Display for KvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOutput::Put | KvOutput::Delete => f.write_str("ok"),
            KvOutput::Get(value) => f.write_str(&show_opt(value.as_deref())),
            KvOutput::Cas { succeeded: true } => f.write_str("succeeded"),
            KvOutput::Cas { succeeded: false } => f.write_str("failed"),
            KvOutput::Unknown => f.write_str("unknown"),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} [call {}, ", self.client, self.call)?;
        match self.ret {
            Some(ret) => write!(f, "ret {ret}]")?,
            None => f.write_str("never returned]")?,
        }
        write!(f, " {} -> {}", self.input, self.output)
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable => f.write_str("linearizable"),
            CheckResult::Violation { explanation, .. } => f.write_str(explanation),
            CheckResult::Inconclusive { reason, .. } => f.write_str(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn put(client: u64, call: u64, ret: u64, key: &str, value: &str) -> Operation {
        Operation {
            client,
            call,
            ret: Some(ret),
            input: KvInput::Put {
                key: b(key),
                value: b(value),
            },
            output: KvOutput::Put,
        }
    }

    fn get(client: u64, call: u64, ret: u64, key: &str, seen: Option<&str>) -> Operation {
        Operation {
            client,
            call,
            ret: Some(ret),
            input: KvInput::Get { key: b(key) },
            output: KvOutput::Get(seen.map(b)),
        }
    }

    fn del(client: u64, call: u64, ret: u64, key: &str) -> Operation {
        Operation {
            client,
            call,
            ret: Some(ret),
            input: KvInput::Delete { key: b(key) },
            output: KvOutput::Delete,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn cas(
        client: u64,
        call: u64,
        ret: u64,
        key: &str,
        expected: Option<&str>,
        new: &str,
        succeeded: bool,
    ) -> Operation {
        Operation {
            client,
            call,
            ret: Some(ret),
            input: KvInput::Cas {
                key: b(key),
                expected: expected.map(b),
                new: b(new),
            },
            output: KvOutput::Cas { succeeded },
        }
    }

    /// The same request, but the client never learned the outcome.
    fn unknown(mut op: Operation, ret: Option<u64>) -> Operation {
        op.ret = ret;
        op.output = KvOutput::Unknown;
        op
    }

    fn assert_linearizable(ops: &[Operation]) {
        let result = check_kv_history(ops);
        assert!(result.is_linearizable(), "expected linearizable, got: {result}");
    }

    /// Asserts a violation on `key` and returns the explanation.
    fn assert_violation(ops: &[Operation], key: &str) -> String {
        match check_kv_history(ops) {
            CheckResult::Violation {
                key: bad,
                explanation,
            } => {
                assert_eq!(bad, b(key), "violation on the wrong key: {explanation}");
                explanation
            }
            other => panic!("expected a violation on {key:?}, got: {other:?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&[]);
    }

    #[test]
    fn sequential_valid_history() {
        assert_linearizable(&[
            get(1, 0, 1, "x", None),
            put(1, 2, 3, "x", "a"),
            get(2, 4, 5, "x", Some("a")),
            put(2, 6, 7, "x", "b"),
            get(1, 8, 9, "x", Some("b")),
            del(1, 10, 11, "x"),
            get(2, 12, 13, "x", None),
        ]);
    }

    #[test]
    fn stale_read_after_completed_put_is_a_violation() {
        assert_violation(
            &[
                put(1, 0, 1, "x", "a"),
                put(1, 2, 3, "x", "b"),
                get(2, 4, 5, "x", Some("a")),
            ],
            "x",
        );
        // Reading "absent" after a completed put is just as stale.
        assert_violation(&[put(1, 0, 1, "x", "a"), get(2, 2, 3, "x", None)], "x");
    }

    #[test]
    fn concurrent_puts_and_a_read_that_may_see_either() {
        for seen in ["a", "b"] {
            assert_linearizable(&[
                put(1, 0, 10, "x", "a"),
                put(2, 1, 9, "x", "b"),
                get(3, 11, 12, "x", Some(seen)),
            ]);
        }
        // A read concurrent with both may also still see nothing.
        assert_linearizable(&[
            put(1, 0, 10, "x", "a"),
            put(2, 1, 9, "x", "b"),
            get(3, 2, 8, "x", None),
        ]);
        // But once both puts are done, later reads cannot flip-flop.
        assert_violation(
            &[
                put(1, 0, 10, "x", "a"),
                put(2, 1, 9, "x", "b"),
                get(3, 11, 12, "x", Some("a")),
                get(3, 13, 14, "x", Some("b")),
            ],
            "x",
        );
    }

    #[test]
    fn read_concurrent_with_a_put_may_see_old_or_new_but_not_go_back() {
        let base = [put(1, 0, 1, "x", "a"), put(1, 2, 10, "x", "b")];
        for seen in ["a", "b"] {
            let mut ops = base.to_vec();
            ops.push(get(2, 3, 4, "x", Some(seen)));
            assert_linearizable(&ops);
        }
        // Once one read saw the new value, a later read cannot see the old one.
        let mut ops = base.to_vec();
        ops.push(get(2, 3, 4, "x", Some("b")));
        ops.push(get(3, 5, 6, "x", Some("a")));
        assert_violation(&ops, "x");
    }

    #[test]
    fn read_of_a_value_before_its_put_was_called_is_a_violation() {
        let explanation = assert_violation(&[get(1, 0, 1, "x", Some("a")), put(2, 2, 3, "x", "a")], "x");
        assert!(explanation.contains("empty"), "{explanation}");
    }

    #[test]
    fn equal_timestamps_mean_concurrent() {
        // The read is called at the instant the put returns: they overlap, so the read
        // may be ordered first and see the old value.
        assert_linearizable(&[put(1, 0, 5, "x", "a"), get(2, 5, 6, "x", None)]);
        // One tick later it must see the put.
        assert_violation(&[put(1, 0, 5, "x", "a"), get(2, 6, 7, "x", None)], "x");
        // Instantaneous operations (call == ret) are fine.
        assert_linearizable(&[put(1, 3, 3, "x", "a"), get(2, 3, 3, "x", Some("a"))]);
    }

    #[test]
    fn delete_semantics() {
        assert_linearizable(&[
            del(1, 0, 1, "x"),
            put(1, 2, 3, "x", "a"),
            del(2, 4, 5, "x"),
            get(1, 6, 7, "x", None),
            del(2, 8, 9, "x"),
        ]);
        assert_violation(
            &[
                put(1, 0, 1, "x", "a"),
                del(2, 2, 3, "x"),
                get(1, 4, 5, "x", Some("a")),
            ],
            "x",
        );
    }

    #[test]
    fn cas_success_and_failure_semantics() {
        assert_linearizable(&[
            cas(1, 0, 1, "x", None, "a", true),       // absent -> a
            cas(2, 2, 3, "x", None, "b", false),      // not absent any more
            cas(1, 4, 5, "x", Some("b"), "c", false), // holds a, not b
            cas(2, 6, 7, "x", Some("a"), "c", true),  // a -> c
            get(1, 8, 9, "x", Some("c")),
            del(1, 10, 11, "x"),
            cas(2, 12, 13, "x", Some("c"), "d", false), // absent again
            cas(2, 14, 15, "x", None, "d", true),
            get(1, 16, 17, "x", Some("d")),
        ]);
        // A failed Cas must not write.
        assert_violation(
            &[
                cas(1, 0, 1, "x", Some("a"), "b", false),
                get(1, 2, 3, "x", Some("b")),
            ],
            "x",
        );
        // Success claimed although the key held something else.
        assert_violation(
            &[put(1, 0, 1, "x", "z"), cas(2, 2, 3, "x", Some("a"), "b", true)],
            "x",
        );
        // Failure claimed although the key held exactly the expected value.
        assert_violation(
            &[put(1, 0, 1, "x", "a"), cas(2, 2, 3, "x", Some("a"), "b", false)],
            "x",
        );
        // Concurrent with a put, a Cas may see the value before or after it.
        assert_linearizable(&[
            put(1, 0, 1, "x", "a"),
            put(1, 2, 9, "x", "b"),
            cas(2, 3, 8, "x", Some("a"), "c", true),
            get(3, 10, 11, "x", Some("b")),
        ]);
    }

    #[test]
    fn lost_update_with_cas_is_a_violation() {
        // Two increments from the same starting value both "succeed": one update was lost.
        let explanation = assert_violation(
            &[
                put(1, 0, 1, "counter", "0"),
                cas(2, 2, 10, "counter", Some("0"), "1", true),
                cas(3, 3, 11, "counter", Some("0"), "1", true),
            ],
            "counter",
        );
        assert!(explanation.contains("client 3") || explanation.contains("client 2"));
        // One winner and one loser is fine, in either order.
        for winner in [2, 3] {
            assert_linearizable(&[
                put(1, 0, 1, "counter", "0"),
                cas(2, 2, 10, "counter", Some("0"), "1", winner == 2),
                cas(3, 3, 11, "counter", Some("0"), "1", winner == 3),
                get(1, 12, 13, "counter", Some("1")),
            ]);
        }
    }

    #[test]
    fn unknown_put_that_took_effect() {
        // Client 1 timed out, and never heard back at all; the write landed later.
        for ret in [None, Some(3)] {
            assert_linearizable(&[
                unknown(put(1, 0, 0, "x", "a"), ret),
                get(2, 1, 2, "x", None),
                get(2, 20, 21, "x", Some("a")),
            ]);
        }
        // It may even take effect long after the client gave up, after a later write.
        assert_linearizable(&[
            unknown(put(1, 0, 0, "x", "a"), Some(2)),
            put(2, 5, 6, "x", "b"),
            get(2, 7, 8, "x", Some("b")),
            get(2, 9, 10, "x", Some("a")),
        ]);
    }

    #[test]
    fn unknown_put_that_did_not_take_effect() {
        assert_linearizable(&[
            unknown(put(1, 0, 0, "x", "a"), None),
            get(2, 1, 2, "x", None),
            put(2, 3, 4, "x", "b"),
            get(3, 50, 51, "x", Some("b")),
        ]);
    }

    #[test]
    fn unknown_put_is_not_visible_before_its_call_and_applies_at_most_once() {
        assert_violation(
            &[
                get(2, 0, 1, "x", Some("a")),
                unknown(put(1, 2, 0, "x", "a"), None),
            ],
            "x",
        );
        assert_violation(
            &[
                unknown(put(1, 0, 0, "x", "a"), None),
                get(2, 1, 2, "x", Some("a")),
                put(2, 3, 4, "x", "b"),
                get(2, 5, 6, "x", Some("b")),
                get(2, 7, 8, "x", Some("a")),
            ],
            "x",
        );
    }

    #[test]
    fn unknown_cas_and_delete_and_get() {
        // An unknown Cas that found its expected value and wrote.
        assert_linearizable(&[
            put(1, 0, 1, "x", "a"),
            unknown(cas(2, 2, 0, "x", Some("a"), "b", true), None),
            get(3, 10, 11, "x", Some("b")),
        ]);
        // One whose expected value was never there cannot be the source of a write.
        assert_violation(
            &[
                put(1, 0, 1, "x", "a"),
                unknown(cas(2, 2, 0, "x", Some("z"), "b", true), None),
                get(3, 10, 11, "x", Some("b")),
            ],
            "x",
        );
        // An unknown delete may or may not have happened.
        for seen in [None, Some("a")] {
            assert_linearizable(&[
                put(1, 0, 1, "x", "a"),
                unknown(del(2, 2, 0, "x"), Some(3)),
                get(3, 10, 11, "x", seen),
            ]);
        }
        // An unknown read constrains nothing, whatever it claims.
        assert_linearizable(&[
            put(1, 0, 1, "x", "a"),
            unknown(get(2, 2, 3, "x", Some("zzz")), None),
        ]);
    }

    #[test]
    fn keys_are_independent() {
        // Interleaved in time, each key on its own is fine; a single shared register
        // would not be.
        assert_linearizable(&[
            put(1, 0, 1, "x", "a"),
            put(2, 2, 3, "y", "b"),
            get(1, 4, 5, "x", Some("a")),
            get(2, 6, 7, "y", Some("b")),
            get(3, 8, 9, "z", None),
        ]);
        // A violation on one key is reported on that key only.
        assert_violation(
            &[
                put(1, 0, 1, "x", "a"),
                put(2, 2, 3, "y", "b"),
                get(1, 4, 5, "x", Some("b")),
                get(2, 6, 7, "y", Some("b")),
            ],
            "x",
        );
        assert_violation(
            &[
                put(1, 0, 1, "x", "a"),
                put(2, 2, 3, "y", "b"),
                get(1, 4, 5, "x", Some("a")),
                get(2, 6, 7, "y", Some("a")),
            ],
            "y",
        );
    }

    #[test]
    fn binary_keys_and_values_are_shown_as_hex() {
        let ops = [
            Operation {
                client: 1,
                call: 0,
                ret: Some(1),
                input: KvInput::Put {
                    key: vec![0xff, 0x00],
                    value: vec![1],
                },
                output: KvOutput::Put,
            },
            Operation {
                client: 2,
                call: 2,
                ret: Some(3),
                input: KvInput::Get {
                    key: vec![0xff, 0x00],
                },
                output: KvOutput::Get(None),
            },
        ];
        match check_kv_history(&ops) {
            CheckResult::Violation { key, explanation } => {
                assert_eq!(key, vec![0xff, 0x00]);
                assert!(explanation.contains("0xff00"), "{explanation}");
                assert!(explanation.contains("0x01"), "{explanation}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn violation_explanation_names_key_prefix_and_culprit() {
        let explanation = assert_violation(
            &[
                put(1, 0, 1, "x", "a"),
                get(2, 2, 3, "x", Some("a")),
                put(3, 4, 5, "x", "b"),
                get(4, 6, 7, "x", Some("a")),
            ],
            "x",
        );
        assert!(
            explanation.starts_with("key \"x\": not linearizable"),
            "{explanation}"
        );
        assert!(
            explanation.contains("1. client 1 [call 0, ret 1] put \"x\" = \"a\" -> ok  => \"a\""),
            "{explanation}"
        );
        assert!(
            explanation.contains("3. client 3 [call 4, ret 5] put \"x\" = \"b\" -> ok  => \"b\""),
            "{explanation}"
        );
        assert!(
            explanation.contains("Could not place: client 4 [call 6, ret 7] get \"x\" -> \"a\""),
            "{explanation}"
        );
        assert!(
            explanation.contains("impossible when the key is \"b\""),
            "{explanation}"
        );
    }

    #[test]
    fn budget_of_one_state_is_inconclusive_not_linearizable() {
        let ops = [
            put(1, 0, 10, "x", "a"),
            put(2, 1, 11, "x", "b"),
            get(3, 12, 13, "x", Some("a")),
            get(3, 14, 15, "x", Some("a")),
        ];
        assert_linearizable(&ops);
        match check_kv_history_with_budget(&ops, 1) {
            CheckResult::Inconclusive { key, reason } => {
                assert_eq!(key, b("x"));
                assert!(reason.contains("budget"), "{reason}");
            }
            other => panic!("expected inconclusive, got {other:?}"),
        }
        // A definite violation on another key still wins over an inconclusive one.
        let mut with_bad_key = ops.to_vec();
        with_bad_key.push(get(4, 0, 1, "w", Some("never written")));
        match check_kv_history_with_budget(&with_bad_key, 1) {
            CheckResult::Violation { key, .. } => assert_eq!(key, b("w")),
            other => panic!("expected a violation on w, got {other:?}"),
        }
    }

    #[test]
    #[should_panic(expected = "returns at 3 before it is called at 5")]
    fn return_before_call_panics() {
        check_kv_history(&[put(1, 5, 3, "x", "a")]);
    }

    #[test]
    #[should_panic(expected = "wrong kind")]
    fn mismatched_output_panics() {
        let mut op = put(1, 0, 1, "x", "a");
        op.output = KvOutput::Delete;
        check_kv_history(&[op]);
    }

    #[test]
    #[should_panic(expected = "never returned but has a known output")]
    fn known_output_without_return_panics() {
        let mut op = put(1, 0, 1, "x", "a");
        op.ret = None;
        check_kv_history(&[op]);
    }

    // ---- randomized ----

    /// splitmix64: tiny, deterministic, good enough to scatter test histories.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    struct Shape {
        clients: u64,
        ops_per_client: u64,
        keys: u64,
        unknown_percent: u64,
    }

    fn random_value(rng: &mut Rng) -> Value {
        // A small pool makes different histories look alike, which is what makes
        // checking hard; occasionally a fresh value.
        if rng.chance(70) {
            format!("v{}", rng.below(4)).into_bytes()
        } else {
            format!("u{}", rng.next_u64()).into_bytes()
        }
    }

    /// A history that really happened: every client issues requests one after another
    /// with random durations, each request takes effect at a random instant inside its
    /// interval (unknown-outcome ones: at a random instant after their call, or never),
    /// and the outputs come from executing them on a map in that order.
    fn random_history(rng: &mut Rng, shape: &Shape) -> Vec<Operation> {
        struct Planned {
            op: Operation,
            effect_at: u64,
            takes_effect: bool,
            known: bool,
        }
        let mut planned = Vec::new();
        for client in 0..shape.clients {
            let mut t = rng.below(10);
            for _ in 0..shape.ops_per_client {
                let call = t;
                let duration = 1 + rng.below(30);
                let ret = call + duration;
                let key = format!("k{}", rng.below(shape.keys)).into_bytes();
                let input = match rng.below(10) {
                    0..=3 => KvInput::Put {
                        key,
                        value: random_value(rng),
                    },
                    4..=6 => KvInput::Get { key },
                    7 => KvInput::Delete { key },
                    _ => KvInput::Cas {
                        key,
                        expected: rng.chance(80).then(|| random_value(rng)),
                        new: random_value(rng),
                    },
                };
                let known = !rng.chance(shape.unknown_percent);
                let crashed = !known && rng.chance(50);
                let (effect_at, takes_effect) = if known {
                    (call + rng.below(duration + 1), true)
                } else {
                    (call + rng.below(3 * duration + 1), rng.chance(50))
                };
                planned.push(Planned {
                    op: Operation {
                        client,
                        call,
                        ret: (!crashed).then_some(ret),
                        input,
                        output: KvOutput::Unknown,
                    },
                    effect_at,
                    takes_effect,
                    known,
                });
                if crashed {
                    break; // A crashed client issues nothing more.
                }
                t = ret + 1 + rng.below(10);
            }
        }
        let mut order: Vec<usize> = (0..planned.len()).collect();
        order.sort_by_key(|&i| (planned[i].effect_at, i));
        let mut store: HashMap<Key, Value> = HashMap::new();
        for i in order {
            let p = &mut planned[i];
            if !p.takes_effect {
                continue;
            }
            let output = match &p.op.input {
                KvInput::Put { key, value } => {
                    store.insert(key.clone(), value.clone());
                    KvOutput::Put
                }
                KvInput::Get { key } => KvOutput::Get(store.get(key).cloned()),
                KvInput::Delete { key } => {
                    store.remove(key);
                    KvOutput::Delete
                }
                KvInput::Cas { key, expected, new } => {
                    let succeeded = store.get(key) == expected.as_ref();
                    if succeeded {
                        store.insert(key.clone(), new.clone());
                    }
                    KvOutput::Cas { succeeded }
                }
            };
            if p.known {
                p.op.output = output;
            }
        }
        planned.into_iter().map(|p| p.op).collect()
    }

    /// Replaces one known read's answer with a value nobody wrote. Returns its key.
    fn corrupt_one_read(rng: &mut Rng, ops: &mut [Operation]) -> Option<Key> {
        let reads: Vec<usize> = (0..ops.len())
            .filter(|&i| matches!(ops[i].output, KvOutput::Get(_)))
            .collect();
        if reads.is_empty() {
            return None;
        }
        let victim = &mut ops[reads[rng.below(reads.len() as u64) as usize]];
        victim.output = KvOutput::Get(Some(b("corrupted")));
        Some(victim.input.key().to_vec())
    }

    #[test]
    fn random_real_histories_are_linearizable_and_a_corrupted_read_is_caught() {
        let mut corrupted = 0;
        for seed in 0..200u64 {
            let mut rng = Rng(seed);
            let shape = Shape {
                clients: 2 + rng.below(7),
                ops_per_client: 3 + rng.below(15),
                keys: 1 + rng.below(3),
                unknown_percent: [0, 5, 15][rng.below(3) as usize],
            };
            let mut ops = random_history(&mut rng, &shape);
            let result = check_kv_history(&ops);
            assert!(
                result.is_linearizable(),
                "seed {seed}: a real execution was rejected: {result}\nhistory: {ops:#?}"
            );
            if let Some(key) = corrupt_one_read(&mut rng, &mut ops) {
                corrupted += 1;
                match check_kv_history(&ops) {
                    CheckResult::Violation { key: bad, .. } => {
                        assert_eq!(bad, key, "seed {seed}: violation on the wrong key")
                    }
                    other => panic!("seed {seed}: corrupted read not caught: {other:?}"),
                }
            }
        }
        assert!(
            corrupted > 150,
            "only {corrupted} histories had a read to corrupt"
        );
    }

    #[test]
    fn a_few_hundred_concurrent_ops_on_one_key_are_checked_quickly() {
        for seed in 1000..1003u64 {
            let mut rng = Rng(seed);
            let shape = Shape {
                clients: 10,
                ops_per_client: 40,
                keys: 1,
                unknown_percent: 3,
            };
            let mut ops = random_history(&mut rng, &shape);
            assert!(ops.len() >= 250, "seed {seed}: only {} ops", ops.len());
            let result = check_kv_history(&ops);
            assert!(result.is_linearizable(), "seed {seed}: {result}");
            let key = corrupt_one_read(&mut rng, &mut ops).expect("reads were generated");
            match check_kv_history(&ops) {
                CheckResult::Violation { key: bad, .. } => assert_eq!(bad, key),
                other => panic!("seed {seed}: corrupted read not caught: {other:?}"),
            }
        }
    }

    #[test]
    fn many_unobserved_unknown_writes_do_not_blow_up_the_search() {
        // 40 timed-out writes, all concurrent with everything after them, none ever
        // observed; then a stale read. Naively that is 2^40 subsets to rule out.
        let mut ops: Vec<Operation> = (0..40)
            .map(|i| unknown(put(100 + i, i, 0, "x", &format!("lost{i}")), None))
            .collect();
        ops.extend((0..40).map(|i| unknown(del(200 + i, i, 0, "x"), Some(i + 1))));
        for i in 0..30u64 {
            let value = format!("w{i}");
            ops.push(put(1, 100 + 4 * i, 101 + 4 * i, "x", &value));
            ops.push(get(2, 102 + 4 * i, 103 + 4 * i, "x", Some(&value)));
        }
        assert_linearizable(&ops);
        ops.push(get(3, 1000, 1001, "x", Some("w3")));
        assert_violation(&ops, "x");
    }

    /// The definition, executed literally: try every order of every subset of the
    /// unknown-outcome operations together with all known ones. Exponential; only for
    /// cross-checking the real search on tiny histories.
    fn brute_force_linearizable(ops: &[Operation]) -> bool {
        fn search(ops: &[&Operation], placed: &mut Vec<bool>, store: Option<Value>) -> bool {
            let all_known_placed = ops
                .iter()
                .zip(placed.iter())
                .all(|(op, &p)| p || op.output == KvOutput::Unknown);
            if all_known_placed {
                return true;
            }
            for i in 0..ops.len() {
                if placed[i] {
                    continue;
                }
                // Every unplaced operation that returned before this one was called
                // must come first (unknown outcomes never "returned").
                let blocked = (0..ops.len()).any(|j| {
                    !placed[j]
                        && ops[j].output != KvOutput::Unknown
                        && ops[j].ret.is_some_and(|r| r < ops[i].call)
                });
                if blocked {
                    continue;
                }
                let op = ops[i];
                // (Unknown reads never match below, so they are never placed.)
                let next = match &op.input {
                    KvInput::Put { value, .. } => Some(Some(value.clone())),
                    KvInput::Delete { .. } => Some(None),
                    KvInput::Get { .. } => match &op.output {
                        KvOutput::Get(seen) if *seen == store => Some(store.clone()),
                        _ => None,
                    },
                    KvInput::Cas { expected, new, .. } => {
                        let matches = store == *expected;
                        match (&op.output, matches) {
                            (KvOutput::Cas { succeeded }, _) if *succeeded != matches => None,
                            (_, true) => Some(Some(new.clone())),
                            (_, false) => Some(store.clone()),
                        }
                    }
                };
                if let Some(next) = next {
                    placed[i] = true;
                    let found = search(ops, placed, next);
                    placed[i] = false;
                    if found {
                        return true;
                    }
                }
            }
            false
        }
        let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
        for op in ops {
            by_key.entry(op.input.key()).or_default().push(op);
        }
        by_key.values().all(|key_ops| {
            let mut placed = vec![false; key_ops.len()];
            search(key_ops, &mut placed, None)
        })
    }

    /// A small history on one key with arbitrary (often impossible) outputs.
    fn random_small_history(rng: &mut Rng) -> Vec<Operation> {
        let n = 1 + rng.below(7);
        let value = |rng: &mut Rng| format!("v{}", rng.below(3)).into_bytes();
        (0..n)
            .map(|client| {
                let call = rng.below(12);
                let ret = call + rng.below(8);
                let key = b("k");
                let (input, output) = match rng.below(4) {
                    0 => (
                        KvInput::Put {
                            key,
                            value: value(rng),
                        },
                        KvOutput::Put,
                    ),
                    1 => (
                        KvInput::Get { key },
                        KvOutput::Get(rng.chance(75).then(|| value(rng))),
                    ),
                    2 => (KvInput::Delete { key }, KvOutput::Delete),
                    _ => (
                        KvInput::Cas {
                            key,
                            expected: rng.chance(75).then(|| value(rng)),
                            new: value(rng),
                        },
                        KvOutput::Cas {
                            succeeded: rng.chance(50),
                        },
                    ),
                };
                let unknown = rng.chance(30);
                Operation {
                    client,
                    call,
                    ret: if unknown && rng.chance(50) {
                        None
                    } else {
                        Some(ret)
                    },
                    input,
                    output: if unknown { KvOutput::Unknown } else { output },
                }
            })
            .collect()
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let (mut yes, mut no) = (0, 0);
        for seed in 0..4000u64 {
            let mut rng = Rng(seed.wrapping_mul(7919));
            let ops = random_small_history(&mut rng);
            let expected = brute_force_linearizable(&ops);
            let result = check_kv_history(&ops);
            assert_eq!(
                result.is_linearizable(),
                expected,
                "seed {seed}: checker says {result:?}, brute force says {expected}; \
                 history: {ops:#?}"
            );
            if expected {
                yes += 1;
            } else {
                assert!(matches!(result, CheckResult::Violation { .. }));
                no += 1;
            }
        }
        // Both verdicts must be well represented for the comparison to mean anything.
        assert!(yes > 800 && no > 800, "linearizable {yes}, not {no}");
    }
}
