//! Security of real `raft-node` processes on 127.0.0.1: TLS on the client and peer
//! ports (certificates made here with rcgen), roles, rate limits, request limits and
//! certificate rotation under load; etcdctl 3.4 with --cacert/--cert/--key as one of the
//! clients.
//!
//! Every process this test starts is ended by its PID when the test ends (also on
//! failure).

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kuberaft_proto::etcdserverpb as pb;
use kuberaft_proto::etcdserverpb::cluster_client::ClusterClient;
use kuberaft_proto::etcdserverpb::kv_client::KvClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use support::{etcdctl, ProcCluster};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// A CA and the certificates it issues, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate for `cn`, valid for 127.0.0.1 and localhost, written to
    /// `stem.crt`/`stem.key` (replaced by rename, as a rotation would).
    fn issue(&self, cn: &str, stem: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (cert_path, key_path) = (
            self.path(&format!("{stem}.crt")),
            self.path(&format!("{stem}.key")),
        );
        replace(&cert_path, cert.pem().as_bytes());
        replace(&key_path, key.serialize_pem().as_bytes());
        (cert_path, key_path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn replace(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// A channel to `url`, with TLS trusting `ca` (and presenting `identity`) when given.
async fn channel(url: &str, ca: Option<&str>, identity: Option<(&Path, &Path)>) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert).unwrap(),
                std::fs::read(key).unwrap(),
            ));
        }
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// Whether a client with these settings is refused (at the handshake or, with TLS 1.3
/// where the server checks the client certificate after the client finished, at the
/// first request).
async fn refused(url: &str, ca: Option<&str>, identity: Option<(&Path, &Path)>) -> bool {
    match channel(url, ca, identity).await {
        Err(_) => true,
        Ok(ch) => KvClient::new(ch).range(range("greeting")).await.is_err(),
    }
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn put(key: &str, value: &[u8]) -> pb::PutRequest {
    pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        ..Default::default()
    }
}

fn range(key: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// The value of a metric line with labels, e.g. `name{port="peer"}`.
fn labelled_metric(cluster: &ProcCluster, i: usize, line_prefix: &str) -> Option<u64> {
    let body = support::http_get(cluster.members[i].metrics, "/metrics")?;
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{line_prefix} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Ends a process this test started, by its PID.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {within:?}");
}

fn client_tls_args(pki: &Pki, cert: &Path, key: &Path, client_cert_auth: bool) -> Vec<String> {
    let mut args = vec![
        format!("--cert-file={}", s(cert)),
        format!("--key-file={}", s(key)),
        format!("--trusted-ca-file={}", s(&pki.ca_file())),
    ];
    if client_cert_auth {
        args.push("--client-cert-auth".into());
    }
    args
}

fn peer_tls_args(pki: &Pki, cert: &Path, key: &Path) -> Vec<String> {
    vec![
        format!("--peer-cert-file={}", s(cert)),
        format!("--peer-key-file={}", s(key)),
        format!("--peer-trusted-ca-file={}", s(&pki.ca_file())),
    ]
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_member_refuses_plaintext_clients_and_certificates_of_another_ca() {
    let pki = Pki::new("cluster-ca");
    let other = Pki::new("other-ca");
    let (server_cert, server_key) = pki.issue("member", "server");
    let (client_cert, client_key) = pki.issue("app", "client");
    let (foreign_cert, foreign_key) = other.issue("app", "foreign");
    let args = client_tls_args(&pki, &server_cert, &server_key, true);
    let cluster = ProcCluster::start_with_schemes(1, &refs(&args), "https", "http");
    cluster.wait_for_leader(&[0]);
    let url = format!("https://{}", cluster.endpoint(0));
    let (ca, cert, key) = (s(&pki.ca_file()), s(&client_cert), s(&client_key));

    // etcdctl 3.4 with the cluster's CA and a client certificate: served.
    let tls = [
        format!("--cacert={ca}"),
        format!("--cert={cert}"),
        format!("--key={key}"),
    ];
    let (ok, out) = etcdctl(&url, &[&tls[0], &tls[1], &tls[2], "put", "greeting", "hello"]);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(&url, &[&tls[0], &tls[1], &tls[2], "get", "greeting"]);
    assert!(ok && out.contains("hello"), "{out}");

    // Plaintext, no client certificate, a certificate of another CA: refused.
    let (ok, out) = etcdctl(&format!("http://{}", cluster.endpoint(0)), &["get", "greeting"]);
    assert!(!ok, "plaintext must be refused: {out}");
    let (ok, out) = etcdctl(&url, &[&tls[0], "get", "greeting"]);
    assert!(!ok, "a client without a certificate must be refused: {out}");
    let foreign = [
        format!("--cert={}", s(&foreign_cert)),
        format!("--key={}", s(&foreign_key)),
    ];
    let (ok, out) = etcdctl(&url, &[&tls[0], &foreign[0], &foreign[1], "get", "greeting"]);
    assert!(!ok, "a certificate of another CA must be refused: {out}");

    // The same with a Rust client: only the right CA and certificate get through.
    let pem = pki.ca_pem();
    assert!(refused(&url, Some(&pem), None).await, "no client certificate");
    assert!(
        refused(&url, Some(&pem), Some((&foreign_cert, &foreign_key))).await,
        "a client certificate of another CA"
    );
    assert!(
        refused(&url.replace("https", "http"), None, None).await,
        "plaintext"
    );
    let mut kv = KvClient::new(
        channel(&url, Some(&pem), Some((&client_cert, &client_key)))
            .await
            .unwrap(),
    );
    let got = kv.range(range("greeting")).await.unwrap().into_inner();
    assert_eq!(got.kvs[0].value, b"hello");
    // A client that does not trust the member's CA does not talk to it either.
    let wrong_ca = other.ca_pem();
    assert!(
        refused(&url, Some(&wrong_ca), Some((&client_cert, &client_key))).await,
        "a client trusting another CA must not be served"
    );
    assert!(
        labelled_metric(
            &cluster,
            0,
            "kuberaft_tls_handshake_failures_total{port=\"client\"}"
        )
        .unwrap()
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_of_another_clusters_ca_cannot_join_or_disturb_the_cluster() {
    let pki = Pki::new("cluster-peer-ca");
    let other = Pki::new("other-cluster-ca");
    let (peer_cert, peer_key) = pki.issue("peer", "peer");
    let args = peer_tls_args(&pki, &peer_cert, &peer_key);
    let cluster = ProcCluster::start_with_schemes(3, &refs(&args), "http", "https");
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let (ok, out) = etcdctl(&cluster.endpoint(leader), &["put", "k", "before"]);
    assert!(ok, "{out}");
    let term = cluster.metric(leader, "kuberaft_term").unwrap();

    // A process that claims to be m2 (same token, names and so cluster id: its hello
    // would pass), on ports of its own, with a peer certificate of another CA. It hears
    // no leader, so it campaigns toward m0 and m1.
    let (rogue_cert, rogue_key) = other.issue("peer", "rogue");
    let ports = support::free_ports(3);
    let rogue_dir = tempfile::tempdir().unwrap();
    let initial = format!(
        "m0=https://127.0.0.1:{},m1=https://127.0.0.1:{},m2=https://127.0.0.1:{}",
        cluster.members[0].peer, cluster.members[1].peer, ports[1]
    );
    let rogue = Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .arg("--name=m2")
        .arg(format!("--data-dir={}", rogue_dir.path().display()))
        .arg(format!("--listen-client-urls=http://127.0.0.1:{}", ports[0]))
        .arg(format!("--listen-peer-urls=https://127.0.0.1:{}", ports[1]))
        .arg(format!("--listen-metrics-urls=http://127.0.0.1:{}", ports[2]))
        .arg(format!("--initial-cluster={initial}"))
        .arg(format!("--initial-cluster-token={}", cluster.token))
        // It trusts the cluster's CA (a CA certificate is no secret): only the members'
        // check of its certificate keeps it out.
        .args(peer_tls_args(&pki, &rogue_cert, &rogue_key))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(rogue_dir.path().join("log.txt")).unwrap())
        .spawn()
        .unwrap();
    let _rogue = KillOnDrop(rogue);
    wait_until("the rogue serves metrics", Duration::from_secs(20), || {
        support::http_get(ports[2], "/metrics").is_some()
    });
    std::thread::sleep(Duration::from_secs(4));

    wait_until("peer handshakes refused", Duration::from_secs(20), || {
        (0..3).any(|i| {
            labelled_metric(
                &cluster,
                i,
                "kuberaft_tls_handshake_failures_total{port=\"peer\"}",
            )
            .unwrap_or(0)
                > 0
        })
    });
    let rogue_metrics = support::http_get(ports[2], "/metrics").unwrap();
    assert!(
        rogue_metrics.lines().any(|l| l == "kuberaft_has_leader 0"),
        "the rogue never hears a leader"
    );
    assert_eq!(
        cluster.wait_for_leader(&[0, 1, 2]),
        leader,
        "leadership did not move"
    );
    assert_eq!(
        cluster.metric(leader, "kuberaft_term"),
        Some(term),
        "no election was forced"
    );
    assert_eq!(cluster.metric(leader, "kuberaft_voters"), Some(3));
    let (ok, out) = etcdctl(&cluster.endpoint(leader), &["put", "k", "after"]);
    assert!(ok, "{out}");
    let rogue_log = std::fs::read_to_string(rogue_dir.path().join("log.txt")).unwrap();
    assert!(!rogue_log.is_empty(), "the rogue ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_what_each_identity_may_do() {
    let pki = Pki::new("roles-ca");
    let (server_cert, server_key) = pki.issue("member", "server");
    let (reader_cert, reader_key) = pki.issue("reader", "reader");
    let (writer_cert, writer_key) = pki.issue("writer", "writer");
    let tokens = pki.path("tokens");
    std::fs::write(
        &tokens,
        "# token role name\nro-token readonly viewer\nrw-token readwrite app\nadm-token admin ops\n\
         - readonly reader\n- readwrite writer\n- admin member\n",
    )
    .unwrap();
    let mut args = client_tls_args(&pki, &server_cert, &server_key, false);
    args.push(format!("--auth-token-file={}", s(&tokens)));
    let cluster = ProcCluster::start_with_schemes(3, &refs(&args), "https", "http");
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    let pem = pki.ca_pem();
    let url = |i: usize| format!("https://{}", cluster.endpoint(i));
    let mut kv = KvClient::new(channel(&url(follower), Some(&pem), None).await.unwrap());

    // No credentials, a wrong token: UNAUTHENTICATED.
    let status = kv.range(range("k")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = kv.range(with_token(range("k"), Some("guess"))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // readwrite writes, through a follower that forwards to the leader with the token.
    kv.put(with_token(put("k", b"v1"), Some("rw-token")))
        .await
        .unwrap();
    // Leases through the follower too, the keepalive stream included.
    let mut leases = kuberaft_proto::etcdserverpb::lease_client::LeaseClient::new(
        channel(&url(follower), Some(&pem), None).await.unwrap(),
    );
    let grant = pb::LeaseGrantRequest { ttl: 60, id: 0 };
    let lease = leases
        .lease_grant(with_token(grant, Some("rw-token")))
        .await
        .unwrap()
        .into_inner();
    let keepalive = tokio_stream::once(pb::LeaseKeepAliveRequest { id: lease.id });
    let mut answers = leases
        .lease_keep_alive(with_token(keepalive, Some("rw-token")))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("a keepalive answer");
    assert!(
        answer.ttl > 0,
        "the forwarded keepalive renewed the lease: {answer:?}"
    );
    // readonly reads but cannot write or change membership.
    let got = kv
        .range(with_token(range("k"), Some("ro-token")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs[0].value, b"v1");
    let status = kv
        .put(with_token(put("k", b"v2"), Some("ro-token")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("readonly"), "{}", status.message());
    let mut members = ClusterClient::new(channel(&url(leader), Some(&pem), None).await.unwrap());
    let add = pb::MemberAddRequest {
        peer_ur_ls: vec!["http://127.0.0.1:1".into()],
        is_learner: true,
    };
    let status = members
        .member_add(with_token(add.clone(), Some("ro-token")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = members
        .member_add(with_token(add, Some("rw-token")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let mut admin = kuberaft_proto::admin::admin_client::AdminClient::new(
        channel(&url(leader), Some(&pem), None).await.unwrap(),
    );
    let status = admin
        .status(with_token(Default::default(), Some("rw-token")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    admin
        .status(with_token(Default::default(), Some("adm-token")))
        .await
        .unwrap();

    // A client certificate names the caller: "reader" is readonly.
    let (ca, cert, key) = (s(&pki.ca_file()), s(&reader_cert), s(&reader_key));
    let tls = [
        format!("--cacert={ca}"),
        format!("--cert={cert}"),
        format!("--key={key}"),
    ];
    let (ok, out) = etcdctl(&url(leader), &[&tls[0], &tls[1], &tls[2], "get", "k"]);
    assert!(ok && out.contains("v1"), "{out}");
    let (ok, out) = etcdctl(&url(leader), &[&tls[0], &tls[1], &tls[2], "put", "k", "v3"]);
    assert!(!ok && out.contains("permission denied"), "{out}");
    let (ok, out) = etcdctl(&url(leader), &[&tls[0], "get", "k"]);
    assert!(!ok, "{out}");
    // "writer" writes through a follower, which forwards with its own certificate.
    let writer = [
        format!("--cert={}", s(&writer_cert)),
        format!("--key={}", s(&writer_key)),
    ];
    let (ok, out) = etcdctl(
        &url(follower),
        &[&tls[0], &writer[0], &writer[1], "put", "w", "by-cert"],
    );
    assert!(ok, "{out}");

    // Nothing a refused caller sent changed anything.
    let got = kv
        .range(with_token(range("k"), Some("ro-token")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs[0].value, b"v1");
    assert_eq!(got.kvs[0].version, 1);
    let denied: u64 = (0..3)
        .filter_map(|i| {
            labelled_metric(
                &cluster,
                i,
                "kuberaft_auth_denied_total{reason=\"permission_denied\"}",
            )
        })
        .sum();
    let unauthenticated: u64 = (0..3)
        .filter_map(|i| {
            labelled_metric(
                &cluster,
                i,
                "kuberaft_auth_denied_total{reason=\"unauthenticated\"}",
            )
        })
        .sum();
    assert!(denied >= 5, "permission denials counted: {denied}");
    assert!(
        unauthenticated >= 3,
        "unauthenticated requests counted: {unauthenticated}"
    );
    assert!(
        cluster.log(leader).contains("permission denied"),
        "denials are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_is_throttled_and_recovers_while_another_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "noisy-token readwrite noisy\nquiet-token readwrite quiet\n",
    )
    .unwrap();
    let auth = format!("--auth-token-file={}", s(&tokens));
    let cluster = ProcCluster::start(1, &[&auth, "--rate-limit-rps=1", "--rate-limit-burst=3"]);
    cluster.wait_for_leader(&[0]);
    let url = format!("http://{}", cluster.endpoint(0));
    let kv = KvClient::new(channel(&url, None, None).await.unwrap());

    // 20 requests at once: at most the burst plus what refills meanwhile get through.
    let calls = (0..20).map(|i| {
        let mut kv = kv.clone();
        async move {
            kv.put(with_token(put(&format!("n{i}"), b"x"), Some("noisy-token")))
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let throttled: Vec<&tonic::Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        !throttled.is_empty(),
        "some of 20 requests at once must be throttled"
    );
    for status in &throttled {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("retry after"), "{}", status.message());
        assert!(status.metadata().get("retry-after-ms").is_some());
    }
    // Another identity is unaffected.
    let mut quiet = kv.clone();
    for i in 0..3 {
        quiet
            .put(with_token(put(&format!("q{i}"), b"x"), Some("quiet-token")))
            .await
            .expect("another client is not throttled");
    }
    // The noisy one recovers after the hinted wait.
    let wait: u64 = throttled[0]
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(wait.max(1000) + 100)).await;
    let mut noisy = kv.clone();
    noisy
        .put(with_token(put("n-later", b"x"), Some("noisy-token")))
        .await
        .expect("the throttled client recovers");
    assert!(labelled_metric(&cluster, 0, "kuberaft_rate_limited_total").unwrap() >= throttled.len() as u64);
    // What was throttled was not written.
    let written = results.iter().filter(|r| r.is_ok()).count() as i64;
    let count = noisy
        .range(with_token(
            pb::RangeRequest {
                key: b"n".to_vec(),
                range_end: b"o".to_vec(),
                count_only: true,
                ..Default::default()
            },
            Some("quiet-token"),
        ))
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, written + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_and_too_many_txn_ops_are_refused_and_change_nothing() {
    let cluster = ProcCluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    for i in [leader, follower] {
        let mut kv = KvClient::new(
            channel(&format!("http://{}", cluster.endpoint(i)), None, None)
                .await
                .unwrap(),
        );
        kv.put(put("small", b"ok")).await.unwrap();
        let before = kv
            .range(range("small"))
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;

        // Just over etcd's 1.5 MiB request limit: etcd's own error.
        let status = kv
            .put(put("big", &vec![b'x'; 1536 * 1024 + 1]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("request is too large"),
            "{}",
            status.message()
        );
        // Far over it: refused before it is decoded.
        let status = kv.put(put("big", &vec![b'x'; 3 << 20])).await.unwrap_err();
        assert_ne!(status.code(), Code::Ok);
        // 129 operations in a txn (the limit is 128).
        let ops = (0..129)
            .map(|n| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put(&format!("t{n}"), b"x"))),
            })
            .collect();
        let status = kv
            .txn(pb::TxnRequest {
                success: ops,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("too many operations"),
            "{}",
            status.message()
        );
        // 128 is fine... but first: nothing changed.
        let after = kv.range(range("small")).await.unwrap().into_inner();
        assert_eq!(
            after.header.unwrap().revision,
            before,
            "a refused request changed the store"
        );
        assert!(kv.range(range("big")).await.unwrap().into_inner().kvs.is_empty());
    }
    let mut kv = KvClient::new(
        channel(&format!("http://{}", cluster.endpoint(leader)), None, None)
            .await
            .unwrap(),
    );
    let ops = (0..128)
        .map(|n| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(put(&format!("t{n}"), b"x"))),
        })
        .collect();
    kv.txn(pb::TxnRequest {
        success: ops,
        ..Default::default()
    })
    .await
    .expect("128 operations are within the limit");
}

/// The certificate a TLS server at `port` presents now (a fresh connection).
async fn served_certificate(port: u16, ca: &Path) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pki_types_pem(&pem) {
        roots.add(cert).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn rustls_pki_types_pem(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn der_of(pem_file: &Path) -> Vec<u8> {
    rustls_pki_types_pem(&std::fs::read(pem_file).unwrap())[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_failed_requests_or_a_leader_change() {
    let pki = Pki::new("rotation-ca");
    let (server_cert, server_key) = pki.issue("member", "server");
    let (peer_cert, peer_key) = pki.issue("peer", "peer");
    let (client_cert, client_key) = pki.issue("writer", "client");
    let mut args = client_tls_args(&pki, &server_cert, &server_key, true);
    args.extend(peer_tls_args(&pki, &peer_cert, &peer_key));
    let mut cluster = ProcCluster::start_with_schemes(3, &refs(&args), "https", "https");
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let term = cluster.metric(leader, "kuberaft_term").unwrap();
    let pem = pki.ca_pem();
    let url = format!("https://{}", cluster.endpoint(leader));
    let before = served_certificate(cluster.members[leader].client, &pki.ca_file()).await;
    assert!(before == der_of(&server_cert), "the first certificate is served");

    // A writer on one connection, for the whole rotation.
    let mut kv = KvClient::new(
        channel(&url, Some(&pem), Some((&client_cert, &client_key)))
            .await
            .unwrap(),
    );
    let writer = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u64, Vec::new());
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_secs(8) && n < 100_000 {
            match kv.put(put(&format!("w{}", n % 100), b"v")).await {
                Ok(_) => ok += 1,
                Err(status) => failed.push(status),
            }
            n += 1;
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Rotate every member's server and peer certificates (all share the files).
    pki.issue("member", "server");
    pki.issue("peer", "peer");
    pki.issue("writer", "client");
    let (ok, failed) = writer.await.unwrap();
    assert!(ok > 0);
    assert!(failed.is_empty(), "requests failed during rotation: {failed:?}");

    // New connections see the new certificate, on every member.
    for i in 0..3 {
        let port = cluster.members[i].client;
        let rotated = der_of(&server_cert);
        let mut served = Vec::new();
        for _ in 0..50 {
            served = served_certificate(port, &pki.ca_file()).await;
            if served == rotated {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(served == rotated, "member {i} serves the rotated certificate");
        assert!(labelled_metric(&cluster, i, "kuberaft_tls_certificate_reloads_total").unwrap() >= 1);
    }
    // A follower restarted after the rotation connects to its peers with the new peer
    // certificate, and they accept it.
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    let mut kv = KvClient::new(
        channel(&url, Some(&pem), Some((&client_cert, &client_key)))
            .await
            .unwrap(),
    );
    kv.put(put("after-rotation", b"yes")).await.unwrap();
    cluster.spawn(follower);
    let follower_url = format!("https://{}", cluster.endpoint(follower));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = match channel(&follower_url, Some(&pem), Some((&client_cert, &client_key))).await {
            Ok(ch) => KvClient::new(ch)
                .range(pb::RangeRequest {
                    serializable: true,
                    ..range("after-rotation")
                })
                .await
                .map(|r| !r.into_inner().kvs.is_empty())
                .unwrap_or(false),
            Err(_) => false,
        };
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted follower did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(cluster.wait_for_leader(&[0, 1, 2]), leader, "no leader change");
    assert_eq!(cluster.metric(leader, "kuberaft_term"), Some(term), "no election");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_adds_a_member_and_it_joins_a_tls_cluster_over_mutual_tls() {
    let pki = Pki::new("join-ca");
    let (server_cert, server_key) = pki.issue("member", "server");
    let (peer_cert, peer_key) = pki.issue("peer", "peer");
    let (ops_cert, ops_key) = pki.issue("ops", "ops");
    let (reader_cert, reader_key) = pki.issue("reader", "reader");
    let tokens = pki.path("tokens");
    std::fs::write(
        &tokens,
        "ro-token readonly viewer\n- admin ops\n- readonly reader\n- admin member\n",
    )
    .unwrap();
    let mut args = client_tls_args(&pki, &server_cert, &server_key, true);
    args.extend(peer_tls_args(&pki, &peer_cert, &peer_key));
    args.push(format!("--auth-token-file={}", s(&tokens)));
    let mut cluster = ProcCluster::start_with_schemes(3, &refs(&args), "https", "https");
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let url = format!("https://{}", cluster.endpoint(leader));
    let ca = format!("--cacert={}", s(&pki.ca_file()));
    let ops = [
        format!("--cert={}", s(&ops_cert)),
        format!("--key={}", s(&ops_key)),
    ];
    let reader = [
        format!("--cert={}", s(&reader_cert)),
        format!("--key={}", s(&reader_key)),
    ];
    let (ok, out) = etcdctl(&url, &[&ca, &ops[0], &ops[1], "put", "before-join", "yes"]);
    assert!(ok, "{out}");

    let ports = support::free_ports(3);
    let base = cluster.members[0].dir.parent().unwrap().to_path_buf();
    let mut extra = args.clone();
    extra.push("--initial-cluster-state=existing".into());
    cluster.members.push(support::Member {
        name: "m3".into(),
        client: ports[0],
        peer: ports[1],
        metrics: ports[2],
        dir: base.join("m3"),
        child: None,
        peer_via: None,
        extra,
    });
    let peer_url = format!("--peer-urls=https://127.0.0.1:{}", ports[1]);
    let (ok, out) = etcdctl(
        &url,
        &[
            &ca,
            &reader[0],
            &reader[1],
            "member",
            "add",
            "m3",
            "--learner",
            &peer_url,
        ],
    );
    assert!(
        !ok && out.contains("permission denied"),
        "a readonly identity: {out}"
    );
    let (ok, out) = etcdctl(
        &url,
        &[
            &ca,
            &ops[0],
            &ops[1],
            "member",
            "add",
            "m3",
            "--learner",
            &peer_url,
        ],
    );
    assert!(ok, "an admin identity: {out}");
    cluster.spawn(3);

    // The learner finds itself in the member list over mutual TLS and catches up.
    let new_url = format!("https://127.0.0.1:{}", ports[0]);
    let pem = pki.ca_pem();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = match channel(&new_url, Some(&pem), Some((&reader_cert, &reader_key))).await {
            Ok(ch) => KvClient::new(ch)
                .range(pb::RangeRequest {
                    serializable: true,
                    ..range("before-join")
                })
                .await
                .map(|r| !r.into_inner().kvs.is_empty())
                .unwrap_or(false),
            Err(_) => false,
        };
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new member did not join: {}",
            cluster.log(3)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(cluster.metric(3, "kuberaft_learners"), Some(1));
}
