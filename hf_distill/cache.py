"""Cache a teacher's outputs on a dataset once, then distil without the teacher.

    python -m hf_distill.cache --teacher_model_name_or_path TEACHER --data_file train.csv \\
        --text_column text --output_dir train_cached            # full logits (small label sets)
    python -m hf_distill.cache --teacher_model_name_or_path gpt2 --dataset_path tokenized/ \\
        --task causal-lm --top_k 32 --temperature 2 --output_dir cached   # top-k for large vocabularies

The output is a `datasets` folder (`save_to_disk`) with the teacher columns beside the inputs; give it
(`load_from_disk`) to `DistillationTrainer(student, None, args, train_dataset=...)`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import transformers
from datasets import DatasetDict, load_dataset, load_from_disk
from transformers import AutoTokenizer, DataCollatorWithPadding, HfArgumentParser

from .teacher import DTYPES, cache_teacher_outputs, load_pretrained_teacher

logger = logging.getLogger(__name__)

TASKS = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "masked-lm": "AutoModelForMaskedLM",
    "causal-lm": "AutoModelForCausalLM",
}


@dataclass
class CacheArguments:
    teacher_model_name_or_path: str = field(metadata={"help": "The teacher: a Hub id or a local directory."})
    output_dir: str = field(metadata={"help": "Where the dataset with the teacher columns is saved (save_to_disk)."})
    task: str = field(default="sequence-classification", metadata={"help": "Teacher head.", "choices": list(TASKS)})
    dataset_path: str | None = field(default=None, metadata={"help": "A tokenized dataset saved with save_to_disk."})
    data_file: str | None = field(default=None, metadata={"help": "Or a csv / json / parquet file of raw text."})
    text_column: str = field(default="text", metadata={"help": "Text column of data_file."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column (sentence pairs)."})
    max_length: int = field(default=128, metadata={"help": "Truncation length when tokenizing data_file."})
    split: str = field(default="train", metadata={"help": "Split to cache when the dataset has several."})
    top_k: int | None = field(default=None, metadata={"help": "Store the top-k logits + rest mass instead of all."})
    temperature: float = field(default=2.0, metadata={"help": "Temperature of the rest mass (top-k only)."})
    batch_size: int = field(default=64, metadata={"help": "Teacher batch size."})
    teacher_dtype: str | None = field(default=None, metadata={"help": "bfloat16 / float16 / float32."})
    device: str | None = field(default=None, metadata={"help": "cuda / cpu; default: cuda when available."})


def main(argv: list[str] | None = None) -> None:
    (cli,) = HfArgumentParser(CacheArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if (cli.dataset_path is None) == (cli.data_file is None):
        raise ValueError("give exactly one of --dataset_path (tokenized, save_to_disk) and --data_file (raw text).")
    tokenizer = AutoTokenizer.from_pretrained(cli.teacher_model_name_or_path)
    if cli.dataset_path is not None:
        dataset = load_from_disk(cli.dataset_path)
    else:
        ext = os.path.splitext(cli.data_file)[1].lstrip(".").replace("jsonl", "json")
        dataset = load_dataset(ext, data_files={cli.split: cli.data_file})
    if isinstance(dataset, DatasetDict):
        if cli.split not in dataset:
            raise ValueError(f"no split {cli.split!r}; the dataset has {list(dataset)}.")
        dataset = dataset[cli.split]
    if cli.data_file is not None:
        missing = [c for c in (cli.text_column, cli.text_pair_column) if c and c not in dataset.column_names]
        if missing:
            raise ValueError(f"columns {missing} are not in {cli.data_file}; it has {dataset.column_names}.")
        pair = cli.text_pair_column

        def encode(batch):
            return tokenizer(batch[cli.text_column], batch[pair] if pair else None, truncation=True,
                             max_length=cli.max_length)

        dataset = dataset.map(encode, batched=True, desc="tokenizing")
    auto = getattr(transformers, TASKS[cli.task])
    kwargs = {"dtype": DTYPES[cli.teacher_dtype]} if cli.teacher_dtype else {}
    teacher = load_pretrained_teacher(auto, cli.teacher_model_name_or_path, **kwargs)  # a random head is refused
    device = cli.device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher.to(device)
    cached = cache_teacher_outputs(teacher, dataset, top_k=cli.top_k, temperature=cli.temperature,
                                   batch_size=cli.batch_size, data_collator=DataCollatorWithPadding(tokenizer))
    cached.save_to_disk(cli.output_dir)
    logger.info("saved %d examples with cached teacher outputs to %s", len(cached), cli.output_dir)


if __name__ == "__main__":
    main()
