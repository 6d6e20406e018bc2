//! The planner and `platform::execute` driving real `raft-node` processes on 127.0.0.1:
//! bootstrap detection, a live timing change through SetTiming, and a rolling restart
//! (followers first, leadership transferred before the leader restarts) — the same
//! code path the Kubernetes controller runs, with a test platform that restarts
//! processes instead of deleting pods.
//!
//! `raft-node` is another crate's binary: build it first with
//! `cargo build -p kuberaft-node --bin raft-node` (same profile and target directory),
//! or point `RAFT_NODE_BIN` at one. Every process started here is ended by its PID.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kuberaft_operator::adaptive::TimingMs;
use kuberaft_operator::crd::{RaftClusterSpec, RaftClusterStatus, Storage, Timing, Volume};
use kuberaft_operator::plan::{plan, Action, Naming, Observed, PodObservation};
use kuberaft_operator::platform::{execute, Platform};
use kuberaft_operator::render::template_hash;
use kuberaft_operator::{node, Error, Result};

fn raft_node_bin() -> PathBuf {
    let path = std::env::var_os("RAFT_NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_raftctl")).with_file_name("raft-node"));
    assert!(
        path.is_file(),
        "raft-node not found at {}: build it first with `cargo build -p kuberaft-node --bin raft-node` \
         (same profile and CARGO_TARGET_DIR), or set RAFT_NODE_BIN",
        path.display()
    );
    path
}

/// `n` distinct free ports below the ephemeral range (see `reserve_ports`).
fn free_ports(n: usize) -> Vec<u16> {
    kuberaft_operator::local::reserve_ports(n).unwrap()
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

struct Process {
    client: u16,
    peer: u16,
    metrics: u16,
    child: Option<Child>,
    /// The template hash it was (re)started with, like a pod's annotation.
    hash: String,
    restarts: u32,
}

/// Local processes as a [`Platform`]: only what this test's steps need.
struct Processes {
    procs: Mutex<Vec<Process>>,
    base: tempfile::TempDir,
    token: String,
    /// The hash a restarted process gets (the "current template").
    template: Mutex<String>,
}

impl Processes {
    fn start(size: usize, hash: &str) -> Processes {
        let ports = free_ports(3 * size);
        let procs = (0..size)
            .map(|i| Process {
                client: ports[3 * i],
                peer: ports[3 * i + 1],
                metrics: ports[3 * i + 2],
                child: None,
                hash: hash.to_string(),
                restarts: 0,
            })
            .collect();
        let p = Processes {
            procs: Mutex::new(procs),
            base: tempfile::tempdir().unwrap(),
            token: format!("planner-{}", std::process::id()),
            template: Mutex::new(hash.to_string()),
        };
        for i in 0..size {
            p.spawn(i);
        }
        p
    }

    fn peer_url(&self, ordinal: u32) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.procs.lock().unwrap()[ordinal as usize].peer
        )
    }

    fn spawn(&self, i: usize) {
        let mut procs = self.procs.lock().unwrap();
        let initial = procs
            .iter()
            .enumerate()
            .map(|(o, p)| format!("demo-{o}=http://127.0.0.1:{}", p.peer))
            .collect::<Vec<_>>()
            .join(",");
        let dir = self.base.path().join(format!("demo-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log.txt"))
            .unwrap();
        let p = &mut procs[i];
        let child = Command::new(raft_node_bin())
            .arg(format!("--name=demo-{i}"))
            .arg(format!("--data-dir={}", dir.display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{}", p.client))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", p.peer))
            .arg(format!("--listen-metrics-urls=http://127.0.0.1:{}", p.metrics))
            .arg(format!("--initial-cluster={initial}"))
            .arg(format!("--initial-cluster-token={}", self.token))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        p.child = Some(child);
    }

    fn observe(&self, members: Vec<kuberaft_operator::plan::MemberObservation>) -> Observed {
        let procs = self.procs.lock().unwrap();
        Observed {
            failed_starts: Default::default(),
            workload_replicas: Some(procs.len() as i32),
            pods: procs
                .iter()
                .enumerate()
                .map(|(o, p)| PodObservation {
                    ordinal: o as u32,
                    template_hash: Some(p.hash.clone()),
                    ready: p.child.is_some() && http_status(p.metrics, "/readyz") == Some(200),
                    terminating: false,
                })
                .collect(),
            volume_ordinals: (0..procs.len() as u32).collect::<BTreeSet<_>>(),
            members,
            now_ms: 0,
        }
    }

    fn endpoints(&self) -> Vec<String> {
        let n = self.procs.lock().unwrap().len() as u32;
        (0..n).map(|o| self.client_endpoint(o)).collect()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for p in self.procs.lock().unwrap().iter_mut() {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Platform for Processes {
    fn access(&self) -> node::Access {
        node::Access::plain()
    }

    fn client_endpoint(&self, ordinal: u32) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.procs.lock().unwrap()[ordinal as usize].client
        )
    }

    async fn scale_workload(&self, to: i32) -> Result<()> {
        Err(Error::Manifest(format!(
            "this test never scales (asked for {to})"
        )))
    }

    async fn backup_target(
        &self,
        _destination: &kuberaft_operator::crd::BackupDestination,
    ) -> Result<kuberaft_operator::backup::Target> {
        Err(Error::Manifest("this test takes no backups".into()))
    }

    async fn restore(
        &self,
        _source: &kuberaft_operator::crd::BackupSource,
        _members: i32,
    ) -> Result<kuberaft_operator::restore::Fetched> {
        Err(Error::Manifest("this test restores nothing".into()))
    }

    async fn wipe_member(&self, _ordinal: u32) -> Result<()> {
        Err(Error::Manifest("this test replaces no member".into()))
    }

    async fn restart_member(&self, ordinal: u32) -> Result<()> {
        {
            let mut procs = self.procs.lock().unwrap();
            let p = &mut procs[ordinal as usize];
            if let Some(child) = p.child.take() {
                // Graceful, like a pod deletion (SIGTERM), by PID.
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                let mut child = child;
                let deadline = Instant::now() + Duration::from_secs(20);
                while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            p.hash = self.template.lock().unwrap().clone();
            p.restarts += 1;
        }
        self.spawn(ordinal as usize);
        Ok(())
    }

    async fn delete_volumes(&self, ordinal: u32) -> Result<()> {
        Err(Error::Manifest(format!(
            "this test never deletes volumes (ordinal {ordinal})"
        )))
    }
}

fn spec(image: &str, heartbeat: u32, election: u32) -> RaftClusterSpec {
    let volume = Volume {
        size: "1Gi".into(),
        storage_class_name: None,
    };
    RaftClusterSpec {
        replicas: 3,
        image: image.into(),
        image_pull_policy: None,
        storage: Storage {
            wal: volume.clone(),
            snapshots: volume,
            reclaim_policy: Default::default(),
        },
        timing: Timing {
            heartbeat_interval_ms: heartbeat,
            election_timeout_ms: election,
            ..Timing::default()
        },
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

/// Reconciles (observe, plan, execute) until the planner has nothing left to do;
/// returns the steps taken, waits excluded.
async fn reconcile_until_steady(
    platform: &Processes,
    naming: &Naming,
    spec: &RaftClusterSpec,
    status: &mut RaftClusterStatus,
) -> Vec<Action> {
    *platform.template.lock().unwrap() = template_hash(spec);
    let mut steps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = None;
    while Instant::now() < deadline {
        let members = node::Access::plain().statuses(&platform.endpoints()).await;
        let observed = platform.observe(members);
        let p = plan(spec, Some(status), &observed, naming);
        status.bootstrapped = p.bootstrapped;
        match &p.action {
            None => return steps,
            Some(Action::Wait { .. }) => {}
            Some(Action::Refuse { reason }) => panic!("refused: {reason}"),
            Some(action) => {
                // A step may fail transiently (e.g. a transfer racing an election); the
                // next round plans again from what it then observes.
                match execute(platform, &p, naming).await {
                    Ok(()) => steps.push(action.clone()),
                    Err(e) => eprintln!("step {action} failed, planning again: {e}"),
                }
            }
        }
        last = p.action.clone();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("not steady within 120 s; last plan: {last:?}; steps: {steps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_changes_timing_live_and_rolls_a_restart_through_real_members_leader_last() {
    let first = spec("raft-node:1", 100, 1000);
    let platform = Arc::new(Processes::start(3, &template_hash(&first)));
    let naming = {
        let platform = platform.clone();
        Naming {
            prefix: "demo".into(),
            peer_url: Arc::new(move |o| {
                if (o as usize) < 3 {
                    platform.peer_url(o)
                } else {
                    String::new()
                }
            }),
        }
    };
    let mut status = RaftClusterStatus::default();

    // Bootstrap is recognised; nothing else to do (timing already as specified).
    let steps = reconcile_until_steady(&platform, &naming, &first, &mut status).await;
    assert!(status.bootstrapped);
    assert_eq!(steps, vec![], "a fresh cluster matching its spec needs no step");

    // Fixed timing changed in the spec: applied live, no restart.
    let faster = spec("raft-node:1", 50, 600);
    let steps = reconcile_until_steady(&platform, &naming, &faster, &mut status).await;
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(matches!(steps[0], Action::SetTiming { .. }));
    for endpoint in platform.endpoints() {
        let s = node::Access::plain().status(&endpoint).await.unwrap();
        assert_eq!(
            s.timing,
            TimingMs {
                heartbeat_interval_ms: 50,
                election_timeout_ms: 600
            },
            "{endpoint}"
        );
    }
    assert!(platform.procs.lock().unwrap().iter().all(|p| p.restarts == 0));

    // A new image: a rolling restart, followers first, the leader last after a transfer.
    let members = node::Access::plain().statuses(&platform.endpoints()).await;
    let leader_before = members
        .iter()
        .find(|m| m.role == kuberaft_operator::plan::Role::Leader)
        .map(|m| m.name.clone())
        .expect("a leader");
    let upgraded = spec("raft-node:2", 50, 600);
    let steps = reconcile_until_steady(&platform, &naming, &upgraded, &mut status).await;
    let restarts: Vec<u32> = steps
        .iter()
        .filter_map(|a| match a {
            Action::RestartMember { ordinal } => Some(*ordinal),
            _ => None,
        })
        .collect();
    assert_eq!(restarts.len(), 3, "every member restarted once: {steps:?}");
    assert_eq!(restarts.iter().collect::<BTreeSet<_>>().len(), 3, "{steps:?}");
    // Whoever led when its turn came had handed over first.
    let first_transfer = steps
        .iter()
        .position(|a| matches!(a, Action::TransferLeader { .. }))
        .expect("leadership was transferred before the leader restarted");
    if let Action::TransferLeader { from, .. } = &steps[first_transfer] {
        let from_ordinal: u32 = from.trim_start_matches("demo-").parse().unwrap();
        let restart_of_from = steps
            .iter()
            .position(|a| matches!(a, Action::RestartMember { ordinal } if *ordinal == from_ordinal))
            .unwrap();
        assert!(restart_of_from > first_transfer, "{steps:?}");
    }
    assert!(!leader_before.is_empty());
    let hash = template_hash(&upgraded);
    assert!(platform
        .procs
        .lock()
        .unwrap()
        .iter()
        .all(|p| p.hash == hash && p.restarts == 1));
    // Timing survived the restarts (it lives in the log, not in the flags).
    let members = node::Access::plain().statuses(&platform.endpoints()).await;
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m.timing.heartbeat_interval_ms == 50));
}
