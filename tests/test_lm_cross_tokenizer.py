"""benchmarks/lm_cross_tokenizer.py end to end in its tiny mode (real tweets, MiniLM WordPiece vs a trained BPE)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testing_utils import run_script_main
from transformers import AutoTokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lm_cross_tokenizer.py"


def test_tiny_run_writes_consistent_results(tmp_path):
    run_script_main(SCRIPT, ["--tiny", "--out_dir", str(tmp_path)])  # `python SCRIPT --tiny ...`, in this process
    summary = json.loads((tmp_path / "lm_cross_tokenizer_results.json").read_text())
    assert (tmp_path / "lm_cross_tokenizer_results.md").read_text().startswith("# Cross-tokenizer distillation")
    assert (tmp_path / summary["plot"]).exists()
    students = summary["students"]
    assert set(students) == {"ce", "uld", "hybrid", "same"}
    gain = students["ce"]["test_bpc"] - students["same"]["test_bpc"]
    for row in students.values():  # the shares follow from the bits per character reported beside them
        assert row["test_bpc"] == pytest.approx(sum(row["per_seed_test"]) / 2)
        assert row["gain_recovered"] == pytest.approx((students["ce"]["test_bpc"] - row["test_bpc"]) / gain)
    cost = summary["step_cost"]
    # hybrid over a permuted copy of the student's vocabulary is exactly the same-tokenizer loss
    assert cost["loss"]["hybrid"] == pytest.approx(cost["loss"]["same"], rel=1e-5)
    assert cost["ratio_uld"] == pytest.approx(cost["median_seconds"]["uld"] / cost["median_seconds"]["same"])
    meta = summary["meta"]
    assert 0 < meta["aligned_share_test"] <= 1 and 0 < meta["shared_tokens"] < meta["vocab_b"]
    assert meta["command"].startswith("PYTHONPATH=. python benchmarks/lm_cross_tokenizer.py --tiny")
    tok = AutoTokenizer.from_pretrained(meta["tokenizer_dir"])  # the trained BPE is saved with the results
    assert len(tok) == meta["vocab_b"] and tok.decode(tok("self driving cars")["input_ids"]) == "self driving cars"
