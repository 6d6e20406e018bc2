#!/usr/bin/env python3
"""Where the CPU goes at 64 clients: perf over the whole machine while raft-bench puts.

Starts a 3-member kuberaft cluster as bench/compare.py does (same ports scheme, fsync on),
drives it with `raft-bench --workload put --clients 64`, and samples every CPU with
`perf record -a -g` in the middle of the run. Writes bench/PROFILE.md: CPU share per
process (the leader, the followers, the load generator, the kernel's threads) and, for
the leader and a follower, the hottest functions (self time) and the hottest call
chains (children), as perf reports them.

    python3 bench/profile.py [--seconds 20] [--clients 64] [--system kuberaft|etcd36|etcd34] [--workload put|get|...]
                             [--dwarf] [--out FILE]

`--dwarf` samples only the three members, with DWARF call graphs: the chains then go
through Rust code built without frame pointers (what bench/PROFILE.md is made with).

Needs `perf` (Debian linux-perf) and root or perf_event_paranoid <= 1. Every process it
starts is stopped by its PID when it ends.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402


def perf_report(data, *args):
    r = subprocess.run(["perf", "report", "-i", data, "--stdio", "--percent-limit", "0.5"] + list(args),
                       capture_output=True, text=True)
    return r.stdout


def top_lines(text, n):
    lines = [l.rstrip(" -") for l in text.splitlines() if l.strip() and not l.startswith("#")]
    return [l[:160] for l in lines[:n]]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--system", choices=["kuberaft", "etcd36", "etcd34"], default="kuberaft")
    parser.add_argument("--workload", choices=["put", "get", "get-serializable", "mixed"], default="put",
                        help="raft-bench's workload (get: linearizable reads)")
    parser.add_argument("--out", default=os.path.join(compare.ROOT, "bench", "PROFILE.md"))
    parser.add_argument("--dwarf", action="store_true",
                        help="sample only the three members, with DWARF call graphs (real call chains through "
                             "Rust code built without frame pointers; the per-process shares then cover the members only)")
    args = parser.parse_args()
    if not shutil.which("perf"):
        sys.exit("perf not found: apt-get install linux-perf")
    compare.ensure_tools()
    work = tempfile.mkdtemp(prefix="kuberaft-profile-")
    cluster = compare.Cluster(args.system, 28000, work, ["--heartbeat-interval=100", "--election-timeout=1000"])
    data = os.path.join(work, "perf.data")
    try:
        cluster.start()
        leader = cluster.leader()
        follower = next(i for i in range(3) if i != leader)
        pids = {cluster.procs[i].pid: ("leader" if i == leader else f"follower {i}") for i in range(3)}
        leader_pid, follower_pid = cluster.procs[leader].pid, cluster.procs[follower].pid
        preload = args.workload != "put"
        if preload:
            # Written before the profile starts, so it samples the reads only.
            compare.preload_keys(cluster, work, "profile")
        load = subprocess.Popen([compare.RAFT_BENCH, f"--endpoints={','.join(cluster.endpoints())}",
                                 f"--workload={args.workload}", f"--clients={args.clients}", f"--duration={args.seconds}s",
                                 "--connections=8", "--keys=10000", f"--json={os.path.join(work, 'load.json')}",
                                 *(["--no-preload"] if preload else [])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pids[load.pid] = "raft-bench (load)"
        time.sleep(2)
        window = max(args.seconds - 4, 3)
        if args.dwarf:
            how = ["-p", ",".join(str(p.pid) for p in cluster.procs.values()), "--call-graph", "dwarf,16384", "-F", "199"]
        else:
            how = ["-a", "-g", "-F", "499"]
        compare.log(f"perf record {' '.join(how)} for {window} s under {args.clients} clients")
        subprocess.run(["perf", "record", "-q", *how, "-o", data, "--", "sleep", str(window)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load.wait(timeout=args.seconds + 30)
        result = compare.json.load(open(os.path.join(work, "load.json")))
    finally:
        cluster.stop()
    # Samples per process (perf's own "pid" sort key is per thread).
    script = subprocess.run(["perf", "script", "-i", data, "-F", "pid", "-G"], capture_output=True, text=True)
    counts = {}
    for line in script.stdout.splitlines():
        line = line.strip()
        if line.isdigit():
            counts[int(line)] = counts.get(int(line), 0) + 1
    total = sum(counts.values()) or 1
    share = [(100.0 * n / total, pids.get(pid, "idle" if pid == 0 else f"other (pid {pid})"))
             for pid, n in counts.items()]
    sections = []
    for who, pid in (("leader", str(leader_pid)), ("a follower", str(follower_pid))):
        self_time = perf_report(data, "--pid", pid, "--percentage", "relative", "--no-children",
                                "--sort", "symbol", "-g", "none")
        children = perf_report(data, "--pid", pid, "--percentage", "relative", "--children",
                               "--sort", "symbol", "-g", "none")
        sections += [f"### {who} ({args.system}, pid {pid}): self time (share of this process's samples)", "", "```",
                     *top_lines(self_time, 30), "```", "",
                     f"### {who}: with children (call chains)", "", "```", *top_lines(children, 30), "```", ""]
    ops = [r for r in result if r.get("clients") == args.clients] or result
    lines = ["# Where the CPU goes (perf)", "",
             f"Generated by `python3 bench/profile.py --system {args.system} --workload {args.workload} --clients {args.clients}"
             f"{' --dwarf' if args.dwarf else ''}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `perf record {' '.join(how)}` over "
             f"{window} s of a {args.seconds} s {args.workload} run ({ops[0]['ops_per_second']:.0f} ops/s, "
             f"p99 {ops[0]['p99_ms']:.1f} ms) on this {os.cpu_count()}-CPU machine.", "",
             "## CPU samples by process (whole machine; shares of all samples)", "",
             "| share | process |", "|---|---|"]
    lines += [f"| {pct:.1f}% | {name} |" for pct, name in sorted(share, reverse=True)[:12]]
    lines += [""] + sections
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    compare.log("wrote", args.out)


if __name__ == "__main__":
    main()
