"""How the distillation step's cost scales with sequence length and batch size, against the models' own.

    python benchmarks/scaling.py            # BERT 12 -> 6, hidden 256; seq 64..512 at batch 8, batch 4..32 at seq 128
    python benchmarks/scaling.py --tiny

For each shape prints the distillation step time, the student step + teacher forward time and their
ratio: a flat ratio means the distillation adds no cost that grows faster than the models' own.
"""

from __future__ import annotations

import argparse

from common import interleaved, machine
from step_overhead import make_steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = "tiny" if args.tiny else "bench"
    shapes = [(8, s) for s in (64, 128, 256, 512)] + [(b, 128) for b in (4, 16, 32)]
    if args.tiny:
        shapes, args.repeats = [(2, 8), (2, 16), (4, 16)], 1
    print(f"device: {machine()}   BERT 12 -> 6 ({size}), {args.repeats} interleaved repeats (medians)")
    print(f"{'batch':>5} {'seq':>5} {'tokens/s':>10} {'distill ms':>11} {'student+teacher ms':>19} {'ratio':>6}")
    for batch_size, seq in shapes:
        steps = make_steps(size, batch_size, seq)
        t = interleaved({k: steps[k] for k in ("student_step", "teacher_forward", "distill_step")}, args.repeats)
        base = t["student_step"] + t["teacher_forward"]
        tokens_per_s = batch_size * seq / t["distill_step"]
        print(
            f"{batch_size:>5} {seq:>5} {tokens_per_s:>10.0f} {t['distill_step'] * 1000:>11.1f} "
            f"{base * 1000:>19.1f} {t['distill_step'] / base:>6.3f}"
        )


if __name__ == "__main__":
    main()
