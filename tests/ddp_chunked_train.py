"""Distil a tiny Llama with the chunked output-layer loss; run alone or under torchrun (gloo, CPU).

Usage: python tests/ddp_chunked_train.py OUT_DIR PER_DEVICE_BATCH [COLLATOR]   (torchrun --nproc_per_node 2 for DDP)
COLLATOR: "plain" (default: llm_setup.collate), "padded" or "packed" (PromptCompletionCollator, pack=False / True).
Writes OUT_DIR/final.pt with the student's weights (rank 0).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from llm_setup import collate, lm_data, tiny_lm, tokenizer

from hf_distill import DistillationArguments, DistillationTrainer, PromptCompletionCollator


def main(out_dir: str, per_device_batch: int, collator: str = "plain") -> None:
    student, teacher = tiny_lm(vocab=56, seed=1), tiny_lm(vocab=64, hidden=24, seed=2)
    args = DistillationArguments(
        output_dir=out_dir, report_to=[], use_cpu=True, max_steps=2, per_device_train_batch_size=per_device_batch,
        optim="sgd", learning_rate=0.5, save_strategy="no", disable_tqdm=True, seed=0, logging_steps=1,
        loss_chunk_size=5, soft_weight=0.6, hard_weight=0.4, dataloader_drop_last=True,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    data_collator = collate if collator == "plain" else PromptCompletionCollator(0, pack=collator == "packed")
    trainer = DistillationTrainer(student, teacher, args, train_dataset=lm_data(), data_collator=data_collator,
                                  processing_class=tokenizer())
    trainer.train()
    if trainer.is_world_process_zero():
        state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        state["world_size"] = torch.tensor(trainer.args.world_size)
        torch.save(state, os.path.join(out_dir, "final.pt"))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        # Tearing down gloo from Python can deadlock at interpreter exit (see tests/ddp_train.py); leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
