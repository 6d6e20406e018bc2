//! The admin API (`kuberaft.admin.v1`) against real `raft-node` processes on
//! 127.0.0.1: live timing through the log, leadership transfer, round-trip times
//! (with latency added to one link by a delaying proxy), fsync latency, and the
//! FAILURE, RECOVERED and SNAPSHOT events, and a scripted membership scenario (etcdctl
//! member add/promote/remove, then a leader kill) seen on every surviving member.
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
use support::proxy::DelayProxy;
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
        // How up to date the log is (quorum-loss recovery compares these).
        assert!(s.last_log_index >= s.commit_index && s.last_log_index > 0);
        assert!(s.last_log_term > 0 && s.last_log_term <= s.term, "{s:?}");
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

/// The leader's view of the peer named `name`.
fn peer<'a>(leader: &'a StatusResponse, name: &str) -> &'a kuberaft_proto::admin::PeerStatus {
    leader
        .peers
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("the leader reports no peer {name}: {leader:#?}"))
}

/// The series of a labelled metric on member `i`: (labels, value).
fn series(cluster: &ProcCluster, i: usize, name: &str) -> Vec<(String, f64)> {
    let body = support::http_get(cluster.members[i].metrics, "/metrics").expect("/metrics answers");
    body.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None; // another metric with this name as a prefix
            }
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rtt_the_leader_reports_rises_by_the_injected_delay_on_that_link_only() {
    // Every byte into m2's peer port waits DELAY, and so does every byte back on
    // those connections. The leader's probes to m2 and their echoes travel on the
    // connection it opened to m2, so each round trip to m2 takes at least 2 x DELAY;
    // its link to the other follower is direct. (m2's own streams to the others are
    // not delayed, so m2 must not be the leader.)
    const DELAY: Duration = Duration::from_millis(100);
    let mut cluster = ProcCluster::new(3, &[]);
    let proxy = DelayProxy::start(cluster.members[2].peer, DELAY, Duration::from_secs(180));
    cluster.members[2].peer_via = Some(proxy.port);
    for i in 0..3 {
        cluster.spawn(i);
    }
    let mut leader = cluster.wait_for_agreed_leader(&[0, 1, 2]).await;
    if leader == 2 {
        cluster
            .admin(2)
            .await
            .transfer_leader(TransferLeaderRequest {
                target_name: "m0".into(),
                deadline_ms: 10_000,
            })
            .await
            .unwrap_or_else(|e| panic!("transfer to m0: {e}"));
        leader = cluster.wait_for_agreed_leader(&[0, 1, 2]).await;
        assert_ne!(leader, 2);
    }
    let direct = if leader == 0 { "m1" } else { "m0" };
    let samples_enough = |s: &StatusResponse| {
        s.role == Role::Leader as i32
            && s.peers.len() == 2
            && s.peers.iter().all(|p| p.rtt.is_some_and(|r| r.samples >= 20))
    };
    cluster
        .wait_for_status(leader, "20 RTT samples per peer", samples_enough)
        .await;
    let status = cluster.status(leader).await.unwrap();
    let slow = peer(&status, "m2").rtt.unwrap();
    let fast = peer(&status, direct).rtt.unwrap();
    let round_trip_delay_ms = 2.0 * DELAY.as_secs_f64() * 1e3;
    eprintln!("delayed link {slow:?}\ndirect link {fast:?}");
    assert!(
        slow.p50_ms >= round_trip_delay_ms - 1.0,
        "every round trip to m2 waits 2 x {DELAY:?}: p50 {} ms",
        slow.p50_ms
    );
    assert!(
        slow.p50_ms - fast.p50_ms >= 0.8 * round_trip_delay_ms,
        "the delayed link is slower by about the delay: {} vs {} ms",
        slow.p50_ms,
        fast.p50_ms
    );
    assert!(
        slow.p50_ms < 2.0 * round_trip_delay_ms,
        "a sample is one round trip, not several: p50 {} ms",
        slow.p50_ms
    );
    assert!(
        fast.p50_ms < DELAY.as_secs_f64() * 1e3,
        "the direct link does not rise: p50 {} ms",
        fast.p50_ms
    );
    assert!(slow.p99_ms >= slow.p50_ms && slow.ewma_ms >= round_trip_delay_ms - 1.0);
    assert_eq!(slow.window_ms, 60_000);

    // The same on /metrics: no round trip to m2 below 2 x DELAY, every one counted.
    let m2_id = cluster.status(2).await.unwrap().id;
    let name = "kuberaft_peer_round_trip_time_seconds";
    let m2_series = |suffix: &str, le: Option<&str>| {
        let labels = match le {
            Some(le) => format!("{{peer=\"{m2_id:x}\",le=\"{le}\"}}"),
            None => format!("{{peer=\"{m2_id:x}\"}}"),
        };
        series(&cluster, leader, &format!("{name}{suffix}"))
            .into_iter()
            .find(|(l, _)| *l == labels)
            .unwrap_or_else(|| panic!("no {name}{suffix}{labels} on the leader"))
            .1
    };
    let count = m2_series("_count", None);
    assert!(count >= 20.0, "{count} round trips counted");
    assert_eq!(m2_series("_bucket", Some("0.1024")), 0.0, "none under 102 ms");
    assert_eq!(m2_series("_bucket", Some("+Inf")), count);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_past_the_election_timeout_is_reported_failed_then_recovered() {
    let cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_agreed_leader(&[0, 1, 2]).await;
    let victim = (leader + 1) % 3;
    let victim_id = cluster.status(victim).await.unwrap().id;
    let leader_id = cluster.status(leader).await.unwrap().id;
    let mut stream = cluster
        .admin(leader)
        .await
        .watch_events(WatchEventsRequest { replay: 0 })
        .await
        .unwrap()
        .into_inner();

    let stopped_at = std::time::SystemTime::now();
    cluster.signal(victim, "STOP");
    let failure = next_event(&mut stream, EventKind::Failure).await;
    assert_eq!(failure.member_id, victim_id, "{failure:?}");
    assert_eq!(failure.member_name, cluster.members[victim].name);
    assert_eq!(failure.reporter_id, leader_id);
    assert!(failure.term > 0 && failure.index > 0, "{failure:?}");
    let stopped_ms = stopped_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Silence counts from the victim's last answer, which came at most a few
    // heartbeats (100 ms each) before the stop: never reported right away.
    assert!(
        failure.time_unix_ms >= stopped_ms + 700,
        "reported only after about the election timeout (1000 ms): {} ms after the stop",
        failure.time_unix_ms - stopped_ms
    );
    let silent_ms: u64 = failure
        .detail
        .split_whitespace()
        .skip_while(|w| *w != "for")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the detail says how long: {failure:?}"));
    assert!(
        silent_ms >= 1000,
        "more than the election timeout, in whole ms: {failure:?}"
    );
    let status = cluster.status(leader).await.unwrap();
    let seen = peer(&status, &cluster.members[victim].name);
    assert_eq!(
        seen.reachability,
        kuberaft_proto::admin::Reachability::Failed as i32
    );
    assert!(seen.last_contact_ms >= 1000, "{seen:?}");

    cluster.signal(victim, "CONT");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let recovered = loop {
        let event = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("RECOVERED within 10 s of SIGCONT")
            .expect("the stream stays healthy")
            .expect("the stream stays open");
        if event.kind == EventKind::Failure as i32 {
            assert_eq!(
                event.member_id, victim_id,
                "only the stopped member failed: {event:?}"
            );
        }
        if event.kind == EventKind::Recovered as i32 {
            break event;
        }
    };
    assert_eq!(recovered.member_id, victim_id);
    assert!(recovered.time_unix_ms >= failure.time_unix_ms);
    cluster
        .wait_for_status(leader, "the member reachable again", |s| {
            s.peers
                .iter()
                .all(|p| p.reachability == kuberaft_proto::admin::Reachability::Ok as i32 && p.stream_up)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_reported_as_events_and_fsync_and_rtt_histograms_are_on_metrics() {
    let cluster = ProcCluster::start(3, &["--snapshot-count=100"]);
    let leader = cluster.wait_for_agreed_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let follower_id = cluster.status(follower).await.unwrap().id;
    let mut stream = cluster
        .admin(follower)
        .await
        .watch_events(WatchEventsRequest { replay: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut client = support::client(&cluster.endpoints()).await;
    for i in 0..150 {
        client.put(format!("k{i}"), "v", None).await.unwrap();
    }
    let snapshot = next_event(&mut stream, EventKind::Snapshot).await;
    assert_eq!(
        (snapshot.member_id, snapshot.reporter_id),
        (follower_id, follower_id)
    );
    assert!(snapshot.index >= 100 && snapshot.term > 0, "{snapshot:?}");
    assert!(snapshot.detail.contains("taken"), "{snapshot:?}");

    // fsync: a histogram whose buckets add up to its count, and recent percentiles.
    for i in 0..3 {
        let count = cluster
            .metric(i, "kuberaft_wal_fsync_duration_seconds_count")
            .unwrap();
        let buckets = series(&cluster, i, "kuberaft_wal_fsync_duration_seconds_bucket");
        assert!(count > 0, "m{i} fsynced");
        assert_eq!(
            buckets.last().unwrap(),
            &("{le=\"+Inf\"}".to_string(), count as f64)
        );
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "cumulative: {buckets:?}"
        );
        let fsync = cluster.status(i).await.unwrap().fsync.unwrap();
        assert!(
            fsync.samples > 0 && fsync.p50_ms > 0.0 && fsync.p99_ms >= fsync.p50_ms,
            "{fsync:?}"
        );
    }
    // RTT: one histogram per peer on the leader, each with samples.
    let counts = series(&cluster, leader, "kuberaft_peer_round_trip_time_seconds_count");
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.iter().all(|(_, n)| *n > 0.0), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_follower_shows_a_broken_stream_backing_off_until_it_returns() {
    let mut cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_agreed_leader(&[0, 1, 2]).await;
    let victim = (leader + 1) % 3;
    let name = cluster.members[victim].name.clone();
    cluster
        .wait_for_status(leader, "every stream up", |s| {
            s.peers.len() == 2 && s.peers.iter().all(|p| p.stream_up)
        })
        .await;
    cluster.kill(victim);
    cluster
        .wait_for_status(leader, "the stream down and backing off", |s| {
            s.peers.iter().any(|p| {
                p.name == name
                    && !p.stream_up
                    && p.reconnect_failures >= 2
                    && p.backoff_ms > 0
                    && p.reachability == kuberaft_proto::admin::Reachability::Failed as i32
            })
        })
        .await;
    cluster.spawn(victim);
    cluster
        .wait_for_status(leader, "the stream up again", |s| {
            s.peers.iter().any(|p| {
                p.name == name
                    && p.stream_up
                    && p.reconnect_failures == 0
                    && p.backoff_ms == 0
                    && p.reachability == kuberaft_proto::admin::Reachability::Ok as i32
            })
        })
        .await;
}

/// Collects one member's event stream until `stop` is set (bounded: at most 500 events).
fn collect_events(
    mut client: AdminClient<Channel>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Event>> {
    tokio::spawn(async move {
        let mut stream = client
            .watch_events(WatchEventsRequest { replay: 0 })
            .await
            .unwrap()
            .into_inner();
        let mut events = Vec::new();
        while events.len() < 500 && !stop.load(std::sync::atomic::Ordering::SeqCst) {
            match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                Ok(Ok(Some(event))) => events.push(event),
                Ok(_) => break,
                Err(_) => {}
            }
        }
        events
    })
}

/// Position of the first event of `kind` about `member` (after `from`).
fn position(events: &[Event], from: usize, kind: EventKind, member: u64) -> Option<usize> {
    events
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, e)| e.kind == kind as i32 && (member == 0 || e.member_id == member))
        .map(|(i, _)| i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_membership_scenario_shows_the_same_events_in_order_on_every_surviving_member() {
    let mut cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_agreed_leader(&[0, 1, 2]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut collectors = Vec::new();
    for i in 0..3 {
        collectors.push(collect_events(cluster.admin(i).await, stop.clone()));
    }
    let endpoints = cluster.endpoints().join(",");

    // Add a learner through etcdctl and start it as told.
    let ports = support::free_ports(3);
    let base = cluster.members[0].dir.parent().unwrap().to_path_buf();
    cluster.members.push(support::Member {
        name: "m3".into(),
        client: ports[0],
        peer: ports[1],
        metrics: ports[2],
        dir: base.join("m3"),
        child: None,
        extra: vec!["--initial-cluster-state=existing".into()],
        peer_via: None,
    });
    let peer_url = format!("http://127.0.0.1:{}", ports[1]);
    let (ok, out) = support::etcdctl(
        &endpoints,
        &[
            "member",
            "add",
            "m3",
            "--learner",
            &format!("--peer-urls={peer_url}"),
        ],
    );
    assert!(ok, "{out}");
    let id_hex = out
        .split_whitespace()
        .skip_while(|w| *w != "Member")
        .nth(1)
        .unwrap_or_else(|| panic!("member add prints the id: {out}"))
        .to_string();
    let m3 = u64::from_str_radix(&id_hex, 16).unwrap();
    cluster.spawn(3);
    // Promote once caught up; then remove it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = support::etcdctl(&endpoints, &["member", "promote", &id_hex]);
        if ok {
            break;
        }
        assert!(out.contains("in sync with leader"), "{out}");
        assert!(Instant::now() < deadline, "never promoted: {out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (ok, out) = support::etcdctl(&endpoints, &["member", "remove", &id_hex]);
    assert!(ok, "{out}");
    // Then the leader dies.
    let leader_id = cluster.status(leader).await.unwrap().id;
    cluster.kill(leader);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new_leader = cluster.wait_for_agreed_leader(&survivors).await;
    // FAILURE needs an election timeout (1 s) of silence after the new leader took over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut streams = Vec::new();
    for c in collectors {
        streams.push(c.await.unwrap());
    }

    for &i in &survivors {
        let events = &streams[i];
        let kinds: Vec<String> = events
            .iter()
            .map(|e| format!("{}:{:x}@{}", e.kind, e.member_id, e.index))
            .collect();
        let join =
            position(events, 0, EventKind::Join, m3).unwrap_or_else(|| panic!("m{i}: no JOIN: {kinds:?}"));
        let promoted = position(events, join, EventKind::Promoted, m3)
            .unwrap_or_else(|| panic!("m{i}: no PROMOTED after JOIN: {kinds:?}"));
        let leave = position(events, promoted, EventKind::Leave, m3)
            .unwrap_or_else(|| panic!("m{i}: no LEAVE after PROMOTED: {kinds:?}"));
        position(events, leave, EventKind::LeaderChanged, 0)
            .unwrap_or_else(|| panic!("m{i}: no LEADER_CHANGED after LEAVE: {kinds:?}"));
        assert!(
            events[join].index < events[promoted].index && events[promoted].index < events[leave].index,
            "m{i}: membership events in log order: {kinds:?}"
        );
    }
    // The same membership events, at the same indexes, on both survivors.
    let membership = |events: &Vec<Event>| -> Vec<(i32, u64, u64)> {
        events
            .iter()
            .filter(|e| {
                [EventKind::Join, EventKind::Promoted, EventKind::Leave]
                    .iter()
                    .any(|k| *k as i32 == e.kind)
            })
            .map(|e| (e.kind, e.member_id, e.index))
            .collect()
    };
    assert_eq!(
        membership(&streams[survivors[0]]),
        membership(&streams[survivors[1]])
    );
    // The new leader reports the dead one.
    let failure = position(&streams[new_leader], 0, EventKind::Failure, leader_id);
    assert!(
        failure.is_some(),
        "the new leader reports FAILURE of the old one: {:?}",
        streams[new_leader]
    );
}
