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
    "dataset": {
        "name": "glue",
        "config": "sst2",
        "eval_split": "validation",
        "train_examples": 67349,
        "eval_examples": 872,
    },
    "distillation": {
        "temperature": 2.0,
        "soft_weight": 0.9,
        "hard_weight": 0.1,
        "hidden_weight": 1.0,
        "hidden_loss": "mse",
        "layer_map": {"1": 2, "2": 4, "3": 6},
        "teacher_num_layers": 12,
        "student_num_layers": 6,
        "student_init_layers": [1, 3, 5, 7, 9, 11],
        "num_train_epochs": 3,
        "learning_rate": 5e-05,
        "global_train_batch_size": 64,
        "max_length": 128,
        "seed": 42,
    },
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


@pytest.mark.parametrize("name", ["distilled_student.md", "causal_lm_card.md"])
def test_the_templates_ship_in_the_package_and_model_cards_holds_editable_copies(name):
    packaged = resources.files("hf_distill") / "templates" / name
    copy = Path(__file__).resolve().parents[1] / "model_cards" / name
    assert packaged.read_text() == copy.read_text()  # keep the two in step when editing a template


def test_an_edited_copy_is_used_only_when_given(tmp_path):
    copy = Path(__file__).resolve().parents[1] / "model_cards" / "distilled_student.md"
    edited = tmp_path / "mine.md"
    edited.write_text(copy.read_text().replace("## Results", "## My results"))
    assert "## My results" in render_model_card(RESULTS, template_path=edited)
    assert "## My results" not in render_model_card(RESULTS)  # the copy is used only when given


LM_RESULTS = {
    "task": "text-generation",
    "teacher_model": "/tmp/gpt2-teacher",
    "model_id": "me/lm-student",
    "dataset": {"train_file": "train.jsonl", "eval_split": "validation", "train_examples": 32, "eval_examples": 10},
    "distillation": {
        "temperature": 1.0,
        "soft_weight": 1.0,
        "hard_weight": 0.0,
        "teacher_num_layers": 4,
        "student_num_layers": 2,
        "student_init_layers": [1, 3],
        "mode": "on-policy (GKD)",
        "divergence": "jsd",
        "lmbda": 0.5,
        "seq_kd": False,
        "max_new_tokens": 6,
        "generation_temperature": 1.0,
        "loss_chunk_size": None,
        "peft": True,
    },
    "teacher": {"cross_entropy": 2.5, "perplexity": 12.18249, "parameters": 2000, "examples_per_second": 10.0},
    "student": {"cross_entropy": 3.0, "perplexity": 20.08554, "parameters": 1000, "examples_per_second": 25.0},
    "generation_samples": [{"prompt": "a | b\nc", "reference": "d", "teacher": "e", "student": "f"}],
    "example_text": 'say "hi"\nnow',
    "command": "accelerate launch recipes/distil_causal_lm.py --lmbda 0.5",
}


def test_causal_lm_runs_get_their_own_template():
    text = render_model_card(LM_RESULTS)
    assert ModelCard(text).data.pipeline_tag == "text-generation"
    assert "| cross-entropy (nats/token) | 2.5000 | 3.0000 |" in text and "| perplexity | 12.1825 | 20.0855 |" in text
    assert "| mode | on-policy (GKD) |" in text and "| divergence | `jsd` |" in text
    assert "| loss chunk size (tokens) | off |" in text and "| LoRA adapter (merged) | True |" in text
    # free text becomes one table cell: pipes escaped, newlines flattened; the usage snippet stays one line
    assert "| a \\| b c | d | e | f |" in text
    assert "generator('say \"hi\"\\nnow', max_new_tokens=32)" in text  # the exact text, as a Python literal
    assert "agarwal2024gkd" in text and "sanh2019distilbert" not in text and "{{" not in text
    no_samples = render_model_card({**LM_RESULTS, "generation_samples": []})
    assert "## Generation samples" not in no_samples and "## How it was distilled" in no_samples


HOSTILE_ID = 'out"); import os; os.system("echo pwned"); ("\\`x`'  # a local folder name, quotes and backslash
HOSTILE_TEXT = 'it\'s "fine" \\ really```\nnew line'


def _python_blocks(text: str) -> list[str]:
    """The code of every ```python block (fences of 3+ backticks)."""
    import re

    return re.findall(r"^(`{3,})python\n(.*?)^\1$", text, flags=re.M | re.S)


@pytest.mark.parametrize("results", [RESULTS, LM_RESULTS], ids=["classifier", "causal-lm"])
def test_usage_snippet_is_valid_python_that_does_only_what_it_says(results):
    """Issue 21: quotes and backslashes in names broke the snippet (or made it run other code)."""
    import ast

    text = render_model_card({**results, "example_text": HOSTILE_TEXT}, model_id=HOSTILE_ID)
    [(_, code)] = _python_blocks(text)
    tree = ast.parse(code)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    names = sorted(c.func.id if isinstance(c.func, ast.Name) else "?" for c in calls)
    assert names == sorted(["pipeline", "print", "classifier" if results is RESULTS else "generator"])
    [pipeline_call] = [c for c in calls if getattr(c.func, "id", "") == "pipeline"]
    assert [k.value.value for k in pipeline_call.keywords if k.arg == "model"] == [HOSTILE_ID]  # the exact name
    texts = [a.value for c in calls for a in c.args if isinstance(a, ast.Constant) and a.value == HOSTILE_TEXT]
    assert texts == [HOSTILE_TEXT]  # the exact example text, newline and all
    assert [type(s).__name__ for s in tree.body] == ["ImportFrom", "Assign", "Expr"]  # nothing else runs


def test_names_from_files_cannot_inject_html_or_markdown():
    nasty = "<img src=x onerror=alert(1)>`|*_[x](javascript:alert(1))"
    r = copy.deepcopy(LM_RESULTS)
    r.update(
        teacher_model=f"/tmp/{nasty}",
        dataset={"train_file": f"{nasty}.jsonl", "eval_examples": 5},
        generation_samples=[
            {"prompt": f"<script>alert(1)</script>{nasty}", "reference": "r", "teacher": "t", "student": "s"}
        ],
        command=f"accelerate launch x.py --train_file '{nasty}``` '",
    )
    r["distillation"] = {**r["distillation"], "student_init_layers": None, "student_model": nasty}
    text = render_model_card(r, model_id=f"me/{nasty}")
    body = text.split("---", 2)[2]  # the YAML header is the Hub's own (safe) dump
    import re

    # Markdown renders code blocks and code spans as text; anywhere else HTML and links would be live.
    prose = re.sub(r"^(`{3,})\w*\n.*?^\1$", "", body, flags=re.M | re.S)
    prose = re.sub(r"(?<!`)(`+)(?!`).*?(?<!`)\1(?!`)", "", prose)
    assert "<img" not in prose and "<script" not in prose and not re.search(r"(?<!\\)\]\(javascript", prose)
    assert "&lt;img src=x onerror=alert(1)&gt;" in prose and "&lt;script&gt;" in prose  # shown as text
    assert f"``/tmp/{nasty}``" in body  # the teacher's path as code, one backtick longer than the one in it
    assert "`````" not in body.replace("````bash", "").replace("````\n", "")  # the command's fence outgrows it
    assert f"````bash\naccelerate launch x.py --train_file '{nasty}``` '\n````" in body  # the command, verbatim
    table_rows = [line for line in body.splitlines() if line.startswith("| teacher |")]
    assert len(table_rows) == 1 and table_rows[0].count(" | ") + table_rows[0].count("| ") >= 2
