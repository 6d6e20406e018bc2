//! etcd's Auth service and permission checks, driven with etcdctl 3.4 against three
//! real `raft-node` processes on 127.0.0.1: users, roles, a key-range permission,
//! `auth enable`, then requests with `--user`: allowed and denied puts and gets, a txn
//! with a denied branch, a watch on a range the user may not read, a write through a
//! follower, root-only administration, and `auth disable`. The auth store is
//! replicated: every member answers the same `user get` and `role get`, also after a
//! restart (the state store holds it).
//!
//! Every process this test starts is ended by its PID when the test ends (also on
//! failure).

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{etcdctl, ProcCluster};

fn ok(endpoint: &str, args: &[&str]) -> String {
    let (ok, out) = etcdctl(endpoint, args);
    assert!(ok, "etcdctl {args:?} on {endpoint}: {out}");
    out
}

/// The `Error:` line of a failed etcdctl call (it must fail).
fn error(endpoint: &str, args: &[&str]) -> String {
    let (ok, out) = etcdctl(endpoint, args);
    assert!(!ok, "etcdctl {args:?} on {endpoint} should fail: {out}");
    out.lines()
        .rev()
        .find(|l| l.starts_with("Error:"))
        .unwrap_or(&out)
        .to_string()
}

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

/// Waits until `endpoint` answers `args` with output containing `want`.
fn eventually(endpoint: &str, args: &[&str], want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out) = etcdctl(endpoint, args);
        if out.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} {args:?}: wanted {want:?}, got {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `etcdctl auth status` with etcdctl 3.6, when its binary is there.
fn auth_status(endpoint: &str) -> Option<String> {
    let bin = std::env::var("HOME").ok()? + "/.cache/kuberaft-go-peers/etcd-v3.6.16/bin/etcdctl";
    if !std::path::Path::new(&bin).exists() {
        return None;
    }
    let (ok, out) = support::etcdctl_bin(&bin, endpoint, &["auth", "status"]);
    assert!(ok, "auth status: {out}");
    Some(out)
}

#[test]
fn etcdctl_users_roles_and_permissions_are_enforced_on_every_member() {
    let mut cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    let l = cluster.endpoint(leader);
    let f = cluster.endpoint(follower);

    // Before: auth disabled (etcdctl 3.6 has `auth status`, 3.4 has not).
    if let Some(status) = auth_status(&l) {
        assert!(status.contains("Authentication Status: false"), "{status}");
        assert!(status.contains("AuthRevision: 1"), "{status}");
    }

    assert_eq!(
        error(&l, &["auth", "enable"]),
        "Error: etcdserver: root user does not exist"
    );
    // Set-up through a follower (forwarded through the log like any write).
    assert!(ok(&f, &["user", "add", "root:rootpw"]).contains("User root created"));
    assert!(ok(&f, &["user", "add", "alice:alicepw"]).contains("User alice created"));
    assert_eq!(
        error(&f, &["user", "add", "alice:other"]),
        "Error: etcdserver: user name already exists"
    );
    assert!(ok(&l, &["role", "add", "app"]).contains("Role app created"));
    assert_eq!(
        error(&l, &["role", "add", "app"]),
        "Error: etcdserver: role name already exists"
    );
    let granted = ok(
        &l,
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix=true",
        ],
    );
    assert!(granted.contains("Role app updated"), "{granted}");
    assert!(ok(&l, &["user", "grant-role", "alice", "app"]).contains("Role app is granted to user alice"));
    assert_eq!(
        error(&l, &["user", "grant-role", "alice", "nope"]),
        "Error: etcdserver: role name not found"
    );
    // Enabling needs root to hold the root role: etcdctl 3.4 answers etcd's
    // `root user does not have root role` by adding the role and granting it itself.
    assert!(ok(&l, &["auth", "enable"]).contains("Authentication Enabled"));
    assert!(ok(&l, &["--user=root:rootpw", "role", "list"]).contains("root"));

    // Every member applied the same store.
    for i in 0..3 {
        let e = cluster.endpoint(i);
        eventually(
            &e,
            &["--user=root:rootpw", "role", "get", "app"],
            "[app/, app0) (prefix app/)",
        );
        let user = ok(&e, &["--user=root:rootpw", "user", "get", "alice"]);
        assert!(user.contains("Roles: app"), "{user}");
    }

    // Alice: inside her prefix yes, outside no.
    let alice = "--user=alice:alicepw";
    assert_eq!(ok(&l, &[alice, "put", "app/x", "1"]).trim(), "OK");
    assert!(ok(&l, &[alice, "get", "app/x"]).contains("app/x\n1"));
    assert!(ok(&l, &[alice, "get", "app/", "--prefix"]).contains("app/x"));
    assert_eq!(
        error(&l, &[alice, "put", "other", "1"]),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        error(&l, &[alice, "get", "", "--from-key"]),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        error(&l, &[alice, "del", "other"]),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        error(&l, &["--user=alice:wrong", "get", "app/x"]),
        "Error: etcdserver: authentication failed, invalid user ID or password"
    );
    // No user at all.
    assert_eq!(
        error(&l, &["get", "app/x"]),
        "Error: etcdserver: user name is empty"
    );
    // A txn whose failure branch writes outside her range is refused as a whole, even
    // though the success branch would be taken.
    let txn = "value(\"app/x\") = \"1\"\n\nput app/y 2\n\nput other 3\n\n";
    let (done, out) = etcdctl_stdin(&l, &[alice, "txn"], txn);
    assert!(!done, "{out}");
    assert!(out.contains("etcdserver: permission denied"), "{out}");
    let (_, out) = etcdctl(&l, &["--user=root:rootpw", "get", "app/y"]);
    assert!(!out.contains("app/y"), "the refused txn changed nothing: {out}");
    // Her own txn goes through.
    let txn = "value(\"app/x\") = \"1\"\n\nput app/y 2\n\nput app/z 3\n\n";
    let (done, out) = etcdctl_stdin(&l, &[alice, "txn"], txn);
    assert!(done && out.starts_with("SUCCESS"), "{out}");

    // A watch on a range she may not read is canceled by the server at once.
    let (done, out) = etcdctl(&l, &[alice, "watch", "other"]);
    assert!(!done, "{out}");
    assert!(out.contains("permission denied"), "{out}");

    // A write through a follower, with a token that follower issued.
    assert_eq!(ok(&f, &[alice, "put", "app/from-follower", "f"]).trim(), "OK");
    assert!(ok(&l, &[alice, "get", "app/from-follower"]).contains("app/from-follower\nf"));

    // A client given every member (tokens are per member: one sent to another member
    // is refused as invalid, and etcd's client logs in again and retries).
    let all = cluster.endpoints().join(",");
    for i in 0..6 {
        let key = format!("app/multi{i}");
        assert_eq!(ok(&all, &[alice, "put", &key, "m"]).trim(), "OK");
        assert!(ok(&all, &[alice, "get", &key]).contains("\nm"));
    }

    // Administration is root's.
    assert_eq!(
        error(&l, &[alice, "user", "list"]),
        "Error: etcdserver: permission denied"
    );
    // Root only, as etcd 3.5 and 3.6.
    assert_eq!(
        error(&l, &[alice, "compaction", "2"]),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        error(&l, &["--user=root:rootpw", "user", "revoke-role", "root", "root"]),
        "Error: etcdserver: invalid auth management"
    );
    assert!(ok(&l, &["--user=root:rootpw", "put", "other", "r"]).contains("OK"));
    let (done, out) = etcdctl(&l, &[alice, "defrag"]);
    assert!(
        !done && out.contains("code = PermissionDenied desc = etcdserver: permission denied"),
        "{out}"
    );

    // Revoking a lease deletes its keys: alice may not revoke one that holds a key
    // outside her range, and may revoke her own.
    let granted = ok(&l, &[alice, "lease", "grant", "600"]);
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    ok(&l, &[alice, "put", "app/leased", "v", &format!("--lease={id}")]);
    ok(
        &l,
        &[
            "--user=root:rootpw",
            "put",
            "root-leased",
            "v",
            &format!("--lease={id}"),
        ],
    );
    assert_eq!(
        error(&l, &[alice, "lease", "revoke", &id]),
        "Error: failed to revoke lease (etcdserver: permission denied)"
    );
    ok(&l, &["--user=root:rootpw", "del", "root-leased"]);
    assert!(ok(&l, &[alice, "lease", "revoke", &id]).contains("revoked"));

    // The store survives a restart of a member (the state store holds it).
    cluster.kill(follower);
    cluster.spawn(follower);
    eventually(&f, &[alice, "get", "app/x"], "app/x\n1");
    assert_eq!(
        error(&f, &[alice, "put", "other", "1"]),
        "Error: etcdserver: permission denied"
    );

    // Revoking the permission takes effect.
    ok(
        &l,
        &[
            "--user=root:rootpw",
            "role",
            "revoke-permission",
            "app",
            "app/",
            "app0",
        ],
    );
    assert_eq!(
        error(&l, &[alice, "get", "app/x"]),
        "Error: etcdserver: permission denied"
    );

    // Disabled again: everyone may do everything.
    assert!(ok(&l, &["--user=root:rootpw", "auth", "disable"]).contains("Authentication Disabled"));
    assert_eq!(ok(&l, &["put", "other", "2"]).trim(), "OK");
    if let Some(status) = auth_status(&l) {
        assert!(status.contains("Authentication Status: false"), "{status}");
    }
}
