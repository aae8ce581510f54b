"""Causal-LM distillation on prompt/completion (or chat) data: off-policy, on-policy (GKD), sequence-level.

    accelerate launch recipes/distil_causal_lm.py recipes/configs/causal_lm_gkd.yaml           # on-policy, lmbda 0.5
    accelerate launch recipes/distil_causal_lm.py recipes/configs/causal_lm_offpolicy.yaml     # dataset completions
    accelerate launch --config_file recipes/configs/accelerate_ddp.yaml recipes/distil_causal_lm.py CONFIG.yaml
    torchrun --nproc_per_node 2 recipes/distil_causal_lm.py CONFIG.yaml --lmbda 1.0 --output_dir out
    python recipes/distil_causal_lm.py --teacher_model_name_or_path Qwen/Qwen2.5-1.5B-Instruct \
        --student_model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name you/chat-data --lmbda 0.5 ...

Data: `prompt` + `completion` columns, or `messages` (chat, rendered with the tokenizer's chat template),
from local csv/json/jsonl/parquet files or a Hub dataset (`--prompt_column` etc. rename other columns).
Only completion tokens count in the losses. The student is `--student_model_name_or_path` or the
teacher cut to `--student_num_layers` layers; `--use_peft` trains a LoRA adapter on it instead.
`--lmbda p` samples a batch's completions from the student with probability p (GKD; the divergence
then defaults to the generalized JSD with beta 0.5), `--seq_kd` from the teacher. At the end teacher
and student are evaluated on the validation split by per-token cross-entropy and perplexity over the
completion tokens (logits chunk by chunk); a few greedy generations of both go into the model card.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import recipe_utils as ru
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    set_seed,
)

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.layers import count_layers
from hf_distill.lm_data import (
    PROMPT_ATTENTION_MASK,
    PROMPT_INPUT_IDS,
    PromptCompletionCollator,
    completion_nll,
    end_token_id,
    tokenize_prompt_completion,
)
from hf_distill.model_card import render_model_card

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 1024  # tokens per chunk of the output-layer loss
CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "causal_lm_card.md"
SAMPLES_MARKER = "<!-- generation samples -->"
ROWS_MARKER = "<!-- distillation rows -->\n"


@dataclass
class LMModelArguments:
    teacher_model_name_or_path: str | None = field(default=None, metadata={"help": "Causal-LM teacher (required)."})
    student_model_name_or_path: str | None = field(default=None, metadata={"help": "Unset = cut down the teacher."})
    student_num_layers: int | None = field(default=None, metadata={"help": "Default: half the teacher's layers."})
    student_layers: str | None = field(
        default=None, metadata={"help": "0-based teacher layers copied into the student, e.g. '0,2,4'."}
    )
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter on the student instead of all weights."})
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
class LMDataArguments(ru.DataSourceArguments):
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
def evaluate_lm(trainer, models: dict, dataset, chunk_size: int | None) -> tuple[dict, dict]:
    """Per-token cross-entropy and perplexity on the completion tokens, summed over all processes."""
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
    return metrics, speed, int(n)


@torch.no_grad()
def generation_samples(models: dict, tokenizer, dataset, collator, n: int, max_new_tokens: int, device) -> list[dict]:
    """Greedy completions of the first n validation prompts by each model, decoded side by side."""
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
        out = model.generate(input_ids=prompts, attention_mask=batch[PROMPT_ATTENTION_MASK].to(device),
                             generation_config=config)[:, prompts.shape[1]:]  # (n, new tokens)
        for sample, tokens in zip(samples, out):
            sample[name] = tokenizer.decode(tokens, skip_special_tokens=True)
    return samples


def samples_markdown(samples: list[dict]) -> str:
    if not samples:
        return ""
    cell = lambda text: (text or "").replace("|", "\\|").replace("\n", " ")[:300]
    lines = ["## Generation samples", "", "Greedy decoding of validation prompts, teacher and student side by side.",
             "", "| prompt | reference | teacher | student |", "|---|---|---|---|"]
    lines += [f"| {cell(s['prompt'])} | {cell(s['reference'])} | {cell(s['teacher'])} | {cell(s['student'])} |"
              for s in samples]
    return "\n".join(lines) + "\n"


def write_card(output_dir: str, results: dict) -> str:
    text = render_model_card(results, model_id=results["model_id"], template_path=CARD_TEMPLATE)
    text = text.replace(SAMPLES_MARKER, samples_markdown(results.get("generation_samples", [])))
    d = results["distillation"]
    rows = [("mode", d["mode"]), ("divergence", f"`{d['divergence']}`"),
            ("on-policy probability lmbda / seq_kd", f"{d['lmbda']} / {d['seq_kd']}"),
            ("sampling", f"max_new_tokens {d['max_new_tokens']}, temperature {d['generation_temperature']}"),
            ("loss chunk size (tokens)", d["loss_chunk_size"] or "off"), ("LoRA adapter (merged)", d["peft"])]
    text = text.replace(ROWS_MARKER, "".join(f"| {k} | {v} |\n" for k, v in rows))
    path = os.path.join(output_dir, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, out_args, args = ru.parse_args(
        (LMModelArguments, LMDataArguments, ru.OutputArguments, DistillationArguments), argv
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if args.should_log else logging.WARNING)
    if not model_args.teacher_model_name_or_path:
        raise ValueError("--teacher_model_name_or_path is required: a causal LM (Hub id or folder).")
    teacher_path = model_args.teacher_model_name_or_path
    if model_args.chunked_loss and args.loss_chunk_size is None:  # on by default in this recipe
        args = dataclasses.replace(args, loss_chunk_size=DEFAULT_CHUNK)
    elif not model_args.chunked_loss:
        args = dataclasses.replace(args, loss_chunk_size=None)
    resume = ru.resolve_resume(args, out_args)
    token = ru.check_push(args)
    config = AutoConfig.from_pretrained(teacher_path)
    if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or [])):
        raise ValueError(f"the teacher {teacher_path} is a {config.architectures} checkpoint, not a causal LM.")
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    if tokenizer.pad_token is None:  # GPT-2 / Llama tokenizers: pad with eos (padding is masked everywhere)
        tokenizer.pad_token = tokenizer.eos_token
    ru.check_student_tokenizer(model_args.student_model_name_or_path, tokenizer, teacher_path)
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if (args.lmbda > 0 or args.seq_kd) and positions and data_args.max_length + args.max_new_tokens > positions:
        raise ValueError(
            f"max_length ({data_args.max_length}) + max_new_tokens ({args.max_new_tokens}) exceeds the teacher's "
            f"{positions} positions: sampled sequences would not fit. Lower one of them."
        )

    splits = [data_args.train_split, data_args.validation_split]
    raw = standard_columns(ru.load_raw_datasets(data_args), splits, data_args)
    with args.main_process_first(desc="tokenizing"):
        data = {s: tokenize_prompt_completion(raw[s], tokenizer, data_args.max_length, desc=f"tokenizing {s}")
                for s in splits}

    set_seed(args.seed)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path)
    student, init_layers = ru.build_student(AutoModelForCausalLM, teacher, model_args.student_model_name_or_path,
                                            model_args.student_num_layers, model_args.student_layers)
    n_teacher, n_student = count_layers(teacher), count_layers(student)
    params = {"teacher": ru.count_parameters(teacher), "student": ru.count_parameters(student)}
    peft_config = None
    if model_args.use_peft:
        from peft import LoraConfig

        targets = model_args.lora_target_modules
        peft_config = LoraConfig(task_type="CAUSAL_LM", r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                                 lora_dropout=model_args.lora_dropout,
                                 target_modules=targets if targets == "all-linear" else targets.split(","))

    collator = PromptCompletionCollator.from_tokenizer(tokenizer)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=dataclasses.replace(args, push_to_hub=False),
        train_dataset=data[splits[0]], eval_dataset=data[splits[1]], processing_class=tokenizer,
        data_collator=collator, peft_config=peft_config, merge_adapter_on_save=model_args.use_peft,
    )
    train_metrics = trainer.train(resume_from_checkpoint=resume).metrics
    trainer.save_model(args.output_dir)
    student_model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    chunk = args.loss_chunk_size or DEFAULT_CHUNK
    metrics, speed, n_tokens = evaluate_lm(trainer, {"teacher": trainer.teacher, "student": student_model},
                                 data[splits[1]], chunk)
    samples = []
    if trainer.is_world_process_zero():
        samples = generation_samples({"teacher": trainer.teacher, "student": student_model}, tokenizer,
                                     data[splits[1]], collator, data_args.num_generation_samples,
                                     args.max_new_tokens, args.device)
    results = {
        "task": "text-generation",
        "teacher_model": teacher_path,
        "model_id": args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir)),
        "dataset": ru.dataset_summary(data_args, len(data[splits[0]]), len(data[splits[1]])),
        "distillation": {
            "mode": "on-policy (GKD)" if args.lmbda > 0 else ("sequence-level KD" if args.seq_kd else "off-policy"),
            "divergence": args.divergence, "temperature": args.temperature,
            "soft_weight": args.soft_weight, "hard_weight": args.hard_weight, "lmbda": args.lmbda,
            "seq_kd": args.seq_kd, "max_new_tokens": args.max_new_tokens,
            "generation_temperature": args.generation_temperature, "loss_chunk_size": args.loss_chunk_size,
            "teacher_num_layers": n_teacher, "student_num_layers": n_student, "student_init_layers": init_layers,
            "student_model": model_args.student_model_name_or_path, "peft": model_args.use_peft,
            "num_train_epochs": args.num_train_epochs, "learning_rate": args.learning_rate,
            "global_train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps
            * args.world_size, "max_length": data_args.max_length, "seed": args.seed,
        },
        "teacher": {**metrics["teacher"], "parameters": params["teacher"], "examples_per_second": speed["teacher"]},
        "student": {**metrics["student"], "parameters": params["student"], "examples_per_second": speed["student"]},
        "speedup": speed["student"] / speed["teacher"],
        "device": str(args.device.type),
        "eval_completion_tokens": n_tokens,
        "train": {k: v for k, v in train_metrics.items() if isinstance(v, (int, float))},
        "train_log": [e for e in trainer.state.log_history if "loss" in e],
        "generation_samples": samples,
        "example_text": samples[0]["prompt"] if samples else "",
        "command": ru.launch_command(__file__, argv),
    }
    if trainer.is_world_process_zero():
        ru.write_json(os.path.join(args.output_dir, "distillation_results.json"), results)
        write_card(args.output_dir, results)
        if args.push_to_hub:
            ru.push_folder(args.output_dir, args.hub_model_id, token, args.hub_private_repo)
        ru.print_summary(results, args.output_dir)
    trainer.accelerator.wait_for_everyone()
    return results


if __name__ == "__main__":
    main()
