//! The local-process platform behind `raftctl up`: the operator's planner, unchanged,
//! driving `raft-node` processes on 127.0.0.1 instead of a StatefulSet.
//!
//! What stands for what:
//! - the StatefulSet is a desired member count kept in `state.json`; a supervisor keeps
//!   one `raft-node` process per ordinal below it (and restarts one that exits, with
//!   back-off, like the kubelet) and stops those above it;
//! - a pod's template hash is the hash of the spec the process was started from;
//!   "deleting a pod" is SIGTERM, after which the supervisor starts it again from the
//!   current spec;
//! - a member's two volumes are `DIR/<name>-<ordinal>/wal` and `.../snap`;
//! - the RaftCluster's status lives in `state.json` too, so that `raftctl up` stopped
//!   and started again resumes where it was, exactly as a restarted operator does;
//! - `kubectl apply` is editing the manifest file: it is read again when it changes, and
//!   a manifest that does not parse is reported and ignored (the running spec stays).
//!
//! Ports: three per ordinal for every ordinal a cluster may ever have (1 to 9 members),
//! chosen together on first start so that they do not collide, and kept in `state.json`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::backup;
use crate::certs;
use crate::crd::{BackupDestination, BackupSource, RaftCluster, RaftClusterStatus, TlsMode, REPLICAS_MAX};
use crate::plan::{self, Action, Naming, Observed, Plan, PodObservation};
use crate::platform::{self, Platform};
use crate::{k8s, node, render, restore, Error, Result};

/// Longest wait for a member to exit after SIGTERM before it gets SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(20);
/// Longest `raft-node restore` of one member.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);
/// Tail of `raft-node restore`'s output kept for the error message.
const RESTORE_LOG_TAIL_BYTES: u64 = 4_096;
/// Restart back-off of a member that keeps exiting: doubles from the first value up to
/// the cap, and starts over once a member stayed up for `RESTART_BACKOFF_RESET`.
const RESTART_BACKOFF_FIRST: Duration = Duration::from_millis(500);
const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(10);
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(30);
/// Time allowed for one `/readyz` probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The three ports of one ordinal.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ports {
    pub client: u16,
    pub peer: u16,
    pub metrics: u16,
}

/// What survives `raftctl up` being stopped: ports, token, the "StatefulSet" size and
/// the RaftCluster status.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// `--initial-cluster-token`: new for every cluster created in this directory.
    pub token: String,
    pub ports: BTreeMap<u32, Ports>,
    /// Members the supervisor runs (the StatefulSet's replicas); `None` before bootstrap.
    pub workload_replicas: Option<i32>,
    /// `--initial-cluster-state` for members started on empty directories.
    pub initial_cluster_state: Option<String>,
    #[serde(default)]
    pub status: Option<RaftClusterStatus>,
    /// PIDs of the members this directory's `raftctl up` started, so that members left
    /// behind by a killed `raftctl up` are found and stopped on the next start.
    #[serde(default)]
    pub pids: BTreeMap<u32, u32>,
}

impl State {
    fn load_or_create(dir: &Path, cluster: &str) -> Result<State> {
        let path = dir.join("state.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| local_error(format!("{} is not a state file: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let n = (REPLICAS_MAX as usize + 1) * 3;
                let reserved = reserve_ports(n)?;
                let port = |i: usize| reserved[i];
                let ports = (0..=REPLICAS_MAX as u32)
                    .map(|o| {
                        let i = o as usize * 3;
                        (
                            o,
                            Ports {
                                client: port(i),
                                peer: port(i + 1),
                                metrics: port(i + 2),
                            },
                        )
                    })
                    .collect();
                let nonce = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                Ok(State {
                    token: format!("local-{cluster}-{:x}", nonce ^ u128::from(std::process::id())),
                    ports,
                    ..State::default()
                })
            }
            Err(e) => Err(local_error(format!("cannot read {}: {e}", path.display()))),
        }
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("state.json");
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| local_error(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| local_error(format!("cannot write {}: {e}", path.display())))
    }
}

/// `n` distinct ports that are free now, chosen below the kernel's ephemeral port range:
/// a port from that range, released and bound again later by a member, can meanwhile be
/// taken by any outgoing connection (a member that restarts would then find its port
/// in use). Every candidate is bound until all are chosen. Tests use this too.
pub fn reserve_ports(n: usize) -> Result<Vec<u16>> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u32>().ok()))
        .unwrap_or(32_768)
        .clamp(LOWEST + 1_000, 65_535);
    let span = ephemeral_low - LOWEST;
    // Spread processes and calls over the range, so concurrent tests rarely probe the
    // same ports (the bind check settles the rest).
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = (std::process::id().wrapping_mul(7_919) ^ nonce)
        .wrapping_add(NEXT.fetch_add(n as u32 * 3, Ordering::Relaxed))
        % span;
    let mut held = Vec::with_capacity(n);
    for k in 0..span {
        if held.len() == n {
            break;
        }
        let port = (LOWEST + (start + k) % span) as u16;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    if held.len() < n {
        return Err(local_error(format!(
            "only {} free ports below {ephemeral_low} on 127.0.0.1",
            held.len()
        )));
    }
    Ok(held
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.port())
        .collect())
}

fn local_error(message: impl Into<String>) -> Error {
    Error::Local(message.into())
}

/// One supervised `raft-node` process.
struct Process {
    child: Child,
    template_hash: String,
    started: Instant,
    /// SIGTERM sent at this time (a "terminating pod").
    stopping_since: Option<Instant>,
}

#[derive(Default)]
struct Restarts {
    failures: u32,
    not_before: Option<Instant>,
}

struct Inner {
    state: State,
    processes: BTreeMap<u32, Process>,
    restarts: BTreeMap<u32, Restarts>,
    /// The spec and its hash the supervisor starts new processes from.
    cluster: RaftCluster,
    /// Ordinals whose peer traffic goes through another port (a proxy in front of the
    /// member's peer listener): the member advertises that port instead.
    peer_routes: BTreeMap<u32, u16>,
    /// How members are reached (TLS with the client certificate when `spec.tls`).
    access: node::Access,
    /// Credentials of `spec.backup.destination.s3` (else the environment's `AWS_*`).
    s3_credentials: Option<backup::S3Credentials>,
}

/// Settings of `raftctl up`.
#[derive(Clone, Debug)]
pub struct UpConfig {
    pub manifest: PathBuf,
    pub data_dir: PathBuf,
    pub node_binary: PathBuf,
    /// Time between two planner rounds.
    pub interval: Duration,
    /// Extra flags for every raft-node (e.g. `--log-json`).
    pub node_args: Vec<String>,
    /// Credentials of an S3 backup destination (flags or `AWS_*`).
    pub s3_credentials: Option<backup::S3Credentials>,
}

/// The local platform. Cheap to clone; every clone drives the same processes.
#[derive(Clone)]
pub struct LocalPlatform {
    dir: PathBuf,
    node_binary: PathBuf,
    node_args: Vec<String>,
    name: String,
    inner: Arc<Mutex<Inner>>,
}

impl LocalPlatform {
    /// Opens (or creates) the cluster directory of this manifest's cluster.
    pub fn open(
        cluster: RaftCluster,
        data_dir: &Path,
        node_binary: PathBuf,
        node_args: Vec<String>,
    ) -> Result<Self> {
        let name = cluster.name_any();
        let dir = data_dir.join(&name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| local_error(format!("cannot create {}: {e}", dir.display())))?;
        let state = State::load_or_create(&dir, &name)?;
        state.save(&dir)?;
        let (access, issued) = local_tls(&dir, &cluster, SystemTime::now())?;
        for line in issued {
            tracing::info!("{line}");
        }
        let platform = LocalPlatform {
            dir,
            node_binary,
            node_args,
            name,
            inner: Arc::new(Mutex::new(Inner {
                state,
                processes: BTreeMap::new(),
                restarts: BTreeMap::new(),
                cluster,
                peer_routes: BTreeMap::new(),
                access,
                s3_credentials: None,
            })),
        };
        platform.stop_leftovers();
        Ok(platform)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ports(&self, ordinal: u32) -> Option<Ports> {
        self.lock().state.ports.get(&ordinal).copied()
    }

    /// Naming of the members: `<name>-<ordinal>`, peer URLs on the reserved ports (or
    /// on the port their peer traffic is routed through).
    pub fn naming(&self) -> Naming {
        let inner = self.lock();
        let ports: BTreeMap<u32, u16> = inner
            .state
            .ports
            .iter()
            .map(|(o, p)| (*o, inner.peer_routes.get(o).copied().unwrap_or(p.peer)))
            .collect();
        let scheme = render::scheme(&inner.cluster.spec);
        Naming {
            prefix: self.name.clone(),
            peer_url: Arc::new(move |o| {
                ports
                    .get(&o)
                    .map(|port| format!("{scheme}://127.0.0.1:{port}"))
                    .unwrap_or_default()
            }),
        }
    }

    /// Routes the peer traffic of `ordinal` through 127.0.0.1:`port` (for example a
    /// proxy that forwards to the member's peer port): members started from now on
    /// advertise that port and list it in `--initial-cluster`.
    pub fn route_peer_through(&self, ordinal: u32, port: u16) {
        self.lock().peer_routes.insert(ordinal, port);
    }

    fn advertised_peer_port(inner: &Inner, ordinal: u32) -> u16 {
        inner
            .peer_routes
            .get(&ordinal)
            .copied()
            .unwrap_or(inner.state.ports[&ordinal].peer)
    }

    /// The directory of one member (its two "volumes" live inside).
    pub fn member_dir(&self, ordinal: u32) -> PathBuf {
        self.dir.join(format!("{}-{ordinal}", self.name))
    }

    /// Client endpoints (`127.0.0.1:PORT`, `https://127.0.0.1:PORT` with TLS) of the
    /// members the supervisor runs.
    pub fn client_endpoints(&self) -> Vec<String> {
        let inner = self.lock();
        let n = inner.state.workload_replicas.unwrap_or(0).max(0) as u32;
        let prefix = if inner.cluster.spec.tls.is_some() {
            "https://"
        } else {
            ""
        };
        (0..n)
            .filter_map(|o| inner.state.ports.get(&o))
            .map(|p| format!("{prefix}127.0.0.1:{}", p.client))
            .collect()
    }

    /// The files of `spec.tls` (`DIR/<cluster>/tls/`): `ca.crt`, the members'
    /// `member.crt`/`member.key` and the client certificate `client.crt`/`client.key`
    /// that `raftctl up` itself uses — and etcdctl or raftctl can too.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// How members are reached.
    pub fn access(&self) -> node::Access {
        self.lock().access.clone()
    }

    /// Issues the certificates again where [`certs::renewal`] says so (as the operator
    /// does each reconcile); members re-read the renewed files without a restart.
    /// Returns what was issued.
    pub fn renew_certificates(&self, now: SystemTime) -> Result<Vec<String>> {
        let cluster = self.cluster();
        let (access, issued) = local_tls(&self.dir, &cluster, now)?;
        self.lock().access = access;
        Ok(issued)
    }

    /// PIDs of the running member processes, by ordinal (for tests and the status view).
    pub fn pids(&self) -> BTreeMap<u32, u32> {
        self.lock()
            .processes
            .iter()
            .map(|(o, p)| (*o, p.child.id()))
            .collect()
    }

    pub fn status(&self) -> Option<RaftClusterStatus> {
        self.lock().state.status.clone()
    }

    pub fn workload_replicas(&self) -> Option<i32> {
        self.lock().state.workload_replicas
    }

    /// Credentials for an S3 backup destination (`raftctl up --s3-access-key-id ...`);
    /// without them the environment's `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` are used.
    pub fn set_s3_credentials(&self, credentials: Option<backup::S3Credentials>) {
        self.lock().s3_credentials = credentials;
    }

    /// Replaces the spec (the manifest file changed).
    pub fn set_cluster(&self, cluster: RaftCluster) {
        self.lock().cluster = cluster;
    }

    pub fn cluster(&self) -> RaftCluster {
        self.lock().cluster.clone()
    }

    /// Members a killed `raftctl up` left running hold our ports: stop them (they were
    /// started by this directory's `raftctl up`, recorded by PID, and are checked to be
    /// raft-node processes for this directory before they are signalled).
    fn stop_leftovers(&self) {
        let pids = std::mem::take(&mut self.lock().state.pids);
        for (ordinal, pid) in pids {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let ours = cmdline.contains("raft-node")
                && cmdline.contains(&self.member_dir(ordinal).display().to_string());
            if !ours {
                continue;
            }
            eprintln!(
                "stopping member {}-{ordinal} (pid {pid}) left running by an earlier raftctl up",
                self.name
            );
            signal(pid, "TERM");
            let deadline = Instant::now() + STOP_GRACE;
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                signal(pid, "KILL");
            }
        }
    }

    fn args(&self, inner: &Inner, ordinal: u32) -> Vec<String> {
        let spec = &inner.cluster.spec;
        let state = &inner.state;
        let ports = state.ports[&ordinal];
        let replicas = state.workload_replicas.unwrap_or(spec.replicas).max(1) as u32;
        let initial_cluster = (0..replicas.max(ordinal + 1))
            .map(|o| {
                format!(
                    "{}-{o}={}://127.0.0.1:{}",
                    self.name,
                    render::scheme(spec),
                    Self::advertised_peer_port(inner, o)
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let dir = self.member_dir(ordinal);
        let scheme = render::scheme(spec);
        let client = format!("{scheme}://127.0.0.1:{}", ports.client);
        let peer = format!("{scheme}://127.0.0.1:{}", ports.peer);
        let advertised_peer = format!(
            "{scheme}://127.0.0.1:{}",
            Self::advertised_peer_port(inner, ordinal)
        );
        let mut args = vec![
            format!("--name={}-{ordinal}", self.name),
            format!("--data-dir={}", dir.display()),
            format!("--wal-dir={}", dir.join("wal").display()),
            format!("--snapshot-dir={}", dir.join("snap").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={advertised_peer}"),
            format!("--listen-metrics-urls=http://127.0.0.1:{}", ports.metrics),
            format!("--initial-cluster={initial_cluster}"),
            format!(
                "--initial-cluster-state={}",
                state.initial_cluster_state.as_deref().unwrap_or("new")
            ),
            format!("--initial-cluster-token={}", state.token),
            format!("--heartbeat-interval={}", spec.timing.heartbeat_interval_ms),
            format!("--election-timeout={}", spec.timing.election_timeout_ms),
        ];
        if let Some(count) = spec.snapshot_count {
            args.push(format!("--snapshot-count={count}"));
        }
        if let Some(tls) = &spec.tls {
            let file = |name: &str| self.tls_dir().join(name).display().to_string();
            args.extend([
                format!("--cert-file={}", file("member.crt")),
                format!("--key-file={}", file("member.key")),
                format!("--trusted-ca-file={}", file("ca.crt")),
                format!("--peer-cert-file={}", file("member.crt")),
                format!("--peer-key-file={}", file("member.key")),
                format!("--peer-trusted-ca-file={}", file("ca.crt")),
                "--peer-client-cert-auth".to_string(),
            ]);
            if tls.client_cert_auth {
                args.push("--client-cert-auth".to_string());
            }
        }
        args.extend(self.node_args.iter().cloned());
        args
    }

    fn spawn(&self, inner: &mut Inner, ordinal: u32) -> Result<()> {
        let dir = self.member_dir(ordinal);
        std::fs::create_dir_all(&dir)
            .map_err(|e| local_error(format!("cannot create {}: {e}", dir.display())))?;
        let log_path = dir.join("raft-node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| local_error(format!("cannot open {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| local_error(format!("cannot open {}: {e}", log_path.display())))?;
        let args = self.args(inner, ordinal);
        let child = Command::new(&self.node_binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| local_error(format!("cannot start {}: {e}", self.node_binary.display())))?;
        inner.state.pids.insert(ordinal, child.id());
        inner.processes.insert(
            ordinal,
            Process {
                child,
                template_hash: render::template_hash(&inner.cluster.spec),
                started: Instant::now(),
                stopping_since: None,
            },
        );
        Ok(())
    }

    /// One round of the "StatefulSet controller": reap exited members, start missing
    /// ones (with back-off), stop those above the desired count. Returns lines worth
    /// telling the user.
    pub fn supervise(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let mut inner = self.lock();
        let desired = inner.state.workload_replicas.unwrap_or(0).max(0) as u32;
        let now = Instant::now();
        // Reap.
        let ordinals: Vec<u32> = inner.processes.keys().copied().collect();
        for o in ordinals {
            let process = inner.processes.get_mut(&o).expect("listed above");
            match process.child.try_wait() {
                Ok(Some(exit)) => {
                    let planned = process.stopping_since.is_some();
                    let uptime = process.started.elapsed();
                    inner.processes.remove(&o);
                    inner.state.pids.remove(&o);
                    let restarts = inner.restarts.entry(o).or_default();
                    if planned || uptime >= RESTART_BACKOFF_RESET {
                        restarts.failures = 0;
                        restarts.not_before = None;
                    }
                    if !planned {
                        restarts.failures += 1;
                        let backoff = RESTART_BACKOFF_FIRST
                            .saturating_mul(1 << restarts.failures.min(8))
                            .min(RESTART_BACKOFF_CAP);
                        restarts.not_before = Some(now + backoff);
                        notes.push(format!(
                            "member {}-{o} exited ({exit}); restarting in {} ms (see {})",
                            self.name,
                            backoff.as_millis(),
                            self.member_dir(o).join("raft-node.log").display()
                        ));
                    }
                }
                Ok(None) => {
                    if let Some(since) = process.stopping_since {
                        if now.duration_since(since) > STOP_GRACE {
                            let _ = process.child.kill();
                        }
                    }
                }
                Err(e) => notes.push(format!("member {}-{o}: cannot wait for it: {e}", self.name)),
            }
        }
        // Stop the members above the desired count.
        for (o, process) in inner.processes.iter_mut() {
            if *o >= desired && process.stopping_since.is_none() {
                signal(process.child.id(), "TERM");
                process.stopping_since = Some(now);
                notes.push(format!("stopping member {}-{o}", self.name));
            }
        }
        // Start the missing ones.
        for o in 0..desired {
            if inner.processes.contains_key(&o) {
                continue;
            }
            if inner
                .restarts
                .get(&o)
                .and_then(|r| r.not_before)
                .is_some_and(|t| now < t)
            {
                continue;
            }
            match self.spawn(&mut inner, o) {
                Ok(()) => notes.push(format!("started member {}-{o}", self.name)),
                Err(e) => notes.push(e.to_string()),
            }
        }
        let state = inner.state.clone();
        drop(inner);
        if let Err(e) = state.save(&self.dir) {
            notes.push(e.to_string());
        }
        notes
    }

    /// What exists, in the planner's terms.
    pub async fn observe(&self) -> Observed {
        let (workload_replicas, pods, endpoints, access) = {
            let inner = self.lock();
            let pods: Vec<(PodObservation, u16)> = inner
                .processes
                .iter()
                .map(|(o, p)| {
                    (
                        PodObservation {
                            ordinal: *o,
                            template_hash: Some(p.template_hash.clone()),
                            ready: false,
                            terminating: p.stopping_since.is_some(),
                        },
                        inner.state.ports[o].metrics,
                    )
                })
                .collect();
            let endpoints: Vec<String> = pods
                .iter()
                .filter(|(p, _)| !p.terminating)
                .map(|(p, _)| {
                    format!(
                        "{}://127.0.0.1:{}",
                        render::scheme(&inner.cluster.spec),
                        inner.state.ports[&p.ordinal].client
                    )
                })
                .collect();
            (
                inner.state.workload_replicas,
                pods,
                endpoints,
                inner.access.clone(),
            )
        };
        let mut observed_pods = Vec::with_capacity(pods.len());
        for (mut pod, metrics_port) in pods {
            pod.ready = tokio::task::spawn_blocking(move || readyz(metrics_port))
                .await
                .unwrap_or(false);
            observed_pods.push(pod);
        }
        let volume_ordinals = (0..=REPLICAS_MAX as u32)
            .filter(|o| self.member_dir(*o).exists())
            .collect();
        let failed_starts = {
            let inner = self.lock();
            inner
                .restarts
                .iter()
                .filter(|(o, r)| r.failures > 0 && !inner.processes.contains_key(o))
                .map(|(o, r)| {
                    let tail = log_tail(&self.member_dir(*o).join("raft-node.log"), RESTORE_LOG_TAIL_BYTES);
                    let last = tail
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .map(|l| l.chars().take(300).collect::<String>());
                    (
                        *o,
                        plan::FailedStarts {
                            count: r.failures,
                            last_error: last,
                        },
                    )
                })
                .collect()
        };
        Observed {
            failed_starts,
            workload_replicas,
            pods: observed_pods,
            volume_ordinals,
            members: access.statuses(&endpoints).await,
            now_ms: now_ms(),
        }
    }

    /// Records what the plan says the children are: the workload size (once it exists)
    /// and the cluster state new members start with.
    pub fn apply_children(&self, plan: &Plan) {
        let mut inner = self.lock();
        let bootstrap = matches!(plan.action, Some(Action::Bootstrap { .. }));
        if inner.state.workload_replicas.is_some() || bootstrap {
            inner.state.workload_replicas = Some(plan.children.workload_replicas);
        }
        inner.state.initial_cluster_state = Some(plan.children.initial_cluster_state.as_str().into());
    }

    pub fn record_status(&self, status: RaftClusterStatus) -> Result<()> {
        let mut inner = self.lock();
        inner.state.status = Some(status);
        inner.state.save(&self.dir)
    }

    /// SIGTERM to every member, then wait for all (SIGKILL after the grace period).
    pub fn stop_all(&self) {
        let mut inner = self.lock();
        for process in inner.processes.values_mut() {
            if process.stopping_since.is_none() {
                signal(process.child.id(), "TERM");
                process.stopping_since = Some(Instant::now());
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for process in inner.processes.values_mut() {
            loop {
                match process.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = process.child.kill();
                        let _ = process.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        inner.processes.clear();
        inner.state.pids.clear();
        let _ = inner.state.save(&self.dir);
    }

    /// Kills a member with SIGKILL (tests: a crash, not a planned restart).
    pub fn kill_member(&self, ordinal: u32) {
        if let Some(p) = self.lock().processes.get_mut(&ordinal) {
            let _ = p.child.kill();
        }
    }

    /// One planner round: supervise, observe, plan, carry out the step, record status.
    pub async fn round(&self) -> Round {
        let mut notes = self.supervise();
        match self.renew_certificates(SystemTime::now()) {
            Ok(issued) => notes.extend(issued),
            Err(e) => notes.push(format!("certificates: {e}")),
        }
        let observed = self.observe().await;
        let cluster = self.cluster();
        let status = self.status();
        let naming = self.naming();
        let plan = plan::plan(&cluster.spec, status.as_ref(), &observed, &naming);
        self.apply_children(&plan);
        let restore_outcome = platform::restore(self, &plan).await;
        match &restore_outcome {
            Some(Ok(f)) => notes.push(format!(
                "Restored: every member's data was restored from {} ({} bytes, sha256 {})",
                f.location, f.size, f.sha256
            )),
            Some(Err(e)) => notes.push(format!("RestoreFailed: {e}")),
            None => {}
        }
        let outcome = platform::execute(self, &plan, &naming).await;
        if let (Some(action), Err(e)) = (&plan.action, &outcome) {
            notes.push(format!("step failed: {action}: {e}"));
        }
        let backup_outcome = platform::backup(
            self,
            &self.name,
            cluster.spec.backup.as_ref(),
            &plan,
            observed.now_ms,
        )
        .await;
        for (_, reason, note) in
            k8s::backup_events(status.as_ref(), plan.backup.as_ref(), backup_outcome.as_ref())
        {
            notes.push(format!("{reason}: {note}"));
        }
        let mut rc = cluster.clone();
        rc.status = status;
        let mut new_status = k8s::status_of(
            &rc,
            &observed,
            &plan,
            &outcome.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        );
        backup::record(
            &mut new_status,
            rc.status.as_ref(),
            cluster.spec.backup.as_ref(),
            plan.backup.as_ref(),
            backup_outcome.as_ref(),
            observed.now_ms,
        );
        restore::record(
            &mut new_status,
            rc.status.as_ref(),
            &cluster.spec,
            &plan,
            restore_outcome.as_ref(),
            observed.now_ms,
        );
        crate::replace::record(
            &mut new_status,
            rc.status.as_ref(),
            &plan,
            outcome.is_ok(),
            observed.now_ms,
        );
        if let Err(e) = self.record_status(new_status.clone()) {
            notes.push(e.to_string());
        }
        Round {
            plan,
            status: new_status,
            notes,
        }
    }
}

/// The outcome of one planner round.
pub struct Round {
    pub plan: Plan,
    pub status: RaftClusterStatus,
    pub notes: Vec<String>,
}

impl Platform for LocalPlatform {
    fn access(&self) -> node::Access {
        LocalPlatform::access(self)
    }

    fn client_endpoint(&self, ordinal: u32) -> String {
        let port = self.ports(ordinal).map_or(0, |p| p.client);
        let scheme = render::scheme(&self.lock().cluster.spec);
        format!("{scheme}://127.0.0.1:{port}")
    }

    async fn scale_workload(&self, to: i32) -> Result<()> {
        self.lock().state.workload_replicas = Some(to);
        self.supervise();
        Ok(())
    }

    async fn restart_member(&self, ordinal: u32) -> Result<()> {
        let mut inner = self.lock();
        if let Some(process) = inner.processes.get_mut(&ordinal) {
            if process.stopping_since.is_none() {
                signal(process.child.id(), "TERM");
                process.stopping_since = Some(Instant::now());
            }
        }
        Ok(())
    }

    async fn delete_volumes(&self, ordinal: u32) -> Result<()> {
        if self.lock().processes.contains_key(&ordinal) {
            return Err(local_error(format!(
                "member {}-{ordinal} still runs; its directory is kept",
                self.name
            )));
        }
        let dir = self.member_dir(ordinal);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(local_error(format!("cannot delete {}: {e}", dir.display()))),
        }
    }

    async fn wipe_member(&self, ordinal: u32) -> Result<()> {
        let process = self.lock().processes.remove(&ordinal);
        if let Some(mut process) = process {
            // It is being replaced: no grace needed (its data is deleted next).
            let _ = process.child.kill();
            let _ = tokio::task::spawn_blocking(move || process.child.wait()).await;
        }
        {
            let mut inner = self.lock();
            inner.state.pids.remove(&ordinal);
            inner.restarts.remove(&ordinal);
        }
        // Everything in its directory but the logs (WAL, snapshots, the state store).
        let dir = self.member_dir(ordinal);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.flatten().collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(local_error(format!("cannot read {}: {e}", dir.display()))),
        };
        for entry in entries {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "log") {
                continue;
            }
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| local_error(format!("cannot delete {}: {e}", path.display())))?;
        }
        self.supervise();
        Ok(())
    }

    async fn backup_target(&self, destination: &BackupDestination) -> Result<backup::Target> {
        backup::validate_destination(destination).map_err(Error::Backup)?;
        if let Some(path) = &destination.path {
            return Ok(backup::Target::Dir(path.into()));
        }
        let s3 = destination.s3.as_ref().expect("validated: path or s3");
        let credentials = self
            .lock()
            .s3_credentials
            .clone()
            .or_else(|| backup::S3Credentials::from_lookup(|k| std::env::var(k).ok()))
            .ok_or_else(|| {
                Error::Backup(format!(
                    "s3://{}: no credentials: pass --s3-access-key-id and --s3-secret-access-key \
                     (or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
                    s3.bucket
                ))
            })?;
        backup::s3_target(s3, Some(credentials))
    }

    /// Fetches the backup into the cluster directory, then `raft-node restore` for each
    /// member with the flags it will start with. Any failure leaves no member data.
    async fn restore(&self, source: &BackupSource, members: i32) -> Result<restore::Fetched> {
        let location = restore::location(source);
        if !self.lock().processes.is_empty() {
            return Err(Error::Backup(format!(
                "cannot restore from {location}: members are running already"
            )));
        }
        let store = if source.s3.is_some() {
            let credentials = self
                .lock()
                .s3_credentials
                .clone()
                .or_else(|| backup::S3Credentials::from_lookup(|k| std::env::var(k).ok()))
                .ok_or_else(|| {
                    Error::Backup(format!(
                        "cannot restore from {location}: no credentials: pass --s3-access-key-id and \
                         --s3-secret-access-key (or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                    ))
                })?;
            restore::s3_store(source, Some(credentials))?
        } else {
            None
        };
        let file = self.dir.join("restore.snap.partial");
        let _ = std::fs::remove_file(&file);
        let fetched = restore::fetch(source, store.as_ref(), &file).await;
        let result = match fetched {
            Ok(fetched) => self
                .restore_members(&file, members, &location)
                .await
                .map(|()| fetched),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&file);
        result
    }
}

impl LocalPlatform {
    async fn restore_members(&self, file: &Path, members: i32, location: &str) -> Result<()> {
        let clear = |platform: &LocalPlatform| {
            for ordinal in 0..members.max(0) as u32 {
                let dir = platform.member_dir(ordinal);
                let _ = std::fs::remove_dir_all(dir.join("wal"));
                let _ = std::fs::remove_dir_all(dir.join("snap"));
            }
        };
        // Left from an attempt that failed half-way (no member ever started on it).
        clear(self);
        for ordinal in 0..members.max(0) as u32 {
            let args = {
                let inner = self.lock();
                self.args(&inner, ordinal)
            };
            // Its output goes to a file (bounded reading: only the tail is kept).
            let dir = self.member_dir(ordinal);
            std::fs::create_dir_all(&dir)
                .map_err(|e| local_error(format!("cannot create {}: {e}", dir.display())))?;
            let log_path = dir.join("restore.log");
            let log = std::fs::File::create(&log_path)
                .map_err(|e| local_error(format!("cannot create {}: {e}", log_path.display())))?;
            let log_err = log
                .try_clone()
                .map_err(|e| local_error(format!("cannot open {}: {e}", log_path.display())))?;
            let mut command = Command::new(&self.node_binary);
            command
                .arg("restore")
                .arg(format!("--snapshot={}", file.display()))
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err);
            let run =
                tokio::task::spawn_blocking(move || -> std::io::Result<Option<std::process::ExitStatus>> {
                    let mut child = command.spawn()?;
                    let deadline = Instant::now() + RESTORE_TIMEOUT;
                    loop {
                        if let Some(status) = child.try_wait()? {
                            return Ok(Some(status));
                        }
                        if Instant::now() >= deadline {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Ok(None);
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
                .await
                .map_err(|e| local_error(e.to_string()))?;
            let status = match run {
                Ok(Some(status)) => status,
                Err(e) => {
                    clear(self);
                    return Err(local_error(format!(
                        "cannot run {} restore: {e}",
                        self.node_binary.display()
                    )));
                }
                Ok(None) => {
                    clear(self);
                    return Err(Error::Backup(format!(
                        "cannot restore from {location}: raft-node restore of {}-{ordinal} took over {} s",
                        self.name,
                        RESTORE_TIMEOUT.as_secs()
                    )));
                }
            };
            if !status.success() {
                clear(self);
                let tail = log_tail(&log_path, RESTORE_LOG_TAIL_BYTES);
                let last = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
                return Err(Error::Backup(format!(
                    "cannot restore from {location}: raft-node restore of {}-{ordinal}: {}",
                    self.name,
                    last.chars().take(500).collect::<String>()
                )));
            }
        }
        Ok(())
    }
}

/// The last `bytes` bytes of a file, as text (empty when it cannot be read).
fn log_tail(path: &Path, bytes: u64) -> String {
    use std::io::Seek;
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(std::io::SeekFrom::Start(len.saturating_sub(bytes)));
    let mut buffer = Vec::with_capacity(bytes as usize);
    let _ = file.take(bytes).read_to_end(&mut buffer);
    String::from_utf8_lossy(&buffer).into_owned()
}

/// Writes `data` to `path` through a temporary file and a rename, so a reader (a member
/// re-reading its certificate) sees the old or the new file, never half of one. Keys
/// are readable by the owner only.
fn write_atomically(path: &Path, data: &str, private: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&tmp)?;
        f.write_all(data.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| local_error(format!("cannot write {}: {e}", path.display())))
}

/// `spec.tls` for local members: mode `Auto` as the operator does it, with files in
/// `DIR/tls` for Secrets (a CA made once; the member certificate, which covers
/// 127.0.0.1 and localhost and so serves every local member; the client certificate;
/// each issued again when [`certs::renewal`] says so). Mode `Secret` names Kubernetes
/// Secrets, which do not exist here: refused with a message.
fn local_tls(dir: &Path, cluster: &RaftCluster, now: SystemTime) -> Result<(node::Access, Vec<String>)> {
    let Some(tls) = &cluster.spec.tls else {
        return Ok((node::Access::plain(), Vec::new()));
    };
    if tls.mode == TlsMode::Secret {
        return Err(local_error(
            "spec.tls.mode Secret names Kubernetes Secrets; raftctl up supports mode Auto",
        ));
    }
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir)
        .map_err(|e| local_error(format!("cannot create {}: {e}", tls_dir.display())))?;
    let read = |name: &str| std::fs::read_to_string(tls_dir.join(name)).ok();
    let mut issued = Vec::new();
    let ca = match (read("ca.crt"), read("ca.key")) {
        (Some(cert), Some(key)) => certs::Pem { cert, key },
        _ => {
            let ca = certs::new_authority(&format!("local/{}", cluster.name_any()), now)?;
            write_atomically(&tls_dir.join("ca.key"), &ca.key, true)?;
            write_atomically(&tls_dir.join("ca.crt"), &ca.cert, false)?;
            issued.push(format!("created a CA in {}", tls_dir.display()));
            ca
        }
    };
    let valid_for = Duration::from_secs(u64::from(tls.certificate_validity_days) * 86_400);
    let renew_before = Duration::from_secs(u64::from(tls.renew_before_days) * 86_400);
    let requests = [
        (
            "member",
            certs::Request {
                common_name: format!("{} member", cluster.name_any()),
                names: vec!["localhost".into(), "127.0.0.1".into()],
                server: true,
            },
        ),
        (
            "client",
            certs::Request {
                common_name: certs::OPERATOR_CN.into(),
                names: Vec::new(),
                server: false,
            },
        ),
    ];
    let mut client = None;
    for (stem, request) in requests {
        let (cert_file, key_file) = (format!("{stem}.crt"), format!("{stem}.key"));
        let current = read(&cert_file).zip(read(&key_file));
        let why = certs::renewal(
            current.as_ref().map(|(c, _)| c.as_str()),
            &ca.cert,
            &request,
            now,
            renew_before,
        );
        let pem = match (why, current) {
            (None, Some((cert, key))) => certs::Pem { cert, key },
            (why, _) => {
                let pem = certs::issue(&ca, &request, now, valid_for)?;
                // Key first: a member that sees the new certificate finds its key.
                write_atomically(&tls_dir.join(&key_file), &pem.key, true)?;
                write_atomically(&tls_dir.join(&cert_file), &pem.cert, false)?;
                issued.push(format!(
                    "issued {} ({}): {}",
                    request.common_name,
                    tls_dir.join(&cert_file).display(),
                    why.unwrap_or_default()
                ));
                pem
            }
        };
        if !request.server {
            client = Some(pem);
        }
    }
    let client = client.expect("the client certificate is among the requests");
    Ok((
        node::Access::tls(&ca.cert, Some((&client.cert, &client.key))),
        issued,
    ))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sends a signal by PID with kill(1) (the workspace forbids `unsafe`, and only PIDs
/// this module started are ever signalled).
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `GET /readyz` on the metrics port answers 200.
fn readyz(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(PROBE_TIMEOUT));
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    head[..got].starts_with(b"HTTP/1.1 200") || head[..got].starts_with(b"HTTP/1.0 200")
}

/// The live view: members, roles, leader, timing and the step underway.
pub fn render_view(platform: &LocalPlatform, round: &Round) -> String {
    let status = &round.status;
    let mut out = String::new();
    let phase = status.phase.as_deref().unwrap_or("-");
    let leader = status.leader.as_deref().unwrap_or("none");
    out.push_str(&format!(
        "cluster {}  phase {phase}  leader {leader}  term {}\n",
        platform.name,
        status.term.map_or("-".into(), |t| t.to_string())
    ));
    let pids = platform.pids();
    let mut lines = vec![];
    for m in &status.members {
        let ordinal = platform.naming().ordinal_of(&m.name, "");
        let endpoint = ordinal
            .and_then(|o| platform.ports(o))
            .map_or("-".into(), |p| format!("127.0.0.1:{}", p.client));
        lines.push(vec![
            m.name.clone(),
            m.role.clone(),
            if m.healthy {
                "healthy".into()
            } else {
                "unhealthy".into()
            },
            m.match_index.to_string(),
            m.rtt_ms.map_or("-".into(), |r| format!("{r:.2}")),
            endpoint,
            ordinal
                .and_then(|o| pids.get(&o))
                .map_or("-".into(), |p| p.to_string()),
        ]);
    }
    if !lines.is_empty() {
        out.push_str(&crate::ctl::render(
            &[
                "MEMBER",
                "ROLE",
                "HEALTH",
                "MATCH",
                "RTT_P99_MS",
                "ENDPOINT",
                "PID",
            ],
            &lines,
        ));
    }
    if let Some(t) = &status.timing {
        out.push_str(&format!(
            "timing: heartbeat {} ms, election {} ms ({:?}); rtt p99 {}, fsync p99 {}\n",
            t.heartbeat_interval_ms,
            t.election_timeout_ms,
            platform.cluster().spec.timing.mode,
            t.rtt_p99_ms.map_or("-".into(), |v| format!("{v:.2} ms")),
            t.fsync_p99_ms.map_or("-".into(), |v| format!("{v:.2} ms")),
        ));
    }
    if let Some(b) = &status.last_backup {
        out.push_str(&format!(
            "last backup: {} (revision {}, {} bytes, sha256 {}, from {})\n",
            b.location,
            b.revision,
            b.size,
            &b.checksum[..b.checksum.len().min(12)],
            b.member
        ));
    }
    if let Some(s) = &status.backup_schedule {
        match (&s.last_error, &s.next_time) {
            (Some(e), _) => out.push_str(&format!("backup: {e}\n")),
            (None, Some(next)) => out.push_str(&format!("next backup: {next}\n")),
            (None, None) => {}
        }
    }
    if let Some(r) = &status.restore {
        match (&r.last_error, r.succeeded) {
            (_, true) => out.push_str(&format!("restored from: {}\n", r.location)),
            (Some(e), false) => out.push_str(&format!(
                "restore: {e} (attempt {}; next at {})\n",
                r.failures,
                r.next_attempt_time.as_deref().unwrap_or("-")
            )),
            (None, false) => {}
        }
    }
    let doing = match &round.plan.action {
        None => "steady".to_string(),
        Some(a) => a.to_string(),
    };
    out.push_str(&format!("now: {doing}\n"));
    if let Some(reason) = &round.plan.degraded {
        out.push_str(&format!("degraded: {reason}\n"));
    }
    out
}

/// The live view of `raftctl up`. On a terminal the view redraws in place: while it
/// is the last thing printed, a new view moves the cursor back over the old one and
/// clears it; lines printed in between (notes, the endpoints) stay where they are and
/// the view starts again below them. Elsewhere (a pipe, a log file) a view is printed
/// whole when it changed.
pub struct LiveView {
    tty: bool,
    /// Lines of the view now at the bottom of the terminal (0: something else is).
    lines_on_screen: usize,
    last: String,
}

impl LiveView {
    pub fn new(tty: bool) -> LiveView {
        LiveView {
            tty,
            lines_on_screen: 0,
            last: String::new(),
        }
    }

    /// Prints a line that stays (the view is redrawn below it).
    pub fn note(&mut self, text: &str) {
        println!("{text}");
        self.lines_on_screen = 0;
    }

    /// What to print for `view`: nothing when it did not change since it was drawn,
    /// else the view, preceded on a terminal by the escape sequences that erase the
    /// previous one (cursor up over its lines, clear to the end of the screen).
    pub fn frame(&mut self, view: &str) -> Option<String> {
        if view == self.last && (self.lines_on_screen > 0 || !self.tty) {
            return None;
        }
        let mut out = String::new();
        if self.tty && self.lines_on_screen > 0 {
            out.push_str(&format!("\x1b[{}A\x1b[J", self.lines_on_screen));
        }
        let mut body = view.to_string();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        self.lines_on_screen = body.matches('\n').count();
        out.push_str(&body);
        self.last = view.to_string();
        Some(out)
    }
}

/// `raftctl up`: runs until `shutdown` resolves, then stops every member cleanly.
pub async fn up(config: UpConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let (cluster, mut manifest_stamp) = read_manifest(&config.manifest)?;
    if !config.node_binary.exists() {
        return Err(local_error(format!(
            "raft-node binary not found at {} (build it with `cargo build --release -p kuberaft-node`, or pass --node-binary)",
            config.node_binary.display()
        )));
    }
    let platform = LocalPlatform::open(
        cluster,
        &config.data_dir,
        config.node_binary.clone(),
        config.node_args.clone(),
    )?;
    platform.set_s3_credentials(config.s3_credentials.clone());
    println!(
        "raftctl up: cluster {} in {} (members' logs in <member>/raft-node.log); Ctrl-C stops it",
        platform.name,
        platform.dir.display()
    );
    let mut live = LiveView::new(std::io::stdout().is_terminal());
    let mut shown_endpoints = Vec::new();
    tokio::pin!(shutdown);
    loop {
        if let Some((stamp, result)) = manifest_changed(&config.manifest, manifest_stamp) {
            manifest_stamp = stamp;
            match result {
                Ok(cluster) if cluster.name_any() != platform.name => live.note(&format!(
                    "manifest: metadata.name changed to {:?}; ignored (this run manages {:?})",
                    cluster.name_any(),
                    platform.name
                )),
                Ok(cluster) => {
                    live.note("manifest: applied the new spec");
                    platform.set_cluster(cluster);
                }
                Err(e) => live.note(&format!("manifest: {e}; keeping the running spec")),
            }
        }
        let round = platform.round().await;
        for note in &round.notes {
            live.note(note);
        }
        let endpoints = platform.client_endpoints();
        if round.plan.available() && endpoints != shown_endpoints {
            let tls_flags = if platform.cluster().spec.tls.is_some() {
                let dir = platform.tls_dir();
                format!(
                    " --cacert {0}/ca.crt --cert {0}/client.crt --key {0}/client.key",
                    dir.display()
                )
            } else {
                String::new()
            };
            live.note(&format!(
                "\nclient endpoints: {}\ntry: ETCDCTL_API=3 etcdctl --endpoints {}{tls_flags} put hello world\n",
                endpoints.join(","),
                endpoints.join(",")
            ));
            shown_endpoints = endpoints;
        }
        if let Some(frame) = live.frame(&render_view(&platform, &round)) {
            print!("{frame}");
        }
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(config.interval) => {}
        }
    }
    println!("stopping members...");
    let stopper = platform.clone();
    tokio::task::spawn_blocking(move || stopper.stop_all())
        .await
        .map_err(|e| local_error(e.to_string()))?;
    println!("stopped; data kept in {}", platform.dir.display());
    Ok(())
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp_of(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read_manifest(path: &Path) -> Result<(RaftCluster, Stamp)> {
    let stamp = stamp_of(path);
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Manifest(format!("cannot read {}: {e}", path.display())))?;
    let cluster = render::parse_manifest(&text)?;
    Ok((cluster, stamp))
}

fn manifest_changed(path: &Path, previous: Stamp) -> Option<(Stamp, Result<RaftCluster>)> {
    let stamp = stamp_of(path);
    if stamp == previous || stamp.is_none() {
        return None;
    }
    Some((stamp, read_manifest(path).map(|(c, _)| c)))
}

#[cfg(test)]
mod tests {
    use super::LiveView;

    #[test]
    fn on_a_terminal_the_view_redraws_over_itself_and_below_notes() {
        let mut live = LiveView::new(true);
        assert_eq!(live.frame("a\nb\n").as_deref(), Some("a\nb\n"));
        assert_eq!(live.frame("a\nb\n"), None, "unchanged: nothing printed");
        // Cursor up over the two lines, clear to the end, the new view.
        assert_eq!(live.frame("a\nc\nd").as_deref(), Some("\x1b[2A\x1b[Ja\nc\nd\n"));
        assert_eq!(live.frame("x").as_deref(), Some("\x1b[3A\x1b[Jx\n"));
        // A note stays: the same view is drawn again below it, erasing nothing.
        live.lines_on_screen = 0; // what `note` does, without printing in a test
        assert_eq!(live.frame("x").as_deref(), Some("x\n"));
        assert_eq!(live.frame("y").as_deref(), Some("\x1b[1A\x1b[Jy\n"));
    }

    #[test]
    fn elsewhere_a_changed_view_is_printed_whole_without_escapes() {
        let mut live = LiveView::new(false);
        assert_eq!(live.frame("a\nb").as_deref(), Some("a\nb\n"));
        assert_eq!(live.frame("a\nb"), None);
        assert_eq!(live.frame("a\nc").as_deref(), Some("a\nc\n"));
        live.lines_on_screen = 0;
        assert_eq!(live.frame("a\nc"), None, "a log is not repeated after a note");
    }
}
