"""On-policy (GKD) and sequence-level distillation: where a batch's completions come from, and sampling them.

With probability `lmbda` a training batch's completions are replaced by the student's own samples
(Generalized Knowledge Distillation, Agarwal et al. 2024); otherwise, with `seq_kd`, by the teacher's
samples (sequence-level KD, Kim & Rush 2016); otherwise the dataset's completions are kept. The new
batch has exactly the layout of a dataset batch (prompt, completion, right padding; see
`hf_distill.lm_data`), so teacher and student then score the same sampled tokens with the usual loss.

- Student samples are not ground truth: their `labels` are all -100, so the hard loss skips those
  batches and only the soft loss (the divergence on the sampled tokens) trains on them. Teacher
  samples keep their labels: the hard loss on them is Kim & Rush's sequence-level KD.
- Every sampled batch says where its completions come from (`batch[COMPLETIONS_FROM]`, "student" or
  "teacher"; `completions_from(batch)`); the trainer reads that, not the -100 labels, to skip the hard
  loss of student samples and to pick `on_policy_divergence` for them.
- The on-policy probability follows a schedule (`lmbda_at`): 0 before `lmbda_start_step` (a warm start on
  the dataset's completions), then a linear ramp over `lmbda_warmup_steps` up to `lmbda`.
- Sampling runs without gradients, in eval mode (no dropout), under the training precision, with the
  model's current weights and its KV cache on, and is reproducible: the coin flip is seeded from
  (args.seed, global step, micro-batch), identically on every process; the samples from (seed, step, process).
- By default the sampled micro-batches of one optimizer step are generated in ONE generate call (their
  prompts re-padded to a common width) and split afterwards (`CompletionSampler.sample_step`); decoding
  stops as soon as every row has produced its end token.
- Under DeepSpeed ZeRO-3 or FSDP the parameters are gathered layer by layer inside each forward, so all
  processes decode in lockstep (`synced_gpus`) until the last one has finished.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CompileConfig, GenerationConfig
from transformers.generation import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .lm_data import PROMPT_ATTENTION_MASK, PROMPT_INPUT_IDS, is_packed, pack_padded
from .modeling import eval_mode
from .positions import COMPLETION_MASK, IGNORE_INDEX

logger = logging.getLogger(__name__)

STUDENT, TEACHER, DATA = "student", "teacher", "data"
# The batch field saying who sampled its completions ("student" / "teacher"); absent = the dataset's.
COMPLETIONS_FROM = "completions_from"


def completions_from(batch: dict) -> str:
    """Where a batch's completions come from: "student" (on-policy), "teacher" (seq_kd) or "data"."""
    return batch.get(COMPLETIONS_FROM, DATA)


def lmbda_at(args, step: int) -> float:
    """The probability that a micro-batch of optimizer step `step` (0-based) is sampled from the student.

    0 before `args.lmbda_start_step`; then `lmbda * min(1, (step - start) / lmbda_warmup_steps)` (the full lmbda
    at once without warm-up), so a warm-up of w steps reaches lmbda at step start + w.

    Args:
        args: `DistillationArguments` (lmbda, lmbda_start_step, lmbda_warmup_steps).
        step: the optimizer step (the Trainer's global_step before the update).
    """
    since = step - args.lmbda_start_step
    if args.lmbda <= 0 or since < 0:
        return 0.0
    if args.lmbda_warmup_steps <= 0:
        return float(args.lmbda)
    return float(args.lmbda) * min(1.0, since / args.lmbda_warmup_steps)


def generation_config_from_args(args, eos_token_id: int | None, pad_token_id: int) -> GenerationConfig:
    """The sampling settings of `DistillationArguments` as a `GenerationConfig` (temperature 0 = greedy).

    The KV cache is always on (`use_cache=True`, whatever the model config says, e.g. after gradient
    checkpointing turned it off); `generation_cache='static'` preallocates it, and `generation_compile`
    compiles the decoding step on any device (transformers otherwise compiles a static cache on GPUs only).
    """
    greedy = args.generation_temperature == 0
    sampling = (
        {}
        if greedy
        else {
            "temperature": args.generation_temperature,
            "top_p": args.generation_top_p,
            # 0, not None: an unset top_k falls back to transformers' default of 50, which would truncate the
            # student's distribution (on-policy distillation samples from all of it).
            "top_k": args.generation_top_k,
        }
    )
    cache = args.generation_cache
    compiled = {}
    if cache == "static":
        if args.generation_compile:
            compile_config = CompileConfig(fullgraph=False, dynamic=False, mode="default")
            compile_config._compile_all_devices = True  # transformers' own switch for CPUs
            compiled = {"compile_config": compile_config}
        else:
            compiled = {"disable_compile": True}  # no silent compilation on GPUs either
    return GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=not greedy,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
        cache_implementation="static" if cache == "static" else None,
        **compiled,
        **sampling,
    )


def with_kv_cache(generation_config: GenerationConfig) -> GenerationConfig:
    """A copy of `generation_config` whose `use_cache=True` is set explicitly (unless the caller set it False).

    `generate` takes a field the caller left unset (None) from the model's own generation config, and a model
    trained with gradient checkpointing, or cut from a teacher whose config says `use_cache=False`, has
    `use_cache=False` there: every decoding step would then re-run the whole sequence. Set explicitly, the KV
    cache is kept whatever the model's config says.

    Args:
        generation_config: the caller's generation config (not modified).
    """
    if generation_config.use_cache is False:
        return generation_config
    config = copy.deepcopy(generation_config)
    config.use_cache = True  # an explicit assignment, which generate does not override
    return config


class InverseCDFSampler(LogitsProcessor):
    """Draws each row's next token from softmax(scores) by inverse-CDF sampling; returns scores whose argmax is it.

    One uniform number per row instead of `torch.multinomial`'s one exponential number per vocabulary entry
    (on CPUs most of the decoding time for a 30k vocabulary). Greedy decoding over these scores therefore
    samples from exactly the distribution that `do_sample=True` would (cumulative sums in float64).
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float(), dim=-1)  # (B, V)
        cdf = probs.cumsum(-1, dtype=torch.float64)  # (B, V)
        u = torch.rand((scores.shape[0], 1), dtype=torch.float64, device=scores.device) * cdf[:, -1:]  # (B, 1)
        token = torch.searchsorted(cdf, u, right=True).clamp_max(scores.shape[-1] - 1)  # (B, 1): first cdf > u
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


def inverse_cdf_decoding(generation_config: GenerationConfig) -> tuple[GenerationConfig, LogitsProcessorList | None]:
    """A sampling `generation_config` as greedy decoding plus processors that sample the same distribution.

    The processors are transformers' own temperature / top-k / top-p warpers (in `generate`'s order) followed by
    `InverseCDFSampler`. Greedy configurations are returned unchanged (no processors).

    Args:
        generation_config: e.g. from `generation_config_from_args`.
    """
    if not generation_config.do_sample:
        return generation_config, None
    config = copy.deepcopy(generation_config)
    processors = LogitsProcessorList()
    if config.temperature is not None and config.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k:
        processors.append(TopKLogitsWarper(config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        processors.append(TopPLogitsWarper(config.top_p))
    processors.append(InverseCDFSampler())
    config.do_sample, config.temperature, config.top_k, config.top_p = False, None, None, None
    return config, processors


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


def synced_generation(model) -> bool:
    """Whether `model` must decode in lockstep with the other processes (`generate(synced_gpus=True)`).

    True with several processes when its parameters are sharded: DeepSpeed ZeRO-3 (partitioned parameters
    carry `ds_id`) or FSDP (FSDP2 `fully_shard` modules, FSDP1 wrappers). Each forward then gathers the
    parameters of every layer from all processes, so a process that has finished must keep stepping (on
    dummy tokens) until every process has: `generate` does that with `synced_gpus=True`.

    Args:
        model: the model that is about to generate (unwrapped from DDP / a DeepSpeed engine).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if torch.distributed.get_world_size() < 2:
        return False
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    if any(hasattr(p, "ds_id") for p in model.parameters()):  # DeepSpeed ZeRO-3
        return True
    return any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules())


@torch.no_grad()
def sample_completions(
    model,
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    generation_config: GenerationConfig,
    seed: int,
    autocast=contextlib.nullcontext,
    synced_gpus: bool | None = None,
    sampler: str = "multinomial",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one completion per left-padded prompt (B, P) with `model` in eval mode; the RNG state is restored.

    Args:
        model: a causal LM (PEFT models sample with their adapter).
        prompt_input_ids: (B, P) left-padded prompts; prompt_attention_mask (B, P) marks their real tokens.
        generation_config: e.g. `generation_config_from_args(...)`; decoding stops when every row has ended.
        seed: seeds the sampling (the global RNG is left as it was).
        autocast: a context manager factory for the training precision.
        synced_gpus: decode in lockstep with the other processes; None = `synced_generation(model)`.
        sampler: how tokens are drawn: "multinomial" (transformers' `do_sample`) or "inverse_cdf" (the same
            distribution, `inverse_cdf_decoding`; faster on CPUs).

    Returns the generated tokens (B, N) and each row's completion length (B,) (up to its first eos).
    """
    device = prompt_input_ids.device
    synced = synced_generation(model) if synced_gpus is None else synced_gpus
    generation_config, processors = _decoding(generation_config, sampler)
    # eval mode: no dropout while sampling (and no gradient-checkpointing switch-off of the cache)
    with eval_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast():
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=prompt_input_ids,
            attention_mask=prompt_attention_mask,
            generation_config=generation_config,
            logits_processor=processors,
            synced_gpus=synced,
        )  # (B, P + N)
    new_tokens = out[:, prompt_input_ids.shape[1] :]  # (B, N)
    return new_tokens, completion_lengths(new_tokens, generation_config.eos_token_id)


def _decoding(
    generation_config: GenerationConfig, sampler: str
) -> tuple[GenerationConfig, LogitsProcessorList | None]:
    """The configuration and logits processors that `sample_completions` decodes with for `sampler`."""
    if sampler == "inverse_cdf":
        return inverse_cdf_decoding(generation_config)
    if sampler != "multinomial":
        raise ValueError(f"sampler must be 'multinomial' or 'inverse_cdf', got {sampler!r}.")
    return generation_config, None


def with_completions(
    batch: dict,
    new_tokens: torch.Tensor,
    lengths: torch.Tensor,
    pad_token_id: int,
    train_on_labels: bool,
    source: str | None = None,
) -> dict:
    """A copy of `batch` whose completions are the first `lengths[b]` of `new_tokens[b]`, in dataset layout.

    Row b becomes prompt + completion + right padding, exactly as `PromptCompletionCollator` lays out a
    dataset example, built with one gather on the device (no per-row Python work). With
    `train_on_labels=False` every label is -100 (the hard loss skips the batch) while `completion_mask`
    still marks the sampled tokens for the soft loss.

    Args:
        batch: a `PromptCompletionCollator` batch (left-padded `prompt_input_ids` / `prompt_attention_mask`).
        new_tokens: (B, N) generated tokens; lengths (B,) how many of them form each completion.
        pad_token_id: fills the right padding.
        train_on_labels: keep the sampled tokens as labels (teacher samples) or not (student samples).
        source: recorded as `batch[COMPLETIONS_FROM]`; unset = "teacher" with labels, else "student".
    """
    prompts, prompt_mask = batch[PROMPT_INPUT_IDS], batch[PROMPT_ATTENTION_MASK]  # (B, P) left-padded
    new_tokens, lengths = new_tokens.to(prompts.device), lengths.to(prompts.device)
    input_ids, in_prompt, in_completion = _prompt_then_completion(prompts, prompt_mask, new_tokens, lengths)
    attention_mask = (in_prompt | in_completion).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, pad_token_id)
    completion_mask = in_completion.long()
    labels = input_ids.masked_fill(~in_completion if train_on_labels else torch.ones_like(in_prompt), IGNORE_INDEX)
    new = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        COMPLETION_MASK: completion_mask,
        COMPLETIONS_FROM: source or (TEACHER if train_on_labels else STUDENT),
    }
    out = {**batch, **new}  # the prompts (and any column a custom collator adds) stay as they were
    return pack_padded(out) if is_packed(batch) else out  # a packed batch stays packed (lm_data.pack_padded)


def _prompt_then_completion(
    prompts: torch.Tensor, prompt_mask: torch.Tensor, new_tokens: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's real prompt tokens, then the first `lengths[b]` of `new_tokens[b]`, moved left in one gather.

    Returns (input_ids, in_prompt, in_completion), each (B, L) with L the longest prompt + completion; the
    positions after a row's completion hold arbitrary tokens (the caller pads them).
    """
    n_prompt = prompt_mask.sum(1)  # (B,)
    P = prompts.shape[1]
    total = n_prompt + lengths  # (B,)
    L = int(total.max())
    j = torch.arange(L, device=prompts.device)[None, :]  # (1, L) output positions
    in_prompt = j < n_prompt[:, None]  # (B, L)
    in_completion = ~in_prompt & (j < total[:, None])
    source_ids = torch.cat([prompts, new_tokens], dim=1)  # (B, P + N)
    index = torch.where(in_prompt, P - n_prompt[:, None] + j, P + j - n_prompt[:, None])
    index = index.clamp(0, source_ids.shape[1] - 1)
    return source_ids.gather(1, index), in_prompt, in_completion  # (B, L) each


def stack_prompts(batches: list[dict], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The left-padded prompts of several micro-batches as one generation batch.

    Args:
        batches: collated micro-batches with `prompt_input_ids` / `prompt_attention_mask` (B_i, P_i) each.
        pad_token_id: fills the extra left padding up to the widest prompt.

    Returns (sum B_i, max P_i) ids and mask, and the row count B_i of each micro-batch (to split the samples).
    """
    width = max(b[PROMPT_INPUT_IDS].shape[1] for b in batches)
    ids = [F.pad(b[PROMPT_INPUT_IDS], (width - b[PROMPT_INPUT_IDS].shape[1], 0), value=pad_token_id) for b in batches]
    masks = [F.pad(b[PROMPT_ATTENTION_MASK], (width - b[PROMPT_ATTENTION_MASK].shape[1], 0), value=0) for b in batches]
    return torch.cat(ids), torch.cat(masks), [b[PROMPT_INPUT_IDS].shape[0] for b in batches]


class CompletionSampler:
    """Per micro-batch: decide where the completions come from (student / teacher / data) and sample them.

    Keeps the counts the trainer logs: the fraction of on-policy batches, the mean generated length, the
    time spent generating (also as a share of the wall time since the last log) and the tokens generated
    per second.
    """

    def __init__(self, args, eos_token_id: int | None, pad_token_id: int):
        active = args.samples_completions
        if active:
            if pad_token_id is None:
                raise ValueError(
                    "on-policy / sequence-level distillation generates completions and needs a pad token id: pass "
                    "the tokenizer as processing_class (with tokenizer.pad_token set, e.g. to the eos token)."
                )
            if eos_token_id is None:
                logger.warning(
                    "no eos token is known: every sampled completion runs to max_new_tokens=%d.", args.max_new_tokens
                )
        self.args, self.active = args, active
        self.lmbda, self.seq_kd, self.seed = args.lmbda, args.seq_kd, args.seed
        self.per_step = args.generation_per_step
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.generation_config = generation_config_from_args(args, eos_token_id, pad_token_id or 0)
        self._reset()

    def _reset(self) -> None:
        self.batches = self.on_policy = self.generated_batches = self.generated_tokens = self.generated_rows = 0
        self.generate_calls = 0
        self.seconds = 0.0
        self._since = time.perf_counter()

    def lmbda_at(self, step: int) -> float:
        """The on-policy probability at optimizer step `step` (see `lmbda_at`)."""
        return lmbda_at(self.args, step)

    def source(self, step: int, micro: int) -> str:
        """'student' with probability lmbda_at(step), else 'teacher' when seq_kd, else 'data'; the same on every
        process (the coin is seeded from (seed, step, micro) and drawn even while the probability is 0)."""
        if self.lmbda > 0:
            coin = torch.Generator().manual_seed(_seed(self.seed, step, micro, 0))
            if torch.rand((), generator=coin).item() < self.lmbda_at(step):
                return STUDENT
        return TEACHER if self.seq_kd else DATA

    def _generate(self, model, prompts, mask, seed, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        if prompts.device.type == "cuda":
            torch.cuda.synchronize(prompts.device)
        start = time.perf_counter()
        new_tokens, lengths = sample_completions(
            model, prompts, mask, self.generation_config, seed, autocast, sampler=self.args.generation_sampler
        )
        self.generated_tokens += int(lengths.sum())  # synchronises: the generation time below is complete
        self.seconds += time.perf_counter() - start
        self.generate_calls += 1
        self.generated_rows += len(lengths)
        return new_tokens, lengths

    @staticmethod
    def _check_prompts(batch: dict) -> None:
        if PROMPT_INPUT_IDS not in batch:
            raise ValueError(
                "lmbda > 0 or seq_kd needs prompts to sample from, but the batch has no 'prompt_input_ids': build "
                "the data with hf_distill.lm_data (tokenize_prompt_completion + PromptCompletionCollator)."
            )

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
        """The batch to train on for micro-batch `micro` of optimizer step `step` (one generate call per batch)."""
        source = self.source(step, micro)
        self.batches += 1
        if source == DATA:
            return batch
        self._check_prompts(batch)
        model = student if source == STUDENT else teacher
        device = next(model.parameters()).device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        # Processes see different prompts; their sampling streams differ too, while the coin above does not.
        new_tokens, lengths = self._generate(
            model,
            batch[PROMPT_INPUT_IDS],
            batch[PROMPT_ATTENTION_MASK],
            _seed(self.seed, step, micro, 1 + process_index),
            autocast,
        )
        self.on_policy += source == STUDENT
        self.generated_batches += 1
        return with_completions(batch, new_tokens, lengths, self.pad_token_id, source == TEACHER, source)

    def sample_step(
        self,
        batches: list[dict],
        student,
        teacher,
        step: int,
        process_index: int = 0,
        autocast=contextlib.nullcontext,
    ) -> list[dict]:
        """The micro-batches of optimizer step `step`, those the coin sends to a model with sampled completions.

        All micro-batches that one model samples are generated in one call (their prompts stacked, see
        `stack_prompts`) and split afterwards; `generation_per_step=False` calls `__call__` per micro-batch.

        Args:
            batches: the step's collated micro-batches, in order (micro-batch m is `batches[m]`).
            student, teacher: the models that sample (unwrapped from DDP; sharded ones decode in lockstep).
            step: the optimizer step (seeds the coins and the sampling).
            process_index: this process (its sampling stream differs from the others').
            autocast: a context manager factory for the training precision.
        """
        if not self.per_step:
            return [self(b, student, teacher, step, m, process_index, autocast) for m, b in enumerate(batches)]
        sources = [self.source(step, m) for m in range(len(batches))]
        self.batches += len(batches)
        out = list(batches)
        for code, (source, model) in enumerate(((STUDENT, student), (TEACHER, teacher))):
            chosen = [m for m, s in enumerate(sources) if s == source]
            if not chosen:
                continue
            for m in chosen:
                self._check_prompts(batches[m])
            device = next(model.parameters()).device
            moved = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in batches[m].items()} for m in chosen]
            prompts, mask, rows = stack_prompts(moved, self.pad_token_id)  # (R, P), R = sum of the batch sizes
            seed = _seed(self.seed, step, 1 + process_index, code, 1 << 20)  # never a per-micro-batch seed
            new_tokens, lengths = self._generate(model, prompts, mask, seed, autocast)  # (R, N), (R,)
            for m, batch, tokens, n in zip(chosen, moved, new_tokens.split(rows), lengths.split(rows)):
                out[m] = with_completions(batch, tokens, n, self.pad_token_id, source == TEACHER, source)
            self.on_policy += len(chosen) if source == STUDENT else 0
            self.generated_batches += len(chosen)
        return out

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
            logs["generated_tokens_per_second"] = self.generated_tokens / max(self.seconds, 1e-9)
        self._reset()
        return logs


def sampled_batches(sampler: CompletionSampler, epoch_iterator, student, teacher, step: int, accelerator):
    """The micro-batches of optimizer step `step`, each with its completions from the student (prob. lmbda), the
    teacher (seq_kd) or the data, decided by a coin seeded from (seed, step, micro-batch) on every process.

    One micro-batch at a time (the path of `generation_per_step=False`); the trainer uses `sample_step`.
    """
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
