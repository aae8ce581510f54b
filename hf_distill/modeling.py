"""Facts about models that several modules need: the task -> Auto class table, PEFT unwrapping, forward inputs,
and a scoped eval mode."""

from __future__ import annotations

import contextlib
import inspect
import os

import transformers
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from torch import nn

# Task name -> the transformers Auto class of its head. The order is the order `auto_class_for` tries them in
# (the most specific heads first: a causal-LM class is also in no other mapping, but AutoModel holds every base
# model). The cache CLI's --task choices are these names.
TASKS: dict[str, str] = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "masked-lm": "AutoModelForMaskedLM",
    "causal-lm": "AutoModelForCausalLM",
    "multiple-choice": "AutoModelForMultipleChoice",
    "feature-extraction": "AutoModel",
}


@contextlib.contextmanager
def eval_mode(*models: nn.Module):
    """Every module of `models` in eval mode (no dropout) inside the block; each submodule's own `training` flag
    is restored after, also when the block raises.

    Each submodule's own flag: a wrapper's (a DeepSpeed engine keeps `training` True over its eval-mode module) is
    not its modules', and train(wrapper's flag) would switch a frozen teacher's dropout on.

    Args:
        *models: the modules to switch (the same module twice is fine).
    """
    modes = {sub: sub.training for m in models for sub in m.modules()}
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for sub, training in modes.items():
            sub.training = training


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT model (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_hub_id(name: str) -> bool:
    """True when `name` is not an existing local path and has the form of a Hub repo id ('name' or 'owner/name').

    Args:
        name: a model reference as the user gave it (a folder or a Hub id).
    """
    if os.path.exists(name) or name.startswith(("~", ".")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_default_id2label(id2label: dict) -> bool:
    """True when a config's `id2label` holds only transformers' placeholder names LABEL_0, LABEL_1, ...

    Args:
        id2label: {label id: label name}, as in `PretrainedConfig.id2label`.
    """
    return all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


def auto_class_for(model: nn.Module):
    """The transformers Auto class whose mapping contains `type(model)` (PEFT unwrapped), or None."""
    base = unwrap_peft(model)
    for name in TASKS.values():
        if type(base) in _mapped_classes(getattr(transformers, name)):
            return getattr(transformers, name)
    return None


# Packed (padding-free) batches: the causal-LM architectures (config.model_type) whose transformers 5.25 forward
# keeps packed rows apart from `position_ids` alone (it passes them to `create_causal_mask`, which builds the
# block-diagonal mask, and its positions come from them). Each entry is checked in tests/test_packing.py: packed
# logits == each row run alone. Not here, and refused: OPT (positions and mask from attention_mask), Bloom (ALiBi
# from attention_mask), Mamba and hybrid recurrent models (state flows across rows), and anything not tested.
PACKING_MODEL_TYPES = (
    "gpt2",
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt_neox",
    "falcon",
    "starcoder2",
    "olmo2",
)
# Attention implementations whose masks honour packed rows (masking_utils' packed sequence mask; flash-attention
# reads cu_seqlens from position_ids). A custom kernel registered under another name may ignore them.
PACKING_ATTENTION = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")


def packing_problem(model: nn.Module) -> str | None:
    """Why `model` cannot run packed batches (a sentence), or None when it can (PACKING_MODEL_TYPES / _ATTENTION).

    Args:
        model: a causal LM (PEFT-wrapped too).
    """
    config = getattr(unwrap_peft(model), "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in PACKING_MODEL_TYPES:
        return (
            f"its architecture ({model_type!r}) is not one whose attention is known to honour packed "
            f"position_ids (verified: {', '.join(PACKING_MODEL_TYPES)})"
        )
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if attention not in PACKING_ATTENTION:
        return (
            f"its attention implementation {attention!r} may ignore packed position_ids (packing works with "
            f"{', '.join(PACKING_ATTENTION)})"
        )
    return None


def _mapped_classes(auto) -> set:
    mapping = getattr(auto, "_model_mapping", None)
    try:
        return set(mapping.values()) if mapping is not None else set()
    except (ImportError, AttributeError, KeyError, ValueError):  # lazy mappings may fail on optional backends
        return set()


def is_causal_lm(model: nn.Module) -> bool:
    """Whether the model's loss shifts its labels (next-token prediction)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(unwrap_peft(model)).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def forward_params(model: nn.Module) -> set[str]:
    """The inputs a model's forward names (PEFT, DDP and DeepSpeed wrappers looked through; **kwargs excluded).

    These are the batch keys the model is given: a BERT teacher takes token_type_ids, a DistilBERT student not.
    """
    base = unwrap_peft(model)
    base = getattr(base, "module", base)  # DDP / DeepSpeed engine
    params = inspect.signature(base.forward).parameters
    return {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def wrap_peft(model: nn.Module, peft_config) -> nn.Module:
    """Wrap the student with `peft.get_peft_model` when a `peft_config` is given (as TRL trainers do)."""
    if peft_config is None:
        return model
    from peft import PeftConfig, PeftModel, get_peft_model

    if not isinstance(peft_config, PeftConfig):
        raise ValueError(  # bad input is a ValueError throughout the API (not TypeError)
            f"peft_config must be a peft.PeftConfig (e.g. LoraConfig(task_type='SEQ_CLS', r=8)), "
            f"got {type(peft_config).__name__}."
        )
    if isinstance(model, PeftModel):
        raise ValueError(  # bad input is a ValueError throughout the API (not TypeError)
            "the student is already a PeftModel and a peft_config was given too; pass the base model with "
            "peft_config, or the PeftModel without it."
        )
    return get_peft_model(model, peft_config)


# Inputs every transformers model accepts through **kwargs although they are not named in forward().
OUTPUT_FLAGS = ("output_hidden_states", "output_attentions", "return_dict")


def select_inputs(inputs: dict, accepted: set[str], drop: tuple[str, ...] = ()) -> dict:
    """The entries of `inputs` a model whose forward takes `accepted` can receive, without the names in `drop`."""
    kept = {k: v for k, v in inputs.items() if k in accepted or k in OUTPUT_FLAGS}
    for name in drop:
        kept.pop(name, None)
    return kept


def signature_columns(student: nn.Module, teachers: list, extra) -> list[str]:
    """The dataset columns `remove_unused_columns` must keep: every model's forward inputs, and `extra`."""
    columns = set().union(forward_params(student), *[forward_params(t) for t in teachers], extra)
    return sorted(columns | {"label", "label_ids"})
