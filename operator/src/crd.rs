//! The `RaftCluster` custom resource (`kuberaft.io/v1alpha1`, short name `raft`).
//!
//! What can be checked before the reconciler sees an object is checked by the API
//! server through CEL rules (`x-kubernetes-validations`) in the generated schema:
//! replicas 1–9, timing values consistent with their bounds, storage sizes that are
//! quantities, and fields that cannot change after creation (storage classes, sizes
//! — a StatefulSet's volumeClaimTemplates are immutable). `raft-operator crd` prints
//! the CustomResourceDefinition; `crds/raftcluster.yaml` is its committed output.

// `printcolumn(type_ = ...)` repeats per column; clippy takes it for a duplicate.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest cluster the CRD accepts: more voters only slow every commit down.
pub const REPLICAS_MAX: i32 = 9;
/// raft-node's own ceilings (`node/src/server.rs`), repeated in the schema.
pub const HEARTBEAT_INTERVAL_MS_MAX: u32 = 5_000;
pub const ELECTION_TIMEOUT_MS_MAX: u32 = 50_000;
/// Default container image of a member.
pub const DEFAULT_IMAGE: &str = "ghcr.io/kuberaft/raft-node:0.1.0";

/// A replicated key-value store of `replicas` Raft members speaking the etcd v3 API.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kuberaft.io",
    version = "v1alpha1",
    kind = "RaftCluster",
    plural = "raftclusters",
    shortname = "raft",
    namespaced,
    status = "RaftClusterStatus",
    doc = "A kuberaft cluster: Raft members in a StatefulSet, managed by raft-operator.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.tls) == has(oldSelf.tls)").message("TLS cannot be turned on or off after creation"))]
pub struct RaftClusterSpec {
    /// Number of voting members (1 to 9; odd numbers tolerate the most failures).
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// raft-node container image.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub image_pull_policy: Option<String>,
    pub storage: Storage,
    #[serde(default)]
    pub timing: Timing,
    /// Applied entries between snapshots (raft-node --snapshot-count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 10_000_000))]
    pub snapshot_count: Option<u64>,
    /// Resources of the raft-node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Stop every member and keep its volumes (phase `Hibernated`); set back to false,
    /// the same members start again from their data. Waits for a bootstrap to finish.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hibernate: bool,
    /// Scheduled backups (etcd Maintenance.Snapshot from a healthy member, streamed to a
    /// volume path or S3-compatible object storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// How a new cluster's members start. Read only before the first start: once the
    /// cluster is bootstrapped a later `bootstrap` is ignored (the `Restored` condition
    /// says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
    /// Replacement of a member whose data cannot be used (on by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<ReplacementSpec>,
}

/// `spec.replacement`: a voter that fails to start again and again (its WAL or engine
/// files refused) is removed from the Raft configuration, added back as an empty
/// learner, its data deleted, and promoted once caught up; only while the other voters
/// keep a healthy quorum, one member at a time.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplacementSpec {
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

/// `spec.bootstrap`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Start every member from this backup (a file written by a kuberaft backup or
    /// `etcdctl snapshot save`), with this cluster's membership: data, revisions and
    /// leases come back; the old membership does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_backup: Option<BackupSource>,
}

/// One backup file: exactly one of `path` and `s3`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.path) != has(self.s3)").message("fromBackup needs exactly one of path and s3"))]
pub struct BackupSource {
    /// The backup file (absolute path) as the operator sees it: for `raftctl up` a
    /// local file; for the operator in Kubernetes a volume mounted into its pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Object>,
    /// SHA-256 of the whole file (hex, as `status.lastBackup.checksum` gives it); when
    /// set, a file that does not match is not restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 64, max = 64))]
    pub sha256: Option<String>,
}

/// One object in S3 or an S3-compatible service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Object {
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// The object's key (`nightly/main_20260101T000000.000Z.snap`).
    #[schemars(length(min = 1, max = 1024))]
    pub key: String,
    /// As in a backup destination: the service's URL; AWS when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// As in a backup destination: a Secret with `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`; `raftctl up` reads its flags or environment instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
}

/// `spec.backup`: when backups are taken, how many are kept, and where they go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Cron expression in UTC: five fields (minute hour day-of-month month day-of-week)
    /// or six with seconds first, e.g. `0 */6 * * *`. An expression that does not parse
    /// is reported in the `BackupScheduled` condition and no backup is taken.
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    pub destination: BackupDestination,
}

/// Which backups of this cluster are kept after a new one was written: the newest
/// `count`, and/or those younger than `maxAge`. Only this cluster's backups (by name)
/// are ever deleted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000))]
    pub count: Option<u32>,
    /// A duration such as `7d`, `12h` or `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32))]
    pub max_age: Option<String>,
}

/// Exactly one of `path` and `s3`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.path) != has(self.s3)").message("destination needs exactly one of path and s3"))]
pub struct BackupDestination {
    /// A directory (absolute path) the operator can write: for `raftctl up` a local
    /// directory; for the operator in Kubernetes a volume mounted into its pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
}

/// S3 or an S3-compatible service (MinIO, Ceph RGW, ...). Objects are named
/// `PREFIX/CLUSTER_TIMESTAMP.snap`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// The service's URL (`https://minio.example:9000`); AWS when absent. `http://`
    /// is accepted for services without TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// A Secret in the cluster's namespace with `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (and optionally `AWS_SESSION_TOKEN`). `raftctl up` reads
    /// the same names from its environment instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_string()
}

/// The two volumes of a member; on separate disks the WAL's fsyncs do not wait behind
/// snapshot writes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    pub wal: Volume,
    pub snapshots: Volume,
    /// What happens to the volumes when the RaftCluster is deleted.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("volumes cannot change after creation (a StatefulSet's volumeClaimTemplates are immutable)"))]
pub struct Volume {
    /// Requested size, a Kubernetes quantity such as `1Gi`.
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).compareTo(quantity('1Mi')) >= 0").message("must be a quantity of at least 1Mi, e.g. 1Gi"))]
    #[schemars(length(min = 1, max = 32))]
    pub size: String,
    /// StorageClass of the claim; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReclaimPolicy {
    /// Keep the PersistentVolumeClaims (the data survives the RaftCluster).
    #[default]
    Retain,
    /// Delete the PersistentVolumeClaims with the RaftCluster.
    Delete,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimingMode {
    /// Use `heartbeatIntervalMs` and `electionTimeoutMs` as given.
    #[default]
    Fixed,
    /// Derive them from observed RTT and fsync latency, within the bounds.
    Adaptive,
}

/// Heartbeat and election timeout. In `Fixed` mode the values are applied (live, through
/// the admin API's SetTiming) as given; in `Adaptive` mode they are the starting point
/// and the operator moves them within `[min*, max*]`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.electionTimeoutMs >= 3 * self.heartbeatIntervalMs").message("electionTimeoutMs must be at least 3x heartbeatIntervalMs"),
    validation = Rule::new("self.minHeartbeatIntervalMs <= self.heartbeatIntervalMs && self.heartbeatIntervalMs <= self.maxHeartbeatIntervalMs").message("heartbeatIntervalMs must lie within [minHeartbeatIntervalMs, maxHeartbeatIntervalMs]"),
    validation = Rule::new("self.minElectionTimeoutMs <= self.electionTimeoutMs && self.electionTimeoutMs <= self.maxElectionTimeoutMs").message("electionTimeoutMs must lie within [minElectionTimeoutMs, maxElectionTimeoutMs]"),
    validation = Rule::new("self.maxElectionTimeoutMs >= 3 * self.minHeartbeatIntervalMs").message("maxElectionTimeoutMs must be at least 3x minHeartbeatIntervalMs")
)]
pub struct Timing {
    #[serde(default)]
    pub mode: TimingMode,
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 10, max = 5000))]
    pub heartbeat_interval_ms: u32,
    #[serde(default = "default_election")]
    #[schemars(range(min = 30, max = 50000))]
    pub election_timeout_ms: u32,
    #[serde(default = "default_min_heartbeat")]
    #[schemars(range(min = 10, max = 5000))]
    pub min_heartbeat_interval_ms: u32,
    #[serde(default = "default_max_heartbeat")]
    #[schemars(range(min = 10, max = 5000))]
    pub max_heartbeat_interval_ms: u32,
    #[serde(default = "default_min_election")]
    #[schemars(range(min = 30, max = 50000))]
    pub min_election_timeout_ms: u32,
    #[serde(default = "default_max_election")]
    #[schemars(range(min = 30, max = 50000))]
    pub max_election_timeout_ms: u32,
    /// Adaptive mode: least time between two timing changes (default 300 s).
    #[serde(default = "default_adaptive_cool_down")]
    #[schemars(range(min = 0, max = 86400))]
    pub adaptive_cool_down_seconds: u32,
}

fn default_heartbeat() -> u32 {
    100
}
fn default_election() -> u32 {
    1000
}
fn default_min_heartbeat() -> u32 {
    20
}
fn default_max_heartbeat() -> u32 {
    500
}
fn default_min_election() -> u32 {
    200
}
fn default_max_election() -> u32 {
    5000
}
fn default_adaptive_cool_down() -> u32 {
    (crate::adaptive::COOL_DOWN_MS / 1000) as u32
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            mode: TimingMode::Fixed,
            heartbeat_interval_ms: default_heartbeat(),
            election_timeout_ms: default_election(),
            min_heartbeat_interval_ms: default_min_heartbeat(),
            max_heartbeat_interval_ms: default_max_heartbeat(),
            min_election_timeout_ms: default_min_election(),
            max_election_timeout_ms: default_max_election(),
            adaptive_cool_down_seconds: default_adaptive_cool_down(),
        }
    }
}

/// Pod-level settings merged into the StatefulSet's pod template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Replaces the default (pods preferably on different nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Replaces the default spread (at most one pod more per node than on any other).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// The application's own containers. When present, raft-node runs as a native
    /// sidecar (an init container with `restartPolicy: Always`) and the application
    /// reaches its local member at `localhost:2379`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
}

/// TLS on the client and peer ports. Members then serve `https://` on both, peers
/// always authenticate each other with certificates of the cluster's CA (mutual TLS),
/// and the operator reaches members with a client certificate. TLS cannot be turned on
/// or off, nor its mode changed, after creation (members' peer URLs would change scheme
/// mid-way); create a new cluster and restore a snapshot instead.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode == oldSelf.mode").message("tls.mode cannot change after creation"),
    validation = Rule::new("self.mode != 'Secret' || has(self.secretName)").message("tls.mode Secret needs tls.secretName"),
    validation = Rule::new("self.mode != 'Auto' || (!has(self.secretName) && !has(self.operatorSecretName))").message("tls.secretName and tls.operatorSecretName are for mode Secret; mode Auto names its own Secrets"),
    validation = Rule::new("self.renewBeforeDays < self.certificateValidityDays").message("renewBeforeDays must be less than certificateValidityDays")
)]
pub struct Tls {
    /// `Auto`: the operator creates a CA (Secret `NAME-ca`), the members' certificate
    /// (`NAME-tls`) and its own client certificate (`NAME-operator-tls`), and renews the
    /// certificates before they expire; members pick renewed files up without a restart.
    /// `Secret`: you provide them.
    #[serde(default)]
    pub mode: TlsMode,
    /// Mode `Secret`: a `kubernetes.io/tls` Secret with `tls.crt`, `tls.key` and
    /// `ca.crt`, used on the client and the peer port (so it needs server and client
    /// use, and names covering `*.NAME-peer.NAMESPACE.svc` and `NAME.NAMESPACE.svc`).
    /// Mounted read-only at `/etc/kuberaft/tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// Mode `Secret`: the operator's client certificate (`tls.crt`, `tls.key`,
    /// `ca.crt`); without it the operator presents none, which members refuse when
    /// `clientCertAuth` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub operator_secret_name: Option<String>,
    /// Require client certificates signed by the cluster's CA on the client port (the
    /// peer port always does).
    #[serde(default)]
    pub client_cert_auth: bool,
    /// Mode `Auto`: how long an issued certificate is valid.
    #[serde(default = "default_certificate_validity_days")]
    #[schemars(range(min = 2, max = 825))]
    pub certificate_validity_days: u32,
    /// Mode `Auto`: a certificate is issued again when it has less than this left.
    #[serde(default = "default_renew_before_days")]
    #[schemars(range(min = 1, max = 824))]
    pub renew_before_days: u32,
}

fn default_certificate_validity_days() -> u32 {
    90
}

fn default_renew_before_days() -> u32 {
    30
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// The operator makes and renews the CA and the certificates.
    #[default]
    Auto,
    /// Certificates come from Secrets you provide (cert-manager, your own CA).
    Secret,
}

impl Tls {
    /// The Secret mounted into members.
    pub fn member_secret(&self, cluster: &str) -> String {
        match self.mode {
            TlsMode::Auto => format!("{cluster}-tls"),
            TlsMode::Secret => self.secret_name.clone().unwrap_or_default(),
        }
    }

    /// The Secret with the operator's client certificate, if there is one.
    pub fn operator_secret(&self, cluster: &str) -> Option<String> {
        match self.mode {
            TlsMode::Auto => Some(format!("{cluster}-operator-tls")),
            TlsMode::Secret => self.operator_secret_name.clone(),
        }
    }
}

/// What the operator observed and did, for people and for the next reconcile.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RaftClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Voting members in the Raft configuration (the scale subresource's status).
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// Set once the initial members formed a cluster; from then on new pods join
    /// (`--initial-cluster-state existing`). Never unset.
    #[serde(default)]
    pub bootstrapped: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<TimingStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last backup that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupRecord>,
    /// Where the schedule stands: the next backup's time and the failures since the
    /// last success (the planner computes the next step from this and the time alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_schedule: Option<BackupScheduleStatus>,
    /// The restore of `spec.bootstrap.fromBackup` (before the first start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreStatus>,
    /// A member replacement under way (`spec.replacement`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<ReplacementStatus>,
}

/// A member being replaced: removed from the configuration, then added back empty.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplacementStatus {
    pub member: String,
    pub ordinal: u32,
    /// Why (the failed starts and the member's last error).
    pub reason: String,
    /// The member's data was deleted after it was added back as a learner.
    #[serde(default)]
    pub wiped: bool,
    /// When it started (RFC 3339).
    pub since: String,
}

/// Where a restore from a backup stands.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// `file:///path` or `s3://bucket/key`.
    pub location: String,
    /// Every member's data was written from the backup.
    #[serde(default)]
    pub succeeded: bool,
    /// How many members' data was written (the bootstrap starts exactly these).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<i32>,
    /// Failed attempts (retried with back-off; nothing starts meanwhile).
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// After a failure: when the next attempt is made (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// SHA-256 of the file restored, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// One backup written.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// When it was started (RFC 3339).
    pub time: String,
    /// `file:///dir/name.snap` or `s3://bucket/prefix/name.snap`.
    pub location: String,
    /// The store's revision the backup holds.
    pub revision: i64,
    /// SHA-256 of the whole file, hex.
    pub checksum: String,
    pub size: u64,
    /// The member it was read from.
    pub member: String,
    pub duration_ms: u64,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// The schedule `nextTime` was computed from; a new `spec.backup.schedule` starts over.
    pub schedule: String,
    /// When the next backup (or the next attempt after a failure) is due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_time: Option<String>,
    /// Failed attempts since the last success (the back-off grows with it).
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub name: String,
    /// Member id in hex, as etcdctl prints it.
    pub id: String,
    pub role: String,
    pub learner: bool,
    pub healthy: bool,
    pub match_index: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TimingStatus {
    pub heartbeat_interval_ms: u32,
    pub election_timeout_ms: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync_p99_ms: Option<f64>,
    /// When the operator last changed timing (RFC 3339); the cool-down counts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_time: Option<String>,
}

/// One backup now: `RaftBackup` (`kuberaft.io/v1alpha1`) names a RaftCluster in its
/// namespace and a destination; the operator takes the backup once and records the
/// outcome in status (a finished RaftBackup is never run again).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kuberaft.io",
    version = "v1alpha1",
    kind = "RaftBackup",
    plural = "raftbackups",
    shortname = "raftbackup",
    namespaced,
    status = "RaftBackupStatus",
    doc = "One backup of a RaftCluster, taken once by raft-operator.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.revision"),
    printcolumn(name = "Location", type_ = "string", json_path = ".status.location"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a RaftBackup's spec cannot change; create another one"))]
pub struct RaftBackupSpec {
    /// The RaftCluster (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub cluster_name: String,
    pub destination: BackupDestination,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackupPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RaftBackupStatus {
    #[serde(default)]
    pub phase: BackupPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// SHA-256 of the whole file, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Failed attempts so far (retried with back-off until `BACKUP_ATTEMPTS_MAX`).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// The RaftBackup CustomResourceDefinition as YAML (`crds/raftbackup.yaml`).
pub fn backup_crd_yaml() -> String {
    let crd = RaftBackup::crd();
    let body = serde_norway::to_string(&crd).expect("a CRD always serializes");
    format!(
        "# Generated by `raft-operator crd --backup`; do not edit (operator/tests/manifests.rs checks drift).\n{body}"
    )
}

/// The CustomResourceDefinition as YAML: what `raft-operator crd` prints and
/// `crds/raftcluster.yaml` holds.
pub fn crd_yaml() -> String {
    let crd = RaftCluster::crd();
    let body = serde_norway::to_string(&crd).expect("a CRD always serializes");
    format!(
        "# Generated by `raft-operator crd`; do not edit (operator/tests/manifests.rs checks drift).\n{body}"
    )
}
