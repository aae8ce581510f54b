"""Bad data and settings that used to train silently wrong, lose a finished run, or end in a raw traceback (issue 21,
second half). Like test_recipe_inputs.py: one table row per mistake, each a ValueError that names the file, the row,
the column or the argument and the fix, before any training and without writing anything."""

from __future__ import annotations

import json
import logging
import shutil
from collections import namedtuple
from pathlib import Path
from unittest import mock

import pytest
import torch
import transformers as tf
from datasets import Dataset
from recipe_helpers import (
    cache_args,
    files_args,
    forbid_training,
    listing,
    recipe_args,
    recipe_assets,
    save_classifier,
    write_file,
)
from testing_utils import make_tokenizer, tiny_gpt2

from hf_distill.lm_data import tokenize_prompt_completion
from recipes import distil_bert, distil_bert_mlm, distil_causal_lm, train_teacher

ROOT = Path(__file__).resolve().parent.parent
OFFPOLICY_CONFIG = str(ROOT / "recipes" / "configs" / "causal_lm_offpolicy.yaml")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_assets")
    a = recipe_assets(root)
    student = root / "student"
    save_classifier(student, layers=2, seed=1)
    a["student"] = str(student)
    broken = root / "truncated_teacher"
    shutil.copytree(a["teacher"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a copy cut short
    a["truncated"] = str(broken)
    sharded = root / "sharded_teacher"
    tf.AutoModelForSequenceClassification.from_pretrained(a["teacher"]).save_pretrained(sharded, max_shard_size="20KB")
    make_tokenizer(sharded)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()  # one shard lost in a copy
    a["missing_shard"], a["lost_shard"] = str(sharded), shards[-1].name
    return a


def _jsonl(folder: Path, name: str, rows: list[dict]) -> str:
    return write_file(folder, name, "".join(json.dumps(r) + "\n" for r in rows))


def _parquet(folder: Path, name: str, columns: dict) -> str:
    Dataset.from_dict(columns).to_parquet(str(folder / name))
    return str(folder / name)


Case = namedtuple("Case", "argv message")


def _cases(a, tmp_path: Path):
    """name -> a function making Case(argv for distil_bert, regex of the expected message)."""
    t, train, dev, out = a["teacher"], a["train"], a["dev"], str(tmp_path / "out")

    def args(*extra, teacher=t, data=(train, dev)):
        return recipe_args(teacher, data, out, *extra)

    good = [{"text": "w1 w2", "label": "neutral"}, {"text": "w3", "label": "positive"}]
    return {
        # --- text columns hold one string per row
        "lists in a JSONL text column": lambda: Case(
            args(
                data=(
                    _jsonl(
                        tmp_path,
                        "nested.jsonl",
                        [{"text": ["w1", "w2"], "label": "neutral"}, {"text": ["w3"], "label": "positive"}],
                    ),
                    _jsonl(tmp_path, "dev.jsonl", good),
                )
            ),
            r"--train_file .*nested.jsonl, row 0 .*column 'text' \(--text_column\) holds a list of 2 value\(s\) "
            r".*join the list into one string",
        ),
        "a list among strings in a JSONL text column": lambda: Case(
            args(
                data=(
                    _jsonl(tmp_path, "mixed.jsonl", [good[0], {"text": ["w1", "w2"], "label": "neutral"}]),
                    _jsonl(tmp_path, "dev.jsonl", good),
                )
            ),
            r"mixed.jsonl: column\(s\) {'text': \['list', 'str'\]} mix value types \(column 'text': str at row 0, "
            r"list at row 1\)",
        ),
        "struct in a parquet text column": lambda: Case(
            args(
                data=(
                    _parquet(
                        tmp_path,
                        "struct.parquet",
                        {"text": [{"a": "w1"}, {"a": "w2"}], "label": ["neutral", "positive"]},
                    ),
                    _parquet(tmp_path, "dev.parquet", {"text": ["w1"], "label": ["neutral"]}),
                )
            ),
            r"struct.parquet, row 0 .*column 'text' .*holds a struct / mapping with keys \['a'\]",
        ),
        "numbers in the text column": lambda: Case(
            args(data=(write_file(tmp_path, "numbers.csv", "text,label\n12,neutral\n7,positive\n"), dev)),
            r"numbers.csv, row 0 .*column 'text' \(--text_column\) holds a number \(12\), not text",
        ),
        "numbers in the second text column": lambda: Case(
            args(
                "--text_column_2",
                "extra",
                data=(
                    write_file(tmp_path, "pairs.csv", "text,extra,label\nw1,3,neutral\n"),
                    write_file(tmp_path, "dev_pairs.csv", "text,extra,label\nw1,w2,neutral\n"),
                ),
            ),
            r"pairs.csv, row 0 .*column 'extra' \(--text_column_2\) holds a number",
        ),
        "numbers in the transfer file": lambda: Case(
            args("--transfer_file", write_file(tmp_path, "transfer.csv", "text\n4\n5\n")),
            r"--transfer_file .*transfer.csv, row 0 .*column 'text' .*holds a number \(4\)",
        ),
        # --- labels are classes
        "continuous labels": lambda: Case(
            args(data=(write_file(tmp_path, "scores.csv", "text,label\nw1 w2,0.37\nw3,0.81\n"), dev)),
            r"scores.csv, row 0 .*column 'label' \(--label_column\) holds 0.37, a continuous value.*class ids",
        ),
        # --- max_length leaves room for text
        "--max_length 1": lambda: Case(
            args("--max_length", "1"),
            r"--max_length 1 leaves no room for text: the tokenizer adds 2 special token\(s\).*--max_length 3",
        ),
        "--max_length 2 ([CLS][SEP] only)": lambda: Case(args("--max_length", "2"), r"--max_length 2 leaves no room"),
        "--max_length 3 for sentence pairs": lambda: Case(
            args("--max_length", "3", "--text_column_2", "text"),
            r"adds 3 special token\(s\) to every sentence pair.*--max_length 5",
        ),
        # --- budgets
        "--two_stage yes with --max_steps 1": lambda: Case(
            args("--two_stage", "yes", "--max_steps", "1"),
            r"--two_stage yes cannot split --max_steps 1 between two stages.*--max_steps 2 or more",
        ),
        "--push_to_hub offline (the push is the run's last step)": lambda: Case(
            args("--push_to_hub", "--hub_model_id", "me/x", "--hub_token", "t"),
            r"--push_to_hub, but HF_HUB_OFFLINE is set: the push at the end of the run would fail after training",
        ),
        # --- models
        "truncated model.safetensors in the teacher folder": lambda: Case(
            args(teacher=a["truncated"]),
            r"--teacher_model_name_or_path: the weight file .*truncated_teacher/"
            r"model.safetensors is damaged or truncated.*save the model\s+again",
        ),
        "a shard listed in the index is missing": lambda: Case(
            args(teacher=a["missing_shard"]),
            r"model.safetensors.index.json lists shard\(s\) \['" + a["lost_shard"] + r"'\] that are not in the folder",
        ),
        # --- two sources for one thing on the command line
        "Hub dataset and local files": lambda: Case(
            args("--dataset_name", "glue"),
            r"the data is named twice: --dataset_name glue \(command line\); --train_file .*\(command line\)",
        ),
        "student path and student layers": lambda: Case(
            args("--student_model_name_or_path", a["student"], "--student_num_layers", "2"),
            r"the student is named twice: --student_model_name_or_path .*; --student_num_layers 2",
        ),
    }


CASE_NAMES = list(
    _cases(
        {k: "" for k in ("teacher", "train", "dev", "student", "truncated", "missing_shard", "lost_shard")},
        Path("/nonexistent"),
    )
)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_data_fails_before_training(name, assets, tmp_path, monkeypatch):
    forbid_training(monkeypatch, distil_bert.DistillationTrainer)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # as in CI, whatever the environment
    case = _cases(assets, tmp_path)[name]()
    before = listing(tmp_path), listing(assets["root"])
    with pytest.raises(ValueError, match=case.message):
        distil_bert.main(case.argv)
    assert (listing(tmp_path), listing(assets["root"])) == before  # nothing written anywhere


@pytest.mark.parametrize(
    "name, text, extra, message",
    [
        ("numbers in the text column", "text\n1\n2\n", (), r"train.csv, row 0 .*column 'text' .*holds a number \(1\)"),
        ("--max_length 1", "text\nw1 w2\n", ("--max_length", "1"), r"--max_length 1 leaves no room for text"),
    ],
)
def test_mlm_recipe_refuses_non_text(name, text, extra, message, assets, tmp_path, monkeypatch):
    forbid_training(monkeypatch, distil_bert_mlm.DistillationTrainer)
    train, dev = write_file(tmp_path, "train.csv", text), write_file(tmp_path, "dev.csv", "text\nw1 w2\n")
    argv = files_args(assets["mlm"], train, dev, tmp_path / "out", *extra)
    with pytest.raises(ValueError, match=message):
        distil_bert_mlm.main(argv)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, model, data, extra, message",
    [
        (
            "a 3-label classifier on 2-label data",
            "teacher",
            "text,label\nw1,yes\nw2,no\n",
            (),
            r"is a classifier with 3 labels .*but the data has 2 \(\['no', 'yes'\]\).*--ignore_mismatched_sizes true",
        ),
        (
            "continuous labels",
            "teacher",
            "text,label\nw1,0.37\nw2,0.81\n",
            ("--ignore_mismatched_sizes", "true"),
            r"holds 0.37, a continuous value",
        ),
    ],
)
def test_train_teacher_bad_input(name, model, data, extra, message, assets, tmp_path, monkeypatch):
    forbid_training(monkeypatch, train_teacher.Trainer)
    files = write_file(tmp_path, "train.csv", data), write_file(tmp_path, "dev.csv", data)
    argv = files_args(assets[model], *files, tmp_path / "out", *extra, model_flag="--model_name_or_path")
    with pytest.raises(ValueError, match=message):
        train_teacher.main(argv)
    assert not (tmp_path / "out").exists()


def test_train_teacher_reinitialises_a_head_of_another_size_when_asked(assets, tmp_path):
    data = write_file(tmp_path, "d.csv", "text,label\nw1 w2,yes\nw3,no\nw4 w5,yes\nw6,no\n")
    argv = files_args(
        assets["teacher"],
        data,
        data,
        tmp_path / "out",
        "--ignore_mismatched_sizes",
        "true",
        "--max_steps",
        "1",
        model_flag="--model_name_or_path",
    )
    train_teacher.main(argv)
    config = tf.AutoConfig.from_pretrained(tmp_path / "out")
    assert config.num_labels == 2 and config.id2label == {0: "no", 1: "yes"}


@pytest.mark.parametrize(
    "name, data, extra, message",
    [
        (
            "numbers in the text column",
            "text,label\n12,neutral\n",
            (),
            r"--data_file .*d.csv, row 0 .*column 'text' \(--text_column\) holds a number \(12\)",
        ),
        ("--device cuda on a CPU-only torch", None, ("--device", "cuda"), r"--device cuda, but .*pass --device cpu"),
        ("--max_length 1", None, ("--max_length", "1"), r"--max_length 1 leaves no room for text"),
    ],
)
def test_cache_cli_refuses_non_text_and_missing_devices(name, data, extra, message, assets, tmp_path):
    from hf_distill.recipes.cache_cli import main

    if "cuda" in name and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    data_file = write_file(tmp_path, "d.csv", data) if data else assets["train"]
    with mock.patch("hf_distill.recipes.cache_cli.load_pretrained_teacher", side_effect=AssertionError("loaded")):
        with pytest.raises(ValueError, match=message):
            main(cache_args(assets["teacher"], data_file, tmp_path / "cached", *extra))
    assert not (tmp_path / "cached").exists()


# ---- causal LMs ------------------------------------------------------------------------------------------------

CHAT = "{% for m in messages %}{{ m['content'] }} [SEP] {% endfor %}"
STRICT_CHAT = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
    "supported') }}{% endif %}{{ m['content'] }} [SEP] {% endfor %}"
)


@pytest.fixture(scope="module")
def lm_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm") / "teacher"
    tiny_gpt2(layers=4, hidden=32).save_pretrained(folder)  # 64 positions
    tok = make_tokenizer(folder)
    tok.chat_template = CHAT
    tok.save_pretrained(folder)
    return str(folder)


def _lm_rows(n: int, seed: int) -> list[dict]:
    return [{"prompt": f"w{seed + i} w{i + 2}", "completion": f"w{i + 3} w{i + 4} w{i + 5}"} for i in range(n)]


USER = {"role": "user", "content": "w1"}
ANSWER = {"role": "assistant", "content": "w2"}


@pytest.mark.parametrize(
    "name, columns, message",
    [
        (
            "null prompt",
            {"prompt": ["w1", None], "completion": ["w2", "w3"]},
            r"1 row\(s\) of --train_file t.jsonl have no value in column 'prompt': "
            r"None / NaN \(an empty string is fine\)",
        ),
        (
            "prompt is a list of chat messages, completion is text",
            {"prompt": [[USER]], "completion": ["w2"]},
            r"example 0 of --train_file t.jsonl: the prompt is a list of chat messages but the completion is text",
        ),
        (
            "list in the prompt column",
            {"prompt": [["w1", "w2"]], "completion": [["w3"]]},
            r"--train_file t.jsonl, row 0 .*column 'prompt': message 0 is 'w1'; every message must be a mapping",
        ),
        (
            "numbers in the completion column",
            {"prompt": ["w1", "w2"], "completion": [3, 4]},
            r"--train_file t.jsonl, row 0 .*column 'completion' holds a number \(3\)",
        ),
        (
            "messages given as a string",
            {"messages": ['[{"role": "user", "content": "w1"}]']},
            r"row 0 .*column 'messages' holds a string \('\[{\"role\".*where chat "
            r"data needs a list of messages.*json.loads",
        ),
        (
            "a message without a role",
            {"messages": [[{"content": "w1"}, ANSWER]]},
            r"row 0 .*column 'messages': message 0 is \{'content': 'w1', 'role': "
            r"None\}; every message must be a mapping "
            r"with a string 'role'",
        ),
        (
            "a chat template that rejects a role",
            {"messages": [[{"role": "system", "content": "w0"}, USER, ANSWER]]},
            r"example 0 of --train_file t.jsonl: the tokenizer's chat template refused the conversation with roles "
            r"\['system', 'user', 'assistant'\]: System role not supported.*fold a 'system' message",
        ),
    ],
)
def test_lm_data_refuses_what_is_not_text(name, columns, message, tokenizer):
    tokenizer.chat_template = STRICT_CHAT
    with pytest.raises(ValueError, match=message):
        tokenize_prompt_completion(
            Dataset.from_list([dict(zip(columns, v)) for v in zip(*columns.values())]),
            tokenizer,
            max_length=16,
            source="--train_file t.jsonl",
        )


def test_lm_data_keeps_an_empty_prompt(tokenizer):
    row = tokenize_prompt_completion(Dataset.from_dict({"prompt": [""], "completion": ["w2"]}), tokenizer, 8)[0]
    assert row["labels"] == row["input_ids"]  # no prompt token, the whole row is completion


def _lm_argv(teacher, tmp_path, *extra, config=None):
    train = _jsonl(tmp_path, "train.jsonl", _lm_rows(8, 0))
    dev = _jsonl(tmp_path, "dev.jsonl", _lm_rows(4, 1))
    head = [config] if config else []
    return [
        *head,
        "--teacher_model_name_or_path",
        teacher,
        "--train_file",
        train,
        "--validation_file",
        dev,
        "--output_dir",
        str(tmp_path / "out"),
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--use_cpu",
        "true",
        "--bf16",
        "false",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--disable_tqdm",
        "true",
        "--logging_steps",
        "1",
        *extra,
    ]


@pytest.mark.parametrize(
    "name, extra, message",
    [
        (
            "--max_length 1",
            ("--max_length", "1", "--student_num_layers", "2"),
            r"--max_length 1 leaves no room for a prompt and a completion \(at least 2 tokens",
        ),
        (
            "on-policy samples longer than the student",
            ("--max_length", "24", "--lmbda", "0.5", "--max_new_tokens", "48", "--student_num_layers", "2"),
            r"--max_length \(24\) \+ --max_new_tokens \(48\) exceeds the teacher's 64 positions.*--max_new_tokens 40",
        ),
    ],
)
def test_causal_lm_recipe_checks_lengths_at_the_start(name, extra, message, lm_teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(distil_causal_lm.DistillationTrainer, "train", mock.Mock(side_effect=AssertionError("train")))
    with pytest.raises(ValueError, match=message):
        distil_causal_lm.main(_lm_argv(lm_teacher, tmp_path, *extra))
    assert not (tmp_path / "out").exists()


def test_shipped_config_with_local_files_and_a_cut_student_finishes_its_card(lm_teacher, tmp_path, caplog):
    """causal_lm_offpolicy.yaml names a Hub student and dataset and max_new_tokens 128; with local files and
    --student_num_layers on the command line (no Hub needed) on a 64-position model, the run must not go to the Hub
    nor crash in the card's samples after training: the command line wins, the samples are cut to fit."""
    argv = _lm_argv(
        lm_teacher,
        tmp_path,
        "--student_num_layers",
        "2",
        "--max_length",
        "24",
        "--per_device_eval_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "1",
        "--overwrite_output_dir",
        "false",
        "--final_generation_eval_samples",
        "2",
        config=OFFPOLICY_CONFIG,
    )
    with caplog.at_level(logging.WARNING):
        results = distil_causal_lm.main(argv)
    assert (
        "the data: --train_file" in caplog.text
        and "takes precedence over --dataset_name trl-lib/chatbot_arena_completions" in caplog.text
    )
    assert (
        "the student: --student_num_layers 2 on the command line takes precedence over "
        "--student_model_name_or_path Qwen/Qwen2.5-0.5B-Instruct" in caplog.text
    )
    assert results["distillation"]["student_model"] is None and results["distillation"]["student_num_layers"] == 2
    assert results["dataset"]["train_file"].endswith("train.jsonl") and results["dataset"]["name"] is None
    assert results["distillation"]["mode"] == "off-policy"
    dev = tokenize_prompt_completion(
        Dataset.from_list(_lm_rows(4, 1)), tf.AutoTokenizer.from_pretrained(lm_teacher), 24
    )
    longest = max(sum(1 for y in row["labels"] if y == -100) for row in dev)  # prompt tokens, by hand
    assert f"gets {64 - longest} new tokens, not --max_new_tokens 128" in caplog.text
    assert results["distillation"]["max_new_tokens"] == 64 - longest
    samples = results["generation_samples"]
    assert len(samples) == 3 and (tmp_path / "out" / "README.md").exists()
    assert results["generation_eval_examples"] == 2  # the generation metrics ran at the fitted length too


def test_two_stages_share_max_steps(assets, tmp_path, monkeypatch):
    """--max_steps 2 with two stages (auto: a student given by path) runs 2 optimizer steps in all, not 2 + the
    hidden stage's epochs."""
    steps = []

    class Counting(distil_bert.DistillationTrainer):
        def train(self, *args, **kwargs):
            out = super().train(*args, **kwargs)
            steps.append((self.args.hidden_weight, self.state.global_step))
            return out

    monkeypatch.setattr(distil_bert, "DistillationTrainer", Counting)
    results = distil_bert.main(
        recipe_args(
            assets["teacher"],
            (assets["train"], assets["dev"]),
            tmp_path / "out",
            "--student_model_name_or_path",
            assets["student"],
            "--max_steps",
            "2",
            "--num_train_epochs",
            "5",
            "--per_device_train_batch_size",
            "4",
        )
    )
    assert results["levers"]["two_stage"] is True
    assert [(w > 0, n) for w, n in steps] == [(True, 1), (False, 1)]  # hidden states, then predictions
    assert results["train"]["train_runtime"] > 0 and len(results["train_log"]) == 1  # the prediction stage's step


# ---- config file and command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, flags, kept, message",
    [
        (
            {"dataset_name": "hub/data", "dataset_config_name": "c", "student_num_layers": 3},
            ["--train_file", "t.csv", "--validation_file", "v.csv"],
            {"student_num_layers": 3},
            "the data: --train_file t.csv --validation_file v.csv on the command "
            "line takes precedence over --dataset_name "
            "hub/data --dataset_config_name c in c.yaml (ignored)",
        ),
        (
            {"student_model_name_or_path": "hub/student", "train_file": "t.csv"},
            ["--student_layers", "0,2"],
            {"train_file": "t.csv"},
            "the student: --student_layers 0,2 on the command line takes precedence over "
            "--student_model_name_or_path hub/student in c.yaml (ignored)",
        ),
        ({"dataset_name": "hub/data"}, ["--dataset_name", ""], {"dataset_name": "hub/data"}, None),  # "" unsets only
        (
            {"train_file": "t.csv"},
            ["--train_file", "u.csv"],
            {"train_file": "t.csv"},
            None,
        ),  # same alternative: flag wins
    ],
)
def test_command_line_sources_replace_the_config_files(config, flags, kept, message, caplog):
    from hf_distill.recipes.arguments import resolve_sources

    given = dict(zip(flags[::2], flags[1::2]))
    given = {k.removeprefix("--"): v for k, v in given.items()}
    with caplog.at_level(logging.WARNING):
        assert resolve_sources(config, given, "c.yaml") == kept
    assert (message in caplog.text) if message else not caplog.text


def test_two_sources_in_the_config_file_are_an_error(tmp_path):
    from hf_distill.recipes.arguments import OutputArguments, parse_args

    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher_model_name_or_path: t\ndataset_name: glue\ntrain_file: a.csv\nvalidation_file: b.csv\n")
    types = (distil_bert.ModelArguments, distil_bert.LeverDataArguments, OutputArguments)
    with pytest.raises(
        ValueError,
        match=r"the data is named twice: --dataset_name glue \(.*c.yaml\); --train_file "
        r"a.csv --validation_file b.csv \(.*c.yaml\)",
    ):
        parse_args(types, [str(cfg)])
    model_args, data_args, _ = parse_args(types, [str(cfg), "--dataset_name", ""])  # blanked on the command line
    assert (data_args.dataset_name, data_args.train_file) == ("", "a.csv")
    cfg.write_text("learning_rate: fast\n")
    with pytest.raises(ValueError, match=r"c.yaml: argument --learning_rate.*: invalid float value: 'fast'"):
        parse_args((distil_bert.LeverTrainingArguments,), [str(cfg)])


def test_lora_flags_are_built_from_peft_lora_config():
    import dataclasses

    from peft import LoraConfig

    from hf_distill.recipes.arguments import LORA_DEFAULTS, LoraArguments, lora_config, parse_args

    peft_fields = {f.name for f in dataclasses.fields(LoraConfig)}
    assert set(LORA_DEFAULTS) <= peft_fields
    (defaults,) = parse_args((LoraArguments,), ["--use_peft", "true"])
    assert (defaults.lora_r, defaults.lora_alpha, defaults.lora_dropout, defaults.lora_target_modules) == (
        16,
        32,
        0.05,
        "all-linear",
    )  # the recipe's defaults, as before
    (args,) = parse_args(
        (LoraArguments,),
        ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q,v", "--lora_use_rslora", "true"],
    )
    expected = LoraConfig(
        task_type="CAUSAL_LM", r=4, lora_alpha=32, lora_dropout=0.05, target_modules=["q", "v"], use_rslora=True
    )
    assert lora_config(args) == expected
    assert lora_config(parse_args((LoraArguments,), [])[0]) is None


@pytest.mark.parametrize(
    "max_steps, epochs, share, expected",
    [
        (10, 3.0, 1 / 3, ((3, None), (7, None))),  # steps: round(10 / 3) = 3 hidden-state steps, then the other 7
        (2, 3.0, 0.1, ((1, None), (1, None))),  # at least one step each
        (2, 3.0, 0.9, ((1, None), (1, None))),
        (-1, 3.0, 1 / 3, ((-1, 1.0), (-1, 2.0))),  # no --max_steps: the epochs are split
    ],
)
def test_two_stage_budget_splits_one_budget(max_steps, epochs, share, expected, tmp_path):
    from hf_distill import DistillationArguments
    from hf_distill.stages import two_stage_budget

    args = DistillationArguments(
        output_dir=str(tmp_path), max_steps=max_steps, num_train_epochs=epochs, use_cpu=True, report_to=[]
    )
    stage1, stage2 = two_stage_budget(args, share)
    for stage, (steps, stage_epochs) in zip((stage1, stage2), expected):
        assert stage.max_steps == steps
        assert stage_epochs is None or stage.num_train_epochs == pytest.approx(stage_epochs)
    assert (stage1.hidden_weight, stage1.soft_weight, stage2.hidden_weight) == (1.0, 0.0, 0.0)
    assert args.max_steps == max_steps  # the user's arguments are not modified
