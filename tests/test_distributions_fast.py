"""Ember's lean Normal matches torch's to rounding, in value, gradient and behaviour."""

import pytest
import torch
from torch.distributions import Normal as TorchNormal

import ember.distributions as dist


@pytest.mark.parametrize("shape", [(), (5,), (3, 4)])
def test_normal_log_prob_and_grads_match_torch(shape):
    torch.manual_seed(1)
    loc = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(shape, dtype=torch.float64).add(0.1).requires_grad_(True)
    x = torch.randn((2,) + shape, dtype=torch.float64) * 3
    ours = dist.Normal(loc, scale).log_prob(x)
    ref = TorchNormal(loc, scale).log_prob(x)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(ours.sum(), [loc, scale])
    g2 = torch.autograd.grad(ref.sum(), [loc, scale])
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_normal_mixed_arguments_and_expand():
    d = dist.Normal(torch.zeros(3), 1.0)
    assert d.batch_shape == (3,)
    e = dist.Normal(0.0, 1.0).expand([4, 2])
    assert isinstance(e, dist.Normal) and e.batch_shape == (4, 2)
    assert torch.allclose(e.log_prob(torch.zeros(4, 2)), TorchNormal(0.0, 1.0).log_prob(torch.zeros(4, 2)))
    assert dist.Normal(torch.zeros(2), torch.ones(2)).expand_by([5]).batch_shape == (5, 2)
    kl = torch.distributions.kl_divergence(dist.Normal(1.0, 2.0), dist.Normal(0.0, 1.0))
    assert kl.item() == pytest.approx(TorchNormal(1.0, 2.0).variance.item() / 2 + 0.5 - 0.5 - torch.tensor(2.0).log().item(), abs=1e-6)


def test_normal_validation_still_applies():
    with pytest.raises(ValueError):
        dist.Normal(torch.zeros(2), -torch.ones(2), validate_args=True)
    d = dist.Normal(torch.zeros(2), torch.ones(2), validate_args=True)
    assert torch.isfinite(d.log_prob(torch.zeros(2))).all()
