//! `kubectl raft`: the kubectl plugin for RaftClusters (installed on PATH as
//! `kubectl-raft`, kubectl finds it by that name).
//!
//! ```text
//! kubectl raft status NAME [-n NS] [--context CTX] [-o table|json|yaml]
//! kubectl raft hibernate NAME      # spec.hibernate: true  (members stop, volumes stay)
//! kubectl raft wake NAME           # spec.hibernate: false (the same members come back)
//! kubectl raft backup NAME [--path DIR] [--backup-name B]   # a RaftBackup: one backup now
//! ```
//!
//! It talks to the API server only (the kubeconfig kubectl uses: `KUBECONFIG`, or
//! `--kubeconfig`), never to the members: what it prints is what the operator wrote to
//! the RaftCluster's status, and what it changes goes through the spec, so the operator
//! stays the only thing that acts on a cluster.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use kuberaft_operator::crd::{BackupDestination, RaftBackup, RaftBackupSpec, RaftCluster};

#[derive(Parser)]
#[command(
    name = "kubectl raft",
    bin_name = "kubectl raft",
    version,
    about = "Status and day-2 operations of RaftClusters"
)]
struct Cli {
    /// Namespace of the RaftCluster (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    context: Option<String>,
    /// kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Phase, leader, members and conditions of a RaftCluster, from its status.
    Status {
        name: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Stop every member and keep the volumes (sets spec.hibernate: true).
    Hibernate { name: String },
    /// Start the members of a hibernated RaftCluster again (sets spec.hibernate: false).
    Wake { name: String },
    /// One backup now: creates a RaftBackup (the operator takes it and records the
    /// outcome in its status). The destination is spec.backup's unless --path is given.
    Backup {
        name: String,
        /// A directory of the operator's pod instead of spec.backup.destination.
        #[arg(long)]
        path: Option<String>,
        /// Name of the RaftBackup (default: NAME-YYYYMMDDHHMMSS, UTC).
        #[arg(long)]
        backup_name: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

async fn client(cli: &Cli) -> Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &options).await?
        }
        None => Config::from_kubeconfig(&options)
            .await
            .context("no usable kubeconfig")?,
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((Client::try_from(config)?, namespace))
}

async fn get(api: &Api<RaftCluster>, name: &str) -> Result<RaftCluster> {
    match api.get_opt(name).await? {
        Some(rc) => Ok(rc),
        None => bail!("RaftCluster {name} not found (kubectl get raft lists them)"),
    }
}

fn print_status(rc: &RaftCluster) {
    let status = rc.status.clone().unwrap_or_default();
    let name = rc.metadata.name.clone().unwrap_or_default();
    println!("RaftCluster {name}");
    println!("  phase:     {}", status.phase.as_deref().unwrap_or("(none yet)"));
    println!(
        "  replicas:  {} wanted, {} voting, {} pods ready",
        rc.spec.replicas, status.replicas, status.ready_replicas
    );
    match (&status.leader, status.term) {
        (Some(leader), Some(term)) => println!("  leader:    {leader} (term {term})"),
        _ => println!("  leader:    none"),
    }
    if let Some(t) = &status.timing {
        println!(
            "  timing:    heartbeat {} ms, election timeout {} ms",
            t.heartbeat_interval_ms, t.election_timeout_ms
        );
    }
    if !status.members.is_empty() {
        println!();
        println!(
            "  {:<24} {:<18} {:<10} {:<8} {:>12} {:>9}",
            "MEMBER", "ID", "ROLE", "HEALTHY", "MATCH INDEX", "RTT ms"
        );
        for m in &status.members {
            println!(
                "  {:<24} {:<18} {:<10} {:<8} {:>12} {:>9}",
                m.name,
                m.id,
                m.role,
                if m.healthy { "yes" } else { "no" },
                m.match_index,
                m.rtt_ms.map_or("-".to_string(), |r| format!("{r:.1}"))
            );
        }
    }
    if let Some(b) = &status.last_backup {
        println!(
            "  backup:    {} at revision {} ({} bytes, sha256 {}, from {}, {})",
            b.location, b.revision, b.size, b.checksum, b.member, b.time
        );
    }
    if let Some(next) = status
        .backup_schedule
        .as_ref()
        .and_then(|s| s.next_time.as_deref())
    {
        println!("  next:      backup at {next}");
    }
    if !status.conditions.is_empty() {
        println!();
        for c in &status.conditions {
            println!("  {:<12} {:<6} {:<16} {}", c.type_, c.status, c.reason, c.message);
        }
    }
}

async fn set_hibernate(api: &Api<RaftCluster>, name: &str, on: bool) -> Result<()> {
    let rc = get(api, name).await?;
    if rc.spec.hibernate == on {
        println!(
            "RaftCluster {name} already has spec.hibernate: {on} (phase {})",
            rc.status.and_then(|s| s.phase).as_deref().unwrap_or("none yet")
        );
        return Ok(());
    }
    let patch = serde_json::json!({ "spec": { "hibernate": on } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching RaftCluster {name}"))?;
    if on {
        println!(
            "RaftCluster {name}: hibernating (members stop, volumes stay); `kubectl raft status {name}` shows phase Hibernated when done"
        );
    } else {
        println!("RaftCluster {name}: waking (the same members start again on their data)");
    }
    Ok(())
}

/// The RaftBackup `kubectl raft backup` creates.
fn backup_object(rc: &RaftCluster, path: Option<&str>, backup_name: &str) -> Result<RaftBackup> {
    let name = rc.metadata.name.clone().unwrap_or_default();
    let destination = match (path, &rc.spec.backup) {
        (Some(path), _) => BackupDestination {
            path: Some(path.to_string()),
            s3: None,
        },
        (None, Some(backup)) => backup.destination.clone(),
        (None, None) => bail!("RaftCluster {name} has no spec.backup: give a destination with --path"),
    };
    kuberaft_operator::backup::validate_destination(&destination).map_err(anyhow::Error::msg)?;
    let mut object = RaftBackup::new(
        backup_name,
        RaftBackupSpec {
            cluster_name: name,
            destination,
        },
    );
    object.metadata.namespace = rc.metadata.namespace.clone();
    Ok(object)
}

async fn backup(
    client: Client,
    namespace: &str,
    name: &str,
    path: Option<&str>,
    backup_name: Option<&str>,
) -> Result<()> {
    let rc = get(&Api::namespaced(client.clone(), namespace), name).await?;
    let backup_name = backup_name.map_or_else(
        || {
            let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y%m%d%H%M%S");
            format!("{name}-{now}")
        },
        str::to_string,
    );
    let object = backup_object(&rc, path, &backup_name)?;
    let api: Api<RaftBackup> = Api::namespaced(client, namespace);
    api.create(&kube::api::PostParams::default(), &object)
        .await
        .with_context(|| format!("creating RaftBackup {backup_name} (is crds/raftbackup.yaml installed?)"))?;
    println!("RaftBackup {backup_name} created; `kubectl get raftbackup {backup_name}` shows its phase and location");
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let (client, namespace) = client(&cli).await?;
    let api: Api<RaftCluster> = Api::namespaced(client.clone(), &namespace);
    match &cli.command {
        Command::Status { name, output } => {
            let rc = get(&api, name).await?;
            match output {
                Output::Table => print_status(&rc),
                Output::Json => println!("{}", serde_json::to_string_pretty(&rc)?),
                Output::Yaml => print!("{}", serde_norway::to_string(&rc)?),
            }
        }
        Command::Hibernate { name } => set_hibernate(&api, name, true).await?,
        Command::Wake { name } => set_hibernate(&api, name, false).await?,
        Command::Backup {
            name,
            path,
            backup_name,
        } => backup(client, &namespace, name, path.as_deref(), backup_name.as_deref()).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(backup: &str) -> RaftCluster {
        let text = format!(
            "apiVersion: kuberaft.io/v1alpha1\nkind: RaftCluster\nmetadata: {{name: demo, namespace: prod}}\nspec:\n  replicas: 3\n  storage: {{wal: {{size: 1Gi}}, snapshots: {{size: 1Gi}}}}\n{backup}"
        );
        kuberaft_operator::render::parse_manifest(&text).unwrap()
    }

    #[test]
    fn a_backup_goes_to_the_path_given_else_to_spec_backups_destination() {
        let with_spec = cluster(
            "  backup:\n    schedule: \"0 * * * *\"\n    destination: {s3: {bucket: b, prefix: p}}\n",
        );
        let object = backup_object(&with_spec, None, "demo-1").unwrap();
        assert_eq!(object.metadata.name.as_deref(), Some("demo-1"));
        assert_eq!(object.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(object.spec.cluster_name, "demo");
        assert_eq!(object.spec.destination.s3.as_ref().unwrap().bucket, "b");
        let object = backup_object(&with_spec, Some("/mnt/backups"), "demo-2").unwrap();
        assert_eq!(object.spec.destination.path.as_deref(), Some("/mnt/backups"));
        assert!(object.spec.destination.s3.is_none());
        let without = cluster("");
        let e = backup_object(&without, None, "x").unwrap_err().to_string();
        assert!(e.contains("no spec.backup") && e.contains("--path"), "{e}");
        let e = backup_object(&without, Some("relative"), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute"), "{e}");
    }
}
