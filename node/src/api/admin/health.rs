//! How the leader judges its peers, and the events that follow from it and from the
//! log: pure functions over what the runtime and the transport publish, so that the
//! rules are tested without a cluster.
//!
//! - [`reachability`]: OK while a peer answers within two heartbeat intervals,
//!   SUSPECT while it is later than that but within an election timeout, FAILED past
//!   an election timeout or while the stream to it is down and backing off.
//! - [`FailureDetector`]: FAILURE when a leader has not heard from a peer for longer
//!   than the election timeout (counted from when it became leader at the earliest),
//!   RECOVERED when that peer answers on time again. Leadership lost: forgotten.
//! - [`MembershipEvents`]: JOIN, LEAVE and PROMOTED from the membership changes the
//!   runtime applies.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kuberaft_proto::admin as pb;

use crate::log_events::LogEvent;
use crate::raft::{ConfChange, Index, NodeId};
use crate::transport::rtt::LinkStatus;

pub fn reachability(
    contact_age: Option<Duration>,
    link: Option<&LinkStatus>,
    heartbeat: Duration,
    election: Duration,
) -> pb::Reachability {
    if link.is_some_and(|l| !l.stream_up && l.reconnect_failures > 0) {
        return pb::Reachability::Failed;
    }
    match contact_age {
        Some(age) if age <= 2 * heartbeat => pb::Reachability::Ok,
        Some(age) if age < election => pb::Reachability::Suspect,
        _ => pb::Reachability::Failed,
    }
}

/// One peer as the leader sees it at one moment.
#[derive(Clone, Copy, Debug)]
pub struct PeerSighting {
    pub id: NodeId,
    /// Time since the peer was last heard from; `None` when never.
    pub contact_age: Option<Duration>,
    pub match_index: Index,
}

/// A change of a peer's state worth an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerChange {
    pub id: NodeId,
    pub kind: pb::EventKind,
    pub match_index: Index,
    /// How long the peer had been silent (FAILURE) or was last silent (RECOVERED).
    pub silent_for: Duration,
}

#[derive(Debug, Default)]
pub struct FailureDetector {
    leading_since: Option<Instant>,
    failed: BTreeSet<NodeId>,
}

impl FailureDetector {
    /// Compares what the leader sees now with what it saw before. `peers` is empty
    /// or ignored when this member does not lead.
    pub fn check(
        &mut self,
        now: Instant,
        leading: bool,
        peers: &[PeerSighting],
        heartbeat: Duration,
        election: Duration,
    ) -> Vec<PeerChange> {
        if !leading {
            self.leading_since = None;
            self.failed.clear();
            return Vec::new();
        }
        let leading_for = now.saturating_duration_since(*self.leading_since.get_or_insert(now));
        let mut changes = Vec::new();
        for peer in peers {
            let silent_for = peer.contact_age.unwrap_or(Duration::MAX).min(leading_for);
            if self.failed.contains(&peer.id) {
                if silent_for <= 2 * heartbeat {
                    self.failed.remove(&peer.id);
                    changes.push(PeerChange {
                        id: peer.id,
                        kind: pb::EventKind::Recovered,
                        match_index: peer.match_index,
                        silent_for,
                    });
                }
            } else if silent_for > election {
                self.failed.insert(peer.id);
                changes.push(PeerChange {
                    id: peer.id,
                    kind: pb::EventKind::Failure,
                    match_index: peer.match_index,
                    silent_for,
                });
            }
        }
        // A removed member is no longer watched.
        self.failed.retain(|id| peers.iter().any(|p| p.id == *id));
        changes
    }
}

/// Turns applied membership changes into JOIN, LEAVE and PROMOTED. Remembers which
/// members are learners, so that a voter added over a learner reads as a promotion.
#[derive(Debug, Default)]
pub struct MembershipEvents {
    learners: BTreeSet<NodeId>,
}

impl MembershipEvents {
    pub fn new(learners: impl IntoIterator<Item = NodeId>) -> Self {
        MembershipEvents {
            learners: learners.into_iter().collect(),
        }
    }

    /// The kind, the member it is about and a description, for a log event.
    pub fn describe(&mut self, event: &LogEvent) -> (pb::EventKind, Option<NodeId>, String) {
        match *event {
            LogEvent::ConfChangeApplied { change, index, .. } => match change {
                ConfChange::AddLearner(id) => {
                    self.learners.insert(id);
                    (
                        pb::EventKind::Join,
                        Some(id),
                        format!("joined as a learner at index {index}"),
                    )
                }
                ConfChange::AddVoter(id) if self.learners.remove(&id) => (
                    pb::EventKind::Promoted,
                    Some(id),
                    format!("learner made a voter at index {index}"),
                ),
                ConfChange::AddVoter(id) => (
                    pb::EventKind::Join,
                    Some(id),
                    format!("joined as a voter at index {index}"),
                ),
                ConfChange::Promote(id) => {
                    self.learners.remove(&id);
                    (
                        pb::EventKind::Promoted,
                        Some(id),
                        format!("promoted to voter at index {index}"),
                    )
                }
                ConfChange::Remove(id) => {
                    self.learners.remove(&id);
                    (
                        pb::EventKind::Leave,
                        Some(id),
                        format!("removed at index {index}"),
                    )
                }
            },
            LogEvent::SnapshotBuilt { index, .. } => (
                pb::EventKind::Snapshot,
                None,
                format!("snapshot taken through index {index}"),
            ),
            LogEvent::SnapshotInstalled { index, .. } => (
                pb::EventKind::Snapshot,
                None,
                format!("snapshot through index {index} installed from the leader"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEARTBEAT: Duration = Duration::from_millis(100);
    const ELECTION: Duration = Duration::from_millis(1000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn seen(id: NodeId, age_ms: Option<u64>) -> PeerSighting {
        PeerSighting {
            id,
            contact_age: age_ms.map(ms),
            match_index: 7,
        }
    }

    #[test]
    fn a_peer_silent_past_the_election_timeout_fails_once_and_recovers_once() {
        let start = Instant::now();
        let mut detector = FailureDetector::default();
        let check = |d: &mut FailureDetector, at: u64, peers: &[PeerSighting]| {
            d.check(start + ms(at), true, peers, HEARTBEAT, ELECTION)
                .into_iter()
                .map(|c| (c.id, c.kind))
                .collect::<Vec<_>>()
        };
        assert!(check(&mut detector, 0, &[seen(2, Some(50)), seen(3, Some(50))]).is_empty());
        assert!(check(&mut detector, 900, &[seen(2, Some(10)), seen(3, Some(950))]).is_empty());
        assert_eq!(
            check(&mut detector, 1200, &[seen(2, Some(10)), seen(3, Some(1250))]),
            vec![(3, pb::EventKind::Failure)]
        );
        assert!(check(&mut detector, 5000, &[seen(2, Some(10)), seen(3, Some(5050))]).is_empty());
        // Heard from, but not yet on time: still failed.
        assert!(check(&mut detector, 5100, &[seen(2, Some(10)), seen(3, Some(400))]).is_empty());
        assert_eq!(
            check(&mut detector, 5200, &[seen(2, Some(10)), seen(3, Some(20))]),
            vec![(3, pb::EventKind::Recovered)]
        );
        assert!(check(&mut detector, 5300, &[seen(2, Some(10)), seen(3, Some(20))]).is_empty());
    }

    #[test]
    fn a_new_leader_gives_peers_an_election_timeout_before_judging_them() {
        let start = Instant::now();
        let mut detector = FailureDetector::default();
        // Never heard from 3, but only just became leader.
        assert!(detector
            .check(start, true, &[seen(3, None)], HEARTBEAT, ELECTION)
            .is_empty());
        assert!(detector
            .check(start + ms(900), true, &[seen(3, None)], HEARTBEAT, ELECTION)
            .is_empty());
        let failed = detector.check(start + ms(1100), true, &[seen(3, None)], HEARTBEAT, ELECTION);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].silent_for, ms(1100));
        // Leadership lost and regained: judged afresh, no RECOVERED from a follower.
        assert!(detector
            .check(start + ms(1200), false, &[], HEARTBEAT, ELECTION)
            .is_empty());
        assert!(detector
            .check(
                start + ms(1300),
                true,
                &[seen(3, Some(5000))],
                HEARTBEAT,
                ELECTION
            )
            .is_empty());
    }

    #[test]
    fn reachability_says_failed_while_the_stream_is_down() {
        let up = LinkStatus {
            rtt: Default::default(),
            rtt_samples_total: 0,
            stream_up: true,
            reconnect_failures: 0,
            backoff_remaining: Duration::ZERO,
        };
        let down = LinkStatus {
            stream_up: false,
            reconnect_failures: 2,
            backoff_remaining: ms(300),
            ..up
        };
        let r = |age, link| reachability(age, link, HEARTBEAT, ELECTION);
        assert_eq!(r(Some(ms(150)), Some(&up)), pb::Reachability::Ok);
        assert_eq!(r(Some(ms(500)), Some(&up)), pb::Reachability::Suspect);
        assert_eq!(r(Some(ms(1500)), None), pb::Reachability::Failed);
        assert_eq!(r(Some(ms(10)), Some(&down)), pb::Reachability::Failed);
        assert_eq!(r(None, Some(&up)), pb::Reachability::Failed);
    }

    #[test]
    fn a_voter_added_over_a_learner_reads_as_a_promotion() {
        let mut events = MembershipEvents::new([9]);
        let applied = |change| LogEvent::ConfChangeApplied {
            index: 5,
            term: 2,
            change,
        };
        let kind = |e: &mut MembershipEvents, change| e.describe(&applied(change)).0;
        assert_eq!(
            kind(&mut events, ConfChange::AddVoter(9)),
            pb::EventKind::Promoted
        );
        assert_eq!(kind(&mut events, ConfChange::AddVoter(10)), pb::EventKind::Join);
        assert_eq!(kind(&mut events, ConfChange::AddLearner(11)), pb::EventKind::Join);
        assert_eq!(
            kind(&mut events, ConfChange::Promote(11)),
            pb::EventKind::Promoted
        );
        assert_eq!(kind(&mut events, ConfChange::Remove(10)), pb::EventKind::Leave);
    }
}
