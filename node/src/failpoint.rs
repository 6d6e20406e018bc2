//! Crash points: named places in the write path where a test can make the process
//! abort, sleep, or see an I/O error.
//!
//! Compiled in only with the cargo feature `failpoints`; without it [`fail_point!`]
//! and [`fail_point_async!`] expand to nothing, so the release build has none.
//!
//! # Arming
//!
//! - `KUBERAFT_FAILPOINTS="wal-after-write=abort;wal-after-fsync=sleep(200)"`, read at
//!   the first hit of any point;
//! - `KUBERAFT_FAILPOINTS_FILE=/path`: the same syntax in a file, re-read (at most
//!   every 20 ms) whenever it changes, so a running process can be armed and disarmed.
//!   An empty or missing file disarms every point. The file wins over the variable.
//!
//! One term is `name=[P%][N*]action`, where `action` is `abort`, `panic`, `sleep(MS)`,
//! `error` (an I/O error where the point can return one; elsewhere nothing), or `off`;
//! `P%` fires with probability P (0-100, default 100), `N*` at most N times (per
//! process, and per arming: re-arming resets the count). Example:
//! `wal-writer-group=30%1*abort;transport-snapshot-chunk=sleep(50)`.
//!
//! `raft-node failpoints` lists every point ([`POINTS`]).
//!
//! # Adding a point
//!
//! Add its name and a line of description to [`POINTS`], then:
//!
//! ```ignore
//! kuberaft_node::fail_point!("my-point");                          // abort / panic / sleep
//! kuberaft_node::fail_point!("my-point", |e: std::io::Error| Err(e.into())); // may return
//! kuberaft_node::fail_point_async!("my-point");                    // sleeps with tokio
//! ```
//!
//! In the second form the closure's value is returned from the enclosing function
//! when the point is armed with `error`.

/// Every crash point: (name, where it is).
pub const POINTS: &[(&str, &str)] = &[
    (
        "wal-after-write",
        "storage/wal.rs: the records were written to the segment (not yet fsynced), before anyone is acknowledged; error = the write failed",
    ),
    (
        "wal-power-loss",
        "storage/wal.rs: after a write to the segment: abort = cut the segment back to its length at the last fdatasync that returned (a power loss drops the page cache), then abort",
    ),
    (
        "wal-before-fsync",
        "storage/wal.rs: just before the segment's fdatasync; error = the fdatasync failed (the WAL stops for good)",
    ),
    (
        "wal-after-fsync",
        "storage/wal.rs: the segment's fdatasync returned, before the caller learns it; error = treated as a failed fdatasync",
    ),
    (
        "wal-writer-group",
        "storage/writer.rs: a group commit's requests are persisted in memory and written, before its one fsync; error = the group fails",
    ),
    (
        "wal-writer-before-ack",
        "storage/writer.rs: a group is durable, before its callers are acknowledged (sleep delays the acknowledgement)",
    ),
    (
        "transport-snapshot-chunk",
        "transport/mod.rs: a snapshot chunk arrived from the leader, before it is written; error = the transfer fails",
    ),
    (
        "transport-snapshot-received",
        "transport/mod.rs: a received snapshot is complete and durable, before it is acknowledged and handed to the core",
    ),
    (
        "apply-before-commit",
        "runtime.rs: a batch of entries is applied in memory, before its state-store commit (nothing of it is in the engine yet)",
    ),
    (
        "apply-after-commit",
        "runtime.rs: a batch is committed to the state store (maybe not fsynced), before it is published and the clients answered",
    ),
    (
        "state-before-durable-commit",
        "kv/mod.rs: the state store is about to commit with fsync (durable); error = the commit fails (the node stops)",
    ),
    (
        "state-after-durable-commit",
        "kv/mod.rs: a durable state-store commit returned, before the caller learns it",
    ),
    (
        "snapshot-marker",
        "runtime.rs: the state store is durable at a snapshot's index, before the marker is written",
    ),
    (
        "snapshot-install",
        "runtime.rs: a received snapshot is written into a new state-store file, before it is moved into place",
    ),
    (
        "snapshot-materialise",
        "storage/snapshot.rs: a marker is being turned into a full snapshot for a follower, before the file is finished",
    ),
    (
        "transport-peer-batch",
        "transport/mod.rs: a batch of peer messages arrived, before it is handed to the core (sleep delays peer traffic)",
    ),
];

/// What an armed point does when hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Abort,
    Panic,
    Sleep(u64),
    Error,
    Off,
}

/// One armed point.
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    pub name: String,
    pub action: Action,
    /// Probability in percent (0-100).
    pub percent: u32,
    /// At most this many firings (None: unlimited).
    pub count: Option<u64>,
}

/// Parses `name=[P%][N*]action;...`. Unknown names are an error (a typo would
/// otherwise arm nothing silently).
pub fn parse(spec: &str) -> Result<Vec<Term>, String> {
    let mut terms = Vec::new();
    for part in spec.split([';', '\n']).map(str::trim).filter(|p| !p.is_empty()) {
        let (name, rest) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected name=action"))?;
        let name = name.trim();
        if !POINTS.iter().any(|(n, _)| *n == name) {
            let known: Vec<&str> = POINTS.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "unknown failpoint `{name}` (known: {})",
                known.join(", ")
            ));
        }
        let mut rest = rest.trim();
        let mut percent = 100;
        if let Some((p, tail)) = rest.split_once('%') {
            percent = p
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| format!("`{part}`: bad probability `{p}`"))?;
            rest = tail.trim();
        }
        let mut count = None;
        if let Some((n, tail)) = rest.split_once('*') {
            count = Some(
                n.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("`{part}`: bad count `{n}`"))?,
            );
            rest = tail.trim();
        }
        let action = match rest {
            "abort" => Action::Abort,
            "panic" => Action::Panic,
            "error" => Action::Error,
            "off" => Action::Off,
            other => {
                let ms = other
                    .strip_prefix("sleep(")
                    .and_then(|s| s.strip_suffix(')'))
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| format!("`{part}`: unknown action `{other}`"))?;
                Action::Sleep(ms)
            }
        };
        terms.push(Term {
            name: name.to_string(),
            action,
            percent,
            count,
        });
    }
    Ok(terms)
}

#[cfg(feature = "failpoints")]
mod imp {
    use super::{parse, Action, Term};
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Instant, SystemTime};

    struct Armed {
        term: Term,
        fired: u64,
    }

    struct Registry {
        points: HashMap<String, Armed>,
        file: Option<std::path::PathBuf>,
        file_stamp: Option<(SystemTime, u64)>,
        checked: Option<Instant>,
        rng: u64,
    }

    static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

    fn arm(points: &mut HashMap<String, Armed>, spec: &str, source: &str) {
        points.clear();
        match parse(spec) {
            Ok(terms) => {
                for term in terms {
                    eprintln!("failpoint armed from {source}: {term:?}");
                    points.insert(term.name.clone(), Armed { term, fired: 0 });
                }
            }
            Err(e) => eprintln!("failpoints from {source} ignored: {e}"),
        }
    }

    fn refresh(reg: &mut Registry) {
        let Some(path) = reg.file.clone() else { return };
        let now = Instant::now();
        if reg
            .checked
            .is_some_and(|t| now.duration_since(t).as_millis() < 20)
        {
            return;
        }
        reg.checked = Some(now);
        let stamp = std::fs::metadata(&path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if stamp == reg.file_stamp {
            return;
        }
        reg.file_stamp = stamp;
        let spec = std::fs::read_to_string(&path).unwrap_or_default();
        arm(&mut reg.points, &spec, &path.display().to_string());
    }

    /// The action to take at `name` now, if any (counts and probability applied).
    pub fn eval(name: &str) -> Option<Action> {
        let mut guard = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        let reg = guard.get_or_insert_with(|| {
            let mut points = HashMap::new();
            if let Ok(spec) = std::env::var("KUBERAFT_FAILPOINTS") {
                arm(&mut points, &spec, "KUBERAFT_FAILPOINTS");
            }
            let seed = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id());
            Registry {
                points,
                file: std::env::var_os("KUBERAFT_FAILPOINTS_FILE").map(Into::into),
                file_stamp: None,
                checked: None,
                rng: seed | 1,
            }
        });
        refresh(reg);
        let armed = reg.points.get_mut(name)?;
        if armed.term.action == Action::Off || armed.term.count.is_some_and(|n| armed.fired >= n) {
            return None;
        }
        if armed.term.percent < 100 {
            // xorshift64: good enough to spread firings.
            reg.rng ^= reg.rng << 13;
            reg.rng ^= reg.rng >> 7;
            reg.rng ^= reg.rng << 17;
            if (reg.rng % 100) as u32 >= armed.term.percent {
                return None;
            }
        }
        armed.fired += 1;
        eprintln!("failpoint {name}: {:?}", armed.term.action);
        Some(armed.term.action.clone())
    }
}

#[cfg(feature = "failpoints")]
pub use imp::eval;

/// Whether this build has crash points (the `failpoints` feature).
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Runs a blocking action; returns an I/O error for `error`.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) -> Option<std::io::Error> {
    match eval(name)? {
        Action::Abort => {
            eprintln!("failpoint {name}: aborting the process");
            std::process::abort()
        }
        Action::Panic => panic!("failpoint {name}"),
        Action::Sleep(ms) => {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            None
        }
        Action::Error => Some(std::io::Error::other(format!("failpoint {name}"))),
        Action::Off => None,
    }
}

/// Like [`hit`], sleeping on the tokio timer instead of blocking the thread.
#[cfg(feature = "failpoints")]
pub async fn hit_async(name: &str) -> Option<std::io::Error> {
    match eval(name)? {
        Action::Sleep(ms) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            None
        }
        Action::Abort => {
            eprintln!("failpoint {name}: aborting the process");
            std::process::abort()
        }
        Action::Panic => panic!("failpoint {name}"),
        Action::Error => Some(std::io::Error::other(format!("failpoint {name}"))),
        Action::Off => None,
    }
}

/// A crash point (see the module documentation). Without the `failpoints` feature it
/// expands to nothing.
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! fail_point {
    ($name:literal) => {{
        let _ = $crate::failpoint::hit($name);
    }};
    ($name:literal, $on_error:expr) => {{
        if let Some(error) = $crate::failpoint::hit($name) {
            return ($on_error)(error);
        }
    }};
}

/// A crash point (see the module documentation). Without the `failpoints` feature it
/// expands to nothing.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! fail_point {
    ($name:literal) => {{}};
    ($name:literal, $on_error:expr) => {{}};
}

/// A crash point in async code: `sleep` waits on the tokio timer.
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! fail_point_async {
    ($name:literal) => {{
        let _ = $crate::failpoint::hit_async($name).await;
    }};
    ($name:literal, $on_error:expr) => {{
        if let Some(error) = $crate::failpoint::hit_async($name).await {
            return ($on_error)(error);
        }
    }};
}

/// A crash point in async code. Without the `failpoints` feature it expands to nothing.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! fail_point_async {
    ($name:literal) => {{}};
    ($name:literal, $on_error:expr) => {{}};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions_probabilities_and_counts() {
        let terms =
            parse("wal-after-write=abort; wal-after-fsync=25%3*sleep(200);wal-writer-group=error").unwrap();
        assert_eq!(terms.len(), 3);
        assert_eq!(terms[0].action, Action::Abort);
        assert_eq!((terms[1].percent, terms[1].count), (25, Some(3)));
        assert_eq!(terms[1].action, Action::Sleep(200));
        assert_eq!(terms[2].action, Action::Error);
        assert!(parse("no-such-point=abort")
            .unwrap_err()
            .contains("unknown failpoint"));
        assert!(parse("wal-after-write=explode").is_err());
        assert!(parse("wal-after-write=101%abort").is_err());
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn every_point_is_named_once() {
        let mut names: Vec<&str> = POINTS.iter().map(|(n, _)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), POINTS.len());
    }
}
