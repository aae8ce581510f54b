"""Model cards for distilled students, rendered from a finished run's `distillation_results.json`.

The templates (Jinja, `hf_distill/templates/`, shipped inside the package and read with `importlib.resources`;
one per kind of run, chosen by the results' `task`: `distilled_student.md` for encoders, `causal_lm_card.md`
for text generation) are rendered by `huggingface_hub.ModelCard`, which also writes the YAML metadata (base
model, datasets, metrics as a model-index). The repository's `model_cards/` holds copies to edit: pass one as
`template_path=`.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
from importlib import resources
from pathlib import Path

from .modeling import is_hub_id

RESULTS_NAME = "distillation_results.json"
CARD_NAME = "README.md"
TEMPLATE_NAME = "distilled_student.md"  # the default template
# task -> packaged template, for the runs whose card differs from the default one
TASK_TEMPLATES = {"text-generation": "causal_lm_card.md"}

# What the card cannot do without. Everything else it reads is optional: `dataset` and `distillation` fill the
# "how it was distilled" table when present, `speedup` defaults to the ratio of the two examples/s.
REQUIRED_KEYS = ("task", "teacher_model", "teacher", "student", "command")
SIDE_KEYS = ("parameters", "examples_per_second")  # in both `teacher` and `student`
# metric key -> label in the card; other metrics are shown under their own name.
METRIC_LABELS = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "masked_accuracy": "masked-token accuracy",
    "cross_entropy": "cross-entropy (nats/token)",
    "perplexity": "perplexity",
    "rougeL": "ROUGE-L F (greedy completions)",
    "exact_match": "exact match",
    "teacher_nll": "teacher NLL of the greedy completions (nats/token)",
    "generated_length": "generated length (tokens)",
    "distinct_2": "distinct-2",
}
LOWER_IS_BETTER = {"cross_entropy", "perplexity", "teacher_nll"}
NEUTRAL_METRICS = {"generated_length", "distinct_2"}  # descriptive: neither direction is better in itself
_NOT_METRICS = ("parameters", "examples_per_second")
NO_LAYER_MAP = "none (no hidden-state loss)"


def format_count(n: int) -> str:
    """12345678 -> '12.3M', 54321 -> '54.3K'."""
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def template_name(task: str | None) -> str:
    """The packaged template for a run's task."""
    return TASK_TEMPLATES.get(task, TEMPLATE_NAME)


@contextlib.contextmanager
def template_file(template_path: str | os.PathLike | None = None, name: str = TEMPLATE_NAME):
    """The template as a file path: `template_path` when given, else the packaged template `name`."""
    if template_path is not None:
        if not Path(template_path).is_file():
            raise ValueError(
                f"model card template {template_path} not found; leave template_path unset to use the "
                f"packaged one (hf_distill/templates/{name})."
            )
        yield Path(template_path)
        return
    with resources.as_file(resources.files("hf_distill") / "templates" / name) as path:
        yield path


# ---- values from file names, paths and data, made inert where the card puts them ---------------------------------


def markdown_text(text, limit: int | None = None) -> str:
    """Free text (a file name, a dataset label, a prompt) as inert markdown on one line: HTML escaped (a file named
    `<img onerror=...>.csv` shows as text) and markdown punctuation backslash-escaped (no links, emphasis, code or
    table cells out of it)."""
    text = str(text if text is not None else "").replace("\r", " ").replace("\n", " ")[:limit]
    text = html.escape(text, quote=False)
    return re.sub(r"([\\`*_\[\]|#!])", r"\\\1", text)


def _cell(text) -> str:
    """Free text (a prompt, a generation) as one markdown table cell."""
    return markdown_text(text, limit=300)


def code_span(text, table: bool = False) -> str:
    """`text` as an inline code span that nothing in it can end (HTML is not interpreted inside one); in a table
    cell its pipes are escaped too (GFM splits cells at them even inside code)."""
    text = str(text).replace("\r", " ").replace("\n", " ")
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    span = f"{ticks}{pad}{text}{pad}{ticks}"
    return span.replace("|", "\\|") if table else span


def python_literal(text) -> str:
    """`text` as a Python string literal for the card's usage snippet: `repr` (quotes, backslashes and newlines
    escaped, so the snippet is valid Python that does only what it says), with backticks written as \\x60 so that
    nothing in it can close the markdown code block around the snippet. Double quotes when the text has none."""
    literal = repr(str(text))
    if literal.startswith("'") and '"' not in literal:
        literal = f'"{literal[1:-1]}"'  # the same escapes: only the delimiter changes
    return literal.replace("`", "\\x60")


def code_fence(text: str) -> str:
    """A fence for a code block holding `text`: longer than any run of backticks in it."""
    return "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)


def load_results(results: dict | str | os.PathLike) -> dict:
    """A results dict, or a run folder / json path holding one."""
    if isinstance(results, dict):
        data = results
    else:
        path = Path(results)
        if path.is_dir():
            path = path / RESULTS_NAME
        if not path.is_file():
            raise ValueError(
                f"{path} does not exist: render the card from a finished run's folder or its {RESULTS_NAME}."
            )
        data = json.loads(path.read_text())
    missing = [k for k in REQUIRED_KEYS if k not in data]
    missing += [
        f"{side}.{k}" for side in ("teacher", "student") if side in data for k in SIDE_KEYS if k not in data[side]
    ]
    if missing:
        raise ValueError(
            f"the run results lack {missing}; they are written by the recipes (recipes/distil_*.py) at "
            "the end of a run."
        )
    return data


def render_model_card(
    results: dict | str | os.PathLike,
    model_id: str | None = None,
    template_path: str | os.PathLike | None = None,
    license: str = "apache-2.0",
) -> str:
    """The model card (markdown with YAML metadata) for a distilled student, filled from a finished run.

    Args:
        results: the dict the recipes write as `distillation_results.json`, or the run folder / that file.
        model_id: how users load the student (the Hub repo id when pushed; defaults to the run's `model_id`).
        template_path: a card template to fill instead of the packaged one for the run's task
            (`model_cards/` holds editable copies).
        license: the license written into the card's metadata.
    """
    from huggingface_hub import ModelCard

    r = load_results(results)
    model_id = model_id or r.get("model_id") or "path/to/student"
    metrics = [k for k in r["student"] if k in r["teacher"] and k not in _NOT_METRICS]
    dataset_label = _dataset_label(r.get("dataset", {}))
    card_data = _card_data(r, model_id, metrics, dataset_label, license)
    with template_file(template_path, template_name(r["task"])) as path:
        card = ModelCard.from_template(
            card_data, template_path=str(path), **_template_fields(r, model_id, metrics, dataset_label, license)
        )
    return str(card)


def _template_fields(r: dict, model_id: str, metrics: list[str], dataset_label: str, license: str) -> dict:
    """The values the card templates fill in, each escaped for where it lands (markdown, code, Python literal)."""
    return dict(
        model_name=markdown_text(model_id.split("/")[-1]),
        model_id=markdown_text(model_id),
        model_id_literal=python_literal(model_id),
        task=r["task"],
        teacher_model=markdown_text(r["teacher_model"]),
        teacher_code=code_span(r["teacher_model"], table=True),
        teacher_ref=_teacher_ref(str(r["teacher_model"])),
        dataset_label=markdown_text(dataset_label),
        **_comparison_fields(r, metrics),
        **_distillation_fields(r.get("distillation", {})),
        baseline_note=_baseline_note(r),
        **_baseline_fields(r),
        command=r["command"],
        command_fence=code_fence(r["command"]),
        example_text=markdown_text(r.get("example_text", "I love this!")),
        example_literal=python_literal(r.get("example_text", "I love this!")),
        generation_samples=[{k: _cell(v) for k, v in s.items()} for s in r.get("generation_samples") or []],
        license=license,
    )


def _dataset_label(data: dict) -> str:
    label = data.get("name") or f"local files ({data.get('train_file')})"
    return f"{label}/{data['config']}" if data.get("config") else label


def _teacher_ref(teacher_model: str) -> str:
    """The teacher in markdown: a link to its Hub page when it is a Hub id (letters, digits, -_. and one /), else its
    path as a code span that nothing in it can end."""
    ref = code_span(teacher_model)
    return f"[{ref}](https://huggingface.co/{teacher_model})" if is_hub_id(teacher_model) else ref


def _card_data(r: dict, model_id: str, metrics: list[str], dataset_label: str, license: str):
    """The card's YAML metadata, with the student's evaluation results."""
    from huggingface_hub import EvalResult, ModelCardData

    data, student, teacher_model = r.get("dataset", {}), r["student"], str(r["teacher_model"])
    eval_results = [
        EvalResult(
            task_type=r["task"],
            dataset_type=data.get("name") or "local",
            dataset_name=dataset_label,
            dataset_config=data.get("config"),
            dataset_split=data.get("eval_split", "validation"),
            metric_type=name,
            metric_name=METRIC_LABELS.get(name, name),
            metric_value=float(f"{student[name]:.4f}"),
        )
        for name in metrics
    ]
    return ModelCardData(
        model_name=model_id.split("/")[-1],
        base_model=teacher_model if is_hub_id(teacher_model) else None,
        datasets=[data["name"]] if data.get("name") else None,
        license=license,
        library_name="transformers",
        pipeline_tag=r["task"],
        tags=["distillation", "hf_distill", "knowledge-distillation"],
        metrics=metrics,
        eval_results=eval_results or None,
    )


def _comparison_fields(r: dict, metrics: list[str]) -> dict:
    """Teacher vs student: metrics, size and speed, and the evaluation data."""
    teacher, student, data = r["teacher"], r["student"], r.get("dataset", {})
    speedup = r.get("speedup", student["examples_per_second"] / teacher["examples_per_second"])
    return dict(
        eval_split=data.get("eval_split", "validation"),
        eval_examples=data.get("eval_examples"),
        train_examples=data.get("train_examples"),
        metric_rows=[
            {"name": METRIC_LABELS.get(m, m), "teacher": f"{teacher[m]:.4f}", "student": f"{student[m]:.4f}"}
            for m in metrics
        ],
        teacher_parameters=format_count(teacher["parameters"]),
        student_parameters=format_count(student["parameters"]),
        size_ratio=f"{student['parameters'] / teacher['parameters']:.0%}",
        teacher_speed=f"{teacher['examples_per_second']:.1f}",
        student_speed=f"{student['examples_per_second']:.1f}",
        speed_device=r.get("device", "cpu"),
        speedup=f"{speedup:.2f}",
    )


def _distillation_fields(dist: dict) -> dict:
    """How the student was made: its initialisation, the loss settings and the training budget."""
    layer_map = dist.get("layer_map")
    init_layers = dist.get("student_init_layers")
    if init_layers is not None:
        student_init = f"copied from teacher layers {list(init_layers)} (0-based), embeddings and head copied"
    else:
        given = code_span(dist.get("student_model") or "given model", table=True)
        student_init = f"{given} (not initialised from the teacher)"
    return dict(
        teacher_num_layers=dist.get("teacher_num_layers"),
        student_num_layers=dist.get("student_num_layers"),
        student_init=student_init,
        temperature=dist.get("temperature"),
        soft_weight=dist.get("soft_weight"),
        hard_weight=dist.get("hard_weight"),
        hidden_weight=dist.get("hidden_weight"),
        hidden_loss=dist.get("hidden_loss"),
        layer_map=", ".join(f"{s}:{t}" for s, t in layer_map.items()) if layer_map else NO_LAYER_MAP,
        epochs=dist.get("num_train_epochs"),
        learning_rate=dist.get("learning_rate"),
        global_batch=dist.get("global_train_batch_size"),
        max_length=dist.get("max_length"),
        seed=dist.get("seed"),
        distillation=dist,  # the whole settings dict: templates show the settings of their kind of run
    )


def _baseline_note(r: dict) -> str:
    """What the teacher was worth: the same student on the labels alone, same init, seed and optimizer steps."""
    base, gain = r.get("hard_baseline"), r.get("distillation_gain")
    if not (base and gain and "accuracy" in gain):
        return ""
    return (
        f"Distillation bought **{100 * gain['accuracy']:+.1f} points** of accuracy: the same student "
        f"trained on the labels alone with the same budget (same initialisation, seed and "
        f"{base.get('optimizer_steps')} optimizer steps) reaches {base['accuracy']:.4f}."
    )


def _verdict(metric: str, gain: float) -> str:
    """'better' / 'worse' / 'same' for the distilled student against the baseline; '' for descriptive metrics."""
    if metric in NEUTRAL_METRICS:
        return ""
    if gain == 0:
        return "same"
    return "better" if (gain < 0) == (metric in LOWER_IS_BETTER) else "worse"


def _baseline_fields(r: dict) -> dict:
    """The distilled student against the baseline on every metric both have (the causal-LM card's table)."""
    student, base, gain = r["student"], r.get("hard_baseline") or {}, r.get("distillation_gain") or {}
    rows = [
        {
            "name": METRIC_LABELS.get(k, k),
            "student": f"{student[k]:.4f}",
            "baseline": f"{base[k]:.4f}",
            "gain": f"{g:+.4f}",
            "verdict": _verdict(k, g),
        }
        for k, g in gain.items()
        if k in base and k in student and k not in _NOT_METRICS
    ]
    return {"baseline_rows": rows, "baseline_steps": base.get("optimizer_steps")}


def save_model_card(output_dir: str | os.PathLike, results: dict | None = None, **kwargs) -> str:
    """Render the card for the run in `output_dir` (its results file unless `results` is given) to README.md.

    Args:
        output_dir: the run folder; the card is written there as README.md (its path is returned).
        results: the run's results dict (default: `output_dir`'s distillation_results.json).
        **kwargs: `render_model_card`'s model_id, template_path and license.
    """
    text = render_model_card(results if results is not None else output_dir, **kwargs)
    path = os.path.join(output_dir, CARD_NAME)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
