"""hf_distill.positions: the ignored-label value, masks and token counts have one home; old names still work."""

import pytest
import torch
import transformers as tf
from testing_utils import tiny_gpt2

from hf_distill import augment, chunked, lm_data, mixing, objective, positions, transfer
from hf_distill.lm_data import PromptCompletionCollator, completion_nll
from hf_distill.positions import (
    IGNORE_INDEX,
    StepTokens,
    causal_lm_rows,
    has_labels,
    soft_token_mask,
    step_token_totals,
    token_counts,
    token_mask,
    token_scales,
)


def test_one_ignored_label_value_and_old_names_are_aliases():
    assert IGNORE_INDEX == -100
    for module, name in [
        (lm_data, "IGNORE_INDEX"),
        (chunked, "IGNORE_INDEX"),
        (mixing, "UNLABELLED"),
        (transfer, "UNLABELLED"),
        (augment, "UNLABELLED"),
    ]:
        assert getattr(module, name) == IGNORE_INDEX, (module.__name__, name)
    # moved functions: the old import paths give the very same objects
    assert chunked.causal_lm_rows is positions.causal_lm_rows
    assert chunked.token_counts is positions.token_counts
    assert chunked.step_token_totals is positions.step_token_totals
    assert lm_data.next_token_mask is positions.next_token_mask
    assert lm_data.soft_token_mask is positions.soft_token_mask
    assert lm_data.COMPLETION_MASK == positions.COMPLETION_MASK
    assert objective.token_scales is positions.token_scales


def _batch():
    return PromptCompletionCollator(0)(
        [
            {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9]},
            {"input_ids": [10, 11, 12], "labels": [-100, 11, -100]},
        ]
    )


def test_masks_and_counts_by_hand():
    batch = _batch()
    # labelled completion tokens at (0, 2..4) and (1, 1): the positions predicting them are one to the left
    assert soft_token_mask(batch).long().tolist() == [[0, 1, 1, 1, 0], [1, 0, 0, 0, 0]]
    # soft: 3 + 1 predicting positions; hard: next-token labels != -100: 3 in row 0, 1 in row 1 (token 11)
    assert token_counts(batch).tolist() == [4, 4]
    without = {k: v for k, v in batch.items() if k != "completion_mask"}  # plain batches: the real tokens count
    assert token_counts(without).tolist() == [8, 4]
    assert step_token_totals([batch, without], "cpu").tolist() == [12, 8]
    keep, soft, nxt = causal_lm_rows(soft_token_mask(batch), batch["labels"], batch["labels"].shape)
    assert int(keep.sum()) == len(soft) == len(nxt) and int(soft.sum()) == 4 and int((nxt != -100).sum()) == 4
    assert has_labels(batch["labels"]) and not has_labels(torch.full((2, 3), -100)) and not has_labels(None)


def test_token_mask_only_for_matching_token_logits():
    mask = torch.tensor([[1, 1, 0]])
    assert token_mask(mask, torch.zeros(1, 3, 7)).tolist() == [[True, True, False]]
    assert token_mask(mask, torch.zeros(1, 7)) is None  # one position per example
    assert token_mask(mask, torch.zeros(1, 4, 7)) is None  # does not line up
    assert token_mask(None, torch.zeros(1, 3, 7)) is None


def test_step_tokens_carries_the_totals_between_hooks():
    batch, other = _batch(), _batch()
    other["labels"] = torch.full_like(other["labels"], -100)  # an on-policy batch: soft targets only
    step = StepTokens()
    weights = {"soft_loss": 0.5, "hard_loss": 0.5, "hidden_loss": 1.0}
    assert step.scales(weights, batch, None, steps=2) == {name: 0.5 for name in weights}  # nothing counted yet
    num_items = step.count([batch, other], "cpu")
    assert int(num_items) == 4  # hard tokens of the whole step
    got = step.scales(weights, batch, num_items, steps=2)
    assert got == pytest.approx({"soft_loss": 4 / 8, "hard_loss": 4 / 4, "hidden_loss": 0.5})
    assert got == token_scales(weights, token_counts(batch), (torch.tensor(8), num_items), 2)
    assert step.count([other], "cpu") is None  # no label in the step: no num_items_in_batch


def _tiny_gemma2():
    torch.manual_seed(0)
    config = tf.Gemma2Config(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        final_logit_softcapping=0.5,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    return tf.Gemma2ForCausalLM(config).eval()


@pytest.mark.parametrize("factory", [tiny_gpt2, _tiny_gemma2], ids=["gpt2", "gemma2-softcap"])
def test_completion_nll_chunked_equals_full_logits(factory):
    """The chunked path uses the chunked loss's cross-entropy and the model's logit transforms (Gemma's softcap)."""
    model = factory().eval()  # no dropout
    batch = _batch()
    full, n_full = completion_nll(model, batch, chunk_size=None)
    chunk, n_chunk = completion_nll(model, batch, chunk_size=2)
    assert n_full.tolist() == n_chunk.tolist() == [3, 1]
    torch.testing.assert_close(chunk, full, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the model's own mean loss over the 4 label tokens
        reference = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
    torch.testing.assert_close(full.sum() / 4, reference, rtol=1e-5, atol=1e-5)
