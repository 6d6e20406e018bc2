//! `raft-operator run` as a process against a small fake API server on 127.0.0.1 (a
//! kubeconfig points at it): it refuses to start without the CRD, takes the Lease
//! before acting, serves /healthz, /readyz and /metrics, and on SIGTERM stops and
//! hands the Lease back. Every process started here is ended by its PID.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_raft-operator");
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/raft-operator";

#[derive(Default)]
struct ApiState {
    crd_installed: bool,
    lease: Option<Value>,
    /// Every request seen, as "METHOD path".
    seen: Vec<String>,
}

fn json_response(status: StatusCode, value: Value) -> axum::response::Response {
    (status, [("content-type", "application/json")], value.to_string()).into_response()
}

async fn handle(
    state: Arc<Mutex<ApiState>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> axum::response::Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or_default().to_string();
    state.lock().unwrap().seen.push(format!("{method} {path}"));
    let not_found = || {
        json_response(
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        )
    };
    if query.contains("watch=true") || query.contains("watch=1") {
        // An empty watch that ends after a while; the watcher simply watches again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        return (StatusCode::OK, "").into_response();
    }
    if path == LEASE || path == "/apis/coordination.k8s.io/v1/namespaces/default/leases" {
        let mut s = state.lock().unwrap();
        return match method {
            Method::GET => match &s.lease {
                Some(l) => json_response(StatusCode::OK, l.clone()),
                None => not_found(),
            },
            Method::POST | Method::PUT => {
                let mut lease: Value = serde_json::from_slice(&body).unwrap();
                let version = s
                    .lease
                    .as_ref()
                    .and_then(|l| l["metadata"]["resourceVersion"].as_str()?.parse::<u64>().ok())
                    .unwrap_or(0);
                lease["metadata"]["resourceVersion"] = json!((version + 1).to_string());
                lease["metadata"]["namespace"] = json!("default");
                s.lease = Some(lease.clone());
                json_response(StatusCode::OK, lease)
            }
            _ => not_found(),
        };
    }
    if path == "/apis/kuberaft.io/v1alpha1/raftclusters" && !state.lock().unwrap().crd_installed {
        return not_found();
    }
    // Every list is empty.
    json_response(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}),
    )
}

struct FakeApi {
    state: Arc<Mutex<ApiState>>,
    kubeconfig: tempfile::NamedTempFile,
    runtime: tokio::runtime::Runtime,
}

fn fake_api(crd_installed: bool) -> FakeApi {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let state = Arc::new(Mutex::new(ApiState {
        crd_installed,
        ..Default::default()
    }));
    let app = {
        let state = state.clone();
        axum::Router::new()
            .fallback(move |method: Method, uri: Uri, body: Bytes| handle(state.clone(), method, uri, body))
    };
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await });
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        kubeconfig.path(),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        ),
    )
    .unwrap();
    FakeApi {
        state,
        kubeconfig,
        runtime,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(api: &FakeApi, metrics: SocketAddr) -> Child {
    Command::new(BIN)
        .args(["run", "--lease-seconds", "3", "--metrics-addr"])
        .arg(metrics.to_string())
        .env("KUBECONFIG", api.kubeconfig.path())
        .env("POD_NAME", "op-1")
        .env("POD_NAMESPACE", "default")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, answer))
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn the_operator_refuses_to_start_without_the_crd() {
    let api = fake_api(false);
    let mut child = start(&api, format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let status = wait_exit(&mut child, Duration::from_secs(30)).expect("exits");
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("RaftCluster CRD not installed"), "{stderr}");
    assert!(
        api.state.lock().unwrap().lease.is_none(),
        "took the lease without a CRD"
    );
    drop(api.runtime);
}

#[test]
fn the_operator_leads_through_the_lease_serves_health_and_metrics_and_hands_the_lease_back_on_sigterm() {
    let api = fake_api(true);
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = start(&api, metrics);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = false;
    while Instant::now() < deadline && !ready {
        ready = get(metrics, "/readyz").is_some_and(|(s, _)| s == 200)
            && api
                .state
                .lock()
                .unwrap()
                .lease
                .as_ref()
                .is_some_and(|l| l["spec"]["holderIdentity"] == "op-1");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "not ready and leading within 30 s");
    assert_eq!(get(metrics, "/healthz").map(|(s, _)| s), Some(200));
    let (status, body) = get(metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("kuberaft_operator_reconciles_total"), "{body}");
    // The controller is watching what it owns.
    let deadline = Instant::now() + Duration::from_secs(20);
    let watches = |path: &str| api.state.lock().unwrap().seen.iter().any(|s| s.ends_with(path));
    while Instant::now() < deadline && !(watches("/statefulsets") && watches("/poddisruptionbudgets")) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(watches("/apis/kuberaft.io/v1alpha1/raftclusters"));
    assert!(watches("/apis/apps/v1/statefulsets") && watches("/apis/policy/v1/poddisruptionbudgets"));

    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_exit(&mut child, Duration::from_secs(30)).expect("stops within 30 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    let lease = api.state.lock().unwrap().lease.clone().unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "lease not released: {lease}"
    );
    drop(api.runtime);
}
