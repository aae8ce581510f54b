"""DistillationTrainer on causal LMs: the chunked output-layer loss (loss_chunk_size) trains exactly like the
full-logits loss, never builds (B, L, V) logits, and token-level terms are normalised by the tokens of the whole
accumulated batch (k micro-batches == one big batch, also on two processes)."""

import pytest
import torch
from testing_utils import (
    TOKENS,
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


def train(tmp_path, arch="llama", teachers=1, **kw):
    student = tiny_lm(arch, vocab=56, seed=1)
    teacher_list = [tiny_lm(arch, vocab=64, hidden=24, seed=10 + k) for k in range(teachers)]
    trainer = lm_trainer(tmp_path, student, teacher_list if teachers > 1 else teacher_list[0], **kw)
    trainer.train()
    return {k: v.detach().clone() for k, v in student.state_dict().items()}, trainer


@pytest.mark.parametrize(
    "arch, divergence, teachers",
    [
        ("llama", "forward_kl", 1),
        ("gpt2", "jsd", 1),
        ("llama", "reverse_kl", 2),
    ],
)
def test_chunked_training_equals_full_logits_training(tmp_path, arch, divergence, teachers):
    """Padding, vocabulary padding (56 / 64 rows for 50 tokens), ignored labels, several teachers."""
    full, t_full = train(tmp_path / "full", arch, teachers, divergence=divergence)
    chunked, t_chunked = train(tmp_path / "chunked", arch, teachers, divergence=divergence, loss_chunk_size=5)
    start = tiny_lm(arch, vocab=56, seed=1).state_dict()
    assert any(not torch.allclose(full[k], start[k]) for k in start)  # training moved the student
    assert_same_weights(chunked, full)
    logs = [(h["soft_loss"], h["hard_loss"]) for h in t_full.state.log_history if "soft_loss" in h]
    logs_chunked = [(h["soft_loss"], h["hard_loss"]) for h in t_chunked.state.log_history if "soft_loss" in h]
    assert len(logs) == 3 and [v for r in logs_chunked for v in r] == pytest.approx(
        [v for r in logs for v in r], rel=1e-5
    )


def test_no_full_logits_in_training_or_evaluation(tmp_path):
    student, teacher = tiny_lm(vocab=56, seed=1), tiny_lm(vocab=64, hidden=24, seed=2)
    shapes = []
    for model in (student, teacher):
        model.get_output_embeddings().register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape)))
    trainer = lm_trainer(tmp_path, student, teacher, loss_chunk_size=4, eval_strategy="no")
    trainer.train()
    metrics = trainer.evaluate(lm_data(8, seed=5))
    assert shapes and all(s[1] == 1 for s in shapes)  # the models' own heads only ever see the last position
    # ...and the evaluation loss is the full-logits one
    full = lm_trainer(tmp_path, student, teacher).evaluate(lm_data(8, seed=5))
    for key in ("eval_loss", "eval_soft_loss", "eval_hard_loss"):
        assert metrics[key] == pytest.approx(full[key], rel=1e-5)
    # compute_metrics asks for logits: they are built (full path), with the same loss
    asked = lm_trainer(tmp_path, student, teacher, loss_chunk_size=4)
    asked.compute_metrics = lambda p: {"n": float(p.predictions.shape[-1])}
    shapes.clear()
    out = asked.evaluate(lm_data(8, seed=5))
    assert out["eval_n"] == 56 and out["eval_loss"] == pytest.approx(full["eval_loss"], rel=1e-5)


class PerMicroBatchMeans(DistillationTrainer):
    """The behaviour before token counting: every micro-batch is a mean of its own tokens, divided by k."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._step_tokens.totals = None
        return batches, None


@pytest.mark.parametrize("chunk", [None, 3])
def test_gradient_accumulation_equals_one_big_batch(tmp_path, chunk):
    """4 examples of unequal lengths per step: 1 x 4, 2 x 2 and 4 x 1 micro-batches give the same student."""
    kw = {"loss_chunk_size": chunk, "max_steps": 2}
    big, _ = train(tmp_path / "big", **kw)
    two, _ = train(tmp_path / "two", per_device_train_batch_size=2, gradient_accumulation_steps=2, **kw)
    four, _ = train(tmp_path / "four", per_device_train_batch_size=1, gradient_accumulation_steps=4, **kw)
    assert_same_weights(two, big)
    assert_same_weights(four, big)
    # the check can fail: averaging per-micro-batch means weighs short rows' tokens more
    student, teacher = tiny_lm(vocab=56, seed=1), tiny_lm(vocab=64, hidden=24, seed=10)
    args = lm_trainer(
        tmp_path / "means", student, teacher, per_device_train_batch_size=1, gradient_accumulation_steps=4, **kw
    ).args
    PerMicroBatchMeans(
        student, teacher, args, train_dataset=lm_data(), data_collator=lm_collate, processing_class=lm_tokenizer()
    ).train()
    assert any(not torch.allclose(student.state_dict()[k], big[k], rtol=1e-4) for k in big)


def _one_batch_loss_and_grads(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_peft_student_and_bf16_teacher(tmp_path):
    from peft import LoraConfig

    batch = lm_collate([lm_data(4)[i] for i in range(4)])
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"])
    results = {}
    for name, chunk in (("full", None), ("chunked", 4)):
        trainer = lm_trainer(
            tmp_path / name,
            tiny_lm(vocab=56, seed=1),
            tiny_lm(vocab=64, hidden=24, seed=2),
            peft_config=lora,
            teacher_dtype="bfloat16",
            loss_chunk_size=chunk,
        )
        results[name] = _one_batch_loss_and_grads(trainer, batch)
    (loss_f, grads_f), (loss_c, grads_c) = results["full"], results["chunked"]
    assert grads_f and all("lora_" in n for n in grads_f)  # only the adapter trains
    assert loss_c.item() == pytest.approx(loss_f.item(), rel=1e-5)
    assert grads_c.keys() == grads_f.keys()
    for n in grads_f:
        torch.testing.assert_close(grads_c[n], grads_f[n], rtol=1e-4, atol=1e-4 * grads_f[n].abs().max().item())
    with pytest.raises(ValueError, match="plain nn.Linear"):
        lm_trainer(
            tmp_path / "head",
            tiny_lm(vocab=56, seed=1),
            tiny_lm(vocab=64, hidden=24, seed=2),
            peft_config=LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "lm_head"]),
            loss_chunk_size=4,
        )


def test_chunking_refuses_what_it_cannot_do(tmp_path):
    import transformers as tf

    bert = tf.BertForSequenceClassification(
        tf.BertConfig(
            vocab_size=TOKENS, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    with pytest.raises(ValueError, match="causal language models"):
        DistillationTrainer(
            bert,
            bert.__class__(bert.config),
            distillation_args(tmp_path, loss_chunk_size=8),
        )
    with pytest.raises(ValueError, match="label smoothing"):
        lm_trainer(tmp_path, tiny_lm(seed=1), tiny_lm(vocab=64, seed=2), loss_chunk_size=8, label_smoothing_factor=0.1)
    with pytest.raises(ValueError, match="vocab_size"):  # a teacher vocabulary that is more than padding
        lm_trainer(tmp_path, tiny_lm(vocab=40, seed=1), tiny_lm(vocab=64, seed=2), loss_chunk_size=8)


@requires_torchrun
@pytest.mark.torchrun_job("chunked")  # tests/ddp_chunked_train.py OUT 2 on 2 processes
def test_two_process_chunked_ddp_equals_one_process(tmp_path, torchrun_jobs):
    """2 processes x 2 rows == 1 process x 4 rows, with unequal token counts on the two ranks."""
    import ddp_chunked_train

    one, two = one_and_two_processes(ddp_chunked_train.run, tmp_path, ["4"], torchrun_jobs["chunked"])
    assert_same_weights(two, one, rtol=1e-4)


def test_token_scales_by_hand():
    from hf_distill.objective import token_scales

    weights = {"soft_loss": 0.6, "hard_loss": 0.4, "hidden_loss": 1.0}
    local = torch.tensor([3, 2])  # this micro-batch: 3 real tokens, 2 next-token labels
    got = token_scales(weights, local, (torch.tensor(10), torch.tensor(5)), steps=2, processes=2)
    assert got == pytest.approx({"soft_loss": 3 * 2 / 10, "hard_loss": 2 * 2 / 5, "hidden_loss": 0.5})
    assert token_scales(weights, local, None, steps=4) == {name: 0.25 for name in weights}
    assert token_scales(weights, local, (torch.tensor(10), None), steps=1)["hard_loss"] == 1.0  # no labels counted
