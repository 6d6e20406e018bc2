//! `raft-node --force-new-cluster`: quorum-loss recovery from one survivor's data.
//! Real processes; every process is ended by its PID (kill -9 through `Child::kill`).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{client, ProcCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_of_a_lost_quorum_becomes_a_one_member_cluster_with_every_acknowledged_key() {
    let mut cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let mut c = client(&cluster.endpoints()).await;
    let revision_before = {
        let mut last = 0;
        for n in 0..200 {
            last = c
                .put(format!("k{n:03}"), format!("v{n}"), None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
        }
        last
    };
    let cluster_id_before = c.member_list().await.unwrap().header().unwrap().cluster_id();
    drop(c);
    // Every acknowledged write is on a majority; keep a member that holds them all by
    // keeping the leader (any survivor of a majority would do after it caught up).
    let survivor = leader;
    for i in (0..3).filter(|&i| i != survivor) {
        cluster.kill(i);
    }
    cluster.kill(survivor);
    cluster.members[survivor].extra.push("--force-new-cluster".into());
    cluster.spawn(survivor);
    cluster.wait_for_leader(&[survivor]);

    let mut c = client(&[cluster.endpoint(survivor)]).await;
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members().len(), 1, "{:?}", members.members());
    assert_eq!(members.members()[0].name(), cluster.members[survivor].name);
    assert_eq!(members.header().unwrap().cluster_id(), cluster_id_before);
    for n in 0..200 {
        let got = c.get(format!("k{n:03}"), None).await.unwrap();
        let kv = got.kvs().first().unwrap_or_else(|| panic!("k{n:03} is missing"));
        assert_eq!(kv.value(), format!("v{n}").as_bytes());
    }
    // Revisions are kept: a new write continues after the old ones (plus nothing else).
    let put = c.put("after", "recovery", None).await.unwrap();
    assert!(put.header().unwrap().revision() > revision_before);
    let log = cluster.log(survivor);
    assert!(log.contains("--force-new-cluster: recovered to index"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // A restart that still carries the flag changes nothing and serves the same data.
    cluster.kill(survivor);
    cluster.spawn(survivor);
    cluster.wait_for_leader(&[survivor]);
    let mut c = client(&[cluster.endpoint(survivor)]).await;
    let got = c.get("after", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"recovery");
    assert_eq!(c.member_list().await.unwrap().members().len(), 1);
}

#[test]
fn force_new_cluster_without_data_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ports = support::free_ports(3);
    let deadline = Instant::now() + Duration::from_secs(30);
    let output = Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .arg("--name=m0")
        .arg(format!("--data-dir={}", dir.path().join("m0").display()))
        .arg(format!("--listen-client-urls=http://127.0.0.1:{}", ports[0]))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", ports[1]))
        .arg(format!("--listen-metrics-urls=http://127.0.0.1:{}", ports[2]))
        .arg("--force-new-cluster")
        .output()
        .unwrap();
    assert!(Instant::now() < deadline);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--force-new-cluster") && stderr.contains("holds no WAL"),
        "{stderr}"
    );
    assert!(!dir.path().join("m0").join("wal").exists(), "nothing was created");
}
