"""Recipe arguments: the data and output dataclasses, `CONFIG.yaml + flags` parsing, numeric checks and
the recorded launch command (with secrets redacted)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser

from ..redaction import REDACTED, SECRET_VALUE, is_secret_name

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class DataSourceArguments:
    """Where the data comes from: a Hub dataset or local files (csv/tsv/json/jsonl/parquet/txt)."""

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset, e.g. 'glue' (needs the Hub)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. 'sst2'."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local training file (csv/tsv/json/jsonl/parquet/txt)."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file, same format."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    validation_split: str = field(default="validation", metadata={"help": "Split used for evaluation."})
    max_length: int = field(default=128, metadata={"help": "Truncate tokenised inputs to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N validation examples."})


@dataclass
class ClassificationDataArguments(DataSourceArguments):
    text_column: str = field(default="text", metadata={"help": "Column with the text (the first text of a pair)."})
    text_column_2: str | None = field(default=None, metadata={"help": "Second text column for sentence pairs."})
    label_column: str = field(default="label", metadata={"help": "Column with the labels (names or ids)."})


@dataclass
class OutputArguments:
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Delete a previous run in output_dir (checkpoints included) before training; otherwise "
                          "the recipe refuses to start in a non-empty output_dir unless resuming."},
    )


# Valid ranges of numeric flags: name -> (low, high, low_open, high_open); None = unbounded on that side. The
# recipes' own flags, and the TrainingArguments fields that transformers does not check itself.
RANGES = {
    "max_length": (1, None, False, False),
    "max_train_samples": (1, None, False, False),
    "max_eval_samples": (1, None, False, False),
    "student_num_layers": (1, None, False, False),
    "mlm_probability": (0, 1, True, True),
    "temperature": (0, None, True, False),  # the cache CLI's (DistillationArguments checks its own too)
    "top_k": (1, None, False, False),
    "batch_size": (1, None, False, False),
    "learning_rate": (0, None, False, False),
    "num_train_epochs": (0, None, True, False),
    "weight_decay": (0, None, False, False),
    "max_grad_norm": (0, None, False, False),
    "adam_beta1": (0, 1, False, True),
    "adam_beta2": (0, 1, False, True),
    "adam_epsilon": (0, None, True, False),
    "label_smoothing_factor": (0, 1, False, True),
    "per_device_train_batch_size": (1, None, False, False),
    "per_device_eval_batch_size": (1, None, False, False),
    "gradient_accumulation_steps": (1, None, False, False),
    "save_total_limit": (1, None, False, False),
    "warmup_steps": (0, None, False, False),
    "seed": (0, None, False, False),
}


def _range_text(low, high, low_open, high_open) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return " and ".join(parts)


def check_numbers(*parsed) -> None:
    """Every number given must be finite, and within the field's range when one is declared.

    NaN slips through `x < 0` style checks (a NaN weight silently turns its loss off), so finiteness is
    checked for every number of every argument dataclass, ranges where RANGES has one.
    """
    for obj in parsed:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                raise ValueError(f"--{f.name} is {value}: it must be a finite number.")
            bounds = RANGES.get(f.name)
            if f.name == "max_steps" and value != -1 and value < 1:  # -1 means "use num_train_epochs"
                raise ValueError(f"--max_steps is {value}: give a number of steps >= 1, or -1 for --num_train_epochs.")
            if bounds is None:
                continue
            low, high, low_open, high_open = bounds
            too_low = low is not None and (value <= low if low_open else value < low)
            too_high = high is not None and (value >= high if high_open else value > high)
            if too_low or too_high:
                raise ValueError(f"--{f.name} is {value}: it must be {_range_text(*bounds)}.")


def config_file(argv: list[str] | None = None) -> str | None:
    """The CONFIG.yaml / CONFIG.json of `recipe.py CONFIG [--flag value ...]`, or None."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        return argv[0]
    return None


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
        if not os.path.isfile(path):
            raise ValueError(f"config file {path} does not exist.")
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}  # YAML is a superset of JSON
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(values).__name__}.")
        for action in parser._actions:  # PyYAML reads 5e-5 as a string: type it like the flag would be
            if isinstance(values.get(action.dest), str) and action.type in (int, float):
                try:
                    values[action.dest] = action.type(values[action.dest])
                except ValueError:
                    raise ValueError(f"{path}: {action.dest} must be a number, got {values[action.dest]!r}.") from None
    namespace, unknown = parser.parse_known_args(argv, namespace=argparse.Namespace(**values))
    if unknown:
        raise ValueError(f"unknown arguments {unknown}; run with --help to list the accepted ones.")
    parsed = parser.parse_dict(vars(namespace))
    check_numbers(*parsed)
    return parsed


# ---- the recorded command -------------------------------------------------------------------------

# Which names and values are secrets: hf_distill/redaction.py (also used for the pickled TrainingArguments).


def _is_secret_flag(arg: str) -> bool:
    return arg.startswith("-") and is_secret_name(arg)


def redact_secrets(argv: list[str]) -> list[str]:
    """`--hub_token X`, `--hub_token=X` and any token-shaped value -> `REDACTED`; everything else unchanged."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next and not arg.startswith("--"):
            out.append(REDACTED)
        elif _is_secret_flag(arg) and "=" in arg:
            out.append(f"{arg.split('=', 1)[0]}={REDACTED}")
        else:
            out.append(SECRET_VALUE.sub(REDACTED, arg))
        hide_next = _is_secret_flag(arg) and "=" not in arg
    return out


def launch_command(script: str, argv: list[str] | None = None) -> str:
    """The command line of this run, to reproduce it (recorded in the results and the model card); secrets
    (`--hub_token`, anything named *token*/*password*/*key*/*secret*) are replaced by `REDACTED`."""
    argv = redact_secrets(list(sys.argv[1:] if argv is None else argv))
    rel = os.path.relpath(script)
    script = rel if not rel.startswith("..") else script
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = "accelerate launch" if world == 1 else f"accelerate launch --num_processes {world}"
    return " ".join([launcher, shlex.quote(script)] + [shlex.quote(a) for a in argv])
