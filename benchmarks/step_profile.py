"""Where the time of a distillation step goes: torch.profiler by operator, and cProfile by Python function.

    python benchmarks/step_profile.py                       # this tree: the live step and the hidden-alignment step
    python benchmarks/step_profile.py --tree /tmp/prev      # another checkout of hf_distill (e.g. a previous release)
    python benchmarks/step_profile.py --tiny                # smoke mode (used by the tests)
    python benchmarks/step_profile.py --tiny --counts       # calls per step (deterministic): JSON

The steps are those of `benchmarks/step_overhead.py` (BERT 12 -> 6, hidden 256, batch 16, seq 128) taken from the
tree being profiled, so two checkouts are compared on the same work. Prints, per step kind, the top operators by
self CPU time (torch.profiler, `--steps` steps after one warm-up) and the top Python functions by own time
(cProfile), with the share of the step that is spent outside torch operators.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys


def _import_steps(tree: str):
    sys.path[:0] = [tree, os.path.join(tree, "benchmarks")]
    import step_overhead

    return step_overhead.make_steps


def operator_table(fn, steps: int, rows: int) -> tuple[str, float]:
    """torch.profiler table (self CPU time, top `rows`) over `steps` calls of fn; and the profiled wall ms per call."""
    import time

    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        wall = (time.perf_counter() - start) / steps * 1000
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)
    return table, wall


def python_table(fn, steps: int, rows: int) -> str:
    """cProfile: the top `rows` functions by own time (tottime) over `steps` calls of fn."""
    fn()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        fn()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(rows)
    text = out.getvalue()
    # keep the table, drop pstats' preamble up to the header line
    return text[text.find("   ncalls") :] if "   ncalls" in text else text


def call_counts(fn) -> dict:
    """Calls in one step of fn (after two warm-ups): torch operators (torch.profiler), Python functions (cProfile)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = {e.key: e.count for e in prof.key_averages()}
    python = cProfile.Profile()
    python.enable()
    fn()
    python.disable()
    funcs: dict[str, int] = {}
    for (file, _, name), (_, ncalls, *_rest) in pstats.Stats(python).stats.items():
        key = f"{os.path.basename(file)}:{name}"
        funcs[key] = funcs.get(key, 0) + ncalls
    return {
        "operator_calls": sum(ops.values()),
        "python_calls": sum(funcs.values()),
        "operators": ops,
        "python": funcs,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--kinds", default="distill_step,distill_hidden_step,student_step,teacher_forward")
    parser.add_argument("--counts", action="store_true", help="calls per step as JSON, no timings")
    args = parser.parse_args()
    make_steps = _import_steps(os.path.abspath(args.tree))
    size, batch_size, seq = ("tiny", 4, 16) if args.tiny else ("bench", 16, 128)
    steps = make_steps(size, batch_size, seq)
    if args.counts:
        print(json.dumps({kind: call_counts(steps[kind]) for kind in args.kinds.split(",")}))
        return
    for kind in args.kinds.split(","):
        table, wall = operator_table(steps[kind], args.steps, args.rows)
        print(f"### {kind}: torch.profiler, top {args.rows} operators by self CPU time ({wall:.1f} ms per step)\n")
        print("```\n" + table + "```\n")
        print(f"### {kind}: cProfile, top {args.rows} Python functions by own time\n")
        print("```\n" + python_table(steps[kind], args.steps, args.rows) + "```\n")


if __name__ == "__main__":
    main()
