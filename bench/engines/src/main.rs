//! Storage-engine benchmark for kuberaft's on-disk MVCC state machine.
//!
//! Layout modelled on etcd's bbolt schema: table "key" maps a 16-byte big-endian
//! revision (main u64, sub u64) to an encoded KeyValue blob (~1.1 KiB), and table
//! "meta" holds "consistent_index", updated in the same transaction as the puts.
//!
//! The parent process runs every (engine, workload) in a fresh child process
//! (re-exec of this binary) so that RSS and CPU numbers belong to one engine.
//! Run `kuberaft-engines-bench --help` for flags.

mod engines;

use engines::{Batch, HeedStore, FjallStore, RedbStore, Store};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEY_LEN: usize = 16;
const VALUE_LEN: usize = 1024;
const TXN_PUTS: u64 = 1_000;
const DURABLE_EVERY_PUTS: u64 = 10_000;
const DURABLE_EVERY: Duration = Duration::from_millis(100);
const RANGE_READS: u64 = 10_000;
const RANGE_LEN: u64 = 100;
const ALL_ENGINES: [&str; 3] = ["redb", "fjall", "heed"];
const WORKLOADS: [&str; 3] = ["apply", "range", "snapshot"];

// ---------------------------------------------------------------- helpers

/// xorshift64*: deterministic, dependency-free pseudo-random numbers.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 16-byte big-endian revision key: main revision, then sub revision.
pub fn rev_key(main: u64, sub: u64) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    k[..8].copy_from_slice(&main.to_be_bytes());
    k[8..].copy_from_slice(&sub.to_be_bytes());
    k
}

/// Encoded KeyValue for revision `rev`: user key (16 B), create/mod revision,
/// version, lease (4 x u64), then a 1 KiB value of incompressible bytes.
fn kv_blob(rev: u64) -> Vec<u8> {
    let mut rng = Rng::new(rev);
    let mut b = Vec::with_capacity(KEY_LEN + 32 + VALUE_LEN);
    let user_key = format!("/r/pods/{:08x}", rng.below(1 << 20) as u32);
    debug_assert_eq!(user_key.len(), KEY_LEN);
    b.extend_from_slice(user_key.as_bytes());
    for field in [rev, rev, 1u64, 0u64] {
        b.extend_from_slice(&field.to_be_bytes());
    }
    for _ in 0..VALUE_LEN / 8 {
        b.extend_from_slice(&rng.next().to_le_bytes());
    }
    b
}

fn rusage_cpu_secs() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn proc_field(file: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field) {
            let rest = rest.trim_start_matches(':').trim();
            let num: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            return num.parse().unwrap_or(0);
        }
    }
    0
}
/// Bytes this process caused to be sent to the block layer (includes all threads).
fn io_write_bytes() -> u64 {
    proc_field("/proc/self/io", "write_bytes")
}
fn io_wchar() -> u64 {
    proc_field("/proc/self/io", "wchar")
}
fn rss_kib() -> u64 {
    proc_field("/proc/self/status", "VmRSS")
}
fn hwm_kib() -> u64 {
    proc_field("/proc/self/status", "VmHWM")
}
fn rss_anon_kib() -> u64 {
    proc_field("/proc/self/status", "RssAnon")
}

/// Allocated bytes (st_blocks * 512) of every file under `dir`.
fn du_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.blocks() * 512;
            }
        }
    }
    total
}

const MIB: f64 = 1024.0 * 1024.0;

/// One line of results a child prints for the parent: `RESULT engine workload k=v ...`.
struct Report {
    engine: String,
    workload: String,
    fields: Vec<(String, f64)>,
}
impl Report {
    fn new(engine: &str, workload: &str) -> Self {
        Report { engine: engine.into(), workload: workload.into(), fields: vec![] }
    }
    fn add(&mut self, k: &str, v: f64) {
        self.fields.push((k.into(), v));
    }
    fn mem(&mut self, prefix: &str) {
        self.add(&format!("{prefix}_rss_mib"), rss_kib() as f64 / 1024.0);
        self.add(&format!("{prefix}_rss_anon_mib"), rss_anon_kib() as f64 / 1024.0);
    }
    fn print(&self) {
        let mut s = format!("RESULT {} {}", self.engine, self.workload);
        for (k, v) in &self.fields {
            s.push_str(&format!(" {k}={v:.4}"));
        }
        println!("{s}");
    }
}

// ---------------------------------------------------------------- workloads

/// Apply puts for revisions `first..first+count` in transactions of TXN_PUTS,
/// non-durable, with a durable commit every DURABLE_EVERY or DURABLE_EVERY_PUTS
/// and at the end. Returns the number of durable commits.
fn apply_puts<S: Store>(s: &S, first: u64, count: u64) -> u64 {
    let end = first + count;
    let mut last_durable = Instant::now();
    let mut since_durable = 0;
    let mut durable_commits = 0;
    let mut rev = first;
    while rev < end {
        let n = TXN_PUTS.min(end - rev);
        let batch: Batch = (rev..rev + n).map(|r| (rev_key(r, 0), kv_blob(r))).collect();
        rev += n;
        since_durable += n;
        let durable = rev == end
            || since_durable >= DURABLE_EVERY_PUTS
            || last_durable.elapsed() >= DURABLE_EVERY;
        s.commit(batch, rev - 1, durable);
        if durable {
            since_durable = 0;
            durable_commits += 1;
            last_durable = Instant::now();
        }
    }
    durable_commits
}

fn child_apply<S: Store>(engine: &str, dir: &Path, keys: u64) {
    let mut r = Report::new(engine, "apply");
    let t_open = Instant::now();
    let s = S::open(dir);
    r.add("open_secs", t_open.elapsed().as_secs_f64());
    let (cpu0, wb0, wc0) = (rusage_cpu_secs(), io_write_bytes(), io_wchar());
    let t0 = Instant::now();
    let durable_commits = apply_puts(&s, 1, keys);
    let secs = t0.elapsed().as_secs_f64();
    r.add("puts", keys as f64);
    r.add("apply_secs", secs);
    r.add("puts_per_s", keys as f64 / secs);
    r.add("durable_commits", durable_commits as f64);
    r.add("cpu_secs", rusage_cpu_secs() - cpu0);
    r.add("write_mib", (io_write_bytes() - wb0) as f64 / MIB);
    r.add("wchar_mib", (io_wchar() - wc0) as f64 / MIB);
    r.mem("after_apply");
    r.add("after_apply_hwm_mib", hwm_kib() as f64 / 1024.0);
    r.add("disk_mib", du_bytes(dir) as f64 / MIB);
    r.add("in_use_mib", s.in_use_bytes() as f64 / MIB);
    // Let background work (LSM flush/compaction) finish, bounded, then close.
    let t_settle = Instant::now();
    s.settle(Duration::from_secs(120));
    r.add("settle_secs", t_settle.elapsed().as_secs_f64());
    drop(s);
    r.add("total_cpu_secs", rusage_cpu_secs() - cpu0);
    r.add("total_write_mib", (io_write_bytes() - wb0) as f64 / MIB);
    r.add("closed_disk_mib", du_bytes(dir) as f64 / MIB);
    r.add("hwm_mib", hwm_kib() as f64 / 1024.0);
    r.print();
}

fn child_range<S: Store>(engine: &str, dir: &Path, keys: u64) {
    let mut r = Report::new(engine, "range");
    let t_open = Instant::now();
    let s = S::open(dir);
    r.add("open_secs", t_open.elapsed().as_secs_f64());
    let snap = s.snapshot();
    assert_eq!(S::snap_consistent_index(&snap), keys, "store does not hold the applied data");
    let mut rng = Rng::new(42);
    let cpu0 = rusage_cpu_secs();
    let t0 = Instant::now();
    let mut bytes = 0u64;
    for _ in 0..RANGE_READS {
        let start = 1 + rng.below(keys - RANGE_LEN + 1);
        let (lo, hi) = (rev_key(start, 0), rev_key(start + RANGE_LEN, 0));
        let mut n = 0;
        S::snap_range(&snap, &lo, &hi, &mut |k, v| {
            n += 1;
            bytes += (k.len() + v.len()) as u64;
        });
        assert_eq!(n, RANGE_LEN, "range starting at {start}");
    }
    let secs = t0.elapsed().as_secs_f64();
    r.add("range_secs", secs);
    r.add("ranges_per_s", RANGE_READS as f64 / secs);
    r.add("rows_per_s", (RANGE_READS * RANGE_LEN) as f64 / secs);
    r.add("read_mib", bytes as f64 / MIB);
    r.add("cpu_secs", rusage_cpu_secs() - cpu0);
    r.mem("after_range");
    r.add("hwm_mib", hwm_kib() as f64 / 1024.0);
    drop(snap);
    drop(s);
    r.print();
}

fn child_snapshot<S: Store>(engine: &str, dir: &Path, keys: u64, extra: u64, out: &Path) {
    let mut r = Report::new(engine, "snapshot");
    let s = S::open(dir);
    let snap = s.snapshot();
    assert_eq!(S::snap_consistent_index(&snap), keys);
    let disk0 = du_bytes(dir);

    // Writes continue while the read snapshot is held.
    let t0 = Instant::now();
    apply_puts(&s, keys + 1, extra);
    let secs = t0.elapsed().as_secs_f64();
    r.add("held_puts_per_s", extra as f64 / secs);
    r.add("held_growth_mib", (du_bytes(dir) as f64 - disk0 as f64) / MIB);
    // The snapshot still sees the old state; a new one sees the new state.
    assert_eq!(S::snap_consistent_index(&snap), keys, "snapshot saw a later consistent_index");
    let mut newer = 0;
    S::snap_range(&snap, &rev_key(keys + 1, 0), &rev_key(u64::MAX, u64::MAX), &mut |_, _| newer += 1);
    assert_eq!(newer, 0, "snapshot saw revisions written after it was taken");
    {
        let fresh = s.snapshot();
        assert_eq!(S::snap_consistent_index(&fresh), keys + extra);
    }
    r.mem("before_stream");

    // Stream the whole "key" table from the snapshot on another thread (the
    // snapshot is moved there: it must be Send + 'static), sampling RSS here.
    let out_path = out.to_path_buf();
    let t1 = Instant::now();
    let worker = std::thread::spawn(move || {
        let file = File::create(&out_path).expect("create stream file");
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let (mut rows, mut bytes) = (0u64, 0u64);
        S::snap_range(&snap, &rev_key(0, 0), &rev_key(u64::MAX, u64::MAX), &mut |k, v| {
            w.write_all(k).unwrap();
            w.write_all(&(v.len() as u32).to_be_bytes()).unwrap();
            w.write_all(v).unwrap();
            rows += 1;
            bytes += (k.len() + 4 + v.len()) as u64;
        });
        let file = w.into_inner().expect("flush stream file");
        file.sync_all().expect("fsync stream file");
        drop(snap);
        (rows, bytes)
    });
    let mut max_rss = rss_kib();
    for _ in 0..200_000 {
        if worker.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        max_rss = max_rss.max(rss_kib());
    }
    let (rows, bytes) = worker.join().expect("stream thread");
    let secs = t1.elapsed().as_secs_f64();
    assert_eq!(rows, keys, "snapshot stream must contain exactly the old revisions");
    r.add("stream_secs", secs);
    r.add("stream_mib", bytes as f64 / MIB);
    r.add("stream_mib_per_s", bytes as f64 / MIB / secs);
    r.add("stream_max_rss_mib", max_rss as f64 / 1024.0);
    r.add("disk_mib", du_bytes(dir) as f64 / MIB);
    r.add("hwm_mib", hwm_kib() as f64 / 1024.0);
    let _ = std::fs::remove_file(out);
    drop(s);
    r.print();
}

/// Crash check, writer side: one durable commit, then only non-durable
/// commits, printing each committed consistent_index; the parent kill -9s us.
fn child_crash_write<S: Store>(dir: &Path) {
    let s = S::open(dir);
    let mut rev = 1;
    for i in 0..200u64 {
        let batch: Batch = (rev..rev + TXN_PUTS).map(|r| (rev_key(r, 0), kv_blob(r))).collect();
        rev += TXN_PUTS;
        s.commit(batch, rev - 1, i == 0);
        println!("COMMITTED {} durable={}", rev - 1, i == 0);
        std::io::stdout().flush().unwrap();
    }
    // The parent kills us long before this; if not, wait (bounded) to be killed.
    std::thread::sleep(Duration::from_secs(60));
}

fn child_crash_recover<S: Store>(engine: &str, dir: &Path) {
    let mut r = Report::new(engine, "recover");
    let t = Instant::now();
    let s = S::open(dir);
    r.add("reopen_secs", t.elapsed().as_secs_f64());
    let snap = s.snapshot();
    r.add("recovered_ci", S::snap_consistent_index(&snap) as f64);
    let mut rows = 0u64;
    S::snap_range(&snap, &rev_key(0, 0), &rev_key(u64::MAX, u64::MAX), &mut |_, _| rows += 1);
    r.add("recovered_rows", rows as f64);
    r.print();
}

fn run_child<S: Store>(engine: &str, workload: &str, dir: &Path, keys: u64, extra: u64) {
    match workload {
        "apply" => child_apply::<S>(engine, dir, keys),
        "range" => child_range::<S>(engine, dir, keys),
        "snapshot" => {
            let out = dir.with_extension("stream");
            child_snapshot::<S>(engine, dir, keys, extra, &out)
        }
        "crash-write" => child_crash_write::<S>(dir),
        "crash-recover" => child_crash_recover::<S>(engine, dir),
        w => panic!("unknown workload {w}"),
    }
}

// ---------------------------------------------------------------- parent

struct Args {
    keys: u64,
    extra: u64,
    rounds: usize,
    engines: Vec<String>,
    tmp: PathBuf,
    crash: bool,
    redb_cache_mib: Option<u64>,
    child: Option<(String, String, PathBuf)>,
}

fn usage() -> ! {
    eprintln!(
        "usage: kuberaft-engines-bench [--keys N (200000)] [--extra N (50000)] [--rounds N (3)]\n\
         \x20      [--engines redb,fjall,heed] [--tmp DIR (/tmp)] [--no-crash]\n\
         \x20      [--redb-cache-mib N (redb default: 1024)]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        keys: 200_000,
        extra: 50_000,
        rounds: 3,
        engines: ALL_ENGINES.iter().map(|s| s.to_string()).collect(),
        tmp: PathBuf::from("/tmp"),
        crash: true,
        redb_cache_mib: None,
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--keys" => a.keys = val().parse().unwrap_or_else(|_| usage()),
            "--extra" => a.extra = val().parse().unwrap_or_else(|_| usage()),
            "--rounds" => a.rounds = val().parse().unwrap_or_else(|_| usage()),
            "--engines" => a.engines = val().split(',').map(str::to_string).collect(),
            "--tmp" => a.tmp = PathBuf::from(val()),
            "--no-crash" => a.crash = false,
            "--redb-cache-mib" => a.redb_cache_mib = Some(val().parse().unwrap_or_else(|_| usage())),
            "--child" => {
                let engine = val();
                let workload = val();
                let dir = PathBuf::from(val());
                a.child = Some((engine, workload, dir));
            }
            _ => usage(),
        }
    }
    if a.keys < RANGE_LEN * 2 || a.engines.iter().any(|e| !ALL_ENGINES.contains(&e.as_str())) {
        usage()
    }
    a
}

fn child_cmd(a: &Args, engine: &str, workload: &str, dir: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("current_exe"));
    c.args(["--keys", &a.keys.to_string(), "--extra", &a.extra.to_string()]);
    if let Some(m) = a.redb_cache_mib {
        c.args(["--redb-cache-mib", &m.to_string()]);
    }
    c.args(["--child", engine, workload]).arg(dir);
    c.stderr(Stdio::inherit());
    c
}

fn parse_result(line: &str) -> Option<Report> {
    let mut parts = line.strip_prefix("RESULT ")?.split_whitespace();
    let mut r = Report::new(parts.next()?, parts.next()?);
    for kv in parts {
        let (k, v) = kv.split_once('=')?;
        r.add(k, v.parse().ok()?);
    }
    Some(r)
}

fn run_workload(a: &Args, engine: &str, workload: &str, dir: &Path) -> Report {
    let out = child_cmd(a, engine, workload, dir).output().expect("spawn child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{engine}/{workload} child failed: {}\n{text}", out.status);
    let r = text.lines().find_map(parse_result).expect("child printed no RESULT line");
    eprintln!("  {}", text.lines().find(|l| l.starts_with("RESULT")).unwrap());
    r
}

/// kill -9 the writer after it reports KILL_AFTER non-durable commits, then reopen.
fn crash_check(a: &Args, engine: &str, dir: &Path) -> Report {
    const KILL_AFTER: u64 = 30_000;
    let mut child = child_cmd(a, engine, "crash-write", dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn crash writer");
    let stdout = child.stdout.take().unwrap();
    let (mut last, mut durable) = (0u64, 0u64);
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let mut p = line.split_whitespace();
        if p.next() != Some("COMMITTED") {
            continue;
        }
        last = p.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        if p.next() == Some("durable=true") {
            durable = last;
        }
        if last >= KILL_AFTER {
            child.kill().expect("SIGKILL writer"); // std sends SIGKILL on Unix
            break;
        }
    }
    let _ = child.wait();
    let mut r = run_workload(a, engine, "crash-recover", dir);
    r.add("last_durable_ci", durable as f64);
    r.add("last_committed_ci", last as f64);
    r
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn parent(a: &Args) {
    println!(
        "# kuberaft engine bench: keys={} extra={} rounds={} engines={:?} tmp={} redb_cache_mib={:?}",
        a.keys, a.extra, a.rounds, a.engines, a.tmp.display(), a.redb_cache_mib
    );
    // (engine, workload, metric) -> values over rounds
    let mut all: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    let mut order = a.engines.clone();
    for round in 0..a.rounds {
        for engine in &order {
            let dir = a.tmp.join(format!("kuberaft-engines-{}-{round}-{engine}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            eprintln!("round {} engine {engine} dir {}", round + 1, dir.display());
            for w in WORKLOADS {
                let r = run_workload(a, engine, w, &dir);
                for (k, v) in r.fields {
                    all.entry((r.engine.clone(), r.workload.clone(), k)).or_default().push(v);
                }
            }
            std::fs::remove_dir_all(&dir).expect("remove temp dir");
        }
        order.rotate_left(1); // alternate which engine goes first
    }
    if a.crash {
        for engine in &a.engines {
            let dir = a.tmp.join(format!("kuberaft-engines-{}-crash-{engine}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            let r = crash_check(a, engine, &dir);
            for (k, v) in r.fields {
                all.entry((r.engine.clone(), r.workload.clone(), k)).or_default().push(v);
            }
            std::fs::remove_dir_all(&dir).expect("remove temp dir");
        }
    }
    println!("\n## Medians over {} rounds\n", a.rounds);
    let mut header = String::from("| workload | metric |");
    let mut sep = String::from("|---|---|");
    for e in &a.engines {
        header.push_str(&format!(" {e} |"));
        sep.push_str("---:|");
    }
    println!("{header}\n{sep}");
    let mut rows: Vec<(String, String)> = all.keys().map(|(_, w, k)| (w.clone(), k.clone())).collect();
    rows.sort_by_key(|(w, k)| {
        let wi = ["apply", "range", "snapshot", "recover"].iter().position(|x| x == w).unwrap_or(9);
        (wi, k.clone())
    });
    rows.dedup();
    for (w, k) in rows {
        let mut line = format!("| {w} | {k} |");
        for e in &a.engines {
            match all.get_mut(&(e.clone(), w.clone(), k.clone())) {
                Some(v) => {
                    let m = median(v);
                    let raw: Vec<String> = v.iter().map(|x| fmt_num(*x)).collect();
                    line.push_str(&format!(" {} ({}) |", fmt_num(m), raw.join(", ")));
                }
                None => line.push_str(" - |"),
            }
        }
        println!("{line}");
    }
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn main() {
    let a = parse_args();
    if let Some(m) = a.redb_cache_mib {
        engines::REDB_CACHE_BYTES.set(m as usize * 1024 * 1024).unwrap();
    }
    match &a.child {
        Some((engine, workload, dir)) => match engine.as_str() {
            "redb" => run_child::<RedbStore>(engine, workload, dir, a.keys, a.extra),
            "fjall" => run_child::<FjallStore>(engine, workload, dir, a.keys, a.extra),
            "heed" => run_child::<HeedStore>(engine, workload, dir, a.keys, a.extra),
            e => panic!("unknown engine {e}"),
        },
        None => parent(&a),
    }
}
