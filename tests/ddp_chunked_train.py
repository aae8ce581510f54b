"""Distil a tiny Llama with the chunked output-layer loss; run alone or under torchrun (gloo, CPU).

Usage: python tests/ddp_chunked_train.py OUT_DIR PER_DEVICE_BATCH [COLLATOR]   (torchrun --nproc_per_node 2 for DDP)
COLLATOR: "plain" (default: testing_utils.lm_collate), "padded" or "packed" (PromptCompletionCollator, pack=False
/ True).
Writes OUT_DIR/final.pt with the student's weights (rank 0).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from ddp_train import launch_args, leave, save_final
from testing_utils import lm_collate, lm_data, lm_tokenizer, tiny_lm

from hf_distill import DistillationTrainer, PromptCompletionCollator


def main(out_dir: str, per_device_batch: int, collator: str = "plain") -> None:
    student, teacher = tiny_lm(vocab=56, seed=1), tiny_lm(vocab=64, hidden=24, seed=2)
    args = launch_args(
        out_dir,
        per_device_batch,
        max_steps=2,
        learning_rate=0.5,
        loss_chunk_size=5,
        soft_weight=0.6,
        hard_weight=0.4,
        dataloader_drop_last=True,
    )
    data_collator = lm_collate if collator == "plain" else PromptCompletionCollator(0, pack=collator == "packed")
    trainer = DistillationTrainer(
        student, teacher, args, train_dataset=lm_data(), data_collator=data_collator, processing_class=lm_tokenizer()
    )
    trainer.train()
    save_final(trainer, {k: v.detach().clone() for k, v in student.state_dict().items()}, out_dir)


def run(argv: list[str]) -> None:
    """The command line's work: `main(OUT_DIR, PER_DEVICE_BATCH[, COLLATOR])`."""
    main(argv[0], int(argv[1]), *argv[2:])


if __name__ == "__main__":
    run(sys.argv[1:])
    leave()
