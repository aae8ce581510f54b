"""DistillationArguments: the distillation knobs, on top of `transformers.TrainingArguments`."""

from __future__ import annotations

import dataclasses
import logging
import re
import textwrap
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .losses import (
    DIVERGENCE_NAMES,
    DIVERGENCE_PARAM_RANGES,
    DIVERGENCE_PARAMS,
    check_divergence_params,
    divergence_param_default,
    divergence_params,
)

logger = logging.getLogger(__name__)

_LAYER_MAP_RE = re.compile(r"^\s*\d+\s*:\s*\d+\s*(,\s*\d+\s*:\s*\d+\s*)*$")


def divergence_field(name: str):
    """The `DistillationArguments` field of divergence parameter `name`: default and help from the registry.

    Args:
        name: a key of `losses.DIVERGENCE_PARAMS`, e.g. "jsd_beta".
    """
    return field(default=divergence_param_default(name), metadata={"help": DIVERGENCE_PARAMS[name].help})


def parse_layer_map(spec: str | dict | None) -> dict[int, int] | None:
    """Parse `"1:2,2:4,3:6"` (student:teacher, 0 = embedding output) into `{1: 2, 2: 4, 3: 6}`."""
    if spec is None or isinstance(spec, dict):
        return None if spec is None else {int(k): int(v) for k, v in spec.items()}
    if not isinstance(spec, str) or not _LAYER_MAP_RE.match(spec):
        raise ValueError(
            f"layer_map={spec!r} is not valid: write comma-separated student:teacher pairs of layer indices, "
            'e.g. "1:2,2:4,3:6" (index 0 is the embedding output), or leave it unset for the uniform map.'
        )
    pairs = [p.split(":") for p in spec.split(",")]
    mapping = {int(s): int(t) for s, t in pairs}
    if len(mapping) != len(pairs):
        raise ValueError(
            f"layer_map={spec!r} names a student layer twice; each student layer maps to one teacher layer."
        )
    return mapping


@dataclass
class DistillationArguments(TrainingArguments):
    """`TrainingArguments` plus the distillation settings. The field help texts are the reference docs.

    loss = soft_weight * soft + hard_weight * hard + hidden_weight * hidden (+ attention_weight * attention)

    The `Args:` section below is generated from the fields' help texts (`_args_section`).
    """

    temperature: float = field(
        default=2.0,
        metadata={
            "help": "Softmax temperature T > 0 applied to teacher and student logits for the soft-target loss; "
            "the soft loss is multiplied by T^2 so its gradients keep their scale when T changes."
        },
    )
    soft_weight: float = field(
        default=0.9, metadata={"help": "Weight of the soft-target loss T^2 * KL(teacher || student) at temperature T."}
    )
    hard_weight: float = field(
        default=0.1,
        metadata={
            "help": "Weight of the student's own loss on the true labels (the model output's `.loss`); "
            "batches without labels skip it."
        },
    )
    hidden_weight: float = field(
        default=0.0, metadata={"help": "Weight of the hidden-state alignment loss; > 0 turns it on."}
    )
    hidden_loss: str = field(
        default="mse",
        metadata={
            "help": "Distance for hidden-state alignment: 'mse' (mean squared error over hidden dims) "
            "or 'cosine' (1 - cosine similarity).",
            "choices": ["mse", "cosine"],
        },
    )
    layer_map: str | None = field(
        default=None,
        metadata={
            "help": "Student:teacher hidden-state pairs such as '1:2,2:4,3:6' (0 = embedding output). "
            "Unset = uniform map, student layer i <-> teacher layer i*Lt/Ls."
        },
    )
    divergence: str | None = field(
        default=None,
        metadata={
            "help": "Soft-loss divergence between teacher p_t and student p_s at temperature T, scaled by T^2 "
            "(unset = 'forward_kl', or 'jsd' with jsd_beta 0.5 when lmbda > 0, GKD's best on-policy setting): "
            "'forward_kl' KL(p_t||p_s) (Hinton et al.), 'reverse_kl' KL(p_s||p_t) (MiniLLM), 'jsd' generalized "
            "JSD with jsd_beta (GKD), 'skew_forward_kl' / 'skew_reverse_kl' with skew_alpha (DistiLLM), 'tvd' "
            "total variation; 'mse' = squared error between raw logits (no T). Regression heads always use "
            "'mse'.",
            "choices": list(DIVERGENCE_NAMES),
        },
    )
    # One line per divergence parameter; default, help and range come from the registry (losses.DIVERGENCE_PARAMS).
    jsd_beta: float = divergence_field("jsd_beta")
    skew_alpha: float = divergence_field("skew_alpha")
    loss_chunk_size: int | str | None = field(
        default=None,
        metadata={
            "help": "Causal LMs: tokens per chunk for the output layer; logits, divergence and hard loss are "
            "computed chunk by chunk from the last hidden states, never the full (B, L, V). 'auto' sizes the chunks "
            "from a memory budget (2% of the free GPU memory, 512 MiB on CPU): one chunk when the logits fit. "
            "Unset = off."
        },
    )
    logit_loss: str | None = field(
        default=None,
        metadata={
            "help": "Deprecated, use `divergence`: 'mse' is divergence='mse', 'kl' keeps the KL-family divergence.",
            "choices": [None, "kl", "mse"],
        },
    )
    ensemble_mode: str = field(
        default="mean",
        metadata={
            "help": "How several teachers' predictions combine into one target: 'mean' (arithmetic mean of "
            "probabilities) or 'geometric' (renormalised geometric mean).",
            "choices": ["mean", "geometric"],
        },
    )
    attention_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of attention-map distillation (TinyBERT style KL between attention distributions "
            "of mapped layers); > 0 turns it on. Needs the same number of heads."
        },
    )
    attention_layer_map: str | None = field(
        default=None,
        metadata={
            "help": "Student:teacher transformer-layer pairs for attention distillation (1-based). "
            "Unset = uniform map."
        },
    )
    cross_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "Causal LMs: distil from teachers with another tokenizer (pass it as teacher_processing_class / "
            "--teacher_tokenizer_name_or_path). Each student row is decoded and re-tokenized for its teacher; a "
            "student position is paired with the teacher position whose token ends at the same character (others "
            "are skipped). 'uld': L1 between sorted probability vectors (Boizard et al. 2024); 'hybrid': the chosen "
            "divergence on the tokens both vocabularies share (+ one bin for the rest), ULD on the others. "
            "Unset = teachers must share the student's tokenizer. See docs/cross_tokenizer.md.",
            "choices": [None, "uld", "hybrid"],
        },
    )
    teacher_id_column: str | None = field(
        default=None,
        metadata={
            "help": "Causal LMs with several teachers: the dataset column naming each row's teacher (its 0-based "
            "index in teacher_model, or the name / path it was given as); each row is then scored by its own "
            "teacher only, instead of by the ensemble of all. Unset = every teacher scores every row."
        },
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Run the teacher in this dtype ('bfloat16', 'float16', 'float32'); the losses stay in "
            "float32. Unset = the teacher's own dtype.",
            "choices": [None, "bfloat16", "float16", "float32"],
        },
    )

    # ---- on-policy (GKD) and sequence-level distillation of causal LMs (hf_distill.generation) ----
    lmbda: float = field(
        default=0.0,
        metadata={
            "help": "Probability in [0, 1] that a training batch's completions are sampled from the student "
            "(on-policy, GKD's lambda); teacher and student then score the sampled tokens. 0 = off-policy "
            "(the dataset's completions). Student samples train the soft loss only (their labels are -100). "
            "Needs prompt/completion data (hf_distill.lm_data)."
        },
    )
    seq_kd: bool = field(
        default=False,
        metadata={
            "help": "Sequence-level KD (Kim & Rush 2016): batches not sampled from the student get their "
            "completions sampled from the teacher instead of the dataset; the hard loss then trains on "
            "the teacher's samples."
        },
    )
    lmbda_start_step: int = field(
        default=0,
        metadata={
            "help": "Warm start: the micro-batches of optimizer steps before this one keep the dataset's completions "
            "(off-policy); from this step on each is sampled from the student with probability lmbda (or the "
            "ramped value, see lmbda_warmup_steps). 0 = on-policy from the first step. Needs lmbda > 0."
        },
    )
    lmbda_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Optimizer steps over which the on-policy probability ramps linearly from 0 to lmbda after "
            "lmbda_start_step: step s uses lmbda * min(1, (s - lmbda_start_step) / lmbda_warmup_steps) (as a "
            "learning-rate warm-up). 0 = the full lmbda at once. Needs lmbda > 0."
        },
    )
    on_policy_divergence: str | None = field(
        default=None,
        metadata={
            "help": "Divergence for the batches whose completions the student sampled (unset = `divergence`). With "
            "a warm start, e.g. divergence='forward_kl' on the dataset's completions and 'reverse_kl' (per-token, "
            "as in on-policy distillation of Qwen3 / Thinking Machines) or 'jsd' (GKD) on the student's samples. "
            "Its parameters (jsd_beta, skew_alpha) are shared with `divergence`.",
            "choices": [None, *DIVERGENCE_NAMES],
        },
    )
    max_new_tokens: int = field(
        default=128, metadata={"help": "Most tokens sampled per completion when lmbda > 0 or seq_kd."}
    )
    generation_per_step: bool = field(
        default=True,
        metadata={
            "help": "Sample the completions of all micro-batches of an optimizer step in one generate call (one "
            "generation batch of gradient_accumulation_steps x per_device_train_batch_size prompts, split "
            "afterwards; TRL's generation_batch_size). False = one call per micro-batch (less memory, slower)."
        },
    )
    generation_sampler: str = field(
        default="inverse_cdf",
        metadata={
            "help": "How sampled tokens are drawn from the (temperature / top-k / top-p shaped) distribution: "
            "'inverse_cdf' (one uniform number per row; the same distribution, several times faster on CPUs "
            "where torch.multinomial draws one exponential number per vocabulary entry) or 'multinomial' "
            "(transformers' do_sample).",
            "choices": ["inverse_cdf", "multinomial"],
        },
    )
    generation_cache: str = field(
        default="dynamic",
        metadata={
            "help": "KV cache of the decoding loop: 'dynamic' (grows with the sequence) or 'static' (allocated "
            "once for prompt + max_new_tokens; compilable). The cache is always on (use_cache=True).",
            "choices": ["dynamic", "static"],
        },
    )
    generation_compile: bool = field(
        default=False,
        metadata={
            "help": "Compile the decoding step with torch.compile (needs generation_cache='static'). It pays only "
            "when many steps reuse one compiled graph (GPUs, long generations); measured slower on CPU "
            "(docs/results/lm_sampling_cpu.md)."
        },
    )
    generation_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Sampling temperature of on-policy / teacher generation (GKD samples at 1.0); 0 = greedy decoding."
        },
    )
    generation_top_p: float = field(
        default=1.0, metadata={"help": "Nucleus sampling: keep the smallest token set with this much mass (1 = off)."}
    )
    generation_top_k: int = field(
        default=0, metadata={"help": "Sample among the k most likely tokens only (0 = off)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}; typical values are 1-8 (default 2).")
        weights = {
            "soft_weight": self.soft_weight,
            "hard_weight": self.hard_weight,
            "hidden_weight": self.hidden_weight,
            "attention_weight": self.attention_weight,
        }
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}; set it to 0 to turn that loss off.")
        if all(v == 0 for v in weights.values()):
            raise ValueError(
                "soft_weight, hard_weight, hidden_weight and attention_weight are all 0, so there is nothing to train "
                "on; give at least one a positive weight (the defaults are soft_weight=0.9, hard_weight=0.1)."
            )
        if self.hidden_loss not in ("mse", "cosine"):
            raise ValueError(f"hidden_loss must be 'mse' or 'cosine', got {self.hidden_loss!r}.")
        if self.divergence is None:  # on-policy samples: GKD found the generalized JSD best
            self.divergence = "jsd" if self.lmbda > 0 else "forward_kl"
        self._check_divergence()
        self._check_loss_chunk_size()
        if self.ensemble_mode not in ("mean", "geometric"):
            raise ValueError(f"ensemble_mode must be 'mean' or 'geometric', got {self.ensemble_mode!r}.")
        if self.teacher_dtype not in (None, "bfloat16", "float16", "float32"):
            raise ValueError(
                f"teacher_dtype must be one of 'bfloat16', 'float16', 'float32' or unset, got {self.teacher_dtype!r}."
            )
        if self.cross_tokenizer not in (None, "uld", "hybrid"):
            raise ValueError(f"cross_tokenizer must be 'uld', 'hybrid' or unset, got {self.cross_tokenizer!r}.")
        if self.cross_tokenizer == "hybrid" and self.divergence == "mse":
            raise ValueError(
                "cross_tokenizer='hybrid' compares distributions on the shared tokens; divergence='mse' "
                "compares raw logits, which differ across vocabularies. Choose a distribution "
                "divergence."
            )
        parse_layer_map(self.layer_map)  # syntax check only; ranges are checked against the models
        parse_layer_map(self.attention_layer_map)
        self._check_generation()

    def _check_generation(self) -> None:
        self._check_on_policy()
        self._check_sampling()

    def _check_on_policy(self) -> None:
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda is a probability and must be in [0, 1], got {self.lmbda} (0 = off-policy).")
        for name in ("lmbda_start_step", "lmbda_warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number of optimizer steps >= 0, got {value!r}.")
        if (self.lmbda_start_step or self.lmbda_warmup_steps or self.on_policy_divergence) and self.lmbda == 0:
            raise ValueError(
                "lmbda_start_step, lmbda_warmup_steps and on_policy_divergence shape on-policy training, but lmbda=0 "
                "samples nothing from the student: set lmbda > 0 (e.g. 1.0 for a warm start) or drop them."
            )
        if self.on_policy_divergence is not None and self.on_policy_divergence not in DIVERGENCE_NAMES:
            raise ValueError(
                f"on_policy_divergence must be one of {list(DIVERGENCE_NAMES)} or unset, "
                f"got {self.on_policy_divergence!r}."
            )
        if self.lmbda > 0 and self.soft_weight <= 0:
            raise ValueError(
                f"lmbda={self.lmbda} trains on the student's own samples, which carry no labels: only the soft loss "
                "learns from them, so soft_weight must be > 0."
            )

    def _check_sampling(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.generation_temperature < 0:
            raise ValueError(f"generation_temperature must be >= 0 (0 = greedy), got {self.generation_temperature}.")
        if not 0.0 < self.generation_top_p <= 1.0:
            raise ValueError(f"generation_top_p must be in (0, 1], got {self.generation_top_p} (1 = off).")
        if self.generation_top_k < 0:
            raise ValueError(f"generation_top_k must be >= 0, got {self.generation_top_k} (0 = off).")
        if self.generation_sampler not in ("inverse_cdf", "multinomial"):
            raise ValueError(
                f"generation_sampler must be 'inverse_cdf' or 'multinomial', got {self.generation_sampler!r}."
            )
        if self.generation_cache not in ("dynamic", "static"):
            raise ValueError(f"generation_cache must be 'dynamic' or 'static', got {self.generation_cache!r}.")
        if self.generation_compile and self.generation_cache != "static":
            raise ValueError(
                "generation_compile=True compiles the decoding step, which needs a fixed-size cache: set "
                "generation_cache='static' as well (or drop generation_compile)."
            )

    def _check_loss_chunk_size(self) -> None:
        size = self.loss_chunk_size
        if isinstance(size, str) and size.strip().isdigit():  # from the command line: "256"
            size = self.loss_chunk_size = int(size)
        if size is None or size == "auto":
            return
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(
                f"loss_chunk_size must be a positive number of tokens (e.g. 1024), 'auto' or unset, got {size!r}."
            )

    def _check_divergence(self) -> None:
        if self.logit_loss is not None:  # the old name of the logit-matching choice
            if self.logit_loss not in ("kl", "mse"):
                raise ValueError(f"logit_loss must be 'kl' or 'mse', got {self.logit_loss!r}; prefer `divergence`.")
            wanted_mse = self.logit_loss == "mse"
            if wanted_mse and self.divergence not in ("forward_kl", "mse"):
                raise ValueError(
                    f"logit_loss='mse' and divergence={self.divergence!r} disagree; drop logit_loss (deprecated) and "
                    "set divergence alone."
                )
            if not wanted_mse and self.divergence == "mse":
                raise ValueError("logit_loss='kl' and divergence='mse' disagree; drop logit_loss and keep divergence.")
            if wanted_mse:
                logger.warning("logit_loss='mse' is deprecated; use divergence='mse'.")
                self.divergence = "mse"
        if self.divergence not in DIVERGENCE_NAMES:
            raise ValueError(f"divergence must be one of {list(DIVERGENCE_NAMES)}, got {self.divergence!r}.")
        # Every parameter is range-checked, also those of divergences not chosen: a bad value is a typo either way.
        check_divergence_params(**{name: getattr(self, name) for name in DIVERGENCE_PARAM_RANGES})

    @property
    def samples_completions(self) -> bool:
        """Whether training samples completions at all: from the student (lmbda > 0) or the teacher (seq_kd)."""
        return self.lmbda > 0 or self.seq_kd

    def divergence_kwargs(self, divergence: str | None = None) -> dict[str, float]:
        """The parameters of a divergence (default: the chosen one), e.g. {"jsd_beta": 0.5} for "jsd".

        Args:
            divergence: a registry name, e.g. `on_policy_divergence`; unset = `self.divergence`.
        """
        return {name: getattr(self, name) for name in divergence_params(divergence or self.divergence)}


def _args_section(cls) -> str:
    """An `Args:` docstring section from the `help` texts of the fields `cls` adds to `TrainingArguments`."""
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    lines = ["", "    Args:"]
    for f in dataclasses.fields(cls):
        if f.name not in inherited and f.metadata.get("help"):
            lines += textwrap.wrap(
                f"{f.name}: {f.metadata['help']}", 112, initial_indent=" " * 8, subsequent_indent=" " * 12
            )
    lines.append("        (and every `transformers.TrainingArguments` field)")
    return "\n".join(lines) + "\n"


DistillationArguments.__doc__ = DistillationArguments.__doc__.rstrip() + "\n" + _args_section(DistillationArguments)
