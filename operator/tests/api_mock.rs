//! The reconciler against a mocked API server (tower-test, as kube-rs's controller
//! example does): each test scripts the exact requests the reconcile must make, in
//! order, answers them, and checks what was sent (verbs, paths, field manager, bodies).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use kuberaft_operator::crd::RaftCluster;
use kuberaft_operator::k8s::{self, Context, Metrics, FIELD_MANAGER, FINALIZER};
use serde_json::{json, Value};
use support::{empty_list, expect, not_found, ApiHandle};

mod support;

fn cluster(finalizer: bool, deleting: bool, reclaim: &str) -> RaftCluster {
    let mut value = json!({
        "apiVersion": "kuberaft.io/v1alpha1",
        "kind": "RaftCluster",
        "metadata": {
            "name": "demo",
            "namespace": "default",
            "uid": "6b1e1a3c-0000-4000-8000-000000000001",
            "generation": 1,
            "resourceVersion": "100",
        },
        "spec": {
            "replicas": 3,
            "storage": {
                "wal": {"size": "1Gi"},
                "snapshots": {"size": "1Gi"},
                "reclaimPolicy": reclaim,
            },
        },
    });
    if finalizer {
        value["metadata"]["finalizers"] = json!([FINALIZER]);
    }
    if deleting {
        value["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    serde_json::from_value(value).unwrap()
}

fn context() -> (Arc<Context>, ApiHandle) {
    let (client, handle) = support::client();
    (
        Arc::new(Context::new(
            client,
            Some("test".into()),
            Arc::new(Metrics::default()),
        )),
        handle,
    )
}

const RC: &str = "/apis/kuberaft.io/v1alpha1/namespaces/default/raftclusters/demo";

#[tokio::test]
async fn a_new_cluster_first_gets_the_finalizer() {
    let (ctx, mut handle) = context();
    let rc = Arc::new(cluster(false, false, "Retain"));
    let server = tokio::spawn(async move {
        let (_, body) = expect(
            &mut handle,
            Method::PATCH,
            RC,
            StatusCode::OK,
            serde_json::to_value(cluster(true, false, "Retain")).unwrap(),
        )
        .await;
        // A JSON patch that adds our finalizer (guarded by a test of the old value).
        let ops = body.as_array().expect("a JSON patch");
        assert!(
            ops.iter()
                .any(|op| op["op"] == "add" && op["value"].to_string().contains(FINALIZER)),
            "{body}"
        );
    });
    k8s::reconcile(rc, ctx).await.expect("reconcile succeeds");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_cluster_without_a_statefulset_is_bootstrapped_children_applied_event_published_status_patched() {
    let (ctx, mut handle) = context();
    let rc = Arc::new(cluster(true, false, "Retain"));
    let server = tokio::spawn(async move {
        let ns = "/api/v1/namespaces/default";
        expect(
            &mut handle,
            Method::GET,
            "/apis/apps/v1/namespaces/default/statefulsets/demo",
            StatusCode::NOT_FOUND,
            not_found(),
        )
        .await;
        let (query, _) = expect(
            &mut handle,
            Method::GET,
            &format!("{ns}/pods"),
            StatusCode::OK,
            empty_list("PodList"),
        )
        .await;
        assert!(query.contains("labelSelector="), "{query}");
        expect(
            &mut handle,
            Method::GET,
            &format!("{ns}/persistentvolumeclaims"),
            StatusCode::OK,
            empty_list("PersistentVolumeClaimList"),
        )
        .await;
        let children = [
            format!("{ns}/services/demo-peer"),
            format!("{ns}/services/demo"),
            "/apis/apps/v1/namespaces/default/statefulsets/demo".to_string(),
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo".to_string(),
        ];
        let mut statefulset = Value::Null;
        for path in &children {
            let (query, body) = expect(&mut handle, Method::PATCH, path, StatusCode::OK, json!({})).await;
            assert!(
                query.contains(&format!("fieldManager={FIELD_MANAGER}")),
                "{path}: {query}"
            );
            assert!(query.contains("force=true"), "{path}: {query}");
            let owner = &body["metadata"]["ownerReferences"][0];
            assert_eq!(
                (owner["kind"].as_str(), owner["controller"].as_bool()),
                (Some("RaftCluster"), Some(true)),
                "{path}"
            );
            if path.contains("statefulsets") {
                statefulset = body;
            }
        }
        assert_eq!(statefulset["spec"]["replicas"], 3);
        assert_eq!(statefulset["spec"]["updateStrategy"]["type"], "OnDelete");
        let env = statefulset["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .clone();
        let state = env
            .iter()
            .find(|e| e["name"] == "KUBERAFT_INITIAL_CLUSTER_STATE")
            .unwrap();
        assert_eq!(state["value"], "new");

        let (_, event) = expect(
            &mut handle,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/default/events",
            StatusCode::CREATED,
            json!({}),
        )
        .await;
        assert_eq!(
            (event["reason"].as_str(), event["type"].as_str()),
            (Some("Bootstrap"), Some("Normal")),
            "{event}"
        );
        assert_eq!(event["regarding"]["name"], "demo");

        let (query, status) = expect(
            &mut handle,
            Method::PATCH,
            &format!("{RC}/status"),
            StatusCode::OK,
            serde_json::to_value(cluster(true, false, "Retain")).unwrap(),
        )
        .await;
        assert!(
            query.contains(&format!("fieldManager={FIELD_MANAGER}")),
            "{query}"
        );
        assert_eq!(status["status"]["phase"], "Bootstrapping");
        let conditions = status["status"]["conditions"].as_array().unwrap();
        let by_type = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap().clone();
        assert_eq!(by_type("Available")["status"], "False");
        assert_eq!(by_type("Progressing")["status"], "True");
        assert_eq!(by_type("Progressing")["reason"], "Bootstrap");
        assert!(conditions.iter().any(|c| c["type"] == "Degraded"));
    });
    let requeue = k8s::reconcile(rc, ctx.clone()).await.expect("reconcile succeeds");
    assert_eq!(
        requeue,
        kube::runtime::controller::Action::requeue(k8s::REQUEUE_BUSY)
    );
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(ctx
        .metrics
        .render()
        .contains("kuberaft_operator_actions_total{action=\"Bootstrap\"} 1"));
}

#[tokio::test]
async fn deleting_a_cluster_with_reclaim_delete_removes_its_volume_claims_then_the_finalizer() {
    let (ctx, mut handle) = context();
    let rc = Arc::new(cluster(true, true, "Delete"));
    let server = tokio::spawn(async move {
        let ns = "/api/v1/namespaces/default";
        let claims = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {}, "items": [
            {"metadata": {"name": "wal-demo-0", "namespace": "default"}},
            {"metadata": {"name": "snapshots-demo-0", "namespace": "default"}},
        ]});
        let (query, _) = expect(
            &mut handle,
            Method::GET,
            &format!("{ns}/persistentvolumeclaims"),
            StatusCode::OK,
            claims,
        )
        .await;
        assert!(query.contains("app.kubernetes.io%2Finstance%3Ddemo"), "{query}");
        for name in ["wal-demo-0", "snapshots-demo-0"] {
            expect(
                &mut handle,
                Method::DELETE,
                &format!("{ns}/persistentvolumeclaims/{name}"),
                StatusCode::OK,
                json!({"metadata": {"name": name}}),
            )
            .await;
        }
        let (_, event) = expect(
            &mut handle,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/default/events",
            StatusCode::CREATED,
            json!({}),
        )
        .await;
        assert_eq!(event["reason"], "VolumesDeleted");
        let (_, body) = expect(
            &mut handle,
            Method::PATCH,
            RC,
            StatusCode::OK,
            serde_json::to_value(cluster(false, true, "Delete")).unwrap(),
        )
        .await;
        assert!(
            body.to_string().contains("remove"),
            "finalizer removed by a JSON patch: {body}"
        );
    });
    k8s::reconcile(rc, ctx).await.expect("cleanup succeeds");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn deleting_a_cluster_with_reclaim_retain_keeps_its_volume_claims() {
    let (ctx, mut handle) = context();
    let rc = Arc::new(cluster(true, true, "Retain"));
    let server = tokio::spawn(async move {
        let (_, event) = expect(
            &mut handle,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/default/events",
            StatusCode::CREATED,
            json!({}),
        )
        .await;
        assert_eq!(event["reason"], "VolumesKept");
        // Next and last: the finalizer goes; no claim was listed or deleted.
        expect(
            &mut handle,
            Method::PATCH,
            RC,
            StatusCode::OK,
            serde_json::to_value(cluster(false, true, "Retain")).unwrap(),
        )
        .await;
    });
    k8s::reconcile(rc, ctx).await.expect("cleanup succeeds");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

/// One reconcile of a bootstrapped cluster whose three pods exist but whose members do
/// not answer: checks the exact requests (nothing but reads, the children's apply, the
/// Events named `events` in order, and the status patch) and returns the status sent.
async fn reconcile_without_members(rc: RaftCluster, events: &[(&str, &str)]) -> Value {
    let (ctx, mut handle) = context();
    let rc = Arc::new(rc);
    let events: Vec<(String, String)> = events
        .iter()
        .map(|(r, t)| (r.to_string(), t.to_string()))
        .collect();
    let server = tokio::spawn(async move {
        let ns = "/api/v1/namespaces/default";
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "demo", "namespace": "default"},
            "spec": {"replicas": 3, "selector": {}, "template": {}}});
        expect(
            &mut handle,
            Method::GET,
            "/apis/apps/v1/namespaces/default/statefulsets/demo",
            StatusCode::OK,
            sts,
        )
        .await;
        // Pods exist (not ready); their members cannot be reached from here.
        let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": (0..3).map(|o| json!({
            "metadata": {"name": format!("demo-{o}"), "namespace": "default",
                         "annotations": {"kuberaft.io/template-hash": "x"}},
        })).collect::<Vec<_>>()});
        expect(
            &mut handle,
            Method::GET,
            &format!("{ns}/pods"),
            StatusCode::OK,
            pods,
        )
        .await;
        expect(
            &mut handle,
            Method::GET,
            &format!("{ns}/persistentvolumeclaims"),
            StatusCode::OK,
            empty_list("PersistentVolumeClaimList"),
        )
        .await;
        let mut statefulset = Value::Null;
        for path in [
            format!("{ns}/services/demo-peer"),
            format!("{ns}/services/demo"),
            "/apis/apps/v1/namespaces/default/statefulsets/demo".to_string(),
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo".to_string(),
        ] {
            let (_, body) = expect(&mut handle, Method::PATCH, &path, StatusCode::OK, json!({})).await;
            if path.contains("statefulsets") {
                statefulset = body;
            }
        }
        // The StatefulSet keeps its size, and new pods would join, not bootstrap.
        assert_eq!(statefulset["spec"]["replicas"], 3);
        let env = statefulset["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .clone();
        assert!(env
            .iter()
            .any(|e| e["name"] == "KUBERAFT_INITIAL_CLUSTER_STATE" && e["value"] == "existing"));

        for (reason, type_) in &events {
            let (_, event) = expect(
                &mut handle,
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/default/events",
                StatusCode::CREATED,
                json!({}),
            )
            .await;
            assert_eq!(
                (event["reason"].as_str(), event["type"].as_str()),
                (Some(reason.as_str()), Some(type_.as_str())),
                "{event}"
            );
        }
        let answer = serde_json::to_value(cluster(true, false, "Retain")).unwrap();
        let (_, status) = expect(
            &mut handle,
            Method::PATCH,
            &format!("{RC}/status"),
            StatusCode::OK,
            answer,
        )
        .await;
        status
    });
    // Nothing else may be called: no pod deleted, no claim deleted, no scale, no backup.
    k8s::reconcile(rc, ctx).await.expect("reconcile succeeds");
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .unwrap()
        .unwrap()
}

fn bootstrapped(backup: Option<Value>, status: Value) -> RaftCluster {
    let mut value = serde_json::to_value(cluster(true, false, "Retain")).unwrap();
    if let Some(backup) = backup {
        value["spec"]["backup"] = backup;
    }
    value["status"] = status;
    value["status"]["bootstrapped"] = json!(true);
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn a_bootstrapped_cluster_whose_members_do_not_answer_is_degraded_with_a_warning_and_left_alone() {
    let status = reconcile_without_members(bootstrapped(None, json!({})), &[("QuorumLost", "Warning")]).await;
    assert_eq!(status["status"]["phase"], "Degraded");
    let conditions = status["status"]["conditions"].as_array().unwrap();
    let degraded = conditions.iter().find(|c| c["type"] == "Degraded").unwrap();
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("QuorumLost"))
    );
    let available = conditions.iter().find(|c| c["type"] == "Available").unwrap();
    assert_eq!(available["status"], "False");
    assert!(
        conditions.iter().all(|c| c["type"] != "BackupReady"),
        "no spec.backup: no condition"
    );
}

#[tokio::test]
async fn a_due_backup_without_a_healthy_member_waits_and_says_so_in_status() {
    let backup =
        json!({"schedule": "0 * * * *", "destination": {"s3": {"bucket": "b", "credentialsSecret": "s3"}}});
    let last = json!({"time": "2026-01-01T00:00:00Z", "location": "s3://b/demo_20260101T000000.000Z.snap",
        "revision": 7, "checksum": "ab", "size": 10, "member": "demo-1", "durationMs": 3});
    let rc = bootstrapped(
        Some(backup),
        json!({"lastBackup": last, "backupSchedule": {"schedule": "0 * * * *", "nextTime": "2026-01-01T01:00:00Z"}}),
    );
    // No Secret is read and no member is called: the backup waits.
    let status = reconcile_without_members(rc, &[("QuorumLost", "Warning")]).await;
    let conditions = status["status"]["conditions"].as_array().unwrap();
    let ready = conditions.iter().find(|c| c["type"] == "BackupReady").unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("Waiting"))
    );
    assert!(
        ready["message"].as_str().unwrap().contains("no healthy member"),
        "{ready}"
    );
    // The due time and the last backup are kept, so it is taken as soon as it can be.
    assert_eq!(
        status["status"]["backupSchedule"]["nextTime"],
        "2026-01-01T01:00:00Z"
    );
    assert_eq!(status["status"]["lastBackup"], last);
}

#[tokio::test]
async fn an_invalid_backup_schedule_is_an_event_and_a_condition_and_nothing_else() {
    let backup = json!({"schedule": "every hour", "destination": {"path": "/backups"}});
    let rc = bootstrapped(Some(backup), json!({}));
    let status =
        reconcile_without_members(rc, &[("QuorumLost", "Warning"), ("BackupInvalid", "Warning")]).await;
    let conditions = status["status"]["conditions"].as_array().unwrap();
    let ready = conditions.iter().find(|c| c["type"] == "BackupReady").unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("InvalidSpec"))
    );
    assert!(
        ready["message"].as_str().unwrap().contains("every hour"),
        "{ready}"
    );
    assert!(
        status["status"]["backupSchedule"].get("nextTime").is_none(),
        "{status}"
    );
    // Reported once: the same reason in status is not an Event again.
    let again = bootstrapped(
        Some(json!({"schedule": "every hour", "destination": {"path": "/backups"}})),
        status["status"].clone(),
    );
    reconcile_without_members(again, &[("QuorumLost", "Warning")]).await;
}

/// `spec.tls.mode: Auto` against the mocked API server: the first reconcile creates the
/// CA, the members' and the operator's certificates (server-side apply, owned by the
/// RaftCluster); a later one with those Secrets in place issues nothing; near expiry the
/// members' certificate is issued again under the same CA.
#[tokio::test]
async fn tls_auto_creates_the_ca_and_certificates_then_renews_only_near_expiry() {
    use std::time::SystemTime;
    const DAY: Duration = Duration::from_secs(86_400);
    let mut value = serde_json::to_value(cluster(true, false, "Retain")).unwrap();
    value["spec"]["tls"] = json!({"mode": "Auto", "clientCertAuth": true});
    let rc: RaftCluster = serde_json::from_value(value).unwrap();
    let secrets = "/api/v1/namespaces/default/secrets";

    // First reconcile: nothing exists.
    let (client, mut handle) = support::client();
    let server = tokio::spawn(async move {
        let mut applied = Vec::new();
        for name in ["demo-ca", "demo-tls", "demo-operator-tls"] {
            let path = format!("{secrets}/{name}");
            expect(
                &mut handle,
                Method::GET,
                &path,
                StatusCode::NOT_FOUND,
                not_found(),
            )
            .await;
            // The answer echoes nothing useful; the client only needs a Secret back.
            let (query, body) = expect(
                &mut handle,
                Method::PATCH,
                &path,
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}),
            )
            .await;
            assert!(
                query.contains(&format!("fieldManager={FIELD_MANAGER}")),
                "{query}"
            );
            assert_eq!(body["metadata"]["ownerReferences"][0]["name"], "demo", "{body}");
            applied.push(body);
        }
        applied
    });
    let now = SystemTime::now();
    let (access, issued) = k8s::tls_access(&client, &rc, now).await.expect("secrets written");
    assert!(access.is_tls());
    assert_eq!(issued.len(), 3, "{issued:?}");
    let applied = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    let text = |secret: &Value, key: &str| {
        let bytes: k8s_openapi::ByteString = serde_json::from_value(secret["data"][key].clone())
            .unwrap_or_else(|e| panic!("{key} in {secret}: {e}"));
        String::from_utf8(bytes.0).unwrap()
    };
    let ca = text(&applied[0], "ca.crt");
    assert_eq!(applied[0]["type"], "Opaque");
    for secret in &applied[1..] {
        assert_eq!(secret["type"], "kubernetes.io/tls");
        assert_eq!(
            text(secret, "ca.crt"),
            ca,
            "each certificate Secret carries the CA"
        );
    }
    let member = text(&applied[1], "tls.crt");
    let facts = kuberaft_operator::certs::facts(&member).unwrap();
    assert!(
        facts.names.contains(&"*.demo-peer.default.svc".to_string()),
        "{:?}",
        facts.names
    );
    assert_eq!(
        facts.issuer,
        kuberaft_operator::certs::facts(&ca).unwrap().subject
    );
    let operator = kuberaft_operator::certs::facts(&text(&applied[2], "tls.crt")).unwrap();
    assert_eq!(operator.common_name, "raft-operator");

    // Later reconciles read the Secrets as they now are.
    let existing: Vec<Value> = applied
        .iter()
        .zip(["demo-ca", "demo-tls", "demo-operator-tls"])
        .map(|(body, name)| {
            let mut s = body.clone();
            s["metadata"]["name"] = json!(name);
            s
        })
        .collect();
    for (when, renewed) in [(now + DAY, false), (now + 61 * DAY, true)] {
        let (client, mut handle) = support::client();
        let existing = existing.clone();
        let server = tokio::spawn(async move {
            for (i, name) in ["demo-ca", "demo-tls", "demo-operator-tls"].iter().enumerate() {
                let path = format!("{secrets}/{name}");
                expect(
                    &mut handle,
                    Method::GET,
                    &path,
                    StatusCode::OK,
                    existing[i].clone(),
                )
                .await;
                if renewed && i > 0 {
                    let (_, body) = expect(
                        &mut handle,
                        Method::PATCH,
                        &path,
                        StatusCode::OK,
                        existing[i].clone(),
                    )
                    .await;
                    assert_ne!(body["data"]["tls.crt"], existing[i]["data"]["tls.crt"]);
                    assert_eq!(body["data"]["ca.crt"], existing[0]["data"]["ca.crt"], "same CA");
                }
            }
        });
        let (_, issued) = k8s::tls_access(&client, &rc, when).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
        if renewed {
            assert_eq!(issued.len(), 2, "{issued:?}");
            assert!(issued.iter().all(|l| l.contains("expires in")), "{issued:?}");
        } else {
            assert_eq!(issued, Vec::<String>::new());
        }
    }
}

/// Mode Secret: a missing user Secret is an error that names it, and nothing is written.
#[tokio::test]
async fn tls_secret_mode_names_a_missing_secret() {
    let mut value = serde_json::to_value(cluster(true, false, "Retain")).unwrap();
    value["spec"]["tls"] = json!({"mode": "Secret", "secretName": "mine"});
    let rc: RaftCluster = serde_json::from_value(value).unwrap();
    let (client, mut handle) = support::client();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            Method::GET,
            "/api/v1/namespaces/default/secrets/mine",
            StatusCode::NOT_FOUND,
            not_found(),
        )
        .await;
    });
    let error = k8s::tls_access(&client, &rc, std::time::SystemTime::now())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("Secret mine: not found"), "{error}");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

fn raft_backup(destination: Value) -> kuberaft_operator::crd::RaftBackup {
    serde_json::from_value(json!({
        "apiVersion": "kuberaft.io/v1alpha1",
        "kind": "RaftBackup",
        "metadata": {
            "name": "now",
            "namespace": "default",
            "uid": "6b1e1a3c-0000-4000-8000-000000000002",
            "generation": 1,
            "resourceVersion": "7",
        },
        "spec": {"clusterName": "demo", "destination": destination},
    }))
    .unwrap()
}

const RB_STATUS: &str = "/apis/kuberaft.io/v1alpha1/namespaces/default/raftbackups/now/status";

#[tokio::test]
async fn a_raft_backup_with_an_unusable_destination_fails_at_once_and_says_why() {
    let (ctx, mut handle) = context();
    let rb = Arc::new(raft_backup(json!({"path": "relative/dir"})));
    let server = tokio::spawn(async move {
        let answer = serde_json::to_value(raft_backup(json!({"path": "relative/dir"}))).unwrap();
        let (query, body) = expect(&mut handle, Method::PATCH, RB_STATUS, StatusCode::OK, answer).await;
        assert!(
            query.contains(&format!("fieldManager={FIELD_MANAGER}")),
            "{query}"
        );
        assert_eq!(body["status"]["phase"], "Failed", "{body}");
        assert!(
            body["status"]["message"]
                .as_str()
                .unwrap()
                .contains("absolute path"),
            "{body}"
        );
        let (_, event) = expect(
            &mut handle,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/default/events",
            StatusCode::CREATED,
            json!({}),
        )
        .await;
        assert_eq!(
            (event["reason"].as_str(), event["type"].as_str()),
            (Some("BackupInvalid"), Some("Warning"))
        );
        assert_eq!(event["regarding"]["kind"], "RaftBackup");
    });
    let requeue = k8s::reconcile_backup(rb, ctx).await.unwrap();
    assert_eq!(requeue, kube::runtime::controller::Action::await_change());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_raft_backup_of_a_missing_cluster_stays_pending_and_is_retried_with_back_off() {
    let (ctx, mut handle) = context();
    let rb = Arc::new(raft_backup(json!({"path": "/backups"})));
    let server = tokio::spawn(async move {
        expect(&mut handle, Method::GET, RC, StatusCode::NOT_FOUND, not_found()).await;
        let (_, event) = expect(
            &mut handle,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/default/events",
            StatusCode::CREATED,
            json!({}),
        )
        .await;
        assert_eq!(event["reason"], "BackupFailed");
        let answer = serde_json::to_value(raft_backup(json!({"path": "/backups"}))).unwrap();
        let (_, body) = expect(&mut handle, Method::PATCH, RB_STATUS, StatusCode::OK, answer).await;
        assert_eq!(body["status"]["phase"], "Pending", "{body}");
        assert_eq!(body["status"]["attempts"], 1, "{body}");
        let message = body["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("RaftCluster demo not found") && message.contains("retrying in 10 s"),
            "{message}"
        );
    });
    let requeue = k8s::reconcile_backup(rb, ctx).await.unwrap();
    assert_eq!(
        requeue,
        kube::runtime::controller::Action::requeue(Duration::from_secs(10))
    );
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_finished_raft_backup_is_never_run_again() {
    let (ctx, _handle) = context();
    let mut rb = raft_backup(json!({"path": "/backups"}));
    rb.status = Some(kuberaft_operator::crd::RaftBackupStatus {
        phase: kuberaft_operator::crd::BackupPhase::Succeeded,
        ..Default::default()
    });
    // No request at all: the mock would fail any.
    let requeue = k8s::reconcile_backup(Arc::new(rb), ctx).await.unwrap();
    assert_eq!(requeue, kube::runtime::controller::Action::await_change());
}

#[tokio::test]
async fn s3_credentials_come_from_the_named_secret_and_a_missing_key_is_named() {
    use kuberaft_operator::platform::Platform;
    let destination: kuberaft_operator::crd::BackupDestination = serde_json::from_value(json!({
        "s3": {"bucket": "backups", "endpoint": "http://127.0.0.1:9", "credentialsSecret": "s3-creds"}
    }))
    .unwrap();
    let (client, mut handle) = support::client();
    let server = tokio::spawn(async move {
        let secret = |data: Value| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": "default"}, "data": data});
        let path = "/api/v1/namespaces/default/secrets/s3-creds";
        // base64 of "key" and "secret"
        expect(
            &mut handle,
            Method::GET,
            path,
            StatusCode::OK,
            secret(json!({"AWS_ACCESS_KEY_ID": "a2V5", "AWS_SECRET_ACCESS_KEY": "c2VjcmV0"})),
        )
        .await;
        expect(
            &mut handle,
            Method::GET,
            path,
            StatusCode::OK,
            secret(json!({"AWS_ACCESS_KEY_ID": "a2V5"})),
        )
        .await;
        expect(&mut handle, Method::GET, path, StatusCode::NOT_FOUND, not_found()).await;
    });
    let platform = k8s::KubePlatform::new(
        client,
        &cluster(true, false, "Retain"),
        kuberaft_operator::node::Access::plain(),
    );
    let target = platform.backup_target(&destination).await.unwrap();
    assert_eq!(target.describe(), "s3://backups");
    let e = platform
        .backup_target(&destination)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Secret s3-creds needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{e}"
    );
    let e = platform
        .backup_target(&destination)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("Secret s3-creds") && e.contains("not found"), "{e}");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_cluster_to_restore_from_a_backup_creates_nothing_and_says_why_on_kubernetes() {
    let (ctx, mut handle) = context();
    let mut value = serde_json::to_value(cluster(true, false, "Retain")).unwrap();
    value["spec"]["bootstrap"] = json!({"fromBackup": {"s3": {"bucket": "bkt", "key": "nightly/demo.snap"}}});
    let rc = Arc::new(serde_json::from_value::<RaftCluster>(value).unwrap());
    let server = tokio::spawn(async move {
        let ns = "/api/v1/namespaces/default";
        expect(
            &mut handle,
            Method::GET,
            "/apis/apps/v1/namespaces/default/statefulsets/demo",
            StatusCode::NOT_FOUND,
            not_found(),
        )
        .await;
        expect(
            &mut handle,
            Method::GET,
            &format!("{ns}/pods"),
            StatusCode::OK,
            empty_list("PodList"),
        )
        .await;
        expect(
            &mut handle,
            Method::GET,
            &format!("{ns}/persistentvolumeclaims"),
            StatusCode::OK,
            empty_list("PersistentVolumeClaimList"),
        )
        .await;
        // No child is applied: the next request is the Warning Event, then the status.
        let (_, event) = expect(
            &mut handle,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/default/events",
            StatusCode::CREATED,
            json!({}),
        )
        .await;
        assert_eq!(
            (event["reason"].as_str(), event["type"].as_str()),
            (Some("RestoreFailed"), Some("Warning")),
            "{event}"
        );
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains("s3://bkt/nightly/demo.snap"),
            "{event}"
        );
        let answer = serde_json::to_value(cluster(true, false, "Retain")).unwrap();
        let (_, status) = expect(
            &mut handle,
            Method::PATCH,
            &format!("{RC}/status"),
            StatusCode::OK,
            answer,
        )
        .await;
        status
    });
    k8s::reconcile(rc, ctx).await.expect("reconcile succeeds");
    let status = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status["status"]["phase"], "Bootstrapping");
    assert_eq!(status["status"]["bootstrapped"], false);
    let conditions = status["status"]["conditions"].as_array().unwrap();
    let restored = conditions.iter().find(|c| c["type"] == "Restored").unwrap();
    assert_eq!(
        (restored["status"].as_str(), restored["reason"].as_str()),
        (Some("False"), Some("BackupUnreadable"))
    );
    let message = restored["message"].as_str().unwrap();
    assert!(
        message.contains("s3://bkt/nightly/demo.snap") && message.contains("no member is started"),
        "{message}"
    );
    assert_eq!(status["status"]["restore"]["failures"], 1);
}

#[test]
fn a_crash_looping_raft_node_container_counts_as_failed_starts_with_its_last_log_line() {
    let pod = |ready: bool, state: Value, last: Value, restarts: i32| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "demo-1"},
            "status": {"containerStatuses": [{
                "name": "raft-node", "image": "i", "imageID": "", "ready": ready,
                "restartCount": restarts, "state": state, "lastState": last,
            }]},
        }))
        .unwrap()
    };
    let refused = json!({"terminated": {"exitCode": 1, "reason": "Error",
        "message": "starting\nraft-node: corrupt data in /wal/1.wal at byte offset 12550: record checksum mismatch\n"}});
    let waiting = json!({"waiting": {"reason": "CrashLoopBackOff"}});
    let failed = k8s::failed_starts_of(&pod(false, waiting.clone(), refused.clone(), 6)).unwrap();
    assert_eq!(failed.count, 6);
    assert_eq!(
        failed.last_error.as_deref(),
        Some("raft-node: corrupt data in /wal/1.wal at byte offset 12550: record checksum mismatch")
    );
    // Running again, or ready, or its last exit clean: not failing.
    let running = json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}});
    assert!(k8s::failed_starts_of(&pod(false, running, refused.clone(), 6)).is_none());
    assert!(k8s::failed_starts_of(&pod(true, waiting.clone(), refused, 6)).is_none());
    let clean = json!({"terminated": {"exitCode": 0}});
    assert!(k8s::failed_starts_of(&pod(false, waiting, clean, 6)).is_none());
}

#[tokio::test]
async fn wiping_a_replaced_member_deletes_its_two_claims_then_its_pod() {
    use kuberaft_operator::platform::Platform;
    let (client, mut handle) = support::client();
    let server = tokio::spawn(async move {
        let ns = "/api/v1/namespaces/default";
        for path in [
            format!("{ns}/persistentvolumeclaims/wal-demo-1"),
            format!("{ns}/persistentvolumeclaims/snapshots-demo-1"),
            format!("{ns}/pods/demo-1"),
        ] {
            expect(&mut handle, Method::DELETE, &path, StatusCode::OK, json!({})).await;
        }
    });
    let platform = k8s::KubePlatform::new(
        client,
        &cluster(true, false, "Retain"),
        kuberaft_operator::node::Access::plain(),
    );
    platform.wipe_member(1).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .unwrap()
        .unwrap();
}
