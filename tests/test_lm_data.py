"""Prompt/completion data for causal LMs: encoding, chat rendering, the collator, completion-only losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from testing_utils import distillation_args, make_tokenizer, tiny_gpt2, tiny_llama

from hf_distill import DistillationTrainer
from hf_distill.lm_data import (
    PromptCompletionCollator,
    completion_nll,
    data_format,
    encode_example,
    next_token_mask,
    split_chat,
    tokenize_prompt_completion,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["prompt", "completion"], "prompt_completion"),
        (["messages", "id"], "messages"),
        (["prompt", "completion", "messages"], "prompt_completion"),
    ],
)
def test_data_format(columns, expected):
    assert data_format(columns) == expected


def test_neither_format_is_a_value_error():
    with pytest.raises(ValueError, match="'prompt' and 'completion' columns.*'messages'"):
        data_format(["text", "label"])


def test_prompt_tokens_are_masked_and_eos_closes_the_completion(tokenizer):
    ds = Dataset.from_dict({"prompt": ["w1 w2 w3"], "completion": ["w4 w5"]})
    row = tokenize_prompt_completion(ds, tokenizer, max_length=16)[0]
    p, c, sep = ids(tokenizer, "w1 w2 w3"), ids(tokenizer, "w4 w5"), tokenizer.sep_token_id
    assert row["input_ids"] == p + c + [sep]  # BERT-style tokenizer: [SEP] ends the completion
    assert row["labels"] == [-100] * 3 + c + [sep]


def test_bos_starts_the_prompt_when_the_tokenizer_has_one(tokenizer):
    tokenizer.bos_token = "[CLS]"
    ds = Dataset.from_dict({"prompt": ["w1"], "completion": ["w2"]})
    row = tokenize_prompt_completion(ds, tokenizer, max_length=8, append_eos=False)[0]
    assert row["input_ids"] == [tokenizer.cls_token_id] + ids(tokenizer, "w1 w2")
    assert row["labels"] == [-100, -100] + ids(tokenizer, "w2")


def test_completion_is_cut_to_max_length_but_never_the_prompt():
    assert encode_example([1, 2, 3], [4, 5, 6, 7], max_length=5) == {
        "input_ids": [1, 2, 3, 4, 5],
        "labels": [-100, -100, -100, 4, 5],
    }
    with pytest.raises(ValueError, match="prompt of 5 tokens.*max_length=5"):
        encode_example([1, 2, 3, 4, 5], [6], max_length=5)


@pytest.mark.parametrize("completion", ["", "   ", None])
def test_empty_completion_is_a_value_error(tokenizer, completion):
    ds = Dataset.from_dict({"prompt": ["w1", "w2"], "completion": ["w3", completion]})
    with pytest.raises(ValueError, match="example 1 has an empty completion"):
        tokenize_prompt_completion(ds, tokenizer, max_length=8)


def test_prompt_longer_than_the_limit_is_a_value_error(tokenizer):
    ds = Dataset.from_dict({"prompt": ["w1", "w1 w2 w3 w4 w5 w6"], "completion": ["w7", "w8"]})
    with pytest.raises(ValueError, match="example 1 has a prompt of 6 tokens"):
        tokenize_prompt_completion(ds, tokenizer, max_length=6)


def test_chat_messages_rendered_with_the_template(tokenizer):
    tokenizer.chat_template = CHAT_TEMPLATE
    messages = [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3"}]
    prompt, completion = split_chat(messages, tokenizer)
    assert prompt == "user w1 w2 [SEP] assistant "
    assert completion == "w3 [SEP] "
    row = tokenize_prompt_completion(Dataset.from_dict({"messages": [messages]}), tokenizer, max_length=32)[0]
    p, c = ids(tokenizer, prompt), ids(tokenizer, completion)  # the template's [SEP] already ends the turn
    assert c[-1] == tokenizer.sep_token_id
    assert row["input_ids"] == p + c
    assert row["labels"] == [-100] * len(p) + c
    # TRL's conversational prompt / completion columns (lists of messages) render the same way
    conversational = Dataset.from_dict({"prompt": [messages[:1]], "completion": [messages[1:]]})
    assert tokenize_prompt_completion(conversational, tokenizer, max_length=32)[0] == row


def test_chat_errors(tokenizer):
    messages = [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"}]
    with pytest.raises(ValueError, match="no chat_template"):
        split_chat(messages, tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    with pytest.raises(ValueError, match="final 'assistant' message"):
        split_chat(messages[:1], tokenizer)


def test_collator_pads_right_for_training_and_left_for_generation():
    features = [
        {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]},
        {"input_ids": [9, 10, 11], "labels": [-100, -100, 11]},
        {"input_ids": [12, 13, 14, 15, 16], "labels": [-100, -100, -100, 15, 16]},
    ]
    batch = PromptCompletionCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 0], [9, 10, 11, 0, 0], [12, 13, 14, 15, 16]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [
        [-100, -100, 7, 8, -100],
        [-100, -100, 11, -100, -100],
        [-100, -100, -100, 15, 16],
    ]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 1]]
    assert batch["prompt_input_ids"].tolist() == [[0, 5, 6], [0, 9, 10], [12, 13, 14]]
    assert batch["prompt_attention_mask"].tolist() == [[0, 1, 1], [0, 1, 1], [1, 1, 1]]


def test_collator_keeps_masked_tokens_inside_a_completion():
    batch = PromptCompletionCollator(0)([{"input_ids": [1, 2, 3, 4], "labels": [-100, 2, -100, 4]}])
    assert batch["prompt_input_ids"].tolist() == [[1]]
    assert batch["labels"].tolist() == [[-100, 2, -100, 4]]
    assert batch["completion_mask"].tolist() == [[0, 1, 0, 1]]


def test_collator_needs_a_pad_token():
    with pytest.raises(ValueError, match="pad_token_id"):
        PromptCompletionCollator(None)


def test_next_token_mask_shifts_left():
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    assert next_token_mask(mask).tolist() == [[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]]


@pytest.mark.parametrize("chunk", [None, 4])
@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama])
def test_losses_count_completion_tokens_only(tmp_path, factory, chunk):
    """soft and hard loss of the trainer == a plain reference over the completion tokens only."""
    tok = make_tokenizer(tmp_path / "tok")
    ds = Dataset.from_dict({"prompt": ["w1 w2 w3", "w4", "w5 w6"], "completion": ["w7 w8", "w9 w10 w11", "w12"]})
    data = tokenize_prompt_completion(ds, tok, max_length=16)
    batch = PromptCompletionCollator.from_tokenizer(tok)([data[i] for i in range(3)])
    student, teacher = factory(layers=2, seed=0).eval(), factory(layers=3, seed=1).eval()
    T = 2.0
    args = distillation_args(tmp_path / "out", temperature=T, soft_weight=0.7, hard_weight=0.3, loss_chunk_size=chunk)
    trainer = DistillationTrainer(
        student, teacher, args, processing_class=tok, data_collator=PromptCompletionCollator.from_tokenizer(tok)
    )
    with torch.no_grad():
        compute = trainer.chunked_distillation_loss if chunk else trainer.compute_distillation_loss
        loss, parts, _ = compute(student, dict(batch))
        zs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
        zt = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    soft_terms, hard_terms = [], []
    for b in range(3):
        for i in range(batch["input_ids"].shape[1] - 1):
            target = batch["labels"][b, i + 1].item()
            if target == -100:  # the next token is prompt or padding
                continue
            pt, log_ps = F.softmax(zt[b, i] / T, -1), F.log_softmax(zs[b, i] / T, -1)
            soft_terms.append((pt * (pt.log() - log_ps)).sum() * T**2)
            hard_terms.append(-F.log_softmax(zs[b, i], -1)[target])
    n_completion = int((batch["labels"] != -100).sum())
    assert len(soft_terms) == n_completion == 2 + 1 + 3 + 1 + 1 + 1  # completions + [SEP] each
    soft, hard = torch.stack(soft_terms).mean(), torch.stack(hard_terms).mean()
    torch.testing.assert_close(parts["soft_loss"].double(), soft, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["hard_loss"].double(), hard, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.double(), 0.7 * soft + 0.3 * hard, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama])
def test_completion_nll_chunked_equals_the_model_loss(factory):
    """Per-token CE over completion tokens, logits chunk by chunk == the model's own mean loss x token count."""
    batch = PromptCompletionCollator(0)(
        [
            {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9]},
            {"input_ids": [10, 11, 12], "labels": [-100, 11, 12]},
        ]
    )
    model = factory(layers=2).eval()
    with torch.no_grad():
        reference = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
    for chunk in (2, 3, None):
        per_row, count = completion_nll(model, batch, chunk_size=chunk)
        assert count.tolist() == [3, 2]
        torch.testing.assert_close(per_row.sum(), reference * 5, rtol=1e-5, atol=1e-5)
        with torch.no_grad():  # the first example alone
            first = model(input_ids=batch["input_ids"][:1], labels=batch["labels"][:1]).loss
        torch.testing.assert_close(per_row[0], first * 3, rtol=1e-5, atol=1e-5)
