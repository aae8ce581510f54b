"""hf_distill.evaluation: every generation metric against a value computed another way (by hand or a plain loop)."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys

import pytest
import torch
from testing_utils import make_tokenizer, tiny_gpt2
from transformers import GenerationConfig

from hf_distill import evaluate_generation
from hf_distill.evaluation import distinct_n

PAD, SEP = 0, 3  # make_tokenizer: [PAD] = 0, [SEP] = 3 (the end token); "wN" = id N + 5


def w(*ns):
    return [n + 5 for n in ns]


class Scripted(torch.nn.Module):
    """A stand-in model whose `generate` appends a fixed completion per prompt, then pads like transformers."""

    def __init__(self, answers: dict[tuple, list[int]]):
        super().__init__()
        self.answers, self.weight = answers, torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids, attention_mask, generation_config):
        rows = [self.answers[tuple(ids[m.bool()].tolist())] for ids, m in zip(input_ids, attention_mask)]
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


def rows(pairs):
    return [{"input_ids": p + c, "labels": [-100] * len(p) + c} for p, c in pairs]


@pytest.fixture
def tok(tmp_path):
    return make_tokenizer(tmp_path / "tok")


CONFIG = GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=SEP, pad_token_id=PAD)


def test_rouge_exact_match_length_and_distinct_by_hand(tok):
    # prompt 1: reference "w1 w2 w3 w4 w5 w6", output "w1 w2 w7 w4 w5 w6" + [SEP]: LCS 5 of 6 and 6 -> F = 5/6
    # prompt 2: reference "w8 w9", output "w8 w9" + [SEP]: F = 1, exact
    # prompt 3 (no end token): reference "w1 w2", output "w3 w3 w3": F = 0
    data = rows([(w(90), w(1, 2, 3, 4, 5, 6) + [SEP]), (w(91, 92), w(8, 9) + [SEP]), (w(93), w(1, 2) + [SEP])])
    for r, answer in zip(data, ["w1 w2 w3 w4 w5 w6", "w8  w9 ", "w1 w2"]):
        r["answer"] = answer
    model = Scripted(
        {tuple(w(90)): w(1, 2, 7, 4, 5, 6) + [SEP], tuple(w(91, 92)): w(8, 9) + [SEP], tuple(w(93)): w(3, 3, 3)}
    )
    out = evaluate_generation(model, data, tok, CONFIG, batch_size=2, return_samples=3)
    assert out["rougeL"] == pytest.approx((5 / 6 + 1 + 0) / 3)
    assert out["exact_match"] == pytest.approx(1 / 3)
    assert out["generated_length"] == pytest.approx((7 + 3 + 3) / 3)  # the end token counts
    # bigrams without the end token: (1,2)(2,7)(7,4)(4,5)(5,6) (8,9) (3,3)(3,3) -> 7 distinct of 8
    assert out["distinct_2"] == pytest.approx(7 / 8)
    assert out["samples"][0] == {"prompt": "w90", "reference": "w1 w2 w3 w4 w5 w6", "completion": "w1 w2 w7 w4 w5 w6"}
    assert "teacher_nll" not in out and out["examples"] == 3
    checker = lambda text, example: text.startswith("w3")  # noqa: E731
    assert evaluate_generation(model, data, tok, CONFIG, answer_checker=checker)["exact_match"] == pytest.approx(1 / 3)


def test_distinct_n_by_hand():
    assert distinct_n([[1, 2, 1, 2], [1, 2]], 2) == pytest.approx(2 / 4)  # (1,2)(2,1)(1,2)(1,2)
    assert distinct_n([[1]], 2) == 0.0


def test_teacher_nll_matches_a_plain_token_loop(tok):
    teacher = tiny_gpt2(layers=2, hidden=32, seed=4).eval()
    pairs = [(w(10, 11, 12), w(1, 2) + [SEP]), (w(13), w(4, 5, 6, 7) + [SEP]), (w(14, 15), w(3) + [SEP])]
    outputs = {
        tuple(pairs[0][0]): w(20, 21, 22) + [SEP],
        tuple(pairs[1][0]): w(30) + [SEP],
        tuple(pairs[2][0]): w(40, 41, 42, 43, 44),
    }  # the last one never ends
    out = evaluate_generation(
        Scripted(outputs), rows(pairs), tok, CONFIG, teacher=teacher, batch_size=3, teacher_floor=False
    )
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, completion in outputs.items():
            for t, token in enumerate(completion):
                logits = teacher(torch.tensor([list(prompt) + completion[:t]])).logits[0, -1]
                total -= torch.log_softmax(logits, -1)[token].item()
                count += 1
    assert count == 11 and out["teacher_nll"] == pytest.approx(total / count, rel=1e-5)
    assert "teacher_nll_floor" not in out


def test_real_model_batched_left_padded_equals_one_by_one_and_teacher_floor(tok):
    student, teacher = tiny_gpt2(layers=1, hidden=32, seed=1), tiny_gpt2(layers=2, hidden=32, seed=2)
    student.train(), teacher.eval()
    data = rows([(w(*range(i, i + 1 + i % 4)), w(i + 1, i + 2) + [SEP]) for i in range(7)])
    config = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=SEP, pad_token_id=PAD)
    batched = evaluate_generation(student, data, tok, config, teacher=teacher, batch_size=4)
    single = evaluate_generation(student, data, tok, config, teacher=teacher, batch_size=1)
    for key in ("rougeL", "generated_length", "distinct_2", "teacher_nll", "teacher_nll_floor"):
        assert batched[key] == pytest.approx(single[key], rel=1e-4), key
    assert student.training and not teacher.training  # modes restored
    own = evaluate_generation(teacher, data, tok, config, teacher=teacher)
    assert own["teacher_nll"] == own["teacher_nll_floor"] == pytest.approx(batched["teacher_nll_floor"], rel=1e-5)
    sampled = GenerationConfig(max_new_tokens=6, do_sample=True, eos_token_id=SEP, pad_token_id=PAD)
    a = evaluate_generation(student, data, tok, sampled, teacher=teacher, seed=5)
    assert a == evaluate_generation(student, data, tok, sampled, teacher=teacher, seed=5)  # seeded


def test_text_dataset_and_bad_input(tok):
    from datasets import Dataset

    data = Dataset.from_dict({"prompt": ["w1 w2", "w3"], "completion": ["w4", "w5 w6"], "answer": ["w4", "w5 w6"]})
    model = Scripted({(6, 7): w(4) + [SEP], (8,): w(5, 7) + [SEP]})  # "w1 w2" -> ids 6, 7 (no bos token)
    out = evaluate_generation(model, data, tok, CONFIG, max_length=16)
    assert out["exact_match"] == 0.5 and out["rougeL"] == pytest.approx((1 + 0.5) / 2)
    with pytest.raises(ValueError, match="max_length"):
        evaluate_generation(model, data, tok, CONFIG)
    with pytest.raises(ValueError, match="empty"):
        evaluate_generation(model, [], tok, CONFIG)


@pytest.mark.distributed
@pytest.mark.skipif(
    shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="torchrun not installed",
)
@pytest.mark.torchrun_job("generation_eval")  # tests/ddp_generation_eval.py OUT.json on 2 processes
def test_two_processes_equal_one(torchrun_jobs):
    from ddp_generation_eval import metrics

    two = json.loads((torchrun_jobs["generation_eval"] / "metrics.json").read_text())  # two under torchrun
    one = metrics()  # one process, here
    assert two["world"] == 2 and one["examples"] == two["examples"] == 11
    for key in ("rougeL", "generated_length", "distinct_2", "teacher_nll", "teacher_nll_floor", "exact_match"):
        assert math.isclose(one[key], two[key], rel_tol=1e-5), (key, one[key], two[key])


def test_generation_keeps_the_kv_cache_when_the_models_config_turns_it_off(tmp_path):
    """A student whose config and generation config say use_cache=False (after gradient checkpointing, or cut from
    such a teacher): evaluate_generation with a plain GenerationConfig still decodes one new token per step, and
    gives the completions of decoding without the cache."""
    from hf_distill.generation import with_kv_cache

    tok = make_tokenizer(tmp_path)
    model = tiny_gpt2(layers=2, seed=0).eval()
    model.config.use_cache = False
    model.generation_config.use_cache = False
    rows = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, -100, 8, 9]}] * 2
    widths = []

    def record(module, args, kwargs):
        ids = kwargs["input_ids"] if kwargs.get("input_ids") is not None else args[0]
        widths.append(ids.shape[1])

    hook = model.transformer.register_forward_pre_hook(record, with_kwargs=True)
    plain = GenerationConfig(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    cached = evaluate_generation(model, rows, tok, plain, batch_size=2, return_samples=2)
    assert widths == [3, 1, 1, 1]  # the prompt once, then one new token per step
    widths.clear()
    ids = torch.tensor([[5, 6, 7]] * 2)
    uncached = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=plain)
    assert widths == [3, 4, 5, 6]  # what the model's use_cache=False alone gives: the whole sequence every step
    hook.remove()
    assert [s["completion"] for s in cached["samples"]] == [
        tok.decode(t[3:], skip_special_tokens=True) for t in uncached
    ]
    off = GenerationConfig(max_new_tokens=4, use_cache=False)
    assert with_kv_cache(off) is off and with_kv_cache(plain) is not plain and plain.use_cache is None  # unchanged
