"""recipes/distil_bert.py runs that each stop at one chosen moment and wait there to be killed (tests/test_faults.py).

    python tests/paused_recipe.py          # a launcher: one launch per line on stdin (below)

The launcher imports the libraries once; each launch is a child process forked from it (nothing has run in the
launcher but imports, so each child starts its run as a fresh process would, without paying the start-up again).
A line on stdin is {"argv": RECIPE_ARGS, "log": FILE, "pause_at": "STEP:POINT" or null, "marker": FILE}; the launcher
answers {"pid": PID} on stdout, then {"pid": PID, "exit": CODE} when that child ended (-9 for a SIGKILL), and only then
reads the next line. The child's output goes to "log" (a pipe could fill up and stall it).

At POINT of global step STEP the child writes "marker" and sleeps; the test then sends it SIGKILL. The kill therefore
lands exactly where the test chose, however fast or loaded the machine is (a timer cannot promise that). POINT:

- `train`: inside the forward/backward of step STEP (checkpoint-(STEP-1) is the newest one written);
- `weights`: saving checkpoint-STEP, its weights written, nothing else yet;
- `optimizer-half`: saving checkpoint-STEP, half of optimizer.pt written (a truncated file on disk);
- `rng`: saving checkpoint-STEP, optimizer and scheduler written, RNG state not yet;
- `state`: saving checkpoint-STEP, everything but trainer_state.json written.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import traceback

import torch
from transformers import Trainer, TrainerState

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

POINTS = ("train", "weights", "optimizer-half", "rng", "state")
MARKER = [""]  # the file that says "paused here" (set per launch)


def pause() -> None:
    with open(MARKER[0], "w") as f:
        f.write(str(os.getpid()))
    while True:  # until the test's SIGKILL
        time.sleep(1)


def install(step: int, point: str) -> None:
    folder = f"checkpoint-{step}"

    def saving_this(output_dir) -> bool:
        return os.path.basename(os.path.normpath(str(output_dir))) == folder

    training_step = Trainer.training_step

    def paused_training_step(self, *args, **kwargs):
        loss = training_step(self, *args, **kwargs)
        if point == "train" and self.state.global_step == step - 1:
            pause()
        return loss

    save_opt = Trainer._save_optimizer_and_scheduler

    def paused_save_opt(self, output_dir):
        if point == "weights" and saving_this(output_dir):
            pause()
        return save_opt(self, output_dir)

    save_rng = Trainer._save_rng_state

    def paused_save_rng(self, output_dir):
        if point == "rng" and saving_this(output_dir):
            pause()
        return save_rng(self, output_dir)

    save_json = TrainerState.save_to_json

    def paused_save_json(self, json_path):
        if point == "state" and saving_this(os.path.dirname(json_path)):
            pause()
        return save_json(self, json_path)

    torch_save = torch.save

    def half_torch_save(obj, f, *args, **kwargs):
        if (
            point == "optimizer-half"
            and isinstance(f, (str, os.PathLike))
            and str(f).endswith("optimizer.pt")
            and saving_this(os.path.dirname(str(f)))
        ):
            buffer = io.BytesIO()
            torch_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            with open(f, "wb") as out:
                out.write(data[: len(data) // 2])
                out.flush()
                os.fsync(out.fileno())
            pause()
        return torch_save(obj, f, *args, **kwargs)

    Trainer.training_step = paused_training_step
    Trainer._save_optimizer_and_scheduler = paused_save_opt
    Trainer._save_rng_state = paused_save_rng
    TrainerState.save_to_json = paused_save_json
    torch.save = half_torch_save


def launch(job: dict, recipe_main) -> None:
    """In the forked child: the launch `job`, then leave with its exit code (never back into the launcher's loop)."""
    code = 1
    try:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        MARKER[0] = job["marker"]
        if job["pause_at"]:
            at_step, at_point = job["pause_at"].split(":")
            assert at_point in POINTS, at_point
            install(int(at_step), at_point)
        recipe_main(job["argv"])
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    answers = os.fdopen(os.dup(1), "w")  # stdout carries the answers only: what the libraries print goes to stderr
    os.dup2(2, 1)
    from recipes import distil_bert

    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            launch(job, distil_bert.main)
        print(json.dumps({"pid": pid}), file=answers, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "exit": os.waitstatus_to_exitcode(status)}), file=answers, flush=True)
