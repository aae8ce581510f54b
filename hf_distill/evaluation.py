"""Generation-quality evaluation of causal LMs on prompt/completion data: ROUGE-L, teacher NLL, exact match, length.

`evaluate_generation(model, dataset, tokenizer, generation_config, teacher=...)` generates one completion per
prompt (batched, left-padded, seeded per batch) and scores it:

    rougeL            mean ROUGE-L F1 (the `rouge-score` package) of each completion against its reference
    teacher_nll       the teacher's mean per-token negative log-likelihood of the model's completions (the end
                      token included): how well the model's own text fits the teacher, what on-policy
                      distillation optimises; `teacher_nll_floor` is the same for the teacher's own samples
    exact_match       share of completions judged right, when the dataset has an `answer` column or an
                      `answer_checker` is given
    generated_length  mean tokens per completion (up to and including the end token)
    distinct_2        distinct bigrams / all bigrams of completion tokens (end token excluded) over all completions
                      (Li et al. 2016); low = repetitive

Under DDP (torchrun / accelerate) each process generates whole batches (batch k on process k mod world size)
and the per-example records are gathered, so the numbers equal a one-process run: batch k is the same rows
with the same seed wherever it runs. With a sharded model or teacher (DeepSpeed ZeRO-3, FSDP), whose every forward
gathers parameters from all processes, every process runs every batch in lockstep (`synced_gpus`) instead.
`GenerationEvalCallback` runs it during training and logs `eval_<metric>`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from transformers import TrainerCallback

from .generation import _seed, cut_completions, synced_generation, with_kv_cache
from .lm_data import IGNORE_INDEX, end_token_id, pad_prompt_completion, prompt_length, tokenize_prompt_completion
from .modeling import eval_mode

logger = logging.getLogger(__name__)

ANSWER_COLUMN = "answer"


def normalised(text: str) -> str:
    """Text with runs of whitespace collapsed to one space and the ends stripped (the default exact-match form)."""
    return " ".join(str(text).split())


def default_answer_checker(prediction: str, example: dict) -> bool:
    """True when the completion equals the example's `answer`, whitespace normalised."""
    return normalised(prediction) == normalised(example[ANSWER_COLUMN])


def distinct_n(sequences: list[list[int]], n: int = 2) -> float:
    """Distinct n-grams / all n-grams over every sequence (corpus level); 0.0 when there is no n-gram."""
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _rows(dataset, tokenizer, max_length: int | None) -> list[dict]:
    """{"input_ids", "labels"} rows: the dataset's own when tokenised, else `tokenize_prompt_completion`'s."""
    columns = getattr(dataset, "column_names", None) or list(dataset[0])
    if "input_ids" in columns and "labels" in columns:
        return [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in dataset]
    if max_length is None:
        raise ValueError(
            "the dataset holds text (prompt / completion or messages): give max_length (tokens per "
            "example) to tokenise it, or pass rows already tokenised with tokenize_prompt_completion."
        )
    from datasets import Dataset

    if not hasattr(dataset, "map"):
        dataset = Dataset.from_list(list(dataset))
    return [
        {"input_ids": r["input_ids"], "labels": r["labels"]}
        for r in tokenize_prompt_completion(dataset, tokenizer, max_length)
    ]


def _left_pad(prompts: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # (B, P)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


@torch.no_grad()
def _generate(model, prompts: list[list[int]], generation_config, seed: int, pad: int, eos) -> list[list[int]]:
    device = next(model.parameters()).device
    ids, mask = _left_pad(prompts, pad, device)
    synced = {"synced_gpus": True} if synced_generation(model) else {}  # sharded: decode in lockstep
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids, attention_mask=mask, generation_config=with_kv_cache(generation_config), **synced
        )  # (B, P + N)
    return cut_completions(out[:, ids.shape[1] :], eos, pad)


@torch.no_grad()
def _nll(teacher, prompts: list[list[int]], completions: list[list[int]], pad: int) -> list[tuple[float, int]]:
    """(sum of the teacher's next-token NLLs over each completion, its token count) per row."""
    from .lm_data import completion_nll

    keep = [i for i, c in enumerate(completions) if c]
    result = [(0.0, 0)] * len(completions)
    if not keep:
        return result
    device = next(teacher.parameters()).device
    batch = pad_prompt_completion([prompts[i] for i in keep], [completions[i] for i in keep], pad)
    batch = {k: v.to(device) for k, v in batch.items()}
    total, count = completion_nll(teacher, batch, chunk_size=None)  # (B,), (B,)
    for j, i in enumerate(keep):
        result[i] = (float(total[j]), int(count[j]))
    return result


def _gather(records: list[dict], everywhere: bool = False) -> list[dict]:
    """Every process's records, in dataset order (one process, or `everywhere`: unchanged)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    if PartialState().num_processes > 1 and not everywhere:
        records = gather_object(records)
    return sorted(records, key=lambda r: r["index"])


def _shard(n: int, batch_size: int, everywhere: bool = False) -> list[tuple[int, list[int]]]:
    """(batch number, example indices) of the batches this process generates: batch k on process k mod world, or
    every batch on every process (`everywhere`)."""
    from accelerate import PartialState

    state = PartialState()
    batches = [(k, list(range(s, min(s + batch_size, n)))) for k, s in enumerate(range(0, n, batch_size))]
    return batches if everywhere else batches[state.process_index :: state.num_processes]


def evaluate_generation(
    model,
    dataset,
    tokenizer,
    generation_config,
    teacher=None,
    *,
    batch_size: int = 16,
    seed: int = 0,
    max_length: int | None = None,
    answer_checker: Callable[[str, dict], bool] | None = None,
    teacher_floor: bool = True,
    return_samples: int = 0,
) -> dict:
    """Generate a completion for every prompt of `dataset` with `model` and score it (see the module docstring).

    Args:
        model: a causal LM (`generate`-capable; the bare model, not a DDP wrapper). Its train/eval mode is restored.
        dataset: a `datasets.Dataset` (or list of dicts) with either text columns `prompt` / `completion` (or
            chat `messages`), tokenised with `tokenize_prompt_completion(..., max_length)`, or rows already
            tokenised into `input_ids` / `labels` (prompt = the tokens before the first label that is not -100,
            reference = the labelled tokens). An `answer` column turns on exact match.
        tokenizer: decodes completions and references (special tokens skipped); its pad token (else eos) pads.
        generation_config: a `transformers.GenerationConfig` (greedy or sampling, `max_new_tokens`, eos).
            Its `eos_token_id` (default: the tokenizer's end token) ends a completion.
        teacher: a causal LM with the same vocabulary; gives `teacher_nll` and, with `teacher_floor`,
            `teacher_nll_floor` (the teacher's NLL of its own samples under the same config and seeds).
        batch_size: prompts generated together (left padding).
        seed: batch k samples with a seed mixed from (seed, k): results do not depend on the number of processes.
        max_length: tokens per example when the dataset holds text.
        answer_checker: `f(completion_text, example) -> bool`; default with an `answer` column: equality after
            whitespace normalisation.
        teacher_floor: also generate with the teacher for `teacher_nll_floor` (skipped when model is teacher: then
            `teacher_nll` is the floor).
        return_samples: put the first N (prompt, reference, completion) texts under "samples".

    Returns:
        {"rougeL", "generated_length", "distinct_2", "examples"} plus "teacher_nll" / "teacher_nll_floor" with a
        teacher and "exact_match" with an answer column or checker; every process gets the same dict.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if len(dataset) == 0:
        raise ValueError("the evaluation dataset is empty: give it at least one prompt.")
    rows = _rows(dataset, tokenizer, max_length)
    answer_checker, examples = _answers(dataset, len(rows), answer_checker)
    pad, eos = _pad_and_eos(tokenizer, generation_config)
    scorers = {"model": model}
    if teacher is not None and teacher_floor and teacher is not model:
        scorers["teacher"] = teacher
    models = list({id(x): x for x in [model, teacher] if x is not None}.values())
    # Sharded models (ZeRO-3, FSDP) gather their layers from every process in each forward: every process then
    # runs every batch, the same forwards in the same order (and decodes in lockstep), and keeps all the records.
    everywhere = any(synced_generation(m) for m in models)
    with eval_mode(*models):
        records = _records(
            scorers,
            teacher,
            rows,
            examples,
            tokenizer,
            generation_config,
            batch_size,
            seed,
            pad,
            eos,
            answer_checker,
            everywhere,
        )
    return _summary(_gather(records, everywhere), teacher is not None, answer_checker is not None, return_samples)


def _answers(dataset, n: int, answer_checker):
    """(the answer checker, the first `n` examples as dicts to check against), or (None, None) without answers.

    The default checker (`default_answer_checker`) applies when the dataset has an `answer` column.
    """
    columns = getattr(dataset, "column_names", None) or list(dataset[0])
    if answer_checker is None and ANSWER_COLUMN in columns:
        answer_checker = default_answer_checker
    if answer_checker is None:
        return None, None
    return answer_checker, [dict(dataset[i]) for i in range(n)]


def _pad_and_eos(tokenizer, generation_config) -> tuple[int, int]:
    """The pad token (the tokenizer's, else its end token) and the token that ends a completion (the config's
    first `eos_token_id`, else the tokenizer's end token)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_token_id(tokenizer)
    eos = generation_config.eos_token_id if generation_config.eos_token_id is not None else end_token_id(tokenizer)
    return pad, eos[0] if isinstance(eos, list) else eos


def _records(
    scorers, teacher, rows, examples, tokenizer, config, batch_size, seed, pad, eos, checker, everywhere=False
) -> list[dict]:
    """One record per example of this process's batches: texts, scores and the teacher's NLL sums."""
    from rouge_score import rouge_scorer

    rouge = rouge_scorer.RougeScorer(["rougeL"])
    records = []
    for k, index in _shard(len(rows), batch_size, everywhere):
        prompts = [r["input_ids"][: prompt_length(r["labels"])] for r in (rows[i] for i in index)]
        done = {name: _generate(m, prompts, config, _seed(seed, k), pad, eos) for name, m in scorers.items()}
        nll = {name: _nll(teacher, prompts, c, pad) for name, c in done.items()} if teacher is not None else {}
        for j, i in enumerate(index):
            reference = tokenizer.decode([t for t in rows[i]["labels"] if t != IGNORE_INDEX], skip_special_tokens=True)
            tokens = done["model"][j]
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            record = {
                "index": i,
                "tokens": tokens,
                "ended": bool(tokens) and tokens[-1] == eos,
                "text": text,
                "reference": reference,
                "prompt": tokenizer.decode(prompts[j], skip_special_tokens=True),
                "rougeL": rouge.score(reference, text)["rougeL"].fmeasure,
            }
            if teacher is not None:
                record["nll"] = nll["model"][j]
                floor = nll.get("teacher", nll["model"] if scorers["model"] is teacher else None)
                record["floor"] = floor[j] if floor is not None else None
            if checker is not None:
                record["correct"] = bool(checker(text, examples[i]))
            records.append(record)
    return records


def _summary(records: list[dict], with_teacher: bool, with_answers: bool, samples: int) -> dict:
    n = len(records)
    out = {
        "rougeL": sum(r["rougeL"] for r in records) / n,
        "generated_length": sum(len(r["tokens"]) for r in records) / n,
        "distinct_2": distinct_n([r["tokens"][:-1] if r["ended"] else r["tokens"] for r in records], 2),
        "examples": n,
    }
    if with_teacher:
        for key, name in (("nll", "teacher_nll"), ("floor", "teacher_nll_floor")):
            if records[0][key] is None:
                continue
            total, count = sum(r[key][0] for r in records), sum(r[key][1] for r in records)
            out[name] = total / count if count else math.nan
    if with_answers:
        out["exact_match"] = sum(r["correct"] for r in records) / n
    if samples:
        out["samples"] = [
            {"prompt": r["prompt"], "reference": r["reference"], "completion": r["text"]} for r in records[:samples]
        ]
    return out


class GenerationEvalCallback(TrainerCallback):
    """Runs `evaluate_generation` every `eval_steps` optimizer steps during training and logs it as eval metrics.

    Logged as `eval_<metric>` (e.g. `eval_rougeL`, `eval_teacher_nll`) through the trainer's `log`, so they reach
    `state.log_history` and every reporting integration. Every process must run it (DDP shards the prompts).

    Args:
        trainer: the `Trainer` whose model is evaluated (its unwrapped model) and whose `log` reports.
        dataset: the prompts to complete (see `evaluate_generation`); keep it small, it runs during training.
        tokenizer: as in `evaluate_generation`.
        generation_config: as in `evaluate_generation`.
        eval_steps: evaluate when the global step is a multiple of it (> 0).
        teacher: scores the completions (`teacher_nll`); the floor is not recomputed during training.
        **kwargs: passed on to `evaluate_generation` (batch_size, seed, max_length, answer_checker).
    """

    def __init__(self, trainer, dataset, tokenizer, generation_config, eval_steps: int, teacher=None, **kwargs):
        if eval_steps < 1:
            raise ValueError(
                f"eval_steps must be >= 1 (optimizer steps between generation evaluations), got {eval_steps}."
            )
        self.trainer, self.dataset, self.tokenizer = trainer, dataset, tokenizer
        self.generation_config, self.eval_steps = generation_config, eval_steps
        self.teacher, self.kwargs = teacher, kwargs

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.eval_steps:
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        model = getattr(model, "student", model)  # a ProjectedStudent wrapper generates with its student
        metrics = evaluate_generation(
            model,
            self.dataset,
            self.tokenizer,
            self.generation_config,
            teacher=self.teacher,
            teacher_floor=False,
            **self.kwargs,
        )
        self.trainer.log({f"eval_{k}": v for k, v in metrics.items() if k != "samples"})
