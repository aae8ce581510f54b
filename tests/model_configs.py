"""Config builders of the small GPT-2 and Llama models, one per architecture, for the tests and the benchmarks.

Nothing happens on import (no thread count, no environment): `benchmarks/` imports it too.
"""

from __future__ import annotations

import transformers as tf


def gpt2_config(vocab, hidden=32, layers=4, heads=4, positions=64, dropout=None, **kw) -> tf.GPT2Config:
    """A small GPT-2 config; `dropout` sets the residual, embedding and attention dropout (None: GPT-2's 0.1).

    bos and eos are token 0 unless `kw` names them (`bos_token_id=...`); other `kw` go to `GPT2Config`.
    """
    if dropout is not None:
        kw.update(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return tf.GPT2Config(
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=positions,
        **{"bos_token_id": 0, "eos_token_id": 0, **kw},
    )


def llama_config(
    vocab, hidden=32, layers=4, heads=4, kv_heads=2, intermediate=64, positions=64, **kw
) -> tf.LlamaConfig:
    """A small Llama config (grouped-query attention: `kv_heads` < `heads`); bos, eos and pad are token 0."""
    return tf.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        max_position_embeddings=positions,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        **kw,
    )
