//! Linearizability through the etcd API, on real processes: concurrent etcd-client
//! clients doing put, get and compare-and-set (Txn) on a few keys while the leader is
//! killed (kill -9) and restarted and a follower is frozen (SIGSTOP) and thawed. The
//! whole history goes to the Wing–Gong/Lowe checker in `kuberaft_check`.
//!
//! Times are logical: one counter shared by all clients, bumped when a request is sent
//! and when its answer arrives, so "A returned before B was sent" is exact. A request
//! that failed (timeout, no leader, broken connection) is recorded as of unknown
//! outcome: it may or may not have taken effect, which is what a client can know.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use kuberaft_check::{check_kv_history, CheckResult, KvInput, KvOutput, Operation};
use rand::{Rng, SeedableRng};
use support::ProcCluster;

const KEYS: usize = 6;
const CLIENTS: u64 = 6;
/// Bound per client, whatever happens.
const OPS_PER_CLIENT_MAX: usize = 700;

async fn connect(endpoint: String) -> Client {
    let options = ConnectOptions::new()
        .with_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(1));
    loop {
        if let Ok(c) = Client::connect([endpoint.clone()], Some(options.clone())).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_client(
    id: u64,
    endpoint: String,
    clock: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<Operation> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(id);
    let mut client = connect(endpoint).await;
    let mut history = Vec::new();
    let mut last_seen: Vec<Option<Vec<u8>>> = vec![None; KEYS];
    for seq in 0..OPS_PER_CLIENT_MAX {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let k = rng.gen_range(0..KEYS);
        let key = format!("lin/{k}").into_bytes();
        let value = format!("c{id}-{seq}").into_bytes();
        let input = match rng.gen_range(0..10) {
            0..=3 => KvInput::Get { key: key.clone() },
            4..=6 => KvInput::Put {
                key: key.clone(),
                value: value.clone(),
            },
            _ => KvInput::Cas {
                key: key.clone(),
                expected: last_seen[k].clone(),
                new: value.clone(),
            },
        };
        let call = clock.fetch_add(1, Ordering::SeqCst);
        let output = match &input {
            KvInput::Get { key } => client.get(key.clone(), None).await.map(|r| {
                let v = r.kvs().first().map(|kv| kv.value().to_vec());
                last_seen[k] = v.clone();
                KvOutput::Get(v)
            }),
            KvInput::Put { key, value } => client
                .put(key.clone(), value.clone(), None)
                .await
                .map(|_| KvOutput::Put),
            KvInput::Cas { key, expected, new } => {
                let compare = match expected {
                    Some(v) => Compare::value(key.clone(), CompareOp::Equal, v.clone()),
                    None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                };
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key.clone(), new.clone(), None)]);
                client.txn(txn).await.map(|r| KvOutput::Cas {
                    succeeded: r.succeeded(),
                })
            }
            KvInput::Delete { .. } => unreachable!("not issued"),
        };
        let ret = clock.fetch_add(1, Ordering::SeqCst);
        let output = output.unwrap_or(KvOutput::Unknown);
        if output == KvOutput::Unknown {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        history.push(Operation {
            client: id,
            call,
            ret: (output != KvOutput::Unknown).then_some(ret),
            input,
            output,
        });
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..40))).await;
    }
    history
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_and_cas_through_the_api_stay_linearizable_across_leader_kills_and_a_frozen_member() {
    let mut cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let clock = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let endpoints = cluster.endpoints();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(run_client(
                id,
                endpoints[id as usize % endpoints.len()].clone(),
                clock.clone(),
                stop.clone(),
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    // The leader dies and comes back.
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.spawn(leader);
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let second = cluster.wait_for_leader(&others);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The new leader dies too, while the first one may still be catching up.
    cluster.kill(second);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.spawn(second);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A member frozen (cut off from everyone) and thawed.
    let frozen = (0..3)
        .find(|i| cluster.metric(*i, "kuberaft_role") != Some(3))
        .unwrap_or(0);
    cluster.signal(frozen, "STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.signal(frozen, "CONT");
    let thawed_at = clock.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);

    let mut history = Vec::new();
    for c in clients {
        history.extend(c.await.unwrap());
    }
    let known = history.iter().filter(|o| o.output != KvOutput::Unknown).count();
    let writes = history
        .iter()
        .filter(|o| matches!(o.output, KvOutput::Put | KvOutput::Cas { succeeded: true }))
        .count();
    eprintln!(
        "{} operations, {known} with a known outcome, {writes} acknowledged writes",
        history.len()
    );
    // Not a vacuous history: the clients got work done around the faults.
    assert!(known >= 200, "only {known} operations completed");
    assert!(writes >= 50, "only {writes} writes acknowledged");
    let after_faults = history
        .iter()
        .filter(|o| o.call > thawed_at && o.output != KvOutput::Unknown)
        .count();
    assert!(
        after_faults >= 10,
        "the clients stopped before the faults were over ({after_faults} operations after the thaw)"
    );
    match check_kv_history(&history) {
        CheckResult::Linearizable => {}
        other => panic!("the history through the etcd API is not linearizable: {other:?}"),
    }
}
