"""Tests for clipsep_ray.losses: hand-computed values, arrangement sets, PIT, gradients."""

import math

import pytest
import torch

from clipsep_ray.losses import (
    clipsep_loss,
    loss_weights,
    nit_arrangements,
    nit_loss,
    noise_regularizer,
    pit_loss,
    weighted_bce,
    weighted_bce_with_logits,
)

D = torch.float64


def logit(p):
    return torch.logit(torch.tensor(p, dtype=D))


def test_loss_weights_values_and_shape():
    mag = torch.tensor([0.0, math.e - 1.0, 1e9], dtype=D).view(1, 1, 1, 3)
    w = loss_weights(mag)
    assert w.shape == (1, 1, 1, 3)
    torch.testing.assert_close(w.flatten(), torch.tensor([1e-3, 1.0, 10.0], dtype=D))


def test_weighted_bce_hand_value():
    # p = 0.5, target 1, weight 2 -> 2 ln 2; p = 0.8, target 0, weight 1 -> -ln 0.2.
    prob = torch.tensor([[0.5, 0.8]], dtype=D)
    target = torch.tensor([[1.0, 0.0]], dtype=D)
    weight = torch.tensor([[2.0, 1.0]], dtype=D)
    got = weighted_bce(prob, target, weight)
    assert got.shape == ()
    assert got.item() == pytest.approx((2 * math.log(2) - math.log(0.2)) / 2, rel=1e-9)


def test_weighted_bce_probs_and_logits_agree():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 5, 4, generator=g, dtype=D) * 3
    target = (torch.rand(3, 2, 5, 4, generator=g, dtype=D) > 0.5).to(D)
    weight = torch.rand(3, 1, 5, 4, generator=g, dtype=D) + 0.1
    a = weighted_bce(torch.sigmoid(logits), target, weight)
    b = weighted_bce_with_logits(logits, target, weight)
    assert a.shape == b.shape == (3, 2)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_shape_errors_name_the_argument():
    x = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="target"):
        weighted_bce(x, torch.zeros(1, 2, 3, 5), torch.ones(1, 1, 3, 4))
    with pytest.raises(ValueError, match="weight"):
        weighted_bce_with_logits(x, x, torch.ones(1, 1, 2, 4))
    with pytest.raises(ValueError, match="targets"):
        clipsep_loss(x, torch.zeros(1, 3, 3, 4), torch.ones(1, 1, 3, 4))
    with pytest.raises(ValueError, match="noise_logits"):
        nit_loss(x, torch.zeros(2, 2, 3, 4), x, torch.ones(1, 1, 3, 4))
    with pytest.raises(ValueError, match="weight"):
        pit_loss(x, x, torch.ones(1, 3, 3, 4))


def test_clipsep_loss_keeps_query_order():
    t = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=D)  # (1, 2, 1, 2)
    w = torch.ones(1, 1, 1, 2, dtype=D)
    good = 6.0 * (2 * t - 1)
    swapped = good[:, [1, 0]]
    expected = weighted_bce_with_logits(good, t, w).mean()
    assert clipsep_loss(good, t, w).item() == pytest.approx(expected.item())
    assert clipsep_loss(good, t, w).item() < 0.01
    # No permutation: a query answering for the other source is penalised.
    assert clipsep_loss(swapped, t, w).item() > 5.0


@pytest.mark.parametrize(
    "n,h,count", [(2, 2, 2), (2, 3, 6), (3, 2, 6), (2, 0, 1), (1, 1, 1), (3, 3, 6)]
)
def test_nit_arrangements_counts_and_injective(n, h, count):
    arrs = nit_arrangements(n, h)
    assert len(arrs) == count
    assert len(set(arrs)) == count
    for a in arrs:
        assert len(a) == n
        used = [x for x in a if x >= 0]
        assert len(used) == len(set(used)) == min(n, h)
        assert all(-1 <= x < h for x in a)
    identity = tuple(i if i < h else -1 for i in range(n))
    assert arrs[0] == identity


def test_nit_arrangements_paper_case_and_zero_heads():
    assert nit_arrangements(2, 2) == [(0, 1), (1, 0)]
    assert nit_arrangements(2, 0) == [(-1, -1)]
    assert set(nit_arrangements(3, 1)) == {(0, -1, -1), (-1, 0, -1), (-1, -1, 0)}


def _paper_example():
    """B=2, N=H=2, F=T=2. Query probs 0.5 everywhere; in sample 0 head 1 fits query 0
    and head 0 fits query 1 (so L1 < L0); sample 1 has the heads exchanged."""
    m1 = [[1.0, 0.0], [1.0, 0.0]]
    m2 = [[0.0, 1.0], [0.0, 1.0]]
    n_a = [[0.1, 0.4], [0.1, 0.4]]  # high where source 2 is
    n_b = [[0.4, 0.1], [0.4, 0.1]]  # high where source 1 is
    targets = torch.tensor([[m1, m2], [m1, m2]], dtype=D)
    query = torch.zeros(2, 2, 2, 2, dtype=D)  # sigmoid(0) = 0.5
    noise = logit([[n_a, n_b], [n_b, n_a]])
    weight = torch.tensor([[[[1.0, 2.0], [1.0, 2.0]]]] * 2, dtype=D)
    return query, noise, targets, weight


def test_nit_loss_hand_value_and_choice():
    query, noise, targets, weight = _paper_example()
    ln = math.log
    # Sample 0, L0: query 1 + n1 -> p = [0.6, 0.9] vs [1, 0], weights [1, 2]
    #               query 2 + n2 -> p = [0.9, 0.6] vs [0, 1]
    l0 = ((-ln(0.6) - 2 * ln(0.1)) / 2 + (-ln(0.1) - 2 * ln(0.6)) / 2) / 2
    # Sample 0, L1: query 1 + n2 -> p = [0.9, 0.6] vs [1, 0]
    #               query 2 + n1 -> p = [0.6, 0.9] vs [0, 1]
    l1 = ((-ln(0.9) - 2 * ln(0.4)) / 2 + (-ln(0.4) - 2 * ln(0.9)) / 2) / 2
    assert l1 < l0 - 1.0
    loss, chosen = nit_loss(query, noise, targets, weight)
    assert chosen.dtype == torch.long
    assert chosen.tolist() == [1, 0]
    # Both samples reach the same minimum, each through its own arrangement.
    assert loss.item() == pytest.approx(min(l0, l1), rel=1e-6)


def test_nit_loss_caps_sum_at_one():
    # 0.8 + 0.4 > 1 must be capped to 1 (loss ~0 for target 1), not give NaN.
    query = logit([[[[0.8]]]])
    noise = logit([[[[0.4]]]])
    target = torch.ones(1, 1, 1, 1, dtype=D)
    loss, _ = nit_loss(query, noise, target, torch.ones(1, 1, 1, 1, dtype=D))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("n,h", [(2, 3), (3, 2), (2, 0)])
def test_nit_loss_matches_brute_force(n, h):
    g = torch.Generator().manual_seed(n * 10 + h)
    q = torch.randn(3, n, 4, 3, generator=g, dtype=D) * 2
    z = torch.randn(3, h, 4, 3, generator=g, dtype=D) * 2
    t = (torch.rand(3, n, 4, 3, generator=g, dtype=D) > 0.5).to(D)
    w = torch.rand(3, 1, 4, 3, generator=g, dtype=D) + 0.5
    arrs = nit_arrangements(n, h)
    per_sample = []
    for b in range(3):
        vals = []
        for a in arrs:
            terms = []
            for i, head in enumerate(a):
                p = torch.sigmoid(q[b, i])
                if head >= 0:
                    p = torch.clamp(p + torch.sigmoid(z[b, head]), max=1.0)
                terms.append(weighted_bce(p, t[b, i], w[b, 0]))
            vals.append(torch.stack(terms).mean())
        per_sample.append(torch.stack(vals))
    table = torch.stack(per_sample)  # (B, A)
    loss, chosen = nit_loss(q, z, t, w)
    torch.testing.assert_close(loss, table.min(dim=1).values.mean())
    assert chosen.tolist() == table.argmin(dim=1).tolist()


def test_noise_regularizer_hand_values():
    # Head sums per bin: [0.3 + 0.1, 0.5 + 0.1] -> mean 0.5 -> 0.1 * (0.5 - 0.25).
    noise = logit([[[[0.3, 0.5]], [[0.1, 0.1]]]])
    assert noise_regularizer(noise).item() == pytest.approx(0.025, rel=1e-9)
    assert noise_regularizer(noise, lam=1.0, gamma=0.1).item() == pytest.approx(0.4, rel=1e-9)
    quiet = logit([[[[0.05, 0.05]], [[0.05, 0.05]]]])  # sum 0.1 < gamma
    assert noise_regularizer(quiet).item() == 0.0
    assert noise_regularizer(torch.zeros(2, 0, 3, 3)).item() == 0.0


def test_pit_picks_swap_and_matches_straight_loss():
    g = torch.Generator().manual_seed(1)
    t = (torch.rand(2, 2, 4, 4, generator=g, dtype=D) > 0.5).to(D)
    w = torch.rand(2, 1, 4, 4, generator=g, dtype=D) + 0.5
    clean = 4.0 * (2 * t - 1) + 0.3 * torch.randn(2, 2, 4, 4, generator=g, dtype=D)
    logits = clean.clone()
    logits[1] = clean[1, [1, 0]]  # sample 1 comes out in swapped order
    loss, perm = pit_loss(logits, t, w)
    assert perm.dtype == torch.long
    assert perm.tolist() == [[0, 1], [1, 0]]
    aligned = torch.stack([logits[b, perm[b]] for b in range(2)])
    torch.testing.assert_close(loss, clipsep_loss(aligned, t, w))
    assert loss.item() < clipsep_loss(logits, t, w).item()


def test_pit_permutation_convention_three_sources():
    g = torch.Generator().manual_seed(2)
    t = (torch.rand(1, 3, 4, 4, generator=g, dtype=D) > 0.5).to(D)
    w = torch.ones(1, 1, 4, 4, dtype=D)
    clean = 5.0 * (2 * t - 1)
    logits = clean[:, [1, 2, 0]]  # estimate i answers target c[i], c = (1, 2, 0)
    _, perm = pit_loss(logits, t, w)
    assert perm.tolist() == [[2, 0, 1]]  # logits[:, perm] lines up with targets
    torch.testing.assert_close(logits[:, perm[0]], clean)


def test_gradients_flow_and_are_finite():
    g = torch.Generator().manual_seed(3)
    q = (torch.randn(2, 2, 4, 4, generator=g) * 20).requires_grad_()
    z = (torch.randn(2, 2, 4, 4, generator=g) * 20).requires_grad_()
    t = (torch.rand(2, 2, 4, 4, generator=g) > 0.5).float()
    w = loss_weights(torch.rand(2, 1, 4, 4, generator=g) * 5)
    total = (
        nit_loss(q, z, t, w)[0]
        + noise_regularizer(z, gamma=0.0)
        + clipsep_loss(q, t, w)
        + pit_loss(q, t, w)[0]
    )
    total.backward()
    for grad in (q.grad, z.grad):
        assert grad is not None
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0
