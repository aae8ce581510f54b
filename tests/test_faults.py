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
from recipe_helpers import recipe_args, save_classifier, write_csv
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
STEPS = 24  # room for 5 kills: a launch advances at most ~5 steps before its kill
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


def checkpoint_started(out: Path, step: int) -> bool:
    return (out / f"checkpoint-{step}").is_dir()


@pytest.mark.distributed
def test_kill_9_during_training_and_saving_loses_nothing(tmp_path):
    teacher = save_classifier(tmp_path / "teacher")
    data = write_csv(tmp_path / "train.csv", 64, seed=0), write_csv(tmp_path / "dev.csv", 8, seed=1)
    common = ["--student_num_layers", "2", "--hidden_weight", "1.0", "--max_steps", str(STEPS), "--seed", "3",
              "--per_device_train_batch_size", "4", "--logging_steps", "1", "--log_level", "info",
              "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "2"]

    whole = start(recipe_args(teacher, data, tmp_path / "whole", *common), tmp_path / "whole.log")
    assert whole.wait(timeout=120) == 0, (tmp_path / "whole.log").read_text()[-3000:]

    rng = random.Random(0)
    out = tmp_path / "killed"
    kills, during_save, resumes = 0, 0, []
    for launch in range(KILLS + 1):
        newest = max(complete_checkpoints(out), default=0)
        resume = ["--resume_from_checkpoint", "last"] if newest else ["--overwrite_output_dir"]
        log_file = tmp_path / f"launch{launch}.log"
        proc = start(recipe_args(teacher, data, out, *common, *resume), log_file)
        if launch < KILLS:
            # A random moment: 0-0.2 s after the save of a random step 1-2 steps ahead begins (the checkpoint
            # folder appears), which lands in that save or in the training step after it.
            target = min(newest + rng.randint(1, 2), STEPS - 2)
            deadline = time.time() + 90
            while proc.poll() is None and not checkpoint_started(out, target) and time.time() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.2))
            assert proc.poll() is None, f"launch {launch} ended before its kill:\n{log_file.read_text()[-2000:]}"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            after = complete_checkpoints(out)
            started = [int(d.name.split("-")[1]) for d in out.glob("checkpoint-*")]
            during_save += max(started) > max(after, default=0)  # the newest folder is half written
            assert max(after, default=0) >= newest, (newest, after)  # a complete checkpoint never vanishes
        else:
            assert proc.wait(timeout=120) == 0, log_file.read_text()[-3000:]
        if newest:
            resumes.append((newest, log_file.read_text()))
    print(f"kill -9: {kills} kills ({during_save} during a checkpoint save), {len(resumes)} resumes")
    assert kills == KILLS and len(resumes) >= KILLS - 1
    for newest, log in resumes:  # each resume continued from the newest complete checkpoint, not an earlier one
        match = re.search(r"Resuming training from checkpoint with epoch \d+ and global step (\d+)", log)
        assert match and int(match.group(1)) == newest, log[-2000:]

    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)  # resume is exact: same arithmetic
