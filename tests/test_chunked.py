"""Chunked output-layer loss == the unchunked loss (values and gradients), without ever holding (N, V) logits."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from testing_utils import LM_CLASSES, TOKENS, tiny_lm_config
from torch import nn

from hf_distill.chunked import (
    OutputHead,
    auto_chunk_size,
    causal_lm_rows,
    chunk_bytes_per_row,
    chunked_head_loss,
)
from hf_distill.losses import divergence_loss, teacher_target
from hf_distill.objective import DistillationObjective

CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"jsd_beta": 0.3}),
    ("skew_forward_kl", {"skew_alpha": 0.1}),
    ("skew_reverse_kl", {"skew_alpha": 0.1}),
    ("tvd", {}),
    ("mse", {}),
]
IDS = [c[0] for c in CASES]


def assert_grads_close(got, want, name=""):
    """float32: elementwise within 1e-5 relative, with an absolute floor at 1e-5 of the tensor's largest entry."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale + 1e-12, msg=lambda m: f"{name}: {m}")


def reference(
    h_s, head, h_ts, t_heads, labels, soft_mask, T, divergence, vocab_limit, ws, wh, params, ensemble_mode="mean"
):
    """The unchunked computation: full (N, V) logits, the registry loss and F.cross_entropy, plain autograd."""
    z = head.finish(F.linear(h_s, head.weight, head.bias))  # (N, V_s)
    t_logits = [
        th.finish(F.linear(h.to(th.weight.dtype), th.weight, th.bias))[:, :vocab_limit] for h, th in zip(h_ts, t_heads)
    ]
    target = teacher_target(t_logits, T, ensemble_mode, divergence)
    soft = divergence_loss(z[:, :vocab_limit], target, T, soft_mask, divergence=divergence, reduction="sum", **params)
    hard = F.cross_entropy(z.float(), labels, ignore_index=-100, reduction="sum")
    return ws * soft + wh * hard, soft, hard


@pytest.mark.parametrize("divergence, params", CASES, ids=IDS)
def test_chunked_head_loss_equals_unchunked_on_raw_tensors(divergence, params):
    """Two teachers (one in bfloat16), a biased, scaled, soft-capped student head, padded vocabularies."""
    g = torch.Generator().manual_seed(0)
    N, H, Ht, Vs, Vt, limit, T = 37, 8, 12, 23, 25, 20, 2.0
    h_s = torch.randn(N, H, generator=g, requires_grad=True)
    head = OutputHead(
        torch.randn(Vs, H, generator=g).requires_grad_(True),
        torch.randn(Vs, generator=g).requires_grad_(True),
        scale=0.7,
        softcap=6.0,
    )
    h_ts = [torch.randn(N, Ht, generator=g), torch.randn(N, Ht, generator=g).bfloat16()]
    t_heads = [OutputHead(torch.randn(Vt, Ht, generator=g)), OutputHead(torch.randn(Vt, Ht, generator=g).bfloat16())]
    labels = torch.randint(0, Vs, (N,), generator=g)
    labels[::4] = -100
    soft_mask = torch.rand(N, generator=g) > 0.3
    ws, wh = 0.9 / int(soft_mask.sum()), 0.1 / int((labels != -100).sum())

    want, want_soft, want_hard = reference(
        h_s, head, h_ts, t_heads, labels, soft_mask, T, divergence, limit, ws, wh, params
    )
    want_grads = torch.autograd.grad(want, [h_s, head.weight, head.bias])
    got = chunked_head_loss(
        h_s,
        head,
        h_ts,
        t_heads,
        labels=labels,
        soft_mask=soft_mask,
        temperature=T,
        divergence=divergence,
        vocab_limit=limit,
        soft_scale=ws,
        hard_scale=wh,
        chunk_size=5,
        **params,
    )
    got_grads = torch.autograd.grad(got.loss, [h_s, head.weight, head.bias])
    assert got.loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert got.soft_sum.item() == pytest.approx(want_soft.item(), rel=1e-5)
    assert got.hard_sum.item() == pytest.approx(want_hard.item(), rel=1e-5)
    for a, b, name in zip(got_grads, want_grads, ["hidden", "weight", "bias"]):
        assert_grads_close(a, b, name)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_chunked_head_loss_saves_no_full_logits_and_skips_frozen_heads(divergence):
    """Nothing of size (N, V) is saved for backward, in the forward's chunk graphs or for the outer backward.

    forward_kl (closed-form gradient) saves nothing at all; other divergences differentiate one chunk at a time.
    """
    g = torch.Generator().manual_seed(1)
    N, H, V = 64, 4, 50
    h_s = torch.randn(N, H, generator=g, requires_grad=True)
    head = OutputHead(torch.randn(V, H, generator=g).requires_grad_(True))
    t_head = OutputHead(torch.randn(V, H, generator=g))
    h_t, labels = torch.randn(N, H, generator=g), torch.randint(0, V, (N,), generator=g)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    kw = {"labels": labels, "temperature": 2.0, "divergence": divergence, "chunk_size": 8}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = chunked_head_loss(h_s, head, [h_t], [t_head], **kw)
    out.loss.backward()
    if divergence == "forward_kl":
        assert saved == []
    else:
        assert saved and max(saved) <= max(8 * V, V * H)  # one chunk's logits or the head's own (V, H)
    want, _, _ = reference(h_s, head, [h_t], [t_head], labels, None, 2.0, divergence, None, 1.0, 1.0, {})
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    # a frozen head (PEFT) gets no gradient and none is formed; the hidden states still get theirs
    h2 = h_s.detach().clone().requires_grad_(True)
    frozen = OutputHead(head.weight.detach())
    chunked_head_loss(h2, frozen, [h_t], [t_head], **kw).loss.backward()
    assert frozen.weight.grad is None
    assert_grads_close(h2.grad, h_s.grad, "hidden")
    # evaluation: no graph at all, same value
    with torch.no_grad():
        ev = chunked_head_loss(h_s, head, [h_t], [t_head], **kw)
    assert not ev.loss.requires_grad and ev.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_chunked_head_loss_rejects_bad_inputs():
    head, other = OutputHead(torch.zeros(10, 4)), OutputHead(torch.zeros(12, 4))
    h = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="pass vocab_limit"):
        chunked_head_loss(h, head, [h], [other])
    with pytest.raises(ValueError, match="exceeds"):
        chunked_head_loss(h, head, [h], [other], vocab_limit=11)
    with pytest.raises(ValueError, match="rows of hidden states"):
        chunked_head_loss(h, head, [torch.zeros(2, 4)], [head])
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_head_loss(h, head, chunk_size=0)
    lora_like = tf.GPT2LMHeadModel(tiny_lm_config("gpt2", 10))
    lora_like.lm_head = nn.Sequential(nn.Linear(4, 10))
    with pytest.raises(ValueError, match="plain nn.Linear"):
        OutputHead.from_model(lora_like)


def test_auto_chunk_size_from_a_memory_budget():
    """Rows per chunk for "auto", against the count worked out by hand from the per-row estimate."""
    # per row: 4 bytes x V x (4 student + 3 per teacher buffers); V = 1000, 1 teacher -> 28_000 bytes
    assert chunk_bytes_per_row(1000, 1) == 4 * 1000 * 7 == 28_000
    assert chunk_bytes_per_row(1000, 2) == 4 * 1000 * 10
    assert auto_chunk_size(100, 1000, 1, 100 * 28_000) == 100  # everything fits: one chunk
    assert auto_chunk_size(100, 1000, 1, 10**12) == 100
    # 30 rows fit -> ceil(100 / 30) = 4 chunks, evened out to ceil(100 / 4) = 25 rows each
    assert auto_chunk_size(100, 1000, 1, 30 * 28_000 + 5) == 25
    # 99 rows fit -> 2 chunks of 50 (not 99 + 1)
    assert auto_chunk_size(100, 1000, 1, 99 * 28_000) == 50
    assert auto_chunk_size(100, 1000, 1, 1) == 1  # less than a row: one row at a time
    assert auto_chunk_size(0, 1000, 1, 1) == 1  # nothing to compute


@pytest.mark.parametrize("budget_mb, chunks", [(512, 1), (1, 3)])
def test_auto_chunked_head_loss_equals_unchunked(monkeypatch, budget_mb, chunks):
    """chunk_size="auto": the chunk count the CPU budget gives (worked out by hand) and the unchunked values."""
    import hf_distill.chunked as chunked

    g = torch.Generator().manual_seed(4)
    N, H, V = 2000, 4, 50
    h_s = torch.randn(N, H, generator=g, requires_grad=True)
    head = OutputHead(torch.randn(V, H, generator=g).requires_grad_(True), torch.randn(V, generator=g))
    t_head = OutputHead(torch.randn(V, H, generator=g))
    h_t, labels = torch.randn(N, H, generator=g), torch.randint(0, V, (N,), generator=g)
    # 1 MiB / (4 x 50 x 7 bytes a row) = 748 rows fit -> ceil(2000 / 748) = 3 chunks; 512 MiB: all 2000 rows
    monkeypatch.setattr(chunked, "AUTO_CPU_BUDGET_MB", budget_mb)
    calls = []
    real_call = chunked._DistillChunk.__call__
    monkeypatch.setattr(
        chunked._DistillChunk, "__call__", lambda self, z, *a: calls.append(z.shape[0]) or real_call(self, z, *a)
    )
    got = chunked_head_loss(
        h_s,
        head,
        [h_t],
        [t_head],
        labels=labels,
        temperature=2.0,
        soft_scale=0.5 / N,
        hard_scale=0.5 / N,
        chunk_size="auto",
    )
    assert len(calls) == chunks and sum(calls) == N
    want, want_soft, want_hard = reference(
        h_s, head, [h_t], [t_head], labels, None, 2.0, "forward_kl", None, 0.5 / N, 0.5 / N, {}
    )
    assert got.loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert (got.soft_sum.item(), got.hard_sum.item()) == pytest.approx((want_soft.item(), want_hard.item()), rel=1e-5)
    for a, b, name in zip(
        torch.autograd.grad(got.loss, [h_s, head.weight]),
        torch.autograd.grad(want, [h_s, head.weight]),
        ["hidden", "weight"],
    ):
        assert_grads_close(a, b, name)


# ---- whole models: tiny GPT-2 and tiny Llama, padding, vocabulary padding, ignored labels ----------------------


MODELS = {arch: (LM_CLASSES[arch], partial(tiny_lm_config, arch)) for arch in LM_CLASSES}


def _batch(g, B=3, L=9):
    ids = torch.randint(1, TOKENS, (B, L), generator=g)
    attention_mask = torch.ones(B, L, dtype=torch.long)
    attention_mask[1, 6:] = 0  # right padding
    attention_mask[2, :3] = 0  # left padding
    labels = ids.masked_fill(attention_mask == 0, -100)
    labels[0, :4] = -100  # an ignored prompt
    return {"input_ids": ids, "attention_mask": attention_mask}, labels


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("divergence, params", [("forward_kl", {}), ("jsd", {"jsd_beta": 0.5})], ids=["fkl", "jsd"])
def test_chunked_equals_unchunked_on_tiny_models(arch, divergence, params):
    cls, config = MODELS[arch]
    torch.manual_seed(0)
    student, teacher = cls(config(56)), cls(config(64, hidden=24))
    teacher.requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    inputs, labels = _batch(g)
    T, ws, wh = 2.0, 0.7, 0.3

    # unchunked: full logits, the registry loss on the real tokens, the model's own shifted cross-entropy
    out = student(**inputs, labels=labels)
    with torch.no_grad():
        t_logits = teacher(**inputs).logits
    target = teacher_target(t_logits[..., :TOKENS], T, divergence=divergence)
    soft = divergence_loss(
        out.logits[..., :TOKENS], target, T, inputs["attention_mask"], divergence=divergence, **params
    )
    want = ws * soft + wh * out.loss
    params_s = [p for p in student.parameters() if p.requires_grad]
    want_grads = torch.autograd.grad(want, params_s)

    # chunked, through the public path: bodies only (logits_to_keep=1), then the kept rows chunk by chunk
    flags = {"logits_to_keep": 1, "output_hidden_states": True}
    h_s = student(**inputs, **flags).hidden_states[-1]  # (B, L, H_s)
    with torch.no_grad():
        h_t = teacher(**inputs, **flags).hidden_states[-1]  # (B, L, H_t)
    objective = DistillationObjective(
        {"soft_loss": ws, "hard_loss": wh},
        temperature=T,
        divergence=divergence,
        vocab_limit=TOKENS,
        divergence_kwargs=params,
    )
    loss, terms = objective.lm_head_loss(
        {**inputs, "labels": labels},
        h_s,
        [h_t],
        OutputHead.from_model(student),
        [OutputHead.from_model(teacher)],
        chunk_size=4,
    )
    got_grads = torch.autograd.grad(loss, params_s)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert terms["soft_loss"].item() == pytest.approx(soft.item(), rel=1e-5)
    assert terms["hard_loss"].item() == pytest.approx(out.loss.item(), rel=1e-5)
    names = [n for n, p in student.named_parameters() if p.requires_grad]
    assert any("lm_head" in n or "wte" in n for n in names)  # the head (GPT-2: tied to wte) is among them
    for a, b, name in zip(got_grads, want_grads, names):
        assert_grads_close(a, b, name)


def test_causal_lm_rows_shift_labels_like_the_model():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])
    keep, soft, nxt = causal_lm_rows(mask, labels, (2, 4))
    # kept: real tokens, plus any position whose next token has a label (none here beyond the real tokens)
    assert keep.tolist() == [[True, True, True, False], [False, True, True, True]]
    assert soft.tolist() == [True] * 6
    assert nxt.tolist() == [5, 6, -100, 7, 8, -100]  # the label of the next token, -100 after the last
    # a labelled position outside the attention mask still gets its hard loss (the model's loss counts it)
    keep, soft, nxt = causal_lm_rows(torch.tensor([[1, 1, 0]]), torch.tensor([[1, 2, 3]]), (1, 3))
    assert keep.tolist() == [[True, True, False]] and soft.tolist() == [True, True] and nxt.tolist() == [2, 3]
    keep, soft, nxt = causal_lm_rows(torch.tensor([[0, 1, 1]]), torch.tensor([[1, 2, 3]]), (1, 3))
    assert (
        keep.tolist() == [[True, True, True]] and soft.tolist() == [False, True, True] and nxt.tolist() == [2, 3, -100]
    )


def test_chunked_head_loss_under_bf16_autocast_matches_the_autocast_reference():
    """Under autocast the logits matmuls run in bfloat16 in both paths; the losses stay float32 and agree."""
    g = torch.Generator().manual_seed(3)
    N, H, V = 40, 16, 30
    h_s = torch.randn(N, H, generator=g, requires_grad=True)
    head = OutputHead(torch.randn(V, H, generator=g).requires_grad_(True))
    h_t, t_head = torch.randn(N, H, generator=g), OutputHead(torch.randn(V, H, generator=g))
    labels = torch.randint(0, V, (N,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, _, _ = reference(h_s, head, [h_t], [t_head], labels, None, 2.0, "reverse_kl", None, 0.5 / N, 0.5 / N, {})
        got = chunked_head_loss(
            h_s,
            head,
            [h_t],
            [t_head],
            labels=labels,
            temperature=2.0,
            divergence="reverse_kl",
            soft_scale=0.5 / N,
            hard_scale=0.5 / N,
            chunk_size=16,
        )
    assert got.loss.dtype == torch.float32 and want.dtype == torch.float32
    assert got.loss.item() == pytest.approx(want.item(), rel=1e-3)
    want_grads = torch.autograd.grad(want, [h_s, head.weight])
    got_grads = torch.autograd.grad(got.loss, [h_s, head.weight])
    for a, b in zip(got_grads, want_grads):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())
