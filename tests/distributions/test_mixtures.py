"""MaskedMixture, MixtureOfDiagNormals and LKJ: log_prob by brute force or closed form, moments, shapes."""

import math

import pytest
import torch

import ember.distributions as dist


def test_mixture_of_diag_normals_log_prob_and_moments():
    torch.manual_seed(0)
    locs = torch.tensor([[0.0, 1.0], [3.0, -2.0], [-1.0, 0.5]], dtype=torch.double)
    scales = torch.tensor([[1.0, 0.5], [0.3, 2.0], [1.5, 1.0]], dtype=torch.double)
    logits = torch.tensor([0.2, -0.5, 1.0], dtype=torch.double)
    d = dist.MixtureOfDiagNormals(locs, scales, logits)
    x = torch.randn(7, 2, dtype=torch.double)
    w = torch.softmax(logits, 0)
    dens = sum(w[k] * torch.distributions.Normal(locs[k], scales[k]).log_prob(x).sum(-1).exp() for k in range(3))
    torch.testing.assert_close(d.log_prob(x), dens.log())
    s = d.sample((40000,))
    assert s.shape == (40000, 2)
    torch.testing.assert_close(s.mean(0), d.mean, atol=0.05, rtol=0)
    torch.testing.assert_close(s.var(0), d.variance, rtol=0.05, atol=0)
    e = d.expand((4,))
    assert e.sample((5,)).shape == (5, 4, 2) and e.log_prob(e.sample()).shape == (4,)
    with pytest.raises(ValueError, match="component_logits"):
        dist.MixtureOfDiagNormals(locs, scales, logits[:2])
    with pytest.raises(ValueError, match="coord_scale"):
        dist.MixtureOfDiagNormals(locs, -scales, logits, validate_args=True)


def test_masked_mixture():
    mask = torch.tensor([True, False, True])
    c0, c1 = dist.Normal(torch.zeros(3), 1.0), dist.Normal(torch.full((3,), 5.0), 0.5)
    d = dist.MaskedMixture(mask, c0, c1)
    x = torch.tensor([4.0, 0.5, 5.5])
    want = torch.where(mask, c1.log_prob(x), c0.log_prob(x))
    torch.testing.assert_close(d.log_prob(x), want)
    torch.manual_seed(0)
    s = d.sample((4000,))
    assert s.shape == (4000, 3)
    torch.testing.assert_close(s.mean(0), d.mean, atol=0.1, rtol=0)
    assert d.has_rsample and d.expand((2, 3)).rsample().shape == (2, 3)
    with pytest.raises(ValueError, match="boolean"):
        dist.MaskedMixture(mask.float(), c0, c1)
    assert math.isclose(float(d.variance[1]), 1.0)


def test_mixture_of_diag_normals_rsample_gradients_are_unbiased():
    """d/dθ E[f(x)] from rsample against the analytic gradient, for
    f(x) = sum(x^2) + x0 x1: E f = sum_k π_k (|μ_k|^2 + |σ_k|^2 + μ_k0 μ_k1)."""
    torch.manual_seed(0)
    locs = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.double, requires_grad=True)
    scales = torch.tensor([[1.0, 0.5], [0.7, 1.2]], dtype=torch.double, requires_grad=True)
    logits = torch.tensor([0.3, -0.4], dtype=torch.double, requires_grad=True)
    d = dist.MixtureOfDiagNormals(locs, scales, logits)
    x = d.rsample((100000,))
    torch.testing.assert_close(x.detach().mean(0), d.mean.detach(), atol=0.02, rtol=0)
    mc = torch.autograd.grad((x.pow(2).sum(-1) + x[:, 0] * x[:, 1]).mean(), (locs, scales, logits))
    pi = torch.softmax(logits, 0)
    exact = (pi * (locs.pow(2).sum(-1) + scales.pow(2).sum(-1) + locs[:, 0] * locs[:, 1])).sum()
    want = torch.autograd.grad(exact, (locs, scales, logits))
    for g, w in zip(mc, want):
        torch.testing.assert_close(g, w, atol=0.08, rtol=0.05)


@pytest.mark.parametrize("eta", [0.5, 1.0, 3.0])
def test_lkj_two_dims_is_a_scaled_beta(eta):
    """For dim 2, C = [[1, r], [r, 1]] with (r + 1)/2 ~ Beta(eta, eta)."""
    r = torch.linspace(-0.95, 0.95, 9, dtype=torch.double)
    C = torch.stack([torch.stack([torch.ones_like(r), r], -1), torch.stack([r, torch.ones_like(r)], -1)], -2)
    d = dist.LKJ(2, torch.tensor(eta, dtype=torch.double))
    want = torch.distributions.Beta(torch.tensor(eta, dtype=torch.double), torch.tensor(eta, dtype=torch.double)).log_prob((r + 1) / 2) - math.log(2)
    torch.testing.assert_close(d.log_prob(C), want)


def test_lkj_samples_and_shapes():
    torch.manual_seed(0)
    d = dist.LKJ(3, 2.0)
    s = d.sample((500,))
    assert s.shape == (500, 3, 3) and bool(dist.constraints.corr_matrix.check(s).all())
    torch.testing.assert_close(s.mean(0), d.mean, atol=0.05, rtol=0)
    e = d.expand((4,))
    assert e.sample().shape == (4, 3, 3) and e.log_prob(e.sample()).shape == (4,)
    with pytest.raises(ValueError, match="dim"):
        dist.LKJ(1)


def test_mixture_of_diag_normals_shared_covariance():
    torch.manual_seed(0)
    locs = torch.randn(3, 2, dtype=torch.double)
    scale = torch.tensor([0.5, 2.0], dtype=torch.double)
    logits = torch.randn(3, dtype=torch.double)
    d = dist.MixtureOfDiagNormalsSharedCovariance(locs, scale, logits)
    ref = dist.MixtureOfDiagNormals(locs, scale.expand(3, 2), logits)
    x = torch.randn(5, 2, dtype=torch.double)
    torch.testing.assert_close(d.log_prob(x), ref.log_prob(x))
    assert d.expand((4,)).rsample((2,)).shape == (2, 4, 2)
    with pytest.raises(ValueError, match="coord_scale"):
        dist.MixtureOfDiagNormalsSharedCovariance(locs, torch.ones(3), logits)
