//! The operator in front of a real Kubernetes API server (issue 17, part 4).
//!
//! Starts, on free 127.0.0.1 ports: etcd 3.6 as the API server's storage, a real
//! `kube-apiserver` (RBAC on, service-account tokens) and a real
//! `kube-controller-manager` (garbage collector, namespace, ServiceAccount and
//! StatefulSet controllers: the pods are created, and stay Pending),
//! all built from their official Go modules by `scripts/go-peers.sh`. Then, as a user
//! would: `helm install` the chart (its CRD goes through the real structural-schema and
//! CEL-cost checks), and two `raft-operator` processes run here with the credentials of
//! the chart's ServiceAccount — a token from the TokenRequest API — so the chart's RBAC
//! is what they get: a missing permission shows up as a `Forbidden` in their logs and
//! fails the test. Checked:
//! - the two operators elect one leader on the chart's Lease, and the other takes over
//!   when the leader is killed, and goes on reconciling;
//! - `kubectl apply` of every example creates its children (StatefulSet, Services,
//!   PodDisruptionBudget) by server-side apply under the operator's field manager, with
//!   owner references; status and conditions are written; Events are recorded;
//! - `kubectl get raft` prints the CRD's columns; `kubectl scale raft` works through the
//!   scale subresource;
//! - the `kubectl raft` plugin (found by kubectl on PATH) prints a RaftCluster's status and
//!   hibernates and wakes it through its spec;
//! - deleting a RaftCluster removes its finalizer and lets the garbage collector delete
//!   its children;
//! - every manifest in `e2e/manifests/invalid/` is refused by the real API server.
//!
//! No kubelet runs here, so pods stay Pending and no member starts: member-level
//! behaviour (membership changes, restarts, backups) is tested on local processes
//! (`planner_on_processes.rs`, `raftctl_cluster.rs`, e2e/tests/local.rs) and on kind.
//!
//! Needs `KUBE_APISERVER_BIN`, `KUBE_CONTROLLER_MANAGER_BIN` and `ETCD36_BIN` (exported
//! by `scripts/test.sh` from `scripts/go-peers.sh --print-env`); kubectl and helm come
//! from `scripts/install-k8s-tools.sh` (run here if `.tools/bin` lacks them). Without
//! the Go binaries the test says so and passes.

#[path = "../../e2e/tests/kind/kube.rs"]
#[allow(dead_code)]
mod kubectl_support;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kubectl_support::{items, kubectl, kubectl_json, kubectl_raw, owned_by, Raft};
use serde_json::Value;

const RELEASE: &str = "kuberaft";
const RELEASE_NAMESPACE: &str = "kuberaft-system";
const ADMIN_TOKEN: &str = "kuberaft-test-admin-token";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process started here, with its log file; ended by its PID when dropped.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(name: &str, dir: &Path, mut command: Command) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Go binaries the test needs, or why it cannot run.
struct Peers {
    apiserver: PathBuf,
    controller_manager: PathBuf,
    etcd: PathBuf,
}

fn peers() -> Result<Peers, String> {
    let get = |var: &str| -> Result<PathBuf, String> {
        let path = std::env::var_os(var).map(PathBuf::from).ok_or(format!(
            "{var} is not set (scripts/test.sh exports it from scripts/go-peers.sh --print-env \
             once the Kubernetes binaries are built: KUBERAFT_GO_PEERS=etcd,benchmark,kubernetes \
             bash scripts/test.sh)"
        ))?;
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{var}={} is not a file", path.display()))
        }
    };
    Ok(Peers {
        apiserver: get("KUBE_APISERVER_BIN")?,
        controller_manager: get("KUBE_CONTROLLER_MANAGER_BIN")?,
        etcd: get("ETCD36_BIN")?,
    })
}

/// kubectl and helm in `.tools/bin`, installed by the repository's script if missing;
/// that directory goes first on PATH so kube.rs's `kubectl` is this one.
fn tools() -> PathBuf {
    let bin = repo().join(".tools/bin");
    if !bin.join("kubectl").is_file() || !bin.join("helm").is_file() {
        let status = Command::new("bash")
            .arg(repo().join("scripts/install-k8s-tools.sh"))
            .status()
            .expect("running scripts/install-k8s-tools.sh");
        assert!(status.success(), "scripts/install-k8s-tools.sh failed");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    // The kubectl plugin next to it, as a user installs it: kubectl finds `kubectl-raft`.
    let plugin = Path::new(env!("CARGO_BIN_EXE_kubectl-raft"))
        .parent()
        .expect("the plugin's directory")
        .to_path_buf();
    let mut dirs = vec![bin.clone(), plugin];
    dirs.extend(std::env::split_paths(&path));
    std::env::set_var("PATH", std::env::join_paths(dirs).unwrap());
    bin
}

/// A CA, the API server's serving certificate (127.0.0.1) and the service-account
/// signing key, written into `dir`.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "kuberaft test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
    let sa_key = KeyPair::generate().unwrap();
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("apiserver.crt"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("apiserver.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("sa.key"), sa_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("sa.pub"), sa_key.public_key_pem()).unwrap();
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{ADMIN_TOKEN},kuberaft-test-admin,kuberaft-test-admin,system:masters\n"),
    )
    .unwrap();
}

fn kubeconfig(dir: &Path, name: &str, server: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    let ca = dir.join("ca.crt");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    \
             certificate-authority: {}\nusers:\n- name: user\n  user:\n    token: {token}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: user\n\
             current-context: test\n",
            ca.display()
        ),
    )
    .unwrap();
    path
}

/// The whole stack: storage, API server, controller manager.
struct Stack {
    dir: tempfile::TempDir,
    server: String,
    procs: Vec<Proc>,
}

impl Stack {
    fn start(peers: &Peers) -> Result<Stack> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        certificates(d);
        let mut procs = Vec::new();

        let (client, peer) = (free_port(), free_port());
        let mut etcd = Command::new(&peers.etcd);
        etcd.arg("--data-dir").arg(d.join("etcd")).args([
            &format!("--listen-client-urls=http://127.0.0.1:{client}"),
            &format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
        ]);
        procs.push(Proc::start("etcd", d, etcd));

        let secure = free_port();
        let server = format!("https://127.0.0.1:{secure}");
        let mut apiserver = Command::new(&peers.apiserver);
        apiserver.args([
            format!("--etcd-servers=http://127.0.0.1:{client}"),
            format!("--secure-port={secure}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // The endpoint reconciler refuses a loopback address; nothing here needs the
            // `kubernetes` Service's endpoints.
            "--endpoint-reconciler-type=none".into(),
            format!("--tls-cert-file={}", d.join("apiserver.crt").display()),
            format!("--tls-private-key-file={}", d.join("apiserver.key").display()),
            format!("--service-account-key-file={}", d.join("sa.pub").display()),
            format!(
                "--service-account-signing-key-file={}",
                d.join("sa.key").display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
        ]);
        procs.push(Proc::start("kube-apiserver", d, apiserver));
        let mut stack = Stack { dir, server, procs };
        let admin = kubeconfig(stack.dir.path(), "admin.kubeconfig", &stack.server, ADMIN_TOKEN);
        std::env::set_var("KUBECONFIG", &admin);
        stack.wait("the API server ready", Duration::from_secs(120), || {
            let out = kubectl_raw(&["get", "--raw", "/readyz"], None)?;
            Ok(out.success.then_some(()))
        })?;

        let mut kcm = Command::new(&peers.controller_manager);
        kcm.arg(format!("--kubeconfig={}", admin.display())).args([
            "--controllers=garbagecollector,namespace,serviceaccount,statefulset",
            "--leader-elect=false",
            "--secure-port=0",
            "--use-service-account-credentials=false",
        ]);
        let dir = stack.dir.path().to_path_buf();
        stack
            .procs
            .push(Proc::start("kube-controller-manager", &dir, kcm));
        Ok(stack)
    }

    /// Waits for `probe`, failing early (with the logs) if a process of the stack died.
    fn wait<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            for p in &mut self.procs {
                if !p.alive() {
                    bail!("{} exited while waiting for {what}:\n{}", p.name, p.tail(30));
                }
            }
            match probe() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what} (last error: {last})");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} (last lines)\n{}\n", p.name, p.tail(40)))
            .collect()
    }
}

/// `helm install` of the chart into the release namespace; returns the operator's
/// arguments as the chart's Deployment gives them.
fn helm_install(tools: &Path) -> Result<Vec<String>> {
    let chart = repo().join("charts/kuberaft-operator");
    let out = Command::new(tools.join("helm"))
        .args(["install", RELEASE])
        .arg(&chart)
        .args([
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "--wait=false",
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "helm install failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deployments = kubectl_json(&["get", "deployments", "-n", RELEASE_NAMESPACE])?;
    let deployment = items(&deployments)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("the chart made no Deployment"))?;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut args: Vec<String> = container["args"]
        .as_array()
        .ok_or_else(|| anyhow!("the operator container has no args"))?
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .filter(|a| !a.starts_with("--metrics-addr"))
        .collect();
    if args.first().map(String::as_str) != Some("run") {
        bail!("the chart's operator args do not start with `run`: {args:?}");
    }
    args.push(format!("--metrics-addr=127.0.0.1:{}", free_port()));
    Ok(args)
}

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{name}=")).map(String::from))
}

/// A token of the chart's ServiceAccount, through the TokenRequest API.
fn service_account_token() -> Result<String> {
    let accounts = kubectl_json(&["get", "serviceaccounts", "-n", RELEASE_NAMESPACE])?;
    let name = items(&accounts)
        .into_iter()
        .filter_map(|a| a["metadata"]["name"].as_str().map(String::from))
        .find(|n| n != "default")
        .ok_or_else(|| anyhow!("the chart made no ServiceAccount"))?;
    let token = kubectl(&["create", "token", &name, "-n", RELEASE_NAMESPACE, "--duration=1h"])?;
    Ok(token.trim().to_string())
}

fn start_operator(stack: &Stack, identity: &str, args: &[String], kubeconfig: &Path) -> Proc {
    let mut op = Command::new(env!("CARGO_BIN_EXE_raft-operator"));
    op.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", identity)
        .env("POD_NAMESPACE", RELEASE_NAMESPACE)
        .env("RUST_LOG", "info");
    Proc::start(identity, stack.dir.path(), op)
}

fn lease_holder(lease: &str) -> Result<Option<String>> {
    let out = kubectl_raw(
        &["get", "lease", lease, "-n", RELEASE_NAMESPACE, "-o", "json"],
        None,
    )?;
    if !out.success {
        return Ok(None);
    }
    let lease: Value = serde_json::from_str(&out.stdout)?;
    Ok(lease["spec"]["holderIdentity"].as_str().map(String::from))
}

/// The children the operator made for `raft`, by kind: those whose owner reference is
/// the RaftCluster.
fn children(raft: &Raft) -> Result<BTreeSet<String>> {
    let uid = raft.uid()?;
    let mut found = BTreeSet::new();
    for kind in ["statefulsets", "services", "poddisruptionbudgets"] {
        for object in items(&raft.json(&["get", kind])?) {
            if owned_by(&object, &uid) {
                found.insert(format!(
                    "{kind}/{}",
                    object["metadata"]["name"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    Ok(found)
}

/// The field managers that wrote `object` by server-side apply.
fn apply_managers(object: &Value) -> BTreeSet<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .filter(|f| f["operation"] == "Apply")
                .filter_map(|f| f["manager"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// An example's RaftCluster: its name, the namespace it names (if any) and its text.
fn example(name: &str) -> Result<(String, Option<String>, String)> {
    let text = std::fs::read_to_string(repo().join("examples").join(name))?;
    let field = |key: &str| {
        text.lines()
            .skip_while(|l| !l.starts_with("metadata:"))
            .skip(1)
            .take_while(|l| l.starts_with(' ') || l.is_empty())
            .find_map(|l| {
                l.trim()
                    .strip_prefix(key)
                    .map(|n| n.trim().trim_matches('"').to_string())
            })
    };
    let raft_name = field("name:").ok_or_else(|| anyhow!("examples/{name} has no metadata.name"))?;
    Ok((raft_name, field("namespace:"), text))
}

#[test]
fn the_operator_runs_against_a_real_api_server() {
    let peers = match peers() {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED: the real-API-server test did not run: {why}");
            return;
        }
    };
    let tools = tools();
    let mut stack = Stack::start(&peers).expect("the Kubernetes control plane starts");
    let mut operators = Vec::new();
    let result = scenario(&mut stack, &tools, &mut operators);
    let forbidden: Vec<String> = operators
        .iter()
        .flat_map(|op: &Proc| {
            op.log_text()
                .lines()
                .filter(|l| l.contains("Forbidden") || l.contains("forbidden"))
                .map(|l| format!("{}: {l}", op.name))
                .collect::<Vec<_>>()
        })
        .collect();
    if result.is_err() || !forbidden.is_empty() {
        println!("{}", stack.logs());
        for op in &operators {
            println!("--- {} (last lines)\n{}", op.name, op.tail(60));
        }
    }
    if let Err(e) = result {
        panic!("{e:#}");
    }
    assert!(
        forbidden.is_empty(),
        "the chart's RBAC refused the operator something it needs:\n{}",
        forbidden.join("\n")
    );
}

fn scenario(stack: &mut Stack, tools: &Path, operators: &mut Vec<Proc>) -> Result<()> {
    // The chart, CRD included: the real API server checks the structural schema and
    // estimates the CEL rules' cost.
    let args = helm_install(tools)?;
    let crd = kubectl_json(&["get", "crd", "raftclusters.kuberaft.io"])?;
    let established = crd["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
    });
    if !established {
        stack.wait("the RaftCluster CRD Established", Duration::from_secs(30), || {
            let crd = kubectl_json(&["get", "crd", "raftclusters.kuberaft.io"])?;
            Ok(crd["status"]["conditions"]
                .as_array()
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                })
                .then_some(()))
        })?;
    }
    println!("ok   helm install: the CRD is Established; operator args {args:?}");

    // Two operators with the ServiceAccount's token: one leader on the Lease.
    let lease = arg_value(&args, "--lease-name").context("the chart passes --lease-name")?;
    let token = service_account_token()?;
    let sa_config = kubeconfig(stack.dir.path(), "operator.kubeconfig", &stack.server, &token);
    let mut second_args = args.clone();
    second_args.retain(|a| !a.starts_with("--metrics-addr"));
    second_args.push(format!("--metrics-addr=127.0.0.1:{}", free_port()));
    operators.push(start_operator(stack, "operator-a", &args, &sa_config));
    operators.push(start_operator(stack, "operator-b", &second_args, &sa_config));
    let first = stack.wait("an operator holding the Lease", Duration::from_secs(60), || {
        lease_holder(&lease)
    })?;
    assert!(
        first == "operator-a" || first == "operator-b",
        "unexpected Lease holder {first}"
    );
    println!("ok   two operators, one leader on Lease {RELEASE_NAMESPACE}/{lease}: {first}");

    // Every example: children by server-side apply, owner references, status, Events.
    let mut rafts = Vec::new();
    for file in ["minimal.yaml", "production.yaml", "adaptive-timing.yaml"] {
        let (name, namespace, text) = example(file)?;
        let namespace = namespace.unwrap_or_else(|| format!("ex-{}", file.trim_end_matches(".yaml")));
        kubectl(&["create", "namespace", &namespace])?;
        let raft = Raft::apply(&namespace, &name, &text)?;
        let kids = stack.wait(
            &format!("the children of {file}"),
            Duration::from_secs(60),
            || {
                let kids = children(&raft)?;
                let kinds: BTreeSet<&str> = kids.iter().filter_map(|k| k.split('/').next()).collect();
                Ok((kinds.len() == 3).then_some(kids))
            },
        )?;
        let sts_name = raft.statefulset()?["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let sts = raft.json(&["get", "statefulset", &sts_name, "--show-managed-fields"])?;
        let managers = apply_managers(&sts);
        if !managers.contains("raft-operator") {
            bail!(
                "{file}: the StatefulSet was not written by server-side apply as raft-operator: {managers:?}"
            );
        }
        let status = stack.wait(
            &format!("status and conditions of {file}"),
            Duration::from_secs(60),
            || {
                let r = raft.resource()?;
                let has = r["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
                    && r["status"]["phase"].is_string();
                Ok(has.then(|| r["status"].clone()))
            },
        )?;
        let finalizers = raft.resource()?["metadata"]["finalizers"].clone();
        if !finalizers
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "kuberaft.io/volumes"))
        {
            bail!("{file}: no finalizer on the RaftCluster: {finalizers}");
        }
        println!(
            "ok   {file}: {kids:?} by server-side apply (managers {managers:?}); phase {}; conditions {}",
            status["phase"],
            status["conditions"]
                .as_array()
                .map(|c| c
                    .iter()
                    .map(|c| format!(
                        "{}={}",
                        c["type"].as_str().unwrap_or("?"),
                        c["status"].as_str().unwrap_or("?")
                    ))
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default()
        );
        rafts.push(raft);
    }
    let raft = &rafts[0];
    stack.wait("an Event about the RaftCluster", Duration::from_secs(60), || {
        let events = raft.json(&["get", "events"])?;
        let about: Vec<Value> = items(&events)
            .into_iter()
            .filter(|e| {
                e["involvedObject"]["kind"] == "RaftCluster" || e["regarding"]["kind"] == "RaftCluster"
            })
            .collect();
        Ok((!about.is_empty()).then_some(()))
    })?;
    println!("ok   Events recorded for the RaftCluster");

    // Printer columns and the scale subresource.
    let table = raft.kubectl(&["get", "raft"])?;
    let header = table.lines().next().unwrap_or_default().to_string();
    for column in ["NAME", "REPLICAS", "READY", "LEADER", "PHASE", "AGE"] {
        if !header.split_whitespace().any(|h| h == column) {
            bail!("`kubectl get raft` lacks the column {column}:\n{table}");
        }
    }
    raft.kubectl(&["scale", "raft", &raft.name, "--replicas=5"])?;
    let scale = raft.json(&["get", "raft", &raft.name, "--subresource=scale"])?;
    if scale["spec"]["replicas"] != 5 || raft.resource()?["spec"]["replicas"] != 5 {
        bail!("kubectl scale did not set spec.replicas: {scale}");
    }
    println!("ok   kubectl get raft columns {header:?}; kubectl scale raft --replicas=5 through the scale subresource");

    // The kubectl plugin: status from the RaftCluster, hibernate and wake through the spec.
    let ns = raft.namespace.as_str();
    let shown: Value =
        serde_json::from_str(&kubectl(&["raft", "status", &raft.name, "-n", ns, "-o", "json"])?)
            .context("kubectl raft status -o json printed no JSON")?;
    if shown["metadata"]["name"] != raft.name.as_str() || shown["status"]["phase"].as_str().is_none() {
        bail!("kubectl raft status -o json: not the RaftCluster with its status: {shown}");
    }
    let table = kubectl(&["raft", "status", &raft.name, "-n", ns])?;
    if !table.contains("phase:") || !table.contains("Available") {
        bail!("kubectl raft status printed no phase or conditions:\n{table}");
    }
    kubectl(&["raft", "hibernate", &raft.name, "-n", ns])?;
    if raft.resource()?["spec"]["hibernate"] != true {
        bail!("kubectl raft hibernate did not set spec.hibernate");
    }
    kubectl(&["raft", "wake", &raft.name, "-n", ns])?;
    if raft.resource()?["spec"]["hibernate"] != false {
        bail!("kubectl raft wake did not clear spec.hibernate");
    }
    let missing = kubectl_raw(&["raft", "status", "no-such-cluster", "-n", ns], None)?;
    if missing.success || !missing.stderr.contains("not found") {
        bail!(
            "kubectl raft status of a missing RaftCluster: success {}, stderr {}",
            missing.success,
            missing.stderr
        );
    }
    println!("ok   kubectl raft status (table, -o json), hibernate and wake through kubectl's plugin lookup");

    // The leader dies: the other operator takes the Lease and goes on reconciling.
    let leader_index = operators
        .iter()
        .position(|op| op.name == first)
        .expect("the holder is one of ours");
    operators[leader_index].kill();
    let successor = stack.wait(
        "the standby operator holding the Lease",
        Duration::from_secs(90),
        || Ok(lease_holder(&lease)?.filter(|h| *h != first)),
    )?;
    kubectl(&["create", "namespace", "after-failover"])?;
    let (name, _, text) = example("minimal.yaml")?;
    let after = Raft::apply("after-failover", &name, &text)?;
    stack.wait("children made by the new leader", Duration::from_secs(90), || {
        Ok((!children(&after)?.is_empty()).then_some(()))
    })?;
    println!("ok   {first} killed: {successor} took the Lease and reconciles a new RaftCluster");

    // Deletion: the finalizer goes, the garbage collector deletes the children.
    let gone = &rafts[0];
    let uid = gone.uid()?;
    gone.kubectl(&["delete", "raft", &gone.name, "--wait=false"])?;
    stack.wait(
        "the RaftCluster and its children gone",
        Duration::from_secs(120),
        || {
            let still = kubectl_raw(&["get", "raft", &gone.name, "-n", &gone.namespace], None)?;
            if still.success {
                return Ok(None);
            }
            let mut left = Vec::new();
            for kind in ["statefulsets", "services", "poddisruptionbudgets"] {
                for object in items(&kubectl_json(&["get", kind, "-n", &gone.namespace])?) {
                    if owned_by(&object, &uid) {
                        left.push(format!("{kind}/{}", object["metadata"]["name"]));
                    }
                }
            }
            Ok(left.is_empty().then_some(()))
        },
    )?;
    println!("ok   deleting a RaftCluster: finalizer removed, children garbage-collected");

    // Every invalid manifest is refused by the real API server (schema and CEL).
    kubectl(&["create", "namespace", "invalid"])?;
    let dir = repo().join("e2e/manifests/invalid");
    let mut refused = 0;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    for path in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let p = path.to_str().context("utf-8 path")?;
        let out = kubectl_raw(&["apply", "-n", "invalid", "-f", p], None)?;
        if out.success {
            bail!(
                "{} was accepted by the API server: {}",
                path.display(),
                out.stdout
            );
        }
        println!("ok   refused {}: {}", path.display(), out.stderr.trim());
        refused += 1;
    }
    if refused < 5 {
        bail!("only {refused} invalid manifests in {}", dir.display());
    }
    // The operators never crashed.
    for op in operators.iter_mut().filter(|op| op.name != first) {
        if !op.alive() {
            bail!("{} exited:\n{}", op.name, op.tail(40));
        }
    }
    Ok(())
}
