//! The kind suite: RaftClusters on a real Kubernetes cluster, run by the operator installed
//! from the Helm chart, driven with kubectl and checked through the nodes' own metrics and
//! etcd clients.
//!
//! `bash e2e/kind/run.sh` creates the kind cluster, loads the images, installs the chart and
//! runs `KUBERAFT_KIND=1 cargo test -p kuberaft-e2e --test kind -- --ignored --test-threads 1`.
//! Plain `cargo test` reports every test here as ignored, with the reason; run with
//! `--ignored` but without a cluster (KUBERAFT_KIND unset, or kubectl cannot reach one), each
//! test fails and says why: a missing cluster is never a pass.
//!
//! Each test has a namespace of its own, deleted at the end (kept when KUBERAFT_KIND_KEEP is
//! set). Images: KUBERAFT_NODE_IMAGE (default `ghcr.io/kuberaft/raft-node:0.1.0`, the tag
//! run.sh loads).

mod kube;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::Client;

use kube::{items, kubectl_raw, owned_by, wait_for, Namespace, Raft};

const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(300);
const ROLL_TIMEOUT: Duration = Duration::from_secs(600);
const ETCD_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Fails the test, with the reason, when there is no kind cluster to run against.
fn require_kind_cluster() {
    if std::env::var("KUBERAFT_KIND").as_deref() != Ok("1") {
        panic!(
            "KUBERAFT_KIND=1 is not set, so no kind cluster was prepared for this run. \
             Run `bash e2e/kind/run.sh` (needs Docker and kind); it sets it."
        );
    }
    match kubectl_raw(&["get", "crd", "raftclusters.kuberaft.io", "-o", "name"], None) {
        Ok(out) if out.success => {}
        Ok(out) => panic!("the RaftCluster CRD is not installed: {}", out.stderr.trim()),
        Err(e) => panic!("kubectl cannot reach a cluster: {e:#}"),
    }
}

fn node_image() -> String {
    std::env::var("KUBERAFT_NODE_IMAGE").unwrap_or_else(|_| "ghcr.io/kuberaft/raft-node:0.1.0".into())
}

fn manifest(name: &str, replicas: u32, reclaim_policy: &str) -> String {
    format!(
        "apiVersion: kuberaft.io/v1alpha1
kind: RaftCluster
metadata:
  name: {name}
spec:
  replicas: {replicas}
  image: {image}
  imagePullPolicy: IfNotPresent
  storage:
    wal: {{size: 64Mi}}
    snapshots: {{size: 64Mi}}
    reclaimPolicy: {reclaim_policy}
",
        image = node_image()
    )
}

/// A namespace and an Available 3-member cluster in it.
fn available_cluster(namespace: &str, reclaim_policy: &str) -> Result<(Namespace, Raft)> {
    let ns = Namespace::create(namespace)?;
    let raft = Raft::apply(&ns.name, "e2e", &manifest("e2e", 3, reclaim_policy))?;
    raft.wait_available(3, AVAILABLE_TIMEOUT)?;
    Ok((ns, raft))
}

async fn client(endpoint: &str) -> Result<Client> {
    let connect = Client::connect([endpoint], None);
    Ok(tokio::time::timeout(ETCD_CALL_TIMEOUT, connect)
        .await
        .context("connecting timed out")??)
}

async fn put(endpoint: &str, key: &str, value: &str) -> Result<()> {
    let mut c = client(endpoint).await?;
    tokio::time::timeout(ETCD_CALL_TIMEOUT, c.put(key, value, None))
        .await
        .context("put timed out")??;
    Ok(())
}

async fn get(endpoint: &str, key: &str) -> Result<Option<String>> {
    let mut c = client(endpoint).await?;
    let resp = tokio::time::timeout(ETCD_CALL_TIMEOUT, c.get(key, None))
        .await
        .context("get timed out")??;
    Ok(match resp.kvs().first() {
        Some(kv) => Some(kv.value_str()?.to_string()),
        None => None,
    })
}

/// Writes through `pod`, retrying (new port-forward each time) until `timeout`.
async fn put_through(raft: &Raft, pod: &str, key: &str, value: &str, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match raft.forward_client(pod) {
            Ok(forward) => match put(&forward.endpoint(), key, value).await {
                Ok(()) => return Ok(start.elapsed()),
                Err(e) => last = format!("{e:#}"),
            },
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("no write through {pod} succeeded within {timeout:?}: {last}")
}

async fn get_through(raft: &Raft, pod: &str, key: &str) -> Result<Option<String>> {
    let forward = raft.forward_client(pod)?;
    get(&forward.endpoint(), key).await
}

#[tokio::test]
#[ignore = "needs a kind cluster with the operator installed: bash e2e/kind/run.sh"]
async fn a_new_cluster_becomes_available_and_serves_etcd_clients() -> Result<()> {
    require_kind_cluster();
    let (_ns, raft) = available_cluster("kr-e2e-available", "Delete")?;
    let pods = raft.pods()?;
    let leader = raft.leader()?;
    put_through(&raft, &pods[0].name, "greeting", "hello", Duration::from_secs(60)).await?;
    // Every member answers, followers included (they forward to the leader).
    for pod in &pods {
        assert_eq!(
            get_through(&raft, &pod.name, "greeting").await?.as_deref(),
            Some("hello"),
            "read through {}",
            pod.name
        );
    }
    let metrics = raft.metrics(&leader)?;
    assert_eq!(
        metrics.get("kuberaft_voters"),
        Some(&3.0),
        "voters seen by the leader {leader}"
    );
    assert_eq!(metrics.get("kuberaft_learners"), Some(&0.0));
    Ok(())
}

/// Voters and learners as the current leader sees them.
fn leader_configuration(raft: &Raft) -> Result<Option<(f64, f64)>> {
    let leader = raft.leader()?;
    let m = raft.metrics(&leader)?;
    Ok(match (m.get("kuberaft_voters"), m.get("kuberaft_learners")) {
        (Some(v), Some(l)) => Some((*v, *l)),
        _ => None,
    })
}

#[tokio::test]
#[ignore = "needs a kind cluster with the operator installed: bash e2e/kind/run.sh"]
async fn kubectl_scale_to_five_and_back_to_three_changes_membership_and_keeps_data() -> Result<()> {
    require_kind_cluster();
    let (_ns, raft) = available_cluster("kr-e2e-scale", "Delete")?;
    let first = raft.pods()?[0].name.clone();
    put_through(&raft, &first, "before-scale", "kept", Duration::from_secs(60)).await?;

    raft.kubectl(&["scale", "raft", &raft.name, "--replicas", "5"])?;
    raft.wait_available(5, ROLL_TIMEOUT)?;
    wait_for(
        "the leader sees 5 voters, 0 learners",
        Duration::from_secs(120),
        Duration::from_secs(2),
        || Ok(leader_configuration(&raft)?.filter(|c| *c == (5.0, 0.0))),
    )?;
    let fifth = raft.pods()?[4].name.clone();
    assert_eq!(
        get_through(&raft, &fifth, "before-scale").await?.as_deref(),
        Some("kept")
    );
    let removed_claims: Vec<String> = [3, 4]
        .iter()
        .map(|&ordinal| raft.claim_names(ordinal))
        .collect::<Result<Vec<_>>>()?
        .concat();
    let claims = raft.claims()?;
    for claim in &removed_claims {
        assert!(
            claims.contains_key(claim),
            "volume {claim} of a new member exists"
        );
    }

    raft.kubectl(&["scale", "raft", &raft.name, "--replicas", "3"])?;
    raft.wait_available(3, ROLL_TIMEOUT)?;
    wait_for(
        "the leader sees 3 voters, 0 learners",
        Duration::from_secs(120),
        Duration::from_secs(2),
        || Ok(leader_configuration(&raft)?.filter(|c| *c == (3.0, 0.0))),
    )?;
    assert_eq!(raft.statefulset()?["spec"]["replicas"], 3);
    // A removed member's volumes go with it, so a later scale-up never starts on stale data.
    wait_for(
        "volumes of the removed members deleted",
        Duration::from_secs(120),
        Duration::from_secs(2),
        || {
            let claims = raft.claims()?;
            Ok(removed_claims
                .iter()
                .all(|c| !claims.contains_key(c))
                .then_some(()))
        },
    )?;
    put_through(&raft, &first, "after-scale", "written", Duration::from_secs(60)).await?;
    assert_eq!(
        get_through(&raft, &first, "before-scale").await?.as_deref(),
        Some("kept")
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs a kind cluster with the operator installed: bash e2e/kind/run.sh"]
async fn a_pod_template_change_restarts_every_member_one_at_a_time_leader_last() -> Result<()> {
    require_kind_cluster();
    let (_ns, raft) = available_cluster("kr-e2e-roll", "Delete")?;
    let before: BTreeMap<String, String> = raft.pods()?.into_iter().map(|p| (p.name, p.uid)).collect();
    let leader = raft.leader()?;

    raft.kubectl(&[
        "patch",
        "raft",
        &raft.name,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"podTemplate":{"annotations":{"kuberaft.io/e2e-roll":"1"}}}}"#,
    ])?;

    // Watch the pods: the order in which each is replaced, and how many the operator has
    // taken down at once (deleting, gone, or replaced and not ready yet).
    let mut replaced: Vec<String> = Vec::new();
    let mut most_down_at_once = 0;
    let deadline = Instant::now() + ROLL_TIMEOUT;
    loop {
        let pods = raft.pods()?;
        let current: BTreeMap<&str, &kube::Pod> = pods.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut down = 0;
        for (name, old_uid) in &before {
            match current.get(name.as_str()) {
                Some(p) if &p.uid == old_uid && !p.deleting => {}
                other => {
                    if !replaced.contains(name) {
                        replaced.push(name.clone());
                    }
                    if !other.map(|p| p.ready && !p.deleting).unwrap_or(false) {
                        down += 1;
                    }
                }
            }
        }
        most_down_at_once = most_down_at_once.max(down);
        let done = replaced.len() == before.len()
            && pods.len() == before.len()
            && pods.iter().all(|p| p.ready && !p.deleting)
            && pods
                .iter()
                .all(|p| p.annotations.get("kuberaft.io/e2e-roll").map(String::as_str) == Some("1"));
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!("rolling restart unfinished after {ROLL_TIMEOUT:?}: replaced so far {replaced:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    raft.wait_available(3, AVAILABLE_TIMEOUT)?;
    assert_eq!(
        replaced.last(),
        Some(&leader),
        "restart order {replaced:?}: the leader {leader} goes last"
    );
    assert!(
        most_down_at_once <= 1,
        "{most_down_at_once} members were down at once"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs a kind cluster with the operator installed: bash e2e/kind/run.sh"]
async fn deleting_the_leader_pod_keeps_the_cluster_writable() -> Result<()> {
    require_kind_cluster();
    let (_ns, raft) = available_cluster("kr-e2e-failover", "Delete")?;
    let leader = raft.leader()?;
    let follower = raft
        .pods()?
        .into_iter()
        .find(|p| p.name != leader)
        .context("a follower")?
        .name;
    put_through(&raft, &follower, "before", "1", Duration::from_secs(60)).await?;

    raft.kubectl(&["delete", "pod", &leader, "--wait=false"])?;
    // The two remaining members elect a leader and take writes without the deleted one.
    let took = put_through(&raft, &follower, "after", "2", Duration::from_secs(90)).await?;
    println!("first write after deleting the leader {leader} succeeded after {took:?}");
    assert_eq!(
        get_through(&raft, &follower, "before").await?.as_deref(),
        Some("1")
    );

    raft.wait_available(3, AVAILABLE_TIMEOUT)?;
    // The replaced pod rejoins with its data and serves both writes.
    assert_eq!(get_through(&raft, &leader, "after").await?.as_deref(), Some("2"));
    assert_eq!(get_through(&raft, &leader, "before").await?.as_deref(), Some("1"));
    Ok(())
}

#[tokio::test]
#[ignore = "needs a kind cluster with the operator installed: bash e2e/kind/run.sh"]
async fn data_survives_deleting_every_pod_because_it_lives_on_the_claims() -> Result<()> {
    require_kind_cluster();
    let (_ns, raft) = available_cluster("kr-e2e-volumes", "Delete")?;
    let first = raft.pods()?[0].name.clone();
    let forward = raft.forward_client(&first)?;
    for i in 0..50 {
        put(&forward.endpoint(), &format!("key-{i:02}"), &format!("value-{i}")).await?;
    }
    drop(forward);
    let claims_before = raft.claims()?;
    assert_eq!(
        claims_before.len(),
        6,
        "two volumes per member: {claims_before:?}"
    );

    // All members at once: nothing in memory survives, only what is on the volumes.
    let names: Vec<String> = raft.pods()?.into_iter().map(|p| p.name).collect();
    let mut args = vec!["delete", "pod", "--wait=true", "--timeout=120s"];
    args.extend(names.iter().map(String::as_str));
    raft.kubectl(&args)?;
    raft.wait_available(3, AVAILABLE_TIMEOUT)?;

    assert_eq!(
        raft.claims()?,
        claims_before,
        "the same claims (names and uids) after the restart"
    );
    for pod in raft.pods()? {
        let forward = raft.forward_client(&pod.name)?;
        for i in 0..50 {
            let key = format!("key-{i:02}");
            let value = get(&forward.endpoint(), &key).await?;
            assert_eq!(
                value,
                Some(format!("value-{i}")),
                "{key} read through {}",
                pod.name
            );
        }
    }
    Ok(())
}

/// What is left in the namespace (pods, StatefulSets, Services, PDBs, ConfigMaps other
/// than the API server's kube-root-ca.crt) and the claims, after the RaftCluster is gone.
fn leftovers(raft: &Raft) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let list = raft.json(&[
        "get",
        "pods,statefulsets,services,poddisruptionbudgets,configmaps",
    ])?;
    let objects = items(&list)
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .filter(|o| o != "ConfigMap/kube-root-ca.crt")
        .collect();
    let claims = raft.claims()?.into_keys().collect();
    Ok((objects, claims))
}

async fn delete_cluster_and_check_leftovers(namespace: &str, reclaim_policy: &str) -> Result<()> {
    require_kind_cluster();
    let (_ns, raft) = available_cluster(namespace, reclaim_policy)?;
    let uid = raft.uid()?;
    let claims_before: BTreeSet<String> = raft.claims()?.into_keys().collect();
    assert_eq!(claims_before.len(), 6);
    let children = raft.json(&["get", "statefulsets,services,poddisruptionbudgets,configmaps"])?;
    let owned = items(&children).iter().filter(|o| owned_by(o, &uid)).count();
    assert!(
        owned >= 3,
        "the operator's children carry owner references ({owned} found)"
    );

    raft.kubectl(&["delete", "raft", &raft.name, "--wait=true", "--timeout=180s"])?;
    let expected_claims = if reclaim_policy == "Retain" {
        claims_before
    } else {
        BTreeSet::new()
    };
    let (objects, claims) = wait_for(
        &format!("nothing left of the cluster (reclaimPolicy {reclaim_policy})"),
        Duration::from_secs(180),
        Duration::from_secs(2),
        || {
            let (objects, claims) = leftovers(&raft)?;
            Ok((objects.is_empty() && claims == expected_claims).then_some((objects, claims)))
        },
    )?;
    assert!(objects.is_empty());
    assert_eq!(claims, expected_claims);
    Ok(())
}

#[tokio::test]
#[ignore = "needs a kind cluster with the operator installed: bash e2e/kind/run.sh"]
async fn deleting_a_cluster_with_reclaim_policy_delete_leaves_nothing_behind() -> Result<()> {
    delete_cluster_and_check_leftovers("kr-e2e-delete", "Delete").await
}

#[tokio::test]
#[ignore = "needs a kind cluster with the operator installed: bash e2e/kind/run.sh"]
async fn deleting_a_cluster_with_reclaim_policy_retain_keeps_only_its_volumes() -> Result<()> {
    delete_cluster_and_check_leftovers("kr-e2e-retain", "Retain").await
}

#[test]
#[ignore = "needs a kind cluster with the operator installed: bash e2e/kind/run.sh"]
fn the_api_server_rejects_every_invalid_manifest() -> Result<()> {
    require_kind_cluster();
    let ns = Namespace::create("kr-e2e-invalid")?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let path_str = path.to_str().context("utf-8 path")?;
        // Server-side dry run: the API server applies the schema and the CEL rules.
        let out = kubectl_raw(
            &["apply", "--dry-run=server", "-n", &ns.name, "-f", path_str],
            None,
        )?;
        assert!(
            !out.success,
            "{} was accepted by the API server: {}",
            path.display(),
            out.stdout
        );
        println!("{}: {}", path.display(), out.stderr.trim());
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} invalid manifests found in {}",
        dir.display()
    );
    // And a valid one passes the same dry run, so the rejections are about the fields.
    let out = kubectl_raw(
        &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
        Some(&manifest("valid", 3, "Delete")),
    )?;
    assert!(out.success, "a valid RaftCluster was rejected: {}", out.stderr);
    Ok(())
}

/// Where run.sh installed the operator: KUBERAFT_OPERATOR_NAMESPACE and KUBERAFT_OPERATOR_LEASE.
fn operator_lease() -> (String, String) {
    let namespace = std::env::var("KUBERAFT_OPERATOR_NAMESPACE").unwrap_or_else(|_| "kuberaft-system".into());
    let lease =
        std::env::var("KUBERAFT_OPERATOR_LEASE").unwrap_or_else(|_| "kuberaft-kuberaft-operator".into());
    (namespace, lease)
}

fn lease_holder(namespace: &str, lease: &str) -> Result<Option<String>> {
    let lease = kube::kubectl_json(&["get", "lease", "-n", namespace, lease])?;
    Ok(lease["spec"]["holderIdentity"].as_str().map(str::to_string))
}

#[tokio::test]
#[ignore = "needs a kind cluster with the operator installed: bash e2e/kind/run.sh"]
async fn the_standby_operator_takes_the_lease_when_the_leader_dies_and_keeps_reconciling() -> Result<()> {
    require_kind_cluster();
    let (namespace, lease) = operator_lease();
    let holder = wait_for(
        "an operator holds the Lease",
        Duration::from_secs(120),
        Duration::from_secs(2),
        || lease_holder(&namespace, &lease),
    )?;
    let pods = kube::kubectl_json(&[
        "get",
        "pods",
        "-n",
        &namespace,
        "-l",
        "app.kubernetes.io/component=operator",
    ])?;
    let names: Vec<String> = items(&pods)
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    assert!(
        names.contains(&holder),
        "the Lease holder {holder} is one of the operator pods {names:?}"
    );
    assert!(names.len() >= 2, "the chart runs a standby operator: {names:?}");

    kube::kubectl(&["delete", "pod", "-n", &namespace, &holder, "--wait=false"])?;
    let successor = wait_for(
        "another operator takes the Lease",
        Duration::from_secs(180),
        Duration::from_secs(2),
        || Ok(lease_holder(&namespace, &lease)?.filter(|h| h != &holder)),
    )?;
    println!("Lease {lease}: {holder} -> {successor}");

    // The new leader reconciles: a new cluster becomes Available.
    let (_ns, raft) = available_cluster("kr-e2e-operator-failover", "Delete")?;
    raft.leader()?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a kind cluster with the operator installed: bash e2e/kind/run.sh"]
async fn tls_auto_makes_owned_secrets_and_members_serve_mutual_tls() -> Result<()> {
    require_kind_cluster();
    let ns = Namespace::create("kr-e2e-tls")?;
    let text = format!(
        "{}  tls:\n    mode: Auto\n    clientCertAuth: true\n",
        manifest("e2e", 3, "Delete")
    );
    let raft = Raft::apply(&ns.name, "e2e", &text)?;
    // Available means the operator reached every member's admin API over TLS with its
    // client certificate, and the members elected a leader over peer mutual TLS.
    raft.wait_available(3, AVAILABLE_TIMEOUT)?;
    let uid = raft.uid()?;
    for (secret, type_) in [
        ("e2e-ca", "Opaque"),
        ("e2e-tls", "kubernetes.io/tls"),
        ("e2e-operator-tls", "kubernetes.io/tls"),
    ] {
        let s = raft.json(&["get", "secret", secret])?;
        assert_eq!(s["type"], type_, "{secret}");
        assert!(owned_by(&s, &uid), "{secret} is not owned by the RaftCluster");
    }
    let sts = raft.statefulset()?;
    let text = sts.to_string();
    assert!(
        text.contains("https://"),
        "the StatefulSet does not use https URLs"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    for pod in raft.pods()? {
        let metrics = raft.metrics(&pod.name)?;
        for port in ["client", "peer"] {
            let key = format!("kuberaft_tls_certificate_expiry_timestamp_seconds{{port=\"{port}\"}}");
            let expiry = metrics.get(&key).copied().unwrap_or(0.0);
            assert!(
                expiry > now + 80.0 * 86_400.0,
                "{}: {key} = {expiry} (a fresh 90-day certificate expected)",
                pod.name
            );
        }
    }
    // A plaintext client gets nothing from a TLS port.
    let forward = raft.forward_client(&raft.pods()?[0].name)?;
    assert!(
        put(&forward.endpoint(), "k", "v").await.is_err(),
        "a plaintext client was served"
    );
    Ok(())
}
