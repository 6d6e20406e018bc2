//! The planner: given the spec and a snapshot of what exists, the desired children and
//! at most one orchestration step. Pure: no I/O, no clock (the snapshot carries `now`),
//! no memory between calls. Everything it needs is in the snapshot or in the
//! RaftCluster's status (which lives in the API server), so an operator restarted at any
//! point looks at the world and takes the next step from there.
//!
//! Order of concerns in [`plan`] (the first that applies wins):
//! 1. bootstrap: until the initial members formed a cluster, keep the StatefulSet at the
//!    bootstrap size with `--initial-cluster-state new`; with `spec.bootstrap.fromBackup`
//!    the members' data is first restored from the backup ([`crate::restore::decide`]),
//!    and nothing starts while that fails;
//! 2. no leader with a quorum behind it: `Degraded`, wait, never act destructively;
//!    then member replacement ([`replacement_step`]): a voter that keeps failing to
//!    start is removed, added back as a learner, wiped, and (concern 5) promoted; only
//!    while the other voters are a healthy quorum, one member at a time;
//! 3. StatefulSet size follows membership: after MemberAdd it grows to admit the
//!    learner, after MemberRemove (once every member has the change) it shrinks;
//! 4. volumes of ordinals beyond the StatefulSet are deleted, so a later scale-up never
//!    starts on stale data;
//! 5. a pending learner is promoted once caught up (or removed if no longer wanted);
//! 6. scale up: one learner at a time, only while every voter is healthy;
//! 7. scale down: highest ordinal first, leadership moved away first, refused outright
//!    when any step of the way would leave fewer healthy voters than a quorum;
//! 8. rolling restart of pods whose template hash is stale: followers first, one at a
//!    time, each only when every voter is healthy and caught up; the leader last, after
//!    a leadership transfer to the most up-to-date follower;
//! 9. timing: `Fixed` applies the spec's values, `Adaptive` the rule in [`crate::adaptive`].
//!
//! Beside the step, [`Plan::backup`] says whether a scheduled backup is due
//! ([`crate::backup::decide`]: from `status.backupSchedule`, `now` and member health).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use crate::adaptive::{self, Bounds, Latency, TimingMs};
use crate::backup::BackupDecision;
use crate::crd::{RaftClusterSpec, RaftClusterStatus, TimingMode, REPLICAS_MAX};
use crate::render;

/// A follower (or learner) is caught up when it holds all but this many committed entries.
pub const CAUGHT_UP_LAG_ENTRIES_MAX: u64 = 1_000;
/// ... and a learner is promoted only once it also holds this share of the committed
/// log (etcd's rule for learner readiness), so a young cluster's short log does not make
/// an empty learner look caught up.
pub const PROMOTE_MATCH_RATIO: f64 = 0.9;

/// How members are named and reached: `{prefix}-{ordinal}` and a peer URL per ordinal.
/// Kubernetes uses the StatefulSet's stable DNS names; `raftctl up` local ports.
#[derive(Clone)]
pub struct Naming {
    pub prefix: String,
    pub peer_url: Arc<dyn Fn(u32) -> String + Send + Sync>,
}

impl Naming {
    pub fn member_name(&self, ordinal: u32) -> String {
        format!("{}-{}", self.prefix, ordinal)
    }

    /// The ordinal of a member, from its name or (before it published its name, as
    /// right after MemberAdd) its peer URL.
    pub fn ordinal_of(&self, name: &str, peer_url: &str) -> Option<u32> {
        if let Some(n) = name
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|n| n.parse::<u32>().ok())
        {
            return Some(n);
        }
        (0..REPLICAS_MAX as u32 + 1).find(|o| !peer_url.is_empty() && (self.peer_url)(*o) == peer_url)
    }
}

impl fmt::Debug for Naming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Naming").field("prefix", &self.prefix).finish()
    }
}

/// A member's role as it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Unknown,
}

/// A peer as the leader sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerObservation {
    pub id: u64,
    pub name: String,
    pub peer_url: String,
    pub learner: bool,
    pub match_index: u64,
    /// The leader hears from it (not failed).
    pub reachable: bool,
    pub rtt_p99_ms: Option<f64>,
}

/// One reachable member's answer to the admin `Status` call.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberObservation {
    pub id: u64,
    pub name: String,
    pub role: Role,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// The last entry in this member's log (index, term): how up to date it is.
    pub last_log_index: u64,
    pub last_log_term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Filled on the leader only.
    pub peers: Vec<PeerObservation>,
    pub fsync_p99_ms: Option<f64>,
    pub timing: TimingMs,
}

/// A pod of the StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodObservation {
    pub ordinal: u32,
    /// The template hash it was created from (`kuberaft.io/template-hash`).
    pub template_hash: Option<String>,
    pub ready: bool,
    pub terminating: bool,
}

/// What exists, read at the start of a reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The StatefulSet's `spec.replicas`; `None` when there is no StatefulSet.
    pub workload_replicas: Option<i32>,
    pub pods: Vec<PodObservation>,
    /// Ordinals that still have a volume (WAL or snapshots).
    pub volume_ordinals: BTreeSet<u32>,
    /// Members that failed to start this many times in a row (exited before they
    /// served), by ordinal, with the last error they printed.
    pub failed_starts: BTreeMap<u32, FailedStarts>,
    /// Members that answered.
    pub members: Vec<MemberObservation>,
    pub now_ms: u64,
}

/// A member process that keeps exiting at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailedStarts {
    pub count: u32,
    pub last_error: Option<String>,
}

/// `--initial-cluster-state` of pods created from the current template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

/// The parameters of the children that are not in the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Children {
    pub workload_replicas: i32,
    pub initial_cluster_state: ClusterState,
    /// Voters the PodDisruptionBudget protects (it allows `(voters - 1) / 2` down).
    pub voters: i32,
}

/// One orchestration step.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the StatefulSet with the initial members (`--initial-cluster-state new`).
    Bootstrap { members: i32 },
    /// Before the first start: build the data of members `0..members` from the backup
    /// (`spec.bootstrap.fromBackup`); nothing is started.
    Restore {
        members: i32,
        source: crate::crd::BackupSource,
    },
    /// etcd MemberAdd with isLearner.
    AddLearner { name: String, peer_url: String },
    /// Set the StatefulSet's replicas.
    ScaleWorkload { to: i32 },
    /// etcd MemberPromote.
    Promote { id: u64, name: String },
    /// admin TransferLeader.
    TransferLeader { from: String, to: String },
    /// etcd MemberRemove.
    RemoveMember { id: u64, name: String },
    /// Delete the volumes (WAL and snapshots) of an ordinal that is no longer a member.
    DeleteVolumes { ordinal: u32 },
    /// Delete the pod so the StatefulSet recreates it from the current template.
    RestartMember { ordinal: u32 },
    /// Member replacement, first step: etcd MemberRemove of a voter whose data cannot
    /// be used (it is then added back as a learner and wiped).
    ReplaceMember {
        id: u64,
        name: String,
        ordinal: u32,
        reason: String,
    },
    /// Member replacement: stop the member and delete its data (WAL and snapshots), so
    /// it starts again empty as the learner it was added back as.
    WipeMember { ordinal: u32 },
    /// admin SetTiming.
    SetTiming { timing: TimingMs, reason: String },
    /// Something is in progress; look again soon.
    Wait { reason: String },
    /// The spec asks for something unsafe; nothing is done until it changes.
    Refuse { reason: String },
}

impl Action {
    /// Short PascalCase name for Events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Bootstrap { .. } => "Bootstrap",
            Action::Restore { .. } => "Restore",
            Action::AddLearner { .. } => "AddLearner",
            Action::ScaleWorkload { .. } => "ScaleWorkload",
            Action::Promote { .. } => "Promote",
            Action::TransferLeader { .. } => "TransferLeader",
            Action::RemoveMember { .. } => "RemoveMember",
            Action::DeleteVolumes { .. } => "DeleteVolumes",
            Action::RestartMember { .. } => "RestartMember",
            Action::ReplaceMember { .. } => "ReplaceMember",
            Action::WipeMember { .. } => "WipeMember",
            Action::SetTiming { .. } => "SetTiming",
            Action::Wait { .. } => "Wait",
            Action::Refuse { .. } => "Refuse",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Bootstrap { members } => write!(f, "bootstrap {members} members"),
            Action::Restore { members, source } => write!(
                f,
                "restore the data of {members} members from {}",
                crate::restore::location(source)
            ),
            Action::AddLearner { name, peer_url } => write!(f, "add {name} ({peer_url}) as a learner"),
            Action::ScaleWorkload { to } => write!(f, "scale the StatefulSet to {to}"),
            Action::Promote { name, .. } => write!(f, "promote {name} to voter"),
            Action::TransferLeader { from, to } => write!(f, "transfer leadership from {from} to {to}"),
            Action::RemoveMember { name, .. } => write!(f, "remove member {name}"),
            Action::DeleteVolumes { ordinal } => write!(f, "delete the volumes of ordinal {ordinal}"),
            Action::RestartMember { ordinal } => write!(f, "restart the pod of ordinal {ordinal}"),
            Action::ReplaceMember { name, reason, .. } => {
                write!(
                    f,
                    "replace member {name}: remove it from the configuration ({reason})"
                )
            }
            Action::WipeMember { ordinal } => {
                write!(f, "delete the data of ordinal {ordinal} so it starts again empty")
            }
            Action::SetTiming { timing, reason } => write!(
                f,
                "set heartbeat {} ms, election timeout {} ms ({reason})",
                timing.heartbeat_interval_ms, timing.election_timeout_ms
            ),
            Action::Wait { reason } => write!(f, "wait: {reason}"),
            Action::Refuse { reason } => write!(f, "refused: {reason}"),
        }
    }
}

/// A member as status reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberHealth {
    pub id: u64,
    pub name: String,
    pub ordinal: Option<u32>,
    pub role: &'static str,
    pub learner: bool,
    pub healthy: bool,
    pub match_index: u64,
    pub rtt_p99_ms: Option<f64>,
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub children: Children,
    pub action: Option<Action>,
    /// The initial members have formed a cluster (recorded in status).
    pub bootstrapped: bool,
    /// The leader, when one with a quorum is known.
    pub leader: Option<String>,
    pub term: Option<u64>,
    pub members: Vec<MemberHealth>,
    /// Reason the cluster is Degraded (quorum lost, refused spec, unhealthy voter).
    pub degraded: Option<String>,
    pub latency: Latency,
    pub timing: Option<TimingMs>,
    /// `spec.hibernate` and every member is stopped (volumes kept).
    pub hibernated: bool,
    /// Scheduled backups (`spec.backup`): taken alongside the step, never instead of it.
    pub backup: Option<BackupDecision>,
}

impl Plan {
    pub fn available(&self) -> bool {
        self.leader.is_some()
    }

    /// Progressing: some step of a change is underway.
    pub fn progressing(&self) -> bool {
        matches!(&self.action, Some(a) if !matches!(a, Action::Refuse { .. }))
    }
}

/// The cluster as the leader sees it.
struct View<'a> {
    leader: &'a MemberObservation,
    voters: Vec<u64>,
    learners: Vec<u64>,
    ordinal: BTreeMap<u64, u32>,
    healthy: BTreeMap<u64, bool>,
}

impl View<'_> {
    fn peer(&self, id: u64) -> Option<&PeerObservation> {
        self.leader.peers.iter().find(|p| p.id == id)
    }

    fn match_index(&self, id: u64) -> u64 {
        if id == self.leader.id {
            self.leader.commit_index
        } else {
            self.peer(id).map_or(0, |p| p.match_index)
        }
    }

    fn name(&self, id: u64, naming: &Naming) -> String {
        match self.ordinal.get(&id) {
            Some(o) => naming.member_name(*o),
            None => format!("{id:x}"),
        }
    }

    fn healthy_count(&self, ids: impl Iterator<Item = u64>) -> usize {
        ids.filter(|id| self.healthy.get(id).copied().unwrap_or(false))
            .count()
    }
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// The leader with a quorum behind it: the member that says it leads with the highest
/// term, if it hears from a majority of its voters.
fn find_leader(members: &[MemberObservation]) -> Option<&MemberObservation> {
    let leader = members
        .iter()
        .filter(|m| m.role == Role::Leader)
        .max_by_key(|m| m.term)?;
    let reachable_voters = leader
        .voters
        .iter()
        .filter(|v| **v == leader.id || leader.peers.iter().any(|p| p.id == **v && p.reachable))
        .count();
    (reachable_voters >= quorum(leader.voters.len())).then_some(leader)
}

fn view<'a>(leader: &'a MemberObservation, observed: &Observed, naming: &Naming) -> View<'a> {
    let mut ordinal = BTreeMap::new();
    if let Some(o) = naming.ordinal_of(&leader.name, "") {
        ordinal.insert(leader.id, o);
    }
    for peer in &leader.peers {
        if let Some(o) = naming.ordinal_of(&peer.name, &peer.peer_url) {
            ordinal.insert(peer.id, o);
        }
    }
    let pod_ready = |id: u64| {
        ordinal
            .get(&id)
            .and_then(|o| observed.pods.iter().find(|p| p.ordinal == *o))
            .is_some_and(|p| p.ready && !p.terminating)
    };
    let mut healthy = BTreeMap::new();
    for id in leader.voters.iter().chain(&leader.learners) {
        let ok = if *id == leader.id {
            true
        } else {
            leader.peers.iter().find(|p| p.id == *id).is_some_and(|p| {
                p.reachable && p.match_index + CAUGHT_UP_LAG_ENTRIES_MAX >= leader.commit_index
            }) && observed.members.iter().any(|m| m.id == *id)
        };
        healthy.insert(*id, ok && pod_ready(*id));
    }
    View {
        leader,
        voters: leader.voters.clone(),
        learners: leader.learners.clone(),
        ordinal,
        healthy,
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        Role::Unknown => "unknown",
    }
}

/// RFC 3339 text of a Unix time in milliseconds (as `status.timing.lastChangeTime`).
pub fn rfc3339_from_ms(ms: u64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn last_change_ms(status: Option<&RaftClusterStatus>) -> Option<u64> {
    let text = status?.timing.as_ref()?.last_change_time.as_ref()?;
    let time: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    u64::try_from(time.as_millisecond()).ok()
}

/// What the adaptive rule reads: the worst RTT p99 from the leader to its peers and the
/// worst fsync p99 of any member.
pub fn latency(members: &[MemberObservation]) -> Latency {
    Latency {
        rtt_p99_ms: find_leader(members).and_then(|l| {
            l.peers
                .iter()
                .filter_map(|p| p.rtt_p99_ms)
                .max_by(|a, b| a.total_cmp(b))
        }),
        fsync_p99_ms: members
            .iter()
            .filter_map(|m| m.fsync_p99_ms)
            .max_by(|a, b| a.total_cmp(b)),
    }
}

/// The next step. See the module documentation for the order of concerns; the
/// scheduled backup ([`crate::backup::decide`]) is decided after them, from the members'
/// health they found, and does not change the step.
pub fn plan(
    spec: &RaftClusterSpec,
    status: Option<&RaftClusterStatus>,
    observed: &Observed,
    naming: &Naming,
) -> Plan {
    let mut out = plan_step(spec, status, observed, naming);
    out.backup = crate::backup::decide(
        spec.backup.as_ref(),
        status,
        &out,
        spec.hibernate,
        observed.now_ms,
    );
    out
}

fn plan_step(
    spec: &RaftClusterSpec,
    status: Option<&RaftClusterStatus>,
    observed: &Observed,
    naming: &Naming,
) -> Plan {
    let template_hash = render::template_hash(spec);
    let leader = find_leader(&observed.members);
    let latency = latency(&observed.members);
    let mut out = Plan {
        children: Children {
            workload_replicas: observed.workload_replicas.unwrap_or(spec.replicas),
            initial_cluster_state: ClusterState::New,
            voters: spec.replicas,
        },
        action: None,
        bootstrapped: status.is_some_and(|s| s.bootstrapped),
        leader: None,
        term: None,
        members: Vec::new(),
        degraded: None,
        latency,
        timing: leader.map(|l| l.timing),
        hibernated: false,
        backup: None,
    };
    let view = leader.map(|l| view(l, observed, naming));
    if let Some(view) = &view {
        out.leader = Some(view.name(view.leader.id, naming));
        out.term = Some(view.leader.term);
        out.children.voters = (view.voters.len() as i32).min(spec.replicas).max(1);
        out.members = view
            .voters
            .iter()
            .chain(&view.learners)
            .map(|id| {
                let reported = observed.members.iter().find(|m| m.id == *id);
                let learner = view.learners.contains(id);
                MemberHealth {
                    id: *id,
                    name: view.name(*id, naming),
                    ordinal: view.ordinal.get(id).copied(),
                    role: if learner {
                        "learner"
                    } else {
                        reported.map_or("unknown", |m| role_name(m.role))
                    },
                    learner,
                    healthy: view.healthy[id],
                    match_index: view.match_index(*id),
                    rtt_p99_ms: view.peer(*id).and_then(|p| p.rtt_p99_ms),
                }
            })
            .collect();
    }

    // 1. Bootstrap.
    if !out.bootstrapped {
        let size = out.children.workload_replicas;
        out.children.voters = size;
        match &view {
            Some(v)
                if v.voters.len() == size as usize
                    && v.healthy_count(v.voters.iter().copied()) == size as usize =>
            {
                out.bootstrapped = true;
            }
            _ => {
                out.action = Some(if observed.workload_replicas.is_none() {
                    // From a backup first, when the spec says so: no member starts
                    // before every member's data is there.
                    crate::restore::decide(spec, status, size, observed.now_ms)
                        .unwrap_or(Action::Bootstrap { members: size })
                } else {
                    Action::Wait {
                        reason: format!("bootstrapping: waiting for {size} members to form a cluster"),
                    }
                });
                return out;
            }
        }
    }
    out.children.initial_cluster_state = ClusterState::Existing;

    // Hibernation: the StatefulSet goes to zero and the volumes stay (nothing below runs:
    // no member is there to ask, and no volume may be deleted).
    if spec.hibernate {
        out.children.workload_replicas = 0;
        let stopping = observed.pods.len();
        out.action = if observed.workload_replicas != Some(0) {
            Some(Action::ScaleWorkload { to: 0 })
        } else if stopping > 0 {
            Some(Action::Wait {
                reason: format!("hibernating: {stopping} member(s) still stopping"),
            })
        } else {
            out.hibernated = true;
            None
        };
        return out;
    }
    if observed.workload_replicas == Some(0) {
        // Waking from hibernation (or the StatefulSet was scaled to zero by hand): the
        // members come back on their volumes, as many as the last known membership.
        let known = status.map_or(0, |s| s.replicas.max(s.members.len() as i32));
        let to = if known > 0 { known } else { spec.replicas };
        out.children.workload_replicas = to;
        out.action = Some(Action::ScaleWorkload { to });
        return out;
    }
    if observed.workload_replicas.is_none() {
        // The StatefulSet was deleted behind our back: recreate it at the size of the
        // last known membership; the members' volumes are still there.
        let known = status.map_or(0, |s| s.members.len() as i32);
        out.children.workload_replicas = if known > 0 { known } else { spec.replicas };
    }

    // 2. Quorum.
    let Some(view) = view else {
        let answered = observed.members.len();
        let reason =
            format!("no leader with a quorum ({answered} members answered); waiting, nothing is changed");
        out.degraded = Some(reason.clone());
        out.action = Some(Action::Wait { reason });
        return out;
    };
    let unhealthy: Vec<String> = view
        .voters
        .iter()
        .filter(|id| !view.healthy[id])
        .map(|id| view.name(*id, naming))
        .collect();
    if !unhealthy.is_empty() {
        out.degraded = Some(format!("unhealthy voters: {}", unhealthy.join(", ")));
    }
    let all_members: Vec<u64> = view.voters.iter().chain(&view.learners).copied().collect();

    // 2b. Member replacement: under way, or a voter that cannot start.
    if let Some(action) = replacement_step(spec, status, observed, naming, &view, &mut out) {
        out.action = Some(action);
        return out;
    }
    let mut ordinals = BTreeSet::new();
    for id in &all_members {
        match view.ordinal.get(id) {
            Some(o) => {
                ordinals.insert(*o);
            }
            None => {
                out.action = Some(Action::Refuse {
                    reason: format!(
                        "member {id:x} is not named {}-N; remove it by hand",
                        naming.prefix
                    ),
                });
                return out;
            }
        }
    }
    let needed = ordinals.iter().next_back().map_or(0, |o| o + 1) as i32;
    if ordinals.len() as i32 != needed {
        out.action = Some(Action::Refuse {
            reason: format!("member ordinals {ordinals:?} have gaps; the operator only manages 0..N-1"),
        });
        return out;
    }

    // 3. The StatefulSet follows membership.
    let workload = out.children.workload_replicas;
    if workload < needed {
        out.children.workload_replicas = needed;
        out.action = Some(Action::ScaleWorkload { to: needed });
        return out;
    }
    if workload > needed {
        // Only once every member that answers has the removal in its configuration.
        let config: BTreeSet<u64> = all_members.iter().copied().collect();
        let lagging: Vec<&str> = observed
            .members
            .iter()
            .filter(|m| config.contains(&m.id))
            .filter(|m| {
                m.voters
                    .iter()
                    .chain(&m.learners)
                    .copied()
                    .collect::<BTreeSet<_>>()
                    != config
            })
            .map(|m| m.name.as_str())
            .collect();
        if !lagging.is_empty() {
            out.action = Some(Action::Wait {
                reason: format!("membership change not yet on {}", lagging.join(", ")),
            });
            return out;
        }
        out.children.workload_replicas = needed;
        out.action = Some(Action::ScaleWorkload { to: needed });
        return out;
    }

    // 4. Volumes beyond the StatefulSet.
    if let Some(ordinal) = observed
        .volume_ordinals
        .iter()
        .copied()
        .find(|o| *o as i32 >= workload)
    {
        out.action = Some(if observed.pods.iter().any(|p| p.ordinal == ordinal) {
            Action::Wait {
                reason: format!("pod of ordinal {ordinal} is still terminating"),
            }
        } else {
            Action::DeleteVolumes { ordinal }
        });
        return out;
    }

    // 5. A pending learner.
    if let Some(learner) = view.learners.first().copied() {
        let ordinal = view.ordinal[&learner];
        let name = view.name(learner, naming);
        out.action = Some(if ordinal as i32 >= spec.replicas {
            Action::RemoveMember { id: learner, name }
        } else if view.healthy[&learner]
            && view.match_index(learner) as f64 >= view.leader.commit_index as f64 * PROMOTE_MATCH_RATIO
        {
            Action::Promote { id: learner, name }
        } else {
            Action::Wait {
                reason: format!(
                    "learner {name} is catching up (has {} of {} committed entries)",
                    view.match_index(learner),
                    view.leader.commit_index
                ),
            }
        });
        return out;
    }

    let voters = view.voters.len() as i32;
    // 6. Scale up.
    if voters < spec.replicas {
        out.action = Some(if unhealthy.is_empty() {
            let ordinal = voters as u32;
            Action::AddLearner {
                name: naming.member_name(ordinal),
                peer_url: (naming.peer_url)(ordinal),
            }
        } else {
            Action::Wait {
                reason: format!(
                    "scale-up waits until every voter is healthy ({} is not)",
                    unhealthy.join(", ")
                ),
            }
        });
        return out;
    }

    // 7. Scale down, highest ordinal first; every step must keep a healthy quorum.
    if voters > spec.replicas {
        let by_ordinal: BTreeMap<u32, u64> = view.voters.iter().map(|id| (view.ordinal[id], *id)).collect();
        for remaining in spec.replicas..voters {
            let healthy = view.healthy_count(by_ordinal.range(..remaining as u32).map(|(_, id)| *id));
            if healthy < quorum(remaining as usize) {
                let reason = format!(
                    "scaling {voters} -> {} would leave {healthy} healthy of {remaining} voters (quorum {}); \
                     nothing was changed",
                    spec.replicas,
                    quorum(remaining as usize)
                );
                out.degraded = Some(reason.clone());
                out.action = Some(Action::Refuse { reason });
                return out;
            }
        }
        let (_, victim) = by_ordinal
            .iter()
            .next_back()
            .map(|(o, id)| (*o, *id))
            .expect("voters");
        let name = view.name(victim, naming);
        out.action = Some(if victim == view.leader.id {
            match best_follower(&view, victim) {
                Some(to) => Action::TransferLeader {
                    from: name,
                    to: view.name(to, naming),
                },
                None => Action::Wait {
                    reason: "no healthy follower to take over leadership".into(),
                },
            }
        } else {
            Action::RemoveMember { id: victim, name }
        });
        return out;
    }

    // 8. Rolling restart.
    let outdated: Vec<&PodObservation> = observed
        .pods
        .iter()
        .filter(|p| p.template_hash.as_deref() != Some(template_hash.as_str()))
        .collect();
    if !outdated.is_empty() {
        let missing: Vec<u32> = (0..workload as u32)
            .filter(|o| {
                !observed
                    .pods
                    .iter()
                    .any(|p| p.ordinal == *o && p.ready && !p.terminating)
            })
            .collect();
        if !missing.is_empty() || !unhealthy.is_empty() {
            out.action = Some(Action::Wait {
                reason: format!(
                    "rolling restart waits for every member to be ready and caught up (not yet: {})",
                    missing
                        .iter()
                        .map(|o| naming.member_name(*o))
                        .chain(unhealthy.iter().cloned())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
            return out;
        }
        let leader_ordinal = view.ordinal.get(&view.leader.id).copied();
        let follower = outdated
            .iter()
            .filter(|p| Some(p.ordinal) != leader_ordinal)
            .max_by_key(|p| p.ordinal);
        out.action = Some(match follower {
            Some(pod) => Action::RestartMember { ordinal: pod.ordinal },
            None => match best_follower(&view, view.leader.id) {
                Some(to) => Action::TransferLeader {
                    from: view.name(view.leader.id, naming),
                    to: view.name(to, naming),
                },
                // A single member: nobody to hand over to.
                None => Action::RestartMember {
                    ordinal: leader_ordinal.unwrap_or(0),
                },
            },
        });
        return out;
    }

    // 9. Timing.
    let current = view.leader.timing;
    let wanted = match spec.timing.mode {
        TimingMode::Fixed => {
            let fixed = TimingMs {
                heartbeat_interval_ms: spec.timing.heartbeat_interval_ms,
                election_timeout_ms: spec.timing.election_timeout_ms,
            };
            (fixed != current).then_some((fixed, "spec.timing (Fixed)".to_string()))
        }
        TimingMode::Adaptive => adaptive::decide_with_cool_down(
            current,
            latency,
            Bounds::from_spec(&spec.timing),
            last_change_ms(status),
            observed.now_ms,
            u64::from(spec.timing.adaptive_cool_down_seconds) * 1000,
        )
        .map(|t| {
            (
                t,
                format!(
                    "adaptive: rtt p99 {:.1} ms, fsync p99 {:.1} ms",
                    latency.rtt_p99_ms.unwrap_or(0.0),
                    latency.fsync_p99_ms.unwrap_or(0.0)
                ),
            )
        }),
    };
    if let Some((timing, reason)) = wanted {
        out.action = Some(Action::SetTiming { timing, reason });
    }
    out
}

/// The healthy voter other than `except` with the highest match index.
fn best_follower(view: &View<'_>, except: u64) -> Option<u64> {
    view.voters
        .iter()
        .copied()
        .filter(|id| *id != except && view.healthy[id])
        .max_by_key(|id| (view.match_index(*id), std::cmp::Reverse(*id)))
}

/// A voter is replaced after this many failed starts in a row.
pub const REPLACE_AFTER_FAILED_STARTS: u32 = 5;

/// The replacement concern: the next step of one under way (`status.replacement`),
/// else the start of one for a voter that failed to start
/// [`REPLACE_AFTER_FAILED_STARTS`] times in a row, only while the other voters are a
/// healthy quorum of the configuration with and without it; `None` to go on.
fn replacement_step(
    spec: &RaftClusterSpec,
    status: Option<&RaftClusterStatus>,
    observed: &Observed,
    naming: &Naming,
    view: &View<'_>,
    out: &mut Plan,
) -> Option<Action> {
    let at_ordinal = |o: u32| {
        view.voters
            .iter()
            .chain(&view.learners)
            .copied()
            .find(|id| view.ordinal.get(id) == Some(&o))
    };
    if let Some(r) = status.and_then(|s| s.replacement.as_ref()) {
        match at_ordinal(r.ordinal) {
            // Removed: added back as an empty learner.
            None => {
                return Some(Action::AddLearner {
                    name: naming.member_name(r.ordinal),
                    peer_url: (naming.peer_url)(r.ordinal),
                })
            }
            // Added back: its old data goes, so it starts empty and catches up.
            Some(id) if view.learners.contains(&id) && !r.wiped => {
                return Some(Action::WipeMember { ordinal: r.ordinal })
            }
            // Done: a healthy voter again (the status forgets it this round); another
            // member may be next.
            Some(id) if r.wiped && view.voters.contains(&id) && view.healthy[&id] => {}
            // A learner catching up (promoted by concern 5): nothing else meanwhile.
            Some(_) => return None,
        }
    }
    let enabled = spec.replacement.as_ref().is_none_or(|r| r.enabled);
    let (id, ordinal, failed) = view.voters.iter().find_map(|id| {
        let o = *view.ordinal.get(id)?;
        let failed = observed.failed_starts.get(&o)?;
        (failed.count >= REPLACE_AFTER_FAILED_STARTS && !view.healthy[id] && *id != view.leader.id)
            .then(|| (*id, o, failed.clone()))
    })?;
    let name = view.name(id, naming);
    let mut why = format!("{name} failed to start {} times in a row", failed.count);
    if let Some(e) = &failed.last_error {
        why.push_str(&format!(" (last: {e})"));
    }
    if !enabled {
        let note = format!("{why}; spec.replacement.enabled is false, so it is left as it is");
        out.degraded = Some(match out.degraded.take() {
            Some(d) => format!("{d}; {note}"),
            None => note,
        });
        return None;
    }
    let voters = view.voters.len();
    let healthy_others = view.healthy_count(view.voters.iter().copied().filter(|v| *v != id));
    if voters < 2 || healthy_others < quorum(voters) || healthy_others < quorum(voters - 1) {
        let reason = format!(
            "{why}, but replacing it needs a healthy quorum of the other voters: {healthy_others} of {} \
             are healthy (quorum {}); nothing was changed",
            voters.saturating_sub(1),
            quorum(voters)
        );
        out.degraded = Some(reason.clone());
        return Some(Action::Refuse { reason });
    }
    if !view.learners.is_empty() {
        return Some(Action::Wait {
            reason: format!("{why}; its replacement waits for the pending learner"),
        });
    }
    Some(Action::ReplaceMember {
        id,
        name,
        ordinal,
        reason: why,
    })
}
