"""Causal-LM distillation on prompt/completion (or chat) data: off-policy, on-policy (GKD), sequence-level.

    accelerate launch recipes/distil_causal_lm.py recipes/configs/causal_lm_gkd.yaml           # on-policy, lmbda 0.5
    accelerate launch recipes/distil_causal_lm.py recipes/configs/causal_lm_offpolicy.yaml     # dataset completions
    accelerate launch recipes/distil_causal_lm.py recipes/configs/causal_lm_onpolicy_warmstart.yaml  # off, then on
    accelerate launch --config_file recipes/configs/accelerate_ddp.yaml recipes/distil_causal_lm.py CONFIG.yaml
    torchrun --nproc_per_node 2 recipes/distil_causal_lm.py CONFIG.yaml --lmbda 1.0 --output_dir out
    python recipes/distil_causal_lm.py --teacher_model_name_or_path Qwen/Qwen2.5-1.5B-Instruct \
        --student_model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name you/chat-data --lmbda 0.5 ...
    python recipes/distil_causal_lm.py --teacher_model_name_or_path meta-llama/Llama-3.2-3B-Instruct \
        --student_model_name_or_path HuggingFaceTB/SmolLM2-360M-Instruct --cross_tokenizer hybrid ...  # 2 tokenizers
    python recipes/distil_causal_lm.py --teacher_model_name_or_path code-expert,chat-expert \
        --teacher_id_column teacher_id --student_model_name_or_path ... --train_file routed.jsonl  # routed per row

Data: `prompt` + `completion` columns, or `messages` (chat, rendered with the tokenizer's chat template),
from local csv/json/jsonl/parquet files or a Hub dataset (`--prompt_column` etc. rename other columns).
Only completion tokens count in the losses. The student is `--student_model_name_or_path` or the
teacher cut to `--student_num_layers` layers; `--use_peft` trains a LoRA adapter on it instead.
`--lmbda p` samples a batch's completions from the student with probability p (GKD; the divergence
then defaults to the generalized JSD with beta 0.5), `--seq_kd` from the teacher. Several teachers
(comma-separated) form an ensemble, or with `--teacher_id_column` each row is scored by the teacher its
column names. A teacher with another tokenizer needs `--cross_tokenizer uld|hybrid` and a student given by
path (the data is tokenized with the student's tokenizer; `--teacher_tokenizer_name_or_path` where a
teacher folder lacks its tokenizer); see docs/cross_tokenizer.md. At the end teacher
and student are evaluated on the validation split by per-token cross-entropy and perplexity over the
completion tokens (logits chunk by chunk) and by the quality of their greedy completions of the first
`--final_generation_eval_samples` validation prompts (`hf_distill.evaluate_generation`: ROUGE-L, the
teacher's NLL of them, exact match with an `answer` column, length, distinct-2); a few generations of
each model go into the model card. `--compare_with_hard_baseline` also trains the same student on the
completion cross-entropy alone (same init, seed and steps) and the card shows what distillation bought
on every metric; `--generation_eval_steps N` logs the student's generation metrics every N steps
(eval_rougeL, eval_teacher_nll, ...) on `--generation_eval_samples` validation prompts.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, set_seed
from transformers.trainer_pt_utils import get_model_param_count

from hf_distill import DistillationArguments, DistillationTrainer, PromptCompletionCollator, tokenize_prompt_completion
from hf_distill.checks import requested_sharding
from hf_distill.evaluation import ANSWER_COLUMN, GenerationEvalCallback, evaluate_generation
from hf_distill.generation import synced_generation, with_kv_cache
from hf_distill.lm_data import PROMPT_ATTENTION_MASK, PROMPT_INPUT_IDS, completion_nll, end_token_id, prompt_length
from hf_distill.positions import IGNORE_INDEX
from hf_distill.recipes import data as rd
from hf_distill.recipes.arguments import DataSourceArguments, LoraArguments, lora_config
from hf_distill.recipes.evaluation import Comparison
from hf_distill.recipes.models import build_student, check_student_tokenizer
from hf_distill.recipes.output import save_final_model
from hf_distill.recipes.run import start_run
from hf_distill.stages import hard_baseline_arguments

logger = logging.getLogger(__name__)
DEFAULT_CHUNK = "auto"  # tokens per chunk of the output-layer loss: sized from a memory budget
EVAL_CHUNK = 1024  # tokens per chunk of the evaluation cross-entropy when loss_chunk_size is not a number


@dataclass
class LMModelArguments(LoraArguments):
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Causal-LM teacher (required); several comma-separated: an ensemble, or "
            "routed per row with --teacher_id_column."
        },
    )
    teacher_tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The teachers' tokenizers where they differ from the student's (comma-"
            "separated, one per teacher, empty = found in the teacher's folder); needs "
            "--cross_tokenizer."
        },
    )
    student_model_name_or_path: str | None = field(default=None, metadata={"help": "Unset = cut down the teacher."})
    student_num_layers: int | None = field(default=None, metadata={"help": "Default: half the teacher's layers."})
    student_layers: str | None = field(
        default=None, metadata={"help": "0-based teacher layers copied into the student, e.g. '0,2,4'."}
    )
    chunked_loss: bool = field(
        default=True,
        metadata={
            "help": "Output-layer losses chunk by chunk, never the full (B, L, V) logits: loss_chunk_size "
            "(default here 'auto': chunks sized from a memory budget). --chunked_loss false computes full "
            "logits."
        },
    )


@dataclass
class LMDataArguments(DataSourceArguments):
    prompt_column: str = field(default="prompt", metadata={"help": "Column with the prompts (plain text)."})
    completion_column: str = field(default="completion", metadata={"help": "Column with the completions."})
    messages_column: str = field(default="messages", metadata={"help": "Column with chat messages (alternative)."})
    num_generation_samples: int = field(
        default=3, metadata={"help": "Validation prompts whose greedy teacher / student generations go into the card."}
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "Padding-free batches: a micro-batch's rows as one sequence, position_ids "
            "restarting per row; same losses, no padding computed (docs/packing.md)."
        },
    )


@dataclass
class LMTrainingArguments(DistillationArguments):
    compare_with_hard_baseline: bool = field(
        default=False,
        metadata={
            "help": "Also train the same student on the completion cross-entropy alone (same "
            "init, seed and number of optimizer steps) and report what distillation bought on "
            "every metric."
        },
    )
    generation_eval_steps: int = field(
        default=0,
        metadata={
            "help": "Every N optimizer steps, score the student's greedy completions of "
            "--generation_eval_samples validation prompts (ROUGE-L, teacher NLL, ...), logged as "
            "eval_<metric>. 0 = only at the end."
        },
    )
    generation_eval_samples: int = field(
        default=32, metadata={"help": "Validation prompts scored during training (--generation_eval_steps)."}
    )
    final_generation_eval_samples: int = field(
        default=256,
        metadata={
            "help": "Validation prompts whose greedy completions by teacher, student (and "
            "baseline) give the final generation metrics; -1 = all, 0 = none."
        },
    )

    def __post_init__(self):
        # accelerate refuses a second Accelerator with a DeepSpeed plugin in one process: the baseline (a second
        # trainer, after the distilled one) would crash after training. Refused before anything runs.
        if self.compare_with_hard_baseline and requested_sharding(self) == "deepspeed":
            raise ValueError(
                "--compare_with_hard_baseline cannot run under DeepSpeed: the baseline is a second "
                "trainer in the same processes, and DeepSpeed allows one per process. Drop it, and train "
                "the baseline as its own launch (--soft_weight 0 --hard_weight 1 --lmbda 0 --seq_kd "
                "false, the same seed and --max_steps)."
            )
        super().__post_init__()
        if self.generation_eval_steps < 0:
            raise ValueError(f"--generation_eval_steps must be >= 0 (0 = off), got {self.generation_eval_steps}.")
        if self.generation_eval_samples < 1:
            raise ValueError(f"--generation_eval_samples must be >= 1, got {self.generation_eval_samples}.")
        if self.final_generation_eval_samples < -1:
            raise ValueError(
                f"--final_generation_eval_samples must be -1 (all), 0 (none) or a count, got "
                f"{self.final_generation_eval_samples}."
            )


def standard_columns(raw, splits, data_args: LMDataArguments):
    """Rename the configured columns to prompt / completion / messages."""
    renames = {
        data_args.prompt_column: "prompt",
        data_args.completion_column: "completion",
        data_args.messages_column: "messages",
    }
    for split in splits:
        present = raw[split].column_names
        for old, new in renames.items():
            if old != new and old in present:
                raw[split] = raw[split].rename_column(old, new)
    return raw


@torch.no_grad()
def evaluate_lm(trainer, models: dict, dataset, chunk_size: int | None, parameters: dict) -> tuple[Comparison, int]:
    """Per-token cross-entropy and perplexity on the completion tokens, summed over all processes; with the
    number of completion tokens evaluated."""
    loader = trainer.get_eval_dataloader(dataset)
    acc, device = trainer.accelerator, trainer.args.device
    totals = {name: [0.0, 0] for name in models}
    seconds, examples = dict.fromkeys(models, 0.0), 0
    for m in models.values():
        m.eval()
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        examples += batch[PROMPT_INPUT_IDS].shape[0]  # rows, packed or not
        for name, model in models.items():
            start = time.perf_counter()
            with acc.autocast():
                nll, n = completion_nll(model, batch, chunk_size)  # (B,), (B,)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name] += time.perf_counter() - start
            # gather_for_metrics drops the examples repeated to even out the last batch across processes
            nll, n = acc.gather_for_metrics((nll.float(), n))
            totals[name][0] += nll.sum().item()
            totals[name][1] += int(n.sum().item())
    metrics = {}
    for name, (nll, n) in totals.items():
        ce = nll / max(n, 1)
        metrics[name] = {"cross_entropy": ce, "perplexity": math.exp(min(ce, 50.0))}
    speed = {name: examples / max(s, 1e-9) for name, s in seconds.items()}
    return Comparison(metrics, speed, parameters), next(iter(totals.values()))[1]


@torch.no_grad()
def generation_samples(
    models: dict, tokenizer, dataset, collator, n: int, max_new_tokens: int, device, tokenizers: dict | None = None
) -> list[dict]:
    """Greedy completions of the first n validation prompts by each model, decoded side by side; a model named in
    `tokenizers` (another tokenizer: cross-tokenizer teachers) reads the prompts' text in its own tokens."""
    if n <= 0 or len(dataset) == 0:
        return []
    rows = [dataset[i] for i in range(min(n, len(dataset)))]
    batch = collator(rows)
    eos = end_token_id(tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=collator.pad_token_id
    )
    prompts = batch[PROMPT_INPUT_IDS].to(device)
    samples = [
        {
            "prompt": tokenizer.decode(p[m.bool()], skip_special_tokens=True),
            "reference": tokenizer.decode(
                [t for t, y in zip(r["input_ids"], r["labels"]) if y != IGNORE_INDEX], skip_special_tokens=True
            ),
        }
        for p, m, r in zip(batch[PROMPT_INPUT_IDS], batch[PROMPT_ATTENTION_MASK], rows)
    ]
    for name, model in models.items():
        model.eval()
        tok, ids, mask, gen = tokenizer, prompts, batch[PROMPT_ATTENTION_MASK].to(device), config
        if name in (tokenizers or {}):  # the prompts' text in the model's own tokens, padded on the left
            tok = tokenizers[name]
            enc = tok(
                [s["prompt"] for s in samples],
                add_special_tokens=False,
                padding=True,
                padding_side="left",
                return_tensors="pt",
            )
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            gen = GenerationConfig(
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=end_token_id(tok),
                pad_token_id=tok.pad_token_id,
            )
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=with_kv_cache(gen),
            synced_gpus=synced_generation(model),
        )[:, ids.shape[1] :]  # (n, new)
        for sample, tokens in zip(samples, out):
            sample[name] = tok.decode(tokens, skip_special_tokens=True)
    return samples


def greedy_config(tokenizer, max_new_tokens: int) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=end_token_id(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )


def with_answers(tokenized, raw):
    """The tokenised rows, with the raw split's `answer` column when it has one (exact match is then scored)."""
    if ANSWER_COLUMN not in raw.column_names or ANSWER_COLUMN in tokenized.column_names:
        return tokenized
    return tokenized.add_column(ANSWER_COLUMN, [str(a) for a in raw[ANSWER_COLUMN]])


def head(dataset, n: int):
    """The first n rows (all for n = -1)."""
    return dataset if n < 0 or n >= len(dataset) else dataset.select(range(n))


def add_generation_eval(trainer, teacher, tokenizer, dataset, args) -> None:
    """--generation_eval_steps: the student's generation metrics on a few validation prompts, logged as eval_*."""
    if args.generation_eval_steps > 0:
        trainer.add_callback(
            GenerationEvalCallback(
                trainer,
                head(dataset, args.generation_eval_samples),
                tokenizer,
                greedy_config(tokenizer, args.max_new_tokens),
                args.generation_eval_steps,
                teacher=teacher,
                batch_size=args.per_device_eval_batch_size,
                seed=args.seed,
            )
        )


def generation_metrics(models: dict, tokenizer, dataset, args) -> dict[str, dict]:
    """{model name: generation metrics} on the first --final_generation_eval_samples validation prompts, greedy;
    the teacher's `teacher_nll` is the floor (its NLL of its own completions)."""
    if args.final_generation_eval_samples == 0:
        return {}
    config, rows = greedy_config(tokenizer, args.max_new_tokens), head(dataset, args.final_generation_eval_samples)
    out = {}
    for name, model in models.items():
        metrics = evaluate_generation(
            model,
            rows,
            tokenizer,
            config,
            teacher=models.get("teacher"),
            teacher_floor=False,
            batch_size=args.per_device_eval_batch_size,
            seed=args.seed,
        )
        metrics.pop("teacher_nll_floor", None)
        out[name] = metrics
    return out


def train_hard_baseline(init, args, steps: int, common: dict):
    """The same student init, seed, batch and schedule as the distilled run, `steps` optimizer steps, on the
    completion cross-entropy alone (dataset completions, no teacher term); its checkpoints are removed. `common`:
    the distillation trainer's teacher, train set, tokenizer(s), collator and peft_config."""
    folder = os.path.join(args.output_dir, "hard_baseline")
    b_args = dataclasses.replace(hard_baseline_arguments(args, steps, output_dir=folder), generation_eval_steps=0)
    baseline = DistillationTrainer(model=init, args=b_args, **common)
    baseline.train()
    shutil.rmtree(folder, ignore_errors=True)
    return baseline


def baseline_report(comparison: Comparison, generation: dict, baseline) -> dict:
    """The baseline's metrics and what distillation bought on each (student - baseline), for the results JSON."""
    for name, metrics in generation.items():
        comparison.metrics[name].update({k: v for k, v in metrics.items() if k != "examples"})
    if baseline is None:
        return {}
    student, base = comparison.metrics["student"], comparison.metrics["hard_baseline"]
    return {
        "hard_baseline": {**base, "optimizer_steps": baseline.state.global_step},
        "distillation_gain": {k: student[k] - v for k, v in base.items() if k in student},
    }


def fit_generation_length(args, configs: dict, evals):
    """`args` with --max_new_tokens cut, with a warning, so that the longest validation prompt plus it fits every
    model: what the end of an off-policy run generates (the card's samples, the generation metrics) must not crash
    after training. Runs that sample in training were checked against --max_length already (check_generation_fits),
    so this never cuts them."""
    longest = max((prompt_length(labels) for labels in evals["labels"]), default=0)
    room, who = rd.generation_room(configs, longest)
    if room is None or room >= args.max_new_tokens:
        return args
    logger.warning(
        "generation at the end of the run (the card's samples, generation metrics) gets %d new tokens, "
        "not --max_new_tokens %d: the longest validation prompt (%d tokens) plus %d would exceed the %s's "
        "%d positions.",
        room,
        args.max_new_tokens,
        longest,
        args.max_new_tokens,
        who,
        room + longest,
    )
    return dataclasses.replace(args, max_new_tokens=room)


def load_tokenizers(model_args, args, teacher_paths: list[str]):
    """(the student's tokenizer, the teachers' tokenizers given by --teacher_tokenizer_name_or_path or None each).

    The data is tokenized with the student's tokenizer: the first teacher's unless cross_tokenizer is set, then
    the student's own (so the student must be given by path)."""
    given = model_args.teacher_tokenizer_name_or_path
    if given and not args.cross_tokenizer:
        raise ValueError(
            "--teacher_tokenizer_name_or_path is for teachers with another tokenizer: also set "
            "--cross_tokenizer uld or hybrid (or drop it: the teacher's folder holds its tokenizer)."
        )
    names = [n.strip() for n in given.split(",")] if given else [""] * len(teacher_paths)
    if len(names) != len(teacher_paths):
        raise ValueError(
            f"--teacher_tokenizer_name_or_path lists {len(names)} tokenizers for {len(teacher_paths)} "
            "teachers; give one per teacher (an empty entry: the one in the teacher's folder)."
        )
    teacher_tokenizers = [AutoTokenizer.from_pretrained(n) if n else None for n in names]
    if not args.cross_tokenizer:
        return AutoTokenizer.from_pretrained(teacher_paths[0]), teacher_tokenizers
    if not model_args.student_model_name_or_path:
        raise ValueError(
            "--cross_tokenizer distils into a student with its own tokenizer: give it with "
            "--student_model_name_or_path (a folder or Hub id holding the student and its tokenizer)."
        )
    return AutoTokenizer.from_pretrained(model_args.student_model_name_or_path), teacher_tokenizers


def tokenizer_summary(tokenizer, trainer) -> str:
    """Which tokenizers the run used, for the card."""
    student = f"student: {tokenizer.name_or_path or type(tokenizer).__name__} ({len(tokenizer)} tokens)"
    if not trainer.paired:
        return student + ", shared by the teacher"
    teachers = [
        f"teacher {k}: "
        + ("the student's" if t is None else f"{t.name_or_path or type(t).__name__} ({len(t)} tokens)")
        for k, t in enumerate(trainer.paired.aligner.teachers)
    ]
    return "; ".join([student, *teachers])


def teacher_tokenizer_kwargs(args, teacher_tokenizers: list) -> dict:
    """teacher_processing_class for DistillationTrainer when the teachers may speak other tokenizers."""
    return {"teacher_processing_class": teacher_tokenizers} if args.cross_tokenizer else {}


def other_tokenizer(trainer):
    """The first teacher's tokenizer when it is not the student's (cross_tokenizer), else None."""
    if not (trainer.paired and trainer.args.cross_tokenizer) or trainer.paired.aligner.teachers[0] is None:
        return None
    other = trainer.paired.aligner.teachers[0]
    if other.pad_token is None:
        other.pad_token = other.eos_token
    return other


def check_at_start(model_args, data_args, args):
    """The teachers, tokenizers and lengths, checked before anything is loaded or trained (what the end of the run
    needs included). Returns (args with the loss chunking resolved, teacher paths, tokenizer, teacher tokenizers,
    the configs of the models the run will load)."""
    teacher_paths = [p.strip() for p in model_args.teacher_model_name_or_path.split(",") if p.strip()]
    teacher_path = teacher_paths[0]  # the first teacher: the student is cut from it, the card compares with it
    if model_args.chunked_loss and args.loss_chunk_size is None:  # on by default in this recipe
        args = dataclasses.replace(args, loss_chunk_size=DEFAULT_CHUNK)
    elif not model_args.chunked_loss:
        args = dataclasses.replace(args, loss_chunk_size=None)
    for path in teacher_paths:
        config = AutoConfig.from_pretrained(path)
        if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or [])):
            raise ValueError(f"the teacher {path} is a {config.architectures} checkpoint, not a causal LM.")
        rd.check_max_length(data_args.max_length, config, f"teacher {path}")
    config = AutoConfig.from_pretrained(teacher_path)
    tokenizer, teacher_tokenizers = load_tokenizers(model_args, args, teacher_paths)
    if tokenizer.pad_token is None:  # GPT-2 / Llama tokenizers: pad with eos (padding is masked everywhere)
        tokenizer.pad_token = tokenizer.eos_token
    if not args.cross_tokenizer:
        check_student_tokenizer(model_args.student_model_name_or_path, tokenizer, teacher_path)
    configs = {"teacher": config}  # what the end of the run needs is checked now, against every model
    student_path = model_args.student_model_name_or_path
    if student_path:
        configs["student"] = AutoConfig.from_pretrained(student_path)
        rd.check_max_length(data_args.max_length, configs["student"], f"student {student_path}")
    rd.check_lm_length_leaves_text(data_args.max_length, tokenizer)
    if args.samples_completions:
        rd.check_generation_fits(configs, data_args.max_length, args.max_new_tokens, "--lmbda / --seq_kd")

    return args, teacher_paths, tokenizer, teacher_tokenizers, configs


def load_splits(data_args, args, tokenizer, configs):
    """Training and validation splits, tokenized (with the routing column kept); the generation length fitted to the
    validation prompts. Returns (args, raw splits, tokenized splits, split names)."""
    splits = [data_args.train_split, data_args.validation_split]
    raw, sources = rd.load_raw_datasets(data_args)
    raw = standard_columns(raw, splits, data_args)
    with args.main_process_first(desc="tokenizing"):
        data = {
            s: tokenize_prompt_completion(
                raw[s], tokenizer, data_args.max_length, desc=f"tokenizing {s}", source=sources[s]
            )
            for s in splits
        }
    column = args.teacher_id_column  # routed teachers: the column survives tokenization (checked by the trainer)
    if column:
        data = {
            s: d.add_column(column, raw[s][column]) if column in raw[s].column_names else d for s, d in data.items()
        }
    args = fit_generation_length(args, configs, data[splits[1]])

    return args, raw, data, splits


def load_models(model_args, teacher_paths: list[str]) -> tuple[list, torch.nn.Module, dict, dict]:
    """The teachers, the student (`build_student`) with its description, and their parameter counts."""
    teachers = [AutoModelForCausalLM.from_pretrained(p) for p in teacher_paths]
    student, info = build_student(
        AutoModelForCausalLM,
        teachers[0],
        model_args.student_model_name_or_path,
        model_args.student_num_layers,
        model_args.student_layers,
    )
    params = {"teacher": get_model_param_count(teachers[0]), "student": get_model_param_count(student)}
    return teachers, student, info, params


def main(argv: list[str] | None = None) -> dict:
    run = start_run(
        __file__,
        LMModelArguments,
        LMDataArguments,
        LMTrainingArguments,
        argv,
        required={"teacher_model_name_or_path": "a causal LM (Hub id or folder)"},
    )
    model_args, data_args, args = run.model_args, run.data_args, run.args
    args, teacher_paths, tokenizer, teacher_tokenizers, configs = check_at_start(model_args, data_args, args)
    args, raw, data, splits = load_splits(data_args, args, tokenizer, configs)

    set_seed(args.seed)
    teachers, student, info, params = load_models(model_args, teacher_paths)
    # What the distillation and the hard-baseline trainers share.
    common = dict(
        teacher_model=teachers if len(teachers) > 1 else teachers[0],
        train_dataset=data[splits[0]],
        processing_class=tokenizer,
        data_collator=PromptCompletionCollator.from_tokenizer(tokenizer, pack=data_args.packing),
        peft_config=lora_config(model_args),
        **teacher_tokenizer_kwargs(args, teacher_tokenizers),
    )
    baseline_init = copy.deepcopy(student) if args.compare_with_hard_baseline else None
    # The recipe pushes the final folder itself (Run.finish); the Trainer must not create repos or push checkpoints.
    trainer = DistillationTrainer(
        model=student,
        args=dataclasses.replace(args, push_to_hub=False),
        eval_dataset=data[splits[1]],
        merge_adapter_on_save=model_args.use_peft,
        **common,
    )
    other = other_tokenizer(trainer)  # the first teacher's own tokenizer, where it is not the student's
    scored = with_answers(data[splits[1]], raw[splits[1]])  # the prompts the generation metrics complete
    # A teacher with another tokenizer cannot score the student's tokens (teacher_nll): generation metrics without it.
    add_generation_eval(trainer, trainer.teacher if other is None else None, tokenizer, scored, args)
    with run.owning_output_dir():
        train_metrics = run.train(trainer).metrics
        save_final_model(trainer, args.output_dir)  # the student (adapter merged) + tokenizer, never the teacher
        models = {"teacher": trainer.teacher, "student": trainer.accelerator.unwrap_model(trainer.model_wrapped)}
        baseline = None
        if baseline_init is not None:
            baseline = train_hard_baseline(baseline_init, args, trainer.state.global_step, common)
            models["hard_baseline"] = baseline.accelerator.unwrap_model(baseline.model_wrapped)
            params["hard_baseline"] = params["student"]
        results = evaluate_and_report(
            run,
            trainer,
            models,
            params,
            info,
            train_metrics,
            (data[splits[0]], data[splits[1]], scored),
            tokenizer,
            common["data_collator"],
            baseline,
            (other, raw[splits[1]]),
        )
        results["distillation"].update(distillation_summary(args, model_args, tokenizer, trainer, teacher_paths))
        return run.finish(trainer, results)


def distillation_summary(args, model_args, tokenizer, trainer, teacher_paths) -> dict:
    """How the student was distilled, for the results JSON and the card."""
    return dict(
        mode="on-policy (GKD)" if args.lmbda > 0 else ("sequence-level KD" if args.seq_kd else "off-policy"),
        divergence=args.divergence,
        lmbda=args.lmbda,
        seq_kd=args.seq_kd,
        max_new_tokens=args.max_new_tokens,
        lmbda_start_step=args.lmbda_start_step,
        lmbda_warmup_steps=args.lmbda_warmup_steps,
        on_policy_divergence=args.on_policy_divergence or (args.divergence if args.lmbda > 0 else None),
        generation_temperature=args.generation_temperature,
        loss_chunk_size=args.loss_chunk_size,
        peft=model_args.use_peft,
        cross_tokenizer=args.cross_tokenizer,
        tokenizers=tokenizer_summary(tokenizer, trainer),
        routing=args.teacher_id_column,
        teachers=teacher_paths,
    )


def evaluate_and_report(
    run,
    trainer,
    models: dict,
    params: dict,
    info,
    train_metrics: dict,
    train_eval: tuple,
    tokenizer,
    collator,
    baseline,
    teacher_own: tuple = (None, None),
) -> dict:
    """Perplexity and generation metrics of every model on the validation split, the card's generation samples,
    and the results JSON payload (with the baseline's metrics and the gain when there is one). `teacher_own`:
    (the teacher's tokenizer, the raw validation split) when the teacher reads other tokens than the student."""
    (train, evals, scored), args, data_args = train_eval, trainer.args, run.data_args
    other, raw_evals = teacher_own
    eval_chunk = args.loss_chunk_size if isinstance(args.loss_chunk_size, int) else EVAL_CHUNK
    if other is None:
        comparison, n_tokens = evaluate_lm(trainer, models, evals, eval_chunk, params)
        generation = generation_metrics(models, tokenizer, scored, args)
    else:  # the teacher on the same texts in its own tokens; generation metrics without it
        students = {k: v for k, v in models.items() if k != "teacher"}
        comparison, n_tokens = evaluate_lm(trainer, students, evals, eval_chunk, params)
        own = tokenize_prompt_completion(raw_evals, other, data_args.max_length, desc="teacher tokens")
        trainer.data_collator, collate = PromptCompletionCollator.from_tokenizer(other), trainer.data_collator
        try:
            by_teacher, _ = evaluate_lm(trainer, {"teacher": models["teacher"]}, own, eval_chunk, params)
        finally:
            trainer.data_collator = collate
        comparison.metrics.update(by_teacher.metrics)
        comparison.speed.update(by_teacher.speed)
        generation = generation_metrics(students, tokenizer, scored, args)
    extra = baseline_report(comparison, generation, baseline)
    samples = []
    # A sharded model (ZeRO-3, FSDP) gathers its layers from every process in each forward: all generate, rank 0 keeps
    if trainer.is_world_process_zero() or any(synced_generation(m) for m in models.values()):
        samples = generation_samples(
            models,
            tokenizer,
            evals,
            collator,
            data_args.num_generation_samples,
            args.max_new_tokens,
            args.device,
            tokenizers={"teacher": other} if other is not None else None,
        )
    return run.results(
        trainer,
        task="text-generation",
        teacher=run.model_args.teacher_model_name_or_path.replace(" ", ""),
        student=info,
        comparison=comparison,
        dataset=rd.dataset_summary(data_args, len(train), len(evals)),
        train_metrics=train_metrics,
        eval_completion_tokens=n_tokens,
        generation_samples=samples,
        generation_eval_examples=next(iter(generation.values()), {}).get("examples", 0),
        eval_log=[e for e in trainer.state.log_history if any(k.startswith("eval_") for k in e)],
        example_text=samples[0]["prompt"] if samples else "",
        **extra,
    )


if __name__ == "__main__":
    main()
