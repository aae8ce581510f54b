"""pytest set-up: the shared fixtures and markers (importing testing_utils sets the offline environment).

The tiny models, data and argument builders live in `testing_utils.py`; test files import them from there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from testing_utils import (  # noqa: F401 - docs/reliability.md names conftest.HANG_TIMEOUT_S
    HANG_TIMEOUT_S,
    make_tokenizer,
    run_to_completion,
)


@pytest.fixture
def tokenizer(tmp_path):
    """The tiny BERT WordPiece tokenizer (`make_tokenizer`), saved under tmp_path/tokenizer."""
    return make_tokenizer(tmp_path / "tokenizer")


def pytest_configure(config):
    config.addinivalue_line("markers", "distributed: multi-process runs (torchrun / accelerate launch, gloo on CPU)")
    config.addinivalue_line("markers", "torchrun_job(name): the test reads job `name` of the fixture torchrun_jobs")


# The two-process runs of the test scripts that the session's one torchrun launch can hold (tests/torchrun_jobs.py),
# by name: module, function and arguments, "{out}" standing for the job's output folder. A test module can add jobs
# of its own: @pytest.mark.torchrun_job(NAME, prepare=FN), FN(folder) writing the job's inputs under `folder` and
# returning (module, function, arguments).
SCRIPT_JOBS = {
    "ddp_train": ("ddp_train", "run", ["{out}", "4"]),
    "chunked": ("ddp_chunked_train", "run", ["{out}", "2"]),
    "packed": ("ddp_chunked_train", "run", ["{out}", "2", "packed"]),
}
LAST_JOBS = {  # after the prepared jobs: the FSDP2 scripts shard, the generation eval joins without a trainer
    "fsdp_train": ("fsdp_train", "run", ["{out}"]),
    "fsdp_sampling": ("fsdp_sampling", "run", ["{out}"]),
    "generation_eval": ("ddp_generation_eval", "run", ["{out}/metrics.json"]),
}


@pytest.fixture(scope="session")
def torchrun_jobs(request, tmp_path_factory) -> dict[str, Path]:
    """{job name: its output folder} of one `torchrun --nproc_per_node 2` launch (gloo, one thread per process) of
    tests/torchrun_jobs.py with the jobs that this session's selected tests name with `@pytest.mark.torchrun_job`:
    one interpreter start-up and import per process for all of them. A launch that hangs is retried once (seen once
    on a machine shared by several torchrun jobs)."""
    prepare = {}
    for item in request.session.items:
        for marker in item.iter_markers("torchrun_job"):
            prepare[marker.args[0]] = marker.kwargs.get("prepare")
    unknown = {name for name, fn in prepare.items() if fn is None and name not in {**SCRIPT_JOBS, **LAST_JOBS}}
    assert not unknown, f"no such torchrun job: {sorted(unknown)}"
    prepared = sorted(name for name, fn in prepare.items() if fn is not None)
    order = [n for n in SCRIPT_JOBS if n in prepare] + prepared + [n for n in LAST_JOBS if n in prepare]
    root = tmp_path_factory.mktemp("torchrun_jobs")
    folders, jobs = {}, []
    for name in order:
        folders[name] = root / name
        folders[name].mkdir()
        if prepare[name] is not None:
            module, function, argv = prepare[name](folders[name])
        else:
            module, function, argv = {**SCRIPT_JOBS, **LAST_JOBS}[name]
            argv = [a.replace("{out}", str(folders[name])) for a in argv]
        jobs.append([module, function, [str(a) for a in argv]])
    (root / "jobs.json").write_text(json.dumps(jobs))
    tests = Path(__file__).resolve().parent
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{tests.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    run_to_completion([*cmd, str(tests / "torchrun_jobs.py"), str(root / "jobs.json")], env, attempts=2)
    return folders
