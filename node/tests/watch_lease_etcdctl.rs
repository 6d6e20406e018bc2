//! Watch and Lease through etcdctl 3.4 (Debian `etcd-client`) against three real
//! `raft-node` processes on 127.0.0.1: the printed output is compared with what
//! etcdctl prints against etcd for the same history.
//!
//! Every process this test starts (members and `etcdctl watch`) is ended by its PID
//! when the test ends, also on failure.

mod support;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{etcdctl, ProcCluster};

/// A running `etcdctl watch`, its output collected as it comes.
struct Watch {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Watch {
    fn start(endpoint: &str, args: &[&str]) -> Watch {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .arg("watch")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl is required (Debian package etcd-client)");
        let out = Arc::new(Mutex::new(String::new()));
        for mut pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Watch { child, out }
    }

    /// The output once it ends with `expected` (or whatever came within 20 s).
    fn wait_for(&self, expected: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.out.lock().unwrap().clone();
            if out.ends_with(expected) || out.len() > expected.len() + 4096 || Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Has etcdctl exited (within 10 s)?
    fn exited(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until every member knows a leader (a follower that has not heard from the
/// new leader yet refuses writes with "no leader").
fn settle(cluster: &ProcCluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(0..cluster.members.len()).all(|i| cluster.metric(i, "kuberaft_has_leader") == Some(1)) {
        assert!(Instant::now() < deadline, "members know no leader after 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn put_ok(endpoint: &str, args: &[&str]) {
    let mut all = vec!["put"];
    all.extend_from_slice(args);
    let (ok, out) = etcdctl(endpoint, &all);
    assert!(ok && out.trim() == "OK", "put {args:?}: {out}");
}

/// The last line etcdctl printed on an error (its first lines are client retry logs).
fn error_line(out: &str) -> &str {
    out.lines().rev().find(|l| l.starts_with("Error:")).unwrap_or(out)
}

#[test]
fn etcdctl_watch_prints_history_live_events_prev_kv_prefixes_and_the_compaction_cancel() {
    let cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    settle(&cluster);
    let e = |i: usize| cluster.endpoint(i);
    let follower = (leader + 1) % 3;
    // Revisions: k=v1 @1, k/a=x @2, k=v2 @3, del k @4, other=y @5.
    put_ok(&e(0), &["k", "v1"]);
    put_ok(&e(1), &["k/a", "x"]);
    put_ok(&e(2), &["k", "v2"]);
    let (ok, out) = etcdctl(&e(0), &["del", "k"]);
    assert!(ok && out.trim() == "1", "{out}");
    put_ok(&e(1), &["other", "y"]);

    // One key from the first revision, on every member: the same history.
    for i in 0..3 {
        let watch = Watch::start(&e(i), &["k", "--rev=1"]);
        let expected = "PUT\nk\nv1\nPUT\nk\nv2\nDELETE\nk\n\n";
        assert_eq!(watch.wait_for(expected), expected, "m{i}");
    }
    // A prefix; prev-kv prints the previous version before the event's own.
    let watch = Watch::start(&e(follower), &["k", "--prefix", "--rev=1"]);
    let expected = "PUT\nk\nv1\nPUT\nk/a\nx\nPUT\nk\nv2\nDELETE\nk\n\n";
    assert_eq!(watch.wait_for(expected), expected);
    let prev = Watch::start(&e(follower), &["k", "--rev=2", "--prev-kv"]);
    let expected = "PUT\nk\nv1\nk\nv2\nDELETE\nk\nv2\nk\n\n";
    assert_eq!(prev.wait_for(expected), expected);

    // From history to live: later writes follow on the same streams, through any member.
    put_ok(&e(leader), &["k/b", "z"]);
    put_ok(&e(follower), &["k", "v3"]);
    let expected = "PUT\nk\nv1\nPUT\nk/a\nx\nPUT\nk\nv2\nDELETE\nk\n\nPUT\nk/b\nz\nPUT\nk\nv3\n";
    assert_eq!(watch.wait_for(expected), expected);
    let expected = "PUT\nk\nv1\nk\nv2\nDELETE\nk\nv2\nk\n\nPUT\nk\nv3\n";
    assert_eq!(prev.wait_for(expected), expected);
    drop((watch, prev));

    // A start revision below the compaction: etcd's cancel, and etcdctl gives up.
    let (ok, out) = etcdctl(&e(0), &["compaction", "4"]);
    assert!(ok, "{out}");
    let mut compacted = Watch::start(&e(follower), &["k", "--rev=2"]);
    let expected = "watch was canceled (etcdserver: mvcc: required revision has been compacted)\n";
    let out = compacted.wait_for(expected);
    assert!(out.starts_with(expected), "{out}");
    assert!(
        compacted.exited(),
        "etcdctl keeps waiting after the cancel: {out}"
    );
    // From the compacted revision itself, the delete there is still reported.
    let from = Watch::start(&e(follower), &["k", "--rev=4"]);
    let expected = "DELETE\nk\n\nPUT\nk\nv3\n";
    assert_eq!(from.wait_for(expected), expected);
}

/// `lease 694d7e1bfe9a7d0b granted with TTL(30s)` -> the id in hex.
fn granted(out: &str, ttl: i64) -> String {
    let line = out.lines().last().unwrap_or_default();
    let id = line
        .strip_prefix("lease ")
        .and_then(|rest| rest.strip_suffix(&format!(" granted with TTL({ttl}s)")))
        .unwrap_or_else(|| panic!("unexpected grant output: {out}"));
    assert_eq!(id.len(), 16, "{out}");
    id.to_string()
}

#[test]
fn etcdctl_leases_grant_attach_keep_alive_report_revoke_and_expire() {
    let cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    settle(&cluster);
    let f = cluster.endpoint((leader + 1) % 3);
    let l = cluster.endpoint(leader);

    let (ok, out) = etcdctl(&f, &["lease", "grant", "30"]);
    assert!(ok, "{out}");
    let id = granted(&out, 30);
    put_ok(&f, &["--lease", &id, "lk1", "v"]);
    put_ok(&l, &["--lease", &id, "lk2", "v"]);
    put_ok(&f, &["free", "v"]);

    // Served through a follower too (forwarded to the leader, whose clock counts).
    let (ok, out) = etcdctl(&f, &["lease", "timetolive", &id, "--keys"]);
    assert!(ok, "{out}");
    let prefix = format!("lease {id} granted with TTL(30s), remaining(");
    let rest = out
        .trim()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{out}"));
    let (remaining, keys) = rest.split_once("s), ").unwrap_or_else(|| panic!("{out}"));
    let remaining: i64 = remaining.parse().unwrap();
    assert!((20..=30).contains(&remaining), "{out}");
    assert_eq!(keys, "attached keys([lk1 lk2])");
    let (ok, out) = etcdctl(&f, &["lease", "keep-alive", "--once", &id]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), format!("lease {id} keepalived with TTL(30)"));
    let (ok, out) = etcdctl(&f, &["lease", "list"]);
    assert!(ok, "{out}");
    assert_eq!(out, format!("found 1 leases\n{id}\n"));

    // Below the minimum TTL (1.5 election timeouts of 1 s, rounded up): raised.
    let (ok, out) = etcdctl(&l, &["lease", "grant", "1"]);
    assert!(ok, "{out}");
    granted(&out, 2);

    // Revoking deletes the attached keys and nothing else.
    let (ok, out) = etcdctl(&f, &["lease", "revoke", &id]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), format!("lease {id} revoked"));
    for i in 0..3 {
        let (ok, out) = etcdctl(
            &cluster.endpoint(i),
            &["get", "lk", "--prefix", "--consistency=s"],
        );
        // Serializable reads on a follower may trail the commit briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = (ok, out);
        while !out.1.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            out = etcdctl(
                &cluster.endpoint(i),
                &["get", "lk", "--prefix", "--consistency=s"],
            );
        }
        assert_eq!(out, (true, String::new()), "m{i}");
    }
    let (ok, out) = etcdctl(&f, &["get", "free", "--print-value-only"]);
    assert!(ok && out == "v\n", "{out}");
    let (ok, out) = etcdctl(&f, &["lease", "revoke", &id]);
    assert!(!ok);
    assert_eq!(
        error_line(&out),
        "Error: failed to revoke lease (etcdserver: requested lease not found)"
    );
    let (ok, out) = etcdctl(&f, &["put", "--lease", &id, "lk1", "v"]);
    assert!(!ok);
    assert_eq!(error_line(&out), "Error: etcdserver: requested lease not found");
    let (ok, out) = etcdctl(&f, &["lease", "timetolive", &id]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), format!("lease {id} already expired"));
    let (ok, out) = etcdctl(&f, &["lease", "keep-alive", "--once", &id]);
    assert!(!ok, "{out}");
    assert_eq!(error_line(&out), "Error: etcdserver: requested lease not found");

    // Without keepalives, a 2 s lease expires: its key goes, and not before 2 s
    // (measured from before the grant, so an honest expiry is never early).
    let granted_at = Instant::now();
    let (ok, out) = etcdctl(&l, &["lease", "grant", "2"]);
    assert!(ok, "{out}");
    let short = granted(&out, 2);
    put_ok(&f, &["--lease", &short, "ek", "v"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let gone_after = loop {
        let asked_at = Instant::now();
        let (ok, out) = etcdctl(&f, &["get", "ek"]);
        assert!(ok, "{out}");
        if out.is_empty() {
            break asked_at.duration_since(granted_at);
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        gone_after >= Duration::from_secs(2),
        "expired after {gone_after:?}"
    );
    let (ok, out) = etcdctl(&f, &["lease", "list"]);
    assert!(ok && out == "found 0 leases\n", "{out}");
}
