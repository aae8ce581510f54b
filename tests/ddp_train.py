"""Train a tiny 4 -> 2 layer distillation with hidden-size projections; run alone or under torchrun.

Usage: python tests/ddp_train.py OUT_DIR PER_DEVICE_BATCH   (torchrun --nproc_per_node 2 ... for DDP)
Writes OUT_DIR/final.pt with the student and projection weights (rank 0).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import classification_data, tiny_bert

from hf_distill import DistillationArguments, DistillationTrainer


def main(out_dir: str, per_device_batch: int) -> None:
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    teacher = tiny_bert(layers=4, hidden=64, **no_dropout)
    student = tiny_bert(layers=2, hidden=32, seed=1, **no_dropout)
    args = DistillationArguments(
        output_dir=out_dir, report_to=[], use_cpu=True, max_steps=3, per_device_train_batch_size=per_device_batch,
        optim="sgd", learning_rate=0.2, hidden_weight=1.0, save_strategy="no", disable_tqdm=True, seed=0,
        logging_steps=1, ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    trainer = DistillationTrainer(student, teacher, args, train_dataset=classification_data(48, with_padding=False))
    trainer.train()
    if trainer.is_world_process_zero():
        state = {f"student.{k}": v for k, v in student.state_dict().items()}
        state.update({f"proj.{k}": v.cpu() for k, v in trainer.projections.state_dict().items()})
        state["world_size"] = torch.tensor(trainer.args.world_size)
        torch.save(state, os.path.join(out_dir, "final.pt"))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        # Tearing down gloo from Python can deadlock (the process group's destructor joins a worker thread
        # that waits for the GIL) or abort at interpreter exit; the work is saved, so leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
