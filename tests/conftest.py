"""pytest set-up: the shared fixtures and markers (importing testing_utils sets the offline environment).

The tiny models, data and argument builders live in `testing_utils.py`; they are re-exported here for tests
that still import them from `conftest`.
"""

from __future__ import annotations

import pytest
from testing_utils import (  # noqa: F401 - re-exported for tests that import them from conftest
    HANG_TIMEOUT_S,
    TEST_ARGS,
    TOKENS,
    VOCAB,
    WORDS,
    bert_config,
    classification_data,
    distillation_args,
    fixed_batch,
    gpt2_config,
    llama_config,
    lm_collate,
    lm_data,
    lm_tokenizer,
    make_tokenizer,
    tiny_bert,
    tiny_distilbert,
    tiny_gpt2,
    tiny_llama,
    tiny_lm,
    tiny_lm_config,
    tiny_roberta,
)


@pytest.fixture
def tokenizer(tmp_path):
    """The tiny BERT WordPiece tokenizer (`make_tokenizer`), saved under tmp_path/tokenizer."""
    return make_tokenizer(tmp_path / "tokenizer")


def pytest_configure(config):
    config.addinivalue_line("markers", "distributed: multi-process runs (torchrun / accelerate launch, gloo on CPU)")
