"""The step-overhead ratios of `step_overhead.py` for two checkouts of hf_distill, run after one another in turns.

    python benchmarks/step_overhead_compare.py --trees /tmp/prev . --runs 3    # previous release vs this tree
    python benchmarks/step_overhead_compare.py --tiny                           # smoke mode

Each run starts one fresh process per tree (alternating A, B, A, B, ...), builds the steps of that tree's
`benchmarks/step_overhead.py` (BERT 12 -> 6, hidden 256, batch 16, seq 128) and times them with its interleaved
medians (`--cpu_clock`: CPU time of a one-thread process, the work of a step, which the other jobs of a shared
machine do not inflate as they do wall time); the time ratios only (no memory). Prints every run's ratios side
by side, their medians per tree and the spread between runs (how noisy the machine was).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIOS = ("distill", "hidden", "cached")

_ONE = """
import json, sys, time, types
sys.path[:0] = [{tree!r}, {bench!r}]
import step_overhead
import common
from common import interleaved
if {cpu_clock!r}:  # CPU time of this (single-threaded) process: the work of a step, not the waits of a busy machine
    import torch
    torch.set_num_threads(1)
    common.time = types.SimpleNamespace(perf_counter=time.process_time)
steps = step_overhead.make_steps({size!r}, {batch}, {seq})
t = interleaved(steps, {repeats})
base = t["student_step"] + t["teacher_forward"]
print(json.dumps({{"ms": {{k: v * 1000 for k, v in t.items()}}, "distill": t["distill_step"] / base,
                  "hidden": t["distill_hidden_step"] / base, "cached": t["cached_step"] / t["student_step"]}}))
"""


def one_run(tree: str, size: str, batch: int, seq: int, repeats: int, cpu_clock: bool = False) -> dict:
    code = _ONE.format(
        tree=tree,
        bench=os.path.join(tree, "benchmarks"),
        size=size,
        batch=batch,
        seq=seq,
        repeats=repeats,
        cpu_clock=cpu_clock,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the tree's own package, not ours
    if cpu_clock:
        env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs=2, default=[ROOT, ROOT], help="two checkouts (A, B)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats inside each run")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument(
        "--cpu_clock",
        action="store_true",
        help="time steps by the process's CPU time on one thread (a machine shared with other jobs)",
    )
    args = parser.parse_args()
    size = "tiny" if args.tiny else "bench"
    if args.tiny:
        args.batch_size, args.seq, args.repeats, args.runs = 4, 16, 2, 1
    trees = [os.path.abspath(t) for t in args.trees]
    results = {t: [] for t in trees}
    clock = "CPU time, 1 thread" if args.cpu_clock else "wall time"
    print(
        f"BERT 12 -> 6 ({size}), batch {args.batch_size}, seq {args.seq}, {args.repeats} interleaved repeats a run, "
        f"{clock}"
    )
    print(
        "| run | tree | student step (ms) | teacher fwd (ms) | distill (ms) | distill / (student + teacher) "
        "| with hidden alignment | cached / student |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in range(args.runs):
        for tree in trees if run % 2 == 0 else trees[::-1]:
            r = one_run(tree, size, args.batch_size, args.seq, args.repeats, args.cpu_clock)
            results[tree].append(r)
            ms = r["ms"]
            print(
                f"| {run + 1} | {tree} | {ms['student_step']:.1f} | {ms['teacher_forward']:.1f} | "
                f"{ms['distill_step']:.1f} | {r['distill']:.3f} | {r['hidden']:.3f} | {r['cached']:.3f} |",
                flush=True,
            )
    print("\n| tree | median distill ratio (range) | median hidden ratio (range) | median cached ratio (range) |")
    print("|---|---|---|---|")
    for tree, runs in results.items():
        cells = []
        for key in RATIOS:
            values = [r[key] for r in runs]
            cells.append(f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        print(f"| {tree} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
