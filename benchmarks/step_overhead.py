"""Cost of a distillation step against its parts, measured side by side in one run.

    python benchmarks/step_overhead.py            # BERT 12 -> 6, hidden 256, seq 128, batch 16
    python benchmarks/step_overhead.py --tiny     # smoke mode (used by the tests)

Prints (medians of interleaved repeats):
  step overhead   = distillation step / (student training step + teacher forward)      target <= 1.05
  cached step     = step on cached teacher logits / student training step              target <= 1.05
  peak memory     = distillation step / (student training step + teacher forward)      target <= 1.10
                    (peak above the memory held before the step; each case in a fresh process;
                     CPU: resident set size sampled every 0.5 ms with glibc returning freed blocks,
                     GPU: max_memory_allocated)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from common import batch, bert_pair, interleaved, machine, sync, trainer_for
from datasets import Dataset


def make_steps(size: str, batch_size: int, seq: int):
    teacher, student = bert_pair(size)
    data = batch(size, batch_size, seq)
    teacher_inputs = {k: v for k, v in data.items() if k != "labels"}
    distill = trainer_for(student, teacher)
    hidden = trainer_for(student, teacher, hidden_weight=1.0)
    with torch.no_grad():
        cached_batch = {**data, "teacher_logits": teacher(**teacher_inputs).logits}
    # a trainer without a teacher: its train set carries cached logits (one row is enough to say so)
    one_row = Dataset.from_dict({"input_ids": [[5]], "teacher_logits": [[0.0, 0.0]]})
    cached = trainer_for(student, None, train_dataset=one_row)
    device = distill.args.device
    teacher.to(device)
    student.to(device)
    data = {k: v.to(device) for k, v in data.items()}
    teacher_inputs = {k: v.to(device) for k, v in teacher_inputs.items()}
    cached_batch = {k: v.to(device) for k, v in cached_batch.items()}
    opt = torch.optim.AdamW(student.parameters(), lr=1e-6)

    def update(loss):
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {
        "student_step": lambda: update(student(**data).loss),
        "teacher_forward": lambda: _no_grad(teacher, teacher_inputs),
        "distill_step": lambda: update(distill.compute_loss(student, data)),
        "distill_hidden_step": lambda: update(hidden.compute_loss(student, data)),
        "cached_step": lambda: update(cached.compute_loss(student, cached_batch)),
    }


def _no_grad(model, inputs):
    with torch.no_grad():
        return model(**inputs)


def peak_memory(mode: str, size: str, batch_size: int, seq: int) -> float:
    """MiB above the memory held before the step, at the peak of 2 runs of `mode` (run in this process)."""
    steps = make_steps(size, batch_size, seq)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            steps[mode]()
        sync()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # CPU: warm up every kind of call first (library pages, optimizer state), then sample the resident set
    # size from a thread while the measured calls run; torch releases the GIL inside its kernels.
    steps["teacher_forward"]()
    steps["student_step"]()
    base = _rss_mib()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(2):
        steps[mode]()
    done.set()
    sampler.join()
    return peak[0] - base


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--memory_mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = "tiny" if args.tiny else "bench"
    if args.tiny:
        args.batch_size, args.seq, args.repeats = 4, 16, 2
    if args.memory_mode:
        print(json.dumps({"peak_mib": peak_memory(args.memory_mode, size, args.batch_size, args.seq)}))
        return

    steps = make_steps(size, args.batch_size, args.seq)
    t = interleaved(steps, args.repeats)
    base = t["student_step"] + t["teacher_forward"]
    print(
        f"device: {machine()}   BERT 12 -> 6 ({size}), batch {args.batch_size}, seq {args.seq}, "
        f"{args.repeats} interleaved repeats (medians)"
    )
    for name, seconds in t.items():
        print(f"  {name:<22} {seconds * 1000:9.1f} ms")
    print(
        f"step overhead   distill / (student step + teacher fwd)         = {t['distill_step'] / base:.3f}"
        "   (target <= 1.05)"
    )
    print(f"                with hidden alignment (6 layer pairs)          = {t['distill_hidden_step'] / base:.3f}")
    cached = t["cached_step"] / t["student_step"]
    print(f"cached step     cached distill / student step                  = {cached:.3f}   (target <= 1.05)")

    def measure(mode: str) -> float:
        cmd = [
            sys.executable,
            __file__,
            "--memory_mode",
            mode,
            "--batch_size",
            str(args.batch_size),
            "--seq",
            str(args.seq),
        ] + (["--tiny"] if args.tiny else [])
        # glibc serves big blocks with mmap and unmaps them on free, so the RSS follows live tensors
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        return json.loads(out.strip().splitlines()[-1])["peak_mib"]

    # Each child measures only its own resident set. Tiny mode starts them all at once (their start-ups, most of
    # their time, share the cores); the full mode runs one at a time, so that no child waits for memory.
    modes = ("student_step", "teacher_forward", "distill_step", "distill_hidden_step")
    with ThreadPoolExecutor(max_workers=len(modes) if args.tiny else 1) as pool:
        peaks = dict(zip(modes, pool.map(measure, modes)))
    mem_base = peaks["student_step"] + peaks["teacher_forward"]
    print(
        f"peak memory     student step {peaks['student_step']:.0f} MiB, "
        f"teacher fwd {peaks['teacher_forward']:.0f} MiB, distill step {peaks['distill_step']:.0f} MiB"
    )
    print(
        f"                distill / (student step + teacher fwd)         = {peaks['distill_step'] / mem_base:.3f}"
        "   (target <= 1.10)"
    )
    print(
        f"                with hidden alignment ({peaks['distill_hidden_step']:.0f} MiB)"
        f"                = {peaks['distill_hidden_step'] / mem_base:.3f}"
    )


if __name__ == "__main__":
    main()
