"""The start and the end of every recipe's `main()`, written once.

`start_run` parses `CONFIG.yaml + flags`, sets up logging and checks everything that does not need a model
(required arguments, model paths, the output folder, the Hub push) before anything is loaded; the run then
owns its output folder inside `with run.owning_output_dir():`, and `finish` writes the results, the model
card and pushes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass

from huggingface_hub.utils import HFValidationError, validate_repo_id

from .. import __version__
from ..model_card import CARD_NAME, RESULTS_NAME, format_count, save_model_card
from ..redaction import redacted_args
from .arguments import OutputArguments, config_file, launch_command, parse_args
from .evaluation import Comparison
from .models import StudentInfo, check_model_source
from .output import (
    PUSH_IGNORE,
    OutputFolder,
    check_checkpoint_fits,
    input_paths,
    needed_bytes,
    resolve_resume,
    write_json,
)

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """One recipe run: its parsed arguments and what the start-up checks decided."""

    model_args: object
    data_args: object
    args: object  # TrainingArguments or DistillationArguments
    output: OutputFolder
    resume: str | None  # checkpoint to resume from
    token: str | None  # Hub token, when pushing
    command: str  # the launch command, secrets redacted

    @property
    def run_id(self) -> str:
        return self.output.run_id

    @contextlib.contextmanager
    def owning_output_dir(self):
        """This run owns output_dir (lock file with its run id) until the block ends; overwrite happens here."""
        if self.args.process_index == 0:
            self.output.claim()
        try:
            yield self
        finally:
            if self.args.process_index == 0:
                self.output.release()

    def train(self, trainer):
        """`trainer.train()`, resuming from `self.resume` after checking that the checkpoint was written for this
        trainer's model (another size or depth is a ValueError naming both, not a raw traceback)."""
        if self.resume is not None:
            check_checkpoint_fits(self.resume, trainer.model)
        return trainer.train(resume_from_checkpoint=self.resume)

    def results(
        self,
        trainer,
        *,
        task: str,
        teacher: str,
        student: StudentInfo,
        comparison: Comparison,
        dataset: dict,
        train_metrics: dict,
        **extra,
    ) -> dict:
        """The `distillation_results.json` payload: what ran (task, models, data, settings, command) and how the
        teacher and the student compare. `extra` adds top-level keys (e.g. labels, example_text, eval)."""
        args = self.args
        settings = ("temperature", "soft_weight", "hard_weight", "hidden_weight", "hidden_loss")
        return {
            "task": task,
            "teacher_model": teacher,
            "model_id": args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir)),
            "run_id": self.run_id,
            "dataset": dataset,
            "distillation": {
                **{name: getattr(args, name) for name in settings},
                "layer_map": {str(s): t for s, t in student.layer_map.items()} if student.layer_map else None,
                "teacher_num_layers": student.teacher_num_layers,
                "student_num_layers": student.student_num_layers,
                "student_init_layers": student.init_layers,
                "student_model": student.student_model,
                "num_train_epochs": args.num_train_epochs,
                "learning_rate": args.learning_rate,
                "global_train_batch_size": args.per_device_train_batch_size
                * args.gradient_accumulation_steps
                * args.world_size,
                "max_length": self.data_args.max_length,
                "seed": args.seed,
            },
            "teacher": comparison.side("teacher"),
            "student": comparison.side("student"),
            "speedup": comparison.speedup(),
            "device": str(args.device.type),
            "train": {k: v for k, v in train_metrics.items() if isinstance(v, (int, float))},
            "train_log": [e for e in trainer.state.log_history if "loss" in e],
            **extra,
            "command": self.command,
            "hf_distill_version": __version__,
        }

    def finish(self, trainer, results: dict) -> dict:
        """On the main process: write the results and the model card, push the folder if asked, print the table."""
        args = self.args
        if trainer.is_world_process_zero():
            self.output.record([RESULTS_NAME, CARD_NAME])
            write_json(os.path.join(args.output_dir, RESULTS_NAME), results)
            save_model_card(args.output_dir, results, model_id=results["model_id"])
            if args.push_to_hub:
                push_folder(args.output_dir, args.hub_model_id, self.token, args.hub_private_repo)
            print_summary(results, args.output_dir)
        trainer.accelerator.wait_for_everyone()
        # Tear the process group down here, not in an interpreter-exit destructor (gloo can deadlock there).
        trainer.accelerator.end_training()
        return results


def check_push(args) -> str | None:
    """With --push_to_hub, the repo id and a token must be known before training; return the token."""
    if not args.push_to_hub:
        return None
    if not args.hub_model_id:
        raise ValueError(
            "--push_to_hub needs --hub_model_id (e.g. 'your-name/bert-6l-sst2'): the repo to create or update."
        )
    try:
        validate_repo_id(args.hub_model_id)
    except HFValidationError as e:
        raise ValueError(
            f"--hub_model_id {args.hub_model_id!r} is not a valid Hub repo id ({e}); use 'your-name/model-name'."
        ) from None
    from huggingface_hub import get_token

    token = args.hub_token or get_token()
    if not token:
        raise ValueError(
            "--push_to_hub but no Hugging Face credentials were found: run `hf auth login`, set HF_TOKEN, "
            "or pass --hub_token."
        )
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:  # the push is the run's last step: it would fail after training
        raise ValueError(
            "--push_to_hub, but HF_HUB_OFFLINE is set: the push at the end of the run would fail after "
            "training. Unset HF_HUB_OFFLINE, or train without --push_to_hub and upload the folder later "
            "(`hf upload REPO OUTPUT_DIR`)."
        )
    return token


def start_run(
    script: str,
    model_class,
    data_class,
    training_class,
    argv: list[str] | None = None,
    required: dict[str, str] | None = None,
) -> Run:
    """Parse, set up logging and check everything that needs no model. `required` maps a model-argument name to
    what it should be (for the error when it is missing)."""
    model_args, data_args, out_args, args = parse_args(
        (model_class, data_class, OutputArguments, training_class), argv
    )
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if args.should_log else logging.WARNING,
    )
    for name, what in (required or {}).items():
        if not getattr(model_args, name):
            raise ValueError(f"--{name} is required: {what}.")
    model_paths = {
        f.name: getattr(model_args, f.name)
        for f in dataclasses.fields(model_args)
        if f.name.endswith("model_name_or_path") and getattr(model_args, f.name)
    }
    for name, paths in model_paths.items():
        for path in str(paths).split(","):  # several teachers are comma-separated
            check_model_source(path.strip(), name)
    output = OutputFolder(args.output_dir, overwrite=out_args.overwrite_output_dir, resume=args.resume_from_checkpoint)
    # Never deleted by --overwrite_output_dir: every path an argument names (models, data files and folders, the
    # transfer file, the augmentation model, the config file, ...), found generically from the parsed arguments.
    inputs = input_paths(model_args, data_args, out_args, args, extra=[config_file(argv)])
    output.check(inputs, needed_bytes(list(model_paths.values()), args))
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    token = check_push(args)
    # From here on the run holds its token in Run.token only: every Trainer gets arguments without secrets, so no
    # training_args.bin (checkpoints, the student's folder, plain Trainers too) and no tracker sees them.
    args = redacted_args(args)
    return Run(model_args, data_args, args, output, resume, token, launch_command(script, argv))


def push_folder(folder: str, repo_id: str, token: str, private: bool | None = None, message: str | None = None) -> str:
    """Create (or reuse) the model repo and upload `folder` (the student, tokenizer, card and results)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=bool(private), exist_ok=True, repo_type="model")
    repo_id = getattr(repo, "repo_id", repo_id)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        ignore_patterns=PUSH_IGNORE,
        commit_message=message or "Upload distilled student (hf_distill)",
    )
    logger.info("pushed %s to https://huggingface.co/%s", folder, repo_id)
    return repo_id


def shown_path(path: str) -> str:
    """`path` relative to the working directory when it lies inside it (no machine-specific prefix), else absolute."""
    relative = os.path.relpath(os.path.abspath(path))
    return os.path.abspath(path) if relative == ".." or relative.startswith(".." + os.sep) else relative


def print_summary(results: dict, output_dir: str) -> None:
    """The closing table of a recipe: teacher vs student metrics, size and speed, and where things are."""
    t, s = results["teacher"], results["student"]
    metric_names = [k for k in t if k in s and k not in ("parameters", "examples_per_second")]
    rows = [(name, f"{t[name]:.4f}", f"{s[name]:.4f}") for name in metric_names]
    rows.append(("parameters", format_count(t["parameters"]), format_count(s["parameters"])))
    rows.append(("examples/s (eval)", f"{t['examples_per_second']:.1f}", f"{s['examples_per_second']:.1f}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {'teacher':>10}  {'student':>10}"]
    lines += [f"{a:<{width}}  {b:>10}  {c:>10}" for a, b, c in rows]
    lines.append(f"speed-up: {results['speedup']:.2f}x   size: {s['parameters'] / t['parameters']:.0%} of the teacher")
    lines.append(f"student, card (README.md) and {RESULTS_NAME}: {shown_path(output_dir)}")
    print("\n".join(lines), flush=True)  # the recipe's closing report to the user (stdout), not a log line
