"""The output folder of a recipe run: owned by one run (lock with run id), overwritten for real, resumed from
the newest complete checkpoint, written atomically."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from recipe_helpers import recipe_args, save_classifier, write_csv
from safetensors.torch import load_file
from testing_utils import tiny_bert

from hf_distill.recipes.output import (
    LOCK_NAME,
    MANIFEST_NAME,
    OutputFolder,
    _start_ticks,
    check_checkpoint_fits,
    input_paths,
    read_manifest,
    resolve_resume,
    save_final_model,
    what_works,
    write_json,
)
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
    (out / "notes.txt").write_text("left by the user")  # not written by the run: it stays
    second = _run(teacher, data, out, "--overwrite_output_dir", "--max_steps", "1", "--student_num_layers", "2")
    left = set(os.listdir(out))
    assert not any(name.startswith("checkpoint-") for name in left)
    assert (out / "notes.txt").read_text() == "left by the user"
    assert LOCK_NAME not in left and ".incomplete-save" not in left  # released, staging moved in
    manifest = read_manifest(str(out))  # what the second run wrote, recorded by name; the user's file is foreign
    assert {"model.safetensors", "config.json", "README.md", "distillation_results.json"} <= set(manifest["written"])
    assert manifest["foreign"] == ["notes.txt"] and [r["run_id"] for r in manifest["runs"]] == [second["run_id"]]
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
        str(out) + os.sep, ""
    )
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
    (tmp_path / "out" / LOCK_NAME).write_text(
        json.dumps({"run_id": "gone", "pid": dead.pid, "host": os.uname().nodename})
    )
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


def test_overwrite_never_deletes_what_the_arguments_name_nor_what_no_run_wrote(setup, tmp_path, caplog):
    """Issue 21: a --transfer_file, a local --dataset_name folder and the YAML config inside --output_dir survive
    --overwrite_output_dir (they are inputs, and no run wrote them); a foreign file stays and is reported."""
    teacher, (train, dev) = setup
    out = tmp_path / "out"
    first = _run(teacher, (train, dev), out, *SAVE_EACH_STEP, "--max_steps", "2")
    (out / "data").mkdir()  # a local dataset folder: load_dataset(folder) reads its train / validation files
    for name, path in (("train.csv", train), ("validation.csv", dev)):
        (out / "data" / name).write_text(Path(path).read_text())
    (out / "transfer.txt").write_text("text\n" + "\n".join(f"w{i} w{i + 1} w{i + 2}" for i in range(12)) + "\n")
    (out / "config.yaml").write_text(f"teacher_model_name_or_path: {teacher}\n")
    (out / "notes.txt").write_text("mine")
    before = {
        p: (out / p).read_bytes()
        for p in ("data/train.csv", "data/validation.csv", "transfer.txt", "config.yaml", "notes.txt")
    }
    argv = [
        str(out / "config.yaml"),
        *recipe_args(
            teacher, (train, dev), out, "--overwrite_output_dir", "--max_steps", "1", "--student_num_layers", "2"
        ),
    ]
    argv = [a for a in argv if a not in ("--train_file", "--validation_file", train, dev)]
    with caplog.at_level(logging.INFO):
        second = distil_bert.main(
            [*argv, "--dataset_name", str(out / "data"), "--transfer_file", str(out / "transfer.txt")]
        )
    assert {p: (out / p).read_bytes() for p in before} == before  # every input and the foreign file, untouched
    assert second["run_id"] != first["run_id"]
    assert second["levers"]["training_rows"] > second["levers"]["labelled_rows"]  # the transfer file was read
    assert not (out / "checkpoint-1").exists()  # the first run's checkpoints went
    assert "kept config.yaml, data, notes.txt, transfer.txt" in caplog.text  # reported


def test_overwrite_refuses_to_delete_an_input_the_previous_run_wrote(setup, tmp_path):
    """The previous run's student (or a checkpoint of it) given as this run's student: overwriting would delete it."""
    teacher, data = setup
    out = tmp_path / "out"
    _run(teacher, data, out, *SAVE_EACH_STEP, "--max_steps", "2")
    files = sorted(os.listdir(out))
    for student in (out / "checkpoint-2", out):
        with pytest.raises(ValueError, match=r"--overwrite_output_dir would delete \[.*out.*\]: an input of this run"):
            _run(teacher, data, out, "--overwrite_output_dir", "--student_model_name_or_path", str(student))
        assert sorted(os.listdir(out)) == files


def test_overwrite_refuses_a_folder_whose_files_no_run_recorded(tmp_path):
    """No manifest (another tool's folder, or a run from before manifests): nothing there is known to be a run's,
    and a file this run would write over stops it; files it would not touch are kept."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_text("somebody's model")
    with pytest.raises(
        ValueError,
        match=r"removes only what earlier runs wrote .*\['model.safetensors'\] were not "
        r"\(it has no manifest",
    ):
        OutputFolder(str(tmp_path / "out"), overwrite=True).check()
    (tmp_path / "out" / "model.safetensors").rename(tmp_path / "out" / "notes.md")
    folder = OutputFolder(str(tmp_path / "out"), overwrite=True)
    folder.check()
    folder.claim()
    folder.release()
    assert sorted(os.listdir(tmp_path / "out")) == [MANIFEST_NAME, "notes.md"]
    assert read_manifest(str(tmp_path / "out"))["foreign"] == ["notes.md"]


def test_input_paths_come_from_every_argument(tmp_path):
    """No hand list: any field of any argument dataclass that names an existing path is an input."""
    from dataclasses import dataclass

    @dataclass
    class Odd:
        some_new_option: str = str(tmp_path / "a.bin")
        many: tuple = (str(tmp_path / "b"), "not a path")
        output_dir: str = str(tmp_path)  # where the run writes: not an input
        missing_file: str = str(tmp_path / "nope.txt")
        number: int = 3

    (tmp_path / "a.bin").write_text("x")
    (tmp_path / "b").mkdir()
    (tmp_path / "c.yaml").write_text("{}")
    assert input_paths(Odd(), extra=[str(tmp_path / "c.yaml"), None]) == [
        str(tmp_path / "a.bin"),
        str(tmp_path / "b"),
        str(tmp_path / "c.yaml"),
    ]


def test_cache_cli_follows_the_output_folder_rules(setup, tmp_path):
    """Issue 21: the cache CLI wrote into an existing cache (16 rows silently became 8) and into its own input."""
    from datasets import load_from_disk

    from hf_distill.recipes.cache_cli import main as cache_main

    teacher, (train, dev) = setup  # train.csv: 32 rows, dev.csv: 8 rows

    def cache(data_file, out, *extra):
        cache_main(
            [
                "--teacher_model_name_or_path",
                teacher,
                "--data_file",
                str(data_file),
                "--max_length",
                "32",
                "--output_dir",
                str(out),
                "--device",
                "cpu",
                *extra,
            ]
        )

    out = tmp_path / "cached"
    cache(train, out)
    assert len(load_from_disk(str(out))) == 32
    with pytest.raises(ValueError, match=r"already holds a previous run .*Start over with --overwrite_output") as e:
        cache(dev, out)
    assert "resume" not in str(e.value) and len(load_from_disk(str(out))) == 32  # refused, nothing replaced
    (out / "notes.txt").write_text("mine")
    cache(dev, out, "--overwrite_output_dir")
    assert len(load_from_disk(str(out))) == 8 and (out / "notes.txt").read_text() == "mine"
    assert {"dataset_info.json", "state.json"} <= set(read_manifest(str(out))["written"])

    # its own input: the same folder, a folder holding the data file, a folder inside the input dataset
    with pytest.raises(ValueError, match=r"--output_dir .*cached is --dataset_path .*cached, an input of this run"):
        cache_main(
            [
                "--teacher_model_name_or_path",
                teacher,
                "--dataset_path",
                str(out),
                "--output_dir",
                str(out),
                "--overwrite_output_dir",
            ]
        )
    with pytest.raises(ValueError, match=r"contains --teacher_model_name_or_path .*; contains --data_file .*train"):
        cache(train, tmp_path, "--overwrite_output_dir")
    with pytest.raises(ValueError, match=r"is inside --dataset_path"):
        cache_main(
            ["--teacher_model_name_or_path", teacher, "--dataset_path", str(out), "--output_dir", str(out / "sub")]
        )
    with pytest.raises(ValueError, match=r"is --teacher_model_name_or_path"):
        cache(train, teacher, "--overwrite_output_dir")
    # a model folder (not an input) is not empty: refused without --overwrite_output_dir
    other = tmp_path / "other_model"
    save_classifier(other, layers=1)
    with pytest.raises(ValueError, match="already holds a previous run"):
        cache(dev, other)
    assert len(load_from_disk(str(out))) == 8


def test_core_cache_module_does_not_import_the_recipes_and_the_documented_command_works(tmp_path):
    code = "import sys, hf_distill.cache; print(sorted(m for m in sys.modules if m.startswith('hf_distill.recipes')))"
    # the two commands at once (one core each)
    imported, helped = (
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in ([sys.executable, "-c", code], [sys.executable, "-m", "hf_distill.cache", "--help"])
    )
    out, err = imported.communicate()
    assert imported.returncode == 0, err[-3000:]
    assert out.strip() == "[]"
    out, err = helped.communicate()
    assert helped.returncode == 0 and "--overwrite_output_dir" in out and "--teacher_model_name_or_path" in out


def test_a_stale_lock_is_known_by_pid_boot_and_start_time_not_by_pid_alone(tmp_path, caplog):
    """Issue 21: a restarted container runs the recipe as pid 1 again, so the dead run's lock names a live pid (the new
    process itself). The owner is the pid AND its start time on this boot."""
    folder = OutputFolder(str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    me = {
        "run_id": "old",
        "pid": os.getpid(),
        "host": os.uname().nodename,
        "start_ticks": _start_ticks(os.getpid()),
        "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
    }
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps(me))  # this very process: a live owner
    with pytest.raises(ValueError, match="in use by run old"):
        folder.claim()
    for stale in (
        {"start_ticks": me["start_ticks"] + 1},  # same pid, another process (the restarted container)
        {"boot_id": "another-boot", "pid": 1},
    ):  # written before the machine rebooted
        (tmp_path / "out" / LOCK_NAME).write_text(json.dumps({**me, **stale}))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            folder.claim()
        assert "taking over" in caplog.text and "from run old" in caplog.text
        assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["run_id"] == folder.run_id
        folder.release()
    other_host = {**me, "host": "elsewhere", "start_ticks": 1}  # cannot be judged from here: refused
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps(other_host))
    with pytest.raises(ValueError, match="in use by run old .* on elsewhere"):
        folder.claim()


@pytest.fixture
def three_checkpoints(setup, tmp_path):
    teacher, data = setup
    out = tmp_path / "out"
    _run(teacher, data, out, *SAVE_EACH_STEP, "--max_steps", "3")
    return teacher, data, out


@pytest.mark.parametrize(
    "name", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "model.safetensors"]
)
def test_resume_last_skips_a_checkpoint_with_any_truncated_file(three_checkpoints, name, caplog, tmp_path):
    """Issue 21: a truncated optimizer.pt beside a valid trainer_state.json (a power loss before the data reached the
    disk) was resumed; every file the Trainer writes must be whole."""
    _, _, out = three_checkpoints
    shutil.rmtree(out / "checkpoint-1")
    path = out / "checkpoint-3" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("last", str(out)) == str(out / "checkpoint-2")
    assert f"checkpoint-3: incomplete (truncated or unreadable {name}" in caplog.text.replace(str(out) + os.sep, "")
    with pytest.raises(ValueError, match=f"checkpoint-3 is incomplete \\(truncated or unreadable {name}"):
        resolve_resume(str(out / "checkpoint-3"), str(out))


def test_resuming_a_checkpoint_of_another_model_is_a_clear_error(three_checkpoints):
    """Issue 21: another size was a raw size-mismatch traceback; another depth only a warning (then training a partly
    fresh model)."""
    teacher, data, out = three_checkpoints
    with pytest.raises(
        ValueError,
        match=r"checkpoint-3 was written for another model than this run builds \(\d+ of "
        r"the model's tensors not in it \(e\.g\. .*layer\.2\.",
    ):
        _run(
            teacher,
            data,
            out,
            *SAVE_EACH_STEP,
            "--max_steps",
            "4",
            "--student_num_layers",
            "3",
            "--resume_from_checkpoint",
            "last",
        )
    with pytest.raises(
        ValueError,
        match=r"checkpoint-3 was written for another model .*tensor\(s\) of another shape "
        r"\(bert\.embeddings\.word_embeddings\.weight: \(\d+, 32\) in the "
        r"checkpoint, \(\d+, 16\) in the model",
    ):
        check_checkpoint_fits(str(out / "checkpoint-3"), tiny_bert(layers=2, hidden=16))
    check_checkpoint_fits(str(out / "checkpoint-3"), tiny_bert(layers=2, hidden=32))  # the same model: fine


def test_after_a_failed_final_save_every_refusal_says_the_one_thing_that_works(setup, tmp_path):
    """Issue 21: a plain rerun said "resume", and --resume_from_checkpoint last said "start without it"."""
    teacher, data = setup
    out = tmp_path / "out"

    def full_disk(trainer, output_dir):  # the staging folder half written, then the disk is full
        os.makedirs(os.path.join(output_dir, ".incomplete-save"))
        Path(output_dir, ".incomplete-save", "model.safetensors").write_bytes(b"\0" * 10)
        raise OSError(28, "No space left on device")

    with mock.patch("recipes.distil_bert.save_final_model", full_disk):
        with pytest.raises(OSError):
            _run(teacher, data, out, "--max_steps", "1", "--student_num_layers", "2")  # no checkpoints
    hint = what_works(str(out))
    assert hint.startswith("It holds no complete checkpoint to resume from: start over with --overwrite_output_dir")
    with pytest.raises(ValueError) as plain:
        _run(teacher, data, out, "--max_steps", "1", "--student_num_layers", "2")
    with pytest.raises(ValueError) as resume:
        _run(teacher, data, out, "--max_steps", "1", "--student_num_layers", "2", "--resume_from_checkpoint", "last")
    assert str(plain.value).endswith(hint) and str(resume.value).endswith(hint)
    assert "--resume_from_checkpoint last" not in hint
    _run(teacher, data, out, "--max_steps", "1", "--student_num_layers", "2", "--overwrite_output_dir")  # it works
    # with a complete checkpoint the advice is to resume, and that works too
    _run(teacher, data, out, *SAVE_EACH_STEP, "--max_steps", "1", "--overwrite_output_dir")
    with pytest.raises(ValueError, match=r"Continue it with --resume_from_checkpoint last \(from checkpoint-1\)"):
        _run(teacher, data, out, *SAVE_EACH_STEP, "--max_steps", "2")
    _run(teacher, data, out, *SAVE_EACH_STEP, "--max_steps", "2", "--resume_from_checkpoint", "last")


SECRET = "hf_" + "Sx7" * 8  # token-shaped


def _files_holding(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_no_secret_reaches_any_file_of_the_run(setup, tmp_path):
    """Issue 21: --hub_token and a token in --run_name were pickled into training_args.bin (folder + checkpoints)."""
    teacher, data = setup
    out = tmp_path / "out"
    _run(
        teacher, data, out, *SAVE_EACH_STEP, "--max_steps", "2", "--hub_token", SECRET, "--run_name", f"exp-{SECRET}-a"
    )
    saved = sorted(out.rglob("training_args.bin"))
    assert len(saved) == 3  # the student's folder and both checkpoints
    for path in saved:
        args = torch.load(path, weights_only=False)
        assert args.hub_token is None and args.run_name == "exp-REDACTED-a" and args.max_steps == 2, path
    assert _files_holding(out, SECRET) == [] and _files_holding(out, SECRET[3:]) == []


def test_the_trainer_itself_writes_redacted_arguments(tmp_path):
    """Without the recipes: DistillationTrainer's checkpoints and final save hold no token either; its own args keep
    the token (a push still works)."""
    from testing_utils import classification_data

    from hf_distill import DistillationArguments, DistillationTrainer

    args = DistillationArguments(
        output_dir=str(tmp_path / "o"),
        report_to=[],
        max_steps=1,
        use_cpu=True,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=1,
        hub_token=SECRET,
        run_name=f"r-{SECRET}",
    )
    trainer = DistillationTrainer(
        tiny_bert(layers=1, hidden=32), tiny_bert(layers=2, hidden=32), args, train_dataset=classification_data(4)
    )
    trainer.train()
    trainer.save_model()
    assert len(list((tmp_path / "o").rglob("training_args.bin"))) == 2
    assert _files_holding(tmp_path / "o", SECRET) == [] and trainer.args.hub_token == SECRET


def test_redacted_args_copy_leaves_the_original_alone():
    from transformers import TrainingArguments

    from hf_distill.redaction import redacted_args

    args = TrainingArguments(
        output_dir="x", hub_token=SECRET, run_name=f"a {SECRET}", report_to=[], label_names=[f"l-{SECRET}"]
    )
    safe = redacted_args(args)
    assert (safe.hub_token, safe.run_name, safe.label_names) == (None, "a REDACTED", ["l-REDACTED"])
    assert (args.hub_token, args.run_name) == (SECRET, f"a {SECRET}") and safe.output_dir == "x"
