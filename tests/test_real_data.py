"""benchmarks/real_data.py end to end in a tiny mode (tiny random BERT, a few dozen synthetic tweets)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from testing_utils import WORDS, imported_script, make_tokenizer, tiny_bert

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_data.py"


@pytest.fixture(scope="module")
def real_data():
    with imported_script(SCRIPT, "real_data") as module:
        yield module


def synthetic_rows(n, seed=0):
    """'Tweets' of tiny-vocabulary words; the label is the most frequent of three word groups."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        words = rng.choice(WORDS[5:], size=rng.integers(4, 12))
        ids = [WORDS.index(w) for w in words]
        label = int(np.bincount([i % 3 for i in ids], minlength=3).argmax())
        rows.append((" ".join(words), label))
    return rows


def test_stratified_split_is_disjoint_exact_and_stratified(real_data):
    labels = [0] * 500 + [1] * 300 + [2] * 200
    split = real_data.stratified_split(labels, {"a": 100, "b": 50, "c": 333}, seed=3)
    assert {k: len(v) for k, v in split.items()} == {"a": 100, "b": 50, "c": 333}
    together = np.concatenate(list(split.values()))
    assert len(set(together.tolist())) == len(together)  # disjoint
    assert np.bincount(np.asarray(labels)[split["a"]]).tolist() == [50, 30, 20]
    # 166.5, 99.9, 66.6: the 2 left go to .9 and .6
    assert np.bincount(np.asarray(labels)[split["c"]]).tolist() == [166, 100, 67]
    again = real_data.stratified_split(labels, {"a": 100, "b": 50, "c": 333}, seed=3)
    assert all((split[k] == again[k]).all() for k in split)  # seeded
    with pytest.raises(ValueError, match="only 1000"):
        real_data.stratified_split(labels, {"a": 1001}, seed=0)


def test_load_tweets_reads_and_deduplicates(real_data, tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(
        b"sentiment,confidence,text\nnegative,0.5,bad \xd1 day\npositive,1,good\n"
        b"neutral,,good\nneutral,1,meh\nother,1,x\n"
    )
    assert real_data.load_tweets(str(path)) == [("bad \ufffd day", 0), ("good", 2), ("meh", 1)]


def test_bootstrap_interval_brackets_the_difference(real_data):
    a = (np.arange(400) % 4 != 0).astype(float)  # 75% correct
    b = (np.arange(400) % 2 != 0).astype(float)  # 50% correct
    low, high = real_data.paired_bootstrap(a, b, seed=0)
    assert low < 0.25 < high and high - low < 0.2


def test_script_runs_every_experiment_in_tiny_mode(real_data, tmp_path, capsys):
    tokenizer = make_tokenizer(tmp_path / "tok")
    labels = {
        "id2label": dict(enumerate(real_data.LABELS)),
        "label2id": {n: i for i, n in enumerate(real_data.LABELS)},
    }
    base_fn = lambda: tiny_bert(layers=4, hidden=32, **labels)  # noqa: E731
    cfg = real_data.RealDataConfig(
        n_train=40,
        n_val=12,
        n_test=16,
        max_length=16,
        batch_size=8,
        epochs=1,
        evals_per_run=1,
        small_min_steps=2,
        small_evals_per_run=1,
        student_layers=2,
        small_fraction=0.1,
        labelled_fraction=0.25,
        temperatures="1,2,4",
        out_dir=str(tmp_path / "docs"),
        threads=1,
        n_extra_unlabelled=8,
    )
    results = real_data.run(cfg, base_fn, tokenizer, synthetic_rows(80))

    runs = results["runs"]
    assert list(runs) == [
        "teacher",
        "hard",
        "soft+hard T=2",
        "soft+hard+hidden",
        "hard 10%",
        "soft+hard 10%",
        "hard 25%",
        "transfer 25% labels",
        "soft+hard +8 unlabelled",
        "soft+hard T=1",
        "soft+hard T=4",
    ]
    assert results["complete"] and results["data"]["small_subset"] == 4 and results["data"]["transfer_labelled"] == 10
    counts = results["data"]["class_counts"]
    assert sum(counts["train"].values()) == 40 and sum(counts["test"].values()) == 16
    teacher_acc = runs["teacher"]["accuracy"]
    for name, r in runs.items():
        assert r["retention"] == pytest.approx(r["accuracy"] / teacher_acc)
        assert r["layers"] == (4 if name == "teacher" else 2)
        assert r["accuracy"] * 16 == pytest.approx(round(r["accuracy"] * 16))  # a count of the 16 test rows
    assert runs["soft+hard+hidden"]["hidden_weight"] == 1.0 and "temperature" not in runs["hard"]
    assert [runs[f"soft+hard T={t}"]["temperature"] for t in (1, 2, 4)] == [1.0, 2.0, 4.0]
    # 1 epoch of 40 examples at batch 8 = 5 steps; the small runs train for >= small_min_steps
    assert runs["hard"]["steps"] == 5 and runs["hard 10%"]["steps"] >= 2

    s = results["summary"]
    best = s["best_student_by_validation"]
    assert runs[best]["best_val_accuracy"] == max(
        r["best_val_accuracy"] for n, r in runs.items() if r["data"] == "100% labels" and "temperature" in r
    )
    assert s["distilled_minus_hard"] == pytest.approx(runs[best]["accuracy"] - runs["hard"]["accuracy"])
    assert s["extra_unlabelled_minus_hard"] == pytest.approx(
        runs["soft+hard +8 unlabelled"]["accuracy"] - runs["hard"]["accuracy"]
    )
    assert runs["soft+hard +8 unlabelled"]["steps"] == 6  # 48 examples at batch 8, one epoch
    gap = runs["hard"]["accuracy"] - runs["hard 10%"]["accuracy"]
    assert s["small_gap_full_minus_hard"] == pytest.approx(gap)

    docs = Path(cfg.out_dir)
    saved = json.loads((docs / "real_data_results.json").read_text())
    assert saved["provenance"]["command"].startswith("python ") and saved["provenance"]["commit"]
    assert saved["runs"]["teacher"]["accuracy"] == teacher_acc
    for png in ("students", "temperature", "small_data"):
        assert (docs / f"real_data_{png}.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "| transfer 25% labels | 2 |" in out and "best_student_by_validation" in out


LEVERS = Path(__file__).resolve().parents[1] / "benchmarks" / "real_data_levers.py"


@pytest.fixture(scope="module")
def levers(real_data):
    sys.path.insert(0, str(LEVERS.parent))  # the script imports real_data's helpers
    spec = importlib.util.spec_from_file_location("real_data_levers", LEVERS)
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_data_levers"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("real_data_levers", None)
    sys.path.remove(str(LEVERS.parent))


def test_mean_ci_and_pooled_bootstrap(levers):
    m = levers.mean_ci([0.70, 0.72, 0.74])
    assert m["mean"] == pytest.approx(0.72)
    assert m["ci95"] == pytest.approx(4.303 * 0.02 / np.sqrt(3))  # t(2) * sd / sqrt(n)
    assert levers.mean_ci([0.5])["ci95"] == 0.0
    a = [np.ones(200), np.ones(200)]
    b = [np.zeros(200), np.ones(200)]  # mean-over-seeds difference is 0.5 on every row
    assert levers.pooled_bootstrap(a, b, seed=0) == pytest.approx([0.5, 0.5])


def test_levers_script_runs_every_experiment_in_tiny_mode(levers, tmp_path, capsys):
    tokenizer = make_tokenizer(tmp_path / "tok")
    labels = {"id2label": dict(enumerate(levers.LABELS)), "label2id": {n: i for i, n in enumerate(levers.LABELS)}}
    cfg = levers.LeversConfig(
        n_train=40,
        n_val=12,
        n_test=16,
        n_transfer=30,
        max_length=16,
        batch_size=8,
        teacher_batch_size=8,
        teacher_epochs=1,
        steps=6,
        short_epochs=1,
        evals_per_run=2,
        temperatures="4",
        augment=2,
        small_fraction=0.1,
        small_steps=3,
        small_augment=2,
        seeds="0,1",
        sizes="1,2",
        student_layers=2,
        speed_examples=16,
        speed_threads=1,
        threads=1,
        out_dir=str(tmp_path / "docs"),
    )
    results = levers.run(cfg, lambda: tiny_bert(layers=4, hidden=32, **labels), tokenizer, synthetic_rows(120))
    runs, sel = results["runs"], results["selection"]
    assert results["complete"] and not results["skipped"]
    assert results["data"]["augmented"] == 80 and results["data"]["transfer"] == 30
    assert results["data"]["mixed_rows"] == {"labels": 40, "augment": 120, "transfer": 70, "augment+transfer": 150}
    # the winner is the candidate with the best validation accuracy (ties: the cheaper, listed first)
    best = max(sel["candidates"].values())
    assert sel["data"] == next(c for c in levers.CANDIDATES if sel["candidates"][c] == best)
    for init in ("teacher", "pretrained"):
        names = results["final_names"][init]
        for seed in (0, 1):
            h, d = runs[names["hard"][seed]], runs[names["distilled"][seed]]
            assert h["steps"] == d["steps"] == 6  # the equal budget
        g = results["summary"][init]
        diffs = [runs[names["distilled"][k]]["accuracy"] - runs[names["hard"][k]]["accuracy"] for k in (0, 1)]
        assert g["distilled_minus_hard"]["mean"] == pytest.approx(np.mean(diffs))
        chosen_two_stage = sel[f"{init}_config"]["two_stage"]
        vals = sel[f"{init}_two_stage_val"]
        assert chosen_two_stage == (vals["True"] > vals["False"])
    sm = results["summary"]["small_data"]
    gap = sm["full_data_hard"] - sm["hard_3pct"]
    expected = (sm["small+augment_soft"] - sm["hard_3pct"]) / gap if gap > 0 else float("nan")
    assert sm["small+augment_gap_closed"] == pytest.approx(expected, nan_ok=True)
    assert set(results["size_sweep"]) == {"1", "2"}
    assert all(v["examples_per_second_cpu"] > 0 for v in results["size_sweep"].values())
    docs = Path(cfg.out_dir)
    assert json.loads((docs / "real_data_levers_results.json").read_text())["complete"]
    assert (docs / "real_data_levers_sizes.png").read_bytes()[:4] == b"\x89PNG"
    assert "| teacher (2 seeds) |" in capsys.readouterr().out
