//! The built `raftctl` against real `raft-node` processes on 127.0.0.1.
//!
//! `raft-node` is another crate's binary, so build it first:
//! `cargo build -p kuberaft-node --bin raft-node` (same profile and target directory),
//! or point `RAFT_NODE_BIN` at one. Every process started here is ended by its PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RAFTCTL: &str = env!("CARGO_BIN_EXE_raftctl");

/// `raft-node` next to `raftctl` (target/<profile>/), unless `RAFT_NODE_BIN` says
/// otherwise.
fn raft_node_bin() -> PathBuf {
    let path = std::env::var_os("RAFT_NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(RAFTCTL).with_file_name("raft-node"));
    assert!(
        path.is_file(),
        "raft-node not found at {}: build it first with `cargo build -p kuberaft-node --bin raft-node` \
         (same profile and CARGO_TARGET_DIR), or set RAFT_NODE_BIN",
        path.display()
    );
    path
}

/// `n` distinct free ports below the ephemeral range (see `reserve_ports`).
fn free_ports(n: usize) -> Vec<u16> {
    kuberaft_operator::local::reserve_ports(n).unwrap()
}

struct Cluster {
    clients: Vec<u16>,
    children: Vec<Child>,
    base: tempfile::TempDir,
}

impl Cluster {
    fn start(size: usize) -> Cluster {
        let bin = raft_node_bin();
        let base = tempfile::tempdir().unwrap();
        let free = free_ports(3 * size);
        let ports: Vec<(u16, u16, u16)> = free.chunks(3).map(|p| (p[0], p[1], p[2])).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{}", p.1))
            .collect::<Vec<_>>()
            .join(",");
        let children = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer, metrics))| {
                let dir = base.path().join(format!("m{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                let log = std::fs::File::create(dir.join("log.txt")).unwrap();
                Command::new(&bin)
                    .arg(format!("--name=m{i}"))
                    .arg(format!("--data-dir={}", dir.display()))
                    .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                    .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                    .arg(format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"))
                    .arg(format!("--initial-cluster={initial}"))
                    .arg(format!("--initial-cluster-token=raftctl-{}", std::process::id()))
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap()
            })
            .collect();
        Cluster {
            clients: ports.iter().map(|p| p.0).collect(),
            children,
            base,
        }
    }

    fn endpoints(&self) -> String {
        self.clients
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn logs(&self) -> String {
        (0..self.clients.len())
            .map(|i| {
                std::fs::read_to_string(self.base.path().join(format!("m{i}/log.txt"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn raftctl(args: &[&str]) -> Output {
    Command::new(RAFTCTL).args(args).output().unwrap()
}

/// Runs raftctl, ending it (by its PID) if it has not finished within `limit`.
fn raftctl_within(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(RAFTCTL)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let deadline = Instant::now() + limit;
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let output = waiter.join().unwrap();
            panic!(
                "raftctl {args:?} did not finish within {limit:?}:\n{}",
                text(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    waiter.join().unwrap()
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

/// The table's rows: the lines after the header, up to the first blank line.
fn table_rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn raftctl_status_shows_three_healthy_members_and_exactly_one_leader() {
    let cluster = Cluster::start(3);
    let endpoints = format!("--endpoints={}", cluster.endpoints());
    let deadline = Instant::now() + Duration::from_secs(20);
    let (stdout, rows) = loop {
        let output = raftctl(&[&endpoints, "status"]);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let rows = table_rows(&stdout);
        let leaders = rows
            .iter()
            .filter(|r| r.get(3).map(String::as_str) == Some("leader"))
            .count();
        if output.status.success() && leaders == 1 && rows.iter().all(|r| r.last().unwrap() == "healthy") {
            break (stdout, rows);
        }
        assert!(
            Instant::now() < deadline,
            "no healthy cluster with one leader within 20 s; last output:\n{}\n{}",
            text(&output),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(stdout.starts_with("ENDPOINT"), "{stdout}");
    assert_eq!(rows.len(), 3, "{stdout}");
    let names: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(names, ["m0", "m1", "m2"], "{stdout}");
    assert_eq!(rows.iter().filter(|r| r[3] == "leader").count(), 1, "{stdout}");
    assert_eq!(rows.iter().filter(|r| r[3] == "follower").count(), 2, "{stdout}");

    // JSON carries the same, for scripts.
    let output = raftctl(&[&endpoints, "-o", "json", "status"]);
    assert!(output.status.success(), "{}", text(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);

    // Timing set through raftctl, then read back from every member.
    let output = raftctl(&[
        &endpoints,
        "timing",
        "set",
        "--heartbeat-interval=50",
        "--election-timeout=500",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let output = raftctl(&[
        &endpoints,
        "timing",
        "set",
        "--heartbeat-interval=50",
        "--election-timeout=100",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("election_timeout_ms"), "{}", text(&output));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = raftctl(&[&endpoints, "timing", "get"]);
        let rows = table_rows(&String::from_utf8_lossy(&output.stdout));
        if rows.len() == 3 && rows.iter().all(|r| r[2] == "50" && r[3] == "500") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timing not everywhere: {}",
            text(&output)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A named transfer, then a refused one.
    let output = raftctl(&[&endpoints, "leader", "transfer", "--to=m1"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("transferred to m1"), "{}", text(&output));
    let output = raftctl(&[&endpoints, "leader", "transfer", "--to=nobody"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("not a member"), "{}", text(&output));
}

#[test]
fn raftctl_says_clearly_when_no_member_answers() {
    let free = free_ports(2);
    let dead = format!("--endpoints=127.0.0.1:{},127.0.0.1:{}", free[0], free[1]);
    let output = raftctl(&[&dead, "--dial-timeout-ms=500", "status"]);
    assert_eq!(output.status.code(), Some(1));
    let out = text(&output);
    assert!(out.contains("no member answered"), "{out}");
    assert!(output.stdout.is_empty(), "nothing on stdout: {out}");
    let output = raftctl(&[&dead, "--dial-timeout-ms=500", "leader", "transfer"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("no member answered"), "{}", text(&output));
}

/// `raftctl member ...` until it succeeds, or the deadline; every failure must say `allowed`.
fn raftctl_until_ok(args: &[&str], allowed: &str, within: Duration) -> Output {
    let deadline = Instant::now() + within;
    loop {
        let output = raftctl(args);
        if output.status.success() {
            return output;
        }
        assert!(text(&output).contains(allowed), "{args:?}: {}", text(&output));
        assert!(
            Instant::now() < deadline,
            "{args:?} never succeeded: {}",
            text(&output)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `raftctl status` shows one leader and an RTT p99 for both followers.
fn status_with_rtt(endpoints: &str, cluster: &Cluster) -> (String, Vec<Vec<String>>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = raftctl(&[endpoints, "status"]);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let header: Vec<String> = stdout
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let rows = table_rows(&stdout);
        let rtt = header.iter().position(|h| h == "RTT_P99");
        let ready = output.status.success()
            && rows.iter().filter(|r| r[3] == "leader").count() == 1
            && rtt.is_some_and(|c| {
                rows.iter()
                    .filter(|r| r[3] == "follower")
                    .all(|r| r[c].ends_with("ms"))
            });
        if ready {
            return (stdout, rows);
        }
        assert!(
            Instant::now() < deadline,
            "no RTT for the followers within 20 s; last output:\n{}\n{}",
            text(&output),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn raftctl_member_commands_add_promote_and_remove_a_member() {
    let cluster = Cluster::start(3);
    let endpoints = format!("--endpoints={}", cluster.endpoints());
    // Every member listed, started (named) once it published itself.
    let output = raftctl_until_ok(
        &[&endpoints, "-o", "json", "member", "list"],
        "",
        Duration::from_secs(20),
    );
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = raftctl(&[&endpoints, "member", "list"]);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let rows = table_rows(&stdout);
        if rows.len() == 3 && rows.iter().all(|r| r[2] == "started" && r[3] == "voter") {
            assert!(stdout.starts_with("ID"), "{stdout}");
            break;
        }
        assert!(Instant::now() < deadline, "{}", text(&output));
        std::thread::sleep(Duration::from_millis(100));
    }

    // Add a learner, start it as told, promote it once it caught up.
    let ports = free_ports(3);
    let peer_url = format!("http://127.0.0.1:{}", ports[1]);
    let output = raftctl(&[
        &endpoints,
        "member",
        "add",
        "m3",
        "--learner",
        "--peer-urls",
        &peer_url,
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let added = text(&output);
    assert!(added.contains("member m3 added as a learner"), "{added}");
    assert!(added.contains("--initial-cluster-state existing"), "{added}");
    let output = raftctl(&[&endpoints, "member", "add", "m4", "--peer-urls", &peer_url]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("Peer URLs already exists"),
        "{}",
        text(&output)
    );
    let output = raftctl(&[&endpoints, "member", "promote", "m3"]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "not started yet, so not named either"
    );
    assert!(text(&output).contains("no member named"), "{}", text(&output));

    let json = raftctl(&[&endpoints, "-o", "json", "member", "list"]);
    let listed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let learner = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["learner"] == true)
        .unwrap_or_else(|| panic!("{listed}"));
    let id = learner["id"].as_str().unwrap().to_string();
    let output = raftctl(&[&endpoints, "member", "promote", &id]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("in sync with leader"), "{}", text(&output));

    let initial = added
        .split("--initial-cluster ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let dir = cluster.base.path().join("m3");
    std::fs::create_dir_all(&dir).unwrap();
    let mut joiner = Command::new(raft_node_bin())
        .arg("--name=m3")
        .arg(format!("--data-dir={}", dir.display()))
        .arg(format!("--listen-client-urls=http://127.0.0.1:{}", ports[0]))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--listen-metrics-urls=http://127.0.0.1:{}", ports[2]))
        .arg(format!("--initial-cluster={initial}"))
        .arg("--initial-cluster-state=existing")
        .arg(format!("--initial-cluster-token=raftctl-{}", std::process::id()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log.txt")).unwrap())
        .spawn()
        .unwrap();
    let output = raftctl_until_ok(
        &[&endpoints, "member", "promote", "m3"],
        "",
        Duration::from_secs(40),
    );
    assert!(
        text(&output).contains(&format!("member m3 ({id}) promoted")),
        "{}",
        text(&output)
    );

    // Remove it again: it stops, saying why.
    let output = raftctl(&[&endpoints, "member", "remove", "m3"]);
    assert!(output.status.success(), "{}", text(&output));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = joiner.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = joiner.kill();
            let _ = joiner.wait();
            panic!("the removed member did not stop");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.join("log.txt")).unwrap();
    assert!(log.contains("this member was removed from the cluster"), "{log}");
    let output = raftctl(&[&endpoints, "member", "remove", "m3"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("no member named"), "{}", text(&output));
}

#[test]
fn raftctl_status_shows_rtt_p99_yaml_parses_and_events_follow_the_stream() {
    let cluster = Cluster::start(3);
    let endpoints = format!("--endpoints={}", cluster.endpoints());
    let (stdout, rows) = status_with_rtt(&endpoints, &cluster);
    eprintln!("{stdout}");
    let header: Vec<&str> = stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ENDPOINT",
            "ID",
            "NAME",
            "ROLE",
            "TERM",
            "COMMIT",
            "APPLIED",
            "LAG",
            "RTT_P99",
            "FSYNC_P99",
            "HEALTH"
        ]
    );
    let leader_row = rows.iter().find(|r| r[3] == "leader").unwrap();
    assert_eq!(leader_row[8], "-", "no RTT from the leader to itself: {stdout}");
    for row in rows.iter().filter(|r| r[3] == "follower") {
        let ms: f64 = row[8].trim_end_matches("ms").parse().unwrap();
        assert!(ms > 0.0, "{stdout}");
    }

    // YAML carries what JSON carries.
    let output = raftctl(&[&endpoints, "-o", "yaml", "status"]);
    assert!(output.status.success(), "{}", text(&output));
    let yaml: serde_json::Value = serde_norway::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("status YAML does not parse: {e}\n{}", text(&output)));
    let members = yaml.as_array().expect("a list of members");
    assert_eq!(members.len(), 3);
    let leader = members.iter().find(|m| m["role"] == "leader").unwrap();
    let peers = leader["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    assert!(
        peers.iter().all(|p| p["rtt"]["samples"].as_u64() > Some(0)),
        "{yaml:#}"
    );
    assert!(
        members.iter().all(|m| m["fsync"]["p99_ms"].as_f64() > Some(0.0)),
        "{yaml:#}"
    );
    let output = raftctl(&[&endpoints, "-o", "yaml", "timing", "get"]);
    let timing: serde_json::Value = serde_norway::from_slice(&output.stdout).unwrap();
    assert_eq!(timing[0]["timing"]["heartbeat_interval_ms"], 100);

    // The replayed start of the cluster: the initial members' JOIN (their
    // configuration entries, committed once the first leader is elected) and the
    // election, as table lines and as JSON lines.
    let output = raftctl_within(
        &[&endpoints, "events", "--replay=16", "--count=4"],
        Duration::from_secs(10),
    );
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    eprintln!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert!(lines[0].starts_with("TIME (UTC)"), "{stdout}");
    assert_eq!(
        lines.iter().filter(|l| l.contains(" LEADER_CHANGED ")).count(),
        1,
        "{stdout}"
    );
    for name in ["m0", "m1", "m2"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(" JOIN ") && l.contains(&format!(" {name} "))),
            "{stdout}"
        );
    }
    let output = raftctl_within(
        &[&endpoints, "-o", "json", "events", "--replay=16", "--count=4"],
        Duration::from_secs(10),
    );
    let kinds: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            event["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(kinds.len(), 4);
    assert!(kinds.contains(&"LEADER_CHANGED".to_string()), "{kinds:?}");

    // Following: a timing change made while `raftctl events` waits shows up.
    let follower = {
        let endpoints = endpoints.clone();
        std::thread::spawn(move || {
            raftctl_within(
                &[&endpoints, "-o", "yaml", "events", "--count=1"],
                Duration::from_secs(15),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let output = raftctl(&[
        &endpoints,
        "timing",
        "set",
        "--heartbeat-interval=50",
        "--election-timeout=500",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let output = follower.join().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let event: serde_json::Value = serde_norway::from_str(
        String::from_utf8_lossy(&output.stdout)
            .trim_start_matches("---\n")
            .trim(),
    )
    .unwrap_or_else(|e| panic!("event YAML does not parse: {e}\n{}", text(&output)));
    assert_eq!(event["kind"], "TIMING_CHANGED", "{event}");
    assert_eq!(event["timing"]["election_timeout_ms"], 500, "{event}");
}

#[test]
fn raftctl_puts_gets_deletes_and_watches_keys() {
    let cluster = Cluster::start(3);
    let endpoints = cluster.endpoints();
    let e = format!("--endpoints={endpoints}");
    // The first write waits for an election.
    let out = raftctl_until_ok(&[&e, "put", "greeting", "hello"], "", Duration::from_secs(30));
    assert!(text(&out).starts_with("OK (revision "), "{}", text(&out));

    // A watch from the next revision, started before the writes it must see.
    let revision: i64 = {
        let out = raftctl(&[&e, "-o", "json", "get", "greeting"]);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kvs"][0]["value"], "hello");
        v["revision"].as_i64().unwrap()
    };
    let watch = Command::new(RAFTCTL)
        .args([
            e.as_str(),
            "watch",
            "app/",
            "--prefix",
            &format!("--rev={}", revision + 1),
            "--count=3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for (key, value) in [("app/a", "1"), ("app/b", "2"), ("other", "x")] {
        let out = raftctl(&[&e, "put", key, value]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = raftctl(&[&e, "del", "app/", "--prefix"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2", "{}", text(&out));

    // get --prefix, table and limit.
    let out = raftctl(&[&e, "get", "", "--prefix", "--serializable"]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains("greeting\nhello\n") && listed.contains("other\nx\n"),
        "{listed}"
    );
    assert!(!listed.contains("app/"), "deleted keys listed: {listed}");
    let out = raftctl(&[&e, "-o", "json", "get", "", "--prefix", "--limit=1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kvs"].as_array().unwrap().len(), 1);
    assert_eq!(v["count"], 2);
    assert_eq!(v["more"], true);

    // The watch saw exactly the three changes under app/, in order, then stopped.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut watch = watch;
    while watch.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = watch.kill();
            panic!("raftctl watch did not stop after 3 events:\n{}", cluster.logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "PUT\napp/a\n1\nPUT\napp/b\n2\nDELETE\napp/a\n",
        "{}",
        text(&out)
    );

    // Bad input: a clear error, nothing changed.
    let out = raftctl(&[&e, "get", "x", "--limit=-1"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--limit must not be negative"),
        "{}",
        text(&out)
    );
}
