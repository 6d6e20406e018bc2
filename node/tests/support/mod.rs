//! The process harness shared by the multi-process tests: real `raft-node`
//! processes on 127.0.0.1, their metrics, and etcd clients.
//!
//! Every wait is bounded, and every process started here is ended by its PID when
//! the cluster is dropped (also when a test fails).
#![allow(dead_code)] // each test crate uses a different part

pub mod proxy;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};

/// `n` distinct free ports, chosen below the kernel's ephemeral range: a port from that
/// range, released here and bound by a child process a moment later, can meanwhile be
/// taken by any outgoing connection of a concurrent test. Every candidate is bound
/// until all are chosen. (The same rule as `kuberaft_operator::local::reserve_ports`.)
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u32>().ok()))
        .unwrap_or(32_768)
        .clamp(LOWEST + 1_000, 65_535);
    let span = ephemeral_low - LOWEST;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = (std::process::id().wrapping_mul(7_919) ^ nonce)
        .wrapping_add(NEXT.fetch_add(n as u32 * 3, Ordering::Relaxed))
        % span;
    let held: Vec<std::net::TcpListener> = (0..span)
        .filter_map(|k| std::net::TcpListener::bind(("127.0.0.1", (LOWEST + (start + k) % span) as u16)).ok())
        .take(n)
        .collect();
    assert_eq!(held.len(), n, "not enough free ports below {ephemeral_low}");
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

pub struct Member {
    pub name: String,
    pub client: u16,
    pub peer: u16,
    pub metrics: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub extra: Vec<String>,
    /// Where the other members reach this one's peer port when not directly (a proxy
    /// in front of `peer`).
    pub peer_via: Option<u16>,
}

pub struct ProcCluster {
    pub members: Vec<Member>,
    pub token: String,
    /// `http` or `https` (with the TLS flags in the members' extra arguments).
    pub client_scheme: &'static str,
    pub peer_scheme: &'static str,
    _base: tempfile::TempDir,
}

impl ProcCluster {
    pub fn start(size: usize, extra: &[&str]) -> ProcCluster {
        Self::start_with_schemes(size, extra, "http", "http")
    }

    /// Like `start`, with `https` client and/or peer URLs (the TLS flags go in `extra`).
    pub fn start_with_schemes(
        size: usize,
        extra: &[&str],
        client_scheme: &'static str,
        peer_scheme: &'static str,
    ) -> ProcCluster {
        let mut cluster = ProcCluster::new(size, extra);
        cluster.client_scheme = client_scheme;
        cluster.peer_scheme = peer_scheme;
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster
    }

    /// The members and their ports, none started yet (`spawn` each).
    pub fn new(size: usize, extra: &[&str]) -> ProcCluster {
        let base = tempfile::tempdir().unwrap();
        let ports = free_ports(3 * size);
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: ports[3 * i],
                peer: ports[3 * i + 1],
                metrics: ports[3 * i + 2],
                dir: base.path().join(format!("m{i}")),
                child: None,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                peer_via: None,
            })
            .collect();
        ProcCluster {
            members,
            token: format!("test-{}", std::process::id()),
            client_scheme: "http",
            peer_scheme: "http",
            _base: base,
        }
    }

    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let port = m.peer_via.unwrap_or(m.peer);
                format!("{}={}://127.0.0.1:{port}", m.name, self.peer_scheme)
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let token = self.token.clone();
        let (client_scheme, peer_scheme) = (self.client_scheme, self.peer_scheme);
        let m = &mut self.members[i];
        std::fs::create_dir_all(&m.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.join("log.txt"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_raft-node"))
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.dir.display()))
            .arg(format!(
                "--listen-client-urls={client_scheme}://127.0.0.1:{}",
                m.client
            ))
            .arg(format!("--listen-peer-urls={peer_scheme}://127.0.0.1:{}", m.peer))
            // Behind a proxy, a member advertises the proxy (it also publishes this URL
            // in the replicated member table, which peers follow).
            .arg(format!(
                "--initial-advertise-peer-urls={peer_scheme}://127.0.0.1:{}",
                m.peer_via.unwrap_or(m.peer)
            ))
            .arg(format!("--listen-metrics-urls=http://127.0.0.1:{}", m.metrics))
            .arg(format!("--initial-cluster={initial}"))
            .arg(format!("--initial-cluster-token={token}"))
            .args(&m.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        m.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.members[i].child.as_ref().unwrap().id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client)
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// A metric of member `i`, from its /metrics endpoint.
    pub fn metric(&self, i: usize, name: &str) -> Option<u64> {
        let body = http_get(self.members[i].metrics, "/metrics")?;
        body.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn wait_for_leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            for &i in among {
                if self.metric(i, "kuberaft_role") == Some(3) {
                    return i;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no leader among {among:?} within 20 s");
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.members[i].dir.join("log.txt")).unwrap_or_default()
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() {
                let _ = Command::new("kill")
                    .arg("-CONT")
                    .arg(self.members[i].child.as_ref().unwrap().id().to_string())
                    .status();
            }
            self.kill(i);
        }
    }
}

pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().ok()?,
        Duration::from_millis(500),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

pub fn etcdctl(endpoint: &str, args: &[&str]) -> (bool, String) {
    etcdctl_bin("etcdctl", endpoint, args)
}

/// [`etcdctl`] with the given etcdctl binary (a path, or a name found on `PATH`).
pub fn etcdctl_bin(etcdctl: &str, endpoint: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=5s")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{etcdctl} is required (Debian package etcd-client, or scripts/go-peers.sh; scripts/test.sh installs both): {e}")
        });
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

pub async fn client(endpoints: &[String]) -> Client {
    // Generous: CI machines are shared and noisy; the tests assert outcomes, not speed.
    let options = ConnectOptions::new()
        .with_timeout(Duration::from_secs(10))
        .with_connect_timeout(Duration::from_secs(1));
    Client::connect(endpoints, Some(options)).await.unwrap()
}

/// Reads `key` serializably from one member, waiting up to `within` for it to appear.
pub async fn value_on(endpoint: &str, key: &str, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut c = client(&[endpoint.to_string()]).await;
    loop {
        if let Ok(response) = c.get(key, Some(GetOptions::new().with_serializable())).await {
            if let Some(kv) = response.kvs().first() {
                return Some(kv.value().to_vec());
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real etcd cluster on free 127.0.0.1 ports with its own data directories, for
/// side-by-side comparison: etcd 3.4 (`/usr/bin/etcd`, Debian `etcd-server`) by
/// default, or any etcd binary ([`EtcdCluster::start_bin`], e.g. etcd 3.6 built by
/// `scripts/go-peers.sh`). Members are named `m0`, `m1`, ... as in [`ProcCluster`];
/// every process is ended by its PID when the cluster is dropped.
pub struct EtcdCluster {
    pub names: Vec<String>,
    pub clients: Vec<u16>,
    pub peers: Vec<u16>,
    children: Vec<Child>,
    pub base: tempfile::TempDir,
    /// The etcdctl that [`EtcdCluster::wait_ready`] asks.
    etcdctl: String,
}

impl EtcdCluster {
    pub fn start(size: usize) -> EtcdCluster {
        EtcdCluster::start_bin("etcd", "etcdctl", size)
    }

    /// A cluster of the etcd binary `etcd` (a path, or a name found on `PATH`), probed
    /// with the etcdctl binary `etcdctl`.
    pub fn start_bin(etcd: &str, etcdctl: &str, size: usize) -> EtcdCluster {
        let base = tempfile::tempdir().unwrap();
        let ports = free_ports(2 * size);
        let names: Vec<String> = (0..size).map(|i| format!("m{i}")).collect();
        let clients: Vec<u16> = (0..size).map(|i| ports[2 * i]).collect();
        let peers: Vec<u16> = (0..size).map(|i| ports[2 * i + 1]).collect();
        let initial = (0..size)
            .map(|i| format!("{}=http://127.0.0.1:{}", names[i], peers[i]))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("etcd-{}", std::process::id());
        let children = (0..size)
            .map(|i| {
                let dir = base.path().join(&names[i]);
                std::fs::create_dir_all(&dir).unwrap();
                let log = std::fs::File::create(base.path().join(format!("{}.log", names[i]))).unwrap();
                Command::new(etcd)
                    .arg(format!("--name={}", names[i]))
                    .arg(format!("--data-dir={}", dir.join("data").display()))
                    .arg(format!("--listen-client-urls=http://127.0.0.1:{}", clients[i]))
                    .arg(format!("--advertise-client-urls=http://127.0.0.1:{}", clients[i]))
                    .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", peers[i]))
                    .arg(format!(
                        "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                        peers[i]
                    ))
                    .arg(format!("--initial-cluster={initial}"))
                    .arg(format!("--initial-cluster-token={token}"))
                    .arg("--initial-cluster-state=new")
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!(
                            "{etcd} is required (Debian package etcd-server, or scripts/go-peers.sh; \
                             scripts/test.sh installs both): {e}"
                        )
                    })
            })
            .collect();
        EtcdCluster {
            names,
            clients,
            peers,
            children,
            base,
            etcdctl: etcdctl.to_string(),
        }
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.clients[i])
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..self.clients.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Waits (bounded) until every member answers a linearizable read.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..self.clients.len() {
            loop {
                let (ok, out) = etcdctl_bin(&self.etcdctl, &self.endpoint(i), &["get", "readiness-probe"]);
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd m{i} not ready within 60 s: {out}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

impl EtcdCluster {
    /// kill -9 of member `i` (by its PID).
    pub fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }

    /// The member that says it leads (`etcd_server_is_leader 1` on its client port's
    /// /metrics), waiting up to 20 s; `among` are the members still running.
    pub fn wait_for_leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            for &i in among {
                let leads = http_get(self.clients[i], "/metrics")
                    .is_some_and(|body| body.lines().any(|l| l.trim() == "etcd_server_is_leader 1"));
                if leads {
                    return i;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no etcd leader among {among:?} within 20 s");
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `command` to its end, within `limit` (then it is killed by its PID).
pub fn run_bounded(mut command: Command, limit: Duration) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let mut err = std::fs::read_to_string(&err_path).unwrap_or_default();
    if status.is_none() {
        err.push_str(&format!("\n(killed after {limit:?})"));
    }
    (status.is_some_and(|s| s.success()), out, err)
}
