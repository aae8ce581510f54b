"""The recipes end to end on tiny local models and data (seconds each); bad inputs: test_recipe_inputs.py."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import transformers as tf
from recipe_helpers import COMMON, LABELS, NO_DROPOUT, recipe_args, save_classifier, write_csv
from safetensors.torch import load_file
from testing_utils import make_tokenizer, tiny_bert

from hf_distill import DistillationObjective
from hf_distill.recipes import data as recipe_data
from hf_distill.recipes.arguments import ClassificationDataArguments, OutputArguments, parse_args
from recipes import distil_bert, distil_bert_mlm, train_teacher

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data(tmp_path):
    return write_csv(tmp_path / "train.csv", 48, seed=0), write_csv(tmp_path / "dev.csv", 20, seed=1)


def predict(folder, csv_path):
    """Plain re-implementation of the evaluation: tokenise, run, argmax."""
    tok = tf.AutoTokenizer.from_pretrained(folder)
    model = tf.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    enc = tok([r["text"] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        preds = model(**enc).logits.argmax(-1).numpy()
    labels = np.array([model.config.label2id[r["label"]] for r in rows])
    return preds, labels


def test_train_teacher_then_distil_end_to_end(tmp_path, data):
    base = tmp_path / "base"
    tiny_bert(layers=4, hidden=32, cls=tf.BertModel, **NO_DROPOUT).save_pretrained(base)
    make_tokenizer(base).save_pretrained(base)
    teacher = tmp_path / "teacher"
    train_teacher.main(
        [
            "--model_name_or_path",
            str(base),
            "--train_file",
            data[0],
            "--validation_file",
            data[1],
            "--output_dir",
            str(teacher),
            "--max_steps",
            "2",
            *COMMON,
        ]
    )
    assert tf.AutoConfig.from_pretrained(teacher).id2label == dict(enumerate(LABELS))  # label names from the data

    out = tmp_path / "student"
    results = distil_bert.main(
        recipe_args(str(teacher), data, out, "--student_num_layers", "2", "--hidden_weight", "1.0")
    )
    files = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "distillation_results.json"} <= files
    assert [f for f in files if f.endswith(".safetensors")] == ["model.safetensors"]  # no teacher weights
    weights = load_file(out / "model.safetensors")
    assert not any(".layer.2." in k or ".layer.3." in k for k in weights)  # 2 student layers only
    assert sum(v.numel() for v in weights.values()) == results["student"]["parameters"]

    saved = json.loads((out / "distillation_results.json").read_text())
    assert saved["distillation"]["student_init_layers"] == [1, 3]  # uniform map 2 <- 4
    assert saved["distillation"]["layer_map"] == {"1": 2, "2": 4}
    for who, folder in (("teacher", teacher), ("student", out)):
        preds, labels = predict(folder, data[1])
        assert saved[who]["accuracy"] == pytest.approx(float(np.mean(preds == labels)))
    speeds = saved["student"]["examples_per_second"], saved["teacher"]["examples_per_second"]
    assert saved["speedup"] == pytest.approx(speeds[0] / speeds[1])
    assert {"soft_loss", "hard_loss", "hidden_loss"} <= set(saved["train_log"][0])
    card = (out / "README.md").read_text()
    assert f"{saved['student']['accuracy']:.4f}" in card and f"{saved['teacher']['macro_f1']:.4f}" in card
    assert "1:2, 2:4" in card and "recipes/distil_bert.py" in card


def test_config_file_with_flag_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "teacher_model_name_or_path: t\nlearning_rate: 5e-5\ntemperature: 4\noutput_dir: o\ntext_column: sentence\n"
    )
    model_args, data_args, out_args, args = parse_args(
        (distil_bert.ModelArguments, ClassificationDataArguments, OutputArguments, distil_bert.DistillationArguments),
        [str(cfg), "--temperature", "3", "--overwrite_output_dir"],
    )
    assert (model_args.teacher_model_name_or_path, data_args.text_column) == ("t", "sentence")
    assert args.learning_rate == 5e-5 and args.temperature == 3.0 and out_args.overwrite_output_dir
    cfg.write_text("not_a_field: 1\n")
    with pytest.raises(ValueError, match="not_a_field"):
        parse_args((OutputArguments,), [str(cfg)])


TWO_PROCESS_COMMON = ["--student_num_layers", "2", "--hidden_weight", "1.0", "--max_steps", "3", "--seed", "7"]


def two_process_job(folder: Path):
    """recipes/distil_bert.py on 2 processes x 4 examples (a job of the session's torchrun launch): its teacher and
    data under `folder`, its output in folder/two."""
    teacher = save_classifier(folder / "teacher")
    data = write_csv(folder / "train.csv", 32, seed=0), write_csv(folder / "dev.csv", 12, seed=1)
    argv = recipe_args(teacher, data, folder / "two", *TWO_PROCESS_COMMON, "--per_device_train_batch_size", "4")
    return "recipes.distil_bert", "main", argv


@pytest.mark.torchrun_job("bert_recipe", prepare=two_process_job)
def test_two_processes_match_one_process(tmp_path, torchrun_jobs):
    """torchrun --nproc_per_node 2 with 4 per process == one process with 8 (same global batch, no dropout)."""
    folder = torchrun_jobs["bert_recipe"]
    teacher, data = str(folder / "teacher"), (str(folder / "train.csv"), str(folder / "dev.csv"))
    two = json.loads((folder / "two" / "distillation_results.json").read_text())
    assert two["distillation"]["global_train_batch_size"] == 8

    one = recipe_args(teacher, data, tmp_path / "one", *TWO_PROCESS_COMMON, "--per_device_train_batch_size", "8")
    distil_bert.main(one)
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(folder / "two" / "model.safetensors")
    teacher_w = load_file(Path(teacher) / "model.safetensors")
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(w1[key], teacher_w["bert.encoder.layer.1.attention.self.query.weight"])  # it trained
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)


def test_mlm_recipe_logs_its_loss_components(tmp_path):
    teacher_dir = tmp_path / "mlm_teacher"
    tiny_bert(layers=4, hidden=32, cls=tf.BertForMaskedLM).save_pretrained(teacher_dir)
    make_tokenizer(teacher_dir).save_pretrained(teacher_dir)
    rng = random.Random(0)
    for name, n in (("train.txt", 40), ("dev.txt", 12)):
        (tmp_path / name).write_text("\n".join(" ".join(f"w{rng.randrange(96)}" for _ in range(12)) for _ in range(n)))
    out = tmp_path / "mlm_student"
    results = distil_bert_mlm.main(
        [
            "--teacher_model_name_or_path",
            str(teacher_dir),
            "--train_file",
            str(tmp_path / "train.txt"),
            "--validation_file",
            str(tmp_path / "dev.txt"),
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "8",
            "--soft_weight",
            "5",
            "--hard_weight",
            "2",
            "--hidden_weight",
            "1",
            "--hidden_loss",
            "cosine",
            "--mlm_probability",
            "0.3",
            *COMMON,
        ]
    )
    for entry in results["train_log"]:
        parts = [entry["soft_loss"], entry["hard_loss"], entry["hidden_loss"]]
        assert all(np.isfinite(parts)) and entry["soft_loss"] > 0
        # the logged total is the weighted sum of the logged parts
        assert entry["loss"] == pytest.approx(5 * parts[0] + 2 * parts[1] + 1 * parts[2], rel=1e-3)
    assert {"eval_soft_loss", "eval_hard_loss", "eval_hidden_loss"} <= set(results["eval"])
    assert results["distillation"]["layer_map"] == {"2": 4}  # DistilBERT: last layer to last layer
    card = (out / "README.md").read_text()
    t, s = results["teacher"]["masked_accuracy"], results["student"]["masked_accuracy"]
    assert f"| masked-token accuracy | {t:.4f} | {s:.4f} |" in card and 'pipeline("fill-mask"' in card


def test_mlm_soft_loss_only_on_masked_positions():
    batch = {"labels": torch.tensor([[-100, 5, -100], [7, -100, -100]]), "attention_mask": torch.ones(2, 3)}
    s, t = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    trainer = distil_bert_mlm.MaskedLMDistillationTrainer.__new__(distil_bert_mlm.MaskedLMDistillationTrainer)
    trainer.objective = DistillationObjective(weights={})  # the default rules, forward KL, whole vocabulary
    (pair,) = trainer.distillation_pairs(batch, {"logits": s}, [{"logits": t}])
    assert pair.mask.tolist() == [[False, True, False], [True, False, False]]


def test_push_uploads_exactly_the_output_folder_and_no_token(tmp_path, data):
    teacher = save_classifier(tmp_path / "teacher")
    out = tmp_path / "pushed"
    seen = {}
    secret = "hf_" + "aB3" * 10  # a token given on the command line must not be published

    def upload_folder(**kwargs):
        folder = Path(kwargs["folder_path"])
        seen.update(
            kwargs,
            files=sorted(os.listdir(folder)),
            text={name: (folder / name).read_text() for name in ("README.md", "distillation_results.json")},
        )

    with (
        mock.patch("huggingface_hub.get_token", return_value=None),
        mock.patch("huggingface_hub.HfApi") as api_cls,
        mock.patch("huggingface_hub.constants.HF_HUB_OFFLINE", False),
    ):  # the tests run offline
        api = api_cls.return_value
        api.create_repo.return_value = mock.Mock(repo_id="me/tiny-student")
        api.upload_folder.side_effect = upload_folder
        distil_bert.main(
            recipe_args(
                teacher,
                data,
                out,
                "--push_to_hub",
                "--hub_model_id",
                "me/tiny-student",
                "--student_num_layers",
                "2",
                "--max_steps",
                "1",
                "--hub_token",
                secret,
            )
        )
    api_cls.assert_called_once_with(token=secret)
    for name, text in seen["text"].items():  # what was uploaded: the command is recorded, the token is not
        assert secret not in text and "--hub_token REDACTED" in text, name
    api.create_repo.assert_called_once_with("me/tiny-student", private=False, exist_ok=True, repo_type="model")
    assert seen["repo_id"] == "me/tiny-student" and seen["folder_path"] == str(out)
    assert {"model.safetensors", "README.md", "distillation_results.json", "tokenizer.json"} <= set(seen["files"])
    assert "checkpoint-*" in seen["ignore_patterns"]
    assert "me/tiny-student" in (out / "README.md").read_text()  # the card says how to load the pushed model


@pytest.mark.parametrize(
    "values, class_names, teacher_id2label, expected",
    [
        ([0, 1, 1], ["neg", "pos"], {0: "LABEL_0", 1: "LABEL_1"}, {0: 0, 1: 1}),  # GLUE-style ids, unnamed teacher
        ([0, 1, 1], ["neg", "pos"], {0: "pos", 1: "neg"}, {0: 1, 1: 0}),  # matched by name, not by position
        (["pos", "neg"], None, {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}),
        ([2, 0], None, {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, {0: 0, 2: 2}),
        (["pos", "neg"], None, {0: "LABEL_0", 1: "LABEL_1"}, r"\['neg', 'pos'\] .*not known"),  # names vs unnamed
        ([0, 3], None, {0: "LABEL_0", 1: "LABEL_1"}, r"\[3\] .*not known"),
    ],
)
def test_label_mapping(values, class_names, teacher_id2label, expected):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    plain = Value("string" if isinstance(values[0], str) else "int64")
    feature = ClassLabel(names=class_names) if class_names else plain
    raw = DatasetDict(train=Dataset.from_dict({"label": values}, features=Features({"label": feature})))
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            recipe_data.label_mapping(raw, ["train"], "label", teacher_id2label)
    else:
        assert recipe_data.label_mapping(raw, ["train"], "label", teacher_id2label) == expected


def test_sentence_pairs_are_encoded_as_pairs(tmp_path):
    from datasets import Dataset, DatasetDict

    tok = make_tokenizer(tmp_path / "tok")
    raw = DatasetDict(train=Dataset.from_dict({"a": ["w1 w2"], "b": ["w3 w4 w5"], "y": ["neutral"]}))
    data_args = ClassificationDataArguments(text_column="a", text_column_2="b", label_column="y")
    args = tf.TrainingArguments(output_dir=str(tmp_path / "o"), report_to=[])
    row = recipe_data.tokenize_classification(raw, ["train"], tok, data_args, {"neutral": 1}, args)["train"][0]
    assert tok.convert_ids_to_tokens(row["input_ids"]) == ["[CLS]", "w1", "w2", "[SEP]", "w3", "w4", "w5", "[SEP]"]
    assert row["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1, 1] and row["labels"] == 1


def test_levers_augment_transfer_and_the_hard_baseline(tmp_path, data):
    """--augment and --transfer_file add unlabelled rows (cached once); --compare_with_hard_baseline trains the same
    student on the labels alone for the same number of optimizer steps and reports the gain in results and card."""
    teacher = save_classifier(tmp_path / "teacher")
    transfer = tmp_path / "transfer.txt"
    transfer.write_text("\n".join(f"w{i} w{i + 1} w{i + 2}" for i in range(40)) + "\n")
    out = tmp_path / "student"
    args = recipe_args(
        teacher,
        data,
        out,
        "--student_num_layers",
        "2",
        "--augment",
        "2",
        "--transfer_file",
        str(transfer),
        "--transfer_ratio",
        "0.5",
        "--compare_with_hard_baseline",
    )
    args[args.index("--max_steps") + 1] = "4"
    results = distil_bert.main(args)
    n = results["levers"]["labelled_rows"]
    assert results["levers"]["training_rows"] == n + 2 * n + round(0.5 * n)  # labelled + copies + transfer
    assert results["levers"]["two_stage"] is False  # auto: off for a student cut from the teacher
    base = results["hard_baseline"]
    assert base["optimizer_steps"] == base["distilled_optimizer_steps"] == 4  # the equal budget
    gain = results["distillation_gain"]["accuracy"]
    assert gain == pytest.approx(results["student"]["accuracy"] - base["accuracy"])
    saved = json.loads((out / "distillation_results.json").read_text())
    assert saved["hard_baseline"]["accuracy"] == base["accuracy"]
    assert f"Distillation bought **{100 * gain:+.1f} points**" in (out / "README.md").read_text()
    assert not (out / "hard_baseline").exists()


def test_two_stage_for_a_student_given_by_path(tmp_path, data):
    teacher = save_classifier(tmp_path / "teacher")
    student = save_classifier(tmp_path / "student_init", layers=2, seed=1, vocab_dir=tmp_path / "student_init")
    results = distil_bert.main(
        recipe_args(
            teacher,
            data,
            tmp_path / "out",
            "--student_model_name_or_path",
            student,
            "--num_train_epochs",
            "3",
            "--max_steps",
            "-1",
        )
    )
    assert results["levers"]["two_stage"] is True
    log = results["train_log"]
    assert log and all("soft_loss" in e and "hidden_loss" not in e for e in log)  # the prediction stage's log


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--augment", "-1"], "--augment must be >= 0"),
        (["--transfer_ratio", "2"], "--transfer_file is not"),
        (["--two_stage_fraction", "1.5"], "two_stage_fraction"),
    ],
)
def test_lever_flags_are_checked(tmp_path, data, flags, match):
    with pytest.raises(ValueError, match=match):
        distil_bert.main(recipe_args(save_classifier(tmp_path / "t"), data, tmp_path / "out", *flags))


def test_sweep_runs_the_recipe_per_combination(tmp_path, data):
    from recipes import sweep

    teacher = save_classifier(tmp_path / "teacher")
    base = recipe_args(teacher, data, tmp_path / "unused", "--student_num_layers", "2")
    payload = sweep.main(["--grid", "temperature=1,4", "--sweep_dir", str(tmp_path / "sw"), "--", *base])
    temps = [
        json.loads((tmp_path / "sw" / f"run-{i}" / "distillation_results.json").read_text())["distillation"][
            "temperature"
        ]
        for i in range(2)
    ]
    assert temps == [1.0, 4.0]
    accs = [r["validation"]["accuracy"] for r in payload["runs"]]
    assert payload["best"]["validation"]["accuracy"] == max(accs)


def test_recipe_defaults_use_the_levers_that_won_on_validation(tmp_path):
    args = distil_bert.LeverTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert args.num_train_epochs == 10.0 and args.two_stage == "auto"
    assert (args.temperature, args.soft_weight, args.hard_weight) == (2.0, 0.9, 0.1)
    assert distil_bert.LeverDataArguments().augment == 0


def save_narrow_student(folder):
    """A 2-layer, 16-wide student (the teacher is 32 wide) with the teacher's labels and tokenizer, in `folder`."""
    narrow = tiny_bert(layers=2, hidden=16, num_labels=3, **NO_DROPOUT)
    narrow.config.id2label, narrow.config.label2id = dict(enumerate(LABELS)), {n: i for i, n in enumerate(LABELS)}
    narrow.save_pretrained(folder)
    make_tokenizer(folder)
    return folder


def test_narrower_student_with_learned_projections(tmp_path, data):
    """hidden_weight > 0 with a 16-wide student of a 32-wide teacher: the trainer adds projections (a
    ProjectedStudent); evaluation reads the wrapped model, the saved student and its parameter count are bare."""
    teacher = save_classifier(tmp_path / "teacher")
    student_dir = save_narrow_student(tmp_path / "narrow")
    out = tmp_path / "out"
    results = distil_bert.main(
        recipe_args(
            teacher,
            data,
            out,
            "--student_model_name_or_path",
            str(student_dir),
            "--hidden_weight",
            "1.0",
            "--layer_map",
            "1:2,2:4",
            "--two_stage",
            "no",
        )
    )  # one stage: the logged run aligns hidden states
    weights = load_file(out / "model.safetensors")
    assert not any("proj" in k for k in weights)  # the projections train with the student but are not saved with it
    assert sum(v.numel() for v in weights.values()) == results["student"]["parameters"]
    preds, labels = predict(out, data[1])
    assert results["student"]["accuracy"] == pytest.approx(float(np.mean(preds == labels)))
    assert results["train_log"][0]["hidden_loss"] > 0


def test_two_stage_with_learned_projections_hands_the_bare_student_to_the_second_stage(tmp_path, data):
    """Stage 1 wraps a narrower student with its projections (a ProjectedStudent); stage 2 must get the bare
    student back, or its inputs are filtered against the wrapper's empty signature and nothing reaches the model."""
    teacher = save_classifier(tmp_path / "teacher")
    student_dir = save_narrow_student(tmp_path / "narrow")
    out = tmp_path / "out"
    results = distil_bert.main(
        recipe_args(
            teacher,
            data,
            out,
            "--student_model_name_or_path",
            str(student_dir),
            "--two_stage",
            "yes",
            "--layer_map",
            "1:2,2:4",
            "--num_train_epochs",
            "2",
            "--max_steps",
            "-1",
        )
    )
    assert results["levers"]["two_stage"] is True
    assert results["train_log"] and all("soft_loss" in e for e in results["train_log"])  # the prediction stage
    weights = load_file(out / "model.safetensors")
    assert not any("proj" in k for k in weights)
    assert weights["bert.embeddings.word_embeddings.weight"].shape[-1] == 16
