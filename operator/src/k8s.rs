//! The Kubernetes side: observe → plan → apply → status, run by a kube-rs `Controller`
//! that owns the StatefulSet, the Services and the PodDisruptionBudget.
//!
//! - observe: the StatefulSet, the pods and PVCs (by the cluster's selector labels), and
//!   each pod's admin `Status` (in parallel, with a deadline);
//! - plan: [`crate::plan::plan`], pure;
//! - apply: every child with server-side apply under one field manager
//!   ([`FIELD_MANAGER`]), then the one orchestration step through [`KubePlatform`];
//! - status: server-side apply of the status subresource with the conditions
//!   `Available`, `Progressing` and `Degraded`, and an Event for each step taken,
//!   refused, or failed.
//!
//! A finalizer ([`FINALIZER`]) deletes or keeps the PVCs on deletion, as
//! `spec.storage.reclaimPolicy` says; the other children go with their owner.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

use crate::backup::{self, BackupDecision, BackupOutcome};
use crate::certs;
use crate::crd::{
    BackupDestination, BackupPhase, BackupSource, MemberStatus, RaftBackup, RaftBackupStatus, RaftCluster,
    RaftClusterStatus, ReclaimPolicy, TimingStatus, TlsMode,
};
use crate::plan::{self, Action, FailedStarts, Naming, Observed, Plan, PodObservation};
use crate::platform::{self, Platform};
use crate::render::{self, TEMPLATE_HASH_ANNOTATION};
use crate::restore;
use crate::{node, Error, Result};

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "raft-operator";
/// Held on every RaftCluster until its volumes were dealt with.
pub const FINALIZER: &str = "kuberaft.io/volumes";
/// Look again this soon while a change is underway.
pub const REQUEUE_BUSY: Duration = Duration::from_secs(5);
/// ... and this soon when all is steady (adaptive timing, health in status).
pub const REQUEUE_STEADY: Duration = Duration::from_secs(30);

/// Counters for `/metrics` (Prometheus text format).
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<MetricsInner>,
}

#[derive(Default)]
struct MetricsInner {
    reconciles: u64,
    duration_seconds_sum: f64,
    failures: BTreeMap<String, u64>,
    actions: BTreeMap<&'static str, u64>,
}

impl Metrics {
    fn reconciled(&self, elapsed: Duration) {
        let mut m = self.inner.lock().expect("not poisoned");
        m.reconciles += 1;
        m.duration_seconds_sum += elapsed.as_secs_f64();
    }

    fn failed(&self, reason: &str) {
        *self
            .inner
            .lock()
            .expect("not poisoned")
            .failures
            .entry(reason.to_string())
            .or_default() += 1;
    }

    fn acted(&self, kind: &'static str) {
        *self
            .inner
            .lock()
            .expect("not poisoned")
            .actions
            .entry(kind)
            .or_default() += 1;
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let m = self.inner.lock().expect("not poisoned");
        let mut out = String::new();
        out.push_str("# HELP kuberaft_operator_reconciles_total Reconciles run.\n");
        out.push_str("# TYPE kuberaft_operator_reconciles_total counter\n");
        out.push_str(&format!("kuberaft_operator_reconciles_total {}\n", m.reconciles));
        out.push_str("# HELP kuberaft_operator_reconcile_duration_seconds Time spent reconciling.\n");
        out.push_str("# TYPE kuberaft_operator_reconcile_duration_seconds summary\n");
        out.push_str(&format!(
            "kuberaft_operator_reconcile_duration_seconds_sum {}\n",
            m.duration_seconds_sum
        ));
        out.push_str(&format!(
            "kuberaft_operator_reconcile_duration_seconds_count {}\n",
            m.reconciles
        ));
        out.push_str("# HELP kuberaft_operator_reconcile_failures_total Failed reconciles by reason.\n");
        out.push_str("# TYPE kuberaft_operator_reconcile_failures_total counter\n");
        for (reason, n) in &m.failures {
            out.push_str(&format!(
                "kuberaft_operator_reconcile_failures_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP kuberaft_operator_actions_total Orchestration steps by kind.\n");
        out.push_str("# TYPE kuberaft_operator_actions_total counter\n");
        for (kind, n) in &m.actions {
            out.push_str(&format!(
                "kuberaft_operator_actions_total{{action=\"{kind}\"}} {n}\n"
            ));
        }
        out
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

impl Context {
    pub fn new(client: Client, instance: Option<String>, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
        }
    }
}

/// Kubernetes as a [`Platform`]: pods of the StatefulSet, their PVCs.
pub struct KubePlatform {
    client: Client,
    name: String,
    namespace: String,
    scheme: &'static str,
    access: node::Access,
}

impl KubePlatform {
    /// `access`: how members are reached ([`tls_access`]).
    pub fn new(client: Client, rc: &RaftCluster, access: node::Access) -> Self {
        KubePlatform {
            client,
            name: rc.name_any(),
            namespace: render::namespace(rc),
            scheme: render::scheme(&rc.spec),
            access,
        }
    }

    fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// The claims of one ordinal, as the StatefulSet names them (`{template}-{sts}-{ordinal}`).
pub fn claim_names(cluster: &str, ordinal: u32) -> [String; 2] {
    [
        format!("wal-{cluster}-{ordinal}"),
        format!("snapshots-{cluster}-{ordinal}"),
    ]
}

fn ignore_not_found(result: kube::Result<impl Sized>) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Platform for KubePlatform {
    fn access(&self) -> node::Access {
        self.access.clone()
    }

    fn client_endpoint(&self, ordinal: u32) -> String {
        format!(
            "{}://{}-{ordinal}.{}.{}.svc:{}",
            self.scheme,
            self.name,
            render::peer_service_name(&self.name),
            self.namespace,
            render::CLIENT_PORT
        )
    }

    async fn scale_workload(&self, to: i32) -> Result<()> {
        let patch = serde_json::json!({ "spec": { "replicas": to } });
        self.api::<StatefulSet>()
            .patch_scale(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn restart_member(&self, ordinal: u32) -> Result<()> {
        let pod = format!("{}-{ordinal}", self.name);
        ignore_not_found(self.api::<Pod>().delete(&pod, &DeleteParams::default()).await)
    }

    async fn delete_volumes(&self, ordinal: u32) -> Result<()> {
        for claim in claim_names(&self.name, ordinal) {
            ignore_not_found(
                self.api::<PersistentVolumeClaim>()
                    .delete(&claim, &DeleteParams::default())
                    .await,
            )?;
        }
        Ok(())
    }

    async fn wipe_member(&self, ordinal: u32) -> Result<()> {
        // The claims first (held by the pod until it goes), then the pod: the
        // StatefulSet recreates both, empty.
        self.delete_volumes(ordinal).await?;
        self.restart_member(ordinal).await
    }

    async fn backup_target(&self, destination: &BackupDestination) -> Result<backup::Target> {
        backup::validate_destination(destination).map_err(Error::Backup)?;
        if let Some(path) = &destination.path {
            return Ok(backup::Target::Dir(path.into()));
        }
        let s3 = destination.s3.as_ref().expect("validated: path or s3");
        let credentials = match &s3.credentials_secret {
            None => None,
            Some(name) => {
                let secret = self.api::<Secret>().get_opt(name).await?.ok_or_else(|| {
                    Error::Backup(format!(
                        "s3://{}: Secret {name} (destination.s3.credentialsSecret) not found in namespace {}",
                        s3.bucket, self.namespace
                    ))
                })?;
                Some(
                    backup::S3Credentials::from_lookup(|key| secret_text(&secret, key)).ok_or_else(|| {
                        Error::Backup(format!(
                            "s3://{}: Secret {name} needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                            s3.bucket
                        ))
                    })?,
                )
            }
        };
        backup::s3_target(s3, credentials)
    }

    async fn restore(&self, source: &BackupSource, _members: i32) -> Result<restore::Fetched> {
        // The members' volumes are only reachable from their pods; an init step that
        // fetches the backup there is not built yet. Refused, so nothing starts empty.
        Err(Error::Backup(format!(
            "cannot restore from {}: spec.bootstrap.fromBackup is not supported on Kubernetes yet \
             (raftctl up supports it; or run `raft-node restore` into each member's volumes by hand)",
            restore::location(source)
        )))
    }
}

/// How members of `rc` are named and reached.
pub fn naming(rc: &RaftCluster) -> Naming {
    let name = rc.name_any();
    let namespace = render::namespace(rc);
    let scheme = render::scheme(&rc.spec);
    Naming {
        prefix: name.clone(),
        peer_url: Arc::new(move |o| render::peer_url(scheme, &name, &namespace, o)),
    }
}

fn selector(rc: &RaftCluster) -> String {
    render::selector_labels(&rc.name_any())
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn ordinal_suffix(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.strip_prefix('-')?.parse().ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The failed starts of the raft-node container of `pod`: while it is failing (waiting
/// to be restarted, or exited with an error) and its last run ended with an error, the
/// container's restart count and its termination message (the end of its log, by
/// `terminationMessagePolicy: FallbackToLogsOnError`). `None` for a pod that runs or
/// never failed.
pub fn failed_starts_of(pod: &Pod) -> Option<FailedStarts> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "raft-node")?;
    if status.ready {
        return None;
    }
    let failing_now = status
        .state
        .as_ref()
        .is_some_and(|s| s.waiting.is_some() || s.terminated.as_ref().is_some_and(|t| t.exit_code != 0));
    let last = status.last_state.as_ref()?.terminated.as_ref()?;
    if !failing_now || last.exit_code == 0 || status.restart_count <= 0 {
        return None;
    }
    let message = last
        .message
        .as_deref()
        .and_then(|m| m.lines().rev().find(|l| !l.trim().is_empty()))
        .map(|l| l.chars().take(300).collect::<String>())
        .or_else(|| {
            Some(format!(
                "exit code {}{}",
                last.exit_code,
                last.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ))
        });
    Some(FailedStarts {
        count: status.restart_count as u32,
        last_error: message,
    })
}

fn pods_list_failed_starts(name: &str, pods: &[Pod]) -> std::collections::BTreeMap<u32, FailedStarts> {
    pods.iter()
        .filter_map(|pod| Some((ordinal_suffix(&pod.name_any(), name)?, failed_starts_of(pod)?)))
        .collect()
}

/// Reads what exists.
pub async fn observe(rc: &RaftCluster, platform: &KubePlatform) -> Result<Observed> {
    let name = rc.name_any();
    let labels = ListParams::default().labels(&selector(rc));
    let statefulset = platform.api::<StatefulSet>().get_opt(&name).await?;
    let pods = platform.api::<Pod>().list(&labels).await?;
    let pod_objects = pods.items.clone();
    let claims = platform.api::<PersistentVolumeClaim>().list(&labels).await?;
    let pods: Vec<PodObservation> = pods
        .items
        .iter()
        .filter_map(|pod| {
            let ordinal = ordinal_suffix(&pod.name_any(), &name)?;
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Some(PodObservation {
                ordinal,
                template_hash: pod.annotations().get(TEMPLATE_HASH_ANNOTATION).cloned(),
                ready,
                terminating: pod.metadata.deletion_timestamp.is_some(),
            })
        })
        .collect();
    let volume_ordinals = claims
        .items
        .iter()
        .filter_map(|c| {
            let n = c.name_any();
            ["wal-", "snapshots-"]
                .iter()
                .find_map(|t| n.strip_prefix(t))
                .and_then(|rest| ordinal_suffix(rest, &name))
        })
        .collect();
    let endpoints: Vec<String> = pods
        .iter()
        .filter(|p| !p.terminating)
        .map(|p| platform.client_endpoint(p.ordinal))
        .collect();
    let failed_starts = pods_list_failed_starts(&name, &pod_objects);
    Ok(Observed {
        failed_starts,
        workload_replicas: statefulset.map(|s| s.spec.replicas.unwrap_or(1)),
        pods,
        volume_ordinals,
        members: platform.access.statuses(&endpoints).await,
        now_ms: now_ms(),
    })
}

/// Server-side apply of every child under [`FIELD_MANAGER`].
pub async fn apply_children(client: &Client, rc: &RaftCluster, rendered: &render::Rendered) -> Result<()> {
    let namespace = render::namespace(rc);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    async fn ssa<K>(client: &Client, ns: &str, object: &K, params: &PatchParams) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + Serialize
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        api.patch(&object.name_any(), params, &Patch::Apply(object))
            .await?;
        Ok(())
    }
    ssa(client, &namespace, &rendered.peer_service, &params).await?;
    ssa(client, &namespace, &rendered.client_service, &params).await?;
    ssa(client, &namespace, &rendered.statefulset, &params).await?;
    ssa(client, &namespace, &rendered.pdb, &params).await?;
    Ok(())
}

fn condition(
    previous: &[Condition],
    type_: &str,
    on: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if on { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The status the plan (and the step's outcome) describe.
pub fn status_of(
    rc: &RaftCluster,
    observed: &Observed,
    plan: &Plan,
    outcome: &std::result::Result<(), String>,
) -> RaftClusterStatus {
    let previous = rc.status.clone().unwrap_or_default();
    let generation = rc.metadata.generation;
    let timing_changed = outcome.is_ok() && matches!(plan.action, Some(Action::SetTiming { .. }));
    let applied = match &plan.action {
        Some(Action::SetTiming { timing, .. }) if timing_changed => Some(*timing),
        _ => plan.timing,
    };
    let progress_message = match (&plan.action, outcome) {
        (_, Err(e)) => format!("step failed: {e}"),
        (Some(a), Ok(())) => a.to_string(),
        (None, Ok(())) => "steady".to_string(),
    };
    let degraded_message = plan.degraded.clone().or_else(|| outcome.clone().err());
    let phase = if !plan.bootstrapped {
        "Bootstrapping"
    } else if plan.hibernated {
        "Hibernated"
    } else if rc.spec.hibernate {
        "Hibernating"
    } else if plan.degraded.is_some() || plan.leader.is_none() {
        "Degraded"
    } else if plan.progressing() {
        "Progressing"
    } else {
        "Running"
    };
    let conditions = vec![
        condition(
            &previous.conditions,
            "Available",
            plan.available(),
            if plan.available() {
                "LeaderElected"
            } else if rc.spec.hibernate {
                "Hibernated"
            } else {
                "NoQuorum"
            },
            match &plan.leader {
                Some(l) => format!("{l} leads term {}", plan.term.unwrap_or(0)),
                None if rc.spec.hibernate => "spec.hibernate: members are stopped, volumes kept".into(),
                None => "no leader with a quorum".into(),
            },
            generation,
        ),
        condition(
            &previous.conditions,
            "Progressing",
            plan.progressing(),
            plan.action.as_ref().map_or("Steady", |a| a.kind()),
            progress_message,
            generation,
        ),
        condition(
            &previous.conditions,
            "Degraded",
            degraded_message.is_some(),
            match (&plan.action, plan.leader.is_some()) {
                (Some(Action::Refuse { .. }), _) => "Refused",
                _ if rc.spec.hibernate && degraded_message.is_none() => "Hibernated",
                (_, false) => "QuorumLost",
                _ if degraded_message.is_some() => "Unhealthy",
                _ => "Healthy",
            },
            degraded_message
                .clone()
                .unwrap_or_else(|| "all voters healthy".into()),
            generation,
        ),
    ];
    let previous_timing = previous.timing.clone().unwrap_or_default();
    RaftClusterStatus {
        phase: Some(phase.into()),
        observed_generation: generation,
        // Voters as the leader reports them; the last known count while there is none.
        replicas: if plan.leader.is_some() {
            plan.members.iter().filter(|m| !m.learner).count() as i32
        } else {
            previous.replicas
        },
        ready_replicas: observed.pods.iter().filter(|p| p.ready).count() as i32,
        leader: plan.leader.clone(),
        term: plan.term,
        bootstrapped: plan.bootstrapped,
        members: plan
            .members
            .iter()
            .map(|m| MemberStatus {
                name: m.name.clone(),
                id: format!("{:x}", m.id),
                role: m.role.into(),
                learner: m.learner,
                healthy: m.healthy,
                match_index: m.match_index,
                rtt_ms: m.rtt_p99_ms,
            })
            .collect(),
        timing: applied.map(|t| TimingStatus {
            heartbeat_interval_ms: t.heartbeat_interval_ms,
            election_timeout_ms: t.election_timeout_ms,
            rtt_p99_ms: plan.latency.rtt_p99_ms,
            fsync_p99_ms: plan.latency.fsync_p99_ms,
            last_change_time: if timing_changed {
                Some(Timestamp::now().to_string())
            } else {
                previous_timing.last_change_time
            },
        }),
        conditions,
        // Kept as they were; [`crate::backup::record`] writes this round's outcome.
        last_backup: previous.last_backup.clone(),
        backup_schedule: previous.backup_schedule.clone(),
        // [`crate::restore::record`] writes this round's restore.
        restore: previous.restore.clone(),
        // [`crate::replace::record`] writes this round's replacement.
        replacement: previous.replacement.clone(),
    }
}

async fn publish(ctx: &Context, rc: &RaftCluster, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &rc.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn secret_error(name: &str, what: impl std::fmt::Display) -> Error {
    Error::Tls(format!("Secret {name}: {what}"))
}

/// The Secrets of `spec.tls` and how the operator reaches members with them.
///
/// Mode `Auto`: creates the CA (`NAME-ca`, once: it is never replaced while it exists),
/// and issues the members' certificate (`NAME-tls`) and the operator's client
/// certificate (`NAME-operator-tls`) when [`certs::renewal`] says so — missing, another
/// CA, names not covered, or within `renewBeforeDays` of expiry. Each issue is
/// returned as a line for an Event. Mode `Secret`: reads the user's Secrets; a missing
/// Secret or key is an error that names it.
pub async fn tls_access(
    client: &Client,
    rc: &RaftCluster,
    now: SystemTime,
) -> Result<(node::Access, Vec<String>)> {
    let Some(tls) = &rc.spec.tls else {
        return Ok((node::Access::plain(), Vec::new()));
    };
    let name = rc.name_any();
    let namespace = render::namespace(rc);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let read = |secret: &Secret, secret_name: &str, key: &str| {
        secret_text(secret, key)
            .ok_or_else(|| secret_error(secret_name, format!("no {key} (or not UTF-8 PEM)")))
    };
    match tls.mode {
        TlsMode::Secret => {
            let member = tls.member_secret(&name);
            let secret = secrets
                .get_opt(&member)
                .await?
                .ok_or_else(|| secret_error(&member, "not found (spec.tls.secretName)"))?;
            let ca = read(&secret, &member, "ca.crt")?;
            let identity = match tls.operator_secret(&name) {
                Some(op) => {
                    let secret = secrets
                        .get_opt(&op)
                        .await?
                        .ok_or_else(|| secret_error(&op, "not found (spec.tls.operatorSecretName)"))?;
                    Some((read(&secret, &op, "tls.crt")?, read(&secret, &op, "tls.key")?))
                }
                None => None,
            };
            let access = node::Access::tls(&ca, identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str())));
            Ok((access, Vec::new()))
        }
        TlsMode::Auto => {
            let mut issued = Vec::new();
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let owned = |secret_name: String, type_: &str, data: BTreeMap<String, String>| Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(secret_name),
                    namespace: Some(namespace.clone()),
                    labels: Some(render::labels(&name)),
                    owner_references: rc.controller_owner_ref(&()).map(|r| vec![r]),
                    ..Default::default()
                },
                type_: Some(type_.into()),
                data: Some(
                    data.into_iter()
                        .map(|(k, v)| (k, ByteString(v.into_bytes())))
                        .collect(),
                ),
                ..Default::default()
            };
            let ca_name = format!("{name}-ca");
            let ca = match secrets.get_opt(&ca_name).await? {
                Some(secret) => certs::Pem {
                    cert: read(&secret, &ca_name, "ca.crt")?,
                    key: read(&secret, &ca_name, "ca.key")?,
                },
                None => {
                    let ca = certs::new_authority(&format!("{namespace}/{name}"), now)?;
                    let data = BTreeMap::from([
                        ("ca.crt".to_string(), ca.cert.clone()),
                        ("ca.key".to_string(), ca.key.clone()),
                    ]);
                    secrets
                        .patch(
                            &ca_name,
                            &params,
                            &Patch::Apply(owned(ca_name.clone(), "Opaque", data)),
                        )
                        .await?;
                    issued.push(format!("created the CA in Secret {ca_name}"));
                    ca
                }
            };
            let valid_for = Duration::from_secs(u64::from(tls.certificate_validity_days) * 86_400);
            let renew_before = Duration::from_secs(u64::from(tls.renew_before_days) * 86_400);
            let requests = [
                (
                    tls.member_secret(&name),
                    certs::Request {
                        common_name: format!("{name} member"),
                        names: certs::member_names(&name, &namespace, &render::peer_service_name(&name)),
                        server: true,
                    },
                ),
                (
                    tls.operator_secret(&name).unwrap_or_default(),
                    certs::Request {
                        common_name: certs::OPERATOR_CN.into(),
                        names: Vec::new(),
                        server: false,
                    },
                ),
            ];
            let mut operator_identity = None;
            for (secret_name, request) in requests {
                let current = secrets.get_opt(&secret_name).await?;
                let current_cert = current.as_ref().and_then(|s| secret_text(s, "tls.crt"));
                let current_ca = current.as_ref().and_then(|s| secret_text(s, "ca.crt"));
                let why = certs::renewal(current_cert.as_deref(), &ca.cert, &request, now, renew_before)
                    .or_else(|| {
                        (current_ca.as_deref() != Some(ca.cert.as_str()))
                            .then(|| "its ca.crt is not the CA".into())
                    });
                let pem = match (why, current) {
                    (None, Some(secret)) => certs::Pem {
                        cert: read(&secret, &secret_name, "tls.crt")?,
                        key: read(&secret, &secret_name, "tls.key")?,
                    },
                    (why, _) => {
                        let pem = certs::issue(&ca, &request, now, valid_for)?;
                        let data = BTreeMap::from([
                            ("tls.crt".to_string(), pem.cert.clone()),
                            ("tls.key".to_string(), pem.key.clone()),
                            ("ca.crt".to_string(), ca.cert.clone()),
                        ]);
                        secrets
                            .patch(
                                &secret_name,
                                &params,
                                &Patch::Apply(owned(secret_name.clone(), "kubernetes.io/tls", data)),
                            )
                            .await?;
                        issued.push(format!(
                            "issued {} in Secret {secret_name}: {}",
                            request.common_name,
                            why.unwrap_or_default()
                        ));
                        pem
                    }
                };
                if !request.server {
                    operator_identity = Some(pem);
                }
            }
            let identity = operator_identity.expect("the operator's certificate is among the requests");
            let access = node::Access::tls(&ca.cert, Some((&identity.cert, &identity.key)));
            Ok((access, issued))
        }
    }
}

async fn apply(rc: Arc<RaftCluster>, ctx: Arc<Context>) -> Result<Requeue> {
    let (access, issued) = tls_access(&ctx.client, &rc, SystemTime::now()).await?;
    for line in issued {
        tracing::info!(cluster = %rc.name_any(), "{line}");
        publish(&ctx, &rc, EventType::Normal, "Certificate", line).await;
    }
    let platform = KubePlatform::new(ctx.client.clone(), &rc, access);
    let naming = naming(&rc);
    let observed = observe(&rc, &platform).await?;
    let plan = plan::plan(&rc.spec, rc.status.as_ref(), &observed, &naming);
    let rendered = render::render(&rc, &plan.children);
    // Before the first start, nothing is created until the plan says Bootstrap (a
    // restore from a backup comes first, and nothing starts while it fails).
    let before_start = !plan.bootstrapped
        && observed.workload_replicas.is_none()
        && !matches!(plan.action, Some(Action::Bootstrap { .. }));
    if !before_start {
        apply_children(&ctx.client, &rc, &rendered).await?;
    }
    let restore_outcome = platform::restore(&platform, &plan).await;
    match &restore_outcome {
        Some(Ok(f)) => {
            publish(
                &ctx,
                &rc,
                EventType::Normal,
                "Restored",
                format!(
                    "every member's data was restored from {} ({} bytes)",
                    f.location, f.size
                ),
            )
            .await;
        }
        Some(Err(e)) => publish(&ctx, &rc, EventType::Warning, "RestoreFailed", e.clone()).await,
        None => {}
    }

    let outcome = platform::execute(&platform, &plan, &naming).await;
    match (&plan.action, &outcome) {
        (Some(action), Err(e)) => {
            publish(
                &ctx,
                &rc,
                EventType::Warning,
                "StepFailed",
                format!("{action}: {e}"),
            )
            .await;
        }
        (Some(Action::ReplaceMember { name, reason, .. }), Ok(())) => {
            ctx.metrics.acted("ReplaceMember");
            publish(
                &ctx,
                &rc,
                EventType::Warning,
                "ReplacingMember",
                format!("{name} is replaced: {reason}; removed from the configuration, it comes back empty as a learner"),
            )
            .await;
        }
        (Some(Action::Refuse { reason }), Ok(())) => {
            publish(&ctx, &rc, EventType::Warning, "Refused", reason.clone()).await;
        }
        (Some(Action::Wait { reason }), Ok(())) if plan.leader.is_none() && plan.bootstrapped => {
            publish(&ctx, &rc, EventType::Warning, "QuorumLost", reason.clone()).await;
        }
        (Some(Action::Wait { .. }), Ok(())) | (Some(Action::Restore { .. }), Ok(())) => {}
        (Some(action), Ok(())) => {
            ctx.metrics.acted(action.kind());
            publish(&ctx, &rc, EventType::Normal, action.kind(), action.to_string()).await;
        }
        (None, _) => {}
    }
    let backup_outcome = platform::backup(
        &platform,
        &rc.name_any(),
        rc.spec.backup.as_ref(),
        &plan,
        observed.now_ms,
    )
    .await;
    for (type_, reason, note) in
        backup_events(rc.status.as_ref(), plan.backup.as_ref(), backup_outcome.as_ref())
    {
        // kuberaft_operator_actions_total{action="BackupSucceeded"|"BackupFailed"}
        if matches!(reason, "BackupSucceeded" | "BackupFailed") {
            ctx.metrics.acted(reason);
        }
        publish(&ctx, &rc, type_, reason, note).await;
    }
    let mut status = status_of(
        &rc,
        &observed,
        &plan,
        &outcome.as_ref().map(|_| ()).map_err(|e| e.to_string()),
    );
    backup::record(
        &mut status,
        rc.status.as_ref(),
        rc.spec.backup.as_ref(),
        plan.backup.as_ref(),
        backup_outcome.as_ref(),
        observed.now_ms,
    );
    restore::record(
        &mut status,
        rc.status.as_ref(),
        &rc.spec,
        &plan,
        restore_outcome.as_ref(),
        observed.now_ms,
    );
    crate::replace::record(
        &mut status,
        rc.status.as_ref(),
        &plan,
        outcome.is_ok(),
        observed.now_ms,
    );
    let next_backup = status
        .backup_schedule
        .as_ref()
        .and_then(|s| s.next_time.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(|t| {
            Duration::from_millis(
                // A due backup that has to wait is looked at again as a busy step is.
                (t.as_millisecond().max(0) as u64)
                    .saturating_sub(now_ms())
                    .max(REQUEUE_BUSY.as_millis() as u64),
            )
        });
    let body = serde_json::json!({
        "apiVersion": "kuberaft.io/v1alpha1",
        "kind": "RaftCluster",
        "status": status,
    });
    let api: Api<RaftCluster> = Api::namespaced(ctx.client.clone(), &render::namespace(&rc));
    api.patch_status(
        &rc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    outcome?;
    let after = match &plan.action {
        Some(Action::Refuse { .. }) => REQUEUE_STEADY,
        Some(_) => REQUEUE_BUSY,
        None => REQUEUE_STEADY,
    };
    // Come back when the next backup is due, if that is sooner.
    Ok(Requeue::requeue(next_backup.map_or(after, |b| b.min(after))))
}

/// The Events of this round's backup decision: a backup written (and what retention
/// deleted), a failure, or an invalid `spec.backup` (once per distinct reason).
pub fn backup_events(
    previous: Option<&RaftClusterStatus>,
    decision: Option<&BackupDecision>,
    outcome: Option<&std::result::Result<BackupOutcome, String>>,
) -> Vec<(EventType, &'static str, String)> {
    let mut events = Vec::new();
    match (decision, outcome) {
        (Some(BackupDecision::Take { member, .. }), Some(Ok(o))) => {
            events.push((
                EventType::Normal,
                "BackupSucceeded",
                format!(
                    "backup {} from {member} at revision {}: {} bytes, sha256 {}, {} ms",
                    o.record.location,
                    o.record.revision,
                    o.record.size,
                    o.record.checksum,
                    o.record.duration_ms
                ),
            ));
            if !o.deleted.is_empty() {
                events.push((
                    EventType::Normal,
                    "BackupsDeleted",
                    format!("retention deleted {}", o.deleted.join(", ")),
                ));
            }
            if let Some(e) = &o.retention_error {
                events.push((EventType::Warning, "RetentionFailed", e.clone()));
            }
        }
        (Some(BackupDecision::Take { attempt, .. }), Some(Err(e))) => {
            events.push((
                EventType::Warning,
                "BackupFailed",
                format!("attempt {attempt}: {e}; retried with back-off"),
            ));
        }
        (Some(BackupDecision::Invalid { reason }), _) => {
            let known = previous
                .and_then(|s| s.backup_schedule.as_ref())
                .and_then(|s| s.last_error.as_deref());
            if known != Some(reason.as_str()) {
                events.push((EventType::Warning, "BackupInvalid", reason.clone()));
            }
        }
        _ => {}
    }
    events
}

async fn cleanup(rc: Arc<RaftCluster>, ctx: Arc<Context>) -> Result<Requeue> {
    // Only volumes are touched here: no member is called.
    let platform = KubePlatform::new(ctx.client.clone(), &rc, node::Access::plain());
    match rc.spec.storage.reclaim_policy {
        ReclaimPolicy::Retain => {
            publish(
                &ctx,
                &rc,
                EventType::Normal,
                "VolumesKept",
                "reclaimPolicy Retain: volumes kept".into(),
            )
            .await;
        }
        ReclaimPolicy::Delete => {
            let claims = platform
                .api::<PersistentVolumeClaim>()
                .list(&ListParams::default().labels(&selector(&rc)))
                .await?;
            for claim in &claims.items {
                ignore_not_found(
                    platform
                        .api::<PersistentVolumeClaim>()
                        .delete(&claim.name_any(), &DeleteParams::default())
                        .await,
                )?;
            }
            publish(
                &ctx,
                &rc,
                EventType::Normal,
                "VolumesDeleted",
                format!(
                    "reclaimPolicy Delete: {} volume claims deleted",
                    claims.items.len()
                ),
            )
            .await;
        }
    }
    Ok(Requeue::await_change())
}

/// One reconcile of one RaftCluster, behind the finalizer.
pub async fn reconcile(rc: Arc<RaftCluster>, ctx: Arc<Context>) -> Result<Requeue> {
    let started = Instant::now();
    let namespace = render::namespace(&rc);
    let api: Api<RaftCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, rc, |event| async {
        match event {
            Finalizer::Apply(rc) => apply(rc, ctx.clone()).await,
            Finalizer::Cleanup(rc) => cleanup(rc, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(started.elapsed());
    result
}

/// Short label of an error, for the failure counter.
pub fn error_label(error: &Error) -> &'static str {
    match error {
        Error::Kube(_) => "kube",
        Error::Node { .. } => "node",
        Error::Manifest(_) => "manifest",
        Error::Local(_) => "local",
        Error::Tls(_) => "tls",
        Error::Backup(_) => "backup",
        Error::Finalizer(inner) => match inner.as_ref() {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => error_label(e),
            _ => "finalizer",
        },
    }
}

pub fn error_policy(_rc: Arc<RaftCluster>, error: &Error, ctx: Arc<Context>) -> Requeue {
    tracing::warn!(error = %error, "reconcile failed");
    ctx.metrics.failed(error_label(error));
    Requeue::requeue(Duration::from_secs(15))
}

/// Failed attempts of a RaftBackup (with back-off between them) before it is Failed.
pub const BACKUP_ATTEMPTS_MAX: u32 = 5;

async fn publish_on(
    ctx: &Context,
    object: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Backup".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, object).await {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

async fn patch_backup_status(api: &Api<RaftBackup>, name: &str, status: &RaftBackupStatus) -> Result<()> {
    let body = serde_json::json!({
        "apiVersion": "kuberaft.io/v1alpha1",
        "kind": "RaftBackup",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// One RaftBackup: taken once from a healthy member of its RaftCluster (Pending →
/// Running → Succeeded), retried with back-off up to [`BACKUP_ATTEMPTS_MAX`] attempts
/// (then Failed); a destination that cannot work fails at once. A finished RaftBackup
/// is never run again.
pub async fn reconcile_backup(rb: Arc<RaftBackup>, ctx: Arc<Context>) -> Result<Requeue> {
    let mut status = rb.status.clone().unwrap_or_default();
    if matches!(status.phase, BackupPhase::Succeeded | BackupPhase::Failed) {
        return Ok(Requeue::await_change());
    }
    let namespace = rb.namespace().unwrap_or_else(|| "default".into());
    let name = rb.name_any();
    let api: Api<RaftBackup> = Api::namespaced(ctx.client.clone(), &namespace);
    let object = rb.object_ref(&());
    if let Err(reason) = backup::validate_destination(&rb.spec.destination) {
        status.phase = BackupPhase::Failed;
        status.message = Some(reason.clone());
        status.completion_time = Some(Timestamp::now().to_string());
        patch_backup_status(&api, &name, &status).await?;
        publish_on(&ctx, &object, EventType::Warning, "BackupInvalid", reason).await;
        return Ok(Requeue::await_change());
    }
    let started_ms = now_ms();
    let attempt: std::result::Result<BackupOutcome, String> = async {
        let clusters: Api<RaftCluster> = Api::namespaced(ctx.client.clone(), &namespace);
        let rc = clusters
            .get_opt(&rb.spec.cluster_name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "RaftCluster {} not found in namespace {namespace}",
                    rb.spec.cluster_name
                )
            })?;
        let (access, _) = tls_access(&ctx.client, &rc, SystemTime::now())
            .await
            .map_err(|e| e.to_string())?;
        let platform = KubePlatform::new(ctx.client.clone(), &rc, access);
        let observed = observe(&rc, &platform).await.map_err(|e| e.to_string())?;
        let plan = plan::plan(&rc.spec, rc.status.as_ref(), &observed, &naming(&rc));
        let (member, ordinal) = backup::pick_member(&plan).ok_or_else(|| {
            format!(
                "RaftCluster {}: no healthy member to take a backup from",
                rc.name_any()
            )
        })?;
        status.phase = BackupPhase::Running;
        status.member = Some(member.clone());
        status.message = Some(format!("streaming from {member}"));
        patch_backup_status(&api, &name, &status)
            .await
            .map_err(|e| e.to_string())?;
        platform::take_backup(
            &platform,
            &rc.name_any(),
            Some(&name),
            &rb.spec.destination,
            None,
            &member,
            ordinal,
            started_ms,
        )
        .await
    }
    .await;
    let requeue = match attempt {
        Ok(outcome) => {
            let r = &outcome.record;
            status.phase = BackupPhase::Succeeded;
            status.revision = Some(r.revision);
            status.size = Some(r.size);
            status.member = Some(r.member.clone());
            status.duration_ms = Some(r.duration_ms);
            status.checksum = Some(r.checksum.clone());
            status.location = Some(r.location.clone());
            status.message = Some(format!("backup at revision {} written", r.revision));
            status.completion_time = Some(Timestamp::now().to_string());
            publish_on(
                &ctx,
                &object,
                EventType::Normal,
                "BackupSucceeded",
                format!(
                    "{} from {} at revision {}: {} bytes, sha256 {}",
                    r.location, r.member, r.revision, r.size, r.checksum
                ),
            )
            .await;
            Requeue::await_change()
        }
        Err(e) => {
            status.attempts += 1;
            let last = status.attempts >= BACKUP_ATTEMPTS_MAX;
            status.phase = if last {
                BackupPhase::Failed
            } else {
                BackupPhase::Pending
            };
            let delay = backup::retry_delay(status.attempts);
            status.message = Some(if last {
                format!("attempt {} failed: {e}; giving up", status.attempts)
            } else {
                format!(
                    "attempt {} failed: {e}; retrying in {} s",
                    status.attempts,
                    delay.as_secs()
                )
            });
            if last {
                status.completion_time = Some(Timestamp::now().to_string());
            }
            publish_on(
                &ctx,
                &object,
                EventType::Warning,
                "BackupFailed",
                status.message.clone().unwrap_or_default(),
            )
            .await;
            if last {
                Requeue::await_change()
            } else {
                Requeue::requeue(delay)
            }
        }
    };
    patch_backup_status(&api, &name, &status).await?;
    Ok(requeue)
}

fn backup_error_policy(_rb: Arc<RaftBackup>, error: &Error, ctx: Arc<Context>) -> Requeue {
    tracing::warn!(error = %error, "RaftBackup reconcile failed");
    ctx.metrics.failed(error_label(error));
    Requeue::requeue(Duration::from_secs(15))
}

/// Runs the controller until `shutdown` resolves; reconciles in flight finish first.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    use futures::StreamExt;
    let client = ctx.client.clone();
    let (stop_backups, backups_stopped) = futures::channel::oneshot::channel::<()>();
    let backups = Controller::new(Api::<RaftBackup>::all(client.clone()), watcher::Config::default())
        .graceful_shutdown_on(async move {
            let _ = backups_stopped.await;
        })
        .run(reconcile_backup, backup_error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "RaftBackup reconciled"),
                Err(e) => tracing::debug!(error = %e, "RaftBackup controller"),
            }
        });
    let backups = tokio::spawn(backups);
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=raft-operator");
    Controller::new(
        Api::<RaftCluster>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
    .owns(Api::<Service>::all(client.clone()), owned.clone())
    .owns(Api::<PodDisruptionBudget>::all(client.clone()), owned)
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => tracing::debug!(%object, "reconciled"),
            Err(e) => tracing::debug!(error = %e, "controller"),
        }
    })
    .await;
    let _ = stop_backups.send(());
    let _ = backups.await;
}
