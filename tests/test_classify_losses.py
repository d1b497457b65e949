"""classify losses against naive implementations (values and gradients)."""

import pytest
import torch
import torch.nn.functional as F

from segfungi.classify.losses import (
    dino_loss,
    kl_uniform_loss,
    make_head,
    naive_dino_loss,
    naive_kl_uniform_loss,
    naive_simclr_loss,
    simclr_loss,
)


def _grad(fn, *tensors):
    tensors = [t.clone().requires_grad_(True) for t in tensors]
    fn(*tensors).sum().backward()
    return [t.grad for t in tensors]


def test_kl_matches_kl_div_and_gradient():
    z = torch.randn(5, 33, dtype=torch.float64) * 3
    for temp in (1.0, 15.0):
        fast, naive = kl_uniform_loss(z, temp), naive_kl_uniform_loss(z, temp)
        torch.testing.assert_close(fast, naive)
        g1, = _grad(lambda x: kl_uniform_loss(x, temp), z)
        g2, = _grad(lambda x: naive_kl_uniform_loss(x, temp), z)
        torch.testing.assert_close(g1, g2)
    # KL(U || softmax) is zero for constant logits and positive otherwise
    assert kl_uniform_loss(torch.zeros(2, 7), 15.0).abs().max() < 1e-6
    assert (kl_uniform_loss(z, 1.0) > 0).all()


@pytest.mark.parametrize("exclude", [False, True])
def test_dino_matches_double_loop(exclude):
    torch.manual_seed(0)
    student = torch.randn(3, 6, 40, dtype=torch.float64)
    teacher = torch.randn(3, 2, 40, dtype=torch.float64)
    fast = dino_loss(student, teacher, 0.1, 0.07, exclude)
    naive = naive_dino_loss(student, teacher, 0.1, 0.07, exclude)
    torch.testing.assert_close(fast, naive)
    gs1, = _grad(lambda s: dino_loss(s, teacher, 0.1, 0.07, exclude), student)
    gs2, = _grad(lambda s: naive_dino_loss(s, teacher, 0.1, 0.07, exclude), student)
    torch.testing.assert_close(gs1, gs2)
    # the teacher carries no gradient
    s, t = student.clone().requires_grad_(True), teacher.clone().requires_grad_(True)
    dino_loss(s, t).sum().backward()
    assert t.grad is None and s.grad is not None


def test_dino_pairs_counted():
    # uniform outputs: every pair contributes log K
    k = 16
    s = torch.zeros(1, 5, k)
    t = torch.zeros(1, 2, k)
    assert torch.isclose(dino_loss(s, t)[0], 10 * torch.log(torch.tensor(float(k))))
    assert torch.isclose(dino_loss(s, t, exclude_same_view=True)[0], 8 * torch.log(torch.tensor(float(k))))


def test_simclr_matches_pairwise_definition():
    torch.manual_seed(1)
    pos = torch.randn(2, 7, 12, dtype=torch.float64)
    neg = torch.randn(9, 12, dtype=torch.float64)
    fast = simclr_loss(pos, neg, 0.07)
    naive = naive_simclr_loss(pos, neg, 0.07)
    torch.testing.assert_close(fast, naive)
    g1, = _grad(lambda p: simclr_loss(p, neg, 0.07), pos)
    g2, = _grad(lambda p: naive_simclr_loss(p, neg, 0.07), pos)
    torch.testing.assert_close(g1, g2)


def test_simclr_is_per_sample():
    """Each sample's loss depends only on its own views (negatives are constants)."""
    torch.manual_seed(2)
    pos = torch.randn(3, 4, 8)
    neg = torch.randn(5, 8)
    full = simclr_loss(pos, neg)
    for b in range(3):
        torch.testing.assert_close(full[b], simclr_loss(pos[b : b + 1], neg)[0])
    p, n = pos.clone().requires_grad_(True), neg.clone().requires_grad_(True)
    simclr_loss(p, n).sum().backward()
    assert n.grad is None and p.grad is not None


def test_simclr_scale_invariant_and_needs_two_views():
    torch.manual_seed(3)
    pos, neg = torch.randn(2, 3, 8), torch.randn(4, 8)
    torch.testing.assert_close(simclr_loss(pos, neg), simclr_loss(pos * 5, neg * 0.1))
    with pytest.raises(ValueError):
        simclr_loss(pos[:, :1], neg)


def test_heads_are_seeded_and_frozen():
    a, b, c = make_head(16, 8, 3), make_head(16, 8, 3), make_head(16, 8, 4)
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)
    assert not a.weight.requires_grad
    assert a.weight.abs().max() <= 1 / 4 + 1e-6  # U(-1/sqrt(in), 1/sqrt(in))
    x = torch.randn(2, 16)
    torch.testing.assert_close(a(x), F.linear(x, a.weight, a.bias))
