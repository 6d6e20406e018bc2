//! Failover time with Fixed and with Adaptive timing, on local processes driven by the
//! operator's planner (the local platform of `raftctl up`).
//!
//!     cargo build --release -p kuberaft-node
//!     cargo run --release -p kuberaft-e2e --example failover -- [TRIALS]
//!
//! For each mode: a 3-member cluster; once steady (and, for Adaptive, once the planner
//! has applied its timing), TRIALS times: kill -9 the leader, time until the first put
//! issued after the kill is acknowledged, wait until the supervisor restarted the member
//! and the cluster is steady again. Prints every trial and the median. A measurement,
//! not a test: nothing is asserted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use kuberaft_operator::crd::RaftClusterStatus;
use kuberaft_operator::local::LocalPlatform;
use kuberaft_operator::render::parse_manifest;

const FIXED: &str = "  timing:\n    mode: Fixed\n    heartbeatIntervalMs: 100\n    electionTimeoutMs: 1000\n";
const ADAPTIVE: &str = "  timing:\n    mode: Adaptive\n    heartbeatIntervalMs: 100\n    electionTimeoutMs: 1000\n    minHeartbeatIntervalMs: 20\n    maxHeartbeatIntervalMs: 300\n    minElectionTimeoutMs: 200\n    maxElectionTimeoutMs: 3000\n";

fn raft_node() -> PathBuf {
    let exe = std::env::current_exe().expect("example path");
    // target/<profile>/examples/failover -> target/<profile>/raft-node
    let path = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("raft-node");
    assert!(
        path.exists(),
        "{} missing: cargo build --release -p kuberaft-node",
        path.display()
    );
    path
}

fn steady(s: &RaftClusterStatus) -> bool {
    s.phase.as_deref() == Some("Running") && s.members.len() == 3 && s.members.iter().all(|m| m.healthy)
}

async fn wait(platform: &LocalPlatform, what: &str, ok: impl Fn(&RaftClusterStatus) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ok(&platform.status().unwrap_or_default()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(mode: &str, timing: &str, trials: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        "apiVersion: kuberaft.io/v1alpha1\nkind: RaftCluster\nmetadata:\n  name: fo\nspec:\n  replicas: 3\n  storage:\n    wal:\n      size: 1Gi\n    snapshots:\n      size: 1Gi\n{timing}"
    );
    let platform = LocalPlatform::open(
        parse_manifest(&manifest).unwrap(),
        dir.path(),
        raft_node(),
        vec![],
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let platform = platform.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                platform.round().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    wait(&platform, "a steady cluster", steady).await;
    if mode == "Adaptive" {
        wait(&platform, "adaptive timing applied", |s| {
            steady(s) && s.timing.as_ref().is_some_and(|t| t.last_change_time.is_some())
        })
        .await;
    }
    let timing = platform.status().unwrap().timing.unwrap();
    println!(
        "{mode}: heartbeat {} ms, election {} ms (rtt p99 {:?} ms, fsync p99 {:?} ms)",
        timing.heartbeat_interval_ms, timing.election_timeout_ms, timing.rtt_p99_ms, timing.fsync_p99_ms
    );
    let endpoints: Vec<String> = (0..3)
        .map(|o| format!("127.0.0.1:{}", platform.ports(o).unwrap().client))
        .collect();
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_millis(500));
    let mut client = Client::connect(&endpoints, Some(options)).await.unwrap();
    let mut times = Vec::new();
    for trial in 0..trials {
        wait(&platform, "a steady cluster", steady).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let leader = platform.status().unwrap().leader.unwrap();
        let ordinal: u32 = leader.rsplit('-').next().unwrap().parse().unwrap();
        let killed = Instant::now();
        platform.kill_member(ordinal);
        let elapsed = loop {
            if client.put(format!("failover-{trial}"), "x", None).await.is_ok() {
                break killed.elapsed();
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "no write acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        println!("  trial {trial}: leader {leader} killed -> first acknowledged write after {elapsed:?}");
        times.push(elapsed);
        wait(&platform, "the killed member back", |s| {
            steady(s) && s.leader.as_deref() != Some(leader.as_str())
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = driver.await;
    platform.stop_all();
    times.sort();
    times
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let trials: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let mut medians = Vec::new();
    for (mode, timing) in [("Fixed", FIXED), ("Adaptive", ADAPTIVE)] {
        let times = run(mode, timing, trials).await;
        let median = times[times.len() / 2];
        println!(
            "{mode}: median {median:?} over {trials} trials (min {:?}, max {:?})",
            times[0],
            times[times.len() - 1]
        );
        medians.push((mode, median));
    }
    println!("\n| timing | trials | median failover (kill -9 of the leader -> first acknowledged write) |");
    println!("|---|---|---|");
    for (mode, median) in &medians {
        println!("| {mode} | {trials} | {} ms |", median.as_millis());
    }
}
