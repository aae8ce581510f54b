"""Recipe arguments: the data and output dataclasses, `CONFIG.yaml + flags` parsing, numeric checks and
the recorded launch command (with secrets redacted)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shlex
import sys
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser

from ..redaction import REDACTED, SECRET_VALUE, is_secret_name

logger = logging.getLogger(__name__)
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


# LoRA flags (`--use_peft`): peft.LoraConfig field -> the recipe's default. The flags are `--lora_<field>` (fields
# already named lora_* keep their name), typed and documented from LoraConfig itself (`lora_config` builds it).
LORA_DEFAULTS = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "target_modules": "all-linear",
    "use_rslora": False,
    "use_dora": False,
}


def _lora_flag(name: str) -> str:
    return name if name.startswith("lora_") else f"lora_{name}"


def _lora_arguments():
    from peft import LoraConfig

    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(LoraConfig)}
    fields = [
        (
            "use_peft",
            bool,
            field(
                default=False,
                metadata={
                    "help": "Train a LoRA adapter on the student instead of all weights "
                    "(the --lora_* flags configure it)."
                },
            ),
        )
    ]
    for name, default in LORA_DEFAULTS.items():
        text = helps[name].split(". ")[0].rstrip(".") + "."  # peft's first sentence
        if name == "target_modules":
            text = "Comma-separated module names, or 'all-linear'. (peft: " + text + ")"
        fields.append((_lora_flag(name), type(default), field(default=default, metadata={"help": text})))
    namespace = {
        "__module__": __name__,
        "__doc__": "--use_peft and the LoRA flags, built from peft.LoraConfig's fields (LORA_DEFAULTS).",
    }
    return dataclasses.make_dataclass("LoraArguments", fields, namespace=namespace)


LoraArguments = _lora_arguments()


def lora_config(args, task_type: str = "CAUSAL_LM"):
    """The `peft.LoraConfig` that `--use_peft` and the `--lora_*` flags describe (None without --use_peft).

    Args:
        args: an instance of a LoraArguments (sub)class.
        task_type: peft's task type of the model the adapter goes on.
    """
    from peft import LoraConfig

    if not args.use_peft:
        return None
    values = {name: getattr(args, _lora_flag(name)) for name in LORA_DEFAULTS}
    targets = values["target_modules"]
    values["target_modules"] = targets if targets == "all-linear" else targets.split(",")
    return LoraConfig(task_type=task_type, **values)


@dataclass
class OutputArguments:
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Remove what earlier runs wrote in output_dir (listed in its manifest; checkpoints "
            "included) before training; the run's inputs and files no run wrote stay. Otherwise the "
            "recipe refuses to start in a non-empty output_dir unless resuming (docs/reliability.md)."
        },
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


def check_device(device: str | None, flag: str = "device") -> None:
    """A device named on the command line must exist here (checked at the start, not after the models loaded).

    Args:
        device: "cpu", "cuda", "cuda:1", "mps", ...; None or "" = let the program choose.
        flag: the argument that named it (for the message).
    """
    if not device:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"--{flag} {device!r} is not a device ({e}); use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if torch.version.cuda is None or not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(
                f"--{flag} {device}, but {why} (torch {torch.__version__}): pass --{flag} cpu, or run "
                "where a GPU is visible with a CUDA build of torch."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--{flag} {device}, but only {torch.cuda.device_count()} CUDA device(s) are visible.")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--{flag} {device}, but MPS is not available here: pass --{flag} cpu.")


# Arguments that name one thing in different ways, as alternatives: (what, alternative, alternative, ...). The rule:
# an alternative set on the command line replaces the others set in the config file (a warning names what is
# dropped); two alternatives still set after that (both in the file, or both on the command line) are a ValueError.
# Empty values ("", None) are unset: `--dataset_name ""` blanks the file's dataset without naming another source.
SOURCE_GROUPS = (
    ("the data", ("dataset_name", "dataset_config_name"), ("train_file", "validation_file")),
    ("the student", ("student_model_name_or_path",), ("student_num_layers", "student_layers")),
)
_UNSET = object()


def _is_set(value) -> bool:
    return value is not None and value != "" and value is not _UNSET


def _flags(names, values: dict) -> str:
    return " ".join(f"--{n} {values[n]}" for n in names if _is_set(values.get(n)))


def resolve_sources(config: dict, given: dict, config_path: str | None = None) -> dict:
    """The config file's values without the alternatives that the command line replaces (`SOURCE_GROUPS`).

    Args:
        config: {argument: value} read from the config file.
        given: {argument: value} given on the command line.
        config_path: the config file (for the messages).

    Returns:
        A copy of `config`; the user's mapping is not modified.
    """
    config, source = dict(config), config_path or "the config file"
    for what, *alternatives in SOURCE_GROUPS:
        on_cli = [alt for alt in alternatives if any(_is_set(given.get(n)) for n in alt)]
        for alt in alternatives:
            in_file = [n for n in alt if _is_set(config.get(n))]
            if on_cli and alt not in on_cli and in_file:
                logger.warning(
                    "%s: %s on the command line takes precedence over %s in %s (ignored).",
                    what,
                    _flags(on_cli[0], given),
                    _flags(in_file, config),
                    source,
                )
                for n in in_file:
                    del config[n]
        merged = {**config, **given}
        chosen = [alt for alt in alternatives if any(_is_set(merged.get(n)) for n in alt)]
        if len(chosen) > 1:
            where = {n: "command line" if _is_set(given.get(n)) else source for alt in chosen for n in alt}
            named = "; ".join(
                f"{_flags(alt, merged)} ({', '.join(sorted({where[n] for n in alt if n in merged}))})"
                for alt in chosen
            )
            raise ValueError(
                f"{what} is named twice: {named}. Give one of them (an empty value, e.g. "
                f'--{chosen[0][0]} "", unsets one from a config file).'
            )
    return config


def read_config(path: str) -> dict:
    """{argument: value} from a YAML or JSON config file (YAML is a superset of JSON)."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path} does not exist.")
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(values).__name__}.")
    return values


def _typed(dataclass_types, argv: list[str], defaults: dict, what: str) -> tuple[dict, list[str]]:
    """({argument: value} of what `argv` and `defaults` set, typed as the flags are, {the rest}: unknown strings).

    Argparse types string defaults like command-line strings, so "5e-5" in a YAML file (a string to PyYAML)
    becomes the float a flag would give; arguments set by neither are left out.
    """
    parser = HfArgumentParser(dataclass_types, exit_on_error=False)
    names = {f.name for t in dataclass_types for f in dataclasses.fields(t) if f.init}
    parser.set_defaults(**{n: defaults.get(n, _UNSET) for n in names})
    try:
        namespace, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise ValueError(f"{what}: {e}.") from None
    return {k: v for k, v in vars(namespace).items() if v is not _UNSET}, unknown


def config_file(argv: list[str] | None = None) -> str | None:
    """The CONFIG.yaml / CONFIG.json of `recipe.py CONFIG [--flag value ...]`, or None."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        return argv[0]
    return None


def parse_args(dataclass_types, argv: list[str] | None = None):
    """`recipe.py [CONFIG.yaml|CONFIG.json] [--flag value ...]`: the file's values, overridden by flags.

    TRL's TrlParser pattern on HfArgumentParser's public API: the file's values and the flags are each typed by
    the parser, command-line sources replace the file's alternatives (`resolve_sources`), flags override the
    rest, and `parse_dict` builds the dataclasses (an unknown key in the file is a ValueError).

    Args:
        dataclass_types: the argument dataclasses, in the order they are returned.
        argv: the command line without the program (default: sys.argv[1:]).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    path = config_file(argv)
    config = read_config(path) if path else {}
    argv = argv[1:] if path else argv
    given, unknown = _typed(dataclass_types, argv, {}, "the command line")
    if unknown:
        raise ValueError(f"unknown arguments {unknown}; run with --help to list the accepted ones.")
    names = {f.name for t in dataclass_types for f in dataclasses.fields(t) if f.init}
    extra = sorted(set(config) - names)
    if extra:
        raise ValueError(f"{path}: unknown argument(s) {extra}; run with --help to list the accepted ones.")
    config = _typed(dataclass_types, [], resolve_sources(config, given, path), path)[0]
    parsed = HfArgumentParser(dataclass_types).parse_dict({**config, **given})
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
