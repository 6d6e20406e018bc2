//! Storage benchmark: every figure measured in the same run, on the same directory.
//!
//! `cargo bench -p kuberaft-node --bench storage`
//!
//! Environment:
//! - `KUBERAFT_BENCH_DIR`: where to write (default: the system temp directory). Point
//!   it at the volume you want to measure.
//! - `KUBERAFT_BENCH_SECS`: seconds per throughput run (default 2).
//! - `KUBERAFT_BENCH_RECOVERY_MIB`: size of the WAL for the recovery run (default 256).
//! - `KUBERAFT_BENCH_SNAPSHOT_MIB`: size of the snapshot (default 256).
//!
//! Prints figures and the target ratios; asserts nothing.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kuberaft_node::raft::types::{Entry, EntryPayload, Membership, SnapshotMeta};
use kuberaft_node::storage::{
    CommitMode, LogStore, PersistRequest, SnapshotStore, WalConfig, WalLogStore, WalWriter, WriterConfig,
};

const ENTRY_BYTES: usize = 256;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn base_dir() -> PathBuf {
    std::env::var_os("KUBERAFT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Appends of 256 bytes, each followed by fdatasync: the ceiling for any WAL.
fn raw_fdatasync_rate(dir: &Path, secs: Duration) -> f64 {
    let path = dir.join("raw-fdatasync");
    let mut file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let buf = [0x5au8; ENTRY_BYTES];
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < secs {
        file.write_all(&buf).unwrap();
        file.sync_data().unwrap();
        count += 1;
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_file(path).unwrap();
    rate
}

fn entry(index: u64, payload: &Bytes) -> Entry {
    Entry {
        term: 1,
        index,
        payload: EntryPayload::Normal(payload.clone()),
    }
}

struct Throughput {
    entries_per_sec: f64,
    fsyncs_per_sec: f64,
    p99_us: u64,
}

fn wal_throughput(dir: &Path, appenders: usize, mode: CommitMode, secs: Duration) -> Throughput {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let wal_dir = tempfile::tempdir_in(dir).unwrap();
    runtime.block_on(async {
        let store = WalLogStore::open(wal_dir.path(), WalConfig::new(1, 1)).unwrap();
        let config = WriterConfig {
            mode,
            ..WriterConfig::default()
        };
        let (writer, task) = WalWriter::spawn(store, config).unwrap();
        let payload = Bytes::from(vec![0xa5u8; ENTRY_BYTES]);
        // The Raft core hands out indexes in order; the lock stands in for it.
        let next = Arc::new(tokio::sync::Mutex::new(1u64));
        let start = Instant::now();
        let deadline = start + secs;
        let mut tasks = Vec::new();
        for _ in 0..appenders {
            let writer = writer.clone();
            let next = next.clone();
            let payload = payload.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let ack = {
                        let mut index = next.lock().await;
                        let ack = writer
                            .enqueue(vec![PersistRequest::Entries(vec![entry(*index, &payload)])])
                            .await
                            .unwrap();
                        *index += 1;
                        ack
                    };
                    ack.await.unwrap().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        let histogram = writer.fsync_histogram();
        let entries = *next.lock().await - 1;
        drop(writer);
        task.await.unwrap();
        Throughput {
            entries_per_sec: entries as f64 / elapsed,
            fsyncs_per_sec: histogram.count as f64 / elapsed,
            p99_us: histogram.quantile_us(0.99),
        }
    })
}

fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

fn snapshot_rates(dir: &Path, mib: u64) -> (f64, f64) {
    let snap_dir = tempfile::tempdir_in(dir).unwrap();
    let store = SnapshotStore::open(snap_dir.path(), 1, 1).unwrap();
    let meta = SnapshotMeta {
        index: 1,
        term: 1,
        membership: Membership::new([1, 2, 3]),
        timing: None,
    };
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 7) as u8).collect();
    let start = Instant::now();
    let mut writer = store.create(&meta).unwrap();
    for _ in 0..mib {
        writer.write_all(&chunk).unwrap();
    }
    let info = writer.finish().unwrap();
    let write = mib_per_sec(mib << 20, start.elapsed());
    let start = Instant::now();
    let mut reader = store.open_reader(&info).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert_eq!(total, mib << 20);
    (write, mib_per_sec(total, start.elapsed()))
}

/// Writes a WAL of about `mib` MiB, then times recovery against a plain sequential
/// read of the same files.
fn recovery_vs_read(dir: &Path, mib: u64) -> (u64, Duration, Duration, Duration, u64) {
    let wal_dir = tempfile::tempdir_in(dir).unwrap();
    let payload = Bytes::from(vec![0x3cu8; ENTRY_BYTES]);
    {
        let mut store = WalLogStore::open(wal_dir.path(), WalConfig::new(1, 1)).unwrap();
        let mut index = 1u64;
        let target = mib << 20;
        let mut written = 0u64;
        while written < target {
            let batch: Vec<Entry> = (0..1024).map(|i| entry(index + i, &payload)).collect();
            index += 1024;
            written += 1024 * (ENTRY_BYTES as u64 + 35);
            store.append(&batch).unwrap();
        }
        store.sync().unwrap();
    }
    let files: Vec<PathBuf> = std::fs::read_dir(wal_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let bytes: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();

    // Warm both the same way: read everything once first, so the comparison is
    // recovery CPU work vs. reading, not cold vs. warm cache.
    let read_all = || {
        let mut buf = vec![0u8; 1 << 20];
        for f in &files {
            let mut file = std::fs::File::open(f).unwrap();
            while file.read(&mut buf).unwrap() > 0 {}
        }
    };
    read_all();
    let start = Instant::now();
    read_all();
    let read = start.elapsed();
    let start = Instant::now();
    let store = WalLogStore::open(wal_dir.path(), WalConfig::new(1, 1)).unwrap();
    let recover = start.elapsed();
    let entries = store.last_index();
    drop(store);
    let start = Instant::now();
    read_direct(&files);
    let read_disk = start.elapsed();
    (bytes, recover, read, read_disk, entries)
}

/// Reads the files with O_DIRECT, bypassing the page cache: the device's sequential
/// read time, without dropping the machine's caches.
fn read_direct(files: &[PathBuf]) {
    use std::os::unix::fs::OpenOptionsExt;
    const ALIGN: usize = 4096;
    const CHUNK: usize = 4 << 20;
    let mut raw = vec![0u8; CHUNK + ALIGN];
    let skip = (ALIGN - raw.as_ptr() as usize % ALIGN) % ALIGN;
    let buf = &mut raw[skip..skip + CHUNK];
    for f in files {
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(f)
            .unwrap();
        while file.read(buf).unwrap() > 0 {}
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let secs = Duration::from_secs(env_u64("KUBERAFT_BENCH_SECS", 2));
    let dir = base_dir();
    println!(
        "storage benchmark in {} ({}s per run)",
        dir.display(),
        secs.as_secs()
    );

    let raw = raw_fdatasync_rate(&dir, secs);
    println!("raw fdatasync (256-byte append + fdatasync): {raw:.0}/s");
    let raw_before = raw;

    println!(
        "{:>9} {:>15} {:>12} {:>11} {:>9}",
        "appenders", "mode", "entries/s", "fsyncs/s", "p99 (us)"
    );
    let mut group_256 = 0.0;
    let mut per_entry_256 = 0.0;
    let mut group_fsyncs_256 = 0.0;
    for appenders in [1usize, 16, 256] {
        for (name, mode) in [
            ("group commit", CommitMode::Group),
            ("fsync/entry", CommitMode::PerSubmission),
        ] {
            let t = wal_throughput(&dir, appenders, mode, secs);
            println!(
                "{appenders:>9} {name:>15} {:>12.0} {:>11.0} {:>9}",
                t.entries_per_sec, t.fsyncs_per_sec, t.p99_us
            );
            if appenders == 256 {
                match mode {
                    CommitMode::Group => {
                        group_256 = t.entries_per_sec;
                        group_fsyncs_256 = t.fsyncs_per_sec;
                    }
                    CommitMode::PerSubmission => per_entry_256 = t.entries_per_sec,
                }
            }
        }
    }
    // The device is shared; measure the raw rate again and compare with the mean.
    let raw_after = raw_fdatasync_rate(&dir, secs);
    let raw = (raw_before + raw_after) / 2.0;
    println!("raw fdatasync again: {raw_after:.0}/s (mean {raw:.0}/s)");
    println!(
        "target: 256 appenders group/per-entry = {:.1}x (>= 20x); group fsyncs/s / raw = {:.0}% (>= 80%)",
        group_256 / per_entry_256,
        100.0 * group_fsyncs_256 / raw
    );

    let snapshot_mib = env_u64("KUBERAFT_BENCH_SNAPSHOT_MIB", 256);
    let (write, load) = snapshot_rates(&dir, snapshot_mib);
    println!(
        "snapshot {snapshot_mib} MiB: write {write:.0} MiB/s (incl. fsync, rename, dir fsync), load {load:.0} MiB/s (with checksum, page cache warm)"
    );

    let recovery_mib = env_u64("KUBERAFT_BENCH_RECOVERY_MIB", 256);
    let (bytes, recover, read, read_disk, entries) = recovery_vs_read(&dir, recovery_mib);
    println!(
        "recovery of a {:.0} MiB WAL ({entries} entries, page cache warm): {:.2}s ({:.0} MiB/s)",
        bytes as f64 / (1 << 20) as f64,
        recover.as_secs_f64(),
        mib_per_sec(bytes, recover),
    );
    println!(
        "sequential read of it: {:.2}s ({:.0} MiB/s) from page cache, {:.2}s ({:.0} MiB/s) from the device (O_DIRECT)",
        read.as_secs_f64(),
        mib_per_sec(bytes, read),
        read_disk.as_secs_f64(),
        mib_per_sec(bytes, read_disk),
    );
    println!(
        "target: recovery / device read = {:.2}x (<= 2x); recovery / cached read = {:.1}x",
        recover.as_secs_f64() / read_disk.as_secs_f64(),
        recover.as_secs_f64() / read.as_secs_f64()
    );
}
