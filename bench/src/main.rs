//! `raft-bench`: a load generator for any etcd v3 endpoint (kuberaft or etcd).
//!
//!     raft-bench --endpoints 127.0.0.1:2379,127.0.0.1:22379 --workload put --clients 1,16,64 --duration 10s
//!
//! Workloads: `put` (8-byte keys, 256-byte values, as in etcd's performance page),
//! `get` (linearizable), `get-serializable`, `mixed` (90% linearizable gets, 10%
//! puts). Reports ops/s and p50/p99/p99.9 latency per client count, as a table and,
//! with `--json FILE`, as JSON.
//!
//! `--workload failover --kill-pid PID` measures unavailability instead: writers run
//! steadily, the process PID (the leader) is killed with SIGKILL after `--kill-after`,
//! and the time from the kill to the first acknowledged write *issued after it* is
//! reported.
//!
//! `--workload load` fills the store: keys 0..`--keys` written once each, in txns of
//! `--txn-ops` puts, by the first `--clients` count of writers; it reports the seconds
//! and puts/s. `--workload wait-revision --min-revision R` polls a get on every endpoint
//! (each on its own, serializable with `--serializable`) until one answers with a header
//! revision of at least R, and prints the wall-clock time of that answer (UNIX ms), so
//! that a caller can time a restart from its own kill.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use etcd_client::{Client, ConnectOptions, GetOptions, Txn, TxnOp};
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(name = "raft-bench", about = "load generator for etcd v3 endpoints")]
struct Args {
    /// Comma-separated host:port list.
    #[arg(long)]
    endpoints: String,
    /// put | get | get-serializable | mixed
    #[arg(long, default_value = "put")]
    workload: String,
    /// Comma-separated numbers of concurrent clients to run, one after the other.
    #[arg(long, default_value = "1,16,64")]
    clients: String,
    /// gRPC connections shared by the clients (round robin).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Length of each run, e.g. 10s or 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop each run after this many operations (0: no limit).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Distinct keys the workload touches.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Key length: the key number in 8 big-endian bytes, padded in front with `k`.
    #[arg(long, default_value_t = 8)]
    key_bytes: usize,
    /// load: puts per txn.
    #[arg(long, default_value_t = 100)]
    txn_ops: u64,
    /// wait-revision: the header revision a get must answer with.
    #[arg(long, default_value_t = 0)]
    min_revision: i64,
    /// wait-revision: serializable gets (default linearizable).
    #[arg(long)]
    serializable: bool,
    /// Reads find their keys already written (by an earlier `--workload load` with the
    /// same `--keys`, `--key-bytes` and `--value-bytes`): skip the one-client preload,
    /// so a caller that measures the members' CPU over this run measures reads only.
    #[arg(long)]
    no_preload: bool,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// A label for the results (e.g. kuberaft or etcd).
    #[arg(long, default_value = "target")]
    label: String,
    /// failover: the process to kill (the leader).
    #[arg(long)]
    kill_pid: Option<u32>,
    /// failover: how long writes run before the kill.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    kill_after: Duration,
}

/// Time from SIGKILL of the leader to the first acknowledged write issued after it.
async fn failover(args: &Args, pool: &[Client]) -> anyhow::Result<f64> {
    let pid = args.kill_pid.context("--workload failover needs --kill-pid")?;
    let origin = Instant::now();
    let killed_at_us = Arc::new(AtomicU64::new(u64::MAX));
    let recovered_at_us = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let writers = 4.max(pool.len());
    for w in 0..writers {
        let mut client = pool[w % pool.len()].clone();
        let (killed_at_us, recovered_at_us, stop) =
            (killed_at_us.clone(), recovered_at_us.clone(), stop.clone());
        let value = vec![b'f'; args.value_bytes];
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let issued_us = origin.elapsed().as_micros() as u64;
                let ok = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.put(format!("failover-{w}-{n}"), value.clone(), None),
                )
                .await
                .is_ok_and(|r| r.is_ok());
                if ok && issued_us > killed_at_us.load(Ordering::Relaxed) {
                    recovered_at_us.fetch_min(origin.elapsed().as_micros() as u64, Ordering::Relaxed);
                    stop.store(true, Ordering::Relaxed);
                }
                if !ok {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    tokio::time::sleep(args.kill_after).await;
    let status = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()?;
    // Only once the signal was delivered: a write issued before it says nothing.
    killed_at_us.store(origin.elapsed().as_micros() as u64, Ordering::Relaxed);
    if !status.success() {
        bail!("kill -9 {pid} failed");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let recovered = recovered_at_us.load(Ordering::Relaxed);
    if recovered == u64::MAX {
        bail!("no write was acknowledged within 60 s of the kill");
    }
    Ok((recovered - killed_at_us.load(Ordering::Relaxed)) as f64 / 1000.0)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(60 * n)),
        _ => Err(format!("unknown unit in {s:?}")),
    }
}

struct RunResult {
    clients: usize,
    ops: u64,
    errors: u64,
    seconds: f64,
    histogram: Histogram<u64>,
}

fn key_of(n: u64, key_bytes: usize) -> Vec<u8> {
    let mut key = vec![b'k'; key_bytes.saturating_sub(8)];
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// Writes keys 0..keys once each in txns of `txn_ops` puts from `writers` concurrent
/// writers; a failed txn is retried (its puts are idempotent for the load), at most 10
/// times. Returns (seconds, retries).
async fn load(args: &Args, pool: &[Client], writers: usize) -> anyhow::Result<(f64, u64)> {
    let next_txn = Arc::new(AtomicU64::new(0));
    let txns = args.keys.div_ceil(args.txn_ops);
    let value = vec![b'v'; args.value_bytes];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = pool[w % pool.len()].clone();
        let (next_txn, value) = (next_txn.clone(), value.clone());
        let (keys, txn_ops, key_bytes) = (args.keys, args.txn_ops, args.key_bytes);
        tasks.push(tokio::spawn(async move {
            let mut retries = 0u64;
            loop {
                let t = next_txn.fetch_add(1, Ordering::Relaxed);
                if t >= txns {
                    return Ok::<u64, anyhow::Error>(retries);
                }
                let ops: Vec<TxnOp> = (t * txn_ops..((t + 1) * txn_ops).min(keys))
                    .map(|n| TxnOp::put(key_of(n, key_bytes), value.clone(), None))
                    .collect();
                let mut attempt = 0;
                loop {
                    match client.txn(Txn::new().and_then(ops.clone())).await {
                        Ok(_) => break,
                        Err(e) if attempt < 10 => {
                            attempt += 1;
                            retries += 1;
                            eprintln!("txn {t}: {e}; retrying ({attempt}/10)");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => bail!("txn {t} failed 11 times, the last: {e}"),
                    }
                }
            }
        }));
    }
    let mut retries = 0;
    for task in tasks {
        retries += task.await??;
    }
    Ok((started.elapsed().as_secs_f64(), retries))
}

/// Polls a get of `key_of(0)` on every endpoint, each with its own fresh connection after
/// a failure, until one answers with a header revision of at least `--min-revision` or
/// `--duration` passes. Returns (endpoint, UNIX ms of the answer, its revision).
async fn wait_revision(args: &Args, endpoints: &[String]) -> anyhow::Result<(String, f64, i64)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(endpoints.len());
    let stop = Arc::new(AtomicBool::new(false));
    let options = ConnectOptions::new()
        .with_timeout(Duration::from_millis(1000))
        .with_connect_timeout(Duration::from_millis(500));
    let mut tasks = Vec::new();
    for endpoint in endpoints {
        let (tx, stop, options, endpoint) = (tx.clone(), stop.clone(), options.clone(), endpoint.clone());
        let (key, serializable, min_revision) =
            (key_of(0, args.key_bytes), args.serializable, args.min_revision);
        tasks.push(tokio::spawn(async move {
            let mut client: Option<Client> = None;
            while !stop.load(Ordering::Relaxed) {
                if client.is_none() {
                    client = Client::connect([endpoint.as_str()], Some(options.clone()))
                        .await
                        .ok();
                }
                if let Some(c) = client.as_mut() {
                    let get_options = serializable.then(|| GetOptions::new().with_serializable());
                    match c.get(key.clone(), get_options).await {
                        Ok(r) => {
                            let revision = r.header().map_or(0, |h| h.revision());
                            if revision >= min_revision {
                                let unix_ms = std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
                                let _ = tx.send((endpoint.clone(), unix_ms, revision)).await;
                                return;
                            }
                        }
                        Err(_) => client = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    drop(tx);
    let answer = tokio::time::timeout(args.duration, rx.recv()).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    match answer {
        Ok(Some(answer)) => Ok(answer),
        _ => bail!(
            "no get answered with revision >= {} within {:?}",
            args.min_revision,
            args.duration
        ),
    }
}

async fn run(args: &Args, pool: &[Client], clients: usize) -> anyhow::Result<RunResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let value = vec![b'v'; args.value_bytes];
    let mut tasks = Vec::new();
    let started = Instant::now();
    for c in 0..clients {
        let mut client = pool[c % pool.len()].clone();
        let stop = stop.clone();
        let issued = issued.clone();
        let value = value.clone();
        let workload = args.workload.clone();
        let keys = args.keys;
        let key_bytes = args.key_bytes;
        let count = args.count;
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut errors = 0u64;
            let mut n = c as u64;
            while !stop.load(Ordering::Relaxed) {
                let seq = issued.fetch_add(1, Ordering::Relaxed);
                if count > 0 && seq >= count {
                    break;
                }
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = key_of(n % keys, key_bytes);
                let op_started = Instant::now();
                let write = match workload.as_str() {
                    "put" => true,
                    "mixed" => n.is_multiple_of(10),
                    _ => false,
                };
                let result = if write {
                    client.put(key, value.clone(), None).await.map(|_| ())
                } else if workload == "get-serializable" {
                    client
                        .get(key, Some(GetOptions::new().with_serializable()))
                        .await
                        .map(|_| ())
                } else {
                    client.get(key, None).await.map(|_| ())
                };
                match result {
                    Ok(()) => {
                        let micros = op_started.elapsed().as_micros().max(1) as u64;
                        histogram.saturating_record(micros);
                    }
                    Err(_) => errors += 1,
                }
            }
            (histogram, errors)
        }));
    }
    let deadline = tokio::time::sleep(args.duration);
    tokio::pin!(deadline);
    let stopper = stop.clone();
    let count_limit = args.count;
    let issued_check = issued.clone();
    tokio::select! {
        _ = &mut deadline => {}
        _ = async move {
            while count_limit == 0 || issued_check.load(Ordering::Relaxed) < count_limit {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } => {}
    }
    stopper.store(true, Ordering::Relaxed);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await?;
        histogram.add(&h)?;
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(RunResult {
        clients,
        ops: histogram.len(),
        errors,
        seconds,
        histogram,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workloads = [
        "put",
        "get",
        "get-serializable",
        "mixed",
        "failover",
        "load",
        "wait-revision",
    ];
    if !workloads.contains(&args.workload.as_str()) {
        bail!(
            "--workload {:?}: expected put, get, get-serializable, mixed, failover, load or wait-revision",
            args.workload
        );
    }
    if args.key_bytes < 8 {
        bail!("--key-bytes must be at least 8");
    }
    if args.txn_ops == 0 {
        bail!("--txn-ops must be at least 1");
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let endpoints: Vec<String> = args.endpoints.split(',').map(|s| s.trim().to_string()).collect();
    let client_counts: Vec<usize> = args
        .clients
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .with_context(|| format!("--clients: {s:?} is not a number"))
        })
        .collect::<anyhow::Result<_>>()?;
    if args.workload == "wait-revision" {
        let (endpoint, unix_ms, revision) = wait_revision(&args, &endpoints).await?;
        println!(
            "{} {endpoint} answered with revision {revision} at UNIX ms {unix_ms:.1}",
            args.label
        );
        if let Some(path) = &args.json {
            let row = serde_json::json!({"label": args.label, "workload": "wait-revision",
                "endpoint": endpoint, "unix_ms": unix_ms, "revision": revision});
            std::fs::write(path, serde_json::to_string_pretty(&row)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        return Ok(());
    }
    let options = ConnectOptions::new()
        .with_timeout(Duration::from_secs(10))
        .with_connect_timeout(Duration::from_secs(3));
    let mut pool = Vec::new();
    for _ in 0..args.connections {
        pool.push(
            Client::connect(&endpoints, Some(options.clone()))
                .await
                .with_context(|| format!("cannot connect to {endpoints:?}"))?,
        );
    }
    if args.workload == "failover" {
        let ms = failover(&args, &pool).await?;
        println!(
            "{} failover: {ms:.1} ms from kill -9 of the leader to the first acknowledged write",
            args.label
        );
        if let Some(path) = &args.json {
            let row = serde_json::json!({"label": args.label, "workload": "failover", "failover_ms": ms});
            std::fs::write(path, serde_json::to_string_pretty(&row)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        return Ok(());
    }
    if args.workload == "load" {
        let writers = client_counts[0];
        let (seconds, retries) = load(&args, &pool, writers).await?;
        let puts_per_second = args.keys as f64 / seconds;
        println!(
            "{} load: {} keys ({}-byte keys, {}-byte values) in txns of {} from {writers} writers: \
             {seconds:.2} s, {puts_per_second:.0} puts/s, {retries} retries",
            args.label, args.keys, args.key_bytes, args.value_bytes, args.txn_ops
        );
        if let Some(path) = &args.json {
            let row = serde_json::json!({"label": args.label, "workload": "load", "keys": args.keys,
                "key_bytes": args.key_bytes, "value_bytes": args.value_bytes, "txn_ops": args.txn_ops,
                "clients": writers, "connections": args.connections, "seconds": seconds,
                "puts_per_second": puts_per_second, "retries": retries});
            std::fs::write(path, serde_json::to_string_pretty(&row)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        return Ok(());
    }
    if args.workload != "put" && !args.no_preload {
        // Reads need keys to find.
        let mut client = pool[0].clone();
        for n in 0..args.keys.min(10_000) {
            client
                .put(key_of(n, args.key_bytes), vec![b'v'; args.value_bytes], None)
                .await?;
        }
    }
    println!(
        "{:<10} {:<17} {:>7} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "label", "workload", "clients", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
    let mut rows = Vec::new();
    for &clients in &client_counts {
        let r = run(&args, &pool, clients).await?;
        let ms = |q: f64| r.histogram.value_at_quantile(q) as f64 / 1000.0;
        let ops_per_second = r.ops as f64 / r.seconds;
        println!(
            "{:<10} {:<17} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            args.label,
            args.workload,
            r.clients,
            ops_per_second,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            r.errors
        );
        rows.push(serde_json::json!({
            "label": args.label,
            "workload": args.workload,
            "clients": r.clients,
            "connections": args.connections,
            "ops": r.ops,
            "errors": r.errors,
            "seconds": r.seconds,
            "ops_per_second": ops_per_second,
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
        }));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
