"""On-policy sampling with an FSDP2 student on a gloo CPU mesh (for tests/test_sharded.py).

    torchrun --standalone --nproc_per_node 2 tests/fsdp_sampling.py OUT_DIR

The student is sharded with `fully_shard_model` (as accelerate's FSDP2 plugin would on GPUs); each process
samples its own prompts through `CompletionSampler.sample_step`. Rank 0's rows are made to end after two
tokens while rank 1's run to max_new_tokens, so rank 0 must keep stepping (synced_gpus) for rank 1's
all-gathers to complete. Each rank compares its samples with an unsharded copy of the student sampling the same
prompts with the same seed, and the end-of-run evaluation (completion NLL, generation metrics) of both; it writes
OUT_DIR/report_RANK.json.
"""

import copy
import json
import os
import sys

import torch
from torch.distributed.tensor import DTensor

sys.path.insert(0, os.path.dirname(__file__))
from datasets import Dataset
from testing_utils import distillation_args, make_tokenizer, tiny_gpt2
from transformers import GenerationConfig

from hf_distill import DistillationTrainer
from hf_distill.evaluation import evaluate_generation
from hf_distill.generation import synced_generation
from hf_distill.lm_data import PromptCompletionCollator, completion_nll, tokenize_prompt_completion
from hf_distill.sharding import fully_shard_model

MAX_NEW = 6


def end_early(model, eos: int):
    """From the second decoding step on, every row of `model` emits eos (eos < 0: only count the lm_head calls)."""
    calls = []

    def hook(module, args, output):
        calls.append(1)
        if len(calls) < 2 or eos < 0 or torch.is_grad_enabled():  # training forwards are left alone
            return output
        out = torch.full_like(output, -1e4)
        out[..., eos] = 0.0
        return out

    return model.lm_head.register_forward_hook(hook), calls


def prompt_data(out_dir: str):
    """(tokenizer, 8 tokenized prompt/completion rows): the sampling scripts' shared data."""
    tokenizer = make_tokenizer(os.path.join(out_dir, "tokenizer"))
    words = [f"w{i}" for i in range(90)]
    rows = {
        "prompt": [" ".join(words[(7 * i + j) % 90] for j in range(1 + i % 4)) for i in range(8)],
        "completion": [words[i] for i in range(8)],
    }
    return tokenizer, tokenize_prompt_completion(Dataset.from_dict(rows), tokenizer, 24)


def main(out_dir: str) -> DistillationTrainer:
    tokenizer, data = prompt_data(out_dir)
    student, teacher = tiny_gpt2(layers=2, seed=0), tiny_gpt2(layers=3, seed=1)
    args = distillation_args(out_dir, ddp_backend="gloo", seed=0, lmbda=1.0, max_new_tokens=MAX_NEW, temperature=1.0)
    collator = PromptCompletionCollator.from_tokenizer(tokenizer)
    trainer = DistillationTrainer(
        student, teacher, args, train_dataset=data, processing_class=tokenizer, data_collator=collator
    )
    rank = trainer.args.process_index
    reference = copy.deepcopy(student).train()
    fully_shard_model(student)
    student.train()
    batch = collator([data[i] for i in range(4 * rank, 4 * rank + 4)])
    eos = tokenizer.sep_token_id
    hooks = [end_early(m, eos) for m in (student, reference)] if rank == 0 else []
    (sampled,) = trainer.sampler.sample_step([batch], student, trainer.teacher, step=0, process_index=rank)
    (expected,) = trainer.sampler.sample_step([batch], reference, trainer.teacher, step=0, process_index=rank)
    report = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "student_sharded": all(isinstance(p, DTensor) for p in student.parameters())
        and any(p.to_local().shape[0] < p.shape[0] for p in student.parameters()),
        "synced": synced_generation(student),
        "reference_synced": synced_generation(reference),
        "same_samples": all(
            torch.equal(sampled[k], expected[k]) for k in ("input_ids", "attention_mask", "labels", "completion_mask")
        ),
        "completion_lengths": sampled["completion_mask"].sum(1).tolist(),
        "lm_head_calls": [len(calls) for _, calls in hooks],
        "back_in_training_mode": student.training,
        "source": sampled["completions_from"],
    }
    for handle, _ in hooks:
        handle.remove()
    # The end of a causal-LM run: completion NLL (the chunked path reads the output layer outside its forward;
    # sharded, the full forward gives the logits) and generation metrics over 3 batches (2 on rank 0, 1 on rank 1
    # when unsharded: the sharded student runs all 3 on both, in lockstep).
    full = collator([data[i] for i in range(8)])
    student.eval(), reference.eval()  # no dropout
    nll, n = completion_nll(student, full, chunk_size=4)  # (8,), (8,)
    ref_nll, ref_n = completion_nll(reference, full, chunk_size=4)
    student.train(), reference.train()  # evaluate_generation must hand the training mode back
    config = GenerationConfig(
        max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
    )
    teacher = trainer.teacher
    metrics = evaluate_generation(student, data, tokenizer, config, teacher=teacher, batch_size=3, seed=1)
    ref_metrics = evaluate_generation(reference, data, tokenizer, config, teacher=teacher, batch_size=3, seed=1)
    report.update(
        same_nll=bool(torch.equal(n, ref_n) and torch.allclose(nll, ref_nll, rtol=1e-5, atol=1e-5)),
        generation_metrics=metrics,
        reference_generation_metrics=ref_metrics,
        back_in_training_mode_after_eval=student.training,
    )
    with open(os.path.join(out_dir, f"report_{rank}.json"), "w") as f:
        json.dump(report, f)
    torch.distributed.barrier()  # both ranks done before gloo is torn down
    return trainer


def run(argv: list[str]) -> None:
    """The command line's work, `main(OUT_DIR)`, leaving the process group up (tests/torchrun_jobs.py runs more)."""
    main(argv[0])


if __name__ == "__main__":
    main(sys.argv[1]).accelerator.end_training()  # destroys the process group
