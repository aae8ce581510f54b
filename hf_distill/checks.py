"""Pure compatibility checks, run before training: each raises a ValueError naming the problem and the fix.

Nothing here touches a Trainer. `check_pair` is the one entry point the trainer calls per teacher; it returns
the number of vocabulary entries the logits are compared on when the vocabularies differ only by padding.
"""

from __future__ import annotations

import logging
import os

import torch
from accelerate.utils import DistributedType, parse_flag_from_env
from torch import nn

from .cache import has_cached_outputs
from .config import DistillationArguments
from .modeling import is_default_id2label, unwrap_peft

logger = logging.getLogger(__name__)

# Attention implementations that can return attention probabilities (sdpa / flash kernels cannot).
ATTENTION_RETURNING = ("eager",)


def check_args(args) -> DistillationArguments:
    if not isinstance(args, DistillationArguments):
        raise ValueError(  # bad input is a ValueError throughout the API (not TypeError)
            f"args must be a DistillationArguments (it carries temperature and the loss weights), "
            f"got {type(args).__name__}; build one with the same fields plus the distillation ones."
        )
    return args


def check_cache_only(student: nn.Module, args, train_dataset, eval_dataset) -> bool:
    """Whether `train_dataset` carries cached teacher outputs; if so, check what the cache can and cannot provide."""
    if not has_cached_outputs(train_dataset):
        return False
    check_not_encoder_decoder(student, "the student")
    if args.hidden_weight > 0 or args.attention_weight > 0:
        raise ValueError(
            "the train dataset carries cached teacher outputs, which hold logits only: hidden-state and attention "
            "alignment need the live teacher. Set hidden_weight=attention_weight=0, or drop the cached columns "
            "and pass teacher_model."
        )
    for name, ds in eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval_dataset", eval_dataset)]:
        if ds is not None and not has_cached_outputs(ds):
            raise ValueError(
                f"the train dataset carries cached teacher outputs but {name} does not, and no teacher is run: "
                "cache it too (hf_distill.cache_teacher_outputs) or train without the cache."
            )
    first = train_dataset[0]
    if "teacher_temperature" in first:
        cached_t = torch.as_tensor(first["teacher_temperature"]).reshape(-1)[0].item()
        if abs(cached_t - args.temperature) > 1e-6:
            raise ValueError(
                f"the top-k cache was made at temperature {cached_t} but args.temperature is {args.temperature}: "
                "the cached rest mass holds for one temperature only. Use that temperature or cache again."
            )
    config = getattr(student, "config", None)
    if "teacher_logits" in first and type(student).__name__.endswith("ForSequenceClassification") and config:
        width = torch.as_tensor(first["teacher_logits"]).shape[-1]
        if width != config.num_labels:
            raise ValueError(
                f"the cached teacher logits have {width} classes but the student predicts {config.num_labels}: "
                "give the student the teacher's num_labels and id2label."
            )
    return True


def check_pair(student: nn.Module, teacher: nn.Module, args, processing_class=None, who: str = "the teacher"):
    """Check one student/teacher pair; return the vocabulary size logits are cut to (None = no cut)."""
    if args.hidden_weight > 0 or args.attention_weight > 0:
        check_returns_hidden_states(student, "student")
        check_returns_hidden_states(teacher, who)
    s_cfg, t_cfg = getattr(student, "config", None), getattr(teacher, "config", None)
    check_not_encoder_decoder(student, "the student")
    check_not_encoder_decoder(teacher, who)
    if s_cfg is None or t_cfg is None:
        return None  # plain nn.Modules: nothing to compare before the first batch
    if args.attention_weight > 0:
        check_attentions(s_cfg, t_cfg, who)
    check_labels(student, teacher, who)
    n_tokens = len(processing_class) if processing_class is not None and hasattr(processing_class, "__len__") else None
    return vocab_limit(getattr(s_cfg, "vocab_size", None), getattr(t_cfg, "vocab_size", None), n_tokens, who)


def check_teachers(
    student: nn.Module, teachers: list, args, processing_class=None, teacher_processing_class=None, teacher_sources=()
) -> tuple[int | None, list]:
    """`check_pair` for every teacher and `check_tokenizers` for each; returns (the vocabulary limit, if any, and
    each teacher's tokenizer when it differs from the student's, else None).

    `teacher_processing_class` is one tokenizer (for every teacher) or a list, one per teacher. A teacher whose
    tokenizer differs is accepted only with `args.cross_tokenizer` set (its vocabulary is then not compared).
    """
    given = teacher_processing_class
    if isinstance(given, (list, tuple)):
        if len(given) != len(teachers):
            raise ValueError(
                f"teacher_processing_class lists {len(given)} tokenizers for {len(teachers)} teachers; "
                "give one per teacher (None where the teacher uses the student's tokenizer)."
            )
    else:
        given = [given] * len(teachers)
    sources = list(teacher_sources or []) + [None] * len(teachers)
    cross = getattr(args, "cross_tokenizer", None)
    limits, differing = [], []
    for k, teacher in enumerate(teachers):
        who = "the teacher" if len(teachers) == 1 else f"teacher {k}"
        other = check_tokenizers(
            processing_class, given[k], sources[k], teacher, allow_different=cross is not None, who=who
        )
        differing.append(other)
        if other is None:
            limits.append(check_pair(student, teacher, args, processing_class, who))
        else:  # another tokenizer: its vocabulary is compared through the cross-tokenizer alignment instead
            check_not_encoder_decoder(teacher, who)
    return next((n for n in limits if n is not None), None), differing


def check_generation_setup(args, student, teachers: list, cached: bool) -> None:
    """lmbda > 0 / seq_kd need a causal LM that can generate (and a live teacher for seq_kd)."""
    if not args.samples_completions:
        return
    if cached:
        raise ValueError(
            "lmbda > 0 / seq_kd score freshly sampled completions, which cached teacher outputs cannot cover; "
            "train with a live teacher_model (drop the cached columns) or set lmbda=0 and seq_kd=False."
        )
    for name, model in (("the student", student), *(("the teacher", t) for t in teachers[:1] if args.seq_kd)):
        base = unwrap_peft(model)
        if not (hasattr(base, "can_generate") and base.can_generate()):
            raise ValueError(
                f"lmbda > 0 / seq_kd sample completions with {name}, which cannot generate "
                f"({type(model).__name__}); use causal LMs (AutoModelForCausalLM) or set lmbda=0 and seq_kd=False."
            )
    if len(teachers) > 1 and args.seq_kd:
        logger.info("seq_kd with %d teachers: completions are sampled from the first teacher.", len(teachers))


def check_merge_on_save(merge_adapter_on_save: bool, sharded: bool) -> None:
    """merge_adapter_on_save needs the whole adapter in one process: not under DeepSpeed or FSDP."""
    if merge_adapter_on_save and sharded:
        raise ValueError(
            "merge_adapter_on_save is not supported under DeepSpeed or FSDP (the adapter is sharded); save the "
            "adapter and merge it afterwards with PeftModel.from_pretrained(...).merge_and_unload()."
        )


def check_not_encoder_decoder(model: nn.Module, who: str) -> None:
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        # Decoder positions need their own mask (decoder_attention_mask / labels != -100) and teachers need decoder
        # inputs built from the labels: not wired, so refuse rather than mask the wrong positions.
        raise ValueError(
            f"{who} ({type(model).__name__}) is an encoder-decoder (seq2seq) model, which DistillationTrainer does "
            "not support; distil an encoder-only or decoder-only model."
        )


def check_returns_hidden_states(model: nn.Module, who: str) -> None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "output_hidden_states"):
        raise ValueError(
            f"hidden_weight/attention_weight > 0 but the {who} ({type(model).__name__}) returns no hidden states (it "
            "is not a transformers model with a config); set them to 0 or use a model that accepts "
            "output_hidden_states=True."
        )


def check_attentions(s_cfg, t_cfg, who: str) -> None:
    """attention_weight > 0 needs attention maps from both models, with the same number of heads."""
    for name, cfg in (("the student", s_cfg), (who, t_cfg)):
        impl = getattr(cfg, "_attn_implementation", None) or "eager"
        if impl not in ATTENTION_RETURNING:
            raise ValueError(
                f"attention_weight > 0 but {name} uses attn_implementation={impl!r}, which returns no attention "
                "maps; load it with from_pretrained(..., attn_implementation='eager') or call "
                "model.set_attn_implementation('eager') before building the trainer."
            )
    s_heads, t_heads = getattr(s_cfg, "num_attention_heads", None), getattr(t_cfg, "num_attention_heads", None)
    if s_heads != t_heads:
        raise ValueError(
            f"attention_weight > 0 needs the same number of attention heads, but the student has {s_heads} and "
            f"{who} has {t_heads}; give the student num_attention_heads={t_heads} or set attention_weight=0."
        )


def check_labels(student: nn.Module, teacher: nn.Module, who: str) -> None:
    """Two classification heads must predict the same classes in the same order."""
    if not (
        type(unwrap_peft(student)).__name__.endswith("Classification")
        and type(unwrap_peft(teacher)).__name__.endswith("Classification")
    ):
        return
    s_cfg, t_cfg = student.config, teacher.config
    if s_cfg.num_labels != t_cfg.num_labels:
        raise ValueError(
            f"the student predicts {s_cfg.num_labels} labels but {who} predicts {t_cfg.num_labels}: logits of "
            f"different widths cannot be distilled. Give the student num_labels={t_cfg.num_labels} and the "
            "teacher's id2label."
        )
    s_map = {int(i): str(v) for i, v in s_cfg.id2label.items()}
    t_map = {int(i): str(v) for i, v in t_cfg.id2label.items()}
    if s_map != t_map and not (is_default_id2label(s_map) or is_default_id2label(t_map)):
        raise ValueError(
            f"the student's id2label {s_map} differs from {who}'s {t_map}: label i must mean the same class in "
            "both. Set student.config.id2label (and label2id) to the teacher's."
        )


def vocab_limit(student_vocab: int | None, teacher_vocab: int | None, n_tokens: int | None, who: str) -> int | None:
    """How many vocabulary entries the logits are compared on: None = all; n_tokens when rows beyond the
    tokenizer are padding (e.g. 32064 rows for 32011 tokens). Vocabularies that truly differ are an error."""
    if student_vocab is None or teacher_vocab is None:
        return None
    if student_vocab == teacher_vocab:
        if n_tokens is not None and n_tokens < student_vocab:
            logger.info(
                "vocab_size %d has %d padding rows beyond the tokenizer; logits are compared on the first %d entries.",
                student_vocab,
                student_vocab - n_tokens,
                n_tokens,
            )
            return n_tokens
        return None
    if n_tokens is not None and min(student_vocab, teacher_vocab) >= n_tokens:
        logger.warning(
            "student vocab_size %d and %s vocab_size %d differ only by padding rows beyond the tokenizer's "
            "%d tokens; logits are compared on the first %d entries.",
            student_vocab,
            who,
            teacher_vocab,
            n_tokens,
            n_tokens,
        )
        return n_tokens
    raise ValueError(
        f"the student's vocab_size ({student_vocab}) differs from {who}'s ({teacher_vocab}): they must share a "
        "tokenizer to be distilled. Build the student from the teacher's config/tokenizer (see "
        "init_student_from_teacher); if the sizes differ only by padding rows, pass the shared tokenizer as "
        "processing_class; for a teacher with another tokenizer (causal LMs), set cross_tokenizer='uld' or "
        "'hybrid' and pass its tokenizer as teacher_processing_class (docs/cross_tokenizer.md)."
    )


# Files whose presence says a folder carries its own tokenizer.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
)


def find_teacher_tokenizer(teacher_source=None, teacher: nn.Module | None = None):
    """The tokenizer saved where the teacher comes from: the local directory it was given as, or, for a model
    object, the local directory it was loaded from (`name_or_path`); None when there is none."""
    folders = [teacher_source] if isinstance(teacher_source, (str, os.PathLike)) else []
    folders.append(getattr(teacher, "name_or_path", None))
    for folder in folders:
        # Only a folder that holds tokenizer files: for one without, AutoTokenizer may fall back to the tokenizer
        # its config's model type names (a GPT-2 config gives GPT-2's), which says nothing about this teacher.
        if (
            folder
            and os.path.isdir(str(folder))
            and any(os.path.isfile(os.path.join(str(folder), name)) for name in _TOKENIZER_FILES)
        ):
            from transformers import AutoTokenizer

            try:
                return AutoTokenizer.from_pretrained(str(folder))
            except (OSError, ValueError, TypeError):
                continue  # a model folder without tokenizer files
    return None


def check_tokenizers(
    processing_class,
    teacher_processing_class=None,
    teacher_source=None,
    teacher: nn.Module | None = None,
    allow_different: bool = False,
    who: str = "the teacher",
):
    """Student and teacher tokenizers must map the same ids to the same tokens, unless `allow_different`
    (cross-tokenizer distillation); returns the teacher's tokenizer when it differs, else None.

    Without `teacher_processing_class`, the teacher's tokenizer is found by `find_teacher_tokenizer`. A teacher
    built in memory has none, and only its vocabulary size is checked.
    """
    if processing_class is None or not hasattr(processing_class, "get_vocab"):
        if allow_different and teacher_processing_class is not None:
            raise ValueError(
                "cross_tokenizer is set and a teacher tokenizer was given, but the student's tokenizer is unknown: "
                "pass it as processing_class (the batches' text is decoded with it)."
            )
        return None
    t_tok = teacher_processing_class
    if t_tok is None:
        t_tok = find_teacher_tokenizer(teacher_source, teacher)
    if t_tok is None or not hasattr(t_tok, "get_vocab"):
        return None
    if t_tok.get_vocab() == processing_class.get_vocab():
        return None
    if not allow_different:
        raise ValueError(
            f"{who}'s tokenizer and the student's (processing_class) have different vocabularies: the same "
            "ids would mean different tokens. Use the teacher's tokenizer for the student, or (causal LMs) set "
            "cross_tokenizer='uld' or 'hybrid' to distil across tokenizers, with the teacher's tokenizer as "
            "teacher_processing_class (docs/cross_tokenizer.md)."
        )
    return t_tok


# ---- sharding: what the launch asked for must be in effect ---------------------------------------------


def requested_sharding(args) -> str | None:
    """ "deepspeed", "fsdp" or None: what the launch asked for (accelerate config env vars or TrainingArguments)."""
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") or getattr(args, "deepspeed", None):
        return "deepspeed"
    if parse_flag_from_env("ACCELERATE_USE_FSDP") or getattr(args, "fsdp", None):
        return "fsdp"
    return None


def check_sharding(accelerator, args) -> None:
    """ValueError when the launch asked for more than it got: sharding, or several cooperating processes.

    Launchers fall back silently: `accelerate launch` with an FSDP config on CPU (or `--fsdp` under torchrun on
    CPU) runs plain DDP, and a multi-process launch whose processes do not join one process group gives several
    independent single-process runs writing into one output folder.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise ValueError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}) but this one runs alone "
            f"(num_processes={accelerator.num_processes}): {launched} independent runs would train and write "
            f"{args.output_dir} at once. accelerate sets up multi-process training only on supported devices; on a "
            "CPU machine pass --use_cpu (gloo), or launch with --num_processes 1."
        )
    asked = requested_sharding(args)
    distributed = DistributedType(accelerator.distributed_type).value  # a str enum: "FSDP" == DistributedType.FSDP
    if asked == "fsdp" and distributed != DistributedType.FSDP:
        raise ValueError(
            f"FSDP was requested (accelerate FSDP config or --fsdp) but the run is {distributed}: accelerate only "
            "uses FSDP on GPUs (and similar accelerators), so on CPU it would silently train unsharded. Use a GPU "
            "machine, or an unsharded config (recipes/configs/accelerate_cpu.yaml / accelerate_ddp.yaml) on purpose."
        )
    if asked == "deepspeed" and distributed != DistributedType.DEEPSPEED:
        raise ValueError(
            f"DeepSpeed was requested but the run is {distributed}. On CPU set DS_ACCELERATOR=cpu and use a config "
            'with mixed_precision "no" and use_cpu true (tests/configs/accelerate_zero*_cpu.yaml); check that '
            "`deepspeed` is installed (pip install -e .[deepspeed])."
        )


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss term is NaN or infinite, before it reaches the weights."""


def check_packing(models: dict[str, nn.Module], args, cached: bool = False) -> None:
    """ValueError unless packed (padding-free) batches give every model and loss term what padded ones give.

    Args:
        models: name (for the message) -> model, e.g. {"the student": ..., "the teacher": ...}.
        args: the DistillationArguments (attention maps cannot be compared across packed rows).
        cached: whether the teacher outputs are cached (stored per padded row, not packed).
    """
    from .modeling import packing_problem

    fix = "use padded batches (PromptCompletionCollator(pack=False), no --packing)"
    if cached:
        raise ValueError(f"packed batches cannot carry cached teacher outputs (stored per row); {fix}.")
    if args.attention_weight > 0:
        raise ValueError(f"attention_weight > 0 compares attention maps per row, which packed batches lack; {fix}.")
    for who, model in models.items():
        problem = packing_problem(model)
        if problem is not None:
            raise ValueError(f"packed batches would be silently wrong for {who}: {problem}; {fix}.")


def check_finite(loss: torch.Tensor, terms: dict[str, torch.Tensor], step: int, epoch: float | None) -> None:
    """Stop before the optimizer step when the loss or a term is NaN / infinite (one sync for all of them)."""
    values = torch.stack([loss.detach().float()] + [v.detach().float() for v in terms.values()])
    if not bool(torch.isfinite(values).all()):
        bad = [name for name, v in terms.items() if not torch.isfinite(v.detach()).all()] or ["loss"]
        raise NonFiniteLossError(
            f"non-finite {', '.join(bad)} at step {step} (epoch {epoch}); training stopped before the weights were "
            "updated. Lower the learning rate, check the inputs, or use bf16 instead of fp16."
        )


class PackingCheck:
    """`check_packing` of a trainer's models, run once: when a packing collator is set, or at the first packed batch.

    Args:
        student: the student.
        teachers: the teachers (named "the teacher", or "teacher k" in an ensemble, in the messages).
        args: the DistillationArguments.
        cached: whether the teacher outputs are cached.
    """

    def __init__(self, student: nn.Module, teachers: list, args, cached: bool):
        names = ["the teacher"] if len(teachers) == 1 else [f"teacher {k}" for k in range(len(teachers))]
        self.models = {"the student": student, **dict(zip(names, teachers))}
        self.args, self.cached, self.done = args, cached, False

    def run(self) -> None:
        """Raise check_packing's ValueError now if packed batches would be wrong."""
        check_packing(self.models, self.args, self.cached)
        self.done = True

    def flags(self, inputs: dict) -> dict:
        """Forward flags for a packed batch (lm_data.pack_padded): use_cache=False, as a cache turns transformers'
        packed-row masks off; {} for a padded batch. The first packed batch runs the check."""
        from .lm_data import is_packed

        if not is_packed(inputs):
            return {}
        if not self.done:
            self.run()
        return {"use_cache": False}
