//! Whole nodes in one process: the real runtime, the real WAL with fsync on temporary
//! directories, and an in-memory transport (the gRPC one is tested elsewhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kuberaft_node::api::admin::AdminService;
use kuberaft_node::kv::{KvCommand, KvResult};
use kuberaft_node::raft::{ConfChange, Config, Message, MessageBody, NodeId, Role, Timing};
use kuberaft_node::runtime::{self, Input, NodeHandle, Outbox, RuntimeConfig};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Registry {
    nodes: BTreeMap<NodeId, NodeHandle>,
    /// Nodes cut off from everyone.
    isolated: BTreeSet<NodeId>,
}

/// Delivers messages between nodes of one process. Snapshots are copied from the
/// sender's snapshot store into the receiver's before the message is delivered, as
/// the real transport does after streaming the file (a marker is materialised first).
struct MemOutbox {
    registry: Arc<Mutex<Registry>>,
}

impl Outbox for MemOutbox {
    fn send(&self, message: Message) {
        let registry = self.registry.lock().unwrap();
        if registry.isolated.contains(&message.from) || registry.isolated.contains(&message.to) {
            return;
        }
        let (Some(from), Some(to)) = (registry.nodes.get(&message.from), registry.nodes.get(&message.to))
        else {
            return;
        };
        if let MessageBody::InstallSnapshot { meta } = &message.body {
            // As the real transport: a marker is materialised from the state store.
            let info = from
                .snapshots()
                .for_sending(meta)
                .unwrap()
                .expect("sender has the snapshot");
            assert_eq!(&info.meta, meta);
            let mut reader = from.snapshots().open_reader(&info).unwrap();
            let mut writer = to.snapshots().create(meta).unwrap();
            std::io::copy(&mut reader, &mut writer).unwrap();
            writer.finish().unwrap();
        }
        let _ = to.inbox().try_send(Input::Message(message));
    }
}

struct Cluster {
    registry: Arc<Mutex<Registry>>,
    dirs: tempfile::TempDir,
    tasks: BTreeMap<NodeId, JoinHandle<()>>,
    voters: Vec<NodeId>,
    snapshot_entries: u64,
}

impl Cluster {
    async fn start(voters: &[NodeId], snapshot_entries: u64) -> Cluster {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let mut cluster = Cluster {
            registry: Arc::default(),
            dirs: tempfile::tempdir().unwrap(),
            tasks: BTreeMap::new(),
            voters: voters.to_vec(),
            snapshot_entries,
        };
        for &id in voters {
            cluster.start_node(id).await;
        }
        cluster
    }

    fn dir(&self, id: NodeId, what: &str) -> PathBuf {
        self.dirs.path().join(format!("n{id}-{what}"))
    }

    async fn start_node(&mut self, id: NodeId) {
        self.start_node_as(id, Some(self.voters.clone())).await;
    }

    /// Starts a node that is not among the bootstrap voters: it waits to be added.
    async fn start_joiner(&mut self, id: NodeId) {
        self.start_node_as(id, None).await;
    }

    async fn start_node_as(&mut self, id: NodeId, bootstrap: Option<Vec<NodeId>>) {
        let mut raft = Config::new(id);
        raft.timing = Timing {
            heartbeat_ticks: 2,
            election_ticks: 20,
        };
        raft.snapshot_entries = self.snapshot_entries;
        raft.log_tail_entries = 5;
        let mut config = RuntimeConfig::new(raft, 0xc1, self.dir(id, "wal"), self.dir(id, "snap"));
        config.tick = Duration::from_millis(5);
        config.bootstrap = bootstrap;
        let outbox = Arc::new(MemOutbox {
            registry: self.registry.clone(),
        });
        let (handle, task) = runtime::start(config, outbox).await.unwrap();
        self.registry.lock().unwrap().nodes.insert(id, handle);
        self.tasks.insert(id, task);
    }

    /// Stops a node abruptly (its core task is aborted; nothing is flushed).
    fn kill(&mut self, id: NodeId) {
        self.tasks.remove(&id).unwrap().abort();
        self.registry.lock().unwrap().nodes.remove(&id);
    }

    fn node(&self, id: NodeId) -> NodeHandle {
        self.registry.lock().unwrap().nodes[&id].clone()
    }

    async fn leader(&self) -> NodeId {
        for _ in 0..400 {
            let nodes: Vec<(NodeId, NodeHandle)> = self
                .registry
                .lock()
                .unwrap()
                .nodes
                .iter()
                .map(|(i, h)| (*i, h.clone()))
                .collect();
            for (id, handle) in nodes {
                if handle.status().borrow().role == Role::Leader {
                    return id;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no leader within 4 s");
    }

    async fn put(&self, key: &str, value: &str) -> KvResult {
        for _ in 0..100 {
            let leader = self.leader().await;
            match self.node(leader).propose(put(key, value)).await {
                Ok(result) => return result,
                Err(e) => {
                    eprintln!("retrying put {key}: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        panic!("put {key} never succeeded");
    }

    /// Proposes a membership change through whoever leads, until it is accepted.
    async fn change_membership(&self, change: ConfChange) -> u64 {
        for _ in 0..500 {
            let leader = self.leader().await;
            match self.node(leader).propose_conf_change(change).await {
                Ok(index) => return index,
                // Not yet: an earlier change is in flight, the learner is catching up...
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        panic!("{change:?} never accepted");
    }
}

fn put(key: &str, value: &str) -> KvCommand {
    KvCommand::Put {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value.to_string()),
        lease: 0,
        prev_kv: false,
    }
}

async fn read(node: &NodeHandle, key: &str) -> Option<Bytes> {
    let store = node.read_linearizable().await.unwrap();
    store
        .range(key.as_bytes(), b"", 0, false, false)
        .kvs
        .first()
        .map(|kv| kv.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_writes_and_serve_linearizable_reads_everywhere() {
    let cluster = Cluster::start(&[1, 2, 3], 0).await;
    for i in 0..20 {
        cluster.put(&format!("k{i}"), &format!("v{i}")).await;
    }
    for id in [1, 2, 3] {
        let node = cluster.node(id);
        assert_eq!(read(&node, "k19").await, Some(Bytes::from("v19")), "n{id}");
        assert_eq!(read(&node, "k0").await, Some(Bytes::from("v0")), "n{id}");
    }
    let leader = cluster.leader().await;
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    // A follower forwards the write to the leader over the peer connection and answers
    // once it applied the write itself: its own store already holds it.
    match cluster.node(follower).propose(put("x", "y")).await {
        Ok(KvResult::Put { revision, .. }) => {
            let store = cluster.node(follower).read_local();
            assert!(store.revision() >= revision, "n{follower} applied its own write");
            let kvs = store.range(b"x", b"", 0, false, false).kvs;
            assert_eq!(kvs.first().map(|kv| kv.value.clone()), Some(Bytes::from("y")));
            assert_eq!(kvs.first().map(|kv| kv.mod_revision), Some(revision));
        }
        other => panic!("a follower forwards the write and answers after applying it: {other:?}"),
    }
    assert_eq!(read(&cluster.node(leader), "x").await, Some(Bytes::from("y")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_restart_of_every_node() {
    let mut cluster = Cluster::start(&[1, 2, 3], 0).await;
    for i in 0..30 {
        cluster.put(&format!("k{i}"), &format!("v{i}")).await;
    }
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for id in [1, 2, 3] {
        cluster.start_node(id).await;
    }
    cluster.leader().await;
    for id in [1, 2, 3] {
        let node = cluster.node(id);
        for i in [0, 15, 29] {
            assert_eq!(
                read(&node, &format!("k{i}")).await,
                Some(Bytes::from(format!("v{i}"))),
                "n{id} k{i}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_many_entries_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start(&[1, 2, 3], 20).await;
    cluster.put("first", "1").await;
    let leader = cluster.leader().await;
    let lagging = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    cluster.kill(lagging);
    for i in 0..120 {
        cluster.put(&format!("k{i}"), &format!("v{i}")).await;
    }
    let snapshot = cluster
        .node(leader)
        .snapshots()
        .latest()
        .unwrap()
        .expect("the leader took snapshots");
    // The lagging node holds entries up to about 5; the leader's log now starts after
    // its snapshot index minus a tail of 5, so only a snapshot can bring it back.
    assert!(snapshot.meta.index > 50, "snapshot at {}", snapshot.meta.index);
    cluster.start_node(lagging).await;
    let node = cluster.node(lagging);
    let mut caught_up = false;
    for _ in 0..300 {
        if node.read_local().range(b"k119", b"", 0, false, false).count == 1 {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(caught_up, "n{lagging} did not catch up");
    assert!(
        node.snapshots().latest().unwrap().is_some(),
        "n{lagging} was brought back by a snapshot"
    );
    assert_eq!(read(&node, "first").await, Some(Bytes::from("1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_cannot_commit_and_the_majority_moves_on() {
    let cluster = Cluster::start(&[1, 2, 3], 0).await;
    cluster.put("before", "1").await;
    let old = cluster.leader().await;
    cluster.registry.lock().unwrap().isolated.insert(old);
    let stuck = tokio::time::timeout(
        Duration::from_millis(500),
        cluster.node(old).propose(put("lost", "x")),
    )
    .await;
    assert!(
        !matches!(stuck, Ok(Ok(_))),
        "an isolated leader must not acknowledge a write"
    );
    // The others elect a new leader and serve writes.
    let mut new = old;
    for _ in 0..400 {
        let found = {
            let registry = cluster.registry.lock().unwrap();
            registry
                .nodes
                .iter()
                .find(|(id, h)| **id != old && h.status().borrow().role == Role::Leader)
                .map(|(id, _)| *id)
        };
        if let Some(id) = found {
            new = id;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ne!(new, old, "the majority elected a new leader");
    cluster.node(new).propose(put("after", "2")).await.unwrap();
    cluster.registry.lock().unwrap().isolated.clear();
    let node = cluster.node(old);
    for _ in 0..300 {
        if node.read_local().range(b"after", b"", 0, false, false).count == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(read(&node, "after").await, Some(Bytes::from("2")));
    assert_eq!(
        read(&node, "lost").await,
        None,
        "the write the isolated leader took never happened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_reports_join_promotion_and_leave_in_log_order() {
    use kuberaft_proto::admin::admin_server::Admin;
    use kuberaft_proto::admin::{EventKind, WatchEventsRequest};
    use tokio_stream::StreamExt;

    let mut cluster = Cluster::start(&[1, 2, 3], 0).await;
    cluster.put("before", "1").await;
    let names: BTreeMap<NodeId, (String, String)> = (1..=4)
        .map(|id| (id, (format!("n{id}"), format!("http://n{id}"))))
        .collect();
    let mut streams = Vec::new();
    for id in [1, 2, 3] {
        let admin = AdminService::new(
            cluster.node(id),
            id,
            format!("n{id}"),
            0xc1,
            names.clone(),
            Default::default(),
        );
        let stream = admin
            .watch_events(tonic::Request::new(WatchEventsRequest { replay: 0 }))
            .await
            .unwrap()
            .into_inner();
        streams.push((id, stream));
    }

    cluster.start_joiner(4).await;
    let added = cluster.change_membership(ConfChange::AddLearner(4)).await;
    cluster.put("while a learner", "2").await;
    let promoted = cluster.change_membership(ConfChange::Promote(4)).await;
    let removed = cluster.change_membership(ConfChange::Remove(4)).await;
    assert!(added < promoted && promoted < removed);

    let membership_kinds = [EventKind::Join, EventKind::Promoted, EventKind::Leave];
    for (id, stream) in &mut streams {
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap_or_else(|_| panic!("n{id}: only {seen:?} within 10 s"))
                .expect("the stream stays open")
                .expect("the stream stays healthy");
            // The first listener of a member also hears the initial members' JOIN
            // (the bootstrap configuration entries); this scenario is about n4.
            if membership_kinds.iter().any(|k| *k as i32 == event.kind) && event.member_id == 4 {
                seen.push(event);
            }
        }
        let summary: Vec<(i32, u64, String)> = seen
            .iter()
            .map(|e| (e.kind, e.index, e.member_name.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (EventKind::Join as i32, added, "n4".to_string()),
                (EventKind::Promoted as i32, promoted, "n4".to_string()),
                (EventKind::Leave as i32, removed, "n4".to_string()),
            ],
            "n{id}"
        );
        for event in &seen {
            assert_eq!((event.member_id, event.reporter_id), (4, *id));
            assert!(event.term > 0 && event.time_unix_ms > 0, "{event:?}");
        }
    }
    cluster.kill(4);
}
