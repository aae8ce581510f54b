"""Transfer sets: unlabelled examples train on the soft targets only; the teacher labels a dataset."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from datasets import Dataset
from distill_checks import changed, eval_components, make_args, ref_soft, sharpen, snapshot
from testing_utils import classification_data, make_tokenizer, tiny_bert

from hf_distill import DistillationTrainer
from hf_distill.mixing import label_with_teacher, mark_unlabelled

T = 2.0


def ref_ce(rows, targets):
    return torch.stack([-torch.log_softmax(r.double(), -1)[int(y)] for r, y in zip(rows, targets)]).mean()


def make_trainer(tmp_path, data=None, **kw):
    teacher, student = sharpen(tiny_bert(layers=2, hidden=32, seed=5)), tiny_bert(layers=1, hidden=32, seed=1)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path, **kw), train_dataset=data
    )
    return trainer, student, teacher


def logits_of(model, batch):
    with torch.no_grad():
        return model.eval()(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_mixed_batch_hard_loss_over_labelled_rows_soft_over_all(tmp_path):
    ds = mark_unlabelled(
        classification_data(4, 10).map(
            lambda ex, i: {"labels": None if i in (1, 3) else ex["labels"]}, with_indices=True
        )
    )
    batch = {k: torch.tensor(ds[k]) for k in ds.column_names}
    assert batch["labels"].tolist()[1] == -100 and batch["labels"].tolist()[3] == -100
    trainer, student, teacher = make_trainer(tmp_path)
    s, t = logits_of(student, batch), logits_of(teacher, batch)
    loss, comps = eval_components(trainer, batch)
    soft = ref_soft(s, t, T, [(b,) for b in range(4)])  # every row
    hard = ref_ce(s[[0, 2]], batch["labels"][[0, 2]])  # labelled rows only
    assert comps["soft_loss"] == pytest.approx(float(soft), rel=1e-4)
    assert comps["hard_loss"] == pytest.approx(float(hard), rel=1e-4)
    assert float(loss) == pytest.approx(0.7 * float(soft) + 0.3 * float(hard), rel=1e-4)


def test_mixed_multi_label_batch(tmp_path):
    data = classification_data(4, 10)
    batch = {k: torch.tensor(data[k]) for k in data.column_names}
    batch["labels"] = torch.tensor([[1.0, 0.0, 1.0], [-100.0] * 3, [0.0, 1.0, 0.0], [float("nan")] * 3])
    teacher = sharpen(tiny_bert(layers=2, hidden=32, seed=5, problem_type="multi_label_classification"))
    student = tiny_bert(layers=1, hidden=32, seed=1, problem_type="multi_label_classification")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path))
    s = logits_of(student, batch).double()
    y = batch["labels"][[0, 2]].double()
    # binary cross-entropy with logits, by hand, over the labelled rows only
    bce = -(y * torch.log(torch.sigmoid(s[[0, 2]])) + (1 - y) * torch.log(1 - torch.sigmoid(s[[0, 2]]))).mean()
    _, comps = eval_components(trainer, batch)
    assert comps["hard_loss"] == pytest.approx(float(bce), rel=1e-4)


def test_unlabelled_batches_train_on_soft_targets_only(tmp_path):
    data = classification_data(8, 10)
    batch = {k: torch.tensor(data[:4][k]) for k in data.column_names}
    batch["labels"][:] = -100
    trainer, student, teacher = make_trainer(tmp_path, data.remove_columns("labels"))
    loss, comps = eval_components(trainer, batch)
    assert set(comps) == {"soft_loss"}  # no NaN hard loss from an all-ignored cross-entropy
    soft = ref_soft(logits_of(student, batch), logits_of(teacher, batch), T, [(b,) for b in range(4)])
    assert float(loss) == pytest.approx(0.7 * float(soft), rel=1e-4)
    before, t_before = snapshot(student), snapshot(teacher)
    trainer.train()  # a dataset with no labels column at all
    assert changed(before, student) and not changed(t_before, teacher)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all("soft_loss" in h and "hard_loss" not in h for h in logged)


def test_mark_unlabelled_token_level_and_missing_column(tmp_path):
    ds = Dataset.from_dict({"input_ids": [[5, 6, 7], [8, 9]], "labels": [[1, 0, 2], None]})
    assert mark_unlabelled(ds)["labels"] == [[1, 0, 2], [-100, -100]]
    with pytest.raises(ValueError, match="no 'label' column"):
        mark_unlabelled(ds, label_column="label")


def test_label_with_teacher_stores_the_teachers_logits(tmp_path):
    tokenizer = make_tokenizer(tmp_path / "tok")
    texts = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9 w10", "w11", "w12 w13 w14"]
    ds = Dataset.from_dict({"text": texts}).map(lambda ex: tokenizer(ex["text"]), remove_columns=["text"])
    teacher = tiny_bert(layers=2, hidden=32, num_labels=4, cls=tf.BertForTokenClassification).train()
    collator = tf.DataCollatorWithPadding(tokenizer)
    labelled = label_with_teacher(teacher, ds, batch_size=2, data_collator=collator)
    assert teacher.training  # mode restored
    assert labelled.column_names == ds.column_names + ["teacher_logits", "teacher_input_hash"]
    teacher.eval()
    for example, stored in zip(ds, labelled["teacher_logits"]):
        alone = {k: torch.tensor([example[k]]) for k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            direct = teacher(**alone).logits[0]  # (L_i, 4), no padding at all
        assert torch.tensor(stored).shape == direct.shape
        torch.testing.assert_close(torch.tensor(stored), direct, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="already has"):
        label_with_teacher(teacher, labelled)


def test_stored_soft_targets_are_the_trainers_targets(tmp_path):
    data = classification_data(8, 10)
    trainer, student, teacher = make_trainer(tmp_path)
    labelled = label_with_teacher(teacher, data.remove_columns("labels"), batch_size=3)
    batch = {k: torch.tensor(data[:4][k]) for k in data.column_names}
    stored = torch.tensor(labelled["teacher_logits"][:4])  # (4, 3)
    _, comps = eval_components(trainer, batch)
    expected = ref_soft(logits_of(student, batch), stored, T, [(b,) for b in range(4)])
    assert comps["soft_loss"] == pytest.approx(float(expected), rel=1e-4)


def test_old_transfer_module_names_stay_importable():
    from hf_distill import mixing, transfer

    assert transfer.label_with_teacher is mixing.label_with_teacher
    assert transfer.mark_unlabelled is mixing.mark_unlabelled
    assert transfer.UNLABELLED == mixing.IGNORE_INDEX == -100
