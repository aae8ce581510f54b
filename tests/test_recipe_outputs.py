"""The output folder of a recipe run: owned by one run (lock with run id), overwritten for real, resumed from
the newest complete checkpoint, written atomically."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recipe_helpers import recipe_args, save_classifier, write_csv
from safetensors.torch import load_file

from hf_distill.recipes.output import LOCK_NAME, OutputFolder, resolve_resume, save_final_model, write_json
from recipes import distil_bert

SAVE_EACH_STEP = ["--save_strategy", "steps", "--save_steps", "1", "--student_num_layers", "2", "--seed", "3"]


@pytest.fixture
def setup(tmp_path):
    teacher = save_classifier(tmp_path / "teacher")
    return teacher, (write_csv(tmp_path / "train.csv", 32, 0), write_csv(tmp_path / "dev.csv", 8, 1))


def _run(teacher, data, out, *extra):
    # recipe_args sets --save_strategy no first; later flags win
    return distil_bert.main(recipe_args(teacher, data, out, *extra))


def test_overwrite_removes_the_previous_run_and_its_checkpoints(setup, tmp_path):
    teacher, data = setup
    out = tmp_path / "out"
    first = _run(teacher, data, out, *SAVE_EACH_STEP, "--max_steps", "2")
    assert {"checkpoint-1", "checkpoint-2"} <= set(os.listdir(out))
    (out / "notes.txt").write_text("left by the user")
    second = _run(teacher, data, out, "--overwrite_output_dir", "--max_steps", "1", "--student_num_layers", "2")
    left = set(os.listdir(out))
    assert not any(name.startswith("checkpoint-") for name in left) and "notes.txt" not in left
    assert LOCK_NAME not in left and ".incomplete-save" not in left  # released, staging moved in
    saved = json.loads((out / "distillation_results.json").read_text())
    assert saved["run_id"] == second["run_id"] != first["run_id"]
    assert [e["step"] for e in saved["train_log"]] == [1]  # the new run's log only
    # nothing of the old run is left to resume by mistake
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        _run(teacher, data, out, "--resume_from_checkpoint", "last")


def test_resume_last_skips_an_incomplete_checkpoint_and_matches_an_uninterrupted_run(setup, tmp_path, caplog):
    teacher, data = setup
    out = tmp_path / "out"
    _run(teacher, data, out, *SAVE_EACH_STEP, "--max_steps", "3")
    # a kill during the save of checkpoint-3: weights cut in half; checkpoint-2 lost its trainer_state.json
    weights = out / "checkpoint-3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("last", str(out)) == str(out / "checkpoint-1")
    assert "checkpoint-3: incomplete (truncated or unreadable model.safetensors" in caplog.text.replace(
        str(out) + os.sep, "")
    assert "checkpoint-2: incomplete (no trainer_state.json" in caplog.text.replace(str(out) + os.sep, "")
    with pytest.raises(ValueError, match="is incomplete \\(no trainer_state.json\\)"):
        resolve_resume(str(out / "checkpoint-2"), str(out))

    resumed = _run(teacher, data, out, *SAVE_EACH_STEP, "--max_steps", "3", "--resume_from_checkpoint", "last")
    assert [e["step"] for e in resumed["train_log"]] == [1, 2, 3]  # step 1 from checkpoint-1, then 2 and 3
    _run(teacher, data, tmp_path / "straight", *SAVE_EACH_STEP, "--max_steps", "3")
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_the_output_folder_belongs_to_one_run(tmp_path, caplog):
    folder = str(tmp_path / "out")
    first, second = OutputFolder(folder), OutputFolder(folder)
    first.claim()
    owner = json.loads((tmp_path / "out" / LOCK_NAME).read_text())
    assert owner["run_id"] == first.run_id and owner["pid"] == os.getpid()
    with pytest.raises(ValueError, match=f"in use by run {first.run_id} \\(pid {os.getpid()} "):
        second.claim()
    second.release()  # not its lock: left alone
    assert (tmp_path / "out" / LOCK_NAME).exists()
    first.release()
    assert not (tmp_path / "out" / LOCK_NAME).exists()

    # a run killed without releasing its lock: a dead pid on this host is taken over, with a warning
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps({"run_id": "gone", "pid": dead.pid,
                                                          "host": os.uname().nodename}))
    with caplog.at_level(logging.WARNING):
        second.claim()
    assert "from run gone (pid" in caplog.text
    assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["run_id"] == second.run_id
    second.release()


def test_a_run_finished_in_the_folder_meanwhile_is_not_written_over(tmp_path):
    folder = OutputFolder(str(tmp_path / "out"))
    folder.check()  # empty: fine
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_text("another run's model")
    with pytest.raises(ValueError, match="already holds a previous run \\(model.safetensors\\)"):
        folder.claim()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


class _FakeTrainer:
    """What save_final_model uses of a Trainer; `fail` simulates a full disk in the middle of the save."""

    def __init__(self, fail: bool):
        self.fail = fail
        self.accelerator = type("Acc", (), {"wait_for_everyone": staticmethod(lambda: None)})()

    def is_world_process_zero(self):
        return True

    def save_model(self, folder):
        os.makedirs(folder, exist_ok=True)
        Path(folder, "model.safetensors").write_text("new weights")
        if self.fail:
            Path(folder, "tokenizer.json").write_text("")  # a 0-byte file, then the disk is full
            raise OSError(28, "No space left on device")
        Path(folder, "tokenizer.json").write_text("{}")


def test_final_save_is_atomic(tmp_path):
    (tmp_path / "model.safetensors").write_text("old weights")
    with pytest.raises(OSError, match="No space left"):
        save_final_model(_FakeTrainer(fail=True), str(tmp_path))
    assert (tmp_path / "model.safetensors").read_text() == "old weights" and not (tmp_path / "tokenizer.json").exists()
    save_final_model(_FakeTrainer(fail=False), str(tmp_path))  # the next attempt cleans the staging folder
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "tokenizer.json"]
    assert (tmp_path / "model.safetensors").read_text() == "new weights"


def test_results_json_has_no_bare_nan(tmp_path):
    path = tmp_path / "r.json"
    write_json(str(path), {"a": float("nan"), "b": [1.5, float("inf")], "c": {"d": 2}})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None], "c": {"d": 2}}
    assert "NaN" not in path.read_text() and not (tmp_path / "r.json.tmp").exists()
