"""Several multi-process test scripts in one torchrun launch: one interpreter start-up and library import per rank
for all of them, instead of one launch per script.

    torchrun --standalone --nproc_per_node 2 tests/torchrun_jobs.py JOBS.json

JOBS.json is a list of [script, arguments] (tests/ddp_train.py, tests/ddp_chunked_train.py, tests/fsdp_train.py,
tests/fsdp_sampling.py, tests/ddp_generation_eval.py): each script's `run(arguments)` does in turn what
`torchrun ... SCRIPT ARGUMENTS` does (every job seeds what it draws, so its results do not depend on the jobs before
it). Every rank waits for the others after each job; at the end they leave as those scripts do (`ddp_train.leave`).
`conftest.torchrun_jobs` starts it.
"""

import importlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ddp_train import leave  # noqa: E402

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    for script, argv in jobs:
        rank = os.environ.get("RANK", "0")
        print(f"[rank {rank}] job {script} {' '.join(argv)}", flush=True)
        importlib.import_module(os.path.splitext(script)[0]).run(argv)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    leave()
