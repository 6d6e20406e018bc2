#!/usr/bin/env python3
"""kuberaft and etcd 3.4 side by side as the data grows (issue 15's table).

For every size (keys), each system in turn (kuberaft then etcd, the order reversed every
other size), on a fresh 3-member cluster on 127.0.0.1 started by bench/compare.py's
Cluster with the same flags (heartbeat 100 ms, election 1000 ms,
--quota-backend-bytes=8589934592; to kuberaft only if its raft-node takes the flag):

1. load: raft-bench writes keys 0..N once each, 16-byte keys, 1 KiB values, in txns of
   100 puts from 16 writers; load seconds as raft-bench measures them; the members' CPU
   (user+sys from /proc/PID/stat) from before the load until every member has applied it;
2. RSS of the 3 members (VmRSS, after the load, once every member answers a
   serializable get with the load's last revision), and data on disk (du of the
   3 data directories);
3. `etcdctl snapshot save` from the leader, seconds;
4. steady-state writes: 20,000 single puts of 1 KiB over the loaded keys (16 clients),
   bytes written to disk by the members over that run (/proc/PID/io write_bytes, read
   2 s after the run so that batched commits are counted), per put;
5. follower kill -9 -> serves again: kill -9 of a follower, restarted at once; from
   the kill until a serializable get on it answers with the latest revision;
6. whole cluster kill -9 -> linearizable read: kill -9 of all three, all restarted; from
   the kill until a linearizable get on any member answers (with the latest revision).

Steps 5 and 6 run --restart-trials times each (medians in the table).

    python3 bench/datasize.py --sizes 100000,400000,2000000

Writes bench/DATASIZE.md, prints the table. Data directories live in a temporary
directory under /tmp (the same disk as the repository here), deleted after each system
at each size; disk space is checked with df before each. Member logs and the raw numbers
are kept in /tmp/kuberaft-datasize-results-*/. Every process it starts is stopped by its
PID. If a system fails at a size (a member exits, a step errors or stalls), the step,
the error and the tail of every member's log go into the report, and the run goes on.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (Cluster, environment, binaries)
from compare import RAFT_BENCH, RAFT_NODE, ROOT, Cluster  # noqa: E402

KEY_BYTES = 16
VALUE_BYTES = 1024
TXN_OPS = 100
WRITERS = 16
TIMING = ["--heartbeat-interval=100", "--election-timeout=1000"]
QUOTA = ["--quota-backend-bytes=8589934592"]
SAME_COMPACTION = ["--auto-compaction-mode=revision", "--auto-compaction-retention=10000"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
ETCDCTL_ENV = dict(os.environ, ETCDCTL_API="3")
# Disk needed per key for one system (3 members, WAL and store, with slack: etcd 3.4
# took 7.6 KB per key in issue 15's table, 7.4 KB at 2M keys here) plus a backup file and headroom.
DISK_BYTES_PER_KEY = 8000
DISK_HEADROOM = 4 << 30


def log(*parts):
    print("[datasize]", time.strftime("%H:%M:%S"), *parts, flush=True)


class StepFailed(Exception):
    pass


def build():
    log("building raft-node and raft-bench (release)")
    subprocess.run(["nice", "-n", "10", "cargo", "build", "--release", "-q", "--locked", "-p", "kuberaft-node",
                    "-p", "kuberaft-bench", "--bin", "raft-node", "--bin", "raft-bench"], cwd=ROOT, check=True)


def ports_free(base):
    for port in range(base, base + 23):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_base(start):
    base = start
    for _ in range(30):
        if ports_free(base):
            return base
        base += 300
    raise RuntimeError(f"no free block of ports from {start}")


def disk_free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def df_line(path):
    return subprocess.run(["df", "-h", path], capture_output=True, text=True).stdout.strip().splitlines()[-1]


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    return out


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def proc_write_bytes(pid):
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError(f"no write_bytes in /proc/{pid}/io")


def du_bytes(path):
    r = subprocess.run(["du", "-s", "--block-size=1", path], capture_output=True, text=True, check=True)
    return int(r.stdout.split()[0])


def check_alive(cluster, step):
    dead = {i: p.returncode for i, p in cluster.procs.items() if p.poll() is not None}
    if dead:
        raise StepFailed(f"{step}: member(s) exited: " +
                         ", ".join(f"{cluster.name}{i} with status {rc}" for i, rc in dead.items()))


def spawn(cluster, i):
    """Starts member i without waiting or writing (Cluster.start puts a key)."""
    out = open(os.path.join(cluster.dir, f"member{i}.log"), "ab")
    cluster.procs[i] = subprocess.Popen(cluster.command(i), stdout=out, stderr=out)


def run_bench(args, timeout, step):
    try:
        r = subprocess.run([RAFT_BENCH] + args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"{step}: raft-bench did not finish within {timeout:.0f} s")
    if r.returncode != 0:
        raise StepFailed(f"{step}: raft-bench exited {r.returncode}: {(r.stderr or r.stdout).strip()[-2000:]}")
    return r


def latest_revision(cluster, i):
    r = subprocess.run(["etcdctl", f"--endpoints={cluster.endpoints()[i]}", "--command-timeout=10s", "get", "__ready",
                        "-w", "json"], env=ETCDCTL_ENV, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise StepFailed(f"latest revision from {cluster.name}{i}: {r.stderr.strip()}")
    return int(json.loads(r.stdout)["header"]["revision"])


def wait_revision(cluster, members, revision, serializable, timeout, raw, tag):
    """UNIX seconds at which a get on one of `members` answered with >= revision."""
    path = os.path.join(raw, f"{tag}.json")
    run_bench([f"--endpoints={','.join(cluster.endpoints()[i] for i in members)}", "--workload=wait-revision",
               f"--min-revision={revision}", f"--key-bytes={KEY_BYTES}", f"--duration={int(timeout)}s",
               f"--label={cluster.name}", f"--json={path}"] + (["--serializable"] if serializable else []),
              timeout + 30, tag)
    return json.load(open(path))["unix_ms"] / 1000.0


def find_leader(cluster, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        leader = cluster.leader()
        if leader is not None:
            return leader
        time.sleep(0.2)
    raise StepFailed(f"{cluster.name}: no leader within {timeout} s")


def measure(cluster, keys, args, raw):
    """One system at one size; returns the row (raises StepFailed)."""
    tag = f"{cluster.name}-{keys}"
    row = {"system": cluster.name, "keys": keys, "flags": cluster.extra}
    cluster.start()
    pids = {i: p.pid for i, p in cluster.procs.items()}
    leader = find_leader(cluster)
    eps = ",".join(cluster.endpoints())

    # 1. load
    log(f"{tag}: load")
    cpu0 = sum(proc_cpu_seconds(p) for p in pids.values())
    path = os.path.join(raw, f"{tag}-load.json")
    run_bench([f"--endpoints={eps}", "--workload=load", f"--clients={WRITERS}", "--connections=8", f"--keys={keys}",
               f"--key-bytes={KEY_BYTES}", f"--value-bytes={VALUE_BYTES}", f"--txn-ops={TXN_OPS}",
               f"--label={cluster.name}", f"--json={path}"], 60 + keys / 1000, "load")
    loaded = json.load(open(path))
    row["load_s"] = loaded["seconds"]
    row["load_puts_per_s"] = loaded["puts_per_second"]
    row["load_retries"] = loaded["retries"]
    check_alive(cluster, "after the load")
    leader = find_leader(cluster)
    revision = latest_revision(cluster, leader)
    for i in range(3):  # every member has applied the load
        wait_revision(cluster, [i], revision, True, 300, raw, f"{tag}-applied-{i}")
    row["load_cpu_s"] = sum(proc_cpu_seconds(p) for p in pids.values()) - cpu0
    row["load_cpu_us_per_put"] = row["load_cpu_s"] / keys * 1e6

    # 2. memory and disk
    status = [proc_status(pids[i]) for i in range(3)]
    row["rss_mb"] = sum(s["VmRSS"] for s in status) / 1e6
    row["rss_anon_mb"] = sum(s.get("RssAnon", 0) for s in status) / 1e6
    row["rss_file_mb"] = sum(s.get("RssFile", 0) for s in status) / 1e6
    row["hwm_mb"] = sum(s["VmHWM"] for s in status) / 1e6
    row["disk_mb"] = sum(du_bytes(os.path.join(cluster.dir, f"{cluster.name}{i}")) for i in range(3)) / 1e6
    log(f"{tag}: load {row['load_s']:.1f} s, RSS {row['rss_mb']:.0f} MB, disk {row['disk_mb']:.0f} MB")

    # 3. snapshot save
    backup = os.path.join(cluster.dir, "backup.db")
    t0 = time.time()
    try:
        r = subprocess.run(["etcdctl", f"--endpoints={cluster.endpoints()[leader]}", "--command-timeout=900s",
                            "snapshot", "save", backup], env=ETCDCTL_ENV, capture_output=True, text=True,
                           timeout=960)
    except subprocess.TimeoutExpired:
        raise StepFailed("snapshot save: etcdctl did not finish within 960 s")
    row["snapshot_s"] = time.time() - t0
    if r.returncode != 0:
        raise StepFailed(f"snapshot save: etcdctl exited {r.returncode}: {(r.stderr or r.stdout).strip()[-2000:]}")
    row["snapshot_mb"] = os.path.getsize(backup) / 1e6
    os.remove(backup)
    check_alive(cluster, "after snapshot save")
    log(f"{tag}: snapshot save {row['snapshot_s']:.2f} s ({row['snapshot_mb']:.0f} MB)")

    # 4. steady-state bytes written per put
    w0 = sum(proc_write_bytes(p) for p in pids.values())
    c0 = sum(proc_cpu_seconds(p) for p in pids.values())
    path = os.path.join(raw, f"{tag}-puts.json")
    run_bench([f"--endpoints={eps}", "--workload=put", f"--clients={WRITERS}", "--connections=8", f"--keys={keys}",
               f"--key-bytes={KEY_BYTES}", f"--value-bytes={VALUE_BYTES}", f"--count={args.puts}", "--duration=600s",
               f"--label={cluster.name}", f"--json={path}"], 660, "steady puts")
    time.sleep(2)
    puts = json.load(open(path))[0]
    row["put_ops"] = puts["ops"]
    row["put_errors"] = puts["errors"]
    row["put_ops_per_s"] = puts["ops_per_second"]
    row["put_write_bytes"] = sum(proc_write_bytes(p) for p in pids.values()) - w0
    row["write_bytes_per_put"] = row["put_write_bytes"] / max(puts["ops"], 1)
    row["put_cpu_us_per_put"] = (sum(proc_cpu_seconds(p) for p in pids.values()) - c0) / max(puts["ops"], 1) * 1e6
    check_alive(cluster, "after the steady puts")
    log(f"{tag}: {puts['ops']} puts, {row['write_bytes_per_put']:.0f} bytes written per put")

    # 5. follower kill -9
    row["follower_ms_trials"] = []
    for trial in range(args.restart_trials):
        leader = find_leader(cluster)
        revision = latest_revision(cluster, leader)
        for i in range(3):
            wait_revision(cluster, [i], revision, True, 300, raw, f"{tag}-follower-ready-{trial}-{i}")
        follower = next(i for i in range(3) if i != leader)
        t_kill = time.time()
        cluster.procs[follower].send_signal(signal.SIGKILL)
        cluster.procs[follower].wait()
        spawn(cluster, follower)
        t = wait_revision(cluster, [follower], revision, True, 300, raw, f"{tag}-follower-{trial}")
        row["follower_ms_trials"].append((t - t_kill) * 1000)
        log(f"{tag}: follower restart {row['follower_ms_trials'][-1]:.0f} ms")
    row["follower_ms"] = statistics.median(row["follower_ms_trials"])

    # 6. whole cluster kill -9
    row["cluster_ms_trials"] = []
    for trial in range(args.restart_trials):
        leader = find_leader(cluster)
        revision = latest_revision(cluster, leader)
        t_kill = time.time()
        for p in cluster.procs.values():
            p.send_signal(signal.SIGKILL)
        for p in cluster.procs.values():
            p.wait()
        for i in range(3):
            spawn(cluster, i)
        t = wait_revision(cluster, [0, 1, 2], revision, False, 300, raw, f"{tag}-cluster-{trial}")
        row["cluster_ms_trials"].append((t - t_kill) * 1000)
        log(f"{tag}: whole cluster restart {row['cluster_ms_trials'][-1]:.0f} ms")
    row["cluster_ms"] = statistics.median(row["cluster_ms_trials"])
    check_alive(cluster, "at the end")
    return row


def log_tails(cluster, lines=40):
    out = []
    for i in range(3):
        path = os.path.join(cluster.dir, f"member{i}.log")
        try:
            text = open(path, errors="replace").read().splitlines()
        except OSError:
            text = ["(no log)"]
        out.append((f"{cluster.name}{i}", text[-lines:]))
    return out


def one(kind, keys, args, work_root, raw, logs):
    name = kind
    start = {"kuberaft": 21000, "etcd": 21500}[kind]
    need = keys * DISK_BYTES_PER_KEY + DISK_HEADROOM
    have = disk_free(work_root)
    if have < need:
        return {"system": kind, "keys": keys,
                "failed": f"not run: {have / 1e9:.1f} GB free on {work_root} ({df_line(work_root)}), "
                          f"{need / 1e9:.1f} GB needed"}
    work = tempfile.mkdtemp(prefix=f"{kind}-{keys}-", dir=work_root)
    quota = QUOTA if kind == "etcd" or kuberaft_has_quota() else []
    # kuberaft compacts by default (retention 10,000 revisions), etcd 3.4 does not: with
    # --same-compaction etcd keeps the same retention, so both pay for deleting history.
    compaction = SAME_COMPACTION if kind == "etcd" and args.same_compaction else []
    cluster = Cluster("etcd34" if kind == "etcd" else kind, free_base(start), work, TIMING + quota + compaction, name=name)
    row = None
    try:
        row = measure(cluster, keys, args, raw)
    except (StepFailed, RuntimeError, subprocess.SubprocessError, OSError, ValueError, KeyError) as e:
        exits = {f"{cluster.name}{i}": p.poll() for i, p in cluster.procs.items()}
        log(f"{kind} at {keys} keys FAILED: {e}; member exit statuses {exits}")
        row = {"system": kind, "keys": keys, "failed": str(e), "exits": exits, "log_tails": log_tails(cluster)}
    finally:
        cluster.stop()
        dest = os.path.join(logs, f"{kind}-{keys}")
        os.makedirs(dest, exist_ok=True)
        for i in range(3):
            src = os.path.join(cluster.dir, f"member{i}.log")
            if os.path.exists(src):
                shutil.copy(src, dest)
        shutil.rmtree(work, ignore_errors=True)
    return row


def kuberaft_has_quota():
    """raft-node takes --quota-backend-bytes (etcd's flag, 2 GiB default) since the quota landed."""
    r = subprocess.run([RAFT_NODE, "--help"], capture_output=True, text=True)
    return "--quota-backend-bytes" in r.stdout


def fmt_keys(n):
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def table(rows, sizes):
    head = ["| keys | system | load s | RSS of 3 members MB | data on disk MB | `snapshot save` s | "
            "follower kill -9 → serves again ms | whole cluster kill -9 → linearizable read ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for keys in sizes:
        for system in ("kuberaft", "etcd"):
            r = rows.get((system, keys))
            label = "etcd 3.4" if system == "etcd" else system
            if r is None:
                continue
            if "failed" in r:
                head.append(f"| {fmt_keys(keys)} | {label} | failed: see below | | | | | |")
                continue
            head.append(f"| {fmt_keys(keys)} | {label} | {r['load_s']:.1f} | {r['rss_mb']:,.0f} | {r['disk_mb']:,.0f} | "
                        f"{r['snapshot_s']:.2f} | {r['follower_ms']:,.0f} | {r['cluster_ms']:,.0f} |")
    return head


def ratio(a, b):
    return f"{a / b:.2f}" if b else "n/a"


def criteria(ok, sizes):
    """Issue 15's measurable conditions, each with the numbers behind it."""
    both = [keys for keys in sizes if ("kuberaft", keys) in ok and ("etcd", keys) in ok]
    out = []

    def check(text, passed):
        out.append(f"- {'met' if passed else '**not met**'}: {text}")

    for col, what, unit in (("rss_mb", "member RSS", "MB"), ("follower_ms", "follower restart", "ms"),
                            ("cluster_ms", "whole-cluster restart", "ms"), ("snapshot_s", "`snapshot save`", "s")):
        digits = 2 if unit == "s" else 0
        worse = [f"{fmt_keys(k)} ({ok[('kuberaft', k)][col]:,.{digits}f} vs {ok[('etcd', k)][col]:,.{digits}f} {unit})"
                 for k in both if ok[("kuberaft", k)][col] > ok[("etcd", k)][col]]
        check(f"kuberaft's {what} at most etcd's at every size" +
              (f"; higher at {', '.join(worse)}" if worse else ""), not worse)
    if ("kuberaft", 400000) in ok and ("kuberaft", 2000000) in ok:
        for col, what in (("follower_ms", "follower restart"), ("cluster_ms", "whole-cluster restart")):
            a, b = ok[("kuberaft", 400000)][col], ok[("kuberaft", 2000000)][col]
            check(f"kuberaft's {what} grows less than 2x from 400k to 2M keys: {a:,.0f} -> {b:,.0f} ms, "
                  f"{b / a:.1f}x", b / a < 2)
    if ("kuberaft", 100000) in ok and ("kuberaft", 2000000) in ok:
        a, b = ok[("kuberaft", 100000)]["load_puts_per_s"], ok[("kuberaft", 2000000)]["load_puts_per_s"]
        check(f"kuberaft's load throughput at 2M keys at least 80% of that at 100k: {b:,.0f} vs {a:,.0f} puts/s, "
              f"{b / a:.0%}", b >= 0.8 * a)
    worse = [f"{fmt_keys(k)} ({ok[('kuberaft', k)]['write_bytes_per_put'] / ok[('etcd', k)]['write_bytes_per_put']:.2f}x)"
             for k in both]
    check("bytes written to disk per put in steady state at most 2x etcd's: " + ", ".join(worse),
          all(ok[("kuberaft", k)]["write_bytes_per_put"] <= 2 * ok[("etcd", k)]["write_bytes_per_put"] for k in both))
    return out


def write_report(args, rows, sizes, env, results_dir, started, elapsed):
    ok = {k: r for k, r in rows.items() if "failed" not in r}
    lines = ["# kuberaft vs etcd 3.4 as the data grows", "",
             f"Generated by `{args.command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} "
             f"({elapsed / 60:.0f} minutes). Issue 15's table, re-run.", "", "## Machine and versions", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += ["", "## Settings", "",
              "- Each system, at each size, is a fresh 3-member cluster on 127.0.0.1 (kuberaft then etcd, the order "
              "reversed every other size), data directories in a new directory under /tmp on the disk above, "
              "deleted afterwards. fsync on for both (their defaults).",
              "- Same flags for both: `--heartbeat-interval=100 --election-timeout=1000` (etcd's defaults) and "
              "`--quota-backend-bytes=8589934592` (8 GiB; " +
              ("raft-node takes it too" if kuberaft_has_quota() else
               "on etcd only: this raft-node has no quota flag") + "). "
              "Everything else at each system's defaults (etcd 3.4: snapshot-count 100,000, " +
              ("auto compaction as kuberaft's by `--same-compaction`: `--auto-compaction-mode=revision "
               "--auto-compaction-retention=10000`; " if args.same_compaction else "no auto compaction; ") +
              "kuberaft: snapshot-count 10,000, auto-compaction retention 10,000 revisions).",
              f"- Load: raft-bench `--workload=load`: keys 0..N written once each, {KEY_BYTES}-byte keys, "
              f"{VALUE_BYTES}-byte values, txns of {TXN_OPS} puts, {WRITERS} writers over 8 gRPC connections to "
              "all 3 endpoints. Load s as raft-bench measures it (first txn sent to last txn acknowledged).",
              "- RSS: VmRSS of the 3 members summed, once every member answers a serializable get with the load's "
              "last revision. Data on disk: `du` of the 3 data directories (allocated bytes).",
              "- `snapshot save`: `etcdctl snapshot save` (etcdctl 3.4) against the leader, wall time.",
              "- Follower kill -9 → serves again: kill -9 of a follower, restarted at once with the same command; "
              "from the kill until a serializable get on it answers with the latest revision (raft-bench "
              "`--workload=wait-revision`, polling every 5 ms). Whole cluster kill -9: kill -9 of all three, all "
              "restarted; from the kill until a linearizable get on any member answers with the latest revision. "
              f"Median of {args.restart_trials} trial(s) each.",
              f"- Steady-state writes: {args.puts:,} single puts of {VALUE_BYTES} B over the loaded keys "
              f"({WRITERS} clients) after the load; bytes written to disk = the members' /proc/PID/io write_bytes "
              "over the run (read 2 s after it), summed over the 3 members, per put.",
              "- CPU: user+sys of the 3 members (/proc/PID/stat) from the start of the load until every member "
              "has applied it, per put.", "", "## The table", ""]
    lines += table(rows, sizes)
    lines += ["", "## Ratios kuberaft / etcd", "",
              "| keys | load s | RSS | data on disk | `snapshot save` s | follower restart | whole cluster restart |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for keys in sizes:
        k, e = ok.get(("kuberaft", keys)), ok.get(("etcd", keys))
        if not k or not e:
            continue
        lines.append(f"| {fmt_keys(keys)} | {ratio(k['load_s'], e['load_s'])} | {ratio(k['rss_mb'], e['rss_mb'])} | "
                     f"{ratio(k['disk_mb'], e['disk_mb'])} | {ratio(k['snapshot_s'], e['snapshot_s'])} | "
                     f"{ratio(k['follower_ms'], e['follower_ms'])} | {ratio(k['cluster_ms'], e['cluster_ms'])} |")
    lines += ["", "## Writes to disk and CPU per put", "",
              "| keys | system | steady puts/s | bytes written per put (3 members) | load puts/s | "
              "load CPU µs per put (3 members) | steady-put CPU µs per put (3 members) |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for keys in sizes:
        for system in ("kuberaft", "etcd"):
            r = ok.get((system, keys))
            if r:
                lines.append(f"| {fmt_keys(keys)} | {'etcd 3.4' if system == 'etcd' else system} | "
                             f"{r['put_ops_per_s']:,.0f} | {r['write_bytes_per_put']:,.0f} | "
                             f"{r['load_puts_per_s']:,.0f} | {r['load_cpu_us_per_put']:,.0f} | "
                             f"{r['put_cpu_us_per_put']:,.0f} |")
    lines += ["", "| keys | bytes written per put kuberaft / etcd | load CPU per put kuberaft / etcd |",
              "|---|---:|---:|"]
    for keys in sizes:
        k, e = ok.get(("kuberaft", keys)), ok.get(("etcd", keys))
        if k and e:
            lines.append(f"| {fmt_keys(keys)} | {ratio(k['write_bytes_per_put'], e['write_bytes_per_put'])} | "
                         f"{ratio(k['load_cpu_us_per_put'], e['load_cpu_us_per_put'])} |")
    lines += ["", "## Details", "",
              "| keys | system | RSS anon MB | RSS file-backed MB | peak RSS (VmHWM) MB | backup file MB | "
              "load retries | follower trials ms | whole cluster trials ms |", "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for keys in sizes:
        for system in ("kuberaft", "etcd"):
            r = ok.get((system, keys))
            if r:
                lines.append(f"| {fmt_keys(keys)} | {system} | {r['rss_anon_mb']:,.0f} | {r['rss_file_mb']:,.0f} | "
                             f"{r['hwm_mb']:,.0f} | {r['snapshot_mb']:,.0f} | {r['load_retries']} | "
                             f"{', '.join(f'{x:.0f}' for x in r['follower_ms_trials'])} | "
                             f"{', '.join(f'{x:.0f}' for x in r['cluster_ms_trials'])} |")
    for system in ("kuberaft", "etcd"):
        load = {keys: ok[(system, keys)]["load_puts_per_s"] for keys in sizes if (system, keys) in ok}
        if len(load) >= 2:
            lo, hi = min(load), max(load)
            lines.append(f"\n{system}: load throughput at {fmt_keys(hi)} keys is {load[hi] / load[lo]:.0%} of that "
                         f"at {fmt_keys(lo)} ({load[hi]:,.0f} vs {load[lo]:,.0f} puts/s).")
    lines += ["", "## Issue 15's \"Done when\", checked against this run", ""] + criteria(ok, sizes)
    failed = [r for r in rows.values() if "failed" in r]
    lines += ["", "## Failures", ""]
    if not failed:
        lines.append("None.")
    for r in failed:
        lines += [f"### {r['system']} at {fmt_keys(r['keys'])} keys", "", f"- {r['failed']}"]
        if r.get("exits"):
            lines.append(f"- member exit statuses (None: still running when the step failed): {r['exits']}")
        for member, tail in r.get("log_tails", []):
            lines += ["", f"Last lines of {member}'s log:", "", "```"] + [t[:300] for t in tail] + ["```"]
        lines.append("")
    lines += ["", f"Raw numbers and member logs of this run: {results_dir} (not in the repository).", ""]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "DATASIZE.md"), "w") as f:
        f.write("\n".join(lines))
    return lines


def git(*a):
    return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,400000,2000000", help="comma-separated key counts")
    parser.add_argument("--puts", type=int, default=20000, help="single puts of the steady-state write run")
    parser.add_argument("--restart-trials", type=int, default=3)
    parser.add_argument("--systems", default="kuberaft,etcd")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench"))
    parser.add_argument("--work-root", default="/tmp", help="where the data directories go")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--same-compaction", action="store_true",
                        help="etcd auto-compacts with kuberaft's default retention (10,000 revisions)")
    args = parser.parse_args()
    args.command = "python3 bench/datasize.py " + " ".join(sys.argv[1:])
    sizes = [int(s) for s in args.sizes.split(",")]
    systems = args.systems.split(",")
    if not shutil.which("etcd") or not shutil.which("etcdctl"):
        sys.exit("etcd and etcdctl (3.4) are needed: apt-get install etcd-server etcd-client")
    if not args.no_build:
        build()
    started = time.time()
    log("disk:", df_line(args.work_root))
    results_dir = tempfile.mkdtemp(prefix="kuberaft-datasize-results-", dir=args.work_root)
    raw = os.path.join(results_dir, "raw")
    logs = os.path.join(results_dir, "logs")
    os.makedirs(raw)
    env = compare.environment()
    env["disk (df of the data directory)"] = df_line(args.work_root)
    env["memory"] = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    env["etcdctl"] = subprocess.run(["etcdctl", "version"], env=ETCDCTL_ENV, capture_output=True,
                                    text=True).stdout.splitlines()[0]
    env["kuberaft commit"] = (f"{git('rev-parse', '--short', 'HEAD')} on branch {git('branch', '--show-current')} "
                              f"(main at {git('rev-parse', '--short', 'main')}; "
                              f"uncommitted changes: {'yes' if git('status', '--porcelain') else 'none'})")
    env["raft-node binary"] = f"{RAFT_NODE} (release)"
    rows = {}
    for n, keys in enumerate(sizes):
        order = systems if n % 2 == 0 else list(reversed(systems))
        for kind in order:
            log(f"{kind} at {keys} keys; disk: {df_line(args.work_root)}")
            rows[(kind, keys)] = one(kind, keys, args, args.work_root, raw, logs)
            with open(os.path.join(results_dir, "rows.json"), "w") as f:
                json.dump([r for r in rows.values()], f, indent=1)
    lines = write_report(args, rows, sizes, env, results_dir, started, time.time() - started)
    print("\n".join(table(rows, sizes)))
    print()
    for keys in sizes:
        for system in systems:
            r = rows.get((system, keys), {})
            if "failed" in r:
                print(f"{system} at {keys} keys failed: {r['failed']}")
            elif r:
                print(f"{system} {fmt_keys(keys)}: {r['write_bytes_per_put']:,.0f} bytes written per put, "
                      f"load CPU {r['load_cpu_us_per_put']:,.0f} µs/put, {r['load_puts_per_s']:,.0f} puts/s")
    log("wrote", os.path.join(args.out, "DATASIZE.md"), f"({len(lines)} lines); raw data in", results_dir)


if __name__ == "__main__":
    main()
