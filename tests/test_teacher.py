"""The teacher forward: no autograd graph, only the outputs a loss needs, optional lower precision."""

import math

import pytest
import torch
from testing_utils import classification_data, distillation_args, fixed_batch, tiny_bert

from hf_distill import DistillationTrainer


def dargs(tmp_path, **kw):
    return distillation_args(tmp_path / "out", **{"per_device_train_batch_size": 4, "max_steps": 2, **kw})


def test_teacher_forward_builds_no_autograd_graph(tmp_path):
    teacher, student = tiny_bert(layers=2, hidden=32), tiny_bert(layers=1, hidden=32, seed=1)
    seen = []

    def check(module, inputs, output):
        seen.append((torch.is_grad_enabled(), output.logits.requires_grad, output.logits.grad_fn))

    teacher.register_forward_hook(check)
    trainer = DistillationTrainer(
        student, teacher, dargs(tmp_path, hidden_weight=1.0, layer_map="1:2"), train_dataset=classification_data(8)
    )
    outputs = trainer.teacher_forward(fixed_batch())
    tensors = [outputs[0].logits, *outputs[0].hidden_states]
    assert all(not t.requires_grad and t.grad_fn is None for t in tensors)
    trainer.train()
    assert len(seen) == 3 and all(s == (False, False, None) for s in seen)


@pytest.mark.parametrize("hidden_weight", [0.0, 1.0])
def test_hidden_states_are_requested_only_when_a_loss_needs_them(tmp_path, hidden_weight):
    teacher, student = tiny_bert(layers=2, hidden=32), tiny_bert(layers=1, hidden=32, seed=1)
    calls = {"teacher": [], "student": []}
    teacher.register_forward_pre_hook(lambda m, a, kw: calls["teacher"].append(kw), with_kwargs=True)
    student.register_forward_pre_hook(lambda m, a, kw: calls["student"].append(kw), with_kwargs=True)
    args = dargs(tmp_path, hidden_weight=hidden_weight, layer_map="1:2")
    DistillationTrainer(student, teacher, args, train_dataset=classification_data(8)).train()
    for who in ("teacher", "student"):
        assert calls[who]
        for kw in calls[who]:
            assert kw.get("output_hidden_states", False) is bool(hidden_weight)
            assert not kw.get("output_attentions", False)


def test_teacher_dtype_runs_the_teacher_in_bf16_and_keeps_the_losses_in_fp32(tmp_path):
    teacher, student = tiny_bert(layers=2, hidden=32), tiny_bert(layers=1, hidden=32, seed=1)
    trainer = DistillationTrainer(
        student,
        teacher,
        dargs(tmp_path, teacher_dtype="bfloat16", hidden_weight=1.0, layer_map="1:2"),
        train_dataset=classification_data(8),
    )
    assert all(p.dtype == torch.bfloat16 for p in trainer.teacher.parameters())
    assert all(p.dtype == torch.float32 for p in student.parameters())
    out = trainer.teacher_forward(fixed_batch())[0]
    assert out.logits.dtype == torch.bfloat16
    _, parts, _ = trainer.compute_distillation_loss(student, fixed_batch())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in parts.values())
    t_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer.train()
    # Training kept the teacher frozen in bf16 and moved the fp32 student on finite losses.
    assert all(torch.equal(v, t_before[k]) for k, v in trainer.teacher.state_dict().items())
    assert all(p.dtype == torch.bfloat16 for p in trainer.teacher.parameters())
    assert any(not torch.equal(v, s_before[k]) for k, v in student.state_dict().items())
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all(math.isfinite(h[k]) for h in logged for k in ("soft_loss", "hidden_loss"))
