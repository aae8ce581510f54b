"""Choosing the causal-LM recipe's on-policy defaults on a validation split: divergence on the student's samples
and when on-policy training starts (a warm start), on tweets with a small GPT-2 (benchmarks/lm_real_data.py's data).

    PYTHONPATH=. python benchmarks/onpolicy_defaults.py                  # docs/results/onpolicy_defaults.{md,json}
    PYTHONPATH=. python benchmarks/onpolicy_defaults.py --preset tiny --out_dir /tmp/x      # seconds

The teacher (a GPT-2 trained here) and every student (cut from it, the same budget and seed) are those of
lm_real_data.py at a smaller scale. Every candidate is one run: forward KL on the dataset's completions until
`start` (a fraction of the steps), then lambda 1 with the candidate divergence on the student's own samples, T = 1
for the loss and for sampling. `offpolicy` is forward KL throughout (start = 1). Scored on the VALIDATION split
only (the test split is not read): the teacher's mean per-token NLL of the student's sampled completions (what
on-policy training optimises; hf_distill.evaluation) and the teacher-forced cross-entropy of the reference
completions.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from lm_real_data import LMBenchConfig, evaluate_ce, make_trainer, minilm_path, prepare_data, train_teacher
from provenance import provenance, write_results
from transformers import AutoTokenizer, GenerationConfig, GPT2LMHeadModel, HfArgumentParser

from hf_distill.evaluation import evaluate_generation

CANDIDATES = {  # name -> (fraction of the steps off-policy, divergence on the student's samples)
    "offpolicy": (1.0, None),
    "start0.5_jsd": (0.5, "jsd"),
    "start0.5_reverse_kl": (0.5, "reverse_kl"),
    "start0.5_forward_kl": (0.5, "forward_kl"),
    "start0.25_best": (0.25, "best"),  # the divergence that won at start 0.5
}


@dataclass
class DefaultsConfig:
    preset: str | None = field(default=None, metadata={"help": "'tiny': seconds, for the tests."})
    n_train: int = 3000
    n_val: int = 256
    hidden: int = 64
    heads: int = 2
    teacher_layers: int = 3
    student_layers: int = 1
    teacher_epochs: float = 1.0
    student_steps: int = 40
    batch_size: int = 16
    max_new_tokens: int = 16
    seed: int = 0
    out_dir: str = "docs/results"
    name: str = "onpolicy_defaults"


PRESETS = {
    "tiny": {
        "n_train": 48,
        "n_val": 8,
        "hidden": 32,
        "teacher_layers": 2,
        "student_steps": 4,
        "batch_size": 4,
        "max_new_tokens": 4,
    }
}


def bench_config(cfg: DefaultsConfig, work: str) -> LMBenchConfig:
    return LMBenchConfig(
        n_train=cfg.n_train,
        n_val=cfg.n_val,
        n_test=0,
        hidden=cfg.hidden,
        heads=cfg.heads,
        teacher_layers=cfg.teacher_layers,
        student_layers=cfg.student_layers,
        teacher_epochs=cfg.teacher_epochs,
        student_steps=cfg.student_steps,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        work_dir=work,
    )


def run(cfg: DefaultsConfig) -> dict:
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="onpolicy_defaults_")
    bench = bench_config(cfg, work)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = prepare_data(bench, tokenizer)
    start = time.perf_counter()
    train_teacher(bench, tokenizer, data, os.path.join(work, "teacher"))
    teacher = GPT2LMHeadModel.from_pretrained(os.path.join(work, "teacher")).eval()
    sampling = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    def score(model) -> dict:
        generated = evaluate_generation(
            model,
            data["validation"],
            tokenizer,
            sampling,
            teacher=teacher,
            batch_size=64,
            seed=cfg.seed,
            teacher_floor=False,
        )
        return {
            "val_teacher_nll": generated["teacher_nll"],
            "val_rougeL": generated["rougeL"],
            "val_ce": evaluate_ce(model, data["validation"], tokenizer.pad_token_id, torch.device("cpu")),
        }

    results = {"teacher": score(teacher)}
    print(f"teacher {results['teacher']}", flush=True)
    for name, (fraction, divergence) in CANDIDATES.items():
        if divergence == "best":
            divergence = min(
                (n for n in results if n.startswith("start0.5_")), key=lambda n: results[n]["val_teacher_nll"]
            ).removeprefix("start0.5_")
        overrides = (
            {}
            if divergence is None
            else {
                "lmbda": 1.0,
                "lmbda_start_step": int(fraction * cfg.student_steps),
                "on_policy_divergence": divergence,
            }
        )
        trainer = make_trainer(
            bench,
            "forward_kl",
            cfg.seed,
            teacher,
            tokenizer,
            data["train"],
            os.path.join(work, "runs", name),
            **overrides,
        )
        trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
        results[name] = {"start_fraction": fraction, "on_policy_divergence": divergence, **score(model)}
        print(f"{name}: {results[name]}", flush=True)
    return {
        "config": asdict(cfg),
        "results": results,
        "wall_seconds": time.perf_counter() - start,
        "device": f"cpu ({os.cpu_count()} cores, 1 torch thread)",
    }


def markdown(summary: dict) -> str:
    c = summary["config"]
    lines = [
        f"GPT-2 teacher {c['teacher_layers']} layers x {c['hidden']}, student {c['student_layers']} layer(s) cut "
        f"from it, {c['n_train']} training tweets, {c['student_steps']} steps x {c['batch_size']}, "
        f"{c['max_new_tokens']} sampled tokens, T = 1, seed {c['seed']} (one seed); scored on {c['n_val']} "
        f"validation tweets; {summary['device']}, {summary['wall_seconds'] / 60:.1f} min.",
        "",
        "| run | off-policy steps | divergence on samples | teacher NLL of samples | ROUGE-L | CE of references |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, r in summary["results"].items():
        frac = "" if name == "teacher" else f"{100 * r['start_fraction']:.0f}%"
        lines.append(
            f"| {name} | {frac} | {r.get('on_policy_divergence') or ''} | {r['val_teacher_nll']:.3f} | "
            f"{r['val_rougeL']:.3f} | {r['val_ce']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.WARNING)
    (cfg,) = HfArgumentParser(DefaultsConfig).parse_args_into_dataclasses(args=argv)
    for key, value in PRESETS.get(cfg.preset, {}).items():
        setattr(cfg, key, value)
    summary = {"provenance": provenance(argv), **run(cfg)}
    write_results(cfg.out_dir, cfg.name, summary, markdown(summary), "On-policy defaults, chosen on validation")
    return summary


if __name__ == "__main__":
    main()
