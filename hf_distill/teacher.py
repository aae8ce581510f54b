"""Loading, freezing and placing teacher models (single device, DDP, DeepSpeed, FSDP)."""

from __future__ import annotations

import copy
import inspect
import logging
import os
import re

import torch
from torch import nn
import transformers
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

# Auto classes tried, in order, to find the task of a student; the teacher is loaded with the same one.
TASK_AUTO_CLASSES = (
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForMaskedLM",
    "AutoModelForCausalLM",
    "AutoModelForMultipleChoice",
    "AutoModelForSeq2SeqLM",
    "AutoModel",
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # "name" or "org/name"

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def auto_class_for(model: nn.Module):
    """The transformers Auto class whose mapping contains `type(model)` (unwrapping PEFT models)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in TASK_AUTO_CLASSES:
        auto = getattr(transformers, name)
        mapping = getattr(auto, "_model_mapping", None)
        try:
            if mapping is not None and type(base) in set(mapping.values()):
                return auto
        except Exception:  # lazy mappings may fail on optional backends
            continue
    return None


def load_teacher(teacher: PreTrainedModel | str | os.PathLike, student: nn.Module, **kwargs) -> PreTrainedModel:
    """Return the teacher module; a name/path is loaded with the Auto class of the student's task."""
    if isinstance(teacher, nn.Module):
        return teacher
    if not isinstance(teacher, (str, os.PathLike)):
        raise ValueError(
            f"teacher_model must be a PreTrainedModel, a Hub id or a local directory, got {type(teacher).__name__}."
        )
    path = os.path.expanduser(str(teacher))
    if not os.path.isdir(path) and not _HUB_ID.match(path):
        raise ValueError(
            f"teacher_model {str(teacher)!r} is not an existing directory; give the folder written by "
            "save_pretrained or a Hub id such as 'bert-base-uncased'."
        )
    auto = auto_class_for(student)
    if auto is None:
        raise ValueError(
            f"cannot tell which Auto class loads a teacher for a {type(student).__name__} student; "
            "load the teacher yourself and pass the model object."
        )
    return load_pretrained_teacher(auto, path, **kwargs)


def load_pretrained_teacher(auto, path: str, **kwargs) -> PreTrainedModel:
    """`auto.from_pretrained(path)`, refusing a checkpoint that lacks weights of the loaded model.

    transformers initialises missing weights at random and only logs them (a base model loaded as a
    classifier gets a random head): a teacher with random weights would teach noise.
    """
    try:
        model, info = auto.from_pretrained(path, output_loading_info=True, **kwargs)
    except OSError as err:
        raise ValueError(f"could not load teacher_model {path!r} with {auto.__name__}: {err}") from err
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        saved = getattr(model.config, "architectures", None) or [model.config.model_type]
        raise ValueError(
            f"the teacher {path!r} holds no weights for {len(missing)} tensors of {type(model).__name__} "
            f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}): they would be freshly initialised, "
            f"so the teacher would teach noise. The checkpoint was saved as {saved}; use a teacher fine-tuned for "
            "this task (same head), or the task that matches the checkpoint."
        )
    return model


def teacher_tokenizer(teacher_spec, teacher: nn.Module | None, given=None):
    """The teacher's tokenizer for the vocabulary check: `given`, else the one saved beside the teacher
    (the folder it was given as, or the local folder a model object was loaded from), else None."""
    if given is not None:
        return given
    candidates = [teacher_spec] if isinstance(teacher_spec, (str, os.PathLike)) else []
    candidates.append(getattr(teacher, "name_or_path", None))
    for path in candidates:
        if path and os.path.isdir(str(path)):
            try:
                from transformers import AutoTokenizer

                return AutoTokenizer.from_pretrained(str(path))
            except (OSError, ValueError, TypeError):  # a model folder without tokenizer files
                continue
    return None


def forward_params(model: nn.Module) -> set[str] | None:
    """The parameters the model's forward names (its **kwargs excluded): the inputs it is given."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(base, "module", base)  # DDP / DeepSpeed engine
    params = inspect.signature(base.forward).parameters
    return {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def freeze(teacher: nn.Module) -> nn.Module:
    """Eval mode (no dropout) and requires_grad=False on every parameter."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def place_teacher(teacher: nn.Module, accelerator, device: torch.device, dtype: str | None = None) -> nn.Module:
    """Put a frozen teacher where the student trains.

    - DeepSpeed: initialised as an inference engine with the training config (ZeRO-3 shards it like the
      student; other stages keep a full replica per process, stage set to 0 so it owns no optimizer).
    - FSDP2: sharded with `fully_shard` block by block on the student's mesh (never in the optimizer);
      FSDP1: a full frozen replica on each device.
    - Otherwise (CPU, one GPU, DDP): moved to the training device; it is not DDP-wrapped because it
      receives no gradients.
    """
    if dtype is not None:
        teacher.to(DTYPES[dtype])
    distributed = getattr(accelerator, "distributed_type", None)
    name = getattr(distributed, "value", str(distributed)).upper()
    if name == "DEEPSPEED":
        import deepspeed  # noqa: PLC0415  (optional dependency)

        ds_config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
        zero = ds_config.setdefault("zero_optimization", {})
        if zero.get("stage", 0) == 3:
            d = getattr(getattr(teacher, "config", None), "hidden_size", None)
            if d:
                zero.update({
                    "reduce_bucket_size": d * d,
                    "stage3_param_persistence_threshold": 10 * d,
                    "stage3_prefetch_bucket_size": int(0.9 * d * d),
                })
        else:
            zero["stage"] = 0
        for key in ("optimizer", "scheduler"):
            ds_config.pop(key, None)
        engine, *_ = deepspeed.initialize(model=teacher, config=ds_config)
        return freeze(engine)
    if name == "FSDP":
        plugin = accelerator.state.fsdp_plugin
        if getattr(plugin, "fsdp_version", 1) == 2:
            # accelerator.prepare_model(teacher, evaluation_mode=True) neither wraps nor moves it (accelerate 1.15):
            # shard it ourselves, block by block like the student, on the mesh the student will use (the default
            # world mesh unless a parallelism config gives one). It all-gathers one block at a time in forward.
            from .sharding import fully_shard_model

            mesh = getattr(accelerator, "torch_device_mesh", None)
            if mesh is not None:
                mesh = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
            return freeze(fully_shard_model(teacher, mesh=mesh))
        logger.info("FSDP1: the teacher is a full frozen replica on each device (it is not sharded).")
    return freeze(teacher.to(device))


# ---- caching teacher outputs ---------------------------------------------------------------------

# Columns a cached dataset carries, and the number of dims of one example's value for sequence-level
# outputs (token-level outputs have one more: the example's real tokens first).
CACHE_COLUMNS = {
    "teacher_logits": 1,  # (C,) raw logits, any temperature can be applied later
    "teacher_topk_indices": 1,  # (k,) class / token ids of the k largest teacher logits
    "teacher_topk_values": 1,  # (k,) their raw logits
    "teacher_topk_rest": 0,  # () teacher probability of all other classes, at teacher_temperature
    "teacher_temperature": 0,  # () the temperature the rest mass was computed at
}


def has_cached_outputs(dataset) -> bool:
    """Whether `dataset` (a datasets.Dataset or anything with column_names) carries cached teacher outputs."""
    columns = getattr(dataset, "column_names", None) or []
    return "teacher_logits" in columns or "teacher_topk_indices" in columns


def cache_teacher_outputs(
    teacher: nn.Module,
    dataset,
    *,
    top_k: int | None = None,
    temperature: float = 2.0,
    batch_size: int = 32,
    data_collator=None,
    output_field: str = "logits",
    device: str | torch.device | None = None,
):
    """Run the teacher once over a tokenized `datasets.Dataset`; return it with the teacher's outputs as columns.

    `top_k=None` stores the full logits (`teacher_logits`), right for small label sets: training on them
    equals training with the live teacher at any temperature. `top_k=k` stores, for large vocabularies,
    the k largest logits and their ids plus the probability mass of the rest at `temperature` (which the
    trainer then requires). Token-level outputs are stored for the example's real tokens only
    (attention_mask == 1). The DistillationTrainer reads these columns and then needs no teacher.
    """
    from transformers import default_data_collator
    from transformers.utils import find_labels

    taken = [c for c in CACHE_COLUMNS if c in dataset.column_names]
    if taken:
        raise ValueError(f"the dataset already has cached teacher columns {taken}; remove them to cache again.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for full logits), got {top_k}.")
    accepted = forward_params(teacher)
    base = teacher.get_base_model() if hasattr(teacher, "get_base_model") else teacher
    label_names = set(find_labels(type(base)))
    features = [c for c in dataset.column_names if c in accepted and c not in label_names]
    if not features:
        raise ValueError(
            f"none of the dataset's columns {dataset.column_names} is an input of {type(teacher).__name__}.forward; "
            "tokenize the dataset first (input_ids, attention_mask, ...)."
        )
    collate = data_collator or default_data_collator
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    columns: dict[str, list] = {}
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                rows = dataset[start : start + batch_size]  # dict of column -> list
                examples = [{c: rows[c][i] for c in features} for i in range(len(rows[features[0]]))]
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(examples).items()}
                outputs = teacher(**batch)
                if output_field not in outputs:
                    raise ValueError(f"the teacher returned no {output_field!r} (it returned {list(outputs.keys())}).")
                logits = outputs[output_field].float()  # (B, C) or (B, L, C)
                mask = batch.get("attention_mask")
                for name, values in _cache_values(logits, top_k, temperature).items():
                    for i in range(logits.shape[0]):
                        v = values[i]
                        if logits.dim() == 3 and mask is not None:
                            v = v[mask[i].bool()]  # (L_i, ...): the example's real tokens
                        columns.setdefault(name, []).append(v.cpu().tolist())
    finally:
        teacher.train(was_training)
    for name, values in columns.items():
        dataset = dataset.add_column(name, values)
    logger.info("cached the teacher's %s for %d examples (%s)", output_field, len(dataset),
                "full logits" if top_k is None else f"top-{top_k}")
    return dataset


def _cache_values(logits: torch.Tensor, top_k: int | None, temperature: float) -> dict[str, torch.Tensor]:
    if top_k is None:
        return {"teacher_logits": logits}
    k = min(top_k, logits.shape[-1])
    values, indices = logits.topk(k, dim=-1)  # (..., k)
    log_p = torch.log_softmax(logits / temperature, dim=-1)
    kept = torch.logsumexp(log_p.gather(-1, indices), dim=-1).exp()  # (...,)
    rest = (1.0 - kept).clamp_min(0.0)
    return {
        "teacher_topk_indices": indices.int(),
        "teacher_topk_values": values,
        "teacher_topk_rest": rest,
        "teacher_temperature": torch.full_like(rest, float(temperature)),
    }


class CachedOutputsCollator:
    """Wraps a data collator: batches the cached teacher columns beside what the wrapped collator builds.

    Token-level values (one row per real token) are scattered into the positions where the batch's
    attention_mask is 1, so right and left padding both line up; padding positions hold zeros.
    """

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        present = [c for c in CACHE_COLUMNS if c in features[0]]
        batch = self.collator([{k: v for k, v in f.items() if k not in CACHE_COLUMNS} for f in features])
        for name in present:
            rows = [torch.as_tensor(f[name]) for f in features]
            batch[name] = self._stack(name, rows, batch.get("attention_mask"))
        return batch

    @staticmethod
    def _stack(name: str, rows: list[torch.Tensor], attention_mask) -> torch.Tensor:
        if rows[0].dim() == CACHE_COLUMNS[name]:
            return torch.stack(rows)  # sequence-level: (B, ...)
        if attention_mask is None:
            raise ValueError(f"token-level cached column {name!r} needs an attention_mask in the batch to line up.")
        mask = attention_mask.bool()  # (B, L)
        out = torch.zeros((*mask.shape, *rows[0].shape[1:]), dtype=rows[0].dtype)  # (B, L, ...)
        for i, row in enumerate(rows):
            if row.shape[0] != int(mask[i].sum()):
                raise ValueError(
                    f"example {i} of the batch has {int(mask[i].sum())} real tokens but {row.shape[0]} cached "
                    f"{name!r} rows: the dataset was tokenized differently when the teacher outputs were cached."
                )
            out[i, mask[i]] = row
        return out
