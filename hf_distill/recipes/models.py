"""Recipe models: where a model comes from (local folder or Hub id), the student's tokenizer, and building
the student (given, or cut from the teacher)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from ..layers import count_layers, init_student_from_teacher, uniform_layer_map
from ..modeling import is_hub_id

logger = logging.getLogger(__name__)

# Files that `tokenizer.save_pretrained` writes (one of them is enough to load a tokenizer).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def check_model_source(path: str, flag: str) -> None:
    """A model argument must be a saved model folder or a Hub id; say which it is not, before anything loads."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(
                f"--{flag} {path} is a folder without config.json, so not a saved model; give the folder "
                "that `save_pretrained` wrote."
            )
        check_weight_files(path, flag)
        return
    if os.path.exists(path):
        raise ValueError(f"--{flag} {path} is a file; give the model's folder (with config.json) or a Hub id.")
    first = path.split("/", 1)[0]
    looks_local = path.startswith((".", "~")) or os.path.isabs(path) or (os.sep in path and os.path.isdir(first))
    if looks_local or not is_hub_id(path):
        raise ValueError(
            f"--{flag} {path}: no such local folder (and it is not a Hub model id 'owner/name' "
            "either). Check the path."
        )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        logger.warning(
            "--%s %s is not a local folder; it is read as a Hub id from the cache (HF_HUB_OFFLINE is set).", flag, path
        )


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def check_weight_files(folder: str, flag: str) -> None:
    """The weight files of a saved model folder are whole (`output.saved_file_problem`: safetensors headers against
    the file sizes, torch zip directories), before any model is loaded; a folder with config.json but no weights is
    refused too.

    Args:
        folder: a saved model folder (with config.json).
        flag: the argument that named it (for the message).
    """
    from .output import saved_file_problem

    names = sorted(f for f in os.listdir(folder) if f.endswith(WEIGHT_SUFFIXES))
    if not names:
        raise ValueError(
            f"--{flag} {folder} has a config.json but no weights (*.safetensors or *.bin): the save did "
            "not finish. Save the model again (`save_pretrained`) or give another folder."
        )
    for index in (f for f in os.listdir(folder) if f.endswith(".index.json")):  # sharded weights: every shard there
        with open(os.path.join(folder, index), encoding="utf-8") as f:
            shards = set(json.load(f).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not os.path.isfile(os.path.join(folder, s)))
        if missing:
            raise ValueError(
                f"--{flag}: {folder}/{index} lists shard(s) {missing} that are not in the folder. Copy "
                "the missing files or save the model again (`save_pretrained`)."
            )
    for name in names:
        file = os.path.join(folder, name)
        if problem := saved_file_problem(file, legacy_pickle_ok=True):
            raise ValueError(
                f"--{flag}: the weight file {file} is damaged or truncated ({problem}). Copy or save the "
                "model again (`save_pretrained`), or give another folder."
            )


def check_student_tokenizer(student_path: str | None, tokenizer, teacher_path: str) -> None:
    """A student given by path must use the teacher's vocabulary (same ids, same tokens)."""
    from transformers import AutoConfig, AutoTokenizer

    if not student_path:
        return
    if os.path.isdir(student_path) and not any(os.path.isfile(os.path.join(student_path, f)) for f in TOKENIZER_FILES):
        vocab_size = getattr(AutoConfig.from_pretrained(student_path), "vocab_size", None)
        if vocab_size != len(tokenizer):
            raise ValueError(
                f"the student folder {student_path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) "
                "and "
                f"its vocabulary size ({vocab_size}) is not the teacher tokenizer's ({len(tokenizer)}): save the "
                "tokenizer the student was trained with into that folder (`tokenizer.save_pretrained`)."
            )
        logger.warning(
            "the student folder %s has no tokenizer files; it is trained with the teacher's tokenizer "
            "(same vocabulary size, %d).",
            student_path,
            vocab_size,
        )
        return
    if AutoTokenizer.from_pretrained(student_path).get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"the student's tokenizer ({student_path}) and the teacher's ({teacher_path}) have different "
            "vocabularies, so the same ids mean different tokens. Use a student that shares the teacher's "
            "tokenizer, or leave --student_model_name_or_path unset to cut the teacher down."
        )


@dataclass
class StudentInfo:
    """How the student was made (recorded in the results and the model card)."""

    teacher_num_layers: int
    student_num_layers: int
    init_layers: list[int] | None  # teacher layers copied into the student (0-based); None for a given student
    student_model: str | None  # the given student's path, None when cut from the teacher
    layer_map: dict[int, int] | None = None  # hidden-state alignment student:teacher (1-based), when used


def _init_layers(layers: str | None, num_layers: int | None, n_teacher: int) -> list[int]:
    if layers:
        try:
            picked = [int(x) for x in layers.split(",")]
        except ValueError:
            raise ValueError(
                f"--student_layers {layers!r} must be comma-separated layer numbers, e.g. '1,3,5'."
            ) from None
        bad = [i for i in picked if not 0 <= i < n_teacher]
        if bad:
            raise ValueError(
                f"--student_layers {layers}: {bad} out of range; the teacher has layers 0..{n_teacher - 1}."
            )
        return picked
    n = num_layers or n_teacher // 2
    if not 1 <= n <= n_teacher:
        raise ValueError(
            f"--student_num_layers {n}: a student cut from a {n_teacher}-layer teacher has 1 to "
            f"{n_teacher} layers; for a deeper student pass --student_model_name_or_path."
        )
    return [t - 1 for t in uniform_layer_map(n, n_teacher).values()]


def build_student(
    auto_class, teacher, student_path: str | None, num_layers: int | None = None, layers: str | None = None
):
    """(student, StudentInfo): the given student, or the teacher cut to `layers` ("0,2,4") or to `num_layers`
    (default half) along the uniform map."""
    n_teacher = count_layers(teacher)
    if student_path:
        student = auto_class.from_pretrained(student_path)
        return student, StudentInfo(n_teacher, count_layers(student), None, student_path)
    init_layers = _init_layers(layers, num_layers, n_teacher)
    student = init_student_from_teacher(teacher, layers=init_layers)
    return student, StudentInfo(n_teacher, len(init_layers), init_layers, None)
