//! Real `raft-node` processes on 127.0.0.1 with real gRPC, real files and fsync,
//! driven by etcdctl (Debian `etcd-client`) and the `etcd-client` crate.
//!
//! Every load and fault loop here is bounded in count and time, and every process
//! this test starts is ended by its PID when the test ends (also on failure).

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use support::{client, etcdctl, http_get, value_on, ProcCluster};

#[test]
fn etcdctl_put_get_and_del_work_against_every_member() {
    let cluster = ProcCluster::start(3, &[]);
    cluster.wait_for_leader(&[0, 1, 2]);
    for i in 0..3 {
        let endpoint = cluster.endpoint(i);
        let key = format!("key-{i}");
        let (ok, out) = etcdctl(&endpoint, &["put", &key, "hello"]);
        assert!(ok && out.trim() == "OK", "put on m{i}: {out}\n{}", cluster.log(i));
        for j in 0..3 {
            let (ok, out) = etcdctl(&cluster.endpoint(j), &["get", &key]);
            assert!(ok, "{out}");
            assert_eq!(out, format!("{key}\nhello\n"), "get on m{j} after a put on m{i}");
        }
    }
    let (ok, out) = etcdctl(&cluster.endpoint(1), &["get", "key-", "--prefix", "--keys-only"]);
    assert!(ok);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        vec!["key-0", "key-1", "key-2"]
    );
    let (ok, out) = etcdctl(&cluster.endpoint(2), &["del", "key-0"]);
    assert!(ok && out.trim() == "1", "{out}");
    let (ok, out) = etcdctl(&cluster.endpoint(0), &["get", "key-0"]);
    assert!(ok && out.is_empty(), "deleted key still there: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_under_load_loses_no_acknowledged_write() {
    let mut cluster = ProcCluster::start(3, &["--heartbeat-interval=50", "--election-timeout=500"]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let endpoints = cluster.endpoints();
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let endpoints = endpoints.clone();
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut c = client(&endpoints).await;
            let mut n = 0u32;
            let mut failures = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 100_000 {
                let key = format!("w{w}-{n}");
                n += 1;
                match c.put(key.clone(), key.clone(), None).await {
                    Ok(_) => {
                        acknowledged.lock().unwrap().insert(key);
                    }
                    Err(_) => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kill = acknowledged.lock().unwrap().len();
    cluster.kill(leader);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = tokio::task::spawn_blocking({
        let survivors = survivors.clone();
        let metrics: Vec<u16> = cluster.members.iter().map(|m| m.metrics).collect();
        move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                for &i in &survivors {
                    if http_get(metrics[i], "/metrics").is_some_and(|b| b.contains("kuberaft_role 3")) {
                        return Some(i);
                    }
                }
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
    .await
    .unwrap();
    assert!(new_leader.is_some(), "no new leader after the kill");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > before_kill,
        "writes continued after the kill ({before_kill} before, {} in all)",
        acknowledged.len()
    );
    cluster.spawn(leader);
    for i in 0..3 {
        let endpoint = cluster.endpoint(i);
        // Wait for the member to catch up on the last key, then check every key.
        let mut c = client(std::slice::from_ref(&endpoint)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut missing: Vec<String> = acknowledged.iter().cloned().collect();
        while !missing.is_empty() && Instant::now() < deadline {
            let mut still = Vec::new();
            for key in missing {
                match c
                    .get(key.as_str(), Some(GetOptions::new().with_serializable()))
                    .await
                {
                    Ok(r) if r.kvs().first().is_some_and(|kv| kv.value() == key.as_bytes()) => {}
                    _ => still.push(key),
                }
            }
            missing = still;
            if !missing.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        assert!(
            missing.is_empty(),
            "m{i} lacks {} acknowledged writes, e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            cluster.log(i)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_more_than_snapshot_count_entries_returns_through_a_snapshot() {
    let mut cluster = ProcCluster::start(3, &["--snapshot-count=100"]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    let live: Vec<String> = (0..3)
        .filter(|&i| i != follower)
        .map(|i| cluster.endpoint(i))
        .collect();
    let mut c = client(&live).await;
    for n in 0..1200 {
        c.put(format!("k{n:04}"), "v", None).await.unwrap();
    }
    cluster.spawn(follower);
    let value = value_on(&cluster.endpoint(follower), "k1199", Duration::from_secs(30)).await;
    assert_eq!(value.as_deref(), Some(&b"v"[..]), "{}", cluster.log(follower));
    assert_eq!(
        value_on(&cluster.endpoint(follower), "k0000", Duration::from_secs(5))
            .await
            .as_deref(),
        Some(&b"v"[..])
    );
    let snapshots = std::fs::read_dir(cluster.members[follower].dir.join("snap"))
        .unwrap()
        .count();
    assert!(snapshots > 0, "the follower holds a snapshot");
    // It was brought back by a snapshot: the leader's log no longer held index 10.
    let log = cluster.log(follower);
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_serve_with_two_down_and_a_cut_off_minority_cannot_commit() {
    let mut cluster = ProcCluster::start(5, &["--heartbeat-interval=50", "--election-timeout=500"]);
    let leader = cluster.wait_for_leader(&[0, 1, 2, 3, 4]);
    let down: Vec<usize> = (0..5).filter(|&i| i != leader).take(2).collect();
    for &i in &down {
        cluster.kill(i);
    }
    let live: Vec<String> = (0..5)
        .filter(|i| !down.contains(i))
        .map(|i| cluster.endpoint(i))
        .collect();
    let mut c = client(&live).await;
    c.put("with-two-down", "yes", None)
        .await
        .expect("3 of 5 is a quorum");
    // Now the leader and one follower are the minority: the other two live members
    // are stopped (SIGSTOP), as if partitioned away.
    let others: Vec<usize> = (0..5).filter(|&i| i != leader && !down.contains(&i)).collect();
    let stopped = others[0];
    cluster.signal(stopped, "STOP");
    for &i in &down {
        cluster.spawn(i);
        cluster.signal(i, "STOP");
    }
    let mut minority = client(&[cluster.endpoint(leader)]).await;
    let commit_before = cluster.metric(leader, "kuberaft_commit_index").unwrap();
    let attempt = tokio::time::timeout(Duration::from_secs(3), minority.put("minority", "no", None)).await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "a minority must not acknowledge a write"
    );
    assert_eq!(
        cluster.metric(leader, "kuberaft_commit_index").unwrap(),
        commit_before,
        "a minority must not commit"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.metric(leader, "kuberaft_role") == Some(3) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(
        cluster.metric(leader, "kuberaft_role"),
        Some(3),
        "the stale leader stepped down (CheckQuorum)"
    );
    cluster.signal(stopped, "CONT");
    for &i in &down {
        cluster.signal(i, "CONT");
    }
    cluster.wait_for_leader(&[0, 1, 2, 3, 4]);
    let mut c = client(&cluster.endpoints()).await;
    let mut ok = false;
    for _ in 0..50 {
        if c.put("healed", "yes", None).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the healed cluster serves writes");
    // The timed-out write's outcome is unknown, as with etcd: once healed, the old
    // leader's uncommitted entry may or may not be committed by the next leader.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let mut c = client(&[cluster.endpoint(leader)]).await;
    // Over the request size limit.
    // Between the limit (1.5 MiB) and gRPC's decoding limit (2 MiB): refused by the
    // service with etcd's exact message; beyond: refused by gRPC's decoder.
    let big = vec![b'x'; (1536 << 10) + 1024];
    let error = c
        .put("big", big, None)
        .await
        .expect_err("an oversized put must fail");
    assert!(
        matches!(&error, etcd_client::Error::GRpcStatus(s)
            if s.code() == tonic::Code::InvalidArgument && s.message() == "etcdserver: request is too large"),
        "{error:?}"
    );
    let huge = vec![b'x'; 3 << 20];
    let error = c
        .put("big", huge, None)
        .await
        .expect_err("a put over the decoding limit must fail")
        .to_string();
    assert!(error.contains("message length too large"), "{error}");
    let r = c.get("big", None).await.unwrap();
    assert!(r.kvs().is_empty(), "nothing was written");
    // An empty key.
    let error = c.put("", "v", None).await.expect_err("empty key").to_string();
    assert!(error.contains("key is not provided"), "{error}");

    // A peer of another cluster (token) is refused at hello.
    use kuberaft_proto::raft as pb;
    let url = format!("http://127.0.0.1:{}", cluster.members[0].peer);
    let mut peer = pb::peer_client::PeerClient::connect(url.clone()).await.unwrap();
    let hello = pb::PeerEnvelope {
        content: Some(pb::peer_envelope::Content::Hello(pb::Hello {
            cluster_token: "another-cluster".into(),
            cluster_id: 1,
            from_id: 42,
            to_id: 1,
            protocol_version: 1,
            client_urls: vec![],
        })),
        ..Default::default()
    };
    let refused = peer
        .stream(tokio_stream::iter(vec![hello]))
        .await
        .expect_err("must be refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("cluster token mismatch"),
        "{}",
        refused.message()
    );

    // A well-introduced peer sending malformed messages: they are dropped, the
    // member stays up and the cluster keeps serving.
    use kuberaft_node::server::stable_id;
    let names: Vec<&str> = cluster.members.iter().map(|m| m.name.as_str()).collect();
    let mut parts = vec![cluster.token.as_str()];
    parts.extend(names.iter().copied());
    let cluster_id = stable_id(&parts);
    let hello = pb::PeerEnvelope {
        content: Some(pb::peer_envelope::Content::Hello(pb::Hello {
            cluster_token: cluster.token.clone(),
            cluster_id,
            from_id: stable_id(&[&cluster.token, "m1"]),
            to_id: stable_id(&[&cluster.token, "m0"]),
            protocol_version: 1,
            client_urls: vec![],
        })),
        ..Default::default()
    };
    let garbage = pb::PeerEnvelope {
        content: Some(pb::peer_envelope::Content::Batch(pb::MessageBatch {
            messages: vec![
                pb::Message {
                    from: stable_id(&[&cluster.token, "m1"]),
                    to: stable_id(&[&cluster.token, "m0"]),
                    term: 999,
                    body: None,
                },
                pb::Message {
                    from: stable_id(&[&cluster.token, "m1"]),
                    to: stable_id(&[&cluster.token, "m0"]),
                    term: 999,
                    body: Some(pb::message::Body::AppendRequest(pb::AppendRequest {
                        prev_log_index: 0,
                        prev_log_term: 0,
                        entries: vec![pb::Entry {
                            term: 999,
                            index: 1,
                            payload: None,
                        }],
                        leader_commit: 0,
                    })),
                },
            ],
        })),
        ..Default::default()
    };
    let mut peer = pb::peer_client::PeerClient::connect(url).await.unwrap();
    let accepted = peer.stream(tokio_stream::iter(vec![hello, garbage])).await;
    assert!(accepted.is_ok(), "a correct hello is accepted: {accepted:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        cluster.log(0).contains("malformed peer message dropped"),
        "{}",
        cluster.log(0)
    );
    assert!(
        cluster.metric(0, "kuberaft_term").unwrap() < 999,
        "the garbage term was not adopted"
    );
    c.put("still", "serving", None).await.unwrap();
    assert_eq!(
        value_on(&cluster.endpoint(leader), "still", Duration::from_secs(2))
            .await
            .as_deref(),
        Some(&b"serving"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_leadership_over_and_exits_cleanly() {
    let mut cluster = ProcCluster::start(3, &["--election-timeout=3000", "--heartbeat-interval=100"]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let mut c = client(&cluster.endpoints()).await;
    for n in 0..50 {
        c.put(format!("before-{n}"), "x", None).await.unwrap();
    }
    let term = cluster.metric(leader, "kuberaft_term").unwrap();
    cluster.signal(leader, "TERM");
    let mut child = cluster.members[leader].child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the member did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        cluster.log(leader)
    );
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster.wait_for_leader(&others);
    // A transfer (TimeoutNow) elects the target in the very next term; an election
    // after a timeout would usually take more (pre-votes, split votes).
    assert_eq!(cluster.metric(new_leader, "kuberaft_term").unwrap(), term + 1);
    assert!(
        cluster.log(leader).contains("terminating"),
        "{}",
        cluster.log(leader)
    );
    for n in [0, 49] {
        let value = value_on(
            &cluster.endpoint(new_leader),
            &format!("before-{n}"),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(value.as_deref(), Some(&b"x"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_keeps_only_the_configured_number_of_revisions() {
    let cluster = ProcCluster::start(3, &["--auto-compaction-retention=10"]);
    cluster.wait_for_leader(&[0, 1, 2]);
    let mut c = client(&cluster.endpoints()).await;
    for n in 0..40 {
        c.put(format!("k{n}"), "v", None).await.unwrap();
    }
    // The leader compacts every few seconds; wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        let (ok, out) = etcdctl(&cluster.endpoint(0), &["get", "k0", "--rev=2"]);
        if !ok {
            break out;
        }
        assert!(Instant::now() < deadline, "no auto-compaction within 20 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(error.contains("required revision has been compacted"), "{error}");
    // Recent history and the latest values are kept.
    let r = c.get("k39", None).await.unwrap();
    let current = r.header().unwrap().revision();
    let (ok, out) = etcdctl(
        &cluster.endpoint(1),
        &["get", "k39", &format!("--rev={}", current - 5)],
    );
    assert!(ok, "revisions within the retention are readable: {out}");
    assert_eq!(r.kvs().len(), 1);
}

/// Writes sent to a follower while the leader is down (killed: the follower still names
/// it until its election timeout, and its connection to it is refused) wait for the new
/// leader and succeed, as etcd's followers hold a proposal until a leader takes it:
/// kube-apiserver does not retry a failed create, so each such error was a failed
/// Kubernetes request (node/tests/kube_apiserver.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_a_follower_during_an_election_wait_for_the_new_leader_instead_of_failing() {
    let mut cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    let mut c = client(&[cluster.endpoint(follower)]).await;
    // The follower's connection to the leader exists before the kill.
    c.put("before", "1", None).await.unwrap();
    cluster.kill(leader);
    let began = Instant::now();
    let mut failures = Vec::new();
    let mut n = 0;
    let mut granted: Vec<i64> = Vec::new();
    while began.elapsed() < Duration::from_secs(4) && n < 200 {
        let key = format!("during-{n}");
        // Lease grants and revokes too: kube-apiserver grants one for each Event.
        let outcome = match n % 5 {
            0 => c.put(key.as_str(), "v", None).await.map(drop),
            1 => c
                .txn(etcd_client::Txn::new().and_then([etcd_client::TxnOp::put(key.as_str(), "v", None)]))
                .await
                .map(drop),
            2 => c.delete(format!("during-{}", n - 2), None).await.map(drop),
            3 => c.lease_grant(60, None).await.map(|g| granted.push(g.id())),
            _ => match granted.pop() {
                Some(id) => c.lease_revoke(id).await.map(drop),
                None => Ok(()),
            },
        };
        if let Err(e) = outcome {
            failures.push(format!("{key} after {:?}: {e}", began.elapsed()));
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster.wait_for_leader(&rest);
    assert!(
        failures.is_empty(),
        "{} of {n} writes failed on m{follower} while m{leader} was down (new leader m{new_leader}): {failures:#?}",
        failures.len()
    );
    assert!(n >= 3, "only {n} writes in 4 s");
    let got = c.get("during-1", None).await.unwrap();
    assert_eq!(got.kvs().len(), 1, "the txn's put took effect");
}
