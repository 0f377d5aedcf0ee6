"""Pyro's extra univariate and count distributions: log_prob against SciPy (or a numerical
normalisation), sample moments against the analytic mean/variance, shapes under expand and
to_event, rsample gradients against finite differences, argument validation."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import scipy.stats as st
import torch

import ember.distributions as dist
from ember.distributions.testing import fakes

T = lambda *x: torch.tensor(x, dtype=torch.double)  # noqa: E731


@dataclass
class Case:
    name: str
    make: Callable[..., Any]  # make(**params) -> distribution
    params: dict
    scipy: Callable[..., Any] | None = None  # scipy(x: ndarray) -> log pdf/pmf, for batch index 0.. (broadcast)
    discrete: bool = False
    grid: tuple = (-30.0, 30.0)  # integration range (continuous) or count range (discrete) for normalisation
    bad: tuple = ()  # (param name, bad value)
    moments: bool = True
    extra: dict = field(default_factory=dict)


CASES = [
    Case("GammaPoisson", dist.GammaPoisson, {"concentration": T(2.0, 0.7), "rate": T(0.5, 1.3)},
         lambda x, p: st.nbinom.logpmf(x, p["concentration"], p["rate"] / (1 + p["rate"])), discrete=True, grid=(0, 400), bad=("rate", -1.0)),
    Case("BetaBinomial", dist.BetaBinomial, {"concentration1": T(2.0, 0.5), "concentration0": T(3.0, 0.8), "total_count": T(10.0, 10.0)},
         lambda x, p: st.betabinom.logpmf(x, p["total_count"], p["concentration1"], p["concentration0"]), discrete=True, grid=(0, 10),
         bad=("concentration0", -0.5)),
    Case("ZeroInflatedPoisson", lambda **p: dist.ZeroInflatedPoisson(p["rate"], gate=p["gate"]), {"rate": T(3.0, 0.5), "gate": T(0.3, 0.6)},
         lambda x, p: np.where(x == 0, np.log(p["gate"] + (1 - p["gate"]) * np.exp(-p["rate"])), np.log1p(-p["gate"]) + st.poisson.logpmf(x, p["rate"])),
         discrete=True, grid=(0, 60), bad=("gate", 1.5)),
    Case("ZeroInflatedPoisson(logits)", lambda **p: dist.ZeroInflatedPoisson(p["rate"], gate_logits=p["gl"]), {"rate": T(3.0, 0.5), "gl": T(-0.5, 1.0)},
         None, discrete=True, grid=(0, 60)),
    Case("ZeroInflatedNegativeBinomial", lambda **p: dist.ZeroInflatedNegativeBinomial(p["total_count"], logits=p["logits"], gate=p["gate"]),
         {"total_count": T(4.0, 1.5), "logits": T(0.3, -0.2), "gate": T(0.2, 0.5)}, None, discrete=True, grid=(0, 400)),
    Case("ExtendedBinomial", lambda **p: dist.ExtendedBinomial(p["total_count"], probs=p["probs"]), {"total_count": T(5.0, 8.0), "probs": T(0.3, 0.6)},
         lambda x, p: st.binom.logpmf(x, p["total_count"], p["probs"]), discrete=True, grid=(-3, 12)),
    Case("ExtendedBetaBinomial", dist.ExtendedBetaBinomial, {"concentration1": T(2.0, 0.5), "concentration0": T(3.0, 0.8), "total_count": T(6.0, 9.0)},
         lambda x, p: st.betabinom.logpmf(x, p["total_count"], p["concentration1"], p["concentration0"]), discrete=True, grid=(-3, 12)),
    Case("TruncatedNormal", lambda **p: dist.TruncatedNormal(p["loc"], p["scale"], low=p["low"], high=p["high"]),
         {"loc": T(0.5, -1.0, 0.0), "scale": T(1.5, 0.7, 1.0), "low": T(-1.0, 0.5, -float("inf")), "high": T(2.0, float("inf"), 3.0)},
         lambda x, p: st.truncnorm.logpdf(x, (p["low"] - p["loc"]) / p["scale"], (p["high"] - p["loc"]) / p["scale"], p["loc"], p["scale"]),
         grid=(-12.0, 20.0), bad=("scale", -1.0)),
    Case("FoldedDistribution", lambda **p: dist.FoldedDistribution(dist.Normal(p["loc"], p["scale"])), {"loc": T(0.7, -2.0), "scale": T(1.0, 1.5)},
         lambda x, p: st.foldnorm.logpdf(x, np.abs(p["loc"]) / p["scale"], 0, p["scale"]), grid=(0.0, 30.0), moments=False),
    Case("AsymmetricLaplace", dist.AsymmetricLaplace, {"loc": T(0.5, -1.0), "scale": T(1.0, 2.0), "asymmetry": T(2.0, 0.5)},
         lambda x, p: st.laplace_asymmetric.logpdf(x, p["asymmetry"], p["loc"], p["scale"]), bad=("asymmetry", -1.0), grid=(-80, 80)),
    Case("SoftAsymmetricLaplace", dist.SoftAsymmetricLaplace, {"loc": T(0.5, -1.0), "scale": T(1.0, 2.0), "asymmetry": T(2.0, 0.5), "softness": T(0.5, 1.0)},
         None, grid=(-80, 80), bad=("softness", 0.0)),
    Case("Logistic", dist.Logistic, {"loc": T(0.5, -1.0), "scale": T(1.0, 2.0)},
         lambda x, p: st.logistic.logpdf(x, p["loc"], p["scale"]), bad=("scale", 0.0), grid=(-80, 80)),
    Case("SkewLogistic", dist.SkewLogistic, {"loc": T(0.5, -1.0), "scale": T(1.0, 2.0), "asymmetry": T(3.0, 0.4)},
         lambda x, p: st.genlogistic.logpdf(x, p["asymmetry"], p["loc"], p["scale"]), bad=("asymmetry", -2.0), grid=(-80, 80)),
]
IDS = [c.name for c in CASES]


def _np(p):
    return {k: v.numpy()[..., None] if isinstance(v, torch.Tensor) else v for k, v in p.items()}


def _grid(case, d):
    lo, hi = case.grid
    if case.discrete:
        return torch.arange(lo, hi + 1, dtype=torch.double).unsqueeze(-1).expand((-1,) + d.batch_shape)
    return torch.linspace(lo, hi, 40001, dtype=torch.double).unsqueeze(-1).expand((-1,) + d.batch_shape)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_log_prob_normalised_and_matches_scipy(case):
    d = case.make(**case.params)
    d._validate_args = False  # the grid reaches outside the support
    x = _grid(case, d)
    lp = d.log_prob(x)
    lp = torch.where(d.support.check(x), lp, torch.full_like(lp, -float("inf")))
    total = lp.exp().sum(0) if case.discrete else torch.trapezoid(lp.exp(), x, dim=0)
    torch.testing.assert_close(total, torch.ones_like(total), atol=2e-3, rtol=0)
    if case.scipy is not None:
        step = max(1, len(x) // 200)
        want = case.scipy(x[::step].T.numpy(), _np(case.params)).T
        got = lp[::step].numpy()
        finite = np.isfinite(want)
        assert np.array_equal(finite, np.isfinite(got))
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", [c for c in CASES if c.moments], ids=[c.name for c in CASES if c.moments])
def test_sample_moments(case):
    torch.manual_seed(0)
    d = case.make(**case.params)
    n = 20000
    x = d.sample((n,))
    assert x.shape == (n,) + d.batch_shape
    assert bool(d.support.check(x).all())
    mean, var = d.mean, d.variance
    se = (var / n).sqrt()
    assert bool(((x.mean(0) - mean).abs() < 5 * se).all()), (x.mean(0), mean)
    torch.testing.assert_close(x.var(0), var, rtol=0.12, atol=0.0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_expand_and_to_event_shapes(case):
    d = case.make(**case.params)
    e = d.expand((3,) + d.batch_shape)
    assert e.batch_shape == (3,) + d.batch_shape
    x = e.sample((2,)) if not case.name.startswith("Folded") else e.sample((2,))
    assert x.shape == (2, 3) + d.batch_shape
    assert e.log_prob(x).shape == (2, 3) + d.batch_shape
    torch.testing.assert_close(e.log_prob(x)[:, 0], d.log_prob(x[:, 0]))
    ind = e.to_event(1)
    assert ind.batch_shape == (3,) and ind.event_shape == d.batch_shape
    assert ind.log_prob(x).shape == (2, 3)


@pytest.mark.parametrize("case", [c for c in CASES if c.bad], ids=[c.name for c in CASES if c.bad])
def test_bad_argument_names_itself(case):
    params = dict(case.params)
    name, value = case.bad
    params[name] = torch.full_like(params[name], value)
    with pytest.raises(ValueError, match=name):
        d = case.make(**params)
        if not getattr(d, "_validate_args", False):
            raise AssertionError("validation is off")


REPARAM = [c for c in CASES if not c.discrete and c.make(**c.params).has_rsample]


@pytest.mark.parametrize("case", REPARAM, ids=[c.name for c in REPARAM])
def test_rsample_gradient_matches_finite_differences(case):
    grads_params = {k: v.clone().requires_grad_() for k, v in case.params.items() if torch.isfinite(v).all()}
    params = {**case.params, **grads_params}
    torch.manual_seed(3)
    y = case.make(**params).rsample((5,)).sum()
    autograd = torch.autograd.grad(y, list(grads_params.values()))
    h = 1e-6
    for (name, p), g in zip(grads_params.items(), autograd):
        for i in range(p.numel()):
            vals = []
            for sgn in (1, -1):
                q = p.detach().clone()
                q.view(-1)[i] += sgn * h
                torch.manual_seed(3)
                vals.append(case.make(**{**case.params, name: q}).rsample((5,)).sum())
            fd = (vals[0] - vals[1]) / (2 * h)
            torch.testing.assert_close(g.view(-1)[i], fd, rtol=1e-4, atol=1e-5, msg=f"d/d{name}[{i}]")


def test_beta_binomial_enumerate_support():
    d = dist.BetaBinomial(T(1.0, 2.0), T(2.0, 1.0), 4.0)
    s = d.enumerate_support()
    assert s.shape == (5, 2)
    assert d.enumerate_support(expand=False).shape == (5, 1)
    torch.testing.assert_close(d.log_prob(s).exp().sum(0), torch.ones(2, dtype=torch.double))
    with pytest.raises(NotImplementedError, match="total_count"):
        dist.BetaBinomial(T(1.0, 2.0), T(2.0, 1.0), T(3.0, 4.0)).enumerate_support()


def test_extended_out_of_support_is_minus_inf():
    assert dist.ExtendedBinomial(T(3.0), probs=T(0.5)).log_prob(T(5.0)).item() == -float("inf")
    assert dist.ExtendedBetaBinomial(T(1.0), T(1.0), T(3.0)).log_prob(T(-1.0)).item() == -float("inf")


def test_zero_inflated_gate_arguments():
    with pytest.raises(ValueError, match="exactly one of gate"):
        dist.ZeroInflatedPoisson(T(1.0))
    a = dist.ZeroInflatedPoisson(T(2.0), gate=torch.sigmoid(T(0.4)))
    b = dist.ZeroInflatedPoisson(T(2.0), gate_logits=T(0.4))
    x = T(0.0, 1.0, 4.0)
    torch.testing.assert_close(a.log_prob(x), b.log_prob(x))


def test_dirichlet_multinomial_against_scipy_and_moments():
    alpha = T(0.5, 2.0, 1.5)
    d = dist.DirichletMultinomial(alpha, total_count=7)
    x = T(2.0, 4.0, 1.0)
    torch.testing.assert_close(d.log_prob(x), torch.tensor(st.dirichlet_multinomial.logpmf(x.numpy(), alpha.numpy(), 7), dtype=torch.double))
    # all compositions of 7 into 3 parts
    xs = torch.tensor([[i, j, 7 - i - j] for i in range(8) for j in range(8 - i)], dtype=torch.double)
    torch.testing.assert_close(d.log_prob(xs).exp().sum(), torch.tensor(1.0, dtype=torch.double))
    torch.manual_seed(0)
    batch = dist.DirichletMultinomial(alpha, total_count=T(7.0, 3.0))
    s = batch.sample((20000,))
    assert s.shape == (20000, 2, 3) and bool((s.sum(-1) == T(7.0, 3.0)).all())
    torch.testing.assert_close(s.mean(0), batch.mean, atol=0.06, rtol=0)
    torch.testing.assert_close(s.var(0), batch.variance, rtol=0.1, atol=0)
    assert batch.expand((4, 2)).sample().shape == (4, 2, 3)
    with pytest.raises(ValueError, match="concentration"):
        dist.DirichletMultinomial(T(-1.0, 1.0), validate_args=True)


def test_multivariate_student_t():
    torch.manual_seed(0)
    L = torch.tensor([[1.0, 0.0, 0.0], [0.5, 2.0, 0.0], [-0.3, 0.2, 0.7]], dtype=torch.double)
    loc = T(1.0, -1.0, 0.5)
    d = dist.MultivariateStudentT(torch.tensor(6.0, dtype=torch.double), loc, L)
    x = torch.randn(5, 3, dtype=torch.double)
    want = st.multivariate_t.logpdf(x.numpy(), loc.numpy(), (L @ L.T).numpy(), df=6.0)
    torch.testing.assert_close(d.log_prob(x), torch.tensor(want))
    s = d.sample((40000,))
    torch.testing.assert_close(s.mean(0), loc, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(s.T), d.covariance_matrix * 6.0 / 4.0, atol=0.15, rtol=0.05)
    e = d.expand((4,))
    assert e.rsample((2,)).shape == (2, 4, 3) and e.log_prob(e.sample()).shape == (4,)
    with pytest.raises(ValueError, match="df"):
        dist.MultivariateStudentT(T(-1.0), loc, L, validate_args=True)
    # rsample gradient vs finite differences (in scale_tril: the chi-square draw's gradient in df is
    # an implicit one, not the derivative of a fixed-seed draw)
    Lg = L.clone().requires_grad_()
    torch.manual_seed(1)
    (g,) = torch.autograd.grad(dist.MultivariateStudentT(5.0, loc, Lg).rsample((3,)).pow(2).sum(), Lg)
    vals = []
    for h in (1e-6, -1e-6):
        Lh = L.clone()
        Lh[1, 0] += h
        torch.manual_seed(1)
        vals.append(dist.MultivariateStudentT(5.0, loc, Lh).rsample((3,)).pow(2).sum())
    torch.testing.assert_close(g[1, 0], (vals[0] - vals[1]) / 2e-6, rtol=1e-4, atol=1e-5)


def test_ordered_logistic():
    cut = T(-1.0, 0.5, 2.0)
    d = dist.OrderedLogistic(T(0.3, -0.2), cut)
    s = d.enumerate_support()
    assert s.shape == (4, 2)
    p = d.log_prob(s).exp()
    torch.testing.assert_close(p.sum(0), torch.ones(2, dtype=torch.double))
    # P(y <= k) = sigmoid(c_k - eta)
    torch.testing.assert_close(p.cumsum(0)[:3, 0], torch.sigmoid(cut - 0.3))
    assert d.expand((5, 2)).sample().shape == (5, 2)
    with pytest.raises(ValueError, match="cutpoints"):
        dist.OrderedLogistic(T(0.0), T(1.0, 0.0), validate_args=True)


def test_improper_uniform():
    d = dist.ImproperUniform(dist.constraints.positive, (2,), (3,))
    assert d.log_prob(torch.ones(4, 2, 3)).shape == (4, 2) and d.log_prob(torch.ones(2, 3)).abs().sum() == 0
    with pytest.raises(NotImplementedError, match="cannot be sampled"):
        d.sample()
    assert d.expand((5, 2)).batch_shape == (5, 2)


@pytest.mark.parametrize("cls, base, args", [
    (fakes.NonreparameterizedNormal, dist.Normal, (0.5, 2.0)), (fakes.NonreparameterizedBeta, dist.Beta, (2.0, 3.0)),
    (fakes.NonreparameterizedGamma, dist.Gamma, (2.0, 3.0)), (fakes.NonreparameterizedDirichlet, dist.Dirichlet, (T(1.0, 2.0),)),
])
def test_fakes_are_nonreparameterized(cls, base, args):
    d, b = cls(*args), base(*args)
    assert not d.has_rsample and b.has_rsample
    x = b.sample()
    torch.testing.assert_close(d.log_prob(x), b.log_prob(x))
    assert not d().requires_grad
