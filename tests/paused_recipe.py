"""recipes/distil_bert.py that stops at one chosen moment of its run and waits there to be killed.

    PAUSE_AT=STEP:POINT PAUSE_MARKER=FILE python tests/paused_recipe.py RECIPE_ARGS...

At POINT of global step STEP the process writes FILE and sleeps; the test then sends it SIGKILL. The kill therefore
lands exactly where the test chose, however fast or loaded the machine is (a timer cannot promise that). POINT:

- `train`: inside the forward/backward of step STEP (checkpoint-(STEP-1) is the newest one written);
- `weights`: saving checkpoint-STEP, its weights written, nothing else yet;
- `optimizer-half`: saving checkpoint-STEP, half of optimizer.pt written (a truncated file on disk);
- `rng`: saving checkpoint-STEP, optimizer and scheduler written, RNG state not yet;
- `state`: saving checkpoint-STEP, everything but trainer_state.json written.
"""

from __future__ import annotations

import io
import os
import sys
import time

import torch
from transformers import Trainer, TrainerState

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

POINTS = ("train", "weights", "optimizer-half", "rng", "state")


def pause() -> None:
    with open(os.environ["PAUSE_MARKER"], "w") as f:
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


if __name__ == "__main__":
    if os.environ.get("PAUSE_AT"):
        at_step, at_point = os.environ["PAUSE_AT"].split(":")
        assert at_point in POINTS, at_point
        install(int(at_step), at_point)
    from recipes import distil_bert

    distil_bert.main(sys.argv[1:])
