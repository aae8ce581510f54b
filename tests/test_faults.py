"""kill -9 at random (seeded) moments of a tiny recipe run, during training steps and checkpoint saves, then
`--resume_from_checkpoint last`: no progress is lost beyond the newest complete checkpoint, and the final
student equals the one of the same run left alone.

Each launch stops itself at the moment the seeded draw chose (tests/paused_recipe.py) and is killed there: the
moments are events of the run (a step, a file of a checkpoint), never timers, so the test does not depend on the
speed of the machine or on what else it runs."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from recipe_helpers import recipe_args, save_classifier, write_csv
from safetensors.torch import load_file
from testing_utils import HANG_TIMEOUT_S

from recipes import distil_bert

ROOT = Path(__file__).resolve().parent.parent
STEPS = 14  # a launch advances at most 2 steps before its kill: room for 5 kills and a last launch
KILLS = 5
POINTS = ("train", "weights", "optimizer-half", "rng", "state")  # tests/paused_recipe.py
TORCH_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")
SAFETY_S = HANG_TIMEOUT_S  # only against a hung child: the waits below end on events, not on time


def complete(folder: Path) -> bool:
    """What a checkpoint needs to resume exactly, each file readable to its end (checked here by loading them, not
    with the library's own check)."""
    try:
        load_file(folder / "model.safetensors")
        for name in TORCH_FILES:
            torch.load(folder / name, weights_only=False)
        json.loads((folder / "trainer_state.json").read_text())
    except Exception:
        return False
    return True


def complete_checkpoints(out: Path) -> list[int]:
    return sorted(int(d.name.split("-")[1]) for d in (out.glob("checkpoint-*") if out.is_dir() else []) if complete(d))


class Launcher:
    """tests/paused_recipe.py: each launch a child process forked from one launcher that imported the libraries once
    (the start-up of a Python process with torch and transformers is most of a tiny launch's time)."""

    def __init__(self):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        script = str(ROOT / "tests" / "paused_recipe.py")
        self.proc = subprocess.Popen([sys.executable, script], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.unread, self.current = b"", None

    def answer(self, timeout: float) -> dict:
        """The launcher's next line (unbuffered reads: a line already read must not wait for the pipe)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.unread:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "the launcher did not answer: a hung launch"
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            assert chunk, f"the launcher ended (exit code {self.proc.wait()})"
            self.unread += chunk
        line, self.unread = self.unread.split(b"\n", 1)
        return json.loads(line)

    def start(self, argv: list[str], log: Path, pause_at: str | None = None) -> Launch:
        """The recipe with `argv` in a new child process, its output into `log`; paused at `pause_at` if given."""
        job = {"argv": argv, "log": str(log), "pause_at": pause_at, "marker": f"{log}.paused"}
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        self.current = Launch(self, self.answer(SAFETY_S)["pid"])
        return self.current

    def close(self) -> None:
        """No process left behind: a child still paused (a failed test) is killed, then the launcher ends."""
        if self.current is not None and self.current.code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.current.pid, signal.SIGKILL)
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Launch:
    """One launch of a `Launcher`: its pid, `poll` and `wait` as for a `subprocess.Popen`."""

    def __init__(self, launcher: Launcher, pid: int):
        self.launcher, self.pid, self.code = launcher, pid, None

    def poll(self) -> int | None:
        if self.code is None:
            try:
                os.kill(self.pid, 0)  # still there (the launcher reaps its children as soon as they end)
            except ProcessLookupError:
                self.wait()
        return self.code

    def wait(self, timeout: float = SAFETY_S) -> int:
        if self.code is None:
            got = self.launcher.answer(timeout)
            assert got["pid"] == self.pid, got
            self.code = got["exit"]
        return self.code


def wait_for_pause(proc: Launch, log: Path) -> None:
    """Until this launch reports that it stopped at its chosen moment (a file only this launch writes)."""
    marker, deadline = Path(f"{log}.paused"), time.monotonic() + SAFETY_S
    while not marker.exists():
        assert proc.poll() is None, f"{log.name} ended before its kill:\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"{log.name} never reached its kill point:\n{log.read_text()[-2000:]}"
        time.sleep(0.05)


def kill_and_resume(launcher: Launcher, teacher, data, tmp_path: Path, common: list[str]):
    """KILLS launches killed at seeded moments, each resuming from the newest complete checkpoint, then one launch
    to the end: (kills, kills during a checkpoint save, [(newest checkpoint, log) of each resuming launch])."""
    rng = random.Random(0)
    out = tmp_path / "killed"
    kills, during_save, resumes = 0, 0, []
    for launch in range(KILLS + 1):
        newest = max(complete_checkpoints(out), default=0)
        resume = ["--resume_from_checkpoint", "last"] if newest else ["--overwrite_output_dir"]
        log_file = tmp_path / f"launch{launch}.log"
        pause_at = None
        if launch < KILLS:  # a random moment of the next two steps: a training step or a file of a checkpoint save
            point = POINTS[launch] if launch < len(POINTS) else rng.choice(POINTS)  # each kind at least once
            pause_at = f"{newest + rng.randint(1, 2)}:{point}"
        proc = launcher.start(recipe_args(teacher, data, out, *common, *resume), log_file, pause_at)
        if pause_at:
            wait_for_pause(proc, log_file)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            during_save += not pause_at.endswith(":train")
            after = complete_checkpoints(out)
            assert max(after, default=0) >= newest, (newest, after)  # a complete checkpoint never vanishes
        else:
            assert proc.wait(timeout=SAFETY_S) == 0, log_file.read_text()[-3000:]
        if newest:
            resumes.append((newest, log_file.read_text()))
    return kills, during_save, resumes


@pytest.mark.distributed
def test_kill_9_during_training_and_saving_loses_nothing(tmp_path):
    teacher = save_classifier(tmp_path / "teacher")
    data = write_csv(tmp_path / "train.csv", 64, seed=0), write_csv(tmp_path / "dev.csv", 8, seed=1)
    common = [
        "--student_num_layers",
        "2",
        "--hidden_weight",
        "1.0",
        "--max_steps",
        str(STEPS),
        "--seed",
        "3",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
        "--save_total_limit",
        "2",
    ]

    # The run left alone: in this process (the same arithmetic as a child process: one thread, seeded), on a thread
    # beside the launches below (they run in child processes; this process only waits for them meanwhile).
    failed, whole_argv = [], recipe_args(teacher, data, tmp_path / "whole", *common)

    def run_whole():
        try:
            distil_bert.main(whole_argv)
        except BaseException as err:  # re-raised below, in the test's thread
            failed.append(err)

    whole = threading.Thread(target=run_whole)
    whole.start()
    common = [*common, "--log_level", "info"]  # the killed runs log where they resume from

    launcher = Launcher()
    try:
        kills, during_save, resumes = kill_and_resume(launcher, teacher, data, tmp_path, common)
    finally:
        launcher.close()
    print(f"kill -9: {kills} kills ({during_save} during a checkpoint save), {len(resumes)} resumes")
    assert kills == KILLS and during_save >= 4 and len(resumes) >= KILLS - 1
    for newest, log in resumes:  # each resume continued from the newest complete checkpoint, not an earlier one
        match = re.search(r"Resuming training from checkpoint with epoch \d+ and global step (\d+)", log)
        assert match and int(match.group(1)) == newest, log[-2000:]

    whole.join()
    if failed:
        raise failed[0]
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)  # resume is exact: same arithmetic
