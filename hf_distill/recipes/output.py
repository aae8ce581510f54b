"""The output folder of a recipe run: checked before anything loads (writable, free space, previous run),
owned by one run at a time (a lock file with the run id and who holds it), with a manifest of what the runs wrote
(`--overwrite_output_dir` removes exactly that, never an input of the run nor anything else), resumed from the
newest complete checkpoint, and written atomically at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fnmatch
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
import zipfile
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

LOCK_NAME = ".hf_distill.lock"
MANIFEST_NAME = ".hf_distill_manifest.json"
STAGING_NAME = ".incomplete-save"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
# Never uploaded with the student: intermediate checkpoints, logs, the lock and the pickled arguments.
PUSH_IGNORE = [
    "checkpoint-*",
    "checkpoint-*/**",
    "runs/**",
    "*.pt",
    "training_args.bin",
    LOCK_NAME,
    MANIFEST_NAME,
    f"{STAGING_NAME}/**",
]
# What a run creates in its output folder without naming each file first (the Trainer's checkpoints, the two-stage
# and hard-baseline scratch folders, the final save's staging folder, tracker logs): in a folder with a manifest
# these belong to the runs, unless they were there, foreign, when the manifest began.
RUN_PATTERNS = ("checkpoint-*", "stage1", "hard_baseline", STAGING_NAME, "runs")
# What the end of a run writes (the student, its tokenizer, the card, the results): a foreign file with one of these
# names in the folder would be written over, so `--overwrite_output_dir` refuses to start beside it.
FINAL_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "spiece.model",
    "chat_template.*",
    "README.md",
    "distillation_results.json",
    "training_args.bin",
)
MIN_FREE_BYTES = 50 * 2**20


# ---- checkpoints -----------------------------------------------------------------------------------


def _torch_file_problem(path: str) -> str | None:
    """torch.save writes a zip archive whose directory is at its end: a file cut short (a kill, a full disk, a power
    loss before the data reached the disk) has none. Only the directory is read, not the tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            size = os.path.getsize(path)
            if any(info.header_offset + info.compress_size > size for info in archive.infolist()):
                return "an entry runs past its end"
    except (zipfile.BadZipFile, OSError) as e:
        return str(e)
    return None


TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def saved_file_problem(path: str, legacy_pickle_ok: bool = False) -> str | None:
    """Why a saved weights / state file cannot be read to its end (None when it can): a safetensors header that
    does not match the file's size, a torch zip archive without its directory. The one check of whole files, for
    checkpoints and for model folders given as inputs.

    Args:
        path: a `*.safetensors`, `*.pt`, `*.pth` or `*.bin` file (other files: None).
        legacy_pickle_ok: accept a torch file that is not a zip archive (torch.save before 1.6; old model folders).
    """
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, "pt"):
                pass
        except Exception as e:  # safetensors checks the header against the file size: truncation shows here
            return str(e)
        return None
    if not path.endswith(TORCH_SUFFIXES):
        return None
    if legacy_pickle_ok and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            if f.read(2) != b"PK":  # not a zip archive: a legacy pickle, which has no directory to check
                return None
    return _torch_file_problem(path)


def checkpoint_problem(folder: str) -> str | None:
    """Why `folder` cannot be resumed from (None when it is complete). Complete = trainer_state.json (the Trainer's
    last write) readable, model weights present, and every file the Trainer wrote readable to its end: each
    safetensors file's header matches its size, each torch file (optimizer.pt, scheduler.pt, rng_state*.pth,
    training_args.bin, DeepSpeed's states in subfolders) has its zip directory. A kill or a power loss while saving
    leaves one of these cut short."""
    state = os.path.join(folder, "trainer_state.json")
    if not os.path.isfile(state):
        return "no trainer_state.json"
    try:
        with open(state, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as e:
        return f"unreadable trainer_state.json ({e})"
    weights = [name for name in WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    sharded = ("global_step", "pytorch_model_fsdp")  # DeepSpeed / FSDP sharded states: folders, not one file
    if not weights and not any(name.startswith(sharded) for name in os.listdir(folder)):
        return f"no model weights ({' / '.join(WEIGHT_FILES[:3])})"
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(root, name)
            if problem := saved_file_problem(path):
                return f"truncated or unreadable {os.path.relpath(path, folder)} ({problem})"
    return None


def checkpoints(folder: str) -> list[str]:
    """checkpoint-N folders of `folder`, newest (highest N) first."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(folder) if (m := CHECKPOINT.match(name))]
    return [
        os.path.join(folder, name)
        for _, name in sorted(found, reverse=True)
        if os.path.isdir(os.path.join(folder, name))
    ]


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
                    logger.warning(
                        "not resuming from %s: incomplete (%s; the run was probably stopped while saving "
                        "it); resuming from %s instead.",
                        bad,
                        why,
                        path,
                    )
                return path
            skipped.append((path, problem))
        details = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in skipped)
        raise ValueError(
            f"--resume_from_checkpoint {resume} but {folder} holds no complete checkpoint-* folder"
            f"{' (' + details + ')' if details else ''}. {what_works(folder)}"
        )
    if not os.path.isdir(resume):
        raise ValueError(f"--resume_from_checkpoint {resume} is not a folder; give a checkpoint-N folder or 'last'.")
    problem = checkpoint_problem(resume)
    if problem is not None:
        raise ValueError(
            f"--resume_from_checkpoint {resume} is incomplete ({problem}); give an older checkpoint or "
            "'last' (the newest complete one)."
        )
    return resume


def checkpoint_mismatch(checkpoint: str, model) -> str | None:
    """How the weights in `checkpoint` do not fit `model` (None when they do, or cannot be read cheaply: adapters,
    .bin weights, DeepSpeed states). The Trainer would raise a bare size-mismatch RuntimeError for another shape,
    and only warn for missing or extra layers (then train a partly fresh model)."""
    from safetensors import safe_open

    files = [
        name for name in sorted(os.listdir(checkpoint)) if name.startswith("model") and name.endswith(".safetensors")
    ]
    if not files:
        return None
    saved = {}
    for name in files:
        with safe_open(os.path.join(checkpoint, name), "pt") as f:
            saved.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})  # noqa: SIM118
    state = model.state_dict()
    wrong = [
        f"{key}: {tuple(saved[key])} in the checkpoint, {tuple(t.shape)} in the model"
        for key, t in state.items()
        if key in saved and tuple(saved[key]) != tuple(t.shape)
    ]
    present = {t.data_ptr() for key, t in state.items() if key in saved and t.numel()}
    missing = [key for key, t in state.items() if key not in saved and not (t.numel() and t.data_ptr() in present)]
    extra = [key for key in saved if key not in state]  # tied copies are saved once, under one of their names
    if not (wrong or missing or extra):
        return None
    parts = [f"{len(wrong)} tensor(s) of another shape ({'; '.join(wrong[:3])})"] if wrong else []
    parts += [f"{len(missing)} of the model's tensors not in it (e.g. {', '.join(missing[:3])})"] if missing else []
    parts += [f"{len(extra)} tensors the model does not have (e.g. {', '.join(extra[:3])})"] if extra else []
    return "; ".join(parts)


def check_checkpoint_fits(checkpoint: str, model) -> None:
    """A ValueError naming `checkpoint` and the mismatch when it was written for another model (another size, another
    number of layers): resuming it would fail with a raw traceback or silently train a partly fresh model."""
    problem = checkpoint_mismatch(checkpoint, model)
    if problem is not None:
        raise ValueError(
            f"--resume_from_checkpoint: {checkpoint} was written for another model than this run builds "
            f"({problem}). Resume with the model arguments of the run that wrote it, or start over with "
            "--overwrite_output_dir / another --output_dir."
        )


def newest_complete_checkpoint(folder: str) -> str | None:
    """The newest checkpoint of `folder` that `checkpoint_problem` finds complete, or None."""
    return next((path for path in checkpoints(folder) if checkpoint_problem(path) is None), None)


def what_works(folder: str, resumable: bool = True) -> str:
    """The one next step that works for a run folder, said the same way by every refusal (a plain rerun in a used
    folder, `--resume_from_checkpoint last` with nothing to resume): resume when a complete checkpoint exists,
    otherwise start over or elsewhere."""
    entries = [n for n in os.listdir(folder) if n not in (LOCK_NAME, MANIFEST_NAME)] if os.path.isdir(folder) else []
    if not entries:
        return "Start without --resume_from_checkpoint."
    newest = newest_complete_checkpoint(folder) if resumable else None
    if newest is not None:
        return (
            f"Continue it with --resume_from_checkpoint last (from {os.path.basename(newest)}), start over with "
            "--overwrite_output_dir (it removes only what runs wrote there), or choose another --output_dir."
        )
    return ("It holds no complete checkpoint to resume from" if resumable else "Start over") + (
        ": start over with --overwrite_output_dir (it removes only what runs wrote there) or choose another "
        "--output_dir."
        if resumable
        else " with --overwrite_output_dir (it removes only what runs wrote there) or choose another --output_dir."
    )


# ---- the manifest: what the runs wrote ------------------------------------------------------------------


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def read_manifest(folder: str) -> dict | None:
    """The manifest of `folder` ({"written": [...], "foreign": [...], "runs": [...]}), or None when no run of this
    package recorded one. `written`: top-level names a run wrote (recorded before it writes them); `foreign`: names
    that were in the folder, not written by a run, when a run took it."""
    try:
        with open(os.path.join(folder, MANIFEST_NAME), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{os.path.join(folder, MANIFEST_NAME)} is unreadable ({e}): it records what earlier runs "
            "wrote in this folder. Choose another --output_dir, or clean the folder by hand."
        ) from None
    return {
        "written": list(data.get("written", [])),
        "foreign": list(data.get("foreign", [])),
        "runs": list(data.get("runs", [])),
    }


def _write_manifest(folder: str, manifest: dict) -> None:
    manifest = {key: sorted(set(manifest[key])) if key != "runs" else manifest[key] for key in manifest}
    write_json(os.path.join(folder, MANIFEST_NAME), manifest)


def record_written(folder: str, names) -> None:
    """Add `names` (top-level entries of `folder`) to its manifest as written by a run; call it BEFORE writing them,
    so a run killed while writing leaves nothing unrecorded. Main process only. A folder without a manifest was not
    claimed by a run (`OutputFolder.claim` starts one): nothing is recorded there."""
    manifest = read_manifest(folder)
    if manifest is None:
        return
    new = {os.path.basename(os.path.normpath(str(n))) for n in names} - set(manifest["written"])
    if new:
        manifest["written"] = [*manifest["written"], *new]
        manifest["foreign"] = [n for n in manifest["foreign"] if n not in new]
        _write_manifest(folder, manifest)


def owned_by_runs(name: str, manifest: dict | None) -> bool:
    """Whether the entry `name` of a run folder was written by a run of this package (and may be replaced)."""
    if manifest is None:
        return False  # nothing recorded: nothing is known to be ours
    if name in manifest["written"]:
        return True
    return name not in manifest["foreign"] and _matches(name, RUN_PATTERNS)


def _named_paths(*parsed):
    """(field name, path) for every existing path a field of the parsed argument dataclasses names."""
    for obj in parsed:
        for f in dataclasses.fields(obj):
            if f.name in ("output_dir", "logging_dir"):
                continue
            value = getattr(obj, f.name)
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, enum.Enum):  # a choice ("linear", "steps"), never a path
                    continue
                if isinstance(v, (str, os.PathLike)) and str(v) and os.path.exists(v):
                    yield f.name, str(v)


def input_overlaps(output_dir: str, *parsed) -> list[tuple[str, str, str]]:
    """(flag, path, relation) for each input named by the arguments that is, contains or lies inside `output_dir`."""
    found = []
    for name, path in _named_paths(*parsed):
        if os.path.realpath(path) == os.path.realpath(output_dir):
            found.append((name, path, "is"))
        elif _inside(path, output_dir):
            found.append((name, path, "contains"))
        elif _inside(output_dir, path):
            found.append((name, path, "is inside"))
    return found


def input_paths(*parsed, extra=()) -> list[str]:
    """Every existing path that an argument of the run names: each string (or list of strings) of every field of
    the parsed argument dataclasses — *_file, *_path, *_name_or_path, dataset_name, augment_mlm, deepspeed,
    resume_from_checkpoint and any other — that exists on disk, plus `extra` (the config file). The output folder
    (output_dir, logging_dir) is where the run writes, not an input."""
    found = [path for _, path in _named_paths(*parsed)]
    found += [str(p) for p in extra if p and os.path.exists(p)]
    return list(dict.fromkeys(found))


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


def _boot_id() -> str | None:
    """This machine's boot (Linux): a lock written before a reboot or by another boot of the host is stale."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, Linux): with the pid it names one process, where a pid
    alone is reused (a restarted container's run is pid 1 again)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22 (starttime); fields after the name start at 3
    except (OSError, IndexError, ValueError):
        return None


def _owner() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "start_ticks": _start_ticks(os.getpid()),
    }


def lock_is_stale(held: dict) -> bool:
    """Whether the run that wrote lock `held` is gone. Only a lock of this host can be judged: its process is gone
    when the host has rebooted since (boot id), when no process has its pid, or when the process with that pid
    started at another time (the pid was reused, e.g. pid 1 of a restarted container, or this very process)."""
    me = _owner()
    pid = held.get("pid")
    if held.get("host") != me["host"] or not isinstance(pid, int):
        return False
    if held.get("boot_id") and me["boot_id"] and held["boot_id"] != me["boot_id"]:
        return True
    if not _pid_alive(pid):
        return True
    recorded, now = held.get("start_ticks"), _start_ticks(pid)
    if recorded is None and pid == me["pid"]:
        return True  # a lock without a start time comes from an older version, so not from this very process
    return recorded is not None and now is not None and recorded != now


@dataclass
class OutputFolder:
    """`path` belongs to the run `run_id` between `claim()` and `release()`.

    A folder with a manifest (MANIFEST_NAME) records what runs wrote there; `overwrite` removes exactly that, keeps
    (and reports) everything else, and refuses to touch any path in `inputs` (what the run's arguments name)."""

    path: str
    overwrite: bool = False
    resume: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    inputs: list[str] = field(default_factory=list)
    writes: tuple[str, ...] = FINAL_PATTERNS  # names the run writes at its end (foreign ones would be written over)
    resumable: bool = True  # a recipe run can be continued from its checkpoints; a cache run cannot

    @property
    def lock_path(self) -> str:
        return os.path.join(self.path, LOCK_NAME)

    def check(self, inputs: list[str] = (), needed_bytes: int = MIN_FREE_BYTES) -> None:
        """Everything about the folder that can be wrong, checked before training and without writing to it.
        `inputs`: the paths the run's arguments name (`input_paths`); none of them is ever removed."""
        self.inputs = list(dict.fromkeys([*self.inputs, *inputs]))
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"--output_dir {self.path} is a file; give a folder (it is created if missing).")
        base = _existing_ancestor(self.path)
        if not os.path.isdir(base):
            raise ValueError(f"--output_dir {self.path} cannot be created: {base} is a file, not a folder.")
        try:
            with tempfile.TemporaryFile(dir=base):
                pass
        except OSError as e:
            raise ValueError(
                f"--output_dir {self.path} is not writable ({base}: {e.strerror}); choose a folder you can write to."
            ) from None
        free = shutil.disk_usage(base).free
        if free < needed_bytes:
            raise ValueError(
                f"--output_dir {self.path}: only {free / 2**20:.0f} MiB free on its disk, about "
                f"{needed_bytes / 2**20:.0f} MiB needed (student, checkpoints with optimizer states); "
                "free some space or choose another --output_dir."
            )
        if self.overwrite and self.resume is not None:
            raise ValueError(
                "--overwrite_output_dir deletes the checkpoints that --resume_from_checkpoint would "
                "resume; pass one of them (e.g. --overwrite_output_dir false to resume)."
            )
        if self.overwrite and os.path.isdir(self.path):
            real = os.path.realpath(self.path)
            precious = {os.path.realpath(p) for p in (os.sep, os.path.expanduser("~"), os.getcwd())}
            if real in precious or _inside(os.getcwd(), real):
                raise ValueError(
                    f"--overwrite_output_dir would delete {self.path} (the current, home or root "
                    "folder); give a dedicated --output_dir."
                )
            self._removable()  # raises when an input or a foreign file is in the way
        self._check_previous_run()

    def _entries(self) -> list[str]:
        if not os.path.isdir(self.path):
            return []
        return sorted(name for name in os.listdir(self.path) if name not in (LOCK_NAME, MANIFEST_NAME))

    def _removable(self) -> tuple[list[str], list[str]]:
        """(what --overwrite_output_dir removes: entries the runs wrote, what it keeps: everything else). An input
        of this run among the removed, or a kept file that this run would write over, is a ValueError."""
        manifest = read_manifest(self.path)
        entries = self._entries()
        owned = [name for name in entries if owned_by_runs(name, manifest)]
        kept = [name for name in entries if name not in owned]
        hit = [
            p
            for p in self.inputs
            if _inside(self.path, p) or any(_inside(p, os.path.join(self.path, name)) for name in owned)
        ]
        if hit and owned:
            raise ValueError(
                f"--overwrite_output_dir would delete {hit}: an input of this run (named by its arguments) is, or is "
                f"inside, what the previous run wrote in --output_dir {self.path}. Move it out of the folder or "
                "choose another --output_dir."
            )
        clash = [name for name in kept if _matches(name, RUN_PATTERNS + tuple(self.writes))]
        if clash:
            why = (
                "it has no manifest of what runs wrote there (not a folder of an hf_distill run, or one from "
                "before manifests)"
                if manifest is None
                else f"the manifest ({MANIFEST_NAME}) does not list them"
            )
            raise ValueError(
                f"--overwrite_output_dir removes only what earlier runs wrote in --output_dir {self.path}, and "
                f"{clash[:5]} were not ({why}); this run would write over them. Move them away (or delete them "
                "yourself) or choose another --output_dir."
            )
        return owned, kept

    def _check_previous_run(self) -> None:
        found = self._entries()
        if found and not self.overwrite and self.resume is None:
            raise ValueError(
                f"--output_dir {self.path} already holds a previous run ({', '.join(found[:5])}). "
                f"{what_works(self.path, self.resumable)}"
            )

    def _read_lock(self) -> dict:
        try:
            with open(self.lock_path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def claim(self) -> None:
        """Take the folder for this run (main process only): create it, write the lock and the manifest, and with
        overwrite delete what the runs wrote there (checkpoints included), keeping and reporting anything else. A
        folder held by a live run is an error."""
        os.makedirs(self.path, exist_ok=True)
        owner = {"run_id": self.run_id, **_owner(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        fd = self._open_lock()
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(owner, f)
        try:
            manifest = read_manifest(self.path)
            if self.overwrite:
                manifest = self._remove_previous_run(manifest)
            else:  # another run may have finished in this folder since check()
                self._check_previous_run()
                if manifest is None:  # resuming a folder without one: what is there now is not known to be ours
                    manifest = {"written": [], "foreign": self._entries(), "runs": []}
            manifest["runs"] = [*manifest["runs"], {"run_id": self.run_id, "started": owner["started"]}]
            _write_manifest(self.path, manifest)
        except BaseException:
            self.release()
            raise

    def _open_lock(self) -> int:
        """Create the lock file exclusively and return its descriptor; a stale lock (its run is dead) is taken over
        once, a live one is an error."""
        for attempt in range(2):
            try:
                return os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self._read_lock()
                if attempt == 0 and held.get("run_id") != self.run_id and lock_is_stale(held):
                    logger.warning(
                        "taking over %s from run %s (pid %s, no longer running).",
                        self.path,
                        held.get("run_id"),
                        held.get("pid"),
                    )
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.lock_path)
                    continue
                raise ValueError(
                    f"--output_dir {self.path} is in use by run {held.get('run_id', '?')} (pid "
                    f"{held.get('pid', '?')} on {held.get('host', '?')}, started {held.get('started', '?')}); wait "
                    f"for it to finish or choose another --output_dir (if that run is dead, delete {self.lock_path})."
                ) from None

    def _remove_previous_run(self, manifest: dict | None) -> dict:
        """--overwrite_output_dir: delete what earlier runs wrote here, log what was removed and kept, and return
        the fresh manifest (the kept entries listed as foreign)."""
        removed, kept = self._removable()
        for name in removed:
            target = os.path.join(self.path, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            elif os.path.lexists(target):
                os.remove(target)
        if removed:
            logger.info(
                "--overwrite_output_dir: removed the previous run in %s (%s)",
                self.path,
                ", ".join(removed[:5]) + (", ..." if len(removed) > 5 else ""),
            )
        if kept:
            logger.warning(
                "--overwrite_output_dir: kept %s in %s: not written by an earlier run (%s).",
                ", ".join(kept[:10]) + (", ..." if len(kept) > 10 else ""),
                self.path,
                "the folder had no manifest" if manifest is None else "not in its manifest",
            )
        return {"written": [], "foreign": kept, "runs": []}

    def record(self, names) -> None:
        """Record `names` as written by this run (before writing them); see `record_written`."""
        record_written(self.path, names)

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
            sizes.append(
                sum(
                    os.path.getsize(os.path.join(path, f))
                    for f in os.listdir(path)
                    if f.endswith((".safetensors", ".bin"))
                )
            )
    kept = 0 if str(getattr(args.save_strategy, "value", args.save_strategy)) == "no" else (args.save_total_limit or 1)
    return max(MIN_FREE_BYTES, max(sizes) * (1 + 3 * kept))


def publish(output_dir: str, write) -> list[str]:
    """`write(folder)` into a staging folder inside `output_dir`, then record what it wrote in the manifest and move
    it into `output_dir` by renames (a crash never leaves a half-written file beside finished-looking ones). Returns
    the names moved in. Main process only."""
    staging = os.path.join(output_dir, STAGING_NAME)
    if os.path.isdir(staging):
        shutil.rmtree(staging)
    write(staging)
    return _move_in(staging, output_dir)


def _move_in(staging: str, output_dir: str) -> list[str]:
    names = sorted(os.listdir(staging))
    record_written(output_dir, names)  # before they appear in the folder (see read_manifest)
    for name in names:
        target = os.path.join(output_dir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    os.rmdir(staging)
    return names


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
        _move_in(staging, output_dir)
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
