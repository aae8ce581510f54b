"""hf_distill.augment: seeded copies, no hard label on augmented rows, masked-LM replacement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf
from testing_utils import WORDS, bert_config, make_tokenizer

from hf_distill.augment import augment_dataset, augment_texts

TEXTS = ["w1 w2 w3 w4 w5 w6 w7 w8", "w9 w10 w11", "w12", "w13 w14 w15 w16 w17 w18 w19 w20 w21 w22"]


def test_same_seed_same_copies_other_seed_other_copies():
    a = augment_texts(TEXTS, 3, seed=7, prob=0.3)
    assert a == augment_texts(TEXTS, 3, seed=7, prob=0.3)
    assert a != augment_texts(TEXTS, 3, seed=8, prob=0.3)
    assert len(a) == 12
    # a copy depends on (seed, example, copy) only: augmenting a prefix of the texts gives the same copies
    assert augment_texts(TEXTS[:2], 3, seed=7, prob=0.3) == a[:6]


def test_copies_change_the_text_but_keep_its_words():
    copies = augment_texts(TEXTS, 5, seed=0, prob=0.3, mask_token="[MASK]")
    for i, text in enumerate(TEXTS):
        originals = set(text.split())
        for c in copies[5 * i : 5 * i + 5]:
            words = c.split()
            assert words, "a copy is never empty"
            assert set(words) <= originals | {"[MASK]"}
            assert len(words) <= len(text.split())
            assert len(set(words) - {"[MASK]"}) == len([w for w in words if w != "[MASK]"])  # no word duplicated
    long_copies = copies[15:20]
    assert any(c != TEXTS[3] for c in long_copies)


@pytest.mark.parametrize(
    "operations, check",
    [
        (
            ("drop",),
            lambda orig, new: (
                "[MASK]" not in new and all(w in orig for w in new) and new == [w for w in orig if w in new]
            ),
        ),  # dropout keeps the order of the words left
        (("mask",), lambda orig, new: len(new) == len(orig) and all(n in (o, "[MASK]") for o, n in zip(orig, new))),
        (("shuffle",), lambda orig, new: sorted(new) == sorted(orig)),
    ],
)
def test_each_operation_does_what_it_says(operations, check):
    orig = TEXTS[3].split()
    for copy in augment_texts([TEXTS[3]], 20, seed=1, prob=0.4, operations=operations):
        assert check(orig, copy.split())


def test_probability_zero_and_one():
    assert augment_texts(TEXTS, 2, seed=0, prob=0.0, operations=("mask", "drop")) == [t for t in TEXTS for _ in (0, 1)]
    masked = augment_texts(TEXTS, 1, seed=0, prob=1.0, operations=("mask",))
    assert masked == [" ".join(["[MASK]"] * len(t.split())) for t in TEXTS]


def test_mask_rate_matches_prob():
    text = " ".join(f"w{i}" for i in range(5, 100))
    copies = augment_texts([text] * 50, 4, seed=3, prob=0.2, operations=("mask",))
    rate = np.mean([w == "[MASK]" for c in copies for w in c.split()])
    assert abs(rate - 0.2) < 0.02  # 19000 Bernoulli(0.2) draws: sd 0.003


def test_augmented_rows_carry_no_hard_label():
    from datasets import Dataset

    ds = Dataset.from_dict({"text": TEXTS, "label": [0, 1, 2, 1], "other": ["a", "b", "c", "d"]})
    aug = augment_dataset(ds, "text", 2, seed=0, label_column="label", keep_columns=["other"])
    assert len(aug) == 8
    assert aug["label"] == [-100] * 8
    assert aug["augment_source"] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert aug["other"] == ["a", "a", "b", "b", "c", "c", "d", "d"]
    assert aug["text"] == augment_texts(TEXTS, 2, seed=0)


def test_masked_lm_replaces_masks_with_its_top_candidates(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    mlm = tf.BertForMaskedLM(bert_config(layers=2, hidden=32)).eval()
    with torch.no_grad():  # make w50, w51, w52 the MLM's top candidates everywhere: bias them up
        mlm.cls.predictions.bias.zero_()
        mlm.cls.predictions.bias[[WORDS.index(w) for w in ("w50", "w51", "w52")]] = 100.0
    copies = augment_texts(TEXTS, 4, seed=0, prob=0.5, operations=("mask",), mlm=mlm, mlm_tokenizer=tok, top_k=3)
    plain = augment_texts(TEXTS, 4, seed=0, prob=0.5, operations=("mask",), mask_token=tok.mask_token)
    replaced = 0
    for c, p in zip(copies, plain):
        for w, q in zip(c.split(), p.split()):
            if q == "[MASK]":
                assert w in ("w50", "w51", "w52")  # one of the top 3, sampled
                replaced += 1
            else:
                assert w == q
    assert replaced > 5
    assert copies == augment_texts(
        TEXTS, 4, seed=0, prob=0.5, operations=("mask",), mlm=mlm, mlm_tokenizer=tok, top_k=3
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_copies": -1}, "n_copies"),
        ({"prob": 1.5}, "prob"),
        ({"operations": ("swap",)}, "operations"),
        ({"span": 1}, "span"),
        ({"mlm": object()}, "mlm_tokenizer"),
    ],
)
def test_bad_arguments_fail_with_clear_errors(kwargs, match):
    base = {"texts": TEXTS, "n_copies": 2}
    with pytest.raises(ValueError, match=match):
        augment_texts(**{**base, **kwargs})
