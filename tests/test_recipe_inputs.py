"""Bad input to the recipes: every case stops with a ValueError that names the problem, before any training
and without touching the output folder. One table row per mistake a user can make."""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from unittest import mock

import pytest
import transformers as tf
from recipe_helpers import (
    COMMON,
    LABELS,
    cache_args,
    files_args,
    forbid_training,
    listing,
    recipe_args,
    recipe_assets,
    save_classifier,
    write_file,
)
from testing_utils import HANG_TIMEOUT_S, distillation_args, make_tokenizer, tiny_bert

from hf_distill.recipes.arguments import redact_secrets
from hf_distill.recipes.models import check_student_tokenizer
from recipes import distil_bert, distil_bert_mlm


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Models and files shared by the cases (read-only for them)."""
    root = tmp_path_factory.mktemp("assets")
    a = recipe_assets(root)
    base = root / "base"
    tiny_bert(layers=2, hidden=32, cls=tf.BertModel).save_pretrained(base)
    make_tokenizer(base).save_pretrained(base)
    a["base"] = str(base)
    other = root / "other_vocab"
    save_classifier(other, layers=2)
    make_tokenizer(other, words=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"x{i}" for i in range(96)])
    a["other_vocab"] = str(other)
    no_tok = root / "student_without_tokenizer"
    tiny_bert(layers=2, hidden=32, vocab=120).save_pretrained(no_tok)  # 120 tokens, the teacher has 101
    a["no_tokenizer"] = str(no_tok)
    return a


def _previous_run(tmp_path) -> str:
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "distillation_results.json").write_text("{}")
    return str(previous)


def _held_folder(tmp_path) -> str:
    """A folder locked by a live run (this test process, as a run claims it)."""
    from hf_distill.recipes.output import OutputFolder

    held = tmp_path / "held"
    OutputFolder(str(held), run_id="abc123").claim()
    return str(held)


Case = namedtuple("Case", "argv message patch", defaults=(None,))


def _cases(a, tmp_path):
    """name -> a function making Case(argv for distil_bert, regex of the expected message, optional patch)."""
    t, train, dev, out = a["teacher"], a["train"], a["dev"], str(tmp_path / "out")

    def args(*extra, teacher=t, data=(train, dev), output=out):
        return recipe_args(teacher, data, output, *extra)

    def csv(name, text):
        return write_file(tmp_path, name, text)

    return {
        # --- data files
        "column missing from the validation file only": lambda: Case(
            args(data=(train, csv("dev_sentence.csv", "sentence,label\nw1 w2,neutral\n"))),
            r"'text' \(--text_column\) is not in --validation_file .*dev_sentence.csv; its columns are "
            r"\['sentence', 'label'\]",
        ),
        "--text_column not in the files": lambda: Case(
            args("--text_column", "sentence"), r"'sentence' \(--text_column\) is not in --train_file .*train.csv"
        ),
        "empty csv": lambda: Case(args(data=(csv("empty.csv", ""), dev)), r"empty.csv is empty"),
        "header-only csv": lambda: Case(
            args(data=(train, csv("header.csv", "text,label\n"))), r"header.csv has only a header line"
        ),
        "non-UTF-8 csv": lambda: Case(
            args(data=(csv("latin1.csv", "text,label\ncaf\xe9 w1,neutral\n".encode("latin-1")), dev)),
            r"latin1.csv is not UTF-8 text \(byte 0xe9 at offset 14\)",
        ),
        "mixed-type jsonl": lambda: Case(
            args(
                data=(
                    csv("mixed.jsonl", '{"text": "w1", "label": 1}\n{"text": "w2", "label": "positive"}\n'),
                    csv("dev.jsonl", '{"text": "w1", "label": "neutral"}\n'),
                )
            ),
            r"mixed.jsonl: column\(s\) {.label.: \[.int., .str.\]} mix value types",
        ),
        "NaN / empty text": lambda: Case(
            args(data=(csv("nan.csv", "text,label\nw1 w2,neutral\n,positive\n"), dev)),
            r"1 row\(s\) of --train_file .*nan.csv have no value in column 'text'.*row\(s\) 1 ",
        ),
        "missing label": lambda: Case(
            args(data=(train, csv("nolabel.csv", "text,label\nw1 w2,\n"))),
            r"--validation_file .*nolabel.csv have no value in column 'label'",
        ),
        "unknown label": lambda: Case(
            args(data=(train, csv("angry.csv", "text,label\nw1 w2,angry\n"))), r"\['angry'\].*not known to the teacher"
        ),
        "missing data file": lambda: Case(args(data=(str(tmp_path / "nope.csv"), dev)), r"nope.csv does not exist"),
        "unknown file format": lambda: Case(
            args(data=(csv("train.xlsx", "x"), csv("dev.xlsx", "x"))), r"unknown data file format 'xlsx'"
        ),
        "files of two formats": lambda: Case(
            args(data=(train, csv("dev.jsonl", '{"text": "w1", "label": "neutral"}\n'))), r"must have the same format"
        ),
        ".tsv given as --dataset_name": lambda: Case(
            ["--teacher_model_name_or_path", t, "--dataset_name", "my_data.tsv", "--output_dir", out, *COMMON],
            r"--dataset_name my_data.tsv looks like a local file",
        ),
        "no data": lambda: Case(["--teacher_model_name_or_path", t, "--output_dir", out, *COMMON], r"no data: give"),
        # --- models
        "missing local teacher path": lambda: Case(
            args(teacher=str(tmp_path / "teachers" / "bert")), r"no such local folder"
        ),
        "teacher folder without config.json": lambda: Case(
            args(teacher=str(tmp_path)), r"a folder without config.json"
        ),
        "teacher is a file": lambda: Case(args(teacher=train), r"is a file; give the model's folder"),
        "not a classifier": lambda: Case(args(teacher=a["base"]), r"not a sequence classifier"),
        "student vocabulary differs": lambda: Case(
            args("--student_model_name_or_path", a["other_vocab"]), r"different vocabularies"
        ),
        "student folder without tokenizer files": lambda: Case(
            args("--student_model_name_or_path", a["no_tokenizer"]),
            r"has no tokenizer files .*vocabulary size \(120\)",
        ),
        "--max_length above the positions": lambda: Case(
            args("--max_length", "100"), r"--max_length 100 is more than the teacher .*64 positions"
        ),
        "too many student layers": lambda: Case(args("--student_num_layers", "9"), r"1 to 4 layers"),
        "--student_layers out of range": lambda: Case(args("--student_layers", "1,7"), r"\[7\] out of range.*0..3"),
        "--student_layers not numbers": lambda: Case(
            args("--student_layers", "a,b"), r"comma-separated layer numbers"
        ),
        "no teacher": lambda: Case(
            ["--train_file", train, "--validation_file", dev, "--output_dir", out, *COMMON],
            r"--teacher_model_name_or_path is required",
        ),
        # --- numbers
        "NaN weight": lambda: Case(args("--soft_weight", "nan"), r"--soft_weight is nan: it must be a finite number"),
        "infinite temperature": lambda: Case(args("--temperature", "inf"), r"--temperature is inf"),
        "negative learning rate": lambda: Case(
            args("--learning_rate", "-1"), r"--learning_rate is -1.0: it must be >= 0"
        ),
        "--max_length 0": lambda: Case(args("--max_length", "0"), r"--max_length is 0: it must be >= 1"),
        "batch size 0": lambda: Case(
            args("--per_device_train_batch_size", "0"), r"--per_device_train_batch_size is 0"
        ),
        "--max_steps 0": lambda: Case(args("--max_steps", "0"), r"--max_steps is 0: give a number of steps >= 1"),
        "--adam_beta1 1.5": lambda: Case(args("--adam_beta1", "1.5"), r"--adam_beta1 is 1.5: it must be >= 0 and < 1"),
        # --- output folder
        "previous run": lambda: Case(
            args(output=_previous_run(tmp_path)), r"already holds a previous run.*--overwrite_output_dir"
        ),
        "resume with nothing to resume": lambda: Case(
            args("--resume_from_checkpoint", "last", output=str(tmp_path)), r"holds no complete checkpoint"
        ),
        "resume and overwrite": lambda: Case(
            args("--resume_from_checkpoint", "last", "--overwrite_output_dir"),
            r"--overwrite_output_dir deletes the checkpoints",
        ),
        "output_dir is a file": lambda: Case(args(output=train), r"--output_dir .*train.csv is a file"),
        "output_dir under a file": lambda: Case(
            args(output=os.path.join(train, "out")), r"cannot be created: .* is a file"
        ),
        "overwrite over the teacher's folder": lambda: Case(
            args("--overwrite_output_dir", output=a["teacher"]),
            r"--overwrite_output_dir removes only what earlier runs wrote .*\['config.json', 'model.safetensors'",
        ),
        "output_dir not writable": lambda: Case(
            args(), r"is not writable", mock.patch("tempfile.TemporaryFile", side_effect=PermissionError(13, "denied"))
        ),
        "disk full": lambda: Case(
            args(), r"MiB free on its disk", mock.patch("shutil.disk_usage", return_value=mock.Mock(free=2**20))
        ),
        "output_dir held by a live run": lambda: Case(
            args(output=_held_folder(tmp_path)), r"is in use by run abc123 \(pid \d+"
        ),
        # --- Hub push
        "push without id": lambda: Case(args("--push_to_hub"), r"--push_to_hub needs --hub_model_id"),
        "push with a bad repo id": lambda: Case(
            args("--push_to_hub", "--hub_model_id", "me/bad name"), r"'me/bad name' is not a valid Hub repo id"
        ),
        "push without token": lambda: Case(
            args("--push_to_hub", "--hub_model_id", "me/x"), r"no Hugging Face credentials"
        ),
        # --- config file
        "missing config file": lambda: Case([str(tmp_path / "nope.yaml")], r"config file .*nope.yaml does not exist"),
        "unknown flag": lambda: Case(args("--tempreature", "2"), r"unknown arguments \['--tempreature', '2'\]"),
    }


CASE_NAMES = list(
    _cases(
        dict.fromkeys(["teacher", "train", "dev", "root", "base", "other_vocab", "no_tokenizer"], ""),
        Path("/nonexistent"),
    )
)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_fails_before_training(name, assets, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    forbid_training(monkeypatch, distil_bert.DistillationTrainer)
    case = _cases(assets, tmp_path)[name]()
    before = listing(tmp_path), listing(assets["root"])
    with mock.patch("huggingface_hub.get_token", return_value=None), case.patch or contextlib.nullcontext():
        with pytest.raises(ValueError, match=case.message):
            distil_bert.main(case.argv)
    assert (listing(tmp_path), listing(assets["root"])) == before  # nothing written anywhere


@pytest.mark.parametrize(
    "name, files, extra, message",
    [
        ("blank validation file", ("w1 w2 w3\nw4 w5\n", "\n  \n\n"), (), r"dev.txt has only blank lines"),
        (
            "mlm_probability above 1",
            ("w1 w2 w3\n", "w1 w2\n"),
            ("--mlm_probability", "1.5"),
            r"--mlm_probability is 1.5: it must be > 0 and < 1",
        ),
        (
            "not a masked LM teacher",
            ("w1 w2 w3\n", "w1 w2\n"),
            ("--teacher_model_name_or_path", "CLASSIFIER"),
            r"not a masked-language model",
        ),
    ],
)
def test_mlm_recipe_bad_input(name, files, extra, message, assets, tmp_path, monkeypatch):
    forbid_training(monkeypatch, distil_bert_mlm.DistillationTrainer)
    train, dev = write_file(tmp_path, "train.txt", files[0]), write_file(tmp_path, "dev.txt", files[1])
    extra = [assets["teacher"] if x == "CLASSIFIER" else x for x in extra]
    with pytest.raises(ValueError, match=message):
        distil_bert_mlm.main(files_args(assets["mlm"], train, dev, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--hub_token", "hf_abc", "--lr", "1"], ["--hub_token", "REDACTED", "--lr", "1"]),
        (["--hub_token=hf_abc"], ["--hub_token=REDACTED"]),
        (["--wandb-api-key", "k", "--db_password", "p"], ["--wandb-api-key", "REDACTED", "--db_password", "REDACTED"]),
        (["--output_dir", "hf_" + "x" * 30], ["--output_dir", "REDACTED"]),  # a token-shaped value anywhere
        (
            ["--include_tokens_per_second", "true", "--max_length", "64"],
            ["--include_tokens_per_second", "true", "--max_length", "64"],
        ),  # not secrets
        (
            ["CONFIG.yaml", "--push_to_hub", "--hub_token", "t"],
            ["CONFIG.yaml", "--push_to_hub", "--hub_token", "REDACTED"],
        ),
    ],
)
def test_secrets_are_redacted_from_the_command(argv, expected):
    assert redact_secrets(argv) == expected


def test_cli_error_is_one_clear_line(assets, tmp_path):
    """Run as a script, a bad input ends with the message (the traceback's last line), exit code 1."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "recipes" / "distil_bert.py"),
            *recipe_args(assets["teacher"], (assets["train"], assets["dev"]), tmp_path / "o", "--soft_weight", "nan"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "ValueError: --soft_weight is nan: it must be a finite number."


def test_student_folder_without_tokenizer_files_but_the_same_vocabulary_gets_a_warning(tmp_path, caplog):
    teacher_tokenizer = make_tokenizer(tmp_path / "tok")
    tiny_bert(layers=2, hidden=32).save_pretrained(tmp_path / "student")  # the teacher's 101 tokens, no tokenizer
    with caplog.at_level("WARNING"):
        check_student_tokenizer(str(tmp_path / "student"), teacher_tokenizer, "teacher")
    expected = "has no tokenizer files; it is trained with the teacher's tokenizer (same vocabulary size, 101)"
    assert expected in caplog.text


@pytest.mark.parametrize(
    "name, extra, data, message",
    [
        (
            "NaN temperature",
            ["--top_k", "2", "--temperature", "nan"],
            None,
            r"--temperature is nan: it must be a finite",
        ),
        ("temperature 0", ["--temperature", "0"], None, r"--temperature is 0.0: it must be > 0"),
        ("top_k 0", ["--top_k", "0"], None, r"--top_k is 0: it must be >= 1"),
        ("batch size 0", ["--batch_size", "0"], None, r"--batch_size is 0: it must be >= 1"),
        (
            "fp16 as dtype",
            ["--teacher_dtype", "fp16"],
            None,
            r"--teacher_dtype 'fp16' is not one of \['bfloat16', 'float16'",
        ),
        (
            "max_length above the positions",
            ["--max_length", "100"],
            None,
            r"--max_length 100 is more than the teacher",
        ),
        ("missing teacher folder", ["--teacher_model_name_or_path", "runs/x/teacher"], None, r"no such local folder"),
        (
            ".tsv file (read locally, not as a Hub name)",
            [],
            ("d.tsv", "text\tlabel\nw1\t0\n\t1\n"),
            r"row\(s\) of --data_file .*d.tsv have no value in column 'text'",
        ),
        (".txt file, blank", [], ("d.txt", "\n\n"), r"d.txt has only blank lines"),
        ("NaN text", [], ("d.csv", "text,label\nw1 w2,0\n,1\n"), r"no value in column 'text' .*data row\(s\) 1 "),
        ("non-UTF-8", [], ("d.csv", "text\ncaf\xe9\n".encode("latin-1")), r"d.csv is not UTF-8"),
        ("header only", [], ("d.csv", "text,label\n"), r"d.csv has only a header line"),
    ],
)
def test_cache_cli_bad_input(name, extra, data, message, assets, tmp_path):
    from hf_distill.recipes.cache_cli import main

    data_file = write_file(tmp_path, *data) if data else assets["train"]
    with pytest.raises(ValueError, match=message):
        main(cache_args(assets["teacher"], data_file, tmp_path / "cached", *extra))
    assert not (tmp_path / "cached").exists()


def test_cache_cli_stores_label_names_as_the_teacher_ids_and_the_cache_trains(assets, tmp_path):
    from datasets import load_from_disk

    from hf_distill import DistillationTrainer
    from hf_distill.recipes.cache_cli import main

    out = tmp_path / "cached"
    main(cache_args(assets["teacher"], assets["dev"], out))
    cached = load_from_disk(str(out))
    with open(assets["dev"]) as f:
        names = [row["label"] for row in csv.DictReader(f)]
    assert cached["label"] == [LABELS.index(n) for n in names]  # the teacher's id2label is LABELS in order
    args = distillation_args(tmp_path / "o", max_steps=1, per_device_train_batch_size=4, disable_tqdm=False)
    trainer = DistillationTrainer(
        tiny_bert(layers=1, hidden=32),
        None,
        args,
        train_dataset=cached,
        processing_class=tf.AutoTokenizer.from_pretrained(assets["teacher"]),
    )
    trainer.train()  # used to fail at step 1: string labels, "excessive nesting"
    assert {"soft_loss", "hard_loss"} <= set(trainer.state.log_history[0])
