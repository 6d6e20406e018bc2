#!/usr/bin/env python3
"""Checks that the simulator catches known consensus bugs.

Each mutation below breaks one safety rule of Raft in raft/src/core.rs. For each,
this script applies it to a scratch copy of the source tree, runs the simulator over a
range of seeds and reports the seeds that failed (so: how many seeds the simulator
needed to catch the bug). The working tree is never modified.

CI runs seeds 0..2000, so the report also gives how many of those catch each bug;
`--require N` fails the run unless every mutation is caught by at least N of them.

    python3 scripts/inject-bugs.py [--seeds 2000] [--only NAME] [--require N]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = "raft/src/core.rs"

MUTATIONS = {
    # Grant votes without checking that the candidate's log is at least as up-to-date.
    "vote-without-up-to-date-check": (
        r"can_vote && self\.log\.is_up_to_date\(last_index, last_term\) && ",
        "can_vote && (last_index, last_term) != (u64::MAX, u64::MAX) && ",
    ),
    # Commit an entry of an earlier term by counting replicas (Figure 8). The core's
    # own assertion of the rule goes too, so that it is the simulator that catches it.
    "commit-earlier-term-by-counting": (
        r"if self\.log\.term\(quorum_index\) != Some\(self\.term\) \{((?:.|\n)*?)assert_eq!\(self\.log\.term\(self\.log\.commit\(\)\), Some\(self\.term\)\);",
        r"if self.log.term(quorum_index).is_none() {\1",
    ),
    # Answer a vote request before the vote is durable.
    "reply-to-vote-before-persisting": (
        r"let reply_term = if pre_vote && grant \{ term \} else \{ self\.term \};\n(\s*)self\.send_with_term\(",
        r"let reply_term = if pre_vote && grant { term } else { self.term };\n\1self.send_ungated(",
    ),
}

UNGATED = """
    fn send_ungated(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.commands.push(Command::Send(Message { from: self.id, to, term, body }));
    }
}
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=2000)
    parser.add_argument("--only", default=None)
    parser.add_argument("--ci-seeds", type=int, default=2000,
                        help="the seed range CI runs (0..N), reported separately")
    parser.add_argument("--require", type=int, default=0,
                        help="fail unless each mutation is caught by >= N seeds of the CI range")
    args = parser.parse_args()
    target = os.path.join(ROOT, "target")
    results = {}
    for name, (pattern, replacement) in MUTATIONS.items():
        if args.only and name != args.only:
            continue
        with tempfile.TemporaryDirectory() as scratch:
            tree = os.path.join(scratch, "tree")
            shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns("target", ".git"))
            path = os.path.join(tree, CORE)
            source = open(path).read()
            mutated, count = re.subn(pattern, replacement, source)
            if count != 1:
                sys.exit(f"{name}: pattern matched {count} times; update the mutation")
            if name == "reply-to-vote-before-persisting":
                mutated = mutated.rstrip()
                assert mutated.endswith("}")
                mutated = mutated[:-1] + UNGATED
            open(path, "w").write(mutated)
            env = dict(os.environ, SIM_SEEDS=str(args.seeds), SIM_SEED_START="0",
                       # The project's own target directory: the
                       # dependencies are already built there (the mutated crate
                       # lives at another path, so its artifacts never clobber ours).
                       CARGO_TARGET_DIR=os.environ.get("CARGO_TARGET_DIR", target))
            run = subprocess.run(
                ["cargo", "test", "--profile", "sim", "-p", "kuberaft-node", "--test", "simulation",
                 "--", "--nocapture"],
                cwd=tree, env=env, capture_output=True, text=True)
            out = run.stdout + run.stderr
            found = re.search(r"(\d+) of (\d+) seeds failed: \[([0-9, ]*)\]", out)
            first = re.search(r"first failure, seed (\d+): (.*)", out)
            if run.returncode == 0 or not found:
                if run.returncode != 0 and "error[" in out:
                    sys.exit(f"{name}: mutated tree did not build:\n{out[-3000:]}")
                results[name] = None
                print(f"{name}: NOT CAUGHT in {args.seeds} seeds")
                continue
            seeds = [int(s) for s in found.group(3).split(",") if s.strip()]
            results[name] = seeds
            in_ci = sum(1 for s in seeds if s < args.ci_seeds)
            print(f"{name}: caught by {found.group(1)} of {found.group(2)} seeds "
                  f"({in_ci} of the first {min(args.ci_seeds, args.seeds)}); "
                  f"first failing seed {min(seeds)} (so {min(seeds) + 1} seeds needed)\n"
                  f"  first failure: {first.group(2)[:200] if first else '?'}")
    if any(v is None for v in results.values()):
        sys.exit(1)
    weak = [name for name, seeds in results.items()
            if sum(1 for s in seeds if s < args.ci_seeds) < args.require]
    if weak:
        sys.exit(f"caught by fewer than {args.require} of the first {args.ci_seeds} seeds: {weak}")


if __name__ == "__main__":
    main()
