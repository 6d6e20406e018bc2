//! A human-readable listing of a WAL directory, for `raft-node wal dump --wal-dir DIR`.
//!
//! Read-only: it opens nothing for writing, repairs nothing and keeps going after
//! corruption (resuming at the next segment), so it can be pointed at the directory
//! of a node that refuses to start.

use std::io::Write;
use std::path::Path;

use crate::raft::types::{EntryPayload, HardState, Index, SnapshotMeta};
use crate::storage::codec::Record;
use crate::storage::fs::StdFs;
use crate::storage::log::{LogStore, MemLogStore};
use crate::storage::wal::{list_segments, scan_segment, ScanEnd, ScanItem, VisitError};
use crate::storage::{Error, Result};

/// What a dump found, besides what it printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpSummary {
    pub segments: usize,
    pub records: u64,
    /// One line per problem: file, byte offset and reason.
    pub problems: Vec<String>,
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
    pub first_index: Index,
    pub last_index: Index,
}

fn describe(record: &Record) -> String {
    match record {
        Record::Entry(entry) => {
            let payload = match &entry.payload {
                EntryPayload::Noop => "noop".to_string(),
                EntryPayload::Normal(data) => format!("normal {} bytes", data.len()),
                EntryPayload::ConfChange(change) => format!("conf-change {change:?}"),
                EntryPayload::Timing(timing) => format!(
                    "timing heartbeat={} election={} ticks",
                    timing.heartbeat_ticks, timing.election_ticks
                ),
            };
            format!("index={} term={} {payload}", entry.index, entry.term)
        }
        Record::HardState(hs) => format!("term={} vote={} commit={}", hs.term, hs.vote, hs.commit),
        Record::Truncate { from } => format!("from={from}"),
        Record::Compact { upto } => format!("upto={upto}"),
        Record::Snapshot(meta) | Record::SegmentSnapshot(meta) => format!(
            "index={} term={} voters={:?} learners={:?}",
            meta.index, meta.term, meta.membership.voters, meta.membership.learners
        ),
    }
}

/// Prints the segments of `dir` (and every record when `list_records`), the hard
/// state and every problem found to `out`.
pub fn dump_wal(dir: &Path, list_records: bool, out: &mut dyn Write) -> Result<DumpSummary> {
    let write_err = |e| Error::io("write dump output for", dir, e);
    let segments = list_segments(&StdFs, dir)?;
    let mut summary = DumpSummary {
        segments: segments.len(),
        ..DumpSummary::default()
    };
    writeln!(out, "WAL {} ({} segments)", dir.display(), segments.len()).map_err(write_err)?;
    let mut log: Option<MemLogStore> = None;
    let count = segments.len();
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 && segment.seq != segments[i - 1].seq + 1 {
            let problem = format!(
                "{}: segment(s) missing between {} and {}",
                segment.path.display(),
                segments[i - 1].seq,
                segment.seq
            );
            writeln!(out, "PROBLEM {problem}").map_err(write_err)?;
            summary.problems.push(problem);
            log = None;
        }
        let mut lines: Vec<String> = Vec::new();
        let mut records = 0u64;
        let (_, end) = scan_segment(&StdFs, &segment.path, &mut |item| match item {
            ScanItem::Header(h) => {
                lines.push(format!(
                    "segment {} seq={} cluster={:#x} node={:#x} first_index={} prev_term={}",
                    segment.path.display(),
                    h.seq,
                    h.cluster_id,
                    h.node_id,
                    h.first_index,
                    h.prev_term
                ));
                let continues = log.as_ref().is_some_and(|l| l.last_index() + 1 == h.first_index);
                if !continues {
                    if log.is_some() {
                        let reason = "segment does not continue the log before it".to_string();
                        log = Some(MemLogStore::with_base(
                            0,
                            h.first_index.saturating_sub(1),
                            h.prev_term,
                        ));
                        return Err(VisitError::Corrupt(reason));
                    }
                    log = Some(MemLogStore::with_base(
                        0,
                        h.first_index.saturating_sub(1),
                        h.prev_term,
                    ));
                }
                Ok(())
            }
            ScanItem::Record {
                offset,
                framed_len,
                record,
            } => {
                records += 1;
                if list_records {
                    lines.push(format!(
                        "  @{offset} {} ({framed_len} bytes) {}",
                        record.kind(),
                        describe(&record)
                    ));
                }
                log.as_mut()
                    .expect("the header comes first")
                    .apply_record(&record)
                    .map_err(VisitError::Corrupt)
            }
        })?;
        for line in lines {
            writeln!(out, "{line}").map_err(write_err)?;
        }
        summary.records += records;
        let path = segment.path.display();
        match end {
            ScanEnd::Clean { len } => {
                writeln!(out, "  end: clean, {records} records, {len} bytes").map_err(write_err)?;
            }
            ScanEnd::Incomplete { offset, reason } if i + 1 == count => {
                writeln!(
                    out,
                    "  end: torn tail at byte {offset} ({reason}); start-up cuts it off"
                )
                .map_err(write_err)?;
            }
            ScanEnd::Incomplete { offset, reason } | ScanEnd::Corrupt { offset, reason } => {
                let problem = format!("{path} at byte offset {offset}: {reason}");
                writeln!(out, "PROBLEM {problem}").map_err(write_err)?;
                summary.problems.push(problem);
                log = None;
            }
        }
    }
    if let Some(log) = &log {
        summary.hard_state = log.hard_state();
        summary.snapshot = log.snapshot_meta();
        summary.first_index = log.first_index();
        summary.last_index = log.last_index();
    }
    let hs = summary.hard_state;
    writeln!(
        out,
        "hard state: term={} vote={} commit={}",
        hs.term, hs.vote, hs.commit
    )
    .map_err(write_err)?;
    writeln!(
        out,
        "snapshot: index={} term={}; log: first_index={} last_index={}",
        summary.snapshot.index, summary.snapshot.term, summary.first_index, summary.last_index
    )
    .map_err(write_err)?;
    writeln!(out, "problems: {}", summary.problems.len()).map_err(write_err)?;
    Ok(summary)
}
