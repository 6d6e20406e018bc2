//! Compatibility with etcd 3.4 and 3.6, decided by comparison: the same etcdctl commands
//! against a 3-member kuberaft cluster and a 3-member etcd cluster of the same release
//! as that etcdctl, started by this test on free 127.0.0.1 ports, outputs compared
//! after normalising
//! only what legitimately differs between two clusters: member and cluster IDs,
//! addresses (ports), lease IDs (server-chosen), server versions, raft terms and
//! indexes (each cluster's log holds its own internal entries), database sizes and
//! timings. Everything else — values, revisions, versions, counts, errors and exit
//! codes — must be equal. A difference that remains must be listed in
//! [`KNOWN_DIFFERENCES`] with the reason it is legitimate; an unlisted difference
//! fails the test, and so does a listed one that no longer occurs.
//!
//! Each comparison runs once per etcd release ([`Peer`]): etcd 3.4 and etcdctl 3.4 from
//! Debian (`/usr/bin/etcd`, `/usr/bin/etcdctl`), and etcd 3.6 and etcdctl 3.6 built from
//! their Go modules by `scripts/go-peers.sh`, when `ETCD36_BIN` and `ETCDCTL36_BIN` name
//! them (`scripts/test.sh` sets both; without them the 3.6 tests say so and pass).

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value;
use support::{EtcdCluster, ProcCluster};

/// A difference from etcd that remains, with its reason. For the step `label`, the
/// regex `pattern` is replaced by `replacement` in both outputs, which must then be
/// equal; or, when `kuberaft_fragment` is not empty, the step is accepted as it is
/// when kuberaft's output contains that fragment (a known bug, stated as such).
/// `peers` are the etcd releases ([`Peer::version`]) with which the difference occurs.
struct Known {
    label: &'static str,
    peers: &'static [&'static str],
    pattern: &'static str,
    replacement: &'static str,
    kuberaft_fragment: &'static str,
    reason: &'static str,
}

/// Every release compared with.
const BOTH: &[&str] = &["3.4", "3.6"];

const KNOWN_DIFFERENCES: &[Known] = &[
    Known {
        label: "user: compaction",
        peers: &["3.4"],
        pattern: "",
        replacement: "",
        kuberaft_fragment: "Error: etcdserver: permission denied",
        reason: "with auth enabled, etcd 3.4 lets any user compact (it answers this step with \
                 `required revision has been compacted`); etcd 3.5 and 3.6 require the root role, \
                 and kuberaft keeps that stricter rule (the 3.6 comparison shows no difference)",
    },
    Known {
        label: "endpoint hashkv",
        peers: BOTH,
        // etcdctl 3.6 adds a column: the hash's revision (compared).
        pattern: r"(?m)^(<client:m[0-9]>), [0-9]+(, [0-9]+)?$",
        replacement: "$1, <hash>$2",
        kuberaft_fragment: "",
        reason:
            "etcd's HashKV is a CRC32 over its bbolt keys (revision bytes) and marshalled values; kuberaft's \
                 is a CRC32C over its own encoding of the same history. Only equality across members is \
                 meaningful (cluster_etcdctl checks it); compact_revision and headers are compared",
    },
    Known {
        label: "endpoint hashkv -w json",
        peers: BOTH,
        pattern: r#""hash":[0-9]+"#,
        replacement: r#""hash":"<hash>""#,
        kuberaft_fragment: "",
        reason: "as for `endpoint hashkv`: each store digests its own encoding",
    },
    Known {
        label: "endpoint status",
        peers: &["3.6"],
        pattern: STATUS_36_PATTERN,
        replacement: STATUS_36_REPLACEMENT,
        kuberaft_fragment: "",
        reason: STATUS_36_REASON,
    },
    Known {
        label: "endpoint status --cluster",
        peers: &["3.6"],
        pattern: STATUS_36_PATTERN,
        replacement: STATUS_36_REPLACEMENT,
        kuberaft_fragment: "",
        reason: STATUS_36_REASON,
    },
    Known {
        label: "endpoint status after move-leader",
        peers: &["3.6"],
        pattern: STATUS_36_PATTERN,
        replacement: STATUS_36_REPLACEMENT,
        kuberaft_fragment: "",
        reason: STATUS_36_REASON,
    },
    Known {
        label: "endpoint status -w json",
        peers: &["3.6"],
        pattern: r#""dbSizeQuota":[0-9]+,|"downgradeInfo":\{\},|"storageVersion":"[^"]*",?"#,
        replacement: "",
        kuberaft_fragment: "",
        reason: STATUS_36_REASON,
    },
];

/// etcdctl 3.6's `endpoint status` row, after [`Target::normalise`]: endpoint, ID,
/// version, storage version, DB size, in use, not in use, quota, leader, learner, ...
const STATUS_36_PATTERN: &str =
    r"(?m)^(\S+, \S+, <version>), [^,]*, (<db-size>, <db-size>, <db-free>), [0-9.]+ [kMG]?B, ";
const STATUS_36_REPLACEMENT: &str = "$1, <storage-version>, $2, <quota>, ";
const STATUS_36_REASON: &str = "Maintenance.Status field etcd 3.6 added that kuberaft leaves empty: \
    storage_version (the schema version of etcd's bbolt file, 3.6.0; kuberaft's store has no such \
    schema). db_size_quota (--quota-backend-bytes) and downgrade_info (an empty message: no \
    downgrade in progress) are filled as etcd fills them, but the pattern still blanks them on both \
    sides since the whole status line is compared through it";

/// One etcd release the scenarios compare kuberaft with: its server and its etcdctl.
#[derive(Debug, Clone)]
struct Peer {
    /// `3.4` or `3.6`: what [`Known::peers`] name.
    version: &'static str,
    /// The etcd binary: a path, or a name found on `PATH`.
    etcd: String,
    /// The etcdctl binary of the same release.
    etcdctl: String,
}

impl Peer {
    /// etcd 3.4 and etcdctl 3.4 from Debian (`etcd-server`, `etcd-client`).
    fn etcd34() -> Peer {
        Peer {
            version: "3.4",
            etcd: "etcd".into(),
            etcdctl: "etcdctl".into(),
        }
    }

    /// etcd 3.6 and etcdctl 3.6 built by `scripts/go-peers.sh`, when `ETCD36_BIN` and
    /// `ETCDCTL36_BIN` name them.
    fn etcd36() -> Option<Peer> {
        let etcd = std::env::var("ETCD36_BIN").ok().filter(|v| !v.is_empty());
        let etcdctl = std::env::var("ETCDCTL36_BIN").ok().filter(|v| !v.is_empty());
        match (etcd, etcdctl) {
            (Some(etcd), Some(etcdctl)) => Some(Peer {
                version: "3.6",
                etcd,
                etcdctl,
            }),
            _ => {
                println!(
                    "etcd 3.6 not compared: ETCD36_BIN and ETCDCTL36_BIN are not both set \
                     (scripts/go-peers.sh --print-env builds and names them)"
                );
                None
            }
        }
    }

    /// Whether this etcdctl has the flags etcdctl 3.5 added (`get --count-only`, ...).
    fn etcdctl_35(&self) -> bool {
        self.version != "3.4"
    }
}

/// One command's result, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    label: String,
    ok: bool,
    stdout: String,
    stderr: String,
}

/// One cluster as the scenario sees it.
struct Target {
    name: &'static str,
    /// The etcdctl binary every command runs.
    etcdctl: String,
    endpoints: Vec<String>,
    /// Raw value -> placeholder, for values that legitimately differ (IDs, addresses).
    tokens: BTreeMap<String, String>,
    /// Placeholder -> raw value, to expand placeholders in arguments.
    vars: BTreeMap<String, String>,
    leases: usize,
    steps: Vec<Step>,
    dir: tempfile::TempDir,
}

fn etcdctl_raw(
    etcdctl: &str,
    endpoints: &[String],
    args: &[String],
    stdin: Option<&str>,
) -> (bool, String, String) {
    let mut child = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{etcdctl} is required (Debian etcd-client, or scripts/go-peers.sh): {e}")
        });
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

impl Target {
    fn new(name: &'static str, etcdctl: &str, endpoints: Vec<String>, peers: &[u16]) -> Target {
        let mut t = Target {
            name,
            etcdctl: etcdctl.to_string(),
            endpoints,
            tokens: BTreeMap::new(),
            vars: BTreeMap::new(),
            leases: 0,
            steps: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        for (i, endpoint) in t.endpoints.clone().into_iter().enumerate() {
            t.learn(&endpoint, &format!("<client:m{i}>"));
        }
        for (i, port) in peers.iter().enumerate() {
            t.learn(&format!("127.0.0.1:{port}"), &format!("<peer:m{i}>"));
        }
        // IDs from each member's response header (member i is named mi in both clusters).
        for i in 0..t.endpoints.len() {
            let (ok, out, err) = etcdctl_raw(
                &t.etcdctl,
                &t.endpoints[i..=i],
                &["get".into(), "probe".into(), "-w".into(), "json".into()],
                None,
            );
            assert!(ok, "{name}: {out}{err}");
            let header = &serde_json::from_str::<Value>(&out).unwrap()["header"];
            t.learn_id(header["cluster_id"].as_u64().unwrap(), "<cluster-id>");
            t.learn_id(header["member_id"].as_u64().unwrap(), &format!("<id:m{i}>"));
        }
        t
    }

    fn learn(&mut self, raw: &str, placeholder: &str) {
        self.tokens.insert(raw.to_string(), placeholder.to_string());
        self.vars.insert(placeholder.to_string(), raw.to_string());
    }

    /// An ID appears in hex (etcdctl's tables and arguments) and in decimal (JSON).
    fn learn_id(&mut self, id: u64, placeholder: &str) {
        self.tokens.insert(format!("{id}"), placeholder.to_string());
        self.tokens.insert(format!("{id:x}"), placeholder.to_string());
        self.tokens.insert(format!("{id:016x}"), placeholder.to_string());
        self.vars.insert(placeholder.to_string(), format!("{id:x}"));
    }

    fn expand(&self, arg: &str) -> String {
        let mut arg = arg.to_string();
        for (placeholder, raw) in &self.vars {
            arg = arg.replace(placeholder, raw);
        }
        arg
    }

    /// Runs etcdctl against member `at`'s endpoint (or all of them) and records the
    /// normalised result; answers the raw stdout.
    fn run_at(
        &mut self,
        at: Option<usize>,
        label: &str,
        args: &[&str],
        stdin: Option<&str>,
        sort: bool,
    ) -> String {
        let args: Vec<String> = args.iter().map(|a| self.expand(a)).collect();
        let endpoints = match at {
            Some(i) => vec![self.endpoints[i].clone()],
            None => self.endpoints.clone(),
        };
        let (ok, out, err) = etcdctl_raw(&self.etcdctl, &endpoints, &args, stdin);
        let mut stdout = self.normalise(&out);
        if sort {
            let mut lines: Vec<&str> = stdout.lines().collect();
            lines.sort();
            stdout = lines.join("\n");
        }
        let mut stderr: Vec<String> = err
            .lines()
            .filter(|l| !l.starts_with("{\"level\":"))
            .map(|l| self.normalise(l))
            .collect();
        if sort {
            stderr.sort();
        }
        let stderr = stderr.join("\n");
        self.steps.push(Step {
            label: label.to_string(),
            ok,
            stdout,
            stderr,
        });
        out
    }

    fn run(&mut self, label: &str, args: &[&str]) -> String {
        self.run_at(Some(0), label, args, None, false)
    }

    fn run_stdin(&mut self, label: &str, args: &[&str], stdin: &str) -> String {
        self.run_at(Some(0), label, args, Some(stdin), false)
    }

    /// The store's revision (not recorded).
    fn revision(&self) -> i64 {
        let (ok, out, err) = etcdctl_raw(
            &self.etcdctl,
            &self.endpoints[..1],
            &["get".into(), "x".into(), "-w".into(), "json".into()],
            None,
        );
        assert!(ok, "{out}{err}");
        serde_json::from_str::<Value>(&out).unwrap()["header"]["revision"]
            .as_i64()
            .unwrap()
    }

    /// `lease grant`, learning the server-chosen ID as `<lease-N>`.
    fn grant(&mut self, label: &str, ttl: &str) -> String {
        let out = self.run_at(Some(0), label, &["lease", "grant", ttl], None, false);
        let id = out
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("{}: grant: {out}", self.name))
            .to_string();
        self.leases += 1;
        let placeholder = format!("<lease-{}>", self.leases);
        self.learn_id(u64::from_str_radix(&id, 16).unwrap(), &placeholder);
        // The step was normalised before the ID was known: normalise it again.
        let last = self.steps.last_mut().unwrap();
        last.stdout = last.stdout.replace(&id, &placeholder);
        placeholder
    }

    /// `etcdctl watch ARGS` while `writes` run; stops when its output holds `until`
    /// (bounded) and records what it printed.
    fn watch(&mut self, label: &str, args: &[&str], writes: &[&[&str]], until: &str) {
        let path = self.dir.path().join(format!("watch-{}.out", self.steps.len()));
        let file = std::fs::File::create(&path).unwrap();
        let args: Vec<String> = args.iter().map(|a| self.expand(a)).collect();
        let mut child = Command::new(&self.etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints[0]))
            .arg("watch")
            .args(&args)
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for (i, write) in writes.iter().enumerate() {
            self.run(&format!("{label}: write {i}"), write);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut out = String::new();
        while Instant::now() < deadline {
            out.clear();
            std::fs::File::open(&path)
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            if out.contains(until) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // A little longer: nothing may follow the last expected event.
        std::thread::sleep(Duration::from_millis(500));
        let _ = child.kill();
        let _ = child.wait();
        out.clear();
        std::fs::File::open(&path)
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let stdout = self.normalise(&out);
        self.steps.push(Step {
            label: label.to_string(),
            ok: true,
            stdout,
            stderr: String::new(),
        });
    }

    /// Replaces what legitimately differs between the two clusters.
    fn normalise(&self, text: &str) -> String {
        let trimmed = text.trim_start();
        let text = if trimmed.starts_with('{') || trimmed.starts_with('[') {
            let docs: Result<Vec<Value>, _> = serde_json::Deserializer::from_str(text).into_iter().collect();
            match docs {
                Ok(docs) => docs
                    .into_iter()
                    .map(|mut doc| {
                        normalise_json(&mut doc);
                        doc.to_string()
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                Err(_) => text.to_string(),
            }
        } else {
            text.to_string()
        };
        let rules: &[(&str, &str)] = &[
            // Timings.
            (r"took = [0-9.]+[a-zµ]*s", "took = <duration>"),
            (r"remaining\(-?[0-9]+s\)", "remaining(<seconds>s)"),
            (r#""RaftTerm" : [0-9]+"#, r#""RaftTerm" : <term>"#),
            // etcdctl 3.6's `endpoint status` rows: version, DB sizes (total, in use, the
            // percentage not in use), raft term, index, applied index.
            (
                r"(?m)^(\S+), (\S+), [^, ]+, ([^,]*), [0-9.]+ [kMG]?B, [0-9.]+ [kMG]?B, [0-9]+%, ([^,]*), (true|false), (true|false), [0-9]+, [0-9]+, [0-9]+, ",
                "$1, $2, <version>, $3, <db-size>, <db-size>, <db-free>, $4, $5, $6, <term>, <index>, <index>, ",
            ),
            // etcdctl 3.6's `snapshot save` names the server's version.
            (r"(?m)^Server version \S+$", "Server version <version>"),
            // `endpoint status` rows (etcdctl 3.4): version, DB size, raft term, index, applied index.
            (
                r"(?m)^(\S+), (\S+), [^, ]+, [0-9.]+ [kMG]?B, (true|false), (true|false), [0-9]+, [0-9]+, [0-9]+, ",
                "$1, $2, <version>, <db-size>, $3, $4, <term>, <index>, <index>, ",
            ),
        ];
        let mut text = text;
        for (pattern, replacement) in rules {
            text = Regex::new(pattern)
                .unwrap()
                .replace_all(&text, *replacement)
                .into_owned();
        }
        // Paths (each cluster writes into its own temporary directory).
        for (raw, placeholder) in &self.tokens {
            if raw.starts_with('/') {
                text = text.replace(raw.as_str(), placeholder);
            }
        }
        let address = Regex::new(r"127\.0\.0\.1:[0-9]+").unwrap();
        let text = address.replace_all(&text, |c: &regex::Captures| {
            self.tokens
                .get(&c[0])
                .cloned()
                .unwrap_or_else(|| c[0].to_string())
        });
        // etcdctl prints IDs with `%16x`: an ID with a leading zero digit is padded with
        // spaces. A known ID takes its padding with it (the IDs differ, so may their
        // widths); one separating space is always kept.
        let id = Regex::new(r"( *)\b([0-9a-f]{6,20})\b").unwrap();
        let text = id.replace_all(&text, |c: &regex::Captures| {
            let (spaces, hex) = (&c[1], &c[2]);
            match self.tokens.get(hex) {
                Some(placeholder) => {
                    let pad = 16usize.saturating_sub(hex.len());
                    let keep = if spaces.len() > pad {
                        spaces.len() - pad
                    } else {
                        spaces.len()
                    };
                    format!("{}{placeholder}", &spaces[..keep])
                }
                None => c[0].to_string(),
            }
        });
        // A lease's attached keys come from a map in etcd (3.6 prints them in varying
        // order): compared sorted.
        let text = Regex::new(r"attached keys\(\[([^\]]*)\]\)")
            .unwrap()
            .replace_all(&text, |c: &regex::Captures| {
                let mut keys: Vec<&str> = c[1].split(' ').collect();
                keys.sort();
                format!("attached keys([{}])", keys.join(" "))
            })
            .into_owned();
        // `member add` prints the members in the order of the member list, which is by
        // (random) member ID: compared sorted.
        Regex::new(r#"ETCD_INITIAL_CLUSTER="([^"]*)""#)
            .unwrap()
            .replace_all(&text, |c: &regex::Captures| {
                let mut members: Vec<&str> = c[1].split(',').collect();
                members.sort();
                format!("ETCD_INITIAL_CLUSTER=\"{}\"", members.join(","))
            })
            .into_owned()
    }
}

/// Fields of etcdctl's JSON that legitimately differ: raft terms and indexes, database
/// sizes, server versions, a lease's remaining TTL; member lists are ordered by the
/// (random) member ID, so they are compared ordered by name.
fn normalise_json(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let status = map.contains_key("dbSize");
            let has_granted = map.contains_key("granted-ttl");
            for (key, field) in map.iter_mut() {
                let placeholder = match key.as_str() {
                    "raft_term" | "raftTerm" => Some("<term>"),
                    "raft_index" | "raftIndex" | "raftAppliedIndex" => Some("<index>"),
                    "dbSize" | "dbSizeInUse" => Some("<db-size>"),
                    "version" if status => Some("<version>"),
                    "ttl" if has_granted => Some("<seconds>"),
                    _ => None,
                };
                match placeholder {
                    Some(p) => *field = Value::String(p.to_string()),
                    None => normalise_json(field),
                }
                if key == "members" {
                    if let Value::Array(members) = field {
                        members.sort_by_key(|m| m["name"].as_str().unwrap_or_default().to_string());
                    }
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_json),
        _ => {}
    }
}

/// The scenario: the same commands, in the same order, on either cluster; with an
/// etcdctl of 3.5 or later, also what its newer flags ask.
fn scenario(t: &mut Target, peer: &Peer) {
    // An empty store is at revision 1; the first write makes revision 2.
    t.run("get on the empty store", &["get", "foo", "-w", "json"]);
    for (key, value) in [
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("a", "11"),
        ("ab", "x"),
        ("abc", "y"),
        ("z", "26"),
    ] {
        t.run(&format!("put {key}"), &["put", key, value]);
    }
    t.run("put with prev-kv", &["put", "--prev-kv", "a", "12"]);
    t.run("put -w json", &["put", "a", "13", "-w", "json"]);
    t.run_at(
        Some(1),
        "put through member 1 -w json",
        &["put", "b", "21", "-w", "json"],
        None,
        false,
    );
    t.run("put ignore-value", &["put", "--ignore-value", "c"]);
    t.run(
        "put ignore-value on a missing key",
        &["put", "--ignore-value", "nope"],
    );

    t.run("get a key", &["get", "a"]);
    t.run("get -w json", &["get", "a", "-w", "json"]);
    t.run("get -w fields", &["get", "a", "-w", "fields"]);
    t.run("get --print-value-only", &["get", "a", "--print-value-only"]);
    t.run(
        "get --keys-only --prefix",
        &["get", "a", "--prefix", "--keys-only"],
    );
    t.run("get --prefix", &["get", "a", "--prefix"]);
    t.run("get --prefix -w json", &["get", "a", "--prefix", "-w", "json"]);
    t.run("get --from-key", &["get", "b", "--from-key"]);
    t.run("get a range", &["get", "a", "c"]);
    t.run("get everything", &["get", "", "--prefix"]);
    t.run("get --limit", &["get", "", "--prefix", "--limit=2", "-w", "json"]);
    t.run("get --limit with a range", &["get", "a", "z", "--limit=3"]);
    for target in ["KEY", "VERSION", "CREATE", "MODIFY", "VALUE"] {
        for order in ["ASCEND", "DESCEND"] {
            t.run(
                &format!("get sorted by {target} {order}"),
                &[
                    "get",
                    "",
                    "--prefix",
                    &format!("--sort-by={target}"),
                    &format!("--order={order}"),
                ],
            );
        }
        t.run(
            &format!("get sorted by {target} without order"),
            &["get", "", "--prefix", &format!("--sort-by={target}")],
        );
    }
    t.run(
        "get --order without a target",
        &["get", "", "--prefix", "--order=DESCEND", "--limit=3"],
    );
    for rev in ["1", "2", "3", "5", "8"] {
        t.run(
            &format!("get --rev={rev}"),
            &["get", "", "--prefix", &format!("--rev={rev}"), "-w", "json"],
        );
    }
    t.run("get --rev in the future", &["get", "a", "--rev=1000"]);
    t.run_at(
        Some(2),
        "get --consistency=s on member 2",
        &["get", "a", "--consistency=s"],
        None,
        false,
    );
    t.run_at(
        Some(1),
        "get --consistency=l on member 1",
        &["get", "a", "--consistency=l", "-w", "json"],
        None,
        false,
    );
    // etcdctl 3.4 has no --count-only nor the revision filters (3.5 added them): with
    // etcdctl 3.4 they, and the LEASE compare, are compared through the etcd-client
    // crate below; with a newer etcdctl, here too.
    if peer.etcdctl_35() {
        t.run(
            "get --count-only",
            &["get", "a", "--prefix", "--count-only", "-w", "json"],
        );
        t.run(
            "get --count-only --limit",
            &["get", "", "--prefix", "--count-only", "--limit=1", "-w", "json"],
        );
        t.run(
            "get --min-mod-rev --max-mod-rev",
            &["get", "", "--prefix", "--min-mod-rev=3", "--max-mod-rev=6"],
        );
        t.run(
            "get --min-create-rev --max-create-rev",
            &[
                "get",
                "",
                "--prefix",
                "--min-create-rev=3",
                "--max-create-rev=7",
                "-w",
                "json",
            ],
        );
        t.run(
            "put --ignore-lease on a key without a lease",
            &["put", "--ignore-lease", "z", "27"],
        );
    }
    t.run("get a missing key", &["get", "missing"]);
    t.run("get a missing key -w json", &["get", "missing", "-w", "json"]);

    t.run("del a missing key", &["del", "missing"]);
    t.run("del a key", &["del", "c"]);
    t.run("del --prev-kv", &["del", "--prev-kv", "b"]);
    t.run("del --prefix", &["del", "--prefix", "ab"]);
    t.run(
        "del --prefix -w json",
        &["del", "--prefix", "nothing-here", "-w", "json"],
    );
    t.run("put after deletes", &["put", "y", "25"]);
    t.run(
        "del --from-key --prev-kv",
        &["del", "--from-key", "y", "--prev-kv"],
    );
    t.run("del a range", &["del", "a", "b"]);
    t.run("get after deletes", &["get", "", "--prefix", "-w", "json"]);

    // Transactions: input on stdin, compares on value, version, create and mod.
    for (key, value) in [("t1", "v1"), ("t2", "v2"), ("t1", "v1b")] {
        t.run(&format!("put {key} for txn"), &["put", key, value]);
    }
    t.run_stdin(
        "txn: every compare holds, success branch",
        &["txn"],
        "value(\"t1\") = \"v1b\"\nversion(\"t1\") = \"2\"\ncreate(\"t2\") > \"0\"\nmod(\"t2\") < \"1000\"\n\nput t1 s1\nput t3 s3\nget t1\n\nput t1 f1\n\n",
    );
    t.run_stdin(
        "txn: a compare fails, failure branch",
        &["txn"],
        "value(\"t1\") = \"nope\"\n\nput t1 s2\n\ndel t2\nput t1 f2\nget t1\n\n",
    );
    t.run_stdin(
        "txn: version compare on a missing key",
        &["txn", "-w", "json"],
        "version(\"t-missing\") = \"0\"\n\nput t-missing now\n\n\n",
    );
    t.run_stdin(
        "txn: mod and create compares, -w json",
        &["txn", "-w", "json"],
        "mod(\"t1\") > \"1\"\ncreate(\"t1\") != \"0\"\n\nget t1\nget t --prefix\n\nput never x\n\n",
    );
    t.run_stdin(
        "txn interactive",
        &["txn", "-i"],
        "value(\"t1\") != \"f2\"\n\nput t1 no\n\nput t1 yes\ndel t3\n\n",
    );
    t.run_stdin("txn with a duplicate key", &["txn"], "\nput d 1\nput d 2\n\n\n");
    t.run_stdin(
        "txn with a bad compare",
        &["txn"],
        "nonsense(\"t1\") = \"x\"\n\n\n\n",
    );
    t.run("get after txns", &["get", "t", "--prefix", "-w", "json"]);

    // Watch: history from a revision, prev-kv, prefix; live events after it.
    let rev = t.revision();
    t.watch(
        "watch --rev=2 a prefix (history)",
        &["--rev=2", "--prefix", ""],
        &[],
        "t-missing\nnow\n",
    );
    t.watch(
        "watch --prev-kv t1 from 2",
        &["--rev=2", "--prev-kv", "t1"],
        &[],
        "t1\nyes\n",
    );
    let next = (rev + 1).to_string();
    t.watch(
        "watch live w/ --prefix --prev-kv",
        &[&format!("--rev={next}"), "--prefix", "--prev-kv", "w/"],
        &[
            &["put", "w/1", "a"],
            &["put", "w/2", "b"],
            &["put", "w/1", "c"],
            &["del", "w/", "--prefix"],
            &["put", "w/end", "end"],
        ],
        "w/end\nend\n",
    );
    t.watch(
        "watch -w json from the live start",
        &["-w", "json", &format!("--rev={next}"), "w/1"],
        &[],
        "\"Type\":1",
    );

    // Leases.
    let l1 = t.grant("lease grant 60", "60");
    let l2 = t.grant("lease grant 120", "120");
    t.run("put with a lease", &["put", "lk1", "v", &format!("--lease={l1}")]);
    t.run(
        "put with a second key on the lease",
        &["put", "lk2", "v", &format!("--lease={l1}")],
    );
    t.run(
        "put with an unknown lease",
        &["put", "lk3", "v", "--lease=1234abcd"],
    );
    t.run("lease keep-alive --once", &["lease", "keep-alive", "--once", &l1]);
    t.run("lease timetolive", &["lease", "timetolive", &l1]);
    t.run("lease timetolive --keys", &["lease", "timetolive", "--keys", &l1]);
    t.run(
        "lease timetolive --keys -w json",
        &["lease", "timetolive", "--keys", &l2, "-w", "json"],
    );
    t.run_at(Some(0), "lease list", &["lease", "list"], None, true);
    t.run("lease revoke", &["lease", "revoke", &l1]);
    t.run(
        "keys of a revoked lease are gone",
        &["get", "lk", "--prefix", "-w", "json"],
    );
    t.run(
        "lease timetolive of a revoked lease",
        &["lease", "timetolive", &l1],
    );
    t.run("lease revoke again", &["lease", "revoke", &l1]);
    t.run(
        "lease keep-alive --once of a revoked lease",
        &["lease", "keep-alive", "--once", &l1],
    );
    t.run("lease revoke the second", &["lease", "revoke", &l2]);
    t.run("lease list when empty", &["lease", "list"]);

    // Compaction, and reads below it.
    t.run("compaction", &["compaction", "5"]);
    t.run(
        "get at the compacted revision",
        &["get", "", "--prefix", "--rev=5", "-w", "json"],
    );
    t.run("get below the compacted revision", &["get", "a", "--rev=4"]);
    t.run("compaction at the same revision", &["compaction", "5"]);
    t.run("compaction below", &["compaction", "3"]);
    t.run("compaction in the future", &["compaction", "100000"]);
    t.run("compaction --physical", &["compaction", "--physical", "7"]);
    t.watch(
        "watch from below the compaction",
        &["--rev=3", "a"],
        &[],
        "compacted",
    );
    // The cancel's header: etcd's carries no revision.
    t.watch(
        "watch from below the compaction -w json",
        &["--rev=3", "a", "-w", "json"],
        &[],
        "CompactRevision",
    );
}

impl Target {
    /// The leader's member index, from `endpoint status` (not recorded).
    fn leader(&self) -> Option<usize> {
        let mut args: Vec<String> = vec!["endpoint".into(), "status".into(), "-w".into(), "json".into()];
        args.push("--command-timeout=5s".into());
        let (ok, out, _) = etcdctl_raw(&self.etcdctl, &self.endpoints, &args, None);
        if !ok {
            return None;
        }
        let statuses: Value = serde_json::from_str(&out).ok()?;
        let leader = statuses.as_array()?.first()?["Status"]["leader"].as_u64()?;
        let placeholder = self.tokens.get(&leader.to_string())?;
        placeholder.strip_prefix("<id:m")?.strip_suffix('>')?.parse().ok()
    }

    /// Moves leadership to member `i` (not recorded: which member won the first
    /// election is chance), and waits until every member agrees.
    fn lead_with(&mut self, i: usize) {
        // Generous: a transfer on a busy shared machine may time out and be retried.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        while self.leader() != Some(i) {
            assert!(
                Instant::now() < deadline,
                "{}: m{i} never became leader; last move-leader: {last}",
                self.name
            );
            let target = self.vars[&format!("<id:m{i}>")].clone();
            let (_, out, err) = etcdctl_raw(
                &self.etcdctl,
                &self.endpoints,
                &["move-leader".into(), target],
                None,
            );
            last = format!("{out}{err}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Users, roles and permissions through etcdctl (last: it enables auth, and disables it
/// again at the end): the Auth service's answers and errors, and what a user may do.
fn auth_scenario(t: &mut Target) {
    t.run("user add root", &["user", "add", "root:rootpw"]);
    t.run("user add alice", &["user", "add", "alice:alicepw"]);
    t.run("user add alice again", &["user", "add", "alice:other"]);
    t.run("user list", &["user", "list"]);
    t.run("user get root before any role", &["user", "get", "root"]);
    t.run("role add app", &["role", "add", "app"]);
    t.run("role add app again", &["role", "add", "app"]);
    t.run(
        "role grant-permission --prefix",
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix=true",
        ],
    );
    t.run(
        "role grant-permission a range",
        &["role", "grant-permission", "app", "read", "r1", "r5"],
    );
    t.run(
        "role grant-permission to a missing role",
        &["role", "grant-permission", "nope", "read", "k"],
    );
    t.run("role get app", &["role", "get", "app"]);
    t.run("role get a missing role", &["role", "get", "nope"]);
    t.run("role list", &["role", "list"]);
    t.run("user grant-role", &["user", "grant-role", "alice", "app"]);
    t.run(
        "user grant-role a missing role",
        &["user", "grant-role", "alice", "nope"],
    );
    t.run("user get alice", &["user", "get", "alice"]);
    t.run("user get --detail", &["user", "get", "alice", "--detail"]);
    t.run("user get a missing user", &["user", "get", "nobody"]);
    t.run(
        "user revoke-role not granted",
        &["user", "revoke-role", "alice", "root"],
    );
    t.run("auth enable", &["auth", "enable"]);
    t.run("auth enable again", &["--user=root:rootpw", "auth", "enable"]);
    let alice = "--user=alice:alicepw";
    t.run("user: put inside her prefix", &[alice, "put", "app/x", "1"]);
    t.run("user: get inside her prefix", &[alice, "get", "app/x"]);
    t.run("user: put outside", &[alice, "put", "other", "1"]);
    t.run("user: get in her read range", &[alice, "get", "r2"]);
    t.run("user: put in her read range", &[alice, "put", "r2", "v"]);
    t.run("user: get a range past hers", &[alice, "get", "r1", "r6"]);
    t.run("user: delete outside", &[alice, "del", "other"]);
    t.run_at(
        Some(1),
        "user: put through member 1",
        &[alice, "put", "app/y", "2"],
        None,
        false,
    );
    t.run_stdin(
        "user: txn with a denied branch",
        &[alice, "txn"],
        "value(\"app/x\") = \"1\"\n\nput app/z 3\n\nput other 3\n\n",
    );
    t.run_stdin(
        "user: txn inside her prefix",
        &[alice, "txn"],
        "value(\"app/x\") = \"1\"\n\nput app/z 3\n\nput app/w 4\n\n",
    );
    t.run("user: wrong password", &["--user=alice:wrong", "get", "app/x"]);
    t.run("no user with auth enabled", &["get", "app/x"]);
    t.run("user: user list is root's", &[alice, "user", "list"]);
    t.run("user: compaction", &[alice, "compaction", "1"]);
    t.run(
        "root: revoke root from root",
        &["--user=root:rootpw", "user", "revoke-role", "root", "root"],
    );
    t.run(
        "root: delete root",
        &["--user=root:rootpw", "user", "delete", "root"],
    );
    t.run(
        "root: revoke-permission",
        &[
            "--user=root:rootpw",
            "role",
            "revoke-permission",
            "app",
            "app/",
            "--prefix=true",
        ],
    );
    t.run(
        "root: revoke a permission not granted",
        &[
            "--user=root:rootpw",
            "role",
            "revoke-permission",
            "app",
            "app/",
            "--prefix=true",
        ],
    );
    t.run("user: after revoke", &[alice, "get", "app/x"]);
    t.run_stdin(
        "root: change password",
        &[
            "--user=root:rootpw",
            "user",
            "passwd",
            "alice",
            "--interactive=false",
        ],
        "newpw\n",
    );
    t.run("user: the old password", &[alice, "get", "app/x"]);
    t.run(
        "root: get everything",
        &["--user=root:rootpw", "get", "", "--prefix"],
    );
    t.run("root: auth disable", &["--user=root:rootpw", "auth", "disable"]);
    t.run("after disable", &["get", "app/x"]);
    t.run("user delete", &["user", "delete", "alice"]);
    t.run("role delete", &["role", "delete", "app"]);
    t.run("user delete missing", &["user", "delete", "alice"]);
    t.run("role list at the end", &["role", "list"]);
}

/// Cluster and Maintenance through etcdctl: membership, endpoint status, health and
/// hash, leadership transfer, snapshot save.
fn cluster_scenario(t: &mut Target) {
    t.lead_with(0);
    t.run_at(Some(0), "member list", &["member", "list"], None, true);
    t.run("member list -w json", &["member", "list", "-w", "json"]);
    t.run_at(None, "endpoint status", &["endpoint", "status"], None, false);
    t.run_at(
        None,
        "endpoint status -w json",
        &["endpoint", "status", "-w", "json"],
        None,
        false,
    );
    t.run_at(
        None,
        "endpoint status --cluster",
        &["endpoint", "status", "--cluster"],
        None,
        true,
    );
    t.run_at(None, "endpoint health", &["endpoint", "health"], None, true);
    t.run_at(
        None,
        "endpoint health --cluster",
        &["endpoint", "health", "--cluster"],
        None,
        true,
    );
    t.run_at(None, "endpoint hashkv", &["endpoint", "hashkv"], None, false);
    t.run_at(
        None,
        "endpoint hashkv -w json",
        &["endpoint", "hashkv", "-w", "json"],
        None,
        false,
    );
    t.run_at(None, "move-leader", &["move-leader", "<id:m1>"], None, false);
    t.lead_with(1);
    t.run_at(
        None,
        "endpoint status after move-leader",
        &["endpoint", "status"],
        None,
        false,
    );
    t.run_at(
        Some(0),
        "move-leader through a follower",
        &["move-leader", "<id:m2>"],
        None,
        false,
    );
    t.run_at(
        None,
        "move-leader to an unknown member",
        &["move-leader", "1234"],
        None,
        false,
    );

    // A learner that never starts: added, listed, refused promotion, updated, removed.
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = spare.local_addr().unwrap().port();
    drop(spare);
    t.learn(&format!("127.0.0.1:{port}"), "<peer:m3>");
    let out = t.run(
        "member add --learner",
        &[
            "member",
            "add",
            "m3",
            "--learner",
            &format!("--peer-urls=http://127.0.0.1:{port}"),
        ],
    );
    let id = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("{}: member add: {out}", t.name))
        .to_string();
    if let Ok(raw) = u64::from_str_radix(&id, 16) {
        t.learn_id(raw, "<id:m3>");
        // The step was normalised before the ID was known: normalise it again (from the
        // raw output, so that the `%16x` padding of an ID with a leading zero digit is
        // taken with it, as for every other ID).
        let normalised = t.normalise(&out);
        t.steps.last_mut().unwrap().stdout = normalised;
    }
    t.run_at(
        Some(0),
        "member list with a learner",
        &["member", "list"],
        None,
        true,
    );
    t.run(
        "member promote a learner that is not caught up",
        &["member", "promote", "<id:m3>"],
    );
    t.run("member promote a voter", &["member", "promote", "<id:m1>"]);
    t.run(
        "member add a second learner",
        &[
            "member",
            "add",
            "m4",
            "--learner",
            "--peer-urls=http://127.0.0.1:1",
        ],
    );
    t.run(
        "member update",
        &[
            "member",
            "update",
            "<id:m3>",
            &format!("--peer-urls=http://127.0.0.1:{port},http://localhost:{port}"),
        ],
    );
    t.run("member remove", &["member", "remove", "<id:m3>"]);
    t.run("member remove again", &["member", "remove", "<id:m3>"]);
    t.run_at(
        Some(0),
        "member list after remove",
        &["member", "list"],
        None,
        true,
    );

    let path = t.dir.path().join("backup.db");
    let path = path.to_str().unwrap().to_string();
    t.learn(&path, "<backup-path>");
    t.run("snapshot save", &["snapshot", "save", &path]);
    let saved = std::fs::metadata(&path).map(|m| m.len() > 0).unwrap_or(false);
    t.steps.push(Step {
        label: "snapshot file written".into(),
        ok: saved,
        stdout: String::new(),
        stderr: String::new(),
    });
}

fn kuberaft_target(cluster: &ProcCluster, etcdctl: &str) -> Target {
    let peers: Vec<u16> = cluster.members.iter().map(|m| m.peer).collect();
    Target::new("kuberaft", etcdctl, cluster.endpoints(), &peers)
}

fn wait_ready(etcdctl: &str, endpoints: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for endpoint in endpoints {
        loop {
            let (ok, out, err) = etcdctl_raw(
                etcdctl,
                std::slice::from_ref(endpoint),
                &["get".into(), "probe".into()],
                None,
            );
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "{endpoint} not ready: {out}{err}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn etcdctl_gives_the_same_answers_from_kuberaft_as_from_etcd() {
    compare_etcdctl(&Peer::etcd34());
}

#[test]
fn etcdctl_3_6_gives_the_same_answers_from_kuberaft_as_from_etcd_3_6() {
    if let Some(peer) = Peer::etcd36() {
        compare_etcdctl(&peer);
    }
}

/// Both scenarios with `peer`'s etcdctl, against a cluster of `peer`'s etcd and a
/// kuberaft cluster; every difference explained by [`KNOWN_DIFFERENCES`].
fn compare_etcdctl(peer: &Peer) {
    let etcd = EtcdCluster::start_bin(&peer.etcd, &peer.etcdctl, 3);
    let kuberaft = ProcCluster::start(3, &[]);
    etcd.wait_ready();
    kuberaft.wait_for_leader(&[0, 1, 2]);
    wait_ready(&peer.etcdctl, &kuberaft.endpoints());

    let mut reference = Target::new("etcd", &peer.etcdctl, etcd.endpoints(), &etcd.peers);
    let mut ours = kuberaft_target(&kuberaft, &peer.etcdctl);
    scenario(&mut reference, peer);
    scenario(&mut ours, peer);
    cluster_scenario(&mut reference);
    cluster_scenario(&mut ours);
    auth_scenario(&mut reference);
    auth_scenario(&mut ours);

    assert_eq!(reference.steps.len(), ours.steps.len());
    let mut unexplained = Vec::new();
    let mut explained = Vec::new();
    for (theirs, mine) in reference.steps.iter().zip(&ours.steps) {
        assert_eq!(theirs.label, mine.label);
        if theirs == mine {
            continue;
        }
        let known = KNOWN_DIFFERENCES.iter().find(|k| {
            if k.label != mine.label || !k.peers.contains(&peer.version) {
                return false;
            }
            if !k.kuberaft_fragment.is_empty() {
                return mine.stdout.contains(k.kuberaft_fragment)
                    || mine.stderr.contains(k.kuberaft_fragment);
            }
            let re = Regex::new(k.pattern).unwrap();
            let apply = |s: &Step| Step {
                stdout: re.replace_all(&s.stdout, k.replacement).into_owned(),
                stderr: re.replace_all(&s.stderr, k.replacement).into_owned(),
                ..s.clone()
            };
            apply(theirs) == apply(mine)
        });
        let report = format!(
            "--- {}\n  etcd {}: ok={} stdout={:?} stderr={:?}\n  kuberaft: ok={} stdout={:?} stderr={:?}",
            mine.label,
            peer.version,
            theirs.ok,
            theirs.stdout,
            theirs.stderr,
            mine.ok,
            mine.stdout,
            mine.stderr
        );
        match known {
            Some(k) => explained.push((k.label.to_string(), format!("{report}\n  known: {}", k.reason))),
            None => unexplained.push(report),
        }
    }
    for (_, report) in &explained {
        println!("{report}");
    }
    let stale: Vec<&str> = KNOWN_DIFFERENCES
        .iter()
        .filter(|k| k.peers.contains(&peer.version))
        .map(|k| k.label)
        .filter(|label| !explained.iter().any(|(l, _)| l == label))
        .collect();
    assert!(
        unexplained.is_empty() && stale.is_empty(),
        "{} unexplained difference(s) from etcd {}:\n{}\nlisted differences that no longer occur: {stale:?}",
        unexplained.len(),
        peer.version,
        unexplained.join("\n")
    );
    // The comparison compared something: every step ran on both, most succeeded.
    assert!(
        ours.steps.iter().filter(|s| s.ok).count() > 80,
        "{:?}",
        ours.steps
    );
}

/// Client-side comparison: steps whose responses legitimately differ: the step's
/// label, the etcd releases with which it occurs, the reason, and a fragment
/// kuberaft's normalised response must contain.
const KNOWN_CLIENT_DIFFERENCES: &[(&str, &[&str], &str, &str)] = &[
    (
        "status of the leader",
        &["3.6"],
        STATUS_36_REASON,
        r#"storage_version: "", db_size_quota: 2147483648, downgrade_info: Some(DowngradeInfo { enabled: false"#,
    ),
    (
        "status of the leader",
        &["3.4"],
        "etcd 3.4 predates Status's db_size_quota and downgrade_info (added in 3.5 and 3.6) and sends \
         neither; kuberaft fills them as etcd 3.6 does (the quota, an empty downgrade state)",
        r#"db_size_quota: 2147483648, downgrade_info: Some(DowngradeInfo { enabled: false"#,
    ),
    (
        "alarm list",
        &["3.4"],
        "etcd 3.4 answers Maintenance.Alarm without a response header; 3.5 and 3.6 fill it as for \
         every other response, and so does kuberaft",
        "header: Some(ResponseHeader",
    ),
];

/// One cluster as the etcd-client scenario sees it: a client of member 0 and the
/// record of every response, normalised.
struct ClientTarget {
    client: etcd_client::Client,
    tokens: BTreeMap<String, String>,
    steps: Vec<(String, String)>,
}

impl ClientTarget {
    async fn new(endpoints: &[String], peers: &[u16]) -> ClientTarget {
        let options = etcd_client::ConnectOptions::new()
            .with_timeout(Duration::from_secs(10))
            .with_connect_timeout(Duration::from_secs(2));
        let mut tokens = BTreeMap::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            let mut c = etcd_client::Client::connect([endpoint.clone()], Some(options.clone()))
                .await
                .unwrap();
            let header = c.get("probe", None).await.unwrap().header().cloned().unwrap();
            tokens.insert(header.cluster_id().to_string(), "<cluster-id>".to_string());
            tokens.insert(header.member_id().to_string(), format!("<id:m{i}>"));
        }
        for (i, endpoint) in endpoints.iter().enumerate() {
            tokens.insert(endpoint.clone(), format!("<client:m{i}>"));
        }
        for (i, port) in peers.iter().enumerate() {
            tokens.insert(format!("127.0.0.1:{port}"), format!("<peer:m{i}>"));
        }
        let client = etcd_client::Client::connect([endpoints[0].clone()], Some(options))
            .await
            .unwrap();
        ClientTarget {
            client,
            tokens,
            steps: Vec::new(),
        }
    }

    /// Terms legitimately differ; IDs are mapped to their member; a lease's remaining
    /// TTL is a timing. Every other field of the response is compared.
    fn normalise(&self, text: &str) -> String {
        let text = Regex::new(r"raft_term: [0-9]+")
            .unwrap()
            .replace_all(text, "raft_term: <term>")
            .into_owned();
        let text = Regex::new(r"ttl: [0-9]+, granted_ttl")
            .unwrap()
            .replace_all(&text, "ttl: <seconds>, granted_ttl")
            .into_owned();
        // What legitimately differs in Maintenance.Status: the server's version,
        // database size and raft indexes.
        let text = Regex::new(r#"version: "[^"]*", db_size: [0-9]+"#)
            .unwrap()
            .replace_all(&text, r#"version: "<version>", db_size: <db-size>"#)
            .into_owned();
        let text = Regex::new(r"(raft_index|raft_applied_index|db_size_in_use): [0-9]+")
            .unwrap()
            .replace_all(&text, "$1: <n>")
            .into_owned();
        let text = Regex::new(r"127\.0\.0\.1:[0-9]+")
            .unwrap()
            .replace_all(&text, |c: &regex::Captures| {
                self.tokens
                    .get(&c[0])
                    .cloned()
                    .unwrap_or_else(|| c[0].to_string())
            })
            .into_owned();
        Regex::new(r"\b[0-9]{6,20}\b")
            .unwrap()
            .replace_all(&text, |c: &regex::Captures| {
                self.tokens
                    .get(&c[0])
                    .cloned()
                    .unwrap_or_else(|| c[0].to_string())
            })
            .into_owned()
    }

    fn record<T: std::fmt::Debug>(
        &mut self,
        label: &str,
        result: Result<T, etcd_client::Error>,
    ) -> Option<T> {
        let (text, value) = match result {
            Ok(value) => (format!("{value:?}"), Some(value)),
            Err(etcd_client::Error::GRpcStatus(status)) => {
                (format!("error {:?}: {}", status.code(), status.message()), None)
            }
            Err(other) => (format!("error: {other}"), None),
        };
        let text = self.normalise(&text);
        self.steps.push((label.to_string(), text));
        value
    }

    /// Opens a watch, reads until `events` events arrived or the stream was canceled
    /// (bounded), and records the created response, every event and the cancel.
    async fn watch(&mut self, label: &str, key: &str, options: etcd_client::WatchOptions, events: usize) {
        let mut stream = match self.client.watch(key, Some(options)).await {
            Ok(stream) => stream,
            Err(e) => {
                self.record::<()>(label, Err(e));
                return;
            }
        };
        let mut seen = Vec::new();
        let mut count = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while count < events && Instant::now() < deadline {
            let message = tokio::time::timeout(Duration::from_secs(2), stream.message()).await;
            let Ok(Ok(Some(response))) = message else {
                continue;
            };
            if response.created() {
                seen.push(format!(
                    "created canceled={} compact_revision={} reason={:?} revision={}",
                    response.canceled(),
                    response.compact_revision(),
                    response.cancel_reason(),
                    response.header().map_or(0, |h| h.revision())
                ));
            }
            if response.canceled() && !response.created() {
                seen.push(format!(
                    "canceled compact_revision={} reason={:?}",
                    response.compact_revision(),
                    response.cancel_reason()
                ));
                break;
            }
            for event in response.events() {
                count += 1;
                seen.push(format!(
                    "{:?} kv={:?} prev_kv={:?}",
                    event.event_type(),
                    event.kv(),
                    event.prev_kv()
                ));
            }
        }
        let text = self.normalise(&seen.join("\n"));
        self.steps.push((label.to_string(), text));
    }
}

async fn client_scenario(t: &mut ClientTarget) {
    use etcd_client::{
        Compare, CompareOp, DeleteOptions, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
        SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
    };
    let r = t.client.get("foo", None).await;
    t.record("get on the empty store", r);
    for (key, value) in [
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("a", "11"),
        ("ab", "x"),
        ("abc", "y"),
    ] {
        let r = t.client.put(key, value, None).await;
        t.record(&format!("put {key}"), r);
    }
    let r = t
        .client
        .put("a", "12", Some(PutOptions::new().with_prev_key()))
        .await;
    t.record("put with prev_kv", r);
    let r = t
        .client
        .put("missing", "", Some(PutOptions::new().with_ignore_value()))
        .await;
    t.record("put ignore_value on a missing key", r);

    let gets: Vec<(&str, &str, GetOptions)> = vec![
        ("get a key", "a", GetOptions::new()),
        ("get prefix", "a", GetOptions::new().with_prefix()),
        ("get from key", "ab", GetOptions::new().with_from_key()),
        ("get range", "a", GetOptions::new().with_range("b")),
        ("get all keys", "", GetOptions::new().with_all_keys()),
        ("get limit", "", GetOptions::new().with_all_keys().with_limit(2)),
        (
            "get revision 3",
            "",
            GetOptions::new().with_all_keys().with_revision(3),
        ),
        (
            "get revision 1",
            "",
            GetOptions::new().with_all_keys().with_revision(1),
        ),
        ("get future revision", "a", GetOptions::new().with_revision(1000)),
        (
            "get keys only",
            "a",
            GetOptions::new().with_prefix().with_keys_only(),
        ),
        (
            "get count only",
            "a",
            GetOptions::new().with_prefix().with_count_only(),
        ),
        (
            "get count only with limit",
            "",
            GetOptions::new().with_all_keys().with_count_only().with_limit(1),
        ),
        ("get serializable", "a", GetOptions::new().with_serializable()),
        (
            "get sorted by version descending, limit 2",
            "",
            GetOptions::new()
                .with_all_keys()
                .with_sort(SortTarget::Version, SortOrder::Descend)
                .with_limit(2),
        ),
        (
            "get sorted by create ascending",
            "",
            GetOptions::new()
                .with_all_keys()
                .with_sort(SortTarget::Create, SortOrder::Ascend),
        ),
        (
            "get sorted by value descending",
            "",
            GetOptions::new()
                .with_all_keys()
                .with_sort(SortTarget::Value, SortOrder::Descend),
        ),
        (
            "get sorted by mod, no order",
            "",
            GetOptions::new()
                .with_all_keys()
                .with_sort(SortTarget::Mod, SortOrder::None),
        ),
        (
            "get sorted by mod without order, limit 2",
            "",
            GetOptions::new()
                .with_all_keys()
                .with_sort(SortTarget::Mod, SortOrder::None)
                .with_limit(2),
        ),
        (
            "get sorted by key descending, limit 2",
            "",
            GetOptions::new()
                .with_all_keys()
                .with_sort(SortTarget::Key, SortOrder::Descend)
                .with_limit(2),
        ),
        (
            "get count only with a filter",
            "",
            GetOptions::new()
                .with_all_keys()
                .with_count_only()
                .with_min_mod_revision(5),
        ),
        (
            "get a filter with limit",
            "",
            GetOptions::new()
                .with_all_keys()
                .with_min_mod_revision(4)
                .with_limit(2),
        ),
        (
            "get min mod revision",
            "",
            GetOptions::new().with_all_keys().with_min_mod_revision(5),
        ),
        (
            "get max mod revision",
            "",
            GetOptions::new().with_all_keys().with_max_mod_revision(4),
        ),
        (
            "get min create revision",
            "",
            GetOptions::new().with_all_keys().with_min_create_revision(4),
        ),
        (
            "get max create revision with limit",
            "",
            GetOptions::new()
                .with_all_keys()
                .with_max_create_revision(3)
                .with_limit(1),
        ),
    ];
    for (label, key, options) in gets {
        let r = t.client.get(key, Some(options)).await;
        t.record(label, r);
    }

    let r = t.client.delete("missing", None).await;
    t.record("delete a missing key", r);
    let r = t
        .client
        .delete("c", Some(DeleteOptions::new().with_prev_key()))
        .await;
    t.record("delete with prev_kv", r);
    let r = t
        .client
        .delete("ab", Some(DeleteOptions::new().with_prefix().with_prev_key()))
        .await;
    t.record("delete a prefix with prev_kv", r);
    let r = t
        .client
        .delete("b", Some(DeleteOptions::new().with_from_key()))
        .await;
    t.record("delete from key", r);

    // Transactions: every compare target, both branches, nested reads, errors.
    for (key, value) in [("t1", "v1"), ("t2", "v2"), ("t1", "v1b")] {
        let r = t.client.put(key, value, None).await;
        t.record(&format!("put {key}"), r);
    }
    let r = t
        .client
        .txn(
            Txn::new()
                .when([
                    Compare::value("t1", CompareOp::Equal, "v1b"),
                    Compare::version("t1", CompareOp::Equal, 2),
                    Compare::create_revision("t2", CompareOp::Greater, 0),
                    Compare::mod_revision("t2", CompareOp::Less, 1000),
                    Compare::lease("t2", CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put("t1", "s1", Some(PutOptions::new().with_prev_key())),
                    TxnOp::put("t3", "s3", None),
                    TxnOp::get("t", Some(GetOptions::new().with_prefix())),
                    TxnOp::delete("t2", Some(DeleteOptions::new().with_prev_key())),
                ])
                .or_else([TxnOp::put("t1", "f1", None)]),
        )
        .await;
    t.record("txn success branch", r);
    let r = t
        .client
        .txn(
            Txn::new()
                .when([Compare::value("t1", CompareOp::NotEqual, "s1")])
                .and_then([TxnOp::put("t1", "no", None)])
                .or_else([
                    TxnOp::put("t1", "f2", None),
                    TxnOp::get("t1", None),
                    TxnOp::txn(Txn::new().and_then([TxnOp::put("t4", "nested", None)])),
                ]),
        )
        .await;
    t.record("txn failure branch with a nested txn", r);
    let r = t
        .client
        .txn(
            Txn::new()
                .when([Compare::version("t", CompareOp::Greater, 0).with_prefix()])
                .and_then([TxnOp::get(
                    "t",
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )]),
        )
        .await;
    t.record("txn with a range compare, read only", r);
    let r = t
        .client
        .txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
        .await;
    t.record("txn with a duplicate key", r);
    let many: Vec<TxnOp> = (0..129).map(|i| TxnOp::put(format!("k{i}"), "v", None)).collect();
    let r = t.client.txn(Txn::new().and_then(many)).await;
    t.record("txn with too many operations", r);
    let r = t
        .client
        .txn(Txn::new().and_then([TxnOp::get("a", Some(GetOptions::new().with_revision(1000)))]))
        .await;
    t.record("txn reading a future revision", r);

    // Watch: history, prev_kv, prefix, filters.
    t.watch(
        "watch all keys from revision 1",
        "",
        WatchOptions::new().with_all_keys().with_start_revision(1),
        16,
    )
    .await;
    t.watch(
        "watch t1 with prev_kv from revision 2",
        "t1",
        WatchOptions::new().with_start_revision(2).with_prev_key(),
        4,
    )
    .await;
    t.watch(
        "watch a prefix without puts",
        "a",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(1)
            .with_filters([etcd_client::WatchFilterType::NoPut]),
        2,
    )
    .await;

    // Leases: a client-chosen ID, a server-chosen one, attached keys, errors.
    let r = t
        .client
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x4242)))
        .await;
    t.record("lease grant with an id", r);
    let r = t
        .client
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x4242)))
        .await;
    t.record("lease grant with a taken id", r);
    let r = t
        .client
        .lease_grant(1, Some(LeaseGrantOptions::new().with_id(0x4343)))
        .await;
    t.record("lease grant below the minimum TTL", r);
    let r = t.client.lease_grant(9_000_000_001, None).await;
    t.record("lease grant with a too large TTL", r);
    let r = t
        .client
        .put("lk", "v", Some(PutOptions::new().with_lease(0x4242)))
        .await;
    t.record("put with a lease", r);
    let r = t
        .client
        .put("lk2", "v", Some(PutOptions::new().with_lease(0x9999)))
        .await;
    t.record("put with an unknown lease", r);
    let r = t
        .client
        .lease_time_to_live(0x4242, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await;
    t.record("lease time to live with keys", r);
    let r = t.client.lease_time_to_live(0x9999, None).await;
    t.record("lease time to live of an unknown lease", r);
    // etcd lists leases in its map's (random) order: compared sorted by ID.
    let r = t.client.leases().await.map(|list| {
        let mut ids: Vec<i64> = list.leases().iter().map(|l| l.id()).collect();
        ids.sort();
        (list.header().cloned(), ids)
    });
    t.record("lease list", r);
    if let Ok((mut keeper, mut answers)) = t.client.lease_keep_alive(0x4242).await {
        let sent = keeper.keep_alive().await;
        let answer = tokio::time::timeout(Duration::from_secs(10), answers.message()).await;
        t.record("lease keep alive", sent.map(|_| answer.map(|a| a.ok().flatten())));
    }
    let r = t.client.lease_revoke(0x4242).await;
    t.record("lease revoke", r);
    let r = t.client.get("lk", None).await;
    t.record("the lease's key is gone", r);
    let r = t.client.lease_revoke(0x4242).await;
    t.record("lease revoke again", r);
    let r = t.client.lease_revoke(0x4343).await;
    t.record("lease revoke the second", r);

    // Compaction and what it refuses.
    let r = t.client.compact(5, None).await;
    t.record("compact", r);
    let r = t.client.compact(5, None).await;
    t.record("compact at the same revision", r);
    let r = t.client.compact(100_000, None).await;
    t.record("compact in the future", r);
    let r = t
        .client
        .compact(6, Some(etcd_client::CompactionOptions::new().with_physical()))
        .await;
    t.record("compact physical", r);
    let r = t.client.get("a", Some(GetOptions::new().with_revision(5))).await;
    t.record("get below the compacted revision", r);
    let r = t
        .client
        .get("", Some(GetOptions::new().with_all_keys().with_revision(6)))
        .await;
    t.record("get at the compacted revision", r);
    t.watch(
        "watch from below the compacted revision",
        "a",
        WatchOptions::new().with_start_revision(3),
        1,
    )
    .await;
    t.watch(
        "watch from the compacted revision",
        "",
        WatchOptions::new().with_all_keys().with_start_revision(6),
        20,
    )
    .await;
}

/// The member ID of member `i` (from the learned tokens).
fn member_id(t: &ClientTarget, i: usize) -> u64 {
    let placeholder = format!("<id:m{i}>");
    t.tokens
        .iter()
        .find(|(_, p)| **p == placeholder)
        .map(|(raw, _)| raw.parse().unwrap())
        .unwrap()
}

/// Cluster and Maintenance through the crate. Leadership is first moved to member 0
/// (not recorded: which member won the first election is chance).
async fn client_cluster_scenario(t: &mut ClientTarget, etcdctl: &str, endpoints: &[String]) {
    let m0 = member_id(t, 0);
    let (m1, m2) = (member_id(t, 1), member_id(t, 2));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = t.client.status().await.ok().map(|s| s.leader());
        if status == Some(m0) {
            break;
        }
        assert!(Instant::now() < deadline, "m0 never became leader");
        let args = vec!["move-leader".to_string(), format!("{m0:x}")];
        tokio::task::block_in_place(|| etcdctl_raw(etcdctl, endpoints, &args, None));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // etcd lists members by (random) ID: compared in name order.
    let r = t.client.member_list().await.map(|list| {
        let mut members = list.members().to_vec();
        members.sort_by(|a, b| a.name().cmp(b.name()));
        (list.header().cloned(), members)
    });
    t.record("member list", r);
    let r = t.client.status().await;
    t.record("status of the leader", r);
    let r = t
        .client
        .alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None)
        .await;
    t.record("alarm list", r);
    // HashKV's hash digests each store's own encoding (see KNOWN_DIFFERENCES): the rest
    // of the response is compared.
    let r = t
        .client
        .hash_kv(0)
        .await
        .map(|h| (h.header().cloned(), h.compact_version()));
    t.record("hash kv", r);
    let r = t.client.hash_kv(100_000).await.map(|h| h.compact_version());
    t.record("hash kv at a future revision", r);
    let r = t.client.move_leader(m1).await;
    t.record("move leader", r);
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.client.status().await.ok().map(|s| s.leader()) != Some(m1) {
        assert!(Instant::now() < deadline, "m1 never became leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = t.client.move_leader(m2).await;
    t.record("move leader through a follower", r);

    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = spare.local_addr().unwrap().port();
    drop(spare);
    t.tokens
        .insert(format!("127.0.0.1:{port}"), "<peer:m3>".to_string());
    let url = format!("http://127.0.0.1:{port}");
    let added = t
        .client
        .member_add(
            [url.as_str()],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await;
    let new_id = added.as_ref().ok().and_then(|a| a.member().map(|m| m.id()));
    if let Some(id) = new_id {
        t.tokens.insert(id.to_string(), "<id:m3>".to_string());
    }
    let added = added.map(|a| {
        let mut members = a.member_list().to_vec();
        members.sort_by_key(|m| m.id().to_string());
        (a.header().cloned(), a.member().cloned(), members.len())
    });
    t.record("member add a learner", added);
    let id = new_id.unwrap_or(1);
    let r = t.client.member_promote(id).await;
    t.record("member promote a learner that is not caught up", r);
    let r = t.client.member_promote(m2).await;
    t.record("member promote a voter", r);
    let r = t
        .client
        .member_remove(id)
        .await
        .map(|r| (r.header().cloned(), r.members().len()));
    t.record("member remove", r);
    let r = t.client.member_remove(id).await;
    t.record("member remove again", r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_client_crate_gets_the_same_responses_from_kuberaft_as_from_etcd() {
    compare_client(&Peer::etcd34()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_client_crate_gets_the_same_responses_from_kuberaft_as_from_etcd_3_6() {
    if let Some(peer) = Peer::etcd36() {
        compare_client(&peer).await;
    }
}

/// The crate's scenarios against a cluster of `peer`'s etcd and a kuberaft cluster;
/// every difference explained by [`KNOWN_CLIENT_DIFFERENCES`].
async fn compare_client(peer: &Peer) {
    let etcd = EtcdCluster::start_bin(&peer.etcd, &peer.etcdctl, 3);
    let kuberaft = ProcCluster::start(3, &[]);
    tokio::task::block_in_place(|| {
        etcd.wait_ready();
        kuberaft.wait_for_leader(&[0, 1, 2]);
        wait_ready(&peer.etcdctl, &kuberaft.endpoints());
    });
    let mut reference = ClientTarget::new(&etcd.endpoints(), &etcd.peers).await;
    let peers: Vec<u16> = kuberaft.members.iter().map(|m| m.peer).collect();
    let mut ours = ClientTarget::new(&kuberaft.endpoints(), &peers).await;
    client_scenario(&mut reference).await;
    client_scenario(&mut ours).await;
    let etcd_endpoints = etcd.endpoints();
    let kuberaft_endpoints = kuberaft.endpoints();
    client_cluster_scenario(&mut reference, &peer.etcdctl, &etcd_endpoints).await;
    client_cluster_scenario(&mut ours, &peer.etcdctl, &kuberaft_endpoints).await;

    assert_eq!(reference.steps.len(), ours.steps.len());
    let mut unexplained = Vec::new();
    let mut explained = Vec::new();
    for ((label, theirs), (_, mine)) in reference.steps.iter().zip(&ours.steps) {
        if theirs == mine {
            continue;
        }
        let report = format!(
            "--- {label}\n  etcd {}: {theirs}\n  kuberaft: {mine}",
            peer.version
        );
        match KNOWN_CLIENT_DIFFERENCES.iter().find(|(l, peers, _, fragment)| {
            l == label && peers.contains(&peer.version) && mine.contains(fragment)
        }) {
            Some((_, _, reason, _)) => {
                explained.push((label.clone(), format!("{report}\n  known: {reason}")))
            }
            None => unexplained.push(report),
        }
    }
    for (_, report) in &explained {
        println!("{report}");
    }
    let stale: Vec<&str> = KNOWN_CLIENT_DIFFERENCES
        .iter()
        .filter(|(_, peers, _, _)| peers.contains(&peer.version))
        .map(|(label, _, _, _)| *label)
        .filter(|label| !explained.iter().any(|(l, _)| l == label))
        .collect();
    assert!(
        unexplained.is_empty() && stale.is_empty(),
        "{} unexplained difference(s) from etcd {}:\n{}\nlisted differences that no longer occur: {stale:?}",
        unexplained.len(),
        peer.version,
        unexplained.join("\n")
    );
    assert!(
        ours.steps
            .iter()
            .filter(|(_, text)| !text.starts_with("error"))
            .count()
            > 40,
        "{:?}",
        ours.steps
    );
}
