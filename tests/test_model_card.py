"""The model card is filled from a run's results: YAML metadata the Hub can read, tables, command."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_distill import render_model_card, save_model_card

RESULTS = {
    "task": "text-classification",
    "teacher_model": "textattack/bert-base-uncased-SST-2",
    "model_id": "me/bert-6l-sst2",
    "dataset": {"name": "glue", "config": "sst2", "eval_split": "validation", "train_examples": 67349,
                "eval_examples": 872},
    "distillation": {"temperature": 2.0, "soft_weight": 0.9, "hard_weight": 0.1, "hidden_weight": 1.0,
                     "hidden_loss": "mse", "layer_map": {"1": 2, "2": 4, "3": 6}, "teacher_num_layers": 12,
                     "student_num_layers": 6, "student_init_layers": [1, 3, 5, 7, 9, 11], "num_train_epochs": 3,
                     "learning_rate": 5e-05, "global_train_batch_size": 64, "max_length": 128, "seed": 42},
    "teacher": {"accuracy": 0.92661, "macro_f1": 0.92648, "parameters": 109483778, "examples_per_second": 100.0},
    "student": {"accuracy": 0.91056, "macro_f1": 0.91041, "parameters": 66955010, "examples_per_second": 190.0},
    "speedup": 1.9,
    "command": "accelerate launch recipes/distil_bert.py recipes/configs/sst2_bert_base.yaml",
}


def test_card_metadata_and_tables_come_from_the_results():
    text = render_model_card(RESULTS)
    card = ModelCard(text)  # the Hub's own parser reads the YAML header back
    assert card.data.base_model == "textattack/bert-base-uncased-SST-2"
    assert card.data.datasets == ["glue"] and card.data.pipeline_tag == "text-classification"
    evals = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert evals == {"accuracy": 0.9106, "macro_f1": 0.9104}  # the student's, rounded to 4 places
    assert "| accuracy | 0.9266 | 0.9106 |" in text and "| macro-F1 | 0.9265 | 0.9104 |" in text
    assert "| parameters | 109.5M | 67.0M |" in text
    assert "**1.90x**" in text and "61% of the teacher" in text.replace("keeps ", "")  # 66955010/109483778
    assert "1:2, 2:4, 3:6" in text and "[1, 3, 5, 7, 9, 11]" in text
    assert RESULTS["command"] in text and 'model="me/bert-6l-sst2"' in text
    assert "sanh2019distilbert" in text and "hinton2015distilling" in text
    assert "{{" not in text and "}}" not in text  # nothing left unfilled


def test_local_teacher_and_fill_mask_card():
    r = copy.deepcopy(RESULTS)
    r.update(task="fill-mask", teacher_model="/tmp/some/teacher", dataset={"train_file": "a.txt", "eval_examples": 5})
    r["teacher"] = {"masked_accuracy": 0.5, "parameters": 1000, "examples_per_second": 10.0}
    r["student"] = {"masked_accuracy": 0.25, "parameters": 600, "examples_per_second": 20.0}
    r["distillation"].update(layer_map=None, student_init_layers=None, student_model="my/student")
    text = render_model_card(r, model_id="x/y")
    card = ModelCard(text)
    assert card.data.base_model is None  # a local folder is no Hub model
    assert 'pipeline("fill-mask", model="x/y")' in text and "| masked-token accuracy | 0.5000 | 0.2500 |" in text
    assert "none (no hidden-state loss)" in text and "`my/student`" in text and "local files (a.txt)" in text


def test_save_reads_the_run_folder_and_rejects_incomplete_results(tmp_path):
    (tmp_path / "distillation_results.json").write_text(json.dumps(RESULTS))
    path = save_model_card(tmp_path)
    assert path.endswith("README.md") and "0.9106" in (tmp_path / "README.md").read_text()
    with pytest.raises(ValueError, match=r"lack \['command'\]"):
        render_model_card({k: v for k, v in RESULTS.items() if k != "command"})
    with pytest.raises(ValueError, match=r"lack \['student.examples_per_second'\]"):
        render_model_card({**RESULTS, "student": {"accuracy": 0.9, "parameters": 10}})
    with pytest.raises(ValueError, match="does not exist"):
        render_model_card(tmp_path / "nope")
    with pytest.raises(ValueError, match="template .* not found"):
        render_model_card(RESULTS, template_path=tmp_path / "missing.md")


def test_optional_sections_default_sensibly():
    """Only task, teacher_model, teacher, student and command are needed; speedup defaults to the speed ratio."""
    minimal = {k: RESULTS[k] for k in ("task", "teacher_model", "teacher", "student", "command")}
    text = render_model_card(minimal, model_id="me/s")
    assert "**1.90x**" in text  # 190 / 100 examples/s
    assert "| accuracy | 0.9266 | 0.9106 |" in text and "{{" not in text


def test_the_template_ships_in_the_package_and_model_cards_is_an_editable_copy(tmp_path):
    packaged = resources.files("hf_distill") / "templates" / "distilled_student.md"
    copy = Path(__file__).resolve().parents[1] / "model_cards" / "distilled_student.md"
    assert packaged.read_text() == copy.read_text()  # keep the two in step when editing the template
    edited = tmp_path / "mine.md"
    edited.write_text(copy.read_text().replace("## Results", "## My results"))
    assert "## My results" in render_model_card(RESULTS, template_path=edited)
    assert "## My results" not in render_model_card(RESULTS)  # the copy is used only when given
