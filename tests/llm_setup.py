"""Tiny causal LMs, a 50-token tokenizer and unequally padded data for the chunked-loss trainer tests and the DDP
script."""

import torch
import transformers as tf
from datasets import Dataset
from tokenizers import Tokenizer, models

TOKENS = 50  # the shared tokenizer's size; output layers are padded beyond it (student 56, teacher 64)


def tokenizer():
    vocab = {f"t{i}": i for i in range(TOKENS)}
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")), pad_token="t0", unk_token="t1"
    )


def tiny_lm(arch: str = "llama", vocab: int = 56, hidden: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = tf.GPT2Config(
            vocab_size=vocab,
            n_embd=hidden,
            n_layer=2,
            n_head=2,
            n_positions=32,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        return tf.GPT2LMHeadModel(config)
    config = tf.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return tf.LlamaForCausalLM(config)


def lm_data(n: int = 16, seed: int = 0) -> Dataset:
    """Unpadded rows of 3-12 tokens; some rows have an ignored prompt (-100 labels), one has no label at all."""
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "labels": []}
    for i in range(n):
        ids = torch.randint(2, TOKENS, (int(torch.randint(3, 13, (1,), generator=g)),), generator=g).tolist()
        labels = list(ids)
        if i % 3 == 0:
            labels[: len(ids) // 2] = [-100] * (len(ids) // 2)
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
    return Dataset.from_dict(rows)


def collate(features: list[dict]) -> dict:
    """Right padding to the longest row: pad id 0, attention_mask 0, label -100."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        pad = width - len(f["input_ids"])
        batch["input_ids"].append(f["input_ids"] + [0] * pad)
        batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
        batch["labels"].append(f["labels"] + [-100] * pad)
    return {k: torch.tensor(v) for k, v in batch.items()}
