"""On-policy (GKD) and sequence-level distillation: where a batch's completions come from, and sampling them.

With probability `lmbda` a training batch's completions are replaced by the student's own samples
(Generalized Knowledge Distillation, Agarwal et al. 2024); otherwise, with `seq_kd`, by the teacher's
samples (sequence-level KD, Kim & Rush 2016); otherwise the dataset's completions are kept. The new
batch has exactly the layout of a dataset batch (prompt, completion, right padding; see
`hf_distill.lm_data`), so teacher and student then score the same sampled tokens with the usual loss.

- Student samples are not ground truth: their `labels` are all -100, so the hard loss skips those
  batches and only the soft loss (the divergence on the sampled tokens) trains on them. Teacher
  samples keep their labels: the hard loss on them is Kim & Rush's sequence-level KD.
- Sampling runs without gradients, in eval mode (no dropout), under the training precision, with the
  model's current weights, and is reproducible: the coin flip and the sampling are seeded from
  (args.seed, global step, micro-batch), the coin identically on every process.
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch
from transformers import GenerationConfig

from .lm_data import PROMPT_ATTENTION_MASK, PROMPT_INPUT_IDS, is_packed, pack_padded
from .positions import COMPLETION_MASK, IGNORE_INDEX

logger = logging.getLogger(__name__)

STUDENT, TEACHER, DATA = "student", "teacher", "data"


def generation_config_from_args(args, eos_token_id: int | None, pad_token_id: int) -> GenerationConfig:
    """The sampling settings of `DistillationArguments` as a `GenerationConfig` (temperature 0 = greedy)."""
    greedy = args.generation_temperature == 0
    sampling = (
        {}
        if greedy
        else {
            "temperature": args.generation_temperature,
            "top_p": args.generation_top_p,
            "top_k": args.generation_top_k or None,
        }
    )
    return GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=not greedy,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **sampling,
    )


def _seed(*parts: int) -> int:
    """A 63-bit seed mixing several integers (numpy's SeedSequence: no collisions between nearby tuples)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def cut_completions(new_tokens: torch.Tensor, eos_token_id: int | None, pad_token_id: int) -> list[list[int]]:
    """(B, N) tokens generated after the prompts -> one list per row, up to and including its first eos.

    Rows that never produced eos keep all N tokens except trailing padding (pad == eos is handled:
    the first eos ends the row).
    """
    rows = []
    for row in new_tokens.tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
        elif pad_token_id != eos_token_id:
            while row and row[-1] == pad_token_id:
                row.pop()
        rows.append(row)
    return rows


def completion_lengths(new_tokens: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """(B, N) generated tokens -> (B,) tokens up to and including each row's first eos (N if it has none).

    `generate` pads only rows that have finished (after their eos), so nothing else needs trimming.
    """
    n = new_tokens.shape[1]
    if eos_token_id is None:
        return torch.full((new_tokens.shape[0],), n, dtype=torch.long, device=new_tokens.device)
    is_eos = new_tokens == eos_token_id  # (B, N)
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full_like(is_eos[:, 0], n, dtype=torch.long))
    return first.long()


@torch.no_grad()
def sample_completions(
    model,
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    generation_config: GenerationConfig,
    seed: int,
    autocast=contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one completion per left-padded prompt (B, P) with `model` in eval mode; the RNG state is restored.

    Returns the generated tokens (B, N) and each row's completion length (B,) (up to its first eos).
    """
    was_training = model.training
    model.eval()  # no dropout while sampling
    device = prompt_input_ids.device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast():
            torch.manual_seed(seed)
            out = model.generate(
                input_ids=prompt_input_ids, attention_mask=prompt_attention_mask, generation_config=generation_config
            )  # (B, P + N)
    finally:
        model.train(was_training)
    new_tokens = out[:, prompt_input_ids.shape[1] :]  # (B, N)
    return new_tokens, completion_lengths(new_tokens, generation_config.eos_token_id)


def with_completions(
    batch: dict, new_tokens: torch.Tensor, lengths: torch.Tensor, pad_token_id: int, train_on_labels: bool
) -> dict:
    """A copy of `batch` whose completions are the first `lengths[b]` of `new_tokens[b]`, in dataset layout.

    Row b becomes prompt + completion + right padding, exactly as `PromptCompletionCollator` lays out a
    dataset example, built with one gather on the device (no per-row Python work). With
    `train_on_labels=False` every label is -100 (the hard loss skips the batch) while `completion_mask`
    still marks the sampled tokens for the soft loss.
    """
    prompts, prompt_mask = batch[PROMPT_INPUT_IDS], batch[PROMPT_ATTENTION_MASK]  # (B, P) left-padded
    new_tokens, lengths = new_tokens.to(prompts.device), lengths.to(prompts.device)
    n_prompt = prompt_mask.sum(1)  # (B,)
    P = prompts.shape[1]
    total = n_prompt + lengths  # (B,)
    L = int(total.max())
    j = torch.arange(L, device=prompts.device)[None, :]  # (1, L) output positions
    in_prompt = j < n_prompt[:, None]  # (B, L)
    in_completion = ~in_prompt & (j < total[:, None])
    source = torch.cat([prompts, new_tokens], dim=1)  # (B, P + N)
    index = torch.where(in_prompt, P - n_prompt[:, None] + j, P + j - n_prompt[:, None])
    index = index.clamp(0, source.shape[1] - 1)
    input_ids = source.gather(1, index)  # (B, L)
    attention_mask = (in_prompt | in_completion).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, pad_token_id)
    completion_mask = in_completion.long()
    labels = input_ids.masked_fill(~in_completion if train_on_labels else torch.ones_like(in_prompt), IGNORE_INDEX)
    new = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        COMPLETION_MASK: completion_mask,
    }
    out = {**batch, **new}  # the prompts (and any column a custom collator adds) stay as they were
    return pack_padded(out) if is_packed(batch) else out  # a packed batch stays packed (lm_data.pack_padded)


class CompletionSampler:
    """Per micro-batch: decide where the completions come from (student / teacher / data) and sample them.

    Keeps the counts the trainer logs: the fraction of on-policy batches, the mean generated length
    and the time spent generating (also as a share of the wall time since the last log).
    """

    def __init__(self, args, eos_token_id: int | None, pad_token_id: int):
        if args.lmbda > 0 or args.seq_kd:
            if pad_token_id is None:
                raise ValueError(
                    "on-policy / sequence-level distillation generates completions and needs a pad token id: pass "
                    "the tokenizer as processing_class (with tokenizer.pad_token set, e.g. to the eos token)."
                )
            if eos_token_id is None:
                logger.warning(
                    "no eos token is known: every sampled completion runs to max_new_tokens=%d.", args.max_new_tokens
                )
        self.lmbda, self.seq_kd, self.seed = args.lmbda, args.seq_kd, args.seed
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.generation_config = generation_config_from_args(args, eos_token_id, pad_token_id or 0)
        self._reset()

    @property
    def active(self) -> bool:
        return self.lmbda > 0 or self.seq_kd

    def _reset(self) -> None:
        self.batches, self.on_policy, self.generated_batches, self.generated_tokens, self.generated_rows = (
            0,
            0,
            0,
            0,
            0,
        )
        self.seconds = 0.0
        self._since = time.perf_counter()

    def source(self, step: int, micro: int) -> str:
        """'student' with probability lmbda, else 'teacher' when seq_kd, else 'data'; the same on every process."""
        if self.lmbda > 0:
            coin = torch.Generator().manual_seed(_seed(self.seed, step, micro, 0))
            if torch.rand((), generator=coin).item() < self.lmbda:
                return STUDENT
        return TEACHER if self.seq_kd else DATA

    def __call__(
        self,
        batch: dict,
        student,
        teacher,
        step: int,
        micro: int,
        process_index: int = 0,
        autocast=contextlib.nullcontext,
    ) -> dict:
        """The batch to train on for micro-batch `micro` of optimizer step `step`."""
        source = self.source(step, micro)
        self.batches += 1
        if source == DATA:
            return batch
        if PROMPT_INPUT_IDS not in batch:
            raise ValueError(
                "lmbda > 0 or seq_kd needs prompts to sample from, but the batch has no 'prompt_input_ids': build "
                "the data with hf_distill.lm_data (tokenize_prompt_completion + PromptCompletionCollator)."
            )
        model = student if source == STUDENT else teacher
        device = next(model.parameters()).device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        # Processes see different prompts; their sampling streams differ too, while the coin above does not.
        new_tokens, lengths = sample_completions(
            model,
            batch[PROMPT_INPUT_IDS],
            batch[PROMPT_ATTENTION_MASK],
            self.generation_config,
            _seed(self.seed, step, micro, 1 + process_index),
            autocast,
        )
        self.generated_tokens += int(lengths.sum())  # synchronises: the generation time below is complete
        self.seconds += time.perf_counter() - start
        self.on_policy += source == STUDENT
        self.generated_batches += 1
        self.generated_rows += len(lengths)
        return with_completions(batch, new_tokens, lengths, self.pad_token_id, train_on_labels=source == TEACHER)

    def pop_logs(self) -> dict[str, float]:
        """The counts since the last call, as log entries; then start counting again."""
        if not self.active or self.batches == 0:
            return {}
        elapsed = max(time.perf_counter() - self._since, 1e-9)
        logs = {
            "on_policy_fraction": self.on_policy / self.batches,
            "generation_seconds": self.seconds,
            "generation_time_share": min(self.seconds / elapsed, 1.0),
        }
        if self.generated_rows:
            logs["generated_length"] = self.generated_tokens / self.generated_rows
        self._reset()
        return logs


def sampled_batches(sampler: CompletionSampler, epoch_iterator, student, teacher, step: int, accelerator):
    """The micro-batches of optimizer step `step`, each with its completions from the student (prob. lmbda), the
    teacher (seq_kd) or the data, decided by a coin seeded from (seed, step, micro-batch) on every process."""
    for micro, batch in enumerate(epoch_iterator):
        yield sampler(batch, student, teacher, step, micro, accelerator.process_index, accelerator.autocast)


def special_token_ids(processing_class, model) -> tuple[int | None, int | None]:
    """(eos, pad) token ids for generation: the tokenizer's, else the model's generation config / config.

    The end token follows `lm_data.end_token_id` (eos, or [SEP] for BERT-style tokenizers), so that
    sampled completions stop where the dataset's completions end; pad falls back to eos.
    """
    from .lm_data import end_token_id

    eos = end_token_id(processing_class) if processing_class is not None else None
    pad = getattr(processing_class, "pad_token_id", None) if processing_class is not None else None
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = eos if eos is not None else getattr(source, "eos_token_id", None)
        pad = pad if pad is not None else getattr(source, "pad_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return eos, pad if pad is not None else eos


def check_generation_setup(args, student, teachers: list, cached: bool) -> None:
    """lmbda > 0 / seq_kd need a causal LM that can generate (and a live teacher for seq_kd)."""
    if not (args.lmbda > 0 or args.seq_kd):
        return
    if cached:
        raise ValueError(
            "lmbda > 0 / seq_kd score freshly sampled completions, which cached teacher outputs cannot cover; "
            "train with a live teacher_model (drop the cached columns) or set lmbda=0 and seq_kd=False."
        )
    for name, model in (("the student", student), *(("the teacher", t) for t in teachers[:1] if args.seq_kd)):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
        if not (hasattr(base, "can_generate") and base.can_generate()):
            raise ValueError(
                f"lmbda > 0 / seq_kd sample completions with {name}, which cannot generate "
                f"({type(model).__name__}); use causal LMs (AutoModelForCausalLM) or set lmbda=0 and seq_kd=False."
            )
    if len(teachers) > 1 and args.seq_kd:
        logger.info("seq_kd with %d teachers: completions are sampled from the first teacher.", len(teachers))
