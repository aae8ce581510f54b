"""Several multi-process test scripts in one torchrun launch: one interpreter start-up and library import per rank
for all of them, instead of one launch per script.

    torchrun --standalone --nproc_per_node 2 tests/torchrun_jobs.py JOBS.json

JOBS.json is a list of [module, function, arguments]: the test scripts' `run(arguments)` (tests/ddp_train.py,
tests/ddp_chunked_train.py, tests/fsdp_train.py, tests/fsdp_sampling.py, tests/ddp_generation_eval.py) do what
`torchrun ... SCRIPT ARGUMENTS` does; a recipe's `main(arguments)` (recipes.distil_bert, recipes.distil_causal_lm)
what `torchrun ... RECIPE
ARGUMENTS` does. They run in turn (every job seeds what it draws, so its results do not depend on the jobs before it),
every rank waiting for the others after each. The process group serves them all: a recipe's closing
`Accelerator.end_training` (which tears it down) is left to the end, where the ranks leave as the test scripts do
(`ddp_train.leave`). `conftest.torchrun_jobs` starts it.
"""

import importlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # recipes
from ddp_train import leave  # noqa: E402

if __name__ == "__main__":
    from accelerate import Accelerator

    Accelerator.end_training = lambda self: None  # the process group serves the next jobs; leave() ends it all
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    for module, function, argv in jobs:
        print(f"[rank {os.environ.get('RANK', '0')}] job {module}.{function} {' '.join(argv)}", flush=True)
        getattr(importlib.import_module(module), function)(argv)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    leave()
