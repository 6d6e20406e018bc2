//! Leader election against a mocked API server: a missing Lease is created, a fresh
//! Lease of someone else is respected, an expired one is taken over with the
//! resourceVersion read (so a racing candidate loses with 409), and a holder renews.

use std::time::Duration;

use http::{Method, StatusCode};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kuberaft_operator::lease::LeaseLock;
use serde_json::{json, Value};
use support::{expect, not_found};

mod support;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/raft-operator";

fn lease(holder: &str, renewed_seconds_ago: i64, transitions: i32) -> Value {
    let renewed = Timestamp::now() - SignedDuration::from_secs(renewed_seconds_ago);
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "raft-operator", "namespace": "ops", "resourceVersion": "42"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            "acquireTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            "leaseTransitions": transitions,
        }
    })
}

fn lock() -> (LeaseLock, support::ApiHandle) {
    let (client, handle) = support::client();
    let api: Api<Lease> = Api::namespaced(client, "ops");
    (
        LeaseLock::new(api, "raft-operator", "me", Duration::from_secs(15)),
        handle,
    )
}

#[tokio::test]
async fn a_missing_lease_is_created_and_held() {
    let (lock, mut handle) = lock();
    let server = tokio::spawn(async move {
        expect(&mut handle, Method::GET, PATH, StatusCode::NOT_FOUND, not_found()).await;
        let (_, body) = expect(
            &mut handle,
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/ops/leases",
            StatusCode::CREATED,
            lease("me", 0, 0),
        )
        .await;
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    });
    assert!(lock.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn a_fresh_lease_of_another_replica_is_left_alone() {
    let (lock, mut handle) = lock();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            Method::GET,
            PATH,
            StatusCode::OK,
            lease("other", 2, 3),
        )
        .await;
    });
    assert!(!lock.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_the_resource_version_read() {
    let (lock, mut handle) = lock();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            Method::GET,
            PATH,
            StatusCode::OK,
            lease("other", 60, 3),
        )
        .await;
        let (_, body) = expect(&mut handle, Method::PUT, PATH, StatusCode::OK, lease("me", 0, 4)).await;
        assert_eq!(body["metadata"]["resourceVersion"], "42");
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseTransitions"], 4);
    });
    assert!(lock.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn a_candidate_that_loses_the_race_for_an_expired_lease_does_not_lead() {
    let (lock, mut handle) = lock();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            Method::GET,
            PATH,
            StatusCode::OK,
            lease("other", 60, 3),
        )
        .await;
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "conflict"});
        expect(&mut handle, Method::PUT, PATH, StatusCode::CONFLICT, conflict).await;
    });
    assert!(!lock.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn the_holder_renews_without_counting_a_transition() {
    let (lock, mut handle) = lock();
    let server = tokio::spawn(async move {
        expect(&mut handle, Method::GET, PATH, StatusCode::OK, lease("me", 5, 7)).await;
        let (_, body) = expect(&mut handle, Method::PUT, PATH, StatusCode::OK, lease("me", 0, 7)).await;
        assert_eq!(body["spec"]["leaseTransitions"], 7);
    });
    assert!(lock.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}
