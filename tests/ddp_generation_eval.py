"""evaluate_generation with sampling on a tiny GPT-2, alone or under torchrun; rank 0 writes the metrics as JSON.

Usage: python tests/ddp_generation_eval.py OUT.json   (torchrun --nproc_per_node 2 ... for two processes)
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from accelerate import PartialState
from ddp_train import leave
from testing_utils import make_tokenizer, tiny_gpt2
from transformers import GenerationConfig

from hf_distill import evaluate_generation


def metrics() -> dict:
    tok = make_tokenizer(tempfile.mkdtemp())
    student, teacher = tiny_gpt2(layers=1, hidden=32, seed=1), tiny_gpt2(layers=2, hidden=32, seed=2)
    rows = [
        {
            "input_ids": list(range(5 + i, 7 + i + i % 3)) + [20 + i, 3],
            "labels": [-100] * (2 + i % 3) + [20 + i, 3],
            "answer": f"w{15 + i}",
        }
        for i in range(11)
    ]
    config = GenerationConfig(max_new_tokens=6, do_sample=True, eos_token_id=3, pad_token_id=0)
    result = evaluate_generation(
        student,
        rows,
        tok,
        config,
        teacher=teacher,
        batch_size=3,
        seed=7,
        answer_checker=lambda text, ex: text.split()[:1] == [ex["answer"]],
    )
    return result


def main(out: str) -> None:
    state = PartialState(cpu=True)  # torchrun: joins the process group (gloo)
    result = metrics()
    if state.is_main_process:
        with open(out, "w") as f:
            json.dump({**result, "world": state.num_processes}, f)
    state.wait_for_everyone()


def run(argv: list[str]) -> None:
    """The command line's work: `main(OUT.json)`."""
    main(argv[0])


if __name__ == "__main__":
    run(sys.argv[1:])
    leave()  # see tests/ddp_train.py: tearing gloo down from Python can hang
