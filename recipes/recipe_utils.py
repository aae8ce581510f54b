"""Pieces shared by the recipes: config file + flag parsing, data loading and checks, the output
folder, inference comparison of teacher and student, and the Hub push.

Recipes import this module by name: `python recipes/x.py` and `accelerate launch recipes/x.py`
both put recipes/ on sys.path.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field

import torch
import yaml
from transformers import HfArgumentParser

import hf_distill
from hf_distill.layers import count_layers
from hf_distill.model_card import RESULTS_NAME, format_count, save_model_card

logger = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
LOCAL_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet", "txt": "text"}
# Never uploaded with the student: intermediate checkpoints and logs stay local.
PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", "runs/**", "*.pt", "training_args.bin"]


# ---- arguments ---------------------------------------------------------------------------------


@dataclass
class DataSourceArguments:
    """Where the data comes from: a Hub dataset or local files (csv/tsv/json/jsonl/parquet/txt)."""

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset, e.g. 'glue' (needs the Hub)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. 'sst2'."})
    train_file: str | None = field(default=None, metadata={"help": "Local training file (csv/tsv/json/jsonl/parquet/txt)."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file, same format."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    validation_split: str = field(default="validation", metadata={"help": "Split used for evaluation."})
    max_length: int = field(default=128, metadata={"help": "Truncate tokenised inputs to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N validation examples."})


@dataclass
class OutputArguments:
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a previous run in output_dir (otherwise the recipe refuses to start)."}
    )


def parse_args(dataclass_types, argv: list[str] | None = None):
    """`recipe.py [CONFIG.yaml|CONFIG.json] [--flag value ...]`: the file's values, overridden by flags.

    Parsing and typing are HfArgumentParser's; flags win because argparse leaves values that are
    already in the namespace (from the file) alone unless the flag is given.
    """
    parser = HfArgumentParser(dataclass_types)
    argv = list(sys.argv[1:] if argv is None else argv)
    values = {}
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        path = argv.pop(0)
        with open(path) as f:
            values = yaml.safe_load(f) or {}  # YAML is a superset of JSON
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(values).__name__}.")
        for action in parser._actions:  # PyYAML reads 5e-5 as a string: type it like the flag would be
            if isinstance(values.get(action.dest), str) and action.type in (int, float):
                values[action.dest] = action.type(values[action.dest])
    namespace, unknown = parser.parse_known_args(argv, namespace=argparse.Namespace(**values))
    if unknown:
        raise ValueError(f"unknown arguments {unknown}; run with --help to list the accepted ones.")
    return parser.parse_dict(vars(namespace))


def launch_command(script: str, argv: list[str] | None = None) -> str:
    """The command line of this run, to reproduce it (recorded in the results and the model card)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    script = os.path.relpath(script) if not os.path.relpath(script).startswith("..") else script
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = "accelerate launch" if world == 1 else f"accelerate launch --num_processes {world}"
    return " ".join([launcher, shlex.quote(script)] + [shlex.quote(a) for a in argv])


# ---- checks before anything is loaded -----------------------------------------------------------


def resolve_resume(args, out: OutputArguments) -> str | None:
    """Refuse to write over a previous run unless told to overwrite or resume; return the checkpoint to resume."""
    resume = args.resume_from_checkpoint
    folder = args.output_dir
    if resume in ("last", "true", "True"):
        last = last_complete_checkpoint(folder) if os.path.isdir(folder) else None
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {resume} but {folder} holds no checkpoint-* folder written to "
                             "the end (with trainer_state.json) to resume; start again with --overwrite_output_dir.")
        return last
    if resume is not None:
        if not os.path.isdir(resume):
            raise ValueError(f"--resume_from_checkpoint {resume} is not a folder; give a checkpoint-N folder or 'last'.")
        return resume
    if os.path.isdir(folder) and os.listdir(folder) and not out.overwrite_output_dir:
        found = ", ".join(sorted(os.listdir(folder))[:5])
        raise ValueError(
            f"output_dir {folder} already holds a previous run ({found}); pass --overwrite_output_dir to replace it, "
            "--resume_from_checkpoint last (or a checkpoint folder) to continue it, or choose another --output_dir."
        )
    return None


def last_complete_checkpoint(folder: str) -> str | None:
    """The newest checkpoint-N in `folder` that was written to the end (the Trainer writes trainer_state.json
    last); newer half-written ones (a run killed while saving) are skipped with a warning."""
    steps = sorted((int(m.group(1)), d) for d in os.listdir(folder)
                   if (m := re.fullmatch(r"checkpoint-(\d+)", d)) and os.path.isdir(os.path.join(folder, d)))
    for _, name in reversed(steps):
        path = os.path.join(folder, name)
        if os.path.isfile(os.path.join(path, "trainer_state.json")):
            return path
        logger.warning("skipping %s: it is incomplete (no trainer_state.json, the run stopped while saving it)", path)
    return None


def check_push(args) -> str | None:
    """With --push_to_hub, the repo id and a token must be known before training; return the token."""
    if not args.push_to_hub:
        return None
    if not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. 'your-name/bert-6l-sst2'): the repo to create or update.")
    from huggingface_hub import get_token

    token = args.hub_token or get_token()
    if not token:
        raise ValueError(
            "--push_to_hub but no Hugging Face credentials were found: run `hf auth login`, set HF_TOKEN, "
            "or pass --hub_token."
        )
    return token


# ---- data --------------------------------------------------------------------------------------


def load_raw_datasets(data_args: DataSourceArguments):
    """DatasetDict with `train_split` and `validation_split`, from the Hub or local files."""
    from datasets import load_dataset

    if data_args.dataset_name:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    elif data_args.train_file and data_args.validation_file:
        files = {data_args.train_split: data_args.train_file, data_args.validation_split: data_args.validation_file}
        exts = {p.rsplit(".", 1)[-1].lower() for p in files.values()}
        if len(exts) != 1 or next(iter(exts)) not in LOCAL_BUILDERS:
            raise ValueError(f"train_file and validation_file must share one of the formats {sorted(LOCAL_BUILDERS)}, got {exts}.")
        ext = exts.pop()
        kwargs = {"delimiter": "\t"} if ext == "tsv" else {}
        raw = load_dataset(LOCAL_BUILDERS[ext], data_files=files, **kwargs)
    else:
        raise ValueError("no data: give --dataset_name (Hub) or both --train_file and --validation_file (local files).")
    for split in (data_args.train_split, data_args.validation_split):
        if split not in raw:
            raise ValueError(f"the data has no split {split!r}; it has {sorted(raw)}. Set --train_split/--validation_split.")
    for split, limit in ((data_args.train_split, data_args.max_train_samples),
                         (data_args.validation_split, data_args.max_eval_samples)):
        if limit is not None:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    return raw


def require_columns(raw, splits, columns: dict[str, str | None]) -> None:
    """`columns` maps a flag name to the column it names; every named column must exist in every split."""
    for split in splits:
        present = raw[split].column_names
        for flag, column in columns.items():
            if column is not None and column not in present:
                raise ValueError(
                    f"column {column!r} (--{flag}) is not in the {split} split; its columns are {present}. "
                    f"Pass --{flag} with one of them."
                )


# ---- evaluation and speed ------------------------------------------------------------------------


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (full size even when DeepSpeed ZeRO-3 has partitioned them)."""
    return int(sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()))


def _accepted(model) -> set[str]:
    base = getattr(model, "module", model)
    base = getattr(base, "student", base)  # a ProjectedStudent (learned projections) passes its inputs on
    return set(inspect.signature(base.forward).parameters)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gather(accelerator, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 2:  # (B, L) token predictions/labels: lengths differ between processes
        x = accelerator.pad_across_processes(x, dim=1, pad_index=-100)
    return accelerator.gather_for_metrics(x).cpu()


def _cat(chunks: list[torch.Tensor]):
    """Concatenate (B,) or (B, L) chunks; token chunks of different lengths are padded with -100 (ignored)."""
    if chunks[0].dim() == 2:
        width = max(c.shape[1] for c in chunks)
        chunks = [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=-100) for c in chunks]
    return torch.cat(chunks).numpy()


def compare_on_eval(trainer, models: dict[str, torch.nn.Module], eval_dataset, metric_fn):
    """Evaluate several models on the same eval batches; return ({name: metrics}, {name: examples/s}).

    Predictions are gathered across processes. Speed is timed per process on its own batches, each
    model on the same batch one after the other, after one warm-up forward each (not timed).
    """
    loader = trainer.get_eval_dataloader(eval_dataset)
    accelerator, device = trainer.accelerator, trainer.args.device
    accepted = {name: _accepted(m) for name, m in models.items()}
    preds = {name: [] for name in models}
    seconds = dict.fromkeys(models, 0.0)
    labels, n_examples, warm = [], 0, False
    for m in models.values():
        m.eval()
    with torch.no_grad():
        for batch in loader:
            batch = trainer._prepare_inputs(batch)
            y = batch.pop("labels")
            for name, model in models.items():
                inputs = {k: v for k, v in batch.items() if k in accepted[name]}
                if not warm:
                    model(**inputs)
                _sync(device)
                start = time.perf_counter()
                logits = model(**inputs)["logits"]  # (B, C), or (B, L, V) for token-level heads (ProjectedStudent: dict)
                _sync(device)
                seconds[name] += time.perf_counter() - start
                preds[name].append(_gather(accelerator, logits.argmax(-1)))
            warm = True
            n_examples += len(y)
            labels.append(_gather(accelerator, y))
    labels = _cat(labels)
    metrics = {name: metric_fn(_cat(p), labels) for name, p in preds.items()}
    speed = {name: n_examples / max(s, 1e-9) for name, s in seconds.items()}
    return metrics, speed


# ---- outputs ---------------------------------------------------------------------------------------


def write_json(path: str, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")


def push_folder(folder: str, repo_id: str, token: str, private: bool | None = None, message: str | None = None) -> str:
    """Create (or reuse) the model repo and upload `folder` (the student, tokenizer, card and results)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=bool(private), exist_ok=True, repo_type="model")
    repo_id = getattr(repo, "repo_id", repo_id)
    api.upload_folder(
        repo_id=repo_id, folder_path=folder, repo_type="model", ignore_patterns=PUSH_IGNORE,
        commit_message=message or "Upload distilled student (hf_distill)",
    )
    logger.info("pushed %s to https://huggingface.co/%s", folder, repo_id)
    return repo_id


def print_summary(results: dict, output_dir: str) -> None:
    """The closing table of a recipe: teacher vs student metrics, size and speed, and where things are."""
    t, s = results["teacher"], results["student"]
    metric_names = [k for k in t if k in s and k not in ("parameters", "examples_per_second")]
    rows = [(name, f"{t[name]:.4f}", f"{s[name]:.4f}") for name in metric_names]
    rows.append(("parameters", format_count(t["parameters"]), format_count(s["parameters"])))
    rows.append(("examples/s (eval)", f"{t['examples_per_second']:.1f}", f"{s['examples_per_second']:.1f}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {'teacher':>10}  {'student':>10}"]
    lines += [f"{a:<{width}}  {b:>10}  {c:>10}" for a, b, c in rows]
    lines.append(f"speed-up: {results['speedup']:.2f}x   size: {s['parameters'] / t['parameters']:.0%} of the teacher")
    lines.append(f"student, card (README.md) and {RESULTS_NAME}: {os.path.abspath(output_dir)}")
    print("\n".join(lines), flush=True)


# ---- sequence classification data ----------------------------------------------------------------


@dataclass
class ClassificationDataArguments(DataSourceArguments):
    text_column: str = field(default="text", metadata={"help": "Column with the text (the first text of a pair)."})
    text_column_2: str | None = field(default=None, metadata={"help": "Second text column for sentence pairs."})
    label_column: str = field(default="label", metadata={"help": "Column with the labels (names or ids)."})


def _is_default_names(id2label: dict) -> bool:
    return all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


def data_label_names(raw, splits, label_column: str) -> list:
    """The label values found in the data (ClassLabel names when the column has them)."""
    names = getattr(raw[splits[0]].features[label_column], "names", None)
    if names is not None:
        return list(names)
    return sorted(set().union(*(raw[s].unique(label_column) for s in splits)), key=str)


def label_mapping(raw, splits, label_column: str, id2label: dict) -> dict:
    """{value in the data: teacher label id}; every value must be a label the teacher knows."""
    id2label = {int(k): str(v) for k, v in id2label.items()}
    label2id = {v: k for k, v in id2label.items()}
    names = getattr(raw[splits[0]].features[label_column], "names", None)  # ClassLabel
    named = not _is_default_names(id2label)
    values = set().union(*(raw[s].unique(label_column) for s in splits))
    mapping, unknown = {}, []
    for value in sorted(values, key=str):
        name = names[value] if names is not None and 0 <= value < len(names) else value
        if named and str(name) in label2id:
            mapping[value] = label2id[str(name)]
        elif isinstance(value, int) and value in id2label and (names is None or not named):
            mapping[value] = value
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"labels {unknown} in column {label_column!r} are not known to the teacher, whose labels are {id2label}. "
            "Use a teacher fine-tuned on this label set (recipes/train_teacher.py) or drop those rows."
        )
    return mapping


def tokenize_classification(raw, splits, tokenizer, data_args: ClassificationDataArguments, mapping: dict, args):
    """{split: tokenised dataset with input_ids, attention_mask, (token_type_ids), labels}."""

    def encode(batch):
        texts = [["" if t is None else str(t) for t in batch[data_args.text_column]]]
        if data_args.text_column_2:
            texts.append(["" if t is None else str(t) for t in batch[data_args.text_column_2]])
        enc = tokenizer(*texts, truncation=True, max_length=data_args.max_length)
        enc["labels"] = [mapping[v] for v in batch[data_args.label_column]]
        return enc

    with args.main_process_first(desc="tokenizing"):
        return {
            s: raw[s].map(encode, batched=True, remove_columns=raw[s].column_names, desc=f"tokenizing {s}")
            for s in splits
        }


def dataset_summary(data_args: DataSourceArguments, n_train: int, n_eval: int) -> dict:
    return {
        "name": data_args.dataset_name, "config": data_args.dataset_config_name,
        "train_file": data_args.train_file, "validation_file": data_args.validation_file,
        "eval_split": data_args.validation_split, "train_examples": n_train, "eval_examples": n_eval,
    }


def run_results(*, task: str, script: str, argv, trainer, args, data_args, teacher_path: str, n_train: int,
                n_eval: int, layer_map, n_teacher: int, n_student: int, init_layers, student_model,
                params: dict, metrics: dict, speed: dict, train_metrics: dict, distillation_extra: dict | None = None,
                **extra) -> dict:
    """The `distillation_results.json` payload both distillation recipes write (and the model card reads)."""
    return {
        "task": task,
        "teacher_model": teacher_path,
        "model_id": args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir)),
        "dataset": dataset_summary(data_args, n_train, n_eval),
        **{k: v for k, v in extra.items() if k == "labels"},
        "distillation": {
            "temperature": args.temperature, "soft_weight": args.soft_weight, "hard_weight": args.hard_weight,
            "hidden_weight": args.hidden_weight, "hidden_loss": args.hidden_loss,
            "layer_map": {str(s): t for s, t in layer_map.items()} if layer_map else None,
            "teacher_num_layers": n_teacher, "student_num_layers": n_student,
            "student_init_layers": init_layers, "student_model": student_model,
            "num_train_epochs": args.num_train_epochs, "learning_rate": args.learning_rate,
            "global_train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            "max_length": data_args.max_length, **(distillation_extra or {}), "seed": args.seed,
        },
        "teacher": {**metrics["teacher"], "parameters": params["teacher"], "examples_per_second": speed["teacher"]},
        "student": {**metrics["student"], "parameters": params["student"], "examples_per_second": speed["student"]},
        "speedup": speed["student"] / speed["teacher"],
        "device": str(args.device.type),
        "train": {k: v for k, v in train_metrics.items() if isinstance(v, (int, float))},
        **{k: v for k, v in extra.items() if k != "labels"},
        "train_log": [e for e in trainer.state.log_history if "loss" in e],
        "command": launch_command(script, argv),
        "hf_distill_version": hf_distill.__version__,
    }


def finish_run(trainer, args, results: dict, token: str | None) -> dict:
    """On the main process: write the results and the model card, push the folder if asked, print the table."""
    if trainer.is_world_process_zero():
        write_json(os.path.join(args.output_dir, RESULTS_NAME), results)
        save_model_card(args.output_dir, results, model_id=results["model_id"])
        if args.push_to_hub:
            push_folder(args.output_dir, args.hub_model_id, token, args.hub_private_repo)
        print_summary(results, args.output_dir)
    trainer.accelerator.wait_for_everyone()
    # Tear the process group down here, not in an interpreter-exit destructor (gloo can deadlock there).
    trainer.accelerator.end_training()
    return results


def check_student_tokenizer(student_path: str | None, tokenizer, teacher_path: str) -> None:
    """A student given by path must use the teacher's vocabulary (same ids, same tokens)."""
    from transformers import AutoTokenizer

    if student_path and AutoTokenizer.from_pretrained(student_path).get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"the student's tokenizer ({student_path}) and the teacher's ({teacher_path}) have different "
            "vocabularies, so the same ids mean different tokens. Use a student that shares the teacher's "
            "tokenizer, or leave --student_model_name_or_path unset to cut the teacher down."
        )


def build_student(auto_class, teacher, student_path: str | None, num_layers: int | None = None,
                  layers: str | None = None):
    """(student, copied teacher layers or None): the given student, or the teacher cut to `layers` ("0,2,4")
    or to `num_layers` (default half) along the uniform map."""
    if student_path:
        return auto_class.from_pretrained(student_path), None
    n_teacher = count_layers(teacher)
    if layers:
        init_layers = [int(x) for x in layers.split(",")]
    else:
        n = num_layers or n_teacher // 2
        init_layers = [t - 1 for t in hf_distill.uniform_layer_map(n, n_teacher).values()]
    return hf_distill.init_student_from_teacher(teacher, layers=init_layers), init_layers
