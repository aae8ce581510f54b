"""Shared set-up for the benchmarks: a 12 -> 6 layer BERT pair, batches, and interleaved timing."""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import transformers as tf

from hf_distill import DistillationArguments, DistillationTrainer, init_student_from_teacher

SIZES = {  # name -> (hidden, heads, intermediate, vocab)
    "bench": (256, 4, 1024, 30522),  # the size: hidden 256, BERT vocabulary
    "tiny": (32, 2, 64, 101),  # smoke mode for the tests
}


def bert_pair(size: str = "bench", num_labels: int = 2, teacher_layers: int = 12, student_layers: int = 6):
    hidden, heads, inter, vocab = SIZES[size]
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=teacher_layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=512,
        num_labels=num_labels,
    )
    teacher = tf.BertForSequenceClassification(config).eval()
    student = init_student_from_teacher(teacher, num_layers=student_layers).train()
    return teacher, student


def batch(size: str, batch_size: int, seq: int, num_labels: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vocab = SIZES[size][3]
    return {
        "input_ids": torch.randint(5, vocab, (batch_size, seq), generator=g),
        "attention_mask": torch.ones(batch_size, seq, dtype=torch.long),
        "token_type_ids": torch.zeros(batch_size, seq, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch_size,), generator=g),
    }


def trainer_for(student, teacher, train_dataset=None, **kw) -> DistillationTrainer:
    args = DistillationArguments(
        output_dir="/tmp/hf_distill_bench",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        disable_tqdm=True,
        **kw,
    )
    return DistillationTrainer(student, teacher, args, train_dataset=train_dataset)


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each fn, measured in rotating order so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
