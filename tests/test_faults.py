"""kill -9 at random (seeded) moments of a tiny recipe run, during training steps and checkpoint saves, then
`--resume_from_checkpoint last`: no progress is lost beyond the newest complete checkpoint, and the final
student equals the one of the same run left alone."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_recipes import recipe_args, save_classifier, write_csv

ROOT = Path(__file__).resolve().parent.parent
STEPS = 12
KILLS = 5
# What a checkpoint needs to resume exactly (the Trainer writes trainer_state.json after the others).
CHECKPOINT_FILES = {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}


def complete_checkpoints(out: Path) -> list[int]:
    found = []
    for d in out.glob("checkpoint-*") if out.is_dir() else []:
        if CHECKPOINT_FILES <= set(os.listdir(d)):
            found.append(int(d.name.split("-")[1]))
    return sorted(found)


def start(argv: list[str], log: Path) -> subprocess.Popen:
    """The recipe in a child process, its output into `log` (a pipe could fill up and stall it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, str(ROOT / "recipes" / "distil_bert.py"), *argv], env=env,
                                stdout=f, stderr=subprocess.STDOUT)


@pytest.mark.distributed
def test_kill_9_during_training_and_saving_loses_nothing(tmp_path):
    teacher = save_classifier(tmp_path / "teacher")
    data = write_csv(tmp_path / "train.csv", 48, seed=0), write_csv(tmp_path / "dev.csv", 8, seed=1)
    common = ["--student_num_layers", "2", "--hidden_weight", "1.0", "--max_steps", str(STEPS), "--seed", "3",
              "--per_device_train_batch_size", "4", "--logging_steps", "1", "--log_level", "info"]
    saving = ["--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "2"]

    whole = start(recipe_args(teacher, data, tmp_path / "whole", *common, *saving), tmp_path / "whole.log")
    assert whole.wait(timeout=120) == 0, (tmp_path / "whole.log").read_text()[-3000:]

    rng = random.Random(0)
    out = tmp_path / "killed"
    kills, resumes = 0, []
    while True:
        resume = ["--resume_from_checkpoint", "last"] if complete_checkpoints(out) else ["--overwrite_output_dir"]
        newest = max(complete_checkpoints(out), default=0)
        log_file = tmp_path / f"launch{kills + len(resumes)}.log"
        proc = start(recipe_args(teacher, data, out, *common, *saving, *resume), log_file)
        if kills < KILLS:
            # Wait for the first step of this launch (a new checkpoint folder), then kill at a random moment of
            # the ~1 s of steps and saves that follow.
            deadline = time.time() + 90
            while proc.poll() is None and time.time() < deadline:
                if any(int(d.name.split("-")[1]) > newest for d in out.glob("checkpoint-*")):
                    break
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 1.0))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                after = complete_checkpoints(out)
                assert max(after, default=0) >= newest, (newest, after)  # a complete checkpoint never vanishes
                log = log_file.read_text()
                if resume[0] == "--resume_from_checkpoint":
                    resumes.append((newest, log))
                continue
        code = proc.wait(timeout=120)
        log = log_file.read_text()
        assert code == 0, log[-3000:]
        if resume[0] == "--resume_from_checkpoint":
            resumes.append((newest, log))
        break
    assert kills == KILLS and resumes
    for newest, log in resumes:  # each resume continued from the newest complete checkpoint, not earlier
        match = re.search(r"Continuing training from global step (\d+)", log)
        assert match and int(match.group(1)) == newest, log[-2000:]

    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)  # resume is exact: same arithmetic
