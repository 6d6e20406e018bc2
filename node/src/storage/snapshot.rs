//! The snapshot store.
//!
//! A snapshot file is written as `snap-{index:016x}-{term:016x}.snap.tmp`, fsynced,
//! renamed to its final name and the directory fsynced, so a final name always holds
//! a complete file; a `.tmp` left by a crash is ignored and removed at start-up. The
//! data is streamed through [`SnapshotWriter`] and [`SnapshotReader`], never held in one
//! buffer. Layout:
//!
//! ```text
//! header:  magic "KRSNAP01" | version u32 | cluster_id u64 | meta_len u32 | meta | crc32c u32
//! data:    the state machine's bytes
//! trailer: data_len u64 | data crc32c u32 | magic "KRSNAPND"
//! ```
//!
//! A node makes its own snapshots as markers: the data is only [`MARKER`], which says
//! "the state at this index is in the state store" (the engine was fsynced at or after
//! it before the marker was written, so the log below it may go). No copy of the whole
//! state is written in steady state. When a follower is too far behind and a marker is
//! what it needs, [`SnapshotStore::for_sending`] has the registered
//! [`Materializer`] stream the state from a consistent read view into a full snapshot
//! file under the same name, once; received snapshots and restores are full files.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::BufMut;

use crate::raft::types::{Index, SnapshotMeta, Term};
use crate::storage::codec::{decode_snapshot_meta, encode_snapshot_meta, Reader};
use crate::storage::fs::{create_dir_durable, sync_dir, StdFs};
use crate::storage::{Error, Result};

const MAGIC: [u8; 8] = *b"KRSNAP01";
const TRAILER_MAGIC: [u8; 8] = *b"KRSNAPND";
const VERSION: u32 = 1;
const TRAILER_BYTES: u64 = 20;
/// Metadata is a few ids; anything larger read from disk is corruption.
const META_BYTES_MAX: usize = 1 << 20;
const IO_BUFFER_BYTES: usize = 1 << 20;

fn file_name(index: Index, term: Term) -> String {
    format!("snap-{index:016x}-{term:016x}.snap")
}

fn parse_name(path: &Path) -> Option<(Index, Term)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let (index, term) = stem.split_once('-')?;
    Some((
        u64::from_str_radix(index, 16).ok()?,
        u64::from_str_radix(term, 16).ok()?,
    ))
}

/// A complete, verified snapshot file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub meta: SnapshotMeta,
    pub cluster_id: u64,
    pub data_bytes: u64,
    /// Bytes before the data (header and metadata).
    data_offset: u64,
}

/// The data of a marker snapshot: the state is in the state store.
pub const MARKER: &[u8] = b"KRSTATE1";

/// Writes the full state for a snapshot whose file is a marker (the runtime registers
/// one that streams its published store).
pub type Materializer = Arc<dyn Fn(&SnapshotMeta, &mut dyn Write) -> io::Result<()> + Send + Sync>;

/// The snapshot directory of one node.
#[derive(Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    cluster_id: u64,
    keep: usize,
    /// Serialises materialisation (two peers may need the same snapshot at once).
    materializer: Arc<Mutex<Option<Materializer>>>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("dir", &self.dir)
            .field("cluster_id", &self.cluster_id)
            .field("keep", &self.keep)
            .finish()
    }
}

impl SnapshotStore {
    /// Opens `dir` (creating it), removing temporary files a crash left behind.
    /// `keep` is how many complete snapshots survive each new one (at least 1).
    pub fn open(dir: &Path, cluster_id: u64, keep: usize) -> Result<SnapshotStore> {
        if keep == 0 {
            return Err(Error::Config(
                "the snapshot store must keep at least one snapshot".into(),
            ));
        }
        create_dir_durable(&StdFs, dir).map_err(|e| Error::io("create directory", dir, e))?;
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
            let path = entry.map_err(|e| Error::io("list", dir, e))?.path();
            if path.extension().is_some_and(|ext| ext == "tmp") {
                tracing::warn!(path = %path.display(), "removing a half-written snapshot");
                std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
            }
        }
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
            cluster_id,
            keep,
            materializer: Arc::new(Mutex::new(None)),
        })
    }

    /// Registers what turns a marker into a full snapshot file.
    pub fn set_materializer(&self, materializer: Materializer) {
        *self.materializer.lock().unwrap_or_else(|e| e.into_inner()) = Some(materializer);
    }

    /// Writes a marker snapshot for `meta` (the caller made the state store durable at
    /// or after `meta.index`).
    pub fn create_marker(&self, meta: &SnapshotMeta) -> Result<SnapshotInfo> {
        let mut writer = self.create(meta)?;
        writer
            .write_all(MARKER)
            .map_err(|e| Error::io("write", &writer.temp_path, e))?;
        writer.finish()
    }

    /// Whether `info` is a marker rather than a full snapshot.
    pub fn is_marker(&self, info: &SnapshotInfo) -> Result<bool> {
        if info.data_bytes != MARKER.len() as u64 {
            return Ok(false);
        }
        let mut data = Vec::new();
        self.open_reader(info)?
            .read_to_end(&mut data)
            .map_err(|e| Error::io("read", &info.path, e))?;
        Ok(data == MARKER)
    }

    /// The snapshot `meta` as a full file to send to a peer: the held file itself, or,
    /// if it is a marker, a full file streamed from the state store first. `None`: no
    /// longer held (a newer snapshot replaced it).
    pub fn for_sending(&self, meta: &SnapshotMeta) -> Result<Option<SnapshotInfo>> {
        let materializer = self.materializer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(info) = self.latest()?.filter(|i| &i.meta == meta) else {
            return Ok(None);
        };
        if !self.is_marker(&info)? {
            return Ok(Some(info));
        }
        let Some(materialize) = materializer.as_ref() else {
            return Err(Error::Config(format!(
                "snapshot {} is a marker and nothing can materialise it",
                meta.index
            )));
        };
        let started = std::time::Instant::now();
        let mut writer = self.create(meta)?;
        materialize(meta, &mut writer).map_err(|e| Error::io("write snapshot", &self.dir, e))?;
        crate::fail_point!("snapshot-materialise");
        let info = writer.finish()?;
        tracing::info!(
            index = meta.index,
            bytes = info.data_bytes,
            ms = started.elapsed().as_millis() as u64,
            "snapshot materialised from the state store to catch a follower up"
        );
        Ok(Some(info))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Complete snapshot files, newest (highest index, then term) first.
    pub fn list(&self) -> Result<Vec<PathBuf>> {
        let mut files: Vec<(Index, Term, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| Error::io("list", &self.dir, e))? {
            let path = entry.map_err(|e| Error::io("list", &self.dir, e))?.path();
            if let Some((index, term)) = parse_name(&path) {
                files.push((index, term, path));
            }
        }
        files.sort_by_key(|f| std::cmp::Reverse((f.0, f.1)));
        Ok(files.into_iter().map(|(_, _, path)| path).collect())
    }

    /// Starts a snapshot; the data goes through the returned writer.
    pub fn create(&self, meta: &SnapshotMeta) -> Result<SnapshotWriter> {
        let final_path = self.dir.join(file_name(meta.index, meta.term));
        let temp_path = final_path.with_extension("snap.tmp");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp_path)
            .map_err(|e| Error::io("create", &temp_path, e))?;
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC);
        header.put_u32_le(VERSION);
        header.put_u64_le(self.cluster_id);
        let mut meta_bytes = Vec::new();
        encode_snapshot_meta(meta, &mut meta_bytes);
        header.put_u32_le(meta_bytes.len() as u32);
        header.extend_from_slice(&meta_bytes);
        let crc = crc32c::crc32c(&header);
        header.put_u32_le(crc);
        let mut out = BufWriter::with_capacity(IO_BUFFER_BYTES, file);
        out.write_all(&header)
            .map_err(|e| Error::io("write", &temp_path, e))?;
        Ok(SnapshotWriter {
            out: Some(out),
            temp_path,
            final_path,
            store: self.clone(),
            meta: meta.clone(),
            data_offset: header.len() as u64,
            data_bytes: 0,
            crc: 0,
        })
    }

    /// Reads and checks a whole snapshot file (header, metadata, data checksum).
    pub fn verify(&self, path: &Path) -> Result<SnapshotInfo> {
        let mut reader = self.open_path(path)?;
        let data_offset = reader.info.data_offset;
        io::copy(&mut reader, &mut io::sink()).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => Error::Corrupt {
                path: path.to_path_buf(),
                offset: data_offset,
                reason: e.to_string(),
            },
            _ => Error::io("read", path, e),
        })?;
        Ok(reader.info)
    }

    /// The newest snapshot that verifies. Damaged ones are reported and skipped (the
    /// WAL check in [`crate::storage::recover`] refuses to start if that loses
    /// data); another cluster's snapshot is refused outright.
    pub fn latest(&self) -> Result<Option<SnapshotInfo>> {
        for path in self.list()? {
            match self.verify(&path) {
                Ok(info) => return Ok(Some(info)),
                Err(err @ Error::ClusterIdMismatch { .. }) => return Err(err),
                Err(err) => {
                    tracing::error!(error = %err, "skipping a damaged snapshot");
                }
            }
        }
        Ok(None)
    }

    /// Streams the data of a snapshot; the checksum is checked when the end is read.
    pub fn open_reader(&self, info: &SnapshotInfo) -> Result<SnapshotReader> {
        self.open_path(&info.path)
    }

    fn open_path(&self, path: &Path) -> Result<SnapshotReader> {
        let corrupt = |offset: u64, reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
        let mut input = BufReader::with_capacity(IO_BUFFER_BYTES, file);
        let mut fixed = [0u8; 24];
        input
            .read_exact(&mut fixed)
            .map_err(|_| corrupt(0, "file shorter than a snapshot header".into()))?;
        if fixed[..8] != MAGIC {
            return Err(corrupt(0, "not a snapshot file (bad magic)".into()));
        }
        let mut r = Reader::new(&fixed[8..]);
        let version = r.u32().expect("fixed size");
        let cluster_id = r.u64().expect("fixed size");
        let meta_len = r.u32().expect("fixed size") as usize;
        if meta_len > META_BYTES_MAX || (24 + meta_len) as u64 + 4 + TRAILER_BYTES > file_len {
            return Err(corrupt(20, format!("metadata length {meta_len} does not fit")));
        }
        let mut meta_bytes = vec![0u8; meta_len + 4];
        input
            .read_exact(&mut meta_bytes)
            .map_err(|e| Error::io("read", path, e))?;
        let stored_crc = u32::from_le_bytes(meta_bytes[meta_len..].try_into().expect("4 bytes"));
        let crc = crc32c::crc32c_append(crc32c::crc32c(&fixed), &meta_bytes[..meta_len]);
        if crc != stored_crc {
            return Err(corrupt(0, "snapshot header checksum mismatch".into()));
        }
        if version != VERSION {
            return Err(corrupt(8, format!("unsupported snapshot version {version}")));
        }
        if cluster_id != self.cluster_id {
            return Err(Error::ClusterIdMismatch {
                path: path.to_path_buf(),
                expected: self.cluster_id,
                found: cluster_id,
            });
        }
        let mut mr = Reader::new(&meta_bytes[..meta_len]);
        let meta = decode_snapshot_meta(&mut mr)
            .and_then(|meta| mr.finish().map(|()| meta))
            .map_err(|e| corrupt(24, e.0))?;
        let data_offset = (24 + meta_len + 4) as u64;
        let data_bytes = file_len - data_offset - TRAILER_BYTES;
        Ok(SnapshotReader {
            input,
            remaining: data_bytes,
            crc: 0,
            trailer_checked: false,
            info: SnapshotInfo {
                path: path.to_path_buf(),
                meta,
                cluster_id,
                data_bytes,
                data_offset,
            },
        })
    }

    /// Removes all but the newest `keep` snapshots.
    fn prune(&self) -> Result<()> {
        for path in self.list()?.into_iter().skip(self.keep) {
            std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
        }
        sync_dir(&self.dir).map_err(|e| Error::io("fsync directory", &self.dir, e))
    }
}

/// Streams a new snapshot to a temporary file; [`SnapshotWriter::finish`] makes it
/// durable and visible. Dropped unfinished, it removes the temporary file.
pub struct SnapshotWriter {
    out: Option<BufWriter<File>>,
    temp_path: PathBuf,
    final_path: PathBuf,
    store: SnapshotStore,
    meta: SnapshotMeta,
    data_offset: u64,
    data_bytes: u64,
    crc: u32,
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let out = self.out.as_mut().expect("not finished");
        let n = out.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.data_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.as_mut().expect("not finished").flush()
    }
}

impl SnapshotWriter {
    /// Writes the trailer, fsyncs, renames into place, fsyncs the directory and
    /// prunes old snapshots. Only after this returns may the WAL record the snapshot.
    pub fn finish(mut self) -> Result<SnapshotInfo> {
        let mut out = self.out.take().expect("finish runs once");
        let temp = self.temp_path.clone();
        let mut trailer = Vec::with_capacity(TRAILER_BYTES as usize);
        trailer.put_u64_le(self.data_bytes);
        trailer.put_u32_le(self.crc);
        trailer.extend_from_slice(&TRAILER_MAGIC);
        out.write_all(&trailer)
            .and_then(|_| out.flush())
            .map_err(|e| Error::io("write", &temp, e))?;
        let file = out
            .into_inner()
            .map_err(|e| Error::io("write", &temp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io("fsync", &temp, e))?;
        drop(file);
        std::fs::rename(&temp, &self.final_path).map_err(|e| Error::io("rename", &temp, e))?;
        sync_dir(&self.store.dir).map_err(|e| Error::io("fsync directory", &self.store.dir, e))?;
        self.store.prune()?;
        Ok(SnapshotInfo {
            path: self.final_path.clone(),
            meta: self.meta.clone(),
            cluster_id: self.store.cluster_id,
            data_bytes: self.data_bytes,
            data_offset: self.data_offset,
        })
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

/// Streams a snapshot's data. Reading past the data checks the trailer and the
/// checksum and fails with `InvalidData` when either is wrong, so a consumer that
/// reads to the end never applies a damaged snapshot without being told.
pub struct SnapshotReader {
    input: BufReader<File>,
    remaining: u64,
    crc: u32,
    trailer_checked: bool,
    info: SnapshotInfo,
}

impl SnapshotReader {
    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    fn check_trailer(&mut self) -> io::Result<()> {
        let mut trailer = [0u8; TRAILER_BYTES as usize];
        self.input.read_exact(&mut trailer)?;
        let data_len = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(trailer[8..12].try_into().expect("4 bytes"));
        let bad = |reason: String| io::Error::new(io::ErrorKind::InvalidData, reason);
        if trailer[12..] != TRAILER_MAGIC {
            return Err(bad("snapshot trailer missing (bad magic)".into()));
        }
        if data_len != self.info.data_bytes {
            return Err(bad(format!(
                "snapshot trailer says {data_len} data bytes, the file holds {}",
                self.info.data_bytes
            )));
        }
        if crc != self.crc {
            return Err(bad(format!(
                "snapshot data checksum mismatch (stored {crc:#010x}, computed {:#010x})",
                self.crc
            )));
        }
        Ok(())
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            if !buf.is_empty() && !self.trailer_checked {
                self.check_trailer()?;
                self.trailer_checked = true;
            }
            return Ok(0);
        }
        let want = buf.len().min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.input.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "snapshot file ends inside its data",
            ));
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}
