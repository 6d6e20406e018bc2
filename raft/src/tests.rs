//! Unit tests of the core: each rule of the paper's Figure 2 and each feature, by
//! feeding inputs and checking the commands that come out.
//!
//! `Net` is a tiny synchronous harness: it delivers messages in order, persists at
//! once unless told otherwise, and records what each node applied and answered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::*;

const ELECTION: u32 = 10;
const HEARTBEAT: u32 = 2;

fn config(id: NodeId) -> Config {
    let mut cfg = Config::new(id);
    cfg.timing = Timing {
        heartbeat_ticks: HEARTBEAT,
        election_ticks: ELECTION,
    };
    cfg.snapshot_entries = 0;
    cfg
}

#[derive(Default)]
struct Net {
    nodes: BTreeMap<NodeId, RaftCore>,
    queue: VecDeque<Message>,
    /// Links that drop messages: (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Nodes whose persistence is held back (their `Persist` seqs wait here).
    slow_disk: BTreeMap<NodeId, Vec<u64>>,
    applied: BTreeMap<NodeId, Vec<Entry>>,
    reads: BTreeMap<NodeId, Vec<Command>>,
    other: BTreeMap<NodeId, Vec<Command>>,
    sent: Vec<Message>,
}

impl Net {
    fn new(voters: &[NodeId]) -> Net {
        Self::with(voters, config)
    }

    fn with(voters: &[NodeId], cfg: impl Fn(NodeId) -> Config) -> Net {
        let mut net = Net::default();
        for &id in voters {
            net.nodes
                .insert(id, RaftCore::bootstrap(cfg(id), voters).unwrap());
            net.process(id);
        }
        net
    }

    fn add_joiner(&mut self, id: NodeId) {
        self.nodes.insert(id, RaftCore::join(config(id)).unwrap());
        self.process(id);
    }

    fn core(&mut self, id: NodeId) -> &mut RaftCore {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Executes what `id` asked for: persist (now, unless its disk is slow), queue
    /// messages, record applies and answers.
    fn process(&mut self, id: NodeId) {
        loop {
            let commands = self.nodes.get_mut(&id).unwrap().take_commands();
            if commands.is_empty() {
                return;
            }
            for command in commands {
                match command {
                    Command::Persist { seq, .. } => match self.slow_disk.get_mut(&id) {
                        Some(held) => held.push(seq),
                        None => self.nodes.get_mut(&id).unwrap().persisted(seq),
                    },
                    Command::Send(m) => {
                        self.sent.push(m.clone());
                        self.queue.push_back(m);
                    }
                    Command::Apply(entries) => self.applied.entry(id).or_default().extend(entries),
                    c @ (Command::ReadReady { .. } | Command::ReadFailed { .. }) => {
                        self.reads.entry(id).or_default().push(c)
                    }
                    c => self.other.entry(id).or_default().push(c),
                }
            }
        }
    }

    fn deliver_all(&mut self) {
        let mut budget = 100_000;
        while let Some(m) = self.queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "message storm");
            if self.blocked.contains(&(m.from, m.to)) || !self.nodes.contains_key(&m.to) {
                continue;
            }
            let to = m.to;
            self.core(to).step(m);
            self.process(to);
        }
    }

    fn tick(&mut self, id: NodeId, times: u32) {
        for _ in 0..times {
            self.core(id).tick();
            self.process(id);
            self.deliver_all();
        }
    }

    fn tick_all(&mut self, times: u32) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for _ in 0..times {
            for &id in &ids {
                self.core(id).tick();
                self.process(id);
            }
            self.deliver_all();
        }
    }

    /// Ticks `id` alone until it leads (its randomized timeout is below 2x).
    fn elect(&mut self, id: NodeId) {
        for _ in 0..4 * ELECTION {
            if self.nodes[&id].role() == Role::Leader {
                break;
            }
            self.tick(id, 1);
        }
        assert_eq!(self.nodes[&id].role(), Role::Leader, "n{id} did not win");
        self.deliver_all();
    }

    fn propose(&mut self, id: NodeId, data: &str) -> Result<(Index, Term), Error> {
        let r = self.core(id).propose(Bytes::from(data.to_string()));
        self.process(id);
        self.deliver_all();
        r
    }

    fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            self.blocked.insert((id, o));
            self.blocked.insert((o, id));
        }
    }

    fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Drops messages from `from` to `to` (one direction).
    fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    fn applied_data(&self, id: NodeId) -> Vec<String> {
        self.applied
            .get(&id)
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| match &e.payload {
                        EntryPayload::Normal(d) => Some(String::from_utf8(d.to_vec()).unwrap()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn release_disk(&mut self, id: NodeId) {
        let held = self.slow_disk.remove(&id).unwrap_or_default();
        for seq in held {
            self.core(id).persisted(seq);
        }
        self.process(id);
        self.deliver_all();
    }
}

fn message(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
    Message { from, to, term, body }
}

fn commands_of(core: &mut RaftCore) -> Vec<Command> {
    core.take_commands()
}

fn sends(commands: &[Command]) -> Vec<&Message> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// A follower of a 3-node cluster at term 2 with the bootstrap log (1..=3 at term 1),
/// every persistence completed.
fn lone_follower() -> RaftCore {
    let mut core = RaftCore::bootstrap(config(1), &[1, 2, 3]).unwrap();
    for c in core.take_commands() {
        if let Command::Persist { seq, .. } = c {
            core.persisted(seq);
        }
    }
    core.take_commands();
    core
}

fn persist_all(core: &mut RaftCore) -> Vec<Command> {
    let mut out = Vec::new();
    loop {
        let commands = core.take_commands();
        if commands.is_empty() {
            return out;
        }
        for c in commands {
            if let Command::Persist { seq, .. } = c {
                core.persisted(seq);
            } else {
                out.push(c);
            }
        }
    }
}

fn entry(index: Index, term: Term, data: &str) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Normal(Bytes::from(data.to_string())),
    }
}

// ----- Figure 2: all servers -----

#[test]
fn a_higher_term_in_any_message_makes_a_node_follow_that_term() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.nodes[&1].term();
    net.core(1).step(message(
        2,
        1,
        term + 5,
        MessageBody::AppendResponse {
            index: 0,
            rejected: true,
            hint_index: 0,
            hint_term: 0,
        },
    ));
    assert_eq!(net.nodes[&1].role(), Role::Follower);
    assert_eq!(net.nodes[&1].term(), term + 5);
}

#[test]
fn committed_entries_are_applied_in_order_on_every_member() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    for i in 0..5 {
        net.propose(1, &format!("v{i}")).unwrap();
    }
    net.tick_all(HEARTBEAT);
    for id in [1, 2, 3] {
        assert_eq!(net.applied_data(id), vec!["v0", "v1", "v2", "v3", "v4"], "n{id}");
        let indexes: Vec<Index> = net.applied[&id].iter().map(|e| e.index).collect();
        let expected: Vec<Index> = (1..=indexes.len() as Index).collect();
        assert_eq!(indexes, expected, "n{id} applies without gaps");
    }
}

// ----- Figure 2: RequestVote -----

#[test]
fn a_vote_request_from_an_older_term_is_refused_with_our_term() {
    let mut core = lone_follower();
    core.step(message(
        2,
        1,
        5,
        MessageBody::AppendRequest {
            prev_log_index: 3,
            prev_log_term: 1,
            entries: vec![],
            leader_commit: 3,
        },
    ));
    persist_all(&mut core);
    core.step(message(
        3,
        1,
        4,
        MessageBody::VoteRequest {
            pre_vote: false,
            last_log_index: 10,
            last_log_term: 4,
            leadership_transfer: false,
        },
    ));
    let out = persist_all(&mut core);
    let reply = sends(&out)[0];
    assert_eq!(reply.term, 5);
    assert!(matches!(
        reply.body,
        MessageBody::VoteResponse { granted: false, .. }
    ));
}

#[test]
fn a_node_votes_at_most_once_per_term() {
    let mut core = lone_follower();
    let request = |from| {
        message(
            from,
            1,
            2,
            MessageBody::VoteRequest {
                pre_vote: false,
                last_log_index: 3,
                last_log_term: 1,
                leadership_transfer: false,
            },
        )
    };
    core.step(request(2));
    let first = persist_all(&mut core);
    assert!(matches!(
        sends(&first)[0].body,
        MessageBody::VoteResponse { granted: true, .. }
    ));
    core.step(request(3));
    let second = persist_all(&mut core);
    assert!(matches!(
        sends(&second)[0].body,
        MessageBody::VoteResponse { granted: false, .. }
    ));
    // The same candidate asking again gets the same answer.
    core.step(request(2));
    let again = persist_all(&mut core);
    assert!(matches!(
        sends(&again)[0].body,
        MessageBody::VoteResponse { granted: true, .. }
    ));
}

#[test]
fn a_vote_is_refused_to_a_candidate_whose_log_is_less_up_to_date() {
    // Without CheckQuorum's lease, so that the refusal is for the log alone.
    let mut cfg = config(1);
    cfg.check_quorum = false;
    let mut core = RaftCore::bootstrap(cfg, &[1, 2, 3]).unwrap();
    persist_all(&mut core);
    core.step(message(
        2,
        1,
        2,
        MessageBody::AppendRequest {
            prev_log_index: 3,
            prev_log_term: 1,
            entries: vec![entry(4, 2, "a")],
            leader_commit: 3,
        },
    ));
    persist_all(&mut core);
    for (last_index, last_term) in [(3, 1), (10, 1)] {
        core.step(message(
            3,
            1,
            3,
            MessageBody::VoteRequest {
                pre_vote: false,
                last_log_index: last_index,
                last_log_term: last_term,
                leadership_transfer: false,
            },
        ));
        let out = persist_all(&mut core);
        assert!(
            matches!(
                sends(&out)[0].body,
                MessageBody::VoteResponse { granted: false, .. }
            ),
            "candidate with last {last_index}/{last_term} must not get our vote (we hold 4/2)"
        );
    }
}

#[test]
fn a_vote_is_answered_only_once_it_is_durable() {
    let mut core = lone_follower();
    core.step(message(
        2,
        1,
        2,
        MessageBody::VoteRequest {
            pre_vote: false,
            last_log_index: 3,
            last_log_term: 1,
            leadership_transfer: false,
        },
    ));
    let out = core.take_commands();
    let seq = out
        .iter()
        .find_map(|c| match c {
            Command::Persist { seq, hard_state, .. } => {
                assert_eq!(hard_state.unwrap().vote, 2);
                Some(*seq)
            }
            _ => None,
        })
        .expect("the vote is persisted");
    assert!(sends(&out).is_empty(), "no answer before the vote is durable");
    core.persisted(seq);
    let out = core.take_commands();
    assert!(matches!(
        sends(&out)[0].body,
        MessageBody::VoteResponse { granted: true, .. }
    ));
}

// ----- Figure 2: AppendEntries -----

#[test]
fn an_append_from_an_older_term_is_rejected_and_tells_the_stale_leader_our_term() {
    let mut core = lone_follower();
    core.step(message(2, 1, 4, MessageBody::TimeoutNow));
    persist_all(&mut core);
    let term = core.term();
    core.step(message(
        3,
        1,
        2,
        MessageBody::AppendRequest {
            prev_log_index: 3,
            prev_log_term: 1,
            entries: vec![entry(4, 2, "stale")],
            leader_commit: 4,
        },
    ));
    let out = persist_all(&mut core);
    assert_eq!(core.log().last_index(), 3, "nothing appended");
    let reply = sends(&out)[0];
    assert_eq!(reply.term, term);
    assert!(matches!(
        reply.body,
        MessageBody::AppendResponse { rejected: true, .. }
    ));
}

#[test]
fn an_append_whose_previous_entry_does_not_match_is_rejected_with_a_hint() {
    let mut core = lone_follower();
    core.step(message(
        2,
        1,
        3,
        MessageBody::AppendRequest {
            prev_log_index: 7,
            prev_log_term: 3,
            entries: vec![entry(8, 3, "x")],
            leader_commit: 3,
        },
    ));
    let out = persist_all(&mut core);
    match &sends(&out)[0].body {
        MessageBody::AppendResponse {
            rejected: true,
            index,
            hint_index,
            ..
        } => {
            assert_eq!(*index, 7);
            assert_eq!(*hint_index, 3, "our log ends at 3: probe there, not one by one");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn conflicting_entries_are_replaced_but_matching_ones_are_kept() {
    let mut core = lone_follower();
    let append = |entries, commit| {
        message(
            2,
            1,
            2,
            MessageBody::AppendRequest {
                prev_log_index: 3,
                prev_log_term: 1,
                entries,
                leader_commit: commit,
            },
        )
    };
    core.step(append(
        vec![entry(4, 2, "a"), entry(5, 2, "b"), entry(6, 2, "c")],
        3,
    ));
    persist_all(&mut core);
    // A leader of term 3 whose log diverged at 5.
    core.step(message(
        3,
        1,
        3,
        MessageBody::AppendRequest {
            prev_log_index: 4,
            prev_log_term: 2,
            entries: vec![entry(5, 3, "B")],
            leader_commit: 3,
        },
    ));
    let out = core.take_commands();
    let persisted: Vec<Index> = out
        .iter()
        .filter_map(|c| match c {
            Command::Persist { entries, .. } => Some(entries.iter().map(|e| e.index).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        persisted,
        vec![5],
        "the write starts at the conflict and replaces the rest"
    );
    assert_eq!(core.log().last_index(), 5);
    assert_eq!(core.log().term(4), Some(2));
    assert_eq!(core.log().term(5), Some(3));
}

#[test]
fn a_follower_commits_up_to_the_leader_commit_but_not_past_its_last_new_entry() {
    let mut core = lone_follower();
    core.step(message(
        2,
        1,
        2,
        MessageBody::AppendRequest {
            prev_log_index: 3,
            prev_log_term: 1,
            entries: vec![entry(4, 2, "a")],
            leader_commit: 9,
        },
    ));
    persist_all(&mut core);
    assert_eq!(core.log().commit(), 4);
}

#[test]
fn an_append_is_acknowledged_only_once_its_entries_are_durable() {
    let mut core = lone_follower();
    core.step(message(
        2,
        1,
        2,
        MessageBody::AppendRequest {
            prev_log_index: 3,
            prev_log_term: 1,
            entries: vec![entry(4, 2, "a")],
            leader_commit: 3,
        },
    ));
    let out = core.take_commands();
    assert!(sends(&out).is_empty(), "the ack waits for the disk");
    let seq = out
        .iter()
        .filter_map(|c| match c {
            Command::Persist { seq, .. } => Some(*seq),
            _ => None,
        })
        .max()
        .unwrap();
    core.persisted(seq);
    let out = core.take_commands();
    assert!(matches!(
        sends(&out)[0].body,
        MessageBody::AppendResponse {
            index: 4,
            rejected: false,
            ..
        }
    ));
}

// ----- Figure 2: leaders -----

#[test]
fn an_entry_of_an_earlier_term_on_a_majority_waits_for_one_of_the_current_term() {
    // Drive the Figure 8 situation precisely with raw messages: leader n1 of term 3
    // holds 4/2 (from an earlier leader) and its noop 5/3; n2 acknowledges 4 only.
    let mut n1 = RaftCore::restore(
        config(1),
        DurableState {
            hard_state: HardState {
                term: 2,
                vote: 0,
                commit: 3,
            },
            snapshot: None,
            entries: vec![
                Entry {
                    term: 1,
                    index: 1,
                    payload: EntryPayload::ConfChange(ConfChange::AddVoter(1)),
                },
                Entry {
                    term: 1,
                    index: 2,
                    payload: EntryPayload::ConfChange(ConfChange::AddVoter(2)),
                },
                Entry {
                    term: 1,
                    index: 3,
                    payload: EntryPayload::ConfChange(ConfChange::AddVoter(3)),
                },
                entry(4, 2, "from term 2"),
            ],
        },
    )
    .unwrap();
    for _ in 0..4 * ELECTION {
        n1.tick();
        persist_all(&mut n1);
        if n1.role() == Role::PreCandidate {
            n1.step(message(
                2,
                1,
                3,
                MessageBody::VoteResponse {
                    pre_vote: true,
                    granted: true,
                },
            ));
            persist_all(&mut n1);
        }
        if n1.role() == Role::Candidate {
            n1.step(message(
                2,
                1,
                3,
                MessageBody::VoteResponse {
                    pre_vote: false,
                    granted: true,
                },
            ));
            persist_all(&mut n1);
            break;
        }
    }
    assert_eq!(n1.role(), Role::Leader);
    assert_eq!(n1.term(), 3);
    assert_eq!(n1.log().last_index(), 5, "the new leader appended its noop");
    n1.step(message(
        2,
        1,
        3,
        MessageBody::AppendResponse {
            index: 4,
            rejected: false,
            hint_index: 0,
            hint_term: 0,
        },
    ));
    persist_all(&mut n1);
    assert_eq!(
        n1.log().commit(),
        3,
        "4/2 is on a majority but must not be committed by counting"
    );
    n1.step(message(
        2,
        1,
        3,
        MessageBody::AppendResponse {
            index: 5,
            rejected: false,
            hint_index: 0,
            hint_term: 0,
        },
    ));
    persist_all(&mut n1);
    assert_eq!(n1.log().commit(), 5, "committing 5/3 commits 4/2 with it");
}

#[test]
fn a_stale_leader_cut_off_from_the_majority_cannot_commit() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let before = net.nodes[&1].log().commit();
    net.isolate(1);
    net.propose(1, "lost").unwrap();
    net.tick(1, 3);
    assert_eq!(net.nodes[&1].log().commit(), before);
    // The majority elects a new leader and moves on.
    net.tick_all(4 * ELECTION);
    let leader = [2, 3]
        .into_iter()
        .find(|id| net.nodes[id].role() == Role::Leader)
        .expect("n2 or n3 leads");
    net.propose(leader, "kept").unwrap();
    net.tick(leader, HEARTBEAT);
    net.heal();
    net.tick_all(ELECTION);
    for id in [1, 2, 3] {
        assert_eq!(net.applied_data(id), vec!["kept"], "n{id}");
    }
}

#[test]
fn a_candidate_steps_down_when_a_leader_of_its_term_appears() {
    let mut core = lone_follower();
    core.step(message(2, 1, 2, MessageBody::TimeoutNow));
    persist_all(&mut core);
    assert_eq!(core.role(), Role::Candidate);
    let term = core.term();
    core.step(message(
        3,
        1,
        term,
        MessageBody::Heartbeat {
            leader_commit: 3,
            read_seq: 0,
        },
    ));
    assert_eq!(core.role(), Role::Follower);
    assert_eq!(core.leader(), Some(3));
}

#[test]
fn election_timeouts_are_randomized_between_one_and_two_timeouts() {
    let mut fired = BTreeSet::new();
    for seed in 0..20 {
        let mut cfg = config(1);
        cfg.pre_vote = false;
        cfg.seed = seed;
        let mut core = RaftCore::bootstrap(cfg, &[1, 2, 3]).unwrap();
        persist_all(&mut core);
        let mut ticks = 0;
        while core.role() == Role::Follower {
            core.tick();
            persist_all(&mut core);
            ticks += 1;
            assert!(ticks < 2 * ELECTION, "fired after {ticks} ticks");
        }
        assert!(ticks >= ELECTION);
        fired.insert(ticks);
    }
    assert!(fired.len() > 3, "timeouts vary: {fired:?}");
}

// ----- PreVote and CheckQuorum -----

#[test]
fn pre_vote_keeps_a_partitioned_node_from_raising_the_term() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.nodes[&1].term();
    net.isolate(3);
    net.tick(3, 10 * ELECTION);
    assert_eq!(net.nodes[&3].term(), term, "pre-votes never raise the term");
    assert_eq!(net.nodes[&3].role(), Role::PreCandidate);
    net.heal();
    net.tick_all(HEARTBEAT * 2);
    assert_eq!(net.nodes[&1].role(), Role::Leader, "the leader was not disturbed");
    assert_eq!(net.nodes[&1].term(), term);
}

#[test]
fn without_pre_vote_a_partitioned_node_does_raise_the_term() {
    // The counterpart of the test above: shows what PreVote protects against.
    let mut net = Net::with(&[1, 2, 3], |id| {
        let mut cfg = config(id);
        cfg.pre_vote = false;
        cfg
    });
    net.elect(1);
    let term = net.nodes[&1].term();
    net.isolate(3);
    net.tick(3, 10 * ELECTION);
    assert!(net.nodes[&3].term() > term);
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(1);
    net.tick(1, 2 * ELECTION + 1);
    assert_eq!(net.nodes[&1].role(), Role::Follower);
}

#[test]
fn followers_that_hear_a_leader_ignore_vote_requests() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.nodes[&2].term();
    net.core(2).step(message(
        3,
        2,
        term + 1,
        MessageBody::VoteRequest {
            pre_vote: false,
            last_log_index: 100,
            last_log_term: term,
            leadership_transfer: false,
        },
    ));
    net.process(2);
    assert_eq!(
        net.nodes[&2].term(),
        term,
        "leader lease: the disruptive request is ignored"
    );
    assert_eq!(net.nodes[&2].leader(), Some(1));
}

// ----- learners and membership -----

#[test]
fn a_learner_never_counts_toward_a_quorum_and_never_campaigns() {
    let mut net = Net::new(&[1]);
    net.elect(1);
    net.propose(1, "x").unwrap();
    net.add_joiner(2);
    net.core(1)
        .propose_conf_change(ConfChange::AddLearner(2))
        .unwrap();
    net.process(1);
    net.tick_all(3 * HEARTBEAT);
    assert!(net.nodes[&2].membership().is_learner(2));
    assert_eq!(net.nodes[&2].log().commit(), net.nodes[&1].log().commit());
    // A learner that is cut off never starts an election.
    net.isolate(2);
    net.tick(2, 10 * ELECTION);
    assert_eq!(net.nodes[&2].role(), Role::Follower);
    assert_eq!(
        net.sent
            .iter()
            .filter(|m| m.from == 2 && m.body.kind().contains("Vote"))
            .count(),
        0
    );
    // With the learner unreachable the single voter still commits alone...
    net.propose(1, "y").unwrap();
    assert_eq!(net.applied_data(1), vec!["x", "y"]);
    // ...and a learner's vote is not counted for a candidate.
    let mut n1 = RaftCore::bootstrap(config(1), &[1, 3, 4]).unwrap();
    persist_all(&mut n1);
    n1.step(message(3, 1, 2, MessageBody::TimeoutNow));
    persist_all(&mut n1);
    assert_eq!(n1.role(), Role::Candidate);
    let term = n1.term();
    n1.step(message(
        2,
        1,
        term,
        MessageBody::VoteResponse {
            pre_vote: false,
            granted: true,
        },
    ));
    persist_all(&mut n1);
    assert_eq!(
        n1.role(),
        Role::Candidate,
        "a vote from a non-voter does not count"
    );
    n1.step(message(
        3,
        1,
        term,
        MessageBody::VoteResponse {
            pre_vote: false,
            granted: true,
        },
    ));
    persist_all(&mut n1);
    assert_eq!(n1.role(), Role::Leader);
}

#[test]
fn a_second_membership_change_waits_for_the_first_to_commit() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(1);
    net.core(1)
        .propose_conf_change(ConfChange::AddLearner(4))
        .unwrap();
    net.process(1);
    let second = net.core(1).propose_conf_change(ConfChange::AddLearner(5));
    assert!(matches!(second, Err(Error::ChangeInProgress(_))), "{second:?}");
    net.heal();
    net.tick(1, HEARTBEAT);
    net.deliver_all();
    net.add_joiner(5);
    net.core(1)
        .propose_conf_change(ConfChange::AddLearner(5))
        .unwrap();
}

#[test]
fn a_membership_change_waits_until_the_leader_committed_an_entry_of_its_term() {
    let mut net = Net::new(&[1, 2, 3]);
    net.slow_disk.insert(2, Vec::new());
    net.slow_disk.insert(3, Vec::new());
    net.elect_with_votes_only(1);
    let term = net.nodes[&1].term();
    assert_ne!(net.nodes[&1].log().term(net.nodes[&1].log().commit()), Some(term));
    let change = net.core(1).propose_conf_change(ConfChange::AddLearner(4));
    assert_eq!(change, Err(Error::NoCommitInTerm));
    net.release_disk(2);
    net.release_disk(3);
    assert_eq!(net.nodes[&1].log().term(net.nodes[&1].log().commit()), Some(term));
    assert!(net.core(1).propose_conf_change(ConfChange::AddLearner(4)).is_ok());
}

#[test]
fn a_learner_is_promoted_only_once_it_has_caught_up() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    for i in 0..20 {
        net.propose(1, &format!("v{i}")).unwrap();
    }
    net.add_joiner(4);
    net.isolate(4);
    net.core(1)
        .propose_conf_change(ConfChange::AddLearner(4))
        .unwrap();
    net.process(1);
    net.deliver_all();
    net.tick(1, HEARTBEAT);
    assert_eq!(
        net.core(1).propose_conf_change(ConfChange::Promote(4)),
        Err(Error::LearnerNotCaughtUp(4))
    );
    net.heal();
    net.tick_all(4 * HEARTBEAT);
    assert!(net.core(1).propose_conf_change(ConfChange::Promote(4)).is_ok());
    net.process(1);
    net.tick_all(2 * HEARTBEAT);
    assert!(net.nodes[&4].membership().is_voter(4));
    assert_eq!(net.nodes[&1].membership().quorum(), 3);
}

#[test]
fn a_change_that_would_leave_too_few_active_voters_is_refused() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    // n3 is gone; removing n2 would leave {1, 3} with only n1 alive.
    net.isolate(3);
    net.tick(1, 2 * ELECTION + 1);
    let refused = net.core(1).propose_conf_change(ConfChange::Remove(2));
    assert!(
        matches!(refused, Err(Error::WouldLoseQuorum { .. })),
        "{refused:?}"
    );
    // Removing the dead one is fine.
    assert!(net.core(1).propose_conf_change(ConfChange::Remove(3)).is_ok());
}

#[test]
fn a_removed_leader_steps_down_once_its_removal_is_committed() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.core(1).propose_conf_change(ConfChange::Remove(1)).unwrap();
    net.process(1);
    net.tick_all(2 * HEARTBEAT);
    assert_ne!(net.nodes[&1].role(), Role::Leader);
    assert_eq!(net.nodes[&2].membership().voters, BTreeSet::from([2, 3]));
    // The remaining two elect a leader; the removed node never campaigns.
    net.tick_all(4 * ELECTION);
    assert!([2, 3].iter().any(|id| net.nodes[id].role() == Role::Leader));
    assert_eq!(net.nodes[&1].role(), Role::Follower);
}

// ----- leadership transfer -----

#[test]
fn leadership_moves_to_a_caught_up_target_with_timeout_now() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.propose(1, "a").unwrap();
    net.core(1).transfer_leadership(3).unwrap();
    net.process(1);
    assert!(net
        .sent
        .iter()
        .any(|m| m.from == 1 && m.to == 3 && m.body == MessageBody::TimeoutNow));
    net.deliver_all();
    assert_eq!(net.nodes[&3].role(), Role::Leader);
    assert_eq!(net.nodes[&1].role(), Role::Follower);
}

#[test]
fn a_transfer_to_an_unreachable_target_aborts_after_an_election_timeout() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    net.blocked.remove(&(1, 2));
    net.blocked.remove(&(2, 1));
    net.core(1).transfer_leadership(3).unwrap();
    net.process(1);
    assert_eq!(net.propose(1, "during").unwrap_err(), Error::TransferInProgress);
    net.tick(1, ELECTION);
    assert!(net.other[&1].contains(&Command::TransferAborted { target: 3 }));
    assert_eq!(net.nodes[&1].role(), Role::Leader);
    assert!(net.propose(1, "after").is_ok());
}

// ----- ReadIndex -----

#[test]
fn read_index_is_not_served_before_the_leader_committed_an_entry_of_its_term() {
    let mut net = Net::new(&[1, 2, 3]);
    net.slow_disk.insert(2, Vec::new());
    net.slow_disk.insert(3, Vec::new());
    net.elect_with_votes_only(1);
    net.core(1).read_index(7);
    net.process(1);
    net.deliver_all();
    assert!(
        net.reads.get(&1).is_none_or(|r| r.is_empty()),
        "no answer before the noop commits"
    );
    net.release_disk(2);
    net.release_disk(3);
    net.tick(1, HEARTBEAT);
    let commit = net.nodes[&1].log().commit();
    assert_eq!(net.reads[&1], vec![Command::ReadReady { id: 7, index: commit }]);
}

impl Net {
    /// Elects `id` while the other members' disks are slow: their votes are released,
    /// their acknowledgements of the new leader's entries are not.
    fn elect_with_votes_only(&mut self, id: NodeId) {
        for _ in 0..4 * ELECTION {
            self.tick(id, 1);
            let voters: Vec<NodeId> = self.slow_disk.keys().copied().collect();
            for v in voters {
                let held = std::mem::take(self.slow_disk.get_mut(&v).unwrap());
                for seq in held {
                    self.core(v).persisted(seq);
                }
                // Only the vote goes out now; keep later persistence held.
                let commands = self.core(v).take_commands();
                for c in commands {
                    match c {
                        Command::Send(m) => self.queue.push_back(m),
                        Command::Persist { seq, .. } => self.slow_disk.get_mut(&v).unwrap().push(seq),
                        _ => {}
                    }
                }
            }
            self.deliver_all();
            if self.nodes[&id].role() == Role::Leader {
                return;
            }
        }
        panic!("n{id} was not elected");
    }
}

#[test]
fn read_index_is_served_once_a_quorum_confirms_leadership() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(1);
    net.core(1).read_index(1);
    net.process(1);
    net.deliver_all();
    assert!(
        net.reads.get(&1).is_none_or(|r| r.is_empty()),
        "no quorum, no answer"
    );
    net.heal();
    net.core(1).read_index(2);
    net.process(1);
    net.deliver_all();
    // The first round was lost: read 2 waits for it, in the round after it.
    assert!(net.reads.get(&1).is_none_or(|r| r.is_empty()));
    // Sent again after a heartbeat interval; confirmed, it serves read 1, and the next
    // round (begun after read 2 arrived) serves read 2.
    net.tick(1, HEARTBEAT);
    let commit = net.nodes[&1].log().commit();
    assert_eq!(
        net.reads[&1],
        vec![
            Command::ReadReady { id: 1, index: commit },
            Command::ReadReady { id: 2, index: commit }
        ]
    );
}

#[test]
fn reads_that_arrive_together_share_one_heartbeat_round_and_later_ones_wait_for_the_next() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.sent.clear();
    for id in 1..=10 {
        net.core(1).read_index(id);
    }
    net.process(1);
    let rounds = |net: &Net| {
        net.sent
            .iter()
            .filter(|m| matches!(m.body, MessageBody::Heartbeat { read_seq, .. } if read_seq > 0))
            .count()
    };
    assert_eq!(rounds(&net), 2, "one round (to each follower) for ten reads");
    // A read that arrives while that round is in flight waits for a round of its own.
    net.core(1).read_index(11);
    net.process(1);
    assert_eq!(rounds(&net), 2);
    net.deliver_all();
    assert_eq!(
        rounds(&net),
        4,
        "the next round began once the first was confirmed"
    );
    let served: Vec<u64> = net.reads[&1]
        .iter()
        .map(|c| match c {
            Command::ReadReady { id, .. } => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(served, (1..=11).collect::<Vec<_>>());
}

#[test]
fn a_follower_read_is_confirmed_by_the_leader() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.propose(1, "a").unwrap();
    net.core(2).read_index(9);
    net.process(2);
    net.deliver_all();
    let commit = net.nodes[&1].log().commit();
    assert_eq!(net.reads[&2], vec![Command::ReadReady { id: 9, index: commit }]);
}

#[test]
fn reads_fail_with_a_leader_hint_when_leadership_is_lost() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(1);
    net.core(1).read_index(5);
    net.process(1);
    net.tick(1, 2 * ELECTION + 1);
    assert!(matches!(
        net.reads[&1][..],
        [Command::ReadFailed {
            id: 5,
            reason: ReadFailure::NotLeader { .. }
        }]
    ));
}

// ----- forwarded proposals -----

type ForwardOutcome = Result<(Index, Term), ForwardFailure>;

impl Net {
    fn forward(&mut self, id: NodeId, proposal: u64, data: &str) -> Result<(), Error> {
        let r = self
            .core(id)
            .forward_proposal(proposal, Bytes::from(data.to_string()));
        self.process(id);
        self.deliver_all();
        r
    }

    fn forwarded(&self, id: NodeId) -> Vec<(u64, ForwardOutcome)> {
        self.other
            .get(&id)
            .into_iter()
            .flatten()
            .filter_map(|c| match c {
                Command::ProposalForwarded { id, outcome } => Some((*id, *outcome)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_forwarded_proposal_is_appended_by_the_leader_and_its_place_told_before_it_applies() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.forward(2, 7, "x").unwrap();
    let told = net.forwarded(2);
    let [(7, Ok((index, term)))] = told[..] else {
        panic!("expected the place of proposal 7, got {told:?}");
    };
    assert_eq!(term, net.nodes[&1].term());
    // The follower learns the index from the answer, which the leader sent before the
    // append carrying the entry: the place is known before the entry can be applied.
    let answer_at = net
        .sent
        .iter()
        .position(|m| m.to == 2 && matches!(m.body, MessageBody::ProposeResponse { id: 7, .. }))
        .unwrap();
    let append_at = net
        .sent
        .iter()
        .position(|m| {
            m.to == 2
                && matches!(&m.body, MessageBody::AppendRequest { entries, .. }
                    if entries.iter().any(|e| e.index == index))
        })
        .unwrap();
    assert!(answer_at < append_at);
    net.tick_all(HEARTBEAT);
    for node in [1, 2, 3] {
        let entry = net.applied[&node].iter().find(|e| e.index == index).unwrap();
        assert_eq!(entry.term, term);
        assert_eq!(entry.payload, EntryPayload::Normal(Bytes::from("x")));
    }
}

#[test]
fn a_forwarded_proposal_is_refused_where_the_leader_would_refuse_its_own() {
    let mut net = Net::new(&[1, 2, 3]);
    // No leader known yet: refused at once, nothing sent.
    assert_eq!(
        net.forward(2, 1, "x"),
        Err(Error::NotLeader { leader_hint: None })
    );
    net.elect(1);
    // On the leader itself: propose, not forward.
    assert_eq!(
        net.forward(1, 2, "x"),
        Err(Error::NotLeader { leader_hint: Some(1) })
    );
    // During a leadership transfer the leader refuses it, and says why.
    net.core(1).transfer_leadership(3).unwrap();
    net.block(1, 3);
    net.process(1);
    net.forward(2, 3, "x").unwrap();
    assert_eq!(
        net.forwarded(2),
        vec![(
            3,
            Err(ForwardFailure::Refused(ProposeRefusal::TransferInProgress))
        )]
    );
}

#[test]
fn a_forwarded_proposal_that_arrives_twice_is_appended_once_and_answered_twice() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.nodes[&1].term();
    let request = Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::ProposeRequest {
            id: 5,
            data: Bytes::from("once"),
        },
    };
    for _ in 0..2 {
        net.core(1).step(request.clone());
        net.process(1);
    }
    let answers: Vec<_> = net
        .sent
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::ProposeResponse { id: 5, outcome } => Some(outcome),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0], answers[1]);
    net.deliver_all();
    net.tick_all(HEARTBEAT);
    let copies = net.applied_data(1).iter().filter(|d| *d == "once").count();
    assert_eq!(copies, 1, "appended once");
}

#[test]
fn forwarded_proposals_are_given_up_when_the_leader_changes_or_stays_silent() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    // The leader never gets it (the link drops it): lost after an election timeout.
    net.block(2, 1);
    net.forward(2, 1, "x").unwrap();
    assert!(net.forwarded(2).is_empty());
    // Only ticks of the follower itself; it keeps hearing the leader (the other way).
    for _ in 0..ELECTION {
        net.tick(1, 1);
        net.tick(2, 1);
    }
    assert_eq!(net.forwarded(2), vec![(1, Err(ForwardFailure::Lost))]);
    // Sent, then the follower learns of a new leader before the answer: lost too.
    net.heal();
    net.block(1, 2);
    net.forward(2, 2, "y").unwrap();
    net.heal();
    net.isolate(1);
    for _ in 0..4 * ELECTION {
        if net.nodes[&2].leader() == Some(3) {
            break;
        }
        net.tick(2, 1);
        net.tick(3, 1);
    }
    assert_eq!(net.nodes[&2].leader(), Some(3));
    assert_eq!(
        net.forwarded(2),
        vec![(1, Err(ForwardFailure::Lost)), (2, Err(ForwardFailure::Lost))]
    );
}

// ----- replication -----

#[test]
fn proposals_on_a_follower_are_refused_with_a_leader_hint() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    assert_eq!(
        net.propose(2, "x"),
        Err(Error::NotLeader { leader_hint: Some(1) })
    );
}

#[test]
fn pipelined_appends_stay_within_the_in_flight_window_and_batch_size() {
    let mut net = Net::with(&[1, 2, 3], |id| {
        let mut cfg = config(id);
        cfg.max_inflight_msgs = 3;
        cfg.max_batch_entries = 2;
        cfg
    });
    net.elect(1);
    // Answers from n2 are held back: n1 may only have 3 appends in flight to it.
    net.blocked.insert((2, 1));
    net.sent.clear();
    for i in 0..20 {
        net.core(1).propose(Bytes::from(format!("v{i}"))).unwrap();
        net.process(1);
    }
    net.deliver_all();
    let to_n2: Vec<&Message> = net
        .sent
        .iter()
        .filter(|m| {
            m.from == 1
                && m.to == 2
                && matches!(&m.body, MessageBody::AppendRequest { entries, .. } if !entries.is_empty())
        })
        .collect();
    assert!(to_n2.len() <= 3, "{} appends in flight", to_n2.len());
    for m in &to_n2 {
        if let MessageBody::AppendRequest { entries, .. } = &m.body {
            assert!(entries.len() <= 2);
        }
    }
    // n3 keeps answering, so the leader commits through it.
    assert!(net.nodes[&1].log().commit() >= 20);
    // When n2 answers again it catches up.
    net.heal();
    net.tick_all(20);
    assert_eq!(net.nodes[&2].log().last_index(), net.nodes[&1].log().last_index());
}

#[test]
fn fast_back_off_skips_a_conflicting_term_in_one_round_trip() {
    // Follower: 4..=13 from a leader of term 2 that nobody else kept.
    let mut follower = lone_follower();
    let stale: Vec<Entry> = (4..=13).map(|i| entry(i, 2, "stale")).collect();
    follower.step(message(
        2,
        1,
        2,
        MessageBody::AppendRequest {
            prev_log_index: 3,
            prev_log_term: 1,
            entries: stale,
            leader_commit: 3,
        },
    ));
    persist_all(&mut follower);
    // Leader of term 3 holds 4..=5 of term 2, then 6..=20 of term 3, and probes at its end.
    let mut leader_log = log::RaftLog::new(3, 1);
    let entries: Vec<Entry> = (4..=20)
        .map(|i| entry(i, if i <= 5 { 2 } else { 3 }, "x"))
        .collect();
    leader_log.append(&entries);
    follower.step(message(
        3,
        1,
        3,
        MessageBody::AppendRequest {
            prev_log_index: 20,
            prev_log_term: 3,
            entries: vec![],
            leader_commit: 3,
        },
    ));
    let out = persist_all(&mut follower);
    let (hint_index, hint_term) = match sends(&out)[0].body {
        MessageBody::AppendResponse {
            rejected: true,
            hint_index,
            hint_term,
            ..
        } => (hint_index, hint_term),
        ref other => panic!("{other:?}"),
    };
    assert_eq!(
        (hint_index, hint_term),
        (13, 2),
        "our last entry with a term <= 3"
    );
    // The leader skips all of its term-3 entries at once and probes at 5, which matches.
    let (probe, _) = leader_log.find_conflict_by_term(hint_index, hint_term);
    assert_eq!(probe, 5);
    follower.step(message(
        3,
        1,
        3,
        MessageBody::AppendRequest {
            prev_log_index: 5,
            prev_log_term: 2,
            entries: leader_log.slice(6, 21, 100, 1 << 20),
            leader_commit: 20,
        },
    ));
    persist_all(&mut follower);
    assert_eq!(follower.log().last_index(), 20);
    assert_eq!(follower.log().term(13), Some(3));
    assert_eq!(follower.log().commit(), 20);
}

#[test]
fn uncommitted_entries_are_bounded() {
    let mut net = Net::with(&[1, 2, 3], |id| {
        let mut cfg = config(id);
        cfg.max_uncommitted_entries = 5;
        cfg
    });
    net.elect(1);
    net.isolate(1);
    let results: Vec<bool> = (0..8).map(|i| net.propose(1, &format!("{i}")).is_ok()).collect();
    assert_eq!(results.iter().filter(|ok| **ok).count(), 5);
    assert!(matches!(net.propose(1, "more"), Err(Error::Busy(5))));
}

// ----- snapshots and compaction -----

#[test]
fn a_snapshot_is_asked_for_once_the_entries_applied_since_the_last_hold_enough_bytes() {
    let mut net = Net::with(&[1, 2, 3], |id| {
        let mut cfg = config(id);
        cfg.snapshot_entries = 1_000;
        cfg.snapshot_bytes = 4_000;
        cfg.log_tail_entries = 100;
        cfg.log_tail_bytes = 2_000;
        cfg
    });
    net.elect(1);
    let asked = |net: &Net| -> usize {
        net.other.get(&1).map_or(0, |commands| {
            commands
                .iter()
                .filter(|c| matches!(c, Command::BuildSnapshot(_)))
                .count()
        })
    };
    // Small entries: far from 1,000 entries and from 4,000 bytes.
    for i in 0..5 {
        net.propose(1, &format!("v{i}")).unwrap();
    }
    assert_eq!(asked(&net), 0);
    // Three entries of 1.5 kB: over the byte bound long before the entry count.
    let big = "x".repeat(1_500);
    for _ in 0..3 {
        net.propose(1, &big).unwrap();
    }
    assert_eq!(asked(&net), 1, "the byte bound asked for a snapshot");
    // The tail kept below it is bounded in bytes too: of the 100 entries the count
    // allows, only the last one fits in 2,000 bytes with these 1.5 kB entries.
    let meta = net.other[&1]
        .iter()
        .find_map(|c| match c {
            Command::BuildSnapshot(meta) => Some(meta.clone()),
            _ => None,
        })
        .unwrap();
    net.core(1).snapshot_built(meta.clone());
    net.process(1);
    assert_eq!(net.nodes[&1].log().base_index(), meta.index - 1);
}

#[test]
fn a_follower_behind_the_compaction_point_is_sent_a_snapshot() {
    let mut net = Net::with(&[1, 2, 3], |id| {
        let mut cfg = config(id);
        cfg.snapshot_entries = 10;
        cfg.log_tail_entries = 2;
        cfg
    });
    net.elect(1);
    net.isolate(3);
    for i in 0..12 {
        net.propose(1, &format!("v{i}")).unwrap();
    }
    // The runtime builds what the core asks for and reports it.
    let asked: Vec<SnapshotMeta> = net.other[&1]
        .iter()
        .filter_map(|c| match c {
            Command::BuildSnapshot(meta) => Some(meta.clone()),
            _ => None,
        })
        .collect();
    assert!(!asked.is_empty(), "applied 16 entries with snapshot_entries = 10");
    let meta = asked[0].clone();
    net.core(1).snapshot_built(meta.clone());
    net.process(1);
    assert!(net.other[&1].contains(&Command::CompactLog {
        through: meta.index - 2
    }));
    assert_eq!(net.nodes[&1].log().base_index(), meta.index - 2);
    net.sent.clear();
    net.heal();
    // The appends lost while n3 was cut off are noticed after a few heartbeat rounds
    // without progress (or at once when the transport reports the link down).
    net.tick_all(2 * ELECTION);
    assert!(net
        .sent
        .iter()
        .any(|m| m.to == 3 && matches!(&m.body, MessageBody::InstallSnapshot { meta: m2 } if *m2 == meta)));
    assert!(net.other[&3].contains(&Command::RestoreSnapshot(meta.clone())));
    net.tick_all(3 * HEARTBEAT);
    assert_eq!(net.nodes[&3].log().commit(), net.nodes[&1].log().commit());
}

// ----- timing -----

#[test]
fn timing_changes_apply_live_and_bad_values_change_nothing() {
    let mut core = lone_follower();
    let before = core.timing();
    assert!(matches!(
        core.set_timing(Timing {
            heartbeat_ticks: 5,
            election_ticks: 10
        }),
        Err(Error::Timing(TimingError::ElectionTooShort { .. }))
    ));
    assert_eq!(core.timing(), before);
    core.set_timing(Timing {
        heartbeat_ticks: 1,
        election_ticks: 30,
    })
    .unwrap();
    // The new election timeout holds at once: no campaign before 30 ticks.
    for _ in 0..29 {
        core.tick();
        persist_all(&mut core);
    }
    assert_eq!(core.role(), Role::Follower);
}

#[test]
fn a_timing_entry_switches_every_member_when_it_commits() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let timing = Timing {
        heartbeat_ticks: 3,
        election_ticks: 15,
    };
    net.core(1).propose_timing(timing).unwrap();
    net.process(1);
    net.tick_all(2 * HEARTBEAT);
    for id in [1, 2, 3] {
        assert_eq!(net.nodes[&id].timing(), timing, "n{id}");
    }
}

#[test]
fn a_restarted_node_comes_back_with_its_durable_state() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.propose(1, "a").unwrap();
    net.tick_all(HEARTBEAT);
    let n2 = net.nodes[&2].status();
    let entries: Vec<Entry> = (1..=n2.last_index)
        .map(|i| net.nodes[&2].log().entry(i).unwrap().clone())
        .collect();
    let restored = RaftCore::restore(
        config(2),
        DurableState {
            hard_state: HardState {
                term: n2.term,
                vote: n2.vote,
                commit: n2.commit,
            },
            snapshot: None,
            entries,
        },
    )
    .unwrap();
    assert_eq!(restored.term(), n2.term);
    assert_eq!(restored.membership().voters, BTreeSet::from([1, 2, 3]));
    assert_eq!(restored.log().commit(), n2.commit);
}

#[test]
fn invalid_configuration_is_refused() {
    let mut cfg = config(1);
    cfg.max_inflight_msgs = 0;
    assert!(matches!(
        RaftCore::bootstrap(cfg, &[1]),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        RaftCore::bootstrap(config(1), &[]),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        RaftCore::bootstrap(config(0), &[1]),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn messages_not_addressed_to_us_change_nothing() {
    let mut core = lone_follower();
    let before = core.status();
    core.step(message(2, 9, 50, MessageBody::TimeoutNow));
    core.step(message(1, 1, 50, MessageBody::TimeoutNow));
    core.step(message(0, 1, 50, MessageBody::TimeoutNow));
    assert_eq!(core.status(), before);
    assert!(commands_of(&mut core).is_empty());
}

#[test]
fn an_advanced_election_timer_campaigns_within_the_randomized_part_of_the_timeout() {
    for seed in 0..20 {
        let mut cfg = config(1);
        cfg.seed = seed;
        let mut core = RaftCore::bootstrap(cfg, &[1, 2, 3]).unwrap();
        persist_all(&mut core);
        core.advance_election_timer();
        let mut ticks = 0;
        while core.role() == Role::Follower {
            core.tick();
            ticks += 1;
            assert!(ticks <= ELECTION, "seed {seed}: no campaign after {ticks} ticks");
        }
        assert_eq!(core.role(), Role::PreCandidate, "seed {seed}");
    }
    // Without the advance, a whole election timeout passes first.
    let mut core = RaftCore::bootstrap(config(1), &[1, 2, 3]).unwrap();
    persist_all(&mut core);
    for _ in 0..ELECTION - 1 {
        core.tick();
    }
    assert_eq!(core.role(), Role::Follower);
}

#[test]
fn advancing_the_election_timer_does_nothing_to_a_learner_or_a_follower_with_a_leader() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.nodes[&2].term();
    net.core(2).advance_election_timer();
    net.tick_all(ELECTION);
    assert_eq!(net.nodes[&1].role(), Role::Leader);
    assert_eq!(net.nodes[&2].term(), term);
    let mut joiner = RaftCore::join(config(4)).unwrap();
    joiner.advance_election_timer();
    for _ in 0..4 * ELECTION {
        joiner.tick();
    }
    assert_eq!(joiner.role(), Role::Follower);
}
