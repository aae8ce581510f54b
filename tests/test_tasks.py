"""Every common task distils with the generic trainer: compute_loss equals a plain reference
computed here with the right mask, and a few train() steps change the student, not the teacher."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pytest
import torch
import transformers as tf
from datasets import Dataset
from distill_checks import (
    assert_trains_student_not_teacher,
    eval_components,
    make_args,
    probs,
    ref_kl,
    ref_soft,
    sharpen,
    token_positions,
)
from testing_utils import VOCAB, WORDS, classification_data, make_tokenizer, tiny_bert, tiny_llama

from hf_distill import DistillationTrainer

T = 2.0
TASKS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "tasks.md"


def base_rows(n=8, seq=10, seed=0) -> dict[str, torch.Tensor]:
    ds = classification_data(n, seq, seed=seed)  # padded rows: input_ids 0 where attention_mask 0
    return {k: torch.tensor(ds[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}


def to_dataset(rows: dict[str, torch.Tensor]) -> Dataset:
    return Dataset.from_dict({k: v.tolist() for k, v in rows.items()})


def first(rows: dict[str, torch.Tensor], n=4) -> dict[str, torch.Tensor]:
    return {k: v[:n] for k, v in rows.items()}


def ref_ce(pairs) -> torch.Tensor:
    """Mean of -log softmax(row)[target] over (row, target) pairs."""
    return torch.stack([-torch.log_softmax(row.double(), -1)[int(t)] for row, t in pairs]).mean()


def outputs(model, batch, label_keys):
    with torch.no_grad():
        return model.eval()(**{k: v for k, v in batch.items() if k not in label_keys})


def check_loss(trainer, batch, soft, hard, soft_w=0.7, hard_w=0.3):
    loss, comps = eval_components(trainer, batch)
    assert float(soft) > 1e-3, "student and teacher agree too closely for the check to mean anything"
    assert comps["soft_loss"] == pytest.approx(float(soft), rel=1e-4)
    assert comps["hard_loss"] == pytest.approx(float(hard), rel=1e-4)
    assert float(loss) == pytest.approx(soft_w * float(soft) + hard_w * float(hard), rel=1e-4)


# ---- token classification -------------------------------------------------------------------------


def test_token_classification(tmp_path):
    rows = base_rows()
    rows["labels"] = torch.where(rows["attention_mask"].bool(), rows["input_ids"] % 5, -100)
    teacher = tiny_bert(layers=4, hidden=64, num_labels=5, cls=tf.BertForTokenClassification)
    student = tiny_bert(layers=2, hidden=32, num_labels=5, seed=1, cls=tf.BertForTokenClassification)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path), train_dataset=to_dataset(rows)
    )
    batch = first(rows)
    s, t = outputs(student, batch, {"labels"}).logits, outputs(teacher, batch, {"labels"}).logits  # (B, L, 5)
    mask = batch["attention_mask"]
    soft = ref_soft(s, t, T, token_positions(mask))  # padding tokens excluded
    hard = ref_ce([(s[b, i], batch["labels"][b, i]) for b, i in token_positions(batch["labels"] != -100)])
    check_loss(trainer, batch, soft, hard)
    assert_trains_student_not_teacher(trainer)


# ---- extractive QA ------------------------------------------------------------------------------------


def test_question_answering_softmax_over_real_tokens_only(tmp_path):
    rows = base_rows()
    lengths = rows["attention_mask"].sum(1)
    g = torch.Generator().manual_seed(3)
    rows["start_positions"] = torch.stack([torch.randint(0, int(n), (1,), generator=g)[0] for n in lengths])
    rows["end_positions"] = torch.minimum(rows["start_positions"] + 2, lengths - 1)
    teacher = tiny_bert(layers=4, hidden=64, num_labels=2, cls=tf.BertForQuestionAnswering)
    student = tiny_bert(layers=2, hidden=32, num_labels=2, seed=1, cls=tf.BertForQuestionAnswering)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path), train_dataset=to_dataset(rows)
    )
    batch = first(rows)
    labels = {"start_positions", "end_positions"}
    s_out, t_out = outputs(student, batch, labels), outputs(teacher, batch, labels)
    n = batch["attention_mask"].sum(1)
    assert int(n.min()) < batch["attention_mask"].shape[1], "the batch must contain padding"
    # One distribution per example and head, over that example's real tokens only (padding sliced off).
    soft = (
        torch.stack(
            [
                torch.stack(
                    [ref_kl(s_out[h][b, : n[b]], probs(t_out[h][b, : n[b]], T), T) for b in range(len(n))]
                ).mean()
                for h in ("start_logits", "end_logits")
            ]
        ).mean()
        * T**2
    )
    hard = (
        ref_ce(zip(s_out.start_logits, batch["start_positions"]))
        + ref_ce(zip(s_out.end_logits, batch["end_positions"]))
    ) / 2
    check_loss(trainer, batch, soft, hard)
    assert_trains_student_not_teacher(trainer)


def test_question_answering_logit_matching_counts_real_tokens_only(tmp_path):
    batch = first(base_rows())
    teacher = tiny_bert(layers=2, hidden=32, num_labels=2, cls=tf.BertForQuestionAnswering)
    student = tiny_bert(layers=1, hidden=32, num_labels=2, seed=1, cls=tf.BertForQuestionAnswering)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, logit_loss="mse"))
    s_out, t_out = outputs(student, batch, set()), outputs(teacher, batch, set())
    real = token_positions(batch["attention_mask"])
    expected = (
        sum(
            sum((float(s_out[h][b, i]) - float(t_out[h][b, i])) ** 2 for b, i in real) / len(real)
            for h in ("start_logits", "end_logits")
        )
        / 2
    )
    _, comps = eval_components(trainer, batch)
    assert comps["soft_loss"] == pytest.approx(expected, rel=1e-4)


# ---- masked LM --------------------------------------------------------------------------------------


def test_masked_lm_positions_are_the_attention_mask(tmp_path):
    rows = base_rows()
    g = torch.Generator().manual_seed(4)
    picked = (torch.rand(rows["input_ids"].shape, generator=g) < 0.3) & rows["attention_mask"].bool()
    picked[:, 1] = True  # at least one masked token per row
    rows["labels"] = torch.where(picked, rows["input_ids"], -100)
    rows["input_ids"] = torch.where(picked, 4, rows["input_ids"])  # [MASK]
    teacher = tiny_bert(layers=4, hidden=64, cls=tf.BertForMaskedLM)
    student = tiny_bert(layers=2, hidden=32, seed=1, cls=tf.BertForMaskedLM)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path), train_dataset=to_dataset(rows)
    )
    batch = first(rows)
    s, t = outputs(student, batch, {"labels"}).logits, outputs(teacher, batch, {"labels"}).logits  # (B, L, V)
    soft = ref_soft(s, t, T, token_positions(batch["attention_mask"]))
    hard = ref_ce([(s[b, i], batch["labels"][b, i]) for b, i in token_positions(batch["labels"] != -100)])
    check_loss(trainer, batch, soft, hard)
    assert_trains_student_not_teacher(trainer)


# ---- causal LM, vocabulary padding -------------------------------------------------------------------


def causal_rows():
    rows = base_rows()
    del rows["token_type_ids"]
    rows["labels"] = torch.where(rows["attention_mask"].bool(), rows["input_ids"], -100)
    return rows


def test_causal_lm_with_padded_teacher_vocabulary(tmp_path, tokenizer, caplog):
    rows = causal_rows()
    teacher = tiny_llama(layers=4, hidden=32, vocab=128)  # 27 padding rows beyond the 101 tokens
    student = tiny_llama(layers=2, hidden=32, seed=1, vocab=VOCAB)
    assert len(tokenizer) == VOCAB
    with caplog.at_level(logging.WARNING, logger="hf_distill.checks"):
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=make_args(tmp_path),
            train_dataset=to_dataset(rows),
            processing_class=tokenizer,
        )
    assert any("padding rows" in r.getMessage() for r in caplog.records)
    batch = first(rows)
    s, t = outputs(student, batch, {"labels"}).logits, outputs(teacher, batch, {"labels"}).logits
    assert s.shape[-1] == VOCAB and t.shape[-1] == 128
    soft = ref_soft(s, t[..., :VOCAB], T, token_positions(batch["attention_mask"]))  # aligned to len(tokenizer)
    # next-token prediction: logits at i predict token i + 1
    hard = ref_ce([(s[b, i - 1], batch["labels"][b, i]) for b, i in token_positions(batch["labels"] != -100) if i > 0])
    check_loss(trainer, batch, soft, hard)
    assert_trains_student_not_teacher(trainer)


def test_causal_lm_same_padded_vocabulary_is_cut_to_the_tokenizer(tmp_path, tokenizer):
    rows = causal_rows()
    teacher, student = tiny_llama(layers=2, vocab=128), tiny_llama(layers=1, seed=1, vocab=128)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path), processing_class=tokenizer
    )
    batch = first(rows)
    s, t = outputs(student, batch, {"labels"}).logits, outputs(teacher, batch, {"labels"}).logits
    _, comps = eval_components(trainer, batch)
    soft = ref_soft(s[..., :VOCAB], t[..., :VOCAB], T, token_positions(batch["attention_mask"]))
    assert comps["soft_loss"] == pytest.approx(float(soft), rel=1e-4)


@pytest.mark.parametrize("case", ["smaller_than_tokenizer", "no_tokenizer", "different_tokenizer"])
def test_truly_different_vocabularies_fail_at_construction(tmp_path, tokenizer, case):
    student = tiny_llama(layers=1, seed=1, vocab=VOCAB)
    kwargs = {"processing_class": tokenizer}
    if case == "smaller_than_tokenizer":
        teacher = tiny_llama(layers=1, vocab=90)  # 11 real tokens missing: not padding
    elif case == "no_tokenizer":
        teacher, kwargs = tiny_llama(layers=1, vocab=128), {}  # cannot tell padding from real tokens
    else:
        teacher = tiny_llama(layers=1, vocab=VOCAB)
        reordered = [WORDS[0]] + WORDS[:0:-1]  # same words, other ids: the same id would mean another token
        kwargs["teacher_processing_class"] = make_tokenizer(tmp_path / "other", words=reordered)
    with pytest.raises(ValueError, match="vocab"):
        DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path), **kwargs)


# ---- multiple choice (2-D logits over choices: works generically) ------------------------------------


def test_multiple_choice(tmp_path):
    rows = base_rows(n=16)
    choices = {k: v.view(8, 2, -1) for k, v in rows.items()}  # (B, 2 choices, L)
    choices["labels"] = (choices["input_ids"][:, :, 0] > choices["input_ids"][:, :, 1]).long()[:, 0]
    teacher = sharpen(tiny_bert(layers=4, hidden=64, cls=tf.BertForMultipleChoice))
    student = tiny_bert(layers=2, hidden=32, seed=1, cls=tf.BertForMultipleChoice)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path), train_dataset=to_dataset(choices)
    )
    batch = first(choices)
    s, t = outputs(student, batch, {"labels"}).logits, outputs(teacher, batch, {"labels"}).logits  # (B, 2)
    soft = ref_soft(s, t, T, [(b,) for b in range(4)])
    hard = ref_ce(zip(s, batch["labels"]))
    check_loss(trainer, batch, soft, hard)
    assert_trains_student_not_teacher(trainer)


# ---- regression and logit matching ---------------------------------------------------------------------


def test_regression_head_uses_mse_and_labelled_rows_only(tmp_path):
    rows = base_rows()
    rows["labels"] = rows["attention_mask"].sum(1).float() / 10
    rows["labels"][[1, 5]] = -100.0  # transfer-set rows without a label
    rows["labels"][6] = float("nan")  # NaN also means "no label" for float labels
    teacher = sharpen(tiny_bert(layers=4, hidden=64, num_labels=1), 10.0)
    student = tiny_bert(layers=2, hidden=32, num_labels=1, seed=1)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path), train_dataset=to_dataset(rows)
    )
    batch = first(rows)  # rows 0..3: row 1 unlabelled
    s, t = outputs(student, batch, {"labels"}).logits[:, 0], outputs(teacher, batch, {"labels"}).logits[:, 0]
    soft = sum((float(a) - float(b)) ** 2 for a, b in zip(s, t)) / 4  # MSE, no softmax over one value
    labelled = [0, 2, 3]
    hard = sum((float(s[i]) - float(batch["labels"][i])) ** 2 for i in labelled) / len(labelled)
    check_loss(trainer, batch, soft, hard)
    assert_trains_student_not_teacher(trainer)  # steps include the NaN row: the loss stays finite


def test_logit_matching_option_for_classification(tmp_path):
    rows = base_rows()
    rows["labels"] = rows["input_ids"][:, 0] % 3
    teacher, student = sharpen(tiny_bert(layers=2, hidden=32)), tiny_bert(layers=1, hidden=32, seed=1)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, logit_loss="mse"))
    batch = first(rows)
    s, t = outputs(student, batch, {"labels"}).logits, outputs(teacher, batch, {"labels"}).logits  # (B, 3)
    soft = ((s.double() - t.double()) ** 2).sum() / s.numel()
    hard = ref_ce(zip(s, batch["labels"]))
    check_loss(trainer, batch, soft, hard)


# ---- attention-map distillation ----------------------------------------------------------------------


def test_attention_distillation_matches_reference_kl(tmp_path):
    rows = base_rows()
    rows["labels"] = rows["input_ids"][:, 0] % 3
    teacher = tiny_bert(layers=4, hidden=64, attn_implementation="eager")
    student = tiny_bert(layers=2, hidden=32, seed=1, attn_implementation="eager")
    args = make_args(tmp_path, attention_weight=0.5, attention_layer_map="1:2,2:4")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=to_dataset(rows))
    batch = first(rows)
    with torch.no_grad():
        s_out = student.eval()(**{k: v for k, v in batch.items() if k != "labels"}, output_attentions=True)
        t_out = teacher.eval()(**{k: v for k, v in batch.items() if k != "labels"}, output_attentions=True)
    mask = batch["attention_mask"]
    terms = []
    for s_layer, t_layer in ((1, 2), (2, 4)):
        a_s, a_t = s_out.attentions[s_layer - 1].double(), t_out.attentions[t_layer - 1].double()  # (B, H, L, L)
        rows_kl = []
        for b, i in token_positions(mask):  # real query tokens only
            per_head = []
            for h in range(a_s.shape[1]):
                p, q = a_t[b, h, i], a_s[b, h, i]
                nz = p > 0  # padded keys have probability 0 in the teacher
                per_head.append((p[nz] * torch.log(p[nz] / q[nz])).sum())
            rows_kl.append(torch.stack(per_head).mean())
        terms.append(torch.stack(rows_kl).mean())
    expected = torch.stack(terms).mean()
    loss, comps = eval_components(trainer, batch)
    assert comps["attention_loss"] == pytest.approx(float(expected), rel=1e-4)
    assert float(loss) == pytest.approx(
        0.7 * comps["soft_loss"] + 0.3 * comps["hard_loss"] + 0.5 * comps["attention_loss"], rel=1e-5
    )
    assert_trains_student_not_teacher(trainer)
    assert any("attention_loss" in h for h in trainer.state.log_history)


@pytest.mark.parametrize("problem, match", [("sdpa", "attn_implementation"), ("heads", "heads")])
def test_attention_distillation_misconfiguration(tmp_path, problem, match):
    teacher = tiny_bert(layers=2, hidden=32, attn_implementation="eager")
    if problem == "sdpa":
        student = tiny_bert(layers=1, hidden=32, attn_implementation="sdpa")
    else:
        student = tiny_bert(layers=1, hidden=32, heads=2, attn_implementation="eager")
    with pytest.raises(ValueError, match=match):
        DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, attention_weight=1.0))


def test_attention_teacher_given_by_path_is_loaded_eager(tmp_path):
    tiny_bert(layers=2, hidden=32).save_pretrained(tmp_path / "teacher")  # saved with the default (sdpa)
    student = tiny_bert(layers=1, hidden=32, attn_implementation="eager")
    trainer = DistillationTrainer(
        model=student, teacher_model=str(tmp_path / "teacher"), args=make_args(tmp_path, attention_weight=1.0)
    )
    assert trainer.teacher.config._attn_implementation == "eager"
    batch = first(base_rows())
    _, comps = eval_components(trainer, batch)
    assert comps["attention_loss"] > 0


# ---- docs/tasks.md subclassing example ----------------------------------------------------------------------


def tasks_page_example() -> str:
    text = TASKS_PAGE.read_text()
    section = text.split("<!-- section: tasks -->")[1].split("<!-- /section: tasks -->")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, "docs/tasks.md has no python example in its tasks section"
    return blocks[0]


def test_tasks_page_subclassing_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(tasks_page_example(), "docs/tasks.md", "exec"), namespace)  # the page's own code
    trainer, teacher, student = namespace["trainer"], namespace["teacher"], namespace["student"]
    # The subclass made the trainer distil both dict fields, padding tokens excluded for the slot head.
    batch = {k: torch.tensor(v[:4]) for k, v in namespace["data"][:4].items()}
    with torch.no_grad():
        s, t = student.eval()(**batch), teacher.eval()(**batch)
    intent = ref_soft(s["intent_scores"], t["intent_scores"], T, [(b,) for b in range(4)])
    slots = ref_soft(s["slot_scores"], t["slot_scores"], T, token_positions(batch["attention_mask"]))
    _, comps = eval_components(trainer, batch)
    assert comps["soft_loss"] == pytest.approx(float((intent + slots) / 2), rel=1e-4)
    assert trainer.state.global_step > 0 and math.isfinite(trainer.state.log_history[-1]["train_loss"])
    assert not any(p.requires_grad for p in teacher.parameters())
