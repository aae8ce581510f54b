"""Loading, freezing and placing teacher models (single device, DDP, DeepSpeed, FSDP)."""

from __future__ import annotations

import copy
import logging
import os

import torch
from accelerate.utils import DistributedType
from torch import nn
from transformers import PreTrainedModel

from .modeling import auto_class_for, is_hub_id, select_inputs

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def load_teacher(teacher: PreTrainedModel | str | os.PathLike, student: nn.Module, **kwargs) -> PreTrainedModel:
    """Return the teacher module; a name/path is loaded with the Auto class of the student's task."""
    if isinstance(teacher, nn.Module):
        return teacher
    if not isinstance(teacher, (str, os.PathLike)):
        raise ValueError(  # bad input is a ValueError throughout the API (not TypeError)
            f"teacher_model must be a PreTrainedModel, a Hub id or a local directory, got {type(teacher).__name__}."
        )
    path = os.path.expanduser(str(teacher))
    if not os.path.isdir(path) and not is_hub_id(path):
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


def teacher_list(teacher_model, cached: bool) -> list:
    """The teachers to load: [] for cached teacher outputs, one or several (an ensemble) otherwise."""
    if cached:
        if teacher_model is not None:
            logger.info("the train dataset carries cached teacher outputs: the teacher is not loaded or run.")
        return []
    if teacher_model is None:
        raise ValueError(
            "DistillationTrainer needs a `teacher_model` (a model, a Hub id or a local directory), or a "
            "train_dataset with cached teacher outputs (python -m hf_distill.cache)."
        )
    teachers = list(teacher_model) if isinstance(teacher_model, (list, tuple)) else [teacher_model]
    if not teachers:
        raise ValueError("teacher_model is an empty list; give at least one teacher.")
    return teachers


def load_teachers(teacher_model, student: nn.Module, args, cached: bool) -> tuple[list, list[nn.Module]]:
    """(the sources given, the frozen teachers) for `teacher_model`: a model, a name/path or a list of them.

    None is allowed only when the train set carries cached teacher outputs (`cached`).
    """
    sources = teacher_list(teacher_model, cached)
    # Attention maps are only returned by the eager implementation: load teachers given by path with it.
    load_kwargs = {"attn_implementation": "eager"} if args.attention_weight > 0 else {}
    teachers = [freeze(load_teacher(t, student, **load_kwargs)) for t in sources]
    if any(t is student for t in teachers):
        raise ValueError("the teacher and the student are the same object; pass a separate student model.")
    return sources, teachers


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
    distributed = getattr(accelerator, "distributed_type", None)  # a str enum: "FSDP" == DistributedType.FSDP
    if distributed == DistributedType.DEEPSPEED:
        return freeze(_deepspeed_teacher(teacher, accelerator))
    if distributed == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        if getattr(plugin, "fsdp_version", 1) == 2:
            return freeze(_fsdp2_teacher(teacher, accelerator))
        logger.info("FSDP1: the teacher is a full frozen replica on each device (it is not sharded).")
    return freeze(teacher.to(device))


def _deepspeed_teacher(teacher: nn.Module, accelerator):
    """The teacher as a DeepSpeed inference engine built from the training config without optimizer or scheduler:
    ZeRO-3 shards it (buckets sized to its hidden size), any other stage becomes stage 0 (a full replica)."""
    import deepspeed  # optional dependency

    ds_config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    zero = ds_config.setdefault("zero_optimization", {})
    if zero.get("stage", 0) == 3:
        d = getattr(getattr(teacher, "config", None), "hidden_size", None)
        if d:
            zero.update(
                {
                    "reduce_bucket_size": d * d,
                    "stage3_param_persistence_threshold": 10 * d,
                    "stage3_prefetch_bucket_size": int(0.9 * d * d),
                }
            )
    else:
        zero["stage"] = 0
    for key in ("optimizer", "scheduler"):
        ds_config.pop(key, None)
    engine, *_ = deepspeed.initialize(model=teacher, config=ds_config)
    return engine


def _fsdp2_teacher(teacher: nn.Module, accelerator) -> nn.Module:
    """The teacher sharded with FSDP2 block by block on the student's mesh.

    accelerator.prepare_model(teacher, evaluation_mode=True) neither wraps nor moves it (accelerate 1.15): shard it
    ourselves, block by block like the student, on the mesh the student will use (the default world mesh unless a
    parallelism config gives one). It all-gathers one block at a time in forward.
    """
    from .sharding import fully_shard_model

    mesh = getattr(accelerator, "torch_device_mesh", None)
    if mesh is not None:
        mesh = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    return fully_shard_model(teacher, mesh=mesh)


def run_teachers(
    teachers: list, inputs: dict, flags: dict, accepted: list[set[str]], drop: tuple[str, ...], paired=None
) -> list:
    """Every teacher's outputs on its share of `inputs`; call it under torch.no_grad() (and autocast).

    Args:
        teachers: the frozen teachers.
        inputs: the batch.
        flags: forward flags (output_hidden_states, use_cache, ...).
        accepted: per teacher, its forward's parameter names (`modeling.forward_params`).
        drop: input names no teacher gets (the label columns: no wasted loss).
        paired: the `AlignedSoftLoss` of routed / cross-tokenizer teachers, or None: then each teacher runs on
            its own rows in its own tokens, and a teacher without rows gives None.
    """
    if paired is not None:
        return [
            None if (x := paired.teacher_inputs(inputs, k)) is None else teacher(**x, **flags)
            for k, teacher in enumerate(teachers)
        ]
    return [teacher(**select_inputs(inputs, params, drop), **flags) for teacher, params in zip(teachers, accepted)]
