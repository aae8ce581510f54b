"""pytest set-up: the shared fixtures and markers (importing testing_utils sets the offline environment).

The tiny models, data and argument builders live in `testing_utils.py`; test files import them from there.
"""

from __future__ import annotations

import pytest
from testing_utils import HANG_TIMEOUT_S, make_tokenizer  # noqa: F401 - docs/reliability.md names conftest.HANG_TIMEOUT_S


@pytest.fixture
def tokenizer(tmp_path):
    """The tiny BERT WordPiece tokenizer (`make_tokenizer`), saved under tmp_path/tokenizer."""
    return make_tokenizer(tmp_path / "tokenizer")


def pytest_configure(config):
    config.addinivalue_line("markers", "distributed: multi-process runs (torchrun / accelerate launch, gloo on CPU)")
