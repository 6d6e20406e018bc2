//! The `raft-node` server: flags (named like etcd's), start-up checks, and the
//! listeners for clients, peers and metrics.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::admin::AdminService;
use crate::api::cluster::ClusterService;
use crate::api::lease::LeaseService;
use crate::api::maintenance::MaintenanceService;
use crate::api::watch::WatchService;
use crate::api::KvService;
use crate::join::{self, MembershipService};
use crate::raft::{Config as RaftConfig, NodeId, Role, Status, Timing};
use crate::runtime::timing::{timing_from_ms, TICK_MS};
use crate::runtime::{self, NodeHandle, RuntimeConfig};
use crate::transport::{GrpcTransport, PeerService, TransportConfig};

#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Human-readable name of this member; must appear in --initial-cluster.
    #[arg(long, env = "KUBERAFT_NAME", default_value = "default")]
    pub name: String,
    /// Default parent of --wal-dir and --snapshot-dir.
    #[arg(long, env = "KUBERAFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Write-ahead log directory (default: DATA_DIR/wal).
    #[arg(long, env = "KUBERAFT_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Snapshot directory (default: DATA_DIR/snap).
    #[arg(long, env = "KUBERAFT_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,
    #[arg(
        long,
        env = "KUBERAFT_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,
    #[arg(long, env = "KUBERAFT_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    #[arg(
        long,
        env = "KUBERAFT_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,
    #[arg(long, env = "KUBERAFT_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Every initial member as name=peer-url, comma separated.
    #[arg(long, env = "KUBERAFT_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` to form a cluster, `existing` to join one (after MemberAdd).
    #[arg(long, env = "KUBERAFT_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    #[arg(
        long,
        env = "KUBERAFT_INITIAL_CLUSTER_TOKEN",
        default_value = "kuberaft-cluster"
    )]
    pub initial_cluster_token: String,
    /// Milliseconds between heartbeats.
    #[arg(long, env = "KUBERAFT_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Milliseconds without a leader before an election.
    #[arg(long, env = "KUBERAFT_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Applied entries between snapshots (etcd 3.6's default). A snapshot fsyncs the
    /// state store and writes a marker, then the log below it minus a catch-up tail is
    /// dropped: it bounds the log kept in memory and replayed at start-up. The state
    /// itself is copied only when a follower needs it.
    #[arg(long, env = "KUBERAFT_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Bytes the state store may grow to (etcd's flag and default: 0 means 2 GiB). Over
    /// it, writes that would grow the store raise the NOSPACE alarm and are refused
    /// until the space is freed (delete, compact, defragment) and the alarm disarmed
    /// (`etcdctl alarm disarm`).
    #[arg(long, env = "KUBERAFT_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// The longest applied writes wait before the state store commits them, fsynced
    /// (etcd's flag and default; a duration such as `100ms` or `1s`, 1ms to 10s). They
    /// are served from memory meanwhile and the WAL holds them. Longer batches write
    /// fewer pages per put; a crash replays them from the WAL either way.
    #[arg(long, env = "KUBERAFT_BACKEND_BATCH_INTERVAL", default_value = "100ms", value_parser = parse_batch_interval)]
    pub backend_batch_interval: Duration,
    /// Applied entries after which the state store commits, whatever the interval
    /// (etcd's flag; 10,000 as etcd's default).
    #[arg(long, env = "KUBERAFT_BACKEND_BATCH_LIMIT", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub backend_batch_limit: u64,
    #[arg(
        long,
        env = "KUBERAFT_LISTEN_METRICS_URLS",
        default_value = "http://127.0.0.1:2381"
    )]
    pub listen_metrics_urls: String,
    /// Log as JSON lines.
    #[arg(long, env = "KUBERAFT_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Batches to a peer at least this large are zstd-compressed (0: never).
    #[arg(long, env = "KUBERAFT_PEER_COMPRESSION_THRESHOLD_BYTES", default_value_t = 64 * 1024)]
    pub peer_compression_threshold_bytes: usize,
    /// Benchmark only: turn pipelining and batching off (one entry per append, one
    /// append in flight per follower, one input per wake-up, one fsync per WAL write),
    /// to measure what they buy.
    #[arg(
        long,
        env = "KUBERAFT_ABLATE_PIPELINING_AND_BATCHING",
        default_value_t = false
    )]
    pub ablate_pipelining_and_batching: bool,
    /// Keep this many revisions of history; the leader compacts older ones every few
    /// seconds (0: never; compaction frees the state store's pages for reuse).
    #[arg(long, env = "KUBERAFT_AUTO_COMPACTION_RETENTION", default_value_t = 10_000)]
    pub auto_compaction_retention: i64,
    /// Recover from the loss of a quorum: keep this member's data, revisions and
    /// cluster id and make it the only voter (etcd's flag). Entries it holds beyond
    /// its commit index are committed by the new one-member configuration; newer
    /// entries only the lost members had are discarded. Refused without existing data.
    #[arg(long, env = "KUBERAFT_FORCE_NEW_CLUSTER", default_value_t = false)]
    pub force_new_cluster: bool,
    #[command(flatten)]
    pub security: crate::security::flags::SecurityArgs,
}

/// `--backend-batch-interval`: a duration (`100ms`, `1s`), from 1 ms to 10 s.
fn parse_batch_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 100ms or 1s)"))?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(10) {
        return Err(format!("{text} is outside 1ms..10s"));
    }
    Ok(d)
}

/// A flag combination that cannot work, named so the user knows what to change.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct FlagError {
    pub flag: &'static str,
    pub reason: String,
}

fn flag_error(flag: &'static str, reason: impl Into<String>) -> FlagError {
    FlagError {
        flag,
        reason: reason.into(),
    }
}

/// FNV-1a: stable member and cluster ids from names, like etcd derives them.
pub fn stable_id(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.as_bytes().iter().chain(std::iter::once(&0u8)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash.max(1)
}

/// The address of the first URL, and whether it is https://.
fn listen_addr(flag: &'static str, urls: &str) -> Result<(SocketAddr, bool), FlagError> {
    let first = urls.split(',').next().unwrap_or_default().trim();
    let (rest, https) = match (first.strip_prefix("http://"), first.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => {
            return Err(flag_error(
                flag,
                format!("{first:?} must be an http:// or https:// URL"),
            ))
        }
    };
    let addr = rest
        .trim_end_matches('/')
        .parse()
        .map_err(|e| flag_error(flag, format!("{first:?} is not host:port with a numeric IP: {e}")))?;
    Ok((addr, https))
}

/// What the flags describe, checked.
#[derive(Clone, Debug)]
pub struct Plan {
    pub id: NodeId,
    pub cluster_id: u64,
    pub members: BTreeMap<NodeId, (String, String)>,
    pub wal_dir: PathBuf,
    pub snapshot_dir: PathBuf,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub advertise_client_urls: Vec<String>,
    pub timing: Timing,
    pub bootstrap: bool,
    /// TLS on the client and peer ports (https:// URLs).
    pub client_https: bool,
    pub peer_https: bool,
}

impl ServeArgs {
    pub fn plan(&self) -> Result<Plan, FlagError> {
        if self.name.is_empty() {
            return Err(flag_error("name", "must not be empty"));
        }
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.kuberaft", self.name)));
        let wal_dir = self.wal_dir.clone().unwrap_or_else(|| data_dir.join("wal"));
        let snapshot_dir = self.snapshot_dir.clone().unwrap_or_else(|| data_dir.join("snap"));
        if wal_dir == snapshot_dir {
            return Err(flag_error("snapshot-dir", "must differ from --wal-dir"));
        }
        let (client_addr, client_https) = listen_addr("listen-client-urls", &self.listen_client_urls)?;
        let (peer_addr, peer_https) = listen_addr("listen-peer-urls", &self.listen_peer_urls)?;
        let (metrics_addr, metrics_https) = listen_addr("listen-metrics-urls", &self.listen_metrics_urls)?;
        if metrics_https {
            return Err(flag_error(
                "listen-metrics-urls",
                "the metrics port serves plain HTTP only",
            ));
        }
        self.security
            .check(client_https, peer_https)
            .map_err(|refused| flag_error(refused.flag, refused.reason))?;
        if client_addr == peer_addr || client_addr == metrics_addr || peer_addr == metrics_addr {
            return Err(flag_error(
                "listen-peer-urls",
                "client, peer and metrics addresses must differ",
            ));
        }
        let timing = timing_from_ms(self.heartbeat_interval, self.election_timeout)
            .map_err(|refused| flag_error(refused.value.flag(), refused.reason))?;
        let bootstrap = match self.initial_cluster_state.as_str() {
            "new" => true,
            "existing" => false,
            other => {
                return Err(flag_error(
                    "initial-cluster-state",
                    format!("{other:?} is neither new nor existing"),
                ))
            }
        };
        let advertise_peer = self
            .initial_advertise_peer_urls
            .clone()
            .unwrap_or_else(|| self.listen_peer_urls.clone());
        let initial = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, advertise_peer));
        let mut members = BTreeMap::new();
        for item in initial.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, url) = item
                .split_once('=')
                .ok_or_else(|| flag_error("initial-cluster", format!("{item:?} is not name=url")))?;
            let scheme = if peer_https { "https://" } else { "http://" };
            if !url.starts_with(scheme) {
                return Err(flag_error(
                    "initial-cluster",
                    format!("{url:?} must be an {scheme} URL, like --listen-peer-urls"),
                ));
            }
            let id = stable_id(&[&self.initial_cluster_token, name]);
            if members.insert(id, (name.to_string(), url.to_string())).is_some() {
                return Err(flag_error("initial-cluster", format!("{name:?} appears twice")));
            }
        }
        let id = stable_id(&[&self.initial_cluster_token, &self.name]);
        if !members.contains_key(&id) {
            return Err(flag_error(
                "initial-cluster",
                format!("does not list this member ({:?})", self.name),
            ));
        }
        let mut names: Vec<&str> = members.values().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let mut parts = vec![self.initial_cluster_token.as_str()];
        parts.extend(names);
        let cluster_id = stable_id(&parts);
        let advertise_client_urls = self
            .advertise_client_urls
            .clone()
            .unwrap_or_else(|| self.listen_client_urls.clone())
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Plan {
            id,
            cluster_id,
            members,
            wal_dir,
            snapshot_dir,
            client_addr,
            peer_addr,
            metrics_addr,
            advertise_client_urls,
            timing,
            bootstrap,
            client_https,
            peer_https,
        })
    }
}

/// How long a member started with `--initial-cluster-state existing` and no data
/// waits to find itself in the cluster's member list (added by MemberAdd).
pub const JOIN_WAIT_MAX: Duration = Duration::from_secs(300);

/// What a member says when it finds it was removed (and stops).
pub const REMOVED_LOG: &str = "this member was removed from the cluster";

impl ServeArgs {
    /// The peer URLs this member advertises.
    pub fn advertise_peer_urls(&self) -> Vec<String> {
        self.initial_advertise_peer_urls
            .clone()
            .unwrap_or_else(|| self.listen_peer_urls.clone())
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// Runs a member until SIGTERM or SIGINT, or until it finds it was removed from the
/// cluster (then it stops with an error).
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut plan = args.plan()?;
    let security = args
        .security
        .load(plan.client_https, plan.peer_https)
        .map_err(|refused| flag_error(refused.flag, refused.reason))?;
    if let Some(files) = security.client_port_client.clone() {
        crate::security::tls::set_client_port_tls(files);
    }
    if let Some(files) = security.peer_client.clone() {
        crate::security::tls::set_peer_port_tls(files);
    }
    let own_peer_urls = args.advertise_peer_urls();
    // A member joining an existing cluster learns its id and the cluster's from the
    // cluster (first start) or from its WAL (restarts).
    let mut joined_peers = None;
    if args.force_new_cluster {
        let (cluster_id, id, forced) = crate::force::force_new_cluster(&plan.wal_dir, &plan.snapshot_dir, 3)?;
        plan.id = id;
        plan.cluster_id = cluster_id;
        println!(
            "raft-node: --force-new-cluster: recovered to index {} term {} (commit was {}; removed members {:?}; configuration committed at {})",
            forced.last_index,
            forced.last_term,
            forced.old_commit,
            forced.removed.iter().map(|m| format!("{m:#x}")).collect::<Vec<_>>(),
            forced.new_commit
        );
    } else if !plan.bootstrap {
        match crate::storage::read_identity(&plan.wal_dir)? {
            Some((cluster_id, id)) => {
                plan.id = id;
                plan.cluster_id = cluster_id;
            }
            None => {
                let seeds: Vec<String> = plan
                    .members
                    .values()
                    .map(|(_, url)| url.clone())
                    .filter(|url| !own_peer_urls.iter().any(|own| crate::members::same_url(own, url)))
                    .collect();
                if seeds.is_empty() {
                    anyhow::bail!(
                        "--initial-cluster: with --initial-cluster-state existing it must name at least one existing member"
                    );
                }
                let joined =
                    join::discover(&args.initial_cluster_token, &own_peer_urls, &seeds, JOIN_WAIT_MAX)
                        .await?;
                plan.id = joined.id;
                plan.cluster_id = joined.cluster_id;
                joined_peers = Some(joined.peers);
            }
        }
    }
    std::fs::create_dir_all(&plan.wal_dir)?;
    std::fs::create_dir_all(&plan.snapshot_dir)?;
    let mut raft = RaftConfig::new(plan.id);
    raft.timing = plan.timing;
    raft.snapshot_entries = args.snapshot_count;
    raft.log_tail_entries = (args.snapshot_count / 10).clamp(100, 5_000);
    raft.seed = plan.id ^ std::process::id() as u64;
    let mut config = RuntimeConfig::new(
        raft,
        plan.cluster_id,
        plan.wal_dir.clone(),
        plan.snapshot_dir.clone(),
    );
    config.tick = Duration::from_millis(TICK_MS);
    config.backend_batch.interval = args.backend_batch_interval;
    config.backend_batch.entries = args.backend_batch_limit;
    if args.quota_backend_bytes > 0 {
        config.quota_backend_bytes = args.quota_backend_bytes;
    }
    if config.quota_backend_bytes > 8 << 30 {
        tracing::warn!(
            quota = config.quota_backend_bytes,
            "--quota-backend-bytes is above 8 GiB, the most etcd recommends"
        );
    }
    config.bootstrap = plan.bootstrap.then(|| plan.members.keys().copied().collect());
    if args.ablate_pipelining_and_batching {
        tracing::warn!("pipelining and batching are off (benchmark ablation)");
        config.raft.max_inflight_msgs = 1;
        config.raft.max_batch_entries = 1;
        config.input_batch_max = 1;
        config.writer.mode = crate::storage::CommitMode::PerSubmission;
    }

    let mut transport_config =
        TransportConfig::new(plan.id, args.initial_cluster_token.clone(), plan.cluster_id);
    transport_config.client_urls = plan.advertise_client_urls.clone();
    transport_config.compress_threshold_bytes = args.peer_compression_threshold_bytes;
    transport_config.tls = security.peer_client.clone();
    // Reconnect attempts back off, but never past half an election timeout.
    transport_config.backoff_max = Duration::from_millis((args.election_timeout / 2).clamp(20, 400));
    let directory = transport_config.directory.clone();
    let links = transport_config.links.clone();
    directory
        .lock()
        .expect("not poisoned")
        .insert(plan.id, plan.advertise_client_urls.clone());
    let peer_urls: HashMap<NodeId, String> = joined_peers.unwrap_or_else(|| {
        plan.members
            .iter()
            .filter(|(id, _)| **id != plan.id)
            .map(|(id, (_, url))| (*id, url.clone()))
            .collect()
    });
    let transport = GrpcTransport::new(transport_config.clone(), peer_urls);
    let (node, mut core_task) = runtime::start(config, Arc::new(transport.clone())).await?;
    transport.attach(node.inbox(), node.snapshots().clone());
    tracing::info!(
        name = %args.name,
        id = format_args!("{:#x}", plan.id),
        cluster = format_args!("{:#x}", plan.cluster_id),
        client = %plan.client_addr,
        peer = %plan.peer_addr,
        "member starting"
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(join::follow_members(
        node.clone(),
        plan.id,
        transport.clone(),
        directory.clone(),
        transport_config.removed.clone(),
    ));
    tokio::spawn(join::publish(
        node.clone(),
        join::Attributes {
            id: plan.id,
            name: args.name.clone(),
            peer_urls: own_peer_urls.clone(),
            client_urls: plan.advertise_client_urls.clone(),
            cluster_id: plan.cluster_id,
            cluster_token: args.initial_cluster_token.clone(),
        },
        plan.members.clone(),
        shutdown_rx.clone(),
    ));
    let membership_service = MembershipService::new(
        node.clone(),
        plan.id,
        plan.cluster_id,
        args.initial_cluster_token.clone(),
        plan.members.clone(),
    );
    let removed_notice = transport_config.removed_notice.subscribe();
    let peer_service = PeerService::new(transport_config, node.inbox(), node.snapshots().clone());
    let peer_server = {
        let mut stop = shutdown_rx.clone();
        let incoming = crate::security::tls::incoming(plan.peer_addr, security.peer_tls.clone()).await?;
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(peer_service.into_server())
                .add_service(membership_service.into_server())
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<kuberaft_proto::etcdserverpb::kv_server::KvServer<KvService>>()
        .await;
    let kv = KvService::new(node.clone(), plan.id, plan.cluster_id, directory.clone());
    let watch = WatchService::new(kv.clone(), crate::api::watch::PROGRESS_NOTIFY_INTERVAL);
    let lease = LeaseService::new(kv.clone());
    tokio::spawn(crate::api::lease::run_expiry(
        node.clone(),
        lease.lessor(),
        shutdown_rx.clone(),
    ));
    let cluster = ClusterService::new(
        node.clone(),
        plan.id,
        plan.cluster_id,
        plan.members.clone(),
        directory.clone(),
    );
    let maintenance = MaintenanceService::new(node.clone(), plan.id, plan.cluster_id, kv.clone());
    let auth_service = crate::api::auth::AuthService::new(kv.clone());
    security.auth.set_etcd_tokens(kv.etcd_token_check());
    let admin = AdminService::new(
        node.clone(),
        plan.id,
        args.name.clone(),
        plan.cluster_id,
        plan.members.clone(),
        directory,
    )
    .with_peer_links(links.clone());
    let client_server = {
        let mut stop = shutdown_rx.clone();
        let incoming = crate::security::tls::incoming(plan.client_addr, security.client_tls.clone()).await?;
        let max_concurrent_streams = args.security.max_concurrent_streams;
        let auth = crate::security::auth::AuthLayer::new(security.auth.clone());
        let rate_limit = crate::security::ratelimit::RateLimitLayer::new(security.rate_limiter.clone());
        tokio::spawn(async move {
            // Layers run in the order added: authentication, then the rate limit.
            tonic::transport::Server::builder()
                .concurrency_limit_per_connection(256)
                .max_concurrent_streams(max_concurrent_streams)
                .layer(auth)
                .layer(rate_limit)
                .add_service(health_service)
                .add_service(kv.into_server())
                .add_service(watch.into_server())
                .add_service(lease.into_server())
                .add_service(cluster.into_server())
                .add_service(maintenance.into_server())
                .add_service(auth_service.into_server())
                .add_service(admin.into_server())
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        })
    };
    if args.auto_compaction_retention < 0 {
        anyhow::bail!("--auto-compaction-retention: must not be negative");
    }
    if args.auto_compaction_retention > 0 {
        tokio::spawn(auto_compact(
            node.clone(),
            args.auto_compaction_retention,
            shutdown_rx.clone(),
        ));
    }
    let metrics_server =
        crate::metrics::serve(plan.metrics_addr, node.clone(), links, shutdown_rx.clone()).await?;

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut removed = false;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = terminate.recv() => tracing::info!("terminating"),
        result = &mut core_task => tracing::error!(?result, "the core stopped"),
        _ = wait_for_removal(&node, plan.id, removed_notice) => {
            tracing::error!(id = format_args!("{:#x}", plan.id), "{REMOVED_LOG}; it stops serving");
            removed = true;
            // Lets the answer to the MemberRemove that removed it (if it came here) go out.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if !removed {
        hand_over_leadership(&node).await;
    }
    // From here on this member takes no part in Raft: while the listeners drain, it
    // must not vote, campaign or accept a leadership transfer (TimeoutNow) it would
    // drop a moment later. Everything the core handed to the WAL is flushed below.
    core_task.abort();
    let _ = shutdown_tx.send(true);
    if let Err(e) = node.flush().await {
        tracing::warn!(error = %e, "could not flush the WAL on the way out");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = peer_server.await;
        let _ = client_server.await;
        let _ = metrics_server.await;
    })
    .await;
    if removed {
        anyhow::bail!(
            "{REMOVED_LOG} (id {:#x}); wipe its data directories before it joins again",
            plan.id
        );
    }
    Ok(())
}

/// Resolves once this member is removed: it applied its own removal, or a peer
/// refused it as removed.
async fn wait_for_removal(node: &NodeHandle, me: NodeId, mut notice: watch::Receiver<bool>) {
    let mut members = node.members();
    loop {
        if members.borrow_and_update().is_removed(me) || *notice.borrow_and_update() {
            return;
        }
        tokio::select! {
            changed = members.changed() => if changed.is_err() { std::future::pending::<()>().await },
            changed = notice.changed() => if changed.is_err() { std::future::pending::<()>().await },
        }
    }
}

/// Revision-based auto-compaction (like etcd's `--auto-compaction-mode=revision`):
/// the leader proposes a compaction that keeps the last `retention` revisions.
async fn auto_compact(node: NodeHandle, retention: i64, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if node.status().borrow().role != Role::Leader {
            continue;
        }
        let store = node.read_local();
        let target = store.revision() - retention;
        if target > 0 && target > store.compacted() {
            match node
                .propose(crate::kv::KvCommand::Compact { revision: target })
                .await
            {
                Ok(_) => tracing::info!(revision = target, "auto-compaction"),
                Err(e) => tracing::debug!(error = %e, "auto-compaction deferred"),
            }
        }
    }
}

/// On a graceful stop, a leader hands leadership to the most up-to-date voter so the
/// cluster does not wait an election timeout.
async fn hand_over_leadership(node: &NodeHandle) {
    let status: Status = node.status().borrow().clone();
    if status.role != Role::Leader {
        return;
    }
    let Some(target) = status.membership.voters.iter().copied().find(|&v| v != status.id) else {
        return;
    };
    if node.transfer_leadership(target).await.is_ok() {
        let mut watch = node.status();
        let _ = tokio::time::timeout(
            Duration::from_millis(status.timing.election_ticks as u64 * TICK_MS),
            watch.wait_for(|s| s.role != Role::Leader),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<Plan, FlagError> {
        let mut argv = vec!["raft-node"];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).serve.plan()
    }

    #[test]
    fn backend_batch_flags_take_etcd_durations_and_refuse_what_is_out_of_range() {
        let args = |extra: &[&str]| {
            let mut argv = vec!["raft-node"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| c.serve)
        };
        let default = args(&[]).unwrap();
        assert_eq!(default.backend_batch_interval, Duration::from_millis(100));
        assert_eq!(default.backend_batch_limit, 10_000);
        let set = args(&["--backend-batch-interval=1s", "--backend-batch-limit=500"]).unwrap();
        assert_eq!(set.backend_batch_interval, Duration::from_secs(1));
        assert_eq!(set.backend_batch_limit, 500);
        assert_eq!(
            args(&["--backend-batch-interval=250ms"])
                .unwrap()
                .backend_batch_interval,
            Duration::from_millis(250)
        );
        for bad in [
            "--backend-batch-interval=0s",
            "--backend-batch-interval=11s",
            "--backend-batch-interval=fast",
            "--backend-batch-limit=0",
        ] {
            assert!(args(&[bad]).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_three_member_cluster_plan_has_stable_distinct_ids() {
        let cluster =
            "--initial-cluster=a=http://127.0.0.1:2380,b=http://127.0.0.1:2390,c=http://127.0.0.1:2400";
        let a = parse(&["--name=a", cluster]).unwrap();
        let b = parse(&[
            "--name=b",
            cluster,
            "--listen-client-urls=http://127.0.0.1:2389",
            "--listen-peer-urls=http://127.0.0.1:2390",
            "--listen-metrics-urls=http://127.0.0.1:2391",
        ])
        .unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.cluster_id, b.cluster_id);
        assert_eq!(a.members.len(), 3);
        assert_eq!(
            a.timing,
            Timing {
                heartbeat_ticks: 10,
                election_ticks: 100
            }
        );
    }

    #[test]
    fn bad_flags_are_named_in_the_error() {
        let cases: &[(&[&str], &str)] = &[
            (&["--election-timeout=200"], "--election-timeout"),
            (&["--heartbeat-interval=15"], "--heartbeat-interval"),
            (&["--initial-cluster-state=maybe"], "--initial-cluster-state"),
            (
                &["--name=x", "--initial-cluster=y=http://127.0.0.1:1"],
                "--initial-cluster",
            ),
            (&["--initial-cluster=default=127.0.0.1:1"], "--initial-cluster"),
            (
                &["--listen-client-urls=https://127.0.0.1:1"],
                "--listen-client-urls",
            ),
            (
                &["--listen-client-urls=ftp://127.0.0.1:1"],
                "--listen-client-urls",
            ),
            (
                &[
                    "--client-cert-auth",
                    "--listen-client-urls=https://127.0.0.1:2379",
                    "--cert-file=/c",
                    "--key-file=/k",
                ],
                "--client-cert-auth",
            ),
            (
                &[
                    "--listen-peer-urls=https://127.0.0.1:2380",
                    "--initial-cluster=default=https://127.0.0.1:2380",
                ],
                "--listen-peer-urls",
            ),
            (
                &[
                    "--listen-peer-urls=https://127.0.0.1:2380",
                    "--initial-cluster=default=http://127.0.0.1:2380",
                    "--peer-cert-file=/c",
                    "--peer-key-file=/k",
                    "--peer-trusted-ca-file=/ca",
                ],
                "--initial-cluster",
            ),
            (
                &[
                    "--listen-peer-urls=https://127.0.0.1:2380",
                    "--initial-cluster=default=https://127.0.0.1:2380",
                    "--peer-cert-file=/c",
                    "--peer-key-file=/k",
                    "--peer-trusted-ca-file=/ca",
                    "--peer-client-cert-auth=false",
                ],
                "--peer-client-cert-auth",
            ),
            (&["--cert-file=/c"], "--key-file"),
            (&["--rate-limit-rps=-1"], "--rate-limit-rps"),
            (
                &["--listen-peer-urls=http://127.0.0.1:2379"],
                "--listen-peer-urls",
            ),
            (&["--wal-dir=/tmp/x", "--snapshot-dir=/tmp/x"], "--snapshot-dir"),
        ];
        for (args, flag) in cases {
            let error = parse(args)
                .expect_err(&format!("{args:?} must be refused"))
                .to_string();
            assert!(error.starts_with(flag), "{args:?}: {error}");
        }
    }
}
