"""PEFT: a LoRA student trains only its adapter, saves it (or the merged model) and reloads to the same
outputs; a PEFT-adapted teacher is distilled from as it is and stays frozen."""

from __future__ import annotations

import os

import pytest
import torch
import transformers as tf
from datasets import Dataset
from distill_checks import (
    assert_trains_student_not_teacher,
    changed,
    eval_components,
    make_args,
    ref_soft,
    sharpen,
    snapshot,
)
from peft import LoraConfig, PeftModel, get_peft_model
from testing_utils import classification_data, fixed_batch, tiny_bert, tiny_llama

from hf_distill import DistillationTrainer

T = 2.0


def lm_data(n=16, seq=10) -> Dataset:
    ds = classification_data(n, seq)
    ids, mask = torch.tensor(ds["input_ids"]), torch.tensor(ds["attention_mask"])
    labels = torch.where(mask.bool(), ids, -100)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})


def lora():
    return LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])


def lm_logits(model, data):
    batch = {k: torch.tensor(data[:4][k]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_lora_student_trains_only_the_adapter_and_reloads(tmp_path):
    data = lm_data()
    teacher = tiny_llama(layers=4, hidden=32)
    trainer = DistillationTrainer(
        model=tiny_llama(layers=2, hidden=32, seed=1),
        teacher_model=teacher,
        args=make_args(tmp_path, max_steps=4, learning_rate=2e-2),
        train_dataset=data,
        peft_config=lora(),
    )
    assert isinstance(trainer.model, PeftModel)
    before = snapshot(trainer.model)
    assert_trains_student_not_teacher(trainer)
    moved = changed(before, trainer.model)
    assert moved and all("lora_" in name for name in moved), f"non-adapter weights changed: {moved}"
    assert any("lora_A" in n for n in moved) and any("lora_B" in n for n in moved)

    out = tmp_path / "adapter"
    trainer.save_model(str(out))
    assert os.path.isfile(out / "adapter_config.json") and os.path.isfile(out / "adapter_model.safetensors")
    assert not os.path.isfile(out / "model.safetensors")  # the adapter, not the base weights
    reloaded = PeftModel.from_pretrained(tiny_llama(layers=2, hidden=32, seed=1), str(out))
    torch.testing.assert_close(lm_logits(reloaded, data), lm_logits(trainer.model, data))


def test_merge_adapter_on_save_writes_the_merged_student(tmp_path):
    data = lm_data()
    trainer = DistillationTrainer(
        model=tiny_llama(layers=2, hidden=32, seed=1),
        teacher_model=tiny_llama(layers=4),
        args=make_args(tmp_path, max_steps=2, learning_rate=2e-2),
        train_dataset=data,
        peft_config=lora(),
        merge_adapter_on_save=True,
    )
    trainer.train()
    out = tmp_path / "merged"
    trainer.save_model(str(out))
    assert not os.path.isfile(out / "adapter_config.json")
    merged = tf.AutoModelForCausalLM.from_pretrained(str(out))
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(lm_logits(merged, data), lm_logits(trainer.model, data), rtol=1e-4, atol=1e-5)
    assert isinstance(trainer.model, PeftModel)  # the trainer's student keeps its adapter
    ckpt = tmp_path / "ckpt"
    trainer.save_model(str(ckpt), _internal_call=True)  # checkpoints keep the adapter, for resume
    assert os.path.isfile(ckpt / "adapter_config.json")


def test_peft_adapted_teacher(tmp_path):
    batch = fixed_batch(n=4, seq=10)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    base = sharpen(tiny_bert(layers=2, hidden=32, seed=5))
    with torch.no_grad():
        t_base = base(**inputs).logits
    teacher = get_peft_model(
        base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"], init_lora_weights=False)
    )  # random B: the adapter changes outputs
    student = tiny_bert(layers=1, hidden=32, seed=1)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path), train_dataset=classification_data(8, 10)
    )
    with torch.no_grad():
        s, t = student.eval()(**inputs).logits, teacher.eval()(**inputs).logits
    assert not torch.allclose(t, t_base, atol=1e-3)
    _, comps = eval_components(trainer, batch)
    expected = ref_soft(s, t, T, [(b,) for b in range(4)])  # against the adapted teacher
    assert comps["soft_loss"] == pytest.approx(float(expected), rel=1e-4)
    assert_trains_student_not_teacher(trainer)  # adapter weights of the teacher included


def test_peft_config_misuse(tmp_path):
    teacher = tiny_llama(layers=2)
    with pytest.raises(ValueError, match="PeftConfig"):
        DistillationTrainer(
            model=tiny_llama(layers=1), teacher_model=teacher, args=make_args(tmp_path), peft_config={"r": 8}
        )
    with pytest.raises(ValueError, match="already a PeftModel"):
        DistillationTrainer(
            model=get_peft_model(tiny_llama(layers=1), lora()),
            teacher_model=teacher,
            args=make_args(tmp_path),
            peft_config=lora(),
        )


@pytest.mark.parametrize("merge", [False, True], ids=["adapter", "merged"])
def test_lora_student_with_projections_trains_adapter_and_projections_and_saves_the_student(tmp_path, merge):
    data = lm_data()
    teacher = tiny_llama(layers=4, hidden=64)  # wider than the student: learned projections join the student
    trainer = DistillationTrainer(
        model=tiny_llama(layers=2, hidden=32, seed=1),
        teacher_model=teacher,
        args=make_args(tmp_path, max_steps=3, learning_rate=2e-2, hidden_weight=1.0),
        train_dataset=data,
        peft_config=lora(),
        merge_adapter_on_save=merge,
    )
    assert isinstance(trainer.student, PeftModel) and trainer.projections is not None
    before = snapshot(trainer.model)
    assert_trains_student_not_teacher(trainer)
    moved = changed(before, trainer.model)
    assert any(n.startswith("projections.") for n in moved) and any("lora_" in n for n in moved)
    assert all("lora_" in n or n.startswith("projections.") for n in moved), moved
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    if merge:
        saved = tf.AutoModelForCausalLM.from_pretrained(str(out))
        assert not any("lora_" in n for n, _ in saved.named_parameters())
    else:
        assert not os.path.isfile(out / "model.safetensors")  # the adapter alone
        saved = PeftModel.from_pretrained(tiny_llama(layers=2, hidden=32, seed=1), str(out))
    torch.testing.assert_close(lm_logits(saved, data), lm_logits(trainer.student, data), rtol=1e-4, atol=1e-5)
