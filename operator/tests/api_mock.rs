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

#[tokio::test]
async fn a_bootstrapped_cluster_whose_members_do_not_answer_is_degraded_with_a_warning_and_left_alone() {
    let (ctx, mut handle) = context();
    let mut rc = cluster(true, false, "Retain");
    rc.status = Some(kuberaft_operator::crd::RaftClusterStatus {
        bootstrapped: true,
        ..Default::default()
    });
    let rc = Arc::new(rc);
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
            (Some("QuorumLost"), Some("Warning")),
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
        assert_eq!(status["status"]["phase"], "Degraded");
        let conditions = status["status"]["conditions"].as_array().unwrap();
        let degraded = conditions.iter().find(|c| c["type"] == "Degraded").unwrap();
        assert_eq!(
            (degraded["status"].as_str(), degraded["reason"].as_str()),
            (Some("True"), Some("QuorumLost"))
        );
        let available = conditions.iter().find(|c| c["type"] == "Available").unwrap();
        assert_eq!(available["status"], "False");
    });
    // Nothing else may be called: no pod deleted, no claim deleted, no scale.
    k8s::reconcile(rc, ctx).await.expect("reconcile succeeds");
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .unwrap()
        .unwrap();
}
