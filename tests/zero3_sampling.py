"""On-policy training with a DeepSpeed ZeRO-3 student on 2 CPU processes (for tests/test_sharded.py).

    DS_ACCELERATOR=cpu accelerate launch --config_file tests/configs/accelerate_zero3_cpu.yaml \
        tests/zero3_sampling.py OUT_DIR

A DistillationTrainer at lmbda 1 trains 2 steps; its partitioned student samples each step's completions. Rank 0's
rows end after two tokens while rank 1's run to max_new_tokens, so rank 0 must keep stepping (synced_gpus) for
rank 1's parameter gathers to complete. Rank 0 writes OUT_DIR/report.json with the mode in effect, the sampling
calls and whether each decoded in lockstep, the lm_head calls per generation on each rank, and the logs.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from fsdp_sampling import MAX_NEW, end_early, prompt_data
from testing_utils import distillation_args, tiny_gpt2

from hf_distill import DistillationTrainer
from hf_distill.generation import synced_generation
from hf_distill.lm_data import PromptCompletionCollator


def record_generations(trainer, calls: list) -> list[dict]:
    """The list that each of the trainer's sampling calls appends to: whether it decoded in lockstep, its lm_head
    calls (counted in `calls`), whether the student was partitioned, and the completion lengths."""
    record, generate = [], trainer.sampler._generate

    def recording(model, *a, **kw):
        before = len(calls)
        out = generate(model, *a, **kw)
        record.append(
            {
                "synced": synced_generation(model),
                "lm_head_calls": len(calls) - before,
                "partitioned": any(hasattr(p, "ds_id") and p.numel() == 0 for p in model.parameters()),
                "lengths": out[1].tolist(),
            }
        )
        return out

    trainer.sampler._generate = recording
    return record


def main(out_dir: str) -> None:
    tokenizer, data = prompt_data(out_dir)
    args = distillation_args(
        out_dir,
        seed=0,
        lmbda=1.0,
        max_new_tokens=MAX_NEW,
        temperature=1.0,
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
    )
    # 3200 x 32 embeddings: above ZeRO-3's persistence threshold (1e5 elements), so really partitioned
    student, teacher = tiny_gpt2(layers=2, seed=0, vocab=3200), tiny_gpt2(layers=3, seed=1, vocab=3200)
    trainer = DistillationTrainer(
        student,
        teacher,
        args,
        train_dataset=data,
        processing_class=tokenizer,
        data_collator=PromptCompletionCollator.from_tokenizer(tokenizer),
    )
    rank = trainer.args.process_index
    student = trainer.student
    _, calls = end_early(student, tokenizer.sep_token_id) if rank == 0 else end_early(student, -1)
    record = record_generations(trainer, calls)
    before = {k: v.detach().clone() for k, v in tiny_gpt2(layers=2, seed=0, vocab=3200).state_dict().items()}
    trainer.train()
    engine = trainer.model_wrapped
    gathered = [None, None]
    torch.distributed.all_gather_object(gathered, record)
    from hf_distill.layers import _full_tensors

    names = [n for n, _ in trainer.student.named_parameters()]
    after = _full_tensors(trainer.student, names)
    if rank == 0:
        report = {
            "world_size": trainer.accelerator.num_processes,
            "is_deepspeed_enabled": trainer.is_deepspeed_enabled,
            "zero_stage": engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None,
            "generations": gathered,
            "on_policy_fractions": [
                e["on_policy_fraction"] for e in trainer.state.log_history if "on_policy_fraction" in e
            ],
            "student_changed": any(not torch.equal(after[n], before[n]) for n in names if n in before),
            "finite": all(bool(torch.isfinite(v).all()) for v in after.values()),
        }
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(report, f)
    torch.distributed.barrier()  # rank 1 must not tear gloo down while rank 0 still writes
    # Tear the process group down here, not in an interpreter-exit destructor: gloo can abort there ("terminate
    # called without an active exception", seen once), as hf_distill.recipes.run says.
    trainer.accelerator.end_training()


def run(argv: list[str]) -> None:
    """The command line's work: `main(OUT_DIR)` (tests/sharded_recipe.py --jobs runs it beside other jobs)."""
    main(argv[0])


if __name__ == "__main__":
    main(sys.argv[1])
