//! A real Kubernetes API server (kube-apiserver, built from its official Go modules by
//! `scripts/go-peers.sh`) on a 3-member kuberaft cluster, driven by kubectl, side by side
//! with the same scenario on a 3-member etcd 3.6 cluster:
//!
//! - start-up (the apiserver's own bootstrap: RBAC roles, priority classes, flow control,
//!   system namespaces), namespaces, ConfigMaps, Secrets, a CustomResourceDefinition and
//!   objects of it, an Event (stored with a storage lease: `--event-ttl`);
//! - lists with paging (`limit`/`continue` through `kubectl get --raw`, and
//!   `kubectl get --chunk-size`), a watch resumed from a resourceVersion, updates (also one
//!   with a stale resourceVersion: Conflict), patches and deletes;
//! - a restart of the apiserver on the same data;
//! - kill -9 of the storage leader while kubectl creates objects: the apiserver serves
//!   again after the election, and every create it acknowledged is there;
//! - the apiserver's own compactor (`--etcd-compaction-interval=10s`) compacts the store.
//!
//! Three runs: etcd 3.6 (the reference), kuberaft over plain HTTP with the apiserver's
//! watch cache (the default configuration), and kuberaft over TLS with client
//! certificates and `--watch-cache=false` (every list, paged list and watch then goes to
//! kuberaft itself). Each run yields one line per step with what legitimately differs
//! (resourceVersions, UIDs, timings) left out; kuberaft's lines must equal etcd's, except
//! for [`KNOWN_DIFFERENCES`]. The apiserver's storage latency by operation
//! (`etcd_request_duration_seconds`) is printed for each run (bench/KUBE_APISERVER.md).
//!
//! Needs `KUBE_APISERVER_BIN` (scripts/go-peers.sh, `kubernetes`), kubectl (`KUBECTL`,
//! `.tools/bin/kubectl` from scripts/install-k8s-tools.sh, or on PATH) and etcd 3.6
//! (`ETCD36_BIN`, `ETCDCTL36_BIN`); without them the test says so and passes.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use support::{etcdctl_bin, free_ports, run_bounded, EtcdCluster, ProcCluster};

/// Steps whose results legitimately differ: the label, the reason, and a fragment
/// kuberaft's result must contain.
const KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[];

const TOKEN: &str = "kuberaft-admin-token";
const CONFIGMAPS: usize = 23;

struct Tools {
    apiserver: String,
    kubectl: String,
    etcd: String,
    etcdctl: String,
}

fn tools() -> Option<Tools> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let repo_kubectl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/kubectl");
    let kubectl = var("KUBECTL")
        .or_else(|| repo_kubectl.exists().then(|| repo_kubectl.display().to_string()))
        .or_else(|| {
            Command::new("kubectl")
                .args(["version", "--client"])
                .output()
                .is_ok_and(|o| o.status.success())
                .then(|| "kubectl".to_string())
        });
    match (
        var("KUBE_APISERVER_BIN"),
        kubectl,
        var("ETCD36_BIN"),
        var("ETCDCTL36_BIN"),
    ) {
        (Some(apiserver), Some(kubectl), Some(etcd), Some(etcdctl)) => Some(Tools {
            apiserver,
            kubectl,
            etcd,
            etcdctl,
        }),
        (apiserver, kubectl, etcd, _) => {
            println!(
                "SKIPPED: kube-apiserver on kuberaft needs KUBE_APISERVER_BIN (found: {}), kubectl \
                 (found: {}) and ETCD36_BIN/ETCDCTL36_BIN (found: {}). The Kubernetes binaries are \
                 built once per machine (~20 min) by `KUBERAFT_GO_PEERS=etcd,benchmark,kubernetes \
                 bash scripts/test.sh` or `bash scripts/go-peers.sh --only kubernetes`; then \
                 scripts/test.sh exports them; kubectl: `bash scripts/install-k8s-tools.sh`",
                apiserver.is_some(),
                kubectl.is_some(),
                etcd.is_some()
            );
            None
        }
    }
}

/// Client TLS material for the storage: a CA, a server certificate for the members, a
/// client certificate for the apiserver and etcdctl.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "kube-test-ca");
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        for (cn, stem) in [
            ("member", "server"),
            ("kube-apiserver", "client"),
            ("peer", "peer"),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params
                .subject_alt_names
                .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            std::fs::write(dir.path().join(format!("{stem}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// The storage under test.
enum Storage {
    Etcd(EtcdCluster),
    Kuberaft(ProcCluster),
}

impl Storage {
    fn running(&self) -> Vec<usize> {
        match self {
            Storage::Etcd(e) => (0..e.clients.len()).collect(),
            Storage::Kuberaft(k) => (0..k.members.len())
                .filter(|&i| k.members[i].child.is_some())
                .collect(),
        }
    }

    fn leader(&self, among: &[usize]) -> usize {
        match self {
            Storage::Etcd(e) => e.wait_for_leader(among),
            Storage::Kuberaft(k) => k.wait_for_leader(among),
        }
    }

    fn kill(&mut self, i: usize) {
        match self {
            Storage::Etcd(e) => e.kill(i),
            Storage::Kuberaft(k) => k.kill(i),
        }
    }

    fn endpoints(&self) -> Vec<String> {
        match self {
            Storage::Etcd(e) => e.endpoints(),
            Storage::Kuberaft(k) => k.endpoints(),
        }
    }

    /// kuberaft's compacted revision, as the first running member reports it.
    fn compacted_metric(&self, among: &[usize]) -> Option<u64> {
        match self {
            Storage::Etcd(_) => None,
            Storage::Kuberaft(k) => among
                .iter()
                .find_map(|&i| k.metric(i, "kuberaft_mvcc_compacted_revision")),
        }
    }
}

/// One kube-apiserver process on the storage's members.
struct Apiserver {
    bin: String,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
    kubectl: String,
    starts: usize,
}

impl Apiserver {
    fn new(tools: &Tools, dir: &Path, etcd_servers: &str, tls: Option<&Pki>, watch_cache: bool) -> Apiserver {
        let port = free_ports(1)[0];
        // The service account signing key (any key rcgen makes: ECDSA P-256).
        let sa = KeyPair::generate().unwrap();
        std::fs::write(dir.join("sa.key"), sa.serialize_pem()).unwrap();
        std::fs::write(dir.join("sa.pub"), sa.public_key_pem()).unwrap();
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{TOKEN},kuberaft-admin,1,\"system:masters\"\n"),
        )
        .unwrap();
        let d = |f: &str| dir.join(f).display().to_string();
        let mut args = vec![
            format!("--etcd-servers={etcd_servers}"),
            "--storage-backend=etcd3".into(),
            "--etcd-compaction-interval=10s".into(),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // The default reconciler refuses a loopback advertise address.
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", d("serving")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
        ];
        if let Some(pki) = tls {
            args.push(format!("--etcd-cafile={}", pki.file("ca.crt")));
            args.push(format!("--etcd-certfile={}", pki.file("client.crt")));
            args.push(format!("--etcd-keyfile={}", pki.file("client.key")));
        }
        if !watch_cache {
            args.push("--watch-cache=false".into());
        }
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"https://127.0.0.1:{port}\", \
             insecure-skip-tls-verify: true}}\nusers:\n- name: admin\n  user: {{token: {TOKEN}}}\ncontexts:\n\
             - name: c\n  context: {{cluster: c, user: admin}}\ncurrent-context: c\n"
        );
        std::fs::write(dir.join("kubeconfig"), kubeconfig).unwrap();
        Apiserver {
            bin: tools.apiserver.clone(),
            args,
            dir: dir.to_path_buf(),
            child: None,
            kubectl: tools.kubectl.clone(),
            starts: 0,
        }
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.dir.join(format!("apiserver-{start}.log"))
    }

    /// Starts it and waits (bounded) for /readyz.
    fn start(&mut self) -> Duration {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).unwrap();
        let began = Instant::now();
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(120));
        began.elapsed()
    }

    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (ok, _, _) = self.kubectl(&["get", "--raw", "/readyz"], Duration::from_secs(10));
            if ok {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("kube-apiserver exited ({status}):\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready within {within:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// SIGTERM, then kill -9 after 30 s.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| std::fs::read_to_string(self.log_path(i)).unwrap_or_default())
            .collect()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn kubectl(&self, args: &[&str], limit: Duration) -> (bool, String, String) {
        let mut command = Command::new(&self.kubectl);
        command
            .arg(format!("--kubeconfig={}", self.dir.join("kubeconfig").display()))
            .arg("--request-timeout=20s")
            .args(args);
        run_bounded(command, limit)
    }

    /// kubectl that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args, Duration::from_secs(60));
        assert!(ok, "kubectl {args:?} failed: {out}{err}");
        out
    }

    /// kubectl applying a manifest given on stdin... written to a file.
    fn apply(&self, name: &str, manifest: &str) -> (bool, String) {
        let path = self.dir.join(name);
        std::fs::write(&path, manifest).unwrap();
        let (ok, out, err) = self.kubectl(
            &["create", "-f", &path.display().to_string()],
            Duration::from_secs(60),
        );
        (ok, out + &err)
    }

    fn json(&self, path: &str) -> serde_json::Value {
        let out = self.ok(&["get", "--raw", path]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{path}: {e}: {out}"))
    }

    /// The storage request latency the apiserver measured: operation -> (seconds, count).
    fn storage_latency(&self) -> BTreeMap<String, (f64, u64)> {
        let metrics = self.ok(&["get", "--raw", "/metrics"]);
        let mut by_op: BTreeMap<String, (f64, u64)> = BTreeMap::new();
        for line in metrics.lines() {
            let (sum, rest) = if let Some(rest) = line.strip_prefix("etcd_request_duration_seconds_sum{") {
                (true, rest)
            } else if let Some(rest) = line.strip_prefix("etcd_request_duration_seconds_count{") {
                (false, rest)
            } else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let Some(op) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("operation=\""))
                .map(|o| o.trim_end_matches('"').to_string())
            else {
                continue;
            };
            let value: f64 = value.trim().parse().unwrap_or(0.0);
            let entry = by_op.entry(op).or_default();
            if sum {
                entry.0 += value;
            } else {
                entry.1 += value as u64;
            }
        }
        by_op
    }
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one run produced.
struct Run {
    name: String,
    steps: Vec<(String, String)>,
    latency: BTreeMap<String, (f64, u64)>,
    timings: Vec<(String, Duration)>,
    /// Creates (of about 60) that failed while the storage elected a new leader.
    failed_during_election: usize,
    log_errors: Vec<String>,
}

fn names(list: &serde_json::Value) -> Vec<String> {
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The apiserver log's error lines and warnings about its storage, by message (numbers and IDs left out), with counts.
fn log_errors(log: &str) -> Vec<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let digits = regex::Regex::new(r"[0-9a-f]{6,}|\d+").unwrap();
    let storage_warning = |l: &str| l.starts_with('W') && (l.contains("etcd") || l.contains("grpc"));
    for line in log.lines().filter(|l| l.starts_with('E') || storage_warning(l)) {
        let message = line.split_once("] ").map_or(line, |(_, m)| m);
        let message: String = digits.replace_all(message, "N").chars().take(220).collect();
        *counts.entry(message).or_default() += 1;
    }
    counts.into_iter().map(|(m, n)| format!("{n:>4}x {m}")).collect()
}

fn configmap(ns: &str, name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}}}\ndata: {{k: \"{value}\"}}\n"
    )
}

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.kuberaft.io}
spec:
  group: test.kuberaft.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
";

/// The scenario, on a storage whose apiserver is already configured (not started).
fn scenario(
    name: &str,
    storage: &mut Storage,
    api: &mut Apiserver,
    etcdctl: &dyn Fn(&[&str]) -> (bool, String),
) -> Run {
    let mut steps: Vec<(String, String)> = Vec::new();
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let mut step = |label: &str, result: String| {
        println!("[{name}] {label}: {result}");
        steps.push((label.to_string(), result));
    };

    let took = api.start();
    timings.push(("apiserver start to ready".into(), took));
    step(
        "bootstrap namespaces",
        names(&api.json("/api/v1/namespaces")).join(","),
    );
    step(
        "bootstrap cluster roles exist",
        api.kubectl(
            &["get", "clusterrole", "cluster-admin", "-o", "name"],
            Duration::from_secs(30),
        )
        .1
        .trim()
        .to_string(),
    );

    // Namespaces, ConfigMaps, a Secret.
    let t = Instant::now();
    for ns in ["kr-a", "kr-b", "kr-load"] {
        api.ok(&["create", "namespace", ns]);
    }
    let mut created = 0;
    for i in 0..CONFIGMAPS {
        let (ok, out) = api.apply(
            &format!("cm-{i}.yaml"),
            &configmap("kr-a", &format!("cm-{i:02}"), &format!("v{i}")),
        );
        assert!(ok, "create cm-{i:02}: {out}");
        created += 1;
    }
    timings.push((
        format!("3 namespaces + {CONFIGMAPS} configmaps created one by one"),
        t.elapsed(),
    ));
    step("configmaps created", created.to_string());
    let (ok, out, err) = api.kubectl(
        &[
            "create",
            "secret",
            "generic",
            "s1",
            "-n",
            "kr-b",
            "--from-literal=password=hunter2",
        ],
        Duration::from_secs(30),
    );
    step("create secret", format!("{ok} {}", out.trim()) + err.trim());
    step(
        "read secret",
        api.ok(&[
            "get",
            "secret",
            "s1",
            "-n",
            "kr-b",
            "-o",
            "jsonpath={.data.password}",
        ]),
    );

    // A CRD and objects of it.
    let (ok, out) = api.apply("crd.yaml", CRD);
    step("create crd", format!("{ok} {}", out.trim()));
    let (ok, out, err) = api.kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "crd/widgets.test.kuberaft.io",
            "--timeout=60s",
        ],
        Duration::from_secs(70),
    );
    step("crd established", format!("{ok} {}{}", out.trim(), err.trim()));
    let mut widget_results = Vec::new();
    for i in 0..3 {
        let widget = format!(
            "apiVersion: test.kuberaft.io/v1\nkind: Widget\nmetadata: {{name: w{i}, namespace: kr-b}}\nspec: {{size: {i}}}\n"
        );
        // Discovery of a new CRD may take a moment in kubectl: retry a few times.
        let mut result = (false, String::new());
        for _ in 0..10 {
            result = api.apply(&format!("w{i}.yaml"), &widget);
            if result.0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        widget_results.push(format!("{} {}", result.0, result.1.trim()));
    }
    step("create widgets", widget_results.join("; "));
    step(
        "list widgets",
        api.ok(&[
            "get",
            "widgets",
            "-n",
            "kr-b",
            "-o",
            "jsonpath={.items[*].spec.size}",
        ]),
    );

    // An Event: the apiserver stores it with a storage lease (its --event-ttl, 1 h).
    let event = "apiVersion: v1\nkind: Event\nmetadata: {name: ev1, namespace: kr-a}\n\
                 involvedObject: {kind: ConfigMap, name: cm-01, namespace: kr-a}\n\
                 reason: Test\nmessage: hello\ntype: Normal\n";
    let (ok, out) = api.apply("event.yaml", event);
    let all_endpoints = storage.endpoints().join(",");
    let (_, stored) = etcdctl(&[
        "--endpoints",
        &all_endpoints,
        "get",
        "/registry/events/kr-a/ev1",
        "-w",
        "json",
    ]);
    let lease = serde_json::from_str::<serde_json::Value>(stored.lines().next().unwrap_or(""))
        .ok()
        .and_then(|v| v["kvs"][0]["lease"].as_i64())
        .unwrap_or(0);
    let (_, ttl) = etcdctl(&[
        "--endpoints",
        &all_endpoints,
        "lease",
        "timetolive",
        &format!("{lease:x}"),
    ]);
    // "lease 694d... granted with TTL(3660s), remaining(3659s)"
    let granted = ttl.contains("granted with TTL(") && !ttl.contains("remaining(-1s)");
    step(
        "event with a lease",
        format!(
            "created {ok} {}, stored with a lease: {}, lease alive: {granted}",
            out.trim(),
            lease != 0
        ),
    );

    // Paging through --raw with limit and continue.
    let mut pages = Vec::new();
    let mut seen = Vec::new();
    let mut cont = String::new();
    for _ in 0..20 {
        let mut path = "/api/v1/namespaces/kr-a/configmaps?limit=5".to_string();
        if !cont.is_empty() {
            path.push_str(&format!("&continue={cont}"));
        }
        let page = api.json(&path);
        let page_names = names(&page);
        pages.push(format!(
            "{}(remaining {})",
            page_names.len(),
            page["metadata"]["remainingItemCount"]
        ));
        seen.extend(page_names);
        cont = page["metadata"]["continue"].as_str().unwrap_or("").to_string();
        if cont.is_empty() {
            break;
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    step(
        "raw pages of limit 5",
        format!(
            "{} | {} distinct, sorted: {}",
            pages.join(" "),
            sorted.len(),
            sorted == seen
        ),
    );
    // The same over a whole-cluster list (other namespaces' objects in between).
    let all = api.json("/api/v1/configmaps?limit=4");
    step(
        "cluster-wide page of limit 4",
        format!(
            "{} items, continue: {}",
            names(&all).len(),
            all["metadata"]["continue"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        ),
    );
    let chunked = api.ok(&["get", "configmaps", "-n", "kr-a", "--chunk-size=4", "-o", "name"]);
    step(
        "kubectl --chunk-size=4",
        format!("{} lines", chunked.lines().count()),
    );
    let exact = api.json("/api/v1/namespaces/kr-a/configmaps");
    let rv0 = exact["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    // A list at an exact, older resourceVersion.
    let (ok, out, err) = api.kubectl(
        &[
            "get",
            "--raw",
            &format!(
                "/api/v1/namespaces/kr-a/configmaps?resourceVersion={rv0}&resourceVersionMatch=Exact&limit=3"
            ),
        ],
        Duration::from_secs(30),
    );
    let exact_names = serde_json::from_str::<serde_json::Value>(&out)
        .map(|v| names(&v).len().to_string())
        .unwrap_or_else(|_| format!("{ok} {}", err.trim()));
    step("list at an exact resourceVersion, limit 3", exact_names);

    // Changes after rv0, then a watch resumed from rv0.
    let t = Instant::now();
    let (ok, out) = api.apply("watched.yaml", &configmap("kr-a", "watched", "1"));
    assert!(ok, "{out}");
    api.ok(&[
        "patch",
        "configmap",
        "watched",
        "-n",
        "kr-a",
        "-p",
        r#"{"data":{"k":"2"}}"#,
    ]);
    api.ok(&["label", "configmap", "cm-01", "-n", "kr-a", "color=blue"]);
    api.ok(&["delete", "configmap", "cm-00", "-n", "kr-a"]);
    timings.push(("create + patch + label + delete".into(), t.elapsed()));
    let (ok, out, err) = api.kubectl(
        &[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/kr-a/configmaps?watch=1&resourceVersion={rv0}&timeoutSeconds=3"),
        ],
        Duration::from_secs(30),
    );
    let events: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|e| {
            format!(
                "{} {} {}",
                e["type"].as_str().unwrap_or("?"),
                e["object"]["metadata"]["name"].as_str().unwrap_or("?"),
                e["object"]["data"]["k"].as_str().unwrap_or("")
            )
        })
        .collect();
    step(
        "watch from a resourceVersion",
        format!("{ok} {} {}", events.join(", "), err.trim()),
    );
    // A label-selected list sees the label.
    step(
        "label selector",
        api.ok(&[
            "get",
            "configmaps",
            "-n",
            "kr-a",
            "-l",
            "color=blue",
            "-o",
            "name",
        ])
        .trim()
        .to_string(),
    );

    // Optimistic concurrency: an update with a stale resourceVersion is a Conflict.
    let stale = api.ok(&["get", "configmap", "watched", "-n", "kr-a", "-o", "json"]);
    api.ok(&[
        "patch",
        "configmap",
        "watched",
        "-n",
        "kr-a",
        "-p",
        r#"{"data":{"k":"3"}}"#,
    ]);
    let path = api.dir.join("stale.json");
    std::fs::write(&path, stale.replace("\"k\": \"2\"", "\"k\": \"stale\"")).unwrap();
    let (ok, out, err) = api.kubectl(
        &["replace", "-f", &path.display().to_string()],
        Duration::from_secs(30),
    );
    step(
        "replace with a stale resourceVersion",
        format!(
            "{ok} conflict: {}",
            (out + &err).contains("Conflict") || err.contains("modified")
        ),
    );
    step(
        "value after the refused replace",
        api.ok(&[
            "get",
            "configmap",
            "watched",
            "-n",
            "kr-a",
            "-o",
            "jsonpath={.data.k}",
        ]),
    );
    // Deletes.
    api.ok(&["delete", "widget", "w2", "-n", "kr-b"]);
    let (ok, _, err) = api.kubectl(&["get", "widget", "w2", "-n", "kr-b"], Duration::from_secs(30));
    step("deleted widget", format!("{ok} {}", err.contains("NotFound")));
    let (ok, _, err) = api.kubectl(
        &["get", "configmap", "cm-00", "-n", "kr-a"],
        Duration::from_secs(30),
    );
    step("deleted configmap", format!("{ok} {}", err.contains("NotFound")));
    let latency = api.storage_latency();

    // Restart the apiserver on the same data.
    api.stop();
    let took = api.start();
    timings.push(("apiserver restart to ready".into(), took));
    let counts = |api: &Apiserver| {
        format!(
            "configmaps {} secrets {} widgets {} namespaces {}",
            names(&api.json("/api/v1/namespaces/kr-a/configmaps")).len(),
            names(&api.json("/api/v1/namespaces/kr-b/secrets")).len(),
            names(&api.json("/apis/test.kuberaft.io/v1/namespaces/kr-b/widgets")).len(),
            names(&api.json("/api/v1/namespaces")).len()
        )
    };
    step("after the apiserver restart", counts(api));
    step(
        "value after the restart",
        api.ok(&[
            "get",
            "configmap",
            "watched",
            "-n",
            "kr-a",
            "-o",
            "jsonpath={.data.k}",
        ]),
    );

    // kill -9 of the storage leader under a loop of creates.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let loader = {
        let (acked, failed) = (acked.clone(), failed.clone());
        let kubectl = api.kubectl.clone();
        let kubeconfig = api.dir.join("kubeconfig");
        std::thread::spawn(move || {
            let begin = Instant::now();
            for i in 0..60 {
                if begin.elapsed() > Duration::from_secs(25) {
                    break;
                }
                let name = format!("load-{i:03}");
                let mut command = Command::new(&kubectl);
                command
                    .arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .arg("--request-timeout=10s")
                    .args([
                        "create",
                        "configmap",
                        &name,
                        "-n",
                        "kr-load",
                        "--from-literal=k=v",
                    ]);
                let (ok, out, err) = run_bounded(command, Duration::from_secs(20));
                if ok {
                    acked.lock().unwrap().push(name);
                } else {
                    failed
                        .lock()
                        .unwrap()
                        .push(format!("{name}: {}{}", out.trim(), err.trim()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(4));
    let running = storage.running();
    let leader = storage.leader(&running);
    let killed_at = Instant::now();
    storage.kill(leader);
    let rest: Vec<usize> = running.into_iter().filter(|&i| i != leader).collect();
    let new_leader = storage.leader(&rest);
    timings.push((
        "storage leader kill -9 to a new leader".into(),
        killed_at.elapsed(),
    ));
    loader.join().unwrap();
    let (acked, failed) = (acked.lock().unwrap().clone(), failed.lock().unwrap().clone());
    println!(
        "[{name}] killed leader m{leader}, new leader m{new_leader}; {} creates acknowledged, {} failed: {failed:#?}",
        acked.len(),
        failed.len()
    );
    assert!(
        acked.len() >= 10,
        "[{name}] too few creates acknowledged: {failed:?}"
    );
    // Afterwards every request succeeds.
    let after = Instant::now();
    let mut first_ok = None;
    for i in 0..60 {
        let (ok, _, _) = api.kubectl(
            &[
                "create",
                "configmap",
                &format!("after-{i:02}"),
                "-n",
                "kr-load",
                "--from-literal=k=v",
            ],
            Duration::from_secs(30),
        );
        if ok {
            first_ok = Some(i);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let first_ok = first_ok.unwrap_or_else(|| panic!("[{name}] the apiserver never served a create again"));
    timings.push(("first successful create after the loop".into(), after.elapsed()));
    let mut later_failures = Vec::new();
    for i in 0..10 {
        let (ok, out, err) = api.kubectl(
            &[
                "create",
                "configmap",
                &format!("later-{i:02}"),
                "-n",
                "kr-load",
                "--from-literal=k=v",
            ],
            Duration::from_secs(30),
        );
        if !ok {
            later_failures.push(format!("later-{i:02}: {out}{err}"));
        }
    }
    let present = names(&api.json("/api/v1/namespaces/kr-load/configmaps"));
    let lost: Vec<&String> = acked.iter().filter(|n| !present.contains(n)).collect();
    println!("[{name}] {first_ok} attempts failed after the loop before one succeeded");
    step(
        "after the leader's kill",
        format!(
            "later creates failed: {later_failures:?}, acknowledged creates missing: {lost:?}, all later present: {}",
            (0..10).all(|i| present.contains(&format!("later-{i:02}")))
        ),
    );

    // The apiserver's compactor: it records its progress in `compact_rev_key` and
    // compacts every 10 s to the revision it recorded one interval earlier.
    // At least two intervals after the apiserver (re)started, bounded.
    let deadline = Instant::now() + Duration::from_secs(60);
    let endpoints: Vec<String> = rest.iter().map(|&i| storage.endpoints()[i].clone()).collect();
    let endpoints = endpoints.join(",");
    let mut compacted = String::new();
    while Instant::now() < deadline {
        let (_, version) = etcdctl(&["--endpoints", &endpoints, "get", "compact_rev_key", "-w", "json"]);
        // etcdctl 3.6 adds warnings (stderr) after its answer: the JSON is the first line.
        let version = serde_json::from_str::<serde_json::Value>(version.lines().next().unwrap_or(""))
            .ok()
            .and_then(|v| v["kvs"][0]["version"].as_u64())
            .unwrap_or(0);
        let (ok, out) = etcdctl(&[
            "--endpoints",
            &endpoints,
            "get",
            "/registry/namespaces/kr-a",
            "--rev=2",
        ]);
        if version >= 2 && !ok && out.contains("compacted") {
            compacted = format!(
                "compact_rev_key version >= 2, revision 2 compacted: {}",
                out.trim()
            );
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if let Some(revision) = storage.compacted_metric(&rest) {
        println!("[{name}] kuberaft_mvcc_compacted_revision = {revision}");
        assert!(
            revision > 1,
            "[{name}] kuberaft's compacted revision did not rise"
        );
    }
    step(
        "compaction by the apiserver",
        if compacted.is_empty() {
            let (_, key) = etcdctl(&["--endpoints", &endpoints, "get", "compact_rev_key", "-w", "json"]);
            let (_, old) = etcdctl(&[
                "--endpoints",
                &endpoints,
                "get",
                "/registry/namespaces/kr-a",
                "--rev=2",
            ]);
            println!("[{name}] not compacted: compact_rev_key {key}, revision 2: {old}");
            "not compacted within 60 s".to_string()
        } else {
            "compacted".to_string()
        },
    );
    api.stop();
    Run {
        name: name.to_string(),
        steps,
        latency,
        timings,
        failed_during_election: failed.len(),
        log_errors: log_errors(&api.log()),
    }
}

fn print_latency(runs: &[&Run]) {
    let ops: std::collections::BTreeSet<&String> = runs.iter().flat_map(|r| r.latency.keys()).collect();
    let mut table = String::from("\napiserver -> storage latency (etcd_request_duration_seconds, before the restart), mean ms (count):\n");
    table.push_str(&format!("{:<16}", "operation"));
    for run in runs {
        table.push_str(&format!("{:>28}", run.name));
    }
    table.push('\n');
    for op in ops {
        table.push_str(&format!("{op:<16}"));
        for run in runs {
            let (sum, count) = run.latency.get(op).copied().unwrap_or((0.0, 0));
            let cell = if count == 0 {
                "-".to_string()
            } else {
                format!("{:.2} ({count})", 1000.0 * sum / count as f64)
            };
            table.push_str(&format!("{cell:>28}"));
        }
        table.push('\n');
    }
    table.push_str("\nkubectl and apiserver timings, s:\n");
    for (i, (label, _)) in runs[0].timings.iter().enumerate() {
        table.push_str(&format!("{label:<48}"));
        for run in runs {
            let d = run.timings.get(i).map_or(0.0, |(_, d)| d.as_secs_f64());
            table.push_str(&format!("{d:>16.2}"));
        }
        table.push('\n');
    }
    table.push_str(&format!("{:<48}", "creates failed during the leader's election"));
    for run in runs {
        table.push_str(&format!("{:>16}", run.failed_during_election));
    }
    table.push('\n');
    println!("{table}");
}

#[test]
fn kube_apiserver_runs_on_kuberaft_as_on_etcd_3_6() {
    let Some(tools) = tools() else {
        return;
    };
    let base = tempfile::tempdir().unwrap();

    // etcd 3.6, the reference.
    let etcd_run = {
        let dir = base.path().join("etcd");
        std::fs::create_dir_all(&dir).unwrap();
        let etcd = EtcdCluster::start_bin(&tools.etcd, &tools.etcdctl, 3);
        etcd.wait_ready();
        let servers: Vec<String> = etcd.endpoints().iter().map(|e| format!("http://{e}")).collect();
        let mut api = Apiserver::new(&tools, &dir, &servers.join(","), None, true);
        let mut storage = Storage::Etcd(etcd);
        let etcdctl = |args: &[&str]| etcdctl_bin(&tools.etcdctl, "", args);
        scenario("etcd 3.6", &mut storage, &mut api, &etcdctl)
    };

    // kuberaft, plain, with the watch cache.
    let plain_run = {
        let dir = base.path().join("kuberaft");
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = ProcCluster::start(3, &[]);
        cluster.wait_for_leader(&[0, 1, 2]);
        let servers: Vec<String> = cluster
            .endpoints()
            .iter()
            .map(|e| format!("http://{e}"))
            .collect();
        let mut api = Apiserver::new(&tools, &dir, &servers.join(","), None, true);
        let mut storage = Storage::Kuberaft(cluster);
        let etcdctl = |args: &[&str]| etcdctl_bin(&tools.etcdctl, "", args);
        let run = scenario("kuberaft", &mut storage, &mut api, &etcdctl);
        if let Storage::Kuberaft(cluster) = &storage {
            for i in 0..3 {
                let log = cluster.log(i);
                let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).take(10).collect();
                if !errors.is_empty() {
                    println!("[kuberaft] m{i} errors:\n{}", errors.join("\n"));
                }
            }
        }
        run
    };

    // kuberaft over TLS with client certificates, without the watch cache.
    let tls_run = {
        let dir = base.path().join("kuberaft-tls");
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki::new();
        let args = [
            format!("--cert-file={}", pki.file("server.crt")),
            format!("--key-file={}", pki.file("server.key")),
            format!("--trusted-ca-file={}", pki.file("ca.crt")),
            "--client-cert-auth".to_string(),
            format!("--peer-cert-file={}", pki.file("peer.crt")),
            format!("--peer-key-file={}", pki.file("peer.key")),
            format!("--peer-trusted-ca-file={}", pki.file("ca.crt")),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cluster = ProcCluster::start_with_schemes(3, &args, "https", "https");
        cluster.wait_for_leader(&[0, 1, 2]);
        let servers: Vec<String> = cluster
            .endpoints()
            .iter()
            .map(|e| format!("https://{e}"))
            .collect();
        let mut api = Apiserver::new(&tools, &dir, &servers.join(","), Some(&pki), false);
        let mut storage = Storage::Kuberaft(cluster);
        let (ca, cert, key) = (pki.file("ca.crt"), pki.file("client.crt"), pki.file("client.key"));
        let etcdctl = |args: &[&str]| {
            let mut all = vec!["--cacert", &ca, "--cert", &cert, "--key", &key];
            all.extend_from_slice(args);
            etcdctl_bin(&tools.etcdctl, "", &all)
        };
        scenario("kuberaft tls, no watch cache", &mut storage, &mut api, &etcdctl)
    };

    print_latency(&[&etcd_run, &plain_run, &tls_run]);
    for run in [&etcd_run, &plain_run, &tls_run] {
        println!(
            "\n[{}] apiserver log errors:\n{}",
            run.name,
            run.log_errors.join("\n")
        );
    }

    let mut unexplained = Vec::new();
    let mut explained = Vec::new();
    for run in [&plain_run, &tls_run] {
        assert_eq!(
            etcd_run.steps.iter().map(|(l, _)| l).collect::<Vec<_>>(),
            run.steps.iter().map(|(l, _)| l).collect::<Vec<_>>()
        );
        for ((label, theirs), (_, mine)) in etcd_run.steps.iter().zip(&run.steps) {
            if theirs == mine {
                continue;
            }
            let report = format!("--- {label}\n  etcd 3.6: {theirs}\n  {}: {mine}", run.name);
            match KNOWN_DIFFERENCES
                .iter()
                .find(|(l, _, fragment)| l == label && mine.contains(fragment))
            {
                Some((_, reason, _)) => {
                    explained.push((label.clone(), format!("{report}\n  known: {reason}")))
                }
                None => unexplained.push(report),
            }
        }
        let unimplemented: Vec<&String> = run
            .log_errors
            .iter()
            .filter(|e| {
                e.contains("Unimplemented") || e.contains("unknown service") || e.contains("unknown method")
            })
            .collect();
        assert!(
            unimplemented.is_empty(),
            "[{}] the apiserver called RPCs kuberaft lacks: {unimplemented:#?}",
            run.name
        );
    }
    for (_, report) in &explained {
        println!("{report}");
    }
    let stale: Vec<&str> = KNOWN_DIFFERENCES
        .iter()
        .map(|(label, _, _)| *label)
        .filter(|label| !explained.iter().any(|(l, _)| l == label))
        .collect();
    assert!(
        unexplained.is_empty() && stale.is_empty(),
        "{} unexplained difference(s) from etcd 3.6:\n{}\nlisted differences that no longer occur: {stale:?}",
        unexplained.len(),
        unexplained.join("\n")
    );
    // The reference itself did what the scenario expects.
    let expect = |label: &str, check: &dyn Fn(&str) -> bool| {
        let (_, result) = etcd_run.steps.iter().find(|(l, _)| l == label).unwrap();
        assert!(check(result), "etcd 3.6, {label}: {result}");
    };
    expect("raw pages of limit 5", &|r| {
        r.contains(&format!("{CONFIGMAPS} distinct, sorted: true"))
    });
    expect("watch from a resourceVersion", &|r| {
        r.contains("ADDED watched 1, MODIFIED watched 2, MODIFIED cm-01") && r.contains("DELETED cm-00")
    });
    expect("replace with a stale resourceVersion", &|r| {
        r == "false conflict: true"
    });
    expect("compaction by the apiserver", &|r| r == "compacted");
    expect("event with a lease", &|r| {
        r.ends_with("stored with a lease: true, lease alive: true")
    });
    expect("after the leader's kill", &|r| {
        r.starts_with("later creates failed: [], acknowledged creates missing: [], all later present: true")
    });
}
