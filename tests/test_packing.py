"""Packed (padding-free) causal-LM batches: the same positions, counts, losses and students as padded batches;
architectures and attention implementations that cannot keep packed rows apart are refused."""

import inspect

import pytest
import torch
import transformers as tf
from testing_utils import (
    assert_same_weights,
    distillation_args,
    lm_collate,
    lm_data,
    lm_tokenizer,
    lm_trainer,
    one_and_two_processes,
    requires_torchrun,
    tiny_lm,
)

from hf_distill import DistillationTrainer
from hf_distill.lm_data import PromptCompletionCollator, completion_nll, is_packed, pack_padded
from hf_distill.modeling import PACKING_MODEL_TYPES, packing_problem
from hf_distill.positions import token_counts


def test_pack_padded_by_hand():
    batch = PromptCompletionCollator(0)(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"input_ids": [8, 9], "labels": [8, 9]},  # no prompt: label on token 0
            {"input_ids": [3, 4, 5, 6], "labels": [-100, -100, 5, -100]},
        ]
    )
    packed = pack_padded(batch)
    assert "attention_mask" not in packed and is_packed(packed) and not is_packed(batch)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 3, 4, 5, 6]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    # each row's first label / completion flag is cleared: no position predicts the next row's first token
    assert packed["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, -100, 5, -100]]
    assert packed["completion_mask"].tolist() == [[0, 1, 1, 0, 1, 0, 0, 1, 0]]
    assert torch.equal(packed["prompt_input_ids"], batch["prompt_input_ids"])  # the prompts for generation stay
    assert token_counts(packed).tolist() == token_counts(batch).tolist() == [4, 4]
    assert PromptCompletionCollator(0, pack=True)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}])[
        "position_ids"
    ].tolist() == [[0, 1, 2]]
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        PromptCompletionCollator(0, pad_to_multiple_of=8, pack=True)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_completion_nll_of_packed_batches_equals_padded(arch):
    model = tiny_lm(arch, vocab=56, seed=3).eval()
    features = [lm_data(6, seed=4)[i] for i in range(6)]
    padded = PromptCompletionCollator(0)(features)
    for chunk in (None, 3):
        nll, n = completion_nll(model, padded, chunk)
        packed_nll, packed_n = completion_nll(model, pack_padded(padded), chunk)
        assert packed_n.tolist() == n.tolist() and len(n) == 6 and int(n.sum()) > 0
        torch.testing.assert_close(packed_nll, nll, rtol=1e-5, atol=1e-5)


SMALL = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "head_dim": 8,
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 64,
    "pad_token_id": 0,
}
REFUSED = ("opt", "bloom", "mamba")  # positions / ALiBi from attention_mask; recurrent state


def _tiny(model_type: str, attention: str = "eager"):
    config_class = tf.CONFIG_MAPPING[model_type]
    params = inspect.signature(config_class.__init__).parameters
    config = config_class(**{k: v for k, v in SMALL.items() if k in params})
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()


def _packed_matches_rows(model) -> bool:
    a, b = torch.tensor([5, 9, 2, 7, 11]), torch.tensor([3, 8, 4])
    with torch.no_grad():
        rows = torch.cat([model(input_ids=r[None], use_cache=False).logits[0] for r in (a, b)])
        packed = model(
            input_ids=torch.cat([a, b])[None], position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]]), use_cache=False
        ).logits[0]
    return torch.allclose(packed, rows, atol=1e-5)


@pytest.mark.parametrize("model_type", [*PACKING_MODEL_TYPES, *REFUSED])
def test_packing_table_matches_transformers(model_type):
    """Every architecture of the table keeps packed rows apart in this transformers; the refused ones do not."""
    model = _tiny(model_type)
    assert _packed_matches_rows(model) == (model_type not in REFUSED)
    assert (packing_problem(model) is None) == (model_type not in REFUSED)


def test_a_cache_would_mix_packed_rows():
    """Why the trainer passes use_cache=False with packed batches: with a cache transformers skips packed masks."""
    model = tiny_lm("llama", vocab=56)
    a, b = torch.tensor([5, 9, 2]), torch.tensor([3, 8])
    with torch.no_grad():
        rows = torch.cat([model(input_ids=r[None], use_cache=False).logits[0] for r in (a, b)])
        cached = model(
            input_ids=torch.cat([a, b])[None], position_ids=torch.tensor([[0, 1, 2, 0, 1]]), use_cache=True
        ).logits[0]
    assert not torch.allclose(cached, rows, atol=1e-3)
    assert _packed_matches_rows(model) and _packed_matches_rows(tiny_lm("gpt2", vocab=56).eval())


def make_trainer(tmp_path, student, teacher, pack, data=None, **kw):
    return lm_trainer(tmp_path, student, teacher, data, PromptCompletionCollator(0, pack=pack), **kw)


def train(tmp_path, arch, pack, **kw):
    student, teacher = tiny_lm(arch, vocab=56, seed=1), tiny_lm(arch, vocab=64, hidden=24, seed=10)
    trainer = make_trainer(tmp_path, student, teacher, pack, **kw)
    trainer.train()
    return {k: v.detach().clone() for k, v in student.state_dict().items()}, trainer


def logged(trainer, names=("loss", "soft_loss", "hard_loss", "hidden_loss")):
    return [h[n] for h in trainer.state.log_history if "soft_loss" in h for n in names if n in h]


@pytest.mark.parametrize(
    "arch, settings",
    [
        ("llama", {}),
        ("gpt2", {"loss_chunk_size": 4}),
        (
            "llama",
            {
                "loss_chunk_size": 5,
                "hidden_weight": 0.5,
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 2,
            },
        ),
        (
            "gpt2",
            {
                "hidden_weight": 0.5,
                "hidden_loss": "cosine",
                "divergence": "jsd",
                "per_device_train_batch_size": 1,
                "gradient_accumulation_steps": 4,
            },
        ),
    ],
    ids=["llama-full", "gpt2-chunked", "llama-chunked-hidden-accum", "gpt2-hidden-accum4"],
)
def test_packed_training_equals_padded(tmp_path, arch, settings):
    """Same student and same logged soft / hard / hidden terms; hidden alignment goes through learned projections."""
    padded, t_padded = train(tmp_path / "padded", arch, False, **settings)
    packed, t_packed = train(tmp_path / "packed", arch, True, **settings)
    start = tiny_lm(arch, vocab=56, seed=1).state_dict()
    assert any(not torch.allclose(padded[k], start[k]) for k in start)  # training moved the student
    assert_same_weights(packed, padded)
    n_terms = 4 if settings.get("hidden_weight") else 3
    assert len(logged(t_padded)) == 3 * n_terms and logged(t_packed) == pytest.approx(logged(t_padded), rel=1e-5)


def test_num_items_in_batch_equals_padded(tmp_path):
    counts = {}
    for pack in (False, True):
        trainer = make_trainer(
            tmp_path,
            tiny_lm(vocab=56, seed=1),
            tiny_lm(vocab=64, hidden=24, seed=10),
            pack,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
        )
        batches, num_items = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 2, "cpu")
        assert all(is_packed(b) == pack for b in batches)
        counts[pack] = (int(num_items), trainer._step_tokens.totals.tolist())
    assert counts[True] == counts[False] and counts[True][0] > 0


def test_on_policy_packed_equals_padded(tmp_path):
    """lmbda=1: the student's samples (seeded, identical in both runs) are packed for the teacher and the loss."""
    data = lm_data().map(lambda row: {"labels": [-100, -100] + row["labels"][2:]})  # every row has a prompt
    kw = {"lmbda": 1.0, "max_new_tokens": 4, "max_steps": 2, "loss_chunk_size": 4, "data": data}
    padded, t_padded = train(tmp_path / "padded", "llama", False, **kw)
    packed, t_packed = train(tmp_path / "packed", "llama", True, **kw)
    assert_same_weights(packed, padded)
    assert logged(t_packed) == pytest.approx(logged(t_padded), rel=1e-5)
    assert [h["on_policy_fraction"] for h in t_packed.state.log_history if "on_policy_fraction" in h] == [1.0, 1.0]


def test_packing_refuses_what_it_cannot_do(tmp_path):
    teacher = tiny_lm(vocab=64, hidden=24, seed=10)
    opt = tf.OPTForCausalLM(
        tf.OPTConfig(
            vocab_size=56,
            hidden_size=16,
            num_hidden_layers=1,
            ffn_dim=32,
            num_attention_heads=2,
            word_embed_proj_dim=16,
            max_position_embeddings=32,
        )
    )
    with pytest.raises(ValueError, match=r"silently wrong for the student: its architecture \('opt'\)"):
        make_trainer(tmp_path, opt, teacher, pack=True)  # at construction, from the collator's pack=True
    with pytest.raises(ValueError, match="attention_weight"):
        make_trainer(tmp_path, tiny_lm(vocab=56, seed=1), teacher, pack=True, attention_weight=1.0)
    custom = tiny_lm(vocab=56, seed=1)
    custom.config._attn_implementation = "my_kernel"  # a kernel transformers' packed masks do not reach
    assert "my_kernel" in packing_problem(custom)
    # packed batches from another collator (no pack attribute): refused at the first batch, before any update
    args = distillation_args(tmp_path, max_steps=1, per_device_train_batch_size=4, logging_steps=500)
    trainer = DistillationTrainer(
        opt,
        teacher,
        args,
        train_dataset=lm_data(),
        data_collator=lambda f: pack_padded(lm_collate(f)),
        processing_class=lm_tokenizer(),
    )
    before = {k: v.clone() for k, v in opt.state_dict().items()}
    with pytest.raises(ValueError, match="silently wrong for the student"):
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in opt.state_dict().items())


def test_flattened_batches_without_completion_mask_equal_padded(tmp_path):
    """Packed batches of a plain collator (like DataCollatorWithFlattening: every real token counts)."""
    results = {}
    for pack in (False, True):
        student, teacher = tiny_lm("gpt2", vocab=56, seed=1), tiny_lm("gpt2", vocab=64, hidden=24, seed=10)
        args = distillation_args(
            tmp_path / str(pack),
            max_steps=2,
            per_device_train_batch_size=4,
            optim="sgd",
            learning_rate=0.5,
            seed=0,
            loss_chunk_size=3,
        )
        collator = (lambda f: pack_padded(lm_collate(f))) if pack else lm_collate
        trainer = DistillationTrainer(
            student, teacher, args, train_dataset=lm_data(), data_collator=collator, processing_class=lm_tokenizer()
        )
        trainer.train()
        results[pack] = ({k: v.detach().clone() for k, v in student.state_dict().items()}, logged(trainer))
    assert_same_weights(results[True][0], results[False][0])
    assert results[True][1] == pytest.approx(results[False][1], rel=1e-5)


@requires_torchrun
@pytest.mark.torchrun_job("packed")  # tests/ddp_chunked_train.py OUT 2 packed on 2 processes
def test_two_process_packed_ddp_equals_one_padded_process(tmp_path, torchrun_jobs):
    """2 processes x 2 packed rows == 1 process x 4 padded rows (chunked loss, unequal token counts per rank)."""
    import ddp_chunked_train

    one, two = one_and_two_processes(ddp_chunked_train.run, tmp_path, ["4", "padded"], torchrun_jobs["packed"])
    assert_same_weights(two, one, rtol=1e-4)
