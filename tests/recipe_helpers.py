"""Tiny classifiers, CSV data and argument lists shared by the recipe tests."""

from __future__ import annotations

import csv
import random

from testing_utils import make_tokenizer, tiny_bert

LABELS = ("negative", "neutral", "positive")
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
# Every recipe test's run: on the CPU, no reports, no checkpoints, no progress bar, a log entry per step.
CPU_RUN = "--report_to none --save_strategy no --logging_steps 1 --disable_tqdm true --use_cpu true".split()
COMMON = [*CPU_RUN, "--per_device_eval_batch_size", "16", "--max_length", "32"]


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
    return [
        "--teacher_model_name_or_path",
        teacher,
        "--train_file",
        data[0],
        "--validation_file",
        data[1],
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "8",
        "--max_steps",
        "3",
        "--learning_rate",
        "1e-3",
        *COMMON,
        *extra,
    ]


def recipe_assets(root) -> dict:
    """What the bad-input tests share (read-only for them): the classifier teacher, train/dev CSVs and a masked-LM
    teacher, under `root`."""
    import transformers as tf

    a = {"root": root, "teacher": save_classifier(root / "teacher")}
    a["train"], a["dev"] = write_csv(root / "train.csv", 16, 0), write_csv(root / "dev.csv", 8, 1)
    mlm = root / "mlm_teacher"
    tiny_bert(layers=2, hidden=32, cls=tf.BertForMaskedLM).save_pretrained(mlm)
    make_tokenizer(mlm).save_pretrained(mlm)
    a["mlm"] = str(mlm)
    return a


def write_file(folder, name: str, content: bytes | str) -> str:
    """`content` written to folder/name (text as UTF-8); the path."""
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def listing(folder) -> dict:
    """{relative path: size} of everything under `folder` ({} when it is not a folder): to see that nothing changed."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")} if folder.is_dir() else {}


def forbid_training(monkeypatch, trainer_cls) -> None:
    """Make `trainer_cls.train` fail the test: a bad-input case must stop before training."""
    from unittest import mock

    monkeypatch.setattr(trainer_cls, "train", mock.Mock(side_effect=AssertionError("trained")))


def files_args(model, train, dev, out, *extra, model_flag="--teacher_model_name_or_path"):
    """A recipe's arguments for local train/dev files with the test settings (`COMMON`), then `extra`."""
    return [
        model_flag,
        model,
        "--train_file",
        train,
        "--validation_file",
        dev,
        "--output_dir",
        str(out),
        *COMMON,
        *extra,
    ]


def cache_args(teacher, data_file, out, *extra):
    """`python -m hf_distill.cache`'s arguments for a raw-text file at --max_length 32, then `extra`."""
    return [
        "--teacher_model_name_or_path",
        teacher,
        "--data_file",
        data_file,
        "--max_length",
        "32",
        "--output_dir",
        str(out),
        *extra,
    ]
