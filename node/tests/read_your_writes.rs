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
