#!/usr/bin/env python3
"""Side-by-side benchmark of kuberaft, etcd 3.6 and etcd 3.4 on this machine.

Starts a 3-member cluster of each system on 127.0.0.1 (kuberaft; etcd 3.6 built from
its Go modules by scripts/go-peers.sh, the main comparison; etcd 3.4 from Debian's
etcd-server, a second column), all with fsync on and their data on the same disk, and
drives them with the same load generators:

- raft-bench (built on the etcd-client crate): every workload (put, linearizable get,
  serializable get, 90/10 mix) at every client count, alternating systems (A B C, then
  C B A, ...) for several rounds;
- etcd's own benchmark tool (tools/benchmark, built by scripts/go-peers.sh):
  `benchmark put` and `benchmark range --consistency l` / `s`, alternating too;
- for every point, the CPU the three member processes used (user+sys from
  /proc/PID/stat) divided by the operations served: far steadier than throughput on a
  shared machine;
- failover: kill -9 of the leader under a steady write load, time until the first
  acknowledged write, N trials per system (etcd with its defaults, 100 ms / 1000 ms,
  kuberaft with the same fixed timing, and kuberaft with the timing the operator's
  adaptive rule picks from the latency the members measured under a write load
  (`raftctl timing suggest`, the RaftCluster's default bounds));
- ablation: kuberaft with pipelining and batching off (one entry per append, one
  append in flight, one fsync per WAL write) against the default, at 64 clients.

Writes bench/RESULTS.md (environment, versions, settings, medians, kuberaft/etcd
ratios) and bench/results.png (throughput and p99 latency against clients).

    python3 bench/compare.py            # the full run (about 30 minutes)
    python3 bench/compare.py --quick    # a smoke run (a few minutes)

Every process it starts is stopped by its PID when it ends.
"""
import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import re
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
RAFT_NODE = os.path.join(TARGET, "release", "raft-node")
RAFT_BENCH = os.path.join(TARGET, "release", "raft-bench")
RAFTCTL = os.path.join(TARGET, "release", "raftctl")


def log(*parts):
    print("[compare]", *parts, flush=True)


# The etcd binaries of each system, and etcd's benchmark tool (set by ensure_tools).
ETCD_BINS = {"etcd34": "etcd"}
BENCHMARK = None
SYSTEMS = ["kuberaft", "etcd36", "etcd34"]
TITLES = {"kuberaft": "kuberaft", "etcd36": "etcd 3.6", "etcd34": "etcd 3.4"}


def ensure_tools():
    global BENCHMARK
    if not shutil.which("etcd") or not shutil.which("etcdctl"):
        log("installing Debian etcd-server and etcd-client")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "install", "-y", "-q", "etcd-server", "etcd-client"], check=True)
    log("etcd 3.6 and etcd's benchmark tool from their Go modules (scripts/go-peers.sh; cached once built)")
    env = subprocess.run(["bash", os.path.join(ROOT, "scripts", "go-peers.sh"), "--print-env", "--only",
                          "etcd,benchmark"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    peers = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
    ETCD_BINS["etcd36"] = peers["ETCD36_BIN"]
    BENCHMARK = peers["BENCHMARK_BIN"]
    log("building raft-node, raft-bench and raftctl (release)")
    subprocess.run(["cargo", "build", "--release", "-q", "--locked", "-p", "kuberaft-node", "-p", "kuberaft-bench",
                    "-p", "kuberaft-operator", "--bin", "raft-node", "--bin", "raft-bench", "--bin", "raftctl"],
                   cwd=ROOT, check=True)


class Cluster:
    """Three members of one system; `kind` is 'kuberaft', 'etcd36' or 'etcd34'."""

    def __init__(self, kind, base_port, workdir, extra=None, name=None):
        self.kind = kind
        self.name = name or kind
        self.base = base_port
        self.dir = os.path.join(workdir, self.name)
        self.extra = extra or []
        self.procs = {}
        os.makedirs(self.dir, exist_ok=True)

    def ports(self, i):
        # Below the kernel's ephemeral range, so that no outgoing connection holds them.
        base = self.base + 10 * i
        return base, base + 1, base + 2  # client, peer, metrics

    def endpoints(self):
        return [f"127.0.0.1:{self.ports(i)[0]}" for i in range(3)]

    def initial_cluster(self):
        return ",".join(f"{self.name}{i}=http://127.0.0.1:{self.ports(i)[1]}" for i in range(3))

    def command(self, i):
        client, peer, metrics = self.ports(i)
        member = f"{self.name}{i}"
        common = [
            f"--name={member}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster={self.initial_cluster()}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.name}-bench",
        ]
        if self.kind.startswith("etcd"):
            return [ETCD_BINS[self.kind], f"--data-dir={os.path.join(self.dir, member)}",
                    f"--listen-metrics-urls=http://127.0.0.1:{metrics}"] + common + self.extra
        return [RAFT_NODE, f"--data-dir={os.path.join(self.dir, member)}",
                f"--listen-metrics-urls=http://127.0.0.1:{metrics}"] + common + self.extra

    def start(self, i=None):
        for j in ([i] if i is not None else range(3)):
            out = open(os.path.join(self.dir, f"member{j}.log"), "ab")
            self.procs[j] = subprocess.Popen(self.command(j), stdout=out, stderr=out)
        self.wait_ready()

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            ok = subprocess.run(
                ["etcdctl", f"--endpoints={','.join(self.endpoints())}", "--command-timeout=2s",
                 "put", "__ready", "x"],
                env=dict(os.environ, ETCDCTL_API="3"), capture_output=True)
            if ok.returncode == 0 and self.leader() is not None:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready; see {self.dir}")

    def leader(self):
        """Index of the leader, or None."""
        if self.kind == "kuberaft":
            for i in range(3):
                if i not in self.procs or self.procs[i].poll() is not None:
                    continue
                try:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{self.ports(i)[2]}/metrics", timeout=1).read()
                except OSError:
                    continue
                if b"kuberaft_role 3\n" in body:
                    return i
            return None
        for i in range(3):
            if i not in self.procs or self.procs[i].poll() is not None:
                continue
            r = subprocess.run(["etcdctl", f"--endpoints={self.endpoints()[i]}", "--command-timeout=2s",
                                "endpoint", "status", "-w", "json"],
                               env=dict(os.environ, ETCDCTL_API="3"), capture_output=True, text=True)
            if r.returncode != 0:
                continue
            status = json.loads(r.stdout)[0]["Status"]
            if status["header"]["member_id"] == status["leader"]:
                return i
        return None

    def cpu_seconds(self):
        """user+sys CPU seconds of the running members, from /proc/PID/stat."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for p in self.procs.values():
            try:
                fields = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        return total

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = {}


def bench(cluster, workload, clients, duration, out_dir, tag):
    """raft-bench, one client count per run so each point gets its own CPU figure."""
    rows = []
    preload = workload != "put"
    if preload:
        # The keys reads look up are written first, outside the measured CPU (raft-bench's
        # own preload is 10,000 sequential puts: it would be counted in CPU per read).
        preload_keys(cluster, out_dir, tag)
    for c in clients:
        path = os.path.join(out_dir, f"{tag}-{c}.json")
        cmd = [RAFT_BENCH, f"--endpoints={','.join(cluster.endpoints())}", f"--workload={workload}",
               f"--clients={c}", f"--duration={duration}s",
               "--connections=8", f"--label={cluster.name}", f"--json={path}", "--keys=10000",
               *(["--no-preload"] if preload else [])]
        cpu = cluster.cpu_seconds()
        subprocess.run(cmd, check=True, capture_output=True)
        cpu = cluster.cpu_seconds() - cpu
        for r in json.load(open(path)):
            ops = r["ops_per_second"] * duration
            r["cpu_us_per_op"] = cpu * 1e6 / ops if ops else float("nan")
            rows.append(r)
    return rows


def preload_keys(cluster, out_dir, tag):
    """Writes the 10,000 keys raft-bench's reads look up (as its own preload does: same
    keys, 256-byte values), in txns of 100 from 16 writers."""
    subprocess.run([RAFT_BENCH, f"--endpoints={','.join(cluster.endpoints())}", "--workload=load",
                    "--keys=10000", "--txn-ops=100", "--clients=16", "--connections=8", f"--label={cluster.name}",
                    f"--json={os.path.join(out_dir, f'{tag}-preload.json')}"],
                   check=True, capture_output=True)


def etcd_benchmark(cluster, test, clients, total, out_dir, tag):
    """etcd's own benchmark tool: `put` (256-byte values over 10,000 keys) or
    `range-l` / `range-s` (one key, linearizable / serializable). Parses its summary."""
    common = [BENCHMARK, f"--endpoints={','.join(cluster.endpoints())}", "--conns=8", f"--clients={clients}"]
    if test == "put":
        cmd = common + ["put", "--key-size=8", "--val-size=256", "--key-space-size=10000", f"--total={total}"]
    else:
        cmd = common + ["range", "bench-key", f"--consistency={test[-1]}", f"--total={total}"]
    cpu = cluster.cpu_seconds()
    start = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    elapsed = time.time() - start
    cpu = cluster.cpu_seconds() - cpu
    with open(os.path.join(out_dir, f"{tag}.txt"), "w") as f:
        f.write(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"benchmark {test} on {cluster.name} failed: {r.stderr[-500:]}")
    rps = re.search(r"Requests/sec:\s*([0-9.]+)", r.stdout)
    p99 = re.search(r"99% in ([0-9.]+) secs", r.stdout)
    return {"label": cluster.name, "workload": f"benchmark {test}", "clients": clients,
            "ops_per_second": float(rps.group(1)) if rps else total / elapsed,
            "p99_ms": float(p99.group(1)) * 1000 if p99 else float("nan"),
            "cpu_us_per_op": cpu * 1e6 / total}


def failover_trial(cluster, out_dir, tag):
    leader = cluster.leader()
    if leader is None:
        cluster.wait_ready()
        leader = cluster.leader()
    pid = cluster.procs[leader].pid
    path = os.path.join(out_dir, f"{tag}.json")
    subprocess.run([RAFT_BENCH, f"--endpoints={','.join(cluster.endpoints())}", "--workload=failover",
                    f"--kill-pid={pid}", "--kill-after=2s", "--connections=4",
                    f"--label={cluster.name}", f"--json={path}"], check=True, capture_output=True)
    cluster.procs[leader].wait()
    cluster.start(leader)  # the killed member comes back before the next trial
    return json.load(open(path))["failover_ms"]


def apply_adaptive_timing(cluster):
    """Asks `raftctl timing suggest` for the operator's adaptive rule (default bounds:
    heartbeat 20-500 ms, election 200-5000 ms) and sets what it says."""
    eps = ",".join(cluster.endpoints())
    r = subprocess.run([RAFTCTL, f"--endpoints={eps}", "-o", "json", "timing", "suggest"],
                       capture_output=True, text=True, check=True)
    s = json.loads(r.stdout)
    subprocess.run([RAFTCTL, f"--endpoints={eps}", "timing", "set",
                    f"--heartbeat-interval={s['heartbeat_interval_ms']}",
                    f"--election-timeout={s['election_timeout_ms']}"], capture_output=True, check=True)
    time.sleep(1)  # every member applies the committed timing entry
    return s


def environment():
    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        # datasize.py compares with etcd 3.4 only and sets up neither 3.6 nor the tool.
        **({"etcd 3.6": first_line([ETCD_BINS["etcd36"], "--version"])} if "etcd36" in ETCD_BINS else {}),
        "etcd 3.4": first_line([ETCD_BINS["etcd34"], "--version"]),
        **({"etcd benchmark tool": BENCHMARK} if BENCHMARK else {}),
        "raft-node": first_line([RAFT_NODE, "--version"]),
        "disk (df of the data directory)": subprocess.run(["df", "-h", tempfile.gettempdir()], capture_output=True,
                                                          text=True).stdout.strip().splitlines()[-1],
    }


def median_rows(rows):
    """{(system, workload, clients): {metric: median}} over rounds."""
    grouped = {}
    for r in rows:
        grouped.setdefault((r["label"], r["workload"], r["clients"]), []).append(r)
    metrics = ("ops_per_second", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_op")
    return {k: {m: statistics.median(x[m] for x in v) for m in metrics if all(m in x for x in v)}
            for k, v in grouped.items()}


def chart(medians, clients, workloads, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True)
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(workloads), figsize=(4 * len(workloads), 7), squeeze=False)
    for col, workload in enumerate(workloads):
        for system, style in (("kuberaft", "o-"), ("etcd36", "s--"), ("etcd34", "^:")):
            xs = [c for c in clients if (system, workload, c) in medians]
            axes[0][col].plot(xs, [medians[(system, workload, c)]["ops_per_second"] for c in xs], style,
                              label=TITLES[system])
            axes[1][col].plot(xs, [medians[(system, workload, c)]["p99_ms"] for c in xs], style,
                              label=TITLES[system])
        axes[0][col].set_title(workload)
        axes[0][col].set_ylabel("ops/s")
        axes[1][col].set_ylabel("p99 latency (ms)")
        for row in (0, 1):
            axes[row][col].set_xscale("log", base=2)
            axes[row][col].set_xlabel("clients")
            axes[row][col].legend()
            axes[row][col].grid(True, alpha=0.3)
    fig.suptitle("kuberaft vs etcd 3.6 and 3.4, 3 members on 127.0.0.1, fsync on (medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    # A SIGTERM (e.g. from `timeout`) unwinds through the finally blocks below, so the
    # members this run started are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per point")
    parser.add_argument("--clients", default="1,16,64,256")
    parser.add_argument("--failover-trials", type=int, default=10)
    parser.add_argument("--benchmark-clients", default="64,256", help="client counts for etcd's benchmark tool")
    parser.add_argument("--benchmark-total", type=int, default=20000, help="requests per etcd benchmark run")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.clients, args.failover_trials = 1, 1, "1,16", 1
        args.benchmark_clients, args.benchmark_total = "16", 2000
    clients = [int(c) for c in args.clients.split(",")]
    os.makedirs(args.out, exist_ok=True)
    workloads = ["put", "get", "get-serializable", "mixed"]
    ensure_tools()
    work = tempfile.mkdtemp(prefix="kuberaft-compare-")
    raw = os.path.join(work, "raw")
    os.makedirs(raw)
    timing = ["--heartbeat-interval=100", "--election-timeout=1000"]
    kuberaft = Cluster("kuberaft", 24000, work, timing)
    etcd36 = Cluster("etcd36", 25000, work, timing)
    etcd34 = Cluster("etcd34", 28000, work, timing)
    ablated = Cluster("kuberaft", 26000, work, timing + ["--ablate-pipelining-and-batching"],
                      name="ablated")
    adaptive = Cluster("kuberaft", 27000, work, timing, name="adaptive")
    clusters = [kuberaft, etcd36, etcd34]
    rows, tool_rows, failovers, ablation = [], [], {"kuberaft": [], "etcd36": [], "etcd34": [], "adaptive": []}, []
    tool_clients = [int(c) for c in args.benchmark_clients.split(",")]
    adaptive_timing = None
    try:
        for c in clusters:
            log("starting", c.name)
            c.start()
            # The key etcd's `benchmark range` reads.
            subprocess.run(["etcdctl", f"--endpoints={','.join(c.endpoints())}", "put", "bench-key", "v" * 256],
                           env=dict(os.environ, ETCDCTL_API="3"), check=True, capture_output=True)
        for rnd in range(args.rounds):
            order = clusters if rnd % 2 == 0 else list(reversed(clusters))
            for workload in workloads:
                for c in order:
                    log(f"round {rnd + 1}/{args.rounds}: {workload} on {c.name}")
                    rows += bench(c, workload, clients, args.duration, raw, f"{c.name}-{workload}-{rnd}")
            for test in ("put", "range-l", "range-s"):
                for n in tool_clients:
                    for c in order:
                        log(f"round {rnd + 1}/{args.rounds}: etcd benchmark {test}, {n} clients, on {c.name}")
                        tool_rows.append(etcd_benchmark(c, test, n, args.benchmark_total, raw,
                                                        f"tool-{c.name}-{test}-{n}-{rnd}"))
        log("adaptive timing: a write load so members measure RTT and fsync, then the rule")
        adaptive.start()
        bench(adaptive, "put", [16], max(args.duration, 5), raw, "adaptive-warmup")
        adaptive_timing = apply_adaptive_timing(adaptive)
        log(f"adaptive rule: {adaptive_timing}")
        for trial in range(args.failover_trials):
            for c in clusters + [adaptive]:
                ms = failover_trial(c, raw, f"failover-{c.name}-{trial}")
                log(f"failover trial {trial + 1}: {c.name} {ms:.0f} ms")
                failovers[c.name].append(ms)
        for c in clusters + [adaptive]:
            c.stop()
        log("ablation: pipelining and batching off")
        try:
            ablated.start()
            for rnd in range(args.rounds):
                ablation += bench(ablated, "put", [64], args.duration, raw, f"ablated-{rnd}")
        except (subprocess.CalledProcessError, RuntimeError) as e:
            log(f"ablation not run: {e}")
        finally:
            ablated.stop()
        kuberaft.start()
        for rnd in range(args.rounds):
            ablation += [dict(r, label="kuberaft-default") for r in
                         bench(kuberaft, "put", [64], args.duration, raw, f"default-{rnd}")]
    finally:
        for c in clusters + [ablated, adaptive]:
            c.stop()
    medians = median_rows(rows)
    tool_medians = median_rows(tool_rows)
    write_report(args, clients, workloads, medians, failovers, ablation, environment(), adaptive_timing,
                 tool_medians, tool_clients)
    chart(medians, clients, workloads, os.path.join(args.out, "results.png"))
    log("wrote", os.path.join(args.out, "RESULTS.md"), "and results.png; raw data in", raw)


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"


def write_report(args, clients, workloads, medians, failovers, ablation, env, adaptive_timing=None,
                 tool_medians=None, tool_clients=()):
    lines = ["# kuberaft vs etcd 3.6 and etcd 3.4: results", "",
             f"Generated by `python3 bench/compare.py{' --quick' if args.quick else ''}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Medians of {args.rounds} round(s), "
             f"{args.duration} s per point, systems alternated every workload.", "",
             "## Environment", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += ["", "## Settings", "",
              "- 3 members each on 127.0.0.1, data under the same temporary directory, fsync on for all "
              "(etcd defaults; kuberaft group commit with fdatasync).",
              "- Heartbeat 100 ms, election timeout 1000 ms for all (etcd's defaults).",
              "- Load: raft-bench (etcd-client crate), 8 gRPC connections, 8-byte keys over 10,000 keys, "
              "256-byte values; get = linearizable, get-serializable = serializable, mixed = 90% get / 10% put.",
              "- CPU per op: user+sys of the three member processes (/proc/PID/stat) over the point, divided by "
              "the operations it served.",
              "", "## Throughput, latency and CPU per operation (raft-bench)", "",
              "kuberaft against etcd 3.6 (the ratio columns), etcd 3.4 beside.", "",
              "| workload | clients | kuberaft ops/s | etcd 3.6 ops/s | ratio | etcd 3.4 ops/s | "
              "kuberaft p99 ms | etcd 3.6 p99 ms | p99 ratio | etcd 3.4 p99 ms | "
              "kuberaft CPU µs/op | etcd 3.6 CPU µs/op | CPU ratio | etcd 3.4 CPU µs/op |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def row(label, c, table):
        k, e, o = (table.get((s, label, c), {}) for s in SYSTEMS)
        if not k or not e:
            return None
        def f(m, d, fmt):
            v = d.get(m)
            return fmt.format(v) if v is not None else "-"
        return (f"| {label} | {c} | {f('ops_per_second', k, '{:.0f}')} | {f('ops_per_second', e, '{:.0f}')} | "
                f"{ratio(k.get('ops_per_second'), e.get('ops_per_second'))} | {f('ops_per_second', o, '{:.0f}')} | "
                f"{f('p99_ms', k, '{:.2f}')} | {f('p99_ms', e, '{:.2f}')} | {ratio(k.get('p99_ms'), e.get('p99_ms'))} | "
                f"{f('p99_ms', o, '{:.2f}')} | {f('cpu_us_per_op', k, '{:.0f}')} | {f('cpu_us_per_op', e, '{:.0f}')} | "
                f"{ratio(k.get('cpu_us_per_op'), e.get('cpu_us_per_op'))} | {f('cpu_us_per_op', o, '{:.0f}')} |")

    for w in workloads:
        for c in clients:
            r = row(w, c, medians)
            if r:
                lines.append(r)
    if tool_medians:
        lines += ["", "## etcd's own benchmark tool (tools/benchmark)", "",
                  f"`benchmark --conns=8 --clients=N put --key-size=8 --val-size=256 --key-space-size=10000 "
                  f"--total={args.benchmark_total}` and `benchmark range bench-key --consistency=l|s "
                  f"--total={args.benchmark_total}` against each system; p99 from its latency distribution.", "",
                  lines[lines.index("| workload | clients | kuberaft ops/s | etcd 3.6 ops/s | ratio | etcd 3.4 ops/s | "
                                    "kuberaft p99 ms | etcd 3.6 p99 ms | p99 ratio | etcd 3.4 p99 ms | "
                                    "kuberaft CPU µs/op | etcd 3.6 CPU µs/op | CPU ratio | etcd 3.4 CPU µs/op |")],
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for test in ("put", "range-l", "range-s"):
            for c in tool_clients:
                r = row(f"benchmark {test}", c, tool_medians)
                if r:
                    lines.append(r)
    lines += ["", "## Failover (kill -9 of the leader under a steady write load)", "",
              "| system | trials | median ms | min ms | max ms |", "|---|---|---|---|---|"]
    for name, values in failovers.items():
        if not values:
            continue
        if name == "adaptive" and adaptive_timing:
            t = adaptive_timing
            label = (f"kuberaft, adaptive ({t['heartbeat_interval_ms']} ms / {t['election_timeout_ms']} ms "
                     f"from RTT p99 {t['rtt_p99_ms'] or 0:.1f} ms, fsync p99 {t['fsync_p99_ms'] or 0:.1f} ms)")
        else:
            label = f"{TITLES.get(name, name)} (100 ms / 1000 ms)"
        lines.append(f"| {label} | {len(values)} | {statistics.median(values):.0f} | "
                     f"{min(values):.0f} | {max(values):.0f} |")
    if failovers.get("etcd36") and failovers.get("adaptive"):
        r = statistics.median(failovers["adaptive"]) / statistics.median(failovers["etcd36"])
        lines += ["", f"Adaptive kuberaft / etcd 3.6 defaults, medians: {r:.2f}."]
    lines += ["", "## Ablation: pipelining and batching off (put, 64 clients)", ""]
    abl = {}
    for r in ablation:
        abl.setdefault(r["label"], []).append(r["ops_per_second"])
    if "ablated" in abl and "kuberaft-default" in abl:
        a, d = statistics.median(abl["ablated"]), statistics.median(abl["kuberaft-default"])
        lines += [f"- default: {d:.0f} ops/s; one entry per append, one append in flight, one fsync per WAL "
                  f"write: {a:.0f} ops/s; ratio {d / a:.1f}x."]
    else:
        lines += ["- not measured in this run (see the log)."]
    lines += ["", "![throughput and p99 latency against clients](results.png)", ""]
    with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
