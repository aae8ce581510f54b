"""Recipe data: local files or a Hub dataset, read with errors that name the file, the column and the fix;
label mapping to the teacher's label ids; tokenisation."""

from __future__ import annotations

import codecs
import logging
import math
import os

from ..modeling import is_default_id2label
from .arguments import ClassificationDataArguments, DataSourceArguments

logger = logging.getLogger(__name__)

# file extension -> (datasets builder, builder kwargs); the one table of local data formats.
DATA_FORMATS = {
    "csv": ("csv", {}),
    "tsv": ("csv", {"delimiter": "\t"}),
    "json": ("json", {}),
    "jsonl": ("json", {}),
    "parquet": ("parquet", {}),
    "txt": ("text", {}),
}
TEXT_FORMATS = ("csv", "json", "text")  # read as text: must be UTF-8
# Model types whose position ids start at pad_token_id + 1 (so max_position_embeddings overstates the length).
PADDING_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "longformer")


def file_builder(path: str) -> tuple[str, dict]:
    """(builder, kwargs) for a local data file, from its extension."""
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext not in DATA_FORMATS:
        raise ValueError(f"{path}: unknown data file format {ext or '(no extension)'!r}; use one of "
                         f"{sorted(DATA_FORMATS)} (the extension says which).")
    return DATA_FORMATS[ext]


def _check_utf8(path: str) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path} is not UTF-8 text (byte {chunk[e.start]:#04x} at offset {offset + e.start}); re-encode "
                    f"it, e.g. `iconv -f latin1 -t utf-8 {path} > fixed{os.path.splitext(path)[1]}`."
                ) from None
            offset += len(chunk)
        decoder.decode(b"", final=True)


def _data_lines(path: str, limit: int) -> int:
    """Number of non-blank lines (at most `limit`), to tell an empty or header-only file from a bad one."""
    count = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            count += bool(line.strip())
            if count >= limit:
                break
    return count


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


def load_data_file(path: str, split: str = "train"):
    """One local file as a `datasets.Dataset`; a missing, empty, header-only, non-UTF-8 or unparsable file is a
    `ValueError` that names it."""
    from datasets import load_dataset

    builder, kwargs = file_builder(path)
    if not os.path.isfile(path):
        raise ValueError(f"data file {path} does not exist (or is not a file).")
    if os.path.getsize(path) == 0:
        raise ValueError(f"data file {path} is empty (0 bytes).")
    if builder in TEXT_FORMATS:
        _check_utf8(path)
        if builder == "csv" and _data_lines(path, 2) < 2:
            raise ValueError(f"data file {path} has only a header line (or less): no examples to use.")
        if _data_lines(path, 1) == 0:
            raise ValueError(f"data file {path} has only blank lines: no examples to use.")
    try:
        dataset = load_dataset(builder, data_files={split: path}, split=split, **kwargs)
    except Exception as e:  # datasets wraps pandas / Arrow errors in DatasetGenerationError: report the cause
        cause = _root_cause(e)
        hint = ""
        if "changed from" in str(cause) or "cast" in str(cause).lower() or "mixed" in str(cause).lower():
            hint = " Every value of a column must have one type (e.g. all label names or all label ids)."
        raise ValueError(f"could not read {path} as {builder}: {type(cause).__name__}: {cause}.{hint}") from e
    if len(dataset) == 0:
        raise ValueError(f"data file {path} has no records: no examples to use.")
    # datasets stores a JSON column whose values have several types as `Json` (e.g. labels 1 and "positive")
    mixed = [name for name, feature in dataset.features.items() if type(feature).__name__ == "Json"]
    if mixed:
        kinds = {name: sorted({type(v).__name__ for v in dataset[name]}) for name in mixed}
        raise ValueError(f"{path}: column(s) {kinds} mix value types; every value of a column must have one type "
                         "(e.g. all label names or all label ids).")
    return dataset


def load_data_files(files: dict[str, str]):
    """Local data files, one per split (`{"train": "train.csv", ...}`), all of one format, as a DatasetDict."""
    from datasets import DatasetDict

    if len({str(file_builder(p)) for p in files.values()}) != 1:
        raise ValueError(f"data files must have the same format (one of the formats {sorted(DATA_FORMATS)}), got "
                         f"{sorted(files.values())}.")
    return DatasetDict({split: load_data_file(path, split) for split, path in files.items()})


def load_raw_datasets(data_args: DataSourceArguments):
    """(DatasetDict with `train_split` and `validation_split`, {split: where it comes from}).

    Local files are read one by one so that every error names its file.
    """
    from datasets import load_dataset

    if data_args.dataset_name:
        if os.path.splitext(data_args.dataset_name)[1].lstrip(".").lower() in DATA_FORMATS:
            raise ValueError(f"--dataset_name {data_args.dataset_name} looks like a local file, not a Hub dataset: "
                             "pass local files as --train_file and --validation_file.")
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        sources = {s: f"the {s} split of {data_args.dataset_name}" for s in raw}
    elif data_args.train_file and data_args.validation_file:
        files = {data_args.train_split: data_args.train_file, data_args.validation_split: data_args.validation_file}
        raw = load_data_files(files)
        flags = {data_args.train_split: "--train_file", data_args.validation_split: "--validation_file"}
        sources = {split: f"{flags[split]} {path}" for split, path in files.items()}
    else:
        raise ValueError("no data: give --dataset_name (Hub) or both --train_file and --validation_file (local "
                         "files).")
    for split in (data_args.train_split, data_args.validation_split):
        if split not in raw:
            raise ValueError(f"the data has no split {split!r}; it has {sorted(raw)}. Set --train_split / "
                             "--validation_split.")
    for split, limit in ((data_args.train_split, data_args.max_train_samples),
                         (data_args.validation_split, data_args.max_eval_samples)):
        if limit is not None:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    return raw, sources


def require_columns(raw, sources: dict, columns: dict[str, str | None]) -> None:
    """`columns` maps a flag name to the column it names; every named column must exist in every split."""
    for split, source in sources.items():
        if split not in raw:
            continue
        present = raw[split].column_names
        for flag, column in columns.items():
            if column is not None and column not in present:
                raise ValueError(
                    f"column {column!r} (--{flag}) is not in {source}; its columns are {present}. "
                    f"Pass --{flag} with one of them, or fix that file's header."
                )


def _missing(value) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or (isinstance(value, str) and not value.strip())


def require_values(raw, sources: dict, columns: dict[str, str | None], allow_some_blank: bool = False) -> None:
    """Every row has a value (not empty, not NaN) in each named column. With `allow_some_blank` (raw text,
    where blank lines separate paragraphs) blank rows are skipped, but a split needs at least one row."""
    for split, source in sources.items():
        if split not in raw:
            continue
        for flag, column in columns.items():
            if column is None:
                continue
            rows = [i for i, v in enumerate(raw[split][column]) if _missing(v)]
            if allow_some_blank and len(rows) < len(raw[split]):
                continue
            if allow_some_blank:
                raise ValueError(f"{source} has no non-blank text in column {column!r}: nothing to train or "
                                 "evaluate on.")
            if rows:
                shown = ", ".join(str(i) for i in rows[:10]) + (", ..." if len(rows) > 10 else "")
                raise ValueError(
                    f"{len(rows)} row(s) of {source} have no value in column {column!r} (--{flag}): empty or NaN at "
                    f"data row(s) {shown} (0-based, header not counted). Drop or fill those rows."
                )


def load_classification_data(data_args: ClassificationDataArguments):
    """(raw datasets, [train split, validation split]) with the text and label columns present and filled.

    Args:
        data_args: the recipe's data arguments (files or Hub dataset, splits, text and label columns).
    """
    splits = [data_args.train_split, data_args.validation_split]
    raw, sources = load_raw_datasets(data_args)
    columns = {"text_column": data_args.text_column, "text_column_2": data_args.text_column_2,
               "label_column": data_args.label_column}
    require_columns(raw, sources, columns)
    require_values(raw, sources, columns)
    return raw, splits


def check_max_length(max_length: int, config, who: str) -> None:
    """--max_length must fit the model's position embeddings (else the first long batch crashes at step 1)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return
    # RoBERTa-style models start position ids after the padding index: pad_token_id + 1 positions are never used.
    if config.model_type in PADDING_OFFSET_MODELS and config.pad_token_id is not None:
        limit -= config.pad_token_id + 1
    if max_length > limit:
        raise ValueError(f"--max_length {max_length} is more than the {who} can read ({limit} positions, "
                         f"max_position_embeddings of its config); pass --max_length {limit} or less.")


# ---- sequence classification -----------------------------------------------------------------------


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
    named = not is_default_id2label(id2label)
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
        texts = [[str(t) for t in batch[data_args.text_column]]]
        if data_args.text_column_2:
            texts.append([str(t) for t in batch[data_args.text_column_2]])
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
