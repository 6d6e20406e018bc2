//! Talking to members: the admin `Status` call turned into the planner's
//! [`MemberObservation`], and the membership (etcd Cluster service), leadership and
//! timing calls the orchestration steps need. Every call has a deadline.
//!
//! [`observation_from_status`] is the one place that reads latency fields of the admin
//! API (RTT p99 of each peer, fsync p99), so a change of those fields touches only it.

use std::time::Duration;

use kuberaft_proto::admin::admin_client::AdminClient;
use kuberaft_proto::admin::{self, Reachability, StatusRequest, StatusResponse};
use kuberaft_proto::etcdserverpb::cluster_client::ClusterClient;
use kuberaft_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use kuberaft_proto::etcdserverpb::{
    MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest, SnapshotRequest, SnapshotResponse,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::adaptive::TimingMs;
use crate::plan::{MemberObservation, PeerObservation, Role};
use crate::{Error, Result};

/// Deadline of one call to a member (connect included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Leadership transfer and membership changes wait for a commit: a longer deadline.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// A backup stream: connect and the first answer within this (the member writes its
/// state to a temporary file before the first chunk); each later chunk is bounded by
/// the reader ([`crate::backup::CHUNK_TIMEOUT`]).
pub const SNAPSHOT_START_TIMEOUT: Duration = Duration::from_secs(60);

fn latency_p99(stats: Option<&admin::LatencyStats>) -> Option<f64> {
    stats.filter(|s| s.samples > 0).map(|s| s.p99_ms)
}

/// The admin API's answer as the planner sees it.
pub fn observation_from_status(s: &StatusResponse) -> MemberObservation {
    let role = match admin::Role::try_from(s.role).unwrap_or(admin::Role::Unspecified) {
        admin::Role::Leader => Role::Leader,
        admin::Role::Follower => Role::Follower,
        admin::Role::Candidate | admin::Role::PreCandidate => Role::Candidate,
        admin::Role::Learner => Role::Learner,
        admin::Role::Unspecified => Role::Unknown,
    };
    MemberObservation {
        id: s.id,
        name: s.name.clone(),
        role,
        term: s.term,
        leader_id: s.leader_id,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        last_log_index: s.last_log_index,
        last_log_term: s.last_log_term,
        voters: s.voters.clone(),
        learners: s.learners.clone(),
        peers: s
            .peers
            .iter()
            .map(|p| PeerObservation {
                id: p.id,
                name: p.name.clone(),
                peer_url: p.peer_url.clone(),
                learner: p.learner,
                match_index: p.match_index,
                reachable: Reachability::try_from(p.reachability).unwrap_or(Reachability::Unspecified)
                    != Reachability::Failed,
                rtt_p99_ms: latency_p99(p.rtt.as_ref()),
            })
            .collect(),
        fsync_p99_ms: latency_p99(s.fsync.as_ref()),
        timing: s.timing.as_ref().map_or(
            TimingMs {
                heartbeat_interval_ms: 0,
                election_timeout_ms: 0,
            },
            |t| TimingMs {
                heartbeat_interval_ms: t.heartbeat_interval_ms,
                election_timeout_ms: t.election_timeout_ms,
            },
        ),
    }
}

fn node_error(endpoint: &str, message: impl ToString) -> Error {
    Error::Node {
        endpoint: endpoint.to_string(),
        message: message.to_string(),
    }
}

/// How the operator (or `raftctl up`) reaches the members of one cluster: plain
/// HTTP/2, or TLS trusting the cluster's CA and, when there is one, presenting a client
/// certificate. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Access {
    tls: Option<ClientTlsConfig>,
}

impl Access {
    /// Plaintext (`http://` endpoints).
    pub fn plain() -> Access {
        Access::default()
    }

    /// TLS trusting `ca_pem`, with the client certificate `identity` (cert, key PEM).
    pub fn tls(ca_pem: &str, identity: Option<(&str, &str)>) -> Access {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        if let Some((cert, key)) = identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        Access { tls: Some(config) }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    async fn channel(&self, endpoint: &str, timeout: Duration) -> Result<Channel> {
        let mut builder = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| node_error(endpoint, e))?
            .connect_timeout(timeout)
            .timeout(timeout);
        if endpoint.starts_with("https://") {
            let Some(tls) = &self.tls else {
                return Err(node_error(endpoint, "an https:// endpoint but no TLS settings"));
            };
            builder = builder
                .tls_config(tls.clone())
                .map_err(|e| node_error(endpoint, e))?;
        }
        builder.connect().await.map_err(|e| {
            // tonic's transport error says "transport error"; the cause says why.
            let cause = std::error::Error::source(&e).map(|c| c.to_string());
            node_error(
                endpoint,
                cause.map_or_else(|| e.to_string(), |c| format!("{e}: {c}")),
            )
        })
    }

    /// One member's status.
    pub async fn status(&self, endpoint: &str) -> Result<MemberObservation> {
        let mut client = AdminClient::new(self.channel(endpoint, CALL_TIMEOUT).await?);
        let answer = client
            .status(StatusRequest {})
            .await
            .map_err(|e| node_error(endpoint, e.message()))?;
        Ok(observation_from_status(answer.get_ref()))
    }

    /// The status of every endpoint that answers within [`CALL_TIMEOUT`], in parallel.
    pub async fn statuses(&self, endpoints: &[String]) -> Vec<MemberObservation> {
        let calls = endpoints.iter().map(|e| self.status(e));
        futures::future::join_all(calls)
            .await
            .into_iter()
            .filter_map(|r| {
                r.map_err(|e| tracing::debug!(error = %e, "member did not answer"))
                    .ok()
            })
            .collect()
    }

    /// etcd MemberAdd with isLearner; returns the new member's id.
    pub async fn add_learner(&self, endpoint: &str, peer_url: &str) -> Result<u64> {
        let mut client = ClusterClient::new(self.channel(endpoint, CHANGE_TIMEOUT).await?);
        let answer = client
            .member_add(MemberAddRequest {
                peer_ur_ls: vec![peer_url.to_string()],
                is_learner: true,
            })
            .await
            .map_err(|e| node_error(endpoint, e.message()))?;
        Ok(answer.get_ref().member.as_ref().map_or(0, |m| m.id))
    }

    pub async fn promote(&self, endpoint: &str, id: u64) -> Result<()> {
        let mut client = ClusterClient::new(self.channel(endpoint, CHANGE_TIMEOUT).await?);
        client
            .member_promote(MemberPromoteRequest { id })
            .await
            .map_err(|e| node_error(endpoint, e.message()))?;
        Ok(())
    }

    pub async fn remove(&self, endpoint: &str, id: u64) -> Result<()> {
        let mut client = ClusterClient::new(self.channel(endpoint, CHANGE_TIMEOUT).await?);
        client
            .member_remove(MemberRemoveRequest { id })
            .await
            .map_err(|e| node_error(endpoint, e.message()))?;
        Ok(())
    }

    pub async fn transfer_leader(&self, endpoint: &str, to_name: &str) -> Result<()> {
        let mut client = AdminClient::new(self.channel(endpoint, CHANGE_TIMEOUT).await?);
        client
            .transfer_leader(admin::TransferLeaderRequest {
                target_name: to_name.to_string(),
                deadline_ms: CHANGE_TIMEOUT.as_millis() as u64 - 1_000,
            })
            .await
            .map_err(|e| node_error(endpoint, e.message()))?;
        Ok(())
    }

    /// etcd Maintenance.Snapshot: the member's state as a stream of chunks (the first
    /// one's header names the revision the backup holds). Nothing is buffered here: the
    /// caller reads one chunk at a time.
    pub async fn snapshot(&self, endpoint: &str) -> Result<tonic::Streaming<SnapshotResponse>> {
        let mut client = MaintenanceClient::new(self.channel(endpoint, SNAPSHOT_START_TIMEOUT).await?)
            .max_decoding_message_size(4 << 20);
        let answer = client
            .snapshot(SnapshotRequest {})
            .await
            .map_err(|e| node_error(endpoint, e.message()))?;
        Ok(answer.into_inner())
    }

    pub async fn set_timing(&self, endpoint: &str, timing: TimingMs, reason: &str) -> Result<()> {
        let mut client = AdminClient::new(self.channel(endpoint, CHANGE_TIMEOUT).await?);
        client
            .set_timing(admin::SetTimingRequest {
                heartbeat_interval_ms: timing.heartbeat_interval_ms,
                election_timeout_ms: timing.election_timeout_ms,
                reason: reason.to_string(),
            })
            .await
            .map_err(|e| node_error(endpoint, e.message()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuberaft_proto::admin::{LatencyStats, PeerStatus, TimingInfo};

    fn stats(p99_ms: f64, samples: u64) -> Option<LatencyStats> {
        Some(LatencyStats {
            p99_ms,
            samples,
            ..Default::default()
        })
    }

    #[test]
    fn the_adapter_reads_roles_peers_latency_and_timing_from_the_admin_status() {
        let status = StatusResponse {
            id: 7,
            name: "demo-0".into(),
            role: admin::Role::Leader as i32,
            term: 3,
            leader_id: 7,
            commit_index: 50,
            last_log_index: 52,
            last_log_term: 3,
            voters: vec![7, 8],
            learners: vec![9],
            peers: vec![
                PeerStatus {
                    id: 8,
                    name: "demo-1".into(),
                    match_index: 49,
                    reachability: Reachability::Ok as i32,
                    rtt: stats(4.5, 10),
                    peer_url: "http://demo-1:2380".into(),
                    ..Default::default()
                },
                PeerStatus {
                    id: 9,
                    learner: true,
                    reachability: Reachability::Failed as i32,
                    // No samples yet: no latency, not a zero.
                    rtt: stats(0.0, 0),
                    ..Default::default()
                },
            ],
            fsync: stats(2.0, 100),
            timing: Some(TimingInfo {
                heartbeat_interval_ms: 100,
                election_timeout_ms: 1000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = observation_from_status(&status);
        assert_eq!((m.id, m.role, m.term, m.commit_index), (7, Role::Leader, 3, 50));
        assert_eq!((m.last_log_index, m.last_log_term), (52, 3));
        assert_eq!((m.voters, m.learners), (vec![7, 8], vec![9]));
        assert_eq!(m.fsync_p99_ms, Some(2.0));
        assert_eq!(m.timing.election_timeout_ms, 1000);
        assert_eq!(
            (
                m.peers[0].reachable,
                m.peers[0].rtt_p99_ms,
                m.peers[0].match_index
            ),
            (true, Some(4.5), 49)
        );
        assert_eq!(
            (m.peers[1].reachable, m.peers[1].rtt_p99_ms, m.peers[1].learner),
            (false, None, true)
        );
    }
}
