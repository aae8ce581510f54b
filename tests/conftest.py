"""Tiny random models and data for fast tests (no Hub access)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest
import torch
import transformers as tf
from datasets import Dataset

# Tiny models are overhead-bound: one intra-op thread per process is as fast and does not oversubscribe
# a 2-core machine when tests start subprocesses (torchrun) or run beside other work.
torch.set_num_threads(1)

# Limits on child processes (torchrun, recipes, benchmarks) guard against a hung child only (a deadlocked process
# group), never against a slow machine: on 2 cores shared with other work a 30 s launch can take many minutes, and no
# test may fail because the machine is slow or busy. Tests wait on events (exit codes, files, log lines), not on time.
HANG_TIMEOUT_S = 1800

VOCAB = 101  # tiny shared vocabulary size
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]


def bert_config(layers=12, hidden=64, heads=4, num_labels=3, vocab=VOCAB, **kw):
    return tf.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        num_labels=num_labels,
        **kw,
    )


def tiny_bert(layers=12, hidden=64, num_labels=3, seed=0, cls=tf.BertForSequenceClassification, **kw):
    torch.manual_seed(seed)
    return cls(bert_config(layers=layers, hidden=hidden, num_labels=num_labels, **kw)).eval()


def tiny_roberta(layers=4, hidden=32, seed=0, cls=tf.RobertaForSequenceClassification):
    torch.manual_seed(seed)
    return cls(
        tf.RobertaConfig(
            vocab_size=VOCAB,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=70,
            num_labels=3,
        )
    )


def tiny_distilbert(layers=4, hidden=32, seed=0, cls=tf.DistilBertForSequenceClassification, num_labels=3):
    torch.manual_seed(seed)
    return cls(
        tf.DistilBertConfig(
            vocab_size=VOCAB,
            dim=hidden,
            n_layers=layers,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=64,
            num_labels=num_labels,
        )
    )


def tiny_gpt2(layers=4, hidden=32, seed=0, vocab=VOCAB):
    torch.manual_seed(seed)
    return tf.GPT2LMHeadModel(
        tf.GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    )


def tiny_llama(layers=4, hidden=32, seed=0, vocab=VOCAB):
    torch.manual_seed(seed)
    return tf.LlamaForCausalLM(
        tf.LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )


def make_tokenizer(directory, words=WORDS) -> tf.PreTrainedTokenizerBase:
    """A BERT WordPiece tokenizer over the tiny vocabulary WORDS (w0 .. w95), saved to `directory`."""
    tokenizer = tf.BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def classification_data(n=32, seq=12, num_labels=3, seed=0, with_padding=True) -> Dataset:
    """Random token rows; label = (count of even ids) mod num_labels, so the task is learnable."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    if with_padding:
        lengths = torch.randint(seq // 2, seq + 1, (n,), generator=g)
        for i, length in enumerate(lengths):
            mask[i, length:] = 0
            ids[i, length:] = 0
    labels = ((ids % 2 == 0) & (mask == 1)).sum(1) % num_labels
    return Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": mask.tolist(),
            "token_type_ids": torch.zeros_like(ids).tolist(),
            "labels": labels.tolist(),
        }
    )


def fixed_batch(n=4, seq=10, num_labels=3, seed=1) -> dict[str, torch.Tensor]:
    ds = classification_data(n, seq, num_labels, seed)
    return {k: torch.tensor(ds[k]) for k in ds.column_names}


@pytest.fixture
def tokenizer(tmp_path):
    return make_tokenizer(tmp_path / "tokenizer")


def pytest_configure(config):
    config.addinivalue_line("markers", "distributed: multi-process runs (torchrun / accelerate launch, gloo on CPU)")
