"""Two CPU processes (torchrun, gloo) train like one process with the same global batch."""

import os

import torch
from testing_utils import one_and_two_processes, requires_torchrun

SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_train.py")


@requires_torchrun
def test_two_process_ddp_matches_one_process_with_projections(tmp_path):
    one, two = one_and_two_processes(SCRIPT, tmp_path, ["8"], ["4"], attempts=2)
    assert one.keys() == two.keys() and any(k.startswith("proj.") for k in one)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
