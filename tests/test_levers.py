"""The levers of issue 13 as library pieces: mixing ratios, two-stage weights, equal-budget baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from testing_utils import classification_data, distillation_args, make_tokenizer, tiny_bert
from transformers import DataCollatorWithPadding, Trainer

from hf_distill import DistillationTrainer, cache_teacher_outputs, init_student_from_teacher
from hf_distill.mixing import labelled_only, mix_transfer_set
from hf_distill.stages import hard_baseline_arguments, two_stage_arguments


def _sets(n_lab=10, n_transfer=50):
    lab = classification_data(n_lab, seed=0)
    transfer = classification_data(n_transfer, seed=1)
    transfer = transfer.map(lambda ex, i: {"row": i}, with_indices=True)  # extra column, dropped by the mix
    return lab, transfer


@pytest.mark.parametrize("ratio, expected", [(0, 0), (0.5, 5), (2, 20), (5, 50), (None, 50)])
def test_mixing_ratio_gives_that_many_unlabelled_transfer_rows(ratio, expected):
    lab, transfer = _sets()
    mixed = mix_transfer_set(lab, transfer, ratio, seed=3)
    assert len(mixed) == 10 + expected
    assert mixed.column_names == lab.column_names
    assert mixed["labels"][:10] == lab["labels"]  # the labelled rows come first, untouched
    assert mixed["labels"][10:] == [-100] * expected  # transfer rows: soft targets only
    assert len(labelled_only(mixed)) == 10
    # the transfer rows are distinct rows of the transfer set, in order
    picked = mixed["input_ids"][10:]
    rows = [transfer["input_ids"].index(x) for x in picked]
    assert rows == sorted(set(rows))


def test_mixing_is_seeded():
    lab, transfer = _sets()
    a = mix_transfer_set(lab, transfer, 1, seed=0)["input_ids"]
    assert a == mix_transfer_set(lab, transfer, 1, seed=0)["input_ids"]
    assert a != mix_transfer_set(lab, transfer, 1, seed=1)["input_ids"]


def test_mixing_errors():
    lab, transfer = _sets()
    with pytest.raises(ValueError, match="asks for 60 transfer rows"):
        mix_transfer_set(lab, transfer, 6)
    with pytest.raises(ValueError, match="ratio must be >= 0"):
        mix_transfer_set(lab, transfer, -1)
    with pytest.raises(ValueError, match="lacks the labelled set's columns"):
        mix_transfer_set(lab, transfer.remove_columns("attention_mask"), 1)


def test_mixing_keeps_cached_teacher_outputs_and_the_trainer_uses_them(tmp_path):
    teacher = tiny_bert(layers=2, hidden=32, seed=0)
    lab, transfer = _sets(8, 16)
    cache = lambda ds: cache_teacher_outputs(teacher, ds.remove_columns([c for c in ds.column_names if c == "row"]))  # noqa: E731
    mixed = mix_transfer_set(cache(lab), cache(transfer), 1.0, seed=0)
    assert "teacher_logits" in mixed.column_names and len(mixed) == 16
    with torch.no_grad():
        ids = torch.tensor(mixed["input_ids"][8:9])
        mask = torch.tensor(mixed["attention_mask"][8:9])
        expected = teacher(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits
    torch.testing.assert_close(torch.tensor(mixed["teacher_logits"][8:9]), expected, atol=1e-5, rtol=1e-5)
    student = init_student_from_teacher(teacher, num_layers=1)
    args = distillation_args(tmp_path, per_device_train_batch_size=4, max_steps=4)
    trainer = DistillationTrainer(student, None, args, train_dataset=mixed)
    trainer.train()
    assert trainer.state.global_step == 4


def _args(tmp_path, **kw):
    return distillation_args(tmp_path, **kw)


def test_two_stage_weights(tmp_path):
    args = _args(
        tmp_path,
        soft_weight=0.7,
        hard_weight=0.3,
        hidden_weight=0.0,
        attention_weight=0.5,
        num_train_epochs=4,
        temperature=3.0,
    )
    s1, s2 = two_stage_arguments(args, intermediate_epochs=2)
    assert (s1.soft_weight, s1.hard_weight, s1.hidden_weight, s1.attention_weight) == (0.0, 0.0, 1.0, 0.5)
    assert s1.num_train_epochs == 2 and s1.output_dir.endswith("stage1")
    assert (s2.soft_weight, s2.hard_weight, s2.hidden_weight, s2.attention_weight) == (0.7, 0.3, 0.0, 0.0)
    assert s2.num_train_epochs == 4 and s2.temperature == 3.0 and s2.output_dir == args.output_dir
    assert (args.hidden_weight, args.attention_weight) == (0.0, 0.5)  # the user's args are not modified
    s1, _ = two_stage_arguments(_args(tmp_path, hidden_weight=2.0), intermediate_steps=7)
    assert s1.hidden_weight == 2.0 and s1.max_steps == 7
    with pytest.raises(ValueError, match="prediction stage"):
        two_stage_arguments(_args(tmp_path, soft_weight=0, hard_weight=0, hidden_weight=1))
    with pytest.raises(ValueError, match="intermediate_weight"):
        two_stage_arguments(args, intermediate_weight=0)


def test_two_stage_runs_the_same_trainer_twice(tmp_path):
    teacher = tiny_bert(layers=4, hidden=32, seed=0)
    student = init_student_from_teacher(teacher, num_layers=2)
    data = classification_data(16)
    s1, s2 = two_stage_arguments(
        _args(tmp_path, per_device_train_batch_size=8, max_steps=2, disable_tqdm=True), intermediate_steps=2
    )
    t1 = DistillationTrainer(student, teacher, s1, train_dataset=data)
    t1.train()
    logged = [h for h in t1.state.log_history if "loss" in h]
    assert all("hidden_loss" in h and "soft_loss" not in h for h in logged)
    t2 = DistillationTrainer(t1.model, teacher, s2, train_dataset=data)
    t2.train()
    assert t2.state.global_step == 2
    assert all("soft_loss" in h and "hidden_loss" not in h for h in t2.state.log_history if "loss" in h)


def test_hard_baseline_has_the_same_budget_and_init(tmp_path):
    """Same seed, batch, schedule and number of optimizer steps as the distilled run, on the labels alone."""
    tok = make_tokenizer(tmp_path / "tok")
    teacher = tiny_bert(layers=4, hidden=32, seed=0)
    init = init_student_from_teacher(teacher, num_layers=2)
    lab, transfer = _sets(12, 36)
    mixed = mix_transfer_set(lab, transfer.remove_columns("row"), 3.0)  # 48 rows: 6 steps per epoch at batch 8
    args = _args(
        tmp_path / "d",
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=1e-3,
        seed=5,
        disable_tqdm=True,
    )
    import copy

    distilled = DistillationTrainer(
        copy.deepcopy(init),
        teacher,
        args,
        train_dataset=mixed,
        processing_class=tok,
        data_collator=DataCollatorWithPadding(tok),
    )
    distilled.train()
    steps = distilled.state.global_step
    assert steps == 6
    b_args = hard_baseline_arguments(args, steps, output_dir=str(tmp_path / "b"))
    assert (b_args.soft_weight, b_args.hard_weight, b_args.hidden_weight) == (0.0, 1.0, 0.0)
    assert (b_args.seed, b_args.per_device_train_batch_size, b_args.learning_rate) == (5, 8, 1e-3)
    baseline_model = copy.deepcopy(init)
    start = {k: v.clone() for k, v in baseline_model.state_dict().items()}
    assert all(torch.equal(start[k], v) for k, v in init.state_dict().items())  # the same init
    baseline = Trainer(
        baseline_model,
        b_args,
        train_dataset=labelled_only(mixed),
        processing_class=tok,
        data_collator=DataCollatorWithPadding(tok),
    )
    baseline.train()
    assert baseline.state.global_step == steps  # 12 labelled rows at batch 8: 2 per epoch, 3 epochs, same 6 steps
    assert not torch.equal(baseline.model.classifier.weight, init.classifier.weight)
    with pytest.raises(ValueError, match="max_steps"):
        hard_baseline_arguments(args, 0)


def test_labelled_only_token_level():
    ds = Dataset.from_dict({"labels": [[-100, 1, -100], [-100, -100], [0]], "x": [1, 2, 3]})
    assert labelled_only(ds)["x"] == [1, 3]
    assert np.array_equal(labelled_only(ds)["labels"][1], [0])


def test_ratio_counts_labelled_rows_only():
    """After augmented copies (no labels) are mixed in, a transfer ratio still means rows per *labelled* row."""
    lab, transfer = _sets(10, 50)
    with_copies = mix_transfer_set(lab, transfer.select(range(30)), None)  # 10 labelled + 30 unlabelled
    mixed = mix_transfer_set(with_copies, transfer.select(range(30, 50)), 2)
    assert len(mixed) == 40 + 20 and len(labelled_only(mixed)) == 10


def test_sweep_picks_the_best_validation_run_and_applies_each_combination(tmp_path):
    from recipes import sweep

    grid = sweep.parse_grid(["temperature=1,2", "--augment=0, 4"])
    assert grid == {"temperature": ["1", "2"], "augment": ["0", "4"]}
    assert sweep.combinations({"a": ["1", "2"], "b": ["x"]}) == [{"a": "1", "b": "x"}, {"a": "2", "b": "x"}]
    for bad in (["temperature"], ["temperature="], ["t=1", "t=2"], ["output_dir=a,b"], []):
        with pytest.raises(ValueError):
            sweep.parse_grid(bad)
    calls = []

    def fake_recipe(argv):  # validation accuracy 0.5, 0.8, 0.8: the first of the tied best wins
        calls.append(argv)
        t = float(argv[argv.index("--temperature") + 1])
        return {"student": {"accuracy": {1.0: 0.5, 2.0: 0.8, 4.0: 0.8}[t]}}

    out = sweep.sweep(fake_recipe, ["--seed", "1"], {"temperature": ["1", "2", "4"]}, str(tmp_path))
    assert out["best"]["flags"] == {"temperature": "2"} and out["best"]["validation"]["accuracy"] == 0.8
    assert [c[c.index("--output_dir") + 1] for c in calls] == [str(tmp_path / f"run-{i}") for i in range(3)]
    assert all(c[:2] == ["--seed", "1"] for c in calls)
    with pytest.raises(ValueError, match="metric"):
        sweep.sweep(fake_recipe, [], {"temperature": ["1"]}, str(tmp_path), metric="f1")
