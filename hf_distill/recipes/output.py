"""The output folder of a recipe run: checked before anything loads (writable, free space, previous run),
owned by one run at a time (a lock file with the run id), overwritten for real when asked, resumed from the
newest complete checkpoint, and written atomically at the end."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

LOCK_NAME = ".hf_distill.lock"
STAGING_NAME = ".incomplete-save"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")
# Never uploaded with the student: intermediate checkpoints, logs, the lock and the pickled arguments.
PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", "runs/**", "*.pt", "training_args.bin", LOCK_NAME,
               f"{STAGING_NAME}/**"]
MIN_FREE_BYTES = 50 * 2**20


# ---- checkpoints -----------------------------------------------------------------------------------


def checkpoint_problem(folder: str) -> str | None:
    """Why `folder` cannot be resumed from (None when it is complete): the Trainer writes trainer_state.json after
    the weights, optimizer and RNG states, so a checkpoint cut short by a kill lacks it or has truncated weights."""
    state = os.path.join(folder, "trainer_state.json")
    if not os.path.isfile(state):
        return "no trainer_state.json"
    try:
        with open(state, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as e:
        return f"unreadable trainer_state.json ({e})"
    weights = [name for name in WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    if not weights:
        return f"no model weights ({' / '.join(WEIGHT_FILES[:3])})"
    from safetensors import safe_open

    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            try:
                with safe_open(os.path.join(folder, name), "pt"):
                    pass
            except Exception as e:  # safetensors checks the header against the file size: truncation shows here
                return f"truncated or unreadable {name} ({e})"
    return None


def checkpoints(folder: str) -> list[str]:
    """checkpoint-N folders of `folder`, newest (highest N) first."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(folder) if (m := CHECKPOINT.match(name))]
    return [os.path.join(folder, name) for _, name in sorted(found, reverse=True)
            if os.path.isdir(os.path.join(folder, name))]


def resolve_resume(resume: str | None, folder: str) -> str | None:
    """The checkpoint to resume: `last` = the newest COMPLETE checkpoint of `folder` (incomplete ones are skipped
    with a warning), or the given checkpoint folder, which must be complete."""
    if resume is None:
        return None
    if resume in ("last", "true", "True"):
        skipped = []
        for path in checkpoints(folder):
            problem = checkpoint_problem(path)
            if problem is None:
                for bad, why in skipped:
                    logger.warning("not resuming from %s: incomplete (%s; the run was probably stopped while saving "
                                   "it); resuming from %s instead.", bad, why, path)
                return path
            skipped.append((path, problem))
        details = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in skipped)
        raise ValueError(f"--resume_from_checkpoint {resume} but {folder} holds no complete checkpoint-* folder"
                         f"{' (' + details + ')' if details else ''}. Start without --resume_from_checkpoint.")
    if not os.path.isdir(resume):
        raise ValueError(f"--resume_from_checkpoint {resume} is not a folder; give a checkpoint-N folder or 'last'.")
    problem = checkpoint_problem(resume)
    if problem is not None:
        raise ValueError(f"--resume_from_checkpoint {resume} is incomplete ({problem}); give an older checkpoint or "
                         "'last' (the newest complete one).")
    return resume


# ---- the folder -----------------------------------------------------------------------------------------


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class OutputFolder:
    """`path` belongs to the run `run_id` between `claim()` and `release()`."""

    path: str
    overwrite: bool = False
    resume: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def lock_path(self) -> str:
        return os.path.join(self.path, LOCK_NAME)

    def check(self, inputs: list[str] = (), needed_bytes: int = MIN_FREE_BYTES) -> None:
        """Everything about the folder that can be wrong, checked before training and without writing to it."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"--output_dir {self.path} is a file; give a folder (it is created if missing).")
        base = _existing_ancestor(self.path)
        if not os.path.isdir(base):
            raise ValueError(f"--output_dir {self.path} cannot be created: {base} is a file, not a folder.")
        try:
            with tempfile.TemporaryFile(dir=base):
                pass
        except OSError as e:
            raise ValueError(f"--output_dir {self.path} is not writable ({base}: {e.strerror}); choose a folder "
                             "you can write to.") from None
        free = shutil.disk_usage(base).free
        if free < needed_bytes:
            raise ValueError(f"--output_dir {self.path}: only {free / 2**20:.0f} MiB free on its disk, about "
                             f"{needed_bytes / 2**20:.0f} MiB needed (student, checkpoints with optimizer states); "
                             "free some space or choose another --output_dir.")
        if self.overwrite and self.resume is not None:
            raise ValueError("--overwrite_output_dir deletes the checkpoints that --resume_from_checkpoint would "
                             "resume; pass one of them (e.g. --overwrite_output_dir false to resume).")
        if self.overwrite and os.path.isdir(self.path):
            real = os.path.realpath(self.path)
            precious = {os.path.realpath(p) for p in (os.sep, os.path.expanduser("~"), os.getcwd())}
            if real in precious or _inside(os.getcwd(), real):
                raise ValueError(f"--overwrite_output_dir would delete {self.path} (the current, home or root "
                                 "folder); give a dedicated --output_dir.")
            held = [p for p in inputs if _inside(p, real)]
            if held:
                raise ValueError(f"--overwrite_output_dir would delete {held}, inputs of this run inside "
                                 f"--output_dir {self.path}; move them or choose another --output_dir.")
        self._check_previous_run()

    def _previous_run(self) -> list[str]:
        if not os.path.isdir(self.path):
            return []
        return sorted(name for name in os.listdir(self.path) if name != LOCK_NAME)

    def _check_previous_run(self) -> None:
        found = self._previous_run()
        if found and not self.overwrite and self.resume is None:
            raise ValueError(
                f"--output_dir {self.path} already holds a previous run ({', '.join(found[:5])}); pass "
                "--overwrite_output_dir to replace it, --resume_from_checkpoint last (or a checkpoint folder) to "
                "continue it, or choose another --output_dir."
            )

    def _read_lock(self) -> dict:
        try:
            with open(self.lock_path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def claim(self) -> None:
        """Take the folder for this run (main process only): create it, write the lock, and with overwrite delete
        everything a previous run left (checkpoints included). A folder held by a live run is an error."""
        os.makedirs(self.path, exist_ok=True)
        owner = {"run_id": self.run_id, "pid": os.getpid(), "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for attempt in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                held = self._read_lock()
                stale = held.get("host") == owner["host"] and isinstance(held.get("pid"), int) and not _pid_alive(
                    held["pid"])
                if attempt == 0 and stale:
                    logger.warning("taking over %s from run %s (pid %s, no longer running).", self.path,
                                   held.get("run_id"), held.get("pid"))
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.lock_path)
                    continue
                raise ValueError(
                    f"--output_dir {self.path} is in use by run {held.get('run_id', '?')} (pid "
                    f"{held.get('pid', '?')} on {held.get('host', '?')}, started {held.get('started', '?')}); wait "
                    f"for it to finish or choose another --output_dir (if that run is dead, delete {self.lock_path})."
                ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(owner, f)
        try:
            if self.overwrite and (previous := self._previous_run()):
                for name in previous:
                    target = os.path.join(self.path, name)
                    if os.path.isdir(target) and not os.path.islink(target):
                        shutil.rmtree(target)
                    else:
                        os.remove(target)
                logger.info("--overwrite_output_dir: removed the previous run in %s (%s)", self.path,
                            ", ".join(previous[:5]) + (", ..." if len(previous) > 5 else ""))
            else:  # another run may have finished in this folder since check()
                self._check_previous_run()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._read_lock().get("run_id") == self.run_id:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.lock_path)


def needed_bytes(model_paths: list[str], args) -> int:
    """Rough disk need: the largest local model's weights (the student is no bigger) for the final save, plus
    3x that (weights + Adam's two moments) per kept checkpoint."""
    sizes = [0]
    for path in model_paths:
        if path and os.path.isdir(path):
            sizes.append(sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
                             if f.endswith((".safetensors", ".bin"))))
    kept = 0 if str(getattr(args.save_strategy, "value", args.save_strategy)) == "no" else (args.save_total_limit or 1)
    return max(MIN_FREE_BYTES, max(sizes) * (1 + 3 * kept))


def save_final_model(trainer, output_dir: str) -> None:
    """`trainer.save_model` into a staging folder, then moved into `output_dir` by renames: a crash or a full disk
    never leaves a half-written weights or tokenizer file beside a finished-looking run. Call on every process
    (sharded models are gathered collectively)."""
    staging = os.path.join(output_dir, STAGING_NAME)
    if trainer.is_world_process_zero() and os.path.isdir(staging):
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(staging)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        for name in os.listdir(staging):
            target = os.path.join(output_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging, name), target)
        os.rmdir(staging)
    trainer.accelerator.wait_for_everyone()


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: str, payload: dict) -> None:
    """Written to a temporary file then renamed (never a truncated JSON); NaN/inf become null (valid JSON)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_finite_or_none(payload), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
