"""Cached teacher outputs: the cache, the top-k loss, and training without a teacher."""

import hashlib
import math

import numpy as np
import pytest
import torch
import transformers as tf
from testing_utils import VOCAB, classification_data, distillation_args, tiny_bert

from hf_distill import DistillationTrainer
from hf_distill.cache import CachedOutputsCollator, cache_teacher_outputs
from hf_distill.losses import soft_target_loss, topk_soft_target_loss
from hf_distill.recipes.data import load_data_files


def dargs(tmp_path, **kw):
    base = {"per_device_train_batch_size": 4, "learning_rate": 1e-3, "seed": 0, "max_steps": 4}
    return distillation_args(tmp_path / "out", **{**base, **kw})


def hand_topk_loss(s, idx, vals, rest, T):
    """T^2 * mean_p KL over the k kept classes + one rest bin, one position at a time (float64)."""
    total = 0.0
    for p in range(len(s)):
        ps = np.exp(s[p] / T - np.log(np.exp(s[p] / T).sum()))
        q_un = np.exp(vals[p] / T)
        q = q_un / q_un.sum() * (1 - rest[p])
        ps_k = ps[idx[p]]
        kl = sum(q[i] * (math.log(q[i]) - math.log(ps_k[i])) for i in range(len(q)))
        kl += rest[p] * (math.log(rest[p]) - math.log(1 - ps_k.sum()))
        total += kl
    return T * T * total / len(s)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_topk_loss_matches_hand_computation_and_full_loss_at_k_equal_c(T):
    g = torch.Generator().manual_seed(0)
    s, t = (
        torch.randn(6, 20, generator=g, dtype=torch.float64) * 2,
        torch.randn(6, 20, generator=g, dtype=torch.float64) * 3,
    )
    k = 5
    vals, idx = t.topk(k, dim=-1)
    p_t = torch.softmax(t / T, -1)
    rest = 1 - p_t.gather(-1, idx).sum(-1)
    got = topk_soft_target_loss(s, idx, vals, rest, T).item()
    assert got == pytest.approx(hand_topk_loss(s.numpy(), idx.numpy(), vals.numpy(), rest.numpy(), T), rel=1e-4)
    assert got <= soft_target_loss(s, t, T).item() + 1e-6  # coarsening never increases a KL
    vals_all, idx_all = t.topk(20, dim=-1)
    full = topk_soft_target_loss(s, idx_all, vals_all, torch.zeros(6, dtype=torch.float64), T).item()
    assert full == pytest.approx(soft_target_loss(s, t, T).item(), rel=1e-5)


def test_cache_stores_teacher_logits_per_example_and_real_tokens_only():
    teacher = tiny_bert(layers=2, hidden=32)
    data = classification_data(10)  # padded rows of different lengths
    cached = cache_teacher_outputs(teacher, data, batch_size=4)
    with torch.no_grad():
        ref = teacher(**{k: torch.tensor(data[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    torch.testing.assert_close(torch.tensor(cached["teacher_logits"]), ref, rtol=1e-5, atol=1e-5)

    token_teacher = tiny_bert(layers=2, hidden=32, cls=tf.BertForTokenClassification)
    top = cache_teacher_outputs(token_teacher, data, top_k=2, temperature=2.0)
    with torch.no_grad():
        z = token_teacher(**{k: torch.tensor(data[k]) for k in ("input_ids", "attention_mask")}).logits
    for i in range(len(data)):
        n = sum(data[i]["attention_mask"])
        vals, idx = z[i, :n].topk(2, dim=-1)
        assert len(top[i]["teacher_topk_indices"]) == n
        torch.testing.assert_close(torch.tensor(top[i]["teacher_topk_values"]), vals, rtol=1e-5, atol=1e-5)
        assert torch.equal(torch.tensor(top[i]["teacher_topk_indices"]), idx.int())
        rest = 1 - torch.softmax(z[i, :n] / 2.0, -1).gather(-1, idx).sum(-1)
        torch.testing.assert_close(torch.tensor(top[i]["teacher_topk_rest"]), rest, rtol=1e-4, atol=1e-5)


def _masks_only(features):  # the wrapped collator: whatever it builds, the cached columns are added beside it
    return {"attention_mask": torch.tensor([f["attention_mask"] for f in features])}


@pytest.mark.parametrize(
    "mask",
    [[[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]],
    ids=["right_padding", "left_padding"],
)
def test_collator_scatters_token_rows_into_real_positions(mask):
    collate = CachedOutputsCollator(_masks_only)
    features = [{"attention_mask": m, "teacher_logits": [[float(i)] for i in range(sum(m))]} for m in mask]
    batch = collate(features)
    keep = torch.tensor(mask).bool()
    assert batch["teacher_logits"].shape == (2, 5, 1)
    assert batch["teacher_logits"][0, keep[0], 0].tolist() == [0.0, 1.0, 2.0]
    assert batch["teacher_logits"][1, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert batch["teacher_logits"][0, ~keep[0]].abs().sum() == 0


def test_collator_refuses_rows_that_do_not_match_the_real_tokens():
    features = [{"attention_mask": [1, 1, 1, 1], "teacher_logits": [[0.0]] * 3}] * 2
    with pytest.raises(ValueError, match="real tokens"):
        CachedOutputsCollator(_masks_only)(features)


def test_data_file_formats_share_one_table(tmp_path):
    (tmp_path / "a.tsv").write_text("text\tlabel\nw1 w2\t0\nw3\t1\n")
    assert load_data_files({"train": str(tmp_path / "a.tsv")})["train"]["label"] == [0, 1]
    with pytest.raises(ValueError, match="formats"):
        load_data_files({"train": str(tmp_path / "a.tsv"), "validation": str(tmp_path / "b.csv")})


def _run(tmp_path, name, teacher, data, **kw):
    student = tiny_bert(layers=1, hidden=32, seed=1, cls=type(teacher) if teacher is not None else kw.pop("cls"))
    args = dargs(tmp_path, output_dir=str(tmp_path / name), **kw.pop("args", {}))
    trainer = DistillationTrainer(student, teacher, args, train_dataset=data, **kw)
    trainer.train()
    return [(h["loss"], h["soft_loss"], h["hard_loss"]) for h in trainer.state.log_history if "loss" in h]


def test_cached_run_equals_live_run_sequence_level(tmp_path):
    teacher = tiny_bert(layers=2, hidden=32)
    data = classification_data(16)
    live = _run(tmp_path, "live", teacher, data)
    cached_data = cache_teacher_outputs(teacher, data)
    cached = _run(tmp_path, "cached", None, cached_data, cls=tf.BertForSequenceClassification)
    assert len(live) == len(cached) == 4
    for a, b in zip(live, cached):
        assert a == pytest.approx(b, rel=1e-5)


def _blake8(ids) -> int:  # the fingerprint computed another way: struct-free int64 bytes of the row, by hand
    raw = b"".join(int(i).to_bytes(8, "little", signed=True) for i in ids)
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little", signed=True)


def test_cache_stores_a_fingerprint_of_each_rows_input_ids_that_never_reaches_the_model():
    data = classification_data(6)
    cached = cache_teacher_outputs(tiny_bert(layers=2, hidden=32), data, batch_size=4)
    assert cached["teacher_input_hash"] == [_blake8(row) for row in data["input_ids"]]
    assert len(set(cached["teacher_input_hash"])) == 6
    batch = CachedOutputsCollator(tf.default_data_collator)([cached[i] for i in range(3)])
    assert "teacher_input_hash" not in batch and batch["teacher_logits"].shape == (3, 3)


def _shift_teacher_columns(cached, by=1):
    # The teacher's columns (outputs and fingerprint, written together) moved one row against the inputs, as when a
    # cache made on one ordering of the data is attached to another: every shape still fits.
    teacher_cols = [c for c in cached.column_names if c.startswith("teacher_")]
    order = np.roll(np.arange(len(cached)), by)
    shifted = cached.remove_columns(teacher_cols)
    for c in teacher_cols:
        shifted = shifted.add_column(c, [cached[c][int(j)] for j in order])
    return shifted


def test_collator_refuses_a_row_whose_inputs_do_not_match_the_cached_fingerprint():
    cached = cache_teacher_outputs(tiny_bert(layers=2, hidden=32), classification_data(4))
    features = [cached[0], cached[1]]
    features[1] = {**features[1], "teacher_input_hash": cached[2]["teacher_input_hash"]}
    with pytest.raises(ValueError, match=r"example 1 of the batch: the cached teacher outputs no longer match"):
        CachedOutputsCollator(tf.default_data_collator)(features)


def test_sequence_cache_shifted_by_one_row_fails_at_the_first_batch(tmp_path):
    cached = cache_teacher_outputs(tiny_bert(layers=2, hidden=32), classification_data(16))
    shifted = _shift_teacher_columns(cached)
    assert shifted["teacher_logits"][1] == cached["teacher_logits"][0]
    trainer = DistillationTrainer(tiny_bert(layers=1, hidden=32, seed=1), None, dargs(tmp_path), train_dataset=shifted)
    with pytest.raises(ValueError, match=r"no longer match their inputs.*python -m hf_distill.cache"):
        trainer.train()
    assert trainer.state.global_step == 0  # refused before any optimizer step


def test_old_cache_without_fingerprint_trains_like_one_with_it(tmp_path):
    cached = cache_teacher_outputs(tiny_bert(layers=2, hidden=32), classification_data(16))
    old = cached.remove_columns("teacher_input_hash")  # written before the fingerprint existed: no check, same run
    new_run = _run(tmp_path, "new", None, cached, cls=tf.BertForSequenceClassification)
    old_run = _run(tmp_path, "old", None, old, cls=tf.BertForSequenceClassification)
    assert len(new_run) == len(old_run) == 4
    for a, b in zip(new_run, old_run):
        assert a == pytest.approx(b, rel=1e-6)


def test_cached_run_equals_live_run_token_level_with_dynamic_padding(tmp_path, tokenizer):
    teacher = tiny_bert(layers=2, hidden=32, cls=tf.BertForTokenClassification)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 12, (16,), generator=g).tolist()
    ids = [torch.randint(5, VOCAB, (n,), generator=g).tolist() for n in lengths]
    from datasets import Dataset

    data = Dataset.from_dict(
        {
            "input_ids": ids,
            "attention_mask": [[1] * n for n in lengths],
            "labels": [[i % 3 for i in row] for row in ids],
        }
    )  # unpadded: padded per batch
    collator = tf.DataCollatorForTokenClassification(tokenizer)
    live = _run(tmp_path, "live", teacher, data, data_collator=collator)
    cached_data = cache_teacher_outputs(teacher, data, data_collator=collator, batch_size=5)
    cached = _run(tmp_path, "cached", None, cached_data, cls=tf.BertForTokenClassification, data_collator=collator)
    for a, b in zip(live, cached):
        assert a == pytest.approx(b, rel=1e-5)
    # top-k with k = number of classes is the same target: same losses again
    top = cache_teacher_outputs(teacher, data, data_collator=collator, top_k=3, temperature=2.0)
    topk = _run(tmp_path, "topk", None, top, cls=tf.BertForTokenClassification, data_collator=collator)
    for a, b in zip(live, topk):
        assert a == pytest.approx(b, rel=1e-4)


def test_cached_run_never_constructs_or_loads_the_teacher(tmp_path, monkeypatch):
    teacher = tiny_bert(layers=2, hidden=32)
    cached_data = cache_teacher_outputs(teacher, classification_data(16))
    student = tiny_bert(layers=1, hidden=32, seed=1)
    built = []
    original_init = tf.BertForSequenceClassification.__init__

    def counting_init(self, *a, **k):
        built.append(type(self).__name__)
        original_init(self, *a, **k)

    monkeypatch.setattr(tf.BertForSequenceClassification, "__init__", counting_init)

    def no_loading(*a, **k):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(tf.AutoModelForSequenceClassification, "from_pretrained", no_loading)
    # even a teacher path is not loaded when the data carries the teacher's outputs
    trainer = DistillationTrainer(student, "some/teacher-on-the-hub", dargs(tmp_path), train_dataset=cached_data)
    trainer.train()
    assert trainer.teacher is None and built == []
    assert any("soft_loss" in h for h in trainer.state.log_history)


@pytest.mark.parametrize(
    "case, message",
    [
        ("hidden", "hidden-state and attention alignment need the live teacher"),
        ("eval", "eval_dataset does not"),
        ("temperature", "made at temperature 2.0"),
        ("width", "cached teacher logits have 3 classes"),
    ],
)
def test_cache_misuse_fails_at_construction(tmp_path, case, message):
    teacher = tiny_bert(layers=2, hidden=32)
    data = classification_data(8)
    cached = (
        cache_teacher_outputs(teacher, data, top_k=2, temperature=2.0)
        if case == "temperature"
        else cache_teacher_outputs(teacher, data)
    )
    student = tiny_bert(layers=1, hidden=32, seed=1, num_labels=2 if case == "width" else 3)
    kw = {"hidden_weight": 1.0} if case == "hidden" else {"temperature": 4.0} if case == "temperature" else {}
    extra = {"eval_dataset": data} if case == "eval" else {}
    with pytest.raises(ValueError, match=message):
        DistillationTrainer(student, None, dargs(tmp_path, **kw), train_dataset=cached, **extra)


def test_no_teacher_and_no_cache_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="cached teacher outputs"):
        DistillationTrainer(
            tiny_bert(layers=1, hidden=32), None, dargs(tmp_path), train_dataset=classification_data(4)
        )


def test_cache_cli_writes_a_dataset_the_trainer_uses_without_teacher(tmp_path, tokenizer):
    from datasets import load_from_disk

    from hf_distill.recipes.cache_cli import main

    teacher = tiny_bert(layers=2, hidden=32)
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    words = [f"w{i}" for i in range(40)]
    rows = [" ".join(words[i % 7 : i % 7 + 3 + i % 5]) for i in range(12)]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(f"{r},{i % 3}" for i, r in enumerate(rows)))
    main(
        [
            "--teacher_model_name_or_path",
            str(tmp_path / "teacher"),
            "--data_file",
            str(tmp_path / "train.csv"),
            "--output_dir",
            str(tmp_path / "cached"),
            "--batch_size",
            "5",
            "--max_length",
            "32",
        ]
    )
    cached = load_from_disk(str(tmp_path / "cached"))
    assert {"teacher_logits", "input_ids", "label"} <= set(cached.column_names)
    enc = tokenizer(rows[3], return_tensors="pt")
    with torch.no_grad():
        ref = teacher(**enc).logits[0]
    torch.testing.assert_close(torch.tensor(cached[3]["teacher_logits"]), ref, rtol=1e-5, atol=1e-5)
    trainer = DistillationTrainer(
        tiny_bert(layers=1, hidden=32, seed=1), None, dargs(tmp_path), train_dataset=cached, processing_class=tokenizer
    )
    trainer.train()
    assert any("soft_loss" in h for h in trainer.state.log_history)
