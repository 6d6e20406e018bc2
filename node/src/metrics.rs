//! HTTP endpoints for probes and Prometheus: `/healthz`, `/readyz`, `/metrics`
//! (including the histograms of WAL fsync latency and of the round-trip time to each
//! peer).
//!
//! `/healthz` answers while the process serves at all. `/readyz` answers 200 once
//! the member knows a leader and has applied up to the commit index it learned when
//! it first saw one (so a restarted member is not routed to before it caught up, and
//! a busy one does not flap while applying lags commit by a few entries).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use std::sync::atomic::Ordering;

use crate::raft::Role;
use crate::runtime::{NodeHandle, APPEND_BATCH_BUCKETS, BACKEND_COMMIT_BUCKETS};
use crate::storage::writer::FSYNC_BUCKETS;
use crate::transport::rtt::PeerLinks;

async fn healthz() -> &'static str {
    "ok\n"
}

/// What the probes need: the node, and the commit index it learned when it first
/// saw a leader (it is ready once it has applied that far).
#[derive(Clone)]
struct Probe {
    node: NodeHandle,
    links: Arc<PeerLinks>,
    catch_up_to: Arc<OnceLock<u64>>,
}

async fn readyz(State(probe): State<Probe>) -> (StatusCode, String) {
    let status = probe.node.status().borrow().clone();
    if status.leader.is_none() {
        return (StatusCode::SERVICE_UNAVAILABLE, "no leader\n".into());
    }
    let target = *probe.catch_up_to.get_or_init(|| status.commit);
    if status.applied < target {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("catching up: applied {} of {target}\n", status.applied),
        );
    }
    (StatusCode::OK, "ok\n".into())
}

async fn metrics(State(probe): State<Probe>) -> String {
    let node = &probe.node;
    let status = node.status().borrow().clone();
    let mut out = String::new();
    let role = match status.role {
        Role::Follower => 0,
        Role::PreCandidate => 1,
        Role::Candidate => 2,
        Role::Leader => 3,
    };
    let gauges = [
        (
            "kuberaft_role",
            "0 follower, 1 pre-candidate, 2 candidate, 3 leader",
            role as u64,
        ),
        ("kuberaft_term", "current Raft term", status.term),
        (
            "kuberaft_commit_index",
            "highest log index known committed",
            status.commit,
        ),
        (
            "kuberaft_applied_index",
            "highest log index applied",
            status.applied,
        ),
        (
            "kuberaft_last_log_index",
            "last index in the log",
            status.last_index,
        ),
        (
            "kuberaft_has_leader",
            "1 when a leader is known",
            u64::from(status.leader.is_some()),
        ),
        (
            "kuberaft_voters",
            "voters in the configuration",
            status.membership.voters.len() as u64,
        ),
        (
            "kuberaft_learners",
            "learners in the configuration",
            status.membership.learners.len() as u64,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
    let counters = node.counters();
    let totals = [
        (
            "kuberaft_proposals_total",
            "client writes accepted by this leader",
            &counters.proposals,
        ),
        (
            "kuberaft_proposals_forwarded_total",
            "client writes this follower forwarded to the leader over the peer connection",
            &counters.proposals_forwarded,
        ),
        (
            "kuberaft_proposals_refused_total",
            "client writes refused (busy, transfer)",
            &counters.proposals_refused,
        ),
        (
            "kuberaft_snapshots_built_total",
            "snapshots taken by this member",
            &counters.snapshots_built,
        ),
        (
            "kuberaft_snapshots_installed_total",
            "snapshots received from a leader",
            &counters.snapshots_installed,
        ),
    ];
    for (name, help, value) in totals {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP kuberaft_append_batch_entries entries per append sent\n# TYPE kuberaft_append_batch_entries histogram"
    );
    let mut cumulative = 0;
    for (i, bucket) in counters.append_batch_entries.iter().enumerate() {
        cumulative += bucket.load(Ordering::Relaxed);
        let le = if i + 1 == APPEND_BATCH_BUCKETS {
            "+Inf".to_string()
        } else {
            (1u64 << i).to_string()
        };
        let _ = writeln!(
            out,
            "kuberaft_append_batch_entries_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(out, "kuberaft_append_batch_entries_count {cumulative}");
    // The state store (etcd's names where etcd has the metric).
    let store = node.read_local();
    let (db_size, db_in_use) = store.size_bytes();
    for (name, help, value) in [
        (
            "kuberaft_mvcc_db_total_size_in_bytes",
            "size of the state store file",
            db_size,
        ),
        (
            "kuberaft_mvcc_db_total_size_in_use_in_bytes",
            "bytes of the state store file in use (measured at most every 30 s)",
            db_in_use,
        ),
        (
            "kuberaft_mvcc_keys",
            "keys alive at the current revision",
            store.len() as u64,
        ),
        (
            "kuberaft_mvcc_revision",
            "current revision",
            store.revision().max(0) as u64,
        ),
        (
            "kuberaft_mvcc_compacted_revision",
            "revision history is kept from (0: never compacted)",
            store.compacted().max(0) as u64,
        ),
        (
            "kuberaft_backend_durable_applied_index",
            "applied index the state store has fsynced (a crash now replays the WAL from here)",
            store.durable_applied(),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
    for (name, help, value) in [
        (
            "kuberaft_backend_commits_total",
            "state store commits (one per applied batch)",
            &counters.backend_commits,
        ),
        (
            "kuberaft_backend_durable_commits_total",
            "state store commits that were fsynced",
            &counters.backend_durable_commits,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP kuberaft_backend_commit_seconds_total time spent committing to the state store\n# TYPE kuberaft_backend_commit_seconds_total counter\nkuberaft_backend_commit_seconds_total {}",
        counters.backend_commit_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "# HELP kuberaft_backend_durable_commit_duration_seconds fsynced state store commit latency\n# TYPE kuberaft_backend_durable_commit_duration_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, bucket) in counters.backend_durable_commit_buckets.iter().enumerate() {
        cumulative += bucket.load(Ordering::Relaxed);
        let le = if i + 1 == BACKEND_COMMIT_BUCKETS {
            "+Inf".to_string()
        } else {
            ((1u64 << (i + 7)) as f64 / 1e6).to_string()
        };
        let _ = writeln!(
            out,
            "kuberaft_backend_durable_commit_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "kuberaft_backend_durable_commit_duration_seconds_count {cumulative}"
    );
    let peers = node.peers();
    if !peers.is_empty() {
        let _ = writeln!(
            out,
            "# HELP kuberaft_peer_lag_entries entries a member is behind the leader's log\n# TYPE kuberaft_peer_lag_entries gauge"
        );
        for peer in &peers {
            let _ = writeln!(
                out,
                "kuberaft_peer_lag_entries{{peer=\"{:x}\"}} {}",
                peer.id,
                status.last_index.saturating_sub(peer.match_index)
            );
        }
    }
    let fsync = node.fsync_histogram();
    let _ = writeln!(
        out,
        "# HELP kuberaft_wal_fsync_seconds WAL fdatasync latency\n# TYPE kuberaft_wal_fsync_seconds summary"
    );
    for q in [0.5, 0.99] {
        let _ = writeln!(
            out,
            "kuberaft_wal_fsync_seconds{{quantile=\"{q}\"}} {}",
            fsync.quantile_us(q) as f64 / 1e6
        );
    }
    // The writer counts group commits in power-of-two microsecond buckets; bucket i
    // holds [2^i, 2^(i+1)) us. Shown from 64 us to about 16.8 s.
    let _ = writeln!(
        out,
        "# HELP kuberaft_wal_fsync_duration_seconds WAL group commit latency (write and fdatasync)\n# TYPE kuberaft_wal_fsync_duration_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, count) in fsync
        .buckets
        .iter()
        .enumerate()
        .take(FSYNC_HISTOGRAM_LAST_BUCKET + 1)
    {
        cumulative += count;
        if i >= FSYNC_HISTOGRAM_FIRST_BUCKET {
            let le = (1u64 << (i + 1)) as f64 / 1e6;
            let _ = writeln!(
                out,
                "kuberaft_wal_fsync_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
    }
    let _ = writeln!(
        out,
        "kuberaft_wal_fsync_duration_seconds_bucket{{le=\"+Inf\"}} {}\nkuberaft_wal_fsync_duration_seconds_sum {}\nkuberaft_wal_fsync_duration_seconds_count {}",
        fsync.count,
        fsync.sum_us as f64 / 1e6,
        fsync.count
    );
    probe.links.write_prometheus(&mut out);
    crate::security::write_metrics(&mut out);
    out
}

/// Writer buckets shown as `le` bounds of the fsync histogram (5: up to 64 us).
const FSYNC_HISTOGRAM_FIRST_BUCKET: usize = 5;
const FSYNC_HISTOGRAM_LAST_BUCKET: usize = 23;
const _: () = assert!(FSYNC_HISTOGRAM_LAST_BUCKET < FSYNC_BUCKETS - 1);

/// Starts the HTTP listener; it stops when `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    node: NodeHandle,
    links: Arc<PeerLinks>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Probe {
            node,
            links,
            catch_up_to: Arc::new(OnceLock::new()),
        });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
    }))
}
