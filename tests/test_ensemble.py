"""Ensembles of teachers: the soft target is the mean (or renormalised geometric mean) of the
teachers' probabilities at T, computed here by hand; every teacher stays frozen and unsaved."""

from __future__ import annotations

import os

import pytest
import torch
from distill_checks import assert_trains_student_not_teacher, eval_components, make_args, probs, ref_kl, sharpen
from safetensors.torch import load_file
from testing_utils import classification_data, fixed_batch, tiny_bert, tiny_distilbert

from hf_distill import DistillationTrainer

T = 2.0


def combined_target(t1: torch.Tensor, t2: torch.Tensor, mode: str) -> torch.Tensor:
    """(C,) target for one example from two teachers' logits, written out from the definitions."""
    p1, p2 = probs(t1, T), probs(t2, T)
    if mode == "mean":
        return (p1 + p2) / 2
    g = torch.sqrt(p1 * p2)
    return g / g.sum()


@pytest.mark.parametrize("mode", ["mean", "geometric"])
def test_two_teacher_soft_target(tmp_path, mode):
    teachers = [sharpen(tiny_bert(layers=2, hidden=32, seed=10)), sharpen(tiny_bert(layers=3, hidden=48, seed=11))]
    student = tiny_bert(layers=1, hidden=32, seed=1)
    args = make_args(tmp_path, temperature=T, ensemble_mode=mode, soft_weight=1.0, hard_weight=0.5)
    trainer = DistillationTrainer(
        model=student, teacher_model=teachers, args=args, train_dataset=classification_data(8, 10)
    )
    batch = fixed_batch(n=4, seq=10)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s = student.eval()(**inputs).logits
        t1, t2 = (t.eval()(**inputs).logits for t in teachers)
    assert not torch.allclose(t1, t2, atol=1e-3), "the two teachers must disagree for the test to mean anything"
    expected = torch.stack([ref_kl(s[b], combined_target(t1[b], t2[b], mode), T) for b in range(4)]).mean() * T**2
    _, comps = eval_components(trainer, batch)
    assert comps["soft_loss"] == pytest.approx(float(expected), rel=1e-4)
    # the other mode gives a different number: the argument is actually used
    other = "geometric" if mode == "mean" else "mean"
    other_expected = (
        torch.stack([ref_kl(s[b], combined_target(t1[b], t2[b], other), T) for b in range(4)]).mean() * T**2
    )
    assert abs(float(other_expected) - float(expected)) > 1e-6


def test_ensemble_trains_student_only_and_saves_no_teacher(tmp_path):
    teachers = [tiny_bert(layers=2, hidden=32, seed=10), tiny_distilbert(layers=2, hidden=32, seed=12)]
    student = tiny_bert(layers=1, hidden=32, seed=1)
    trainer = DistillationTrainer(
        model=student, teacher_model=teachers, args=make_args(tmp_path), train_dataset=classification_data(16, 10)
    )
    assert len(trainer.teachers) == 2 and trainer.teacher is trainer.teachers[0]
    assert_trains_student_not_teacher(trainer)
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    saved = load_file(os.path.join(out, "model.safetensors"))
    assert set(saved) == set(student.state_dict())  # the student's weights and nothing else
    teacher_sizes = {p.numel() for t in teachers for p in t.parameters()}
    total = sum(v.numel() for v in saved.values())
    assert total == sum(p.numel() for p in student.parameters()) and total not in teacher_sizes
