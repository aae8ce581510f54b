"""On-policy (GKD) and sequence-level distillation: sampled completions, scoring, seeding, logging."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from datasets import Dataset
from testing_utils import distillation_args, make_tokenizer, tiny_bert, tiny_gpt2
from transformers import TrainerCallback

from hf_distill import DistillationTrainer
from hf_distill.generation import (
    COMPLETIONS_FROM,
    CompletionSampler,
    InverseCDFSampler,
    _seed,
    completion_lengths,
    completions_from,
    cut_completions,
    inverse_cdf_decoding,
    stack_prompts,
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
    defaults = {
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "logging_steps": 2,
        "learning_rate": 1e-2,
        "max_new_tokens": 5,
        "seed": 7,
        "temperature": 1.0,
    }
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


# ---- the lambda schedule (warm start), the explicit on-policy flag, one generation per step ----------------


def test_lmbda_schedule_by_hand(tmp_path):
    """lmbda 0.8, start 2, warm-up 4: 0, 0, 0, 0.2, 0.4, 0.6, 0.8, 0.8 (a learning-rate style ramp)."""
    args = make_args(tmp_path, lmbda=0.8, lmbda_start_step=2, lmbda_warmup_steps=4)
    sampler = CompletionSampler(args, 3, 0)
    expected = [0.0, 0.0, 0.0, 0.2, 0.4, 0.6, 0.8, 0.8]
    assert [sampler.lmbda_at(s) for s in range(8)] == pytest.approx(expected)
    no_ramp = CompletionSampler(make_args(tmp_path, lmbda=0.5, lmbda_start_step=3), 3, 0)
    assert [no_ramp.lmbda_at(s) for s in range(5)] == [0.0, 0.0, 0.0, 0.5, 0.5]
    # The on-policy fraction of each step over many micro-batches follows the schedule, and the coin of a micro-batch
    # is the same seeded draw as without the schedule: student iff that draw < lmbda_at(step).
    micro = 2000
    for step, p in enumerate(expected):
        draws = [sampler.source(step, m) for m in range(micro)]
        fraction = draws.count("student") / micro
        assert abs(fraction - p) < 0.04, (step, fraction, p)
        if p == 0:
            assert fraction == 0.0
        coins = [
            torch.rand((), generator=torch.Generator().manual_seed(_seed(7, step, m, 0))).item() for m in range(50)
        ]
        assert draws[:50] == ["student" if c < p else "data" for c in coins]


def test_warm_start_equals_an_off_policy_run_for_its_first_steps(tmp_path, tok):
    """lmbda 1 from step 2 (reverse KL on samples) == the off-policy forward-KL run, bit for bit, until step 2."""
    snapshots = {}

    class Snapshot(TrainerCallback):
        def __init__(self, name):
            self.name = name

        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots[(self.name, state.global_step)] = {k: v.clone() for k, v in model.state_dict().items()}

    runs = {}
    warm = {"lmbda": 1.0, "lmbda_start_step": 2, "on_policy_divergence": "reverse_kl"}
    for name, kw in (("off", {}), ("warm", warm)):
        student = tiny_gpt2(layers=2, seed=0)
        rec = Recorder(student)
        trainer = make_trainer(
            tmp_path / name,
            tok,
            student,
            divergence="forward_kl",
            lr_scheduler_type="constant",
            gradient_accumulation_steps=2,
            **kw,
        )
        trainer.add_callback(Snapshot(name))
        trainer.train()
        runs[name] = (trainer, rec)
    for step in (1, 2):
        off, warm = snapshots[("off", step)], snapshots[("warm", step)]
        assert all(torch.equal(off[k], warm[k]) for k in off), step
    assert not all(torch.equal(snapshots[("off", 4)][k], snapshots[("warm", 4)][k]) for k in snapshots[("off", 4)])
    trainer, rec = runs["warm"]
    assert len(rec.generated) == 2  # steps 2 and 3, one generate call each for their 2 micro-batches
    assert [e["on_policy_fraction"] for e in trainer.state.log_history if "loss" in e] == [0.0, 1.0]
    assert "generated_tokens_per_second" in [e for e in trainer.state.log_history if "loss" in e][1]
    assert len(runs["off"][1].generated) == 0


def test_student_samples_say_so_and_use_the_on_policy_divergence(tmp_path, tok):
    """The sampled batch carries completions_from="student"; its loss is the on_policy_divergence's, not by labels."""
    trainer = make_trainer(
        tmp_path,
        tok,
        lmbda=1.0,
        divergence="forward_kl",
        on_policy_divergence="reverse_kl",
        hard_weight=0.5,
        soft_weight=1.0,
    )
    reference = make_trainer(tmp_path, tok, divergence="reverse_kl", hard_weight=0.5, soft_weight=1.0)
    reference.model.load_state_dict(trainer.model.state_dict())
    batch = PromptCompletionCollator.from_tokenizer(tok)([trainer.train_dataset[i] for i in range(4)])
    (sampled,) = trainer.sampler.sample_step([batch], trainer.model, trainer.teacher, step=0)
    assert completions_from(sampled) == "student" and completions_from(batch) == "data"
    data_batch = {k: v for k, v in sampled.items() if k != COMPLETIONS_FROM}  # the same tokens as dataset labels
    data_batch["labels"] = sampled["input_ids"].masked_fill(sampled["completion_mask"] == 0, -100)
    trainer.model.eval()
    reference.model.eval()
    with torch.no_grad():
        on_policy = trainer.compute_loss(trainer.model, sampled)
        soft_only = reference.compute_loss(
            reference.model, {**data_batch, "labels": torch.full_like(data_batch["labels"], -100)}
        )
        as_data = trainer.compute_loss(trainer.model, data_batch)
    torch.testing.assert_close(on_policy, soft_only)  # reverse KL, no hard loss on the student's own tokens
    assert not torch.allclose(on_policy, as_data)  # the same tokens as dataset completions: forward KL + hard loss


@pytest.mark.parametrize("per_step", [True, False])
def test_one_generate_call_per_optimizer_step(tmp_path, tok, per_step):
    """generation_per_step: the 2 micro-batches of a step are sampled by one call of 8 rows (False: 2 calls of 4)."""
    student = tiny_gpt2(layers=2, seed=0)
    rec = Recorder(student)
    trainer = make_trainer(
        tmp_path, tok, student, lmbda=1.0, gradient_accumulation_steps=2, max_steps=2, generation_per_step=per_step
    )
    trainer.train()
    assert [prompts.shape[0] for prompts, _ in rec.generated] == ([8, 8] if per_step else [4, 4, 4, 4])
    assert [e["on_policy_fraction"] for e in trainer.state.log_history if "loss" in e] == [1.0]


def test_one_generation_batch_samples_what_separate_calls_sample(tmp_path, tok):
    """Greedy: stacking the prompts of several micro-batches (more left padding) changes no completion."""
    trainer = make_trainer(tmp_path, tok, lmbda=1.0, generation_temperature=0.0, max_new_tokens=6)
    collate = PromptCompletionCollator.from_tokenizer(tok)
    data = trainer.train_dataset
    order = sorted(range(len(data)), key=lambda i: data[i]["labels"].count(-100))  # by prompt length
    batches = [collate([data[i] for i in rows]) for rows in (order[:3], order[-5:])]
    assert batches[0]["prompt_input_ids"].shape[1] != batches[1]["prompt_input_ids"].shape[1]
    together = trainer.sampler.sample_step(batches, trainer.model, trainer.teacher, step=0)
    apart = [trainer.sampler(b, trainer.model, trainer.teacher, step=0, micro=m) for m, b in enumerate(batches)]
    for a, b in zip(together, apart):
        for key in ("input_ids", "attention_mask", "labels", "completion_mask"):
            assert torch.equal(a[key], b[key]), key
    ids, mask, rows = stack_prompts(batches, tok.pad_token_id)
    assert rows == [3, 5] and ids.shape == mask.shape == (8, max(b["prompt_input_ids"].shape[1] for b in batches))
    for b, (start, n) in zip(batches, ((0, 3), (3, 5))):
        real = ids[start : start + n][mask[start : start + n].bool()]
        assert torch.equal(real, b["prompt_input_ids"][b["prompt_attention_mask"].bool()])


def test_decoding_uses_the_kv_cache_and_stops_when_every_row_has_ended(tmp_path, tok):
    """Gradient checkpointing on and use_cache off in the config: generation still feeds one new token per step,
    and it stops after the step where the last row emitted its end token, not at max_new_tokens."""
    student = tiny_gpt2(layers=2, seed=0)
    student.config.use_cache = False
    trainer = make_trainer(tmp_path, tok, student, lmbda=1.0, max_new_tokens=12, gradient_checkpointing=True)
    student.gradient_checkpointing_enable()  # as Trainer.train does with gradient_checkpointing=True
    assert student.is_gradient_checkpointing
    widths, calls = [], []
    eos = tok.sep_token_id

    def record(module, args, kwargs):
        widths.append(kwargs["input_ids"].shape[1])

    def end_row_at_its_index(module, args, output):  # row r emits eos at decoding step r
        step = len(calls)
        calls.append(step)
        logits = output.clone()
        for r in range(logits.shape[0]):
            if r == step:
                logits[r, -1, eos] = 1e4
            else:
                logits[r, -1, eos] = -1e4
        return logits

    handles = [
        student.register_forward_pre_hook(record, with_kwargs=True),
        student.lm_head.register_forward_hook(end_row_at_its_index),
    ]
    batch = PromptCompletionCollator.from_tokenizer(tok)([trainer.train_dataset[i] for i in range(4)])
    student.train()
    (sampled,) = trainer.sampler.sample_step([batch], student, trainer.teacher, step=0)
    for h in handles:
        h.remove()
    assert widths[0] == batch["prompt_input_ids"].shape[1] and widths[1:] == [1] * (len(widths) - 1)
    assert len(widths) == 4  # rows end at steps 0..3: four forwards, not twelve
    n_prompt = batch["prompt_attention_mask"].sum(1)
    assert (sampled["completion_mask"].sum(1)).tolist() == [1, 2, 3, 4]
    for r in range(4):
        assert sampled["input_ids"][r, n_prompt[r] + r].item() == eos
    assert student.training  # back in training mode


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lmbda_start_step": 2}, "lmbda=0 samples nothing"),
        ({"lmbda": 0.5, "lmbda_warmup_steps": -1}, "lmbda_warmup_steps must be a whole number"),
        ({"lmbda": 0.5, "lmbda_start_step": 1.5}, "lmbda_start_step must be a whole number"),
        ({"lmbda": 0.5, "on_policy_divergence": "kl"}, "on_policy_divergence must be one of"),
        ({"generation_compile": True}, "generation_cache='static'"),
        ({"generation_cache": "paged"}, "generation_cache must be"),
    ],
)
def test_bad_schedule_and_cache_settings(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **kw)


def test_samples_completions_and_static_cache_config(tmp_path, tok):
    assert not make_args(tmp_path).samples_completions
    assert make_args(tmp_path, lmbda=0.1).samples_completions and make_args(tmp_path, seq_kd=True).samples_completions
    config = make_trainer(tmp_path, tok, lmbda=1.0, generation_cache="static").sampler.generation_config
    assert (config.use_cache, config.cache_implementation, config.disable_compile) == (True, "static", True)
    compiled = make_trainer(tmp_path, tok, lmbda=1.0, generation_cache="static", generation_compile=True)
    assert compiled.sampler.generation_config.compile_config._compile_all_devices


def test_sampling_draws_from_the_whole_distribution(tmp_path, tok):
    """generation_top_k=0 is off: transformers' default top_k of 50 must not truncate the student's distribution.

    The student's next-token distribution is made uniform over the 101 tokens (eos excluded): 320 draws hit
    about 96 distinct tokens; a top-50 filter would allow at most 50.
    """
    trainer = make_trainer(tmp_path, tok, lmbda=1.0, max_new_tokens=5)
    student = trainer.model

    def uniform(module, args, output):  # nearly uniform, no ties (a top-k filter keeps ties at its threshold)
        logits = (-1e-3 * torch.arange(output.shape[-1], dtype=output.dtype)).expand_as(output).clone()
        logits[..., tok.sep_token_id] = float("-inf")
        return logits

    handle = student.lm_head.register_forward_hook(uniform)
    collate = PromptCompletionCollator.from_tokenizer(tok)
    batch = collate([trainer.train_dataset[i % 16] for i in range(64)])
    (sampled,) = trainer.sampler.sample_step([batch], student, trainer.teacher, step=0)
    handle.remove()
    drawn = sampled["input_ids"][sampled["completion_mask"].bool()]
    assert drawn.numel() == 320 and len(set(drawn.tolist())) > 60


def test_inverse_cdf_sampler_draws_from_the_softmax():
    """40000 draws from 3 rows of fixed logits: frequencies within 0.01 of softmax (and of torch.multinomial's);
    tokens masked to -inf (top-k) are never drawn; the returned scores make argmax pick the drawn token."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")], [0.0] * 5, [5.0, -5.0, 1.0, 0.5, 0.2]])
    probs = torch.softmax(logits, -1)
    torch.manual_seed(0)
    draws = torch.stack([InverseCDFSampler()(None, logits).argmax(-1) for _ in range(40000)])  # (40000, 3)
    for row in range(3):
        freq = torch.bincount(draws[:, row], minlength=5).float() / len(draws)
        torch.testing.assert_close(freq, probs[row], atol=0.01, rtol=0)
        reference = torch.bincount(torch.multinomial(probs[row], 40000, replacement=True), minlength=5).float() / 40000
        torch.testing.assert_close(freq, reference, atol=0.015, rtol=0)
    assert not (draws[:, 0] == 4).any()
    scores = InverseCDFSampler()(None, logits)
    assert ((scores == 0).sum(-1) == 1).all() and torch.isinf(scores).sum() == 3 * 4


def test_inverse_cdf_decoding_keeps_the_distribution_settings(tmp_path, tok):
    config = make_trainer(
        tmp_path, tok, lmbda=0.5, generation_temperature=0.7, generation_top_p=0.9, generation_top_k=20
    ).sampler.generation_config
    greedy, processors = inverse_cdf_decoding(config)
    assert greedy.do_sample is False and config.do_sample is True  # the original is left alone
    assert [type(p).__name__ for p in processors] == [
        "TemperatureLogitsWarper",
        "TopKLogitsWarper",
        "TopPLogitsWarper",
        "InverseCDFSampler",
    ]
    assert (processors[0].temperature, processors[1].top_k, processors[2].top_p) == (0.7, 20, 0.9)
    plain = make_trainer(tmp_path, tok, lmbda=0.5).sampler.generation_config
    assert [type(p).__name__ for p in inverse_cdf_decoding(plain)[1]] == ["InverseCDFSampler"]
