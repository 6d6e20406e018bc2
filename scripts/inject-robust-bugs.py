#!/usr/bin/env python3
"""Checks that the robustness runner (node/tests/robustness.rs) catches known bugs of
the runtime, the way scripts/inject-bugs.py does for the simulator.

Each mutation below is a small, precise patch to node/src:

  reply-before-fsync        the WAL never calls fdatasync (node/src/storage/wal.rs), so
                            every reply to a client precedes its durability
  apply-before-commit       a follower applies its log up to its last index as soon
                            as entries arrive, committed or not (raft/src/core.rs)
  watch-resume-wrong-rev    a watch with a start revision starts one revision later
                            (node/src/kv/watch.rs), as a resume off by one would

For each, the script copies the source tree to a scratch directory, applies the patch,
builds `raft-node --features failpoints` there (same CARGO_TARGET_DIR, so only the
changed crate rebuilds), saves the binary, and runs this tree's own (unmodified)
runner against it (`ROBUST_RAFT_NODE`) for N seeds at the CI budget: the CI
scenarios one after another, `ROBUST_SECONDS` each, stopping at the first scenario that
fails. It prints per bug: caught on k of N seeds, time to catch, which check failed.
The working tree is never modified (the build's uplifted `raft-node` is put back).

    python3 scripts/inject-robust-bugs.py [--seeds 3] [--seed-start S] [--only NAME]
        [--seconds 20] [--scenarios mixed,power-loss,partition,membership]
        [--all-scenarios] [--require K]

`--require K` exits non-zero unless every mutation is caught on at least K seeds
(`--require` alone: on every seed).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CI_SCENARIOS = "mixed,power-loss,partition,membership"

# name -> (what, [(file, pattern, replacement)])
MUTATIONS = {
    "reply-before-fsync": (
        "the WAL skips fdatasync: replies precede durability",
        [("node/src/storage/wal.rs",
          r"\.and_then\(\|\(\)\| self\.file\.sync_data\(\)\)",
          ".and_then(|()| Ok(()))")],
    ),
    "apply-before-commit": (
        "a follower applies entries up to its last index as they arrive",
        [("raft/src/core.rs",
          r"(let commit = leader_commit\.min\(last_new\);\n(\s*)if commit > self\.log\.commit\(\) \{\n"
          r"\s*self\.log\.set_commit\(commit\);\n)\s*self\.emit_apply\(\);\n(\s*)\}",
          r"\1\3}\n\2self.emit_apply();"),
         ("raft/src/core.rs",
          r"fn emit_apply\(&mut self\) \{\n(\s*)let commit = self\.log\.commit\(\);\n\s*assert!\(\s*"
          r"self\.applied <= commit,\s*\"applied \{\} is past commit \{commit\}\",\s*self\.applied\s*\);",
          r"fn emit_apply(&mut self) {\n\1let commit = if self.role == Role::Follower "
          r"{ self.log.last_index() } else { self.log.commit() };")],
    ),
    "watch-resume-wrong-rev": (
        "a watch from a start revision starts one later",
        [("node/src/kv/watch.rs",
          r"let next = if spec\.start_revision != 0 \{\n(\s*)spec\.start_revision\n",
          r"let next = if spec.start_revision != 0 {\n\1spec.start_revision + 1\n")],
    ),
}


def cargo(args, cwd, env, capture=True):
    cmd = ["nice", "cargo"] + args
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=capture, text=True)


def runner_binary(env):
    """Builds this tree's runner (and raft-node) and returns the test executable."""
    run = cargo(["test", "--locked", "-p", "kuberaft-node", "--features", "failpoints",
                 "--test", "robustness", "--no-run", "--message-format=json"], ROOT, env)
    if run.returncode != 0:
        sys.exit(f"the runner did not build:\n{run.stderr[-3000:]}")
    for line in run.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == "robustness":
            return msg["executable"]
    sys.exit("no robustness test executable in cargo's output")


def build_mutant(name, edits, scratch, target, env):
    tree = os.path.join(scratch, "tree")
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns("target", ".git"))
    for rel, pattern, replacement in edits:
        path = os.path.join(tree, rel)
        source = open(path).read()
        mutated, count = re.subn(pattern, replacement, source)
        if count != 1:
            sys.exit(f"{name}: pattern in {rel} matched {count} times; update the mutation")
        open(path, "w").write(mutated)
    uplifted = os.path.join(target, "debug", "raft-node")
    backup = os.path.join(scratch, "raft-node.orig")
    if os.path.exists(uplifted):
        shutil.copy2(uplifted, backup)
    try:
        run = cargo(["build", "--locked", "-p", "kuberaft-node", "--features", "failpoints",
                     "--bin", "raft-node"], tree, env)
        if run.returncode != 0:
            sys.exit(f"{name}: the mutated tree did not build:\n{run.stderr[-3000:]}")
        binary = os.path.join(scratch, "raft-node")
        shutil.copy2(uplifted, binary)
    finally:
        # Put this tree's binary back where its tests look for it.
        if os.path.exists(backup):
            shutil.copy2(backup, uplifted)
    shutil.rmtree(tree, ignore_errors=True)
    return binary


def failures_of(out):
    """The failed checks a runner's output reports (first line of each)."""
    found = []
    for block in out.split("robustness FAILED: ")[1:]:
        lines = block.splitlines()
        head = lines[0] if lines else ""
        checks = []
        for line in lines[1:]:
            if line.startswith("(data directories") or line.startswith("---"):
                break
            if line.strip() and not line.startswith(" "):
                checks.append(line.strip())
        found.append((head, checks))
    return found


def run_seed(runner, binary, seed, scenarios, seconds, stop_at_first, env, log):
    """Runs the scenarios one by one; returns (caught scenario or None, seconds, checks)."""
    started = time.time()
    caught = None
    checks = []
    for scenario in scenarios:
        run_env = dict(env, ROBUST_RAFT_NODE=binary, ROBUST_SEED=str(seed),
                       ROBUST_SECONDS=str(seconds), ROBUST_SCENARIO=scenario)
        t0 = time.time()
        try:
            run = subprocess.run([runner, "--ignored", "--nocapture", "--exact", "robustness"],
                                 env=run_env, capture_output=True, text=True,
                                 timeout=seconds + 400)
            out = run.stdout + run.stderr
            failed = run.returncode != 0
        except subprocess.TimeoutExpired as e:
            out = f"{e.stdout or ''}{e.stderr or ''}\nthe runner timed out"
            failed = True
        log.write(f"===== seed {seed} scenario {scenario} ({time.time() - t0:.0f} s, "
                  f"{'FAILED' if failed else 'passed'})\n{out}\n")
        log.flush()
        summary = [l for l in out.splitlines() if l.startswith("robustness ") and "faults:" in l]
        print(f"    {scenario}: {'FAILED' if failed else 'passed'} in {time.time() - t0:.0f} s"
              + (f" -- {summary[0][:300]}" if summary else ""), flush=True)
        if failed:
            blocks = failures_of(out)
            these = [c for _, cs in blocks for c in cs] or \
                [l for l in out.splitlines() if "panicked" in l or "timed out" in l][:3]
            if caught is None:
                caught = (scenario, time.time() - started)
            checks.extend(f"[{scenario}] {c[:240]}" for c in these[:4])
            if stop_at_first:
                break
    return caught, checks


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-start", type=int, default=None,
                        help="first seed (default: a random one, printed)")
    parser.add_argument("--only", default=None, help="comma-separated mutation names")
    parser.add_argument("--seconds", type=int, default=20, help="ROBUST_SECONDS (CI: 20)")
    parser.add_argument("--scenarios", default=CI_SCENARIOS)
    parser.add_argument("--all-scenarios", action="store_true",
                        help="run every scenario even after one caught the bug")
    parser.add_argument("--require", type=int, nargs="?", const=-1, default=0,
                        help="fail unless each mutation is caught on >= K seeds (alone: all)")
    parser.add_argument("--log", default=None, help="where the runners' output goes")
    args = parser.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    env = dict(os.environ, CARGO_TARGET_DIR=target)
    seed_start = args.seed_start if args.seed_start is not None else \
        int.from_bytes(os.urandom(4), "little") % 1_000_000_000
    names = args.only.split(",") if args.only else list(MUTATIONS)
    for name in names:
        if name not in MUTATIONS:
            sys.exit(f"unknown mutation {name}; known: {list(MUTATIONS)}")
    scenarios = args.scenarios.split(",")
    require = args.seeds if args.require == -1 else args.require
    log_path = args.log or os.path.join(tempfile.gettempdir(), f"inject-robust-{seed_start}.log")
    print(f"seeds {seed_start}..{seed_start + args.seeds - 1}, ROBUST_SECONDS={args.seconds}, "
          f"scenarios {','.join(scenarios)}; runner output in {log_path}", flush=True)
    results = {}
    with open(log_path, "a") as log, tempfile.TemporaryDirectory(prefix="kuberaft-mutant-") as scratch:
        # A copy of the runner: a build of this tree meanwhile cannot swap it.
        runner = os.path.join(scratch, "robustness-runner")
        shutil.copy2(runner_binary(env), runner)
        binaries = {}
        for name in names:
            what, edits = MUTATIONS[name]
            t0 = time.time()
            os.makedirs(os.path.join(scratch, name), exist_ok=True)
            binaries[name] = build_mutant(name, edits, os.path.join(scratch, name), target, env)
            print(f"{name} ({what}): built in {time.time() - t0:.0f} s", flush=True)
        for name in names:
            binary = binaries[name]
            print(f"{name}:", flush=True)
            caught = []
            for seed in range(seed_start, seed_start + args.seeds):
                print(f"  seed {seed}:", flush=True)
                hit, checks = run_seed(runner, binary, seed, scenarios, args.seconds,
                                       not args.all_scenarios, env, log)
                caught.append((seed, hit, checks))
                if hit:
                    print(f"  seed {seed}: CAUGHT by {hit[0]} after {hit[1]:.0f} s", flush=True)
                    for c in checks:
                        print(f"      {c}", flush=True)
                else:
                    print(f"  seed {seed}: not caught", flush=True)
            results[name] = caught
    print("\nsummary (ROBUST_SECONDS=%d, scenarios %s):" % (args.seconds, ",".join(scenarios)))
    weak = []
    for name, caught in results.items():
        hits = [c for c in caught if c[1]]
        times = ", ".join(f"{c[1][1]:.0f} s ({c[1][0]})" for c in hits)
        print(f"  {name}: caught on {len(hits)} of {len(caught)} seeds; time to catch: {times or '-'}")
        for seed, hit, checks in hits[:1]:
            print(f"    e.g. seed {seed}: {checks[0] if checks else '?'}")
        if not hits or len(hits) < require:
            weak.append(name)
    if weak:
        sys.exit(f"not caught often enough (require {require} of {args.seeds}): {weak}")


if __name__ == "__main__":
    main()
