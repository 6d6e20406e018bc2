//! The file layer under the WAL.
//!
//! The WAL does every read, write, sync and directory change through [`WalFs`], so the
//! tests can put [`FaultFs`] underneath and make the disk fail (EIO, ENOSPC) or the
//! process "crash" at any byte offset, then reopen the directory and check what a real
//! crash would have left.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Directory and file operations the WAL needs, nothing more.
pub trait WalFs: Send + Sync + fmt::Debug + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Paths of the regular files directly in `dir`.
    fn list_files(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>>;
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Creates a new, empty file for appending; fails when it exists.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    /// Opens an existing file for appending at its end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// A file opened for appending.
pub trait WalFile: Send {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// `fdatasync`: the data written so far (and the size) is on stable storage.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes; later writes continue at the new end.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// How much of the file a power loss would keep: its length at the last
    /// `sync_data` that returned (tracked where the system call is made, so the crash
    /// point `wal-power-loss` drops exactly what was never fsynced). `None` when the
    /// file does not track it.
    fn durable_len(&self) -> Option<u64> {
        None
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

struct StdFile {
    file: File,
    /// Bytes written (the file is append-only).
    len: u64,
    /// `len` at the last `sync_data` that returned.
    durable: u64,
}

impl StdFile {
    fn new(file: File) -> io::Result<StdFile> {
        // What a file holds when opened is taken as durable: the WAL fsyncs the
        // segment it reopens before relying on it.
        let len = file.metadata()?.len();
        Ok(StdFile {
            file,
            len,
            durable: len,
        })
    }
}

impl WalFile for StdFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let written = self.file.write_all(buf);
        // Even a failed write may have reached the page cache: take the length back
        // from the file.
        self.len = match written {
            Ok(()) => self.len + buf.len() as u64,
            Err(_) => self.file.metadata().map_or(self.len, |m| m.len()),
        };
        written
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.durable = self.len;
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        // The file is opened with O_APPEND, so the next write lands at `len`.
        self.file.set_len(len)?;
        self.len = len;
        self.durable = self.durable.min(len);
        Ok(())
    }

    fn durable_len(&self) -> Option<u64> {
        Some(self.durable)
    }
}

impl WalFs for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                files.push(entry.path());
            }
        }
        Ok(files)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(File::open(path)?))
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let file = OpenOptions::new().append(true).create_new(true).open(path)?;
        Ok(Box::new(StdFile::new(file)?))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Box::new(StdFile::new(file)?))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// Fsyncs a directory on the real file system (used by the snapshot store).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents, and fsyncs the parent of every directory it
/// created. Without that a crash could forget a new directory together with every
/// file in it, although each file and the directory's own entries were fsynced: a
/// node would come back with an empty WAL after it had acknowledged writes.
pub(crate) fn create_dir_durable(fs: &dyn WalFs, dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(path) = current {
        if path.as_os_str().is_empty() || path.is_dir() {
            break;
        }
        missing.push(path);
        current = path.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs.create_dir_all(dir)?;
    // Deepest first: each directory's entry is made durable in its parent.
    for created in missing {
        let parent = match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        fs.sync_dir(parent)?;
    }
    Ok(())
}

#[derive(Debug, Default)]
struct FaultState {
    /// Bytes written through this layer so far, over all files.
    bytes_written: u64,
    /// The process "dies" when the write stream reaches this offset: bytes before it
    /// reach the file, nothing at or after it does, and every later call fails.
    crash_at_byte: Option<u64>,
    crashed: bool,
    /// Writes past this offset fail with ENOSPC (bytes before it are written, like a
    /// real short write on a full disk).
    disk_full_at_byte: Option<u64>,
    /// The next `sync_data` fails with this errno.
    fail_next_sync: Option<i32>,
    syncs: u64,
    /// Every directory fsynced, in order.
    synced_dirs: Vec<PathBuf>,
}

/// Steers a [`FaultFs`] from a test while the WAL uses it.
#[derive(Clone, Debug, Default)]
pub struct FaultControl(Arc<Mutex<FaultState>>);

impl FaultControl {
    fn state(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn bytes_written(&self) -> u64 {
        self.state().bytes_written
    }

    /// Successful fdatasync calls on files.
    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    /// Every directory fsynced so far, in order.
    pub fn synced_dirs(&self) -> Vec<PathBuf> {
        self.state().synced_dirs.clone()
    }

    /// Crash when the total bytes written reach `offset`.
    pub fn crash_at_byte(&self, offset: u64) {
        self.state().crash_at_byte = Some(offset);
    }

    pub fn crashed(&self) -> bool {
        self.state().crashed
    }

    /// The disk fills up `bytes` bytes from now.
    pub fn disk_full_after(&self, bytes: u64) {
        let mut state = self.state();
        state.disk_full_at_byte = Some(state.bytes_written + bytes);
    }

    /// Space was freed: writes succeed again.
    pub fn space_back(&self) {
        self.state().disk_full_at_byte = None;
    }

    /// The next fdatasync fails with `errno` (e.g. `libc::EIO`).
    pub fn fail_next_sync(&self, errno: i32) {
        self.state().fail_next_sync = Some(errno);
    }
}

/// A [`WalFs`] over the real file system that injects faults on command.
///
/// It does not call the real fsync: durability is simulated by the crash model (what
/// was written before the crash offset survives), which keeps the every-offset crash
/// test fast.
#[derive(Clone, Debug, Default)]
pub struct FaultFs {
    control: FaultControl,
}

fn crashed_error() -> io::Error {
    io::Error::other("simulated crash: the process is gone")
}

impl FaultFs {
    pub fn new() -> (FaultFs, FaultControl) {
        let fs = FaultFs::default();
        let control = fs.control.clone();
        (fs, control)
    }

    fn check_alive(&self) -> io::Result<()> {
        if self.control.state().crashed {
            return Err(crashed_error());
        }
        Ok(())
    }
}

struct FaultFile {
    file: File,
    control: FaultControl,
}

impl WalFile for FaultFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut state = self.control.state();
        if state.crashed {
            return Err(crashed_error());
        }
        let start = state.bytes_written;
        let end = start + buf.len() as u64;
        let mut allowed = buf.len() as u64;
        let mut failure = None;
        if let Some(limit) = state.disk_full_at_byte {
            if end > limit {
                allowed = allowed.min(limit.saturating_sub(start));
                failure = Some(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        if let Some(crash) = state.crash_at_byte {
            if end > crash {
                allowed = allowed.min(crash.saturating_sub(start));
                state.crashed = true;
                failure = Some(crashed_error());
            }
        }
        self.file.write_all(&buf[..allowed as usize])?;
        state.bytes_written += allowed;
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.control.state();
        if state.crashed {
            return Err(crashed_error());
        }
        if let Some(errno) = state.fail_next_sync.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        state.syncs += 1;
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        if self.control.state().crashed {
            return Err(crashed_error());
        }
        self.file.set_len(len)
    }
}

impl WalFs for FaultFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.check_alive()?;
        std::fs::create_dir_all(dir)
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.check_alive()?;
        StdFs.list_files(dir)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        self.check_alive()?;
        StdFs.open_read(path)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.check_alive()?;
        StdFs.file_len(path)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        self.check_alive()?;
        let file = OpenOptions::new().append(true).create_new(true).open(path)?;
        Ok(Box::new(FaultFile {
            file,
            control: self.control.clone(),
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        self.check_alive()?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Box::new(FaultFile {
            file,
            control: self.control.clone(),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check_alive()?;
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check_alive()?;
        self.control.state().synced_dirs.push(dir.to_path_buf());
        Ok(())
    }
}
