"""Two different real (fast) tokenizers, tiny GPT-2s over them and prompt/completion data, for the cross-tokenizer
and routing tests, the DDP script and the recipe tests."""

from __future__ import annotations

import torch
import transformers as tf
from datasets import Dataset
from model_configs import gpt2_config
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from hf_distill.lm_data import tokenize_prompt_completion

TEXTS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "cars drive themselves now",
    "i do not trust self driving cars",
    "the weather is nice today",
    "machines learn from data",
    "the park is green in spring",
    "a cat and a dog play",
] * 3


def bpe_tokenizer(vocab: int = 300) -> tf.PreTrainedTokenizerFast:
    """A byte-level BPE trained on TEXTS; <|endoftext|> is bos, eos and pad (GPT-2 style)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS, trainer)
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def wordpiece_tokenizer(vocab: int | dict = 120) -> tf.PreTrainedTokenizerFast:
    """An uncased WordPiece (BERT-style: [SEP] ends a text) trained on TEXTS, or over a given vocabulary."""
    if isinstance(vocab, dict):
        tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    if not isinstance(vocab, dict):
        tok.train_from_iterator(
            TEXTS,
            trainers.WordPieceTrainer(
                vocab_size=vocab, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False
            ),
        )
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


def tiny_gpt2(vocab: int, seed: int = 0, hidden: int = 16, layers: int = 1) -> tf.GPT2LMHeadModel:
    torch.manual_seed(seed)
    return tf.GPT2LMHeadModel(gpt2_config(vocab, hidden, layers, heads=2, dropout=0.0, pad_token_id=0))


def raw_data(n: int = 24, routed: bool = False) -> Dataset:
    rows = {"prompt": [], "completion": []}
    for text in TEXTS[:n]:
        words = text.split(" ")
        rows["prompt"].append(" ".join(words[:2]))
        rows["completion"].append(" " + " ".join(words[2:]))
    if routed:
        rows["teacher_id"] = [i % 2 for i in range(len(rows["prompt"]))]
    return Dataset.from_dict(rows)


def lm_dataset(tokenizer, n: int = 24, routed: bool = False) -> Dataset:
    raw = raw_data(n, routed)
    data = tokenize_prompt_completion(raw, tokenizer, 32)
    return data.add_column("teacher_id", raw["teacher_id"]) if routed else data
