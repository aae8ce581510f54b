"""Several teachers routed per example (hf_distill.routing): each row is scored by its own teacher only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testing_utils import distillation_args
from xtok_setup import bpe_tokenizer, lm_dataset, tiny_gpt2, wordpiece_tokenizer

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.lm_data import PromptCompletionCollator, soft_token_mask


def args(tmp_path, **kw) -> DistillationArguments:
    base = {"per_device_train_batch_size": 4, "max_steps": 2, "temperature": 2.0, "teacher_id_column": "teacher_id"}
    return distillation_args(tmp_path / "out", **{**base, **kw})


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer()


def routed_trainer(tmp_path, bpe, teachers, data=None, **kw):
    data = lm_dataset(bpe, n=8, routed=True) if data is None else data
    return DistillationTrainer(
        tiny_gpt2(len(bpe), seed=5),
        teachers,
        args(tmp_path, **kw),
        train_dataset=data,
        processing_class=bpe,
        data_collator=PromptCompletionCollator.from_tokenizer(bpe),
    )


@pytest.mark.parametrize("chunk", [None, 6])
def test_each_row_is_scored_by_its_own_teacher_only(tmp_path, bpe, chunk):
    teachers = [tiny_gpt2(len(bpe), seed=0, hidden=24), tiny_gpt2(len(bpe), seed=1, hidden=32)]
    trainer = routed_trainer(tmp_path, bpe, teachers, loss_chunk_size=chunk)
    data = lm_dataset(bpe, n=8, routed=True)
    features = [data[i] for i in range(8)]
    batch = trainer.data_collator(features)
    assert batch["teacher_index"].tolist() == [i % 2 for i in range(8)]
    trainer.model.eval()
    compute = trainer.chunked_distillation_loss if chunk else trainer.compute_distillation_loss
    with torch.no_grad():
        _, terms, _ = compute(trainer.model, batch)
        # the reference: every teacher on every row, then each row keeps its own teacher's distribution
        plain = PromptCompletionCollator.from_tokenizer(bpe)(
            [{k: v for k, v in f.items() if k != "teacher_id"} for f in features]
        )
        inputs = {"input_ids": plain["input_ids"], "attention_mask": plain["attention_mask"]}
        s = F.log_softmax(trainer.student(**inputs).logits / 2.0, -1)
        t_all = [F.log_softmax(t(**inputs).logits / 2.0, -1) for t in teachers]
    mask = soft_token_mask(plain)
    per_row = []
    for b in range(8):
        t = t_all[b % 2][b][mask[b]]
        per_row.append((t.exp() * (t - s[b][mask[b]])).sum(-1) * 4.0)  # T^2 KL(p_t || p_s) per position
    n = int(mask.sum())
    expected = torch.cat(per_row).sum() / n
    assert terms["soft_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    for k in range(2):
        part = torch.cat([per_row[b] for b in range(8) if b % 2 == k]).sum() / n
        assert terms[f"teacher{k}_soft_loss"].item() == pytest.approx(part.item(), rel=1e-5)
        assert terms[f"teacher{k}_tokens"].item() == sum(int(mask[b].sum()) for b in range(8) if b % 2 == k)


def test_teacher_without_rows_is_not_run(tmp_path, bpe):
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.config = model, model.config

        def forward(self, **kw):
            calls.append(kw["input_ids"].shape[0])
            return self.model(**kw)

    teachers = [tiny_gpt2(len(bpe), seed=0), Counting(tiny_gpt2(len(bpe), seed=1))]
    data = lm_dataset(bpe, n=8, routed=True)
    trainer = routed_trainer(tmp_path, bpe, teachers, data=data)
    batch = trainer.data_collator([data[i] for i in range(0, 8, 2)])  # rows 0, 2, 4, 6: all teacher 0
    outputs = trainer.teacher_forward(batch)
    assert outputs[1] is None and calls == []
    batch = trainer.data_collator([data[i] for i in range(4)])
    trainer.teacher_forward(batch)
    assert calls == [2]  # teacher 1 scored its two rows only


def test_routed_teachers_with_different_tokenizers(tmp_path, bpe):
    """Teacher 0 speaks WordPiece (hybrid loss), teacher 1 the student's BPE (hybrid = exact forward KL there)."""
    wp = wordpiece_tokenizer()
    teachers = [tiny_gpt2(len(wp), seed=0), tiny_gpt2(len(bpe), seed=1)]
    data = lm_dataset(bpe, n=8, routed=True)
    trainer = DistillationTrainer(
        tiny_gpt2(len(bpe), seed=5),
        teachers,
        args(tmp_path, cross_tokenizer="hybrid", logging_steps=1),
        train_dataset=data,
        processing_class=bpe,
        teacher_processing_class=[wp, None],
        data_collator=PromptCompletionCollator.from_tokenizer(bpe),
    )
    features = [data[i] for i in range(8)]
    batch = trainer.data_collator(features)
    for b in range(8):  # each row in its own teacher's tokens
        ids = batch["teacher_input_ids"][b][batch["teacher_attention_mask"][b].bool()].tolist()
        assert ids[-1] == (wp.sep_token_id if b % 2 == 0 else bpe.eos_token_id)
    trainer.model.eval()
    with torch.no_grad():
        _, terms, _ = trainer.compute_distillation_loss(trainer.model, batch)
        rows = [b for b in range(8) if b % 2 == 1]
        plain = PromptCompletionCollator.from_tokenizer(bpe)(
            [{k: v for k, v in features[b].items() if k != "teacher_id"} for b in rows]
        )
        inputs = {"input_ids": plain["input_ids"], "attention_mask": plain["attention_mask"]}
        s = F.log_softmax(trainer.student(**inputs).logits / 2.0, -1)
        t = F.log_softmax(teachers[1](**inputs).logits / 2.0, -1)
    mask = soft_token_mask(plain)
    kl = ((t.exp() * (t - s)).sum(-1) * 4.0)[mask].sum()
    n_total = terms["teacher0_tokens"] + terms["teacher1_tokens"]
    assert terms["teacher1_tokens"].item() == int(mask.sum())
    assert terms["teacher1_soft_loss"].item() == pytest.approx((kl / n_total).item(), rel=1e-5)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "teacher0_soft_loss" in e]
    assert len(logs) == 2 and all(e["teacher0_tokens"] + e["teacher1_tokens"] > 0 for e in logs)


def test_teachers_named_by_path(tmp_path, bpe):
    for k in range(2):
        tiny_gpt2(len(bpe), seed=k).save_pretrained(tmp_path / f"expert_{k}")
        bpe.save_pretrained(tmp_path / f"expert_{k}")
    data = lm_dataset(bpe, n=8, routed=True)
    names = [str(tmp_path / "expert_0"), "expert_1"]  # the path given, or its folder name
    data = data.remove_columns("teacher_id").add_column("teacher_id", [names[i % 2] for i in range(8)])
    trainer = routed_trainer(tmp_path, bpe, [str(tmp_path / "expert_0"), str(tmp_path / "expert_1")], data=data)
    batch = trainer.data_collator([data[i] for i in range(4)])
    assert batch["teacher_index"].tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("where", ["train", "eval", "missing"])
def test_unknown_teacher_fails_before_training(tmp_path, bpe, where):
    teachers = [tiny_gpt2(len(bpe), seed=0), tiny_gpt2(len(bpe), seed=1)]
    data = lm_dataset(bpe, n=8, routed=True)
    bad = data.remove_columns("teacher_id").add_column("teacher_id", [0, 1, 0, 2, 0, 1, 0, 1])
    kwargs = {"train_dataset": data, "eval_dataset": data}
    if where == "train":
        kwargs["train_dataset"] = bad
    elif where == "eval":
        kwargs["eval_dataset"] = {"a": data, "b": bad}
    else:
        kwargs["train_dataset"] = data.remove_columns("teacher_id")
    match = "no such column" if where == "missing" else "row 3 of .*teacher 2"
    with pytest.raises(ValueError, match=match):
        DistillationTrainer(
            tiny_gpt2(len(bpe), seed=5),
            teachers,
            args(tmp_path),
            processing_class=bpe,
            data_collator=PromptCompletionCollator.from_tokenizer(bpe),
            **kwargs,
        )
