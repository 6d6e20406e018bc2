//! The etcd v3 Cluster service: `MemberList`, `MemberAdd` (with `isLearner`),
//! `MemberRemove`, `MemberUpdate` and `MemberPromote`.
//!
//! Members are the Raft configuration (ids) joined with the replicated member table
//! ([`crate::members`]: names, peer and client URLs). `MemberList` answers from what
//! this member knows, like etcd 3.4. The changes run on the leader (a follower
//! forwards them once), one at a time, and answer once the change is applied there:
//!
//! - `MemberAdd` draws a new random id, proposes the new member's peer URLs, then the
//!   `ConfChange` (AddLearner or AddVoter). The new member is then started with
//!   `--initial-cluster-state existing`; it finds its id by its peer URLs.
//! - `MemberPromote` is refused with etcd's error while the learner has not caught up.
//! - `MemberRemove` of a member that then finds out stops it ("this member was
//!   removed from the cluster").
//!
//! Errors carry etcd's codes and messages ("etcdserver: Peer URLs already exists",
//! "etcdserver: member not found", "etcdserver: unhealthy cluster", ...).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kuberaft_proto::etcdserverpb as pb;
use kuberaft_proto::etcdserverpb::cluster_client::ClusterClient;
use kuberaft_proto::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use tonic::{Request, Response, Status};

use crate::members::{check_urls, member_list, same_url, InitialMembers, Member, MemberCommand};
use crate::raft::{ConfChange, ConfChangeError, Error as RaftError, NodeId, Role};
use crate::runtime::{self, NodeHandle};
use crate::transport::Directory;

/// Metadata key set on a request a follower forwards to the leader.
const FORWARDED_HEADER: &str = "kuberaft-cluster-forwarded-by";
/// How long a change waits for the previous one (or for the leader's first commit).
const CHANGE_RETRY_FOR: Duration = Duration::from_secs(5);
/// How long a change waits to be applied.
const APPLY_WAIT: Duration = Duration::from_secs(15);
/// Learners at a time, as in etcd 3.4.
pub const LEARNERS_MAX: usize = 1;

pub fn member_to_pb(member: &Member) -> pb::Member {
    pb::Member {
        id: member.id,
        name: member.name.clone(),
        peer_ur_ls: member.peer_urls.clone(),
        client_ur_ls: member.client_urls.clone(),
        is_learner: member.is_learner,
    }
}

fn member_not_found() -> Status {
    Status::not_found("etcdserver: member not found")
}

fn bad_urls() -> Status {
    Status::invalid_argument("etcdserver: given member URLs are invalid")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    Add,
    Remove,
    Promote,
}

/// etcd's answer for a refused membership change.
fn change_status(error: runtime::Error, kind: ChangeKind) -> Status {
    match error {
        runtime::Error::Raft(RaftError::WouldLoseQuorum { .. })
        | runtime::Error::Raft(RaftError::ConfChange(ConfChangeError::WouldRemoveLastVoter)) => match kind {
            ChangeKind::Remove => Status::failed_precondition(
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            _ => Status::unavailable("etcdserver: unhealthy cluster"),
        },
        runtime::Error::Raft(RaftError::LearnerNotCaughtUp(_)) => Status::failed_precondition(
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        runtime::Error::Raft(RaftError::ConfChange(ConfChangeError::NotLearner(_))) => {
            Status::failed_precondition("etcdserver: can only promote a learner member")
        }
        runtime::Error::Raft(RaftError::ConfChange(ConfChangeError::NotMember(_))) => member_not_found(),
        runtime::Error::Raft(RaftError::ConfChange(ConfChangeError::AlreadyMember(_))) => {
            Status::failed_precondition("etcdserver: member ID already exist")
        }
        runtime::Error::Raft(RaftError::ChangeInProgress(_))
        | runtime::Error::Raft(RaftError::NoCommitInTerm) => {
            Status::unavailable("etcdserver: unhealthy cluster")
        }
        runtime::Error::NotLeader { .. }
        | runtime::Error::ProposalDropped
        | runtime::Error::Raft(RaftError::TransferInProgress) => {
            Status::unavailable("etcdserver: leader changed")
        }
        runtime::Error::Stopped => Status::unavailable("etcdserver: server stopped"),
        other => Status::internal(other.to_string()),
    }
}

#[derive(Clone)]
pub struct ClusterService {
    node: NodeHandle,
    member_id: NodeId,
    cluster_id: u64,
    initial: Arc<InitialMembers>,
    directory: Directory,
    /// One change at a time from this member.
    changes: Arc<tokio::sync::Mutex<()>>,
}

impl ClusterService {
    pub fn new(
        node: NodeHandle,
        member_id: NodeId,
        cluster_id: u64,
        initial: InitialMembers,
        directory: Directory,
    ) -> Self {
        ClusterService {
            node,
            member_id,
            cluster_id,
            initial: Arc::new(initial),
            directory,
            changes: Arc::default(),
        }
    }

    pub fn into_server(self) -> ClusterServer<ClusterService> {
        ClusterServer::new(self).max_decoding_message_size(super::DECODING_BYTES_MAX)
    }

    /// As etcd's Cluster service: cluster ID, member ID and term, no revision.
    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: 0,
            raft_term: self.node.status().borrow().term,
        })
    }

    fn members(&self) -> Vec<Member> {
        let status = self.node.status().borrow().clone();
        let table = self.node.members().borrow().clone();
        member_list(&status, &table, &self.initial)
    }

    fn members_pb(&self) -> Vec<pb::Member> {
        self.members().iter().map(member_to_pb).collect()
    }

    /// A client for the leader when this member is not it; `None` on the leader.
    async fn leader_client<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<ClusterClient<tonic::transport::Channel>>, Status> {
        let status = self.node.status().borrow().clone();
        if status.role == Role::Leader {
            return Ok(None);
        }
        let leader = status
            .leader
            .ok_or_else(|| Status::unavailable("etcdserver: no leader"))?;
        if request.metadata().get(FORWARDED_HEADER).is_some() {
            return Err(Status::unavailable("etcdserver: leader changed"));
        }
        let url = self
            .directory
            .lock()
            .expect("not poisoned")
            .get(&leader)
            .and_then(|urls| urls.first().cloned())
            .ok_or_else(|| Status::unavailable("etcdserver: no leader"))?;
        let channel = crate::security::tls::client_port_endpoint(&url)?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|_| Status::unavailable("etcdserver: no leader"))?;
        Ok(Some(ClusterClient::new(channel)))
    }

    fn forwarded<T>(&self, message: T) -> Request<T> {
        // With the caller's token, so the leader checks the same identity.
        let mut request = crate::security::auth::forward(message);
        if let Ok(value) = format!("{:x}", self.member_id).parse() {
            request.metadata_mut().insert(FORWARDED_HEADER, value);
        }
        request
    }

    /// Proposes a change, retrying while the previous change (or the new leader's
    /// first commit) is still on its way, and waits for it to be applied here.
    async fn propose_change(&self, change: ConfChange, kind: ChangeKind) -> Result<(), Status> {
        let deadline = Instant::now() + CHANGE_RETRY_FOR;
        loop {
            let proposed = tokio::time::timeout(APPLY_WAIT, self.node.propose_conf_change(change)).await;
            match proposed {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(runtime::Error::Raft(RaftError::ChangeInProgress(_) | RaftError::NoCommitInTerm)))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => return Err(change_status(e, kind)),
                Err(_) => return Err(Status::unavailable("etcdserver: request timed out")),
            }
        }
    }

    async fn propose_member(&self, command: MemberCommand) -> Result<(), Status> {
        match tokio::time::timeout(APPLY_WAIT, self.node.propose_member(command)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(change_status(e, ChangeKind::Add)),
            Err(_) => Err(Status::unavailable("etcdserver: request timed out")),
        }
    }

    /// Refuses peer URLs another member already has. (Attributes left by a `MemberAdd`
    /// whose change was refused do not count: they never became a member.)
    fn check_peer_urls_free(&self, urls: &[String], except: NodeId) -> Result<(), Status> {
        let taken = self.members().into_iter().filter(|m| m.id != except).any(|m| {
            m.peer_urls
                .iter()
                .any(|mine| urls.iter().any(|theirs| same_url(mine, theirs)))
        });
        if taken {
            return Err(Status::failed_precondition(
                "etcdserver: Peer URLs already exists",
            ));
        }
        Ok(())
    }

    /// Refuses a change after which the voters this leader heard from recently would
    /// not form a quorum (etcd's strict reconfiguration check). Tighter than the
    /// core's own check (which sees a member go quiet only after an election
    /// timeout), so a member killed a moment ago is not counted: adding a voter then
    /// could leave a cluster that can commit nothing, not even the change's undo.
    fn check_started_quorum(&self, change: ConfChange, kind: ChangeKind) -> Result<(), Status> {
        let status = self.node.status().borrow().clone();
        let next = status
            .membership
            .apply_change(&change)
            .map_err(|e| change_status(runtime::Error::Raft(e.into()), kind))?;
        let election =
            Duration::from_millis(u64::from(status.timing.election_ticks) * crate::runtime::timing::TICK_MS);
        let window = election / 2;
        let added = match change {
            ConfChange::AddVoter(id) => Some(id),
            _ => None,
        };
        let started = next
            .voters
            .iter()
            .filter(|&&v| {
                v == self.member_id
                    || (Some(v) != added && self.node.last_contact(v).is_some_and(|ago| ago < window))
            })
            .count();
        if started < next.quorum() {
            return Err(change_status(
                runtime::Error::Raft(RaftError::WouldLoseQuorum {
                    active: started,
                    voters: next.voters.len(),
                }),
                kind,
            ));
        }
        Ok(())
    }

    fn new_member_id(&self) -> NodeId {
        let status = self.node.status().borrow().clone();
        let table = self.node.members().borrow().clone();
        loop {
            let id: u64 = rand::random();
            if id != 0 && !status.membership.contains(id) && !table.is_removed(id) && table.get(id).is_none()
            {
                return id;
            }
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        check_urls(&request.get_ref().peer_ur_ls).map_err(|_| bad_urls())?;
        if let Some(mut leader) = self.leader_client(&request).await? {
            // As etcd: the header names the member the client asked.
            return leader
                .member_add(self.forwarded(request.into_inner()))
                .await
                .map(|mut response| {
                    response.get_mut().header = self.header();
                    response
                });
        }
        let r = request.into_inner();
        let _one_at_a_time = self.changes.lock().await;
        self.check_peer_urls_free(&r.peer_ur_ls, 0)?;
        if r.is_learner && self.members().iter().filter(|m| m.is_learner).count() >= LEARNERS_MAX {
            return Err(Status::failed_precondition(
                "etcdserver: too many learner members in cluster",
            ));
        }
        let id = self.new_member_id();
        if !r.is_learner {
            self.check_started_quorum(ConfChange::AddVoter(id), ChangeKind::Add)?;
        }
        self.propose_member(MemberCommand::Add {
            id,
            peer_urls: r.peer_ur_ls.clone(),
            is_learner: r.is_learner,
        })
        .await?;
        let change = if r.is_learner {
            ConfChange::AddLearner(id)
        } else {
            ConfChange::AddVoter(id)
        };
        self.propose_change(change, ChangeKind::Add).await?;
        tracing::info!(
            id = format_args!("{id:#x}"),
            peer_urls = ?r.peer_ur_ls,
            learner = r.is_learner,
            "member added"
        );
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member: Some(pb::Member {
                id,
                name: String::new(),
                peer_ur_ls: r.peer_ur_ls,
                client_ur_ls: Vec::new(),
                is_learner: r.is_learner,
            }),
            members: self.members_pb(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        if let Some(mut leader) = self.leader_client(&request).await? {
            // As etcd: the header names the member the client asked.
            return leader
                .member_remove(self.forwarded(request.into_inner()))
                .await
                .map(|mut response| {
                    response.get_mut().header = self.header();
                    response
                });
        }
        let id = request.into_inner().id;
        let _one_at_a_time = self.changes.lock().await;
        if !self.node.status().borrow().membership.contains(id) {
            return Err(member_not_found());
        }
        self.check_started_quorum(ConfChange::Remove(id), ChangeKind::Remove)?;
        self.propose_change(ConfChange::Remove(id), ChangeKind::Remove)
            .await?;
        tracing::info!(id = format_args!("{id:#x}"), "member removed");
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header(),
            members: self.members_pb(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        check_urls(&request.get_ref().peer_ur_ls).map_err(|_| bad_urls())?;
        if let Some(mut leader) = self.leader_client(&request).await? {
            // As etcd: the header names the member the client asked.
            return leader
                .member_update(self.forwarded(request.into_inner()))
                .await
                .map(|mut response| {
                    response.get_mut().header = self.header();
                    response
                });
        }
        let r = request.into_inner();
        let _one_at_a_time = self.changes.lock().await;
        if !self.node.status().borrow().membership.contains(r.id) {
            return Err(member_not_found());
        }
        self.check_peer_urls_free(&r.peer_ur_ls, r.id)?;
        self.propose_member(MemberCommand::UpdatePeerUrls {
            id: r.id,
            peer_urls: r.peer_ur_ls.clone(),
        })
        .await?;
        tracing::info!(id = format_args!("{:#x}", r.id), peer_urls = ?r.peer_ur_ls, "member updated");
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header(),
            members: self.members_pb(),
        }))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(),
            members: self.members_pb(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        if let Some(mut leader) = self.leader_client(&request).await? {
            // As etcd: the header names the member the client asked.
            return leader
                .member_promote(self.forwarded(request.into_inner()))
                .await
                .map(|mut response| {
                    response.get_mut().header = self.header();
                    response
                });
        }
        let id = request.into_inner().id;
        let _one_at_a_time = self.changes.lock().await;
        let membership = self.node.status().borrow().membership.clone();
        if !membership.contains(id) {
            return Err(member_not_found());
        }
        if !membership.is_learner(id) {
            return Err(Status::failed_precondition(
                "etcdserver: can only promote a learner member",
            ));
        }
        self.check_started_quorum(ConfChange::Promote(id), ChangeKind::Promote)?;
        self.propose_change(ConfChange::Promote(id), ChangeKind::Promote)
            .await?;
        tracing::info!(id = format_args!("{id:#x}"), "learner promoted");
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header(),
            members: self.members_pb(),
        }))
    }
}
