"""The command line of `hf_distill.cache`: run a teacher once over a dataset and save it with the teacher's outputs.

    python -m hf_distill.cache --teacher_model_name_or_path TEACHER --data_file train.csv \\
        --text_column text --output_dir train_cached            # full logits (small label sets)
    python -m hf_distill.cache --teacher_model_name_or_path gpt2 --dataset_path tokenized/ \\
        --task causal-lm --top_k 32 --temperature 2 --output_dir cached   # top-k for large vocabularies

It checks its arguments, data and output folder the way the recipes do (same data loader, same output-folder rules:
a non-empty --output_dir needs --overwrite_output_dir, inputs are never written into or removed); the format and
the collator are `hf_distill.cache`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import transformers
from datasets import DatasetDict, Value, load_from_disk
from transformers import AutoConfig, AutoTokenizer, DataCollatorWithPadding, HfArgumentParser

from ..cache import cache_teacher_outputs
from ..modeling import TASKS
from ..teacher import DTYPES, load_pretrained_teacher
from .arguments import check_device, check_numbers
from .data import (
    DATA_FORMATS,
    check_length_leaves_text,
    check_max_length,
    encode_texts,
    label_mapping,
    load_data_files,
    require_class_labels,
    require_text,
    require_values,
)
from .models import check_model_source
from .output import OutputFolder, input_overlaps, input_paths, publish

logger = logging.getLogger(__name__)

# What `Dataset.save_to_disk` writes: a foreign file of these names in --output_dir would be written over.
CACHE_PATTERNS = ("data-*.arrow", "dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class CacheArguments:
    teacher_model_name_or_path: str = field(metadata={"help": "The teacher: a Hub id or a local directory."})
    output_dir: str = field(metadata={"help": "Where the dataset with the teacher columns is saved (save_to_disk)."})
    task: str = field(default="sequence-classification", metadata={"help": "Teacher head.", "choices": list(TASKS)})
    dataset_path: str | None = field(default=None, metadata={"help": "A tokenized dataset saved with save_to_disk."})
    data_file: str | None = field(
        default=None, metadata={"help": "Or a local file of raw text: " + " / ".join(DATA_FORMATS) + "."}
    )
    text_column: str = field(default="text", metadata={"help": "Text column of data_file."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column (sentence pairs)."})
    label_column: str = field(
        default="label",
        metadata={
            "help": "Label column of data_file, if any: names or ids, stored as the teacher's "
            "label ids (sequence classification)."
        },
    )
    max_length: int = field(default=128, metadata={"help": "Truncation length when tokenizing data_file."})
    split: str = field(default="train", metadata={"help": "Split to cache when the dataset has several."})
    top_k: int | None = field(default=None, metadata={"help": "Store the top-k logits + rest mass instead of all."})
    temperature: float = field(default=2.0, metadata={"help": "Temperature of the rest mass (top-k only)."})
    batch_size: int = field(default=64, metadata={"help": "Teacher batch size."})
    teacher_dtype: str | None = field(default=None, metadata={"help": "bfloat16 / float16 / float32."})
    device: str | None = field(default=None, metadata={"help": "cuda / cpu; default: cuda when available."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace an earlier cache in output_dir (only what a cache run wrote "
            "there is removed); otherwise a non-empty output_dir is refused."
        },
    )


def main(argv: list[str] | None = None) -> None:
    (cli,) = HfArgumentParser(CacheArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    check_arguments(cli)
    output = check_output_dir(cli)
    tokenizer = AutoTokenizer.from_pretrained(cli.teacher_model_name_or_path)
    dataset = load_split(cli)
    if cli.data_file is not None:
        dataset = encode_data_file(cli, dataset, tokenizer)
    teacher = load_teacher(cli)
    cached = cache_teacher_outputs(
        teacher,
        dataset,
        top_k=cli.top_k,
        temperature=cli.temperature,
        batch_size=cli.batch_size,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    output.claim()
    try:
        publish(cli.output_dir, cached.save_to_disk)
    finally:
        output.release()
    logger.info("saved %d examples with cached teacher outputs to %s", len(cached), cli.output_dir)


def check_arguments(cli: CacheArguments) -> None:
    """Refuses bad numbers, a data source given twice or not at all, a bad model source, device or dtype."""
    check_numbers(cli)  # finite, and in range: --top_k >= 1, --temperature > 0, --batch_size >= 1, --max_length >= 1
    if (cli.dataset_path is None) == (cli.data_file is None):
        raise ValueError("give exactly one of --dataset_path (tokenized, save_to_disk) and --data_file (raw text).")
    check_model_source(cli.teacher_model_name_or_path, "teacher_model_name_or_path")
    check_device(cli.device)
    if cli.teacher_dtype is not None and cli.teacher_dtype not in DTYPES:
        raise ValueError(
            f"--teacher_dtype {cli.teacher_dtype!r} is not one of {sorted(DTYPES)} (e.g. float16, not fp16)."
        )


def load_split(cli: CacheArguments):
    """The `--split` of --dataset_path or --data_file, as one Dataset."""
    if cli.dataset_path is not None:
        dataset = load_from_disk(cli.dataset_path)
    else:
        dataset = load_data_files({cli.split: cli.data_file})
    if isinstance(dataset, DatasetDict):
        if cli.split not in dataset:
            raise ValueError(f"no split {cli.split!r}; the dataset has {list(dataset)}.")
        dataset = dataset[cli.split]
    return dataset


def encode_data_file(cli: CacheArguments, dataset, tokenizer):
    """The raw text of --data_file checked and tokenized with the teacher's tokenizer (labels as the teacher's ids)."""
    missing = [c for c in (cli.text_column, cli.text_pair_column) if c and c not in dataset.column_names]
    if missing:
        raise ValueError(f"columns {missing} are not in {cli.data_file}; it has {dataset.column_names}.")
    pair, source = cli.text_pair_column, {cli.split: f"--data_file {cli.data_file}"}
    require_text({cli.split: dataset}, source, {"text_column": cli.text_column, "text_pair_column": pair})
    config = AutoConfig.from_pretrained(cli.teacher_model_name_or_path)
    check_max_length(cli.max_length, config, f"teacher {cli.teacher_model_name_or_path}")
    check_length_leaves_text(cli.max_length, tokenizer, pair=bool(pair))
    if cli.task == "sequence-classification" and cli.label_column in dataset.column_names:
        dataset = label_ids(cli, dataset, source, config.id2label)

    def encode(batch):
        return encode_texts(tokenizer, batch[cli.text_column], batch[pair] if pair else None, cli.max_length)

    return dataset.map(encode, batched=True, desc="tokenizing")


def label_ids(cli: CacheArguments, dataset, source: dict[str, str], id2label: dict[int, str]):
    """The label column as the teacher's ids: label names ("positive") must become ids, as the collator batches
    labels as integers."""
    label = cli.label_column
    require_values({cli.split: dataset}, source, {"label_column": label})
    require_class_labels({cli.split: dataset}, source, label)
    mapping = label_mapping({cli.split: dataset}, [cli.split], label, id2label)
    features = dataset.features.copy()
    features[label] = Value("int64")
    return dataset.map(
        lambda b: {label: [mapping[v] for v in b[label]]}, batched=True, features=features, desc="label ids"
    )


def load_teacher(cli: CacheArguments):
    """The teacher with its --task head, in --teacher_dtype, on --device (default: cuda when available)."""
    auto = getattr(transformers, TASKS[cli.task])
    kwargs = {"dtype": DTYPES[cli.teacher_dtype]} if cli.teacher_dtype else {}
    teacher = load_pretrained_teacher(auto, cli.teacher_model_name_or_path, **kwargs)  # a random head is refused
    device = cli.device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher.to(device)
    return teacher


def check_output_dir(cli: CacheArguments) -> OutputFolder:
    """The recipes' rules for the output folder, before anything loads: an input of the run (the teacher, the data)
    may not be, contain or lie inside --output_dir; a non-empty folder is refused unless --overwrite_output_dir,
    which removes only what an earlier cache run wrote there."""
    overlaps = input_overlaps(cli.output_dir, cli)
    if overlaps:
        which = "; ".join(f"{relation} --{flag} {path}" for flag, path, relation in overlaps)
        raise ValueError(
            f"--output_dir {cli.output_dir} {which}, an input of this run: the cache would be written "
            "into (or over) its own input. Choose another --output_dir."
        )
    output = OutputFolder(cli.output_dir, overwrite=cli.overwrite_output_dir, writes=CACHE_PATTERNS, resumable=False)
    output.check(input_paths(cli))
    return output
