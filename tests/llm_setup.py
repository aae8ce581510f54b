"""Old home of the causal-LM test tools, kept importable: they live in `testing_utils.py`."""

from testing_utils import TOKENS, lm_data, tiny_lm
from testing_utils import lm_collate as collate
from testing_utils import lm_tokenizer as tokenizer

__all__ = ["TOKENS", "collate", "lm_data", "tiny_lm", "tokenizer"]
