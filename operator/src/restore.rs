//! Restore: a new cluster whose members start from a backup (`spec.bootstrap.fromBackup`).
//!
//! Before any member of a new cluster has started, the planner asks for
//! [`crate::plan::Action::Restore`]; the platform fetches the backup ([`fetch`]: streamed
//! to a file, SHA-256 computed on the way and compared with `fromBackup.sha256` when
//! given) and builds every member's data from it with `raft-node restore` (the flags
//! each member will start with). Only then does the planner bootstrap the members, with
//! `--initial-cluster-state new`. A backup that cannot be read is reported in the
//! `Restored` condition (naming its location) and retried with back-off; no member
//! starts meanwhile. Once the cluster is bootstrapped, `fromBackup` is never read again.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::backup::{retry_delay, S3Credentials, CHUNK_TIMEOUT};
use crate::crd::{BackupSource, RaftClusterSpec, RaftClusterStatus, RestoreStatus, S3Destination};
use crate::plan::{rfc3339_from_ms, Action, Plan};
use crate::{Error, Result};

/// The condition that says how the restore went.
pub const CONDITION: &str = "Restored";
/// Largest backup fetched (raft-node's own ceiling, `node/src/restore.rs`).
pub const BACKUP_BYTES_MAX: u64 = 8 << 30;
/// Read buffer when copying a backup file.
const COPY_BUFFER_BYTES: usize = 1 << 20;
/// Longest error text kept in status.
const ERROR_CHARS_MAX: usize = 1_000;

fn restore_error(message: impl Into<String>) -> Error {
    Error::Backup(message.into())
}

/// `fromBackup`, if the spec has one.
pub fn source(spec: &RaftClusterSpec) -> Option<&BackupSource> {
    spec.bootstrap.as_ref()?.from_backup.as_ref()
}

/// `file:///path` or `s3://bucket/key`: how status and messages name the backup.
pub fn location(source: &BackupSource) -> String {
    match (&source.path, &source.s3) {
        (Some(path), _) => format!("file://{path}"),
        (None, Some(s3)) => format!("s3://{}/{}", s3.bucket, s3.key.trim_start_matches('/')),
        (None, None) => "(no location)".into(),
    }
}

/// What can be checked without reading anything: exactly one of `path` and `s3`, an
/// absolute path, an http(s) endpoint, a SHA-256 of 64 hex digits.
pub fn validate(source: &BackupSource) -> std::result::Result<(), String> {
    match (&source.path, &source.s3) {
        (Some(path), None) => {
            if !Path::new(path).is_absolute() {
                return Err(format!(
                    "bootstrap.fromBackup.path {path:?} must be an absolute path"
                ));
            }
        }
        (None, Some(s3)) => {
            if s3.bucket.trim().is_empty() {
                return Err("bootstrap.fromBackup.s3.bucket is empty".into());
            }
            if s3.key.trim_matches('/').is_empty() {
                return Err("bootstrap.fromBackup.s3.key is empty".into());
            }
            if let Some(endpoint) = &s3.endpoint {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(format!(
                        "bootstrap.fromBackup.s3.endpoint {endpoint:?} must start with http:// or https://"
                    ));
                }
            }
        }
        _ => return Err("bootstrap.fromBackup needs exactly one of path and s3".into()),
    }
    if let Some(sum) = &source.sha256 {
        if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "bootstrap.fromBackup.sha256 {sum:?} is not a SHA-256 (64 hex digits)"
            ));
        }
    }
    Ok(())
}

/// The backup-destination form of an S3 source (for [`crate::backup::s3_target`]).
pub fn s3_destination(source: &BackupSource) -> Option<S3Destination> {
    let s3 = source.s3.as_ref()?;
    Some(S3Destination {
        bucket: s3.bucket.clone(),
        prefix: None,
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        credentials_secret: s3.credentials_secret.clone(),
    })
}

/// An S3 store for `source` (credentials as for a backup destination).
pub fn s3_store(
    source: &BackupSource,
    credentials: Option<S3Credentials>,
) -> Result<Option<Arc<dyn ObjectStore>>> {
    let Some(destination) = s3_destination(source) else {
        return Ok(None);
    };
    match crate::backup::s3_target(&destination, credentials)? {
        crate::backup::Target::Store { store, .. } => Ok(Some(store)),
        crate::backup::Target::Dir(_) => Ok(None),
    }
}

/// The backup, fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub location: String,
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies the backup of `source` into `to` (a new file), streamed: each chunk is
/// hashed and written before the next is read, and at most [`BACKUP_BYTES_MAX`] bytes
/// are accepted. `store` is the object store of an S3 source. A file whose SHA-256 is
/// not `source.sha256` is an error; `to` is removed on any error.
pub async fn fetch(
    source: &BackupSource,
    store: Option<&Arc<dyn ObjectStore>>,
    to: &Path,
) -> Result<Fetched> {
    let location = location(source);
    let result = fetch_inner(source, store, to, &location).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(to).await;
    }
    result
}

async fn fetch_inner(
    source: &BackupSource,
    store: Option<&Arc<dyn ObjectStore>>,
    to: &Path,
    location: &str,
) -> Result<Fetched> {
    validate(source).map_err(restore_error)?;
    let fail = |what: String| restore_error(format!("cannot restore from {location}: {what}"));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .await
        .map_err(|e| fail(format!("cannot create {}: {e}", to.display())))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut add = |chunk: &[u8]| -> Result<()> {
        size += chunk.len() as u64;
        if size > BACKUP_BYTES_MAX {
            return Err(fail(format!(
                "the backup is larger than the limit of {BACKUP_BYTES_MAX} bytes"
            )));
        }
        hasher.update(chunk);
        Ok(())
    };
    if let Some(path) = &source.path {
        use tokio::io::AsyncReadExt;
        let mut input = tokio::fs::File::open(path)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
        loop {
            let n = input.read(&mut buffer).await.map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            add(&buffer[..n])?;
            file.write_all(&buffer[..n])
                .await
                .map_err(|e| fail(format!("cannot write {}: {e}", to.display())))?;
        }
    } else {
        let s3 = source.s3.as_ref().expect("validated: path or s3");
        let store = store.ok_or_else(|| fail("no object store".into()))?;
        let key = ObjectPath::from(s3.key.trim_matches('/'));
        let answer = tokio::time::timeout(CHUNK_TIMEOUT, store.get(&key))
            .await
            .map_err(|_| fail(format!("no answer for {} s", CHUNK_TIMEOUT.as_secs())))?
            .map_err(|e| fail(e.to_string()))?;
        let mut stream = answer.into_stream();
        loop {
            let next = tokio::time::timeout(CHUNK_TIMEOUT, stream.next())
                .await
                .map_err(|_| fail(format!("nothing received for {} s", CHUNK_TIMEOUT.as_secs())))?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| fail(e.to_string()))?;
            add(&chunk)?;
            file.write_all(&chunk)
                .await
                .map_err(|e| fail(format!("cannot write {}: {e}", to.display())))?;
        }
    }
    file.sync_all()
        .await
        .map_err(|e| fail(format!("cannot fsync {}: {e}", to.display())))?;
    if size == 0 {
        return Err(fail("the backup is empty".into()));
    }
    let sha256 = hex(&hasher.finalize());
    if let Some(expected) = &source.sha256 {
        if !expected.eq_ignore_ascii_case(&sha256) {
            return Err(fail(format!(
                "SHA-256 {sha256} is not the {expected} fromBackup.sha256 gives"
            )));
        }
    }
    Ok(Fetched {
        location: location.to_string(),
        size,
        sha256,
    })
}

/// The planner's restore step while the members have not started yet: `None` when
/// there is nothing (more) to restore and the members may be bootstrapped.
pub fn decide(
    spec: &RaftClusterSpec,
    status: Option<&RaftClusterStatus>,
    members: i32,
    now_ms: u64,
) -> Option<Action> {
    let source = source(spec)?;
    let previous = status.and_then(|s| s.restore.as_ref());
    // Restored for as many members as will start (a changed `replicas` before the
    // first start restores again: no member may start without the backup's data).
    if previous.is_some_and(|r| r.succeeded && r.members.is_none_or(|n| n == members)) {
        return None;
    }
    if let Err(reason) = validate(source) {
        return Some(Action::Refuse {
            reason: format!("{reason}; no member is started"),
        });
    }
    if let Some(r) = previous.filter(|r| r.failures > 0 && r.location == location(source)) {
        let next = r
            .next_attempt_time
            .as_deref()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map_or(0, |t| t.as_millisecond().max(0) as u64);
        if now_ms < next {
            return Some(Action::Wait {
                reason: format!(
                    "restore from {} failed {} time(s); next attempt at {}; no member is started",
                    r.location,
                    r.failures,
                    rfc3339_from_ms(next)
                ),
            });
        }
    }
    Some(Action::Restore {
        members,
        source: source.clone(),
    })
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(ERROR_CHARS_MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
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

/// Writes this round's restore into the status: `status.restore` and the `Restored`
/// condition. `outcome` is the restore carried out this round, if any.
pub fn record(
    status: &mut RaftClusterStatus,
    previous: Option<&RaftClusterStatus>,
    spec: &RaftClusterSpec,
    plan: &Plan,
    outcome: Option<&std::result::Result<Fetched, String>>,
    now_ms: u64,
) {
    let before = previous.and_then(|p| p.restore.clone());
    let conditions = previous.map_or(&[][..], |p| &p.conditions[..]);
    status.restore = before.clone();
    let Some(source) = source(spec) else {
        // Keep what a restore once said (the cluster was restored); nothing else.
        if let Some(c) = conditions
            .iter()
            .find(|c| c.type_ == CONDITION && before.is_some())
        {
            status.conditions.retain(|x| x.type_ != CONDITION);
            status.conditions.push(c.clone());
        }
        return;
    };
    let here = location(source);
    match (&plan.action, outcome) {
        (Some(Action::Restore { members, .. }), Some(Ok(fetched))) => {
            status.restore = Some(RestoreStatus {
                location: fetched.location.clone(),
                succeeded: true,
                members: Some(*members),
                failures: before.filter(|b| b.location == here).map_or(0, |b| b.failures),
                last_error: None,
                next_attempt_time: None,
                size: Some(fetched.size),
                checksum: Some(fetched.sha256.clone()),
            });
            set_condition(
                &mut status.conditions,
                conditions,
                true,
                "Restored",
                format!(
                    "every member's data was restored from {} ({} bytes, sha256 {})",
                    fetched.location, fetched.size, fetched.sha256
                ),
                now_ms,
            );
        }
        (Some(Action::Restore { .. }), failed) => {
            let error = match failed {
                Some(Err(e)) => clip(e),
                _ => "the restore was not carried out".into(),
            };
            let failures = before.filter(|b| b.location == here).map_or(0, |b| b.failures) + 1;
            let next = now_ms + retry_delay(failures).as_millis() as u64;
            status.restore = Some(RestoreStatus {
                location: here.clone(),
                succeeded: false,
                members: None,
                failures,
                last_error: Some(error.clone()),
                next_attempt_time: Some(rfc3339_from_ms(next)),
                size: None,
                checksum: None,
            });
            set_condition(
                &mut status.conditions,
                conditions,
                false,
                "BackupUnreadable",
                format!(
                    "{error}; no member is started; attempt {failures} failed, next at {}",
                    rfc3339_from_ms(next)
                ),
                now_ms,
            );
        }
        (Some(Action::Refuse { reason }), _) if !plan.bootstrapped => {
            set_condition(
                &mut status.conditions,
                conditions,
                false,
                "InvalidSpec",
                reason.clone(),
                now_ms,
            );
        }
        _ if status.restore.as_ref().is_some_and(|r| r.succeeded) => {
            let r = status.restore.clone().unwrap_or_default();
            let mut message = format!(
                "every member's data was restored from {} ({} bytes, sha256 {})",
                r.location,
                r.size.unwrap_or(0),
                r.checksum.unwrap_or_default()
            );
            if plan.bootstrapped {
                message.push_str("; spec.bootstrap.fromBackup is not read again");
            }
            set_condition(
                &mut status.conditions,
                conditions,
                true,
                "Restored",
                message,
                now_ms,
            );
        }
        _ if plan.bootstrapped => {
            set_condition(
                &mut status.conditions,
                conditions,
                false,
                "Ignored",
                format!(
                    "spec.bootstrap.fromBackup ({here}) is read only before a new cluster's first start; \
                     this cluster had started without it, so nothing was restored"
                ),
                now_ms,
            );
        }
        (Some(Action::Wait { reason }), _) if status.restore.as_ref().is_some_and(|r| r.failures > 0) => {
            let r = status.restore.clone().unwrap_or_default();
            set_condition(
                &mut status.conditions,
                conditions,
                false,
                "BackupUnreadable",
                format!("{}; {reason}", r.last_error.unwrap_or_default()),
                now_ms,
            );
        }
        _ => {
            if let Some(c) = conditions.iter().find(|c| c.type_ == CONDITION) {
                status.conditions.retain(|x| x.type_ != CONDITION);
                status.conditions.push(c.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::S3Object;

    fn file_source(path: &Path, sha256: Option<String>) -> BackupSource {
        BackupSource {
            path: Some(path.display().to_string()),
            s3: None,
            sha256,
        }
    }

    #[tokio::test]
    async fn a_file_is_copied_with_its_checksum_and_a_wrong_checksum_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.snap");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&input, &data).unwrap();
        let expected = hex(&Sha256::digest(&data));
        let out = dir.path().join("out.snap");
        let fetched = fetch(&file_source(&input, Some(expected.clone())), None, &out)
            .await
            .unwrap();
        assert_eq!(fetched.size, data.len() as u64);
        assert_eq!(fetched.sha256, expected);
        assert_eq!(std::fs::read(&out).unwrap(), data);

        let out2 = dir.path().join("out2.snap");
        let wrong = "0".repeat(64);
        let e = fetch(&file_source(&input, Some(wrong)), None, &out2)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SHA-256") && e.contains(&format!("file://{}", input.display())),
            "{e}"
        );
        assert!(!out2.exists());
    }

    #[tokio::test]
    async fn a_missing_file_or_object_names_its_location() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.snap");
        let e = fetch(&file_source(&missing, None), None, &dir.path().join("o"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("cannot restore from file://{}", missing.display())),
            "{e}"
        );

        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        store
            .put(&ObjectPath::from("a/b.snap"), b"backup bytes".to_vec().into())
            .await
            .unwrap();
        let source = |key: &str| BackupSource {
            path: None,
            s3: Some(S3Object {
                bucket: "bk".into(),
                key: key.into(),
                endpoint: None,
                region: None,
                credentials_secret: None,
            }),
            sha256: None,
        };
        let got = fetch(&source("a/b.snap"), Some(&store), &dir.path().join("s3"))
            .await
            .unwrap();
        assert_eq!(got.size, 12);
        assert_eq!(got.location, "s3://bk/a/b.snap");
        let e = fetch(&source("a/c.snap"), Some(&store), &dir.path().join("s3b"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot restore from s3://bk/a/c.snap"), "{e}");
    }

    #[test]
    fn bad_sources_are_refused_with_the_field_named() {
        let mut s = file_source(Path::new("relative.snap"), None);
        assert!(validate(&s).unwrap_err().contains("absolute"));
        s.path = Some("/b.snap".into());
        s.sha256 = Some("xyz".into());
        assert!(validate(&s).unwrap_err().contains("sha256"));
        s.sha256 = None;
        assert!(validate(&s).is_ok());
        s.path = None;
        assert!(validate(&s).unwrap_err().contains("exactly one"));
    }
}
