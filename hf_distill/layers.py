"""Layer maps, hidden-size projections and student initialisation from a teacher."""

from __future__ import annotations

import contextlib
import copy
import logging

import torch
from torch import nn
from transformers import PreTrainedModel

from .config import parse_layer_map

logger = logging.getLogger(__name__)

# model_type -> dotted path of the numbered list of transformer blocks, relative to the base model.
# Architectures not listed fall back to the largest nn.ModuleList of length num_hidden_layers.
LAYER_LIST_PATHS: dict[str, str] = {
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
    "xlm-roberta": "encoder.layer",
    "electra": "encoder.layer",
    "deberta-v2": "encoder.layer",
    "distilbert": "transformer.layer",
    "gpt2": "h",
    "gpt_neo": "h",
    "llama": "layers",
    "mistral": "layers",
    "qwen2": "layers",
    "qwen3": "layers",
    "gemma": "layers",
    "phi3": "layers",
}

# Per-layer config lists that must be cut down with the layers (e.g. sliding / full attention).
_PER_LAYER_CONFIG_FIELDS = ("layer_types",)


def count_layers(model_or_config) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    n = getattr(config, "num_hidden_layers", None)
    if n is None:
        raise ValueError(f"{type(config).__name__} has no num_hidden_layers; pass the layer map explicitly.")
    return int(n)


def hidden_size(model_or_config) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return int(config.hidden_size)


def uniform_layer_map(num_student_layers: int, num_teacher_layers: int) -> dict[int, int]:
    """Student layer i <-> teacher layer i * Lt / Ls (floored) for i = 1..Ls; 12 -> 6 gives i <-> 2i.

    Indices follow `hidden_states`: 0 is the embedding output, i the output of block i.

    Args:
        num_student_layers: Ls, the student's number of blocks.
        num_teacher_layers: Lt, the teacher's number of blocks (>= Ls).
    """
    if num_student_layers < 1 or num_teacher_layers < num_student_layers:
        raise ValueError(
            f"a uniform map needs 1 <= student layers <= teacher layers, got {num_student_layers} and "
            f"{num_teacher_layers}; pass an explicit layer_map instead."
        )
    return {i: (i * num_teacher_layers) // num_student_layers for i in range(1, num_student_layers + 1)}


def resolve_layer_map(
    spec, num_student_layers: int, num_teacher_layers: int, what: str = "layer_map", allow_embeddings: bool = True
) -> dict[int, int]:
    """The explicit map parsed and range-checked against both models, or the uniform map when `spec` is None."""
    mapping = parse_layer_map(spec)
    if mapping is None:
        return uniform_layer_map(num_student_layers, num_teacher_layers)
    low = 0 if allow_embeddings else 1
    for s, t in mapping.items():
        if not low <= s <= num_student_layers:
            raise ValueError(
                f"{what} student index {s} is out of range: the student has {num_student_layers} layers, so "
                f"indices run {low}..{num_student_layers}" + (" (0 = embeddings)." if allow_embeddings else ".")
            )
        if not low <= t <= num_teacher_layers:
            raise ValueError(
                f"{what} teacher index {t} is out of range: the teacher has {num_teacher_layers} layers, so "
                f"indices run {low}..{num_teacher_layers}" + (" (0 = embeddings)." if allow_embeddings else ".")
            )
    return mapping


def build_projections(layer_map: dict[int, int], student_dim: int, teacher_dim: int) -> nn.ModuleDict | None:
    """One learned nn.Linear(d_s, d_t) per mapped student layer when the widths differ, else None (identity)."""
    if student_dim == teacher_dim:
        return None
    return nn.ModuleDict({str(s): nn.Linear(student_dim, teacher_dim) for s in sorted(layer_map)})


def _layer_list_path(model: PreTrainedModel) -> str:
    """Full dotted path (from `model`) of the ModuleList that holds the transformer blocks."""
    n = count_layers(model)
    base_prefix = getattr(model, "base_model_prefix", "")
    rel = LAYER_LIST_PATHS.get(model.config.model_type)
    if rel is not None:
        for candidate in (f"{base_prefix}.{rel}" if base_prefix else rel, rel):
            try:
                module = model.get_submodule(candidate)
            except AttributeError:
                continue
            if isinstance(module, nn.ModuleList) and len(module) == n:
                return candidate
    lists = [
        (name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and len(mod) == n and name
    ]
    if not lists:
        raise ValueError(
            f"cannot find the list of {n} transformer layers in {type(model).__name__}; "
            "add its path to hf_distill.layers.LAYER_LIST_PATHS."
        )
    return max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))[0]


def _full_tensors(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Copies of the named state-dict tensors of `model`; parameters partitioned by DeepSpeed ZeRO-3 (loaded
    under zero.Init, their local tensor is empty) are gathered for the copy and released afterwards."""
    params = dict(model.named_parameters(remove_duplicate=False))
    tensors = {**dict(model.named_buffers(remove_duplicate=False)), **params}
    with gathered_parameters([params[n] for n in names if n in params]), torch.no_grad():
        return {n: tensors[n].detach().clone() for n in names}


def gathered_parameters(params) -> contextlib.AbstractContextManager:
    """A context in which `params` are whole for reading: those partitioned by DeepSpeed ZeRO-3 (they carry
    `ds_id`; their local tensor is empty outside the module's forward) are gathered on entry and released on exit,
    read-only. Code that reads a weight outside its module's forward (an output layer applied chunk by chunk)
    runs inside it; with no partitioned parameter it does nothing. Every process must enter it together.

    Args:
        params: parameters (None entries, e.g. a missing bias, are skipped); a tied one may appear twice.
    """
    partitioned = list({id(p): p for p in params if p is not None and hasattr(p, "ds_id")}.values())
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed  # only reached when deepspeed has partitioned the model

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


def init_student_from_teacher(
    teacher: PreTrainedModel, num_layers: int | None = None, layers: list[int] | None = None
) -> PreTrainedModel:
    """A new model of the teacher's class and config with fewer layers, initialised from the teacher.

    Embeddings, pooler, final norm and task head are copied; student layer k is a copy of teacher
    layer `layers[k]` (0-based). By default `layers` follows the uniform map, so 12 -> 6 copies
    teacher layers 1, 3, 5, 7, 9, 11: student block i starts where the teacher block it is aligned
    with (hidden_states index 2i) ended.

    Args:
        teacher: a transformers model whose blocks are a numbered module list (BERT, RoBERTa, DistilBERT,
            GPT-2, Llama-style); it is not modified.
        num_layers: the student's number of blocks (default: half the teacher's, or `len(layers)`).
        layers: the 0-based teacher blocks to copy, one per student block, in order.
    """
    n_teacher = count_layers(teacher)
    layers = _teacher_layers_to_copy(n_teacher, num_layers, layers)
    student = _empty_student(teacher, layers, n_teacher)
    _load_checked(student, _copied_state_dict(teacher, layers))
    student.train(teacher.training)
    logger.info("initialised a %d-layer student from teacher layers %s", len(layers), layers)
    return student


def _teacher_layers_to_copy(n_teacher: int, num_layers: int | None, layers: list[int] | None) -> list[int]:
    """The checked 0-based teacher blocks to copy: `layers`, or the uniform map onto `num_layers` blocks."""
    if layers is None:
        if num_layers is None:
            raise ValueError("give num_layers (e.g. 6) or the explicit 0-based teacher layers to copy.")
        layers = [t - 1 for t in uniform_layer_map(num_layers, n_teacher).values()]
    layers = [int(i) for i in layers]
    if num_layers is not None and num_layers != len(layers):
        raise ValueError(f"num_layers={num_layers} but {len(layers)} layers were given to copy: {layers}.")
    bad = [i for i in layers if not 0 <= i < n_teacher]
    if bad:
        raise ValueError(f"layers {bad} do not exist in the teacher, which has layers 0..{n_teacher - 1}.")
    return layers


def _empty_student(teacher: PreTrainedModel, layers: list[int], n_teacher: int) -> PreTrainedModel:
    """A freshly initialised model of the teacher's class, config and dtype with one block per entry of `layers`
    (per-layer config lists, e.g. layer types, keep the copied blocks' entries)."""
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    for field_name in _PER_LAYER_CONFIG_FIELDS:
        values = getattr(config, field_name, None)
        if isinstance(values, (list, tuple)) and len(values) == n_teacher:
            setattr(config, field_name, [values[i] for i in layers])
    student = type(teacher)(config)
    student.to(dtype=next(teacher.parameters()).dtype)
    return student


def _copied_state_dict(teacher: PreTrainedModel, layers: list[int]) -> dict[str, torch.Tensor]:
    """The student's state dict taken from the teacher: block `layers[k]` renamed to block k, everything outside
    the blocks (embeddings, final norm, head, ...) under its own name."""
    prefix = _layer_list_path(teacher) + "."
    names = list(teacher.state_dict())
    # One group per copied block plus one for everything outside the blocks, gathered one at a time under
    # DeepSpeed ZeRO-3 (at most one teacher block is whole in memory beside the student).
    groups = [(f"{prefix}{j}.", f"{prefix}{k}.") for k, j in enumerate(layers)]  # (teacher block, student block)
    new_sd = {}
    for src, dst in groups:
        taken = [n for n in names if n.startswith(src)]
        new_sd.update({dst + n[len(src) :]: t for n, t in _full_tensors(teacher, taken).items()})
    new_sd.update(_full_tensors(teacher, [n for n in names if not n.startswith(prefix)]))  # embeddings, head, ...
    return new_sd


def _load_checked(student: PreTrainedModel, new_sd: dict[str, torch.Tensor]) -> None:
    """Loads `new_sd` into `student` after checking that names and shapes line up exactly."""
    student_sd = student.state_dict()
    missing = sorted(set(student_sd) - set(new_sd))
    unexpected = sorted(set(new_sd) - set(student_sd))
    if missing or unexpected:
        raise RuntimeError(f"weight names do not line up: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in new_sd.items():
        assert student_sd[name].shape == tensor.shape, f"{name}: {student_sd[name].shape} vs {tensor.shape}"
    student.load_state_dict(new_sd, strict=True)
