"""Run a recipe under a launcher and record what the trainer really did (for tests/test_sharded.py).

    DS_ACCELERATOR=cpu accelerate launch --config_file tests/configs/accelerate_zero2_cpu.yaml \
        tests/sharded_recipe.py REPORT.json [--recipe distil_causal_lm] RECIPE_ARGS...
    ... tests/sharded_recipe.py --jobs JOBS.json      # several runs in turn: [[REPORT.json, RECIPE, RECIPE_ARGS], ...]

The recipe is recipes/distil_bert.py unless --recipe names another module of recipes/. With --jobs, the runs share
the launch's processes and process group (one start-up for all of them): the recipes' closing
`Accelerator.end_training`, which tears the group down, runs at the end of the last one only. A job whose RECIPE is
not a module of recipes/ is a test script's `run(RECIPE_ARGS)` (tests/zero3_sampling.py: it writes its own report;
REPORT.json is null).

The recipe runs unchanged; its DistillationTrainer is replaced by a subclass that, after training, writes
REPORT.json (rank 0) with: the sharding in effect (DeepSpeed / ZeRO stage / FSDP, world size), whether any
teacher parameter requires grad or is held by the optimizer, how many elements the optimizer holds, and a
checksum of the teacher weights before and after training (gathered when they are partitioned).
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "tests"))  # the test scripts of --jobs

import importlib  # noqa: E402
import importlib.util  # noqa: E402

from hf_distill import DistillationTrainer  # noqa: E402
from hf_distill.layers import _full_tensors  # noqa: E402


def _gathered_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full copies of every parameter, gathered when DeepSpeed ZeRO-3 has partitioned them."""
    return _full_tensors(module, [name for name, _ in module.named_parameters()])


def _optimizer_tensors(optimizer) -> list[torch.Tensor]:
    """The model tensors an optimizer updates: the ZeRO optimizers keep them in bit16_groups / fp16_groups."""
    inner = optimizer
    while hasattr(inner, "optimizer") and not hasattr(inner, "bit16_groups") and not hasattr(inner, "fp16_groups"):
        inner = inner.optimizer
    for attr in ("bit16_groups", "fp16_groups"):  # ZeRO-1/2, ZeRO-3
        groups = getattr(inner, attr, None)
        if groups:
            return [p for g in groups for p in g]
    return [p for g in optimizer.param_groups for p in g["params"]]


class RecordingTrainer(DistillationTrainer):
    report_path: str = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._teacher_before = {k: v.sum().item() for k, v in _gathered_state(self.teacher).items()}

    def train(self, *args, **kwargs):
        out = super().train(*args, **kwargs)
        after = {k: v.sum().item() for k, v in _gathered_state(self.teacher).items()}
        teacher_ids = {id(p) for p in self.teacher.parameters()}
        in_optimizer = _optimizer_tensors(self.optimizer)
        engine = self.model_wrapped
        stage = engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None
        report = {
            "world_size": self.accelerator.num_processes,
            "distributed_type": str(self.accelerator.distributed_type),
            "is_deepspeed_enabled": self.is_deepspeed_enabled,
            "is_fsdp_enabled": self.is_fsdp_enabled,
            "zero_stage": stage,
            "teacher_engine_optimizer": type(getattr(self.teacher, "optimizer", None)).__name__,
            "teacher_partitioned": any(hasattr(p, "ds_id") and p.numel() == 0 for p in self.teacher.parameters()),
            "student_partitioned": any(hasattr(p, "ds_id") and p.numel() == 0 for p in engine.parameters()),
            "student_zero3_managed": all(hasattr(p, "ds_id") for p in engine.parameters()),
            "teacher_requires_grad": any(p.requires_grad for p in self.teacher.parameters()),
            "teacher_training": any(m.training for m in getattr(self.teacher, "module", self.teacher).modules()),
            "teacher_in_optimizer": any(id(p) in teacher_ids for p in in_optimizer),
            "optimizer_numel": sum(getattr(p, "ds_numel", p.numel()) for p in in_optimizer),
            "student_numel": sum(getattr(p, "ds_numel", p.numel()) for p in engine.parameters()),
            "teacher_unchanged": after == self._teacher_before,
            "trained_module": type(getattr(engine, "module", engine)).__name__,
            "projection_numel": sum(
                getattr(p, "ds_numel", p.numel()) for p in (self.projections or nn.ModuleDict()).parameters()
            ),
        }
        if self.is_world_process_zero():
            with open(self.report_path, "w") as f:
                json.dump(report, f, indent=1)
        return out


if __name__ == "__main__":
    from accelerate import Accelerator

    if sys.argv[1] == "--jobs":
        with open(sys.argv[2]) as f:
            jobs = json.load(f)
    else:
        report, argv = sys.argv[1], sys.argv[2:]
        name = "distil_bert"
        if argv[:1] == ["--recipe"]:
            name, argv = argv[1], argv[2:]
        jobs = [[report, name, argv]]
    end_training = Accelerator.end_training
    for i, (report, name, argv) in enumerate(jobs):
        last = i == len(jobs) - 1
        Accelerator.end_training = end_training if last else (lambda self: None)  # the next job needs the group
        if importlib.util.find_spec(f"recipes.{name}") is None:  # a test script (tests/zero3_sampling.py)
            importlib.import_module(name).run(argv)
            continue
        RecordingTrainer.report_path = report
        recipe = importlib.import_module(f"recipes.{name}")
        recipe.DistillationTrainer = RecordingTrainer
        recipe.main(argv)
