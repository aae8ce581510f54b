"""FSDP2 on a gloo CPU mesh: the project's FSDP code paths, as accelerate would drive them on GPUs.

    torchrun --standalone --nproc_per_node 2 tests/fsdp_train.py OUT_DIR

accelerate never turns FSDP on for CPU processes, so the pieces are driven by hand: the student (cut from
the teacher) is sharded with `fully_shard_model` (the classes `fsdp_wrap_class_names` picks, the wrapping
accelerate's TRANSFORMER_BASED_WRAP applies with them), the teacher by `place_teacher`'s FSDP2 branch, each
step's loss is `DistillationTrainer.compute_distillation_loss`, and the final save is
`DistillationTrainer.save_model` on a sharded student. Rank 0 repeats the training unsharded on the whole
global batch; OUT_DIR gets report.json, reference.pt (that run's student) and student/ (the FSDP save).
"""

import copy
import json
import os
import sys
from types import SimpleNamespace

import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

sys.path.insert(0, os.path.dirname(__file__))
from testing_utils import classification_data, distillation_args, make_tokenizer, tiny_bert

from hf_distill import (
    DistillationTrainer,
    init_student_from_teacher,
)
from hf_distill.sharding import full_state_dict, fully_shard_model
from hf_distill.teacher import freeze, place_teacher

STEPS, PER_RANK = 3, 4


def is_sharded(model) -> bool:
    """Every parameter is a DTensor sharded on dim 0 over the 2 ranks, at least one holds only part of its rows."""
    params = list(model.parameters())
    return all(isinstance(p, DTensor) for p in params) and any(p.to_local().shape[0] < p.shape[0] for p in params)


def main(out_dir: str) -> DistillationTrainer:
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    teacher = tiny_bert(layers=4, hidden=32, **no_dropout)
    student = init_student_from_teacher(teacher, num_layers=2).train()
    args = distillation_args(out_dir, ddp_backend="gloo", seed=0, hidden_weight=1.0, logging_steps=500)
    tokenizer = make_tokenizer(os.path.join(out_dir, "tokenizer"))
    # No padding: every rank has as many tokens, so the mean over ranks of per-rank means is the global mean.
    data = classification_data(STEPS * 2 * PER_RANK, with_padding=False)
    trainer = DistillationTrainer(
        student, copy.deepcopy(teacher), args, train_dataset=data, processing_class=tokenizer
    )
    rank, world = trainer.args.process_index, trainer.args.world_size
    ref_student, ref_teacher = copy.deepcopy(student), freeze(copy.deepcopy(teacher))
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}

    # The FSDP2 paths under test.
    fsdp = SimpleNamespace(distributed_type="FSDP", state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=2)))
    sharded_teacher = place_teacher(teacher, fsdp, torch.device("cpu"))
    fully_shard_model(student)
    wrapped = [type(m).__name__.removeprefix("FSDP") for m in student.modules() if isinstance(m, FSDPModule)]

    def batch(step: int, rows: slice) -> dict:
        chunk = data[step * 2 * PER_RANK : (step + 1) * 2 * PER_RANK]
        return {k: torch.tensor(v)[rows] for k, v in chunk.items()}

    def train(model, teacher_model, rows):
        trainer.teachers = [teacher_model]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for step in range(STEPS):
            loss, _, _ = trainer.compute_distillation_loss(model, batch(step, rows))
            loss.backward()  # FSDP2 reduce-scatters the gradients with a mean over the ranks
            optimizer.step()
            optimizer.zero_grad()

    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    with torch.no_grad():
        probe = {k: v for k, v in batch(0, mine).items() if k != "labels"}
        outputs_match = torch.allclose(sharded_teacher(**probe).logits, ref_teacher(**probe).logits, atol=1e-6)
    train(student, sharded_teacher, mine)
    teacher_after = full_state_dict(sharded_teacher)
    trainer.model = student
    trainer.is_fsdp_enabled = True  # what accelerate sets when it prepared the student with FSDP
    trainer.save_model(os.path.join(out_dir, "student"))

    if rank == 0:
        train(ref_student, ref_teacher, slice(0, 2 * PER_RANK))
        torch.save(ref_student.state_dict(), os.path.join(out_dir, "reference.pt"))
        report = {
            "world_size": world,
            "wrapped": wrapped,
            "student_sharded": is_sharded(student),
            "teacher_sharded": is_sharded(sharded_teacher),
            "teacher_outputs_match": outputs_match,
            "teacher_requires_grad": any(p.requires_grad for p in sharded_teacher.parameters()),
            "teacher_unchanged": all(torch.equal(teacher_after[k], v) for k, v in teacher_before.items()),
        }
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(report, f)
    torch.distributed.barrier()  # rank 1 must not tear gloo down while rank 0 still trains its reference
    return trainer


def run(argv: list[str]) -> None:
    """The command line's work, `main(OUT_DIR)`, leaving the process group up (tests/torchrun_jobs.py runs more)."""
    main(argv[0])


if __name__ == "__main__":
    main(sys.argv[1]).accelerator.end_training()  # destroys the process group
