//! The robustness runner: a cluster of real `raft-node` processes (built with the
//! `failpoints` feature) under mixed client traffic while faults come and go, then
//! checks of what the clients saw against what the cluster kept.
//!
//!     cargo test -p kuberaft-node --features failpoints --test robustness -- --ignored --nocapture
//!     ROBUST_SCENARIO=partition ROBUST_SECONDS=60 ROBUST_SEED=42 cargo test ... (same)
//!
//! - `ROBUST_SEED`: the seed of every random choice (traffic mix, fault schedule);
//!   default a new one, printed. Process timing is not deterministic, so a seed
//!   replays the same schedule, not the same interleaving: run a failing seed a few
//!   times.
//! - `ROBUST_SCENARIO`: one of [`SCENARIOS`] or a comma-separated list; default the CI
//!   list ([`CI_SCENARIOS`]).
//! - `ROBUST_SECONDS`: seconds of traffic per scenario (default 20); the long mode is
//!   `ROBUST_SCENARIO=mixed ROBUST_SECONDS=600`.
//! - `ROBUST_RAFT_NODE`: another `raft-node` binary to test (with crash points;
//!   `scripts/inject-robust-bugs.py` points it at builds with injected bugs).
//! - `ROBUST_MEMBERS`: cluster size (default 5 for `partition`, 3 otherwise).
//! - `ROBUST_COMPACT=0`: no compaction in the traffic (default: a compaction every
//!   1-3 s below every live watch; the history before it comes from a recorder that
//!   watched from revision 1).
//!
//! Traffic: KV clients (puts, deletes, compare-and-swap txns, linearizable and
//! serializable reads on a few shared keys; puts on per-client keys), a
//! Kubernetes-shaped client (creates with `version == 0`, updates and deletes with
//! `mod_revision ==` compares, paged lists with `limit` and a continue key at one
//! revision, an informer watching from the list's revision), a lease client (grant,
//! attach, keep-alive, revoke or expire) and watchers (from an old revision, cancelled
//! and resumed from the last revision seen, also after errors).
//!
//! Faults, one at a time or overlapping (`mixed`): kill -9 and restart, SIGSTOP and
//! SIGCONT, crash points (`raft-node failpoints`: abort in the WAL path, a simulated
//! power loss of what the WAL file never saw fsynced — of one member or of every
//! member at once — slow fsyncs, aborts while a snapshot is received), network
//! partitions with nft drop rules on this run's ports (peer ports: symmetric and
//! one-way, of the leader or a follower, and a split that leaves the leader in a
//! minority with one follower; client ports: clients time out on a healthy member;
//! skipped with a message without root or nft), leadership transfers, and membership
//! changes (a learner added, promoted, then removed).
//!
//! Checks: the shared keys' history is linearizable (`kuberaft_check`);
//! every acknowledged write is in the final history at its revision with its value; a
//! per-client key's version lies between its acknowledged and its attempted puts (no
//! entry applied twice); serializable reads return values the history holds at their
//! mod revision, and every read (serializable ones on any member too) the state the
//! history has at its header's revision; every paged list is the history's state at
//! its revision and every guarded write found what its compare required; every
//! watcher (and informer) got exactly the history from its start revision on
//! (ordered, unique, each revision in one response, resumed without gap or repeat);
//! every member has the same history and the same HashKV at the final revision; no key
//! outlives its lease.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, MemberAddOptions, PutOptions, Txn,
    TxnOp, WatchOptions,
};
use kuberaft_check::{check_kv_history, CheckResult, KvInput, KvOutput, Operation};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::{free_ports, http_get};

const SCENARIOS: &[&str] = &[
    "none",
    "kill",
    "stop",
    "crash",
    "power-loss",
    "partition",
    "leader",
    "membership",
    "mixed",
];
const CI_SCENARIOS: &[&str] = &["mixed", "power-loss", "partition", "membership"];
const SHARED_KEYS: usize = 6;
const KV_CLIENTS: usize = 4;
const WATCHERS: usize = 2;
const OP_TIMEOUT: Duration = Duration::from_secs(3);
const FLAGS: &[&str] = &[
    "--heartbeat-interval=50",
    "--election-timeout=500",
    "--snapshot-count=300",
];

// ------------------------------------------------------------------ the cluster

struct Node {
    name: String,
    client: u16,
    peer: u16,
    metrics: u16,
    dir: PathBuf,
    gid: u32,
    child: Option<Child>,
    joining: bool,
    initial_cluster: String,
    removed: bool,
    /// Kept out of other faults (a fault is active on it).
    busy: bool,
}

struct Rig {
    nodes: Vec<Node>,
    token: String,
    base: PathBuf,
    _tmp: tempfile::TempDir,
    nft: Option<String>,
}

impl Rig {
    fn new(size: usize) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let mut rig = Rig {
            nodes: Vec::new(),
            token: format!("robust-{}", std::process::id()),
            base,
            _tmp: tmp,
            nft: None,
        };
        for _ in 0..size {
            rig.add_node(false);
        }
        let initial = rig.initial_cluster(&(0..size).collect::<Vec<_>>());
        for n in &mut rig.nodes {
            n.initial_cluster = initial.clone();
        }
        rig
    }

    fn add_node(&mut self, joining: bool) -> usize {
        let i = self.nodes.len();
        let ports = free_ports(3);
        self.nodes.push(Node {
            name: format!("m{i}"),
            client: ports[0],
            peer: ports[1],
            metrics: ports[2],
            dir: self.base.join(format!("m{i}")),
            gid: 47_000 + (std::process::id() % 1000) * 16 + i as u32,
            child: None,
            joining,
            initial_cluster: String::new(),
            removed: false,
            busy: false,
        });
        i
    }

    fn initial_cluster(&self, of: &[usize]) -> String {
        of.iter()
            .map(|&i| format!("{}=http://127.0.0.1:{}", self.nodes[i].name, self.nodes[i].peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn failpoint_file(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("failpoints")
    }

    fn arm(&self, i: usize, spec: &str) {
        std::fs::write(self.failpoint_file(i), spec).unwrap();
    }

    fn spawn(&mut self, i: usize) {
        use std::os::unix::process::CommandExt;
        let root = unsafe_free_is_root();
        let token = self.token.clone();
        let n = &mut self.nodes[i];
        std::fs::create_dir_all(&n.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("log.txt"))
            .unwrap();
        let mut command = Command::new(raft_node());
        command
            .arg(format!("--name={}", n.name))
            .arg(format!("--data-dir={}", n.dir.join("data").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{}", n.client))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{}", n.client))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", n.peer))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                n.peer
            ))
            .arg(format!("--listen-metrics-urls=http://127.0.0.1:{}", n.metrics))
            .arg(format!("--initial-cluster={}", n.initial_cluster))
            .arg(format!("--initial-cluster-token={token}"))
            .args(FLAGS)
            .env("KUBERAFT_FAILPOINTS_FILE", n.dir.join("failpoints"))
            .stdout(Stdio::null())
            .stderr(log);
        if n.joining {
            command.arg("--initial-cluster-state=existing");
        }
        if root {
            // Its own group, so that nft can tell its packets apart (meta skgid).
            command.gid(n.gid);
        }
        n.child = Some(command.spawn().unwrap());
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, i: usize, signal: &str) {
        if let Some(child) = &self.nodes[i].child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Whether member `i`'s process has exited (reaped).
    fn exited(&mut self, i: usize) -> bool {
        match &mut self.nodes[i].child {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].removed && self.nodes[i].child.is_some())
            .collect()
    }

    fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].client)
    }

    fn role(&self, i: usize) -> Option<u64> {
        let body = http_get(self.nodes[i].metrics, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix("kuberaft_role "))
            .and_then(|v| v.trim().parse().ok())
    }

    fn log_tail(&self, i: usize, lines: usize) -> String {
        let log = std::fs::read_to_string(self.nodes[i].dir.join("log.txt")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    // ---- nft

    fn nft_setup(&mut self) -> Result<(), String> {
        if !unsafe_free_is_root() {
            return Err("not root".into());
        }
        let table = format!("kuberaft_robust_{}", std::process::id());
        nft(&format!("add table inet {table}"))?;
        nft(&format!(
            "add chain inet {table} out {{ type filter hook output priority 0 ; policy accept ; }}"
        ))?;
        self.nft = Some(table);
        Ok(())
    }

    fn partition(&self, i: usize, kind: &str) -> Result<(), String> {
        let Some(table) = &self.nft else {
            return Err("no nft".into());
        };
        let n = &self.nodes[i];
        let others: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, m)| m.peer.to_string())
            .collect();
        let others = format!("{{ {} }}", others.join(", "));
        let cannot_send = format!(
            "add rule inet {table} out meta skgid {} tcp dport {others} drop",
            n.gid
        );
        let cannot_receive = format!("add rule inet {table} out tcp dport {} drop", n.peer);
        let no_replies = format!(
            "add rule inet {table} out meta skgid {} tcp sport {} drop",
            n.gid, n.peer
        );
        match kind {
            "symmetric" => {
                nft(&cannot_send)?;
                nft(&cannot_receive)?;
                nft(&no_replies)
            }
            "cannot-send" => nft(&cannot_send),
            _ => nft(&cannot_receive),
        }
    }

    /// Cuts the peer traffic between the members of `a` and those of `b` both ways
    /// (a connection's first packet is dropped at its initiator).
    fn split(&self, a: &[usize], b: &[usize]) -> Result<(), String> {
        let Some(table) = &self.nft else {
            return Err("no nft".into());
        };
        let ports = |of: &[usize]| {
            let p: Vec<String> = of.iter().map(|&i| self.nodes[i].peer.to_string()).collect();
            format!("{{ {} }}", p.join(", "))
        };
        for (from, to) in [(a, b), (b, a)] {
            for &i in from {
                nft(&format!(
                    "add rule inet {table} out meta skgid {} tcp dport {} drop",
                    self.nodes[i].gid,
                    ports(to)
                ))?;
            }
        }
        Ok(())
    }

    /// Drops every packet to member `i`'s client port: clients time out on it while
    /// the member itself is fine.
    fn cut_clients(&self, i: usize) -> Result<(), String> {
        let Some(table) = &self.nft else {
            return Err("no nft".into());
        };
        nft(&format!(
            "add rule inet {table} out tcp dport {} drop",
            self.nodes[i].client
        ))
    }

    fn heal_partitions(&self) {
        if let Some(table) = &self.nft {
            let _ = nft(&format!("flush chain inet {table} out"));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(table) = self.nft.take() {
            let _ = nft(&format!("delete table inet {table}"));
        }
        for i in 0..self.nodes.len() {
            self.signal(i, "CONT");
            self.kill(i);
        }
    }
}

fn nft(rule: &str) -> Result<(), String> {
    let out = Command::new("nft")
        .args(rule.split_whitespace())
        .output()
        .map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft {rule}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn unsafe_free_is_root() -> bool {
    // The workspace forbids unsafe code: read the effective uid from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

async fn connect(endpoints: &[String]) -> Option<Client> {
    let options = ConnectOptions::new()
        .with_timeout(OP_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(1));
    tokio::time::timeout(Duration::from_secs(5), Client::connect(endpoints, Some(options)))
        .await
        .ok()?
        .ok()
}

// ------------------------------------------------------------------ recording

/// (key, value, mod_revision) of one listed object.
type Item = (Vec<u8>, Vec<u8>, i64);
/// (key, value or none, the response's header revision, serializable?) of a read.
type ReadAt = (Vec<u8>, Option<Vec<u8>>, i64, bool);
/// (revision, value or none) of one change of a key.
type Change<'a> = (i64, Option<&'a [u8]>);

/// (response number, revision, key, put?, value) as a watcher received it.
type WatchedEvent = (u64, i64, Vec<u8>, bool, Vec<u8>);

#[derive(Default)]
struct Record {
    ops: Vec<Operation>,
    /// (key, value, revision) of every acknowledged put.
    puts: Vec<(Vec<u8>, Vec<u8>, i64)>,
    /// (key, revision) of every acknowledged delete that deleted something.
    deletes: Vec<(Vec<u8>, i64)>,
    /// (key, value, mod_revision) of every value read.
    reads: Vec<(Vec<u8>, Vec<u8>, i64)>,
    /// (key, value or none, the response's header revision, serializable?) of every
    /// read: the value must be the history's at that revision.
    reads_at: Vec<ReadAt>,
    /// Per-client key: (acknowledged puts, puts of unknown outcome).
    unique: BTreeMap<Vec<u8>, (i64, i64)>,
    /// Per watcher: start revision and every event as (response number, revision,
    /// key, put?, value).
    /// Per watcher: start revision, the prefix watched, and every event as (response
    /// number, revision, key, put?, value).
    watched: Vec<(i64, Vec<u8>, Vec<WatchedEvent>)>,
    /// Kubernetes-shaped traffic: (revision, a paged list's items as (key, value,
    /// mod_revision)) of every list completed at one revision.
    lists: Vec<(i64, Vec<Item>)>,
    /// (key, required mod_revision (0: the key must not exist), revision) of every
    /// create or update that succeeded on its compare.
    guarded: Vec<(Vec<u8>, i64, i64)>,
    notes: Vec<String>,
    /// The recorder's history (see [`recorder`]).
    recorded: History,
}

struct Shared {
    clock: AtomicU64,
    stop: AtomicBool,
    revision: AtomicI64,
    record: Mutex<Record>,
    /// The next revision each live watch needs (by watcher): the compactor stays
    /// below them all, and sets `compacted` while it holds this lock.
    pins: Mutex<HashMap<u64, i64>>,
    /// The highest revision a compaction was asked for.
    compacted: AtomicI64,
}

impl Shared {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
    /// Pins `watcher` at `next`; with `fresh`, picks a start revision above the
    /// compaction at most `back` revisions back instead and returns it.
    fn pin(&self, watcher: u64, next: i64) {
        self.pins.lock().unwrap().insert(watcher, next);
    }
    fn pin_fresh(&self, watcher: u64, rng: &mut ChaCha8Rng) -> i64 {
        let mut pins = self.pins.lock().unwrap();
        let low = self.compacted.load(Ordering::SeqCst) + 1;
        let current = self.revision.load(Ordering::Relaxed).max(low);
        let start = rng.gen_range(low..=current);
        pins.insert(watcher, start);
        start
    }
    fn unpin(&self, watcher: u64) {
        self.pins.lock().unwrap().remove(&watcher);
    }
    fn saw_revision(&self, r: i64) {
        self.revision.fetch_max(r, Ordering::Relaxed);
    }
}

fn shared_key(k: usize) -> Vec<u8> {
    format!("r/k{k}").into_bytes()
}

async fn kv_client(id: usize, seed: u64, endpoints: Vec<String>, shared: Arc<Shared>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((id as u64 + 1) * 0x9e37_79b9));
    let mut client = None;
    let mut n = 0u64;
    let mut last_seen: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    while !shared.stop.load(Ordering::Relaxed) && n < 1_000_000 {
        if client.is_none() {
            client = connect(&endpoints).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let c = client.as_mut().unwrap();
        n += 1;
        let key = shared_key(rng.gen_range(0..SHARED_KEYS));
        let value = format!("c{id}-{n}").into_bytes();
        let roll = rng.gen_range(0..100);
        let call = shared.tick();
        let mut failed = false;
        if roll < 30 {
            let r = tokio::time::timeout(OP_TIMEOUT, c.put(key.clone(), value.clone(), None)).await;
            let ret = shared.tick();
            let output = match r {
                Ok(Ok(resp)) => {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    shared.saw_revision(rev);
                    shared
                        .record
                        .lock()
                        .unwrap()
                        .puts
                        .push((key.clone(), value.clone(), rev));
                    KvOutput::Put
                }
                _ => {
                    failed = true;
                    KvOutput::Unknown
                }
            };
            push_op(&shared, id, call, ret, KvInput::Put { key, value }, output);
        } else if roll < 36 {
            let r = tokio::time::timeout(OP_TIMEOUT, c.delete(key.clone(), None)).await;
            let ret = shared.tick();
            let output = match r {
                Ok(Ok(resp)) => {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    shared.saw_revision(rev);
                    if resp.deleted() > 0 {
                        shared.record.lock().unwrap().deletes.push((key.clone(), rev));
                    }
                    KvOutput::Delete
                }
                _ => {
                    failed = true;
                    KvOutput::Unknown
                }
            };
            push_op(&shared, id, call, ret, KvInput::Delete { key }, output);
        } else if roll < 52 {
            let expected = last_seen.get(&key).cloned().flatten();
            let compare = match &expected {
                Some(v) => Compare::value(key.clone(), CompareOp::Equal, v.clone()),
                None => Compare::version(key.clone(), CompareOp::Equal, 0),
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key.clone(), value.clone(), None)]);
            let r = tokio::time::timeout(OP_TIMEOUT, c.txn(txn)).await;
            let ret = shared.tick();
            let output = match r {
                Ok(Ok(resp)) => {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    shared.saw_revision(rev);
                    if resp.succeeded() {
                        shared
                            .record
                            .lock()
                            .unwrap()
                            .puts
                            .push((key.clone(), value.clone(), rev));
                        last_seen.insert(key.clone(), Some(value.clone()));
                    }
                    KvOutput::Cas {
                        succeeded: resp.succeeded(),
                    }
                }
                _ => {
                    failed = true;
                    KvOutput::Unknown
                }
            };
            push_op(
                &shared,
                id,
                call,
                ret,
                KvInput::Cas {
                    key,
                    expected,
                    new: value,
                },
                output,
            );
        } else if roll < 80 {
            let serializable = roll >= 70;
            let options = serializable.then(|| GetOptions::new().with_serializable());
            let r = tokio::time::timeout(OP_TIMEOUT, c.get(key.clone(), options)).await;
            let ret = shared.tick();
            match r {
                Ok(Ok(resp)) => {
                    let kv = resp.kvs().first();
                    let got = kv.map(|kv| kv.value().to_vec());
                    {
                        let mut record = shared.record.lock().unwrap();
                        if let Some(kv) = kv {
                            record
                                .reads
                                .push((key.clone(), kv.value().to_vec(), kv.mod_revision()));
                        }
                        let at = resp.header().map_or(0, |h| h.revision());
                        record.reads_at.push((key.clone(), got.clone(), at, serializable));
                    }
                    last_seen.insert(key.clone(), got.clone());
                    if !serializable {
                        shared.saw_revision(resp.header().map_or(0, |h| h.revision()));
                        push_op(&shared, id, call, ret, KvInput::Get { key }, KvOutput::Get(got));
                    }
                }
                _ => failed = true,
            }
        } else {
            // A per-client key: its version counts the puts applied.
            let ukey = format!("r/u/{id}/{}", rng.gen_range(0..4)).into_bytes();
            let r = tokio::time::timeout(OP_TIMEOUT, c.put(ukey.clone(), value.clone(), None)).await;
            let mut record = shared.record.lock().unwrap();
            let entry = record.unique.entry(ukey.clone()).or_default();
            match r {
                Ok(Ok(resp)) => {
                    entry.0 += 1;
                    let rev = resp.header().map_or(0, |h| h.revision());
                    record.puts.push((ukey, value, rev));
                }
                _ => {
                    entry.1 += 1;
                    failed = true;
                }
            }
        }
        if failed {
            // A fresh connection after an error: the old one may point at a dead member.
            client = None;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(10..100))).await;
        }
    }
}

fn push_op(shared: &Shared, client: usize, call: u64, ret: u64, input: KvInput, output: KvOutput) {
    let ret = (output != KvOutput::Unknown).then_some(ret);
    shared.record.lock().unwrap().ops.push(Operation {
        client: client as u64,
        call,
        ret,
        input,
        output,
    });
}

/// Grants short leases, attaches a key to each, keeps some alive for a while, then
/// revokes or abandons them.
async fn lease_client(seed: u64, endpoints: Vec<String>, shared: Arc<Shared>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1ea5e);
    let mut n = 0;
    while !shared.stop.load(Ordering::Relaxed) && n < 10_000 {
        n += 1;
        let Some(mut c) = connect(&endpoints).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(Ok(lease)) = tokio::time::timeout(OP_TIMEOUT, c.lease_grant(3, None)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let id = lease.id();
        let key = format!("r/l/{n}");
        let put = c.put(key.clone(), "leased", Some(PutOptions::new().with_lease(id)));
        if let Ok(Ok(resp)) = tokio::time::timeout(OP_TIMEOUT, put).await {
            let rev = resp.header().map_or(0, |h| h.revision());
            shared
                .record
                .lock()
                .unwrap()
                .puts
                .push((key.into_bytes(), b"leased".to_vec(), rev));
        }
        if let Ok(Ok((mut keeper, mut stream))) =
            tokio::time::timeout(OP_TIMEOUT, c.lease_keep_alive(id)).await
        {
            for _ in 0..rng.gen_range(0..4) {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let kept = tokio::time::timeout(OP_TIMEOUT, async {
                    keeper.keep_alive().await?;
                    stream.message().await
                })
                .await;
                if !matches!(kept, Ok(Ok(Some(_)))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        }
        if rng.gen_bool(0.5) {
            let _ = tokio::time::timeout(OP_TIMEOUT, c.lease_revoke(id)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;
    }
}

/// Watches every test key from an old revision; cancels now and then and resumes
/// from the revision after the last event, as a client must.
async fn watcher(id: usize, seed: u64, endpoints: Vec<String>, shared: Arc<Shared>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x3a7c_0000 + id as u64));
    let start = shared.pin_fresh(id as u64, &mut rng);
    let mut next = start;
    let mut events = Vec::new();
    let mut responses = 0u64;
    let mut notes = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let endpoint = endpoints[rng.gen_range(0..endpoints.len())].clone();
        let Some(mut c) = connect(&[endpoint]).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let options = WatchOptions::new().with_prefix().with_start_revision(next);
        let Ok(Ok(mut stream)) = tokio::time::timeout(OP_TIMEOUT, c.watch("r/", Some(options))).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let until = Instant::now() + Duration::from_millis(rng.gen_range(500..4000));
        while Instant::now() < until && !shared.stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                Err(_) => continue, // quiet
                Ok(Ok(Some(resp))) => {
                    if resp.canceled() {
                        notes.push(format!(
                            "watcher {id}: canceled at {next}: {} (compact {})",
                            resp.cancel_reason(),
                            resp.compact_revision()
                        ));
                        break;
                    }
                    responses += 1;
                    for e in resp.events() {
                        let Some(kv) = e.kv() else { continue };
                        events.push((
                            responses,
                            kv.mod_revision(),
                            kv.key().to_vec(),
                            e.event_type() == EventType::Put,
                            kv.value().to_vec(),
                        ));
                        next = kv.mod_revision() + 1;
                    }
                    shared.pin(id as u64, next);
                }
                Ok(_) => break, // error or end: resume
            }
        }
    }
    shared.unpin(id as u64);
    let mut record = shared.record.lock().unwrap();
    record.watched.push((start, b"r/".to_vec(), events));
    record.notes.extend(notes);
}

/// The pin of the recorder (watchers use their ids, the informer [`INFORMER`]).
const RECORDER: u64 = 1000;
const INFORMER: u64 = 100;

/// Records the whole history under `r/` from revision 1 on, resuming after the last
/// event on any member: with compaction in the traffic, the final checks can read
/// only what is newer than the compaction from the members, and take the rest from
/// here (cross-checked against every member where both exist).
async fn recorder(seed: u64, endpoints: Vec<String>, shared: Arc<Shared>) -> History {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7265_636f);
    let mut history: History = Vec::new();
    let mut next = 1;
    shared.pin(RECORDER, next);
    let mut rounds = 0;
    while !shared.stop.load(Ordering::Relaxed) && rounds < 100_000 {
        rounds += 1;
        let endpoint = endpoints[rng.gen_range(0..endpoints.len())].clone();
        let Some(mut c) = connect(&[endpoint]).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let options = WatchOptions::new().with_prefix().with_start_revision(next);
        let Ok(Ok(mut stream)) = tokio::time::timeout(OP_TIMEOUT, c.watch("r/", Some(options))).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !shared.stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(resp))) if !resp.canceled() => {
                    for e in resp.events() {
                        if let Some(kv) = e.kv() {
                            history.push((
                                kv.mod_revision(),
                                kv.key().to_vec(),
                                e.event_type() == EventType::Put,
                                kv.value().to_vec(),
                            ));
                            next = kv.mod_revision() + 1;
                        }
                    }
                    shared.pin(RECORDER, next);
                }
                _ => break,
            }
        }
    }
    history
}

/// Compacts now and then, below every live watch (a watch already behind a
/// compaction is canceled, which the checks cannot tell from a bug) and a little
/// behind the newest revision; paged lists at an older revision fail as compacted
/// and start over, as an apiserver's do.
async fn compactor(seed: u64, endpoints: Vec<String>, shared: Arc<Shared>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc0_3ac7);
    let mut rounds = 0;
    while !shared.stop.load(Ordering::Relaxed) && rounds < 10_000 {
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..3000))).await;
        let at = {
            let pins = shared.pins.lock().unwrap();
            let lowest = pins.values().copied().min().unwrap_or(i64::MAX) - 1;
            let at = lowest.min(shared.revision.load(Ordering::Relaxed) - rng.gen_range(10..100));
            if at <= shared.compacted.load(Ordering::SeqCst) {
                continue;
            }
            shared.compacted.store(at, Ordering::SeqCst);
            at
        };
        if let Some(mut c) = connect(&endpoints).await {
            let _ = tokio::time::timeout(OP_TIMEOUT, c.compact(at, None)).await;
        }
    }
}

/// Kubernetes-shaped traffic, as an apiserver drives etcd: objects under `r/o/`
/// created with a `version == 0` compare, updated and deleted with a `mod_revision ==`
/// compare on what was last read, listed in pages (`limit`, then a continue key) all
/// at the first page's revision, and watched from the list's revision (an informer).
async fn kube_client(seed: u64, endpoints: Vec<String>, shared: Arc<Shared>) {
    const OBJECTS: usize = 12;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6b75_6265);
    let mut client = None;
    let mut known: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut n = 0u64;
    let mut informer: Option<(i64, Vec<WatchedEvent>)> = None;
    let mut lists = Vec::new();
    let mut guarded = Vec::new();
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    let mut watched = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) && n < 100_000 {
        if client.is_none() {
            client = connect(&endpoints).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let c = client.as_mut().unwrap();
        n += 1;
        let key = format!("r/o/{:02}", rng.gen_range(0..OBJECTS)).into_bytes();
        let value = format!("o{n}").into_bytes();
        let roll = rng.gen_range(0..100);
        let ok = if roll < 65 {
            // Create, or update what was last seen.
            let seen = known.get(&key).copied().unwrap_or(0);
            let compare = if seen == 0 {
                Compare::version(key.clone(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(key.clone(), CompareOp::Equal, seen)
            };
            let delete = seen != 0 && rng.gen_bool(0.15);
            let then = if delete {
                TxnOp::delete(key.clone(), None)
            } else {
                TxnOp::put(key.clone(), value.clone(), None)
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([then])
                .or_else([TxnOp::get(key.clone(), None)]);
            match tokio::time::timeout(OP_TIMEOUT, c.txn(txn)).await {
                Ok(Ok(resp)) => {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    shared.saw_revision(rev);
                    if resp.succeeded() {
                        guarded.push((key.clone(), seen, rev));
                        if delete {
                            deletes.push((key.clone(), rev));
                            known.insert(key, 0);
                        } else {
                            puts.push((key.clone(), value, rev));
                            known.insert(key, rev);
                        }
                    } else {
                        // Conflict: learn the current object, as a controller would.
                        let current = resp.op_responses().into_iter().find_map(|op| match op {
                            etcd_client::TxnOpResponse::Get(g) => {
                                Some(g.kvs().first().map_or(0, |kv| kv.mod_revision()))
                            }
                            _ => None,
                        });
                        known.insert(key, current.unwrap_or(0));
                    }
                    true
                }
                _ => false,
            }
        } else if roll < 85 {
            // A paged list at one revision.
            match paged_list(c, &mut rng).await {
                Ok((rev, items)) => {
                    shared.saw_revision(rev);
                    for (k, _, m) in &items {
                        known.insert(k.clone(), *m);
                    }
                    lists.push((rev, items));
                    if informer.is_none() || rng.gen_bool(0.3) {
                        if let Some((start, events)) = informer.take() {
                            watched.push((start, events));
                        }
                        // The list's revision may be compacted already: then the
                        // watch is canceled and the informer lists again.
                        shared.pin(INFORMER, rev + 1);
                        informer = Some((rev + 1, Vec::new()));
                    }
                    true
                }
                Err(_) => false,
            }
        } else {
            // The informer: watch from the list's revision on, resume after the last
            // event seen.
            match informer.as_mut() {
                Some((start, events)) => {
                    let from = events.last().map_or(*start, |e: &WatchedEvent| e.1 + 1);
                    let outcome = inform(c, from, events, &mut rng).await;
                    if let Some(last) = events.last() {
                        shared.pin(INFORMER, last.1 + 1);
                    }
                    match outcome {
                        Inform::Ok => true,
                        Inform::Failed => false,
                        Inform::Compacted => {
                            shared.unpin(INFORMER);
                            watched.extend(informer.take());
                            true
                        }
                    }
                }
                None => true,
            }
        };
        if !ok {
            client = None;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(10..100))).await;
        }
    }
    let mut record = shared.record.lock().unwrap();
    if let Some(last) = informer {
        watched.push(last);
    }
    record.watched.extend(
        watched
            .into_iter()
            .map(|(start, events)| (start, b"r/o/".to_vec(), events)),
    );
    record.lists.extend(lists);
    record.guarded.extend(guarded);
    record.puts.extend(puts);
    record.deletes.extend(deletes);
}

/// Lists `r/o/` in pages of a few items, every page at the first page's revision.
async fn paged_list(c: &mut Client, rng: &mut ChaCha8Rng) -> Result<(i64, Vec<Item>), String> {
    let limit = rng.gen_range(1..5);
    let end = b"r/o0".to_vec();
    let mut from = b"r/o/".to_vec();
    let mut at = 0;
    let mut items = Vec::new();
    for _ in 0..100 {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
        if at != 0 {
            options = options.with_revision(at);
        }
        let resp = tokio::time::timeout(OP_TIMEOUT, c.get(from.clone(), Some(options)))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        if at == 0 {
            at = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            items.push((kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision()));
        }
        match resp.kvs().last() {
            Some(kv) if resp.more() => {
                from = kv.key().to_vec();
                from.push(0);
            }
            _ => return Ok((at, items)),
        }
    }
    Err("list did not end in 100 pages".into())
}

enum Inform {
    Ok,
    Failed,
    /// Canceled: the revision was compacted (the informer lists again).
    Compacted,
}

/// Watches `r/o/` from `from` for a moment.
async fn inform(c: &mut Client, from: i64, events: &mut Vec<WatchedEvent>, rng: &mut ChaCha8Rng) -> Inform {
    let options = WatchOptions::new().with_prefix().with_start_revision(from);
    let Ok(Ok(mut stream)) = tokio::time::timeout(OP_TIMEOUT, c.watch("r/o/", Some(options))).await else {
        return Inform::Failed;
    };
    let until = Instant::now() + Duration::from_millis(rng.gen_range(100..500));
    let mut responses = events.last().map_or(0, |e| e.0);
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(100), stream.message()).await {
            Err(_) => continue,
            Ok(Ok(Some(resp))) => {
                if resp.canceled() {
                    return if resp.compact_revision() > 0 {
                        Inform::Compacted
                    } else {
                        Inform::Failed
                    };
                }
                responses += 1;
                for e in resp.events() {
                    if let Some(kv) = e.kv() {
                        events.push((
                            responses,
                            kv.mod_revision(),
                            kv.key().to_vec(),
                            e.event_type() == EventType::Put,
                            kv.value().to_vec(),
                        ));
                    }
                }
            }
            Ok(_) => return Inform::Failed,
        }
    }
    Inform::Ok
}

// ------------------------------------------------------------------ faults

enum Fault {
    Killed(usize),
    Stopped(usize),
    /// A crash point armed on the member; restarted once it exits.
    Crash(usize, String),
    /// The same crash point armed on several members at once (a power loss of the
    /// whole rack: `wal-power-loss` on a majority loses whatever was acknowledged
    /// without an fsync).
    CrashAll(Vec<usize>, String),
    /// A sleep point armed (slow disk); disarmed at the end.
    Slow(usize),
    Partition(usize),
    /// An added member: (index, id, promoted).
    Learner(usize, u64, bool),
}

impl Fault {
    fn members(&self) -> Vec<usize> {
        match self {
            Fault::Killed(i)
            | Fault::Stopped(i)
            | Fault::Crash(i, _)
            | Fault::Slow(i)
            | Fault::Partition(i)
            | Fault::Learner(i, _, _) => vec![*i],
            Fault::CrashAll(all, _) => all.clone(),
        }
    }
}

fn leader(rig: &Rig) -> Option<usize> {
    rig.live().into_iter().find(|&i| rig.role(i) == Some(3))
}

async fn member_ids(rig: &Arc<Mutex<Rig>>) -> Option<(u64, Vec<(u64, String, bool)>)> {
    let endpoints: Vec<String> = {
        let rig = rig.lock().unwrap();
        rig.live().iter().map(|&i| rig.endpoint(i)).collect()
    };
    let mut c = connect(&endpoints).await?;
    let status = tokio::time::timeout(OP_TIMEOUT, c.status()).await.ok()?.ok()?;
    let list = tokio::time::timeout(OP_TIMEOUT, c.member_list())
        .await
        .ok()?
        .ok()?;
    Some((
        status.leader(),
        list.members()
            .iter()
            .map(|m| (m.id(), m.name().to_string(), m.is_learner()))
            .collect(),
    ))
}

/// Starts one fault of the scenario on a member not already faulted; returns it, or
/// None when nothing was started (a transfer has nothing to heal).
async fn inject(
    scenario: &str,
    rng: &mut ChaCha8Rng,
    rig: &Arc<Mutex<Rig>>,
    log: &mut Vec<String>,
    learner_active: bool,
) -> Option<Fault> {
    let kinds: &[&str] = match scenario {
        "kill" => &["kill"],
        "stop" => &["stop"],
        "crash" => &["crash", "slow", "snapshot-crash"],
        "power-loss" => &["power-loss", "power-loss-all"],
        // Splits that leave the leader in a minority with one follower are weighted:
        // they leave an uncommitted tail on that follower, for the next leader to
        // overwrite (5 members).
        "partition" => &[
            "partition",
            "partition",
            "leader-minority",
            "leader-minority",
            "client-port",
        ],
        "leader" => &["move-leader"],
        "membership" => &["learner"],
        "mixed" => &[
            "kill",
            "stop",
            "crash",
            "slow",
            "power-loss",
            "power-loss-all",
            "partition",
            "leader-minority",
            "client-port",
            "move-leader",
            "learner",
            "snapshot-crash",
        ],
        _ => &[],
    };
    if kinds.is_empty() {
        return None;
    }
    let kind = kinds[rng.gen_range(0..kinds.len())];
    let on_leader = kind == "leader-minority" || rng.gen_bool(0.5);
    let target = {
        let rig = rig.lock().unwrap();
        let free: Vec<usize> = rig
            .live()
            .into_iter()
            .filter(|&i| !rig.nodes[i].busy && !rig.nodes[i].joining)
            .collect();
        if free.is_empty() {
            return None;
        }
        let leader = leader(&rig).filter(|l| free.contains(l));
        match (on_leader, leader) {
            (true, Some(l)) => l,
            _ => free[rng.gen_range(0..free.len())],
        }
    };
    let fault = match kind {
        "kill" => {
            rig.lock().unwrap().kill(target);
            Fault::Killed(target)
        }
        "stop" => {
            rig.lock().unwrap().signal(target, "STOP");
            Fault::Stopped(target)
        }
        "crash" | "power-loss" => {
            let points = if kind == "crash" {
                &[
                    "wal-after-write",
                    "wal-before-fsync",
                    "wal-after-fsync",
                    "wal-writer-group",
                    "wal-writer-before-ack",
                    "apply-before-commit",
                    "apply-after-commit",
                    "state-before-durable-commit",
                    "state-after-durable-commit",
                    "snapshot-marker",
                ][..]
            } else {
                &["wal-power-loss"][..]
            };
            let point = points[rng.gen_range(0..points.len())];
            let spec = format!("{point}={}%1*abort", rng.gen_range(5..60));
            rig.lock().unwrap().arm(target, &spec);
            Fault::Crash(target, spec)
        }
        "slow" => {
            let point =
                ["wal-after-fsync", "wal-writer-before-ack", "transport-peer-batch"][rng.gen_range(0..3)];
            let spec = format!("{point}=50%sleep({})", rng.gen_range(20..400));
            rig.lock().unwrap().arm(target, &spec);
            Fault::Slow(target)
        }
        "snapshot-crash" => {
            // Down long enough to need a snapshot, then crashes while receiving it.
            {
                let mut r = rig.lock().unwrap();
                if Some(target) == leader(&r) {
                    return None;
                }
                r.kill(target);
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1500..3000))).await;
            let point = ["transport-snapshot-chunk", "transport-snapshot-received"][rng.gen_range(0..2)];
            let spec = format!("{point}=1*abort");
            let mut r = rig.lock().unwrap();
            r.arm(target, &spec);
            r.spawn(target);
            Fault::Crash(target, spec)
        }
        "power-loss-all" => {
            let mut r = rig.lock().unwrap();
            let all: Vec<usize> = r
                .live()
                .into_iter()
                .filter(|&i| !r.nodes[i].busy && !r.nodes[i].joining)
                .collect();
            if all.len() * 2 <= r.live().len() {
                return None;
            }
            let spec = "wal-power-loss=1*abort".to_string();
            for &i in &all {
                r.arm(i, &spec);
                r.nodes[i].busy = true;
            }
            log.push(format!("power-loss-all {all:?}"));
            return Some(Fault::CrashAll(all, spec));
        }
        "leader-minority" | "client-port" => {
            let r = rig.lock().unwrap();
            let outcome = if kind == "client-port" {
                r.cut_clients(target)
            } else {
                // The leader and as many others as leave it a minority.
                let voters: Vec<usize> = (0..r.nodes.len())
                    .filter(|&i| !r.nodes[i].removed && !r.nodes[i].joining && i != target)
                    .collect();
                let mut a = vec![target];
                let mut b = voters.clone();
                while (a.len() + 1) * 2 < voters.len() + 1 && !b.is_empty() {
                    a.push(b.remove(rng.gen_range(0..b.len())));
                }
                log.push(format!("split {a:?} | {b:?}"));
                r.split(&a, &b)
            };
            if let Err(e) = outcome {
                log.push(format!("{kind} skipped: {e}"));
                return None;
            }
            Fault::Partition(target)
        }
        "partition" => {
            let how = ["symmetric", "cannot-send", "cannot-receive"][rng.gen_range(0..3)];
            let r = rig.lock().unwrap();
            if let Err(e) = r.partition(target, how) {
                log.push(format!("partition skipped: {e}"));
                return None;
            }
            log.push(format!("partition {how}"));
            Fault::Partition(target)
        }
        "move-leader" => {
            let (leader_id, members) = member_ids(rig).await?;
            let voters: Vec<u64> = members
                .iter()
                .filter(|(id, _, learner)| !learner && *id != leader_id)
                .map(|(id, _, _)| *id)
                .collect();
            if voters.is_empty() {
                return None;
            }
            let to = voters[rng.gen_range(0..voters.len())];
            let leader_endpoint = {
                let r = rig.lock().unwrap();
                leader(&r).map(|l| r.endpoint(l))
            }?;
            let outcome = match connect(&[leader_endpoint]).await {
                Some(mut c) => tokio::time::timeout(OP_TIMEOUT, c.move_leader(to))
                    .await
                    .map_or("timeout".to_string(), |r| format!("{:?}", r.map(|_| ()))),
                None => "no connection".into(),
            };
            log.push(format!("move-leader to {to:x}: {outcome}"));
            return None;
        }
        "learner" => {
            if learner_active {
                return None;
            }
            let (new, peer_url) = {
                let mut r = rig.lock().unwrap();
                let new = r.add_node(true);
                (new, format!("http://127.0.0.1:{}", r.nodes[new].peer))
            };
            let endpoints: Vec<String> = {
                let r = rig.lock().unwrap();
                r.live().iter().map(|&i| r.endpoint(i)).collect()
            };
            let mut c = connect(&endpoints).await?;
            let added = tokio::time::timeout(
                OP_TIMEOUT,
                c.member_add([peer_url], Some(MemberAddOptions::new().with_is_learner())),
            )
            .await;
            let Ok(Ok(resp)) = added else {
                log.push(format!("learner add failed: {added:?}"));
                rig.lock().unwrap().nodes[new].removed = true;
                return None;
            };
            let id = resp.member().map_or(0, |m| m.id());
            let mut r = rig.lock().unwrap();
            let names: Vec<(String, u16)> = resp
                .member_list()
                .iter()
                .filter_map(|m| {
                    let url = m.peer_urls().first()?;
                    let port = url.rsplit(':').next()?.parse().ok()?;
                    let name = if m.id() == id {
                        r.nodes[new].name.clone()
                    } else {
                        m.name().to_string()
                    };
                    Some((name, port))
                })
                .collect();
            r.nodes[new].initial_cluster = names
                .iter()
                .map(|(name, port)| format!("{name}=http://127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(",");
            r.spawn(new);
            r.nodes[new].busy = true;
            log.push(format!("learner m{new} ({id:x}) added"));
            Fault::Learner(new, id, false)
        }
        _ => return None,
    };
    log.push(format!("{kind} m{:?}", fault.members()));
    for i in fault.members() {
        rig.lock().unwrap().nodes[i].busy = true;
    }
    Some(fault)
}

/// Progress of an active fault between injection and healing (a crashed member is
/// restarted, a learner promoted).
async fn progress(fault: &mut Fault, rig: &Arc<Mutex<Rig>>, log: &mut Vec<String>) {
    match fault {
        Fault::Crash(i, spec) => {
            let mut r = rig.lock().unwrap();
            if r.nodes[*i].child.is_some() && r.exited(*i) {
                log.push(format!("m{i} crashed at {spec}; restarted"));
                r.arm(*i, "");
                r.nodes[*i].child = None;
                r.spawn(*i);
                *spec = format!("{spec} (fired)");
            }
        }
        Fault::CrashAll(all, spec) => {
            let mut r = rig.lock().unwrap();
            for &i in all.iter() {
                if r.nodes[i].child.is_some() && r.exited(i) {
                    log.push(format!("m{i} crashed at {spec}; restarted"));
                    r.arm(i, "");
                    r.nodes[i].child = None;
                    r.spawn(i);
                }
            }
        }
        Fault::Learner(_, id, promoted) if !*promoted => {
            let endpoints: Vec<String> = {
                let r = rig.lock().unwrap();
                r.live()
                    .iter()
                    .filter(|&&i| !r.nodes[i].joining)
                    .map(|&i| r.endpoint(i))
                    .collect()
            };
            if let Some(mut c) = connect(&endpoints).await {
                if let Ok(Ok(_)) = tokio::time::timeout(OP_TIMEOUT, c.member_promote(*id)).await {
                    log.push(format!("learner {id:x} promoted"));
                    *promoted = true;
                }
            }
        }
        _ => {}
    }
}

/// Ends a fault. Returns false when it must be tried again (a removal without quorum).
async fn heal(fault: &Fault, rig: &Arc<Mutex<Rig>>, log: &mut Vec<String>) -> bool {
    match fault {
        Fault::Killed(i) => rig.lock().unwrap().spawn(*i),
        Fault::Stopped(i) => rig.lock().unwrap().signal(*i, "CONT"),
        Fault::Crash(i, spec) => {
            let mut r = rig.lock().unwrap();
            r.arm(*i, "");
            if r.exited(*i) {
                log.push(format!("m{i} crashed at {spec}; restarted"));
                r.nodes[*i].child = None;
                r.spawn(*i);
            }
        }
        Fault::CrashAll(all, spec) => {
            let mut r = rig.lock().unwrap();
            for &i in all {
                r.arm(i, "");
                if r.exited(i) {
                    log.push(format!("m{i} crashed at {spec}; restarted"));
                    r.nodes[i].child = None;
                    r.spawn(i);
                }
            }
        }
        Fault::Slow(i) => rig.lock().unwrap().arm(*i, ""),
        Fault::Partition(_) => rig.lock().unwrap().heal_partitions(),
        Fault::Learner(i, id, _) => {
            let endpoints: Vec<String> = {
                let r = rig.lock().unwrap();
                r.live()
                    .iter()
                    .filter(|&&j| j != *i)
                    .map(|&j| r.endpoint(j))
                    .collect()
            };
            let removed = match connect(&endpoints).await {
                Some(mut c) => matches!(
                    tokio::time::timeout(OP_TIMEOUT, c.member_remove(*id)).await,
                    Ok(Ok(_))
                ),
                None => false,
            };
            if !removed {
                return false;
            }
            log.push(format!("member m{i} ({id:x}) removed"));
            let mut r = rig.lock().unwrap();
            r.kill(*i);
            r.nodes[*i].removed = true;
        }
    }
    for i in fault.members() {
        rig.lock().unwrap().nodes[i].busy = false;
    }
    true
}

async fn run_faults(
    scenario: String,
    seed: u64,
    rig: Arc<Mutex<Rig>>,
    shared: Arc<Shared>,
    until: Instant,
) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfa17);
    let mut log = Vec::new();
    let overlap = if scenario == "mixed" { 2 } else { 1 };
    let mut active: Vec<(Fault, Instant)> = Vec::new();
    let mut next = Instant::now() + Duration::from_millis(rng.gen_range(500..1500));
    let mut rounds = 0;
    while rounds < 100_000 {
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        let finishing = now >= until || shared.stop.load(Ordering::Relaxed);
        let mut still = Vec::new();
        for (mut fault, deadline) in active.drain(..) {
            progress(&mut fault, &rig, &mut log).await;
            if (finishing || Instant::now() >= deadline) && heal(&fault, &rig, &mut log).await {
                continue;
            }
            still.push((fault, deadline));
        }
        active = still;
        if finishing {
            if active.is_empty() || now > until + Duration::from_secs(30) {
                break;
            }
            continue;
        }
        if now >= next && active.len() < overlap {
            let learner_active = active.iter().any(|(f, _)| matches!(f, Fault::Learner(..)));
            let partition_active = active.iter().any(|(f, _)| matches!(f, Fault::Partition(_)));
            if let Some(fault) = inject(&scenario, &mut rng, &rig, &mut log, learner_active).await {
                if matches!(fault, Fault::Partition(_)) && partition_active {
                    // One partition at a time: rules are flushed together.
                    heal(&fault, &rig, &mut log).await;
                } else {
                    let hold = match fault {
                        Fault::Learner(..) => rng.gen_range(4000..8000),
                        Fault::Crash(..) | Fault::CrashAll(..) => rng.gen_range(2000..4000),
                        // Long enough for the majority side to elect a leader.
                        Fault::Partition(_) if scenario == "partition" => rng.gen_range(1500..3000),
                        _ => rng.gen_range(500..3000),
                    };
                    active.push((fault, Instant::now() + Duration::from_millis(hold)));
                }
            }
            next = Instant::now() + Duration::from_millis(rng.gen_range(300..2000));
        }
    }
    // Everything healed (or never will be): restart whatever is down.
    let mut r = rig.lock().unwrap();
    r.heal_partitions();
    for i in 0..r.nodes.len() {
        if !r.nodes[i].removed {
            r.arm(i, "");
            r.signal(i, "CONT");
            if r.exited(i) {
                r.nodes[i].child = None;
                r.spawn(i);
            }
        }
    }
    log
}

// ------------------------------------------------------------------ checks

type EventKey<'a> = (i64, &'a [u8]);
type EventValue<'a> = (bool, &'a [u8]);

/// (revision, key, put?, value) of every event under `r/` from revision 1 on.
type History = Vec<(i64, Vec<u8>, bool, Vec<u8>)>;

async fn history_from(endpoint: String, from: i64, through: i64) -> Result<History, String> {
    if from > through {
        return Ok(Vec::new());
    }
    let mut c = connect(std::slice::from_ref(&endpoint))
        .await
        .ok_or("no connection")?;
    let options = WatchOptions::new().with_prefix().with_start_revision(from);
    let mut stream = c.watch("r/", Some(options)).await.map_err(|e| e.to_string())?;
    let mut history = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while history
        .last()
        .is_none_or(|(rev, _, _, _): &(i64, _, _, _)| *rev < through)
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(resp))) => {
                for e in resp.events() {
                    if let Some(kv) = e.kv() {
                        history.push((
                            kv.mod_revision(),
                            kv.key().to_vec(),
                            e.event_type() == EventType::Put,
                            kv.value().to_vec(),
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "history from {endpoint} stopped at revision {:?} of {through}: {other:?}",
                    history.last().map(|h| h.0)
                ))
            }
        }
    }
    Ok(history)
}

/// Retries a read of the final checks for up to 20 s (an election may be under way).
async fn retry<T, F, Fut>(mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if Instant::now() > deadline => return Err(e),
            Err(_) if Instant::now() > deadline => return Err("timed out".into()),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Waits until every live member serves revision `at` locally; returns those that did
/// not within 30 s, with the revision they were at.
async fn wait_applied(endpoints: &[String], at: i64) -> Vec<(String, Option<i64>)> {
    let mut stuck = Vec::new();
    for endpoint in endpoints {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut seen = None;
            if let Some(mut c) = connect(std::slice::from_ref(endpoint)).await {
                let r = c
                    .get(
                        "r/",
                        Some(GetOptions::new().with_serializable().with_count_only()),
                    )
                    .await;
                if let Ok(resp) = r {
                    seen = resp.header().map(|h| h.revision());
                    if seen >= Some(at) {
                        break;
                    }
                }
            }
            if Instant::now() > deadline {
                stuck.push((endpoint.clone(), seen));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    stuck
}

fn check_watchers(record: &Record, history: &History, failures: &mut Vec<String>) {
    for (w, (start, prefix, events)) in record.watched.iter().enumerate() {
        let Some(last) = events.last().map(|e| e.1) else {
            continue;
        };
        let expected: Vec<_> = history
            .iter()
            .filter(|h| h.0 >= *start && h.0 <= last && h.1.starts_with(prefix))
            .collect();
        let got: Vec<_> = events
            .iter()
            .map(|e| (e.1, e.2.clone(), e.3, e.4.clone()))
            .collect();
        // Ordered and unique.
        for pair in got.windows(2) {
            if pair[1].0 < pair[0].0 || (pair[1].0 == pair[0].0 && pair[1].1 == pair[0].1) {
                failures.push(format!(
                    "watcher {w}: event at revision {} key {} after revision {} key {} (unordered or repeated)",
                    pair[1].0,
                    String::from_utf8_lossy(&pair[1].1),
                    pair[0].0,
                    String::from_utf8_lossy(&pair[0].1)
                ));
                break;
            }
        }
        // Atomic: one revision in one response.
        let mut response_of: HashMap<i64, u64> = HashMap::new();
        for e in events {
            if *response_of.entry(e.1).or_insert(e.0) != e.0 {
                failures.push(format!("watcher {w}: revision {} split across responses", e.1));
                break;
            }
        }
        // Resumable and reliable: exactly the history from its start revision.
        if got.len() != expected.len() || got.iter().zip(&expected).any(|(g, e)| g != *e) {
            let at = got
                .iter()
                .zip(&expected)
                .position(|(g, e)| g != *e)
                .unwrap_or(got.len().min(expected.len()));
            failures.push(format!(
                "watcher {w} (from revision {start}): {} events, the history has {} in [{start}, {last}]; first difference at #{at}: got {:?}, history {:?}",
                got.len(),
                expected.len(),
                got.get(at).map(|g| (g.0, String::from_utf8_lossy(&g.1).to_string(), g.2)),
                expected.get(at).map(|e| (e.0, String::from_utf8_lossy(&e.1).to_string(), e.2)),
            ));
        }
    }
}

async fn check(rig: &Arc<Mutex<Rig>>, shared: &Shared, failures: &mut Vec<String>) -> Result<String, String> {
    let endpoints: Vec<String> = {
        let r = rig.lock().unwrap();
        r.live().iter().map(|&i| r.endpoint(i)).collect()
    };
    // The final revision, from a linearizable read once a leader serves.
    let mut final_rev = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while final_rev.is_none() && Instant::now() < deadline {
        if let Some(mut c) = connect(&endpoints).await {
            if let Ok(Ok(resp)) = tokio::time::timeout(OP_TIMEOUT, c.get("r/", None)).await {
                final_rev = resp.header().map(|h| h.revision());
            }
        }
        if final_rev.is_none() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let final_rev = final_rev.ok_or("the cluster did not serve a read within 60 s after the faults")?;

    // Keys must not outlive their leases (TTL 3 s; a new leader extends them).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = match connect(&endpoints).await {
            Some(mut c) => c
                .get("r/l/", Some(GetOptions::new().with_prefix().with_count_only()))
                .await
                .map(|r| r.count())
                .unwrap_or(-1),
            None => -1,
        };
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            failures.push(if left < 0 {
                "the leased keys could not be counted for 30 s".to_string()
            } else {
                format!("{left} leased keys still exist 30 s after their leases stopped")
            });
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let final_rev = retry(|| {
        let endpoints = endpoints.clone();
        async move {
            let mut c = connect(&endpoints).await.ok_or("no connection")?;
            let r = c.get("r/", None).await.map_err(|e| e.to_string())?;
            Ok(r.header().map_or(final_rev, |h| h.revision()))
        }
    })
    .await?;
    // A member stuck behind fails the run; the other checks go on without it, so
    // that what went wrong shows.
    let stuck = wait_applied(&endpoints, final_rev).await;
    for (endpoint, seen) in &stuck {
        failures.push(format!(
            "{endpoint} did not reach revision {final_rev} within 30 s (stuck at {seen:?}; left out of the checks below)"
        ));
    }
    let endpoints: Vec<String> = endpoints
        .into_iter()
        .filter(|e| !stuck.iter().any(|s| &s.0 == e))
        .collect();
    if endpoints.is_empty() {
        return Err(format!("no member reached revision {final_rev}"));
    }

    // Every member's history (what compaction left of it) and hash at the final
    // revision; the recorder's history before that.
    let from = shared.compacted.load(Ordering::SeqCst).max(0) + 1;
    let mut reference = history_from(endpoints[0].clone(), from, final_rev).await?;
    {
        let recorded = std::mem::take(&mut shared.record.lock().unwrap().recorded);
        let overlap: Vec<_> = recorded.iter().filter(|e| e.0 >= from).collect();
        if overlap.len() > reference.len() || overlap.iter().zip(&reference).any(|(a, b)| *a != b) {
            let at = overlap.iter().zip(&reference).position(|(a, b)| *a != b);
            failures.push(format!(
                "the recorder's history from revision {from} differs from {}'s (at event {at:?} of {})",
                endpoints[0],
                overlap.len()
            ));
        }
        let mut before: History = recorded.into_iter().filter(|e| e.0 < from).collect();
        before.append(&mut reference);
        reference = before;
    }
    let mut hashes = Vec::new();
    for endpoint in &endpoints {
        if endpoint != &endpoints[0] {
            let other = history_from(endpoint.clone(), from, final_rev).await?;
            let upto = |h: &History| {
                h.iter()
                    .filter(|e| e.0 >= from && e.0 <= final_rev)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            if upto(&other) != upto(&reference) {
                let at = upto(&other)
                    .iter()
                    .zip(upto(&reference).iter())
                    .position(|(a, b)| a != b);
                failures.push(format!(
                    "{endpoint}'s history differs from {}'s (at event {at:?})",
                    endpoints[0]
                ));
            }
        }
        let hash = retry(|| {
            let endpoint = endpoint.clone();
            async move {
                let mut c = connect(std::slice::from_ref(&endpoint))
                    .await
                    .ok_or("no connection")?;
                c.hash_kv(final_rev)
                    .await
                    .map_err(|e| format!("hash_kv on {endpoint}: {e}"))
            }
        })
        .await?;
        hashes.push((endpoint.clone(), hash.hash()));
    }
    if hashes.iter().any(|h| h.1 != hashes[0].1) {
        failures.push(format!("HashKV at revision {final_rev} differs: {hashes:?}"));
    }

    let versions: HashMap<Vec<u8>, i64> = retry(|| {
        let endpoints = endpoints.clone();
        async move {
            let mut c = connect(&endpoints).await.ok_or("no connection")?;
            let all = c
                .get("r/u/", Some(GetOptions::new().with_prefix()))
                .await
                .map_err(|e| e.to_string())?;
            Ok(all
                .kvs()
                .iter()
                .map(|kv| (kv.key().to_vec(), kv.version()))
                .collect())
        }
    })
    .await?;
    let record = shared.record.lock().unwrap();
    let mut events: HashMap<EventKey, EventValue> = HashMap::new();
    for (rev, key, put, value) in &reference {
        if events.insert((*rev, key), (*put, value)).is_some() {
            failures.push(format!(
                "history: key {} twice at revision {rev}",
                String::from_utf8_lossy(key)
            ));
        }
    }
    // No acknowledged write lost.
    let mut lost = 0;
    for (key, value, rev) in &record.puts {
        if events.get(&(*rev, key.as_slice())) != Some(&(true, value.as_slice())) {
            lost += 1;
            if lost <= 5 {
                failures.push(format!(
                    "acknowledged put {}={} at revision {rev} is not in the history (found {:?})",
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(value),
                    events
                        .get(&(*rev, key.as_slice()))
                        .map(|(p, v)| (p, String::from_utf8_lossy(v).to_string()))
                ));
            }
        }
    }
    for (key, rev) in &record.deletes {
        if events.get(&(*rev, key.as_slice())).map(|e| e.0) != Some(false) {
            failures.push(format!(
                "acknowledged delete of {} at revision {rev} is not in the history",
                String::from_utf8_lossy(key)
            ));
        }
    }
    // Reads return values the history holds.
    for (key, value, rev) in &record.reads {
        if events.get(&(*rev, key.as_slice())) != Some(&(true, value.as_slice())) {
            failures.push(format!(
                "a read returned {}={} at mod revision {rev}, which the history does not hold",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value)
            ));
            break;
        }
    }
    // Every read (serializable ones on any member too) saw the history's state of its
    // key at the revision its header gives.
    {
        let mut by_key: HashMap<&[u8], Vec<Change>> = HashMap::new();
        for (rev, key, put, value) in &reference {
            by_key
                .entry(key.as_slice())
                .or_default()
                .push((*rev, put.then_some(value.as_slice())));
        }
        let mut wrong = 0;
        for (key, got, at, serializable) in &record.reads_at {
            if *at <= 0 || *at > final_rev {
                continue;
            }
            let changes = by_key.get(key.as_slice()).map(Vec::as_slice).unwrap_or(&[]);
            let expected = changes.iter().rev().find(|c| c.0 <= *at).and_then(|c| c.1);
            if expected != got.as_deref() {
                wrong += 1;
                if wrong <= 3 {
                    failures.push(format!(
                        "a {} read of {} at revision {at} returned {:?}; the history holds {:?} there",
                        if *serializable {
                            "serializable"
                        } else {
                            "linearizable"
                        },
                        String::from_utf8_lossy(key),
                        got.as_deref().map(String::from_utf8_lossy),
                        expected.map(String::from_utf8_lossy),
                    ));
                }
            }
        }
    }
    // Kubernetes-shaped traffic: every paged list is the history's state of `r/o/` at
    // its revision; every guarded write found what its compare required.
    {
        let mut state: BTreeMap<&[u8], (&[u8], i64)> = BTreeMap::new();
        let mut lists: Vec<&(i64, Vec<Item>)> = record.lists.iter().filter(|l| l.0 <= final_rev).collect();
        lists.sort_by_key(|l| l.0);
        let mut objects = reference.iter().filter(|e| e.1.starts_with(b"r/o/")).peekable();
        let mut wrong = 0;
        for (at, items) in lists {
            while let Some(e) = objects.next_if(|e| e.0 <= *at) {
                if e.2 {
                    state.insert(&e.1, (&e.3, e.0));
                } else {
                    state.remove(e.1.as_slice());
                }
            }
            let expected: Vec<(&[u8], &[u8], i64)> = state.iter().map(|(k, (v, m))| (*k, *v, *m)).collect();
            let got: Vec<(&[u8], &[u8], i64)> = items
                .iter()
                .map(|(k, v, m)| (k.as_slice(), v.as_slice(), *m))
                .collect();
            if got != expected {
                wrong += 1;
                if wrong <= 2 {
                    failures.push(format!(
                        "a paged list at revision {at} returned {} objects {:?}; the history holds {} {:?}",
                        got.len(),
                        got.iter()
                            .map(|g| (String::from_utf8_lossy(g.0), g.2))
                            .collect::<Vec<_>>(),
                        expected.len(),
                        expected
                            .iter()
                            .map(|g| (String::from_utf8_lossy(g.0), g.2))
                            .collect::<Vec<_>>(),
                    ));
                }
            }
        }
        for (key, required, rev) in &record.guarded {
            let before = reference
                .iter()
                .rfind(|e| &e.1 == key && e.0 < *rev)
                .map_or(0, |e| if e.2 { e.0 } else { 0 });
            if before != *required {
                failures.push(format!(
                    "a write of {} at revision {rev} required mod_revision {required}, the history has {before} before it",
                    String::from_utf8_lossy(key)
                ));
                break;
            }
        }
    }
    // No entry applied twice: versions of the per-client keys.
    {
        for (key, (ok, unknown)) in &record.unique {
            let version = versions.get(key).copied().unwrap_or(0);
            let puts = reference.iter().filter(|e| &e.1 == key).count() as i64;
            if version < *ok || version > ok + unknown || version != puts {
                failures.push(format!(
                    "{}: version {version}, {puts} puts in the history, {ok} acknowledged and {unknown} of unknown outcome",
                    String::from_utf8_lossy(key)
                ));
            }
        }
    }
    check_watchers(&record, &reference, failures);
    // Linearizability of the shared keys.
    match check_kv_history(&record.ops) {
        CheckResult::Linearizable => {}
        CheckResult::Violation { key, explanation } => failures.push(format!(
            "not linearizable on {}:\n{explanation}",
            String::from_utf8_lossy(&key)
        )),
        CheckResult::Inconclusive { key, reason } => {
            eprintln!(
                "linearizability inconclusive on {}: {reason}",
                String::from_utf8_lossy(&key)
            )
        }
    }
    let unknown = record
        .ops
        .iter()
        .filter(|o| o.output == KvOutput::Unknown)
        .count();
    Ok(format!(
        "revision {final_rev} (compacted at {}); {} shared-key ops ({unknown} of unknown outcome), {} acknowledged puts, {} deletes, {} reads checked, {} paged lists, {} guarded writes, {} watchers with {} events, {} members hashed",
        from - 1,
        record.ops.len(),
        record.puts.len(),
        record.deletes.len(),
        record.reads_at.len(),
        record.lists.len(),
        record.guarded.len(),
        record.watched.len(),
        record.watched.iter().map(|w| w.2.len()).sum::<usize>(),
        hashes.len()
    ))
}

// ------------------------------------------------------------------ a scenario

/// Members of a scenario's cluster: `ROBUST_MEMBERS`, else 5 for `partition` (a leader
/// split off with one follower leaves it an uncommitted tail that the majority's next
/// leader overwrites, which 3 members rarely produce) and 3 otherwise.
fn members_for(name: &str) -> usize {
    std::env::var("ROBUST_MEMBERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if name == "partition" { 5 } else { 3 })
}

async fn scenario(name: &str, seed: u64, seconds: u64) -> Result<(), String> {
    let started = Instant::now();
    let members = members_for(name);
    let mut rig = Rig::new(members);
    if matches!(name, "partition" | "mixed") {
        if let Err(e) = rig.nft_setup() {
            eprintln!("robustness: partitions SKIPPED in {name} (need root and nft): {e}");
        }
    }
    for i in 0..members {
        rig.spawn(i);
    }
    let rig = Arc::new(Mutex::new(rig));
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader(&rig.lock().unwrap()).is_none() {
        if Instant::now() > deadline {
            return Err("no leader within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let endpoints: Vec<String> = {
        let r = rig.lock().unwrap();
        (0..members).map(|i| r.endpoint(i)).collect()
    };
    let shared = Arc::new(Shared {
        clock: AtomicU64::new(1),
        stop: AtomicBool::new(false),
        revision: AtomicI64::new(1),
        record: Mutex::new(Record::default()),
        pins: Mutex::new(HashMap::new()),
        compacted: AtomicI64::new(0),
    });
    let recorder = tokio::spawn(recorder(seed, endpoints.clone(), shared.clone()));
    let mut tasks = Vec::new();
    for id in 0..KV_CLIENTS {
        tasks.push(tokio::spawn(kv_client(
            id,
            seed,
            endpoints.clone(),
            shared.clone(),
        )));
    }
    tasks.push(tokio::spawn(kube_client(seed, endpoints.clone(), shared.clone())));
    tasks.push(tokio::spawn(lease_client(
        seed,
        endpoints.clone(),
        shared.clone(),
    )));
    // Watchers start a little later, from a revision already in the past.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in 0..WATCHERS {
        tasks.push(tokio::spawn(watcher(id, seed, endpoints.clone(), shared.clone())));
    }
    if std::env::var("ROBUST_COMPACT").map_or(true, |v| v != "0") {
        tasks.push(tokio::spawn(compactor(seed, endpoints.clone(), shared.clone())));
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let faults = tokio::spawn(run_faults(
        name.to_string(),
        seed ^ fnv(name),
        rig.clone(),
        shared.clone(),
        until,
    ));
    tokio::time::sleep_until(until.into()).await;
    let fault_log = faults.await.map_err(|e| e.to_string())?;
    shared.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }
    match tokio::time::timeout(Duration::from_secs(20), recorder).await {
        Ok(Ok(history)) => shared.record.lock().unwrap().recorded = history,
        other => return Err(format!("the recorder did not finish: {other:?}")),
    }
    let mut failures = Vec::new();
    let summary = check(&rig, &shared, &mut failures).await;
    let notes = shared.record.lock().unwrap().notes.clone();
    println!(
        "robustness {name} (ROBUST_SEED={seed}, {members} members): {} faults: {}",
        fault_log.len(),
        fault_log.join("; ")
    );
    for note in notes {
        println!("  note: {note}");
    }
    match summary {
        Ok(summary) => println!("  {summary} in {:.0?}", started.elapsed()),
        Err(e) => failures.push(format!("the checks could not run: {e}")),
    }
    if failures.is_empty() {
        return Ok(());
    }
    let r = rig.lock().unwrap();
    let logs: Vec<String> = (0..r.nodes.len())
        .map(|i| format!("--- m{i} (last lines)\n{}", r.log_tail(i, 15)))
        .collect();
    let kept = r.base.join("..").join(format!("robust-failed-{seed}-{name}"));
    let _ = Command::new("cp").arg("-r").arg(&r.base).arg(&kept).status();
    Err(format!(
        "{name}, ROBUST_SEED={seed}: {} failures:\n{}\n(data directories and logs copied to {})\n{}",
        failures.len(),
        failures.join("\n"),
        kept.display(),
        logs.join("\n")
    ))
}

/// The binary under test: this build's, or `ROBUST_RAFT_NODE` (a scratch build with an
/// injected bug, for proving that the runner finds it).
fn raft_node() -> PathBuf {
    std::env::var_os("ROBUST_RAFT_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_raft-node")))
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
#[ignore = "run by scripts/test.sh: cargo test -p kuberaft-node --features failpoints --test robustness -- --ignored --nocapture"]
fn robustness() {
    let seed = std::env::var("ROBUST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen_range(0..1_000_000_000u64));
    let seconds: u64 = std::env::var("ROBUST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let scenarios: Vec<String> = match std::env::var("ROBUST_SCENARIO") {
        Ok(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
        Err(_) => CI_SCENARIOS.iter().map(|s| s.to_string()).collect(),
    };
    for s in &scenarios {
        assert!(
            SCENARIOS.contains(&s.as_str()),
            "unknown scenario {s}; known: {SCENARIOS:?}"
        );
    }
    let failpoints = Command::new(raft_node())
        .arg("failpoints")
        .output()
        .map(|o| {
            let out = String::from_utf8_lossy(&o.stdout).to_string();
            o.status.success() && out.contains("compiled in") && !out.contains("NOT compiled in")
        })
        .unwrap_or(false);
    assert!(
        failpoints,
        "raft-node lacks crash points: build with `--features failpoints`"
    );
    println!(
        "robustness: ROBUST_SEED={seed} ROBUST_SECONDS={seconds} ROBUST_SCENARIO={}",
        scenarios.join(",")
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let mut failed = Vec::new();
    for name in &scenarios {
        let budget = Duration::from_secs(seconds + 240);
        let outcome = runtime.block_on(async {
            tokio::time::timeout(budget, scenario(name, seed, seconds))
                .await
                .unwrap_or_else(|_| Err(format!("{name}: did not finish within {budget:?}")))
        });
        if let Err(e) = outcome {
            eprintln!("robustness FAILED: {e}");
            failed.push(name.clone());
        }
    }
    assert!(
        failed.is_empty(),
        "robustness scenarios failed: {failed:?} (replay: ROBUST_SEED={seed} ROBUST_SCENARIO={} ROBUST_SECONDS={seconds})",
        failed.join(",")
    );
}
