//! Watch and Lease through the `etcd-client` crate against three real `raft-node`
//! processes on 127.0.0.1, with the leader killed (kill -9) and restarted.
//!
//! Every process this test starts is ended by its PID when the test ends (also on
//! failure). Timing is only asserted as lower bounds that an honest implementation
//! always meets (a lease never expires before its TTL); upper bounds are generous.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    WatchOptions,
};
use support::{client, ProcCluster};

/// Waits until each of `members` knows a leader (a follower that has not heard from
/// the new leader yet answers "no leader", which etcd-client does not retry).
fn settle(cluster: &ProcCluster, members: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !members
        .iter()
        .all(|&i| cluster.metric(i, "kuberaft_has_leader") == Some(1))
    {
        assert!(
            Instant::now() < deadline,
            "members {members:?} know no leader after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client without a per-request deadline (streams live as long as they must).
async fn stream_client(endpoint: &str) -> Option<Client> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
    tokio::time::timeout(
        Duration::from_secs(5),
        Client::connect([endpoint.to_string()], Some(options)),
    )
    .await
    .ok()?
    .ok()
}

/// (revision, key, value, is a put) of one event.
type Seen = (i64, String, String, bool);

/// Follows `prefix` from `from`, preferring member `prefer` and moving to the next
/// member when a stream breaks, resuming after the last event seen. Stops when
/// `stop` is set and everything up to the store's revision at that time was seen.
async fn follow(
    endpoints: Vec<String>,
    prefer: usize,
    from: i64,
    seen: Arc<Mutex<Vec<Seen>>>,
    target: Arc<Mutex<Option<i64>>>,
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut member = prefer;
    let mut next = from;
    while Instant::now() < deadline {
        if target.lock().unwrap().is_some_and(|t| next > t) {
            return;
        }
        let Some(mut c) = stream_client(&endpoints[member]).await else {
            member = (member + 1) % endpoints.len();
            continue;
        };
        let options = WatchOptions::new().with_prefix().with_start_revision(next);
        let Ok(mut stream) = c.watch("w/", Some(options)).await else {
            member = (member + 1) % endpoints.len();
            continue;
        };
        loop {
            if target.lock().unwrap().is_some_and(|t| next > t) {
                return;
            }
            let message = tokio::time::timeout(Duration::from_secs(2), stream.message()).await;
            let response = match message {
                Err(_) => continue, // nothing new; check the target again
                Ok(Ok(Some(response))) => response,
                Ok(_) => break, // the stream broke: another member, from `next`
            };
            assert_eq!(response.compact_revision(), 0, "no compaction in this test");
            for event in response.events() {
                let kv = event.kv().unwrap();
                seen.lock().unwrap().push((
                    kv.mod_revision(),
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                    event.event_type() == EventType::Put,
                ));
                next = kv.mod_revision() + 1;
            }
        }
        member = (member + 1) % endpoints.len();
    }
    panic!("watcher preferring m{prefer} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_on_every_member_see_every_event_once_in_order_across_a_leader_kill_and_restart() {
    let mut cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    settle(&cluster, &[0, 1, 2]);
    let endpoints = cluster.endpoints();
    let mut writer = client(&endpoints).await;
    // History before the watchers start, including deletes.
    for i in 0..30 {
        writer
            .put(format!("w/{:03}", i % 10), format!("old{i}"), None)
            .await
            .unwrap();
        if i % 7 == 6 {
            writer.delete(format!("w/{:03}", i % 10), None).await.unwrap();
        }
    }
    let target = Arc::new(Mutex::new(None));
    let watchers: Vec<_> = (0..3)
        .map(|i| {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let task = tokio::spawn(follow(endpoints.clone(), i, 1, seen.clone(), target.clone()));
            (seen, task)
        })
        .collect();

    // Writes go on while the leader is killed and restarted.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let write_task = {
        let (stop, acknowledged, endpoints) = (stop.clone(), acknowledged.clone(), endpoints.clone());
        tokio::spawn(async move {
            let mut c = client(&endpoints).await;
            let mut attempt = 0u64;
            while !stop.load(Ordering::Relaxed) {
                attempt += 1;
                let value = format!("a{attempt}");
                match c.put(format!("w/{:03}", attempt % 13), value.clone(), None).await {
                    Ok(_) => acknowledged.lock().unwrap().push(value),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.spawn(leader);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    write_task.await.unwrap();

    let last = writer
        .get("w/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let revision = last.header().unwrap().revision();
    *target.lock().unwrap() = Some(revision);
    let mut sequences = Vec::new();
    for (seen, task) in watchers {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("watchers catch up")
            .unwrap();
        sequences.push(seen.lock().unwrap().clone());
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 20,
        "writes went through: {}",
        acknowledged.len()
    );
    for (i, sequence) in sequences.iter().enumerate() {
        let revisions: Vec<i64> = sequence.iter().map(|s| s.0).collect();
        assert_eq!(
            revisions,
            (1..=revision).collect::<Vec<_>>(),
            "watcher preferring m{i}: every revision once, in order"
        );
        for value in &acknowledged {
            let times = sequence.iter().filter(|s| s.3 && &s.2 == value).count();
            assert_eq!(times, 1, "watcher preferring m{i}: acknowledged {value}");
        }
    }
    assert_eq!(sequences[0], sequences[1], "m0 and m1 agree");
    assert_eq!(sequences[0], sequences[2], "m0 and m2 agree");
    // The events agree with the store: the final state replayed from them.
    let mut replayed = std::collections::BTreeMap::new();
    for (_, key, value, put) in &sequences[0] {
        if *put {
            replayed.insert(key.clone(), value.clone());
        } else {
            replayed.remove(key);
        }
    }
    let actual: std::collections::BTreeMap<String, String> = last
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(replayed, actual);
}

/// Does `key` exist, read linearizably through any member? `None` when no member
/// answered (after a few tries).
async fn exists(endpoints: &[String], key: &str) -> Option<bool> {
    let mut c = client(endpoints).await;
    for _ in 0..10 {
        if let Ok(r) = c.get(key, None).await {
            return Some(r.count() == 1);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kept_alive_lease_survives_a_leader_kill_and_leases_without_keepalives_expire_not_early() {
    let mut cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    settle(&cluster, &[0, 1, 2]);
    let endpoints = cluster.endpoints();
    let mut c = client(&endpoints).await;
    let kept = c.lease_grant(5, None).await.unwrap().id();
    c.put("kept", "v", Some(PutOptions::new().with_lease(kept)))
        .await
        .unwrap();

    // Keepalives every second, through whichever member answers.
    let stop = Arc::new(AtomicBool::new(false));
    let last_sent = Arc::new(Mutex::new(Instant::now()));
    let lost = Arc::new(AtomicBool::new(false));
    let keeper = {
        let (stop, last_sent, lost, endpoints) =
            (stop.clone(), last_sent.clone(), lost.clone(), endpoints.clone());
        tokio::spawn(async move {
            let mut member = 0;
            while !stop.load(Ordering::Relaxed) {
                member = (member + 1) % endpoints.len();
                let Some(mut c) = stream_client(&endpoints[member]).await else {
                    continue;
                };
                let Ok((mut keeper, mut answers)) = c.lease_keep_alive(kept).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    *last_sent.lock().unwrap() = Instant::now();
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(3), answers.message()).await {
                        Ok(Ok(Some(answer))) => {
                            if answer.ttl() <= 0 {
                                lost.store(true, Ordering::Relaxed);
                            }
                        }
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        })
    };

    // A lease nobody keeps alive, granted just before the leader dies.
    let granted_at = Instant::now();
    let unkept = c.lease_grant(6, None).await.unwrap().id();
    c.put("unkept", "v", Some(PutOptions::new().with_lease(unkept)))
        .await
        .unwrap();
    cluster.kill(leader);
    let killed_at = Instant::now();

    let deadline = Instant::now() + Duration::from_secs(60);
    let unkept_gone_after = loop {
        let asked_at = Instant::now();
        if exists(&endpoints, "unkept").await == Some(false) {
            break asked_at.duration_since(granted_at);
        }
        assert!(Instant::now() < deadline, "the unkept lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        unkept_gone_after >= Duration::from_secs(6),
        "a failover made a 6 s lease expire after {unkept_gone_after:?}"
    );
    // Two TTLs after the kill, the kept lease and its key are still there.
    let wait = Duration::from_secs(10).saturating_sub(killed_at.elapsed());
    tokio::time::sleep(wait).await;
    assert_eq!(exists(&endpoints, "kept").await, Some(true));
    cluster.spawn(leader);
    tokio::time::sleep(Duration::from_secs(6)).await;
    settle(&cluster, &[0, 1, 2]);
    assert_eq!(exists(&endpoints, "kept").await, Some(true));
    let ttl = c
        .lease_time_to_live(kept, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert!(ttl.ttl() > 0 && ttl.granted_ttl() == 5, "{ttl:?}");
    assert_eq!(ttl.keys(), &[b"kept".to_vec()]);
    assert!(
        !lost.load(Ordering::Relaxed),
        "a keepalive was answered with TTL 0"
    );

    // Without keepalives, it expires: not before 5 s after the last one was sent.
    stop.store(true, Ordering::Relaxed);
    keeper.await.unwrap();
    let last_sent = *last_sent.lock().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let gone_after = loop {
        let asked_at = Instant::now();
        if exists(&endpoints, "kept").await == Some(false) {
            break asked_at.duration_since(last_sent);
        }
        assert!(Instant::now() < deadline, "the kept lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        gone_after >= Duration::from_secs(5),
        "expired after {gone_after:?}"
    );
    let ttl = c.lease_time_to_live(kept, None).await.unwrap();
    assert_eq!(
        (ttl.ttl(), ttl.granted_ttl()),
        (-1, 0),
        "etcd's answer for a lease that is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_start_revision_gets_the_compact_revision_and_lease_requests_get_etcds_errors() {
    let cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    settle(&cluster, &[0, 1, 2]);
    let follower = cluster.endpoint((leader + 1) % 3);
    let mut c = client(std::slice::from_ref(&follower)).await;
    for i in 1..=10 {
        c.put("k", format!("{i}"), None).await.unwrap();
    }
    c.compact(5, None).await.unwrap();
    let mut s = stream_client(&follower).await.unwrap();
    let mut stream = s
        .watch("k", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created() && !created.canceled(), "{created:?}");
    let id = created.watch_id();
    let canceled = stream.message().await.unwrap().unwrap();
    assert_eq!(
        (
            canceled.watch_id(),
            canceled.canceled(),
            canceled.compact_revision()
        ),
        (id, true, 5)
    );
    // On the same stream: from the compacted revision on, everything; a duplicate id is
    // refused; a progress request reports the revision once events up to it were sent.
    stream
        .watch(
            "k",
            Some(
                WatchOptions::new()
                    .with_start_revision(5)
                    .with_watch_id(7)
                    .with_prev_key(),
            ),
        )
        .await
        .unwrap();
    let created = stream.message().await.unwrap().unwrap();
    assert_eq!((created.created(), created.watch_id()), (true, 7));
    stream
        .watch("j", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    stream.request_progress().await.unwrap();
    let mut values = Vec::new();
    let mut refused = None;
    let mut progress = None;
    for _ in 0..20 {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("answers come")
            .unwrap()
            .unwrap();
        if r.created() && r.canceled() {
            refused = Some((r.watch_id(), r.cancel_reason().to_string()));
        } else if r.watch_id() == 7 {
            for e in r.events() {
                values.push(e.kv().unwrap().value_str().unwrap().to_string());
                if values.len() > 1 {
                    assert!(e.prev_kv().is_some(), "prev_kv after the compacted revision");
                }
            }
        } else if r.watch_id() == -1 {
            progress = Some(r.header().unwrap().revision());
            break;
        }
    }
    assert_eq!(values, (5..=10).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(
        refused,
        Some((
            -1,
            "mvcc: duplicate watch ID provided on the WatchStream".to_string()
        ))
    );
    assert_eq!(progress, Some(10));

    // Leases: a chosen id, a duplicate, a TTL too large, a put naming no lease.
    let granted = c
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .unwrap();
    assert_eq!((granted.id(), granted.ttl()), (0x1234, 60));
    let status = |e: etcd_client::Error| match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("{other}"),
    };
    let duplicate = c
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .unwrap_err();
    assert_eq!(
        status(duplicate),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists".to_string()
        )
    );
    let large = c.lease_grant(9_000_000_001, None).await.unwrap_err();
    assert_eq!(
        status(large),
        (
            tonic::Code::OutOfRange,
            "etcdserver: too large lease TTL".to_string()
        )
    );
    let missing = c
        .put("x", "v", Some(PutOptions::new().with_lease(0x999)))
        .await
        .unwrap_err();
    assert_eq!(
        status(missing),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found".to_string()
        )
    );
    let leases = c.leases().await.unwrap();
    assert_eq!(
        leases.leases().iter().map(|l| l.id()).collect::<Vec<_>>(),
        vec![0x1234]
    );
    // Revoking deletes the attached key, which a watcher sees as a delete.
    c.put("x", "v", Some(PutOptions::new().with_lease(0x1234)))
        .await
        .unwrap();
    let before = c.get("x", None).await.unwrap().header().unwrap().revision();
    let mut w = stream_client(&follower).await.unwrap();
    let mut deletes = w
        .watch("x", Some(WatchOptions::new().with_start_revision(before + 1)))
        .await
        .unwrap();
    c.lease_revoke(0x1234).await.unwrap();
    let mut deleted = None;
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(10), deletes.message())
            .await
            .expect("the delete comes")
            .unwrap()
            .unwrap();
        if let Some(e) = r.events().first() {
            deleted = Some((e.event_type(), e.kv().unwrap().mod_revision()));
            break;
        }
    }
    assert_eq!(deleted, Some((EventType::Delete, before + 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_on_a_member_caught_up_by_a_snapshot_reports_the_same_events_in_the_same_order() {
    use etcd_client::{Txn, TxnOp};
    let cluster = ProcCluster::start(3, &["--snapshot-count=100"]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    settle(&cluster, &[0, 1, 2]);
    let endpoints = cluster.endpoints();
    let follower = (leader + 1) % 3;
    let target = Arc::new(Mutex::new(None));
    // A watcher on the follower from before it stalls.
    let stalled_seen = Arc::new(Mutex::new(Vec::new()));
    let stalled = tokio::spawn(follow(
        endpoints.clone(),
        follower,
        1,
        stalled_seen.clone(),
        target.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.signal(follower, "STOP");
    let live: Vec<String> = (0..3)
        .filter(|&i| i != follower)
        .map(|i| cluster.endpoint(i))
        .collect();
    let mut c = client(&live).await;
    let lease = c.lease_grant(600, None).await.unwrap().id();
    for n in 0..400 {
        match n % 5 {
            // Several keys at one revision, written out of key order.
            0 => {
                let mut ops = vec![
                    TxnOp::put(format!("w/z{n}"), "t", None),
                    TxnOp::put(format!("w/b{n}"), "t", Some(PutOptions::new().with_lease(lease))),
                ];
                if n >= 5 {
                    ops.push(TxnOp::delete(format!("w/b{}", n - 5), None));
                }
                let txn = Txn::new().and_then(ops);
                c.txn(txn).await.unwrap();
            }
            1 => {
                c.delete(format!("w/z{}", n - 1), None).await.unwrap();
            }
            _ => {
                c.put(format!("w/k{}", n % 7), format!("{n}"), None)
                    .await
                    .unwrap();
            }
        }
    }
    // Revoking deletes the one key still attached, at one revision.
    c.lease_revoke(lease).await.unwrap();
    let revision = c.get("w/", None).await.unwrap().header().unwrap().revision();
    *target.lock().unwrap() = Some(revision);
    cluster.signal(follower, "CONT");
    let mut sequences = Vec::new();
    for i in 0..3 {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(follow(endpoints.clone(), i, 1, seen.clone(), target.clone()));
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("watchers catch up")
            .unwrap();
        sequences.push(seen.lock().unwrap().clone());
    }
    tokio::time::timeout(Duration::from_secs(120), stalled)
        .await
        .expect("the stalled watcher catches up")
        .unwrap();
    let stalled = stalled_seen.lock().unwrap().clone();
    let distinct: std::collections::BTreeSet<i64> = sequences[0].iter().map(|s| s.0).collect();
    assert_eq!(distinct, (1..=revision).collect(), "every revision, none skipped");
    for (i, sequence) in sequences.iter().enumerate() {
        assert_eq!(sequence, &stalled, "m{i} and the stalled watcher agree");
    }
    // Within a txn's revision, the order of its writes: z, b, then the delete.
    let first_txn: Vec<&str> = stalled
        .iter()
        .filter(|s| s.0 == stalled.iter().find(|s| s.1 == "w/z0").unwrap().0)
        .map(|s| s.1.as_str())
        .collect();
    assert_eq!(first_txn, vec!["w/z0", "w/b0"]);
    let later_txn: Vec<(&str, bool)> = stalled
        .iter()
        .filter(|s| s.0 == stalled.iter().find(|s| s.1 == "w/z10").unwrap().0)
        .map(|s| (s.1.as_str(), s.3))
        .collect();
    assert_eq!(later_txn, vec![("w/z10", true), ("w/b10", true), ("w/b5", false)]);
    assert!(
        cluster
            .metric(follower, "kuberaft_snapshots_installed_total")
            .is_some_and(|n| n > 0),
        "the follower was caught up by a snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_does_not_read_falls_behind_in_the_history_and_is_canceled_once_compaction_passes_it()
{
    let cluster = ProcCluster::start(1, &["--auto-compaction-retention=50"]);
    cluster.wait_for_leader(&[0]);
    let endpoint = cluster.endpoint(0);
    let mut c = client(std::slice::from_ref(&endpoint)).await;
    let mut s = stream_client(&endpoint).await.unwrap();
    let mut stream = s.watch("big", None).await.unwrap();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created());
    // Far more than the stream's queue and the transport's windows hold, while the
    // client reads nothing; auto-compaction (every 5 s) keeps only 50 revisions.
    let value = vec![b'x'; 256 * 1024];
    let start = Instant::now();
    let mut written = 0;
    let compacted_past_start = loop {
        c.put("big", value.clone(), None).await.unwrap();
        written += 1;
        let compacted = c
            .get("big", Some(GetOptions::new().with_revision(2)))
            .await
            .is_err();
        if compacted && written > 300 {
            break true;
        }
        if start.elapsed() > Duration::from_secs(90) {
            break false;
        }
    };
    assert!(compacted_past_start, "auto-compaction did not run");
    // Now read: events in order from revision 1 without a gap, then the cancel with
    // the compact revision, beyond the last event delivered.
    let mut next = 1;
    let mut canceled = None;
    for _ in 0..10_000 {
        let r = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the stream answers")
            .unwrap()
            .expect("the stream stays open");
        for e in r.events() {
            assert_eq!(e.kv().unwrap().mod_revision(), next, "no gap, no repeat");
            next += 1;
        }
        if r.canceled() {
            canceled = Some(r.compact_revision());
            break;
        }
    }
    let compact_revision = canceled.expect("the slow watcher is canceled");
    assert!(
        compact_revision > next,
        "compacted at {compact_revision}, the watcher needed {next}"
    );
    assert!(next <= written, "the watcher did not receive everything");
}
