//! kubectl, driven from the tests: every call has a deadline, every wait is bounded, and
//! the port-forwards started here are ended by their PID when dropped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// Longest any single kubectl call may take (waits poll with short calls instead).
const KUBECTL_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What one kubectl call printed, and whether it succeeded.
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs kubectl with `args` (and `stdin`, if any), killing it after the call timeout.
pub fn kubectl_raw(args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl (is it on PATH?)")?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())?;
    }
    // Drain the pipes on threads so a large answer cannot block the child.
    let mut out_pipe = child.stdout.take().expect("stdout is piped");
    let mut err_pipe = child.stderr.take().expect("stderr is piped");
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out_pipe, &mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err_pipe, &mut s);
        s
    });
    let deadline = Instant::now() + KUBECTL_CALL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "kubectl {} took longer than {KUBECTL_CALL_TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Output {
        success: status.success(),
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    })
}

/// Runs kubectl and returns its standard output; an error carries kubectl's message.
pub fn kubectl(args: &[&str]) -> Result<String> {
    let out = kubectl_raw(args, None)?;
    if !out.success {
        bail!("kubectl {} failed: {}", args.join(" "), out.stderr.trim());
    }
    Ok(out.stdout)
}

pub fn kubectl_json(args: &[&str]) -> Result<Value> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", "json"]);
    let text = kubectl(&all)?;
    serde_json::from_str(&text).with_context(|| format!("kubectl {} printed no JSON", args.join(" ")))
}

/// Calls `probe` every `every` until it returns `Some`, failing after `timeout` with the
/// last error or state it reported.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last: String;
    loop {
        match probe() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => last = "not yet".into(),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("{what}: not reached within {timeout:?} (last: {last})");
        }
        std::thread::sleep(every);
    }
}

/// A namespace of its own for one test; deleted (without waiting) when dropped, unless
/// KUBERAFT_KIND_KEEP is set, so that a failure can be looked at.
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn create(name: &str) -> Result<Namespace> {
        // A namespace left by an earlier run of the same test is removed first.
        let _ = kubectl(&[
            "delete",
            "namespace",
            name,
            "--ignore-not-found",
            "--timeout=180s",
        ]);
        kubectl(&["create", "namespace", name])?;
        Ok(Namespace { name: name.into() })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if std::env::var_os("KUBERAFT_KIND_KEEP").is_none() {
            let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
        }
    }
}

/// The RaftCluster `name` in `namespace`, and the Kubernetes objects the operator made
/// for it (found through owner references, so the test does not depend on naming).
pub struct Raft {
    pub namespace: String,
    pub name: String,
}

/// One raft-node pod as the test sees it.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub uid: String,
    pub ready: bool,
    pub deleting: bool,
    pub annotations: BTreeMap<String, String>,
}

impl Raft {
    /// Applies `manifest`, which holds the RaftCluster `name`.
    pub fn apply(namespace: &str, name: &str, manifest: &str) -> Result<Raft> {
        let out = kubectl_raw(&["apply", "-n", namespace, "-f", "-"], Some(manifest))?;
        if !out.success {
            bail!("kubectl apply failed: {}", out.stderr.trim());
        }
        Ok(Raft {
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    fn ns_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        all
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl(&self.ns_args(args))
    }

    pub fn json(&self, args: &[&str]) -> Result<Value> {
        kubectl_json(&self.ns_args(args))
    }

    pub fn resource(&self) -> Result<Value> {
        self.json(&["get", "raftcluster", &self.name])
    }

    pub fn uid(&self) -> Result<String> {
        Ok(self.resource()?["metadata"]["uid"]
            .as_str()
            .ok_or_else(|| anyhow!("RaftCluster without uid"))?
            .to_string())
    }

    /// The condition `kind` of the RaftCluster's status is True.
    pub fn condition_true(&self, kind: &str) -> Result<bool> {
        let raft = self.resource()?;
        let conditions = raft["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(conditions
            .iter()
            .any(|c| c["type"] == kind && c["status"] == "True"))
    }

    /// Waits until the cluster is Available with `replicas` voters and ready pods.
    pub fn wait_available(&self, replicas: usize, timeout: Duration) -> Result<()> {
        wait_for(
            &format!(
                "RaftCluster {} Available with {replicas} ready members",
                self.name
            ),
            timeout,
            Duration::from_secs(2),
            || {
                let raft = self.resource()?;
                let status = &raft["status"];
                let ready = status["readyReplicas"].as_u64().unwrap_or(0) as usize;
                let voters = status["replicas"].as_u64().unwrap_or(0) as usize;
                let pods = self.pods()?;
                let ok = self.condition_true("Available")?
                    && ready == replicas
                    && voters == replicas
                    && pods.len() == replicas
                    && pods.iter().all(|p| p.ready && !p.deleting);
                Ok(ok.then_some(()))
            },
        )
    }

    /// The StatefulSet owned by this RaftCluster.
    pub fn statefulset(&self) -> Result<Value> {
        let uid = self.uid()?;
        let list = self.json(&["get", "statefulsets"])?;
        let owned: Vec<Value> = items(&list).into_iter().filter(|s| owned_by(s, &uid)).collect();
        match owned.as_slice() {
            [one] => Ok(one.clone()),
            other => bail!(
                "expected one StatefulSet owned by {}, found {}",
                self.name,
                other.len()
            ),
        }
    }

    /// The pods of the cluster, by the StatefulSet's selector, ordered by name.
    pub fn pods(&self) -> Result<Vec<Pod>> {
        let sts = self.statefulset()?;
        let selector = sts["spec"]["selector"]["matchLabels"]
            .as_object()
            .ok_or_else(|| anyhow!("StatefulSet without matchLabels"))?
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(",");
        let list = self.json(&["get", "pods", "-l", &selector])?;
        let mut pods: Vec<Pod> = items(&list)
            .iter()
            .map(|p| Pod {
                name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
                uid: p["metadata"]["uid"].as_str().unwrap_or_default().into(),
                deleting: !p["metadata"]["deletionTimestamp"].is_null(),
                ready: p["status"]["conditions"]
                    .as_array()
                    .map(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                    .unwrap_or(false),
                annotations: p["metadata"]["annotations"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pods)
    }

    /// A pod's container port named `name` (raft-node's "client" or "metrics").
    pub fn container_port(&self, pod: &str, name: &str, default: u16) -> Result<u16> {
        let p = self.json(&["get", "pod", pod])?;
        let mut containers = p["spec"]["containers"].as_array().cloned().unwrap_or_default();
        containers.extend(
            p["spec"]["initContainers"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        Ok(containers
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|port| port["name"] == name)
            .and_then(|port| port["containerPort"].as_u64())
            .map(|p| p as u16)
            .unwrap_or(default))
    }

    /// The pod's Prometheus metrics, read through the API server's pod proxy.
    pub fn metrics(&self, pod: &str) -> Result<BTreeMap<String, f64>> {
        let port = self.container_port(pod, "metrics", 2381)?;
        let path = format!(
            "/api/v1/namespaces/{}/pods/{pod}:{port}/proxy/metrics",
            self.namespace
        );
        let text = kubectl(&["get", "--raw", &path, "--request-timeout=10s"])?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect())
    }

    /// The member that is leader now, by the nodes' own `kuberaft_role` (3 = leader):
    /// exactly one pod must say so.
    pub fn leader(&self) -> Result<String> {
        wait_for(
            &format!("one leader in {}", self.name),
            Duration::from_secs(90),
            Duration::from_secs(1),
            || {
                let mut leaders = Vec::new();
                for pod in self.pods()? {
                    if pod.deleting {
                        continue;
                    }
                    if let Ok(m) = self.metrics(&pod.name) {
                        if m.get("kuberaft_role") == Some(&3.0) {
                            leaders.push(pod.name);
                        }
                    }
                }
                Ok((leaders.len() == 1).then(|| leaders.remove(0)))
            },
        )
    }

    /// Names of the PersistentVolumeClaims of ordinal `ordinal`, from the StatefulSet's
    /// volumeClaimTemplates (`<template>-<statefulset>-<ordinal>`).
    pub fn claim_names(&self, ordinal: usize) -> Result<Vec<String>> {
        let sts = self.statefulset()?;
        let sts_name = sts["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let templates = sts["spec"]["volumeClaimTemplates"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if templates.is_empty() {
            bail!("StatefulSet {sts_name} has no volumeClaimTemplates");
        }
        Ok(templates
            .iter()
            .map(|t| {
                format!(
                    "{}-{sts_name}-{ordinal}",
                    t["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect())
    }

    /// Name -> uid of every PersistentVolumeClaim in the namespace.
    pub fn claims(&self) -> Result<BTreeMap<String, String>> {
        let list = self.json(&["get", "persistentvolumeclaims"])?;
        Ok(items(&list)
            .iter()
            .map(|c| {
                (
                    c["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                    c["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// A `kubectl port-forward` to the pod's client port.
    pub fn forward_client(&self, pod: &str) -> Result<PortForward> {
        let port = self.container_port(pod, "client", 2379)?;
        PortForward::start(&self.namespace, &format!("pod/{pod}"), port)
    }
}

pub fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

pub fn owned_by(object: &Value, uid: &str) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .map(|refs| refs.iter().any(|r| r["uid"] == uid))
        .unwrap_or(false)
}

/// `kubectl port-forward` to a local port chosen by kubectl; ended by its PID on drop.
pub struct PortForward {
    child: Child,
    pub local_port: u16,
}

impl PortForward {
    pub fn start(namespace: &str, target: &str, remote_port: u16) -> Result<PortForward> {
        let mut child = Command::new("kubectl")
            .args([
                "port-forward",
                "-n",
                namespace,
                target,
                &format!(":{remote_port}"),
            ])
            .args(["--address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting kubectl port-forward")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // "Forwarding from 127.0.0.1:40123 -> 2379"; the rest is drained until exit.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                        let port = rest.split_whitespace().next().unwrap_or_default().parse()?;
                        return Ok(PortForward {
                            child,
                            local_port: port,
                        });
                    }
                }
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("kubectl port-forward {target} did not report a local port within 30s")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.local_port)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
