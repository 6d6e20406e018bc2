//! The backend quota, as etcd has it: over `--quota-backend-bytes` a write that would
//! grow the store raises the NOSPACE alarm and is refused (on every member, since the
//! alarm goes through the log); reads and deletes still work; after deleting,
//! compacting and defragmenting (which really shrinks the state store file) and
//! `etcdctl alarm disarm`, writes are accepted again. Driven with etcdctl.

mod support;

use support::{etcdctl, ProcCluster};

#[test]
fn over_the_quota_writes_raise_nospace_until_space_is_freed_and_the_alarm_disarmed() {
    let cluster = ProcCluster::start(3, &["--quota-backend-bytes=6000000"]);
    cluster.wait_for_leader(&[0, 1, 2]);
    let all = cluster.endpoints().join(",");
    let value = "v".repeat(100_000);
    let mut refused = None;
    for i in 0..200 {
        let (ok, out) = etcdctl(&all, &["put", &format!("big/{i:03}"), &value]);
        if !ok {
            refused = Some((i, out));
            break;
        }
    }
    let (at, out) = refused.expect("a 6 MB quota refuses 20 MB of values");
    assert!(at > 5, "refused only after the store grew ({at} puts)");
    assert!(out.contains("etcdserver: mvcc: database space exceeded"), "{out}");

    // Raised through the log: every member lists it and refuses writes, also a
    // follower that did not cross the quota itself.
    for i in 0..3 {
        let (ok, out) = etcdctl(&cluster.endpoint(i), &["alarm", "list"]);
        assert!(ok && out.contains("alarm:NOSPACE"), "member {i}: {out}");
        let (ok, out) = etcdctl(&cluster.endpoint(i), &["put", "small", "x"]);
        assert!(
            !ok && out.contains("database space exceeded"),
            "member {i}: {out}"
        );
        let (ok, out) = etcdctl(&cluster.endpoint(i), &["endpoint", "status"]);
        assert!(ok && out.contains("alarm:NOSPACE"), "member {i}: {out}");
    }
    // Reads and deletes go through.
    let (ok, out) = etcdctl(&all, &["get", "big/000", "--print-value-only"]);
    assert!(ok && out.trim() == value, "read while over quota");
    let (ok, out) = etcdctl(&all, &["del", "big/", "--prefix"]);
    assert!(ok && out.trim() == at.to_string(), "{out}");
    let (ok, out) = etcdctl(&all, &["get", "big/", "--prefix", "-w", "json"]);
    assert!(ok);
    let revision = serde_json::from_str::<serde_json::Value>(&out).unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    let (ok, out) = etcdctl(&all, &["compact", &revision.to_string()]);
    assert!(ok, "{out}");
    // Defragmenting shrinks every member's file below the quota.
    for i in 0..3 {
        let before = cluster.metric(i, "kuberaft_mvcc_db_total_size_in_bytes").unwrap();
        let (ok, out) = etcdctl(&cluster.endpoint(i), &["defrag"]);
        assert!(ok && out.contains("Finished defragmenting"), "{out}");
        let after = cluster.metric(i, "kuberaft_mvcc_db_total_size_in_bytes").unwrap();
        assert!(
            after < before / 4 && after < 6_000_000,
            "member {i}: {before} -> {after} bytes"
        );
    }
    // Disarmed through a follower (forwarded to the leader), then writes work again.
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    let (ok, out) = etcdctl(&cluster.endpoint(follower), &["alarm", "disarm"]);
    assert!(ok && out.contains("alarm:NOSPACE"), "{out}");
    for i in 0..3 {
        let (ok, out) = etcdctl(&cluster.endpoint(i), &["alarm", "list"]);
        assert!(ok && out.trim().is_empty(), "member {i}: {out}");
    }
    let (ok, out) = etcdctl(&all, &["put", "small", "x"]);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(&all, &["get", "small", "--print-value-only"]);
    assert!(ok && out.trim() == "x", "{out}");
}
