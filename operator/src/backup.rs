//! Backups: when one is due (pure, from the spec, the status and the time), and the
//! writer that streams a member's Maintenance.Snapshot to a directory or an
//! S3-compatible object store.
//!
//! The schedule keeps no memory outside the RaftCluster's status: `status.backupSchedule`
//! holds the time the next backup (or the next attempt after a failure) is due and the
//! failures since the last success; `status.lastBackup` the last backup written.
//! [`decide`] reads them with `now` and the plan's member health; [`record`] writes the
//! outcome back. Both platforms (Kubernetes and `raftctl up`) call the same two.
//!
//! The writer never holds the backup in memory: each chunk of the gRPC stream (64 KiB
//! from raft-node) is hashed (SHA-256 of the whole file) and written at once — to a
//! temporary file that is fsynced and renamed into place, or into a multipart upload
//! of [`PART_BYTES`] parts with at most [`PARTS_IN_FLIGHT`] in flight. Backups are named
//! `CLUSTER_YYYYMMDDTHHMMSS.mmmZ.snap` (`_` cannot occur in a Kubernetes name, so the
//! name prefix tells this cluster's backups from any other's); retention only ever
//! deletes names of that form.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::crd::{
    BackupDestination, BackupRecord, BackupScheduleStatus, BackupSpec, RaftClusterStatus, S3Destination,
};
use crate::plan::{rfc3339_from_ms, Action, Plan};
use crate::{Error, Result};

/// Longest wait for the next chunk of a backup stream.
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Multipart upload part size (S3 needs at least 5 MiB for every part but the last).
pub const PART_BYTES: usize = 8 << 20;
/// Parts uploading at once: memory held by an upload is at most about this many parts.
pub const PARTS_IN_FLIGHT: usize = 2;
/// First retry delay after a failed scheduled backup; doubles per failure up to the cap.
pub const RETRY_FIRST: Duration = Duration::from_secs(10);
pub const RETRY_CAP: Duration = Duration::from_secs(600);
/// Extension of backup files and objects.
pub const EXTENSION: &str = "snap";
/// The condition type backups report in.
pub const CONDITION: &str = "BackupReady";

fn backup_error(message: impl Into<String>) -> Error {
    Error::Backup(message.into())
}

/// A cron expression (five fields, or six with seconds first), evaluated in UTC.
pub fn parse_schedule(expr: &str) -> std::result::Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("spec.backup.schedule {expr:?} is not a cron expression: {e}"))
}

/// `retention.maxAge` such as `7d`, `12h`, `30m`.
pub fn parse_max_age(text: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("spec.backup.retention.maxAge {text:?} is not a duration such as 7d or 12h: {e}")
    })
}

/// Everything about a destination that can be checked without reaching it.
pub fn validate_destination(destination: &BackupDestination) -> std::result::Result<(), String> {
    match (&destination.path, &destination.s3) {
        (Some(path), None) => {
            if !Path::new(path).is_absolute() {
                return Err(format!("destination.path {path:?} must be an absolute path"));
            }
            Ok(())
        }
        (None, Some(s3)) => {
            if s3.bucket.trim().is_empty() {
                return Err("destination.s3.bucket is empty".into());
            }
            if let Some(endpoint) = &s3.endpoint {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(format!(
                        "destination.s3.endpoint {endpoint:?} must start with http:// or https://"
                    ));
                }
            }
            Ok(())
        }
        _ => Err("destination needs exactly one of path and s3".into()),
    }
}

/// The whole of `spec.backup`, checked: the schedule parses, maxAge parses, the
/// destination is one of the two and well formed.
pub fn validate(spec: &BackupSpec) -> std::result::Result<(), String> {
    parse_schedule(&spec.schedule)?;
    if let Some(max_age) = spec.retention.as_ref().and_then(|r| r.max_age.as_deref()) {
        parse_max_age(max_age)?;
    }
    if spec.retention.as_ref().and_then(|r| r.count) == Some(0) {
        return Err("spec.backup.retention.count must be at least 1".into());
    }
    validate_destination(&spec.destination)
}

fn utc(ms: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default()
}

fn ms_of(text: &str) -> Option<u64> {
    let t: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    u64::try_from(t.as_millisecond()).ok()
}

/// The first time the schedule fires strictly after `after_ms`.
pub fn next_after(cron: &croner::Cron, after_ms: u64) -> Option<u64> {
    let next = cron.find_next_occurrence(&utc(after_ms), false).ok()?;
    u64::try_from(next.timestamp_millis()).ok()
}

/// Delay before attempt `failures + 1` after `failures` failures in a row.
pub fn retry_delay(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(RETRY_CAP)
}

/// What to do about scheduled backups this round.
#[derive(Clone, Debug, PartialEq)]
pub enum BackupDecision {
    /// Take a backup from this member now.
    Take {
        member: String,
        ordinal: u32,
        /// 1 for the first attempt at this time, more after failures.
        attempt: u32,
    },
    /// Nothing to do before `next_ms`.
    NotDue { next_ms: u64 },
    /// Due, but it cannot be taken now (no healthy member, hibernated, bootstrapping).
    Wait { reason: String, next_ms: u64 },
    /// `spec.backup` is invalid: nothing is done until it changes.
    Invalid { reason: String },
}

/// The member to read a backup from: a healthy voter, followers first (the leader keeps
/// its CPU for writes), the most up to date among them; never the member this round's
/// step removes or restarts.
pub fn pick_member(plan: &Plan) -> Option<(String, u32)> {
    let leader = plan.leader.as_deref();
    let busy = |name: &str, ordinal: Option<u32>| match &plan.action {
        Some(Action::RemoveMember { name: n, .. }) => n == name,
        Some(Action::RestartMember { ordinal: o }) => Some(*o) == ordinal,
        _ => false,
    };
    plan.members
        .iter()
        .filter(|m| m.healthy && !m.learner && !busy(&m.name, m.ordinal))
        .filter_map(|m| m.ordinal.map(|o| (m, o)))
        .max_by_key(|(m, o)| {
            (
                Some(m.name.as_str()) != leader,
                m.match_index,
                std::cmp::Reverse(*o),
            )
        })
        .map(|(m, o)| (m.name.clone(), o))
}

/// The next step of the schedule; `None` without `spec.backup`.
pub fn decide(
    spec: Option<&BackupSpec>,
    status: Option<&RaftClusterStatus>,
    plan: &Plan,
    hibernate: bool,
    now_ms: u64,
) -> Option<BackupDecision> {
    let spec = spec?;
    if let Err(reason) = validate(spec) {
        return Some(BackupDecision::Invalid { reason });
    }
    let cron = parse_schedule(&spec.schedule).ok()?;
    let schedule = status
        .and_then(|s| s.backup_schedule.as_ref())
        .filter(|s| s.schedule == spec.schedule);
    let failures = schedule.map_or(0, |s| s.failures);
    // Due at the recorded time; a new schedule (or none recorded yet) starts from now.
    let next_ms = schedule
        .and_then(|s| s.next_time.as_deref())
        .and_then(ms_of)
        .or_else(|| next_after(&cron, now_ms));
    let Some(next_ms) = next_ms else {
        return Some(BackupDecision::Invalid {
            reason: format!("spec.backup.schedule {:?} never fires", spec.schedule),
        });
    };
    if now_ms < next_ms {
        return Some(BackupDecision::NotDue { next_ms });
    }
    let wait = |reason: String| Some(BackupDecision::Wait { reason, next_ms });
    if hibernate || plan.hibernated {
        return wait("the cluster hibernates: no member runs to take a backup from".into());
    }
    if !plan.bootstrapped {
        return wait("the cluster is still bootstrapping".into());
    }
    match pick_member(plan) {
        Some((member, ordinal)) => Some(BackupDecision::Take {
            member,
            ordinal,
            attempt: failures + 1,
        }),
        None => wait("backup due, but no healthy member to take it from; waiting".into()),
    }
}

/// A backup written, and what retention did after it.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupOutcome {
    pub record: BackupRecord,
    /// Older backups of this cluster that retention deleted (locations).
    pub deleted: Vec<String>,
    /// Retention failed (the backup itself is good).
    pub retention_error: Option<String>,
}

fn set_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    on: bool,
    reason: &str,
    message: String,
    now_ms: u64,
) {
    crate::backup::set_typed_condition(CONDITION, conditions, previous, on, reason, message, now_ms);
}

/// Sets condition `type_` (True when `on`), keeping its transition time while its status
/// stays the same. Shared by backups, restore and replacement.
pub(crate) fn set_typed_condition(
    type_: &str,
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    on: bool,
    reason: &str,
    message: String,
    now_ms: u64,
) {
    let status = if on { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_millisecond(now_ms as i64).unwrap_or_default(),
            )
        });
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: None,
        last_transition_time: since,
    });
}

/// Longest error text kept in status (an object store may answer with a whole XML body).
pub const ERROR_CHARS_MAX: usize = 1_000;

fn clip(text: &str) -> String {
    match text.char_indices().nth(ERROR_CHARS_MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// Writes the outcome of this round's decision into the status: the last backup, when
/// the next one is due (after a failure: the back-off, never later than the schedule's
/// next time), the failures, and the `BackupReady` condition. `previous` is the status
/// the decision was made from (`status` is the new one being built).
pub fn record(
    status: &mut RaftClusterStatus,
    previous: Option<&RaftClusterStatus>,
    spec: Option<&BackupSpec>,
    decision: Option<&BackupDecision>,
    outcome: Option<&std::result::Result<BackupOutcome, String>>,
    now_ms: u64,
) {
    let previous_schedule = previous.and_then(|p| p.backup_schedule.clone());
    status.last_backup = previous.and_then(|p| p.last_backup.clone());
    let (Some(spec), Some(decision)) = (spec, decision) else {
        status.backup_schedule = None;
        status.conditions.retain(|c| c.type_ != CONDITION);
        return;
    };
    let mut schedule = previous_schedule
        .filter(|s| s.schedule == spec.schedule)
        .unwrap_or_else(|| BackupScheduleStatus {
            schedule: spec.schedule.clone(),
            ..Default::default()
        });
    let last = status
        .last_backup
        .as_ref()
        .map(|b| format!("last backup {} (revision {})", b.location, b.revision));
    let (on, reason, message) = match (decision, outcome) {
        (BackupDecision::Invalid { reason }, _) => {
            schedule.next_time = None;
            schedule.last_error = Some(reason.clone());
            (false, "InvalidSpec", reason.clone())
        }
        (BackupDecision::NotDue { next_ms }, _) => {
            schedule.next_time = Some(rfc3339_from_ms(*next_ms));
            let message = format!("next backup at {}", rfc3339_from_ms(*next_ms));
            match (&schedule.last_error, last) {
                (Some(e), _) if schedule.failures > 0 => (
                    false,
                    "Retrying",
                    format!("{} failed attempt(s), last: {e}; {message}", schedule.failures),
                ),
                (_, Some(last)) => (true, "Scheduled", format!("{last}; {message}")),
                (_, None) => (true, "Scheduled", message),
            }
        }
        (BackupDecision::Wait { reason, next_ms }, _) => {
            schedule.next_time = Some(rfc3339_from_ms(*next_ms));
            (false, "Waiting", reason.clone())
        }
        (BackupDecision::Take { .. }, Some(Ok(outcome))) => {
            status.last_backup = Some(outcome.record.clone());
            schedule.failures = 0;
            schedule.last_error = None;
            // From when it finished: a backup longer than the period is not followed
            // by an immediate catch-up.
            let finished = now_ms + outcome.record.duration_ms;
            let next = parse_schedule(&spec.schedule)
                .ok()
                .and_then(|c| next_after(&c, finished));
            schedule.next_time = next.map(rfc3339_from_ms);
            let mut message = format!(
                "backup {} at revision {}, {} bytes, sha256 {}",
                outcome.record.location,
                outcome.record.revision,
                outcome.record.size,
                outcome.record.checksum
            );
            if let Some(e) = &outcome.retention_error {
                message.push_str(&format!("; retention failed: {e}"));
            }
            (true, "Succeeded", message)
        }
        (BackupDecision::Take { .. }, failed) => {
            let error = match failed {
                Some(Err(e)) => clip(e),
                _ => "the backup was not carried out".into(),
            };
            schedule.failures += 1;
            let retry = now_ms + retry_delay(schedule.failures).as_millis() as u64;
            let scheduled = parse_schedule(&spec.schedule)
                .ok()
                .and_then(|c| next_after(&c, now_ms))
                .unwrap_or(retry);
            schedule.next_time = Some(rfc3339_from_ms(retry.min(scheduled)));
            schedule.last_error = Some(error.clone());
            (
                false,
                "Failed",
                format!(
                    "attempt {} failed: {error}; next attempt at {}",
                    schedule.failures,
                    rfc3339_from_ms(retry.min(scheduled))
                ),
            )
        }
    };
    status.backup_schedule = Some(schedule);
    let previous_conditions = previous.map_or(&[][..], |p| &p.conditions[..]);
    set_condition(
        &mut status.conditions,
        previous_conditions,
        on,
        reason,
        message,
        now_ms,
    );
}

// ---------------------------------------------------------------------------------------
// The writer.

/// Credentials of an S3-compatible service.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Credentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` from a lookup
    /// (the environment, or a Secret's data).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<S3Credentials> {
        Some(S3Credentials {
            access_key_id: get("AWS_ACCESS_KEY_ID")?,
            secret_access_key: get("AWS_SECRET_ACCESS_KEY")?,
            session_token: get("AWS_SESSION_TOKEN"),
        })
    }
}

/// Where backups go, ready to write.
#[derive(Clone, Debug)]
pub enum Target {
    Dir(PathBuf),
    Store {
        store: Arc<dyn ObjectStore>,
        /// `s3://bucket` (for locations and messages).
        url: String,
        /// Object name prefix without slashes at either end ("" for none).
        prefix: String,
    },
}

impl Target {
    /// For messages: which destination.
    pub fn describe(&self) -> String {
        match self {
            Target::Dir(dir) => format!("directory {}", dir.display()),
            Target::Store { url, prefix, .. } if prefix.is_empty() => url.clone(),
            Target::Store { url, prefix, .. } => format!("{url}/{prefix}"),
        }
    }

    fn object(&self, name: &str) -> ObjectPath {
        match self {
            Target::Store { prefix, .. } if !prefix.is_empty() => {
                ObjectPath::from(format!("{prefix}/{name}"))
            }
            _ => ObjectPath::from(name),
        }
    }

    fn location(&self, name: &str) -> String {
        match self {
            Target::Dir(dir) => format!("file://{}", dir.join(name).display()),
            Target::Store { url, .. } => format!("{url}/{}", self.object(name)),
        }
    }
}

/// An S3 (or S3-compatible) target. `credentials`: from a Secret or the environment;
/// without them the process's own AWS settings are used (`AWS_*` variables, a web
/// identity token as IRSA mounts it, or the instance metadata service).
pub fn s3_target(s3: &S3Destination, credentials: Option<S3Credentials>) -> Result<Target> {
    let base = if credentials.is_some() {
        object_store::aws::AmazonS3Builder::new()
    } else {
        object_store::aws::AmazonS3Builder::from_env()
    };
    let mut builder = base
        .with_bucket_name(&s3.bucket)
        .with_region(s3.region.clone().unwrap_or_else(|| "us-east-1".into()));
    if let Some(endpoint) = &s3.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(c) = credentials {
        builder = builder
            .with_access_key_id(c.access_key_id)
            .with_secret_access_key(c.secret_access_key);
        if let Some(token) = c.session_token {
            builder = builder.with_token(token);
        }
    }
    let url = format!("s3://{}", s3.bucket);
    let store = builder.build().map_err(|e| backup_error(format!("{url}: {e}")))?;
    Ok(Target::Store {
        store: Arc::new(store),
        url,
        prefix: s3
            .prefix
            .as_deref()
            .unwrap_or_default()
            .trim_matches('/')
            .to_string(),
    })
}

const TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";

/// `CLUSTER_YYYYMMDDTHHMMSS.mmmZ.snap` for a backup started at `ms`.
pub fn backup_name(cluster: &str, ms: u64) -> String {
    format!("{cluster}_{}.{EXTENSION}", utc(ms).format(TIME_FORMAT))
}

/// The name of a one-shot backup (a `RaftBackup` named `tag`):
/// `CLUSTER_TIMESTAMP_TAG.snap`. Scheduled retention never deletes it ([`parse_backup_name`]
/// does not match it).
pub fn one_shot_name(cluster: &str, ms: u64, tag: &str) -> String {
    format!("{cluster}_{}_{tag}.{EXTENSION}", utc(ms).format(TIME_FORMAT))
}

/// The start time of a backup of `cluster` from its name, `None` for any other name
/// (another cluster's backups, temporary files, anything else).
pub fn parse_backup_name(cluster: &str, name: &str) -> Option<u64> {
    let stamp = name
        .strip_prefix(cluster)?
        .strip_prefix('_')?
        .strip_suffix(EXTENSION)?
        .strip_suffix('.')?;
    let t = chrono::NaiveDateTime::parse_from_str(stamp, TIME_FORMAT).ok()?;
    u64::try_from(t.and_utc().timestamp_millis()).ok()
}

/// The backups retention deletes: all but the newest `count`, and those older than
/// `max_age`. The newest is always kept. `backups`: (name, start time in ms).
pub fn select_expired(
    backups: &[(String, u64)],
    count: Option<u32>,
    max_age: Option<Duration>,
    now_ms: u64,
) -> Vec<String> {
    let mut sorted: Vec<&(String, u64)> = backups.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    sorted
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, (_, time))| {
            count.is_some_and(|n| *i >= n as usize)
                || max_age.is_some_and(|age| now_ms.saturating_sub(*time) > age.as_millis() as u64)
        })
        .map(|(_, (name, _))| name.clone())
        .collect()
}

/// What the stream gave: the revision (from the first chunk's header), size, checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub location: String,
    pub name: String,
    pub revision: i64,
    pub size: u64,
    pub sha256: String,
}

/// One chunk of a backup stream: the header's revision (first chunk) and bytes.
pub struct Chunk {
    pub revision: Option<i64>,
    pub blob: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn next_chunk<S>(stream: &mut S, destination: &str) -> Result<Option<Chunk>>
where
    S: Stream<Item = std::result::Result<Chunk, String>> + Unpin,
{
    match tokio::time::timeout(CHUNK_TIMEOUT, stream.next()).await {
        Err(_) => Err(backup_error(format!(
            "backup to {destination}: the member sent nothing for {} s",
            CHUNK_TIMEOUT.as_secs()
        ))),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(backup_error(format!(
            "backup to {destination}: reading the snapshot: {e}"
        ))),
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
    }
}

/// Streams `chunks` into a new backup `name` ([`backup_name`], [`one_shot_name`]):
/// hashing each chunk and writing it before the next is read.
pub async fn write_stream<S>(mut chunks: S, name: &str, target: &Target) -> Result<Written>
where
    S: Stream<Item = std::result::Result<Chunk, String>> + Unpin,
{
    let name = name.to_string();
    let destination = target.describe();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut revision = None;
    match target {
        Target::Dir(dir) => {
            let fail =
                |what: &str, e: std::io::Error| backup_error(format!("backup to {destination}: {what}: {e}"));
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| fail("cannot create the directory", e))?;
            let tmp = dir.join(format!(".{name}.partial"));
            let result: Result<()> = async {
                let mut file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .await
                    .map_err(|e| fail(&format!("cannot create {}", tmp.display()), e))?;
                while let Some(chunk) = next_chunk(&mut chunks, &destination).await? {
                    revision = revision.or(chunk.revision);
                    hasher.update(&chunk.blob);
                    size += chunk.blob.len() as u64;
                    file.write_all(&chunk.blob)
                        .await
                        .map_err(|e| fail(&format!("cannot write {}", tmp.display()), e))?;
                }
                file.sync_all()
                    .await
                    .map_err(|e| fail(&format!("cannot fsync {}", tmp.display()), e))?;
                drop(file);
                if size == 0 {
                    return Err(backup_error(format!(
                        "backup to {destination}: the member sent an empty snapshot"
                    )));
                }
                tokio::fs::rename(&tmp, dir.join(&name))
                    .await
                    .map_err(|e| fail(&format!("cannot rename {} into place", tmp.display()), e))?;
                // The rename is durable once the directory is.
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || std::fs::File::open(&dir).and_then(|d| d.sync_all()))
                    .await
                    .map_err(|e| backup_error(e.to_string()))?
                    .map_err(|e| fail("cannot fsync the directory", e))?;
                Ok(())
            }
            .await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            result?;
        }
        Target::Store { store, .. } => {
            let object = target.object(&name);
            let fail = |e: object_store::Error| backup_error(format!("backup to {destination}: {e}"));
            let upload = store.put_multipart(&object).await.map_err(fail)?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let streamed: Result<()> = async {
                while let Some(chunk) = next_chunk(&mut chunks, &destination).await? {
                    revision = revision.or(chunk.revision);
                    hasher.update(&chunk.blob);
                    size += chunk.blob.len() as u64;
                    writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(fail)?;
                    writer.write(&chunk.blob);
                }
                if size == 0 {
                    return Err(backup_error(format!(
                        "backup to {destination}: the member sent an empty snapshot"
                    )));
                }
                Ok(())
            }
            .await;
            match streamed {
                Ok(()) => {
                    writer.finish().await.map_err(fail)?;
                }
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e);
                }
            }
        }
    }
    Ok(Written {
        location: target.location(&name),
        name,
        revision: revision.unwrap_or(0),
        size,
        sha256: hex(&hasher.finalize()),
    })
}

/// This cluster's backups at the target: (name, start time).
pub async fn list(target: &Target, cluster: &str) -> Result<Vec<(String, u64)>> {
    let destination = target.describe();
    match target {
        Target::Dir(dir) => {
            let mut out = Vec::new();
            let mut entries = match tokio::fs::read_dir(dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(backup_error(format!("listing {destination}: {e}"))),
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| backup_error(format!("listing {destination}: {e}")))?
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(t) = parse_backup_name(cluster, &name) {
                    out.push((name, t));
                }
            }
            Ok(out)
        }
        Target::Store { store, prefix, .. } => {
            let prefix_path = (!prefix.is_empty()).then(|| ObjectPath::from(prefix.as_str()));
            let mut listing = store.list(prefix_path.as_ref());
            let mut out = Vec::new();
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| backup_error(format!("listing {destination}: {e}")))?;
                let Some(name) = meta.location.filename() else {
                    continue;
                };
                // Only objects right under the prefix.
                if meta.location != target.object(name) {
                    continue;
                }
                if let Some(t) = parse_backup_name(cluster, name) {
                    out.push((name.to_string(), t));
                }
            }
            Ok(out)
        }
    }
}

/// Deletes what [`select_expired`] picks among this cluster's backups; returns the
/// locations deleted.
pub async fn apply_retention(
    target: &Target,
    cluster: &str,
    retention: Option<&crate::crd::Retention>,
    now_ms: u64,
) -> Result<Vec<String>> {
    let Some(retention) = retention else {
        return Ok(Vec::new());
    };
    let max_age = retention
        .max_age
        .as_deref()
        .map(parse_max_age)
        .transpose()
        .map_err(backup_error)?;
    if retention.count.is_none() && max_age.is_none() {
        return Ok(Vec::new());
    }
    let backups = list(target, cluster).await?;
    let mut deleted = Vec::new();
    for name in select_expired(&backups, retention.count, max_age, now_ms) {
        let location = target.location(&name);
        match target {
            Target::Dir(dir) => tokio::fs::remove_file(dir.join(&name))
                .await
                .map_err(|e| backup_error(format!("deleting {location}: {e}")))?,
            Target::Store { store, .. } => store
                .delete(&target.object(&name))
                .await
                .map_err(|e| backup_error(format!("deleting {location}: {e}")))?,
        }
        deleted.push(location);
    }
    Ok(deleted)
}

/// Takes one backup: Maintenance.Snapshot from `endpoint` (member `member`), streamed to
/// `target`, then retention among `cluster`'s scheduled backups. `now_ms` names it; `tag`
/// makes it a one-shot backup ([`one_shot_name`]) that retention leaves alone.
#[allow(clippy::too_many_arguments)]
pub async fn take(
    access: &crate::node::Access,
    endpoint: &str,
    member: &str,
    cluster: &str,
    tag: Option<&str>,
    target: &Target,
    retention: Option<&crate::crd::Retention>,
    now_ms: u64,
) -> Result<BackupOutcome> {
    let started = Instant::now();
    let stream = access
        .snapshot(endpoint)
        .await
        .map_err(|e| backup_error(format!("backup to {}: member {member}: {e}", target.describe())))?;
    let chunks = stream.map(|r| {
        r.map(|m| Chunk {
            revision: m.header.map(|h| h.revision),
            blob: m.blob,
        })
        .map_err(|e| format!("member {member}: {}", e.message()))
    });
    let name = match tag {
        Some(tag) => one_shot_name(cluster, now_ms, tag),
        None => backup_name(cluster, now_ms),
    };
    let written = write_stream(chunks, &name, target).await?;
    let record = BackupRecord {
        time: rfc3339_from_ms(now_ms),
        location: written.location,
        revision: written.revision,
        checksum: written.sha256,
        size: written.size,
        member: member.to_string(),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let (deleted, retention_error) = match apply_retention(target, cluster, retention, now_ms).await {
        Ok(deleted) => (deleted, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Ok(BackupOutcome {
        record,
        deleted,
        retention_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn chunks(data: &[u8], size: usize) -> Vec<std::result::Result<Chunk, String>> {
        data.chunks(size)
            .enumerate()
            .map(|(i, c)| {
                Ok(Chunk {
                    revision: (i == 0).then_some(42),
                    blob: c.to_vec(),
                })
            })
            .collect()
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    const T0: u64 = 1_765_000_000_123;

    #[test]
    fn names_carry_the_cluster_and_the_utc_time_and_only_this_clusters_parse() {
        let name = backup_name("demo", T0);
        assert_eq!(name, "demo_20251206T054640.123Z.snap");
        assert_eq!(parse_backup_name("demo", &name), Some(T0));
        // Another cluster whose name starts the same, a temporary file, other files.
        assert_eq!(parse_backup_name("demo", &backup_name("demo-2", T0)), None);
        assert_eq!(parse_backup_name("demo-2", &name), None);
        assert_eq!(parse_backup_name("demo", &format!(".{name}.partial")), None);
        assert_eq!(parse_backup_name("demo", "demo_notatime.snap"), None);
        // A one-shot backup (RaftBackup) is not subject to the schedule's retention.
        assert_eq!(
            one_shot_name("demo", T0, "before-upgrade"),
            "demo_20251206T054640.123Z_before-upgrade.snap"
        );
        assert_eq!(parse_backup_name("demo", &one_shot_name("demo", T0, "x")), None);
        assert_eq!(
            parse_backup_name("demo", "demo_20251206T054640.123Z.snap.bak"),
            None
        );
    }

    #[test]
    fn retention_keeps_the_newest_count_and_drops_what_is_older_than_max_age() {
        let hour = 3_600_000;
        let backups: Vec<(String, u64)> = (0..5).map(|i| (format!("b{i}"), T0 + i * hour)).collect();
        let now = T0 + 4 * hour;
        let mut by_count = select_expired(&backups, Some(2), None, now);
        by_count.sort();
        assert_eq!(by_count, ["b0", "b1", "b2"]);
        let mut by_age = select_expired(&backups, None, Some(Duration::from_secs(90 * 60)), now);
        by_age.sort();
        assert_eq!(by_age, ["b0", "b1", "b2"], "b3 is 1 h old, b2 2 h");
        let mut both = select_expired(&backups, Some(4), Some(Duration::from_secs(150 * 60)), now);
        both.sort();
        assert_eq!(both, ["b0", "b1"]);
        assert!(select_expired(&backups, None, None, now).is_empty());
        // The newest is kept even when it is older than maxAge (a clock moved).
        assert_eq!(
            select_expired(&backups, Some(1), Some(Duration::from_secs(1)), now + 100 * hour).len(),
            4
        );
    }

    #[tokio::test]
    async fn a_directory_backup_is_streamed_checksummed_and_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Dir(dir.path().join("backups"));
        let bytes = data(300_000);
        let written = write_stream(
            futures::stream::iter(chunks(&bytes, 65_536)),
            &backup_name("demo", T0),
            &target,
        )
        .await
        .unwrap();
        let path = dir.path().join("backups").join(backup_name("demo", T0));
        assert_eq!(written.location, format!("file://{}", path.display()));
        assert_eq!(written.revision, 42);
        assert_eq!(written.size, 300_000);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!(written.sha256, hex(&Sha256::digest(&bytes)));
        // Nothing but the backup is left in the directory.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("backups"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [backup_name("demo", T0)]);
    }

    #[tokio::test]
    async fn a_stream_that_fails_midway_leaves_no_file_and_the_error_names_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Dir(dir.path().to_path_buf());
        let mut items = chunks(&data(200_000), 65_536);
        items.insert(2, Err("member demo-1: connection reset".into()));
        let e = write_stream(futures::stream::iter(items), &backup_name("demo", T0), &target)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&dir.path().display().to_string()) && e.contains("connection reset"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the temporary file is removed"
        );
        // An empty snapshot is an error too.
        let e = write_stream(
            futures::stream::iter(Vec::new()),
            &backup_name("demo", T0),
            &target,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("empty"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn an_object_store_backup_is_uploaded_in_parts_and_retention_spares_other_clusters() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let target = Target::Store {
            store: store.clone(),
            url: "s3://bucket".into(),
            prefix: "team/backups".into(),
        };
        // Larger than one part: the multipart writer uploads two.
        let bytes = data(PART_BYTES + 100_000);
        let hour = 3_600_000;
        for i in 0..4 {
            let w = write_stream(
                futures::stream::iter(chunks(&bytes, 65_536)),
                &backup_name("demo", T0 + i * hour),
                &target,
            )
            .await
            .unwrap();
            assert_eq!(w.sha256, hex(&Sha256::digest(&bytes)));
            assert_eq!(
                w.location,
                format!("s3://bucket/team/backups/{}", backup_name("demo", T0 + i * hour))
            );
        }
        let got = store
            .get(&ObjectPath::from(format!(
                "team/backups/{}",
                backup_name("demo", T0)
            )))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&got[..], &bytes[..]);
        // Another cluster's backup and an unrelated object under the same prefix.
        store
            .put(
                &ObjectPath::from(format!("team/backups/{}", backup_name("demo-2", T0))),
                vec![1u8].into(),
            )
            .await
            .unwrap();
        store
            .put(&ObjectPath::from("team/backups/notes.txt"), vec![1u8].into())
            .await
            .unwrap();
        let retention = crate::crd::Retention {
            count: Some(2),
            max_age: None,
        };
        let deleted = apply_retention(&target, "demo", Some(&retention), T0 + 4 * hour)
            .await
            .unwrap();
        assert_eq!(deleted.len(), 2);
        let mut left: Vec<String> = list(&target, "demo")
            .await
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                backup_name("demo", T0 + 2 * hour),
                backup_name("demo", T0 + 3 * hour)
            ]
        );
        let all: Vec<_> = store.list(None).collect().await;
        assert_eq!(all.len(), 4, "demo-2's backup and notes.txt are untouched");
    }

    #[test]
    fn a_bad_spec_is_refused_with_the_field_named() {
        let spec = |schedule: &str, path: Option<&str>, max_age: Option<&str>| BackupSpec {
            schedule: schedule.into(),
            retention: Some(crate::crd::Retention {
                count: None,
                max_age: max_age.map(Into::into),
            }),
            destination: BackupDestination {
                path: path.map(Into::into),
                s3: None,
            },
        };
        assert!(validate(&spec("0 */6 * * *", Some("/b"), Some("7d"))).is_ok());
        assert!(validate(&spec("*/5 * * * * *", Some("/b"), None)).is_ok());
        assert!(validate(&spec("61 * * * *", Some("/b"), None))
            .unwrap_err()
            .contains("schedule"));
        assert!(validate(&spec("0 * * * *", Some("rel/dir"), None))
            .unwrap_err()
            .contains("absolute"));
        assert!(validate(&spec("0 * * * *", None, None))
            .unwrap_err()
            .contains("exactly one"));
        assert!(validate(&spec("0 * * * *", Some("/b"), Some("a week")))
            .unwrap_err()
            .contains("maxAge"));
    }
}
