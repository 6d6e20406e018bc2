//! The admin API (`kuberaft.admin.v1`) against real `raft-node` processes on
//! 127.0.0.1: live timing through the log, and leadership transfer.
//!
//! Every wait is bounded, and every process started here is ended by its PID when
//! the test ends (also on failure).

mod support;

use std::time::{Duration, Instant};

use kuberaft_proto::admin::admin_client::AdminClient;
use kuberaft_proto::admin::{
    Event, EventKind, Role, SetTimingRequest, StatusRequest, StatusResponse, TimingSource,
    TransferLeaderRequest, WatchEventsRequest,
};
use support::ProcCluster;
use tonic::transport::Channel;

/// The admin API's view of a process cluster.
trait AdminOps {
    async fn admin(&self, i: usize) -> AdminClient<Channel>;
    async fn status(&self, i: usize) -> Option<StatusResponse>;
    async fn wait_for_agreed_leader(&self, among: &[usize]) -> usize;
    async fn wait_for_status(&self, i: usize, what: &str, check: impl Fn(&StatusResponse) -> bool);
}

impl AdminOps for ProcCluster {
    async fn admin(&self, i: usize) -> AdminClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let endpoint = format!("http://127.0.0.1:{}", self.members[i].client);
            let connected = tonic::transport::Endpoint::from_shared(endpoint)
                .unwrap()
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(10))
                .connect()
                .await;
            match connected {
                Ok(channel) => return AdminClient::new(channel),
                Err(e) if Instant::now() > deadline => panic!("m{i} never listened: {e}\n{}", self.log(i)),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn status(&self, i: usize) -> Option<StatusResponse> {
        let mut client = self.admin(i).await;
        client.status(StatusRequest {}).await.ok().map(|r| r.into_inner())
    }

    /// Waits until every listed member names the same leader, which says it leads.
    async fn wait_for_agreed_leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let mut leaders = Vec::new();
            for &i in among {
                if let Some(s) = self.status(i).await {
                    leaders.push((s.leader_id, s.role == Role::Leader as i32, s.id));
                }
            }
            if leaders.len() == among.len() && leaders.iter().all(|l| l.0 != 0 && l.0 == leaders[0].0) {
                if let Some(pos) = leaders.iter().position(|l| l.1 && l.2 == l.0) {
                    return among[pos];
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no agreed leader among {among:?} within 20 s");
    }

    /// Waits until `check` holds for member `i`'s status.
    async fn wait_for_status(&self, i: usize, what: &str, check: impl Fn(&StatusResponse) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(s) = self.status(i).await {
                if check(&s) {
                    return;
                }
                last = Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "m{i}: {what} not reached within 10 s; last status {last:#?}\n{}",
            self.log(i)
        );
    }
}

fn timing_of(s: &StatusResponse) -> (u32, u32) {
    let t = s.timing.unwrap_or_default();
    (t.heartbeat_interval_ms, t.election_timeout_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_timing_reaches_every_member_survives_a_restart_and_a_bad_value_changes_nothing() {
    let mut cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_agreed_leader(&[0, 1, 2]).await;
    for i in 0..3 {
        let s = cluster.status(i).await.unwrap();
        assert_eq!(timing_of(&s), (100, 1000), "flags' timing on m{i}");
        assert_eq!(s.timing.unwrap().source, TimingSource::Flags as i32);
    }

    // Sent to a follower: forwarded to the leader.
    let follower = (leader + 1) % 3;
    let mut client = cluster.admin(follower).await;
    let response = client
        .set_timing(SetTimingRequest {
            heartbeat_interval_ms: 50,
            election_timeout_ms: 500,
            reason: "test".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("SetTiming through a follower: {e}"))
        .into_inner();
    let index = response.index;
    assert!(index > 0);
    let applied = response.timing.unwrap();
    assert_eq!(
        (applied.heartbeat_interval_ms, applied.election_timeout_ms),
        (50, 500)
    );
    for i in 0..3 {
        cluster
            .wait_for_status(i, "timing 50/500", |s| {
                timing_of(s) == (50, 500) && s.timing.unwrap().index == index
            })
            .await;
    }

    // Refused values: named in the error, nothing changes anywhere.
    let cases = [
        (50, 100, "election_timeout_ms"),
        (15, 500, "heartbeat_interval_ms"),
        (50, 505, "election_timeout_ms"),
        (100, 60_000, "election_timeout_ms"),
    ];
    for (heartbeat, election, field) in cases {
        for target in [leader, follower] {
            let error = cluster
                .admin(target)
                .await
                .set_timing(SetTimingRequest {
                    heartbeat_interval_ms: heartbeat,
                    election_timeout_ms: election,
                    reason: "test".into(),
                })
                .await
                .expect_err("an invalid timing must be refused");
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error}");
            assert!(error.message().contains(field), "{heartbeat}/{election}: {error}");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let s = cluster.status(i).await.unwrap();
        assert_eq!(timing_of(&s), (50, 500), "m{i} after refused values");
        assert_eq!(s.timing.unwrap().index, index, "m{i}: no new Timing entry");
    }

    // A restarted member (started with the flags' 100/1000) comes back with the log's.
    cluster.kill(follower);
    cluster.spawn(follower);
    cluster
        .wait_for_status(follower, "timing 50/500 after a restart", |s| {
            let t = s.timing.unwrap();
            timing_of(s) == (50, 500)
                && t.index == index
                && (t.source == TimingSource::Log as i32 || t.source == TimingSource::Admin as i32)
        })
        .await;
    cluster.wait_for_agreed_leader(&[0, 1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_to_a_named_member_works_and_to_a_non_member_fails_cleanly() {
    let cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_agreed_leader(&[0, 1, 2]).await;
    let target = (leader + 1) % 3;
    let bystander = (leader + 2) % 3;
    let target_name = cluster.members[target].name.clone();

    // Asked of a member that neither leads nor is the target: forwarded.
    let response = cluster
        .admin(bystander)
        .await
        .transfer_leader(TransferLeaderRequest {
            target_name: target_name.clone(),
            deadline_ms: 5_000,
        })
        .await
        .unwrap_or_else(|e| panic!("transfer to {target_name}: {e}\n{}", cluster.log(leader)))
        .into_inner();
    assert_eq!(response.leader_name, target_name);
    let s = cluster.status(target).await.unwrap();
    assert_eq!(
        s.role,
        Role::Leader as i32,
        "{target_name} leads after the transfer"
    );
    assert_eq!(cluster.wait_for_agreed_leader(&[0, 1, 2]).await, target);
    let term = s.term;

    let error = cluster
        .admin(bystander)
        .await
        .transfer_leader(TransferLeaderRequest {
            target_name: "nobody".into(),
            deadline_ms: 2_000,
        })
        .await
        .expect_err("a transfer to a non-member must fail");
    assert_eq!(error.code(), tonic::Code::NotFound, "{error}");
    assert!(error.message().contains("\"nobody\" is not a member"), "{error}");
    let s = cluster.status(target).await.unwrap();
    assert_eq!(
        (s.role, s.term),
        (Role::Leader as i32, term),
        "a refused transfer changes nothing"
    );

    // No target: the most up-to-date other voter.
    let response = cluster
        .admin(target)
        .await
        .transfer_leader(TransferLeaderRequest {
            target_name: String::new(),
            deadline_ms: 5_000,
        })
        .await
        .unwrap_or_else(|e| panic!("transfer to any voter: {e}"))
        .into_inner();
    assert_ne!(response.leader_name, target_name);
    assert!(response.term > term);
}

/// The next event of `kind` on the stream, within 10 s.
async fn next_event(stream: &mut tonic::Streaming<Event>, kind: EventKind) -> Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} event within 10 s"))
            .expect("the stream stays healthy")
            .expect("the stream stays open");
        if event.kind == kind as i32 {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_replays_the_election_then_reports_timing_and_leader_changes() {
    let cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_agreed_leader(&[0, 1, 2]).await;
    let leader_id = cluster.status(leader).await.unwrap().id;
    let follower = (leader + 1) % 3;
    let mut stream = cluster
        .admin(follower)
        .await
        .watch_events(WatchEventsRequest { replay: 16 })
        .await
        .unwrap()
        .into_inner();
    let elected = next_event(&mut stream, EventKind::LeaderChanged).await;
    assert_eq!(
        elected.member_id, leader_id,
        "the replayed election names the leader"
    );

    cluster
        .admin(leader)
        .await
        .set_timing(SetTimingRequest {
            heartbeat_interval_ms: 60,
            election_timeout_ms: 600,
            reason: "test".into(),
        })
        .await
        .unwrap();
    let changed = next_event(&mut stream, EventKind::TimingChanged).await;
    let timing = changed.timing.unwrap();
    assert_eq!(
        (timing.heartbeat_interval_ms, timing.election_timeout_ms),
        (60, 600)
    );
    assert!(changed.index > 0);

    let target = (leader + 2) % 3;
    cluster
        .admin(leader)
        .await
        .transfer_leader(TransferLeaderRequest {
            target_name: cluster.members[target].name.clone(),
            deadline_ms: 5_000,
        })
        .await
        .unwrap();
    let moved = next_event(&mut stream, EventKind::LeaderChanged).await;
    assert_eq!(moved.member_name, cluster.members[target].name);
    assert!(moved.term > elected.term);
}
