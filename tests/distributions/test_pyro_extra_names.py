"""The names Pyro has under ``pyro.distributions`` that Ember lacked: each checked against a
closed form, a brute-force integral, or the distribution it specializes."""

import importlib
import math

import pytest
import torch

import ember.distributions as dist
from ember.distributions import constraints, transforms

NAN = float("nan")


def _integral(d, lo, hi, n=200001):
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    return torch.trapezoid(d.log_prob(x).exp(), x), x


def test_soft_laplace_closed_forms():
    loc, scale = torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)
    d = dist.SoftLaplace(loc, scale)
    # p(x) = 1 / (pi scale cosh z): at the mode 1 / (pi scale)
    assert torch.allclose(d.log_prob(loc), -torch.log(math.pi * scale))
    x = torch.tensor([-2.0, 0.7, 3.0], dtype=torch.float64)
    z = (x - loc) / scale
    assert torch.allclose(d.log_prob(x), -torch.log(math.pi * scale * torch.cosh(z)))
    assert torch.allclose(d.cdf(loc), torch.tensor(0.5, dtype=torch.float64))
    assert torch.allclose(d.icdf(d.cdf(x)), x)
    total, grid = _integral(d, -80.0, 80.0)
    assert abs(total.item() - 1) < 1e-6
    second = torch.trapezoid(d.log_prob(grid).exp() * (grid - loc) ** 2, grid)
    assert torch.allclose(d.variance, second, rtol=1e-4) and torch.allclose(d.variance, (math.pi * scale / 2) ** 2)
    assert d.mean == loc and d.has_rsample and d.rsample((4,)).shape == (4,)
    assert dist.SoftLaplace(torch.zeros(2), 1.0).expand([3, 2]).batch_shape == (3, 2)


def test_affine_beta_is_a_shifted_and_scaled_beta():
    d = dist.AffineBeta(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.5]), -1.0, 4.0)
    beta = dist.Beta(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.5]))
    y = torch.tensor([1.0, 2.9])
    assert torch.allclose(d.log_prob(y), beta.log_prob((y + 1) / 4) - math.log(4))
    assert torch.allclose(d.log_prob(y)[0], torch.tensor(-math.log(4)))  # Beta(2, 1) has density 2x: 2 * 0.5 / 4
    assert torch.allclose(d.mean, -1 + 4 * beta.mean) and torch.allclose(d.variance, 16 * beta.variance)
    assert torch.equal(d.low, torch.tensor([-1.0, -1.0])) and torch.equal(d.high, torch.tensor([3.0, 3.0]))
    assert torch.equal(d.sample_size, torch.tensor([3.0, 3.5]))
    assert d.expand([3, 2]).batch_shape == (3, 2) and torch.equal(d.expand([3, 2]).loc, torch.full((3, 2), -1.0))
    # draws stay strictly inside the interval, even where the Beta's own draws reach its ends
    edge = dist.AffineBeta(torch.tensor(0.01), torch.tensor(0.01), 2.0, 3.0)
    x = edge.rsample((2000,))
    assert bool(((x > 2.0) & (x < 5.0)).all()) and torch.isfinite(edge.log_prob(x)).all()


def test_nan_masked_normal_scores_the_observed_entries_only():
    loc = torch.tensor([0.0, 1.0, 2.0, 3.0], requires_grad=True)
    d = dist.NanMaskedNormal(loc, 2.0)
    value = torch.tensor([0.5, NAN, 1.0, NAN])
    lp = d.log_prob(value)
    full = dist.Normal(loc, 2.0).log_prob(torch.tensor([0.5, 0.0, 1.0, 0.0]))
    assert torch.allclose(lp, torch.where(torch.isnan(value), torch.zeros(4), full))
    lp.sum().backward()
    assert torch.allclose(loc.grad, torch.tensor([0.125, 0.0, -0.25, 0.0]))  # (x - loc) / scale^2
    assert torch.equal(d.log_prob(torch.zeros(4)), dist.Normal(loc, 2.0).log_prob(torch.zeros(4)))
    assert type(d.expand([2, 4])) is dist.NanMaskedNormal


def test_nan_masked_mvn_marginalizes_the_missing_entries():
    cov = torch.tensor([[2.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.5]], dtype=torch.float64)
    loc = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    d = dist.NanMaskedMultivariateNormal(loc, cov)
    data = torch.tensor([[0.1, 0.2, 3.4], [0.5, 0.1, NAN], [NAN, 0.5, NAN], [NAN, NAN, NAN], [NAN, 0.3, 0.9]],
                        dtype=torch.float64)
    lp = d.log_prob(data)
    expected = []
    for row in data:
        o = ~torch.isnan(row)
        expected.append(dist.MultivariateNormal(loc[o], cov[o][:, o]).log_prob(row[o]) if o.any() else torch.tensor(0.0))
    assert torch.allclose(lp, torch.stack(expected).to(lp.dtype)) and lp[3] == 0
    lp.sum().backward()
    assert torch.isfinite(loc.grad).all()
    assert torch.allclose(d.log_prob(data[:1]), dist.MultivariateNormal(loc, cov).log_prob(data[:1]))


def test_sparse_poisson_gives_the_dense_log_prob():
    rate = torch.tensor([0.0, 1.0, 2.5, 4.0])
    value = torch.tensor([0.0, 0.0, 3.0, 1.0])
    sparse = dist.Poisson(rate, is_sparse=True)
    assert torch.allclose(sparse.log_prob(value), dist.Poisson(rate).log_prob(value))
    assert torch.allclose(sparse.log_prob(value), value * rate.clamp_min(1e-30).log() - rate - (value + 1).lgamma())
    assert sparse.expand([2, 4]).is_sparse and not dist.Poisson(rate).is_sparse
    with pytest.raises(TypeError):
        dist.Poisson(rate, True)  # keyword only, as in Pyro


def test_lkj_corr_cholesky_is_lkj_cholesky_with_the_old_argument_names():
    with pytest.warns(FutureWarning, match="LKJCholesky"):
        d = dist.LKJCorrCholesky(3, torch.tensor([2.0, 0.5]))
    ref = dist.LKJCholesky(3, concentration=torch.tensor([2.0, 0.5]))
    L = ref.sample()
    assert isinstance(d, dist.LKJCholesky) and d.event_shape == (3, 3)
    assert torch.allclose(d.log_prob(L), ref.log_prob(L))
    assert d.expand([4, 2]).batch_shape == (4, 2)


@pytest.mark.parametrize("straight, relaxed, probs", [
    (dist.RelaxedBernoulliStraightThrough, dist.RelaxedBernoulli, [0.2, 0.7, 0.5]),
    (dist.RelaxedOneHotCategoricalStraightThrough, dist.RelaxedOneHotCategorical, [0.2, 0.7, 0.1]),
])
def test_straight_through_draws_are_quantized_with_the_relaxed_gradient(straight, relaxed, probs):
    weights = torch.tensor([1.0, -2.0, 3.0])
    p1 = torch.tensor(probs, requires_grad=True)
    torch.manual_seed(1)
    y = straight(torch.tensor(0.5), probs=p1).rsample()
    (y * weights).sum().backward()
    p2 = torch.tensor(probs, requires_grad=True)
    torch.manual_seed(1)
    soft = relaxed(torch.tensor(0.5), probs=p2).rsample()
    (soft * weights).sum().backward()
    if straight is dist.RelaxedBernoulliStraightThrough:
        assert torch.equal(y, soft.detach().round())
    else:
        assert torch.equal(y, torch.nn.functional.one_hot(soft.argmax(), 3).float())
    assert torch.allclose(p1.grad, p2.grad)
    d = straight(torch.tensor(0.5), probs=torch.tensor(probs))
    assert torch.allclose(d.log_prob(y), relaxed(torch.tensor(0.5), probs=torch.tensor(probs)).log_prob(soft.detach()))


def test_transform_names_and_module_paths():
    assert isinstance(transforms.elu(), transforms.ELUTransform)
    assert isinstance(transforms.leaky_relu(), transforms.LeakyReLUTransform)
    assert constraints.corr_cholesky_constraint is constraints.corr_cholesky
    for name in ("TransformModule", "ComposeTransformModule", "ConditionalTransform", "ConditionalTransformModule"):
        assert getattr(dist, name) is getattr(transforms, name)
    tt = importlib.import_module("ember.distributions.torch_transform")
    assert tt.TransformModule is transforms.TransformModule and tt.ComposeTransformModule is transforms.ComposeTransformModule
    kl = importlib.import_module("ember.distributions.kl")
    assert kl.kl_divergence is torch.distributions.kl_divergence and kl.register_kl is torch.distributions.register_kl
    assert dist.ExpandedDistribution is importlib.import_module("ember.distributions.torch_distribution").ExpandedDistribution


def test_validation_enabled_is_a_context_manager_at_the_top_level():
    old = dist.is_validation_enabled()
    with dist.validation_enabled(False):
        assert not dist.is_validation_enabled()
        dist.Normal(0.0, -1.0)  # no error
    assert dist.is_validation_enabled() == old


def test_logistic_entropy_skew_logistic_icdf_and_projected_normal_mean():
    d = dist.Logistic(torch.tensor(0.3, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64))
    _, x = _integral(d, -100.0, 100.0)
    p = d.log_prob(x).exp()
    assert torch.allclose(d.entropy(), -torch.trapezoid(p * d.log_prob(x), x), atol=1e-6)
    assert torch.allclose(d.entropy(), torch.tensor(math.log(2.0) + 2, dtype=torch.float64))
    s = dist.SkewLogistic(torch.tensor(0.5), torch.tensor(2.0), torch.tensor(3.0))
    u = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(s.cdf(s.icdf(u)), u)
    assert torch.allclose(s.icdf(torch.tensor(0.5)), 0.5 + 2.0 * torch.logit(torch.tensor(0.5 ** (1 / 3))))
    pn = dist.ProjectedNormal(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert torch.allclose(pn.mean, torch.tensor([[0.6, 0.8], [1.0, 0.0]])) and torch.allclose(pn.mode, pn.mean)
