"""Tiny classifiers, CSV data and argument lists shared by the recipe tests."""

from __future__ import annotations

import csv
import random

from testing_utils import make_tokenizer, tiny_bert

LABELS = ("negative", "neutral", "positive")
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
COMMON = ["--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true",
          "--use_cpu", "true", "--per_device_eval_batch_size", "16", "--max_length", "32"]


def write_csv(path, n, seed, words=8, labels=LABELS, extra_rows=()):
    """Rows of `words` tokens w0..w95; label = number of even ids mod 3 (learnable)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(0, 96) for _ in range(words)]
        rows.append((" ".join(f"w{i}" for i in ids), labels[sum(i % 2 == 0 for i in ids) % 3]))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows + list(extra_rows))
    return str(path)


def save_classifier(folder, layers=4, seed=0, vocab_dir=None, **config):
    model = tiny_bert(layers=layers, hidden=32, num_labels=3, seed=seed, **{**NO_DROPOUT, **config})
    model.config.id2label = dict(enumerate(LABELS))
    model.config.label2id = {name: i for i, name in enumerate(LABELS)}
    model.save_pretrained(folder)
    make_tokenizer(vocab_dir or folder).save_pretrained(folder)
    return str(folder)


def recipe_args(teacher, data, out, *extra):
    return ["--teacher_model_name_or_path", teacher, "--train_file", data[0], "--validation_file", data[1],
            "--output_dir", str(out), "--per_device_train_batch_size", "8", "--max_steps", "3",
            "--learning_rate", "1e-3", *COMMON, *extra]
