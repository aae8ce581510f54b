"""pytest set-up: the shared fixtures and markers (importing testing_utils sets the offline environment).

The tiny models, data and argument builders live in `testing_utils.py`; they are re-exported here for tests
that still import them from `conftest`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from testing_utils import (  # noqa: F401 - re-exported for tests that import them from conftest
    HANG_TIMEOUT_S,
    TEST_ARGS,
    TOKENS,
    TORCHRUN,
    VOCAB,
    WORDS,
    bert_config,
    classification_data,
    distillation_args,
    fixed_batch,
    gpt2_config,
    llama_config,
    lm_collate,
    lm_data,
    lm_tokenizer,
    make_tokenizer,
    run_to_completion,
    tiny_bert,
    tiny_distilbert,
    tiny_gpt2,
    tiny_llama,
    tiny_lm,
    tiny_lm_config,
    tiny_roberta,
)


@pytest.fixture
def tokenizer(tmp_path):
    """The tiny BERT WordPiece tokenizer (`make_tokenizer`), saved under tmp_path/tokenizer."""
    return make_tokenizer(tmp_path / "tokenizer")


def pytest_configure(config):
    config.addinivalue_line("markers", "distributed: multi-process runs (torchrun / accelerate launch, gloo on CPU)")
    config.addinivalue_line("markers", "torchrun_job(name): the test reads job `name` of the fixture torchrun_jobs")


# The two-process runs of the test scripts that the session's one torchrun launch can hold (tests/torchrun_jobs.py),
# by name: the script and its arguments, "{out}" standing for the job's output folder.
TORCHRUN_JOBS = {
    "ddp_train": ("ddp_train.py", ["{out}", "4"]),
    "chunked": ("ddp_chunked_train.py", ["{out}", "2"]),
    "packed": ("ddp_chunked_train.py", ["{out}", "2", "packed"]),
    "fsdp_train": ("fsdp_train.py", ["{out}"]),
    "fsdp_sampling": ("fsdp_sampling.py", ["{out}"]),
    "generation_eval": ("ddp_generation_eval.py", ["{out}/metrics.json"]),
}


@pytest.fixture(scope="session")
def torchrun_jobs(request, tmp_path_factory) -> dict[str, Path]:
    """{job name: its output folder} of one `torchrun --nproc_per_node 2` launch (gloo, one thread per process) of
    tests/torchrun_jobs.py with the jobs of TORCHRUN_JOBS that this session's selected tests name with
    `@pytest.mark.torchrun_job(NAME)`: one interpreter start-up and import per process for all of them. A launch
    that hangs is retried once (seen once on a machine shared by several torchrun jobs)."""
    wanted = {m.args[0] for item in request.session.items for m in item.iter_markers("torchrun_job")}
    unknown = wanted - set(TORCHRUN_JOBS)
    assert not unknown, f"no such torchrun job: {sorted(unknown)}"
    root = tmp_path_factory.mktemp("torchrun_jobs")
    folders, jobs = {}, []
    for name, (script, argv) in TORCHRUN_JOBS.items():
        if name in wanted:
            folders[name] = root / name
            folders[name].mkdir()
            jobs.append([script, [a.replace("{out}", str(folders[name])) for a in argv]])
    (root / "jobs.json").write_text(json.dumps(jobs))
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tests.parent)}
    driver = tests / "torchrun_jobs.py"
    run_to_completion(
        [TORCHRUN, "--nproc_per_node", "2", "--standalone", str(driver), str(root / "jobs.json")], env, attempts=2
    )
    return folders
