//! raft-operator: runs the RaftCluster controller, prints the CRD, renders children.
//!
//! ```text
//! raft-operator run [--metrics-addr 0.0.0.0:8080] [--lease-name raft-operator]
//! raft-operator crd                 # the CustomResourceDefinition (crds/raftcluster.yaml)
//! raft-operator render -f FILE      # the children of a RaftCluster manifest, as YAML
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::routing::get;
use clap::{Parser, Subcommand};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use kube::Client;
use kuberaft_operator::crd::{backup_crd_yaml, crd_yaml, RaftCluster};
use kuberaft_operator::k8s::{self, Context, Metrics};
use kuberaft_operator::lease::LeaseLock;
use kuberaft_operator::plan::{Children, ClusterState};
use kuberaft_operator::render;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "raft-operator",
    version,
    about = "Kubernetes operator for kuberaft RaftClusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (leader-elected; one replica acts at a time).
    Run {
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "KUBERAFT_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
        metrics_addr: SocketAddr,
        /// Name of the coordination Lease.
        #[arg(long, env = "KUBERAFT_OPERATOR_LEASE_NAME", default_value = "raft-operator")]
        lease_name: String,
        /// Namespace of the Lease (default: the pod's namespace).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// This replica's identity in the Lease (default: the pod's name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Lease duration in seconds.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
        lease_seconds: u64,
        /// Log as JSON lines.
        #[arg(long, env = "KUBERAFT_OPERATOR_LOG_JSON")]
        log_json: bool,
    },
    /// Print the RaftCluster CustomResourceDefinition (the generator of crds/raftcluster.yaml).
    Crd {
        /// Print the RaftBackup CustomResourceDefinition instead (crds/raftbackup.yaml).
        #[arg(long)]
        backup: bool,
    },
    /// Print the children (Services, StatefulSet, PodDisruptionBudget) of a RaftCluster
    /// manifest as a fresh cluster gets them, as one multi-document YAML stream.
    Render {
        #[arg(short = 'f', long = "filename")]
        file: std::path::PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd { backup } => {
            print!("{}", if backup { backup_crd_yaml() } else { crd_yaml() });
            Ok(())
        }
        Command::Render { file } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let rc = render::parse_manifest(&text).with_context(|| file.display().to_string())?;
            let children = Children {
                workload_replicas: rc.spec.replicas,
                initial_cluster_state: ClusterState::New,
                voters: rc.spec.replicas,
            };
            print!("{}", render::render(&rc, &children).to_yaml());
            Ok(())
        }
        Command::Run {
            metrics_addr,
            lease_name,
            lease_namespace,
            identity,
            lease_seconds,
            log_json,
        } => {
            init_tracing(log_json);
            run(metrics_addr, lease_name, lease_namespace, identity, lease_seconds).await
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(
    metrics_addr: SocketAddr,
    lease_name: String,
    lease_namespace: String,
    identity: Option<String>,
    lease_seconds: u64,
) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("connecting to Kubernetes")?;
    // The CRD must be installed before anything else makes sense.
    Api::<RaftCluster>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .context("RaftCluster CRD not installed (kubectl apply -f crds/raftcluster.yaml)")?;

    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(true));
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = {
        let metrics = metrics.clone();
        let ready = ready.clone();
        let app = axum::Router::new()
            .route("/metrics", get(move || async move { metrics.render() }))
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || async move {
                    if ready.load(Ordering::Relaxed) {
                        (http::StatusCode::OK, "ok")
                    } else {
                        (http::StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("binding {metrics_addr}"))?;
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        })
    };

    let identity = identity.unwrap_or_else(|| format!("raft-operator-{}", std::process::id()));
    let lock = LeaseLock::new(
        Api::<Lease>::namespaced(client.clone(), &lease_namespace),
        &lease_name,
        &identity,
        Duration::from_secs(lease_seconds),
    );
    tracing::info!(%identity, lease = %lease_name, "waiting for leadership");
    let signal = shutdown_signal();
    tokio::pin!(signal);
    tokio::select! {
        _ = lock.acquire() => {}
        _ = &mut signal => {
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Ok(());
        }
    }
    tracing::info!(%identity, "leading; starting the controller");
    let ctx = Arc::new(Context::new(client.clone(), Some(identity.clone()), metrics));
    let (trigger_tx, trigger_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(k8s::run(ctx, async move {
        let _ = trigger_rx.await;
    }));
    let why = tokio::select! {
        _ = lock.hold() => "lost the lease",
        _ = &mut signal => "signal",
    };
    ready.store(false, Ordering::Relaxed);
    tracing::info!(reason = why, "stopping the controller");
    let _ = trigger_tx.send(());
    let _ = controller.await;
    if why == "signal" {
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "releasing the lease");
        }
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    if why != "signal" {
        anyhow::bail!("leadership lost; exiting so that a fresh process campaigns again");
    }
    Ok(())
}
