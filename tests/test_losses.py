"""Each loss against a value computed by hand (plain Python loops / numpy)."""

import math

import numpy as np
import pytest
import torch

from hf_distill.losses import hidden_state_loss, logit_mse_loss, soft_target_loss


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
        hand_hidden(s.numpy(), t.numpy(), np.ones((2, 5)), kind), rel=1e-5)


def test_hidden_state_loss_rejects_shape_mismatch_and_unknown_kind():
    with pytest.raises(ValueError, match="project the student"):
        hidden_state_loss(torch.zeros(1, 2, 4), torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match="mse"):
        hidden_state_loss(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), kind="l1")


def test_logit_mse_loss_matches_hand_computation():
    s, t = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    assert logit_mse_loss(s, t).item() == pytest.approx((1 + 0 + 1 + 4) / 4)
