"""Segmentation SimCLR loss: closed form vs the explicit double loop, and the head."""
import pytest
import torch

from segfungi.gradients import l2_normalize
from segfungi.ops.seg_loss import make_head, naive_seg_simclr_loss, seg_simclr_loss


def _unit(*shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return l2_normalize(torch.randn(*shape, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("n,m", [(2, 0), (2, 1), (3, 5), (6, 2), (9, 9)])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_closed_form_equals_double_loop(n, m, tau):
    z_pos, z_neg = _unit(2, n, 4, seed=n), _unit(2, m, 4, seed=100 + m)
    torch.testing.assert_close(
        seg_simclr_loss(z_pos, z_neg, tau), naive_seg_simclr_loss(z_pos, z_neg, tau), rtol=1e-10, atol=1e-10
    )


def test_closed_form_gradient_equals_double_loop_gradient():
    raw = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z_neg = _unit(2, 4, 3, seed=1)
    grads = []
    for loss_fn in (seg_simclr_loss, naive_seg_simclr_loss):
        x = raw.clone().requires_grad_(True)
        loss_fn(l2_normalize(x), z_neg, 0.07).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_loss_is_per_image_and_stable_at_low_temperature():
    z_pos, z_neg = _unit(3, 8, 6, seed=0), _unit(3, 8, 6, seed=1)
    batched = seg_simclr_loss(z_pos, z_neg, 0.07)
    assert batched.shape == (3,)
    torch.testing.assert_close(batched[1:2], seg_simclr_loss(z_pos[1:2], z_neg[1:2], 0.07))
    # identical positives and far negatives: no overflow at tiny τ
    same = l2_normalize(torch.ones(1, 4, 6, dtype=torch.float64))
    loss = seg_simclr_loss(same, -same, tau=1e-3)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, torch.log(torch.tensor([3.0], dtype=torch.float64)) * 1.0, atol=1e-8, rtol=0)
    # negatives' order does not matter
    torch.testing.assert_close(seg_simclr_loss(z_pos, z_neg.flip(1)), seg_simclr_loss(z_pos, z_neg))


def test_needs_two_positives():
    with pytest.raises(ValueError, match="at least 2"):
        seg_simclr_loss(_unit(1, 1, 3, seed=0), _unit(1, 2, 3, seed=1))


def test_head_is_seeded_frozen_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    head = make_head(32, 96, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert head.weight.shape == (96, 32) and head.bias.shape == (96,)
    assert not any(p.requires_grad for p in head.parameters())
    assert torch.equal(head.weight, make_head(32, 96, seed=7).weight)
    assert not torch.equal(head.weight, make_head(32, 96, seed=8).weight)
    bound = 32**-0.5
    assert head.weight.abs().max() <= bound and head.bias.abs().max() <= bound
    assert head.weight.std() > 0.5 * bound / 3**0.5  # U(−b, b) has std b/√3
