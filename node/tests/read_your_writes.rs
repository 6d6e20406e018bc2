//! Read-your-writes on every member: a client that puts through a member and then reads
//! serializably from that same member sees its write, whether the member is the leader
//! or a follower that forwarded the write — under a concurrent write load, as etcd
//! behaves (its followers answer a write once they applied it themselves).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::GetOptions;
use support::{client, ProcCluster};

/// Tries per member (`KUBERAFT_RYW_TRIES` raises it; 3,000 in all is issue 16's figure).
fn tries_per_member() -> usize {
    std::env::var("KUBERAFT_RYW_TRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_then_a_serializable_get_on_the_same_member_sees_the_put_on_every_member() {
    let cluster = ProcCluster::start(3, &[]);
    cluster.wait_for_leader(&[0, 1, 2]);
    let endpoints = cluster.endpoints();

    // Background writers on every member keep the apply path busy.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..6 {
        let endpoint = endpoints[w % endpoints.len()].clone();
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut c = client(&[endpoint]).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let _ = c.put(format!("load/{w}/{}", n % 64), vec![b'l'; 512], None).await;
            }
            n
        }));
    }

    let tries = tries_per_member();
    let mut stale = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let mut c = client(std::slice::from_ref(endpoint)).await;
        let key = format!("ryw/{i}");
        for n in 0..tries {
            let value = n.to_string();
            let put = c.put(key.as_str(), value.as_str(), None).await.unwrap();
            let written_at = put.header().unwrap().revision();
            let got = c
                .get(key.as_str(), Some(GetOptions::new().with_serializable()))
                .await
                .unwrap();
            let seen = got.kvs().first().map(|kv| kv.value_str().unwrap().to_string());
            if seen.as_deref() != Some(value.as_str()) {
                stale.push((i, n, written_at, seen, got.header().unwrap().revision()));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut background = 0;
    for task in load {
        background += tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(background > 100, "the background load ran ({background} puts)");
    assert!(
        stale.is_empty(),
        "{} of {} reads missed the reader's own write (member, try, written at, seen, read at): {:?}",
        stale.len(),
        3 * tries,
        &stale[..stale.len().min(10)]
    );
}

/// Followers hand writes to the leader over the peer connection, as etcd's do: with
/// every member advertising a client URL nothing listens on (a firewall that lets only
/// the peer port through between members looks the same to them), writes sent to a
/// follower still succeed (put, delete, txn, lease grant and revoke, compaction) and
/// are answered with the follower's own header after its own apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_writes_over_the_peer_port_only() {
    let cluster = ProcCluster::start(3, &["--advertise-client-urls=http://127.0.0.1:1"]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    let mut c = client(&[cluster.endpoint(follower)]).await;
    let member = c.status().await.unwrap().header().unwrap().member_id();

    let put = c.put("fw/a", "1", None).await.unwrap();
    assert_eq!(
        put.header().unwrap().member_id(),
        member,
        "the follower's own header"
    );
    let got = c
        .get("fw/a", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(got.kvs()[0].value(), b"1", "applied here before the answer");
    assert_eq!(got.kvs()[0].mod_revision(), put.header().unwrap().revision());

    let txn = etcd_client::Txn::new()
        .when([etcd_client::Compare::value(
            "fw/a",
            etcd_client::CompareOp::Equal,
            "1",
        )])
        .and_then([etcd_client::TxnOp::put("fw/b", "2", None)]);
    assert!(c.txn(txn).await.unwrap().succeeded());
    let lease = c.lease_grant(60, None).await.unwrap();
    c.put(
        "fw/leased",
        "x",
        Some(etcd_client::PutOptions::new().with_lease(lease.id())),
    )
    .await
    .unwrap();
    c.lease_revoke(lease.id()).await.unwrap();
    let deleted = c.delete("fw/a", None).await.unwrap();
    assert_eq!(deleted.deleted(), 1);
    let revision = deleted.header().unwrap().revision();
    c.compact(revision - 1, None).await.unwrap();

    // Every member agrees: fw/b only (fw/a deleted, fw/leased gone with its lease).
    for i in 0..3 {
        let mut m = client(&[cluster.endpoint(i)]).await;
        let all = m.get("fw/", Some(GetOptions::new().with_prefix())).await.unwrap();
        let keys: Vec<&[u8]> = all.kvs().iter().map(|kv| kv.key()).collect();
        assert_eq!(keys, [b"fw/b".as_slice()], "member {i}");
    }
}
