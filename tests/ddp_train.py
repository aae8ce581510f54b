"""Train a tiny 4 -> 2 layer distillation with hidden-size projections; run alone or under torchrun.

Usage: python tests/ddp_train.py OUT_DIR PER_DEVICE_BATCH   (torchrun --nproc_per_node 2 ... for DDP)
Writes OUT_DIR/final.pt with the student and projection weights (rank 0).

`launch_args`, `save_final` and `leave` are the set-up every multi-process test script shares
(tests/ddp_chunked_train.py, tests/ddp_generation_eval.py too). Each script's `run(argv)` does what its command line
does, without leaving: tests call it in their own process (the single-process run) and tests/torchrun_jobs.py runs
several scripts' `run` in one torchrun launch.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from testing_utils import classification_data, distillation_args, tiny_bert

from hf_distill import DistillationTrainer


def launch_args(out_dir: str, per_device_batch: int, **kw):
    """Test arguments for a run that may be one of several torchrun processes (gloo on CPU), SGD, seed 0."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return distillation_args(
        out_dir,
        per_device_train_batch_size=per_device_batch,
        optim="sgd",
        seed=0,
        ddp_backend="gloo" if world > 1 else None,
        **kw,
    )


def save_final(trainer, state: dict, out_dir: str) -> None:
    """Rank 0 writes `state` and the world size to OUT_DIR/final.pt; under torchrun every rank waits until it is
    written."""
    if trainer.is_world_process_zero():
        state["world_size"] = torch.tensor(trainer.args.world_size)
        torch.save(state, os.path.join(out_dir, "final.pt"))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def leave() -> None:
    """The end of a script run from its command line: under torchrun every rank waits for the others, then leaves at
    once. Tearing down gloo from Python can deadlock (the process group's destructor joins a worker thread that waits
    for the GIL) or abort at interpreter exit; the work is saved, so leave at once."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(out_dir: str, per_device_batch: int) -> None:
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    teacher = tiny_bert(layers=4, hidden=64, **no_dropout)
    student = tiny_bert(layers=2, hidden=32, seed=1, **no_dropout)
    args = launch_args(out_dir, per_device_batch, max_steps=3, learning_rate=0.2, hidden_weight=1.0)
    trainer = DistillationTrainer(student, teacher, args, train_dataset=classification_data(48, with_padding=False))
    trainer.train()
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    state.update({f"proj.{k}": v.cpu() for k, v in trainer.projections.state_dict().items()})
    save_final(trainer, state, out_dir)


def run(argv: list[str]) -> None:
    """The command line's work: `main(OUT_DIR, PER_DEVICE_BATCH)`."""
    main(argv[0], int(argv[1]))


if __name__ == "__main__":
    run(sys.argv[1:])
    leave()
