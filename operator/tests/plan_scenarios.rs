//! The planner against a simulated cluster: a world that holds pods, volumes, the Raft
//! configuration and the RaftCluster's status, executes the planner's steps the way
//! Kubernetes and the members would, and checks after every step that the operator
//! never breaks quorum on its own, never removes the leader, never deletes a member's
//! volumes and never promotes a learner that is behind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kuberaft_operator::adaptive::{TimingMs, COOL_DOWN_MS};
use kuberaft_operator::backup::{self, BackupDecision, BackupOutcome};
use kuberaft_operator::crd::{
    BackupDestination, BackupRecord, BackupSource, BackupSpec, BootstrapSpec, RaftClusterSpec,
    RaftClusterStatus, ReplacementSpec, Retention, Storage, Timing, TimingMode, TimingStatus, Volume,
};
use kuberaft_operator::plan::{
    plan, rfc3339_from_ms, Action, ClusterState, FailedStarts, MemberObservation, Naming, Observed,
    PeerObservation, Plan, PodObservation, Role,
};
use kuberaft_operator::render::template_hash;
use kuberaft_operator::replace;
use kuberaft_operator::restore;

const STEP_MS: u64 = 1_000;
const STEPS_MAX: usize = 400;

fn naming() -> Naming {
    Naming {
        prefix: "demo".into(),
        peer_url: Arc::new(|o| format!("http://demo-{o}.demo-peer.default.svc:2380")),
    }
}

fn spec(replicas: i32) -> RaftClusterSpec {
    let volume = Volume {
        size: "1Gi".into(),
        storage_class_name: None,
    };
    RaftClusterSpec {
        replicas,
        image: "raft-node:1".into(),
        image_pull_policy: None,
        storage: Storage {
            wal: volume.clone(),
            snapshots: volume,
            reclaim_policy: Default::default(),
        },
        timing: Timing::default(),
        snapshot_count: None,
        resources: None,
        pod_template: None,
        tls: None,
        hibernate: false,
        backup: None,
        bootstrap: None,
        replacement: None,
    }
}

fn id_of(ordinal: u32) -> u64 {
    0x1000 + ordinal as u64
}

#[derive(Clone, Debug)]
struct Pod {
    hash: String,
    ready: bool,
}

#[derive(Clone, Debug)]
struct Member {
    ordinal: u32,
    learner: bool,
    match_index: u64,
}

/// Everything outside the operator. Cloning it is how a test "restarts" the operator:
/// the planner keeps nothing, so a fresh one sees exactly this.
#[derive(Clone, Debug)]
struct World {
    spec: RaftClusterSpec,
    status: RaftClusterStatus,
    statefulset: Option<i32>,
    /// The template hash the StatefulSet was last applied with.
    template: String,
    pods: BTreeMap<u32, Pod>,
    volumes: BTreeSet<u32>,
    config: BTreeMap<u64, Member>,
    /// Members whose own view of the configuration lags (after a change), and for how
    /// many more steps.
    config_lagging: BTreeMap<u64, u32>,
    leader: Option<u64>,
    term: u64,
    commit: u64,
    /// Ordinals whose process is down (crashed node, partition).
    down: BTreeSet<u32>,
    /// Entries a learner with a running pod gains per step.
    catch_up_per_step: u64,
    timing: TimingMs,
    rtt_p99_ms: Option<f64>,
    fsync_p99_ms: Option<f64>,
    now_ms: u64,
    log: Vec<Action>,
    /// Scheduled backups fail (the destination is unreachable).
    backups_fail: bool,
    /// Backups taken: (time, member).
    backups: Vec<(u64, String)>,
    /// `spec.bootstrap.fromBackup` cannot be read.
    restore_fails: bool,
    /// Members whose data was restored from the backup (before any pod existed).
    restored: BTreeSet<u32>,
    /// Ordinals whose data the member refuses at start-up (it exits at once, again and again).
    unusable: BTreeSet<u32>,
    /// Ordinals whose member runs but does not catch up (unhealthy, yet reachable).
    lagging: BTreeSet<u32>,
}

impl World {
    fn new(replicas: i32) -> Self {
        World {
            spec: spec(replicas),
            status: RaftClusterStatus::default(),
            statefulset: None,
            template: String::new(),
            pods: BTreeMap::new(),
            volumes: BTreeSet::new(),
            config: BTreeMap::new(),
            config_lagging: BTreeMap::new(),
            leader: None,
            term: 1,
            commit: 50_000,
            down: BTreeSet::new(),
            catch_up_per_step: 20_000,
            timing: TimingMs {
                heartbeat_interval_ms: 100,
                election_timeout_ms: 1000,
            },
            rtt_p99_ms: None,
            fsync_p99_ms: None,
            now_ms: 10 * COOL_DOWN_MS,
            log: Vec::new(),
            backups_fail: false,
            backups: Vec::new(),
            restore_fails: false,
            restored: BTreeSet::new(),
            unusable: BTreeSet::new(),
            lagging: BTreeSet::new(),
        }
    }

    /// A healthy, bootstrapped cluster of `replicas` members, ordinal 0 leading.
    fn running(replicas: i32) -> Self {
        let mut w = World::new(replicas);
        w.run_to_steady();
        assert!(w.status.bootstrapped);
        w.log.clear();
        w
    }

    fn alive(&self, ordinal: u32) -> bool {
        self.pods.get(&ordinal).is_some_and(|p| p.ready)
            && !self.down.contains(&ordinal)
            && !self.unusable.contains(&ordinal)
    }

    fn voters(&self) -> Vec<u64> {
        self.config
            .iter()
            .filter(|(_, m)| !m.learner)
            .map(|(id, _)| *id)
            .collect()
    }

    fn alive_voters(&self) -> usize {
        self.voters()
            .iter()
            .filter(|id| self.alive(self.config[id].ordinal))
            .count()
    }

    fn has_quorum(&self) -> bool {
        let voters = self.voters().len();
        voters > 0 && self.alive_voters() > voters / 2
    }

    fn elect(&mut self) {
        if !self.has_quorum() {
            self.leader = None;
            return;
        }
        let keep = self.leader.filter(|id| {
            self.config
                .get(id)
                .is_some_and(|m| !m.learner && self.alive(m.ordinal))
        });
        if keep.is_none() {
            self.term += 1;
            self.leader = self
                .voters()
                .into_iter()
                .find(|id| self.alive(self.config[id].ordinal));
        }
    }

    fn observe(&mut self) -> Observed {
        self.elect();
        let config_ids: Vec<u64> = self.config.keys().copied().collect();
        let mut members = Vec::new();
        for (id, m) in &self.config {
            if !self.alive(m.ordinal) {
                continue;
            }
            let (voters, learners): (Vec<u64>, Vec<u64>) = if self.config_lagging.contains_key(id) {
                // Its view still holds a removed member: pretend one extra voter.
                let mut v = self.voters();
                v.push(0xdead);
                (v, vec![])
            } else {
                (
                    self.voters(),
                    config_ids
                        .iter()
                        .copied()
                        .filter(|i| self.config[i].learner)
                        .collect(),
                )
            };
            let is_leader = self.leader == Some(*id);
            let peers = if is_leader {
                self.config
                    .iter()
                    .filter(|(pid, _)| *pid != id)
                    .map(|(pid, pm)| PeerObservation {
                        id: *pid,
                        name: format!("demo-{}", pm.ordinal),
                        peer_url: String::new(),
                        learner: pm.learner,
                        match_index: if self.alive(pm.ordinal) { pm.match_index } else { 0 },
                        reachable: self.alive(pm.ordinal),
                        rtt_p99_ms: self.rtt_p99_ms,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            members.push(MemberObservation {
                id: *id,
                name: format!("demo-{}", m.ordinal),
                role: if is_leader {
                    Role::Leader
                } else if m.learner {
                    Role::Learner
                } else if self.leader.is_some() {
                    Role::Follower
                } else {
                    Role::Candidate
                },
                term: self.term,
                leader_id: self.leader.unwrap_or(0),
                commit_index: self.commit,
                applied_index: self.commit,
                last_log_index: self.commit,
                last_log_term: self.term,
                voters,
                learners,
                peers,
                fsync_p99_ms: self.fsync_p99_ms,
                timing: self.timing,
            });
        }
        Observed {
            workload_replicas: self.statefulset,
            pods: self
                .pods
                .iter()
                .map(|(o, p)| PodObservation {
                    ordinal: *o,
                    template_hash: Some(p.hash.clone()),
                    ready: p.ready && !self.down.contains(o) && !self.unusable.contains(o),
                    terminating: false,
                })
                .collect(),
            volume_ordinals: self.volumes.clone(),
            failed_starts: self
                .unusable
                .iter()
                .map(|o| {
                    (
                        *o,
                        FailedStarts {
                            count: 6,
                            last_error: Some("wal: record 12 fails its checksum".into()),
                        },
                    )
                })
                .collect(),
            members,
            now_ms: self.now_ms,
        }
    }

    /// One reconcile: observe, plan, apply the children, execute the step, write status.
    fn reconcile(&mut self) -> Plan {
        let observed = self.observe();
        let p = plan(&self.spec, Some(&self.status), &observed, &naming());
        self.apply_children(&p);
        if let Some(action) = &p.action {
            self.execute(action, &observed);
        }
        let previous = self.status.clone();
        self.write_status(&p);
        // The scheduled backup, as platform::backup carries it out.
        let outcome = match &p.backup {
            Some(BackupDecision::Take { member, .. }) if self.backups_fail => Some(Err(format!(
                "backup to s3://bucket: {member}: connection refused"
            ))),
            Some(BackupDecision::Take { member, .. }) => {
                self.backups.push((self.now_ms, member.clone()));
                Some(Ok(BackupOutcome {
                    record: BackupRecord {
                        time: rfc3339_from_ms(self.now_ms),
                        location: format!("s3://bucket/demo_{}.snap", self.now_ms),
                        revision: self.commit as i64,
                        member: member.clone(),
                        ..Default::default()
                    },
                    deleted: Vec::new(),
                    retention_error: None,
                }))
            }
            _ => None,
        };
        backup::record(
            &mut self.status,
            Some(&previous),
            self.spec.backup.as_ref(),
            p.backup.as_ref(),
            outcome.as_ref(),
            self.now_ms,
        );
        // The restore, as platform::restore carries it out.
        let restored = match &p.action {
            Some(Action::Restore { source, .. }) if self.restore_fails => Some(Err(format!(
                "cannot restore from {}: No such file or directory (os error 2)",
                restore::location(source)
            ))),
            Some(Action::Restore { source, .. }) => Some(Ok(restore::Fetched {
                location: restore::location(source),
                size: 1234,
                sha256: "ab".repeat(32),
            })),
            _ => None,
        };
        restore::record(
            &mut self.status,
            Some(&previous),
            &self.spec,
            &p,
            restored.as_ref(),
            self.now_ms,
        );
        replace::record(&mut self.status, Some(&previous), &p, true, self.now_ms);
        p
    }

    fn apply_children(&mut self, p: &Plan) {
        if self.statefulset.is_some() || matches!(p.action, Some(Action::Bootstrap { .. })) {
            self.statefulset = Some(p.children.workload_replicas);
            self.template = template_hash(&self.spec);
        }
    }

    fn write_status(&mut self, p: &Plan) {
        self.status.bootstrapped = p.bootstrapped;
        // As the operator's status: the leader's voters, the last known count without one.
        if p.leader.is_some() {
            self.status.replicas = p.members.iter().filter(|m| !m.learner).count() as i32;
        }
        if let Some(Action::SetTiming { .. }) = p.action {
            self.status.timing = Some(TimingStatus {
                heartbeat_interval_ms: self.timing.heartbeat_interval_ms,
                election_timeout_ms: self.timing.election_timeout_ms,
                last_change_time: Some(rfc3339_from_ms(self.now_ms)),
                ..Default::default()
            });
        }
    }

    fn healthy(&self, id: u64) -> bool {
        let m = &self.config[&id];
        self.alive(m.ordinal) && m.match_index + 1_000 >= self.commit
    }

    fn execute(&mut self, action: &Action, observed: &Observed) {
        let _ = observed;
        self.log.push(action.clone());
        match action {
            Action::Bootstrap { members } => {
                if restore::source(&self.spec).is_some() {
                    assert_eq!(
                        self.restored,
                        (0..*members as u32).collect(),
                        "bootstrapped before every member's data was restored"
                    );
                }
                self.statefulset = Some(*members);
                for o in 0..*members as u32 {
                    self.config.insert(
                        id_of(o),
                        Member {
                            ordinal: o,
                            learner: false,
                            match_index: self.commit,
                        },
                    );
                }
            }
            Action::AddLearner { name, .. } => {
                let ordinal: u32 = name.trim_start_matches("demo-").parse().unwrap();
                assert!(
                    self.has_quorum() && self.leader.is_some(),
                    "MemberAdd needs a leader"
                );
                self.config.insert(
                    id_of(ordinal),
                    Member {
                        ordinal,
                        learner: true,
                        match_index: 0,
                    },
                );
            }
            Action::ScaleWorkload { to } => self.statefulset = Some(*to),
            Action::Promote { id, name } => {
                let m = &self.config[id];
                assert!(
                    self.healthy(*id) && m.match_index * 10 >= self.commit * 9,
                    "promoted {name} before it caught up"
                );
                self.config.get_mut(id).unwrap().learner = false;
            }
            Action::TransferLeader { from, to } => {
                let from_id = id_of(from.trim_start_matches("demo-").parse().unwrap());
                let to_id = id_of(to.trim_start_matches("demo-").parse().unwrap());
                assert_eq!(self.leader, Some(from_id), "transfer from a non-leader");
                assert!(self.healthy(to_id), "transfer to an unhealthy member");
                self.leader = Some(to_id);
                self.term += 1;
            }
            Action::RemoveMember { id, name } => {
                assert_ne!(self.leader, Some(*id), "removed the leader {name}");
                self.config.remove(id);
                // One surviving follower learns of the change late (the leader has it first).
                if let Some(first) = self.config.keys().copied().find(|i| Some(*i) != self.leader) {
                    self.config_lagging.insert(first, 2);
                }
            }
            Action::DeleteVolumes { ordinal } => {
                assert!(
                    !self.pods.contains_key(ordinal),
                    "deleted volumes under a running pod"
                );
                assert!(
                    !self.config.values().any(|m| m.ordinal == *ordinal),
                    "deleted the volumes of a member"
                );
                self.volumes.remove(ordinal);
            }
            Action::RestartMember { ordinal } => {
                let voters = self.voters().len();
                let restarting_leader = self.leader.is_some_and(|l| self.config[&l].ordinal == *ordinal);
                assert!(
                    !restarting_leader || voters == 1,
                    "restarted the leader of {voters} voters"
                );
                assert!(
                    self.pods.values().all(|p| p.ready),
                    "restarted a member while another one is not ready"
                );
                let pod = self.pods.get_mut(ordinal).expect("pod exists");
                pod.hash = self.template.clone();
                pod.ready = false;
            }
            Action::SetTiming { timing, .. } => self.timing = *timing,
            Action::ReplaceMember { id, name, .. } => {
                assert_ne!(self.leader, Some(*id), "replaced the leader {name}");
                let others = self
                    .voters()
                    .into_iter()
                    .filter(|v| v != id && self.healthy(*v))
                    .count();
                let voters = self.voters().len();
                assert!(
                    others > voters / 2 && others > (voters - 1) / 2,
                    "replaced {name} without a healthy quorum of the others"
                );
                assert!(
                    self.config.values().all(|m| !m.learner),
                    "replaced {name} while a learner was pending"
                );
                self.config.remove(id);
            }
            Action::WipeMember { ordinal } => {
                let m = self
                    .config
                    .values()
                    .find(|m| m.ordinal == *ordinal)
                    .expect("wiped a member that is not in the configuration");
                assert!(m.learner, "wiped the data of a voter");
                self.unusable.remove(ordinal);
                if let Some(p) = self.pods.get_mut(ordinal) {
                    p.ready = false;
                }
            }
            Action::Restore { members, .. } => {
                assert!(
                    self.statefulset.is_none() && self.pods.is_empty(),
                    "restored while members run"
                );
                if !self.restore_fails {
                    self.restored = (0..*members as u32).collect();
                }
            }
            Action::Wait { .. } | Action::Refuse { .. } => {}
        }
    }

    /// Time passes: the StatefulSet controller creates and deletes pods, pods become
    /// ready, entries get committed and replicated, lagging views catch up.
    fn step(&mut self) {
        self.now_ms += STEP_MS;
        self.config_lagging.retain(|_, steps| {
            *steps -= 1;
            *steps > 0
        });
        let size = self.statefulset.unwrap_or(0) as u32;
        self.pods.retain(|o, _| *o < size);
        for p in self.pods.values_mut() {
            p.ready = true;
        }
        for o in 0..size {
            if !self.pods.contains_key(&o) {
                self.pods.insert(
                    o,
                    Pod {
                        hash: self.template.clone(),
                        ready: false,
                    },
                );
                self.volumes.insert(o);
            }
        }
        if self.has_quorum() {
            self.commit += 10;
        }
        let commit = self.commit;
        let rate = self.catch_up_per_step;
        let alive: BTreeSet<u32> = (0..size).filter(|o| self.alive(*o)).collect();
        for m in self.config.values_mut() {
            if !alive.contains(&m.ordinal) || self.lagging.contains(&m.ordinal) {
                continue;
            }
            m.match_index = if m.learner {
                (m.match_index + rate).min(commit)
            } else {
                commit
            };
        }
    }

    fn check_invariants(&self, voters_before: usize, quorum_before: bool) {
        // The operator never takes a quorum away (one or two voters cannot keep one
        // through a restart; three or more must).
        if quorum_before && voters_before >= 3 {
            assert!(self.has_quorum(), "the operator broke quorum: {self:#?}");
        }
    }

    /// Reconciles until the planner has nothing to do; returns the steps taken.
    fn run_to_steady(&mut self) -> Vec<Action> {
        let start = self.log.len();
        for _ in 0..STEPS_MAX {
            let voters_before = self.voters().len();
            let quorum_before = self.has_quorum();
            let p = self.reconcile();
            self.check_invariants(voters_before, quorum_before);
            if p.action.is_none() {
                return self.log[start..].to_vec();
            }
            self.step();
        }
        panic!(
            "not steady after {STEPS_MAX} steps; last steps: {:?}",
            &self.log[self.log.len() - 5..]
        );
    }
}

/// The steps taken, without the waits in between.
fn kinds(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter(|a| !matches!(a, Action::Wait { .. }))
        .map(|a| a.to_string())
        .collect()
}

fn member_ordinals(w: &World) -> Vec<(u32, bool)> {
    w.config.values().map(|m| (m.ordinal, m.learner)).collect()
}

#[test]
fn bootstrap_creates_the_initial_members_then_switches_new_pods_to_joining() {
    let mut w = World::new(3);
    let first = w.reconcile();
    assert_eq!(first.action, Some(Action::Bootstrap { members: 3 }));
    assert_eq!(first.children.initial_cluster_state, ClusterState::New);
    assert!(!first.bootstrapped);
    w.step();
    let steps = w.run_to_steady();
    assert!(
        steps.iter().all(|a| matches!(a, Action::Wait { .. })),
        "{steps:?}"
    );
    assert!(w.status.bootstrapped);
    let observed = w.observe();
    let steady = plan(&w.spec, Some(&w.status), &observed, &naming());
    assert_eq!(steady.children.initial_cluster_state, ClusterState::Existing);
    assert_eq!(steady.children.workload_replicas, 3);
    assert_eq!(steady.leader.as_deref(), Some("demo-0"));
    assert!(steady.available() && !steady.progressing() && steady.degraded.is_none());
}

#[test]
fn replicas_changed_during_bootstrap_wait_until_the_initial_members_formed_a_cluster() {
    let mut w = World::new(3);
    w.reconcile();
    w.spec.replicas = 5;
    let p = w.reconcile();
    assert_eq!(
        p.children.workload_replicas, 3,
        "bootstrap size is fixed once pods exist"
    );
    assert!(matches!(p.action, Some(Action::Wait { .. })));
    w.step();
    let steps = w.run_to_steady();
    assert_eq!(member_ordinals(&w).len(), 5);
    assert_eq!(kinds(&steps).iter().filter(|s| s.starts_with("add")).count(), 2);
}

#[test]
fn scale_up_adds_a_learner_grows_the_statefulset_waits_and_promotes_one_member_at_a_time() {
    let mut w = World::running(3);
    w.catch_up_per_step = 10_000; // a few steps to catch up
    w.spec.replicas = 5;
    let steps = w.run_to_steady();
    assert_eq!(
        kinds(&steps),
        vec![
            "add demo-3 (http://demo-3.demo-peer.default.svc:2380) as a learner",
            "scale the StatefulSet to 4",
            "promote demo-3 to voter",
            "add demo-4 (http://demo-4.demo-peer.default.svc:2380) as a learner",
            "scale the StatefulSet to 5",
            "promote demo-4 to voter",
        ]
    );
    assert!(steps
        .iter()
        .any(|a| matches!(a, Action::Wait { reason } if reason.contains("catching up"))));
    assert_eq!(
        member_ordinals(&w),
        (0..5).map(|o| (o, false)).collect::<Vec<_>>()
    );
    assert_eq!(w.statefulset, Some(5));
}

#[test]
fn scale_down_moves_leadership_away_removes_then_shrinks_then_deletes_volumes() {
    let mut w = World::running(5);
    // The highest ordinal leads.
    w.leader = Some(id_of(4));
    w.spec.replicas = 3;
    let steps = w.run_to_steady();
    let k = kinds(&steps);
    assert_eq!(k[0], "transfer leadership from demo-4 to demo-0");
    assert_eq!(
        &k[1..],
        &[
            "remove member demo-4",
            "scale the StatefulSet to 4",
            "delete the volumes of ordinal 4",
            "remove member demo-3",
            "scale the StatefulSet to 3",
            "delete the volumes of ordinal 3",
        ]
    );
    // The shrink waited until every member had the removal.
    assert!(steps
        .iter()
        .any(|a| matches!(a, Action::Wait { reason } if reason.contains("membership change"))));
    assert_eq!(w.volumes, BTreeSet::from([0, 1, 2]));
    assert_eq!(member_ordinals(&w).len(), 3);
}

#[test]
fn rolling_restart_goes_follower_by_follower_and_the_leader_last_after_a_transfer() {
    let mut w = World::running(3);
    w.spec.image = "raft-node:2".into();
    let steps = w.run_to_steady();
    assert_eq!(
        kinds(&steps),
        vec![
            "restart the pod of ordinal 2",
            "restart the pod of ordinal 1",
            "transfer leadership from demo-0 to demo-1",
            "restart the pod of ordinal 0",
        ]
    );
    let new_hash = template_hash(&w.spec);
    assert!(w.pods.values().all(|p| p.hash == new_hash));
}

#[test]
fn a_spec_change_during_a_rolling_restart_restarts_every_member_onto_the_newest_template() {
    let mut w = World::running(5);
    w.spec.image = "raft-node:2".into();
    // Two restarts into the first roll-out, the image changes again.
    let mut restarts = 0;
    while restarts < 2 {
        let p = w.reconcile();
        if matches!(p.action, Some(Action::RestartMember { .. })) {
            restarts += 1;
        }
        w.step();
    }
    w.spec.image = "raft-node:3".into();
    w.run_to_steady();
    let newest = template_hash(&w.spec);
    assert!(w.pods.values().all(|p| p.hash == newest), "{:?}", w.pods);
}

#[test]
fn a_learner_that_never_catches_up_is_never_promoted() {
    let mut w = World::running(3);
    w.catch_up_per_step = 0;
    w.spec.replicas = 4;
    let mut last = None;
    for _ in 0..50 {
        let p = w.reconcile();
        last = p.action.clone();
        assert!(!matches!(p.action, Some(Action::Promote { .. })));
        w.step();
    }
    match last {
        Some(Action::Wait { reason }) => assert!(reason.contains("demo-3 is catching up"), "{reason}"),
        other => panic!("expected a wait, got {other:?}"),
    }
    assert_eq!(member_ordinals(&w).last(), Some(&(3, true)));
    let observed = w.observe();
    let p = plan(&w.spec, Some(&w.status), &observed, &naming());
    assert!(p.progressing() && p.available());
}

#[test]
fn lost_quorum_is_degraded_and_nothing_destructive_happens_even_when_the_spec_changes() {
    let mut w = World::running(3);
    w.down.insert(1);
    w.down.insert(2);
    for change in 0..3 {
        match change {
            1 => w.spec.replicas = 1,
            2 => w.spec.image = "raft-node:2".into(),
            _ => {}
        }
        let before = (w.config.len(), w.pods.len(), w.volumes.len(), w.statefulset);
        let p = w.reconcile();
        assert!(!p.available());
        assert!(
            p.degraded.as_deref().is_some_and(|d| d.contains("no leader")),
            "{:?}",
            p.degraded
        );
        assert!(matches!(p.action, Some(Action::Wait { .. })), "{:?}", p.action);
        assert_eq!(
            before,
            (w.config.len(), w.pods.len(), w.volumes.len(), w.statefulset)
        );
        w.step();
    }
    // Once the members are back, the pending changes go ahead safely.
    w.down.clear();
    w.run_to_steady();
    assert_eq!(member_ordinals(&w), vec![(0, false)]);
}

#[test]
fn a_scale_down_the_healthy_members_cannot_survive_is_refused_and_nothing_is_half_done() {
    let mut w = World::running(5);
    w.down.insert(1);
    w.down.insert(2);
    w.spec.replicas = 3;
    let before = member_ordinals(&w);
    for _ in 0..3 {
        let p = w.reconcile();
        match &p.action {
            Some(Action::Refuse { reason }) => assert!(reason.contains("healthy"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(p.degraded.is_some() && !p.progressing());
        w.step();
    }
    assert_eq!(member_ordinals(&w), before);
    assert_eq!(w.statefulset, Some(5));
    // When the members recover the same spec is carried out.
    w.down.clear();
    w.run_to_steady();
    assert_eq!(member_ordinals(&w).len(), 3);
}

#[test]
fn scale_up_waits_while_a_voter_is_unhealthy() {
    let mut w = World::running(3);
    w.down.insert(2);
    w.spec.replicas = 4;
    let p = w.reconcile();
    assert!(
        matches!(&p.action, Some(Action::Wait { reason }) if reason.contains("demo-2")),
        "{:?}",
        p.action
    );
    assert_eq!(p.degraded.as_deref(), Some("unhealthy voters: demo-2"));
    assert_eq!(w.config.len(), 3);
}

#[test]
fn a_rolling_restart_waits_for_an_unhealthy_member_instead_of_restarting_another() {
    let mut w = World::running(3);
    w.down.insert(1);
    w.spec.image = "raft-node:2".into();
    for _ in 0..5 {
        let p = w.reconcile();
        assert!(matches!(p.action, Some(Action::Wait { .. })), "{:?}", p.action);
        w.step();
    }
}

#[test]
fn a_pending_learner_is_removed_when_the_scale_up_is_called_off() {
    let mut w = World::running(3);
    w.catch_up_per_step = 0;
    w.spec.replicas = 4;
    for _ in 0..4 {
        w.reconcile();
        w.step();
    }
    assert_eq!(member_ordinals(&w).last(), Some(&(3, true)));
    w.spec.replicas = 3;
    let steps = w.run_to_steady();
    assert_eq!(
        kinds(&steps),
        vec![
            "remove member demo-3",
            "scale the StatefulSet to 3",
            "delete the volumes of ordinal 3"
        ]
    );
}

#[test]
fn stale_volumes_of_a_former_member_are_deleted_before_that_ordinal_joins_again() {
    let mut w = World::running(3);
    w.volumes.insert(3);
    w.spec.replicas = 4;
    let steps = w.run_to_steady();
    assert_eq!(kinds(&steps)[0], "delete the volumes of ordinal 3");
    assert_eq!(member_ordinals(&w).len(), 4);
}

#[test]
fn fixed_timing_from_the_spec_is_applied_live() {
    let mut w = World::running(3);
    w.spec.timing.heartbeat_interval_ms = 50;
    w.spec.timing.election_timeout_ms = 500;
    let steps = w.run_to_steady();
    assert_eq!(
        kinds(&steps),
        vec!["set heartbeat 50 ms, election timeout 500 ms (spec.timing (Fixed))"]
    );
}

#[test]
fn adaptive_timing_follows_latency_once_and_then_respects_the_cool_down() {
    let mut w = World::running(3);
    w.spec.timing = Timing {
        mode: TimingMode::Adaptive,
        ..Timing::default()
    };
    w.rtt_p99_ms = Some(70.0);
    w.fsync_p99_ms = Some(4.0);
    let steps = w.run_to_steady();
    assert_eq!(steps.len(), 1);
    assert!(matches!(
        steps[0],
        Action::SetTiming {
            timing: TimingMs {
                heartbeat_interval_ms: 140,
                election_timeout_ms: 1400
            },
            ..
        }
    ));
    // Latency doubles right after: the cool-down holds the change back ...
    w.rtt_p99_ms = Some(140.0);
    w.step();
    assert_eq!(w.reconcile().action, None);
    // ... until it has passed.
    w.now_ms += COOL_DOWN_MS;
    let p = w.reconcile();
    assert!(matches!(
        p.action,
        Some(Action::SetTiming {
            timing: TimingMs {
                heartbeat_interval_ms: 280,
                ..
            },
            ..
        })
    ));
}

/// Runs `change` on a healthy cluster uninterrupted, then again with the operator
/// killed in the middle of every single reconcile — after applying the children but
/// before executing the step, or after the step but before writing status — and a
/// fresh planner taking over from the world as it stands; every run must end in the
/// same cluster (and the world's invariants hold throughout).
fn resumes_after_a_restart_between_any_two_steps(replicas: i32, change: impl Fn(&mut World)) {
    let mut reference = World::running(replicas);
    change(&mut reference);
    let start = reference.clone();
    let total = reference.run_to_steady().len();
    let end = (
        member_ordinals(&reference),
        reference.statefulset,
        reference.volumes.clone(),
    );
    for crash_after in 0..total {
        for executed in [false, true] {
            let mut w = start.clone();
            for _ in 0..crash_after {
                w.reconcile();
                w.step();
            }
            // The operator dies mid-reconcile; its status write never happens.
            let observed = w.observe();
            let p = plan(&w.spec, Some(&w.status), &observed, &naming());
            w.apply_children(&p);
            if let (true, Some(a)) = (executed, &p.action) {
                w.execute(a, &observed);
            }
            w.step();
            w.run_to_steady();
            assert_eq!(
                (member_ordinals(&w), w.statefulset, w.volumes.clone()),
                end,
                "restart in step {crash_after} (step executed: {executed})"
            );
            let hash = template_hash(&w.spec);
            assert!(w.pods.values().all(|p| p.hash == hash));
        }
    }
}

#[test]
fn an_operator_restarted_between_any_two_steps_of_a_scale_up_resumes() {
    resumes_after_a_restart_between_any_two_steps(3, |w| {
        w.catch_up_per_step = 15_000;
        w.spec.replicas = 5;
    });
}

#[test]
fn an_operator_restarted_between_any_two_steps_of_a_scale_down_resumes() {
    resumes_after_a_restart_between_any_two_steps(5, |w| {
        w.leader = Some(id_of(4));
        w.spec.replicas = 3;
    });
}

#[test]
fn an_operator_restarted_between_any_two_steps_of_a_rolling_restart_resumes() {
    resumes_after_a_restart_between_any_two_steps(5, |w| w.spec.image = "raft-node:2".into());
}

#[test]
fn hibernation_stops_every_member_keeps_the_volumes_and_wakes_the_same_cluster() {
    let mut w = World::running(3);
    let members = member_ordinals(&w);
    w.spec.hibernate = true;
    // Asked for more members while hibernating: nothing happens until it wakes.
    w.spec.replicas = 5;
    let steps = w.run_to_steady();
    assert_eq!(kinds(&steps), ["scale the StatefulSet to 0"]);
    assert!(w.pods.is_empty());
    assert_eq!(
        w.volumes,
        BTreeSet::from([0, 1, 2]),
        "hibernation deletes no volume"
    );
    assert_eq!(member_ordinals(&w), members, "hibernation changes no membership");
    let p = w.reconcile();
    assert!(p.hibernated && p.action.is_none() && p.degraded.is_none());

    w.spec.hibernate = false;
    let steps = w.run_to_steady();
    let k = kinds(&steps);
    // The same three come back on their volumes first; then the scale-up goes on.
    assert_eq!(k[0], "scale the StatefulSet to 3");
    assert_eq!(
        k[1],
        "add demo-3 (http://demo-3.demo-peer.default.svc:2380) as a learner"
    );
    assert!(!steps.iter().any(|a| matches!(a, Action::DeleteVolumes { .. })));
    assert_eq!(member_ordinals(&w).len(), 5);
    assert!(w.leader.is_some());
}

#[test]
fn hibernation_waits_for_the_bootstrap() {
    let mut w = World::new(3);
    w.spec.hibernate = true;
    let p = w.reconcile();
    assert_eq!(p.action, Some(Action::Bootstrap { members: 3 }));
    let steps = w.run_to_steady();
    assert!(w.status.bootstrapped);
    assert!(kinds(&steps).contains(&"scale the StatefulSet to 0".to_string()));
    assert!(w.pods.is_empty());
    assert_eq!(w.volumes, BTreeSet::from([0, 1, 2]));
}

#[test]
fn an_operator_restarted_between_any_two_steps_of_hibernation_resumes() {
    resumes_after_a_restart_between_any_two_steps(3, |w| w.spec.hibernate = true);
}

#[test]
fn an_operator_restarted_between_any_two_steps_of_a_wake_resumes() {
    resumes_after_a_restart_between_any_two_steps(3, |w| {
        w.spec.hibernate = true;
        w.run_to_steady();
        w.spec.hibernate = false;
    });
}

fn backup_spec(schedule: &str) -> Option<BackupSpec> {
    Some(BackupSpec {
        schedule: schedule.into(),
        retention: Some(Retention {
            count: Some(2),
            max_age: None,
        }),
        destination: BackupDestination {
            path: Some("/backups".into()),
            s3: None,
        },
    })
}

fn backup_condition(w: &World) -> (String, String, String) {
    let c = w
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == backup::CONDITION)
        .expect("the BackupReady condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn next_backup_ms(w: &World) -> u64 {
    let text = w
        .status
        .backup_schedule
        .as_ref()
        .unwrap()
        .next_time
        .clone()
        .unwrap();
    let t: k8s_openapi::jiff::Timestamp = text.parse().unwrap();
    t.as_millisecond() as u64
}

#[test]
fn a_scheduled_backup_is_taken_when_due_from_a_follower_and_not_before() {
    let mut w = World::running(3);
    // Every 10 s (six fields: seconds first).
    w.spec.backup = backup_spec("*/10 * * * * *");
    let p = w.reconcile();
    let Some(BackupDecision::NotDue { next_ms }) = p.backup else {
        panic!("a new schedule starts from now: {:?}", p.backup)
    };
    assert!(next_ms > w.now_ms && next_ms <= w.now_ms + 10_000 && next_ms % 10_000 == 0);
    assert_eq!(next_backup_ms(&w), next_ms, "the status carries the schedule");
    assert!(w.backups.is_empty());
    for _ in 0..35 {
        w.step();
        w.reconcile();
    }
    // 35 s: three or four firings, each exactly at a multiple of 10 s, never earlier.
    let times: Vec<u64> = w.backups.iter().map(|(t, _)| *t).collect();
    assert!((3..=4).contains(&times.len()), "{times:?}");
    assert!(times.iter().all(|t| t % 10_000 == 0), "{times:?}");
    assert!(times.windows(2).all(|p| p[1] - p[0] == 10_000), "{times:?}");
    // From a healthy follower: the leader (demo-0) keeps its CPU for writes.
    assert!(w.backups.iter().all(|(_, m)| m != "demo-0"), "{:?}", w.backups);
    let last = w.status.last_backup.clone().unwrap();
    assert_eq!(last.time, rfc3339_from_ms(*times.last().unwrap()));
    assert!(next_backup_ms(&w) > w.now_ms);
    assert_eq!(backup_condition(&w).0, "True");
    // The operator restarted (a fresh planner, the same status) does not take an extra one.
    let before = w.backups.len();
    let mut restarted = w.clone();
    restarted.reconcile();
    assert_eq!(restarted.backups.len(), before);
}

#[test]
fn a_failing_backup_is_retried_with_growing_back_off_and_reported() {
    let mut w = World::running(3);
    w.spec.backup = backup_spec("0 0 * * *"); // daily at midnight UTC
    w.reconcile();
    let midnight = next_backup_ms(&w);
    assert_eq!(midnight % 86_400_000, 0);
    w.now_ms = midnight;
    w.backups_fail = true;
    let p = w.reconcile();
    assert!(
        matches!(p.backup, Some(BackupDecision::Take { attempt: 1, .. })),
        "{:?}",
        p.backup
    );
    assert_eq!(next_backup_ms(&w), midnight + 10_000, "first retry after 10 s");
    let (on, reason, message) = backup_condition(&w);
    assert_eq!((on.as_str(), reason.as_str()), ("False", "Failed"));
    assert!(
        message.contains("s3://bucket") && message.contains("connection refused"),
        "{message}"
    );
    // Not before the back-off.
    w.now_ms += 9_000;
    assert!(matches!(
        w.reconcile().backup,
        Some(BackupDecision::NotDue { .. })
    ));
    w.now_ms = midnight + 10_000;
    assert!(matches!(
        w.reconcile().backup,
        Some(BackupDecision::Take { attempt: 2, .. })
    ));
    assert_eq!(
        next_backup_ms(&w),
        midnight + 10_000 + 20_000,
        "the back-off doubles"
    );
    assert_eq!(w.status.backup_schedule.as_ref().unwrap().failures, 2);
    // The destination is back: the next attempt succeeds and the schedule resumes.
    w.backups_fail = false;
    w.now_ms = midnight + 30_000;
    assert!(matches!(
        w.reconcile().backup,
        Some(BackupDecision::Take { attempt: 3, .. })
    ));
    assert_eq!(w.backups.len(), 1);
    assert_eq!(next_backup_ms(&w), midnight + 86_400_000);
    let schedule = w.status.backup_schedule.clone().unwrap();
    assert_eq!((schedule.failures, schedule.last_error), (0, None));
    assert_eq!(backup_condition(&w).1, "Succeeded");
}

#[test]
fn the_retry_back_off_is_capped() {
    assert_eq!(backup::retry_delay(1).as_secs(), 10);
    assert_eq!(backup::retry_delay(2).as_secs(), 20);
    assert_eq!(backup::retry_delay(7).as_secs(), 600);
    assert_eq!(backup::retry_delay(1_000).as_secs(), 600);
}

#[test]
fn an_invalid_cron_is_refused_with_a_condition_and_nothing_is_done() {
    let mut w = World::running(3);
    w.spec.backup = backup_spec("every night at two");
    for _ in 0..5 {
        let p = w.reconcile();
        match &p.backup {
            Some(BackupDecision::Invalid { reason }) => {
                assert!(
                    reason.contains("spec.backup.schedule") && reason.contains("every night"),
                    "{reason}"
                )
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        // The orchestration step is not affected.
        assert_eq!(p.action, None);
        w.step();
    }
    assert!(w.backups.is_empty());
    let (on, reason, _) = backup_condition(&w);
    assert_eq!((on.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    // Fixed: the schedule starts.
    w.spec.backup = backup_spec("*/5 * * * * *");
    for _ in 0..6 {
        w.step();
        w.reconcile();
    }
    assert_eq!(w.backups.len(), 1);
}

#[test]
fn a_backup_due_without_a_healthy_member_waits_and_is_taken_once_there_is_one() {
    let mut w = World::running(3);
    w.spec.backup = backup_spec("*/10 * * * * *");
    w.reconcile();
    w.down.extend([0, 1, 2]);
    w.now_ms = next_backup_ms(&w) + 500;
    for _ in 0..3 {
        let p = w.reconcile();
        assert!(
            matches!(&p.backup, Some(BackupDecision::Wait { reason, .. }) if reason.contains("no healthy member")),
            "{:?}",
            p.backup
        );
        w.now_ms += 1_000;
    }
    assert!(w.backups.is_empty());
    assert_eq!(backup_condition(&w).1, "Waiting");
    w.down.clear();
    w.step();
    let p = w.reconcile();
    assert!(
        matches!(p.backup, Some(BackupDecision::Take { .. })),
        "{:?}",
        p.backup
    );
    assert_eq!(w.backups.len(), 1);
}

#[test]
fn a_hibernated_cluster_takes_no_backup() {
    let mut w = World::running(3);
    w.spec.backup = backup_spec("*/10 * * * * *");
    w.spec.hibernate = true;
    w.run_to_steady();
    for _ in 0..25 {
        w.step();
        w.reconcile();
    }
    assert!(w.backups.is_empty());
    assert!(backup_condition(&w).2.contains("hibernates"));
}

#[test]
fn a_backup_is_not_read_from_the_member_the_same_round_restarts() {
    // Two members: the one follower is both where a backup is read from and the first
    // member a rolling restart restarts.
    let mut w = World::running(2);
    w.spec.backup = backup_spec("*/10 * * * * *");
    w.reconcile();
    w.now_ms = next_backup_ms(&w);
    assert!(
        matches!(&w.reconcile().backup, Some(BackupDecision::Take { member, .. }) if member == "demo-1"),
        "a follower when nothing else happens"
    );
    w.spec.image = "raft-node:2".into();
    w.now_ms = next_backup_ms(&w);
    let p = w.reconcile();
    assert_eq!(p.action, Some(Action::RestartMember { ordinal: 1 }));
    assert!(
        matches!(&p.backup, Some(BackupDecision::Take { member, .. }) if member == "demo-0"),
        "the leader rather than the member being restarted: {:?}",
        p.backup
    );
}

fn from_backup(path: &str) -> Option<BootstrapSpec> {
    Some(BootstrapSpec {
        from_backup: Some(BackupSource {
            path: Some(path.into()),
            s3: None,
            sha256: None,
        }),
    })
}

fn restored_condition(w: &World) -> (String, String, String) {
    let c = w
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Restored")
        .unwrap_or_else(|| panic!("no Restored condition: {:#?}", w.status.conditions));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[test]
fn from_backup_restores_every_member_before_the_first_start_then_bootstraps_once() {
    let mut w = World::new(3);
    w.spec.bootstrap = from_backup("/backups/b.snap");
    let first = w.reconcile();
    match &first.action {
        Some(Action::Restore { members: 3, source }) => {
            assert_eq!(restore::location(source), "file:///backups/b.snap")
        }
        other => panic!("expected a restore of 3 members first, got {other:?}"),
    }
    assert_eq!(w.statefulset, None, "nothing is created while restoring");
    w.step();
    let steps = w.run_to_steady();
    assert_eq!(kinds(&steps), vec!["bootstrap 3 members"], "{steps:?}");
    assert!(w.status.bootstrapped);
    assert!(w.status.restore.as_ref().is_some_and(|r| r.succeeded));
    let (status, reason, message) = restored_condition(&w);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Restored"));
    assert!(
        message.contains("file:///backups/b.snap") && message.contains("not read again"),
        "{message}"
    );
    // An operator restarted later, or a changed fromBackup, never restores again.
    w.spec.bootstrap = from_backup("/backups/other.snap");
    let again = w.run_to_steady();
    assert!(
        again.iter().all(|a| !matches!(a, Action::Restore { .. })),
        "{again:?}"
    );
}

#[test]
fn a_backup_that_cannot_be_read_starts_nothing_says_why_and_is_retried_with_back_off() {
    let mut w = World::new(3);
    w.spec.bootstrap = from_backup("/backups/missing.snap");
    w.restore_fails = true;
    let mut attempts = 0;
    for _ in 0..60 {
        let p = w.reconcile();
        if matches!(p.action, Some(Action::Restore { .. })) {
            attempts += 1;
        }
        assert!(
            !matches!(p.action, Some(Action::Bootstrap { .. })),
            "bootstrapped without the data"
        );
        w.step();
    }
    assert_eq!(w.statefulset, None);
    assert!(w.pods.is_empty() && w.volumes.is_empty());
    assert!(!w.status.bootstrapped);
    // Back-off: 60 s saw the first attempt and the retries after 10 s and 20 s more.
    assert!((2..=4).contains(&attempts), "{attempts} attempts in 60 s");
    let (status, reason, message) = restored_condition(&w);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "BackupUnreadable"));
    assert!(
        message.contains("file:///backups/missing.snap") && message.contains("no member is started"),
        "{message}"
    );
    let r = w.status.restore.clone().unwrap();
    assert!(!r.succeeded && r.failures == attempts && r.next_attempt_time.is_some());
    // The backup appears: the next attempt restores, then the members start.
    w.restore_fails = false;
    let steps = w.run_to_steady();
    assert_eq!(
        kinds(&steps),
        vec![
            "restore the data of 3 members from file:///backups/missing.snap",
            "bootstrap 3 members"
        ]
    );
    assert_eq!(restored_condition(&w).0, "True");
}

#[test]
fn an_invalid_from_backup_is_refused_and_starts_nothing() {
    let mut w = World::new(3);
    w.spec.bootstrap = from_backup("relative/b.snap");
    for _ in 0..5 {
        let p = w.reconcile();
        assert!(
            matches!(&p.action, Some(Action::Refuse { reason }) if reason.contains("absolute")),
            "{p:?}"
        );
        w.step();
    }
    assert_eq!(w.statefulset, None);
    let (status, reason, _) = restored_condition(&w);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
}

#[test]
fn from_backup_on_a_running_cluster_is_ignored_and_the_condition_says_so() {
    let mut w = World::running(3);
    w.spec.bootstrap = from_backup("/backups/b.snap");
    let steps = w.run_to_steady();
    assert!(steps.is_empty(), "{steps:?}");
    let (status, reason, message) = restored_condition(&w);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Ignored"));
    assert!(message.contains("only before"), "{message}");
    assert!(w.status.restore.is_none());
}

#[test]
fn replicas_changed_between_the_restore_and_the_first_start_restore_again_for_every_member() {
    let mut w = World::new(3);
    w.spec.bootstrap = from_backup("/backups/b.snap");
    let first = w.reconcile();
    assert!(
        matches!(first.action, Some(Action::Restore { members: 3, .. })),
        "{first:?}"
    );
    // Before the members start, the spec asks for five: all five get the backup first.
    w.spec.replicas = 5;
    let steps = w.run_to_steady();
    assert_eq!(
        kinds(&steps)[..2],
        [
            "restore the data of 5 members from file:///backups/b.snap".to_string(),
            "bootstrap 5 members".to_string()
        ],
        "{steps:?}"
    );
    assert_eq!(w.status.restore.as_ref().unwrap().members, Some(5));
}

fn condition(w: &World, type_: &str) -> Option<(String, String, String)> {
    w.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[test]
fn a_member_whose_data_is_refused_is_removed_added_back_empty_wiped_and_promoted() {
    let mut w = World::running(3);
    w.unusable.insert(1);
    let steps = w.run_to_steady();
    let kinds = kinds(&steps);
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert!(
        kinds[0].starts_with("replace member demo-1") && kinds[0].contains("failed to start 6 times"),
        "{kinds:?}"
    );
    assert!(kinds[0].contains("record 12 fails its checksum"), "{kinds:?}");
    assert!(kinds[1].starts_with("add demo-1"), "{kinds:?}");
    assert_eq!(kinds[2], "delete the data of ordinal 1 so it starts again empty");
    assert_eq!(kinds[3], "promote demo-1 to voter");
    assert_eq!(member_ordinals(&w), vec![(0, false), (1, false), (2, false)]);
    assert!(w.status.replacement.is_none());
    let (status, reason, message) = condition(&w, "MemberReplaced").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Replaced"));
    assert!(
        message.contains("demo-1") && message.contains("failed to start"),
        "{message}"
    );
}

#[test]
fn an_operator_restarted_mid_replacement_goes_on_from_the_status() {
    let mut w = World::running(3);
    w.unusable.insert(2);
    // Two steps: removed, added back; then a fresh operator (the world is all it has).
    for _ in 0..2 {
        w.reconcile();
        w.step();
    }
    assert!(w.status.replacement.is_some());
    let mut fresh = w.clone();
    let steps = fresh.run_to_steady();
    assert_eq!(
        kinds(&steps),
        vec![
            "delete the data of ordinal 2 so it starts again empty",
            "promote demo-2 to voter"
        ]
    );
}

#[test]
fn no_replacement_without_a_healthy_quorum_of_the_other_voters() {
    let mut w = World::running(3);
    // demo-1 cannot start; demo-2 runs but is far behind: the leader still has a
    // quorum it hears from, but only itself is healthy besides demo-1.
    w.lagging.insert(2);
    for m in w.config.values_mut() {
        if m.ordinal == 2 {
            m.match_index = 0;
        }
    }
    w.unusable.insert(1);
    for _ in 0..10 {
        let p = w.reconcile();
        assert!(
            matches!(&p.action, Some(Action::Refuse { reason }) if reason.contains("healthy quorum") && reason.contains("demo-1")),
            "{p:?}"
        );
        w.step();
    }
    assert_eq!(w.voters().len(), 3, "nothing was removed");
    assert!(w.status.replacement.is_none());
}

#[test]
fn replacement_turned_off_leaves_the_member_and_says_why() {
    let mut w = World::running(3);
    w.spec.replacement = Some(ReplacementSpec { enabled: false });
    w.unusable.insert(1);
    w.step();
    let p = w.reconcile();
    assert!(!matches!(p.action, Some(Action::ReplaceMember { .. })), "{p:?}");
    assert!(
        p.degraded
            .as_deref()
            .is_some_and(|d| d.contains("spec.replacement.enabled is false")),
        "{p:?}"
    );
    assert_eq!(w.voters().len(), 3);
}

#[test]
fn two_broken_members_are_replaced_one_after_the_other() {
    let mut w = World::running(5);
    w.unusable.insert(1);
    w.unusable.insert(3);
    let steps = w.run_to_steady();
    let kinds = kinds(&steps);
    let first_done = kinds.iter().position(|k| k.starts_with("promote")).unwrap();
    let second = kinds
        .iter()
        .rposition(|k| k.starts_with("replace member"))
        .unwrap();
    assert!(second > first_done, "never two at once: {kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| k.starts_with("replace member")).count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(w.voters().len(), 5);
    assert!(w.unusable.is_empty());
}
