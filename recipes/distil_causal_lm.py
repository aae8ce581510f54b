"""Causal-LM distillation on prompt/completion (or chat) data: off-policy, on-policy (GKD), sequence-level.

    accelerate launch recipes/distil_causal_lm.py recipes/configs/causal_lm_gkd.yaml           # on-policy, lmbda 0.5
    accelerate launch recipes/distil_causal_lm.py recipes/configs/causal_lm_offpolicy.yaml     # dataset completions
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
completion tokens (logits chunk by chunk); a few greedy generations of both go into the model card.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, set_seed
from transformers.trainer_pt_utils import get_model_param_count

from hf_distill import DistillationArguments, DistillationTrainer, PromptCompletionCollator, tokenize_prompt_completion
from hf_distill.lm_data import PROMPT_ATTENTION_MASK, PROMPT_INPUT_IDS, completion_nll, end_token_id
from hf_distill.recipes import data as rd
from hf_distill.recipes.arguments import DataSourceArguments
from hf_distill.recipes.evaluation import Comparison
from hf_distill.recipes.models import build_student, check_student_tokenizer
from hf_distill.recipes.output import save_final_model
from hf_distill.recipes.run import start_run

DEFAULT_CHUNK = 1024  # tokens per chunk of the output-layer loss


@dataclass
class LMModelArguments:
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Causal-LM teacher (required); several comma-separated: an ensemble, or "
                                "routed per row with --teacher_id_column."})
    teacher_tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "The teachers' tokenizers where they differ from the student's (comma-"
                                "separated, one per teacher, empty = found in the teacher's folder); needs "
                                "--cross_tokenizer."})
    student_model_name_or_path: str | None = field(default=None, metadata={"help": "Unset = cut down the teacher."})
    student_num_layers: int | None = field(default=None, metadata={"help": "Default: half the teacher's layers."})
    student_layers: str | None = field(
        default=None, metadata={"help": "0-based teacher layers copied into the student, e.g. '0,2,4'."}
    )
    use_peft: bool = field(
        default=False, metadata={"help": "Train a LoRA adapter on the student instead of all weights."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Comma-separated module names, or 'all-linear'."}
    )
    chunked_loss: bool = field(
        default=True,
        metadata={"help": "Output-layer losses chunk by chunk, never the full (B, L, V) logits: loss_chunk_size "
                  "(default here 1024 tokens). --chunked_loss false computes full logits."},
    )


@dataclass
class LMDataArguments(DataSourceArguments):
    prompt_column: str = field(default="prompt", metadata={"help": "Column with the prompts (plain text)."})
    completion_column: str = field(default="completion", metadata={"help": "Column with the completions."})
    messages_column: str = field(default="messages", metadata={"help": "Column with chat messages (alternative)."})
    num_generation_samples: int = field(
        default=3, metadata={"help": "Validation prompts whose greedy teacher / student generations go into the card."}
    )


def standard_columns(raw, splits, data_args: LMDataArguments):
    """Rename the configured columns to prompt / completion / messages."""
    renames = {data_args.prompt_column: "prompt", data_args.completion_column: "completion",
               data_args.messages_column: "messages"}
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
        examples += batch["input_ids"].shape[0]
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
def generation_samples(models: dict, tokenizer, dataset, collator, n: int, max_new_tokens: int, device,
                       tokenizers: dict | None = None) -> list[dict]:
    """Greedy completions of the first n validation prompts by each model, decoded side by side; a model named in
    `tokenizers` (another tokenizer: cross-tokenizer teachers) reads the prompts' text in its own tokens."""
    if n <= 0 or len(dataset) == 0:
        return []
    rows = [dataset[i] for i in range(min(n, len(dataset)))]
    batch = collator(rows)
    eos = end_token_id(tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                              pad_token_id=collator.pad_token_id)
    prompts = batch[PROMPT_INPUT_IDS].to(device)
    samples = [{"prompt": tokenizer.decode(p[m.bool()], skip_special_tokens=True),
                "reference": tokenizer.decode([t for t, y in zip(r["input_ids"], r["labels"]) if y != -100],
                                              skip_special_tokens=True)}
               for p, m, r in zip(batch[PROMPT_INPUT_IDS], batch[PROMPT_ATTENTION_MASK], rows)]
    for name, model in models.items():
        model.eval()
        tok, ids, mask, gen = tokenizer, prompts, batch[PROMPT_ATTENTION_MASK].to(device), config
        if name in (tokenizers or {}):  # the prompts' text in the model's own tokens, padded on the left
            tok = tokenizers[name]
            enc = tok([s["prompt"] for s in samples], add_special_tokens=False, padding=True, padding_side="left",
                      return_tensors="pt")
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end_token_id(tok),
                                   pad_token_id=tok.pad_token_id)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)[:, ids.shape[1]:]  # (n, new)
        for sample, tokens in zip(samples, out):
            sample[name] = tok.decode(tokens, skip_special_tokens=True)
    return samples


def load_tokenizers(model_args, args, teacher_paths: list[str]):
    """(the student's tokenizer, the teachers' tokenizers given by --teacher_tokenizer_name_or_path or None each).

    The data is tokenized with the student's tokenizer: the first teacher's unless cross_tokenizer is set, then
    the student's own (so the student must be given by path)."""
    given = model_args.teacher_tokenizer_name_or_path
    if given and not args.cross_tokenizer:
        raise ValueError("--teacher_tokenizer_name_or_path is for teachers with another tokenizer: also set "
                         "--cross_tokenizer uld or hybrid (or drop it: the teacher's folder holds its tokenizer).")
    names = [n.strip() for n in given.split(",")] if given else [""] * len(teacher_paths)
    if len(names) != len(teacher_paths):
        raise ValueError(f"--teacher_tokenizer_name_or_path lists {len(names)} tokenizers for {len(teacher_paths)} "
                         "teachers; give one per teacher (an empty entry: the one in the teacher's folder).")
    teacher_tokenizers = [AutoTokenizer.from_pretrained(n) if n else None for n in names]
    if not args.cross_tokenizer:
        return AutoTokenizer.from_pretrained(teacher_paths[0]), teacher_tokenizers
    if not model_args.student_model_name_or_path:
        raise ValueError("--cross_tokenizer distils into a student with its own tokenizer: give it with "
                         "--student_model_name_or_path (a folder or Hub id holding the student and its tokenizer).")
    return AutoTokenizer.from_pretrained(model_args.student_model_name_or_path), teacher_tokenizers


def tokenizer_summary(tokenizer, trainer) -> str:
    """Which tokenizers the run used, for the card."""
    student = f"student: {tokenizer.name_or_path or type(tokenizer).__name__} ({len(tokenizer)} tokens)"
    if not trainer.paired:
        return student + ", shared by the teacher"
    teachers = [f"teacher {k}: " + ("the student's" if t is None else f"{t.name_or_path or type(t).__name__} "
                                    f"({len(t)} tokens)") for k, t in enumerate(trainer.paired.aligner.teachers)]
    return "; ".join([student, *teachers])


def main(argv: list[str] | None = None) -> dict:
    run = start_run(__file__, LMModelArguments, LMDataArguments, DistillationArguments, argv,
                    required={"teacher_model_name_or_path": "a causal LM (Hub id or folder)"})
    model_args, data_args, args = run.model_args, run.data_args, run.args
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
    if model_args.student_model_name_or_path:
        rd.check_max_length(data_args.max_length, AutoConfig.from_pretrained(model_args.student_model_name_or_path),
                            f"student {model_args.student_model_name_or_path}")
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if (args.lmbda > 0 or args.seq_kd) and positions and data_args.max_length + args.max_new_tokens > positions:
        raise ValueError(
            f"max_length ({data_args.max_length}) + max_new_tokens ({args.max_new_tokens}) exceeds the teacher's "
            f"{positions} positions: sampled sequences would not fit. Lower one of them."
        )

    splits = [data_args.train_split, data_args.validation_split]
    raw = standard_columns(rd.load_raw_datasets(data_args)[0], splits, data_args)
    with args.main_process_first(desc="tokenizing"):
        data = {s: tokenize_prompt_completion(raw[s], tokenizer, data_args.max_length, desc=f"tokenizing {s}")
                for s in splits}
    column = args.teacher_id_column  # routed teachers: the column survives tokenization (checked by the trainer)
    if column:
        data = {s: d.add_column(column, raw[s][column]) if column in raw[s].column_names else d
                for s, d in data.items()}

    set_seed(args.seed)
    teachers = [AutoModelForCausalLM.from_pretrained(p) for p in teacher_paths]
    teacher = teachers[0]
    student, info = build_student(AutoModelForCausalLM, teacher, model_args.student_model_name_or_path,
                                  model_args.student_num_layers, model_args.student_layers)
    params = {"teacher": get_model_param_count(teacher), "student": get_model_param_count(student)}
    peft_config = None
    if model_args.use_peft:
        from peft import LoraConfig

        targets = model_args.lora_target_modules
        peft_config = LoraConfig(task_type="CAUSAL_LM", r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                                 lora_dropout=model_args.lora_dropout,
                                 target_modules=targets if targets == "all-linear" else targets.split(","))

    collator = PromptCompletionCollator.from_tokenizer(tokenizer)
    # The recipe pushes the final folder itself (Run.finish); the Trainer must not create repos or push checkpoints.
    trainer = DistillationTrainer(
        model=student, teacher_model=teachers if len(teachers) > 1 else teacher,
        args=dataclasses.replace(args, push_to_hub=False), train_dataset=data[splits[0]],
        eval_dataset=data[splits[1]], processing_class=tokenizer, data_collator=collator, peft_config=peft_config,
        merge_adapter_on_save=model_args.use_peft,
        teacher_processing_class=teacher_tokenizers if args.cross_tokenizer else None,
    )
    # The first teacher's own tokenizer where it differs: it is evaluated and samples in its own tokens.
    other = trainer.paired.aligner.teachers[0] if trainer.paired and args.cross_tokenizer else None
    if other is not None and other.pad_token is None:
        other.pad_token = other.eos_token
    with run.owning_output_dir():
        train_metrics = trainer.train(resume_from_checkpoint=run.resume).metrics
        save_final_model(trainer, args.output_dir)  # the student (adapter merged) + tokenizer, never the teacher
        models = {"teacher": trainer.teacher, "student": trainer.accelerator.unwrap_model(trainer.model_wrapped)}
        chunk = args.loss_chunk_size or DEFAULT_CHUNK
        if other is None:
            comparison, n_tokens = evaluate_lm(trainer, models, data[splits[1]], chunk, params)
        else:  # each model on the validation split in its own tokens
            comparison, n_tokens = evaluate_lm(trainer, {"student": models["student"]}, data[splits[1]], chunk, params)
            own = tokenize_prompt_completion(raw[splits[1]], other, data_args.max_length, desc="teacher tokens")
            trainer.data_collator, collate = PromptCompletionCollator.from_tokenizer(other), trainer.data_collator
            try:
                by_teacher, _ = evaluate_lm(trainer, {"teacher": models["teacher"]}, own, chunk, params)
            finally:
                trainer.data_collator = collate
            comparison.metrics.update(by_teacher.metrics)
            comparison.speed.update(by_teacher.speed)
        samples = []
        if trainer.is_world_process_zero():
            samples = generation_samples(models, tokenizer, data[splits[1]], collator,
                                         data_args.num_generation_samples, args.max_new_tokens, args.device,
                                         tokenizers={"teacher": other} if other is not None else None)
        results = run.results(
            trainer, task="text-generation", teacher=",".join(teacher_paths), student=info, comparison=comparison,
            dataset=rd.dataset_summary(data_args, len(data[splits[0]]), len(data[splits[1]])),
            train_metrics=train_metrics, eval_completion_tokens=n_tokens, generation_samples=samples,
            example_text=samples[0]["prompt"] if samples else "",
        )
        results["distillation"].update(
            mode="on-policy (GKD)" if args.lmbda > 0 else ("sequence-level KD" if args.seq_kd else "off-policy"),
            divergence=args.divergence, lmbda=args.lmbda, seq_kd=args.seq_kd, max_new_tokens=args.max_new_tokens,
            generation_temperature=args.generation_temperature, loss_chunk_size=args.loss_chunk_size,
            peft=model_args.use_peft, cross_tokenizer=args.cross_tokenizer,
            tokenizers=tokenizer_summary(tokenizer, trainer), routing=args.teacher_id_column,
            teachers=teacher_paths,
        )
        return run.finish(trainer, results)


if __name__ == "__main__":
    main()
