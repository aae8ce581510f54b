"""Sharded students (FSDP2, DeepSpeed ZeRO): what FSDP wraps, full-state-dict final saves, standard saved names.

Whether the requested sharding is in effect is checked in `hf_distill.checks.check_sharding`; the teacher is
placed (sharded or replicated) by `hf_distill.teacher.place_teacher`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .modeling import unwrap_peft

logger = logging.getLogger(__name__)


def fsdp_wrap_class_names(model: nn.Module) -> list[str]:
    """The block classes FSDP shards one by one: the model's `_no_split_modules` without its embeddings.

    Embedding modules are listed there too (BertEmbeddings) so that device_map never splits them; with them
    as FSDP units of their own, accelerate 1.15 + transformers 5.24 fail in fully_shard ("Invariant
    encountered: value was None when it should not be", issue 14). They stay in the root unit.
    """
    base = unwrap_peft(model)
    names = set()
    for module in base.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    present = {type(m).__name__ for m in base.modules()}
    return sorted(n for n in names if n in present and "Embedding" not in n)


def fully_shard_model(model: nn.Module, mesh=None, reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2: `fully_shard` each block named by `fsdp_wrap_class_names`, then the root (the rest), on `mesh`."""
    from torch.distributed.fsdp import fully_shard

    classes = set(fsdp_wrap_class_names(model))
    if not classes:
        raise ValueError(
            f"{type(model).__name__} lists no transformer block classes in _no_split_modules: set "
            "fsdp_transformer_layer_cls_to_wrap in the accelerate FSDP config."
        )
    for module in list(model.modules()):
        if type(module).__name__ in classes:
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict, gathered from the FSDP shards onto the CPU (collective: call on every rank).

    Unlike `accelerator.get_state_dict`, this does not depend on fsdp_state_dict_type: the final save
    and the Hub push get a full model also when checkpoints are sharded.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def drop_legacy_renamings(model: nn.Module) -> None:
    """Save standard weight names: undo transformers' reverse of the legacy `LayerNorm.gamma/.beta` renaming.

    A model loaded under DeepSpeed ZeRO-3 (zero.Init) keeps every conversion it was offered, the legacy
    ones included, and `save_pretrained` reverts them: its LayerNorms are saved as `.gamma`/`.beta`, which
    transformers maps back but other tools do not. Loading outside ZeRO-3 keeps only conversions in use.
    """
    conversions = getattr(model, "_weight_conversions", None)
    if not conversions:
        return
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        legacy = get_checkpoint_conversion_mapping("legacy")
    except (ImportError, KeyError, ValueError):
        return
    keys = {(tuple(c.source_patterns), tuple(c.target_patterns)) for c in legacy}
    kept = [c for c in conversions if (tuple(c.source_patterns), tuple(c.target_patterns)) not in keys]
    if len(kept) != len(conversions):
        model._weight_conversions = kept


def adapt_to_sharding(accelerator, model: nn.Module) -> None:
    """Settings the student needs before Accelerate wraps it: the FSDP wrap classes, standard saved names."""
    drop_legacy_renamings(unwrap_peft(model))
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None or getattr(plugin, "transformer_cls_names_to_wrap", None):
        return
    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if getattr(policy, "__name__", "") == "transformer_auto_wrap_policy":
        # Accelerate's default for TRANSFORMER_BASED_WRAP is all of _no_split_modules, embeddings included.
        plugin.transformer_cls_names_to_wrap = fsdp_wrap_class_names(model)
        logger.info(
            "FSDP wraps %s (the model's _no_split_modules without embeddings)", plugin.transformer_cls_names_to_wrap
        )
