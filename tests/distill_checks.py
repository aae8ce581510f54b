"""Plain reference computations and checks shared by the task / ensemble / PEFT / transfer tests.

The references are written with explicit loops over positions and probabilities (not with
hf_distill.losses), so they check the trainer's numbers independently.
"""

from __future__ import annotations

import torch
from testing_utils import distillation_args

from hf_distill import DistillationArguments


def make_args(tmp_path, **kw) -> DistillationArguments:
    defaults = {
        "per_device_train_batch_size": 4,
        "max_steps": 3,
        "learning_rate": 5e-3,
        "temperature": 2.0,
        "soft_weight": 0.7,
        "hard_weight": 0.3,
        "dataloader_num_workers": 0,
    }
    return distillation_args(tmp_path / "out", **{**defaults, **kw})


def ref_kl(student_row: torch.Tensor, teacher_probs_row: torch.Tensor, T: float) -> torch.Tensor:
    """sum_c p_t[c] (log p_t[c] - log p_s[c]) for one position; p_s = softmax(student / T)."""
    s = student_row.double() / T
    log_ps = s - torch.log(torch.exp(s - s.max()).sum()) - s.max()
    p = teacher_probs_row.double()
    nz = p > 0
    return (p[nz] * (torch.log(p[nz]) - log_ps[nz])).sum()


def probs(z: torch.Tensor, T: float) -> torch.Tensor:
    e = torch.exp(z.double() / T - (z.double() / T).max())
    return e / e.sum()


def ref_soft(student: torch.Tensor, teacher: torch.Tensor, T: float, positions) -> torch.Tensor:
    """T^2 * mean over `positions` (index tuples into the leading dims) of KL(p_t || p_s)."""
    terms = [ref_kl(student[pos], probs(teacher[pos], T), T) for pos in positions]
    return torch.stack(terms).mean() * T**2


def token_positions(attention_mask: torch.Tensor) -> list[tuple[int, int]]:
    return [
        (b, i) for b in range(attention_mask.shape[0]) for i in range(attention_mask.shape[1]) if attention_mask[b, i]
    ]


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


def assert_trains_student_not_teacher(trainer) -> None:
    """A few train() steps change the student's weights and none of the teachers'."""
    student_before = snapshot(trainer.model)
    teachers_before = [snapshot(t) for t in trainer.teachers]
    trainer.train()
    assert changed(student_before, trainer.model), "training left every student weight unchanged"
    for t, before in zip(trainer.teachers, teachers_before):
        assert not changed(before, t), "a teacher weight changed"
        assert not any(p.requires_grad for p in t.parameters())
        assert not t.training
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def eval_components(trainer, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of `batch` and its named terms, with the student in eval mode (no dropout)."""
    trainer.model.eval()
    with torch.no_grad():
        loss, terms, _ = trainer.compute_distillation_loss(trainer.model, dict(batch))
    return loss, {k: float(v) for k, v in terms.items()}


def sharpen(model: torch.nn.Module, scale: float = 40.0) -> torch.nn.Module:
    """Scale a random model's classifier head so its outputs are peaked and far from a random student's:
    tiny random sequence classifiers are near-uniform, and a KL of 1e-5 would drown in float32 round-off."""
    with torch.no_grad():
        model.classifier.weight.mul_(scale)
    return model
