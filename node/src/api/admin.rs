//! `kuberaft.admin.v1.Admin`: the operator's and `raftctl`'s view of a member.
//!
//! - `Status` answers from what the runtime publishes (status, peers, timing and log
//!   `watch`es, the WAL's fsync histogram); it never waits on the core.
//! - `SetTiming` checks the values with the same rule as the flags
//!   ([`timing::timing_from_ms`]), proposes a Timing entry and answers once the leader
//!   has applied it; every other member switches when it learns the commit, and a
//!   restarted member comes back with it from its log.
//! - `TransferLeader` asks the leader to hand over (TimeoutNow) and answers once the
//!   target leads, or at the deadline.
//!
//! A follower forwards `SetTiming` and `TransferLeader` to the leader (one hop: a
//! forwarded request that reaches a non-leader fails with FAILED_PRECONDITION naming
//! the leader it knows), so tools may talk to any member.
//!
//! - `WatchEvents` streams what this member observes: LEADER_CHANGED (from the status
//!   `watch`), TIMING_CHANGED (from the timing `watch`), JOIN, LEAVE, PROMOTED and
//!   SNAPSHOT (from the runtime's log events), and on the leader FAILURE and RECOVERED
//!   (its peers' last contact, checked every [`PEER_CHECK_INTERVAL`]; rules in
//!   [`health`]). One recorder task per process keeps the last [`EVENTS_KEPT`] for
//!   replay and fans them out; a watcher that falls [`EVENTS_QUEUED_MAX`] behind gets
//!   DATA_LOSS and must watch again.
//! - `Status` reports per peer the round-trip times and stream state the transport
//!   measures ([`crate::transport::rtt`]) and the WAL's recent fsync latency.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, Semaphore};

use kuberaft_proto::admin as pb;
use kuberaft_proto::admin::admin_client::AdminClient;
use kuberaft_proto::admin::admin_server::{Admin, AdminServer};
use tonic::{Request, Response, Status};

use crate::log_events::LogEvent;
use crate::raft::{NodeId, ReplicationState, Role};
use crate::runtime::timing::{self, TICK_MS};
use crate::runtime::{self, NodeHandle, TimingSource, TimingState};
use crate::transport::rtt::PeerLinks;
use crate::transport::Directory;

mod health;

/// Metadata key set on a request a follower forwards to the leader.
const FORWARDED_HEADER: &str = "kuberaft-forwarded-by";
/// Longest a caller may ask `TransferLeader` to wait.
const TRANSFER_DEADLINE_MS_MAX: u64 = 120_000;
/// Longest `SetTiming` waits for its entry to be applied.
const SET_TIMING_WAIT_MIN: Duration = Duration::from_secs(5);
/// Past events kept for `WatchEvents { replay }`.
pub const EVENTS_KEPT: usize = 128;
/// Events a watcher may fall behind before its stream ends with DATA_LOSS.
pub const EVENTS_QUEUED_MAX: usize = 256;
/// Concurrent `WatchEvents` streams per member.
pub const WATCHERS_MAX: usize = 64;
/// Events buffered per stream between the fan-out and gRPC.
const WATCH_STREAM_BUFFER: usize = 32;
/// How often the leader looks for peers that failed or recovered.
pub const PEER_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Events this member observed: the recent ones for replay, and the live fan-out.
struct EventLog {
    recent: Mutex<VecDeque<pb::Event>>,
    live: broadcast::Sender<pb::Event>,
}

impl EventLog {
    fn new() -> Self {
        EventLog {
            recent: Mutex::new(VecDeque::with_capacity(EVENTS_KEPT)),
            live: broadcast::channel(EVENTS_QUEUED_MAX).0,
        }
    }

    fn publish(&self, event: pb::Event) {
        // Sent under the lock, so a subscriber sees each event once: replayed or live.
        let mut recent = self.recent.lock().expect("not poisoned");
        if recent.len() == EVENTS_KEPT {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        let _ = self.live.send(event);
    }

    /// The last `replay` events and a receiver of every later one.
    fn subscribe(&self, replay: usize) -> (Vec<pb::Event>, broadcast::Receiver<pb::Event>) {
        let recent = self.recent.lock().expect("not poisoned");
        let receiver = self.live.subscribe();
        let skip = recent.len().saturating_sub(replay);
        (recent.iter().skip(skip).cloned().collect(), receiver)
    }
}

#[derive(Clone)]
pub struct AdminService {
    node: NodeHandle,
    id: NodeId,
    name: String,
    cluster_id: u64,
    /// Names and peer URLs of the members this process knows of (`--initial-cluster`).
    members: BTreeMap<NodeId, (String, String)>,
    directory: Directory,
    started: Instant,
    events: Arc<EventLog>,
    watchers: Arc<Semaphore>,
    links: Arc<PeerLinks>,
}

impl AdminService {
    /// Also starts the task that records events (it ends when the node stops), so it
    /// must be called within a tokio runtime.
    pub fn new(
        node: NodeHandle,
        id: NodeId,
        name: String,
        cluster_id: u64,
        members: BTreeMap<NodeId, (String, String)>,
        directory: Directory,
    ) -> Self {
        let events = Arc::new(EventLog::new());
        // Subscribed here, so no event of the runtime is missed once `new` returns.
        let log_events = node.log_events();
        tokio::spawn(record_events(
            node.clone(),
            log_events,
            id,
            members.clone(),
            events.clone(),
        ));
        AdminService {
            node,
            id,
            name,
            cluster_id,
            members,
            directory,
            started: Instant::now(),
            events,
            watchers: Arc::new(Semaphore::new(WATCHERS_MAX)),
            links: Arc::default(),
        }
    }

    /// Where `Status` reads the peers' round-trip times and stream state (the
    /// transport's `TransportConfig::links`).
    pub fn with_peer_links(mut self, links: Arc<PeerLinks>) -> Self {
        self.links = links;
        self
    }

    pub fn into_server(self) -> AdminServer<AdminService> {
        AdminServer::new(self)
    }

    /// Name and peer URL of a member: from the replicated member table (members added
    /// by MemberAdd, names published at start), else from `--initial-cluster`.
    fn member_attributes(&self, id: NodeId) -> (String, String) {
        let (mut name, mut url) = self.members.get(&id).cloned().unwrap_or_default();
        if let Some(member) = self.node.members().borrow().get(id) {
            if !member.name.is_empty() {
                name = member.name.clone();
            }
            if let Some(first) = member.peer_urls.first() {
                url = first.clone();
            }
        }
        (name, url)
    }

    fn name_of(&self, id: NodeId) -> String {
        self.member_attributes(id).0
    }

    fn describe(&self, id: NodeId) -> String {
        match self.name_of(id) {
            name if !name.is_empty() => format!("{name} ({id:#x})"),
            _ => format!("{id:#x}"),
        }
    }

    fn election_timeout(&self) -> Duration {
        let ticks = self.node.status().borrow().timing.election_ticks;
        Duration::from_millis(u64::from(ticks) * TICK_MS)
    }

    /// Sends a request this follower cannot serve to the leader, once.
    async fn leader_client<T>(
        &self,
        request: &Request<T>,
        leader_hint: Option<NodeId>,
    ) -> Result<AdminClient<tonic::transport::Channel>, Status> {
        let leader = leader_hint.ok_or_else(|| Status::unavailable("no leader is known; retry shortly"))?;
        if request.metadata().get(FORWARDED_HEADER).is_some() {
            return Err(Status::failed_precondition(format!(
                "not the leader; the leader is {}",
                self.describe(leader)
            )));
        }
        let url = self
            .directory
            .lock()
            .expect("not poisoned")
            .get(&leader)
            .and_then(|urls| urls.first().cloned())
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "not the leader, and the client URL of the leader {} is unknown",
                    self.describe(leader)
                ))
            })?;
        let channel = crate::security::tls::client_port_endpoint(&url)?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| {
                Status::unavailable(format!("cannot reach the leader {}: {e}", self.describe(leader)))
            })?;
        Ok(AdminClient::new(channel))
    }

    fn forwarded<T>(&self, message: T) -> Request<T> {
        // With the caller's token, so the leader checks the same identity.
        let mut request = crate::security::auth::forward(message);
        if let Ok(value) = format!("{:x}", self.id).parse() {
            request.metadata_mut().insert(FORWARDED_HEADER, value);
        }
        request
    }

    /// The target named in a `TransferLeader` request (a name, or an id in hex with
    /// `0x` or in decimal); empty: the voter with the highest match index.
    fn resolve_target(&self, target: &str) -> Result<NodeId, Status> {
        let status = self.node.status().borrow().clone();
        let membership = &status.membership;
        if target.is_empty() {
            let best = self
                .node
                .peers()
                .into_iter()
                .filter(|p| membership.is_voter(p.id))
                .max_by_key(|p| (p.recent_active, p.match_index));
            return best
                .map(|p| p.id)
                .ok_or_else(|| Status::failed_precondition("there is no other voter to hand leadership to"));
        }
        let by_name = membership.members().find(|id| self.name_of(*id) == target);
        let by_id = match target.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => target.parse().ok(),
        };
        let id = by_name.or(by_id).filter(|id| membership.contains(*id));
        let Some(id) = id else {
            let mut known: Vec<String> = membership.members().map(|id| self.describe(id)).collect();
            known.sort();
            return Err(Status::not_found(format!(
                "{target:?} is not a member of this cluster (members: {})",
                known.join(", ")
            )));
        };
        if membership.is_learner(id) {
            return Err(Status::failed_precondition(format!(
                "{} is a learner; only a voter can lead",
                self.describe(id)
            )));
        }
        Ok(id)
    }
}

/// Turns changes of the status and timing `watch`es into events, until the node stops.
async fn record_events(
    node: NodeHandle,
    mut log_events: broadcast::Receiver<LogEvent>,
    id: NodeId,
    members: BTreeMap<NodeId, (String, String)>,
    events: Arc<EventLog>,
) {
    // The replicated member table first (members added later), then `--initial-cluster`.
    let table = node.members();
    let name_of = |member: NodeId| {
        table
            .borrow()
            .get(member)
            .map(|m| m.name.clone())
            .filter(|n| !n.is_empty())
            .or_else(|| members.get(&member).map(|(n, _)| n.clone()))
            .unwrap_or_default()
    };
    let mut status = node.status();
    let mut timing = node.timing();
    let mut membership = health::MembershipEvents::new(status.borrow().membership.learners.iter().copied());
    let mut detector = health::FailureDetector::default();
    let mut check_peers = tokio::time::interval(PEER_CHECK_INTERVAL);
    check_peers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader: Option<NodeId> = None;
    let mut timing_seen = {
        let state = timing.borrow_and_update();
        (state.timing, state.index)
    };
    loop {
        let now = status.borrow_and_update().clone();
        if let Some(new_leader) = now.leader.filter(|l| leader != Some(*l)) {
            leader = Some(new_leader);
            events.publish(pb::Event {
                kind: pb::EventKind::LeaderChanged as i32,
                time_unix_ms: unix_ms(SystemTime::now()),
                term: now.term,
                index: 0,
                member_id: new_leader,
                member_name: name_of(new_leader),
                reporter_id: id,
                timing: None,
                detail: format!("{} leads at term {}", name_of(new_leader), now.term),
            });
        }
        let state = timing.borrow_and_update().clone();
        if (state.timing, state.index) != timing_seen {
            timing_seen = (state.timing, state.index);
            let info = timing_info(&state);
            events.publish(pb::Event {
                kind: pb::EventKind::TimingChanged as i32,
                time_unix_ms: info.since_unix_ms,
                term: now.term,
                index: state.index,
                member_id: id,
                member_name: name_of(id),
                reporter_id: id,
                timing: Some(info),
                detail: format!(
                    "heartbeat {} ms, election {} ms",
                    info.heartbeat_interval_ms, info.election_timeout_ms
                ),
            });
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            changed = timing.changed() => if changed.is_err() { return },
            event = log_events.recv() => match event {
                Ok(event) => {
                    let (kind, member, detail) = membership.describe(&event);
                    let (LogEvent::ConfChangeApplied { index, term, .. }
                    | LogEvent::SnapshotBuilt { index, term }
                    | LogEvent::SnapshotInstalled { index, term }) = event;
                    let member = member.unwrap_or(id);
                    events.publish(pb::Event {
                        kind: kind as i32,
                        time_unix_ms: unix_ms(SystemTime::now()),
                        term,
                        index,
                        member_id: member,
                        member_name: name_of(member),
                        reporter_id: id,
                        timing: None,
                        detail,
                    });
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the event recorder fell behind the runtime; events lost");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = check_peers.tick() => {
                let now = status.borrow().clone();
                let heartbeat = Duration::from_millis(u64::from(now.timing.heartbeat_ticks) * TICK_MS);
                let election = Duration::from_millis(u64::from(now.timing.election_ticks) * TICK_MS);
                let leading = now.role == Role::Leader;
                let sightings: Vec<health::PeerSighting> = if leading {
                    node.peers()
                        .into_iter()
                        .map(|p| health::PeerSighting {
                            id: p.id,
                            contact_age: node.last_contact(p.id),
                            match_index: p.match_index,
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                for change in detector.check(Instant::now(), leading, &sightings, heartbeat, election) {
                    let detail = match change.kind {
                        pb::EventKind::Failure => format!(
                            "{} silent for {} ms (election timeout {} ms)",
                            name_of(change.id),
                            change.silent_for.as_millis(),
                            election.as_millis()
                        ),
                        _ => format!("{} answers again", name_of(change.id)),
                    };
                    events.publish(pb::Event {
                        kind: change.kind as i32,
                        time_unix_ms: unix_ms(SystemTime::now()),
                        term: now.term,
                        index: change.match_index,
                        member_id: change.id,
                        member_name: name_of(change.id),
                        reporter_id: id,
                        timing: None,
                        detail,
                    });
                }
            }
        }
    }
}

fn latency_stats(summary: &crate::stats::LatencySummary) -> pb::LatencyStats {
    pb::LatencyStats {
        ewma_ms: summary.ewma_ms,
        p50_ms: summary.p50_ms,
        p99_ms: summary.p99_ms,
        samples: summary.samples,
        window_ms: summary.window_ms,
    }
}

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn timing_info(state: &TimingState) -> pb::TimingInfo {
    pb::TimingInfo {
        heartbeat_interval_ms: state.timing.heartbeat_ticks * TICK_MS as u32,
        election_timeout_ms: state.timing.election_ticks * TICK_MS as u32,
        source: match state.source {
            TimingSource::Flags => pb::TimingSource::Flags,
            TimingSource::Admin => pb::TimingSource::Admin,
            TimingSource::Log => pb::TimingSource::Log,
        } as i32,
        index: state.index,
        since_unix_ms: unix_ms(state.since),
        tick_ms: TICK_MS as u32,
    }
}

fn to_status(error: runtime::Error, what: &str) -> Status {
    use crate::raft::Error as RaftError;
    match error {
        runtime::Error::Raft(RaftError::Timing(e)) => Status::invalid_argument(e.to_string()),
        runtime::Error::Raft(e @ (RaftError::NotVoter(_) | RaftError::AlreadyLeader)) => {
            Status::failed_precondition(e.to_string())
        }
        runtime::Error::Raft(e @ (RaftError::Busy(_) | RaftError::TransferInProgress)) => {
            Status::unavailable(format!("{what}: {e}; retry shortly"))
        }
        runtime::Error::ProposalDropped => Status::unavailable(format!(
            "{what}: leadership changed before the entry committed; it did not take effect, retry"
        )),
        runtime::Error::Stopped => Status::unavailable("the member is shutting down"),
        runtime::Error::NotLeader { .. } => Status::unavailable(format!("{what}: not the leader")),
        other => Status::internal(format!("{what}: {other}")),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.node.status().borrow().clone();
        let timing = self.node.timing().borrow().clone();
        let bounds = self.node.log_bounds();
        let membership = &status.membership;
        let role = match status.role {
            Role::Leader => pb::Role::Leader,
            Role::Candidate => pb::Role::Candidate,
            Role::PreCandidate => pb::Role::PreCandidate,
            Role::Follower if membership.is_learner(self.id) => pb::Role::Learner,
            Role::Follower => pb::Role::Follower,
        };
        let heartbeat = Duration::from_millis(u64::from(timing.timing.heartbeat_ticks) * TICK_MS);
        let election = Duration::from_millis(u64::from(timing.timing.election_ticks) * TICK_MS);
        let peers = if status.role == Role::Leader {
            let now = Instant::now();
            self.node
                .peers()
                .into_iter()
                .map(|p| {
                    let contact = self.node.last_contact(p.id);
                    let link = self.links.status(p.id, now);
                    let reachability = health::reachability(contact, link.as_ref(), heartbeat, election);
                    pb::PeerStatus {
                        id: p.id,
                        name: self.name_of(p.id),
                        learner: membership.is_learner(p.id),
                        match_index: p.match_index,
                        next_index: p.next_index,
                        inflight: p.inflight as u32,
                        replication_state: match p.state {
                            ReplicationState::Probe => pb::ReplicationState::Probe,
                            ReplicationState::Replicate => pb::ReplicationState::Replicate,
                            ReplicationState::Snapshot { .. } => pb::ReplicationState::Snapshot,
                        } as i32,
                        last_contact_ms: contact.map_or(0, |d| d.as_millis() as u64),
                        rtt: link.map(|l| latency_stats(&l.rtt)),
                        reachability: reachability as i32,
                        backoff_ms: link.map_or(0, |l| l.backoff_remaining.as_millis() as u64),
                        stream_up: link.is_some_and(|l| l.stream_up),
                        reconnect_failures: link.map_or(0, |l| l.reconnect_failures),
                        peer_url: self.member_attributes(p.id).1,
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let leader_id = status.leader.unwrap_or(0);
        Ok(Response::new(pb::StatusResponse {
            id: self.id,
            name: self.name.clone(),
            cluster_id: self.cluster_id,
            role: role as i32,
            term: status.term,
            leader_id,
            leader_name: status.leader.map(|id| self.name_of(id)).unwrap_or_default(),
            commit_index: status.commit,
            applied_index: status.applied,
            last_log_index: status.last_index,
            last_log_term: status.last_term,
            snapshot_index: bounds.snapshot_index,
            first_log_index: bounds.first_index,
            voters: membership.voters.iter().copied().collect(),
            learners: membership.learners.iter().copied().collect(),
            peers,
            fsync: Some(latency_stats(&self.node.fsync_recent())),
            timing: Some(timing_info(&timing)),
            uptime_seconds: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: self.node.read_local().revision(),
        }))
    }

    async fn set_timing(
        &self,
        request: Request<pb::SetTimingRequest>,
    ) -> Result<Response<pb::SetTimingResponse>, Status> {
        let r = request.get_ref().clone();
        let timing = timing::timing_from_ms(
            u64::from(r.heartbeat_interval_ms),
            u64::from(r.election_timeout_ms),
        )
        .map_err(|refused| {
            Status::invalid_argument(format!(
                "{}: {}; nothing changed",
                refused.value.field(),
                refused.reason
            ))
        })?;
        let wait = (self.election_timeout() * 5).max(SET_TIMING_WAIT_MIN);
        let proposed = tokio::time::timeout(wait, self.node.propose_timing(timing)).await;
        match proposed {
            Ok(Ok(index)) => {
                tracing::info!(
                    heartbeat_interval_ms = r.heartbeat_interval_ms,
                    election_timeout_ms = r.election_timeout_ms,
                    index,
                    reason = %r.reason,
                    "timing changed"
                );
                let state = self.node.timing().borrow().clone();
                Ok(Response::new(pb::SetTimingResponse {
                    timing: Some(timing_info(&state)),
                    index,
                }))
            }
            Ok(Err(runtime::Error::NotLeader { leader_hint })) => {
                let mut leader = self.leader_client(&request, leader_hint).await?;
                leader.set_timing(self.forwarded(r)).await
            }
            Ok(Err(e)) => Err(to_status(e, "timing not changed")),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the Timing entry was not committed within {} ms (no quorum?); it may still take effect",
                wait.as_millis()
            ))),
        }
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let r = request.get_ref().clone();
        let status = self.node.status().borrow().clone();
        if status.role != Role::Leader {
            let mut leader = self.leader_client(&request, status.leader).await?;
            return leader.transfer_leader(self.forwarded(r)).await;
        }
        let target = self.resolve_target(&r.target_name)?;
        if target == self.id {
            return Ok(Response::new(pb::TransferLeaderResponse {
                leader_id: self.id,
                leader_name: self.name.clone(),
                term: status.term,
            }));
        }
        let election = self.election_timeout();
        let deadline_ms = match r.deadline_ms {
            0 => (election * 3).as_millis() as u64,
            ms => ms.min(TRANSFER_DEADLINE_MS_MAX),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(deadline_ms);
        let mut watch = self.node.status();
        loop {
            // The core gives up after an election timeout; ask again until the deadline.
            let current = watch.borrow_and_update().clone();
            if current.role == Role::Leader {
                self.node
                    .transfer_leadership(target)
                    .await
                    .map_err(|e| to_status(e, "leadership not transferred"))?;
            }
            let round_end = (tokio::time::Instant::now() + election).min(deadline);
            let outcome = tokio::time::timeout_at(
                round_end,
                watch.wait_for(|s| s.leader.is_some_and(|l| l != self.id)),
            )
            .await
            .map(|waited| waited.map(|now| now.clone()));
            match outcome {
                Ok(Ok(now)) if now.leader == Some(target) => {
                    tracing::info!(to = %self.describe(target), term = now.term, "leadership transferred");
                    return Ok(Response::new(pb::TransferLeaderResponse {
                        leader_id: target,
                        leader_name: self.name_of(target),
                        term: now.term,
                    }));
                }
                Ok(Ok(now)) => {
                    let other = now.leader.unwrap_or(0);
                    return Err(Status::aborted(format!(
                        "leadership went to {} instead of {}",
                        self.describe(other),
                        self.describe(target)
                    )));
                }
                Ok(Err(_)) => return Err(Status::unavailable("the member is shutting down")),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    let leader = watch.borrow().leader;
                    return Err(Status::deadline_exceeded(format!(
                        "{} did not take over within {deadline_ms} ms; the leader is still {}",
                        self.describe(target),
                        leader.map_or("unknown".to_string(), |l| self.describe(l))
                    )));
                }
                Err(_) => continue,
            }
        }
    }

    type WatchEventsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Event, Status>>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!("already {WATCHERS_MAX} event watchers on this member"))
        })?;
        let replay = (request.get_ref().replay as usize).min(EVENTS_KEPT);
        let (past, mut live) = self.events.subscribe(replay);
        let (tx, rx) = mpsc::channel(WATCH_STREAM_BUFFER);
        tokio::spawn(async move {
            let _permit = permit;
            for event in past {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            loop {
                let received = tokio::select! {
                    received = live.recv() => received,
                    _ = tx.closed() => return,
                };
                let event = match received {
                    Ok(event) => Ok(event),
                    Err(broadcast::error::RecvError::Lagged(missed)) => Err(Status::data_loss(format!(
                        "this watcher fell {missed} events behind; watch again"
                    ))),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let end = event.is_err();
                if tx.send(event).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
