"""On-policy (GKD) and sequence-level distillation: sampled completions, scoring, seeding, logging."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from datasets import Dataset
from testing_utils import distillation_args, make_tokenizer, tiny_bert, tiny_gpt2

from hf_distill import DistillationTrainer
from hf_distill.generation import (
    CompletionSampler,
    completion_lengths,
    cut_completions,
    with_completions,
)
from hf_distill.lm_data import PromptCompletionCollator, tokenize_prompt_completion

WORDS = [f"w{i}" for i in range(90)]


def lm_data(tok, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts, completions = [], []
    for _ in range(n):
        p = torch.randint(0, 90, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g)
        c = torch.randint(0, 90, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g)
        prompts.append(" ".join(WORDS[i] for i in p))
        completions.append(" ".join(WORDS[i] for i in c))
    return tokenize_prompt_completion(Dataset.from_dict({"prompt": prompts, "completion": completions}), tok, 24)


def make_args(tmp_path, **kw):
    defaults = {"max_steps": 4, "per_device_train_batch_size": 4, "logging_steps": 2, "learning_rate": 1e-2,
                "max_new_tokens": 5, "seed": 7, "temperature": 1.0}
    return distillation_args(tmp_path / "out", **{**defaults, **kw})


def make_trainer(tmp_path, tok, student=None, teacher=None, data=None, **kw):
    return DistillationTrainer(
        student if student is not None else tiny_gpt2(layers=2, seed=0),
        teacher if teacher is not None else tiny_gpt2(layers=3, seed=1),
        make_args(tmp_path, **kw),
        train_dataset=data if data is not None else lm_data(tok),
        processing_class=tok,
        data_collator=PromptCompletionCollator.from_tokenizer(tok),
    )


@pytest.fixture
def tok(tmp_path):
    return make_tokenizer(tmp_path / "tok")


class Recorder:
    """Wraps a model's forward and generate to record what it was given and returned."""

    def __init__(self, model):
        self.forward_inputs, self.generated, self.generate_modes = [], [], []
        generate = model.generate

        def record_forward(module, args, kwargs):  # a pre-hook keeps forward's signature (the Trainer reads it)
            self.forward_inputs.append({k: v.clone() for k, v in kwargs.items() if torch.is_tensor(v)})

        def recording_generate(*args, **kwargs):
            self.generate_modes.append((model.training, torch.is_grad_enabled()))
            out = generate(*args, **kwargs)
            self.generated.append((kwargs["input_ids"].clone(), out.clone()))
            return out

        model.register_forward_pre_hook(record_forward, with_kwargs=True)
        model.generate = recording_generate


def test_cut_completions_stops_at_the_first_eos():
    new = torch.tensor([[5, 6, 3, 7, 3], [5, 6, 7, 8, 9], [4, 0, 0, 0, 0]])
    assert cut_completions(new, eos_token_id=3, pad_token_id=0) == [[5, 6, 3], [5, 6, 7, 8, 9], [4]]
    assert cut_completions(torch.tensor([[5, 3, 3]]), eos_token_id=3, pad_token_id=3) == [[5, 3]]


def test_completion_lengths_stop_at_the_first_eos():
    new = torch.tensor([[5, 6, 3, 7, 3], [5, 6, 7, 8, 9], [4, 3, 0, 0, 0]])
    assert completion_lengths(new, eos_token_id=3).tolist() == [3, 5, 2]
    assert completion_lengths(new, eos_token_id=None).tolist() == [5, 5, 5]


@pytest.mark.parametrize("train_on_labels", [False, True])
def test_with_completions_equals_the_collator_on_the_sampled_rows(train_on_labels):
    """The gathered on-device layout == the dataset collator run on prompt + completion rows."""
    collator = PromptCompletionCollator(0)
    batch = collator(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, -100, 7]},
            {"input_ids": [8, 9], "labels": [-100, 9]},
            {"input_ids": [10, 11, 12, 13], "labels": [-100, -100, -100, 13]},
        ]
    )
    new_tokens = torch.tensor([[20, 21, 3, 0], [22, 3, 0, 0], [23, 24, 25, 26]])
    new = with_completions(
        batch, new_tokens, completion_lengths(new_tokens, 3), pad_token_id=0, train_on_labels=train_on_labels
    )
    completions = cut_completions(new_tokens, 3, 0)
    rows = [
        {"input_ids": p + c, "labels": [-100] * len(p) + (c if train_on_labels else [-100] * len(c))}
        for p, c in zip([[5, 6], [8], [10, 11, 12]], completions)
    ]
    reference = collator(rows)
    assert new["input_ids"].tolist() == [[5, 6, 20, 21, 3, 0, 0], [8, 22, 3, 0, 0, 0, 0], [10, 11, 12, 23, 24, 25, 26]]
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(new[key], reference[key]), key
    assert new["completion_mask"].tolist() == [[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1]]
    assert torch.equal(new["prompt_input_ids"], batch["prompt_input_ids"])


@pytest.mark.parametrize("lmbda", [0.0, 0.3, 1.0])
def test_coin_flip_is_seeded_and_has_probability_lmbda(tmp_path, lmbda):
    args = make_args(tmp_path, lmbda=lmbda)
    sampler = CompletionSampler(args, eos_token_id=3, pad_token_id=0)
    draws = [sampler.source(step, micro) for step in range(400) for micro in range(2)]
    assert draws == [CompletionSampler(args, 3, 0).source(s, m) for s in range(400) for m in range(2)]
    fraction = draws.count("student") / len(draws)
    assert abs(fraction - lmbda) < 0.05
    assert set(draws) <= {"student", "data"}
    other_seed = CompletionSampler(make_args(tmp_path, lmbda=lmbda, seed=8), 3, 0)
    if 0 < lmbda < 1:
        assert draws != [other_seed.source(s, m) for s in range(400) for m in range(2)]


def test_on_policy_batches_are_student_samples_scored_by_the_teacher(tmp_path, tok):
    """lmbda=1: every batch's completions are the student's samples, and the teacher scores exactly them."""
    student, teacher = tiny_gpt2(layers=2, seed=0), tiny_gpt2(layers=3, seed=1)
    s_rec, t_rec = Recorder(student), Recorder(teacher)
    trainer = make_trainer(tmp_path, tok, student, teacher, lmbda=1.0)
    trainer.train()
    assert len(s_rec.generated) == 4 and not any(training or grad for training, grad in s_rec.generate_modes)
    assert student.training  # back in training mode after sampling
    for (prompts, out), t_inputs in zip(s_rec.generated, t_rec.forward_inputs):
        completions = cut_completions(out[:, prompts.shape[1] :], tok.sep_token_id, tok.pad_token_id)
        for b, completion in enumerate(completions):
            prompt = prompts[b][prompts[b] != tok.pad_token_id].tolist()  # word ids are never the pad id 0
            n = len(prompt) + len(completion)
            assert t_inputs["input_ids"][b, :n].tolist() == prompt + completion
            assert t_inputs["attention_mask"][b].sum() == n
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["on_policy_fraction"] for e in logs] == [1.0, 1.0]
    assert all("hard_loss" not in e for e in logs)  # student samples are not labels
    assert all(0 < e["generated_length"] <= 5 and e["generation_seconds"] > 0 for e in logs)


@pytest.mark.parametrize("chunk", [None, 3])
def test_on_policy_loss_equals_the_off_policy_loss_on_the_sampled_sequences(tmp_path, tok, chunk):
    """The sampled batch goes through the same loss as a dataset batch holding those completions."""
    trainer = make_trainer(tmp_path, tok, lmbda=1.0, hard_weight=0.0, soft_weight=1.0, loss_chunk_size=chunk)
    batch = PromptCompletionCollator.from_tokenizer(tok)([trainer.train_dataset[i] for i in range(4)])
    sampled = trainer.sampler(batch, trainer.model, trainer.teacher, step=0, micro=0)
    rows = []
    for b in range(4):
        keep = sampled["input_ids"][b][sampled["attention_mask"][b].bool()].tolist()
        n_prompt = int(batch["prompt_attention_mask"][b].sum())
        rows.append({"input_ids": keep, "labels": [-100] * n_prompt + keep[n_prompt:]})
    reference = PromptCompletionCollator.from_tokenizer(tok)(rows)
    trainer.model.eval()  # no dropout: the two forwards must see the same network
    with torch.no_grad():
        compute = trainer.chunked_distillation_loss if chunk else trainer.compute_distillation_loss
        on_policy, _, _ = compute(trainer.model, sampled)
        off_policy, _, _ = compute(trainer.model, reference)
        unchunked, _, _ = trainer.compute_distillation_loss(trainer.model, sampled)
    torch.testing.assert_close(on_policy, off_policy)
    torch.testing.assert_close(on_policy, unchunked, rtol=1e-5, atol=1e-6)


def test_lmbda_zero_is_the_existing_path(tmp_path, tok):
    """lmbda=0 (any generation settings) trains exactly like the trainer with no sampler at all."""
    a = make_trainer(
        tmp_path, tok, lmbda=0.0, max_new_tokens=3, generation_temperature=0.5, gradient_accumulation_steps=2
    )
    a.train()
    b = make_trainer(tmp_path, tok, gradient_accumulation_steps=2)
    b.sampler = types.SimpleNamespace(active=False, pop_logs=dict)  # the path without on-policy sampling
    b.train()
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), name
    assert [e.get("loss") for e in a.state.log_history] == [e.get("loss") for e in b.state.log_history]
    assert all("on_policy_fraction" not in e for e in a.state.log_history)


def test_seeded_runs_are_reproducible(tmp_path, tok):
    def run(seed):
        student = tiny_gpt2(layers=2, seed=0)
        rec = Recorder(student)
        trainer = make_trainer(tmp_path, tok, student, lmbda=0.5, seed=seed, gradient_accumulation_steps=2)
        trainer.train()
        return [out for _, out in rec.generated], {k: v.clone() for k, v in student.state_dict().items()}, trainer

    samples_a, weights_a, trainer = run(7)
    samples_b, weights_b, _ = run(7)
    assert len(samples_a) == len(samples_b) > 0
    assert all(torch.equal(x, y) for x, y in zip(samples_a, samples_b))
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    # the fraction logged is the share of micro-batches whose seeded coin said "student"
    sampler = trainer.sampler
    expected = [
        sum(sampler.source(s, m) == "student" for s in steps for m in range(2)) / 4 for steps in ([0, 1], [2, 3])
    ]
    assert [e["on_policy_fraction"] for e in trainer.state.log_history if "loss" in e] == expected
    samples_c, _, _ = run(8)
    assert not all(torch.equal(x, y) for x, y in zip(samples_a, samples_c)) or len(samples_a) != len(samples_c)


def test_sampling_leaves_the_global_rng_alone(tmp_path, tok):
    trainer = make_trainer(tmp_path, tok, lmbda=1.0)
    batch = PromptCompletionCollator.from_tokenizer(tok)([trainer.train_dataset[i] for i in range(4)])
    state = torch.get_rng_state()
    first = trainer.sampler(batch, trainer.model, trainer.teacher, step=3, micro=1)
    assert torch.equal(torch.get_rng_state(), state)
    again = trainer.sampler(batch, trainer.model, trainer.teacher, step=3, micro=1)
    assert torch.equal(first["input_ids"], again["input_ids"])


def test_seq_kd_trains_on_teacher_samples_with_labels(tmp_path, tok):
    student, teacher = tiny_gpt2(layers=2, seed=0), tiny_gpt2(layers=3, seed=1)
    t_rec, s_rec = Recorder(teacher), Recorder(student)
    trainer = make_trainer(tmp_path, tok, student, teacher, seq_kd=True, hard_weight=1.0, soft_weight=0.0)
    trainer.train()
    assert len(t_rec.generated) == 4 and not s_rec.generated
    prompts, out = t_rec.generated[0]
    completions = cut_completions(out[:, prompts.shape[1] :], tok.sep_token_id, tok.pad_token_id)
    labels = s_rec.forward_inputs[0]["labels"]
    for b, completion in enumerate(completions):
        assert labels[b][labels[b] != -100].tolist() == completion  # the hard loss learns the teacher's samples
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert all(e["on_policy_fraction"] == 0.0 and "hard_loss" in e for e in logs)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lmbda": 1.5}, "lmbda is a probability"),
        ({"lmbda": -0.1}, "lmbda is a probability"),
        ({"generation_top_p": 0.0}, "generation_top_p"),
        ({"generation_top_k": -1}, "generation_top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"generation_temperature": -1.0}, "generation_temperature"),
        ({"lmbda": 0.5, "soft_weight": 0.0, "hard_weight": 1.0}, "soft_weight must be > 0"),
    ],
)
def test_bad_generation_settings(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **kw)


def test_on_policy_needs_models_that_generate(tmp_path, tok):
    with pytest.raises(ValueError, match="cannot generate"):
        DistillationTrainer(tiny_bert(layers=2), tiny_bert(layers=4), make_args(tmp_path, lmbda=0.5))


def test_generation_config_from_args(tmp_path, tok):
    trainer = make_trainer(
        tmp_path,
        tok,
        lmbda=0.5,
        generation_temperature=0.7,
        generation_top_p=0.9,
        generation_top_k=20,
        max_new_tokens=9,
    )
    config = trainer.sampler.generation_config
    assert (config.do_sample, config.temperature, config.top_p, config.top_k, config.max_new_tokens) == (
        True,
        0.7,
        0.9,
        20,
        9,
    )
    assert (config.eos_token_id, config.pad_token_id) == (tok.sep_token_id, tok.pad_token_id)
    greedy = make_trainer(tmp_path, tok, lmbda=0.5, generation_temperature=0.0).sampler.generation_config
    assert greedy.do_sample is False


def test_peft_student_samples_with_its_adapter(tmp_path, tok):
    from peft import LoraConfig

    student = tiny_gpt2(layers=2, seed=0)
    trainer = DistillationTrainer(
        student,
        tiny_gpt2(layers=3, seed=1),
        make_args(tmp_path, lmbda=1.0, max_steps=2),
        train_dataset=lm_data(tok),
        processing_class=tok,
        data_collator=PromptCompletionCollator.from_tokenizer(tok),
        peft_config=LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["c_attn"]),
    )
    before = copy.deepcopy(trainer.model.base_model.model.transformer.h[0].attn.c_attn.lora_B.default.weight)
    trainer.train()
    after = trainer.model.base_model.model.transformer.h[0].attn.c_attn.lora_B.default.weight
    assert not torch.equal(before, after)
    assert [e["on_policy_fraction"] for e in trainer.state.log_history if "loss" in e] == [1.0]


def test_divergence_defaults_to_jsd_on_policy(tmp_path):
    assert make_args(tmp_path).divergence == "forward_kl"
    on_policy = make_args(tmp_path, lmbda=0.5)
    assert (on_policy.divergence, on_policy.divergence_kwargs()) == ("jsd", {"jsd_beta": 0.5})
    assert make_args(tmp_path, lmbda=0.5, divergence="reverse_kl").divergence == "reverse_kl"
