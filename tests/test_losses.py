"""Each loss against a value computed by hand (plain Python loops / numpy)."""

import math

import numpy as np
import pytest
import torch

from hf_distill.losses import (
    DIVERGENCES,
    LOGIT_DIVERGENCES,
    divergence_loss,
    ensemble_log_probs,
    hidden_state_loss,
    logit_mse_loss,
    soft_target_loss,
    teacher_log_probs,
    teacher_target,
    topk_divergence_loss,
    topk_soft_target_loss,
)


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def hand_soft_loss(student, teacher, T, mask=None):
    """T^2 * mean over kept positions of sum_c p_t (log p_t - log p_s), one position at a time."""
    s = student.reshape(-1, student.shape[-1]).astype(np.float64)
    t = teacher.reshape(-1, teacher.shape[-1]).astype(np.float64)
    keep = np.ones(len(s), bool) if mask is None else mask.reshape(-1).astype(bool)
    total, n = 0.0, 0
    for i in range(len(s)):
        if not keep[i]:
            continue
        p_t, p_s = _softmax(t[i] / T), _softmax(s[i] / T)
        total += sum(p_t[c] * (math.log(p_t[c]) - math.log(p_s[c])) for c in range(len(p_t)))
        n += 1
    return T * T * total / n


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 10.0])
def test_soft_loss_2d_matches_hand_computation(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 3
    got = soft_target_loss(s, t, T).item()
    assert got == pytest.approx(hand_soft_loss(s.numpy(), t.numpy(), T), rel=1e-5)


@pytest.mark.parametrize("T", [0.5, 2.0, 8.0])
def test_soft_loss_3d_masked_matches_hand_computation(T):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 6, 11, generator=g), torch.randn(3, 6, 11, generator=g) * 2
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    got = soft_target_loss(s, t, T, mask).item()
    assert got == pytest.approx(hand_soft_loss(s.numpy(), t.numpy(), T, mask.numpy()), rel=1e-5)
    # masked positions really are ignored: garbage there changes nothing
    s2 = s.clone()
    s2[mask == 0] = 1e4
    assert soft_target_loss(s2, t, T, mask).item() == pytest.approx(got, rel=1e-6)


def test_soft_loss_is_zero_for_identical_logits_and_positive_otherwise():
    z = torch.randn(4, 5)
    assert soft_target_loss(z, z, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_target_loss(z + torch.randn(4, 5), z, 3.0).item() > 0


def test_high_temperature_gradient_approaches_logit_matching():
    """Hinton et al. sec. 2.1: for large T and zero-mean logits, dL/dz_s -> (z_s - z_t) / N per position."""
    N, P, T = 10, 4, 500.0
    g = torch.Generator().manual_seed(2)
    zs = torch.randn(P, N, generator=g, dtype=torch.float64)
    zt = torch.randn(P, N, generator=g, dtype=torch.float64)
    zs, zt = zs - zs.mean(-1, keepdim=True), zt - zt.mean(-1, keepdim=True)
    zs.requires_grad_(True)
    soft_target_loss(zs, zt, T).backward()
    per_position_grad = zs.grad * P  # the loss averages over P positions
    expected = (zs.detach() - zt) / N
    torch.testing.assert_close(per_position_grad.double(), expected, rtol=2e-2, atol=1e-4)
    # ...and at T=1 it is far from that limit, so the check above can fail
    zs.grad = None
    soft_target_loss(zs, zt, 1.0).backward()
    assert not torch.allclose(zs.grad * P, expected, rtol=2e-2, atol=1e-4)


def test_soft_loss_fully_padded_rows_are_finite():
    s = torch.randn(2, 4, 6, requires_grad=True)
    t = torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])  # second row is all padding
    loss = soft_target_loss(s, t, 2.0, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert loss.item() == pytest.approx(hand_soft_loss(s.detach().numpy(), t.numpy(), 2.0, mask.numpy()), rel=1e-5)
    empty = soft_target_loss(s, t, 2.0, torch.zeros(2, 4))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_extreme_logits_under_autocast_give_fp32_gradients(dtype):
    g = torch.Generator().manual_seed(3)
    base_s = (torch.randn(4, 5, 9, generator=g) * 3e3).to(dtype)  # extreme, representable values
    base_t = (torch.randn(4, 5, 9, generator=g) * 3e3).to(dtype)
    mask = torch.ones(4, 5)
    mask[1, 3:] = 0

    s_lp = base_s.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        loss_lp = soft_target_loss(s_lp, base_t, 2.0, mask)
    loss_lp.backward()

    s_32 = base_s.float().requires_grad_(True)
    loss_32 = soft_target_loss(s_32, base_t.float(), 2.0, mask)
    loss_32.backward()

    assert loss_lp.dtype == torch.float32 and torch.isfinite(loss_lp)
    assert torch.isfinite(s_lp.grad.float()).all()
    torch.testing.assert_close(loss_lp, loss_32)
    torch.testing.assert_close(s_lp.grad.float(), s_32.grad, rtol=1e-2, atol=1e-6)


def hand_hidden(s, t, mask, kind):
    vals = []
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if mask[b, i]:
                if kind == "mse":
                    vals.append(np.mean((s[b, i] - t[b, i]) ** 2))
                else:
                    cos = s[b, i] @ t[b, i] / (np.linalg.norm(s[b, i]) * np.linalg.norm(t[b, i]))
                    vals.append(1 - cos)
    return float(np.mean(vals))


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hidden_state_loss_matches_hand_computation(kind):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    got = hidden_state_loss(s, t, mask, kind).item()
    assert got == pytest.approx(hand_hidden(s.numpy(), t.numpy(), mask.numpy(), kind), rel=1e-5)
    assert hidden_state_loss(s, t, None, kind).item() == pytest.approx(
        hand_hidden(s.numpy(), t.numpy(), np.ones((2, 5)), kind), rel=1e-5
    )


def test_hidden_state_loss_rejects_shape_mismatch_and_unknown_kind():
    with pytest.raises(ValueError, match="project the student"):
        hidden_state_loss(torch.zeros(1, 2, 4), torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match="mse"):
        hidden_state_loss(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), kind="l1")


def test_logit_mse_loss_matches_hand_computation():
    s, t = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    assert logit_mse_loss(s, t).item() == pytest.approx((1 + 0 + 1 + 4) / 4)


# ---- the divergence registry, each against a plain float64 reference ------------------------------------------


CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"jsd_beta": 0.5}),
    ("jsd", {"jsd_beta": 0.1}),
    ("jsd", {"jsd_beta": 0.9}),
    ("skew_forward_kl", {"skew_alpha": 0.1}),
    ("skew_reverse_kl", {"skew_alpha": 0.3}),
    ("tvd", {}),
    ("mse", {}),
]
CASE_IDS = [f"{n}-{next(iter(p.values()), '')}" for n, p in CASES]
PROB_CASES = [c for c in CASES if c[0] != "mse"]
PROB_IDS = [i for i, c in zip(CASE_IDS, CASES) if c[0] != "mse"]


def _ref_softmax(z):
    e = torch.exp(z - z.max())
    return e / e.sum()


def ref_divergence(name, s_row, t_row, T, **params):
    """One position, by the textbook definition in probability space (no log-space tricks), float64."""
    C = len(s_row)
    if name == "mse":
        return sum((s_row[c] - t_row[c]) ** 2 for c in range(C)) / C
    ps, pt = _ref_softmax(s_row / T), _ref_softmax(t_row / T)

    def kl(p, q):
        return sum(p[c] * torch.log(p[c] / q[c]) for c in range(C))

    if name == "forward_kl":
        return kl(pt, ps)
    if name == "reverse_kl":
        return kl(ps, pt)
    if name == "jsd":
        b = params["jsd_beta"]
        m = b * pt + (1 - b) * ps
        return b * kl(pt, m) + (1 - b) * kl(ps, m)
    if name == "skew_forward_kl":
        a = params["skew_alpha"]
        return kl(pt, a * pt + (1 - a) * ps)
    if name == "skew_reverse_kl":
        a = params["skew_alpha"]
        return kl(ps, a * ps + (1 - a) * pt)
    if name == "tvd":
        return 0.5 * sum(torch.abs(pt[c] - ps[c]) for c in range(C))
    raise AssertionError(name)


def ref_loss(name, student, teacher, T, mask=None, **params):
    """T^2 (1 for mse) * mean over the kept positions, one position at a time; autograd-able in float64."""
    s = student.reshape(-1, student.shape[-1])
    t = teacher.reshape(-1, teacher.shape[-1]).double()
    keep = [True] * len(s) if mask is None else mask.reshape(-1).bool().tolist()
    values = [ref_divergence(name, s[i], t[i], T, **params) for i in range(len(s)) if keep[i]]
    scale = 1.0 if name == "mse" else T * T
    return scale * sum(values) / len(values)


def _ours(name, student, teacher, T, mask=None, **params):
    return divergence_loss(student, teacher_target(teacher, T, divergence=name), T, mask, divergence=name, **params)


def _check_value_and_grad(name, params, s, t, T, mask=None):
    s32 = s.clone().float().requires_grad_(True)
    got = _ours(name, s32, t.float(), T, mask, **params)
    got.backward()
    s64 = s.clone().double().requires_grad_(True)
    want = ref_loss(name, s64, t, T, mask, **params)
    want.backward()
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-4, atol=1e-7)
    return got, s32.grad


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_divergence_2d_matches_float64_reference(name, params, T):
    g = torch.Generator().manual_seed(10)
    s, t = torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 3
    _check_value_and_grad(name, params, s, t, T)


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_divergence_3d_masked_matches_float64_reference(name, params):
    g = torch.Generator().manual_seed(11)
    s, t = torch.randn(3, 6, 11, generator=g) * 2, torch.randn(3, 6, 11, generator=g) * 2
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    got, grad = _check_value_and_grad(name, params, s, t, 3.0, mask)
    assert (grad[mask == 0] == 0).all()  # masked positions get no gradient ...
    s2 = s.clone()
    s2[mask == 0] = 1e4  # ... and garbage there changes nothing
    assert _ours(name, s2, t, 3.0, mask, **params).item() == pytest.approx(got.item(), rel=1e-6)


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_sum_reduction_is_mean_times_kept_positions(name, params):
    g = torch.Generator().manual_seed(12)
    s, t = torch.randn(2, 5, 9, generator=g), torch.randn(2, 5, 9, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    target = teacher_target(t, 2.0, divergence=name)
    mean = divergence_loss(s, target, 2.0, mask, divergence=name, **params)
    total = divergence_loss(s, target, 2.0, mask, divergence=name, reduction="sum", **params)
    assert total.item() == pytest.approx(8 * mean.item(), rel=1e-5)


@pytest.mark.parametrize("name, params", PROB_CASES, ids=PROB_IDS)
def test_registry_function_passes_gradcheck(name, params):
    """The registry functions themselves (no float32 cast) are differentiable in float64, w.r.t. both inputs."""
    g = torch.Generator().manual_seed(13)
    zs = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    fn = DIVERGENCES[name]
    assert torch.autograd.gradcheck(
        lambda a, b: fn(torch.log_softmax(a, -1), torch.log_softmax(b, -1), **params), (zs, zt)
    )


def test_forward_kl_equals_the_previous_soft_loss_bit_for_bit():
    g = torch.Generator().manual_seed(14)
    s, t = torch.randn(3, 4, 50, generator=g) * 4, torch.randn(3, 4, 50, generator=g) * 4
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]]).bool()
    T = 2.0
    # the soft loss as it was written before the registry
    log_pt = torch.nn.functional.log_softmax(t.float() / T, dim=-1)[mask]
    log_ps = torch.nn.functional.log_softmax(s.float()[mask] / T, dim=-1)
    before = torch.nn.functional.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1).mean() * T**2
    assert torch.equal(soft_target_loss(s, t, T, mask), before)
    assert torch.equal(_ours("forward_kl", s, t, T, mask), before)
    assert torch.equal(divergence_loss(s, teacher_log_probs([t], T), T, mask), before)


def test_endpoints_and_symmetries():
    g = torch.Generator().manual_seed(15)
    s, t = torch.randn(6, 8, generator=g) * 2, torch.randn(6, 8, generator=g) * 2
    fkl, rkl = _ours("forward_kl", s, t, 2.0), _ours("reverse_kl", s, t, 2.0)
    assert torch.equal(_ours("jsd", s, t, 2.0, jsd_beta=0.0), fkl)  # TRL's convention: beta=0 is forward KL
    assert torch.equal(_ours("jsd", s, t, 2.0, jsd_beta=1.0), rkl)  # ... and beta=1 reverse KL
    assert torch.equal(_ours("skew_forward_kl", s, t, 2.0, skew_alpha=0.0), fkl)
    assert torch.equal(_ours("skew_reverse_kl", s, t, 2.0, skew_alpha=0.0), rkl)
    assert fkl.item() != pytest.approx(rkl.item(), rel=1e-3)  # the two KLs really differ on this data
    # JSD at beta=1/2 is symmetric, bounded by log 2 per position (times T^2); TVD by 1
    j_st = _ours("jsd", s, t, 2.0, jsd_beta=0.5)
    assert j_st.item() == pytest.approx(_ours("jsd", t, s, 2.0, jsd_beta=0.5).item(), rel=1e-5)
    assert 0 < j_st.item() <= 4 * math.log(2)
    assert 0 < _ours("tvd", s, t, 1.0).item() <= 1.0
    # every divergence is 0 for identical distributions
    for name, params in CASES:
        assert _ours(name, s, s, 2.0, **params).item() == pytest.approx(0.0, abs=1e-6), name


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_extreme_logits_stay_finite(name, params):
    """+-1e4 logits: probabilities underflow to exactly 0, the log-space mixtures must not give inf / NaN."""
    g = torch.Generator().manual_seed(16)
    s = (torch.randint(0, 2, (4, 3, 9), generator=g).float() * 2 - 1) * 1e4  # every entry +1e4 or -1e4
    t = (torch.randint(0, 2, (4, 3, 9), generator=g).float() * 2 - 1) * 1e4
    t[0, 0] = torch.linspace(-1e4, 1e4, 9)
    s.requires_grad_(True)
    loss = _ours(name, s, t, 1.0, torch.ones(4, 3), **params)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() >= 0
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_low_precision_autocast_gives_the_float32_result(name, params, dtype):
    g = torch.Generator().manual_seed(17)
    base_s = (torch.randn(4, 5, 9, generator=g) * 3e3).to(dtype)  # extreme but representable in fp16
    base_t = (torch.randn(4, 5, 9, generator=g) * 3e3).to(dtype)
    mask = torch.ones(4, 5)
    mask[1, 3:] = 0
    s_lp = base_s.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        loss_lp = _ours(name, s_lp, base_t, 2.0, mask, **params)
    loss_lp.backward()
    s_32 = base_s.float().requires_grad_(True)
    loss_32 = _ours(name, s_32, base_t.float(), 2.0, mask, **params)
    loss_32.backward()
    assert loss_lp.dtype == torch.float32 and torch.isfinite(loss_lp)
    assert torch.isfinite(s_lp.grad.float()).all()
    torch.testing.assert_close(loss_lp, loss_32)
    torch.testing.assert_close(s_lp.grad.float(), s_32.grad, rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_fully_masked_batch_is_zero_with_a_gradient_path(name, params):
    s = torch.randn(2, 4, 6, requires_grad=True)
    t = torch.randn(2, 4, 6)
    for reduction in ("mean", "sum"):
        loss = divergence_loss(
            s,
            teacher_target(t, 2.0, divergence=name),
            2.0,
            torch.zeros(2, 4),
            divergence=name,
            reduction=reduction,
            **params,
        )
        loss.backward()
        assert loss.item() == 0.0 and loss.requires_grad
        assert torch.isfinite(s.grad).all() and (s.grad == 0).all()


def test_teacher_targets_combine_teachers_once():
    g = torch.Generator().manual_seed(18)
    t1, t2 = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    single = torch.log_softmax(t1 / 2.0, -1)
    assert torch.equal(teacher_log_probs(t1, 2.0), single)
    assert torch.equal(teacher_log_probs([t1], 2.0), single)
    mean = teacher_log_probs([t1, t2], 2.0)
    by_hand = torch.log((torch.softmax(t1 / 2, -1).double() + torch.softmax(t2 / 2, -1).double()) / 2)
    torch.testing.assert_close(mean.double(), by_hand, rtol=1e-6, atol=1e-6)
    assert torch.equal(teacher_log_probs([t1, t2], 2.0, "geometric"), ensemble_log_probs([t1, t2], 2.0, "geometric"))
    torch.testing.assert_close(teacher_target([t1, t2], 2.0, divergence="mse"), (t1 + t2) / 2)
    with pytest.raises(ValueError, match="at least one"):
        teacher_log_probs([], 2.0)


def test_bad_divergence_arguments_are_value_errors():
    s, t = torch.randn(2, 5), torch.log_softmax(torch.randn(2, 5), -1)
    with pytest.raises(ValueError, match=r"jsd_beta must be in \[0, 1\]"):
        divergence_loss(s, t, 2.0, divergence="jsd", jsd_beta=1.5)
    with pytest.raises(ValueError, match=r"skew_alpha must be in \[0, 1\)"):
        divergence_loss(s, t, 2.0, divergence="skew_forward_kl", skew_alpha=1.0)
    with pytest.raises(ValueError, match="takes no parameters"):
        divergence_loss(s, t, 2.0, divergence="tvd", jsd_beta=0.5)
    with pytest.raises(ValueError, match="unknown divergence 'kl'"):
        divergence_loss(s, t, 2.0, divergence="kl")
    with pytest.raises(ValueError, match="reduction"):
        divergence_loss(s, t, 2.0, reduction="none")
    with pytest.raises(ValueError, match="top-k cache"):
        topk_divergence_loss(
            s, torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1), torch.zeros(2), 2.0, divergence="mse"
        )
    assert set(LOGIT_DIVERGENCES) == {"mse"}


# ---- top-k cached targets with any divergence ----------------------------------------------------------------


def ref_topk_loss(name, student, teacher, k, T, **params):
    """Coarsen both full distributions (float64) to the teacher's top-k classes + one rest bin, then diverge."""
    s, t = student.double(), teacher.double()
    values = []
    for i in range(len(s)):
        ps, pt = _ref_softmax(s[i] / T), _ref_softmax(t[i] / T)
        top = torch.topk(t[i], k).indices.tolist()
        other = [c for c in range(len(pt)) if c not in top]
        cs = torch.stack([ps[c] for c in top] + [sum((ps[c] for c in other), torch.tensor(0.0, dtype=s.dtype))])
        ct = torch.stack([pt[c] for c in top] + [sum((pt[c] for c in other), torch.tensor(0.0, dtype=s.dtype))])
        # the coarsened distributions, given to the probability-space reference as "logits" log p (T = 1)
        values.append(ref_divergence(name, torch.log(cs), torch.log(ct), 1.0, **params))
    return T * T * sum(values) / len(values)


@pytest.mark.parametrize("name, params", PROB_CASES, ids=PROB_IDS)
def test_topk_divergence_matches_coarsened_reference(name, params):
    g = torch.Generator().manual_seed(19)
    s, t = torch.randn(6, 10, generator=g) * 2, torch.randn(6, 10, generator=g) * 2
    T, k = 2.0, 3
    vals, idx = torch.topk(t, k, dim=-1)
    rest = 1 - torch.softmax(t / T, -1).gather(-1, idx).sum(-1)
    s32 = s.clone().requires_grad_(True)
    got = topk_divergence_loss(s32, idx, vals, rest, T, divergence=name, **params)
    got.backward()
    s64 = s.clone().double().requires_grad_(True)
    want = ref_topk_loss(name, s64, t, k, T, **params)
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-3, atol=1e-6)
    # with k = C (rest exactly 0) it is the full divergence
    vals_all, idx_all = torch.topk(t, 10, dim=-1)
    full = topk_divergence_loss(s, idx_all, vals_all, torch.zeros(6), T, divergence=name, **params)
    assert full.item() == pytest.approx(_ours(name, s, t, T, **params).item(), rel=1e-5, abs=1e-6)


def test_topk_forward_kl_equals_the_previous_topk_soft_loss():
    g = torch.Generator().manual_seed(20)
    s, t = torch.randn(2, 4, 12, generator=g) * 2, torch.randn(2, 4, 12, generator=g) * 2
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]]).bool()
    T, k = 2.0, 4
    vals, idx = torch.topk(t, k, dim=-1)
    rest = 1 - torch.softmax(t / T, -1).gather(-1, idx).sum(-1)
    # the top-k soft loss as it was written before the registry (rest bin by log1p of the kept mass)
    sp, ip, vp, rp = s[mask], idx[mask], vals[mask], rest[mask]
    log_q = vp / T - torch.logsumexp(vp / T, -1, keepdim=True) + (1 - rp).clamp_min(1e-12).log().unsqueeze(-1)
    log_ps = torch.log_softmax(sp / T, -1).gather(-1, ip)
    log_ps_rest = torch.log1p(-torch.logsumexp(log_ps, -1).exp().clamp(max=1 - 1e-7))
    before = ((log_q.exp() * (log_q - log_ps)).sum(-1) + torch.xlogy(rp, rp) - rp * log_ps_rest).mean() * T**2
    got = topk_divergence_loss(s, idx, vals, rest, T, mask, divergence="forward_kl")
    assert got.item() == pytest.approx(before.item(), rel=1e-5)
    assert torch.equal(topk_soft_target_loss(s, idx, vals, rest, T, mask), got)


def test_divergence_parameters_registry_and_config_agree():
    """A divergence's keyword parameter = its default in the function, one DIVERGENCE_PARAMS entry (range, help)
    and one DistillationArguments field; the three must agree, and config validation reads the registry's range."""
    import dataclasses
    import inspect

    from hf_distill import DistillationArguments
    from hf_distill.losses import DIVERGENCE_PARAMS

    taken = {}
    for fn in (*DIVERGENCES.values(), *LOGIT_DIVERGENCES.values()):
        for p in list(inspect.signature(fn).parameters.values())[2:]:
            taken.setdefault(p.name, set()).add(p.default)
    assert set(taken) == set(DIVERGENCE_PARAMS) == {"jsd_beta", "skew_alpha"}
    fields = {f.name: f for f in dataclasses.fields(DistillationArguments)}
    for name, spec in DIVERGENCE_PARAMS.items():
        assert taken[name] == {fields[name].default}, name  # one default, the function's
        assert fields[name].metadata["help"] == spec.help
        low_bad, high_bad = spec.low - 0.5, spec.high + (0.5 if spec.high_included else 0.0)
        for bad in (low_bad, high_bad):
            with pytest.raises(ValueError, match=f"{name} must be in"):
                DistillationArguments(output_dir="out", report_to=[], **{name: bad})
        DistillationArguments(output_dir="out", report_to=[], **{name: spec.low})  # the low end is valid
