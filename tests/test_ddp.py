"""Two CPU processes (torchrun, gloo) train like one process with the same global batch."""

import ddp_train
import pytest
import torch
from testing_utils import one_and_two_processes, requires_torchrun


@requires_torchrun
@pytest.mark.torchrun_job("ddp_train")  # tests/ddp_train.py OUT 4 on 2 processes
def test_two_process_ddp_matches_one_process_with_projections(tmp_path, torchrun_jobs):
    one, two = one_and_two_processes(ddp_train.run, tmp_path, ["8"], torchrun_jobs["ddp_train"])
    assert one.keys() == two.keys() and any(k.startswith("proj.") for k in one)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
