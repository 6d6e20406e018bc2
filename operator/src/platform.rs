//! The effects an orchestration step needs, behind one trait, so the same planner drives
//! Kubernetes ([`crate::k8s::KubePlatform`]) and local processes (`raftctl up`).
//!
//! A platform owns the workload (pods or processes and their volumes); the members'
//! own APIs (membership, leadership, timing) are the same everywhere and are called by
//! [`execute`] through [`crate::node`].

use crate::backup::{self, BackupDecision, BackupOutcome};
use crate::crd::{BackupDestination, BackupSource, BackupSpec};
use crate::plan::{Action, Naming, Plan};
use crate::restore;
use crate::{node, Result};

/// What differs between Kubernetes and local processes.
#[allow(async_fn_in_trait)]
pub trait Platform {
    /// Client URL (`http://host:2379`, `https://` with TLS) of the member with this ordinal.
    fn client_endpoint(&self, ordinal: u32) -> String;
    /// How members are reached (TLS settings and the client certificate).
    fn access(&self) -> node::Access;
    /// Run `to` members (ordinals `0..to`).
    async fn scale_workload(&self, to: i32) -> Result<()>;
    /// Stop the member with this ordinal so it comes back from the current template.
    async fn restart_member(&self, ordinal: u32) -> Result<()>;
    /// Delete the WAL and snapshot volumes of an ordinal that is no longer a member.
    async fn delete_volumes(&self, ordinal: u32) -> Result<()>;
    /// Stop the member with this ordinal and delete its data, so it starts again
    /// empty (member replacement, after it was added back as a learner).
    async fn wipe_member(&self, ordinal: u32) -> Result<()>;
    /// Where backups to `destination` are written, with the credentials it needs
    /// (Kubernetes: a Secret; local: the environment).
    async fn backup_target(&self, destination: &BackupDestination) -> Result<backup::Target>;
    /// Builds the data of members `0..members` from the backup at `source` before any
    /// of them has started (local: `raft-node restore` into each member's directory).
    async fn restore(&self, source: &BackupSource, members: i32) -> Result<restore::Fetched>;
}

/// Carries out this round's restore, when the plan asks for one; `None` otherwise. The
/// error is a message for status and Events (it names the backup's location).
pub async fn restore<P: Platform>(
    platform: &P,
    plan: &Plan,
) -> Option<std::result::Result<restore::Fetched, String>> {
    let Some(Action::Restore { members, source }) = &plan.action else {
        return None;
    };
    Some(
        platform
            .restore(source, *members)
            .await
            .map_err(|e| e.to_string()),
    )
}

/// Takes the scheduled backup when the plan says one is due; `None` otherwise. The
/// error is a message for status and Events (it names the destination).
pub async fn backup<P: Platform>(
    platform: &P,
    cluster: &str,
    spec: Option<&BackupSpec>,
    plan: &Plan,
    now_ms: u64,
) -> Option<std::result::Result<BackupOutcome, String>> {
    let (Some(spec), Some(BackupDecision::Take { member, ordinal, .. })) = (spec, &plan.backup) else {
        return None;
    };
    Some(
        take_backup(
            platform,
            cluster,
            None,
            &spec.destination,
            spec.retention.as_ref(),
            member,
            *ordinal,
            now_ms,
        )
        .await,
    )
}

/// One backup of `cluster` from member `member` to `destination`, then retention;
/// `tag` (a RaftBackup's name) makes it a one-shot backup that retention leaves alone.
#[allow(clippy::too_many_arguments)]
pub async fn take_backup<P: Platform>(
    platform: &P,
    cluster: &str,
    tag: Option<&str>,
    destination: &BackupDestination,
    retention: Option<&crate::crd::Retention>,
    member: &str,
    ordinal: u32,
    now_ms: u64,
) -> std::result::Result<BackupOutcome, String> {
    let target = platform
        .backup_target(destination)
        .await
        .map_err(|e| e.to_string())?;
    backup::take(
        &platform.access(),
        &platform.client_endpoint(ordinal),
        member,
        cluster,
        tag,
        &target,
        retention,
        now_ms,
    )
    .await
    .map_err(|e| e.to_string())
}

/// Carries out one step. `Wait` and `Refuse` do nothing here (the caller reports them);
/// `Bootstrap` is done by applying the children the plan describes.
pub async fn execute<P: Platform>(platform: &P, plan: &Plan, naming: &Naming) -> Result<()> {
    let Some(action) = &plan.action else {
        return Ok(());
    };
    let leader_endpoint = || {
        let ordinal = plan
            .leader
            .as_deref()
            .and_then(|name| naming.ordinal_of(name, ""))
            .unwrap_or(0);
        platform.client_endpoint(ordinal)
    };
    let access = platform.access();
    match action {
        // A restore is carried out by [`restore`], the bootstrap by applying the children.
        Action::Bootstrap { .. } | Action::Restore { .. } | Action::Wait { .. } | Action::Refuse { .. } => {
            Ok(())
        }
        Action::AddLearner { peer_url, .. } => {
            access.add_learner(&leader_endpoint(), peer_url).await.map(|_| ())
        }
        Action::ScaleWorkload { to } => platform.scale_workload(*to).await,
        Action::Promote { id, .. } => access.promote(&leader_endpoint(), *id).await,
        Action::TransferLeader { to, .. } => access.transfer_leader(&leader_endpoint(), to).await,
        Action::RemoveMember { id, .. } => access.remove(&leader_endpoint(), *id).await,
        Action::DeleteVolumes { ordinal } => platform.delete_volumes(*ordinal).await,
        Action::RestartMember { ordinal } => platform.restart_member(*ordinal).await,
        Action::ReplaceMember { id, .. } => access.remove(&leader_endpoint(), *id).await,
        Action::WipeMember { ordinal } => platform.wipe_member(*ordinal).await,
        Action::SetTiming { timing, reason } => access.set_timing(&leader_endpoint(), *timing, reason).await,
    }
}
