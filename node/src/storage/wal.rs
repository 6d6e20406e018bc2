//! The segmented write-ahead log.
//!
//! A WAL directory holds segment files named `{seq:016x}-{first_index:016x}.wal`.
//! Each starts with a [`SegmentHeader`] (cluster id, node id, sequence number, where the
//! log continues from), then the hard state and the newest snapshot metadata restated
//! (so that removing older segments never removes the only copy of them), then framed
//! records. Only the last segment is ever appended to.
//!
//! Recovery reads every segment before it changes anything. A partial record at the
//! end of the last segment (a torn tail: the crash hit in the middle of a write) is
//! cut off with a warning, unless a valid record follows it (then it is damage in the
//! middle of the log); anything else that does not check out — a bad checksum, a
//! gap in the indexes, a missing segment, a partial record in an older segment — stops
//! the open with [`Error::Corrupt`] naming the file and byte offset, and nothing on
//! disk is touched.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::raft::types::{Entry, HardState, Index, Membership, NodeId, SnapshotMeta, Term};
use crate::storage::codec::{
    FrameHeader, Record, SegmentHeader, FRAME_HEADER_BYTES, RECORD_BODY_BYTES_MAX, SEGMENT_HEADER_BYTES,
};
use crate::storage::fs::{create_dir_durable, StdFs, WalFile, WalFs};
use crate::storage::log::{LogStore, MemLogStore, PersistRequest};
use crate::storage::{Error, Result};

/// How a WAL is laid out and bounded.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Refuses data of any other cluster.
    pub cluster_id: u64,
    /// Refuses data of any other member.
    pub node_id: NodeId,
    /// A new segment is started once the current one reaches this size. A segment
    /// never exceeds this plus one write batch (at most `pending_bytes_max`).
    pub segment_bytes_max: u64,
    /// Encoded records buffered in memory before they are written without waiting
    /// for a `sync`.
    pub pending_bytes_max: usize,
    /// Entries kept before the snapshot index when compacting (for slow followers).
    pub retain_tail_entries: u64,
}

impl WalConfig {
    pub fn new(cluster_id: u64, node_id: NodeId) -> Self {
        WalConfig {
            cluster_id,
            node_id,
            segment_bytes_max: 64 << 20,
            pending_bytes_max: 4 << 20,
            retain_tail_entries: 0,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.segment_bytes_max < 4096 || self.segment_bytes_max > 1 << 32 {
            return Err(Error::Config(format!(
                "segment_bytes_max {} must be between 4 KiB and 4 GiB",
                self.segment_bytes_max
            )));
        }
        if self.pending_bytes_max == 0 || self.pending_bytes_max > 256 << 20 {
            return Err(Error::Config(format!(
                "pending_bytes_max {} must be between 1 byte and 256 MiB",
                self.pending_bytes_max
            )));
        }
        if self.node_id == 0 {
            return Err(Error::Config("node id 0 is reserved".into()));
        }
        Ok(())
    }
}

/// A retained segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub seq: u64,
    pub first_index: Index,
    pub path: PathBuf,
}

pub(crate) fn segment_file_name(seq: u64, first_index: Index) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

/// Parses a segment file name; other files in the directory are not segments.
pub(crate) fn parse_segment_name(path: &Path) -> Option<(u64, Index)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".wal")?;
    let (seq, first) = stem.split_once('-')?;
    if seq.len() != 16 || first.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(first, 16).ok()?,
    ))
}

/// The segment files of `dir`, ordered by sequence number.
pub(crate) fn list_segments(fs: &dyn WalFs, dir: &Path) -> Result<Vec<SegmentInfo>> {
    let files = fs.list_files(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut segments: Vec<SegmentInfo> = files
        .into_iter()
        .filter_map(|path| {
            parse_segment_name(&path).map(|(seq, first_index)| SegmentInfo {
                seq,
                first_index,
                path,
            })
        })
        .collect();
    segments.sort_by_key(|s| s.seq);
    Ok(segments)
}

/// How the scan of one segment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte belongs to a complete, valid record.
    Clean { len: u64 },
    /// The file ends inside a record (or in zeros): a torn tail if this is the last
    /// segment, corruption otherwise.
    Incomplete { offset: u64, reason: String },
    /// Bytes that cannot be a torn write: a bad checksum, an impossible length, an
    /// undecodable body, or a record the visitor refused.
    Corrupt { offset: u64, reason: String },
}

/// Bytes read at a time by a segment scan. Records are sliced out of these chunks
/// (an entry's payload shares its chunk), so recovery makes one allocation per chunk
/// instead of one per record, and reads at sequential read speed.
const SCAN_CHUNK_BYTES: usize = 4 << 20;

fn rest_is_zero(reader: &mut impl Read) -> io::Result<bool> {
    let mut buf = [0u8; 8192];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

/// Reads a file in large chunks and hands out the unconsumed bytes as one `Bytes`.
struct ChunkReader<R> {
    reader: R,
    /// Bytes of the file not yet read into a chunk.
    unread: u64,
    /// Bytes read but not yet consumed, starting at the scan's offset.
    chunk: Bytes,
    eof: bool,
}

impl<R: Read> ChunkReader<R> {
    fn new(reader: R, file_len: u64) -> Self {
        ChunkReader {
            reader,
            unread: file_len,
            chunk: Bytes::new(),
            eof: false,
        }
    }

    /// Makes at least `need` unconsumed bytes available unless the file ends first;
    /// returns how many are available.
    fn fill(&mut self, need: usize) -> io::Result<usize> {
        if self.chunk.len() >= need || self.eof {
            return Ok(self.chunk.len());
        }
        // The leftover (less than one record) moves to the start of a new chunk; the
        // old chunk stays alive only through the records sliced from it.
        let want = need.max(SCAN_CHUNK_BYTES.min(self.chunk.len() + self.unread as usize));
        let mut buf = Vec::with_capacity(want);
        buf.extend_from_slice(&self.chunk);
        while buf.len() < want {
            // `read_to_end` on a `Take` reads straight into the spare capacity: no
            // zeroing, no per-record allocation.
            let limit = (want - buf.len()) as u64;
            match (&mut self.reader).take(limit).read_to_end(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.unread = self.unread.saturating_sub(n as u64),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.chunk = Bytes::from(buf);
        Ok(self.chunk.len())
    }

    fn consume(&mut self, n: usize) {
        self.chunk.advance(n);
    }

    /// True when every byte from here to the end of the file is zero.
    fn rest_is_zero(&mut self) -> io::Result<bool> {
        if self.chunk.iter().any(|b| *b != 0) {
            return Ok(false);
        }
        rest_is_zero(&mut self.reader)
    }
}

/// What [`scan_segment`] hands to its visitor, in file order.
pub(crate) enum ScanItem {
    Header(SegmentHeader),
    Record {
        offset: u64,
        framed_len: usize,
        record: Record,
    },
}

/// Why a visitor stopped a scan.
pub(crate) enum VisitError {
    /// The item is valid on its own but does not fit (a gap, a term going back):
    /// reported as corruption at the item's offset.
    Corrupt(String),
    /// Stop with this error as it is (e.g. another cluster's data).
    Refuse(Error),
}

/// Reads one segment: its header, then every record, handing each to `visit`.
/// Returns the header (None when it is cut short or does not decode; the end says
/// which) and how the scan ended. Only I/O errors and refusals are `Err`.
pub(crate) fn scan_segment(
    fs: &dyn WalFs,
    path: &Path,
    visit: &mut dyn FnMut(ScanItem) -> Result<(), VisitError>,
) -> Result<(Option<SegmentHeader>, ScanEnd)> {
    let file = fs.open_read(path).map_err(|e| Error::io("open", path, e))?;
    let file_len = fs.file_len(path).map_err(|e| Error::io("stat", path, e))?;
    let mut reader = ChunkReader::new(file, file_len);
    let read_err = |e| Error::io("read", path, e);

    let n = reader.fill(SEGMENT_HEADER_BYTES).map_err(read_err)?;
    if n < SEGMENT_HEADER_BYTES {
        return Ok((
            None,
            ScanEnd::Incomplete {
                offset: 0,
                reason: format!("segment header cut short after {n} bytes"),
            },
        ));
    }
    let header_bytes: &[u8; SEGMENT_HEADER_BYTES] = reader.chunk[..SEGMENT_HEADER_BYTES]
        .try_into()
        .expect("header length");
    let header = match SegmentHeader::decode(header_bytes) {
        Ok(header) => header,
        Err(err) => {
            return Ok((
                None,
                ScanEnd::Corrupt {
                    offset: 0,
                    reason: err.0,
                },
            ))
        }
    };
    reader.consume(SEGMENT_HEADER_BYTES);

    match visit(ScanItem::Header(header)) {
        Ok(()) => {}
        Err(VisitError::Corrupt(reason)) => {
            return Ok((Some(header), ScanEnd::Corrupt { offset: 0, reason }))
        }
        Err(VisitError::Refuse(err)) => return Err(err),
    }

    let mut offset = SEGMENT_HEADER_BYTES as u64;
    loop {
        let n = reader.fill(FRAME_HEADER_BYTES).map_err(read_err)?;
        if n == 0 {
            return Ok((Some(header), ScanEnd::Clean { len: offset }));
        }
        if n < FRAME_HEADER_BYTES {
            let end = if reader.chunk.iter().all(|b| *b == 0) {
                "zero-filled tail"
            } else {
                "record header cut short"
            };
            return Ok((
                Some(header),
                ScanEnd::Incomplete {
                    offset,
                    reason: format!("{end} ({n} of {FRAME_HEADER_BYTES} bytes)"),
                },
            ));
        }
        let frame_bytes: [u8; FRAME_HEADER_BYTES] = reader.chunk[..FRAME_HEADER_BYTES]
            .try_into()
            .expect("frame header length");
        if frame_bytes.iter().all(|b| *b == 0) {
            // Some file systems show zeros where a crash lost the data after the
            // size was extended. Zeros up to the end are a torn tail; zeros followed
            // by data are not.
            let end = if reader.rest_is_zero().map_err(read_err)? {
                ScanEnd::Incomplete {
                    offset,
                    reason: "zero-filled tail".into(),
                }
            } else {
                ScanEnd::Corrupt {
                    offset,
                    reason: "zeroed record followed by data".into(),
                }
            };
            return Ok((Some(header), end));
        }
        let frame = FrameHeader::parse(&frame_bytes);
        if frame.body_len > RECORD_BODY_BYTES_MAX {
            return Ok((
                Some(header),
                ScanEnd::Corrupt {
                    offset,
                    reason: format!(
                        "record length {} is above the limit of {RECORD_BODY_BYTES_MAX} bytes",
                        frame.body_len
                    ),
                },
            ));
        }
        let framed_len = FRAME_HEADER_BYTES + frame.body_len;
        let n = reader.fill(framed_len).map_err(read_err)?;
        if n < framed_len {
            return Ok((
                Some(header),
                ScanEnd::Incomplete {
                    offset,
                    reason: format!(
                        "record cut short: {} of {} body bytes present",
                        n - FRAME_HEADER_BYTES,
                        frame.body_len
                    ),
                },
            ));
        }
        let body = FRAME_HEADER_BYTES..framed_len;
        let computed = frame.computed_crc(&frame_bytes, &reader.chunk[body.clone()]);
        if computed != frame.crc {
            return Ok((
                Some(header),
                ScanEnd::Corrupt {
                    offset,
                    reason: format!(
                        "record checksum mismatch (stored {:#010x}, computed {computed:#010x})",
                        frame.crc
                    ),
                },
            ));
        }
        let decoded = Record::decode_body_in(frame.record_type, &reader.chunk, body);
        reader.consume(framed_len);
        let record = match decoded {
            Ok(record) => record,
            Err(err) => {
                return Ok((
                    Some(header),
                    ScanEnd::Corrupt {
                        offset,
                        reason: err.0,
                    },
                ))
            }
        };
        match visit(ScanItem::Record {
            offset,
            framed_len,
            record,
        }) {
            Ok(()) => {}
            Err(VisitError::Corrupt(reason)) => {
                return Ok((Some(header), ScanEnd::Corrupt { offset, reason }))
            }
            Err(VisitError::Refuse(err)) => return Err(err),
        }
        offset += framed_len as u64;
    }
}

/// The log position and durable state just before the first pending record: what a
/// new segment's header and restated records must describe.
#[derive(Clone, Debug)]
struct Checkpoint {
    last_index: Index,
    last_term: Term,
    hard_state: HardState,
    snapshot: SnapshotMeta,
}

impl Checkpoint {
    fn of(log: &MemLogStore) -> Self {
        Checkpoint {
            last_index: log.last_index(),
            last_term: log.last_term(),
            hard_state: log.hard_state(),
            snapshot: log.snapshot_meta(),
        }
    }
}

/// The segment files of one WAL directory and the bytes waiting to be written.
///
/// `Wal` knows framing, segments and durability; what the records mean is
/// [`MemLogStore`]'s business. [`WalLogStore`] pairs the two.
pub struct Wal {
    dir: PathBuf,
    fs: Arc<dyn WalFs>,
    config: WalConfig,
    segments: Vec<SegmentInfo>,
    /// The last segment, open for appending.
    file: Box<dyn WalFile>,
    /// Bytes of the last segment that were written successfully.
    file_len: u64,
    /// Length of the last segment before its first appended record (header and
    /// restated state): a segment this short is never rotated away.
    segment_base_len: u64,
    /// True when bytes were written since the last successful fdatasync.
    unsynced: bool,
    pending: Vec<u8>,
    pending_start: Option<Checkpoint>,
    fatal: Option<Arc<Error>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("file_len", &self.file_len)
            .field("pending_bytes", &self.pending.len())
            .field("fatal", &self.fatal)
            .finish()
    }
}

impl Wal {
    /// Opens (or creates) the WAL in `dir` and replays it into a [`MemLogStore`]. See
    /// the module documentation for what recovery accepts, repairs and refuses.
    pub fn open(dir: &Path, config: WalConfig, fs: Arc<dyn WalFs>) -> Result<(Wal, MemLogStore)> {
        config.validate()?;
        create_dir_durable(fs.as_ref(), dir).map_err(|e| Error::io("create directory", dir, e))?;
        let mut segments = list_segments(fs.as_ref(), dir)?;
        let tail = config.retain_tail_entries;
        if segments.is_empty() {
            let log = MemLogStore::new(tail);
            let wal = Wal::create(dir, config, fs, Vec::new(), &Checkpoint::of(&log))?;
            return Ok((wal, log));
        }

        // Phase 1: read everything and change nothing, so that a refused open leaves
        // the directory exactly as it found it.
        let mut log: Option<MemLogStore> = None;
        let mut lens = Vec::with_capacity(segments.len());
        let mut torn: Option<(u64, String)> = None;
        let mut torn_header = false;
        let count = segments.len();
        // Sizes for one reservation of the entry queue after the first segment.
        let mut total_bytes = 0u64;
        for segment in &segments {
            total_bytes += fs
                .file_len(&segment.path)
                .map_err(|e| Error::io("stat", &segment.path, e))?;
        }
        let mut scanned_bytes = 0u64;
        let mut reserved = false;
        for (i, segment) in segments.iter().enumerate() {
            let is_last = i + 1 == count;
            let corrupt = |offset: u64, reason: String| Error::Corrupt {
                path: segment.path.clone(),
                offset,
                reason,
            };
            if i > 0 && segment.seq != segments[i - 1].seq + 1 {
                return Err(corrupt(
                    0,
                    format!(
                        "segment {} follows segment {}: a segment is missing",
                        segment.seq,
                        segments[i - 1].seq
                    ),
                ));
            }
            let (header, end) = scan_segment(fs.as_ref(), &segment.path, &mut |item| match item {
                ScanItem::Header(header) => {
                    check_identity(&config, &segment.path, &header).map_err(VisitError::Refuse)?;
                    if header.seq != segment.seq || header.first_index != segment.first_index {
                        return Err(VisitError::Corrupt(format!(
                            "header says segment {} starting at index {}, the file name says segment {} at index {}",
                            header.seq, header.first_index, segment.seq, segment.first_index
                        )));
                    }
                    if header.first_index == 0 {
                        return Err(VisitError::Corrupt("segment starts at index 0".into()));
                    }
                    match &log {
                        None => {
                            log = Some(MemLogStore::with_base(
                                tail,
                                header.first_index - 1,
                                header.prev_term,
                            ))
                        }
                        Some(log) => {
                            if header.first_index != log.last_index() + 1
                                || header.prev_term != log.last_term()
                            {
                                return Err(VisitError::Corrupt(format!(
                                    "segment continues the log after index {} (term {}), but the log before it ends at index {} (term {})",
                                    header.first_index - 1,
                                    header.prev_term,
                                    log.last_index(),
                                    log.last_term()
                                )));
                            }
                        }
                    }
                    Ok(())
                }
                ScanItem::Record { record, .. } => log
                    .as_mut()
                    .expect("the header comes first")
                    .apply_record_owned(record)
                    .map_err(VisitError::Corrupt),
            })?;
            match end {
                ScanEnd::Clean { len } => {
                    lens.push(len);
                    scanned_bytes += len;
                    if let Some(log) = log.as_mut().filter(|log| !reserved && !log.is_empty()) {
                        // Later segments hold about as many entries per byte.
                        let expected = log.len() as u128 * total_bytes as u128 / scanned_bytes.max(1) as u128;
                        log.reserve_entries((expected as usize).saturating_sub(log.len()));
                        reserved = true;
                    }
                }
                ScanEnd::Corrupt { offset, reason } => return Err(corrupt(offset, reason)),
                ScanEnd::Incomplete { offset, reason } => {
                    if !is_last {
                        return Err(corrupt(
                            offset,
                            format!("{reason}, in a segment that is not the last one"),
                        ));
                    }
                    if header.is_none() {
                        if i == 0 && segment.seq != 1 {
                            return Err(corrupt(
                                offset,
                                format!("{reason}, and it is the only segment left"),
                            ));
                        }
                        torn_header = true;
                    } else {
                        lens.push(offset);
                        torn = Some((offset, reason));
                    }
                }
            }
        }

        // Segments are only removed once a snapshot covers all of their entries, so a
        // log that starts later than its snapshot lost its first segments.
        if let Some(log) = &log {
            let first = &segments[0];
            let base = first.first_index - 1;
            if log.snapshot_meta().index < base {
                return Err(Error::Corrupt {
                    path: first.path.clone(),
                    offset: 0,
                    reason: format!(
                        "the oldest segment continues the log after index {base}, but the newest snapshot in the WAL is at index {}: the segments before it are missing",
                        log.snapshot_meta().index
                    ),
                });
            }
        }
        // A torn write leaves a prefix of its bytes. A valid record after the cut
        // means the bytes at the cut are damage in the middle of the log (e.g. a
        // corrupted length field), and cutting there would drop acknowledged entries.
        if let Some((offset, reason)) = &torn {
            let last = segments.last().expect("at least one segment");
            if let Some(found) = find_record_after(fs.as_ref(), &last.path, *offset)? {
                return Err(Error::Corrupt {
                    path: last.path.clone(),
                    offset: *offset,
                    reason: format!(
                        "{reason}, but a valid record follows at byte offset {found}: this is damage inside the log, not a torn tail"
                    ),
                });
            }
        }

        // Phase 2: the only repairs recovery makes on its own.
        if torn_header {
            let segment = segments.pop().expect("at least one segment");
            tracing::warn!(
                path = %segment.path.display(),
                "removing a segment whose header was torn by a crash while it was created"
            );
            fs.remove_file(&segment.path)
                .map_err(|e| Error::io("remove torn segment", &segment.path, e))?;
            fs.sync_dir(dir)
                .map_err(|e| Error::io("fsync directory", dir, e))?;
            if segments.is_empty() {
                let log = MemLogStore::new(tail);
                let wal = Wal::create(dir, config, fs, Vec::new(), &Checkpoint::of(&log))?;
                return Ok((wal, log));
            }
        }
        let log = log.expect("a segment with a valid header was read");
        let last = segments.last().expect("at least one segment").clone();
        let last_len = *lens.last().expect("one length per segment");
        let mut file = fs
            .open_append(&last.path)
            .map_err(|e| Error::io("open for append", &last.path, e))?;
        if let Some((offset, reason)) = torn {
            tracing::warn!(
                path = %last.path.display(),
                offset,
                %reason,
                "cutting off the torn tail of the WAL (a write that a crash interrupted)"
            );
            file.truncate(offset)
                .map_err(|e| Error::io("cut torn tail of", &last.path, e))?;
        }
        // The previous process may have died with the end of the log only in the page
        // cache (its fdatasync never ran or never returned), and a new segment's
        // directory entry may not be durable yet. From now on what was loaded counts as
        // durable (a follower reports it as its log, a vote read back is binding), so
        // make it so before anyone relies on it. Older segments were fsynced before the
        // segment after them was created.
        file.sync_data()
            .map_err(|e| Error::io("fdatasync", &last.path, e))?;
        fs.sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            fs,
            config,
            segments,
            file,
            file_len: last_len,
            segment_base_len: SEGMENT_HEADER_BYTES as u64,
            unsynced: false,
            pending: Vec::new(),
            pending_start: None,
            fatal: None,
        };
        Ok((wal, log))
    }

    /// Starts a WAL with a first segment describing `checkpoint`.
    fn create(
        dir: &Path,
        config: WalConfig,
        fs: Arc<dyn WalFs>,
        segments: Vec<SegmentInfo>,
        checkpoint: &Checkpoint,
    ) -> Result<Wal> {
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            file: Box::new(NoFile),
            fs,
            config,
            segments,
            file_len: 0,
            segment_base_len: 0,
            unsynced: false,
            pending: Vec::new(),
            pending_start: None,
            fatal: None,
        };
        wal.start_segment(checkpoint)?;
        Ok(wal)
    }

    /// Creates the next segment: header and restated state, fsynced with its
    /// directory entry before any record goes into it.
    fn start_segment(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let first_index = checkpoint.last_index + 1;
        let path = self.dir.join(segment_file_name(seq, first_index));
        let header = SegmentHeader {
            cluster_id: self.config.cluster_id,
            node_id: self.config.node_id,
            seq,
            first_index,
            prev_term: checkpoint.last_term,
        };
        let mut buf = header.encode().to_vec();
        if checkpoint.hard_state != HardState::default() {
            Record::HardState(checkpoint.hard_state)
                .encode_framed(&mut buf)
                .expect("small record");
        }
        if checkpoint.snapshot != SnapshotMeta::default() {
            Record::SegmentSnapshot(checkpoint.snapshot.clone())
                .encode_framed(&mut buf)
                .map_err(|e| Error::TooLarge {
                    what: "snapshot metadata",
                    len: e.0.len() as u64,
                    max: RECORD_BODY_BYTES_MAX as u64,
                })?;
        }
        let mut file = self
            .fs
            .create_new(&path)
            .map_err(|e| Error::io("create segment", &path, e))?;
        if let Err(source) = file.write_all(&buf) {
            drop(file);
            if let Err(e) = self.fs.remove_file(&path) {
                let err = Error::io("remove half-created segment", &path, e);
                return Err(self.make_fatal(err));
            }
            return Err(Error::io("write segment header", &path, source));
        }
        if let Err(source) = file.sync_data().and_then(|_| self.fs.sync_dir(&self.dir)) {
            let err = Error::io("fsync new segment", &path, source);
            return Err(self.make_fatal(err));
        }
        self.segments.push(SegmentInfo {
            seq,
            first_index,
            path,
        });
        self.file = file;
        self.file_len = buf.len() as u64;
        self.segment_base_len = self.file_len;
        self.unsynced = false;
        Ok(())
    }

    fn make_fatal(&mut self, err: Error) -> Error {
        let err = Arc::new(err);
        tracing::error!(error = %err, "the WAL stops accepting writes");
        self.fatal = Some(err.clone());
        Error::Fatal(err)
    }

    fn check_fatal(&self) -> Result<()> {
        match &self.fatal {
            Some(err) => Err(Error::Fatal(err.clone())),
            None => Ok(()),
        }
    }

    /// Queues the framed `records`; `before` is the log as it was before them.
    /// Writes the queue first when it is full (so an error here means nothing of
    /// `records` was queued).
    pub fn push(&mut self, records: &[Record], before: &MemLogStore) -> Result<()> {
        self.check_fatal()?;
        if records.is_empty() {
            return Ok(());
        }
        if self.pending.len() >= self.config.pending_bytes_max {
            self.write_pending()?;
        }
        if self.pending_start.is_none() {
            self.pending_start = Some(Checkpoint::of(before));
        }
        let start = self.pending.len();
        for record in records {
            if let Err(err) = record.encode_framed(&mut self.pending) {
                self.pending.truncate(start);
                if start == 0 {
                    self.pending_start = None;
                }
                return Err(Error::TooLarge {
                    what: "record",
                    len: err.0.len() as u64,
                    max: RECORD_BODY_BYTES_MAX as u64,
                });
            }
        }
        Ok(())
    }

    /// Writes the queued records (starting a new segment first when the current one
    /// is full), without fsync. On a write error (e.g. ENOSPC) the partial write is
    /// cut off again and the records stay queued, so a later call can retry them.
    pub fn write_pending(&mut self) -> Result<()> {
        self.check_fatal()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let len = self.pending.len() as u64;
        if self.file_len + len > self.config.segment_bytes_max && self.file_len > self.segment_base_len {
            let checkpoint = self.pending_start.clone().expect("pending records have a start");
            // The records written so far must be durable before the next segment
            // exists, or a crash could leave a later segment after a hole.
            self.sync_file()?;
            self.start_segment(&checkpoint)?;
        }
        // What a power loss right now would keep (crash point `wal-power-loss`): what
        // the file saw fsynced, or else what this WAL last synced.
        let synced_len = self
            .file
            .durable_len()
            .or((!self.unsynced).then_some(self.file_len));
        match self
            .file
            .write_all(&self.pending)
            .and_then(|()| after_write_point())
        {
            Ok(()) => {
                if let Some(synced_len) = synced_len {
                    power_loss_point(&mut *self.file, synced_len);
                }
                self.file_len += len;
                self.pending.clear();
                self.pending_start = None;
                self.unsynced = true;
                Ok(())
            }
            Err(source) => {
                let path = self.current_path().to_path_buf();
                if let Err(e) = self.file.truncate(self.file_len) {
                    let err = Error::io("cut a failed write from", &path, e);
                    return Err(self.make_fatal(err));
                }
                Err(Error::io("write", path, source))
            }
        }
    }

    fn sync_file(&mut self) -> Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        if let Err(e) = before_fsync_point()
            .and_then(|()| self.file.sync_data())
            .and_then(|()| after_fsync_point())
        {
            let err = Error::io("fdatasync", self.current_path().to_path_buf(), e);
            return Err(self.make_fatal(err));
        }
        self.unsynced = false;
        Ok(())
    }

    /// Writes what is queued and makes it durable with one fdatasync. After a failed
    /// fdatasync the WAL is stopped for good ([`Error::Fatal`]).
    pub fn sync(&mut self) -> Result<()> {
        self.write_pending()?;
        self.sync_file()
    }

    /// Removes whole segments all of whose entries are at or below `index`, oldest
    /// first. Call only once the records that compacted the log are durable.
    pub fn remove_segments_through(&mut self, index: Index) -> Result<usize> {
        self.check_fatal()?;
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_index - 1 <= index {
            let path = self.segments[0].path.clone();
            self.fs
                .remove_file(&path)
                .map_err(|e| Error::io("remove segment", &path, e))?;
            self.segments.remove(0);
            // One directory fsync per removal keeps the retained segments a suffix
            // even if the machine crashes halfway.
            self.fs
                .sync_dir(&self.dir)
                .map_err(|e| Error::io("fsync directory", &self.dir, e))?;
            removed += 1;
        }
        Ok(removed)
    }

    fn current_path(&self) -> &Path {
        &self.segments.last().expect("a WAL has a segment").path
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn segments(&self) -> &[SegmentInfo] {
        &self.segments
    }

    /// Bytes queued but not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// The error that stopped the WAL, if one did.
    pub fn fatal_error(&self) -> Option<Arc<Error>> {
        self.fatal.clone()
    }

    pub fn config(&self) -> &WalConfig {
        &self.config
    }
}

/// The offset of the first valid record frame that starts after `offset` in `path`,
/// if any. Used only when a scan ended early, so reading the rest of one segment
/// into memory is acceptable.
/// Crash point after the records are written, before anything is acknowledged. An
/// `error` is handled like a failed write (cut off again, records kept queued).
fn after_write_point() -> io::Result<()> {
    crate::fail_point!("wal-after-write", Err);
    Ok(())
}

/// Crash point simulating a power loss after a write: armed with `abort`, it cuts the
/// segment back to what was durable (the page cache a power loss would lose: the real
/// file tracks its length at the last fdatasync that returned), then aborts the
/// process. A process crash alone keeps unsynced writes in the page cache, so without
/// this point a reply sent before its fsync would go unnoticed.
#[cfg(feature = "failpoints")]
fn power_loss_point(file: &mut dyn WalFile, synced_len: u64) {
    if crate::failpoint::eval("wal-power-loss") == Some(crate::failpoint::Action::Abort) {
        let _ = file.truncate(synced_len);
        let _ = file.sync_data();
        eprintln!("failpoint wal-power-loss: the unsynced tail after byte {synced_len} is dropped; aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
fn power_loss_point(_file: &mut dyn WalFile, _synced_len: u64) {}

/// Crash point before the segment's fdatasync; an `error` is a failed fdatasync.
fn before_fsync_point() -> io::Result<()> {
    crate::fail_point!("wal-before-fsync", Err);
    Ok(())
}

/// Crash point after the segment's fdatasync returned; an `error` is handled like a
/// failed fdatasync.
fn after_fsync_point() -> io::Result<()> {
    crate::fail_point!("wal-after-fsync", Err);
    Ok(())
}

fn find_record_after(fs: &dyn WalFs, path: &Path, offset: u64) -> Result<Option<u64>> {
    let mut bytes = Vec::new();
    fs.open_read(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(|e| Error::io("read", path, e))?;
    let start = (offset as usize + 1).min(bytes.len());
    for at in start..bytes.len().saturating_sub(FRAME_HEADER_BYTES) {
        let frame_bytes: &[u8; FRAME_HEADER_BYTES] = bytes[at..at + FRAME_HEADER_BYTES]
            .try_into()
            .expect("frame header length");
        let frame = FrameHeader::parse(frame_bytes);
        let body_start = at + FRAME_HEADER_BYTES;
        if frame.body_len == 0
            || frame.body_len > RECORD_BODY_BYTES_MAX
            || frame.body_len > bytes.len() - body_start
            || !Record::is_known_type(frame.record_type)
        {
            continue;
        }
        let body = &bytes[body_start..body_start + frame.body_len];
        if frame.computed_crc(frame_bytes, body) == frame.crc {
            return Ok(Some(at as u64));
        }
    }
    Ok(None)
}

fn check_identity(config: &WalConfig, path: &Path, header: &SegmentHeader) -> Result<()> {
    if header.cluster_id != config.cluster_id {
        return Err(Error::ClusterIdMismatch {
            path: path.to_path_buf(),
            expected: config.cluster_id,
            found: header.cluster_id,
        });
    }
    if header.node_id != config.node_id {
        return Err(Error::NodeIdMismatch {
            path: path.to_path_buf(),
            expected: config.node_id,
            found: header.node_id,
        });
    }
    Ok(())
}

/// Placeholder before the first segment exists; never written to.
struct NoFile;

impl WalFile for NoFile {
    fn write_all(&mut self, _buf: &[u8]) -> io::Result<()> {
        Err(io::Error::other("no segment open"))
    }
    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn truncate(&mut self, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// The durable [`LogStore`]: a [`MemLogStore`] for reads plus a [`Wal`] that records
/// every accepted request.
#[derive(Debug)]
pub struct WalLogStore {
    log: MemLogStore,
    wal: Wal,
}

impl WalLogStore {
    pub fn open(dir: &Path, config: WalConfig) -> Result<Self> {
        Self::open_with_fs(dir, config, Arc::new(StdFs))
    }

    pub fn open_with_fs(dir: &Path, config: WalConfig, fs: Arc<dyn WalFs>) -> Result<Self> {
        let (wal, log) = Wal::open(dir, config, fs)?;
        Ok(WalLogStore { log, wal })
    }

    pub fn log(&self) -> &MemLogStore {
        &self.log
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    pub fn into_parts(self) -> (MemLogStore, Wal) {
        (self.log, self.wal)
    }

    /// The entries from the first held index on (for tests and tools).
    pub fn all_entries(&self) -> Vec<Entry> {
        self.log
            .entries(self.log.first_index(), self.log.last_index() + 1, u64::MAX)
            .expect("the held range is readable")
    }
}

impl LogStore for WalLogStore {
    fn persist(&mut self, request: PersistRequest) -> Result<()> {
        let records = self.log.plan(&request)?;
        self.wal.push(&records, &self.log)?;
        for record in &records {
            if let Err(reason) = self.log.apply_record(record) {
                panic!("a planned record must apply: {reason} ({record:?})");
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.wal.sync()?;
        self.wal.remove_segments_through(self.log.base_index())?;
        Ok(())
    }

    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>> {
        self.log.entries(low, high, max_bytes)
    }

    fn term(&self, index: Index) -> Result<Term> {
        self.log.term(index)
    }

    fn first_index(&self) -> Index {
        self.log.first_index()
    }

    fn last_index(&self) -> Index {
        self.log.last_index()
    }

    fn last_term(&self) -> Term {
        self.log.last_term()
    }

    fn hard_state(&self) -> HardState {
        self.log.hard_state()
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.log.snapshot_meta()
    }

    fn membership(&self) -> Membership {
        self.log.membership()
    }
}
