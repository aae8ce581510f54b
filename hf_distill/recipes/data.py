"""Recipe data: local files or a Hub dataset, read with errors that name the file, the column and the fix;
label mapping to the teacher's label ids; tokenisation."""

from __future__ import annotations

import codecs
import logging
import math
import os

from ..data_checks import check_text_column
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
        raise ValueError(
            f"{path}: unknown data file format {ext or '(no extension)'!r}; use one of "
            f"{sorted(DATA_FORMATS)} (the extension says which)."
        )
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
        rows = "; ".join(
            f"column {name!r}: "
            + ", ".join(f"{kind} at row {row}" for kind, row in _first_rows(dataset[name]).items())
            for name in mixed
        )
        raise ValueError(
            f"{path}: column(s) {kinds} mix value types ({rows}); every value of a column must have one "
            "type (e.g. all label names or all label ids; one string per text)."
        )
    return dataset


def _first_rows(values) -> dict[str, int]:
    """{type name: the first row (0-based) holding a value of that type}."""
    first = {}
    for row, value in enumerate(values):
        first.setdefault(type(value).__name__, row)
    return first


def load_data_files(files: dict[str, str]):
    """Local data files, one per split (`{"train": "train.csv", ...}`), all of one format, as a DatasetDict."""
    from datasets import DatasetDict

    if len({str(file_builder(p)) for p in files.values()}) != 1:
        raise ValueError(
            f"data files must have the same format (one of the formats {sorted(DATA_FORMATS)}), got "
            f"{sorted(files.values())}."
        )
    return DatasetDict({split: load_data_file(path, split) for split, path in files.items()})


def load_raw_datasets(data_args: DataSourceArguments):
    """(DatasetDict with `train_split` and `validation_split`, {split: where it comes from}).

    Local files are read one by one so that every error names its file.
    """
    from datasets import load_dataset

    if data_args.dataset_name:
        if os.path.splitext(data_args.dataset_name)[1].lstrip(".").lower() in DATA_FORMATS:
            raise ValueError(
                f"--dataset_name {data_args.dataset_name} looks like a local file, not a Hub dataset: "
                "pass local files as --train_file and --validation_file."
            )
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        sources = {s: f"the {s} split of {data_args.dataset_name}" for s in raw}
    elif data_args.train_file and data_args.validation_file:
        files = {data_args.train_split: data_args.train_file, data_args.validation_split: data_args.validation_file}
        raw = load_data_files(files)
        flags = {data_args.train_split: "--train_file", data_args.validation_split: "--validation_file"}
        sources = {split: f"{flags[split]} {path}" for split, path in files.items()}
    else:
        raise ValueError(
            "no data: give --dataset_name (Hub) or both --train_file and --validation_file (local files)."
        )
    for split in (data_args.train_split, data_args.validation_split):
        if split not in raw:
            raise ValueError(
                f"the data has no split {split!r}; it has {sorted(raw)}. Set --train_split / --validation_split."
            )
    for split, limit in (
        (data_args.train_split, data_args.max_train_samples),
        (data_args.validation_split, data_args.max_eval_samples),
    ):
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


def require_values(raw, sources: dict, columns: dict[str, str | None]) -> None:
    """Every row has a value (not empty, not NaN) in each named column (labels; text columns use `require_text`)."""
    for split, source in sources.items():
        if split not in raw:
            continue
        for flag, column in columns.items():
            if column is None:
                continue
            rows = [i for i, v in enumerate(raw[split][column]) if _missing(v)]
            if rows:
                shown = ", ".join(str(i) for i in rows[:10]) + (", ..." if len(rows) > 10 else "")
                raise ValueError(
                    f"{len(rows)} row(s) of {source} have no value in column {column!r} (--{flag}): empty or NaN at "
                    f"data row(s) {shown} (0-based, header not counted). Drop or fill those rows."
                )


def require_text(raw, sources: dict, columns: dict[str, str | None], allow_some_blank: bool = False) -> None:
    """Every row holds one non-empty string in each named text column (`data_checks.check_text_column`: a number,
    a list or a struct is refused with the file, the row and the column). With `allow_some_blank` (raw text, where
    blank lines separate paragraphs) blank rows are skipped, but a split needs at least one row of text."""
    for split, source in sources.items():
        if split not in raw:
            continue
        for flag, column in columns.items():
            if column is not None:
                check_text_column(
                    raw[split][column], column, source, flag, blank="skipped" if allow_some_blank else "error"
                )


def model_positions(config) -> int | None:
    """How many token positions a model reads (None when its config does not say): `n_positions` or
    `max_position_embeddings`, less the padding offset of RoBERTa-style models."""
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    # RoBERTa-style models start position ids after the padding index: pad_token_id + 1 positions are never used.
    if limit is not None and config.model_type in PADDING_OFFSET_MODELS and config.pad_token_id is not None:
        limit -= config.pad_token_id + 1
    return limit


def load_classification_data(data_args: ClassificationDataArguments):
    """(raw datasets, [train split, validation split]) with the text and label columns present and filled.

    Args:
        data_args: the recipe's data arguments (files or Hub dataset, splits, text and label columns).
    """
    splits = [data_args.train_split, data_args.validation_split]
    raw, sources = load_raw_datasets(data_args)
    columns = {
        "text_column": data_args.text_column,
        "text_column_2": data_args.text_column_2,
        "label_column": data_args.label_column,
    }
    require_columns(raw, sources, columns)
    require_text(raw, sources, {"text_column": data_args.text_column, "text_column_2": data_args.text_column_2})
    require_values(raw, sources, {"label_column": data_args.label_column})
    require_class_labels(raw, sources, data_args.label_column)
    return raw, splits


def check_max_length(max_length: int, config, who: str) -> None:
    """--max_length must fit the model's position embeddings (else the first long batch crashes at step 1)."""
    limit = model_positions(config)
    if limit is not None and max_length > limit:
        raise ValueError(
            f"--max_length {max_length} is more than the {who} can read ({limit} positions, "
            f"max_position_embeddings of its config); pass --max_length {limit} or less."
        )


def generation_room(configs: dict, prompt_tokens: int) -> tuple[int | None, str | None]:
    """(new tokens that fit after a prompt of `prompt_tokens` in every model of `configs` {who: config}, the model
    that limits it); (None, None) when no config states its positions."""
    limits = {who: model_positions(c) for who, c in configs.items()}
    limits = {who: n for who, n in limits.items() if n is not None}
    if not limits:
        return None, None
    who = min(limits, key=limits.get)
    return limits[who] - prompt_tokens, who


def check_generation_fits(configs: dict, max_length: int, max_new_tokens: int, purpose: str) -> None:
    """Sampling during training (on-policy, sequence-level KD): a prompt of up to --max_length tokens plus
    --max_new_tokens must fit every model's positions, checked before anything is trained."""
    room, who = generation_room(configs, max_length)
    if room is not None and max_new_tokens > room:
        limit = room + max_length
        raise ValueError(
            f"--max_length ({max_length}) + --max_new_tokens ({max_new_tokens}) exceeds the {who}'s {limit} "
            f"positions: the sequences sampled for {purpose} would not fit. Lower one of them (e.g. --max_new_tokens "
            f"{max(limit - max_length, 1)} or --max_length {max(limit - max_new_tokens, 1)})."
        )


def check_length_leaves_text(max_length: int, tokenizer, pair: bool = False) -> None:
    """--max_length must leave room for text beside the special tokens the tokenizer adds ([CLS] ... [SEP]); a
    tokenizer asked to truncate below that does not truncate at all (it logs and returns the whole row)."""
    special = tokenizer.num_special_tokens_to_add(pair=pair)
    need = special + (2 if pair else 1)  # one token of each text
    if max_length < need:
        raise ValueError(
            f"--max_length {max_length} leaves no room for text: the tokenizer adds {special} special token(s) to "
            f"every {'sentence pair' if pair else 'text'}, so one token of text needs --max_length {need}; pass "
            f"--max_length {need} or more (typically 128 to 512)."
        )


def check_lm_length_leaves_text(max_length: int, tokenizer) -> None:
    """For prompt/completion data: --max_length must hold the bos token (if any), a prompt token and a completion
    token (prompts are never cut, completions are)."""
    need = (getattr(tokenizer, "bos_token_id", None) is not None) + 2
    if max_length < need:
        raise ValueError(
            f"--max_length {max_length} leaves no room for a prompt and a completion (at least {need} tokens with "
            f"this tokenizer{' and its bos token' if need > 2 else ''}); pass --max_length {need} or more "
            "(typically 512 to 2048)."
        )


def encode_texts(tokenizer, texts: list, texts_2: list | None, max_length: int, **kwargs) -> dict:
    """`tokenizer(texts, texts_2, truncation=True, max_length=...)`, then every row checked to fit: a tokenizer
    that cannot truncate (max_length below its special tokens) returns whole rows, which crash at step 1."""
    enc = tokenizer(texts, texts_2, truncation=True, max_length=max_length, **kwargs)
    longest = max((len(ids) for ids in enc["input_ids"]), default=0)
    if longest > max_length:
        raise ValueError(
            f"the tokenizer did not truncate to --max_length {max_length} (a row has {longest} tokens); "
            "raise --max_length above the special tokens it adds."
        )
    return enc


# ---- sequence classification -----------------------------------------------------------------------


def require_class_labels(raw, sources: dict, label_column: str) -> None:
    """Labels are class names or integer ids: a continuous value (0.37) or a list would silently become one class
    per distinct value, so the first one is refused with its file, row and column."""
    for split, source in sources.items():
        if split not in raw:
            continue
        for row, value in enumerate(raw[split][label_column]):
            if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
                raise ValueError(
                    f"{source}, row {row} (0-based), column {label_column!r} (--label_column) holds {value!r}, a "
                    "continuous value: these recipes train classifiers and would make one class per distinct value. "
                    "Give class names or integer class ids (e.g. bin the scores into classes); regression targets "
                    "are not supported."
                )
            if isinstance(value, (list, tuple, dict)):
                raise ValueError(
                    f"{source}, row {row} (0-based), column {label_column!r} (--label_column) holds "
                    f"{type(value).__name__} {value!r}: one class name or integer id per row is needed (multi-label "
                    "targets are not supported)."
                )


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
        pair = batch[data_args.text_column_2] if data_args.text_column_2 else None
        enc = encode_texts(tokenizer, batch[data_args.text_column], pair, data_args.max_length)  # checked strings
        enc["labels"] = [mapping[v] for v in batch[data_args.label_column]]
        return enc

    with args.main_process_first(desc="tokenizing"):
        return {
            s: raw[s].map(encode, batched=True, remove_columns=raw[s].column_names, desc=f"tokenizing {s}")
            for s in splits
        }


def dataset_summary(data_args: DataSourceArguments, n_train: int, n_eval: int) -> dict:
    return {
        "name": data_args.dataset_name,
        "config": data_args.dataset_config_name,
        "train_file": data_args.train_file,
        "validation_file": data_args.validation_file,
        "eval_split": data_args.validation_split,
        "train_examples": n_train,
        "eval_examples": n_eval,
    }
