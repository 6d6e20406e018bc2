//! The operator's orchestration on real `raft-node` processes: the planner of
//! `raft-operator`, driven through the local platform of `raftctl up`, against clusters
//! on 127.0.0.1, with the `etcd-client` crate and etcdctl as clients.
//!
//! Each test starts its own cluster in a temporary directory; a driver task runs one
//! planner round every `ROUND` and records what it saw and did, so the tests can check
//! the order of steps afterwards. Every wait and every load loop is bounded.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use kuberaft_operator::crd::RaftClusterStatus;
use kuberaft_operator::local::LocalPlatform;
use kuberaft_operator::plan::Action;
use kuberaft_operator::render::parse_manifest;

#[path = "../../node/tests/support/proxy.rs"]
mod proxy;

const ROUND: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(120);

/// target/debug (or release) of this test binary, where `cargo test --workspace` also
/// puts raft-node and raftctl.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (cargo build -p kuberaft-node -p kuberaft-operator)",
        path.display()
    );
    path
}

fn manifest(name: &str, replicas: i32, extra_spec: &str) -> String {
    format!(
        "apiVersion: kuberaft.io/v1alpha1\nkind: RaftCluster\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  storage:\n    wal:\n      size: 1Gi\n    snapshots:\n      size: 1Gi\n{extra_spec}"
    )
}

/// One planner round as the driver saw it.
#[derive(Clone, Debug)]
struct Record {
    at: Instant,
    action: Option<Action>,
    status: RaftClusterStatus,
}

struct Harness {
    platform: LocalPlatform,
    records: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
    driver: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(name: &str, replicas: i32, extra_spec: &str) -> Harness {
        Self::start_with(name, replicas, extra_spec, |_| {}).await
    }

    /// `prepare` sees the platform before any member starts.
    async fn start_with(
        name: &str,
        replicas: i32,
        extra_spec: &str,
        prepare: impl FnOnce(&LocalPlatform),
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let cluster = parse_manifest(&manifest(name, replicas, extra_spec)).unwrap();
        let platform = LocalPlatform::open(cluster, dir.path(), binary("raft-node"), Vec::new()).unwrap();
        prepare(&platform);
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let driver = {
            let platform = platform.clone();
            let records = records.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                // Bounded: a test never runs longer than this many rounds.
                for _ in 0..5_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let round = platform.round().await;
                    for note in &round.notes {
                        eprintln!("[up] {note}");
                    }
                    if let Some(a) = &round.plan.action {
                        if !matches!(a, Action::Wait { .. }) {
                            eprintln!("[up] step: {a}");
                        }
                    }
                    records.lock().unwrap().push(Record {
                        at: Instant::now(),
                        action: round.plan.action.clone(),
                        status: round.status,
                    });
                    tokio::time::sleep(ROUND).await;
                }
            })
        };
        Harness {
            platform,
            records,
            stop,
            driver: Some(driver),
            _dir: dir,
        }
    }

    fn status(&self) -> RaftClusterStatus {
        self.platform.status().unwrap_or_default()
    }

    async fn wait_for(&self, what: &str, mut ok: impl FnMut(&RaftClusterStatus) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status();
            if ok(&status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Running, with `voters` healthy voters, no learner, and nothing in progress.
    async fn wait_steady(&self, voters: usize) {
        self.wait_for(&format!("{voters} healthy voters, steady"), |s| {
            s.phase.as_deref() == Some("Running")
                && s.members.len() == voters
                && s.members.iter().all(|m| m.healthy && !m.learner)
        })
        .await;
    }

    fn set_spec(&self, replicas: i32, extra_spec: &str) {
        let name = self.platform.cluster().metadata.name.clone().unwrap();
        self.platform
            .set_cluster(parse_manifest(&manifest(&name, replicas, extra_spec)).unwrap());
    }

    fn endpoints(&self, ordinals: impl IntoIterator<Item = u32>) -> Vec<String> {
        ordinals
            .into_iter()
            .map(|o| format!("127.0.0.1:{}", self.platform.ports(o).unwrap().client))
            .collect()
    }

    fn ordinal_of(&self, name: &str) -> u32 {
        name.rsplit('-').next().unwrap().parse().unwrap()
    }

    fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    async fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(d) = self.driver.take() {
            let _ = d.await;
        }
        let platform = self.platform.clone();
        tokio::task::spawn_blocking(move || platform.stop_all())
            .await
            .unwrap();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // A failed test still stops every process it started (by PID).
        self.stop.store(true, Ordering::SeqCst);
        self.platform.stop_all();
    }
}

async fn client(endpoints: &[String]) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    Client::connect(endpoints, Some(options)).await.unwrap()
}

/// Writers that keep putting distinct keys until stopped (or a bound is reached) and
/// remember which puts were acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    async fn start(endpoints: Vec<String>, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let mut client = client(&endpoints).await;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for seq in 0..200_000u64 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = format!("load/{w}/{seq:08}");
                    match client.put(key.clone(), format!("v{seq}"), None).await {
                        Ok(_) => acked.push(key),
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                acked
            }));
        }
        Load { stop, tasks }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        let mut acked = Vec::new();
        for t in self.tasks {
            acked.extend(t.await.unwrap());
        }
        acked
    }
}

/// Every acknowledged key is readable (linearizably) through `endpoints`.
async fn assert_all_present(endpoints: &[String], acked: &[String]) {
    assert!(!acked.is_empty(), "the load acknowledged no write at all");
    let mut client = client(endpoints).await;
    let response = client
        .get("load/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    let present: BTreeSet<Vec<u8>> = response.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    let missing: Vec<&String> = acked.iter().filter(|k| !present.contains(k.as_bytes())).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes are lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args)
        .output()
        .expect("etcdctl (Debian etcd-client) is installed by scripts/test.sh");
    assert!(
        out.status.success(),
        "etcdctl {args:?} against {endpoint} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_three_members_and_use_etcdctl_on_each() {
    let h = Harness::start("boot", 3, "").await;
    h.wait_steady(3).await;
    let endpoints = h.endpoints(0..3);
    for (i, endpoint) in endpoints.iter().enumerate() {
        let key = format!("greeting-{i}");
        etcdctl(endpoint, &["put", &key, &format!("hello from {i}")]);
    }
    for endpoint in &endpoints {
        for i in 0..3 {
            let out = etcdctl(endpoint, &["get", &format!("greeting-{i}"), "--print-value-only"]);
            assert_eq!(out.trim(), format!("hello from {i}"), "read through {endpoint}");
        }
    }
    let status = h.status();
    assert_eq!(status.replicas, 3);
    assert!(status.bootstrapped);
    assert!(status.leader.is_some());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_three_to_five_and_back_under_writes_loses_nothing() {
    let h = Harness::start("scale", 3, "").await;
    h.wait_steady(3).await;
    let stable = h.endpoints(0..3);
    let load = Load::start(stable.clone(), 4).await;

    h.set_spec(5, "");
    h.wait_steady(5).await;
    assert_eq!(h.platform.workload_replicas(), Some(5));
    // Learner first, then promotion: every member added was a learner before it voted.
    let records = h.records();
    let adds = records
        .iter()
        .filter(|r| matches!(r.action, Some(Action::AddLearner { .. })))
        .count();
    let promotes = records
        .iter()
        .filter(|r| matches!(r.action, Some(Action::Promote { .. })))
        .count();
    assert!(adds >= 2 && promotes >= 2, "adds {adds}, promotes {promotes}");

    h.set_spec(3, "");
    h.wait_steady(3).await;
    h.wait_for("the workload back at 3", |_| {
        h.platform.workload_replicas() == Some(3)
    })
    .await;
    // The removed members' directories go away (a later scale-up starts clean).
    let deadline = Instant::now() + WAIT;
    while (h.platform.member_dir(3).exists() || h.platform.member_dir(4).exists())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !h.platform.member_dir(3).exists(),
        "data of removed member 3 kept"
    );
    assert!(
        !h.platform.member_dir(4).exists(),
        "data of removed member 4 kept"
    );
    let names: BTreeSet<String> = h.status().members.iter().map(|m| m.name.clone()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["scale-0".into(), "scale-1".into(), "scale-2".into()])
    );

    // Scaled-down members come back without stale-data trouble.
    h.set_spec(5, "");
    h.wait_steady(5).await;

    let acked = load.finish().await;
    assert_all_present(&stable, &acked).await;
    eprintln!("acknowledged writes during 3 -> 5 -> 3 -> 5: {}", acked.len());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernation_stops_every_member_keeps_the_data_and_wakes_the_same_cluster() {
    let h = Harness::start("sleepy", 3, "").await;
    h.wait_steady(3).await;
    let endpoints = h.endpoints(0..3);
    for i in 0..20 {
        etcdctl(&endpoints[i % 3], &["put", &format!("k{i}"), &format!("v{i}")]);
    }
    let before = h.status();
    let steps_before = h.records().len();

    h.set_spec(3, "  hibernate: true\n");
    h.wait_for("phase Hibernated", |s| s.phase.as_deref() == Some("Hibernated"))
        .await;
    assert_eq!(h.platform.workload_replicas(), Some(0));
    for (o, endpoint) in endpoints.iter().enumerate() {
        assert!(
            std::net::TcpStream::connect(endpoint.as_str()).is_err(),
            "member {o} still serves while hibernated"
        );
        assert!(
            h.platform.member_dir(o as u32).exists(),
            "data of member {o} deleted"
        );
    }
    let hibernated = h.status();
    assert!(hibernated.leader.is_none());
    assert_eq!(hibernated.replicas, 3, "the membership size is kept");
    assert!(hibernated
        .conditions
        .iter()
        .any(|c| c.type_ == "Degraded" && c.status == "False" && c.reason == "Hibernated"));
    // Nothing but the workload's size was changed.
    assert!(h.records()[steps_before..].iter().all(|r| matches!(
        r.action,
        None | Some(Action::Wait { .. }) | Some(Action::ScaleWorkload { .. })
    )));

    h.set_spec(3, "");
    h.wait_steady(3).await;
    let after = h.status();
    let ids = |s: &RaftClusterStatus| s.members.iter().map(|m| m.id.clone()).collect::<BTreeSet<_>>();
    assert_eq!(ids(&after), ids(&before), "the same members came back");
    for endpoint in &endpoints {
        for i in 0..20 {
            let out = etcdctl(endpoint, &["get", &format!("k{i}"), "--print-value-only"]);
            assert_eq!(
                out.trim(),
                format!("v{i}"),
                "k{i} through {endpoint} after waking"
            );
        }
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_restarts_the_leader_last_and_loses_nothing() {
    let h = Harness::start("roll", 3, "").await;
    h.wait_steady(3).await;
    let endpoints = h.endpoints(0..3);
    let leader_before = h.status().leader.unwrap();
    let pids_before = h.platform.pids();
    let load = Load::start(endpoints.clone(), 4).await;
    let start = h.records().len();

    // A change of a node setting is a pod template change.
    h.set_spec(3, "  snapshotCount: 5000\n");
    let deadline = Instant::now() + WAIT;
    loop {
        let pids = h.platform.pids();
        let all_new = (0..3).all(|o| pids.contains_key(&o) && pids.get(&o) != pids_before.get(&o));
        let status = h.status();
        if all_new
            && status.phase.as_deref() == Some("Running")
            && status.members.iter().all(|m| m.healthy)
            && status.members.len() == 3
        {
            break;
        }
        assert!(Instant::now() < deadline, "the roll did not finish: {status:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acked = load.finish().await;
    assert_all_present(&endpoints, &acked).await;

    let records: Vec<Record> = h.records().into_iter().skip(start).collect();
    let restarts: Vec<(usize, u32)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r.action {
            Some(Action::RestartMember { ordinal }) => Some((i, ordinal)),
            _ => None,
        })
        .collect();
    let order: Vec<u32> = restarts.iter().map(|(_, o)| *o).collect();
    eprintln!("restart order: {order:?}, leader before: {leader_before}");
    assert_eq!(order.len(), 3, "each member restarted once: {order:?}");
    assert_eq!(order.iter().collect::<BTreeSet<_>>().len(), 3);
    let leader_ordinal = h.ordinal_of(&leader_before);
    assert_eq!(*order.last().unwrap(), leader_ordinal, "the leader restarts last");
    let (last_index, _) = restarts[2];
    let transfer = records[..last_index]
        .iter()
        .position(|r| matches!(r.action, Some(Action::TransferLeader { .. })));
    assert!(
        transfer.is_some(),
        "leadership was transferred before the leader restarted"
    );
    // Each restart only when every member was healthy and caught up.
    for (i, ordinal) in &restarts {
        let before = &records[*i].status;
        assert!(
            before.members.len() == 3 && before.members.iter().all(|m| m.healthy),
            "member {ordinal} restarted while the cluster was not healthy: {:#?}",
            before.members
        );
    }
    // Leader changes: at most one per restart beyond the planned transfer.
    let mut leaders: Vec<String> = Vec::new();
    for r in &records {
        if let Some(l) = &r.status.leader {
            if leaders.last() != Some(l) {
                leaders.push(l.clone());
            }
        }
    }
    let changes = leaders.len().saturating_sub(1);
    assert!(changes <= 1 + 3, "leader changed {changes} times: {leaders:?}");
    // Unavailability per member: from its restart step to its next ready round.
    for (i, ordinal) in &restarts {
        let name = format!("roll-{ordinal}");
        let back = records[i + 1..]
            .iter()
            .find(|r| r.status.members.iter().any(|m| m.name == name && m.healthy))
            .map(|r| r.at.duration_since(records[*i].at));
        eprintln!("member {name} unavailable for about {back:?}");
    }
    eprintln!("acknowledged writes during the roll: {}", acked.len());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_restarted_and_rejoins() {
    let h = Harness::start("failover", 3, "").await;
    h.wait_steady(3).await;
    let endpoints = h.endpoints(0..3);
    let leader = h.status().leader.unwrap();
    let ordinal = h.ordinal_of(&leader);
    let old_pid = h.platform.pids()[&ordinal];
    let killed_at = Instant::now();
    h.platform.kill_member(ordinal);

    // A new leader, and a write acknowledged.
    let mut client = client(&endpoints).await;
    let deadline = Instant::now() + WAIT;
    let first_write = loop {
        if client.put("after-failover", "yes", None).await.is_ok() {
            break killed_at.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no write acknowledged after the leader was killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("leader kill -> first acknowledged write: {first_write:?}");
    h.wait_for("another leader", |s| {
        s.leader.as_ref().is_some_and(|l| *l != leader)
    })
    .await;
    // The supervisor restarts the killed member, and it catches up.
    h.wait_for("the killed member back", |_| {
        h.platform.pids().get(&ordinal).is_some_and(|p| *p != old_pid)
    })
    .await;
    h.wait_steady(3).await;
    let out = etcdctl(
        &h.endpoints([ordinal])[0],
        &["get", "after-failover", "--print-value-only", "--consistency=s"],
    );
    let deadline = Instant::now() + WAIT;
    let mut out = out;
    while out.trim() != "yes" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        out = etcdctl(
            &h.endpoints([ordinal])[0],
            &["get", "after-failover", "--print-value-only", "--consistency=s"],
        );
    }
    assert_eq!(out.trim(), "yes", "the restarted member caught up");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_quorum_degrades_without_removing_anyone_and_recovers() {
    let h = Harness::start("quorum", 3, "").await;
    h.wait_steady(3).await;
    let pids = h.platform.pids();
    let frozen = [pids[&1], pids[&2]];
    for pid in frozen {
        assert!(Command::new("kill")
            .arg("-STOP")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success());
    }
    h.wait_for("Degraded with quorum lost", |s| {
        s.phase.as_deref() == Some("Degraded")
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "QuorumLost")
    })
    .await;
    // Hold it there for a while: nothing destructive happens.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let records = h.records();
    let destructive = records.iter().rev().take(10).any(|r| {
        matches!(
            r.action,
            Some(
                Action::RemoveMember { .. }
                    | Action::DeleteVolumes { .. }
                    | Action::RestartMember { .. }
                    | Action::ScaleWorkload { .. }
            )
        )
    });
    for pid in frozen {
        assert!(Command::new("kill")
            .arg("-CONT")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success());
    }
    assert!(!destructive, "a destructive step was taken without quorum");
    assert_eq!(h.platform.workload_replicas(), Some(3));
    for o in 0..3 {
        assert!(h.platform.member_dir(o).exists(), "member {o}'s data was touched");
    }
    let degraded = h
        .status()
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| c.message.clone());
    eprintln!("degraded reason while frozen: {degraded:?}");
    h.wait_steady(3).await;
    let status = h.status();
    assert!(status
        .conditions
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True"));
    h.shutdown().await;
}

/// The quick start as a user runs it: `raftctl up -f FILE`, etcdctl, Ctrl-C, and again.
#[test]
fn raftctl_up_serves_etcdctl_stops_on_ctrl_c_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.yaml");
    std::fs::write(&file, manifest("quick", 3, "")).unwrap();
    let data = dir.path().join("data");
    let run = |check: &dyn Fn(&str)| {
        let out_path = dir.path().join("up.out");
        let out = std::fs::File::create(&out_path).unwrap();
        let mut child = Command::new(binary("raftctl"))
            .arg("up")
            .arg("-f")
            .arg(&file)
            .arg("--data-dir")
            .arg(&data)
            .arg("--node-binary")
            .arg(binary("raft-node"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let endpoints = loop {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("client endpoints: ")) {
                break line.trim_start_matches("client endpoints: ").to_string();
            }
            if Instant::now() >= deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("raftctl up printed no endpoints:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        check(&endpoints);
        let pids: Vec<u32> = {
            let state: serde_json::Value =
                serde_json::from_slice(&std::fs::read(data.join("quick/state.json")).unwrap()).unwrap();
            state["pids"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        assert_eq!(pids.len(), 3);
        // Ctrl-C.
        assert!(Command::new("kill")
            .arg("-INT")
            .arg(child.id().to_string())
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("raftctl up did not stop on Ctrl-C");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "raftctl up exited with {status}");
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists()
                    || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")),
                "member pid {pid} still runs after Ctrl-C"
            );
        }
        let text = std::fs::read_to_string(&out_path).unwrap();
        assert!(text.contains("stopped; data kept in"), "{text}");
    };
    run(&|endpoints| {
        let first = endpoints.split(',').next().unwrap();
        etcdctl(endpoints, &["put", "quick", "start"]);
        assert_eq!(
            etcdctl(first, &["get", "quick", "--print-value-only"]).trim(),
            "start"
        );
    });
    // Started again: the same cluster, the same data.
    run(&|endpoints| {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={endpoints}"))
                .args(["get", "quick", "--print-value-only"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "start" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the data did not survive a restart of raftctl up"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_timing_rises_with_added_peer_latency_and_comes_back_down_without_flapping() {
    const TIMING: &str = "  timing:\n    mode: Adaptive\n    heartbeatIntervalMs: 100\n    electionTimeoutMs: 1000\n    minHeartbeatIntervalMs: 20\n    maxHeartbeatIntervalMs: 300\n    minElectionTimeoutMs: 200\n    maxElectionTimeoutMs: 3000\n    adaptiveCoolDownSeconds: 5\n";
    const DELAY: Duration = Duration::from_millis(20);
    // A delaying proxy in front of every member's peer port; members advertise it.
    let mut proxies = Vec::new();
    let h = Harness::start_with("adapt", 3, TIMING, |platform| {
        for o in 0..3 {
            let target = platform.ports(o).unwrap().peer;
            let proxy = proxy::DelayProxy::start(target, Duration::ZERO, Duration::from_secs(600));
            platform.route_peer_through(o, proxy.port);
            proxies.push(proxy);
        }
    })
    .await;
    let heartbeat = |s: &RaftClusterStatus| s.timing.as_ref().map_or(0, |t| t.heartbeat_interval_ms);
    let election = |s: &RaftClusterStatus| s.timing.as_ref().map_or(0, |t| t.election_timeout_ms);
    h.wait_for("adaptive timing applied on a fast loopback", |s| {
        s.phase.as_deref() == Some("Running")
            && s.timing.as_ref().is_some_and(|t| t.last_change_time.is_some())
    })
    .await;
    let base = h.status();
    eprintln!(
        "no delay: heartbeat {} ms, election {} ms",
        heartbeat(&base),
        election(&base)
    );

    for p in &proxies {
        p.set_delay(DELAY);
    }
    // Every round trip now takes at least 2 x 20 ms: the heartbeat must exceed it
    // (2 x RTT p99 by the rule), and the election timeout follows.
    h.wait_for("timing raised for the added latency", |s| heartbeat(s) >= 80)
        .await;
    let raised = h.status();
    eprintln!(
        "20 ms each way: heartbeat {} ms, election {} ms (rtt p99 {:?})",
        heartbeat(&raised),
        election(&raised),
        raised.timing.as_ref().and_then(|t| t.rtt_p99_ms)
    );
    assert!(election(&raised) >= 3 * heartbeat(&raised) && election(&raised) > election(&base));
    // Steady latency: no flapping (at most one more adjustment while it settles).
    let from = h.records().len();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let changes_while_steady = h.records()[from..]
        .iter()
        .filter(|r| matches!(r.action, Some(Action::SetTiming { .. })))
        .count();
    assert!(
        changes_while_steady <= 1,
        "{changes_while_steady} timing changes under steady latency"
    );

    for p in &proxies {
        p.set_delay(Duration::ZERO);
    }
    // The delayed samples leave the 60 s RTT window, then timing comes back down.
    h.wait_for("timing back down", |s| heartbeat(s) <= heartbeat(&base) + 20)
        .await;
    let lowered = h.status();
    eprintln!(
        "delay removed: heartbeat {} ms, election {} ms",
        heartbeat(&lowered),
        election(&lowered)
    );
    let changes = h
        .records()
        .iter()
        .filter(|r| matches!(r.action, Some(Action::SetTiming { .. })))
        .count();
    assert!(changes <= 6, "{changes} timing changes in all: flapping");
    h.shutdown().await;
    drop(proxies);
}

/// etcdctl over TLS with the client certificate `raftctl up` made (`DIR/tls`).
fn etcdctl_tls(platform: &LocalPlatform, endpoint: &str, args: &[&str]) -> std::process::Output {
    let tls = platform.tls_dir();
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .arg(format!("--cacert={}", tls.join("ca.crt").display()))
        .arg(format!("--cert={}", tls.join("client.crt").display()))
        .arg(format!("--key={}", tls.join("client.key").display()))
        .args(args)
        .output()
        .expect("etcdctl (Debian etcd-client) is installed by scripts/test.sh")
}

/// A metric of one member (its metrics port is plain HTTP), e.g.
/// `kuberaft_tls_certificate_reloads_total `.
fn metric(metrics_port: u16, prefix: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// `spec.tls.mode: Auto` on local processes, as the operator does it on Kubernetes: a
/// CA and certificates are made, members serve https with mutual TLS between peers and
/// require client certificates, the planner itself reaches them with its client
/// certificate (the cluster could not become steady otherwise), etcdctl works with the
/// printed flags and fails without a certificate or over plaintext. Then a member
/// certificate close to expiry is planted (as if 89 days had passed): the next planner
/// round issues a new one under the same CA, members pick it up without a restart, and
/// a writer running all along sees no failed request and no leader change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_auto_serves_mutual_tls_and_renews_certificates_under_load_without_a_restart() {
    use kuberaft_operator::certs;
    let tls_spec = "  tls:\n    mode: Auto\n    clientCertAuth: true\n";
    let h = Harness::start("sec", 3, tls_spec).await;
    h.wait_steady(3).await;
    let https: Vec<String> = h
        .endpoints(0..3)
        .into_iter()
        .map(|e| format!("https://{e}"))
        .collect();
    for (i, endpoint) in https.iter().enumerate() {
        let out = etcdctl_tls(&h.platform, endpoint, &["put", &format!("tls-{i}"), "secret"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = etcdctl_tls(&h.platform, &https[2], &["get", "tls-0", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "secret");
    // No client certificate: refused by the members (client-cert-auth).
    let tls = h.platform.tls_dir();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", https[0]))
        .arg("--command-timeout=3s")
        .arg("--dial-timeout=2s")
        .arg(format!("--cacert={}", tls.join("ca.crt").display()))
        .args(["get", "tls-0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a client without a certificate was served");
    // Plaintext against a TLS port: refused.
    let plain = etcdctl_plain_fails(&h.endpoints(0..1)[0]);
    assert!(plain, "a plaintext client was served");
    // raftctl with etcdctl's flags: endpoints without a scheme go over https.
    let raftctl = |with_cert: bool| {
        let mut cmd = Command::new(binary("raftctl"));
        cmd.arg(format!("--endpoints={}", h.endpoints(0..3).join(",")))
            .arg(format!("--cacert={}", tls.join("ca.crt").display()));
        if with_cert {
            cmd.arg(format!("--cert={}", tls.join("client.crt").display()))
                .arg(format!("--key={}", tls.join("client.key").display()));
        }
        cmd.args(["-o", "json", "status"]).output().unwrap()
    };
    let out = raftctl(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status.to_string().matches("\"role\":\"leader\"").count(),
        1,
        "{status}"
    );
    let out = raftctl(false);
    assert!(
        !out.status.success(),
        "raftctl without a client certificate was served"
    );

    // Plant a member certificate that expires in a day, as if 89 days had passed.
    let read = |name: &str| std::fs::read_to_string(tls.join(name)).unwrap();
    let ca = certs::Pem {
        cert: read("ca.crt"),
        key: read("ca.key"),
    };
    let before = certs::facts(&read("member.crt")).unwrap();
    let day = Duration::from_secs(86_400);
    let planted = certs::issue(
        &ca,
        &certs::Request {
            common_name: "sec member".into(),
            names: vec!["localhost".into(), "127.0.0.1".into()],
            server: true,
        },
        std::time::SystemTime::now() - 89 * day,
        90 * day,
    )
    .unwrap();
    let metrics: Vec<u16> = (0..3).map(|o| h.platform.ports(o).unwrap().metrics).collect();
    const EXPIRY: &str = "kuberaft_tls_certificate_expiry_timestamp_seconds{port=\"client\"} ";
    let served_expiry: Vec<u64> = metrics
        .iter()
        .map(|p| metric(*p, EXPIRY).expect("members report their certificate's expiry"))
        .collect();
    let unix = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(
        served_expiry.iter().all(|e| *e == unix(before.not_after)),
        "{served_expiry:?} vs {:?}",
        unix(before.not_after)
    );
    let pids = h.platform.pids();
    let (leader, term) = (h.status().leader, h.status().term);

    // A writer through etcdctl, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let platform = h.platform.clone();
        let endpoints = https.join(",");
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let started = Instant::now();
            for seq in 0..2_000u32 {
                if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(90) {
                    break;
                }
                let out = etcdctl_tls(&platform, &endpoints, &["put", &format!("w/{seq:05}"), "x"]);
                if out.status.success() {
                    ok += 1;
                } else {
                    failed.push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::write(tls.join("member.key.new"), &planted.key).unwrap();
    std::fs::rename(tls.join("member.key.new"), tls.join("member.key")).unwrap();
    std::fs::write(tls.join("member.crt.new"), &planted.cert).unwrap();
    std::fs::rename(tls.join("member.crt.new"), tls.join("member.crt")).unwrap();

    // The planner renews it (a fresh 90-day certificate under the same CA), and every
    // member serves the renewed one on new connections (the writer keeps making them).
    let deadline = Instant::now() + WAIT;
    loop {
        let now = certs::facts(&read("member.crt")).unwrap();
        let renewed = now.not_after > before.not_after - day && now.issuer == before.issuer;
        let reloaded = renewed
            && metrics
                .iter()
                .all(|p| metric(*p, EXPIRY) == Some(unix(now.not_after)));
        if renewed && reloaded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "renewal not seen: renewed={renewed} reloaded={reloaded}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = writer.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} writes failed during renewal: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok >= 5, "the writer made only {ok} writes");
    assert_eq!(h.platform.pids(), pids, "a member was restarted");
    assert_eq!(
        (h.status().leader, h.status().term),
        (leader, term),
        "leadership changed"
    );
    // The renewed certificate works for a new connection.
    let out = etcdctl_tls(&h.platform, &https[1], &["get", "w/00000", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "x");
    h.shutdown().await;
}

/// True when etcdctl over plaintext cannot use `endpoint`.
fn etcdctl_plain_fails(endpoint: &str) -> bool {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=3s")
        .arg("--dial-timeout=2s")
        .args(["get", "tls-0"])
        .output()
        .unwrap();
    !out.status.success()
}

/// A `moto_server` (PyPI `moto[server]`: an S3-compatible server) on 127.0.0.1, stopped
/// (by PID) when dropped. `None` when it is not installed.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> Option<S3Server> {
        let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = kuberaft_operator::local::reserve_ports(1).unwrap()[0];
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{program} did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    /// CreateBucket (moto accepts an unsigned request).
    fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "CreateBucket: {answer}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_go_to_an_s3_server_keep_two_match_their_checksums_and_restore() {
    use futures::StreamExt;
    use object_store::{ObjectStore, ObjectStoreExt};
    use sha2::Digest;

    let Some(s3) = S3Server::start() else {
        // scripts/test.sh installs it and sets this: there a missing server is a failure.
        assert!(
            std::env::var("KUBERAFT_REQUIRE_MOTO").is_err(),
            "moto_server is not installed but KUBERAFT_REQUIRE_MOTO is set"
        );
        eprintln!(
            "SKIPPED: moto_server (an S3-compatible server) is not installed: pip install 'moto[server]' \
             (scripts/test.sh does), or set MOTO_SERVER"
        );
        return;
    };
    let credentials = kuberaft_operator::backup::S3Credentials {
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
        session_token: None,
    };
    // Every 3 s; the newest two are kept.
    let backup = format!(
        "  backup:\n    schedule: \"*/3 * * * * *\"\n    retention:\n      count: 2\n    destination:\n      s3:\n        bucket: backups\n        prefix: nightly\n        endpoint: {}\n        region: us-east-1\n",
        s3.endpoint
    );
    let h = Harness::start_with("bk", 3, &backup, |p| {
        p.set_s3_credentials(Some(credentials.clone()))
    })
    .await;
    h.wait_steady(3).await;
    // No bucket yet: backups fail, are reported with the destination named, and retried.
    h.wait_for("a failed backup reported", |s| {
        s.backup_schedule.as_ref().is_some_and(|b| {
            b.failures >= 1
                && b.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("s3://backups"))
        }) && s
            .conditions
            .iter()
            .any(|c| c.type_ == "BackupReady" && c.status == "False" && c.reason == "Failed")
    })
    .await;
    assert!(h.status().last_backup.is_none());
    s3.create_bucket("backups");
    let mut c = client(&h.endpoints(0..3)).await;
    let mut revision = 0;
    for i in 0..50 {
        let r = c
            .put(format!("key/{i:03}"), format!("value {i}"), None)
            .await
            .unwrap();
        revision = r.header().unwrap().revision();
    }
    // Three backups (at least) that hold every key.
    h.wait_for("three backups holding the keys", |_| {
        let mut seen: Vec<(String, i64)> = Vec::new();
        for r in h.records() {
            if let Some(b) = r.status.last_backup {
                if b.revision >= revision && !seen.iter().any(|(l, _)| *l == b.location) {
                    seen.push((b.location, b.revision));
                }
            }
        }
        seen.len() >= 3
    })
    .await;
    h.stop.store(true, Ordering::SeqCst);
    tokio::time::sleep(ROUND * 3).await;
    let records = h.records();
    let mut taken: Vec<kuberaft_operator::crd::BackupRecord> = Vec::new();
    for r in &records {
        if let Some(b) = &r.status.last_backup {
            if !taken.iter().any(|t| t.location == b.location) {
                taken.push(b.clone());
            }
        }
    }
    assert!(taken.len() >= 3, "{taken:#?}");
    assert!(taken
        .iter()
        .all(|b| b.size > 0 && b.checksum.len() == 64 && b.member.starts_with("bk-")));
    // Each from a follower: the leader of the round that took it is someone else.
    for b in &taken {
        let round = records
            .iter()
            .find(|r| {
                r.status
                    .last_backup
                    .as_ref()
                    .is_some_and(|l| l.location == b.location)
            })
            .unwrap();
        assert_ne!(round.status.leader.as_deref(), Some(b.member.as_str()), "{b:#?}");
    }

    // Only the newest two are left in the bucket, and each is byte for byte what the
    // status says (SHA-256).
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("backups")
        .with_region("us-east-1")
        .with_endpoint(&s3.endpoint)
        .with_allow_http(true)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap();
    let objects: Vec<object_store::ObjectMeta> = store
        .list(Some(&object_store::path::Path::from("nightly")))
        .map(|m| m.unwrap())
        .collect()
        .await;
    let mut names: Vec<String> = objects.iter().map(|o| o.location.to_string()).collect();
    names.sort();
    let newest: Vec<String> = taken[taken.len() - 2..]
        .iter()
        .map(|b| b.location.trim_start_matches("s3://backups/").to_string())
        .collect();
    assert_eq!(
        names,
        newest,
        "retention count 2 keeps the two newest of {} backups",
        taken.len()
    );
    let mut newest_file = None;
    for b in &taken[taken.len() - 2..] {
        let path = object_store::path::Path::from(b.location.trim_start_matches("s3://backups/"));
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, b.size);
        let digest: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        assert_eq!(digest, b.checksum, "{}", b.location);
        newest_file = Some(bytes);
    }
    h.shutdown().await;

    // The newest backup restores into a new one-member cluster with every key.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");
    std::fs::write(&file, newest_file.unwrap()).unwrap();
    let ports = kuberaft_operator::local::reserve_ports(3).unwrap();
    let member = dir.path().join("r-0");
    let flags = vec![
        "--name=r-0".to_string(),
        format!("--data-dir={}", member.display()),
        format!("--initial-cluster=r-0=http://127.0.0.1:{}", ports[1]),
        "--initial-cluster-token=restored".to_string(),
    ];
    let restore = Command::new(binary("raft-node"))
        .arg("restore")
        .arg(format!("--snapshot={}", file.display()))
        .args(&flags)
        .output()
        .unwrap();
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _node = Stop(
        Command::new(binary("raft-node"))
            .args(&flags)
            .args([
                format!("--listen-client-urls=http://127.0.0.1:{}", ports[0]),
                format!("--advertise-client-urls=http://127.0.0.1:{}", ports[0]),
                format!("--listen-peer-urls=http://127.0.0.1:{}", ports[1]),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{}", ports[1]),
                format!("--listen-metrics-urls=http://127.0.0.1:{}", ports[2]),
                "--initial-cluster-state=new".to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let endpoint = vec![format!("127.0.0.1:{}", ports[0])];
    let deadline = Instant::now() + WAIT;
    let kvs = loop {
        let got = async {
            let mut c = Client::connect(&endpoint, None).await.ok()?;
            c.get("key/", Some(GetOptions::new().with_prefix())).await.ok()
        }
        .await;
        match got {
            Some(r) if r.kvs().len() == 50 => break r,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "the restored member never served the 50 keys"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    for (i, kv) in kvs.kvs().iter().enumerate() {
        assert_eq!(kv.key_str().unwrap(), format!("key/{i:03}"));
        assert_eq!(kv.value_str().unwrap(), format!("value {i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_to_a_directory_keep_only_young_ones_and_an_invalid_schedule_takes_none() {
    use sha2::Digest;
    let backups = tempfile::tempdir().unwrap();
    // Every 2 s; nothing older than 5 s is kept.
    let spec = format!(
        "  backup:\n    schedule: \"*/2 * * * * *\"\n    retention:\n      maxAge: 5s\n    destination:\n      path: {}\n",
        backups.path().display()
    );
    let h = Harness::start("dirbk", 3, &spec).await;
    h.wait_steady(3).await;
    let files = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(backups.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let distinct = |h: &Harness| -> Vec<kuberaft_operator::crd::BackupRecord> {
        let mut out: Vec<kuberaft_operator::crd::BackupRecord> = Vec::new();
        for r in h.records() {
            if let Some(b) = r.status.last_backup {
                if !out.iter().any(|o| o.location == b.location) {
                    out.push(b);
                }
            }
        }
        out
    };
    h.wait_for("six backups", |_| distinct(&h).len() >= 6).await;
    // A bad schedule (as if the API server let one through): refused, none taken.
    let mut cluster = h.platform.cluster();
    cluster.spec.backup.as_mut().unwrap().schedule = "every other second".into();
    h.platform.set_cluster(cluster);
    h.wait_for("the schedule refused", |s| {
        s.conditions.iter().any(|c| {
            c.type_ == "BackupReady" && c.reason == "InvalidSpec" && c.message.contains("every other second")
        })
    })
    .await;
    let taken = distinct(&h);
    let left = files();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        distinct(&h).len(),
        taken.len(),
        "no backup with an invalid schedule"
    );
    assert_eq!(files(), left, "and none deleted");
    // maxAge 5 s with one every 2 s: the young ones only (2 or 3), never a temporary file.
    assert!((1..=3).contains(&left.len()), "{left:?} of {} taken", taken.len());
    assert!(
        left.iter()
            .all(|n| n.starts_with("dirbk_") && n.ends_with(".snap")),
        "{left:?}"
    );
    for name in &left {
        let b = taken
            .iter()
            .find(|b| b.location.ends_with(name.as_str()))
            .unwrap_or_else(|| panic!("{name} is not the newest backups: {taken:#?}"));
        let bytes = std::fs::read(backups.path().join(name)).unwrap();
        let digest: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        assert_eq!(
            (bytes.len() as u64, digest),
            (b.size, b.checksum.clone()),
            "{name}"
        );
    }
    h.shutdown().await;
}

/// Every key of the store at `revision` with what etcd says about it.
async fn kvs_at(c: &mut Client, revision: i64) -> Vec<(String, String, i64, i64, i64, i64)> {
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_revision(revision)),
        )
        .await
        .unwrap();
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_from_an_s3_backup_has_the_keys_revisions_leases_and_hash_of_the_source() {
    let Some(s3) = S3Server::start() else {
        assert!(
            std::env::var("KUBERAFT_REQUIRE_MOTO").is_err(),
            "moto_server is not installed but KUBERAFT_REQUIRE_MOTO is set"
        );
        eprintln!("SKIPPED: moto_server is not installed: pip install 'moto[server]', or set MOTO_SERVER");
        return;
    };
    s3.create_bucket("restore");
    let credentials = kuberaft_operator::backup::S3Credentials {
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
        session_token: None,
    };
    let src = Harness::start_with("src", 3, "", |p| p.set_s3_credentials(Some(credentials.clone()))).await;
    src.wait_steady(3).await;
    let mut c = client(&src.endpoints(0..3)).await;
    // History: puts, overwrites, deletes, a compaction, and keys under a lease.
    for i in 0..40 {
        c.put(format!("key/{i:03}"), format!("v1 {i}"), None)
            .await
            .unwrap();
    }
    let compact_at = c.get("key/000", None).await.unwrap().header().unwrap().revision();
    for i in 0..10 {
        c.put(format!("key/{i:03}"), format!("v2 {i}"), None)
            .await
            .unwrap();
    }
    for i in 30..35 {
        c.delete(format!("key/{i:03}"), None).await.unwrap();
    }
    c.compact(compact_at, None).await.unwrap();
    let lease = c.lease_grant(3_600, None).await.unwrap().id();
    for i in 0..3 {
        c.put(
            format!("leased/{i}"),
            format!("l {i}"),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    }

    // One backup from a follower to the S3 server, as a RaftBackup takes it.
    let status = src.status();
    let follower = status
        .members
        .iter()
        .find(|m| Some(&m.name) != status.leader.as_ref())
        .unwrap()
        .name
        .clone();
    let destination = kuberaft_operator::crd::BackupDestination {
        path: None,
        s3: Some(kuberaft_operator::crd::S3Destination {
            bucket: "restore".into(),
            prefix: Some("src".into()),
            endpoint: Some(s3.endpoint.clone()),
            region: Some("us-east-1".into()),
            credentials_secret: None,
        }),
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let backup = kuberaft_operator::platform::take_backup(
        &src.platform,
        "src",
        Some("manual"),
        &destination,
        None,
        &follower,
        src.ordinal_of(&follower),
        now_ms,
    )
    .await
    .unwrap()
    .record;
    let revision = backup.revision;
    assert!(revision > compact_at, "{backup:#?}");
    // A write after the backup does not come back.
    c.put("after-backup", "x", None).await.unwrap();
    let source_kvs = kvs_at(&mut c, revision).await;
    assert_eq!(source_kvs.len(), 35 + 3, "{source_kvs:#?}");
    let source_hash = c.hash_kv(revision).await.unwrap();
    src.shutdown().await;

    // A new cluster of three from that object, with its checksum.
    let key = backup.location.trim_start_matches("s3://restore/").to_string();
    let bootstrap = format!(
        "  bootstrap:\n    fromBackup:\n      sha256: {}\n      s3:\n        bucket: restore\n        key: {key}\n        endpoint: {}\n        region: us-east-1\n",
        backup.checksum, s3.endpoint
    );
    let dst = Harness::start_with("dst", 3, &bootstrap, |p| {
        p.set_s3_credentials(Some(credentials.clone()))
    })
    .await;
    dst.wait_steady(3).await;
    let records = dst.records();
    let first_step = records
        .iter()
        .find_map(|r| r.action.clone().filter(|a| !matches!(a, Action::Wait { .. })));
    assert!(
        matches!(first_step, Some(Action::Restore { members: 3, .. })),
        "{first_step:?}"
    );
    let restored = dst.status();
    let condition = restored
        .conditions
        .iter()
        .find(|c| c.type_ == "Restored")
        .unwrap();
    assert_eq!(condition.status, "True", "{condition:?}");
    assert!(condition.message.contains(&backup.location), "{condition:?}");
    assert_eq!(
        restored.restore.as_ref().unwrap().checksum.as_deref(),
        Some(backup.checksum.as_str())
    );

    // Every member serves the same keys, revisions and hash as the source at the
    // backup's revision.
    for ordinal in 0..3 {
        let mut m = client(&dst.endpoints([ordinal])).await;
        let got = m.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
        assert_eq!(got.header().unwrap().revision(), revision, "member {ordinal}");
        assert_eq!(kvs_at(&mut m, revision).await, source_kvs, "member {ordinal}");
        let hash = m.hash_kv(revision).await.unwrap();
        assert_eq!(hash.hash(), source_hash.hash(), "HashKV of member {ordinal}");
        assert_eq!(hash.compact_version(), source_hash.compact_version());
    }
    let mut d = client(&dst.endpoints(0..3)).await;
    assert!(d.get("after-backup", None).await.unwrap().kvs().is_empty());
    // The lease came back with its keys, and still expires.
    let ttl = d
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 3_600, "ttl {}", ttl.ttl());
    let mut keys: Vec<String> = ttl
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["leased/0", "leased/1", "leased/2"]);
    // And it takes writes from there.
    let next = d.put("after-restore", "y", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), revision + 1);
    dst.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_whose_backup_cannot_be_read_says_where_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.snap");
    let bootstrap = format!(
        "  bootstrap:\n    fromBackup:\n      path: {}\n",
        missing.display()
    );
    let h = Harness::start("nobk", 3, &bootstrap).await;
    h.wait_for("Restored=False naming the backup", |s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Restored"
                && c.status == "False"
                && c.reason == "BackupUnreadable"
                && c.message.contains(&format!("file://{}", missing.display()))
        })
    })
    .await;
    // A few more rounds: still nothing runs, nothing was written for any member.
    tokio::time::sleep(ROUND * 5).await;
    assert!(h.platform.pids().is_empty(), "{:?}", h.platform.pids());
    assert!(h.platform.workload_replicas().is_none());
    for ordinal in 0..3 {
        assert!(!h.platform.member_dir(ordinal).join("wal").exists());
    }
    let s = h.status();
    assert!(
        !s.bootstrapped && s.restore.as_ref().is_some_and(|r| r.failures >= 1),
        "{s:#?}"
    );
    assert!(h
        .records()
        .iter()
        .all(|r| !matches!(r.action, Some(Action::Bootstrap { .. }))));
    h.shutdown().await;
}

/// Overwrites 256 bytes in the middle of every file of `dir` (a member's WAL).
fn corrupt_files(dir: &Path) -> usize {
    use std::io::{Seek, SeekFrom, Write};
    let mut corrupted = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let len = std::fs::metadata(&path).unwrap().len();
        if len < 1_024 {
            continue;
        }
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(len / 2)).unwrap();
        f.write_all(&[0xA5; 256]).unwrap();
        f.sync_all().unwrap();
        corrupted += 1;
    }
    corrupted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_wal_is_corrupted_is_replaced_while_writes_go_on_and_nothing_is_lost() {
    let h = Harness::start("repl", 3, "").await;
    h.wait_steady(3).await;
    let endpoints = h.endpoints(0..3);
    let load = Load::start(endpoints.clone(), 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = h.status();
    let victim = status
        .members
        .iter()
        .find(|m| Some(&m.name) != status.leader.as_ref())
        .unwrap()
        .name
        .clone();
    let ordinal = h.ordinal_of(&victim);
    // A crash, and its WAL damaged before it comes back: every start-up refuses it.
    h.platform.kill_member(ordinal);
    let corrupted = corrupt_files(&h.platform.member_dir(ordinal).join("wal"));
    assert!(corrupted > 0, "no WAL file to corrupt");
    h.wait_for("the member replaced", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "MemberReplaced" && c.status == "True" && c.reason == "Replaced")
    })
    .await;
    h.wait_steady(3).await;
    let acked = load.finish().await;
    assert_all_present(&endpoints, &acked).await;
    // In this order, each once: removed, added back, wiped, promoted.
    let steps: Vec<String> = h
        .records()
        .iter()
        .filter_map(|r| r.action.clone())
        .filter(|a| {
            matches!(
                a,
                Action::ReplaceMember { .. }
                    | Action::AddLearner { .. }
                    | Action::WipeMember { .. }
                    | Action::Promote { .. }
            )
        })
        .map(|a| a.kind().to_string())
        .collect();
    assert_eq!(
        steps,
        vec!["ReplaceMember", "AddLearner", "WipeMember", "Promote"],
        "{steps:?}"
    );
    let condition = h
        .status()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "MemberReplaced")
        .unwrap();
    assert!(
        condition.message.contains(&victim) && condition.message.contains("failed to start"),
        "{condition:?}"
    );
    // The new member holds the data (a serializable read on it alone).
    let last = acked.last().unwrap().clone();
    let deadline = Instant::now() + WAIT;
    loop {
        let out = etcdctl(
            &h.endpoints([ordinal])[0],
            &["get", &last, "--print-value-only", "--consistency=s"],
        );
        if !out.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{victim} never served {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.shutdown().await;
}
