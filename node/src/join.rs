//! Members finding each other: the `kuberaft.membership.v1.Membership` service on the
//! peer port, joining an existing cluster, publishing a member's attributes, and
//! keeping the transport's addresses in step with the replicated member table.
//!
//! Joining (`--initial-cluster-state existing`, no data yet): after `MemberAdd`, the
//! new member asks the members named in `--initial-cluster` for the member list,
//! finds the entry whose peer URLs are its own advertised peer URLs, and starts
//! empty as that member (its id and the cluster id come from the answer). Until the
//! entry exists it logs that it waits for `MemberAdd` and asks again with back-off.
//!
//! Publishing: once running, a member proposes its name, client URLs and (for an
//! initial member) peer URLs through the leader until the table shows them, as etcd's
//! members publish themselves. `MemberList` then shows every started member's name.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kuberaft_proto::membership as pb;
use kuberaft_proto::membership::membership_client::MembershipClient;
use kuberaft_proto::membership::membership_server::{Membership, MembershipServer};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::members::{check_urls, same_url, Member, MemberCommand, MemberTable, TEXT_BYTES_MAX};
use crate::members::{member_list, InitialMembers};
use crate::raft::{NodeId, Role};
use crate::runtime::NodeHandle;
use crate::transport::{Directory, GrpcTransport, RemovedSet};

fn member_to_pb(member: &Member) -> pb::MemberInfo {
    pb::MemberInfo {
        id: member.id,
        name: member.name.clone(),
        peer_urls: member.peer_urls.clone(),
        client_urls: member.client_urls.clone(),
        is_learner: member.is_learner,
    }
}

/// Served on the peer port.
#[derive(Clone)]
pub struct MembershipService {
    node: NodeHandle,
    member_id: NodeId,
    cluster_id: u64,
    cluster_token: String,
    initial: Arc<InitialMembers>,
}

impl MembershipService {
    pub fn new(
        node: NodeHandle,
        member_id: NodeId,
        cluster_id: u64,
        cluster_token: String,
        initial: InitialMembers,
    ) -> Self {
        MembershipService {
            node,
            member_id,
            cluster_id,
            cluster_token,
            initial: Arc::new(initial),
        }
    }

    pub fn into_server(self) -> MembershipServer<MembershipService> {
        MembershipServer::new(self)
    }

    fn check_token(&self, token: &str) -> Result<(), Status> {
        if token != self.cluster_token {
            return Err(Status::failed_precondition(format!(
                "cluster token mismatch: the caller has {token:?}, this member has {:?}",
                self.cluster_token
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Membership for MembershipService {
    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        self.check_token(&request.get_ref().cluster_token)?;
        let status = self.node.status().borrow().clone();
        let table = self.node.members().borrow().clone();
        Ok(Response::new(pb::ListResponse {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            leader_id: status.leader.unwrap_or(0),
            members: member_list(&status, &table, &self.initial)
                .iter()
                .map(member_to_pb)
                .collect(),
        }))
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let r = request.into_inner();
        self.check_token(&r.cluster_token)?;
        if r.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster id mismatch: {:#x} is not {:#x}",
                r.cluster_id, self.cluster_id
            )));
        }
        let member = r
            .member
            .ok_or_else(|| Status::invalid_argument("no member given"))?;
        let status = self.node.status().borrow().clone();
        if status.role != Role::Leader {
            return Err(Status::failed_precondition(format!(
                "not the leader (leader: {:#x})",
                status.leader.unwrap_or(0)
            )));
        }
        if !status.membership.contains(member.id) {
            return Err(Status::not_found(format!("{:#x} is not a member", member.id)));
        }
        if member.name.is_empty() || member.name.len() > TEXT_BYTES_MAX {
            return Err(Status::invalid_argument("the name must have 1 to 1024 bytes"));
        }
        check_urls(&member.peer_urls).map_err(|e| Status::invalid_argument(format!("peer URLs: {e}")))?;
        check_urls(&member.client_urls).map_err(|e| Status::invalid_argument(format!("client URLs: {e}")))?;
        let index = self
            .node
            .propose_member(MemberCommand::Publish {
                id: member.id,
                name: member.name,
                peer_urls: member.peer_urls,
                client_urls: member.client_urls,
            })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::PublishResponse { index }))
    }
}

/// Who this member is in the cluster it joins.
#[derive(Clone, Debug)]
pub struct Joined {
    pub id: NodeId,
    pub cluster_id: u64,
    /// Peer URL of every other member.
    pub peers: HashMap<NodeId, String>,
}

async fn list_members(url: &str, token: &str) -> Result<pb::ListResponse, String> {
    let channel = crate::security::tls::peer_port_endpoint(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    MembershipClient::new(channel)
        .list(pb::ListRequest {
            cluster_token: token.to_string(),
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Asks the members at `seeds` (peer URLs) for the member list until one lists a
/// member with `own_peer_urls`, or `wait_max` passed.
pub async fn discover(
    token: &str,
    own_peer_urls: &[String],
    seeds: &[String],
    wait_max: Duration,
) -> anyhow::Result<Joined> {
    let deadline = Instant::now() + wait_max;
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut reasons = Vec::new();
        for seed in seeds {
            match list_members(seed, token).await {
                Ok(list) => {
                    let mine = list.members.iter().find(|m| {
                        m.peer_urls
                            .iter()
                            .any(|theirs| own_peer_urls.iter().any(|own| same_url(own, theirs)))
                    });
                    if let Some(me) = mine {
                        let peers = list
                            .members
                            .iter()
                            .filter(|m| m.id != me.id)
                            .filter_map(|m| m.peer_urls.first().map(|url| (m.id, url.clone())))
                            .collect();
                        tracing::info!(
                            id = format_args!("{:#x}", me.id),
                            cluster = format_args!("{:#x}", list.cluster_id),
                            learner = me.is_learner,
                            via = %seed,
                            "found this member in the cluster's member list: joining"
                        );
                        return Ok(Joined {
                            id: me.id,
                            cluster_id: list.cluster_id,
                            peers,
                        });
                    }
                    reasons.push(format!(
                        "{seed}: lists no member with peer URLs {own_peer_urls:?}"
                    ));
                }
                Err(e) => reasons.push(format!("{seed}: {e}")),
            }
        }
        if Instant::now() + backoff > deadline {
            anyhow::bail!(
                "--initial-cluster-state existing: this member was not found in the cluster within {} s ({}); \
                 add it first with `etcdctl member add NAME --peer-urls={}`",
                wait_max.as_secs(),
                reasons.join("; "),
                own_peer_urls.join(",")
            );
        }
        tracing::warn!(
            reasons = %reasons.join("; "),
            retry_in_ms = backoff.as_millis() as u64,
            "not in the cluster's member list yet: waiting for MemberAdd"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// What this member publishes about itself.
#[derive(Clone, Debug)]
pub struct Attributes {
    pub id: NodeId,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub cluster_id: u64,
    pub cluster_token: String,
}

impl Attributes {
    fn published_in(&self, table: &MemberTable) -> bool {
        table.get(self.id).is_some_and(|m| {
            m.name == self.name && m.client_urls == self.client_urls && !m.peer_urls.is_empty()
        })
    }
}

/// Publishes this member's attributes through the leader until the applied table
/// shows them (0.5 s between attempts, backing off to 5 s while they fail), or
/// shutdown.
pub async fn publish(
    node: NodeHandle,
    me: Attributes,
    initial: InitialMembers,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut members = node.members();
    let mut attempt = 0u32;
    loop {
        if me.published_in(&members.borrow_and_update()) {
            tracing::info!(name = %me.name, "published this member's name and client URLs");
            return;
        }
        let status = node.status().borrow().clone();
        if status.membership.contains(me.id) {
            if let Some(leader) = status.leader {
                let command = MemberCommand::Publish {
                    id: me.id,
                    name: me.name.clone(),
                    peer_urls: me.peer_urls.clone(),
                    client_urls: me.client_urls.clone(),
                };
                let result = if leader == me.id {
                    node.propose_member(command)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                } else {
                    let table = members.borrow().clone();
                    let list = member_list(&status, &table, &initial);
                    match list
                        .iter()
                        .find(|m| m.id == leader)
                        .and_then(|m| m.peer_urls.first())
                    {
                        Some(url) => publish_to(url, &me).await,
                        None => Err(format!("the peer URL of the leader {leader:#x} is unknown")),
                    }
                };
                if let Err(e) = result {
                    attempt += 1;
                    if attempt % 10 == 1 {
                        tracing::info!(error = %e, "publishing this member's attributes: will retry");
                    }
                }
            }
        }
        tokio::select! {
            // Backs off to 5 s while attempts fail.
            _ = tokio::time::sleep(Duration::from_millis(500 * u64::from(1 + attempt.min(9)))) => {}
            changed = members.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn publish_to(leader_peer_url: &str, me: &Attributes) -> Result<(), String> {
    let channel = crate::security::tls::peer_port_endpoint(leader_peer_url)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    MembershipClient::new(channel)
        .publish(pb::PublishRequest {
            cluster_token: me.cluster_token.clone(),
            cluster_id: me.cluster_id,
            member: Some(pb::MemberInfo {
                id: me.id,
                name: me.name.clone(),
                peer_urls: me.peer_urls.clone(),
                client_urls: me.client_urls.clone(),
                is_learner: false,
            }),
        })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Keeps the transport's peer addresses, the client-URL directory and the set of
/// removed ids in step with the applied member table, until the node stops.
pub async fn follow_members(
    node: NodeHandle,
    me: NodeId,
    transport: Arc<GrpcTransport>,
    directory: Directory,
    removed: RemovedSet,
) {
    let mut members = node.members();
    loop {
        let table = members.borrow_and_update().clone();
        for member in table.members().filter(|m| m.id != me) {
            if let Some(url) = member.peer_urls.first() {
                if transport.peer_url(member.id).as_deref() != Some(url.as_str()) {
                    tracing::info!(
                        id = format_args!("{:#x}", member.id),
                        %url,
                        "peer address from the member table"
                    );
                    transport.set_peer_url(member.id, url.clone());
                }
            }
            if !member.client_urls.is_empty() {
                directory
                    .lock()
                    .expect("not poisoned")
                    .insert(member.id, member.client_urls.clone());
            }
        }
        let gone: BTreeSet<NodeId> = table.removed().clone();
        *removed.lock().expect("not poisoned") = gone.into_iter().collect();
        if members.changed().await.is_err() {
            return;
        }
    }
}
