//! The group-commit writer task.
//!
//! An fdatasync costs the same for one entry as for a thousand, so the writer lets
//! many callers share one: it takes a submission from its bounded channel, gathers
//! whatever else is already queued (and, if configured, what arrives within a short
//! window) up to a byte budget, writes it all, issues one fdatasync, and only then
//! acknowledges every caller. While one fsync runs, the next group queues up, so under
//! load the group size grows by itself.
//!
//! Submissions carry sequence numbers in channel order; an acknowledgement of
//! sequence number `n` (or the [`WalWriter::durable_seq`] watch reaching `n`) means
//! every submission up to `n` is durable.
//!
//! A failed fdatasync stops the writer for good: the callers of that group and every
//! later caller get [`Error::Fatal`]. The kernel may have dropped the dirty pages and
//! cleared the error, so a retry could report success for data that is not on disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::stats::{LatencySummary, LatencyWindow};
use crate::storage::log::{LogStore, PersistRequest};
use crate::storage::wal::WalLogStore;
use crate::storage::{Error, Result};

/// How submissions are turned into fsyncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// Gather queued submissions into one write and one fdatasync.
    Group,
    /// One fdatasync per submission (one per entry when each submission carries one
    /// entry). Exists for the benchmark's comparison; never faster.
    PerSubmission,
}

/// Bounds and timing of the writer.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub mode: CommitMode,
    /// A group stops gathering once it holds this many (estimated) bytes.
    pub group_commit_bytes_max: usize,
    /// How long a group waits for more submissions after the queue ran dry. 0 means
    /// "take what is queued and go", which already batches well under load because
    /// submissions queue up during each fsync.
    pub group_commit_window_us: u64,
    /// Submissions waiting in the channel; callers wait (back-pressure) beyond it.
    pub channel_capacity: usize,
    /// Largest single submission, so one caller cannot make a group unbounded.
    pub submission_bytes_max: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            mode: CommitMode::Group,
            group_commit_bytes_max: 4 << 20,
            group_commit_window_us: 0,
            channel_capacity: 4096,
            submission_bytes_max: 16 << 20,
        }
    }
}

/// Power-of-two buckets of microseconds: bucket `i` counts durations in
/// `[2^i, 2^(i+1))` µs (bucket 0 also holds 0 µs).
pub const FSYNC_BUCKETS: usize = 32;

/// Commits the recent fsync latency covers (`WalWriter::fsync_recent`): at most the
/// last 60 s and the last 4096 groups.
pub const FSYNC_WINDOW: Duration = Duration::from_secs(60);
pub const FSYNC_WINDOW_SAMPLES_MAX: usize = 4096;

#[derive(Debug)]
struct FsyncStats {
    buckets: [AtomicU64; FSYNC_BUCKETS],
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
    submissions: AtomicU64,
    /// Written once per group by the writer task; read by status calls.
    recent: std::sync::Mutex<LatencyWindow>,
}

impl Default for FsyncStats {
    fn default() -> Self {
        FsyncStats {
            buckets: Default::default(),
            count: AtomicU64::default(),
            sum_us: AtomicU64::default(),
            max_us: AtomicU64::default(),
            submissions: AtomicU64::default(),
            recent: std::sync::Mutex::new(LatencyWindow::new(FSYNC_WINDOW, FSYNC_WINDOW_SAMPLES_MAX)),
        }
    }
}

impl FsyncStats {
    fn record(&self, elapsed: Duration, submissions: usize) {
        self.recent
            .lock()
            .expect("not poisoned")
            .record(Instant::now(), elapsed);
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let bucket = (63 - us.max(1).leading_zeros() as usize).min(FSYNC_BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
        self.submissions.fetch_add(submissions as u64, Ordering::Relaxed);
    }
}

/// A copy of the writer's commit latency statistics (write plus fdatasync of each
/// group), for `/metrics` and the admin API's fsync latency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsyncHistogram {
    pub buckets: [u64; FSYNC_BUCKETS],
    /// Groups committed (one fdatasync each).
    pub count: u64,
    pub sum_us: u64,
    pub max_us: u64,
    /// Submissions acknowledged by those groups.
    pub submissions: u64,
}

impl FsyncHistogram {
    /// An upper bound of the `q` quantile (0.0..=1.0), in microseconds: the upper
    /// edge of the bucket that holds it.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let target = ((self.count as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return (1u64 << (i + 1)).min(self.max_us.max(1));
            }
        }
        self.max_us
    }

    pub fn mean_us(&self) -> u64 {
        self.sum_us.checked_div(self.count).unwrap_or(0)
    }
}

struct Submission {
    requests: Vec<PersistRequest>,
    bytes: usize,
    reply: oneshot::Sender<Result<u64>>,
}

/// A handle to the writer task. Cheap to clone; the task ends (and hands back the
/// store) when every handle is dropped.
#[derive(Clone, Debug)]
pub struct WalWriter {
    tx: mpsc::Sender<Submission>,
    durable: watch::Receiver<u64>,
    stats: Arc<FsyncStats>,
    submission_bytes_max: usize,
}

/// The answer to one submission: its sequence number once durable, or the error.
pub type Ack = oneshot::Receiver<Result<u64>>;

impl WalWriter {
    /// Starts the writer task on the current tokio runtime. The join handle returns
    /// the store after the last handle is dropped.
    pub fn spawn(store: WalLogStore, config: WriterConfig) -> Result<(WalWriter, JoinHandle<WalLogStore>)> {
        if config.channel_capacity == 0 || config.channel_capacity > 1 << 20 {
            return Err(Error::Config(format!(
                "channel_capacity {} must be between 1 and 2^20",
                config.channel_capacity
            )));
        }
        if config.group_commit_bytes_max == 0 || config.group_commit_bytes_max > 256 << 20 {
            return Err(Error::Config(format!(
                "group_commit_bytes_max {} must be between 1 byte and 256 MiB",
                config.group_commit_bytes_max
            )));
        }
        let (tx, rx) = mpsc::channel(config.channel_capacity);
        let (durable_tx, durable) = watch::channel(0);
        let stats = Arc::new(FsyncStats::default());
        let writer = WalWriter {
            tx,
            durable,
            stats: stats.clone(),
            submission_bytes_max: config.submission_bytes_max,
        };
        let handle = tokio::spawn(run(store, rx, config, durable_tx, stats));
        Ok((writer, handle))
    }

    /// Queues `requests` and returns a receiver for the acknowledgement, so a caller
    /// can keep submitting while earlier submissions are being made durable.
    pub async fn enqueue(&self, requests: Vec<PersistRequest>) -> Result<Ack> {
        let bytes: usize = requests.iter().map(PersistRequest::size_bytes).sum();
        if bytes > self.submission_bytes_max {
            return Err(Error::TooLarge {
                what: "submission",
                len: bytes as u64,
                max: self.submission_bytes_max as u64,
            });
        }
        let (reply, ack) = oneshot::channel();
        self.tx
            .send(Submission {
                requests,
                bytes,
                reply,
            })
            .await
            .map_err(|_| Error::WriterStopped)?;
        Ok(ack)
    }

    /// Queues `requests` and waits until they are durable; returns their sequence
    /// number.
    pub async fn submit(&self, requests: Vec<PersistRequest>) -> Result<u64> {
        let ack = self.enqueue(requests).await?;
        ack.await.map_err(|_| Error::WriterStopped)?
    }

    /// The highest sequence number known durable (every one below it is too).
    pub fn durable_seq(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// Latency of the recent group commits (write plus fdatasync): moving average,
    /// p50 and p99 over [`FSYNC_WINDOW`].
    pub fn fsync_recent(&self) -> LatencySummary {
        self.stats
            .recent
            .lock()
            .expect("not poisoned")
            .summary(Instant::now())
    }

    pub fn fsync_histogram(&self) -> FsyncHistogram {
        let mut buckets = [0u64; FSYNC_BUCKETS];
        for (out, bucket) in buckets.iter_mut().zip(self.stats.buckets.iter()) {
            *out = bucket.load(Ordering::Relaxed);
        }
        FsyncHistogram {
            buckets,
            count: self.stats.count.load(Ordering::Relaxed),
            sum_us: self.stats.sum_us.load(Ordering::Relaxed),
            max_us: self.stats.max_us.load(Ordering::Relaxed),
            submissions: self.stats.submissions.load(Ordering::Relaxed),
        }
    }
}

/// The result of one group, computed on a blocking thread.
struct GroupOutcome {
    store: WalLogStore,
    accepted: Vec<Result<()>>,
    synced: Result<()>,
    elapsed: Duration,
}

fn commit_group(mut store: WalLogStore, groups: Vec<Vec<PersistRequest>>) -> GroupOutcome {
    let accepted = groups
        .into_iter()
        .map(|requests| {
            // Requests of one submission apply in order; the first refused one stops
            // the submission (those before it stay accepted).
            requests
                .into_iter()
                .try_for_each(|request| store.persist(request))
        })
        .collect();
    let started = Instant::now();
    let synced = group_commit_point().and_then(|()| store.sync());
    GroupOutcome {
        store,
        accepted,
        synced,
        elapsed: started.elapsed(),
    }
}

/// Crash point in a group commit, before its fsync; an `error` fails the group (its
/// records stay queued for the next one).
fn group_commit_point() -> Result<()> {
    crate::fail_point!("wal-writer-group", |e| Err(Error::io(
        "group commit",
        std::path::PathBuf::from("failpoint"),
        e
    )));
    Ok(())
}

async fn run(
    store: WalLogStore,
    mut rx: mpsc::Receiver<Submission>,
    config: WriterConfig,
    durable_tx: watch::Sender<u64>,
    stats: Arc<FsyncStats>,
) -> WalLogStore {
    let mut store = Some(store);
    let mut next_seq = 1u64;
    let mut fatal: Option<Arc<Error>> = None;
    let window = Duration::from_micros(config.group_commit_window_us);
    while let Some(first) = rx.recv().await {
        let mut bytes = first.bytes;
        let mut group = vec![first];
        if config.mode == CommitMode::Group {
            while bytes < config.group_commit_bytes_max {
                match rx.try_recv() {
                    Ok(submission) => {
                        bytes += submission.bytes;
                        group.push(submission);
                    }
                    Err(_) => break,
                }
            }
            if !window.is_zero() && bytes < config.group_commit_bytes_max {
                let deadline = tokio::time::Instant::now() + window;
                while bytes < config.group_commit_bytes_max {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(submission)) => {
                            bytes += submission.bytes;
                            group.push(submission);
                        }
                        _ => break,
                    }
                }
            }
        }
        let first_seq = next_seq;
        next_seq += group.len() as u64;
        if let Some(err) = &fatal {
            for submission in group {
                let _ = submission.reply.send(Err(Error::Fatal(err.clone())));
            }
            continue;
        }

        let (requests, replies): (Vec<_>, Vec<_>) = group.into_iter().map(|s| (s.requests, s.reply)).unzip();
        let count = replies.len();
        let taken = store.take().expect("the store is back after every group");
        let outcome = match tokio::task::spawn_blocking(move || commit_group(taken, requests)).await {
            Ok(outcome) => outcome,
            Err(join_error) => panic!("WAL commit thread failed: {join_error}"),
        };
        store = Some(outcome.store);
        match outcome.synced {
            Ok(()) => {
                crate::fail_point_async!("wal-writer-before-ack");
                stats.record(outcome.elapsed, count);
                durable_tx.send_replace(first_seq + count as u64 - 1);
                for (i, (reply, accepted)) in replies.into_iter().zip(outcome.accepted).enumerate() {
                    let _ = reply.send(accepted.map(|()| first_seq + i as u64));
                }
            }
            Err(err) => {
                let shared = match err {
                    Error::Fatal(inner) => {
                        fatal = Some(inner.clone());
                        tracing::error!(error = %inner, "WAL writer stopped after a failed fsync");
                        Error::Fatal(inner)
                    }
                    other => {
                        tracing::warn!(error = %other, "WAL group commit failed; its records stay queued for the next group");
                        other
                    }
                };
                for (reply, accepted) in replies.into_iter().zip(outcome.accepted) {
                    let _ = reply.send(Err(match accepted {
                        Err(refused) => refused,
                        Ok(()) => shared.duplicate(),
                    }));
                }
            }
        }
    }
    store.expect("the store is back after every group")
}
