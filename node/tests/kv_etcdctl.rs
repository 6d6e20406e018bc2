//! The KV service's history, compaction and transactions, checked with etcdctl 3.4
//! (Debian `etcd-client`) and the `etcd-client` crate against three real `raft-node`
//! processes on 127.0.0.1.
//!
//! Every process this test starts is ended by its PID when the test ends (also on
//! failure).

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use support::{etcdctl, ProcCluster};

/// etcdctl with `input` on its standard input (as `etcdctl txn` reads it).
fn etcdctl_stdin(endpoint: &str, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=5s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is required (Debian package etcd-client)");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// The last line etcdctl printed on an error (its first lines are client retry logs).
fn error_line(out: &str) -> &str {
    out.lines().rev().find(|l| l.starts_with("Error:")).unwrap_or(out)
}

/// The `"Name" : value` lines of etcdctl's `-w fields` output, in order (strings
/// unquoted).
fn fields(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|line| line.split_once(" : "))
        .map(|(name, value)| {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (name.trim_matches('"').to_string(), value.to_string())
        })
        .collect()
}

fn field(out: &str, name: &str) -> Option<String> {
    fields(out).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// A key's `(value, create_revision, mod_revision, version)`, read with `get -w fields`.
fn get_fields(endpoint: &str, key: &str, extra: &[&str]) -> Option<(String, i64, i64, i64)> {
    let mut args = vec!["get", key, "-w", "fields"];
    args.extend_from_slice(extra);
    let (ok, out) = etcdctl(endpoint, &args);
    assert!(ok, "get {key} {extra:?}: {out}");
    field(&out, "Key")?;
    let number = |name: &str| field(&out, name).and_then(|v| v.parse().ok()).unwrap_or(-1);
    Some((
        field(&out, "Value").unwrap_or_default(),
        number("CreateRevision"),
        number("ModRevision"),
        number("Version"),
    ))
}

fn put_ok(endpoint: &str, key: &str, value: &str) {
    let (ok, out) = etcdctl(endpoint, &["put", key, value]);
    assert!(ok && out.trim() == "OK", "put {key}: {out}");
}

#[test]
fn etcdctl_reads_past_revisions_compacts_and_then_refuses_reads_below_the_compaction() {
    let cluster = ProcCluster::start(3, &[]);
    cluster.wait_for_leader(&[0, 1, 2]);
    let e = |i: usize| cluster.endpoint(i);
    // Revisions (1 is the empty store, as in etcd): k=v1 @2, other @3, k=v2 @4,
    // del k @5, k=v3 @6 (a new life).
    put_ok(&e(0), "k", "v1");
    put_ok(&e(1), "other", "x");
    put_ok(&e(2), "k", "v2");
    let (ok, out) = etcdctl(&e(0), &["del", "k"]);
    assert!(ok && out.trim() == "1", "{out}");
    put_ok(&e(1), "k", "v3");
    for i in 0..3 {
        assert_eq!(
            get_fields(&e(i), "k", &["--rev=1"]),
            None,
            "the empty store at 1, on m{i}"
        );
        assert_eq!(
            get_fields(&e(i), "k", &["--rev=2"]),
            Some(("v1".into(), 2, 2, 1)),
            "m{i}"
        );
        assert_eq!(
            get_fields(&e(i), "k", &["--rev=3"]),
            Some(("v1".into(), 2, 2, 1)),
            "m{i}"
        );
        assert_eq!(
            get_fields(&e(i), "k", &["--rev=4"]),
            Some(("v2".into(), 2, 4, 2)),
            "m{i}"
        );
        assert_eq!(
            get_fields(&e(i), "k", &["--rev=5"]),
            None,
            "deleted at 5, on m{i}"
        );
        assert_eq!(
            get_fields(&e(i), "k", &["--rev=6"]),
            Some(("v3".into(), 6, 6, 1)),
            "m{i}"
        );
        let (ok, out) = etcdctl(&e(i), &["get", "k", "--rev=4"]);
        assert!(ok && out == "k\nv2\n", "m{i}: {out}");
    }
    let (ok, out) = etcdctl(&e(0), &["get", "k", "--rev=7"]);
    assert!(!ok, "{out}");
    assert_eq!(
        error_line(&out),
        "Error: etcdserver: mvcc: required revision is a future revision"
    );

    // Compaction through a follower is forwarded to the leader and reaches every member.
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    let (ok, out) = etcdctl(&e(follower), &["compaction", "4"]);
    assert!(
        ok && out.trim() == "compacted revision 4",
        "{out}\n{}",
        cluster.log(follower)
    );
    for i in 0..3 {
        let (ok, out) = etcdctl(&e(i), &["get", "k", "--rev=3"]);
        assert!(!ok, "m{i}: {out}");
        assert_eq!(
            error_line(&out),
            "Error: etcdserver: mvcc: required revision has been compacted",
            "m{i}"
        );
        // At and above the compacted revision, history is intact.
        assert_eq!(
            get_fields(&e(i), "k", &["--rev=4"]),
            Some(("v2".into(), 2, 4, 2)),
            "m{i}"
        );
        assert_eq!(
            get_fields(&e(i), "other", &["--rev=4"]),
            Some(("x".into(), 3, 3, 1)),
            "m{i}"
        );
        assert_eq!(get_fields(&e(i), "k", &["--rev=5"]), None, "m{i}");
    }
    for (revision, message) in [
        (
            "4",
            "Error: etcdserver: mvcc: required revision has been compacted",
        ),
        (
            "1",
            "Error: etcdserver: mvcc: required revision has been compacted",
        ),
        (
            "100",
            "Error: etcdserver: mvcc: required revision is a future revision",
        ),
    ] {
        let (ok, out) = etcdctl(&e(leader), &["compaction", revision]);
        assert!(!ok, "compaction {revision}: {out}");
        assert_eq!(error_line(&out), message, "compaction {revision}");
    }
}

#[test]
fn etcdctl_txn_reads_its_input_from_stdin_and_applies_one_branch_at_one_revision() {
    let cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = cluster.endpoint((leader + 1) % 3);
    put_ok(&follower, "k", "v"); // revision 2 (1 is the empty store, as in etcd)
    put_ok(&follower, "j", "1"); // revision 3

    // Compares, blank line, success ops, blank line, failure ops, blank line.
    let (ok, out) = etcdctl_stdin(
        &follower,
        &["txn"],
        "value(\"k\") = \"v\"\nversion(\"j\") > \"0\"\n\nput k v2\nput j 2\nget k\n\nput k failed\n\n",
    );
    assert!(ok, "{out}");
    assert_eq!(out, "SUCCESS\n\nOK\n\nOK\n\nk\nv2\n");
    // Both writes landed at one revision.
    assert_eq!(get_fields(&follower, "k", &[]), Some(("v2".into(), 2, 4, 2)));
    assert_eq!(get_fields(&follower, "j", &[]), Some(("2".into(), 3, 4, 2)));

    // A compare that fails runs the failure branch.
    let (ok, out) = etcdctl_stdin(
        &follower,
        &["txn"],
        "mod(\"k\") < \"4\"\n\nput k nope\n\ndel j\nput k v3\n\n",
    );
    assert!(ok, "{out}");
    assert_eq!(out, "FAILURE\n\n1\n\nOK\n");
    assert_eq!(get_fields(&follower, "k", &[]), Some(("v3".into(), 2, 5, 3)));
    assert_eq!(get_fields(&follower, "j", &[]), None);

    // A txn that only reads does not bump the revision.
    let (ok, out) = etcdctl_stdin(
        &follower,
        &["txn", "-w", "fields"],
        "create(\"k\") = \"2\"\n\nget k\n\n\n",
    );
    assert!(ok, "{out}");
    assert_eq!(field(&out, "Revision").as_deref(), Some("5"), "{out}");
    assert_eq!(field(&out, "Succeeded").as_deref(), Some("true"), "{out}");
    assert_eq!(field(&out, "Value").as_deref(), Some("v3"), "{out}");

    // etcd's refusals.
    let (ok, out) = etcdctl_stdin(&follower, &["txn"], "\nput a 1\nput a 2\n\n\n");
    assert!(!ok, "{out}");
    assert_eq!(
        error_line(&out),
        "Error: etcdserver: duplicate key given in txn request"
    );
    let many: String = (0..129).map(|i| format!("put key{i} v\n")).collect();
    let (ok, out) = etcdctl_stdin(&follower, &["txn"], &format!("\n{many}\n\n"));
    assert!(!ok, "{out}");
    assert_eq!(
        error_line(&out),
        "Error: etcdserver: too many operations in txn request"
    );
    assert_eq!(get_fields(&follower, "a", &[]), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_options_prev_kv_and_txns_work_through_etcdctl_and_the_etcd_client_crate() {
    let cluster = ProcCluster::start(3, &[]);
    cluster.wait_for_leader(&[0, 1, 2]);
    let e = cluster.endpoint(2);
    for (key, value) in [("p/a", "1"), ("p/b", "2"), ("p/c", "3"), ("p/a", "4"), ("q", "5")] {
        put_ok(&e, key, value);
    }
    let (ok, out) = etcdctl(&e, &["put", "--prev-kv", "p/b", "6"]);
    assert!(ok && out == "OK\np/b\n2\n", "{out}");
    let (ok, out) = etcdctl(
        &e,
        &["get", "--prefix", "p/", "--sort-by=MODIFY", "--order=DESCEND"],
    );
    assert!(ok, "{out}");
    assert_eq!(out, "p/b\n6\np/a\n4\np/c\n3\n");
    let (ok, out) = etcdctl(&e, &["get", "--prefix", "p/", "--limit=2", "-w", "fields"]);
    assert!(ok, "{out}");
    assert_eq!(
        fields(&out).iter().filter(|(n, _)| n == "Key").count(),
        2,
        "{out}"
    );
    assert_eq!(
        (field(&out, "Count").as_deref(), field(&out, "More").as_deref()),
        (Some("3"), Some("true")),
        "{out}"
    );
    let (ok, out) = etcdctl(&e, &["get", "--prefix", "p/", "--limit=2", "--keys-only"]);
    assert!(
        ok && out.split_whitespace().collect::<Vec<_>>() == ["p/a", "p/b"],
        "{out}"
    );

    // etcdctl 3.4 has no --count-only; the etcd client crate sends it.
    let options = ConnectOptions::new()
        .with_timeout(Duration::from_secs(3))
        .with_connect_timeout(Duration::from_secs(1));
    let mut client = Client::connect(cluster.endpoints(), Some(options)).await.unwrap();
    let counted = client
        .get("p/", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert_eq!((counted.count(), counted.kvs().len()), (3, 0));
    let sorted = client
        .get(
            "p/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Version, SortOrder::Descend)
                    .with_limit(1),
            ),
        )
        .await
        .unwrap();
    // p/a and p/b are both at version 2: as in etcd, ties stay in key order
    // (etcd_compat checks this against etcd itself).
    assert_eq!(sorted.kvs()[0].key(), b"p/a");

    // A compare over a range holds only if every key in it holds.
    let txn = |bound: i64| {
        Txn::new()
            .when([Compare::mod_revision("p/", CompareOp::Greater, bound).with_prefix()])
            .and_then([TxnOp::put("r", "yes", None)])
            .or_else([TxnOp::put("r", "no", None), TxnOp::get("p/a", None)])
    };
    let response = client.txn(txn(4)).await.unwrap();
    assert!(!response.succeeded(), "p/c was last modified at 4");
    let response = client.txn(txn(3)).await.unwrap();
    assert!(response.succeeded());
    let r = client.get("r", None).await.unwrap();
    assert_eq!((r.kvs()[0].value(), r.kvs()[0].version()), (&b"yes"[..], 2));
    let compacted = client.compact(4, None).await.unwrap();
    assert_eq!(compacted.header().map(|h| h.revision()), Some(9));
    let err = client
        .get("p/a", Some(GetOptions::new().with_revision(3)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("required revision has been compacted"),
        "{err}"
    );

    // A put may keep the current value; the key must exist.
    let (ok, out) = etcdctl(&e, &["put", "--ignore-value", "p/c"]);
    assert!(ok && out.trim() == "OK", "{out}");
    let c = client.get("p/c", None).await.unwrap();
    assert_eq!((c.kvs()[0].value(), c.kvs()[0].version()), (&b"3"[..], 2));
    let (ok, out) = etcdctl(&e, &["put", "--ignore-value", "p/missing"]);
    assert!(!ok, "{out}");
    assert_eq!(error_line(&out), "Error: etcdserver: key not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restored_from_a_snapshot_serves_the_same_history_and_compaction() {
    let mut cluster = ProcCluster::start(3, &["--snapshot-count=100"]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    let live: Vec<String> = (0..3)
        .filter(|&i| i != follower)
        .map(|i| cluster.endpoint(i))
        .collect();
    let options = ConnectOptions::new()
        .with_timeout(Duration::from_secs(3))
        .with_connect_timeout(Duration::from_secs(1));
    let mut client = Client::connect(&live, Some(options)).await.unwrap();
    // Revision n + 1 holds h = v{n} (1 is the empty store, as in etcd); the compaction
    // lands in the middle, so the snapshots
    // taken after it carry both the compacted revision and the history above it.
    for n in 1..=600 {
        client.put("h", format!("v{n}"), None).await.unwrap();
    }
    client.compact(300, None).await.unwrap();
    for n in 601..=1200 {
        client.put("h", format!("v{n}"), None).await.unwrap();
    }
    cluster.spawn(follower);
    let e = cluster.endpoint(follower);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out) = etcdctl(&e, &["get", "h", "--consistency=s", "-w", "fields"]);
        if field(&out, "Value").as_deref() == Some("v1200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follower never caught up: {out}\n{}",
            cluster.log(follower)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        cluster
            .metric(follower, "kuberaft_snapshots_installed_total")
            .unwrap_or(0)
            > 0,
        "the follower came back through a snapshot from the leader"
    );
    for revision in [300, 301, 777, 1201] {
        let (ok, out) = etcdctl(&e, &["get", "h", "--consistency=s", &format!("--rev={revision}")]);
        assert!(
            ok && out == format!("h\nv{}\n", revision - 1),
            "rev {revision}: {out}"
        );
    }
    let (ok, out) = etcdctl(&e, &["get", "h", "--consistency=s", "--rev=299"]);
    assert!(!ok, "{out}");
    assert_eq!(
        error_line(&out),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
}
